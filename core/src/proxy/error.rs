//! Why an exchange failed: whose fault it was, whether a retry is allowed, and what status the
//! client gets for it. io reports what it observed as an [`UpstreamError`] or a [`BodyFail`];
//! the exchange turns it into an [`Error`].

use std::fmt;

use crate::http::body::BodyError;
use crate::http::framing::FramingError;
use crate::http::ParseError;

/// Whose fault a failure was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client: a malformed or too slow request, or it went away.
    Downstream,
    /// The upstream server: unreachable, slow, or an invalid or unwanted answer.
    Upstream,
    /// This proxy (nothing to route to, no server available).
    Internal,
}

/// What io saw go wrong on the upstream side of an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// Connecting (or its TLS handshake) did not finish in time.
    ConnectTimeout,
    /// The connection was refused or failed.
    ConnectFailed(String),
    /// The TLS handshake with the server failed (the text says so: "TLS handshake: …").
    Tls(String),
    /// Writing the request head (or body) failed or stalled.
    WriteFailed(String),
    WriteTimeout,
    /// No response head in time.
    ReadTimeout,
    /// The server closed (or reset) the connection before sending a byte of its response.
    ClosedEarly,
    /// The server closed partway through its response head.
    Truncated,
    /// Reading the response head failed.
    ReadFailed(String),
    /// The response head is malformed or too large.
    Invalid(ParseError),
    /// The response's framing fields are contradictory or invalid.
    InvalidFraming(FramingError),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectTimeout => f.write_str("connect timed out"),
            Self::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            Self::Tls(e) => f.write_str(e),
            Self::WriteFailed(e) => write!(f, "sending the request: {e}"),
            Self::WriteTimeout => f.write_str("sending the request timed out"),
            Self::ReadTimeout => f.write_str("timed out"),
            Self::ClosedEarly => f.write_str("closed the connection before responding"),
            Self::Truncated => f.write_str("closed the connection partway through its head"),
            Self::ReadFailed(e) => write!(f, "connection failed: {e}"),
            Self::Invalid(e) => write!(f, "sent an invalid response: {e}"),
            Self::InvalidFraming(e) => write!(f, "sent an invalid response: {e}"),
        }
    }
}

/// Which end of a body relay failed, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyFail {
    /// The sender's bytes: truncated or badly framed.
    Source(BodyError),
    /// Reading the sender timed out between two reads.
    SourceTimeout,
    /// Reading the sender failed (reset).
    SourceIo(String),
    /// Writing to the receiver failed or timed out.
    Destination(String),
}

impl fmt::Display for BodyFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(e) => write!(f, "reading body: {e}"),
            Self::SourceTimeout => f.write_str("reading body: timed out"),
            Self::SourceIo(e) => write!(f, "reading body: {e}"),
            Self::Destination(e) => write!(f, "writing body: {e}"),
        }
    }
}

/// Why an exchange did not end with a response relayed whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The request head or its framing is invalid (status from the parser).
    BadRequest { status: u16, detail: String },
    /// The request head did not arrive in time.
    HeadTimeout,
    /// The request body was badly framed, stalled, or cut short.
    RequestBody(BodyFail),
    /// The client went away or stopped reading.
    ClientGone,
    /// An upstream attempt failed before a response was relayed.
    Upstream(UpstreamError),
    /// The upstream answered with a status listed in `retry_on`.
    RetryStatus(u16),
    /// More interim responses than allowed.
    TooManyInterim,
    /// The upstream answered 101 on a route that does not allow upgrades.
    SwitchedProtocols,
    /// The response body failed after its head had gone out.
    ResponseBody(BodyFail),
    /// No server of the group could be used.
    NoServer,
}

impl Error {
    pub fn fault(&self) -> Fault {
        match self {
            Self::BadRequest { .. } | Self::HeadTimeout | Self::ClientGone => Fault::Downstream,
            Self::RequestBody(BodyFail::Destination(_)) => Fault::Upstream,
            Self::RequestBody(_) => Fault::Downstream,
            Self::ResponseBody(BodyFail::Destination(_)) => Fault::Downstream,
            Self::ResponseBody(_)
            | Self::Upstream(_)
            | Self::RetryStatus(_)
            | Self::TooManyInterim
            | Self::SwitchedProtocols => Fault::Upstream,
            Self::NoServer => Fault::Internal,
        }
    }

    /// Whether the request may go to another server after this (given that nothing was sent
    /// that cannot be sent again, which the exchange checks).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Upstream(e) => !matches!(
                e,
                UpstreamError::Invalid(_) | UpstreamError::InvalidFraming(_)
            ),
            Self::RetryStatus(_) => true,
            _ => false,
        }
    }

    /// The status the client gets, when a response can still be sent.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { status, .. } => *status,
            Self::HeadTimeout => 408,
            Self::RequestBody(BodyFail::SourceTimeout) => 408,
            Self::RequestBody(BodyFail::Destination(_)) => 502,
            Self::RequestBody(BodyFail::Source(crate::http::body::BodyError::TooLarge)) => 413,
            Self::RequestBody(_) => 400,
            Self::Upstream(UpstreamError::ConnectTimeout)
            | Self::Upstream(UpstreamError::WriteTimeout)
            | Self::Upstream(UpstreamError::ReadTimeout) => 504,
            Self::NoServer => 503,
            Self::ClientGone => 400,
            _ => 502,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest { detail, .. } => f.write_str(detail),
            Self::HeadTimeout => f.write_str("timed out reading the request head"),
            Self::RequestBody(BodyFail::SourceTimeout) => {
                f.write_str("timed out reading the request body")
            }
            Self::RequestBody(BodyFail::Destination(e)) => {
                write!(f, "upstream failed while receiving the request body: {e}")
            }
            Self::RequestBody(e) => write!(f, "request {e}"),
            Self::ClientGone => f.write_str("the client went away"),
            Self::Upstream(e) => write!(f, "upstream {e}"),
            Self::RetryStatus(s) => write!(f, "upstream answered {s}; trying another server"),
            Self::TooManyInterim => f.write_str("too many interim responses"),
            Self::SwitchedProtocols => {
                f.write_str("upstream switched protocols, which this route does not allow")
            }
            Self::ResponseBody(e) => write!(f, "response {e}"),
            Self::NoServer => f.write_str("no upstream server available"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_faults_and_retries() {
        let t = Error::Upstream(UpstreamError::ReadTimeout);
        assert_eq!(
            (t.status(), t.fault(), t.retryable()),
            (504, Fault::Upstream, true)
        );
        let i = Error::Upstream(UpstreamError::Invalid(ParseError::BareLf));
        assert_eq!((i.status(), i.retryable()), (502, false));
        let b = Error::RequestBody(BodyFail::SourceTimeout);
        assert_eq!((b.status(), b.fault()), (408, Fault::Downstream));
        assert_eq!(Error::NoServer.status(), 503);
        assert_eq!(Error::NoServer.fault(), Fault::Internal);
        assert!(!Error::TooManyInterim.retryable());
    }
}
