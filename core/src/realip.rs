//! The real client behind trusted proxies: when the peer is one of `[server] trusted_proxies`
//! (a load balancer, a CDN), the client is the rightmost address of `X-Forwarded-For` (or
//! `Forwarded: for=`) that is not itself trusted, like nginx's `real_ip_recursive on`. An
//! untrusted peer's fields are never believed. Logs, rules, rate limits, balancing by address
//! and the `X-Forwarded-For` sent upstream all use the address found.

use std::net::IpAddr;

use crate::http::Header;
use crate::rules::CidrSet;

/// Which field carries the chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChainField {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` parameters.
    Forwarded,
}

/// `[server] trusted_proxies` and the field they write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trusted {
    pub proxies: CidrSet,
    pub field: ChainField,
}

/// What the listener learnt of the client's certificate (mutual TLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Certificate {
    /// The listener does not ask for one.
    #[default]
    NotAsked,
    /// Asked for (optionally) and none was presented.
    None,
    /// Presented and verified against the listener's client CAs.
    Verified(Box<crate::clientcert::ClientCert>),
}

impl Certificate {
    /// The subject of a verified certificate.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Self::Verified(c) => Some(&c.subject),
            Self::NotAsked | Self::None => None,
        }
    }
}

/// The client of one connection and of its current request.
#[derive(Clone, Debug)]
pub struct Client {
    /// The connection's peer.
    pub peer: IpAddr,
    /// The client of the current request: the peer, or who a trusted peer says it relays.
    pub addr: IpAddr,
    /// `addr` as text (forwarding fields, balancing).
    pub text: Vec<u8>,
    /// `peer` as text.
    pub peer_text: Vec<u8>,
    /// The connection's client certificate, on listeners that ask for one.
    pub cert: Certificate,
}

impl Client {
    pub fn new(peer: IpAddr) -> Self {
        Self::with_buffers(peer, Vec::new(), Vec::new())
    }

    /// As [`Client::new`], writing the texts into buffers a previous connection left (no
    /// allocation when they are large enough).
    pub fn with_buffers(peer: IpAddr, mut text: Vec<u8>, mut peer_text: Vec<u8>) -> Self {
        write_addr(&mut peer_text, peer);
        text.clear();
        text.reserve(ADDR_TEXT);
        text.extend_from_slice(&peer_text);
        Self {
            peer,
            addr: peer,
            peer_text,
            text,
            cert: Certificate::NotAsked,
        }
    }

    /// No client (what a finished exchange keeps once its buffers are taken).
    pub fn none() -> Self {
        let peer = IpAddr::from([0, 0, 0, 0]);
        Self {
            peer,
            addr: peer,
            peer_text: Vec::new(),
            text: Vec::new(),
            cert: Certificate::NotAsked,
        }
    }

    /// Gives back the texts' buffers (for the next connection).
    pub fn into_buffers(self) -> (Vec<u8>, Vec<u8>) {
        (self.text, self.peer_text)
    }

    /// Finds the client of a request: `Some` when it is not the peer.
    pub fn resolve(&mut self, t: &Trusted, buf: &[u8], headers: &[Header]) -> Option<IpAddr> {
        let found = if t.proxies.is_empty() || !t.proxies.contains(self.peer) {
            self.peer
        } else {
            chain_client(t, buf, headers).unwrap_or(self.peer)
        };
        if found != self.addr {
            self.addr = found;
            write_addr(&mut self.text, found);
        }
        (found != self.peer).then_some(found)
    }
}

/// Room for any address as text (the longest, IPv6 with an embedded IPv4 part, is 45 bytes).
const ADDR_TEXT: usize = 48;

/// `addr` as text into `buf` (replacing what it held), without a `String` in between.
fn write_addr(buf: &mut Vec<u8>, addr: IpAddr) {
    use std::io::Write;
    buf.clear();
    buf.reserve(ADDR_TEXT);
    match addr {
        // By hand: the formatter took about 1,000 instructions, a tenth of what a connection
        // costs ringway's own code beyond its request (callgrind, docs/benchmarks-log.md run 41).
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                crate::http::rewrite::push_u64(buf, u64::from(octet));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(buf, "{addr}");
        }
    }
}

/// Walks the chain from the right (the hop nearest to us) past trusted addresses.
fn chain_client(t: &Trusted, buf: &[u8], headers: &[Header]) -> Option<IpAddr> {
    let name: &[u8] = match t.field {
        ChainField::XForwardedFor => b"x-forwarded-for",
        ChainField::Forwarded => b"forwarded",
    };
    let mut hops: Vec<&[u8]> = Vec::new();
    for h in headers {
        if h.name.get(buf).eq_ignore_ascii_case(name) {
            hops.extend(h.value.get(buf).split(|&b| b == b','));
        }
    }
    let mut client = None;
    for hop in hops.iter().rev() {
        let addr = match t.field {
            ChainField::XForwardedFor => parse_hop(hop),
            ChainField::Forwarded => forwarded_for(hop).and_then(parse_hop),
        };
        // A hop that is not an address (garbage, `unknown`, an obfuscated name) ends the walk:
        // what is left of it was written by nobody we trust.
        let Some(a) = addr else { break };
        client = Some(a);
        if !t.proxies.contains(a) {
            break;
        }
    }
    client
}

/// `192.0.2.1`, `192.0.2.1:5000`, `2001:db8::1`, `[2001:db8::1]:5000`, `"[2001:db8::1]"`.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(hop).ok()?.trim().trim_matches('"');
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(a);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (ip, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        (pair.len() > 4 && pair[..4].eq_ignore_ascii_case(b"for=")).then(|| &pair[4..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let addrs = [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.99.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8:800:200c:417a",
            "::ffff:192.0.2.1",
        ];
        let mut buf = b"left over".to_vec();
        for a in addrs {
            let ip: IpAddr = a.parse().unwrap();
            write_addr(&mut buf, ip);
            assert_eq!(buf, ip.to_string().into_bytes());
        }
    }

    fn with(field: ChainField, fields: &[(&str, &str)]) -> (Vec<u8>, Vec<Header>) {
        let mut text = String::from("GET / HTTP/1.1\r\n");
        for (n, v) in fields {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str("\r\n");
        let buf = text.into_bytes();
        let mut headers = Vec::new();
        crate::http::parse_request(&buf, &mut headers, &Default::default()).unwrap();
        let _ = field;
        (buf, headers)
    }

    fn trusted(field: ChainField) -> Trusted {
        let mut proxies = CidrSet::default();
        assert!(proxies.add("10.0.0.0/8"));
        assert!(proxies.add("2001:db8:ffff::/48"));
        Trusted { proxies, field }
    }

    fn resolve(peer: &str, field: ChainField, fields: &[(&str, &str)]) -> String {
        let (buf, headers) = with(field, fields);
        let mut c = Client::new(peer.parse().unwrap());
        c.resolve(&trusted(field), &buf, &headers);
        String::from_utf8(c.text).unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_hop_behind_trusted_peers() {
        let x = ChainField::XForwardedFor;
        // One load balancer: its peer is the client.
        assert_eq!(
            resolve("10.0.0.2", x, &[("X-Forwarded-For", "198.51.100.7")]),
            "198.51.100.7"
        );
        // A client that forges the field gets its own address, not the forged one: the
        // balancer appended the real one on the right.
        assert_eq!(
            resolve(
                "10.0.0.2",
                x,
                &[("X-Forwarded-For", "1.1.1.1, 198.51.100.7")]
            ),
            "198.51.100.7"
        );
        // Two trusted hops, across two fields, ports and brackets.
        assert_eq!(
            resolve(
                "10.0.0.2",
                x,
                &[
                    ("X-Forwarded-For", "1.1.1.1, 198.51.100.7:5555"),
                    ("X-Forwarded-For", "10.9.9.9")
                ]
            ),
            "198.51.100.7"
        );
        assert_eq!(
            resolve(
                "2001:db8:ffff::1",
                x,
                &[("X-Forwarded-For", "[2001:db8::7]:443")]
            ),
            "2001:db8::7"
        );
        // Everything trusted: the leftmost.
        assert_eq!(
            resolve("10.0.0.2", x, &[("X-Forwarded-For", "10.1.1.1, 10.2.2.2")]),
            "10.1.1.1"
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            resolve(
                "10.0.0.2",
                x,
                &[("X-Forwarded-For", "198.51.100.9, evil, 10.3.3.3")]
            ),
            "10.3.3.3"
        );
        // No field: the peer. An untrusted peer is never overridden.
        assert_eq!(resolve("10.0.0.2", x, &[]), "10.0.0.2");
        assert_eq!(
            resolve("203.0.113.5", x, &[("X-Forwarded-For", "1.1.1.1")]),
            "203.0.113.5"
        );
    }

    #[test]
    fn forwarded_for_parameters() {
        let f = ChainField::Forwarded;
        assert_eq!(
            resolve(
                "10.0.0.2",
                f,
                &[(
                    "Forwarded",
                    "for=1.1.1.1, for=\"[2001:db8::7]:443\";proto=https, for=10.5.5.5;by=x"
                )]
            ),
            "2001:db8::7"
        );
        assert_eq!(
            resolve("10.0.0.2", f, &[("Forwarded", "for=unknown")]),
            "10.0.0.2"
        );
        assert_eq!(
            resolve("10.0.0.2", f, &[("Forwarded", "proto=https")]),
            "10.0.0.2"
        );
    }
}
