//! When a held certificate is renewed, and how long to wait after a failed order.
//!
//! A CA that offers ACME Renewal Information (RFC 9773) says when: a window, in which a point
//! is chosen at random (so that a fleet does not renew at one instant). Without it, or while
//! the CA cannot be asked, a certificate is renewed when a third of its lifetime is left
//! (Let's Encrypt's advice; 30 of 90 days, 2 of 6).

use std::time::Duration;

use super::b64;

/// A certificate's validity, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

/// An ARI suggested window, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Validity {
    /// When to renew: at `jitter` (0 to 1) through the CA's window when it gave one, else when
    /// a third of the lifetime is left.
    pub fn renew_at(&self, window: Option<Window>, jitter: f64) -> u64 {
        match window {
            Some(w) if w.end >= w.start => {
                let span = (w.end - w.start) as f64 * jitter.clamp(0.0, 1.0);
                w.start + span as u64
            }
            _ => {
                let life = self.not_after.saturating_sub(self.not_before);
                self.not_after.saturating_sub(life / 3)
            }
        }
    }

    /// Whether the certificate is still valid at `now`.
    pub fn valid_at(&self, now: u64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The ARI id of a certificate (RFC 9773 §4.1): its issuer's key identifier (the Authority Key
/// Identifier's `keyIdentifier`) and its serial number (the DER integer's content octets),
/// each base64url, joined by a dot.
pub fn cert_id(authority_key_id: &[u8], serial: &[u8]) -> String {
    format!("{}.{}", b64(authority_key_id), b64(serial))
}

/// The `suggestedWindow` of a renewalInfo reply.
pub fn parse_window(body: &[u8]) -> Option<Window> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let w = &v["suggestedWindow"];
    let start = rfc3339(w["start"].as_str()?)?;
    let end = rfc3339(w["end"].as_str()?)?;
    (end >= start).then_some(Window { start, end })
}

/// An RFC 3339 timestamp (`2026-12-03T21:00:00Z`, fractions and offsets allowed) in seconds
/// since the Unix epoch.
pub fn rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let o = num_of(&rest[1..3])? * 3600 + num_of(&rest[4..6])? * 60;
            if rest.starts_with('+') {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let t = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(t).ok()
}

fn num_of(t: &str) -> Option<i64> {
    t.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| t.parse().ok())
        .flatten()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The wait after failed orders: `first`, doubling with each failure in a row, at most `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// A failure: how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        let d = self
            .first
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        d
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}
