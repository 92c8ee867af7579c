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
}

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
    pub(crate) fn complete(mut self, result: io::Result<u32>, flags: u32) {
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
                    return;
                }
                a.results.push_back(result);
                a.ended |= !more;
                if let Some(w) = a.waker.take() {
                    w.wake();
                }
            }
        }
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
        }
        true
    }
}
