//! The route's edits of one request (`crate::edit`): the target that goes upstream (the path
//! rewritten, or the original), and the response field lines, rendered when the request is
//! routed (their variables are the request's). The exchange asks for both; the rules live in
//! the route.

use std::net::SocketAddr;

use std::sync::Arc;

use crate::cache::{Entry, Shard};
use crate::compress::{encode_whole, Coding, Compression, Facts, StreamSlot, Streams, Verdict};
use crate::config::{Action, Route};
use crate::edit::{CookieRewrite, Relocate, Vars};
use crate::http::framing::BodyKind;
use crate::http::rewrite::RELOCATED;
use crate::http::Header;

impl StoredEncoding {
    /// What the answer's content is: the encoded copy's length, or as `planned`.
    pub(super) fn content<'p>(
        &self,
        planned: &'p crate::cache::step::Content,
    ) -> crate::http::answer::Content<'p> {
        match self.len {
            Some(n) => crate::http::answer::Content::Length(n as u64),
            None => planned.as_answer(),
        }
    }

    /// The body after the head: bytes of its own (an encoded copy the store could not keep),
    /// the entry's encoded copy whole, or the `planned` range of its stored body.
    pub(super) fn body(self, e: &Entry, planned: Option<std::ops::Range<usize>>) -> HitBody {
        let coding = self.verdict.coding();
        match (self.own, planned) {
            (Some(b), _) => HitBody::Own(b),
            (None, Some(_)) if coding.is_some() => {
                HitBody::Stored(coding, 0..e.bytes(coding).len())
            }
            (None, Some(r)) => HitBody::Stored(None, r),
            (None, None) => HitBody::Nothing,
        }
    }
}

/// What follows a hit's head: see [`StoredEncoding::body`].
pub(super) enum HitBody {
    Own(Box<[u8]>),
    Stored(Option<Coding>, std::ops::Range<usize>),
    Nothing,
}

/// What happens to a relayed body: see [`RouteEdits::relayed_body`].
pub(super) struct RelayedBody {
    pub(super) verdict: Verdict,
    pub(super) slot: Option<StreamSlot>,
    pub(super) replace: Option<crate::subst::Replacer>,
}

/// How a hit goes out: see [`RouteEdits::stored_compression`].
pub(super) struct StoredEncoding {
    pub(super) verdict: Verdict,
    /// What the head says of it.
    pub(super) edit: Option<crate::compress::HeadEdit>,
    /// The encoded body's length.
    pub(super) len: Option<usize>,
    /// The encoded body, when the entry does not hold it.
    pub(super) own: Option<Box<[u8]>>,
}

#[derive(Debug, Default)]
pub(super) struct RouteEdits {
    /// The rewritten target, when the route rewrites paths.
    target: Option<Vec<u8>>,
    /// The response fields the route sets and adds, rendered (each line ending in CRLF).
    response: Vec<u8>,
    /// Kept for the next request (its capacity), cleared in between.
    spare: Vec<u8>,
    /// `scheme://host[:port]` as the client asked, for Location rewriting.
    origin: Vec<u8>,
    /// The route compresses responses, and the coding the client accepts (none: it accepts
    /// none offered).
    compress: Option<Option<Coding>>,
}

impl RouteEdits {
    /// Forgets the last request's edits.
    pub(super) fn clear(&mut self) {
        if let Some(mut t) = self.target.take() {
            t.clear();
            self.spare = t;
        }
        self.response.clear();
        self.origin.clear();
        self.compress = None;
    }

    /// Decides for a request to `route` whose normalised target is `target`, asked of
    /// `authority` (the client's Host, port included).
    pub(super) fn prepare(
        &mut self,
        route: &Route,
        target: &[u8],
        vars: &Vars<'_>,
        authority: &[u8],
    ) {
        self.clear();
        if route.rewrite_location {
            self.origin.extend_from_slice(vars.scheme);
            self.origin.extend_from_slice(b"://");
            self.origin
                .extend(authority.iter().filter(|&&b| b.is_ascii_graphic()));
        }
        if !route.path_rewrite.is_empty() && target != b"*" {
            let mut t = std::mem::take(&mut self.spare);
            route.path_rewrite.apply(target, &mut t);
            self.target = Some(t);
        }
        route.response_headers.write(vars, &mut self.response);
    }

    /// Reads what the request accepts, when `route` compresses (`buf`, `headers`: its head).
    pub(super) fn negotiate(
        &mut self,
        route: &Route,
        c: &Compression,
        buf: &[u8],
        headers: &[Header],
    ) {
        if route.compress {
            let accept = headers
                .iter()
                .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"accept-encoding"))
                .map(|h| h.value.get(buf));
            self.compress = Some(c.negotiate(accept));
        }
    }

    /// What compression does to a response of `status` whose head says `facts` (read only
    /// when the route compresses).
    pub(super) fn compression(
        &self,
        c: &Compression,
        status: u16,
        facts: impl FnOnce() -> Facts,
    ) -> Verdict {
        match self.compress {
            Some(accepted) => c.decide(accepted, status, &facts()),
            None => Verdict::Identity,
        }
    }

    /// What the route does to the body of a relayed response of `status` and `body` from
    /// `route`: the compression verdict with the worker's room for its encoder (beyond
    /// `max_streams` open ones in `streams`, a response goes out as it is), and the
    /// substitution (`body_replace`) of a full, unencoded response of a listed type.
    pub(super) fn relayed_body(
        &self,
        route: Option<&Route>,
        c: &Compression,
        streams: Option<&Streams>,
        (status, body): (u16, BodyKind),
        facts: impl FnOnce() -> Facts,
    ) -> RelayedBody {
        let replacing = route.and_then(|r| r.body_replace.as_ref());
        // Read for a HEAD too: it gets the fields a GET would get.
        let facts = match self.compress.is_some() || replacing.is_some() {
            true => facts(),
            false => Facts::default(),
        };
        let full = !matches!(status, 100..=199 | 204 | 206 | 304);
        let replace = replacing
            .filter(|r| full && !facts.encoded && r.applies(facts.content_type.as_deref()))
            .filter(|_| body != BodyKind::None)
            .map(crate::subst::BodyReplace::stage);
        let verdict = self.compression(c, status, || facts);
        let (verdict, slot) = match (verdict, streams) {
            (Verdict::Encode(_), Some(s)) if body != BodyKind::None => {
                match s.try_open(c.max_streams) {
                    Some(slot) => (verdict, Some(slot)),
                    None => (Verdict::Vary, None),
                }
            }
            _ => (verdict, None),
        };
        RelayedBody {
            verdict,
            slot,
            replace,
        }
    }

    /// [`compression`](Self::compression) for a hit on `e` (`whole`: the answer is its whole
    /// body, not a range or a `304`): the verdict, and the encoded body's length, with the
    /// bytes themselves when the store (`shard`) could not keep them in the entry. A coding's
    /// copy is made at the first hit that asks for it, once per worker.
    pub(super) fn stored_compression(
        &self,
        route: Option<&Route>,
        c: &Compression,
        (status, whole): (u16, bool),
        e: &Arc<Entry>,
        shard: Option<&std::cell::RefCell<Shard>>,
    ) -> StoredEncoding {
        let replacing = route.and_then(|r| r.body_replace.as_ref());
        let facts = match (self.compress.is_some() || replacing.is_some()) && whole {
            true => Facts::of_stored(&e.head),
            false => Facts::default(),
        };
        // A route that replaces strings stored its body replaced: its head says so too.
        let replaced =
            replacing.is_some_and(|r| !facts.encoded && r.applies(facts.content_type.as_deref()));
        let verdict = match whole {
            true => self.compression(c, status, || facts),
            false => Verdict::Identity,
        };
        let mut enc = StoredEncoding {
            verdict,
            edit: crate::compress::HeadEdit::new(verdict, replaced),
            len: None,
            own: None,
        };
        let Some(coding) = verdict.coding() else {
            return enc;
        };
        if let Some(b) = e.encoded.get(coding) {
            enc.len = Some(b.len());
            return enc;
        }
        let b = encode_whole(coding, c.levels, &e.body).into_boxed_slice();
        enc.len = Some(b.len());
        enc.own = match shard {
            Some(s) => s.borrow_mut().grow(e, coding, b).err(),
            None => Some(b),
        };
        enc
    }

    /// The target to send upstream.
    pub(super) fn target<'a>(&'a self, original: &'a [u8]) -> &'a [u8] {
        self.target.as_deref().unwrap_or(original)
    }

    /// The client-facing origin (empty when the route does not rewrite locations).
    pub(super) fn origin(&self) -> &[u8] {
        &self.origin
    }

    /// The response field lines to add.
    pub(super) fn response_lines(&self) -> &[u8] {
        &self.response
    }
}

/// What a route changes in a final response it relays: the fields its rules drop and add, the
/// URLs that point at the upstream (`Location`, `Content-Location`, `Refresh`), the cookies.
pub(super) struct Relayed<'r> {
    route: Option<&'r Route>,
    dropped: Vec<&'r [u8]>,
    /// The server's address as text, when the response has a URL field to look at.
    server: Option<String>,
}

impl<'r> Relayed<'r> {
    /// For a response from `server` with the fields `headers` (in `buf`); `route: None` for
    /// an interim response or one that no route sent.
    pub(super) fn new(
        route: Option<&'r Route>,
        server: Option<SocketAddr>,
        buf: &[u8],
        headers: &[Header],
    ) -> Self {
        // The route's dropped fields, and the cache's tag fields when it keeps them from
        // clients.
        let dropped = route
            .map(|r| {
                let tags = r.cache.iter().filter(|c| c.strip_tags);
                r.response_headers
                    .dropped()
                    .chain(tags.flat_map(|c| c.tag_fields.iter().map(Vec::as_slice)))
                    .collect()
            })
            .unwrap_or_default();
        let urls = route.is_some_and(|r| r.rewrite_location)
            && headers.iter().any(|h| {
                RELOCATED
                    .iter()
                    .any(|n| h.name.get(buf).eq_ignore_ascii_case(n))
            });
        Self {
            route,
            dropped,
            server: server.filter(|_| urls).map(|a| a.to_string()),
        }
    }

    pub(super) fn dropped(&self) -> &[&'r [u8]] {
        &self.dropped
    }

    /// The field lines the route adds.
    pub(super) fn lines<'a>(&self, edits: &'a RouteEdits) -> &'a [u8] {
        match self.route {
            Some(r) if !r.response_headers.is_empty() => edits.response_lines(),
            _ => b"",
        }
    }

    pub(super) fn cookies(&self) -> Option<&'r CookieRewrite> {
        self.route.map(|r| &r.cookies).filter(|c| !c.is_empty())
    }

    /// The authorities the upstream may name itself by: the server's address, the Host sent
    /// to it by `set_host`, and, when the route moved the path, the client's own (the
    /// upstream saw that Host and may redirect to it, without the prefix).
    pub(super) fn upstream_names<'a>(&'a self, edits: &'a RouteEdits) -> Vec<&'a [u8]> {
        let Some(r) = self.route.filter(|_| self.server.is_some()) else {
            return Vec::new();
        };
        let set_host = match &r.action {
            Action::Proxy {
                set_host: Some(h), ..
            } => Some(h.as_slice()),
            _ => None,
        };
        let client = (!r.path_rewrite.is_empty())
            .then(|| {
                let o = edits.origin();
                o.windows(3).position(|w| w == b"://").map(|i| &o[i + 3..])
            })
            .flatten();
        self.server
            .iter()
            .map(|s| s.as_bytes())
            .chain(set_host)
            .chain(client)
            .collect()
    }

    /// How URL fields are turned toward the client, when the response has any.
    pub(super) fn relocate<'a>(
        &'a self,
        edits: &'a RouteEdits,
        names: &'a [&'a [u8]],
    ) -> Option<Relocate<'a>> {
        let r = self.route.filter(|_| self.server.is_some())?;
        Some(Relocate {
            upstream: names,
            origin: edits.origin(),
            rewrite: &r.path_rewrite,
        })
    }
}

/// The values of a route's field rule variables for request `r` (`path`: its normalised path).
pub(super) fn vars<'s>(
    client: &'s [u8],
    scheme: &'static str,
    path: &'s [u8],
    r: &'s super::Parsed<'_>,
    route: &'s crate::config::Route,
    request_id: Option<&'s crate::reqid::RequestId>,
) -> crate::edit::Vars<'s> {
    let buf = r.buf();
    let host = match r.head.form {
        crate::http::TargetForm::Absolute { authority, .. } => authority.get(buf),
        _ => r.info.host.map_or(&b""[..], |h| h.get(buf)),
    };
    crate::edit::Vars {
        client_addr: client,
        host: crate::route::strip_port(host),
        scheme: scheme.as_bytes(),
        route: route.name.as_bytes(),
        method: r.head.method_span.get(buf),
        path: if path.is_empty() { b"/" } else { path },
        request_id: request_id.map_or(&b""[..], |i| i.as_bytes()),
    }
}
