//! ACME (RFC 8555): certificates that ringway obtains and renews itself, as Caddy does, so that
//! an HTTPS site needs no certbot beside it and no reload.
//!
//! Everything here is decided without IO; `io/src/acme.rs` carries it out on a thread of its
//! own (never a worker), with a blocking HTTPS client and the account key's signatures:
//!
//! - [`Order`]: one certificate order as a state machine: directory, nonce, account, order,
//!   authorizations, challenges, finalization, download. It asks for requests ([`Step::Send`])
//!   and takes the CA's replies ([`Reply`]); it asks io to publish a challenge's answer before
//!   telling the CA to look ([`Step::Publish`]); it retries a rejected nonce, polls with the
//!   CA's `Retry-After`, and ends with the PEM chain or the CA's problem, in words.
//! - [`renew`]: when a held certificate is renewed (the CA's ARI window, RFC 9773, else when a
//!   third of its lifetime is left), the ARI certificate id, and the back-off after failures.
//! - [`challenge_token`]: which requests are HTTP-01 validations, answered by the reverse
//!   proxy's plain listeners (redirecting ones included) before routes and rules.
//! - [`tls_alpn`]: the TLS-ALPN-01 protocol name, answered by the TLS listeners.

pub mod demand;
mod order;
pub mod renew;
mod reply;

#[cfg(test)]
mod tests;

pub use order::{Challenge, ChallengeKind, Order, Request, Signer, Step};
pub use reply::{Reply, Url, MAX_REPLY};

use base64::Engine;

/// The path prefix of HTTP-01 validation requests (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &[u8] = b"/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ALPN_PROTOCOL: &[u8] = b"acme-tls/1";

/// The answers to HTTP-01 validations in progress, as io publishes them to the workers.
pub trait Challenges {
    /// The key authorization for `token`, while its validation is in progress.
    fn http01(&self, token: &str) -> Option<String>;
}

/// The token of an HTTP-01 validation request's path: one base64url segment (RFC 8555 §8.3),
/// nothing else.
pub fn challenge_token(path: &[u8]) -> Option<&str> {
    let token = path.strip_prefix(HTTP01_PREFIX)?;
    let ok = !token.is_empty()
        && token.len() <= 256
        && token
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| std::str::from_utf8(token).ok()).flatten()
}

/// base64url without padding, as JOSE and ACME write binary values.
pub fn b64(data: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// SHA-256 of the key authorization: what a TLS-ALPN-01 certificate's `acmeIdentifier`
/// extension holds (RFC 8737 §3).
pub fn tls_alpn_digest(key_authorization: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key_authorization.as_bytes()).into()
}

/// `der` as PEM under `label` (`CERTIFICATE`, `PRIVATE KEY`), lines of 64 characters.
pub fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The renewalInfo URL of a directory, when the CA offers ARI (RFC 9773 §4).
pub fn renewal_info_url(directory: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(directory).ok()?;
    v["renewalInfo"]
        .as_str()
        .map(|u| u.trim_end_matches('/').to_string())
}

/// `name` as a certificate can be issued for it by HTTP-01 or TLS-ALPN-01: lower case, without
/// a trailing dot; `None` for wildcards, addresses and anything that is not a DNS name.
pub fn domain_name(name: &str) -> Option<String> {
    let d = name.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let ok = d.len() <= 253 && d.parse::<std::net::IpAddr>().is_err() && d.split('.').all(label_ok);
    ok.then_some(d)
}
