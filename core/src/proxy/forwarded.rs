//! The forward proxy's steps of the exchange: its access rules, loops back into the proxy, and
//! what an anonymity level shows. The rules themselves are in [`crate::forward`].

use super::{Env, Exchange};
use crate::config::Protocol;

impl Exchange {
    /// Whether responses carry our `Via`: not from an elite forward proxy, which shows neither
    /// itself nor the client, in either direction.
    pub(super) fn shows_via(&self, env: &Env<'_>) -> bool {
        self.protocol != Protocol::ForwardHttp || env.cfg.forward.anonymity.policy().via
    }
}

/// Every `%` is followed by two hex digits.
pub(super) fn well_formed_escapes(t: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'%', &t[i..]) {
        let at = i + p;
        match t.get(at + 1..at + 3) {
            Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i = at + 3,
            _ => return false,
        }
    }
    true
}
