//! `Cache-Control` (RFC 9111 §5.2), read conservatively.
//!
//! Every field line named `Cache-Control` is one list. Arguments are accepted as tokens or
//! quoted strings (§5.2: "recipients ought to accept both forms"). Where a value is invalid or a
//! directive repeats with different values, the reading is the one that caches least: §4.2.1
//! encourages treating invalid freshness information as stale, and conflicting directives are
//! resolved toward the most restrictive. Delta-seconds too large to represent become 2^31
//! (§1.2.2).

use crate::http::list_items;

/// The largest delta-seconds value a cache must handle (RFC 9111 §1.2.2).
pub const DELTA_MAX: u64 = 2_147_483_648;

/// The directives this cache acts on, from a request or a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// `no-cache` without field names: revalidate before every use.
    pub no_cache: bool,
    /// `private` without field names: a shared cache does not store the response.
    pub private: bool,
    /// `no-cache="…"` or `private="…"`: the listed fields are not stored.
    pub qualified: bool,
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
    /// `must-understand` (RFC 9111 §5.2.2.3): stored only by a cache that knows the status's
    /// caching rules, and then its `no-store` is ignored.
    pub must_understand: bool,
    /// A member did not follow the grammar (`no-cache; no-store`, `private;`): what it meant
    /// cannot be known, so the restrictive reading wins and a response is not stored.
    pub malformed: bool,
}

/// Reads the directives of every `value` (the `Cache-Control` field lines of one message).
pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Directives {
    let mut d = Directives::default();
    for v in values {
        let (list, malformed) = directives(v);
        d.malformed |= malformed;
        for (name, arg) in list {
            apply(&mut d, name, arg.as_deref());
        }
    }
    d
}

/// The field names a qualified `no-cache="…"` or `private="…"` lists (lower-cased): a shared
/// cache stores the response without them (RFC 9111 §5.2.2.4, §5.2.2.7).
pub fn unstored_fields<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in values {
        for (name, arg) in directives(v).0 {
            if name.eq_ignore_ascii_case(b"no-cache") || name.eq_ignore_ascii_case(b"private") {
                if let Some(a) = arg {
                    out.extend(list_items(&a).map(|f| f.to_ascii_lowercase()));
                }
            }
        }
    }
    out
}

/// The directives of one field value: `name` or `name=token` or `name="quoted string"`, split
/// at commas outside quoted strings (RFC 9110 §5.6.1, §5.6.4). A directive that does not follow
/// that grammar (whitespace around `=`, an unterminated quote) is skipped up to the next comma,
/// and the second value says one was.
#[allow(clippy::type_complexity)]
fn directives(v: &[u8]) -> (Vec<(&[u8], Option<Vec<u8>>)>, bool) {
    let mut out = Vec::new();
    let mut malformed = false;
    let mut i = 0;
    let n = v.len();
    let skip_to_comma = |mut i: usize| {
        let mut quoted = false;
        while i < n {
            match v[i] {
                b'"' => quoted = !quoted,
                b'\\' if quoted => i += 1,
                b',' if !quoted => return i + 1,
                _ => {}
            }
            i += 1;
        }
        n
    };
    while i < n {
        while i < n && matches!(v[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        let start = i;
        while i < n && crate::http::chars::is_token(&v[i..i + 1]) {
            i += 1;
        }
        let name = &v[start..i];
        if name.is_empty() {
            if i < n {
                malformed = true;
            }
            i = skip_to_comma(i);
            continue;
        }
        let mut arg = None;
        if i < n && v[i] == b'=' {
            i += 1;
            if i < n && v[i] == b'"' {
                i += 1;
                let mut a = Vec::new();
                let mut closed = false;
                while i < n {
                    match v[i] {
                        b'\\' if i + 1 < n => {
                            a.push(v[i + 1]);
                            i += 2;
                        }
                        b'"' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        c => {
                            a.push(c);
                            i += 1;
                        }
                    }
                }
                if !closed {
                    malformed = true;
                    break;
                }
                arg = Some(a);
            } else {
                let s = i;
                while i < n && crate::http::chars::is_token(&v[i..i + 1]) {
                    i += 1;
                }
                arg = Some(v[s..i].to_vec());
            }
        }
        // Only whitespace may follow before the next comma.
        while i < n && matches!(v[i], b' ' | b'\t') {
            i += 1;
        }
        if i < n && v[i] != b',' {
            malformed = true;
            i = skip_to_comma(i);
            continue;
        }
        out.push((name, arg));
    }
    (out, malformed)
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
        // Qualified: the listed fields are left out of what is stored (`unstored_fields`).
        match arg {
            None => d.no_cache = true,
            Some(_) => d.qualified = true,
        }
    } else if is(b"private") {
        match arg {
            None => d.private = true,
            Some(_) => d.qualified = true,
        }
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
    } else if is(b"must-understand") {
        d.must_understand = true;
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

/// The directives of a targeted field (RFC 9213 §2: `CDN-Cache-Control`), whose value is a
/// Structured Fields Dictionary (RFC 8941 §3.2): `None` when the field lines do not parse as
/// one, or hold no member, so that the cache falls back to `Cache-Control` (§2.1). Booleans
/// `?0` turn a directive off, integers are delta-seconds, strings are field lists
/// (`private="set-cookie"`); parameters are ignored.
pub fn targeted<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Directives> {
    let mut joined = Vec::new();
    for v in values {
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(v);
    }
    let members = sf_dictionary(&joined)?;
    if members.is_empty() {
        return None;
    }
    let mut d = Directives::default();
    for (name, value) in &members {
        match value {
            SfValue::Bool(false) => {}
            SfValue::Bool(true) => apply(&mut d, name, None),
            SfValue::Integer(n) if *n < 0 => apply(&mut d, name, Some(b"x")),
            SfValue::Integer(n) => apply(&mut d, name, Some(n.to_string().as_bytes())),
            SfValue::Text(t) => apply(&mut d, name, Some(t)),
        }
    }
    Some(d)
}

/// A dictionary member's value, as far as cache directives go.
enum SfValue {
    Bool(bool),
    Integer(i64),
    /// A token or a string (its content).
    Text(Vec<u8>),
}

/// RFC 8941 §4.2.2, for the bare items cache directives use (inner lists and byte sequences
/// are read and ignored as directives; anything else that does not parse rejects the field).
fn sf_dictionary(v: &[u8]) -> Option<Vec<(Vec<u8>, SfValue)>> {
    let mut out: Vec<(Vec<u8>, SfValue)> = Vec::new();
    let mut i = 0;
    let n = v.len();
    let sp = |i: &mut usize| {
        while *i < n && v[*i] == b' ' {
            *i += 1;
        }
    };
    let ows = |i: &mut usize| {
        while *i < n && matches!(v[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    sp(&mut i);
    while i < n {
        let key = sf_key(v, &mut i)?;
        let value = if i < n && v[i] == b'=' {
            i += 1;
            if i < n && v[i] == b'(' {
                // An inner list: skipped to its end.
                let end = v[i..].iter().position(|&c| c == b')')? + i + 1;
                i = end;
                SfValue::Bool(false)
            } else {
                sf_bare_item(v, &mut i)?
            }
        } else {
            SfValue::Bool(true)
        };
        // Parameters: `;key[=item]`, ignored.
        while i < n && v[i] == b';' {
            i += 1;
            sp(&mut i);
            sf_key(v, &mut i)?;
            if i < n && v[i] == b'=' {
                i += 1;
                sf_bare_item(v, &mut i)?;
            }
        }
        // A repeated key: the last wins (RFC 8941 §4.2.2).
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
        ows(&mut i);
        if i == n {
            break;
        }
        if v[i] != b',' {
            return None;
        }
        i += 1;
        ows(&mut i);
        if i == n {
            return None; // a trailing comma
        }
    }
    Some(out)
}

fn sf_key(v: &[u8], i: &mut usize) -> Option<Vec<u8>> {
    let first = *v.get(*i)?;
    if !(first.is_ascii_lowercase() || first == b'*') {
        return None;
    }
    let s = *i;
    while *i < v.len()
        && (v[*i].is_ascii_lowercase() || v[*i].is_ascii_digit() || b"_-.*".contains(&v[*i]))
    {
        *i += 1;
    }
    Some(v[s..*i].to_vec())
}

fn sf_bare_item(v: &[u8], i: &mut usize) -> Option<SfValue> {
    let c = *v.get(*i)?;
    match c {
        b'?' => {
            let b = *v.get(*i + 1)?;
            *i += 2;
            match b {
                b'0' => Some(SfValue::Bool(false)),
                b'1' => Some(SfValue::Bool(true)),
                _ => None,
            }
        }
        b'-' | b'0'..=b'9' => {
            let s = *i;
            *i += 1;
            while *i < v.len() && v[*i].is_ascii_digit() {
                *i += 1;
            }
            if *i < v.len() && v[*i] == b'.' {
                // A decimal: not a directive argument; read and kept as text.
                *i += 1;
                while *i < v.len() && v[*i].is_ascii_digit() {
                    *i += 1;
                }
                return Some(SfValue::Text(v[s..*i].to_vec()));
            }
            let digits = &v[s..*i];
            if digits == b"-" || digits.len() > 16 {
                return None;
            }
            std::str::from_utf8(digits)
                .ok()?
                .parse()
                .ok()
                .map(SfValue::Integer)
        }
        b'"' => {
            *i += 1;
            let mut t = Vec::new();
            loop {
                let c = *v.get(*i)?;
                *i += 1;
                match c {
                    b'\\' => {
                        let e = *v.get(*i)?;
                        if e != b'"' && e != b'\\' {
                            return None;
                        }
                        t.push(e);
                        *i += 1;
                    }
                    b'"' => return Some(SfValue::Text(t)),
                    0x20..=0x7e => t.push(c),
                    _ => return None,
                }
            }
        }
        b':' => {
            let end = v[*i + 1..].iter().position(|&c| c == b':')? + *i + 2;
            *i = end;
            Some(SfValue::Bool(false))
        }
        c if c.is_ascii_alphabetic() || c == b'*' => {
            let s = *i;
            while *i < v.len()
                && (crate::http::chars::is_token(&v[*i..*i + 1]) || b":/".contains(&v[*i]))
            {
                *i += 1;
            }
            Some(SfValue::Text(v[s..*i].to_vec()))
        }
        _ => None,
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
        assert!(!d.no_cache && d.qualified && d.private && d.no_store);
        let v = [&b"no-cache=\"a, B\", private=x, max-age=5"[..]];
        assert_eq!(parse(v).max_age, Some(5));
        assert_eq!(
            unstored_fields(v),
            vec![b"a".to_vec(), b"b".to_vec(), b"x".to_vec()]
        );
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
        // Quoted strings hide commas and directives; bad syntax drops only its directive.
        assert_eq!(p("ext=\"max-age=3600, x\", max-age=1").max_age, Some(1));
        assert_eq!(p("max-age =3600").max_age, None);
        assert_eq!(p("max-age= 3600, public").max_age, None);
        assert!(p("max-age= 3600, public").public);
        assert_eq!(p("max-age='3600'").max_age, Some(0));
        assert_eq!(p("max-age=003600").max_age, Some(3600));
        assert!(p("no-store, ext=\"unterminated").no_store);
        // Junk after a member: nothing is known of what it meant.
        for bad in [
            "no-cache; no-store",
            "max-age=600, private;",
            "max-age =3600",
            "public, max-age=60 x",
            "ext=\"unterminated",
            "max-age=60, ;",
        ] {
            assert!(p(bad).malformed, "{bad}");
        }
        for good in [
            "max-age=60, public",
            "no-cache=\"a, b\"",
            ",,, ,",
            "max-age=60 , x",
        ] {
            assert!(!p(good).malformed, "{good}");
        }
    }
}
