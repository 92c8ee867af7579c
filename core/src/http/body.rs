//! A message body moved from one framing to another, sans IO.
//!
//! [`Transcoder`] reads a body framed as it arrived (length, chunked, until close) and says what
//! to send on, framed as this proxy announces it: identity bytes pass through untouched (the
//! caller writes them straight from its read buffer, or splices them), chunked output is framed
//! anew, so the next hop only ever parses framing this proxy wrote. Bytes past the end of the
//! body (a pipelined request) are never consumed. io's relay loop is: `step`, write what it
//! says, drain `consumed`, read more (at most [`Transcoder::want`]), and on end of input call
//! [`Transcoder::finish_at_eof`].

use std::ops::Range;

use super::chunked::{write_chunk_header, Canonical, ChunkError, ChunkedDecoder, LAST_CHUNK};
use super::framing::BodyKind;

/// A stage a body passes through between its decoding and its framing toward the next hop:
/// a cache tee (keeps a copy, passes the bytes on) or a compressor (transforms them). A body
/// with a stage is never spliced. A stage that changes the length needs chunked (or
/// close-delimited) output framing, which the exchange chooses.
pub trait Stage {
    /// Takes payload bytes; appends what goes on to `out`.
    fn data(&mut self, payload: &[u8], out: &mut Vec<u8>);
    /// What arrived so far was handed over and more may take a while: appends what makes all
    /// of it usable by the receiver (an encoder's flush), so a streamed body is never held
    /// back. Called once per read, never after `end`.
    fn flush(&mut self, _out: &mut Vec<u8>) {}
    /// The body ended; appends whatever is left to send.
    fn end(&mut self, out: &mut Vec<u8>);
}

/// Why a body could not be read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The sender closed before the body's end.
    Truncated,
    /// Invalid chunked framing.
    Framing(ChunkError),
    /// More payload than the route allows (`max_body`).
    TooLarge,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("connection closed before the body's end"),
            Self::Framing(e) => e.fmt(f),
            Self::TooLarge => f.write_str("the body is larger than this route accepts"),
        }
    }
}

#[derive(Clone, Debug)]
enum Decode {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

/// One body in transit; see the module documentation.
#[derive(Clone, Debug)]
pub struct Transcoder {
    dec: Decode,
    chunked_out: bool,
    done: bool,
    /// Body bytes (payload, without framing) seen so far.
    total: u64,
    /// A chunk went out by splice and still needs the CRLF after its data (written before
    /// whatever goes out next).
    crlf_due: bool,
    /// The most payload accepted; more is [`BodyError::TooLarge`] before any of it is passed.
    max: Option<u64>,
    /// The chunk the output has open is the input's current one, passed unchanged
    /// ([`pass_through`](Transcoder::pass_through)): its data and the CRLF after it go on as
    /// they come.
    raw: bool,
}

/// What [`Transcoder::pass_through`] lets go on unchanged: of the input's next bytes, `skip`
/// are taken and dropped (the CRLF after a chunk the output already closed), then `raw` go on
/// as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    pub skip: usize,
    pub raw: usize,
}

/// What to read for the framing after a long chunk (one that was spliced): the CRLF and the
/// next size line, and not much of the next chunk's data, so that if it is long too it is
/// spliced rather than copied. After a short chunk reads are as large as the buffer.
pub const FRAMING_READ: usize = 64;

/// The shortest run of payload worth splicing between framing: below it, a read and a write
/// through the buffer cost less than a splice in, a framing write and a splice out.
pub const SPLICE_RUN: u64 = 32 * 1024;

/// Shortest payload run [`Transcoder::step_gathered`] leaves in the input: a shorter one costs
/// less to copy than an iovec costs the kernel.
pub const GATHER_MIN: usize = 512;

/// One part of what [`Transcoder::step_gathered`] sends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes of the input, as they are.
    Input(Range<usize>),
    /// Bytes the step wrote to `out` (framing, short payload runs).
    Out(Range<usize>),
}

/// Collects a gathered step's pieces.
struct Gather<'a> {
    /// Address of the input's first byte: payload slices are subslices of it.
    base: usize,
    out: &'a mut Vec<u8>,
    pieces: &'a mut Vec<Piece>,
}

impl Gather<'_> {
    /// Extends the last piece when it is `out`'s and ends where `out` does.
    fn wrote(&mut self, start: usize) {
        let end = self.out.len();
        match self.pieces.last_mut() {
            Some(Piece::Out(r)) if r.end == start => r.end = end,
            _ => self.pieces.push(Piece::Out(start..end)),
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        let start = self.out.len();
        self.out.extend_from_slice(b);
        self.wrote(start);
    }

    fn header(&mut self, n: usize) {
        let start = self.out.len();
        write_chunk_header(n, self.out);
        self.wrote(start);
    }

    /// A run of payload, `d` a subslice of the input.
    fn data(&mut self, d: &[u8]) {
        if d.len() < GATHER_MIN {
            return self.bytes(d);
        }
        let start = d.as_ptr() as usize - self.base;
        self.pieces.push(Piece::Input(start..start + d.len()));
    }
}

/// What one [`Transcoder::step`] found in the input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Step {
    /// Input bytes used up; drain them after writing.
    pub consumed: usize,
    /// Input bytes to write on as they are (identity in, identity out), before `out`.
    pub pass: Range<usize>,
}

impl Transcoder {
    /// A body framed as `input` arrives; `output` is how it is announced to the next hop
    /// (`Length` only with `Length` input; `None` when it is discarded).
    pub fn new(input: BodyKind, output: BodyKind) -> Self {
        let (dec, done) = match input {
            BodyKind::None | BodyKind::Length(0) => (Decode::Length(0), true),
            BodyKind::Length(n) => (Decode::Length(n), false),
            BodyKind::Chunked => (Decode::Chunked(ChunkedDecoder::new()), false),
            BodyKind::Close => (Decode::Close, false),
        };
        let chunked_out = output == BodyKind::Chunked;
        Self {
            dec,
            chunked_out,
            // An empty body announced as chunked still needs its last chunk.
            done: done && !chunked_out,
            total: 0,
            crlf_due: false,
            max: None,
            raw: false,
        }
    }

    /// Refuses payload beyond `max` bytes (a length known up front is checked by the caller;
    /// this holds chunked bodies to it as they stream). A limited chunked body is not spliced,
    /// so that no byte past the limit moves.
    pub fn with_max(mut self, max: Option<u64>) -> Self {
        self.max = max;
        self
    }

    /// The whole body has been seen (and its last chunk written, for chunked output).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Payload bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Most bytes worth reading next: the rest of a known length; in a long chunk its rest
    /// and the next size line ([`FRAMING_READ`]); in a close-delimited body, what is left of
    /// its first [`SPLICE_RUN`]; else unbounded.
    pub fn want(&self) -> usize {
        match self.dec {
            Decode::Length(rem) => rem.min(usize::MAX as u64) as usize,
            // Inside or after a long chunk: its rest and the next size line, so that the
            // next chunk's data, if long too, is spliced rather than read.
            Decode::Chunked(ref d) if d.chunk_size() >= SPLICE_RUN => {
                (d.data_left() as usize).saturating_add(FRAMING_READ)
            }
            // A close-delimited body is spliced from its first SPLICE_RUN on: read no more
            // than that through the buffer (a read as large as the buffer copied up to four
            // times as much before the splice began).
            Decode::Close if self.total < SPLICE_RUN => (SPLICE_RUN - self.total) as usize,
            _ => usize::MAX,
        }
    }

    /// Payload that may move next by splice, socket to socket, instead of through the
    /// caller's buffer, once that buffer holds nothing of the body (after a `step` that
    /// consumed all of it): the rest of the current chunk when at least [`SPLICE_RUN`] of it
    /// is still to come (chunked input), or everything up to the end of input once the body
    /// has carried [`SPLICE_RUN`] (close-delimited input; `u64::MAX`). `None`: read and `step`.
    /// Length-framed bodies are spliced whole by the exchange's plan instead. Framing for the
    /// next hop comes from [`spliced`](Self::spliced); never use it for a body with a stage.
    pub fn splice_run(&self) -> Option<u64> {
        if self.max.is_some() && matches!(self.dec, Decode::Chunked(_)) {
            return None;
        }
        if self.done {
            return None;
        }
        match &self.dec {
            Decode::Chunked(d) => Some(d.data_left()).filter(|&n| n >= SPLICE_RUN),
            Decode::Close => (self.total >= SPLICE_RUN).then_some(u64::MAX),
            Decode::Length(_) => None,
        }
    }

    /// Payload bytes of the current chunk still to come (chunked input; 0 between chunks and
    /// for other framings): what may move next without being looked at.
    pub fn chunk_left(&self) -> u64 {
        match &self.dec {
            Decode::Chunked(d) => d.data_left(),
            _ => 0,
        }
    }

    /// `n` payload bytes (at most [`splice_run`](Self::splice_run)) are about to go on by
    /// splice: counts them and appends the framing that goes before them (for chunked output,
    /// the CRLF owed by the previous spliced chunk and this chunk's size line).
    pub fn spliced(&mut self, n: u64, out: &mut Vec<u8>) {
        if n == 0 {
            return;
        }
        if self.raw {
            // The chunk's size line went on unchanged (`pass_through`): its data follows as it
            // is, and the CRLF after it is owed once it is over.
            if let Decode::Chunked(d) = &mut self.dec {
                d.skip_data(n);
            }
            self.total += n;
            return;
        }
        if let Decode::Chunked(d) = &mut self.dec {
            d.skip_data(n);
        }
        self.total += n;
        if self.chunked_out {
            self.pay_crlf(out);
            write_chunk_header(n as usize, out);
            self.crlf_due = true;
        }
    }

    /// A chunked body passed on where its framing is already as this proxy writes it (chunked
    /// in and out, no limit, no stage): `next` is what the input holds next, looked at but not
    /// taken. Returns what of it goes on unchanged, after whatever was appended to `out` (a
    /// CRLF a spliced chunk owed; a size line for the rest of a chunk whose first part went out
    /// re-framed); the decoder has taken `skip + raw` bytes. `Some` with nothing when `next`
    /// ends before the next framing element can be told; `None` when that element is written
    /// otherwise (an extension, upper-case hex, a trailer, bad framing: [`step`](Self::step)
    /// takes it from here, and reports what is bad), or the body is not passed this way.
    ///
    /// It stops after the size line of a chunk of [`SPLICE_RUN`] or more: that chunk's data may
    /// be spliced without being looked at ([`spliced`](Self::spliced) then writes no size line
    /// for it). While a chunk passed this way is open ([`chunk_left`](Self::chunk_left) > 0)
    /// only these two may be called: its data must go on unchanged to its end.
    pub fn pass_through(&mut self, next: &[u8], out: &mut Vec<u8>) -> Option<Pass> {
        if !self.may_pass_through() {
            return None;
        }
        let Decode::Chunked(d) = &self.dec else {
            return None;
        };
        let run = d.canonical_run(next, SPLICE_RUN);
        let n = match run {
            Canonical::Short(0) => return Some(Pass { skip: 0, raw: 0 }),
            Canonical::Foreign(0) => return None,
            run => run.len(),
        };
        let (left, after_data) = (d.data_left(), d.after_data());
        let mut skip = 0;
        if left > 0 && !self.raw {
            // The rest of a chunk begun otherwise: announced here, ended by the input's CRLF.
            self.pay_crlf(out);
            write_chunk_header(left as usize, out);
        } else if after_data && !self.raw && !self.crlf_due {
            // The output closed this chunk itself: the input's CRLF is not sent again.
            skip = 2;
        } else if !after_data && left == 0 {
            // At a size line: a CRLF the output owes goes first.
            self.pay_crlf(out);
        }
        // Before the CRLF after a chunk, it pays what the output owes.
        self.crlf_due = false;
        let taken = self.decode(&next[..n], |_| {});
        debug_assert_eq!(taken, Ok(n), "canonical framing decodes whole");
        let Decode::Chunked(d) = &self.dec else {
            return None;
        };
        self.raw = d.data_left() > 0 || d.after_data();
        Some(Pass {
            skip,
            raw: n - skip,
        })
    }

    /// Whether [`pass_through`](Self::pass_through) may pass anything of this body: chunked in
    /// and out, no limit, not done.
    pub fn may_pass_through(&self) -> bool {
        self.chunked_out
            && !self.done
            && self.max.is_none()
            && matches!(self.dec, Decode::Chunked(_))
    }

    /// Whether the input stands where [`pass_through`](Self::pass_through) can start: between
    /// framing elements or inside a chunk's data (not partway through a size line), after a
    /// short chunk (a long one's data is spliced without a look, [`splice_run`](Self::splice_run)).
    pub fn pass_ready(&self) -> bool {
        matches!(&self.dec, Decode::Chunked(d) if d.at_boundary() && d.chunk_size() < SPLICE_RUN)
    }

    /// Inside the data of a chunk passed unchanged: only [`pass_through`](Self::pass_through)
    /// or [`spliced`](Self::spliced) may go on.
    pub fn passing_chunk(&self) -> bool {
        self.raw && self.chunk_left() > 0
    }

    /// Leaves a chunk passed unchanged for the other ways on: its data is over (see
    /// [`pass_through`](Self::pass_through)), and the CRLF after it is owed.
    /// Inside its data it stays: only `pass_through` and `spliced` may go on with it, and a
    /// step with no input does nothing.
    fn end_raw(&mut self, input: &[u8]) {
        if self.raw && self.chunk_left() == 0 {
            self.raw = false;
            self.crlf_due = true;
        }
        debug_assert!(
            !self.raw || input.is_empty(),
            "a chunk passed unchanged goes on so to its end"
        );
    }

    fn pay_crlf(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.crlf_due) {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Consumes body bytes from `input` (everything received and not yet consumed). Bytes to
    /// send on are `input[step.pass]`, then whatever was appended to `out`.
    pub fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, BodyError> {
        self.end_raw(input);
        let identity = !self.chunked_out && !matches!(self.dec, Decode::Chunked(_));
        if identity {
            // Nothing to re-frame: the bytes go on from the caller's buffer (or by splice).
            let consumed = self.decode(input, |_| {})?;
            return Ok(Step {
                consumed,
                pass: 0..consumed,
            });
        }
        let chunked_out = self.chunked_out;
        // A body already done (its last chunk written) gets nothing more.
        let was_done = self.done;
        // The CRLF a spliced chunk still owes goes out with the next framing written.
        let mut due = std::mem::take(&mut self.crlf_due);
        let consumed = self.decode(input, |d| {
            if due && !d.is_empty() {
                out.extend_from_slice(b"\r\n");
                due = false;
            }
            frame(chunked_out, d, out)
        })?;
        if self.done && !was_done && chunked_out {
            if due {
                out.extend_from_slice(b"\r\n");
                due = false;
            }
            out.extend_from_slice(LAST_CHUNK);
        }
        self.crlf_due = due;
        Ok(Step {
            consumed,
            pass: 0..0,
        })
    }

    /// Like [`step`](Self::step), for a writer that gathers (`writev`): what to send is
    /// `pieces` in order, each a range of `input` or of `out`. Payload runs of at least
    /// [`GATHER_MIN`] bytes stay in `input` (not copied); framing and shorter runs are written
    /// to `out`. The bytes sent are the same as `step`'s.
    pub fn step_gathered(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        pieces: &mut Vec<Piece>,
    ) -> Result<usize, BodyError> {
        self.end_raw(input);
        pieces.clear();
        let identity = !self.chunked_out && !matches!(self.dec, Decode::Chunked(_));
        if identity {
            let s = self.step(input, out)?;
            if !s.pass.is_empty() {
                pieces.push(Piece::Input(s.pass));
            }
            return Ok(s.consumed);
        }
        let chunked_out = self.chunked_out;
        let was_done = self.done;
        let mut due = std::mem::take(&mut self.crlf_due);
        let mut g = Gather {
            base: input.as_ptr() as usize,
            out,
            pieces,
        };
        let consumed = self.decode(input, |d| {
            if d.is_empty() {
                return;
            }
            if due {
                g.bytes(b"\r\n");
                due = false;
            }
            if chunked_out {
                g.header(d.len());
                g.data(d);
                g.bytes(b"\r\n");
            } else {
                g.data(d);
            }
        })?;
        if self.done && !was_done && chunked_out {
            if due {
                g.bytes(b"\r\n");
                due = false;
            }
            g.bytes(LAST_CHUNK);
        }
        self.crlf_due = due;
        Ok(consumed)
    }

    /// Like [`step`](Self::step), with the payload passed through `stage` before it is framed
    /// (nothing passes through untouched): what the stage makes of one step's input goes out as
    /// one chunk. `tmp` is scratch space.
    pub fn step_through(
        &mut self,
        input: &[u8],
        stage: &mut dyn Stage,
        tmp: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<usize, BodyError> {
        self.end_raw(input);
        let was_done = self.done;
        tmp.clear();
        let consumed = self.decode(input, |d| stage.data(d, tmp))?;
        if self.done && !was_done {
            stage.end(tmp);
            self.end_framed(tmp, out);
        } else {
            if consumed > 0 {
                stage.flush(tmp);
            }
            frame(self.chunked_out, tmp, out);
        }
        Ok(consumed)
    }

    fn end_through(&mut self, stage: &mut dyn Stage, tmp: &mut Vec<u8>, out: &mut Vec<u8>) {
        tmp.clear();
        stage.end(tmp);
        self.end_framed(tmp, out);
    }

    /// The stage's last bytes, framed, and the last chunk.
    fn end_framed(&self, tmp: &[u8], out: &mut Vec<u8>) {
        frame(self.chunked_out, tmp, out);
        if self.chunked_out {
            out.extend_from_slice(LAST_CHUNK);
        }
    }

    /// Decodes what `input` holds of the body, handing each piece of payload to `emit`;
    /// returns the bytes consumed.
    fn decode(&mut self, input: &[u8], mut emit: impl FnMut(&[u8])) -> Result<usize, BodyError> {
        if self.done {
            return Ok(0);
        }
        match &mut self.dec {
            Decode::Length(rem) => {
                let k = (*rem).min(input.len() as u64) as usize;
                *rem -= k as u64;
                self.done = *rem == 0;
                self.total += k as u64;
                emit(&input[..k]);
                Ok(k)
            }
            Decode::Close => {
                self.total += input.len() as u64;
                emit(input);
                Ok(input.len())
            }
            Decode::Chunked(d) => {
                let mut pos = 0;
                while pos < input.len() {
                    let s = d.decode(&input[pos..]).map_err(BodyError::Framing)?;
                    let data = &input[pos + s.data.start..pos + s.data.end];
                    if self.max.is_some_and(|m| self.total + data.len() as u64 > m) {
                        return Err(BodyError::TooLarge);
                    }
                    self.total += data.len() as u64;
                    emit(data);
                    pos += s.consumed;
                    if s.done {
                        self.done = true;
                        break;
                    }
                }
                Ok(pos)
            }
        }
    }

    /// The sender closed its side. A close-delimited body ends here (its last chunk, if any,
    /// is appended to `out`); any other unfinished body was truncated.
    pub fn finish_at_eof(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        // A chunk passed unchanged and cut short: the body is truncated, as any other.
        self.raw = false;
        if self.done {
            return Ok(());
        }
        match self.dec {
            Decode::Close => {
                self.done = true;
                if self.chunked_out {
                    self.pay_crlf(out);
                    out.extend_from_slice(LAST_CHUNK);
                }
                Ok(())
            }
            Decode::Length(0) => {
                // An empty body announced as chunked: only its last chunk is left to write.
                self.done = true;
                out.extend_from_slice(LAST_CHUNK);
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }

    /// [`finish_at_eof`](Self::finish_at_eof) for a body that goes through `stage`.
    pub fn finish_at_eof_through(
        &mut self,
        stage: &mut dyn Stage,
        tmp: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyError> {
        if self.done {
            return Ok(());
        }
        match self.dec {
            Decode::Close | Decode::Length(0) => {
                self.done = true;
                self.end_through(stage, tmp, out);
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }
}

/// Appends `data` framed for the next hop: as a chunk, or as it is.
fn frame(chunked: bool, data: &[u8], out: &mut Vec<u8>) {
    if chunked {
        frame_chunk(data, out);
    } else {
        out.extend_from_slice(data);
    }
}

fn frame_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    write_chunk_header(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Checks the chunk framing of body bytes already received (a prefix of the body) without
/// consuming them, so that a request whose first chunk line is bad never reaches an upstream.
pub fn check_chunked_prefix(bytes: &[u8]) -> Result<(), ChunkError> {
    let mut d = ChunkedDecoder::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let step = d.decode(&bytes[pos..])?;
        pos += step.consumed;
        if step.done {
            break;
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "sim"))]
pub mod model;

#[cfg(test)]
mod tests {
    use super::*;

    /// What `step_gathered` sends, put together.
    fn gathered(t: &mut Transcoder, input: &[u8]) -> (Vec<u8>, usize, usize) {
        let (mut out, mut pieces) = (Vec::new(), Vec::new());
        let consumed = t.step_gathered(input, &mut out, &mut pieces).unwrap();
        let mut sent = Vec::new();
        let mut refs = 0;
        for p in &pieces {
            match p {
                Piece::Input(r) => {
                    refs += 1;
                    sent.extend_from_slice(&input[r.clone()])
                }
                Piece::Out(r) => sent.extend_from_slice(&out[r.clone()]),
            }
        }
        (sent, consumed, refs)
    }

    #[test]
    fn a_gathered_step_sends_what_a_step_sends_without_copying_long_runs() {
        let mut body = Vec::new();
        for (i, n) in [4096usize, 10, 600, 511, 512, 70_000, 1].iter().enumerate() {
            body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            body.extend(std::iter::repeat_n(b'a' + i as u8, *n));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        for out_kind in [BodyKind::Chunked, BodyKind::Close] {
            for piece in [1, 7, 513, 4096, 65536, body.len()] {
                let (mut a, mut b) = (
                    Transcoder::new(BodyKind::Chunked, out_kind),
                    Transcoder::new(BodyKind::Chunked, out_kind),
                );
                let (mut sent_a, mut sent_b) = (Vec::new(), Vec::new());
                let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
                let mut refs = 0;
                for c in body.chunks(piece) {
                    buf_a.extend_from_slice(c);
                    buf_b.extend_from_slice(c);
                    let mut out = Vec::new();
                    let s = a.step(&buf_a, &mut out).unwrap();
                    sent_a.extend_from_slice(&buf_a[s.pass.clone()]);
                    sent_a.extend_from_slice(&out);
                    buf_a.drain(..s.consumed);
                    let (g, consumed, r) = gathered(&mut b, &buf_b);
                    refs += r;
                    sent_b.extend_from_slice(&g);
                    buf_b.drain(..consumed);
                }
                assert!(a.is_done() && b.is_done());
                assert_eq!(sent_a, sent_b, "{out_kind:?} in pieces of {piece}");
                if piece >= 4096 {
                    assert!(refs >= 3, "long runs are not copied ({piece}: {refs})");
                }
            }
        }
        // Identity: the input as it is.
        let mut t = Transcoder::new(BodyKind::Length(5), BodyKind::Length(5));
        let (sent, consumed, refs) = gathered(&mut t, b"hello, next");
        assert_eq!((&sent[..], consumed, refs), (&b"hello"[..], 5, 1));
    }

    /// Feeds `input` in pieces of `piece` bytes; returns what would be written and what is left.
    fn run(
        input: BodyKind,
        output: BodyKind,
        bytes: &[u8],
        piece: usize,
        eof: bool,
    ) -> (Vec<u8>, Result<usize, BodyError>) {
        let (sent, _, left) = relay(input, output, bytes, piece, 0, eof);
        (sent, left)
    }

    fn run_spliced(
        input: BodyKind,
        output: BodyKind,
        bytes: &[u8],
        piece: usize,
        splice: usize,
    ) -> (Vec<u8>, bool, Result<usize, BodyError>) {
        relay(input, output, bytes, piece, splice, true)
    }

    /// Feeds `bytes` in reads of up to `piece` bytes and, whenever the buffer is empty and
    /// `splice_run` allows, moves up to `splice` bytes straight from the input to the output
    /// (as io's splice would; 0: never), with the framing `spliced` gives; at the end of the
    /// input, end of file when `eof`. Returns what was sent, whether anything was spliced, and
    /// what is left.
    fn relay(
        input: BodyKind,
        output: BodyKind,
        bytes: &[u8],
        piece: usize,
        splice: usize,
        eof: bool,
    ) -> (Vec<u8>, bool, Result<usize, BodyError>) {
        let mut t = Transcoder::new(input, output);
        let mut buf = Vec::new();
        let mut sent = Vec::new();
        let mut fed = 0;
        let mut any = false;
        loop {
            let mut out = Vec::new();
            match t.step(&buf, &mut out) {
                Ok(s) => {
                    sent.extend_from_slice(&buf[s.pass.clone()]);
                    sent.extend_from_slice(&out);
                    buf.drain(..s.consumed);
                }
                Err(e) => return (sent, any, Err(e)),
            }
            if t.is_done() {
                return (sent, any, Ok(buf.len() + bytes.len() - fed));
            }
            while let (Some(run), true) = (t.splice_run(), buf.is_empty()) {
                let k = (run.min(splice as u64) as usize).min(bytes.len() - fed);
                if k == 0 {
                    break;
                }
                let mut out = Vec::new();
                t.spliced(k as u64, &mut out);
                sent.extend_from_slice(&out);
                sent.extend_from_slice(&bytes[fed..fed + k]);
                fed += k;
                any = true;
            }
            if fed == bytes.len() {
                if !eof {
                    return (sent, any, Err(BodyError::Truncated));
                }
                let mut out = Vec::new();
                let r = t.finish_at_eof(&mut out);
                sent.extend_from_slice(&out);
                return (sent, any, r.map(|()| 0));
            }
            let k = piece.min(bytes.len() - fed).min(t.want());
            buf.extend_from_slice(&bytes[fed..fed + k]);
            fed += k;
        }
    }

    #[test]
    fn long_chunks_and_long_close_delimited_bodies_splice_between_framing() {
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        // Chunks of every kind of size: short ones go through the buffer, long ones splice.
        let mut chunked = Vec::new();
        let mut at = 0;
        for size in [10, 100_000, 40_000, SPLICE_RUN as usize - 1, 5, 120_000] {
            let end = (at + size).min(payload.len());
            chunked.extend_from_slice(format!("{:x};e=1\r\n", end - at).as_bytes());
            chunked.extend_from_slice(&payload[at..end]);
            chunked.extend_from_slice(b"\r\n");
            at = end;
        }
        let payload = &payload[..at];
        chunked.extend_from_slice(b"0\r\nT: 1\r\n\r\nNEXT");
        for (piece, splice) in [(16384, 262_144), (1000, 65536), (7, 3), (100_000, 1)] {
            for out in [BodyKind::Chunked, BodyKind::Close] {
                let (sent, any, left) =
                    run_spliced(BodyKind::Chunked, out, &chunked, piece, splice);
                assert!(any, "{piece}/{splice}: a long chunk was spliced");
                assert_eq!(left, Ok(4), "{piece}/{splice}: NEXT stays");
                let decoded = if out == BodyKind::Chunked {
                    let (d, l) = run(BodyKind::Chunked, BodyKind::Close, &sent, 999, false);
                    assert_eq!(
                        l,
                        Ok(0),
                        "{piece}/{splice}: the output is whole, valid chunked"
                    );
                    d
                } else {
                    sent
                };
                assert_eq!(decoded, payload, "{piece}/{splice} {out:?}");
            }
            // Close-delimited: spliced once the body has carried SPLICE_RUN, to the end.
            for out in [BodyKind::Chunked, BodyKind::Close] {
                let (sent, any, left) = run_spliced(BodyKind::Close, out, payload, piece, splice);
                assert!(any || piece > payload.len());
                assert_eq!(left, Ok(0));
                let decoded = if out == BodyKind::Chunked {
                    let (d, l) = run(BodyKind::Chunked, BodyKind::Close, &sent, 999, false);
                    assert_eq!(l, Ok(0));
                    d
                } else {
                    sent
                };
                assert_eq!(decoded, payload, "close {piece}/{splice} {out:?}");
            }
        }
        // A short body never splices; a chunked one truncated inside a spliced chunk is an
        // error at the end of input.
        let (_, any, _) = run_spliced(BodyKind::Close, BodyKind::Chunked, b"abc", 1, 1);
        assert!(!any);
        let cut = &chunked[..50_000];
        let (_, any, left) = run_spliced(BodyKind::Chunked, BodyKind::Chunked, cut, 1000, 4096);
        assert!(any);
        assert_eq!(left, Err(BodyError::Truncated));
        assert_eq!(
            Transcoder::new(BodyKind::Length(1 << 20), BodyKind::Length(1 << 20)).splice_run(),
            None
        );
    }

    #[test]
    fn a_close_delimited_body_is_read_up_to_where_its_splice_may_begin() {
        let mut t = Transcoder::new(BodyKind::Close, BodyKind::Chunked);
        assert_eq!(t.want(), SPLICE_RUN as usize);
        let mut out = Vec::new();
        assert_eq!(t.step(&[b'a'; 1000], &mut out).unwrap().consumed, 1000);
        assert_eq!(t.want(), SPLICE_RUN as usize - 1000);
        assert_eq!(t.splice_run(), None);
        let rest = vec![b'a'; SPLICE_RUN as usize - 1000];
        assert_eq!(t.step(&rest, &mut out).unwrap().consumed, rest.len());
        assert_eq!(t.splice_run(), Some(u64::MAX));
        assert_eq!(t.want(), usize::MAX, "unbounded once the splice may begin");
    }

    #[test]
    fn reads_in_and_after_a_long_chunk_stop_at_the_next_size_line() {
        let mut t = Transcoder::new(BodyKind::Chunked, BodyKind::Chunked);
        assert_eq!(
            t.want(),
            usize::MAX,
            "the first chunk's size is not known yet"
        );
        let mut input = b"186a0\r\n".to_vec();
        input.extend_from_slice(&[b'a'; 1000]);
        let mut out = Vec::new();
        assert_eq!(t.step(&input, &mut out).unwrap().consumed, input.len());
        assert_eq!(t.splice_run(), Some(99_000));
        assert_eq!(t.want(), 99_000 + FRAMING_READ);
        out.clear();
        t.spliced(99_000, &mut out);
        assert_eq!(
            out, b"182b8\r\n",
            "one chunk header for the rest of the chunk"
        );
        assert_eq!(t.splice_run(), None);
        assert_eq!(
            t.want(),
            FRAMING_READ,
            "after a long chunk, its CRLF and the size line"
        );
        out.clear();
        assert_eq!(t.step(b"\r\n5\r\nhello", &mut out).unwrap().consumed, 10);
        assert_eq!(out, b"\r\n5\r\nhello\r\n");
        assert_eq!(t.want(), usize::MAX, "after a short chunk, full reads");
        out.clear();
        assert_eq!(t.step(b"\r\n0\r\n\r\n", &mut out).unwrap().consumed, 7);
        assert!(t.is_done());
        assert_eq!(t.total(), 100_005);
    }

    #[test]
    fn length_passes_through_and_leaves_the_next_message() {
        for piece in [1, 3, 100] {
            let (sent, left) = run(
                BodyKind::Length(5),
                BodyKind::Length(5),
                b"helloGET /",
                piece,
                false,
            );
            assert_eq!(sent, b"hello");
            assert_eq!(left, Ok(5));
        }
    }

    #[test]
    fn chunked_is_reframed_and_close_becomes_chunked() {
        let body = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in [1, 2, 7, 100] {
            let (sent, left) = run(BodyKind::Chunked, BodyKind::Chunked, body, piece, false);
            if piece == 100 {
                assert_eq!(sent, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
            }
            let (again, _) = run(BodyKind::Chunked, BodyKind::Close, &sent, 100, false);
            assert_eq!(again, b"abcde");
            assert_eq!(left, Ok(4));
            let (sent, _) = run(BodyKind::Chunked, BodyKind::Close, body, piece, false);
            assert_eq!(sent, b"abcde");
            let (sent, left) = run(BodyKind::Close, BodyKind::Chunked, b"abcdef", piece, true);
            assert_eq!(left, Ok(0));
            // Framing follows the pieces; decoding it again gives the bytes back.
            let mut again = Vec::new();
            let mut d = Transcoder::new(BodyKind::Chunked, BodyKind::Close);
            let s = d.step(&sent, &mut again).unwrap();
            assert!(d.is_done());
            assert_eq!(s.consumed, sent.len());
            assert_eq!(again, b"abcdef");
        }
    }

    #[test]
    fn a_limited_chunked_body_stops_before_the_first_byte_over() {
        let mut t = Transcoder::new(BodyKind::Chunked, BodyKind::Chunked).with_max(Some(5));
        let mut out = Vec::new();
        let s = t.step(b"3\r\nabc\r\n", &mut out).unwrap();
        assert_eq!(s.consumed, 8);
        assert_eq!(out, b"3\r\nabc\r\n");
        out.clear();
        // Three more would make six: refused, and nothing of them written.
        assert_eq!(
            t.step(b"3\r\ndef\r\n0\r\n\r\n", &mut out),
            Err(BodyError::TooLarge)
        );
        assert!(out.is_empty());
        assert_eq!(
            t.splice_run(),
            None,
            "a limited chunked body is never spliced"
        );
        // Exactly the limit passes.
        let mut t = Transcoder::new(BodyKind::Chunked, BodyKind::Length(5)).with_max(Some(5));
        let mut out = Vec::new();
        let s = t.step(b"5\r\nhello\r\n0\r\n\r\n", &mut out).unwrap();
        assert!(t.is_done());
        assert_eq!(s.consumed, 15);
    }

    /// io's pass-through (`model::passed`) with reads of `read` and looks of `peek` bytes:
    /// what was sent, how many bytes went on unchanged, and what is left.
    fn passed(
        bytes: &[u8],
        head: usize,
        read: usize,
        peek: usize,
    ) -> (Vec<u8>, usize, Result<usize, BodyError>) {
        let r = super::model::passed(bytes, head, &mut || read, &mut || peek);
        (r.sent, r.raw, r.left)
    }

    /// Chunks of `sizes`, each size line as `line` writes it.
    fn chunked_body(sizes: &[usize], line: impl Fn(usize, usize) -> String, end: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            body.extend_from_slice(line(i, n).as_bytes());
            body.extend((0..n).map(|j| (i * 31 + j) as u8));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(end);
        body
    }

    #[test]
    fn framing_as_this_proxy_writes_it_passes_unchanged_and_the_rest_is_reframed() {
        let sizes = [4096, 10, 600, 1, 33_000, 4096, 70_000, 7, 4096];
        let canonical = chunked_body(&sizes, |_, n| format!("{n:x}\r\n"), b"0\r\n\r\nnext");
        // Some size lines written otherwise (an extension, upper case, a leading zero), and
        // a trailer at the end.
        let mixed = chunked_body(
            &sizes,
            |i, n| match i {
                2 => format!("{n:x};ext=1\r\n"),
                4 => format!("{n:X}\r\n"),
                6 => format!("0{n:x}\r\n"),
                _ => format!("{n:x}\r\n"),
            },
            b"0\r\nX-T: 1\r\n\r\nnext",
        );
        let total: usize = sizes.iter().sum();
        for (body, whole) in [(&canonical, true), (&mixed, false)] {
            let (plain, _) = run(BodyKind::Chunked, BodyKind::Close, body, 1 << 20, true);
            assert_eq!(plain.len(), total);
            // Bytes with the head: none, part of a size line, a chunk's data to its end (4102)
            // and to before it, more than one chunk.
            for (head, read) in [
                (0, 1),
                (0, 5),
                (0, 4096),
                (5, 5),
                (4102, 4096),
                (4100, 1),
                (70_000, 7),
            ] {
                for peek in [1, 2, 3, 7, 4099, 131_072] {
                    let what =
                        format!("head {head}, whole {whole}, reads of {read}, peeks of {peek}");
                    let (sent, raw, left) = passed(body, head, read, peek);
                    assert_eq!(left, Ok(4), "{what}: the next message is left");
                    let (payload, rest) =
                        run(BodyKind::Chunked, BodyKind::Close, &sent, 1 << 20, true);
                    assert_eq!(rest, Ok(0), "{what}: the output's framing is whole");
                    assert!(payload == plain, "{what}: another payload");
                    assert!(raw > 0, "{what}: something went on unchanged");
                }
            }
        }
        // Short chunks framed this way, nothing with the head, peeks that hold a size line:
        // from the first byte to the last, nothing is re-framed.
        let short = chunked_body(
            &[4096, 10, 600, 1, 4096, 7],
            |_, n| format!("{n:x}\r\n"),
            b"0\r\n\r\n",
        );
        for (read, peek) in [(1, 8), (5, 4099), (4096, 131_072)] {
            let (sent, raw, left) = passed(&short, 0, read, peek);
            assert_eq!(
                (left, raw),
                (Ok(0), short.len()),
                "reads {read}, peeks {peek}"
            );
            assert!(
                sent == short,
                "reads {read}, peeks {peek}: not byte for byte"
            );
        }
        // Bad framing: the same error as through the buffers, wherever the pass stops.
        for bad in [
            &b"10\r\n0123456789abcdefXX"[..],
            b"10\r\n0123456789abcdef\r\nzz\r\n",
            b"g\r\n",
        ] {
            let (_, plain_left) = run(BodyKind::Chunked, BodyKind::Chunked, bad, 1 << 20, true);
            for peek in [1, 3, 64] {
                assert_eq!(passed(bad, 0, 4, peek).2, plain_left, "{bad:?}");
            }
        }
        // Cut short inside a chunk passed unchanged: truncated.
        let (_, _, left) = passed(&canonical[..5000], 0, 64, 4099);
        assert_eq!(left, Err(BodyError::Truncated));
        // Not for a limited body, nor for output that is not chunked.
        let mut t = Transcoder::new(BodyKind::Chunked, BodyKind::Chunked).with_max(Some(10));
        assert!(!t.may_pass_through() && t.pass_through(&canonical, &mut Vec::new()).is_none());
        let t = Transcoder::new(BodyKind::Chunked, BodyKind::Close);
        assert!(!t.may_pass_through());
    }

    /// Mutated bodies, passed unchanged where they may be and re-framed where not, against the
    /// same bodies through the buffers only: the same payload, the same error, the same bytes
    /// left for the next message, and whole framing out.
    #[test]
    fn mutated_bodies_passed_through_agree_with_the_buffered_relay() {
        let base = chunked_body(
            &[3, 4096, 40, 1, 300],
            |_, n| format!("{n:x}\r\n"),
            b"0\r\n\r\nnx",
        );
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut body = base.clone();
            for _ in 0..1 + rand() % 3 {
                let at = (rand() as usize) % body.len();
                match rand() % 3 {
                    0 => body[at] = b"0123456789abcdefABCDEF\r\n;x: "[(rand() % 27) as usize],
                    1 => {
                        body.remove(at);
                    }
                    _ => body.insert(at, b"0a\r\n;"[(rand() % 5) as usize]),
                }
            }
            let (plain, plain_left) = run(BodyKind::Chunked, BodyKind::Close, &body, 1 << 20, true);
            let (read, peek) = (1 + (rand() % 5000) as usize, 1 + (rand() % 5000) as usize);
            let head = (rand() % 5000) as usize;
            let (sent, _, left) = passed(&body, head, read, peek);
            let what = format!(
                "{} bytes, head {head}, reads {read}, peeks {peek}",
                body.len()
            );
            assert_eq!(left, plain_left, "{what}");
            if left.is_ok() {
                let (payload, rest) = run(BodyKind::Chunked, BodyKind::Close, &sent, 1 << 20, true);
                assert_eq!(rest, Ok(0), "{what}: the output's framing is whole");
                assert!(payload == plain, "{what}: another payload");
            }
        }
    }

    #[test]
    fn truncation_and_bad_framing_are_errors() {
        let (_, r) = run(
            BodyKind::Length(10),
            BodyKind::Length(10),
            b"short",
            2,
            true,
        );
        assert_eq!(r, Err(BodyError::Truncated));
        let (_, r) = run(BodyKind::Chunked, BodyKind::Chunked, b"3\r\nab", 1, true);
        assert_eq!(r, Err(BodyError::Truncated));
        let (_, r) = run(BodyKind::Chunked, BodyKind::Chunked, b"zz\r\n", 1, true);
        assert!(matches!(r, Err(BodyError::Framing(_))));
    }

    /// Uppercases the payload and adds a trailer line at the end: a transforming stage.
    struct Upper;

    impl Stage for Upper {
        fn data(&mut self, payload: &[u8], out: &mut Vec<u8>) {
            out.extend(payload.iter().map(u8::to_ascii_uppercase));
        }
        fn end(&mut self, out: &mut Vec<u8>) {
            out.extend_from_slice(b"!");
        }
    }

    #[test]
    fn a_stage_sees_every_payload_byte_and_its_output_is_framed() {
        for (input, bytes, eof) in [
            (
                BodyKind::Chunked,
                &b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nNEXT"[..],
                false,
            ),
            (BodyKind::Length(5), &b"abcdeNEXT"[..], false),
            (BodyKind::Close, &b"abcde"[..], true),
        ] {
            for piece in [1, 4, 100] {
                let mut t = Transcoder::new(input, BodyKind::Chunked);
                let (mut buf, mut sent, mut tmp, mut fed) = (Vec::new(), Vec::new(), Vec::new(), 0);
                while !t.is_done() {
                    let n = t
                        .step_through(&buf, &mut Upper, &mut tmp, &mut sent)
                        .unwrap();
                    buf.drain(..n);
                    if t.is_done() {
                        break;
                    }
                    if fed == bytes.len() {
                        assert!(eof);
                        t.finish_at_eof_through(&mut Upper, &mut tmp, &mut sent)
                            .unwrap();
                        break;
                    }
                    let k = piece.min(bytes.len() - fed).min(t.want());
                    buf.extend_from_slice(&bytes[fed..fed + k]);
                    fed += k;
                }
                let (plain, _) = run(BodyKind::Chunked, BodyKind::Close, &sent, 100, false);
                assert_eq!(plain, b"ABCDE!", "{input:?} piece {piece}");
                assert!(sent.ends_with(b"0\r\n\r\n"));
            }
        }
    }

    #[test]
    fn empty_bodies() {
        let (sent, left) = run(BodyKind::Length(0), BodyKind::Chunked, b"", 1, true);
        assert_eq!(sent, b"0\r\n\r\n");
        assert_eq!(left, Ok(0));
        let mut t = Transcoder::new(BodyKind::None, BodyKind::None);
        assert!(t.is_done());
        assert_eq!(t.step(b"GET", &mut Vec::new()).unwrap().consumed, 0);
    }
}
