//! Byte-class tables for the HTTP grammar (RFC 9110 §5.6.2, RFC 9112 §2, RFC 3986).
//!
//! One 256-entry table per class keeps the parser's inner loops to a load and a branch.

macro_rules! table {
    ($f:ident) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = $f(i as u8);
            i += 1;
        }
        t
    }};
}

const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`'
        | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// Field values: VCHAR, obs-text, SP and HTAB. CR, LF, NUL and other controls are not allowed.
const fn is_field_value(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Request-target bytes: visible ASCII. Spaces, controls and non-ASCII are rejected (clients
/// percent-encode them).
const fn is_target(b: u8) -> bool {
    b > 0x20 && b < 0x7f
}

/// Reason phrase: HTAB, SP, VCHAR, obs-text.
const fn is_reason(b: u8) -> bool {
    is_field_value(b)
}

pub static TCHAR: [bool; 256] = table!(is_tchar);
pub static FIELD_VALUE: [bool; 256] = table!(is_field_value);
pub static TARGET: [bool; 256] = table!(is_target);
pub static REASON: [bool; 256] = table!(is_reason);

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that is below `n` (`n` ≤ 128); may also flag a byte just
/// above a flagged one, so callers treat a hit as "look closer", never as an answer.
#[inline]
fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// High bit set in each byte of `w` equal to `b` (with the same "look closer" caveat).
#[inline]
fn bytes_equal(w: u64, b: u8) -> u64 {
    bytes_below(w ^ (ONES * u64::from(b)), 1)
}

/// Index of the first byte at or after `i` that is not allowed in a field value (`table`
/// `FIELD_VALUE`), or `buf.len()`. Eight bytes per step while they are all plain visible text.
#[inline]
pub fn field_value_end(buf: &[u8], i: usize) -> usize {
    let mut i = super::simd::field_value_blocks(buf, i);
    if i + 16 <= buf.len() {
        // The block scan stopped on a disallowed byte.
        return i;
    }
    while i + 8 <= buf.len() {
        let w = u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
        if bytes_below(w, 0x20) | bytes_equal(w, 0x7f) != 0 {
            break;
        }
        i += 8;
    }
    while i < buf.len() && FIELD_VALUE[buf[i] as usize] {
        i += 1;
    }
    i
}

/// Index of the first byte at or after `i` that is not allowed in a request-target.
#[inline]
pub fn target_end(buf: &[u8], i: usize) -> usize {
    let mut i = super::simd::target_blocks(buf, i);
    if i + 16 <= buf.len() {
        return i;
    }
    while i + 8 <= buf.len() {
        let w = u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
        if bytes_below(w, 0x21) | bytes_equal(w, 0x7f) | (w & HIGHS) != 0 {
            break;
        }
        i += 8;
    }
    while i < buf.len() && TARGET[buf[i] as usize] {
        i += 1;
    }
    i
}

#[inline]
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| TCHAR[b as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(TCHAR[b'a' as usize] && TCHAR[b'~' as usize]);
        assert!(!TCHAR[b':' as usize] && !TCHAR[b' ' as usize] && !TCHAR[0]);
        assert!(FIELD_VALUE[b'\t' as usize] && FIELD_VALUE[0x80] && FIELD_VALUE[b' ' as usize]);
        assert!(!FIELD_VALUE[b'\r' as usize] && !FIELD_VALUE[b'\n' as usize] && !FIELD_VALUE[0]);
        assert!(!TARGET[b' ' as usize] && !TARGET[0x80] && TARGET[b'/' as usize]);
        assert!(is_token(b"GET") && !is_token(b"") && !is_token(b"G T"));
    }

    #[test]
    fn word_scans_agree_with_tables() {
        // Every byte value at every position of a 20-byte run, against the one-byte-at-a-time
        // definition.
        for pos in 0..40 {
            for b in 0..=255u8 {
                let mut buf = vec![b'a'; 40];
                buf[pos] = b;
                let slow = |t: &[bool; 256]| {
                    buf.iter()
                        .position(|&x| !t[x as usize])
                        .unwrap_or(buf.len())
                };
                assert_eq!(
                    field_value_end(&buf, 0),
                    slow(&FIELD_VALUE),
                    "value byte {b:#x} at {pos}"
                );
                assert_eq!(
                    target_end(&buf, 0),
                    slow(&TARGET),
                    "target byte {b:#x} at {pos}"
                );
            }
        }
    }
}
