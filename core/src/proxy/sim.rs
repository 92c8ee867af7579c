//! Deterministic simulation: a client, an [`Exchange`] and upstream servers in memory, with a
//! fake clock, driven by a seeded generator (tests) or by fuzz input (`fuzz/`, feature `sim`).
//!
//! The driver plays io's part: it carries out each action, but every read delivers a random
//! number of bytes, connections fail, pooled connections turn out to be closed, servers answer
//! with interim responses, 503s, chunked or close-delimited bodies, garbage, stray bytes after a
//! response, or nothing at all (the clock then jumps to the exchange's deadline). The client
//! pipelines its requests and sometimes sends one that must be refused. After each connection
//! the invariants are checked:
//! - every request is answered exactly once and in order, until the connection closes, and each
//!   answer is the right one (the upstream's answer to *that* request, or the proxy's error);
//! - nothing is forwarded after a request that had to be refused, and nothing malformed ever
//!   reaches an upstream;
//! - a request that is not idempotent reaches an upstream at most once;
//! - a connection whose response was not read to its exact end is never pooled;
//! - every wait has a deadline, and every exchange ends.
//!
//! `SIM_TRACE=1 cargo test -p ringway-core sim` prints each action and the requests.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::*;
use crate::upstream::GroupState;

/// Where the simulation's choices come from.
pub trait Choices {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u32) -> u32;

    fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent
    }
}

/// SplitMix64: small, seeded, and the same on every machine.
pub struct Rng(pub u64);

impl Choices for Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % u64::from(n)) as u32
    }
}

/// Choices read from fuzz input; zeros once it runs out.
pub struct FromBytes<'a> {
    pub data: &'a [u8],
}

impl Choices for FromBytes<'_> {
    fn below(&mut self, n: u32) -> u32 {
        let (b, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        u32::from(*b) % n
    }
}

/// The configuration every simulated connection runs with.
pub const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[timeouts]
client_header = "10s"
keepalive = "60s"
upstream_connect = "1s"
upstream_read = "5s"

[upstreams.app]
servers = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
retries = 2
retry_on = [503]

[[routes]]
path = "/app/"
upstream = "app"

[[routes]]
path = "/fixed"
respond = { status = 200, body = "fixed" }
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Proxied to the upstream group.
    App,
    Fixed,
    /// No route: 404.
    Nothing,
    /// Framing the proxy must refuse: 400 and close.
    Invalid,
}

#[derive(Clone, Debug)]
struct Spec {
    id: usize,
    kind: Kind,
    method: Method,
    /// The target as the upstream should get it.
    target: String,
    /// `X-V` (the cached simulation's responses may vary on it); 0: none sent.
    vary: u8,
}

/// One upstream connection as the simulated server sees it.
#[derive(Debug)]
struct UpConn {
    server: usize,
    /// Request bytes received and not yet answered.
    received: Vec<u8>,
    /// Response bytes the server has written and the proxy not yet read.
    pending: Vec<u8>,
    /// The server closes once `pending` is read.
    eof: bool,
    /// The server will never send anything more (a stall).
    stalled: bool,
    /// A pooled connection the server has already closed.
    stale: bool,
    answered: bool,
}

impl UpConn {
    fn new(server: usize) -> Self {
        Self {
            server,
            received: Vec::new(),
            pending: Vec::new(),
            eof: false,
            stalled: false,
            stale: false,
            answered: false,
        }
    }
}

/// What the upstream servers saw.
#[derive(Default)]
struct Servers {
    /// Request id → complete requests received (head and body).
    seen: HashMap<usize, u32>,
    /// Request id → the body length of the last 200 sent for it.
    sent: HashMap<usize, usize>,
    /// Request id → what the last 200 for it said to caches.
    said: HashMap<usize, Said>,
    pool: Vec<Vec<UpConn>>,
    /// Request id → its target and `X-V` (the cached simulation's).
    targets: HashMap<usize, (String, u8)>,
}

/// What a response told caches.
#[derive(Clone, Copy, Debug, Default)]
struct Said {
    vary: bool,
    no_store: bool,
    cookie: bool,
}

/// Which listener and rules a simulated connection runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sim {
    Reverse,
    Forward,
    /// A reverse proxy whose route caches: requests share a few targets, responses say how
    /// they may be stored, another connection sometimes holds a key's fetch.
    Cached,
}

/// A connection's worth of simulation; panics when an invariant breaks.
pub fn run_connection(c: &mut dyn Choices, raw_client: Option<&[u8]>) {
    run(c, raw_client, Sim::Reverse);
}

/// The same through a forward-proxy listener: requests in absolute form to `hN.test`, which
/// the simulated resolver maps to server N (or fails to resolve).
pub fn run_forward_connection(c: &mut dyn Choices, raw_client: Option<&[u8]>) {
    run(c, raw_client, Sim::Forward);
}

/// The same with the cache on the route. Besides the invariants above: a stored response is
/// served only to a request for the same target (and the same `X-V` when it varies on it),
/// never after an unsafe request to that target succeeded, never when it said `no-store` or
/// set a cookie; and the record tells a hit from a fetch.
pub fn run_cached_connection(c: &mut dyn Choices, raw_client: Option<&[u8]>) {
    run(c, raw_client, Sim::Cached);
}

/// The server a simulated destination address stands for.
fn server_of(to: UpstreamKey) -> usize {
    match to {
        UpstreamKey::Server { server, .. } => server,
        UpstreamKey::Destination { addr, .. } => match addr.ip() {
            IpAddr::V4(v4) => usize::from(v4.octets()[3]) - 1,
            IpAddr::V6(_) => panic!("the simulated resolver gives IPv4 only"),
        },
    }
}

/// The configuration a simulated listener runs with.
fn config_text(sim: Sim) -> String {
    match sim {
        Sim::Forward => {
            CONFIG.replace(
                "listen = [\"127.0.0.1:8080\"]",
                "listen = [{ addr = \"127.0.0.1:8080\", forward = true }]",
            ) + "\n[[forward.rules]]\naction = \"allow\"\nclients = [\"0.0.0.0/0\"]\n"
        }
        Sim::Cached => format!("{CONFIG}\n[cache]\nsize = \"8m\"\n"),
        Sim::Reverse => CONFIG.to_string(),
    }
}

fn run(c: &mut dyn Choices, raw_client: Option<&[u8]>, sim: Sim) {
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let cfg =
        Config::parse("sim.toml", &config_text(sim)).expect("the simulation's config is valid");
    let table = std::sync::Arc::new(crate::cache::Table::new(4 << 20));
    let shard = std::cell::RefCell::new(crate::cache::Shard::new(4 << 20, table.clone()));
    let hints = std::cell::RefCell::new(super::SizeHints::new(cfg.routes.len()));
    let date = DateLine::at(1_700_000_000);
    // The client's bytes: generated requests, or raw fuzz input.
    let mut specs = Vec::new();
    let client: Vec<u8> = match raw_client {
        Some(b) => b.to_vec(),
        None => {
            let mut bytes = Vec::new();
            let n = 1 + c.below(10) as usize;
            for id in 0..n {
                // Requests after a refused one stay in the stream: they must never be
                // forwarded or answered.
                specs.push(request(c, id, id + 1 == n, sim, &mut bytes));
            }
            bytes
        }
    };
    let mut w = World {
        c,
        sim,
        strict: raw_client.is_none(),
        env: Env {
            cfg: &cfg,
            date: &date,
            draining: false,
            auth: None,
            cache: (sim == Sim::Cached).then_some(CacheRef {
                shard: &shard,
                table: &table,
            }),
            hints: Some(&hints),
            encoders: None,
            ids: None,
            acme: None,
        },
        shard: &shard,
        now: start,
        group: GroupState::new(&cfg.upstreams[0], 0),
        client,
        cpos: 0,
        inbuf: Vec::new(),
        ubuf: Vec::new(),
        to_client: Vec::new(),
        servers: Servers {
            pool: (0..3).map(|_| Vec::new()).collect(),
            targets: specs
                .iter()
                .map(|s| (s.id, (s.target.clone(), s.vary)))
                .collect(),
            ..Servers::default()
        },
        up: None,
        in_flight: None,
        foreign: None,
    };
    let (answered, records) = w.connection();
    if std::env::var_os("SIM_TRACE").is_some() {
        eprintln!("{specs:?}");
    }
    if raw_client.is_none() {
        check_answers(&specs, &w.to_client, &w.servers, &records);
        if sim == Sim::Cached {
            check_cache(&specs, &w.to_client, &w.servers, &records);
        }
    } else {
        check_well_formed(&w.to_client, &answered, &records);
    }
}

/// One simulated connection's world: the client's bytes and what it received, the upstream
/// servers, the worker's state, and the clock. It plays io's part for each action.
struct World<'a, 'c> {
    c: &'c mut dyn Choices,
    sim: Sim,
    /// Generated requests (not raw fuzz input): the servers check what they get.
    strict: bool,
    env: Env<'a>,
    shard: &'a std::cell::RefCell<crate::cache::Shard>,
    now: Instant,
    group: GroupState,
    client: Vec<u8>,
    cpos: usize,
    inbuf: Vec<u8>,
    ubuf: Vec<u8>,
    to_client: Vec<u8>,
    servers: Servers,
    up: Option<UpConn>,
    in_flight: Option<usize>,
    /// A key another connection is fetching.
    foreign: Option<Vec<u8>>,
}

impl World<'_, '_> {
    /// Runs the connection's exchanges to the close: the method of each that answered, and
    /// its record.
    fn connection(&mut self) -> (Vec<Method>, Vec<EndRecord>) {
        let listen = self.env.cfg.server.listen[0];
        let mut ex = Exchange::new(&listen, "192.0.2.7".parse().unwrap());
        let (mut answered, mut records) = (Vec::new(), Vec::new());
        let mut resumed = false;
        for exchanges in 0.. {
            assert!(exchanges < 256, "more exchanges than requests");
            if !std::mem::take(&mut resumed) {
                ex.begin(self.env.cfg, self.now);
            }
            if self.sim == Sim::Cached && self.c.chance(15) {
                // Another connection is fetching one of the targets.
                let key = format!("~app\0http://sim/app/c{}", self.c.below(3)).into_bytes();
                if self.shard.borrow().table().try_fill(&key) {
                    self.foreign = Some(key);
                }
            }
            let finish = (0..10_000)
                .find_map(|_| {
                    let action = ex.poll_action();
                    if std::env::var_os("SIM_TRACE").is_some() {
                        eprintln!("{action:?}");
                    }
                    self.step(&mut ex, action)
                })
                .expect("an exchange that does not end");
            let record = ex.end_record();
            assert_eq!(record.finish, Some(finish));
            if record.status != 0 {
                answered.push(record.method.unwrap_or(Method::Get));
                records.push(record.clone());
            }
            if finish == Finish::Park {
                // Parked, and woken by the client's next bytes (or its close).
                // Rebuilt in the closed exchange's buffers, as io does with a worker's spares.
                let parked = ex.park(self.now);
                let spares = ex.take_spares();
                ex = Exchange::unpark(&listen, parked, self.env.cfg, self.now, spares);
                resumed = true;
                continue;
            }
            if finish != Finish::KeepAlive {
                break;
            }
        }
        (answered, records)
    }

    /// Carries out `action` as io would; `Some` when the exchange ended.
    fn step(&mut self, ex: &mut Exchange, action: Action) -> Option<Finish> {
        let (env, now) = (self.env, self.now);
        match action {
            Action::ReadHead { read_first, idle } => self.read_head(ex, read_first, idle),
            Action::WriteClient => {
                let _ = deadline(ex);
                self.to_client.extend_from_slice(ex.out());
                ex.handle_client_written(true, now);
            }
            Action::WriteStored {
                entry,
                coding,
                range,
                ..
            } => {
                self.to_client.extend_from_slice(ex.out());
                self.to_client
                    .extend_from_slice(&entry.bytes(coding)[range]);
                ex.handle_client_written(true, now);
            }
            Action::WriteContinue => {
                self.to_client.extend_from_slice(CONTINUE);
                ex.handle_client_written(true, now);
            }
            Action::WaitFill => self.wait_fill(ex),
            // A tarpit holds until its deadline (the simulation has no rules, but io's contract
            // is the same).
            Action::Hold => self.time_out(ex),
            Action::ReadBody { need, .. } => self.buffer_body(ex, need),
            Action::VerifyPassword { .. } => unreachable!("the simulation has no proxy users"),
            Action::EndFill { key } => {
                assert!(
                    self.shard.borrow().table().filling(&key),
                    "gives back a claim it holds"
                );
                self.shard.borrow().table().end_fill(&key);
            }
            Action::Refresh { .. } => unreachable!("no stale-while-revalidate here"),
            Action::DiscardBody(mut plan) => {
                let r = self.request_body(&mut plan, false);
                ex.handle_request_body(r, &env, now);
            }
            Action::SendBody(mut plan) => {
                let r = self.request_body(&mut plan, true);
                ex.handle_request_body(r, &env, now);
            }
            Action::Pick { group: g, key } => {
                assert_eq!(g, 0);
                if let Some(s) = self.in_flight.take() {
                    self.group.done(s);
                }
                let u = &env.cfg.upstreams[0];
                let s = self.group.pick(u, key, ex.tried(), |_| true, now);
                self.in_flight = s;
                ex.handle_pick(s, &env, now);
            }
            Action::Record { to, outcome, .. } => {
                if let (UpstreamKey::Server { server, .. }, Some(o)) = (to, outcome) {
                    let _ = self.group.record(&env.cfg.upstreams[0], server, o, now);
                }
            }
            Action::Resolve { port } => self.resolve(ex, port),
            Action::Tunnel { .. } => {
                // What the client sends from here on is the tunnel's, not HTTP: it goes
                // through untouched, and the tunnel ends when the client is done.
                let sent = (self.inbuf.len() + self.client.len() - self.cpos) as u64;
                self.inbuf.clear();
                self.cpos = self.client.len();
                ex.handle_tunnel_closed(sent, 0, now);
            }
            Action::Connect { to, via, .. } => self.connect(ex, to, via),
            Action::SendRequest => self.send_request(ex),
            Action::ReadResponseHead { read_first, max } => {
                self.read_response_head(ex, read_first, max)
            }
            Action::RelayResponse(plan) => self.response_body(ex, *plan, true),
            Action::FetchBody(plan) => self.response_body(ex, *plan, false),
            Action::Release { to, then } => self.release(to, then),
            Action::Finish(f) => {
                self.finish();
                return Some(f);
            }
        }
        None
    }

    /// The clock jumps to the exchange's deadline, which passes.
    fn time_out(&mut self, ex: &mut Exchange) {
        self.now = deadline(ex);
        ex.handle_timeout(&self.env, self.now);
    }

    fn read_head(&mut self, ex: &mut Exchange, read_first: bool, idle: bool) {
        if read_first {
            if idle && self.c.chance(5) {
                // The client pauses between requests: the connection parks (or times out).
                return self.time_out(ex);
            }
            if self.cpos < self.client.len() {
                let k = piece(self.c, self.client.len() - self.cpos);
                self.inbuf
                    .extend_from_slice(&self.client[self.cpos..self.cpos + k]);
                self.cpos += k;
            } else if self.c.chance(30) {
                return self.time_out(ex);
            } else {
                return ex.handle_client_closed(self.now);
            }
        }
        let n = ex.handle_input(&self.inbuf, &self.env, self.now);
        self.inbuf.drain(..n);
    }

    /// `ReadBody`: the client's bytes into the input until it holds `need`, in pieces; a
    /// client that has no more, or stalls, ends it so.
    fn buffer_body(&mut self, ex: &mut Exchange, need: usize) {
        while self.inbuf.len() < need {
            if self.cpos >= self.client.len() {
                let e = if self.c.chance(30) {
                    BodyFail::SourceTimeout
                } else {
                    BodyFail::Source(crate::http::body::BodyError::Truncated)
                };
                return ex.handle_body_buffered(Err(e), &self.env, self.now);
            }
            let k = piece(
                self.c,
                (self.client.len() - self.cpos).min(need - self.inbuf.len()),
            );
            self.inbuf
                .extend_from_slice(&self.client[self.cpos..self.cpos + k]);
            self.cpos += k;
        }
        ex.handle_body_buffered(Ok(()), &self.env, self.now);
    }

    /// The request body from the client: to the upstream (`send`) or thrown away.
    fn request_body(&mut self, plan: &mut BodyPlan, send: bool) -> Result<u64, BodyFail> {
        let feed = Feed {
            src: &self.client,
            pos: &mut self.cpos,
            stall: false,
        };
        if !send {
            return body(self.c, plan, &mut self.inbuf, feed, None, None);
        }
        let conn = self.up.as_mut().expect("connected");
        let mut sink = std::mem::take(&mut conn.received);
        let r = body(self.c, plan, &mut self.inbuf, feed, Some(&mut sink), None);
        self.up.as_mut().expect("connected").received = sink;
        r
    }

    fn wait_fill(&mut self, ex: &mut Exchange) {
        let key = self
            .foreign
            .clone()
            .expect("only another's fetch is waited for");
        assert_eq!(ex.cache_key(), key, "waits for the key it asked for");
        if self.c.chance(50) {
            // The other fetch ends.
            self.shard.borrow().table().end_fill(&key);
            self.foreign = None;
            ex.handle_fill_done(&self.env, self.now);
        } else {
            self.time_out(ex);
        }
    }

    /// The simulated resolver: `hN.test` is server N (N < 3), sometimes not found; the name
    /// server sometimes never answers.
    fn resolve(&mut self, ex: &mut Exchange, port: u16) {
        assert_eq!(self.sim, Sim::Forward, "a reverse proxy resolves nothing");
        if self.c.chance(3) {
            return self.time_out(ex);
        }
        let host = ex.resolve_host().to_string();
        let n = host
            .strip_prefix('h')
            .and_then(|h| h.strip_suffix(".test"))
            .and_then(|n| n.parse::<u8>().ok());
        let r = match n {
            Some(n) if n < 3 && !self.c.chance(5) => {
                Ok(vec![SocketAddr::from(([203, 0, 113, n + 1], port))])
            }
            _ => Err(format!("{host}: not found")),
        };
        ex.handle_resolved(r, &self.env, self.now);
    }

    fn connect(&mut self, ex: &mut Exchange, to: UpstreamKey, via: Via) {
        let server = server_of(to);
        if self.sim == Sim::Forward {
            assert!(matches!(to, UpstreamKey::Destination { .. }), "{to:?}");
        }
        self.up = None;
        self.ubuf.clear();
        let mut taken = None;
        if via == Via::Pooled {
            // As io's pool does: a connection with anything waiting is dropped.
            while let Some(mut conn) = self.servers.pool[server].pop() {
                if conn.pending.is_empty() && !conn.eof {
                    conn.stale = self.c.chance(15);
                    taken = Some(conn);
                    break;
                }
            }
        }
        if let Some(conn) = taken {
            self.up = Some(conn);
            ex.handle_connected(true, self.now);
        } else if self.c.chance(8) {
            let e = UpstreamError::ConnectFailed("refused".into());
            ex.handle_upstream_error(e, &self.env, self.now);
        } else if self.c.chance(4) {
            self.time_out(ex);
        } else {
            self.up = Some(UpConn::new(server));
            ex.handle_connected(false, self.now);
        }
    }

    fn send_request(&mut self, ex: &mut Exchange) {
        let conn = self.up.as_mut().expect("connected");
        let _ = deadline(ex);
        if conn.stale && self.c.chance(50) {
            let e = UpstreamError::WriteFailed("reset".into());
            ex.handle_upstream_error(e, &self.env, self.now);
        } else {
            conn.received.extend_from_slice(ex.out());
            ex.handle_request_sent(self.now);
        }
    }

    fn read_response_head(&mut self, ex: &mut Exchange, read_first: bool, max: Option<usize>) {
        if read_first {
            let conn = self.up.as_mut().expect("connected");
            let host = if self.sim == Sim::Forward {
                format!("h{}.test", conn.server)
            } else {
                "sim".to_string()
            };
            respond(
                self.c,
                conn,
                self.strict,
                &host,
                self.sim,
                &mut self.servers,
            );
            if !conn.pending.is_empty() {
                let mut k = piece(self.c, conn.pending.len());
                if let (Some(m), true) = (max, self.ubuf.is_empty()) {
                    k = k.min(m);
                }
                self.ubuf.extend(conn.pending.drain(..k));
            } else if conn.eof {
                let e = if self.ubuf.is_empty() {
                    UpstreamError::ClosedEarly
                } else {
                    UpstreamError::Truncated
                };
                return ex.handle_upstream_error(e, &self.env, self.now);
            } else {
                return self.time_out(ex);
            }
        }
        let n = ex.handle_upstream_input(&self.ubuf, &self.env, self.now);
        self.ubuf.drain(..n);
    }

    /// The response body from the upstream: relayed to the client (`relay`), or fetched whole
    /// into the cache's tee first.
    fn response_body(&mut self, ex: &mut Exchange, mut plan: BodyPlan, relay: bool) {
        let conn = self.up.as_mut().expect("connected");
        let mut src = std::mem::take(&mut conn.pending);
        let eof = conn.eof;
        let mut spos = 0;
        let mut stages = std::mem::take(&mut plan.stages);
        let stage = stages.as_stage();
        let feed = Feed {
            src: &src,
            pos: &mut spos,
            stall: !eof,
        };
        let sink = relay.then_some(&mut self.to_client);
        let r = body(self.c, &mut plan, &mut self.ubuf, feed, sink, stage);
        src.drain(..spos);
        self.up.as_mut().expect("connected").pending = src;
        let leftover = self.ubuf.len();
        if relay {
            ex.handle_response_body(r, leftover, stages, &self.env, self.now);
        } else {
            ex.handle_body_fetched(r, leftover, stages, &self.env, self.now);
        }
    }

    fn release(&mut self, to: UpstreamKey, then: Reuse) {
        let server = server_of(to);
        let mut conn = self.up.take().expect("released connection");
        let pool = then == Reuse::Pool;
        assert_ne!(
            then,
            Reuse::Pin,
            "no connection-bound login in the simulation"
        );
        assert_eq!(conn.server, server);
        assert!(!pool || self.ubuf.is_empty(), "pooled with unread bytes");
        if then == Reuse::Distrust {
            self.servers.pool[server].clear();
        }
        if pool {
            conn.answered = false;
            self.servers.pool[server].push(conn);
        }
        self.ubuf.clear();
    }

    /// What io does when an exchange ends; every claim on a fetch was given back (`EndFill`)
    /// before it.
    fn finish(&mut self) {
        if let Some(s) = self.in_flight.take() {
            self.group.done(s);
        }
        for k in 0..3 {
            let key = format!("~app\0http://sim/app/c{k}").into_bytes();
            assert!(
                !self.shard.borrow().table().filling(&key) || self.foreign.as_ref() == Some(&key),
                "an exchange ended holding the fetch of c{k}"
            );
        }
        if let Some(key) = self.foreign.take() {
            self.shard.borrow().table().end_fill(&key);
        }
        self.up = None;
        self.ubuf.clear();
    }
}

/// How many of `left` bytes the next read delivers.
fn piece(c: &mut dyn Choices, left: usize) -> usize {
    let k = match c.below(4) {
        0 => 1 + c.below(8) as usize,
        1 => 1 + c.below(200) as usize,
        _ => 1 + c.below(20_000) as usize,
    };
    k.min(left)
}

fn deadline(ex: &Exchange) -> Instant {
    ex.deadline().expect("every wait on a peer has a deadline")
}

/// Moves a body as io would: decode with the plan's transcoder, reading random pieces of
/// `src` after what `buf` holds. `stall`: the source sends nothing more after `src` (a
/// timeout), else it closes.
/// Where a simulated body comes from: `src` from `pos` on, then a stall (`stall`) or the end.
struct Feed<'a> {
    src: &'a [u8],
    pos: &'a mut usize,
    stall: bool,
}

fn body(
    c: &mut dyn Choices,
    plan: &mut BodyPlan,
    buf: &mut Vec<u8>,
    feed: Feed<'_>,
    mut sink: Option<&mut Vec<u8>>,
    mut stage: Option<&mut dyn crate::http::body::Stage>,
) -> Result<u64, BodyFail> {
    let Feed {
        src,
        pos: spos,
        stall,
    } = feed;
    // Only what this relay moves counts (part of the body may have gone with the head).
    let before = plan.body.total();
    let mut out = Vec::new();
    let mut tmp = Vec::new();
    loop {
        out.clear();
        let (consumed, pass) = match stage.as_deref_mut() {
            None => {
                let s = plan.body.step(buf, &mut out).map_err(BodyFail::Source)?;
                (s.consumed, s.pass)
            }
            Some(st) => {
                let n = plan
                    .body
                    .step_through(buf, st, &mut tmp, &mut out)
                    .map_err(BodyFail::Source)?;
                (n, 0..0)
            }
        };
        if let Some(sink) = sink.as_deref_mut() {
            sink.extend_from_slice(&buf[pass]);
            sink.extend_from_slice(&out);
        }
        buf.drain(..consumed);
        if plan.body.is_done() {
            return Ok(plan.body.total() - before);
        }
        if *spos == src.len() {
            if stall {
                return Err(BodyFail::SourceTimeout);
            }
            out.clear();
            match stage.as_deref_mut() {
                None => plan.body.finish_at_eof(&mut out),
                Some(st) => plan.body.finish_at_eof_through(st, &mut tmp, &mut out),
            }
            .map_err(BodyFail::Source)?;
            if let Some(sink) = sink.as_deref_mut() {
                sink.extend_from_slice(&out);
            }
            return Ok(plan.body.total() - before);
        }
        let k = piece(c, src.len() - *spos).min(plan.body.want());
        buf.extend_from_slice(&src[*spos..*spos + k]);
        *spos += k;
    }
}

/// Appends a random request with id `id` to `out`.
fn request(c: &mut dyn Choices, id: usize, last: bool, sim: Sim, out: &mut Vec<u8>) -> Spec {
    let forward = sim == Sim::Forward;
    let close = if last && c.chance(50) {
        "Connection: close\r\n"
    } else {
        ""
    };
    let (kind, method) = match c.below(100) {
        0..=44 => (Kind::App, Method::Get),
        45..=49 => (Kind::App, Method::Head),
        50..=64 => (Kind::App, Method::Post),
        65..=72 => (Kind::App, Method::Put),
        73..=82 => (Kind::Fixed, Method::Get),
        83..=90 => (Kind::Nothing, Method::Get),
        _ => (Kind::Invalid, Method::Post),
    };
    // A forward proxy has no routes: everything goes to a destination.
    let kind = match kind {
        Kind::Fixed | Kind::Nothing if forward => Kind::App,
        k => k,
    };
    // The cached simulation's requests share three targets.
    let shared = c.below(3);
    let (path, target) = match kind {
        Kind::App | Kind::Invalid if forward => (
            format!("http://h{}.test/app/./x/../{id}", c.below(4)),
            format!("/app/./x/../{id}"),
        ),
        Kind::App | Kind::Invalid if sim == Sim::Cached => {
            (format!("/app/./x/../c{shared}"), format!("/app/c{shared}"))
        }
        Kind::App | Kind::Invalid => (format!("/app/./x/../{id}"), format!("/app/{id}")),
        Kind::Fixed => ("/fixed".to_string(), String::new()),
        Kind::Nothing => (format!("/nothing/{id}"), String::new()),
    };
    let mut extra = String::new();
    let mut vary = 0;
    if sim == Sim::Cached {
        if c.chance(50) {
            vary = 1 + c.below(2) as u8;
            extra.push_str(&format!("X-V: {vary}\r\n"));
        }
        if c.chance(10) {
            extra.push_str("Cache-Control: no-cache\r\n");
        }
    }
    let name = match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        _ => "PUT",
    };
    out.extend_from_slice(
        format!("{name} {path} HTTP/1.1\r\nHost: sim\r\nX-Id: {id}\r\n{extra}{close}").as_bytes(),
    );
    match (kind, method) {
        (Kind::Invalid, _) => {
            out.extend_from_slice(
                b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            );
        }
        (_, Method::Post | Method::Put) => request_body(c, id, out),
        _ => out.extend_from_slice(b"\r\n"),
    }
    Spec {
        id,
        kind,
        method,
        target,
        vary,
    }
}

/// A request body for request `id`: with a length (and sometimes `Expect: 100-continue`) or
/// chunked, after the head's last field.
fn request_body(c: &mut dyn Choices, id: usize, out: &mut Vec<u8>) {
    let n = c.below(30_000) as usize;
    let data = pattern(id, n);
    if c.chance(30) {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        let mut chunked = Vec::new();
        push_chunked(&mut chunked, &data, 1 + c.below(5000) as usize);
        out.extend_from_slice(&chunked);
    } else {
        let expect = if c.chance(20) {
            "Expect: 100-continue\r\n"
        } else {
            ""
        };
        out.extend_from_slice(format!("Content-Length: {n}\r\n{expect}\r\n").as_bytes());
        out.extend_from_slice(&data);
    }
}

fn pattern(id: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + ((i + id) % 26) as u8).collect()
}

/// The server's side: once the request on `conn` is complete, decide how to answer it.
fn respond(
    c: &mut dyn Choices,
    conn: &mut UpConn,
    strict: bool,
    host: &str,
    sim: Sim,
    servers: &mut Servers,
) {
    if conn.answered {
        return;
    }
    conn.answered = true;
    if conn.stale {
        // Closed by the server while it sat in the pool.
        conn.eof = true;
        return;
    }
    let (id, head_only, validator) = received(&conn.received, strict, host, servers);
    conn.received.clear();
    *servers.seen.entry(id).or_default() += 1;
    if let (Some(stored), true) = (validator, c.chance(60)) {
        let p = &mut conn.pending;
        p.extend_from_slice(
            format!("HTTP/1.1 304 Not Modified\r\nETag: \"e{stored}\"\r\nCache-Control: max-age=0\r\n\r\n").as_bytes(),
        );
        return;
    }
    let (cache_fields, said) = cache_fields(c, sim, id);
    servers.said.insert(id, said);
    answer(c, conn, id, head_only, &cache_fields, &mut servers.sent);
}

/// What a server checks of the request it got: valid, with its body whole and nothing after
/// it, and (with generated requests) the `Host`, target and body it should have. Returns its
/// id, whether it is a `HEAD`, and the stored response it revalidates, if any.
fn received(
    req: &[u8],
    strict: bool,
    host: &str,
    servers: &Servers,
) -> (usize, bool, Option<usize>) {
    // Nothing malformed ever reaches an upstream: the strict parser accepts what it got.
    let mut hs = Vec::new();
    let head =
        parse_request(req, &mut hs, &Limits::default()).expect("the upstream gets a valid head");
    let info = request_info(req, &head, &hs).expect("the upstream gets valid framing");
    let id: Option<usize> = crate::http::find_header(req, &hs, b"x-id")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    // The body arrived whole, and nothing after it.
    let mut t = Transcoder::new(info.body, BodyKind::Close);
    let mut data = Vec::new();
    let s = t
        .step(&req[head.len..], &mut data)
        .expect("valid body framing upstream");
    data.extend_from_slice(&req[head.len..][s.pass.clone()]);
    if !t.is_done() {
        t.finish_at_eof(&mut data).expect("the body arrives whole");
    }
    assert_eq!(
        head.len + s.consumed,
        req.len(),
        "nothing after the request"
    );
    let id = if strict {
        let id = id.expect("X-Id is forwarded");
        assert_eq!(
            crate::http::find_header(req, &hs, b"host"),
            Some(host.as_bytes()),
            "the Host header is forwarded (a forward proxy's: the URI's authority)"
        );
        // A reverse proxy sends the normalised path; a forward proxy the one the client sent
        // (RFC 9110 §7.7).
        let sent = &servers.targets[&id].0;
        assert_eq!(
            head.target.get(req),
            sent.as_bytes(),
            "the upstream gets the path it should"
        );
        assert_eq!(data, pattern(id, data.len()), "the body arrives intact");
        id
    } else {
        id.unwrap_or(usize::MAX)
    };
    // A revalidation of a stored response (sometimes still valid).
    let validator = crate::http::find_header(req, &hs, b"if-none-match").and_then(|v| {
        std::str::from_utf8(v)
            .ok()?
            .strip_prefix("\"e")?
            .strip_suffix('"')?
            .parse::<usize>()
            .ok()
    });
    (id, head.method == Method::Head, validator)
}

/// What a response tells caches (the cached simulation's).
fn cache_fields(c: &mut dyn Choices, sim: Sim, id: usize) -> (String, Said) {
    let mut said = Said::default();
    let fields = if sim == Sim::Cached {
        match c.below(6) {
            0 => String::new(),
            1 => "Cache-Control: max-age=60\r\n".to_string(),
            2 => {
                said.vary = true;
                "Cache-Control: max-age=60\r\nVary: X-V\r\n".to_string()
            }
            3 => format!("Cache-Control: max-age=0\r\nETag: \"e{id}\"\r\n"),
            4 => {
                said.no_store = true;
                "Cache-Control: max-age=60, no-store\r\n".to_string()
            }
            _ => {
                said.cookie = true;
                format!("Cache-Control: max-age=60\r\nSet-Cookie: s={id}\r\n")
            }
        }
    } else {
        String::new()
    };
    (fields, said)
}

/// The server's answer to request `id`, in one of the shapes servers give.
fn answer(
    c: &mut dyn Choices,
    conn: &mut UpConn,
    id: usize,
    head_only: bool,
    cache_fields: &str,
    sent: &mut HashMap<usize, usize>,
) {
    let n = c.below(20_000) as usize;
    let body = answer_body(id, n);
    let payload: &[u8] = if head_only { b"" } else { &body };
    let p = &mut conn.pending;
    let ok = format!("HTTP/1.1 200 OK\r\nX-Id: {id}\r\n{cache_fields}Content-Length: {n}\r\n\r\n");
    let whole = |p: &mut Vec<u8>| {
        p.extend_from_slice(ok.as_bytes());
        p.extend_from_slice(payload);
    };
    // What the client gets of it when it goes out whole.
    let got = if head_only { 0 } else { n };
    match c.below(100) {
        0..=54 => {
            whole(p);
            sent.insert(id, n);
        }
        55..=62 => {
            let chunked = format!(
                "HTTP/1.1 200 OK\r\nX-Id: {id}\r\n{cache_fields}Transfer-Encoding: chunked\r\n\r\n"
            );
            p.extend_from_slice(chunked.as_bytes());
            if !head_only {
                push_chunked(p, &body, 1 + c.below(3000) as usize);
            }
            sent.insert(id, got);
        }
        63..=66 => {
            // Close-delimited.
            let head = format!("HTTP/1.1 200 OK\r\nX-Id: {id}\r\nConnection: close\r\n\r\n");
            p.extend_from_slice(head.as_bytes());
            p.extend_from_slice(payload);
            conn.eof = true;
            sent.insert(id, got);
        }
        67..=71 => {
            p.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n");
            whole(p);
            sent.insert(id, n);
        }
        roll => {
            let r = Response {
                id,
                n,
                ok: &ok,
                body: &body,
                head_only,
            };
            trouble(roll, conn, r, sent);
        }
    }
}

/// A response a server gives, for the shapes that go wrong.
struct Response<'a> {
    id: usize,
    n: usize,
    /// Its head when it is a `200` with a length.
    ok: &'a str,
    body: &'a [u8],
    head_only: bool,
}

/// The shapes of trouble (`roll` from 72 up): a 503, a close, contradictory framing, a stray
/// response after this one, a stall, a truncated body, a close after the body.
fn trouble(roll: u32, conn: &mut UpConn, r: Response<'_>, sent: &mut HashMap<usize, usize>) {
    let Response {
        id,
        n,
        ok,
        body,
        head_only,
    } = r;
    let payload: &[u8] = if head_only { b"" } else { body };
    let p = &mut conn.pending;
    match roll {
        72..=77 => {
            let busy = format!(
                "HTTP/1.1 503 Service Unavailable\r\nX-Id: {id}\r\nContent-Length: 4\r\n\r\n"
            );
            p.extend_from_slice(busy.as_bytes());
            if !head_only {
                p.extend_from_slice(b"busy");
            }
        }
        78..=80 => conn.eof = true,
        81..=82 => p.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        ),
        83..=86 => {
            // A stray response after this one.
            p.extend_from_slice(ok.as_bytes());
            p.extend_from_slice(payload);
            p.extend_from_slice(b"HTTP/1.1 200 OK\r\nX-Id: stray\r\nContent-Length: 0\r\n\r\n");
            sent.insert(id, n);
        }
        87..=89 => conn.stalled = true,
        90..=92 => {
            // Truncated body.
            p.extend_from_slice(ok.as_bytes());
            if !head_only && n > 1 {
                p.extend_from_slice(&body[..n / 2]);
                conn.eof = true;
            } else {
                p.extend_from_slice(payload);
            }
            sent.insert(id, n);
        }
        _ => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nX-Id: {id}\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
            );
            p.extend_from_slice(head.as_bytes());
            p.extend_from_slice(payload);
            conn.eof = true;
            sent.insert(id, n);
        }
    }
}

/// `data` in chunks of `size`, and the last chunk.
fn push_chunked(p: &mut Vec<u8>, data: &[u8], size: usize) {
    for part in data.chunks(size) {
        p.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        p.extend_from_slice(part);
        p.extend_from_slice(b"\r\n");
    }
    p.extend_from_slice(b"0\r\n\r\n");
}

fn answer_body(id: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| b'A' + ((i * 7 + id) % 26) as u8).collect()
}

/// One response as the client reads it.
struct Answer {
    close_delimited: bool,
    status: u16,
    id: Option<usize>,
    body: Vec<u8>,
    /// It carried `Age` (a stored response).
    aged: bool,
    cookie: Option<Vec<u8>>,
}

/// Splits what the client received into final responses (skipping interim ones).
fn answers(bytes: &[u8], methods: &mut dyn Iterator<Item = Method>) -> (Vec<Answer>, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    let limits = Limits {
        max_head: 64 * 1024,
        max_target: 64 * 1024,
        max_headers: 100,
    };
    while pos < bytes.len() {
        let Some(method) = methods.next() else {
            panic!(
                "more responses than requests: {:?}",
                String::from_utf8_lossy(&bytes[pos..])
            );
        };
        loop {
            let mut hs = Vec::new();
            let mut scanner = HeadScanner::new();
            let end = match scanner.scan(&bytes[pos..], &limits) {
                Ok(Scan::Complete(n)) => n,
                other => panic!(
                    "a truncated response head ({other:?}): {:?}",
                    String::from_utf8_lossy(&bytes[pos..])
                ),
            };
            let b = &bytes[pos..pos + end];
            let head = parse_response(b, &mut hs, &limits).expect("the client gets valid heads");
            let info = response_info(b, &head, &hs, method).expect("the client gets valid framing");
            pos += end;
            if (100..200).contains(&head.status) {
                assert!(info.body.is_empty());
                continue;
            }
            if info.body == BodyKind::Close {
                // Only for HTTP/1.0 clients, and the connection ends with it.
                out.push(Answer {
                    close_delimited: true,
                    status: head.status,
                    id: None,
                    body: bytes[pos..].to_vec(),
                    aged: false,
                    cookie: None,
                });
                return (out, true);
            }
            let id = crate::http::find_header(b, &hs, b"x-id")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
            let mut t = Transcoder::new(info.body, BodyKind::Close);
            let mut data = Vec::new();
            let s = match t.step(&bytes[pos..], &mut data) {
                Ok(s) => s,
                Err(e) => panic!("the client gets valid body framing: {e}"),
            };
            data.extend_from_slice(&bytes[pos..][s.pass.clone()]);
            pos += s.consumed;
            let whole = t.is_done();
            out.push(Answer {
                close_delimited: false,
                status: head.status,
                id,
                body: data,
                aged: crate::http::find_header(b, &hs, b"age").is_some(),
                cookie: crate::http::find_header(b, &hs, b"set-cookie").map(<[u8]>::to_vec),
            });
            if !whole {
                // Cut short: the proxy closed the connection (the upstream failed mid-body).
                assert_eq!(pos, bytes.len());
                return (out, false);
            }
            break;
        }
    }
    (out, true)
}

/// Each exchange's record says what its client saw: the status, the body bytes, and whether
/// something failed.
fn check_records(got: &[Answer], whole: bool, records: &[EndRecord]) {
    assert_eq!(got.len(), records.len(), "one record per answer");
    for (i, (a, r)) in got.iter().zip(records).enumerate() {
        assert_eq!(
            r.status, a.status,
            "the record's status is the one the client got"
        );
        let complete = whole || i + 1 < got.len();
        if complete {
            assert_eq!(
                r.response_body,
                a.body.len() as u64,
                "the record counts the body the client got ({} {:?})",
                a.status,
                r.error
            );
        } else {
            assert!(
                matches!(r.error, Some(Error::ResponseBody(_))),
                "an answer cut short is recorded as failed: {:?}",
                r.error
            );
        }
        match a.status {
            // The proxy's own error answers (the upstream's carry their request's id).
            500..=599 | 400 if a.id.is_none() => {
                assert!(r.error.is_some(), "a {} without its cause", a.status)
            }
            200 if complete => assert!(r.error.is_none(), "a complete 200 with {:?}", r.error),
            _ => {}
        }
    }
}

fn check_answers(specs: &[Spec], to_client: &[u8], servers: &Servers, records: &[EndRecord]) {
    let (got, whole) = answers(to_client, &mut specs.iter().map(|s| s.method));
    check_records(&got, whole, records);
    assert!(
        got.iter().all(|a| !a.close_delimited),
        "an HTTP/1.1 client never gets a close-delimited body"
    );
    for (i, (spec, a)) in specs.iter().zip(&got).enumerate() {
        let last = i + 1 == got.len();
        match spec.kind {
            Kind::Fixed => {
                assert_eq!(a.status, 200);
                assert_eq!(a.body, b"fixed");
            }
            Kind::Nothing => assert_eq!(a.status, 404),
            Kind::Invalid => {
                assert_eq!(a.status, 400);
                assert!(last, "nothing is answered after a refused request");
            }
            Kind::App => match a.status {
                200 => {
                    // Another request's response only when it was stored (see check_cache).
                    let from = a.id.expect("a 200 names its request");
                    assert!(
                        from == spec.id || a.aged,
                        "request {} got another's response",
                        spec.id
                    );
                    let n = servers.sent[&from];
                    let spec = &Spec {
                        id: from,
                        ..spec.clone()
                    };
                    if spec.method == Method::Head {
                        assert!(a.body.is_empty());
                    } else if whole || !last {
                        assert_eq!(a.body, answer_body(spec.id, n));
                    } else {
                        assert!(answer_body(spec.id, n).starts_with(&a.body));
                    }
                }
                503 => assert!(a.id.is_none() || a.id == Some(spec.id)),
                502 | 504 => assert_eq!(a.id, None),
                s => panic!("request {}: unexpected status {s}", spec.id),
            },
        }
    }
    let refused = specs.iter().find(|s| s.kind == Kind::Invalid).map(|s| s.id);
    for spec in specs {
        let n = servers.seen.get(&spec.id).copied().unwrap_or(0);
        if refused.is_some_and(|r| spec.id > r) {
            assert_eq!(
                n, 0,
                "request {} was forwarded after a refused one",
                spec.id
            );
            assert!(
                spec.id >= got.len(),
                "request {} was answered after a refused one",
                spec.id
            );
        }
        match spec.kind {
            Kind::App if !spec.method.is_idempotent() => {
                assert!(n <= 1, "a {:?} was sent upstream {n} times", spec.method)
            }
            Kind::App => {}
            _ => assert_eq!(n, 0, "request {} should not reach an upstream", spec.id),
        }
    }
}

/// The cache's invariants: what was served from the store was stored for that target (and
/// `X-V`, when it varies), after no successful unsafe request to it, and never a response that
/// said `no-store` or set a cookie; the record says which answers were hits.
fn check_cache(specs: &[Spec], to_client: &[u8], servers: &Servers, records: &[EndRecord]) {
    let (got, _) = answers(to_client, &mut specs.iter().map(|s| s.method));
    for (i, (spec, a)) in specs.iter().zip(&got).enumerate() {
        if spec.kind != Kind::App || a.status != 200 {
            continue;
        }
        let from = a.id.expect("a 200 names its request");
        let stored = &specs[from];
        if from != spec.id {
            assert!(from < spec.id, "served a response from the future");
            assert_eq!(
                stored.target, spec.target,
                "served another target's response"
            );
            let said = servers.said[&from];
            assert!(!said.no_store, "served a no-store response");
            assert!(!said.cookie, "served a response that set a cookie");
            if said.vary {
                assert_eq!(stored.vary, spec.vary, "served a response varying on X-V");
            }
            assert!(a.cookie.is_none(), "a stored response carries a cookie");
            // An unsafe request to the target that succeeded in between invalidated it.
            for (other, b) in specs.iter().zip(&got).take(spec.id).skip(from + 1) {
                let unsafe_ok = !other.method.is_idempotent()
                    && other.kind == Kind::App
                    && other.target == spec.target
                    && b.status < 400
                    && b.id == Some(other.id);
                assert!(
                    !unsafe_ok,
                    "served {from} after {} changed the target",
                    other.id
                );
            }
        }
        if records[i].cache_hit {
            assert!(a.aged, "a hit carries its Age");
        }
    }
}

/// With raw client bytes only the shape is checked: whatever the client sent, it gets
/// well-formed responses.
fn check_well_formed(to_client: &[u8], methods: &[Method], records: &[EndRecord]) {
    let (got, whole) = answers(to_client, &mut methods.iter().copied());
    assert!(got.len() <= methods.len());
    check_records(&got, whole, records);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_of_random_connections_keep_every_invariant() {
        for seed in 0..3000u64 {
            let mut rng = Rng(seed);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_connection(&mut rng, None)
            }));
            if r.is_err() {
                panic!(
                    "simulation seed {seed} failed (rerun: run_connection(&mut Rng({seed}), None))"
                );
            }
        }
    }

    #[test]
    fn the_cache_keeps_every_invariant_too() {
        for seed in 0..2000u64 {
            let mut rng = Rng(seed);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_cached_connection(&mut rng, None)
            }));
            if r.is_err() {
                panic!("cached simulation seed {seed} failed (rerun: run_cached_connection(&mut Rng({seed}), None))");
            }
        }
    }

    #[test]
    fn the_forward_proxy_keeps_every_invariant_too() {
        for seed in 0..2000u64 {
            let mut rng = Rng(seed);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_forward_connection(&mut rng, None)
            }));
            if r.is_err() {
                panic!("forward simulation seed {seed} failed (rerun: run_forward_connection(&mut Rng({seed}), None))");
            }
        }
    }

    #[test]
    fn raw_client_bytes_get_well_formed_answers() {
        let inputs: [&[u8]; 6] = [
            b"GET /app/1 HTTP/1.1\r\nHost: sim\r\nX-Id: 1\r\n\r\nGET /fixed HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"POST /app/2 HTTP/1.1\r\nHost: sim\r\nX-Id: 2\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET /fixed HTTP/1.0\r\n\r\n",
            b"\r\n\r\nGET /fixed HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab",
            b"",
        ];
        for (i, input) in inputs.iter().enumerate() {
            for seed in 0..50 {
                run_connection(&mut Rng(seed * 31 + i as u64), Some(input));
            }
        }
        let forward: [&[u8]; 4] = [
            b"CONNECT h1.test:443 HTTP/1.1\r\nHost: h1.test:443\r\n\r\n\x16\x03\x01garbage",
            b"GET http://h2.test/app/1 HTTP/1.1\r\nHost: x\r\nX-Id: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"CONNECT h1.test:22 HTTP/1.1\r\n\r\n",
            b"GET https://h0.test/ HTTP/1.1\r\n\r\n",
        ];
        for (i, input) in forward.iter().enumerate() {
            for seed in 0..50 {
                run_forward_connection(&mut Rng(seed * 37 + i as u64), Some(input));
            }
        }
    }
}
