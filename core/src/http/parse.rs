//! Strict, allocation-free parsing of HTTP/1.1 request and response heads (RFC 9112 §2–§5).
//!
//! Parsing is two steps. [`HeadScanner`] looks only at bytes it has not seen before for the blank
//! line that ends a head, so a head that arrives in many small reads costs linear time. Once the
//! head is complete, [`parse_request`] or [`parse_response`] walks it exactly once.
//!
//! Anything that two HTTP implementations could read differently is an error rather than a
//! guess: bare CR or LF, obs-fold, whitespace between a field name and its colon, NUL and other
//! control bytes, non-token method or field names. A proxy that forwards what it cannot read
//! unambiguously is how request smuggling happens.

use std::fmt;

use super::chars::{REASON, TCHAR};
use super::{Header, Method, RequestHead, ResponseHead, Span, TargetForm, Version};

/// Size limits applied while parsing. The defaults match common servers (nginx, HAProxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (request line or status line plus fields), in bytes.
    pub max_head: usize,
    /// Longest request-target, in bytes (longer is 414).
    pub max_target: usize,
    /// Most header fields in one head.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 32 * 1024,
            max_target: 8 * 1024,
            max_headers: 100,
        }
    }
}

/// Why a head was rejected. Each maps to one status code via [`ParseError::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Method is not a token, or is not followed by one SP.
    Method,
    /// Request-target has a byte outside visible ASCII or does not fit its method.
    Target,
    /// HTTP-version is malformed.
    Version,
    /// A syntactically valid version we do not speak (e.g. HTTP/2.0 on an HTTP/1 connection).
    UnsupportedVersion,
    /// Status line is malformed.
    Status,
    /// Field name is not a token or lacks its colon.
    HeaderName,
    /// Whitespace between a field name and its colon (RFC 9112 §5.1: must be rejected).
    SpaceBeforeColon,
    /// Field value holds NUL or another control byte.
    HeaderValue,
    /// A line starting with whitespace (obs-fold, RFC 9112 §5.2).
    ObsFold,
    /// CR not followed by LF.
    BareCr,
    /// LF not preceded by CR.
    BareLf,
    /// The head is larger than [`Limits::max_head`].
    HeadTooLarge,
    /// More fields than [`Limits::max_headers`].
    TooManyHeaders,
    /// Request-target longer than [`Limits::max_target`].
    TargetTooLong,
}

impl ParseError {
    /// The status code a server answers this error with.
    pub fn status(self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::TargetTooLong => 414,
            Self::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Method => "invalid method",
            Self::Target => "invalid request target",
            Self::Version => "invalid HTTP version",
            Self::UnsupportedVersion => "unsupported HTTP version",
            Self::Status => "invalid status line",
            Self::HeaderName => "invalid header name",
            Self::SpaceBeforeColon => "whitespace before colon in header",
            Self::HeaderValue => "invalid byte in header value",
            Self::ObsFold => "obsolete line folding",
            Self::BareCr => "bare CR",
            Self::BareLf => "bare LF",
            Self::HeadTooLarge => "head too large",
            Self::TooManyHeaders => "too many headers",
            Self::TargetTooLong => "request target too long",
        })
    }
}

impl std::error::Error for ParseError {}

/// Outcome of one [`HeadScanner::scan`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The head ends at this offset (just past its blank line).
    Complete(usize),
    /// More bytes are needed.
    Partial,
}

/// Finds the end of a head across reads without rescanning bytes it has already seen.
///
/// Call [`scan`](Self::scan) with the whole buffer each time more bytes arrive; call
/// [`reset`](Self::reset) before the next message.
#[derive(Clone, Debug, Default)]
pub struct HeadScanner {
    scanned: usize,
    /// Leading empty lines skipped (RFC 9112 §2.2 allows a server to ignore them).
    start: usize,
    /// The first line has been seen whole and looks like a start line.
    line_checked: bool,
}

impl HeadScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Has any byte of a message (beyond leading empty lines) arrived?
    pub fn started(&self, buf: &[u8]) -> bool {
        buf.len() > self.start
    }

    /// Looks for the end of the head in `buf`, which holds all bytes of the message so far.
    ///
    /// One SIMD search for the blank line over the bytes not seen before (plus the three before
    /// them, in case the terminator straddles two reads).
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Scan, ParseError> {
        if self.scanned <= self.start + 1 {
            // Empty lines before the request line (RFC 9112 §2.2 lets a server ignore them).
            while buf[self.start..].starts_with(b"\r\n") {
                self.start += 2;
            }
            self.scanned = self.start;
        }
        if !self.line_checked {
            self.check_start_line(buf)?;
        }
        let from = self.scanned.saturating_sub(3).max(self.start);
        if let Some(i) = super::simd::find_blank_line(buf, from) {
            let end = i + 4;
            if end - self.start > limits.max_head {
                return Err(self.overflow(buf, limits));
            }
            self.scanned = end;
            return Ok(Scan::Complete(end));
        }
        // A head whose lines end in a bare LF would never show CRLF CRLF: refuse it as soon as
        // its blank line arrives instead of waiting for a timeout.
        if memchr::memmem::find(
            &buf[self.scanned.saturating_sub(1).max(self.start)..],
            b"\n\n",
        )
        .is_some()
            || buf.get(self.start) == Some(&b'\n')
        {
            return Err(ParseError::BareLf);
        }
        self.scanned = buf.len();
        if buf.len() - self.start > limits.max_head {
            return Err(self.overflow(buf, limits));
        }
        Ok(Scan::Partial)
    }

    /// Once the first line is whole: a request line must end in ` HTTP/x.y` and a status line
    /// start with `HTTP/`. Anything else (`GET /` alone, an HTTP/0.9 request) is refused at
    /// once rather than waiting for header lines that will never come.
    fn check_start_line(&mut self, buf: &[u8]) -> Result<(), ParseError> {
        let Some(lf) = memchr::memchr(b'\n', &buf[self.start..]) else {
            return Ok(());
        };
        self.line_checked = true;
        let line = &buf[self.start..self.start + lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let request = line.len() >= 9 && line[line.len() - 9..].starts_with(b" HTTP/");
        if request || line.starts_with(b"HTTP/") {
            Ok(())
        } else {
            Err(ParseError::Version)
        }
    }

    /// 414 when the request line alone is over the target limit, else 431.
    fn overflow(&self, buf: &[u8], limits: &Limits) -> ParseError {
        let line = &buf[self.start..];
        let line_len = memchr::memchr(b'\n', line).unwrap_or(line.len());
        if line_len > limits.max_target {
            ParseError::TargetTooLong
        } else {
            ParseError::HeadTooLarge
        }
    }
}

/// A cursor over one complete head.
struct Cursor<'b> {
    buf: &'b [u8],
    pos: usize,
}

impl Cursor<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    #[inline]
    fn take_while(&mut self, table: &[bool; 256]) -> Span {
        let start = self.pos;
        let rest = &self.buf[start..];
        self.pos += rest
            .iter()
            .position(|&b| !table[b as usize])
            .unwrap_or(rest.len());
        Span::new(start, self.pos)
    }

    #[inline]
    fn expect(&mut self, b: u8, err: ParseError) -> Result<(), ParseError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(err)
        }
    }

    /// Consumes CRLF, naming the fault when the line ends any other way.
    #[inline]
    fn crlf(&mut self, other: ParseError) -> Result<(), ParseError> {
        match (self.peek(), self.buf.get(self.pos + 1)) {
            (Some(b'\r'), Some(b'\n')) => {
                self.pos += 2;
                Ok(())
            }
            (Some(b'\r'), _) => Err(ParseError::BareCr),
            (Some(b'\n'), _) => Err(ParseError::BareLf),
            _ => Err(other),
        }
    }

    fn skip_ows(&mut self) {
        while let Some(b' ' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// `HTTP/x.y`.
    fn version(&mut self) -> Result<Version, ParseError> {
        let v = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or(ParseError::Version)?;
        if &v[..5] != b"HTTP/" || !v[5].is_ascii_digit() || v[6] != b'.' || !v[7].is_ascii_digit() {
            return Err(ParseError::Version);
        }
        self.pos += 8;
        match (v[5], v[7]) {
            (b'1', b'0') => Ok(Version::Http10),
            (b'1', _) => Ok(Version::Http11),
            _ => Err(ParseError::UnsupportedVersion),
        }
    }

    /// A field name and its colon. The colon is found with one SIMD search and the name checked
    /// without a data-dependent branch per byte; only a bad name takes the slow path that says
    /// what is wrong with it.
    #[inline]
    fn field_name(&mut self) -> Result<Span, ParseError> {
        let rest = &self.buf[self.pos..];
        // Most names fit in one 16-byte block; longer ones go to memchr.
        let colon = match super::simd::find_byte_in_block(rest, b':') {
            Some(c) => c,
            None if rest.len() > 16 => {
                memchr::memchr(b':', &rest[16..]).map_or(rest.len(), |c| c + 16)
            }
            None => rest.len(),
        };
        let name = &rest[..colon];
        let all_tchar = name.iter().fold(true, |ok, &b| ok & TCHAR[b as usize]);
        if all_tchar && colon > 0 && colon < rest.len() {
            let span = Span::new(self.pos, self.pos + colon);
            self.pos += colon + 1;
            return Ok(span);
        }
        let bad = name
            .iter()
            .position(|&b| !TCHAR[b as usize])
            .unwrap_or(colon);
        Err(match name.get(bad) {
            Some(b' ' | b'\t')
                if bad > 0 && name[bad..].iter().all(|&b| b == b' ' || b == b'\t') =>
            {
                ParseError::SpaceBeforeColon
            }
            Some(b'\n') => ParseError::BareLf,
            _ => ParseError::HeaderName,
        })
    }

    /// Header fields up to and including the blank line.
    fn fields(&mut self, headers: &mut Vec<Header>, limits: &Limits) -> Result<(), ParseError> {
        headers.clear();
        loop {
            match self.peek() {
                Some(b'\r') => {
                    self.crlf(ParseError::HeaderName)?;
                    return Ok(());
                }
                Some(b' ' | b'\t') => return Err(ParseError::ObsFold),
                _ => {}
            }
            let name = self.field_name()?;
            self.skip_ows();
            let start = self.pos;
            self.pos = super::chars::field_value_end(self.buf, start);
            let mut value = Span::new(start, self.pos);
            self.crlf(ParseError::HeaderValue)?;
            while value.end > value.start
                && matches!(self.buf[value.end as usize - 1], b' ' | b'\t')
            {
                value.end -= 1;
            }
            if headers.len() == limits.max_headers {
                return Err(ParseError::TooManyHeaders);
            }
            headers.push(Header { name, value });
        }
    }
}

/// Parses a complete request head. `buf` starts at the message (leading empty lines allowed) and
/// must contain the whole head; `headers` is cleared and refilled with spans into `buf`.
pub fn parse_request(
    buf: &[u8],
    headers: &mut Vec<Header>,
    limits: &Limits,
) -> Result<RequestHead, ParseError> {
    let mut c = Cursor { buf, pos: 0 };
    while buf[c.pos..].starts_with(b"\r\n") {
        c.pos += 2;
    }
    let method_span = c.take_while(&TCHAR);
    if method_span.is_empty() {
        return Err(ParseError::Method);
    }
    c.expect(b' ', ParseError::Method)?;
    let target_start = c.pos;
    c.pos = super::chars::target_end(buf, target_start);
    let target = Span::new(target_start, c.pos);
    if target.len() > limits.max_target {
        return Err(ParseError::TargetTooLong);
    }
    if target.is_empty() {
        return Err(ParseError::Target);
    }
    c.expect(b' ', ParseError::Target)?;
    let version = c.version()?;
    c.crlf(ParseError::Version)?;
    let method = Method::from_bytes(method_span.get(buf));
    let form = target_form(method, target, buf)?;
    c.fields(headers, limits)?;
    if c.pos - method_span.start as usize > limits.max_head {
        return Err(ParseError::HeadTooLarge);
    }
    Ok(RequestHead {
        method,
        method_span,
        target,
        form,
        version,
        len: c.pos,
    })
}

fn target_form(method: Method, target: Span, buf: &[u8]) -> Result<TargetForm, ParseError> {
    let t = target.get(buf);
    if method == Method::Connect {
        // authority-form: host ":" port, nothing else.
        let colon = t
            .iter()
            .rposition(|&b| b == b':')
            .ok_or(ParseError::Target)?;
        let port = &t[colon + 1..];
        if colon == 0 || port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::Target);
        }
        if t.iter().any(|&b| matches!(b, b'/' | b'?' | b'#' | b'@')) {
            return Err(ParseError::Target);
        }
        return Ok(TargetForm::Authority);
    }
    if t == b"*" {
        return if method == Method::Options {
            Ok(TargetForm::Asterisk)
        } else {
            Err(ParseError::Target)
        };
    }
    if t[0] == b'/' {
        return Ok(TargetForm::Origin);
    }
    let scheme_len = if t.len() >= 7 && t[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if t.len() >= 8 && t[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return Err(ParseError::Target);
    };
    let rest = &t[scheme_len..];
    let auth_len = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    if auth_len == 0 || rest[..auth_len].contains(&b'@') {
        // userinfo in an http(s) URI is deprecated (RFC 9110 §4.2.4) and a classic spoofing trick.
        return Err(ParseError::Target);
    }
    let a = target.start as usize + scheme_len;
    Ok(TargetForm::Absolute {
        authority: Span::new(a, a + auth_len),
        path: Span::new(a + auth_len, target.end as usize),
    })
}

/// Parses a complete response head (status line and fields).
pub fn parse_response(
    buf: &[u8],
    headers: &mut Vec<Header>,
    limits: &Limits,
) -> Result<ResponseHead, ParseError> {
    let mut c = Cursor { buf, pos: 0 };
    let version = c.version().map_err(|e| match e {
        ParseError::UnsupportedVersion => e,
        _ => ParseError::Status,
    })?;
    c.expect(b' ', ParseError::Status)?;
    let code = buf.get(c.pos..c.pos + 3).ok_or(ParseError::Status)?;
    if !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' {
        return Err(ParseError::Status);
    }
    let status = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    c.pos += 3;
    let reason = match c.peek() {
        Some(b' ') => {
            c.pos += 1;
            c.take_while(&REASON)
        }
        _ => Span::new(c.pos, c.pos),
    };
    c.crlf(ParseError::Status)?;
    c.fields(headers, limits)?;
    Ok(ResponseHead {
        version,
        status,
        reason,
        len: c.pos,
    })
}

#[cfg(test)]
mod tests;
