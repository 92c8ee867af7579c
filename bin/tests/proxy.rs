//! End-to-end tests: the real `ringway` binary between real clients and a real origin, all on
//! loopback with ephemeral ports.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").into_bytes()
}

#[test]
fn keep_alive_reuses_one_upstream_connection() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    for i in 0..20 {
        c.send(&get(&format!("/n/{i}")));
        let r = c.response("GET").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("ok /n/{i}"));
    }
    // Sequential requests, even from separate client connections, share one upstream connection.
    for _ in 0..5 {
        assert_eq!(request(proxy.addr, &get("/x")).unwrap().status, 200);
    }
    assert_eq!(origin.connections(), 1);
}

/// Bursts of eight requests in flight together through a pool of two (`keepalive = 2`): the
/// connections the first burst opened serve the next ones, where closing all but two at once
/// (nginx's way) would have each burst open six again.
#[test]
fn bursts_wider_than_the_pool_reuse_their_connections() {
    let origin = Origin::start();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n\
         [upstreams.app]\nservers = [\"{}\"]\nkeepalive = 2\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        origin.addr
    );
    let proxy = Proxy::start(&config);
    for burst in 0..3 {
        // The origin holds each answer 300 ms: all eight are in flight together.
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let addr = proxy.addr;
                std::thread::spawn(move || request(addr, &get("/slow/300")).map(|r| r.text()))
            })
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap().as_deref(), Some("slow"), "burst {burst}");
        }
        assert_eq!(origin.connections(), 8, "after burst {burst}");
    }
}

#[test]
fn forwarding_headers_added_and_hop_by_hop_removed() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let r = request(
        proxy.addr,
        b"GET /h HTTP/1.1\r\nHost: Example.COM:8080\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\
Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Forwarded-For: 203.0.113.9\r\n\
X-Real-IP: 1.2.3.4\r\nX-Keep: yes\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("via"), Some("1.1 ringway"));
    let s = &origin.seen()[0];
    assert_eq!(s.header("host"), Some("Example.COM:8080"));
    assert_eq!(s.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(s.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-host"), Some("Example.COM:8080"));
    assert_eq!(s.header("via"), Some("1.1 ringway"));
    assert_eq!(s.header("x-keep"), Some("yes"));
    for h in [
        "connection",
        "x-drop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert_eq!(s.header(h), None, "{h} must not be forwarded");
    }
}

#[test]
fn chunked_bodies_are_reframed_both_ways() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n");
    let r = c.response("POST").unwrap();
    assert_eq!(r.text(), "hello world");
    let seen = origin.seen();
    assert_eq!(seen[0].header("transfer-encoding"), Some("chunked"));
    // A chunked response reaches an HTTP/1.1 client chunked, with its framing rewritten.
    c.send(&get("/chunked/5000"));
    let r = c.response("GET").unwrap();
    assert_eq!((r.status, r.body_len), (200, 5000));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("x-origin"), Some("1"));
    // ... and an HTTP/1.0 client gets it close-delimited.
    let mut c10 = Client::connect(proxy.addr);
    c10.send(b"GET /chunked/3000 HTTP/1.0\r\n\r\n");
    let r = c10.response("GET").unwrap();
    assert_eq!((r.status, r.body_len), (200, 3000));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn close_delimited_response_becomes_chunked_for_http11() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/close/70000"));
    let r = c.response("GET").unwrap();
    assert_eq!((r.status, r.body_len), (200, 70000));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    // The client connection stays usable.
    c.send(&get("/after"));
    assert_eq!(c.response("GET").unwrap().text(), "ok /after");
}

#[test]
fn head_204_and_interim_responses() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    c.send(b"HEAD /len/1234 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response("HEAD").unwrap();
    assert_eq!(r.header("content-length"), Some("1234"));
    c.send(&get("/204"));
    assert_eq!(c.response("GET").unwrap().status, 204);
    c.send(&get("/continue"));
    let early = c.response("GET").unwrap();
    assert_eq!(early.status, 103);
    assert_eq!(early.header("link"), Some("</a.css>"));
    let r = c.response("GET").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    c.send(&get("/ok"));
    assert_eq!(c.response("GET").unwrap().text(), "ok /ok");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    let mut batch = Vec::new();
    for i in 0..10 {
        if i == 4 {
            batch.extend_from_slice(
                b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nbody4",
            );
        } else {
            batch.extend_from_slice(&get(&format!("/p/{i}")));
        }
    }
    c.send(&batch);
    for i in 0..10 {
        let r = c.response(if i == 4 { "POST" } else { "GET" }).unwrap();
        if i == 4 {
            assert_eq!(r.text(), "body4");
        } else {
            assert_eq!(r.text(), format!("ok /p/{i}"));
        }
    }
}

#[test]
fn upstream_down_is_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = Proxy::start(&config_for(addr, ""));
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/"));
    let r = c.response("GET").unwrap();
    assert_eq!(r.status, 502);
    proxy.wait_log(|l| l.contains("upstream connect failed"));
    // The client connection survives an upstream failure. The only server of a group is never
    // ejected (there is nowhere else to go), so the next request tries it again.
    c.send(&get("/"));
    let r = c.response("GET").unwrap();
    assert_eq!(r.status, 502);
    assert!(!proxy.log.lock().unwrap().contains("ejected"));
}

#[test]
fn error_answers_to_head_have_no_body() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = Proxy::start(&config_for(addr, ""));
    let mut c = Client::connect(proxy.addr);
    // A 502 to HEAD, then a 404 to HEAD: if either carried its page, the next response would
    // be read out of it.
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nHEAD /x HTTP/1.1\r\nHost: nothing.example\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response("HEAD").unwrap();
    assert_eq!(r.status, 502);
    assert!(r.header("content-length").is_some());
    assert_eq!(c.response("HEAD").unwrap().status, 502);
    let r = c.response("GET").unwrap();
    assert_eq!(r.status, 502);
    assert!(r.text().starts_with("502 Bad Gateway"), "{}", r.text());
    // curl agrees: no "excess data" and a clean exit.
    let url = format!("http://{}/", proxy.addr);
    let (ok, out) = curl(&["-I", &url]);
    assert!(ok);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 502"));
}

#[test]
fn slow_upstream_is_504() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\nupstream_read = \"300ms\"\n",
    ));
    let start = Instant::now();
    let r = request(proxy.addr, &get("/slow/3000")).unwrap();
    assert_eq!(r.status, 504);
    assert!(r.text().contains("did not answer in time"), "{}", r.text());
    proxy.wait_log(|l| l.contains("upstream timed out"));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn invalid_upstream_response_is_502_and_not_reused() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/bad-response"));
    let r = c.response("GET").unwrap();
    assert_eq!(r.status, 502);
    proxy.wait_log(|l| l.contains("invalid response"));
    c.send(&get("/fine"));
    assert_eq!(c.response("GET").unwrap().text(), "ok /fine");
    assert_eq!(
        origin.connections(),
        2,
        "the bad connection must not be reused"
    );
}

#[test]
fn upstream_closing_idle_connection_is_retried_not_502() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    for i in 0..5 {
        c.send(&get("/close-after"));
        let r = c.response("GET").unwrap();
        assert_eq!(r.status, 200, "request {i}");
        // The origin closes the connection the proxy pooled; wait until it has, so the next
        // request really meets a closed pooled connection.
        origin.wait_closed(i + 1);
    }
    assert_eq!(origin.connections(), 5);
}

/// Every vector is answered 400 (or 501) with the connection closed, and the origin sees
/// nothing of it.
#[test]
fn smuggling_vectors_are_rejected_before_the_upstream() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let vectors: &[(&[u8], u16)] = &[
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\nabcde", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4 \x0b\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHo[st: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET / HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400),
    ];
    for (bytes, status) in vectors {
        let mut c = Client::connect(proxy.addr);
        c.send(bytes);
        let r = c
            .response("POST")
            .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(bytes)));
        assert_eq!(r.status, *status, "{:?}", String::from_utf8_lossy(bytes));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "connection must close"
        );
    }
    // Chunk framing that arrives with the head is checked before connecting: the origin saw
    // nothing of any vector.
    let seen = origin.seen();
    assert!(seen.is_empty(), "origin saw a rejected request: {seen:?}");
    assert_eq!(origin.connections(), 0);
}

#[test]
fn oversized_heads_are_431_and_414() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[limits]\nmax_request_head = 4096\nmax_request_target = 1024\nmax_headers = 20\n",
    ));
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(2000));
    assert_eq!(
        request(proxy.addr, long_target.as_bytes()).unwrap().status,
        414
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(5000)
    );
    assert_eq!(request(proxy.addr, big.as_bytes()).unwrap().status, 431);
    let many: String = (0..30).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(request(proxy.addr, many.as_bytes()).unwrap().status, 431);
    assert!(origin.seen().is_empty());
}

#[test]
fn slow_client_head_times_out_and_closes() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\nclient_header = \"300ms\"\n",
    ));
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n");
    expect_408_then_close(&mut c, Instant::now(), Duration::from_secs(5));
    // A client that sends nothing at all is closed silently.
    let mut idle = Client::connect(proxy.addr);
    assert!(idle.closed_within(Duration::from_secs(5)));
    assert!(origin.seen().is_empty());
}

/// A connection has one timer that each operation moves to core's deadline for it: it must
/// fire early when a deadline gets shorter (a long keep-alive wait, then a short header
/// timeout) and must not fire at an earlier, shorter deadline once a longer one is set (a
/// header timeout shorter than the origin's answer time).
#[test]
fn one_timer_per_connection_follows_shorter_and_longer_deadlines() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\nclient_header = \"400ms\"\nkeepalive = \"60s\"\nupstream_read = \"5s\"\n",
    ));
    let mut c = Client::connect(proxy.addr);
    // The origin answers after 1 s: longer than the header timeout before it.
    c.send(&get("/slow/1000"));
    let r = c.response("GET").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    c.send(&get("/slow/1000"));
    assert_eq!(c.response("GET").unwrap().status, 200);
    // The connection now waits under the 60 s keep-alive deadline; half a head moves it to the
    // 400 ms header deadline, and the 408 comes at that.
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n");
    let start = Instant::now();
    expect_408_then_close(&mut c, start, Duration::from_secs(3));
}

#[test]
fn keepalive_idle_timeout_closes() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\nkeepalive = \"200ms\"\n",
    ));
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/"));
    assert_eq!(c.response("GET").unwrap().status, 200);
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn expect_100_continue() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    let interim = c.response("POST").unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"abc");
    assert_eq!(c.response("POST").unwrap().text(), "abc");
    assert_eq!(origin.seen()[0].header("expect"), None);
}

#[test]
fn large_bodies_stream_with_bounded_memory() {
    const SIZE: u64 = 256 << 20;
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    // Download.
    let mut c = Client::connect(proxy.addr);
    c.send(&get(&format!("/len/{SIZE}")));
    let r = c.response("GET").unwrap();
    assert_eq!((r.status, r.body_len), (200, SIZE));
    // Upload, Content-Length framed.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    write!(
        s,
        "POST /sum HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![7u8; 1 << 16];
    for _ in 0..SIZE / chunk.len() as u64 {
        s.write_all(&chunk).unwrap();
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.ends_with(&format!("\r\n\r\n{SIZE} {}", SIZE * 7)),
        "{resp}"
    );
    let rss = proxy.peak_rss_kib();
    eprintln!("peak RSS {rss} KiB");
    assert!(
        rss < 48 * 1024,
        "peak RSS {rss} KiB while moving {} MiB each way",
        SIZE >> 20
    );
}

#[test]
fn fixed_responses_and_404() {
    let origin = Origin::start();
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nhost = \"api.test\"\npath = \"/v1/\"\nupstream = \"app\"\n\
         [[routes]]\nhost = \"*.static.test\"\npath = \"/\"\nrespond = {{ status = 200, body = \"static\\n\", headers = {{ \"Content-Type\" = \"text/plain\" }} }}\n",
        origin.addr
    );
    let proxy = Proxy::start(&cfg);
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET /v1/users HTTP/1.1\r\nHost: API.test\r\n\r\n");
    assert_eq!(c.response("GET").unwrap().text(), "ok /v1/users");
    c.send(b"GET /x HTTP/1.1\r\nHost: cdn.static.test\r\n\r\n");
    let r = c.response("GET").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "static\n"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // A body sent to a local responder is read and discarded; the connection carries on.
    c.send(b"POST /x HTTP/1.1\r\nHost: cdn.static.test\r\nContent-Length: 4\r\n\r\nbody");
    assert_eq!(c.response("POST").unwrap().status, 200);
    c.send(b"GET /v2/ HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(c.response("GET").unwrap().status, 404);
    c.send(b"GET /v1/again HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(c.response("GET").unwrap().status, 200);
}

#[test]
fn curl_through_the_proxy() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let url = format!("http://{}", proxy.addr);
    let (ok, out) = curl(&[&format!("{url}/hello")]);
    assert!(ok);
    assert_eq!(out, b"ok /hello");
    // Several URLs on one connection (curl reuses it).
    let (ok, out) = curl(&[&format!("{url}/a"), &format!("{url}/b")]);
    assert!(ok);
    assert_eq!(out, b"ok /aok /b");
    // A 2 MiB upload: curl sends Expect: 100-continue for bodies this large.
    let file = TempFile::new(&"z".repeat(2 << 20));
    let (ok, out) = curl(&[
        "--data-binary",
        &format!("@{}", file.0.display()),
        &format!("{url}/sum"),
    ]);
    assert!(ok);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{} {}", 2 << 20, (2u64 << 20) * u64::from(b'z'))
    );
    // Chunked upload.
    let (ok, out) = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "streamed",
        &format!("{url}/echo"),
    ]);
    assert!(ok);
    assert_eq!(out, b"streamed");
    // Chunked download.
    let (ok, out) = curl(&[&format!("{url}/chunked/10000")]);
    assert!(ok);
    assert_eq!(out.len(), 10000);
}

#[test]
fn graceful_drain_finishes_in_flight_requests() {
    let origin = Origin::start();
    let mut proxy = Proxy::start(&config_for(origin.addr, ""));
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || request(addr, &get("/slow/1000")));
    // An idle keep-alive connection is closed on drain.
    let mut idle = Client::connect(addr);
    idle.send(&get("/"));
    assert_eq!(idle.response("GET").unwrap().status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.seen().iter().all(|s| s.path != "/slow/1000") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.signal(libc::SIGTERM);
    let r = slow.join().unwrap().expect("in-flight request completes");
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(idle.closed_within(Duration::from_secs(5)));
    let status = proxy.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[test]
fn several_workers_serve_concurrently() {
    let origin = Origin::start();
    let cfg = config_for(origin.addr, "").replace("workers = 1", "workers = 2");
    let proxy = Proxy::start(&cfg);
    let addr = proxy.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..25 {
                    c.send(&get(&format!("/t{t}/{i}")));
                    assert_eq!(c.response("GET").unwrap().text(), format!("ok /t{t}/{i}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(origin.seen().len(), 200);
}

/// Where io_uring is unavailable the proxy says so once and serves on epoll, splice included.
#[test]
fn epoll_fallback_is_announced_and_works() {
    let origin = Origin::start();
    let file = TempFile::new(&config_for(origin.addr, ""));
    let mut child = std::process::Command::new(bin())
        .arg("--config")
        .arg(&file.0)
        .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut addr = None;
    while addr.is_none() || !log.contains("epoll") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            break;
        }
        if let Some(i) = line.find("listening on ") {
            addr = line[i + 13..].split([',', ' ']).next().map(str::to_string);
        }
        log.push_str(&line);
    }
    let addr: std::net::SocketAddr = addr.expect("started").parse().unwrap();
    assert_eq!(log.matches("io_uring is not available").count(), 1, "{log}");
    let mut c = Client::connect(addr);
    c.send(&get("/len/1048576"));
    let r = c.response("GET").unwrap();
    assert_eq!((r.status, r.body_len), (200, 1 << 20));
    c.send(b"POST /sum HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n");
    c.send(&vec![1u8; 100_000]);
    assert_eq!(c.response("POST").unwrap().text(), "100000 100000");
    let _ = child.kill();
    let _ = child.wait();
}

/// A spliced (large, length-framed) body followed at once by a pipelined request: the splice
/// must stop exactly at the end of the body.
#[test]
fn spliced_body_then_pipelined_request() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    let mut batch = b"POST /sum HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n".to_vec();
    batch.extend(std::iter::repeat_n(2u8, 300_000));
    batch.extend_from_slice(&get("/next"));
    batch.extend_from_slice(&get("/len/200000"));
    batch.extend_from_slice(&get("/last"));
    c.send(&batch);
    assert_eq!(c.response("POST").unwrap().text(), "300000 600000");
    assert_eq!(c.response("GET").unwrap().text(), "ok /next");
    assert_eq!(c.response("GET").unwrap().body_len, 200_000);
    assert_eq!(c.response("GET").unwrap().text(), "ok /last");
}

/// RFC 9110 §6.6.1: responses forwarded without a Date get one; ringway's own responses too.
#[test]
fn date_is_added_where_missing() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[[routes]]\npath = \"/fixed\"\nrespond = { status = 200, body = \"x\" }\n",
    ));
    let is_date = |v: Option<&str>| v.is_some_and(|d| d.ends_with(" GMT") && d.len() == 29);
    let r = request(proxy.addr, &get("/plain")).unwrap();
    assert!(is_date(r.header("date")), "{:?}", r.headers);
    assert_eq!(
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("date"))
            .count(),
        1
    );
    let r = request(proxy.addr, &get("/fixed")).unwrap();
    assert!(is_date(r.header("date")), "{:?}", r.headers);
    let r = request(proxy.addr, b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    assert!(is_date(r.header("date")), "{:?}", r.headers);
}

/// Large bodies on one route: after two, the proxy reads the next heads short so that little of
/// the body is copied before the rest is spliced (core's `SizeHints`); the part that came with
/// the head goes out with it. Every byte must arrive in order whatever the head's size (one
/// longer than the short read too) and when the route's bodies turn small again.
#[test]
fn large_bodies_on_a_route_arrive_whole_as_its_head_reads_shorten() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let mut c = Client::connect(proxy.addr);
    let cases: &[(u64, u64)] = &[
        (1 << 20, 0),
        (300_000, 0),
        (1 << 20, 0),
        (70_000, 6000),
        (65_536, 1500),
        (1 << 20, 2040),
        (9000, 0),
        (100, 0),
        (20_000, 3000),
        (16_000, 0),
        (200_000, 0),
        (200_000, 20_000),
    ];
    for &(n, pad) in cases {
        c.send(&get(&format!("/seq/{n}/{pad}")));
        let r = c.response("GET").expect("a response");
        assert_eq!((r.status, r.body_len), (200, n), "/seq/{n}/{pad}");
        assert_eq!(r.header("x-pad").map(str::len), Some(pad as usize));
        let bad = r
            .body
            .iter()
            .enumerate()
            .find(|&(i, &b)| b != seq_byte(i as u64));
        assert_eq!(bad, None, "/seq/{n}/{pad}: first wrong byte");
    }
    // Pipelined: a spliced body ends exactly where the next response begins.
    let mut batch = Vec::new();
    for n in [300_000u64, 80_000, 5, 300_000] {
        batch.extend_from_slice(&get(&format!("/seq/{n}/0")));
    }
    c.send(&batch);
    for n in [300_000u64, 80_000, 5, 300_000] {
        let r = c.response("GET").expect("a response");
        assert_eq!(r.body_len, n);
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == seq_byte(i as u64)));
    }
}

/// A 200 response whose body is `n` bytes of `seq_byte`, each at its place.
fn assert_seq_body(r: &Response, n: u64, what: &str) {
    assert_eq!((r.status, r.body_len), (200, n), "{what}");
    let bad = r
        .body
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != seq_byte(i as u64));
    assert_eq!(bad, None, "{what}: first wrong byte");
}

/// Chunked and close-delimited bodies: long chunks and long close-delimited bodies are spliced
/// between the framing the proxy writes (core's `Transcoder::splice_run`). Every byte arrives,
/// in order, as valid chunked framing for HTTP/1.1 and close-delimited for HTTP/1.0; an origin
/// that dies inside a spliced chunk gives a response without its last chunk, never a complete
/// one; a chunked upload with long chunks reaches the origin whole.
#[test]
fn long_chunks_and_close_delimited_bodies_arrive_whole_when_spliced() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let check = assert_seq_body;
    let mut c = Client::connect(proxy.addr);
    for (n, chunk) in [
        (1 << 20, 1 << 20),
        (900_000, 100_000),
        (500_000, 40_000),
        (300_000, 7000),
        // Re-framed through the buffer, payload runs gathered by writev (long ones) or copied
        // (short ones): each side of the threshold, and a chunk per byte.
        (262_144, 4096),
        (100_000, 511),
        (100_000, 512),
        (100_000, 513),
        (20_000, 1),
    ] {
        let path = format!("/seqchunked/{n}/{chunk}");
        c.send(&get(&path));
        let r = c.response("GET").expect("a response");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        check(&r, n, &path);
    }
    // A client with a 4 KiB receive buffer: the proxy's socket fills mid-`writev` again and
    // again, and each write goes on from where the kernel stopped.
    let small = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&proxy.addr.into()).unwrap();
        std::net::TcpStream::from(s)
    };
    let mut slow = Client::from_stream(small);
    slow.send(&get("/seqchunked/30000000/4096"));
    let r = slow.response("GET").expect("a response");
    check(
        &r,
        30_000_000,
        "30 MB in 4 KiB chunks to a small receive buffer",
    );
    // Close-delimited from the origin: chunked to an HTTP/1.1 client, the connection kept.
    c.send(&get("/seqclose/700000"));
    let r = c.response("GET").expect("a response");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    check(&r, 700_000, "/seqclose/700000");
    c.send(&get("/seq/5/0"));
    check(&c.response("GET").unwrap(), 5, "after");
    // HTTP/1.0: close-delimited out, spliced without framing.
    for path in ["/seqchunked/600000/200000", "/seqclose/600000"] {
        let mut c = Client::connect(proxy.addr);
        c.send(format!("GET {path} HTTP/1.0\r\nHost: a\r\n\r\n").as_bytes());
        let r = c.response("GET").expect("a response");
        assert_eq!(r.header("transfer-encoding"), None);
        check(&r, 600_000, path);
    }
    // The origin closes 150000 bytes into a 1 MiB chunk: the client must not see a whole body.
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/seqchunked/1048576/1048576/150000"));
    assert!(
        c.response("GET").is_none(),
        "a truncated chunked body must not end well"
    );
    // A chunked upload in 200 KB chunks.
    let mut c = Client::connect(proxy.addr);
    let mut req = b"POST /sum HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let (mut len, mut sum) = (0u64, 0u64);
    for k in [200_000usize, 200_000, 5, 100_000] {
        req.extend_from_slice(format!("{k:x}\r\n").as_bytes());
        for i in 0..k {
            let b = seq_byte(i as u64);
            req.push(b);
            sum += u64::from(b);
        }
        len += k as u64;
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.send(&req);
    assert_eq!(c.response("POST").unwrap().text(), format!("{len} {sum}"));
}

/// A chunked body whose long chunks are spliced together with the framing between them
/// (the framing read back out of the pipe): every byte arrives in order, whatever piece sizes
/// the origin writes in (reads then end inside size lines, extensions and the trailer); the
/// upstream connection is reused after a clean body and dropped after one followed by bytes
/// nobody asked for, which never reach the client.
#[test]
fn chunk_framing_spliced_along_with_long_chunks_is_read_back_and_checked() {
    use support::MIX_CHUNKS;
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let total: u64 = MIX_CHUNKS.iter().sum();
    let mut c = Client::connect(proxy.addr);
    for piece in [0, 1000, 4099, 65_539] {
        let path = format!("/mixchunked/{piece}");
        c.send(&get(&path));
        let r = c.response("GET").expect("a response");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{path}");
        assert_seq_body(&r, total, &path);
    }
    assert_eq!(
        origin.connections(),
        1,
        "clean bodies leave the upstream connection reusable"
    );
    c.send(&get("/mixchunked/0/stray"));
    let r = c.response("GET").expect("a response");
    assert_eq!((r.status, r.body_len), (200, total));
    c.send(&get("/seq/5/0"));
    let r = c.response("GET").expect("the next response");
    assert_eq!((r.status, r.body_len), (200, 5), "not the stray response");
    assert_eq!(
        origin.connections(),
        2,
        "bytes past a body: that upstream connection is not used again"
    );
    // The other way: a chunked upload with long chunks, and a request pipelined behind it in
    // the same write, which must be answered next, not lost in the pipe.
    let mut req = b"POST /sum HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let (mut len, mut sum) = (0u64, 0u64);
    for (i, &k) in MIX_CHUNKS.iter().enumerate() {
        req.extend_from_slice(format!("{k:x}").as_bytes());
        if i == 2 {
            req.extend_from_slice(format!(";e={}", "x".repeat(100)).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        for j in 0..k {
            let b = seq_byte(len + j);
            req.push(b);
            sum += u64::from(b);
        }
        len += k;
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req.extend_from_slice(&get("/after-upload"));
    c.send(&req);
    assert_eq!(c.response("POST").unwrap().text(), format!("{len} {sum}"));
    assert_eq!(c.response("GET").unwrap().text(), "ok /after-upload");
}

/// A chunked body framed as the proxy frames it (lower-case hex, no extensions) is passed on
/// by splice, its framing looked at and left as it is; one framed otherwise is re-framed
/// through the buffers, and so are pieces the pass did not see whole. Whatever the origin's
/// chunk sizes and however it cuts its writes (reads end inside size lines and CRLFs), and for
/// clients at once: every byte arrives, in order, in chunked framing as the proxy writes it.
#[test]
fn chunked_bodies_framed_as_the_proxy_frames_them_pass_through_whole_and_in_order() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    // The payload of a raw chunked body as the proxy writes it, or why it is not one.
    let dechunk = |mut raw: &[u8]| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            let eol = raw
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("no size line")?;
            let line = std::str::from_utf8(&raw[..eol]).map_err(|e| e.to_string())?;
            let ok = !line.is_empty()
                && line
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && (line == "0" || !line.starts_with('0'));
            if !ok {
                return Err(format!("size line {line:?}"));
            }
            let n = usize::from_str_radix(line, 16).unwrap();
            raw = &raw[eol + 2..];
            if n == 0 {
                return (raw == b"\r\n")
                    .then_some(out)
                    .ok_or("bytes after the last chunk".into());
            }
            if raw.len() < n + 2 || &raw[n..n + 2] != b"\r\n" {
                return Err("a chunk without its CRLF".into());
            }
            out.extend_from_slice(&raw[..n]);
            raw = &raw[n + 2..];
        }
    };
    let raw_body = |path: &str| -> Vec<u8> {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&get(path)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            let n = s.read(&mut buf).expect("the body, to its last chunk");
            assert!(n > 0, "{path}: closed before the last chunk");
            got.extend_from_slice(&buf[..n]);
        }
        let head = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        got.split_off(head)
    };
    for (mode, tag, n, c, drip) in [
        ("chunked", 1, 1_000_000, 4096, 0),
        ("chunked", 2, 300_000, 1000, 1),
        ("chunked", 3, 200_000, 7, 0),
        ("chunked", 4, 100_000, 1, 0),
        ("chunkedx", 5, 500_000, 4096, 1),
    ] {
        let path = format!("/tag/{mode}/{tag}/{n}/{c}/{drip}");
        let payload = dechunk(&raw_body(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(payload.len() as u64, n, "{path}");
        let bad = (0..n).find(|&i| payload[i as usize] != tag_byte(tag, i));
        assert_eq!(bad, None, "{path}: first wrong byte");
    }
    // Ten clients at once, each its own body.
    let clients: Vec<_> = (10..20u64)
        .map(|tag| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(&get(&format!("/tag/chunked/{tag}/400000/4096/1")));
                let r = c.response("GET").expect("a response");
                assert_eq!(r.body_len, 400_000, "client {tag}");
                let bad =
                    (0..r.body.len() as u64).find(|&i| r.body[i as usize] != tag_byte(tag, i));
                assert_eq!(bad, None, "client {tag}: first byte not its own");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("every client gets its own bytes");
    }
}

/// An origin that stalls inside a long chunk while it is being spliced: the relay gives up
/// after `upstream_read`, the client gets no last chunk (so it can tell), and the worker goes on
/// serving others meanwhile (the splice waits for readiness; it never blocks the thread).
#[test]
fn an_origin_stalling_inside_a_spliced_chunk_times_out_without_blocking_the_worker() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\nupstream_read = \"600ms\"\n",
    ));
    let started = Instant::now();
    let mut stalled = Client::connect(proxy.addr);
    stalled.send(&get("/seqchunked/1048576/1048576/200000/stall"));
    // Meanwhile, on the same (only) worker:
    for _ in 0..5 {
        let r = request(proxy.addr, &get("/seq/100000/0")).expect("served while one stalls");
        assert_eq!(r.body_len, 100_000);
    }
    assert!(
        stalled.response("GET").is_none(),
        "no complete body from a stalled origin"
    );
    // The origin never closes on its own: the proxy ended the relay, after upstream_read.
    assert!(started.elapsed() >= Duration::from_millis(600));
}

/// Quiet kept-alive connections park (their exchange, buffers and request-path future freed;
/// the socket kept) and wake on their next request. A burst on all of them is answered, two
/// pipelined requests to a parked connection are answered in order, requests sent just as
/// connections park are not lost, a client gone while parked is forgotten, and shutdown
/// closes parked connections at once.
#[test]
fn quiet_connections_park_and_wake() {
    const N: usize = 200;
    let origin = Origin::start();
    let mut proxy = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\npark = \"50ms\"\nkeepalive = \"30s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    ));
    let admin = admin_addr(&proxy);
    let parked = |n: usize| {
        wait_metric(
            admin,
            "ringway_connections_parked",
            "worker=\"0\"",
            n as f64,
        )
    };
    let mut clients: Vec<Client> = (0..N).map(|_| Client::connect(proxy.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&get(&format!("/a{i}")));
        assert_eq!(c.response("GET").unwrap().text(), format!("ok /a{i}"));
    }
    parked(N);
    // Every parked connection gets a request before any answer is read.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&get(&format!("/b{i}")));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.response("GET").expect("answered after parking");
        assert_eq!((r.status, r.text()), (200, format!("ok /b{i}")));
    }
    parked(N);
    clients[0].send(&[get("/p1"), get("/p2")].concat());
    assert_eq!(clients[0].response("GET").unwrap().text(), "ok /p1");
    assert_eq!(clients[0].response("GET").unwrap().text(), "ok /p2");
    // Requests sent around the moment of parking (40 to 60 ms after the last answer, a
    // different delay on each connection): none lost to the read that parking cancels.
    let movers: Vec<Client> = clients.drain(..100).collect();
    let threads: Vec<_> = movers
        .into_iter()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(25)
        .map(|chunk| {
            let chunk: Vec<(usize, Client)> = chunk.iter().map(|(i, c)| (*i, clone(c))).collect();
            std::thread::spawn(move || {
                for (i, mut c) in chunk {
                    c.send(&get(&format!("/c{i}")));
                    assert_eq!(c.response("GET").unwrap().status, 200);
                    std::thread::sleep(Duration::from_micros(40_000 + 200 * i as u64));
                    c.send(&get(&format!("/d{i}")));
                    let r = c.response("GET").expect("answered at the parking moment");
                    assert_eq!(r.text(), format!("ok /d{i}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The 100 connections of the threads were closed by them; the others stay parked.
    parked(N - 100);
    drop(clients.drain(..50));
    parked(N - 150);
    proxy.signal(libc::SIGTERM);
    let started = Instant::now();
    assert!(clients[0].closed_within(Duration::from_secs(3)));
    let status = proxy.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "parked connections close at shutdown, not at its 5 s timeout"
    );
}

/// A client on a connection of its own (the same socket).
fn clone(c: &Client) -> Client {
    Client::from_stream(c.w.try_clone().unwrap())
}

/// A parked connection still closes at the keep-alive deadline it parked with, and a
/// connection that sends stray line breaks does not park but keeps that deadline too.
#[test]
fn parked_connections_close_at_the_keepalive_deadline() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\npark = \"50ms\"\nkeepalive = \"600ms\"\n",
    ));
    for stray in [false, true] {
        let mut c = Client::connect(proxy.addr);
        c.send(&get("/"));
        assert_eq!(c.response("GET").unwrap().status, 200);
        let answered = Instant::now();
        if stray {
            c.send(b"\r\n");
        }
        assert!(c.closed_within(Duration::from_secs(5)));
        let after = answered.elapsed();
        assert!(
            after >= Duration::from_millis(550),
            "closed after {after:?}"
        );
    }
}

/// `--park` in quick mode: connections park after the time given; a bad value is named.
#[test]
fn park_flag() {
    let origin = Origin::start();
    let out = std::process::Command::new(bin())
        .args(["--upstream", &origin.addr.to_string(), "--park", "soon"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--park \"soon\": expected off or a duration"),
        "{err}"
    );
    let proxy = Proxy::start_quick(&[
        "--upstream",
        &origin.addr.to_string(),
        "--park",
        "20ms",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = admin_addr(&proxy);
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/"));
    assert_eq!(c.response("GET").unwrap().status, 200);
    wait_metric(admin, "ringway_connections_parked", "worker=\"0\"", 1.0);
    c.send(&get("/again"));
    assert_eq!(c.response("GET").unwrap().text(), "ok /again");
}

/// A parked connection wakes under the configuration of that moment: a reload while it is
/// parked reaches its next request.
#[test]
fn a_parked_connection_wakes_under_the_reloaded_config() {
    let origin = Origin::start();
    let cfg = config_for(
        origin.addr,
        "[timeouts]\npark = \"20ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let proxy = Proxy::start(&cfg);
    let admin = admin_addr(&proxy);
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/x"));
    assert_eq!(c.response("GET").unwrap().text(), "ok /x");
    wait_metric(admin, "ringway_connections_parked", "worker=\"0\"", 1.0);
    let path = proxy.config.as_ref().unwrap().0.clone();
    let reloaded =
        cfg + "[[routes]]\npath = \"/x\"\nrespond = { status = 200, body = \"reloaded\" }\n";
    std::fs::write(&path, reloaded).unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_log(|l| l.contains("reloaded: 2 route(s)"));
    // The line is written when the configuration is sent to the worker, which installs it a
    // moment later: a new connection shows when it has (the parked one stays parked).
    let until = Instant::now() + Duration::from_secs(5);
    while request(proxy.addr, &get("/x")).map(|r| r.text()) != Some("reloaded".into()) {
        assert!(
            Instant::now() < until,
            "the reload never reached the worker"
        );
    }
    c.send(&get("/x"));
    assert_eq!(c.response("GET").unwrap().text(), "reloaded");
}

/// A connection is built in what closed connections left (the worker's spares): nothing of a
/// previous connection's client shows through. Connections from 40 source addresses, one
/// request each, some with heads so large that their buffers are not kept, and kept-alive
/// connections that park (after 1 ms) and wake later: the origin sees each request's own
/// client, and the access log each connection's own address.
#[test]
fn a_new_connection_carries_nothing_of_the_last() {
    use socket2::{Domain, Socket, Type};
    let origin = Origin::start();
    let proxy = Proxy::start_quick(&["--upstream", &origin.addr.to_string(), "--park", "1ms"]);
    let source = |i: u32| format!("127.0.0.{}", 2 + i % 40);
    let mut kept = Vec::new();
    for i in 0..120u32 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let from: std::net::SocketAddr = format!("{}:0", source(i)).parse().unwrap();
        s.bind(&from.into()).unwrap();
        s.connect(&proxy.addr.into()).unwrap();
        let mut c = Client::from_stream(s.into());
        let pad = if i % 7 == 3 {
            format!("X-Pad: {}\r\n{}", "p".repeat(6000), "X-H: 1\r\n".repeat(40))
        } else {
            String::new()
        };
        let close = if i % 5 == 0 {
            ""
        } else {
            "Connection: close\r\n"
        };
        c.send(format!("GET /who/{i} HTTP/1.1\r\nHost: t\r\n{pad}{close}\r\n").as_bytes());
        let r = c.response("GET").unwrap();
        assert_eq!(r.text(), format!("ok /who/{i}"));
        if i % 5 == 0 {
            kept.push((c, i));
        }
    }
    // Every kept-alive connection has parked by now (its exchange's buffers went to the
    // spares and others were built in them); its next request wakes it in other spares.
    for (c, i) in &mut kept {
        c.send(format!("GET /again/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(c.response("GET").unwrap().text(), format!("ok /again/{i}"));
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 120 + kept.len());
    for s in &seen {
        let i: u32 = s.path.rsplit('/').next().unwrap().parse().unwrap();
        // X-Forwarded-For from the peer's text, X-Real-IP from the client's.
        for field in ["x-forwarded-for", "x-real-ip"] {
            assert_eq!(s.header(field), Some(source(i).as_str()), "{}", s.path);
        }
    }
}

/// Relayed bodies (chunked and close-delimited, re-framed through the buffers) move through
/// the worker's relay buffers, taken when bytes have arrived and given back before each wait:
/// the buffers pass between connections all the time. 96 connections on one worker, more than
/// it keeps spare buffers for, each fetch a body of its own tag (differing from every other
/// at every byte): fast ones, dripping ones whose relays wait between pieces holding no buffer, large
/// and small, chunked and close-delimited. Each client gets exactly its own bytes.
#[test]
fn relayed_bodies_share_the_worker_buffers_and_keep_their_own_bytes() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let clients: Vec<_> = (0..96u64)
        .map(|tag| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let mode = if tag % 3 == 0 { "close" } else { "chunked" };
                // Sizes from 1 byte to 600 KB; chunk sizes either side of the gather
                // threshold; every fourth drips (the origin yields after each piece).
                let n = [1, 5000, 70_000, 600_000][(tag % 4) as usize] + tag;
                let c = [1000, 4096, 511, 40_000][((tag / 4) % 4) as usize];
                let drip = u8::from(tag % 4 == 1);
                let mut client = Client::connect(addr);
                for round in 0..2 {
                    let path = format!("/tag/{mode}/{tag}/{n}/{c}/{drip}");
                    client.send(&get(&path));
                    let r = client.response("GET").expect("a response");
                    assert_eq!(r.status, 200, "{path}");
                    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{path}");
                    assert_eq!(r.body.len() as u64, n, "{path} (round {round})");
                    let bad = (0..n).find(|&i| r.body[i as usize] != tag_byte(tag, i));
                    assert_eq!(bad, None, "{path} (round {round}): first byte not its own");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("every client gets its own bytes");
    }
}

/// More bodies in flight at once than the worker keeps relay buffers for (64): 72 clients with
/// 4 KiB receive windows ask for 6 MB each and read nothing until the worker has allocated more
/// relay buffers than it keeps. A relay whose client does not read blocks once the kernel's
/// send buffer is full (at most 4 MiB, `net.ipv4.tcp_wmem`), holding one buffer of bytes, on
/// io_uring and on epoll alike; the allocations are counted in
/// `ringway_buffers_allocated_total`. Then every client reads exactly its own bytes: no body
/// lost, truncated or mixed; and a connection kept alive through all of it gets its own.
#[test]
fn relay_buffers_running_out_are_allocated_counted_and_lose_nothing() {
    use socket2::{Domain, Socket, Type};
    const CLIENTS: u64 = 72;
    const N: u64 = 6_000_000;
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    ));
    let admin = admin_addr(&proxy);
    // A kept-alive connection that waits through all of it (parked after 1 s), then asks again.
    let mut idle = Client::connect(proxy.addr);
    let body = |c: &mut Client, tag: u64, n: u64| {
        c.send(&get(&format!("/tag/close/{tag}/{n}/4096/0")));
        let r = c.response("GET").expect("a response");
        assert_eq!((r.status, r.body_len), (200, n), "client {tag}");
        let bad = (0..r.body.len() as u64).find(|&i| r.body[i as usize] != tag_byte(tag, i));
        assert_eq!(bad, None, "client {tag}: first byte not its own");
    };
    body(&mut idle, 500, 70_000);
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|tag| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&proxy.addr.into()).unwrap();
            let mut c = Client::from_stream(s.into());
            // Framing the proxy re-writes (an extension on each size line): through its
            // buffers. (Framing as it writes it passes through by splice, holding none.)
            c.send(&get(&format!("/tag/chunkedx/{tag}/{N}/4096/0")));
            c
        })
        .collect();
    wait_metric_at_least(
        admin,
        "ringway_buffers_allocated_total",
        "worker=\"0\",kind=\"relay\"",
        65.0,
    );
    for (tag, c) in clients.iter_mut().enumerate() {
        let tag = tag as u64;
        let r = c.response("GET").expect("a response");
        assert_eq!(r.status, 200, "client {tag}");
        assert_eq!(r.body_len, N, "client {tag}");
        // The client keeps the first MiB of a body (and counts the rest).
        let kept = r.body.len() as u64;
        let bad = (0..kept).find(|&i| r.body[i as usize] != tag_byte(tag, i));
        assert_eq!(bad, None, "client {tag}: first byte not its own");
    }
    body(&mut idle, 501, 600_000);
}

/// Connections are accepted by one multishot io_uring operation per listener where the kernel
/// has it, and on readiness with an `accept4` each under `--no-multishot-accept` (as where it
/// has not, and on the epoll driver): either way a burst of connections, each asking once and
/// closing, is served in full, and every one is counted accepted.
#[test]
fn a_burst_of_connections_is_accepted_with_and_without_multishot_accept() {
    with_and_without(
        "--no-multishot-accept",
        "listeners accept with one multishot io_uring operation each",
        "listeners accept on readiness",
        |proxy, off| {
            let addr = proxy.addr;
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    std::thread::spawn(move || {
                        (0..40)
                            .filter(|i| {
                                let req = format!(
                                    "GET /burst/{t}/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                                );
                                request(addr, req.as_bytes()).is_some_and(|r| r.status == 200)
                            })
                            .count()
                    })
                })
                .collect();
            let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(ok, 320, "multishot off: {off}");
            let log = proxy.log();
            assert!(!log.contains("accept:"), "{log}");
        },
    );
}

/// Keep-alive connections on io_uring wait for their next request with a receive into the
/// worker's ring of provided buffers, and with a receive into a buffer of their own under
/// `--no-recv-ring` (as on the epoll driver and kernels without it). Either way: requests one
/// at a time, pipelined in one write, a head dripped a few bytes at a time, and a request whose
/// body (larger than a ring buffer: 5,000 bytes, buffered, and 100,000, streamed) follows its
/// head in the same write are all answered, in order, on the same connection, every byte
/// intact. On the ring the first body arrives through the connection's multishot receive (which
/// took all the socket held), the second and the pipelined requests after it through single
/// receives (one buffer each; the rest is read from the socket).
#[test]
fn keep_alive_connections_are_read_through_the_ring_and_without_it() {
    with_and_without(
        "--no-recv-ring",
        "keep-alive connections wait for their next request without a buffer of their own (a ring of provided buffers)",
        "keep-alive connections wait for their next request with a buffer of their own",
        |proxy, _| {
            let addr = proxy.addr;
            let threads: Vec<_> = (0..6)
                .map(|t| {
                    std::thread::spawn(move || {
                        let mut c = Client::connect(addr);
                        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n");
                        for i in 0..30 {
                            let p = format!("/ka/{t}/{i}");
                            c.send(get(&p).as_bytes());
                            let r = c.response("GET").expect("answered");
                            assert_eq!((r.status, r.text()), (200, format!("ok {p}")));
                        }
                        let pipelined = |c: &mut Client, round: &str| {
                            let batch: String = (0..5)
                                .map(|i| get(&format!("/pipe/{round}/{t}/{i}")))
                                .collect();
                            c.send(batch.as_bytes());
                            for i in 0..5 {
                                let r = c.response("GET").expect("answered");
                                assert_eq!(r.text(), format!("ok /pipe/{round}/{t}/{i}"));
                            }
                        };
                        pipelined(&mut c, "before");
                        // A few bytes at a time, each piece given time to arrive on its own:
                        // the proxy must not answer a head until it is whole.
                        let head = get(&format!("/drip/{t}"));
                        let pieces: Vec<_> = head.as_bytes().chunks(3).collect();
                        for (i, b) in pieces.iter().enumerate() {
                            c.send(b);
                            if i + 1 < pieces.len() {
                                let early = c.readable_within(std::time::Duration::from_millis(2));
                                assert!(!early, "answered a head that was not whole");
                            }
                        }
                        assert_eq!(c.response("GET").unwrap().text(), format!("ok /drip/{t}"));
                        // Bodies sent with their heads: one buffered (under `request_buffer`)
                        // and echoed, one streamed (spliced, past the bytes the ring's buffer
                        // took) and summed by the origin.
                        for (len, path) in [(5000u32, "/echo"), (100_000, "/sum")] {
                            let body: Vec<u8> = (0..len).map(|k| (k * 7 + t) as u8).collect();
                            let mut req = format!(
                                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n"
                            )
                            .into_bytes();
                            req.extend_from_slice(&body);
                            req.extend_from_slice(get(&format!("/after/{t}/{len}")).as_bytes());
                            c.send(&req);
                            let r = c.response("POST").expect("answered");
                            assert_eq!(r.status, 200);
                            if path == "/echo" {
                                assert!(r.body == body, "the body came back changed");
                            } else {
                                let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
                                assert_eq!(r.text(), format!("{len} {sum}"));
                            }
                            let after = c.response("GET").unwrap().text();
                            assert_eq!(after, format!("ok /after/{t}/{len}"));
                        }
                        pipelined(&mut c, "after");
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        },
    );
}

/// Runs `check` on a quick-mode proxy in front of an origin with an io_uring feature on, then
/// with `flag` turning it off, each after the start-up log's line says which (`on`, `off`; the
/// epoll driver of the suite's second pass has it off both times).
fn with_and_without(flag: &str, on: &str, off: &str, check: impl Fn(&Proxy, bool)) {
    let origin = Origin::start();
    let up = origin.addr.to_string();
    // The epoll driver has none of these; the suite's no-ring pass turns the ring off.
    let forced_off = std::env::var_os("RINGWAY_TEST_EPOLL").is_some()
        || (flag == "--no-recv-ring" && std::env::var_os("RINGWAY_TEST_NO_RECV_RING").is_some());
    for turned_off in [false, true] {
        let mut args = vec!["--upstream", up.as_str()];
        if turned_off {
            args.push(flag);
        }
        let proxy = Proxy::start_quick(&args);
        let how = if turned_off || forced_off { off } else { on };
        proxy.wait_log(|l| l.contains(how));
        check(&proxy, turned_off);
    }
}

/// A ring of provided buffers too small for the load (`server.recv_ring_buffers = 16`, 48
/// keep-alive connections sending pipelined batches of about 3 KiB at once, more connections
/// with bytes in one turn of the worker than the ring has buffers): reads that find
/// it empty take a receive of their own and are counted in
/// `ringway_recv_ring_exhausted_total`, and every request on every connection is answered, in
/// order. Rounds until the ring has run out at least once (at most 30).
#[test]
fn an_exhausted_ring_of_provided_buffers_loses_no_request_and_is_counted() {
    if std::env::var_os("RINGWAY_TEST_EPOLL").is_some() {
        return; // no ring on the epoll driver: the suite's io_uring pass covers this
    }
    let origin = Origin::start();
    let config = config_for(origin.addr, "[admin]\nlisten = \"127.0.0.1:0\"\n").replacen(
        "[server]\n",
        "[server]\nrecv_ring_buffers = 16\n",
        1,
    );
    let proxy = Proxy::start(&config);
    let admin = admin_addr(&proxy);
    proxy.wait_log(|l| l.contains("keep-alive connections wait for their next request"));
    if !proxy
        .log()
        .contains("keep-alive connections wait for their next request without")
    {
        return; // io_uring or the ring refused here: the log says so, and nothing runs out
    }
    const CONNS: usize = 48;
    const BATCH: usize = 20;
    let addr = proxy.addr;
    let mut clients: Vec<Client> = (0..CONNS).map(|_| Client::connect(addr)).collect();
    for (t, c) in clients.iter_mut().enumerate() {
        // The first request: from the second on, the connection reads through the ring.
        c.send(format!("GET /first/{t} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(c.response("GET").unwrap().status, 200);
    }
    let pad = "p".repeat(100);
    for round in 0..30 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(CONNS));
        let threads: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(t, mut c)| {
                let (barrier, pad) = (barrier.clone(), pad.clone());
                std::thread::spawn(move || {
                    let batch: String = (0..BATCH)
                        .map(|i| format!("GET /r{round}/{t}/{i}/{pad} HTTP/1.1\r\nHost: t\r\n\r\n"))
                        .collect();
                    barrier.wait();
                    c.send(batch.as_bytes());
                    for i in 0..BATCH {
                        let r = c.response("GET").expect("answered");
                        assert_eq!(r.text(), format!("ok /r{round}/{t}/{i}/{pad}"));
                    }
                    c
                })
            })
            .collect();
        clients = threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Workers publish their figures every 50 ms: a round's count shows by the next.
        let m = admin_get(admin, "/metrics");
        if sample(&m, "ringway_recv_ring_exhausted_total", "").unwrap_or(0.0) > 0.0 {
            return;
        }
    }
    wait_metric_at_least(admin, "ringway_recv_ring_exhausted_total", "", 1.0);
}
