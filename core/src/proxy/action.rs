//! What an [`Exchange`](super::Exchange) asks io to do next.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Entry, Tee};
use crate::compress::Encoder;

use crate::health::Outcome;
use crate::http::body::{Stage, Transcoder};
use crate::upstream::UpstreamKey;

use super::error::Error;

/// One step for io to carry out; then it reports back with the matching `handle_*` call.
#[must_use]
#[derive(Debug)]
pub enum Action {
    /// Hand everything buffered from the client to `handle_input`; when `read_first`, read
    /// more first (bounded by the deadline; `handle_client_closed` / `handle_timeout` when that
    /// fails). `idle`: the connection served a request and nothing of the next has arrived, so a
    /// draining worker may close it (a new connection's first request is always awaited).
    ReadHead { idle: bool, read_first: bool },
    /// Write the bytes in `out()` to the client (bounded by the deadline), then
    /// `handle_client_written`.
    WriteClient,
    /// Write the bytes in `out()`, then `range` of the stored body of `entry` (a cache hit),
    /// to the client, then `handle_client_written`. A large body takes as long as the client
    /// reads steadily: each write may wait `idle` for the client to take bytes (`send`, the
    /// time between two writes, as for a relayed body), not one deadline for the whole.
    WriteStored {
        entry: Arc<Entry>,
        /// The body as stored, or its copy in this coding (`Entry::bytes`).
        coding: Option<crate::compress::Coding>,
        range: std::ops::Range<usize>,
        idle: Duration,
    },
    /// Write `100 Continue` to the client (bounded by the deadline), then
    /// `handle_client_written`. `out()` keeps the request head for a possible resend.
    WriteContinue,
    /// Read the request body from the client and throw it away, then `handle_request_body`.
    DiscardBody(Box<BodyPlan>),
    /// Choose a server of upstream `group` for the balancing key `key`, skipping
    /// `tried()`, then `handle_pick`. io adds the active-check verdicts and counts the
    /// request in flight until the next `Pick` or the end.
    Pick { group: usize, key: u64 },
    /// Passive health: record how the attempt at `to` went (`outcome`, for configured servers)
    /// as of `at`, the exchange's time, and what went wrong (`error`, which io logs with the
    /// address). Then poll again.
    Record {
        to: UpstreamKey,
        outcome: Option<Outcome>,
        error: Option<Error>,
        at: std::time::Instant,
    },
    /// Resolve `resolve_host()` (io's resolver, `/etc/hosts` honoured, with its TTL cache),
    /// then `handle_resolved`.
    Resolve { port: u16 },
    /// Another request on this worker is fetching the same cache key: wait until
    /// `cache_key()` is no longer being filled (bounded by the deadline), then
    /// `handle_fill_done` (`handle_timeout` when the deadline passes).
    WaitFill,
    /// Hold the connection, reading and writing nothing, until the deadline; then
    /// `handle_timeout`.
    Hold,
    /// Read from the client until the input buffer (head included) holds `need` bytes, each
    /// read within `idle` and all of it within `whole`; then `handle_body_buffered`.
    ReadBody {
        need: usize,
        idle: Duration,
        whole: Option<Duration>,
    },
    /// Move bytes both ways between the client and the upstream connection (a CONNECT tunnel,
    /// or a WebSocket after its 101) until both sides close or nothing moves for `idle`; bytes
    /// already buffered from either side go first. Then `handle_tunnel_closed`.
    Tunnel { idle: Duration },
    /// Open a connection to `to` as `via` says (any connection io still holds from an earlier
    /// attempt is closed first); then `handle_connected` or `handle_upstream_error`. `proxy`:
    /// a new connection starts with a PROXY protocol header of that version naming this client
    /// (the address here; the port and the address it reached are the connection's), before
    /// TLS.
    Connect {
        to: UpstreamKey,
        via: Via,
        proxy: Option<(crate::proxyproto::Version, std::net::IpAddr)>,
    },
    /// Write `out()` (the request head, and a small body with it) to the upstream, then
    /// `handle_request_sent` or `handle_upstream_error`.
    SendRequest,
    /// Relay the request body from the client to the upstream, then `handle_request_body`.
    SendBody(Box<BodyPlan>),
    /// Hand everything buffered from the upstream to `handle_upstream_input`; when
    /// `read_first`, read more first (bounded by the deadline; `handle_upstream_error` /
    /// `handle_timeout` when that fails). `max`: read at most this much when nothing of the
    /// response is buffered yet (the body is expected to be spliced; see `hints.rs`).
    ReadResponseHead {
        read_first: bool,
        max: Option<usize>,
    },
    /// Relay the response body from the upstream through the body sinks to the client, then
    /// `handle_response_body`.
    RelayResponse(Box<BodyPlan>),
    /// Read the whole response body from the upstream into the plan's tee (a fill the cache
    /// stores), writing nothing to the client yet, then `handle_body_fetched`.
    FetchBody(Box<BodyPlan>),
    /// Hand back the upstream connection to `to` as `then` says. Then poll again.
    Release { to: UpstreamKey, then: Reuse },
    /// This exchange's claim on fetching the cache key `key` ends: end it in the worker's
    /// shard and wake the requests waiting for it. Then poll again.
    EndFill { key: Vec<u8> },
    /// Start a background refresh of a stored response (`stale-while-revalidate`): an
    /// exchange with no client that sends `head` and holds the fetch of `key` (see
    /// `Exchange::own_fill`). Then poll again.
    Refresh { head: Vec<u8>, key: Vec<u8> },
    /// Check `password` against `user`'s entry in the forward proxy's htpasswd file, off the
    /// worker (the hash is slow on purpose), then `handle_verified` with the outcome (`None`
    /// when it could not be checked: too many checks waiting).
    VerifyPassword {
        user: String,
        password: crate::forward::auth::Secret,
    },
    /// The exchange is over; `end_record()` describes it.
    Finish(Finish),
}

/// A side effect the exchange hands out before its state's own action: one of the actions
/// `Record`, `Release`, `EndFill` and `Refresh`, queued in this small type of its own so that
/// a connection's queue of them costs a few dozen bytes a slot, not the largest action's size
/// (the queue lives as long as the connection, idle ones included).
#[derive(Debug)]
pub(crate) enum Effect {
    Record {
        to: UpstreamKey,
        outcome: Option<Outcome>,
        error: Option<Box<Error>>,
        at: std::time::Instant,
    },
    Release {
        to: UpstreamKey,
        then: Reuse,
    },
    EndFill {
        key: Vec<u8>,
    },
    Refresh {
        head: Vec<u8>,
        key: Vec<u8>,
    },
}

impl From<Effect> for Action {
    fn from(e: Effect) -> Self {
        match e {
            Effect::Record {
                to,
                outcome,
                error,
                at,
            } => Action::Record {
                to,
                outcome,
                error: error.map(|e| *e),
                at,
            },
            Effect::Release { to, then } => Action::Release { to, then },
            Effect::EndFill { key } => Action::EndFill { key },
            Effect::Refresh { head, key } => Action::Refresh { head, key },
        }
    }
}

/// Which connection `Connect` may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The one io holds for this client alone (`Reuse::Pin`), if it still does; else a new
    /// one, never a pooled one.
    Pinned,
    /// An idle pooled connection when there is one, else a new one.
    Pooled,
    /// A new connection.
    Fresh,
}

/// What becomes of an upstream connection after its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// To the worker's pool, for any request to the same destination.
    Pool,
    /// Authenticated as this client's user (NTLM, Negotiate): kept for this client connection
    /// alone, for a later `Connect` with `Via::Pinned`, and closed with it.
    Pin,
    /// Closed.
    Close,
    /// Closed, and the server's pooled connections too, keep-alive to it paused: it sent bytes
    /// no request asked for.
    Distrust,
}

/// How a body moves: its framing in and out, and the idle timeouts of the relay.
#[derive(Debug)]
pub struct BodyPlan {
    pub body: Transcoder,
    /// No stage transforms the bytes and the body is long enough for splice(2) to pay: io
    /// splices when both ends are plain sockets.
    pub splice: bool,
    /// Longest wait for the next bytes from the sender.
    pub read_idle: Duration,
    /// Longest wait for the receiver to take bytes.
    pub write_idle: Duration,
    /// Longest the whole body may take (a sender trickling a byte per `read_idle` is cut
    /// here); `None`: no bound beyond the idle ones.
    pub whole: Option<Duration>,
    /// What the body passes through between decoding and framing (none: it may be spliced).
    /// io hands them back with `handle_response_body` / `handle_body_fetched`.
    pub stages: Stages,
}

/// The stages a body passes through, in order: the cache's tee (a copy of the payload as the
/// origin sent it), and next an encoder. A chain of typed slots rather than boxed stages: the
/// exchange gets each back by name (the tee's copy is stored), and an empty chain is what lets
/// io splice.
#[derive(Debug, Default)]
pub struct Stages {
    pub tee: Option<Tee>,
    /// Compresses what goes to the client (`crate::compress`).
    pub encode: Option<Encoder>,
    /// Replaces strings (`body_replace`), first: the tee keeps its output, the encoder
    /// compresses it.
    pub replace: Option<crate::subst::Replacer>,
    /// The substitution's output on its way to the others.
    scratch: Vec<u8>,
    /// Payload bytes handed on toward the client when the chain rewrites the body.
    out: u64,
}

impl Stages {
    pub fn new(
        tee: Option<Tee>,
        encode: Option<Encoder>,
        replace: Option<crate::subst::Replacer>,
    ) -> Self {
        Self {
            tee,
            encode,
            replace,
            scratch: Vec::new(),
            out: 0,
        }
    }

    /// The payload the client got, when the chain rewrote it (encoded, strings replaced):
    /// what the access log and metrics count.
    pub fn rewritten_len(&self) -> Option<u64> {
        (self.encode.is_some() || self.replace.is_some()).then_some(self.out)
    }

    pub fn is_empty(&self) -> bool {
        self.tee.is_none() && self.encode.is_none() && self.replace.is_none()
    }

    /// Hands `payload` to the tee and the encoder (or `out`).
    fn pass(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        match (&mut self.tee, &mut self.encode) {
            (tee, Some(e)) => {
                if let Some(t) = tee {
                    t.keep(payload);
                }
                e.data(payload, out);
            }
            (Some(t), None) => t.data(payload, out),
            (None, None) => out.extend_from_slice(payload),
        }
    }

    /// The chain as one stage for io's relay; `None` when it is empty (the bytes pass
    /// untouched, and may be spliced).
    pub fn as_stage(&mut self) -> Option<&mut dyn Stage> {
        if self.is_empty() {
            None
        } else {
            Some(self)
        }
    }
}

impl Stage for Stages {
    fn data(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let before = out.len();
        self.data_inner(payload, out);
        self.out += (out.len() - before) as u64;
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        let before = out.len();
        if let Some(e) = &mut self.encode {
            e.flush(out);
        }
        self.out += (out.len() - before) as u64;
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        let before = out.len();
        self.end_inner(out);
        self.out += (out.len() - before) as u64;
    }
}

impl Stages {
    fn data_inner(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        match self.replace.as_mut() {
            Some(r) => {
                let mut mid = std::mem::take(&mut self.scratch);
                mid.clear();
                r.data(payload, &mut mid);
                self.pass(&mid, out);
                self.scratch = mid;
            }
            None => self.pass(payload, out),
        }
    }

    fn end_inner(&mut self, out: &mut Vec<u8>) {
        if let Some(r) = self.replace.as_mut() {
            let mut rest = std::mem::take(&mut self.scratch);
            rest.clear();
            r.end(&mut rest);
            self.pass(&rest, out);
        }
        if let Some(t) = &mut self.tee {
            t.end(out);
        }
        if let Some(e) = &mut self.encode {
            e.end(out);
        }
    }
}

/// What happens to the client connection after an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Read the next request.
    KeepAlive,
    Close(Close),
    /// The kept-alive connection was quiet for `timeouts.park`: io keeps its socket and
    /// [`Exchange::park`](super::Exchange::park)'s state, nothing else, until the socket is
    /// readable (then [`Exchange::unpark`](super::Exchange::unpark)) or the keep-alive
    /// deadline passes (then it closes, as an idle connection does).
    Park,
}

/// How the client connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// At once: the client is gone, or the response could not be completed.
    Now,
    /// The client asked to close and its request was read whole, so it sends nothing more
    /// (RFC 9112 §9.6): close (over TLS after close_notify) unless unread input is pending,
    /// in which case linger as below.
    Notify,
    /// Half-close and drain what the client still sends for a moment, so that unread input
    /// does not reset the connection before the client has read the response.
    Linger,
}
