//! A configuration as a worker runs it, and what a worker derives from it per reload: the
//! upstream pools and each group's balancing and health state. A reload installs a new
//! generation; requests already running keep theirs (an `Rc`), so they finish untouched.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ringway_core::config::Config;
use ringway_core::health::Outcome;
use ringway_core::upstream::{GroupState, Tried};

use crate::board::Board;
use crate::counters::ServerSnap;
use crate::tls::TlsMaterial;
use crate::upstream::Pool;

/// A configuration with what was derived from it on the main thread, as handed to a worker
/// (and to the health checker) at start and on every reload.
pub(crate) struct Update {
    pub(crate) cfg: Config,
    /// Active health-check results for this configuration's servers.
    pub(crate) board: Arc<Board>,
    /// Certificates and trust anchors read from the files the configuration names.
    pub(crate) tls: Arc<TlsMaterial>,
}

/// One configuration as a worker runs it: the config, the upstream pools and the balancing and
/// health state that go with its upstream groups. A reload installs a new generation; requests
/// already running keep theirs (an `Rc`), so they finish untouched, and the old generation with
/// its pooled connections (to removed servers too) is freed when the last of them ends.
pub(crate) struct Generation {
    cfg: Config,
    /// Active health-check results for this configuration's servers.
    board: Arc<Board>,
    pub(crate) tls: Arc<TlsMaterial>,
    pub(crate) pool: RefCell<Pool>,
    groups: RefCell<Vec<GroupState>>,
    /// Proxy credentials that passed, and clients that failed; a reload (which may change the
    /// htpasswd file) starts afresh.
    pub(crate) auth: RefCell<ringway_core::forward::auth::AuthCache>,
    /// Response sizes per route (how much of a response head to read; core decides).
    pub(crate) hints: RefCell<ringway_core::proxy::SizeHints>,
}

impl std::ops::Deref for Generation {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.cfg
    }
}

impl Generation {
    pub(crate) fn new(id: usize, update: Update) -> Self {
        let Update { cfg, board, tls } = update;
        let routes = cfg.routes.len();
        let pool = Pool::new(
            cfg.upstreams.iter().map(|u| (u.servers.len(), u.keepalive)),
            cfg.timeouts.upstream_idle,
        );
        // Per worker, not shared: counting in-flight requests costs no atomic and no cross-core
        // traffic; each worker balances its own share.
        let groups = cfg
            .upstreams
            .iter()
            .map(|u| GroupState::new(u, id))
            .collect();
        Self {
            cfg,
            board,
            tls,
            pool: RefCell::new(pool),
            groups: RefCell::new(groups),
            auth: RefCell::new(ringway_core::forward::auth::AuthCache::new(
                crate::auth::failures(),
            )),
            hints: RefCell::new(ringway_core::proxy::SizeHints::new(routes)),
        }
    }
}

impl Generation {
    /// Chooses a server of `group` for a request whose balancing key hashes to `key`, skipping
    /// the servers in `tried` (core's `GroupState::pick` decides; this adds the active-check
    /// verdicts and the guard). The returned guard counts the request in flight until dropped.
    pub(crate) fn pick(
        self: &Rc<Self>,
        group: usize,
        key: u64,
        tried: &Tried,
        now: Instant,
    ) -> Option<InFlight> {
        let u = &self.cfg.upstreams[group];
        let server = self.groups.borrow_mut()[group].pick(
            u,
            key,
            tried,
            |i| self.board.is_up(group, i),
            now,
        )?;
        Some(InFlight {
            g: self.clone(),
            group,
            server,
        })
    }
}

impl Generation {
    /// This worker's counters for the admin status.
    pub(crate) fn snapshot(&self, now: Instant) -> Vec<Vec<ServerSnap>> {
        self.groups
            .borrow()
            .iter()
            .map(|g| {
                (0..g.len())
                    .map(|i| ServerSnap {
                        in_flight: g.in_flight(i),
                        ejected: g.is_ejected(i, now),
                        failures: g.failures(i),
                    })
                    .collect()
            })
            .collect()
    }

    /// Records how a request to a server went, for passive health.
    pub(crate) fn record(&self, group: usize, server: usize, outcome: Outcome, at: Instant) {
        let u = &self.cfg.upstreams[group];
        let ejected = self.groups.borrow_mut()[group].record(u, server, outcome, at);
        if let Some(d) = ejected {
            log::warn!(
                "upstream {}: ejected for {}s after failing",
                u.servers[server].addr,
                d.as_secs()
            );
        }
    }
}

/// A request in flight to one server; decrements the count when dropped.
pub(crate) struct InFlight {
    g: Rc<Generation>,
    pub(crate) group: usize,
    pub(crate) server: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.g.groups.borrow_mut()[self.group].done(self.server);
    }
}
