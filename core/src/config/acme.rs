//! `[acme]`: certificates obtained and renewed from an ACME CA (see `crate::acme`).

use std::path::PathBuf;
use std::time::Duration;

use super::tls::Origin;
use super::{opt_duration, raw, ConfigError, Locator, Protocol, Server, Transport};
use crate::acme::demand::OnDemand;
use crate::acme::{ChallengeKind, Url};

/// Let's Encrypt's production directory: the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// `mailto:` contacts for the account (expiry and policy mail from the CA).
    pub contact: Vec<String>,
    /// One certificate per name, each renewed on its own.
    pub domains: Vec<String>,
    /// Directory URLs, tried in order when one fails.
    pub ca: Vec<String>,
    /// Trust anchors for the CAs' own HTTPS besides the system's (a test CA like pebble).
    pub ca_root: Option<PathBuf>,
    /// How control is shown, in order of preference.
    pub challenges: Vec<ChallengeKind>,
    /// Account keys, certificates and their keys.
    pub storage: PathBuf,
    /// The first wait after a failed order; it doubles with each failure in a row, to a day.
    pub retry: Duration,
    /// Names ordered when a handshake first asks for them.
    pub on_demand: Option<OnDemand>,
    pub origin: Origin,
}

/// Orders on demand an hour, unless `on_demand_per_hour` says otherwise.
pub const DEFAULT_ON_DEMAND_PER_HOUR: u32 = 20;

pub const DEFAULT_RETRY: Duration = Duration::from_secs(60);
/// The longest wait between tries of a failing order.
pub const MAX_RETRY: Duration = Duration::from_secs(86_400);

impl Acme {
    /// Quick mode's `--acme EMAIL --domain NAME…`, for the listeners of `server`.
    pub fn quick(
        email: &str,
        domains: &[String],
        ca: Option<&str>,
        storage: PathBuf,
        server: &Server,
    ) -> Result<Self, String> {
        let origin = Origin {
            file: "--acme".into(),
            line: None,
            key: String::new(),
        };
        let mut names = Vec::new();
        for d in domains {
            names.push(domain(d).map_err(|e| format!("--domain {d:?}: {e}"))?);
        }
        if names.is_empty() {
            return Err("--acme needs at least one --domain".into());
        }
        let ca = ca.unwrap_or(LETS_ENCRYPT).to_string();
        Url::parse(&ca).map_err(|e| format!("--acme-ca: {e}"))?;
        let challenges = default_challenges(server);
        if challenges.is_empty() {
            return Err("--acme needs a reverse-proxy listener the CA can reach (--listen with --upstream, or --redirect-https)".into());
        }
        Ok(Self {
            contact: vec![contact(email).map_err(|e| format!("--acme {email:?}: {e}"))?],
            domains: names,
            ca: vec![ca],
            ca_root: None,
            challenges,
            storage,
            retry: DEFAULT_RETRY,
            on_demand: None,
            origin,
        })
    }
}

/// What the listeners can answer: HTTP-01 on plain reverse-proxy or redirecting listeners,
/// TLS-ALPN-01 on TLS reverse-proxy listeners.
fn default_challenges(server: &Server) -> Vec<ChallengeKind> {
    let mut v = Vec::new();
    if server.listen.iter().any(http01_listener) {
        v.push(ChallengeKind::Http01);
    }
    if server.listen.iter().any(tls_alpn_listener) {
        v.push(ChallengeKind::TlsAlpn01);
    }
    v
}

fn http01_listener(l: &super::Listen) -> bool {
    l.transport == Transport::Plain
        && matches!(l.protocol, Protocol::Http | Protocol::RedirectHttps)
}

fn tls_alpn_listener(l: &super::Listen) -> bool {
    l.transport == Transport::Tls && l.protocol == Protocol::Http
}

fn contact(email: &str) -> Result<String, &'static str> {
    let e = email.trim();
    let ok = e.split_once('@').is_some_and(|(user, host)| {
        !user.is_empty() && host.contains('.') && !host.starts_with('.') && !host.ends_with('.')
    }) && !e.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',');
    if ok {
        Ok(format!("mailto:{e}"))
    } else {
        Err("expected an email address like ops@example.org")
    }
}

/// A name a certificate can be issued for by HTTP-01 or TLS-ALPN-01: lower case, no wildcard
/// (those need DNS-01), no address.
fn domain(d: &str) -> Result<String, &'static str> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.starts_with("*.") {
        return Err("wildcard certificates need the DNS-01 challenge, which ringway does not answer; list the names");
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err("expected a DNS name, not an address");
    }
    crate::acme::domain_name(&d).ok_or("expected a DNS name like example.org")
}

pub(super) fn build_acme(
    loc: &Locator<'_>,
    raw: Option<toml::Spanned<raw::Acme>>,
    server: &Server,
) -> Result<Option<Acme>, ConfigError> {
    let Some(spanned) = raw else {
        return Ok(None);
    };
    let span = spanned.span();
    let r = spanned.into_inner();
    let mut contact_list = Vec::new();
    if let Some(e) = &r.email {
        contact_list.push(contact(e.get_ref()).map_err(|m| loc.at(e.span(), "acme.email", m))?);
    }
    let mut domains = Vec::new();
    let listed: &[toml::Spanned<String>] = r.domains.as_ref().map_or(&[], |d| d.get_ref());
    for (i, d) in listed.iter().enumerate() {
        let key = format!("acme.domains[{i}]");
        let name = domain(d.get_ref()).map_err(|m| loc.at(d.span(), &key, m))?;
        if domains.contains(&name) {
            return Err(loc.at(d.span(), key, "listed twice"));
        }
        domains.push(name);
    }
    let on_demand = match &r.on_demand {
        None => None,
        Some(list) => {
            let mut set = crate::forward::DomainSet::default();
            for (i, e) in list.iter().enumerate() {
                let text = e.get_ref();
                if crate::acme::domain_name(text.strip_prefix('.').unwrap_or(text)).is_none() {
                    return Err(loc.at(
                        e.span(),
                        format!("acme.on_demand[{i}]"),
                        "expected a name (example.org) or a domain and its names (.example.org)",
                    ));
                }
                set.insert(text);
            }
            let per_hour = match &r.on_demand_per_hour {
                None => DEFAULT_ON_DEMAND_PER_HOUR,
                Some(n) if *n.get_ref() > 0 => *n.get_ref(),
                Some(n) => {
                    return Err(loc.at(n.span(), "acme.on_demand_per_hour", "expected at least 1"))
                }
            };
            Some(OnDemand {
                domains: set,
                per_hour,
            })
        }
    };
    if domains.is_empty() && on_demand.is_none() {
        return Err(loc.at(
            r.domains.as_ref().map_or(span.clone(), |d| d.span()),
            "acme.domains",
            "expected at least one name (or on_demand)",
        ));
    }
    let ca = match &r.ca {
        None => vec![LETS_ENCRYPT.to_string()],
        Some(list) => {
            let mut v = Vec::new();
            for (i, u) in list.get_ref().iter().enumerate() {
                Url::parse(u.get_ref())
                    .map_err(|m| loc.at(u.span(), format!("acme.ca[{i}]"), m))?;
                v.push(u.get_ref().clone());
            }
            if v.is_empty() {
                return Err(loc.at(
                    list.span(),
                    "acme.ca",
                    "expected at least one directory URL",
                ));
            }
            v
        }
    };
    let offered = default_challenges(server);
    let challenges = match &r.challenges {
        None => offered,
        Some(list) => {
            let mut v = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let key = format!("acme.challenges[{i}]");
                let kind = ChallengeKind::from_name(c.get_ref()).ok_or_else(|| {
                    loc.at(c.span(), &key, "expected \"http-01\" or \"tls-alpn-01\"")
                })?;
                if !offered.contains(&kind) {
                    let needs = match kind {
                        ChallengeKind::Http01 => {
                            "a plain listener (reverse proxy or redirect_https)"
                        }
                        ChallengeKind::TlsAlpn01 => "a TLS reverse-proxy listener",
                    };
                    return Err(loc.at(c.span(), &key, format!("{} needs {needs}", kind.name())));
                }
                if !v.contains(&kind) {
                    v.push(kind);
                }
            }
            v
        }
    };
    if challenges.is_empty() {
        return Err(loc.at(
            span,
            "acme",
            "the CA must reach ringway: add a plain listener (for http-01, on port 80) or a TLS one (for tls-alpn-01, on port 443)",
        ));
    }
    let storage = match (&r.storage, &server.state_dir) {
        (Some(s), _) => loc.path(s),
        (None, Some(dir)) => loc.path(dir).join("acme"),
        (None, None) => {
            return Err(loc.at(
                span,
                "acme.storage",
                "certificates and keys need a directory: set acme.storage or server.state_dir",
            ))
        }
    };
    let retry = opt_duration(loc, "acme.retry", r.retry, DEFAULT_RETRY)?;
    if retry.is_zero() {
        return Err(loc.at(span, "acme.retry", "expected a duration above zero"));
    }
    Ok(Some(Acme {
        contact: contact_list,
        domains,
        ca,
        ca_root: r.ca_root.as_deref().map(|p| loc.path(p)),
        challenges,
        storage,
        retry: retry.min(MAX_RETRY),
        on_demand,
        origin: loc.origin(span, "acme"),
    }))
}
