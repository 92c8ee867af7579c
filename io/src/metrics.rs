//! `GET /metrics` on the admin listener: the workers' tallies (published every 50 ms, summed
//! here) and the process's gauges, in the Prometheus text format, encoded by
//! `prometheus-client` on the admin thread. Nothing here runs on a worker.

use std::borrow::Cow;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use ringway_core::cache::Stats;
use ringway_core::health::ServerState;
use ringway_core::metrics::{class_label, Histogram, Tally, CACHE_LABELS};

use crate::counters::{ServerSnap, Status, TlsCounts};

/// What one scrape shows: a snapshot, taken with the status locks held briefly.
#[derive(Debug)]
struct Scrape {
    tally: Tally,
    workers: Vec<WorkerSnap>,
    tls: TlsCounts,
    cache: Stats,
    /// (group, server address, state label, in flight)
    servers: Vec<(String, String, &'static str, u64)>,
    log_written: u64,
    log_dropped: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    version: u64,
    started: f64,
    /// Upstream name lookups and failures.
    names: (u64, u64),
    /// Connections refused by the connection limits (process, listener, client).
    refused: [u64; 3],
    /// With `[shared_limits]`: Redis reached in the last round, rounds ok and failed, and
    /// each shared limit's requests decided on this box alone.
    shared: Option<SharedScrape>,
    /// With `[acme]`: each served certificate's expiry, and orders that succeeded and failed.
    acme: Option<AcmeScrape>,
    /// Certificates with an OCSP answer stapled, and fetches that succeeded and failed.
    ocsp: (u64, [u64; 2]),
}

/// (name, expiry) of each certificate ACME serves, and its orders (ok, failed).
type AcmeScrape = (Vec<(String, u64)>, [u64; 2]);

#[derive(Debug)]
struct SharedScrape {
    up: bool,
    rounds: [u64; 2],
    local_only: Vec<(String, u64)>,
}

/// A worker's own figures.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WorkerSnap {
    pub(crate) open: u64,
    pub(crate) parked: u64,
    pub(crate) accepted: u64,
    pub(crate) proxy_header_failures: u64,
    pub(crate) recv_ring_empty: u64,
    pub(crate) requests: u64,
    pub(crate) dns_lookups: u64,
    pub(crate) dns_failures: u64,
    pub(crate) fresh: crate::buf::Fresh,
}

type Labels = Vec<(&'static str, Cow<'static, str>)>;

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|&(k, v)| (k, Cow::Owned(v.to_string())))
        .collect()
}

/// A metric family written by hand from owned values.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, Histogram)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        m.encode_family(&labels)?.encode_histogram::<Labels>(
            h.sum(),
            h.count(),
            &h.buckets(),
            None,
        )?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.tally;
        let classes = |labels: Labels, c: &[u64; 6]| {
            c.iter()
                .enumerate()
                .filter(|&(_, &n)| n > 0)
                .map(move |(i, &n)| {
                    let mut l = labels.clone();
                    l.push(("code", Cow::Borrowed(class_label(i))));
                    (l, counter(n))
                })
                .collect::<Vec<_>>()
        };
        let mut listeners: Vec<_> = t.listeners.iter().collect();
        listeners.sort_by_key(|(a, _)| **a);
        family(
            &mut e,
            "ringway_requests",
            "Requests by listener and status class (code=\"none\": ended before a status).",
            MetricType::Counter,
            listeners
                .into_iter()
                .flat_map(|(a, c)| classes(l(&[("listener", &a.to_string())]), c)),
        )?;
        let mut routes: Vec<_> = t.routes.iter().collect();
        routes.sort_by(|a, b| a.0.cmp(b.0));
        family(
            &mut e,
            "ringway_route_requests",
            "Requests by route and status class.",
            MetricType::Counter,
            routes
                .into_iter()
                .flat_map(|(r, c)| classes(l(&[("route", r)]), c)),
        )?;
        let mut servers: Vec<_> = t.server_tallies().collect();
        servers.sort_by(|a, b| a.0.cmp(&b.0));
        let server =
            |(g, a): &(&str, std::net::SocketAddr)| l(&[("group", g), ("server", &a.to_string())]);
        family(
            &mut e,
            "ringway_upstream_responses",
            "Responses from upstream servers by status class.",
            MetricType::Counter,
            servers
                .iter()
                .flat_map(|(k, s)| classes(server(k), &s.classes)),
        )?;
        family(
            &mut e,
            "ringway_upstream_failures",
            "Upstream attempts that failed before a response (refused, timed out, reset, invalid).",
            MetricType::Counter,
            servers
                .iter()
                .map(|(k, s)| (server(k), counter(s.failures))),
        )?;
        family(
            &mut e,
            "ringway_upstream_connections",
            "Requests sent upstream by connection: new, or reused from the pool.",
            MetricType::Counter,
            servers.iter().flat_map(|(k, s)| {
                [("new", s.new_connections), ("reused", s.reused_connections)].map(|(how, n)| {
                    let mut labels = server(k);
                    labels.push(("connection", Cow::Borrowed(how)));
                    (labels, counter(n))
                })
            }),
        )?;
        histogram(
            &mut e,
            "ringway_upstream_connect_duration_seconds",
            "From picking a server to a connection ready to send on (pooled: at once).",
            servers.iter().map(|(k, s)| (server(k), s.connect)),
        )?;
        histogram(
            &mut e,
            "ringway_upstream_header_duration_seconds",
            "From picking a server to its response head.",
            servers.iter().map(|(k, s)| (server(k), s.header)),
        )?;
        histogram(
            &mut e,
            "ringway_request_duration_seconds",
            "From the first byte of a request to the end of its exchange.",
            [(Labels::new(), t.request_time)],
        )?;
        family(
            &mut e,
            "ringway_received_bytes",
            "Bytes of request heads and bodies received from clients.",
            MetricType::Counter,
            [(Labels::new(), counter(t.bytes_in))],
        )?;
        family(
            &mut e,
            "ringway_sent_bytes",
            "Bytes of response bodies sent to clients.",
            MetricType::Counter,
            [(Labels::new(), counter(t.bytes_out))],
        )?;
        family(
            &mut e,
            "ringway_retries",
            "Upstream attempts beyond the first.",
            MetricType::Counter,
            [(Labels::new(), counter(t.retries))],
        )?;
        family(
            &mut e,
            "ringway_upstream_server_up",
            "Whether a configured server takes requests (1), with its state as a label.",
            MetricType::Gauge,
            self.servers.iter().map(|(g, a, state, _)| {
                (
                    l(&[("group", g), ("server", a), ("state", state)]),
                    gauge(u64::from(matches!(*state, "up"))),
                )
            }),
        )?;
        family(
            &mut e,
            "ringway_upstream_in_flight",
            "Requests in flight to a configured server.",
            MetricType::Gauge,
            self.servers
                .iter()
                .map(|(g, a, _, n)| (l(&[("group", g), ("server", a)]), gauge(*n))),
        )?;
        let per_worker = |f: fn(&WorkerSnap) -> u64| {
            self.workers
                .iter()
                .enumerate()
                .map(move |(i, w)| (l(&[("worker", &i.to_string())]), f(w)))
                .collect::<Vec<_>>()
        };
        family(
            &mut e,
            "ringway_worker_requests",
            "Requests ended per worker (how evenly the kernel spreads connections).",
            MetricType::Counter,
            per_worker(|w| w.requests)
                .into_iter()
                .map(|(l, n)| (l, counter(n))),
        )?;
        family(
            &mut e,
            "ringway_connections_open",
            "Client connections open per worker.",
            MetricType::Gauge,
            per_worker(|w| w.open)
                .into_iter()
                .map(|(l, n)| (l, gauge(n))),
        )?;
        family(
            &mut e,
            "ringway_connections_parked",
            "Client connections parked per worker: quiet keep-alive connections that hold only their socket (timeouts.park).",
            MetricType::Gauge,
            per_worker(|w| w.parked)
                .into_iter()
                .map(|(l, n)| (l, gauge(n))),
        )?;
        family(
            &mut e,
            "ringway_connections_accepted",
            "Client connections accepted per worker.",
            MetricType::Counter,
            per_worker(|w| w.accepted)
                .into_iter()
                .map(|(l, n)| (l, counter(n))),
        )?;
        family(
            &mut e,
            "ringway_buffers_allocated",
            "Buffers a worker allocated because none of its spares was free (it keeps 64 of each \
             kind): head buffers (16 KiB, one per exchange reading or writing a head) and relay \
             buffers (128 KiB, one per body whose bytes are in flight).",
            MetricType::Counter,
            self.workers.iter().enumerate().flat_map(|(i, w)| {
                let i = i.to_string();
                [("head", w.fresh.heads), ("relay", w.fresh.relays)]
                    .map(|(k, n)| (l(&[("worker", &i), ("kind", k)]), counter(n)))
            }),
        )?;
        let tls = &self.tls;
        family(
            &mut e,
            "ringway_tls_handshakes",
            "TLS handshakes on TLS listeners: full, resumed, failed.",
            MetricType::Counter,
            [
                ("full", tls.handshakes.saturating_sub(tls.resumed)),
                ("resumed", tls.resumed),
                ("failed", tls.failed),
            ]
            .map(|(r, n)| (l(&[("result", r)]), counter(n))),
        )?;
        family(
            &mut e,
            "ringway_cache_requests",
            "Requests on caching routes by the cache's verdict.",
            MetricType::Counter,
            CACHE_LABELS
                .iter()
                .zip(t.cache)
                .map(|(c, n)| (l(&[("result", c)]), counter(n))),
        )?;
        let c = &self.cache;
        for (name, help, v) in [
            ("ringway_cache_entries", "Responses stored now.", c.entries),
            ("ringway_cache_bytes", "Bytes stored now.", c.bytes),
            (
                "ringway_cache_bodies_by_reference",
                "Stored bodies held in pages of their own, which hits send without copying.",
                crate::pages::placed() as u64,
            ),
        ] {
            family(
                &mut e,
                name,
                help,
                MetricType::Gauge,
                [(Labels::new(), gauge(v))],
            )?;
        }
        for (name, help, v) in [
            ("ringway_cache_stores", "Responses stored.", c.stores),
            (
                "ringway_cache_evictions",
                "Responses evicted to make room.",
                c.evictions,
            ),
            (
                "ringway_cache_invalidations",
                "Responses invalidated (unsafe methods, purges).",
                c.invalidations,
            ),
            (
                "ringway_cache_fill_waits",
                "Lookups that waited for another request's fetch of the same key, on any worker (request coalescing).",
                c.waits,
            ),
        ] {
            family(
                &mut e,
                name,
                help,
                MetricType::Counter,
                [(Labels::new(), counter(v))],
            )?;
        }
        let mut denials: Vec<_> = t.denials.iter().collect();
        denials.sort();
        family(
            &mut e,
            "ringway_forward_denials",
            "Forward-proxy requests refused, by reason.",
            MetricType::Counter,
            denials
                .into_iter()
                .map(|(r, n)| (l(&[("reason", r)]), counter(*n))),
        )?;
        family(
            &mut e,
            "ringway_connections_refused",
            "Client connections refused at accept by a connection limit, by which.",
            MetricType::Counter,
            crate::gate::OVER_LABELS
                .iter()
                .zip(&self.refused)
                .map(|(r, n)| (l(&[("limit", r)]), counter(*n))),
        )?;
        let mut limited: Vec<_> = t.limited.iter().collect();
        limited.sort();
        family(
            &mut e,
            "ringway_rate_limited",
            "Requests refused by a rate limit, by its name.",
            MetricType::Counter,
            limited
                .into_iter()
                .map(|(r, n)| (l(&[("limit", r)]), counter(*n))),
        )?;
        if let Some(sh) = &self.shared {
            family(
                &mut e,
                "ringway_shared_limits_up",
                "Whether the last sync of the shared rate limits reached Redis (0: each box limits alone).",
                MetricType::Gauge,
                [(Labels::new(), gauge(u64::from(sh.up)))],
            )?;
            family(
                &mut e,
                "ringway_shared_limits_syncs",
                "Syncs of the shared rate limits with Redis: answered, or failed (a timeout, a refused connection, an error).",
                MetricType::Counter,
                [("ok", sh.rounds[0]), ("failed", sh.rounds[1])]
                    .map(|(r, n)| (l(&[("result", r)]), counter(n))),
            )?;
            family(
                &mut e,
                "ringway_rate_limit_local_only",
                "Requests a shared rate limit admitted on this box's count alone, Redis being unreachable.",
                MetricType::Counter,
                sh.local_only
                    .iter()
                    .map(|(n, v)| (l(&[("limit", n)]), counter(*v))),
            )?;
        }
        family(
            &mut e,
            "ringway_proxy_protocol_errors",
            "Connections closed for a missing or malformed PROXY protocol header (listeners with proxy_protocol).",
            MetricType::Counter,
            [(
                Labels::new(),
                counter(self.workers.iter().map(|w| w.proxy_header_failures).sum()),
            )],
        )?;
        family(
            &mut e,
            "ringway_recv_ring_exhausted",
            "Keep-alive client reads that found the worker's ring of provided buffers empty and read with a receive of their own.",
            MetricType::Counter,
            [(
                Labels::new(),
                counter(self.workers.iter().map(|w| w.recv_ring_empty).sum()),
            )],
        )?;
        let mut rules: Vec<_> = t.rules.iter().collect();
        rules.sort();
        family(
            &mut e,
            "ringway_rule_matches",
            "Requests a [[rules]] entry decided, by its name and action.",
            MetricType::Counter,
            rules
                .into_iter()
                .map(|((r, a), n)| (l(&[("rule", r), ("action", a)]), counter(*n))),
        )?;
        let (lookups, failures) = self.workers.iter().fold(self.names, |(a, b), w| {
            (a + w.dns_lookups, b + w.dns_failures)
        });
        family(
            &mut e,
            "ringway_dns_lookups",
            "Names looked up: the forward proxy's destinations (answers from its cache not counted) and upstream names.",
            MetricType::Counter,
            [(Labels::new(), counter(lookups))],
        )?;
        family(
            &mut e,
            "ringway_dns_failures",
            "Lookups that found no address (no such name, timeout, refused).",
            MetricType::Counter,
            [(Labels::new(), counter(failures))],
        )?;
        family(
            &mut e,
            "ringway_access_log_lines",
            "Access log lines: written, or dropped when the writer was behind or the write failed.",
            MetricType::Counter,
            [("written", self.log_written), ("dropped", self.log_dropped)]
                .map(|(r, n)| (l(&[("result", r)]), counter(n))),
        )?;
        family(
            &mut e,
            "ringway_config_reloads",
            "Reloads: applied, or rejected (the running configuration kept).",
            MetricType::Counter,
            [("ok", self.reloads_ok), ("rejected", self.reloads_failed)]
                .map(|(r, n)| (l(&[("result", r)]), counter(n))),
        )?;
        family(
            &mut e,
            "ringway_config_version",
            "The configuration version running: its number in the state directory, else 1 at start and +1 per applied reload.",
            MetricType::Gauge,
            [(Labels::new(), gauge(self.version))],
        )?;
        family(
            &mut e,
            "ringway_start_time_seconds",
            "When the process started, in seconds since the Unix epoch.",
            MetricType::Gauge,
            [(Labels::new(), ConstGauge::new(self.started))],
        )?;
        if let Some((expiries, orders)) = &self.acme {
            family(
                &mut e,
                "ringway_acme_certificate_expiry_seconds",
                "When each certificate ringway obtained by ACME expires (Unix time).",
                MetricType::Gauge,
                expiries.iter().map(|(n, t)| (l(&[("name", n)]), gauge(*t))),
            )?;
            family(
                &mut e,
                "ringway_acme_orders",
                "ACME orders that gave a certificate (ok) and that failed at every CA (failed).",
                MetricType::Counter,
                [("ok", orders[0]), ("failed", orders[1])]
                    .into_iter()
                    .map(|(r, n)| (l(&[("result", r)]), counter(n))),
            )?;
        }
        let (stapled, fetches) = self.ocsp;
        if stapled > 0 || fetches != [0, 0] {
            family(
                &mut e,
                "ringway_ocsp_stapled_certificates",
                "Configured certificates with a current OCSP answer stapled.",
                MetricType::Gauge,
                [(Labels::new(), gauge(stapled))],
            )?;
            family(
                &mut e,
                "ringway_ocsp_fetches",
                "OCSP answers fetched and stapled (ok), and fetches that failed or were refused.",
                MetricType::Counter,
                [("ok", fetches[0]), ("failed", fetches[1])]
                    .into_iter()
                    .map(|(r, n)| (l(&[("result", r)]), counter(n))),
            )?;
        }
        family(
            &mut e,
            "ringway_build_info",
            "The version of ringway running (always 1).",
            MetricType::Gauge,
            [(l(&[("version", env!("CARGO_PKG_VERSION"))]), gauge(1))],
        )?;
        Ok(())
    }
}

impl Status {
    /// The metrics page.
    pub(crate) fn metrics(&self) -> String {
        let tally = self.tally();
        let workers = self
            .worker_snaps
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default();
        let tls = self.tls_sum();
        let cache = self.cache_sum();
        let mut servers = Vec::new();
        let mut shared = None;
        let mut acme = None;
        if let Ok(cur) = self.current.lock() {
            let (cfg, board) = (&cur.0, &cur.1);
            if cfg.acme.is_some() {
                use std::sync::atomic::Ordering::Relaxed;
                let o = &self.acme.orders;
                acme = Some((
                    self.acme.expiries(),
                    [o[0].load(Relaxed), o[1].load(Relaxed)],
                ));
            }
            if cfg.shared_limits.is_some() {
                use std::sync::atomic::Ordering::Relaxed;
                let c = &self.shared_limits;
                shared = Some(SharedScrape {
                    up: c.up.load(Relaxed),
                    rounds: [c.rounds_ok.load(Relaxed), c.rounds_failed.load(Relaxed)],
                    local_only: crate::limitsync::local_only(&cfg.rate_limits),
                });
            }
            let snaps = self.workers.lock().map(|w| w.clone()).unwrap_or_default();
            for (g, u) in cfg.upstreams.iter().enumerate() {
                for (s, server) in u.servers.iter().enumerate() {
                    let mut sum = ServerSnap::default();
                    for w in &snaps {
                        if let Some(x) = w.get(g).and_then(|gs| gs.get(s)) {
                            sum.in_flight += x.in_flight;
                            sum.ejected |= x.ejected;
                        }
                    }
                    let state =
                        ServerState::of(server.down, board.is_up(g, s), sum.ejected, sum.in_flight)
                            .label();
                    servers.push((
                        u.name.clone(),
                        server.addr.to_string(),
                        state,
                        sum.in_flight as u64,
                    ));
                }
            }
        }
        use std::sync::atomic::Ordering::Relaxed;
        let reloads_ok = self.reloads_ok.load(Relaxed);
        let scrape = Scrape {
            tally,
            workers,
            tls,
            cache,
            servers,
            log_written: self.log.written.load(Relaxed),
            log_dropped: self.log.dropped.load(Relaxed),
            reloads_ok,
            reloads_failed: self.reloads_failed.load(Relaxed),
            version: match self.version.load(Relaxed) {
                0 => 1 + reloads_ok,
                n => n,
            },
            started: self.started,
            acme,
            ocsp: (
                self.ocsp.stapled(),
                [
                    self.ocsp.fetches[0].load(Relaxed),
                    self.ocsp.fetches[1].load(Relaxed),
                ],
            ),
            refused: self.gate.refused.each_ref().map(|n| n.load(Relaxed)),
            shared,
            names: self
                .name_lookups
                .lock()
                .map(|n| (n.0.load(Relaxed), n.1.load(Relaxed)))
                .unwrap_or_default(),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// The content type of [`Status::metrics`].
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
