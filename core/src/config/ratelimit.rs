//! `[[rate_limits]]`: request-rate limits (see [`crate::limit`]).

use std::sync::Arc;

use toml::Spanned;

use super::{raw, ConfigError, Locator, Route};
use crate::limit::{Key, Rate, RateLimit, Table};

/// Keys a limit's table holds by default (512 KiB).
pub const DEFAULT_LIMIT_KEYS: usize = 65_536;

pub(crate) fn build_rate_limits(
    loc: &Locator<'_>,
    raw: &[Spanned<raw::RateLimit>],
    routes: &[Route],
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
            table: Arc::new(Table::new(keys)),
        });
    }
    Ok(out)
}

impl super::Config {
    /// Takes over the counts of `old`'s limits that this one has unchanged (same name and
    /// settings), so that a reload does not hand every client a fresh burst.
    pub fn keep_limit_state(&mut self, old: &super::Config) {
        for l in &mut self.rate_limits {
            if let Some(o) = old.rate_limits.iter().find(|o| **o == *l) {
                l.table = o.table.clone();
            }
        }
    }
}
