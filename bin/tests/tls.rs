//! TLS termination and origination, with certificates made at test time (rcgen) and real
//! clients: curl, `openssl s_client`, and a rustls client for a connection held across a reload.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use support::*;

/// A directory of PEM files, removed afterwards.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringway-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA that signs leaf certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Self {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// Writes `<stem>.crt` and `<stem>.key` for `names` (DNS names or IPs); `rsa` picks the key.
    fn issue(&self, dir: &Dir, stem: &str, names: &[&str], rsa: bool) {
        let key = if rsa {
            // rcgen cannot generate RSA keys; openssl can.
            let out = Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .expect("openssl is installed");
            KeyPair::from_pem(&String::from_utf8(out.stdout).unwrap()).unwrap()
        } else {
            KeyPair::generate().unwrap()
        };
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        dir.write(&format!("{stem}.crt"), &cert.pem());
        dir.write(&format!("{stem}.key"), &key.serialize_pem());
    }

    fn write(&self, dir: &Dir, name: &str) -> PathBuf {
        dir.write(name, &self.cert.pem())
    }

    /// Like [`Ca::issue`] (ECDSA), the leaf naming `ocsp` as its responder (Authority
    /// Information Access), and the chain file holding the CA after it.
    fn issue_with_ocsp(&self, dir: &Dir, stem: &str, names: &[&str], ocsp: &str) {
        use ringway_core::ocsp::tlv;
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let method = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
        let aia = tlv(
            0x30,
            &tlv(
                0x30,
                &[tlv(0x06, &method), tlv(0x86, ocsp.as_bytes())].concat(),
            ),
        );
        p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 1],
            aia,
        )];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        dir.write(
            &format!("{stem}.crt"),
            &format!("{}{}", cert.pem(), self.cert.pem()),
        );
        dir.write(&format!("{stem}.key"), &key.serialize_pem());
    }
}

fn tls_config(origin: SocketAddr, dir: &Dir, extra_tls: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", tls = true }}]\nworkers = 1\npin = false\n\
         [tls]\ncertificates = [\n  {{ cert = \"{a}.crt\", key = \"{a}.key\" }},\n  \
         {{ cert = \"{w}.crt\", key = \"{w}.key\" }},\n]\n{extra_tls}\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\n{extra}",
        a = dir.path("a"),
        w = dir.path("wild"),
    )
}

/// curl to `https://NAME:PORT/PATH` resolved to the proxy, trusting `ca`.
fn curl_name(p: &Proxy, ca: &Path, name: &str, path: &str, more: &[&str]) -> (bool, Vec<u8>) {
    let resolve = format!("{name}:{}:127.0.0.1", p.addr.port());
    let url = format!("https://{name}:{}{path}", p.addr.port());
    let ca = ca.display().to_string();
    let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
    args.extend_from_slice(more);
    args.push(&url);
    curl(&args)
}

/// Runs `openssl s_client` with `args` and stdin closed; returns stdout and stderr.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (apt-get install openssl)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn setup() -> (Dir, Ca, Origin) {
    let dir = Dir::new();
    let ca = Ca::new("ringway test CA");
    ca.write(&dir, "ca.pem");
    ca.issue(&dir, "a", &["a.test"], false);
    ca.issue(&dir, "wild", &["*.wild.test"], true);
    (dir, ca, Origin::start())
}

#[test]
fn curl_over_tls_with_sni_choosing_the_certificate() {
    let (dir, _ca, origin) = setup();
    let p = Proxy::start(&tls_config(origin.addr, &dir, "", ""));
    let ca = dir.0.join("ca.pem");
    // Each certificate holds only its own names, so verification passing proves which one
    // was served: the ECDSA one for a.test, the RSA wildcard for any *.wild.test.
    let (ok, body) = curl_name(&p, &ca, "a.test", "/len/100", &[]);
    assert!(ok && body.len() == 100, "{}", p.log.lock().unwrap());
    let (ok, body) = curl_name(&p, &ca, "x.wild.test", "/len/5000", &[]);
    assert!(ok && body.len() == 5000);
    // The wildcard covers one label only: a.b.wild.test gets the default (a.test), which fails
    // verification for that name.
    let (ok, _) = curl_name(&p, &ca, "a.b.wild.test", "/", &[]);
    assert!(!ok, "a.b.wild.test must not verify");
    // No SNI: the default (first) certificate.
    let out = s_client(p.addr, &["-noservername"]);
    assert!(
        out.contains("CN = a.test") || out.contains("CN=a.test"),
        "{out}"
    );
    // Same HTTP code path: forwarding headers say https; a large body arrives whole.
    let seen = origin.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-forwarded-proto"), Some("https"));
    let (ok, body) = curl_name(&p, &ca, "a.test", "/len/3000000", &["--http1.1"]);
    assert!(ok && body.len() == 3_000_000);
    // A POST body over TLS, streamed to the origin, which answers with its length and byte sum.
    let payload = "x".repeat(200_000);
    let file = format!("@{}", dir.write("payload", &payload).display());
    let (ok, body) = curl_name(
        &p,
        &ca,
        "a.test",
        "/sum",
        &["--data-binary", &file, "-H", "Content-Type: text/plain"],
    );
    assert!(ok);
    assert_eq!(
        body,
        format!("200000 {}", 200_000 * u64::from(b'x')).as_bytes()
    );
    // Chunked both ways, and Expect: 100-continue, over TLS.
    let (ok, body) = curl_name(&p, &ca, "a.test", "/chunked/70000", &[]);
    assert!(ok && body.len() == 70000);
    let (ok, body) = curl_name(
        &p,
        &ca,
        "a.test",
        "/echo",
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "streamed",
        ],
    );
    assert!(ok && body == b"streamed");
}

/// A TLS 1.3 client with Nagle's algorithm on (std's default, Java's, Python's) sends its
/// Finished, then its request, which the kernel holds until the Finished is acknowledged. The
/// proxy has nothing to send then (its session tickets go with the first response), so the
/// kernel delayed that ACK by 40 ms, and every such client's first request waited for it. The
/// proxy acknowledges at once now. Not a speed figure: the stall is the kernel's fixed 40 ms
/// delayed-ACK minimum, against about a millisecond without it.
#[test]
fn a_nagle_client_is_not_held_by_a_delayed_ack_after_the_handshake() {
    let (dir, _ca, origin) = setup();
    let p = Proxy::start(&tls_config(origin.addr, &dir, "", ""));
    let ca = dir.0.join("ca.pem");
    let mut waits: Vec<Duration> = (0..7)
        .map(|_| {
            let (mut conn, mut tcp) = handshaken(p.addr, &ca, "a.test");
            assert!(!tcp.nodelay().unwrap(), "Nagle's algorithm is on");
            let sent = Instant::now();
            conn.writer()
                .write_all(b"GET /len/10 HTTP/1.1\r\nHost: a.test\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                conn.complete_io(&mut tcp).unwrap();
                let mut b = [0u8; 4096];
                match conn.reader().read(&mut b) {
                    Ok(n) => got.extend_from_slice(&b[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            sent.elapsed()
        })
        .collect();
    waits.sort();
    assert!(waits[3] < Duration::from_millis(30), "{waits:?}");
}

#[test]
fn sessions_resume_by_ticket_and_by_session_id() {
    let (dir, _ca, origin) = setup();
    // Two workers: the kernel spreads the reconnections over both, and every one resumes,
    // because ticket keys and the session cache are shared by the workers.
    let p =
        Proxy::start(&tls_config(origin.addr, &dir, "", "").replace("workers = 1", "workers = 2"));
    let ca = dir.path("ca.pem");
    let base = ["-servername", "a.test", "-CAfile", &ca, "-reconnect"];
    // TLS 1.2 with tickets, then with session IDs only (-no_ticket): the five reconnects resume.
    for extra in [&[][..], &["-no_ticket"][..]] {
        let out = s_client(p.addr, &[&base[..], &["-tls1_2"], extra].concat());
        let reused = out.matches("Reused, TLSv1.2").count();
        assert_eq!(reused, 5, "expected resumption {extra:?}:\n{out}");
    }
    // TLS 1.3: a ticket saved from one connection resumes the next.
    let sess = dir.path("sess.pem");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'GET /len/10 HTTP/1.1\\r\\nHost: a.test\\r\\nConnection: close\\r\\n\\r\\n' | \
             openssl s_client -quiet -connect {} -servername a.test -tls1_3 -sess_out {sess}",
            p.addr
        ))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200"));
    let out = s_client(
        p.addr,
        &["-servername", "a.test", "-tls1_3", "-sess_in", &sess],
    );
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
}

#[test]
fn tls13_only_refuses_tls12_and_bad_input_closes_cleanly() {
    let (dir, _ca, origin) = setup();
    let admin = free_port();
    let p = Proxy::start(&tls_config(
        origin.addr,
        &dir,
        "min_version = \"1.3\"\nstrict_sni = true\nhandshake_timeout = \"1s\"",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    ));
    let ca = dir.0.join("ca.pem");
    let out = s_client(p.addr, &["-servername", "a.test", "-tls1_2"]);
    assert!(!out.contains("Cipher is ECDHE"), "TLS 1.2 accepted:\n{out}");
    // Plain HTTP to the TLS port: a plain 400 that says so.
    let r = request(p.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").expect("an answer");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("HTTPS port"));
    // Garbage, a truncated ClientHello, silence: each is closed by the proxy.
    for bytes in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &b"\x00\xff\x13\x37garbage that is not TLS at all\r\n\r\n"[..],
        &b""[..],
    ] {
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(bytes).unwrap();
        if !bytes.is_empty() {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        let r = s.read_to_end(&mut sink);
        assert!(r.is_ok(), "connection not closed for {bytes:?}: {r:?}");
        // Whatever came back is at most a TLS alert record (type 21), never HTTP.
        assert!(sink.is_empty() || sink[0] == 21, "{bytes:?} → {sink:?}");
    }
    // Strict SNI: an unknown name, and no name at all, are refused.
    let (ok, _) = curl_name(&p, &ca, "unknown.test", "/", &["-k"]);
    assert!(!ok);
    let out = s_client(p.addr, &["-noservername"]);
    assert!(!out.contains("Cipher is TLS_"), "{out}");
    // Still serving, and the failures are counted.
    let (ok, _) = curl_name(&p, &ca, "a.test", "/", &[]);
    assert!(ok, "{}", p.log.lock().unwrap());
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let status = request(
            format!("127.0.0.1:{admin}").parse().unwrap(),
            b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap()
        .text();
        let failed = json_number(&status, "\"failed\":");
        let handshakes = json_number(&status, "\"handshakes\":");
        if failed >= 7 && handshakes >= 1 {
            assert!(json_number(&status, "\"plain_http\":") >= 1, "{status}");
            break;
        }
        // No pause needed: workers publish every 50 ms and the admin listener answers at
        // that pace too.
        assert!(Instant::now() < end, "counters not seen: {status}");
    }
    assert!(!p.log.lock().unwrap().contains("panic"));
}

fn json_number(doc: &str, key: &str) -> u64 {
    doc.find(key)
        .map(|i| {
            doc[i + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn plain_listener_redirects_to_https() {
    let (dir, _ca, origin) = setup();
    let (http, https) = (free_port(), free_port());
    let cfg = tls_config(origin.addr, &dir, "", "").replace(
        "listen = [{ addr = \"127.0.0.1:0\", tls = true }]",
        &format!(
            "listen = [{{ addr = \"127.0.0.1:{http}\", redirect_https = true }}, \
             {{ addr = \"127.0.0.1:{https}\", tls = true }}]"
        ),
    );
    let _p = Proxy::start(&cfg);
    let addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let req = format!("GET /a/b?c=d HTTP/1.1\r\nHost: a.test:{http}\r\n\r\n");
    let r = request(addr, req.as_bytes()).unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{https}/a/b?c=d").as_str())
    );
    // A request body is read and dropped; the connection goes on.
    let mut c = Client::connect(addr);
    c.send(b"POST /form HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(c.response("POST").unwrap().status, 301);
    c.send(b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let r = c.response("GET").unwrap();
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{https}/next").as_str())
    );
    // Nothing to redirect to without a host.
    let r = request(addr, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    // A malformed request is refused as on any listener.
    let r = request(addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    assert!(
        origin.seen().is_empty(),
        "the origin must see none of these"
    );
    // curl follows it to the TLS listener.
    let ca = dir.path("ca.pem");
    let resolve = format!("a.test:{https}:127.0.0.1");
    let resolve_http = format!("a.test:{http}:127.0.0.1");
    let url = format!("http://a.test:{http}/len/42");
    let (ok, body) = curl(&[
        "-L",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--resolve",
        &resolve_http,
        &url,
    ]);
    assert!(ok && body.len() == 42);
    assert!(origin
        .seen()
        .iter()
        .all(|s| s.header("x-forwarded-proto") == Some("https")));
}

#[test]
fn quick_mode_serves_tls_from_flags() {
    let (dir, _ca, origin) = setup();
    let up = origin.addr.to_string();
    let (cert, key) = (dir.path("a.crt"), dir.path("a.key"));
    let p = Proxy::start_quick(&["--tls-cert", &cert, "--tls-key", &key, "--upstream", &up]);
    assert!(p.log.lock().unwrap().contains("(tls)"));
    let (ok, body) = curl_name(&p, &dir.0.join("ca.pem"), "a.test", "/len/7", &[]);
    assert!(ok && body.len() == 7);
}

#[test]
fn bad_files_are_config_errors_naming_file_line_and_key() {
    let (dir, ca, origin) = setup();
    ca.issue(&dir, "other", &["other.test"], false);
    let check = |cfg: &str| {
        let f = TempFile::new(cfg);
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&f.0)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = tls_config(origin.addr, &dir, "", "");
    let missing = base.replace(&dir.path("wild.crt"), &dir.path("nope.crt"));
    let err = check(&missing);
    assert!(
        err.contains(":8: tls.certificates[1]: cannot read certificate file")
            && err.contains("nope.crt"),
        "{err}"
    );
    let mismatched = base.replace(&dir.path("a.key"), &dir.path("other.key"));
    let err = check(&mismatched);
    assert!(err.contains("does not belong to the certificate"), "{err}");
    let no_tls = "[server]\nlisten = [{ addr = \"127.0.0.1:0\", tls = true }]\n[[routes]]\nrespond = { status = 200 }\n";
    assert!(check(no_tls).contains("server.listen[0]: a TLS listener needs certificates"));
}

#[test]
fn reload_swaps_certificates_keeps_connections_and_rejects_bad_files() {
    let (dir, ca, origin) = setup();
    let pid = dir.path("pid");
    let cfg = tls_config(origin.addr, &dir, "", "").replace(
        "pin = false\n",
        &format!("pin = false\npid_file = \"{pid}\"\n"),
    );
    let p = Proxy::start(&cfg);
    let ca_pem = dir.0.join("ca.pem");
    // A keep-alive TLS connection opened before the reload.
    let mut held = RustlsClient::connect(p.addr, &ca_pem, "a.test");
    assert!(held.get("/len/3").starts_with("HTTP/1.1 200"));
    // Pipelined requests in one TLS record are answered in order.
    held.0
        .get_mut()
        .write_all(
            b"GET /len/20000 HTTP/1.1\r\nHost: a\r\n\r\nGET /len/7 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
    assert_eq!(held.response().1.len(), 20000);
    assert_eq!(held.response().1.len(), 7);
    // Reissue the first certificate for b.test and reload.
    ca.issue(&dir, "a", &["b.test"], false);
    p.signal(libc::SIGHUP);
    p.wait_log(|log| log.matches("reloaded:").count() == 1);
    // Workers pick a reload up within one 50 ms tick of their watcher.
    let end = Instant::now() + Duration::from_secs(10);
    while !curl_name(&p, &ca_pem, "b.test", "/", &[]).0 {
        assert!(Instant::now() < end, "new certificate never served");
    }
    assert!(held.get("/len/4").starts_with("HTTP/1.1 200"));
    // A broken key file: the reload is rejected, naming it, and b.test still works.
    dir.write("a.key", "-----BEGIN PRIVATE KEY-----\nnot base64\n");
    // `ringway reload` reads the files first and refuses, naming the key file.
    let out = Command::new(bin())
        .arg("reload")
        .arg("--config")
        .arg(&p.config.as_ref().unwrap().0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not reloading") && err.contains("a.key"),
        "{err}"
    );
    // SIGHUP straight to the process: rejected there too, and logged.
    p.signal(libc::SIGHUP);
    p.wait_log(|log| log.contains("reload rejected"));
    let log = p.log.lock().unwrap().clone();
    assert!(log.contains("a.key"), "{log}");
    let (ok, _) = curl_name(&p, &ca_pem, "b.test", "/", &[]);
    assert!(ok);
    assert!(held.get("/len/5").starts_with("HTTP/1.1 200"));
}

/// The certificates of a PEM file, as trust anchors.
fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&std::fs::read(ca).unwrap()) {
        roots.add(c).unwrap();
    }
    roots
}

/// A client configuration trusting the CA in `ca`.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots(ca))
            .with_no_client_auth(),
    )
}

/// A TCP connection to `addr` with a completed TLS handshake for `name`, driven by hand so that
/// a test can then send bytes the way a well-behaved client would not.
fn handshaken(addr: SocketAddr, ca: &Path, name: &str) -> (rustls::ClientConnection, TcpStream) {
    let mut conn =
        rustls::ClientConnection::new(client_config(ca), name.to_string().try_into().unwrap())
            .unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    (conn, tcp)
}

/// A blocking rustls client on one keep-alive connection.
struct RustlsClient(BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>);

impl RustlsClient {
    fn connect(addr: SocketAddr, ca: &Path, name: &str) -> Self {
        let conn =
            rustls::ClientConnection::new(client_config(ca), name.to_string().try_into().unwrap())
                .unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self(BufReader::new(rustls::StreamOwned::new(conn, tcp)))
    }

    /// Sends a GET and returns the status line and headers, having read the body.
    fn get(&mut self, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n");
        self.0.get_mut().write_all(req.as_bytes()).unwrap();
        self.response().0
    }

    /// Reads one response with a Content-Length body: (head, body).
    fn response(&mut self) -> (String, Vec<u8>) {
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).unwrap();
        (head, body)
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect()
}

/// A TLS origin (rustls, blocking, one thread per connection) that answers every request with
/// what it saw: the SNI, whether a client certificate was presented, and the path.
struct TlsOrigin {
    addr: SocketAddr,
    /// Connections accepted, and a signal for each.
    connections: Arc<(Mutex<usize>, Condvar)>,
}

impl TlsOrigin {
    fn start(dir: &Dir, stem: &str, client_ca: Option<&Path>) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<_> = CertificateDer::pem_file_iter(dir.0.join(format!("{stem}.crt")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.0.join(format!("{stem}.key"))).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let v = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(ca)))
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(v)
            }
        };
        let cfg = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new((Mutex::new(0), Condvar::new()));
        let count = connections.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                *count.0.lock().unwrap() += 1;
                count.1.notify_all();
                let cfg = cfg.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let conn = rustls::ServerConnection::new(cfg).unwrap();
                    let mut r = BufReader::new(rustls::StreamOwned::new(conn, s));
                    loop {
                        let mut first = String::new();
                        if r.read_line(&mut first).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let target = first.split(' ').nth(1).unwrap_or("");
                        if let Some(n) = target.strip_prefix("/big/") {
                            let n: usize = n.trim().parse().unwrap_or(0);
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                            let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                            if r.get_mut().write_all(head.as_bytes()).is_err()
                                || r.get_mut().write_all(&body).is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        let conn = &r.get_ref().conn;
                        let body = format!(
                            "sni={} client_cert={} target={}",
                            conn.server_name().unwrap_or("-"),
                            conn.peer_certificates().is_some(),
                            first.split(' ').nth(1).unwrap_or("")
                        );
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if r.get_mut().write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, connections }
    }

    fn connections(&self) -> usize {
        *self.connections.0.lock().unwrap()
    }

    /// Waits (10 s at most) until `n` connections have been accepted.
    fn wait_connections(&self, n: usize) {
        let (count, arrived) = &*self.connections;
        let (_count, timeout) = arrived
            .wait_timeout_while(count.lock().unwrap(), Duration::from_secs(10), |c| *c < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "the origin saw fewer than {n} connections"
        );
    }
}

#[test]
fn upstream_tls_verifies_the_origin_and_presents_a_client_certificate() {
    let dir = Dir::new();
    let ca = Ca::new("origin CA");
    let ca_pem = ca.write(&dir, "ca.pem");
    ca.issue(&dir, "origin", &["origin.test"], false);
    ca.issue(&dir, "client", &["proxy.test"], false);
    let origin = TlsOrigin::start(&dir, "origin", Some(&ca_pem));
    let tls = format!(
        "tls = {{ server_name = \"origin.test\", ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        ca_pem.display(),
        dir.path("client.crt"),
        dir.path("client.key")
    );
    let cfg = config_for(origin.addr, "")
        .replace("[upstreams.app]\n", &format!("[upstreams.app]\n{tls}\n"));
    let p = Proxy::start(&cfg);
    for i in 0..3 {
        let r = request(
            p.addr,
            format!("GET /x{i}?q HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", p.log.lock().unwrap());
        assert_eq!(
            r.text(),
            format!("sni=origin.test client_cert=true target=/x{i}?q")
        );
    }
    // A body much larger than a TLS record and the proxy's buffers arrives intact.
    let (ok, body) = curl(&[&format!("http://{}/big/3000001", p.addr)]);
    assert!(ok && body.len() == 3_000_001);
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    // The TLS connection to the origin is pooled and reused.
    assert_eq!(origin.connections(), 1);

    // An origin whose certificate another CA signed: 502, and the log says why.
    let other = Ca::new("someone else");
    let other_pem = other.write(&dir, "other-ca.pem");
    let cfg = config_for(origin.addr, "").replace(
        "[upstreams.app]\n",
        &format!(
            "[upstreams.app]\ntls = {{ server_name = \"origin.test\", ca = \"{}\" }}\n",
            other_pem.display()
        ),
    );
    let p = Proxy::start(&cfg);
    let r = request(p.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 502);
    p.wait_log(|log| log.contains("invalid peer certificate"));

    // A server that answers in plain HTTP (as any HTTP server does to a ClientHello): 502, and
    // the log says why.
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = plain.accept() {
            let mut hello = [0u8; 512];
            let _ = s.read(&mut hello);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let cfg = config_for(plain_addr, "").replace(
        "[upstreams.app]\n",
        &format!(
            "[upstreams.app]\ntls = {{ server_name = \"origin.test\", ca = \"{}\" }}\n",
            ca_pem.display()
        ),
    );
    let p = Proxy::start(&cfg);
    let r = request(p.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 502);
    p.wait_log(|log| log.contains("upstream TLS handshake"));

    // Active health checks speak TLS with the same verification: against the wrong CA the
    // server is marked down (503 without trying it), with the right CA it stays up.
    let hc = "health_check = { uri = \"/h\", interval = \"100ms\", timeout = \"1s\", fails = 1 }";
    for (ca, expect) in [(&other_pem, 503), (&ca_pem, 200)] {
        let cfg = config_for(origin.addr, "").replace(
            "[upstreams.app]\n",
            &format!(
                "[upstreams.app]\n{hc}\ntls = {{ server_name = \"origin.test\", ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n",
                ca.display(),
                dir.path("client.crt"),
                dir.path("client.key")
            ),
        );
        let before = origin.connections();
        let p = Proxy::start(&cfg);
        if expect == 503 {
            p.wait_log(|log| log.contains("health check failing"));
        } else {
            // Three probes (each a new TLS connection to the origin) have passed; one failure
            // would have marked the server down.
            origin.wait_connections(before + 3);
        }
        let r = request(p.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(r.status, expect, "{}", p.log.lock().unwrap());
    }
}

#[test]
fn a_request_trickled_in_partial_records_times_out() {
    let (dir, _ca, origin) = setup();
    let p = Proxy::start(&tls_config(
        origin.addr,
        &dir,
        "",
        "[timeouts]\nclient_header = \"1s\"\n",
    ));
    let (mut conn, mut tcp) = handshaken(p.addr, &dir.0.join("ca.pem"), "a.test");
    conn.writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut records = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut records).unwrap();
    }
    // One byte every 150 ms: the record is never complete within the 1 s header timeout, but
    // bytes keep arriving.
    tcp.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let start = Instant::now();
    let mut closed = None;
    for b in &records[..records.len() - 1] {
        let _ = tcp.write_all(&[*b]);
        let mut sink = [0u8; 512];
        match tcp.read(&mut sink) {
            Ok(0) => {
                closed = Some(start.elapsed());
                break;
            }
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                closed = Some(start.elapsed());
                break;
            }
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(6), "never closed");
    }
    let closed = closed.expect("the proxy closed the connection");
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
}

#[test]
fn rsa_and_ecdsa_certificates_for_one_name_serve_each_client_what_it_supports() {
    let dir = Dir::new();
    let ca = Ca::new("dual CA");
    ca.write(&dir, "ca.pem");
    ca.issue(&dir, "d-rsa", &["d.test"], true);
    ca.issue(&dir, "d-ec", &["d.test"], false);
    let origin = Origin::start();
    let cfg = format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", tls = true }}]\nworkers = 1\npin = false\n\
         [tls]\ncertificates = [\n  {{ cert = \"{r}.crt\", key = \"{r}.key\" }},\n  \
         {{ cert = \"{e}.crt\", key = \"{e}.key\" }},\n]\n\
         [upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
        origin.addr,
        r = dir.path("d-rsa"),
        e = dir.path("d-ec"),
    );
    let p = Proxy::start(&cfg);
    let ca_pem = dir.path("ca.pem");
    let peer_sig = |sigalgs: &str| {
        let out = s_client(
            p.addr,
            &[
                "-servername",
                "d.test",
                "-CAfile",
                &ca_pem,
                "-tls1_3",
                "-sigalgs",
                sigalgs,
            ],
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        out.lines()
            .find(|l| l.starts_with("Peer signature type:"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no signature type in:\n{out}"))
    };
    assert!(peer_sig("ECDSA+SHA256").contains("ECDSA"));
    assert!(peer_sig("RSA-PSS+SHA256").contains("RSA-PSS"));
    // Both allowed: the first listed.
    assert!(peer_sig("RSA-PSS+SHA256:ECDSA+SHA256").contains("RSA-PSS"));
}

#[test]
fn random_bytes_and_mangled_client_hellos_never_stop_the_listener() {
    let (dir, _ca, origin) = setup();
    let p = Proxy::start(&tls_config(
        origin.addr,
        &dir,
        "handshake_timeout = \"1s\"",
        "",
    ));
    // A real ClientHello to mangle: what openssl sends first.
    let hello = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let _ = Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &addr.to_string(),
                    "-servername",
                    "a.test",
                ])
                .stdin(std::process::Stdio::null())
                .output();
        });
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        buf.truncate(n);
        drop(s);
        client.join().unwrap();
        buf
    };
    assert_eq!(hello[0], 22, "not a handshake record");
    // xorshift: reproducible, no dependency.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..120 {
        let mut bytes = if round % 2 == 0 {
            let mut h = hello.clone();
            for _ in 0..1 + next() % 8 {
                let i = (next() as usize) % h.len();
                h[i] = next() as u8;
            }
            h.truncate(1 + (next() as usize) % h.len());
            h
        } else {
            (0..1 + next() % 600).map(|_| next() as u8).collect()
        };
        if round % 3 == 0 {
            bytes[0] = 22;
        }
        let mut s = TcpStream::connect(p.addr).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        assert!(
            s.read_to_end(&mut sink).is_ok(),
            "round {round}: not closed within the handshake timeout"
        );
    }
    let (ok, _) = curl_name(&p, &dir.0.join("ca.pem"), "a.test", "/len/10", &[]);
    assert!(ok);
    assert!(!p.log.lock().unwrap().contains("panic"));
}

#[test]
fn bytes_after_close_notify_do_not_stall_the_worker() {
    let (dir, _ca, origin) = setup();
    let p = Proxy::start(&tls_config(origin.addr, &dir, "", ""));
    let (mut conn, mut tcp) = handshaken(p.addr, &dir.0.join("ca.pem"), "a.test");
    // close_notify, then more records in the same segment.
    conn.send_close_notify();
    let mut bytes = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut bytes).unwrap();
    }
    // More than rustls takes in one read_tls call, so that some stays unread after it.
    for _ in 0..3 {
        bytes.extend_from_slice(b"\x17\x03\x03\x40\x00");
        bytes.extend(std::iter::repeat_n(0x5a, 0x4000));
    }
    tcp.write_all(&bytes).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    // Closed at once: end of file, or a reset for the bytes it did not read; not a timeout.
    match tcp.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The (single) worker still serves.
    let (ok, _) = curl_name(&p, &dir.0.join("ca.pem"), "a.test", "/len/10", &[]);
    assert!(ok);
}

/// The path tricks of the security issue, over TLS: the same normalisation, the same answers.
#[test]
fn path_tricks_over_tls_cannot_reach_a_denied_route() {
    let (dir, _ca, origin) = setup();
    let extra = "[[routes]]\npath = \"/admin\"\nrespond = { status = 403, body = \"denied\" }\n";
    let p = Proxy::start(&tls_config(origin.addr, &dir, "", extra));
    let ca = dir.0.join("ca.pem");
    let status = |path: &str| {
        let (ok, out) = curl_name(
            &p,
            &ca,
            "a.test",
            path,
            &["--path-as-is", "-o", "/dev/null", "-w", "%{http_code}"],
        );
        assert!(ok, "{path}");
        String::from_utf8(out).unwrap()
    };
    for path in PATHS_TO_ADMIN {
        assert_eq!(status(path), "403", "{path}");
    }
    for path in PATHS_REFUSED {
        assert_eq!(status(path), "400", "{path}");
    }
    assert_eq!(status("/ok/./x"), "200");
    assert_eq!(origin.seen().last().unwrap().path, "/ok/x");
    assert!(origin.seen().iter().all(|s| !s.path.contains("admin")));
}

/// A client that offers only `http/1.0` in ALPN (`curl --http1.0`) gets HTTP/1.x, not a failed
/// handshake.
#[test]
fn curl_http10_over_tls() {
    let (dir, _ca, origin) = setup();
    let p = Proxy::start(&tls_config(origin.addr, &dir, "", ""));
    let ca = dir.0.join("ca.pem");
    let (ok, body) = curl_name(&p, &ca, "a.test", "/len/100", &["--http1.0"]);
    assert!(ok && body.len() == 100, "{}", p.log.lock().unwrap());
}

/// A TLS 1.2 client asking to renegotiate gets rustls's no_renegotiation alert at once; it used
/// to stay queued until the next response, and the client hung until a timeout.
#[test]
fn a_renegotiation_request_is_answered_at_once() {
    let (dir, _ca, origin) = setup();
    let p = Proxy::start(&tls_config(origin.addr, &dir, "", ""));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec openssl s_client -tls1_2 -msg -connect {} 2>&1",
            p.addr
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let wait_for = |what: &str| {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    assert!(wait_for("Verify return code"), "handshake");
    stdin.write_all(b"R\n").unwrap();
    let answered = wait_for("no_renegotiation");
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "no alert within 5 s");
}

/// An HTTPS proxy: a forward listener with `tls = true`. curl speaks TLS to the proxy
/// (`--proxy https://`), then absolute-form requests, a CONNECT with plain HTTP inside, and a
/// CONNECT with a second TLS session inside (TLS in TLS, megabytes each way) all work; a client
/// speaking plain HTTP to it gets a plain answer, not a hang.
#[test]
fn an_https_forward_proxy_carries_requests_and_connect_tunnels() {
    let (dir, test_ca, origin) = setup();
    // The proxy resolves what CONNECT names, so the origin is reached by its address.
    test_ca.issue(&dir, "ip", &["127.0.0.1"], false);
    let tls_origin = TlsOrigin::start(&dir, "ip", None);
    let config = format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", tls = true, forward = true }}]\nworkers = 1\npin = false\n\
         [tls]\ncertificates = [{{ cert = \"{p}.crt\", key = \"{p}.key\" }}]\n\
         [forward]\nconnect_ports = [{o}, {t}]\nsafe_ports = [{o}]\n",
        p = dir.path("proxy"),
        o = origin.addr.port(),
        t = tls_origin.addr.port(),
    );
    test_ca.issue(&dir, "proxy", &["proxy.test"], false);
    let proxy = Proxy::start(&config);
    let ca = dir.path("ca.pem");
    let px = format!("https://proxy.test:{}", proxy.addr.port());
    let resolve = format!("proxy.test:{}:127.0.0.1", proxy.addr.port());
    let via = |more: &[&str]| {
        let mut args = vec!["--proxy", &px, "--proxy-cacert", &ca, "--resolve", &resolve];
        args.extend_from_slice(more);
        curl_proxied(&args)
    };
    // Absolute form inside the TLS connection.
    let url = format!("http://{}/len/5000", origin.addr);
    let (ok, body) = via(&[&url]);
    assert!(ok);
    assert_eq!(body.len(), 5000);
    // CONNECT (-p), plain HTTP inside, two requests on the tunnel.
    let url = format!("http://{}/len/200000", origin.addr);
    let (ok, body) = via(&["-p", &url, &url]);
    assert!(ok);
    assert_eq!(body.len(), 400_000);
    // CONNECT to a TLS origin: TLS inside TLS, 3 MB down.
    let url = format!("https://{}/big/3000000", tls_origin.addr);
    let (ok, body) = via(&["--cacert", &ca, &url]);
    assert!(ok);
    assert_eq!(body.len(), 3_000_000);
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    // The proxy's own certificate is checked by the client: without the CA, curl refuses.
    let (ok, _) = curl_proxied(&["--proxy", &px, "--resolve", &resolve, "-p", &url]);
    assert!(!ok);
    // Plain HTTP to the TLS port: answered, in plain HTTP, at once.
    let r = request(
        proxy.addr,
        format!(
            "GET http://{}/len/1 HTTP/1.1\r\nHost: x\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    // A CONNECT tunnel to a port off the list is refused inside TLS too.
    let (ok, _) = via(&["-p", "http://127.0.0.1:9/"]);
    assert!(!ok);
}

/// curl through a proxy: no `--noproxy` (which `support::curl` adds).
fn curl_proxied(args: &[&str]) -> (bool, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-S", "--fail", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed");
    if !out.status.success() {
        eprintln!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), out.stdout)
}

/// Mutual TLS with curl `--cert`: a `required` listener refuses a handshake without a client
/// certificate or with one from another CA; an `optional` one serves both; the upstream learns
/// the verdict, subject and fingerprint (and never what the client wrote under those names);
/// a rule admits by subject.
#[test]
fn client_certificates_required_and_optional() {
    let (dir, ca, origin) = setup();
    ca.issue(&dir, "alice", &["alice"], false);
    let other = Ca::new("another CA");
    other.issue(&dir, "mallory", &["mallory"], false);
    let (req_port, opt_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:{req_port}\", tls = true, client_auth = \"required\" }}, \
         {{ addr = \"127.0.0.1:{opt_port}\", tls = true, client_auth = \"optional\" }}]\nworkers = 1\npin = false\n\
         [tls]\ncertificates = [{{ cert = \"{a}.crt\", key = \"{a}.key\" }}]\nclient_ca = \"{ca}\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\n\
         [[rules]]\naction = \"allow\"\npaths = [\"/admin\"]\nclient_subject = \"^CN=alice$\"\n\
         [[rules]]\naction = \"deny\"\npaths = [\"/admin\"]\n",
        a = dir.path("a"),
        ca = dir.path("ca.pem"),
        origin = origin.addr,
    );
    let _p = Proxy::start(&config);
    let cacert = dir.path("ca.pem");
    let get = |port: u16, who: Option<&str>, path: &str, more: &[&str]| {
        let url = format!("https://a.test:{port}{path}");
        let resolve = format!("a.test:{port}:127.0.0.1");
        let (cert, key) = who.map_or((String::new(), String::new()), |w| {
            (dir.path(&format!("{w}.crt")), dir.path(&format!("{w}.key")))
        });
        let mut args = vec!["--cacert", &cacert, "--resolve", &resolve];
        if who.is_some() {
            args.extend_from_slice(&["--cert", &cert, "--key", &key]);
        }
        args.extend_from_slice(more);
        args.push(&url);
        curl(&args)
    };
    let forged = [
        "-H",
        "X-Client-Verify: SUCCESS",
        "-H",
        "X-Client-Cert-Subject: CN=root",
    ];
    let (ok, body) = get(req_port, Some("alice"), "/x", &forged);
    assert!(ok);
    assert_eq!(body, b"ok /x");
    let seen = origin.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-client-verify"), Some("SUCCESS"));
    assert_eq!(last.header("x-client-cert-subject"), Some("CN=alice"));
    // The fingerprint is the certificate's SHA-256, as openssl computes it.
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(dir.path("alice.crt"))
        .output()
        .unwrap();
    let want = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(
        last.header("x-client-cert-fingerprint"),
        Some(want.as_str())
    );
    assert_eq!(
        last.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("x-client-verify"))
            .count(),
        1,
        "the forged field is gone"
    );
    // Required: no certificate, or one from another CA, fails the handshake.
    assert!(!get(req_port, None, "/x", &[]).0);
    assert!(!get(req_port, Some("mallory"), "/x", &[]).0);
    // Optional: served without one, and the upstream is told NONE.
    let (ok, _) = get(opt_port, None, "/y", &forged);
    assert!(ok);
    let seen = origin.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-client-verify"), Some("NONE"));
    assert_eq!(last.header("x-client-cert-subject"), None);
    // An unverifiable certificate is refused even where one is optional.
    assert!(!get(opt_port, Some("mallory"), "/y", &[]).0);
    // The rule: /admin for alice's certificate only, whatever fields are sent.
    let (ok, body) = get(opt_port, Some("alice"), "/admin", &[]);
    assert!(ok);
    assert_eq!(body, b"ok /admin");
    let (_, body) = get(opt_port, None, "/admin", &forged);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("refused by a rule"),
        "no certificate: the deny rule: {body}"
    );
}

/// Quick mode `--forward --tls-cert … --tls-client-ca …`: an HTTPS proxy only clients with a
/// certificate from that CA may use (curl `--proxy-cert`).
#[test]
fn an_https_proxy_for_clients_with_certificates_from_flags() {
    let (dir, ca, origin) = setup();
    ca.issue(&dir, "proxy", &["proxy.test"], false);
    ca.issue(&dir, "alice", &["alice"], false);
    let p = Proxy::start_quick(&[
        "--forward",
        "--tls-cert",
        &dir.path("proxy.crt"),
        "--tls-key",
        &dir.path("proxy.key"),
        "--tls-client-ca",
        &dir.path("ca.pem"),
        "--connect-ports",
        &origin.addr.port().to_string(),
        "--safe-ports",
        &origin.addr.port().to_string(),
    ]);
    let px = format!("https://proxy.test:{}", p.addr.port());
    let resolve = format!("proxy.test:{}:127.0.0.1", p.addr.port());
    let ca_path = dir.path("ca.pem");
    let url = format!("http://{}/len/10", origin.addr);
    let base = [
        "--proxy",
        &px,
        "--proxy-cacert",
        &ca_path,
        "--resolve",
        &resolve,
    ];
    let (cert, key) = (dir.path("alice.crt"), dir.path("alice.key"));
    let mut with = base.to_vec();
    with.extend_from_slice(&["--proxy-cert", &cert, "--proxy-key", &key, &url]);
    let (ok, body) = curl_proxied(&with);
    assert!(ok);
    assert_eq!(body.len(), 10);
    let mut without = base.to_vec();
    without.push(&url);
    assert!(!curl_proxied(&without).0);
}

/// What is offered, checked as testssl.sh would with `openssl s_client`: by default TLS 1.2
/// and 1.3 with AEAD suites and forward secrecy only (no TLS 1.0/1.1, no CBC, no RSA key
/// exchange); with `cipher_suites` and `groups` only those. Unknown names are config errors.
#[test]
fn offered_protocols_suites_and_groups() {
    let (dir, _ca, origin) = setup();
    let p = Proxy::start(&tls_config(origin.addr, &dir, "", ""));
    let handshake = |p: &Proxy, args: &[&str]| {
        let out = s_client(p.addr, &[&["-servername", "a.test"], args].concat());
        out.contains("Cipher is ") && !out.contains("Cipher is (NONE)")
    };
    assert!(handshake(&p, &["-tls1_3"]));
    assert!(handshake(&p, &["-tls1_2"]));
    for old in ["-tls1_1", "-tls1"] {
        assert!(
            !handshake(&p, &[old, "-cipher", "DEFAULT@SECLEVEL=0"]),
            "{old}"
        );
    }
    for weak in [
        "ECDHE-ECDSA-AES128-SHA",
        "AES128-GCM-SHA256",
        "AES128-SHA",
        "DES-CBC3-SHA",
    ] {
        assert!(!handshake(&p, &["-tls1_2", "-cipher", weak]), "{weak}");
    }
    drop(p);
    let p = Proxy::start(&tls_config(
        origin.addr,
        &dir,
        "cipher_suites = [\"TLS13_AES_256_GCM_SHA384\", \"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\"]\ngroups = [\"secp384r1\"]",
        "",
    ));
    assert!(handshake(
        &p,
        &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"]
    ));
    assert!(!handshake(
        &p,
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]
    ));
    assert!(handshake(
        &p,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]
    ));
    assert!(!handshake(
        &p,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]
    ));
    assert!(handshake(&p, &["-groups", "P-384"]));
    assert!(!handshake(&p, &["-groups", "X25519"]));
    drop(p);
    let check = |extra: &str| {
        let f = TempFile::new(&tls_config(origin.addr, &dir, extra, ""));
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&f.0)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check("cipher_suites = [\"RC4_128_MD5\"]");
    assert!(
        err.contains("tls.cipher_suites: unknown cipher suite \"RC4_128_MD5\"; known: TLS13_"),
        "{err}"
    );
    let err = check("groups = [\"ffdhe2048\"]");
    assert!(
        err.contains("tls.groups: unknown key-exchange group"),
        "{err}"
    );
    // TLS 1.3 allowed but no TLS 1.3 suite listed: said, with the key.
    let err = check("cipher_suites = [\"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\"]");
    assert!(err.contains("tls.cipher_suites"), "{err}");
}

/// chromium through an HTTPS proxy (`--proxy-server=https://…`): TLS to the proxy, the page's
/// request inside it; the proxy's certificate pinned by its key for the browser.
#[test]
fn a_headless_browser_uses_the_https_proxy() {
    let Some(chromium) = browser_unless_skipped() else {
        return;
    };
    let (dir, ca, origin) = setup();
    ca.issue(&dir, "proxy", &["proxy.test"], false);
    let p = Proxy::start(&format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", tls = true, forward = true }}]\nworkers = 1\npin = false\n\
         [tls]\ncertificates = [{{ cert = \"{p}.crt\", key = \"{p}.key\" }}]\n\
         [[forward.rules]]\naction = \"allow\"\ndomains = [\"~^127\\\\.0\\\\.0\\\\.1$\"]\n",
        p = dir.path("proxy"),
    ));
    let spki = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            dir.path("proxy.crt")
        ))
        .output()
        .unwrap();
    let spki = String::from_utf8_lossy(&spki.stdout).trim().to_string();
    let profile = dir.0.join("profile");
    let url = format!("http://{}/through-the-https-proxy", origin.addr);
    let out = Command::new(chromium)
        .args(QUIET_BROWSER)
        .args([
            &format!("--user-data-dir={}", profile.display()),
            &format!("--proxy-server=https://proxy.test:{}", p.addr.port()),
            "--host-resolver-rules=MAP proxy.test 127.0.0.1",
            &format!("--ignore-certificate-errors-spki-list={spki}"),
            "--proxy-bypass-list=<-loopback>",
            "--dump-dom",
        ])
        .arg(&url)
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("ok /through-the-https-proxy"),
        "{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = origin.seen();
    assert!(seen.iter().any(|s| s.header("via") == Some("1.1 ringway")));
}

/// An OCSP responder on loopback: each POSTed request is answered by `openssl ocsp` from an
/// index of the test CA's certificates (status V valid, R revoked), so the responses are
/// real, signed by the CA, with a `nextUpdate` an hour away.
struct OcspResponder {
    url: String,
    asked: Arc<AtomicUsize>,
}

impl OcspResponder {
    fn start_on(dir: &Dir, index: &str, port: u16) -> Self {
        let index_path = dir.write("index.txt", index);
        dir.write("index.txt.attr", "unique_subject = no\n");
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let url = format!("http://127.0.0.1:{}/ocsp", l.local_addr().unwrap().port());
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let d = dir.0.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then Content-Length bytes.
                let body = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                };
                let Some(body) = body else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::fs::write(d.join("req.der"), body).unwrap();
                let ok = Command::new("openssl")
                    .args(["ocsp", "-index"])
                    .arg(&index_path)
                    .arg("-CA")
                    .arg(d.join("ca.pem"))
                    .arg("-rsigner")
                    .arg(d.join("ca.pem"))
                    .arg("-rkey")
                    .arg(d.join("ca.key"))
                    .arg("-reqin")
                    .arg(d.join("req.der"))
                    .arg("-respout")
                    .arg(d.join("resp.der"))
                    .args(["-nmin", "60"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                let resp = if ok {
                    std::fs::read(d.join("resp.der")).unwrap()
                } else {
                    Vec::new()
                };
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    resp.len()
                )
                .into_bytes();
                out.extend_from_slice(&resp);
                let _ = s.write_all(&out);
            }
        });
        Self { url, asked }
    }
}

/// The index line of a certificate for `openssl ocsp`.
fn index_line(dir: &Dir, stem: &str, status: char) -> String {
    let out = Command::new("openssl")
        .args([
            "x509", "-noout", "-serial", "-subject", "-nameopt", "compat", "-in",
        ])
        .arg(dir.path(&format!("{stem}.crt")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let serial = text
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap()
        .trim()
        .to_string();
    let subject = text
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap()
        .trim()
        .to_string();
    let revoked = if status == 'R' { "250101000000Z" } else { "" };
    format!("{status}\t351231000000Z\t{revoked}\t{serial}\tunknown\t{subject}\n")
}

/// OCSP stapling: certificates whose leaf names a responder get its answer stapled (`openssl
/// s_client -status` sees it), fetched off the workers; a revoked certificate gets nothing
/// stapled and a warning says why; handshakes never wait for the responder.
#[test]
fn ocsp_answers_are_stapled_and_bad_ones_are_not() {
    let (dir, ca, origin) = setup();
    // The responder's address must be in the certificates before it starts: take the port.
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let url = format!("http://127.0.0.1:{port}/ocsp");
    ca.issue_with_ocsp(&dir, "good", &["good.test"], &url);
    ca.issue_with_ocsp(&dir, "bad", &["bad.test"], &url);
    dir.write("ca.key", &ca.key.serialize_pem());
    let index = format!(
        "{}{}",
        index_line(&dir, "good", 'V'),
        index_line(&dir, "bad", 'R')
    );
    let p = Proxy::start(&format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", tls = true }}]\nworkers = 1\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[tls]\ncertificates = [{{ cert = \"{g}.crt\", key = \"{g}.key\" }}, {{ cert = \"{b}.crt\", key = \"{b}.key\" }}]\n\
         [upstreams.app]\nservers = [\"{o}\"]\n[[routes]]\nupstream = \"app\"\n",
        g = dir.path("good"),
        b = dir.path("bad"),
        o = origin.addr,
    ));
    // No responder yet: handshakes go on, with nothing stapled, and the failure is logged.
    p.wait_log(|l| l.contains("ocsp: ") && l.contains("asking again in 300 s"));
    let out = s_client(p.addr, &["-servername", "good.test", "-status"]);
    assert!(out.contains("Cipher is "), "{out}");
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    let r = OcspResponder::start_on(&dir, &index, port);
    assert_eq!(r.url, url);
    // The next try is 5 minutes away: a restart asks at once.
    drop(p);
    let p = Proxy::start(&format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", tls = true }}]\nworkers = 1\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[tls]\ncertificates = [{{ cert = \"{g}.crt\", key = \"{g}.key\" }}, {{ cert = \"{b}.crt\", key = \"{b}.key\" }}]\n\
         [upstreams.app]\nservers = [\"{o}\"]\n[[routes]]\nupstream = \"app\"\n",
        g = dir.path("good"),
        b = dir.path("bad"),
        o = origin.addr,
    ));
    p.wait_log(|l| l.contains("revoked"));
    let end = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = s_client(p.addr, &["-servername", "good.test", "-status"]);
        if out.contains("OCSP Response Status: successful") || Instant::now() > end {
            break out;
        }
    };
    assert!(out.contains("OCSP Response Status: successful"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    assert!(out.contains("Next Update:"), "{out}");
    let out = s_client(p.addr, &["-servername", "bad.test", "-status"]);
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    assert!(r.asked.load(Ordering::SeqCst) >= 2);
    let m = admin_get(admin_addr(&p), "/metrics");
    assert_eq!(
        sample(&m, "ringway_ocsp_stapled_certificates", ""),
        Some(1.0)
    );
    assert!(sample(&m, "ringway_ocsp_fetches_total", "result=\"ok\"").unwrap() >= 1.0);
    assert!(sample(&m, "ringway_ocsp_fetches_total", "result=\"failed\"").unwrap() >= 1.0);
    // curl checks the stapled answer too.
    let (ok, _) = curl_name(
        &p,
        &dir.0.join("ca.pem"),
        "good.test",
        "/",
        &["--cert-status"],
    );
    assert!(ok);
}

/// A tunnel inside an HTTPS proxy connection that nothing moves through is closed after
/// `tunnel_idle` (the copying tunnel keeps the idle limit the spliced one has), with
/// close_notify; a client that closes mid-tunnel ends it.
#[test]
fn an_idle_tunnel_inside_tls_is_closed() {
    let (dir, test_ca, origin) = setup();
    test_ca.issue(&dir, "proxy", &["proxy.test"], false);
    let port = origin.addr.port();
    let p = Proxy::start(&format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", tls = true, forward = true }}]\nworkers = 1\npin = false\n\
         [tls]\ncertificates = [{{ cert = \"{c}.crt\", key = \"{c}.key\" }}]\n\
         [forward]\nconnect_ports = [{port}]\ntunnel_idle = \"1s\"\n",
        c = dir.path("proxy"),
    ));
    let ca = dir.0.join("ca.pem");
    let open = || {
        let (conn, tcp) = handshaken(p.addr, &ca, "proxy.test");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", origin.addr).as_bytes())
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1);
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s
    };
    // Clients that leave mid-tunnel, with a request half sent.
    for _ in 0..10 {
        let mut s = open();
        s.write_all(b"GET /slow/2000 HTTP/1.1\r\n").unwrap();
        drop(s);
    }
    // Idle: the proxy ends it (close_notify, then the close) well before our 10 s read timeout.
    let mut s = open();
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(r.is_ok(), "the proxy closed the idle tunnel cleanly: {r:?}");
    assert!(rest.is_empty());
    // Still serving.
    let mut s = open();
    s.write_all(b"GET /len/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.contains("Content-Length: 3\r\n"),
        "{got}"
    );
}
