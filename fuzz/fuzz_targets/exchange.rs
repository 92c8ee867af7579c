//! The exchange driven by fuzz input: the first bytes choose how the simulated peers behave
//! (read sizes, connect failures, server answers, stalls), the rest is what the client sends,
//! raw, to a reverse-proxy listener (with or without the cache) or a forward-proxy listener. The simulation (`ringway_core::proxy::sim`) checks its invariants on every run: every
//! exchange ends, every wait has a deadline, the client only ever gets well-formed responses,
//! nothing malformed reaches an upstream, and no connection with unread bytes is pooled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::proxy::sim::{
    run_cached_connection, run_connection, run_forward_connection, FromBytes,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let split = data.len().min(64);
    let (choices, client) = data.split_at(split);
    let mut c = FromBytes { data: choices };
    // The first byte chooses: a forward-proxy listener (absolute form, CONNECT, rules), a
    // reverse proxy, or one whose route caches.
    match mode % 3 {
        0 => run_connection(&mut c, Some(client)),
        1 => run_forward_connection(&mut c, Some(client)),
        _ => run_cached_connection(&mut c, Some(client)),
    }
});
