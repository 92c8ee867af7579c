//! Choosing a server within an upstream group.
//!
//! A balancer is built from the group's servers (their weights) and picks an index. The caller
//! owns health and connection state and passes in which servers may be chosen and how busy each
//! is, so a balancer is plain data that each worker keeps its own copy of. Indices, not
//! pointers.
//!
//! Algorithms: smooth weighted round-robin (nginx's), weighted least-connections, IP hash, and
//! consistent hashing with bounded loads (a hash ring where no server takes more than `c` times
//! the mean load).

/// What a balancer may look at for one pick.
pub struct Pick<'a> {
    /// Hash of the request's key (client IP, header, cookie, path); 0 when the algorithm has none.
    pub key: u64,
    /// Whether server `i` may be chosen (up, not draining, under its connection limit, in the
    /// tier being tried).
    pub eligible: &'a dyn Fn(usize) -> bool,
    /// Requests in flight on server `i`.
    pub load: &'a dyn Fn(usize) -> u32,
}

/// Picks servers by index.
pub trait Balancer {
    /// Chooses one of the eligible servers, or `None` if there is none.
    fn pick(&mut self, p: &Pick<'_>) -> Option<usize>;
}

/// Smooth weighted round-robin, as in nginx: weights 5, 1, 1 give a a b a c a a, not bursts.
#[derive(Clone, Debug)]
pub struct SmoothWeighted {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            weights: weights.iter().map(|&w| i64::from(w.max(1))).collect(),
            current: vec![0; weights.len()],
        }
    }
}

impl Balancer for SmoothWeighted {
    fn pick(&mut self, p: &Pick<'_>) -> Option<usize> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if !(p.eligible)(i) {
                continue;
            }
            self.current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// Weighted least-connections: the server with the fewest in-flight requests per unit of
/// weight; ties go round-robin so equal servers share evenly.
#[derive(Clone, Debug)]
pub struct LeastConn {
    weights: Vec<u64>,
    next: usize,
}

impl LeastConn {
    pub fn new(weights: &[u32], seed: usize) -> Self {
        Self {
            weights: weights.iter().map(|&w| u64::from(w.max(1))).collect(),
            next: if weights.is_empty() {
                0
            } else {
                seed % weights.len()
            },
        }
    }
}

impl Balancer for LeastConn {
    fn pick(&mut self, p: &Pick<'_>) -> Option<usize> {
        let n = self.weights.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            if !(p.eligible)(i) {
                continue;
            }
            // load_i / w_i < load_b / w_b  ⇔  load_i * w_b < load_b * w_i
            let better = best.is_none_or(|b| {
                u64::from((p.load)(i)) * self.weights[b] < u64::from((p.load)(b)) * self.weights[i]
            });
            if better {
                best = Some(i);
            }
        }
        let b = best?;
        self.next = (b + 1) % n;
        Some(b)
    }
}

/// IP hash: the same client address goes to the same server while it is eligible; otherwise
/// to the next eligible one after it.
#[derive(Clone, Debug)]
pub struct IpHash {
    n: usize,
}

impl IpHash {
    pub fn new(n: usize) -> Self {
        Self { n }
    }
}

impl Balancer for IpHash {
    fn pick(&mut self, p: &Pick<'_>) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        let start = (p.key % self.n as u64) as usize;
        (0..self.n)
            .map(|k| (start + k) % self.n)
            .find(|&i| (p.eligible)(i))
    }
}

/// Points on the ring per unit of weight.
const POINTS_PER_WEIGHT: u32 = 160;

/// Consistent hashing on a ring of virtual nodes, with bounded loads (Mirrokni, Thorup and
/// Zadimoghaddam, "Consistent Hashing with Bounded Loads"): walking clockwise from the key's
/// point, the first eligible server whose load is under `ceil(c × (total + 1) / n)` is chosen.
/// Adding one server to `n` moves about `1/(n+1)` of the keys; no server takes more than `c`
/// times the mean load.
#[derive(Clone, Debug)]
pub struct ConsistentHash {
    /// (point, server), sorted by point.
    ring: Vec<(u64, usize)>,
    n: usize,
    factor: f64,
}

impl ConsistentHash {
    /// `ids` name the servers (their addresses): a server keeps its points when others come and
    /// go, which is what keeps most keys in place.
    pub fn new(ids: &[&str], weights: &[u32], factor: f64) -> Self {
        let mut ring = Vec::new();
        for (i, (id, &w)) in ids.iter().zip(weights).enumerate() {
            for v in 0..POINTS_PER_WEIGHT * w.max(1) {
                ring.push((hash_bytes(format!("{id}#{v}").as_bytes()), i));
            }
        }
        ring.sort_unstable();
        Self {
            ring,
            n: ids.len(),
            factor: factor.max(1.0),
        }
    }
}

impl Balancer for ConsistentHash {
    fn pick(&mut self, p: &Pick<'_>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        // No allocation per pick: eligibility is asked again while walking the ring.
        let (mut live, mut total) = (0usize, 0u64);
        for i in (0..self.n).filter(|&i| (p.eligible)(i)) {
            live += 1;
            total += u64::from((p.load)(i));
        }
        if live == 0 {
            return None;
        }
        let cap = ((total + 1) as f64 * self.factor / live as f64).ceil() as u64;
        let start = self.ring.partition_point(|&(point, _)| point < p.key);
        let mut fallback = None;
        for k in 0..self.ring.len() {
            let (_, i) = self.ring[(start + k) % self.ring.len()];
            if !(p.eligible)(i) {
                continue;
            }
            if u64::from((p.load)(i)) < cap {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }
}

/// Builds the balancer a group's configuration asks for. `seed` staggers workers' starting points.
pub fn for_group(u: &crate::config::Upstream, seed: usize) -> Box<dyn Balancer> {
    use crate::config::Balance;
    let weights: Vec<u32> = u.servers.iter().map(|s| s.weight).collect();
    match &u.balance {
        Balance::RoundRobin => {
            let mut b = SmoothWeighted::new(&weights);
            // Advance each worker's copy differently so workers do not all start on server 0.
            for _ in 0..seed % weights.len().max(1) {
                let _ = b.pick(&Pick {
                    key: 0,
                    eligible: &|_| true,
                    load: &|_| 0,
                });
            }
            Box::new(b)
        }
        Balance::LeastConn => Box::new(LeastConn::new(&weights, seed)),
        Balance::IpHash => Box::new(IpHash::new(weights.len())),
        Balance::Hash { factor, .. } => {
            let ids: Vec<String> = u.servers.iter().map(|s| s.addr.to_string()).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            Box::new(ConsistentHash::new(&refs, &weights, *factor))
        }
    }
}

/// The hash of what a group's `balance` keys on, for one request; 0 for algorithms without a
/// key. A missing header or cookie hashes as empty, so such requests share one server.
pub fn request_key(
    balance: &crate::config::Balance,
    buf: &[u8],
    path: &[u8],
    headers: &[crate::http::Header],
    client_ip: &[u8],
) -> u64 {
    use crate::config::{Balance, HashKey};
    match balance {
        Balance::RoundRobin | Balance::LeastConn => 0,
        Balance::IpHash => hash_bytes(client_ip),
        Balance::Hash { key, .. } => match key {
            HashKey::ClientIp => hash_bytes(client_ip),
            HashKey::Path => hash_bytes(path),
            HashKey::Header(name) => {
                hash_bytes(crate::http::find_header(buf, headers, name.as_bytes()).unwrap_or(b""))
            }
            HashKey::Cookie(name) => {
                hash_bytes(cookie(buf, headers, name.as_bytes()).unwrap_or(b""))
            }
        },
    }
}

/// The value of cookie `name` in the request's Cookie fields.
fn cookie<'b>(buf: &'b [u8], headers: &[crate::http::Header], name: &[u8]) -> Option<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"cookie"))
        .flat_map(|h| h.value.get(buf).split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = crate::http::trim_ows(pair);
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name).then(|| &pair[eq + 1..])
        })
}

/// 64-bit FNV-1a followed by a SplitMix64 finaliser: stable across runs and machines (keys must
/// map the same way in every worker and after restarts), well spread over the ring.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests;
