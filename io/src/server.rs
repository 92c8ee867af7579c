//! Starting the workers and stopping them.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ringway_core::config::{Config, ConfigError};

use crate::board::Board;
use crate::counters::Status;
use crate::generation::Update;
use crate::listener::{bind_all, BindError};
use crate::names::Names;
use crate::tls::{Keep, TlsMaterial};

/// A proxy whose sockets are bound and whose workers are ready to start.
pub struct Server {
    cfg: Config,
    listeners: Vec<Vec<(usize, TcpListener)>>,
    upgrade: crate::upgrade::UpgradeHandle,
    cpus: Vec<Option<core_affinity::CoreId>>,
    shutdown: Arc<AtomicBool>,
    reload_tx: Vec<crossbeam_channel::Sender<Update>>,
    reload_rx: Vec<crossbeam_channel::Receiver<Update>>,
    purge_rx: Vec<(
        crossbeam_channel::Receiver<crate::cache::Mail>,
        std::os::unix::net::UnixStream,
    )>,
    admin: Option<TcpListener>,
    status: Arc<Status>,
    board: Arc<Board>,
    tls: Arc<TlsMaterial>,
    keep: Arc<Mutex<Keep>>,
    log: crate::accesslog::Log,
    log_writer: crate::accesslog::Writer,
    names: Arc<Mutex<Names>>,
    /// Wakes the names and limit-sync threads to stop.
    names_stop: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
}

/// Hands a new configuration to every worker of a running [`Server`]. Workers pick it up within
/// 50 ms: new requests use it, requests in flight finish on the old one. Listen addresses,
/// worker count and CPU placement are fixed at start; changing them needs a restart.
/// Certificates, keys and CA files are read again: TLS handshakes that start after the reload
/// use the new ones, established connections keep theirs.
#[derive(Clone)]
pub struct ReloadHandle {
    workers: Vec<crossbeam_channel::Sender<Update>>,
    /// The addresses bound at start (port 0 resolved), written into every reloaded config.
    bound: Vec<SocketAddr>,
    status: Arc<Status>,
    keep: Arc<Mutex<Keep>>,
    log: crate::accesslog::Log,
    /// The configuration's upstream names and their addresses.
    names: Arc<Mutex<Names>>,
}

impl ReloadHandle {
    /// Counts a reload that was rejected (its file did not validate): the metrics show it.
    pub fn rejected(&self) {
        self.status
            .reloads_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The configuration version now running (from the state directory), for the status page
    /// and the metrics.
    pub fn set_version(&self, n: u64) {
        self.status
            .version
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reopens the access log file (after logrotate moved it): SIGUSR1.
    pub fn reopen_log(&self) {
        self.log.reopen();
    }

    /// Installs `cfg` (its upstream names resolved: those not seen before are looked up now),
    /// or, when a file it names cannot be used, changes nothing and says why.
    pub fn reload(&self, cfg: &Config) -> Result<(), ConfigError> {
        let mut cfg = cfg.clone();
        if let Ok(running) = self.status.current.lock() {
            cfg.keep_limit_state(&running.0);
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let before = names.swap_base(cfg);
        names.refresh(std::time::Instant::now(), true);
        if let Err(e) = self.install(&names.effective()) {
            names.swap_base(before);
            self.rejected();
            return Err(e);
        }
        self.status
            .reloads_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Hands `cfg` (names expanded) to the workers and the health checker.
    fn install(&self, cfg: &Config) -> Result<(), ConfigError> {
        let mut cfg = cfg.clone();
        with_bound(&mut cfg, &self.bound);
        let cfg = &cfg;
        let tls = {
            let mut keep = self.keep.lock().unwrap_or_else(|p| p.into_inner());
            Arc::new(TlsMaterial::load(cfg, &mut keep)?)
        };
        let board = {
            let drained = self
                .status
                .drained
                .lock()
                .map(|d| d.clone())
                .unwrap_or_default();
            Arc::new(Board::new(cfg, &drained))
        };
        if let Some(c) = &cfg.cache {
            // Off the workers, which go on serving while the entries move (Table::fit).
            if self.status.table.fit(c.size) {
                log::info!(
                    "cache: lookup table grown to {} buckets for {} bytes",
                    self.status.table.buckets(),
                    c.size
                );
            }
        }
        self.status.set_current(cfg.clone(), board.clone());
        self.log
            .retarget(cfg.access_log.as_ref().map(|a| a.target.clone()));
        for tx in &self.workers {
            let _ = tx.send(Update {
                cfg: cfg.clone(),
                board: board.clone(),
                tls: tls.clone(),
            });
        }
        // Every worker installs it now, not at its next tick: a reload takes effect on all of
        // them within a millisecond or so, not over 50 ms of mixed answers.
        self.status.wake_workers();
        Ok(())
    }
}

/// The address of each listen entry as bound, in order: the first socket of each in a worker's
/// list.
fn first_of_each(listeners: &[Vec<(usize, TcpListener)>]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for (i, l) in listeners.first().map(Vec::as_slice).unwrap_or_default() {
        if *i == out.len() {
            if let Ok(a) = l.local_addr() {
                out.push(a);
            }
        }
    }
    out
}

/// Writes the addresses actually bound (port 0 resolved) into `cfg`'s listeners, so that core
/// knows the proxy's own addresses (a forward request for one of them is a loop).
fn with_bound(cfg: &mut Config, bound: &[SocketAddr]) {
    for (l, b) in cfg.server.listen.iter_mut().zip(bound) {
        if l.addr.port() == 0 && l.addr.ip() == b.ip() {
            l.addr = *b;
        }
    }
}

/// Asks a running [`Server`] to stop: stop accepting, finish in-flight requests, exit.
#[derive(Clone)]
pub struct ShutdownHandle(
    Arc<AtomicBool>,
    crate::upgrade::UpgradeHandle,
    crossbeam_channel::Sender<()>,
);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        // The sockets kept for a successor close first: a stopping process hands nothing on,
        // and no connection should wait on a socket that nobody will accept from.
        self.1.close();
        self.0.store(true, Ordering::Relaxed);
        // The names and limit-sync threads wait on this: one message each.
        let _ = self.2.try_send(());
        let _ = self.2.try_send(());
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Bind(BindError),
    /// A CPU asked for with `--cpus` that this process may not run on.
    Cpu(usize),
    /// A certificate, key or CA file that cannot be used.
    Tls(ConfigError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind(e) => e.fmt(f),
            Self::Cpu(c) => write!(f, "CPU {c} is not available to this process"),
            Self::Tls(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

impl Server {
    /// Resolves the worker count and CPU placement and binds every listener, so that every
    /// startup error surfaces here, before any worker thread exists.
    pub fn bind(cfg: Config) -> Result<Self, StartError> {
        Self::bind_inheriting(cfg, &mut crate::upgrade::Inherited::default())
    }

    /// `bind`, taking the listening sockets a process being replaced handed over
    /// (`ringway upgrade`) instead of binding new ones where it did.
    pub fn bind_inheriting(
        cfg: Config,
        inherited: &mut crate::upgrade::Inherited,
    ) -> Result<Self, StartError> {
        // Upstream names are resolved before anything starts (a name that does not resolve
        // yet leaves its servers out until it does, and is asked again).
        let mut names = Names::new(cfg);
        names.refresh(std::time::Instant::now(), true);
        let cfg = names.effective();
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let cpu_list: Vec<usize> = match &cfg.server.cpus {
            Some(list) => {
                if let Some(&bad) = list
                    .iter()
                    .find(|c| !allowed.is_empty() && !allowed.contains(c))
                {
                    return Err(StartError::Cpu(bad));
                }
                list.clone()
            }
            None => allowed,
        };
        let workers = cfg.server.workers.unwrap_or_else(|| {
            if cpu_list.is_empty() {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                cpu_list.len()
            }
        });
        let cpus = (0..workers)
            .map(|i| {
                (cfg.server.pin && !cpu_list.is_empty()).then(|| core_affinity::CoreId {
                    id: cpu_list[i % cpu_list.len()],
                })
            })
            .collect();
        let mut keep = Keep::new();
        let tls = Arc::new(TlsMaterial::load(&cfg, &mut keep).map_err(StartError::Tls)?);
        if let Some(a) = &cfg.acme {
            // Where keys and certificates go must be usable now, not at the first order.
            crate::acme::prepare_storage(&a.storage).map_err(|e| {
                StartError::Tls(
                    a.origin
                        .error(format!("acme.storage {}: {e}", a.storage.display())),
                )
            })?;
        }
        let addrs: Vec<SocketAddr> = cfg.server.listen.iter().map(|l| l.addr).collect();
        let listeners = bind_all(&addrs, workers, inherited).map_err(StartError::Bind)?;
        let mut cfg = cfg;
        let bound = first_of_each(&listeners);
        with_bound(&mut cfg, &bound);
        with_bound(names.base_mut(), &bound);
        // One channel per worker, and one more for the health checker.
        let (reload_tx, reload_rx) = (0..=workers)
            .map(|_| crossbeam_channel::unbounded())
            .unzip();
        let admin = match cfg.admin {
            None => None,
            Some(addr) => match inherited.take("admin").pop() {
                Some(l) => Some(l),
                None => Some(
                    TcpListener::bind(addr)
                        .map_err(|source| StartError::Bind(BindError { addr, source }))?,
                ),
            },
        };
        // Duplicates of every listening socket, for a successor (`ringway upgrade`), keyed by
        // the address as configured (port 0 included: the successor reads the same file).
        let mut handoff = Vec::new();
        for w in &listeners {
            for (i, l) in w {
                if let Ok(d) = l.try_clone() {
                    handoff.push((addrs[*i].to_string(), std::os::fd::OwnedFd::from(d)));
                }
            }
        }
        if let Some(d) = admin.as_ref().and_then(|a| a.try_clone().ok()) {
            handoff.push(("admin".to_string(), std::os::fd::OwnedFd::from(d)));
        }
        let board = Arc::new(Board::new(&cfg, &Default::default()));
        let (purge_tx, purge_rx): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
        // A socket pair per worker: a byte written wakes it for its mail (a purge from the
        // admin listener, a fill another worker ended).
        let (wakers, wake_rx): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| std::os::unix::net::UnixStream::pair())
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| {
                StartError::Bind(BindError {
                    addr: bound.first().copied().unwrap_or(([0, 0, 0, 0], 0).into()),
                    source,
                })
            })?
            .into_iter()
            .unzip();
        for w in &wakers {
            let _ = w.set_nonblocking(true);
        }
        let purge_rx = purge_rx.into_iter().zip(wake_rx).collect();
        let (log, log_writer) =
            crate::accesslog::Log::start(cfg.access_log.as_ref().map(|a| a.target.clone()))
                .map_err(|source| {
                    StartError::Bind(BindError {
                        addr: bound.first().copied().unwrap_or(([0, 0, 0, 0], 0).into()),
                        source,
                    })
                })?;
        let status = Arc::new(Status::new(
            workers,
            cfg.clone(),
            board.clone(),
            (purge_tx, wakers),
            log.clone(),
            (keep.acme.clone(), keep.ocsp.clone()),
        ));
        status.set_name_counters(names.lookups.clone(), names.failures.clone());
        Ok(Self {
            upgrade: crate::upgrade::UpgradeHandle::new(handoff),
            names_stop: crossbeam_channel::bounded(2),
            names: Arc::new(Mutex::new(names)),
            log,
            log_writer,
            tls,
            keep: Arc::new(Mutex::new(keep)),
            admin,
            status,
            board,
            cfg,
            listeners,
            cpus,
            shutdown: Arc::new(AtomicBool::new(false)),
            reload_tx,
            reload_rx,
            purge_rx,
        })
    }

    /// The admin listener's address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        first_of_each(&self.listeners)
    }

    /// Starts a successor binary with this one's sockets (`ringway upgrade`).
    pub fn upgrade_handle(&self) -> crate::upgrade::UpgradeHandle {
        self.upgrade.clone()
    }

    pub fn workers(&self) -> usize {
        self.listeners.len()
    }

    /// The CPUs workers are pinned to (empty when not pinning).
    pub fn pinned_cpus(&self) -> Vec<usize> {
        self.cpus.iter().flatten().map(|c| c.id).collect()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(
            self.shutdown.clone(),
            self.upgrade.clone(),
            self.names_stop.0.clone(),
        )
    }

    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            workers: self.reload_tx.clone(),
            bound: self.local_addrs(),
            status: self.status.clone(),
            keep: self.keep.clone(),
            log: self.log.clone(),
            names: self.names.clone(),
        }
    }

    /// Runs the workers until shutdown has completed in all of them.
    pub fn run(self) -> io::Result<()> {
        let mut handles = Vec::new();
        let board = self.board.clone();
        let reloader = self.reload_handle();
        if let Some(l) = self.admin {
            let (status, shutdown) = (self.status.clone(), self.shutdown.clone());
            std::thread::Builder::new()
                .name("ringway-admin".into())
                .spawn(move || crate::admin::run(l, status, shutdown))?;
        }
        {
            let (names, shutdown) = (self.names.clone(), self.shutdown.clone());
            let stop = self.names_stop.1.clone();
            std::thread::Builder::new()
                .name("ringway-names".into())
                .spawn(move || {
                    let install = |c: &Config| {
                        if let Err(e) = reloader.install(c) {
                            log::error!(
                                "upstream names: the new servers could not be installed: {e}"
                            );
                        }
                    };
                    crate::names::run(names, install, shutdown, stop)
                })?;
        }
        {
            let (status, shutdown) = (self.status.clone(), self.shutdown.clone());
            let stop = self.names_stop.1.clone();
            std::thread::Builder::new()
                .name("ringway-limits".into())
                .spawn(move || crate::limitsync::run(status, shutdown, stop))?;
        }
        let mut reload_rx = self.reload_rx;
        let checker_rx = reload_rx.pop().expect("one channel for the checker");
        let checker = {
            let first = Update {
                cfg: self.cfg.clone(),
                board: board.clone(),
                tls: self.tls.clone(),
            };
            let shutdown = self.shutdown.clone();
            std::thread::Builder::new()
                .name("ringway-health".into())
                .spawn(move || crate::health::run(first, checker_rx, shutdown))?
        };
        let count = self.listeners.len();
        let workers = self
            .listeners
            .into_iter()
            .zip(self.cpus)
            .zip(reload_rx)
            .zip(self.purge_rx);
        for (id, (((listeners, cpu), reloads), (mail, wake))) in workers.enumerate() {
            let first = Update {
                cfg: self.cfg.clone(),
                board: board.clone(),
                tls: self.tls.clone(),
            };
            let status = self.status.clone();
            let shutdown = self.shutdown.clone();
            let log = self.log.clone();
            let gate = self.status.gate.clone();
            let h = std::thread::Builder::new()
                .name(format!("ringway-w{id}"))
                .spawn(move || {
                    let links = crate::worker::Links {
                        shutdown,
                        reloads,
                        status,
                        mail,
                        wake,
                        workers: count,
                        log,
                        gate,
                    };
                    crate::worker::run(id, first, listeners, cpu, links)
                })?;
            handles.push(h);
        }
        // ACME orders start once the workers answer validations; OCSP answers are fetched.
        {
            let keep = self.keep.lock().unwrap_or_else(|p| p.into_inner());
            keep.acme.start(self.shutdown.clone());
            keep.ocsp.start(self.shutdown.clone());
        }
        let mut result = Ok(());
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // One worker failing stops the rest: a half-running proxy is worse than none.
                    self.shutdown.store(true, Ordering::Relaxed);
                    result = Err(e);
                }
                Err(_) => {
                    self.shutdown.store(true, Ordering::Relaxed);
                    result = Err(io::Error::other("a worker thread panicked"));
                }
            }
        }
        self.shutdown.store(true, Ordering::Relaxed);
        let _ = checker.join();
        drop(self.log);
        self.log_writer.finish();
        result
    }
}
