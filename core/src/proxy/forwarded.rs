//! What the forward proxy checks of a request-target it passes on as sent.

/// Every `%` is followed by two hex digits.
pub(super) fn well_formed_escapes(t: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'%', &t[i..]) {
        let at = i + p;
        match t.get(at + 1..at + 3) {
            Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i = at + 3,
            _ => return false,
        }
    }
    true
}
