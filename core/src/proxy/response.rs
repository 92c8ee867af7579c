//! What an upstream response head becomes, decided once from values: relayed as an interim
//! response, the switch to a WebSocket tunnel, a retry elsewhere, or the final response with its
//! framing toward the client and what becomes of the client connection.

use crate::compress::Encoder;
use crate::health::Outcome;
use crate::http::framing::{BodyKind, ResponseInfo};
use crate::http::{ResponseHead, Version};

use super::action::{Close, Finish};
use super::persist::Persistence;

/// What the response says, as far as the plan goes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) status: u16,
    /// Its framing as received.
    pub(super) body: BodyKind,
    /// A `101` that switches to `websocket`.
    pub(super) websocket: bool,
    /// What becomes of its body on the way.
    pub(super) passage: Passage,
}

/// How a body goes to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Passage {
    /// As the upstream framed its length.
    AsIs,
    /// Rewritten (encoded, strings replaced): its length changes, so it is reframed.
    Rewritten,
}

/// What the request asked and allows.
#[derive(Clone, Copy, Debug)]
pub(super) struct Asked {
    pub(super) version: Version,
    /// A WebSocket upgrade the proxy will tunnel.
    pub(super) upgrade: bool,
    pub(super) persist: Persistence,
    /// The worker is draining: no connection is kept.
    pub(super) draining: bool,
    /// The status is one of the group's `retry_on`, and another attempt is allowed.
    pub(super) retry_status: bool,
}

/// The plan for one response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ResponsePlan {
    /// A `1xx` other than `101`: relayed to an HTTP/1.1 client (`relay`), not to an HTTP/1.0
    /// one; the final response is read next.
    Interim { relay: bool },
    /// `101` to the WebSocket the client asked for: the head goes out, then bytes both ways.
    Switch,
    /// A `101` nobody asked for: the attempt fails.
    Unasked,
    /// A `retry_on` status: the response is dropped and another server tried.
    Retry,
    /// The final response: its framing toward the client, how the client connection goes on,
    /// and what health is told.
    Final {
        to_client: BodyKind,
        persist: Persistence,
        outcome: Outcome,
    },
}

impl ResponsePlan {
    pub(super) fn decide(seen: Seen, asked: Asked) -> Self {
        match seen.status {
            101 if asked.upgrade && seen.websocket => return Self::Switch,
            101 => return Self::Unasked,
            100..=199 => {
                return Self::Interim {
                    relay: asked.version == Version::Http11,
                }
            }
            _ if asked.retry_status => return Self::Retry,
            _ => {}
        }
        // Chunked or close-delimited bodies go chunked to HTTP/1.1 clients; an HTTP/1.0 client
        // gets the body delimited by the close.
        // So does an encoded body of known length: the encoder decides its length.
        let reframed = matches!(seen.body, BodyKind::Chunked | BodyKind::Close)
            || (seen.passage == Passage::Rewritten && matches!(seen.body, BodyKind::Length(_)));
        let to_client = match seen.body {
            _ if reframed && asked.version == Version::Http11 => BodyKind::Chunked,
            _ if reframed => BodyKind::Close,
            b => b,
        };
        let persist = asked
            .persist
            .unless(asked.draining || to_client == BodyKind::Close);
        let outcome = if seen.status >= 500 {
            Outcome::ServerError(seen.status)
        } else {
            Outcome::Success
        };
        Self::Final {
            to_client,
            persist,
            outcome,
        }
    }
}

/// The upstream's final response as it is relayed.
#[derive(Debug)]
pub(super) struct Upstream {
    /// Its framing as received and toward the client.
    pub(super) body_in: BodyKind,
    pub(super) body_out: BodyKind,
    /// Body still to relay (after what went inline with the head).
    pub(super) relay: BodyKind,
    /// The upstream wants its connection kept.
    pub(super) conn: UpstreamConn,
    /// How the client connection goes on after the response.
    pub(super) then: Finish,
    /// The encoder the body goes through on its way to the client.
    pub(super) encode: Option<Encoder>,
    /// The substitution it goes through before (`body_replace`).
    pub(super) replace: Option<crate::subst::Replacer>,
    /// The transcoder that framed the part of a chunked or close-delimited body that went out
    /// with the head; the relay goes on with it.
    pub(super) begun: Option<crate::http::body::Transcoder>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            body_in: BodyKind::None,
            body_out: BodyKind::None,
            relay: BodyKind::None,
            conn: UpstreamConn::Closes,
            then: Finish::Close(Close::Now),
            encode: None,
            replace: None,
            begun: None,
        }
    }
}

/// A final response head as parsed, with its plan.
pub(super) struct Final {
    pub(super) rh: ResponseHead,
    pub(super) ri: ResponseInfo,
    pub(super) to_client: BodyKind,
    pub(super) persist: Persistence,
    /// What becomes of its body: compression, substitution.
    pub(super) body: super::edits::RelayedBody,
}

/// What the upstream's response allows for its connection once the body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UpstreamConn {
    /// Length-framed and persistent: it may carry another request.
    Reusable,
    Closes,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASKED: Asked = Asked {
        version: Version::Http11,
        upgrade: false,
        persist: Persistence::Keep(Version::Http11),
        draining: false,
        retry_status: false,
    };

    fn seen(status: u16, body: BodyKind) -> Seen {
        Seen {
            status,
            body,
            websocket: false,
            passage: Passage::AsIs,
        }
    }

    #[test]
    fn interim_and_switch() {
        let d = ResponsePlan::decide;
        assert_eq!(
            d(seen(103, BodyKind::None), ASKED),
            ResponsePlan::Interim { relay: true }
        );
        let old = Asked {
            version: Version::Http10,
            ..ASKED
        };
        assert_eq!(
            d(seen(100, BodyKind::None), old),
            ResponsePlan::Interim { relay: false }
        );
        let ws = Seen {
            websocket: true,
            ..seen(101, BodyKind::None)
        };
        assert_eq!(d(ws, ASKED), ResponsePlan::Unasked, "not asked for");
        let up = Asked {
            upgrade: true,
            ..ASKED
        };
        assert_eq!(d(ws, up), ResponsePlan::Switch);
        assert_eq!(d(seen(101, BodyKind::None), up), ResponsePlan::Unasked);
    }

    #[test]
    fn final_framing_and_persistence() {
        let d = ResponsePlan::decide;
        let retry = Asked {
            retry_status: true,
            ..ASKED
        };
        assert_eq!(
            d(seen(503, BodyKind::Length(3)), retry),
            ResponsePlan::Retry
        );
        assert_eq!(
            d(seen(503, BodyKind::Length(3)), ASKED),
            ResponsePlan::Final {
                to_client: BodyKind::Length(3),
                persist: ASKED.persist,
                outcome: Outcome::ServerError(503),
            }
        );
        // A close-delimited body goes chunked to HTTP/1.1 and keeps the connection.
        assert_eq!(
            d(seen(200, BodyKind::Close), ASKED),
            ResponsePlan::Final {
                to_client: BodyKind::Chunked,
                persist: ASKED.persist,
                outcome: Outcome::Success,
            }
        );
        // To HTTP/1.0 it is delimited by the close: the connection cannot be kept.
        let old = Asked {
            version: Version::Http10,
            persist: Persistence::Keep(Version::Http10),
            ..ASKED
        };
        assert_eq!(
            d(seen(200, BodyKind::Chunked), old),
            ResponsePlan::Final {
                to_client: BodyKind::Close,
                persist: Persistence::ProxyCloses,
                outcome: Outcome::Success,
            }
        );
        let draining = Asked {
            draining: true,
            ..ASKED
        };
        assert!(matches!(
            d(seen(200, BodyKind::Length(0)), draining),
            ResponsePlan::Final {
                persist: Persistence::ProxyCloses,
                ..
            }
        ));
    }
}
