//! The forward proxy's rules: what a client may reach, how much of it the destination learns,
//! and the authority a request names. Pure: the exchange asks, io resolves names.

pub mod acl;
pub mod admit;
pub mod auth;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::http::rewrite::ForwardingPolicy;

/// How much of the client the destination learns (Squid's `forwarded_for` and `via`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anonymity {
    /// `Via` and `X-Forwarded-For` with the client's address (Squid's default).
    Transparent,
    /// `Via`, no client address.
    Anonymous,
    /// Nothing that shows a proxy or a client: no `Via`, `X-Forwarded-For`, `Forwarded` or
    /// `X-Real-IP`, not even ones the client sent.
    Elite,
}

impl Anonymity {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transparent" => Some(Self::Transparent),
            "anonymous" => Some(Self::Anonymous),
            "elite" => Some(Self::Elite),
            _ => None,
        }
    }

    pub fn policy(self) -> ForwardingPolicy {
        match self {
            Self::Transparent => ForwardingPolicy::TRANSPARENT,
            Self::Anonymous => ForwardingPolicy::ANONYMOUS,
            Self::Elite => ForwardingPolicy::ELITE,
        }
    }
}

/// Whether destinations in private, loopback and link-local ranges may be reached (SSRF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivateDestinations {
    /// Only for clients that are themselves on loopback (the default): a proxy open to a
    /// network must not become a way into the machine's own or its neighbours' services.
    LoopbackClientsOnly,
    Deny,
    Allow,
}

impl PrivateDestinations {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "loopback-clients" => Some(Self::LoopbackClientsOnly),
            "deny" => Some(Self::Deny),
            "allow" => Some(Self::Allow),
            _ => None,
        }
    }

    /// Whether `client` may reach `dest`.
    pub fn allows(self, client: IpAddr, dest: IpAddr) -> bool {
        !is_private(dest) || self.private_allowed(client)
    }

    /// Whether `client` may reach private destinations.
    pub fn private_allowed(self, client: IpAddr) -> bool {
        match self {
            Self::Allow => true,
            Self::Deny => false,
            Self::LoopbackClientsOnly => canonical(client).is_loopback(),
        }
    }
}

/// Port ranges (inclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet(pub Vec<(u16, u16)>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// `443`, `8443`, `1024-65535`.
    pub fn parse_item(s: &str) -> Option<(u16, u16)> {
        let s = s.trim();
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let p = s.parse().ok()?;
                (p, p)
            }
        };
        (a > 0 && a <= b).then_some((a, b))
    }
}

/// Squid's default `Safe_ports` (http, ftp, https, gopher, wais, http-mgmt, gss-http,
/// filemaker, multiling http and 1025-65535), less the ports above 1024 of services that speak
/// plain-text protocols an HTTP request can drive (the ports browsers refuse, and Redis and
/// memcached): a forward proxy must not be a relay into them.
pub fn default_safe_ports() -> PortSet {
    const LOW: [u16; 9] = [21, 70, 80, 210, 280, 443, 488, 591, 777];
    const UNSAFE_HIGH: [(u16, u16); 13] = [
        (1719, 1720),
        (1723, 1723),
        (2049, 2049),
        (3659, 3659),
        (4045, 4045),
        (5060, 5061),
        (6000, 6000),
        (6379, 6379),
        (6566, 6566),
        (6665, 6669),
        (6697, 6697),
        (10080, 10080),
        (11211, 11211),
    ];
    let mut ranges: Vec<(u16, u16)> = LOW.iter().map(|&p| (p, p)).collect();
    let mut from = 1025u16;
    for &(a, b) in &UNSAFE_HIGH {
        if from < a {
            ranges.push((from, a - 1));
        }
        from = b + 1;
    }
    ranges.push((from, 65535));
    PortSet(ranges)
}

/// Whether a list entry is an IP address in some spelling (`127.0.0.1`, `127.1`, `2130706433`,
/// `0x7f.1`, `::1`, `[::1]`), which name lists cannot match reliably.
pub fn looks_like_ip(entry: &str) -> bool {
    let e = entry.trim().trim_start_matches('.').trim_end_matches('.');
    let e = e
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(e);
    if e.parse::<IpAddr>().is_ok() {
        return true;
    }
    // Numeric labels only (decimal, octal or hex, as inet_aton reads them).
    !e.is_empty()
        && e.split('.').all(|l| {
            let l = l.to_ascii_lowercase();
            let hex = l.strip_prefix("0x");
            !l.is_empty()
                && match hex {
                    Some(h) => h.bytes().all(|c| c.is_ascii_hexdigit()),
                    None => l.bytes().all(|c| c.is_ascii_digit()),
                }
        })
}

/// Whether `entry` may go in a [`DomainSet`]: a name (`example.com`) or a suffix
/// (`.example.com`) of letters, digits, `-`, `_` and dots.
pub fn valid_domain_entry(entry: &str) -> bool {
    let name = entry.trim().trim_start_matches('.');
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

/// Domains: exact names, and `.suffix` entries that match the name and everything under it.
/// A lookup costs one hash probe per label of the name, whatever the list's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainSet {
    exact: HashSet<String>,
    suffixes: HashSet<String>,
}

impl DomainSet {
    /// Adds `example.com` (that name) or `.example.com` (it and its subdomains). Names are
    /// compared without case and without a trailing dot.
    pub fn insert(&mut self, entry: &str) {
        let e = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        match e.strip_prefix('.') {
            Some(s) if !s.is_empty() => {
                self.suffixes.insert(s.to_string());
            }
            Some(_) => {}
            None if !e.is_empty() => {
                self.exact.insert(e);
            }
            None => {}
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.suffixes.len()
    }

    /// Adds the domains of a list file: one per line (`example.com` or `.example.com`), `#`
    /// comments and blank lines skipped; hosts-file lines (`0.0.0.0 example.com`) give their
    /// name. An error names the 1-based line.
    pub fn add_list(&mut self, text: &str) -> Result<usize, (usize, String)> {
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let name = line.split_whitespace().last().unwrap_or("");
            if !valid_domain_entry(name) {
                return Err((i + 1, format!("expected a domain, got {line:?}")));
            }
            self.insert(name);
            n += 1;
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry `host` matches, if any (for the denial page).
    pub fn matches(&self, host: &str) -> Option<String> {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        if self.exact.contains(&h) {
            return Some(h);
        }
        let mut rest = h.as_str();
        loop {
            if self.suffixes.contains(rest) {
                return Some(format!(".{rest}"));
            }
            match rest.split_once('.') {
                Some((_, r)) => rest = r,
                None => return None,
            }
        }
    }
}

/// The forward proxy's settings (`[forward]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub anonymity: Anonymity,
    /// Ports CONNECT may reach (Squid's `SSL_ports`: 443 unless configured).
    pub connect_ports: PortSet,
    /// Ports a SOCKS5 CONNECT may reach (any, unless configured: SOCKS carries every
    /// protocol, not only TLS).
    pub socks_ports: PortSet,
    /// Ports other requests may reach (Squid's `Safe_ports`): no relaying HTTP into SSH, SMTP,
    /// Redis or memcached.
    pub safe_ports: PortSet,
    pub deny_domains: DomainSet,
    pub private_destinations: PrivateDestinations,
    /// A tunnel with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
    /// The longest a resolved name is reused (its records' TTL when shorter).
    pub dns_ttl: Duration,
    /// How long a name that did not resolve is answered as such without asking again.
    pub dns_negative_ttl: Duration,
    /// Name servers to ask (`resolver`); empty: those of /etc/resolv.conf.
    pub resolver: Vec<std::net::SocketAddr>,
    /// How long one query waits for its answer (`resolver_timeout`); none: resolv.conf's
    /// `timeout` option (5 s by default).
    pub resolver_timeout: Option<Duration>,
    /// The htpasswd file whose users may use the proxy (`auth_file`); none: no
    /// authentication.
    pub auth_file: Option<std::path::PathBuf>,
    /// Its users, read by the caller of `Config::parse` (at start and on every reload).
    pub users: Option<std::sync::Arc<auth::Htpasswd>>,
    /// Access rules, in order (`[[forward.rules]]`).
    pub rules: Vec<acl::Rule>,
    /// Local addresses connections to destinations leave from (`outgoing_address`): the first
    /// of the destination's family is used; none of it, the system chooses.
    pub outgoing: Vec<IpAddr>,
    /// Per user, instead of `outgoing` (`[forward.outgoing_by_user]`).
    pub outgoing_by_user: std::collections::BTreeMap<String, Vec<IpAddr>>,
    /// A file of domains to refuse, one per line, added to `deny_domains` by the caller of
    /// `Config::parse` (at start and on every reload): see [`DomainSet::add_list`].
    pub blocklist: Option<std::path::PathBuf>,
}

impl Default for Forward {
    fn default() -> Self {
        Self {
            anonymity: Anonymity::Transparent,
            connect_ports: PortSet(vec![(443, 443)]),
            socks_ports: PortSet(vec![(1, 65535)]),
            safe_ports: default_safe_ports(),
            deny_domains: DomainSet::default(),
            private_destinations: PrivateDestinations::LoopbackClientsOnly,
            tunnel_idle: Duration::from_secs(300),
            dns_ttl: Duration::from_secs(60),
            dns_negative_ttl: Duration::from_secs(5),
            resolver: Vec::new(),
            resolver_timeout: None,
            auth_file: None,
            users: None,
            rules: Vec::new(),
            blocklist: None,
            outgoing: Vec::new(),
            outgoing_by_user: std::collections::BTreeMap::new(),
        }
    }
}

impl Forward {
    /// The local address to connect to `dest` from, for `user`.
    pub fn outgoing_for(&self, user: Option<&str>, dest: IpAddr) -> Option<IpAddr> {
        let list = user
            .and_then(|u| self.outgoing_by_user.get(u))
            .unwrap_or(&self.outgoing);
        list.iter().copied().find(|a| a.is_ipv4() == dest.is_ipv4())
    }
}

/// A destination named by a request: host (a name, or an IP literal without brackets) and
/// port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

impl Authority {
    /// `host:port`, `host` (with `default_port`), `[v6]:port`. The host must be a valid name
    /// (letters, digits, `-`, `.`, `_`) or an IP literal; no userinfo, no empty port.
    pub fn parse(b: &[u8], default_port: Option<u16>) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            h.parse::<Ipv6Addr>().ok()?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return None,
            };
            (h, port)
        } else {
            match s.rsplit_once(':') {
                // An IPv6 address needs its brackets (`::1:443` is ambiguous).
                Some((h, _)) if h.contains(':') => return None,
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()) => {
                p.parse::<u16>().ok().filter(|&p| p > 0)?
            }
            Some(_) => return None,
            None => default_port?,
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Self {
                host: ip.to_string(),
                port,
            });
        }
        // One canonical spelling for every rule: lower case, no trailing dot; labels of 1 to
        // 63 characters (no empty label, no leading dot). An address spelled another way
        // (`127.1`, `2130706434`, `0x7f.1`) is no name: refused rather than handed to a
        // resolver that might read it as an address behind the rules' back.
        let name = host.strip_suffix('.').unwrap_or(host);
        if looks_like_ip(name) {
            return None;
        }
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
            });
        if !name_ok {
            return None;
        }
        Some(Self {
            host: name.to_ascii_lowercase(),
            port,
        })
    }

    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private (RFC 1918, RFC 4193), link-local, shared (RFC 6598), unspecified,
/// multicast or otherwise not a public unicast destination.
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || a >= 240
                || v4 == Ipv4Addr::new(169, 254, 169, 254)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] == 0x64 && seg[1] == 0xff9b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let a = Authority::parse(b"Example.com:8080", None).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("example.com", 8080));
        assert_eq!(Authority::parse(b"example.com", Some(80)).unwrap().port, 80);
        assert_eq!(Authority::parse(b"example.com", None), None);
        let v6 = Authority::parse(b"[::1]:443", None).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 443));
        assert_eq!(v6.ip(), Some("::1".parse().unwrap()));
        let long = format!("{}.test:80", "a".repeat(64));
        assert_eq!(Authority::parse(long.as_bytes(), None), None);
        // One spelling for rules: the trailing dot and the case go.
        let a = Authority::parse(b"Fast.Evil.Test.:80", None).unwrap();
        assert_eq!(a.host, "fast.evil.test");
        assert!(looks_like_ip("127.1") && looks_like_ip("2130706434"));
        assert!(looks_like_ip("[::ffff:127.0.0.2]") && looks_like_ip("0x7f.1"));
        assert!(!looks_like_ip("example.com") && !looks_like_ip("1.example"));
        for bad in [
            &b"example.com:"[..],
            b"example.com:0",
            b"example.com:99999",
            b"user@example.com:80",
            b"exa mple.com:80",
            b":80",
            b"[::1",
            b"[nothex]:80",
            b"example.com:80x",
            b"::1:443",
            b"a..b:80",
            b".a.b:80",
            b"a.b..:80",
        ] {
            assert_eq!(
                Authority::parse(bad, Some(80)),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest::proptest! {
        /// Every spelling of a destination that reaches the same place is decided the same
        /// way: case and a trailing dot change nothing, an address has one spelling (others
        /// are refused), and a bracketed IPv4-mapped address is the IPv4 one to the rules.
        #[test]
        fn every_spelling_of_a_destination_gets_the_same_rules(
            labels in proptest::collection::vec("[a-z0-9][a-z0-9-]{0,10}", 1..5),
            upper in proptest::collection::vec(proptest::bool::ANY, 0..64),
            dot in proptest::bool::ANY,
            ip in proptest::num::u32::ANY,
            port in 1u16..,
        ) {
            let canonical = labels.join(".");
            let spelled: String = canonical
                .chars()
                .enumerate()
                .map(|(i, c)| if upper.get(i).copied().unwrap_or(false) { c.to_ascii_uppercase() } else { c })
                .collect::<String>()
                + if dot { "." } else { "" };
            let a = Authority::parse(format!("{spelled}:{port}").as_bytes(), None);
            let b = Authority::parse(format!("{canonical}:{port}").as_bytes(), None);
            proptest::prop_assert_eq!(&a, &b);
            if let Some(a) = a {
                proptest::prop_assert_eq!(&a.host, &canonical);
                let mut deny = DomainSet::default();
                deny.insert(&canonical);
                let last = labels.last().unwrap().clone();
                let mut suffix = DomainSet::default();
                suffix.insert(&format!(".{last}"));
                let re = regex::RegexBuilder::new(&format!("{}$", regex::escape(&last)))
                    .case_insensitive(true)
                    .build()
                    .unwrap();
                proptest::prop_assert!(deny.matches(&a.host).is_some());
                proptest::prop_assert!(suffix.matches(&a.host).is_some());
                proptest::prop_assert!(re.is_match(&a.host));
            }
            // An IPv4 address: its dotted form and its mapped IPv6 form are one address to the
            // rules; numeric spellings that resolvers might read as it are refused.
            let v4 = Ipv4Addr::from(ip);
            let dotted = Authority::parse(format!("{v4}:{port}").as_bytes(), None).unwrap();
            let mapped = Authority::parse(format!("[::ffff:{v4}]:{port}").as_bytes(), None).unwrap();
            proptest::prop_assert_eq!(canonical_ip(dotted.ip().unwrap()), canonical_ip(mapped.ip().unwrap()));
            proptest::prop_assert_eq!(is_private(dotted.ip().unwrap()), is_private(mapped.ip().unwrap()));
            let [a1, b1, c1, d1] = v4.octets();
            for other in [
                format!("{ip}"),
                format!("0x{ip:x}"),
                format!("{a1}.{}", u32::from(b1) << 16 | u32::from(c1) << 8 | u32::from(d1)),
                format!("0{a1:o}.{b1}.{c1}.{d1}"),
            ] {
                proptest::prop_assert_eq!(Authority::parse(format!("{other}:{port}").as_bytes(), None), None, "{}", other);
            }
        }
    }

    /// The canonical form of an address, for the property above.
    fn canonical_ip(ip: IpAddr) -> IpAddr {
        canonical(ip)
    }

    #[test]
    fn domain_sets_match_exact_names_and_suffixes() {
        let mut d = DomainSet::default();
        d.insert("Ads.Example.com");
        d.insert(".tracker.net");
        assert_eq!(
            d.matches("ads.example.com."),
            Some("ads.example.com".into())
        );
        assert_eq!(d.matches("www.ads.example.com"), None);
        assert_eq!(d.matches("tracker.net"), Some(".tracker.net".into()));
        assert_eq!(d.matches("a.b.TRACKER.net"), Some(".tracker.net".into()));
        assert_eq!(d.matches("nottracker.net"), None);
        let mut big = DomainSet::default();
        for i in 0..100_000 {
            big.insert(&format!("host{i}.example"));
        }
        assert_eq!(big.len(), 100_000);
        assert!(big.matches("host99999.example").is_some());
        assert!(big.matches("host100000.example").is_none());
    }

    #[test]
    fn list_files() {
        let mut d = DomainSet::default();
        let n = d
            .add_list(
                "# ads\nads.example\n\n.tracker.test  # all of it\n0.0.0.0 hosts-style.example\n",
            )
            .unwrap();
        assert_eq!(n, 3);
        assert!(d.matches("ads.example").is_some());
        assert!(d.matches("x.tracker.test").is_some());
        assert!(d.matches("hosts-style.example").is_some());
        assert_eq!(
            d.add_list("ok.example\nbad domain!\n"),
            Err((2, "expected a domain, got \"bad domain!\"".into()))
        );
    }

    #[test]
    fn private_destinations() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "203.0.113.5".parse().unwrap();
        let p = PrivateDestinations::LoopbackClientsOnly;
        assert!(p.allows(local, local));
        assert!(!p.allows(remote, local));
        assert!(p.allows(remote, "8.8.8.8".parse().unwrap()));
        assert!(!PrivateDestinations::Deny.allows(local, local));
    }

    #[test]
    fn default_safe_ports_are_squids_less_plain_text_services() {
        let p = default_safe_ports();
        for ok in [80, 443, 21, 8080, 1025, 3000, 6378, 6380, 65535] {
            assert!(p.contains(ok), "{ok}");
        }
        for no in [22, 23, 25, 110, 143, 1024, 6379, 11211, 6667, 2049] {
            assert!(!p.contains(no), "{no}");
        }
    }

    #[test]
    fn ports() {
        let p = PortSet(vec![
            PortSet::parse_item("443").unwrap(),
            PortSet::parse_item("1024-65535").unwrap(),
        ]);
        assert!(p.contains(443) && p.contains(8080) && !p.contains(80) && !p.contains(25));
        assert_eq!(PortSet::parse_item("0"), None);
        assert_eq!(PortSet::parse_item("9-1"), None);
        assert_eq!(PortSet::parse_item("x"), None);
    }
}
