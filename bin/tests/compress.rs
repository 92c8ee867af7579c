//! Compression on the fly (#24): gzip, brotli and zstd chosen from `Accept-Encoding`, with curl
//! decoding what the proxy sends; what must not be encoded is left alone; stored responses are
//! encoded once and served with their length; a streamed body is never held back.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use support::*;

/// A JSON document of `n` bytes.
fn json(n: usize) -> Vec<u8> {
    let mut v = b"[".to_vec();
    let mut i = 0u64;
    while v.len() < n - 40 {
        v.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"item {}\",\"ok\":true}},",
                i * 7919 % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    v.extend_from_slice(b"{}]");
    v.resize(n, b' ');
    v
}

fn html() -> Vec<u8> {
    let mut v = b"<!doctype html><html><body>".to_vec();
    for i in 0..3000 {
        v.extend_from_slice(format!("<p class=\"row\">row {i} of the table</p>\n").as_bytes());
    }
    v.extend_from_slice(b"</body></html>\n");
    v
}

/// The scripted origin: counts requests by path; `/stream` sends its first chunk, then
/// waits for the test's go (`release`) before the rest.
struct Scripted {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
    release: mpsc::Sender<()>,
}

fn scripted_origin() -> Scripted {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let (release, go) = mpsc::channel::<()>();
    let go = Arc::new(Mutex::new(go));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(300) {
            let Ok(s) = s else { continue };
            let _ = s.set_nodelay(true);
            let (h, go) = (h.clone(), go.clone());
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
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let head_only = head.starts_with("HEAD ");
                    h.lock().unwrap().push(path.clone());
                    let fixed = |ct: &str, extra: &str, body: &[u8]| {
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n{extra}Content-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        if !head_only {
                            out.extend_from_slice(body);
                        }
                        out
                    };
                    let out = match path.as_str() {
                        "/data.json" => fixed(
                            "application/json",
                            "ETag: \"v1\"\r\nAccept-Ranges: bytes\r\nVary: Origin\r\n",
                            &json(64 * 1024),
                        ),
                        "/cached.json" => fixed(
                            "application/json; charset=utf-8",
                            "Cache-Control: max-age=60\r\nETag: \"c1\"\r\n",
                            &json(64 * 1024),
                        ),
                        "/cached-big.json" => fixed(
                            "application/json",
                            "Cache-Control: max-age=60\r\n",
                            &json(4 << 20),
                        ),
                        "/image.png" => fixed("image/png", "", &json(4096)),
                        "/pre.txt" => {
                            let mut e = flate2::write::GzEncoder::new(
                                Vec::new(),
                                flate2::Compression::fast(),
                            );
                            e.write_all(&json(4096)).unwrap();
                            let gz = e.finish().unwrap();
                            fixed("text/plain", "Content-Encoding: gzip\r\n", &gz)
                        }
                        "/keep.json" => fixed(
                            "application/json",
                            "Cache-Control: no-transform\r\n",
                            &json(4096),
                        ),
                        "/small.txt" => fixed("text/plain", "", b"short"),
                        "/page.html" | "/stream" => {
                            let body = html();
                            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                            let (first, rest) = body.split_at(1000);
                            out.extend_from_slice(format!("{:x}\r\n", first.len()).as_bytes());
                            out.extend_from_slice(first);
                            out.extend_from_slice(b"\r\n");
                            if path == "/stream" {
                                if w.write_all(&out).is_err() {
                                    return;
                                }
                                out.clear();
                                let _ = go.lock().unwrap().recv_timeout(Duration::from_secs(20));
                            }
                            for piece in rest.chunks(7000) {
                                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                                out.extend_from_slice(piece);
                                out.extend_from_slice(b"\r\n");
                            }
                            out.extend_from_slice(b"0\r\n\r\n");
                            out
                        }
                        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    };
                    if w.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        addr,
        hits,
        release,
    }
}

/// `curl -s -D - URL` with `Accept-Encoding: enc`, decoded by curl (`--compressed`): the head
/// and the body as the client application sees it.
fn fetch(p: &Proxy, path: &str, enc: &str, extra: &[&str]) -> (String, Vec<u8>) {
    let url = format!("http://{}{path}", p.addr);
    let ae = format!("Accept-Encoding: {enc}");
    let mut args = vec!["-D", "/dev/stderr", "-o", "-", "--compressed", "-H", &ae];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--noproxy", "*"])
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stderr).to_ascii_lowercase(),
        out.stdout,
    )
}

fn has(head: &str, line: &str) -> bool {
    head.lines().any(|l| l.trim_end() == line)
}

fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim_end)
}

#[test]
fn every_coding_reaches_curl_decodable_with_the_head_it_implies() {
    let o = scripted_origin();
    let p = Proxy::start_quick(&["--upstream", &o.addr.to_string(), "--compress"]);
    for enc in ["gzip", "br", "zstd"] {
        let (head, body) = fetch(&p, "/data.json", enc, &[]);
        assert_eq!(body, json(64 * 1024), "{enc}");
        assert!(
            has(&head, &format!("content-encoding: {enc}")),
            "{enc}: {head}"
        );
        assert!(has(&head, "vary: origin, accept-encoding"), "{head}");
        // The encoded bytes are not the ones the tag named, nor can ranges of them be asked.
        assert!(has(&head, "etag: w/\"v1\""), "{head}");
        assert!(field(&head, "accept-ranges").is_none(), "{head}");
        assert!(field(&head, "content-length").is_none(), "{head}");
        assert!(has(&head, "transfer-encoding: chunked"), "{head}");
        // A chunked upstream body, in pieces.
        let (head, body) = fetch(&p, "/page.html", enc, &[]);
        assert_eq!(body, html(), "{enc}");
        assert!(has(&head, &format!("content-encoding: {enc}")), "{head}");
    }
    // The client's weights decide, then ringway's order (zstd, br, gzip).
    let (head, _) = fetch(&p, "/data.json", "gzip;q=1, br;q=0.5, zstd;q=0.1", &[]);
    assert!(has(&head, "content-encoding: gzip"), "{head}");
    let (head, _) = fetch(&p, "/data.json", "gzip, deflate, br, zstd", &[]);
    assert!(has(&head, "content-encoding: zstd"), "{head}");
    let (head, _) = fetch(&p, "/data.json", "*;q=0.3, zstd;q=0", &[]);
    assert!(has(&head, "content-encoding: br"), "{head}");
    // How much smaller, as the client received it.
    let raw = curl(&[
        "-s",
        "-H",
        "Accept-Encoding: zstd",
        &format!("http://{}/data.json", p.addr),
    ])
    .1;
    assert!(raw.len() < 64 * 1024 / 8, "zstd: {} bytes", raw.len());
}

#[test]
fn what_must_not_be_encoded_is_left_alone() {
    let o = scripted_origin();
    let p = Proxy::start_quick(&["--upstream", &o.addr.to_string(), "--compress"]);
    for (path, vary) in [
        ("/image.png", false),
        ("/pre.txt", false),
        ("/keep.json", false),
        ("/small.txt", false),
    ] {
        let (head, _) = fetch(&p, path, "gzip, br, zstd", &[]);
        let ce = field(&head, "content-encoding");
        assert!(
            ce.is_none() || (path == "/pre.txt" && ce == Some("gzip")),
            "{path}: {head}"
        );
        assert!(field(&head, "content-length").is_some(), "{path}: {head}");
        assert_eq!(field(&head, "vary").is_some(), vary, "{path}: {head}");
    }
    // A client that takes no coding gets the body as it is, and `Vary` for the caches between.
    for enc in ["identity", "gzip;q=0", "deflate", "x-unknown"] {
        let (head, body) = fetch(&p, "/data.json", enc, &[]);
        assert_eq!(body.len(), 64 * 1024, "{enc}");
        assert!(field(&head, "content-encoding").is_none(), "{enc}: {head}");
        assert!(has(&head, "content-length: 65536"), "{enc}: {head}");
        assert!(has(&head, "etag: \"v1\""), "{enc}: {head}");
        assert!(has(&head, "vary: origin, accept-encoding"), "{enc}: {head}");
    }
    // HEAD gets the fields GET would get, and no body.
    let (head, body) = fetch(&p, "/data.json", "gzip", &["-I"]);
    assert!(
        body.is_empty() || body.starts_with(b"HTTP/1.1 200"),
        "{body:?}"
    );
    assert!(has(&head, "content-encoding: gzip"), "{head}");
    assert!(field(&head, "content-length").is_none(), "{head}");
    assert!(has(&head, "vary: origin, accept-encoding"), "{head}");
    // A config that does not compress changes nothing.
    let plain = Proxy::start_quick(&["--upstream", &o.addr.to_string()]);
    let (head, _) = fetch(&plain, "/data.json", "gzip, br, zstd", &[]);
    assert!(field(&head, "content-encoding").is_none(), "{head}");
    assert!(has(&head, "vary: origin"), "{head}");
}

#[test]
fn a_stored_response_is_encoded_once_and_served_with_its_length() {
    let o = scripted_origin();
    let cfg = config_for(
        o.addr,
        "[cache]\nsize = \"16m\"\n[compression]\ncodings = [\"zstd\", \"br\", \"gzip\"]\n",
    )
    .replace("upstream = \"app\"\n", "upstream = \"app\"\ncache = true\n");
    let p = Proxy::start(&cfg);
    let (head, body) = fetch(&p, "/cached.json", "zstd", &[]);
    assert_eq!(body, json(64 * 1024));
    assert!(has(&head, "content-encoding: zstd"), "{head}");
    for enc in ["zstd", "br", "gzip", "identity", "zstd"] {
        let (head, body) = fetch(&p, "/cached.json", enc, &[]);
        assert_eq!(body, json(64 * 1024), "{enc}");
        assert!(
            field(&head, "cache-status").is_some_and(|c| c.contains("hit")),
            "{enc}: {head}"
        );
        let len: usize = field(&head, "content-length").unwrap().parse().unwrap();
        if enc == "identity" {
            assert_eq!(len, 64 * 1024);
            assert!(field(&head, "content-encoding").is_none(), "{head}");
            assert!(has(&head, "etag: \"c1\""), "{head}");
        } else {
            assert!(len < 64 * 1024 / 4, "{enc}: {len}");
            assert!(has(&head, &format!("content-encoding: {enc}")), "{head}");
            assert!(has(&head, "etag: w/\"c1\""), "{head}");
        }
        assert!(has(&head, "vary: accept-encoding"), "{enc}: {head}");
    }
    // One origin fetch for all of them.
    let fetched = o
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|p| *p == "/cached.json")
        .count();
    assert_eq!(fetched, 1);
    // A range of a stored response is of the identity bytes, and says so.
    let (head, body) = fetch(&p, "/cached.json", "gzip", &["-r", "0-9"]);
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, &json(64 * 1024)[..10]);
    assert!(field(&head, "content-encoding").is_none(), "{head}");
}

/// Large encoded copies live in pages of their own like large stored bodies, and hits on them
/// go out by reference (io/src/pages.rs).
#[test]
fn large_encoded_copies_are_sent_by_reference() {
    let o = scripted_origin();
    let cfg = config_for(
        o.addr,
        "[cache]\nsize = \"256m\"\n[compression]\ncodings = [\"zstd\", \"br\", \"gzip\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .replace("upstream = \"app\"\n", "upstream = \"app\"\ncache = true\n");
    let p = Proxy::start(&cfg);
    let admin = support::admin_addr(&p);
    let want = json(4 << 20);
    let (_, body) = fetch(&p, "/cached-big.json", "identity", &[]);
    assert!(body == want);
    let mut placed = 1;
    for enc in ["gzip", "zstd", "br"] {
        // The first hit makes the copy, the next ones are served from it.
        for round in 0..3 {
            let (head, body) = fetch(&p, "/cached-big.json", enc, &[]);
            assert!(body == want, "{enc}, round {round}");
            assert!(has(&head, &format!("content-encoding: {enc}")), "{head}");
            let len: usize = field(&head, "content-length").unwrap().parse().unwrap();
            if round == 0 && len >= 32 * 1024 {
                placed += 1;
            }
        }
    }
    assert!(placed > 1, "no copy large enough to place");
    support::wait_metric(
        admin,
        "ringway_cache_bodies_by_reference",
        "",
        placed as f64,
    );
}

#[test]
fn an_http10_client_gets_the_encoded_body_delimited_by_the_close() {
    let o = scripted_origin();
    let log = std::env::temp_dir().join(format!("ringway-gz-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let p = Proxy::start_quick(&[
        "--upstream",
        &o.addr.to_string(),
        "--compress",
        "--access-log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    let mut c = Client::connect(p.addr);
    c.send(b"GET /data.json HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n");
    let r = c.response("GET").expect("a response");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.header("transfer-encoding").is_none());
    assert!(r.header("content-length").is_none());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, json(64 * 1024));
    // The log counts what the client got, not what the origin sent.
    let want = format!("\"bytes_out\":{}", r.body.len());
    file_until(&log, Duration::from_secs(10), |t| t.contains(&want));
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_streamed_body_is_not_held_back_by_the_encoder() {
    let o = scripted_origin();
    let p = Proxy::start_quick(&["--upstream", &o.addr.to_string(), "--compress"]);
    let mut c = Client::connect(p.addr);
    c.send(b"GET /stream HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n");
    // The head, then the first chunk: the origin sent 1000 bytes and waits.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        c.r.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut size = String::new();
    c.r.read_line(&mut size).unwrap();
    let n = usize::from_str_radix(size.trim_end(), 16).unwrap();
    let mut first = vec![0; n + 2];
    c.r.read_exact(&mut first).unwrap();
    first.truncate(n);
    let mut got = Vec::new();
    let _ = flate2::read::GzDecoder::new(&first[..]).read_to_end(&mut got);
    assert_eq!(
        got,
        &html()[..1000],
        "what the origin sent so far, decodable"
    );
    let _ = o.release.send(());
    let mut rest = Vec::new();
    rest.extend_from_slice(&first);
    loop {
        let mut size = String::new();
        c.r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim_end(), 16).unwrap();
        if n == 0 {
            break;
        }
        let mut piece = vec![0; n + 2];
        c.r.read_exact(&mut piece).unwrap();
        rest.extend_from_slice(&piece[..n]);
    }
    let mut all = Vec::new();
    flate2::read::GzDecoder::new(&rest[..])
        .read_to_end(&mut all)
        .unwrap();
    assert_eq!(all, html());
}

#[test]
fn a_route_can_turn_compression_off_and_the_section_is_checked() {
    let o = scripted_origin();
    let cfg = config_for(o.addr, "[compression]\nmin_length = \"1k\"\n")
        .replace("path = \"/\"\n", "path = \"/\"\ncompress = false\n");
    let p = Proxy::start(&cfg);
    let (head, _) = fetch(&p, "/data.json", "gzip", &[]);
    assert!(field(&head, "content-encoding").is_none(), "{head}");
    // A bad coding is refused at `check`, naming the line and key.
    let bad = TempFile::new(&config_for(
        o.addr,
        "[compression]\ncodings = [\"gzip\", \"lzma\"]\n",
    ));
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&bad.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = std::fs::read_to_string(&bad.0)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("codings"))
        .unwrap()
        + 1;
    assert!(
        err.contains("compression.codings[1]") && err.contains(&format!(":{line}:")),
        "{err}"
    );
}
