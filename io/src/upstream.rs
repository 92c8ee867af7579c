//! Upstream connections: connecting (and, for TLS groups, the handshake) with a timeout, and a
//! per-worker keep-alive pool that holds plain and TLS connections alike.
//!
//! The pool is plain worker-local data indexed by (group, server): no lock, no sharing. It hands
//! out the most recently returned connection first (warm in the kernel and the upstream), drops
//! connections idle longer than `upstream_idle`, and keeps at most `keepalive` idle connections
//! per server.
//!
//! **Invariant: a connection is pooled and reused only when nothing is unread on it.** A
//! response is matched to a request only by order, so a byte the upstream sent that no request
//! asked for (a second response, garbage, an early close) would otherwise be read as the answer
//! to the next client's request, and every later client on that connection would get the
//! response meant for the one before. So:
//! - the proxy returns a connection only after a response whose framing ended exactly where the
//!   bytes read so far end (`proxy/upstream_exchange.rs`: nothing left in the read buffer, nor
//!   in the TLS layer);
//! - [`Pool::take`] checks that nothing arrived while it was idle ([`Stream::is_quiet`]: a
//!   non-blocking `MSG_PEEK`): a connection with bytes or an end of file waiting is closed and
//!   dropped, never handed out.
//!
//! What cannot be told apart is a byte that arrives after `take` and before the next response:
//! HTTP/1.1 has no request identifiers. A pooled connection that the upstream closed between the
//! check and the write shows up as EOF or reset before any response byte; the proxy then retries
//! an idempotent request once on a fresh connection (see `proxy.rs`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::buf::IoFail;
use crate::stream::{HandshakeError, Idle, Stream, TlsStream};
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

struct Pooled {
    stream: Stream,
    since: Instant,
}

/// How long a server that sent unrequested bytes gets no pooled connections.
const DISTRUST: Duration = Duration::from_secs(60);

/// Idle upstream connections of one worker.
pub(crate) struct Pool {
    /// `[group][server]` → idle connections, most recent last.
    idle: Vec<Vec<Vec<Pooled>>>,
    /// `[group][server]` → until when connections to it are not kept: it sent bytes no request
    /// asked for, so its keep-alive connections cannot be trusted to stay in step.
    distrusted: Vec<Vec<Option<Instant>>>,
    /// `[group]` → most idle connections per server.
    max_idle: Vec<usize>,
    max_age: Duration,
}

impl Pool {
    /// `groups[i]` is (number of servers, max idle per server) of upstream group `i`.
    pub(crate) fn new(groups: impl Iterator<Item = (usize, usize)>, max_age: Duration) -> Self {
        let mut idle = Vec::new();
        let mut max_idle = Vec::new();
        let mut distrusted = Vec::new();
        for (servers, keep) in groups {
            idle.push((0..servers).map(|_| Vec::new()).collect());
            distrusted.push(vec![None; servers]);
            max_idle.push(keep);
        }
        Self {
            idle,
            distrusted,
            max_idle,
            max_age,
        }
    }

    /// An idle connection to (group, server) that is not too old, if any.
    pub(crate) fn take(&mut self, group: usize, server: usize, now: Instant) -> Option<Stream> {
        let list = &mut self.idle[group][server];
        while let Some(c) = list.pop() {
            if now.saturating_duration_since(c.since) >= self.max_age {
                continue;
            }
            match c.stream.idle_state() {
                Idle::Quiet => return Some(c.stream),
                // The upstream's keep-alive timeout, or a restart: ordinary.
                Idle::Closed => {}
                Idle::Unrequested => {
                    if let Stream::Plain(_) = c.stream {
                        log::warn!("upstream sent bytes on an idle connection; connection closed, keep-alive to it paused");
                        self.distrust(group, server, now);
                        return None;
                    }
                    // Over TLS it may be a record of the TLS layer itself: just drop it.
                }
            }
        }
        None
    }

    /// Stops keeping connections to (group, server) for a while: it sent bytes beyond a
    /// response's framing. Its idle connections are closed.
    pub(crate) fn distrust(&mut self, group: usize, server: usize, now: Instant) {
        self.idle[group][server].clear();
        self.distrusted[group][server] = now.checked_add(DISTRUST);
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub(crate) fn put(&mut self, group: usize, server: usize, stream: Stream, now: Instant) {
        if let Some(until) = self.distrusted[group][server] {
            if now < until {
                return;
            }
            self.distrusted[group][server] = None;
        }
        let list = &mut self.idle[group][server];
        if list.len() >= self.max_idle[group] {
            // Evict the oldest: the newest is the one most likely still open upstream.
            if list.is_empty() {
                return;
            }
            list.remove(0);
        }
        list.push(Pooled { stream, since: now });
    }
}
