//! One keep-alive request through core's exchange, as io drives it: the head parsed and
//! routed, the upstream head written, the response head parsed and rewritten for the client,
//! the access record made. What core spends per request, without the sockets (io's share and
//! the kernel's are measured by `loadtest/ab.sh`).

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringway_core::config::Config;
use ringway_core::http::date::DateLine;
use ringway_core::proxy::{Action, Env, Exchange, Finish, Stages};

const CFG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[upstreams.app]
servers = ["127.0.0.1:9000"]

[[routes]]
path = "/"
upstream = "app"
"#;

/// What wrk sends.
const REQUEST: &[u8] = b"GET /100b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// The head nginx answers a 100-byte file with (its body follows).
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 14:00:00 GMT\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\nLast-Modified: Fri, 04 Dec 2026 13:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"6751a0c0-64\"\r\nAccept-Ranges: bytes\r\n\r\n";

/// One request from `begin` to `Finish`; the bytes written to the client.
fn one(ex: &mut Exchange, env: &Env<'_>, response: &[u8], now: Instant) -> usize {
    ex.begin(env.cfg, now);
    let mut written = 0;
    loop {
        match ex.poll_action() {
            Action::ReadHead { .. } => {
                let n = ex.handle_input(REQUEST, env, now);
                assert_eq!(n, REQUEST.len());
            }
            Action::Pick { .. } => ex.handle_pick(Some(0), env, now),
            Action::Connect { .. } => ex.handle_connected(true, now),
            Action::SendRequest => {
                written += ex.out().len();
                ex.handle_request_sent(now);
            }
            Action::ReadResponseHead { .. } => {
                let n = ex.handle_upstream_input(response, env, now);
                assert_eq!(n, response.len());
            }
            Action::WriteClient => {
                written += ex.out().len();
                ex.handle_client_written(true, now);
            }
            Action::RelayResponse(plan) => {
                assert!(plan.body.is_done(), "the body goes with the head");
                ex.handle_response_body(Ok(0), 0, Stages::default(), env, now);
            }
            Action::Record { .. } | Action::Release { .. } => {}
            Action::Finish(Finish::KeepAlive) => return written,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn keep_alive(c: &mut Criterion) {
    let cfg = Config::parse("bench.toml", CFG).expect("config");
    let date = DateLine::at(1_796_392_800);
    let env = Env::bare(&cfg, &date);
    let response = [RESPONSE_HEAD, &[b'x'; 100]].concat();
    let mut ex = Exchange::new(&cfg.server.listen[0], "127.0.0.1".parse().unwrap());
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    assert!(one(&mut ex, &env, &response, now) > 0);
    c.bench_function("keep-alive request, 100 B response", |b| {
        b.iter(|| black_box(one(&mut ex, &env, &response, now)))
    });
}

criterion_group!(benches, keep_alive);
criterion_main!(benches);
