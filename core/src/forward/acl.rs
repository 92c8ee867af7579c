//! Access rules for the forward proxy, evaluated in order like Squid's `http_access`: the first
//! rule whose conditions all hold decides; when none holds, the answer is the opposite of the
//! last rule's (Squid's rule, so a list ending in `allow` for some denies the rest).

use std::net::IpAddr;

use super::{DomainSet, PortSet};

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let ip = s.parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { net: ip, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Whether a rule lets a request through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// One rule: a verdict and conditions; an absent condition holds for everything.
#[derive(Clone, Debug)]
pub struct Rule {
    pub verdict: Verdict,
    pub clients: Vec<Cidr>,
    pub domains: DomainSet,
    pub domain_patterns: Vec<regex::Regex>,
    pub ports: Option<PortSet>,
    pub methods: Vec<String>,
    pub users: Vec<String>,
    pub dest_ips: Vec<Cidr>,
    /// The subject of the client's verified certificate (a TLS forward listener with
    /// `client_auth`) must match.
    pub client_subject: Option<regex::Regex>,
}

impl PartialEq for Rule {
    fn eq(&self, o: &Self) -> bool {
        self.verdict == o.verdict
            && self.clients == o.clients
            && self.domains == o.domains
            && self.domain_patterns.len() == o.domain_patterns.len()
            && self
                .domain_patterns
                .iter()
                .zip(&o.domain_patterns)
                .all(|(a, b)| a.as_str() == b.as_str())
            && self.ports == o.ports
            && self.methods == o.methods
            && self.users == o.users
            && self.dest_ips == o.dest_ips
            && self.client_subject.as_ref().map(regex::Regex::as_str)
                == o.client_subject.as_ref().map(regex::Regex::as_str)
    }
}

impl Eq for Rule {}

/// What a rule is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub client: IpAddr,
    pub host: &'a str,
    pub port: u16,
    pub method: &'a [u8],
    pub user: Option<&'a str>,
    /// The destination's addresses, once resolved (`None` before).
    pub dest: Option<&'a [IpAddr]>,
    /// The subject of the client's verified certificate.
    pub client_subject: Option<&'a str>,
}

impl Rule {
    fn has_domains(&self) -> bool {
        !self.domains.is_empty() || !self.domain_patterns.is_empty()
    }

    /// Whether every condition holds; `None` when one needs the resolved addresses that are
    /// not known yet.
    fn matches(&self, r: &Request<'_>) -> Option<bool> {
        let holds = (self.clients.is_empty() || self.clients.iter().any(|c| c.contains(r.client)))
            && (!self.has_domains()
                || self.domains.matches(r.host).is_some()
                || self.domain_patterns.iter().any(|p| p.is_match(r.host)))
            && self.ports.as_ref().is_none_or(|p| p.contains(r.port))
            && (self.methods.is_empty()
                || self
                    .methods
                    .iter()
                    .any(|m| m.as_bytes().eq_ignore_ascii_case(r.method)))
            && (self.users.is_empty() || r.user.is_some_and(|u| self.users.iter().any(|x| x == u)))
            && self
                .client_subject
                .as_ref()
                .is_none_or(|re| r.client_subject.is_some_and(|s| re.is_match(s)));
        if !holds {
            return Some(false);
        }
        if self.dest_ips.is_empty() {
            return Some(true);
        }
        let dest = r.dest?;
        Some(
            dest.iter()
                .any(|ip| self.dest_ips.iter().any(|c| c.contains(*ip))),
        )
    }
}

/// The outcome of evaluating the rules for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed or denied by rule `index` (`None`: no rule matched, the default applied).
    Decided(Verdict, Option<usize>),
    /// A rule that may match needs the destination's addresses: resolve, then ask again.
    NeedAddresses,
}

/// Evaluates `rules` in order for `r`. With no rules, clients on loopback and in private
/// ranges are allowed and everyone else denied (Squid's default: `localhost` and
/// `localnet`): a proxy someone forgot to write rules for is not open to the Internet.
pub fn evaluate(rules: &[Rule], r: &Request<'_>) -> Decision {
    if rules.is_empty() {
        let v = if super::is_private(r.client) {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        return Decision::Decided(v, None);
    }
    for (i, rule) in rules.iter().enumerate() {
        match rule.matches(r) {
            Some(true) => return Decision::Decided(rule.verdict, Some(i)),
            Some(false) => {}
            None => return Decision::NeedAddresses,
        }
    }
    let default = match rules.last().map(|r| r.verdict) {
        Some(Verdict::Allow) => Verdict::Deny,
        _ => Verdict::Allow,
    };
    Decision::Decided(default, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verdict: Verdict) -> Rule {
        Rule {
            verdict,
            clients: Vec::new(),
            domains: DomainSet::default(),
            domain_patterns: Vec::new(),
            ports: None,
            methods: Vec::new(),
            users: Vec::new(),
            dest_ips: Vec::new(),
            client_subject: None,
        }
    }

    fn req<'a>(client: &str, host: &'a str, port: u16) -> Request<'a> {
        Request {
            client: client.parse().unwrap(),
            host,
            port,
            method: b"GET",
            user: None,
            dest: None,
            client_subject: None,
        }
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("192.0.2.7")
            .unwrap()
            .contains("192.0.2.7".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("nonsense"), None);
    }

    #[test]
    fn first_match_decides_and_the_default_is_the_opposite_of_the_last_rule() {
        let mut office = rule(Verdict::Allow);
        office.clients = vec![Cidr::parse("192.168.0.0/16").unwrap()];
        let mut ads = rule(Verdict::Deny);
        ads.domain_patterns = vec![regex::Regex::new(r"^ads[0-9]*\.").unwrap()];
        ads.domains.insert(".tracker.example");
        let rules = vec![ads, office];
        let d = |r: &Request<'_>| evaluate(&rules, r);
        assert_eq!(
            d(&req("192.168.1.2", "ads7.example.com", 80)),
            Decision::Decided(Verdict::Deny, Some(0))
        );
        assert_eq!(
            d(&req("192.168.1.2", "a.tracker.example", 80)),
            Decision::Decided(Verdict::Deny, Some(0))
        );
        assert_eq!(
            d(&req("192.168.1.2", "example.com", 80)),
            Decision::Decided(Verdict::Allow, Some(1))
        );
        // Nobody else: the last rule allows some, so the rest are denied.
        assert_eq!(
            d(&req("203.0.113.9", "example.com", 80)),
            Decision::Decided(Verdict::Deny, None)
        );
        // No rules at all: local clients only.
        assert_eq!(
            evaluate(&[], &req("203.0.113.9", "x", 80)),
            Decision::Decided(Verdict::Deny, None)
        );
        for local in ["127.0.0.1", "10.1.2.3", "192.168.0.9", "fd00::5", "::1"] {
            assert_eq!(
                evaluate(&[], &req(local, "x", 80)),
                Decision::Decided(Verdict::Allow, None),
                "{local}"
            );
        }
    }

    #[test]
    fn methods_ports_users_and_addresses() {
        let mut connect_high = rule(Verdict::Deny);
        connect_high.methods = vec!["CONNECT".into()];
        connect_high.ports = Some(PortSet(vec![(1024, 65535)]));
        let mut only_alice = rule(Verdict::Allow);
        only_alice.users = vec!["alice".into()];
        let mut internal = rule(Verdict::Deny);
        internal.dest_ips = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let rules = vec![connect_high, internal, only_alice];
        let mut r = req("127.0.0.1", "example.com", 8443);
        r.method = b"CONNECT";
        assert_eq!(
            evaluate(&rules, &r),
            Decision::Decided(Verdict::Deny, Some(0))
        );
        r.method = b"GET";
        r.port = 80;
        assert_eq!(evaluate(&rules, &r), Decision::NeedAddresses);
        let public = ["93.184.216.34".parse().unwrap()];
        r.dest = Some(&public);
        assert_eq!(evaluate(&rules, &r), Decision::Decided(Verdict::Deny, None));
        r.user = Some("alice");
        assert_eq!(
            evaluate(&rules, &r),
            Decision::Decided(Verdict::Allow, Some(2))
        );
        let inside = ["10.1.1.1".parse().unwrap()];
        r.dest = Some(&inside);
        assert_eq!(
            evaluate(&rules, &r),
            Decision::Decided(Verdict::Deny, Some(1))
        );
    }

    #[test]
    fn client_certificate_subjects() {
        let mut r = rule(Verdict::Allow);
        r.client_subject = Some(regex::Regex::new("^CN=alice,").unwrap());
        let rules = [r, rule(Verdict::Deny)];
        let with = |s| Request {
            client_subject: s,
            ..req("203.0.113.9", "example.org", 443)
        };
        assert_eq!(
            evaluate(&rules, &with(Some("CN=alice, O=Example"))),
            Decision::Decided(Verdict::Allow, Some(0))
        );
        assert_eq!(
            evaluate(&rules, &with(Some("CN=bob, O=Example"))),
            Decision::Decided(Verdict::Deny, Some(1))
        );
        assert_eq!(
            evaluate(&rules, &with(None)),
            Decision::Decided(Verdict::Deny, Some(1))
        );
    }
}
