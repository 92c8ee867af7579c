//! The forward proxy with real clients: curl through `-x` (absolute form) and `-p` (CONNECT
//! tunnels), raw sockets for what curl will not send.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

fn forward_config(extra: &str) -> String {
    format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", forward = true }}]\nworkers = 1\npin = false\n\
         shutdown_timeout = \"5s\"\n{extra}"
    )
}

/// Sends raw bytes on a fresh connection and reads until the proxy closes or 5 s pass.
fn raw(proxy: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough for these tests, unless it opened a tunnel.
                if let Some(r) = complete(&out) {
                    if !r.starts_with("HTTP/1.1 200 Connection established") {
                        return r;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// curl through the proxy at `px` (support's `curl` bypasses proxies with `--noproxy`).
fn curl_via(px: &str, args: &[&str]) -> (bool, Vec<u8>) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-x", px])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .expect("curl is installed");
    (out.status.success(), out.stdout)
}

/// The response in `out` when its head and Content-Length body are all there.
fn complete(out: &[u8]) -> Option<String> {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    (out.len() >= end + len).then(|| String::from_utf8_lossy(out).into_owned())
}

#[test]
fn curl_gets_pages_through_the_forward_proxy_with_the_uri_authority_as_host() {
    let origin = Origin::start();
    let proxy = Proxy::start(&forward_config(""));
    let px = format!("http://{}", proxy.addr);
    let url = format!("http://{}/len/10", origin.addr);
    let (ok, body) = curl_via(&px, &[&url]);
    assert!(ok);
    assert_eq!(body.len(), 10);
    let via = origin
        .seen
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .header("via")
        .map(str::to_string);
    assert_eq!(
        via.as_deref(),
        Some("1.1 ringway"),
        "curl went through the proxy"
    );
    // A client that sends another Host gets the URI's authority upstream (RFC 9112 §3.2.2).
    let req = format!(
        "GET http://{}/h HTTP/1.1\r\nHost: evil.example\r\nProxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic dTpw\r\nConnection: close\r\n\r\n",
        origin.addr
    );
    let r = raw(proxy.addr, req.as_bytes());
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = origin.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.header("host"), Some(origin.addr.to_string().as_str()));
    assert_eq!(seen.path, "/h");
    assert!(seen.header("proxy-connection").is_none());
    assert!(
        seen.header("proxy-authorization").is_none(),
        "credentials never go on"
    );
    // Transparent by default: Via and the client's address.
    assert_eq!(seen.header("via"), Some("1.1 ringway"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn anonymity_levels_decide_what_the_destination_learns() {
    let origin = Origin::start();
    let sent = "GET http://{A}/anon HTTP/1.1\r\nHost: x\r\nVia: 1.1 earlier-proxy\r\n\
                X-Forwarded-For: 10.9.8.7\r\nForwarded: for=10.9.8.7\r\nX-Real-IP: 10.9.8.7\r\n\
                X-Client-IP: 10.9.8.7\r\nTrue-Client-IP: 10.9.8.7\r\nCF-Connecting-IP: 10.9.8.7\r\n\
                X-Originating-IP: 10.9.8.7\r\nX-Forwarded-Server: 10.9.8.7\r\n\
                Connection: close\r\n\r\n"
        .replace("{A}", &origin.addr.to_string());
    for (level, via, xff) in [
        (
            "transparent",
            Some("1.1 earlier-proxy, 1.1 ringway"),
            Some("10.9.8.7, 127.0.0.1"),
        ),
        ("anonymous", Some("1.1 ringway"), None),
        ("elite", None, None),
    ] {
        let proxy = Proxy::start(&forward_config(&format!(
            "[forward]\nanonymity = \"{level}\"\n"
        )));
        let r = raw(proxy.addr, sent.as_bytes());
        assert!(r.starts_with("HTTP/1.1 200"), "{level}: {r}");
        // Elite shows no proxy to the client either.
        let head = r.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert_eq!(head.contains("\r\nvia:"), level != "elite", "{level}: {r}");
        let seen = origin.seen.lock().unwrap().last().cloned().unwrap();
        let joined = |name: &str| {
            let v: Vec<&str> = seen
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
            (!v.is_empty()).then(|| v.join(", "))
        };
        assert_eq!(joined("via").as_deref(), via, "{level}");
        assert_eq!(joined("x-forwarded-for").as_deref(), xff, "{level}");
        if level != "transparent" {
            assert!(seen.header("forwarded").is_none(), "{level}");
            assert!(seen.header("x-real-ip").is_none(), "{level}");
            // Nothing of the client's address, nor of what the client claimed.
            for (n, v) in &seen.headers {
                if !n.eq_ignore_ascii_case("host") {
                    assert!(
                        !v.contains("127.0.0.1") && !v.contains("10.9.8.7"),
                        "{level}: {n}: {v}"
                    );
                }
            }
        }
    }
}

#[test]
fn connect_tunnels_carry_any_protocol_and_respect_the_port_list() {
    let origin = Origin::start();
    let port = origin.addr.port();
    let proxy = Proxy::start(&forward_config(&format!(
        "[forward]\nconnect_ports = [443, {port}]\n"
    )));
    let px = format!("http://{}", proxy.addr);
    // curl -p: CONNECT, then plain HTTP inside the tunnel, twice on one connection.
    let url = format!("http://{}/len/5", origin.addr);
    let (ok, body) = curl_via(&px, &["-p", &url, &url]);
    assert!(ok);
    assert_eq!(body.len(), 10);
    // curl really tunnels through the proxy: a port off the list fails the same way.
    let off_list = "http://127.0.0.1:9/".to_string();
    let (ok, _) = curl_via(&px, &["-p", &off_list]);
    assert!(!ok, "CONNECT to port 9 must be refused");
    // Bytes sent right after the CONNECT head (before the 200) reach the destination too.
    let req = format!(
        "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\nGET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        a = origin.addr
    );
    let r = raw(proxy.addr, req.as_bytes());
    assert!(
        r.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK"),
        "{r}"
    );
    assert!(r.ends_with("ok /early"), "{r}");
    // A port not in the list: 403, naming the port.
    let r = raw(
        proxy.addr,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("port 22"), "{r}");
    // Garbage authorities: 400.
    for bad in [
        "CONNECT :443 HTTP/1.1",
        "CONNECT host:0 HTTP/1.1",
        "CONNECT host HTTP/1.1",
        "CONNECT a@b:443 HTTP/1.1",
    ] {
        let r = raw(proxy.addr, format!("{bad}\r\nHost: x\r\n\r\n").as_bytes());
        assert!(r.starts_with("HTTP/1.1 400"), "{bad}: {r}");
    }
    // A closed port: 502, and the proxy goes on serving.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy2 = Proxy::start(&forward_config(
        "[forward]\nconnect_ports = [\"1-65535\"]\n",
    ));
    let r = raw(
        proxy2.addr,
        format!("CONNECT {closed} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    let (ok, _) = curl_via(&format!("http://{}", proxy2.addr), &["-p", &url]);
    assert!(ok);
}

#[test]
fn a_client_closing_mid_tunnel_ends_it() {
    let origin = Origin::start();
    let port = origin.addr.port();
    let proxy = Proxy::start(&forward_config(&format!(
        "[forward]\nconnect_ports = [{port}]\ntunnel_idle = \"1s\"\n"
    )));
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.write_all(
            format!(
                "CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\nGET /slow/2000 HTTP/1.1\r\n",
                origin.addr
            )
            .as_bytes(),
        )
        .unwrap();
        drop(s);
    }
    // The idle tunnel to a destination that never answers is closed after tunnel_idle.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", origin.addr).as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let started = std::time::Instant::now();
    let _ = s.read_to_end(&mut got);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after the idle timeout"
    );
    // Still serving.
    let url = format!("http://{}/len/3", origin.addr);
    assert!(curl_via(&format!("http://{}", proxy.addr), &["-p", &url]).0);
}

#[test]
fn denied_domains_private_destinations_and_wrong_forms_get_clear_answers() {
    let origin = Origin::start();
    let port = origin.addr.port();
    let proxy = Proxy::start(&forward_config(
        "[forward]\ndeny_domains = [\"localhost\", \".blocked.test\"]\n",
    ));
    let r = raw(
        proxy.addr,
        format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("deny_domains: localhost"), "{r}");
    let r = raw(
        proxy.addr,
        b"GET http://a.b.blocked.test/ HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(r.contains("deny_domains: .blocked.test"), "{r}");
    assert!(origin.seen.lock().unwrap().is_empty());
    // Origin form and https URIs are not for a forward proxy.
    let r = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(
        proxy.addr,
        format!("GET https://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // A name that does not resolve: 502 naming it.
    let r = raw(
        proxy.addr,
        b"GET http://no-such-host.invalid/ HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(r.contains("no-such-host.invalid"), "{r}");

    // With private destinations denied, loopback is out of reach by address and by name.
    let strict = Proxy::start(&forward_config(
        "[forward]\nprivate_destinations = \"deny\"\nconnect_ports = [\"1-65535\"]\n",
    ));
    for target in [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
    ] {
        let r = raw(
            strict.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert!(r.starts_with("HTTP/1.1 403"), "{target}: {r}");
        assert!(r.contains("private address"), "{r}");
    }
    let r = raw(
        strict.addr,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(origin.seen.lock().unwrap().is_empty());
}

#[test]
fn quick_mode_forward_proxy() {
    let origin = Origin::start();
    let proxy = Proxy::start_quick(&[
        "--forward",
        "--anonymity",
        "elite",
        "--deny-domain",
        ".blocked.test",
    ]);
    let px = format!("http://{}", proxy.addr);
    let (ok, body) = curl_via(&px, &[&format!("http://{}/len/4", origin.addr)]);
    assert!(ok);
    assert_eq!(body.len(), 4);
    let seen = origin.seen.lock().unwrap().last().cloned().unwrap();
    assert!(seen.header("via").is_none() && seen.header("x-forwarded-for").is_none());
    let (_, code) = curl_via(
        &px,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://x.blocked.test/",
        ],
    );
    assert_eq!(code, b"403");
    let r = raw(
        proxy.addr,
        b"GET http://x.blocked.test/ HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    proxy.wait_log(|l| l.contains("(forward proxy)"));
}

/// An htpasswd file written by Apache's own tool when it is installed (CI installs
/// apache2-utils), else the same kinds from fixed vectors (openssl passwd, bcrypt's reference).
fn htpasswd_file() -> TempFile {
    let made = |flag: &str, user: &str, pass: &str| -> Option<String> {
        let out = std::process::Command::new("htpasswd")
            .args(["-nb", flag, user, pass])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let lines: Vec<String> = match (
        made("-m", "alice", "wonder:land"),
        made("-B", "bob", "bu1lder"),
        made("-2", "carol", "s3cret"),
        made("-5", "dave", "pässwort"),
    ) {
        (Some(a), Some(b), c, d) => [Some(a), Some(b), c, d].into_iter().flatten().collect(),
        _ => vec![
            // openssl passwd -apr1 -salt r31..... wonder:land
            "alice:$apr1$r31.....$l8oAsdMNVfxmize/vVIc80".into(),
        ],
    };
    TempFile::new(&(lines.join("\n") + "\n"))
}

#[test]
fn proxy_authentication_with_an_htpasswd_file() {
    let origin = Origin::start();
    let port = origin.addr.port();
    let file = htpasswd_file();
    let proxy = Proxy::start(&forward_config(&format!(
        "[forward]\nauth_file = \"{}\"\nconnect_ports = [{port}]\n",
        file.0.display()
    )));
    let px = format!("http://{}", proxy.addr);
    let url = format!("http://{}/len/7", origin.addr);
    let code = |args: &[&str]| -> String {
        let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend_from_slice(args);
        String::from_utf8(curl_via(&px, &a).1).unwrap()
    };
    // Without credentials, or with wrong ones: 407 and a Basic challenge.
    assert_eq!(code(&[&url]), "407");
    assert_eq!(code(&["--proxy-user", "alice:wrong", &url]), "407");
    assert_eq!(code(&["--proxy-user", "nobody:x", &url]), "407");
    let r = raw(
        proxy.addr,
        format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert!(
        r.contains("Proxy-Authenticate: Basic realm=\"ringway\", charset=\"UTF-8\"\r\n"),
        "{r}"
    );
    // The right ones pass (a colon in the password is fine); every kind in the file works.
    assert_eq!(code(&["--proxy-user", "alice:wonder:land", &url]), "200");
    let text = std::fs::read_to_string(&file.0).unwrap();
    for (user, pass) in [
        ("bob", "bu1lder"),
        ("carol", "s3cret"),
        ("dave", "pässwort"),
    ] {
        if text.contains(&format!("{user}:")) {
            let creds = format!("{user}:{pass}");
            assert_eq!(code(&["--proxy-user", &creds, &url]), "200", "{user}");
        }
    }
    // Through a CONNECT tunnel too.
    assert_eq!(
        code(&["-p", "--proxy-user", "alice:wonder:land", &url]),
        "200"
    );
    // The credentials never reach the destination.
    assert!(origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.header("proxy-authorization").is_none()));
    // Malformed credentials: 400.
    let r = raw(
        proxy.addr,
        format!("GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic !!notbase64\r\n\r\n")
            .as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Guessing is limited per client: after 10 wrong tries, 429 for a minute, even for
    // a right password not seen before from it.
    // (Two wrong tries were made above.)
    for _ in 0..8 {
        assert_eq!(code(&["--proxy-user", "bob:guess", &url]), "407");
    }
    assert_eq!(code(&["--proxy-user", "bob:guess", &url]), "429");
    // Credentials that already passed keep working.
    assert_eq!(code(&["--proxy-user", "alice:wonder:land", &url]), "200");
}

#[test]
fn a_bad_htpasswd_file_is_a_clear_error() {
    let file = TempFile::new("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
    let cfg = TempFile::new(&forward_config(&format!(
        "[forward]\nauth_file = \"{}\"\n",
        file.0.display()
    )));
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":1: user \"alice\": unsalted SHA-1"), "{err}");
}

#[test]
fn access_rules_are_evaluated_in_order() {
    let origin = Origin::start();
    let a = origin.addr;
    let proxy = Proxy::start(&forward_config(
        "[[forward.rules]]\naction = \"deny\"\ndomains = [\"~^secret\\\\.\"]\n\n\
         [[forward.rules]]\naction = \"deny\"\nmethods = [\"post\"]\n\n\
         [[forward.rules]]\naction = \"allow\"\nclients = [\"127.0.0.0/8\", \"::1\"]\n",
    ));
    let get = |target: &str, method: &str| {
        raw(
            proxy.addr,
            format!("{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
    };
    let r = get("http://secret.example/", "GET");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("denied by forward.rules[0]"), "{r}");
    let r = get(&format!("http://{a}/p"), "POST");
    assert!(r.contains("denied by forward.rules[1]"), "{r}");
    let r = get(&format!("http://{a}/p"), "GET");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // Rules on the destination's address apply after resolution, to every address of a name.
    let by_ip = Proxy::start(&forward_config(
        "[[forward.rules]]\naction = \"deny\"\ndest_ips = [\"127.0.0.0/8\", \"::1\"]\n",
    ));
    for target in [
        format!("http://localhost:{}/", a.port()),
        format!("http://{a}/"),
    ] {
        let r = raw(
            by_ip.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert!(r.contains("denied by forward.rules[0]"), "{target}: {r}");
    }
    assert_eq!(origin.seen.lock().unwrap().len(), 1);
}

#[test]
fn bad_rules_are_config_errors_naming_the_key() {
    for (rules, key) in [
        ("action = \"maybe\"", "forward.rules[0].action"),
        (
            "action = \"deny\"\ndomains = [\"~(unclosed\"]",
            "forward.rules[0].domains[0]",
        ),
        (
            "action = \"deny\"\nclients = [\"10.0.0.0/40\"]",
            "forward.rules[0].clients[0]",
        ),
        (
            "action = \"deny\"\nports = [0]",
            "forward.rules[0].ports[0]",
        ),
        (
            "action = \"deny\"\nmethods = [\"GE T\"]",
            "forward.rules[0].methods[0]",
        ),
        ("action = \"deny\"\nwhat = 1", "forward.rules[0]"),
    ] {
        let cfg = TempFile::new(&forward_config(&format!("[[forward.rules]]\n{rules}\n")));
        let out = std::process::Command::new(bin())
            .args(["check", "--config"])
            .arg(&cfg.0)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{rules}: {err}");
    }
}

#[test]
fn a_100k_domain_blocklist_is_read_at_start_and_again_on_reload() {
    let origin = Origin::start();
    let mut list = String::from("# generated\n");
    for i in 0..100_000 {
        list.push_str(&format!("host{i}.blocked.example\n"));
    }
    list.push_str("localhost\n");
    let file = TempFile::new(&list);
    let proxy = Proxy::start(&forward_config(&format!(
        "[forward]\nblocklist = \"{}\"\n",
        file.0.display()
    )));
    let target = format!("http://localhost:{}/", origin.addr.port());
    let ask = |t: &str| {
        raw(
            proxy.addr,
            format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    };
    let r = ask(&target);
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("deny_domains: localhost"),
        "{r}"
    );
    let r = ask("http://host99999.blocked.example/");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // The list changes; a reload reads it again.
    std::fs::write(&file.0, "host1.blocked.example\n").unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_log(|l| l.contains("reloaded:"));
    // Workers pick the new configuration up within 50 ms: ask until they have (5 s at most).
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let mut r = ask(&target);
    while !r.starts_with("HTTP/1.1 200") && std::time::Instant::now() < end {
        r = ask(&target);
    }
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[test]
fn max_forwards_on_trace_and_options() {
    let origin = Origin::start();
    let proxy = Proxy::start(&forward_config(""));
    let a = origin.addr;
    let r = raw(
        proxy.addr,
        format!("OPTIONS http://{a}/ HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n").as_bytes(),
    );
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\nAllow: GET, HEAD, POST"),
        "{r}"
    );
    let r = raw(
        proxy.addr,
        format!(
            "TRACE http://{a}/t HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nCookie: s=1\r\n\
             Proxy-Authorization: Basic dTpw\r\nX-Mine: yes\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(r.contains("Content-Type: message/http\r\n"), "{r}");
    assert!(
        r.contains(&format!("TRACE http://{a}/t HTTP/1.1\r\n")),
        "{r}"
    );
    assert!(r.contains("X-Mine: yes\r\n"), "{r}");
    assert!(
        !r.contains("Cookie") && !r.contains("dTpw"),
        "secrets are not echoed: {r}"
    );
    assert!(origin.seen.lock().unwrap().is_empty());
    // A count above zero goes down by one on the way.
    let r = raw(
        proxy.addr,
        format!("OPTIONS http://{a}/o HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\n\r\n").as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = origin.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.header("max-forwards"), Some("4"));
}

/// A server that answers `ok` and records the address each connection came from.
fn peer_recorder() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>,
) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let p2 = peers.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            p2.lock().unwrap().push(s.peer_addr().unwrap().ip());
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (addr, peers)
}

#[test]
fn connections_leave_from_the_outgoing_address() {
    let (origin, peers) = peer_recorder();
    let users = TempFile::new(
        "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\nbob:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n",
    );
    let proxy = Proxy::start(&forward_config(&format!(
        "[forward]\nauth_file = \"{}\"\noutgoing_address = [\"::1\", \"127.0.0.2\"]\n\
         [forward.outgoing_by_user]\nalice = \"127.0.0.3\"\n",
        users.0.display()
    )));
    for (user, want) in [("bob", "127.0.0.2"), ("alice", "127.0.0.3")] {
        let creds = format!("{user}:myPassword");
        let (ok, body) = curl_via(
            &format!("http://{}", proxy.addr),
            &["--proxy-user", &creds, &format!("http://{origin}/")],
        );
        assert!(ok && body == b"ok", "{user}");
        assert_eq!(
            peers.lock().unwrap().last().unwrap().to_string(),
            want,
            "{user}"
        );
    }
}

#[test]
fn a_headless_browser_loads_a_page_through_the_forward_proxy() {
    let Some(chromium) = browser_unless_skipped() else {
        return;
    };
    let origin = Origin::start();
    // Only the test's origin may be reached: the browser's own background requests (updates,
    // accounts, safe browsing) are denied before any name is resolved.
    let proxy = Proxy::start(&forward_config(
        "[[forward.rules]]\naction = \"allow\"\ndomains = [\"~^127\\\\.0\\\\.0\\\\.1$\"]\n",
    ));
    let profile = std::env::temp_dir().join(format!("ringway-chromium-{}", std::process::id()));
    let shot = profile.join("shot.png");
    let url = format!("http://{}/page-through-the-proxy", origin.addr);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(chromium)
            .args(QUIET_BROWSER)
            .args([
                &format!("--user-data-dir={}", profile.display()),
                &format!("--proxy-server=http://{}", proxy.addr),
                // Chromium sends loopback addresses direct unless told otherwise.
                "--proxy-bypass-list=<-loopback>",
                "--window-size=640,400",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"]);
    assert!(dom.contains("ok /page-through-the-proxy"), "{dom}");
    let _ = run(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 1000,
        "a screenshot was taken"
    );
    let seen = origin.seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|s| s.header("via") == Some("1.1 ringway")),
        "every request of the browser went through the proxy"
    );
    drop(seen);
    let _ = std::fs::remove_dir_all(&profile);
}

#[test]
fn http10_clients_keep_the_connection_with_proxy_connection() {
    let origin = Origin::start();
    let proxy = Proxy::start(&forward_config(""));
    let mut c = Client::connect(proxy.addr);
    for i in 0..3 {
        c.send(
            format!(
                "GET http://{}/n/{i} HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n",
                origin.addr
            )
            .as_bytes(),
        );
        let r = c.response("GET").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.text(), format!("ok /n/{i}"));
    }
    // Without it, HTTP/1.0 closes after the response.
    c.send(format!("GET http://{}/last HTTP/1.0\r\n\r\n", origin.addr).as_bytes());
    assert_eq!(c.response("GET").unwrap().status, 200);
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn a_client_that_stops_reading_does_not_hold_a_tunnel() {
    // A destination that sends without end to a client that never reads.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let chunk = vec![b'z'; 64 * 1024];
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < end && s.write_all(&chunk).is_ok() {}
        let _ = tx.send(());
    });
    let proxy = Proxy::start(&forward_config(&format!(
        "[forward]\nconnect_ports = [{}]\ntunnel_idle = \"1s\"\n",
        dest.port()
    )));
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    // The proxy gives up on the tunnel after the idle time: the destination's writes fail
    // (its connection is closed) long before its own 20 s.
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the tunnel was closed"
    );
    drop(c);
}

#[test]
fn megabytes_cross_a_tunnel_both_ways_intact() {
    let origin = Origin::start();
    let port = origin.addr.port();
    let proxy = Proxy::start(&forward_config(&format!(
        "[forward]\nconnect_ports = [{port}]\n"
    )));
    // 3 MiB that no reordering or loss could leave unchanged.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let file = support::TempFile::new("");
    std::fs::write(&file.0, &data).unwrap();
    let px = format!("http://{}", proxy.addr);
    let url = format!("http://{}/sum", origin.addr);
    let upload = format!("@{}", file.0.display());
    let (ok, body) = curl_via(&px, &["-p", "--data-binary", &upload, &url]);
    assert!(ok);
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{} {sum}", data.len())
    );
    let url = format!("http://{}/len/{}", origin.addr, 3 << 20);
    let (ok, body) = curl_via(&px, &["-p", &url]);
    assert!(ok);
    assert_eq!(body.len(), 3 << 20);
    assert!(body.iter().all(|&b| b == b'x'));
}

/// An origin that authenticates connections as NTLM does: a connection that carried
/// `Authorization: NTLM <user>` serves that user's page to every later request on it; any
/// other request gets 401 with an NTLM challenge.
fn ntlm_origin() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut user: Option<String> = None;
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut b = [0u8; 4096];
                        match c.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    for line in head.lines() {
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("authorization: ntlm ") {
                            user = Some(v.trim().to_string());
                        }
                    }
                    let big = head.starts_with("GET /big ") || head.contains("/big HTTP/1.1");
                    let out = match &user {
                        // `/big`: 300 KB (spliced to its exact end), then bytes no request
                        // asked for, in the same write.
                        Some(u) if big => format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n{}HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray",
                            u.chars().next().unwrap_or('x').to_string().repeat(300_000)
                        ),
                        Some(u) => {
                            let body = format!("page of {u}");
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                        }
                        None => "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n".to_string(),
                    };
                    if c.write_all(out.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends one request on `c` and reads its (Content-Length framed) response.
fn exchange_on(c: &mut TcpStream, req: &str) -> String {
    c.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while complete(&out).is_none() {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn connection_bound_logins_stay_with_their_client() {
    let origin = ntlm_origin();
    let forward = Proxy::start(&forward_config(""));
    let reverse = Proxy::start(&config_for(origin, ""));
    for (p, target) in [
        (&forward, format!("http://{origin}/")),
        (&reverse, "/".to_string()),
    ] {
        let mut alice = TcpStream::connect(p.addr).unwrap();
        alice
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let r = exchange_on(
            &mut alice,
            &format!(
                "GET {target} HTTP/1.1\r\nHost: {origin}\r\nAuthorization: NTLM alice\r\n\r\n"
            ),
        );
        assert!(r.ends_with("page of alice"), "{r}");
        // Her later requests on the same client connection keep her login…
        let r = exchange_on(
            &mut alice,
            &format!("GET {target} HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
        );
        assert!(r.ends_with("page of alice"), "{r}");
        // An upstream that sends bytes past a body on her connection: they never reach her
        // as the answer to her next request.
        let base = target.trim_end_matches('/');
        let r = exchange_on(
            &mut alice,
            &format!("GET {base}/big HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
        );
        assert!(
            r.starts_with("HTTP/1.1 200") && r.len() > 300_000,
            "{}",
            &r[..r.len().min(200)]
        );
        let r = exchange_on(
            &mut alice,
            &format!("GET {target} HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
        );
        assert!(
            !r.ends_with("stray"),
            "the stray bytes were taken for a response: {r}"
        );
        // …and nobody else ever gets her connection.
        for _ in 0..10 {
            let r = raw(
                p.addr,
                format!("GET {target} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            assert!(r.starts_with("HTTP/1.1 401"), "another client got: {r}");
        }
    }
}

#[test]
fn password_checks_never_stall_other_users() {
    let origin = Origin::start();
    // bcrypt, cost 12 (a fixed hash of "right", as `htpasswd -nbB -C 12 alice right` writes).
    let file =
        TempFile::new("alice:$2y$12$Mp9.CnnY0rYMlyG9iCVan.NUCHttSUXsCW3iJnKOuyWn9FQTTIx7q\n");
    let proxy = Proxy::start(&forward_config(&format!(
        "[forward]\nauth_file = \"{}\"\n",
        file.0.display()
    )));
    let get = |creds: &str| {
        format!(
            "GET http://{}/len/3 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {creds}\r\n\r\n",
            origin.addr
        )
    };
    let alice = get("Basic YWxpY2U6cmlnaHQ=");
    // Alice logs in once; her credentials are then trusted, however they are spelled.
    let mut probe = TcpStream::connect(proxy.addr).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(exchange_on(&mut probe, &alice).starts_with("HTTP/1.1 200"));
    for spelling in ["basic YWxpY2U6cmlnaHQ=", "BASIC   YWxpY2U6cmlnaHQ= "] {
        let r = exchange_on(&mut probe, &get(spelling));
        assert!(r.starts_with("HTTP/1.1 200"), "{spelling}: {r}");
    }
    // An attacker's wrong password (an unknown user: it costs the strongest hash) is being
    // checked: alice is answered meanwhile, before the attacker.
    for round in 0..5 {
        let mut attacker = TcpStream::connect(proxy.addr).unwrap();
        attacker
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        attacker
            .write_all(get("Basic bWFsbG9yeTp4").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let r = exchange_on(&mut probe, &alice);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        attacker.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        let answered_first = matches!(attacker.read(&mut b), Ok(n) if n > 0);
        assert!(
            !answered_first,
            "round {round}: the attacker's check held alice up"
        );
        attacker.set_nonblocking(false).unwrap();
        let r = exchange_on(&mut attacker, "");
        assert!(r.starts_with("HTTP/1.1 407"), "{r}");
    }
}

fn resolver_config(dns: &DnsServer, extra: &str) -> String {
    forward_config(&format!(
        "[forward]\nresolver = [\"{}\"]\nresolver_timeout = \"1s\"\n{extra}",
        dns.addr
    ))
}

#[test]
fn names_that_never_answer_stop_nobody_else() {
    let origin = Origin::start();
    let dns = DnsServer::start();
    dns.set(
        "good.test",
        DnsName::Addrs(vec!["127.0.0.1".parse().unwrap()]),
    );
    dns.set(
        "good2.test",
        DnsName::Addrs(vec!["127.0.0.1".parse().unwrap()]),
    );
    for i in 0..40 {
        dns.set(&format!("dead{i}.test"), DnsName::Silent);
    }
    let proxy = Proxy::start(&resolver_config(&dns, ""));
    // 40 requests for names whose server never answers, each client leaving after 0.3 s.
    let hung: Vec<_> = (0..40)
        .map(|i| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let req = format!("GET http://dead{i}.test/ HTTP/1.1\r\nHost: x\r\n\r\n");
                s.write_all(req.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            })
        })
        .collect();
    for h in hung {
        h.join().unwrap();
    }
    // Another client's healthy name resolves at once (the attacker holds at most a few
    // lookups, and no thread).
    let started = std::time::Instant::now();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&proxy.addr.into()).unwrap();
    let mut other: TcpStream = sock.into();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = exchange_on(
        &mut other,
        &format!(
            "GET http://good.test:{}/ok HTTP/1.1\r\nHost: x\r\n\r\n",
            origin.addr.port()
        ),
    );
    assert!(
        r.starts_with("HTTP/1.1 200"),
        "{r}\n{}",
        proxy.log.lock().unwrap()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The clients that left stopped waiting for their names: their address may start lookups
    // again, well before the 2 s their dead lookups would otherwise take.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let r = raw(
            proxy.addr,
            format!(
                "GET http://good2.test:{}/again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                origin.addr.port()
            )
            .as_bytes(),
        );
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{r}\n{}",
            proxy.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lookups_are_shared_failures_remembered_and_every_address_tried() {
    let dns = DnsServer::start();
    // dual.test: a dead IPv6 address first, then a live IPv4 one.
    let live = Origin::start_on("127.0.0.2:0".parse().unwrap());
    let port = live.addr.port();
    dns.set(
        "dual.test",
        DnsName::Addrs(vec!["::1".parse().unwrap(), "127.0.0.2".parse().unwrap()]),
    );
    dns.set(
        "same.test",
        DnsName::Addrs(vec!["127.0.0.2".parse().unwrap()]),
    );
    let proxy = Proxy::start(&resolver_config(&dns, ""));
    let get = |host: &str| {
        raw(
            proxy.addr,
            format!("GET http://{host}:{port}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    let r = get("dual.test");
    assert!(
        r.starts_with("HTTP/1.1 200"),
        "the next address after a dead one: {r}"
    );
    // Ten clients at once ask for one name: one lookup (an A and an AAAA query).
    let hs: Vec<_> = (0..10)
        .map(|_| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                raw(
                    addr,
                    format!(
                        "GET http://same.test:{port}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
            })
        })
        .collect();
    for h in hs {
        assert!(h.join().unwrap().starts_with("HTTP/1.1 200"));
    }
    assert_eq!(dns.queries("same.test"), 2);
    // A name that does not exist is remembered as such for a while.
    for _ in 0..3 {
        assert!(get("nx.test").starts_with("HTTP/1.1 502"));
    }
    assert_eq!(dns.queries("nx.test"), 2);
    // An answer too long for a datagram: asked again over TCP.
    dns.set(
        "big.test",
        DnsName::Truncated(vec!["127.0.0.2".parse().unwrap()]),
    );
    let r = get("big.test");
    assert!(
        r.starts_with("HTTP/1.1 200"),
        "over TCP after a truncated answer: {r}"
    );
    // A rule on addresses: only the allowed one is dialled.
    let strict = Proxy::start(&resolver_config(
        &dns,
        "[[forward.rules]]\naction = \"allow\"\ndest_ips = [\"127.0.0.2\"]\n",
    ));
    let r = raw(
        strict.addr,
        format!("GET http://dual.test:{port}/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        !strict.log.lock().unwrap().contains("[::1]"),
        "::1 was dialled"
    );
}

#[test]
fn the_origin_gets_the_path_the_client_sent() {
    let origin = Origin::start();
    let proxy = Proxy::start(&forward_config(""));
    for path in ["/web/2015/http://x/", "/a/../b", "/%61%2F%5C"] {
        let url = format!("http://{}{path}", origin.addr);
        let (ok, _) = curl_via(&format!("http://{}", proxy.addr), &["--path-as-is", &url]);
        assert!(ok, "{path}");
        let seen = origin.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(seen.path, path);
    }
}

#[test]
fn unsafe_ports_and_the_proxy_itself_are_refused() {
    let proxy = Proxy::start(&forward_config(
        "[forward]\nconnect_ports = [\"1-65535\"]\n",
    ));
    // Plain-text services an HTTP request could drive (nothing is dialled: refused first).
    for port in [22, 25, 6379, 11211] {
        let r = raw(
            proxy.addr,
            format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("safe_ports"),
            "{port}: {r}"
        );
    }
    // CONNECT to the proxy's own address would nest without end.
    let r = raw(
        proxy.addr,
        format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", proxy.addr).as_bytes(),
    );
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("this proxy itself"),
        "{r}"
    );
    let r = raw(
        proxy.addr,
        format!("GET http://{0}/ HTTP/1.1\r\nHost: {0}\r\n\r\n", proxy.addr).as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
}

#[test]
fn quick_mode_resolver_and_safe_ports() {
    let origin = Origin::start();
    let dns = DnsServer::start();
    dns.set(
        "site.test",
        DnsName::Addrs(vec!["127.0.0.1".parse().unwrap()]),
    );
    let port = origin.addr.port().to_string();
    let proxy = Proxy::start_quick(&[
        "--forward",
        "--resolver",
        &dns.addr.to_string(),
        "--safe-ports",
        &format!("80,{port}"),
    ]);
    let px = format!("http://{}", proxy.addr);
    let (ok, body) = curl_via(&px, &[&format!("http://site.test:{port}/quick")]);
    assert!(ok);
    assert_eq!(String::from_utf8_lossy(&body), "ok /quick");
    let r = raw(
        proxy.addr,
        b"GET http://site.test:8080/ HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("safe_ports"),
        "{r}"
    );
    // A denied IP address in a name list is refused at start, with the way to do it.
    let out = std::process::Command::new(bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--forward",
            "--deny-domain",
            "127.1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dest_ips"));
}
