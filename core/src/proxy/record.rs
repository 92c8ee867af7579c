//! The one record every exchange ends with, whatever way it ended: what the access log and the
//! metrics consume.

use std::time::{Duration, Instant};

use crate::http::Method;

use super::action::Finish;
use super::error::Error;

/// What happened in one exchange. Filled in as it goes; complete once `Finish` was polled.
#[derive(Clone, Debug, Default)]
pub struct EndRecord {
    /// When the first byte of the request head was seen (or the exchange began, if none was).
    pub started: Option<Instant>,
    /// When the request head was complete.
    pub head_done: Option<Instant>,
    /// When the final response head was ready to go to the client.
    pub response_head: Option<Instant>,
    pub ended: Option<Instant>,
    pub method: Option<Method>,
    /// The user a forward proxy authenticated.
    pub user: Option<String>,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// (group, server) of the last upstream attempt.
    pub upstream: Option<(usize, usize)>,
    /// Upstream attempts (servers picked, including retries).
    pub attempts: u32,
    /// The status sent to the client (0: none was sent).
    pub status: u16,
    /// Request body bytes sent upstream or discarded (payload, without framing).
    pub request_body: u64,
    /// Response body bytes relayed (payload, without framing).
    pub response_body: u64,
    /// What went wrong, if anything did.
    pub error: Option<Error>,
    pub finish: Option<Finish>,
    /// Answered from the cache without asking the origin.
    pub cache_hit: bool,
}

impl EndRecord {
    /// From the head's first byte to the end.
    pub fn duration(&self) -> Option<Duration> {
        Some(self.ended?.saturating_duration_since(self.started?))
    }

    /// Whether a request was read at all (a connection closed while idle ends an exchange
    /// that had none; it is not a request to log or count).
    pub fn had_request(&self) -> bool {
        self.method.is_some() || self.status != 0
    }
}
