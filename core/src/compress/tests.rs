use std::io::Read;

use super::*;
use crate::http::body::Stage;

fn c() -> Compression {
    Compression::default()
}

fn neg(v: &str) -> Option<Coding> {
    c().negotiate(std::iter::once(v.as_bytes()))
}

#[test]
fn negotiation_takes_the_highest_q_and_breaks_ties_by_preference() {
    assert_eq!(neg("gzip, deflate, br, zstd"), Some(Coding::Zstd));
    assert_eq!(neg("gzip, deflate, br"), Some(Coding::Br));
    assert_eq!(neg("gzip"), Some(Coding::Gzip));
    assert_eq!(neg("x-gzip"), Some(Coding::Gzip));
    assert_eq!(neg("GZIP;Q=0.5, br;q=0.4"), Some(Coding::Gzip));
    assert_eq!(neg("zstd;q=0.1, gzip;q=0.9"), Some(Coding::Gzip));
    assert_eq!(neg("br;q=1.0, zstd;q=1"), Some(Coding::Zstd));
    // `*` stands for every coding not listed.
    assert_eq!(neg("*"), Some(Coding::Zstd));
    assert_eq!(neg("zstd;q=0, *"), Some(Coding::Br));
    assert_eq!(neg("*;q=0, gzip"), Some(Coding::Gzip));
    // Refused, empty, identity only, unknown.
    assert_eq!(neg("gzip;q=0"), None);
    assert_eq!(neg(""), None);
    assert_eq!(neg("identity"), None);
    assert_eq!(neg("identity;q=0"), None);
    assert_eq!(neg("deflate, compress"), None);
    // Malformed weights are ignored, not read as 1.
    assert_eq!(neg("gzip;q=2"), None);
    assert_eq!(neg("gzip;q=0.0001"), None);
    assert_eq!(neg("gzip;q=1.5, br;q=0.2"), Some(Coding::Br));
    assert_eq!(neg("gzip;q=, br"), Some(Coding::Br));
    // Several field lines are one list; no field: nothing.
    let two = [&b"gzip;q=0.2"[..], b"br;q=0.3"];
    assert_eq!(c().negotiate(two.into_iter()), Some(Coding::Br));
    assert_eq!(c().negotiate(std::iter::empty()), None);
    // The operator's order decides ties.
    let gzip_first = Compression {
        codings: vec![Coding::Gzip, Coding::Zstd],
        ..c()
    };
    assert_eq!(
        gzip_first.negotiate(std::iter::once(&b"zstd, gzip, br"[..])),
        Some(Coding::Gzip)
    );
    assert_eq!(gzip_first.negotiate(std::iter::once(&b"br"[..])), None);
}

fn facts(ct: &str) -> Facts {
    Facts {
        content_type: Some(ct.to_string()),
        ..Facts::default()
    }
}

#[test]
fn only_listed_types_of_enough_length_without_encoding_or_no_transform_are_encoded() {
    let gz = Some(Coding::Gzip);
    assert_eq!(
        c().decide(gz, 200, &facts("text/html")),
        Verdict::Encode(Coding::Gzip)
    );
    assert_eq!(c().decide(None, 200, &facts("text/html")), Verdict::Vary);
    assert_eq!(c().decide(gz, 200, &facts("image/png")), Verdict::Identity);
    assert_eq!(c().decide(gz, 200, &Facts::default()), Verdict::Identity);
    for status in [204, 206, 304, 103] {
        assert_eq!(
            c().decide(gz, status, &facts("text/html")),
            Verdict::Identity
        );
    }
    assert_eq!(
        c().decide(gz, 404, &facts("text/html")),
        Verdict::Encode(Coding::Gzip)
    );
    let encoded = Facts {
        encoded: true,
        ..facts("text/html")
    };
    assert_eq!(c().decide(gz, 200, &encoded), Verdict::Identity);
    let nt = Facts {
        no_transform: true,
        ..facts("text/html")
    };
    assert_eq!(c().decide(gz, 200, &nt), Verdict::Identity);
    let short = Facts {
        content_length: Some(255),
        ..facts("text/html")
    };
    assert_eq!(c().decide(gz, 200, &short), Verdict::Identity);
    let long = Facts {
        content_length: Some(256),
        ..facts("text/html")
    };
    assert_eq!(c().decide(gz, 200, &long), Verdict::Encode(Coding::Gzip));
    let wild = Compression {
        types: vec!["text/*".into()],
        ..c()
    };
    assert_eq!(
        wild.decide(gz, 200, &facts("text/x-anything")),
        Verdict::Encode(Coding::Gzip)
    );
    assert_eq!(
        wild.decide(gz, 200, &facts("application/json")),
        Verdict::Identity
    );
}

#[test]
fn facts_are_read_from_parsed_and_stored_heads() {
    let stored = b"HTTP/1.1 200 OK\r\nContent-Type: Text/HTML; charset=utf-8\r\nCache-Control: public, No-Transform\r\nContent-Encoding: identity\r\nContent-Length: 12\r\n";
    let f = Facts::of_stored(stored);
    assert_eq!(f.content_type.as_deref(), Some("text/html"));
    assert!(f.no_transform);
    assert!(!f.encoded);
    assert_eq!(f.content_length, Some(12));
    let f = Facts::of_stored(b"HTTP/1.1 200 OK\r\nContent-Encoding: identity, gzip\r\n");
    assert!(f.encoded);
}

fn edited(v: Verdict, fields: &[(&str, &str)]) -> String {
    let e = v.head_edit().unwrap();
    let mut out = Vec::new();
    let mut vary = false;
    for (n, val) in fields {
        if !e.field(n.as_bytes(), val.as_bytes(), &mut vary, &mut out) {
            out.extend_from_slice(format!("{n}: {val}\r\n").as_bytes());
        }
    }
    e.finish(vary, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn an_encoded_head_loses_its_length_and_ranges_weakens_its_etag_and_varies() {
    let h = edited(
        Verdict::Encode(Coding::Br),
        &[
            ("Content-Length", "900"),
            ("ETag", "\"abc\""),
            ("Accept-Ranges", "bytes"),
            ("Vary", "Origin"),
            ("Content-Type", "text/html"),
        ],
    );
    assert_eq!(
        h,
        "ETag: W/\"abc\"\r\nVary: Origin, Accept-Encoding\r\nContent-Type: text/html\r\nContent-Encoding: br\r\n"
    );
    // A weak tag stays as it is; Vary that already lists it or `*` is kept.
    let h = edited(
        Verdict::Encode(Coding::Gzip),
        &[("ETag", "W/\"x\""), ("vary", "accept-encoding")],
    );
    assert_eq!(
        h,
        "ETag: W/\"x\"\r\nvary: accept-encoding\r\nContent-Encoding: gzip\r\n"
    );
    let h = edited(Verdict::Encode(Coding::Gzip), &[("Vary", "*")]);
    assert_eq!(h, "Vary: *\r\nContent-Encoding: gzip\r\n");
    // Not encoded but could have been: only Vary, the rest untouched.
    let h = edited(
        Verdict::Vary,
        &[("Content-Length", "900"), ("ETag", "\"abc\"")],
    );
    assert_eq!(
        h,
        "Content-Length: 900\r\nETag: \"abc\"\r\nVary: Accept-Encoding\r\n"
    );
    // Two Vary lines: the coding is added once.
    let h = edited(Verdict::Vary, &[("Vary", "Origin"), ("Vary", "Cookie")]);
    assert_eq!(h, "Vary: Origin, Accept-Encoding\r\nVary: Cookie\r\n");
}

fn decode(coding: Coding, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        Coding::Gzip => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        Coding::Br => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Coding::Zstd => out = zstd::stream::decode_all(bytes).unwrap(),
    }
    out
}

fn sample(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let mut i = 0u64;
    while v.len() < n {
        v.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"item {}\",\"ok\":true}},",
                i * 7919 % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    v.truncate(n);
    v
}

#[test]
fn every_coding_streams_flushes_and_round_trips() {
    for coding in Coding::ALL {
        for (len, expect) in [(0, None), (1, Some(1)), (1000, Some(1000)), (300_000, None)] {
            let body = sample(len);
            let mut e = Encoder::new(coding, DEFAULT_LEVELS, expect);
            let mut out = Vec::new();
            for piece in body.chunks(7_000) {
                e.data(piece, &mut out);
                e.flush(&mut out);
                // After a flush, everything so far decodes (a streamed body, of unknown length,
                // is not held back).
                if coding == Coding::Gzip && expect.is_none() {
                    let mut d = flate2::read::GzDecoder::new(&out[..]);
                    let mut got = Vec::new();
                    let _ = d.read_to_end(&mut got);
                    assert!(
                        body.starts_with(&got) && !got.is_empty(),
                        "{coding:?} flush"
                    );
                }
            }
            e.end(&mut out);
            assert_eq!(decode(coding, &out), body, "{coding:?} {len}");
            if len >= 1000 {
                assert!(
                    out.len() < body.len() / 2,
                    "{coding:?} {len}: {}",
                    out.len()
                );
            }
            let whole = encode_whole(coding, DEFAULT_LEVELS, &body);
            assert_eq!(decode(coding, &whole), body);
        }
    }
}

#[test]
fn zstd_flushes_what_it_has() {
    let body = sample(5000);
    let mut e = Encoder::new(Coding::Zstd, DEFAULT_LEVELS, None);
    let mut out = Vec::new();
    e.data(&body[..2000], &mut out);
    e.flush(&mut out);
    let mut d = zstd::stream::read::Decoder::new(&out[..]).unwrap();
    let mut got = vec![0; 2000];
    d.read_exact(&mut got).unwrap();
    assert_eq!(got, &body[..2000]);
}

#[test]
fn windows_follow_the_length() {
    assert_eq!(encoder::window_log(Some(1), 9, 15), 9);
    assert_eq!(encoder::window_log(Some(4096), 9, 15), 12);
    assert_eq!(encoder::window_log(Some(4097), 9, 15), 13);
    assert_eq!(encoder::window_log(Some(1 << 40), 9, 15), 15);
    assert_eq!(encoder::window_log(None, 9, 15), 15);
}

#[test]
fn pooled_encoders_are_reused_and_start_clean() {
    let streams = Streams::default();
    for coding in Coding::ALL {
        for round in 0..4 {
            let body = sample(3000 + round * 1000);
            let slot = streams.try_open(8).unwrap();
            let mut e = Encoder::pooled(coding, DEFAULT_LEVELS, Some(body.len() as u64), slot);
            let mut out = Vec::new();
            if round == 1 {
                // A stream cut off halfway (the client left): its encoder is reused all the same.
                e.data(&body[..1000], &mut out);
                drop(e);
                continue;
            }
            e.data(&body, &mut out);
            e.end(&mut out);
            drop(e);
            assert_eq!(decode(coding, &out), body, "{coding:?} round {round}");
        }
        assert_eq!(streams.open(), 0);
    }
    // gzip and zstd wait in the pool (brotli cannot be reset).
    assert_eq!(streams.idle(), 2);
    let a = streams.try_open(2).unwrap();
    let _b = streams.try_open(2).unwrap();
    assert!(streams.try_open(2).is_none());
    drop(a);
    assert!(streams.try_open(2).is_some());
}
