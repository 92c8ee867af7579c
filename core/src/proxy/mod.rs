//! One exchange (a request and its response) as a state machine, sans IO.
//!
//! io owns the sockets and buffers and runs a loop: `poll_action`, carry the action out, report
//! what happened with the matching `handle_*` call, repeat, until [`Action::Finish`]. Everything
//! a client or a server can observe is decided here, with the time passed in: the status of every
//! answer the proxy makes itself, routing, which server and whether to retry, what goes upstream,
//! interim responses, re-framing, keep-alive and the `Connection` header, whether an upstream
//! connection may be reused, and which timer bounds each wait. Each exchange ends in one
//! [`EndRecord`].
//!
//! One `Exchange` value serves all the requests of a client connection in turn ([`Exchange::begin`]
//! starts the next), so its buffers (the heads it writes, the header tables) are allocated once.

mod action;
mod attempts;
mod authn;
mod dispatch;
mod edits;
mod error;
mod forwarded;
mod guard;
mod hints;
mod intent;
mod park;
mod persist;
mod phase;
mod pin;
mod record;
mod request;
mod response;
#[cfg(any(test, feature = "sim"))]
#[doc(hidden)]
pub mod sim;
mod spares;
#[cfg(test)]
mod tests;
mod timer;

pub use crate::cache::CacheRef;
pub use action::{Action, BodyPlan, Close, Finish, Reuse, Stages, Via};

/// Stored bodies up to this size go out in one write with their head (copied); longer ones are
/// written from the store after it.
pub const INLINE_HIT: usize = 16 * 1024;
pub use error::{BodyFail, Error, Fault, UpstreamError};
pub use hints::{SizeHints, HEAD_READ, SPLICE_MIN, SPLICE_MIN_UPLOAD};
pub use park::Parked;
pub use record::{EndRecord, RequestCounts, Requester, Text, Texts, MAX_TEXT};
pub use spares::Spares;
pub use timer::{Timer, Timers};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attempts::{Attempts, Facts, Next, Origin, Report, Stage};
use authn::Authn;
use dispatch::{Dispatch, Local};
use forwarded::well_formed_escapes;
use guard::Limited;
use intent::{At, Dest, Intent};
use persist::Persistence;
use phase::{Conn, Phase, Written};
use request::{max_forwards, trace_echo, Expect, Parsed, Request, Resend, Upgrade};
use response::{Asked, Final, Passage, ResponsePlan, Seen, Upstream, UpstreamConn};

use crate::balance::request_key;
use crate::cache::step::{self, Ctx, Lookup, Rules, Served};
use crate::cache::{CacheStep, Entry, Tee};
use crate::compress::{self, Encoder};
use crate::config::{Config, Listen, Protocol, Timeouts};
use crate::forward::admit::{admit, admit_addresses, Denial, Settings, Verdict};
use crate::health::Outcome;
use crate::http::answer::CacheStatus;
use crate::http::answer::{self, Answer, Content};
use crate::http::body::{check_chunked_prefix, BodyError, Transcoder};
use crate::http::date::DateLine;
use crate::http::framing::{request_info, response_info, BodyKind, InterimBudget};
use crate::http::path::normalise;
use crate::http::rewrite::{
    client_response, upstream_request, ConnectionHeader, Forwarding, ForwardingPolicy, HeadEdits,
};
use crate::http::{
    parse_request, parse_response, HeadScanner, Header, Limits, Method, ResponseHead, Scan,
    TargetForm, Version,
};
use crate::upstream::{Tried, UpstreamKey};

/// Bodies up to this size that arrived in the same read as their head go out in one write with
/// the head: one send instead of two, as nginx does with writev.
pub const INLINE_BODY: u64 = 8 * 1024;

/// The interim response io writes for `Expect: 100-continue`.
pub use crate::http::answer::CONTINUE;

/// Where the `Date` line comes from: io's clock, or a fixed line in tests.
pub trait DateSource {
    fn date_line(&self) -> DateLine;
}

impl DateSource for DateLine {
    fn date_line(&self) -> DateLine {
        *self
    }
}

/// What an exchange reads from its surroundings at the moment of a decision.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub cfg: &'a Config,
    /// The `Date` line for the response heads the proxy writes, asked for only when one is
    /// written (so io reads its clock then, not on every call).
    pub date: &'a dyn DateSource,
    /// The worker is shutting down: no connection is kept alive.
    pub draining: bool,
    /// The worker's memory of proxy credentials (for forward listeners with `auth_file`).
    pub auth: Option<&'a std::cell::RefCell<crate::forward::auth::AuthCache>>,
    /// The worker's cache shard, when `[cache]` is configured.
    pub cache: Option<CacheRef<'a>>,
    /// The worker's memory of response sizes per route, for this configuration.
    pub hints: Option<&'a std::cell::RefCell<SizeHints>>,
    /// The worker's open compressing streams (none: not counted).
    pub encoders: Option<&'a compress::Streams>,
    /// The worker's request ids (none: requests get none).
    pub ids: Option<&'a crate::reqid::Ids>,
    /// ACME HTTP-01 answers in progress (none: no `[acme]`).
    pub acme: Option<&'a dyn crate::acme::Challenges>,
}

impl<'a> Env<'a> {
    /// An environment with no worker service: no cache, authentication, size hints,
    /// compression count, request ids or ACME; not draining.
    pub fn bare(cfg: &'a Config, date: &'a dyn DateSource) -> Self {
        Env {
            cfg,
            date,
            draining: false,
            auth: None,
            cache: None,
            hints: None,
            encoders: None,
            ids: None,
            acme: None,
        }
    }
}

/// The response head buffer's first capacity (most heads fit; `begin` shrinks a grown one
/// back to it). io gives it back this capacity when a cancelled write took the buffer.
pub const OUT_FIRST: usize = 512;

/// One client connection's exchanges; see the module documentation.
pub struct Exchange {
    /// The listener's address (rules may name it).
    listener: SocketAddr,
    /// The protocol of the listener (HTTP, forward proxy, redirect).
    protocol: Protocol,
    scheme: &'static str,
    /// The connection's peer, and the client of the current request (the peer, or who a
    /// trusted proxy says it relays), as an address and as text.
    client: crate::realip::Client,
    /// Exchanges that ended with the connection kept.
    served: u64,
    phase: Phase,
    scanner: HeadScanner,
    timers: Timers,
    timeouts: Timeouts,
    req: Request,
    /// What the request asks the proxy to do.
    intent: Intent,
    /// The attempts at upstream servers.
    tries: Attempts,
    up: Upstream,
    /// The tunnel idle timeout of the request's config.
    tunnel_idle: Duration,
    /// Side effects (`Record`, `Release`) to hand out before the state's own action.
    effects: std::collections::VecDeque<action::Effect>,
    /// The cache's part of the current request.
    cache: CacheStep,
    /// A stored response being written: its body (this part of it) goes after `out`.
    hit: Option<(Arc<Entry>, Option<compress::Coding>, std::ops::Range<usize>)>,
    record: EndRecord,
    /// Heads (and small bodies) this proxy writes, to the client or the upstream.
    out: Vec<u8>,
    /// The normalised request-target: what routes match and what the upstream gets.
    target: Vec<u8>,
    path_len: usize,
    headers: Vec<Header>,
    uheaders: Vec<Header>,
    /// The most to read for the response head (`SizeHints`), chosen when the request is routed.
    head_read: Option<usize>,
    /// Connection-bound authentication: the upstream connection held for this client alone.
    pin: pin::Pin,
    /// The current request's proxy credentials, while they are checked.
    auth: crate::forward::auth::Check,
    /// The route's rewrite of the target and its response fields, for the current request.
    edits: edits::RouteEdits,
}

impl Exchange {
    /// The exchanges of a connection accepted by `listen` from `client` (the address the
    /// connection came from, or the one a PROXY header names).
    pub fn new(listen: &Listen, client: IpAddr) -> Self {
        Self::with_spares(listen, client, Spares::default())
    }

    /// An exchange with no buffer allocated yet (`with_spares` gives it its buffers).
    fn build(listen: &Listen, client: crate::realip::Client) -> Self {
        Self {
            listener: listen.addr,
            protocol: listen.protocol,
            scheme: listen.scheme(),
            client: crate::realip::Client {
                cert: match listen.client_auth {
                    crate::config::ClientAuth::Off => crate::realip::Certificate::NotAsked,
                    _ => crate::realip::Certificate::None,
                },
                ..client
            },
            served: 0,
            phase: Phase::Head {
                began: false,
                read_first: false,
            },
            scanner: HeadScanner::new(),
            timers: Timers::default(),
            timeouts: Timeouts::default(),
            req: Request::default(),
            intent: Intent::None,
            tries: Attempts::default(),
            up: Upstream::default(),
            effects: std::collections::VecDeque::new(),
            cache: CacheStep::default(),
            hit: None,
            tunnel_idle: Duration::ZERO,
            record: EndRecord::default(),
            out: Vec::new(),
            target: Vec::new(),
            path_len: 0,
            headers: Vec::new(),
            uheaders: Vec::new(),
            head_read: None,
            pin: pin::Pin::default(),
            auth: crate::forward::auth::Check::None,
            edits: edits::RouteEdits::default(),
        }
    }

    /// The client certificate the handshake verified, on a listener with `client_auth`
    /// (called once, before the first request).
    pub fn handle_client_certificate(&mut self, cert: crate::clientcert::ClientCert) {
        if self.client.cert != crate::realip::Certificate::NotAsked {
            self.client.cert = crate::realip::Certificate::Verified(Box::new(cert));
        }
    }

    /// Starts the connection's next exchange: wait for a request head. Bytes of it may already
    /// be buffered (pipelined); io hands them over when it performs `ReadHead`.
    pub fn begin(&mut self, cfg: &Config, now: Instant) {
        self.phase = Phase::Head {
            began: false,
            read_first: false,
        };
        self.scanner.reset();
        self.timers.clear();
        self.timeouts = cfg.timeouts;
        self.tunnel_idle = cfg.forward.tunnel_idle;
        self.req = Request::default();
        self.edits.clear();
        self.intent = Intent::None;
        self.tries = Attempts::default();
        self.up = Upstream::default();
        self.effects.clear();
        self.cache.reset();
        self.hit = None;
        self.auth = crate::forward::auth::Check::None;
        let mut text = std::mem::take(&mut self.record.text);
        text.clear();
        self.record = EndRecord {
            started: Some(now),
            text,
            requester: if self.cache.is_refresh() {
                Requester::Refresh
            } else {
                Requester::Client
            },
            ..EndRecord::default()
        };
        let first = if self.served == 0 {
            Timer::ClientHeader
        } else {
            Timer::KeepAlive
        };
        self.timers.arm(first, &self.timeouts, now);
        self.arm_park(now);
        if self.out.capacity() > 4 * 1024 {
            self.out = Vec::with_capacity(OUT_FIRST);
        }
    }

    /// What io must do next. Each action is handed out once; io performs it and reports back.
    pub fn poll_action(&mut self) -> Action {
        if let Some(e) = self.effects.pop_front() {
            return e.into();
        }
        match self.phase {
            // A connection that has not sent its first request is not idle: a draining worker
            // waits for that request (under the header timeout) and answers it, since the
            // client may have sent it already, racing the drain.
            Phase::Head { began, read_first } => Action::ReadHead {
                idle: !began && self.served > 0,
                read_first,
            },
            Phase::Discard(_) => Action::DiscardBody(Box::new(BodyPlan {
                body: Transcoder::new(self.req.body, BodyKind::None),
                splice: false,
                read_idle: self.timeouts.client_body,
                write_idle: self.timeouts.send,
                whole: self.timeouts.client_body_total,
                stages: Stages::default(),
            })),
            Phase::Write(Written::Continue) => Action::WriteContinue,
            Phase::Write(_) => match &self.hit {
                Some((e, coding, range)) => Action::WriteStored {
                    entry: e.clone(),
                    coding: *coding,
                    range: range.clone(),
                    idle: self.timeouts.send,
                },
                None => Action::WriteClient,
            },
            Phase::Pick => match self.intent {
                Intent::Proxy { group, key } => Action::Pick { group, key },
                _ => Action::Finish(Finish::Close(Close::Now)),
            },
            Phase::Connect(conn) => {
                let to = self.upstream_key();
                self.record.upstream = Some(to);
                // A connection that names its client is that client's alone.
                let proxy = self.tries.proxy.filter(|_| self.intent.group().is_some());
                if proxy.is_some() {
                    self.pin.bind();
                }
                let via = match (self.pin.connect(to), conn, proxy) {
                    (true, _, _) => Via::Pinned,
                    (false, Conn::Pooled, None) => Via::Pooled,
                    (false, _, _) => Via::Fresh,
                };
                Action::Connect {
                    to,
                    via,
                    proxy: proxy.map(|v| (v, self.client.addr)),
                }
            }
            Phase::SendRequest => Action::SendRequest,
            Phase::SendBody => Action::SendBody(Box::new(BodyPlan {
                body: Transcoder::new(self.req.body, self.req.body_out).with_max(self.req.max_body),
                splice: spliceable(self.req.body, self.req.body_out, SPLICE_MIN_UPLOAD),
                read_idle: self.timeouts.client_body,
                write_idle: self.timeouts.upstream_write,
                whole: self.timeouts.client_body_total,
                stages: Stages::default(),
            })),
            Phase::ReadResponse { read_first } => Action::ReadResponseHead {
                read_first,
                max: self.head_read,
            },
            Phase::RelayResponse => self.relay_action(),
            Phase::Resolve => Action::Resolve {
                port: self.intent.dest().map_or(0, |d| d.port),
            },
            Phase::WaitFill => Action::WaitFill,
            Phase::Tarpit | Phase::Delayed => Action::Hold,
            Phase::Buffer { need } => Action::ReadBody {
                need,
                idle: self.timeouts.client_body,
                whole: self.timeouts.client_body_total,
            },
            Phase::Verify => match &self.auth {
                crate::forward::auth::Check::Pending(user, password) => Action::VerifyPassword {
                    user: user.clone(),
                    password: password.clone(),
                },
                _ => Action::Finish(Finish::Close(Close::Now)),
            },
            Phase::Tunnel => Action::Tunnel {
                idle: self.tunnel_idle,
            },
            Phase::Done(f) => Action::Finish(f),
        }
    }

    /// How the response body moves: fetched whole into the cache ahead of the client when the
    /// store has room for it, else relayed (through the cache's tee when it is stored), spliced
    /// when no stage sees the bytes and the body is long enough.
    fn relay_action(&mut self) -> Action {
        let body = match self.up.begun.take() {
            Some(t) => t,
            None => Transcoder::new(self.up.relay, self.up.body_out),
        };
        let (read_idle, write_idle) = (self.timeouts.upstream_read, self.timeouts.send);
        // An encoded body is relayed through the encoder (the cache's tee, before it, keeps
        // the identity bytes), never fetched ahead: the client's copy is not the stored one.
        let encode = self.up.encode.take();
        let replace = self.up.replace.take();
        let fetch = match (&encode, &replace) {
            (None, None) => self.cache.fetch_tee(self.up.relay),
            _ => None,
        };
        if let Some(tee) = fetch {
            return Action::FetchBody(Box::new(BodyPlan {
                body,
                splice: false,
                read_idle,
                write_idle,
                whole: None,
                stages: Stages::new(Some(tee), None, None),
            }));
        }
        let expect = match self.up.relay {
            BodyKind::Length(n) => Some(n),
            _ => None,
        };
        let stages = Stages::new(self.cache.tee(expect), encode, replace);
        Action::RelayResponse(Box::new(BodyPlan {
            body,
            // Spliced by the whole body's length: part of it may have gone out with the head.
            splice: spliceable(self.up.body_in, self.up.body_out, SPLICE_MIN)
                && self.up.relay != BodyKind::None
                && stages.is_empty(),
            read_idle,
            write_idle,
            whole: None,
            stages,
        }))
    }

    /// Waits for the destination's addresses: the whole resolution (every query, retry and
    /// server) is bounded by twice `resolver_timeout` when it is set (a query and its retry
    /// over TCP), else by 30 s, nginx's `resolver_timeout`.
    fn resolve(&mut self, env: &Env<'_>, now: Instant) {
        let d = env
            .cfg
            .forward
            .resolver_timeout
            .map_or(Duration::from_secs(30), |t| t.saturating_mul(2));
        self.phase = Phase::Resolve;
        self.timers.arm_for(Timer::Resolve, d, now);
    }

    /// The check `VerifyPassword` asked for ended (`None`: it could not be checked now). The
    /// request is handled again (io hands the head over once more): as that user when the
    /// password was right, else answered 407 (or 503).
    pub fn handle_verified(&mut self, ok: Option<bool>, env: &Env<'_>, now: Instant) {
        debug_assert_eq!(self.phase, Phase::Verify);
        let when = (now, env.date.date_line().secs());
        authn::verified(ok, &mut self.auth, env.auth, self.client.addr, when);
        self.phase = Phase::Head {
            began: true,
            read_first: false,
        };
        self.scanner.reset();
        self.timers.arm(Timer::ClientHeader, &self.timeouts, now);
    }

    /// Whether responses carry our `Via`: not from an elite forward proxy, which shows neither
    /// itself nor the client, in either direction.
    fn shows_via(&self, env: &Env<'_>) -> bool {
        self.protocol != Protocol::ForwardHttp || env.cfg.forward.anonymity.policy().via
    }

    /// The name `Resolve` asks for.
    pub fn resolve_host(&self) -> &str {
        self.intent.dest().map_or("", |d| &d.host)
    }

    /// The deadline of what io waits on now, if the wait is bounded by a table timer (body
    /// relays bound each read and write by the plan's idle timeouts instead).
    pub fn deadline(&self) -> Option<Instant> {
        let timer = match self.phase {
            Phase::Head { began, .. } if began || self.served == 0 => Timer::ClientHeader,
            Phase::Head { .. } => return self.idle_deadline(),
            Phase::Write(_) => Timer::Send,
            Phase::Connect(_) => Timer::UpstreamConnect,
            Phase::SendRequest => Timer::UpstreamWrite,
            Phase::ReadResponse { .. } => Timer::UpstreamRead,
            Phase::WaitFill => Timer::CacheLock,
            Phase::Resolve => Timer::Resolve,
            Phase::Tarpit => Timer::Tarpit,
            Phase::Delayed => Timer::RateDelay,
            _ => return None,
        };
        self.timers.deadline(timer)
    }

    /// How long io may wait now (zero when the deadline has passed).
    pub fn timeout(&self, now: Instant) -> Duration {
        self.deadline()
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(now))
    }

    /// Bytes to write for `WriteClient` and `SendRequest`.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Servers already tried for this request (for `Pick`).
    pub fn tried(&self) -> &Tried {
        &self.tries.tried
    }

    /// The record of the exchange; complete once `Finish` was handed out.
    pub fn end_record(&self) -> &EndRecord {
        &self.record
    }

    /// The response limits io reads upstream heads with.
    pub fn response_limits(cfg: &Config) -> Limits {
        Limits {
            max_head: cfg.limits.max_response_head,
            max_target: cfg.limits.max_response_head,
            max_headers: cfg.limits.request.max_headers.max(100),
        }
    }

    // ---- the client side -------------------------------------------------------------------

    /// Hands over everything buffered from the client (for `ReadHead`). Returns how many bytes
    /// io must drop from the front of its buffer: the head, and a small body that went
    /// upstream with it; body bytes after that stay for the body relay.
    pub fn handle_input(&mut self, input: &[u8], env: &Env<'_>, now: Instant) -> usize {
        let Phase::Head { began, .. } = self.phase else {
            debug_assert!(false, "handle_input in {:?}", self.phase);
            return 0;
        };
        self.phase = Phase::Head {
            began,
            read_first: true,
        };
        if input.is_empty() {
            return 0;
        }
        let limits = env.cfg.limits.request;
        match self.scanner.scan(input, &limits) {
            Ok(Scan::Complete(end)) => {
                self.record.head_done = Some(now);
                self.timers.clear();
                self.request(input, end, env, now)
            }
            Ok(Scan::Partial) => {
                // Bytes wait in io's buffer: the connection is not quiet.
                self.timers.stop(Timer::Park);
                if !began && self.scanner.started(input) {
                    self.phase = Phase::Head {
                        began: true,
                        read_first: true,
                    };
                    self.record.started = Some(now);
                    self.timers.stop(Timer::KeepAlive);
                    self.timers.arm(Timer::ClientHeader, &self.timeouts, now);
                }
                0
            }
            Err(e) => {
                self.keep_line(input, env);
                self.reject(e.status(), &e.to_string(), env, now);
                0
            }
        }
    }

    /// Keeps the request line as received, for the access log (a 400's line shows what was
    /// sent, whether or not it parses).
    fn keep_line(&mut self, input: &[u8], env: &Env<'_>) {
        if env.cfg.access_log.is_some() {
            let line = input.split(|&b| b == b'\n').next().unwrap_or(input);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.record.text.put(Text::Line, line);
        }
    }

    /// The client closed the connection or reading from it failed.
    pub fn handle_client_closed(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Head { began: false, .. }) {
            self.record.error = Some(Error::ClientGone);
        }
        self.finish(Finish::Close(Close::Now), now);
    }

    /// A write to the client (`WriteClient`, `WriteContinue`) finished; `ok` is false when it
    /// failed or timed out.
    pub fn handle_client_written(&mut self, ok: bool, now: Instant) {
        let Phase::Write(what) = self.phase else {
            debug_assert!(false, "handle_client_written in {:?}", self.phase);
            return;
        };
        self.timers.stop(Timer::Send);
        self.hit = None;
        if !ok {
            self.record.error.get_or_insert(Error::ClientGone);
            self.finish(Finish::Close(Close::Now), now);
            return;
        }
        match what {
            Written::Answer(f) => self.finish(f, now),
            Written::Continue => {
                self.req.expect = Expect::Sent;
                self.phase = Phase::SendBody;
            }
            Written::Interim => self.phase = Phase::ReadResponse { read_first: false },
            Written::ResponseHead => {
                self.phase = Phase::RelayResponse;
            }
            Written::TunnelOpen => {
                self.phase = Phase::Tunnel;
            }
            Written::FetchedBody => {
                self.finish(self.up.then, now);
            }
        }
    }

    /// A request body relay (`DiscardBody`, `SendBody`) ended: `Ok` with the payload bytes moved.
    pub fn handle_request_body(&mut self, r: Result<u64, BodyFail>, env: &Env<'_>, now: Instant) {
        match r {
            Ok(n) => {
                self.record.request_body += n;
                match self.phase {
                    Phase::Discard(then) => self.write_client(Written::Answer(then), now),
                    Phase::SendBody => self.read_response(now),
                    s => debug_assert!(false, "handle_request_body in {s:?}"),
                }
            }
            Err(BodyFail::Destination(e)) => {
                let err = Error::RequestBody(BodyFail::Destination(e));
                self.attempt_failed(Stage::SendBody, err, env, now);
            }
            Err(BodyFail::SourceIo(_) | BodyFail::Source(BodyError::Truncated)) => {
                // The client went away partway through its body: nobody to answer.
                self.record.error = Some(Error::ClientGone);
                self.finish(Finish::Close(Close::Now), now);
            }
            Err(e) => {
                let err = Error::RequestBody(e);
                self.reject(err.status(), &err.to_string(), env, now);
                self.record.error = Some(err);
            }
        }
    }

    /// The deadline of the current wait passed.
    pub fn handle_timeout(&mut self, env: &Env<'_>, now: Instant) {
        match self.phase {
            Phase::Head { began: true, .. } => {
                self.reject(408, "timed out reading the request head", env, now);
                self.record.error = Some(Error::HeadTimeout);
            }
            Phase::Head { .. } if self.park_due(now) => self.park_now(now),
            Phase::Head { .. } => self.finish(Finish::Close(Close::Now), now),
            Phase::Write(_) => self.handle_client_written(false, now),
            Phase::Connect(_) => {
                self.handle_upstream_error(UpstreamError::ConnectTimeout, env, now)
            }
            Phase::SendRequest => self.handle_upstream_error(UpstreamError::WriteTimeout, env, now),
            Phase::ReadResponse { .. } => {
                self.handle_upstream_error(UpstreamError::ReadTimeout, env, now)
            }
            Phase::WaitFill => self.handle_fill_done(env, now),
            Phase::Tarpit => self.finish(Finish::Close(Close::Now), now),
            Phase::Delayed => {
                // The head again, decided this time (its rate already counted).
                self.phase = Phase::Head {
                    began: true,
                    read_first: false,
                };
                self.scanner.reset();
                self.timers.arm(Timer::ClientHeader, &self.timeouts, now);
            }
            Phase::Resolve => {
                let host = self.resolve_host().to_string();
                self.local_error(504, &format!("resolving {host} timed out"), env, now);
                let e = UpstreamError::ConnectFailed(format!("resolving {host} timed out"));
                self.record.error = Some(Error::Upstream(e));
            }
            _ => self.finish(Finish::Close(Close::Now), now),
        }
    }

    /// io found plain HTTP where a TLS handshake was due: answered in plain HTTP (as nginx
    /// does), then closed.
    pub fn handle_plain_on_tls(&mut self, env: &Env<'_>, now: Instant) {
        let detail = "The plain HTTP request was sent to an HTTPS port";
        self.reject(400, detail, env, now);
    }

    // ---- the upstream side -----------------------------------------------------------------

    /// The server chosen for `Pick`, or `None` when no server of the group can take it.
    pub fn handle_pick(&mut self, server: Option<usize>, env: &Env<'_>, now: Instant) {
        let (Some(server), Some(group)) = (server, self.intent.group()) else {
            match self.tries.last.take() {
                Some((err, body_done)) => self.fail(err, body_done, env, now),
                None => self.unavailable(env, now),
            }
            return;
        };
        self.tries.begin(server, &env.cfg.upstreams[group], now);
        self.record.attempts = self.tries.count;
        self.record.upstream = Some(UpstreamKey::Server { group, server });
        self.record.upstream_began = Some(now);
        self.phase = Phase::Connect(Conn::Pooled);
        self.timers.arm(Timer::UpstreamConnect, &self.timeouts, now);
    }

    /// A connection for `Connect` is ready; `reused`: it came from the pool.
    pub fn handle_connected(&mut self, reused: bool, now: Instant) {
        debug_assert!(matches!(self.phase, Phase::Connect(_)));
        self.timers.stop(Timer::UpstreamConnect);
        self.record.upstream_connected = Some(now);
        self.record.upstream_reused = Some(reused);
        self.tries.conn = if reused { Origin::Pooled } else { Origin::New };
        if matches!(self.intent, Intent::Connect(_)) {
            // RFC 9110 §9.3.6: any 2xx means the tunnel is open; no fields.
            let mut open = Answer::new(200, Content::Bodiless, None);
            open.reason = Some("Connection established");
            self.write_answer(&open, ConnectionHeader::Omit, None);
            self.write_client(Written::TunnelOpen, now);
            return;
        }
        self.phase = Phase::SendRequest;
        self.timers.arm(Timer::UpstreamWrite, &self.timeouts, now);
    }

    /// The addresses `Resolve` found for `resolve_host()` (IPv4 and IPv6, in the resolver's
    /// order), or why there are none.
    pub fn handle_resolved(
        &mut self,
        r: Result<Vec<SocketAddr>, String>,
        env: &Env<'_>,
        now: Instant,
    ) {
        debug_assert_eq!(self.phase, Phase::Resolve);
        self.timers.stop(Timer::Resolve);
        let tunnel = matches!(self.intent, Intent::Connect(_));
        let user = self.record.user.as_deref();
        let Some(d) = self.intent.dest() else {
            self.finish(Finish::Close(Close::Now), now);
            return;
        };
        let At::Named { rules_pending } = d.at else {
            self.finish(Finish::Close(Close::Now), now);
            return;
        };
        let ask = d.ask(self.client.addr, user, self.client.cert.subject(), tunnel);
        let addrs = match admit_addresses(
            admission(env.cfg),
            &ask,
            rules_pending,
            r.unwrap_or_default(),
        ) {
            Ok(a) => a,
            Err(denial) => {
                let (detail, logged) = (denial.detail(&ask), denial.logged(&ask));
                self.local_error(denial.status(), &detail, env, now);
                self.record.denied = Some(denial.kind());
                self.record.error = match denial {
                    Denial::Unresolved => {
                        Some(Error::Upstream(UpstreamError::ConnectFailed(detail)))
                    }
                    Denial::Private(_) => Some(Error::BadRequest {
                        status: 403,
                        detail: logged,
                    }),
                    _ => None,
                };
                return;
            }
        };
        let from = env.cfg.forward.outgoing_for(user, addrs[0].ip());
        if let Some(d) = self.intent.dest_mut() {
            d.at = At::Dialling {
                addr: addrs[0],
                from,
                next: addrs[1..].to_vec(),
            };
        }
        self.tries.begin_destination();
        self.record.attempts = 1;
        self.record.upstream_began = Some(now);
        self.phase = Phase::Connect(if tunnel { Conn::Fresh } else { Conn::Pooled });
        self.timers.arm(Timer::UpstreamConnect, &self.timeouts, now);
    }

    /// A tunnel ended: bytes moved client → upstream and back.
    pub fn handle_tunnel_closed(&mut self, up: u64, down: u64, now: Instant) {
        debug_assert_eq!(self.phase, Phase::Tunnel);
        self.record.request_body += up;
        self.record.response_body += down;
        self.finish(Finish::Close(Close::Now), now);
    }

    /// The request head (`SendRequest`) is written.
    pub fn handle_request_sent(&mut self, now: Instant) {
        debug_assert_eq!(self.phase, Phase::SendRequest);
        self.timers.stop(Timer::UpstreamWrite);
        if self.req.body.is_empty() {
            self.read_response(now);
        } else if self.req.expect == Expect::Continue {
            // The client waits for this before sending its body (RFC 9110 §10.1.1).
            self.write_client(Written::Continue, now);
        } else {
            self.phase = Phase::SendBody;
        }
    }

    /// Something failed on the upstream side (connecting, sending the head, reading the
    /// response head).
    pub fn handle_upstream_error(&mut self, e: UpstreamError, env: &Env<'_>, now: Instant) {
        let stage = match self.phase {
            Phase::Connect(_) => Stage::Connect,
            Phase::SendRequest => Stage::SendHead,
            Phase::ReadResponse { .. } => Stage::ReadHead,
            p => {
                debug_assert!(false, "handle_upstream_error in {p:?}");
                self.finish(Finish::Close(Close::Now), now);
                return;
            }
        };
        self.attempt_failed(stage, Error::Upstream(e), env, now);
    }

    /// Hands over everything buffered from the upstream (for `ReadResponseHead`). Returns how
    /// many bytes io must drop from the front of its buffer (a head, and a small body that
    /// goes out with it).
    pub fn handle_upstream_input(&mut self, input: &[u8], env: &Env<'_>, now: Instant) -> usize {
        if !matches!(self.phase, Phase::ReadResponse { .. }) {
            debug_assert!(false, "handle_upstream_input in {:?}", self.phase);
            return 0;
        }
        self.phase = Phase::ReadResponse { read_first: true };
        if input.is_empty() {
            return 0;
        }
        let limits = Self::response_limits(env.cfg);
        match self.scanner.scan(input, &limits) {
            Ok(Scan::Complete(end)) => self.response(input, end, env, now),
            Ok(Scan::Partial) => 0,
            Err(e) => {
                self.handle_upstream_error(UpstreamError::Invalid(e), env, now);
                0
            }
        }
    }

    /// The response body relay ended: `Ok` with the payload bytes moved, and `leftover`, the
    /// bytes read from the upstream past the body's end.
    /// `stages`: the plan's stages, handed back.
    pub fn handle_response_body(
        &mut self,
        r: Result<u64, BodyFail>,
        leftover: usize,
        stages: Stages,
        env: &Env<'_>,
        now: Instant,
    ) {
        debug_assert_eq!(self.phase, Phase::RelayResponse);
        match r {
            Ok(n) => {
                self.record.response_body += stages.rewritten_len().unwrap_or(n);
                if let Some(body) = stages.tee.and_then(Tee::into_body) {
                    if leftover == 0 {
                        let _ = self.store_body(body, env);
                    }
                }
                self.release_upstream(leftover);
                self.finish(self.up.then, now);
            }
            Err(e) => {
                self.end_fill();
                // The head is out: closing is the only way left to say it failed.
                let upstream = !matches!(e, BodyFail::Destination(_));
                let err = Error::ResponseBody(e);
                if upstream {
                    self.log_only(err.clone(), now);
                }
                self.record.error = Some(err);
                self.finish(Finish::Close(Close::Now), now);
            }
        }
    }

    /// Hands the upstream connection back after a response: pooled (or kept for this client)
    /// when it is cleanly framed, persistent and nothing was read past it (`leftover`); bytes
    /// past the framing were not asked for: closed, and keep-alive to the server paused.
    fn release_upstream(&mut self, leftover: usize) {
        let reuse = self.up.conn == UpstreamConn::Reusable;
        let release = self.release(reuse, leftover > 0);
        self.effects.push_back(release);
    }

    /// What becomes of the upstream connection: `reuse` when nothing of it is left unread and
    /// it may carry another request; `overrun` when the server sent more than was asked for.
    fn release(&mut self, reuse: bool, overrun: bool) -> action::Effect {
        let to = self.upstream_key();
        let pin = self.pin.release(to, reuse && !overrun);
        let then = match (overrun, reuse, pin) {
            (true, ..) => Reuse::Distrust,
            (_, false, _) => Reuse::Close,
            (_, true, true) => Reuse::Pin,
            (_, true, false) => Reuse::Pool,
        };
        action::Effect::Release { to, then }
    }

    // ---- the cache -------------------------------------------------------------------------

    /// Looks the request up in the cache under `rules`; true when it was answered (or waits
    /// for another's fetch).
    fn cache_lookup(
        &mut self,
        rules: Rules,
        buf: &[u8],
        body: bool,
        env: &Env<'_>,
        now: Instant,
    ) -> bool {
        let Some(ctx) = cache_ctx(env) else {
            return false;
        };
        let asked = step::Asked {
            method: self.req.method,
            head: buf,
            headers: &self.headers,
            body,
            private_ok: env
                .cfg
                .forward
                .private_destinations
                .private_allowed(self.client.addr),
        };
        match self.cache.lookup(ctx, rules, asked) {
            Lookup::Forward => {
                self.cache.keep_head(buf);
                false
            }
            Lookup::Serve(s) => {
                self.serve_stored(s, env, now);
                true
            }
            Lookup::OnlyIfCached => {
                self.local_error(504, "not in the cache (only-if-cached)", env, now);
                true
            }
            Lookup::Wait(lock) => {
                self.phase = Phase::WaitFill;
                self.timers.arm_for(Timer::CacheLock, lock, now);
                true
            }
        }
    }

    /// Answers with a stored response: `304` when the client's conditions match it, a range,
    /// or the whole response with its `Age`.
    fn serve_stored(&mut self, s: Served, env: &Env<'_>, now: Instant) {
        let e = &s.entry;
        let plan = step::stored_answer(
            e,
            self.cache.request(),
            self.req.method,
            env.date.date_line().secs(),
        );
        // The route's response fields, as on what it relays (a 304 keeps only validators).
        let route = self.record.route.and_then(|i| env.cfg.routes.get(i));
        let relayed = edits::Relayed::new(route.filter(|_| plan.status != 304), None, b"", &[]);
        // A whole body may go out encoded, from the entry's copy in that coding.
        let whole = matches!(plan.content, step::Content::Length(_));
        let enc = self.edits.stored_compression(
            route,
            &env.cfg.compression,
            (plan.status, whole),
            e,
            env.cache.map(|c| c.shard),
        );
        let content = enc.content(&plan.content);
        let id = self.request_id(env.cfg);
        let a = Answer {
            request_id: id.as_ref().map(|(n, v)| (*n, v.as_bytes())),
            encoding: enc.edit,
            edits: Some((relayed.dropped(), relayed.lines(&self.edits))),
            stored: Some((&e.head, plan.keep)),
            fields: self.cache.own_fields(),
            age: Some(plan.age),
            via: self.shows_via(env),
            cache_status: Some(CacheStatus {
                detail: s.detail.unwrap_or("hit"),
                ttl: Some(e.lifetime as i64 - plan.age as i64),
                stored: false,
            }),
            ..Answer::new(plan.status, content, None)
        };
        let p = self.req.persist.unless(env.draining);
        let head_only = self.req.method == Method::Head;
        self.out.clear();
        a.write(p.header(), head_only, &mut self.out);
        self.record.response_body = 0;
        if !head_only {
            if let step::Content::Multipart { body, .. } = &plan.content {
                self.out.extend_from_slice(body);
                self.record.response_body = body.len() as u64;
            }
            match enc.body(e, plan.body.clone()) {
                edits::HitBody::Own(b) => {
                    self.record.response_body = b.len() as u64;
                    self.out.extend_from_slice(&b);
                }
                edits::HitBody::Stored(coding, r) => {
                    self.record.response_body = r.len() as u64;
                    if r.len() <= INLINE_HIT {
                        self.out.extend_from_slice(&e.bytes(coding)[r]);
                    } else {
                        self.hit = Some((e.clone(), coding, r));
                    }
                }
                edits::HitBody::Nothing => {}
            }
        }
        self.record.status = plan.status;
        self.record.response_head = Some(now);
        self.record.cache_hit = s.detail.is_none();
        self.record.cache = Some(s.detail.unwrap_or("hit"));
        self.write_client(Written::Answer(p.finish(true)), now);
    }

    /// The key `WaitFill` waits on.
    pub fn cache_key(&self) -> &[u8] {
        self.cache.key()
    }

    /// The fetch this request waited for ended (or the wait timed out): the request is handled
    /// again, from the cache if the fetch stored something, else from the origin.
    pub fn handle_fill_done(&mut self, env: &Env<'_>, now: Instant) {
        debug_assert_eq!(self.phase, Phase::WaitFill);
        self.timers.stop(Timer::CacheLock);
        let head = self.cache.wait_over();
        self.req = Request::default();
        self.phase = Phase::Head {
            began: true,
            read_first: false,
        };
        self.request(&head, head.len(), env, now);
        self.cache.return_head(head);
    }

    /// This exchange is a background refresh holding the fetch of `key` (claimed by the request
    /// that served the stale response): it does not wait for itself, and gives the claim back
    /// when it ends.
    pub fn own_fill(&mut self, key: Vec<u8>) {
        self.cache.own_fill(key);
    }

    /// Gives this request's claim on fetching its key back, through io (`EndFill`), as soon as
    /// nothing more will be stored.
    fn end_fill(&mut self) {
        if let Some(key) = self.cache.release() {
            self.effects.push_back(action::Effect::EndFill { key });
        }
    }

    /// Stores the response whose body is `body`, as the cache decided: the entry, or the body
    /// back when nothing was stored.
    fn store_body(&mut self, body: Vec<u8>, env: &Env<'_>) -> Result<Arc<Entry>, Vec<u8>> {
        let private_dest = self
            .intent
            .dest()
            .and_then(Dest::addr)
            .is_some_and(|a| crate::forward::is_private(a.ip()));
        let r = match cache_ctx(env) {
            Some(ctx) => self.cache.store(ctx, body, private_dest),
            None => Err(body),
        };
        self.end_fill();
        r
    }

    /// The origin failed: serve the stale stored response if the cache allows it. True when it
    /// was served.
    fn cache_on_failure(&mut self, timeout: bool, env: &Env<'_>, now: Instant) -> bool {
        let served = cache_ctx(env).and_then(|ctx| self.cache.on_failure(ctx, timeout));
        match served {
            Some(s) => {
                self.serve_stored(s, env, now);
                true
            }
            None => false,
        }
    }

    /// The body `FetchBody` read whole from the upstream (the tee of `stages` holds it) ended:
    /// `Ok` with its length, and `leftover`, the bytes read past it. The body is stored and then
    /// written to the client from the store.
    pub fn handle_body_fetched(
        &mut self,
        r: Result<u64, BodyFail>,
        leftover: usize,
        stages: Stages,
        env: &Env<'_>,
        now: Instant,
    ) {
        debug_assert_eq!(self.phase, Phase::RelayResponse);
        let body = match (r, stages.tee.and_then(Tee::into_body)) {
            (Ok(n), Some(body)) if body.len() as u64 == n => body,
            (r, _) => {
                // Nothing of the body reached the client; the head did: closing says it failed.
                let e = match r {
                    Err(e) => e,
                    Ok(_) => BodyFail::Source(BodyError::Truncated),
                };
                let err = Error::ResponseBody(e);
                self.log_only(err.clone(), now);
                self.record.error = Some(err);
                self.finish(Finish::Close(Close::Now), now);
                return;
            }
        };
        self.record.response_body += body.len() as u64;
        let stored = if leftover == 0 {
            self.store_body(body, env)
        } else {
            Err(body)
        };
        self.release_upstream(leftover);
        self.out.clear();
        match stored {
            Ok(e) => {
                let len = e.body.len();
                self.hit = Some((e, None, 0..len));
            }
            Err(body) => self.out = body,
        }
        self.write_client(Written::FetchedBody, now);
    }

    // ---- decisions -------------------------------------------------------------------------

    fn request(&mut self, input: &[u8], end: usize, env: &Env<'_>, now: Instant) -> usize {
        let cfg = env.cfg;
        let buf = &input[..end];
        self.record.head_len = end as u64;
        self.keep_line(buf, env);
        let head = match parse_request(buf, &mut self.headers, &cfg.limits.request) {
            Ok(h) => h,
            Err(e) => {
                self.reject(e.status(), &e.to_string(), env, now);
                return 0;
            }
        };
        if cfg.access_log.is_some() {
            for (t, name) in [
                (Text::Host, &b"host"[..]),
                (Text::Referer, b"referer"),
                (Text::Agent, b"user-agent"),
            ] {
                if let Some(v) = crate::http::find_header(buf, &self.headers, name) {
                    self.record.text.put(t, v);
                }
            }
        }
        self.record.method = Some(head.method);
        self.req.method = head.method;
        self.req.version = head.version;
        self.pin.request(buf, &self.headers);
        // Behind a trusted proxy, the client it relays for (before anything reads the address:
        // rules, limits, balancing, forwarding fields, the log).
        self.record.client = self.client.resolve(&cfg.server.trusted, buf, &self.headers);
        if self.protocol == Protocol::Http {
            self.record.request_id = crate::reqid::for_request(
                &cfg.server,
                env.ids,
                self.client.peer,
                buf,
                &self.headers,
            );
        }
        let info = match request_info(buf, &head, &self.headers) {
            Ok(i) => i,
            Err(e) => {
                self.reject(e.status(), &e.to_string(), env, now);
                return 0;
            }
        };
        // HTTP/1.0 clients of a forward proxy ask to keep the connection with the obsolete
        // `Proxy-Connection: keep-alive` (what Squid honours, and browsers sent).
        let proxy_keep_alive = self.protocol == Protocol::ForwardHttp
            && head.version == Version::Http10
            && !info.connection.close
            && crate::http::find_header(buf, &self.headers, b"proxy-connection")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"keep-alive"));
        self.req.persist = Persistence::of(
            info.connection.persistent(head.version) || proxy_keep_alive,
            head.version,
        );
        // WebSocket (RFC 6455 §4.1): GET, HTTP/1.1, `Connection: upgrade`, `Upgrade:
        // websocket`, tunnelled after the 101 (spliced between plain sockets, copied through
        // TLS on either side). Other upgrades are hop-by-hop fields, dropped.
        let websocket = head.method == Method::Get
            && head.version == Version::Http11
            && info.connection.upgrade
            && crate::http::find_header(buf, &self.headers, b"upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
        self.req.upgrade = if websocket {
            Upgrade::WebSocket
        } else {
            Upgrade::None
        };
        self.req.body = info.body;
        self.req.expect = if info.expect_continue {
            Expect::Continue
        } else {
            Expect::Nothing
        };
        let r = Parsed {
            input,
            end,
            head,
            info,
        };
        // The listener's protocol decides who reads the request.
        match self.protocol {
            Protocol::ForwardHttp => {
                self.head_read = env.hints.and_then(|h| h.borrow().head_read(None));
                self.forward(&r, env, now)
            }
            _ if head.method == Method::Connect => {
                self.reject(405, "CONNECT is not enabled on this listener", env, now);
                0
            }
            _ => self.reverse(&r, env, now),
        }
    }

    /// A request to a reverse-proxy (or redirecting) listener: its target normalised, then
    /// dispatched by its host and path.
    fn reverse(&mut self, r: &Parsed<'_>, env: &Env<'_>, now: Instant) -> usize {
        let cfg = env.cfg;
        let buf = r.buf();
        let host: &[u8] = match r.head.form {
            TargetForm::Absolute { authority, .. } => authority.get(buf),
            _ => r.info.host.map_or(&b""[..], |h| h.get(buf)),
        };
        // Routes match the normalised path, and that is what the upstream gets (path.rs).
        let raw_target = match r.head.form {
            TargetForm::Origin => r.head.target.get(buf),
            TargetForm::Absolute { path, .. } => path.get(buf),
            TargetForm::Authority | TargetForm::Asterisk => b"*",
        };
        if raw_target == b"*" {
            self.target.clear();
            self.target.push(b'*');
            self.path_len = 0;
        } else {
            match normalise(raw_target, &cfg.server.path, &mut self.target) {
                Ok(n) => self.path_len = n,
                Err(e) => {
                    self.reject(e.status(), &e.to_string(), env, now);
                    return 0;
                }
            }
        }
        let path: &[u8] = match self.path_len {
            0 => b"/",
            n => &self.target[..n],
        };
        if let Some(l) = Dispatch::challenge(self.protocol, r.head.method, path, env.acme) {
            return self.local(l, host, r, env, now);
        }
        let (verdict, route) = Dispatch::decide(cfg, self.protocol, host, path);
        self.record.route = route;
        match self.ruled(r, route, env) {
            Some(crate::rules::RuleAction::Deny { status, body }) => {
                let l = Local::Ruled {
                    status: *status,
                    body,
                };
                return self.local(l, host, r, env, now);
            }
            Some(crate::rules::RuleAction::Tarpit(hold)) => {
                self.timers.arm_for(Timer::Tarpit, *hold, now);
                self.phase = Phase::Tarpit;
                return r.end;
            }
            Some(crate::rules::RuleAction::Allow) | None => {}
        }
        if self.head_too_large(r, route, env, now) {
            return 0;
        }
        let max_body = route.and_then(|i| cfg.routes[i].max_body);
        if self.body_too_large(r, max_body.or(cfg.limits.max_request_body), env, now) {
            return 0;
        }
        // Rules and the body limit are decided from the head alone (and again, the same, when
        // it is handed over with its body); the rate limit counts the request once, after.
        if matches!(verdict, Dispatch::Proxy { .. }) && self.buffer_first(r, cfg) {
            return 0;
        }
        match self.rate_limited(r, route, env, now) {
            Some(Limited::Refuse(l)) => return self.local(l, host, r, env, now),
            Some(Limited::Delay) => return 0,
            None => {}
        }
        self.head_read = env.hints.and_then(|h| h.borrow().head_read(route));
        if let (Dispatch::Proxy { .. }, Some(rt)) = (&verdict, route.map(|i| &cfg.routes[i])) {
            // The route's rewrite and response fields, decided once, for a hit as for a miss.
            let vars = edits::vars(
                &self.client.text,
                self.scheme,
                &self.target[..self.path_len],
                r,
                rt,
                self.record.request_id.as_ref(),
            );
            self.edits.prepare(rt, &self.target, &vars, host);
            self.edits
                .negotiate(rt, &env.cfg.compression, r.buf(), &self.headers);
        }
        let (route, group, set_host) = match verdict {
            Dispatch::Answer(l) => return self.local(l, host, r, env, now),
            Dispatch::Proxy {
                route,
                group,
                set_host,
                cached: true,
            } if env.cache.is_some() => (route, group, set_host),
            Dispatch::Proxy {
                group, set_host, ..
            } => return self.proxy(r, group, set_host, env, now),
        };
        crate::cache::policy::key(
            crate::cache::policy::Space::Upstream(&cfg.upstreams[group].name),
            self.scheme,
            host,
            &self.target,
            self.cache.key_mut(),
        );
        let body = !r.info.body.is_empty();
        if self.cache_lookup(Rules::Route(route), buf, body, env, now) {
            return r.end;
        }
        self.proxy(r, group, set_host, env, now)
    }

    /// An answer without an upstream. A request body is read and discarded first so that the
    /// connection can carry on; with `Expect: 100-continue` it is never asked for, and the
    /// connection is closed instead.
    fn local(
        &mut self,
        what: Local<'_>,
        host: &[u8],
        r: &Parsed<'_>,
        env: &Env<'_>,
        now: Instant,
    ) -> usize {
        let (info, end) = (&r.info, r.end);
        // With `Expect: 100-continue` the body is never asked for: the connection closes.
        // Otherwise it is read and discarded after the answer is decided.
        let unread = !info.body.is_empty() && info.expect_continue;
        let discard = !info.body.is_empty() && !info.expect_continue;
        let p = self.req.persist.unless(env.draining || unread);
        let date = env.date.date_line();
        let trace;
        let location;
        let (limited, retry);
        let ruled;
        let a = match &what {
            Local::Fixed(f) => f.answer(&date),
            Local::Error(status, msg) => Answer::page(*status, msg, &date),
            Local::Options => Answer::new(
                200,
                Content::Bytes {
                    content_type: None,
                    body: b"",
                },
                Some(&date),
            )
            .with(b"Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH, CONNECT\r\n"),
            Local::Trace => {
                trace = trace_echo(r.buf());
                Answer::new(
                    200,
                    Content::Bytes {
                        content_type: Some("message/http"),
                        body: &trace,
                    },
                    Some(&date),
                )
            }
            Local::Denied(status, detail) => Answer::page(*status, detail, &date),
            Local::Ruled { status, body } => {
                if body.is_empty() {
                    Answer::page(*status, "refused by a rule", &date)
                } else {
                    ruled = Content::Bytes {
                        content_type: Some("text/plain; charset=utf-8"),
                        body: body.as_bytes(),
                    };
                    Answer::new(*status, ruled, Some(&date))
                }
            }
            Local::Limited {
                status,
                name,
                retry_after,
            } => {
                limited = format!("too many requests (rate limit {name})");
                retry = format!("Retry-After: {retry_after}\r\n");
                Answer::page(*status, &limited, &date).with(retry.as_bytes())
            }
            Local::Redirect => {
                location = answer::https_location(host, env.cfg.https_port(), &self.target);
                Answer::page(301, "moved to https", &date).with(&location)
            }
            Local::Challenge(key_authorization) => Answer::new(
                200,
                Content::Bytes {
                    content_type: Some("text/plain"),
                    body: key_authorization.as_bytes(),
                },
                Some(&date),
            ),
        };
        self.write_answer(&a, p.header(), self.request_id(env.cfg));
        if discard {
            self.phase = Phase::Discard(p.finish(true));
        } else {
            self.write_client(Written::Answer(p.finish(!unread)), now);
        }
        end
    }

    fn proxy(
        &mut self,
        r: &Parsed<'_>,
        group: usize,
        set_host: Option<&[u8]>,
        env: &Env<'_>,
        now: Instant,
    ) -> usize {
        let (input, end, head, info) = (r.input, r.end, &r.head, &r.info);
        let cfg = env.cfg;
        // Chunk framing that arrived with the head is checked before anything is sent
        // upstream, so a request whose first chunk line is bad never reaches it.
        if info.body == BodyKind::Chunked {
            if let Err(e) = check_chunked_prefix(&input[end..]) {
                self.reject(400, &e.to_string(), env, now);
                return 0;
            }
        }
        let u = &cfg.upstreams[group];
        let path: &[u8] = match self.path_len {
            0 => b"/",
            n => &self.target[..n],
        };
        let key = request_key(&u.balance, input, path, &self.headers, &self.client.text);
        self.intent = Intent::Proxy { group, key };
        self.req.body_out = match info.body {
            BodyKind::Close => BodyKind::None,
            b => b,
        };
        let fallback = if info.host.is_none() && set_host.is_none() {
            u.servers[0].addr.to_string()
        } else {
            String::new()
        };
        let id = self.request_id(cfg);
        let fwd = Forwarding {
            policy: ForwardingPolicy::REVERSE,
            client_ip: &self.client.text,
            peer_ip: &self.client.peer_text,
            proto: self.scheme,
            host_override: set_host,
            fallback_host: fallback.as_bytes(),
            upgrade_websocket: self.req.upgrade == Upgrade::WebSocket,
            max_forwards: None,
            revalidate: self.cache.validators(),
            edits: None,
            request_id: id.as_ref().map(|(n, v)| (*n, v.as_bytes())),
            client_cert: &self.client.cert,
        };
        let route = self.record.route.map(|i| &cfg.routes[i]);
        let fwd = match route {
            Some(route) => {
                let vars = edits::vars(
                    &self.client.text,
                    self.scheme,
                    path,
                    r,
                    route,
                    self.record.request_id.as_ref(),
                );
                Forwarding {
                    edits: (!route.request_headers.is_empty())
                        .then_some((&route.request_headers, vars)),
                    ..fwd
                }
            }
            None => fwd,
        };
        self.out.clear();
        upstream_request(
            &input[..end],
            head,
            &self.headers,
            self.edits.target(&self.target),
            self.req.body_out,
            &fwd,
            &mut self.out,
        );
        let consumed = self.inline_body(r, env.cfg.limits.request_buffer);
        self.phase = Phase::Pick;
        consumed
    }

    /// A request to a forward-proxy listener: CONNECT host:port, or an absolute URI.
    fn forward(&mut self, r: &Parsed<'_>, env: &Env<'_>, now: Instant) -> usize {
        let (authority, dest) = match self.forward_destination(r, env, now) {
            Ok(x) => x,
            Err(consumed) => return consumed,
        };
        let max_forwards = match max_forwards(r.buf(), &self.headers, r.head.method) {
            Ok(n) => n,
            Err(answer) => return self.local(answer, b"", r, env, now),
        };
        if r.head.method == Method::Connect {
            // Bytes after the head (a TLS ClientHello sent early) stay for the tunnel.
            self.intent = Intent::Connect(dest);
            self.resolve(env, now);
            return r.end;
        }
        let rules_pending = matches!(
            dest.at,
            At::Named {
                rules_pending: true
            }
        );
        self.intent = Intent::Forward(dest);
        self.forward_request(r, authority, rules_pending, max_forwards, env, now)
    }

    /// The destination of a forward-proxy request, its client authenticated and the
    /// destination admitted; `Err` with the input consumed when the request was answered.
    fn forward_destination<'b>(
        &mut self,
        r: &Parsed<'b>,
        env: &Env<'_>,
        now: Instant,
    ) -> Result<(&'b [u8], Dest), usize> {
        let (head, buf) = (&r.head, r.buf());
        let (authority, default_port) = match head.form {
            TargetForm::Authority if head.method == Method::Connect => (head.target.get(buf), None),
            TargetForm::Absolute { authority, .. } => {
                let target = head.target.get(buf);
                if target.len() < 7 || !target[..7].eq_ignore_ascii_case(b"http://") {
                    let detail = "only http:// URIs are forwarded; use CONNECT for https";
                    self.reject(400, detail, env, now);
                    return Err(0);
                }
                (authority.get(buf), Some(80))
            }
            _ => {
                self.reject(400, "this is a forward proxy: a request needs an absolute URI (http://host/path) or CONNECT host:port", env, now);
                return Err(0);
            }
        };
        let credentials = self
            .headers
            .iter()
            .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"proxy-authorization"))
            .count();
        if credentials > 1 {
            self.reject(400, "more than one Proxy-Authorization field", env, now);
            return Err(0);
        }
        if env.cfg.forward.users.is_some() {
            let value = crate::http::find_header(buf, &self.headers, b"proxy-authorization");
            let when = (now, env.date.date_line().secs());
            match authn::authenticate(value, &mut self.auth, env.auth, self.client.addr, when) {
                Authn::User(user) => self.record.user = Some(user),
                Authn::Refuse(status, detail, fields) => {
                    self.local_error_with(status, detail, fields, env, now);
                    return Err(r.end);
                }
                // The head stays in io's buffer: it is handed over again once checked.
                Authn::Verify => {
                    self.phase = Phase::Verify;
                    return Err(0);
                }
            }
        }
        match self.rate_limited(r, None, env, now) {
            Some(Limited::Refuse(l)) => return Err(self.local(l, b"", r, env, now)),
            Some(Limited::Delay) => return Err(0),
            None => {}
        }
        if self.body_too_large(r, env.cfg.limits.max_request_body, env, now) {
            return Err(0);
        }
        let Some(named) = crate::forward::Authority::parse(authority, default_port) else {
            self.reject(400, "invalid destination host or port", env, now);
            return Err(0);
        };
        if env.cfg.access_log.is_some() {
            let d = format!("{}:{}", named.host, named.port);
            self.record.text.put(Text::Dest, d.as_bytes());
        }
        let mut dest = Dest {
            host: named.host,
            port: named.port,
            method: String::from_utf8_lossy(head.method_span.get(buf)).into_owned(),
            at: At::Named {
                rules_pending: false,
            },
        };
        let tunnel = head.method == Method::Connect;
        let ask = dest.ask(
            self.client.addr,
            self.record.user.as_deref(),
            self.client.cert.subject(),
            tunnel,
        );
        match admit(admission(env.cfg), &ask) {
            Verdict::Resolve { rules_pending } => dest.at = At::Named { rules_pending },
            Verdict::Deny(denial) => {
                self.record.denied = Some(denial.kind());
                let answer = Local::Denied(denial.status(), denial.detail(&ask));
                return Err(self.local(answer, b"", r, env, now));
            }
        }
        Ok((authority, dest))
    }

    /// A forward-proxy request for `authority` (not a tunnel): its target as sent, looked up in
    /// the cache, and its head written for the destination.
    fn forward_request(
        &mut self,
        r: &Parsed<'_>,
        authority: &[u8],
        rules_pending: bool,
        max_forwards: Option<u64>,
        env: &Env<'_>,
        now: Instant,
    ) -> usize {
        let (head, info, buf) = (&r.head, &r.info, r.buf());
        // The Host sent is the URI's authority (RFC 9112 §3.2.2), whatever Host the client
        // sent.
        let TargetForm::Absolute { path, .. } = head.form else {
            unreachable!("checked by forward_destination")
        };
        // RFC 9110 §7.7: a proxy forwards the target as it was sent. The origin decides what
        // `//`, dot segments or escapes mean on its own site; the request-target's syntax was
        // checked by the parser, and escapes must be well formed.
        let raw = path.get(buf);
        if !well_formed_escapes(raw) {
            self.reject(400, "a malformed %-escape in the request-target", env, now);
            return 0;
        }
        self.target.clear();
        if raw.is_empty() {
            self.target.push(b'/');
        } else {
            self.target.extend_from_slice(raw);
        }
        self.path_len = memchr::memchr(b'?', &self.target).unwrap_or(self.target.len());
        self.req.body_out = match info.body {
            BodyKind::Close => BodyKind::None,
            b => b,
        };
        // Rules that need the destination's addresses are decided after resolution, which a
        // hit would skip: such requests are not answered from the cache.
        if env.cache.is_some() && !rules_pending {
            crate::cache::policy::key(
                crate::cache::policy::Space::Forward,
                "http",
                authority,
                &self.target,
                self.cache.key_mut(),
            );
            if self.cache_lookup(Rules::Forward, buf, !info.body.is_empty(), env, now) {
                return r.end;
            }
        }
        let fwd_fields = Forwarding {
            policy: env.cfg.forward.anonymity.policy(),
            client_ip: &self.client.text,
            peer_ip: &self.client.peer_text,
            proto: self.scheme,
            host_override: Some(authority),
            fallback_host: b"",
            upgrade_websocket: self.req.upgrade == Upgrade::WebSocket,
            max_forwards,
            revalidate: self.cache.validators(),
            edits: None,
            request_id: None,
            client_cert: &self.client.cert,
        };
        self.out.clear();
        upstream_request(
            buf,
            head,
            &self.headers,
            &self.target,
            self.req.body_out,
            &fwd_fields,
            &mut self.out,
        );
        let consumed = self.inline_body(r, env.cfg.limits.request_buffer);
        self.resolve(env, now);
        consumed
    }

    /// A small body that came with the head goes upstream with it (and is then part of what a
    /// retry sends again). Returns the input consumed; decides whether a retry is allowed.
    fn inline_body(&mut self, r: &Parsed<'_>, buffer: u64) -> usize {
        let (input, end, head, info) = (r.input, r.end, &r.head, &r.info);
        let mut consumed = end;
        if let BodyKind::Length(n) = info.body {
            let most = INLINE_BODY.max(buffer);
            if n <= most && !info.expect_continue && (input.len() - end) as u64 >= n {
                let n = n as usize;
                self.out.extend_from_slice(&input[end..end + n]);
                consumed += n;
                self.record.request_body = n as u64;
                self.req.body = BodyKind::None;
            }
        }
        self.req.resend = if head.method.is_idempotent() && self.req.body.is_empty() {
            Resend::Allowed
        } else {
            Resend::Never
        };
        consumed
    }

    /// An error page of the proxy's own with this detail; the connection is kept when the
    /// request allows it (no request body left unread).
    fn local_error(&mut self, status: u16, detail: &str, env: &Env<'_>, now: Instant) {
        self.local_error_with(status, detail, b"", env, now);
    }

    /// [`local_error`](Self::local_error) with `extra` header lines.
    fn local_error_with(
        &mut self,
        status: u16,
        detail: &str,
        extra: &[u8],
        env: &Env<'_>,
        now: Instant,
    ) {
        let date = env.date.date_line();
        let a = Answer::page(status, detail, &date).with(extra);
        self.answer(&a, self.req.body.is_empty(), env, now);
    }

    /// Writes `a`, an answer of the proxy's own, and ends the exchange after it: the connection
    /// is kept when the request allows it and `body_read` (no request body is left unread).
    fn answer(&mut self, a: &Answer<'_>, body_read: bool, env: &Env<'_>, now: Instant) {
        let p = self.req.persist.unless(env.draining || !body_read);
        self.write_answer(a, p.header(), self.request_id(env.cfg));
        self.write_client(Written::Answer(p.finish(body_read)), now);
    }

    /// The request's id field: its name and the id, when it has one.
    fn request_id<'c>(&self, cfg: &'c Config) -> Option<(&'c [u8], crate::reqid::RequestId)> {
        let name = cfg.server.request_id.as_deref()?;
        Some((name.as_bytes(), self.record.request_id?))
    }

    /// Writes answer `a` into `out` (its head, and its content unless the request is `HEAD`)
    /// and into the record.
    fn write_answer(
        &mut self,
        a: &Answer<'_>,
        connection: ConnectionHeader,
        id: Option<(&[u8], crate::reqid::RequestId)>,
    ) {
        let head_only = self.req.method == Method::Head;
        let a = Answer {
            request_id: id.as_ref().map(|(n, v)| (*n, v.as_bytes())),
            ..*a
        };
        self.out.clear();
        a.write(connection, head_only, &mut self.out);
        self.record.status = a.status;
        self.record.response_body = if head_only { 0 } else { a.content_length() };
    }

    fn response(&mut self, input: &[u8], end: usize, env: &Env<'_>, now: Instant) -> usize {
        let ub = &input[..end];
        let parsed = parse_response(ub, &mut self.uheaders, &Self::response_limits(env.cfg))
            .map_err(UpstreamError::Invalid)
            .and_then(|rh| {
                response_info(ub, &rh, &self.uheaders, self.req.method)
                    .map(|ri| (rh, ri))
                    .map_err(UpstreamError::InvalidFraming)
            });
        let (rh, ri) = match parsed {
            Ok(x) => x,
            Err(e) => {
                let err = Error::Upstream(e);
                let record = self.record_action(Some(Outcome::Invalid), Some(err.clone()), now);
                self.effects.push_back(record);
                self.fail(err, true, env, now);
                return 0;
            }
        };
        self.pin.response(ub, &self.uheaders);
        let body = self.edits.relayed_body(
            self.record.route.and_then(|i| env.cfg.routes.get(i)),
            &env.cfg.compression,
            env.encoders,
            (rh.status, ri.body),
            || compress::Facts::of_head(ub, &self.uheaders),
        );
        let seen = Seen {
            passage: match body.verdict.coding().is_some() || body.replace.is_some() {
                true => Passage::Rewritten,
                false => Passage::AsIs,
            },
            ..self.seen(ub, &rh, &ri)
        };
        match ResponsePlan::decide(seen, self.asked(&rh, env)) {
            ResponsePlan::Interim { relay } => self.interim(ub, &rh, relay, env, now),
            ResponsePlan::Switch => {
                // The switch: the 101 goes to the client, then bytes both ways.
                let record = self.record_action(Some(Outcome::Success), None, now);
                self.effects.push_back(record);
                self.timers.stop(Timer::UpstreamRead);
                self.relayed_head(
                    ub,
                    &rh,
                    BodyKind::None,
                    ConnectionHeader::UpgradeWebsocket,
                    None,
                    env,
                );
                self.record.status = 101;
                self.record.response_head = Some(now);
                self.write_client(Written::TunnelOpen, now);
                end
            }
            ResponsePlan::Unasked => {
                self.fail(Error::SwitchedProtocols, false, env, now);
                0
            }
            ResponsePlan::Retry => {
                let err = Error::RetryStatus(rh.status);
                let outcome = Some(Outcome::ServerError(rh.status));
                let record = self.record_action(outcome, Some(err.clone()), now);
                self.effects.push_back(record);
                self.tries.last = Some((err, true));
                self.phase = Phase::Pick;
                // The rest of this response is not read: io closes the connection.
                input.len()
            }
            ResponsePlan::Final {
                to_client,
                persist,
                outcome,
            } => {
                let record = self.record_action(Some(outcome), None, now);
                self.effects.push_back(record);
                self.timers.stop(Timer::UpstreamRead);
                let head = Final {
                    rh,
                    ri,
                    to_client,
                    persist,
                    body,
                };
                self.final_response(input, end, head, env, now)
            }
        }
    }

    /// What the response plan reads of a response head.
    fn seen(&self, ub: &[u8], rh: &ResponseHead, ri: &crate::http::framing::ResponseInfo) -> Seen {
        Seen {
            status: rh.status,
            body: ri.body,
            websocket: rh.status == 101
                && crate::http::find_header(ub, &self.uheaders, b"upgrade")
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")),
            passage: Passage::AsIs,
        }
    }

    /// What the response plan reads of the request.
    fn asked(&self, rh: &ResponseHead, env: &Env<'_>) -> Asked {
        let retry_on = self.intent.group().and_then(|g| env.cfg.upstreams.get(g));
        Asked {
            version: self.req.version,
            upgrade: self.req.upgrade == Upgrade::WebSocket,
            persist: self.req.persist,
            draining: env.draining,
            retry_status: self.req.resend == Resend::Allowed
                && self.tries.may_retry()
                && retry_on.is_some_and(|u| u.retry_on.contains(&rh.status)),
        }
    }

    /// Writes the client's copy of the upstream's response head in `ub` into `out`.
    fn relayed_head(
        &mut self,
        ub: &[u8],
        rh: &ResponseHead,
        body: BodyKind,
        connection: ConnectionHeader,
        encoding: Option<compress::HeadEdit>,
        env: &Env<'_>,
    ) {
        let interim = (100..200).contains(&rh.status) && rh.status != 101;
        let date = env.date.date_line();
        // The route's edits of a final response: its fields, and URLs and cookies that point
        // at the upstream.
        let route = self.record.route.and_then(|i| env.cfg.routes.get(i));
        let server = match self.record.upstream {
            Some(UpstreamKey::Server { group, server }) if !interim => {
                env.cfg.upstreams[group].servers.get(server).map(|s| s.addr)
            }
            _ => None,
        };
        let relayed = edits::Relayed::new(route.filter(|_| !interim), server, ub, &self.uheaders);
        let id = self.request_id(env.cfg).filter(|_| !interim);
        let names = relayed.upstream_names(&self.edits);
        let relocate = relayed.relocate(&self.edits, &names);
        let added = HeadEdits {
            date: (!interim).then_some(&date),
            via: self.shows_via(env),
            cache_status: if interim || rh.status == 101 {
                None
            } else {
                self.cache.status()
            },
            drop: relayed.dropped(),
            add: relayed.lines(&self.edits),
            relocate: relocate.as_ref(),
            cookies: relayed.cookies(),
            encoding,
            request_id: id.as_ref().map(|(n, v)| (*n, v.as_bytes())),
        };
        self.out.clear();
        client_response(
            ub,
            rh,
            &self.uheaders,
            body,
            connection,
            added,
            &mut self.out,
        );
    }

    /// An interim response: relayed (`relay`) or dropped, then the next head is read.
    /// Interim responses are bounded in number and bytes, and `upstream_read` runs across all
    /// of them: an upstream sending 1xx forever is cut off.
    fn interim(
        &mut self,
        ub: &[u8],
        rh: &ResponseHead,
        relay: bool,
        env: &Env<'_>,
        now: Instant,
    ) -> usize {
        let max = Self::response_limits(env.cfg).max_head;
        let budget = self.tries.interim.get_or_insert(InterimBudget::new(max));
        if !budget.admit(ub.len()) {
            let err = Error::TooManyInterim;
            self.log_only(err.clone(), now);
            self.fail(err, false, env, now);
            return 0;
        }
        self.scanner.reset();
        if relay {
            self.relayed_head(ub, rh, BodyKind::None, ConnectionHeader::Omit, None, env);
            self.write_client(Written::Interim, now);
        } else {
            self.phase = Phase::ReadResponse { read_first: false };
        }
        ub.len()
    }

    /// The final response: answered from the cache (a revalidation's 304, stale on error), or
    /// its head written for the client with what of its body arrived with it.
    fn final_response(
        &mut self,
        input: &[u8],
        end: usize,
        f: Final,
        env: &Env<'_>,
        now: Instant,
    ) -> usize {
        let Final {
            rh,
            ri,
            to_client,
            persist,
            body,
        } = f;
        let edits::RelayedBody {
            verdict,
            slot,
            replace,
        } = body;
        let ub = &input[..end];
        let served = match (self.cache.active(), cache_ctx(env)) {
            (true, Some(ctx)) => {
                let response = (ub, &rh, &self.uheaders[..]);
                self.cache
                    .on_response(ctx, self.req.method, response, &self.headers)
            }
            _ => None,
        };
        if let Some(s) = served {
            // The client is answered from the cache: the upstream connection is kept only
            // when nothing of this response is left on it.
            self.end_fill();
            self.serve_stored(s, env, now);
            let reuse =
                ri.body.is_empty() && ri.connection.persistent(rh.version) && input.len() == end;
            let release = self.release(reuse, false);
            self.effects.push_back(release);
            return input.len();
        }
        if let BodyKind::Length(n) = ri.body {
            self.cache.body_length(n);
        }
        if !self.cache.storing() {
            self.end_fill();
        }
        // A bodiless response (to HEAD) gets the encoded head, and no encoder.
        let encode = verdict.coding().filter(|_| ri.body != BodyKind::None);
        self.relayed_head(
            ub,
            &rh,
            to_client,
            persist.header(),
            compress::HeadEdit::new(verdict, replace.is_some()),
            env,
        );
        let head_len = self.out.len();
        let (inline, relay) = match (encode, &replace) {
            (None, None) => self.inline_response_body(ri.body, input.len() - end),
            // Every byte of a rewritten body goes through its stages.
            _ => (0, ri.body),
        };
        self.out.extend_from_slice(&input[end..end + inline]);
        self.record.response_body = inline as u64;
        let begun = match (encode, &replace, ri.body) {
            (None, None, BodyKind::Chunked | BodyKind::Close) if !self.cache.storing() => {
                self.reframe_with_head(ri.body, to_client, &input[end..])
            }
            _ => None,
        };
        let inline = match &begun {
            Some((t, consumed)) => {
                self.record.response_body = t.total();
                *consumed
            }
            None => inline,
        };
        if let Some(h) = env.hints {
            let len = match (ri.body, to_client) {
                (BodyKind::Length(n), BodyKind::Length(_)) if !self.cache.storing() => Some(n),
                _ => None,
            };
            h.borrow_mut().record(self.record.route, len);
        }
        if relay == BodyKind::None && self.cache.storing() {
            let body = self.out[head_len..].to_vec();
            let _ = self.store_body(body, env);
        }
        self.up = Upstream {
            body_in: ri.body,
            body_out: to_client,
            relay,
            conn: if ri.body != BodyKind::Close && ri.connection.persistent(rh.version) {
                UpstreamConn::Reusable
            } else {
                UpstreamConn::Closes
            },
            then: persist.finish(true),
            encode: encode.map(|c| Encoder::open(c, env.cfg.compression.levels, ri.body, slot)),
            replace,
            begun: begun.map(|(t, _)| t),
        };
        self.record.status = rh.status;
        self.record.response_head = Some(now);
        self.record.upstream_head = Some(now);
        self.record.cache = self.cache.status().map(|c| c.detail);
        self.write_client(Written::ResponseHead, now);
        end + inline
    }

    /// How much of a response body of `body` framing, `buffered` bytes of which arrived with
    /// the head, goes out with the head, and what is left to relay. A small body that arrived
    /// whole does; so does the part of a larger one that arrived with it (one write instead of
    /// two; the rest is relayed or spliced), unless the cache is storing the body (its tee sees
    /// it whole).
    fn inline_response_body(&self, body: BodyKind, buffered: usize) -> (usize, BodyKind) {
        let BodyKind::Length(n) = body else {
            return (0, body);
        };
        let buffered = buffered as u64;
        let k = if n <= INLINE_BODY && buffered >= n {
            n
        } else if self.cache.storing() {
            0
        } else {
            buffered.min(n)
        };
        let relay = match n - k {
            0 => BodyKind::None,
            r => BodyKind::Length(r),
        };
        (k as usize, relay)
    }

    /// The part of a chunked or close-delimited response body that arrived with the head goes
    /// out with it, framed for the client, as a length-framed body's does
    /// ([`inline_response_body`](Self::inline_response_body)): one write instead of two, and
    /// a body that arrived whole is done with the head. Returns the transcoder that framed it,
    /// for the relay to go on with, and the input it consumed; `None` when nothing arrived or
    /// the framing is bad (the relay then finds and reports it, as before).
    fn reframe_with_head(
        &mut self,
        body: BodyKind,
        to_client: BodyKind,
        buffered: &[u8],
    ) -> Option<(Transcoder, usize)> {
        if buffered.is_empty() {
            return None;
        }
        let mut t = Transcoder::new(body, to_client);
        let mark = self.out.len();
        // Room for all of it at once: grown by `step`'s appends, the head buffer was
        // reallocated and copied five or six times for 16 KiB of chunks (from `OUT_FIRST`,
        // which `begin` returns it to), a tenth of ringway's own CPU per chunked response
        // (docs/benchmarks-log.md, run 41). The framing re-written for the client is at most
        // a few bytes longer than the input's.
        self.out.reserve(buffered.len() + 64);
        match t.step(buffered, &mut self.out) {
            Ok(s) if s.consumed > 0 => {
                // Identity framing both ways passes the bytes through untouched; they go
                // before anything `step` appended, and it appended nothing.
                if !s.pass.is_empty() {
                    self.out.extend_from_slice(&buffered[s.pass]);
                }
                Some((t, s.consumed))
            }
            _ => {
                self.out.truncate(mark);
                None
            }
        }
    }

    /// An attempt failed at `stage` before the response reached the client: record it, then
    /// do what [`Attempts::after`] says.
    fn attempt_failed(&mut self, stage: Stage, err: Error, env: &Env<'_>, now: Instant) {
        let next_address = matches!(
            self.intent.dest().map(|d| &d.at),
            Some(At::Dialling { next, .. }) if !next.is_empty()
        );
        let facts = Facts {
            resendable: self.req.resend == Resend::Allowed,
            body_done: self.req.body.is_empty(),
            next_address,
        };
        let v = self.tries.after(stage, &err, facts);
        if v.report != Report::Quiet {
            let record = self.record_action(v.report.outcome(), Some(err.clone()), now);
            self.effects.push_back(record);
        }
        match v.next {
            Next::OtherAddress => {
                // Within the same connect deadline.
                let user = self.record.user.as_deref();
                if let Some(Dest {
                    at: At::Dialling { addr, from, next },
                    ..
                }) = self.intent.dest_mut()
                {
                    *addr = next.remove(0);
                    *from = env.cfg.forward.outgoing_for(user, addr.ip());
                }
                self.phase = Phase::Connect(Conn::Fresh);
            }
            Next::Reconnect => self.reconnect_fresh(now),
            Next::Retry { body_done } => {
                self.tries.last = Some((err, body_done));
                self.phase = Phase::Pick;
            }
            Next::Answer { body_done } => self.fail(err, body_done, env, now),
        }
    }

    /// What the current attempt connects to.
    fn upstream_key(&self) -> UpstreamKey {
        self.intent.upstream_key(self.tries.server)
    }

    fn record_action(
        &self,
        outcome: Option<Outcome>,
        error: Option<Error>,
        at: Instant,
    ) -> action::Effect {
        action::Effect::Record {
            to: self.upstream_key(),
            outcome,
            error: error.map(Box::new),
            at,
        }
    }

    /// Logs an upstream error without a health verdict.
    fn log_only(&mut self, err: Error, now: Instant) {
        self.effects
            .push_back(self.record_action(None, Some(err), now));
    }

    fn reconnect_fresh(&mut self, now: Instant) {
        self.phase = Phase::Connect(Conn::Fresh);
        self.timers.arm(Timer::UpstreamConnect, &self.timeouts, now);
    }

    fn read_response(&mut self, now: Instant) {
        self.scanner.reset();
        self.phase = Phase::ReadResponse { read_first: true };
        self.timers.arm(Timer::UpstreamRead, &self.timeouts, now);
    }

    /// Answers with the error of an upstream failure. `body_done`: the request body has been
    /// read whole, which is what allows the connection to be kept.
    fn fail(&mut self, err: Error, body_done: bool, env: &Env<'_>, now: Instant) {
        self.end_fill();
        let timeout = matches!(
            err,
            Error::Upstream(
                UpstreamError::ConnectTimeout
                    | UpstreamError::ReadTimeout
                    | UpstreamError::WriteTimeout
            )
        );
        if self.cache_on_failure(timeout, env, now) {
            self.record.error = Some(err);
            return;
        }
        // The reason goes to the log with the record; the client gets a plain status page (no
        // socket errors, addresses or parser details of ours or the upstream's).
        let status = err.status();
        let date = env.date.date_line();
        let a = Answer::page(status, answer::upstream_failure(status), &date);
        self.record.error = Some(err);
        self.answer(&a, body_done || self.req.body.is_empty(), env, now);
    }

    /// 503 with Retry-After: every server of the group is down, marked down or at its limit.
    fn unavailable(&mut self, env: &Env<'_>, now: Instant) {
        self.end_fill();
        if self.cache_on_failure(false, env, now) {
            self.record.error = Some(Error::NoServer);
            return;
        }
        let date = env.date.date_line();
        let a =
            Answer::page(503, "no upstream server available", &date).with(b"Retry-After: 5\r\n");
        self.record.error = Some(Error::NoServer);
        self.answer(&a, self.req.body.is_empty(), env, now);
    }

    /// Answers a request that cannot be processed; the connection closes after it.
    fn reject(&mut self, status: u16, detail: &str, env: &Env<'_>, now: Instant) {
        let date = env.date.date_line();
        self.write_answer(
            &Answer::page(status, detail, &date),
            ConnectionHeader::Close,
            self.request_id(env.cfg),
        );
        self.record.error = Some(Error::BadRequest {
            status,
            detail: detail.to_string(),
        });
        self.write_client(Written::Answer(Finish::Close(Close::Linger)), now);
    }

    fn write_client(&mut self, what: Written, now: Instant) {
        self.phase = Phase::Write(what);
        self.timers.arm(Timer::Send, &self.timeouts, now);
    }

    fn finish(&mut self, f: Finish, now: Instant) {
        // What io must do when an exchange ends comes out before the `Finish`: give back a
        // claim on a fetch, start the refresh this request claimed.
        self.end_fill();
        if let Some((head, key)) = self.cache.take_refresh() {
            self.effects
                .push_back(action::Effect::Refresh { head, key });
        }
        self.timers.clear();
        self.phase = Phase::Done(f);
        self.record.ended = Some(now);
        self.record.finish = Some(f);
        if f == Finish::KeepAlive {
            self.served += 1;
        }
    }
}

/// An identity body long enough (`min`) for splice(2) to pay.
fn spliceable(input: BodyKind, output: BodyKind, min: u64) -> bool {
    matches!((input, output), (BodyKind::Length(n), BodyKind::Length(_)) if n >= min)
}

/// What the cache reads from the worker for a step (none without a cache).
fn cache_ctx<'e>(env: &Env<'e>) -> Option<Ctx<'e>> {
    env.cache.map(|cache| Ctx {
        rules: env.cfg,
        cache,
        secs: env.date.date_line().secs(),
    })
}

/// What forward admission reads of the configuration.
fn admission(cfg: &Config) -> Settings<'_> {
    Settings {
        forward: &cfg.forward,
        own: cfg,
    }
}
