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
