//! The active health checks' verdicts: up/down per (group, server), written by the checker
//! thread (`health.rs`), read by workers when they pick a server. A relaxed atomic load of a
//! flag whose cache line changes only when a server changes state: no lock on the request path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use ringway_core::config::Config;

/// Servers drained from the admin listener, by (group name, address): they outlive reloads.
pub(crate) type Drained = HashSet<(String, SocketAddr)>;

/// Up/down per (group, server), written by the checker, read by workers; and the servers an
/// operator drained (no new requests; those in flight finish).
pub(crate) struct Board {
    up: Vec<Vec<AtomicBool>>,
    drained: Vec<Vec<AtomicBool>>,
}

impl Board {
    pub(crate) fn new(cfg: &Config, drained: &Drained) -> Self {
        let flags = |f: &dyn Fn(&str, SocketAddr) -> bool| -> Vec<Vec<AtomicBool>> {
            cfg.upstreams
                .iter()
                .map(|u| {
                    u.servers
                        .iter()
                        .map(|s| AtomicBool::new(f(&u.name, s.addr)))
                        .collect()
                })
                .collect()
        };
        Self {
            up: flags(&|_, _| true),
            drained: flags(&|g, a| drained.contains(&(g.to_string(), a))),
        }
    }

    /// Whether the server may take new requests: up by the active checks, not drained.
    #[inline]
    pub(crate) fn is_up(&self, group: usize, server: usize) -> bool {
        self.up[group][server].load(Ordering::Relaxed)
            && !self.drained[group][server].load(Ordering::Relaxed)
    }

    pub(crate) fn is_drained(&self, group: usize, server: usize) -> bool {
        self.drained[group][server].load(Ordering::Relaxed)
    }

    pub(crate) fn set_drained(&self, group: usize, server: usize, drained: bool) {
        self.drained[group][server].store(drained, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, group: usize, server: usize, up: bool) {
        self.up[group][server].store(up, Ordering::Relaxed);
    }
}
