//! Choosing a server within an upstream group.
//!
//! A balancer is built from the group's server list and picks an index; the caller owns health
//! and connection state and passes in which servers may be chosen. Indices, not pointers, so a
//! balancer is plain data that each worker keeps its own copy of.

/// Picks servers by index from a group of `n`.
pub trait Balancer {
    /// Chooses one of the servers for which `eligible(i)` is true, or `None` if there is none.
    fn pick(&mut self, eligible: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// Plain round-robin: each call starts one past the previous choice.
#[derive(Clone, Debug)]
pub struct RoundRobin {
    n: usize,
    next: usize,
}

impl RoundRobin {
    /// `seed` staggers the starting point so workers do not all begin at server 0.
    pub fn new(n: usize, seed: usize) -> Self {
        Self {
            n,
            next: if n == 0 { 0 } else { seed % n },
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&mut self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        for k in 0..self.n {
            let i = (self.next + k) % self.n;
            if eligible(i) {
                self.next = (i + 1) % self.n;
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_skips_ineligible() {
        let mut rr = RoundRobin::new(3, 0);
        let all = |_| true;
        let got: Vec<_> = (0..6).map(|_| rr.pick(&all).unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
        let not1 = |i| i != 1;
        let got: Vec<_> = (0..4).map(|_| rr.pick(&not1).unwrap()).collect();
        assert_eq!(got, [0, 2, 0, 2]);
        assert_eq!(rr.pick(&|_| false), None);
        assert_eq!(RoundRobin::new(0, 5).pick(&all), None);
    }
}
