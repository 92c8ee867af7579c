//! The admin listener: `GET /status` (or `/`) returns each upstream group's servers with their
//! state, in-flight requests and recent failures, and the TLS handshake counters, as JSON. Off unless `[admin] listen` is set,
//! and only ever on a loopback address.
//!
//! It runs on its own thread with blocking sockets, away from the data plane. Workers publish a
//! snapshot of their per-server counters from their watcher task every 50 ms (a short mutex hold
//! off the request path); this thread sums them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringway_core::config::{Balance, HashKey};

use serde_json::{json, Value};

use crate::counters::{ServerSnap, Status, TlsCounts};
use ringway_core::health::ServerState;
use ringway_core::metrics::{Histogram, Tally};
use ringway_core::proxy::RequestCounts;

impl Status {
    /// Every worker's tally, summed.
    pub(crate) fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for t in self.tallies.lock().map(|t| t.clone()).unwrap_or_default() {
            tally.add(&t);
        }
        tally
    }

    /// Every worker's TLS counters, summed.
    pub(crate) fn tls_sum(&self) -> TlsCounts {
        let tls = self.tls.lock().map(|t| t.clone()).unwrap_or_default();
        tls.iter().fold(TlsCounts::default(), |a, t| TlsCounts {
            handshakes: a.handshakes + t.handshakes,
            resumed: a.resumed + t.resumed,
            failed: a.failed + t.failed,
            plain_http: a.plain_http + t.plain_http,
        })
    }

    /// Every worker's cache shard's figures, summed.
    pub(crate) fn cache_sum(&self) -> ringway_core::cache::Stats {
        let mut cache = ringway_core::cache::Stats::default();
        for c in self.cache.lock().map(|c| c.clone()).unwrap_or_default() {
            cache.entries += c.entries;
            cache.bytes += c.bytes;
            cache.hits += c.hits;
            cache.misses += c.misses;
            cache.stores += c.stores;
            cache.evictions += c.evictions;
            cache.invalidations += c.invalidations;
            cache.waits += c.waits;
            cache.collecting += c.collecting;
        }
        cache
    }

    /// The status document (what the page shows, refreshed from it).
    pub(crate) fn json(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let (cfg, board) = match self.current.lock() {
            Ok(c) => (c.0.clone(), c.1.clone()),
            Err(_) => return "{}".into(),
        };
        let workers = self.workers.lock().map(|w| w.clone()).unwrap_or_default();
        let tally = self.tally();
        let classes = |c: &[u64; 6]| json!({"2xx": c[2], "3xx": c[3], "4xx": c[4], "5xx": c[5], "none": c[0]});
        let ms = |h: &Histogram| {
            let q = |p| h.quantile(p).map(|s| (s * 1e4).round() / 10.0);
            json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)})
        };
        let upstreams: Vec<Value> = cfg
            .upstreams
            .iter()
            .enumerate()
            .map(|(g, u)| {
                let servers: Vec<Value> = u
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(s, server)| {
                        let mut sum = ServerSnap::default();
                        for w in &workers {
                            if let Some(x) = w.get(g).and_then(|gs| gs.get(s)) {
                                sum.in_flight += x.in_flight;
                                sum.ejected |= x.ejected;
                                sum.failures += x.failures;
                            }
                        }
                        let state = ServerState::of(
                            server.down,
                            board.is_up(g, s),
                            sum.ejected,
                            sum.in_flight,
                        )
                        .label();
                        let t = tally
                            .servers
                            .get(u.name.as_str())
                            .and_then(|m| m.get(&server.addr))
                            .copied()
                            .unwrap_or_default();
                        let mut v = json!({
                            "addr": server.addr.to_string(),
                            "state": state,
                            "weight": server.weight,
                            "backup": server.backup,
                            "in_flight": sum.in_flight,
                            "failures": sum.failures,
                            "drained": board.is_drained(g, s),
                            "responses": classes(&t.classes),
                            "latency_ms": ms(&t.header),
                        });
                        if let Some(n) = &server.name {
                            v["name"] = json!(&**n);
                        }
                        v
                    })
                    .collect();
                json!({"name": u.name, "balance": balance_name(&u.balance), "servers": servers})
            })
            .collect();
        let listeners: Vec<Value> = cfg
            .server
            .listen
            .iter()
            .map(|l| {
                let c = tally.listeners.get(&l.addr).copied().unwrap_or_default();
                json!({"addr": l.addr.to_string(), "kind": listener_kind(l), "requests": classes(&c)})
            })
            .collect();
        let routes: Vec<Value> = cfg
            .routes
            .iter()
            .map(|r| {
                let c = tally
                    .routes
                    .get(r.name.as_str())
                    .copied()
                    .unwrap_or_default();
                json!({"name": r.name, "requests": classes(&c)})
            })
            .collect();
        let tls = self.tls_sum();
        let mut req = RequestCounts::default();
        for r in self.requests.lock().map(|r| r.clone()).unwrap_or_default() {
            req.add(&r);
        }
        let c = req.by_class;
        let cache = self.cache_sum();
        let ok = self.reloads_ok.load(Relaxed);
        let version = match self.version.load(Relaxed) {
            0 => 1 + ok,
            n => n,
        };
        let uptime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - self.started;
        let doc = json!({
            "upstreams": upstreams,
            "listeners": listeners,
            "routes": routes,
            "requests": {
                "total": req.total, "2xx": c[2], "3xx": c[3], "4xx": c[4], "5xx": c[5],
                "no_response": c[0], "client_errors": req.client_errors,
                "upstream_errors": req.upstream_errors, "retries": req.retries,
            },
            "latency_ms": ms(&tally.request_time),
            "cache": {
                "entries": cache.entries, "bytes": cache.bytes, "collecting": cache.collecting,
                "hits": cache.hits, "misses": cache.misses, "stores": cache.stores,
                "evictions": cache.evictions, "invalidations": cache.invalidations,
                "waits": cache.waits, "table_buckets": self.table.buckets(),
            },
            "config": {"version": version, "reloads": ok, "rejected": self.reloads_failed.load(Relaxed)},
            "access_log": {
                "written": self.log.written.load(Relaxed),
                "dropped": self.log.dropped.load(Relaxed),
            },
            "tls": {
                "handshakes": tls.handshakes, "resumed": tls.resumed, "failed": tls.failed,
                "plain_http": tls.plain_http,
                "acme": self.acme.expiries().iter().map(|(name, t)| json!({
                    "name": name,
                    "expires": ringway_core::http::date::utc_text(*t),
                })).collect::<Vec<_>>(),
                "acme_orders": {
                    "ok": self.acme.orders[0].load(Relaxed),
                    "failed": self.acme.orders[1].load(Relaxed),
                },
                "ocsp_stapled": self.ocsp.stapled(),
            },
            "ringway": env!("CARGO_PKG_VERSION"),
            "uptime": uptime.max(0.0).round() as u64,
        });
        let mut out = doc.to_string();
        out.push('\n');
        out
    }

    /// `POST /servers/drain?group=G&server=ADDR` (and `undrain`): the server takes no new
    /// request (those in flight finish), on every worker at once, until undrained; it stays
    /// drained across reloads.
    fn drain(&self, target: &[u8], drained: bool) -> (u16, String, &'static str) {
        let query = target.splitn(2, |&b| b == b'?').nth(1).unwrap_or_default();
        let mut group = None;
        let mut server = None;
        for pair in query.split(|&b| b == b'&') {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], crate::cache::percent_decode(&pair[i + 1..])),
                None => continue,
            };
            match k {
                b"group" => group = String::from_utf8(v).ok(),
                b"server" => server = String::from_utf8(v).ok().and_then(|s| s.parse().ok()),
                _ => {}
            }
        }
        let (Some(group), Some(server)) = (group, server) else {
            return (
                400,
                "expected ?group=NAME&server=IP:PORT\n".into(),
                "text/plain",
            );
        };
        let found = match self.current.lock() {
            Ok(c) => {
                let (cfg, board) = (&c.0, &c.1);
                let at = cfg
                    .upstreams
                    .iter()
                    .position(|u| u.name == group)
                    .and_then(|g| {
                        let s = cfg.upstreams[g]
                            .servers
                            .iter()
                            .position(|s| s.addr == server)?;
                        Some((g, s))
                    });
                if let Some((g, s)) = at {
                    board.set_drained(g, s, drained);
                }
                at.is_some()
            }
            Err(_) => false,
        };
        if !found {
            return (
                404,
                format!("no server {server} in a group named {group:?}\n"),
                "text/plain",
            );
        }
        if let Ok(mut d) = self.drained.lock() {
            if drained {
                d.insert((group.clone(), server));
            } else {
                d.remove(&(group.clone(), server));
            }
        }
        log::info!(
            "admin: {group} {server} {}",
            if drained { "drained" } else { "undrained" }
        );
        let body = json!({"group": group, "server": server.to_string(), "drained": drained});
        (200, format!("{body}\n"), "application/json")
    }
}

/// `POST /cache/purge?url=URL` removes the responses stored for URL from every worker's shard
/// (at once: its invalidation counter moves; the memory is freed within the workers' next
/// tick); `?prefix=URL` every key that starts with it; `?tag=TAG` every response tagged TAG
/// (`Cache-Tag`, `Surrogate-Key`). `POST /cache/soft-purge?…` (the same three) marks them
/// stale instead. Answers, once every worker has done it, with how many there were.
fn purge(status: &Status, target: &[u8]) -> (u16, String, &'static str) {
    use crate::cache::PurgeBy;
    let soft = target.starts_with(b"/cache/soft-purge?");
    let query = match soft {
        true => &target[b"/cache/soft-purge?".len()..],
        false => &target[b"/cache/purge?".len()..],
    };
    let (what, raw) = if let Some(v) = query.strip_prefix(b"url=") {
        (PurgeBy::Url, v)
    } else if let Some(v) = query.strip_prefix(b"prefix=") {
        (PurgeBy::Prefix, v)
    } else if let Some(v) = query.strip_prefix(b"tag=") {
        (PurgeBy::Tag, v)
    } else {
        return (
            400,
            "expected ?url=URL, ?prefix=URL or ?tag=TAG\n".into(),
            "text/plain",
        );
    };
    let decoded = crate::cache::percent_decode(raw);
    let key = match what {
        PurgeBy::Tag if decoded.is_empty() || decoded.len() > ringway_core::cache::MAX_TAG_LEN => {
            return (400, "expected a tag\n".into(), "text/plain");
        }
        PurgeBy::Tag => decoded,
        _ => match ringway_core::cache::policy::key_of_url(&decoded, what == PurgeBy::Prefix) {
            Some(key) => key,
            None => {
                return (
                    400,
                    "expected an http:// or https:// URL with a host\n".into(),
                    "text/plain",
                )
            }
        },
    };
    if what == PurgeBy::Url && !soft {
        status.table.epochs.bump(&key);
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut asked = 0;
    for w in &status.mail {
        let p = crate::cache::Purge {
            target: key.clone(),
            what,
            soft,
            reply: tx.clone(),
        };
        if w.send(crate::cache::Mail::Purge(p)).is_ok() {
            asked += 1;
        }
    }
    status.wake_workers();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut purged = 0;
    let mut answered = 0;
    while answered < asked {
        match rx.recv_deadline(deadline) {
            Ok(n) => {
                purged += n;
                answered += 1;
            }
            Err(_) => break,
        }
    }
    let (name, mode) = match (what, soft) {
        (PurgeBy::Tag, s) => ("tag", if s { "soft" } else { "hard" }),
        (_, s) => ("key", if s { "soft" } else { "hard" }),
    };
    let body = format!(
        "{{\"purged\":{purged},\"workers\":{answered},\"{name}\":{},\"mode\":\"{mode}\"}}\n",
        quote(&String::from_utf8_lossy(&key))
    );
    (200, body, "application/json")
}

/// What a listener serves, in a word or two.
fn listener_kind(l: &ringway_core::config::Listen) -> &'static str {
    use ringway_core::config::{Protocol, Transport};
    match (l.transport, l.protocol) {
        (Transport::Plain, Protocol::Http) => "http",
        (Transport::Tls, Protocol::Http) => "https",
        (_, Protocol::RedirectHttps) => "redirect to https",
        (Transport::Plain, Protocol::ForwardHttp) => "forward proxy",
        (Transport::Tls, Protocol::ForwardHttp) => "forward proxy (tls)",
        (_, Protocol::Socks5) => "socks5",
    }
}

fn balance_name(b: &Balance) -> String {
    match b {
        Balance::RoundRobin => "round-robin".into(),
        Balance::LeastConn => "least-conn".into(),
        Balance::IpHash => "ip-hash".into(),
        Balance::Hash { key, .. } => match key {
            HashKey::ClientIp => "hash:ip".into(),
            HashKey::Path => "hash:path".into(),
            HashKey::Header(h) => format!("hash:header:{h}"),
            HashKey::Cookie(c) => format!("hash:cookie:{c}"),
        },
    }
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if (c as u32) < 0x20 => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The status page: one self-contained HTML file (no external assets) that refreshes itself
/// from `/status`.
const PAGE: &str = include_str!("admin_page.html");

/// Compares without stopping at the first difference (the token is a secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the admin listener until `shutdown`.
pub(crate) fn run(listener: TcpListener, status: Arc<Status>, shutdown: Arc<AtomicBool>) {
    let _ = listener.set_nonblocking(true);
    while !shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                // A thread per connection (at most ADMIN_CONNS at once, the rest closed), each
                // bounded by a deadline for its whole head: a client dripping bytes neither
                // holds the listener nor keeps its thread.
                if BUSY.fetch_add(1, Ordering::AcqRel) >= ADMIN_CONNS {
                    BUSY.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let status = status.clone();
                let spawned = std::thread::Builder::new()
                    .name("ringway-admin-conn".into())
                    .spawn(move || {
                        answer(s, &status);
                        BUSY.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    BUSY.fetch_sub(1, Ordering::AcqRel);
                }
            }
            // Until a connection waits (answered at once) or the next shutdown check.
            Err(_) => {
                use std::os::fd::AsFd;
                crate::sys::wait_readable(listener.as_fd(), Duration::from_millis(50));
            }
        }
    }
}

/// Admin connections served at once.
const ADMIN_CONNS: usize = 16;
/// The most a request head may take to arrive, whole.
const ADMIN_HEAD_DEADLINE: Duration = Duration::from_secs(5);
static BUSY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn answer(mut s: TcpStream, status: &Status) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let deadline = std::time::Instant::now() + ADMIN_HEAD_DEADLINE;
    // Read and parsed with core's scanner and parser, like every other head.
    let limits = ringway_core::http::Limits::default();
    let mut scanner = ringway_core::http::HeadScanner::new();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        match scanner.scan(&head, &limits) {
            Ok(ringway_core::http::Scan::Complete(end)) => break end,
            Ok(ringway_core::http::Scan::Partial) => {}
            Err(_) => return,
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            let _ = s.write_all(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    };
    let mut headers = Vec::new();
    let Ok(req) = ringway_core::http::parse_request(&head[..end], &mut headers, &limits) else {
        return;
    };
    let (method, path) = (req.method_span.get(&head), req.target.get(&head));
    // Actions need the token when one is configured; reading never does.
    let allowed = || match status.token() {
        None => true,
        Some(t) => {
            let want = format!("Bearer {t}");
            ringway_core::http::find_header(&head[..end], &headers, b"authorization")
                .is_some_and(|v| constant_time_eq(v, want.as_bytes()))
        }
    };
    let refused = || {
        (
            401,
            "this action needs Authorization: Bearer TOKEN (admin.token)\n".to_string(),
            "text/plain",
        )
    };
    let (code, body, ctype) = match (method, path) {
        (b"GET" | b"HEAD", b"/") => (200, PAGE.to_string(), "text/html; charset=utf-8"),
        (b"GET" | b"HEAD", b"/status") => (200, status.json(), "application/json"),
        (b"GET" | b"HEAD", b"/metrics") => (200, status.metrics(), crate::metrics::CONTENT_TYPE),
        (b"POST" | b"PURGE", p)
            if p.starts_with(b"/cache/purge?") || p.starts_with(b"/cache/soft-purge?") =>
        {
            if allowed() { purge(status, p) } else { refused() }
        }
        (b"POST", p) if p.starts_with(b"/servers/drain?") || p.starts_with(b"/servers/undrain?") => {
            if allowed() {
                status.drain(p, p.starts_with(b"/servers/drain?"))
            } else {
                refused()
            }
        }
        (b"GET" | b"HEAD", _) => (
            404,
            "not found: try GET / (the page), /status (JSON) or /metrics\n".to_string(),
            "text/plain",
        ),
        _ => (
            405,
            "GET /, /status or /metrics; POST /cache/purge?url=URL (or ?prefix=URL, ?tag=TAG), /cache/soft-purge?…, /servers/drain?group=G&server=ADDR, /servers/undrain?…\n".to_string(),
            "text/plain",
        ),
    };
    use ringway_core::http::answer::{Answer, Content};
    use ringway_core::http::rewrite::ConnectionHeader;
    let content = Content::Bytes {
        content_type: Some(ctype),
        body: body.as_bytes(),
    };
    let mut resp = Vec::with_capacity(body.len() + 128);
    Answer::new(code, content, None).write(ConnectionHeader::Close, method == b"HEAD", &mut resp);
    let _ = s.write_all(&resp);
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
