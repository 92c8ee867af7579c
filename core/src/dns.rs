//! DNS for the forward proxy, sans IO: the queries a stub resolver sends (RFC 1035, A and AAAA
//! with recursion desired), reading their answers strictly, and the files that say where to
//! ask (`/etc/resolv.conf`) and what is known locally (`/etc/hosts`). io sends the queries over
//! UDP on the worker's ring, with per-query timeouts; nothing here blocks or waits.
//!
//! An answer is taken only when it matches the query: same id, a response, the same question;
//! its addresses only from records owned by the name asked or by a name an earlier `CNAME` of
//! the same answer led to (a server cannot slip in addresses for other names).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Record types asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qtype {
    A = 1,
    Aaaa = 28,
}

const CNAME: u16 = 5;
const CLASS_IN: u16 = 1;

/// Writes a query for `name` (a host name without trailing dot, or with one) of type `qtype`
/// with id `id` into `out`. `None` when the name cannot be encoded (an empty label, a label over
/// 63 bytes, a name over 253).
pub fn query(id: u16, name: &str, qtype: Qtype, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    // Flags: a standard query with recursion desired; one question.
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out.extend_from_slice(&(qtype as u16).to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(())
}

/// What an answer said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Addresses, and the least TTL among the records that led to them (seconds).
    Addresses(Vec<IpAddr>, u32),
    /// The name does not exist (NXDOMAIN), or has no record of the type (NODATA).
    NoAddress,
    /// The server failed or refused (SERVFAIL, REFUSED…): ask another.
    ServerFailure,
    /// Truncated: the answer needs TCP.
    Truncated,
}

/// Why a datagram is not an answer to the query (it is ignored: a stray or forged packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotTheAnswer;

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.msg.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) << 16 | u32::from(self.u16()?))
    }

    /// A possibly compressed name, lower-cased, dot-separated without the trailing dot.
    fn name(&mut self) -> Option<String> {
        let mut out = String::new();
        let mut pos = self.pos;
        let mut jumped = false;
        // Each pointer must go backwards: no loops.
        let mut limit = pos;
        loop {
            let len = *self.msg.get(pos)? as usize;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    if !jumped {
                        self.pos = pos + 1;
                    }
                    return Some(out);
                }
                0x00 => {
                    let label = self.msg.get(pos + 1..pos + 1 + len)?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
                    if out.len() > 255 {
                        return None;
                    }
                    pos += 1 + len;
                }
                0xc0 => {
                    let target = (len & 0x3f) << 8 | *self.msg.get(pos + 1)? as usize;
                    if target >= limit {
                        return None;
                    }
                    if !jumped {
                        self.pos = pos + 2;
                        jumped = true;
                    }
                    limit = target;
                    pos = target;
                }
                _ => return None,
            }
        }
    }
}

/// Reads `msg` as the answer to query `id` for `name` of type `qtype`.
pub fn answer(msg: &[u8], id: u16, name: &str, qtype: Qtype) -> Result<Answer, NotTheAnswer> {
    let mut r = Reader { msg, pos: 0 };
    let bad = NotTheAnswer;
    let got_id = r.u16().ok_or(bad)?;
    let flags = r.u16().ok_or(bad)?;
    let (qd, an) = (r.u16().ok_or(bad)?, r.u16().ok_or(bad)?);
    let _ns_ar = (r.u16().ok_or(bad)?, r.u16().ok_or(bad)?);
    // A response (QR), a standard query (opcode 0), one question.
    if got_id != id || flags & 0x8000 == 0 || flags & 0x7800 != 0 || qd != 1 {
        return Err(bad);
    }
    let want = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let qname = r.name().ok_or(bad)?;
    let (qt, qc) = (r.u16().ok_or(bad)?, r.u16().ok_or(bad)?);
    if qname != want || qt != qtype as u16 || qc != CLASS_IN {
        return Err(bad);
    }
    if flags & 0x0200 != 0 {
        return Ok(Answer::Truncated);
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Answer::NoAddress),
        _ => return Ok(Answer::ServerFailure),
    }
    // Records: (owner, type, ttl, data).
    let mut records = Vec::new();
    for _ in 0..an {
        let owner = r.name().ok_or(bad)?;
        let (t, class, ttl) = (
            r.u16().ok_or(bad)?,
            r.u16().ok_or(bad)?,
            r.u32().ok_or(bad)?,
        );
        let len = r.u16().ok_or(bad)? as usize;
        let start = r.pos;
        let data = msg.get(start..start + len).ok_or(bad)?;
        let value = match (t, class) {
            (1, CLASS_IN) if len == 4 => Some(Rec::Ip(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            )))),
            (28, CLASS_IN) if len == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                Some(Rec::Ip(IpAddr::V6(Ipv6Addr::from(o))))
            }
            (CNAME, CLASS_IN) => Some(Rec::Alias(r.name().ok_or(bad)?)),
            _ => None,
        };
        r.pos = start + len;
        if let Some(v) = value {
            records.push((owner, t, ttl.min(i32::MAX as u32), v));
        }
    }
    // Follow CNAMEs from the name asked (in any order, a bounded number of times).
    let mut names = vec![want];
    for _ in 0..8 {
        let before = names.len();
        for (owner, _, _, v) in &records {
            if let Rec::Alias(target) = v {
                if names.contains(owner) && !names.contains(target) {
                    names.push(target.clone());
                }
            }
        }
        if names.len() == before {
            break;
        }
    }
    let mut ips = Vec::new();
    let mut ttl = u32::MAX;
    for (owner, t, rttl, v) in &records {
        if !names.contains(owner) {
            continue;
        }
        match v {
            Rec::Ip(ip) if *t == qtype as u16 => {
                ips.push(*ip);
                ttl = ttl.min(*rttl);
            }
            Rec::Alias(_) => ttl = ttl.min(*rttl),
            Rec::Ip(_) => {}
        }
    }
    if ips.is_empty() {
        return Ok(Answer::NoAddress);
    }
    Ok(Answer::Addresses(ips, ttl))
}

enum Rec {
    Ip(IpAddr),
    Alias(String),
}

/// Where to ask and how patiently: `/etc/resolv.conf`'s `nameserver` lines and its `timeout`
/// and `attempts` options (glibc's defaults otherwise), or the configured `resolver`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Servers {
    pub addrs: Vec<SocketAddr>,
    /// How long one query waits for its answer.
    pub timeout: Duration,
    /// Rounds over the servers before a name is given up.
    pub attempts: u32,
}

impl Servers {
    /// Reads resolv.conf text. No `nameserver` line: the local one (127.0.0.1:53), as glibc.
    pub fn from_resolv_conf(text: &str) -> Self {
        let mut s = Self {
            addrs: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
        };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        if s.addrs.len() < 3 {
                            s.addrs.push(SocketAddr::new(ip, 53));
                        }
                    }
                }
                Some("options") => {
                    for o in words {
                        if let Some(v) = o
                            .strip_prefix("timeout:")
                            .and_then(|v| v.parse::<u64>().ok())
                        {
                            s.timeout = Duration::from_secs(v.clamp(1, 30));
                        } else if let Some(v) = o
                            .strip_prefix("attempts:")
                            .and_then(|v| v.parse::<u32>().ok())
                        {
                            s.attempts = v.clamp(1, 5);
                        }
                    }
                }
                _ => {}
            }
        }
        if s.addrs.is_empty() {
            s.addrs.push(SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        s
    }
}

/// Names known from `/etc/hosts`: lower-cased name → its addresses, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts(HashMap<String, Vec<IpAddr>>);

impl Hosts {
    pub fn parse(text: &str) -> Self {
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
                continue;
            };
            for name in words {
                let v = map
                    .entry(name.trim_end_matches('.').to_ascii_lowercase())
                    .or_default();
                if !v.contains(&ip) {
                    v.push(ip);
                }
            }
        }
        Self(map)
    }

    pub fn get(&self, name: &str) -> Option<&[IpAddr]> {
        let n = name.trim_end_matches('.');
        if n.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.0.get(&n.to_ascii_lowercase()).map(Vec::as_slice);
        }
        self.0.get(n).map(Vec::as_slice)
    }
}

/// The order to dial a name's addresses in: IPv6 and IPv4 interleaved, the family of the first
/// answer first (RFC 8305 §4, without the racing), so a dead address of one family does not
/// hide the other.
pub fn interleave(v6: &[IpAddr], v4: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.iter(), v4.iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y).copied()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `q` with `answers` (owner, type, ttl, rdata) and `rcode`.
    fn response(q: &[u8], rcode: u8, answers: &[(&str, u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[7] = answers.len() as u8;
        for (owner, t, ttl, data) in answers {
            for l in owner.split('.') {
                m.push(l.len() as u8);
                m.extend_from_slice(l.as_bytes());
            }
            m.push(0);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&1u16.to_be_bytes());
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    fn name_bytes(n: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for l in n.split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    }

    #[test]
    fn queries_and_answers() {
        let mut q = Vec::new();
        query(0x1234, "Good.Test.", Qtype::A, &mut q).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x04good\x04test\x00\x00\x01\x00\x01");
        assert!(query(1, "a..b", Qtype::A, &mut q).is_none());
        assert!(query(1, &"a".repeat(64), Qtype::A, &mut q).is_none());

        query(7, "good.test", Qtype::A, &mut q).unwrap();
        let r = response(&q, 0, &[("good.test", 1, 30, vec![127, 0, 0, 1])]);
        assert_eq!(
            answer(&r, 7, "good.test", Qtype::A),
            Ok(Answer::Addresses(vec!["127.0.0.1".parse().unwrap()], 30))
        );
        // Not the answer: another id, another question, a query.
        assert_eq!(answer(&r, 8, "good.test", Qtype::A), Err(NotTheAnswer));
        assert_eq!(answer(&r, 7, "evil.test", Qtype::A), Err(NotTheAnswer));
        assert_eq!(answer(&r, 7, "good.test", Qtype::Aaaa), Err(NotTheAnswer));
        assert_eq!(answer(&q, 7, "good.test", Qtype::A), Err(NotTheAnswer));
        assert_eq!(
            answer(&r[..20], 7, "good.test", Qtype::A),
            Err(NotTheAnswer)
        );
        // NXDOMAIN, SERVFAIL, truncated.
        assert_eq!(
            answer(&response(&q, 3, &[]), 7, "good.test", Qtype::A),
            Ok(Answer::NoAddress)
        );
        assert_eq!(
            answer(&response(&q, 2, &[]), 7, "good.test", Qtype::A),
            Ok(Answer::ServerFailure)
        );
        let mut tc = response(&q, 0, &[]);
        tc[2] |= 0x02;
        assert_eq!(answer(&tc, 7, "good.test", Qtype::A), Ok(Answer::Truncated));
    }

    #[test]
    fn only_records_the_name_leads_to() {
        let mut q = Vec::new();
        query(9, "www.test", Qtype::A, &mut q).unwrap();
        let r = response(
            &q,
            0,
            &[
                ("www.test", CNAME, 300, name_bytes("edge.cdn.test")),
                ("edge.cdn.test", 1, 20, vec![127, 0, 0, 2]),
                // Slipped in for another name: ignored.
                ("bank.test", 1, 9999, vec![10, 0, 0, 1]),
            ],
        );
        assert_eq!(
            answer(&r, 9, "www.test", Qtype::A),
            Ok(Answer::Addresses(vec!["127.0.0.2".parse().unwrap()], 20))
        );
        // Compression pointers, including one that loops, are read safely.
        let mut c = q.clone();
        c[2] = 0x81;
        c[3] = 0x80;
        c[7] = 1;
        c.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 0, 0, 3]);
        assert_eq!(
            answer(&c, 9, "www.test", Qtype::A),
            Ok(Answer::Addresses(vec!["127.0.0.3".parse().unwrap()], 5))
        );
        let mut l = c.clone();
        let at = q.len();
        l[at] = 0xc0;
        l[at + 1] = at as u8; // points at itself
        assert_eq!(answer(&l, 9, "www.test", Qtype::A), Err(NotTheAnswer));
    }

    #[test]
    fn resolv_conf_and_hosts() {
        let s = Servers::from_resolv_conf(
            "# x\nnameserver 127.0.0.53\nnameserver ::1 # v6\nsearch example\noptions timeout:2 attempts:3 rotate\n",
        );
        assert_eq!(
            s.addrs,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!((s.timeout, s.attempts), (Duration::from_secs(2), 3));
        assert_eq!(
            Servers::from_resolv_conf("").addrs,
            vec!["127.0.0.1:53".parse().unwrap()]
        );
        let h = Hosts::parse("127.0.0.1 localhost\n::1 localhost ip6-localhost\n# 10.0.0.1 x\n");
        assert_eq!(
            h.get("LocalHost."),
            Some(&["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()][..])
        );
        assert_eq!(h.get("x"), None);
        let v6: Vec<IpAddr> = vec!["::1".parse().unwrap()];
        let v4: Vec<IpAddr> = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        assert_eq!(
            interleave(&v6, &v4),
            vec![v6[0], v4[0], v4[1]],
            "the next family after a dead address"
        );
    }
}
