//! Which certificates may answer a TLS client, from the name it asks for (SNI).
//!
//! The data plane owns the certificates; this index owns the rule that picks among them, so
//! the rule is tested here without any TLS: the certificates holding the exact name first,
//! then those holding the wildcard `*.parent` (one label only, as RFC 6125 §6.4.3 allows),
//! then, unless strict, every certificate in the order configured (the first is the default,
//! also for clients that send no name). Names compare case-insensitively, and a trailing dot
//! is ignored.

use std::collections::HashMap;

/// Certificates (by index) per name.
#[derive(Clone, Debug, Default)]
pub struct NameIndex {
    exact: HashMap<String, Vec<usize>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Vec<usize>>,
    /// Every certificate in order, for names no certificate holds; empty when strict.
    fallback: Vec<usize>,
}

impl NameIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds certificate `cert` holding `names` (DNS names, possibly `*.parent`). `default`:
    /// it may also answer names no certificate holds.
    pub fn add<'a>(
        &mut self,
        cert: usize,
        names: impl IntoIterator<Item = &'a str>,
        default: bool,
    ) {
        if default && !self.fallback.contains(&cert) {
            self.fallback.push(cert);
        }
        for name in names {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let list = match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_string()).or_default(),
                None => self.exact.entry(name).or_default(),
            };
            if !list.contains(&cert) {
                list.push(cert);
            }
        }
    }

    /// The certificates that may answer `sni`, best first; empty: refuse the handshake.
    pub fn candidates(&self, sni: Option<&str>) -> &[usize] {
        let Some(name) = sni else {
            return &self.fallback;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| {
                name.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .map_or(&self.fallback, Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(strict: bool) -> NameIndex {
        let mut ix = NameIndex::new();
        ix.add(0, ["example.com"], !strict);
        ix.add(1, ["*.Example.com"], !strict);
        ix.add(2, ["api.example.com"], !strict);
        ix.add(3, ["api.example.com.", "other.net"], !strict);
        ix
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_covers_one_label() {
        let ix = index(true);
        assert_eq!(ix.candidates(Some("api.example.com")), &[2, 3]);
        assert_eq!(ix.candidates(Some("API.Example.com.")), &[2, 3]);
        assert_eq!(ix.candidates(Some("www.example.com")), &[1]);
        assert_eq!(ix.candidates(Some("example.com")), &[0]);
        assert_eq!(ix.candidates(Some("other.net")), &[3]);
        assert!(ix.candidates(Some("a.b.example.com")).is_empty());
        assert!(ix.candidates(Some("example.org")).is_empty());
        assert!(ix.candidates(None).is_empty());
    }

    #[test]
    fn every_certificate_in_order_serves_unknown_names_unless_strict() {
        let ix = index(false);
        assert_eq!(ix.candidates(Some("example.org")), &[0, 1, 2, 3]);
        assert_eq!(ix.candidates(None), &[0, 1, 2, 3]);
        assert_eq!(ix.candidates(Some("www.example.com")), &[1]);
    }
}
