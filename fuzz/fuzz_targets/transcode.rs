//! A body relayed the way io relays it, with runs spliced wherever the transcoder allows (in
//! pieces the input picks), against the same body relayed through the buffer only: the bytes
//! the next hop gets must carry the same payload, the same bytes must be left for the next
//! message, and the same errors must come out. A gathered relay (`step_gathered`, as io
//! writes to plain sockets) must send exactly what the copying one sends. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::http::body::{model, BodyError, Piece, Transcoder, FRAMING_READ};
use ringway_core::http::framing::BodyKind;

/// Relays `bytes` (the whole input, then end of file when `eof`); `read` picks each read's
/// size, `splice` each spliced piece's (0: never splice). Returns the output, the payload
/// total, and what was left unconsumed or the error.
fn relay(
    (input, output): (BodyKind, BodyKind),
    bytes: &[u8],
    read: &mut dyn FnMut() -> usize,
    splice: &mut dyn FnMut() -> usize,
    gather: bool,
) -> (Vec<u8>, u64, Result<usize, BodyError>) {
    let mut t = Transcoder::new(input, output);
    let (mut buf, mut sent, mut fed) = (Vec::new(), Vec::new(), 0);
    let mut pieces = Vec::new();
    loop {
        let mut out = Vec::new();
        let stepped = if gather {
            t.step_gathered(&buf, &mut out, &mut pieces)
                .map(|consumed| {
                    for p in &pieces {
                        match p {
                            Piece::Input(r) => sent.extend_from_slice(&buf[r.clone()]),
                            Piece::Out(r) => sent.extend_from_slice(&out[r.clone()]),
                        }
                    }
                    consumed
                })
        } else {
            t.step(&buf, &mut out).map(|s| {
                sent.extend_from_slice(&buf[s.pass.clone()]);
                sent.extend_from_slice(&out);
                s.consumed
            })
        };
        match stepped {
            Ok(consumed) => {
                buf.drain(..consumed);
            }
            Err(e) => return (sent, t.total(), Err(e)),
        }
        if t.is_done() {
            return (sent, t.total(), Ok(buf.len() + bytes.len() - fed));
        }
        if buf.is_empty() {
            if let Some(run) = t.splice_run() {
                assert!(run > 0);
                let mut left = run;
                while left > 0 {
                    let k = (splice() as u64).min(left).min((bytes.len() - fed) as u64) as usize;
                    if k == 0 {
                        break;
                    }
                    let mut out = Vec::new();
                    t.spliced(k as u64, &mut out);
                    sent.extend_from_slice(&out);
                    sent.extend_from_slice(&bytes[fed..fed + k]);
                    fed += k;
                    if left != u64::MAX {
                        left -= k as u64;
                    }
                }
            }
        }
        if fed == bytes.len() {
            let mut out = Vec::new();
            let r = t.finish_at_eof(&mut out);
            sent.extend_from_slice(&out);
            return (sent, t.total(), r.map(|()| 0));
        }
        let k = read().max(1).min(bytes.len() - fed).min(t.want());
        buf.extend_from_slice(&bytes[fed..fed + k]);
        fed += k;
    }
}

/// A chunked body relayed as io's `splice_chunks` does: once a long chunk may be spliced, the
/// input goes into a pipe `fill()` bytes at a time, framing and data alike; each chunk's rest
/// is moved out after the header `spliced` gives, the framing after it is read back out of the
/// pipe (64 bytes at most) and stepped; when no long chunk follows, what the pipe holds goes
/// back into the buffer and the buffered relay goes on. Returns what `relay` returns.
fn piped(
    (input, output): (BodyKind, BodyKind),
    bytes: &[u8],
    read: &mut dyn FnMut() -> usize,
    fill: &mut dyn FnMut() -> usize,
) -> (Vec<u8>, u64, Result<usize, BodyError>) {
    let mut t = Transcoder::new(input, output);
    let (mut buf, mut sent, mut fed) = (Vec::<u8>::new(), Vec::new(), 0);
    let mut out = Vec::new();
    'relay: loop {
        out.clear();
        match t.step(&buf, &mut out) {
            Ok(s) => {
                sent.extend_from_slice(&buf[s.pass.clone()]);
                sent.extend_from_slice(&out);
                buf.drain(..s.consumed);
            }
            Err(e) => return (sent, t.total(), Err(e)),
        }
        if t.is_done() {
            return (sent, t.total(), Ok(buf.len() + bytes.len() - fed));
        }
        if buf.is_empty() && t.chunk_left() > 0 && t.splice_run().is_some() {
            let mut pipe: std::collections::VecDeque<u8> = Default::default();
            out.clear();
            loop {
                let run = t.chunk_left();
                t.spliced(run, &mut out);
                sent.append(&mut out);
                let mut left = run;
                loop {
                    if pipe.is_empty() {
                        let k = fill().max(1).min(bytes.len() - fed);
                        if k == 0 {
                            break 'relay;
                        }
                        pipe.extend(&bytes[fed..fed + k]);
                        fed += k;
                    }
                    if left == 0 {
                        break;
                    }
                    let n = (left.min(pipe.len() as u64)) as usize;
                    sent.extend(pipe.drain(..n));
                    left -= n as u64;
                }
                let k = pipe.len().min(FRAMING_READ);
                buf.extend(pipe.drain(..k));
                match t.step(&buf, &mut out) {
                    Ok(s) => {
                        assert!(s.pass.is_empty());
                        buf.drain(..s.consumed);
                    }
                    Err(e) => return (sent, t.total(), Err(e)),
                }
                if t.splice_run().is_none() {
                    buf.extend(pipe.drain(..));
                    sent.append(&mut out);
                    continue 'relay;
                }
            }
        }
        if fed == bytes.len() {
            break;
        }
        let k = read().max(1).min(bytes.len() - fed).min(t.want());
        buf.extend_from_slice(&bytes[fed..fed + k]);
        fed += k;
    }
    out.clear();
    let r = t.finish_at_eof(&mut out);
    sent.extend_from_slice(&out);
    (sent, t.total(), r.map(|()| 0))
}

/// A chunked body relayed as io's `pass_chunks` does (core's `body::model::passed`, which the
/// unit tests use too). Returns what `relay` returns.
fn passed(
    bytes: &[u8],
    head: usize,
    read: &mut dyn FnMut() -> usize,
    peek: &mut dyn FnMut() -> usize,
) -> (Vec<u8>, u64, Result<usize, BodyError>) {
    let r = model::passed(bytes, head, read, peek);
    (r.sent, r.total, r.left)
}

/// The payload of what was sent: decoded when it was framed as chunked.
fn payload(output: BodyKind, sent: &[u8]) -> Vec<u8> {
    if output != BodyKind::Chunked {
        return sent.to_vec();
    }
    let (mut every, mut never) = (|| 1 << 20, || 0);
    let (p, _, left) = relay(
        (BodyKind::Chunked, BodyKind::Close),
        sent,
        &mut every,
        &mut never,
        false,
    );
    assert_eq!(
        left,
        Ok(0),
        "the proxy's own chunked framing is whole and valid"
    );
    p
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((sizes, body)) = rest.split_at_checked(8) else {
        return;
    };
    let input = if mode & 1 == 0 {
        BodyKind::Chunked
    } else {
        BodyKind::Close
    };
    let output = if mode & 2 == 0 {
        BodyKind::Chunked
    } else {
        BodyKind::Close
    };
    // Long runs from short inputs: a chunk size line may announce far more than follows, so
    // repeat the body to make spliceable runs likely.
    let times = usize::from(mode >> 2).min(40) + 1;
    let times = if input == BodyKind::Close {
        times * 1000
    } else {
        times
    };
    let limit = 96 * 1024;
    let mut body: Vec<u8> = body.repeat(times.min(limit / body.len().max(1) + 1));
    body.truncate(limit);
    let i = std::cell::Cell::new(0usize);
    let pick = |scale: usize| {
        i.set(i.get() + 1);
        usize::from(sizes[i.get() % sizes.len()]) * scale + 1
    };
    let (mut whole, mut never) = (|| 1 << 20, || 0);
    let (plain, plain_total, plain_left) =
        relay((input, output), &body, &mut whole, &mut never, false);
    let (mut reads, mut splices) = (|| pick(509), || pick(131));
    let (spliced, total, left) = relay((input, output), &body, &mut reads, &mut splices, false);
    // The same reads, copied and gathered: the same bytes out.
    let (mut none, mut reads) = (|| 0, || pick(509));
    i.set(0);
    let copied = relay((input, output), &body, &mut reads, &mut none, false);
    i.set(0);
    let gathered = relay((input, output), &body, &mut reads, &mut none, true);
    assert_eq!(copied, gathered);
    assert_eq!(left, plain_left);
    if left.is_ok() {
        assert_eq!(total, plain_total);
        assert_eq!(payload(output, &spliced), payload(output, &plain));
    }
    // Framing as this proxy writes it passed on unchanged (chunked in and out).
    if input == BodyKind::Chunked && output == BodyKind::Chunked {
        let (mut reads, mut peeks) = (|| pick(509), || pick(257));
        i.set(0);
        let head = pick(37) - 1;
        let (passed, total, left) = passed(&body, head, &mut reads, &mut peeks);
        assert_eq!(left, plain_left);
        if left.is_ok() {
            assert_eq!(total, plain_total);
            assert_eq!(payload(output, &passed), payload(output, &plain));
        }
    }
    // Framing read back out of the pipe (chunked input only: io splices close-delimited
    // bodies to their end).
    if input == BodyKind::Chunked {
        let (mut reads, mut fills) = (|| pick(509), || pick(521));
        i.set(0);
        let (piped, total, left) = piped((input, output), &body, &mut reads, &mut fills);
        assert_eq!(left, plain_left);
        if left.is_ok() {
            assert_eq!(total, plain_total);
            assert_eq!(payload(output, &piped), payload(output, &plain));
        }
    }
});
