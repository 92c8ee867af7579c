//! `[forward]`: the forward proxy's settings, for listeners with `forward = true`.

use toml::Spanned;

use super::error::{ConfigError, Locator};
use super::raw;
use super::timeouts::opt_duration;
use crate::forward::{Anonymity, DomainSet, Forward, PortSet, PrivateDestinations};

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
    let connect_ports = match f.connect_ports {
        None => d.connect_ports,
        Some(list) => {
            let mut v = Vec::new();
            for (i, p) in list.get_ref().iter().enumerate() {
                let text = match p.get_ref() {
                    raw::Port::Number(n) => n.to_string(),
                    raw::Port::Text(t) => t.clone(),
                };
                v.push(PortSet::parse_item(&text).ok_or_else(|| {
                    loc.at(
                        p.span(),
                        format!("forward.connect_ports[{i}]"),
                        format!("expected a port (1-65535) or a range like \"1024-65535\", got {text:?}"),
                    )
                })?);
            }
            if v.is_empty() {
                return Err(loc.at(
                    list.span(),
                    "forward.connect_ports",
                    "expected at least one port (CONNECT would be refused everywhere)",
                ));
            }
            PortSet(v)
        }
    };
    let mut deny_domains = DomainSet::default();
    for (i, dom) in f.deny_domains.iter().flatten().enumerate() {
        let s: &Spanned<String> = dom;
        let name = s.get_ref().trim().trim_start_matches('.');
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
        if !ok {
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
    Ok(Forward {
        anonymity,
        connect_ports,
        deny_domains,
        private_destinations,
        tunnel_idle: opt_duration(loc, "forward.tunnel_idle", f.tunnel_idle, d.tunnel_idle)?,
        dns_ttl: opt_duration(loc, "forward.dns_ttl", f.dns_ttl, d.dns_ttl)?,
        auth_file: f.auth_file.map(std::path::PathBuf::from),
        users: None,
    })
}
