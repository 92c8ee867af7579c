//! Head parsing against httparse on the same inputs, chunked decoding, and route lookup.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringway_bench::{many_headers, BROWSER, RESPONSE, SHORT};
use ringway_core::http::chunked::{write_chunk_header, ChunkedDecoder};
use ringway_core::http::{parse_request, parse_response, HeadScanner, Limits, Scan};
use ringway_core::route::{HostMatch, Router};

fn requests(c: &mut Criterion) {
    let many = many_headers();
    let fixtures: [(&str, &[u8]); 3] = [
        ("short", SHORT),
        ("browser", BROWSER),
        ("32-headers", &many),
    ];
    let limits = Limits::default();
    let mut g = c.benchmark_group("request-head");
    for (name, bytes) in fixtures {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        // What the proxy does per request: find the end, then parse.
        g.bench_with_input(BenchmarkId::new("ringway", name), bytes, |b, bytes| {
            let mut headers = Vec::with_capacity(64);
            b.iter(|| {
                let mut sc = HeadScanner::new();
                let Ok(Scan::Complete(n)) = sc.scan(black_box(bytes), &limits) else {
                    panic!()
                };
                let h = parse_request(&bytes[..n], &mut headers, &limits).unwrap();
                black_box((h, headers.len()))
            })
        });
        g.bench_with_input(BenchmarkId::new("httparse", name), bytes, |b, bytes| {
            b.iter(|| {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Request::new(&mut headers);
                let s = r.parse(black_box(bytes)).unwrap();
                black_box((s, r.headers.len()))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("response-head");
    g.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    g.bench_function("ringway", |b| {
        let mut headers = Vec::with_capacity(64);
        b.iter(|| {
            let mut sc = HeadScanner::new();
            let Ok(Scan::Complete(n)) = sc.scan(black_box(RESPONSE), &limits) else {
                panic!()
            };
            black_box(parse_response(&RESPONSE[..n], &mut headers, &limits).unwrap())
        })
    });
    g.bench_function("httparse", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            black_box(r.parse(black_box(RESPONSE)).unwrap())
        })
    });
    g.finish();
}

fn chunked(c: &mut Criterion) {
    let mut body = Vec::new();
    let piece = vec![b'x'; 4096];
    for _ in 0..256 {
        write_chunk_header(piece.len(), &mut body);
        body.extend_from_slice(&piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked-decode");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("1MiB-in-4KiB-chunks", |b| {
        b.iter(|| {
            let mut d = ChunkedDecoder::new();
            let mut pos = 0;
            let mut data = 0;
            loop {
                let s = d.decode(&body[pos..]).unwrap();
                data += s.data.len();
                pos += s.consumed;
                if s.done {
                    break;
                }
            }
            black_box(data)
        })
    });
    g.finish();
}

fn routes(c: &mut Criterion) {
    let mut g = c.benchmark_group("route-lookup");
    for n in [10usize, 1_000, 10_000] {
        let table = Router::new((0..n).map(|i| {
            let host =
                HostMatch::parse(&format!("host{}.example.com", i % (n / 10).max(1))).unwrap();
            (host, format!("/service-{i}/"), i)
        }));
        let host = format!("host{}.example.com", (n / 20).max(1) % (n / 10).max(1));
        let path = format!("/service-{}/items/42", n / 2);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                black_box(table.lookup(black_box(host.as_bytes()), black_box(path.as_bytes())))
            })
        });
    }
    // The case: every route on one host, the request for the last one.
    for n in [10usize, 10_000] {
        let table = Router::new((0..n).map(|i| (HostMatch::Any, format!("/service-{i}/"), i)));
        let path = format!("/service-{}/items/42", n - 1);
        g.bench_function(BenchmarkId::new("one-host-last-route", n), |b| {
            b.iter(|| {
                black_box(table.lookup(black_box(b"example.com"), black_box(path.as_bytes())))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, requests, chunked, routes);
criterion_main!(benches);
