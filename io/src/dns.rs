//! Name resolution for the forward proxy, without blocking a worker.
//!
//! IP literals need none. Names are looked up with the system resolver (`getaddrinfo`, so
//! `/etc/hosts`, `nsswitch.conf`, IPv4 and IPv6 all apply, as for every other program on the
//! machine) on a small pool of resolver threads shared by the process, and the answers kept per
//! worker for `forward.dns_ttl` (getaddrinfo gives no TTL). A worker hands a lookup to the pool
//! and checks for its answer after 1 ms, then less and less often, so a slow DNS server delays
//! only the requests waiting for it; a hit in the worker's cache costs one hash lookup. The
//! lock on an answer slot is taken by one resolver thread and one waiting request, never on a
//! request that needs no lookup.
//! Why not an async DNS client crate: the ones that exist are built on tokio, and a DNS client
//! of our own would have to re-implement what the system's resolver configuration says.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Resolver threads per process.
const THREADS: usize = 4;
/// Lookups waiting for a thread before new ones are refused.
const QUEUE: usize = 1024;
/// Names a worker keeps answers for.
const CACHE_MAX: usize = 10_000;

type Answer = Arc<Mutex<Option<Result<Vec<IpAddr>, String>>>>;

fn pool() -> &'static crossbeam_channel::Sender<(String, Answer)> {
    static POOL: OnceLock<crossbeam_channel::Sender<(String, Answer)>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded::<(String, Answer)>(QUEUE);
        for i in 0..THREADS {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("ringway-dns-{i}"))
                .spawn(move || {
                    for (name, answer) in rx {
                        let r = (name.as_str(), 0)
                            .to_socket_addrs()
                            .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>())
                            .map_err(|e| e.to_string());
                        if let Ok(mut slot) = answer.lock() {
                            *slot = Some(r);
                        }
                    }
                });
        }
        tx
    })
}

/// One worker's answers.
#[derive(Default)]
pub(crate) struct Cache {
    names: HashMap<String, (Vec<IpAddr>, Instant)>,
}

impl Cache {
    /// The addresses of `host` on `port`, or why there are none, within `timeout`.
    pub(crate) async fn resolve(
        cache: &std::cell::RefCell<Self>,
        host: &str,
        port: u16,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, String> {
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
        if !crate::guard::may_resolve(host) {
            return Err(crate::guard::REFUSED.to_string());
        }
        let now = Instant::now();
        if let Some((ips, until)) = cache.borrow().names.get(host) {
            if now < *until {
                return Ok(ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect());
            }
        }
        let answer: Answer = Arc::new(Mutex::new(None));
        pool()
            .try_send((host.to_string(), answer.clone()))
            .map_err(|_| "the resolver is overloaded".to_string())?;
        let deadline = now + timeout;
        // Checked after 1 ms, then less and less often (up to every 32 ms), so that many slow
        // lookups at once cost few wake-ups.
        let mut pause = Duration::from_millis(1);
        let r = loop {
            if let Some(r) = answer.lock().ok().and_then(|mut a| a.take()) {
                break r;
            }
            if Instant::now() >= deadline {
                return Err("resolving timed out".to_string());
            }
            monoio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(32));
        };
        let ips = r?;
        let mut c = cache.borrow_mut();
        if c.names.len() >= CACHE_MAX {
            c.names.retain(|_, (_, until)| now < *until);
            if c.names.len() >= CACHE_MAX {
                c.names.clear();
            }
        }
        c.names.insert(host.to_string(), (ips.clone(), now + ttl));
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}
