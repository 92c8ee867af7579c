//! A worker: one thread, one CPU, one monoio runtime, its own listeners, pools and balancers.
//!
//! Everything a worker touches on the request path is owned by it (`Rc`, `RefCell`, `Cell`), so
//! nothing is locked and no cache line moves between cores. The only cross-thread state is the
//! shutdown flag, which a watcher task polls off the request path.

use std::io;
use std::net::SocketAddr;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use monoio::time::TimeDriver;
use monoio::{FusionDriver, FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use ringway_core::config::Listen;

use crate::context::Worker;
use crate::counters::Status;
use crate::generation::Update;
use crate::proxy::serve;

/// How often the shutdown flag is checked.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// How a worker hears from and reports to the rest of the process (never on the request path).
pub(crate) struct Links {
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) reloads: crossbeam_channel::Receiver<Update>,
    pub(crate) status: Arc<Status>,
    pub(crate) mail: crossbeam_channel::Receiver<crate::cache::Mail>,
    /// Readable when mail was sent (see `Status::send`).
    pub(crate) wake: std::os::unix::net::UnixStream,
    /// How many workers share the cache budget.
    pub(crate) workers: usize,
    pub(crate) log: crate::accesslog::Log,
    pub(crate) gate: Arc<crate::gate::Gate>,
}

/// Runs worker `id` on the calling thread until shutdown completes.
pub(crate) fn run(
    id: usize,
    first: Update,
    listeners: Vec<(usize, StdListener)>,
    cpu: Option<core_affinity::CoreId>,
    links: Links,
) -> io::Result<()> {
    let Links {
        shutdown,
        reloads,
        status,
        mail,
        wake,
        workers,
        log,
        gate,
    } = links;
    if let Some(core) = cpu {
        if !core_affinity::set_for_current(core) {
            log::warn!("worker {id}: could not pin to CPU {}", core.id);
        }
    }
    let mut rt = if first.cfg.server.io_uring {
        build_runtime(id)?
    } else {
        FusionRuntime::Legacy(
            RuntimeBuilder::<LegacyDriver>::new()
                .enable_timer()
                .build()?,
        )
    };
    if id == 0 {
        if !first.cfg.server.io_uring {
            log::info!("workers run on epoll (server.io_uring = false)");
        } else if let FusionRuntime::Legacy(_) = rt {
            log::warn!("io_uring is not available here (kernel, seccomp or io_uring_disabled); running on the epoll driver");
        } else {
            log::info!("workers run on io_uring");
        }
    }
    let epoll = matches!(rt, FusionRuntime::Legacy(_));
    let multishot = first.cfg.server.multishot_accept && !epoll;
    if id == 0 {
        if multishot {
            log::info!("listeners accept with one multishot io_uring operation each");
        } else {
            log::info!("listeners accept on readiness, one accept4 per connection");
        }
    }
    let recv_ring =
        (first.cfg.server.recv_ring && !epoll).then_some(first.cfg.server.recv_ring_buffers);
    let shutdown_timeout = first.cfg.server.shutdown_timeout;
    // Listeners come in the order of `server.listen`, which a reload cannot change.
    let listens = first.cfg.server.listen.clone();
    let w = Rc::new(Worker::new(
        id,
        first,
        status.clone(),
        workers,
        crate::accesslog::WorkerLog::new(log),
    )?);
    rt.block_on(async move {
        // The ring of provided buffers is set up on the driver, inside the runtime.
        w.recv_ring
            .set(recv_ring.is_some_and(|n| crate::multirecv::set_up(id, n)));
        if id == 0 {
            if w.recv_ring.get() {
                log::info!("keep-alive connections wait for their next request without a buffer of their own (a ring of provided buffers)");
            } else {
                log::info!("keep-alive connections wait for their next request with a buffer of their own");
            }
        }
        let mut accepting = Vec::new();
        for (i, l) in listeners {
            let l = TcpListener::from_std(l)?;
            let at = Accepting {
                index: i,
                listen: listens[i],
                gate: gate.clone(),
                multishot,
            };
            accepting.push(monoio::spawn(accept_loop(w.clone(), l, at)));
        }
        monoio::spawn(crate::proxy::unpark(w.clone()));
        let _ = wake.set_nonblocking(true);
        let wake = monoio::net::UnixStream::from_std(wake)?;
        while !shutdown.load(Ordering::Relaxed) {
            // The tick, or sooner when woken for mail (a purge, a fill another worker ended).
            let woken = monoio::select! {
                _ = monoio::time::sleep(SHUTDOWN_POLL) => false,
                _ = wake.readable(false) => true,
            };
            if woken {
                let mut b = [0u8; 64];
                while crate::sys::recv(crate::sys::unix_fd(&wake), &mut b).is_ok_and(|n| n > 0) {}
            }
            while let Ok(update) = reloads.try_recv() {
                w.install(update);
            }
            while let Ok(m) = mail.try_recv() {
                match m {
                    crate::cache::Mail::Purge(p) => {
                        let _ = p.reply.send(w.purge(&p));
                    }
                    crate::cache::Mail::FillEnded(key) => w.wake_waiters(&key),
                }
            }
            let now = Instant::now();
            w.lot.expire(now);
            w.current().pool.borrow_mut().trim(now);
            w.trim_when_idle();
            if let Some(a) = &w.current().access_log {
                w.log.tick(a.flush, Instant::now());
            }
            status.publish(id, w.published());
        }
        w.drain.trigger();
        w.lot.expire_all();
        for a in accepting {
            a.await;
        }
        let deadline = Instant::now() + shutdown_timeout;
        while w.active() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        if w.active() > 0 {
            log::warn!(
                "worker {id}: {} connection(s) still busy after the shutdown timeout; closing them",
                w.active()
            );
        }
        // The last lines go to the writer before the process ends.
        w.log.tick(Duration::ZERO, Instant::now());
        Ok(())
    })
}

/// An accepted socket on the worker's driver. Every accepted socket is non-blocking from its
/// accept (`SOCK_NONBLOCK`, with either way of accepting), at no cost: monoio's epoll driver
/// needs that (a blocking socket would stall the worker on a read with nothing to read), and so
/// does a splice (splice.rs), which otherwise took one or two system calls per connection to
/// set. io_uring's operations behave the same on a non-blocking socket (a receive that finds
/// nothing still waits, by the kernel's own poll).
fn adopt(s: std::net::TcpStream) -> io::Result<monoio::net::TcpStream> {
    monoio::net::TcpStream::from_std(s)
}

/// A connection over a limit: a canned `503` written at once if the socket takes it (plain
/// HTTP listeners, `connection_refusal = "503"`), then closed; no task, no buffer.
fn refuse(w: &Worker, stream: monoio::net::TcpStream, listen: Listen) {
    use ringway_core::config::{Protocol, Refusal, Transport};
    let plain_http =
        listen.transport == Transport::Plain && listen.protocol != Protocol::RedirectHttps;
    if plain_http && w.current().server.connections.refusal == Refusal::Unavailable {
        static ANSWER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let answer = ANSWER.get_or_init(ringway_core::http::answer::connection_refusal);
        let _ = crate::sys::send(crate::sys::fd(&stream), answer);
    }
    drop(stream);
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

/// What an accept loop serves.
struct Accepting {
    /// The listener's index in `server.listen`.
    index: usize,
    listen: Listen,
    gate: Arc<crate::gate::Gate>,
    /// Accept with one multishot operation (io_uring, `server.multishot_accept`).
    multishot: bool,
}

/// Connections taken per readiness before the accept loop yields.
const ACCEPT_BATCH: usize = 32;

async fn accept_loop(w: Rc<Worker>, listener: TcpListener, at: Accepting) {
    if at.multishot && accept_multishot(&w, &listener, &at).await {
        return;
    }
    let drain = w.drain.clone();
    loop {
        // Readiness, then accept: a wait for readiness that the drain cancels takes nothing
        // (an accept cancelled after the kernel completed it would lose that connection).
        monoio::select! {
            r = listener.readable(false) => if let Err(e) = r {
                log::warn!("accept: {e}");
                monoio::time::sleep(Duration::from_millis(100)).await;
            },
            _ = drain.wait() => break,
        }
        // Every connection waiting, up to a batch (then the others get a turn), counted first
        // so that no accept finds the queue empty (`sys::accept_queued`). At least one: the
        // socket was readable, and a count of none (or none given) must not spin the loop.
        let waiting = crate::sys::accept_queued(&listener).unwrap_or(ACCEPT_BATCH);
        for _ in 0..waiting.clamp(1, ACCEPT_BATCH) {
            let (stream, peer) = match crate::sys::accept_ready(&listener) {
                Ok(Some((s, peer))) => match adopt(s) {
                    Ok(s) => (s, peer),
                    Err(e) => {
                        log::warn!("accept: {e}");
                        continue;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    log::warn!("accept: {e}");
                    monoio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            };
            take(&w, &at, stream, peer);
        }
    }
}

/// Accepts with one multishot operation until the worker drains (`true`), or `false` where
/// the kernel refuses it (the readiness loop takes over; said once in the log). One
/// submission serves every connection: no readiness wait, no `accept4` or count per
/// connection, and the kernel accepts only while its queue holds one (`IORING_CQE_F_SOCK_NONEMPTY`).
/// A drain cancels it, then serves what the kernel accepted before the cancel took effect: no
/// connection the kernel handed over is lost.
async fn accept_multishot(w: &Rc<Worker>, listener: &TcpListener, at: &Accepting) -> bool {
    static FELL_BACK: AtomicBool = AtomicBool::new(false);
    let drain = w.drain.clone();
    let Some(mut multi) = monoio::ringway::AcceptMulti::new(listener) else {
        return false;
    };
    let mut accepted_any = false;
    loop {
        let next = monoio::select! {
            r = multi.next() => Some(r),
            _ = drain.wait() => None,
        };
        match next {
            Some(Some(Ok(fd))) => {
                accepted_any = true;
                accepted(w, at, fd);
            }
            Some(Some(Err(e))) if e.raw_os_error() == Some(libc::EINVAL) && !accepted_any => {
                if !FELL_BACK.swap(true, Ordering::Relaxed) {
                    log::info!("multishot accept refused ({e}); accepting on readiness");
                }
                return false;
            }
            // The client gave up before it was taken: nothing to serve.
            Some(Some(Err(e))) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Some(Some(Err(e))) => {
                // Typically EMFILE: back off instead of spinning (the operation may end; the
                // next `None` starts another).
                log::warn!("accept: {e}");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
            // The kernel ended it (after an error): another, unless the worker drains.
            Some(None) => match monoio::ringway::AcceptMulti::new(listener) {
                Some(m) if !drain.is_set() => multi = m,
                _ => return true,
            },
            None => {
                multi.cancel();
                while let Some(r) = multi.next().await {
                    if let Ok(fd) = r {
                        accepted(w, at, fd);
                    }
                }
                return true;
            }
        }
    }
}

/// A connection a multishot accept took: its peer asked for (the operation cannot say), then
/// served as any other.
fn accepted(w: &Rc<Worker>, at: &Accepting, fd: std::os::fd::OwnedFd) {
    let s = std::net::TcpStream::from(fd);
    let peer = match s.peer_addr() {
        Ok(p) => p,
        // Reset before we asked: nothing to serve.
        Err(_) => return,
    };
    match adopt(s) {
        Ok(stream) => take(w, at, stream, peer),
        Err(e) => log::warn!("accept: {e}"),
    }
}

/// Serves an accepted connection, or refuses it where a connection limit says so.
fn take(w: &Rc<Worker>, at: &Accepting, stream: monoio::net::TcpStream, peer: SocketAddr) {
    match at.gate.enter(&w.current(), at.index, peer.ip()) {
        Ok(pass) => {
            monoio::spawn(serve(w.clone(), stream, peer, at.listen, pass));
        }
        Err(_) => refuse(w, stream, at.listen),
    }
}
