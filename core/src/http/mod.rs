//! HTTP/1.1 message syntax (RFC 9112): heads, framing, chunked coding, rewriting.
//!
//! The parser never allocates for the bytes it reads: a parsed head is a set of [`Span`]s into
//! the caller's read buffer. Header storage is a `Vec` the caller keeps and reuses, so after the
//! first request of a connection parsing costs no allocation at all.

pub mod answer;
pub mod body;
pub mod chars;
pub mod chunked;
pub mod date;
pub mod framing;
pub mod parse;
pub mod path;
pub mod range;
pub mod rewrite;
mod simd;

pub use parse::{parse_request, parse_response, HeadScanner, Limits, ParseError, Scan};

/// A byte range `start..end` into the buffer a head was parsed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= u32::MAX as usize);
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes this span covers in `buf`. `buf` must be the buffer the span was made from.
    #[inline]
    pub fn get<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One header field: name and value (value without surrounding whitespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub name: Span,
    pub value: Span,
}

/// The request methods the proxy gives meaning to; anything else is `Other` (still forwarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Self {
        match m {
            b"GET" => Self::Get,
            b"HEAD" => Self::Head,
            b"POST" => Self::Post,
            b"PUT" => Self::Put,
            b"DELETE" => Self::Delete,
            b"CONNECT" => Self::Connect,
            b"OPTIONS" => Self::Options,
            b"TRACE" => Self::Trace,
            b"PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }

    /// Idempotent per RFC 9110 §9.2.2: safe to send again when the first attempt got no answer.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Self::Get | Self::Head | Self::Put | Self::Delete | Self::Options | Self::Trace
        )
    }
}

/// HTTP/1.x minor version. Later 1.x minors are handled as 1.1 (RFC 9110 §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// The four request-target forms of RFC 9112 §3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`; `authority` and `path` are sub-spans of the target.
    Absolute { authority: Span, path: Span },
    /// `host:port`, only with CONNECT.
    Authority,
    /// `*`, only with OPTIONS.
    Asterisk,
}

/// A parsed request head. Spans point into the buffer given to [`parse_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub method_span: Span,
    pub target: Span,
    pub form: TargetForm,
    pub version: Version,
    /// Bytes from the start of the buffer to the end of the blank line.
    pub len: usize,
}

/// A parsed response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub reason: Span,
    pub len: usize,
}

/// Finds the first header named `name` (ASCII case-insensitive).
pub fn find_header<'b>(buf: &'b [u8], headers: &[Header], name: &[u8]) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(buf))
}

/// Splits a comma-separated field value into trimmed, non-empty elements (RFC 9110 §5.6.1).
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

/// Trims optional whitespace (SP / HTAB) on both sides.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
