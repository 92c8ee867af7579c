//! The configuration model: one TOML file parsed once into a typed, immutable [`Config`].
//!
//! "Parse, don't validate": everything the data plane reads has already been checked and
//! converted (addresses, durations, routes compiled into a [`Router`]). An error names the file,
//! the line, the key and what was expected, e.g.
//! `ringway.toml:12: routes[1].upstream: no upstream named "ap" (defined: app)`.
//! Reading the file is the caller's job; this module only sees its text.

mod raw;
mod tls;

pub use tls::{CertKeyFiles, Origin, Tls, TlsVersion, UpstreamTls, DEFAULT_HANDSHAKE_TIMEOUT};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::health::{ActivePolicy, PassivePolicy};
use crate::http::path::{EncodedSlashes, PathPolicy};
use crate::http::respond::Fixed;
use crate::http::Limits as HeadLimits;
use crate::route::{HostMatch, Router};

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: Server,
    /// The admin listener (status JSON), off unless configured; always a loopback address.
    pub admin: Option<SocketAddr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    /// (host, path) → index into `routes`.
    pub router: Router<usize>,
    /// Certificates and settings of the listeners marked `tls`.
    pub tls: Option<Tls>,
}

/// One listen address and what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub kind: ListenKind,
}

/// What a listener serves. The accept loop and the connection dispatch on it; the forward
/// proxy and SOCKS5 will be further kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenKind {
    /// Plain HTTP/1.x.
    Http,
    /// HTTP/1.x over TLS with the certificates of `[tls]`.
    Https,
    /// Plain HTTP answering every request with a 301 to the same host and path over https.
    RedirectHttps,
}

impl ListenKind {
    pub fn is_tls(self) -> bool {
        self == Self::Https
    }

    /// The scheme of the requests it receives, for X-Forwarded-Proto.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Http | Self::RedirectHttps => "http",
        }
    }
}

impl Listen {
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            kind: ListenKind::Http,
        }
    }
}

impl Config {
    /// The port `redirect_https` listeners send clients to: the first TLS listener's, else 443.
    pub fn https_port(&self) -> u16 {
        self.server
            .listen
            .iter()
            .find(|l| l.kind.is_tls())
            .map_or(443, |l| l.addr.port())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub listen: Vec<Listen>,
    /// `None`: one worker per CPU the process may run on.
    pub workers: Option<usize>,
    /// CPUs to pin workers to, in order; `None`: all allowed CPUs.
    pub cpus: Option<Vec<usize>>,
    pub pin: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Where the running process writes its PID (for `ringway reload`).
    pub pid_file: Option<String>,
    /// How request paths are normalised before routing (and sent upstream).
    pub path: PathPolicy,
}

/// Timeouts, with nginx-like defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its end (nginx `client_header_timeout`).
    pub client_header: Duration,
    /// Between two reads of a request body (nginx `client_body_timeout`).
    pub client_body: Duration,
    /// Idle time allowed between requests on a client connection (nginx `keepalive_timeout`).
    pub keepalive: Duration,
    /// Between two writes to the client (nginx `send_timeout`).
    pub send: Duration,
    pub upstream_connect: Duration,
    /// Between two reads from the upstream (nginx `proxy_read_timeout`).
    pub upstream_read: Duration,
    /// Between two writes to the upstream (nginx `proxy_send_timeout`).
    pub upstream_write: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            // Not nginx's 60 s, which slowloris tools are tuned to: a real client sends its head
            // in one go, and HAProxy's recommended `timeout http-request` is 10 s.
            client_header: Duration::from_secs(10),
            client_body: Duration::from_secs(60),
            keepalive: Duration::from_secs(75),
            send: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(10),
            upstream_read: Duration::from_secs(60),
            upstream_write: Duration::from_secs(60),
            upstream_idle: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub request: HeadLimits,
    pub max_response_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request: HeadLimits::default(),
            max_response_head: 32 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<UpstreamServer>,
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
}

/// One server of an upstream group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamServer {
    pub addr: SocketAddr,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub host: HostMatch,
    pub path: String,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward to the upstream group with this index, optionally replacing Host.
    Proxy {
        upstream: usize,
        set_host: Option<Vec<u8>>,
    },
    /// Answer with a fixed response (like nginx `return`).
    Respond(Fixed),
}

/// A configuration error, located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line, when the error has a position.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `routes[2].upstream`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Builds errors that point into one file.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn at(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: Some(self.line_of(span)),
            key: key.into(),
            message: msg.into(),
        }
    }

    fn nowhere(&self, key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: None,
            key: key.into(),
            message: msg.into(),
        }
    }
}

impl Config {
    /// Parses and validates `text`, the contents of the file named `file`.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let loc = Locator { file, text };
        let de = toml::Deserializer::new(text);
        let raw: raw::File = serde_path_to_error::deserialize(de).map_err(|e| {
            // `Spanned` fields add a private segment to the path; users never wrote it.
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            ConfigError {
                file: file.to_string(),
                line: inner.span().map(|s| loc.line_of(s)),
                key: if key == "." { String::new() } else { key },
                message: plain_message(inner.message().trim()),
            }
        })?;
        build(&loc, raw)
    }

    /// A configuration for quick mode: listen on `listen`, send everything to `upstreams`.
    pub fn quick(listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>, balance: Balance) -> Self {
        let routes = vec![Route {
            host: HostMatch::Any,
            path: "/".into(),
            action: Action::Proxy {
                upstream: 0,
                set_host: None,
            },
        }];
        Self {
            admin: None,
            tls: None,
            server: Server {
                listen: listen.into_iter().map(Listen::plain).collect(),
                workers: None,
                cpus: None,
                pin: true,
                shutdown_timeout: Duration::from_secs(30),
                pid_file: None,
                path: PathPolicy::default(),
            },
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            upstreams: vec![Upstream {
                name: "default".into(),
                servers: upstreams.into_iter().map(UpstreamServer::new).collect(),
                keepalive: DEFAULT_UPSTREAM_KEEPALIVE,
                balance,
                passive: PassivePolicy::default(),
                retries: DEFAULT_RETRIES,
                retry_timeout: Duration::from_secs(10),
                retry_on: Vec::new(),
                health_check: None,
                tls: None,
            }],
            router: Router::new([(HostMatch::Any, "/".to_string(), 0)]),
            routes,
        }
    }
}

fn build(loc: &Locator<'_>, raw: raw::File) -> Result<Config, ConfigError> {
    let server = build_server(loc, raw.server)?;
    let timeouts = build_timeouts(loc, raw.timeouts)?;
    let limits = build_limits(loc, raw.limits)?;

    let mut upstreams = Vec::new();
    for (name, u) in &raw.upstreams {
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
        for (i, s) in u.servers.get_ref().iter().enumerate() {
            let skey = format!("{key}.servers[{i}]");
            let (addr, t) = match s.get_ref() {
                raw::ServerEntry::Addr(a) => (a, None),
                raw::ServerEntry::Full(t) => (&t.addr, Some(t)),
            };
            let addr = parse_server_addr(addr).ok_or_else(|| {
                loc.at(
                    s.span(),
                    skey.clone(),
                    format!("expected IP:port or localhost:port, got {addr:?}"),
                )
            })?;
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
            servers.push(server);
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
        if servers.iter().all(|s| s.backup) {
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
        upstreams.push(Upstream {
            name: name.clone(),
            servers,
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

    if raw.routes.is_empty() {
        return Err(loc.nowhere("routes", "expected at least one [[routes]] entry"));
    }
    let mut routes = Vec::new();
    let mut seen_routes = std::collections::HashMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let span = r.span();
        let r = r.get_ref();
        let host = match &r.host {
            None => HostMatch::Any,
            Some(h) => HostMatch::parse(h.get_ref()).ok_or_else(|| {
                loc.at(
                    h.span(),
                    format!("{key}.host"),
                    "expected a host name, `*.suffix` or `*`",
                )
            })?,
        };
        let path = match &r.path {
            None => "/".to_string(),
            Some(p) => route_path(p.get_ref(), &server.path)
                .map_err(|m| loc.at(p.span(), format!("{key}.path"), m))?,
        };
        if let Some(j) = seen_routes.insert((host.clone(), path.clone()), i) {
            return Err(loc.at(
                span,
                key,
                format!("routes[{j}] has the same host and path, so this route could never match"),
            ));
        }
        let action = match (&r.upstream, &r.respond) {
            (Some(u), None) => {
                let idx = upstreams
                    .iter()
                    .position(|x| x.name == *u.get_ref())
                    .ok_or_else(|| {
                        let names: Vec<_> = upstreams.iter().map(|x| x.name.as_str()).collect();
                        loc.at(
                            u.span(),
                            format!("{key}.upstream"),
                            format!(
                                "no upstream named {:?} (defined: {})",
                                u.get_ref(),
                                if names.is_empty() {
                                    "none".to_string()
                                } else {
                                    names.join(", ")
                                }
                            ),
                        )
                    })?;
                let set_host = match &r.set_host {
                    None => None,
                    Some(h) if valid_host_value(h.get_ref()) => {
                        Some(h.get_ref().as_bytes().to_vec())
                    }
                    Some(h) => {
                        return Err(loc.at(
                            h.span(),
                            format!("{key}.set_host"),
                            "expected a host[:port] value",
                        ))
                    }
                };
                Action::Proxy {
                    upstream: idx,
                    set_host,
                }
            }
            (None, Some(resp)) => {
                let rs = resp.get_ref();
                let status = *rs.status.get_ref();
                if !(200..=599).contains(&status) {
                    return Err(loc.at(
                        rs.status.span(),
                        format!("{key}.respond.status"),
                        "expected a status code from 200 to 599",
                    ));
                }
                if matches!(status, 204 | 205 | 304) && !rs.body.is_empty() {
                    return Err(loc.at(
                        rs.status.span(),
                        format!("{key}.respond.body"),
                        format!("a {status} response has no body (RFC 9110 §15); remove `body`"),
                    ));
                }
                let mut headers = Vec::new();
                for (name, v) in &rs.headers {
                    let framing = ["content-length", "transfer-encoding", "connection"];
                    if !crate::http::chars::is_token(name.as_bytes())
                        || framing.iter().any(|f| name.eq_ignore_ascii_case(f))
                    {
                        return Err(loc.at(v.span(), format!("{key}.respond.headers.{name}"), "expected a header name other than Content-Length, Transfer-Encoding or Connection"));
                    }
                    if !v
                        .get_ref()
                        .bytes()
                        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                    {
                        return Err(loc.at(
                            v.span(),
                            format!("{key}.respond.headers.{name}"),
                            "header value holds a control character",
                        ));
                    }
                    headers.push((name.clone(), v.get_ref().clone()));
                }
                Action::Respond(Fixed::new(status, &headers, rs.body.as_bytes()))
            }
            (Some(_), Some(_)) => {
                return Err(loc.at(
                    span,
                    key,
                    "expected either `upstream` or `respond`, not both",
                ))
            }
            (None, None) => {
                return Err(loc.at(
                    span,
                    key,
                    "expected `upstream = \"name\"` or `respond = { status = … }`",
                ))
            }
        };
        routes.push(Route { host, path, action });
    }
    let router = Router::new(
        routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.host.clone(), r.path.clone(), i)),
    );
    let admin = match &raw.admin {
        None => None,
        Some(a) => match parse_listen_addr(a.listen.get_ref()) {
            Some(addr) if addr.ip().is_loopback() => Some(addr),
            _ => {
                return Err(loc.at(
                    a.listen.span(),
                    "admin.listen",
                    "expected a loopback address such as \"127.0.0.1:9901\" (the admin listener is never exposed)",
                ))
            }
        },
    };
    let tls = match &raw.tls {
        None => None,
        Some(t) => Some(tls::build_tls(loc, t)?),
    };
    if tls.is_none() {
        if let Some(i) = server.listen.iter().position(|l| l.kind.is_tls()) {
            return Err(loc.nowhere(
                format!("server.listen[{i}]"),
                "a TLS listener needs certificates: add a [tls] section with `certificates`",
            ));
        }
    }
    Ok(Config {
        tls,
        server,
        admin,
        timeouts,
        limits,
        upstreams,
        routes,
        router,
    })
}

/// A route's path prefix, checked to be one that requests can match: requests are matched on
/// their normalised path (see [`crate::http::path`]), so a prefix must be in that form too.
fn route_path(p: &str, policy: &PathPolicy) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err("expected a path prefix starting with `/`".into());
    }
    if !p
        .bytes()
        .all(|b| crate::http::chars::TARGET[usize::from(b)])
        || p.contains('?')
    {
        return Err(
            "a path prefix holds only visible ASCII and no `?` (percent-encode other bytes); \
             this one could never match"
                .into(),
        );
    }
    let mut out = Vec::new();
    match crate::http::path::normalise(p.as_bytes(), policy, &mut out) {
        Ok(_) if out == p.as_bytes() => Ok(p.to_string()),
        Ok(_) => Err(format!(
            "requests are matched on their normalised path, so this prefix could never match; \
             write {:?}",
            String::from_utf8_lossy(&out)
        )),
        Err(e) => Err(format!("{e}, so this prefix could never match")),
    }
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

fn valid_host_value(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

fn build_server(loc: &Locator<'_>, s: raw::Server) -> Result<Server, ConfigError> {
    let listen = match s.listen {
        None => vec![Listen::plain(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)))],
        Some(l) => {
            if l.get_ref().is_empty() {
                return Err(loc.at(l.span(), "server.listen", "expected at least one address"));
            }
            let mut v = Vec::new();
            for (i, a) in l.get_ref().iter().enumerate() {
                let key = format!("server.listen[{i}]");
                let (addr, tls, redirect_https) = match a.get_ref() {
                    raw::ListenEntry::Addr(s) => (s, false, false),
                    raw::ListenEntry::Full(t) => (
                        &t.addr,
                        t.tls.unwrap_or(false),
                        t.redirect_https.unwrap_or(false),
                    ),
                };
                let addr = parse_listen_addr(addr).ok_or_else(|| {
                    loc.at(
                        a.span(),
                        key.clone(),
                        format!("expected IP:port, :port or port, got {addr:?}"),
                    )
                })?;
                let kind = match (tls, redirect_https) {
                    (false, false) => ListenKind::Http,
                    (true, false) => ListenKind::Https,
                    (false, true) => ListenKind::RedirectHttps,
                    (true, true) => {
                        return Err(loc.at(
                            a.span(),
                            key,
                            "a listener is either `tls` or `redirect_https`, not both",
                        ))
                    }
                };
                if v.iter().any(|l: &Listen| l.addr == addr) {
                    return Err(loc.at(a.span(), key, format!("{addr} is listed twice")));
                }
                v.push(Listen { addr, kind });
            }
            v
        }
    };
    let workers = match s.workers {
        Some(w) if *w.get_ref() == 0 || *w.get_ref() > 1024 => {
            return Err(loc.at(
                w.span(),
                "server.workers",
                "expected a worker count from 1 to 1024 (omit it for one per CPU)",
            ))
        }
        w => w.map(|w| *w.get_ref()),
    };
    let cpus = match s.cpus {
        None => None,
        Some(c) => {
            Some(parse_cpu_list(c.get_ref()).map_err(|m| loc.at(c.span(), "server.cpus", m))?)
        }
    };
    let shutdown_timeout = opt_duration(
        loc,
        "server.shutdown_timeout",
        s.shutdown_timeout,
        Duration::from_secs(30),
    )?;
    let encoded_slashes = match &s.encoded_slashes {
        None => EncodedSlashes::Reject,
        Some(v) => match v.get_ref().as_str() {
            "reject" => EncodedSlashes::Reject,
            "keep" => EncodedSlashes::Keep,
            _ => {
                return Err(loc.at(
                    v.span(),
                    "server.encoded_slashes",
                    "expected \"reject\" or \"keep\"",
                ))
            }
        },
    };
    Ok(Server {
        listen,
        workers,
        cpus,
        pin: s.pin.unwrap_or(true),
        shutdown_timeout,
        pid_file: s.pid_file,
        path: PathPolicy {
            merge_slashes: s.merge_slashes.unwrap_or(true),
            encoded_slashes,
        },
    })
}

fn build_timeouts(loc: &Locator<'_>, t: raw::Timeouts) -> Result<Timeouts, ConfigError> {
    let d = Timeouts::default();
    Ok(Timeouts {
        client_header: opt_duration(
            loc,
            "timeouts.client_header",
            t.client_header,
            d.client_header,
        )?,
        client_body: opt_duration(loc, "timeouts.client_body", t.client_body, d.client_body)?,
        keepalive: opt_duration(loc, "timeouts.keepalive", t.keepalive, d.keepalive)?,
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

fn build_limits(loc: &Locator<'_>, l: raw::Limits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let size = |key: &str, v: Option<Spanned<usize>>, def: usize, min: usize, max: usize| match v {
        None => Ok(def),
        Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(loc.at(
            v.span(),
            key,
            format!("expected a value from {min} to {max}"),
        )),
    };
    let max_head = size(
        "limits.max_request_head",
        l.max_request_head,
        d.request.max_head,
        1024,
        1 << 20,
    )?;
    Ok(Limits {
        request: HeadLimits {
            max_head,
            max_target: size(
                "limits.max_request_target",
                l.max_request_target,
                d.request.max_target.min(max_head),
                16,
                max_head,
            )?,
            max_headers: size(
                "limits.max_headers",
                l.max_headers,
                d.request.max_headers,
                1,
                10_000,
            )?,
        },
        max_response_head: size(
            "limits.max_response_head",
            l.max_response_head,
            d.max_response_head,
            1024,
            1 << 20,
        )?,
    })
}

/// serde's wording, said the way the configuration page says it: no Rust type names, no
/// internals.
fn plain_message(m: &str) -> String {
    if m.starts_with("data did not match any variant of untagged enum") {
        let what = match m.rsplit(' ').next().unwrap_or("") {
            "Duration" => "a duration like \"250ms\", \"30s\", \"5m\" or \"1h\"",
            "ListenEntry" => "\"IP:port\" or { addr = \"IP:port\", … }",
            "ServerEntry" => "\"IP:port\" or { addr = \"IP:port\", weight = … }",
            "UpstreamTls" => "true, false or { server_name = …, ca = …, cert = …, key = … }",
            _ => "a value of another form",
        };
        return format!("expected {what}");
    }
    let mut out = m.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("invalid value: integer", "out of range:"),
        ("expected struct ", "expected a table "),
        ("expected a sequence", "expected a list"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

/// Longest duration any setting takes: long enough for any timeout, short enough that no
/// `Instant` arithmetic on it can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration setting: from 1 ms to [`MAX_DURATION`] (a zero timeout would make the proxy
/// answer nothing; an enormous one made it panic).
fn opt_duration(
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

fn parse_duration(d: &raw::Duration) -> Option<Duration> {
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
                _ => None,
            }
        }
    }
}

/// `127.0.0.1:8080`, `[::1]:8080`, `:8080` (all IPv4 addresses) or `8080`.
pub fn parse_listen_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let port = s.strip_prefix(':').unwrap_or(s).parse::<u16>().ok()?;
    Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
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

/// `0-3,8,10-11` → [0, 1, 2, 3, 8, 10, 11].
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let bad = || format!("expected a CPU list like \"0-3,8\", got {s:?}");
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let a: usize = part.parse().map_err(|_| bad())?;
                (a, a)
            }
        };
        if a > b || b > 4095 {
            return Err(bad());
        }
        for c in a..=b {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
