//! Protection: request-rate limits exact across workers, over real sockets.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// A client connection from `local` (another loopback address is another client).
fn connect_from(local: &str, to: SocketAddr) -> Client {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&local.parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    Client::from_stream(s.into())
}

/// `threads` keep-alive connections from `local` asking as fast as they can for `secs`:
/// (answered 200, answered 429, elapsed, the first refusal).
fn flood(
    to: SocketAddr,
    local: &'static str,
    threads: usize,
    secs: f64,
) -> (usize, usize, Duration, Option<Response>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let refusal = Arc::new(std::sync::Mutex::new(None));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (ok, limited, refusal) = (ok.clone(), limited.clone(), refusal.clone());
            std::thread::spawn(move || {
                let mut c = connect_from(local, to);
                for _ in 0..200_000 {
                    if Instant::now() >= end {
                        break;
                    }
                    c.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
                    match c.response("GET") {
                        Some(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(r) if r.status == 429 => {
                            limited.fetch_add(1, Ordering::Relaxed);
                            refusal.lock().unwrap().get_or_insert(r);
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let first = refusal.lock().unwrap().take();
    (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        start.elapsed(),
        first,
    )
}

fn limited_config(origin: SocketAddr, limits: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\nname = \"main\"\n{limits}"
    )
}

#[test]
fn one_client_over_many_connections_is_held_to_its_rate_across_workers() {
    let origin = Origin::start();
    let p = Proxy::start(&limited_config(
        origin.addr,
        "[[rate_limits]]\nname = \"per-client\"\nrate = \"100/s\"\nburst = 20\n",
    ));
    // Sixteen connections: the kernel spreads them over both workers.
    let (ok, limited, took, refusal) = flood(p.addr, "127.0.0.1:0", 16, 3.0);
    let expected = 21.0 + 100.0 * took.as_secs_f64();
    let ratio = ok as f64 / expected;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "{ok} passed in {took:?}, expected {expected:.0} ({ratio:.3}); {limited} refused"
    );
    eprintln!("{ok} passed, {limited} refused in {took:?}: {ratio:.3} of burst + rate × time");
    assert!(limited > ok, "the client asked far faster than its rate");
    // A refusal says when to come back (whole seconds, rounded up), names the limit, and is
    // counted.
    let r = refusal.expect("refused at some point");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("rate limit per-client"), "{}", r.text());
    let admin = admin_addr(&p);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let m = request(
            admin,
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .text();
        let line = format!("ringway_rate_limited_total{{limit=\"per-client\"}} {limited}");
        if m.contains(&line) {
            break;
        }
        assert!(Instant::now() < end, "{line} not in\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn other_clients_are_served_while_one_floods() {
    let origin = Origin::start();
    let p = Proxy::start(&limited_config(
        origin.addr,
        "[[rate_limits]]\nrate = \"20/s\"\nburst = 5\n",
    ));
    let flooder = std::thread::spawn({
        let to = p.addr;
        move || flood(to, "127.0.0.1:0", 4, 2.0)
    });
    // A well-behaved client from another address, ten requests a second.
    let mut c = connect_from("127.0.0.2:0", p.addr);
    for _ in 0..15 {
        c.send(b"GET /polite HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.response("GET").unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, limited, _, _) = flooder.join().unwrap();
    assert!(limited > 10 * ok, "{ok} passed, {limited} refused");
}

#[test]
fn quick_mode_rate_limit_and_its_metric() {
    let origin = Origin::start();
    let p = Proxy::start_quick(&[
        "--upstream",
        &origin.addr.to_string(),
        "--rate-limit",
        "5/m",
        "--admin",
        "127.0.0.1:0",
    ]);
    let mut c = Client::connect(p.addr);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        statuses.push(c.response("GET").unwrap().status);
    }
    // The rate and a burst of as many: six at once, then refused (keep-alive kept).
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    let out = std::process::Command::new(bin())
        .args(["--upstream", "127.0.0.1:9", "--rate-limit", "0/s"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate-limit \"0/s\": expected"));
}

/// A connection that completed one request (so the proxy has surely accepted and counted it).
fn held(from: &str, to: SocketAddr) -> Client {
    let mut c = connect_from(from, to);
    c.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response("GET").unwrap().status, 200);
    c
}

/// What a new connection gets before sending anything: the bytes until the proxy closes it.
fn refused_with(from: &str, to: SocketAddr) -> String {
    use std::io::Read;
    let mut c = connect_from(from, to);
    let mut got = Vec::new();
    let _ = c.r.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn connections_per_client_are_capped_across_workers() {
    let origin = Origin::start();
    let p = Proxy::start(&limited_config(origin.addr, "").replace(
        "pin = false\n",
        "pin = false\nmax_connections_per_client = 3\n",
    ));
    let open: Vec<Client> = (0..3).map(|_| held("127.0.0.1:0", p.addr)).collect();
    let answer = refused_with("127.0.0.1:0", p.addr);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n") && answer.contains("too many connections"));
    // Another client is not affected.
    let other = held("127.0.0.2:0", p.addr);
    // A connection that ends gives its place back.
    drop(open);
    let end = Instant::now() + Duration::from_secs(5);
    let back = loop {
        let mut c = connect_from("127.0.0.1:0", p.addr);
        c.send(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n");
        match c.response("GET") {
            Some(r) if r.status == 200 => break c,
            _ => {}
        }
        assert!(Instant::now() < end, "the places never came back");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop((back, other));
}

#[test]
fn the_process_maximum_closes_the_rest() {
    let origin = Origin::start();
    let p = Proxy::start(&limited_config(origin.addr, "").replace(
        "pin = false\n",
        "pin = false\nmax_connections = 2\nconnection_refusal = \"close\"\n",
    ));
    let _open: Vec<Client> = (0..2)
        .map(|i| held(if i == 0 { "127.0.0.1:0" } else { "127.0.0.2:0" }, p.addr))
        .collect();
    assert_eq!(
        refused_with("127.0.0.3:0", p.addr),
        "",
        "closed with nothing sent"
    );
    let admin = admin_addr(&p);
    let m = request(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
    .text();
    assert!(
        m.contains("ringway_connections_refused_total{limit=\"process\"} 1"),
        "{m}"
    );
}

#[test]
fn quick_mode_max_conns_per_ip() {
    let origin = Origin::start();
    let p = Proxy::start_quick(&[
        "--upstream",
        &origin.addr.to_string(),
        "--max-conns-per-ip",
        "1",
    ]);
    let _one = held("127.0.0.1:0", p.addr);
    assert!(refused_with("127.0.0.1:0", p.addr).starts_with("HTTP/1.1 503 "));
}

#[test]
fn bodies_over_the_limit_get_413_before_the_upstream_sees_them() {
    use std::io::Write;
    let origin = Origin::start();
    let cfg = limited_config(origin.addr, "")
        .replace("name = \"main\"\n", "name = \"main\"\nmax_body = \"1k\"\n");
    let p = Proxy::start(&cfg);
    // Announced too large: refused from the head, the body never read, nothing upstream.
    let mut c = Client::connect(p.addr);
    c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
    let r = c.response("POST").unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(origin.seen().is_empty(), "the upstream saw nothing");
    // Within the limit: passed on.
    let mut c = Client::connect(p.addr);
    c.send(b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
    c.send(&[b'a'; 1024]);
    assert_eq!(c.response("POST").unwrap().status, 200);
    // Chunked: held to the limit as it streams; no byte past it goes upstream.
    let mut c = Client::connect(p.addr);
    c.send(b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        let _ = c.w.write_all(b"258\r\n");
        let _ = c.w.write_all(&[b'b'; 600]);
        let _ = c.w.write_all(b"\r\n");
    }
    let _ = c.w.write_all(b"0\r\n\r\n");
    let r = c.response("POST").unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    let seen = origin.seen();
    let chunked = seen
        .iter()
        .filter(|s| s.path == "/chunked")
        .map(|s| s.body_len)
        .max();
    assert!(
        chunked.unwrap_or(0) <= 1024,
        "{chunked:?} bytes reached the upstream"
    );
    // The same limit from quick mode.
    let q = Proxy::start_quick(&["--upstream", &origin.addr.to_string(), "--max-body", "10"]);
    let mut c = Client::connect(q.addr);
    c.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(c.response("PUT").unwrap().status, 413);
}

fn rules_config(origin: SocketAddr, rules: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\n{rules}"
    )
}

fn status_of(from: &str, to: SocketAddr, req: &str) -> u16 {
    let mut c = connect_from(from, to);
    c.send(req.as_bytes());
    c.response("GET").map_or(0, |r| r.status)
}

#[test]
fn deny_rules_see_the_normalised_path_and_lists_from_files_reload() {
    let origin = Origin::start();
    let list = TempFile::new("# blocked\n127.0.0.2\n10.0.0.0/8\n");
    let cfg = rules_config(
        origin.addr,
        &format!(
            "[[rules]]\naction = \"deny\"\nclients_file = \"{}\"\nstatus = 403\nbody = \"blocked\\n\"\n\
             [[rules]]\naction = \"allow\"\nheaders = {{ \"x-office\" = \"^yes$\" }}\n\
             [[rules]]\naction = \"deny\"\npaths = [\"/admin\"]\nname = \"admin-paths\"\n",
            list.0.display()
        ),
    );
    let p = Proxy::start(&cfg);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    for evasion in PATHS_TO_ADMIN {
        assert_eq!(
            status_of("127.0.0.1:0", p.addr, &get(evasion)),
            403,
            "{evasion}"
        );
    }
    assert_eq!(status_of("127.0.0.1:0", p.addr, &get("/static/admin")), 200);
    assert!(
        origin.seen().iter().all(|s| s.path == "/static/admin"),
        "no admin request reached the upstream"
    );
    // An earlier allow rule wins.
    let office = "GET /admin/ HTTP/1.1\r\nHost: t\r\nX-Office: yes\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of("127.0.0.1:0", p.addr, office), 200);
    // The list: this client is refused with the rule's body, everywhere.
    let mut c = connect_from("127.0.0.2:0", p.addr);
    c.send(get("/").as_bytes());
    let r = c.response("GET").unwrap();
    assert_eq!((r.status, r.text().as_str()), (403, "blocked\n"));
    // Each rule's decisions are counted, by its name (or place) and action.
    let admin = admin_addr(&p);
    let want = [
        (
            "rule=\"admin-paths\",action=\"deny\"",
            PATHS_TO_ADMIN.len() as f64,
        ),
        ("rule=\"rules[1]\",action=\"allow\"", 1.0),
        ("rule=\"rules[0]\",action=\"deny\"", 1.0),
    ];
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let m = admin_get(admin, "/metrics");
        let got: Vec<_> = want
            .iter()
            .map(|(l, _)| sample(&m, "ringway_rule_matches_total", l))
            .collect();
        if want.iter().zip(&got).all(|((_, n), g)| *g == Some(*n)) {
            break;
        }
        assert!(Instant::now() < end, "{got:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The list changes, a reload reads it again.
    std::fs::write(&list.0, "10.0.0.0/8\n").unwrap();
    p.signal(libc::SIGHUP);
    p.wait_log(|l| l.contains("reloaded:"));
    let end = Instant::now() + Duration::from_secs(5);
    while status_of("127.0.0.2:0", p.addr, &get("/")) != 200 {
        assert!(Instant::now() < end, "the new list never took effect");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_tarpit_holds_the_connection_then_closes_with_nothing() {
    use std::io::Read;
    let origin = Origin::start();
    let p = Proxy::start(&rules_config(
        origin.addr,
        "[[rules]]\naction = \"tarpit\"\nuser_agent = \"(?i)sqlmap\"\ndelay = \"800ms\"\n",
    ));
    let mut c = connect_from("127.0.0.1:0", p.addr);
    let start = Instant::now();
    c.send(b"GET /?id=1%27 HTTP/1.1\r\nHost: t\r\nUser-Agent: sqlmap/1.7\r\n\r\n");
    let mut got = Vec::new();
    let _ = c.r.read_to_end(&mut got);
    let held = start.elapsed();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(held >= Duration::from_millis(750), "{held:?}");
    assert!(held < Duration::from_secs(5), "{held:?}");
    assert!(origin.seen().is_empty());
    // Others are served.
    assert_eq!(
        status_of(
            "127.0.0.1:0",
            p.addr,
            "GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: curl\r\nConnection: close\r\n\r\n"
        ),
        200
    );
    // A rule's mistakes are config errors naming the key.
    let f = TempFile::new(&rules_config(
        origin.addr,
        "[[rules]]\naction = \"deny\"\npath_regex = \"(\"\n",
    ));
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&f.0)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("rules[0].path_regex: not a regex"));
}

#[test]
fn a_trickling_upload_is_cut_at_the_whole_body_deadline() {
    use std::io::Write;
    let origin = Origin::start();
    let p = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\nclient_body = \"30s\"\nclient_body_total = \"1s\"\n",
    ));
    let mut c = Client::connect(p.addr);
    let start = Instant::now();
    c.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n");
    // A byte every 200 ms: never idle for client_body, far too slow as a whole.
    let writer = {
        let mut w = c.w.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..40 {
                if w.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let r = c.response("POST").expect("an answer");
    let took = start.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    drop(c);
    writer.join().unwrap();
}

#[test]
fn a_slow_uploader_holds_no_upstream_connection() {
    use std::io::Write;
    let origin = Origin::start();
    let p = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(p.addr);
    c.send(b"POST /form HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
    for _ in 0..9 {
        c.w.write_all(&[b'f'; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            origin.connections(),
            0,
            "an upstream connection taken during the upload"
        );
    }
    c.w.write_all(&[b'f'; 100]).unwrap();
    assert_eq!(c.response("POST").unwrap().status, 200);
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 1000);
    // The connection goes on: the next request is served on it.
    c.send(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response("GET").unwrap().status, 200);
}

#[test]
fn delay_mode_holds_part_of_the_burst_to_the_rate() {
    let origin = Origin::start();
    // 10/s, a burst of 4, 1 of which at once (nginx: burst=4 delay=1).
    let p = Proxy::start(&limited_config(
        origin.addr,
        "[[rate_limits]]\nrate = \"10/s\"\nburst = 4\ndelay = 1\n",
    ));
    let mut c = Client::connect(p.addr);
    let start = Instant::now();
    let mut at = Vec::new();
    for _ in 0..5 {
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.response("GET").unwrap().status, 200);
        at.push(start.elapsed());
    }
    // The first two at once; the next three held to the rate (about 100 ms apart), none
    // refused.
    // (Only lower bounds: a loaded machine makes everything slower, never faster.)
    assert!(at[4] >= Duration::from_millis(250), "{at:?}");
    // A sequential client never exceeds the burst (it waits its turn); eight at once do: the
    // burst is held, the rest refused.
    let to = p.addr;
    let statuses: Vec<u16> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(to);
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                c.response("GET").unwrap().status
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[test]
fn a_route_may_have_stricter_head_limits() {
    let origin = Origin::start();
    let cfg = limited_config(origin.addr, "").replace(
        "name = \"main\"\n",
        "name = \"main\"\nmax_headers = 3\nmax_target = 20\n",
    );
    let p = Proxy::start(&cfg);
    let ask = |req: &str| {
        let mut c = Client::connect(p.addr);
        c.send(req.as_bytes());
        c.response("GET").map_or(0, |r| r.status)
    };
    assert_eq!(ask("GET /short HTTP/1.1\r\nHost: t\r\nA: 1\r\n\r\n"), 200);
    assert_eq!(
        ask("GET /short HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
        431
    );
    assert_eq!(
        ask("GET /a-path-longer-than-twenty HTTP/1.1\r\nHost: t\r\n\r\n"),
        414
    );
    assert_eq!(
        origin.seen().len(),
        1,
        "only the first reached the upstream"
    );
}

/// Both proxies flooded at once by the same client (from 127.0.0.1) for `secs`: (served,
/// refused) summed.
fn flood_both(a: SocketAddr, b: SocketAddr, secs: f64) -> (usize, usize, Duration) {
    let other = std::thread::spawn(move || flood(b, "127.0.0.1:0", 4, secs));
    let (ok_a, lim_a, took, _) = flood(a, "127.0.0.1:0", 4, secs);
    let (ok_b, lim_b, took_b, _) = other.join().unwrap();
    (ok_a + ok_b, lim_a + lim_b, took.max(took_b))
}

#[test]
fn a_limit_shared_through_redis_holds_across_two_processes_and_outlives_redis() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let origin = Origin::start();
    // 100/s with a burst of 10, synced every 100 ms.
    let config = limited_config(
        origin.addr,
        &format!(
            "[shared_limits]\nredis = \"{}\"\ninterval = \"100ms\"\n\
             [[rate_limits]]\nname = \"shared\"\nrate = \"100/s\"\nburst = 10\nshared = true\n",
            redis.url()
        ),
    );
    let (p1, p2) = (Proxy::start(&config), Proxy::start(&config));
    let (a1, a2) = (admin_addr(&p1), admin_addr(&p2));
    let up = |admin| {
        sample(
            &admin_get(admin, "/metrics"),
            "ringway_shared_limits_up",
            "",
        )
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < end, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until("both boxes reach Redis", &|| {
        up(a1) == Some(1.0) && up(a2) == Some(1.0)
    });

    // One client floods both boxes: together they admit what one box alone would, within
    // the bound (N − 1)(b + 1 + R(T + ρ)) = 1 × (11 + 100 × 0.11) = 22 requests.
    let (ok, refused, took) = flood_both(p1.addr, p2.addr, 4.0);
    let alone = 11.0 + 100.0 * took.as_secs_f64();
    let bound = 22.0;
    let error = (ok as f64 - alone) / alone;
    eprintln!(
        "shared: {ok} served, {refused} refused in {took:?}; one box alone: {alone:.0}; \
         error {:+.1}% (bound +{:.1}%)",
        error * 100.0,
        bound / alone * 100.0
    );
    assert!(
        ok as f64 <= alone + bound && ok as f64 >= 0.95 * alone,
        "{ok} served by two boxes sharing a limit; one box alone: {alone:.0} (+{bound} allowed)"
    );

    // Redis dies: not one request fails (`flood` panics on anything but 200 or 429); each box
    // limits alone, says so, and counts what it so decided.
    redis.kill();
    let (ok, refused, took) = flood_both(p1.addr, p2.addr, 2.0);
    eprintln!("Redis gone: {ok} served, {refused} refused in {took:?}");
    assert!(refused > 0 && ok > 0);
    let local_only = |admin| {
        sample(
            &admin_get(admin, "/metrics"),
            "ringway_rate_limit_local_only_total",
            "limit=\"shared\"",
        )
        .unwrap_or(0.0)
    };
    until("the boxes see Redis gone", &|| {
        up(a1) == Some(0.0) && up(a2) == Some(0.0)
    });
    assert!(local_only(a1) > 0.0 && local_only(a2) > 0.0);
    // Alone, each box admits at most its own burst and rate.
    assert!(
        ok as f64 <= 2.0 * (11.0 + 100.0 * took.as_secs_f64()) + 2.0,
        "{ok} in {took:?}"
    );

    // Back again: the boxes share once more.
    redis.restart();
    until("both boxes reach Redis again", &|| {
        up(a1) == Some(1.0) && up(a2) == Some(1.0)
    });
    let failed = sample(
        &admin_get(a1, "/metrics"),
        "ringway_shared_limits_syncs_total",
        "result=\"failed\"",
    );
    assert!(failed.is_some_and(|n| n > 0.0));
}

#[test]
fn quick_mode_shares_a_limit_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let origin = Origin::start();
    let start = || {
        Proxy::start_quick(&[
            "--upstream",
            &origin.addr.to_string(),
            "--rate-limit",
            "5/m",
            "--rate-limit-redis",
            &redis.url(),
            "--admin",
            "127.0.0.1:0",
        ])
    };
    let (p1, p2) = (start(), start());
    // Two whole sync rounds after now: what this box admitted is in Redis, and it has heard
    // what the other reported.
    let synced = |p: &Proxy| {
        let a = admin_addr(p);
        let rounds = || {
            sample(
                &admin_get(a, "/metrics"),
                "ringway_shared_limits_syncs_total",
                "result=\"ok\"",
            )
            .unwrap_or(0.0)
        };
        let (before, end) = (rounds(), Instant::now() + Duration::from_secs(10));
        while rounds() < before + 2.0 {
            assert!(Instant::now() < end, "no sync with Redis");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let statuses = |p: &Proxy, n| {
        let mut c = Client::connect(p.addr);
        (0..n)
            .map(|_| {
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                c.response("GET").unwrap().status
            })
            .collect::<Vec<_>>()
    };
    // 5/m with a burst of 5: six in all, whichever box they reach.
    assert_eq!(statuses(&p1, 4), [200; 4]);
    synced(&p1);
    assert_eq!(statuses(&p2, 1), [200]);
    synced(&p2);
    assert_eq!(statuses(&p2, 3), [200, 429, 429]);
    synced(&p2);
    synced(&p1);
    assert_eq!(statuses(&p1, 1), [429]);
    let out = std::process::Command::new(bin())
        .args(["--upstream", "127.0.0.1:9", "--rate-limit", "1/s"])
        .args(["--rate-limit-redis", "http://127.0.0.1:6379"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--rate-limit-redis \"http://127.0.0.1:6379\": expected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
