//! The HTTP cache (RFC 9111), sans IO: what may be stored and for how long ([`policy`]),
//! `Cache-Control` ([`control`]), and one worker's storage ([`store`]). The exchange
//! (`proxy/`) asks these at each step; io owns one [`Shard`] per worker and writes hits.

pub mod body;
pub mod control;
pub mod policy;
pub mod step;
pub mod store;
pub mod table;

pub use body::{Body, Pages};
pub use step::CacheStep;
pub use store::{Entry, Epochs, Select, Shard, Stats};
pub use table::Table;

/// The cache as an exchange sees it: the box's table, and its worker's shard (what it stores
/// is counted there).
#[derive(Clone, Copy)]
pub struct CacheRef<'a> {
    pub shard: &'a std::cell::RefCell<Shard>,
    pub table: &'a Table,
}

use crate::http::body::Stage;

/// The caching rules of a route (`[cache]` and the route's own keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRules {
    /// Freshness for responses that carry no explicit lifetime, by status (nginx's
    /// `proxy_cache_valid`): `(statuses, seconds)`, the first that lists the status wins; an
    /// empty status list matches any.
    pub valid: Vec<(Vec<u16>, u64)>,
    /// `valid` applies even where the origin gave a lifetime (the operator asked by name).
    pub override_origin: bool,
    pub store_set_cookie: bool,
    /// Heuristic freshness (10% of the time since `Last-Modified`) for the statuses RFC 9110
    /// lists as heuristically cacheable.
    pub heuristic: bool,
    pub heuristic_max: u64,
    /// Responses without explicit freshness to requests that carried `Cookie` or
    /// `Authorization` are stored too (they are usually one user's page: off by default).
    pub heuristic_credentials: bool,
    /// What a client's `Cache-Control: no-cache` (or `Pragma: no-cache`, `max-age=0`) does.
    pub client_no_cache: ClientNoCache,
    /// When the origin fails, serve a stale stored response (nginx's `proxy_cache_use_stale`).
    pub use_stale: UseStale,
    /// Larger responses stream through without being stored.
    pub max_object: u64,
    /// Longest wait for another request's fetch of the same key (nginx's
    /// `proxy_cache_lock_timeout`); then a request fetches for itself.
    pub lock_timeout: std::time::Duration,
    /// The targeted fields this cache obeys (RFC 9213), lower case, in order: the first one a
    /// response carries with a valid value replaces its `Cache-Control` and `Expires` here.
    pub targeted: Vec<Vec<u8>>,
    /// Fields whose values tag a stored response for purging (lower case): `Cache-Tag`
    /// (Cloudflare's, comma-separated) and `Surrogate-Key` (Fastly's, space-separated).
    pub tag_fields: Vec<Vec<u8>>,
    /// The tag fields are not passed to clients (nor kept in what is stored).
    pub strip_tags: bool,
}

/// Most tags kept per response, and the longest tag: a response with more has the rest ignored.
pub const MAX_TAGS: usize = 128;
pub const MAX_TAG_LEN: usize = 1024;

/// The tags of a response: the values of `fields`, split at commas and whitespace, each once.
pub fn tags(buf: &[u8], headers: &[crate::http::Header], fields: &[Vec<u8>]) -> Vec<Box<[u8]>> {
    let mut out: Vec<Box<[u8]>> = Vec::new();
    for h in headers {
        if !fields
            .iter()
            .any(|f| h.name.get(buf).eq_ignore_ascii_case(f))
        {
            continue;
        }
        for t in h
            .value
            .get(buf)
            .split(|&b| b == b',' || b == b' ' || b == b'\t')
            .filter(|t| !t.is_empty() && t.len() <= MAX_TAG_LEN)
        {
            if out.len() == MAX_TAGS {
                return out;
            }
            if !out.iter().any(|o| &o[..] == t) {
                out.push(t.into());
            }
        }
    }
    out
}

impl Default for CacheRules {
    fn default() -> Self {
        Self {
            valid: Vec::new(),
            override_origin: false,
            store_set_cookie: false,
            heuristic: true,
            heuristic_max: 86_400,
            heuristic_credentials: false,
            client_no_cache: ClientNoCache::Revalidate,
            use_stale: UseStale::default(),
            max_object: 8 << 20,
            lock_timeout: std::time::Duration::from_secs(5),
            targeted: vec![b"cdn-cache-control".to_vec()],
            tag_fields: vec![b"cache-tag".to_vec(), b"surrogate-key".to_vec()],
            strip_tags: true,
        }
    }
}

impl CacheRules {
    /// The configured lifetime for `status`, if any.
    pub fn valid_for(&self, status: u16) -> Option<u64> {
        self.valid
            .iter()
            .find(|(s, _)| s.is_empty() || s.contains(&status))
            .map(|&(_, v)| v)
    }
}

/// Failures after which a stale response may be served (besides what `stale-if-error` allows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UseStale {
    /// Connecting, sending or reading failed.
    pub error: bool,
    pub timeout: bool,
    /// These statuses from the origin.
    pub statuses: Vec<u16>,
}

/// `[cache]`: the process's cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes for the whole process, split evenly between workers.
    pub size: u64,
    pub rules: CacheRules,
    /// Forward-proxy listeners cache too (keyed by absolute URI).
    pub forward: bool,
    /// The rules of the forward proxy's cache: `rules` without targeted fields (a cache in
    /// front of people is not the CDN `CDN-Cache-Control` speaks to).
    pub forward_rules: CacheRules,
}

/// One worker's shard of the configured cache size (`None`: no `[cache]`, nothing stored):
/// an even split, since each worker keeps its own shard.
pub fn shard_budget(cache: Option<&CacheConfig>, workers: usize) -> usize {
    cache.map_or(0, |c| {
        usize::try_from(c.size / workers.max(1) as u64).unwrap_or(usize::MAX)
    })
}

/// How a client's request for a fresh copy is honoured. A client that may replace a fresh
/// entry at will can poison it through any field the origin reads but the key does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientNoCache {
    /// The entry is revalidated with the origin (a conditional request: a `304` keeps it); an
    /// entry with no validator is left as it is and the client's copy fetched unstored.
    Revalidate,
    /// As RFC 9111 says: the origin is asked, and what it answers is stored.
    Honour,
    /// Not honoured: a fresh entry answers (nginx's default).
    Ignore,
}

impl ClientNoCache {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revalidate" => Some(Self::Revalidate),
            "honour" | "honor" => Some(Self::Honour),
            "ignore" => Some(Self::Ignore),
            _ => None,
        }
    }
}

/// The bytes of body copies being collected on a worker (tees in flight), and the most they
/// may hold together: copies count against memory as stored entries do, so many clients
/// reading large misses slowly cannot grow a worker past its cache size.
#[derive(Debug)]
pub struct Collecting {
    bytes: std::cell::Cell<usize>,
    limit: std::cell::Cell<usize>,
}

impl Collecting {
    pub fn new(limit: usize) -> Self {
        Self {
            bytes: std::cell::Cell::new(0),
            limit: std::cell::Cell::new(limit),
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.set(limit);
    }

    /// Bytes held by copies in flight now.
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }
}

/// The cache tee: a body stage that keeps a copy of what passes, up to `cap` bytes and while
/// the worker's copies in flight stay within their limit; past either it lets go of the copy
/// and only passes bytes on.
#[derive(Debug, Default)]
pub struct Tee {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
    /// Bytes reserved in `collecting` at once (a fetch); otherwise the buffer's capacity is
    /// counted as it grows.
    reserved: usize,
    collecting: Option<std::rc::Rc<Collecting>>,
}

impl Clone for Tee {
    fn clone(&self) -> Self {
        // A clone is not counted: only the tee in the relay holds memory for long.
        Self {
            buf: self.buf.clone(),
            cap: self.cap,
            over: self.over,
            reserved: 0,
            collecting: None,
        }
    }
}

impl Tee {
    pub fn new(cap: u64, expect: Option<u64>) -> Self {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        // Never allocated from a declared length beyond a first block: the copy grows as
        // bytes arrive (a response declaring 100 GB gets 64 KiB, not an abort).
        let first = expect
            .map_or(16 * 1024, |n| usize::try_from(n).unwrap_or(0))
            .min(cap)
            .min(64 * 1024);
        Self {
            buf: Vec::with_capacity(first),
            cap,
            over: false,
            reserved: 0,
            collecting: None,
        }
    }

    /// A tee that reads a whole body of `len` bytes ahead of the client (a fill), with `len`
    /// reserved in `c` at once; it never lets go of its copy. `None` when the reservation does
    /// not fit.
    pub fn fetch(len: u64, c: std::rc::Rc<Collecting>) -> Option<Self> {
        let n = usize::try_from(len).ok()?;
        if c.bytes.get().saturating_add(n) > c.limit.get() {
            return None;
        }
        c.bytes.set(c.bytes.get() + n);
        Some(Self {
            buf: Vec::with_capacity(n.min(64 * 1024)),
            cap: n,
            over: false,
            reserved: n,
            collecting: Some(c),
        })
    }

    /// Counts this tee's copy in `c` (see [`Collecting`]).
    pub fn counted_in(mut self, c: std::rc::Rc<Collecting>) -> Self {
        c.bytes.set(c.bytes.get() + self.buf.capacity());
        let over = c.bytes.get() > c.limit.get();
        self.collecting = Some(c);
        if over {
            self.give_up();
        }
        self
    }

    /// The copy, unless the body outgrew the cap.
    pub fn into_body(mut self) -> Option<Vec<u8>> {
        let over = self.over;
        if let Some(c) = &self.collecting {
            c.bytes
                .set(c.bytes.get().saturating_sub(self.buf.capacity()));
        }
        let buf = std::mem::take(&mut self.buf);
        (!over).then_some(buf)
    }

    fn give_up(&mut self) {
        self.over = true;
        let held = self.buf.capacity();
        self.buf = Vec::new();
        if let Some(c) = &self.collecting {
            c.bytes.set(c.bytes.get().saturating_sub(held));
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if let Some(c) = &self.collecting {
            c.bytes
                .set(c.bytes.get().saturating_sub(self.buf.capacity()));
        }
    }
}

impl Tee {
    /// Keeps a copy of `payload` (while under the cap), passing nothing on.
    pub fn keep(&mut self, payload: &[u8]) {
        if !self.over {
            if self.buf.len() + payload.len() > self.cap {
                self.give_up();
            } else {
                let before = self.buf.capacity();
                self.buf.extend_from_slice(payload);
                if let (Some(c), 0) = (&self.collecting, self.reserved) {
                    let grown = self.buf.capacity() - before;
                    c.bytes.set(c.bytes.get() + grown);
                    if c.bytes.get() > c.limit.get() {
                        self.give_up();
                    }
                }
            }
        }
    }
}

impl Stage for Tee {
    fn data(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        self.keep(payload);
        out.extend_from_slice(payload);
    }

    fn end(&mut self, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tee_keeps_a_copy_up_to_its_cap() {
        let mut t = Tee::new(10, None);
        let mut out = Vec::new();
        t.data(b"hello", &mut out);
        t.data(b"world", &mut out);
        assert_eq!(out, b"helloworld");
        assert_eq!(t.clone().into_body().unwrap(), b"helloworld");
        t.data(b"!", &mut out);
        assert_eq!(out, b"helloworld!");
        assert_eq!(t.into_body(), None);
    }

    #[test]
    fn copies_in_flight_are_counted_and_bounded() {
        let c = std::rc::Rc::new(Collecting::new(100 * 1024));
        let mut out = Vec::new();
        let mut a = Tee::new(1 << 20, Some(1 << 20)).counted_in(c.clone());
        assert_eq!(
            c.bytes(),
            64 * 1024,
            "a first block, not the declared length"
        );
        // A second large copy would pass the limit: it is not kept, its bytes still pass.
        let mut b = Tee::new(1 << 20, Some(1 << 20)).counted_in(c.clone());
        assert_eq!(c.bytes(), 64 * 1024);
        b.data(b"xyz", &mut out);
        assert_eq!(out, b"xyz");
        assert!(b.into_body().is_none());
        a.data(&[7; 40 * 1024], &mut out);
        let mut d = Tee::new(1 << 20, None).counted_in(c.clone());
        d.data(&[1; 200 * 1024], &mut out);
        assert!(d.into_body().is_none(), "grew past the limit");
        assert_eq!(a.into_body().unwrap().len(), 40 * 1024);
        assert_eq!(c.bytes(), 0, "every copy given back");
        // A fetch reserves its whole length at once, or does not start.
        let f = Tee::fetch(60 * 1024, c.clone()).unwrap();
        assert_eq!(c.bytes(), 60 * 1024);
        assert!(Tee::fetch(60 * 1024, c.clone()).is_none());
        drop(f);
        assert_eq!(c.bytes(), 0);
    }
}
