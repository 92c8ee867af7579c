//! Hostile peers: an origin that writes responses no request asked for, and clients that spell
//! a path so that it slips past a route.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").into_bytes()
}

fn get_close(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Waits (bounded) until the origin has written `n` unrequested responses.
fn wait_strays(origin: &Origin, n: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let k = origin.seen().iter().filter(|s| s.method == "STRAY").count();
        if k >= n {
            return;
        }
        assert!(
            Instant::now() < end,
            "origin wrote {k} of {n} stray responses"
        );
        thread::yield_now();
    }
}

/// Concurrent keep-alive clients, each checking that every response is its own.
fn clients_get_their_own(proxy: &Proxy, delay: u64, clients: usize, each: usize) {
    let wrong = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, wrong) = (proxy.addr, wrong.clone());
            thread::spawn(move || {
                let mut cl = Client::connect(addr);
                for i in 0..each {
                    let id = format!("c{c}-{i}");
                    // Every third request on a new connection with `Connection: close`.
                    let r = if i % 3 == 2 {
                        request(addr, &get_close(&format!("/stray/{delay}/{id}")))
                    } else {
                        cl.send(&get(&format!("/stray/{delay}/{id}")));
                        cl.response("GET")
                    };
                    match r {
                        Some(r) if r.text() == format!("own {id}") => {}
                        other => {
                            eprintln!("{id}: {:?}", other.map(|r| (r.status, r.text())));
                            wrong.fetch_add(1, Ordering::SeqCst);
                            cl = Client::connect(addr);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "delay {delay} ms");
}

/// Issue: an upstream that writes a second response after the first is complete poisoned the
/// pool, and every later client got the response meant for the one before.
#[test]
fn unrequested_upstream_bytes_never_reach_another_client() {
    for delay in [0u64, 1, 50, 150] {
        let origin = Origin::start();
        let proxy = Proxy::start(&config_for(origin.addr, ""));
        let r = request(proxy.addr, &get(&format!("/stray/{delay}/first"))).unwrap();
        assert_eq!(r.text(), "own first");
        // The stray response arrives while the connection is idle in the pool (or, at 0 ms,
        // possibly with the first response): either way the next request must not see it.
        wait_strays(&origin, 1);
        let r = request(proxy.addr, &get("/after")).unwrap();
        assert_eq!(r.text(), "ok /after", "delay {delay} ms");
        assert_eq!(origin.connections(), 2, "delay {delay} ms");
        proxy.wait_log(|l| l.contains("keep-alive to it paused"));
        // Under load from concurrent clients, keep-alive and not, every client gets exactly
        // its own response: the server's connections are no longer reused.
        clients_get_their_own(&proxy, delay, 4, 6);
    }
}

/// A response whose framing ends before the bytes that came with it: the rest is never taken
/// for the next response.
#[test]
fn bytes_past_the_framing_make_the_connection_unusable() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let r = request(proxy.addr, &get("/stray/0/x")).unwrap();
    assert_eq!(r.text(), "own x");
    for i in 0..5 {
        let r = request(proxy.addr, &get_close(&format!("/n/{i}"))).unwrap();
        assert_eq!(r.text(), format!("ok /n/{i}"));
    }
}

fn admin_config(origin: std::net::SocketAddr, extra_server: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\n{extra_server}\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n\
         [[routes]]\npath = \"/admin\"\nrespond = {{ status = 403, body = \"denied\" }}\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n"
    )
}

#[test]
fn path_tricks_cannot_reach_a_denied_route() {
    let origin = Origin::start();
    let proxy = Proxy::start(&admin_config(origin.addr, ""));
    for path in PATHS_TO_ADMIN {
        let r = request(proxy.addr, &get(path)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (403, "denied"), "{path}");
    }
    for path in PATHS_REFUSED {
        let r = request(proxy.addr, &get(path)).unwrap();
        assert_eq!(r.status, 400, "{path}");
    }
    // Absolute form too.
    let r = request(
        proxy.addr,
        b"GET http://test.local/x/..//admin HTTP/1.1\r\nHost: test.local\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 403);
    assert!(
        origin.seen().iter().all(|s| !s.path.contains("admin")),
        "the origin saw {:?}",
        origin.seen()
    );
}

#[test]
fn the_upstream_gets_the_path_that_was_matched() {
    let origin = Origin::start();
    let proxy = Proxy::start(&admin_config(origin.addr, ""));
    for (sent, seen) in [
        ("/a/./b//c/../d?x=/../y&z=%2F", "/a/b/d?x=/../y&z=%2F"),
        ("/%7Euser/%41%2d%5f/caf%c3%a9", "/~user/A-_/caf%C3%A9"),
        ("/a%20b/%3f", "/a%20b/%3F"),
        ("/x/..", "/"),
    ] {
        let r = request(proxy.addr, &get(sent)).unwrap();
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(origin.seen().last().unwrap().path, seen, "{sent}");
    }
    // An absolute-form target without a path is `/` (RFC 9112 §3.2.2).
    let r = request(
        proxy.addr,
        b"GET http://x.example HTTP/1.1\r\nHost: x.example\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(origin.seen().last().unwrap().path, "/");
    let r = request(
        proxy.addr,
        b"GET http://x.example?q=1 HTTP/1.1\r\nHost: x.example\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(origin.seen().last().unwrap().path, "/?q=1");
}

#[test]
fn slash_policy_is_configurable() {
    let origin = Origin::start();
    let proxy = Proxy::start(&admin_config(
        origin.addr,
        "merge_slashes = false\nencoded_slashes = \"keep\"",
    ));
    let r = request(proxy.addr, &get("/files/a%2fb//c")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(origin.seen().last().unwrap().path, "/files/a%2Fb//c");
    // Kept encoded, `%2F` never separates segments for routing; a dot segment behind one is
    // refused, since an upstream that decodes `%2F` would climb out of the route with it (web
    // cache deception: `/static/..%2Faccount` stored as a static file).
    for path in ["/static%2F..%2Fadmin/", "/static/..%2Faccount"] {
        let r = request(proxy.addr, &get(path)).unwrap();
        assert_eq!(r.status, 400, "{path}");
    }
    assert!(origin.seen().iter().all(|s| !s.path.contains("..")));
    let r = request(proxy.addr, &get("/x/../admin")).unwrap();
    assert_eq!(r.status, 403);
}

#[test]
fn endless_interim_responses_are_cut_off() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let started = Instant::now();
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/interim-flood"));
    let mut interim = 0;
    let last = loop {
        let r = c.response("GET").expect("a final response");
        if (100..200).contains(&r.status) {
            interim += 1;
            continue;
        }
        break r;
    };
    assert_eq!(last.status, 502);
    assert!(interim <= 16, "{interim} interim responses relayed");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The worker is free again.
    assert_eq!(request(proxy.addr, &get("/ok")).unwrap().status, 200);
}

#[test]
fn a_request_line_without_version_is_answered_at_once() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let started = Instant::now();
    let r = request(proxy.addr, b"GET /\r\n").unwrap();
    assert_eq!(r.status, 400);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(origin.seen().is_empty());
}

#[test]
fn a_chunk_larger_than_any_body_is_refused_before_forwarding() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let r = request(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\nabc",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(origin.connections(), 0, "nothing was sent upstream");
}

#[test]
fn error_pages_do_not_show_internal_reasons() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = Proxy::start(&config_for(addr, ""));
    let r = request(proxy.addr, &get("/")).unwrap();
    assert_eq!(r.status, 502);
    let body = r.text();
    assert!(
        !body.contains("os error") && !body.contains("refused"),
        "{body}"
    );
    proxy.wait_log(|l| l.contains("Connection refused"));
}

/// A client that drips its head a byte at a time gets no fresh header timeout per read: the
/// deadline is set when the head starts, and the connection's one timer stays on it.
#[test]
fn a_head_dripped_a_byte_at_a_time_ends_at_the_header_deadline() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(
        origin.addr,
        "[timeouts]\nclient_header = \"500ms\"\n",
    ));
    let head = format!(
        "GET /dripped HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(40)
    );
    let mut c = Client::connect(proxy.addr);
    c.w.set_nodelay(true).unwrap();
    let start = Instant::now();
    let mut sent = 0;
    // A byte, then up to 100 ms for an answer: the whole head would take over 7 s.
    for b in head.bytes() {
        c.send(&[b]);
        sent += 1;
        if c.readable_within(Duration::from_millis(100)) {
            break;
        }
    }
    assert!(sent < head.len(), "the whole dripped head was taken");
    expect_408_then_close(&mut c, start, Duration::from_secs(3));
    assert!(origin.seen().is_empty());
}

#[test]
fn a_request_line_in_a_trailer_and_hosts_that_are_not_uri_hosts_get_400() {
    let origin = Origin::start();
    let p = Proxy::start(&config_for(origin.addr, ""));
    // RFC 9112 §7.1.2: after the last chunk come field lines, not a request.
    let r = request(
        p.addr,
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .expect("an answer");
    assert_eq!(r.status, 400);
    for host in ["::1:8080", "example.test:8o", "a:1:2", "[::1"] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let r = request(p.addr, req.as_bytes()).expect("an answer");
        assert_eq!(r.status, 400, "Host: {host}");
    }
    assert!(
        origin.seen().iter().all(|s| s.path != "/x"),
        "the smuggled request never reached the origin"
    );
}
