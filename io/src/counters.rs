//! What workers count and publish, off the request path: per-server in-flight requests,
//! ejections and failures, requests by status class, and TLS handshake counters. Each worker publishes a snapshot from its
//! watcher task every 50 ms (a short mutex hold); readers (the admin status page today, metrics
//! later) sum them.

use std::io::Write;
use std::sync::{Arc, Mutex};

use ringway_core::config::Config;
use ringway_core::proxy::RequestCounts;

use crate::board::Board;

/// One worker's counters for one server.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ServerSnap {
    pub in_flight: u32,
    pub ejected: bool,
    pub failures: u64,
}

/// One worker's TLS handshake counters, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsCounts {
    /// Completed handshakes on TLS listeners.
    pub handshakes: u64,
    /// Of those, resumed sessions (ticket or session ID).
    pub resumed: u64,
    /// Handshakes that failed: bad or truncated ClientHello, no certificate for the SNI, no
    /// common version or cipher, timeout, peer gone.
    pub failed: u64,
    /// Of the failures, clients that spoke plain HTTP to a TLS port (answered 400).
    pub plain_http: u64,
}

/// What workers publish and the admin thread reads.
pub(crate) struct Status {
    /// Per worker: `[group][server]` of its current generation.
    pub(crate) workers: Mutex<Vec<Vec<Vec<ServerSnap>>>>,
    pub(crate) tls: Mutex<Vec<TlsCounts>>,
    pub(crate) requests: Mutex<Vec<RequestCounts>>,
    pub(crate) current: Mutex<(Config, Arc<Board>)>,
    pub(crate) cache: Mutex<Vec<ringway_core::cache::Stats>>,
    /// The box's stored responses, shared by every worker (and its invalidation counters).
    pub(crate) table: Arc<ringway_core::cache::Table>,
    /// One channel per worker for purges from the admin listener and fill ends from other
    /// workers.
    pub(crate) mail: Vec<crossbeam_channel::Sender<crate::cache::Mail>>,
    /// One socket per worker that wakes it for them (a byte written; see `worker::run`).
    pub(crate) wakers: Vec<std::os::unix::net::UnixStream>,
    /// ACME's and OCSP stapling's state, for the metrics.
    pub(crate) acme: Arc<crate::acme::Acme>,
    pub(crate) ocsp: Arc<crate::ocsp::Stapler>,
    /// The access log's counters (lines written, dropped).
    pub(crate) log: crate::accesslog::Log,
    /// Per worker: what its exchanges added up to, and its own figures.
    pub(crate) tallies: Mutex<Vec<ringway_core::metrics::Tally>>,
    pub(crate) worker_snaps: Mutex<Vec<crate::metrics::WorkerSnap>>,
    /// Reloads applied and rejected (never touched on the request path).
    pub(crate) reloads_ok: std::sync::atomic::AtomicU64,
    pub(crate) reloads_failed: std::sync::atomic::AtomicU64,
    /// The connection limits' counts, shared by the workers.
    pub(crate) gate: Arc<crate::gate::Gate>,
    /// Servers drained from the admin listener (applied to every new board).
    pub(crate) drained: Mutex<crate::board::Drained>,
    /// The configuration version running (0: no state directory keeps versions).
    pub(crate) version: std::sync::atomic::AtomicU64,
    /// When the process started (seconds since the Unix epoch).
    pub(crate) started: f64,
    /// Lookups of upstream names, and failed ones (the names thread counts them).
    /// The shared limits' sync with Redis (its thread counts).
    pub(crate) shared_limits: crate::limitsync::Counters,
    pub(crate) name_lookups: Mutex<(
        Arc<std::sync::atomic::AtomicU64>,
        Arc<std::sync::atomic::AtomicU64>,
    )>,
}

/// What a worker publishes every 50 ms.
pub(crate) struct Published {
    pub(crate) servers: Vec<Vec<ServerSnap>>,
    pub(crate) tls: TlsCounts,
    pub(crate) requests: RequestCounts,
    pub(crate) cache: ringway_core::cache::Stats,
    pub(crate) tally: ringway_core::metrics::Tally,
    pub(crate) worker: crate::metrics::WorkerSnap,
}

impl Status {
    /// Wakes every worker now, rather than at its next 50 ms tick: a purge is done on all of
    /// them before the admin listener answers, and a reload installed on all of them, within a
    /// millisecond or so. One byte per worker, on these rare paths only.
    pub(crate) fn wake_workers(&self) {
        for w in &self.wakers {
            let _ = (&*w).write(&[1]);
        }
    }

    /// Sends `mail` to worker `id` and wakes it.
    pub(crate) fn send(&self, id: usize, mail: crate::cache::Mail) {
        if self.mail[id].send(mail).is_ok() {
            let _ = (&self.wakers[id]).write(&[1]);
        }
    }

    pub(crate) fn new(
        workers: usize,
        cfg: Config,
        board: Arc<Board>,
        (mail, wakers): (
            Vec<crossbeam_channel::Sender<crate::cache::Mail>>,
            Vec<std::os::unix::net::UnixStream>,
        ),
        log: crate::accesslog::Log,
        (acme, ocsp): (Arc<crate::acme::Acme>, Arc<crate::ocsp::Stapler>),
    ) -> Self {
        Self {
            gate: Arc::new(crate::gate::Gate::new(cfg.server.listen.len())),
            log,
            tallies: Mutex::new(vec![Default::default(); workers]),
            worker_snaps: Mutex::new(vec![Default::default(); workers]),
            reloads_ok: Default::default(),
            reloads_failed: Default::default(),
            version: Default::default(),
            drained: Mutex::default(),
            name_lookups: Mutex::default(),
            shared_limits: Default::default(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            cache: Mutex::new(vec![Default::default(); workers]),
            table: Arc::new(ringway_core::cache::Table::new(
                cfg.cache.as_ref().map_or(0, |c| c.size),
            )),
            mail,
            wakers,
            acme,
            ocsp,
            workers: Mutex::new(vec![Vec::new(); workers]),
            tls: Mutex::new(vec![TlsCounts::default(); workers]),
            requests: Mutex::new(vec![RequestCounts::default(); workers]),
            current: Mutex::new((cfg, board)),
        }
    }

    pub(crate) fn publish(&self, worker: usize, p: Published) {
        let Published {
            servers: snap,
            tls,
            requests,
            cache,
            tally,
            worker: figures,
        } = p;
        if let Ok(mut t) = self.tallies.lock() {
            t[worker] = tally;
        }
        if let Ok(mut w) = self.worker_snaps.lock() {
            w[worker] = figures;
        }
        if let Ok(mut c) = self.cache.lock() {
            c[worker] = cache;
        }
        if let Ok(mut r) = self.requests.lock() {
            r[worker] = requests;
        }
        if let Ok(mut w) = self.workers.lock() {
            w[worker] = snap;
        }
        if let Ok(mut t) = self.tls.lock() {
            t[worker] = tls;
        }
    }

    pub(crate) fn set_name_counters(
        &self,
        lookups: Arc<std::sync::atomic::AtomicU64>,
        failures: Arc<std::sync::atomic::AtomicU64>,
    ) {
        if let Ok(mut n) = self.name_lookups.lock() {
            *n = (lookups, failures);
        }
    }

    /// The admin token of the configuration running.
    pub(crate) fn token(&self) -> Option<String> {
        self.current
            .lock()
            .ok()
            .and_then(|c| c.0.admin_token.clone())
    }

    pub(crate) fn set_current(&self, cfg: Config, board: Arc<Board>) {
        if let Ok(mut c) = self.current.lock() {
            *c = (cfg, board);
        }
    }
}
