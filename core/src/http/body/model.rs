//! io's pass-through of a chunked body (`relay.rs`, `pass_chunks`) as a pure function over a
//! byte string: the model that core's unit tests and the `transcode` fuzz target check the
//! transcoder with (io's loop is this loop with sockets). Built for tests and the `sim`
//! feature only.

use super::{BodyError, Pass, Transcoder};
use crate::http::framing::BodyKind;

/// What a modelled relay sent and left.
#[derive(Debug)]
pub struct Relayed {
    /// The bytes the next hop got.
    pub sent: Vec<u8>,
    /// How many of them went on unchanged (passed through, not stepped).
    pub raw: usize,
    /// The payload bytes the transcoder counted.
    pub total: u64,
    /// What was left after the body (the next message), or the error.
    pub left: Result<usize, BodyError>,
}

/// A chunked body relayed as io's `pass_chunks` does: the first `head` bytes are stepped (as
/// those that arrive with a response's head); then whenever the buffer is empty and the
/// decoder stands between framing elements, up to `peek()` of the next bytes are looked at
/// and what `pass_through` allows goes on after its `out`, a long chunk's data spliced after
/// its size line; the rest goes through reads of up to `read()` bytes and `step`.
pub fn passed(
    bytes: &[u8],
    head: usize,
    read: &mut dyn FnMut() -> usize,
    peek: &mut dyn FnMut() -> usize,
) -> Relayed {
    let mut t = Transcoder::new(BodyKind::Chunked, BodyKind::Chunked);
    let mut fed = head.min(bytes.len());
    let (mut buf, mut sent, mut raw) = (bytes[..fed].to_vec(), Vec::new(), 0);
    let mut passing = t.may_pass_through();
    let end = |sent, raw, t: &Transcoder, left| Relayed {
        sent,
        raw,
        total: t.total(),
        left,
    };
    loop {
        let mut out = Vec::new();
        match t.step(&buf, &mut out) {
            Ok(s) => {
                sent.extend_from_slice(&buf[s.pass.clone()]);
                sent.extend_from_slice(&out);
                buf.drain(..s.consumed);
            }
            Err(e) => return end(sent, raw, &t, Err(e)),
        }
        if t.is_done() {
            let left = buf.len() + bytes.len() - fed;
            return end(sent, raw, &t, Ok(left));
        }
        while buf.is_empty() && passing && t.pass_ready() && fed < bytes.len() {
            let next = &bytes[fed..(fed + peek().max(1)).min(bytes.len())];
            let mut out = Vec::new();
            match t.pass_through(next, &mut out) {
                None => passing = false,
                Some(Pass { skip: 0, raw: 0 }) => break,
                Some(p) => {
                    sent.extend_from_slice(&out);
                    sent.extend_from_slice(&next[p.skip..p.skip + p.raw]);
                    raw += p.raw;
                    fed += p.skip + p.raw;
                    if t.is_done() {
                        return end(sent, raw, &t, Ok(bytes.len() - fed));
                    }
                    // A long chunk's size line went on: its data is spliced, as io does.
                    if let Some(run) = t.splice_run() {
                        let k = run.min((bytes.len() - fed) as u64) as usize;
                        let mut out = Vec::new();
                        // io's relay loop steps its (empty) buffer before it splices.
                        assert!(
                            t.step(&[], &mut out).is_ok_and(|s| s.consumed == 0) && out.is_empty()
                        );
                        t.spliced(k as u64, &mut out);
                        sent.extend_from_slice(&out);
                        sent.extend_from_slice(&bytes[fed..fed + k]);
                        fed += k;
                    }
                }
            }
        }
        if fed == bytes.len() {
            let mut out = Vec::new();
            let r = t.finish_at_eof(&mut out);
            sent.extend_from_slice(&out);
            return end(sent, raw, &t, r.map(|()| 0));
        }
        let k = read().max(1).min(bytes.len() - fed).min(t.want());
        buf.extend_from_slice(&bytes[fed..fed + k]);
        fed += k;
    }
}
