//! Upstream servers given by name (`app:8080`): resolved on a thread of their own, never on a
//! worker, and asked again when their answer's TTL runs out (bounded by `[resolver] min_ttl`
//! and `max_ttl`). Each address is a server of the group; when a name's addresses change, the
//! configuration with the new servers is installed like a reload (requests in flight finish
//! on the old servers, none is dropped). A failed lookup keeps the last good addresses, is
//! counted, and is tried again after `[resolver] retry`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringway_core::config::{Config, Resolver};
use ringway_core::dns::{self as wire, Answer, Hosts, Qtype, Servers};

/// The names of a configuration and what they resolved to.
pub(crate) struct Names {
    /// The configuration as loaded (named servers not expanded).
    base: Config,
    known: HashMap<Arc<str>, Known>,
    pub(crate) lookups: Arc<AtomicU64>,
    pub(crate) failures: Arc<AtomicU64>,
}

struct Known {
    /// The last good answer (`None`: never resolved).
    ips: Option<Vec<IpAddr>>,
    /// When to ask again.
    due: Instant,
}

impl Names {
    pub(crate) fn new(base: Config) -> Self {
        Self {
            base,
            known: HashMap::new(),
            lookups: Arc::default(),
            failures: Arc::default(),
        }
    }

    /// A new configuration (a reload); returns the one it replaces. Names it no longer has
    /// are forgotten when it is refreshed.
    pub(crate) fn swap_base(&mut self, base: Config) -> Config {
        std::mem::replace(&mut self.base, base)
    }

    pub(crate) fn base_mut(&mut self) -> &mut Config {
        &mut self.base
    }

    /// Resolves the names that are due (`all`: every name not resolved yet, whatever its due
    /// time, as at start and on a reload). Returns whether any address changed.
    pub(crate) fn refresh(&mut self, now: Instant, all_new: bool) -> bool {
        let r = self.base.resolver.clone();
        let names = self.base.names();
        self.known.retain(|n, _| names.contains(n));
        let mut changed = false;
        for name in names {
            let due = match self.known.get(&name) {
                None => true,
                Some(k) => now >= k.due || (all_new && k.ips.is_none()),
            };
            if !due {
                continue;
            }
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let known = self.known.entry(name.clone()).or_insert(Known {
                ips: None,
                due: now,
            });
            match resolve(&name, &r) {
                Ok((mut ips, ttl)) => {
                    ips.sort();
                    ips.dedup();
                    if known.ips.as_ref() != Some(&ips) {
                        log::info!(
                            "upstream name {name}: {}",
                            ips.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                        known.ips = Some(ips);
                        changed = true;
                    }
                    known.due = now + r.refresh_after(ttl);
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    match &known.ips {
                        Some(_) => log::warn!(
                            "upstream name {name}: {e}; keeping its last addresses, asking again in {:?}",
                            r.retry
                        ),
                        None => log::warn!(
                            "upstream name {name}: {e}; it has no server until it resolves (asking again in {:?})",
                            r.retry
                        ),
                    }
                    known.due = now + r.retry;
                }
            }
        }
        changed
    }

    /// When the next name is due.
    fn next_due(&self) -> Option<Instant> {
        self.known.values().map(|k| k.due).min()
    }

    /// The configuration with every name expanded into its servers.
    pub(crate) fn effective(&self) -> Config {
        if self.known.is_empty() {
            return self.base.resolved(&|_| None);
        }
        self.base
            .resolved(&|n| self.known.get(n).and_then(|k| k.ips.clone()))
    }
}

/// Re-resolves names when they are due and installs the servers they give, until `shutdown`.
/// Between lookups it waits on `stop` (sent to at shutdown) for at most the time to the next
/// due name.
pub(crate) fn run(
    names: Arc<Mutex<Names>>,
    install: impl Fn(&Config),
    shutdown: Arc<AtomicBool>,
    stop: crossbeam_channel::Receiver<()>,
) {
    while !shutdown.load(Ordering::Relaxed) {
        let due = names.lock().ok().and_then(|n| n.next_due());
        let now = Instant::now();
        match due {
            Some(t) if t <= now => {
                let Ok(mut n) = names.lock() else { return };
                if n.refresh(Instant::now(), false) {
                    install(&n.effective());
                }
            }
            // A reload resolves its new names itself; this wakes for the next due one.
            _ => {
                let wait = due.map_or(IDLE_WAIT, |t| (t - now).min(IDLE_WAIT));
                if stop.recv_timeout(wait).is_ok() {
                    return;
                }
            }
        }
    }
}

/// The longest the names thread waits without looking at its names.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// A and AAAA for `name`: from `/etc/hosts`, else from the name servers (those configured, or
/// `/etc/resolv.conf`'s), with the answer's TTL.
fn resolve(name: &str, r: &Resolver) -> Result<(Vec<IpAddr>, Duration), String> {
    let hosts = Hosts::parse(&std::fs::read_to_string("/etc/hosts").unwrap_or_default());
    if let Some(ips) = hosts.get(name) {
        return Ok((ips.to_vec(), Duration::from_secs(60)));
    }
    let configured = !r.servers.is_empty();
    let system =
        Servers::from_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let servers = if configured {
        r.servers.clone()
    } else {
        system.addrs
    };
    let mut last = format!("could not resolve {name}");
    for server in servers {
        if !crate::guard::may_query(server, configured) {
            return Err(crate::guard::REFUSED.to_string());
        }
        let a = ask(server, name, Qtype::A, r.timeout);
        let aaaa = ask(server, name, Qtype::Aaaa, r.timeout);
        match (a, aaaa) {
            (Ok(Answer::Addresses(v4, t4)), Ok(Answer::Addresses(v6, t6))) => {
                let ttl = Duration::from_secs(u64::from(t4.min(t6)));
                return Ok((wire::interleave(&v6, &v4), ttl));
            }
            (Ok(Answer::Addresses(ips, ttl)), _) | (_, Ok(Answer::Addresses(ips, ttl))) => {
                return Ok((ips, Duration::from_secs(u64::from(ttl))));
            }
            (Ok(Answer::NoAddress), Ok(Answer::NoAddress)) => {
                return Err(format!("{name} has no address"));
            }
            (Err(e), _) | (_, Err(e)) => last = format!("resolving {name}: {e}"),
            _ => last = format!("resolving {name}: the name server failed"),
        }
    }
    Err(last)
}

/// One question to `server` over UDP (TCP when the answer is truncated), within `timeout`.
fn ask(server: SocketAddr, name: &str, qtype: Qtype, timeout: Duration) -> Result<Answer, String> {
    let id = crate::dns::query_id();
    let mut q = Vec::with_capacity(64);
    wire::query(id, name, qtype, &mut q).ok_or_else(|| format!("{name} is not a valid name"))?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let err = |e: std::io::Error| e.to_string();
    let sock = UdpSocket::bind(bind).map_err(err)?;
    sock.connect(server).map_err(err)?;
    sock.send(&q).map_err(err)?;
    let until = Instant::now() + timeout;
    let mut buf = [0u8; 1232];
    let answer = loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer from {server} in {timeout:?}"));
        }
        sock.set_read_timeout(Some(left)).map_err(err)?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer from {server} in {timeout:?}"))
            }
            Err(e) => return Err(e.to_string()),
        };
        // Anything that is not the answer (another id, another question) is ignored.
        if let Ok(a) = wire::answer(&buf[..n], id, name, qtype) {
            break a;
        }
    };
    if answer != Answer::Truncated {
        return Ok(answer);
    }
    // Too long for a datagram: the same question over TCP (RFC 7766).
    use std::io::{Read, Write};
    let left = until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&server, left).map_err(err)?;
    s.set_read_timeout(Some(left)).map_err(err)?;
    s.set_write_timeout(Some(left)).map_err(err)?;
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).map_err(err)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(err)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg).map_err(err)?;
    wire::answer(&msg, id, name, qtype)
        .map_err(|_| format!("{server} answered another question over TCP"))
}
