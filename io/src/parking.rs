//! A worker's parked connections: sockets waiting for their next request, with no task.
//!
//! A parked connection (core's `Finish::Park`) holds no exchange, no buffer and no future: its
//! task ends, and the worker keeps its socket and a small record (`T`) in one slab. Waiting on
//! each socket from a task of its own would cost a task and an operation per connection, and a
//! keep-alive timer of its own 640 bytes (monoio's `Sleep` is a cache-padded timer entry),
//! more than the rest together; and such small blocks, scattered among freed ones, keep whole
//! pages of the heap in use. So the sockets are watched by one epoll instance, whose own
//! readiness the worker awaits on its ring like any socket's (`run` in proxy.rs); a readable
//! socket leaves the lot and its connection is rebuilt on a new task, which reads the bytes.
//!
//! Keep-alive deadlines are a heap ordered by deadline that the worker's tick (every 50 ms)
//! expires: the socket is closed and the record dropped. A drain expires them all at once. A
//! connection that wakes first leaves its heap entry behind (a heap cannot remove from the
//! middle); the entry is skipped when its time comes, and the heap is rebuilt without such
//! entries when they outnumber the parked connections, so it holds at most about twice as
//! many entries as there are parked connections.
//!
//! Cost: one `epoll_ctl` to park, one to wake, and one `epoll_wait` per batch of wakes; a
//! connection parks at most once per `timeouts.park` of quiet, so none of it is on the path
//! of a busy connection.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use slab::Slab;

/// Entries left behind before the heap is rebuilt, beyond the parked connections.
const SLACK: usize = 1024;

/// Wakes taken per turn of the unparking task.
const WAKE_BATCH: usize = 256;

pub(crate) struct Lot<T> {
    ep: OwnedFd,
    inner: RefCell<Inner<T>>,
}

struct Inner<T> {
    parked: Slab<Parked<T>>,
    /// (deadline, slot, generation): an entry whose slot has another generation is stale.
    deadlines: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    generation: u64,
}

struct Parked<T> {
    fd: OwnedFd,
    generation: u64,
    value: T,
}

impl<T> Lot<T> {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Lot {
            ep: crate::sys::epoll()?,
            inner: RefCell::new(Inner {
                parked: Slab::new(),
                deadlines: BinaryHeap::new(),
                generation: 0,
            }),
        })
    }

    /// The epoll instance, readable when a parked socket is (for the unparking task).
    pub(crate) fn readiness(&self) -> BorrowedFd<'_> {
        self.ep.as_fd()
    }

    /// Parks `fd` with `value` until it is readable or `until` passes. An error (the kernel
    /// refused to watch it) hands both back.
    pub(crate) fn park(&self, fd: OwnedFd, until: Instant, value: T) -> Result<(), (OwnedFd, T)> {
        let mut s = self.inner.borrow_mut();
        s.generation += 1;
        let generation = s.generation;
        let entry = s.parked.vacant_entry();
        let key = entry.key();
        if let Err(e) = crate::sys::epoll_add(self.ep.as_fd(), fd.as_fd(), key as u64) {
            log::warn!("parking a connection: {e}");
            return Err((fd, value));
        }
        entry.insert(Parked {
            fd,
            generation,
            value,
        });
        s.deadlines.push(Reverse((until, key, generation)));
        if s.deadlines.len() > 2 * s.parked.len() + SLACK {
            let Inner {
                parked, deadlines, ..
            } = &mut *s;
            deadlines
                .retain(|Reverse((_, k, g))| parked.get(*k).is_some_and(|p| p.generation == *g));
        }
        Ok(())
    }

    /// Takes out parked sockets that are readable now (at most a batch).
    pub(crate) fn ready(&self, out: &mut Vec<(OwnedFd, T)>) {
        let mut keys = Vec::with_capacity(WAKE_BATCH);
        crate::sys::epoll_ready(self.ep.as_fd(), &mut keys);
        let mut s = self.inner.borrow_mut();
        for key in keys {
            if let Some(p) = s.parked.try_remove(key as usize) {
                crate::sys::epoll_del(self.ep.as_fd(), p.fd.as_fd());
                out.push((p.fd, p.value));
            }
        }
    }

    /// Closes the parked connections whose deadline is at or before `now`.
    pub(crate) fn expire(&self, now: Instant) {
        let mut gone = Vec::new();
        {
            let mut s = self.inner.borrow_mut();
            while let Some(&Reverse((at, key, generation))) = s.deadlines.peek() {
                if at > now {
                    break;
                }
                s.deadlines.pop();
                if s.parked
                    .get(key)
                    .is_some_and(|p| p.generation == generation)
                {
                    gone.push(s.parked.remove(key));
                }
            }
        }
        // Dropped outside the borrow: a value's drop may reach the worker.
        drop(gone);
    }

    /// Closes every parked connection (the worker drains).
    pub(crate) fn expire_all(&self) {
        let gone: Vec<_> = {
            let mut s = self.inner.borrow_mut();
            s.deadlines.clear();
            s.parked.drain().collect()
        };
        drop(gone);
    }

    /// Connections parked now.
    pub(crate) fn len(&self) -> usize {
        self.inner.borrow().parked.len()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;

    fn socket() -> (OwnedFd, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (a.into(), b)
    }

    #[test]
    fn readable_sockets_leave_and_deadlines_close_the_rest() {
        let lot = Lot::new().unwrap();
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (a, mut a_peer) = socket();
        let (b, _b_peer) = socket();
        let (c, _c_peer) = socket();
        lot.park(a, at(300), "a").map_err(|_| ()).unwrap();
        lot.park(b, at(100), "b").map_err(|_| ()).unwrap();
        lot.park(c, at(200), "c").map_err(|_| ()).unwrap();
        assert_eq!(lot.len(), 3);
        let mut out = Vec::new();
        lot.ready(&mut out);
        assert!(out.is_empty());
        a_peer.write_all(b"GET").unwrap();
        lot.ready(&mut out);
        assert_eq!(out.iter().map(|(_, v)| *v).collect::<Vec<_>>(), ["a"]);
        assert_eq!(lot.len(), 2);
        lot.expire(at(150));
        assert_eq!(lot.len(), 1, "b expired");
        // The slot a left may be taken by another: a's stale deadline must not expire it.
        let (d, _d_peer) = socket();
        lot.park(d, at(1000), "d").map_err(|_| ()).unwrap();
        lot.expire(at(400));
        assert_eq!(lot.len(), 1, "c expired, d stays");
        lot.expire_all();
        assert_eq!(lot.len(), 0);
    }

    #[test]
    fn stale_deadlines_stay_bounded() {
        let lot = Lot::new().unwrap();
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let (kept, _kept_peer) = socket();
        lot.park(kept, t0 + Duration::from_secs(60), 0)
            .map_err(|_| ())
            .unwrap();
        for i in 0..5_000u64 {
            let (fd, mut peer) = socket();
            lot.park(fd, t0 + Duration::from_secs(60 + i), i)
                .map_err(|_| ())
                .unwrap();
            peer.write_all(b"x").unwrap();
            let mut out = Vec::new();
            lot.ready(&mut out);
            assert_eq!(out.len(), 1);
        }
        let s = lot.inner.borrow();
        assert!(
            s.deadlines.len() <= 2 * s.parked.len() + SLACK + 1,
            "{}",
            s.deadlines.len()
        );
    }
}
