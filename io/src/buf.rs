//! Owned-buffer IO helpers for monoio's ownership-passing reads and writes.
//!
//! monoio takes a buffer by value for the duration of an operation (the kernel may write into it
//! until the completion arrives) and hands it back with the result. These helpers read into a
//! `Vec`'s spare capacity and write a range of it, each bounded by a [`Limit`]. When the limit
//! passes, the operation is cancelled and the buffer goes with it: the caller gets an empty
//! `Vec` back and closes the connection.

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::deadline::{Deadline, IoFail, Limit};

/// Size of the read buffers an exchange uses. Heads up to the configured limit grow past it.
pub(crate) const BUF_SIZE: usize = 16 * 1024;

/// The buffer a body that is not spliced moves through (chunked and close-delimited framing
/// between spliced runs, bodies over TLS, bodies through a stage). Four times `BUF_SIZE`
/// halved the CPU per response of 1 MiB in 4 KiB chunks (850 → 420–450 µs; nginx with
/// `proxy_buffers 8 16k`: 385–460) by moving a body in a quarter of the reads and writes. Held
/// only while a body moves: an idle connection gives it back to the worker's spares.
pub(crate) const RELAY_BUF: usize = 4 * BUF_SIZE;

/// Reads once into `buf[len..len + max]` (bounded by capacity), appending. Returns bytes read;
/// 0 means the peer closed.
pub(crate) async fn read_append(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    limit: impl Limit,
) -> Result<usize, IoFail> {
    let len = buf.len();
    if buf.capacity() == len {
        buf.reserve(4096);
    }
    let end = buf.capacity().min(len.saturating_add(max));
    let owned = std::mem::take(buf).slice_mut(len..end);
    let (res, owned) = limit.run(s.read(owned)).await?;
    *buf = owned.into_inner();
    res.map_err(IoFail::Io)
}

/// Reads like [`read_append`] until `deadline`. When it passes, the read is cancelled and its
/// completion awaited, so bytes the kernel had already placed are kept, not lost with the
/// buffer: `IoFail::Timeout` only when nothing was read. `canceller` is the connection's (it
/// is replaced after a cancel).
pub(crate) async fn read_append_or_cancel(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: &Deadline,
    canceller: &mut Canceller,
) -> Result<usize, IoFail> {
    let len = buf.len();
    if buf.capacity() == len {
        buf.reserve(4096);
    }
    let end = buf.capacity();
    let owned = std::mem::take(buf).slice_mut(len..end);
    let mut read = std::pin::pin!(s.cancelable_read(owned, canceller.handle()));
    let done = monoio::select! {
        r = &mut read => Some(r),
        _ = deadline.elapsed() => None,
    };
    let cancelled = done.is_none();
    let (res, owned) = match done {
        Some(r) => r,
        None => {
            *canceller = std::mem::take(canceller).cancel();
            read.await
        }
    };
    *buf = owned.into_inner();
    match res {
        // A cancelled read ends with ECANCELED, or EINTR when the kernel had it in progress.
        Err(e) if cancelled && matches!(e.raw_os_error(), Some(libc::ECANCELED | libc::EINTR)) => {
            Err(IoFail::Timeout)
        }
        r => r.map_err(IoFail::Io),
    }
}

/// Writes `buf[range]` completely.
pub(crate) async fn write_range(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
    limit: impl Limit,
) -> Result<(), IoFail> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf).slice(range);
    let (res, owned) = limit.run(s.write_all(owned)).await?;
    *buf = owned.into_inner();
    res.map(|_| ()).map_err(IoFail::Io)
}

/// Writes all of `buf`.
pub(crate) async fn write_all(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: impl Limit,
) -> Result<(), IoFail> {
    let n = buf.len();
    write_range(s, buf, 0..n, limit).await
}

/// Keeps a buffer's capacity at least `cap` after a cancelled operation took it.
pub(crate) fn ensure_capacity(buf: &mut Vec<u8>, cap: usize) {
    if buf.capacity() < cap {
        buf.reserve(cap - buf.len());
    }
}

#[allow(dead_code)]
fn _assert_bufs(v: Vec<u8>) -> impl IoBuf + IoBufMut {
    v
}
