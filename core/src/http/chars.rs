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
}
