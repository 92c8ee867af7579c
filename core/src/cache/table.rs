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

use arc_swap::{ArcSwap, ArcSwapOption};

use super::store::{Entry, Epochs, Select};

/// Most variants kept per key (responses with `Vary`); the oldest goes first.
const MAX_VARIANTS: usize = 16;

/// Fill slots (a power of two) and how many adjacent slots a key may take.
const CLAIMS: usize = 1 << 14;
const PROBES: usize = 8;

type Bucket = Vec<Arc<Entry>>;
type Buckets = Box<[ArcSwapOption<Bucket>]>;

/// See the module documentation.
pub struct Table {
    /// Invalidation counters (an unsafe request's target is stale everywhere at once).
    pub epochs: Epochs,
    /// Replaced as a whole when a reload grows the cache ([`Table::fit`]).
    buckets: ArcSwap<Buckets>,
    /// While [`Table::fit`] moves entries: the array being replaced, which changes also go to.
    moving: ArcSwapOption<Buckets>,
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
    /// 4,096 and at most 4 M buckets; [`fit`](Self::fit) grows it).
    pub fn new(budget: u64) -> Self {
        Self {
            epochs: Epochs::default(),
            buckets: ArcSwap::from_pointee(empty(buckets_for(budget))),
            moving: ArcSwapOption::empty(),
            claims: (0..CLAIMS).map(|_| Claim::default()).collect(),
        }
    }

    /// Buckets it has now.
    pub fn buckets(&self) -> usize {
        self.buckets.load().len()
    }

    /// Grows the table for a cache of `budget` bytes when it has fewer buckets than that
    /// needs (a reload that grew the cache; shrinking is never needed, a larger table only
    /// holds shorter lists). Whether it grew. Off the request path (the reloading thread),
    /// without stopping the workers:
    ///
    /// 1. the current array is marked as moving: from then on every change (a store, a
    ///    removal) is made in it as well as in the current array ([`change`](Self::change));
    /// 2. a new array is filled with the entries of the current one;
    /// 3. it replaces the current one (lookups from then on use it);
    /// 4. the old array is copied again, adding what was stored into it between 2 and 3;
    /// 5. the moving mark is cleared.
    ///
    /// A removal made while entries move takes the entry out of both arrays and marks it gone,
    /// so no copy brings it back; a copy made just before may leave it in the new array, gone:
    /// it is never found ([`select`](Self::select) skips gone entries) and goes when its bucket
    /// next changes.
    pub fn fit(&self, budget: u64) -> bool {
        let want = buckets_for(budget);
        let old = self.buckets.load_full();
        if want <= old.len() {
            return false;
        }
        // One resize at a time.
        let was = self
            .moving
            .compare_and_swap(&None::<Arc<Buckets>>, Some(old.clone()));
        if was.is_some() {
            return false;
        }
        let new = Arc::new(empty(want));
        self.copy(&old, &new);
        let prev = self.buckets.compare_and_swap(&old, new.clone());
        let grown = Arc::ptr_eq(&prev, &old);
        if grown {
            self.copy(&old, &new);
        }
        self.moving.store(None);
        grown
    }

    /// Adds to `to` every live entry of `from` that `to` has no response for under its key
    /// and `Vary` values.
    fn copy(&self, from: &Buckets, to: &Buckets) {
        for b in from.iter() {
            let Some(list) = b.load_full() else { continue };
            for e in list.iter().filter(|e| !e.state.gone()) {
                let same = |x: &Arc<Entry>| x.key == e.key && x.vary == e.vary;
                slot(to, self.epochs.hash(&e.key)).rcu(|cur| {
                    let has = cur
                        .as_deref()
                        .is_some_and(|l| l.iter().any(|x| same(x) && !x.state.gone()));
                    if has {
                        return cur.clone();
                    }
                    // An older copy of the same response taken out meanwhile makes way.
                    let mut list: Bucket = cur.as_deref().map_or_else(Vec::new, |l| {
                        l.iter().filter(|x| !same(x)).cloned().collect()
                    });
                    list.push(e.clone());
                    Some(Arc::new(list))
                });
            }
        }
    }

    /// Reads `key`'s bucket in the current array.
    fn read<R>(&self, key: &[u8], f: impl FnOnce(Option<&Bucket>) -> R) -> R {
        let h = self.epochs.hash(key);
        let arr = self.buckets.load();
        let b = slot(&arr, h).load();
        f(b.as_deref())
    }

    /// Changes `key`'s bucket with `f` in the current array; while [`fit`](Self::fit) moves
    /// entries, in the array being replaced too, and again in the new array if the arrays were
    /// swapped meanwhile (`f` must do no harm run twice).
    fn change(&self, key: &[u8], mut f: impl FnMut(&ArcSwapOption<Bucket>)) {
        let h = self.epochs.hash(key);
        // Guards, not clones: no write to the array's shared reference count per change.
        let mut arr = self.buckets.load();
        loop {
            // Read before the change: when no resize is moving entries now, one that starts
            // later copies what this change left, and one that ended before has finished
            // copying into `arr`; when one is, the old array is changed too.
            let moving = self.moving.load();
            f(slot(&arr, h));
            if let Some(old) = moving.as_ref() {
                if !Arc::ptr_eq(old, &arr) {
                    f(slot(old, h));
                }
            }
            let now = self.buckets.load();
            if Arc::ptr_eq(&now, &arr) {
                return;
            }
            arr = now;
        }
    }

    /// The first stored response under `key` that is still valid (`epochs`) and that `selects`
    /// (the caller's `Vary` match). Entries of an invalidated key are taken out on the way.
    pub fn select(&self, key: &[u8], mut selects: impl FnMut(&Entry) -> bool) -> Select {
        let epoch = self.epochs.get(key);
        let mut found = Select::None;
        let mut stale = false;
        self.read(key, |list| {
            let Some(list) = list else { return };
            for e in list.iter().filter(|e| &e.key[..] == key && !e.state.gone()) {
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
        });
        if stale {
            self.remove(key);
            return Select::None;
        }
        found
    }

    /// Every stored response under `key` (valid or not).
    pub fn variants(&self, key: &[u8]) -> Vec<Arc<Entry>> {
        self.read(key, |list| {
            list.map_or_else(Vec::new, |l| {
                l.iter()
                    .filter(|e| &e.key[..] == key && !e.state.gone())
                    .cloned()
                    .collect()
            })
        })
    }

    /// Publishes `entry`, taking out the variants it replaces: the same variant, one of an
    /// older epoch, or one stored under another `Vary` (the newest response says which fields
    /// select, RFC 9111 §4.1); and the oldest beyond [`MAX_VARIANTS`]. Those are marked gone.
    pub fn publish(&self, entry: &Arc<Entry>) {
        self.change(&entry.key, |bucket| Self::publish_in(bucket, entry));
    }

    fn publish_in(bucket: &ArcSwapOption<Bucket>, entry: &Arc<Entry>) {
        // The entry itself is never replaced: a publish made again (`change`) finds it there.
        let replaced = |e: &Arc<Entry>| {
            !Arc::ptr_eq(e, entry)
                && e.key == entry.key
                && (e.vary == entry.vary
                    || e.epoch != entry.epoch
                    || !e
                        .vary
                        .iter()
                        .map(|s| &s.0)
                        .eq(entry.vary.iter().map(|s| &s.0)))
        };
        let old = bucket.rcu(|cur| {
            let mut list: Bucket = cur.as_deref().map_or_else(Vec::new, |l| {
                l.iter()
                    .filter(|e| !replaced(e) && !Arc::ptr_eq(e, entry))
                    .cloned()
                    .collect()
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
        let kept: Vec<&Arc<Entry>> = old
            .iter()
            .filter(|e| !replaced(e) && !Arc::ptr_eq(e, entry))
            .collect();
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
        // Each entry counted once, by whoever marks it gone first.
        let mut n = 0;
        self.change(key, |bucket| {
            if !bucket.load().as_deref().is_some_and(|l| l.iter().any(&out)) {
                return;
            }
            let old = bucket.rcu(|cur| {
                let list: Bucket = cur.as_deref().map_or_else(Vec::new, |l| {
                    l.iter().filter(|e| !out(e)).cloned().collect()
                });
                (!list.is_empty()).then(|| Arc::new(list))
            });
            for e in old.iter().flat_map(|l| l.iter()).filter(|e| out(e)) {
                n += usize::from(e.state.set_gone());
            }
        });
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

/// Buckets for a cache of `budget` bytes: one per 4 KiB, a power of two from 4,096 to 4 M.
fn buckets_for(budget: u64) -> usize {
    usize::try_from(budget / 4096)
        .unwrap_or(usize::MAX)
        .clamp(1 << 12, 1 << 22)
        .next_power_of_two()
}

fn empty(n: usize) -> Buckets {
    (0..n).map(|_| ArcSwapOption::empty()).collect()
}

/// The bucket of a key whose hash is `h`.
fn slot(arr: &Buckets, h: u64) -> &ArcSwapOption<Bucket> {
    &arr[(h >> 32) as usize & (arr.len() - 1)]
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
    fn a_reload_grows_the_table_and_keeps_what_is_stored() {
        let t = Table::new(1 << 20);
        assert_eq!(t.buckets(), 4096);
        let keys: Vec<String> = (0..10_000).map(|i| format!("http://a/{i}")).collect();
        for k in &keys {
            t.publish(&Arc::new(entry(k, 10, t.epochs.get(k.as_bytes()))));
        }
        assert!(!t.fit(1 << 20), "no smaller, no same size");
        assert!(t.fit(256 << 20));
        assert_eq!(t.buckets(), 65_536);
        assert!(keys.iter().all(|k| t.variants(k.as_bytes()).len() == 1));
        // Invalidations and removals work on the new array.
        t.epochs.bump(keys[0].as_bytes());
        assert!(matches!(
            t.select(keys[0].as_bytes(), |_| true),
            Select::None
        ));
        assert_eq!(t.remove(keys[1].as_bytes()), 1);
        assert!(matches!(
            t.select(keys[2].as_bytes(), |_| true),
            Select::Found(_)
        ));
        assert!(t.fit(u64::MAX) && t.buckets() == 1 << 22);
    }

    /// Stores and purges on other threads while the table grows several times: nothing stored
    /// is lost, nothing purged comes back.
    #[test]
    fn growing_under_changes_loses_nothing() {
        let t = Arc::new(Table::new(0));
        let writer = {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..40_000 {
                    let k = format!("http://a/{i}");
                    let e = Arc::new(entry(&k, 1, t.epochs.get(k.as_bytes())));
                    t.publish(&e);
                    if i % 3 == 0 {
                        assert_eq!(t.remove(k.as_bytes()), 1, "{k}");
                    }
                    if i % 5 == 0 {
                        // A newer response replaces it.
                        t.publish(&Arc::new(entry(&k, 2, t.epochs.get(k.as_bytes()))));
                    }
                }
            })
        };
        let mut grown = 0;
        for shift in 25..32 {
            grown += usize::from(t.fit(1 << shift));
            std::thread::yield_now();
        }
        writer.join().unwrap();
        assert!(grown >= 5, "grew {grown} times");
        for i in 0..40_000 {
            let k = format!("http://a/{i}");
            let found = match t.select(k.as_bytes(), |_| true) {
                Select::Found(e) => Some(e.body.len()),
                _ => None,
            };
            let want = match (i % 3 == 0, i % 5 == 0) {
                (_, true) => Some(2),
                (true, false) => None,
                (false, false) => Some(1),
            };
            assert_eq!(found, want, "{k}");
            assert!(t.variants(k.as_bytes()).len() <= 1, "{k}");
        }
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
