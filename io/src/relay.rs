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
use ringway_core::http::body::{BodyError, Stage, Transcoder};
use ringway_core::proxy::BodyFail;

use crate::buf::{write_range, IoFail};
use crate::splice::{splice, Fixed, Pipes, SpliceError};
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
    match splice(from, to, &pipe, Some(rest), &waits).await {
        Ok(_) => {
            pipes.give(pipe);
            Ok(())
        }
        Err(SpliceError::Truncated) => Err(src(RelayFail::Body(BodyError::Truncated))),
        Err(SpliceError::Source(e)) => Err(src(RelayFail::Io(e))),
        Err(SpliceError::Destination(e)) => Err(dst(e)),
    }
}

/// Relays one body from `from` (whose first bytes may already be in `buf`) to `to`, or
/// discards it when `to` is `None`, framed as core's [`Transcoder`] says; through `stage` first
/// when there is one (the body seam: a cache tee or a compressor). Returns the payload bytes
/// moved. Bytes in `buf` past the body stay there.
pub(crate) async fn relay(
    from: &mut Stream,
    buf: &mut Vec<u8>,
    body: &mut Transcoder,
    mut to: Option<&mut Stream>,
    mut stage: Option<&mut dyn Stage>,
    scratch: &mut Vec<u8>,
    t: RelayTimeouts,
) -> Result<u64, RelayError> {
    // Between requests a connection keeps only a small input buffer (proxy.rs, `idle`): a
    // body gets a full-size one, so that it moves in large reads.
    if !body.is_done() {
        crate::buf::ensure_capacity(buf, crate::buf::BUF_SIZE);
    }
    let mut tmp = Vec::new();
    loop {
        scratch.clear();
        let (consumed, pass) = match stage.as_deref_mut() {
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
            return Ok(body.total());
        }
        let n = from
            .read_append(buf, body.want(), t.read)
            .await
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
            return Ok(body.total());
        }
    }
}
