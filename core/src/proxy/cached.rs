//! The exchange's cache steps: look a request up, answer it from a stored response, revalidate,
//! store what comes back, invalidate after unsafe requests, serve stale when the origin fails.
//! The rules themselves are in [`crate::cache::policy`].

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Instant;

use crate::cache::policy::{
    self, initial_age, not_modified, read_request, read_response, storable, usable, vary_value,
    Freshness, RequestMeta, ResponseMeta, Usable, Vary,
};
use crate::cache::store::Selector;
use crate::cache::{CacheRules, ClientNoCache, Entry, Epochs, Select, Shard, Tee};
use crate::config::Config;
use crate::http::answer::{self, Answer, CacheStatus, Content, Keep};
use crate::http::date::DateLine;
use crate::http::range::{self, Ranges};
use crate::http::rewrite::{stored_response, updated_response};
use crate::http::{parse_response, Header, Limits, Method, ResponseHead};

use super::{BodyFail, Close, Env, Error, Exchange, Finish, Phase, Written};
use crate::http::body::BodyError;

/// Stored bodies up to this size go out in one write with their head (copied); longer ones are
/// written from the store after it.
pub const INLINE_HIT: usize = 16 * 1024;

/// The worker's cache as an exchange sees it.
#[derive(Clone, Copy)]
pub struct CacheRef<'a> {
    pub shard: &'a RefCell<Shard>,
    pub epochs: &'a Epochs,
}

/// Which rules apply to the current request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Mode {
    #[default]
    Off,
    /// A reverse-proxy route's rules.
    Route(usize),
    /// The forward proxy's (the `[cache]` section's).
    Forward,
}

/// What the cache knows about the current request.
#[derive(Debug, Default)]
pub(super) struct CacheState {
    pub(super) mode: Mode,
    /// The key (absolute URI) of the request's target.
    pub(super) key: Vec<u8>,
    /// The invalidation counter of the key when the request was looked up.
    epoch: u64,
    req: RequestMeta,
    request_time: u64,
    /// The stored response being revalidated, or kept to serve stale if the origin fails.
    stale: Option<Rc<Entry>>,
    revalidating: bool,
    /// The response being stored once its body is in.
    store: Option<Pending>,
    /// `Cache-Status` for a forwarded response: `fwd=…` (empty: none).
    fwd: &'static str,
    /// Revalidation fields for the upstream request.
    pub(super) validators: Vec<u8>,
    /// Field lines of a revalidation's `304` meant for this client only (its `Set-Cookie`):
    /// they go on the answer, never into the shared entry.
    own_fields: Vec<u8>,
    /// This request fetches the key for the worker (others wait for it).
    filling: bool,
    /// This request waited for another's fetch already (it does not wait twice).
    waited: bool,
    /// A stale response was served under `stale-while-revalidate` and this request claimed
    /// its refresh: io runs it after the exchange (`take_refresh`).
    refresh: bool,
}

#[derive(Debug)]
struct Pending {
    head: Vec<u8>,
    meta: ResponseMeta,
    lifetime: u64,
    initial_age: u64,
    response_time: u64,
    vary: Vec<Selector>,
    max_object: u64,
    /// The worker's count of copies in flight, which the tee joins.
    collecting: std::rc::Rc<crate::cache::Collecting>,
}

impl CacheState {
    pub(super) fn reset(&mut self) {
        self.mode = Mode::Off;
        self.stale = None;
        self.revalidating = false;
        self.store = None;
        self.fwd = "";
        self.validators.clear();
        self.own_fields.clear();
        self.filling = false;
        self.waited = false;
        self.refresh = false;
    }

    pub(super) fn drop_store(&mut self) {
        self.store = None;
    }

    /// The tee for the response body relay, when the response is being stored.
    pub(super) fn tee(&self, expect: Option<u64>) -> Option<Tee> {
        self.store
            .as_ref()
            .map(|p| Tee::new(p.max_object, expect).counted_in(p.collecting.clone()))
    }
}

/// The rules of `mode` in `cfg`.
fn rules(mode: Mode, cfg: &Config) -> Option<&CacheRules> {
    match mode {
        Mode::Off => None,
        Mode::Route(i) => cfg.routes.get(i)?.cache.as_ref(),
        Mode::Forward => cfg.cache.as_ref().filter(|c| c.forward).map(|c| &c.rules),
    }
}

/// Whole seconds since the epoch, from io's clock (the `Date` line's second).
fn unix(env: &Env<'_>) -> u64 {
    env.date.date_line().secs()
}

impl Exchange {
    /// Sets the cache up for a request to `key`'s target under `mode`. Returns true when the
    /// request was answered from the cache (or refused with `only-if-cached`).
    pub(super) fn cache_request(
        &mut self,
        mode: Mode,
        buf: &[u8],
        body_follows: bool,
        env: &Env<'_>,
        now: Instant,
    ) -> bool {
        let Some(c) = env.cache else { return false };
        if rules(mode, env.cfg).is_none() {
            return false;
        }
        self.cache.mode = mode;
        if !matches!(self.req.method, Method::Get | Method::Head) {
            // Unsafe requests invalidate on success (see `cache_response`).
            self.cache.fwd = "fwd=method";
            return false;
        }
        let secs = unix(env);
        self.cache.req = read_request(buf, &self.headers);
        let client_no_cache =
            rules(mode, env.cfg).map_or(ClientNoCache::Honour, |r| r.client_no_cache);
        if client_no_cache == ClientNoCache::Ignore {
            let r = &mut self.cache.req;
            r.cc.no_cache = false;
            r.pragma_no_cache = false;
            r.cc.max_age = None;
        }
        self.cache.request_time = secs;
        self.cache.epoch = c.epochs.get(&self.cache.key);
        if body_follows || self.cache.req.other_conditional {
            // Left to the origin, and what comes back is not stored.
            self.cache.fwd = "fwd=bypass";
            self.cache.mode = Mode::Off;
            return false;
        }
        let private_ok = env
            .cfg
            .forward
            .private_destinations
            .private_allowed(self.client);
        let mut tmp = Vec::new();
        let headers = &self.headers;
        let found = c.shard.borrow_mut().select(&self.cache.key, c.epochs, |e| {
            (!e.private_dest || private_ok)
                && e.vary.iter().all(|(name, v)| {
                    vary_value(buf, headers, name, &mut tmp);
                    tmp[..] == v[..]
                })
        });
        let (id, e) = match found {
            Select::Found(id, e) => (id, e),
            miss => {
                c.shard.borrow_mut().count_miss();
                self.cache.fwd = if matches!(miss, Select::None) {
                    "fwd=uri-miss"
                } else {
                    "fwd=vary-miss"
                };
                if self.only_if_cached(env, now) {
                    return true;
                }
                if self.range_bypass() {
                    return false;
                }
                return self.claim_fill(c, buf, env, now);
            }
        };
        let f = Freshness {
            lifetime: e.lifetime,
            age: e.age(secs),
            no_cache: e.cc.no_cache,
            must_revalidate: e.cc.must_revalidate
                || e.cc.proxy_revalidate
                || e.cc.s_maxage.is_some(),
        };
        match usable(&f, &self.cache.req) {
            Usable::Fresh | Usable::Stale => {
                c.shard.borrow_mut().touch(id);
                self.serve_stored(e, None, env, now);
                true
            }
            Usable::Revalidate if self.may_serve_while_revalidating(&e, &f) => {
                // stale-while-revalidate (RFC 5861): the stale response now, and one refresh
                // in the background (the first request to see it claims the fetch).
                let mut shard = c.shard.borrow_mut();
                shard.touch(id);
                if shard.try_fill(&self.cache.key) {
                    self.cache.refresh = true;
                    self.req_head.clear();
                    self.req_head.extend_from_slice(buf);
                }
                drop(shard);
                self.serve_stored(e, Some("hit; detail=stale-while-revalidate"), env, now);
                true
            }
            Usable::Revalidate => {
                c.shard.borrow_mut().count_miss();
                if self.cache.req.cc.only_if_cached {
                    return self.only_if_cached(env, now);
                }
                if self.range_bypass() {
                    return false;
                }
                let fresh = f.lifetime > f.age && !f.no_cache;
                if fresh
                    && client_no_cache == ClientNoCache::Revalidate
                    && e.etag.is_none()
                    && e.last_modified.is_none()
                {
                    // The client wants a fresh copy of an entry that cannot be revalidated: it
                    // gets one, and the entry stays (a client does not replace it at will).
                    self.cache.fwd = "fwd=request";
                    self.cache.mode = Mode::Off;
                    return false;
                }
                self.cache.fwd = if self.cache.req.no_cache() {
                    "fwd=request"
                } else {
                    "fwd=stale"
                };
                self.cache.validators.clear();
                if let Some(etag) = &e.etag {
                    self.cache.validators.extend_from_slice(b"If-None-Match: ");
                    self.cache.validators.extend_from_slice(etag);
                    self.cache.validators.extend_from_slice(b"\r\n");
                }
                if let Some(lm) = e.last_modified {
                    let line = DateLine::at(lm);
                    self.cache
                        .validators
                        .extend_from_slice(b"If-Modified-Since: ");
                    self.cache
                        .validators
                        .extend_from_slice(&line.as_bytes()[6..DateLine::LEN - 2]);
                    self.cache.validators.extend_from_slice(b"\r\n");
                }
                self.cache.revalidating = !self.cache.validators.is_empty();
                self.cache.stale = Some(e);
                self.claim_fill(c, buf, env, now)
            }
        }
    }

    /// Request coalescing: the first miss on a key fetches it; later ones wait (once, bounded
    /// by `lock_timeout`) and then look again. True when this request waits.
    fn claim_fill(&mut self, c: CacheRef<'_>, buf: &[u8], env: &Env<'_>, now: Instant) -> bool {
        if self.req.method != Method::Get {
            return false;
        }
        if self.owned_fill.as_deref() == Some(&self.cache.key[..]) {
            self.owned_fill = None;
            self.cache.filling = true;
            return false;
        }
        if c.shard.borrow_mut().try_fill(&self.cache.key) {
            self.cache.filling = true;
            return false;
        }
        let Some(rules) = rules(self.cache.mode, env.cfg) else {
            return false;
        };
        if self.cache.waited {
            return false;
        }
        self.req_head.clear();
        self.req_head.extend_from_slice(buf);
        self.phase = Phase::WaitFill;
        self.timers
            .arm_for(super::Timer::CacheLock, rules.lock_timeout, now);
        true
    }

    /// The key `WaitFill` waits on.
    pub fn cache_key(&self) -> &[u8] {
        &self.cache.key
    }

    /// The fetch this request waited for ended (or the wait timed out): the request is handled
    /// again, from the cache if the fetch stored something, else from the origin.
    pub fn handle_fill_done(&mut self, env: &Env<'_>, now: Instant) {
        debug_assert_eq!(self.phase, Phase::WaitFill);
        self.timers.stop(super::Timer::CacheLock);
        let head = std::mem::take(&mut self.req_head);
        self.req = super::Request::default();
        self.cache.reset();
        self.cache.waited = true;
        self.phase = Phase::Head {
            began: true,
            read_first: false,
        };
        self.request(&head, head.len(), env, now);
        if self.req_head.is_empty() {
            self.req_head = head;
        }
    }

    /// Ends this request's claim on fetching its key, so that waiting requests go on. io calls
    /// it when an exchange ends; the exchange calls it as soon as it knows.
    pub fn release_fill(&mut self, env: &Env<'_>) {
        if std::mem::take(&mut self.cache.filling) {
            if let Some(c) = env.cache {
                c.shard.borrow_mut().end_fill(&self.cache.key);
            }
        }
        if let Some(key) = self.owned_fill.take() {
            if let Some(c) = env.cache {
                c.shard.borrow_mut().end_fill(&key);
            }
        }
    }

    /// Whether stale `e` may be served while it is refreshed: within its
    /// `stale-while-revalidate` window, nothing in the response forbidding stale use, and
    /// nothing in the request asking for more freshness.
    fn may_serve_while_revalidating(&self, e: &Entry, f: &Freshness) -> bool {
        let Some(window) = e.cc.stale_while_revalidate else {
            return false;
        };
        let r = &self.cache.req;
        !f.no_cache
            && !f.must_revalidate
            && !r.no_cache()
            && r.cc.max_age.is_none()
            && r.cc.min_fresh.is_none()
            && f.age > f.lifetime
            && f.age - f.lifetime <= window
            && (e.etag.is_some() || e.last_modified.is_some() || e.lifetime > 0)
    }

    /// The background refresh this exchange claimed, if any: a request head that revalidates
    /// the stored response (`Cache-Control: no-cache`, `Connection: close`) and the key whose
    /// fetch it holds. io runs it as an exchange with no client (`Exchange::own_fill`).
    pub fn take_refresh(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        if !std::mem::take(&mut self.cache.refresh) {
            return None;
        }
        let head = std::mem::take(&mut self.req_head);
        let mut lines = head.split(|&b| b == b'\n');
        let first = lines.next()?;
        let mut parts = first.splitn(3, |&b| b == b' ');
        let (_method, target) = (parts.next()?, parts.next()?);
        let mut out = Vec::with_capacity(head.len() + 64);
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        const DROP: [&[u8]; 12] = [
            b"cache-control",
            b"pragma",
            b"connection",
            b"keep-alive",
            b"content-length",
            b"transfer-encoding",
            b"expect",
            b"range",
            b"if-none-match",
            b"if-modified-since",
            b"upgrade",
            b"te",
        ];
        for line in lines {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            if line.len() <= 1 || DROP.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                continue;
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
        Some((out, self.cache.key.clone()))
    }

    /// This exchange is a background refresh holding the fetch of `key` (claimed by the request
    /// that served the stale response): it does not wait for itself, and gives the claim back
    /// when it ends.
    pub fn own_fill(&mut self, key: Vec<u8>) {
        self.owned_fill = Some(key);
    }

    /// A range request that the store cannot answer goes to the origin as it is, and the
    /// partial answer is not stored.
    fn range_bypass(&mut self) -> bool {
        if self.cache.req.range.is_none() {
            return false;
        }
        self.cache.fwd = "fwd=bypass";
        self.cache.mode = Mode::Off;
        true
    }

    /// `only-if-cached` with nothing usable stored: 504 (RFC 9111 §5.2.1.7).
    fn only_if_cached(&mut self, env: &Env<'_>, now: Instant) -> bool {
        if !self.cache.req.cc.only_if_cached {
            return false;
        }
        self.local_error(504, "not in the cache (only-if-cached)", env, now);
        true
    }

    /// Answers from stored response `e`: `304` when the client's conditions match it, else the
    /// stored response with its `Age`. `detail` goes into `Cache-Status` (why a stale response
    /// was served).
    fn serve_stored(&mut self, e: Rc<Entry>, fwd: Option<&str>, env: &Env<'_>, now: Instant) {
        let secs = unix(env);
        let age = e.age(secs);
        // Without Last-Modified, If-Modified-Since is judged against the time the response was
        // received (RFC 9111 §4.3.2).
        let modified = e.last_modified.or(Some(e.response_time));
        let not_mod = not_modified(&self.cache.req, e.etag.as_deref(), modified);
        let len = e.body.len() as u64;
        // Ranges of a complete stored 200 (RFC 9110 §14), unless If-Range says the client's
        // copy is another one (then the whole response).
        let ranges = match &self.cache.req.range {
            Some(r)
                if !not_mod
                    && e.status == 200
                    && self.req.method == Method::Get
                    && policy::if_range_holds(
                        &self.cache.req,
                        e.etag.as_deref(),
                        e.last_modified,
                    ) =>
            {
                range::parse(r, len)
            }
            _ => Ranges::Ignore,
        };
        let mut body: Option<std::ops::Range<usize>> = None;
        let mut multipart = Vec::new();
        let boundary;
        // RFC 9110 §15.4.5: a 304 carries the fields a 200 would have that describe it.
        const NOT_MODIFIED: &[&[u8]] = &[
            b"cache-control",
            b"content-location",
            b"date",
            b"etag",
            b"expires",
            b"vary",
            b"last-modified",
        ];
        let (status, keep, content) = match &ranges {
            _ if not_mod => (304, Keep::Only(NOT_MODIFIED), Content::Bodiless),
            Ranges::Ignore => {
                body = Some(0..e.body.len());
                (e.status, Keep::All, Content::Length(len))
            }
            Ranges::Unsatisfiable => (
                416,
                Keep::Only(&[b"date", b"etag"]),
                Content::Unsatisfiable { total: len },
            ),
            Ranges::Satisfiable(parts) if parts.len() == 1 => {
                let (a, b) = parts[0];
                body = Some(a as usize..b as usize);
                let content = Content::Range {
                    first: a,
                    last: b - 1,
                    total: len,
                };
                (206, Keep::All, content)
            }
            Ranges::Satisfiable(parts) => {
                // multipart/byteranges (RFC 9110 §14.6), built whole: several ranges of one
                // stored response are rare and small.
                boundary = format!("ringway-{:016x}", crate::cache::store::hash(&e.key) ^ len);
                let ctype = answer::fields(&e.head)
                    .find(|l| answer::field_name(l).eq_ignore_ascii_case(b"content-type"))
                    .map(|l| String::from_utf8_lossy(answer::field_value(l)).into_owned());
                for &(a, b) in parts {
                    let _ = write!(multipart, "\r\n--{boundary}\r\n");
                    if let Some(t) = &ctype {
                        let _ = write!(multipart, "Content-Type: {t}\r\n");
                    }
                    let _ = write!(
                        multipart,
                        "Content-Range: bytes {a}-{}/{len}\r\n\r\n",
                        b - 1
                    );
                    multipart.extend_from_slice(&e.body[a as usize..b as usize]);
                }
                let _ = write!(multipart, "\r\n--{boundary}--\r\n");
                let content = Content::Multipart {
                    boundary: &boundary,
                    len: multipart.len() as u64,
                };
                (206, Keep::AllBut(&[b"content-type"]), content)
            }
        };
        let own_fields = std::mem::take(&mut self.cache.own_fields);
        let a = Answer {
            stored: Some((&e.head, keep)),
            fields: &own_fields,
            age: Some(age),
            via: self.shows_via(env),
            cache_status: Some(CacheStatus {
                detail: fwd.unwrap_or("hit"),
                ttl: Some(e.lifetime as i64 - age as i64),
                stored: false,
            }),
            ..Answer::new(status, content, None)
        };
        let p = self.req.persist.unless(env.draining);
        self.out.clear();
        let head_only = self.req.method == Method::Head;
        a.write(p.header(), head_only, &mut self.out);
        self.cache.own_fields = own_fields;
        if !head_only {
            self.out.extend_from_slice(&multipart);
            self.record.response_body = multipart.len() as u64;
            if let Some(r) = body {
                self.record.response_body = r.len() as u64;
                if r.len() <= INLINE_HIT {
                    self.out.extend_from_slice(&e.body[r]);
                } else {
                    self.hit = Some((e.clone(), r));
                }
            }
        }
        self.record.status = status;
        self.record.response_head = Some(now);
        self.record.cache_hit = fwd.is_none();
        self.write_client(Written::Answer(p.finish(true)), now);
    }

    /// A final response arrived (`buf` holds its head, `rh` and `headers` parsed): invalidate
    /// after an unsafe request, refresh a revalidated entry with a `304`, serve stale on a
    /// failure status, or decide whether to store it. Returns true when the client was answered
    /// from the cache instead (io is then told to release or close the upstream connection).
    pub(super) fn cache_response(
        &mut self,
        buf: &[u8],
        rh: &ResponseHead,
        headers: &[Header],
        env: &Env<'_>,
        now: Instant,
    ) -> bool {
        let Some(c) = env.cache else { return false };
        let Some(rules) = rules(self.cache.mode, env.cfg) else {
            return false;
        };
        if policy::invalidates(self.req.method, rh.status) {
            c.epochs.bump(&self.cache.key);
            let mut other = Vec::new();
            for name in [&b"location"[..], b"content-location"] {
                if let Some(v) = crate::http::find_header(buf, headers, name) {
                    if policy::same_origin_key(&self.cache.key, v, &mut other) {
                        c.epochs.bump(&other);
                    }
                }
            }
            return false;
        }
        if !matches!(self.req.method, Method::Get | Method::Head) {
            return false;
        }
        let secs = unix(env);
        let meta = read_response(rh.status, buf, headers);
        if let Some(e) = self.cache.stale.clone() {
            if self.cache.revalidating && rh.status == 304 {
                // A 304 with a strong validator refreshes only a response with the same one.
                let matches = match (&meta.etag, &e.etag) {
                    (Some(new), Some(old)) if !new.starts_with(b"W/") => new[..] == old[..],
                    _ => true,
                };
                if !rules.store_set_cookie {
                    for h in headers {
                        if h.name.get(buf).eq_ignore_ascii_case(b"set-cookie") {
                            let o = &mut self.cache.own_fields;
                            o.extend_from_slice(b"Set-Cookie: ");
                            o.extend_from_slice(h.value.get(buf));
                            o.extend_from_slice(b"\r\n");
                        }
                    }
                }
                let fresh = if matches {
                    self.refreshed(&e, buf, headers, secs, rules)
                } else {
                    None
                };
                let served = match fresh {
                    Some(f) => {
                        let f = Rc::new(f);
                        c.shard.borrow_mut().insert_rc(f.clone());
                        f
                    }
                    None => e,
                };
                self.release_fill(env);
                self.serve_stored(served, Some("fwd=stale; fwd-status=304"), env, now);
                return true;
            }
            if self.stale_allowed(&e, Some(rh.status), rules, secs) {
                self.release_fill(env);
                self.serve_stored(e, Some("fwd=stale; detail=stale-if-error"), env, now);
                return true;
            }
        }
        match storable(self.req.method, &self.cache.req, &meta, secs, rules) {
            Ok(lifetime) => {
                let mut head = Vec::with_capacity(rh.len);
                stored_response(buf, rh, headers, &env.date.date_line(), &mut head);
                if meta.cc.qualified {
                    let cc = headers
                        .iter()
                        .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"cache-control"))
                        .map(|h| h.value.get(buf));
                    answer::strip_fields(&mut head, &crate::cache::control::unstored_fields(cc));
                }
                let mut vary = Vec::new();
                if let Vary::Fields(names) = &meta.vary {
                    let mut v = Vec::new();
                    for n in names {
                        vary_value(self.head_buf(), &self.headers, n, &mut v);
                        vary.push((n.clone().into_boxed_slice(), v.clone().into_boxed_slice()));
                    }
                }
                self.cache.store = Some(Pending {
                    head,
                    initial_age: initial_age(&meta, self.cache.request_time, secs),
                    meta,
                    lifetime,
                    response_time: secs,
                    vary,
                    max_object: rules.max_object,
                    collecting: c.shard.borrow().collecting(),
                });
            }
            Err(_) => {
                // A response that may not be stored replaces nothing, but what it says
                // about the stored one (e.g. no-store) makes that one unusable too.
                if self.cache.stale.is_some() && rh.status < 500 {
                    c.shard.borrow_mut().remove(&self.cache.key);
                }
            }
        }
        false
    }

    /// The request head the response answers (for `Vary`).
    fn head_buf(&self) -> &[u8] {
        &self.req_head
    }

    /// Keeps a copy of the request head while its response may be stored.
    pub(super) fn keep_request_head(&mut self, head: &[u8]) {
        if self.cache.mode == Mode::Off {
            return;
        }
        self.req_head.clear();
        self.req_head.extend_from_slice(head);
    }

    pub(super) fn cache_max_object(&self, env: &Env<'_>) -> u64 {
        rules(self.cache.mode, env.cfg).map_or(0, |r| r.max_object)
    }

    /// `Cache-Status` for a forwarded response (none when the request was not for the cache).
    pub(super) fn cache_status(&self) -> Option<CacheStatus<'static>> {
        if self.cache.mode == Mode::Off && self.cache.fwd.is_empty() {
            return None;
        }
        Some(CacheStatus {
            detail: if self.cache.fwd.is_empty() {
                "fwd=miss"
            } else {
                self.cache.fwd
            },
            ttl: None,
            stored: self.cache.store.is_some(),
        })
    }

    /// Stores the response whose body is `body` (the whole of it), as decided in
    /// `cache_response`.
    pub(super) fn cache_store(&mut self, body: Vec<u8>, env: &Env<'_>) {
        let _ = self.cache_store_rc(body, env);
    }

    /// [`cache_store`](Self::cache_store), returning the entry (whether the shard took it or
    /// not), or the body back when there was nothing to store.
    pub(super) fn cache_store_rc(
        &mut self,
        body: Vec<u8>,
        env: &Env<'_>,
    ) -> Result<Rc<Entry>, Vec<u8>> {
        self.release_fill(env);
        let (Some(c), Some(p)) = (env.cache, self.cache.store.take()) else {
            return Err(body);
        };
        if body.len() as u64 > p.max_object {
            return Err(body);
        }
        let e = Entry {
            key: self.cache.key.clone().into_boxed_slice(),
            vary: p.vary.into_boxed_slice(),
            head: p.head.into_boxed_slice(),
            body: body.into_boxed_slice(),
            status: p.meta.status,
            response_time: p.response_time,
            initial_age: p.initial_age,
            lifetime: p.lifetime,
            etag: p.meta.etag.map(Vec::into_boxed_slice),
            last_modified: p.meta.last_modified,
            cc: p.meta.cc,
            epoch: self.cache.epoch,
            private_dest: self
                .intent
                .dest()
                .and_then(super::intent::Dest::addr)
                .is_some_and(|a| crate::forward::is_private(a.ip())),
        };
        let e = Rc::new(e);
        c.shard.borrow_mut().insert_rc(e.clone());
        Ok(e)
    }

    /// The body `FetchBody` read whole from the upstream (`tee` holds it) ended: `Ok` with its
    /// length, and `leftover`, the bytes read past it. The body is stored and then written to
    /// the client from the store.
    pub fn handle_body_fetched(
        &mut self,
        r: Result<u64, BodyFail>,
        leftover: usize,
        tee: Option<Tee>,
        env: &Env<'_>,
        now: Instant,
    ) {
        debug_assert_eq!(self.phase, Phase::RelayResponse);
        let body = match (r, tee.and_then(Tee::into_body)) {
            (Ok(n), Some(body)) if body.len() as u64 == n => body,
            (r, _) => {
                // Nothing of the body reached the client; the head did: closing says it failed.
                self.release_fill(env);
                let e = match r {
                    Err(e) => e,
                    Ok(_) => BodyFail::Source(BodyError::Truncated),
                };
                let err = Error::ResponseBody(e);
                self.log_only(err.clone(), now);
                self.record.error = Some(err);
                self.finish(Finish::Close(Close::Now), now);
                return;
            }
        };
        self.record.response_body += body.len() as u64;
        let stored = if leftover == 0 {
            self.cache_store_rc(body, env)
        } else {
            self.release_fill(env);
            Err(body)
        };
        self.release_upstream(leftover);
        self.out.clear();
        match stored {
            Ok(e) => {
                let len = e.body.len();
                self.hit = Some((e, 0..len));
            }
            Err(body) => self.out = body,
        }
        self.write_client(Written::FetchedBody, now);
    }

    /// The tee that reads a whole stored-to-be body of `relay` ahead of the client, when the
    /// worker's copies in flight have room for it: the fill then ends at the origin's pace, not
    /// at the client's, and requests waiting for the key get the entry (a client that stops
    /// reading no longer holds them all up).
    pub(super) fn fetch_tee(&self, relay: crate::http::framing::BodyKind) -> Option<Tee> {
        let p = self.cache.store.as_ref()?;
        match relay {
            crate::http::framing::BodyKind::Length(n) if n > 0 && n <= p.max_object => {
                Tee::fetch(n, p.collecting.clone())
            }
            _ => None,
        }
    }

    /// Whether the response is being stored (its body must go through the tee).
    pub(super) fn cache_storing(&self) -> bool {
        self.cache.store.is_some()
    }

    /// The origin failed (no response, or `status`): serve the stale stored response if the
    /// response, the request or the operator allows it. True when it was served.
    pub(super) fn cache_on_failure(&mut self, timeout: bool, env: &Env<'_>, now: Instant) -> bool {
        let Some(e) = self.cache.stale.clone() else {
            return false;
        };
        let Some(rules) = rules(self.cache.mode, env.cfg) else {
            return false;
        };
        let by_rule = if timeout {
            rules.use_stale.timeout
        } else {
            rules.use_stale.error
        };
        let secs = unix(env);
        if by_rule || self.stale_allowed(&e, None, rules, secs) {
            if e.cc.must_revalidate || e.cc.proxy_revalidate || e.cc.s_maxage.is_some() {
                return false;
            }
            self.serve_stored(e, Some("fwd=stale; detail=stale-if-error"), env, now);
            return true;
        }
        false
    }

    /// May `e` be served stale now that the origin failed (with `status`, if it answered)?
    fn stale_allowed(&self, e: &Entry, status: Option<u16>, rules: &CacheRules, secs: u64) -> bool {
        if e.cc.no_cache || e.cc.must_revalidate || e.cc.proxy_revalidate || e.cc.s_maxage.is_some()
        {
            return false;
        }
        let failure = match status {
            None => true,
            Some(s) => matches!(s, 500 | 502 | 503 | 504) || rules.use_stale.statuses.contains(&s),
        };
        if !failure {
            return false;
        }
        if status.is_some_and(|s| rules.use_stale.statuses.contains(&s)) {
            return true;
        }
        let staleness = e.age(secs).saturating_sub(e.lifetime);
        let window =
            e.cc.stale_if_error
                .into_iter()
                .chain(self.cache.req.cc.stale_if_error)
                .max();
        window.is_some_and(|w| staleness <= w)
    }

    /// The entry `e` refreshed by a `304` (RFC 9111 §4.3.4): its fields updated, its age and
    /// freshness computed anew from the 304.
    fn refreshed(
        &self,
        e: &Entry,
        buf: &[u8],
        headers: &[Header],
        secs: u64,
        rules: &CacheRules,
    ) -> Option<Entry> {
        let mut head = Vec::with_capacity(e.head.len() + 128);
        let kept_out: &[&[u8]] = if rules.store_set_cookie {
            &[]
        } else {
            &[b"set-cookie"]
        };
        updated_response(&e.head, buf, headers, kept_out, &mut head);
        // Read the merged head back as a response to recompute what it says.
        let mut full = head.clone();
        full.extend_from_slice(b"\r\n");
        let mut hs = Vec::new();
        let limits = Limits {
            max_head: full.len() + 1,
            max_target: full.len() + 1,
            max_headers: 1000,
        };
        let rh = parse_response(&full, &mut hs, &limits).ok()?;
        let meta = read_response(rh.status, &full, &hs);
        if meta.cc.no_store || meta.cc.private || meta.cc.malformed {
            return None;
        }
        if meta.cc.qualified {
            let cc = hs
                .iter()
                .filter(|h| h.name.get(&full).eq_ignore_ascii_case(b"cache-control"))
                .map(|h| h.value.get(&full));
            answer::strip_fields(&mut head, &crate::cache::control::unstored_fields(cc));
        }
        let r304 = read_response(304, buf, headers);
        Some(Entry {
            key: e.key.clone(),
            vary: e.vary.clone(),
            head: head.into_boxed_slice(),
            body: e.body.clone(),
            status: e.status,
            response_time: secs,
            initial_age: initial_age(&r304, self.cache.request_time, secs),
            lifetime: policy::lifetime(&meta, secs, rules),
            etag: meta.etag.map(Vec::into_boxed_slice),
            last_modified: meta.last_modified,
            cc: meta.cc,
            epoch: self.cache.epoch,
            private_dest: e.private_dest,
        })
    }
}
