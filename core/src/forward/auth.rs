//! Proxy authentication: Basic credentials (RFC 7617) in `Proxy-Authorization`, checked against
//! an htpasswd file (the entry kinds Apache's `htpasswd` writes that are still sound: apr1 MD5,
//! its default; bcrypt; SHA-256 and SHA-512 crypt).
//!
//! Checking a password is deliberately slow (bcrypt, thousands of hash rounds), so each worker
//! keeps the credentials that passed for a while ([`AuthCache`], emptied on every reload) and
//! limits how many wrong ones a client may try.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

/// Users and their password hashes, from an htpasswd file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    /// Parses htpasswd text: `user:hash` lines; empty lines and `#` comments are skipped.
    /// An error gives the 1-based line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let Some((user, hash)) = line.split_once(':') else {
                return Err((n, "expected user:hash".into()));
            };
            if user.is_empty() {
                return Err((n, "empty user name".into()));
            }
            let supported = hash.starts_with("$apr1$")
                || hash.starts_with("$2y$")
                || hash.starts_with("$2a$")
                || hash.starts_with("$2b$")
                || hash.starts_with("$5$")
                || hash.starts_with("$6$");
            if !supported {
                let kind = if hash.starts_with("{SHA}") {
                    "unsalted SHA-1 ({SHA})"
                } else if hash.starts_with("$1$") {
                    "MD5-crypt ($1$)"
                } else if hash.len() == 13 {
                    "DES crypt"
                } else {
                    "plain text or unknown"
                };
                return Err((
                    n,
                    format!(
                        "user {user:?}: {kind} passwords are not accepted; use `htpasswd -B` (bcrypt) or `htpasswd -m` (apr1)"
                    ),
                ));
            }
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err((n, format!("user {user:?} is listed twice")));
            }
        }
        Ok(Self { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Unknown users cost a comparison too, so their absence
    /// does not show in the timing more than needed.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(user) else {
            let _ = apr1(password, b"timingxx");
            return false;
        };
        if let Some(rest) = hash.strip_prefix("$apr1$") {
            let salt = rest.split('$').next().unwrap_or("");
            return constant_time_eq(apr1(password, salt.as_bytes()).as_bytes(), hash.as_bytes());
        }
        if hash.starts_with("$2") {
            return bcrypt::verify(password, hash).unwrap_or(false);
        }
        use sha_crypt::PasswordVerifier;
        sha_crypt::ShaCrypt::default()
            .verify_password(password, hash.as_str())
            .is_ok()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5 password hash (`$apr1$SALT$HASH`): the MD5-crypt algorithm with the `$apr1$`
/// magic. `salt` is at most 8 bytes (longer is cut, as Apache does).
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let k = left.min(16);
        ctx.update(&alt[..k]);
        left -= k;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut digest = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(digest);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(digest);
        } else {
            c.update(password);
        }
        digest = c.finalize();
    }
    const ITOA: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let d = digest;
    let mut out = String::with_capacity(37);
    out.push_str("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(ITOA[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c]),
            4,
        );
    }
    put(u32::from(d[11]), 2);
    out
}

/// Why a `Proxy-Authorization` value was not accepted before any password check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BasicError {
    /// Another scheme than Basic: ask again (407).
    NotBasic,
    /// Basic, but not base64 of `user:password` in UTF-8 (400).
    Malformed,
}

/// The user and password of a Basic credentials value (`Basic dXNlcjpwYXNz`). The user is
/// everything before the first colon; the password may contain colons (RFC 7617 §2).
pub fn parse_basic(value: &[u8]) -> Result<(String, Vec<u8>), BasicError> {
    let v = crate::http::trim_ows(value);
    let (scheme, rest) = match v.iter().position(|&b| b == b' ') {
        Some(i) => (&v[..i], crate::http::trim_ows(&v[i + 1..])),
        None => (v, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(BasicError::NotBasic);
    }
    let raw = base64_decode(rest).ok_or(BasicError::Malformed)?;
    let colon = raw
        .iter()
        .position(|&b| b == b':')
        .ok_or(BasicError::Malformed)?;
    let user = std::str::from_utf8(&raw[..colon]).map_err(|_| BasicError::Malformed)?;
    if user.is_empty() || user.chars().any(char::is_control) {
        return Err(BasicError::Malformed);
    }
    std::str::from_utf8(&raw[colon + 1..]).map_err(|_| BasicError::Malformed)?;
    Ok((user.to_string(), raw[colon + 1..].to_vec()))
}

/// Standard base64 with padding (what Basic credentials use); `None` for anything else.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(4) || s.len() > 4096 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let chunks = s.len() / 4;
    for (i, q) in s.chunks(4).enumerate() {
        let last = i + 1 == chunks;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Wrong credentials a client may send per window before it is refused for the rest of it.
pub const MAX_FAILURES: u32 = 10;
/// The window for [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long credentials that passed are trusted without checking the hash again.
pub const TRUST: Duration = Duration::from_secs(300);

/// What [`AuthCache::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// The user these credentials belong to.
    User(String),
    /// Unknown user or wrong password.
    Wrong,
    /// Too many wrong attempts from this client lately.
    Limited,
}

/// One worker's memory of credentials that passed and of clients that failed.
#[derive(Debug, Default)]
pub struct AuthCache {
    passed: HashMap<Vec<u8>, (String, Instant)>,
    failures: HashMap<IpAddr, (u32, Instant)>,
}

/// Entries kept before the oldest are forgotten.
const CACHE_MAX: usize = 10_000;

impl AuthCache {
    /// Checks the Basic credentials `value` (already known to parse) of `client`.
    pub fn check(
        &mut self,
        users: &Htpasswd,
        value: &[u8],
        user: &str,
        password: &[u8],
        client: IpAddr,
        now: Instant,
    ) -> AuthResult {
        if let Some((u, until)) = self.passed.get(value) {
            if now < *until {
                return AuthResult::User(u.clone());
            }
        }
        if let Some(&(n, since)) = self.failures.get(&client) {
            if now.saturating_duration_since(since) < FAILURE_WINDOW && n >= MAX_FAILURES {
                return AuthResult::Limited;
            }
        }
        if users.verify(user, password) {
            if self.passed.len() >= CACHE_MAX {
                self.passed.retain(|_, (_, until)| now < *until);
                if self.passed.len() >= CACHE_MAX {
                    self.passed.clear();
                }
            }
            self.passed
                .insert(value.to_vec(), (user.to_string(), now + TRUST));
            return AuthResult::User(user.to_string());
        }
        if self.failures.len() >= CACHE_MAX {
            self.failures
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < FAILURE_WINDOW);
        }
        let e = self.failures.entry(client).or_insert((0, now));
        if now.saturating_duration_since(e.1) >= FAILURE_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
        AuthResult::Wrong
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_apache_and_openssl() {
        // `openssl passwd -apr1 -salt r31..... myPassword`
        assert_eq!(
            apr1(b"myPassword", b"r31....."),
            "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"
        );
    }

    #[test]
    fn every_sound_htpasswd_kind_verifies() {
        let text = "\
# made with openssl passwd and the bcrypt reference vectors
alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/
bob:$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA
carol:$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1

dave:$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW
";
        let h = Htpasswd::parse(text).unwrap();
        assert_eq!(h.len(), 4);
        assert!(h.verify("alice", b"myPassword"));
        assert!(!h.verify("alice", b"mypassword"));
        assert!(h.verify("bob", b"secret") && !h.verify("bob", b"Secret"));
        assert!(h.verify("carol", b"secret") && !h.verify("carol", b""));
        assert!(h.verify("dave", b"U*U") && !h.verify("dave", b"U*V"));
        assert!(!h.verify("eve", b"secret"));
    }

    #[test]
    fn unsound_or_broken_entries_are_config_errors() {
        for (text, line, needle) in [
            ("a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", 1, "unsalted"),
            ("\na:$1$abc$def", 2, "MD5-crypt"),
            ("a:plain", 1, "plain text"),
            ("nocolon", 1, "user:hash"),
            (":$apr1$x$y", 1, "empty user"),
            ("a:$apr1$x$y\na:$apr1$x$z", 2, "twice"),
        ] {
            let (n, msg) = Htpasswd::parse(text).unwrap_err();
            assert_eq!(n, line, "{text}");
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn basic_credentials() {
        // "user:pa:ss" — the password keeps its colon.
        assert_eq!(
            parse_basic(b"Basic dXNlcjpwYTpzcw=="),
            Ok(("user".into(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            parse_basic(b"basic  dTpw "),
            Ok(("u".into(), b"p".to_vec()))
        );
        assert_eq!(parse_basic(b"Bearer abc"), Err(BasicError::NotBasic));
        assert_eq!(parse_basic(b"Basic"), Err(BasicError::Malformed));
        assert_eq!(parse_basic(b"Basic !!!!"), Err(BasicError::Malformed));
        assert_eq!(parse_basic(b"Basic dXNlcg=="), Err(BasicError::Malformed)); // no colon
        assert_eq!(parse_basic(b"Basic OnA="), Err(BasicError::Malformed)); // empty user
        assert_eq!(parse_basic(b"Basic /w=="), Err(BasicError::Malformed)); // not UTF-8
                                                                            // Non-ASCII UTF-8 is fine (RFC 7617 charset).
        let v = format!("Basic {}", "w7xzZXI6cMOkc3M=");
        assert_eq!(
            parse_basic(v.as_bytes()),
            Ok(("üser".into(), "päss".as_bytes().to_vec()))
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn passed_credentials_are_cached_and_failures_limited() {
        let h = Htpasswd::parse("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/").unwrap();
        let mut c = AuthCache::default();
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let ok = |c: &mut AuthCache, t| c.check(&h, b"tok", "alice", b"myPassword", ip, t);
        assert_eq!(ok(&mut c, now), AuthResult::User("alice".into()));
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                c.check(&h, b"bad", "alice", b"x", ip, now),
                AuthResult::Wrong
            );
        }
        assert_eq!(
            c.check(&h, b"bad", "alice", b"x", ip, now),
            AuthResult::Limited
        );
        // Good credentials already known still pass; the limit ends with its window.
        assert_eq!(ok(&mut c, now), AuthResult::User("alice".into()));
        let later = now + FAILURE_WINDOW;
        assert_eq!(
            c.check(&h, b"bad", "alice", b"x", ip, later),
            AuthResult::Wrong
        );
    }
}
