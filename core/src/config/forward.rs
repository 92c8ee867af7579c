//! `[forward]`: the forward proxy's settings, for listeners with `forward = true`.

use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, Locator};
use super::raw;
use super::timeouts::opt_duration;
use crate::forward::acl::{Cidr, Rule, Verdict};
use crate::forward::{
    valid_domain_entry, Anonymity, DomainSet, Forward, PortSet, PrivateDestinations,
};

pub(crate) fn build_forward(
    loc: &Locator<'_>,
    f: Option<raw::Forward>,
) -> Result<Forward, ConfigError> {
    let d = Forward::default();
    let Some(f) = f else {
        return Ok(d);
    };
    let anonymity = match f.anonymity {
        None => d.anonymity,
        Some(a) => Anonymity::parse(a.get_ref()).ok_or_else(|| {
            loc.at(
                a.span(),
                "forward.anonymity",
                format!(
                    "expected \"transparent\", \"anonymous\" or \"elite\", got {:?}",
                    a.get_ref()
                ),
            )
        })?,
    };
    let connect_ports = match &f.connect_ports {
        None => d.connect_ports,
        Some(list) => {
            let ports = port_list(loc, list.get_ref(), "forward.connect_ports")?;
            if ports.0.is_empty() {
                return Err(loc.at(
                    list.span(),
                    "forward.connect_ports",
                    "expected at least one port (CONNECT would be refused everywhere)",
                ));
            }
            ports
        }
    };
    let socks_ports = match &f.socks_ports {
        None => d.socks_ports,
        Some(list) => {
            let ports = port_list(loc, list.get_ref(), "forward.socks_ports")?;
            if ports.0.is_empty() {
                return Err(loc.at(
                    list.span(),
                    "forward.socks_ports",
                    "expected at least one port (every SOCKS5 CONNECT would be refused)",
                ));
            }
            ports
        }
    };
    let safe_ports = match &f.safe_ports {
        None => d.safe_ports,
        Some(list) => {
            let ports = port_list(loc, list.get_ref(), "forward.safe_ports")?;
            if ports.0.is_empty() {
                return Err(loc.at(
                    list.span(),
                    "forward.safe_ports",
                    "expected at least one port (every request would be refused)",
                ));
            }
            ports
        }
    };
    let mut deny_domains = DomainSet::default();
    for (i, dom) in f.deny_domains.iter().flatten().enumerate() {
        let s: &Spanned<String> = dom;
        if crate::forward::looks_like_ip(s.get_ref()) {
            return Err(loc.at(
                s.span(),
                format!("forward.deny_domains[{i}]"),
                format!(
                    "{:?} is an IP address, which a name list cannot match in all its spellings; deny it with [[forward.rules]] dest_ips instead",
                    s.get_ref()
                ),
            ));
        }
        if !valid_domain_entry(s.get_ref()) {
            return Err(loc.at(
                s.span(),
                format!("forward.deny_domains[{i}]"),
                format!(
                    "expected a domain (\"example.com\", or \".example.com\" for it and its subdomains), got {:?}",
                    s.get_ref()
                ),
            ));
        }
        deny_domains.insert(s.get_ref());
    }
    let private_destinations = match f.private_destinations {
        None => d.private_destinations,
        Some(p) => PrivateDestinations::parse(p.get_ref()).ok_or_else(|| {
            loc.at(
                p.span(),
                "forward.private_destinations",
                format!(
                    "expected \"loopback-clients\", \"deny\" or \"allow\", got {:?}",
                    p.get_ref()
                ),
            )
        })?,
    };
    let addresses =
        |v: &Spanned<raw::OneOrMany>, key: String| -> Result<Vec<std::net::IpAddr>, ConfigError> {
            let list: Vec<&String> = match v.get_ref() {
                raw::OneOrMany::One(s) => vec![s],
                raw::OneOrMany::Many(l) => l.iter().collect(),
            };
            list.into_iter()
                .map(|s| {
                    s.trim().parse().map_err(|_| {
                        loc.at(
                            v.span(),
                            key.clone(),
                            format!("expected an IP address of this machine, got {s:?}"),
                        )
                    })
                })
                .collect()
        };
    let outgoing = match &f.outgoing_address {
        None => Vec::new(),
        Some(v) => addresses(v, "forward.outgoing_address".into())?,
    };
    let mut outgoing_by_user = std::collections::BTreeMap::new();
    for (user, v) in &f.outgoing_by_user {
        outgoing_by_user.insert(
            user.clone(),
            addresses(v, format!("forward.outgoing_by_user.{user}"))?,
        );
    }
    let mut resolver = Vec::new();
    for (i, a) in f.resolver.iter().flatten().enumerate() {
        let text = a.get_ref().trim();
        let parsed = text.parse::<std::net::SocketAddr>().ok().or_else(|| {
            let ip = text.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        });
        resolver.push(parsed.ok_or_else(|| {
            loc.at(
                a.span(),
                format!("forward.resolver[{i}]"),
                format!(
                    "expected a name server's address (\"192.0.2.53\", \"127.0.0.1:5353\", \"[::1]:53\"), got {text:?}"
                ),
            )
        })?);
    }
    let mut rules = Vec::new();
    for (i, r) in f.rules.iter().enumerate() {
        rules.push(build_rule(loc, i, r.get_ref())?);
    }
    Ok(Forward {
        outgoing,
        outgoing_by_user,
        rules,
        anonymity,
        connect_ports,
        socks_ports,
        safe_ports,
        deny_domains,
        private_destinations,
        tunnel_idle: opt_duration(loc, "forward.tunnel_idle", f.tunnel_idle, d.tunnel_idle)?,
        dns_ttl: opt_duration(loc, "forward.dns_ttl", f.dns_ttl, d.dns_ttl)?,
        dns_negative_ttl: opt_duration(
            loc,
            "forward.dns_negative_ttl",
            f.dns_negative_ttl,
            d.dns_negative_ttl,
        )?,
        resolver,
        resolver_timeout: match f.resolver_timeout {
            None => None,
            Some(t) => Some(opt_duration(
                loc,
                "forward.resolver_timeout",
                Some(t),
                Duration::ZERO,
            )?),
        },
        // Relative paths are relative to the config file, as for certificates.
        auth_file: f.auth_file.as_deref().map(|p| loc.path(p)),
        blocklist: f.blocklist.as_deref().map(|p| loc.path(p)),
        users: None,
    })
}

fn build_rule(loc: &Locator<'_>, i: usize, r: &raw::ForwardRule) -> Result<Rule, ConfigError> {
    let key = |k: &str| format!("forward.rules[{i}].{k}");
    let verdict = match r.action.get_ref().as_str() {
        "allow" => Verdict::Allow,
        "deny" => Verdict::Deny,
        other => {
            return Err(loc.at(
                r.action.span(),
                key("action"),
                format!("expected \"allow\" or \"deny\", got {other:?}"),
            ))
        }
    };
    let cidrs = |list: &Option<Vec<Spanned<String>>>, k: &str| -> Result<Vec<Cidr>, ConfigError> {
        let mut v = Vec::new();
        for (j, c) in list.iter().flatten().enumerate() {
            v.push(Cidr::parse(c.get_ref().trim()).ok_or_else(|| {
                loc.at(
                    c.span(),
                    format!("{}[{j}]", key(k)),
                    format!(
                        "expected an address or a block like \"10.0.0.0/8\", got {:?}",
                        c.get_ref()
                    ),
                )
            })?);
        }
        Ok(v)
    };
    let mut domains = DomainSet::default();
    let mut domain_patterns = Vec::new();
    for (j, d) in r.domains.iter().flatten().enumerate() {
        let text = d.get_ref();
        if let Some(pattern) = text.strip_prefix('~') {
            let re = regex::RegexBuilder::new(pattern)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    loc.at(
                        d.span(),
                        format!("{}[{j}]", key("domains")),
                        format!("invalid regular expression: {e}"),
                    )
                })?;
            domain_patterns.push(re);
        } else {
            if !valid_domain_entry(text) {
                return Err(loc.at(
                    d.span(),
                    format!("{}[{j}]", key("domains")),
                    format!(
                        "expected \"example.com\", \".example.com\" or \"~regex\", got {text:?}"
                    ),
                ));
            }
            domains.insert(text);
        }
    }
    let ports = match &r.ports {
        None => None,
        Some(list) => Some(port_list(loc, list, &key("ports"))?),
    };
    let mut methods = Vec::new();
    for (j, m) in r.methods.iter().flatten().enumerate() {
        let t = m.get_ref();
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_alphabetic() || c == b'-') {
            return Err(loc.at(
                m.span(),
                format!("{}[{j}]", key("methods")),
                format!("expected a method like \"CONNECT\", got {t:?}"),
            ));
        }
        methods.push(t.to_ascii_uppercase());
    }
    Ok(Rule {
        verdict,
        clients: cidrs(&r.clients, "clients")?,
        domains,
        domain_patterns,
        ports,
        methods,
        users: r.users.clone().unwrap_or_default(),
        dest_ips: cidrs(&r.dest_ips, "dest_ips")?,
        client_subject: r
            .client_subject
            .as_ref()
            .map(|s| {
                regex::RegexBuilder::new(s.get_ref())
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        loc.at(
                            s.span(),
                            key("client_subject"),
                            format!("invalid regular expression: {e}"),
                        )
                    })
            })
            .transpose()?,
    })
}

/// `[443, "8000-8999"]` as a [`PortSet`]; an error names `key[i]`.
fn port_list(
    loc: &Locator<'_>,
    list: &[Spanned<raw::Port>],
    key: &str,
) -> Result<PortSet, ConfigError> {
    let mut v = Vec::new();
    for (j, p) in list.iter().enumerate() {
        let text = match p.get_ref() {
            raw::Port::Number(n) => n.to_string(),
            raw::Port::Text(t) => t.clone(),
        };
        v.push(PortSet::parse_item(&text).ok_or_else(|| {
            loc.at(
                p.span(),
                format!("{key}[{j}]"),
                format!("expected a port (1-65535) or a range like \"1024-65535\", got {text:?}"),
            )
        })?);
    }
    Ok(PortSet(v))
}
