//! The cache's reading of a response it may store: a request head and a response head from the
//! input (split at the first NUL), read for storability, freshness, age and Vary, stored as a
//! head, updated by the same head as a 304, and read back. Nothing may panic, and every head
//! the cache keeps must parse again with its status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::cache::policy::{
    initial_age, lifetime, not_modified, read_request, read_response, storable, vary_value, Vary,
};
use ringway_core::cache::CacheRules;
use ringway_core::http::date::DateLine;
use ringway_core::http::rewrite::{stored_response, updated_response};
use ringway_core::http::{parse_request, parse_response, Limits, Method};

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (req, resp) = (&data[..split], &data[split + 1..]);
    let limits = Limits::default();
    let mut rh = Vec::new();
    let Ok(_) = parse_request(req, &mut rh, &limits) else {
        return;
    };
    let mut hs = Vec::new();
    let Ok(head) = parse_response(resp, &mut hs, &limits) else {
        return;
    };
    let rq = read_request(req, &rh);
    let meta = read_response(head.status, resp, &hs, &[b"cdn-cache-control".to_vec()]);
    let rules = CacheRules {
        valid: vec![(vec![200, 404], 600), (Vec::new(), 5)],
        ..CacheRules::default()
    };
    for t in [0, 1_000_000_000, u64::MAX / 2] {
        let _ = storable(Method::Get, &rq, &meta, t, &rules);
        let _ = lifetime(&meta, t, &rules);
        let _ = initial_age(&meta, t.saturating_sub(5), t);
    }
    let _ = not_modified(&rq, meta.etag.as_deref(), meta.last_modified);
    if let Vary::Fields(names) = &meta.vary {
        let mut v = Vec::new();
        for n in names {
            vary_value(req, &rh, n, &mut v);
        }
    }
    let big = Limits {
        max_head: 1 << 20,
        max_target: 1 << 20,
        max_headers: 10_000,
    };
    let mut stored = Vec::new();
    stored_response(resp, &head, &hs, &DateLine::at(0), &mut stored);
    let mut merged = Vec::new();
    updated_response(&stored, resp, &hs, &[], &mut merged);
    for h in [stored, merged] {
        let mut full = h;
        full.extend_from_slice(b"\r\n");
        let mut again = Vec::new();
        let back = parse_response(&full, &mut again, &big).expect("a stored head parses");
        assert_eq!(back.status, head.status);
    }
});
