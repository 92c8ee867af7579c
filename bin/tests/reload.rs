//! Hot reload: new routes and upstreams for new requests, nothing dropped.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn config(upstream: std::net::SocketAddr, pid: &std::path::Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\npin = false\npid_file = \"{}\"\n\
         [upstreams.app]\nservers = [\"{upstream}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n{extra}",
        pid.display()
    )
}

/// Waits (bounded) until `o` has received nothing new for a while; returns its request count.
/// Used after a reload that removes `o`: workers pick a reload up within one 50 ms tick, and
/// requests already in flight to `o` still complete.
fn quiet(o: &Origin) -> usize {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let n = o.seen().len();
        std::thread::sleep(Duration::from_millis(300));
        if o.seen().len() == n {
            return n;
        }
        assert!(
            Instant::now() < end,
            "origin never went quiet after the reload"
        );
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reload_switches_upstreams_under_load_without_failures() {
    let a = Origin::start();
    let b = Origin::start();
    let pid = std::env::temp_dir().join(format!("ringway-reload-{}.pid", std::process::id()));
    let proxy = Proxy::start(&config(a.addr, &pid, ""));
    let addr = proxy.addr;
    let cfg_path = proxy.config.as_ref().unwrap().0.clone();

    // Steady load: 4 keep-alive clients, bounded in time and count.
    let load = SteadyLoad::start(addr, 4, "/load");
    wait_for("load on A", || a.seen().len() > 50);

    // A slow request in flight on A while the config changes.
    let slow =
        std::thread::spawn(move || request(addr, b"GET /slow/1000 HTTP/1.1\r\nHost: t\r\n\r\n"));
    wait_for("slow request at A", || {
        a.seen().iter().any(|s| s.path == "/slow/1000")
    });

    std::fs::write(
        &cfg_path,
        config(
            b.addr,
            &pid,
            "[[routes]]\npath = \"/new\"\nrespond = { status = 200, body = \"v2\" }\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["reload", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("load on B", || b.seen().len() > 50);
    // Every worker has the new routes (each installs a reload when woken for it).
    for _ in 0..20 {
        assert_eq!(
            request(addr, b"GET /new HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap()
                .text(),
            "v2"
        );
    }
    let r = slow
        .join()
        .unwrap()
        .expect("in-flight request survives the reload");
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));

    // An invalid config is rejected; the running one stays.
    std::fs::write(
        &cfg_path,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["reload", "--config"])
        .arg(&cfg_path)
        .arg("--pid-file")
        .arg(&pid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not reloading"));
    proxy.signal(libc::SIGHUP);
    wait_for("rejection logged", || {
        proxy.log.lock().unwrap().contains("reload rejected")
    });
    let before = b.seen().len();
    wait_for("still serving from B", || b.seen().len() > before + 20);

    let (ok, failed) = load.finish();
    assert!(ok > 100);
    assert_eq!(failed, 0, "requests failed during reloads");
    assert!(pid.exists());
    drop(proxy);
    let _ = std::fs::remove_file(&pid);
}

/// Servers added, removed, drained and one killed, all under steady load: no client request
/// fails (the killed server's in-flight and pooled requests are idempotent GETs without a body,
/// so they are retried on another server).
#[test]
fn fleet_changes_under_load_lose_nothing() {
    let o: Vec<Origin> = (0..4).map(|_| Origin::start()).collect();
    let pid = std::env::temp_dir().join(format!("ringway-fleet-{}.pid", std::process::id()));
    let servers = |list: &[String]| list.join(", ");
    let a = |i: usize| format!("\"{}\"", o[i].addr);
    let cfg = |list: &[String]| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\npin = false\npid_file = \"{}\"\n\
             [upstreams.app]\nservers = [{}]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
            pid.display(),
            servers(list)
        )
    };
    let proxy = Proxy::start(&cfg(&[a(0), a(1), a(2)]));
    let addr = proxy.addr;
    let path = proxy.config.as_ref().unwrap().0.clone();
    let load = SteadyLoad::start(addr, 4, "/fleet");
    let reload = |list: &[String]| {
        std::fs::write(&path, cfg(list)).unwrap();
        proxy.signal(libc::SIGHUP);
    };
    let grows = |i: usize| {
        let n = o[i].seen().len();
        wait_for("traffic", || o[i].seen().len() > n + 30);
    };
    grows(0);
    // Add D.
    reload(&[a(0), a(1), a(2), a(3)]);
    grows(3);
    // Remove A.
    reload(&[a(1), a(2), a(3)]);
    let a_after = quiet(&o[0]);
    grows(1);
    assert_eq!(
        o[0].seen().len(),
        a_after,
        "A still gets new requests after removal"
    );
    // Drain B (down = true).
    reload(&[format!("{{ addr = {}, down = true }}", a(1)), a(2), a(3)]);
    let b_after = quiet(&o[1]);
    grows(2);
    assert_eq!(
        o[1].seen().len(),
        b_after,
        "B still gets new requests while drained"
    );
    // Kill C outright.
    o[2].kill();
    grows(3);
    grows(3);
    let (ok, failed) = load.finish();
    assert!(ok > 200);
    assert_eq!(failed, 0, "client requests failed");
    drop(proxy);
    let _ = std::fs::remove_file(&pid);
}

/// A stale pid file that names another program: `ringway reload` refuses to signal it.
#[test]
fn reload_never_signals_a_process_that_is_not_ringway() {
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let pid = TempFile::new(&other.id().to_string());
    let cfg = TempFile::new(&format!(
        "[server]\npid_file = \"{}\"\n[[routes]]\nrespond = {{ status = 200 }}\n",
        pid.0.display()
    ));
    let out = std::process::Command::new(bin())
        .args(["reload", "--config"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a running ringway"), "{err}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was signalled"
    );
    let _ = other.kill();
    let _ = other.wait();
}

/// A reload whose file changes `listen` says, every time, that the old address is still served.
#[test]
fn a_listen_change_is_reported_on_every_reload() {
    let origin = Origin::start();
    let pid = std::env::temp_dir().join(format!("ringway-listen-{}.pid", std::process::id()));
    let proxy = Proxy::start(&config(origin.addr, &pid, ""));
    let changed = config(origin.addr, &pid, "").replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&proxy.config.as_ref().unwrap().0, changed).unwrap();
    for n in 1..=2 {
        proxy.signal(libc::SIGHUP);
        proxy.wait_log(|l| l.matches("server.listen changed").count() >= n);
    }
    assert_eq!(
        request(proxy.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .status,
        200
    );
    let _ = std::fs::remove_file(&pid);
}
