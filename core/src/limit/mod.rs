//! Request-rate limits exact across cores: GCRA (the generic cell rate algorithm, a token
//! bucket written as one timestamp per key) over a table of atomic words that every worker
//! shares. Checking a request is one hash and one compare-and-swap on the key's word, on
//! limited routes only: the one read-modify-write on the request path (docs/architecture.md).
//!
//! The table is bounded: `slots` words, a key in one of [`PROBES`] neighbouring slots chosen by
//! a keyed hash; a new key takes an empty or refilled slot among them, else evicts the one
//! closest to refilled (its client gets a fresh bucket: a flood of distinct keys costs the
//! limit some precision, never memory). Time is passed in, as everywhere in core.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod shared;

/// Neighbouring slots a key may live in (one or two cache lines).
pub const PROBES: usize = 4;

/// Bits of a slot holding the key's tag; the rest hold its theoretical arrival time in
/// microseconds since the table's origin (2^44 µs: 203 days; a table older than that wraps
/// its times and treats every key as refilled once).
const TAG_BITS: u32 = 20;
const TIME_BITS: u32 = 64 - TAG_BITS;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// A rate: one request every `interval`, with `burst` more allowed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// The time one request "costs" (1 s / rate).
    pub interval: Duration,
    /// Requests beyond the rate accepted at once (nginx's `burst`).
    pub burst: u32,
    /// Of those, how many go through at once; the rest wait for their turn (nginx's `delay`;
    /// `u32::MAX`: none waits, nginx's `nodelay`).
    pub no_delay: u32,
}

impl Rate {
    /// `100/s`, `20/m`, `1/h`: a count per unit; `None` when malformed or zero.
    pub fn parse(text: &str) -> Option<Duration> {
        let (n, unit) = text.trim().split_once('/')?;
        let n: u64 = n.trim().parse().ok().filter(|&n| n > 0)?;
        let per = match unit.trim() {
            "s" => 1_000_000u64,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            _ => return None,
        };
        // At most a million a second: finer than a microsecond is not kept.
        let us = per / n;
        (us > 0).then(|| Duration::from_micros(us))
    }
}

/// A `[[rate_limits]]` entry.
#[derive(Clone, Debug)]
pub struct RateLimit {
    /// What metrics and logs call it.
    pub name: String,
    pub rate: Rate,
    pub key: Key,
    /// The routes it applies to (indexes); `None`: every request, forward proxy included.
    pub routes: Option<Vec<usize>>,
    /// The status of a refused request (429 by default).
    pub status: u16,
    /// IPv6 clients are keyed by this prefix length.
    pub v6_prefix: u8,
    /// Its keys, shared by every worker (kept across reloads while the limit stays the same).
    pub table: std::sync::Arc<Table>,
}

impl PartialEq for RateLimit {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.name,
            self.rate,
            &self.key,
            &self.routes,
            self.status,
            self.v6_prefix,
        ) == (&o.name, o.rate, &o.key, &o.routes, o.status, o.v6_prefix)
            && self.table.slots.len() == o.table.slots.len()
            && self.table.is_shared() == o.table.is_shared()
    }
}

impl Eq for RateLimit {}

/// What a limit counts requests by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// The client's address (IPv6 by prefix).
    Client,
    /// A request header's value (lower-case name); requests without it are not counted.
    Header(String),
    /// The route: all its requests together.
    Route,
    /// The forward proxy's authenticated user; requests without one are not counted.
    User,
}

impl Key {
    /// `client`, `route`, `user` or `header:NAME`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "client" => Self::Client,
            "route" => Self::Route,
            "user" => Self::User,
            _ => {
                let name = s.strip_prefix("header:")?;
                if !crate::http::chars::is_token(name.as_bytes()) {
                    return None;
                }
                Self::Header(name.to_ascii_lowercase())
            }
        })
    }
}

/// Who made a request, for its keys.
pub struct Who<'a> {
    pub client: IpAddr,
    pub route: Option<usize>,
    pub user: Option<&'a str>,
    /// A request header's value by lower-case name.
    pub header: &'a dyn Fn(&[u8]) -> Option<&'a [u8]>,
}

/// Checks a request against every limit that applies to it, in order: the first refusal
/// decides (with the index of its limit); otherwise the longest delay.
pub fn admit(limits: &[RateLimit], who: &Who<'_>, now: Instant) -> (Verdict, Option<usize>) {
    let mut key = Vec::with_capacity(32);
    let mut out = (Verdict::Pass, None);
    for (i, l) in limits.iter().enumerate() {
        if let Some(routes) = &l.routes {
            if !who.route.is_some_and(|r| routes.contains(&r)) {
                continue;
            }
        }
        key.clear();
        match &l.key {
            Key::Client => client_key(who.client, l.v6_prefix, &mut key),
            Key::Route => match who.route {
                Some(r) => key.extend_from_slice(&(r as u64).to_be_bytes()),
                None => continue,
            },
            Key::User => match who.user {
                Some(u) => key.extend_from_slice(u.as_bytes()),
                None => continue,
            },
            Key::Header(h) => match (who.header)(h.as_bytes()) {
                Some(v) => key.extend_from_slice(v),
                None => continue,
            },
        }
        match l.table.check(&key, &l.rate, now) {
            Verdict::Pass => {}
            Verdict::Delay(d) => match out.0 {
                Verdict::Delay(e) if e >= d => {}
                _ => out = (Verdict::Delay(d), Some(i)),
            },
            r @ Verdict::Reject { .. } => return (r, Some(i)),
        }
    }
    out
}

/// What a check says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on now.
    Pass,
    /// Go on after this wait (within the burst, beyond `no_delay`).
    Delay(Duration),
    /// Over the limit: refuse; a request would conform again after this long.
    Reject { retry_after: Duration },
}

/// One limit's table of keys.
#[derive(Debug)]
pub struct Table {
    slots: Box<[AtomicU64]>,
    /// The first moment it was asked about; times are kept relative to it.
    origin: std::sync::OnceLock<Instant>,
    hash: shared::KeyHash,
    /// Keys evicted while their bucket still held debt (a sign the table is too small).
    evicted: AtomicU64,
    /// What a shared backend syncs (`None`: this box alone).
    shared: Option<shared::Shared>,
}

impl Table {
    /// A table of at least `slots` words (rounded up to a power of two, at least 64).
    pub fn new(slots: usize) -> Self {
        let n = slots.max(64).next_power_of_two();
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            origin: std::sync::OnceLock::new(),
            hash: shared::KeyHash::Random(std::collections::hash_map::RandomState::new()),
            evicted: AtomicU64::new(0),
            shared: None,
        }
    }

    /// A table whose counts are shared with other boxes through a backend: its keys hashed
    /// with `secret` (the same on every box, so that a key has one name everywhere), and each
    /// slot's admissions counted for the next sync ([`shared`]).
    pub fn shared(slots: usize, secret: [u64; 2]) -> Self {
        let mut t = Self::new(slots);
        t.hash = shared::KeyHash::Keyed(secret);
        t.shared = Some(shared::Shared::new(t.slots.len()));
        t
    }

    /// Whether its counts are shared with other boxes.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Bytes it holds.
    pub fn size(&self) -> usize {
        self.slots.len() * 8
    }

    /// Counts one request of `key` at `now` against `rate`.
    pub fn check(&self, key: &[u8], rate: &Rate, now: Instant) -> Verdict {
        let h = self.hash.hash(key);
        // The tag is never 0, so an empty slot (0) matches no key.
        let tag = (h >> TIME_BITS).max(1);
        let base = (h as usize) & (self.slots.len() - 1);
        let origin = *self.origin.get_or_init(|| now);
        let t = micros(now.saturating_duration_since(origin)) & TIME_MASK;
        let interval = micros(rate.interval).max(1);
        let tau = interval.saturating_mul(u64::from(rate.burst));
        let free = interval.saturating_mul(u64::from(rate.no_delay.min(rate.burst)));
        loop {
            let (i, old) = self.find(base, tag, t);
            let (tat, ours) = if old >> TIME_BITS == tag {
                (old & TIME_MASK, true)
            } else {
                (0, false)
            };
            if !ours && old != 0 && (old & TIME_MASK) > t {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
            // GCRA: the request conforms when the bucket's debt, max(tat, t) - t, is within
            // the burst tolerance; it then adds one interval of debt.
            let start = tat.max(t);
            let debt = start - t;
            if debt > tau {
                return Verdict::Reject {
                    retry_after: Duration::from_micros(debt - tau),
                };
            }
            let new = (tag << TIME_BITS) | ((start + interval) & TIME_MASK);
            if self.slots[i]
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if let Some(s) = &self.shared {
                    // A second read-modify-write, on shared limits only: the sync's count.
                    s.admitted(i, h, ours);
                }
                return if debt > free {
                    Verdict::Delay(Duration::from_micros(debt - free))
                } else {
                    Verdict::Pass
                };
            }
            // Another core counted a request of this slot meanwhile: read it again.
        }
    }

    /// The slot of `tag` among the probes (and its word), else the one to take: an empty or
    /// refilled one, else the one closest to refilled.
    fn find(&self, base: usize, tag: u64, t: u64) -> (usize, u64) {
        let mask = self.slots.len() - 1;
        let mut victim = (base, u64::MAX, 0u64);
        for p in 0..PROBES {
            let i = (base + p) & mask;
            let v = self.slots[i].load(Ordering::Acquire);
            if v >> TIME_BITS == tag {
                return (i, v);
            }
            let tat = v & TIME_MASK;
            let left = tat.saturating_sub(t);
            if left < victim.1 {
                victim = (i, left, v);
            }
        }
        (victim.0, victim.2)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A client address as a limit's key: IPv4 whole, IPv6 by its first `v6_prefix` bits (a /64
/// by default: one subscriber's network, which a client can fill with addresses at will).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn client_key(ip: IpAddr, v6_prefix: u8, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => out.extend_from_slice(&v4.octets()),
            None => {
                let bits = u128::from(v6);
                let p = u32::from(v6_prefix.min(128));
                let masked = if p == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - p))
                };
                out.extend_from_slice(&masked.to_be_bytes());
                out.push(v6_prefix);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        // A test's fixed origin of time; nothing reads the clock in core otherwise.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("100/s"), Some(ms(10)));
        assert_eq!(Rate::parse("60/m"), Some(ms(1000)));
        assert_eq!(Rate::parse("2/h"), Some(Duration::from_secs(1800)));
        for bad in ["0/s", "x/s", "10", "10/d", "2000000/s"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn burst_then_the_rate_then_refill() {
        let start = t0();
        let table = Table::new(1024);
        // 10/s with a burst of 5, none delayed.
        let rate = Rate {
            interval: ms(100),
            burst: 5,
            no_delay: u32::MAX,
        };
        let at = |n| start + ms(n);
        // 1 + 5 at once, the 7th refused until one interval has passed.
        for i in 0..6 {
            assert_eq!(table.check(b"a", &rate, at(0)), Verdict::Pass, "{i}");
        }
        assert_eq!(
            table.check(b"a", &rate, at(0)),
            Verdict::Reject {
                retry_after: ms(100)
            }
        );
        assert_eq!(
            table.check(b"a", &rate, at(60)),
            Verdict::Reject {
                retry_after: ms(40)
            }
        );
        assert_eq!(table.check(b"a", &rate, at(100)), Verdict::Pass);
        assert!(matches!(
            table.check(b"a", &rate, at(100)),
            Verdict::Reject { .. }
        ));
        // Another key is not affected.
        assert_eq!(table.check(b"b", &rate, at(100)), Verdict::Pass);
        // Steady at the rate: every 100 ms passes, forever.
        for k in 2..50 {
            assert_eq!(table.check(b"a", &rate, at(k * 100)), Verdict::Pass, "{k}");
        }
        // After a long pause the whole burst is back, not more.
        let later = 50 * 100 + 10_000;
        for _ in 0..6 {
            assert_eq!(table.check(b"a", &rate, at(later)), Verdict::Pass);
        }
        assert!(matches!(
            table.check(b"a", &rate, at(later)),
            Verdict::Reject { .. }
        ));
    }

    #[test]
    fn over_a_long_run_the_rate_holds_exactly() {
        let start = t0();
        let table = Table::new(64);
        let rate = Rate {
            interval: ms(10),
            burst: 0,
            no_delay: u32::MAX,
        };
        // A client asking every millisecond for 10 s gets 100/s: 1000 of 10,000.
        let passed = (0..10_000)
            .filter(|&i| table.check(b"c", &rate, start + ms(i)) == Verdict::Pass)
            .count();
        assert_eq!(passed, 1000);
    }

    #[test]
    fn delay_mode_queues_up_to_the_burst() {
        let start = t0();
        let table = Table::new(64);
        // 10/s, burst 3, the first 1 excess at once and the others delayed.
        let rate = Rate {
            interval: ms(100),
            burst: 3,
            no_delay: 1,
        };
        let at0 = start;
        assert_eq!(table.check(b"d", &rate, at0), Verdict::Pass);
        assert_eq!(table.check(b"d", &rate, at0), Verdict::Pass);
        assert_eq!(table.check(b"d", &rate, at0), Verdict::Delay(ms(100)));
        assert_eq!(table.check(b"d", &rate, at0), Verdict::Delay(ms(200)));
        assert!(matches!(
            table.check(b"d", &rate, at0),
            Verdict::Reject { .. }
        ));
    }

    #[test]
    fn a_flood_of_keys_is_bounded_and_evicts() {
        let start = t0();
        let table = Table::new(64);
        let rate = Rate {
            interval: Duration::from_secs(10),
            burst: 0,
            no_delay: u32::MAX,
        };
        assert_eq!(table.size(), 64 * 8);
        // A new key passes unless its 20-bit tag equals one of the four it probes (a chance of
        // 4 in 2^20 per key, 4% per run of 10,000): then it shares that key's bucket.
        let refused = (0..10_000u32)
            .filter(|i| table.check(&i.to_be_bytes(), &rate, start) != Verdict::Pass)
            .count();
        assert!(refused <= 3, "{refused} new keys refused");
        assert!(table.evicted() > 9000);
        // A key that was evicted starts afresh (the price of a bounded table).
        let mut again = 0;
        for i in 0..10_000u32 {
            if table.check(&i.to_be_bytes(), &rate, start) == Verdict::Pass {
                again += 1;
            }
        }
        assert!(again > 9000);
    }

    #[test]
    fn threads_share_one_exact_count() {
        let start = t0();
        let table = std::sync::Arc::new(Table::new(1024));
        let rate = Rate {
            interval: ms(1),
            burst: 999,
            no_delay: u32::MAX,
        };
        // Four threads, 1,000 requests each, all at the same instant: exactly the burst + 1
        // pass, whatever the interleaving.
        let passed: usize = (0..4)
            .map(|_| {
                let table = table.clone();
                #[allow(clippy::disallowed_methods)]
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| table.check(b"shared", &rate, start) == Verdict::Pass)
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(passed, 1000);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let key = |s: &str, p| {
            let mut v = Vec::new();
            client_key(s.parse().unwrap(), p, &mut v);
            v
        };
        assert_eq!(key("192.0.2.1", 64), vec![192, 0, 2, 1]);
        assert_eq!(key("::ffff:192.0.2.1", 64), vec![192, 0, 2, 1]);
        assert_eq!(key("2001:db8:1:2::1", 64), key("2001:db8:1:2:ffff::9", 64));
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_ne!(key("2001:db8:1:2::1", 128), key("2001:db8:1:2::2", 128));
        assert_eq!(key("2001:db8::1", 48), key("2001:db8:0:ffff::1", 48));
    }
}

/// Concurrent connections per key (a client address), shared by every worker: a word per key,
/// 20 bits of tag and a count, raised when a connection is accepted and lowered when it
/// closes. Bounded like [`Table`]; a key whose group of slots is full of open connections is
/// not counted (the process-wide maximum still holds), and that is counted.
#[derive(Debug)]
pub struct ConnTable {
    slots: Box<[AtomicU64]>,
    secret: std::collections::hash_map::RandomState,
    untracked: AtomicU64,
}

/// A connection counted in a [`ConnTable`]; give it back with [`ConnTable::leave`].
#[derive(Debug, PartialEq, Eq)]
pub struct Entered {
    slot: usize,
    tag: u64,
}

const COUNT_MASK: u64 = (1 << TIME_BITS) - 1;

impl ConnTable {
    pub fn new(slots: usize) -> Self {
        let n = slots.max(64).next_power_of_two();
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            secret: std::collections::hash_map::RandomState::new(),
            untracked: AtomicU64::new(0),
        }
    }

    /// Connections that could not be counted (their slots all held others' open ones).
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Counts a new connection of `key` unless it already has `max`: `Ok(Some(_))` counted,
    /// `Ok(None)` let in uncounted (no slot), `Err(())` over the limit.
    #[allow(clippy::result_unit_err)]
    pub fn enter(&self, key: &[u8], max: u32) -> Result<Option<Entered>, ()> {
        let h = self.secret.hash_one(key);
        let tag = (h >> TIME_BITS).max(1);
        let mask = self.slots.len() - 1;
        let base = (h as usize) & mask;
        'again: loop {
            let mut free = None;
            for p in 0..PROBES {
                let i = (base + p) & mask;
                let v = self.slots[i].load(Ordering::Acquire);
                if v >> TIME_BITS == tag && v & COUNT_MASK > 0 {
                    if v & COUNT_MASK >= u64::from(max) {
                        return Err(());
                    }
                    if self.slots[i]
                        .compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        continue 'again;
                    }
                    return Ok(Some(Entered { slot: i, tag }));
                }
                if v & COUNT_MASK == 0 && free.is_none() {
                    free = Some((i, v));
                }
            }
            let Some((i, v)) = free else {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            };
            if max == 0 {
                return Err(());
            }
            if self.slots[i]
                .compare_exchange(
                    v,
                    (tag << TIME_BITS) | 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return Ok(Some(Entered { slot: i, tag }));
            }
        }
    }

    /// The connection closed.
    pub fn leave(&self, e: Entered) {
        let _ = self.slots[e.slot].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v >> TIME_BITS == e.tag && v & COUNT_MASK > 0).then_some(v - 1)
        });
    }
}

#[cfg(test)]
mod conn_tests {
    use super::*;

    #[test]
    fn connections_per_key_are_capped_and_given_back() {
        let t = ConnTable::new(64);
        let a: Vec<_> = (0..3).map(|_| t.enter(b"a", 3).unwrap().unwrap()).collect();
        assert_eq!(t.enter(b"a", 3), Err(()));
        // Another key is not affected.
        let b = t.enter(b"b", 3).unwrap().unwrap();
        for e in a {
            t.leave(e);
        }
        t.leave(b);
        let again: Vec<_> = (0..3).map(|_| t.enter(b"a", 3).unwrap().unwrap()).collect();
        assert_eq!(t.enter(b"a", 3), Err(()));
        drop(again);
        // A flood of distinct keys each holding a connection fills the table; the rest are let
        // in uncounted, never refused for another's count.
        let mut held = 0;
        for i in 0..1000u32 {
            if let Ok(Some(_)) = t.enter(&i.to_be_bytes(), 1) {
                held += 1;
            }
        }
        assert!(held <= 64);
        assert!(t.untracked() > 900);
    }
}
