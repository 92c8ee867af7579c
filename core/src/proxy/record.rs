//! The one record every exchange ends with, whatever way it ended: what the access log and the
//! metrics consume.

use std::time::{Duration, Instant};

use crate::http::Method;

use super::action::Finish;
use super::error::{Error, Fault};

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
    /// The client a trusted proxy relayed the request for, when it is not the peer.
    pub client: Option<std::net::IpAddr>,
    /// Where the last upstream attempt went.
    pub upstream: Option<crate::upstream::UpstreamKey>,
    /// When the last upstream attempt began (a server or address was picked), its connection
    /// was ready, and its response head was read.
    pub upstream_began: Option<Instant>,
    pub upstream_connected: Option<Instant>,
    pub upstream_head: Option<Instant>,
    /// Whether that connection came from the pool.
    pub upstream_reused: Option<bool>,
    /// The `[[rules]]` entry (index) that decided the request (allowed, denied or tarpitted).
    pub ruled: Option<usize>,
    /// The rate limit (index in the config's `rate_limits`) that refused the request.
    pub limited: Option<usize>,
    /// Why the forward proxy refused the request (`Denial::kind`).
    pub denied: Option<&'static str>,
    /// The request's id (`[server] request_id`).
    pub request_id: Option<crate::reqid::RequestId>,
    /// Bytes of the request head.
    pub head_len: u64,
    /// The `Cache-Status` detail of a response that went through the cache (`hit`,
    /// `fwd=miss`, …).
    pub cache: Option<&'static str>,
    /// The request's text the access log shows, copied only when a log is configured.
    pub text: Texts,
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
    /// Whose request it was.
    pub requester: Requester,
}

/// A text field of the request kept for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Text {
    /// The request line as received (whatever it was, for a request that did not parse).
    Line,
    Host,
    Referer,
    Agent,
    /// The forward proxy's destination, `host:port`.
    Dest,
}

/// The longest any one text is kept.
pub const MAX_TEXT: usize = 4096;

/// The request texts in one buffer (reused across a connection's exchanges).
#[derive(Clone, Debug, Default)]
pub struct Texts {
    buf: Vec<u8>,
    at: [(u32, u32); 5],
}

impl Texts {
    /// Keeps `v` (its first [`MAX_TEXT`] bytes) as `t`.
    pub fn put(&mut self, t: Text, v: &[u8]) {
        let v = &v[..v.len().min(MAX_TEXT)];
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(v);
        self.at[t as usize] = (start, self.buf.len() as u32);
    }

    pub fn get(&self, t: Text) -> Option<&[u8]> {
        let (a, b) = self.at[t as usize];
        (b > a).then(|| &self.buf[a as usize..b as usize])
    }

    /// Empties it, keeping the buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.at = [(0, 0); 5];
    }
}

/// Who asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Requester {
    /// A client of a listener.
    #[default]
    Client,
    /// The proxy itself: a background refresh of a stored response
    /// (`stale-while-revalidate`), whose answer goes to the cache, not to a client.
    Refresh,
}

impl EndRecord {
    /// From the head's first byte to the end.
    pub fn duration(&self) -> Option<Duration> {
        Some(self.ended?.saturating_duration_since(self.started?))
    }

    /// The cache's verdict in nginx's words (`HIT`, `MISS`, `EXPIRED`, `STALE`, `REVALIDATED`,
    /// `BYPASS`), when the response went through the cache.
    pub fn cache_label(&self) -> Option<&'static str> {
        let d = self.cache?;
        Some(if d == "hit" {
            "HIT"
        } else if d.starts_with("hit") || d.contains("detail=stale") {
            "STALE"
        } else if d.contains("fwd-status=304") {
            "REVALIDATED"
        } else if d.starts_with("fwd=stale") {
            "EXPIRED"
        } else if d.ends_with("miss") {
            "MISS"
        } else {
            "BYPASS"
        })
    }

    /// Whether a request was read at all (a connection closed while idle ends an exchange
    /// that had none; it is not a request to log or count).
    pub fn had_request(&self) -> bool {
        self.method.is_some() || self.status != 0
    }
}

/// Requests counted by what their records say (a worker's, since start): what the status page
/// and metrics show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests answered (or ended without an answer).
    pub total: u64,
    /// By status class: 1xx (never final, so unused) .. 5xx; `[0]` counts ends with no status.
    pub by_class: [u64; 6],
    /// Ends with an error the client or the upstream caused.
    pub client_errors: u64,
    pub upstream_errors: u64,
    /// Upstream attempts beyond the first (retries).
    pub retries: u64,
}

impl RequestCounts {
    /// Counts one exchange.
    pub fn count(&mut self, r: &EndRecord) {
        self.total += 1;
        self.by_class[usize::from(r.status / 100).min(5)] += 1;
        match r.error.as_ref().map(Error::fault) {
            Some(Fault::Downstream) => self.client_errors += 1,
            Some(Fault::Upstream) => self.upstream_errors += 1,
            _ => {}
        }
        self.retries += u64::from(r.attempts.saturating_sub(1));
    }

    /// Adds another worker's counts.
    pub fn add(&mut self, o: &Self) {
        self.total += o.total;
        for (a, b) in self.by_class.iter_mut().zip(o.by_class) {
            *a += b;
        }
        self.client_errors += o.client_errors;
        self.upstream_errors += o.upstream_errors;
        self.retries += o.retries;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_by_class_fault_and_retries() {
        let mut c = RequestCounts::default();
        c.count(&EndRecord {
            status: 502,
            attempts: 3,
            error: Some(Error::NoServer),
            ..EndRecord::default()
        });
        c.count(&EndRecord {
            status: 400,
            error: Some(Error::HeadTimeout),
            ..EndRecord::default()
        });
        c.count(&EndRecord::default());
        assert_eq!(c.total, 3);
        assert_eq!(c.by_class, [1, 0, 0, 0, 1, 1]);
        assert_eq!((c.client_errors, c.upstream_errors, c.retries), (1, 0, 2));
        let mut sum = RequestCounts::default();
        sum.add(&c);
        sum.add(&c);
        assert_eq!(sum.total, 6);
    }
}
