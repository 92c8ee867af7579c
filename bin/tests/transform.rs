//! Rewriting (#24): paths rewritten before they go upstream, request and response fields set,
//! added and removed, with curl as the client.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};

use support::*;

/// An origin that answers every request with its own head as the body (request line and
/// fields, as received), and fields a backend leaks: `Server`, `X-Powered-By`.
fn echo_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(200) {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let cache = if head.contains("/cacheable") {
                        "Cache-Control: max-age=60\r\n"
                    } else {
                        ""
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nServer: backend/1.2.3\r\nX-Powered-By: php/5\r\n{cache}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `curl -si URL`, with extra arguments: (response head, body).
fn get(args: &[&str]) -> (String, String) {
    let mut all = vec!["-si"];
    all.extend_from_slice(args);
    let (ok, out) = curl(&all);
    assert!(ok, "{}", String::from_utf8_lossy(&out));
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn paths_are_rewritten_and_fields_edited_both_ways() {
    let origin = echo_origin();
    let p = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n\
         [[routes]]\npath = \"/app/\"\nname = \"app\"\nupstream = \"app\"\nstrip_prefix = \"/app\"\n\
         request_headers = {{ set = {{ \"X-Client\" = \"$client_addr via $scheme to ${{host}} on $route\" }}, add = {{ \"X-Tag\" = \"one\" }}, remove = [\"X-Debug\"] }}\n\
         response_headers = {{ set = {{ \"Server\" = \"ringway\", \"Strict-Transport-Security\" = \"max-age=63072000\" }}, remove = [\"X-Powered-By\"] }}\n\
         [[routes]]\npath = \"/v1/\"\nupstream = \"app\"\nstrip_prefix = \"/v1\"\nadd_prefix = \"/api/v1\"\n\
         [[routes]]\npath = \"/u/\"\nupstream = \"app\"\nrewrite = {{ regex = \"^/u/(?<id>[0-9]+)$\", to = \"/users/${{id}}/profile\" }}\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n"
    ));
    let base = format!("http://{}", p.addr);

    // Stripped, with the query kept; the route matched on the original path.
    let (head, body) = get(&[
        &format!("{base}/app/x/y?q=1"),
        "-H",
        "Host: shop.example:8080",
        "-H",
        "X-Debug: 1",
        "-H",
        "X-Client: forged",
    ]);
    assert!(body.starts_with("GET /x/y?q=1 HTTP/1.1\r\n"), "{body}");
    assert!(
        body.contains("X-Client: 127.0.0.1 via http to shop.example on app\r\n"),
        "{body}"
    );
    assert!(
        !body.contains("forged") && !body.contains("X-Debug"),
        "{body}"
    );
    assert!(body.contains("X-Tag: one\r\n"), "{body}");
    // The response: Server replaced, X-Powered-By gone, a field added.
    assert!(head.contains("\r\nServer: ringway\r\n"), "{head}");
    assert!(
        !head.contains("backend/1.2.3") && !head.contains("X-Powered-By"),
        "{head}"
    );
    assert!(
        head.contains("Strict-Transport-Security: max-age=63072000"),
        "{head}"
    );
    // `/app` itself becomes `/`; the normalised path is what is rewritten.
    let (_, body) = get(&[&format!("{base}/app/../app/./z"), "--path-as-is"]);
    assert!(body.starts_with("GET /z HTTP/1.1\r\n"), "{body}");

    // Replaced prefix; a regex with a named capture; other routes untouched.
    let (head, body) = get(&[&format!("{base}/v1/users")]);
    assert!(body.starts_with("GET /api/v1/users HTTP/1.1\r\n"), "{body}");
    assert!(
        head.contains("backend/1.2.3"),
        "only its own route's rules: {head}"
    );
    let (_, body) = get(&[&format!("{base}/u/42?tab=2")]);
    assert!(
        body.starts_with("GET /users/42/profile?tab=2 HTTP/1.1\r\n"),
        "{body}"
    );
    let (_, body) = get(&[&format!("{base}/u/abc")]);
    assert!(body.starts_with("GET /u/abc HTTP/1.1\r\n"), "{body}");
    let (_, body) = get(&[&format!("{base}/applesauce")]);
    assert!(body.starts_with("GET /applesauce HTTP/1.1\r\n"), "{body}");
}

#[test]
fn quick_mode_strips_a_prefix_and_bad_rules_are_config_errors() {
    let origin = echo_origin();
    let p = Proxy::start_quick(&["--upstream", &origin.to_string(), "--strip-prefix", "/app"]);
    let (_, body) = get(&[&format!("http://{}/app/index.html", p.addr)]);
    assert!(body.starts_with("GET /index.html HTTP/1.1\r\n"), "{body}");
    let (_, body) = get(&[&format!("http://{}/other", p.addr)]);
    assert!(body.starts_with("GET /other HTTP/1.1\r\n"), "{body}");

    for (rule, want) in [
        (
            "request_headers = { set = { \"X-A\" = \"$nosuch\" } }",
            ":8: routes[0].request_headers.set.X-A: unknown variable $nosuch",
        ),
        (
            "response_headers = { set = { \"Content-Length\" = \"1\" } }",
            ":8: routes[0].response_headers.set.Content-Length: Content-Length is the proxy's own",
        ),
        (
            "rewrite = { regex = \"(\", to = \"/\" }",
            ":8: routes[0].rewrite.regex: not a regex",
        ),
        (
            "strip_prefix = \"app\"",
            ":8: routes[0].strip_prefix: expected a path prefix",
        ),
    ] {
        let f = TempFile::new(&format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.app]\nservers = [\"{origin}\"]\n\
             [[routes]]\nupstream = \"app\"\n\n{rule}\n"
        ));
        let out = std::process::Command::new(bin())
            .args(["check", "--config"])
            .arg(&f.0)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{rule}: {err}");
    }
}

/// An origin that redirects every request: `Location` at its own address, a root-relative
/// `Content-Location`, a `Refresh` with a URL, and a `Location` of another site on `/away`.
fn redirect_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(100) {
            let Ok(s) = s else { continue };
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let location = if first.contains(" /away ") {
                "https://elsewhere.example/x".to_string()
            } else {
                format!("http://{addr}/login?next=/cart")
            };
            let _ = write!(
                w,
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Location: /dir/\r\nRefresh: 0; url=/next\r\nSet-Cookie: sid=abc; Path=/; Domain=backend.internal; HttpOnly\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    addr
}

#[test]
fn redirects_from_the_upstream_point_back_through_the_proxy() {
    let origin = redirect_origin();
    let p = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n\
         [[routes]]\npath = \"/app/\"\nupstream = \"app\"\nstrip_prefix = \"/app\"\n\
         cookie_domain = {{ from = \"backend.internal\", to = \"shop.example\" }}\ncookie_path = {{ from = \"/\", to = \"/app/\" }}\n\
         [[routes]]\npath = \"/raw/\"\nupstream = \"app\"\nstrip_prefix = \"/raw\"\nrewrite_location = false\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n"
    ));
    let base = format!("http://{}", p.addr);
    let field = |head: &str, name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    // Under a stripped prefix: the upstream's own address becomes the proxy's, and every
    // path gets its prefix back.
    let (head, _) = get(&[&format!("{base}/app/account")]);
    assert_eq!(
        field(&head, "Location").as_deref(),
        Some(format!("{base}/app/login?next=/cart").as_str()),
        "{head}"
    );
    assert_eq!(
        field(&head, "Content-Location").as_deref(),
        Some("/app/dir/")
    );
    assert_eq!(field(&head, "Refresh").as_deref(), Some("0; url=/app/next"));
    // The session cookie is scoped to the client-facing domain and prefix.
    assert_eq!(
        field(&head, "Set-Cookie").as_deref(),
        Some("sid=abc; Path=/app/; Domain=shop.example; HttpOnly")
    );
    // Another site's URL is never touched.
    let (head, _) = get(&[&format!("{base}/app/away")]);
    assert_eq!(
        field(&head, "Location").as_deref(),
        Some("https://elsewhere.example/x")
    );
    // Without a path rewrite only the upstream's address is replaced (nginx's default).
    let (head, _) = get(&[&format!("{base}/account")]);
    assert_eq!(
        field(&head, "Location").as_deref(),
        Some(format!("{base}/login?next=/cart").as_str())
    );
    assert_eq!(field(&head, "Content-Location").as_deref(), Some("/dir/"));
    assert_eq!(
        field(&head, "Set-Cookie").as_deref(),
        Some("sid=abc; Path=/; Domain=backend.internal; HttpOnly"),
        "only routes that ask rewrite cookies"
    );
    // Turned off: as the upstream sent it.
    let (head, _) = get(&[&format!("{base}/raw/account")]);
    assert_eq!(
        field(&head, "Location").as_deref(),
        Some(format!("http://{origin}/login?next=/cart").as_str())
    );
}

#[test]
fn behind_a_trusted_proxy_the_real_client_is_logged_ruled_and_forwarded() {
    let origin = echo_origin();
    let log = TempFile::new("");
    let p = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n\
         trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n\
         [access_log]\npath = \"{}\"\nflush = \"10ms\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\n\
         [[rules]]\naction = \"deny\"\nclients = [\"198.51.100.66\"]\n",
        log.0.display()
    ));
    let url = format!("http://{}/who", p.addr);
    let xff = |v: &str| format!("X-Forwarded-For: {v}");
    // From a trusted peer: the client it names.
    let (_, body) = get(&[&url, "-H", &xff("198.51.100.7")]);
    assert!(body.contains("X-Real-IP: 198.51.100.7\r\n"), "{body}");
    // The chain goes on with the peer appended: each proxy adds whom it heard from.
    assert!(
        body.contains("X-Forwarded-For: 198.51.100.7, 127.0.0.1\r\n"),
        "{body}"
    );
    // A forged entry on the left does not win: the rightmost untrusted hop does.
    let (_, body) = get(&[
        &url,
        "-H",
        &xff("198.51.100.66, 10.1.1.1, 203.0.113.9, 10.2.2.2"),
    ]);
    assert!(body.contains("X-Real-IP: 203.0.113.9\r\n"), "{body}");
    // Rules see the real client.
    let (head, _) = get(&[&url, "-H", &xff("198.51.100.66")]);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // An untrusted peer's field is never believed.
    let (head, body) = get(&[
        &url,
        "--interface",
        "127.0.0.2",
        "-H",
        &xff("198.51.100.66"),
    ]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("X-Real-IP: 127.0.0.2\r\n"), "{body}");
    // The log has the real clients.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log.0).unwrap_or_default();
        let firsts: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
        if firsts == ["198.51.100.7", "203.0.113.9", "198.51.100.66", "127.0.0.2"] {
            break;
        }
        assert!(std::time::Instant::now() < end, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `haproxy` with `cfg` (its `global` and `defaults` added), started by the test; `None` outside
/// CI when it is not installed.
/// The process, and its config file (kept while it runs).
struct Haproxy {
    child: std::process::Child,
    _config: TempFile,
}

impl Haproxy {
    fn start(cfg: &str) -> Option<Self> {
        if std::process::Command::new("haproxy")
            .arg("-v")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "haproxy is needed in CI (apt-get install haproxy)"
            );
            eprintln!("skipped: no haproxy here (apt-get install haproxy)");
            return None;
        }
        let f = TempFile::new(&format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n{cfg}"
        ));
        let child = std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&f.0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Some(Self { child, _config: f })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl through `port` until haproxy answers (it starts in the background).
fn through(port: u16, args: &[&str]) -> (String, String) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut all = vec!["-si"];
        all.extend_from_slice(args);
        let (ok, out) = curl(&all);
        if ok {
            let text = String::from_utf8_lossy(&out).into_owned();
            let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            return (h.to_string(), b.to_string());
        }
        assert!(
            std::time::Instant::now() < end,
            "nothing through port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn haproxy_sends_proxy_v1_and_v2_and_the_client_is_the_one_it_names() {
    let origin = echo_origin();
    let p = Proxy::start(&format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", proxy_protocol = true }}]\nworkers = 1\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\n"
    ));
    let (v1, v2) = (free_port(), free_port());
    let Some(_h) = Haproxy::start(&format!(
        "listen v1\n  bind 127.0.0.1:{v1}\n  server r {} send-proxy\n\
         listen v2\n  bind 127.0.0.1:{v2}\n  server r {} send-proxy-v2\n",
        p.addr, p.addr
    )) else {
        return;
    };
    for port in [v1, v2] {
        // The client connects to haproxy from 127.0.0.3; ringway sees haproxy's address on the
        // socket, and the client in the header.
        let (head, body) = through(
            port,
            &[
                &format!("http://127.0.0.1:{port}/who"),
                "--interface",
                "127.0.0.3",
            ],
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            body.contains("X-Real-IP: 127.0.0.3\r\n"),
            "port {port}: {body}"
        );
    }
    // A connection without the header is closed, and counted.
    let (ok, out) = curl(&["-s", &format!("http://{}/direct", p.addr)]);
    assert!(!ok, "{}", String::from_utf8_lossy(&out));
    let admin = admin_addr(&p);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sample(
        &admin_get(admin, "/metrics"),
        "ringway_proxy_protocol_errors_total",
        "",
    ) != Some(1.0)
    {
        assert!(
            std::time::Instant::now() < end,
            "the refusal was not counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_proxy_header_before_tls_and_an_optional_one() {
    let origin = echo_origin();
    let dir = std::env::temp_dir().join(format!("ringway-pp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    let (tls, optional) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _p = Proxy::start(&format!(
        "[server]\nlisten = [{{ addr = \"{tls}\", tls = true, proxy_protocol = true }}, {{ addr = \"{optional}\", proxy_protocol = \"optional\" }}]\nworkers = 1\npin = false\n\
         [tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\n",
        cert.display(),
        key.display()
    ));
    let port = free_port();
    let Some(_h) = Haproxy::start(&format!(
        "listen tls\n  bind 127.0.0.1:{port}\n  server r {tls} send-proxy-v2\n"
    )) else {
        return;
    };
    // haproxy passes TLS through, untouched, after its header: ringway reads the header, then
    // the handshake.
    let (head, body) = through(
        port,
        &[
            "-k",
            &format!("https://localhost:{port}/tls"),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            "--interface",
            "127.0.0.4",
        ],
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("X-Real-IP: 127.0.0.4\r\n"), "{body}");
    assert!(body.contains("X-Forwarded-Proto: https\r\n"), "{body}");
    // Optional: a direct client is served as itself; a header, sent by hand with the request
    // in the same packet, names another.
    let (_, body) = get(&[
        &format!("http://{optional}/direct"),
        "--interface",
        "127.0.0.5",
    ]);
    assert!(body.contains("X-Real-IP: 127.0.0.5\r\n"), "{body}");
    let r = request(
        optional.parse().unwrap(),
        b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 80\r\nGET /hand HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(
        r.text().contains("X-Real-IP: 198.51.100.9\r\n"),
        "{}",
        r.text()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn response_fields_are_edited_on_cache_hits_too() {
    let origin = echo_origin();
    let p = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n[cache]\nsize = \"8m\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n\
         [[routes]]\npath = \"/\"\nname = \"site\"\nupstream = \"app\"\n\
         response_headers = {{ set = {{ \"X-Served-By\" = \"$route for $host\" }}, remove = [\"Server\", \"X-Powered-By\"] }}\n"
    ));
    let url = format!("http://{}/cacheable/page", p.addr);
    let mut bodies = Vec::new();
    for (i, want) in ["MISS", "HIT"].iter().enumerate() {
        let (head, body) = get(&[&url, "-H", "Host: shop.example"]);
        let status = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("cache-status:"))
            .unwrap_or_default()
            .to_ascii_uppercase();
        assert!(
            status.contains(want) || (i == 1 && status.contains("HIT")),
            "{i}: {head}"
        );
        assert!(
            head.contains("X-Served-By: site for shop.example\r\n"),
            "{i}: {head}"
        );
        assert!(
            !head.contains("backend/1.2.3") && !head.contains("X-Powered-By"),
            "{i}: {head}"
        );
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1], "the second came from the cache");
}

/// The value of field `name` in a head (case-insensitive name).
fn field_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[test]
fn every_request_gets_an_id_sent_up_returned_and_logged() {
    let origin = echo_origin();
    let log = std::env::temp_dir().join(format!("ringway-reqid-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let p = Proxy::start_quick(&[
        "--upstream",
        &origin.to_string(),
        "--request-id",
        "--access-log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    let url = format!("http://{}/x", p.addr);
    let (head, body) = get(&[&url]);
    let id = field_of(&head, "x-request-id").expect("an id");
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    // The origin saw the same id.
    assert_eq!(
        field_of(&body, "x-request-id").as_deref(),
        Some(id.as_str()),
        "{body}"
    );
    // Another request, another id.
    let (head2, _) = get(&[&url]);
    assert_ne!(field_of(&head2, "x-request-id"), Some(id.clone()));
    // A client that is not a trusted proxy cannot choose it.
    let (head, body) = get(&["-H", "X-Request-Id: chosen-by-client", &url]);
    let made = field_of(&head, "x-request-id").unwrap();
    assert_ne!(made, "chosen-by-client");
    assert!(!body.contains("chosen-by-client"), "{body}");
    // The log names it, once the line is written.
    let want = format!("\"request_id\":\"{made}\"");
    file_until(&log, std::time::Duration::from_secs(10), |t| {
        t.contains(&want)
    });
    let _ = std::fs::remove_file(&log);

    // Behind a trusted proxy its well-formed id is kept; a malformed one is replaced.
    let trusting = Proxy::start_quick(&[
        "--upstream",
        &origin.to_string(),
        "--request-id",
        "--trusted-proxy",
        "127.0.0.1",
    ]);
    let url = format!("http://{}/x", trusting.addr);
    let kept = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
    let (head, body) = get(&["-H", &format!("X-Request-Id: {kept}"), &url]);
    assert_eq!(field_of(&head, "x-request-id").as_deref(), Some(kept));
    assert_eq!(field_of(&body, "x-request-id").as_deref(), Some(kept));
    let (head, _) = get(&["-H", "X-Request-Id: <script>alert(1)</script>", &url]);
    let replaced = field_of(&head, "x-request-id").unwrap();
    assert_eq!(replaced.len(), 32, "{replaced}");

    // Ringway's own answers carry it too: a dead upstream's 502.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let failing = Proxy::start_quick(&["--upstream", &dead.to_string(), "--request-id"]);
    let (head, _) = get(&[&format!("http://{}/x", failing.addr)]);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(
        field_of(&head, "x-request-id").map(|v| v.len()),
        Some(32),
        "{head}"
    );
}

/// An origin answering every request with `body` as `content_type`, cacheable for a minute
/// (`Content-Length`, or chunked in 7-byte pieces when the path says `/chunked`).
fn fixed_origin(content_type: &'static str, body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(100) {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut first = String::new();
                    if r.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let mut out = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: max-age=60\r\nETag: \"e1\"\r\n"
                    );
                    if first.contains("/chunked") {
                        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
                        for piece in body.as_bytes().chunks(7) {
                            out.push_str(&format!(
                                "{:x}\r\n{}\r\n",
                                piece.len(),
                                std::str::from_utf8(piece).unwrap()
                            ));
                        }
                        out.push_str("0\r\n\r\n");
                    } else {
                        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
                    }
                    if w.write_all(out.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

const PAGE: &str = "<html><a href=\"http://backend.internal:8080/a\">A</a> <img src=\"HTTP://Backend.Internal:8080/i.png\"> <p>Powered by Backend</p></html>";
const PAGE_OUT: &str = "<html><a href=\"https://example.org/a\">A</a> <img src=\"https://example.org/i.png\"> <p>Powered by ringway</p></html>";

#[test]
fn strings_are_replaced_in_text_bodies_as_they_stream() {
    let html = fixed_origin("text/html; charset=utf-8", PAGE);
    let json = fixed_origin("application/json", PAGE);
    let p = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n\
         [cache]\nsize = \"16m\"\n\
         [upstreams.html]\nservers = [\"{html}\"]\n[upstreams.json]\nservers = [\"{json}\"]\n\
         [[routes]]\npath = \"/json/\"\nupstream = \"json\"\n\
         body_replace = [{{ from = \"backend\", to = \"ringway\" }}]\n\
         [[routes]]\npath = \"/\"\nupstream = \"html\"\ncache = true\ncompress = true\n\
         body_replace_once = false\n\
         body_replace = [{{ from = \"http://backend.internal:8080\", to = \"https://example.org\" }}, {{ from = \"Powered by Backend\", to = \"Powered by ringway\" }}]\n"
    ));
    let base = format!("http://{}", p.addr);
    for path in ["/page", "/chunked/page"] {
        // Relayed (a miss), then from the cache (the stored body is the replaced one).
        for round in 0..2 {
            let (head, body) = get(&[&format!("{base}{path}")]);
            assert_eq!(body, PAGE_OUT, "{path} round {round}: {head}");
            assert!(head.contains("ETag: W/\"e1\""), "{head}");
            if round == 1 {
                assert!(head.contains("Cache-Status: ringway; hit"), "{head}");
            }
        }
        // Replaced, then compressed.
        let (head, body) = get(&[
            "--compressed",
            "-H",
            "Accept-Encoding: gzip",
            &format!("{base}{path}"),
        ]);
        assert_eq!(body, PAGE_OUT, "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-encoding: gzip"),
            "{head}"
        );
    }
    // Another type is left alone.
    let (_, body) = get(&[&format!("{base}/json/x")]);
    assert_eq!(body, PAGE);
    // A rule that could never match is a config error with its line.
    let bad = TempFile::new(&format!(
        "[upstreams.a]\nservers = [\"{html}\"]\n[[routes]]\npath = \"/\"\nupstream = \"a\"\nbody_replace = [{{ from = \"\", to = \"x\" }}]\n"
    ));
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&bad.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":6:") && err.contains("routes[0].body_replace[0].from"),
        "{err}"
    );
}

#[test]
fn upstreams_that_expect_proxy_headers_hear_each_client_on_its_own_connection() {
    let origin = echo_origin();
    let (v1, v2) = (free_port(), free_port());
    // haproxy takes the header (accept-proxy) and tells the origin whom it named.
    let Some(_h) = Haproxy::start(&format!(
        "frontend v1\n  mode http\n  bind 127.0.0.1:{v1} accept-proxy\n  http-request set-header X-Named %[src]\n  default_backend o\n\
         frontend v2\n  mode http\n  bind 127.0.0.1:{v2} accept-proxy\n  http-request set-header X-Named %[src]\n  default_backend o\n\
         backend o\n  mode http\n  server o {origin}\n"
    )) else {
        return;
    };
    // haproxy starts in the background.
    for port in [v1, v2] {
        wait_listening(port, std::time::Duration::from_secs(10));
    }
    let p = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n\
         [upstreams.one]\nservers = [\"127.0.0.1:{v1}\"]\nproxy_protocol = \"v1\"\n\
         health_check = {{ uri = \"/health\", interval = \"100ms\", fails = 1 }}\n\
         [upstreams.two]\nservers = [\"127.0.0.1:{v2}\"]\nproxy_protocol = \"v2\"\n\
         [[routes]]\npath = \"/one/\"\nupstream = \"one\"\n\
         [[routes]]\npath = \"/two/\"\nupstream = \"two\"\n"
    ));
    for path in ["/one/", "/two/"] {
        // Two clients one after the other, over keep-alive: each is named, none inherits the
        // other's connection.
        for (round, from) in ["127.0.0.3", "127.0.0.4", "127.0.0.3"].iter().enumerate() {
            let url = format!("http://{}{path}r{round}", p.addr);
            let (head, body) = through(0, &[&url, &url, "--interface", from]);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
            let named = body
                .to_ascii_lowercase()
                .matches(&format!("x-named: {from}\r\n"))
                .count();
            assert_eq!(named, 2, "{path} from {from}: {body}");
        }
    }
    // The health checks' LOCAL headers are taken: over a dozen checks, one failure would mark
    // the server down (and be logged).
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        let (head, _) = get(&[&format!("http://{}/one/again", p.addr)]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = p.log.lock().unwrap().clone();
    assert!(!log.contains("health check"), "{log}");
    // A bad version is a config error.
    let bad = TempFile::new(&format!(
        "[upstreams.a]\nservers = [\"127.0.0.1:{v1}\"]\nproxy_protocol = \"v3\"\n[[routes]]\nupstream = \"a\"\n"
    ));
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&bad.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":3:") && err.contains("upstreams.a.proxy_protocol"),
        "{err}"
    );
}
