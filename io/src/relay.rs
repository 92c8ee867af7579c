//! Streaming a message body from one socket to another with bounded memory.
//!
//! The body is read into the connection's one input buffer and written on before the next read,
//! so memory per connection stays at one buffer whatever the body size. The input side is
//! decoded by the framing core chose (length, chunked, until close); the output side is framed
//! anew: identity bytes are written straight from the input buffer, chunked output is re-encoded
//! so that the next hop only ever parses framing this proxy wrote.
//! Bytes past the end of the body (a pipelined request) stay in the buffer for the caller.

use std::time::Duration;

use monoio::net::TcpStream;
use ringway_core::http::body::{BodyError, Stage, Transcoder, FRAMING_READ};
use ringway_core::proxy::BodyFail;

use ringway_core::http::body::Piece;

use crate::buf::{write_range, Bufs, RELAY_BUF};
use crate::deadline::IoFail;
use crate::splice::{drain, fill, put_ahead, splice, Fixed, Pipe, Pipes, SpliceError};
use crate::stream::Stream;

/// Which end of a relay failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Source,
    Destination,
}

#[derive(Debug)]
pub(crate) enum RelayFail {
    Io(IoFail),
    /// Truncated or badly framed (the source only).
    Body(BodyError),
}

#[derive(Debug)]
pub(crate) struct RelayError {
    pub side: Side,
    pub fail: RelayFail,
}

impl RelayError {
    /// What core is told.
    pub(crate) fn into_body_fail(self) -> BodyFail {
        match (self.side, self.fail) {
            (Side::Destination, f) => BodyFail::Destination(match f {
                RelayFail::Io(e) => e.to_string(),
                RelayFail::Body(e) => e.to_string(),
            }),
            (Side::Source, RelayFail::Body(e)) => BodyFail::Source(e),
            (Side::Source, RelayFail::Io(IoFail::Timeout)) => BodyFail::SourceTimeout,
            (Side::Source, RelayFail::Io(IoFail::Io(e))) => BodyFail::SourceIo(e.to_string()),
        }
    }
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match self.side {
            Side::Source => "reading",
            Side::Destination => "writing",
        };
        match &self.fail {
            RelayFail::Io(e) => write!(f, "{side} body: {e}"),
            RelayFail::Body(e) => write!(f, "{side} body: {e}"),
        }
    }
}

fn src(fail: RelayFail) -> RelayError {
    RelayError {
        side: Side::Source,
        fail,
    }
}

fn dst(e: IoFail) -> RelayError {
    RelayError {
        side: Side::Destination,
        fail: RelayFail::Io(e),
    }
}

/// Timeouts between two reads of the source and two writes to the destination.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RelayTimeouts {
    pub read: Duration,
    pub write: Duration,
}

/// Relays a `len`-byte body whose first bytes may already be in `buf`: those are written from
/// the buffer, the rest spliced (see `splice.rs`) through a pipe from the worker's pool. Bytes
/// in `buf` past the body stay there.
pub(crate) async fn relay_spliced(
    from: &mut TcpStream,
    buf: &mut Vec<u8>,
    len: u64,
    to: &mut TcpStream,
    pipes: &Pipes,
    t: RelayTimeouts,
) -> Result<(), RelayError> {
    let k = len.min(buf.len() as u64) as usize;
    write_range(to, buf, 0..k, t.write).await.map_err(dst)?;
    buf.drain(..k);
    let rest = len - k as u64;
    if rest == 0 {
        return Ok(());
    }
    let pipe = pipes
        .take()
        .map_err(|e| src(RelayFail::Io(IoFail::Io(e))))?;
    let waits = Fixed {
        read: t.read,
        write: t.write,
    };
    splice(from, to, &pipe, Some(rest), &waits)
        .await
        .map_err(spliced_error)?;
    pipes.give(pipe);
    Ok(())
}

fn spliced_error(e: SpliceError) -> RelayError {
    match e {
        SpliceError::Truncated => src(RelayFail::Body(BodyError::Truncated)),
        SpliceError::Source(e) => src(RelayFail::Io(e)),
        SpliceError::Destination(e) => dst(e),
    }
}

/// A spliced run of a body: the two plain sockets, the body's one pipe between them, and how
/// long a read or a write may wait.
struct Run<'a> {
    from: &'a TcpStream,
    to: &'a mut TcpStream,
    pipe: &'a Pipe,
    waits: Fixed,
}

/// What a relay lends the steps that move its body: the connection's input buffer (bytes
/// read, or taken back out of a pipe, wait there to be stepped), the scratch buffer framing is
/// written into, and the worker's relay buffers.
struct Room<'a> {
    buf: &'a mut Vec<u8>,
    scratch: &'a mut Vec<u8>,
    bufs: &'a Bufs,
}

/// Splices a close-delimited body from its first [`SPLICE_RUN`] bytes to its end, a pipe's
/// worth at a time, each after the framing [`Transcoder::spliced`] writes for it (chunked
/// for an HTTP/1.1 client). Ends at the source's end of file.
///
/// The framing goes out by its own write. Writing it into the pipe ahead of the data, so that
/// both leave in one splice, measured twice the CPU per response (1 MiB in 64 KiB chunks:
/// 400–630 µs against 280–340): the small pipe buffer ahead of the socket pages made the
/// kernel build and deliver far more segments (softirq time tripled).
///
/// [`SPLICE_RUN`]: ringway_core::http::body::SPLICE_RUN
async fn splice_to_end(
    run: &mut Run<'_>,
    body: &mut Transcoder,
    scratch: &mut Vec<u8>,
) -> Result<(), RelayError> {
    let (from, pipe, waits) = (run.from, run.pipe, &run.waits);
    let to = &mut *run.to;
    loop {
        let n = fill(from, pipe, usize::MAX, waits)
            .await
            .map_err(spliced_error)?;
        if n == 0 {
            return Ok(());
        }
        scratch.clear();
        body.spliced(n as u64, scratch);
        crate::splice::put(to, scratch, waits)
            .await
            .map_err(spliced_error)?;
        drain(pipe, to, n, waits).await.map_err(spliced_error)?;
    }
}

/// Splices a chunked body's long chunks, and takes the framing between them, through one
/// pipe: each splice in takes up to a relay buffer's worth of the body as it arrived, data
/// and framing alike. A chunk's data goes on by splice after the header
/// [`Transcoder::spliced`] writes for it (its rest, announced whole); the framing after it is
/// read out of the pipe and stepped as a buffered read would be. True when the source ended
/// inside the body (inside a chunk the next hop sees the truncation: it was announced whole).
/// False when the run is over (the body is done, or a short chunk or framing that needs more
/// bytes comes next): what the pipe still held is in `buf` then, as if read from the socket.
///
/// Splicing one chunk at a time from the socket, with a read of the framing after each,
/// took two reads of the origin's socket per chunk, each freeing a little of its window:
/// 1 MiB in 64 KiB chunks at 256 connections cost 1.8–2.1x nginx's CPU, most of it the
/// kernel sending the origin's next segments from our system calls (docs/benchmarks-log.md,
/// run 42).
async fn splice_chunks(
    run: &mut Run<'_>,
    body: &mut Transcoder,
    room: Room<'_>,
) -> Result<bool, RelayError> {
    let (from, pipe, waits) = (run.from, run.pipe, &run.waits);
    let to = &mut *run.to;
    let Room { buf, scratch, bufs } = room;
    // Bytes in the pipe.
    let mut held = 0;
    scratch.clear();
    loop {
        let run = body.chunk_left();
        body.spliced(run, scratch);
        put_ahead(to, scratch, waits).await.map_err(spliced_error)?;
        scratch.clear();
        // The run, then (with the pipe refilled if it ran dry) the framing after it.
        let mut left = run;
        loop {
            if held == 0 {
                held = fill(from, pipe, RELAY_BUF, waits)
                    .await
                    .map_err(spliced_error)?;
                if held == 0 {
                    return Ok(true);
                }
            }
            if left == 0 {
                break;
            }
            let n = left.min(held as u64) as usize;
            drain(pipe, to, n, waits).await.map_err(spliced_error)?;
            left -= n as u64;
            held -= n;
        }
        let k = held.min(FRAMING_READ);
        out_of_pipe(pipe, buf, k, bufs)?;
        held -= k;
        let s = body
            .step(buf, scratch)
            .map_err(|e| src(RelayFail::Body(e)))?;
        debug_assert!(s.pass.is_empty(), "chunked input passes nothing untouched");
        buf.drain(..s.consumed);
        if body.splice_run().is_none() {
            out_of_pipe(pipe, buf, held, bufs)?;
            return put_ahead_done(to, scratch, waits).await.map(|()| false);
        }
    }
}

/// Passes a chunked body on unchanged while its framing is already as this proxy writes it
/// (core's [`Transcoder::pass_through`]): what has arrived is looked at with `MSG_PEEK`, and
/// the whole chunks among it (a chunk begun goes on to its end) are spliced through, framing
/// and all, instead of being read and written again. The peek copies what a read would have;
/// the write's copy into the socket is what this saves: 23% of the worker's CPU for 1 MiB in 4
/// KiB chunks (docs/benchmarks-log.md, run 42). True when the source ended inside the body;
/// false when the body is done or the next framing is written otherwise (the buffered relay
/// takes it from there; nothing of it was taken).
async fn pass_chunks(
    run: &mut Run<'_>,
    body: &mut Transcoder,
    room: Room<'_>,
) -> Result<Passed, RelayError> {
    let (from, pipe, waits) = (run.from, run.pipe, &run.waits);
    let to = &mut *run.to;
    let Room { buf, scratch, bufs } = room;
    let src_fd = crate::sys::fd(from);
    loop {
        // Less than this has arrived: a read and a write cost less than a peek and two
        // splices (unless a chunk passed unchanged is open: it goes on this way).
        if !body.passing_chunk() && crate::sys::pending(src_fd).is_ok_and(|n| n < PASS_MIN) {
            return Ok(Passed::Short);
        }
        if buf.capacity() < RELAY_BUF {
            bufs.give(std::mem::take(buf));
            *buf = bufs.take_relay();
        }
        debug_assert!(
            buf.is_empty(),
            "entered with the buffer's bytes all stepped"
        );
        let seen = match crate::sys::peek_append(src_fd, buf, RELAY_BUF) {
            Ok(0) => return Ok(Passed::Ended),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                bufs.give(std::mem::take(buf));
                match monoio::time::timeout(waits.read, from.readable(false)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => return Err(src(RelayFail::Io(IoFail::Io(e)))),
                    Err(_) => return Err(src(RelayFail::Io(IoFail::Timeout))),
                }
            }
            Err(e) => return Err(src(RelayFail::Io(IoFail::Io(e)))),
        };
        scratch.clear();
        let pass = body.pass_through(&buf[..seen], scratch);
        // The bytes stay in the socket: a relay waiting on its client holds no buffer.
        bufs.give(std::mem::take(buf));
        let Some(pass) = pass else {
            return Ok(Passed::Foreign);
        };
        if pass.skip + pass.raw == 0 {
            // Part of a framing element (a chunk begun always passes): the buffered relay
            // takes it, waiting for the rest without spinning on bytes already seen.
            return Ok(Passed::Short);
        }
        if pass.skip > 0 {
            let mut drop = [0u8; 2];
            let k = crate::sys::recv(src_fd, &mut drop[..pass.skip])
                .map_err(|e| src(RelayFail::Io(IoFail::Io(e))))?;
            debug_assert_eq!(k, pass.skip, "peeked bytes are there to take");
        }
        if pass.raw > 0 {
            put_ahead(to, scratch, waits).await.map_err(spliced_error)?;
            let mut left = pass.raw;
            while left > 0 {
                let n = fill(from, pipe, left, waits).await.map_err(spliced_error)?;
                if n == 0 {
                    return Ok(Passed::Ended);
                }
                drain(pipe, to, n, waits).await.map_err(spliced_error)?;
                left -= n;
            }
        } else if !scratch.is_empty() {
            put_ahead_done(to, scratch, waits).await?;
        }
        if body.is_done() {
            return Ok(Passed::Short);
        }
        if body.splice_run().is_some() {
            // A long chunk's size line went on: its data is spliced without a look.
            return Ok(Passed::Long);
        }
    }
}

/// Why [`pass_chunks`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Passed {
    /// The source ended inside the body.
    Ended,
    /// The body is done, or the next framing element has not all arrived.
    Short,
    /// A long chunk begins: `splice_chunks` takes it.
    Long,
    /// The next framing is written otherwise: not passed unchanged again for this body.
    Foreign,
}

/// The least that must have arrived for [`pass_chunks`] to look at it.
const PASS_MIN: usize = 64 * 1024;

/// The run `relay_in` gives [`pass_chunks`].
const PASS: u64 = u64::MAX - 1;

/// Writes framing that nothing spliced follows.
async fn put_ahead_done(
    to: &TcpStream,
    scratch: &mut Vec<u8>,
    waits: &Fixed,
) -> Result<(), RelayError> {
    let r = crate::splice::put(to, scratch, waits).await;
    scratch.clear();
    r.map_err(spliced_error)
}

/// Moves `n` bytes from `pipe` to the end of `buf`, in a relay buffer from the worker's spares
/// when `buf` holds none.
fn out_of_pipe(pipe: &Pipe, buf: &mut Vec<u8>, n: usize, bufs: &Bufs) -> Result<(), RelayError> {
    if n == 0 {
        return Ok(());
    }
    if buf.is_empty() && buf.capacity() < RELAY_BUF {
        bufs.give(std::mem::take(buf));
        *buf = bufs.take_relay();
    }
    crate::splice::take_out(pipe, buf, n).map_err(|e| src(RelayFail::Io(IoFail::Io(e))))
}

/// The body a relay moves: its framing, the stage it passes through (a cache tee, later a
/// compressor), and the relay's idle limits.
pub(crate) struct Moving<'a, 's> {
    pub(crate) body: &'a mut Transcoder,
    pub(crate) stage: Option<&'s mut dyn Stage>,
    pub(crate) t: RelayTimeouts,
}

/// Relays one body from `from` (whose first bytes may already be in `buf`) to `to`, or
/// discards it when `to` is `None`, framed as core's [`Transcoder`] says; through `stage` first
/// when there is one (the body seam: a cache tee or a compressor). Returns the payload bytes
/// it moved. Bytes in `buf` past the body stay there. With `pipes`, no stage and plain sockets at
/// both ends, the runs of payload the transcoder allows are spliced between the framing.
///
/// A body from a plain socket is read into the worker's relay buffers (`bufs`) when its bytes
/// have arrived; `buf` may be left without capacity, or with another buffer's, when it returns.
pub(crate) async fn relay(
    from: &mut Stream,
    buf: &mut Vec<u8>,
    to: Option<&mut Stream>,
    m: Moving<'_, '_>,
    scratch: &mut Vec<u8>,
    pipes: Option<&Pipes>,
    bufs: &Bufs,
) -> Result<u64, RelayError> {
    // A transcoder may come with part of its body already framed (the bytes that went out
    // with the response head): only what this relay moves is returned.
    let before = m.body.total();
    let mut pieces = bufs.take_pieces();
    let room = Room { buf, scratch, bufs };
    let r = relay_in(from, to, m, room, pipes, &mut pieces).await;
    bufs.give_pieces(pieces);
    r.map(|total| total - before)
}

async fn relay_in(
    from: &mut Stream,
    mut to: Option<&mut Stream>,
    m: Moving<'_, '_>,
    room: Room<'_>,
    pipes: Option<&Pipes>,
    pieces: &mut Vec<Piece>,
) -> Result<u64, RelayError> {
    let Moving { body, mut stage, t } = m;
    let Room { buf, scratch, bufs } = room;
    // A body from a TLS stream moves through the connection's buffer, grown for it; one from
    // a plain socket through the worker's relay buffers, taken when its bytes have arrived
    // (`read_arrived`).
    if !body.is_done() && from.tcp().is_none() {
        crate::buf::ensure_capacity(buf, RELAY_BUF);
    }
    let mut tmp = Vec::new();
    let mut pipe: Option<Pipe> = None;
    // Re-framed bodies to a plain socket go out gathered: payload from the input buffer and
    // framing from `scratch` in one `writev`, instead of copying the payload into `scratch`.
    let gather = stage.is_none() && matches!(to.as_deref(), Some(Stream::Plain(_)));
    let mut pending: Option<std::io::Error> = None;
    let mut passing = body.may_pass_through();
    loop {
        scratch.clear();
        let (consumed, pass) = match stage.as_deref_mut() {
            None if gather => {
                let n = body
                    .step_gathered(buf, scratch, pieces)
                    .map_err(|e| src(RelayFail::Body(e)))?;
                if let Some(d) = to.as_deref_mut().and_then(Stream::tcp) {
                    write_gathered(d, buf, scratch, pieces, t.write)
                        .await
                        .map_err(dst)?;
                }
                scratch.clear();
                (n, 0..0)
            }
            None => {
                let s = body
                    .step(buf, scratch)
                    .map_err(|e| src(RelayFail::Body(e)))?;
                (s.consumed, s.pass)
            }
            Some(st) => {
                let n = body
                    .step_through(buf, st, &mut tmp, scratch)
                    .map_err(|e| src(RelayFail::Body(e)))?;
                (n, 0..0)
            }
        };
        if let Some(to) = to.as_deref_mut() {
            if !pass.is_empty() {
                to.write_range(buf, pass, t.write).await.map_err(dst)?;
            }
            if !scratch.is_empty() {
                to.write_all(scratch, t.write).await.map_err(dst)?;
            }
        }
        buf.drain(..consumed);
        if body.is_done() {
            give_back(pipes, pipe.take());
            return Ok(body.total());
        }
        let run = match (pipes, stage.is_none() && buf.is_empty()) {
            // Long chunks are spliced between framing this proxy writes; short ones whose
            // framing is as it writes it pass through unchanged (u64::MAX - 1 here), unless
            // that was found not to be so for this body.
            (Some(_), true) => body
                .splice_run()
                .or((passing && body.pass_ready()).then_some(PASS)),
            _ => None,
        };
        if let (Some(run), Some(pipes)) = (run, pipes) {
            let ends = (from.tcp(), to.as_deref_mut().and_then(Stream::tcp));
            if let (Some(f), Some(d)) = ends {
                // One pipe for the whole body (taken at its first run, given back empty at
                // its end): a pipe per run measured 2.5x the CPU at 256 connections, most of
                // it creating pipes once the worker's spares ran out.
                if pipe.is_none() {
                    pipe = Some(
                        pipes
                            .take()
                            .map_err(|e| src(RelayFail::Io(IoFail::Io(e))))?,
                    );
                }
                let mut spliced = Run {
                    from: f,
                    to: d,
                    pipe: pipe.as_ref().expect("taken above"),
                    waits: Fixed {
                        read: t.read,
                        write: t.write,
                    },
                };
                let room = Room {
                    buf: &mut *buf,
                    scratch: &mut *scratch,
                    bufs,
                };
                // Whether the source ended; `None`: bytes to read through the buffer next.
                let ended = match run {
                    u64::MAX => splice_to_end(&mut spliced, body, room.scratch)
                        .await
                        .map(|()| Some(true))?,
                    PASS => match pass_chunks(&mut spliced, body, room).await? {
                        Passed::Ended => Some(true),
                        Passed::Short if body.is_done() => Some(false),
                        Passed::Long => Some(false),
                        Passed::Short => None,
                        // The buffers take this body from here.
                        Passed::Foreign => {
                            passing = false;
                            None
                        }
                    },
                    _ => Some(splice_chunks(&mut spliced, body, room).await?),
                };
                if ended == Some(true) {
                    scratch.clear();
                    body.finish_at_eof(scratch)
                        .map_err(|e| src(RelayFail::Body(e)))?;
                    if let Some(to) = to.as_deref_mut() {
                        if !scratch.is_empty() {
                            to.write_all(scratch, t.write).await.map_err(dst)?;
                        }
                    }
                    give_back(Some(pipes), pipe.take());
                    return Ok(body.total());
                }
                // The run is over: framing comes next, through the buffer (what the pipe
                // held is in it), or it is read first.
                if ended.is_some() {
                    continue;
                }
            }
        }
        if let Some(e) = pending.take() {
            return Err(src(RelayFail::Io(IoFail::Io(e))));
        }
        let n = match from.tcp() {
            Some(f) => read_arrived(f, buf, body.want(), t.read, bufs, &mut pending).await,
            None => from.read_append(buf, body.want(), t.read).await,
        }
        .map_err(|e| src(RelayFail::Io(e)))?;
        if n == 0 {
            scratch.clear();
            match stage.as_deref_mut() {
                None => body.finish_at_eof(scratch),
                Some(st) => body.finish_at_eof_through(st, &mut tmp, scratch),
            }
            .map_err(|e| src(RelayFail::Body(e)))?;
            if let Some(to) = to.as_deref_mut() {
                if !scratch.is_empty() {
                    to.write_all(scratch, t.write).await.map_err(dst)?;
                }
            }
            give_back(pipes, pipe.take());
            return Ok(body.total());
        }
    }
}

/// Writes `pieces` (ranges of `input` and `out`, see `Transcoder::step_gathered`) completely,
/// by `writev`; both buffers come back as they were.
async fn write_gathered(
    to: &mut TcpStream,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
    pieces: &[ringway_core::http::body::Piece],
    limit: impl crate::deadline::Limit,
) -> Result<(), IoFail> {
    use monoio::io::AsyncWriteRent;
    let total: usize = pieces
        .iter()
        .map(|p| match p {
            Piece::Input(r) | Piece::Out(r) => r.len(),
        })
        .sum();
    let mut off = 0;
    while off < total {
        let g = crate::sys::GatherBuf::new(std::mem::take(input), std::mem::take(out), pieces, off);
        let (res, g) = limit.run(to.writev(g)).await?;
        (*input, *out) = g.into_parts();
        match res {
            Ok(0) => return Err(IoFail::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
    Ok(())
}

/// Returns a pipe a relay emptied to the worker's spares.
fn give_back(pipes: Option<&Pipes>, pipe: Option<Pipe>) {
    if let (Some(pool), Some(p)) = (pipes, pipe) {
        pool.give(p);
    }
}

/// Reads at most `want` bytes of a body from `from` into `buf` (the relay's buffer) without
/// holding a buffer while nothing has arrived: an empty `buf` goes back to the worker's spares,
/// the wait is for readiness alone, and a relay buffer is taken from the spares once there
/// are bytes: the one a relay let go of last, still in the caches. Then it reads what has
/// arrived until a read finds nothing (EAGAIN), `buf` is full or `want` is met. A short read
/// does not stop it: the next often finds the origin's next write (stopping there cost
/// 1.1-1.3x the CPU on 4 KiB chunks, docs/benchmarks-log.md run 41). An error after some bytes is kept in `pending` for the
/// next call. 0: the end of the stream.
///
/// A read posted with its buffer, as monoio's reads are, pins that buffer for as long as the
/// peer takes: at 256 connections relaying chunked bodies, 256 buffers of 64 KiB, whose
/// lines the copies in and out of the kernel then missed in the caches (docs/benchmarks-log.md,
/// run 39). This is what a provided-buffer ring does in the kernel, done with a poll.
async fn read_arrived(
    from: &TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
    limit: impl crate::deadline::Limit,
    bufs: &Bufs,
    pending: &mut Option<std::io::Error>,
) -> Result<usize, IoFail> {
    use crate::deadline::Limit as _;
    let limit = limit.fixed();
    loop {
        if buf.is_empty() {
            bufs.give(std::mem::take(buf));
            *buf = bufs.take_relay();
        } else if buf.capacity() < RELAY_BUF {
            bufs.grow_relay(buf);
        }
        let mut got = 0;
        loop {
            let room = (buf.capacity() - buf.len()).min(want - got);
            if room == 0 {
                return Ok(got);
            }
            match crate::sys::recv_append(crate::sys::fd(from), buf, room) {
                Ok(0) => return Ok(got),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => return Ok(got),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if got > 0 => {
                    *pending = Some(e);
                    return Ok(got);
                }
                Err(e) => return Err(IoFail::Io(e)),
            }
        }
        if buf.is_empty() {
            bufs.give(std::mem::take(buf));
        }
        // Not relaxed: on the epoll driver, the readiness our own `recv` used up is asked of
        // the kernel again rather than trusted (monoio's `readable`).
        limit.run(from.readable(false)).await?.map_err(IoFail::Io)?;
    }
}
