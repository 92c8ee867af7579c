//! `[cache]` and the routes' `cache` / `cache_valid` keys.

use std::collections::BTreeMap;

use toml::Spanned;

use super::error::{ConfigError, Locator};
use super::raw;
use super::timeouts::parse_duration;
use crate::cache::{CacheConfig, CacheRules, UseStale};

/// The default memory budget when `[cache]` gives none.
pub const DEFAULT_CACHE_SIZE: u64 = 256 << 20;

/// Longest lifetime `valid` may give (a year).
const MAX_LIFETIME: u64 = 365 * 86_400;

pub(crate) fn build_cache(
    loc: &Locator<'_>,
    c: Option<raw::Cache>,
) -> Result<Option<CacheConfig>, ConfigError> {
    let Some(c) = c else { return Ok(None) };
    let size = match &c.size {
        None => DEFAULT_CACHE_SIZE,
        Some(s) => size_of(loc, s, "cache.size")?,
    };
    if size < 1 << 20 {
        return Err(loc.at(
            c.size.as_ref().map_or(0..0, |s| s.span()),
            "cache.size",
            "expected at least \"1m\" (the budget is split between the workers)",
        ));
    }
    let d = CacheRules::default();
    let max_object = match &c.max_object {
        None => d.max_object.min(size / 8),
        Some(s) => size_of(loc, s, "cache.max_object")?,
    };
    if let (Some(s), true) = (&c.max_object, max_object > size / 8) {
        return Err(loc.at(
            s.span(),
            "cache.max_object",
            format!(
                "expected at most an eighth of cache.size ({} bytes): a larger object would never be stored",
                size / 8
            ),
        ));
    }
    let valid = match &c.valid {
        None => Vec::new(),
        Some(v) => valid_map(loc, v, "cache.valid")?,
    };
    let heuristic_max = match &c.heuristic_max {
        None => d.heuristic_max,
        Some(v) => lifetime(loc, v, "cache.heuristic_max")?,
    };
    let mut use_stale = UseStale::default();
    for (i, s) in c.use_stale.iter().flatten().enumerate() {
        let v = s.get_ref().as_str();
        match v {
            "error" => use_stale.error = true,
            "timeout" => use_stale.timeout = true,
            _ => match v.strip_prefix("http_").and_then(|n| n.parse::<u16>().ok()) {
                Some(n) if (500..600).contains(&n) => use_stale.statuses.push(n),
                _ => {
                    return Err(loc.at(
                        s.span(),
                        format!("cache.use_stale[{i}]"),
                        format!("expected \"error\", \"timeout\" or \"http_5xx\" (e.g. \"http_503\"), got {v:?}"),
                    ))
                }
            },
        }
    }
    let client_no_cache = match &c.client_no_cache {
        None => d.client_no_cache,
        Some(v) => crate::cache::ClientNoCache::parse(v.get_ref()).ok_or_else(|| {
            loc.at(
                v.span(),
                "cache.client_no_cache",
                format!(
                    "expected \"revalidate\", \"honour\" or \"ignore\", got {:?}",
                    v.get_ref()
                ),
            )
        })?,
    };
    let lock_timeout =
        super::timeouts::opt_duration(loc, "cache.lock_timeout", c.lock_timeout, d.lock_timeout)?;
    let targeted = match &c.targeted {
        None => d.targeted.clone(),
        Some(list) => {
            let mut v = Vec::new();
            for (i, n) in list.iter().enumerate() {
                let name = n.get_ref().trim().to_ascii_lowercase();
                if !crate::http::chars::is_token(name.as_bytes())
                    || name == "cache-control"
                    || name == "expires"
                {
                    return Err(loc.at(
                        n.span(),
                        format!("cache.targeted[{i}]"),
                        "expected a field name like \"CDN-Cache-Control\" (not Cache-Control itself)",
                    ));
                }
                v.push(name.into_bytes());
            }
            v
        }
    };
    let tag_fields = match &c.tag_headers {
        None => d.tag_fields.clone(),
        Some(list) => {
            let mut v = Vec::new();
            for (i, n) in list.iter().enumerate() {
                let name = n.get_ref().trim().to_ascii_lowercase();
                if !crate::http::chars::is_token(name.as_bytes()) {
                    return Err(loc.at(
                        n.span(),
                        format!("cache.tag_headers[{i}]"),
                        "expected a field name like \"Cache-Tag\"",
                    ));
                }
                v.push(name.into_bytes());
            }
            v
        }
    };
    let rules = CacheRules {
        valid,
        override_origin: c.valid_overrides_origin.unwrap_or(false),
        store_set_cookie: c.store_set_cookie.unwrap_or(false),
        heuristic: c.heuristic.unwrap_or(true),
        heuristic_max,
        heuristic_credentials: c.heuristic_credentials.unwrap_or(false),
        client_no_cache,
        use_stale,
        max_object,
        lock_timeout,
        targeted,
        tag_fields,
        strip_tags: c.strip_tags.unwrap_or(true),
    };
    Ok(Some(CacheConfig {
        size,
        forward: c.forward.unwrap_or(true),
        // Responses reach the forward proxy's clients as the origin sent them.
        forward_rules: CacheRules {
            targeted: Vec::new(),
            strip_tags: false,
            ..rules.clone()
        },
        rules,
    }))
}

/// A route's rules: the process's, with the route's `cache_valid`; `None` when the route does
/// not cache (`cache = false`, or no `[cache]`).
pub(crate) fn route_rules(
    loc: &Locator<'_>,
    key: &str,
    route: std::ops::Range<usize>,
    cache: Option<&CacheConfig>,
    on: Option<&Spanned<bool>>,
    valid: Option<&BTreeMap<String, Spanned<raw::Duration>>>,
) -> Result<Option<CacheRules>, ConfigError> {
    let span = on.map_or(route, Spanned::span);
    let on = on.map(|o| *o.get_ref());
    let Some(c) = cache else {
        if on == Some(true) || valid.is_some() {
            return Err(loc.at(
                span,
                format!("{key}.cache"),
                "this route caches, but there is no [cache] section to say how much memory the cache may use",
            ));
        }
        return Ok(None);
    };
    if on == Some(false) {
        return Ok(None);
    }
    let mut rules = c.rules.clone();
    if let Some(v) = valid {
        rules.valid = valid_map(loc, v, &format!("{key}.cache_valid"))?;
    }
    Ok(Some(rules))
}

/// `{ "200 302" = "10m", "404" = "1m", "any" = "5s" }`.
fn valid_map(
    loc: &Locator<'_>,
    m: &BTreeMap<String, Spanned<raw::Duration>>,
    key: &str,
) -> Result<Vec<(Vec<u16>, u64)>, ConfigError> {
    let mut out = Vec::new();
    let mut any = None;
    for (statuses, d) in m {
        let secs = lifetime(loc, d, &format!("{key}.\"{statuses}\""))?;
        if statuses.trim() == "any" {
            any = Some(secs);
            continue;
        }
        let mut list = Vec::new();
        for s in statuses.split_whitespace() {
            match s.parse::<u16>() {
                Ok(n) if (200..600).contains(&n) && n != 206 && n != 304 => list.push(n),
                _ => {
                    return Err(loc.at(
                        d.span(),
                        format!("{key}.\"{statuses}\""),
                        format!("expected final statuses separated by spaces (\"200 301 404\"; not 206 or 304), or \"any\"; got {s:?}"),
                    ))
                }
            }
        }
        if list.is_empty() {
            return Err(loc.at(
                d.span(),
                format!("{key}.\"{statuses}\""),
                "expected at least one status, or \"any\"",
            ));
        }
        out.push((list, secs));
    }
    // Specific statuses before the catch-all.
    if let Some(secs) = any {
        out.push((Vec::new(), secs));
    }
    Ok(out)
}

fn lifetime(loc: &Locator<'_>, d: &Spanned<raw::Duration>, key: &str) -> Result<u64, ConfigError> {
    parse_duration(d.get_ref())
        .map(|d| d.as_secs())
        .filter(|&s| s <= MAX_LIFETIME)
        .ok_or_else(|| {
            loc.at(
                d.span(),
                key,
                "expected a lifetime up to 365d, like \"30s\", \"10m\", \"1h\" or \"7d\"",
            )
        })
}

fn size_of(loc: &Locator<'_>, s: &Spanned<raw::Size>, key: &str) -> Result<u64, ConfigError> {
    parse_size(s.get_ref()).ok_or_else(|| {
        loc.at(
            s.span(),
            key,
            "expected a size like 1048576, \"64k\", \"256m\" or \"2g\"",
        )
    })
}

/// `1048576`, `"64k"`, `"256m"`, `"2g"` (binary multiples).
pub fn parse_size_text(t: &str) -> Option<u64> {
    let t = t.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, 'k' | 'K') => (&t[..i], 1 << 10),
        (i, 'm' | 'M') => (&t[..i], 1 << 20),
        (i, 'g' | 'G') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

pub(crate) fn parse_size(s: &raw::Size) -> Option<u64> {
    match s {
        raw::Size::Bytes(n) => Some(*n),
        raw::Size::Text(t) => parse_size_text(t),
    }
}
