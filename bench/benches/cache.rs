//! The cache shard: S3-FIFO's hit ratio against LRU's on a Zipf trace (printed once, the figure
//! docs/benchmarks.md records), and the cost of a lookup and an insert.
//!
//! The trace: 1,000,000 requests over 100,000 objects, Zipf-distributed with exponent 0.8 and
//! 1 (web traces sit between), object sizes 1–64 KiB (fixed per object), seeded; the cache holds
//! 1%, 5% and 10% of the distinct bytes. The LRU is a plain one (linked through a slab and a
//! hash map, evicting from the tail) with the same byte accounting.

use std::collections::HashMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringway_core::cache::control::Directives;
use ringway_core::cache::{Entry, Select, Shard, Table};
use std::sync::Arc;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A Zipf(s) sampler over `n` ranks by inverse CDF (binary search in the cumulative table).
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf = Vec::with_capacity(n);
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        for v in &mut cdf {
            *v /= acc;
        }
        Self(cdf)
    }

    fn sample(&self, r: &mut Rng) -> usize {
        let u = r.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

fn entry(key: usize, body: usize) -> Entry {
    Entry {
        key: format!("http://bench.test/object/{key}")
            .into_bytes()
            .into(),
        vary: Box::new([]),
        head: b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"[..].into(),
        body: vec![0u8; body].into(),
        status: 200,
        response_time: 0,
        initial_age: 0,
        lifetime: 3600,
        etag: None,
        last_modified: None,
        cc: Directives::default(),
        epoch: 0,
        private_dest: false,
        tags: Box::new([]),
        state: Default::default(),
        encoded: Default::default(),
    }
}

/// A plain byte-bounded LRU (slab + doubly linked list + map).
struct Lru {
    budget: usize,
    used: usize,
    map: HashMap<usize, usize>,
    nodes: Vec<(usize, usize, usize, usize)>, // key, size, prev, next
    head: usize,
    tail: usize,
    free: Vec<usize>,
}

const NIL: usize = usize::MAX;

impl Lru {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            map: HashMap::new(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            free: Vec::new(),
        }
    }

    fn unlink(&mut self, i: usize) {
        let (_, _, p, n) = self.nodes[i];
        if p == NIL {
            self.head = n
        } else {
            self.nodes[p].3 = n
        }
        if n == NIL {
            self.tail = p
        } else {
            self.nodes[n].2 = p
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].2 = NIL;
        self.nodes[i].3 = self.head;
        if self.head != NIL {
            self.nodes[self.head].2 = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// True on a hit; a miss inserts.
    fn access(&mut self, key: usize, size: usize) -> bool {
        if let Some(&i) = self.map.get(&key) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        if size > self.budget / 8 {
            return false;
        }
        while self.used + size > self.budget && self.tail != NIL {
            let t = self.tail;
            self.unlink(t);
            self.used -= self.nodes[t].1;
            self.map.remove(&self.nodes[t].0);
            self.free.push(t);
        }
        let node = (key, size, NIL, NIL);
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.push_front(i);
        self.used += size;
        self.map.insert(key, i);
        false
    }
}

fn trace(s: f64) -> (Vec<usize>, Vec<usize>) {
    const OBJECTS: usize = 100_000;
    let mut r = Rng(7);
    let sizes: Vec<usize> = (0..OBJECTS)
        .map(|_| 1024 + (r.next() % (63 * 1024)) as usize)
        .collect();
    let z = Zipf::new(OBJECTS, s);
    let reqs = (0..1_000_000).map(|_| z.sample(&mut r)).collect();
    (reqs, sizes)
}

fn hit_ratios() {
    for s in [0.8, 1.0] {
        let (reqs, sizes) = trace(s);
        let distinct: usize = {
            let mut seen = vec![false; sizes.len()];
            reqs.iter()
                .filter(|&&k| !std::mem::replace(&mut seen[k], true))
                .map(|&k| sizes[k])
                .sum()
        };
        for pct in [1, 5, 10] {
            let budget = distinct * pct / 100;
            let mut shard = Shard::new(budget, Arc::new(Table::new(budget as u64)));
            let mut lru = Lru::new(budget);
            let (mut h_s3, mut h_lru) = (0usize, 0usize);
            for &k in &reqs {
                let e = entry(k, sizes[k]);
                // The shard counts sizes with its own overhead; the LRU gets the same size.
                let size = e.size();
                let key = e.key.clone();
                match shard.table().select(&key, |_| true) {
                    Select::Found(e) => {
                        e.state.touch();
                        h_s3 += 1;
                    }
                    _ => {
                        shard.insert(e);
                    }
                }
                h_lru += usize::from(lru.access(k, size));
            }
            let n = reqs.len() as f64;
            println!(
                "zipf {s}: cache {pct}% of {} MiB: hit ratio S3-FIFO {:.3}, LRU {:.3} ({:+.1} points)",
                distinct >> 20,
                h_s3 as f64 / n,
                h_lru as f64 / n,
                (h_s3 as f64 - h_lru as f64) * 100.0 / n
            );
        }
    }
}

fn shard_ops(c: &mut Criterion) {
    hit_ratios();
    let mut shard = Shard::new(64 << 20, Arc::new(Table::new(64 << 20)));
    for k in 0..10_000 {
        shard.insert(entry(k, 1024));
    }
    let key = entry(42, 0).key;
    c.bench_function("shard lookup hit", |b| {
        b.iter(|| {
            let Select::Found(e) = shard.table().select(black_box(&key), |_| true) else {
                unreachable!("stored")
            };
            e.state.touch();
            shard.count_hit();
            black_box(e.body.len())
        })
    });
    let mut k = 1_000_000;
    c.bench_function("shard insert 1 KiB (evicting)", |b| {
        b.iter(|| {
            k += 1;
            black_box(shard.insert(entry(k, 1024)))
        })
    });
}

/// Tag purge on a shard of 1,000,000 entries (each tagged `group-N` for N in 0..1000, so a tag
/// names 1,000 of them): a soft purge walks and marks them (repeatable); a hard purge removes
/// them (the shard refilled between iterations).
fn tag_purges(c: &mut Criterion) {
    let tagged = |k: usize| Entry {
        tags: vec![format!("group-{}", k % 1000)
            .into_bytes()
            .into_boxed_slice()]
        .into(),
        ..entry(k, 0)
    };
    let mut shard = Shard::new(4 << 30, Arc::new(Table::new(4 << 30)));
    for k in 0..1_000_000 {
        shard.insert(tagged(k));
    }
    c.bench_function("soft purge of 1,000 of 1,000,000 entries by tag", |b| {
        b.iter(|| black_box(shard.purge_tag(b"group-7", true, 1)))
    });
    c.bench_function("hard purge of 1,000 of 1,000,000 entries by tag", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iters {
                for k in (7..1_000_000).step_by(1000) {
                    shard.insert(tagged(k));
                }
                let t = std::time::Instant::now();
                black_box(shard.purge_tag(b"group-7", false, 1));
                spent += t.elapsed();
            }
            spent
        })
    });
}

criterion_group!(benches, shard_ops, tag_purges);
criterion_main!(benches);
