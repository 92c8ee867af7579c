//! Uring state lifecycle.
//! Partly borrow from tokio-uring.

use std::{
    io,
    task::{Context, Poll, Waker},
};

use crate::{driver::op::CompletionMeta, utils::slab::Ref};

pub(crate) enum Lifecycle {
    /// The operation has been submitted to uring and is currently in-flight
    Submitted,

    /// The submitter is waiting for the completion of the operation
    Waiting(Waker),

    /// The submitter no longer has interest in the operation result. The state
    /// must be passed to the driver and held until the operation completes.
    #[allow(dead_code)]
    Ignored(Box<dyn std::any::Any>),

    /// The operation has completed.
    Completed(io::Result<u32>, u32),

    /// ringway: a multishot accept, whose completions queue until they are taken.
    Accepting(Box<Accepting>),

    /// ringway: a multishot receive into the ring's provided buffers, whose completions queue
    /// until they are taken.
    Receiving(Box<Receiving>),
}

/// ringway: what the driver does after a completion, beyond waking its owner.
pub(crate) enum After {
    Nothing,
    /// Give this provided buffer back to the ring: its owner is gone.
    Recycle(u16),
    /// Ask the kernel to end this operation: its owner has not taken what it queued.
    Cancel,
}

/// ringway: the record of a multishot receive (`crate::ringway::RecvMulti`).
#[derive(Default)]
pub(crate) struct Receiving {
    /// Results in the order the kernel gave them: bytes received (in the provided buffer
    /// whose id is second; 0 bytes, the peer's end of stream), or an error.
    pub(crate) results: std::collections::VecDeque<(io::Result<u32>, u16)>,
    pub(crate) waker: Option<Waker>,
    /// The last completion (without `IORING_CQE_F_MORE`) came: no more will.
    pub(crate) ended: bool,
    /// A cancel was asked for (by the owner, or because too much was queued).
    pub(crate) cancelling: bool,
    /// The owner is gone: buffers that arrive go back to the ring, and the record is removed
    /// with the last completion.
    pub(crate) detached: bool,
}

/// ringway: how many received buffers a multishot receive may queue before the driver ends it.
/// The bytes after them stay in the socket, under TCP's flow control, until the owner reads
/// again. One pass of the kernel's receive takes all that the socket holds, however many
/// buffers that is: this stops the passes after it.
pub(crate) const RECEIVING_MAX_QUEUED: usize = 4;

/// ringway: the record of a multishot accept (`crate::ringway::AcceptMulti`).
#[derive(Default)]
pub(crate) struct Accepting {
    /// Accepted descriptors (or errors), in the order the kernel gave them.
    pub(crate) results: std::collections::VecDeque<io::Result<u32>>,
    pub(crate) waker: Option<Waker>,
    /// The last completion (without `IORING_CQE_F_MORE`) came: no more will.
    pub(crate) ended: bool,
    /// The owner is gone: a descriptor that arrives is closed, and the record is removed with
    /// the last completion.
    pub(crate) detached: bool,
}

impl<'a> Ref<'a, Lifecycle> {
    pub(crate) fn complete(mut self, result: io::Result<u32>, flags: u32) -> After {
        let ref_mut = &mut *self;
        match ref_mut {
            Lifecycle::Submitted => {
                *ref_mut = Lifecycle::Completed(result, flags);
            }
            Lifecycle::Waiting(_) => {
                let old = std::mem::replace(ref_mut, Lifecycle::Completed(result, flags));
                match old {
                    Lifecycle::Waiting(waker) => {
                        waker.wake();
                    }
                    _ => unsafe { std::hint::unreachable_unchecked() },
                }
            }
            Lifecycle::Ignored(..) => {
                self.remove();
            }
            Lifecycle::Completed(..) => unsafe { std::hint::unreachable_unchecked() },
            Lifecycle::Accepting(a) => {
                let more = io_uring::cqueue::more(flags);
                if a.detached {
                    if let Ok(fd) = result {
                        // SAFETY: the kernel gave this descriptor to the ring's owner, and
                        // nobody else knows of it.
                        unsafe { libc::close(fd as i32) };
                    }
                    if !more {
                        self.remove();
                    }
                    return After::Nothing;
                }
                a.results.push_back(result);
                a.ended |= !more;
                if let Some(w) = a.waker.take() {
                    w.wake();
                }
            }
            Lifecycle::Receiving(r) => {
                let more = io_uring::cqueue::more(flags);
                let bid = io_uring::cqueue::buffer_select(flags);
                if r.detached {
                    if !more {
                        self.remove();
                    }
                    return bid.map_or(After::Nothing, After::Recycle);
                }
                r.results.push_back((result, bid.unwrap_or(u16::MAX)));
                r.ended |= !more;
                if let Some(w) = r.waker.take() {
                    w.wake();
                }
                if more && !r.cancelling && r.results.len() >= RECEIVING_MAX_QUEUED {
                    r.cancelling = true;
                    return After::Cancel;
                }
            }
        }
        After::Nothing
    }

    #[allow(clippy::needless_pass_by_ref_mut)]
    pub(crate) fn poll_op(mut self, cx: &mut Context<'_>) -> Poll<CompletionMeta> {
        let ref_mut = &mut *self;
        match ref_mut {
            Lifecycle::Submitted => {
                *ref_mut = Lifecycle::Waiting(cx.waker().clone());
                return Poll::Pending;
            }
            Lifecycle::Waiting(waker) => {
                if !waker.will_wake(cx.waker()) {
                    *ref_mut = Lifecycle::Waiting(cx.waker().clone());
                }
                return Poll::Pending;
            }
            _ => {}
        }

        match self.remove() {
            Lifecycle::Completed(result, flags) => Poll::Ready(CompletionMeta { result, flags }),
            Lifecycle::Accepting(_) => unreachable!("a multishot accept polled as an operation"),
            Lifecycle::Receiving(_) => unreachable!("a multishot receive polled as an operation"),
            _ => unsafe { std::hint::unreachable_unchecked() },
        }
    }

    // return if the op must has been finished
    pub(crate) fn drop_op<T: 'static>(mut self, data: &mut Option<T>) -> bool {
        let ref_mut = &mut *self;
        match ref_mut {
            Lifecycle::Submitted | Lifecycle::Waiting(_) => {
                if let Some(data) = data.take() {
                    *ref_mut = Lifecycle::Ignored(Box::new(data));
                } else {
                    *ref_mut = Lifecycle::Ignored(Box::new(())); // () is a ZST, so it does not
                                                                 // allocate
                };
                return false;
            }
            Lifecycle::Completed(..) => {
                self.remove();
            }
            Lifecycle::Ignored(..) => unsafe { std::hint::unreachable_unchecked() },
            Lifecycle::Accepting(_) => unreachable!("a multishot accept dropped as an operation"),
            Lifecycle::Receiving(_) => unreachable!("a multishot receive dropped as an operation"),
        }
        true
    }
}
