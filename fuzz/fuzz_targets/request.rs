//! A request head as a client could send it: scanned, parsed, framed, its path normalised and
//! routed, its upstream head written. Nothing may panic; a normalised path must be a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::http::framing::request_info;
use ringway_core::http::path::{normalise, PathPolicy};
use ringway_core::http::rewrite::{upstream_request, Forwarding, ForwardingPolicy};
use ringway_core::http::{parse_request, HeadScanner, Limits, Scan, TargetForm};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut scanner = HeadScanner::new();
    let Ok(Scan::Complete(end)) = scanner.scan(data, &limits) else {
        return;
    };
    let buf = &data[..end];
    let mut headers = Vec::new();
    let Ok(head) = parse_request(buf, &mut headers, &limits) else {
        return;
    };
    let Ok(info) = request_info(buf, &head, &headers) else {
        return;
    };
    let raw = match head.form {
        TargetForm::Origin => head.target.get(buf),
        TargetForm::Absolute { path, .. } => path.get(buf),
        _ => return,
    };
    let policy = PathPolicy::default();
    let mut target = Vec::new();
    let Ok(n) = normalise(raw, &policy, &mut target) else {
        return;
    };
    let mut again = Vec::new();
    assert_eq!(normalise(&target, &policy, &mut again), Ok(n));
    assert_eq!(target, again);
    let cert = ringway_core::realip::Certificate::Verified(Box::new(
        ringway_core::clientcert::ClientCert::new("CN=fuzz, O=ringway", &[0xab; 32]),
    ));
    let fwd = Forwarding {
        policy: ForwardingPolicy::REVERSE,
        client_ip: b"127.0.0.1",
        peer_ip: b"127.0.0.1",
        proto: "http",
        host_override: None,
        fallback_host: b"upstream",
        upgrade_websocket: false,
        max_forwards: None,
        revalidate: None,
        edits: None,
        request_id: Some((b"X-Request-Id", b"0123456789abcdef0123456789abcdef")),
        client_cert: &cert,
    };
    let mut out = Vec::new();
    upstream_request(buf, &head, &headers, &target, info.body, &fwd, &mut out);
    // What goes upstream parses again, with the same target.
    let mut hs = Vec::new();
    let again = parse_request(
        &out,
        &mut hs,
        &Limits {
            max_head: 1 << 20,
            max_target: 1 << 20,
            max_headers: 10_000,
        },
    )
    .expect("the head ringway writes parses");
    assert_eq!(again.target.get(&out), &target[..]);
});
