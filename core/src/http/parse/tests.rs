//! Vectors for the head parser, each also fed split at every byte, and a differential property
//! test against httparse.

use super::*;
use crate::http::find_header;

fn req(bytes: &[u8]) -> Result<(RequestHead, Vec<(String, String)>), ParseError> {
    let limits = Limits::default();
    // Shotgun: the scanner must find the same end whatever the read boundaries.
    let mut end = None;
    for split in 1..bytes.len() {
        let mut sc = HeadScanner::new();
        let first = sc.scan(&bytes[..split], &limits);
        let r = match first {
            Err(e) => Err(e),
            Ok(Scan::Complete(n)) => Ok(Scan::Complete(n)),
            Ok(Scan::Partial) => sc.scan(bytes, &limits),
        };
        match (end, r) {
            (None, r) => end = Some(r),
            (Some(prev), r) => assert_eq!(prev, r, "split at {split}"),
        }
    }
    let n = match end.unwrap_or_else(|| HeadScanner::new().scan(bytes, &limits))? {
        Scan::Complete(n) => n,
        Scan::Partial => panic!("incomplete vector"),
    };
    let mut hs = Vec::new();
    let head = parse_request(&bytes[..n], &mut hs, &limits)?;
    assert_eq!(head.len, n);
    let pairs = hs
        .iter()
        .map(|h| {
            (
                String::from_utf8_lossy(h.name.get(bytes)).into_owned(),
                String::from_utf8_lossy(h.value.get(bytes)).into_owned(),
            )
        })
        .collect();
    Ok((head, pairs))
}

#[test]
fn simple_get() {
    let b = b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
    let (h, hs) = req(b).unwrap();
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.target.get(b), b"/index.html?x=1");
    assert_eq!(h.version, Version::Http11);
    assert_eq!(h.form, TargetForm::Origin);
    assert_eq!(hs[0], ("Host".into(), "example.com".into()));
    assert_eq!(hs.len(), 2);
}

#[test]
fn value_whitespace_trimmed_and_empty_values() {
    let b = b"GET / HTTP/1.0\r\nA:   x y \t\r\nB:\r\nC: \r\n\r\n";
    let (h, hs) = req(b).unwrap();
    assert_eq!(h.version, Version::Http10);
    assert_eq!(hs[0].1, "x y");
    assert_eq!(hs[1].1, "");
    assert_eq!(hs[2].1, "");
}

#[test]
fn obs_text_in_values_allowed() {
    let b = b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n";
    assert!(req(b).is_ok());
}

#[test]
fn leading_empty_lines_ignored() {
    let b = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let (h, _) = req(b).unwrap();
    assert_eq!(h.method_span.get(b), b"GET");
}

#[test]
fn target_forms() {
    let b = b"GET http://example.com:8080/a?b HTTP/1.1\r\nHost: x\r\n\r\n";
    let (h, _) = req(b).unwrap();
    match h.form {
        TargetForm::Absolute { authority, path } => {
            assert_eq!(authority.get(b), b"example.com:8080");
            assert_eq!(path.get(b), b"/a?b");
        }
        f => panic!("{f:?}"),
    }
    let b = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    assert_eq!(req(b).unwrap().0.form, TargetForm::Authority);
    let b = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(req(b).unwrap().0.form, TargetForm::Asterisk);
    let b = b"GET http://a HTTP/1.1\r\n\r\n";
    assert!(matches!(
        req(b).unwrap().0.form,
        TargetForm::Absolute { .. }
    ));
}

#[test]
fn rejected_vectors() {
    use ParseError::*;
    let cases: &[(&[u8], ParseError)] = &[
        (b"G@T / HTTP/1.1\r\n\r\n", Method),
        (b"GET  / HTTP/1.1\r\n\r\n", Target),
        (b"GET / HTTP/1.1 \r\n\r\n", Version),
        (b"GET / HTTP/1.x\r\n\r\n", Version),
        (b"GET / HTTP/2.0\r\n\r\n", UnsupportedVersion),
        (b"GET / http/1.1\r\n\r\n", Version),
        (b"GET * HTTP/1.1\r\n\r\n", Target),
        (b"GET example.com HTTP/1.1\r\n\r\n", Target),
        (b"GET http://user@evil/ HTTP/1.1\r\n\r\n", Target),
        (b"CONNECT /x HTTP/1.1\r\n\r\n", Target),
        (b"CONNECT host HTTP/1.1\r\n\r\n", Target),
        (b"GET /\xff HTTP/1.1\r\n\r\n", Target),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", SpaceBeforeColon),
        (b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", SpaceBeforeColon),
        (b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", ObsFold),
        (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", ObsFold),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", BareCr),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", HeaderValue),
        (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", HeaderValue),
        (b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", HeaderValue),
        (b"GET / HTTP/1.1\r\nX(y): a\r\n\r\n", HeaderName),
        (b"GET / HTTP/1.1\r\n: a\r\n\r\n", HeaderName),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", HeaderName),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            req(bytes).map(|_| ()),
            Err(*want),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn bare_lf_rejected_by_scanner() {
    let mut sc = HeadScanner::new();
    let l = Limits::default();
    assert_eq!(sc.scan(b"GET / HTTP/1.1\n\n", &l), Err(ParseError::BareLf));
    let mut sc = HeadScanner::new();
    assert_eq!(
        sc.scan(b"GET / HTTP/1.1\r\nA: b\n\n", &l),
        Err(ParseError::BareLf)
    );
    // Split between the two LFs.
    let mut sc = HeadScanner::new();
    assert_eq!(sc.scan(b"GET / HTTP/1.1\nA: b\n", &l), Ok(Scan::Partial));
    assert_eq!(
        sc.scan(b"GET / HTTP/1.1\nA: b\n\n", &l),
        Err(ParseError::BareLf)
    );
    // A bare LF inside a head that does end in CRLF CRLF is caught by the parser.
    let mut hs = Vec::new();
    assert_eq!(
        parse_request(b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n", &mut hs, &l),
        Err(ParseError::BareLf)
    );
}

#[test]
fn limits() {
    let l = Limits {
        max_head: 64,
        max_target: 16,
        max_headers: 2,
    };
    let mut sc = HeadScanner::new();
    let long_target =
        b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_eq!(sc.scan(long_target, &l), Err(ParseError::TargetTooLong));
    let mut sc = HeadScanner::new();
    let big =
        b"GET / HTTP/1.1\r\nA: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    assert_eq!(sc.scan(big, &l), Err(ParseError::HeadTooLarge));
    let mut hs = Vec::new();
    assert_eq!(
        parse_request(b"GET /aaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n", &mut hs, &l),
        Err(ParseError::TargetTooLong)
    );
    assert_eq!(
        parse_request(
            b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            &mut hs,
            &l
        ),
        Err(ParseError::TooManyHeaders)
    );
    assert_eq!(ParseError::TooManyHeaders.status(), 431);
    assert_eq!(ParseError::TargetTooLong.status(), 414);
    assert_eq!(ParseError::ObsFold.status(), 400);
}

#[test]
fn scanner_is_incremental() {
    // Feeding one byte at a time must look at each byte once: `scanned` only moves forward.
    let b = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nnext";
    let mut sc = HeadScanner::new();
    let l = Limits::default();
    for i in 1..b.len() {
        match sc.scan(&b[..i], &l).unwrap() {
            Scan::Partial => assert_eq!(sc.scanned, i),
            Scan::Complete(n) => {
                assert_eq!(n, b.len() - 4);
                return;
            }
        }
    }
    panic!("never completed");
}

#[test]
fn responses() {
    let l = Limits::default();
    let mut hs = Vec::new();
    let b = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let r = parse_response(b, &mut hs, &l).unwrap();
    assert_eq!(
        (r.status, r.version, r.len),
        (200, Version::Http11, b.len())
    );
    assert_eq!(r.reason.get(b), b"OK");
    assert_eq!(find_header(b, &hs, b"content-length"), Some(&b"5"[..]));
    let b = b"HTTP/1.0 404\r\n\r\n";
    assert_eq!(parse_response(b, &mut hs, &l).unwrap().status, 404);
    let b = b"HTTP/1.1 204 \r\n\r\n";
    assert_eq!(parse_response(b, &mut hs, &l).unwrap().status, 204);
    for bad in [
        &b"HTTP/1.1 20 OK\r\n\r\n"[..],
        b"HTTP/1.1 099 X\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ] {
        assert!(parse_response(bad, &mut hs, &l).is_err(), "{bad:?}");
    }
}

mod differential {
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b'a'),
                Just(b'Z'),
                Just(b'-'),
                Just(b'!'),
                Just(b'0'),
                Just(b'~')
            ],
            1..8,
        )
    }

    fn any_bytes(classes: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(classes), 0..12)
    }

    const VALUE_BYTES: &[u8] = b"ab \t:/,;=\"\x80\xff\x00\x01\r\n\x7f";
    const TARGET_BYTES: &[u8] = b"/a?=%*:@\x7f\x80 #";

    prop_compose! {
        fn head()(
            method in prop_oneof![token(), any_bytes(b"GET@ ")],
            target in any_bytes(TARGET_BYTES),
            version in prop_oneof![Just(b"HTTP/1.1".to_vec()), Just(b"HTTP/1.0".to_vec()), any_bytes(b"HTP/1.")],
            fields in proptest::collection::vec((prop_oneof![token(), any_bytes(b"a :\t")], any_bytes(VALUE_BYTES)), 0..6),
        ) -> Vec<u8> {
            let mut v = method;
            v.push(b' ');
            v.push(b'/');
            v.extend(target);
            v.push(b' ');
            v.extend(version);
            v.extend(b"\r\n");
            for (n, val) in fields {
                v.extend(n);
                v.extend(b": ");
                v.extend(val);
                v.extend(b"\r\n");
            }
            v.extend(b"\r\n");
            v
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// Where both parsers accept a head, they must read it the same way.
        #[test]
        fn agrees_with_httparse(bytes in head()) {
            let limits = Limits::default();
            let mut ours = Vec::new();
            let mine = match HeadScanner::new().scan(&bytes, &limits) {
                Ok(Scan::Complete(n)) => parse_request(&bytes[..n], &mut ours, &limits).ok().map(|h| (h, n)),
                _ => None,
            };
            let mut theirs = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Request::new(&mut theirs);
            let reference = r.parse(&bytes);
            if let (Some((h, n)), Ok(httparse::Status::Complete(m))) = (mine, reference) {
                prop_assert_eq!(n, m);
                prop_assert_eq!(h.method_span.get(&bytes), r.method.unwrap().as_bytes());
                prop_assert_eq!(h.target.get(&bytes), r.path.unwrap().as_bytes());
                let v = if h.version == Version::Http10 { 0 } else { 1 };
                prop_assert_eq!(Some(v), r.version);
                prop_assert_eq!(ours.len(), r.headers.len());
                for (a, b) in ours.iter().zip(r.headers.iter()) {
                    prop_assert_eq!(a.name.get(&bytes), b.name.as_bytes());
                    prop_assert_eq!(a.value.get(&bytes), b.value);
                }
            }
        }

        /// Never panics on arbitrary bytes, whatever the split.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), split in 0usize..200) {
            let limits = Limits { max_head: 128, max_target: 64, max_headers: 8 };
            let mut sc = HeadScanner::new();
            let split = split.min(bytes.len());
            let _ = sc.scan(&bytes[..split], &limits);
            if let Ok(Scan::Complete(n)) = sc.scan(&bytes, &limits) {
                let mut hs = Vec::new();
                let _ = parse_request(&bytes[..n], &mut hs, &limits);
                let _ = parse_response(&bytes[..n], &mut hs, &limits);
            }
        }
    }
}

#[test]
fn a_start_line_without_version_is_refused_when_it_ends() {
    let l = Limits::default();
    let mut sc = HeadScanner::new();
    assert_eq!(sc.scan(b"GET /", &l), Ok(Scan::Partial));
    assert_eq!(sc.scan(b"GET /\r\n", &l), Err(ParseError::Version));
    let mut sc = HeadScanner::new();
    assert_eq!(
        sc.scan(b"\r\nGET /index.html\n", &l),
        Err(ParseError::Version)
    );
    let mut sc = HeadScanner::new();
    assert_eq!(
        sc.scan(b"GET / HTTP/1.1\r\nHost: a\r\n", &l),
        Ok(Scan::Partial)
    );
    let mut sc = HeadScanner::new();
    assert_eq!(sc.scan(b"HTTP/1.1 200 OK\r\n", &l), Ok(Scan::Partial));
}
