//! How much of an upstream response to read with its head.
//!
//! A response head is read into the connection's buffer, and whatever part of the body
//! arrived with it is copied out from there; only the rest can be spliced. A full-size first
//! read (16 KiB) therefore copies up to 16 KiB of a large body, which at 64 KiB is a quarter
//! of it and measured 10–15% of the proxy's CPU per response (docs/benchmarks-log.md run 18). A
//! short first read avoids that but costs a second read and write for every mid-sized
//! response that would have arrived whole (8 KiB measured 40% more CPU). So the first read is
//! short only on routes whose recent responses were large enough to splice: a two-bit
//! saturating counter per route (the forward proxy counts as one more), as a branch predictor
//! keeps one per branch, so one odd response does not flip a route's behaviour.

/// Identity bodies at least this long move socket → pipe → socket with splice(2) when both
/// ends are plain sockets: below it a copy through the read buffer is cheaper. Per direction,
/// by measurement (docs/benchmarks-log.md, run 18): responses of 40 KiB cost 1–10% less CPU
/// spliced and 24 KiB ones up to 20% more; uploads showed no difference above the noise
/// between 16 and 64 KiB, so requests keep the larger threshold (fewer pipes in flight).
pub const SPLICE_MIN: u64 = 32 * 1024;

/// [`SPLICE_MIN`] for request bodies (uploads).
pub const SPLICE_MIN_UPLOAD: u64 = 64 * 1024;

/// The first read of a response head on a route that has been answering large bodies: room
/// for a typical head, little of the body.
pub const HEAD_READ: usize = 2048;

/// A worker's per-route memory of response sizes, for one configuration (route indices are
/// per configuration).
#[derive(Clone, Debug, Default)]
pub struct SizeHints {
    /// Per route, then one for requests without a route (the forward proxy): 0–3, large from 2.
    large: Vec<u8>,
}

impl SizeHints {
    /// For a configuration with `routes` routes.
    pub fn new(routes: usize) -> Self {
        Self {
            large: vec![0; routes + 1],
        }
    }

    fn slot(&self, route: Option<usize>) -> usize {
        let last = self.large.len().saturating_sub(1);
        route.map_or(last, |r| r.min(last))
    }

    /// The most to read for the head of the next response on `route`; `None`: as much as the
    /// buffer holds.
    pub fn head_read(&self, route: Option<usize>) -> Option<usize> {
        let s = self.large.get(self.slot(route)).copied().unwrap_or(0);
        (s >= 2).then_some(HEAD_READ)
    }

    /// A response on `route` whose body is `len` bytes of identity framing that may be spliced
    /// (`None`: framed otherwise, or not spliceable).
    pub fn record(&mut self, route: Option<usize>, len: Option<u64>) {
        let i = self.slot(route);
        if let Some(s) = self.large.get_mut(i) {
            *s = match len {
                Some(n) if n >= SPLICE_MIN => (*s + 1).min(3),
                _ => s.saturating_sub(1),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_large_responses_shorten_the_head_read_and_two_small_ones_restore_it() {
        let mut h = SizeHints::new(2);
        assert_eq!(h.head_read(Some(0)), None);
        h.record(Some(0), Some(SPLICE_MIN));
        assert_eq!(
            h.head_read(Some(0)),
            None,
            "one large response is not a pattern"
        );
        h.record(Some(0), Some(1 << 20));
        assert_eq!(h.head_read(Some(0)), Some(HEAD_READ));
        assert_eq!(h.head_read(Some(1)), None, "per route");
        assert_eq!(h.head_read(None), None);
        h.record(Some(0), Some(1 << 20));
        h.record(Some(0), Some(1 << 20));
        h.record(Some(0), Some(100));
        assert_eq!(
            h.head_read(Some(0)),
            Some(HEAD_READ),
            "saturated at 3: one small is noise"
        );
        h.record(Some(0), None);
        assert_eq!(h.head_read(Some(0)), None);
        h.record(Some(0), Some(SPLICE_MIN - 1));
        h.record(Some(0), Some(SPLICE_MIN - 1));
        assert_eq!(h.head_read(Some(0)), None, "never below 0");
        h.record(Some(0), Some(SPLICE_MIN));
        assert_eq!(h.head_read(Some(0)), None);
    }

    #[test]
    fn the_forward_proxy_and_out_of_range_routes_have_a_slot() {
        let mut h = SizeHints::new(1);
        h.record(None, Some(1 << 20));
        h.record(None, Some(1 << 20));
        assert_eq!(h.head_read(None), Some(HEAD_READ));
        assert_eq!(h.head_read(Some(0)), None);
        // A route index from another configuration never panics.
        h.record(Some(7), Some(1));
        let empty = SizeHints::default();
        assert_eq!(empty.head_read(Some(3)), None);
        let mut empty = empty;
        empty.record(Some(3), Some(1 << 20));
    }
}
