//! Upstream connections: connecting (and, for TLS groups, the handshake) with a timeout, and a
//! per-worker keep-alive pool that holds plain and TLS connections alike.
//!
//! The pool is plain worker-local data keyed by core's `UpstreamKey` (a configured server, or a
//! destination chosen at request time): no lock, no sharing. It hands
//! out the most recently returned connection first (warm in the kernel and the upstream), drops
//! connections idle longer than `upstream_idle`, and keeps `keepalive` idle connections per
//! server, more only for a moment after a burst that used more (`BURST`).
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

/// How long the least recently used idle connection of a full slot must have been idle before
/// a connection coming back closes it. Under it, a slot holds more than its `keepalive`: as many
/// as were in use together within the last `BURST`, at most the requests in flight. Closing at
/// once, as nginx does, made every burst wider than `keepalive` reconnect what the burst before
/// had closed: at 256 connections on one worker and the default 64, 8% of requests opened a
/// connection and each request cost a fifth more CPU (docs/benchmarks.md, run 46).
const BURST: Duration = Duration::from_secs(1);

/// Idle connections to one upstream.
#[derive(Default)]
struct Slot {
    /// Most recent last.
    idle: Vec<Pooled>,
    /// Until when connections to it are not kept: it sent bytes no request asked for, so its
    /// keep-alive connections cannot be trusted to stay in step.
    distrusted: Option<Instant>,
}

impl Slot {
    /// Closes, from the front (the least recently used), the connections idle for `max_age` or
    /// longer, and while more than `keep` are left, those idle for `BURST` or longer; returns
    /// how many went. A connection back from a burst wider than `keep` is kept beside them, so
    /// the next burst finds it instead of connecting again; once the load narrows, the ones it
    /// no longer uses go. Only the front is looked at: testing every idle connection's age cost
    /// more than the rest of a put (callgrind, docs/benchmarks-log.md run 41). A put with an
    /// older `now` than the one before may leave an expired connection behind a fresh one;
    /// `take` checks the age of each connection it hands out.
    fn shed(&mut self, keep: usize, now: Instant, max_age: Duration) -> usize {
        let len = self.idle.len();
        let gone = self
            .idle
            .iter()
            .enumerate()
            .take_while(|(i, c)| {
                let idle = now.saturating_duration_since(c.since);
                idle >= max_age || (len - i > keep && idle >= BURST)
            })
            .count();
        self.idle.drain(..gone);
        gone
    }
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
    /// When `trim` last looked.
    trimmed: Instant,
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
            trimmed: Instant::now(),
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
        if max == 0 {
            return;
        }
        // Room for this one: expired connections go, and when the slot is full, the least
        // recently used that have been idle for `BURST`.
        let removed = slot.shed(max - 1, now, max_age);
        slot.idle.push(Pooled { stream, since: now });
        if is_destination {
            self.destination_idle = (self.destination_idle + 1).saturating_sub(removed);
        }
    }

    /// Closes what a quiet worker would otherwise hold until its next request: in every slot,
    /// connections idle for `upstream_idle`, and those over its `keepalive` idle for `BURST`.
    /// Called on the worker's tick; does its work at most once per `BURST`.
    pub(crate) fn trim(&mut self, now: Instant) {
        if now.saturating_duration_since(self.trimmed) < BURST {
            return;
        }
        self.trimmed = now;
        let max_age = self.max_age;
        for (slots, &keep) in self.servers.iter_mut().zip(&self.max_idle) {
            for slot in slots {
                slot.shed(keep, now, max_age);
            }
        }
        let keep = self.max_idle_destination;
        let mut gone = 0;
        self.destinations.retain(|_, slot| {
            gone += slot.shed(keep, now, max_age);
            !slot.idle.is_empty() || slot.distrusted.is_some_and(|d| now < d)
        });
        self.destination_idle = self.destination_idle.saturating_sub(gone);
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

    /// A full slot closes its least recently used connection for a new one only when that one
    /// has been idle for `BURST`: connections back from a burst wider than the slot stay until
    /// the load no longer uses them, then the slot is back to its size in one put. A slot of
    /// size 0 keeps nothing.
    #[test]
    fn a_burst_wider_than_the_slot_keeps_its_connections_until_they_go_unused() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let server = UpstreamKey::Server {
            group: 0,
            server: 0,
        };
        let mut pool = Pool::new([(1, 3), (1, 0)].into_iter(), Duration::from_secs(60));
        // Eight connections back within 100 ms of each other: all kept.
        for m in 0..8 {
            pool.put(server, Stream::Sink, ms(m * 10));
        }
        assert_eq!(pool.slot(server).0.idle.len(), 8);
        // The next burst takes all eight and brings them back: no connection was closed.
        // (Taken from the slot itself: `take` would find a `Sink` closed.)
        let take = |pool: &mut Pool| pool.slot(server).0.idle.pop().unwrap().stream;
        for _ in 0..8 {
            take(&mut pool);
        }
        for m in 0..8 {
            pool.put(server, Stream::Sink, ms(500 + m));
        }
        assert_eq!(pool.slot(server).0.idle.len(), 8);
        // Then only one at a time is used: when the others have been idle for a second, the
        // next put closes the five least recently used and the slot holds three again.
        let one = take(&mut pool);
        pool.put(server, one, ms(1000));
        assert_eq!(
            pool.slot(server).0.idle.len(),
            8,
            "still within the burst's second"
        );
        let one = take(&mut pool);
        pool.put(server, one, ms(1600));
        let idle: Vec<_> = pool.slot(server).0.idle.iter().map(|c| c.since).collect();
        assert_eq!(idle, [ms(505), ms(506), ms(1600)]);

        // A quiet worker's tick closes the same, at most once a second.
        let mut quiet = Pool::new([(1, 3)].into_iter(), Duration::from_secs(60));
        quiet.trimmed = t0;
        for m in 0..8 {
            quiet.put(server, Stream::Sink, ms(500 + m * 10));
        }
        quiet.trim(ms(1050));
        assert_eq!(quiet.slot(server).0.idle.len(), 8, "idle under a second");
        quiet.trim(ms(1600));
        assert_eq!(
            quiet.slot(server).0.idle.len(),
            8,
            "trimmed under a second before"
        );
        quiet.trim(ms(2100));
        let idle: Vec<_> = quiet.slot(server).0.idle.iter().map(|c| c.since).collect();
        assert_eq!(idle, [ms(550), ms(560), ms(570)]);
        // And connections idle for `upstream_idle`, destinations counted out and forgotten.
        let dest = UpstreamKey::Destination {
            addr: "127.0.0.1:9".parse().unwrap(),
            from: None,
        };
        quiet.put(dest, Stream::Sink, ms(2100));
        assert_eq!(quiet.destination_idle, 1);
        quiet.trim(ms(62_200));
        assert!(quiet.slot(server).0.idle.is_empty());
        assert_eq!(quiet.destination_idle, 0);
        assert!(quiet.destinations.is_empty());

        let none = UpstreamKey::Server {
            group: 1,
            server: 0,
        };
        pool.put(none, Stream::Sink, ms(0));
        assert!(
            pool.slot(none).0.idle.is_empty(),
            "keepalive = 0 keeps nothing"
        );
    }
}
