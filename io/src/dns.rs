//! Name resolution for the forward proxy, on the worker's own ring.
//!
//! Queries go over UDP from the worker (core writes and reads the messages, `ringway_core::dns`):
//! A and AAAA at once to the first name server, each bounded by the resolver timeout, then the
//! next server, for the configured number of rounds. Nothing blocks a thread, so names that
//! never answer cost a socket and a timer each, not a resolver thread: before this, four
//! threads running getaddrinfo let 40 such requests stop every lookup of the process.
//!
//! Per worker: answers kept for their TTL (at most `dns_ttl`), failures for
//! `dns_negative_ttl`; one lookup per name in flight, whatever the number of requests waiting
//! for it; a lookup nobody waits for any more stops at its next step; one client may have
//! [`PER_CLIENT`] lookups in flight. `/etc/hosts` answers first; `/etc/resolv.conf` says where
//! to ask unless `resolver` is configured (both files are read again every [`REREAD`]).
//! Why not getaddrinfo or a resolver crate: getaddrinfo blocks a thread per lookup and cannot
//! be cancelled; the crates that exist are built on another runtime.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ringway_core::dns::{self as wire, Answer, Hosts, Qtype, Servers};
use ringway_core::forward::Forward;

/// Names a worker keeps answers for.
const CACHE_MAX: usize = 10_000;
/// Lookups one client address may have in flight on a worker.
pub(crate) const PER_CLIENT: u32 = 8;
/// How often /etc/hosts and /etc/resolv.conf are read again.
const REREAD: Duration = Duration::from_secs(30);

type Outcome = Result<(Vec<IpAddr>, Duration), String>;

/// One lookup in flight, shared by the requests waiting for it.
#[derive(Default)]
struct Flight {
    result: RefCell<Option<Outcome>>,
    wakers: RefCell<Vec<Waker>>,
    waiters: Cell<usize>,
}

/// One worker's resolver state.
#[derive(Default)]
pub(crate) struct Cache {
    names: HashMap<String, (Result<Vec<IpAddr>, String>, Instant)>,
    flights: HashMap<String, Rc<Flight>>,
    clients: HashMap<IpAddr, u32>,
    files: Option<(Servers, Hosts, Instant)>,
    /// Lookups sent to name servers, and those that found no address (for the metrics).
    pub(crate) lookups: u64,
    pub(crate) failures: u64,
}

impl Cache {
    fn files(&mut self, now: Instant) -> (Servers, Hosts) {
        if let Some((s, h, at)) = &self.files {
            if now.saturating_duration_since(*at) < REREAD {
                return (s.clone(), h.clone());
            }
        }
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let (s, h) = (Servers::from_resolv_conf(&conf), Hosts::parse(&hosts));
        self.files = Some((s.clone(), h.clone(), now));
        (s, h)
    }

    fn remember(&mut self, name: &str, r: Result<Vec<IpAddr>, String>, until: Instant) {
        if self.names.len() >= CACHE_MAX {
            let now = Instant::now();
            self.names.retain(|_, (_, u)| now < *u);
            if self.names.len() >= CACHE_MAX {
                self.names.clear();
            }
        }
        self.names.insert(name.to_string(), (r, until));
    }

    /// The addresses of `host` on `port` for `client`, or why there are none.
    pub(crate) async fn resolve(
        cache: &RefCell<Self>,
        host: &str,
        port: u16,
        fwd: &Forward,
        client: IpAddr,
    ) -> Result<Vec<SocketAddr>, String> {
        let with_port = |ips: &[IpAddr]| ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        // RFC 6761 §6.4: names under `invalid` never resolve; no server is asked.
        let bare = host.trim_end_matches('.');
        if bare.eq_ignore_ascii_case("invalid")
            || bare.len() > 8 && bare[bare.len() - 8..].eq_ignore_ascii_case(".invalid")
        {
            return Err(format!(
                "{host} does not exist (.invalid names never resolve)"
            ));
        }
        let now = Instant::now();
        let flight = {
            let mut c = cache.borrow_mut();
            let (system, hosts) = c.files(now);
            if let Some(ips) = hosts.get(bare) {
                return Ok(with_port(ips));
            }
            if let Some((r, until)) = c.names.get(bare) {
                if now < *until {
                    return r.as_ref().map(|ips| with_port(ips)).map_err(Clone::clone);
                }
            }
            let configured = !fwd.resolver.is_empty();
            let mut servers = if configured {
                Servers {
                    addrs: fwd.resolver.clone(),
                    ..system
                }
            } else {
                system
            };
            if let Some(t) = fwd.resolver_timeout {
                servers.timeout = t;
            }
            if servers
                .addrs
                .iter()
                .any(|a| !crate::guard::may_query(*a, configured))
            {
                return Err(crate::guard::REFUSED.to_string());
            }
            match c.flights.get(bare) {
                // Joining a lookup in flight costs nothing more.
                Some(f) => (f.clone(), false),
                None => {
                    // Starting one counts against the client until it ends.
                    let n = c.clients.entry(client).or_insert(0);
                    if *n >= PER_CLIENT {
                        return Err(format!(
                            "too many names being resolved for {client} at once"
                        ));
                    }
                    *n += 1;
                    let f = Rc::new(Flight::default());
                    c.flights.insert(bare.to_string(), f.clone());
                    monoio::spawn(lookup(f.clone(), bare.to_string(), servers));
                    (f, true)
                }
            }
        };
        let (flight, counted) = flight;
        let waiter = Waiter {
            cache,
            name: bare,
            client,
            counted,
            flight,
        };
        waiter.flight.waiters.set(waiter.flight.waiters.get() + 1);
        let outcome = Wait(&waiter.flight).await;
        let r = {
            let mut c = cache.borrow_mut();
            let ours = c
                .flights
                .get(bare)
                .is_some_and(|f| Rc::ptr_eq(f, &waiter.flight));
            if ours {
                c.flights.remove(bare);
                c.lookups += 1;
                c.failures += u64::from(outcome.is_err());
                // The first waiter to see the outcome keeps it for the others to come.
                let (r, ttl) = match &outcome {
                    Ok((ips, ttl)) => (Ok(ips.clone()), (*ttl).min(fwd.dns_ttl)),
                    Err(e) => (Err(e.clone()), fwd.dns_negative_ttl),
                };
                c.remember(bare, r, Instant::now() + ttl);
            }
            outcome.map(|(ips, _)| with_port(&ips))
        };
        drop(waiter);
        r
    }
}

/// A request waiting for a flight: counted while it waits, so that a lookup nobody waits for
/// stops, and so that one client's lookups are bounded.
struct Waiter<'a> {
    cache: &'a RefCell<Cache>,
    name: &'a str,
    client: IpAddr,
    /// This waiter started the lookup and holds one of its client's slots.
    counted: bool,
    flight: Rc<Flight>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let left = self.flight.waiters.get().saturating_sub(1);
        self.flight.waiters.set(left);
        let Ok(mut c) = self.cache.try_borrow_mut() else {
            return;
        };
        if let (true, Some(n)) = (self.counted, c.clients.get_mut(&self.client)) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.clients.remove(&self.client);
            }
        }
        if left == 0 && self.flight.result.borrow().is_none() {
            // Nobody waits: the lookup stops at its next step; a new request starts afresh.
            if c.flights
                .get(self.name)
                .is_some_and(|f| Rc::ptr_eq(f, &self.flight))
            {
                c.flights.remove(self.name);
            }
        }
    }
}

struct Wait<'a>(&'a Rc<Flight>);

impl Future for Wait<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Some(r) = self.0.result.borrow().as_ref() {
            return Poll::Ready(r.clone());
        }
        self.0.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// Runs one name's lookup (a task of its own) and hands the outcome to its waiters.
async fn lookup(flight: Rc<Flight>, name: String, servers: Servers) {
    let outcome = ask_all(&flight, &name, &servers).await;
    if let Some(outcome) = outcome {
        *flight.result.borrow_mut() = Some(outcome);
    } else {
        *flight.result.borrow_mut() = Some(Err("nobody waits".into()));
    }
    for w in flight.wakers.borrow_mut().drain(..) {
        w.wake();
    }
}

/// A and AAAA from each server in turn, for `attempts` rounds. `None` when nobody waits any
/// more.
async fn ask_all(flight: &Flight, name: &str, servers: &Servers) -> Option<Outcome> {
    let mut last = format!("could not resolve {name}");
    for _ in 0..servers.attempts {
        for &server in &servers.addrs {
            if flight.waiters.get() == 0 {
                return None;
            }
            let (a, aaaa) = monoio::join!(
                ask(server, name, Qtype::A, servers.timeout),
                ask(server, name, Qtype::Aaaa, servers.timeout)
            );
            match (a, aaaa) {
                (Ok(Answer::Addresses(v4, t4)), Ok(Answer::Addresses(v6, t6))) => {
                    let ttl = Duration::from_secs(u64::from(t4.min(t6)));
                    return Some(Ok((wire::interleave(&v6, &v4), ttl)));
                }
                (Ok(Answer::Addresses(ips, ttl)), _) | (_, Ok(Answer::Addresses(ips, ttl))) => {
                    return Some(Ok((ips, Duration::from_secs(u64::from(ttl)))));
                }
                (Ok(Answer::NoAddress), Ok(Answer::NoAddress)) => {
                    return Some(Err(format!("{name} has no address")));
                }
                (Err(e), _) | (_, Err(e)) => last = format!("resolving {name}: {e}"),
                _ => last = format!("resolving {name}: the name server failed"),
            }
        }
    }
    Some(Err(last))
}

/// One query to `server`, its answer within `timeout`.
async fn ask(
    server: SocketAddr,
    name: &str,
    qtype: Qtype,
    timeout: Duration,
) -> Result<Answer, String> {
    let id = query_id();
    let mut q = Vec::with_capacity(64);
    wire::query(id, name, qtype, &mut q).ok_or_else(|| format!("{name} is not a valid name"))?;
    let q2 = q.clone();
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = monoio::net::udp::UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    let exchange = async {
        let (r, _) = sock.send(q).await;
        r.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1232];
        loop {
            let (r, b) = sock.recv(buf).await;
            let n = r.map_err(|e| e.to_string())?;
            // Anything that is not the answer (another id, another question) is ignored.
            if let Ok(a) = wire::answer(&b[..n], id, name, qtype) {
                return Ok(a);
            }
            buf = b;
        }
    };
    let answer = match monoio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {server} in {timeout:?}")),
    };
    match answer {
        // Too long for a datagram: the same question over TCP (RFC 7766).
        Ok(Answer::Truncated) => match monoio::time::timeout(timeout, ask_tcp(server, &q2)).await {
            Ok(Ok(msg)) => wire::answer(&msg, id, name, qtype)
                .map_err(|_| format!("{server} answered another question over TCP")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer from {server} over TCP in {timeout:?}")),
        },
        other => other,
    }
}

/// One query over TCP: the message with its two-byte length, the answer read likewise.
async fn ask_tcp(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};
    let mut s = monoio::net::TcpStream::connect_addr(server)
        .await
        .map_err(|e| e.to_string())?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    let (r, _) = s.write_all(framed).await;
    r.map_err(|e| e.to_string())?;
    let (r, len) = s.read_exact(vec![0u8; 2]).await;
    r.map_err(|e| e.to_string())?;
    let n = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (r, msg) = s.read_exact(vec![0u8; n]).await;
    r.map_err(|e| e.to_string())?;
    Ok(msg)
}

/// A query id nobody off the path can guess: from the process's keyed hasher, a counter and
/// the clock.
pub(crate) fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: (std::collections::hash_map::RandomState, Cell<u64>) =
            (std::collections::hash_map::RandomState::new(), Cell::new(0));
    }
    STATE.with(|(s, n)| {
        n.set(n.get().wrapping_add(1));
        let mut h = s.build_hasher();
        h.write_u64(n.get());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish() as u16
    })
}
