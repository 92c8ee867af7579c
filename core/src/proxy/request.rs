//! What a request asked for, as the exchange keeps it: its method, version and persistence, its
//! body and how it goes upstream, `Expect`, whether it may be sent again, the upgrade it asks
//! for; and the pieces the exchange's request steps pass around.

use crate::http::framing::{BodyKind, RequestInfo};
use crate::http::{Header, Method, RequestHead, Version};

use super::dispatch::Local;
use super::persist::Persistence;

/// What the current request asked for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Request {
    pub(super) method: Method,
    pub(super) version: Version,
    /// What the client wants for the connection after this exchange.
    pub(super) persist: Persistence,
    /// The body still to come from the client (after what went inline with the head).
    pub(super) body: BodyKind,
    /// How that body is framed upstream.
    pub(super) body_out: BodyKind,
    /// `Expect: 100-continue`, and whether the `100` went out.
    pub(super) expect: Expect,
    /// May go to another server after a failure (idempotent, nothing unrepeatable sent).
    pub(super) resend: Resend,
    /// A WebSocket upgrade the proxy will tunnel after a `101`.
    pub(super) upgrade: Upgrade,
    /// The most body the route accepts.
    pub(super) max_body: Option<u64>,
    /// Where the request stands with the rate limits.
    pub(super) rate: RateStep,
}

/// A request and the rate limits: not yet counted, or counted and let through (after a delay
/// the head is handed over again, and must not be counted twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RateStep {
    Unchecked,
    Admitted,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            method: Method::Get,
            version: Version::Http11,
            persist: Persistence::ClientCloses,
            body: BodyKind::None,
            body_out: BodyKind::None,
            expect: Expect::Nothing,
            resend: Resend::Never,
            upgrade: Upgrade::None,
            max_body: None,
            rate: RateStep::Unchecked,
        }
    }
}

/// What the client expects before it sends its body (RFC 9110 §10.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Nothing,
    /// `100 Continue`, not yet sent.
    Continue,
    /// `100 Continue`, sent.
    Sent,
}

/// Whether the request may be sent again after a failure: idempotent, with nothing sent that
/// cannot be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resend {
    Never,
    Allowed,
}

/// The protocol switch a request asks for that the proxy will carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Upgrade {
    None,
    /// RFC 6455: tunnelled after the `101`.
    WebSocket,
}

/// A request head as parsed, with the input it was parsed from.
#[derive(Clone, Copy)]
pub(super) struct Parsed<'b> {
    /// Everything buffered from the client: the head (`..end`) and what followed it.
    pub(super) input: &'b [u8],
    pub(super) end: usize,
    pub(super) head: RequestHead,
    pub(super) info: RequestInfo,
}

impl<'b> Parsed<'b> {
    /// The head's bytes.
    pub(super) fn buf(&self) -> &'b [u8] {
        &self.input[..self.end]
    }
}

/// The request head of a `TRACE` as it is echoed: as received, less the fields that carry
/// secrets (RFC 9110 §9.3.8).
pub(super) fn trace_echo(head: &[u8]) -> Vec<u8> {
    let mut echo = Vec::with_capacity(head.len());
    for (i, line) in head.split(|&b| b == b'\n').enumerate() {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        let secret = i > 0
            && [&b"authorization"[..], b"proxy-authorization", b"cookie"]
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s));
        if !secret && !line.is_empty() {
            echo.extend_from_slice(line);
            echo.push(b'\n');
        }
    }
    echo
}

/// `Max-Forwards` of a `TRACE` or `OPTIONS` (RFC 9110 §7.6.2): at 0 the proxy answers itself
/// (`Err`); otherwise the count goes on down by one. Other methods: none.
pub(super) fn max_forwards(
    buf: &[u8],
    headers: &[Header],
    method: Method,
) -> Result<Option<u64>, Local<'static>> {
    if !matches!(method, Method::Options | Method::Trace) {
        return Ok(None);
    }
    let n = crate::http::find_header(buf, headers, b"max-forwards")
        .filter(|v| !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit))
        .map(|v| v.iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0')));
    match n {
        Some(0) if method == Method::Trace => Err(Local::Trace),
        Some(0) => Err(Local::Options),
        n => Ok(n.map(|n| n - 1)),
    }
}
