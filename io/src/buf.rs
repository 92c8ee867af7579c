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

use std::cell::RefCell;

use ringway_core::http::body::Piece;

use crate::deadline::{Deadline, IoFail, Limit};

/// Size of the read buffers an exchange uses. Heads up to the configured limit grow past it.
pub(crate) const BUF_SIZE: usize = 16 * 1024;

/// The buffer a body that is not spliced moves through (chunked and close-delimited framing
/// between spliced runs, bodies over TLS, bodies through a stage): 128 KiB, nginx's
/// `proxy_buffers 8 16k` in one piece. Four times `BUF_SIZE` halved the CPU per response of
/// 1 MiB in 4 KiB chunks against one (850 → 420–450 µs); eight times took a further quarter
/// off 256 KiB in 4 KiB chunks at 256 connections (0.53–0.81 of the CPU), where each read
/// freed the origin's window in smaller steps and each step woke its writer (docs/benchmarks.md,
/// run 41). Held only while a body's bytes are in it (`relay::read_arrived`): a relay waiting
/// for its upstream, and an idle connection, hold none.
pub(crate) const RELAY_BUF: usize = 8 * BUF_SIZE;

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

/// Most spare buffers a worker keeps of each size (1 MiB of head buffers, 8 MiB of relay
/// buffers); more are freed.
const SPARES: usize = 64;

/// A worker's spare buffers, lent to connections only while bytes are in them: head buffers
/// ([`BUF_SIZE`]) for the length of an exchange, relay buffers ([`RELAY_BUF`]) from the moment
/// a body's bytes have arrived until they are written on (see `relay.rs`). Both stacks are
/// last in, first out, so the buffer a read gets is the one a write finished with last, still
/// in the CPU's caches; and a connection waiting for its upstream holds none.
///
/// When a stack is empty (more connections hold a buffer at once than the worker keeps), a
/// buffer is allocated: the fall-back, counted in `fresh` (`ringway_buffers_allocated_total`).
#[derive(Default)]
pub(crate) struct Bufs {
    heads: RefCell<Vec<Vec<u8>>>,
    relays: RefCell<Vec<Vec<u8>>>,
    pieces: RefCell<Vec<Vec<Piece>>>,
    fresh: std::cell::Cell<Fresh>,
}

/// Buffers a worker allocated because it had no spare one, by size.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fresh {
    pub(crate) heads: u64,
    pub(crate) relays: u64,
}

impl Bufs {
    /// An empty buffer of at least [`BUF_SIZE`].
    pub(crate) fn take(&self) -> Vec<u8> {
        let b = self.heads.borrow_mut().pop();
        b.or_else(|| self.relays.borrow_mut().pop())
            .unwrap_or_else(|| {
                self.count(|f| f.heads += 1);
                Vec::with_capacity(BUF_SIZE)
            })
    }

    /// An empty buffer of [`RELAY_BUF`].
    pub(crate) fn take_relay(&self) -> Vec<u8> {
        let b = self.relays.borrow_mut().pop();
        b.unwrap_or_else(|| {
            self.count(|f| f.relays += 1);
            Vec::with_capacity(RELAY_BUF)
        })
    }

    /// Grows a buffer that holds bytes (a head buffer with a body's first bytes behind the
    /// head) to [`RELAY_BUF`]: an allocation outside the stacks, counted as a relay buffer's.
    pub(crate) fn grow_relay(&self, buf: &mut Vec<u8>) {
        self.count(|f| f.relays += 1);
        ensure_capacity(buf, RELAY_BUF);
    }

    fn count(&self, f: impl FnOnce(&mut Fresh)) {
        let mut n = self.fresh.get();
        f(&mut n);
        self.fresh.set(n);
    }

    /// Buffers allocated so far because none was spare.
    pub(crate) fn fresh(&self) -> Fresh {
        self.fresh.get()
    }

    /// Takes back a buffer no longer needed (emptied), or frees it.
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        let stack = match buf.capacity() {
            RELAY_BUF => &self.relays,
            c if (BUF_SIZE..RELAY_BUF).contains(&c) => &self.heads,
            _ => return,
        };
        let mut stack = stack.borrow_mut();
        if stack.len() < SPARES {
            buf.clear();
            stack.push(buf);
        }
    }

    /// A relay's list of pieces to gather (see `Transcoder::step_gathered`).
    pub(crate) fn take_pieces(&self) -> Vec<Piece> {
        self.pieces.borrow_mut().pop().unwrap_or_default()
    }

    pub(crate) fn give_pieces(&self, mut p: Vec<Piece>) {
        let mut stack = self.pieces.borrow_mut();
        if stack.len() < SPARES && p.capacity() <= 256 {
            p.clear();
            stack.push(p);
        }
    }

    /// Frees them all (when the worker goes idle).
    pub(crate) fn clear(&self) {
        self.heads.borrow_mut().clear();
        self.relays.borrow_mut().clear();
        self.pieces.borrow_mut().clear();
    }
}

#[allow(dead_code)]
fn _assert_bufs(v: Vec<u8>) -> impl IoBuf + IoBufMut {
    v
}
