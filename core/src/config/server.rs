//! `[server]`: listeners, workers, CPUs, paths.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::{opt_duration, raw, ConfigError, Locator};
use crate::http::path::{EncodedSlashes, PathPolicy};

/// One listen address: the transport its connections arrive by and the protocol spoken on
/// it. io accepts, establishes the transport, then hands the connection to the protocol's
/// driver; a new protocol (SOCKS5) is a new variant and a new driver, and options that act
/// before the protocol (a PROXY header) are new fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub transport: Transport,
    pub protocol: Protocol,
    /// Its exchanges go to the access log (`access_log = false` keeps them out).
    pub log: bool,
    /// Most connections open on it at once (all workers); `None`: no limit.
    pub max_connections: Option<u32>,
    /// Whether connections start with a PROXY protocol header (a balancer in front).
    pub proxy_protocol: ProxyHeader,
    /// Whether TLS clients present a certificate (verified against `[tls] client_ca`).
    pub client_auth: ClientAuth,
}

/// A TLS listener's client certificates (mutual TLS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    #[default]
    Off,
    /// Asked for; a client without one is served, and the upstream told `NONE`.
    Optional,
    /// A handshake without a valid one fails.
    Required,
}

/// A listener's PROXY protocol header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyHeader {
    /// None is read: the bytes are the client's.
    #[default]
    Off,
    /// Every connection must start with one (v1 or v2); else it is closed, counted.
    Required,
    /// Read when there is one (a balancer's and direct clients on one port).
    Optional,
}

/// How connections arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Plain,
    /// TLS with the certificates of `[tls]`.
    Tls,
}

/// What is spoken once the transport is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x to the routes: the reverse proxy.
    Http,
    /// HTTP/1.x answering every request with a 301 to the same host and path over https.
    RedirectHttps,
    /// A forward proxy: absolute-form requests and CONNECT tunnels, under `[forward]`.
    ForwardHttp,
    /// A SOCKS5 server (RFC 1928), under the same `[forward]` users and rules.
    Socks5,
}

impl Listen {
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: Transport::Plain,
            protocol: Protocol::Http,
            log: true,
            max_connections: None,
            proxy_protocol: ProxyHeader::Off,
            client_auth: ClientAuth::Off,
        }
    }

    /// Whether `other` needs a restart to replace this (everything but the log switch).
    pub fn same_socket(&self, other: &Self) -> bool {
        (
            self.addr,
            self.transport,
            self.protocol,
            self.proxy_protocol,
        ) == (
            other.addr,
            other.transport,
            other.protocol,
            other.proxy_protocol,
        )
    }

    pub fn is_tls(&self) -> bool {
        self.transport == Transport::Tls
    }

    /// The scheme of the requests it receives, for X-Forwarded-Proto.
    pub fn scheme(&self) -> &'static str {
        match self.transport {
            Transport::Tls => "https",
            Transport::Plain => "http",
        }
    }

    /// How `ringway` describes it when it starts.
    pub fn describe(&self, addr: SocketAddr) -> String {
        match (self.transport, self.protocol) {
            (Transport::Plain, Protocol::Http) => addr.to_string(),
            (Transport::Tls, Protocol::Http) => format!("{addr} (tls)"),
            (_, Protocol::RedirectHttps) => format!("{addr} (redirect to https)"),
            (Transport::Plain, Protocol::ForwardHttp) => format!("{addr} (forward proxy)"),
            (Transport::Tls, Protocol::ForwardHttp) => format!("{addr} (forward proxy, tls)"),
            (_, Protocol::Socks5) => format!("{addr} (socks5)"),
        }
    }
}

/// Buffers in a worker's ring of provided buffers when `server.recv_ring_buffers` is not set:
/// 512 of 2 KiB, 1 MiB per worker.
pub const DEFAULT_RECV_RING_BUFFERS: u16 = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub listen: Vec<Listen>,
    /// `None`: one worker per CPU the process may run on.
    pub workers: Option<usize>,
    /// CPUs to pin workers to, in order; `None`: all allowed CPUs.
    pub cpus: Option<Vec<usize>>,
    pub pin: bool,
    /// Whether workers run on io_uring when the kernel allows it (`false`: on epoll, as on
    /// kernels or sandboxes without io_uring).
    pub io_uring: bool,
    /// Whether listeners on io_uring accept with one multishot accept operation (where the
    /// kernel has it: Linux 5.19) instead of a readiness wait and `accept4` per connection.
    pub multishot_accept: bool,
    /// Whether keep-alive client connections on io_uring wait for their next request through a
    /// receive into a ring of provided buffers (Linux 5.19), holding no buffer of their own.
    pub recv_ring: bool,
    /// Buffers of 2 KiB in each worker's ring of provided buffers (a power of two).
    pub recv_ring_buffers: u16,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Where the running process writes its PID (for `ringway reload`).
    pub pid_file: Option<String>,
    /// Where applied configurations are kept as numbered versions (`ringway versions`,
    /// `rollback`, `diff`); `None`: they are not.
    pub state_dir: Option<String>,
    /// How many versions are kept.
    pub versions: usize,
    /// How request paths are normalised before routing (and sent upstream).
    pub path: PathPolicy,
    /// Connection limits checked when a connection is accepted.
    pub connections: ConnectionLimits,
    /// Peers whose `X-Forwarded-For` (or `Forwarded`) names the real client.
    pub trusted: crate::realip::Trusted,
    /// The field that carries each request's id (`request_id`; none: no ids).
    pub request_id: Option<String>,
}

/// `max_connections`, `max_connections_per_client`, `connection_refusal`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Client connections open at once in the process; `None`: no limit.
    pub max: Option<u32>,
    /// Per client address (IPv6 by /64).
    pub per_client: Option<u32>,
    /// What a connection over a limit gets.
    pub refusal: Refusal,
}

/// How a connection over a limit is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refusal {
    /// `503 Service Unavailable` with `Retry-After` and `Connection: close` (plain HTTP
    /// listeners; TLS and others are closed), like nginx's `limit_conn`.
    #[default]
    Unavailable,
    /// Closed at once, nothing sent: the cheapest.
    Close,
}

pub(crate) fn build_server(loc: &Locator<'_>, s: raw::Server) -> Result<Server, ConfigError> {
    let listen = match s.listen {
        None => vec![Listen::plain(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)))],
        Some(l) => {
            if l.get_ref().is_empty() {
                return Err(loc.at(l.span(), "server.listen", "expected at least one address"));
            }
            let mut v = Vec::new();
            for (i, a) in l.get_ref().iter().enumerate() {
                let key = format!("server.listen[{i}]");
                let (addr, tls, redirect_https, forward, socks5, log) = match a.get_ref() {
                    raw::ListenEntry::Addr(s) => (s, false, false, false, false, true),
                    raw::ListenEntry::Full(t) => (
                        &t.addr,
                        t.tls.unwrap_or(false),
                        t.redirect_https.unwrap_or(false),
                        t.forward.unwrap_or(false),
                        t.socks5.unwrap_or(false),
                        super::log::flag(t.access_log.clone()),
                    ),
                };
                let max_connections = match a.get_ref() {
                    raw::ListenEntry::Full(t) => {
                        positive(loc, &t.max_connections, &format!("{key}.max_connections"))?
                    }
                    raw::ListenEntry::Addr(_) => None,
                };
                let proxy_protocol = match a.get_ref() {
                    raw::ListenEntry::Full(t) => match t.proxy_protocol.as_ref() {
                        None => ProxyHeader::Off,
                        Some(s) => match s {
                            raw::Switch::Bool(true) => ProxyHeader::Required,
                            raw::Switch::Bool(false) => ProxyHeader::Off,
                            raw::Switch::Word(w) if w == "optional" => ProxyHeader::Optional,
                            raw::Switch::Word(_) => {
                                return Err(loc.at(
                                    a.span(),
                                    format!("{key}.proxy_protocol"),
                                    "expected true, false or \"optional\"",
                                ))
                            }
                        },
                    },
                    raw::ListenEntry::Addr(_) => ProxyHeader::Off,
                };
                let addr = parse_listen_addr(addr).ok_or_else(|| {
                    loc.at(
                        a.span(),
                        key.clone(),
                        format!("expected IP:port, :port or port, got {addr:?}"),
                    )
                })?;
                let (transport, protocol) = match (tls, redirect_https, forward, socks5) {
                    (false, false, false, false) => (Transport::Plain, Protocol::Http),
                    (true, false, false, false) => (Transport::Tls, Protocol::Http),
                    (false, true, false, false) => (Transport::Plain, Protocol::RedirectHttps),
                    (false, false, true, false) => (Transport::Plain, Protocol::ForwardHttp),
                    // An HTTPS proxy (`curl --proxy https://…`): TLS to the proxy itself.
                    (true, false, true, false) => (Transport::Tls, Protocol::ForwardHttp),
                    (false, false, false, true) => (Transport::Plain, Protocol::Socks5),
                    _ => return Err(loc.at(
                        a.span(),
                        key,
                        "a listener is one of `tls`, `redirect_https`, `forward`, `forward` with `tls`, or `socks5`",
                    )),
                };
                let client_auth = match a.get_ref() {
                    raw::ListenEntry::Full(t) => match t.client_auth.as_ref() {
                        None => ClientAuth::Off,
                        Some(_) if transport != Transport::Tls => {
                            return Err(loc.at(
                                a.span(),
                                format!("{key}.client_auth"),
                                "client certificates need a TLS listener (tls = true)",
                            ))
                        }
                        Some(w) => match w.as_str() {
                            "required" => ClientAuth::Required,
                            "optional" => ClientAuth::Optional,
                            _ => {
                                return Err(loc.at(
                                    a.span(),
                                    format!("{key}.client_auth"),
                                    "expected \"required\" or \"optional\"",
                                ))
                            }
                        },
                    },
                    raw::ListenEntry::Addr(_) => ClientAuth::Off,
                };
                if v.iter().any(|l: &Listen| l.addr == addr) {
                    return Err(loc.at(a.span(), key, format!("{addr} is listed twice")));
                }
                v.push(Listen {
                    addr,
                    transport,
                    protocol,
                    log,
                    max_connections,
                    proxy_protocol,
                    client_auth,
                });
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
    let recv_ring_buffers = match s.recv_ring_buffers {
        None => DEFAULT_RECV_RING_BUFFERS,
        Some(n) => match u16::try_from(*n.get_ref()) {
            Ok(b) if b.is_power_of_two() && (16..=32768).contains(&b) => b,
            _ => {
                return Err(loc.at(
                    n.span(),
                    "server.recv_ring_buffers",
                    "expected a power of two from 16 to 32768",
                ))
            }
        },
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
    let connections = ConnectionLimits {
        max: positive(loc, &s.max_connections, "server.max_connections")?,
        per_client: positive(
            loc,
            &s.max_connections_per_client,
            "server.max_connections_per_client",
        )?,
        refusal: match &s.connection_refusal {
            None => Refusal::Unavailable,
            Some(r) => match r.get_ref().as_str() {
                "503" => Refusal::Unavailable,
                "close" => Refusal::Close,
                _ => {
                    return Err(loc.at(
                        r.span(),
                        "server.connection_refusal",
                        "expected \"503\" or \"close\"",
                    ))
                }
            },
        },
    };
    let mut trusted = crate::realip::Trusted::default();
    for (i, c) in s.trusted_proxies.iter().flatten().enumerate() {
        if !trusted.proxies.add(c.get_ref()) {
            return Err(loc.at(
                c.span(),
                format!("server.trusted_proxies[{i}]"),
                "expected an address or a block, like \"10.0.0.0/8\" or \"2001:db8::/32\"",
            ));
        }
    }
    trusted.field = match &s.real_ip_header {
        None => crate::realip::ChainField::XForwardedFor,
        Some(h) if h.get_ref().eq_ignore_ascii_case("x-forwarded-for") => {
            crate::realip::ChainField::XForwardedFor
        }
        Some(h) if h.get_ref().eq_ignore_ascii_case("forwarded") => {
            crate::realip::ChainField::Forwarded
        }
        Some(h) => {
            return Err(loc.at(
                h.span(),
                "server.real_ip_header",
                "expected \"X-Forwarded-For\" or \"Forwarded\"",
            ))
        }
    };
    let request_id =
        match &s.request_id {
            None => None,
            Some(h)
                if crate::http::chars::is_token(h.get_ref().as_bytes())
                    && !matches!(
                        h.get_ref().to_ascii_lowercase().as_str(),
                        "host"
                            | "content-length"
                            | "transfer-encoding"
                            | "connection"
                            | "te"
                            | "upgrade"
                            | "trailer"
                            | "keep-alive"
                    ) =>
            {
                Some(h.get_ref().clone())
            }
            Some(h) => return Err(loc.at(
                h.span(),
                "server.request_id",
                "expected a field name like \"X-Request-Id\" (not a framing or connection field)",
            )),
        };
    Ok(Server {
        request_id,
        trusted,
        connections,
        listen,
        workers,
        cpus,
        pin: s.pin.unwrap_or(true),
        io_uring: s.io_uring.unwrap_or(true),
        multishot_accept: s.multishot_accept.unwrap_or(true),
        recv_ring: s.recv_ring.unwrap_or(true),
        recv_ring_buffers,
        shutdown_timeout,
        // Relative to the config file, as every path in it.
        pid_file: s
            .pid_file
            .map(|p| loc.path(&p).to_string_lossy().into_owned()),
        state_dir: s
            .state_dir
            .map(|p| loc.path(&p).to_string_lossy().into_owned()),
        versions: match s.versions {
            None => super::versions::DEFAULT_VERSIONS_KEPT,
            Some(v) if (1..=1000).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                return Err(loc.at(
                    v.span(),
                    "server.versions",
                    "expected how many versions to keep, from 1 to 1000",
                ))
            }
        },
        path: PathPolicy {
            merge_slashes: s.merge_slashes.unwrap_or(true),
            encoded_slashes,
        },
    })
}

/// A count of at least 1, when given.
fn positive(
    loc: &Locator<'_>,
    v: &Option<toml::Spanned<u32>>,
    key: &str,
) -> Result<Option<u32>, ConfigError> {
    match v {
        None => Ok(None),
        Some(n) if *n.get_ref() >= 1 => Ok(Some(*n.get_ref())),
        Some(n) => Err(loc.at(n.span(), key, "expected at least 1 (omit it for no limit)")),
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
