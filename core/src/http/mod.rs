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

/// Whether a parsed field name is `lower`, in any case. `name` holds only tchar bytes (the
/// parser checked them) and `lower` only lower-case letters, digits and `-`: setting bit 5
/// (`| 0x20`) folds ASCII upper case to lower and leaves those alone, and no other tchar
/// becomes one of them, so eight bytes compare at once. The byte-by-byte
/// `eq_ignore_ascii_case` was most of what scanning a head's framing fields cost (callgrind,
/// docs/benchmarks-log.md run 41).
#[inline]
pub fn name_is(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    debug_assert!(lower
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    let word =
        |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("eight bytes"));
    if n < 8 {
        return name.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b);
    }
    let mut i = 0;
    while i + 8 < n {
        if word(name, i) | FOLD != word(lower, i) {
            return false;
        }
        i += 8;
    }
    // The last eight bytes, overlapping the word before when `n` is not a multiple of 8.
    word(name, n - 8) | FOLD == word(lower, n - 8)
}

/// Whether a parsed field name is one of `set` (see [`name_is`] for what both may hold).
#[inline]
pub fn name_in(set: &[&[u8]], name: &[u8]) -> bool {
    set.iter().any(|s| name_is(name, s))
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

#[cfg(test)]
mod tests {
    use super::chars::TCHAR;

    #[test]
    fn name_is_agrees_with_eq_ignore_ascii_case_for_every_tchar() {
        let names: &[&[u8]] = &[
            b"te",
            b"host",
            b"x-forwarded-for",
            b"connection",
            b"content-length",
            b"transfer-encoding",
            b"if-unmodified-since",
            b"x-client-cert-fingerprint",
            b"a1-b2",
        ];
        for &lower in names {
            assert!(super::name_is(lower, lower));
            assert!(super::name_is(&lower.to_ascii_uppercase(), lower));
            // Every tchar in every position, and each name one byte shorter and longer.
            for at in 0..lower.len() {
                for b in (0..=255u8).filter(|&b| TCHAR[b as usize]) {
                    let mut name = lower.to_vec();
                    name[at] = b;
                    assert_eq!(
                        super::name_is(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{:?} against {:?}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(lower)
                    );
                }
            }
            assert!(!super::name_is(&lower[1..], lower));
            assert!(!super::name_is(&[lower, b"x"].concat(), lower));
        }
    }
}
