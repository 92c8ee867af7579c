//! The command line: config checking, startup errors, quick mode.

mod support;

use std::process::Command;

use support::*;

#[test]
fn check_accepts_the_shipped_examples() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check(&path);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
        }
    }
}

fn check(config: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn check_names_file_line_and_key() {
    let f = TempFile::new(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"nope\"\n",
    );
    let out = check(&f.0);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:6: routes[0].upstream: no upstream named \"nope\"",
        f.0.display()
    );
    assert!(err.contains(&want), "{err}");

    let f = TempFile::new("[server]\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n");
    let out = check(&f.0);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":3: server.bogus: unknown field `bogus`"),
        "{err}"
    );
}

#[test]
fn missing_config_and_port_in_use_fail_before_starting() {
    let out = Command::new(bin())
        .args(["--config", "/nonexistent/ringway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/ringway.toml: cannot read config"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(bin())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            "127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");

    let out = Command::new(bin()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --config FILE"));
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--upstream",
        "--workers",
        "--cpus",
        "--no-pin",
        "--log-level",
        "--forward",
        "--anonymity",
        "--connect-ports",
        "--safe-ports",
        "--resolver",
        "--deny-domain",
        "--proxy-auth",
        "--admin",
        "check",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn quick_mode_needs_no_file() {
    let origin = Origin::start();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(bin())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &origin.addr.to_string(),
            "--workers",
            "1",
            "--no-pin",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let r = {
        use std::io::{Read, Write};
        let mut s = connect_when_up(port, "quick mode");
        s.write_all(b"GET /q HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok /q"), "{r}");
}

#[test]
fn a_restart_right_after_a_stop_gets_its_port() {
    let origin = Origin::start();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = config_for(origin.addr, "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    for round in 0..6 {
        let mut p = Proxy::start(&cfg);
        let r = request(
            p.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.map(|r| r.status), Some(200), "round {round}");
        p.signal(libc::SIGTERM);
        let status = p.wait_exit(std::time::Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "round {round}");
    }
}

#[test]
fn quick_mode_admin_flag_serves_the_status_on_loopback_only() {
    let origin = Origin::start();
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (port, admin) = (free(), free());
    // Not on a public address.
    let out = Command::new(bin())
        .args([
            "--upstream",
            &origin.addr.to_string(),
            "--admin",
            "0.0.0.0:9901",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--admin \"0.0.0.0:9901\": expected a loopback address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bare port is loopback's.
    let mut child = Command::new(bin())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &origin.addr.to_string(),
            "--admin",
            &admin.to_string(),
            "--workers",
            "1",
            "--no-pin",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let r = {
        use std::io::{Read, Write};
        let mut s = connect_when_up(admin, "the admin listener");
        s.write_all(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        r.starts_with("HTTP/1.1 200 OK")
            && r.contains("application/json")
            && r.contains("\"upstreams\""),
        "{r}"
    );
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let origin = Origin::start();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Started with a small soft limit, as a shell's default 1024 would be.
    let script = format!(
        "ulimit -Sn 256 && exec \"$0\" --listen 127.0.0.1:{port} --upstream {} --workers 1 --no-pin",
        origin.addr
    );
    let mut child = Command::new("sh")
        .args(["-c", &script, bin()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(connect_when_up(port, "ringway"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  SOFT  HARD  files"
    let (soft, hard) = (v[3], v[4]);
    assert_eq!(soft, hard, "{line}");
    assert_ne!(soft, "256", "{line}");
}

/// A connection to 127.0.0.1:`port` once the process that will listen there does: polled
/// every 20 ms, for at most 10 s (`what` names it when it never comes up).
fn connect_when_up(port: u16, what: &str) -> std::net::TcpStream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `Type=notify`: READY=1 once listening, RELOADING=1 then READY=1 around a reload, STOPPING=1
/// when a stop begins, each a datagram to $NOTIFY_SOCKET.
#[test]
fn systemd_is_told_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("ringway-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let cfg = TempFile::new(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n[[routes]]\nrespond = { status = 200, body = \"ok\" }\n",
    );
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&cfg.0)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nMAINPID=") && ready.ends_with(&child.id().to_string()),
        "{ready:?}"
    );
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(next(), "READY=1");
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(next(), "STOPPING=1");
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
