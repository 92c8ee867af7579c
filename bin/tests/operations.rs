//! Operations: the access log (lines matched to the requests made, refusals included; reopen
//! after a rename; per-route off; nothing lost at a graceful stop).

mod support;

use std::time::Duration;

use support::*;

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringway-ops-{}-{name}", std::process::id()))
}

/// Waits until `path` holds at least `n` lines (the writer flushes within 100 ms).
fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || std::time::Instant::now() > end {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn every_exchange_is_logged_with_refusals_and_nothing_is_lost_at_a_stop() {
    let origin = Origin::start();
    let log = temp_path("json.log");
    let _ = std::fs::remove_file(&log);
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\", {{ addr = \"127.0.0.2:0\", forward = true }}]\nworkers = 1\npin = false\n\
         [upstreams.app]\nservers = [\"{}\"]\n[upstreams.dead]\nservers = [\"127.0.0.1:1\"]\nretries = 0\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\nname = \"main\"\n\
         [[routes]]\npath = \"/dead/\"\nupstream = \"dead\"\n\
         [[routes]]\npath = \"/quiet/\"\nupstream = \"app\"\naccess_log = false\n\
         [forward]\ndeny_domains = [\".blocked.test\"]\n\
         [access_log]\npath = \"{}\"\nformat = \"json\"\nflush = \"10s\"\n",
        origin.addr,
        log.display()
    );
    let mut p = Proxy::start(&cfg);
    let fwd = p
        .log
        .lock()
        .unwrap()
        .split("listening on ")
        .nth(1)
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|a| a.split(' ').next())
        .unwrap()
        .to_string();
    let url = |path: &str| format!("http://{}{path}", p.addr);
    let (ok, _) = curl(&[
        "-A",
        "agent\"q\\x",
        "-e",
        "http://ref.test/",
        &url("/hello?q=1"),
    ]);
    assert!(ok);
    let (ok, _) = curl(&[&url("/quiet/x")]);
    assert!(ok);
    // 502: the dead group's only server refuses.
    let r = request(
        p.addr,
        b"GET /dead/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    // 400: not HTTP at all.
    let r = request(p.addr, b"GARBAGE \x01\"line\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    // 403 by a forward rule.
    let r = request(
        fwd.parse().unwrap(),
        b"GET http://www.blocked.test/ HTTP/1.1\r\nHost: www.blocked.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 403);

    // Flushed every 10 s only: the lines are still in the worker's buffer, and a graceful stop
    // must write them.
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
    let lines = lines_of(&log, 4);
    let _ = std::fs::remove_file(&log);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let l: Vec<serde_json::Value> = lines.iter().map(|l| json(l)).collect();
    let ok = &l[0];
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["request"], "GET /hello?q=1 HTTP/1.1");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["client"], "127.0.0.1");
    assert_eq!(ok["user_agent"], "agent\"q\\x");
    assert_eq!(ok["referer"], "http://ref.test/");
    assert_eq!(ok["route"], "main");
    assert_eq!(ok["upstream_addr"], origin.addr.to_string());
    assert!(ok["bytes_out"].as_u64().unwrap() > 0);
    assert!(ok["request_time"].as_f64().unwrap() >= 0.0);
    assert!(ok["upstream_header_time"].as_f64().is_some());
    assert_eq!(l[1]["status"], 502);
    assert_eq!(l[1]["upstream_addr"], "127.0.0.1:1");
    assert!(
        l[1]["error"].as_str().unwrap().contains("refused"),
        "{}",
        l[1]
    );
    assert_eq!(l[2]["status"], 400);
    assert_eq!(l[2]["request"], "GARBAGE \u{1}\"line");
    assert_eq!(l[3]["status"], 403);
    assert_eq!(l[3]["forward_dest"], "www.blocked.test:80");
    assert_eq!(l[3]["listener"], fwd);
    let ids: std::collections::HashSet<_> = l.iter().map(|x| x["request_id"].clone()).collect();
    assert_eq!(ids.len(), 4, "request ids are unique");
}

#[test]
fn reopen_after_a_rename_writes_to_the_new_file() {
    let origin = Origin::start();
    let log = temp_path("combined.log");
    let moved = temp_path("combined.log.1");
    let pid = temp_path("ringway.pid");
    for f in [&log, &moved, &pid] {
        let _ = std::fs::remove_file(f);
    }
    let p = Proxy::start_quick(&[
        "--upstream",
        &origin.addr.to_string(),
        "--access-log",
        log.to_str().unwrap(),
        "--pid-file",
        pid.to_str().unwrap(),
    ]);
    let (ok, _) = curl(&[&format!("http://{}/before", p.addr)]);
    assert!(ok);
    assert_eq!(lines_of(&log, 1).len(), 1);
    std::fs::rename(&log, &moved).unwrap();
    let out = std::process::Command::new(bin())
        .args(["reopen", "--pid-file", pid.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.wait_log(|l| l.contains("access log: reopening"));
    let (ok, _) = curl(&[&format!("http://{}/after", p.addr)]);
    assert!(ok);
    let new = lines_of(&log, 1);
    let old = lines_of(&moved, 1);
    for f in [&log, &moved, &pid] {
        let _ = std::fs::remove_file(f);
    }
    assert_eq!(old.len(), 1);
    assert!(old[0].contains("\"GET /before HTTP/1.1\" 200"), "{old:?}");
    // nginx's combined format.
    assert_eq!(new.len(), 1);
    let re = regex_lite(&new[0]);
    assert!(re, "{new:?}");
    assert!(new[0].contains("\"GET /after HTTP/1.1\" 200"), "{new:?}");
}

/// `127.0.0.1 - - [03/Dec/2026:12:17:59 +0000] "GET / HTTP/1.1" 200 4597 "-" "curl/…"`
fn regex_lite(l: &str) -> bool {
    let (ip, rest) = l.split_once(" - - [").unwrap_or(("", ""));
    let (time, rest) = rest.split_once("] \"").unwrap_or(("", ""));
    ip == "127.0.0.1"
        && time.len() == 26
        && time.ends_with(" +0000")
        && rest.contains("\" 200 ")
        && rest.ends_with('"')
}

#[test]
fn quick_mode_log_flags_are_checked() {
    let out = std::process::Command::new(bin())
        .args([
            "--upstream",
            "127.0.0.1:9",
            "--log-format",
            "$nope",
            "--access-log",
            "-",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log-format \"$nope\": unknown variable $nope"),
        "{err}"
    );
    let f = TempFile::new(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.a]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"a\"\n\n[access_log]\npath = \"x.log\"\nformat = \"$status $bogus\"\n",
    );
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&f.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":10: access_log.format: unknown variable $bogus"),
        "{err}"
    );
}

#[test]
fn metrics_match_the_traffic_and_pass_promtool() {
    let origin = Origin::start();
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\", {{ addr = \"127.0.0.2:0\", forward = true }}]\nworkers = 2\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n[upstreams.dead]\nservers = [\"127.0.0.1:1\"]\nretries = 0\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\nname = \"main\"\n\
         [[routes]]\npath = \"/dead/\"\nupstream = \"dead\"\n\
         [forward]\ndeny_domains = [\".blocked.test\"]\n",
        origin.addr
    );
    let p = Proxy::start(&cfg);
    let admin = admin_addr(&p);
    let fwd: std::net::SocketAddr = {
        let log = p.log.lock().unwrap().clone();
        let l = log.split("listening on ").nth(1).unwrap().to_string();
        l.split(", ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    for _ in 0..7 {
        assert!(curl(&[&format!("http://{}/ok", p.addr)]).0);
    }
    for _ in 0..2 {
        let r = request(
            p.addr,
            b"GET /dead/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.unwrap().status, 502);
    }
    let r = request(p.addr, b"BAD\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    let r = request(
        fwd,
        b"GET http://x.blocked.test/ HTTP/1.1\r\nHost: x.blocked.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 403);

    // Workers publish every 50 ms.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = admin_get(admin, "/metrics");
        let total: f64 = t
            .lines()
            .filter(|l| l.starts_with("ringway_worker_requests_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        if total >= 11.0 || std::time::Instant::now() > end {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let listener = format!("listener=\"{}\"", p.addr);
    let at = |name: &str, labels: &str| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("{name}{{{labels}}} missing:\n{text}"))
    };
    assert_eq!(
        at(
            "ringway_requests_total",
            &format!("{listener},code=\"2xx\"")
        ),
        7.0
    );
    assert_eq!(
        at(
            "ringway_requests_total",
            &format!("{listener},code=\"5xx\"")
        ),
        2.0
    );
    assert_eq!(
        at(
            "ringway_requests_total",
            &format!("{listener},code=\"4xx\"")
        ),
        1.0
    );
    assert_eq!(
        at(
            "ringway_route_requests_total",
            "route=\"main\",code=\"2xx\""
        ),
        7.0
    );
    assert_eq!(
        at(
            "ringway_route_requests_total",
            "route=\"/dead/\",code=\"5xx\""
        ),
        2.0
    );
    let app = format!("group=\"app\",server=\"{}\"", origin.addr);
    assert_eq!(
        at(
            "ringway_upstream_responses_total",
            &format!("{app},code=\"2xx\"")
        ),
        7.0
    );
    assert_eq!(
        at(
            "ringway_upstream_failures_total",
            "group=\"dead\",server=\"127.0.0.1:1\""
        ),
        2.0
    );
    assert_eq!(
        at("ringway_upstream_header_duration_seconds_count", &app),
        7.0
    );
    assert_eq!(
        at(
            "ringway_upstream_header_duration_seconds_bucket",
            &format!("{app},le=\"+Inf\"")
        ),
        7.0
    );
    assert_eq!(at("ringway_request_duration_seconds_count", ""), 11.0);
    assert_eq!(
        at("ringway_forward_denials_total", "reason=\"domain\""),
        1.0
    );
    assert_eq!(
        at("ringway_upstream_server_up", &format!("{app},state=\"up\"")),
        1.0
    );
    assert_eq!(at("ringway_config_version", ""), 1.0);
    assert!(at("ringway_sent_bytes_total", "") > 0.0);
    let accepted: f64 = (0..2)
        .map(|w| {
            sample(
                &text,
                "ringway_connections_accepted_total",
                &format!("worker=\"{w}\""),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(accepted, 11.0);

    // Prometheus's own checker (the Debian package `prometheus`); CI installs it.
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) if std::env::var_os("CI").is_none() => eprintln!("promtool not run: {e}"),
        Err(e) => panic!("promtool is needed in CI (apt-get install prometheus): {e}"),
    }
}

#[test]
fn a_full_disk_drops_log_lines_never_requests() {
    let origin = Origin::start();
    let cfg = config_for(
        origin.addr,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\npath = \"/dev/full\"\nbuffer = \"4k\"\n",
    );
    let p = Proxy::start(&cfg);
    let admin = admin_addr(&p);
    let mut c = Client::connect(p.addr);
    for i in 0..200 {
        c.send(format!("GET /{i}?{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(100)).as_bytes());
        assert_eq!(c.response("GET").expect("answered").status, 200);
    }
    drop(c);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = admin_get(admin, "/metrics");
        let dropped = sample(&t, "ringway_access_log_lines_total", "result=\"dropped\"").unwrap();
        if dropped >= 200.0 {
            assert_eq!(
                sample(&t, "ringway_access_log_lines_total", "result=\"written\""),
                Some(0.0)
            );
            break;
        }
        assert!(std::time::Instant::now() < end, "{t}");
        std::thread::sleep(Duration::from_millis(50));
    }
    p.wait_log(|l| l.contains("access log: cannot write to /dev/full"));
}

#[test]
fn upstream_names_are_followed_while_traffic_flows_with_no_failed_request() {
    let a = Origin::start_on("127.0.0.2:0".parse().unwrap());
    let port = a.addr.port();
    let b = Origin::start_on(std::net::SocketAddr::from(([127, 0, 0, 3], port)));
    let dns = DnsServer::start();
    dns.set(
        "app.test",
        DnsName::Addrs(vec!["127.0.0.2".parse().unwrap()]),
    );
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\nservers = [\"app.test:{port}\"]\n\
         [[routes]]\nupstream = \"app\"\n\
         [resolver]\nservers = [\"{}\"]\nmin_ttl = \"50ms\"\nmax_ttl = \"200ms\"\nretry = \"100ms\"\ntimeout = \"200ms\"\n",
        dns.addr
    );
    let p = Proxy::start(&cfg);
    let admin = admin_addr(&p);
    let load = SteadyLoad::start(p.addr, 4, "/x");
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < end, "never: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("requests reach 127.0.0.2", &|| a.seen().len() > 20);
    // The name moves: new requests go to the new address, none fails.
    dns.set(
        "app.test",
        DnsName::Addrs(vec!["127.0.0.3".parse().unwrap()]),
    );
    wait_for("requests reach 127.0.0.3", &|| b.seen().len() > 20);
    // Every worker installs the new answer when it next looks (on a loaded machine that may
    // take a moment): within a few seconds, a 300 ms window passes with 127.0.0.2 left alone.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let on_a = a.seen().len();
        std::thread::sleep(Duration::from_millis(300));
        if a.seen().len() <= on_a + 8 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "127.0.0.2 still gets requests"
        );
    }
    // Both addresses: both get requests.
    dns.set(
        "app.test",
        DnsName::Addrs(vec![
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
        ]),
    );
    let on_a = a.seen().len();
    wait_for("requests reach both", &|| a.seen().len() > on_a + 20);
    // The name server stops answering: the last addresses are kept.
    dns.set("app.test", DnsName::Silent);
    std::thread::sleep(Duration::from_millis(600));
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{ok} succeeded");
    assert!(ok > 100);
    let text = admin_get(admin, "/status");
    assert!(text.contains("\"addr\":\"127.0.0.2:"), "{text}");
    assert!(text.contains("\"addr\":\"127.0.0.3:"), "{text}");
    // The failed lookup is counted once the resolver's timeout has passed (later under load).
    wait_for("a failed lookup is counted", &|| {
        let m = admin_get(admin, "/metrics");
        sample(&m, "ringway_dns_failures_total", "").unwrap_or(0.0) >= 1.0
    });
    p.wait_log(|l| l.contains("upstream name app.test: 127.0.0.3"));
    p.wait_log(|l| l.contains("keeping its last addresses"));
}

#[test]
fn quick_mode_takes_upstream_names() {
    let origin = Origin::start();
    let dns = DnsServer::start();
    dns.set(
        "origin.test",
        DnsName::Addrs(vec!["127.0.0.1".parse().unwrap()]),
    );
    let up = format!("origin.test:{}", origin.addr.port());
    let p = Proxy::start_quick(&["--upstream", &up, "--resolver", &dns.addr.to_string()]);
    let (ok, body) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/", p.addr),
    ]);
    assert!(ok);
    assert_eq!(body, b"200");
    // A name that does not resolve yet: the proxy starts, answers 503 (no server) until it does.
    let p = Proxy::start_quick(&[
        "--upstream",
        &format!("later.test:{}", origin.addr.port()),
        "--resolver",
        &dns.addr.to_string(),
    ]);
    let r = request(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 503);
    p.wait_log(|l| l.contains("upstream name later.test"));
    let out = std::process::Command::new(bin())
        .args(["--upstream", "bad..name:80"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected IP:port or NAME:port"));
}

#[test]
fn versions_are_kept_compared_and_rolled_back() {
    let dir = temp_path("state");
    let _ = std::fs::remove_dir_all(&dir);
    let pid = temp_path("versions.pid");
    let conf = |body: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\npid_file = \"{}\"\nstate_dir = \"{}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nrespond = {{ status = 200, body = \"{body}\" }}\n",
            pid.display(),
            dir.display()
        )
    };
    let p = Proxy::start(&conf("one"));
    let admin = admin_addr(&p);
    let file = p.config.as_ref().unwrap().0.clone();
    let ringway = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let body = || {
        let r = request(
            p.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        r.text()
    };
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < end, "never: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    p.wait_log(|l| l.contains("config version 1 (start)"));
    assert_eq!(body(), "one");

    std::fs::write(&file, conf("two")).unwrap();
    let (ok, out) = ringway(&["reload"]);
    assert!(ok, "{out}");
    p.wait_log(|l| l.contains("config version 2 (reload)"));
    until("two is served", &|| body() == "two");

    // A file that does not validate is not a version.
    std::fs::write(&file, "[[routes]]\nbogus = 1\n").unwrap();
    p.signal(libc::SIGHUP);
    p.wait_log(|l| l.contains("reload rejected"));
    std::fs::write(&file, conf("two")).unwrap();

    let (ok, out) = ringway(&["versions"]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("    1  ") && lines[0].contains(" start "),
        "{out}"
    );
    assert!(
        lines[1].starts_with("*   2  ") && lines[1].contains(" reload "),
        "{out}"
    );

    let (ok, out) = ringway(&["diff", "1", "2"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "route /: settings changed");
    let (ok, out) = ringway(&["diff", "2"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "no change");

    let (ok, out) = ringway(&["rollback"]);
    assert!(ok, "{out}");
    assert!(out.contains("rollback to version 1 signalled"), "{out}");
    p.wait_log(|l| l.contains("config version 3 (rollback to 1)"));
    until("one is served again", &|| body() == "one");
    let (_, out) = ringway(&["versions"]);
    assert!(out.lines().last().unwrap().starts_with("*   3  "), "{out}");
    assert!(admin_get(admin, "/status").contains("\"config\":{\"version\":3,"));
    assert_eq!(
        sample(&admin_get(admin, "/metrics"), "ringway_config_version", ""),
        Some(3.0)
    );

    let (ok, out) = ringway(&["rollback", "9"]);
    assert!(!ok);
    assert!(out.contains("no version 9 (kept: 1, 2, 3)"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    // The proxy is killed, not stopped, so it leaves its pid file (one per run was left in /tmp).
    let _ = std::fs::remove_file(&pid);
}

/// An origin that answers any request with `101` and then echoes every byte: a WebSocket's
/// tunnel, as far as the proxy can tell.
fn upgrade_echo() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Keep-alive clients as browsers behave: a connection the server said it closes (or closed
/// before any byte of an answer, after earlier requests) is replaced and the idempotent request
/// sent again (RFC 9112 §9.3.1); anything else is a failure.
struct PoliteLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, usize)>>,
}

impl PoliteLoad {
    fn start(addr: std::net::SocketAddr, clients: usize) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failed) = (0, 0);
                    let mut c = Client::connect(addr);
                    let mut used = false;
                    let end = std::time::Instant::now() + Duration::from_secs(40);
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
                        c.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
                        let r = match c.response("GET") {
                            None if used => {
                                c = Client::connect(addr);
                                c.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
                                c.response("GET")
                            }
                            r => r,
                        };
                        match r {
                            Some(r) if r.status == 200 => {
                                ok += 1;
                                used = true;
                                if r.header("connection")
                                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                                {
                                    c = Client::connect(addr);
                                    used = false;
                                }
                            }
                            _ => {
                                failed += 1;
                                c = Client::connect(addr);
                                used = false;
                            }
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn finish(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
    }
}

/// The inodes of the sockets process `pid` holds.
fn sockets_of(pid: i32) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let t = std::fs::read_link(e.path()).ok()?;
                    let t = t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
                    t.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The inodes of every listening TCP socket on the machine.
fn listening_sockets() -> std::collections::BTreeSet<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    // st 0A: LISTEN; the inode is the tenth column.
                    (cols.get(3) == Some(&"0A"))
                        .then(|| cols.get(9)?.parse().ok())
                        .flatten()
                })
                .collect::<Vec<u64>>()
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_binary_upgrade_under_load_drops_nothing_and_keeps_websockets() {
    use std::io::{Read, Write};
    let origin = Origin::start();
    let ws_origin = upgrade_echo();
    let pid = temp_path("upgrade.pid");
    let _ = std::fs::remove_file(&pid);
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\npin = false\nshutdown_timeout = \"30s\"\npid_file = \"{}\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n[upstreams.ws]\nservers = [\"{ws_origin}\"]\n\
         [[routes]]\nupstream = \"app\"\n[[routes]]\npath = \"/ws\"\nupstream = \"ws\"\n",
        pid.display(),
        origin.addr
    );
    let mut p = Proxy::start(&cfg);
    let file = p.config.as_ref().unwrap().0.clone();
    let old = p.pid();
    let load = PoliteLoad::start(p.addr, 4);
    let mut ws = std::net::TcpStream::connect(p.addr).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(ws.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    let echo = |ws: &mut std::net::TcpStream, msg: &[u8]| {
        ws.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        ws.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    };
    echo(&mut ws, b"before");
    std::thread::sleep(Duration::from_millis(300));

    let out = std::process::Command::new(bin())
        .args(["upgrade", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let new: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new, old);
    assert!(
        said.contains(&format!("upgraded: PID {old} → {new}")),
        "{said}"
    );
    p.wait_log(|l| l.contains(&format!("upgrade: PID {new} serves")));
    // The new process inherited the listening sockets and nothing else of the old one's: no
    // client or upstream connection (a copy would keep a connection the old process closes
    // open and unanswered).
    let shared: Vec<_> = sockets_of(old)
        .intersection(&sockets_of(new))
        .copied()
        .filter(|i| !listening_sockets().contains(i))
        .collect();
    assert!(shared.is_empty(), "connections inherited: {shared:?}");
    // The old process drains, but the WebSocket it carries goes on until it ends.
    std::thread::sleep(Duration::from_millis(500));
    echo(&mut ws, b"during the drain");
    assert!(alive(old));
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{ok} succeeded");
    assert!(ok > 100, "{ok}");
    // New connections are the new process's.
    let r = request(
        p.addr,
        b"GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    echo(&mut ws, b"last");
    drop(ws);
    // With its last connection gone the old process exits, well before shutdown_timeout.
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("the old process exits");
    assert!(status.success());
    assert!(alive(new));
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap().trim(),
        new.to_string(),
        "the old process leaves the new one's pid file"
    );
    let r = request(
        p.addr,
        b"GET /later HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    // SAFETY: kill(2) on the process this test's proxy started (its successor), by PID.
    unsafe { libc::kill(new, libc::SIGTERM) };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while alive(new) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(new));
    let _ = std::fs::remove_file(&pid);
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let origin = Origin::start();
    let pid = temp_path("failed-upgrade.pid");
    let _ = std::fs::remove_file(&pid);
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\npid_file = \"{}\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
        pid.display(),
        origin.addr
    );
    let p = Proxy::start(&cfg);
    let file = p.config.as_ref().unwrap().0.clone();
    // The new binary will read a file that does not validate: it exits before it is ready.
    std::fs::write(&file, "[[routes]]\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["upgrade", "--pid-file"])
        .arg(&pid)
        .output()
        .unwrap();
    assert!(!out.status.success());
    p.wait_log(|l| l.contains("upgrade failed, still serving"));
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap().trim(),
        p.pid().to_string()
    );
    let r = request(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let _ = std::fs::remove_file(&pid);
}

#[test]
fn the_status_page_shows_servers_live_and_drains_behind_the_token() {
    let Some(chromium) = browser_unless_skipped() else {
        return;
    };
    let (a, b) = (Origin::start(), Origin::start());
    let token = "s3cret-token-0123456789";
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\
         [upstreams.app]\nservers = [\"{}\", \"{}\"]\n[[routes]]\nupstream = \"app\"\nname = \"main\"\n",
        a.addr, b.addr
    );
    let p = Proxy::start(&cfg);
    let admin = admin_addr(&p);
    for _ in 0..6 {
        assert!(curl(&[&format!("http://{}/", p.addr)]).0);
    }
    let profile = temp_path("chromium-status");
    let _ = std::fs::remove_dir_all(&profile);
    let artefacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let shot = artefacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(chromium)
            .args(QUIET_BROWSER)
            .args([
                &format!("--user-data-dir={}", profile.display()),
                // Anything not on loopback goes to a proxy that is not there, and no name is
                // resolved: the page is the only thing the browser reaches.
                "--proxy-server=http://127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--virtual-time-budget=4000",
                "--window-size=1200,700",
            ])
            .args(extra)
            .arg(format!("http://{admin}/"))
            .output()
            .expect("run chromium");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"]);
    assert!(dom.contains("<title>ringway status</title>"), "{dom}");
    assert!(dom.contains("config version 1"), "{dom}");
    assert!(dom.contains(&format!("<td>{}</td>", a.addr)), "{dom}");
    assert!(dom.contains(&format!("<td>{}</td>", b.addr)), "{dom}");
    assert!(dom.contains("<td class=\"up\">up</td>"), "{dom}");
    assert!(dom.contains("<td>main</td>"), "{dom}");
    assert!(dom.contains(">drain</button>"), "{dom}");

    // Draining needs the token; with it, the server takes no new request.
    let drain = format!("http://{admin}/servers/drain?group=app&server={}", a.addr);
    let (ok, body) = curl(&["-X", "POST", "-w", " %{http_code}", &drain]);
    assert!(ok);
    assert!(
        String::from_utf8_lossy(&body).ends_with(" 401"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let auth = format!("Authorization: Bearer {token}");
    let (ok, body) = curl(&["-X", "POST", "-H", &auth, &drain]);
    assert!(ok);
    assert!(String::from_utf8_lossy(&body).contains("\"drained\":true"));
    let before = a.seen().len();
    for _ in 0..6 {
        assert!(curl(&[&format!("http://{}/", p.addr)]).0);
    }
    assert_eq!(
        a.seen().len(),
        before,
        "a drained server gets no new request"
    );
    let dom = run(&["--dump-dom"]);
    assert!(dom.contains("<td class=\"draining\">drained</td>"), "{dom}");
    assert!(dom.contains(">undrain</button>"), "{dom}");
    let _ = run(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "a screenshot was taken"
    );
    let undrain = format!("http://{admin}/servers/undrain?group=app&server={}", a.addr);
    let (ok, _) = curl(&["-X", "POST", "-H", &auth, &undrain]);
    assert!(ok);
    let before = a.seen().len();
    for _ in 0..6 {
        assert!(curl(&[&format!("http://{}/", p.addr)]).0);
    }
    assert!(a.seen().len() > before);
    let (_, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-w",
        " %{http_code}",
        &format!("http://{admin}/servers/drain?group=app&server=127.0.0.1:1"),
    ]);
    assert!(String::from_utf8_lossy(&body).ends_with(" 404"));
    let _ = std::fs::remove_dir_all(&profile);
}

#[test]
fn the_access_log_goes_to_syslog_one_datagram_per_line() {
    let origin = Origin::start();
    let sock = temp_path("syslog.sock");
    let _ = std::fs::remove_file(&sock);
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let cfg = config_for(
        origin.addr,
        &format!(
            "[access_log]\npath = \"syslog:{}\"\nformat = \"$status $request\"\n",
            sock.display()
        ),
    );
    let p = Proxy::start(&cfg);
    for path in ["/one", "/two"] {
        assert!(curl(&[&format!("http://{}{path}", p.addr)]).0);
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).expect("a datagram");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        got,
        [
            "<190>ringway: 200 GET /one HTTP/1.1",
            "<190>ringway: 200 GET /two HTTP/1.1"
        ]
    );
    let _ = std::fs::remove_file(&sock);
}
