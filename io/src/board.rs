//! The active health checks' verdicts: up/down per (group, server), written by the checker
//! thread (`health.rs`), read by workers when they pick a server. A relaxed atomic load of a
//! flag whose cache line changes only when a server changes state: no lock on the request path.

use std::sync::atomic::{AtomicBool, Ordering};

use ringway_core::config::Config;

/// Up/down per (group, server), written by the checker, read by workers.
pub(crate) struct Board {
    up: Vec<Vec<AtomicBool>>,
}

impl Board {
    pub(crate) fn new(cfg: &Config) -> Self {
        Self {
            up: cfg
                .upstreams
                .iter()
                .map(|u| u.servers.iter().map(|_| AtomicBool::new(true)).collect())
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn is_up(&self, group: usize, server: usize) -> bool {
        self.up[group][server].load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, group: usize, server: usize, up: bool) {
        self.up[group][server].store(up, Ordering::Relaxed);
    }
}
