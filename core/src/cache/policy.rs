//! What RFC 9111 says about one request and one response: may it be stored, for how long is it
//! fresh, how old is it, may a stored response answer this request, does a conditional request
//! match it. Pure functions of heads and times (whole seconds since the Unix epoch).

use crate::http::date::parse_http_date;
use crate::http::{find_header, list_items, trim_ows, Header, Method};

use super::control::{self, Directives, DELTA_MAX};
use super::CacheRules;

/// What the cache reads from a response head.
#[derive(Clone, Debug, Default)]
pub struct ResponseMeta {
    pub status: u16,
    pub cc: Directives,
    pub date: Option<u64>,
    pub expires: Expires,
    /// `Age` (the first member when it is a list); `None` when absent or invalid (§5.1: ignored).
    pub age: Option<u64>,
    pub last_modified: Option<u64>,
    pub etag: Option<Vec<u8>>,
    pub vary: Vary,
    pub set_cookie: bool,
}

/// The `Expires` field (RFC 9111 §5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expires {
    #[default]
    Absent,
    At(u64),
    /// Invalid (e.g. `0`), or present more than once: in the past.
    Past,
}

/// The `Vary` field: which request fields select among stored responses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Vary {
    #[default]
    None,
    /// `Vary: *`: no stored response can be selected.
    Star,
    /// Lower-cased field names, sorted, without repeats.
    Fields(Vec<Vec<u8>>),
}

/// Reads what the cache needs from a response head (`buf` holds it, `headers` its fields).
/// `targeted`: the cache's target list (RFC 9213), lower-case field names in order; the first
/// present with a valid value replaces `Cache-Control` and `Expires`.
pub fn read_response(
    status: u16,
    buf: &[u8],
    headers: &[Header],
    targeted: &[Vec<u8>],
) -> ResponseMeta {
    let mut m = ResponseMeta {
        status,
        cc: control::parse(values(buf, headers, b"cache-control")),
        ..ResponseMeta::default()
    };
    let mut dates = 0;
    let mut expires = 0;
    for h in headers {
        let name = h.name.get(buf);
        let v = h.value.get(buf);
        if name.eq_ignore_ascii_case(b"date") {
            dates += 1;
            m.date = if dates == 1 { parse_http_date(v) } else { None };
        } else if name.eq_ignore_ascii_case(b"expires") {
            expires += 1;
            m.expires = match (expires, parse_http_date(v)) {
                (1, Some(t)) => Expires::At(t),
                _ => Expires::Past,
            };
        } else if name.eq_ignore_ascii_case(b"age") {
            if m.age.is_none() {
                let first = list_items(v).next().unwrap_or(b"");
                m.age = control::delta(first);
            }
        } else if name.eq_ignore_ascii_case(b"last-modified") {
            m.last_modified = parse_http_date(v);
        } else if name.eq_ignore_ascii_case(b"etag") {
            let v = trim_ows(v);
            if valid_etag(v) {
                m.etag = Some(v.to_vec());
            }
        } else if name.eq_ignore_ascii_case(b"vary") {
            for f in list_items(v) {
                if f == b"*" {
                    m.vary = Vary::Star;
                } else if let Vary::None | Vary::Fields(_) = m.vary {
                    let mut fs = match std::mem::take(&mut m.vary) {
                        Vary::Fields(fs) => fs,
                        _ => Vec::new(),
                    };
                    fs.push(f.to_ascii_lowercase());
                    m.vary = Vary::Fields(fs);
                }
            }
        } else if name.eq_ignore_ascii_case(b"set-cookie") {
            m.set_cookie = true;
        }
    }
    if let Vary::Fields(fs) = &mut m.vary {
        fs.sort();
        fs.dedup();
    }
    for name in targeted {
        if let Some(cc) = control::targeted(values(buf, headers, name)) {
            m.cc = cc;
            m.expires = Expires::Absent;
            break;
        }
    }
    m
}

/// What the cache reads from a request head.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub cc: Directives,
    /// `Pragma: no-cache` without `Cache-Control` (RFC 9111 §5.4): like `no-cache`.
    pub pragma_no_cache: bool,
    pub authorization: bool,
    pub cookie: bool,
    pub if_none_match: Option<Vec<u8>>,
    pub if_modified_since: Option<u64>,
    /// `If-Match` or `If-Unmodified-Since`: left to the origin.
    pub other_conditional: bool,
    /// `Range`, and `If-Range` (RFC 9110 §14.2, §13.1.5).
    pub range: Option<Vec<u8>>,
    pub if_range: Option<Vec<u8>>,
}

impl RequestMeta {
    /// The request asks not to be answered from the cache without revalidation.
    pub fn no_cache(&self) -> bool {
        self.cc.no_cache || self.pragma_no_cache
    }
}

pub fn read_request(buf: &[u8], headers: &[Header]) -> RequestMeta {
    let mut has_cc = false;
    let mut m = RequestMeta::default();
    for h in headers {
        let name = h.name.get(buf);
        let v = h.value.get(buf);
        if name.eq_ignore_ascii_case(b"cache-control") {
            has_cc = true;
        } else if name.eq_ignore_ascii_case(b"pragma") {
            m.pragma_no_cache |= list_items(v).any(|i| i.eq_ignore_ascii_case(b"no-cache"));
        } else if name.eq_ignore_ascii_case(b"authorization") {
            m.authorization = true;
        } else if name.eq_ignore_ascii_case(b"cookie") {
            m.cookie = true;
        } else if name.eq_ignore_ascii_case(b"if-none-match") {
            let mut all = m.if_none_match.take().unwrap_or_default();
            if !all.is_empty() {
                all.push(b',');
            }
            all.extend_from_slice(v);
            m.if_none_match = Some(all);
        } else if name.eq_ignore_ascii_case(b"if-modified-since") {
            m.if_modified_since = parse_http_date(v);
        } else if name.eq_ignore_ascii_case(b"if-match")
            || name.eq_ignore_ascii_case(b"if-unmodified-since")
        {
            m.other_conditional = true;
        } else if name.eq_ignore_ascii_case(b"if-range") {
            m.if_range = Some(trim_ows(v).to_vec());
        } else if name.eq_ignore_ascii_case(b"range") {
            // Two Range fields: not a valid request for ranges; ignored as a whole.
            m.range = if m.range.is_some() {
                Some(Vec::new())
            } else {
                Some(v.to_vec())
            };
        }
    }
    if has_cc {
        m.cc = control::parse(values(buf, headers, b"cache-control"));
        m.pragma_no_cache = false;
    }
    m
}

fn values<'a>(
    buf: &'a [u8],
    headers: &'a [Header],
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(move |h| h.value.get(buf))
}

/// The final statuses whose semantics and caching rules RFC 9110 defines and this cache
/// implements, for `must-understand`.
pub const UNDERSTOOD: [u16; 36] = [
    200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 305, 307, 308, 400, 401, 402, 403, 404, 405,
    406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 426, 500, 501,
];

/// Statuses whose responses may be given heuristic freshness (RFC 9110 §15.1).
pub const HEURISTIC: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Why a response is not stored (for `Cache-Status` `detail` and the log).
pub type NotStored = &'static str;

/// Whether a shared cache may store `resp`, the answer to a `method` request with `req`
/// (RFC 9111 §3, §3.5); `Ok` with the response's freshness lifetime when it may.
pub fn storable(
    method: Method,
    req: &RequestMeta,
    resp: &ResponseMeta,
    response_time: u64,
    rules: &CacheRules,
) -> Result<u64, NotStored> {
    if method != Method::Get {
        return Err("method");
    }
    if !(200..600).contains(&resp.status) || resp.status == 206 || resp.status == 304 {
        return Err("status");
    }
    // must-understand: a status whose caching rules this cache knows (RFC 9110's) is stored
    // despite the `no-store` meant for caches that do not; any other is not stored at all.
    let understood = resp.cc.must_understand && UNDERSTOOD.contains(&resp.status);
    if resp.cc.must_understand && !understood {
        return Err("must-understand");
    }
    if req.cc.no_store || (resp.cc.no_store && !understood) {
        return Err("no-store");
    }
    if resp.cc.malformed {
        // What a member that does not parse meant is unknown: the restrictive reading.
        return Err("cache-control");
    }
    if resp.cc.private {
        return Err("private");
    }
    if req.authorization
        && !(resp.cc.public || resp.cc.s_maxage.is_some() || resp.cc.must_revalidate)
    {
        return Err("authorization");
    }
    if resp.vary == Vary::Star {
        return Err("vary-star");
    }
    if resp.set_cookie && !rules.store_set_cookie {
        return Err("set-cookie");
    }
    let explicit = resp.cc.public
        || resp.cc.max_age.is_some()
        || resp.cc.s_maxage.is_some()
        || resp.expires != Expires::Absent;
    let configured = rules.valid_for(resp.status);
    if !explicit
        && configured.is_none()
        && (req.cookie || req.authorization)
        && !rules.heuristic_credentials
    {
        // A page fetched with credentials and no word from the origin on caching is most
        // likely that user's: not kept for others on a guess.
        return Err("credentials");
    }
    let by_default = HEURISTIC.contains(&resp.status);
    if !(explicit || configured.is_some() || by_default) {
        return Err("status");
    }
    let lifetime = lifetime(resp, response_time, rules);
    // A response that is never fresh is worth keeping only to revalidate it.
    if lifetime == 0 && resp.etag.is_none() && resp.last_modified.is_none() {
        return Err("not-fresh");
    }
    Ok(lifetime)
}

/// The freshness lifetime in seconds (RFC 9111 §4.2.1, shared cache), with the operator's
/// per-status defaults where the origin gave no explicit lifetime (or where the operator asked
/// to override it), then heuristic freshness where allowed (§4.2.2).
pub fn lifetime(resp: &ResponseMeta, response_time: u64, rules: &CacheRules) -> u64 {
    if rules.override_origin {
        if let Some(v) = rules.valid_for(resp.status) {
            return v;
        }
    }
    if let Some(s) = resp.cc.s_maxage {
        return s;
    }
    if let Some(m) = resp.cc.max_age {
        return m;
    }
    match resp.expires {
        Expires::At(t) => return t.saturating_sub(resp.date.unwrap_or(response_time)),
        Expires::Past => return 0,
        Expires::Absent => {}
    }
    if let Some(v) = rules.valid_for(resp.status) {
        return v;
    }
    let heuristic_ok = HEURISTIC.contains(&resp.status) || resp.cc.public;
    match (rules.heuristic && heuristic_ok, resp.last_modified) {
        (true, Some(lm)) => {
            let date = resp.date.unwrap_or(response_time);
            (date.saturating_sub(lm) / 10).min(rules.heuristic_max)
        }
        _ => 0,
    }
}

/// The age of a response when it was received (RFC 9111 §4.2.3): `corrected_initial_age`.
pub fn initial_age(resp: &ResponseMeta, request_time: u64, response_time: u64) -> u64 {
    let apparent = response_time.saturating_sub(resp.date.unwrap_or(response_time));
    let delay = response_time.saturating_sub(request_time);
    let corrected = resp.age.unwrap_or(0).saturating_add(delay);
    apparent.max(corrected).min(DELTA_MAX)
}

/// `current_age` at `now` of a response received at `response_time` with `initial` age.
pub fn current_age(initial: u64, response_time: u64, now: u64) -> u64 {
    initial
        .saturating_add(now.saturating_sub(response_time))
        .min(DELTA_MAX)
}

/// May a stored response answer a request, as RFC 9111 §4 and §5.2.1 say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usable {
    /// Fresh enough for this request.
    Fresh,
    /// Stale, but the request accepts it (`max-stale`) and the response allows it.
    Stale,
    /// Must be validated with the origin first.
    Revalidate,
}

/// The stored response's freshness facts that decide its use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Freshness {
    pub lifetime: u64,
    pub age: u64,
    /// `no-cache` on the response: never used without validation.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale (§4.2.4,
    /// §5.2.2.2, §5.2.2.8, §5.2.2.10).
    pub must_revalidate: bool,
}

pub fn usable(f: &Freshness, req: &RequestMeta) -> Usable {
    if f.no_cache || req.no_cache() {
        return Usable::Revalidate;
    }
    let cc = &req.cc;
    if cc.max_age.is_some_and(|m| f.age > m) {
        return Usable::Revalidate;
    }
    let fresh_for = f.lifetime.saturating_sub(f.age);
    if f.lifetime > f.age {
        return match cc.min_fresh {
            Some(m) if fresh_for < m => Usable::Revalidate,
            _ => Usable::Fresh,
        };
    }
    let staleness = f.age - f.lifetime;
    let accepts = cc.max_stale_any || cc.max_stale.is_some_and(|m| staleness <= m);
    if accepts && !f.must_revalidate && cc.min_fresh.is_none() {
        Usable::Stale
    } else {
        Usable::Revalidate
    }
}

/// Whether a client's conditional GET or HEAD matches the stored response, so that `304` is
/// the answer (RFC 9110 §13.1.2, §13.1.3, §13.2.2: If-None-Match with the weak comparison, and
/// If-Modified-Since only when If-None-Match is absent).
pub fn not_modified(req: &RequestMeta, etag: Option<&[u8]>, last_modified: Option<u64>) -> bool {
    if let Some(inm) = &req.if_none_match {
        return match etag {
            _ if list_items(inm).any(|t| t == b"*") => true,
            Some(e) => list_items(inm).any(|t| weak_eq(t, e)),
            None => false,
        };
    }
    match (req.if_modified_since, last_modified) {
        (Some(since), Some(lm)) => lm <= since,
        _ => false,
    }
}

/// Whether `If-Range` (if any) lets the ranges apply to the stored response: a strong entity
/// tag equal to its `ETag`, or exactly its `Last-Modified` date (RFC 9110 §13.1.5).
pub fn if_range_holds(req: &RequestMeta, etag: Option<&[u8]>, last_modified: Option<u64>) -> bool {
    let Some(v) = &req.if_range else { return true };
    if v.starts_with(b"\"") || v.starts_with(b"W/") {
        return etag.is_some_and(|e| strong_eq(v, e));
    }
    match (parse_http_date(v), last_modified) {
        (Some(d), Some(lm)) => d == lm,
        _ => false,
    }
}

/// The weak comparison of two entity tags (RFC 9110 §8.8.3.2).
pub fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let strip = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
    valid_etag(a) && valid_etag(b) && strip(a) == strip(b)
}

/// The strong comparison: both strong and equal.
pub fn strong_eq(a: &[u8], b: &[u8]) -> bool {
    !a.starts_with(b"W/") && !b.starts_with(b"W/") && valid_etag(a) && a == b
}

fn valid_etag(t: &[u8]) -> bool {
    let t = t.strip_prefix(b"W/").unwrap_or(t);
    t.len() >= 2
        && t[0] == b'"'
        && t[t.len() - 1] == b'"'
        && t[1..t.len() - 1]
            .iter()
            .all(|&c| c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80)
}

/// The selecting value of request field `name` for `Vary` matching: its field lines combined,
/// whitespace around commas removed; for `Accept-Encoding`, whose tokens are case-insensitive
/// and unordered, lower-cased and sorted (RFC 9111 §4.1 lets a cache normalise so).
pub fn vary_value(buf: &[u8], headers: &[Header], name: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut items: Vec<&[u8]> = Vec::new();
    for h in headers {
        if h.name.get(buf).eq_ignore_ascii_case(name) {
            items.extend(list_items(h.value.get(buf)));
        }
    }
    let folded = name.eq_ignore_ascii_case(b"accept-encoding");
    let mut owned: Vec<Vec<u8>> = if folded {
        items.iter().filter_map(|i| coding(i)).collect()
    } else {
        items.iter().map(|i| i.to_vec()).collect()
    };
    if folded {
        owned.sort();
        owned.dedup();
        if owned.is_empty() && find_header(buf, headers, name).is_some() {
            // Every coding refused (`gzip;q=0`): identity only, which is not what an absent
            // field says (any coding is acceptable then).
            owned.push(b"identity".to_vec());
        }
    }
    for (k, i) in owned.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(i);
    }
    if items.is_empty() && find_header(buf, headers, name).is_some() {
        // Present but empty differs from absent.
        out.push(b'\0');
    }
}

/// One `Accept-Encoding` member in a normal form: the coding lower-cased, with its weight when
/// it is neither 1 nor absent; `None` when its weight is zero (`q=0`, `Q = 0.000`: refused).
fn coding(item: &[u8]) -> Option<Vec<u8>> {
    let mut parts = item.split(|&b| b == b';');
    let name = trim_ows(parts.next().unwrap_or(b"")).to_ascii_lowercase();
    let mut weight: Option<Vec<u8>> = None;
    for p in parts {
        let p = trim_ows(p);
        let Some(eq) = p.iter().position(|&b| b == b'=') else {
            continue;
        };
        if trim_ows(&p[..eq]).eq_ignore_ascii_case(b"q") {
            weight = Some(trim_ows(&p[eq + 1..]).to_vec());
        }
    }
    match weight {
        None => Some(name),
        Some(q) => {
            let (int, frac) = match q.iter().position(|&b| b == b'.') {
                Some(d) => (&q[..d], &q[d + 1..]),
                None => (&q[..], &b""[..]),
            };
            let digits = frac.iter().all(u8::is_ascii_digit) && frac.len() <= 3;
            match int {
                b"0" if digits && frac.iter().all(|&d| d == b'0') => None,
                b"1" if digits && frac.iter().all(|&d| d == b'0') => Some(name),
                _ => {
                    let mut v = name;
                    v.extend_from_slice(b";q=");
                    v.extend_from_slice(&q);
                    Some(v)
                }
            }
        }
    }
}

/// Which cache a request asks. The forward proxy's entries are keyed by the absolute URI
/// alone; a reverse route's by its upstream group as well, so a reverse client naming any
/// `Host` cannot plant a page that a forward user gets for that URL, nor a forward user read
/// what a reverse route stored for an internal host (or one group another's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space<'a> {
    Forward,
    /// The name of the route's upstream group.
    Upstream(&'a str),
}

/// Reverse keys start with this byte, then the group's name and a NUL (which no normalised
/// URI holds); forward keys start with the scheme.
const SPACE_MARK: u8 = b'~';

/// The cache key of a request in `space`: scheme, host (lower-cased, default port dropped)
/// and the normalised request-target, as an absolute URI, after the space's prefix.
pub fn key(space: Space<'_>, scheme: &str, host: &[u8], target: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if let Space::Upstream(name) = space {
        out.push(SPACE_MARK);
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(scheme.as_bytes());
    out.extend_from_slice(b"://");
    let default = if scheme == "https" {
        &b":443"[..]
    } else {
        b":80"
    };
    let host = host.strip_suffix(default).unwrap_or(host);
    out.extend(host.iter().map(u8::to_ascii_lowercase));
    if !target.starts_with(b"/") {
        out.push(b'/');
    }
    if target != b"*" {
        out.extend_from_slice(target);
    }
}

/// The cache key (or key prefix) a URL names, for purges: `scheme://host[:port]/path?query`, its
/// scheme and host lower-cased and a default port dropped like the proxy's own keys; a
/// full URL's path is normalised as requests' are. `None` when it is not an http(s) URL.
pub fn key_of_url(url: &[u8], prefix: bool) -> Option<Vec<u8>> {
    let lower: Vec<u8> = url.iter().take(8).map(u8::to_ascii_lowercase).collect();
    let (scheme, rest) = if lower.starts_with(b"http://") {
        ("http", &url[7..])
    } else if lower.starts_with(b"https://") {
        ("https", &url[8..])
    } else {
        return None;
    };
    let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    let (host, path) = rest.split_at(slash);
    if host.is_empty() {
        return None;
    }
    let path = if path.is_empty() { &b"/"[..] } else { path };
    let mut target = Vec::new();
    if prefix {
        target.extend_from_slice(path);
    } else {
        crate::http::path::normalise(path, &Default::default(), &mut target).ok()?;
    }
    let mut out = Vec::new();
    key(Space::Forward, scheme, host, &target, &mut out);
    Some(out)
}

/// The absolute URI of a cache key, without its space.
pub fn key_uri(key: &[u8]) -> &[u8] {
    match key.first() {
        Some(&SPACE_MARK) => key
            .iter()
            .position(|&b| b == 0)
            .map_or(key, |i| &key[i + 1..]),
        _ => key,
    }
}

/// The key of `uri` (a forward key, as [`key_of_url`] gives) in the space of upstream group
/// `name`: what a purge of that URL removes besides the forward entry.
pub fn key_in_space(uri: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2 + uri.len());
    out.push(SPACE_MARK);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(uri);
    out
}

/// The cache key a `Location` or `Content-Location` value names, when it is on the same
/// authority as `key` (RFC 9111 §4.4: only those are invalidated).
pub fn same_origin_key(key: &[u8], value: &[u8], out: &mut Vec<u8>) -> bool {
    let value = trim_ows(value);
    // The other key is in the same space: its prefix is kept.
    let space = key.len() - key_uri(key).len();
    out.clear();
    out.extend_from_slice(&key[..space]);
    let key = &key[space..];
    let Some(scheme_end) = memchr::memmem::find(key, b"://") else {
        return false;
    };
    let origin_end = key[scheme_end + 3..]
        .iter()
        .position(|&b| b == b'/')
        .map_or(key.len(), |i| scheme_end + 3 + i);
    if value.starts_with(b"/") && !value.starts_with(b"//") {
        out.extend_from_slice(&key[..origin_end]);
        out.extend_from_slice(value);
        return true;
    }
    let origin = &key[..origin_end];
    if value.len() >= origin.len() && value[..origin.len()].eq_ignore_ascii_case(origin) {
        let rest = &value[origin.len()..];
        if rest.is_empty() || rest.starts_with(b"/") {
            out.extend_from_slice(origin);
            out.extend_from_slice(if rest.is_empty() { b"/" } else { rest });
            return true;
        }
    }
    false
}

/// Does a response to an unsafe `method` invalidate stored responses (RFC 9111 §4.4): a
/// non-error status to a method that is not safe.
pub fn invalidates(method: Method, status: u16) -> bool {
    !matches!(
        method,
        Method::Get | Method::Head | Method::Options | Method::Trace
    ) && (200..400).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, parse_response, Limits};

    fn resp(head: &str) -> ResponseMeta {
        let b = head.as_bytes();
        let mut hs = Vec::new();
        let h = parse_response(b, &mut hs, &Limits::default()).unwrap();
        read_response(h.status, b, &hs, &[b"cdn-cache-control".to_vec()])
    }

    fn req(head: &str) -> RequestMeta {
        let b = head.as_bytes();
        let mut hs = Vec::new();
        parse_request(b, &mut hs, &Limits::default()).unwrap();
        read_request(b, &hs)
    }

    const T: u64 = 1_000_000;
    const DATE: &str = "Mon, 12 Jan 1970 13:46:40 GMT"; // T

    fn rules() -> CacheRules {
        CacheRules::default()
    }

    /// must-understand (RFC 9111 §5.2.2.3): a known status is stored despite `no-store`; an
    /// unknown one is not stored at all.
    #[test]
    fn must_understand() {
        let req = RequestMeta::default();
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nCache-Control: max-age=60, must-understand, no-store\r\n\r\n"
        ));
        assert_eq!(storable(Method::Get, &req, &r, T, &rules()), Ok(60));
        let r = resp(&format!(
            "HTTP/1.1 299 Whatever\r\nDate: {DATE}\r\nCache-Control: max-age=60, must-understand\r\n\r\n"
        ));
        assert_eq!(
            storable(Method::Get, &req, &r, T, &rules()),
            Err("must-understand")
        );
        // Without it, no-store holds; and a request's no-store always does.
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nCache-Control: max-age=60, no-store\r\n\r\n"
        ));
        assert_eq!(
            storable(Method::Get, &req, &r, T, &rules()),
            Err("no-store")
        );
        let no_store = RequestMeta {
            cc: Directives {
                no_store: true,
                ..Directives::default()
            },
            ..RequestMeta::default()
        };
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nCache-Control: max-age=60, must-understand, no-store\r\n\r\n"
        ));
        assert_eq!(
            storable(Method::Get, &no_store, &r, T, &rules()),
            Err("no-store")
        );
    }

    /// RFC 9213: the first targeted field with a valid value replaces Cache-Control and
    /// Expires for this cache; an invalid one is as if absent; others are not looked at.
    #[test]
    fn targeted_cache_control() {
        let req = RequestMeta::default();
        let head = |extra: &str| format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\n{extra}\r\n");
        let r = resp(&head(
            "Cache-Control: no-store\r\nCDN-Cache-Control: max-age=600\r\n",
        ));
        assert_eq!(storable(Method::Get, &req, &r, T, &rules()), Ok(600));
        let r = resp(&head(
            "Cache-Control: max-age=600\r\nCDN-Cache-Control: no-store\r\n",
        ));
        assert_eq!(
            storable(Method::Get, &req, &r, T, &rules()),
            Err("no-store")
        );
        // Expires is ignored with it: only the targeted lifetime counts.
        let r = resp(&head(
            "Expires: Mon, 12 Jan 1970 14:46:40 GMT\r\nCDN-Cache-Control: max-age=30, must-revalidate\r\n",
        ));
        assert_eq!(lifetime(&r, T, &rules()), 30);
        assert!(r.cc.must_revalidate);
        // Two lines are one dictionary; the last of a repeated key wins.
        let r = resp(&head(
            "CDN-Cache-Control: max-age=30\r\nCDN-Cache-Control: max-age=90, private=?0\r\n",
        ));
        assert_eq!(storable(Method::Get, &req, &r, T, &rules()), Ok(90));
        // A string argument is a field list: those fields are not stored.
        let r = resp(&head(
            "CDN-Cache-Control: max-age=60, private=\"set-cookie\"\r\n",
        ));
        assert!(r.cc.qualified && !r.cc.private);
        // Not a structured dictionary: ignored, Cache-Control applies.
        for bad in [
            "Max-Age=60",
            "max-age=60,",
            "max-age = 60",
            "max-age=60;;",
            "max-age=\"60",
            "max-age=6O",
            "",
        ] {
            let r = resp(&head(&format!(
                "Cache-Control: max-age=5\r\nCDN-Cache-Control: {bad}\r\n"
            )));
            assert_eq!(lifetime(&r, T, &rules()), 5, "{bad:?}");
        }
        // Parameters are allowed and ignored.
        let r = resp(&head(
            "CDN-Cache-Control: max-age=60;x=1, stale-if-error=30\r\n",
        ));
        assert_eq!((r.cc.max_age, r.cc.stale_if_error), (Some(60), Some(30)));
        // The target list decides which field, in its order; a cache without one ignores them.
        let b = head(
            "Cache-Control: max-age=5\r\nCDN-Cache-Control: max-age=60\r\nRingway-Cache-Control: max-age=120\r\n",
        );
        let mut hs = Vec::new();
        let h = parse_response(b.as_bytes(), &mut hs, &Limits::default()).unwrap();
        let read = |t: &[&str]| {
            let t: Vec<Vec<u8>> = t.iter().map(|s| s.as_bytes().to_vec()).collect();
            read_response(h.status, b.as_bytes(), &hs, &t).cc.max_age
        };
        assert_eq!(
            read(&["ringway-cache-control", "cdn-cache-control"]),
            Some(120)
        );
        assert_eq!(read(&["cdn-cache-control"]), Some(60));
        assert_eq!(read(&[]), Some(5));
    }

    #[test]
    fn lifetime_precedence() {
        let r = resp(&format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\nCache-Control: max-age=60, s-maxage=120\r\nExpires: Mon, 12 Jan 1970 13:56:40 GMT\r\n\r\n"));
        assert_eq!(lifetime(&r, T, &rules()), 120);
        let r = resp(&format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\nCache-Control: max-age=60\r\nExpires: Mon, 12 Jan 1970 13:56:40 GMT\r\n\r\n"));
        assert_eq!(lifetime(&r, T, &rules()), 60);
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nExpires: Mon, 12 Jan 1970 13:56:40 GMT\r\n\r\n"
        ));
        assert_eq!(lifetime(&r, T, &rules()), 600);
        // Invalid or repeated Expires: in the past.
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nExpires: 0\r\n\r\n"
        ));
        assert_eq!((r.expires, lifetime(&r, T, &rules())), (Expires::Past, 0));
        let r = resp(&format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\nExpires: Mon, 12 Jan 1970 13:56:40 GMT\r\nExpires: Mon, 12 Jan 1970 13:56:40 GMT\r\n\r\n"));
        assert_eq!(lifetime(&r, T, &rules()), 0);
        // No Date: the response time stands in.
        let r = resp("HTTP/1.1 200 OK\r\nExpires: Mon, 12 Jan 1970 13:56:40 GMT\r\n\r\n");
        assert_eq!(lifetime(&r, T - 100, &rules()), 700);
    }

    #[test]
    fn heuristic_and_configured_defaults() {
        // Last-Modified 1000 s before Date: 10% of it.
        let lm = "Mon, 12 Jan 1970 13:30:00 GMT"; // T - 1000
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nLast-Modified: {lm}\r\n\r\n"
        ));
        assert_eq!(lifetime(&r, T, &rules()), 100);
        let off = CacheRules {
            heuristic: false,
            ..rules()
        };
        assert_eq!(lifetime(&r, T, &off), 0);
        // 302 is not heuristically cacheable, and without anything explicit not stored.
        let r302 = resp(&format!(
            "HTTP/1.1 302 Found\r\nDate: {DATE}\r\nLast-Modified: {lm}\r\n\r\n"
        ));
        assert_eq!(lifetime(&r302, T, &rules()), 0);
        assert_eq!(
            storable(Method::Get, &RequestMeta::default(), &r302, T, &rules()),
            Err("status")
        );
        // Configured per status; never over what the origin said unless asked.
        let valid = CacheRules {
            valid: vec![(vec![200, 302], 600)],
            ..rules()
        };
        assert_eq!(lifetime(&r302, T, &valid), 600);
        assert!(storable(Method::Get, &RequestMeta::default(), &r302, T, &valid).is_ok());
        let explicit = resp(&format!(
            "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nCache-Control: max-age=5\r\n\r\n"
        ));
        assert_eq!(lifetime(&explicit, T, &valid), 5);
        let over = CacheRules {
            override_origin: true,
            ..valid
        };
        assert_eq!(lifetime(&explicit, T, &over), 600);
    }

    #[test]
    fn storability() {
        let get = RequestMeta::default();
        let ok = |h: &str| storable(Method::Get, &get, &resp(h), T, &rules());
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nCache-Control: max-age=10\r\n\r\n"),
            Ok(10)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nCache-Control: max-age=10, no-store\r\n\r\n"),
            Err("no-store")
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nCache-Control: private, max-age=10\r\n\r\n"),
            Err("private")
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nCache-Control: max-age=10\r\nVary: *\r\n\r\n"),
            Err("vary-star")
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nCache-Control: max-age=10\r\nSet-Cookie: a=b\r\n\r\n"),
            Err("set-cookie")
        );
        assert_eq!(
            ok("HTTP/1.1 206 Partial\r\nCache-Control: max-age=10\r\n\r\n"),
            Err("status")
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), Err("not-fresh"));
        // No freshness but a validator: kept, to be revalidated.
        assert_eq!(ok("HTTP/1.1 200 OK\r\nETag: \"a\"\r\n\r\n"), Ok(0));
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\nETag: \"a\"\r\n\r\n"),
            Ok(0)
        );
        let r = resp("HTTP/1.1 200 OK\r\nCache-Control: max-age=10\r\n\r\n");
        assert_eq!(storable(Method::Head, &get, &r, T, &rules()), Err("method"));
        assert_eq!(storable(Method::Post, &get, &r, T, &rules()), Err("method"));
        let nostore = req("GET / HTTP/1.1\r\nCache-Control: no-store\r\n\r\n");
        assert_eq!(
            storable(Method::Get, &nostore, &r, T, &rules()),
            Err("no-store")
        );
        let auth = req("GET / HTTP/1.1\r\nAuthorization: Basic eA==\r\n\r\n");
        assert_eq!(
            storable(Method::Get, &auth, &r, T, &rules()),
            Err("authorization")
        );
        let public = resp("HTTP/1.1 200 OK\r\nCache-Control: public, max-age=10\r\n\r\n");
        assert!(storable(Method::Get, &auth, &public, T, &rules()).is_ok());
        let smax = resp("HTTP/1.1 200 OK\r\nCache-Control: s-maxage=10\r\n\r\n");
        assert!(storable(Method::Get, &auth, &smax, T, &rules()).is_ok());
        // Junk in Cache-Control: the restrictive reading.
        for bad in [
            "HTTP/1.1 200 OK\r\nCache-Control: no-cache; no-store\r\nLast-Modified: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n",
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=600, private;\r\n\r\n",
        ] {
            assert_eq!(ok(bad), Err("cache-control"), "{bad}");
        }
        // A page fetched with a cookie and no explicit freshness is not kept on a guess.
        let cookie = req("GET / HTTP/1.1\r\nCookie: session=1\r\n\r\n");
        let guess = resp("HTTP/1.1 200 OK\r\nLast-Modified: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n");
        assert!(storable(Method::Get, &get, &guess, T, &rules()).is_ok());
        assert_eq!(
            storable(Method::Get, &cookie, &guess, T, &rules()),
            Err("credentials")
        );
        let with = CacheRules {
            heuristic_credentials: true,
            ..rules()
        };
        assert!(storable(Method::Get, &cookie, &guess, T, &with).is_ok());
        assert!(
            storable(Method::Get, &cookie, &r, T, &rules()).is_ok(),
            "explicit: stored"
        );
    }

    #[test]
    fn age_calculation() {
        // Date 10 s before the response arrived, Age 3, 2 s in flight.
        let r = resp("HTTP/1.1 200 OK\r\nDate: Mon, 12 Jan 1970 13:46:30 GMT\r\nAge: 3\r\n\r\n");
        assert_eq!(initial_age(&r, T - 2, T), 10);
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nAge: 30, 4\r\n\r\n"
        ));
        assert_eq!(initial_age(&r, T - 2, T), 32);
        // A negative or invalid Age is ignored; a Date in the future gives no negative age.
        for bad in ["-5", "abc", "1.5"] {
            let r = resp(&format!(
                "HTTP/1.1 200 OK\r\nDate: Mon, 12 Jan 1970 13:50:00 GMT\r\nAge: {bad}\r\n\r\n"
            ));
            assert_eq!(initial_age(&r, T, T), 0, "{bad}");
        }
        assert_eq!(current_age(10, T, T + 5), 15);
        assert_eq!(current_age(u64::MAX, T, T + 5), DELTA_MAX);
    }

    #[test]
    fn request_directives() {
        let f = Freshness {
            lifetime: 100,
            age: 50,
            ..Freshness::default()
        };
        let u = |r: &str| usable(&f, &req(r));
        assert_eq!(u("GET / HTTP/1.1\r\n\r\n"), Usable::Fresh);
        assert_eq!(
            u("GET / HTTP/1.1\r\nCache-Control: no-cache\r\n\r\n"),
            Usable::Revalidate
        );
        assert_eq!(
            u("GET / HTTP/1.1\r\nPragma: no-cache\r\n\r\n"),
            Usable::Revalidate
        );
        // Cache-Control present: Pragma is ignored.
        assert_eq!(
            u("GET / HTTP/1.1\r\nPragma: no-cache\r\nCache-Control: max-age=60\r\n\r\n"),
            Usable::Fresh
        );
        assert_eq!(
            u("GET / HTTP/1.1\r\nCache-Control: max-age=10\r\n\r\n"),
            Usable::Revalidate
        );
        assert_eq!(
            u("GET / HTTP/1.1\r\nCache-Control: min-fresh=60\r\n\r\n"),
            Usable::Revalidate
        );
        assert_eq!(
            u("GET / HTTP/1.1\r\nCache-Control: min-fresh=40\r\n\r\n"),
            Usable::Fresh
        );
        let stale = Freshness {
            lifetime: 100,
            age: 130,
            ..Freshness::default()
        };
        let s = |r: &str| usable(&stale, &req(r));
        assert_eq!(s("GET / HTTP/1.1\r\n\r\n"), Usable::Revalidate);
        assert_eq!(
            s("GET / HTTP/1.1\r\nCache-Control: max-stale\r\n\r\n"),
            Usable::Stale
        );
        assert_eq!(
            s("GET / HTTP/1.1\r\nCache-Control: max-stale=30\r\n\r\n"),
            Usable::Stale
        );
        assert_eq!(
            s("GET / HTTP/1.1\r\nCache-Control: max-stale=29\r\n\r\n"),
            Usable::Revalidate
        );
        let must = Freshness {
            must_revalidate: true,
            ..stale
        };
        assert_eq!(
            usable(
                &must,
                &req("GET / HTTP/1.1\r\nCache-Control: max-stale\r\n\r\n")
            ),
            Usable::Revalidate
        );
        let nc = Freshness {
            no_cache: true,
            ..f
        };
        assert_eq!(
            usable(&nc, &req("GET / HTTP/1.1\r\n\r\n")),
            Usable::Revalidate
        );
    }

    #[test]
    fn conditionals() {
        let r = |h: &str| req(&format!("GET / HTTP/1.1\r\n{h}\r\n"));
        let e = Some(&b"\"v1\""[..]);
        assert!(not_modified(&r("If-None-Match: \"v1\"\r\n"), e, None));
        assert!(not_modified(&r("If-None-Match: W/\"v1\"\r\n"), e, None));
        assert!(not_modified(
            &r("If-None-Match: \"x\", \"v1\"\r\n"),
            e,
            None
        ));
        assert!(not_modified(&r("If-None-Match: *\r\n"), None, None));
        assert!(!not_modified(&r("If-None-Match: \"v2\"\r\n"), e, None));
        assert!(!not_modified(&r("If-None-Match: v1\r\n"), e, None));
        // If-Modified-Since only without If-None-Match.
        let ims = "If-Modified-Since: Mon, 12 Jan 1970 13:46:40 GMT\r\n";
        assert!(not_modified(&r(ims), None, Some(T)));
        assert!(not_modified(&r(ims), None, Some(T - 1)));
        assert!(!not_modified(&r(ims), None, Some(T + 1)));
        assert!(!not_modified(
            &r(&format!("If-None-Match: \"v2\"\r\n{ims}")),
            e,
            Some(T - 1)
        ));
        assert!(!not_modified(
            &r("If-Modified-Since: yesterday\r\n"),
            None,
            Some(0)
        ));
        assert!(strong_eq(b"\"a\"", b"\"a\"") && !strong_eq(b"W/\"a\"", b"W/\"a\""));
        assert!(weak_eq(b"W/\"a\"", b"\"a\""));
    }

    #[test]
    fn vary_normalisation() {
        let b = b"GET / HTTP/1.1\r\nAccept-Encoding: GZIP, br\r\nAccept-Encoding: deflate,identity;q=0\r\nX-A: 1 , 2\r\nX-E:\r\n\r\n";
        let mut hs = Vec::new();
        parse_request(b, &mut hs, &Limits::default()).unwrap();
        let mut out = Vec::new();
        vary_value(b, &hs, b"accept-encoding", &mut out);
        assert_eq!(out, b"br,deflate,gzip");
        vary_value(b, &hs, b"x-a", &mut out);
        assert_eq!(out, b"1,2");
        vary_value(b, &hs, b"x-e", &mut out);
        assert_eq!(out, b"\0");
        vary_value(b, &hs, b"x-missing", &mut out);
        assert_eq!(out, b"");
        let ae = |v: &str| {
            let r = format!("GET / HTTP/1.1\r\nAccept-Encoding: {v}\r\n\r\n");
            let mut hs = Vec::new();
            parse_request(r.as_bytes(), &mut hs, &Limits::default()).unwrap();
            let mut out = Vec::new();
            vary_value(r.as_bytes(), &hs, b"accept-encoding", &mut out);
            String::from_utf8(out).unwrap()
        };
        // Refusing every coding is not the same as saying nothing (any coding then).
        assert_eq!(ae("gzip;q=0"), "identity");
        assert_eq!(ae("gzip; Q=0.00"), "identity");
        assert_eq!(ae("gzip;q=0.000, br"), "br");
        assert_eq!(ae("gzip;q=1.0, br;q=0.5"), "br;q=0.5,gzip");
        assert_ne!(ae("gzip;q=0.001"), ae("gzip;q=0"));
        let r =
            resp("HTTP/1.1 200 OK\r\nVary: Accept-Encoding, x-a\r\nVary: ACCEPT-encoding\r\n\r\n");
        assert_eq!(
            r.vary,
            Vary::Fields(vec![b"accept-encoding".to_vec(), b"x-a".to_vec()])
        );
    }

    #[test]
    fn keys_and_invalidation_targets() {
        let mut k = Vec::new();
        key(Space::Forward, "http", b"Example.COM:80", b"/a?b", &mut k);
        assert_eq!(k, b"http://example.com/a?b");
        key(Space::Forward, "https", b"example.com:8443", b"/", &mut k);
        assert_eq!(k, b"https://example.com:8443/");
        // A reverse route's key names its upstream group; the URI stays readable for purges.
        key(
            Space::Upstream("app"),
            "http",
            b"victim.test",
            b"/x",
            &mut k,
        );
        assert_eq!(k, b"~app\0http://victim.test/x");
        assert_eq!(key_uri(&k), b"http://victim.test/x");
        assert_eq!(key_in_space(b"http://victim.test/x", "app"), k);
        assert_eq!(key_uri(b"http://a/"), b"http://a/");
        let mut out = Vec::new();
        assert!(same_origin_key(&k, b"/y", &mut out));
        assert_eq!(out, b"~app\0http://victim.test/y");
        assert!(same_origin_key(&k, b"http://victim.test/z", &mut out));
        assert_eq!(out, b"~app\0http://victim.test/z");
        let mut out = Vec::new();
        assert!(same_origin_key(b"http://a.com/x", b"/y?z", &mut out));
        assert_eq!(out, b"http://a.com/y?z");
        assert!(same_origin_key(
            b"http://a.com/x",
            b"HTTP://A.com/q",
            &mut out
        ));
        assert_eq!(out, b"http://a.com/q");
        assert!(!same_origin_key(
            b"http://a.com/x",
            b"http://a.com.evil/q",
            &mut out
        ));
        assert!(!same_origin_key(b"http://a.com/x", b"//b.com/q", &mut out));
        assert!(!same_origin_key(
            b"http://a.com/x",
            b"https://a.com/q",
            &mut out
        ));
        assert!(invalidates(Method::Post, 201) && invalidates(Method::Delete, 302));
        let url = |u: &str, p| key_of_url(u.as_bytes(), p);
        assert_eq!(
            url("HTTP://Example.com:80/a/../b?x=1", false).unwrap(),
            b"http://example.com/b?x=1"
        );
        assert_eq!(url("https://a.com", false).unwrap(), b"https://a.com/");
        assert_eq!(
            url("http://a.com/static/", true).unwrap(),
            b"http://a.com/static/"
        );
        assert!(url("ftp://a.com/", false).is_none() && url("http:///x", false).is_none());
        assert!(!invalidates(Method::Post, 500) && !invalidates(Method::Get, 200));
    }
}
