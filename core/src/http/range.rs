//! `Range` requests (RFC 9110 §14) against a representation of known length: what a cache
//! answers from a complete stored response.

use super::{list_items, trim_ows};

/// Most ranges one request may ask for before the field is ignored (and the whole
/// representation sent): many small or overlapping ranges are a known way to make a server
/// do a lot of work for little (RFC 9110 §14.3, §17.15).
pub const MAX_RANGES: usize = 16;

/// What a `Range` field asks of a representation `len` bytes long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ranges {
    /// Not a `bytes` range the server must honour (another unit, bad syntax, too many
    /// ranges): answer with the whole representation, as if there were no `Range`.
    Ignore,
    /// No range overlaps the representation: 416.
    Unsatisfiable,
    /// The satisfiable ranges, each `start..end` (end exclusive), in the order asked.
    Satisfiable(Vec<(u64, u64)>),
}

pub fn parse(value: &[u8], len: u64) -> Ranges {
    let v = trim_ows(value);
    let Some(set) = v
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"bytes="))
        .map(|_| &v[6..])
    else {
        return Ranges::Ignore;
    };
    let mut out = Vec::new();
    let mut any = false;
    for spec in list_items(set) {
        any = true;
        if out.len() >= MAX_RANGES {
            return Ranges::Ignore;
        }
        let Some(dash) = spec.iter().position(|&b| b == b'-') else {
            return Ranges::Ignore;
        };
        let (first, last) = (trim_ows(&spec[..dash]), trim_ows(&spec[dash + 1..]));
        let num = |d: &[u8]| -> Option<u64> {
            if d.is_empty() || d.len() > 19 || !d.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(d.iter().fold(0u64, |a, &b| a * 10 + u64::from(b - b'0')))
        };
        let range = if first.is_empty() {
            // A suffix: the last N bytes.
            let Some(n) = num(last) else {
                return Ranges::Ignore;
            };
            // A suffix of nothing, or of an empty representation, selects no byte (RFC 9110
            // §14.1.3: unsatisfiable when the representation is empty).
            if n == 0 || len == 0 {
                continue;
            }
            (len.saturating_sub(n), len)
        } else {
            let Some(a) = num(first) else {
                return Ranges::Ignore;
            };
            let b = if last.is_empty() {
                len
            } else {
                match num(last) {
                    Some(b) if b >= a => b.saturating_add(1).min(len),
                    _ => return Ranges::Ignore,
                }
            };
            if a >= len {
                continue;
            }
            (a, b)
        };
        out.push(range);
    }
    // Ranges that add up to more than the representation (overlapping or repeated) would make
    // a multipart answer larger than the whole: the whole it is (RFC 9110 §14.3).
    let asked: u64 = out.iter().map(|(a, b)| b - a).sum();
    match (any, out.is_empty()) {
        (false, _) => Ranges::Ignore,
        (true, true) => Ranges::Unsatisfiable,
        (true, false) if out.len() > 1 && asked > len => Ranges::Ignore,
        (true, false) => Ranges::Satisfiable(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        let s = |v: &str| parse(v.as_bytes(), 100);
        assert_eq!(s("bytes=0-9"), Ranges::Satisfiable(vec![(0, 10)]));
        assert_eq!(s("bytes=90-"), Ranges::Satisfiable(vec![(90, 100)]));
        assert_eq!(s("bytes=-5"), Ranges::Satisfiable(vec![(95, 100)]));
        assert_eq!(s("bytes=-500"), Ranges::Satisfiable(vec![(0, 100)]));
        assert_eq!(s("bytes=50-5000"), Ranges::Satisfiable(vec![(50, 100)]));
        assert_eq!(
            s("BYTES=0-0, 10-19 ,-1"),
            Ranges::Satisfiable(vec![(0, 1), (10, 20), (99, 100)])
        );
        assert_eq!(s("bytes=100-"), Ranges::Unsatisfiable);
        assert_eq!(s("bytes=200-300, -0"), Ranges::Unsatisfiable);
        // An empty representation: no suffix selects a byte of it.
        assert_eq!(parse(b"bytes=-5", 0), Ranges::Unsatisfiable);
        assert_eq!(parse(b"bytes=0-", 0), Ranges::Unsatisfiable);
        assert_eq!(s("bytes=5-1"), Ranges::Ignore);
        assert_eq!(s("bytes=a-b"), Ranges::Ignore);
        assert_eq!(s("items=0-1"), Ranges::Ignore);
        assert_eq!(s("bytes="), Ranges::Ignore);
        assert_eq!(s("bytes=0-99999999999999999999"), Ranges::Ignore);
        let many = (0..17)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(s(&format!("bytes={many}")), Ranges::Ignore);
    }
}
