//! A route's edits of what it forwards: the path rewritten before the request goes upstream
//! (the route matched the original), and request and response fields set, added or removed,
//! with variables in their values. Decided here, applied by the head writers
//! (`http::rewrite::upstream_request`, `client_response`).

use regex::bytes::Regex;

/// How a route rewrites the normalised path (the query is kept as sent).
#[derive(Clone, Debug, Default)]
pub struct PathRewrite {
    /// Removed from the front when the path starts with it (`/app`: `/app/x` → `/x`,
    /// `/app` → `/`); a path that does not start with it is left alone.
    pub strip_prefix: Option<String>,
    /// Put in front, after any strip (`/v2`: `/x` → `/v2/x`).
    pub add_prefix: Option<String>,
    /// A regex on the path and its replacement, `$1` or `${name}` for captures: the first
    /// match is replaced (linear time: the `regex` crate).
    pub regex: Option<(Regex, String)>,
}

impl PartialEq for PathRewrite {
    fn eq(&self, o: &Self) -> bool {
        let re = |r: &Option<(Regex, String)>| {
            r.as_ref().map(|(r, t)| (r.as_str().to_string(), t.clone()))
        };
        (&self.strip_prefix, &self.add_prefix, re(&self.regex))
            == (&o.strip_prefix, &o.add_prefix, re(&o.regex))
    }
}

impl Eq for PathRewrite {}

impl PathRewrite {
    pub fn is_empty(&self) -> bool {
        self.strip_prefix.is_none() && self.add_prefix.is_none() && self.regex.is_none()
    }

    /// Writes the target (`path?query`) with its path rewritten into `out` (cleared). The
    /// result always starts with `/`.
    pub fn apply(&self, target: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let (path, query) = match memchr::memchr(b'?', target) {
            Some(i) => target.split_at(i),
            None => (target, &b""[..]),
        };
        let mut path = path;
        if let Some(p) = &self.strip_prefix {
            let p = p.trim_end_matches('/').as_bytes();
            if let Some(rest) = path.strip_prefix(p) {
                // A whole segment only: `/app` strips `/app/x` and `/app`, not `/apple`.
                if rest.is_empty() || rest[0] == b'/' {
                    path = rest;
                }
            }
        }
        if let Some(p) = &self.add_prefix {
            out.extend_from_slice(p.trim_end_matches('/').as_bytes());
        }
        if !path.starts_with(b"/") {
            out.push(b'/');
        }
        out.extend_from_slice(path);
        if let Some((re, to)) = &self.regex {
            if let Some(caps) = re.captures(out) {
                let m = caps.get(0).map_or(0..0, |m| m.range());
                let mut replaced = Vec::with_capacity(out.len() + to.len());
                replaced.extend_from_slice(&out[..m.start]);
                caps.expand(to.as_bytes(), &mut replaced);
                replaced.extend_from_slice(&out[m.end..]);
                if !replaced.starts_with(b"/") {
                    replaced.insert(0, b'/');
                }
                // A replacement may assemble `.` or `..` segments from pieces of others: they
                // are resolved here, so nothing climbs out of where the regex put it.
                out.clear();
                remove_dot_segments(&replaced, out);
            }
        }
        out.extend_from_slice(query);
    }
}

/// Where a response's `Location`, `Content-Location` or `Refresh` URL points, rewritten for
/// the client like nginx's `proxy_redirect default`, and more: an absolute URL at one of
/// `upstream` (the authorities the upstream knows itself by: the server's address, the Host
/// sent to it) gets the client's `origin` (`scheme://host[:port]` as the client asked), and
/// its path, like a root-relative one, gets back the prefix the route took off
/// (`strip_prefix`, or `add_prefix` swapped back). Anything else (another site, a path
/// outside the added prefix) goes unchanged.
#[derive(Debug)]
pub struct Relocate<'a> {
    pub upstream: &'a [&'a [u8]],
    pub origin: &'a [u8],
    pub rewrite: &'a PathRewrite,
}

impl Relocate<'_> {
    /// Writes `value` rewritten into `out` (cleared); false when it stays as it is.
    pub fn apply(&self, name: &[u8], value: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        // Refresh: `5; url=/next`.
        let (lead, url) = if name.eq_ignore_ascii_case(b"refresh") {
            match find_ci(value, b"url=") {
                Some(i) => value.split_at(i + 4),
                None => return false,
            }
        } else {
            (&b""[..], value)
        };
        let (origin, path) = match split_absolute(url) {
            Some((authority, rest)) => {
                if !self
                    .upstream
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(authority))
                {
                    return false;
                }
                (Some(self.origin), rest)
            }
            None if url.starts_with(b"/") && !url.starts_with(b"//") => (None, url),
            None => return false,
        };
        out.extend_from_slice(lead);
        let before = out.len();
        if let Some(o) = origin {
            out.extend_from_slice(o);
        }
        let changed_path = self.unrewrite(path, out);
        if !changed_path {
            out.extend_from_slice(path);
        }
        origin.is_some() || (changed_path && out.len() > before)
    }

    /// Appends `path` with the route's prefix change undone; false when it does not apply.
    fn unrewrite(&self, path: &[u8], out: &mut Vec<u8>) -> bool {
        let r = self.rewrite;
        if r.regex.is_some() {
            return false;
        }
        let strip = r.strip_prefix.as_deref().map(|p| p.trim_end_matches('/'));
        let add = r.add_prefix.as_deref().map(|p| p.trim_end_matches('/'));
        let rest = match add {
            Some(a) => match path.strip_prefix(a.as_bytes()) {
                Some(rest) if rest.is_empty() || matches!(rest[0], b'/' | b'?' | b'#') => rest,
                _ => return false,
            },
            None => path,
        };
        let Some(s) = strip else {
            if add.is_none() {
                return false;
            }
            out.extend_from_slice(if rest.is_empty() { b"/" } else { rest });
            return true;
        };
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(if rest.is_empty() { b"/" } else { rest });
        true
    }
}

/// RFC 3986 §5.2.4 on a path that starts with `/`, appended to `out`.
fn remove_dot_segments(path: &[u8], out: &mut Vec<u8>) {
    let mut segs: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let last = parts.len() - 1;
    let mut trailing = false;
    for (i, s) in parts.iter().enumerate() {
        match *s {
            b"." => trailing = i == last,
            b".." => {
                segs.pop();
                trailing = i == last;
            }
            s => {
                segs.push(s);
                trailing = false;
            }
        }
    }
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if segs.is_empty() || trailing {
        out.push(b'/');
    }
}

/// `http://host:port/path` → (authority, `/path` or empty).
fn split_absolute(url: &[u8]) -> Option<(&[u8], &[u8])> {
    let scheme_len = if url.len() >= 7 && url[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if url.len() >= 8 && url[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return None;
    };
    let rest = &url[scheme_len..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// `Set-Cookie` attributes rewritten for the client, like nginx's `proxy_cookie_domain` and
/// `proxy_cookie_path`: a `Domain` equal to `domain.0` (case-insensitive, a leading dot
/// ignored) becomes `domain.1`; a `Path` starting with `path.0` gets `path.1` in its place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CookieRewrite {
    pub domain: Option<(String, String)>,
    pub path: Option<(String, String)>,
}

impl CookieRewrite {
    pub fn is_empty(&self) -> bool {
        self.domain.is_none() && self.path.is_none()
    }

    /// Writes the `Set-Cookie` value rewritten into `out` (cleared); false when unchanged.
    pub fn apply(&self, value: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        let mut changed = false;
        for (i, part) in value.split(|&b| b == b';').enumerate() {
            if i > 0 {
                out.push(b';');
            }
            // The first part is the cookie's name and value: never touched.
            let attr = (i > 0)
                .then(|| {
                    let t = part.trim_ascii_start();
                    let eq = t.iter().position(|&b| b == b'=')?;
                    Some((part.len() - t.len(), &t[..eq], &t[eq + 1..]))
                })
                .flatten();
            let rewritten = attr.and_then(|(lead, name, v)| {
                let v = v.trim_ascii();
                let new = if name.eq_ignore_ascii_case(b"domain") {
                    let (from, to) = self.domain.as_ref()?;
                    let bare = v.strip_prefix(b".").unwrap_or(v);
                    bare.eq_ignore_ascii_case(from.trim_start_matches('.').as_bytes())
                        .then(|| to.as_bytes().to_vec())?
                } else if name.eq_ignore_ascii_case(b"path") {
                    let (from, to) = self.path.as_ref()?;
                    let rest = v.strip_prefix(from.as_bytes())?;
                    [to.as_bytes(), rest].concat()
                } else {
                    return None;
                };
                let mut p = part[..lead].to_vec();
                p.extend_from_slice(name);
                p.push(b'=');
                p.extend_from_slice(&new);
                Some(p)
            });
            match rewritten {
                Some(p) => {
                    out.extend_from_slice(&p);
                    changed = true;
                }
                None => out.extend_from_slice(part),
            }
        }
        changed
    }
}

/// A field value with variables (`$client_addr`, `${host}`), parsed once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(Vec<u8>),
    Var(Var),
}

/// What a value may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// The client's address.
    ClientAddr,
    /// The request's host (without port), as the client sent it.
    Host,
    /// `http` or `https`.
    Scheme,
    /// The route's name.
    Route,
    /// The request's method.
    Method,
    /// The path as the client sent it (normalised), before any rewrite.
    Path,
    /// The request's id (`[server] request_id`; empty without).
    RequestId,
}

const VARS: &[(&str, Var)] = &[
    ("client_addr", Var::ClientAddr),
    ("host", Var::Host),
    ("scheme", Var::Scheme),
    ("route", Var::Route),
    ("method", Var::Method),
    ("path", Var::Path),
    ("request_id", Var::RequestId),
];

/// The values of the variables for one exchange.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vars<'a> {
    pub client_addr: &'a [u8],
    pub host: &'a [u8],
    pub scheme: &'a [u8],
    pub route: &'a [u8],
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub request_id: &'a [u8],
}

impl Template {
    /// Parses `text`; an unknown `$name` is an error naming it, `$$` is a dollar sign.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'$' {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            if b.get(i + 1) == Some(&b'$') {
                lit.push(b'$');
                i += 2;
                continue;
            }
            let (name, next) = if b.get(i + 1) == Some(&b'{') {
                let end = text[i + 2..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
                (&text[i + 2..i + 2 + end], i + 3 + end)
            } else {
                let len = text[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(text.len() - i - 1);
                (&text[i + 1..i + 1 + len], i + 1 + len)
            };
            let var = VARS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, v)| v)
                .ok_or_else(|| {
                    let known: Vec<String> = VARS.iter().map(|(n, _)| format!("${n}")).collect();
                    format!(
                        "unknown variable ${name} (known: {}; $$ for a dollar sign)",
                        known.join(", ")
                    )
                })?;
            if !lit.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(var));
            i = next;
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        if parts.iter().any(|p| match p {
            Part::Text(t) => t.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0),
            Part::Var(_) => false,
        }) {
            return Err("a field value cannot hold CR, LF or NUL".into());
        }
        Ok(Self(parts))
    }

    /// Appends the value. Variables that carry client bytes (host, path) are written with
    /// any CR, LF or NUL left out, so a value never splits a head.
    pub fn render(&self, v: &Vars<'_>, out: &mut Vec<u8>) {
        for p in &self.0 {
            match p {
                Part::Text(t) => out.extend_from_slice(t),
                Part::Var(var) => {
                    let val = match var {
                        Var::ClientAddr => v.client_addr,
                        Var::Host => v.host,
                        Var::Scheme => v.scheme,
                        Var::Route => v.route,
                        Var::Method => v.method,
                        Var::Path => v.path,
                        Var::RequestId => v.request_id,
                    };
                    out.extend(val.iter().filter(|&&c| c != b'\r' && c != b'\n' && c != 0));
                }
            }
        }
    }
}

/// Fields a route sets, adds or removes in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldRules {
    /// Replaces every field of the name (added when there was none). Names as written.
    pub set: Vec<(String, Template)>,
    /// Added beside what is there.
    pub add: Vec<(String, Template)>,
    /// Removed (lower-case).
    pub remove: Vec<String>,
}

impl FieldRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a field of this name is not passed on (removed or set anew).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r.as_bytes()))
            || self
                .set
                .iter()
                .any(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
    }

    /// The lower-case names of fields not passed on.
    pub fn dropped(&self) -> impl Iterator<Item = &[u8]> {
        self.remove
            .iter()
            .map(String::as_bytes)
            .chain(self.set.iter().map(|(n, _)| n.as_bytes()))
    }

    /// Appends the field lines set and added (each ending in CRLF).
    pub fn write(&self, v: &Vars<'_>, out: &mut Vec<u8>) {
        for (name, t) in self.set.iter().chain(&self.add) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            t.render(v, out);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(r: &PathRewrite, t: &str) -> String {
        let mut out = Vec::new();
        r.apply(t.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn paths_are_stripped_prefixed_and_replaced_with_the_query_kept() {
        let strip = PathRewrite {
            strip_prefix: Some("/app/".into()),
            ..Default::default()
        };
        assert_eq!(rewrite(&strip, "/app/x/y?q=1"), "/x/y?q=1");
        assert_eq!(rewrite(&strip, "/app"), "/");
        assert_eq!(rewrite(&strip, "/app?x"), "/?x");
        assert_eq!(rewrite(&strip, "/apple/x"), "/apple/x");
        assert_eq!(rewrite(&strip, "/other"), "/other");
        let replace = PathRewrite {
            strip_prefix: Some("/v1".into()),
            add_prefix: Some("/api/v1/".into()),
            ..Default::default()
        };
        assert_eq!(rewrite(&replace, "/v1/users"), "/api/v1/users");
        assert_eq!(rewrite(&replace, "/v1"), "/api/v1/");
        let re = PathRewrite {
            regex: Some((
                Regex::new(r"^/u/(?<id>\d+)$").unwrap(),
                "/users/${id}/profile".into(),
            )),
            ..Default::default()
        };
        assert_eq!(rewrite(&re, "/u/42?tab=1"), "/users/42/profile?tab=1");
        assert_eq!(rewrite(&re, "/u/x"), "/u/x");
        // A replacement that loses the leading slash gets it back.
        let bare = PathRewrite {
            regex: Some((Regex::new("^/old").unwrap(), "new".into())),
            ..Default::default()
        };
        assert_eq!(rewrite(&bare, "/old/a"), "/new/a");
        // Dot segments a replacement assembles are resolved: nothing climbs out.
        let dots = PathRewrite {
            regex: Some((
                Regex::new(r"^/f/([a-z.]+)x([a-z.]*)$").unwrap(),
                "/static/$1/$2/z".into(),
            )),
            ..Default::default()
        };
        assert_eq!(rewrite(&dots, "/f/..x.."), "/z");
        assert_eq!(rewrite(&dots, "/f/axb"), "/static/a/b/z");
        assert_eq!(rewrite(&dots, "/f/.xb"), "/static/b/z");
        let end = PathRewrite {
            regex: Some((Regex::new(r"^/e/(.*)$").unwrap(), "/a/$1".into())),
            ..Default::default()
        };
        assert_eq!(rewrite(&end, "/e/x.y"), "/a/x.y");
        assert_eq!(rewrite(&end, "/e/"), "/a/");
        // The query is never seen by the regex.
        let q = PathRewrite {
            regex: Some((Regex::new("x").unwrap(), "y".into())),
            ..Default::default()
        };
        assert_eq!(rewrite(&q, "/a?x=x"), "/a?x=x");
    }

    #[test]
    fn locations_point_back_at_the_client_facing_origin_and_prefix() {
        let strip = PathRewrite {
            strip_prefix: Some("/app".into()),
            ..Default::default()
        };
        let r = Relocate {
            upstream: &[b"127.0.0.1:3000", b"backend.internal"],
            origin: b"https://shop.example",
            rewrite: &strip,
        };
        let go = |name: &str, v: &str| {
            let mut out = Vec::new();
            r.apply(name.as_bytes(), v.as_bytes(), &mut out)
                .then(|| String::from_utf8(out).unwrap())
        };
        assert_eq!(
            go("Location", "http://127.0.0.1:3000/login?next=/x").as_deref(),
            Some("https://shop.example/app/login?next=/x")
        );
        assert_eq!(
            go("Location", "HTTP://Backend.Internal").as_deref(),
            Some("https://shop.example/app/")
        );
        assert_eq!(go("Location", "/dir/").as_deref(), Some("/app/dir/"));
        assert_eq!(
            go("Refresh", "5; url=http://backend.internal/next").as_deref(),
            Some("5; url=https://shop.example/app/next")
        );
        // Other sites, scheme-relative and relative references stay.
        assert_eq!(go("Location", "https://elsewhere.example/x"), None);
        assert_eq!(go("Location", "//backend.internal/x"), None);
        assert_eq!(go("Location", "next.html"), None);
        assert_eq!(go("Refresh", "5"), None);
        // A replaced prefix goes back; a path outside it is left.
        let swap = PathRewrite {
            strip_prefix: Some("/v1".into()),
            add_prefix: Some("/api/v1".into()),
            ..Default::default()
        };
        let r = Relocate {
            upstream: &[b"10.0.0.5:80"],
            origin: b"http://a.example:8080",
            rewrite: &swap,
        };
        let mut out = Vec::new();
        assert!(r.apply(b"Location", b"/api/v1/users/7", &mut out));
        assert_eq!(out, b"/v1/users/7".to_vec());
        assert!(!r.apply(b"Location", b"/static/x", &mut out));
        assert!(r.apply(
            b"Content-Location",
            b"http://10.0.0.5:80/static/x",
            &mut out
        ));
        assert_eq!(out, b"http://a.example:8080/static/x".to_vec());
    }

    #[test]
    fn cookie_domains_and_paths_are_rewritten() {
        let c = CookieRewrite {
            domain: Some(("backend.internal".into(), "example.org".into())),
            path: Some(("/".into(), "/app/".into())),
        };
        let go = |v: &str| {
            let mut out = Vec::new();
            c.apply(v.as_bytes(), &mut out)
                .then(|| String::from_utf8(out).unwrap())
        };
        assert_eq!(
            go("sid=1; Path=/; Domain=.Backend.Internal; HttpOnly").as_deref(),
            Some("sid=1; Path=/app/; Domain=example.org; HttpOnly")
        );
        assert_eq!(go("sid=1; path=/x").as_deref(), Some("sid=1; path=/app/x"));
        // Another domain, no attributes, and a value that looks like one: untouched.
        assert_eq!(go("sid=1; Domain=other.org"), None);
        assert_eq!(go("Path=/; x=1"), None);
        assert_eq!(go("sid=1"), None);
    }

    #[test]
    fn templates_render_variables_and_refuse_unknown_ones() {
        let t = Template::parse("for=$client_addr;host=${host};proto=$scheme $$5").unwrap();
        let v = Vars {
            client_addr: b"192.0.2.7",
            host: b"example.org\r\nX-Evil: 1",
            scheme: b"https",
            ..Default::default()
        };
        let mut out = Vec::new();
        t.render(&v, &mut out);
        assert_eq!(
            out,
            b"for=192.0.2.7;host=example.orgX-Evil: 1;proto=https $5".to_vec()
        );
        let e = Template::parse("$nope").unwrap_err();
        assert!(
            e.contains("unknown variable $nope") && e.contains("$client_addr"),
            "{e}"
        );
        assert!(Template::parse("${host").is_err());
        assert!(Template::parse("a\r\nb").is_err());
        let rules = FieldRules {
            set: vec![("x-route".into(), Template::parse("$route").unwrap())],
            add: vec![("x-a".into(), Template::parse("1").unwrap())],
            remove: vec!["server".into()],
        };
        assert!(rules.drops(b"Server") && rules.drops(b"X-Route") && !rules.drops(b"x-a"));
        let mut out = Vec::new();
        rules.write(
            &Vars {
                route: b"api",
                ..Default::default()
            },
            &mut out,
        );
        assert_eq!(out, b"x-route: api\r\nx-a: 1\r\n".to_vec());
    }
}
