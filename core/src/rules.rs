//! `[[rules]]`: allow, deny and tarpit rules for the reverse proxy's requests, evaluated in
//! order after routing: the first rule whose conditions all hold decides; when none holds the
//! request goes on. Conditions: client address blocks (inline or from files, looked up by
//! prefix length in hash sets, so 100k entries cost a handful of lookups), method, path
//! prefixes and a regex on the normalised path (what routing matched, so `%2e%2e` and `//`
//! tricks see the same path the upstream gets), header presence or value, user agent,
//! listener and route.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use regex::bytes::Regex;

/// Address blocks, looked up by prefix length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrSet {
    v4: HashMap<u8, HashSet<u32>>,
    v6: HashMap<u8, HashSet<u128>>,
    len: usize,
}

impl CidrSet {
    /// Adds `10.0.0.0/8`, `2001:db8::/32` or one address; `false` when it is none of those.
    pub fn add(&mut self, s: &str) -> bool {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => match (ip.parse::<IpAddr>(), p.parse::<u8>()) {
                (Ok(ip), Ok(p)) => (ip, p),
                _ => return false,
            },
            None => match s.parse::<IpAddr>() {
                Ok(ip) => (ip, if ip.is_ipv4() { 32 } else { 128 }),
                Err(_) => return false,
            },
        };
        match ip {
            IpAddr::V4(v4) if prefix <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                self.v4
                    .entry(prefix)
                    .or_default()
                    .insert(u32::from(v4) & mask);
            }
            IpAddr::V6(v6) if prefix <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                self.v6
                    .entry(prefix)
                    .or_default()
                    .insert(u128::from(v6) & mask);
            }
            _ => return false,
        }
        self.len += 1;
        true
    }

    /// Adds a list file's entries: one block per line, `#` comments, blank lines skipped.
    /// Returns the line and text of the first bad entry.
    pub fn add_list(&mut self, text: &str) -> Result<(), (usize, String)> {
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if !entry.is_empty() && !self.add(entry) {
                return Err((
                    i + 1,
                    format!("{entry:?} is not an address or a block like 10.0.0.0/8"),
                ));
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                self.v4.iter().any(|(&p, set)| {
                    set.contains(&(a & u32::MAX.checked_shl(32 - u32::from(p)).unwrap_or(0)))
                })
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                self.v6.iter().any(|(&p, set)| {
                    set.contains(&(a & u128::MAX.checked_shl(128 - u32::from(p)).unwrap_or(0)))
                })
            }
        }
    }
}

/// What a rule does with the requests it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// Go on; later rules are not looked at.
    Allow,
    /// Answer with this status and body.
    Deny { status: u16, body: String },
    /// Hold the connection this long, answer nothing, close (a scanner's time is wasted, not
    /// the upstream's).
    Tarpit(Duration),
}

impl RuleAction {
    /// Its name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny { .. } => "deny",
            Self::Tarpit(_) => "tarpit",
        }
    }
}

/// One `[[rules]]` entry; an absent condition holds for every request.
#[derive(Clone, Debug)]
pub struct Rule {
    /// What metrics call it (`rules[i]` unless named).
    pub name: String,
    pub action: RuleAction,
    pub clients: Option<CidrSet>,
    /// Upper-case method names.
    pub methods: Option<Vec<String>>,
    /// Prefixes of the normalised path.
    pub paths: Option<Vec<String>>,
    pub path_regex: Option<Regex>,
    /// Lower-case header names, each with a regex its value must match (`None`: present).
    pub headers: Vec<(String, Option<Regex>)>,
    pub user_agent: Option<Regex>,
    /// The verified client certificate's subject must match (no certificate: no match).
    pub client_subject: Option<Regex>,
    pub routes: Option<Vec<usize>>,
    pub listeners: Option<Vec<SocketAddr>>,
    /// A file of address blocks, read by the caller into `clients` (and again on reload).
    pub clients_file: Option<std::path::PathBuf>,
}

/// What a rule looks at.
pub struct Seen<'a> {
    pub client: IpAddr,
    pub listener: SocketAddr,
    pub route: Option<usize>,
    pub method: &'a [u8],
    /// The normalised path (without the query).
    pub path: &'a [u8],
    pub header: &'a dyn Fn(&[u8]) -> Option<&'a [u8]>,
    /// The subject of the connection's verified client certificate.
    pub client_subject: Option<&'a str>,
}

impl Rule {
    pub fn matches(&self, r: &Seen<'_>) -> bool {
        if let Some(l) = &self.listeners {
            if !l.contains(&r.listener) {
                return false;
            }
        }
        if let Some(routes) = &self.routes {
            if !r.route.is_some_and(|i| routes.contains(&i)) {
                return false;
            }
        }
        if let Some(c) = &self.clients {
            if !c.contains(r.client) {
                return false;
            }
        }
        if let Some(m) = &self.methods {
            if !m.iter().any(|m| m.as_bytes() == r.method) {
                return false;
            }
        }
        if let Some(p) = &self.paths {
            if !p.iter().any(|p| r.path.starts_with(p.as_bytes())) {
                return false;
            }
        }
        if let Some(re) = &self.path_regex {
            if !re.is_match(r.path) {
                return false;
            }
        }
        for (name, value) in &self.headers {
            match ((r.header)(name.as_bytes()), value) {
                (None, _) => return false,
                (Some(v), Some(re)) if !re.is_match(v) => return false,
                _ => {}
            }
        }
        if let Some(re) = &self.user_agent {
            if !(r.header)(b"user-agent").is_some_and(|v| re.is_match(v)) {
                return false;
            }
        }
        if let Some(re) = &self.client_subject {
            if !r.client_subject.is_some_and(|s| re.is_match(s.as_bytes())) {
                return false;
            }
        }
        true
    }
}

/// The first rule that matches, with its index; `None`: no rule said anything.
pub fn evaluate<'r>(rules: &'r [Rule], r: &Seen<'_>) -> Option<(usize, &'r RuleAction)> {
    rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.matches(r))
        .map(|(i, rule)| (i, &rule.action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(path: &'a [u8], header: &'a dyn Fn(&[u8]) -> Option<&'a [u8]>) -> Seen<'a> {
        Seen {
            client: "192.0.2.9".parse().unwrap(),
            listener: "127.0.0.1:80".parse().unwrap(),
            route: Some(0),
            method: b"GET",
            path,
            header,
            client_subject: None,
        }
    }

    fn rule(action: RuleAction) -> Rule {
        Rule {
            name: "r".into(),
            action,
            clients: None,
            methods: None,
            paths: None,
            path_regex: None,
            headers: Vec::new(),
            user_agent: None,
            client_subject: None,
            routes: None,
            listeners: None,
            clients_file: None,
        }
    }

    #[test]
    fn cidr_sets_hold_many_blocks() {
        let mut s = CidrSet::default();
        let mut list = String::from("# blocklist\n\n");
        for i in 0..100_000u32 {
            list.push_str(&format!(
                "{}\n",
                std::net::Ipv4Addr::from(0x0b00_0000 + i * 4)
            ));
        }
        list.push_str("10.0.0.0/8 # private\n2001:db8::/32\n");
        s.add_list(&list).unwrap();
        assert_eq!(s.len(), 100_002);
        assert!(s.contains("11.0.0.4".parse().unwrap()));
        assert!(!s.contains("11.0.0.5".parse().unwrap()));
        assert!(s.contains("10.200.0.1".parse().unwrap()));
        assert!(s.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(s.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!s.contains("2001:db9::1".parse().unwrap()));
        assert_eq!(
            CidrSet::default().add_list("10.0.0.0/8\nnope\n"),
            Err((
                2,
                "\"nope\" is not an address or a block like 10.0.0.0/8".into()
            ))
        );
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let deny = RuleAction::Deny {
            status: 403,
            body: "no".into(),
        };
        let mut admin = rule(deny.clone());
        admin.paths = Some(vec!["/admin/".into()]);
        let mut office = rule(RuleAction::Allow);
        let mut c = CidrSet::default();
        c.add("192.0.2.0/24");
        office.clients = Some(c);
        let mut scanner = rule(RuleAction::Tarpit(Duration::from_secs(5)));
        scanner.user_agent = Some(Regex::new("(?i)sqlmap|nikto").unwrap());
        let mut wp = rule(deny.clone());
        wp.path_regex = Some(Regex::new(r"^/wp-(login|admin)").unwrap());
        let rules = [office.clone(), admin.clone(), scanner, wp];
        let none = |_: &[u8]| -> Option<&[u8]> { None };
        // The office is allowed before the admin rule is reached.
        assert_eq!(
            evaluate(&rules, &seen(b"/admin/x", &none)),
            Some((0, &RuleAction::Allow))
        );
        let others = [admin, rules[2].clone(), rules[3].clone()];
        assert_eq!(
            evaluate(&others, &seen(b"/admin/x", &none)).map(|r| r.0),
            Some(0)
        );
        assert_eq!(evaluate(&others, &seen(b"/adminx", &none)), None);
        let ua = |n: &[u8]| -> Option<&[u8]> { (n == b"user-agent").then_some(&b"SQLMap/1.7"[..]) };
        assert_eq!(evaluate(&others, &seen(b"/", &ua)).map(|r| r.0), Some(1));
        assert_eq!(
            evaluate(&others, &seen(b"/wp-login.php", &none)).map(|r| r.0),
            Some(2)
        );
        // Header presence and value.
        let mut debug = rule(deny);
        debug.headers = vec![("x-debug".into(), Some(Regex::new("^1$").unwrap()))];
        let on = |n: &[u8]| -> Option<&[u8]> { (n == b"x-debug").then_some(&b"1"[..]) };
        let off = |n: &[u8]| -> Option<&[u8]> { (n == b"x-debug").then_some(&b"0"[..]) };
        assert!(debug.matches(&seen(b"/", &on)));
        assert!(!debug.matches(&seen(b"/", &off)));
        assert!(!debug.matches(&seen(b"/", &none)));
    }
}
