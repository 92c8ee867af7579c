//! The chunked transfer coding (RFC 9112 §7.1): a streaming decoder and the encoder's framing.
//!
//! The decoder is a byte-driven state machine, one variant per grammar position, so a chunk
//! boundary can fall anywhere between reads. It hands back ranges of the caller's input that are
//! body data; the caller writes those on and discards what was consumed. Extensions and trailer
//! fields are validated and dropped: the proxy re-frames every chunked body it forwards, so the
//! bytes the next hop parses are bytes this decoder produced, never raw input.

use std::fmt;
use std::ops::Range;

use super::chars::{FIELD_VALUE, TCHAR};

/// Largest chunk accepted (1 TiB). A size beyond any body the proxy would forward is refused
/// like an overflow as soon as its digits arrive, before anything is sent upstream, instead of
/// forwarding the start of a request that can never end (`FFFFFFFFFFFFFFFF` fits in 64 bits).
pub const MAX_CHUNK_SIZE: u64 = 1 << 40;

/// Longest chunk-size line (size plus extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The size is missing or not hexadecimal.
    BadSize,
    /// The size does not fit in 64 bits.
    SizeOverflow,
    /// A control byte in a chunk extension.
    BadExtension,
    /// A line that does not end in CRLF where one is required.
    BadLineEnding,
    /// A malformed trailer field line.
    BadTrailer,
    /// A chunk line or the trailer section is too long.
    TooLong,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadSize => "invalid chunk size",
            Self::SizeOverflow => "chunk size overflows",
            Self::BadExtension => "invalid chunk extension",
            Self::BadLineEnding => "chunk not terminated by CRLF",
            Self::BadTrailer => "invalid trailer field",
            Self::TooLong => "chunk line or trailers too long",
        })
    }
}

impl std::error::Error for ChunkError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size.
    Size,
    /// Whitespace after the size; only `;` or more whitespace may follow.
    SizeWs,
    /// Inside chunk extensions, up to CR.
    Extension,
    /// Saw CR after the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field's name.
    TrailerName,
    /// Inside a trailer field's value.
    Trailer,
    /// Saw CR ending a trailer field line.
    TrailerLf,
    /// Saw CR of the final empty line.
    EndLf,
    /// The whole body has been read.
    Done,
}

/// What one call to [`ChunkedDecoder::decode`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Step {
    /// Input bytes used up; discard them before the next call.
    pub consumed: usize,
    /// Body data inside the consumed range (empty when the call found only framing).
    pub data: Range<usize>,
    /// The terminating empty line has been read; bytes past `consumed` belong to the next message.
    pub done: bool,
}

#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    remaining: u64,
    /// The size of the current chunk (or of the last one, between chunks).
    size: u64,
    digits: u8,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            remaining: 0,
            size: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the current chunk's data still to come (0 outside chunk data).
    pub fn data_left(&self) -> u64 {
        if self.state == State::Data {
            self.remaining
        } else {
            0
        }
    }

    /// Between framing elements or inside data: where [`canonical_run`](Self::canonical_run)
    /// can start.
    pub fn at_boundary(&self) -> bool {
        match self.state {
            State::Data | State::DataCr => true,
            State::Size => self.digits == 0 && self.line_len == 0,
            _ => false,
        }
    }

    /// A chunk's data is over and the CRLF after it comes next (none of it seen yet).
    pub fn after_data(&self) -> bool {
        self.state == State::DataCr
    }

    /// The size of the current chunk, or of the last one while its framing is read.
    pub fn chunk_size(&self) -> u64 {
        self.size
    }

    /// `n` bytes of the current chunk's data (at most [`data_left`](Self::data_left)) were
    /// moved without passing through [`decode`](Self::decode) (spliced).
    pub fn skip_data(&mut self, n: u64) {
        debug_assert!(n <= self.data_left(), "{n} > {}", self.data_left());
        if self.state != State::Data {
            return;
        }
        self.remaining -= n.min(self.remaining);
        if self.remaining == 0 {
            self.state = State::DataCr;
        }
    }

    /// How many of `next` (the input's next bytes, from where the decoder stands) are body data
    /// and framing exactly as [`write_chunk_header`] and [`LAST_CHUNK`] write them: whole size
    /// lines of lower-case hex without leading zeros or extensions, the CRLF after each chunk's
    /// data, a last chunk without trailers. It stops before the first framing element that
    /// `next` does not hold whole, and before one written otherwise (`Canonical::Foreign`);
    /// and after the size line of a chunk of `long` bytes or more (its data may be spliced
    /// without being looked at). Only from a size line's start, inside data, or before the CRLF
    /// after it; elsewhere (inside framing) nothing is.
    pub fn canonical_run(&self, next: &[u8], long: u64) -> Canonical {
        let (mut state, mut left, mut i) = (self.state, self.remaining, 0);
        if !self.at_boundary() {
            return Canonical::Foreign(0);
        }
        loop {
            let rest = &next[i..];
            match state {
                State::Data => {
                    let n = left.min(rest.len() as u64);
                    i += n as usize;
                    left -= n;
                    if left > 0 {
                        return Canonical::Short(i);
                    }
                    state = State::DataCr;
                }
                State::DataCr => match rest {
                    [b'\r', b'\n', ..] => {
                        i += 2;
                        state = State::Size;
                    }
                    [] | [b'\r'] => return Canonical::Short(i),
                    _ => return Canonical::Foreign(i),
                },
                State::Size => match canonical_size_line(rest) {
                    Some(Ok((0, len))) => {
                        return match &rest[len..] {
                            [b'\r', b'\n', ..] => Canonical::Done(i + len + 2),
                            [] | [b'\r'] => Canonical::Short(i),
                            _ => Canonical::Foreign(i),
                        }
                    }
                    Some(Ok((size, len))) if size >= long => return Canonical::Short(i + len),
                    Some(Ok((size, len))) => {
                        i += len;
                        left = size;
                        state = State::Data;
                    }
                    Some(Err(())) => return Canonical::Foreign(i),
                    None => return Canonical::Short(i),
                },
                _ => return Canonical::Foreign(i),
            }
        }
    }

    /// Consumes framing bytes from `input` until it reaches body data, the end of the body, or
    /// the end of `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            // Framing that is whole in `input` and plain (the CRLF after a chunk's data; a
            // size line of hex digits alone) is taken at once; anything else goes byte by
            // byte through `step`. Byte by byte, framing was a quarter of ringway's own
            // instructions for a body in 4 KiB chunks (docs/benchmarks-log.md, run 41).
            match self.state {
                State::DataCr if input[i..].starts_with(b"\r\n") => {
                    i += 2;
                    self.state = State::Size;
                    continue;
                }
                State::Size if self.digits == 0 && self.remaining == 0 => {
                    if let Some((size, len)) = plain_size_line(&input[i..]) {
                        i += len;
                        self.size = size;
                        self.remaining = size;
                        self.state = State::Data;
                        continue;
                    }
                }
                _ => {}
            }
            if self.state == State::Data {
                let n = (self.remaining.min((input.len() - i) as u64)) as usize;
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Step {
                    consumed: i + n,
                    data: i..i + n,
                    done: false,
                });
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b)?;
            if self.state == State::Done {
                return Ok(Step {
                    consumed: i,
                    data: i..i,
                    done: true,
                });
            }
        }
        Ok(Step {
            consumed: i,
            data: i..i,
            done: self.state == State::Done,
        })
    }

    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        use State::*;
        if matches!(self.state, Size | SizeWs | Extension) {
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(ChunkError::TooLong);
            }
        }
        if matches!(self.state, TrailerStart | TrailerName | Trailer | TrailerLf) {
            self.trailer_len += 1;
            if self.trailer_len > MAX_TRAILERS {
                return Err(ChunkError::TooLong);
            }
        }
        Ok(match (self.state, b) {
            (Size, _) if b.is_ascii_hexdigit() => {
                if self.digits == 16 || self.remaining >> 60 != 0 {
                    return Err(ChunkError::SizeOverflow);
                }
                let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                self.remaining = self.remaining << 4 | d;
                if self.remaining > MAX_CHUNK_SIZE {
                    return Err(ChunkError::SizeOverflow);
                }
                self.digits += 1;
                Size
            }
            (Size | SizeWs | Extension, b'\n') => return Err(ChunkError::BadLineEnding),
            (Size, _) if self.digits == 0 => return Err(ChunkError::BadSize),
            (Size | SizeWs, b' ' | b'\t') => SizeWs,
            (Size | SizeWs, b';') => Extension,
            (Size | Extension, b'\r') => SizeLf,
            (Size | SizeWs, _) => return Err(ChunkError::BadSize),
            (Extension, _) if FIELD_VALUE[b as usize] => Extension,
            (Extension, _) => return Err(ChunkError::BadExtension),
            (SizeLf, b'\n') => {
                self.line_len = 0;
                self.digits = 0;
                self.size = self.remaining;
                if self.remaining == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (TrailerLf, b'\n') => TrailerStart,
            (EndLf, b'\n') => Done,
            (SizeLf | DataCr | DataLf | TrailerLf | EndLf, _) => {
                return Err(ChunkError::BadLineEnding)
            }
            (TrailerStart, b'\r') => EndLf,
            // RFC 9112 §7.1.2: the trailer section is field lines, `token ":" value`; anything
            // else (a request line smuggled after the last chunk) is refused.
            (TrailerStart | TrailerName, _) if TCHAR[b as usize] => TrailerName,
            (TrailerName, b':') => Trailer,
            (TrailerStart | TrailerName, _) => return Err(ChunkError::BadTrailer),
            (Trailer, b'\r') => TrailerLf,
            (Trailer, _) if FIELD_VALUE[b as usize] => Trailer,
            (Trailer, _) => return Err(ChunkError::BadTrailer),
            (Data | Done, _) => unreachable!("handled by decode"),
        })
    }
}

/// A size line of 1 to 15 hex digits and CRLF at the start of `rest`, for a chunk of 1 to
/// [`MAX_CHUNK_SIZE`] bytes: the size and the line's length. `None` for anything else (the
/// last chunk, extensions, whitespace, a line not whole yet, an error), which `step` then reads.
fn plain_size_line(rest: &[u8]) -> Option<(u64, usize)> {
    let digits = rest
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if digits == 0 || digits > 15 || rest.get(digits..digits + 2) != Some(b"\r\n") {
        return None;
    }
    let size = rest[..digits].iter().fold(0u64, |n, &b| {
        n << 4 | u64::from((b as char).to_digit(16).unwrap_or(0))
    });
    (1..=MAX_CHUNK_SIZE)
        .contains(&size)
        .then_some((size, digits + 2))
}

/// What [`ChunkedDecoder::canonical_run`] found: the bytes that may pass unchanged, and why it
/// stopped there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canonical {
    /// The input ran out (inside data, or inside a framing element that may yet turn out
    /// canonical).
    Short(usize),
    /// The next framing element is written otherwise (or is bad: the decoder says which).
    Foreign(usize),
    /// The body ends with these bytes.
    Done(usize),
}

impl Canonical {
    /// The bytes that may pass unchanged.
    pub fn len(self) -> usize {
        match self {
            Self::Short(n) | Self::Foreign(n) | Self::Done(n) => n,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// A size line as [`write_chunk_header`] writes it at the start of `rest`: `Ok((size, length))`;
/// `Err` when it is written otherwise (upper-case hex, a leading zero, an extension, more than
/// 15 digits, a size past [`MAX_CHUNK_SIZE`]); `None` when `rest` ends before it could tell.
fn canonical_size_line(rest: &[u8]) -> Option<Result<(u64, usize), ()>> {
    let digits = rest
        .iter()
        .take(16)
        .take_while(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .count();
    if digits > 15 || (digits > 1 && rest[0] == b'0') {
        return Some(Err(()));
    }
    match rest.get(digits..digits + 2) {
        _ if digits == 0 && rest.is_empty() => return None,
        _ if digits == 0 => return Some(Err(())),
        Some(b"\r\n") if digits > 0 => {}
        None if rest.len() == digits || rest[digits..] == *b"\r" => return None,
        _ => return Some(Err(())),
    }
    let size = rest[..digits].iter().fold(0u64, |n, &b| {
        n << 4 | u64::from((b as char).to_digit(16).unwrap_or(0))
    });
    if size > MAX_CHUNK_SIZE {
        return Some(Err(()));
    }
    Some(Ok((size, digits + 2)))
}

/// Appends the framing that goes before `len` bytes of chunk data: `HEX CRLF`.
pub fn write_chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = len;
    loop {
        i -= 1;
        tmp[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns body and bytes left over.
    fn decode_split(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            if pending.is_empty() || fed < input.len() && pending.len() < step {
                let end = (fed + step).min(input.len());
                pending.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            let s = d.decode(&pending)?;
            body.extend_from_slice(&pending[s.data.clone()]);
            pending.drain(..s.consumed);
            if s.done {
                return Ok((body, pending.len() + input.len() - fed));
            }
            if fed == input.len() && pending.is_empty() {
                panic!("ran out of input");
            }
        }
    }

    fn all_splits(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        let first = decode_split(input, input.len());
        for step in 1..input.len() {
            assert_eq!(decode_split(input, step), first, "step {step}");
        }
        first
    }

    #[test]
    fn valid_bodies() {
        let cases: &[(&[u8], &[u8], usize)] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello", 0),
            (
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET",
                b"hello world",
                3,
            ),
            (
                b"A;name=val;x=\"q\"\r\n0123456789\r\n0\r\n\r\n",
                b"0123456789",
                0,
            ),
            (b"3 ;ext\r\nabc\r\n0\r\n\r\n", b"abc", 0),
            (
                b"3\r\nabc\r\n0\r\nTrailer: x\r\nOther: y\r\n\r\n",
                b"abc",
                0,
            ),
            (b"0\r\n\r\n", b"", 0),
            (b"000\r\n\r\n", b"", 0),
            (b"ffFF\r\n", b"", 0),
        ];
        for (input, body, left) in &cases[..cases.len() - 1] {
            assert_eq!(all_splits(input), Ok((body.to_vec(), *left)));
        }
    }

    #[test]
    fn invalid_bodies() {
        use ChunkError::*;
        let cases: &[(&[u8], ChunkError)] = &[
            (b"\r\nabc", BadSize),
            (b"g\r\n", BadSize),
            (b"-1\r\n", BadSize),
            (b"3 4\r\n", BadSize),
            (b"0x3\r\n", BadSize),
            (b"3\nabc", BadLineEnding),
            (b"3\rabc", BadLineEnding),
            (b"3\r\nabcX\r\n", BadLineEnding),
            (b"3\r\nabc\r\r", BadLineEnding),
            (b"3;a\x00b\r\n", BadExtension),
            (b"3;a\nb\r\n", BadLineEnding),
            (b"10000000000000000\r\n", SizeOverflow),
            (b"FFFFFFFFFFFFFFFF\r\n", SizeOverflow),
            (b"10000000001\r\n", SizeOverflow),
            (b"fffffffffffffffff\r\n", SizeOverflow),
            (b"0\r\n bad\r\n\r\n", BadTrailer),
            (b"0\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n", BadTrailer),
            (b"0\r\nNoColon\r\n\r\n", BadTrailer),
            (b"0\r\n: x\r\n\r\n", BadTrailer),
            (b"0\r\nX: a\x00\r\n\r\n", BadTrailer),
            (b"0\r\n\r\r", BadLineEnding),
        ];
        for (input, want) in cases {
            let mut d = ChunkedDecoder::new();
            let mut buf = input.to_vec();
            let got = loop {
                match d.decode(&buf) {
                    Err(e) => break Some(e),
                    Ok(s) if s.consumed == 0 => break None,
                    Ok(s) => {
                        buf.drain(..s.consumed);
                    }
                }
            };
            assert_eq!(got, Some(*want), "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn framing_taken_at_once_agrees_with_byte_by_byte() {
        // Bodies built from pieces that exercise both paths, mutated: `all_splits` checks that
        // every way of feeding them (one byte at a time reads through `step` only) agrees.
        let pieces: &[&[u8]] = &[
            b"1\r\na\r\n",
            b"10\r\n0123456789abcdef\r\n",
            b"A\r\n0123456789\r\n",
            b"00000000000003\r\nabc\r\n",
            b"000000000000003\r\nabc\r\n",
            b"0000000000000003\r\nabc\r\n",
            b"3;x=y\r\nabc\r\n",
            b"3 \r\nabc\r\n",
            b"3\r\nabc\n\r\n",
            b"3\r\nabcd\r\n",
            b"10000000001\r\n",
            b"ffffffffff\r\n",
            b"f000000000000001\r\n",
            b"\r\n",
            b"g\r\n",
        ];
        let ends: &[&[u8]] = &[b"0\r\n\r\n", b"0\r\nX: y\r\n\r\nGET", b"0\r\n", b""];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..1 + next(4) {
                input.extend_from_slice(pieces[next(pieces.len())]);
            }
            input.extend_from_slice(ends[next(ends.len())]);
            if next(3) == 0 && !input.is_empty() {
                let at = next(input.len());
                input[at] = b"\r\n0a; \t"[next(7)];
            }
            let whole = feed(&input, input.len().max(1));
            for step in 1..input.len() {
                assert_eq!(
                    feed(&input, step),
                    whole,
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    /// Feeds `input` in pieces of `step` bytes: the body, the bytes after its end, and whether
    /// it ended (an input that stops short is not an error here).
    fn feed(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let (mut body, mut pending, mut fed) = (Vec::new(), Vec::new(), 0);
        loop {
            let end = (fed + step).min(input.len());
            pending.extend_from_slice(&input[fed..end]);
            fed = end;
            loop {
                let s = d.decode(&pending)?;
                body.extend_from_slice(&pending[s.data.clone()]);
                pending.drain(..s.consumed);
                if s.done {
                    return Ok((body, pending.len() + input.len() - fed, true));
                }
                if s.consumed == 0 || pending.is_empty() {
                    break;
                }
            }
            if fed == input.len() {
                return Ok((body, 0, false));
            }
        }
    }

    #[test]
    fn long_lines_rejected() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE + 10, b'a');
        assert_eq!(
            ChunkedDecoder::new().decode(&line),
            Err(ChunkError::TooLong)
        );
    }

    #[test]
    fn header_encoding() {
        for (n, s) in [(0usize, "0\r\n"), (10, "a\r\n"), (65536, "10000\r\n")] {
            let mut v = Vec::new();
            write_chunk_header(n, &mut v);
            assert_eq!(v, s.as_bytes());
        }
    }
}
