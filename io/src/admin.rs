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

use crate::counters::{ServerSnap, Status, TlsCounts};
use ringway_core::health::ServerState;
use ringway_core::proxy::RequestCounts;

impl Status {
    /// The status document.
    pub(crate) fn json(&self) -> String {
        let (cfg, board) = match self.current.lock() {
            Ok(c) => (c.0.clone(), c.1.clone()),
            Err(_) => return "{}".into(),
        };
        let workers = self.workers.lock().map(|w| w.clone()).unwrap_or_default();
        let mut out = String::from("{\"upstreams\":[");
        for (g, u) in cfg.upstreams.iter().enumerate() {
            if g > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "{{\"name\":{},\"balance\":{},\"servers\":[",
                quote(&u.name),
                quote(&balance_name(&u.balance))
            ));
            for (s, server) in u.servers.iter().enumerate() {
                let mut sum = ServerSnap::default();
                for w in &workers {
                    if let Some(x) = w.get(g).and_then(|gs| gs.get(s)) {
                        sum.in_flight += x.in_flight;
                        sum.ejected |= x.ejected;
                        sum.failures += x.failures;
                    }
                }
                let state =
                    ServerState::of(server.down, board.is_up(g, s), sum.ejected, sum.in_flight)
                        .label();
                if s > 0 {
                    out.push(',');
                }
                out.push_str(&format!(
                    "{{\"addr\":\"{}\",\"state\":\"{state}\",\"weight\":{},\"backup\":{},\"in_flight\":{},\"failures\":{}}}",
                    server.addr, server.weight, server.backup, sum.in_flight, sum.failures
                ));
            }
            out.push_str("]}");
        }
        let tls = self.tls.lock().map(|t| t.clone()).unwrap_or_default();
        let sum = tls.iter().fold(TlsCounts::default(), |a, t| TlsCounts {
            handshakes: a.handshakes + t.handshakes,
            resumed: a.resumed + t.resumed,
            failed: a.failed + t.failed,
            plain_http: a.plain_http + t.plain_http,
        });
        let mut req = RequestCounts::default();
        for r in self.requests.lock().map(|r| r.clone()).unwrap_or_default() {
            req.add(&r);
        }
        let c = req.by_class;
        out.push_str(&format!(
            "],\"requests\":{{\"total\":{},\"2xx\":{},\"3xx\":{},\"4xx\":{},\"5xx\":{},\"no_response\":{},\"client_errors\":{},\"upstream_errors\":{},\"retries\":{}}}",
            req.total, c[2], c[3], c[4], c[5], c[0], req.client_errors, req.upstream_errors, req.retries
        ));
        let mut cache = ringway_core::cache::Stats::default();
        for c in self.cache.lock().map(|c| c.clone()).unwrap_or_default() {
            cache.entries += c.entries;
            cache.bytes += c.bytes;
            cache.hits += c.hits;
            cache.misses += c.misses;
            cache.stores += c.stores;
            cache.evictions += c.evictions;
            cache.invalidations += c.invalidations;
            cache.collecting += c.collecting;
        }
        out.push_str(&format!(
            ",\"cache\":{{\"entries\":{},\"bytes\":{},\"collecting\":{},\"hits\":{},\"misses\":{},\"stores\":{},\"evictions\":{},\"invalidations\":{}}}",
            cache.entries, cache.bytes, cache.collecting, cache.hits, cache.misses, cache.stores, cache.evictions, cache.invalidations
        ));
        {
            use std::sync::atomic::Ordering::Relaxed;
            let ok = self.reloads_ok.load(Relaxed);
            let version = match self.version.load(Relaxed) {
                0 => 1 + ok,
                n => n,
            };
            out.push_str(&format!(
                ",\"config\":{{\"version\":{version},\"reloads\":{ok},\"rejected\":{}}}",
                self.reloads_failed.load(Relaxed)
            ));
        }
        out.push_str(&format!(
            ",\"access_log\":{{\"written\":{},\"dropped\":{}}}",
            self.log.written.load(std::sync::atomic::Ordering::Relaxed),
            self.log.dropped.load(std::sync::atomic::Ordering::Relaxed)
        ));
        out.push_str(&format!(
            ",\"tls\":{{\"handshakes\":{},\"resumed\":{},\"failed\":{},\"plain_http\":{}}}}}\n",
            sum.handshakes, sum.resumed, sum.failed, sum.plain_http
        ));
        out
    }
}

/// `POST /cache/purge?url=URL` removes the responses stored for URL from every worker's shard
/// (at once: its invalidation counter moves; the memory is freed within the workers' next
/// tick); `?prefix=URL` every key that starts with it. Answers with how many were removed.
fn purge(status: &Status, target: &[u8]) -> (u16, String, &'static str) {
    let query = &target[b"/cache/purge?".len()..];
    let (prefix, raw) = if let Some(v) = query.strip_prefix(b"url=") {
        (false, v)
    } else if let Some(v) = query.strip_prefix(b"prefix=") {
        (true, v)
    } else {
        return (
            400,
            "expected ?url=URL or ?prefix=URL\n".into(),
            "text/plain",
        );
    };
    let url = crate::cache::percent_decode(raw);
    let Some(key) = ringway_core::cache::policy::key_of_url(&url, prefix) else {
        return (
            400,
            "expected an http:// or https:// URL with a host\n".into(),
            "text/plain",
        );
    };
    if !prefix {
        status.epochs.bump(&key);
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut asked = 0;
    for w in &status.purges {
        let p = crate::cache::Purge {
            target: key.clone(),
            prefix,
            reply: tx.clone(),
        };
        if w.send(p).is_ok() {
            asked += 1;
        }
    }
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
    let body = format!(
        "{{\"purged\":{purged},\"workers\":{answered},\"key\":{}}}\n",
        quote(&String::from_utf8_lossy(&key))
    );
    (200, body, "application/json")
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
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
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
    let (code, body, ctype) = match (method, path) {
        (b"GET" | b"HEAD", b"/" | b"/status") => (200, status.json(), "application/json"),
        (b"GET" | b"HEAD", b"/metrics") => (200, status.metrics(), crate::metrics::CONTENT_TYPE),
        (b"POST" | b"PURGE", p) if p.starts_with(b"/cache/purge?") => purge(status, p),
        (b"GET" | b"HEAD", _) => (
            404,
            "not found: try GET /status\n".to_string(),
            "text/plain",
        ),
        _ => (
            405,
            "GET /status, or POST /cache/purge?url=URL (or ?prefix=URL)\n".to_string(),
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
