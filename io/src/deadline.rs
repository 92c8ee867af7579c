//! How long an IO operation may take: a [`Limit`].
//!
//! Two kinds. A `Duration` arms a fresh timer for the one operation (monoio's `timeout`): what
//! body relays, handshakes and background work use, where the limit is an idle time per read
//! or write. A connection's [`Deadline`] is one timer that lives as long as the connection and
//! that each request-path operation moves to core's deadline for it
//! (`Exchange::deadline`): no timer is created, registered and cancelled per operation, no clock
//! is read for it, and the operation's future carries no timer of its own. Moving a timer later
//! only records the new time (the timer wheel re-files it when the old time comes), so a
//! request's operations, whose deadlines only grow, touch the wheel about once per timeout
//! period instead of several times per request.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::time::Sleep;

/// Why an IO operation with a timeout failed.
#[derive(Debug)]
pub(crate) enum IoFail {
    Timeout,
    Io(std::io::Error),
}

impl std::fmt::Display for IoFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Bounds an IO operation in time.
pub(crate) trait Limit: Copy {
    /// The same limit as one point in time, for a sequence of operations that must end by it
    /// together (a TLS read that needs several socket reads).
    type Fixed: Limit;

    fn fixed(self) -> Self::Fixed;

    /// Runs `f` until it completes or the limit passes ([`IoFail::Timeout`]; `f` is dropped,
    /// which cancels its operation).
    fn run<F: Future>(self, f: F) -> impl Future<Output = Result<F::Output, IoFail>>;
}

impl Limit for Duration {
    type Fixed = At;

    fn fixed(self) -> At {
        At(Instant::now() + self)
    }

    fn run<F: Future>(self, f: F) -> impl Future<Output = Result<F::Output, IoFail>> {
        Elapsed {
            t: monoio::time::timeout(self, f),
        }
    }
}

/// A fixed point in time, with a timer armed per operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At(pub(crate) Instant);

impl Limit for At {
    type Fixed = At;

    fn fixed(self) -> At {
        self
    }

    fn run<F: Future>(self, f: F) -> impl Future<Output = Result<F::Output, IoFail>> {
        Elapsed {
            t: monoio::time::timeout_at(monoio::time::Instant::from_std(self.0), f),
        }
    }
}

/// A connection's one timer (see the module's text). Set it before each operation it bounds.
pub(crate) struct Deadline {
    sleep: RefCell<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// A deadline at `at`; the timer is registered when an operation first waits on it.
    pub(crate) fn new(at: Instant) -> Self {
        Deadline {
            sleep: RefCell::new(Box::pin(monoio::time::sleep_until(
                monoio::time::Instant::from_std(at),
            ))),
        }
    }

    /// Resolves when the deadline passes.
    pub(crate) fn elapsed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.sleep.borrow_mut().as_mut().poll(cx))
    }

    /// Moves the deadline to `at` (`None`: now, so an operation that has to wait times out).
    pub(crate) fn set(&self, at: Option<Instant>, now: Instant) {
        let at = monoio::time::Instant::from_std(at.unwrap_or(now));
        let mut s = self.sleep.borrow_mut();
        if s.deadline() != at {
            s.as_mut().reset(at);
        }
    }
}

impl Limit for &Deadline {
    type Fixed = Self;

    fn fixed(self) -> Self {
        self
    }

    fn run<F: Future>(self, f: F) -> impl Future<Output = Result<F::Output, IoFail>> {
        Bounded { f, deadline: self }
    }
}

pin_project_lite::pin_project! {
    /// An operation bounded by a connection's [`Deadline`]. Written out rather than as an
    /// `async` block, which would hold the operation's future twice (as its argument and
    /// pinned).
    struct Bounded<'a, F> {
        #[pin]
        f: F,
        deadline: &'a Deadline,
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Result<F::Output, IoFail>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match this.deadline.sleep.borrow_mut().as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(IoFail::Timeout)),
            Poll::Pending => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// monoio's timeout with its error as an [`IoFail`].
    struct Elapsed<T> {
        #[pin]
        t: T,
    }
}

impl<T: Future<Output = Result<O, monoio::time::error::Elapsed>>, O> Future for Elapsed<T> {
    type Output = Result<O, IoFail>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .t
            .poll(cx)
            .map(|r| r.map_err(|_| IoFail::Timeout))
    }
}
