//! What the metrics count, from each exchange's [`EndRecord`]: one [`Tally`] per worker, updated
//! with plain additions on the worker's own thread, summed with [`Tally::add`] when scraped.
//! Which labels a request is counted under (listener, route, server, status class, cache
//! verdict, denial) is decided here; io only encodes the sums.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::proxy::EndRecord;

/// Upper bounds (seconds) of the latency histograms' buckets: 0.5 ms to 10 s, the range of
/// nginx's and Envoy's default buckets (a last bucket, `+Inf`, holds the rest).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets: exact counts per bucket, as Prometheus exports them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += s;
    }

    pub fn add(&mut self, o: &Self) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum += o.sum;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The `q` quantile (0–1) in seconds, interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; the last finite bound when it falls in `+Inf`; `None` when
    /// nothing was observed.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                    return LATENCY_BUCKETS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
                let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += c;
        }
        LATENCY_BUCKETS.last().copied()
    }

    /// `(le, count)` per bucket, not cumulative (the encoder adds them up), `+Inf` last.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .collect()
    }

    /// `(le, cumulative count)` per bucket, `+Inf` last: what Prometheus shows.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut n = 0;
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .map(|(le, c)| {
                n += c;
                (le, n)
            })
            .collect()
    }
}

/// Requests by the class of their status: `[0]` ended with none, `[1]`..`[5]` 1xx..5xx.
pub type Classes = [u64; 6];

/// The label of a status class: `1xx` … `5xx`, or `none`.
pub fn class_label(i: usize) -> &'static str {
    ["none", "1xx", "2xx", "3xx", "4xx", "5xx"][i]
}

/// The cache verdicts counted (nginx's words, as the access log shows them).
pub const CACHE_LABELS: [&str; 6] = ["HIT", "MISS", "EXPIRED", "STALE", "REVALIDATED", "BYPASS"];

/// One upstream server's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerTally {
    pub classes: Classes,
    /// Attempts that failed before a response (refused, timed out, reset, invalid).
    pub failures: u64,
    /// Requests sent on a new connection, and on one reused from the pool.
    pub new_connections: u64,
    pub reused_connections: u64,
    pub connect: Histogram,
    pub header: Histogram,
}

/// The tally's maps. Their keys come from the configuration (listeners, routes, groups and
/// their servers, limits, rules), never from a request, so a fast hash serves: SipHash was
/// four hashes and about 1,000 instructions per counted request (callgrind,
/// docs/benchmarks-log.md run 41).
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A worker's counts since it started (a reload does not reset them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// By listener address.
    pub listeners: Map<SocketAddr, Classes>,
    /// By route name.
    pub routes: Map<Box<str>, Classes>,
    /// By group name, then server address (two levels, so that counting a response looks the
    /// group up by `&str`, with no key allocated per request).
    pub servers: Map<Box<str>, Map<SocketAddr, ServerTally>>,
    pub request_time: Histogram,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Upstream attempts beyond the first.
    pub retries: u64,
    /// By [`CACHE_LABELS`].
    pub cache: [u64; 6],
    /// Forward-proxy refusals by reason (`Denial::kind`).
    pub denials: Map<&'static str, u64>,
    /// Requests refused by a rate limit, by its name.
    pub limited: Map<Box<str>, u64>,
    /// Requests a `[[rules]]` entry decided, by its name and action.
    pub rules: Map<(Box<str>, &'static str), u64>,
}

/// Where an exchange was, for its labels (io looks the names up in the configuration it ran
/// under).
#[derive(Clone, Copy, Debug)]
pub struct Labels<'a> {
    pub listener: SocketAddr,
    pub route: Option<&'a str>,
    /// The group's name and the server's address, when the last attempt went to a group.
    pub server: Option<(&'a str, SocketAddr)>,
    /// The rate limit that refused it.
    pub limited: Option<&'a str>,
    /// The `[[rules]]` entry that decided it: its name and action.
    pub rule: Option<(&'a str, &'static str)>,
}

impl Tally {
    /// Each upstream server's tally, with its group's name and its address.
    pub fn server_tallies(&self) -> impl Iterator<Item = ((&str, SocketAddr), &ServerTally)> {
        self.servers
            .iter()
            .flat_map(|(g, m)| m.iter().map(move |(a, s)| ((&**g, *a), s)))
    }

    /// Counts one exchange.
    pub fn count(&mut self, r: &EndRecord, at: Labels<'_>) {
        let class = usize::from(r.status / 100).min(5);
        self.listeners.entry(at.listener).or_default()[class] += 1;
        if let Some(route) = at.route {
            match self.routes.get_mut(route) {
                Some(c) => c[class] += 1,
                None => self.routes.entry(route.into()).or_default()[class] += 1,
            }
        }
        if let Some((group, addr)) = at.server {
            let by_addr = match self.servers.get_mut(group) {
                Some(m) => m,
                None => self.servers.entry(group.into()).or_default(),
            };
            let s = by_addr.entry(addr).or_default();
            if r.upstream_head.is_some() {
                s.classes[class] += 1;
            } else if matches!(&r.error, Some(e) if e.fault() == crate::proxy::Fault::Upstream) {
                s.failures += 1;
            }
            match r.upstream_reused {
                Some(true) => s.reused_connections += 1,
                Some(false) => s.new_connections += 1,
                None => {}
            }
            if let (Some(a), Some(b)) = (r.upstream_began, r.upstream_connected) {
                s.connect.observe(b.saturating_duration_since(a));
            }
            if let (Some(a), Some(b)) = (r.upstream_began, r.upstream_head) {
                s.header.observe(b.saturating_duration_since(a));
            }
        }
        if let Some(d) = r.duration() {
            self.request_time.observe(d);
        }
        self.bytes_in += r.head_len + r.request_body;
        self.bytes_out += r.response_body;
        self.retries += u64::from(r.attempts.saturating_sub(1));
        if let Some(l) = r.cache_label() {
            if let Some(i) = CACHE_LABELS.iter().position(|&c| c == l) {
                self.cache[i] += 1;
            }
        }
        if let Some(d) = r.denied {
            *self.denials.entry(d).or_default() += 1;
        }
        if let Some(l) = at.limited {
            match self.limited.get_mut(l) {
                Some(n) => *n += 1,
                None => {
                    self.limited.insert(l.into(), 1);
                }
            }
        }
        if let Some((name, action)) = at.rule {
            *self.rules.entry((name.into(), action)).or_default() += 1;
        }
    }

    /// Adds another worker's counts.
    pub fn add(&mut self, o: &Self) {
        fn classes(a: &mut Classes, b: &Classes) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (k, v) in &o.listeners {
            classes(self.listeners.entry(*k).or_default(), v);
        }
        for (k, v) in &o.routes {
            classes(self.routes.entry(k.clone()).or_default(), v);
        }
        for ((group, addr), v) in o.server_tallies() {
            let s = self
                .servers
                .entry(group.into())
                .or_default()
                .entry(addr)
                .or_default();
            classes(&mut s.classes, &v.classes);
            s.failures += v.failures;
            s.new_connections += v.new_connections;
            s.reused_connections += v.reused_connections;
            s.connect.add(&v.connect);
            s.header.add(&v.header);
        }
        self.request_time.add(&o.request_time);
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.retries += o.retries;
        for (a, b) in self.cache.iter_mut().zip(o.cache) {
            *a += b;
        }
        for (k, v) in &o.denials {
            *self.denials.entry(k).or_default() += v;
        }
        for (k, v) in &o.limited {
            *self.limited.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.rules {
            *self.rules.entry(k.clone()).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(60));
        let c = h.cumulative();
        assert_eq!(c[0], (0.0005, 1));
        assert_eq!(c[3], (0.005, 1));
        assert_eq!(c[4], (0.01, 2));
        assert_eq!(c[13], (10.0, 2));
        assert_eq!(c[14], (f64::INFINITY, 3));
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 60.0075).abs() < 1e-9);
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut h = Histogram::default();
        for _ in 0..100 {
            h.observe(Duration::from_millis(3));
        }
        // All in (2.5 ms, 5 ms]: the median halfway, p99 near the top.
        assert!((h.quantile(0.5).unwrap() - 0.00375).abs() < 1e-9);
        assert!((h.quantile(0.99).unwrap() - 0.004975).abs() < 1e-9);
        h.observe(Duration::from_secs(99));
        assert_eq!(h.quantile(1.0), Some(10.0));
    }

    #[test]
    fn counts_by_label_and_sums_workers() {
        // A test's fixed origin of time; nothing reads the clock in core otherwise.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let listener: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let origin: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let ok = EndRecord {
            status: 200,
            started: Some(t0),
            ended: Some(ms(30)),
            upstream_began: Some(ms(1)),
            upstream_connected: Some(ms(2)),
            upstream_head: Some(ms(20)),
            upstream_reused: Some(false),
            head_len: 100,
            response_body: 1000,
            attempts: 2,
            cache: Some("fwd=miss"),
            ..EndRecord::default()
        };
        let refused = EndRecord {
            status: 502,
            upstream_began: Some(t0),
            error: Some(crate::proxy::Error::Upstream(
                crate::proxy::UpstreamError::ConnectTimeout,
            )),
            ..EndRecord::default()
        };
        let denied = EndRecord {
            status: 403,
            denied: Some("domain"),
            ..EndRecord::default()
        };
        let at = Labels {
            listener,
            route: Some("/"),
            server: Some(("app", origin)),
            limited: None,
            rule: None,
        };
        let mut w = Tally::default();
        w.count(&ok, at);
        w.count(&refused, at);
        w.count(
            &denied,
            Labels {
                route: None,
                server: None,
                limited: Some("api"),
                rule: Some(("office", "allow")),
                ..at
            },
        );
        let mut sum = Tally::default();
        sum.add(&w);
        sum.add(&w);
        assert_eq!(sum.listeners[&listener], [0, 0, 2, 0, 2, 2]);
        assert_eq!(sum.routes["/"], [0, 0, 2, 0, 0, 2]);
        let s = sum.servers["app"][&origin];
        assert_eq!(s.classes, [0, 0, 2, 0, 0, 0]);
        assert_eq!(
            (s.failures, s.new_connections, s.reused_connections),
            (2, 2, 0)
        );
        assert_eq!(s.connect.cumulative()[2], (0.0025, 2));
        assert_eq!(s.header.count(), 2);
        assert_eq!((sum.bytes_out, sum.bytes_in, sum.retries), (2000, 200, 2));
        assert_eq!(sum.cache, [0, 2, 0, 0, 0, 0]);
        assert_eq!(sum.denials["domain"], 2);
        assert_eq!(sum.limited["api"], 2);
        assert_eq!(sum.rules[&("office".into(), "allow")], 2);
        assert_eq!(sum.request_time.count(), 2);
    }
}
