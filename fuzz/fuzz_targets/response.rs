//! An upstream response head: scanned, parsed, framed for a GET and a HEAD, and rewritten for
//! the client; what ringway writes must parse again with the same status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::http::date::DateLine;
use ringway_core::http::framing::{response_info, BodyKind};
use ringway_core::http::rewrite::{client_response, ConnectionHeader, HeadEdits};
use ringway_core::http::{parse_response, HeadScanner, Limits, Method, Scan};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(Scan::Complete(end)) = HeadScanner::new().scan(data, &limits) else {
        return;
    };
    let buf = &data[..end];
    let mut headers = Vec::new();
    let Ok(head) = parse_response(buf, &mut headers, &limits) else {
        return;
    };
    for method in [Method::Get, Method::Head] {
        let Ok(info) = response_info(buf, &head, &headers, method) else {
            continue;
        };
        let to_client = match info.body {
            BodyKind::Close => BodyKind::Chunked,
            b => b,
        };
        let mut out = Vec::new();
        let date = DateLine::at(0);
        client_response(
            buf,
            &head,
            &headers,
            to_client,
            ConnectionHeader::Omit,
            HeadEdits {
                date: Some(&date),
                via: true,
                cache_status: None,
                ..HeadEdits::default()
            },
            &mut out,
        );
        let big = Limits {
            max_head: 1 << 20,
            max_target: 1 << 20,
            max_headers: 10_000,
        };
        let mut hs = Vec::new();
        let again = parse_response(&out, &mut hs, &big).expect("the head ringway writes parses");
        assert_eq!(again.status, head.status);
    }
});
