//! Active health checks: one thread per process probes every server of every group that has a
//! `health_check`, and publishes up/down in a [`Board`] of atomic flags that workers read when
//! they pick a server. Workers never wait on a probe and take no lock: a relaxed atomic load of
//! a flag that changes only when a server changes state.
//!
//! Probes use blocking sockets with timeouts on this thread, one server after another; a server
//! that times out delays the next probes by at most its timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringway_core::config::Config;
use ringway_core::health::ActiveHealth;

use crate::board::Board;
use crate::generation::Update;
use crate::tls::{Origination, TlsMaterial};

struct Checked {
    cfg: Config,
    board: Arc<Board>,
    tls: Arc<TlsMaterial>,
    /// Per (group, server): state and when the next probe is due.
    state: Vec<Vec<(ActiveHealth, Instant)>>,
}

impl Checked {
    fn new(update: Update, previous: Option<&Checked>, now: Instant) -> Self {
        let Update { cfg, board, tls } = update;
        let state = cfg
            .upstreams
            .iter()
            .enumerate()
            .map(|(g, u)| {
                u.servers
                    .iter()
                    .enumerate()
                    .map(|(s, server)| {
                        // Keep what was learned about a server that is still in the same group.
                        let old = previous.and_then(|p| {
                            let pg = p.cfg.upstreams.iter().position(|x| x.name == u.name)?;
                            let ps = p.cfg.upstreams[pg]
                                .servers
                                .iter()
                                .position(|x| x.addr == server.addr)?;
                            Some(p.state[pg][ps].0)
                        });
                        let h = old.unwrap_or_default();
                        board.set(g, s, h.is_up());
                        (h, now)
                    })
                    .collect()
            })
            .collect();
        Self {
            cfg,
            board,
            tls,
            state,
        }
    }
}

/// Runs the checker until `shutdown`; new configurations (with their boards) arrive on `rx`.
pub(crate) fn run(
    first: Update,
    rx: crossbeam_channel::Receiver<Update>,
    shutdown: Arc<AtomicBool>,
) {
    let mut checked = Checked::new(first, None, Instant::now());
    while !shutdown.load(Ordering::Relaxed) {
        while let Ok(update) = rx.try_recv() {
            checked = Checked::new(update, Some(&checked), Instant::now());
        }
        for g in 0..checked.cfg.upstreams.len() {
            let Some(policy) = checked.cfg.upstreams[g].health_check.clone() else {
                continue;
            };
            for s in 0..checked.cfg.upstreams[g].servers.len() {
                let now = Instant::now();
                if now < checked.state[g][s].1 || shutdown.load(Ordering::Relaxed) {
                    continue;
                }
                let server = &checked.cfg.upstreams[g].servers[s];
                let (addr, name) = (server.addr, server.name.clone());
                let tls = checked.tls.upstreams[g].as_ref();
                let proxy = checked.cfg.upstreams[g].proxy_protocol;
                let passed = probe(addr, &policy, tls.map(|o| (o, name.as_deref())), proxy);
                let (h, due) = &mut checked.state[g][s];
                *due = Instant::now() + policy.interval;
                if let Some(up) = h.record(passed, &policy) {
                    checked.board.set(g, s, up);
                    if up {
                        log::info!("upstream {addr}: health check passing again; marked up");
                    } else {
                        log::warn!("upstream {addr}: health check failing; marked down");
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One probe: connect (and, for TLS groups, handshake with the same verification as requests),
/// send, read the response head; all within the policy's timeout.
fn probe(
    addr: std::net::SocketAddr,
    p: &ringway_core::health::ActivePolicy,
    tls: Option<(&Origination, Option<&str>)>,
    proxy: Option<ringway_core::proxyproto::Version>,
) -> bool {
    let deadline = Instant::now() + p.timeout;
    if !crate::guard::may_dial(addr) {
        return false;
    }
    let Ok(mut s) = TcpStream::connect_timeout(&addr, p.timeout) else {
        return false;
    };
    let _ = s.set_write_timeout(Some(p.timeout));
    let _ = s.set_read_timeout(Some(p.timeout));
    // A server that expects PROXY headers gets a LOCAL one: the check is ringway's own.
    if let Some(v) = proxy {
        if s.write_all(&ringway_core::proxyproto::local_header(v))
            .is_err()
        {
            return false;
        }
    }
    match tls {
        None => exchange(s, addr, p, deadline),
        Some((o, name)) => match o.connection(addr, name) {
            Ok(conn) => exchange(rustls::StreamOwned::new(conn, s), addr, p, deadline),
            Err(e) => {
                log::warn!("upstream {addr}: health check: {e}");
                false
            }
        },
    }
}

/// A socket whose read timeout can be set (plain, or under TLS).
trait Timed: Read + Write {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl Timed for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
}

impl Timed for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(t)
    }
}

fn exchange(
    mut s: impl Timed,
    addr: std::net::SocketAddr,
    p: &ringway_core::health::ActivePolicy,
    deadline: Instant,
) -> bool {
    if s.write_all(&p.request(&addr.to_string())).is_err() {
        return false;
    }
    // The head is found by core's scanner and judged by core's parser (`ActivePolicy::passes`).
    let limits = ringway_core::http::Limits::default();
    let mut scanner = ringway_core::http::HeadScanner::new();
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        match scanner.scan(&head, &limits) {
            Ok(ringway_core::http::Scan::Complete(end)) => return p.passes(&head[..end]),
            Ok(ringway_core::http::Scan::Partial) => {}
            Err(_) => return false,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}
