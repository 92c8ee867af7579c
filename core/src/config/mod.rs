//! The configuration model: one TOML file parsed once into a typed, immutable [`Config`].
//!
//! "Parse, don't validate": everything the data plane reads has already been checked and
//! converted (addresses, durations, routes compiled into a [`Router`]). An error names the file,
//! the line, the key and what was expected, e.g.
//! `ringway.toml:12: routes[1].upstream: no upstream named "ap" (defined: app)`.
//! Reading the file is the caller's job; this module only sees its text.

mod access_rules;
mod acme;
mod cache;
mod compression;
mod edits;
mod error;
mod forward;
mod limits;
mod log;
mod ratelimit;
mod raw;
mod resolver;
mod route;
mod server;
mod timeouts;
mod tls;
mod upstream;
pub mod versions;

pub use cache::{parse_size_text, DEFAULT_CACHE_SIZE};
pub use error::ConfigError;
use error::{plain_message, Locator};
use limits::build_limits;
pub use limits::Limits;
pub use log::{AccessLog, LogTarget, DEFAULT_LOG_BUFFER, DEFAULT_LOG_FLUSH};
pub use ratelimit::SharedLimits;
pub use ratelimit::DEFAULT_LIMIT_KEYS;
pub use resolver::Resolver;
pub use route::{Action, Route};
use server::build_server;
pub use server::{
    parse_cpu_list, parse_listen_addr, ClientAuth, ConnectionLimits, Listen, Protocol, ProxyHeader,
    Refusal, Server, Transport,
};
use timeouts::{build_timeouts, opt_duration};
pub use timeouts::{parse_park, Timeouts, MAX_DURATION};
pub use upstream::{
    parse_server_addr, parse_server_name, Balance, HashKey, NamedServer, Upstream, UpstreamServer,
    DEFAULT_HASH_BALANCE_FACTOR, DEFAULT_RETRIES, DEFAULT_UPSTREAM_KEEPALIVE,
};

pub use acme::{
    Acme, DEFAULT_RETRY as DEFAULT_ACME_RETRY, LETS_ENCRYPT, MAX_RETRY as MAX_ACME_RETRY,
};
pub use tls::{CertKeyFiles, Origin, Tls, TlsVersion, UpstreamTls, DEFAULT_HANDSHAKE_TIMEOUT};

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::health::PassivePolicy;
use crate::http::path::PathPolicy;
use crate::route::{HostMatch, Router};

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: Server,
    /// The admin listener (status JSON), off unless configured; always a loopback address.
    pub admin: Option<SocketAddr>,
    /// When set, the admin listener's actions (drain, purge) need `Authorization: Bearer` with
    /// it; reading the status never does.
    pub admin_token: Option<String>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    /// (host, path) → index into `routes`.
    pub router: Router<usize>,
    /// Certificates and settings of the listeners marked `tls`.
    pub tls: Option<Tls>,
    /// Certificates obtained and renewed from an ACME CA, when `[acme]` is present.
    pub acme: Option<Acme>,
    /// The forward proxy's rules, for listeners marked `forward`.
    pub forward: crate::forward::Forward,
    /// The HTTP cache, when `[cache]` is present.
    pub cache: Option<crate::cache::CacheConfig>,
    /// How responses are compressed, on routes with `compress` (defaults without the section).
    pub compression: crate::compress::Compression,
    /// The access log, when `[access_log]` is present.
    pub access_log: Option<AccessLog>,
    /// How upstream servers given by name are resolved.
    pub resolver: Resolver,
    /// Request-rate limits, checked in order.
    pub rate_limits: Vec<crate::limit::RateLimit>,
    /// Where limits marked `shared` meet the other boxes' counts.
    pub shared_limits: Option<SharedLimits>,
    /// Allow, deny and tarpit rules for the reverse proxy, checked in order.
    pub rules: Vec<crate::rules::Rule>,
}

impl Config {
    /// Whether an exchange on the listener `listen` (as bound at start; a reload may switch
    /// its log off) that matched `route` goes to the access log.
    pub fn logs(&self, listen: &Listen, route: Option<usize>) -> bool {
        let listener = self
            .server
            .listen
            .iter()
            .find(|l| l.addr == listen.addr)
            .map_or(listen.log, |l| l.log);
        let route = route.and_then(|r| self.routes.get(r)).map(|r| r.log);
        self.access_log.is_some() && listener && route != Some(false)
    }
}

impl Config {
    /// The port `redirect_https` listeners send clients to: the first TLS listener's, else 443.
    pub fn https_port(&self) -> u16 {
        self.server
            .listen
            .iter()
            .find(|l| l.is_tls())
            .map_or(443, |l| l.addr.port())
    }

    /// Whether `dest` is one of this proxy's own listening addresses (a forward request to it
    /// would loop back in, one level deeper each time): the same port, and the same address,
    /// or loopback for a listener on all addresses.
    pub fn is_own_address(&self, dest: SocketAddr) -> bool {
        let ip = match dest.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(dest.ip(), IpAddr::V4),
            v4 => v4,
        };
        self.server.listen.iter().any(|l| {
            l.addr.port() == dest.port()
                && (l.addr.ip() == ip || (l.addr.ip().is_unspecified() && ip.is_loopback()))
        })
    }

    /// What `check` and start-up warn about: settings that work but are likely mistakes.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.forward.rules.is_empty() {
            for l in &self.server.listen {
                let ip = l.addr.ip();
                if matches!(l.protocol, Protocol::ForwardHttp | Protocol::Socks5)
                    && (ip.is_unspecified() || !crate::forward::is_private(ip))
                {
                    w.push(format!(
                        "the forward proxy on {} has no [[forward.rules]]: it serves clients on loopback and private networks only; write rules to say who else may use it",
                        l.addr
                    ));
                }
            }
        }
        w
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
            cache: None,
            name: "/".into(),
            log: true,
            max_body: None,
            max_headers: None,
            max_target: None,
            path_rewrite: Default::default(),
            request_headers: Default::default(),
            response_headers: Default::default(),
            rewrite_location: true,
            cookies: Default::default(),
            compress: false,
            body_replace: None,
        }];
        Self {
            admin: None,
            admin_token: None,
            tls: None,
            acme: None,
            server: Server {
                listen: listen.into_iter().map(Listen::plain).collect(),
                workers: None,
                cpus: None,
                pin: true,
                io_uring: true,
                multishot_accept: true,
                recv_ring: true,
                recv_ring_buffers: server::DEFAULT_RECV_RING_BUFFERS,
                shutdown_timeout: Duration::from_secs(30),
                pid_file: None,
                state_dir: None,
                connections: ConnectionLimits::default(),
                trusted: Default::default(),
                request_id: None,
                versions: versions::DEFAULT_VERSIONS_KEPT,
                path: PathPolicy::default(),
            },
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            upstreams: vec![Upstream {
                name: "default".into(),
                servers: upstreams.into_iter().map(UpstreamServer::new).collect(),
                named: Vec::new(),
                keepalive: DEFAULT_UPSTREAM_KEEPALIVE,
                balance,
                passive: PassivePolicy::default(),
                retries: DEFAULT_RETRIES,
                retry_timeout: Duration::from_secs(10),
                retry_on: Vec::new(),
                proxy_protocol: None,
                health_check: None,
                tls: None,
            }],
            router: Router::new([(HostMatch::Any, "/".to_string(), 0)]),
            routes,
            forward: crate::forward::Forward::default(),
            cache: None,
            compression: Default::default(),
            access_log: None,
            resolver: Resolver::default(),
            rate_limits: Vec::new(),
            shared_limits: None,
            rules: Vec::new(),
        }
    }
}

impl Config {
    /// Turns the cache on with its defaults and `size` bytes (quick mode's `--cache`), for every
    /// route that proxies.
    pub fn enable_cache(&mut self, size: u64) {
        let c = crate::cache::CacheConfig {
            size,
            rules: crate::cache::CacheRules::default(),
            forward: true,
            forward_rules: crate::cache::CacheRules {
                targeted: Vec::new(),
                strip_tags: false,
                ..Default::default()
            },
        };
        for r in &mut self.routes {
            if matches!(r.action, Action::Proxy { .. }) {
                r.cache = Some(c.rules.clone());
            }
        }
        self.cache = Some(c);
    }

    /// Turns compression on with its defaults (quick mode's `--compress`), for every route.
    pub fn enable_compression(&mut self) {
        for r in &mut self.routes {
            r.compress = true;
        }
    }

    /// A configuration for quick mode's forward proxy: forward-proxy listeners, no routes.
    pub fn forward_quick(listen: Vec<SocketAddr>) -> Self {
        let mut c = Self::quick(listen, Vec::new(), Balance::RoundRobin);
        for l in &mut c.server.listen {
            l.protocol = Protocol::ForwardHttp;
        }
        c.upstreams.clear();
        c.routes.clear();
        c.router = Router::new(std::iter::empty());
        c
    }
}

impl crate::forward::admit::OwnAddresses for Config {
    fn is_own(&self, a: SocketAddr) -> bool {
        self.is_own_address(a)
    }
}

impl crate::cache::step::RulesSource for Config {
    fn rules(&self, r: crate::cache::step::Rules) -> Option<&crate::cache::CacheRules> {
        match r {
            crate::cache::step::Rules::Route(i) => self.routes.get(i)?.cache.as_ref(),
            crate::cache::step::Rules::Forward => self
                .cache
                .as_ref()
                .filter(|c| c.forward)
                .map(|c| &c.forward_rules),
        }
    }
}

fn build(loc: &Locator<'_>, raw: raw::File) -> Result<Config, ConfigError> {
    let server = build_server(loc, raw.server)?;
    let timeouts = build_timeouts(loc, raw.timeouts)?;
    let limits = build_limits(loc, raw.limits)?;
    let upstreams = upstream::build_upstreams(loc, &raw.upstreams)?;
    let cache = cache::build_cache(loc, raw.cache)?;
    let (compression, compress) = compression::build_compression(loc, raw.compression)?;
    let routes = route::build_routes(
        loc,
        &raw.routes,
        &upstreams,
        &server.path,
        cache.as_ref(),
        compress,
    )?;
    // Only listeners that serve requests by route need routes (a forward proxy and a
    // redirect-to-https listener do not).
    let routed = server.listen.iter().any(|l| l.protocol == Protocol::Http);
    if routes.is_empty() && routed {
        return Err(loc.nowhere("routes", "expected at least one [[routes]] entry"));
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
    let admin_token = match raw.admin.as_ref().and_then(|a| a.token.as_ref()) {
        None => None,
        Some(t) if t.get_ref().len() >= 16 && t.get_ref().bytes().all(|b| b.is_ascii_graphic()) => {
            Some(t.get_ref().clone())
        }
        Some(t) => {
            return Err(loc.at(
                t.span(),
                "admin.token",
                "expected at least 16 visible ASCII characters (no spaces)",
            ))
        }
    };
    let forward = forward::build_forward(loc, raw.forward)?;
    let access_log = log::build_access_log(loc, raw.access_log)?;
    let resolver = resolver::build_resolver(loc, raw.resolver)?;
    let shared_limits = ratelimit::build_shared_limits(loc, raw.shared_limits.as_ref())?;
    let rate_limits =
        ratelimit::build_rate_limits(loc, &raw.rate_limits, &routes, shared_limits.as_ref())?;
    let rules = access_rules::build_rules(loc, &raw.rules, &routes, &server.listen)?;
    let acme = acme::build_acme(loc, raw.acme, &server)?;
    let tls = match &raw.tls {
        None if acme.is_some() => Some(Tls::defaults()),
        None => None,
        Some(t) => Some(tls::build_tls(loc, t, acme.is_some())?),
    };
    if let Some(i) = server
        .listen
        .iter()
        .position(|l| l.client_auth != ClientAuth::Off)
    {
        if tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
            return Err(loc.nowhere(
                format!("server.listen[{i}].client_auth"),
                "client certificates are verified against [tls] client_ca: set it to a PEM file of the client CAs",
            ));
        }
    }
    if tls.is_none() {
        if let Some(i) = server.listen.iter().position(|l| l.is_tls()) {
            return Err(loc.nowhere(
                format!("server.listen[{i}]"),
                "a TLS listener needs certificates: add a [tls] section with `certificates`, or [acme]",
            ));
        }
    }
    Ok(Config {
        access_log,
        resolver,
        rate_limits,
        shared_limits,
        rules,
        cache,
        compression,
        tls,
        acme,
        forward,
        server,
        admin,
        admin_token,
        timeouts,
        limits,
        upstreams,
        routes,
        router,
    })
}

#[cfg(test)]
mod tests;
