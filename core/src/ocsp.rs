//! OCSP stapling (RFC 6960, RFC 6066 §8): the request for a certificate's status, the checks a
//! response must pass before it is stapled, and when to fetch it again. io fetches (off the
//! workers) and staples; the DER is written and read here.
//!
//! A response is stapled only when it is `successful`, a basic response, says `good` for this
//! certificate's serial number, and is current (`thisUpdate` not in the future, `nextUpdate`
//! not past). Its signature is the client's to verify (as with nginx without
//! `ssl_stapling_verify`): a forged response can only make a client refuse the connection.

/// The SHA-1 algorithm identifier, which CertID uses (RFC 6960 §4.1.1; responders expect it).
const SHA1: &[u8] = &[
    0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00,
];
/// id-pkix-ocsp-basic, 1.3.6.1.5.5.7.48.1.1.
const BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// A DER element: `tag`, its length, `content`.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The OCSPRequest for one certificate: SHA-1 of its issuer's name (DER) and of its issuer's
/// public key (the BIT STRING's content), and its serial number (the INTEGER's content).
pub fn request(issuer_name_sha1: &[u8], issuer_key_sha1: &[u8], serial: &[u8]) -> Vec<u8> {
    let cert_id = tlv(
        0x30,
        &[
            SHA1,
            &tlv(0x04, issuer_name_sha1),
            &tlv(0x04, issuer_key_sha1),
            &tlv(0x02, serial),
        ]
        .concat(),
    );
    let request = tlv(0x30, &cert_id);
    let list = tlv(0x30, &request);
    let tbs = tlv(0x30, &list);
    tlv(0x30, &tbs)
}

/// What a checked response says, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub this_update: u64,
    /// `None`: the responder gives none (newer information is always available).
    pub next_update: Option<u64>,
}

impl Current {
    /// When to fetch again: halfway to `nextUpdate` (an hour from now without one), not sooner
    /// than a minute.
    pub fn refresh_at(&self, now: u64) -> u64 {
        let next = self.next_update.unwrap_or(now + 7200);
        (now + next.saturating_sub(now) / 2).max(now + 60)
    }

    /// Whether it may still be stapled at `now`.
    pub fn valid_at(&self, now: u64) -> bool {
        self.next_update.is_none_or(|n| now < n)
    }
}

/// Checks `der`, a responder's answer about the certificate with `serial`, at `now`.
pub fn check(der: &[u8], serial: &[u8], now: u64) -> Result<Current, String> {
    let bad = |what: &str| format!("the OCSP response is malformed ({what})");
    let (resp, _) = read(der, 0x30).ok_or_else(|| bad("OCSPResponse"))?;
    let (status, rest) = read(resp, 0x0a).ok_or_else(|| bad("responseStatus"))?;
    match status {
        [0] => {}
        [s] => {
            let why = match s {
                1 => "malformedRequest",
                2 => "internalError",
                3 => "tryLater",
                5 => "sigRequired",
                6 => "unauthorized",
                _ => "an unknown status",
            };
            return Err(format!("the OCSP responder answered {why}"));
        }
        _ => return Err(bad("responseStatus")),
    }
    let (bytes, _) = read(rest, 0xa0).ok_or_else(|| bad("responseBytes"))?;
    let (bytes, _) = read(bytes, 0x30).ok_or_else(|| bad("ResponseBytes"))?;
    let (kind, rest) = read(bytes, 0x06).ok_or_else(|| bad("responseType"))?;
    if kind != BASIC {
        return Err("the OCSP response is not a basic response".into());
    }
    let (basic, _) = read(rest, 0x04).ok_or_else(|| bad("response"))?;
    let (basic, _) = read(basic, 0x30).ok_or_else(|| bad("BasicOCSPResponse"))?;
    let (data, _) = read(basic, 0x30).ok_or_else(|| bad("ResponseData"))?;
    // version [0] (optional), responderID [1] or [2], producedAt, responses.
    let mut rest = data;
    if rest.first() == Some(&0xa0) {
        rest = read(rest, 0xa0).ok_or_else(|| bad("version"))?.1;
    }
    let tag = *rest.first().ok_or_else(|| bad("responderID"))?;
    rest = read(rest, tag).ok_or_else(|| bad("responderID"))?.1;
    rest = read(rest, 0x18).ok_or_else(|| bad("producedAt"))?.1;
    let (mut responses, _) = read(rest, 0x30).ok_or_else(|| bad("responses"))?;
    while !responses.is_empty() {
        let (single, next) = read(responses, 0x30).ok_or_else(|| bad("SingleResponse"))?;
        responses = next;
        let (cert_id, rest) = read(single, 0x30).ok_or_else(|| bad("certID"))?;
        // hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber.
        let mut id = cert_id;
        id = read(id, 0x30).ok_or_else(|| bad("hashAlgorithm"))?.1;
        id = read(id, 0x04).ok_or_else(|| bad("issuerNameHash"))?.1;
        id = read(id, 0x04).ok_or_else(|| bad("issuerKeyHash"))?.1;
        let (s, _) = read(id, 0x02).ok_or_else(|| bad("serialNumber"))?;
        if s != serial {
            continue;
        }
        let tag = *rest.first().ok_or_else(|| bad("certStatus"))?;
        match tag {
            0x80 => {}
            0xa1 => return Err("the OCSP responder says the certificate is revoked".into()),
            _ => return Err("the OCSP responder does not know the certificate".into()),
        }
        let rest = read(rest, tag).ok_or_else(|| bad("certStatus"))?.1;
        let (this, rest) = read(rest, 0x18).ok_or_else(|| bad("thisUpdate"))?;
        let this_update = generalized_time(this).ok_or_else(|| bad("thisUpdate"))?;
        let next_update = match read(rest, 0xa0) {
            Some((n, _)) => {
                let (t, _) = read(n, 0x18).ok_or_else(|| bad("nextUpdate"))?;
                Some(generalized_time(t).ok_or_else(|| bad("nextUpdate"))?)
            }
            None => None,
        };
        // A few minutes' allowance for clocks that disagree.
        if this_update > now + 300 {
            return Err("the OCSP response is from the future".into());
        }
        let c = Current {
            this_update,
            next_update,
        };
        if !c.valid_at(now) {
            return Err("the OCSP response has expired (nextUpdate is past)".into());
        }
        return Ok(c);
    }
    Err("the OCSP response is not about this certificate".into())
}

/// One element of `tag` at the start of `der`: its content and what follows it.
fn read(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// `YYYYMMDDHHMMSSZ` (fractions allowed) in seconds since the Unix epoch.
fn generalized_time(b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.len() < 15 || !s.ends_with('Z') {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}{}",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[8..10],
        &s[10..12],
        &s[12..14],
        &s[14..]
    );
    crate::acme::renew::rfc3339(&rfc)
}

/// An `http://` responder URL: host, port and path (OCSP runs over plain HTTP; the response is
/// signed).
pub fn responder(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('@') || path.contains(char::is_whitespace) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A basic response about `serial` with `status` ([0] good, [1] revoked).
    fn response(serial: &[u8], status: &[u8], this: &str, next: Option<&str>) -> Vec<u8> {
        let cert_id = tlv(
            0x30,
            &[
                SHA1,
                &tlv(0x04, &[1; 20]),
                &tlv(0x04, &[2; 20]),
                &tlv(0x02, serial),
            ]
            .concat(),
        );
        let mut single = [cert_id, status.to_vec(), tlv(0x18, this.as_bytes())].concat();
        if let Some(n) = next {
            single.extend(tlv(0xa0, &tlv(0x18, n.as_bytes())));
        }
        let data = tlv(
            0x30,
            &[
                tlv(0xa2, &tlv(0x04, &[3; 20])),
                tlv(0x18, b"20261203000000Z"),
                tlv(0x30, &tlv(0x30, &single)),
            ]
            .concat(),
        );
        let basic = tlv(0x30, &[data, SHA1.to_vec(), tlv(0x03, &[0, 1, 2])].concat());
        let bytes = tlv(0x30, &[tlv(0x06, BASIC), tlv(0x04, &basic)].concat());
        tlv(0x30, &[tlv(0x0a, &[0]), tlv(0xa0, &bytes)].concat())
    }

    const NOW: u64 = 1_796_331_600; // 2026-12-03T21:00:00Z

    #[test]
    fn good_current_responses_pass_and_everything_else_says_why() {
        let good = response(
            &[0x12, 0x34],
            &[0x80, 0x00],
            "20261203200000Z",
            Some("20261210200000Z"),
        );
        let c = check(&good, &[0x12, 0x34], NOW).unwrap();
        assert_eq!(c.this_update, NOW - 3600);
        assert_eq!(c.next_update, Some(NOW - 3600 + 7 * 86_400));
        // Refreshed halfway to nextUpdate.
        assert_eq!(c.refresh_at(NOW), NOW + (7 * 86_400 - 3600) / 2);
        let cases: [(Vec<u8>, &[u8], &str); 6] = [
            (good.clone(), &[0x99], "not about this certificate"),
            (
                response(&[0x12, 0x34], &[0xa1, 0x00], "20261203200000Z", None),
                &[0x12, 0x34],
                "revoked",
            ),
            (
                response(&[0x12, 0x34], &[0x82, 0x00], "20261203200000Z", None),
                &[0x12, 0x34],
                "does not know",
            ),
            (
                response(
                    &[0x12, 0x34],
                    &[0x80, 0x00],
                    "20261101000000Z",
                    Some("20261108000000Z"),
                ),
                &[0x12, 0x34],
                "expired",
            ),
            (
                response(&[0x12, 0x34], &[0x80, 0x00], "20261204000000Z", None),
                &[0x12, 0x34],
                "future",
            ),
            (tlv(0x30, &tlv(0x0a, &[3])), &[0x12, 0x34], "tryLater"),
        ];
        for (der, serial, words) in cases {
            let e = check(&der, serial, NOW).unwrap_err();
            assert!(e.contains(words), "{e}");
        }
        // Cut anywhere, or trailing garbage inside: an error, never a panic.
        for n in 0..good.len() {
            assert!(check(&good[..n], &[0x12, 0x34], NOW).is_err());
        }
    }

    #[test]
    fn requests_are_der_and_long_lengths_encode() {
        let r = request(&[1; 20], &[2; 20], &[0x01, 0x02]);
        // SEQUENCE { SEQUENCE { SEQUENCE { SEQUENCE { CertID } } } }
        assert_eq!(r[0], 0x30);
        assert_eq!(usize::from(r[1]) + 2, r.len());
        assert!(r.windows(SHA1.len()).any(|w| w == SHA1));
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(read(&long, 0x04).unwrap().0.len(), 300);
    }

    #[test]
    fn responder_urls() {
        assert_eq!(
            responder("http://ocsp.example.com"),
            Some(("ocsp.example.com".into(), 80, "/".into()))
        );
        assert_eq!(
            responder("http://127.0.0.1:8888/ocsp"),
            Some(("127.0.0.1".into(), 8888, "/ocsp".into()))
        );
        assert_eq!(responder("https://ocsp.example.com/"), None);
        assert_eq!(responder("http://u@h/"), None);
    }
}
