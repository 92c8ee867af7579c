//! Upstream groups over real sockets: weights, hashing, backups, limits.

mod support;

use std::time::Duration;

use support::*;

fn group_config(servers: &str, balance: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n\
         [upstreams.app]\nbalance = \"{balance}\"\nservers = [{servers}]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n"
    )
}

fn get(c: &mut Client, path: &str, extra: &str) -> Response {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes());
    c.response("GET").unwrap()
}

#[test]
fn weighted_round_robin_spreads_by_weight() {
    let o: Vec<Origin> = (0..3).map(|_| Origin::start()).collect();
    let servers = format!(
        "{{ addr = \"{}\", weight = 5 }}, \"{}\", \"{}\"",
        o[0].addr, o[1].addr, o[2].addr
    );
    let proxy = Proxy::start(&group_config(&servers, "round-robin"));
    let mut c = Client::connect(proxy.addr);
    for _ in 0..70 {
        assert_eq!(get(&mut c, "/", "").status, 200);
    }
    let counts: Vec<usize> = o.iter().map(|x| x.seen().len()).collect();
    assert_eq!(counts, [50, 10, 10]);
}

#[test]
fn hash_on_a_header_is_sticky() {
    let o: Vec<Origin> = (0..3).map(|_| Origin::start()).collect();
    let servers = o
        .iter()
        .map(|x| format!("\"{}\"", x.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let proxy = Proxy::start(&group_config(&servers, "hash:header:X-User"));
    let mut c = Client::connect(proxy.addr);
    for user in 0..30 {
        for _ in 0..3 {
            get(&mut c, &format!("/u{user}"), &format!("X-User: {user}\r\n"));
        }
    }
    // Every user's three requests landed on one origin, and users are spread over all three.
    for x in &o {
        let seen = x.seen();
        for s in &seen {
            assert_eq!(
                seen.iter().filter(|t| t.path == s.path).count(),
                3,
                "{} split",
                s.path
            );
        }
        assert!(!seen.is_empty());
    }
}

#[test]
fn backup_serves_only_when_primaries_are_down() {
    let primary = Origin::start();
    let backup = Origin::start();
    let servers = format!(
        "{{ addr = \"{}\", down = true }}, {{ addr = \"{}\", backup = true }}",
        primary.addr, backup.addr
    );
    let proxy = Proxy::start(&group_config(&servers, "round-robin"));
    let mut c = Client::connect(proxy.addr);
    assert_eq!(get(&mut c, "/", "").status, 200);
    assert_eq!((primary.seen().len(), backup.seen().len()), (0, 1));

    let servers = format!(
        "\"{}\", {{ addr = \"{}\", backup = true }}",
        primary.addr, backup.addr
    );
    let proxy = Proxy::start(&group_config(&servers, "least-conn"));
    let mut c = Client::connect(proxy.addr);
    for _ in 0..5 {
        assert_eq!(get(&mut c, "/", "").status, 200);
    }
    assert_eq!((primary.seen().len(), backup.seen().len()), (5, 1));
}

#[test]
fn max_conns_reached_is_503_with_retry_after() {
    let o = Origin::start();
    let servers = format!("{{ addr = \"{}\", max_conns = 1 }}", o.addr);
    let proxy = Proxy::start(&group_config(&servers, "least-conn"));
    let addr = proxy.addr;
    let slow =
        std::thread::spawn(move || request(addr, b"GET /slow/800 HTTP/1.1\r\nHost: t\r\n\r\n"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while o.seen().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = request(addr, b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    // The slot is free again.
    assert_eq!(
        request(addr, b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn quick_mode_balance_flag() {
    let a = Origin::start();
    let b = Origin::start();
    let out = std::process::Command::new(bin())
        .args(["--upstream", &a.addr.to_string(), "--balance", "fastest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--balance: expected round-robin"));

    let proxy = Proxy::start_quick(&[
        "--upstream",
        &a.addr.to_string(),
        "--upstream",
        &b.addr.to_string(),
        "--balance",
        "least-conn",
    ]);
    let mut c = Client::connect(proxy.addr);
    for _ in 0..10 {
        assert_eq!(get(&mut c, "/", "").status, 200);
    }
    assert_eq!((a.seen().len(), b.seen().len()), (5, 5));
}

#[test]
fn connect_failure_retries_the_next_server_and_ejects_the_dead_one() {
    let live = Origin::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let servers = format!("\"{dead_addr}\", \"{}\"", live.addr);
    let proxy = Proxy::start(&group_config(&servers, "round-robin"));
    let mut c = Client::connect(proxy.addr);
    // Non-idempotent with a body: a connect failure sent nothing, so it may go elsewhere.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    let r = c.response("POST").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    for _ in 0..10 {
        assert_eq!(get(&mut c, "/", "").status, 200);
    }
    assert_eq!(
        live.seen().len(),
        11,
        "every request reached the live server"
    );
    assert!(
        proxy.log.lock().unwrap().contains("ejected"),
        "{}",
        proxy.log.lock().unwrap()
    );
}

#[test]
fn retry_on_status_for_idempotent_requests() {
    let failing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let failing_addr = failing.local_addr().unwrap();
    // A server that answers 503 to everything.
    std::thread::spawn(move || {
        for s in failing.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        let _ = s.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy");
                    }
                }
            });
        }
    });
    let live = Origin::start();
    let cfg = group_config(
        &format!("\"{failing_addr}\", \"{}\"", live.addr),
        "round-robin",
    )
    .replace("balance = ", "retry_on = [503]\nbalance = ");
    let proxy = Proxy::start(&cfg);
    let mut c = Client::connect(proxy.addr);
    for _ in 0..6 {
        assert_eq!(get(&mut c, "/", "").status, 200);
    }
    // POST is not idempotent: its 503 is passed on rather than retried.
    let posted = (0..2)
        .map(|_| {
            c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
            c.response("POST").unwrap().status
        })
        .collect::<Vec<_>>();
    assert!(posted.contains(&503), "{posted:?}");
}

/// A server answering 200 to everything, except that `/health` answers with `health`'s value.
fn health_origin(
    health: std::sync::Arc<std::sync::atomic::AtomicU16>,
    name: &'static str,
) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let health = health.clone();
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut path = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if path.is_empty() {
                        path = line.split(' ').nth(1).unwrap_or("").to_string();
                    }
                    if line == "\r\n" {
                        let code = if path == "/health" {
                            health.load(std::sync::atomic::Ordering::SeqCst)
                        } else {
                            200
                        };
                        let _ = write!(
                            s,
                            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\n\r\n{name}",
                            name.len()
                        );
                        path.clear();
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn active_health_checks_take_servers_out_and_back() {
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::Arc;
    let (ha, hb) = (Arc::new(AtomicU16::new(200)), Arc::new(AtomicU16::new(200)));
    let a = health_origin(ha.clone(), "a");
    let b = health_origin(hb.clone(), "b");
    let cfg = group_config(&format!("\"{a}\", \"{b}\""), "round-robin").replace(
        "balance = ",
        "health_check = { uri = \"/health\", interval = \"200ms\", timeout = \"1s\" }\nbalance = ",
    );
    let proxy = Proxy::start(&cfg);
    let served_by = |n: usize| -> Vec<String> {
        let mut c = Client::connect(proxy.addr);
        (0..n).map(|_| get(&mut c, "/x", "").text()).collect()
    };
    let both = served_by(10);
    assert!(both.contains(&"a".to_string()) && both.contains(&"b".to_string()));
    ha.store(503, Ordering::SeqCst);
    // Two failed probes 5 s apart at most: wait until a is out (bounded).
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while served_by(6).contains(&"a".to_string()) {
        assert!(std::time::Instant::now() < end, "a never marked down");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(proxy.log.lock().unwrap().contains("marked down"));
    ha.store(200, Ordering::SeqCst);
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !served_by(6).contains(&"a".to_string()) {
        assert!(std::time::Instant::now() < end, "a never marked up again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = hb;

    // Quick mode turns the same checks on with --health-uri, and validates it.
    let out = std::process::Command::new(bin())
        .args(["--upstream", &a.to_string(), "--health-uri", "health"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--health-uri"));
    let quick = Proxy::start_quick(&["--upstream", &a.to_string(), "--health-uri", "/health"]);
    let mut c = Client::connect(quick.addr);
    assert_eq!(get(&mut c, "/", "").text(), "a");
}

#[test]
fn admin_listener_reports_server_states() {
    let live = Origin::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let servers = format!(
        "\"{}\", \"{dead_addr}\", {{ addr = \"{}\", down = true }}",
        live.addr, live.addr
    );
    let cfg = group_config(&servers, "least-conn") + "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let proxy = Proxy::start(&cfg);
    let mut c = Client::connect(proxy.addr);
    for _ in 0..4 {
        assert_eq!(get(&mut c, "/", "").status, 200);
    }
    let admin: std::net::SocketAddr = {
        let log = proxy.log.lock().unwrap().clone();
        let i = log
            .find("admin status on http://")
            .expect("admin address logged");
        log[i + 23..].split('/').next().unwrap().parse().unwrap()
    };
    // Workers publish every 50 ms.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let json = loop {
        let r = request(admin, b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j = r.text();
        let all_counted = j.contains("\"total\":4,");
        if (j.contains("\"state\":\"ejected\"") && all_counted) || std::time::Instant::now() > end {
            break j;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        json.starts_with("{\"upstreams\":[{\"name\":\"app\",\"balance\":\"least-conn\""),
        "{json}"
    );
    assert!(
        json.contains(&format!("{{\"addr\":\"{}\",\"state\":\"up\"", live.addr)),
        "{json}"
    );
    assert!(
        json.contains(&format!("{{\"addr\":\"{dead_addr}\",\"state\":\"ejected\"")),
        "{json}"
    );
    assert!(json.contains("\"state\":\"down\""), "{json}");
    assert!(json.contains("\"failures\":1"), "{json}");
    // Every exchange's end record is counted: four answered, one of them after a retry.
    assert!(
        json.contains("\"requests\":{\"total\":4,\"2xx\":4,\"3xx\":0,\"4xx\":0,\"5xx\":0,\"no_response\":0,\"client_errors\":0,\"upstream_errors\":0,\"retries\":1}"),
        "{json}"
    );
    assert_eq!(
        request(admin, b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        request(admin, b"POST /status HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .status,
        405
    );
}

/// Waits (bounded) until `counter` reaches `n`.
fn wait_count(counter: &std::sync::atomic::AtomicUsize, n: usize, what: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while counter.load(std::sync::atomic::Ordering::Relaxed) < n {
        assert!(std::time::Instant::now() < end, "waiting for {n} {what}");
        std::thread::yield_now();
    }
}

/// Binds `addr` again once the killed origin's listener is gone (bounded).
fn restart_origin(addr: std::net::SocketAddr) -> Origin {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpListener::bind(addr).is_ok() {
            return Origin::start_on(addr);
        }
        assert!(std::time::Instant::now() < end, "{addr} stays in use");
        std::thread::yield_now();
    }
}

/// Issue: with the README's quick start (one server), a one-request outage answered 503 for
/// ten seconds after the origin was back. A group with one server never ejects it: non-2xx
/// only while the origin is down, plus the requests in flight when it comes back.
#[test]
fn an_outage_of_the_only_server_ends_when_the_server_is_back() {
    use std::sync::atomic::Ordering;
    let origin = Origin::start();
    let addr = origin.addr;
    let proxy = Proxy::start_quick(&["--upstream", &addr.to_string()]);
    let clients = 4;
    let load = SteadyLoad::start(proxy.addr, clients, "/x");
    wait_count(&load.ok, 200, "successes before the outage");
    origin.kill();
    let failed_before = load.failed.load(Ordering::Relaxed);
    wait_count(
        &load.failed,
        failed_before + 100,
        "failures during the outage",
    );
    let origin = restart_origin(addr);
    let failed_at_restart = load.failed.load(Ordering::Relaxed);
    let ok_at_restart = load.ok.load(Ordering::Relaxed);
    wait_count(&load.ok, ok_at_restart + 500, "successes after the outage");
    let (_, failed) = load.finish();
    let tail = failed - failed_at_restart;
    assert!(
        tail <= clients,
        "{tail} failures after the origin was back (at most one in flight per client)"
    );
    assert!(origin.seen().len() >= 500);
    let log = proxy.log.lock().unwrap().clone();
    assert!(!log.contains("ejected"), "{log}");
}

/// Every server of a group ejected: the proxy fails open to the one that failed least recently
/// instead of answering 503 for the whole cool-down.
#[test]
fn a_group_whose_servers_are_all_ejected_fails_open() {
    let a = Origin::start();
    let b = Origin::start();
    let (a_addr, b_addr) = (a.addr, b.addr);
    let servers = format!("\"{a_addr}\", \"{b_addr}\"");
    let proxy = Proxy::start(
        &group_config(&servers, "round-robin")
            .replace("[[routes]]", "fail_timeout = \"60s\"\n[[routes]]"),
    );
    let mut c = Client::connect(proxy.addr);
    assert_eq!(get(&mut c, "/", "").status, 200);
    a.kill();
    b.kill();
    // Both fail (connect refused) and are ejected for 60 s.
    for _ in 0..3 {
        let r = request(proxy.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
    }
    proxy.wait_log(|l| l.matches("ejected").count() >= 2);
    let b = restart_origin(b_addr);
    for _ in 0..5 {
        let r = request(proxy.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(b.seen().len(), 5);
}

/// `fail_open = false` keeps the strict behaviour: 503 with Retry-After while all are ejected.
#[test]
fn fail_open_can_be_turned_off() {
    let a = Origin::start();
    let b = Origin::start();
    let servers = format!("\"{}\", \"{}\"", a.addr, b.addr);
    let proxy = Proxy::start(&group_config(&servers, "round-robin").replace(
        "[[routes]]",
        "fail_open = false\nfail_timeout = \"60s\"\n[[routes]]",
    ));
    a.kill();
    b.kill();
    for _ in 0..2 {
        let _ = request(proxy.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    }
    proxy.wait_log(|l| l.matches("ejected").count() >= 2);
    let r = request(proxy.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
}

/// A response ringway refuses to relay (conflicting framing, a 40 KB head) is 502, but does
/// not eject the server by default; with `fail_on_invalid` it does.
#[test]
fn an_invalid_response_does_not_eject_by_default() {
    let a = Origin::start();
    let b = Origin::start();
    let servers = format!("\"{}\", \"{}\"", a.addr, b.addr);
    let proxy = Proxy::start(&group_config(&servers, "round-robin"));
    for path in ["/bad-response", "/big-head", "/bad-response", "/big-head"] {
        let r = request(
            proxy.addr,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 502, "{path}");
    }
    for _ in 0..4 {
        assert_eq!(
            request(proxy.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap()
                .status,
            200
        );
    }
    assert!(!proxy.log.lock().unwrap().contains("ejected"));
    assert_eq!((a.seen().len(), b.seen().len()), (4, 4));
}

#[test]
fn fail_on_invalid_ejects() {
    let a = Origin::start();
    let b = Origin::start();
    let servers = format!("\"{}\", \"{}\"", a.addr, b.addr);
    let proxy = Proxy::start(
        &group_config(&servers, "round-robin")
            .replace("[[routes]]", "fail_on_invalid = true\n[[routes]]"),
    );
    let r = request(proxy.addr, b"GET /big-head HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.status, 502);
    proxy.wait_log(|l| l.contains("ejected"));
}
