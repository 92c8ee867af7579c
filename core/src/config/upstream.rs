//! `[upstreams.NAME]`: servers, balancing, passive and active health, retries, TLS.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::{opt_duration, raw, tls, ConfigError, Locator, UpstreamTls};
use crate::health::{ActivePolicy, PassivePolicy};

#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub name: String,
    /// The servers requests go to: those given by address, then one per address of each name
    /// in `named` (as last resolved; see [`super::Config::resolved`]).
    pub servers: Vec<UpstreamServer>,
    /// Servers given by DNS name: each address a name resolves to is a server with these
    /// settings.
    pub named: Vec<NamedServer>,
    /// Idle keep-alive connections kept per server, per worker.
    pub keepalive: usize,
    pub balance: Balance,
    /// Passive health: when failures eject a server, and for how long.
    pub passive: PassivePolicy,
    /// More servers to try after a failed attempt.
    pub retries: u32,
    /// No new attempt starts this long after the first.
    pub retry_timeout: Duration,
    /// Response statuses that make an idempotent, body-less request try the next server.
    pub retry_on: Vec<u16>,
    /// Active health checks, if configured.
    pub health_check: Option<ActivePolicy>,
    /// Connect to the servers over TLS.
    pub tls: Option<UpstreamTls>,
    /// Every connection to the servers starts with a PROXY protocol header naming the client
    /// (and is then that client's alone, never pooled for another).
    pub proxy_protocol: Option<crate::proxyproto::Version>,
}

/// A server given by name (`app:8080`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedServer {
    /// Lower-case, without a trailing dot.
    pub host: std::sync::Arc<str>,
    /// Its settings; `addr` holds the port (and an unspecified address).
    pub server: UpstreamServer,
}

/// One server of an upstream group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamServer {
    pub addr: SocketAddr,
    /// The name it was resolved from, for one given by name.
    pub name: Option<std::sync::Arc<str>>,
    /// Relative share of requests (round-robin, least-conn, hash), 1–1000.
    pub weight: u32,
    /// Used only when every primary server is unavailable.
    pub backup: bool,
    /// Most requests in flight to this server per worker; `None`: no limit.
    pub max_conns: Option<u32>,
    /// Marked down by configuration: never chosen.
    pub down: bool,
}

impl UpstreamServer {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            name: None,
            weight: 1,
            backup: false,
            max_conns: None,
            down: false,
        }
    }
}

/// How a group spreads requests over its servers.
#[derive(Clone, Debug, PartialEq)]
pub enum Balance {
    /// Smooth weighted round-robin (nginx's default).
    RoundRobin,
    /// Fewest in-flight requests per unit of weight.
    LeastConn,
    /// The client's IP address picks the server.
    IpHash,
    /// Consistent hashing on `key`, no server above `factor` × the mean load.
    Hash { key: HashKey, factor: f64 },
}

/// What a `hash` balancer hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// A request header's value (lowercase name).
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The request path (without the query).
    Path,
}

pub const DEFAULT_HASH_BALANCE_FACTOR: f64 = 1.25;
pub const DEFAULT_RETRIES: u32 = 2;

impl Balance {
    /// `round-robin`, `least-conn`, `ip-hash`, or `hash:KEY` with KEY one of `ip`, `path`,
    /// `header:NAME`, `cookie:NAME`.
    pub fn parse(s: &str, factor: f64) -> Result<Self, String> {
        let bad = || {
            format!("expected round-robin, least-conn, ip-hash or hash:ip|path|header:NAME|cookie:NAME, got {s:?}")
        };
        Ok(match s {
            "round-robin" => Self::RoundRobin,
            "least-conn" => Self::LeastConn,
            "ip-hash" => Self::IpHash,
            _ => {
                let key = s.strip_prefix("hash:").ok_or_else(bad)?;
                let key = match key.split_once(':') {
                    None if key == "ip" => HashKey::ClientIp,
                    None if key == "path" => HashKey::Path,
                    Some(("header", n)) if crate::http::chars::is_token(n.as_bytes()) => {
                        HashKey::Header(n.to_ascii_lowercase())
                    }
                    Some(("cookie", n)) if crate::http::chars::is_token(n.as_bytes()) => {
                        HashKey::Cookie(n.to_string())
                    }
                    _ => return Err(bad()),
                };
                Self::Hash { key, factor }
            }
        })
    }
}

pub const DEFAULT_UPSTREAM_KEEPALIVE: usize = 64;

/// Validates every `[upstreams.NAME]` table, in name order.
pub(crate) fn build_upstreams(
    loc: &Locator<'_>,
    raw: &BTreeMap<String, Spanned<raw::Upstream>>,
) -> Result<Vec<Upstream>, ConfigError> {
    let mut upstreams = Vec::new();
    for (name, u) in raw {
        let key = format!("upstreams.{name}");
        let u_span = u.span();
        let u = u.get_ref();
        if u.servers.get_ref().is_empty() {
            return Err(loc.at(
                u.servers.span(),
                format!("{key}.servers"),
                "expected at least one server address",
            ));
        }
        let mut servers = Vec::new();
        let mut named = Vec::new();
        for (i, s) in u.servers.get_ref().iter().enumerate() {
            let skey = format!("{key}.servers[{i}]");
            let (addr, t) = match s.get_ref() {
                raw::ServerEntry::Addr(a) => (a, None),
                raw::ServerEntry::Full(t) => (&t.addr, Some(t)),
            };
            let (addr, name) = match parse_server_addr(addr) {
                Some(a) => (a, None),
                None => {
                    let (host, port) = parse_server_name(addr).ok_or_else(|| {
                        loc.at(
                            s.span(),
                            skey.clone(),
                            format!("expected IP:port or NAME:port (like app:8080), got {addr:?}"),
                        )
                    })?;
                    (
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                        Some(host),
                    )
                }
            };
            if addr.port() == 0 {
                return Err(loc.at(
                    s.span(),
                    skey.clone(),
                    "port 0 cannot be connected to; expected a port from 1 to 65535",
                ));
            }
            let mut server = UpstreamServer::new(addr);
            if let Some(t) = t {
                server.weight = t.weight.unwrap_or(1);
                if !(1..=1000).contains(&server.weight) {
                    return Err(loc.at(
                        s.span(),
                        format!("{skey}.weight"),
                        "expected a weight from 1 to 1000",
                    ));
                }
                server.backup = t.backup.unwrap_or(false);
                server.down = t.down.unwrap_or(false);
                server.max_conns = match t.max_conns {
                    Some(0) => {
                        return Err(loc.at(
                            s.span(),
                            format!("{skey}.max_conns"),
                            "expected at least 1 (omit it for no limit)",
                        ))
                    }
                    m => m,
                };
            }
            match name {
                None => servers.push(server),
                Some(host) => named.push(NamedServer {
                    host: host.into(),
                    server,
                }),
            }
        }
        let factor = match &u.hash_balance_factor {
            None => DEFAULT_HASH_BALANCE_FACTOR,
            Some(f) if (1.0..=100.0).contains(f.get_ref()) => *f.get_ref(),
            Some(f) => {
                return Err(loc.at(
                    f.span(),
                    format!("{key}.hash_balance_factor"),
                    "expected a factor from 1.0 to 100.0",
                ))
            }
        };
        let balance = match &u.balance {
            None => Balance::RoundRobin,
            Some(b) => Balance::parse(b.get_ref(), factor)
                .map_err(|m| loc.at(b.span(), format!("{key}.balance"), m))?,
        };
        let dp = PassivePolicy::default();
        let passive = PassivePolicy {
            max_fails: u.max_fails.unwrap_or(dp.max_fails),
            cooldown: opt_duration(
                loc,
                &format!("{key}.fail_timeout"),
                u.fail_timeout.clone(),
                dp.cooldown,
            )?,
            max_cooldown: dp.max_cooldown,
            fail_on_5xx: u.fail_on_5xx.unwrap_or(dp.fail_on_5xx),
            fail_on_invalid: u.fail_on_invalid.unwrap_or(dp.fail_on_invalid),
            fail_open: u.fail_open.unwrap_or(dp.fail_open),
        };
        let retries = match &u.retries {
            None => DEFAULT_RETRIES,
            Some(r) if *r.get_ref() <= 100 => *r.get_ref(),
            Some(r) => return Err(loc.at(r.span(), format!("{key}.retries"), "expected 0 to 100")),
        };
        let retry_timeout = opt_duration(
            loc,
            &format!("{key}.retry_timeout"),
            u.retry_timeout.clone(),
            Duration::from_secs(10),
        )?;
        let retry_on = match &u.retry_on {
            None => Vec::new(),
            Some(v) if v.get_ref().iter().all(|s| (500..=599).contains(s)) => v.get_ref().clone(),
            Some(v) => {
                return Err(loc.at(
                    v.span(),
                    format!("{key}.retry_on"),
                    "expected a list of 5xx status codes",
                ))
            }
        };
        let health_check = match &u.health_check {
            None => None,
            Some(h) => Some(build_health_check(loc, &format!("{key}.health_check"), h)?),
        };
        if servers
            .iter()
            .chain(named.iter().map(|n| &n.server))
            .all(|s| s.backup)
        {
            return Err(loc.at(
                u.servers.span(),
                format!("{key}.servers"),
                "expected at least one server that is not a backup",
            ));
        }
        let keepalive = u.keepalive.unwrap_or(DEFAULT_UPSTREAM_KEEPALIVE);
        let _ = u_span;
        let tls = match &u.tls {
            None => None,
            Some(t) => tls::build_upstream_tls(loc, &key, t)?,
        };
        let proxy_protocol = match &u.proxy_protocol {
            None => None,
            Some(v) => match v.get_ref().as_str() {
                "v1" => Some(crate::proxyproto::Version::V1),
                "v2" => Some(crate::proxyproto::Version::V2),
                _ => {
                    return Err(loc.at(
                        v.span(),
                        format!("{key}.proxy_protocol"),
                        "expected \"v1\" or \"v2\"",
                    ))
                }
            },
        };
        upstreams.push(Upstream {
            proxy_protocol,
            name: name.clone(),
            servers,
            named,
            keepalive,
            balance,
            passive,
            retries,
            retry_timeout,
            retry_on,
            health_check,
            tls,
        });
    }

    Ok(upstreams)
}

fn build_health_check(
    loc: &Locator<'_>,
    key: &str,
    h: &Spanned<raw::HealthCheck>,
) -> Result<ActivePolicy, ConfigError> {
    let r = h.get_ref();
    if !r.uri.get_ref().starts_with('/') || r.uri.get_ref().bytes().any(|b| b <= b' ' || b == 0x7f)
    {
        return Err(loc.at(
            r.uri.span(),
            format!("{key}.uri"),
            "expected a path starting with `/`, without spaces",
        ));
    }
    let mut p = ActivePolicy::new(r.uri.get_ref());
    if let Some(m) = &r.method {
        if !crate::http::chars::is_token(m.get_ref().as_bytes()) {
            return Err(loc.at(
                m.span(),
                format!("{key}.method"),
                "expected a method such as GET or HEAD",
            ));
        }
        p.method = m.get_ref().clone();
    }
    if let Some(host) = &r.host {
        if !valid_host_value(host) {
            return Err(loc.at(
                h.span(),
                format!("{key}.host"),
                "expected a host[:port] value",
            ));
        }
        p.host = Some(host.clone());
    }
    p.interval = opt_duration(
        loc,
        &format!("{key}.interval"),
        r.interval.clone(),
        p.interval,
    )?;
    p.timeout = opt_duration(loc, &format!("{key}.timeout"), r.timeout.clone(), p.timeout)?;
    if p.interval.is_zero() || p.timeout.is_zero() {
        return Err(loc.at(h.span(), key, "expected interval and timeout above zero"));
    }
    p.fails = r.fails.unwrap_or(p.fails).max(1);
    p.passes = r.passes.unwrap_or(p.passes).max(1);
    if let Some(st) = &r.status {
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let range = match st.get_ref().split_once('-') {
            Some((a, b)) => parse(a).zip(parse(b)).filter(|(a, b)| a <= b),
            None => parse(st.get_ref()).map(|c| (c, c)),
        };
        p.status = range.ok_or_else(|| {
            loc.at(
                st.span(),
                format!("{key}.status"),
                "expected a status or range like \"200-399\"",
            )
        })?;
    }
    Ok(p)
}

pub(crate) fn valid_host_value(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// `name:port` with a DNS name (letters, digits, `-`, `_`, dots; at most 253 bytes, labels of
/// at most 63): the name lower-cased and the port.
pub fn parse_server_name(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|&p| p > 0)?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // An all-numeric last label is an IP address written wrong, not a name.
        && !host.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    valid.then_some((host, port))
}

/// `IP:port`, or `localhost:port` (IPv4 loopback). Names are not resolved: the proxy never
/// waits on DNS at request time.
pub fn parse_server_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    host.eq_ignore_ascii_case("localhost")
        .then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}
