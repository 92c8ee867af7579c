//! `Cache-Control` (RFC 9111 §5.2), read conservatively.
//!
//! Every field line named `Cache-Control` is one list. Arguments are accepted as tokens or
//! quoted strings (§5.2: "recipients ought to accept both forms"). Where a value is invalid or a
//! directive repeats with different values, the reading is the one that caches least: §4.2.1
//! encourages treating invalid freshness information as stale, and conflicting directives are
//! resolved toward the most restrictive. Delta-seconds too large to represent become 2^31
//! (§1.2.2).

use crate::http::{list_items, trim_ows};

/// The largest delta-seconds value a cache must handle (RFC 9111 §1.2.2).
pub const DELTA_MAX: u64 = 2_147_483_648;

/// The directives this cache acts on, from a request or a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// `no-cache`, with or without field names (both are read as: revalidate before use).
    pub no_cache: bool,
    /// `private`, with or without field names (a shared cache stores neither).
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub no_transform: bool,
    pub only_if_cached: bool,
    /// `max-stale` with no argument: any staleness.
    pub max_stale_any: bool,
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    pub immutable: bool,
}

/// Reads the directives of every `value` (the `Cache-Control` field lines of one message).
pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Directives {
    let mut d = Directives::default();
    for v in values {
        for item in list_items(v) {
            let (name, arg) = match item.iter().position(|&b| b == b'=') {
                Some(i) => (
                    trim_ows(&item[..i]),
                    Some(unquote(trim_ows(&item[i + 1..]))),
                ),
                None => (item, None),
            };
            apply(&mut d, name, arg);
        }
    }
    d
}

fn apply(d: &mut Directives, name: &[u8], arg: Option<&[u8]>) {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    if is(b"max-age") {
        // Invalid or absent argument: stale (the most restrictive reading).
        merge(&mut d.max_age, arg.and_then(delta).unwrap_or(0));
    } else if is(b"s-maxage") {
        merge(&mut d.s_maxage, arg.and_then(delta).unwrap_or(0));
    } else if is(b"no-store") {
        d.no_store = true;
    } else if is(b"no-cache") {
        d.no_cache = true;
    } else if is(b"private") {
        d.private = true;
    } else if is(b"public") {
        d.public = true;
    } else if is(b"must-revalidate") {
        d.must_revalidate = true;
    } else if is(b"proxy-revalidate") {
        d.proxy_revalidate = true;
    } else if is(b"no-transform") {
        d.no_transform = true;
    } else if is(b"only-if-cached") {
        d.only_if_cached = true;
    } else if is(b"immutable") {
        d.immutable = true;
    } else if is(b"max-stale") {
        match arg {
            None => d.max_stale_any = true,
            // An invalid argument allows no staleness.
            Some(a) => merge(&mut d.max_stale, delta(a).unwrap_or(0)),
        }
    } else if is(b"min-fresh") {
        // An invalid min-fresh asks for more freshness than anything has.
        let v = arg.and_then(delta).unwrap_or(DELTA_MAX);
        d.min_fresh = Some(d.min_fresh.map_or(v, |o| o.max(v)));
    } else if is(b"stale-while-revalidate") {
        if let Some(v) = arg.and_then(delta) {
            merge(&mut d.stale_while_revalidate, v);
        }
    } else if is(b"stale-if-error") {
        if let Some(v) = arg.and_then(delta) {
            merge(&mut d.stale_if_error, v);
        }
    }
}

/// A directive seen twice keeps the smaller value (caching less).
fn merge(slot: &mut Option<u64>, v: u64) {
    *slot = Some(slot.map_or(v, |o| o.min(v)));
}

/// delta-seconds: 1*DIGIT, saturating at [`DELTA_MAX`].
pub fn delta(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        v.iter()
            .fold(0u64, |a, &b| (a * 10 + u64::from(b - b'0')).min(DELTA_MAX)),
    )
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> Directives {
        parse([v.as_bytes()])
    }

    #[test]
    fn reads_directives() {
        let d = p("public, max-age=60, S-MaxAge=\"120\", must-revalidate");
        assert!(d.public && d.must_revalidate);
        assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(120)));
        let d = parse([&b"no-cache=\"Set-Cookie\""[..], b"private, no-store"]);
        assert!(d.no_cache && d.private && d.no_store);
        let d = p("max-stale, min-fresh=5, only-if-cached");
        assert!(d.max_stale_any && d.only_if_cached);
        assert_eq!(d.min_fresh, Some(5));
        let d = p("max-age=60, stale-while-revalidate=30, stale-if-error=600, x-ext=\"a,b\"");
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
    }

    #[test]
    fn conservative_on_bad_values() {
        assert_eq!(p("max-age=abc").max_age, Some(0));
        assert_eq!(p("max-age").max_age, Some(0));
        assert_eq!(p("max-age=-5").max_age, Some(0));
        assert_eq!(p("max-age=60, max-age=10").max_age, Some(10));
        assert_eq!(p("max-age=99999999999999999999").max_age, Some(DELTA_MAX));
        assert_eq!(p("max-stale=x").max_stale, Some(0));
        assert_eq!(p("min-fresh=x").min_fresh, Some(DELTA_MAX));
        assert_eq!(p("stale-if-error=x").stale_if_error, None);
        assert_eq!(p(",,, ,").max_age, None);
    }
}
