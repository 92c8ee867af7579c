//! `[[rate_limits]]`: request-rate limits (see [`crate::limit`]).

use std::sync::Arc;

use toml::Spanned;

use std::time::Duration;

use super::{opt_duration, raw, ConfigError, Locator, Route};
use crate::limit::{Key, Rate, RateLimit, Table};

/// `[shared_limits]`: the Redis server where limits marked `shared` meet the counts of the
/// other boxes (see [`crate::limit::shared`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedLimits {
    /// `redis://[user:password@]host[:port][/db]` or `unix:///path/to/redis.sock`.
    pub redis: String,
    /// How often each box reports and hears the others' counts (T in the error bound).
    pub interval: Duration,
    /// How long one exchange with Redis may take before the box limits alone.
    pub timeout: Duration,
    /// Put before every key ringway writes (`{prefix}{limit}:{key hash}`).
    pub prefix: String,
    /// Keys the hashing of limit keys: the same on every box that shares them.
    pub secret: String,
}

impl SharedLimits {
    /// The defaults for a Redis address (`None` when it is not one).
    pub fn new(redis: &str) -> Option<Self> {
        is_redis_address(redis).then(|| Self {
            redis: redis.trim().to_string(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(250),
            prefix: "ringway:".to_string(),
            secret: "ringway".to_string(),
        })
    }
}

fn is_redis_address(url: &str) -> bool {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("redis://") {
        // [user:password@]host[:port][/db]
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = match host_port.rsplit_once(':') {
            // A bare IPv6 address has colons of its own.
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => (host_port, None),
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        };
        return !host.is_empty()
            && !host.contains(char::is_whitespace)
            && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
            && (db.is_empty() || db.parse::<u32>().is_ok());
    }
    ["unix://", "redis+unix://"]
        .iter()
        .any(|s| url.strip_prefix(s).is_some_and(|p| p.starts_with('/')))
}

pub(crate) fn build_shared_limits(
    loc: &Locator<'_>,
    raw: Option<&Spanned<raw::SharedLimits>>,
) -> Result<Option<SharedLimits>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let r = raw.get_ref();
    let Some(d) = SharedLimits::new(r.redis.get_ref()) else {
        return Err(loc.at(
            r.redis.span(),
            "shared_limits.redis",
            "expected a Redis address, like \"redis://127.0.0.1:6379/0\" or \"unix:///run/redis/redis.sock\" (TLS to Redis is not built in: use a local Redis or a tunnel)",
        ));
    };
    let interval = opt_duration(
        loc,
        "shared_limits.interval",
        r.interval.clone(),
        d.interval,
    )?;
    if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&interval) {
        return Err(loc.nowhere(
            "shared_limits.interval",
            "expected from 10ms to 60s (100ms by default)",
        ));
    }
    let timeout = opt_duration(loc, "shared_limits.timeout", r.timeout.clone(), d.timeout)?;
    if timeout.is_zero() {
        return Err(loc.nowhere("shared_limits.timeout", "expected more than 0"));
    }
    Ok(Some(SharedLimits {
        interval,
        timeout,
        prefix: r.prefix.as_ref().map_or(d.prefix, |p| p.get_ref().clone()),
        secret: r.secret.as_ref().map_or(d.secret, |s| s.get_ref().clone()),
        redis: d.redis,
    }))
}

/// Keys a limit's table holds by default (512 KiB).
pub const DEFAULT_LIMIT_KEYS: usize = 65_536;

pub(crate) fn build_rate_limits(
    loc: &Locator<'_>,
    raw: &[Spanned<raw::RateLimit>],
    routes: &[Route],
    shared: Option<&SharedLimits>,
) -> Result<Vec<RateLimit>, ConfigError> {
    let mut out: Vec<RateLimit> = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let key = format!("rate_limits[{i}]");
        let span = l.span();
        let l = l.get_ref();
        let interval = Rate::parse(l.rate.get_ref()).ok_or_else(|| {
            loc.at(
                l.rate.span(),
                format!("{key}.rate"),
                "expected requests per second, minute or hour, like \"100/s\", \"600/m\" or \"1000/h\" (at most 1000000/s)",
            )
        })?;
        let burst = match &l.burst {
            None => 0,
            Some(b) if *b.get_ref() <= 1_000_000 => *b.get_ref(),
            Some(b) => {
                return Err(loc.at(b.span(), format!("{key}.burst"), "expected at most 1000000"))
            }
        };
        let by = match &l.key {
            None => Key::Client,
            Some(k) => Key::parse(k.get_ref()).ok_or_else(|| {
                loc.at(
                    k.span(),
                    format!("{key}.key"),
                    "expected \"client\", \"route\", \"user\" or \"header:NAME\"",
                )
            })?,
        };
        let limited_routes = match &l.routes {
            None => None,
            Some(names) => {
                let mut v = Vec::new();
                for (j, n) in names.iter().enumerate() {
                    let r = routes
                        .iter()
                        .position(|r| r.name == *n.get_ref())
                        .ok_or_else(|| {
                            let known: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                            loc.at(
                                n.span(),
                                format!("{key}.routes[{j}]"),
                                format!(
                                    "no route named {:?} (routes are named by `name`, else host and path: {})",
                                    n.get_ref(),
                                    known.join(", ")
                                ),
                            )
                        })?;
                    v.push(r);
                }
                Some(v)
            }
        };
        if by == Key::Route && limited_routes.is_none() {
            return Err(loc.at(
                span,
                format!("{key}.key"),
                "key = \"route\" needs `routes`: the routes whose requests are counted together",
            ));
        }
        let status = match &l.status {
            None => 429,
            Some(s) if (400..=599).contains(s.get_ref()) => *s.get_ref(),
            Some(s) => {
                return Err(loc.at(
                    s.span(),
                    format!("{key}.status"),
                    "expected a 4xx or 5xx status (429 by default)",
                ))
            }
        };
        let v6_prefix = match &l.ipv6_prefix {
            None => 64,
            Some(p) if (1..=128).contains(p.get_ref()) => *p.get_ref(),
            Some(p) => {
                return Err(loc.at(
                    p.span(),
                    format!("{key}.ipv6_prefix"),
                    "expected a prefix length from 1 to 128 (64 by default)",
                ))
            }
        };
        let keys = match &l.max_keys {
            None => DEFAULT_LIMIT_KEYS,
            Some(k) if (64..=1 << 24).contains(k.get_ref()) => *k.get_ref(),
            Some(k) => {
                return Err(loc.at(
                    k.span(),
                    format!("{key}.max_keys"),
                    "expected from 64 to 16777216",
                ))
            }
        };
        let name = l
            .name
            .clone()
            .unwrap_or_else(|| format!("rate_limits[{i}]"));
        if out.iter().any(|o| o.name == name) {
            return Err(loc.at(
                span,
                format!("{key}.name"),
                format!("{name:?} is used twice"),
            ));
        }
        let table = Arc::new(match (l.shared, shared) {
            (Some(true), Some(s)) => {
                Table::shared(keys, crate::limit::shared::secret(&s.secret, &name))
            }
            (Some(true), None) => {
                return Err(loc.at(
                    span,
                    format!("{key}.shared"),
                    "a shared limit needs a [shared_limits] section naming the Redis server",
                ))
            }
            _ => Table::new(keys),
        });
        out.push(RateLimit {
            name,
            rate: Rate {
                interval,
                burst,
                // nginx's `delay=N`: N of the burst at once, the rest held to the rate;
                // without it, nginx's `nodelay`.
                no_delay: l.delay.as_ref().map_or(u32::MAX, |d| *d.get_ref()),
            },
            key: by,
            routes: limited_routes,
            status,
            v6_prefix,
            table,
        });
    }
    Ok(out)
}

impl super::Config {
    /// Takes over the counts of `old`'s limits that this one has unchanged (same name and
    /// settings), so that a reload does not hand every client a fresh burst.
    pub fn keep_limit_state(&mut self, old: &super::Config) {
        // A new secret or prefix renames every shared key: those limits start afresh.
        fn naming(c: &Option<SharedLimits>) -> Option<(&str, &str)> {
            c.as_ref().map(|s| (s.secret.as_str(), s.prefix.as_str()))
        }
        let renamed = naming(&old.shared_limits) != naming(&self.shared_limits);
        for l in &mut self.rate_limits {
            if l.table.is_shared() && renamed {
                continue;
            }
            if let Some(o) = old.rate_limits.iter().find(|o| **o == *l) {
                l.table = o.table.clone();
            }
        }
    }
}
