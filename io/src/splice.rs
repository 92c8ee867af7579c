//! Zero-copy moves between plain sockets, without io-wq.
//!
//! io_uring's `splice` op cannot complete inline for a socket, so the kernel punts it to an
//! io-wq worker thread: every splice then pays two thread hand-offs, which cost more than the
//! copy they save (docs/benchmarks.md, the zero-copy issue: 11 `iou-wrk` threads using more CPU
//! than the worker itself at 1 MiB). Here `splice(2)` is called directly from the worker
//! thread with `SPLICE_F_NONBLOCK` on non-blocking sockets (made so before the first splice), moving
//! socket → pipe → socket; only when a side has nothing to give or no room to take does the
//! worker wait, for readiness, through io_uring (`PollAdd`). Pipes come from a per-worker pool
//! and go back empty, so a pipe exists per transfer in flight, not per connection.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys;
use std::time::Duration;

use monoio::net::TcpStream;

/// Bytes asked of one splice, and the pipe's capacity: 4x the default 64 KiB measured 1.2x the
/// req/s and 6% less CPU per 1 MiB response (docs/benchmarks-log.md run 15).
const CHUNK: usize = 256 * 1024;

/// Idle pipes a worker keeps for the next transfer (each holds up to `CHUNK`; unprivileged
/// users have a budget of pipe pages, `/proc/sys/fs/pipe-user-pages-soft`, 64 MiB by default).
/// An idle pipe holds no pages, only two descriptors. 16 left 256 concurrent chunked relays
/// creating a pipe every third response; 64 covers most bursts for 128 descriptors.
const POOLED: usize = 64;

/// A non-blocking pipe: the buffer splice moves pages through.
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    /// The write end.
    pub(crate) fn w(&self) -> std::os::fd::BorrowedFd<'_> {
        self.w.as_fd()
    }

    fn new() -> io::Result<Self> {
        let (r, w) = sys::pipe()?;
        // A larger pipe moves a large body in fewer rounds.
        sys::set_pipe_size(w.as_fd(), CHUNK);
        Ok(Self { r, w })
    }
}

/// A worker's idle pipes.
#[derive(Default)]
pub(crate) struct Pipes(RefCell<Vec<Pipe>>);

impl Pipes {
    pub(crate) fn take(&self) -> io::Result<Pipe> {
        match self.0.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Takes back a pipe a transfer left empty (one that failed may hold bytes: dropped).
    pub(crate) fn give(&self, p: Pipe) {
        let mut pool = self.0.borrow_mut();
        if pool.len() < POOLED {
            pool.push(p);
        }
    }
}

/// Which end stopped a transfer, and how.
#[derive(Debug)]
pub(crate) enum SpliceError {
    /// The source ended before the bytes asked for.
    Truncated,
    /// Reading: an error, or nothing to read for the read timeout.
    Source(crate::deadline::IoFail),
    /// Writing: an error, or no room for the write timeout.
    Destination(crate::deadline::IoFail),
}

/// How long a transfer waits for each side.
pub(crate) trait Waits {
    /// For the source to have bytes; `None`: stop (an idle tunnel).
    fn read(&self) -> Option<Duration>;
    /// For the destination to take bytes.
    fn write(&self) -> Duration;
    /// `n` bytes moved.
    fn moved(&self, _n: usize) {}
    /// After a read wait ran out: wait again (`read()` decides for how long) rather than fail.
    fn retry_read(&self) -> bool {
        false
    }
}

/// Fixed waits (a body relay).
pub(crate) struct Fixed {
    pub(crate) read: Duration,
    pub(crate) write: Duration,
}

impl Waits for Fixed {
    fn read(&self) -> Option<Duration> {
        Some(self.read)
    }

    fn write(&self) -> Duration {
        self.write
    }
}

/// Moves bytes from `from` to `to` through `pipe`: exactly `limit` bytes when given, else until
/// the source's end of file. Returns the bytes moved. On success the pipe is empty again.
/// Both sockets must be non-blocking ([`nonblocking`]: upstream connections are made so when
/// opened, a client connection before its first splice), or a splice could block the worker.
pub(crate) async fn splice(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    limit: Option<u64>,
    waits: &impl Waits,
) -> Result<u64, SpliceError> {
    let mut total = 0u64;
    loop {
        let want = match limit {
            Some(l) => (l - total).min(CHUNK as u64) as usize,
            None => CHUNK,
        };
        if want == 0 {
            return Ok(total);
        }
        let n = match fill(from, pipe, want, waits).await? {
            0 if limit.is_some() => return Err(SpliceError::Truncated),
            0 => return Ok(total),
            n => n,
        };
        drain(pipe, to, n, waits).await?;
        total += n as u64;
        waits.moved(n);
    }
}

/// Moves up to `want` bytes (at most a pipe's worth) from `from` into the empty `pipe`,
/// waiting for the socket to have some. Returns how many; 0 at the source's end of file.
pub(crate) async fn fill(
    from: &TcpStream,
    pipe: &Pipe,
    want: usize,
    waits: &impl Waits,
) -> Result<usize, SpliceError> {
    use crate::deadline::IoFail;
    let (src, pw) = (sys::fd(from), pipe.w.as_fd());
    let want = want.min(CHUNK);
    // The pipe is empty here, so EAGAIN means the socket has nothing.
    loop {
        match sys::splice(src, pw, want) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let Some(wait) = waits.read() else {
                    return Err(SpliceError::Source(IoFail::Timeout));
                };
                match monoio::time::timeout(wait, from.readable(false)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(SpliceError::Source(IoFail::Io(e))),
                    // Waited the whole time: ask again (a tunnel's other direction may have
                    // moved meanwhile); `read()` says when to give up. A transfer with no
                    // such say gives up now.
                    Err(_) if waits.retry_read() => {}
                    Err(_) => return Err(SpliceError::Source(IoFail::Timeout)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpliceError::Source(IoFail::Io(e))),
        }
    }
}

/// Moves the `n` bytes `pipe` holds to `to`, waiting for room as needed; the pipe is empty
/// after.
pub(crate) async fn drain(
    pipe: &Pipe,
    to: &TcpStream,
    n: usize,
    waits: &impl Waits,
) -> Result<(), SpliceError> {
    use crate::deadline::IoFail;
    let (pr, dst) = (pipe.r.as_fd(), sys::fd(to));
    // EAGAIN: the socket's buffer is full.
    let mut left = n;
    while left > 0 {
        match sys::splice(pr, dst, left) {
            Ok(0) => {
                return Err(SpliceError::Destination(IoFail::Io(
                    io::ErrorKind::WriteZero.into(),
                )))
            }
            Ok(m) => left -= m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_room(to, waits).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpliceError::Destination(IoFail::Io(e))),
        }
    }
    Ok(())
}

/// Writes `data` (a chunk header) to `to` ahead of bytes about to be spliced to it, with
/// `MSG_MORE` ([`sys::send_more`]): it leaves in the first segment of the splice that follows
/// (the caller's next call, always) instead of one of its own. Measured on 1 MiB in 64 KiB
/// chunks at 256 connections: 65 segments per response against 69, 0.75–1.03x the CPU of a
/// plain send (docs/benchmarks-log.md, run 42). A close-delimited body's framing, a header
/// per 256 KiB, goes by [`put`]: there `MSG_MORE` measured no better.
pub(crate) async fn put_ahead(
    to: &TcpStream,
    data: &[u8],
    waits: &impl Waits,
) -> Result<(), SpliceError> {
    send_all(to, data, true, waits).await
}

/// Writes `data` to `to` by `send(2)` on the non-blocking socket, as the splices around it.
pub(crate) async fn put(
    to: &TcpStream,
    data: &[u8],
    waits: &impl Waits,
) -> Result<(), SpliceError> {
    send_all(to, data, false, waits).await
}

async fn send_all(
    to: &TcpStream,
    data: &[u8],
    more: bool,
    waits: &impl Waits,
) -> Result<(), SpliceError> {
    use crate::deadline::IoFail;
    let dst = sys::fd(to);
    let mut off = 0;
    while off < data.len() {
        let r = match more {
            true => sys::send_more(dst, &data[off..]),
            false => sys::send(dst, &data[off..]),
        };
        match r {
            Ok(0) => {
                return Err(SpliceError::Destination(IoFail::Io(
                    io::ErrorKind::WriteZero.into(),
                )))
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_room(to, waits).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpliceError::Destination(IoFail::Io(e))),
        }
    }
    Ok(())
}

/// Waits for room in `to`'s send buffer, for the write timeout at most.
async fn wait_room(to: &TcpStream, waits: &impl Waits) -> Result<(), SpliceError> {
    use crate::deadline::IoFail;
    match monoio::time::timeout(waits.write(), to.writable(false)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SpliceError::Destination(IoFail::Io(e))),
        Err(_) => Err(SpliceError::Destination(IoFail::Timeout)),
    }
}

/// Reads `n` bytes the pipe holds into `buf`: spliced bytes that turn out to need looking at
/// (a chunked body's framing) or to go on through the buffers after all.
pub(crate) fn take_out(pipe: &Pipe, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    buf.reserve(n);
    let mut left = n;
    while left > 0 {
        match sys::read_append(pipe.r.as_fd(), buf, left) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => left -= k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes an upstream socket non-blocking (monoio's io_uring connect makes blocking ones), so
/// that a splice that cannot proceed returns EAGAIN instead of blocking the worker. Once per
/// connection, when it is opened; accepted sockets are non-blocking from their accept
/// (`worker.rs`).
pub(crate) fn nonblocking(s: &TcpStream) -> io::Result<()> {
    sys::set_nonblocking(sys::fd(s))
}
