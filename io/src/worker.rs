//! A worker: one thread, one CPU, one monoio runtime, its own listeners, pools and balancers.
//!
//! Everything a worker touches on the request path is owned by it (`Rc`, `RefCell`, `Cell`), so
//! nothing is locked and no cache line moves between cores. The only cross-thread state is the
//! shutdown flag, which a watcher task polls off the request path.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use monoio::time::TimeDriver;
use monoio::{FusionDriver, FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use ringway_core::config::{Config, Listen};
use ringway_core::health::Outcome;
use ringway_core::http::date::DateLine;
use ringway_core::upstream::{GroupState, Tried};

use crate::admin::{ServerSnap, Status, TlsCounts};
use crate::drain::Drain;
use crate::health::Board;
use crate::proxy::{serve, BUF_SIZE};
use crate::tls::TlsMaterial;
use crate::upstream::Pool;

/// How often the shutdown flag is checked.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

pub(crate) struct Worker {
    id: usize,
    /// The configuration new requests use, with its pools and balancer state.
    current: RefCell<Rc<Generation>>,
    pub(crate) drain: Drain,
    active: Cell<usize>,
    /// TLS handshakes on this worker's listeners (published with the status).
    pub(crate) tls_counts: Cell<TlsCounts>,
    /// The `Date` line, formatted at most once per second.
    date: Cell<DateLine>,
    /// Spare read buffers ([`BUF_SIZE`]), lent to connections for the length of an exchange,
    /// so that an idle connection holds none.
    bufs: RefCell<Vec<Vec<u8>>>,
    /// Connections were served since the heap was last trimmed.
    busy_since_trim: Cell<bool>,
}

/// Most spare buffers a worker keeps (1 MiB); more are freed.
const SPARE_BUFS: usize = 64;

/// A configuration with what was derived from it on the main thread, as handed to a worker
/// (and to the health checker) at start and on every reload.
pub(crate) struct Update {
    pub(crate) cfg: Config,
    /// Active health-check results for this configuration's servers.
    pub(crate) board: Arc<Board>,
    /// Certificates and trust anchors read from the files the configuration names.
    pub(crate) tls: Arc<TlsMaterial>,
}

/// One configuration as a worker runs it: the config, the upstream pools and the balancing and
/// health state that go with its upstream groups. A reload installs a new generation; requests
/// already running keep theirs (an `Rc`), so they finish untouched, and the old generation with
/// its pooled connections (to removed servers too) is freed when the last of them ends.
pub(crate) struct Generation {
    cfg: Config,
    /// Active health-check results for this configuration's servers.
    board: Arc<Board>,
    pub(crate) tls: Arc<TlsMaterial>,
    pub(crate) pool: RefCell<Pool>,
    groups: RefCell<Vec<GroupState>>,
}

impl std::ops::Deref for Generation {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.cfg
    }
}

/// Counts a connection as active for as long as it lives.
pub(crate) struct Active(Rc<Worker>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

impl Generation {
    fn new(id: usize, update: Update) -> Self {
        let Update { cfg, board, tls } = update;
        let pool = Pool::new(
            cfg.upstreams.iter().map(|u| (u.servers.len(), u.keepalive)),
            cfg.timeouts.upstream_idle,
        );
        // Per worker, not shared: counting in-flight requests costs no atomic and no cross-core
        // traffic; each worker balances its own share.
        let groups = cfg
            .upstreams
            .iter()
            .map(|u| GroupState::new(u, id))
            .collect();
        Self {
            cfg,
            board,
            tls,
            pool: RefCell::new(pool),
            groups: RefCell::new(groups),
        }
    }
}

impl Worker {
    fn new(id: usize, update: Update) -> Self {
        Self {
            id,
            current: RefCell::new(Rc::new(Generation::new(id, update))),
            drain: Drain::default(),
            active: Cell::new(0),
            tls_counts: Cell::new(TlsCounts::default()),
            date: Cell::new(DateLine::at(unix_now())),
            bufs: RefCell::new(Vec::new()),
            busy_since_trim: Cell::new(false),
        }
    }

    /// An empty buffer of [`BUF_SIZE`] bytes' capacity, from the spares when there is one.
    pub(crate) fn take_buf(&self) -> Vec<u8> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// Takes back a buffer a connection no longer needs (emptied), or frees it.
    pub(crate) fn give_buf(&self, mut buf: Vec<u8>) {
        let mut spares = self.bufs.borrow_mut();
        if spares.len() < SPARE_BUFS && (BUF_SIZE..=4 * BUF_SIZE).contains(&buf.capacity()) {
            buf.clear();
            spares.push(buf);
        }
    }

    /// After a burst of connections, once none is left: gives the heap's free memory back to
    /// the system (glibc keeps freed small blocks otherwise, so RSS never came down).
    fn trim_when_idle(&self) {
        if self.active.get() > 0 {
            self.busy_since_trim.set(true);
            return;
        }
        if self.busy_since_trim.replace(false) {
            self.bufs.borrow_mut().clear();
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free heap memory; no pointer is involved.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// The current `Date` header line (RFC 9110 §6.6.1). One vDSO clock read per call; the
    /// line is formatted again only when the second changes.
    pub(crate) fn date(&self) -> DateLine {
        let now = unix_now();
        let d = self.date.get();
        if d.secs() == now {
            return d;
        }
        let d = DateLine::at(now);
        self.date.set(d);
        d
    }

    /// Updates this worker's TLS counters.
    pub(crate) fn count_tls(&self, f: impl FnOnce(&mut TlsCounts)) {
        let mut c = self.tls_counts.get();
        f(&mut c);
        self.tls_counts.set(c);
    }

    /// The generation new requests use.
    pub(crate) fn current(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }

    fn install(&self, update: Update) {
        *self.current.borrow_mut() = Rc::new(Generation::new(self.id, update));
    }

    pub(crate) fn enter(self: &Rc<Self>) -> Active {
        self.active.set(self.active.get() + 1);
        Active(self.clone())
    }
}

impl Generation {
    /// Chooses a server of `group` for a request whose balancing key hashes to `key`, skipping
    /// the servers in `tried` (core's `GroupState::pick` decides; this adds the active-check
    /// verdicts and the guard). The returned guard counts the request in flight until dropped.
    pub(crate) fn pick(
        self: &Rc<Self>,
        group: usize,
        key: u64,
        tried: &Tried,
        now: Instant,
    ) -> Option<InFlight> {
        let u = &self.cfg.upstreams[group];
        let server = self.groups.borrow_mut()[group].pick(
            u,
            key,
            tried,
            |i| self.board.is_up(group, i),
            now,
        )?;
        Some(InFlight {
            g: self.clone(),
            group,
            server,
        })
    }
}

impl Generation {
    /// This worker's counters for the admin status.
    fn snapshot(&self, now: Instant) -> Vec<Vec<ServerSnap>> {
        self.groups
            .borrow()
            .iter()
            .map(|g| {
                (0..g.len())
                    .map(|i| ServerSnap {
                        in_flight: g.in_flight(i),
                        ejected: g.is_ejected(i, now),
                        failures: g.failures(i),
                    })
                    .collect()
            })
            .collect()
    }

    /// Records how a request to a server went, for passive health.
    pub(crate) fn record(&self, group: usize, server: usize, outcome: Outcome) {
        let u = &self.cfg.upstreams[group];
        let ejected = self.groups.borrow_mut()[group].record(u, server, outcome, Instant::now());
        if let Some(d) = ejected {
            log::warn!(
                "upstream {}: ejected for {}s after failing",
                u.servers[server].addr,
                d.as_secs()
            );
        }
    }
}

/// A request in flight to one server; decrements the count when dropped.
pub(crate) struct InFlight {
    g: Rc<Generation>,
    pub(crate) group: usize,
    pub(crate) server: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.g.groups.borrow_mut()[self.group].done(self.server);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a worker hears from and reports to the rest of the process (never on the request path).
pub(crate) struct Links {
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) reloads: crossbeam_channel::Receiver<Update>,
    pub(crate) status: Arc<Status>,
}

/// Runs worker `id` on the calling thread until shutdown completes.
pub(crate) fn run(
    id: usize,
    first: Update,
    listeners: Vec<StdListener>,
    cpu: Option<core_affinity::CoreId>,
    links: Links,
) -> io::Result<()> {
    let Links {
        shutdown,
        reloads,
        status,
    } = links;
    if let Some(core) = cpu {
        if !core_affinity::set_for_current(core) {
            log::warn!("worker {id}: could not pin to CPU {}", core.id);
        }
    }
    let mut rt = build_runtime(id)?;
    if id == 0 {
        if let FusionRuntime::Legacy(_) = rt {
            log::warn!("io_uring is not available here (kernel, seccomp or io_uring_disabled); running on the epoll driver");
        } else {
            log::info!("workers run on io_uring");
        }
    }
    let shutdown_timeout = first.cfg.server.shutdown_timeout;
    // Listeners come in the order of `server.listen`, which a reload cannot change.
    let kinds = first.cfg.server.listen.clone();
    let w = Rc::new(Worker::new(id, first));
    rt.block_on(async move {
        let mut accepting = Vec::new();
        for (l, kind) in listeners.into_iter().zip(kinds) {
            let l = TcpListener::from_std(l)?;
            accepting.push(monoio::spawn(accept_loop(w.clone(), l, kind)));
        }
        while !shutdown.load(Ordering::Relaxed) {
            monoio::time::sleep(SHUTDOWN_POLL).await;
            while let Ok(update) = reloads.try_recv() {
                w.install(update);
            }
            w.trim_when_idle();
            let snap = w.current().snapshot(Instant::now());
            status.publish(id, snap, w.tls_counts.get());
        }
        w.drain.trigger();
        for a in accepting {
            a.await;
        }
        let deadline = Instant::now() + shutdown_timeout;
        while w.active.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        if w.active.get() > 0 {
            log::warn!(
                "worker {id}: {} connection(s) still busy after the shutdown timeout; closing them",
                w.active.get()
            );
        }
        Ok(())
    })
}

/// io_uring set-up flags: this ring is used by one thread only (SINGLE_ISSUER), and completion
/// work runs when the worker asks for events (DEFER_TASKRUN, COOP_TASKRUN) instead of
/// interrupting it. On loopback the default mode made the kernel's task work contend for the
/// socket lock with the sender's softirq (13% of CPU in a spinlock, see docs/benchmarks.md).
fn uring_setup(tuned: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if tuned {
        b.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    b
}

fn build_runtime(
    id: usize,
) -> io::Result<FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>> {
    let build = |tuned| {
        RuntimeBuilder::<FusionDriver>::new()
            .with_entries(4096)
            .uring_builder(uring_setup(tuned))
            .enable_timer()
            .build()
    };
    build(true).or_else(|e| {
        if id == 0 {
            log::info!("io_uring refused DEFER_TASKRUN/SINGLE_ISSUER ({e}); using default flags");
        }
        build(false)
    })
}

async fn accept_loop(w: Rc<Worker>, listener: TcpListener, kind: Listen) {
    let drain = w.drain.clone();
    loop {
        monoio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    monoio::spawn(serve(w.clone(), stream, peer, kind.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    log::warn!("accept: {e}");
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = drain.wait() => break,
        }
    }
}
