//! A route's `strip_prefix`, `add_prefix`, `rewrite`, `request_headers` and
//! `response_headers` (see [`crate::edit`]).

use regex::bytes::Regex;
use toml::Spanned;

use super::{raw, ConfigError, Locator};
use crate::edit::{FieldRules, PathRewrite, Template};

/// Fields a rule may not touch: framing and connection management are the proxy's, and the
/// Host of a request is `set_host`'s.
const OWN: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

pub(crate) fn path_rewrite(
    loc: &Locator<'_>,
    key: &str,
    r: &raw::Route,
) -> Result<PathRewrite, ConfigError> {
    let prefix = |v: &Option<Spanned<String>>, k: &str| match v {
        None => Ok(None),
        Some(p)
            if p.get_ref().starts_with('/')
                && p.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?') =>
        {
            Ok(Some(p.get_ref().clone()))
        }
        Some(p) => Err(loc.at(
            p.span(),
            format!("{key}.{k}"),
            "expected a path prefix starting with `/`, visible ASCII, no `?`",
        )),
    };
    let regex = match &r.rewrite {
        None => None,
        Some(rw) => {
            let v = rw.get_ref();
            let re = Regex::new(v.regex.get_ref()).map_err(|e| {
                loc.at(
                    v.regex.span(),
                    format!("{key}.rewrite.regex"),
                    format!("not a regex: {e}"),
                )
            })?;
            if !v.to.get_ref().bytes().all(|b| b.is_ascii_graphic()) {
                return Err(loc.at(
                    v.to.span(),
                    format!("{key}.rewrite.to"),
                    "expected a path of visible ASCII ($1 or ${name} for captures)",
                ));
            }
            Some((re, v.to.get_ref().clone()))
        }
    };
    Ok(PathRewrite {
        strip_prefix: prefix(&r.strip_prefix, "strip_prefix")?,
        add_prefix: prefix(&r.add_prefix, "add_prefix")?,
        regex,
    })
}

pub(crate) fn field_rules(
    loc: &Locator<'_>,
    key: &str,
    raw: Option<&raw::FieldRules>,
) -> Result<FieldRules, ConfigError> {
    let Some(raw) = raw else {
        return Ok(FieldRules::default());
    };
    let name_ok = |name: &str, span: std::ops::Range<usize>, k: String| {
        if !crate::http::chars::is_token(name.as_bytes()) {
            return Err(loc.at(span, k, format!("{name:?} is not a header name")));
        }
        let lower = name.to_ascii_lowercase();
        if OWN.contains(&lower.as_str()) || lower == "host" {
            return Err(loc.at(
                span,
                k,
                format!(
                    "{name} is the proxy's own (framing and connection fields; Host is `set_host`)"
                ),
            ));
        }
        Ok(())
    };
    let mut out = FieldRules::default();
    for (list, which) in [(&raw.set, "set"), (&raw.add, "add")] {
        for (name, v) in list.iter().flatten() {
            let k = format!("{key}.{which}.{name}");
            name_ok(name, v.span(), k.clone())?;
            let t = Template::parse(v.get_ref()).map_err(|e| loc.at(v.span(), k, e))?;
            let entry = (name.clone(), t);
            if which == "set" {
                out.set.push(entry);
            } else {
                out.add.push(entry);
            }
        }
    }
    for (i, n) in raw.remove.iter().flatten().enumerate() {
        name_ok(n.get_ref(), n.span(), format!("{key}.remove[{i}]"))?;
        out.remove.push(n.get_ref().to_ascii_lowercase());
    }
    Ok(out)
}

pub(crate) fn cookies(
    loc: &Locator<'_>,
    key: &str,
    r: &raw::Route,
) -> Result<crate::edit::CookieRewrite, ConfigError> {
    let pair = |v: &Option<raw::FromTo>, k: &str, path: bool| -> Result<_, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        for (s, which) in [(&v.from, "from"), (&v.to, "to")] {
            let t = s.get_ref();
            let ok = !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
                && (!path || t.starts_with('/'));
            if !ok {
                return Err(loc.at(
                    s.span(),
                    format!("{key}.{k}.{which}"),
                    if path {
                        "expected a path starting with `/`, visible ASCII, no `;`"
                    } else {
                        "expected a domain, visible ASCII, no `;`"
                    },
                ));
            }
        }
        Ok(Some((v.from.get_ref().clone(), v.to.get_ref().clone())))
    };
    Ok(crate::edit::CookieRewrite {
        domain: pair(&r.cookie_domain, "cookie_domain", false)?,
        path: pair(&r.cookie_path, "cookie_path", true)?,
    })
}

/// A route's `body_replace`, `body_replace_once` and `body_replace_types`.
pub(crate) fn body_replace(
    loc: &Locator<'_>,
    key: &str,
    r: &raw::Route,
) -> Result<Option<crate::subst::BodyReplace>, ConfigError> {
    let Some(rules) = &r.body_replace else {
        if let Some(o) = &r.body_replace_types {
            return Err(loc.at(
                o.span(),
                format!("{key}.body_replace_types"),
                "given without body_replace",
            ));
        }
        return Ok(None);
    };
    let mut pairs = Vec::new();
    for (i, rule) in rules.get_ref().iter().enumerate() {
        let from = rule.from.get_ref();
        if from.is_empty() || from.len() > crate::subst::MAX_FROM {
            return Err(loc.at(
                rule.from.span(),
                format!("{key}.body_replace[{i}].from"),
                format!("expected 1 to {} bytes", crate::subst::MAX_FROM),
            ));
        }
        pairs.push((
            from.as_bytes().to_vec(),
            rule.to.get_ref().as_bytes().to_vec(),
        ));
    }
    let mut types = Vec::new();
    match &r.body_replace_types {
        None => types.push("text/html".to_string()),
        Some(list) => {
            for t in list.get_ref() {
                let v = t.trim().to_ascii_lowercase();
                if !v
                    .split_once('/')
                    .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
                {
                    return Err(loc.at(
                        list.span(),
                        format!("{key}.body_replace_types"),
                        "expected media types like \"text/html\" or \"text/*\"",
                    ));
                }
                types.push(v);
            }
        }
    }
    let once = r.body_replace_once.unwrap_or(true);
    crate::subst::BodyReplace::new(&pairs, once, types)
        .map(Some)
        .map_err(|e| loc.at(rules.span(), format!("{key}.body_replace"), e))
}
