//! Whether the client connection outlives an exchange: decided once from the request, narrowed
//! by what happens, and turned into the `Connection` field and the [`Finish`] in one place.

use crate::http::rewrite::ConnectionHeader;
use crate::http::Version;

use super::action::{Close, Finish};

/// What the request allows for the connection after its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Persistence {
    /// Kept for the next request; an HTTP/1.0 client is told so (`Connection: keep-alive`).
    Keep(Version),
    /// The client asked to close (`Connection: close`, or HTTP/1.0 without keep-alive).
    ClientCloses,
    /// The proxy closes though the client would go on: draining, a request body left unread, a
    /// response delimited by the close, an error after which the stream cannot be trusted.
    ProxyCloses,
}

impl Persistence {
    /// From the request: `persistent` is what its version and `Connection` field ask for.
    pub(super) fn of(persistent: bool, version: Version) -> Self {
        if persistent {
            Self::Keep(version)
        } else {
            Self::ClientCloses
        }
    }

    /// Closed by the proxy when `cond` holds.
    pub(super) fn unless(self, cond: bool) -> Self {
        match self {
            Self::Keep(_) if cond => Self::ProxyCloses,
            p => p,
        }
    }

    /// What the response head says about the connection.
    pub(super) fn header(self) -> ConnectionHeader {
        match self {
            Self::Keep(Version::Http11) => ConnectionHeader::Omit,
            Self::Keep(Version::Http10) => ConnectionHeader::KeepAlive,
            Self::ClientCloses | Self::ProxyCloses => ConnectionHeader::Close,
        }
    }

    /// How the connection goes on once the response went out whole. `request_read`: the
    /// request was read to its end, so a client that asked to close sends nothing more and the
    /// connection may simply be closed (RFC 9112 §9.6); otherwise unread input may follow, and
    /// the close lingers so that it does not reset the response.
    pub(super) fn finish(self, request_read: bool) -> Finish {
        match self {
            Self::Keep(_) if request_read => Finish::KeepAlive,
            Self::ClientCloses if request_read => Finish::Close(Close::Notify),
            _ => Finish::Close(Close::Linger),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_and_finish() {
        let k11 = Persistence::of(true, Version::Http11);
        let k10 = Persistence::of(true, Version::Http10);
        let c = Persistence::of(false, Version::Http11);
        assert_eq!(k11.header(), ConnectionHeader::Omit);
        assert_eq!(k10.header(), ConnectionHeader::KeepAlive);
        assert_eq!(k11.unless(true), Persistence::ProxyCloses);
        assert_eq!(c.unless(true), Persistence::ClientCloses);
        assert_eq!(k11.finish(true), Finish::KeepAlive);
        assert_eq!(k11.finish(false), Finish::Close(Close::Linger));
        assert_eq!(c.finish(true), Finish::Close(Close::Notify));
        assert_eq!(c.finish(false), Finish::Close(Close::Linger));
        assert_eq!(
            Persistence::ProxyCloses.finish(true),
            Finish::Close(Close::Linger)
        );
        assert_eq!(Persistence::ProxyCloses.header(), ConnectionHeader::Close);
    }
}
