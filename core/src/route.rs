//! Request routing: host and path prefix to a route action.
//!
//! Routes match a host (exact, or `*.suffix` for any subdomain, or any host) and a path prefix.
//! The most specific route wins: an exact host before a wildcard, a longer wildcard suffix before
//! a shorter one, any host last; within a host, the longest matching path prefix. Prefixes are
//! plain byte prefixes, as with nginx's `location /prefix`. Hosts compare case-insensitively and
//! without the port.

use std::collections::HashMap;

/// How a route matches the Host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Any,
    /// Lowercase host, no port.
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    /// Parses `example.com`, `*.example.com` or `*`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase();
        if s == "*" || s.is_empty() {
            return Some(Self::Any);
        }
        let valid = |h: &str| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        };
        if let Some(rest) = s.strip_prefix("*.") {
            return valid(rest).then(|| Self::Suffix(format!(".{rest}")));
        }
        valid(&s).then_some(Self::Exact(s))
    }
}

/// A compiled route table mapping (host, path) to a value `T` (the route's action index).
#[derive(Clone, Debug)]
pub struct Router<T> {
    exact: HashMap<String, Vec<(String, T)>>,
    /// Sorted by suffix length, longest first.
    suffix: Vec<(String, Vec<(String, T)>)>,
    any: Vec<(String, T)>,
}

impl<T: Clone> Router<T> {
    /// Builds the table. Routes with the same host and prefix: the first one given wins.
    pub fn new(routes: impl IntoIterator<Item = (HostMatch, String, T)>) -> Self {
        let mut exact: HashMap<String, Vec<(String, T)>> = HashMap::new();
        let mut suffix: Vec<(String, Vec<(String, T)>)> = Vec::new();
        let mut any = Vec::new();
        for (host, prefix, v) in routes {
            let list = match host {
                HostMatch::Any => &mut any,
                HostMatch::Exact(h) => exact.entry(h).or_default(),
                HostMatch::Suffix(s) => match suffix.iter().position(|(x, _)| *x == s) {
                    Some(i) => &mut suffix[i].1,
                    None => {
                        suffix.push((s, Vec::new()));
                        &mut suffix.last_mut().expect("just pushed").1
                    }
                },
            };
            list.push((prefix, v));
        }
        // Longest prefix first; the sort is stable so earlier routes win ties.
        let sort = |l: &mut Vec<(String, T)>| l.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        exact.values_mut().for_each(sort);
        suffix.iter_mut().for_each(|(_, l)| sort(l));
        sort(&mut any);
        suffix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Self { exact, suffix, any }
    }

    /// Finds the route for `host` (as sent: any case, may carry `:port`) and `path`.
    pub fn lookup(&self, host: &[u8], path: &[u8]) -> Option<&T> {
        let host = strip_port(host);
        let mut lower = [0u8; 256];
        let host = if host.len() <= lower.len() {
            for (d, s) in lower.iter_mut().zip(host) {
                *d = s.to_ascii_lowercase();
            }
            std::str::from_utf8(&lower[..host.len()]).unwrap_or("")
        } else {
            ""
        };
        let in_list = |l: &'_ [(String, T)]| -> Option<usize> {
            l.iter().position(|(p, _)| path.starts_with(p.as_bytes()))
        };
        if let Some(l) = self.exact.get(host) {
            if let Some(i) = in_list(l) {
                return Some(&l[i].1);
            }
        }
        for (s, l) in &self.suffix {
            if host.len() > s.len() && host.ends_with(s.as_str()) {
                if let Some(i) = in_list(l) {
                    return Some(&l[i].1);
                }
            }
        }
        in_list(&self.any).map(|i| &self.any[i].1)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        return match h.iter().position(|&b| b == b']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        let r = |h: &str, p: &str, v| (HostMatch::parse(h).unwrap(), p.to_string(), v);
        Router::new([
            r("*", "/", "default"),
            r("*", "/api/", "any-api"),
            r("example.com", "/", "ex-root"),
            r("example.com", "/static/", "ex-static"),
            r("*.example.com", "/", "wild"),
            r("*.eu.example.com", "/", "wild-eu"),
        ])
    }

    #[test]
    fn most_specific_wins() {
        let t = router();
        assert_eq!(t.lookup(b"example.com", b"/x"), Some(&"ex-root"));
        assert_eq!(
            t.lookup(b"EXAMPLE.com:8080", b"/static/a.css"),
            Some(&"ex-static")
        );
        assert_eq!(t.lookup(b"a.example.com", b"/"), Some(&"wild"));
        assert_eq!(t.lookup(b"a.eu.example.com", b"/"), Some(&"wild-eu"));
        assert_eq!(t.lookup(b"other.org", b"/api/v1"), Some(&"any-api"));
        assert_eq!(t.lookup(b"other.org", b"/apix"), Some(&"default"));
        assert_eq!(t.lookup(b"", b"/"), Some(&"default"));
        // A host with only a path-less wildcard match falls through to `*`.
        assert_eq!(t.lookup(b"example.com.evil", b"/"), Some(&"default"));
        assert_eq!(t.lookup(b"[::1]:80", b"/api/"), Some(&"any-api"));
    }

    #[test]
    fn no_match() {
        let t = Router::new([(HostMatch::parse("a.com").unwrap(), "/x".to_string(), 1)]);
        assert_eq!(t.lookup(b"a.com", b"/y"), None);
        assert_eq!(t.lookup(b"b.com", b"/x"), None);
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostMatch::parse("*.A.com"),
            Some(HostMatch::Suffix(".a.com".into()))
        );
        assert_eq!(HostMatch::parse("bad host"), None);
        assert_eq!(HostMatch::parse("*."), None);
    }
}
