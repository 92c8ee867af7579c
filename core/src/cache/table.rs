//! The box's stored responses, as every worker sees them: one table shared by all workers, so
//! a response is fetched once and held once per box, whichever worker's client asked first.
//!
//! **Reads are lock-free.** The table is an array of buckets, each an immutable list of entries
//! behind an [`ArcSwapOption`]: a lookup loads the bucket (a few atomic operations on the
//! reader's own debt slot, no shared write), compares keys, and takes a reference to the entry
//! it serves (one atomic increment on the entry). A change copies the bucket's list and swaps
//! it in (`rcu`), retried when another worker changed the bucket meanwhile; changes happen on
//! stores, evictions and purges, never on a hit.
//!
//! **Who keeps what.** The worker that stores an entry counts it in its own [`Shard`]'s budget
//! and evicts it with its own S3-FIFO queues; any worker may take an entry out of the table
//! (a replacement, an invalidation, a purge), which marks it gone, and the worker that stored it
//! frees its slot when its queue reaches it or at the next purge it runs.
//!
//! **Fills.** A miss claims its key's fill in a table of 16,384 atomic slots (the key's 64-bit
//! hash, compared and swapped): a second miss anywhere on the box waits for the first
//! (`proxy_cache_lock`), registering its worker in the slot's mask, and the worker that ends the
//! fill is told which workers to wake. io carries the wake-up across workers.
//!
//! [`Shard`]: super::Shard

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::store::{Entry, Epochs, Select};

/// Most variants kept per key (responses with `Vary`); the oldest goes first.
const MAX_VARIANTS: usize = 16;

/// Fill slots (a power of two) and how many adjacent slots a key may take.
const CLAIMS: usize = 1 << 14;
const PROBES: usize = 8;

type Bucket = Vec<Arc<Entry>>;

/// See the module documentation.
pub struct Table {
    /// Invalidation counters (an unsafe request's target is stale everywhere at once).
    pub epochs: Epochs,
    buckets: Box<[ArcSwapOption<Bucket>]>,
    claims: Box<[Claim]>,
}

#[derive(Default)]
struct Claim {
    /// The hash of the key being fetched (never 0), or 0.
    key: AtomicU64,
    /// Workers waiting for it: bit `id % 64`.
    waiting: AtomicU64,
}

impl Default for Table {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Table {
    /// A table sized for about `budget` bytes of responses (one bucket per 4 KiB, at least
    /// 4,096 and at most 4 M buckets; a reload that grows the cache keeps the size and only
    /// makes buckets longer).
    pub fn new(budget: u64) -> Self {
        let n = usize::try_from(budget / 4096)
            .unwrap_or(usize::MAX)
            .clamp(1 << 12, 1 << 22)
            .next_power_of_two();
        Self {
            epochs: Epochs::default(),
            buckets: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            claims: (0..CLAIMS).map(|_| Claim::default()).collect(),
        }
    }

    fn bucket(&self, key: &[u8]) -> &ArcSwapOption<Bucket> {
        let h = self.epochs.hash(key);
        &self.buckets[(h >> 32) as usize & (self.buckets.len() - 1)]
    }

    /// The first stored response under `key` that is still valid (`epochs`) and that `selects`
    /// (the caller's `Vary` match). Entries of an invalidated key are taken out on the way.
    pub fn select(&self, key: &[u8], mut selects: impl FnMut(&Entry) -> bool) -> Select {
        let epoch = self.epochs.get(key);
        let mut found = Select::None;
        let mut stale = false;
        {
            let bucket = self.bucket(key).load();
            let Some(list) = bucket.as_deref() else {
                return Select::None;
            };
            for e in list.iter().filter(|e| &e.key[..] == key) {
                if e.epoch != epoch {
                    stale = true;
                    break;
                }
                if matches!(found, Select::None) {
                    found = Select::NoVariant;
                }
                if matches!(found, Select::NoVariant) && selects(e) {
                    found = Select::Found(e.clone());
                }
            }
        }
        if stale {
            self.remove(key);
            return Select::None;
        }
        found
    }

    /// Every stored response under `key` (valid or not).
    pub fn variants(&self, key: &[u8]) -> Vec<Arc<Entry>> {
        let bucket = self.bucket(key).load();
        bucket.as_deref().map_or_else(Vec::new, |l| {
            l.iter().filter(|e| &e.key[..] == key).cloned().collect()
        })
    }

    /// Publishes `entry`, taking out the variants it replaces: the same variant, one of an
    /// older epoch, or one stored under another `Vary` (the newest response says which fields
    /// select, RFC 9111 §4.1); and the oldest beyond [`MAX_VARIANTS`]. Those are marked gone.
    pub fn publish(&self, entry: &Arc<Entry>) {
        let replaced = |e: &Entry| {
            e.key == entry.key
                && (e.vary == entry.vary
                    || e.epoch != entry.epoch
                    || !e
                        .vary
                        .iter()
                        .map(|s| &s.0)
                        .eq(entry.vary.iter().map(|s| &s.0)))
        };
        let old = self.bucket(&entry.key).rcu(|cur| {
            let mut list: Bucket = cur.as_deref().map_or_else(Vec::new, |l| {
                l.iter().filter(|e| !replaced(e)).cloned().collect()
            });
            let same = list.iter().filter(|e| e.key == entry.key).count();
            if same >= MAX_VARIANTS {
                if let Some(i) = list.iter().position(|e| e.key == entry.key) {
                    list.remove(i);
                }
            }
            list.push(entry.clone());
            Some(Arc::new(list))
        });
        // What the swap took out (computed again from the list it replaced).
        let Some(old) = old else { return };
        let kept: Vec<&Arc<Entry>> = old.iter().filter(|e| !replaced(e)).collect();
        for e in old.iter().filter(|e| replaced(e)) {
            e.state.set_gone();
        }
        if kept.iter().filter(|e| e.key == entry.key).count() >= MAX_VARIANTS {
            if let Some(e) = kept.iter().find(|e| e.key == entry.key) {
                e.state.set_gone();
            }
        }
    }

    /// Takes out every variant under `key`; how many there were.
    pub fn remove(&self, key: &[u8]) -> usize {
        self.take_out(key, |e| &e.key[..] == key)
    }

    /// Takes out `entry` itself (not a newer response under its key); whether it was there.
    pub fn remove_entry(&self, entry: &Arc<Entry>) -> bool {
        self.take_out(&entry.key, |e| Arc::ptr_eq(e, entry)) > 0
    }

    fn take_out(&self, key: &[u8], out: impl Fn(&Arc<Entry>) -> bool) -> usize {
        let bucket = self.bucket(key);
        if !bucket.load().as_deref().is_some_and(|l| l.iter().any(&out)) {
            return 0;
        }
        let old = bucket.rcu(|cur| {
            let list: Bucket = cur.as_deref().map_or_else(Vec::new, |l| {
                l.iter().filter(|e| !out(e)).cloned().collect()
            });
            (!list.is_empty()).then(|| Arc::new(list))
        });
        let mut n = 0;
        for e in old.iter().flat_map(|l| l.iter()).filter(|e| out(e)) {
            e.state.set_gone();
            n += 1;
        }
        n
    }

    /// Positions a key's claim may take.
    fn claim_slots(&self, key: &[u8]) -> (u64, impl Iterator<Item = &Claim>) {
        let h = self.epochs.hash(key) | 1;
        let first = h as usize;
        (
            h,
            (0..PROBES).map(move |i| &self.claims[(first + i) & (CLAIMS - 1)]),
        )
    }

    /// Claims the fetch of `key` for the caller; false when another exchange on the box holds
    /// it. When every slot the key may take holds another key, the caller fetches without a
    /// claim (true): coalescing is skipped, nothing waits.
    pub fn try_fill(&self, key: &[u8]) -> bool {
        let (h, slots) = self.claim_slots(key);
        let slots: Vec<&Claim> = slots.collect();
        if slots.iter().any(|c| c.key.load(Ordering::Acquire) == h) {
            return false;
        }
        for c in slots {
            match c
                .key
                .compare_exchange(0, h, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(cur) if cur == h => return false,
                Err(_) => {}
            }
        }
        true
    }

    /// Whether an exchange on the box is fetching `key`.
    pub fn filling(&self, key: &[u8]) -> bool {
        let (h, mut slots) = self.claim_slots(key);
        slots.any(|c| c.key.load(Ordering::Acquire) == h)
    }

    /// Whether `key` is being fetched, registering `worker` to be woken when the fetch ends
    /// (see [`end_fill`](Self::end_fill)).
    pub fn wait_fill(&self, key: &[u8], worker: usize) -> bool {
        let (h, slots) = self.claim_slots(key);
        for c in slots {
            if c.key.load(Ordering::Acquire) == h {
                c.waiting.fetch_or(1 << (worker % 64), Ordering::SeqCst);
                // Still held after registering: the end will see the bit.
                if c.key.load(Ordering::SeqCst) == h {
                    return true;
                }
            }
        }
        false
    }

    /// Ends the fetch of `key`: the workers to wake (bit `id % 64`), 0 when nobody waits.
    pub fn end_fill(&self, key: &[u8]) -> u64 {
        let (h, slots) = self.claim_slots(key);
        for c in slots {
            if c.key
                .compare_exchange(h, 0, Ordering::SeqCst, Ordering::Acquire)
                .is_ok()
            {
                return c.waiting.swap(0, Ordering::SeqCst);
            }
        }
        0
    }
}

// The table is shared by worker threads: its tests use threads as io does (core itself never
// spawns one).
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::cache::store::tests::entry;

    #[test]
    fn one_table_for_every_worker() {
        let t = Arc::new(Table::new(1 << 20));
        let e = Arc::new(entry("http://a/x", 10, t.epochs.get(b"http://a/x")));
        t.publish(&e);
        // Another thread (a worker on another core) finds it, without a lock.
        let t2 = t.clone();
        let found = std::thread::spawn(move || {
            matches!(t2.select(b"http://a/x", |_| true), Select::Found(_))
        })
        .join()
        .unwrap();
        assert!(found);
        // A replacement takes the old one out and marks it gone.
        let f = Arc::new(entry("http://a/x", 20, t.epochs.get(b"http://a/x")));
        t.publish(&f);
        assert!(e.state.gone() && !f.state.gone());
        assert_eq!(t.variants(b"http://a/x").len(), 1);
        // Invalidation anywhere: taken out at the next lookup.
        t.epochs.bump(b"http://a/x");
        assert!(matches!(t.select(b"http://a/x", |_| true), Select::None));
        assert!(f.state.gone() && t.variants(b"http://a/x").is_empty());
        // Only the entry itself, not a newer one under its key.
        let g = Arc::new(entry("http://a/x", 5, t.epochs.get(b"http://a/x")));
        t.publish(&g);
        assert!(!t.remove_entry(&f));
        assert!(t.remove_entry(&g) && t.variants(b"http://a/x").is_empty());
    }

    #[test]
    fn variants_are_bounded() {
        let t = Table::new(0);
        let mut all = Vec::new();
        for i in 0..20 {
            let e = Arc::new(crate::cache::store::Entry {
                vary: vec![(b"x"[..].into(), format!("{i}").into_bytes().into())].into(),
                ..entry("k", 1, 0)
            });
            t.publish(&e);
            all.push(e);
        }
        assert_eq!(t.variants(b"k").len(), MAX_VARIANTS);
        assert!(all[..4].iter().all(|e| e.state.gone()));
        assert!(all[4..].iter().all(|e| !e.state.gone()));
    }

    #[test]
    fn fills_are_claimed_once_per_box_and_wake_their_waiters() {
        let t = Arc::new(Table::default());
        assert!(t.try_fill(b"k"));
        let t2 = t.clone();
        assert!(!std::thread::spawn(move || t2.try_fill(b"k"))
            .join()
            .unwrap());
        assert!(t.wait_fill(b"k", 1) && t.wait_fill(b"k", 3) && t.wait_fill(b"k", 67));
        assert_eq!(t.end_fill(b"k"), 0b1010);
        assert!(!t.filling(b"k") && !t.wait_fill(b"k", 1));
        assert_eq!(t.end_fill(b"k"), 0, "ended once");
        // Parallel claims: exactly one wins.
        let won: usize = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || t.try_fill(b"race") as usize)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(won, 1);
    }
}
