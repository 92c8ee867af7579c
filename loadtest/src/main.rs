//! ringway-loadtest: the side-by-side comparison with nginx, and a load generator.
//!
//! `compare` runs wrk against nginx and ringway in alternation on the same origin and prints
//! ratios (see docs/benchmarks.md). `gen` is a monoio load generator with an open-loop
//! constant-rate mode that measures latency from each request's scheduled send time, correcting
//! for coordinated omission the way wrk2 does.

mod abuse;
mod compare;
mod floor;
mod gen;
mod origin;
mod procfs;
mod socks;
mod wrk;

use std::process::ExitCode;

const USAGE: &str = "\
usage:
  ringway-loadtest compare [--rounds N] [--duration SECS] [--workers N [--sweep]] [--quick]
                           [--ringway PATH] [--cases LIST] [--open-loop]
      Alternates nginx and ringway (same origin, same CPUs) under wrk and prints, per case,
      req/s, p50/p99 latency and proxy CPU time per request as ringway/nginx ratios with the
      spread over rounds, plus a 'direct' row (wrk straight to the origin). Needs nginx, wrk and
      taskset on PATH and a release build of ringway (cargo build --release).
      --cases: comma list of filters, every one must match: ka|close, 16|256, 100b|64k|1m,
        plain|tls, new (TLS full handshakes with openssl s_time), hit, framing, upload (POST
        of 64 KiB); e.g. plain,ka,16,100b
      --open-loop: also compare p99 at a fixed rate (70% of nginx's max) with `gen`.
      --floors: also measure the copy and splice floors (see floor) for plain cases.
      --workers N: both proxies get N workers on CPUs 0..N, the load the CPUs above.
      --sweep: with --workers N, run the comparison for 1, 2, ... N workers (load kept on the
      CPUs above N), for bare-metal machines with many cores.
  ringway-loadtest abuse [--rounds N] [--duration SECS] [--rate R] [--polite-rate R]
                         [--ringway PATH]
      One abusive client (wrk at full speed) beside a polite one (gen at a fixed rate, from
      127.0.0.2), through ringway and nginx, each without and with a per-client rate limit
      (R/s, burst R; nginx limit_req nodelay): the polite client's p50/p99 and errors, and the
      proxy's CPU per refused request against CPU per served request.
  ringway-loadtest gen --url http://127.0.0.1:8080/path [-c CONNS] [-d SECS] [--rate REQ/S]
                       [--close] [--from IP]
      Closed loop by default; with --rate, open loop at that total rate. --from: connect from
      that local address (another loopback address is another client). Prints requests,
      errors, refused (status 400 or more), rps and latency quantiles.
  ringway-loadtest floor --listen ADDR --upstream ADDR [--splice]
      The least a proxy can do: a single-threaded epoll relay, an upstream connection per
      client, nothing parsed; bytes copied through a 64 KiB buffer, or spliced with --splice.
      compare --floors measures both next to the proxies.
  ringway-loadtest origin --listen ADDR
      An origin for framings nginx does not serve from files: /chunked/N/C (N bytes in chunks
      of C), /close/N (close-delimited), /len/N; a thread per connection.
  ringway-loadtest socks --proxy ADDR --target IP:PORT [--path /1m] [-c CONNS] [-d SECS]
      A SOCKS5 client: each connection loops a new tunnel, CONNECT to the target, GET PATH
      over HTTP/1.0, the response read whole; prints tunnels/s and MB/s (loadtest/socks_vs_dante.sh).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("compare") => compare::main(&args[1..]),
        Some("abuse") => abuse::main(&args[1..]),
        Some("gen") => gen::main(&args[1..]),
        Some("floor") => floor::main(&args[1..]),
        Some("origin") => origin::main(&args[1..]),
        Some("socks") => socks::main(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringway-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tiny flag parser: `--name value` and bare `--flag`.
pub(crate) struct Flags<'a>(&'a [String]);

impl<'a> Flags<'a> {
    pub(crate) fn value(&self, names: &[&str]) -> Option<&'a str> {
        self.0
            .windows(2)
            .find(|w| names.contains(&w[0].as_str()))
            .map(|w| w[1].as_str())
    }

    pub(crate) fn parsed<T: std::str::FromStr>(
        &self,
        names: &[&str],
        default: T,
    ) -> Result<T, String> {
        match self.value(names) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{}: invalid value {v:?}", names[0])),
        }
    }

    /// A required socket address flag (`--listen ADDR`).
    pub(crate) fn addr(&self, name: &str) -> Result<std::net::SocketAddr, String> {
        self.value(&[name])
            .ok_or(format!("{name} ADDR"))?
            .parse()
            .map_err(|e| format!("{name}: {e}"))
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}
