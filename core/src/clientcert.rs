//! Client certificates (mutual TLS): what a listener that asks for one tells the upstream and
//! the rules about the client. The handshake verifies the chain (rustls, against the listener's
//! client CAs); io hands over the leaf's subject and fingerprint, and everything decided from
//! them is here.

/// A verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's distinguished name (`CN=alice, O=Example`), printable ASCII only: any
    /// other byte is written `\xNN`, so it can go into a header field and a log line as is.
    pub subject: String,
    /// SHA-256 of the certificate (DER), lower-case hex.
    pub fingerprint: String,
}

impl ClientCert {
    pub fn new(subject: &str, sha256: &[u8]) -> Self {
        let mut s = String::with_capacity(subject.len());
        for c in subject.chars() {
            if c == ' ' || c.is_ascii_graphic() {
                s.push(c);
            } else {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    s.push_str(&format!("\\x{byte:02x}"));
                }
            }
        }
        Self {
            subject: s,
            fingerprint: sha256.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// The request fields that carry the verdict upstream (and that no client may send).
pub const VERIFY: &[u8] = b"X-Client-Verify";
pub const SUBJECT: &[u8] = b"X-Client-Cert-Subject";
pub const FINGERPRINT: &[u8] = b"X-Client-Cert-Fingerprint";

/// Writes the fields for `cert` (nothing on a listener that does not ask).
pub fn write_fields(cert: &crate::realip::Certificate, out: &mut Vec<u8>) {
    use crate::realip::Certificate;
    match cert {
        Certificate::NotAsked => {}
        Certificate::None => out.extend_from_slice(b"X-Client-Verify: NONE\r\n"),
        Certificate::Verified(c) => {
            out.extend_from_slice(b"X-Client-Verify: SUCCESS\r\nX-Client-Cert-Subject: ");
            out.extend_from_slice(c.subject.as_bytes());
            out.extend_from_slice(b"\r\nX-Client-Cert-Fingerprint: ");
            out.extend_from_slice(c.fingerprint.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realip::Certificate;

    #[test]
    fn subjects_are_made_safe_for_fields_and_fingerprints_are_hex() {
        let c = ClientCert::new("CN=alice\r\nX-Evil: 1, O=Ex\u{e9}", &[0xab, 0x01]);
        assert_eq!(c.subject, "CN=alice\\x0d\\x0aX-Evil: 1, O=Ex\\xc3\\xa9");
        assert_eq!(c.fingerprint, "ab01");
        let mut out = Vec::new();
        write_fields(&Certificate::Verified(Box::new(c)), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\r\n").count(), 3, "{text}");
        assert!(text.starts_with("X-Client-Verify: SUCCESS\r\n"));
        let mut out = Vec::new();
        write_fields(&Certificate::None, &mut out);
        assert_eq!(out, b"X-Client-Verify: NONE\r\n");
        let mut out = Vec::new();
        write_fields(&Certificate::NotAsked, &mut out);
        assert!(out.is_empty());
    }
}
