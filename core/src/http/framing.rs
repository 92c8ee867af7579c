//! Message framing and connection semantics (RFC 9112 §6, §9; RFC 9110 §7.6.1).
//!
//! Given a parsed head, decide how long the body is and what the `Connection`, `Host` and
//! `Expect` fields ask for. The rules are strict where a lenient reading would let two parties
//! disagree on where a message ends: Content-Length together with Transfer-Encoding, two different
//! lengths, a length that is not a plain decimal, or a transfer coding list that does not end in
//! `chunked` are all errors, never guesses.

use std::fmt;

use super::{list_items, Header, Method, RequestHead, ResponseHead, Span, Version};

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

impl BodyKind {
    pub fn is_empty(self) -> bool {
        matches!(self, Self::None | Self::Length(0))
    }
}

/// A framing fault. [`FramingError::status`] gives the answer a server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.3 item 3: a smuggling signature).
    LengthAndTransferEncoding,
    /// A Content-Length value that is not 1*DIGIT or overflows.
    BadContentLength,
    /// Several Content-Length values that differ.
    ConflictingContentLength,
    /// A Transfer-Encoding whose final coding is not `chunked`, or `chunked` twice.
    ChunkedNotFinal,
    /// A transfer coding other than `chunked` before it (gzip, chunked): valid but not done here.
    UnsupportedTransferCoding,
    /// Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1: framing is faulty).
    TransferEncodingInHttp10,
    /// An HTTP/1.1 request without Host.
    MissingHost,
    /// More than one Host field.
    MultipleHost,
    /// A Host value that is not a valid authority.
    BadHost,
    /// An Expect value other than `100-continue`.
    UnsupportedExpectation,
}

impl FramingError {
    pub fn status(self) -> u16 {
        match self {
            Self::UnsupportedTransferCoding => 501,
            Self::UnsupportedExpectation => 417,
            _ => 400,
        }
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LengthAndTransferEncoding => "both Content-Length and Transfer-Encoding",
            Self::BadContentLength => "invalid Content-Length",
            Self::ConflictingContentLength => "conflicting Content-Length values",
            Self::ChunkedNotFinal => "Transfer-Encoding does not end in chunked",
            Self::UnsupportedTransferCoding => "unsupported transfer coding",
            Self::TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 message",
            Self::MissingHost => "missing Host header",
            Self::MultipleHost => "more than one Host header",
            Self::BadHost => "invalid Host header",
            Self::UnsupportedExpectation => "unsupported Expect value",
        })
    }
}

impl std::error::Error for FramingError {}

/// What the `Connection` field (and the version) say about the connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl ConnectionOptions {
    /// Whether the sender wants the connection kept open after this message.
    pub fn persistent(self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.close,
            Version::Http10 => self.keep_alive && !self.close,
        }
    }
}

/// Everything about a request beyond its head line that the proxy acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub body: BodyKind,
    pub connection: ConnectionOptions,
    pub expect_continue: bool,
    /// The Host field's value, if present.
    pub host: Option<Span>,
}

/// Everything about a response beyond its status line that the proxy acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseInfo {
    pub body: BodyKind,
    pub connection: ConnectionOptions,
}

/// Header facts gathered in one pass.
#[derive(Default)]
struct Scan {
    length: Option<u64>,
    transfer_encoding: bool,
    chunked_count: u32,
    last_is_chunked: bool,
    other_coding: bool,
    empty_coding: bool,
    connection: ConnectionOptions,
    expect: Option<Span>,
    host: Option<Span>,
    hosts: usize,
}

fn scan(buf: &[u8], headers: &[Header]) -> Result<Scan, FramingError> {
    let mut s = Scan::default();
    for h in headers {
        let name = h.name.get(buf);
        let value = h.value.get(buf);
        if super::name_is(name, b"content-length") {
            for item in value.split(|&b| b == b',') {
                let n = parse_length(super::trim_ows(item))?;
                match s.length {
                    Some(prev) if prev != n => return Err(FramingError::ConflictingContentLength),
                    _ => s.length = Some(n),
                }
            }
        } else if super::name_is(name, b"transfer-encoding") {
            s.transfer_encoding = true;
            let mut any = false;
            for coding in list_items(value) {
                any = true;
                // Parameters are not allowed on chunked: compare the whole element.
                if coding.eq_ignore_ascii_case(b"chunked") {
                    s.chunked_count += 1;
                    s.last_is_chunked = true;
                } else {
                    s.other_coding = true;
                    s.last_is_chunked = false;
                }
            }
            if !any {
                s.last_is_chunked = false;
                s.empty_coding = true;
            }
        } else if super::name_is(name, b"connection") {
            for opt in list_items(value) {
                if opt.eq_ignore_ascii_case(b"close") {
                    s.connection.close = true;
                } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                    s.connection.keep_alive = true;
                } else if opt.eq_ignore_ascii_case(b"upgrade") {
                    s.connection.upgrade = true;
                }
            }
        } else if super::name_is(name, b"host") {
            s.hosts += 1;
            s.host = Some(h.value);
        } else if super::name_is(name, b"expect") {
            s.expect = Some(h.value);
        }
    }
    Ok(s)
}

/// `1*DIGIT`, no sign, no whitespace inside, no overflow.
fn parse_length(v: &[u8]) -> Result<u64, FramingError> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(FramingError::BadContentLength);
    }
    Ok(v.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

/// A Host value must be `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2): an IP
/// literal in brackets, or a reg-name / IPv4 address of unreserved, percent-encoded and
/// sub-delim characters; then digits only after a colon. No whitespace, slash, `@`, second colon
/// or other delimiter that would let the routing view of the host differ from the upstream's
/// (`::1:8080` and `a:8o` are refused).
fn valid_host(v: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(inner) = v.strip_prefix(b"[") {
        let Some(close) = inner.iter().position(|&b| b == b']') else {
            return false;
        };
        let lit = &inner[..close];
        let ok = !lit.is_empty()
            && lit
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            && std::str::from_utf8(lit).is_ok_and(|t| t.parse::<std::net::Ipv6Addr>().is_ok());
        // IPvFuture: "v" HEXDIG "." ...
        let future = lit.len() > 2
            && lit[0].eq_ignore_ascii_case(&b'v')
            && lit.iter().skip(1).all(|&b| reg_name_char(b) || b == b':');
        (ok || future, &inner[close + 1..])
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        (v[..end].iter().all(|&b| reg_name_char(b)), &v[end..])
    };
    let port_ok = match rest.split_first() {
        None => true,
        Some((b':', port)) => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}

/// unreserved / pct-encoded / sub-delims (RFC 3986 reg-name).
fn reg_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'.' | b'-'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// Framing and connection semantics of a request.
pub fn request_info(
    buf: &[u8],
    head: &RequestHead,
    headers: &[Header],
) -> Result<RequestInfo, FramingError> {
    let s = scan(buf, headers)?;
    if s.hosts > 1 {
        return Err(FramingError::MultipleHost);
    }
    if s.hosts == 0 && head.version == Version::Http11 {
        return Err(FramingError::MissingHost);
    }
    if let Some(h) = s.host {
        if !valid_host(h.get(buf)) {
            return Err(FramingError::BadHost);
        }
    }
    let body = body_from_fields(&s, head.version)?.unwrap_or(BodyKind::None);
    let expect_continue = match s.expect {
        None => false,
        Some(v) if v.get(buf).eq_ignore_ascii_case(b"100-continue") => {
            head.version == Version::Http11
        }
        Some(_) => return Err(FramingError::UnsupportedExpectation),
    };
    Ok(RequestInfo {
        body,
        connection: s.connection,
        expect_continue,
        host: s.host,
    })
}

fn body_from_fields(s: &Scan, version: Version) -> Result<Option<BodyKind>, FramingError> {
    if s.transfer_encoding {
        if version == Version::Http10 {
            return Err(FramingError::TransferEncodingInHttp10);
        }
        if s.length.is_some() {
            return Err(FramingError::LengthAndTransferEncoding);
        }
        if !s.last_is_chunked || s.chunked_count != 1 || s.empty_coding {
            return Err(FramingError::ChunkedNotFinal);
        }
        if s.other_coding {
            return Err(FramingError::UnsupportedTransferCoding);
        }
        return Ok(Some(BodyKind::Chunked));
    }
    Ok(s.length.map(BodyKind::Length))
}

/// Framing and connection semantics of a response to a request with `method`.
pub fn response_info(
    buf: &[u8],
    head: &ResponseHead,
    headers: &[Header],
    method: Method,
) -> Result<ResponseInfo, FramingError> {
    let s = scan(buf, headers)?;
    // RFC 9112 §6.3: no content after HEAD, 1xx, 204, 304, or a 2xx to CONNECT (the
    // connection is a tunnel from the empty line on).
    let no_body = method == Method::Head
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304
        || (method == Method::Connect && (200..300).contains(&head.status));
    let body = if no_body {
        BodyKind::None
    } else {
        body_from_fields(&s, head.version)?.unwrap_or(BodyKind::Close)
    };
    Ok(ResponseInfo {
        body,
        connection: s.connection,
    })
}

/// Most interim (1xx) responses relayed before a final one.
pub const MAX_INTERIM: usize = 16;

/// What an exchange may still accept of interim (1xx) responses: an upstream that sends them
/// without end is cut off instead of being relayed forever.
#[derive(Clone, Copy, Debug)]
pub struct InterimBudget {
    count: usize,
    bytes: usize,
    max_bytes: usize,
}

impl InterimBudget {
    /// At most [`MAX_INTERIM`] responses and `max_bytes` bytes of their heads in all.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            count: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Counts one interim head of `len` bytes; false once the budget is spent (answer 502).
    #[must_use]
    pub fn admit(&mut self, len: usize) -> bool {
        self.count += 1;
        self.bytes = self.bytes.saturating_add(len);
        self.count <= MAX_INTERIM && self.bytes <= self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, parse_response, Limits};

    fn req(b: &[u8]) -> Result<RequestInfo, FramingError> {
        let mut hs = Vec::new();
        let head = parse_request(b, &mut hs, &Limits::default()).unwrap();
        request_info(b, &head, &hs)
    }

    fn resp(b: &[u8], m: Method) -> Result<ResponseInfo, FramingError> {
        let mut hs = Vec::new();
        let head = parse_response(b, &mut hs, &Limits::default()).unwrap();
        response_info(b, &head, &hs, m)
    }

    #[test]
    fn request_bodies() {
        use BodyKind::*;
        let ok: &[(&[u8], BodyKind)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
                Length(10),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\n\r\n",
                Length(7),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n",
                Length(7),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Chunked,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
                Chunked,
            ),
            (b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n", Length(0)),
        ];
        for (b, want) in ok {
            assert_eq!(
                req(b).unwrap().body,
                *want,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn smuggling_vectors_rejected() {
        use FramingError::*;
        let bad: &[(&[u8], FramingError)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", LengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", LengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", ConflictingContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", ConflictingContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", ChunkedNotFinal),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", ChunkedNotFinal),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", ChunkedNotFinal),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", ChunkedNotFinal),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", ChunkedNotFinal),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", ChunkedNotFinal),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferCoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingInHttp10),
            (b"GET / HTTP/1.1\r\n\r\n", MissingHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", MultipleHost),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: ::1:8080\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: example.test:8o\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: [zz]:80\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", UnsupportedExpectation),
        ];
        for (b, want) in bad {
            assert_eq!(req(b), Err(*want), "{}", String::from_utf8_lossy(b));
        }
        assert_eq!(UnsupportedTransferCoding.status(), 501);
        assert_eq!(LengthAndTransferEncoding.status(), 400);
    }

    #[test]
    fn host_values_that_are_uri_host_and_port() {
        for ok in [
            "a",
            "",
            "example.test:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a:",
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n");
            assert!(req(head.as_bytes()).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn connection_options() {
        let r = req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n").unwrap();
        assert!(r.connection.close && !r.connection.persistent(Version::Http11));
        let r = req(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.connection.persistent(Version::Http10));
        let r = req(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(r.connection.persistent(Version::Http10));
        let r =
            req(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(r.unwrap().expect_continue);
    }

    #[test]
    fn response_bodies() {
        use BodyKind::*;
        assert_eq!(
            resp(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", Method::Get)
                .unwrap()
                .body,
            Length(3)
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                Method::Head
            )
            .unwrap()
            .body,
            None
        );
        assert_eq!(
            resp(b"HTTP/1.1 204 No Content\r\n\r\n", Method::Get)
                .unwrap()
                .body,
            None
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::Get
            )
            .unwrap()
            .body,
            None
        );
        assert_eq!(
            resp(b"HTTP/1.1 100 Continue\r\n\r\n", Method::Post)
                .unwrap()
                .body,
            None
        );
        assert_eq!(
            resp(b"HTTP/1.1 200 OK\r\n\r\n", Method::Get).unwrap().body,
            Close
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Get
            )
            .unwrap()
            .body,
            Chunked
        );
        assert!(resp(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Method::Get
        )
        .is_err());
        assert!(resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            Method::Get
        )
        .is_err());
        assert!(resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            Method::Get
        )
        .is_err());
    }

    #[test]
    fn interim_budget_counts_responses_and_bytes() {
        let mut b = InterimBudget::new(1000);
        for _ in 0..MAX_INTERIM {
            assert!(b.admit(10));
        }
        assert!(!b.admit(10));
        let mut b = InterimBudget::new(100);
        assert!(b.admit(60));
        assert!(!b.admit(60));
    }

    #[test]
    fn a_2xx_to_connect_has_no_body() {
        let b = b"HTTP/1.1 200 Connection established\r\n\r\n";
        assert_eq!(resp(b, Method::Connect).unwrap().body, BodyKind::None);
        assert_eq!(resp(b, Method::Get).unwrap().body, BodyKind::Close);
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            resp(refused, Method::Connect).unwrap().body,
            BodyKind::Length(2)
        );
    }
}
