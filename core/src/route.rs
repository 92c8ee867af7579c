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
///
/// Lookup cost does not grow with the number of routes: the host is one hash lookup (exact),
/// then one per label (wildcards, longest suffix first), and the path is a walk down a byte trie
/// of the host's prefixes, as deep as the longest prefix that matches. With 10,000 routes, the
/// last one costs what the first does (see the `route-lookup` bench).
#[derive(Clone, Debug)]
pub struct Router<T> {
    exact: HashMap<String, PrefixTrie<T>>,
    /// Keyed by `.suffix`.
    suffix: HashMap<String, PrefixTrie<T>>,
    any: PrefixTrie<T>,
}

impl<T: Clone> Router<T> {
    /// Builds the table. Routes with the same host and prefix: the first one given wins.
    pub fn new(routes: impl IntoIterator<Item = (HostMatch, String, T)>) -> Self {
        let mut exact: HashMap<String, PrefixTrie<T>> = HashMap::new();
        let mut suffix: HashMap<String, PrefixTrie<T>> = HashMap::new();
        let mut any = PrefixTrie::default();
        for (host, prefix, v) in routes {
            let trie = match host {
                HostMatch::Any => &mut any,
                HostMatch::Exact(h) => exact.entry(h).or_default(),
                HostMatch::Suffix(s) => suffix.entry(s).or_default(),
            };
            trie.insert(prefix.as_bytes(), v);
        }
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
        if let Some(v) = self.exact.get(host).and_then(|t| t.longest(path)) {
            return Some(v);
        }
        if !self.suffix.is_empty() {
            // `.b.c`, then `.c`, for `a.b.c`: longest suffix first, never the whole host.
            for (i, _) in host.match_indices('.').filter(|&(i, _)| i > 0) {
                if let Some(v) = self.suffix.get(&host[i..]).and_then(|t| t.longest(path)) {
                    return Some(v);
                }
            }
        }
        self.any.longest(path)
    }
}

/// Byte prefixes to values; finds the longest prefix of a path that has a value.
#[derive(Clone, Debug)]
struct PrefixTrie<T> {
    nodes: Vec<Node<T>>,
}

#[derive(Clone, Debug)]
struct Node<T> {
    /// Sorted by byte.
    edges: Vec<(u8, u32)>,
    value: Option<T>,
}

impl<T> Default for PrefixTrie<T> {
    fn default() -> Self {
        Self {
            nodes: vec![Node {
                edges: Vec::new(),
                value: None,
            }],
        }
    }
}

impl<T> PrefixTrie<T> {
    /// Adds `prefix`; the first value given for a prefix stays.
    fn insert(&mut self, prefix: &[u8], v: T) {
        let mut n = 0usize;
        for &b in prefix {
            n = match self.nodes[n].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => self.nodes[n].edges[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes.push(Node {
                        edges: Vec::new(),
                        value: None,
                    });
                    self.nodes[n].edges.insert(i, (b, next as u32));
                    next
                }
            };
        }
        if self.nodes[n].value.is_none() {
            self.nodes[n].value = Some(v);
        }
    }

    fn longest(&self, path: &[u8]) -> Option<&T> {
        let mut n = 0usize;
        let mut best = self.nodes[0].value.as_ref();
        for &b in path {
            let edges = &self.nodes[n].edges;
            let Some(&(_, next)) = (if edges.len() <= 8 {
                edges.iter().find(|e| e.0 == b)
            } else {
                edges
                    .binary_search_by_key(&b, |e| e.0)
                    .ok()
                    .map(|i| &edges[i])
            }) else {
                break;
            };
            n = next as usize;
            if let Some(v) = &self.nodes[n].value {
                best = Some(v);
            }
        }
        best
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
pub fn strip_port(h: &[u8]) -> &[u8] {
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
    fn ten_thousand_routes_on_one_host() {
        let t = Router::new((0..10_000).map(|i| (HostMatch::Any, format!("/service-{i}/"), i)));
        assert_eq!(t.lookup(b"h", b"/service-9999/x"), Some(&9999));
        assert_eq!(t.lookup(b"h", b"/service-0/"), Some(&0));
        assert_eq!(t.lookup(b"h", b"/service-10000/"), None);
        assert_eq!(t.lookup(b"h", b"/service-1"), None);
    }

    #[test]
    fn first_route_wins_and_prefixes_are_bytes() {
        let r = |p: &str, v| (HostMatch::Any, p.to_string(), v);
        let t = Router::new([r("/api", 1), r("/api", 2), r("/", 3)]);
        assert_eq!(t.lookup(b"h", b"/apix"), Some(&1));
        assert_eq!(t.lookup(b"h", b"/ap"), Some(&3));
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
