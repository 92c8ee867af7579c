//! Passive health: what the proxy learns about a server from the requests it sends there.
//!
//! A server that fails `max_fails` times in a row (connect errors, resets before a response,
//! and optionally 5xx answers) is ejected for a cool-down; if it fails again on its first
//! request after coming back, the cool-down doubles, up to a ceiling. A success resets both.
//! State is per worker and per server, updated only by that worker: no lock, no sharing.
//! Time comes in as `now`.

use std::time::{Duration, Instant};

/// The policy of one upstream group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassivePolicy {
    /// Consecutive failures that eject a server (nginx `max_fails`). 0 disables ejection.
    pub max_fails: u32,
    /// First cool-down (nginx `fail_timeout`).
    pub cooldown: Duration,
    /// Ceiling for the doubling cool-down.
    pub max_cooldown: Duration,
    /// Whether a 5xx answer counts as a failure.
    pub fail_on_5xx: bool,
    /// Whether a response the proxy refuses to relay (malformed, or a head over the limit)
    /// counts as a failure (nginx `proxy_next_upstream invalid_header`).
    pub fail_on_invalid: bool,
    /// When every server of the group is ejected, send to the one whose cool-down ends first
    /// instead of answering 503 (a passive verdict is a guess; refusing all traffic on it turns a
    /// blip into an outage).
    pub fail_open: bool,
}

impl Default for PassivePolicy {
    fn default() -> Self {
        Self {
            max_fails: 1,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
            fail_on_5xx: false,
            fail_on_invalid: false,
            fail_open: true,
        }
    }
}

/// What happened to one request sent to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect error, timeout or reset before any response byte.
    Failure,
    /// A response with this 5xx status.
    ServerError(u16),
    /// A response the proxy refused to relay (malformed, or too large a head).
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Healthy {
        failures: u32,
    },
    Ejected {
        until: Instant,
        cooldown: Duration,
    },
    /// Back after a cool-down; one more failure ejects it again for twice as long.
    Probation {
        last_cooldown: Duration,
    },
}

/// One server's passive health on one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHealth {
    state: State,
}

impl Default for ServerHealth {
    fn default() -> Self {
        Self {
            state: State::Healthy { failures: 0 },
        }
    }
}

impl ServerHealth {
    /// May a request be sent now?
    pub fn available(&mut self, now: Instant) -> bool {
        if let State::Ejected { until, cooldown } = self.state {
            if now < until {
                return false;
            }
            self.state = State::Probation {
                last_cooldown: cooldown,
            };
        }
        true
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        matches!(self.state, State::Ejected { until, .. } if now < until)
    }

    /// When the current ejection ends (`None`: not ejected).
    pub fn ejected_until(&self) -> Option<Instant> {
        match self.state {
            State::Ejected { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Records the outcome of a request; returns the cool-down if this ejected the server.
    #[must_use]
    pub fn record(
        &mut self,
        outcome: Outcome,
        policy: &PassivePolicy,
        now: Instant,
    ) -> Option<Duration> {
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::ServerError(_) => policy.fail_on_5xx,
            Outcome::Invalid => policy.fail_on_invalid,
        };
        if !failed {
            if outcome == Outcome::Success {
                self.state = State::Healthy { failures: 0 };
            }
            return None;
        }
        if policy.max_fails == 0 {
            return None;
        }
        let cooldown = match self.state {
            State::Healthy { failures } if failures + 1 < policy.max_fails => {
                self.state = State::Healthy {
                    failures: failures + 1,
                };
                return None;
            }
            State::Healthy { .. } => policy.cooldown,
            State::Probation { last_cooldown } => (last_cooldown * 2).min(policy.max_cooldown),
            // Requests already in flight when it was ejected: keep the current cool-down.
            State::Ejected { .. } => return None,
        };
        self.state = State::Ejected {
            until: now.checked_add(cooldown).unwrap_or(now),
            cooldown,
        };
        Some(cooldown)
    }
}

/// Fail-open choice for a group whose every usable server is ejected: among the servers for
/// which `candidate` holds (usable but for passive health), the one whose cool-down ends first,
/// i.e. the one that failed least recently.
pub fn least_recently_failed(
    health: &[ServerHealth],
    candidate: impl Fn(usize) -> bool,
) -> Option<usize> {
    (0..health.len())
        .filter(|&i| candidate(i))
        .filter_map(|i| health[i].ejected_until().map(|u| (u, i)))
        .min()
        .map(|(_, i)| i)
}

/// Active health checks of one upstream group (nginx `health_check interval=5 fails=2 passes=2
/// What the status page and metrics say of a server, from what the workers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Up,
    /// Passive checks took it out for a while.
    Ejected,
    /// Marked `down` in the configuration, or failing its active check.
    Down,
    /// Marked `down` with requests still in flight on it.
    Draining,
}

impl ServerState {
    /// `marked_down`: `down = true` in the configuration; `checked_up`: the active check's
    /// verdict (up when none runs); `ejected`: any worker ejected it; `in_flight`: requests on
    /// it across workers.
    pub fn of(marked_down: bool, checked_up: bool, ejected: bool, in_flight: u32) -> Self {
        match () {
            _ if marked_down && in_flight > 0 => Self::Draining,
            _ if marked_down || !checked_up => Self::Down,
            _ if ejected => Self::Ejected,
            _ => Self::Up,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Ejected => "ejected",
            Self::Down => "down",
            Self::Draining => "draining",
        }
    }
}

/// uri=/health`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivePolicy {
    pub method: String,
    pub uri: String,
    /// Host header of the probe; `None`: the server's address.
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that mark a server down.
    pub fails: u32,
    /// Consecutive passed probes that mark it up again.
    pub passes: u32,
    /// Statuses that pass, inclusive.
    pub status: (u16, u16),
}

impl ActivePolicy {
    pub fn new(uri: &str) -> Self {
        Self {
            method: "GET".into(),
            uri: uri.into(),
            host: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fails: 2,
            passes: 2,
            status: (200, 399),
        }
    }

    /// The probe request for a server whose address is `addr`.
    pub fn request(&self, addr: &str) -> Vec<u8> {
        format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringway-health\r\nConnection: close\r\n\r\n",
            self.method,
            self.uri,
            self.host.as_deref().unwrap_or(addr)
        )
        .into_bytes()
    }

    /// Whether a probe's response head passes. `head` is what was read before the blank line.
    pub fn passes(&self, head: &[u8]) -> bool {
        let mut hs = Vec::new();
        let limits = crate::http::Limits::default();
        match crate::http::parse_response(head, &mut hs, &limits) {
            Ok(r) => (self.status.0..=self.status.1).contains(&r.status),
            Err(_) => false,
        }
    }
}

/// One server's state under active checks. Servers start up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveHealth {
    down: bool,
    streak: u32,
}

impl ActiveHealth {
    pub fn is_up(&self) -> bool {
        !self.down
    }

    /// Records a probe result; returns the new state when it changed (`true`: up).
    #[must_use]
    pub fn record(&mut self, passed: bool, p: &ActivePolicy) -> Option<bool> {
        if passed != self.down {
            // A result in line with the current state.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.down { p.passes } else { p.fails };
        if self.streak >= needed.max(1) {
            self.down = !self.down;
            self.streak = 0;
            return Some(!self.down);
        }
        None
    }
}

#[cfg(test)]
// A base instant for the tests; everything after it is computed, never read from the clock.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn server_state_labels() {
        assert_eq!(ServerState::of(false, true, false, 0).label(), "up");
        assert_eq!(ServerState::of(false, true, true, 3).label(), "ejected");
        assert_eq!(ServerState::of(false, false, true, 0).label(), "down");
        assert_eq!(ServerState::of(true, true, false, 0).label(), "down");
        assert_eq!(ServerState::of(true, true, false, 2).label(), "draining");
    }

    #[test]
    fn ejects_after_max_fails_and_doubles_while_failing() {
        let p = PassivePolicy {
            max_fails: 2,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(35),
            ..PassivePolicy::default()
        };
        let t0 = Instant::now();
        let mut h = ServerHealth::default();
        assert!(h.available(t0));
        assert_eq!(h.record(Outcome::Failure, &p, t0), None);
        assert_eq!(
            h.record(Outcome::Failure, &p, t0),
            Some(Duration::from_secs(10))
        );
        assert!(!h.available(t0 + Duration::from_secs(9)));
        assert!(h.available(t0 + Duration::from_secs(10)));
        // Fails again on probation: 20 s, then 35 s (the ceiling).
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            h.record(Outcome::Failure, &p, t1),
            Some(Duration::from_secs(20))
        );
        assert!(h.available(t1 + Duration::from_secs(20)));
        assert_eq!(
            h.record(Outcome::Failure, &p, t1 + Duration::from_secs(20)),
            Some(Duration::from_secs(35))
        );
        // A success resets everything.
        let t2 = t1 + Duration::from_secs(60);
        assert!(h.available(t2));
        assert_eq!(h.record(Outcome::Success, &p, t2), None);
        assert_eq!(h.record(Outcome::Failure, &p, t2), None);
        assert_eq!(
            h.record(Outcome::Failure, &p, t2),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn active_checks_need_fails_then_passes_in_a_row() {
        let p = ActivePolicy::new("/health");
        let mut h = ActiveHealth::default();
        assert!(h.is_up());
        assert_eq!(h.record(false, &p), None);
        assert_eq!(h.record(true, &p), None, "a pass breaks the streak");
        assert_eq!(h.record(false, &p), None);
        assert_eq!(h.record(false, &p), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(true, &p), None);
        assert_eq!(h.record(true, &p), Some(true));
        assert!(h.is_up());
        assert!(p.passes(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!p.passes(b"HTTP/1.1 503 Busy\r\n\r\n"));
        assert!(!p.passes(b"garbage\r\n\r\n"));
        let req = String::from_utf8(p.request("10.0.0.1:80")).unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\nHost: 10.0.0.1:80\r\n"));
    }

    #[test]
    fn server_errors_count_only_when_configured() {
        let t = Instant::now();
        let mut h = ServerHealth::default();
        let p = PassivePolicy::default();
        assert_eq!(h.record(Outcome::ServerError(502), &p, t), None);
        assert!(h.available(t));
        let p = PassivePolicy {
            fail_on_5xx: true,
            ..p
        };
        assert_eq!(
            h.record(Outcome::ServerError(502), &p, t),
            Some(Duration::from_secs(10))
        );
        assert!(h.is_ejected(t));
        let off = PassivePolicy { max_fails: 0, ..p };
        let mut h = ServerHealth::default();
        assert_eq!(h.record(Outcome::Failure, &off, t), None);
        assert!(h.available(t));
    }

    #[test]
    fn refused_responses_count_only_when_configured() {
        let t = Instant::now();
        let mut h = ServerHealth::default();
        let p = PassivePolicy::default();
        assert_eq!(h.record(Outcome::Invalid, &p, t), None);
        assert!(h.available(t));
        let p = PassivePolicy {
            fail_on_invalid: true,
            ..p
        };
        assert!(h.record(Outcome::Invalid, &p, t).is_some());
        assert!(h.is_ejected(t));
    }

    #[test]
    fn fail_open_picks_the_server_that_comes_back_first() {
        let t = Instant::now();
        let p = PassivePolicy::default();
        let mut hs = [ServerHealth::default(); 3];
        let _ = hs[0].record(Outcome::Failure, &p, t + Duration::from_secs(2));
        let _ = hs[1].record(Outcome::Failure, &p, t);
        let _ = hs[2].record(Outcome::Failure, &p, t + Duration::from_secs(1));
        assert_eq!(least_recently_failed(&hs, |_| true), Some(1));
        assert_eq!(least_recently_failed(&hs, |i| i != 1), Some(2));
        assert_eq!(least_recently_failed(&hs, |_| false), None);
        // Only ejected servers are fall-backs: a healthy one would have been picked already.
        assert_eq!(
            least_recently_failed(&[ServerHealth::default()], |_| true),
            None
        );
    }
}
