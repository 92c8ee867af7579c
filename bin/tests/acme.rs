//! ACME end to end against pebble (Let's Encrypt's test CA, Debian's `pebble` package) started
//! by each test on loopback, with `pebble-challtestsrv` as its name server (every name is
//! 127.0.0.1): first issuance by HTTP-01 and by TLS-ALPN-01 answered by ringway's own
//! listeners, renewal at a third of a short lifetime, a CA that fails then recovers, a CA list
//! that falls back, and a restart that reuses the stored certificate. curl checks what is
//! served against pebble's root.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

/// pebble and its name server, ended (by PID) when dropped.
struct Pebble {
    dir: PathBuf,
    port: u16,
    management: u16,
    children: Vec<Child>,
    config: PathBuf,
    dns: u16,
}

impl Pebble {
    /// `None` outside CI when pebble is not installed; in CI its absence fails the test.
    /// Validations go to `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01) on 127.0.0.1;
    /// certificates live `validity` seconds.
    fn start(name: &str, http_port: u16, tls_port: u16, validity: u64) -> Option<Self> {
        if Command::new("pebble").arg("-h").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "pebble is needed in CI (apt-get install pebble)"
            );
            eprintln!("skipped: no pebble here (apt-get install pebble)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("ringway-acme-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // pebble's own HTTPS certificate, from a CA of the test's (the client trusts the CA).
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("https-ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("https.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("https.key"), key.serialize_pem()).unwrap();
        let (port, management, dns) = (free_port(), free_port(), free_port());
        let config = dir.join("pebble.json");
        let (d, c) = (dir.clone(), config.clone());
        let write_config = move |port: u16, management: u16| {
            std::fs::write(
            &c,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{management}",
                "certificate": "{d}/https.pem", "privateKey": "{d}/https.key", "httpPort": {http_port},
                "tlsPort": {tls_port}, "ocspResponderURL": "", "externalAccountBindingRequired": false,
                "certificateValidityPeriod": {validity}}}}}"#,
                d = d.display()
            ),
        )
        .unwrap()
        };
        write_config(port, management);
        let mut p = Self {
            dir,
            port,
            management,
            children: Vec::new(),
            config,
            dns,
        };
        let names = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian's pebble package)");
        p.children.push(names);
        // A port free when asked may be taken before pebble binds it (another test's
        // connection): pebble then exits, and is started again on other ports.
        for _ in 0..3 {
            if p.run() {
                return Some(p);
            }
            let _ = p.children.pop().map(|mut c| c.wait());
            (p.port, p.management) = (free_port(), free_port());
            write_config(p.port, p.management);
        }
        panic!("pebble did not start");
    }

    /// Starts pebble itself (again); false when it exited instead of listening.
    fn run(&mut self) -> bool {
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
            // Validations at once, not after pebble's random sleep.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble");
        self.children.push(child);
        let (port, management) = (self.port, self.management);
        let pebble = self.children.last_mut().expect("pushed");
        let mut alive = || matches!(pebble.try_wait(), Ok(None));
        [port, management]
            .into_iter()
            .all(|p| wait_listening_while(p, Duration::from_secs(20), &mut alive))
    }

    fn stop_ca(&mut self) {
        if let Some(mut c) = self.children.pop() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The root that signs what pebble issues (made anew at each pebble start).
    fn root(&self) -> PathBuf {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--noproxy", "*", "--cacert"])
            .arg(self.dir.join("https-ca.pem"))
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.join("root.pem");
        std::fs::write(&path, out.stdout).unwrap();
        path
    }

    /// `[acme]` for `domains` at this pebble (or at `ca` first), storing under `storage`.
    fn section(&self, domains: &[&str], storage: &Path, extra: &str) -> String {
        format!(
            "[acme]\nemail = \"ops@example.org\"\ndomains = {domains:?}\nca = [\"{ca}\"]\n\
             ca_root = \"{root}\"\nstorage = \"{storage}\"\nretry = \"1s\"\n{extra}\n",
            ca = self.directory(),
            root = self.dir.join("https-ca.pem").display(),
            storage = storage.display(),
        )
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A reverse proxy on a plain and a TLS port to `origin`, with `acme` appended.
fn config(origin: std::net::SocketAddr, http: u16, tls: u16, acme: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{http}\", {{ addr = \"127.0.0.1:{tls}\", tls = true }}]\n\
         workers = 1\npin = false\nshutdown_timeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\n{acme}"
    )
}

/// curl to `https://NAME:PORT/PATH` at 127.0.0.1, trusting only `root`.
fn https(name: &str, port: u16, root: &Path, path: &str) -> (bool, Vec<u8>) {
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}{path}");
    curl(&[
        "--cacert",
        &root.display().to_string(),
        "--resolve",
        &resolve,
        &url,
    ])
}

/// The serial number of the certificate served for `name`.
fn served_serial(name: &str, port: u16) -> String {
    let s = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null \
             | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&s.stdout).trim().to_string()
}

fn obtained(log: &str, name: &str) -> usize {
    log.matches(&format!("acme: {name}: certificate obtained"))
        .count()
}

/// First issuance by HTTP-01 (the plain listener answers pebble's requests), for two names,
/// each served by SNI; the files are private; a restart serves the stored certificates
/// without a new order.
#[test]
fn http01_issuance_then_a_restart_reuses_the_stored_certificates() {
    let (http, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start("http01", http, tls, 3600) else {
        return;
    };
    let origin = Origin::start();
    let storage = pebble.dir.join("state");
    let acme = pebble.section(
        &["a.test", "b.test"],
        &storage,
        "challenges = [\"http-01\"]",
    );
    let cfg = config(origin.addr, http, tls, &acme);
    let proxy = Proxy::start(&cfg);
    proxy.wait_log(|l| obtained(l, "a.test") == 1 && obtained(l, "b.test") == 1);
    let root = pebble.root();
    for name in ["a.test", "b.test"] {
        let (ok, body) = https(name, tls, &root, "/hello");
        assert!(ok, "{name}");
        assert_eq!(body, b"ok /hello");
    }
    assert_ne!(served_serial("a.test", tls), served_serial("b.test", tls));
    // The metrics say when each expires, and how the orders went.
    let m = admin_get(admin_addr(&proxy), "/metrics");
    let expiry = sample(
        &m,
        "ringway_acme_certificate_expiry_seconds",
        "name=\"a.test\"",
    )
    .expect("a.test's expiry");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(expiry > now && expiry < now + 7200.0, "{expiry}");
    assert_eq!(
        sample(&m, "ringway_acme_orders_total", "result=\"ok\""),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, "ringway_acme_orders_total", "result=\"failed\""),
        Some(0.0)
    );
    let status = admin_get(admin_addr(&proxy), "/status");
    assert!(
        status.contains("\"acme\":[{\"name\":\"a.test\",\"expires\":"),
        "{status}"
    );
    assert!(status.contains("\"name\":\"a.test\"") && status.contains("\"name\":\"b.test\""));
    // A name not managed gets the first managed certificate, which curl refuses for it.
    let (ok, _) = https("c.test", tls, &root, "/");
    assert!(!ok);
    // Private files: keys and certificates 0600, directories 0700.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(storage.join("certs/a.test.key")), 0o600);
    assert_eq!(mode(storage.join("certs/a.test.crt")), 0o600);
    assert_eq!(mode(storage.join("certs")), 0o700);
    let accounts: Vec<_> = std::fs::read_dir(storage.join("accounts"))
        .unwrap()
        .collect();
    assert_eq!(accounts.len(), 1, "one account for the one CA");
    let serial = served_serial("a.test", tls);
    drop(proxy);
    // Restarted: the stored certificates, no order.
    let proxy = Proxy::start(&cfg);
    proxy.wait_log(|l| l.matches("using the stored certificate").count() == 2);
    let (ok, _) = https("a.test", tls, &root, "/");
    assert!(ok);
    assert_eq!(served_serial("a.test", tls), serial);
    assert_eq!(obtained(&proxy.log(), "a.test"), 0, "{}", proxy.log());
}

/// TLS-ALPN-01 (the TLS listener answers the validation handshake and closes it), then
/// renewal when a third of a 15-second lifetime is left: a new certificate is served without
/// a reload, and connections go on being served throughout.
#[test]
fn tls_alpn01_issuance_and_renewal_at_a_third_of_the_lifetime() {
    let (http, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start("alpn", http, tls, 15) else {
        return;
    };
    let origin = Origin::start();
    let storage = pebble.dir.join("state");
    let acme = pebble.section(&["a.test"], &storage, "challenges = [\"tls-alpn-01\"]");
    let proxy = Proxy::start(&config(origin.addr, http, tls, &acme));
    proxy.wait_log(|l| obtained(l, "a.test") == 1);
    let root = pebble.root();
    let (ok, _) = https("a.test", tls, &root, "/");
    assert!(ok);
    let first = served_serial("a.test", tls);
    // Renewed when about 5 s of 15 are left.
    proxy.wait_log_for(Duration::from_secs(30), |l| obtained(l, "a.test") >= 2);
    let (ok, _) = https("a.test", tls, &root, "/");
    assert!(ok);
    assert_ne!(served_serial("a.test", tls), first);
}

/// A CA that cannot be reached: the next in the list is used. A start while the only CA is
/// down: handshakes fail (no certificate yet), the order is retried with back-off, and once
/// the CA is up the certificate comes and is served.
#[test]
fn a_failing_ca_is_skipped_and_a_down_ca_is_retried_until_it_recovers() {
    let (http, tls) = (free_port(), free_port());
    let Some(mut pebble) = Pebble::start("fallback", http, tls, 3600) else {
        return;
    };
    let origin = Origin::start();
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let acme = pebble
        .section(&["a.test"], &pebble.dir.join("one"), "")
        .replace("ca = [", &format!("ca = [\"{dead}\", "));
    let proxy = Proxy::start(&config(origin.addr, http, tls, &acme));
    proxy.wait_log(|l| obtained(l, "a.test") == 1);
    assert!(
        proxy
            .log()
            .contains(&format!("certificate obtained from {}", pebble.directory())),
        "{}",
        proxy.log()
    );
    drop(proxy);
    // The CA down at start.
    pebble.stop_ca();
    let acme = pebble.section(&["a.test"], &pebble.dir.join("two"), "");
    let proxy = Proxy::start(&config(origin.addr, http, tls, &acme));
    proxy.wait_log(|l| l.matches("acme: a.test: no certificate").count() >= 2);
    let (ok, _) = curl(&[
        "-k",
        "--resolve",
        &format!("a.test:{tls}:127.0.0.1"),
        &format!("https://a.test:{tls}/"),
    ]);
    assert!(!ok, "no certificate to serve yet");
    assert!(pebble.run(), "pebble started again on its ports");
    proxy.wait_log(|l| obtained(l, "a.test") == 1);
    let root = pebble.root();
    let (ok, _) = https("a.test", tls, &root, "/");
    assert!(ok);
}

/// HTTP-01 requests for tokens not in progress, and path tricks, are ordinary requests: they
/// go to the routes like any other (here: the origin).
#[test]
fn unknown_validation_tokens_are_ordinary_requests() {
    let (http, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start("tokens", http, tls, 3600) else {
        return;
    };
    let origin = Origin::start();
    let acme = pebble.section(&["a.test"], &pebble.dir.join("state"), "");
    let proxy = Proxy::start(&config(origin.addr, http, tls, &acme));
    proxy.wait_log(|l| obtained(l, "a.test") == 1);
    for path in [
        "/.well-known/acme-challenge/not-a-token",
        "/.well-known/acme-challenge/../../etc/passwd",
        "/.well-known/acme-challenge/%2e%2e",
    ] {
        let r = request(
            std::net::SocketAddr::from(([127, 0, 0, 1], http)),
            format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert!(
            r.status == 200 && r.text().starts_with("ok /"),
            "{path}: {} {}",
            r.status,
            r.text()
        );
    }
}

/// Quick mode: `--acme EMAIL --domain NAME` with `--acme-ca`/`--acme-ca-root` for pebble and a
/// `--redirect-https` listener, which both redirects and answers HTTP-01.
#[test]
fn quick_mode_gets_a_certificate_from_flags() {
    let (http, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start("quick", http, tls, 3600) else {
        return;
    };
    let origin = Origin::start();
    let state = pebble.dir.join("state").display().to_string();
    let ca_root = pebble.dir.join("https-ca.pem").display().to_string();
    let (listen, redirect) = (format!("127.0.0.1:{tls}"), format!("127.0.0.1:{http}"));
    let upstream = origin.addr.to_string();
    let proxy = Proxy::start_args(&[
        "--upstream",
        &upstream,
        "--listen",
        &listen,
        "--redirect-https",
        &redirect,
        "--acme",
        "ops@example.org",
        "--domain",
        "a.test",
        "--acme-ca",
        &pebble.directory(),
        "--acme-ca-root",
        &ca_root,
        "--state-dir",
        &state,
        "--workers",
        "1",
        "--no-pin",
    ]);
    proxy.wait_log(|l| obtained(l, "a.test") == 1);
    let (ok, body) = https("a.test", tls, &pebble.root(), "/q");
    assert!(ok);
    assert_eq!(body, b"ok /q");
    let r = request(
        std::net::SocketAddr::from(([127, 0, 0, 1], http)),
        b"GET /q?x=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{tls}/q?x=1").as_str())
    );
}

/// Flags that cannot work are refused before anything starts, saying why.
#[test]
fn quick_mode_acme_errors() {
    for (args, words) in [
        (
            &[
                "--upstream",
                "127.0.0.1:9",
                "--acme",
                "ops@example.org",
                "--domain",
                "a.test",
            ][..],
            "--state-dir",
        ),
        (
            &[
                "--upstream",
                "127.0.0.1:9",
                "--acme",
                "nobody",
                "--domain",
                "a.test",
                "--state-dir",
                "/tmp/x",
            ][..],
            "email",
        ),
        (
            &[
                "--upstream",
                "127.0.0.1:9",
                "--acme",
                "o@e.org",
                "--domain",
                "*.a.test",
                "--state-dir",
                "/tmp/x",
            ][..],
            "DNS-01",
        ),
        (
            &[
                "--upstream",
                "127.0.0.1:9",
                "--acme",
                "o@e.org",
                "--domain",
                "a.test",
                "--acme-ca",
                "http://ca/dir",
                "--state-dir",
                "/tmp/x",
            ][..],
            "https://",
        ),
    ] {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{args:?}: {err}");
    }
}

/// A reload that adds a name orders its certificate while the first stays served; one that
/// removes a name stops serving it.
#[test]
fn reloads_add_and_remove_names() {
    let (http, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start("reload", http, tls, 3600) else {
        return;
    };
    let origin = Origin::start();
    let storage = pebble.dir.join("state");
    let one = config(
        origin.addr,
        http,
        tls,
        &pebble.section(&["a.test"], &storage, ""),
    );
    let proxy = Proxy::start(&one);
    proxy.wait_log(|l| obtained(l, "a.test") == 1);
    let path = proxy.config.as_ref().unwrap().0.clone();
    let two = config(
        origin.addr,
        http,
        tls,
        &pebble.section(&["a.test", "b.test"], &storage, ""),
    );
    std::fs::write(&path, &two).unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_log(|l| obtained(l, "b.test") == 1);
    let root = pebble.root();
    assert!(https("a.test", tls, &root, "/").0);
    assert!(https("b.test", tls, &root, "/").0);
    assert_eq!(
        obtained(&proxy.log(), "a.test"),
        1,
        "a.test kept, not ordered again"
    );
    let only_b = config(
        origin.addr,
        http,
        tls,
        &pebble.section(&["b.test"], &storage, ""),
    );
    std::fs::write(&path, only_b).unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_log(|l| l.matches("reloaded:").count() >= 2);
    // a.test is no longer managed (once the ACME thread has read the reload): it gets
    // b.test's certificate, which curl refuses.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while https("a.test", tls, &root, "/").0 {
        assert!(std::time::Instant::now() < end, "a.test still served");
    }
    assert!(https("b.test", tls, &root, "/").0);
}

/// A directory in front of pebble (which has no ARI) that adds `renewalInfo`, served here:
/// the first window asked for is already open (renew now), later ones a day away.
struct AriFront {
    url: String,
    asked: Arc<Mutex<Vec<String>>>,
}

impl AriFront {
    fn start(pebble: &Pebble) -> Self {
        use rustls::pki_types::pem::PemObject;
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--noproxy", "*", "--cacert"])
            .arg(pebble.dir.join("https-ca.pem"))
            .arg(pebble.directory())
            .output()
            .unwrap();
        assert!(out.status.success());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut dir: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        dir["renewalInfo"] = format!("https://127.0.0.1:{port}/ari").into();
        let dir = dir.to_string();
        let chain: Vec<_> =
            rustls::pki_types::CertificateDer::pem_file_iter(pebble.dir.join("https.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(pebble.dir.join("https.key")).unwrap();
        let cfg = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                let mut t = rustls::StreamOwned::new(conn, s);
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut t, &mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let body = if path == "/dir" {
                    dir.clone()
                } else if let Some(id) = path.strip_prefix("/ari/") {
                    let mut a = seen.lock().unwrap();
                    a.push(id.to_string());
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let (start, end) = if a.len() == 1 {
                        (now - 3600, now - 60)
                    } else {
                        (now + 86_400, now + 2 * 86_400)
                    };
                    format!(
                        r#"{{"suggestedWindow":{{"start":"{}","end":"{}"}}}}"#,
                        rfc3339(start),
                        rfc3339(end)
                    )
                } else {
                    String::new()
                };
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = std::io::Write::write_all(&mut t, resp.as_bytes());
                t.conn.send_close_notify();
                let _ = std::io::Write::flush(&mut t);
            }
        });
        Self {
            url: format!("https://127.0.0.1:{port}/dir"),
            asked,
        }
    }
}

fn rfc3339(secs: u64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// ACME Renewal Information (RFC 9773): a CA whose window for a fresh certificate is already
/// open gets it renewed at once, the order naming the certificate it replaces; the next
/// window (a day away) is waited for. The id asked for is the one RFC 9773 §4.1 defines.
#[test]
fn renewal_driven_by_ari() {
    let (http, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start("ari", http, tls, 3600) else {
        return;
    };
    let front = AriFront::start(&pebble);
    let origin = Origin::start();
    let acme = pebble
        .section(&["a.test"], &pebble.dir.join("state"), "")
        .replace(&pebble.directory(), &front.url);
    let proxy = Proxy::start(&config(origin.addr, http, tls, &acme));
    proxy.wait_log(|l| obtained(l, "a.test") == 2);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while front.asked.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < end,
            "ARI asked again after the renewal"
        );
        std::thread::yield_now();
    }
    let asked = front.asked.lock().unwrap().clone();
    // Each id is base64url(AKI keyIdentifier) "." base64url(serial); the two certificates
    // share the issuer and differ in serial.
    let (aki0, serial0) = asked[0].split_once('.').unwrap();
    let (aki1, serial1) = asked[1].split_once('.').unwrap();
    assert_eq!(aki0, aki1);
    assert_ne!(serial0, serial1);
    assert!(asked.iter().all(|id| id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))));
    // The second certificate is the one served.
    let root = pebble.root();
    assert!(https("a.test", tls, &root, "/").0);
    assert_eq!(obtained(&proxy.log(), "a.test"), 2);
}

/// On demand: a handshake for a name `on_demand` allows starts an order (that handshake
/// fails, the next is served); names outside the list never do; the hourly budget holds;
/// after a restart the stored certificate is used without an order.
#[test]
fn certificates_on_demand_within_the_allowed_names_and_budget() {
    let (http, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start("ondemand", http, tls, 3600) else {
        return;
    };
    let origin = Origin::start();
    let storage = pebble.dir.join("state");
    let acme = pebble
        .section(
            &[],
            &storage,
            "on_demand = [\".shop.test\"]\non_demand_per_hour = 2",
        )
        .replace("domains = []\n", "");
    let cfg = config(origin.addr, http, tls, &acme);
    let proxy = Proxy::start(&cfg);
    let root = pebble.root();
    assert!(
        !https("a.shop.test", tls, &root, "/").0,
        "no certificate yet"
    );
    proxy.wait_log(|l| obtained(l, "a.shop.test") == 1);
    let (ok, body) = https("a.shop.test", tls, &root, "/od");
    assert!(ok);
    assert_eq!(body, b"ok /od");
    assert!(!https("b.shop.test", tls, &root, "/").0);
    proxy.wait_log(|l| obtained(l, "b.shop.test") == 1);
    // The third name in the hour is refused, and said so.
    assert!(!https("c.shop.test", tls, &root, "/").0);
    proxy.wait_log(|l| l.contains("acme: c.shop.test: not ordered on demand"));
    // Outside the list: nothing is ordered.
    assert!(!https("shop.other", tls, &root, "/").0);
    assert!(!https("evil-shop.test", tls, &root, "/").0);
    drop(proxy);
    let log = std::fs::read_dir(storage.join("certs")).unwrap().count();
    assert_eq!(log, 4, "two names, a certificate and a key each");
    // Restarted: the stored certificate, no order (the budget is not spent by it).
    let proxy = Proxy::start(&cfg);
    assert!(!https("a.shop.test", tls, &root, "/").0);
    proxy.wait_log(|l| l.contains("acme: a.shop.test: on demand, using the stored certificate"));
    assert!(https("a.shop.test", tls, &root, "/").0);
    assert_eq!(obtained(&proxy.log(), "a.shop.test"), 0);
    assert!(!proxy.log().contains("shop.other") && !proxy.log().contains("evil-shop"));
}

/// A storage directory that cannot be written is an error at start, naming it, not a failure
/// found at the first order.
#[test]
fn unusable_storage_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("ringway-acme-ro-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A file where the directory should be: whoever runs the test (root too) cannot use it.
    let blocked = dir.join("state");
    std::fs::write(&blocked, "not a directory").unwrap();
    let out = Command::new(bin())
        .args([
            "--upstream",
            "127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--no-pin",
            "--workers",
            "1",
        ])
        .args([
            "--acme",
            "ops@example.org",
            "--domain",
            "a.test",
            "--state-dir",
        ])
        .arg(&blocked)
        .env("RINGWAY_LOOPBACK_ONLY", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("acme.storage") && err.contains("state/acme"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
