//! The parser's only unsafe code: 16-byte scans with SSE2, which every x86_64 CPU has (so no
//! runtime detection is needed). Each function returns how many leading bytes of a 16-byte
//! block are allowed; the callers in `chars.rs` fall back to the portable word-at-a-time scan on
//! other architectures and for the tail of a buffer. Both paths are tested against the byte
//! tables for every byte value at every offset.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m128i, _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8,
    _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
};

/// Loads `buf[i..i + 16]`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn load(buf: &[u8], i: usize) -> __m128i {
    let block = &buf[i..i + 16];
    // SAFETY: `block` is exactly 16 readable bytes (the slice above is bounds-checked), and
    // `_mm_loadu_si128` has no alignment requirement. SSE2 is part of the x86_64 baseline.
    unsafe { _mm_loadu_si128(block.as_ptr().cast()) }
}

/// Index of the first byte at or after `i` that a field value may not hold (a control byte
/// other than HTAB, or DEL), scanning whole 16-byte blocks only; stops before a partial block.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn field_value_blocks(buf: &[u8], mut i: usize) -> usize {
    while i + 16 <= buf.len() {
        let v = load(buf, i);
        // SAFETY: SSE2 intrinsics on register values; SSE2 is part of the x86_64 baseline.
        let bad = unsafe {
            let below_space =
                _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
            let tab = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x09));
            let del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
            _mm_movemask_epi8(_mm_or_si128(_mm_andnot_si128(tab, below_space), del))
        };
        if bad != 0 {
            return i + bad.trailing_zeros() as usize;
        }
        i += 16;
    }
    i
}

/// Index of the first byte at or after `i` that a request-target may not hold (anything but
/// visible ASCII), scanning whole 16-byte blocks only.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn target_blocks(buf: &[u8], mut i: usize) -> usize {
    while i + 16 <= buf.len() {
        let v = load(buf, i);
        // SAFETY: SSE2 intrinsics on register values; SSE2 is part of the x86_64 baseline.
        let bad = unsafe {
            let low = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x20)), _mm_set1_epi8(0x20));
            let high = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
            _mm_movemask_epi8(_mm_or_si128(low, high))
        };
        if bad != 0 {
            return i + bad.trailing_zeros() as usize;
        }
        i += 16;
    }
    i
}

/// Position of the first `needle` in the first 16 bytes of `buf` (or in all of it when shorter).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn find_byte_in_block(buf: &[u8], needle: u8) -> Option<usize> {
    if buf.len() < 16 {
        return buf.iter().position(|&b| b == needle);
    }
    let v = load(buf, 0);
    // SAFETY: SSE2 intrinsics on register values; SSE2 is part of the x86_64 baseline.
    let hits = unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(needle as i8))) };
    (hits != 0).then(|| hits.trailing_zeros() as usize)
}

/// Start of the first CR LF CR LF at or after `from`, the end of a head.
///
/// 16 positions a step look for LF CR LF at once (three loads, one byte apart), and only those
/// rare hits check the CR before. `memchr::memmem` cost about 440 instructions for a 250-byte
/// response head: its prefilter stops at every line's CR LF (callgrind, docs/benchmarks-log.md
/// run 41).
pub(crate) fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    // `k`: where the LF of the first CR LF would be, for a match starting at `from`.
    let mut k = from + 1;
    #[cfg(target_arch = "x86_64")]
    while k + 18 <= buf.len() {
        let (a, b, c) = (load(buf, k), load(buf, k + 1), load(buf, k + 2));
        // SAFETY: SSE2 intrinsics on register values; SSE2 is part of the x86_64 baseline.
        let mut hits = unsafe {
            let lf = _mm_set1_epi8(b'\n' as i8);
            let cr = _mm_set1_epi8(b'\r' as i8);
            let lf_cr = _mm_and_si128(_mm_cmpeq_epi8(a, lf), _mm_cmpeq_epi8(b, cr));
            _mm_movemask_epi8(_mm_and_si128(lf_cr, _mm_cmpeq_epi8(c, lf)))
        };
        while hits != 0 {
            let j = k + hits.trailing_zeros() as usize;
            if buf[j - 1] == b'\r' {
                return Some(j - 1);
            }
            hits &= hits - 1;
        }
        k += 16;
    }
    while k + 2 < buf.len() {
        if &buf[k - 1..k + 3] == b"\r\n\r\n" {
            return Some(k - 1);
        }
        k += 1;
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub(crate) fn find_byte_in_block(buf: &[u8], needle: u8) -> Option<usize> {
    buf[..buf.len().min(16)].iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    #[test]
    fn find_blank_line_agrees_with_memmem() {
        // Every string of CR, LF and `x` up to 7 long, placed at every offset of a longer
        // buffer of `x` (so blocks and the tail both see it), from every start.
        let alphabet = [b'\r', b'\n', b'x'];
        for len in 0..=7u32 {
            for code in 0..3usize.pow(len) {
                let mut piece = Vec::new();
                let mut c = code;
                for _ in 0..len {
                    piece.push(alphabet[c % 3]);
                    c /= 3;
                }
                for at in [0, 5, 14, 15, 16, 17, 30, 33] {
                    let mut buf = vec![b'x'; at];
                    buf.extend_from_slice(&piece);
                    buf.extend_from_slice(&[b'x'; 3]);
                    buf.extend_from_slice(b"\r\n\r\n"[..(code % 5)].as_ref());
                    for from in 0..buf.len().min(at + 2) {
                        let want =
                            memchr::memmem::find(&buf[from..], b"\r\n\r\n").map(|i| i + from);
                        assert_eq!(
                            super::find_blank_line(&buf, from),
                            want,
                            "{buf:?} from {from}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn find_byte_in_block_agrees_with_position() {
        for len in 0..40 {
            for at in 0..len {
                let mut buf = vec![b'x'; len];
                buf[at] = b':';
                let want = (at < 16).then_some(at);
                assert_eq!(
                    super::find_byte_in_block(&buf, b':'),
                    want,
                    "len {len} at {at}"
                );
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub(crate) fn field_value_blocks(_buf: &[u8], i: usize) -> usize {
    i
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub(crate) fn target_blocks(_buf: &[u8], i: usize) -> usize {
    i
}
