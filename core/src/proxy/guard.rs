//! What the protection features make of a reverse-proxy request after routing, in the order
//! it meets them: `[[rules]]`, the body limit, request buffering, the rate limits. Each asks a
//! verdict of its own module (`rules`, `limit`, the body's `Transcoder`) and turns it into the
//! exchange's next step; none keeps state in the exchange beyond `Request`'s `max_body` and
//! `rate`.

use std::time::Instant;

use super::dispatch::Local;
use super::error::{BodyFail, Error};
use super::phase::Phase;
use super::request::{Parsed, RateStep};
use super::timer::Timer;
use super::{Close, Env, Exchange, Finish};
use crate::config::Config;
use crate::http::framing::BodyKind;

/// What a rate limit makes of a request.
pub(super) enum Limited<'c> {
    Refuse(Local<'c>),
    /// Held (`Phase::Delayed`) before it goes on.
    Delay,
}

impl Exchange {
    /// A route's own head limits, stricter than `[limits]` (which the parser applied): more
    /// header fields than `max_headers` is `431`, a longer target than `max_target` `414`.
    pub(super) fn head_too_large(
        &mut self,
        r: &Parsed<'_>,
        route: Option<usize>,
        env: &Env<'_>,
        now: Instant,
    ) -> bool {
        let Some(route) = route.map(|i| &env.cfg.routes[i]) else {
            return false;
        };
        if route.max_headers.is_some_and(|m| self.headers.len() > m) {
            self.reject(431, "too many header fields for this route", env, now);
            return true;
        }
        if route
            .max_target
            .is_some_and(|m| r.head.target.get(r.buf()).len() > m)
        {
            self.reject(
                414,
                "the request target is too long for this route",
                env,
                now,
            );
            return true;
        }
        false
    }

    /// What the first `[[rules]]` entry that matches says of this request (on its normalised
    /// path, as routed), or `None`.
    pub(super) fn ruled<'c>(
        &mut self,
        r: &Parsed<'_>,
        route: Option<usize>,
        env: &Env<'c>,
    ) -> Option<&'c crate::rules::RuleAction> {
        let rules = &env.cfg.rules;
        if rules.is_empty() {
            return None;
        }
        let path: &[u8] = match self.path_len {
            0 => b"/",
            n => &self.target[..n],
        };
        let (buf, headers) = (r.buf(), &self.headers);
        let header = |name: &[u8]| crate::http::find_header(buf, headers, name);
        let seen = crate::rules::Seen {
            client: self.client.addr,
            listener: self.listener,
            route,
            method: r.head.method_span.get(buf),
            path,
            header: &header,
            client_subject: self.client.cert.subject(),
        };
        let (i, action) = crate::rules::evaluate(rules, &seen)?;
        self.record.ruled = Some(i);
        Some(action)
    }

    /// Keeps the body limit for the relay (a chunked body is held to it as it streams), and
    /// answers `413` at once when the announced length is over it: nothing goes upstream and
    /// the body is not read (the connection closes after the answer).
    pub(super) fn body_too_large(
        &mut self,
        r: &Parsed<'_>,
        max: Option<u64>,
        env: &Env<'_>,
        now: Instant,
    ) -> bool {
        self.req.max_body = max;
        match (max, r.info.body) {
            (Some(m), BodyKind::Length(n)) if n > m => {
                self.reject(
                    413,
                    "the request body is larger than this route accepts",
                    env,
                    now,
                );
                true
            }
            (Some(0), BodyKind::Chunked) => {
                self.reject(413, "this route accepts no request body", env, now);
                true
            }
            _ => false,
        }
    }

    /// Whether the request's body is to be read whole before anything else happens (a known
    /// length within `limits.request_buffer`, not all here yet, no `Expect: 100-continue`,
    /// which waits for the proxy's word): a slow uploader then holds no upstream connection,
    /// and the body goes upstream in one write with the head. The head is decided again once
    /// the body is in; the rate limit, which counts requests, comes after this.
    pub(super) fn buffer_first(&mut self, r: &Parsed<'_>, cfg: &Config) -> bool {
        let here = (r.input.len() - r.end) as u64;
        match r.info.body {
            BodyKind::Length(n)
                if n > here && n <= cfg.limits.request_buffer && !r.info.expect_continue =>
            {
                self.phase = Phase::Buffer {
                    need: r.end + n as usize,
                };
                true
            }
            _ => false,
        }
    }

    /// The body `ReadBody` asked for is in the input (or could not be read).
    pub fn handle_body_buffered(&mut self, r: Result<(), BodyFail>, env: &Env<'_>, now: Instant) {
        debug_assert!(matches!(self.phase, Phase::Buffer { .. }));
        match r {
            Ok(()) => {
                self.phase = Phase::Head {
                    began: true,
                    read_first: false,
                };
                self.scanner.reset();
                self.timers.arm(Timer::ClientHeader, &self.timeouts, now);
            }
            Err(BodyFail::SourceTimeout) => {
                self.reject(408, "timed out reading the request body", env, now);
                self.record.error = Some(Error::RequestBody(BodyFail::SourceTimeout));
            }
            Err(e) => {
                self.record.error = Some(Error::RequestBody(e));
                self.finish(Finish::Close(Close::Now), now);
            }
        }
    }

    /// What the rate limits that apply to the request say (`limit::admit`): `None` to go on,
    /// a refusal to answer, or a delay (the exchange then holds the request, and hands its
    /// head over again afterwards, counted already).
    pub(super) fn rate_limited<'c>(
        &mut self,
        r: &Parsed<'_>,
        route: Option<usize>,
        env: &Env<'c>,
        now: Instant,
    ) -> Option<Limited<'c>> {
        let limits = &env.cfg.rate_limits;
        if limits.is_empty() || self.req.rate == RateStep::Admitted {
            return None;
        }
        let (buf, headers) = (r.buf(), &self.headers);
        let header = |name: &[u8]| crate::http::find_header(buf, headers, name);
        let who = crate::limit::Who {
            client: self.client.addr,
            route,
            user: self.record.user.as_deref(),
            header: &header,
        };
        match crate::limit::admit(limits, &who, now) {
            (crate::limit::Verdict::Reject { retry_after }, Some(i)) => {
                self.record.limited = Some(i);
                let l = &limits[i];
                Some(Limited::Refuse(Local::Limited {
                    status: l.status,
                    name: &l.name,
                    // Whole seconds, rounded up: a client that waits that long is served.
                    retry_after: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
                }))
            }
            (crate::limit::Verdict::Delay(d), _) => {
                self.req.rate = RateStep::Admitted;
                self.timers.arm_for(Timer::RateDelay, d, now);
                self.phase = Phase::Delayed;
                Some(Limited::Delay)
            }
            _ => {
                self.req.rate = RateStep::Admitted;
                None
            }
        }
    }
}
