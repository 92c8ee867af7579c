//! The exchange's timers: one table, one deadline for io to wait on.
//!
//! Each state of an [`Exchange`](super::Exchange) that waits on a peer has one timer armed; io
//! asks for [`Timers::deadline`] of the current one and bounds its next operation by it, and
//! calls `handle_timeout` when it passes. Timers that measure an idle gap between two reads
//! or writes of a body (`client_body`, `send`, `upstream_read` while a body streams) are not in
//! the table: their durations go to io with the relay plan, since they restart on every byte.

use std::time::{Duration, Instant};

use crate::config::Timeouts;

/// What a deadline bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The first request head of a connection, or a head once its first byte arrived.
    ClientHeader,
    /// The wait for the next request on a kept-alive connection.
    KeepAlive,
    /// Writing a response head (or a whole local response) to the client.
    Send,
    /// Connecting to an upstream server (and its TLS handshake).
    UpstreamConnect,
    /// Writing the request head to the upstream.
    UpstreamWrite,
    /// The upstream's response head, across any interim responses.
    UpstreamRead,
    /// Waiting for another request's fetch of the same cache key.
    CacheLock,
    /// Resolving a forward proxy's destination (all its queries, retries and servers).
    Resolve,
    /// A tarpit's hold before the connection closes.
    Tarpit,
    /// A rate limit's delay before the request goes on.
    RateDelay,
    /// A kept-alive connection quiet this long parks (see `park.rs`).
    Park,
}

const ALL: [Timer; 11] = [
    Timer::ClientHeader,
    Timer::KeepAlive,
    Timer::Send,
    Timer::UpstreamConnect,
    Timer::UpstreamWrite,
    Timer::UpstreamRead,
    Timer::CacheLock,
    Timer::Resolve,
    Timer::Tarpit,
    Timer::RateDelay,
    Timer::Park,
];

impl Timer {
    fn index(self) -> usize {
        self as usize
    }

    /// The configured duration of this timer.
    pub fn duration(self, t: &Timeouts) -> Duration {
        match self {
            Self::ClientHeader => t.client_header,
            Self::KeepAlive => t.keepalive,
            Self::Send => t.send,
            Self::UpstreamConnect => t.upstream_connect,
            Self::UpstreamWrite => t.upstream_write,
            Self::UpstreamRead => t.upstream_read,
            Self::Park => t.park.unwrap_or(Duration::ZERO),
            // Armed with their own durations (`arm_for`).
            Self::CacheLock | Self::Resolve | Self::Tarpit | Self::RateDelay => Duration::ZERO,
        }
    }
}

/// Deadlines by timer; at most one of each.
#[derive(Clone, Debug, Default)]
pub struct Timers {
    at: [Option<Instant>; ALL.len()],
}

impl Timers {
    /// Arms `timer` to fire its configured duration after `now` (re-arming it if set).
    pub fn arm(&mut self, timer: Timer, t: &Timeouts, now: Instant) {
        self.at[timer.index()] = now.checked_add(timer.duration(t));
    }

    /// Arms `timer` unless it is already armed (a deadline that spans several steps).
    pub fn arm_once(&mut self, timer: Timer, t: &Timeouts, now: Instant) {
        if self.at[timer.index()].is_none() {
            self.arm(timer, t, now);
        }
    }

    /// Arms `timer` to fire at `at`.
    pub fn arm_at(&mut self, timer: Timer, at: Instant) {
        self.at[timer.index()] = Some(at);
    }

    /// Arms `timer` to fire `d` after `now`.
    pub fn arm_for(&mut self, timer: Timer, d: Duration, now: Instant) {
        self.at[timer.index()] = now.checked_add(d);
    }

    pub fn stop(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    pub fn clear(&mut self) {
        self.at = Default::default();
    }

    /// When `timer` fires, if armed.
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.at[timer.index()]
    }

    /// Whether `timer` is armed and its deadline is at or before `now`.
    pub fn expired(&self, timer: Timer, now: Instant) -> bool {
        self.at[timer.index()].is_some_and(|d| d <= now)
    }

    /// The earliest armed timer.
    pub fn next(&self) -> Option<(Timer, Instant)> {
        ALL.iter()
            .filter_map(|&t| self.at[t.index()].map(|d| (t, d)))
            .min_by_key(|&(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn arm_once_keeps_the_first_deadline() {
        let t = Timeouts::default();
        let now = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.arm_once(Timer::UpstreamRead, &t, now);
        timers.arm_once(Timer::UpstreamRead, &t, now + Duration::from_secs(5));
        assert_eq!(
            timers.deadline(Timer::UpstreamRead),
            Some(now + t.upstream_read)
        );
        timers.arm(Timer::Send, &t, now);
        assert!(timers.next().is_some());
        assert!(timers.expired(Timer::Send, now + t.send));
        assert!(!timers.expired(Timer::Send, now));
        timers.clear();
        assert_eq!(timers.next(), None);
    }
}
