//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer in front
//! writes at the start of a connection, naming the client it accepted. Parsed here from the
//! bytes read so far; io reads until [`parse`] decides, before TLS.
//!
//! v1: `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n` (at most 107 bytes), or
//! `PROXY UNKNOWN …\r\n`. v2: a 12-byte signature, version and command, family and
//! protocol, a 16-bit length, the addresses, then TLVs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;
/// The most a v2 header may announce here (addresses and TLVs): the longest a balancer sends
/// in practice is a few hundred bytes; more is refused, not buffered.
pub const V2_MAX_LEN: usize = 2048;

/// What the header says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The client and the address it connected to, for a proxied TCP connection; `None` for
    /// `LOCAL` (the balancer's own health check) and `UNKNOWN` or other families: the
    /// connection's own addresses then stand.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// v2 TLVs (type, value), as sent.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

impl Header {
    /// A v2 TLV's value (`0x01` ALPN, `0x02` authority, `0x05` unique ID, …).
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }
}

/// What the bytes read so far are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough yet to decide: read more.
    Partial,
    /// A header of `len` bytes; what follows is the connection's own data.
    Header { len: usize, header: Header },
    /// The connection does not start with a header (only a listener where it is optional
    /// goes on: every byte is the connection's own).
    Absent,
    /// A header that is malformed: close the connection.
    Invalid(&'static str),
}

/// Decides on `buf`, the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return if n < V2_SIG.len() {
            Parsed::Partial
        } else {
            v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Parsed::Partial } else { v1(buf) };
    }
    Parsed::Absent
}

fn v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("a PROXY v1 line longer than 107 bytes")
        } else {
            Parsed::Partial
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Parsed::Invalid("a PROXY v1 line not ended by CRLF");
    }
    let Ok(line) = std::str::from_utf8(&buf[6..end - 1]) else {
        return Parsed::Invalid("a PROXY v1 line that is not ASCII");
    };
    let mut words = line.split(' ');
    let family = words.next().unwrap_or("");
    let header = match family {
        "UNKNOWN" => Header::default(),
        "TCP4" | "TCP6" => {
            let parts: Vec<&str> = words.collect();
            let [src, dst, sport, dport] = parts[..] else {
                return Parsed::Invalid("a PROXY v1 line without its four fields");
            };
            let ip = |s: &str| -> Option<IpAddr> {
                if family == "TCP4" {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            // Ports are decimal without leading zeros (the spec: 0 to 65535).
            let port = |s: &str| -> Option<u16> {
                (!s.is_empty() && (s == "0" || !s.starts_with('0')) && s.len() <= 5)
                    .then(|| s.parse().ok())
                    .flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => Header {
                    source: Some(SocketAddr::new(s, sp)),
                    destination: Some(SocketAddr::new(d, dp)),
                    tlvs: Vec::new(),
                },
                _ => return Parsed::Invalid("a PROXY v1 line with a bad address or port"),
            }
        }
        _ => return Parsed::Invalid("a PROXY v1 line with an unknown protocol"),
    };
    Parsed::Header {
        len: end + 1,
        header,
    }
}

fn v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::Partial;
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("a PROXY v2 header of another version");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("a PROXY v2 header with an unknown command"),
    };
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_LEN {
        return Parsed::Invalid("a PROXY v2 header longer than 2048 bytes");
    }
    if buf.len() < 16 + len {
        return Parsed::Partial;
    }
    let body = &buf[16..16 + len];
    // TCP over IPv4 (0x11) and IPv6 (0x21) carry addresses we use; UDP and unix sockets,
    // and UNSPEC, are accepted with the connection's own addresses.
    let (addrs, rest) = match fam {
        0x11 | 0x12 if body.len() >= 12 => {
            let a = |i: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[i],
                    body[i + 1],
                    body[i + 2],
                    body[i + 3],
                ))
            };
            let p = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            (
                (fam == 0x11).then(|| (SocketAddr::new(a(0), p(8)), SocketAddr::new(a(4), p(10)))),
                &body[12..],
            )
        }
        0x21 | 0x22 if body.len() >= 36 => {
            let a = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let p = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            (
                (fam == 0x21)
                    .then(|| (SocketAddr::new(a(0), p(32)), SocketAddr::new(a(16), p(34)))),
                &body[36..],
            )
        }
        0x31 | 0x32 if body.len() >= 216 => (None, &body[216..]),
        0x00 => (None, body),
        0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32 => {
            return Parsed::Invalid("a PROXY v2 header too short for its addresses")
        }
        _ => return Parsed::Invalid("a PROXY v2 header with an unknown family"),
    };
    let mut tlvs = Vec::new();
    let mut t = rest;
    while !t.is_empty() {
        if t.len() < 3 {
            return Parsed::Invalid("a truncated PROXY v2 TLV");
        }
        let l = usize::from(u16::from_be_bytes([t[1], t[2]]));
        if t.len() < 3 + l {
            return Parsed::Invalid("a truncated PROXY v2 TLV");
        }
        // Type 0x04 (NOOP) is padding.
        if t[0] != 0x04 {
            tlvs.push((t[0], t[3..3 + l].to_vec()));
        }
        t = &t[3 + l..];
    }
    let (source, destination) = match (local, addrs) {
        (false, Some((s, d))) => (Some(s), Some(d)),
        _ => (None, None),
    };
    Parsed::Header {
        len: 16 + len,
        header: Header {
            source,
            destination,
            tlvs,
        },
    }
}

/// The version of the header ringway sends to an upstream (`[upstreams.NAME]
/// proxy_protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The header that tells an upstream the connection is for `source`, which connected to
/// `destination`.
pub fn header(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    match version {
        Version::V2 => v2_header(source, destination, &[]),
        Version::V1 => {
            // Both addresses of one family: an IPv4 client of an IPv6 listener is written
            // as a mapped IPv6 address.
            let (s, d) = match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
                (s, d) => {
                    let v6 = |a: IpAddr| match a {
                        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                        v6 => v6,
                    };
                    (v6(s), v6(d))
                }
            };
            let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {s} {d} {} {}\r\n",
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
    }
}

/// A header for a connection of the sender's own (a health check): `UNKNOWN` in v1, `LOCAL`
/// in v2; the receiver uses the connection's addresses.
pub fn local_header(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIG.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            out
        }
    }
}

/// A v2 header for `source` → `destination` (what a balancer writes; the tests' and the fuzz
/// target's reference).
pub fn v2_header(source: SocketAddr, destination: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = V2_SIG.to_vec();
    out.push(0x21);
    let mut body = Vec::new();
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21);
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
        }
    }
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    for (k, v) in tlvs {
        body.push(*k);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_headers_parse_as_local() {
        for v in [Version::V1, Version::V2] {
            let mut h = local_header(v);
            let n = h.len();
            h.extend_from_slice(b"GET");
            match parse(&h) {
                Parsed::Header { len, header } => {
                    assert_eq!(len, n, "{v:?}");
                    assert!(header.source.is_none(), "{v:?}");
                }
                other => panic!("{v:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn what_is_sent_upstream_parses_back() {
        for (s, d) in [
            ("192.0.2.1:56324", "198.51.100.1:443"),
            ("[2001:db8::1]:1", "[2001:db8::2]:2"),
            ("192.0.2.1:7", "[2001:db8::2]:8"),
        ] {
            for v in [Version::V1, Version::V2] {
                let mut h = header(v, sa(s), sa(d));
                h.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let Parsed::Header { len, header } = parse(&h) else {
                    panic!("{v:?} {s} {d}: {:?}", String::from_utf8_lossy(&h))
                };
                assert_eq!(&h[len..len + 3], b"GET");
                let src = header.source.unwrap();
                assert_eq!(src.port(), sa(s).port());
                let ip = match src.ip() {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                    v4 => v4,
                };
                assert_eq!(ip, sa(s).ip(), "{v:?}");
            }
        }
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let Parsed::Header { len, header } = parse(line) else {
            panic!()
        };
        assert_eq!(&line[len..len + 3], b"GET");
        assert_eq!(header.source, Some(sa("192.0.2.1:56324")));
        assert_eq!(header.destination, Some(sa("198.51.100.1:443")));
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(
            matches!(parse(v6), Parsed::Header { header, .. } if header.source == Some(sa("[2001:db8::1]:1")))
        );
        assert!(
            matches!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Header { len: 15, header } if header.source.is_none())
        );
        assert!(matches!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
            Parsed::Header { .. }
        ));
        // Every prefix of a valid line is Partial.
        for i in 0..line.len().min(45) {
            assert_eq!(parse(&line[..i]), Parsed::Partial, "{i}");
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 056324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 70000 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.1 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Absent);
        assert_eq!(parse(b"\x16\x03\x01"), Parsed::Absent);
        assert_eq!(parse(b"PROX"), Parsed::Partial);
    }

    #[test]
    fn v2_headers() {
        let h = v2_header(
            sa("192.0.2.1:56324"),
            sa("198.51.100.1:443"),
            &[(0x02, b"example.org"), (0x04, b"\0\0")],
        );
        let mut conn = h.clone();
        conn.extend_from_slice(b"\x16\x03\x01");
        let Parsed::Header { len, header } = parse(&conn) else {
            panic!()
        };
        assert_eq!(len, h.len());
        assert_eq!(header.source, Some(sa("192.0.2.1:56324")));
        assert_eq!(header.tlv(0x02), Some(&b"example.org"[..]));
        assert_eq!(header.tlvs.len(), 1, "NOOP padding is dropped");
        for i in 0..h.len() {
            assert_eq!(parse(&h[..i]), Parsed::Partial, "{i}");
        }
        let v6 = v2_header(sa("[2001:db8::7]:1000"), sa("[2001:db8::1]:443"), &[]);
        assert!(
            matches!(parse(&v6), Parsed::Header { header, .. } if header.source == Some(sa("[2001:db8::7]:1000")))
        );
        // LOCAL: the balancer's own connection.
        let mut local = h.clone();
        local[12] = 0x20;
        assert!(matches!(parse(&local), Parsed::Header { header, .. } if header.source.is_none()));
        // Malformed: version, command, family, lengths, a truncated TLV.
        for (i, v) in [(12, 0x11u8), (12, 0x2f), (13, 0x55)] {
            let mut b = h.clone();
            b[i] = v;
            assert!(matches!(parse(&b), Parsed::Invalid(_)), "byte {i} = {v:#x}");
        }
        let mut short = h[..16].to_vec();
        short[14..16].copy_from_slice(&4u16.to_be_bytes());
        short.extend_from_slice(&[0; 4]);
        assert!(matches!(parse(&short), Parsed::Invalid(_)));
        let mut huge = h[..16].to_vec();
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
        let mut tlv = h[..16].to_vec();
        tlv[14..16].copy_from_slice(&14u16.to_be_bytes());
        tlv.extend_from_slice(&h[16..28]);
        tlv.extend_from_slice(&[0x02, 0x00]);
        assert!(matches!(parse(&tlv), Parsed::Invalid(_)));
    }
}
