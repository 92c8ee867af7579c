//! A worker-local "stop now" signal for graceful shutdown.
//!
//! Set once by the worker's shutdown watcher; every accept loop and every idle keep-alive read
//! waits on it alongside its IO, so draining needs no polling on the request path. Waiters live
//! in a slab and remove themselves when dropped, so a long-running worker does not accumulate
//! wakers of connections long gone.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

#[derive(Clone, Default)]
pub(crate) struct Drain(Rc<Inner>);

#[derive(Default)]
struct Inner {
    set: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

impl Drain {
    pub(crate) fn is_set(&self) -> bool {
        self.0.set.get()
    }

    pub(crate) fn trigger(&self) {
        self.0.set.set(true);
        for (_, w) in self.0.waiters.borrow_mut().iter() {
            w.wake_by_ref();
        }
    }

    /// Resolves once [`trigger`](Self::trigger) has been called.
    pub(crate) fn wait(&self) -> Wait {
        Wait {
            drain: self.clone(),
            key: None,
        }
    }
}

pub(crate) struct Wait {
    drain: Drain,
    key: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.0.set.get() {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        let mut waiters = self.drain.0.waiters.borrow_mut();
        match self.key {
            Some(k) => waiters[k] = waker,
            None => {
                let k = waiters.insert(waker);
                drop(waiters);
                self.key = Some(k);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.drain.0.waiters.borrow_mut().remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_woken_and_removed() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let d = Drain::default();
            let d2 = d.clone();
            let h = monoio::spawn(async move { d2.wait().await });
            // Let the task register, then drop a second waiter without it ever resolving.
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            {
                let w = d.wait();
                let mut w = std::pin::pin!(w);
                let waker = futures_noop_waker();
                let mut cx = Context::from_waker(&waker);
                assert!(w.as_mut().poll(&mut cx).is_pending());
                assert_eq!(d.0.waiters.borrow().len(), 2);
            }
            assert_eq!(d.0.waiters.borrow().len(), 1);
            d.trigger();
            h.await;
            assert!(d.is_set());
            assert_eq!(d.0.waiters.borrow().len(), 0);
        });
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }
}
