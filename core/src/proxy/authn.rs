//! The forward proxy's authentication as a step of the exchange: trusted credentials pass,
//! others are checked off the worker (`VerifyPassword`) and the request handled again with the
//! outcome. A sub-machine over the request's `Check` that returns a verdict; the rules
//! themselves are in [`crate::forward::auth`].

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::Instant;

use crate::forward::auth::{parse_basic, AuthCache, AuthStep, BasicError, Check, Secret};

/// What the exchange does with the request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Authn {
    /// On as this user.
    User(String),
    /// Refused: answer with this status, text and extra field lines (407 with the challenge,
    /// 429, 503, 400).
    Refuse(u16, &'static str, &'static [u8]),
    /// The password is checked off the worker first (the check is in `Check::Pending`).
    Verify,
}

/// The challenge a 407 carries.
const CHALLENGE: &[u8] = b"Proxy-Authenticate: Basic realm=\"ringway\", charset=\"UTF-8\"\r\n";

fn ask_credentials() -> Authn {
    Authn::Refuse(407, "this proxy needs a user name and password", CHALLENGE)
}

/// Checks the request's `Proxy-Authorization` value (`None`: the field is absent) against the
/// worker's memory of credentials (`cache`, a scratch one without it) and `check`, the outcome
/// of a check this request was sent to: trusted credentials pass at once; others are checked
/// off the worker (`Verify`); wrong or missing ones get 407, too many failures 429, malformed
/// ones 400.
pub(super) fn authenticate(
    value: Option<&[u8]>,
    check: &mut Check,
    cache: Option<&RefCell<AuthCache>>,
    client: IpAddr,
    (now, secs): (Instant, u64),
) -> Authn {
    let (user, password) = match value.map(parse_basic) {
        None | Some(Err(BasicError::NotBasic)) => return ask_credentials(),
        Some(Err(BasicError::Malformed)) => {
            return Authn::Refuse(400, "malformed Proxy-Authorization credentials", b"")
        }
        Some(Ok(c)) => c,
    };
    // The outcome of the check this request was sent to (it is handled again once its
    // password was checked).
    match std::mem::take(check) {
        Check::Passed(u) if u == user => return Authn::User(u),
        Check::Refused => return ask_credentials(),
        Check::Unavailable => {
            let detail = "too many password checks waiting; try again shortly";
            return Authn::Refuse(503, detail, b"Retry-After: 1\r\n");
        }
        _ => {}
    }
    let mut scratch = AuthCache::default();
    let mut cache = cache.map(RefCell::borrow_mut);
    let cache = cache.as_deref_mut().unwrap_or(&mut scratch);
    match cache.lookup(&user, &password, client, now, secs) {
        AuthStep::Verify => {
            *check = Check::Pending(user, Secret(password));
            Authn::Verify
        }
        AuthStep::User(u) => Authn::User(u),
        AuthStep::Limited => Authn::Refuse(
            429,
            "too many failed proxy authentication attempts; try again in a minute",
            b"Retry-After: 60\r\n",
        ),
    }
}

/// The check `VerifyPassword` asked for ended (`None`: it could not be checked now): remembered
/// in the worker's cache, and left in `check` for the request, which is handled again.
pub(super) fn verified(
    ok: Option<bool>,
    check: &mut Check,
    cache: Option<&RefCell<AuthCache>>,
    client: IpAddr,
    (now, secs): (Instant, u64),
) {
    let Check::Pending(user, password) = std::mem::take(check) else {
        return;
    };
    if let Some(ok) = ok {
        let mut scratch = AuthCache::default();
        let mut cache = cache.map(RefCell::borrow_mut);
        let cache = cache.as_deref_mut().unwrap_or(&mut scratch);
        cache.verified(&user, &password.0, ok, client, now, secs);
    }
    *check = match ok {
        Some(true) => Check::Passed(user),
        Some(false) => Check::Refused,
        None => Check::Unavailable,
    };
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a start time for the tests
mod tests {
    use super::*;

    #[test]
    fn credentials_verdicts() {
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let when = (Instant::now(), 1_000_000);
        let mut check = Check::None;
        let a = |v: Option<&[u8]>, check: &mut Check| authenticate(v, check, None, client, when);
        assert!(matches!(
            a(None, &mut check),
            Authn::Refuse(407, _, CHALLENGE)
        ));
        assert!(matches!(
            a(Some(b"Bearer x"), &mut check),
            Authn::Refuse(407, ..)
        ));
        assert!(matches!(
            a(Some(b"Basic !!"), &mut check),
            Authn::Refuse(400, ..)
        ));
        // "alice:secret": checked off the worker first.
        let v = Some(&b"Basic YWxpY2U6c2VjcmV0"[..]);
        assert_eq!(a(v, &mut check), Authn::Verify);
        assert!(matches!(check, Check::Pending(ref u, _) if u == "alice"));
        verified(Some(true), &mut check, None, client, when);
        assert_eq!(a(v, &mut check), Authn::User("alice".into()));
        assert_eq!(
            a(v, &mut check),
            Authn::Verify,
            "a scratch cache remembers nothing"
        );
        verified(Some(false), &mut check, None, client, when);
        assert!(matches!(a(v, &mut check), Authn::Refuse(407, ..)));
        let _ = a(v, &mut check);
        verified(None, &mut check, None, client, when);
        assert!(matches!(
            a(v, &mut check),
            Authn::Refuse(503, _, b"Retry-After: 1\r\n")
        ));
    }
}
