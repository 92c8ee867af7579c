//! Every response head the proxy writes itself, from one value and one encoder: its error pages,
//! configured fixed responses, redirects, `OPTIONS` and `TRACE` answers, the `200` that opens a
//! CONNECT tunnel, `100 Continue`, and stored responses (whole, `304`, `206`, `416`).
//!
//! A caller says what the answer is ([`Answer`]) and how the connection goes on
//! ([`ConnectionHeader`]); [`Answer::write`] decides the bytes. Relayed heads (the upstream's
//! response) are written by [`super::rewrite::client_response`] with the same field helpers.

use std::io::Write as _;

use super::date::DateLine;
use super::rewrite::ConnectionHeader;

/// The interim response for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The answer to a connection refused by a connection limit, before any request is read:
/// `503` with `Retry-After: 1`, and the connection closes.
pub fn connection_refusal() -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    Answer::new(503, Content::Page("too many connections"), None)
        .with(b"Retry-After: 1\r\n")
        .write(ConnectionHeader::Close, false, &mut out);
    out
}

/// A response of the proxy's own, as a value.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub status: u16,
    /// A reason phrase other than the usual one for `status`.
    pub reason: Option<&'a str>,
    /// The status line and fields of a stored response to start from (each line with its
    /// CRLF, no blank line), and which of its fields to keep. Its status line is used when
    /// `status` is the stored one.
    pub stored: Option<(&'a [u8], Keep<'a>)>,
    /// Field lines of this answer (each ending in CRLF): `Location`, `Allow`, `Retry-After`,
    /// a challenge, fields meant for one client.
    pub fields: &'a [u8],
    /// `Age` of a stored response.
    pub age: Option<u64>,
    /// Our `Via` (not from an elite forward proxy).
    pub via: bool,
    pub cache_status: Option<CacheStatus<'a>>,
    pub content: Content<'a>,
    /// `Date` from the clock (stored responses carry their own; a CONNECT `200` has none).
    pub date: Option<&'a DateLine>,
    /// A route's response field rules on a stored response: names not passed on, and lines
    /// added (as on the responses it relays).
    pub edits: Option<(&'a [&'a [u8]], &'a [u8])>,
    /// What compression changes in a stored head (the content is then the encoded body).
    pub encoding: Option<crate::compress::HeadEdit>,
    /// The request's id field (name, value): a stored one of that name is replaced.
    pub request_id: Option<(&'a [u8], &'a [u8])>,
}

/// Which fields of a stored head an answer keeps.
#[derive(Clone, Copy, Debug)]
pub enum Keep<'a> {
    All,
    /// Only these (lower-case names).
    Only(&'a [&'a [u8]]),
    /// All but these (lower-case names).
    AllBut(&'a [&'a [u8]]),
}

/// What follows the head, and the fields that describe it.
#[derive(Clone, Copy, Debug)]
pub enum Content<'a> {
    /// No content and no `Content-Length`: a CONNECT `2xx`, `304` (its fields describe the
    /// stored response).
    Bodiless,
    /// The proxy's plain-text page, `STATUS REASON[: detail]\n`.
    Page(&'a str),
    /// These bytes, with this `Content-Type` if any.
    Bytes {
        content_type: Option<&'a str>,
        body: &'a [u8],
    },
    /// A body of this length written after the head by the caller (a stored body).
    Length(u64),
    /// One range of a stored body of `total` bytes: `first..=last`, written by the caller.
    Range { first: u64, last: u64, total: u64 },
    /// `416`: no range of the `total` bytes is satisfiable.
    Unsatisfiable { total: u64 },
    /// `multipart/byteranges` of `len` bytes with this boundary, written by the caller.
    Multipart { boundary: &'a str, len: u64 },
}

/// The `Cache-Status` field (RFC 9211) of a response that went through the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStatus<'a> {
    /// `hit`, or the forward reason (`fwd=miss`, `fwd=stale; fwd-status=304`, …).
    pub detail: &'a str,
    /// The stored response's remaining freshness, when one was used.
    pub ttl: Option<i64>,
    /// The forwarded response is being stored.
    pub stored: bool,
}

impl CacheStatus<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "Cache-Status: ringway; {}", self.detail);
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if self.stored {
            out.extend_from_slice(b"; stored");
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl<'a> Answer<'a> {
    /// A plain-text page naming the problem: `502 Bad Gateway: upstream refused the connection`.
    pub fn page(status: u16, detail: &'a str, date: &'a DateLine) -> Self {
        Self::new(status, Content::Page(detail), Some(date))
    }

    pub fn new(status: u16, content: Content<'a>, date: Option<&'a DateLine>) -> Self {
        Self {
            status,
            reason: None,
            stored: None,
            fields: b"",
            age: None,
            via: false,
            cache_status: None,
            content,
            date,
            edits: None,
            encoding: None,
            request_id: None,
        }
    }

    /// With these field lines.
    pub fn with(mut self, fields: &'a [u8]) -> Self {
        self.fields = fields;
        self
    }

    /// The length of the content that follows the head (what a `GET` would get).
    pub fn content_length(&self) -> u64 {
        match self.content {
            Content::Bodiless | Content::Unsatisfiable { .. } => 0,
            Content::Page(detail) => page_len(self.status, detail) as u64,
            Content::Bytes { body, .. } => body.len() as u64,
            Content::Length(n) => n,
            Content::Range { first, last, .. } => last - first + 1,
            Content::Multipart { len, .. } => len,
        }
    }

    /// The status line (the stored one when the status is the stored response's) and the
    /// stored fields the answer keeps.
    fn write_status_and_stored(&self, vary: &mut bool, out: &mut Vec<u8>) {
        let stored = self.stored.map(|(head, keep)| {
            let line = head.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            (head, line, keep)
        });
        match stored {
            Some((head, line, _)) if stored_status(head) == Some(self.status) => {
                out.extend_from_slice(&head[..line]);
            }
            _ => {
                let r = self.reason.unwrap_or_else(|| reason(self.status));
                let _ = write!(out, "HTTP/1.1 {} {r}\r\n", self.status);
            }
        }
        let Some((head, line, keep)) = stored else {
            return;
        };
        for field in head[line..].split_inclusive(|&b| b == b'\n') {
            let name = field_name(field);
            let kept = match keep {
                Keep::All => true,
                Keep::Only(names) => names.iter().any(|n| name.eq_ignore_ascii_case(n)),
                Keep::AllBut(names) => !names.iter().any(|n| name.eq_ignore_ascii_case(n)),
            };
            let edited = self
                .edits
                .is_some_and(|(drop, _)| drop.iter().any(|n| name.eq_ignore_ascii_case(n)))
                || self
                    .request_id
                    .is_some_and(|(n, _)| name.eq_ignore_ascii_case(n));
            if !kept || edited {
                continue;
            }
            if let Some(e) = &self.encoding {
                if e.field(name, field_value(field), vary, out) {
                    continue;
                }
            }
            out.extend_from_slice(field);
        }
    }

    /// Appends the head, and the content the answer holds (a page, bytes) unless `head_only`
    /// (a response to `HEAD` has the fields a `GET` would get and no content).
    pub fn write(&self, connection: ConnectionHeader, head_only: bool, out: &mut Vec<u8>) {
        let mut vary = false;
        self.write_status_and_stored(&mut vary, out);
        if let Some(e) = &self.encoding {
            e.finish(vary, out);
        }
        out.extend_from_slice(self.fields);
        if let Some((name, id)) = self.request_id {
            super::rewrite::push_field(out, name, id);
        }
        if let Some((_, add)) = self.edits {
            out.extend_from_slice(add);
        }
        if let Some(age) = self.age {
            let _ = write!(out, "Age: {age}\r\n");
        }
        if self.via {
            out.extend_from_slice(b"Via: 1.1 ringway\r\n");
        }
        if let Some(cs) = &self.cache_status {
            cs.write(out);
        }
        match self.content {
            Content::Bodiless => {}
            Content::Page(_) => {
                out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
            }
            Content::Bytes { content_type, .. } => {
                if let Some(t) = content_type {
                    let _ = write!(out, "Content-Type: {t}\r\n");
                }
            }
            Content::Length(_) => {}
            Content::Range { first, last, total } => {
                let _ = write!(out, "Content-Range: bytes {first}-{last}/{total}\r\n");
            }
            Content::Unsatisfiable { total } => {
                let _ = write!(out, "Content-Range: bytes */{total}\r\n");
            }
            Content::Multipart { boundary, .. } => {
                let _ = write!(
                    out,
                    "Content-Type: multipart/byteranges; boundary={boundary}\r\n"
                );
            }
        }
        if !matches!(self.content, Content::Bodiless) && !bodiless(self.status) {
            let _ = write!(out, "Content-Length: {}\r\n", self.content_length());
        }
        if let Some(d) = self.date {
            out.extend_from_slice(d.as_bytes());
        }
        out.extend_from_slice(match connection {
            ConnectionHeader::Omit => b"",
            ConnectionHeader::KeepAlive => b"Connection: keep-alive\r\n",
            ConnectionHeader::Close => b"Connection: close\r\n",
            ConnectionHeader::UpgradeWebsocket => b"Connection: upgrade\r\nUpgrade: websocket\r\n",
        });
        out.extend_from_slice(b"\r\n");
        if head_only || bodiless(self.status) {
            return;
        }
        match self.content {
            Content::Page(detail) => {
                let r = reason(self.status);
                let _ = write!(out, "{} {r}", self.status);
                if !detail.is_empty() {
                    let _ = write!(out, ": {detail}");
                }
                out.push(b'\n');
            }
            Content::Bytes { body, .. } => out.extend_from_slice(body),
            _ => {}
        }
    }
}

/// Statuses whose responses never have content (RFC 9110 §6.4.1).
fn bodiless(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

fn page_len(status: u16, detail: &str) -> usize {
    let r = reason(status);
    3 + 1
        + r.len()
        + if detail.is_empty() {
            0
        } else {
            2 + detail.len()
        }
        + 1
}

/// The status code of a stored head's status line.
fn stored_status(head: &[u8]) -> Option<u16> {
    let code = head.get(9..12)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// The field lines of a stored head (after its status line), each with its CRLF.
pub fn fields(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split_inclusive(|&b| b == b'\n').skip(1)
}

/// The name of a field line.
pub fn field_name(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b':').next().unwrap_or(b"")
}

/// The value of a field line, without surrounding whitespace.
pub fn field_value(line: &[u8]) -> &[u8] {
    let v = line.splitn(2, |&b| b == b':').nth(1).unwrap_or(b"");
    super::trim_ows(v.strip_suffix(b"\r\n").unwrap_or(v))
}

/// Drops the field lines named in `names` (lower-cased) from a stored head.
pub fn strip_fields(head: &mut Vec<u8>, names: &[Vec<u8>]) {
    if names.is_empty() {
        return;
    }
    let mut out = Vec::with_capacity(head.len());
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    if let Some(status) = lines.next() {
        out.extend_from_slice(status);
    }
    for line in lines {
        let n = field_name(line);
        if !names.iter().any(|x| n.eq_ignore_ascii_case(x)) {
            out.extend_from_slice(line);
        }
    }
    *head = out;
}

/// The reason phrase for the status codes the proxy produces (others get an empty phrase).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        _ => "",
    }
}

/// What a client is told when the upstream failed: the status, in words, and nothing of the
/// cause (which goes to the log).
pub fn upstream_failure(status: u16) -> &'static str {
    match status {
        504 => "the upstream server did not answer in time",
        503 => "no upstream server is available",
        _ => "the upstream server could not be reached or did not answer validly",
    }
}

/// A configured fixed response: its fields rendered once at config time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixed {
    pub status: u16,
    /// The configured field lines, each with its CRLF.
    pub fields: Vec<u8>,
    pub body: Vec<u8>,
}

impl Fixed {
    pub fn new(status: u16, headers: &[(String, String)], body: &[u8]) -> Self {
        let mut fields = Vec::new();
        for (k, v) in headers {
            let _ = write!(fields, "{k}: {v}\r\n");
        }
        Self {
            status,
            fields,
            body: if bodiless(status) {
                Vec::new()
            } else {
                body.to_vec()
            },
        }
    }

    /// The answer it makes.
    pub fn answer<'a>(&'a self, date: &'a DateLine) -> Answer<'a> {
        let content = if bodiless(self.status) {
            Content::Bodiless
        } else {
            Content::Bytes {
                content_type: None,
                body: &self.body,
            }
        };
        Answer::new(self.status, content, Some(date)).with(&self.fields)
    }
}

/// The `Location` line of the `301` a `redirect_https` listener answers with:
/// `Location: https://HOST[:PORT]TARGET`, where HOST is the request's host without its port,
/// PORT is omitted when it is 443, and TARGET is the request's path and query as received.
pub fn https_location(host: &[u8], port: u16, target: &[u8]) -> Vec<u8> {
    let name = if host.first() == Some(&b'[') {
        host.iter()
            .position(|&b| b == b']')
            .map_or(host, |i| &host[..=i])
    } else {
        host.iter()
            .rposition(|&b| b == b':')
            .map_or(host, |i| &host[..i])
    };
    let mut location = Vec::with_capacity(name.len() + target.len() + 40);
    location.extend_from_slice(b"Location: https://");
    location.extend_from_slice(name);
    if port != 443 {
        let _ = write!(location, ":{port}");
    }
    location.extend_from_slice(target);
    location.extend_from_slice(b"\r\n");
    location
}

#[cfg(test)]
mod tests {
    use super::*;

    static D: std::sync::LazyLock<DateLine> =
        std::sync::LazyLock::new(|| DateLine::at(784_111_777));

    fn text(a: &Answer<'_>, c: ConnectionHeader, head_only: bool) -> String {
        let mut out = Vec::new();
        a.write(c, head_only, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn redirect_locations() {
        let l = |h: &str, p, t: &str| {
            let loc = https_location(h.as_bytes(), p, t.as_bytes());
            let s = text(
                &Answer::page(301, "moved to https", &D).with(&loc),
                ConnectionHeader::Omit,
                false,
            );
            assert!(s.starts_with("HTTP/1.1 301 Moved Permanently\r\n"), "{s}");
            let loc = s.split("\r\n").find_map(|l| l.strip_prefix("Location: "));
            loc.unwrap().to_string()
        };
        assert_eq!(l("example.com", 443, "/a?b=1"), "https://example.com/a?b=1");
        assert_eq!(l("example.com:8080", 443, "/"), "https://example.com/");
        assert_eq!(
            l("example.com:80", 8443, "/x"),
            "https://example.com:8443/x"
        );
        assert_eq!(l("[::1]:80", 443, "/"), "https://[::1]/");
        assert_eq!(l("[::1]", 8443, "/"), "https://[::1]:8443/");
    }

    #[test]
    fn page_length_is_exact_and_head_keeps_it() {
        let a = Answer::page(502, "upstream refused the connection", &D);
        let s = text(&a, ConnectionHeader::Close, false);
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Connection: close"));
        assert_eq!(body, "502 Bad Gateway: upstream refused the connection\n");
        // HEAD: the same fields, no content.
        let h = text(&a, ConnectionHeader::Close, true);
        assert_eq!(h, format!("{head}\r\n\r\n"));
        let s = text(
            &Answer::page(400, "", &D),
            ConnectionHeader::KeepAlive,
            false,
        );
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.ends_with("Connection: keep-alive"));
    }

    #[test]
    fn fixed() {
        let f = Fixed::new(
            200,
            &[("Content-Type".into(), "text/plain".into())],
            b"hi\n",
        );
        let s = text(&f.answer(&D), ConnectionHeader::Omit, false);
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nhi\n"
        );
        let s = text(&f.answer(&D), ConnectionHeader::Close, true);
        assert!(s.ends_with("Connection: close\r\n\r\n"));
        let s = text(
            &Fixed::new(204, &[], b"x").answer(&D),
            ConnectionHeader::Omit,
            false,
        );
        assert!(
            !s.contains("Content-Length") && s.ends_with("GMT\r\n\r\n"),
            "{s}"
        );
    }

    #[test]
    fn stored_answers() {
        let stored = b"HTTP/1.1 200 Fine\r\nETag: \"a\"\r\nContent-Type: text/html\r\nX-A: 1\r\n";
        let mut a = Answer::new(200, Content::Length(10), None);
        a.stored = Some((stored, Keep::All));
        a.age = Some(3);
        a.via = true;
        a.cache_status = Some(CacheStatus {
            detail: "hit",
            ttl: Some(7),
            stored: false,
        });
        let s = text(&a, ConnectionHeader::Omit, false);
        assert_eq!(
            s,
            "HTTP/1.1 200 Fine\r\nETag: \"a\"\r\nContent-Type: text/html\r\nX-A: 1\r\nAge: 3\r\nVia: 1.1 ringway\r\nCache-Status: ringway; hit; ttl=7\r\nContent-Length: 10\r\n\r\n"
        );
        let mut a = Answer::new(304, Content::Bodiless, None);
        a.stored = Some((stored, Keep::Only(&[b"etag"])));
        let s = text(&a, ConnectionHeader::Close, false);
        assert_eq!(
            s,
            "HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nConnection: close\r\n\r\n"
        );
        let mut a = Answer::new(
            206,
            Content::Range {
                first: 2,
                last: 4,
                total: 10,
            },
            None,
        );
        a.stored = Some((stored, Keep::AllBut(&[b"x-a"])));
        let s = text(&a, ConnectionHeader::Omit, false);
        assert!(s.starts_with("HTTP/1.1 206 Partial Content\r\nETag"), "{s}");
        assert!(s.ends_with("Content-Type: text/html\r\nContent-Range: bytes 2-4/10\r\nContent-Length: 3\r\n\r\n"), "{s}");
        let s = text(
            &Answer::new(416, Content::Unsatisfiable { total: 10 }, None),
            ConnectionHeader::Omit,
            false,
        );
        assert!(
            s.ends_with("Content-Range: bytes */10\r\nContent-Length: 0\r\n\r\n"),
            "{s}"
        );
    }
}
