//! The cache's part of one exchange, as a sub-machine: it looks a request up, decides what a
//! response does to the store (invalidate, refresh with a `304`, serve stale, store), keeps the
//! response it is storing, and holds the request's claim on fetching its key. Each step takes
//! the worker's shard, the time and the request's values and returns a verdict; the exchange
//! turns verdicts into actions and answers, and never reaches into this state.
//!
//! The rules themselves are in [`policy`](super::policy); the claim on a key (request
//! coalescing) is the box table's (`try_fill`, `end_fill`). A claim is given back through the
//! exchange's action stream ([`CacheStep::release`] hands the key over), so io wakes the
//! requests waiting for it at once.

use std::io::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::policy::{
    self, initial_age, not_modified, read_request, read_response, storable, usable, vary_value,
    Freshness, RequestMeta, ResponseMeta, Usable, Vary,
};
use super::store::Selector;
use super::{CacheRef, CacheRules, ClientNoCache, Entry, Select, Tee};
use crate::http::answer::{self, CacheStatus, Keep};
use crate::http::date::DateLine;
use crate::http::framing::BodyKind;
use crate::http::range::{self, Ranges};
use crate::http::rewrite::{stored_response, updated_response};
use crate::http::{parse_response, Header, Limits, Method, ResponseHead};

/// Which rules apply to the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// A reverse-proxy route's.
    Route(usize),
    /// The forward proxy's (the `[cache]` section's).
    Forward,
}

/// Where the rules come from (the configuration, which knows its routes).
pub trait RulesSource {
    fn rules(&self, r: Rules) -> Option<&CacheRules>;
}

impl Rules {
    fn of(self, src: &dyn RulesSource) -> Option<&CacheRules> {
        src.rules(self)
    }
}

/// Where the request stands with the cache.
#[derive(Debug, Default)]
enum CachePhase {
    /// Not for the cache.
    #[default]
    Off,
    /// Under `rules`, not answered from the store; what comes back may be stored, may
    /// invalidate, or (with `stale`) may refresh or stand in for a stored response.
    Forwarded { rules: Rules, stale: Option<Stale> },
    /// The response is stored once its body is in.
    Storing { rules: Rules, pending: Box<Pending> },
    /// Under `rules`, but nothing that comes back is stored (an unsafe method invalidates; a
    /// bypass only reports).
    Passing { rules: Rules },
}

/// A stored response kept while the origin is asked.
#[derive(Debug)]
struct Stale {
    entry: Arc<Entry>,
    /// Its validators went upstream: a `304` refreshes it.
    revalidating: bool,
}

/// A response decided storable, waiting for its body.
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
    collecting: Rc<super::Collecting>,
    tags: Vec<Box<[u8]>>,
}

/// The request's claim on fetching its key for the worker.
#[derive(Debug, Default, PartialEq, Eq)]
enum Claim {
    #[default]
    None,
    /// This request fetches the key; others wait for it.
    Held,
}

/// Whether the request already waited for another's fetch (it does not wait twice).
#[derive(Debug, Default, PartialEq, Eq)]
enum Waited {
    #[default]
    No,
    Once,
}

/// What the exchange reads from the worker for a step.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub rules: &'a dyn RulesSource,
    pub cache: CacheRef<'a>,
    /// Whole seconds since the epoch (the `Date` line's second).
    pub secs: u64,
}

/// The request as the lookup sees it.
#[derive(Clone, Copy)]
pub struct Asked<'a> {
    pub method: Method,
    /// The request head and its fields.
    pub head: &'a [u8],
    pub headers: &'a [Header],
    /// A body follows the head.
    pub body: bool,
    /// The client may be served responses from private destinations.
    pub private_ok: bool,
}

/// A stored response to answer with, and why.
#[derive(Clone, Debug)]
pub struct Served {
    pub entry: Arc<Entry>,
    /// `Cache-Status` detail: `None` for a plain hit, else why a stored response stands in for
    /// the origin's (`fwd=stale; fwd-status=304`, `hit; detail=stale-while-revalidate`, …).
    pub detail: Option<&'static str>,
}

/// The verdict of a lookup.
#[derive(Debug)]
pub enum Lookup {
    /// Answer from the store.
    Serve(Served),
    /// `only-if-cached` with nothing usable: 504.
    OnlyIfCached,
    /// Another request is fetching the key: wait (at most this long) for it, then call
    /// [`CacheStep::wait_over`] and handle the request again.
    Wait(Duration),
    /// To the origin (with validators, when [`CacheStep::validators`] has some).
    Forward,
}

/// What a stored response is answered as: whole, `304`, `206`, `416` or multipart.
#[derive(Debug)]
pub struct StoredAnswer {
    pub status: u16,
    pub keep: Keep<'static>,
    pub content: Content,
    /// The part of the stored body that follows the head.
    pub body: Option<std::ops::Range<usize>>,
    pub age: u64,
}

/// [`answer::Content`] with owned parts (the multipart body and its boundary).
#[derive(Debug)]
pub enum Content {
    Bodiless,
    Length(u64),
    Range { first: u64, last: u64, total: u64 },
    Unsatisfiable { total: u64 },
    Multipart { boundary: String, body: Vec<u8> },
}

impl Content {
    pub fn as_answer(&self) -> answer::Content<'_> {
        match self {
            Self::Bodiless => answer::Content::Bodiless,
            Self::Length(n) => answer::Content::Length(*n),
            Self::Range { first, last, total } => answer::Content::Range {
                first: *first,
                last: *last,
                total: *total,
            },
            Self::Unsatisfiable { total } => answer::Content::Unsatisfiable { total: *total },
            Self::Multipart { boundary, body } => answer::Content::Multipart {
                boundary,
                len: body.len() as u64,
            },
        }
    }
}

/// The cache's state for one request; see the module documentation.
#[derive(Debug, Default)]
pub struct CacheStep {
    phase: CachePhase,
    /// The key (space and absolute URI) of the request's target.
    key: Vec<u8>,
    /// The invalidation counter of the key when the request was looked up.
    epoch: u64,
    req: RequestMeta,
    request_time: u64,
    /// `Cache-Status` for a forwarded response (empty: none).
    fwd: &'static str,
    /// Revalidation fields for the upstream request.
    validators: Vec<u8>,
    /// Field lines of a revalidation's `304` meant for this client only (its `Set-Cookie`):
    /// they go on the answer, never into the shared entry.
    own_fields: Vec<u8>,
    claim: Claim,
    waited: Waited,
    /// A copy of the request head: for `Vary` when storing, to handle the request again after
    /// a wait, and for a background refresh.
    head: Vec<u8>,
    /// A stale response was served under `stale-while-revalidate` and this request claimed its
    /// refresh.
    refresh: Claim,
    /// This exchange is a background refresh holding the fetch of this key.
    owned: Option<Vec<u8>>,
}

impl CacheStep {
    /// Ready for the connection's next request (a background refresh's claim stays).
    pub fn reset(&mut self) {
        debug_assert_eq!(
            self.claim,
            Claim::None,
            "a claim is given back before the next"
        );
        self.phase = CachePhase::Off;
        self.fwd = "";
        self.validators.clear();
        self.own_fields.clear();
        self.claim = Claim::None;
        self.waited = Waited::No;
        self.refresh = Claim::None;
        if self.head.capacity() > 4 * 1024 {
            self.head = Vec::new();
        }
    }

    /// The key, for the exchange to write ([`policy::key`]) before [`lookup`](Self::lookup).
    pub fn key_mut(&mut self) -> &mut Vec<u8> {
        &mut self.key
    }

    /// The key a wait is for.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Revalidation fields for the upstream request, when the stored response is revalidated.
    pub fn validators(&self) -> Option<&[u8]> {
        (!self.validators.is_empty()).then_some(&self.validators[..])
    }

    /// Fields of a revalidation's `304` for this client alone.
    pub fn own_fields(&self) -> &[u8] {
        &self.own_fields
    }

    /// The request's own cache directives (for stored answers).
    pub fn request(&self) -> &RequestMeta {
        &self.req
    }

    /// This exchange is a background refresh holding the fetch of `key` (claimed by the request
    /// that served the stale response): it does not wait for itself, and gives the claim back
    /// when it ends.
    pub fn own_fill(&mut self, key: Vec<u8>) {
        self.owned = Some(key);
    }

    /// Whether this exchange is a background refresh.
    pub fn is_refresh(&self) -> bool {
        self.owned.is_some()
    }

    /// Looks the request up under `rules`.
    pub fn lookup(&mut self, ctx: Ctx<'_>, rules: Rules, r: Asked<'_>) -> Lookup {
        let Some(cr) = rules.of(ctx.rules) else {
            return Lookup::Forward;
        };
        if !matches!(r.method, Method::Get | Method::Head) {
            // Unsafe requests invalidate on success (see `on_response`).
            self.fwd = "fwd=method";
            self.phase = CachePhase::Passing { rules };
            return Lookup::Forward;
        }
        self.req = read_request(r.head, r.headers);
        let client_no_cache = cr.client_no_cache;
        if client_no_cache == ClientNoCache::Ignore {
            let q = &mut self.req;
            q.cc.no_cache = false;
            q.pragma_no_cache = false;
            q.cc.max_age = None;
        }
        self.request_time = ctx.secs;
        self.epoch = ctx.cache.table.epochs.get(&self.key);
        if r.body || self.req.other_conditional {
            // Left to the origin, and what comes back is not stored.
            self.fwd = "fwd=bypass";
            return Lookup::Forward;
        }
        self.phase = CachePhase::Forwarded { rules, stale: None };
        let mut tmp = Vec::new();
        let found = ctx.cache.table.select(&self.key, |e| {
            (!e.private_dest || r.private_ok)
                && e.vary.iter().all(|(name, v)| {
                    vary_value(r.head, r.headers, name, &mut tmp);
                    tmp[..] == v[..]
                })
        });
        match found {
            Select::Found(e) => self.found(ctx, cr, r, e),
            miss => {
                ctx.cache.shard.borrow_mut().count_miss();
                self.fwd = if matches!(miss, Select::None) {
                    "fwd=uri-miss"
                } else {
                    "fwd=vary-miss"
                };
                self.miss(ctx, cr, r)
            }
        }
    }

    /// A stored response `e` (entry `id`) matches the request: served fresh, served stale
    /// while it is refreshed, or revalidated first.
    fn found(&mut self, ctx: Ctx<'_>, cr: &CacheRules, r: Asked<'_>, e: Arc<Entry>) -> Lookup {
        let f = Freshness {
            lifetime: e.lifetime_now(),
            age: e.age(ctx.secs),
            no_cache: e.cc.no_cache,
            must_revalidate: e.cc.must_revalidate
                || e.cc.proxy_revalidate
                || e.cc.s_maxage.is_some(),
        };
        match usable(&f, &self.req) {
            Usable::Fresh | Usable::Stale => {
                e.state.touch();
                ctx.cache.shard.borrow_mut().count_hit();
                Lookup::Serve(Served {
                    entry: e,
                    detail: None,
                })
            }
            Usable::Revalidate if self.may_serve_while_revalidating(&e, &f) => {
                // stale-while-revalidate (RFC 5861): the stale response now, and one refresh
                // in the background (the first request to see it claims the fetch).
                e.state.touch();
                ctx.cache.shard.borrow_mut().count_hit();
                if ctx.cache.table.try_fill(&self.key) {
                    self.refresh = Claim::Held;
                    self.head.clear();
                    self.head.extend_from_slice(r.head);
                }
                Lookup::Serve(Served {
                    entry: e,
                    detail: Some("hit; detail=stale-while-revalidate"),
                })
            }
            Usable::Revalidate => {
                ctx.cache.shard.borrow_mut().count_miss();
                self.revalidate(ctx, cr, e, &f, r)
            }
        }
    }

    /// A stored response that must be revalidated first.
    fn revalidate(
        &mut self,
        ctx: Ctx<'_>,
        cr: &CacheRules,
        e: Arc<Entry>,
        f: &Freshness,
        r: Asked<'_>,
    ) -> Lookup {
        if self.req.cc.only_if_cached {
            return Lookup::OnlyIfCached;
        }
        if self.range_bypass() {
            return Lookup::Forward;
        }
        let fresh = f.lifetime > f.age && !f.no_cache;
        if fresh
            && cr.client_no_cache == ClientNoCache::Revalidate
            && e.etag.is_none()
            && e.last_modified.is_none()
        {
            // The client wants a fresh copy of an entry that cannot be revalidated: it gets
            // one, and the entry stays (a client does not replace it at will).
            self.fwd = "fwd=request";
            self.phase = CachePhase::Off;
            return Lookup::Forward;
        }
        self.fwd = if self.req.no_cache() {
            "fwd=request"
        } else {
            "fwd=stale"
        };
        self.validators.clear();
        if let Some(etag) = &e.etag {
            self.validators.extend_from_slice(b"If-None-Match: ");
            self.validators.extend_from_slice(etag);
            self.validators.extend_from_slice(b"\r\n");
        }
        if let Some(lm) = e.last_modified {
            let line = DateLine::at(lm);
            self.validators.extend_from_slice(b"If-Modified-Since: ");
            self.validators
                .extend_from_slice(&line.as_bytes()[6..DateLine::LEN - 2]);
            self.validators.extend_from_slice(b"\r\n");
        }
        if let CachePhase::Forwarded { stale, .. } = &mut self.phase {
            *stale = Some(Stale {
                entry: e,
                revalidating: !self.validators.is_empty(),
            });
        }
        self.claim_fill(ctx, cr, r)
    }

    /// Nothing usable stored.
    fn miss(&mut self, ctx: Ctx<'_>, cr: &CacheRules, r: Asked<'_>) -> Lookup {
        if self.req.cc.only_if_cached {
            return Lookup::OnlyIfCached;
        }
        if self.range_bypass() {
            return Lookup::Forward;
        }
        self.claim_fill(ctx, cr, r)
    }

    /// Request coalescing: the first miss on a key fetches it; later ones wait (once, bounded
    /// by `lock_timeout`) and then look again.
    fn claim_fill(&mut self, ctx: Ctx<'_>, cr: &CacheRules, r: Asked<'_>) -> Lookup {
        if r.method != Method::Get {
            return Lookup::Forward;
        }
        if self.owned.as_deref() == Some(&self.key[..]) {
            self.owned = None;
            self.claim = Claim::Held;
            return Lookup::Forward;
        }
        if ctx.cache.table.try_fill(&self.key) {
            self.claim = Claim::Held;
            return Lookup::Forward;
        }
        if self.waited == Waited::Once {
            return Lookup::Forward;
        }
        self.head.clear();
        self.head.extend_from_slice(r.head);
        ctx.cache.shard.borrow_mut().count_wait();
        Lookup::Wait(cr.lock_timeout)
    }

    /// The wait for another's fetch is over: returns the request head to handle again (from
    /// the cache if the fetch stored something, else from the origin, without waiting twice).
    pub fn wait_over(&mut self) -> Vec<u8> {
        let head = std::mem::take(&mut self.head);
        self.reset();
        self.waited = Waited::Once;
        head
    }

    /// Gives back the head `wait_over` handed out, for its buffer.
    pub fn return_head(&mut self, head: Vec<u8>) {
        if self.head.is_empty() {
            self.head = head;
        }
    }

    /// Ends this request's claim on fetching its key (as soon as it is known that nothing
    /// will be stored, or once it was): the key, for the exchange to hand to io.
    pub fn release(&mut self) -> Option<Vec<u8>> {
        if std::mem::take(&mut self.claim) == Claim::Held {
            return Some(self.key.clone());
        }
        // A background refresh that never looked its key up still holds it.
        self.owned.take()
    }

    /// The background refresh this request claimed, if any: a request head that revalidates
    /// the stored response (`Cache-Control: no-cache`, `Connection: close`) and the key whose
    /// fetch it holds. io runs it as an exchange with no client ([`own_fill`](Self::own_fill)).
    pub fn take_refresh(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        if std::mem::take(&mut self.refresh) != Claim::Held {
            return None;
        }
        let head = std::mem::take(&mut self.head);
        Some((refresh_head(&head)?, self.key.clone()))
    }

    /// Whether stale `e` may be served while it is refreshed: within its
    /// `stale-while-revalidate` window, nothing in the response forbidding stale use, and
    /// nothing in the request asking for more freshness.
    fn may_serve_while_revalidating(&self, e: &Entry, f: &Freshness) -> bool {
        let Some(window) = e.cc.stale_while_revalidate else {
            return false;
        };
        let r = &self.req;
        !f.no_cache
            && !f.must_revalidate
            && !r.no_cache()
            && r.cc.max_age.is_none()
            && r.cc.min_fresh.is_none()
            // Stale from the second its age reaches its lifetime (RFC 9111 §4.2).
            && f.age >= f.lifetime
            && f.age - f.lifetime <= window
            // Once fresh (a soft purge ends that early), or revalidatable.
            && (e.etag.is_some() || e.last_modified.is_some() || e.lifetime > 0)
    }

    /// A range request that the store cannot answer goes to the origin as it is, and the
    /// partial answer is not stored.
    fn range_bypass(&mut self) -> bool {
        if self.req.range.is_none() {
            return false;
        }
        self.fwd = "fwd=bypass";
        if let CachePhase::Forwarded { rules, .. } = self.phase {
            self.phase = CachePhase::Passing { rules };
        }
        true
    }

    /// Keeps a copy of the request head while its response may be stored (for `Vary`).
    pub fn keep_head(&mut self, head: &[u8]) {
        if matches!(self.phase, CachePhase::Forwarded { .. }) {
            self.head.clear();
            self.head.extend_from_slice(head);
        }
    }

    /// A final response arrived (`buf` holds its head, `rh` and `headers` parsed): invalidate
    /// after an unsafe request, refresh a revalidated entry with a `304`, serve stale on a
    /// failure status, or decide whether to store it. `Some` when the client is answered from
    /// the store instead. `asked`: the request's fields, as spans into the head
    /// [`keep_head`](Self::keep_head) kept (for `Vary`).
    pub fn on_response(
        &mut self,
        ctx: Ctx<'_>,
        method: Method,
        response: (&[u8], &ResponseHead, &[Header]),
        asked: &[Header],
    ) -> Option<Served> {
        let (buf, rh, headers) = response;
        let (rules, stale) = match std::mem::take(&mut self.phase) {
            CachePhase::Forwarded { rules, stale } => (rules, stale),
            CachePhase::Passing { rules } => (rules, None),
            p => {
                self.phase = p;
                return None;
            }
        };
        let cr = rules.of(ctx.rules)?;
        if policy::invalidates(method, rh.status) {
            self.invalidate(ctx, buf, headers);
            return None;
        }
        if !matches!(method, Method::Get | Method::Head) || self.fwd == "fwd=bypass" {
            return None;
        }
        let meta = read_response(rh.status, buf, headers, &cr.targeted);
        if let Some(s) = &stale {
            if s.revalidating && rh.status == 304 {
                return Some(self.refreshed_by_304(ctx, cr, &s.entry, &meta, buf, headers));
            }
            if self.stale_allowed(&s.entry, Some(rh.status), cr, ctx.secs) {
                return Some(Served {
                    entry: s.entry.clone(),
                    detail: Some("fwd=stale; detail=stale-if-error"),
                });
            }
        }
        if method == Method::Head {
            // RFC 9111 §4.3.5: a 200 to HEAD freshens the stored GET it describes (the same
            // validators, and length when it says one), as a 304 would; one that describes
            // another response makes the stored one unusable.
            if let (Some(s), 200) = (&stale, rh.status) {
                let length = crate::http::find_header(buf, headers, b"content-length")
                    .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
                let freshened = head_describes(&s.entry, &meta, length)
                    .then(|| self.refreshed(&s.entry, buf, headers, ctx.secs, cr))
                    .flatten();
                let mut shard = ctx.cache.shard.borrow_mut();
                match freshened {
                    Some(f) => {
                        shard.insert_rc(Arc::new(f));
                    }
                    None => {
                        shard.remove(&self.key);
                    }
                }
            }
            self.phase = CachePhase::Passing { rules };
            return None;
        }
        match storable(method, &self.req, &meta, ctx.secs, cr) {
            Ok(lifetime) => {
                let pending = self.pending(ctx, cr, (meta, lifetime), (buf, rh, headers), asked);
                self.phase = CachePhase::Storing {
                    rules,
                    pending: Box::new(pending),
                };
            }
            Err(_) => {
                // A response that may not be stored replaces nothing, but what it says
                // about the stored one (e.g. no-store) makes that one unusable too.
                if stale.is_some() && rh.status < 500 {
                    ctx.cache.shard.borrow_mut().remove(&self.key);
                }
                self.phase = CachePhase::Passing { rules };
            }
        }
        None
    }

    /// After a successful unsafe request: the target, and what `Location` and
    /// `Content-Location` name on the same origin, are stale everywhere.
    fn invalidate(&self, ctx: Ctx<'_>, buf: &[u8], headers: &[Header]) {
        ctx.cache.table.epochs.bump(&self.key);
        let mut other = Vec::new();
        for name in [&b"location"[..], b"content-location"] {
            if let Some(v) = crate::http::find_header(buf, headers, name) {
                if policy::same_origin_key(&self.key, v, &mut other) {
                    ctx.cache.table.epochs.bump(&other);
                }
            }
        }
    }

    /// A revalidation's `304`: the stored response refreshed (when the validator matches) and
    /// served; the `304`'s `Set-Cookie` goes to this client alone.
    fn refreshed_by_304(
        &mut self,
        ctx: Ctx<'_>,
        cr: &CacheRules,
        e: &Arc<Entry>,
        meta: &ResponseMeta,
        buf: &[u8],
        headers: &[Header],
    ) -> Served {
        // A 304 with a strong validator refreshes only a response with the same one.
        let matches = match (&meta.etag, &e.etag) {
            (Some(new), Some(old)) if !new.starts_with(b"W/") => new[..] == old[..],
            _ => true,
        };
        if !cr.store_set_cookie {
            for h in headers {
                if h.name.get(buf).eq_ignore_ascii_case(b"set-cookie") {
                    let o = &mut self.own_fields;
                    o.extend_from_slice(b"Set-Cookie: ");
                    o.extend_from_slice(h.value.get(buf));
                    o.extend_from_slice(b"\r\n");
                }
            }
        }
        let fresh = if matches {
            self.refreshed(e, buf, headers, ctx.secs, cr)
        } else {
            None
        };
        let entry = match fresh {
            Some(f) => {
                let f = Arc::new(f);
                ctx.cache.shard.borrow_mut().insert_rc(f.clone());
                f
            }
            None => e.clone(),
        };
        Served {
            entry,
            detail: Some("fwd=stale; fwd-status=304"),
        }
    }

    /// The response to keep while its body comes.
    fn pending(
        &self,
        ctx: Ctx<'_>,
        cr: &CacheRules,
        (meta, lifetime): (ResponseMeta, u64),
        (buf, rh, headers): (&[u8], &ResponseHead, &[Header]),
        asked: &[Header],
    ) -> Pending {
        let mut head = Vec::with_capacity(rh.len);
        stored_response(buf, rh, headers, &DateLine::at(ctx.secs), &mut head);
        if meta.cc.qualified {
            let cc = headers
                .iter()
                .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"cache-control"))
                .map(|h| h.value.get(buf));
            answer::strip_fields(&mut head, &super::control::unstored_fields(cc));
        }
        let tags = super::tags(buf, headers, &cr.tag_fields);
        if cr.strip_tags && !cr.tag_fields.is_empty() {
            answer::strip_fields(&mut head, &cr.tag_fields);
        }
        let mut vary = Vec::new();
        if let Vary::Fields(names) = &meta.vary {
            let mut v = Vec::new();
            for n in names {
                vary_value(&self.head, asked, n, &mut v);
                vary.push((n.clone().into_boxed_slice(), v.clone().into_boxed_slice()));
            }
        }
        Pending {
            head,
            initial_age: initial_age(&meta, self.request_time, ctx.secs),
            meta,
            lifetime,
            response_time: ctx.secs,
            vary,
            max_object: cr.max_object,
            collecting: ctx.cache.shard.borrow().collecting(),
            tags,
        }
    }

    /// Whether the response is being stored (its body must go through the tee).
    pub fn storing(&self) -> bool {
        matches!(self.phase, CachePhase::Storing { .. })
    }

    /// A body of `len` bytes is too large to store: the response only passes through.
    pub fn body_length(&mut self, len: u64) {
        if let CachePhase::Storing { rules, pending } = &self.phase {
            if len > pending.max_object {
                self.phase = CachePhase::Passing { rules: *rules };
            }
        }
    }

    /// The tee for the response body relay, when the response is being stored.
    pub fn tee(&self, expect: Option<u64>) -> Option<Tee> {
        match &self.phase {
            CachePhase::Storing { pending: p, .. } => {
                Some(Tee::new(p.max_object, expect).counted_in(p.collecting.clone()))
            }
            _ => None,
        }
    }

    /// The tee that reads a whole stored-to-be body of `relay` ahead of the client, when the
    /// worker's copies in flight have room for it: the fill then ends at the origin's pace, not
    /// at the client's, and requests waiting for the key get the entry (a client that stops
    /// reading no longer holds them all up).
    pub fn fetch_tee(&self, relay: BodyKind) -> Option<Tee> {
        let CachePhase::Storing { pending: p, .. } = &self.phase else {
            return None;
        };
        match relay {
            BodyKind::Length(n) if n > 0 && n <= p.max_object => {
                Tee::fetch(n, p.collecting.clone())
            }
            _ => None,
        }
    }

    /// Stores the response whose body is `body` (the whole of it), as decided in
    /// `on_response`: the entry (whether the shard took it or not), or the body back when
    /// there was nothing to store. `private_dest`: it came from a private address.
    pub fn store(
        &mut self,
        ctx: Ctx<'_>,
        body: Vec<u8>,
        private_dest: bool,
    ) -> Result<Arc<Entry>, Vec<u8>> {
        let CachePhase::Storing { rules, pending: p } = std::mem::take(&mut self.phase) else {
            return Err(body);
        };
        self.phase = CachePhase::Passing { rules };
        if body.len() as u64 > p.max_object {
            return Err(body);
        }
        let e = Arc::new(Entry {
            key: self.key.clone().into_boxed_slice(),
            vary: p.vary.into_boxed_slice(),
            head: p.head.into_boxed_slice(),
            body: ctx.cache.shard.borrow().place(body),
            status: p.meta.status,
            response_time: p.response_time,
            initial_age: p.initial_age,
            lifetime: p.lifetime,
            etag: p.meta.etag.map(Vec::into_boxed_slice),
            last_modified: p.meta.last_modified,
            cc: p.meta.cc,
            epoch: self.epoch,
            private_dest,
            encoded: Default::default(),
            tags: p.tags.into_boxed_slice(),
            state: Default::default(),
        });
        ctx.cache.shard.borrow_mut().insert_rc(e.clone());
        Ok(e)
    }

    /// `Cache-Status` for a forwarded response (none when the request was not for the cache).
    pub fn status(&self) -> Option<CacheStatus<'static>> {
        if matches!(self.phase, CachePhase::Off) && self.fwd.is_empty() {
            return None;
        }
        Some(CacheStatus {
            detail: if self.fwd.is_empty() {
                "fwd=miss"
            } else {
                self.fwd
            },
            ttl: None,
            stored: self.storing(),
        })
    }

    /// The largest body the rules store (0: none).
    pub fn max_object(&self, src: &dyn RulesSource) -> u64 {
        match self.phase {
            CachePhase::Forwarded { rules, .. }
            | CachePhase::Storing { rules, .. }
            | CachePhase::Passing { rules } => rules.of(src).map_or(0, |r| r.max_object),
            CachePhase::Off => 0,
        }
    }

    /// Whether the request is under cache rules at all.
    pub fn active(&self) -> bool {
        !matches!(self.phase, CachePhase::Off)
    }

    /// The origin failed (no response; `timeout`: it timed out): the stale stored response to
    /// serve instead, if the response, the request or the operator allows it.
    pub fn on_failure(&mut self, ctx: Ctx<'_>, timeout: bool) -> Option<Served> {
        let CachePhase::Forwarded {
            rules,
            stale: Some(s),
        } = &self.phase
        else {
            return None;
        };
        let cr = rules.of(ctx.rules)?;
        let e = &s.entry;
        let by_rule = if timeout {
            cr.use_stale.timeout
        } else {
            cr.use_stale.error
        };
        let forbidden = e.cc.must_revalidate || e.cc.proxy_revalidate || e.cc.s_maxage.is_some();
        if forbidden || !(by_rule || self.stale_allowed(e, None, cr, ctx.secs)) {
            return None;
        }
        Some(Served {
            entry: e.clone(),
            detail: Some("fwd=stale; detail=stale-if-error"),
        })
    }

    /// May `e` be served stale now that the origin failed (with `status`, if it answered)?
    fn stale_allowed(&self, e: &Entry, status: Option<u16>, cr: &CacheRules, secs: u64) -> bool {
        if e.cc.no_cache || e.cc.must_revalidate || e.cc.proxy_revalidate || e.cc.s_maxage.is_some()
        {
            return false;
        }
        let failure = match status {
            None => true,
            Some(s) => matches!(s, 500 | 502 | 503 | 504) || cr.use_stale.statuses.contains(&s),
        };
        if !failure {
            return false;
        }
        if status.is_some_and(|s| cr.use_stale.statuses.contains(&s)) {
            return true;
        }
        let staleness = e.age(secs).saturating_sub(e.lifetime_now());
        let window =
            e.cc.stale_if_error
                .into_iter()
                .chain(self.req.cc.stale_if_error)
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
        cr: &CacheRules,
    ) -> Option<Entry> {
        let mut head = Vec::with_capacity(e.head.len() + 128);
        let kept_out: &[&[u8]] = if cr.store_set_cookie {
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
        let meta = read_response(rh.status, &full, &hs, &cr.targeted);
        let understood = meta.cc.must_understand && policy::UNDERSTOOD.contains(&meta.status);
        if (meta.cc.no_store && !understood) || meta.cc.private || meta.cc.malformed {
            return None;
        }
        if meta.cc.qualified {
            let cc = hs
                .iter()
                .filter(|h| h.name.get(&full).eq_ignore_ascii_case(b"cache-control"))
                .map(|h| h.value.get(&full));
            answer::strip_fields(&mut head, &super::control::unstored_fields(cc));
        }
        let r304 = read_response(304, buf, headers, &cr.targeted);
        Some(Entry {
            key: e.key.clone(),
            vary: e.vary.clone(),
            head: head.into_boxed_slice(),
            body: e.body.clone(),
            status: e.status,
            response_time: secs,
            initial_age: initial_age(&r304, self.request_time, secs),
            lifetime: policy::lifetime(&meta, secs, cr),
            etag: meta.etag.map(Vec::into_boxed_slice),
            last_modified: meta.last_modified,
            cc: meta.cc,
            epoch: self.epoch,
            private_dest: e.private_dest,
            encoded: Default::default(),
            // Refreshed by the origin: fresh again, whatever a soft purge said.
            tags: e.tags.clone(),
            state: Default::default(),
        })
    }
}

/// Whether a 200 to HEAD describes stored response `e` (RFC 9111 §4.3.5): it carries a
/// validator, every validator it carries matches the stored one, and the length it says (if
/// any) is the stored body's.
fn head_describes(e: &Entry, head: &ResponseMeta, length: Option<usize>) -> bool {
    let etag = match (&head.etag, &e.etag) {
        (None, _) => None,
        (Some(h), Some(s)) => Some(h[..] == s[..]),
        (Some(_), None) => Some(false),
    };
    let modified = match (head.last_modified, e.last_modified) {
        (None, _) => None,
        (Some(h), s) => Some(Some(h) == s),
    };
    let validated = match (etag, modified) {
        (None, None) => false,
        (a, b) => a.unwrap_or(true) && b.unwrap_or(true),
    };
    validated && length.is_none_or(|n| n == e.body.len())
}

/// How stored response `e` answers a request with `req`'s conditions and ranges: `304` when
/// the client's conditions match it, ranges of a complete `200` (RFC 9110 §14) unless
/// `If-Range` says the client's copy is another one, else the whole response.
pub fn stored_answer(e: &Entry, req: &RequestMeta, method: Method, secs: u64) -> StoredAnswer {
    let age = e.age(secs);
    // Without Last-Modified, If-Modified-Since is judged against the time the response was
    // received (RFC 9111 §4.3.2).
    let modified = e.last_modified.or(Some(e.response_time));
    let not_mod = not_modified(req, e.etag.as_deref(), modified);
    let len = e.body.len() as u64;
    let ranges = match &req.range {
        Some(r)
            if !not_mod
                && e.status == 200
                && method == Method::Get
                && policy::if_range_holds(req, e.etag.as_deref(), e.last_modified) =>
        {
            range::parse(r, len)
        }
        _ => Ranges::Ignore,
    };
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
    let (status, keep, content, body) = match &ranges {
        _ if not_mod => (304, Keep::Only(NOT_MODIFIED), Content::Bodiless, None),
        Ranges::Ignore => (
            e.status,
            Keep::All,
            Content::Length(len),
            Some(0..e.body.len()),
        ),
        Ranges::Unsatisfiable => (
            416,
            Keep::Only(&[b"date", b"etag"]),
            Content::Unsatisfiable { total: len },
            None,
        ),
        Ranges::Satisfiable(parts) if parts.len() == 1 => {
            let (a, b) = parts[0];
            let content = Content::Range {
                first: a,
                last: b - 1,
                total: len,
            };
            (206, Keep::All, content, Some(a as usize..b as usize))
        }
        Ranges::Satisfiable(parts) => {
            let content = multipart(e, parts, len);
            (206, Keep::AllBut(&[b"content-type"]), content, None)
        }
    };
    StoredAnswer {
        status,
        keep,
        content,
        body,
        age,
    }
}

/// `multipart/byteranges` (RFC 9110 §14.6), built whole: several ranges of one stored response
/// are rare and small.
fn multipart(e: &Entry, parts: &[(u64, u64)], len: u64) -> Content {
    let boundary = format!("ringway-{:016x}", super::store::hash(&e.key) ^ len);
    let ctype = answer::fields(&e.head)
        .find(|l| answer::field_name(l).eq_ignore_ascii_case(b"content-type"))
        .map(|l| String::from_utf8_lossy(answer::field_value(l)).into_owned());
    let mut body = Vec::new();
    for &(a, b) in parts {
        let _ = write!(body, "\r\n--{boundary}\r\n");
        if let Some(t) = &ctype {
            let _ = write!(body, "Content-Type: {t}\r\n");
        }
        let _ = write!(body, "Content-Range: bytes {a}-{}/{len}\r\n\r\n", b - 1);
        body.extend_from_slice(&e.body[a as usize..b as usize]);
    }
    let _ = write!(body, "\r\n--{boundary}--\r\n");
    Content::Multipart { boundary, body }
}

/// The head of a background refresh of `head`'s target: `GET`, its fields less those that
/// would make it conditional, partial or not revalidating, `Cache-Control: no-cache` and
/// `Connection: close`.
fn refresh_head(head: &[u8]) -> Option<Vec<u8>> {
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
    Some(out)
}
