//! Streaming a message body from one socket to another with bounded memory.
//!
//! The body is read into the connection's one input buffer and written on before the next read,
//! so memory per connection stays at one buffer whatever the body size. The input side is
//! decoded by the framing core chose (length, chunked, until close); the output side is framed
//! anew: identity bytes are written straight from the input buffer, chunked output is re-encoded
//! so that the next hop only ever parses framing this proxy wrote.
//! Bytes past the end of the body (a pipelined request) stay in the buffer for the caller.

use std::time::Duration;

use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::net::unix::new_pipe;
use monoio::net::{Pipe, TcpStream};
use ringway_core::http::chunked::{write_chunk_header, ChunkError, ChunkedDecoder, LAST_CHUNK};
use ringway_core::http::framing::BodyKind;

use crate::buf::{write_range, IoFail};
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
    /// The source closed before the body was complete.
    Truncated,
    /// The source's chunked framing is invalid.
    Framing(ChunkError),
}

#[derive(Debug)]
pub(crate) struct RelayError {
    pub side: Side,
    pub fail: RelayFail,
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match self.side {
            Side::Source => "reading",
            Side::Destination => "writing",
        };
        match &self.fail {
            RelayFail::Io(e) => write!(f, "{side} body: {e}"),
            RelayFail::Truncated => write!(f, "{side} body: connection closed before its end"),
            RelayFail::Framing(e) => write!(f, "{side} body: {e}"),
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

/// Bodies at least this long, passed through with the same length framing, move
/// socket → pipe → socket with splice(2): the bytes never enter user space.
pub(crate) const SPLICE_THRESHOLD: u64 = 64 * 1024;

/// Most bytes moved per splice round (the default pipe capacity).
const PIPE_CHUNK: u32 = 64 * 1024;

/// A pipe used for splicing, created on first use and kept for the connection.
#[derive(Default)]
pub(crate) struct SplicePipe(Option<(Pipe, Pipe)>);

impl SplicePipe {
    fn get(&mut self) -> std::io::Result<&mut (Pipe, Pipe)> {
        if self.0.is_none() {
            self.0 = Some(new_pipe()?);
        }
        Ok(self.0.as_mut().expect("created above"))
    }

    /// Forget the pipe (it may hold bytes of a failed transfer).
    fn discard(&mut self) {
        self.0 = None;
    }
}

/// Moves exactly `len` bytes from `from` to `to` through `pipe`.
pub(crate) async fn splice_exact(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut len: u64,
    pipe: &mut SplicePipe,
    t: RelayTimeouts,
) -> Result<(), RelayError> {
    let result = async {
        let (rd, wr) = pipe.get().map_err(|e| src(RelayFail::Io(IoFail::Io(e))))?;
        while len > 0 {
            let want = len.min(u64::from(PIPE_CHUNK)) as u32;
            let n = match monoio::time::timeout(t.read, from.splice_to_pipe(wr, want)).await {
                Ok(Ok(0)) => return Err(src(RelayFail::Truncated)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(src(RelayFail::Io(IoFail::Io(e)))),
                Err(_) => return Err(src(RelayFail::Io(IoFail::Timeout))),
            };
            let mut left = n;
            while left > 0 {
                match monoio::time::timeout(t.write, to.splice_from_pipe(rd, left)).await {
                    Ok(Ok(0)) => return Err(dst(IoFail::Io(std::io::ErrorKind::WriteZero.into()))),
                    Ok(Ok(m)) => left -= m,
                    Ok(Err(e)) => return Err(dst(IoFail::Io(e))),
                    Err(_) => return Err(dst(IoFail::Timeout)),
                }
            }
            len -= u64::from(n);
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        pipe.discard();
    }
    result
}

/// Relays a `len`-byte body whose first bytes may already be in `buf`: those are written from
/// the buffer, the rest spliced. Bytes in `buf` past the body stay there.
pub(crate) async fn relay_spliced(
    from: &mut TcpStream,
    buf: &mut Vec<u8>,
    len: u64,
    to: &mut TcpStream,
    pipe: &mut SplicePipe,
    t: RelayTimeouts,
) -> Result<(), RelayError> {
    let k = len.min(buf.len() as u64) as usize;
    write_range(to, buf, 0..k, t.write).await.map_err(dst)?;
    buf.drain(..k);
    splice_exact(from, to, len - k as u64, pipe, t).await
}

enum Decode {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

/// Relays one body from `from` (whose first bytes may already be in `buf`) to `to`, or discards
/// it when `to` is `None`. `input` is the body's framing as received; `output` the framing
/// announced to the destination (`Length` only with `Length` input).
pub(crate) async fn relay(
    from: &mut Stream,
    buf: &mut Vec<u8>,
    input: BodyKind,
    mut to: Option<&mut Stream>,
    output: BodyKind,
    scratch: &mut Vec<u8>,
    t: RelayTimeouts,
) -> Result<u64, RelayError> {
    let mut dec = match input {
        BodyKind::None | BodyKind::Length(0) => return Ok(0),
        BodyKind::Length(n) => Decode::Length(n),
        BodyKind::Chunked => Decode::Chunked(ChunkedDecoder::new()),
        BodyKind::Close => Decode::Close,
    };
    let chunked_out = output == BodyKind::Chunked;
    let mut total = 0u64;
    // Between requests a connection keeps only a small input buffer (proxy.rs, `idle`): a
    // body gets a full-size one, so that it moves in large reads.
    crate::buf::ensure_capacity(buf, crate::buf::BUF_SIZE);
    loop {
        let mut done = false;
        scratch.clear();
        match &mut dec {
            Decode::Length(rem) => {
                let k = (*rem).min(buf.len() as u64) as usize;
                *rem -= k as u64;
                done = *rem == 0;
                total += k as u64;
                if chunked_out && k > 0 {
                    frame_chunk(&buf[..k], scratch);
                } else if let Some(to) = to.as_deref_mut() {
                    to.write_range(buf, 0..k, t.write).await.map_err(dst)?;
                }
                buf.drain(..k);
            }
            Decode::Close => {
                total += buf.len() as u64;
                if chunked_out && !buf.is_empty() {
                    frame_chunk(buf, scratch);
                } else if let Some(to) = to.as_deref_mut() {
                    let n = buf.len();
                    to.write_range(buf, 0..n, t.write).await.map_err(dst)?;
                }
                buf.clear();
            }
            Decode::Chunked(d) => {
                let mut pos = 0;
                loop {
                    let step = d
                        .decode(&buf[pos..])
                        .map_err(|e| src(RelayFail::Framing(e)))?;
                    let data = &buf[pos + step.data.start..pos + step.data.end];
                    total += data.len() as u64;
                    if !data.is_empty() {
                        if chunked_out {
                            frame_chunk(data, scratch);
                        } else {
                            scratch.extend_from_slice(data);
                        }
                    }
                    pos += step.consumed;
                    if step.done {
                        done = true;
                        break;
                    }
                    if pos == buf.len() {
                        break;
                    }
                }
                buf.drain(..pos);
            }
        }
        if done && chunked_out {
            scratch.extend_from_slice(LAST_CHUNK);
        }
        if let Some(to) = to.as_deref_mut() {
            if !scratch.is_empty() {
                to.write_all(scratch, t.write).await.map_err(dst)?;
            }
        }
        if done {
            return Ok(total);
        }
        let max = match dec {
            Decode::Length(rem) => rem.min(usize::MAX as u64) as usize,
            _ => usize::MAX,
        };
        let n = from
            .read_append(buf, max, t.read)
            .await
            .map_err(|e| src(RelayFail::Io(e)))?;
        if n == 0 {
            if let Decode::Close = dec {
                if chunked_out {
                    if let Some(to) = to.as_deref_mut() {
                        scratch.clear();
                        scratch.extend_from_slice(LAST_CHUNK);
                        to.write_all(scratch, t.write).await.map_err(dst)?;
                    }
                }
                return Ok(total);
            }
            return Err(src(RelayFail::Truncated));
        }
    }
}

fn frame_chunk(data: &[u8], out: &mut Vec<u8>) {
    write_chunk_header(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}
