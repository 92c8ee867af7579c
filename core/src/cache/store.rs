//! One worker's cache shard: stored responses under a byte budget, evicted with S3-FIFO.
//!
//! S3-FIFO (Yang et al., SOSP 2023) keeps two FIFO queues and a ghost list: new objects enter a
//! small queue (10% of the bytes); one that is hit again before it reaches the small queue's head
//! moves to the main queue, the others leave and their key hashes go to the ghost list; a miss
//! whose hash is in the ghost list enters the main queue directly. The main queue is a CLOCK
//! with a 2-bit frequency. One-hit wonders (most of a web trace's tail) are dropped after a short
//! stay instead of pushing popular objects out, which is where it beats LRU; a hit costs a
//! counter increment, no list surgery. `bench/benches/cache.rs` compares hit ratios with LRU on
//! a Zipf trace.
//!
//! The shard is owned by one worker and keeps the entries that worker stored; every worker
//! finds them through the box's [`Table`]. Invalidations reach every entry at once through
//! [`Epochs`], a table of counters shared by the process: an entry remembers the counter of its
//! key's bucket when its fetch started, and is dropped at lookup when the counter has moved on.
//! The hit path reads that counter (a plain load, no read-modify-write); only unsafe requests
//! and purges write it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use super::body::Body;
use super::table::Table;

use super::control::Directives;
use crate::compress::Coding;

/// Buckets of the invalidation table (a power of two).
const EPOCH_BUCKETS: usize = 1 << 14;

/// Invalidation counters shared by all shards of a process.
///
/// A key's bucket is chosen by SipHash keyed with a secret drawn when the process starts, so
/// nobody can compute offline which URL shares a bucket with another: an unsafe request to an
/// unrelated URL cannot be aimed at a chosen entry (FNV would let one find such a URL in about
/// 2,000 tries, and wipe the cache with 16,384 requests).
pub struct Epochs {
    buckets: Box<[AtomicU64]>,
    secret: std::collections::hash_map::RandomState,
}

impl Default for Epochs {
    fn default() -> Self {
        Self {
            buckets: (0..EPOCH_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            secret: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Epochs {
    /// The counter for `key` now.
    pub fn get(&self, key: &[u8]) -> u64 {
        self.buckets[self.bucket(key)].load(Ordering::Acquire)
    }

    /// The process's keyed hash of `key` (SipHash with the secret drawn at start).
    pub fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.secret.hash_one(key)
    }

    /// Invalidates whatever any shard holds under `key` (and, rarely, keys sharing its bucket).
    pub fn bump(&self, key: &[u8]) {
        self.buckets[self.bucket(key)].fetch_add(1, Ordering::AcqRel);
    }

    fn bucket(&self, key: &[u8]) -> usize {
        (self.hash(key) as usize) & (EPOCH_BUCKETS - 1)
    }
}

/// FNV-1a, 64 bits: keys are short and this runs once per lookup.
pub fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A request field `Vary` named, with its normalised value when the response was stored.
pub type Selector = (Box<[u8]>, Box<[u8]>);

/// A stored response. Immutable once stored: a refresh (a `304`) stores a new one.
#[derive(Debug)]
pub struct Entry {
    pub key: Box<[u8]>,
    /// The request fields `Vary` named and their normalised values when this was stored.
    pub vary: Box<[Selector]>,
    /// Status line and header lines, each ending in CRLF, without framing, hop-by-hop fields
    /// or `Age`; the head of a hit is this, then `Age`, `Content-Length` and the rest.
    pub head: Box<[u8]>,
    pub body: Body,
    pub status: u16,
    pub response_time: u64,
    /// RFC 9111 §4.2.3 `corrected_initial_age`.
    pub initial_age: u64,
    /// Freshness lifetime, seconds.
    pub lifetime: u64,
    pub etag: Option<Box<[u8]>>,
    pub last_modified: Option<u64>,
    pub cc: Directives,
    /// The invalidation counter of the key when its fetch started.
    pub epoch: u64,
    /// Fetched by the forward proxy from a private address: served only to clients that may
    /// reach such addresses themselves.
    pub private_dest: bool,
    /// The body encoded by each coding, made at the first hit that asked for it (on any
    /// worker) and counted in the storing shard's budget from then on ([`Shard::grow`]). Set
    /// once, never changed: io may write from it while the entry lives.
    pub encoded: Encoded,
    /// The tags its response carried (`Cache-Tag`, `Surrogate-Key`): purged by them.
    pub tags: Box<[Box<[u8]>]>,
    /// What changes while it is stored (any worker may change it).
    pub state: State,
}

/// The parts of a stored entry that change, each an atomic any worker may write.
#[derive(Debug)]
pub struct State {
    /// Soft-purged at this time (seconds; `u64::MAX`: not purged): stale from then on, still
    /// usable where staleness is allowed (`stale-while-revalidate`, `stale-if-error`).
    purged_at: AtomicU64,
    /// Uses since its queue last looked (S3-FIFO's 2-bit counter).
    freq: AtomicU8,
    /// Taken out of the table: no longer found; its shard frees it when it gets to it.
    gone: AtomicBool,
    /// Bytes of encoded copies counted in the storing shard's ledger ([`CLOSED`] once freed).
    extra: AtomicU64,
    /// The storing shard's counts that other workers change.
    ledger: OnceLock<Arc<Ledger>>,
}

/// What other workers change in a shard's counts: its entries' encoded copies (made at hits on
/// any worker) and how many of its entries are still in the table (any worker may take one
/// out). Written once per copy made or entry taken out, never on a hit.
#[derive(Debug, Default)]
struct Ledger {
    extra: AtomicI64,
    live: AtomicI64,
}

/// `State::extra` of a freed entry: encoded copies made after it are counted nowhere.
const CLOSED: u64 = 1 << 63;

impl Default for State {
    fn default() -> Self {
        Self {
            purged_at: AtomicU64::new(u64::MAX),
            freq: AtomicU8::new(0),
            gone: AtomicBool::new(false),
            extra: AtomicU64::new(0),
            ledger: OnceLock::new(),
        }
    }
}

impl State {
    pub fn gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Marks it taken out of the table (once; its shard's count of live entries follows).
    /// Marks it gone; whether it was not already.
    pub(super) fn set_gone(&self) -> bool {
        let first = !self.gone.swap(true, Ordering::AcqRel);
        if first {
            if let Some(l) = self.ledger.get() {
                l.live.fetch_sub(1, Ordering::Relaxed);
            }
        }
        first
    }

    /// Counts a use (written only while the counter is below its cap: a hot entry's line is
    /// then only read by the workers hitting it).
    pub fn touch(&self) {
        let f = self.freq.load(Ordering::Relaxed);
        if f < 3 {
            self.freq.store(f + 1, Ordering::Relaxed);
        }
    }

    fn freq(&self) -> u8 {
        self.freq.load(Ordering::Relaxed)
    }

    fn set_freq(&self, f: u8) {
        self.freq.store(f, Ordering::Relaxed);
    }

    pub fn purged_at(&self) -> Option<u64> {
        let at = self.purged_at.load(Ordering::Relaxed);
        (at != u64::MAX).then_some(at)
    }
}

/// A stored body's encoded copies, one slot per [`Coding`].
#[derive(Debug, Default)]
pub struct Encoded([OnceLock<Body>; 3]);

impl Encoded {
    pub fn get(&self, c: Coding) -> Option<&Body> {
        self.0[c.index()].get()
    }
}

/// Bookkeeping counted per entry beyond its own bytes: the slot, the map's share and the
/// queue position (an estimate of allocator and table overhead, on the safe side).
const OVERHEAD: usize = 160;

impl Entry {
    /// The body as stored, or encoded with `coding` (which must have been made).
    pub fn bytes(&self, coding: Option<Coding>) -> &[u8] {
        self.body_for(coding)
    }

    /// The stored body, or its copy encoded with `coding` when that was made.
    pub fn body_for(&self, coding: Option<Coding>) -> &Body {
        match coding.and_then(|c| self.encoded.get(c)) {
            Some(b) => b,
            None => &self.body,
        }
    }

    /// Bytes this entry holds when stored, as counted against the budget.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + OVERHEAD
            + self.key.len()
            + self.head.len()
            + self.body.footprint()
            + self.etag.as_ref().map_or(0, |e| e.len())
            + self
                .vary
                .iter()
                .map(|(n, v)| n.len() + v.len() + 32)
                .sum::<usize>()
            + self.tags.iter().map(|t| 2 * t.len() + 48).sum::<usize>()
    }

    pub fn age(&self, now: u64) -> u64 {
        super::policy::current_age(self.initial_age, self.response_time, now)
    }

    /// The freshness lifetime, cut to the age it had when it was soft-purged.
    pub fn lifetime_now(&self) -> u64 {
        match self.state.purged_at() {
            Some(at) => self.lifetime.min(self.age(at)),
            None => self.lifetime,
        }
    }

    /// Marks it stale from `now` on (a soft purge); whether it was fresh until now.
    pub fn soften(&self, now: u64) -> bool {
        self.state
            .purged_at
            .compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Bytes of its encoded copies.
    fn extra(&self) -> usize {
        (self.state.extra.load(Ordering::Relaxed) & !CLOSED) as usize
    }
}

struct Slot {
    entry: Option<Arc<Entry>>,
    /// Bumped each time the slot is reused, so stale queue positions are recognised.
    gen: u32,
    main: bool,
    size: usize,
}

/// What [`Shard::select`] found.
#[derive(Debug)]
pub enum Select {
    /// Nothing stored under the key.
    None,
    /// Responses are stored under the key, but none for this request's `Vary` values.
    NoVariant,
    Found(Arc<Entry>),
}

/// What a shard counts (published in the admin status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub stores: u64,
    pub evictions: u64,
    pub invalidations: u64,
    /// Lookups that waited for another request's fetch of the same key (on any worker).
    pub waits: u64,
    /// Bytes of body copies being collected for the cache (not yet stored).
    pub collecting: u64,
}

/// One worker's share of the box's stored responses: the entries it stored, counted in its
/// budget and evicted by its queues; see the module documentation.
pub struct Shard {
    table: Arc<Table>,
    budget: usize,
    used: usize,
    small_bytes: usize,
    /// This shard's entries by key.
    map: HashMap<Box<[u8]>, Vec<u32>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    small: VecDeque<(u32, u32)>,
    main: VecDeque<(u32, u32)>,
    ghost: VecDeque<u64>,
    ghost_set: HashSet<u64>,
    stats: Stats,
    /// Encoded copies of this shard's entries (made by any worker), and how many of its
    /// entries are still in the table.
    ledger: Arc<Ledger>,
    /// Body copies in flight (a quarter of the budget at most).
    collecting: std::rc::Rc<super::Collecting>,
    /// Entries by tag, as (slot, generation): a position whose slot moved on is skipped and
    /// dropped when the tag is purged, or when the index is rebuilt ([`Shard::index_tag`]).
    tags: HashMap<Box<[u8]>, Vec<(u32, u32)>>,
    /// Positions in `tags`, and how many of them belong to stored entries.
    tag_refs: usize,
    live_tag_refs: usize,
    place: Place,
}

/// Where a shard puts the body of a response it is about to store (io's choice; on the heap
/// unless io says otherwise).
pub type Place = fn(Vec<u8>) -> Body;

impl Shard {
    /// A shard that holds at most `budget` bytes of the entries in `table`.
    pub fn new(budget: usize, table: Arc<Table>) -> Self {
        Self {
            table,
            budget,
            used: 0,
            small_bytes: 0,
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::new(),
            stats: Stats::default(),
            ledger: Arc::default(),
            collecting: std::rc::Rc::new(super::Collecting::new(budget / 4)),
            tags: HashMap::new(),
            tag_refs: 0,
            live_tag_refs: 0,
            place: Body::heap,
        }
    }

    /// Bodies to be stored go where `place` puts them.
    pub fn with_place(mut self, place: Place) -> Self {
        self.place = place;
        self
    }

    /// Where a body about to be stored goes.
    pub fn place(&self, body: Vec<u8>) -> Body {
        (self.place)(body)
    }

    /// The box's table this shard stores into.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The count of body copies in flight, for the tees of this shard's fills.
    pub fn collecting(&self) -> std::rc::Rc<super::Collecting> {
        self.collecting.clone()
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Changes the budget (a reload), evicting down to it.
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        self.collecting.set_limit(budget / 4);
        self.evict_to(budget);
    }

    /// Bytes held: the entries as stored, and the encoded copies any worker made of them.
    fn used(&self) -> usize {
        self.used + self.ledger.extra.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.ledger.live.load(Ordering::Relaxed).max(0) as u64,
            bytes: self.used() as u64,
            collecting: self.collecting.bytes() as u64,
            ..self.stats
        }
    }

    /// Counts a lookup that served a stored response.
    pub fn count_hit(&mut self) {
        self.stats.hits += 1;
    }

    /// Counts a lookup that found nothing usable.
    pub fn count_miss(&mut self) {
        self.stats.misses += 1;
    }

    /// Counts a lookup that waits for another request's fetch.
    pub fn count_wait(&mut self) {
        self.stats.waits += 1;
    }

    /// Stores `entry`, replacing a variant with the same selecting values; false when it is
    /// larger than an eighth of the budget (one object never flushes the shard).
    pub fn insert(&mut self, entry: Entry) -> bool {
        self.insert_rc(Arc::new(entry))
    }

    /// [`insert`](Self::insert) for an entry the caller keeps a handle to.
    pub fn insert_rc(&mut self, entry: Arc<Entry>) -> bool {
        let size = entry.size();
        if size > self.budget / 8 {
            return false;
        }
        if entry.state.ledger.set(self.ledger.clone()).is_err() {
            return false;
        }
        self.ledger.live.fetch_add(1, Ordering::Relaxed);
        self.table.publish(&entry);
        self.free_gone(&entry.key);
        self.evict_to(self.budget.saturating_sub(size));
        let h = hash(&entry.key);
        let main = self.ghost_set.remove(&h);
        let key = entry.key.clone();
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(Slot {
                    entry: None,
                    gen: 0,
                    main: false,
                    size: 0,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[id as usize];
        s.gen = s.gen.wrapping_add(1);
        let gen = s.gen;
        for t in entry.tags.iter() {
            self.tags.entry(t.clone()).or_default().push((id, gen));
        }
        self.tag_refs += entry.tags.len();
        self.live_tag_refs += entry.tags.len();
        let s = &mut self.slots[id as usize];
        s.entry = Some(entry);
        s.main = main;
        s.size = size;
        if main {
            self.main.push_back((id, gen));
        } else {
            self.small.push_back((id, gen));
            self.small_bytes += size;
        }
        self.used += size;
        self.map.entry(key).or_default().push(id);
        self.stats.stores += 1;
        self.index_tag();
        true
    }

    /// Keeps `bytes`, `entry`'s body encoded with `coding`, counted as part of it in the budget
    /// of the shard that stored it (whichever worker made the copy); the bytes back when the
    /// entry is no longer stored, or they would not fit.
    pub fn grow(
        &mut self,
        entry: &Arc<Entry>,
        coding: Coding,
        bytes: Box<[u8]>,
    ) -> Result<(), Box<[u8]>> {
        let Some(ledger) = entry.state.ledger.get() else {
            return Err(bytes);
        };
        if entry.state.gone() || entry.size() + entry.extra() + bytes.len() > self.budget / 8 {
            return Err(bytes);
        }
        let body = self.place(bytes.into_vec());
        let n = body.footprint();
        // Another worker made the same copy first: this one is only written.
        entry.encoded.0[coding.index()]
            .set(body)
            .map_err(|b: Body| -> Box<[u8]> { b[..].into() })?;
        let counted = entry
            .state
            .extra
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
                (x & CLOSED == 0).then_some(x + n as u64)
            })
            .is_ok();
        if counted {
            ledger.extra.fetch_add(n as i64, Ordering::AcqRel);
            if Arc::ptr_eq(ledger, &self.ledger) {
                self.evict_to(self.budget);
            }
        }
        Ok(())
    }

    /// Takes every variant stored under `key` out of the box's table, whichever worker stored
    /// it (an invalidation); how many there were.
    pub fn remove(&mut self, key: &[u8]) -> usize {
        let n = self.table.remove(key);
        self.free_gone(key);
        self.stats.invalidations += n as u64;
        n
    }

    /// Removes this shard's entries under `key` (a purge, which every worker runs); how many.
    pub fn purge(&mut self, key: &[u8]) -> usize {
        let Some(ids) = self.map.get(key).cloned() else {
            return 0;
        };
        let mut n = 0;
        for &id in &ids {
            if let Some(e) = &self.slots[id as usize].entry {
                n += self.table.remove_entry(e) as usize;
            }
            self.drop_slot(id);
        }
        self.stats.invalidations += n as u64;
        n
    }

    /// Frees this shard's slots under `key` whose entries were taken out of the table.
    fn free_gone(&mut self, key: &[u8]) {
        let Some(ids) = self.map.get(key) else { return };
        let gone: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| {
                self.slots[id as usize]
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.state.gone())
            })
            .collect();
        for id in gone {
            self.drop_slot(id);
        }
    }

    /// Purges this shard's entries tagged `tag`: removed, or with `soft` marked stale from
    /// `now` on (still served where staleness is allowed, revalidated otherwise). How many.
    pub fn purge_tag(&mut self, tag: &[u8], soft: bool, now: u64) -> usize {
        let Some(mut positions) = self.tags.remove(tag) else {
            return 0;
        };
        self.tag_refs -= positions.len();
        positions.retain(|&(id, gen)| {
            let s = &self.slots[id as usize];
            s.gen == gen
                && s.entry
                    .as_ref()
                    .is_some_and(|e| !e.state.gone() && e.tags.iter().any(|t| &t[..] == tag))
        });
        let n = positions.len();
        if soft {
            for &(id, _) in &positions {
                if let Some(e) = &self.slots[id as usize].entry {
                    e.soften(now);
                }
            }
            self.tag_refs += positions.len();
            self.tags.insert(tag.into(), positions);
        } else {
            for &(id, _) in &positions {
                if let Some(e) = &self.slots[id as usize].entry {
                    self.table.remove_entry(e);
                }
                self.drop_slot(id);
            }
            self.stats.invalidations += n as u64;
        }
        self.index_tag();
        n
    }

    /// Rebuilds the tag index once positions of entries no longer stored outnumber the live
    /// ones: the index stays within twice what it must hold, at an amortised constant cost.
    fn index_tag(&mut self) {
        if self.tag_refs <= 2 * self.live_tag_refs + 1024 {
            return;
        }
        self.tags.clear();
        for (id, s) in self.slots.iter().enumerate() {
            if let Some(e) = &s.entry {
                for t in e.tags.iter() {
                    self.tags
                        .entry(t.clone())
                        .or_default()
                        .push((id as u32, s.gen));
                }
            }
        }
        self.tag_refs = self.live_tag_refs;
    }

    /// Marks this shard's variants under `key` stale from `now` on (a soft purge); how many.
    pub fn soften(&mut self, key: &[u8], now: u64) -> usize {
        let Some(ids) = self.map.get(key) else {
            return 0;
        };
        let mut n = 0;
        for &id in ids {
            if let Some(e) = &self.slots[id as usize].entry {
                if !e.state.gone() {
                    e.soften(now);
                    n += 1;
                }
            }
        }
        n
    }

    fn keys_under(&self, prefix: &[u8]) -> Vec<Box<[u8]>> {
        self.map
            .keys()
            .filter(|k| super::policy::key_uri(k).starts_with(prefix))
            .cloned()
            .collect()
    }

    /// [`soften`](Self::soften) for every key whose URI starts with `prefix`.
    pub fn soften_prefix(&mut self, prefix: &[u8], now: u64) -> usize {
        let keys = self.keys_under(prefix);
        keys.iter().map(|k| self.soften(k, now)).sum()
    }

    /// Removes this shard's entries whose URI (the key without the space, see
    /// [`policy::key_uri`](super::policy::key_uri)) starts with `prefix`; how many there were.
    pub fn remove_prefix(&mut self, prefix: &[u8]) -> usize {
        let keys = self.keys_under(prefix);
        keys.iter().map(|k| self.purge(k)).sum()
    }

    /// Frees slot `id` (its queue position is skipped when reached), taking its entry out of
    /// the table if it is still there.
    fn drop_slot(&mut self, id: u32) {
        let s = &mut self.slots[id as usize];
        let Some(e) = s.entry.take() else { return };
        let size = s.size;
        let main = s.main;
        s.gen = s.gen.wrapping_add(1);
        self.live_tag_refs -= e.tags.len();
        self.used -= size;
        if !main {
            self.small_bytes -= size;
        }
        self.free.push(id);
        if !e.state.gone() {
            self.table.remove_entry(&e);
            e.state.set_gone();
        }
        let extra = e.state.extra.swap(CLOSED, Ordering::AcqRel) & !CLOSED;
        self.ledger.extra.fetch_sub(extra as i64, Ordering::AcqRel);
        if let Some(ids) = self.map.get_mut(&e.key) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.map.remove(&e.key);
            }
        }
    }

    /// Evicts until at most `target` bytes are used.
    fn evict_to(&mut self, target: usize) {
        while self.used() > target {
            let small_target = self.budget / 10;
            let from_small = self.small_bytes > small_target || self.main.is_empty();
            if from_small {
                if !self.evict_small() && !self.evict_main() {
                    break;
                }
            } else if !self.evict_main() && !self.evict_small() {
                break;
            }
        }
    }

    /// The small queue's head: promoted to main when it was hit, else evicted (its hash to the
    /// ghost list). An entry already taken out of the table is freed. False when the queue is
    /// empty.
    fn evict_small(&mut self) -> bool {
        while let Some((id, gen)) = self.small.pop_front() {
            let Some(e) = self.live(id, gen) else {
                continue;
            };
            if e.state.gone() {
                self.drop_slot(id);
                return true;
            }
            if e.state.freq() > 0 {
                e.state.set_freq(0);
                let s = &mut self.slots[id as usize];
                s.main = true;
                self.small_bytes -= s.size;
                self.main.push_back((id, gen));
                continue;
            }
            let h = hash(&e.key);
            self.drop_slot(id);
            self.stats.evictions += 1;
            self.remember(h);
            return true;
        }
        false
    }

    /// The main queue's head: reinserted with one less use when it had any, else evicted.
    fn evict_main(&mut self) -> bool {
        while let Some((id, gen)) = self.main.pop_front() {
            let Some(e) = self.live(id, gen) else {
                continue;
            };
            if e.state.gone() {
                self.drop_slot(id);
                return true;
            }
            let f = e.state.freq();
            if f > 0 {
                e.state.set_freq(f - 1);
                self.main.push_back((id, gen));
                continue;
            }
            self.drop_slot(id);
            self.stats.evictions += 1;
            return true;
        }
        false
    }

    /// The entry at a queue position, unless the slot has moved on.
    fn live(&self, id: u32, gen: u32) -> Option<Arc<Entry>> {
        let s = &self.slots[id as usize];
        s.entry.clone().filter(|_| s.gen == gen)
    }

    /// Adds a hash to the ghost list, bounded to as many entries as the main queue holds.
    fn remember(&mut self, h: u64) {
        if self.ghost_set.insert(h) {
            self.ghost.push_back(h);
        }
        let limit = self.main.len().max(64);
        while self.ghost.len() > limit {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(key: &str, body: usize, epoch: u64) -> Entry {
        Entry {
            key: key.as_bytes().into(),
            vary: Box::new([]),
            head: b"HTTP/1.1 200 OK\r\n"[..].into(),
            body: vec![b'x'; body].into(),
            status: 200,
            response_time: 0,
            initial_age: 0,
            lifetime: 60,
            etag: None,
            last_modified: None,
            cc: Directives::default(),
            epoch,
            private_dest: false,
            tags: Box::new([]),
            state: Default::default(),
            encoded: Default::default(),
        }
    }

    fn shard(budget: usize) -> Shard {
        Shard::new(budget, Arc::new(Table::new(budget as u64)))
    }

    /// The valid stored responses under `key`, as a lookup finds them.
    fn found(s: &Shard, key: &str) -> Option<Arc<Entry>> {
        match s.table().select(key.as_bytes(), |_| true) {
            Select::Found(e) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn budget_holds_and_counts_are_exact() {
        let mut s = shard(100_000);
        for i in 0..1000 {
            assert!(s.insert(entry(&format!("k{i}"), 1000, 0)));
            assert!(s.used <= s.budget, "used {} at {i}", s.used);
        }
        let st = s.stats();
        let counted: usize = s
            .slots
            .iter()
            .filter_map(|x| x.entry.as_ref().map(|e| e.size()))
            .sum();
        assert_eq!(st.bytes as usize, counted);
        assert_eq!(st.entries as usize, s.map.len());
        assert!(st.evictions > 900);
        assert!(found(&s, "k999").is_some());
        assert!(found(&s, "k0").is_none(), "evicted ones leave the table");
        assert!(
            !s.insert(entry("huge", 20_000, 0)),
            "over an eighth of the budget"
        );
    }

    /// Pages of io's kind: the body in whole pages of 4 KiB, dropped once.
    struct Paged(Vec<u8>, Arc<std::sync::atomic::AtomicUsize>);

    impl crate::cache::Pages for Paged {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn footprint(&self) -> usize {
            self.0.len().div_ceil(4096) * 4096
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    impl Drop for Paged {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn placed_bodies_count_their_pages_and_are_freed_with_their_entry() {
        static DROPPED: std::sync::OnceLock<Arc<std::sync::atomic::AtomicUsize>> =
            std::sync::OnceLock::new();
        let dropped = DROPPED.get_or_init(Arc::default).clone();
        fn place(b: Vec<u8>) -> Body {
            match b.len() >= 1000 {
                true => Body::Pages(Arc::new(Paged(b, DROPPED.get().unwrap().clone()))),
                false => Body::heap(b),
            }
        }
        let mut s = shard(100_000).with_place(place);
        let body = s.place(vec![b'p'; 5000]);
        assert!(body.pages().is_some() && s.place(vec![1; 10]).pages().is_none());
        assert_eq!(
            (&body[..4], body.len(), body.footprint()),
            (&b"pppp"[..], 5000, 8192)
        );
        let mut e = entry("paged", 0, 0);
        e.body = body;
        let heap_size = entry("paged", 5000, 0).size();
        assert_eq!(e.size(), heap_size + 8192 - 5000, "whole pages are counted");
        assert!(s.insert(e));
        assert_eq!(s.stats().bytes as usize, heap_size + 3192);
        // A revalidated entry shares its predecessor's pages.
        let again = found(&s, "paged").unwrap().body.clone();
        assert!(Arc::ptr_eq(
            again.pages().unwrap(),
            found(&s, "paged").unwrap().body.pages().unwrap()
        ));
        drop(again);
        for i in 0..200 {
            s.insert(entry(&format!("k{i}"), 1000, 0));
        }
        assert!(found(&s, "paged").is_none());
        assert_eq!(dropped.load(Ordering::Relaxed), 1, "evicted: its pages go");
    }

    #[test]
    fn a_hit_object_survives_a_scan() {
        let mut s = shard(50_000);
        s.insert(entry("hot", 1000, 0));
        for i in 0..500 {
            if let Some(e) = found(&s, "hot") {
                e.state.touch();
            }
            s.insert(entry(&format!("scan{i}"), 1000, 0));
        }
        assert!(
            found(&s, "hot").is_some(),
            "the hot object was evicted by a scan"
        );
    }

    #[test]
    fn one_copy_per_box_whichever_worker_stored_it() {
        let table = Arc::new(Table::new(1 << 20));
        let mut a = Shard::new(100_000, table.clone());
        let mut b = Shard::new(100_000, table.clone());
        a.insert(entry("k", 10, table.epochs.get(b"k")));
        // Worker b finds a's entry; storing it again replaces a's (one copy).
        assert!(found(&b, "k").is_some());
        b.insert(entry("k", 10, table.epochs.get(b"k")));
        assert_eq!(table.variants(b"k").len(), 1);
        assert_eq!(a.stats().entries, 0, "a's copy is gone");
        assert_eq!(b.stats().entries, 1);
        // a frees the replaced slot when its queue reaches it.
        for i in 0..200 {
            a.insert(entry(&format!("x{i}"), 1000, 0));
        }
        assert!(!a.map.contains_key(&b"k"[..]));
        assert!(found(&b, "k").is_some(), "a's eviction leaves b's entry");
        // Invalidation: gone for everyone at once.
        table.epochs.bump(b"k");
        assert!(found(&a, "k").is_none() && found(&b, "k").is_none());
        assert_eq!(b.stats().entries, 0);
        // Stored after the bump with a fetch that started before it: invalid at once.
        b.insert(entry("k", 10, 0));
        assert!(found(&b, "k").is_none());
        // A purge is run by every worker; each counts what it stored.
        a.insert(entry("p", 10, 0));
        assert_eq!(b.purge(b"p"), 0);
        assert!(found(&b, "p").is_some());
        assert_eq!(a.purge(b"p"), 1);
        assert!(found(&b, "p").is_none());
    }

    #[test]
    fn encoded_copies_count_in_the_storing_shard() {
        let table = Arc::new(Table::new(1 << 20));
        let mut a = Shard::new(100_000, table.clone());
        let mut b = Shard::new(100_000, table.clone());
        a.insert(entry("k", 1000, 0));
        let e = found(&a, "k").unwrap();
        let before = a.stats().bytes;
        assert!(b.grow(&e, Coding::Gzip, vec![0; 300].into()).is_ok());
        assert_eq!(a.stats().bytes, before + 300);
        assert_eq!(b.stats().bytes, 0);
        assert!(
            b.grow(&e, Coding::Gzip, vec![0; 10].into()).is_err(),
            "made once"
        );
        assert_eq!(a.purge(b"k"), 1);
        assert_eq!(a.stats().bytes, 0, "freed with the entry");
        assert!(b.grow(&e, Coding::Br, vec![0; 10].into()).is_err());
        assert_eq!(a.stats().bytes, 0);
    }

    #[test]
    fn buckets_are_keyed_per_process() {
        // Two processes (two tables) put the same keys in different buckets: which URL shares
        // a bucket with another cannot be worked out offline.
        let (a, b) = (Epochs::default(), Epochs::default());
        let keys: Vec<String> = (0..64).map(|i| format!("http://x/{i}")).collect();
        let same = keys
            .iter()
            .filter(|k| a.bucket(k.as_bytes()) == b.bucket(k.as_bytes()))
            .count();
        assert!(same < 8, "{same} of 64 keys in the same bucket");
    }

    #[test]
    fn purge_and_prefix() {
        let mut s = shard(100_000);
        for k in ["http://a/x/1", "http://a/x/2", "http://a/y"] {
            s.insert(entry(k, 10, 0));
        }
        assert_eq!(s.remove_prefix(b"http://a/x/"), 2);
        assert_eq!(s.remove(b"http://a/y"), 1);
        assert_eq!(s.stats().entries, 0);
        assert_eq!(s.stats().bytes, 0);
        assert!(found(&s, "http://a/y").is_none());
    }

    #[test]
    fn variants_replace_their_own_kind() {
        let mut s = shard(100_000);
        let with = |v: &str| Entry {
            vary: vec![(b"accept-encoding"[..].into(), v.as_bytes().into())].into(),
            ..entry("k", 10, 0)
        };
        s.insert(with("gzip"));
        s.insert(with("br"));
        s.insert(with("gzip"));
        assert_eq!(s.table().variants(b"k").len(), 2);
        assert_eq!(s.stats().entries, 2);
        // The origin starts (or stops) varying: what was stored under the old Vary goes.
        let mut s = shard(100_000);
        s.insert(entry("k", 10, 0));
        s.insert(with("gzip"));
        let v = s.table().variants(b"k");
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].vary.len(),
            1,
            "the unvaried entry no longer answers first"
        );
    }

    #[test]
    fn tags_purge_hard_and_soft_and_the_index_stays_bounded() {
        let mut s = shard(10_000_000);
        let tagged = |k: &str, tags: &[&str]| Entry {
            tags: tags.iter().map(|t| t.as_bytes().into()).collect(),
            ..entry(k, 10, 0)
        };
        s.insert(tagged("a", &["red", "all"]));
        s.insert(tagged("b", &["blue", "all"]));
        s.insert(tagged("c", &[]));
        assert_eq!(s.purge_tag(b"red", false, 100), 1);
        assert!(found(&s, "a").is_none());
        assert_eq!(s.purge_tag(b"red", false, 100), 0, "gone with the entry");
        // Soft: kept, stale from the purge on (its age then caps its lifetime).
        assert_eq!(s.purge_tag(b"all", true, 30), 1);
        let b = found(&s, "b").unwrap();
        assert_eq!(b.lifetime_now(), 30);
        assert_eq!(
            s.purge_tag(b"all", true, 50),
            1,
            "still tagged, still counted"
        );
        assert_eq!(b.lifetime_now(), 30, "the first soft purge's time stays");
        // A replaced entry's old position is skipped, not purged twice.
        s.insert(tagged("b", &["all"]));
        assert_eq!(s.purge_tag(b"all", false, 60), 1);
        assert!(found(&s, "c").is_some());
        // Churn: the index holds at most about twice what is stored.
        for i in 0..10_000 {
            s.insert(tagged("k", &[&format!("t{i}")]));
        }
        assert!(
            s.tag_refs <= 2 * s.live_tag_refs + 1024 + 1,
            "{} {}",
            s.tag_refs,
            s.live_tag_refs
        );
        assert!(s.tags.len() <= 1024 + 2);
        // Soft purge by key and by prefix.
        s.insert(tagged("http://x/a", &[]));
        assert_eq!(s.soften(b"http://x/a", 5), 1);
        assert_eq!(s.soften_prefix(b"http://nothing/", 5), 0);
    }
}
