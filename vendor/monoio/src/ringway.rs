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
/// new descriptor (close-on-exec, blocking). The kernel also says whether more connections
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
