//! ringway: io_uring operations monoio does not offer (PATCHES.md lists every change).

use std::{
    cell::UnsafeCell,
    future::poll_fn,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    rc::Rc,
};

use crate::driver::{Inner, UringInner, CURRENT};

/// A multishot accept (`IORING_OP_ACCEPT` with `IORING_ACCEPT_MULTISHOT`, Linux 5.19) on a
/// listening socket: one submission, then one completion per connection, each carrying the
/// new descriptor (close-on-exec, non-blocking). The kernel also says whether more connections
/// wait, so it never makes an accept that finds the queue empty.
///
/// Nothing accepted is lost: [`cancel`](Self::cancel) asks the kernel to stop, and the
/// connections it accepted before that still come out of [`next`](Self::next) before its
/// `None`. Dropped, it closes whatever it accepted that was not taken.
pub struct AcceptMulti {
    ring: Rc<UnsafeCell<UringInner>>,
    index: usize,
    cancelled: bool,
}

impl AcceptMulti {
    /// Starts accepting on `listener`, which must stay open while this lives. `None` outside a
    /// runtime on the io_uring driver. A kernel without multishot accept answers with an error
    /// from [`next`](Self::next) (`EINVAL`), then `None`.
    pub fn new(listener: &impl AsRawFd) -> Option<Self> {
        if !CURRENT.is_set() {
            return None;
        }
        CURRENT.with(|inner| match inner {
            Inner::Uring(ring) => Some(Self {
                index: UringInner::accept_multi(ring, listener.as_raw_fd()),
                ring: ring.clone(),
                cancelled: false,
            }),
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }

    /// The next accepted connection, or the error the kernel gave for one; `None` once the
    /// operation has ended (cancelled, or stopped by the kernel: after an error such as
    /// `EMFILE`, it may end; start another).
    pub async fn next(&mut self) -> Option<io::Result<OwnedFd>> {
        let r = poll_fn(|cx| UringInner::poll_accept_multi(&self.ring, self.index, cx)).await?;
        // SAFETY: a non-negative result of an accept is a new descriptor that only this value
        // knows of; it is handed out once.
        Some(r.map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Asks the kernel to stop accepting. Connections accepted before the cancel took effect
    /// still come from [`next`](Self::next), then `None`.
    pub fn cancel(&mut self) {
        if !self.cancelled {
            self.cancelled = true;
            UringInner::cancel_accept_multi(&self.ring, self.index);
        }
    }
}

impl Drop for AcceptMulti {
    fn drop(&mut self) {
        UringInner::drop_accept_multi(&self.ring, self.index);
    }
}

/// Sets up, on this thread's io_uring driver, the ring of provided buffers that
/// [`RecvMulti`] receives into: `count` buffers (a power of two, at most 32,768) of `size`
/// bytes, their pages touched only when the kernel first fills them. `Ok(false)` outside a
/// runtime on the io_uring driver, or when a ring is set up already; an error when the kernel
/// refuses it (before Linux 5.19).
pub fn recv_ring(count: u16, size: u32) -> io::Result<bool> {
    if !CURRENT.is_set() {
        return Ok(false);
    }
    CURRENT.with(|inner| match inner {
        Inner::Uring(ring) => UringInner::recv_ring_init(ring, count, size),
        #[allow(unreachable_patterns)]
        _ => Ok(false),
    })
}

/// A multishot receive (`IORING_OP_RECV` with `IORING_RECV_MULTISHOT`, Linux 6.0) on a
/// socket, into the buffers of the ring [`recv_ring`] set up: one submission, then one
/// completion each time bytes arrive, with no operation, poll or buffer of the socket's own
/// in between. Bytes are copied out to the caller's buffer and the ring's buffer given back at
/// once.
///
/// The kernel ends it at the peer's end of stream (a read of 0), on an error, and when the
/// ring has no buffer left (`ENOBUFS`: read the socket another way, then start another); the
/// driver ends it when its owner has left four results untaken. One pass of the kernel takes
/// everything the socket holds (as many buffers as that needs, while the ring has them), so
/// the four bound only what later passes take: the bytes after that stay in the socket under
/// TCP's flow control. Nothing received is lost: what came before the end still comes out of
/// [`read`](Self::read).
pub struct RecvMulti {
    ring: Rc<UnsafeCell<UringInner>>,
    index: usize,
}

impl RecvMulti {
    /// Starts receiving on `socket`, which must stay open while this lives. `None` outside a
    /// runtime on the io_uring driver or before [`recv_ring`].
    pub fn new(socket: &impl AsRawFd) -> Option<Self> {
        Self::start(socket, false)
    }

    /// A single receive into one buffer of the ring (`IORING_OP_RECV` with
    /// `IOSQE_BUFFER_SELECT`, Linux 5.19): one result, then the end. It takes at most one
    /// buffer, where one pass of a multishot receive takes all the socket holds; and, as that
    /// one, it holds no buffer until bytes arrive.
    pub fn once(socket: &impl AsRawFd) -> Option<Self> {
        Self::start(socket, true)
    }

    fn start(socket: &impl AsRawFd, once: bool) -> Option<Self> {
        if !CURRENT.is_set() {
            return None;
        }
        CURRENT.with(|inner| match inner {
            Inner::Uring(ring) => Some(Self {
                index: UringInner::recv_multi(ring, socket.as_raw_fd(), once)?,
                ring: ring.clone(),
            }),
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }

    /// Appends the next bytes received to `out`: `Some(Ok(n))` (0 at the peer's end of
    /// stream), the error the kernel gave, or `None` once the receive has ended.
    pub async fn read(&mut self, out: &mut Vec<u8>) -> Option<io::Result<usize>> {
        poll_fn(|cx| UringInner::poll_recv_multi(&self.ring, self.index, out, Some(cx))).await
    }

    /// As [`read`](Self::read), without waiting: `Err(())` when nothing has arrived yet.
    pub fn try_read(&mut self, out: &mut Vec<u8>) -> Result<Option<io::Result<usize>>, ()> {
        match UringInner::poll_recv_multi(&self.ring, self.index, out, None) {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => Err(()),
        }
    }

    /// Asks the kernel to stop receiving. What it received before the cancel took effect
    /// still comes from [`read`](Self::read), then `None`.
    pub fn cancel(&mut self) {
        UringInner::cancel_recv_multi(&self.ring, self.index);
    }
}

impl Drop for RecvMulti {
    fn drop(&mut self) {
        UringInner::drop_recv_multi(&self.ring, self.index);
    }
}
