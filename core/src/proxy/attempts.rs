//! The attempts at the servers of an upstream group for one request, and what follows a failure
//! of one: another address of the destination, the same server on a fresh connection, another
//! server, or an answer. [`Attempts::after`] decides from values and changes nothing.

use std::time::Instant;

use crate::config::Upstream;
use crate::health::Outcome;
use crate::http::framing::InterimBudget;
use crate::upstream::Tried;

use super::error::{Error, UpstreamError};

/// One request's tries.
#[derive(Clone, Debug, Default)]
pub(super) struct Attempts {
    pub(super) tried: Tried,
    /// The server of the current attempt.
    pub(super) server: usize,
    pub(super) count: u32,
    started: Option<Instant>,
    /// Another server may be tried after a failure of this attempt.
    retry: Retry,
    /// Where the connection of this attempt came from.
    pub(super) conn: Origin,
    /// What failed last and whether the request body had been read whole, for the answer when
    /// no server is left.
    pub(super) last: Option<(Error, bool)>,
    /// Interim responses relayed so far (none: nothing reached the client).
    pub(super) interim: Option<InterimBudget>,
    /// The attempt's group sends a PROXY protocol header first: its connection is new, and
    /// this client's alone.
    pub(super) proxy: Option<crate::proxyproto::Version>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Retry {
    #[default]
    No,
    Allowed,
}

/// Where an attempt's connection came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Origin {
    #[default]
    New,
    /// The pool: the server may have closed it meanwhile.
    Pooled,
}

/// The step that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    Connect,
    SendHead,
    /// Sending the request body (the client's part is lost with it).
    SendBody,
    ReadHead,
}

/// What the request allows after a failure.
#[derive(Clone, Copy, Debug)]
pub(super) struct Facts {
    /// Idempotent, with nothing unrepeatable sent: may be sent again.
    pub(super) resendable: bool,
    /// The request body was read whole (or there is none).
    pub(super) body_done: bool,
    /// The destination has another address to try.
    pub(super) next_address: bool,
}

/// What follows a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// The destination's next address, within the same connect deadline.
    OtherAddress,
    /// The same server once more on a fresh connection: the pooled one had been closed.
    Reconnect,
    /// Another server of the group; `body_done` as in [`Facts`], for the answer if none is
    /// left.
    Retry { body_done: bool },
    /// No more tries: answer with the error; `body_done` as in [`Facts`].
    Answer { body_done: bool },
}

/// The verdict on a failure: what follows, and what health and the log are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct After {
    pub(super) next: Next,
    pub(super) report: Report,
}

/// What the failure is reported as (`Action::Record`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Report {
    /// Nothing: a pooled connection the server had closed is not the server's fault.
    Quiet,
    /// Logged, with no health verdict (something was already relayed).
    Log,
    /// Logged, and counted for the server's passive health.
    Health(Outcome),
}

impl Report {
    /// The health verdict, if any.
    pub(super) fn outcome(self) -> Option<Outcome> {
        match self {
            Self::Health(o) => Some(o),
            _ => None,
        }
    }
}

impl Attempts {
    /// A server was picked for the next attempt at a group configured as `u`.
    pub(super) fn begin(&mut self, server: usize, u: &Upstream, now: Instant) {
        self.tried.add(server);
        self.server = server;
        self.count += 1;
        let started = *self.started.get_or_insert(now);
        let allowed = self.count <= u.retries
            && now.saturating_duration_since(started) < u.retry_timeout
            && (self.count as usize) < u.servers.len();
        self.retry = if allowed { Retry::Allowed } else { Retry::No };
        self.interim = None;
        self.proxy = u.proxy_protocol;
    }

    /// A forward destination's first address: one attempt, never another server.
    pub(super) fn begin_destination(&mut self) {
        self.count = 1;
        self.retry = Retry::No;
    }

    /// Whether a retry status (`retry_on`) may send the request to another server.
    pub(super) fn may_retry(&self) -> bool {
        self.retry == Retry::Allowed
    }

    /// What follows `e` at `stage`.
    pub(super) fn after(&self, stage: Stage, e: &Error, f: Facts) -> After {
        let e = match e {
            Error::Upstream(u) => Some(u),
            _ => None,
        };
        let stale = self.conn == Origin::Pooled && f.resendable;
        let failure = |resend: bool, body_done: bool, outcome: Outcome| After {
            next: if resend && self.may_retry() {
                Next::Retry { body_done }
            } else {
                Next::Answer { body_done }
            },
            report: Report::Health(outcome),
        };
        let quiet = |next| After {
            next,
            report: Report::Quiet,
        };
        match stage {
            // A timeout has used up the deadline the next address would share.
            Stage::Connect if f.next_address && e != Some(&UpstreamError::ConnectTimeout) => {
                After {
                    next: Next::OtherAddress,
                    report: Report::Health(Outcome::Failure),
                }
            }
            Stage::Connect => failure(true, f.body_done, Outcome::Failure),
            Stage::SendHead if stale => quiet(Next::Reconnect),
            Stage::SendHead => failure(
                e != Some(&UpstreamError::WriteTimeout),
                f.body_done,
                Outcome::Failure,
            ),
            Stage::SendBody => failure(false, false, Outcome::Failure),
            // Something was relayed already: no retry.
            Stage::ReadHead if self.interim.is_some() => After {
                next: Next::Answer { body_done: false },
                report: Report::Log,
            },
            Stage::ReadHead if e == Some(&UpstreamError::ClosedEarly) && stale => {
                quiet(Next::Reconnect)
            }
            Stage::ReadHead => {
                let invalid = matches!(
                    e,
                    Some(UpstreamError::Invalid(_) | UpstreamError::InvalidFraming(_))
                );
                let outcome = if invalid {
                    Outcome::Invalid
                } else {
                    Outcome::Failure
                };
                failure(!invalid && f.resendable, true, outcome)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a start time for the tests
mod tests {
    use super::*;
    use std::time::Duration;

    fn group(servers: usize, retries: u32) -> Upstream {
        let cfg = format!(
            "[upstreams.g]\nretries = {retries}\nservers = [{}]\n[[routes]]\nupstream = \"g\"\n",
            (0..servers)
                .map(|i| format!("\"127.0.0.1:{}\"", 1000 + i))
                .collect::<Vec<_>>()
                .join(", ")
        );
        crate::config::Config::parse("t.toml", &cfg)
            .unwrap()
            .upstreams[0]
            .clone()
    }

    const F: Facts = Facts {
        resendable: true,
        body_done: true,
        next_address: false,
    };

    #[test]
    fn retries_are_bounded_by_count_servers_and_time() {
        let u = group(3, 5);
        let now = Instant::now();
        let mut a = Attempts::default();
        a.begin(0, &u, now);
        assert!(a.may_retry());
        a.begin(1, &u, now);
        assert!(a.may_retry());
        a.begin(2, &u, now);
        assert!(!a.may_retry(), "no server left");
        let u1 = group(3, 0);
        let mut a = Attempts::default();
        a.begin(0, &u1, now);
        assert!(!a.may_retry(), "retries = 0");
        let mut a = Attempts::default();
        a.begin(0, &u, now);
        a.begin(1, &u, now + u.retry_timeout + Duration::from_millis(1));
        assert!(!a.may_retry(), "past retry_timeout");
    }

    #[test]
    fn what_follows_a_failure() {
        let u = group(2, 1);
        let mut a = Attempts::default();
        a.begin(0, &u, Instant::now());
        let up = Error::Upstream;
        let refused = up(UpstreamError::ConnectFailed("refused".into()));
        let next = |a: &Attempts, s, e: &Error, f| a.after(s, e, f).next;
        assert_eq!(
            next(&a, Stage::Connect, &refused, F),
            Next::Retry { body_done: true }
        );
        let more = Facts {
            next_address: true,
            ..F
        };
        assert_eq!(next(&a, Stage::Connect, &refused, more), Next::OtherAddress);
        assert_eq!(
            next(&a, Stage::Connect, &up(UpstreamError::ConnectTimeout), more),
            Next::Retry { body_done: true }
        );
        // A write that timed out may have reached the server: not sent again.
        assert_eq!(
            next(&a, Stage::SendHead, &up(UpstreamError::WriteTimeout), F),
            Next::Answer { body_done: true }
        );
        // A request that is not idempotent is not sent again after its head went out.
        let once = Facts {
            resendable: false,
            ..F
        };
        let bad = up(UpstreamError::ClosedEarly);
        assert_eq!(
            next(&a, Stage::ReadHead, &bad, once),
            Next::Answer { body_done: true }
        );
        assert_eq!(
            next(&a, Stage::ReadHead, &bad, F),
            Next::Retry { body_done: true }
        );
        // A pooled connection the server had closed: the same server, fresh, unrecorded.
        a.conn = Origin::Pooled;
        let v = a.after(Stage::ReadHead, &bad, F);
        assert_eq!((v.next, v.report), (Next::Reconnect, Report::Quiet));
        assert_eq!(next(&a, Stage::SendHead, &bad, F), Next::Reconnect);
        // Interim responses went out: answered, logged without a health verdict.
        a.interim = Some(InterimBudget::new(1024));
        let v = a.after(Stage::ReadHead, &bad, F);
        assert_eq!(v.next, Next::Answer { body_done: false });
        assert_eq!(v.report, Report::Log);
        // The request body was lost with the connection.
        assert_eq!(
            next(&Attempts::default(), Stage::SendBody, &bad, F),
            Next::Answer { body_done: false }
        );
        // An invalid response counts against the server and is not retried.
        let mut a = Attempts::default();
        a.begin(0, &u, Instant::now());
        let inv = up(UpstreamError::InvalidFraming(
            crate::http::framing::FramingError::BadContentLength,
        ));
        let v = a.after(Stage::ReadHead, &inv, F);
        assert_eq!(v.next, Next::Answer { body_done: true });
        assert_eq!(v.report, Report::Health(Outcome::Invalid));
    }
}
