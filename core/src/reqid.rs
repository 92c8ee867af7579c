//! Request ids (`[server] request_id`): one per request on HTTP listeners, kept from a trusted
//! peer that sent a well-formed one, else made here; sent upstream, returned to the client and
//! logged, so one id follows a request through every hop (nginx's `$request_id`, HAProxy's
//! `unique-id-header`, Envoy's `x-request-id`).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// The longest id kept from a peer.
pub const MAX_LEN: usize = 64;

/// One request's id: up to [`MAX_LEN`] visible characters, held inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// An id a trusted peer sent, when it is one: 1 to 64 characters of letters, digits and
    /// `-._:+/=` (what UUIDs, hex ids, W3C trace ids and base64 use; nothing that could end a
    /// field or start another in a log line).
    pub fn accept(v: &[u8]) -> Option<Self> {
        let ok = !v.is_empty()
            && v.len() <= MAX_LEN
            && v.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._:+/=".contains(&b));
        ok.then(|| {
            let mut bytes = [0; MAX_LEN];
            bytes[..v.len()].copy_from_slice(v);
            Self {
                len: v.len() as u8,
                bytes,
            }
        })
    }
}

/// A worker's source of ids: 32 hex digits (128 bits, like nginx's `$request_id`), a random
/// half chosen when the worker starts and a half that is a keyed bijection of the worker's
/// count of requests, so no two ids of one worker are ever equal and they show neither order
/// nor volume. They are unique, not secret.
#[derive(Debug)]
pub struct Ids {
    prefix: u64,
    keys: (u64, u64),
    next: Cell<u64>,
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

fn random() -> u64 {
    // The standard library seeds each `RandomState` from the system's random source.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x7269_6e67_7761_7921);
    h.finish()
}

/// splitmix64's finaliser: a bijection of `u64` that mixes every bit into every bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ids {
    pub fn new() -> Self {
        Self {
            prefix: random(),
            keys: (random(), random()),
            next: Cell::new(0),
        }
    }

    /// The next id.
    pub fn next(&self) -> RequestId {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let low = mix(n ^ self.keys.0) ^ self.keys.1;
        let mut bytes = [0; MAX_LEN];
        let hex = b"0123456789abcdef";
        for (i, b) in bytes[..32].iter_mut().enumerate() {
            let word = if i < 16 { self.prefix } else { low };
            *b = hex[((word >> (60 - 4 * (i % 16))) & 0xf) as usize];
        }
        RequestId { len: 32, bytes }
    }
}

/// The id of a request from `peer` with the fields `headers` (in `buf`), when `server` asks
/// for ids: the one a trusted peer sent in the id field, when well formed, else the next of
/// `ids`.
pub fn for_request(
    server: &crate::config::Server,
    ids: Option<&Ids>,
    peer: std::net::IpAddr,
    buf: &[u8],
    headers: &[crate::http::Header],
) -> Option<RequestId> {
    let name = server.request_id.as_deref()?;
    let ids = ids?;
    let kept = server
        .trusted
        .proxies
        .contains(peer)
        .then(|| crate::http::find_header(buf, headers, name.as_bytes()))
        .flatten()
        .and_then(RequestId::accept);
    Some(kept.unwrap_or_else(|| ids.next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_32_hex_digits_and_never_repeat() {
        let ids = Ids::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.next();
            assert_eq!(id.as_bytes().len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert!(seen.insert(id.as_bytes().to_vec()));
        }
        // Another worker's differ.
        assert_ne!(Ids::new().next(), Ids::new().next());
    }

    #[test]
    fn only_well_formed_ids_are_kept() {
        for ok in [
            &b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"abc",
            b"YWJj+/=",
        ] {
            assert_eq!(RequestId::accept(ok).unwrap().as_bytes(), ok);
        }
        for bad in [
            &b""[..],
            b"a b",
            b"a\r\nX-Evil: 1",
            b"a\"b",
            b"<script>",
            &[b'a'; 65],
            b"caf\xc3\xa9",
        ] {
            assert!(RequestId::accept(bad).is_none(), "{bad:?}");
        }
    }
}
