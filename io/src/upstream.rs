//! Upstream connections: connecting (and, for TLS groups, the handshake) with a timeout, and a
//! per-worker keep-alive pool that holds plain and TLS connections alike.
//!
//! The pool is plain worker-local data keyed by core's `UpstreamKey` (a configured server, or a
//! destination chosen at request time): no lock, no sharing. It hands
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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use ringway_core::upstream::UpstreamKey;

use crate::deadline::IoFail;
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

/// Connects to `addr` (from the local address `from` when given), then, for a TLS group, runs
/// the handshake; each step within `timeout`.
pub(crate) async fn open(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    tls: Option<(&Origination, Option<&str>)>,
    timeout: Duration,
    preface: Option<Vec<u8>>,
) -> Result<Stream, ConnectError> {
    if !crate::guard::may_dial(addr) {
        let e = std::io::Error::new(std::io::ErrorKind::PermissionDenied, crate::guard::REFUSED);
        return Err(ConnectError::Connect(IoFail::Io(e)));
    }
    // Connecting and the TLS handshake share the one deadline (`upstream_connect`): a TLS
    // upstream does not get it twice.
    let until = Instant::now() + timeout;
    let connecting = async {
        match from {
            None => TcpStream::connect_addr(addr).await,
            Some(local) => connect_from(addr, local).await,
        }
    };
    let mut tcp = match monoio::time::timeout(timeout, connecting).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Connect(IoFail::Io(e))),
        Err(_) => return Err(ConnectError::Connect(IoFail::Timeout)),
    };
    let _ = tcp.set_nodelay(true);
    // A PROXY protocol header goes first, before TLS (it is the TCP connection's).
    if let Some(p) = preface {
        use monoio::io::AsyncWriteRentExt;
        let left = until.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, tcp.write_all(p)).await {
            Ok((Ok(_), _)) => {}
            Ok((Err(e), _)) => return Err(ConnectError::Connect(IoFail::Io(e))),
            Err(_) => return Err(ConnectError::Connect(IoFail::Timeout)),
        }
    }
    // Bodies and tunnels may be spliced from this connection (splice.rs).
    {
        crate::splice::nonblocking(&tcp).map_err(|e| ConnectError::Connect(IoFail::Io(e)))?;
    }
    let Some((o, host)) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let conn = o
        .connection(addr, host)
        .map_err(|e| ConnectError::Tls(HandshakeError::Tls(e)))?;
    let left = until.saturating_duration_since(Instant::now());
    match TlsStream::handshake(tcp, conn, left, Vec::new()).await {
        Ok(t) => Ok(Stream::Tls(Box::new(t))),
        Err((e, _)) => Err(ConnectError::Tls(e)),
    }
}

/// A connection that leaves from `local` (bound before connecting, any port).
async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::new(local, 0).into())?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let tcp = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    tcp.writable(false).await?;
    // The outcome of a non-blocking connect is in SO_ERROR.
    if let Some(e) = crate::sys::socket_error(crate::sys::fd(&tcp))? {
        return Err(e);
    }
    Ok(tcp)
}

struct Pooled {
    stream: Stream,
    since: Instant,
}

/// How long a server that sent unrequested bytes gets no pooled connections.
const DISTRUST: Duration = Duration::from_secs(60);

/// Idle connections to one upstream.
#[derive(Default)]
struct Slot {
    /// Most recent last.
    idle: Vec<Pooled>,
    /// Until when connections to it are not kept: it sent bytes no request asked for, so its
    /// keep-alive connections cannot be trusted to stay in step.
    distrusted: Option<Instant>,
}

/// Idle upstream connections of one worker, keyed by [`UpstreamKey`]: configured servers in a
/// table indexed by (group, server), request-time destinations in a map (created on first use,
/// removed when empty).
pub(crate) struct Pool {
    servers: Vec<Vec<Slot>>,
    /// `[group]` → most idle connections per server.
    max_idle: Vec<usize>,
    destinations: HashMap<(SocketAddr, Option<std::net::IpAddr>), Slot>,
    /// Most idle connections per destination.
    max_idle_destination: usize,
    /// Idle connections to destinations, all together, and the most kept: a forward proxy
    /// visits many destinations, and idle connections to each must not add up without bound.
    destination_idle: usize,
    max_destination_idle: usize,
    max_age: Duration,
}

/// Most idle connections to request-time destinations per worker.
const MAX_DESTINATION_IDLE: usize = 1024;

impl Pool {
    /// `groups[i]` is (number of servers, max idle per server) of upstream group `i`.
    pub(crate) fn new(groups: impl Iterator<Item = (usize, usize)>, max_age: Duration) -> Self {
        let mut servers = Vec::new();
        let mut max_idle = Vec::new();
        for (n, keep) in groups {
            servers.push((0..n).map(|_| Slot::default()).collect());
            max_idle.push(keep);
        }
        Self {
            servers,
            max_idle,
            destinations: HashMap::new(),
            max_idle_destination: ringway_core::config::DEFAULT_UPSTREAM_KEEPALIVE,
            destination_idle: 0,
            max_destination_idle: MAX_DESTINATION_IDLE,
            max_age,
        }
    }

    fn slot(&mut self, key: UpstreamKey) -> (&mut Slot, usize) {
        match key {
            UpstreamKey::Server { group, server } => {
                (&mut self.servers[group][server], self.max_idle[group])
            }
            UpstreamKey::Destination { addr, from } => (
                self.destinations.entry((addr, from)).or_default(),
                self.max_idle_destination,
            ),
        }
    }

    /// An idle connection to `key` that is not too old and has nothing waiting, if any.
    pub(crate) fn take(&mut self, key: UpstreamKey, now: Instant) -> Option<Stream> {
        if let UpstreamKey::Destination { addr, from } = key {
            if !self.destinations.contains_key(&(addr, from)) {
                return None;
            }
        }
        let max_age = self.max_age;
        let (slot, _) = self.slot(key);
        let before = slot.idle.len();
        let mut found = None;
        let mut unrequested = false;
        while let Some(c) = slot.idle.pop() {
            if now.saturating_duration_since(c.since) >= max_age {
                continue;
            }
            match c.stream.idle_state() {
                Idle::Quiet => {
                    found = Some(c.stream);
                    break;
                }
                // The upstream's keep-alive timeout, or a restart: ordinary.
                Idle::Closed => {}
                Idle::Unrequested => {
                    if let Stream::Plain(_) = c.stream {
                        unrequested = true;
                        break;
                    }
                    // Over TLS it may be a record of the TLS layer itself: just drop it.
                }
            }
        }
        let taken = before - slot.idle.len();
        if unrequested {
            log::warn!("upstream sent bytes on an idle connection; connection closed, keep-alive to it paused");
            self.distrust(key, now);
        }
        if let UpstreamKey::Destination { .. } = key {
            self.destination_idle = self.destination_idle.saturating_sub(taken);
        }
        self.forget_if_empty(key);
        found
    }

    /// Stops keeping connections to `key` for a while: it sent bytes beyond a response's
    /// framing. Its idle connections are closed.
    pub(crate) fn distrust(&mut self, key: UpstreamKey, now: Instant) {
        let (slot, _) = self.slot(key);
        let dropped = slot.idle.len();
        slot.idle.clear();
        slot.distrusted = now.checked_add(DISTRUST);
        if let UpstreamKey::Destination { .. } = key {
            self.destination_idle = self.destination_idle.saturating_sub(dropped);
        }
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub(crate) fn put(&mut self, key: UpstreamKey, stream: Stream, now: Instant) {
        let is_destination = matches!(key, UpstreamKey::Destination { .. });
        if is_destination && self.destination_idle >= self.max_destination_idle {
            self.prune_destinations(now);
            if self.destination_idle >= self.max_destination_idle {
                return;
            }
        }
        let max_age = self.max_age;
        let (slot, max) = self.slot(key);
        if let Some(until) = slot.distrusted {
            if now < until {
                return;
            }
            slot.distrusted = None;
        }
        // Connections idle too long are useless: drop them now rather than at the next take.
        // The oldest are first (connections go in at the end and are taken from it), so only
        // the front is looked at: testing every idle connection's age cost more than the rest
        // of the put (callgrind, docs/benchmarks-log.md run 41). One put with an older `now`
        // than the one before may leave an expired connection behind a fresh one; `take`
        // checks the age of each connection it hands out.
        let expired = slot
            .idle
            .iter()
            .take_while(|c| now.saturating_duration_since(c.since) >= max_age)
            .count();
        slot.idle.drain(..expired);
        let mut removed = expired;
        if slot.idle.len() >= max {
            // Evict the oldest: the newest is the one most likely still open upstream.
            if slot.idle.is_empty() {
                return;
            }
            slot.idle.remove(0);
            removed += 1;
        }
        slot.idle.push(Pooled { stream, since: now });
        if is_destination {
            self.destination_idle = (self.destination_idle + 1).saturating_sub(removed);
        }
    }

    /// Drops every idle destination connection older than `max_age`, and empty entries.
    fn prune_destinations(&mut self, now: Instant) {
        let max_age = self.max_age;
        let mut left = 0;
        self.destinations.retain(|_, slot| {
            slot.idle
                .retain(|c| now.saturating_duration_since(c.since) < max_age);
            left += slot.idle.len();
            !slot.idle.is_empty() || slot.distrusted.is_some_and(|d| now < d)
        });
        self.destination_idle = left;
    }

    fn forget_if_empty(&mut self, key: UpstreamKey) {
        if let UpstreamKey::Destination { addr, from } = key {
            if self
                .destinations
                .get(&(addr, from))
                .is_some_and(|s| s.idle.is_empty() && s.distrusted.is_none())
            {
                self.destinations.remove(&(addr, from));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ages of a slot's idle connections at `now`, oldest first, in seconds.
    fn ages(pool: &mut Pool, key: UpstreamKey, now: Instant) -> Vec<u64> {
        let (slot, _) = pool.slot(key);
        slot.idle
            .iter()
            .map(|c| now.duration_since(c.since).as_secs())
            .collect()
    }

    /// `put` drops the connections idle for `max_age` or longer from the front (the oldest),
    /// keeps the rest, and evicts the oldest when the slot is full; destination connections
    /// are counted as they come and go.
    #[test]
    fn put_drops_expired_connections_from_the_front_and_evicts_the_oldest() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let server = UpstreamKey::Server {
            group: 0,
            server: 0,
        };
        let mut pool = Pool::new([(1, 3)].into_iter(), Duration::from_secs(10));
        for s in [0, 1, 2] {
            pool.put(server, Stream::Sink, at(s));
        }
        assert_eq!(ages(&mut pool, server, at(2)), [2, 1, 0]);
        // At 11 s the first (11 s idle) and second (10 s) have expired, the third (9 s) not.
        pool.put(server, Stream::Sink, at(11));
        assert_eq!(ages(&mut pool, server, at(11)), [9, 0]);
        // Full at three: the oldest goes to make room.
        pool.put(server, Stream::Sink, at(12));
        pool.put(server, Stream::Sink, at(13));
        assert_eq!(ages(&mut pool, server, at(13)), [2, 1, 0]);
        // Everything expired: all dropped before the new one goes in.
        pool.put(server, Stream::Sink, at(30));
        assert_eq!(ages(&mut pool, server, at(30)), [0]);

        let dest = UpstreamKey::Destination {
            addr: "127.0.0.1:9".parse().unwrap(),
            from: None,
        };
        for s in [0, 5, 6] {
            pool.put(dest, Stream::Sink, at(s));
        }
        assert_eq!(pool.destination_idle, 3);
        pool.put(dest, Stream::Sink, at(15));
        assert_eq!(ages(&mut pool, dest, at(15)), [9, 0]);
        assert_eq!(pool.destination_idle, 2, "the two dropped are counted out");
    }
}
