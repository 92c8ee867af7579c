//! Connection limits at accept: the process maximum, each listener's, each client address's
//! (`[server] max_connections`, `max_connections_per_client`, a listener's `max_connections`).
//! Counted across workers in shared atomics: one atomic add per limit per *connection* (not per
//! request), and only for the limits configured. A connection over one is refused before any
//! task or buffer exists for it: a canned `503` written without waiting, or a bare close.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use ringway_core::config::Config;
use ringway_core::limit::{client_key, ConnTable, Entered};

/// Slots of the per-client table (8 bytes each).
const CLIENT_SLOTS: usize = 1 << 16;

/// The counts every worker shares.
pub(crate) struct Gate {
    total: AtomicUsize,
    /// By the listener's index in `server.listen`.
    listeners: Vec<AtomicUsize>,
    clients: ConnTable,
    /// Connections refused, by reason: process, listener, client.
    pub(crate) refused: [AtomicU64; 3],
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Over {
    Process = 0,
    Listener = 1,
    Client = 2,
}

pub(crate) const OVER_LABELS: [&str; 3] = ["process", "listener", "client"];

/// A connection let in: its counts are given back when it is dropped. With no limit
/// configured it holds nothing (and costs no shared write).
#[derive(Default)]
pub(crate) struct Pass {
    gate: Option<Arc<Gate>>,
    total: bool,
    listener: Option<usize>,
    client: Option<Entered>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let Some(gate) = &self.gate else { return };
        if self.total {
            gate.total.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(i) = self.listener {
            gate.listeners[i].fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(e) = self.client.take() {
            gate.clients.leave(e);
        }
    }
}

impl Gate {
    pub(crate) fn new(listeners: usize) -> Self {
        Self {
            total: AtomicUsize::new(0),
            listeners: (0..listeners).map(|_| AtomicUsize::new(0)).collect(),
            clients: ConnTable::new(CLIENT_SLOTS),
            refused: Default::default(),
        }
    }

    /// Lets a connection of `client` on listener `index` in, under `cfg`'s limits, or says
    /// which one it is over.
    pub(crate) fn enter(
        self: &Arc<Self>,
        cfg: &Config,
        index: usize,
        client: IpAddr,
    ) -> Result<Pass, Over> {
        let limits = cfg.server.connections;
        let listener_max = cfg.server.listen.get(index).and_then(|l| l.max_connections);
        if limits.max.is_none() && limits.per_client.is_none() && listener_max.is_none() {
            return Ok(Pass::default());
        }
        let mut pass = Pass {
            gate: Some(self.clone()),
            total: false,
            listener: None,
            client: None,
        };
        if let Some(max) = limits.max {
            pass.total = true;
            if self.total.fetch_add(1, Ordering::AcqRel) >= max as usize {
                return Err(self.over(Over::Process));
            }
        }
        if let Some(max) = listener_max {
            pass.listener = Some(index);
            if self.listeners[index].fetch_add(1, Ordering::AcqRel) >= max as usize {
                return Err(self.over(Over::Listener));
            }
        }
        if let Some(max) = limits.per_client {
            let mut key = Vec::with_capacity(17);
            client_key(client, 64, &mut key);
            match self.clients.enter(&key, max) {
                Ok(e) => pass.client = e,
                Err(()) => return Err(self.over(Over::Client)),
            }
        }
        Ok(pass)
    }

    fn over(&self, why: Over) -> Over {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        why
    }
}
