//! The state of one upstream group on one worker, and the choice of a server for a request:
//! balancer, passive health, in-flight counts. Pure: io supplies the clock, the active-check
//! verdicts and the servers already tried; io keeps the guard that ends a request in flight.

use std::time::Instant;

use crate::balance::{self, Balancer, Pick};
use crate::config::Upstream;
use crate::health::{least_recently_failed, Outcome, ServerHealth};

/// Where an upstream connection goes, and what its idle connections are pooled under: a server
/// of a configured group, or a destination chosen at request time (a forward proxy's target,
/// as a resolver gives it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamKey {
    Server {
        group: usize,
        server: usize,
    },
    /// `addr`, connected to from the local address `from` when one is chosen (Squid's
    /// `tcp_outgoing_address`): connections from different local addresses are pooled apart.
    Destination {
        addr: std::net::SocketAddr,
        from: Option<std::net::IpAddr>,
    },
}

/// Servers of a group already tried for one request, for any group size. The first few live
/// inline, so a request that is not retried costs no allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tried {
    inline: [usize; 4],
    n: usize,
    more: Vec<usize>,
}

impl Tried {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, server: usize) {
        if self.contains(server) {
            return;
        }
        if self.n < self.inline.len() {
            self.inline[self.n] = server;
            self.n += 1;
        } else {
            self.more.push(server);
        }
    }

    pub fn contains(&self, server: usize) -> bool {
        self.inline[..self.n].contains(&server) || self.more.contains(&server)
    }

    pub fn len(&self) -> usize {
        self.n + self.more.len()
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// One group's balancing and health state, per worker.
pub struct GroupState {
    balancer: Box<dyn Balancer>,
    health: Vec<ServerHealth>,
    /// Failed attempts per server since this state was made (for the admin status).
    failures: Vec<u64>,
    /// Requests in flight per server, on this worker.
    in_flight: Vec<u32>,
}

impl GroupState {
    /// `seed` staggers the round-robin start between workers.
    pub fn new(u: &Upstream, seed: usize) -> Self {
        let n = u.servers.len();
        Self {
            balancer: balance::for_group(u, seed),
            health: vec![ServerHealth::default(); n],
            failures: vec![0; n],
            in_flight: vec![0; n],
        }
    }

    /// Chooses a server for a request whose balancing key hashes to `key`: a primary if any is
    /// available, else a backup, else (with `fail_open`) the ejected server whose cool-down ends
    /// first. Available: not marked `down`, `is_up` by active checks, not ejected, not in
    /// `tried`, under its `max_conns`. The chosen server is counted in flight; call
    /// [`GroupState::done`] when the request ends.
    pub fn pick(
        &mut self,
        u: &Upstream,
        key: u64,
        tried: &Tried,
        is_up: impl Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        let servers = &u.servers;
        // An ejected server whose cool-down is over comes back on probation here.
        for h in &mut self.health {
            h.available(now);
        }
        let (health, in_flight) = (&self.health, &self.in_flight);
        let usable = |i: usize| {
            let s = &servers[i];
            !s.down
                && is_up(i)
                && !tried.contains(i)
                && s.max_conns.is_none_or(|m| in_flight[i] < m)
        };
        let load = |i: usize| in_flight[i];
        let mut chosen = None;
        for backup in [false, true] {
            let eligible =
                |i: usize| servers[i].backup == backup && !health[i].is_ejected(now) && usable(i);
            chosen = self.balancer.pick(&Pick {
                key,
                eligible: &eligible,
                load: &load,
            });
            if chosen.is_some() {
                break;
            }
        }
        if chosen.is_none() && u.passive.fail_open {
            chosen = least_recently_failed(health, usable);
        }
        let server = chosen?;
        self.in_flight[server] += 1;
        Some(server)
    }

    /// A request picked for `server` has ended.
    pub fn done(&mut self, server: usize) {
        self.in_flight[server] = self.in_flight[server].saturating_sub(1);
    }

    /// Records how a request to `server` went; returns the cool-down if this ejected it. A group
    /// with one server never ejects it (as nginx ignores `max_fails` there): there is nowhere
    /// else to send its requests.
    pub fn record(
        &mut self,
        u: &Upstream,
        server: usize,
        outcome: Outcome,
        now: Instant,
    ) -> Option<std::time::Duration> {
        if outcome != Outcome::Success {
            self.failures[server] += 1;
        }
        if u.servers.len() == 1 {
            return None;
        }
        self.health[server].record(outcome, &u.passive, now)
    }

    pub fn in_flight(&self, server: usize) -> u32 {
        self.in_flight[server]
    }

    pub fn failures(&self, server: usize) -> u64 {
        self.failures[server]
    }

    pub fn is_ejected(&self, server: usize, now: Instant) -> bool {
        self.health[server].is_ejected(now)
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests take an `Instant` to start from
mod tests {
    use super::*;
    use crate::config::{Config, UpstreamServer};
    use std::net::SocketAddr;
    use std::time::Duration;

    fn group(n: usize) -> Upstream {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
            .collect();
        let mut c = Config::quick(
            vec![SocketAddr::from(([127, 0, 0, 1], 80))],
            addrs,
            crate::config::Balance::RoundRobin,
        );
        c.upstreams.remove(0)
    }

    #[test]
    fn a_hundred_servers_eject_and_exclude_one_at_a_time() {
        let u = group(100);
        let mut g = GroupState::new(&u, 0);
        let now = Instant::now();
        // Eject server 3: server 67 (3 + 64) must stay usable.
        assert!(g.record(&u, 3, Outcome::Failure, now).is_some());
        let mut seen = vec![0; 100];
        for _ in 0..990 {
            let s = g.pick(&u, 0, &Tried::new(), |_| true, now).unwrap();
            seen[s] += 1;
            g.done(s);
        }
        assert_eq!(seen[3], 0);
        assert!(
            seen.iter().enumerate().all(|(i, &n)| i == 3 || n == 10),
            "{seen:?}"
        );
        // Tried servers are skipped exactly, whatever their index.
        let mut tried = Tried::new();
        tried.add(67);
        for _ in 0..200 {
            let s = g.pick(&u, 0, &tried, |_| true, now).unwrap();
            assert!(s != 67 && s != 3);
            g.done(s);
        }
        let mut all = Tried::new();
        (0..100).filter(|&i| i != 64).for_each(|i| all.add(i));
        all.add(5);
        assert_eq!(all.len(), 99);
        assert_eq!(g.pick(&u, 0, &all, |_| true, now), Some(64));
    }

    #[test]
    fn one_server_is_never_ejected() {
        let u = group(1);
        let mut g = GroupState::new(&u, 0);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(g.record(&u, 0, Outcome::Failure, now), None);
        }
        assert_eq!(g.pick(&u, 0, &Tried::new(), |_| true, now), Some(0));
        assert_eq!(g.failures(0), 5);
    }

    #[test]
    fn all_ejected_fails_open_to_the_first_back_unless_turned_off() {
        let mut u = group(3);
        let mut g = GroupState::new(&u, 0);
        let t = Instant::now();
        for (s, at) in [(0, 2), (1, 0), (2, 1)] {
            assert!(g
                .record(&u, s, Outcome::Failure, t + Duration::from_secs(at))
                .is_some());
        }
        let now = t + Duration::from_secs(3);
        assert_eq!(g.pick(&u, 0, &Tried::new(), |_| true, now), Some(1));
        g.done(1);
        // Marked down by active checks: never a fall-back.
        assert_eq!(g.pick(&u, 0, &Tried::new(), |i| i != 1, now), Some(2));
        g.done(2);
        u.passive.fail_open = false;
        assert_eq!(g.pick(&u, 0, &Tried::new(), |_| true, now), None);
        // After the cool-down (10 s) it comes back on probation.
        assert_eq!(
            g.pick(&u, 0, &Tried::new(), |_| true, t + Duration::from_secs(11)),
            Some(1)
        );
    }

    #[test]
    fn backups_only_when_primaries_are_unavailable() {
        let mut u = group(2);
        u.servers[1] = UpstreamServer {
            backup: true,
            ..u.servers[1].clone()
        };
        let mut g = GroupState::new(&u, 0);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(g.pick(&u, 0, &Tried::new(), |_| true, now), Some(0));
            g.done(0);
        }
        let mut tried = Tried::new();
        tried.add(0);
        assert_eq!(g.pick(&u, 0, &tried, |_| true, now), Some(1));
        assert_eq!(g.in_flight(1), 1);
    }
}
