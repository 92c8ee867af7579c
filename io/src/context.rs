//! A worker's own state, which lives as long as its thread (across reloads): the current
//! generation, the drain signal, connection count, counters, the `Date` line and spare buffers.
//! Everything is `Rc`/`Cell`/`RefCell`: touched by one thread only, never locked.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use ringway_core::http::date::DateLine;

use crate::counters::TlsCounts;
use crate::drain::Drain;
use crate::generation::{Generation, Update};
use ringway_core::proxy::{EndRecord, RequestCounts};

/// One worker's state.
pub(crate) struct Worker {
    id: usize,
    /// The configuration new requests use, with its pools and balancer state.
    current: RefCell<Rc<Generation>>,
    pub(crate) drain: Drain,
    active: Cell<usize>,
    /// Of those, connections parked (quiet keep-alive connections holding only their socket),
    /// with their keep-alive deadlines.
    pub(crate) lot: crate::parking::Lot<crate::proxy::Kept>,
    /// TLS handshakes on this worker's listeners (published with the status).
    pub(crate) tls_counts: Cell<TlsCounts>,
    /// Requests by how they ended (published with the status).
    pub(crate) requests: Cell<RequestCounts>,
    /// The `Date` line, formatted at most once per second.
    date: Cell<DateLine>,
    /// Spare read buffers, lent to connections while bytes are in them, so that an idle
    /// connection holds none.
    pub(crate) bufs: crate::buf::Bufs,
    /// What closed connections allocated, for the next ones (see [`ConnSpares`]).
    conn_spares: RefCell<Vec<ConnSpares>>,
    /// Resolved names for the forward proxy (kept across reloads).
    pub(crate) dns: RefCell<crate::dns::Cache>,
    /// Connections were served since the heap was last trimmed.
    busy_since_trim: Cell<bool>,
    /// This worker's cache shard (kept across reloads; its budget follows the config).
    pub(crate) cache: RefCell<ringway_core::cache::Shard>,
    /// The box's stored responses (every worker's).
    pub(crate) table: std::sync::Arc<ringway_core::cache::Table>,
    /// Where other workers are told that a fill they wait for has ended.
    status: std::sync::Arc<crate::counters::Status>,
    /// Workers sharing the cache budget.
    workers: usize,
    /// Requests on this worker waiting for a fetch of a cache key (on any worker), by key.
    fill_waiters: RefCell<std::collections::HashMap<Box<[u8]>, Vec<std::task::Waker>>>,
    /// Idle pipes for splice.
    pub(crate) pipes: crate::splice::Pipes,
    /// This worker's access log lines, on their way to the writer.
    pub(crate) log: crate::accesslog::WorkerLog,
    /// What its exchanges add up to, for the metrics.
    pub(crate) tally: RefCell<ringway_core::metrics::Tally>,
    /// Connections accepted.
    accepted: Cell<u64>,
    /// Connections closed for a missing or malformed PROXY protocol header.
    proxy_header_failures: Cell<u64>,
    /// Keep-alive connections wait through a receive into the ring of provided buffers
    /// (multirecv.rs).
    pub(crate) recv_ring: Cell<bool>,
    /// Reads that found the ring of provided buffers empty and went the old way.
    recv_ring_empty: Cell<u64>,
    /// Compressing streams open on this worker (`[compression] max_streams`).
    pub(crate) encoders: ringway_core::compress::Streams,
    /// Where this worker's request ids come from.
    pub(crate) ids: ringway_core::reqid::Ids,
}

/// A closed connection's allocations (its exchange's buffers and its input buffer), kept for
/// the next connection, so that accepting one allocates little: a connection per request paid
/// a dozen allocations and as many frees (`ringway_core::proxy::Spares`).
pub(crate) struct ConnSpares {
    pub(crate) ex: ringway_core::proxy::Spares,
    pub(crate) inbuf: Vec<u8>,
}

/// Most connection spares a worker keeps (about 3 KiB each); more are freed.
const CONN_SPARES: usize = 64;

/// Counts a connection as active for as long as it lives.
pub(crate) struct Active(Rc<Worker>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        update: Update,
        status: std::sync::Arc<crate::counters::Status>,
        workers: usize,
        log: crate::accesslog::WorkerLog,
    ) -> std::io::Result<Self> {
        let budget = ringway_core::cache::shard_budget(update.cfg.cache.as_ref(), workers);
        let lot = crate::parking::Lot::new()?;
        Ok(Self {
            cache: RefCell::new(
                ringway_core::cache::Shard::new(budget, status.table.clone())
                    .with_place(crate::pages::place),
            ),
            table: status.table.clone(),
            status,
            workers,
            fill_waiters: RefCell::new(std::collections::HashMap::new()),
            pipes: crate::splice::Pipes::default(),
            log,
            tally: RefCell::default(),
            accepted: Cell::new(0),
            lot,
            proxy_header_failures: Cell::new(0),
            recv_ring: Cell::new(false),
            recv_ring_empty: Cell::new(0),
            encoders: Default::default(),
            ids: Default::default(),
            id,
            current: RefCell::new(Rc::new(Generation::new(id, update))),
            drain: Drain::default(),
            active: Cell::new(0),
            tls_counts: Cell::new(TlsCounts::default()),
            requests: Cell::new(RequestCounts::default()),
            date: Cell::new(DateLine::at(unix_now())),
            bufs: crate::buf::Bufs::default(),
            conn_spares: RefCell::new(Vec::new()),
            dns: RefCell::new(crate::dns::Cache::default()),
            busy_since_trim: Cell::new(false),
        })
    }

    /// An empty buffer of [`crate::buf::BUF_SIZE`] bytes' capacity, from the spares when there is one.
    pub(crate) fn take_buf(&self) -> Vec<u8> {
        self.bufs.take()
    }

    /// A closed connection's allocations, if one is kept.
    pub(crate) fn take_conn_spares(&self) -> Option<ConnSpares> {
        self.conn_spares.borrow_mut().pop()
    }

    /// Keeps a closing connection's allocations for the next one (or frees them).
    pub(crate) fn give_conn_spares(&self, s: ConnSpares) {
        let mut spares = self.conn_spares.borrow_mut();
        if spares.len() < CONN_SPARES {
            spares.push(s);
        }
    }

    /// Takes back a buffer a connection no longer needs (emptied), or frees it.
    pub(crate) fn give_buf(&self, buf: Vec<u8>) {
        self.bufs.give(buf);
    }

    /// Carries out a purge from the admin listener on this worker's shard: how many stored
    /// responses it removed (or, soft, marked stale).
    pub(crate) fn purge(&self, p: &crate::cache::Purge) -> usize {
        use crate::cache::PurgeBy;
        let now = ringway_core::proxy::DateSource::date_line(self).secs();
        let mut shard = self.cache.borrow_mut();
        match (p.what, p.soft) {
            (PurgeBy::Tag, soft) => shard.purge_tag(&p.target, soft, now),
            (PurgeBy::Prefix, false) => shard.remove_prefix(&p.target),
            (PurgeBy::Prefix, true) => shard.soften_prefix(&p.target, now),
            (PurgeBy::Url, soft) => {
                // The URL's forward entry, and what each upstream group stored for it.
                let cfg = self.current();
                let keys = std::iter::once(p.target.clone()).chain(
                    cfg.upstreams
                        .iter()
                        .map(|u| ringway_core::cache::policy::key_in_space(&p.target, &u.name)),
                );
                let mut n = 0;
                for k in keys {
                    n += if soft {
                        shard.soften(&k, now)
                    } else {
                        self.table.epochs.bump(&k);
                        shard.purge(&k)
                    };
                }
                n
            }
        }
    }

    /// After a burst of connections, once none is left busy (closed or parked): gives the
    /// heap's free memory back to the system (glibc keeps freed small blocks otherwise, so RSS
    /// never came down).
    pub(crate) fn trim_when_idle(&self) {
        if self.active.get() > self.lot.len() {
            self.busy_since_trim.set(true);
            return;
        }
        if self.busy_since_trim.replace(false) {
            self.bufs.clear();
            self.conn_spares.borrow_mut().clear();
            crate::sys::trim_heap();
        }
    }

    /// The current `Date` header line (RFC 9110 §6.6.1). One vDSO clock read per call; the
    /// line is formatted again only when the second changes.
    pub(crate) fn date(&self) -> DateLine {
        let now = unix_now();
        let d = self.date.get();
        if d.secs() == now {
            return d;
        }
        let d = DateLine::at(now);
        self.date.set(d);
        d
    }
}

impl ringway_core::proxy::DateSource for Worker {
    fn date_line(&self) -> DateLine {
        self.date()
    }
}

impl Worker {
    /// Updates this worker's TLS counters.
    pub(crate) fn count_tls(&self, f: impl FnOnce(&mut TlsCounts)) {
        let mut c = self.tls_counts.get();
        f(&mut c);
        self.tls_counts.set(c);
    }

    /// Counts an exchange that ended, from its record.
    pub(crate) fn count_request(&self, r: &EndRecord) {
        let mut c = self.requests.get();
        c.count(r);
        self.requests.set(c);
    }

    /// Ends this worker's fill of `key`: the requests waiting for it, here and on other
    /// workers, look again (only the waiters of that key: waking every waiter on each fill
    /// made thousands of requests parked on one slow key cost every other fill a pass over
    /// all of them). A worker elsewhere hears by mail: one message and one byte on its wake
    /// socket, only when requests there wait.
    pub(crate) fn end_fill(&self, key: Vec<u8>) {
        let waiting = self.table.end_fill(&key);
        if waiting == 0 {
            return;
        }
        let key = key.into_boxed_slice();
        for id in 0..self.workers {
            if waiting & (1 << (id % 64)) == 0 {
                continue;
            }
            if id == self.id {
                self.wake_waiters(&key);
            } else {
                self.status
                    .send(id, crate::cache::Mail::FillEnded(key.clone()));
            }
        }
    }

    /// Wakes the requests on this worker waiting for a fill of `key`.
    pub(crate) fn wake_waiters(&self, key: &[u8]) {
        let woken = self.fill_waiters.borrow_mut().remove(key);
        for w in woken.into_iter().flatten() {
            w.wake();
        }
    }

    /// Resolves once no exchange on the box is fetching `key`.
    pub(crate) fn fill_done<'a>(
        &'a self,
        key: &'a [u8],
    ) -> impl std::future::Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            if self.table.wait_fill(key, self.id) {
                let mut waiters = self.fill_waiters.borrow_mut();
                let list = match waiters.get_mut(key) {
                    Some(l) => l,
                    None => waiters.entry(key.into()).or_default(),
                };
                list.push(cx.waker().clone());
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
    }

    /// The generation new requests use.
    pub(crate) fn current(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }

    pub(crate) fn install(&self, update: Update) {
        let budget = ringway_core::cache::shard_budget(update.cfg.cache.as_ref(), self.workers);
        let mut shard = self.cache.borrow_mut();
        let old = shard.budget();
        if old != budget {
            let before = shard.stats();
            shard.set_budget(budget);
            let after = shard.stats();
            if self.id == 0 {
                log::info!(
                    "cache: budget per worker {} → {} bytes; kept {} of {} stored responses",
                    old,
                    budget,
                    after.entries,
                    before.entries
                );
            }
        }
        drop(shard);
        *self.current.borrow_mut() = Rc::new(Generation::new(self.id, update));
    }

    /// What the worker publishes for the status page and metrics.
    pub(crate) fn published(&self) -> crate::counters::Published {
        let requests = self.requests.get();
        let dns = self.dns.borrow();
        crate::counters::Published {
            servers: self.current().snapshot(std::time::Instant::now()),
            tls: self.tls_counts.get(),
            requests,
            cache: self.cache.borrow().stats(),
            tally: self.tally.borrow().clone(),
            worker: crate::metrics::WorkerSnap {
                open: self.active.get() as u64,
                parked: self.lot.len() as u64,
                accepted: self.accepted.get(),
                proxy_header_failures: self.proxy_header_failures.get(),
                recv_ring_empty: self.recv_ring_empty.get(),
                requests: requests.total,
                dns_lookups: dns.lookups,
                dns_failures: dns.failures,
                fresh: self.bufs.fresh(),
            },
        }
    }

    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// Connections open on this worker.
    pub(crate) fn active(&self) -> usize {
        self.active.get()
    }

    pub(crate) fn count_proxy_header_failure(&self) {
        self.proxy_header_failures
            .set(self.proxy_header_failures.get() + 1);
    }

    pub(crate) fn count_recv_ring_empty(&self) {
        self.recv_ring_empty.set(self.recv_ring_empty.get() + 1);
    }

    pub(crate) fn enter(self: &Rc<Self>) -> Active {
        self.active.set(self.active.get() + 1);
        self.accepted.set(self.accepted.get() + 1);
        Active(self.clone())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
