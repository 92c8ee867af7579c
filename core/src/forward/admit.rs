//! Whether the forward proxy goes to a destination for a client: every rule in one place, as a
//! pure function of the configuration and the request, answered with a verdict. The HTTP
//! exchange maps a [`Denial`] to its status (403, 502) and the SOCKS5 server to its reply code;
//! both ask the same questions in the same order.
//!
//! Before resolution ([`admit`]): the port (`connect_ports` for tunnels, `safe_ports` for
//! forwarded requests), `deny_domains`, the access rules that do not need addresses, and an IP
//! literal that is this proxy itself. After ([`admit_addresses`]): private destinations (every
//! address must be allowed: a name that resolves to a private address among public ones is
//! refused as a whole, against DNS rebinding), this proxy's own addresses, and the rules that
//! need addresses (only the addresses the deciding rule allows are dialled).

use std::net::{IpAddr, SocketAddr};

use super::acl::{evaluate, Decision, Request, Verdict as Rule};
use super::Forward;

/// The configuration admission reads: the `[forward]` settings, and which addresses are this
/// proxy's own (a request to one would loop back in).
#[derive(Clone, Copy)]
pub struct Settings<'a> {
    pub forward: &'a Forward,
    pub own: &'a dyn OwnAddresses,
}

/// Which addresses are this proxy's own listeners.
pub trait OwnAddresses {
    fn is_own(&self, a: SocketAddr) -> bool;
}

impl<F: Fn(SocketAddr) -> bool> OwnAddresses for F {
    fn is_own(&self, a: SocketAddr) -> bool {
        self(a)
    }
}

/// What is asked: this client (and user) wants to reach `host:port`.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub client: IpAddr,
    pub user: Option<&'a str>,
    /// The subject of the client's verified certificate (TLS listeners with `client_auth`).
    pub client_subject: Option<&'a str>,
    /// The request method as sent (`CONNECT` for tunnels), for rules with `methods`.
    pub method: &'a [u8],
    /// A tunnel (CONNECT, SOCKS5): `connect_ports` apply, else `safe_ports`.
    pub tunnel: bool,
    /// The ports it may reach, when not the ones `tunnel` implies (SOCKS5: `socks_ports`).
    pub ports: Option<&'a super::PortSet>,
    /// A name, or an IP literal without brackets.
    pub host: &'a str,
    pub port: u16,
}

/// The verdict before resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Resolve the host, then ask [`admit_addresses`]. `rules_pending`: an access rule waits
    /// for the addresses.
    Resolve {
        rules_pending: bool,
    },
    Deny(Denial),
}

/// Why a destination is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// Not a port this proxy goes to: `connect_ports` for a tunnel, `safe_ports` otherwise.
    Port { tunnel: bool },
    /// Listed in `deny_domains` (by this entry).
    Domain(String),
    /// Denied by `forward.rules[i]`, or by the default when no rule matched (`None`).
    Rule {
        index: Option<usize>,
        no_rules: bool,
    },
    /// This proxy itself: the request would loop back in.
    Loop,
    /// The name is or resolves to a private address (this one) the client may not reach.
    Private(IpAddr),
    /// The name did not resolve.
    Unresolved,
}

impl Denial {
    /// What the metrics count it as: `port`, `domain`, `rule` (by a `[[forward.rules]]` entry),
    /// `default` (no rule matched), `loop`, `private` or `unresolved`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Port { .. } => "port",
            Self::Domain(_) => "domain",
            Self::Rule { index: Some(_), .. } => "rule",
            Self::Rule { index: None, .. } => "default",
            Self::Loop => "loop",
            Self::Private(_) => "private",
            Self::Unresolved => "unresolved",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Unresolved => 502,
            _ => 403,
        }
    }

    /// The SOCKS5 reply code (RFC 1928 §6): not allowed by the ruleset, or host unreachable.
    pub fn socks5_reply(&self) -> u8 {
        match self {
            Self::Unresolved => 0x04,
            _ => 0x02,
        }
    }

    /// What the client is told. A private address is not named (the log names it).
    pub fn detail(&self, ask: &Ask<'_>) -> String {
        let (host, port) = (ask.host, ask.port);
        match self {
            Self::Port { tunnel: true } => {
                format!("CONNECT to port {port} is not allowed by this proxy")
            }
            Self::Port { tunnel: false } => {
                format!("requests to port {port} are not forwarded by this proxy (safe_ports)")
            }
            Self::Domain(rule) => format!("{host} is blocked by this proxy (deny_domains: {rule})"),
            Self::Rule { index, no_rules } => {
                let why = match (index, no_rules) {
                    (Some(i), _) => format!("forward.rules[{i}]"),
                    (None, true) => {
                        "this proxy, which has no access rules and serves local clients only"
                            .to_string()
                    }
                    (None, false) => "forward.rules (no rule allows it)".to_string(),
                };
                format!("{host}:{port} is denied by {why}")
            }
            Self::Loop => format!("{host}:{port} is this proxy itself (the request would loop)"),
            Self::Private(_) => format!(
                "{host} is or resolves to a private address, which this proxy does not reach for you"
            ),
            Self::Unresolved => format!("could not resolve {host}"),
        }
    }

    /// What the log is told.
    pub fn logged(&self, ask: &Ask<'_>) -> String {
        match self {
            Self::Private(ip) => format!("{} resolves to private address {ip}", ask.host),
            d => d.detail(ask),
        }
    }
}

/// The checks that need no addresses.
pub fn admit(cfg: Settings<'_>, ask: &Ask<'_>) -> Verdict {
    let fwd = cfg.forward;
    let ports = match (ask.ports, ask.tunnel) {
        (Some(p), _) => p,
        (None, true) => &fwd.connect_ports,
        (None, false) => &fwd.safe_ports,
    };
    if !ports.contains(ask.port) {
        return Verdict::Deny(Denial::Port { tunnel: ask.tunnel });
    }
    if let Some(rule) = fwd.deny_domains.matches(ask.host) {
        return Verdict::Deny(Denial::Domain(rule));
    }
    let rules_pending = match rules(cfg, ask, None) {
        Ok(Some(_)) | Ok(None) => false,
        Err(Some(d)) => return Verdict::Deny(d),
        Err(None) => true,
    };
    if let Ok(ip) = ask.host.parse::<IpAddr>() {
        if cfg.own.is_own(SocketAddr::new(ip, ask.port)) {
            return Verdict::Deny(Denial::Loop);
        }
    }
    Verdict::Resolve { rules_pending }
}

/// The checks on the addresses `ask.host` resolved to (in the resolver's order). Returns those
/// that may be dialled, in order; never empty.
pub fn admit_addresses(
    cfg: Settings<'_>,
    ask: &Ask<'_>,
    rules_pending: bool,
    mut addrs: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, Denial> {
    if addrs.is_empty() {
        return Err(Denial::Unresolved);
    }
    let policy = cfg.forward.private_destinations;
    if let Some(bad) = addrs.iter().find(|a| !policy.allows(ask.client, a.ip())) {
        return Err(Denial::Private(bad.ip()));
    }
    if addrs.iter().any(|a| cfg.own.is_own(*a)) {
        return Err(Denial::Loop);
    }
    if rules_pending {
        let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        match rules(cfg, ask, Some(&ips)) {
            Ok(Some(allowed)) => {
                addrs.retain(|a| allowed.iter().any(|c| c.contains(a.ip())));
            }
            Ok(None) => {}
            Err(d) => {
                return Err(d.unwrap_or(Denial::Rule {
                    index: None,
                    no_rules: false,
                }))
            }
        }
    }
    Ok(addrs)
}

/// `[[forward.rules]]` for `ask`: `Ok` with the deciding rule's address blocks when it decided
/// on addresses; `Err(Some)` denied; `Err(None)` the addresses are needed.
fn rules(
    cfg: Settings<'_>,
    ask: &Ask<'_>,
    dest: Option<&[IpAddr]>,
) -> Result<Option<Vec<super::acl::Cidr>>, Option<Denial>> {
    let r = Request {
        client: ask.client,
        host: ask.host,
        port: ask.port,
        method: ask.method,
        user: ask.user,
        dest,
        client_subject: ask.client_subject,
    };
    let rules = &cfg.forward.rules;
    match evaluate(rules, &r) {
        Decision::NeedAddresses => Err(None),
        Decision::Decided(Rule::Allow, rule) => Ok(rule
            .map(|i| &rules[i].dest_ips)
            .filter(|d| !d.is_empty() && dest.is_some())
            .cloned()),
        Decision::Decided(Rule::Deny, index) => Err(Some(Denial::Rule {
            index,
            no_rules: rules.is_empty(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rules: &str) -> crate::config::Config {
        let text = format!(
            "[server]\nlisten = [{{ addr = \"127.0.0.1:3128\", forward = true }}]\n[forward]\ndeny_domains = [\"blocked.test\"]\n{rules}"
        );
        crate::config::Config::parse("t.toml", &text).unwrap()
    }

    fn ask<'a>(host: &'a str, port: u16, tunnel: bool) -> Ask<'a> {
        Ask {
            client: "127.0.0.1".parse().unwrap(),
            user: None,
            client_subject: None,
            method: if tunnel { b"CONNECT" } else { b"GET" },
            tunnel,
            ports: None,
            host,
            port,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn before_resolution_in_order() {
        let c = cfg("");
        let own = |a| c.is_own_address(a);
        let s = Settings {
            forward: &c.forward,
            own: &own,
        };
        let resolve = Verdict::Resolve {
            rules_pending: false,
        };
        assert_eq!(admit(s, &ask("a.test", 443, true)), resolve);
        assert_eq!(admit(s, &ask("a.test", 80, false)), resolve);
        let deny = |a| match admit(s, &a) {
            Verdict::Deny(d) => d,
            v => panic!("{v:?}"),
        };
        assert_eq!(deny(ask("a.test", 22, true)), Denial::Port { tunnel: true });
        assert_eq!(
            deny(ask("a.test", 22, false)),
            Denial::Port { tunnel: false }
        );
        // The port is checked before the name: a blocked name on a bad port names the port.
        assert_eq!(
            deny(ask("blocked.test", 22, false)),
            Denial::Port { tunnel: false }
        );
        assert!(matches!(
            deny(ask("blocked.test", 80, false)),
            Denial::Domain(_)
        ));
        assert_eq!(deny(ask("127.0.0.1", 3128, false)), Denial::Loop);
        let d = deny(ask("a.test", 25, false));
        assert_eq!((d.status(), d.socks5_reply()), (403, 0x02));
        assert!(d.detail(&ask("a.test", 25, false)).contains("port 25"));
    }

    #[test]
    fn rules_that_need_addresses_decide_after_resolution() {
        let c = cfg("[[forward.rules]]\naction = \"deny\"\ndest_ips = [\"10.0.0.0/8\"]\n[[forward.rules]]\naction = \"allow\"\n");
        let own = |a| c.is_own_address(a);
        let s = Settings {
            forward: &c.forward,
            own: &own,
        };
        let a = ask("a.test", 80, false);
        assert_eq!(
            admit(s, &a),
            Verdict::Resolve {
                rules_pending: true
            }
        );
        assert_eq!(
            admit_addresses(s, &a, true, vec![sa("10.1.2.3:80")]),
            Err(Denial::Rule {
                index: Some(0),
                no_rules: false
            })
        );
        let ok = vec![sa("127.0.0.2:80"), sa("[::1]:80")];
        assert_eq!(admit_addresses(s, &a, true, ok.clone()), Ok(ok));
    }

    #[test]
    fn after_resolution() {
        let c = cfg("");
        let own = |a| c.is_own_address(a);
        let s = Settings {
            forward: &c.forward,
            own: &own,
        };
        let a = ask("a.test", 80, false);
        assert_eq!(
            admit_addresses(s, &a, false, vec![]),
            Err(Denial::Unresolved)
        );
        assert_eq!(Denial::Unresolved.status(), 502);
        assert_eq!(Denial::Unresolved.socks5_reply(), 0x04);
        // A name that resolves to this proxy's own address loops.
        assert_eq!(
            admit_addresses(s, &a, false, vec![sa("127.0.0.1:3128")]),
            Err(Denial::Loop)
        );
        // A public client may not reach private addresses, even one among public ones.
        let public = Ask {
            client: "203.0.113.9".parse().unwrap(),
            ..a
        };
        let mixed = vec![sa("198.51.100.1:80"), sa("10.0.0.1:80")];
        let d = admit_addresses(s, &public, false, mixed).unwrap_err();
        assert_eq!(d, Denial::Private("10.0.0.1".parse().unwrap()));
        assert!(
            !d.detail(&public).contains("10.0.0.1"),
            "the page does not name it"
        );
        assert!(d.logged(&public).contains("10.0.0.1"), "the log does");
    }
}
