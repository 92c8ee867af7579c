//! `[resolver]`: how upstream servers given by name are resolved and kept fresh, and the
//! expansion of those names into servers ([`Config::resolved`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{opt_duration, raw, Config, ConfigError, Locator};

/// Settings of the resolver of upstream names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    /// Name servers to ask; empty: those of `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// How long one query waits.
    pub timeout: Duration,
    /// A name is asked again when its answer's TTL runs out, but never sooner than `min_ttl`
    /// nor later than `max_ttl` (like HAProxy's `hold valid` and nginx's `resolver valid=`).
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// After a failed lookup (the last good addresses are kept), when to ask again.
    pub retry: Duration,
}

impl Default for Resolver {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            timeout: Duration::from_secs(2),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            retry: Duration::from_secs(5),
        }
    }
}

impl Resolver {
    /// When to ask again after an answer with `ttl`.
    pub fn refresh_after(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl)
    }
}

pub(crate) fn build_resolver(
    loc: &Locator<'_>,
    raw: Option<raw::Resolver>,
) -> Result<Resolver, ConfigError> {
    let d = Resolver::default();
    let Some(r) = raw else { return Ok(d) };
    let mut servers = Vec::new();
    for (i, s) in r.servers.unwrap_or_default().iter().enumerate() {
        let text = s.get_ref();
        let addr = text
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| {
                text.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .ok_or_else(|| {
                loc.at(
                    s.span(),
                    format!("resolver.servers[{i}]"),
                    "expected a name server's address, like \"127.0.0.1:5353\" or \"192.0.2.53\"",
                )
            })?;
        servers.push(addr);
    }
    let out = Resolver {
        servers,
        timeout: opt_duration(loc, "resolver.timeout", r.timeout, d.timeout)?,
        min_ttl: opt_duration(loc, "resolver.min_ttl", r.min_ttl, d.min_ttl)?,
        max_ttl: opt_duration(loc, "resolver.max_ttl", r.max_ttl, d.max_ttl)?,
        retry: opt_duration(loc, "resolver.retry", r.retry, d.retry)?,
    };
    if out.min_ttl > out.max_ttl {
        return Err(loc.nowhere(
            "resolver.min_ttl",
            "is longer than resolver.max_ttl; expected min_ttl ≤ max_ttl",
        ));
    }
    Ok(out)
}

/// The most addresses one name adds to its group (the first ones in address order): an answer
/// with thousands of records must not make thousands of servers, pools and health checks.
pub const MAX_ADDRESSES_PER_NAME: usize = 64;

impl Config {
    /// Every name an upstream server is given by.
    pub fn names(&self) -> BTreeSet<std::sync::Arc<str>> {
        self.upstreams
            .iter()
            .flat_map(|u| u.named.iter().map(|n| n.host.clone()))
            .collect()
    }

    /// This configuration with each named server expanded into one server per address of its
    /// name (`addresses`; a name with none yet adds no server). The addresses are sorted, so
    /// that the same answer in another order changes nothing. Servers given by address keep
    /// their places; it may be applied again to its own result.
    pub fn resolved(&self, addresses: &dyn Fn(&str) -> Option<Vec<IpAddr>>) -> Config {
        let mut c = self.clone();
        for u in &mut c.upstreams {
            u.servers.retain(|s| s.name.is_none());
            for n in &u.named {
                let mut ips = addresses(&n.host).unwrap_or_default();
                ips.sort();
                ips.dedup();
                ips.truncate(MAX_ADDRESSES_PER_NAME);
                for ip in ips {
                    let mut s = n.server.clone();
                    s.addr = SocketAddr::new(ip, n.server.addr.port());
                    s.name = Some(n.host.clone());
                    // The same address listed by address and by name is one server.
                    if !u.servers.iter().any(|x| x.addr == s.addr) {
                        u.servers.push(s);
                    }
                }
            }
        }
        c
    }
}
