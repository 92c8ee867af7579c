//! `[[routes]]`: host and path matches and their actions.

use toml::Spanned;

use super::upstream::valid_host_value;
use super::{raw, ConfigError, Locator, Upstream};
use crate::http::answer::Fixed;
use crate::http::path::PathPolicy;
use crate::route::HostMatch;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub host: HostMatch,
    pub path: String,
    pub action: Action,
    /// How the route caches; `None`: it does not.
    pub cache: Option<crate::cache::CacheRules>,
    /// What the access log and metrics call it: `name`, or its host and path.
    pub name: String,
    /// Its exchanges go to the access log.
    pub log: bool,
    /// The largest request body it accepts (else `[limits] max_request_body`).
    pub max_body: Option<u64>,
    /// Stricter head limits than `[limits]` for this route: header fields, target length.
    pub max_headers: Option<usize>,
    pub max_target: Option<usize>,
    /// How the path is rewritten before it goes upstream (the route matched the original).
    pub path_rewrite: crate::edit::PathRewrite,
    /// Fields set, added and removed on the way up and on the way back.
    pub request_headers: crate::edit::FieldRules,
    pub response_headers: crate::edit::FieldRules,
    /// `Location`, `Content-Location` and `Refresh` pointing at the upstream are rewritten
    /// toward the client (nginx's `proxy_redirect default`, and the route's prefix undone).
    pub rewrite_location: bool,
    /// `Set-Cookie` domains and paths rewritten (`cookie_domain`, `cookie_path`).
    pub cookies: crate::edit::CookieRewrite,
    /// Responses are compressed (`compress`, else whether `[compression]` is on).
    pub compress: bool,
    /// Strings replaced in the bodies of its text responses (`body_replace`).
    pub body_replace: Option<crate::subst::BodyReplace>,
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

/// Validates the `[[routes]]` entries against the upstream groups.
pub(crate) fn build_routes(
    loc: &Locator<'_>,
    raw: &[Spanned<raw::Route>],
    upstreams: &[Upstream],
    policy: &PathPolicy,
    cache: Option<&crate::cache::CacheConfig>,
    compress: bool,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::new();
    let mut seen_routes = std::collections::HashMap::new();
    for (i, r) in raw.iter().enumerate() {
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
            Some(p) => route_path(p.get_ref(), policy)
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
        let cache = match action {
            Action::Proxy { .. } => super::cache::route_rules(
                loc,
                &key,
                span.clone(),
                cache,
                r.cache.as_ref(),
                r.cache_valid.as_ref(),
            )?,
            Action::Respond(_) => None,
        };
        let name = match &r.name {
            Some(n)
                if n.get_ref().is_empty() || n.get_ref().bytes().any(|b| !b.is_ascii_graphic()) =>
            {
                return Err(loc.at(
                    n.span(),
                    format!("{key}.name"),
                    "expected a name of visible characters, no spaces",
                ))
            }
            Some(n) => n.get_ref().clone(),
            None => route_name(&host, &path),
        };
        routes.push(Route {
            host,
            path,
            action,
            cache,
            name,
            log: super::log::flag(r.access_log.clone()),
            max_body: super::limits::body_size(
                loc,
                &format!("{key}.max_body"),
                r.max_body.as_ref(),
            )?,
            max_headers: at_least_one(loc, &format!("{key}.max_headers"), r.max_headers.as_ref())?,
            max_target: at_least_one(loc, &format!("{key}.max_target"), r.max_target.as_ref())?,
            path_rewrite: super::edits::path_rewrite(loc, &key, r)?,
            request_headers: super::edits::field_rules(
                loc,
                &format!("{key}.request_headers"),
                r.request_headers.as_ref(),
            )?,
            response_headers: super::edits::field_rules(
                loc,
                &format!("{key}.response_headers"),
                r.response_headers.as_ref(),
            )?,
            rewrite_location: r.rewrite_location.as_ref().is_none_or(|b| *b.get_ref()),
            cookies: super::edits::cookies(loc, &key, r)?,
            compress: r.compress.unwrap_or(compress),
            body_replace: super::edits::body_replace(loc, &key, r)?,
        });
    }
    Ok(routes)
}

/// A count of at least 1, when given.
fn at_least_one(
    loc: &Locator<'_>,
    key: &str,
    v: Option<&Spanned<usize>>,
) -> Result<Option<usize>, ConfigError> {
    match v {
        None => Ok(None),
        Some(n) if *n.get_ref() >= 1 => Ok(Some(*n.get_ref())),
        Some(n) => Err(loc.at(n.span(), key, "expected at least 1")),
    }
}

/// `example.com/app/`, `*.example.com/`, `/app/` (any host).
pub(crate) fn route_name(host: &HostMatch, path: &str) -> String {
    match host {
        HostMatch::Any => path.to_string(),
        HostMatch::Exact(h) => format!("{h}{path}"),
        HostMatch::Suffix(s) => format!("*{s}{path}"),
    }
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
