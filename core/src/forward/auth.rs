//! Proxy authentication: Basic credentials (RFC 7617) in `Proxy-Authorization`, checked against
//! an htpasswd file (the entry kinds Apache's `htpasswd` writes that are still sound: apr1 MD5,
//! its default; bcrypt; SHA-256 and SHA-512 crypt).
//!
//! Checking a password is deliberately slow (bcrypt, thousands of hash rounds), so it never runs
//! on a worker: core says when a check is needed (`AuthStep::Verify`) and io runs it on a thread
//! of its own. Each worker keeps the credentials that passed for a while ([`AuthCache`], emptied
//! on every reload), keyed by user and a digest of the password (however the header spells
//! them). Wrong credentials are counted across workers ([`Failures`]: per client address, an IPv6
//! client by its /64, and per user), and an unknown user costs what the file's strongest hash
//! costs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

/// Users and their password hashes, from an htpasswd file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// The entry that costs most to check: what an unknown user is checked against, so that
    /// asking for one costs an attacker as much as asking for a real one.
    strongest: Option<String>,
}

/// A rough cost of checking `hash` in nanoseconds, for choosing the strongest entry.
fn cost(hash: &str) -> u64 {
    if let Some(rest) = hash.strip_prefix("$2") {
        let c: u32 = rest
            .get(2..4)
            .and_then(|c| c.parse().ok())
            .unwrap_or(10)
            .min(31);
        return 60_000 * (1u64 << c);
    }
    if hash.starts_with("$5$") || hash.starts_with("$6$") {
        let rounds = hash
            .split('$')
            .nth(2)
            .and_then(|r| r.strip_prefix("rounds="))
            .and_then(|r| r.parse().ok())
            .unwrap_or(5000u64);
        return rounds * 1000;
    }
    300_000
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
        let strongest = users.values().max_by_key(|h| cost(h)).cloned();
        Ok(Self { users, strongest })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Slow on purpose: run it off the request path. An unknown
    /// user is checked against the file's strongest entry (and refused), so that it costs and
    /// takes as long as a real one.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(user) else {
            if let Some(h) = &self.strongest {
                let _ = check(h, password);
            }
            return false;
        };
        check(hash, password)
    }
}

/// Whether `password` matches the htpasswd `hash`.
fn check(hash: &str, password: &[u8]) -> bool {
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        let salt = rest.split('$').next().unwrap_or("");
        return constant_time_eq(apr1(password, salt.as_bytes()).as_bytes(), hash.as_bytes());
    }
    if hash.starts_with("$2") {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    use sha_crypt::PasswordVerifier;
    sha_crypt::ShaCrypt::default()
        .verify_password(password, hash)
        .is_ok()
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

/// Wrong credentials a client address (an IPv6 client's /64) may send per window before it is
/// refused for the rest of it.
pub const MAX_FAILURES: u32 = 10;
/// Wrong passwords one user name may get per window, from anywhere (many addresses trying one
/// account).
pub const MAX_USER_FAILURES: u32 = 30;
/// The window for [`MAX_FAILURES`] and [`MAX_USER_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long credentials that passed are trusted without checking the hash again.
pub const TRUST: Duration = Duration::from_secs(300);
/// How long credentials that passed still pass while their address or user is being limited
/// (the real user behind an address an attacker shares is not locked out).
pub const KNOWN: Duration = Duration::from_secs(24 * 3600);

/// Counters of wrong credentials shared by every worker of the process: a fixed table of
/// buckets (a window start and a count packed in one atomic word), keyed with a per-process
/// secret. Written only when a check fails and read only when one is needed, never on a request
/// whose credentials are trusted. Buckets that collide count together, which only limits
/// sooner.
pub struct Failures {
    clients: Box<[AtomicU64]>,
    users: Box<[AtomicU64]>,
    secret: std::collections::hash_map::RandomState,
}

const FAILURE_BUCKETS: usize = 4096;

impl Default for Failures {
    fn default() -> Self {
        let table = || (0..FAILURE_BUCKETS).map(|_| AtomicU64::new(0)).collect();
        Self {
            clients: table(),
            users: table(),
            secret: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl std::fmt::Debug for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Failures")
    }
}

/// What limits count an address as: IPv4 whole, IPv6 by its /64 (one subscriber's block).
fn client_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&v6.octets()[..8]);
            k[8] = 6;
            k
        }
        IpAddr::V6(v6) => client_key(IpAddr::V4(v6.to_ipv4_mapped().unwrap_or([0; 4].into()))),
        IpAddr::V4(v4) => {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&v4.octets());
            k
        }
    }
}

impl Failures {
    fn slot<'a>(&self, table: &'a [AtomicU64], key: &[u8]) -> &'a AtomicU64 {
        use std::hash::BuildHasher;
        &table[(self.secret.hash_one(key) as usize) % FAILURE_BUCKETS]
    }

    /// The count in `word` at `now` (whole seconds): zero once its window has passed.
    fn count(word: u64, now: u64) -> u32 {
        let start = word >> 32;
        if now.saturating_sub(start) >= FAILURE_WINDOW.as_secs() {
            0
        } else {
            word as u32
        }
    }

    fn add(slot: &AtomicU64, now: u64) {
        let mut word = slot.load(Ordering::Acquire);
        loop {
            let next = match Self::count(word, now) {
                0 => (now << 32) | 1,
                n => (word & !0xffff_ffff) | u64::from(n.saturating_add(1)),
            };
            match slot.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(w) => word = w,
            }
        }
    }

    /// Whether `client` or `user` failed too often lately.
    pub fn limited(&self, client: IpAddr, user: &str, now: u64) -> bool {
        let c = self
            .slot(&self.clients, &client_key(client))
            .load(Ordering::Acquire);
        let u = self
            .slot(&self.users, user.as_bytes())
            .load(Ordering::Acquire);
        Self::count(c, now) >= MAX_FAILURES || Self::count(u, now) >= MAX_USER_FAILURES
    }

    /// Counts a wrong password (or an unknown user) from `client` for `user`.
    pub fn record(&self, client: IpAddr, user: &str, now: u64) {
        Self::add(self.slot(&self.clients, &client_key(client)), now);
        Self::add(self.slot(&self.users, user.as_bytes()), now);
    }
}

/// A password on its way to be checked: its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where the current request's credentials stand (the exchange keeps one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Check {
    #[default]
    None,
    /// Sent to be checked off the worker.
    Pending(String, Secret),
    /// Checked and right: the request goes on as this user.
    Passed(String),
    /// Checked and wrong: 407.
    Refused,
    /// Could not be checked now (too many checks waiting): 503.
    Unavailable,
}

/// What [`AuthCache::lookup`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// Trusted credentials of this user.
    User(String),
    /// Too many wrong attempts from this client or for this user lately.
    Limited,
    /// The password must be checked against its hash (slow: off the worker), then
    /// [`AuthCache::verified`] told the outcome.
    Verify,
}

/// A user and a digest of the password: how trusted credentials are remembered, whatever
/// spelling of the header carried them, and without keeping the password itself.
type Credentials = (String, [u8; 32]);

fn credentials(user: &str, password: &[u8]) -> Credentials {
    let mut d = sha2::Sha256::new();
    sha2::Digest::update(&mut d, user.as_bytes());
    sha2::Digest::update(&mut d, [0u8]);
    sha2::Digest::update(&mut d, password);
    (user.to_string(), sha2::Digest::finalize(d).into())
}

/// One worker's memory of credentials that passed, with the process's failure counters.
#[derive(Debug, Default)]
pub struct AuthCache {
    /// Trusted until the instant: no check needed.
    passed: HashMap<Credentials, Instant>,
    /// Passed before, until the instant: still accepted while limited.
    known: HashMap<Credentials, Instant>,
    failures: Arc<Failures>,
}

/// Entries kept before the oldest are forgotten.
const CACHE_MAX: usize = 10_000;

impl AuthCache {
    /// A cache that counts failures in `failures` (shared by the process's workers).
    pub fn new(failures: Arc<Failures>) -> Self {
        Self {
            passed: HashMap::new(),
            known: HashMap::new(),
            failures,
        }
    }

    /// What to do with `user`'s `password` from `client`; `secs`: whole seconds (the clock of
    /// the failure windows).
    pub fn lookup(
        &mut self,
        user: &str,
        password: &[u8],
        client: IpAddr,
        now: Instant,
        secs: u64,
    ) -> AuthStep {
        let creds = credentials(user, password);
        if self.passed.get(&creds).is_some_and(|until| now < *until) {
            return AuthStep::User(creds.0);
        }
        if self.failures.limited(client, user, secs) {
            if self.known.get(&creds).is_some_and(|until| now < *until) {
                return AuthStep::User(creds.0);
            }
            return AuthStep::Limited;
        }
        AuthStep::Verify
    }

    /// The outcome of a check that [`lookup`](Self::lookup) asked for.
    pub fn verified(
        &mut self,
        user: &str,
        password: &[u8],
        ok: bool,
        client: IpAddr,
        now: Instant,
        secs: u64,
    ) {
        if !ok {
            self.failures.record(client, user, secs);
            return;
        }
        for (map, ttl) in [(&mut self.passed, TRUST), (&mut self.known, KNOWN)] {
            if map.len() >= CACHE_MAX {
                map.retain(|_, until| now < *until);
                if map.len() >= CACHE_MAX {
                    map.clear();
                }
            }
            map.insert(credentials(user, password), now + ttl);
        }
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
    fn passed_credentials_are_trusted_and_failures_limited_across_spellings_and_addresses() {
        let mut c = AuthCache::default();
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = 1_000_000;
        assert_eq!(c.lookup("alice", b"pw", ip, now, t), AuthStep::Verify);
        c.verified("alice", b"pw", true, ip, now, t);
        // Trusted by user and password, however the header spelled them.
        assert_eq!(
            c.lookup("alice", b"pw", ip, now, t),
            AuthStep::User("alice".into())
        );
        for _ in 0..MAX_FAILURES {
            assert_eq!(c.lookup("alice", b"x", ip, now, t), AuthStep::Verify);
            c.verified("alice", b"x", false, ip, now, t);
        }
        assert_eq!(c.lookup("alice", b"y", ip, now, t), AuthStep::Limited);
        // The real user's known password still passes, after its trust ran out too.
        let later = now + TRUST;
        assert_eq!(
            c.lookup("alice", b"pw", ip, later, t + 1),
            AuthStep::User("alice".into())
        );
        // Another worker shares the counts; the limit ends with its window.
        let mut other = AuthCache::new(c.failures.clone());
        assert_eq!(other.lookup("bob", b"z", ip, now, t), AuthStep::Limited);
        assert_eq!(other.lookup("bob", b"z", ip, now, t + 60), AuthStep::Verify);
        // An IPv6 client is one /64: its other addresses share the count.
        let f = Failures::default();
        for i in 0..MAX_FAILURES {
            let a: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            f.record(a, &format!("u{i}"), t);
        }
        assert!(f.limited("2001:db8:1:2::ffff".parse().unwrap(), "v", t));
        // Other /64s are not, but for one that shares the count's bucket (1 in 4,096 each,
        // the buckets keyed by a secret drawn at start): at most one of eight.
        let other_nets = (0..8)
            .filter(|i| f.limited(format!("2001:db8:1:{}::1", i + 3).parse().unwrap(), "v", t))
            .count();
        assert!(other_nets <= 1, "{other_nets} other /64s limited");
        // Many addresses against one user.
        let f = Failures::default();
        for i in 0..MAX_USER_FAILURES {
            f.record(IpAddr::from([198, 51, 100, i as u8]), "carol", t);
        }
        assert!(f.limited("203.0.113.1".parse().unwrap(), "carol", t));
        let other_users = (0..8)
            .filter(|i| f.limited("203.0.113.1".parse().unwrap(), &format!("dave{i}"), t))
            .count();
        assert!(other_users <= 1, "{other_users} other users limited");
    }

    #[test]
    fn an_unknown_user_costs_the_strongest_entry() {
        let h = Htpasswd::parse(
            "a:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\nb:$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n",
        )
        .unwrap();
        assert!(h.strongest.as_deref().unwrap().starts_with("$2a$05$"));
        assert!(
            !h.verify("nobody", b"U*U"),
            "never accepted, even with that password"
        );
    }
}
