//! The access log's mechanism: each worker formats its lines (core's [`Format`]) into its own
//! buffer, hands the buffer to the writer thread when it holds `buffer` bytes or its oldest line
//! is `flush` old, and goes on; the writer thread alone touches the file. A worker never waits:
//! when the writer is behind (a slow or full disk) the hand-off queue is full and the worker
//! drops its buffer and counts the lines, so a full disk costs lines, never requests.
//!
//! SIGUSR1 (`ringway reopen`) makes the writer reopen the file, for logrotate; a reload that
//! names another target switches to it; at a graceful stop every worker hands over what it
//! holds and the writer writes it all before the process exits.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ringway_core::accesslog::Entry;
use ringway_core::config::{AccessLog, LogTarget};

/// Buffers waiting for the writer (each up to `buffer` bytes): a few seconds of a busy box.
const QUEUE: usize = 256;

/// What the writer thread is asked to do.
pub(crate) enum Msg {
    Lines(Vec<u8>),
    /// Reopen the file (logrotate moved it).
    Reopen,
    /// Write from now on to this target (`None`: no log).
    Target(Option<LogTarget>),
    /// Write everything before this, then end.
    Stop,
}

/// The process's side of the log: the queue to the writer, and what was dropped.
#[derive(Clone)]
pub(crate) struct Log {
    tx: Sender<Msg>,
    /// Control messages (reopen, target, stop) go on their own queue, so a full line queue
    /// never loses one.
    ctl: Sender<Msg>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) written: Arc<AtomicU64>,
}

/// The writer thread; joined at the end of the process.
pub(crate) struct Writer {
    thread: std::thread::JoinHandle<()>,
    ctl: Sender<Msg>,
}

impl Log {
    /// Starts the writer thread, writing to `target`.
    pub(crate) fn start(target: Option<LogTarget>) -> std::io::Result<(Self, Writer)> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (ctl, ctl_rx) = crossbeam_channel::unbounded();
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let mut out = Out::open(target);
        let (d, wr) = (dropped.clone(), written.clone());
        let thread = std::thread::Builder::new()
            .name("ringway-log".into())
            .spawn(move || write_loop(&mut out, &rx, &ctl_rx, &d, &wr))?;
        Ok((
            Self {
                tx,
                ctl: ctl.clone(),
                dropped,
                written,
            },
            Writer { thread, ctl },
        ))
    }

    pub(crate) fn reopen(&self) {
        let _ = self.ctl.send(Msg::Reopen);
    }

    pub(crate) fn retarget(&self, target: Option<LogTarget>) {
        let _ = self.ctl.send(Msg::Target(target));
    }
}

impl Writer {
    /// Writes what is queued and ends the thread (after every worker handed over its lines).
    pub(crate) fn finish(self) {
        let _ = self.ctl.send(Msg::Stop);
        let _ = self.thread.join();
    }
}

fn write_loop(
    out: &mut Out,
    rx: &Receiver<Msg>,
    ctl: &Receiver<Msg>,
    dropped: &AtomicU64,
    written: &AtomicU64,
) {
    let mut last_warning: Option<Instant> = None;
    let mut write = |out: &mut Out, buf: &[u8]| {
        let lines = bytecount(buf);
        match out.write(buf) {
            Ok(()) => {
                written.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                dropped.fetch_add(lines, Ordering::Relaxed);
                let quiet =
                    matches!(last_warning, Some(t) if t.elapsed() < Duration::from_secs(10));
                if !quiet {
                    last_warning = Some(Instant::now());
                    log::warn!(
                        "access log: cannot write to {}: {e}; {lines} line(s) dropped (counted in the status)",
                        out.describe()
                    );
                }
            }
        }
    };
    loop {
        crossbeam_channel::select! {
            recv(rx) -> m => match m {
                Ok(Msg::Lines(buf)) => write(out, &buf),
                Ok(_) => {}
                Err(_) => return,
            },
            recv(ctl) -> m => match m {
                Ok(Msg::Reopen) => {
                    log::info!("access log: reopening {}", out.describe());
                    out.reopen();
                }
                Ok(Msg::Target(t)) => {
                    if t != out.target {
                        *out = Out::open(t);
                    }
                }
                Ok(Msg::Stop) | Err(_) => {
                    // Workers handed over their last lines before this was sent.
                    while let Ok(Msg::Lines(buf)) = rx.try_recv() {
                        write(out, &buf);
                    }
                    out.flush();
                    return;
                }
                Ok(Msg::Lines(buf)) => write(out, &buf),
            },
        }
    }
}

fn bytecount(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// An open target.
struct Out {
    target: Option<LogTarget>,
    sink: Sink,
}

enum Sink {
    None,
    File(std::fs::File),
    Stdout,
    Syslog(std::os::unix::net::UnixDatagram),
    /// Could not be opened; tried again at the next reopen.
    Broken(String),
}

impl Out {
    fn open(target: Option<LogTarget>) -> Self {
        let sink = match &target {
            None => Sink::None,
            Some(t) => match open(t) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("access log: cannot open {}: {e}", t.describe());
                    Sink::Broken(e.to_string())
                }
            },
        };
        Self { target, sink }
    }

    fn reopen(&mut self) {
        *self = Self::open(self.target.take());
    }

    fn describe(&self) -> String {
        self.target
            .as_ref()
            .map_or_else(|| "nothing".into(), LogTarget::describe)
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::None => Ok(()),
            Sink::File(f) => f.write_all(buf),
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(buf)?;
                o.flush()
            }
            Sink::Syslog(s) => {
                // RFC 3164 framing, facility local7, severity info: <190>.
                let mut d = Vec::with_capacity(512);
                for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    d.clear();
                    d.extend_from_slice(b"<190>ringway: ");
                    d.extend_from_slice(line);
                    s.send(&d)?;
                }
                Ok(())
            }
            Sink::Broken(why) => Err(std::io::Error::other(why.clone())),
        }
    }

    fn flush(&mut self) {
        if let Sink::File(f) = &mut self.sink {
            let _ = f.flush();
        }
    }
}

fn open(t: &LogTarget) -> std::io::Result<Sink> {
    Ok(match t {
        LogTarget::File(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            Sink::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(p)?,
            )
        }
        LogTarget::Stdout => Sink::Stdout,
        LogTarget::Syslog(p) => {
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            s.connect(p)?;
            Sink::Syslog(s)
        }
    })
}

/// A worker's buffer of lines.
pub(crate) struct WorkerLog {
    log: Log,
    buf: RefCell<Vec<u8>>,
    /// When the oldest line in `buf` was added.
    since: Cell<Option<Instant>>,
    /// Lines this worker logged (the request id's counter).
    seq: Cell<u64>,
}

impl WorkerLog {
    pub(crate) fn new(log: Log) -> Self {
        Self {
            log,
            buf: RefCell::new(Vec::new()),
            since: Cell::new(None),
            seq: Cell::new(0),
        }
    }

    /// The next line's number.
    pub(crate) fn next_seq(&self) -> u64 {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        n
    }

    /// Adds one line, handing the buffer over when it is full.
    pub(crate) fn add(&self, cfg: &AccessLog, e: &Entry<'_>, now: Instant) {
        let mut buf = self.buf.borrow_mut();
        if buf.capacity() == 0 {
            buf.reserve(cfg.buffer + 1024);
        }
        cfg.format.write(e, &mut buf);
        if self.since.get().is_none() {
            self.since.set(Some(now));
        }
        if buf.len() >= cfg.buffer {
            drop(buf);
            self.hand_over();
        }
    }

    /// Hands the buffer over if its oldest line is `flush` old (or always, when `flush` is
    /// zero: at a stop).
    pub(crate) fn tick(&self, flush: Duration, now: Instant) {
        if self
            .since
            .get()
            .is_some_and(|t| now.saturating_duration_since(t) >= flush)
        {
            self.hand_over();
        }
    }

    fn hand_over(&self) {
        self.since.set(None);
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let cap = buf.capacity();
        let full = std::mem::replace(&mut *buf, Vec::with_capacity(cap));
        match self.log.tx.try_send(Msg::Lines(full)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Lines(b)) | TrySendError::Disconnected(Msg::Lines(b))) => {
                self.log.dropped.fetch_add(bytecount(&b), Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
}
