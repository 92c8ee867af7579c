//! `[timeouts]` and the duration values every section uses.

use std::time::Duration;

use toml::Spanned;

use super::{raw, ConfigError, Locator};

/// Timeouts, with nginx-like defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its end (nginx `client_header_timeout`).
    pub client_header: Duration,
    /// Between two reads of a request body (nginx `client_body_timeout`).
    pub client_body: Duration,
    /// The whole request body, however it trickles (`None`: only `client_body` between reads).
    pub client_body_total: Option<Duration>,
    /// Idle time allowed between requests on a client connection (nginx `keepalive_timeout`).
    pub keepalive: Duration,
    /// How long a kept-alive connection stays quiet before it parks: its buffers and request
    /// state are freed and only its socket is kept until the next request (`None`: never).
    pub park: Option<Duration>,
    /// Between two writes to the client (nginx `send_timeout`).
    pub send: Duration,
    pub upstream_connect: Duration,
    /// Between two reads from the upstream (nginx `proxy_read_timeout`).
    pub upstream_read: Duration,
    /// Between two writes to the upstream (nginx `proxy_send_timeout`).
    pub upstream_write: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle: Duration,
    /// From accept to the end of a PROXY protocol header, on listeners that take one.
    pub proxy_header: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            // Not nginx's 60 s, which slowloris tools are tuned to: a real client sends its head
            // in one go, and HAProxy's recommended `timeout http-request` is 10 s.
            client_header: Duration::from_secs(10),
            client_body: Duration::from_secs(60),
            client_body_total: None,
            keepalive: Duration::from_secs(75),
            // Long enough that a page's requests on one connection never park between them,
            // short enough that a burst of connections costs its memory for about a second.
            park: Some(Duration::from_secs(1)),
            send: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(10),
            upstream_read: Duration::from_secs(60),
            upstream_write: Duration::from_secs(60),
            upstream_idle: Duration::from_secs(60),
            proxy_header: Duration::from_secs(5),
        }
    }
}

pub(crate) fn build_timeouts(loc: &Locator<'_>, t: raw::Timeouts) -> Result<Timeouts, ConfigError> {
    let d = Timeouts::default();
    Ok(Timeouts {
        proxy_header: opt_duration(loc, "timeouts.proxy_header", t.proxy_header, d.proxy_header)?,
        client_header: opt_duration(
            loc,
            "timeouts.client_header",
            t.client_header,
            d.client_header,
        )?,
        client_body: opt_duration(loc, "timeouts.client_body", t.client_body, d.client_body)?,
        client_body_total: match t.client_body_total {
            None => None,
            v => Some(opt_duration(
                loc,
                "timeouts.client_body_total",
                v,
                Duration::ZERO,
            )?),
        },
        keepalive: opt_duration(loc, "timeouts.keepalive", t.keepalive, d.keepalive)?,
        park: match t.park {
            None => d.park,
            Some(v) if matches!(v.get_ref(), raw::Duration::Text(s) if s.trim() == "off") => None,
            Some(v) => Some(
                parse_duration(v.get_ref())
                    .filter(|d| (Duration::from_millis(1)..=MAX_DURATION).contains(d))
                    .ok_or_else(|| {
                        loc.at(
                            v.span(),
                            "timeouts.park",
                            "expected \"off\" or a duration from 1ms to 24h, like \"500ms\" or \"5s\"",
                        )
                    })?,
            ),
        },
        send: opt_duration(loc, "timeouts.send", t.send, d.send)?,
        upstream_connect: opt_duration(
            loc,
            "timeouts.upstream_connect",
            t.upstream_connect,
            d.upstream_connect,
        )?,
        upstream_read: opt_duration(
            loc,
            "timeouts.upstream_read",
            t.upstream_read,
            d.upstream_read,
        )?,
        upstream_write: opt_duration(
            loc,
            "timeouts.upstream_write",
            t.upstream_write,
            d.upstream_write,
        )?,
        upstream_idle: opt_duration(
            loc,
            "timeouts.upstream_idle",
            t.upstream_idle,
            d.upstream_idle,
        )?,
    })
}

/// Longest duration any setting takes: long enough for any timeout, short enough that no
/// `Instant` arithmetic on it can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration setting: from 1 ms to [`MAX_DURATION`] (a zero timeout would make the proxy
/// answer nothing; an enormous one made it panic).
pub(crate) fn opt_duration(
    loc: &Locator<'_>,
    key: &str,
    v: Option<Spanned<raw::Duration>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => parse_duration(v.get_ref())
            .filter(|d| (Duration::from_millis(1)..=MAX_DURATION).contains(d))
            .ok_or_else(|| {
                loc.at(
                    v.span(),
                    key,
                    "expected a duration from 1ms to 24h, like \"250ms\", \"30s\", \"5m\" or \"1h\"",
                )
            }),
    }
}

/// `timeouts.park` as written on a command line: `off`, or a duration from 1 ms to 24 h.
pub fn parse_park(t: &str) -> Option<Option<Duration>> {
    if t.trim() == "off" {
        return Some(None);
    }
    parse_duration(&raw::Duration::Text(t.to_string()))
        .filter(|d| (Duration::from_millis(1)..=MAX_DURATION).contains(d))
        .map(Some)
}

pub(crate) fn parse_duration(d: &raw::Duration) -> Option<Duration> {
    match d {
        raw::Duration::Seconds(s) => Some(Duration::from_secs(*s)),
        raw::Duration::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit())?;
            let n: u64 = t[..split].parse().ok()?;
            match &t[split..] {
                "ms" => Some(Duration::from_millis(n)),
                "s" => Some(Duration::from_secs(n)),
                "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
                "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
                "d" => Some(Duration::from_secs(n.checked_mul(86_400)?)),
                _ => None,
            }
        }
    }
}
