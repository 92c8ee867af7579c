//! `[[rules]]`: allow, deny and tarpit rules (see [`crate::rules`]).

use std::collections::BTreeMap;
use std::time::Duration;

use regex::bytes::Regex;
use toml::Spanned;

use super::{opt_duration, raw, ConfigError, Listen, Locator, Route};
use crate::rules::{CidrSet, Rule, RuleAction};

pub(crate) fn build_rules(
    loc: &Locator<'_>,
    raw: &[Spanned<raw::AccessRule>],
    routes: &[Route],
    listeners: &[Listen],
) -> Result<Vec<Rule>, ConfigError> {
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("rules[{i}]");
        let r = r.get_ref();
        let regex = |v: &Spanned<String>, k: &str| {
            Regex::new(v.get_ref())
                .map_err(|e| loc.at(v.span(), format!("{key}.{k}"), format!("not a regex: {e}")))
        };
        let action = match r.action.get_ref().as_str() {
            "allow" => RuleAction::Allow,
            "deny" => RuleAction::Deny {
                status: match &r.status {
                    None => 403,
                    Some(s) if (400..=599).contains(s.get_ref()) => *s.get_ref(),
                    Some(s) => {
                        return Err(loc.at(
                            s.span(),
                            format!("{key}.status"),
                            "expected a 4xx or 5xx status (403 by default)",
                        ))
                    }
                },
                body: r.body.clone().unwrap_or_default(),
            },
            "tarpit" => RuleAction::Tarpit(opt_duration(
                loc,
                &format!("{key}.delay"),
                r.delay.clone(),
                Duration::from_secs(10),
            )?),
            _ => {
                return Err(loc.at(
                    r.action.span(),
                    format!("{key}.action"),
                    "expected \"allow\", \"deny\" or \"tarpit\"",
                ))
            }
        };
        let clients = match &r.clients {
            None => None,
            Some(list) => {
                let mut s = CidrSet::default();
                for (j, c) in list.iter().enumerate() {
                    if !s.add(c.get_ref()) {
                        return Err(loc.at(
                            c.span(),
                            format!("{key}.clients[{j}]"),
                            "expected an address or a block like \"10.0.0.0/8\"",
                        ));
                    }
                }
                Some(s)
            }
        };
        let clients_file = r.clients_file.as_ref().map(|f| loc.path(f));
        let methods = r
            .methods
            .as_ref()
            .map(|m| m.iter().map(|m| m.to_ascii_uppercase()).collect::<Vec<_>>());
        let paths = match &r.paths {
            None => None,
            Some(p) => {
                for (j, path) in p.iter().enumerate() {
                    if !path.get_ref().starts_with('/') {
                        return Err(loc.at(
                            path.span(),
                            format!("{key}.paths[{j}]"),
                            "expected a path prefix starting with `/` (matched on the normalised path)",
                        ));
                    }
                }
                Some(p.iter().map(|p| p.get_ref().clone()).collect())
            }
        };
        let path_regex = r
            .path_regex
            .as_ref()
            .map(|v| regex(v, "path_regex"))
            .transpose()?;
        let user_agent = r
            .user_agent
            .as_ref()
            .map(|v| regex(v, "user_agent"))
            .transpose()?;
        let client_subject = r
            .client_subject
            .as_ref()
            .map(|v| regex(v, "client_subject"))
            .transpose()?;
        let mut headers = Vec::new();
        for (name, v) in r.headers.iter().flatten() {
            if !crate::http::chars::is_token(name.as_bytes()) {
                return Err(loc.at(
                    v.span(),
                    format!("{key}.headers"),
                    format!("{name:?} is not a header name"),
                ));
            }
            let value = match v.get_ref().as_str() {
                "*" => None,
                _ => Some(regex(v, &format!("headers.{name}"))?),
            };
            headers.push((name.to_ascii_lowercase(), value));
        }
        let route_list = match &r.routes {
            None => None,
            Some(names) => {
                let mut v = Vec::new();
                for (j, n) in names.iter().enumerate() {
                    v.push(
                        routes
                            .iter()
                            .position(|x| x.name == *n.get_ref())
                            .ok_or_else(|| {
                                loc.at(
                                    n.span(),
                                    format!("{key}.routes[{j}]"),
                                    format!("no route named {:?}", n.get_ref()),
                                )
                            })?,
                    );
                }
                Some(v)
            }
        };
        let listener_list = match &r.listeners {
            None => None,
            Some(addrs) => {
                let mut v = Vec::new();
                for (j, a) in addrs.iter().enumerate() {
                    let addr = super::parse_listen_addr(a.get_ref())
                        .filter(|addr| listeners.iter().any(|l| l.addr == *addr))
                        .ok_or_else(|| {
                            loc.at(
                                a.span(),
                                format!("{key}.listeners[{j}]"),
                                "expected the address of one of server.listen, as written there",
                            )
                        })?;
                    v.push(addr);
                }
                Some(v)
            }
        };
        out.push(Rule {
            name: r.name.clone().unwrap_or_else(|| key.clone()),
            action,
            clients,
            methods,
            paths,
            path_regex,
            headers,
            user_agent,
            client_subject,
            routes: route_list,
            listeners: listener_list,
            clients_file,
        });
    }
    Ok(out)
}

/// `headers = { "x-debug" = "*" }`.
pub(crate) type HeaderConditions = BTreeMap<String, Spanned<String>>;
