//! Upstream connections: connecting (and, for TLS groups, the handshake) with a timeout, and a
//! per-worker keep-alive pool that holds plain and TLS connections alike.
//!
//! The pool is plain worker-local data indexed by (group, server): no lock, no sharing. It hands
//! out the most recently returned connection first (warm in the kernel and the upstream), drops
//! connections idle longer than `upstream_idle`, and keeps at most `keepalive` idle connections
//! per server. A pooled connection the upstream closed while idle is only discovered when used;
//! the proxy then retries an idempotent request once on a fresh connection (see `proxy.rs`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::buf::IoFail;
use crate::stream::{HandshakeError, Stream, TlsStream};
use crate::tls::Origination;

/// Why a new upstream connection could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Connect(IoFail),
    Tls(HandshakeError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Tls(e) => e.fmt(f),
        }
    }
}

/// Connects to `addr`, then, for a TLS group, runs the handshake; each step within `timeout`.
pub(crate) async fn open(
    addr: SocketAddr,
    tls: Option<&Origination>,
    timeout: Duration,
) -> Result<Stream, ConnectError> {
    let tcp = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Connect(IoFail::Io(e))),
        Err(_) => return Err(ConnectError::Connect(IoFail::Timeout)),
    };
    let _ = tcp.set_nodelay(true);
    let Some(o) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let conn = o
        .connection(addr)
        .map_err(|e| ConnectError::Tls(HandshakeError::Tls(e)))?;
    match TlsStream::handshake(tcp, conn, timeout).await {
        Ok(t) => Ok(Stream::Tls(Box::new(t))),
        Err((e, _)) => Err(ConnectError::Tls(e)),
    }
}

struct Idle {
    stream: Stream,
    since: Instant,
}

/// Idle upstream connections of one worker.
pub(crate) struct Pool {
    /// `[group][server]` → idle connections, most recent last.
    idle: Vec<Vec<Vec<Idle>>>,
    /// `[group]` → most idle connections per server.
    max_idle: Vec<usize>,
    max_age: Duration,
}

impl Pool {
    /// `groups[i]` is (number of servers, max idle per server) of upstream group `i`.
    pub(crate) fn new(groups: impl Iterator<Item = (usize, usize)>, max_age: Duration) -> Self {
        let mut idle = Vec::new();
        let mut max_idle = Vec::new();
        for (servers, keep) in groups {
            idle.push((0..servers).map(|_| Vec::new()).collect());
            max_idle.push(keep);
        }
        Self {
            idle,
            max_idle,
            max_age,
        }
    }

    /// An idle connection to (group, server) that is not too old, if any.
    pub(crate) fn take(&mut self, group: usize, server: usize, now: Instant) -> Option<Stream> {
        let list = &mut self.idle[group][server];
        while let Some(c) = list.pop() {
            if now.duration_since(c.since) < self.max_age {
                return Some(c.stream);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub(crate) fn put(&mut self, group: usize, server: usize, stream: Stream, now: Instant) {
        let list = &mut self.idle[group][server];
        if list.len() >= self.max_idle[group] {
            // Evict the oldest: the newest is the one most likely still open upstream.
            if list.is_empty() {
                return;
            }
            list.remove(0);
        }
        list.push(Idle { stream, since: now });
    }
}
