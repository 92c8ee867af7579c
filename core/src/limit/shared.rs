//! Rate limits shared by several boxes (`[shared_limits]`): each box decides every request
//! from its own table, exactly as when alone, and a sync thread beside the workers tells a
//! shared store (Redis) every `interval` what the box admitted, key by key, and folds back
//! what all the boxes together admitted. Requests never wait on the store: a slow or dead
//! one leaves each box limiting alone (and counting the requests it so decided).
//!
//! The store keeps one number per key, the key's theoretical arrival time over every box,
//! and moves it with [`store_step`]. A box takes the store's answer as a floor for its own
//! bucket ([`super::Table::merge`]). What a box cannot see is what the others admitted since
//! their last report, so over any window the boxes together admit at most [`excess_bound`]
//! more than one box would: `(N − 1) · (b + 1 + R · (T + ρ))` for N boxes, burst b, rate R,
//! sync interval T and store round trip ρ. Over a long run the rate itself holds.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{micros, Rate, Table, TAG_BITS, TIME_BITS, TIME_MASK};

/// How a table hashes its keys.
#[derive(Debug)]
pub(super) enum KeyHash {
    /// This process's own secret: a table no other process shares.
    Random(RandomState),
    /// SipHash-2-4 with a secret every box has, so a key has the same name on all of them.
    Keyed([u64; 2]),
}

impl KeyHash {
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        match self {
            Self::Random(r) => r.hash_one(key),
            Self::Keyed([k0, k1]) => {
                use std::hash::Hasher;
                // SipHash-2-4 is a fixed function (std's is deprecated only in favour of
                // randomly keyed ones, which cannot name a key across boxes).
                #[allow(deprecated)]
                let mut h = std::hash::SipHasher::new_with_keys(*k0, *k1);
                h.write(key);
                h.finish()
            }
        }
    }
}

/// Derives a table's hash keys from `[shared_limits] secret` and the limit's name.
pub fn secret(text: &str, limit: &str) -> [u64; 2] {
    use sha2::Digest;
    let d = sha2::Sha256::new()
        .chain_update(text.as_bytes())
        .chain_update([0])
        .chain_update(limit.as_bytes())
        .finalize();
    let word = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().unwrap_or_default());
    [word(0), word(8)]
}

/// What a shared table keeps beside its slots.
#[derive(Debug)]
pub(super) struct Shared {
    /// The whole hash of each slot's key (its name in the store).
    hashes: Box<[AtomicU64]>,
    /// Requests each slot's key was admitted here since the last sync.
    pending: Box<[AtomicU32]>,
    /// Requests admitted while the store could not be reached (decided by this box alone).
    local_only: AtomicU64,
}

impl Shared {
    pub(super) fn new(slots: usize) -> Self {
        Self {
            hashes: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            pending: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            local_only: AtomicU64::new(0),
        }
    }

    /// Counts an admission of the key hashed `h` in slot `i` (`ours`: the slot held the key
    /// already; otherwise the key just took it, and the previous key's count goes with it).
    pub(super) fn admitted(&self, i: usize, h: u64, ours: bool) {
        if ours {
            self.pending[i].fetch_add(1, Ordering::Relaxed);
        } else {
            // A request of the new key counted on another core between the two stores is
            // lost to the sync (one count, once per key taking a slot).
            self.hashes[i].store(h, Ordering::Release);
            self.pending[i].store(1, Ordering::Release);
        }
    }
}

/// A key the store should hear about: admitted here since the last sync, or still in debt
/// here (the answer then carries what the other boxes admitted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outstanding {
    pub slot: usize,
    /// The key's name in the store.
    pub hash: u64,
    /// Requests admitted here since the last sync.
    pub admitted: u32,
    /// The bucket's debt here (its theoretical arrival time minus now).
    pub debt: Duration,
}

impl Table {
    /// The keys to report (see [`Outstanding`]); takes their admission counts.
    pub fn outstanding(&self, now: Instant, out: &mut Vec<Outstanding>) {
        let (Some(s), Some(&origin)) = (&self.shared, self.origin.get()) else {
            return;
        };
        let t = micros(now.saturating_duration_since(origin)) & TIME_MASK;
        for (i, slot) in self.slots.iter().enumerate() {
            let v = slot.load(Ordering::Acquire);
            if v == 0 {
                continue;
            }
            let hash = s.hashes[i].load(Ordering::Acquire);
            if tag_of(hash) != v >> TIME_BITS {
                // Taken by a new key this instant: its count goes with the next sync.
                continue;
            }
            let debt = (v & TIME_MASK).saturating_sub(t);
            let admitted = if s.pending[i].load(Ordering::Relaxed) > 0 {
                s.pending[i].swap(0, Ordering::AcqRel)
            } else {
                0
            };
            if admitted > 0 || debt > 0 {
                out.push(Outstanding {
                    slot: i,
                    hash,
                    admitted,
                    debt: Duration::from_micros(debt),
                });
            }
        }
    }

    /// Folds the store's answer for a key in: from `now` its bucket here holds at least
    /// `debt` (every box's admissions); a bucket that holds more keeps it.
    pub fn merge(&self, o: &Outstanding, debt: Duration, now: Instant) {
        let Some(&origin) = self.origin.get() else {
            return;
        };
        let t = micros(now.saturating_duration_since(origin)) & TIME_MASK;
        let floor = (t + micros(debt)) & TIME_MASK;
        let tag = tag_of(o.hash);
        let slot = &self.slots[o.slot];
        let mut old = slot.load(Ordering::Acquire);
        while old >> TIME_BITS == tag && old & TIME_MASK < floor {
            match slot.compare_exchange(
                old,
                (tag << TIME_BITS) | floor,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(v) => old = v,
            }
        }
    }

    /// Counts requests admitted while the store could not be reached (the sync, from the
    /// counts it took and could not report).
    pub fn count_local_only(&self, n: u64) {
        if let Some(s) = &self.shared {
            s.local_only.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Requests this box admitted on its own count alone, the store being unreachable.
    pub fn local_only(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.local_only.load(Ordering::Relaxed))
    }
}

fn tag_of(hash: u64) -> u64 {
    (hash >> TIME_BITS).max(1) & ((1 << TAG_BITS) - 1)
}

/// The store's arithmetic for one key, in microseconds on the store's clock (Redis runs the
/// same as a Lua script): a box reports `admitted` requests and its own `debt`; the key's
/// theoretical arrival time becomes the larger of the stored one plus those requests (every
/// box's admissions summed, each once) and the box's own reckoning (which charged an idle
/// key's refill at each request's time, not at the report's, so a client at the rate is never
/// refused for the sync's lateness).
pub fn store_step(stored: Option<u64>, admitted: u64, interval: u64, now: u64, debt: u64) -> u64 {
    let summed = stored.map_or(0, |s| s.saturating_add(admitted.saturating_mul(interval)));
    summed.max(now.saturating_add(debt))
}

/// The most requests of one key that `boxes` boxes admit together, over any window, beyond
/// what one box would: each admits on a view missing what the others admitted since their
/// last report (a sync interval and a round trip), and a box new to a key starts it with a
/// full burst.
pub fn excess_bound(rate: &Rate, boxes: u32, sync: Duration, rtt: Duration) -> f64 {
    let per_box =
        f64::from(rate.burst) + 1.0 + (sync + rtt).as_secs_f64() / rate.interval.as_secs_f64();
    f64::from(boxes.saturating_sub(1)) * per_box
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use std::collections::HashMap;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Boxes that share a limit through a store (a map), synced every `sync` ms, each box at
    /// its own offset; `send(ms)` says which box the client's request of that millisecond goes
    /// to (or none). Returns every admission's time.
    fn simulate(
        boxes: usize,
        rate: Rate,
        sync: u64,
        run_ms: u64,
        store_up: bool,
        send: impl Fn(u64) -> Option<usize>,
    ) -> Vec<u64> {
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        let tables: Vec<Table> = (0..boxes).map(|_| Table::shared(64, [7, 9])).collect();
        let mut store: HashMap<u64, u64> = HashMap::new();
        let interval = micros(rate.interval);
        let mut admitted = Vec::new();
        let mut out = Vec::new();
        for m in 0..run_ms {
            let now = start + ms(m);
            if let Some(b) = send(m) {
                if tables[b].check(b"client", &rate, now) == Verdict::Pass {
                    admitted.push(m);
                }
            }
            for (b, t) in tables.iter().enumerate() {
                if !store_up || !(m + b as u64 * sync / boxes as u64).is_multiple_of(sync) {
                    continue;
                }
                out.clear();
                t.outstanding(now, &mut out);
                for o in &out {
                    // The store's clock: microseconds since the run began (plus an offset:
                    // the boxes' and the store's clocks need not agree).
                    let snow = 5_000_000 + m * 1000;
                    let stored = store.get(&o.hash).copied();
                    let tat = store_step(
                        stored,
                        u64::from(o.admitted),
                        interval,
                        snow,
                        micros(o.debt),
                    );
                    store.insert(o.hash, tat);
                    t.merge(o, Duration::from_micros(tat.saturating_sub(snow)), now);
                }
            }
        }
        admitted
    }

    fn most_in_any_window(times: &[u64], window: u64) -> usize {
        let mut best = 0;
        let mut j = 0;
        for i in 0..times.len() {
            while times[i] - times[j] >= window {
                j += 1;
            }
            best = best.max(i - j + 1);
        }
        best
    }

    #[test]
    fn one_flooding_client_across_boxes_gets_the_rate_within_the_bound() {
        for (boxes, burst, sync) in [(2, 0, 100), (2, 10, 100), (3, 5, 50), (4, 20, 200)] {
            // 50/s; the client asks every millisecond, round robin across the boxes.
            let rate = Rate {
                interval: ms(20),
                burst,
                no_delay: u32::MAX,
            };
            let run = 20_000;
            let got = simulate(boxes, rate, sync, run, true, |m| Some(m as usize % boxes));
            let bound = excess_bound(&rate, boxes as u32, ms(sync), Duration::ZERO);
            // One box alone: the rate over the window plus the burst.
            let alone = |w: u64| (w / 20) as f64 + f64::from(burst) + 1.0;
            for w in [200, 1000, 5000, run] {
                let most = most_in_any_window(&got, w) as f64;
                assert!(
                    most <= alone(w) + bound,
                    "{boxes} boxes, burst {burst}, sync {sync}: {most} in {w} ms > {} + {bound}",
                    alone(w)
                );
            }
            // Over the whole run, the rate holds within 2%.
            let total = got.len() as f64;
            assert!(
                (total - alone(run)).abs() <= 0.02 * alone(run) + bound,
                "{boxes} boxes: {total} over {run} ms"
            );
        }
    }

    #[test]
    fn a_client_within_the_rate_is_never_refused_whichever_box_it_reaches() {
        // 10/s, no burst; the client asks exactly every 100 ms, alternating boxes, and every
        // 120 ms at random boxes: the sync's lateness never costs it a request.
        let rate = Rate {
            interval: ms(100),
            burst: 0,
            no_delay: u32::MAX,
        };
        let got = simulate(2, rate, 100, 10_000, true, |m| {
            m.is_multiple_of(100).then_some((m / 100) as usize % 2)
        });
        assert_eq!(got.len(), 100);
        let got = simulate(3, rate, 70, 12_000, true, |m| {
            m.is_multiple_of(120)
                .then_some(((m / 120) * 7 % 3) as usize)
        });
        assert_eq!(got.len(), 100);
    }

    #[test]
    fn without_the_store_each_box_limits_alone() {
        let rate = Rate {
            interval: ms(20),
            burst: 0,
            no_delay: u32::MAX,
        };
        let got = simulate(2, rate, 100, 10_000, false, |m| Some(m as usize % 2));
        // Each box admits the rate: twice the rate in all.
        assert_eq!(got.len(), 1000);
    }

    #[test]
    fn outstanding_keys_are_taken_once_and_merged_as_a_floor() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let rate = Rate {
            interval: ms(10),
            burst: 100,
            no_delay: u32::MAX,
        };
        let t = Table::shared(64, secret("s", "l"));
        let mut out = Vec::new();
        t.outstanding(now, &mut out);
        assert!(out.is_empty());
        for _ in 0..3 {
            assert_eq!(t.check(b"k", &rate, now), Verdict::Pass);
        }
        t.outstanding(now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].admitted, out[0].debt), (3, ms(30)));
        assert_eq!(out[0].hash, KeyHash::Keyed(secret("s", "l")).hash(b"k"));
        // The store says 90 others were admitted elsewhere: 1 + 100 - 93 remain.
        t.merge(&out[0], ms(930), now);
        let passed = (0..20)
            .filter(|_| t.check(b"k", &rate, now) == Verdict::Pass)
            .count();
        assert_eq!(passed, 8);
        // A smaller debt from the store takes nothing back.
        let mut again = Vec::new();
        t.outstanding(now, &mut again);
        assert_eq!(again[0].admitted, 8);
        t.merge(&again[0], ms(10), now);
        assert!(matches!(t.check(b"k", &rate, now), Verdict::Reject { .. }));
        // An unshared table has nothing to report, and keys differ by secret.
        assert_ne!(secret("s", "l"), secret("t", "l"));
        assert_ne!(secret("s", "l"), secret("s", "m"));
    }
}
