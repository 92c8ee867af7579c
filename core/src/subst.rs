//! Body substitution (a route's `body_replace`, nginx's `sub_filter`): literal strings replaced
//! in text responses as they stream by, across read and chunk boundaries.
//!
//! Matching is ASCII case-insensitive and leftmost-first (the earlier rule wins at one
//! position), as nginx's is; with `once`, each rule replaces its first match only. The
//! streaming stage keeps back the last `longest - 1` bytes of what it was given, the most a
//! match that has not finished arriving can hold, so memory per response is bounded by the
//! longest `from`, whatever the body's size.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::http::body::Stage;

/// A route's replacement rules, compiled once per configuration.
#[derive(Clone, Debug)]
pub struct BodyReplace {
    inner: Arc<Rules>,
    /// Media types (lower case, no parameters) whose bodies are rewritten; `type/*` matches a
    /// whole type.
    pub types: Vec<String>,
}

#[derive(Debug)]
struct Rules {
    ac: AhoCorasick,
    to: Vec<Vec<u8>>,
    once: bool,
    longest: usize,
}

impl PartialEq for BodyReplace {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) && self.types == other.types
    }
}

impl Eq for BodyReplace {}

/// The most rules a route may have, and the longest string one may match.
pub const MAX_RULES: usize = 64;
pub const MAX_FROM: usize = 1024;

impl BodyReplace {
    /// Rules `(from, to)` in order; `Err` names what is wrong.
    pub fn new(
        rules: &[(Vec<u8>, Vec<u8>)],
        once: bool,
        types: Vec<String>,
    ) -> Result<Self, String> {
        if rules.is_empty() || rules.len() > MAX_RULES {
            return Err(format!("expected 1 to {MAX_RULES} rules"));
        }
        if let Some(i) = rules
            .iter()
            .position(|(f, _)| f.is_empty() || f.len() > MAX_FROM)
        {
            return Err(format!("rule {i}: `from` must be 1 to {MAX_FROM} bytes"));
        }
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(rules.iter().map(|(f, _)| f))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(Rules {
                ac,
                to: rules.iter().map(|(_, t)| t.clone()).collect(),
                once,
                longest: rules.iter().map(|(f, _)| f.len()).max().unwrap_or(1),
            }),
            types,
        })
    }

    /// Whether a response of `media` type (lower case) is rewritten.
    pub fn applies(&self, media: Option<&str>) -> bool {
        media.is_some_and(|m| {
            self.types.iter().any(|t| match t.strip_suffix("/*") {
                Some(main) => m.split_once('/').is_some_and(|(a, _)| a == main),
                None => t == m,
            })
        })
    }

    /// The stage that rewrites one body.
    pub fn stage(&self) -> Replacer {
        Replacer {
            rules: self.inner.clone(),
            held: Vec::new(),
            used: vec![false; self.inner.to.len()],
            scratch: Vec::new(),
        }
    }
}

/// One body's substitution: a [`Stage`].
#[derive(Debug)]
pub struct Replacer {
    rules: Arc<Rules>,
    /// Bytes kept back: the start of a match that may finish in the next piece.
    held: Vec<u8>,
    /// Rules that matched (with `once`, they match no more).
    used: Vec<bool>,
    scratch: Vec<u8>,
}

impl Stage for Replacer {
    fn data(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(&self.held);
        buf.extend_from_slice(payload);
        // A match starting before `keep` ends within `buf`: one starting later may not.
        let keep = buf.len().saturating_sub(self.rules.longest - 1);
        let pos = self.scan_until(&buf, keep, out);
        self.held.clear();
        self.held.extend_from_slice(&buf[pos..]);
        self.scratch = buf;
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        let pos = self.scan_until(&held, held.len(), out);
        out.extend_from_slice(&held[pos..]);
    }
}

impl Replacer {
    /// Writes `buf` up to `keep` (and through any match that starts before it) with its
    /// matches replaced; returns where the rest, held back, starts.
    fn scan_until(&mut self, buf: &[u8], keep: usize, out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        for m in self.rules.ac.find_iter(buf) {
            if m.start() >= keep {
                break;
            }
            let i = m.pattern().as_usize();
            if self.rules.once && self.used[i] {
                continue;
            }
            self.used[i] = true;
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(&self.rules.to[i]);
            pos = m.end();
        }
        let upto = keep.max(pos);
        out.extend_from_slice(&buf[pos..upto]);
        upto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(rules: &[(&str, &str)], once: bool) -> BodyReplace {
        let rules: Vec<_> = rules
            .iter()
            .map(|(f, t)| (f.as_bytes().to_vec(), t.as_bytes().to_vec()))
            .collect();
        BodyReplace::new(&rules, once, vec!["text/html".into()]).unwrap()
    }

    /// Feeds `body` in pieces of `n` bytes and returns the output.
    fn run(b: &BodyReplace, body: &str, n: usize) -> String {
        let mut s = b.stage();
        let mut out = Vec::new();
        for piece in body.as_bytes().chunks(n.max(1)) {
            s.data(piece, &mut out);
        }
        s.end(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn matches_are_replaced_across_every_split() {
        let b = r(
            &[
                ("http://backend:8080", "https://example.org"),
                ("foo", "bar"),
            ],
            false,
        );
        let body = "<a href=\"http://backend:8080/x\">foo</a> HTTP://BACKEND:8080 fo";
        let want = "<a href=\"https://example.org/x\">bar</a> https://example.org fo";
        for n in 1..=body.len() {
            assert_eq!(run(&b, body, n), want, "pieces of {n}");
        }
    }

    #[test]
    fn once_replaces_each_rule_first_match_only() {
        let b = r(&[("a", "1"), ("b", "2")], true);
        for n in 1..6 {
            assert_eq!(run(&b, "xaabba", n), "x1a2ba", "pieces of {n}");
        }
    }

    #[test]
    fn leftmost_first_and_overlaps() {
        let b = r(&[("abc", "X"), ("ab", "Y"), ("bcd", "Z")], false);
        for n in 1..8 {
            assert_eq!(run(&b, "abcd ab bcd", n), "Xd Y Z", "pieces of {n}");
        }
    }

    #[test]
    fn what_is_held_back_is_bounded_by_the_longest_rule() {
        let b = r(&[("needle-in-a-haystack", "found")], false);
        let mut s = b.stage();
        let mut out = Vec::new();
        for _ in 0..1000 {
            s.data(&[b'x'; 4096], &mut out);
            assert!(s.held.len() < 20);
        }
        s.data(b"needle-in-a-", &mut out);
        s.data(b"haystack!", &mut out);
        s.end(&mut out);
        assert!(out.ends_with(b"xfound!"));
        assert_eq!(out.len(), 4096 * 1000 + 6);
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(BodyReplace::new(&[], false, vec![]).is_err());
        assert!(BodyReplace::new(&[(vec![], b"x".to_vec())], false, vec![]).is_err());
        assert!(BodyReplace::new(&[(vec![b'a'; MAX_FROM + 1], vec![])], false, vec![]).is_err());
    }

    #[test]
    fn types() {
        let b = BodyReplace::new(&[(b"a".to_vec(), vec![])], false, vec!["text/*".into()]).unwrap();
        assert!(b.applies(Some("text/html")));
        assert!(!b.applies(Some("application/json")));
        assert!(!b.applies(None));
    }
}
