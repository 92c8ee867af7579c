//! Writing the heads the proxy sends: the request to the upstream, the response to the client.
//!
//! The proxy never forwards a head byte-for-byte. It writes a fresh head from the parsed spans:
//! hop-by-hop fields (RFC 9110 §7.6.1) are dropped, the framing fields are written from the
//! framing the proxy itself chose, and forwarding fields are added. Since only what the parser
//! understood is written, whatever ambiguity a client crafts cannot reach the upstream.

use super::date::DateLine;
use super::framing::BodyKind;
use super::{list_items, Header, RequestHead, ResponseHead, TargetForm, Version};

/// Fields that describe one connection, never forwarded. `Connection`-listed names are added
/// per message.
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
];

/// Fields the proxy writes itself on requests, so the client's copies are replaced.
const SET_ON_REQUEST: &[&[u8]] = &[
    b"host",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-real-ip",
    // What a listener asking for client certificates says of them: never the client's word.
    b"x-client-verify",
    b"x-client-cert-subject",
    b"x-client-cert-fingerprint",
];

/// `Connection` names kept at hand; more are found by reading the fields again.
const MAX_CONNECTION_OPTIONS: usize = 16;

/// Fields that earlier proxies (or the client itself) wrote about the client or the proxies on
/// the way: passed on (after our own additions to them) only when the policy keeps the chain.
const CLIENT_CHAIN: &[&[u8]] = &[
    b"via",
    b"forwarded",
    b"forwarded-for",
    b"x-forwarded",
    b"x-forwarded-server",
    b"x-forwarded-port",
    b"x-forwarded-by",
    b"x-client-ip",
    b"true-client-ip",
    b"cf-connecting-ip",
    b"client-ip",
    b"x-originating-ip",
    b"x-cluster-client-ip",
    b"x-proxyuser-ip",
];

/// Which forwarding fields the proxy writes upstream: a value per listener or route, so that a
/// reverse proxy tells its servers who the client is and a forward proxy can hide it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardingPolicy {
    /// `X-Forwarded-For` (the client's address appended) and `X-Real-IP`.
    pub client_address: bool,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`.
    pub proto_and_host: bool,
    /// Our own `Via`.
    pub via: bool,
    /// What earlier proxies said (`X-Forwarded-For` values, `Via`, `Forwarded`) is passed on;
    /// otherwise dropped.
    pub client_chain: bool,
    /// `Proxy-Authorization` is passed on. A forward proxy consumes the credentials meant for
    /// it and never forwards them.
    pub proxy_credentials: bool,
    /// The client certificate's verdict, subject and fingerprint (`X-Client-Verify`, …), on
    /// listeners that ask for one: a reverse proxy's servers may rely on them.
    pub client_cert: bool,
}

impl ForwardingPolicy {
    /// A reverse proxy in front of its servers: everything (nginx's usual `proxy_set_header`s).
    pub const REVERSE: Self = Self {
        client_address: true,
        proto_and_host: true,
        via: true,
        client_chain: true,
        proxy_credentials: true,
        client_cert: true,
    };
    /// A forward proxy that says it is one and who the client is (Squid's default).
    pub const TRANSPARENT: Self = Self {
        client_address: true,
        proto_and_host: false,
        via: true,
        client_chain: true,
        proxy_credentials: false,
        client_cert: false,
    };
    /// A forward proxy that says it is one, but not who the client is.
    pub const ANONYMOUS: Self = Self {
        client_address: false,
        proto_and_host: false,
        via: true,
        client_chain: false,
        proxy_credentials: false,
        client_cert: false,
    };
    /// Nothing that shows a proxy or a client address.
    pub const ELITE: Self = Self {
        client_address: false,
        proto_and_host: false,
        via: false,
        client_chain: false,
        proxy_credentials: false,
        client_cert: false,
    };
}

/// Facts about the client connection that go into forwarding fields.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    pub policy: ForwardingPolicy,
    /// The client's address as text (`203.0.113.9`, `2001:db8::1`), formatted once per
    /// connection by the caller.
    pub client_ip: &'a [u8],
    /// The connection's peer as text: what `X-Forwarded-For` appends (each proxy adds whom
    /// it heard from). The client itself unless a trusted proxy relayed the request.
    pub peer_ip: &'a [u8],
    /// `http` or `https`.
    pub proto: &'a str,
    /// Host to send when the route overrides it, or when the client sent none (HTTP/1.0).
    pub host_override: Option<&'a [u8]>,
    pub fallback_host: &'a [u8],
    /// The client asked to switch to WebSocket and the proxy will tunnel it: the `Upgrade`
    /// and `Connection: upgrade` fields go on (otherwise hop-by-hop, dropped).
    pub upgrade_websocket: bool,
    /// `Max-Forwards` to send instead of the client's (RFC 9110 §7.6.2: a proxy decrements it
    /// on TRACE and OPTIONS).
    pub max_forwards: Option<u64>,
    /// The cache revalidates a stored response: the client's own conditional fields (and any
    /// `Range`) are dropped and these lines (`If-None-Match`, `If-Modified-Since`) sent instead.
    pub revalidate: Option<&'a [u8]>,
    /// The route's request field rules and the values of their variables.
    pub edits: Option<(&'a crate::edit::FieldRules, crate::edit::Vars<'a>)>,
    /// The request's id field (name, value), replacing any the client sent.
    pub request_id: Option<(&'a [u8], &'a [u8])>,
    /// The connection's client certificate, told upstream when the policy says so.
    pub client_cert: &'a crate::realip::Certificate,
}

/// Response fields holding a URL that may point at the upstream itself.
pub const RELOCATED: &[&[u8]] = &[b"location", b"content-location", b"refresh"];

/// Request fields a revalidation replaces with the cache's own validators.
const CONDITIONAL: &[&[u8]] = &[
    b"if-none-match",
    b"if-modified-since",
    b"if-match",
    b"if-unmodified-since",
    b"if-range",
    b"range",
];

/// The names listed in `Connection` fields: the first [`MAX_CONNECTION_OPTIONS`] kept at
/// hand; past that (rare, and hostile more often than not), every `Connection` field is read
/// again for each name, so that all listed names are removed (RFC 9110 §7.6.1).
struct ConnectionOptions<'b> {
    names: [&'b [u8]; MAX_CONNECTION_OPTIONS],
    len: usize,
    overflow: Option<(&'b [u8], &'b [Header])>,
}

impl<'b> ConnectionOptions<'b> {
    fn collect(buf: &'b [u8], headers: &'b [Header]) -> Self {
        let mut s = Self {
            names: [&[]; MAX_CONNECTION_OPTIONS],
            len: 0,
            overflow: None,
        };
        for h in headers {
            if super::name_is(h.name.get(buf), b"connection") {
                for item in list_items(h.value.get(buf)) {
                    if s.len < MAX_CONNECTION_OPTIONS {
                        s.names[s.len] = item;
                        s.len += 1;
                    } else {
                        s.overflow = Some((buf, headers));
                    }
                }
            }
        }
        s
    }

    fn lists(&self, name: &[u8]) -> bool {
        if self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            return true;
        }
        let Some((buf, headers)) = self.overflow else {
            return false;
        };
        headers.iter().any(|h| {
            super::name_is(h.name.get(buf), b"connection")
                && list_items(h.value.get(buf)).any(|n| n.eq_ignore_ascii_case(name))
        })
    }
}

fn in_set(set: &[&[u8]], name: &[u8]) -> bool {
    set.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// `n` in decimal. By hand: `write!` went through the formatter, about 500 instructions a
/// `Content-Length` (callgrind, docs/benchmarks-log.md run 41).
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_framing(out: &mut Vec<u8>, body: BodyKind) {
    match body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::None | BodyKind::Close => {}
    }
}

/// Writes the request head for the upstream into `out` (appending). `target` is the
/// request-target to send (the normalised path and query, see [`super::path`], or `*`); `body`
/// is the framing the proxy will use for the body it forwards.
pub fn upstream_request(
    buf: &[u8],
    head: &RequestHead,
    headers: &[Header],
    target: &[u8],
    body: BodyKind,
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
) {
    let conn = ConnectionOptions::collect(buf, headers);
    let authority = match head.form {
        TargetForm::Absolute { authority, .. } => Some(authority.get(buf)),
        _ => None,
    };
    out.extend_from_slice(head.method_span.get(buf));
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let client_host = authority.or_else(|| super::find_header(buf, headers, b"host"));
    let host = fwd
        .host_override
        .or(client_host)
        .unwrap_or(fwd.fallback_host);
    push_field(out, b"Host", host);

    let p = fwd.policy;
    for h in headers {
        let name = h.name.get(buf);
        if super::name_in(HOP_BY_HOP, name)
            || super::name_in(SET_ON_REQUEST, name)
            || conn.lists(name)
            || (!p.client_chain && super::name_in(CLIENT_CHAIN, name))
            || (!p.proxy_credentials && super::name_is(name, b"proxy-authorization"))
            || (fwd.max_forwards.is_some() && super::name_is(name, b"max-forwards"))
            || (fwd.revalidate.is_some() && super::name_in(CONDITIONAL, name))
            || fwd.edits.is_some_and(|(f, _)| f.drops(name))
            || fwd
                .request_id
                .is_some_and(|(n, _)| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        push_field(out, name, h.value.get(buf));
    }
    if let Some((name, id)) = fwd.request_id {
        push_field(out, name, id);
    }
    if let Some((f, vars)) = &fwd.edits {
        f.write(vars, out);
    }
    if p.client_address {
        out.extend_from_slice(b"X-Forwarded-For: ");
        if p.client_chain {
            for h in headers {
                if super::name_is(h.name.get(buf), b"x-forwarded-for") {
                    out.extend_from_slice(h.value.get(buf));
                    out.extend_from_slice(b", ");
                }
            }
        }
        out.extend_from_slice(fwd.peer_ip);
        out.extend_from_slice(b"\r\nX-Real-IP: ");
        out.extend_from_slice(fwd.client_ip);
        out.extend_from_slice(b"\r\n");
    }
    if p.proto_and_host {
        out.extend_from_slice(b"X-Forwarded-Proto: ");
        out.extend_from_slice(fwd.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(h) = client_host {
            push_field(out, b"X-Forwarded-Host", h);
        }
    }
    if p.client_cert {
        crate::clientcert::write_fields(fwd.client_cert, out);
    }
    if p.via {
        out.extend_from_slice(match head.version {
            Version::Http10 => b"Via: 1.0 ringway\r\n",
            Version::Http11 => b"Via: 1.1 ringway\r\n",
        });
    }
    if fwd.upgrade_websocket {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: websocket\r\n");
    }
    if let Some(n) = fwd.max_forwards {
        out.extend_from_slice(b"Max-Forwards: ");
        push_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(lines) = fwd.revalidate {
        out.extend_from_slice(lines);
    }
    push_framing(out, body);
    out.extend_from_slice(b"\r\n");
}

/// What the proxy says about the client connection in a response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// Nothing (interim responses; HTTP/1.1 keep-alive).
    Omit,
    /// `Connection: keep-alive` (HTTP/1.0 clients that asked for it).
    KeepAlive,
    /// `Connection: close`.
    Close,
    /// `Connection: upgrade` and `Upgrade: websocket`: a `101` that opens a tunnel.
    UpgradeWebsocket,
}

/// What the proxy changes in a response head it forwards: fields it adds, and fields it drops
/// (a later stage's edits: an encoder drops `Content-Length` and adds `Content-Encoding`,
/// header rules drop and add by name).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadEdits<'a> {
    /// `Date`, when the upstream sent none (RFC 9110 §6.6.1).
    pub date: Option<&'a DateLine>,
    /// Our `Via` (not from an elite forward proxy, which does not show itself).
    pub via: bool,
    /// What the cache did with the request (RFC 9211).
    pub cache_status: Option<super::answer::CacheStatus<'a>>,
    /// Fields not passed on (lower-case names).
    pub drop: &'a [&'a [u8]],
    /// Field lines added (each ending in CRLF).
    pub add: &'a [u8],
    /// `Location`, `Content-Location` and `Refresh` rewritten for the client.
    pub relocate: Option<&'a crate::edit::Relocate<'a>>,
    /// `Set-Cookie` domains and paths rewritten for the client.
    pub cookies: Option<&'a crate::edit::CookieRewrite>,
    /// What compression changes (`Vary`, `Content-Encoding`, `ETag`, …).
    pub encoding: Option<crate::compress::HeadEdit>,
    /// The request's id field (name, value), replacing any the upstream sent.
    pub request_id: Option<(&'a [u8], &'a [u8])>,
}

/// Writes the response head for the client into `out` (appending). `body` is the framing the
/// proxy will use toward the client; with [`BodyKind::None`] an upstream Content-Length is kept
/// (it describes the representation, e.g. for HEAD).
pub fn client_response(
    buf: &[u8],
    head: &ResponseHead,
    headers: &[Header],
    body: BodyKind,
    connection: ConnectionHeader,
    added: HeadEdits<'_>,
    out: &mut Vec<u8>,
) {
    let conn = ConnectionOptions::collect(buf, headers);
    let mut has_date = false;
    let mut vary = false;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    for h in headers {
        let name = h.name.get(buf);
        let keep_length = body == BodyKind::None && super::name_is(name, b"content-length");
        if !keep_length && (super::name_in(HOP_BY_HOP, name) || conn.lists(name)) {
            continue;
        }
        if in_set(added.drop, name)
            || added
                .request_id
                .is_some_and(|(n, _)| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        has_date |= super::name_is(name, b"date");
        if let Some(e) = &added.encoding {
            if e.field(name, h.value.get(buf), &mut vary, out) {
                continue;
            }
        }
        if let Some(c) = added
            .cookies
            .filter(|_| super::name_is(name, b"set-cookie"))
        {
            let mut v = Vec::new();
            if c.apply(h.value.get(buf), &mut v) {
                push_field(out, name, &v);
                continue;
            }
        }
        if let Some(r) = added.relocate.filter(|_| super::name_in(RELOCATED, name)) {
            let mut url = Vec::new();
            if r.apply(name, h.value.get(buf), &mut url) {
                push_field(out, name, &url);
                continue;
            }
        }
        push_field(out, name, h.value.get(buf));
    }
    // RFC 9110 §6.6.1: a recipient with a clock appends Date to a response it forwards without.
    if let (false, Some(d)) = (has_date, added.date) {
        out.extend_from_slice(d.as_bytes());
    }
    if added.via {
        out.extend_from_slice(match head.version {
            Version::Http10 => b"Via: 1.0 ringway\r\n",
            Version::Http11 => b"Via: 1.1 ringway\r\n",
        });
    }
    if let Some(cs) = &added.cache_status {
        cs.write(out);
    }
    if let Some(e) = &added.encoding {
        e.finish(vary, out);
    }
    if let Some((name, id)) = added.request_id {
        push_field(out, name, id);
    }
    out.extend_from_slice(added.add);
    push_framing(out, body);
    match connection {
        ConnectionHeader::Omit => {}
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ConnectionHeader::UpgradeWebsocket => {
            out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: websocket\r\n")
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head a cache stores for a response (appending): the status line and every field
/// except hop-by-hop ones, framing and `Age` (which a hit computes), each line ending in CRLF,
/// without the blank line. `Date` is added when the upstream sent none.
pub fn stored_response(
    buf: &[u8],
    head: &ResponseHead,
    headers: &[Header],
    date: &DateLine,
    out: &mut Vec<u8>,
) {
    let conn = ConnectionOptions::collect(buf, headers);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for h in headers {
        let name = h.name.get(buf);
        if super::name_in(HOP_BY_HOP, name) || conn.lists(name) || super::name_is(name, b"age") {
            continue;
        }
        has_date |= super::name_is(name, b"date");
        push_field(out, name, h.value.get(buf));
    }
    if !has_date {
        out.extend_from_slice(date.as_bytes());
    }
}

/// Fields a `304` does not update in a stored response (RFC 9111 §3.2): besides hop-by-hop
/// ones and `Content-Length`, those the stored bytes depend on (a 304 cannot re-encode them).
const NOT_UPDATED: &[&[u8]] = &[b"age", b"content-encoding", b"content-range"];

/// Writes a stored head (as [`stored_response`] wrote it) updated with the fields of a `304`
/// (RFC 9111 §3.2, §4.3.4): each field the 304 carries replaces the stored ones of that name,
/// except those named in `kept_out` (lower-case): fields the store would not have kept from a
/// full response, such as `Set-Cookie` when cookies are not stored, never enter a shared entry
/// through a 304.
pub fn updated_response(
    stored: &[u8],
    buf: &[u8],
    headers: &[Header],
    kept_out: &[&[u8]],
    out: &mut Vec<u8>,
) {
    let conn = ConnectionOptions::collect(buf, headers);
    let updates = |name: &[u8]| {
        !(super::name_in(HOP_BY_HOP, name)
            || conn.lists(name)
            || super::name_in(NOT_UPDATED, name)
            || in_set(kept_out, name))
    };
    let mut lines = stored.split_inclusive(|&b| b == b'\n');
    if let Some(status) = lines.next() {
        out.extend_from_slice(status);
    }
    for line in lines {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        let replaced = updates(name)
            && headers
                .iter()
                .any(|h| h.name.get(buf).eq_ignore_ascii_case(name));
        if !replaced {
            out.extend_from_slice(line);
        }
    }
    for h in headers {
        let name = h.name.get(buf);
        if updates(name) {
            push_field(out, name, h.value.get(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, parse_response, Limits};

    #[test]
    fn push_u64_writes_decimal_like_display() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            65_536,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = b"x".to_vec();
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    fn fwd() -> Forwarding<'static> {
        Forwarding {
            policy: ForwardingPolicy::REVERSE,
            client_ip: b"10.1.2.3",
            peer_ip: b"10.1.2.3",
            proto: "http",
            host_override: None,
            fallback_host: b"127.0.0.1:9000",
            upgrade_websocket: false,
            max_forwards: None,
            revalidate: None,
            edits: None,
            request_id: None,
            client_cert: &crate::realip::Certificate::NotAsked,
        }
    }

    #[test]
    fn the_request_id_replaces_what_the_client_sent_up_and_the_server_sent_down() {
        let req =
            b"GET /x HTTP/1.1\r\nHost: a\r\nx-request-id: forged\r\nX-Request-ID: again\r\n\r\n";
        let mut hs = Vec::new();
        let head = parse_request(req, &mut hs, &Limits::default()).unwrap();
        let mut out = Vec::new();
        let f = Forwarding {
            request_id: Some((b"X-Request-Id", b"abc123")),
            ..fwd()
        };
        upstream_request(req, &head, &hs, b"/x", BodyKind::None, &f, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-Request-Id: abc123\r\n"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("forged") && !text.contains("again"),
            "{text}"
        );
        let resp = b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-own\r\nContent-Length: 0\r\n\r\n";
        let mut hs = Vec::new();
        let rh = parse_response(resp, &mut hs, &Limits::default()).unwrap();
        let mut out = Vec::new();
        let added = HeadEdits {
            request_id: Some((b"X-Request-Id", b"abc123")),
            ..HeadEdits::default()
        };
        let ri =
            crate::http::framing::response_info(resp, &rh, &hs, crate::http::Method::Get).unwrap();
        client_response(
            resp,
            &rh,
            &hs,
            ri.body,
            ConnectionHeader::Omit,
            added,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-Request-Id: abc123\r\n"), "{text}");
        assert!(!text.contains("upstream-own"), "{text}");
    }

    #[test]
    fn stored_and_updated_heads() {
        let resp = b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\nAge: 9\r\nETag: \"a\"\r\nCache-Control: max-age=1\r\nContent-Type: text/plain\r\n\r\n";
        let mut hs = Vec::new();
        let head = parse_response(resp, &mut hs, &Limits::default()).unwrap();
        let mut stored = Vec::new();
        stored_response(resp, &head, &hs, &DateLine::at(0), &mut stored);
        assert_eq!(
            String::from_utf8_lossy(&stored),
            "HTTP/1.1 200 OK\r\nETag: \"a\"\r\nCache-Control: max-age=1\r\nContent-Type: text/plain\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        );
        let r304 = b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=60\r\nDate: Thu, 01 Jan 1970 00:01:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 0\r\nX-New: 1\r\n\r\n";
        let h304 = parse_response(r304, &mut hs, &Limits::default()).unwrap();
        let _ = h304;
        let mut merged = Vec::new();
        updated_response(&stored, r304, &hs, &[], &mut merged);
        assert_eq!(
            String::from_utf8_lossy(&merged),
            "HTTP/1.1 200 OK\r\nETag: \"a\"\r\nCache-Control: max-age=60\r\nDate: Thu, 01 Jan 1970 00:01:00 GMT\r\nContent-Type: text/html\r\nX-New: 1\r\n"
        );
    }

    #[test]
    fn revalidation_replaces_conditionals() {
        let lines = b"If-None-Match: \"a\"\r\n";
        let f = Forwarding {
            revalidate: Some(lines),
            ..fwd()
        };
        let out = rewrite(
            b"GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"zz\"\r\nIf-Modified-Since: x\r\nRange: bytes=0-1\r\n\r\n",
            BodyKind::None,
            &f,
        );
        assert!(
            !out.contains("zz") && !out.contains("Range") && !out.contains("Since"),
            "{out}"
        );
        assert!(out.contains("If-None-Match: \"a\"\r\n"));
    }

    fn rewrite(req: &[u8], body: BodyKind, f: &Forwarding<'_>) -> String {
        let mut hs = Vec::new();
        let head = parse_request(req, &mut hs, &Limits::default()).unwrap();
        let mut out = Vec::new();
        let target = match head.form {
            TargetForm::Absolute { path, .. } => path.get(req),
            _ => head.target.get(req),
        };
        let mut t = Vec::new();
        crate::http::path::normalise(target, &Default::default(), &mut t).unwrap();
        upstream_request(req, &head, &hs, &t, body, f, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_hop_by_hop_removed_and_forwarding_added() {
        let req = b"POST /a?b HTTP/1.1\r\nHost: Example.com\r\nConnection: keep-alive, X-Secret\r\n\
X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\n\
Proxy-Connection: keep-alive\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\
X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
Accept: */*\r\n\r\n";
        let out = rewrite(req, BodyKind::Chunked, &fwd());
        assert_eq!(
            out,
            "POST /a?b HTTP/1.1\r\nHost: Example.com\r\nAccept: */*\r\n\
X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\nX-Real-IP: 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\
X-Forwarded-Host: Example.com\r\nVia: 1.1 ringway\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_and_overrides() {
        let req = b"GET http://Origin.example:81?q HTTP/1.0\r\nHost: ignored\r\n\r\n";
        let out = rewrite(req, BodyKind::None, &fwd());
        assert!(
            out.starts_with("GET /?q HTTP/1.1\r\nHost: Origin.example:81\r\n"),
            "{out}"
        );
        assert!(out.contains("Via: 1.0 ringway\r\n"));
        let f = Forwarding {
            host_override: Some(b"backend.internal"),
            ..fwd()
        };
        let out = rewrite(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            BodyKind::Length(3),
            &f,
        );
        assert!(out.contains("Host: backend.internal\r\n"));
        assert!(out.contains("X-Forwarded-Host: a\r\n"));
        assert!(out.contains("Content-Length: 3\r\n"));
        let out = rewrite(b"GET / HTTP/1.0\r\n\r\n", BodyKind::None, &fwd());
        assert!(out.contains("Host: 127.0.0.1:9000\r\n"));
    }

    #[test]
    fn response_rewrite() {
        let resp = b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\nSet-Cookie: a=b\r\n\r\n";
        let mut hs = Vec::new();
        let head = parse_response(resp, &mut hs, &Limits::default()).unwrap();
        let mut out = Vec::new();
        client_response(
            resp,
            &head,
            &hs,
            BodyKind::Chunked,
            ConnectionHeader::Close,
            HeadEdits {
                date: Some(&DateLine::at(0)),
                via: true,
                cache_status: None,
                ..HeadEdits::default()
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nVia: 1.1 ringway\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        // The upstream's own Date is kept, and not doubled.
        let dated =
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n";
        let head = parse_response(dated, &mut hs, &Limits::default()).unwrap();
        let mut out = Vec::new();
        let d = DateLine::at(0);
        client_response(
            dated,
            &head,
            &hs,
            BodyKind::Length(0),
            ConnectionHeader::Omit,
            HeadEdits {
                date: Some(&d),
                via: true,
                cache_status: None,
                ..HeadEdits::default()
            },
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches("Date:").count(), 1, "{s}");
        assert!(s.contains("1994"));
        let head = parse_response(resp, &mut hs, &Limits::default()).unwrap();
        let mut out = Vec::new();
        client_response(
            resp,
            &head,
            &hs,
            BodyKind::None,
            ConnectionHeader::KeepAlive,
            HeadEdits {
                date: None,
                via: false,
                cache_status: None,
                ..HeadEdits::default()
            },
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("Content-Length: 5\r\n") && s.ends_with("Connection: keep-alive\r\n\r\n")
        );
    }

    #[test]
    fn anonymity_levels() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\nVia: 1.1 inner\r\n\
Forwarded: for=192.0.2.7\r\nX-Real-IP: 192.0.2.7\r\nX-Keep: 1\r\n\r\n";
        let with = |policy| rewrite(req, BodyKind::None, &Forwarding { policy, ..fwd() });
        let t = with(ForwardingPolicy::TRANSPARENT);
        assert!(
            t.contains("X-Forwarded-For: 192.0.2.7, 10.1.2.3\r\n"),
            "{t}"
        );
        assert!(t.contains("Via: 1.1 inner\r\n") && t.contains("Via: 1.1 ringway\r\n"));
        assert!(!t.contains("X-Forwarded-Proto"));
        let a = with(ForwardingPolicy::ANONYMOUS);
        assert!(a.contains("Via: 1.1 ringway\r\n"), "{a}");
        for gone in ["192.0.2.7", "10.1.2.3", "inner", "Forwarded", "X-Real-IP"] {
            assert!(!a.contains(gone), "anonymous shows {gone}: {a}");
        }
        let e = with(ForwardingPolicy::ELITE);
        for gone in [
            "192.0.2.7",
            "10.1.2.3",
            "Via",
            "Forwarded",
            "X-Real-IP",
            "ringway",
        ] {
            assert!(!e.contains(gone), "elite shows {gone}: {e}");
        }
        assert!(e.contains("X-Keep: 1\r\n") && e.contains("Host: a\r\n"));
        // Every field that names a client or a proxy on the way goes, whoever wrote it.
        let spoofed = b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-IP: 192.0.2.7\r\n\
True-Client-IP: 192.0.2.7\r\nCF-Connecting-IP: 192.0.2.7\r\nClient-IP: 192.0.2.7\r\n\
X-Originating-IP: 192.0.2.7\r\nX-Cluster-Client-IP: 192.0.2.7\r\nForwarded-For: 192.0.2.7\r\n\
X-Forwarded: for=192.0.2.7\r\nX-ProxyUser-Ip: 192.0.2.7\r\nX-Forwarded-Server: p\r\n\
X-Forwarded-Port: 3128\r\nX-Forwarded-By: 192.0.2.7\r\n\r\n";
        let policy = ForwardingPolicy::ELITE;
        let e = rewrite(spoofed, BodyKind::None, &Forwarding { policy, ..fwd() });
        assert_eq!(e, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn every_name_connection_lists_is_removed() {
        let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\nConnection: ");
        let names: Vec<String> = (0..40).map(|i| format!("X-Hop-{i}")).collect();
        req.push_str(&names.join(", "));
        req.push_str("\r\n");
        for n in &names {
            req.push_str(&format!("{n}: secret\r\n"));
        }
        req.push_str("X-Keep: 1\r\n\r\n");
        let out = rewrite(req.as_bytes(), BodyKind::None, &fwd());
        assert!(!out.contains("secret"), "{out}");
        assert!(out.contains("X-Keep: 1\r\n"));
    }

    #[test]
    fn response_head_edits_drop_and_add_fields() {
        let buf = b"HTTP/1.1 200 OK\r\nServer: origin\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\n";
        let mut hs = Vec::new();
        let head = crate::http::parse_response(buf, &mut hs, &Default::default()).unwrap();
        let mut out = Vec::new();
        let edits = HeadEdits {
            drop: &[b"x-secret", b"server"],
            add: b"Content-Encoding: gzip\r\n",
            ..HeadEdits::default()
        };
        client_response(
            buf,
            &head,
            &hs,
            BodyKind::Chunked,
            ConnectionHeader::Omit,
            edits,
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }
}
