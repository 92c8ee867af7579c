//! The forward proxy's authentication as the exchange runs it: trusted credentials pass, others
//! are checked off the worker (`VerifyPassword`) and the request handled again with the
//! outcome. The rules themselves are in [`crate::forward::auth`].

use std::time::Instant;

use super::{Close, Env, Exchange, Finish, Phase, Timer};

/// Where a request's proxy authentication stands.
pub(super) enum Authn {
    User(String),
    /// Refused (407, 429, 400): the answer is written.
    Answered,
    /// Checked off the worker first.
    Verifying,
}

impl Exchange {
    /// Checks the request's `Proxy-Authorization`: trusted credentials pass at once; others
    /// are checked off the worker (`Verifying`); wrong or missing ones get 407, too many
    /// failures 429, malformed ones 400.
    pub(super) fn authenticate(&mut self, buf: &[u8], env: &Env<'_>, now: Instant) -> Authn {
        use crate::forward::auth::{parse_basic, AuthCache, AuthStep, BasicError, Check, Secret};
        let value = crate::http::find_header(buf, &self.headers, b"proxy-authorization");
        let step = match value.map(parse_basic) {
            None | Some(Err(BasicError::NotBasic)) => None,
            Some(Err(BasicError::Malformed)) => {
                self.local_error(400, "malformed Proxy-Authorization credentials", env, now);
                return Authn::Answered;
            }
            Some(Ok((user, password))) => {
                // The outcome of the check this request was sent to (it is handled again
                // once its password was checked).
                match std::mem::take(&mut self.auth) {
                    Check::Passed(u) if u == user => return Authn::User(u),
                    Check::Refused => {
                        self.ask_credentials(env, now);
                        return Authn::Answered;
                    }
                    Check::Unavailable => {
                        self.local_error_with(
                            503,
                            "too many password checks waiting; try again shortly",
                            b"Retry-After: 1\r\n",
                            env,
                            now,
                        );
                        return Authn::Answered;
                    }
                    _ => {}
                }
                let mut scratch = AuthCache::default();
                let mut cache = env.auth.map(|c| c.borrow_mut());
                let cache = cache.as_deref_mut().unwrap_or(&mut scratch);
                let secs = env.date.date_line().secs();
                match cache.lookup(&user, &password, self.client, now, secs) {
                    AuthStep::Verify => {
                        self.auth = Check::Pending(user, Secret(password));
                        self.phase = Phase::Verify;
                        return Authn::Verifying;
                    }
                    s => Some(s),
                }
            }
        };
        match step {
            Some(AuthStep::User(u)) => return Authn::User(u),
            Some(AuthStep::Limited) => self.local_error_with(
                429,
                "too many failed proxy authentication attempts; try again in a minute",
                b"Retry-After: 60\r\n",
                env,
                now,
            ),
            _ => self.ask_credentials(env, now),
        }
        Authn::Answered
    }

    /// 407 with the challenge.
    fn ask_credentials(&mut self, env: &Env<'_>, now: Instant) {
        const CHALLENGE: &[u8] =
            b"Proxy-Authenticate: Basic realm=\"ringway\", charset=\"UTF-8\"\r\n";
        self.local_error_with(
            407,
            "this proxy needs a user name and password",
            CHALLENGE,
            env,
            now,
        );
    }

    /// The check `VerifyPassword` asked for ended (`None`: it could not be checked now). The
    /// request is handled again (io hands the head over once more): as that user when the
    /// password was right, else answered 407 (or 503).
    pub fn handle_verified(&mut self, ok: Option<bool>, env: &Env<'_>, now: Instant) {
        use crate::forward::auth::{AuthCache, Check};
        debug_assert_eq!(self.phase, Phase::Verify);
        let Check::Pending(user, password) = std::mem::take(&mut self.auth) else {
            self.finish(Finish::Close(Close::Now), now);
            return;
        };
        if let Some(ok) = ok {
            let mut scratch = AuthCache::default();
            let mut cache = env.auth.map(|c| c.borrow_mut());
            let cache = cache.as_deref_mut().unwrap_or(&mut scratch);
            let secs = env.date.date_line().secs();
            cache.verified(&user, &password.0, ok, self.client, now, secs);
        }
        self.auth = match ok {
            Some(true) => Check::Passed(user),
            Some(false) => Check::Refused,
            None => Check::Unavailable,
        };
        self.phase = Phase::Head {
            began: true,
            read_first: false,
        };
        self.scanner.reset();
        self.timers.arm(Timer::ClientHeader, &self.timeouts, now);
    }
}
