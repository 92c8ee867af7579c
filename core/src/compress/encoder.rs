//! The encoders: one streaming [`Encoder`] per relayed body (a body stage), and
//! [`encode_whole`] for a stored body encoded once.
//!
//! Memory per stream is bounded by the window each coding keeps, sized down to the body when
//! its length is known (as nginx sizes zlib's window to `Content-Length`): at most 32 KiB of
//! history for gzip (zlib-rs: about 270 KB of state at level 1), 128 KiB for zstd (`windowLog`
//! 17, about 0.9 MB of state at level 1 with its tables and buffers), 256 KiB for brotli (lgwin
//! 18). A body of a few KiB gets a window of a few KiB.

use std::io::Write;

use flate2::{Compress, Compression as Level, FlushCompress};
use zstd::zstd_safe::{self, CCtx, CParameter, InBuffer, OutBuffer};

use super::{Coding, Levels};
use crate::http::body::Stage;

/// The most history zstd keeps (2^17 = 128 KiB).
const ZSTD_MAX_WINDOW_LOG: u32 = 17;
/// The most history brotli keeps (2^18 - 16 bytes).
const BROTLI_MAX_LGWIN: u32 = 18;

/// A body encoder: payload in, encoded bytes out; each `flush` makes everything given so far
/// decodable by the client (a streamed response is never held back), `end` closes the stream.
pub struct Encoder {
    /// `None` only while it is dropped.
    inner: Option<Inner>,
    key: Key,
    /// Its length was not given: every read is flushed.
    streamed: bool,
    /// Its place among the worker's open streams (none: encoding a stored body whole); the
    /// encoder goes back to that pool when dropped.
    slot: Option<super::StreamSlot>,
}

/// What an idle encoder can be reused for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    coding: Coding,
    level: i32,
}

/// An encoder between two responses.
pub(crate) struct Idle {
    pub(crate) key: Key,
    inner: Inner,
}

enum Inner {
    Gzip(Box<Compress>),
    Br(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
    Zstd(CCtx<'static>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoder({})", self.key.coding.token())
    }
}

/// The smallest power of two that holds `n` bytes, as a log, within `lo..=hi`.
pub(super) fn window_log(n: Option<u64>, lo: u32, hi: u32) -> u32 {
    match n {
        Some(n) => (64 - n.max(1).saturating_sub(1).leading_zeros()).clamp(lo, hi),
        None => hi,
    }
}

fn key(coding: Coding, levels: Levels) -> Key {
    let level = match coding {
        Coding::Gzip => levels.gzip.min(9) as i32,
        Coding::Br => levels.br.min(11) as i32,
        Coding::Zstd => levels.zstd.clamp(-7, 19),
    };
    Key { coding, level }
}

impl Inner {
    /// A new encoder; its window sized to `expect` when that is known.
    fn new(k: Key, expect: Option<u64>) -> Self {
        match k.coding {
            Coding::Gzip => {
                let bits = window_log(expect, 9, 15) as u8;
                Inner::Gzip(Box::new(Compress::new_gzip(
                    Level::new(k.level as u32),
                    bits,
                )))
            }
            Coding::Br => {
                let lgwin = window_log(expect, 10, BROTLI_MAX_LGWIN);
                Inner::Br(Some(Box::new(brotli::CompressorWriter::new(
                    Vec::new(),
                    4096,
                    k.level as u32,
                    lgwin,
                ))))
            }
            Coding::Zstd => {
                let mut c = CCtx::create();
                let log = window_log(expect, 10, ZSTD_MAX_WINDOW_LOG);
                // Parameters within zstd's bounds cannot be refused.
                let _ = c.set_parameter(CParameter::CompressionLevel(k.level));
                let _ = c.set_parameter(CParameter::WindowLog(log));
                let _ = c.set_parameter(CParameter::ChecksumFlag(false));
                let _ = c.set_pledged_src_size(expect);
                Inner::Zstd(c)
            }
        }
    }

    /// Ready for a new stream of `expect` bytes; false when it cannot be reused.
    fn restart(&mut self, expect: Option<u64>) -> bool {
        match self {
            Inner::Gzip(c) => {
                c.reset();
                true
            }
            Inner::Zstd(c) => {
                c.reset(zstd_safe::ResetDirective::SessionOnly).is_ok()
                    && c.set_pledged_src_size(expect).is_ok()
            }
            Inner::Br(_) => false,
        }
    }
}

impl Encoder {
    /// An encoder for a body of `expect` bytes when that is known.
    pub fn new(coding: Coding, levels: Levels, expect: Option<u64>) -> Self {
        let key = key(coding, levels);
        Self {
            inner: Some(Inner::new(key, expect)),
            key,
            streamed: expect.is_none(),
            slot: None,
        }
    }

    /// The encoder for a body framed as `body`: counted in `slot` and pooled when there is
    /// one.
    pub fn open(
        coding: Coding,
        levels: Levels,
        body: crate::http::framing::BodyKind,
        slot: Option<super::StreamSlot>,
    ) -> Self {
        let expect = match body {
            crate::http::framing::BodyKind::Length(n) => Some(n),
            _ => None,
        };
        match slot {
            Some(slot) => Self::pooled(coding, levels, expect, slot),
            None => Self::new(coding, levels, expect),
        }
    }

    /// An encoder counted in `slot` until dropped, taken from that worker's idle ones when one
    /// fits (a reused one keeps its full window), and given back to them at the end.
    pub fn pooled(
        coding: Coding,
        levels: Levels,
        expect: Option<u64>,
        slot: super::StreamSlot,
    ) -> Self {
        let key = key(coding, levels);
        let inner = match coding {
            Coding::Br => Inner::new(key, expect),
            _ => {
                let mut inner = match slot.pool().take(key) {
                    Some(idle) => idle.inner,
                    None => Inner::new(key, None),
                };
                if !inner.restart(expect) {
                    inner = Inner::new(key, expect);
                }
                inner
            }
        };
        Self {
            inner: Some(inner),
            key,
            streamed: expect.is_none(),
            slot: Some(slot),
        }
    }

    fn run(&mut self, input: &[u8], mode: Mode, out: &mut Vec<u8>) {
        let Some(inner) = &mut self.inner else { return };
        match inner {
            Inner::Gzip(c) => {
                let flush = match mode {
                    Mode::Data => FlushCompress::None,
                    Mode::Flush => FlushCompress::Sync,
                    Mode::End => FlushCompress::Finish,
                };
                let mut pos = 0;
                loop {
                    out.reserve((input.len() - pos) / 2 + 256);
                    let before = c.total_in();
                    let status = c.compress_vec(&input[pos..], out, flush);
                    pos += (c.total_in() - before) as usize;
                    let room_left = out.len() < out.capacity();
                    // zlib's contract: with room in the output every call makes progress; a
                    // flush is complete when a call leaves room, the end at `StreamEnd`.
                    match (mode, status) {
                        (_, Err(_)) | (Mode::End, Ok(flate2::Status::StreamEnd)) => break,
                        (Mode::End, _) => {}
                        (Mode::Flush, _) if room_left && pos == input.len() => break,
                        (Mode::Data, _) if pos == input.len() => break,
                        _ => {}
                    }
                }
            }
            Inner::Br(w) => {
                let Some(writer) = w else { return };
                // Writes into a Vec cannot fail.
                let _ = writer.write_all(input);
                match mode {
                    Mode::Data => {}
                    Mode::Flush => {
                        let _ = writer.flush();
                    }
                    Mode::End => {
                        if let Some(writer) = w.take() {
                            let rest = writer.into_inner();
                            out.extend_from_slice(&rest);
                            return;
                        }
                    }
                }
                if let Some(writer) = w {
                    out.append(writer.get_mut());
                }
            }
            Inner::Zstd(c) => {
                let directive = match mode {
                    Mode::Data => zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_continue,
                    Mode::Flush => zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
                    Mode::End => zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
                };
                let mut inb = InBuffer::around(input);
                loop {
                    out.reserve(input.len().saturating_sub(inb.pos) / 2 + 1024);
                    let at = out.len();
                    let mut outb = OutBuffer::around_pos(out, at);
                    let left = c.compress_stream2(&mut outb, &mut inb, directive);
                    match left {
                        Ok(0) if inb.pos == input.len() => break,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                    if mode == Mode::Data && inb.pos == input.len() {
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        if let (Some(slot), Some(inner)) = (&self.slot, self.inner.take()) {
            if !matches!(inner, Inner::Br(_)) {
                slot.pool().give(Idle {
                    key: self.key,
                    inner,
                });
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Data,
    Flush,
    End,
}

impl Stage for Encoder {
    fn data(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if !payload.is_empty() {
            self.run(payload, Mode::Data, out);
        }
    }

    /// A body of unknown length (chunked, or until the close) may be a stream whose parts come
    /// apart in time: each read is flushed. A body whose length the server gave is on its
    /// way whole, and is flushed at its end only (as nginx does), sparing a block per read.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.streamed {
            self.run(&[], Mode::Flush, out);
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.run(&[], Mode::End, out);
    }
}

/// `body` encoded whole with `coding` (a stored response's variant).
pub fn encode_whole(coding: Coding, levels: Levels, body: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(coding, levels, Some(body.len() as u64));
    let mut out = Vec::with_capacity(body.len() / 3 + 64);
    e.data(body, &mut out);
    e.end(&mut out);
    out
}
