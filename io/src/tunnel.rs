//! CONNECT and WebSocket tunnels: bytes both ways between the client and the destination until
//! both sides have closed, or nothing has moved either way for the idle timeout.
//!
//! Each direction splices socket → pipe → socket (`splice.rs`: called from the worker thread,
//! waiting for readiness through io_uring), so the bytes never enter user space; an end of
//! file on one side half-closes the other (so `Connection: close` protocols and TLS
//! close_notify work through the tunnel), and the tunnel ends when both directions have. A
//! receiver that stops reading ends the tunnel after the idle time too.
//!
//! When either end is TLS (a CONNECT inside an HTTPS proxy connection, a WebSocket on a TLS
//! listener or to a TLS upstream) the bytes must pass through rustls, so they are copied: one
//! task moves both directions without blocking, through one 16 KiB buffer each, and waits only
//! for the readiness of whichever socket stopped it (`copy`).

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::splice::{splice, Pipes, Waits};
use crate::stream::{Stream, TlsStream};

/// How long a direction waits: until nothing has moved either way for `idle` (`last` is shared
/// by both); counts what it moved.
struct Idle<'a> {
    idle: Duration,
    last: &'a Cell<Instant>,
    moved: Cell<u64>,
}

impl<'a> Idle<'a> {
    fn new(idle: Duration, last: &'a Cell<Instant>) -> Self {
        Self {
            idle,
            last,
            moved: Cell::new(0),
        }
    }
}

impl Waits for Idle<'_> {
    fn read(&self) -> Option<Duration> {
        let left = self.idle.saturating_sub(self.last.get().elapsed());
        (!left.is_zero()).then_some(left)
    }

    fn write(&self) -> Duration {
        self.idle
    }

    fn moved(&self, n: usize) {
        self.last.set(Instant::now());
        self.moved.set(self.moved.get() + n as u64);
    }

    fn retry_read(&self) -> bool {
        true
    }
}

/// Runs the tunnel; returns the bytes moved client → destination and back. `early_up` holds
/// bytes the client sent after its request head, `early_down` bytes the destination sent after
/// its 101 (each goes first).
pub(crate) async fn run(
    client: &mut Stream,
    up: &mut Stream,
    early_up: Vec<u8>,
    early_down: Vec<u8>,
    idle: Duration,
    pipes: &Pipes,
) -> (u64, u64) {
    let (c, u) = match (client, up) {
        (Stream::Plain(c), Stream::Plain(u)) => (c, u),
        (client, up) => {
            let (Some(c), Some(u)) = (End::of(client), End::of(up)) else {
                return (0, 0);
            };
            return copy(c, u, early_up, early_down, idle).await;
        }
    };
    let last = Cell::new(Instant::now());
    let up_dir = direction(c, u, &early_up, Idle::new(idle, &last), pipes);
    let down_dir = direction(u, c, &early_down, Idle::new(idle, &last), pipes);
    monoio::join!(up_dir, down_dir)
}

/// One direction: `early` first, then spliced until end of file, an error or the idle limit;
/// half-closes `to` at the end.
async fn direction(
    from: &TcpStream,
    to: &TcpStream,
    early: &[u8],
    waits: Idle<'_>,
    pipes: &Pipes,
) -> u64 {
    let mut total = 0;
    if write_all(to, early, waits.idle).await.is_ok() {
        total += early.len() as u64;
        if let Ok(pipe) = pipes.take() {
            // An error or the idle limit ends this direction like an end of file; a pipe that
            // may still hold bytes is not reused.
            if splice(from, to, &pipe, None, &waits).await.is_ok() {
                pipes.give(pipe);
            }
        }
    }
    total += waits.moved.get();
    crate::sys::shutdown_write(crate::sys::fd(to));
    total
}

/// Writes all of `data` to a non-blocking socket, waiting for room through io_uring.
async fn write_all(to: &TcpStream, mut data: &[u8], wait: Duration) -> io::Result<()> {
    while !data.is_empty() {
        let e = match crate::sys::send(crate::sys::fd(to), data) {
            Ok(n) => {
                data = &data[n..];
                continue;
            }
            Err(e) => e,
        };
        match e.kind() {
            io::ErrorKind::WouldBlock => {
                monoio::time::timeout(wait, to.writable(false))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            io::ErrorKind::Interrupted => {}
            _ => return Err(e),
        }
    }
    Ok(())
}

/// One end of a copied tunnel.
enum End<'a> {
    Plain(&'a TcpStream),
    Tls(&'a mut TlsStream),
}

impl<'a> End<'a> {
    fn of(s: &'a mut Stream) -> Option<Self> {
        match s {
            Stream::Plain(t) => Some(Self::Plain(t)),
            Stream::Tls(t) => Some(Self::Tls(t)),
            Stream::Sink => None,
        }
    }

    fn socket(&self) -> &TcpStream {
        match self {
            Self::Plain(t) => t,
            Self::Tls(t) => t.socket(),
        }
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(t) => crate::sys::recv(crate::sys::fd(t), buf),
            Self::Tls(t) => t.try_read(buf),
        }
    }

    /// The bytes taken; `WouldBlock` when none could be.
    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = match self {
            Self::Plain(t) => crate::sys::send(crate::sys::fd(t), data)?,
            Self::Tls(t) => t.try_write(data)?,
        };
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Whether everything written has left (TLS records rustls still holds).
    fn try_flush(&mut self) -> io::Result<bool> {
        match self {
            Self::Plain(_) => Ok(true),
            Self::Tls(t) => t.try_send(),
        }
    }
}

/// One direction of a copied tunnel: `buf[start..end]` read and not yet written.
struct Half {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The source ended (or failed): the destination's sending side is being closed.
    eof: bool,
    /// Over TLS, close_notify was queued.
    notified: bool,
    /// The destination's sending side is closed: this direction is over.
    done: bool,
    moved: u64,
}

/// What a [`Half`] waits for when it cannot go on.
#[derive(Default)]
struct Wants {
    read: bool,
    write: bool,
}

const COPY_BUF: usize = 16 * 1024;

impl Half {
    fn new(early: Vec<u8>) -> Self {
        let end = early.len();
        let mut buf = early;
        buf.resize(end.max(COPY_BUF), 0);
        Self {
            buf,
            start: 0,
            end,
            eof: false,
            notified: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves bytes from `from` to `to` until one of them would block: whether any moved, and
    /// what it waits for.
    fn step(&mut self, from: &mut End<'_>, to: &mut End<'_>) -> (bool, Wants) {
        let mut moved = false;
        while !self.done {
            if self.start < self.end {
                match to.try_write(&self.buf[self.start..self.end]) {
                    Ok(n) => {
                        self.start += n;
                        self.moved += n as u64;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return (
                            moved,
                            Wants {
                                read: false,
                                write: true,
                            },
                        );
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The destination is gone: nothing more can reach it.
                    Err(_) => self.finish(to),
                }
                continue;
            }
            match to.try_flush() {
                Ok(true) => {}
                Ok(false) => {
                    return (
                        moved,
                        Wants {
                            read: false,
                            write: true,
                        },
                    )
                }
                Err(_) => {
                    self.finish(to);
                    continue;
                }
            }
            if self.eof {
                if let (End::Tls(t), false) = (&mut *to, self.notified) {
                    // close_notify, so that the peer can tell the end from a truncation; the
                    // TCP half-close follows once it has left.
                    t.close_write();
                    self.notified = true;
                    continue;
                }
                self.finish(to);
                continue;
            }
            let cap = self.buf.len();
            match from.try_read(&mut self.buf[..cap]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    (self.start, self.end) = (0, n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return (
                        moved,
                        Wants {
                            read: true,
                            write: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset or a TLS error ends this direction like an end of file.
                Err(_) => self.eof = true,
            }
        }
        (moved, Wants::default())
    }

    fn finish(&mut self, to: &End<'_>) {
        (self.start, self.end) = (0, 0);
        self.eof = true;
        self.done = true;
        crate::sys::shutdown_write(crate::sys::fd(to.socket()));
    }
}

/// The copied tunnel: both directions in one task until both are over or nothing has moved
/// either way for `idle`.
async fn copy(
    mut c: End<'_>,
    mut u: End<'_>,
    early_up: Vec<u8>,
    early_down: Vec<u8>,
    idle: Duration,
) -> (u64, u64) {
    let mut up = Half::new(early_up);
    let mut down = Half::new(early_down);
    let mut last = Instant::now();
    while !(up.done && down.done) {
        let (moved_up, w_up) = up.step(&mut c, &mut u);
        let (moved_down, w_down) = down.step(&mut u, &mut c);
        if moved_up || moved_down {
            last = Instant::now();
            continue;
        }
        let left = idle.saturating_sub(last.elapsed());
        if left.is_zero() {
            break;
        }
        // The client is read for `up` and written for `down`; the destination the other way.
        let client = ready(c.socket(), w_up.read, w_down.write);
        let dest = ready(u.socket(), w_down.read, w_up.write);
        let either = async {
            monoio::select! {
                _ = client => {},
                _ = dest => {},
            }
        };
        if monoio::time::timeout(left, either).await.is_err() {
            break;
        }
    }
    // Ended by the idle limit: a TLS end still open is told so (close_notify, sent if the
    // socket takes it now), so that its peer sees an end, not a truncation.
    for (end, half) in [(&mut c, &down), (&mut u, &up)] {
        if let (End::Tls(t), false) = (end, half.notified || half.done) {
            t.close_write();
            let _ = t.try_send();
        }
    }
    (up.moved, down.moved)
}

/// Resolves when `s` is readable (`read`) or writable (`write`); never when neither is asked.
async fn ready(s: &TcpStream, read: bool, write: bool) {
    match (read, write) {
        (true, true) => monoio::select! {
            _ = s.readable(false) => {},
            _ = s.writable(false) => {},
        },
        (true, false) => drop(s.readable(false).await),
        (false, true) => drop(s.writable(false).await),
        (false, false) => std::future::pending().await,
    }
}
