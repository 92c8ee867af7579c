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
}

impl Default for PassivePolicy {
    fn default() -> Self {
        Self {
            max_fails: 1,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
            fail_on_5xx: false,
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
        };
        if !failed {
            if !matches!(outcome, Outcome::ServerError(_)) {
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
            until: now + cooldown,
            cooldown,
        };
        Some(cooldown)
    }
}

/// Active health checks of one upstream group (nginx `health_check interval=5 fails=2 passes=2
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
    fn ejects_after_max_fails_and_doubles_while_failing() {
        let p = PassivePolicy {
            max_fails: 2,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(35),
            fail_on_5xx: false,
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
}
