//! The exchange with a cache, driven by fuzz input: a client request and an upstream response
//! (split at the first NUL; the response's body must arrive with its head), fetched once and
//! then asked for again a few times, with the clock moving by fuzz-chosen steps. Whatever the
//! bytes, nothing may panic, and everything written to the client must parse as a response.
#![no_main]

use std::cell::RefCell;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use ringway_core::cache::{Shard, Table};
use ringway_core::config::Config;
use ringway_core::http::date::DateLine;
use ringway_core::http::{parse_response, Limits};
use ringway_core::proxy::{Action, CacheRef, Env, Exchange};

const CFG: &str = "[server]\nlisten = [\"127.0.0.1:8080\"]\n[cache]\nsize = \"4m\"\nvalid = { any = \"1m\" }\nuse_stale = [\"error\", \"http_503\"]\n[compression]\nmin_length = 1\ntypes = [\"text/*\", \"application/json\"]\n[upstreams.app]\nservers = [\"10.0.0.1:80\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n";

fn check(out: &[u8]) {
    let big = Limits {
        max_head: 1 << 20,
        max_target: 1 << 20,
        max_headers: 10_000,
    };
    let mut hs = Vec::new();
    parse_response(out, &mut hs, &big).expect("what the client gets parses");
}

/// Drives one exchange to its end; `resp` answers if it goes upstream.
fn run(cfg: &Config, env: &Env<'_>, req: &[u8], resp: &[u8], now: Instant) {
    let mut ex = Exchange::new(&cfg.server.listen[0], "192.0.2.1".parse().unwrap());
    ex.begin(cfg, now);
    let mut fed = false;
    for _ in 0..64 {
        match ex.poll_action() {
            Action::ReadHead { .. } if !fed => {
                fed = true;
                let _ = ex.handle_input(req, env, now);
            }
            Action::ReadHead { .. } => ex.handle_client_closed(now),
            Action::WriteClient => {
                check(ex.out());
                ex.handle_client_written(true, now);
            }
            Action::WriteStored {
                entry,
                coding,
                range,
                ..
            } => {
                check(ex.out());
                assert!(range.end <= entry.bytes(coding).len());
                ex.handle_client_written(true, now);
            }
            Action::WriteContinue => ex.handle_client_written(true, now),
            Action::DiscardBody(_) | Action::SendBody(_) => ex.handle_client_closed(now),
            Action::Pick { .. } => ex.handle_pick(Some(0), env, now),
            Action::Connect { .. } => ex.handle_connected(true, now),
            Action::SendRequest => ex.handle_request_sent(now),
            Action::ReadResponseHead { read_first, .. } => {
                if read_first && fed {
                    let _ = ex.handle_upstream_input(resp, env, now);
                    fed = false;
                } else {
                    ex.handle_timeout(env, now);
                }
            }
            Action::RelayResponse(mut plan) => {
                // Bodies beyond what came with the head: the upstream closed.
                ex.handle_response_body(Ok(0), 0, std::mem::take(&mut plan.stages), env, now);
            }
            Action::FetchBody(mut plan) => {
                ex.handle_body_fetched(Ok(0), 0, std::mem::take(&mut plan.stages), env, now);
            }
            Action::WaitFill => ex.handle_fill_done(env, now),
            Action::Hold => ex.handle_timeout(env, now),
            Action::ReadBody { .. } => {
                ex.handle_body_buffered(Err(ringway_core::proxy::BodyFail::SourceTimeout), env, now)
            }
            Action::Resolve { .. } | Action::Tunnel { .. } | Action::VerifyPassword { .. } => {
                return
            }
            Action::Record { .. } | Action::Release { .. } | Action::Refresh { .. } => {}
            Action::EndFill { key } => {
                if let Some(c) = env.cache {
                    c.shard.borrow().table().end_fill(&key);
                }
            }
            Action::Finish(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&steps, data)) = data.split_first() else {
        return;
    };
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (req, resp) = (&data[..split], &data[split + 1..]);
    thread_local! {
        static CONFIG: Config = Config::parse("fuzz.toml", CFG).unwrap();
    }
    CONFIG.with(|cfg| {
        let table = std::sync::Arc::new(Table::new(1 << 20));
        let shard = RefCell::new(Shard::new(1 << 20, table.clone()));
        let streams = ringway_core::compress::Streams::default();
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut secs = 1_000_000_000u64;
        for i in 0..4 {
            let date = DateLine::at(secs);
            let env = Env {
                cfg,
                date: &date,
                draining: false,
                auth: None,
                cache: Some(CacheRef {
                    shard: &shard,
                    table: &table,
                }),
                hints: None,
                encoders: Some(&streams),
                ids: None,
                acme: None,
            };
            run(cfg, &env, req, resp, now);
            secs += u64::from(steps >> (2 * i) & 3) * 40;
        }
    });
});
