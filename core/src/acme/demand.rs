//! Certificates on demand: names the operator allows by pattern (`[acme] on_demand`), ordered
//! when a handshake first asks for one, within an hourly budget so that a client inventing
//! names cannot spend the CA's rate limits or fill the disk.

use std::collections::VecDeque;

use crate::forward::DomainSet;

/// Which names may be ordered on demand, and how many an hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnDemand {
    /// `example.org` (that name) or `.example.org` (it and every name under it).
    pub domains: DomainSet,
    pub per_hour: u32,
}

/// Most names waiting for the ACME thread to look at them; more are dropped (and asked for
/// again by their next handshake).
pub const MAX_WAITING: usize = 64;

impl OnDemand {
    /// The name a handshake's SNI asks for, when it may be ordered: a valid DNS name (lower
    /// case, no trailing dot, no wildcard, not an address) the list allows.
    pub fn allows(&self, sni: &str) -> Option<String> {
        let name = super::domain_name(sni)?;
        self.domains.matches(&name).map(|_| name)
    }
}

/// The orders started in the last hour.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    starts: VecDeque<u64>,
}

impl Budget {
    /// Whether an order may start at `now` (seconds) under `per_hour`; counts it if so.
    pub fn take(&mut self, now: u64, per_hour: u32) -> bool {
        while self.starts.front().is_some_and(|&t| t + 3600 <= now) {
            self.starts.pop_front();
        }
        if self.starts.len() >= per_hour as usize {
            return false;
        }
        self.starts.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_names_and_the_hourly_budget() {
        let mut domains = DomainSet::default();
        domains.insert(".example.org");
        domains.insert("shop.example.net");
        let od = OnDemand {
            domains,
            per_hour: 2,
        };
        assert_eq!(od.allows("A.Example.org."), Some("a.example.org".into()));
        assert_eq!(od.allows("example.org"), Some("example.org".into()));
        assert_eq!(
            od.allows("shop.example.net"),
            Some("shop.example.net".into())
        );
        for bad in [
            "example.net",
            "evil-example.org",
            "*.example.org",
            "a..example.org",
            "127.0.0.1",
            "a b.example.org",
            "",
        ] {
            assert_eq!(od.allows(bad), None, "{bad}");
        }
        let mut b = Budget::default();
        assert!(b.take(1000, 2));
        assert!(b.take(1001, 2));
        assert!(!b.take(1002, 2));
        assert!(!b.take(4599, 2));
        assert!(b.take(4600, 2), "the first left the window");
    }
}
