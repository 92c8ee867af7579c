//! A chunked body fed to the decoder in pieces of every size the input picks: nothing may
//! panic, the data handed out never exceeds the input, and the outcome (the data, where the
//! body ended, or the error) is the same as when the body is fed one byte at a time. Fed whole,
//! the decoder takes plain framing at once; fed by the byte, it goes through its state machine
//! for every byte: the two paths must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::http::chunked::{ChunkError, ChunkedDecoder};

#[derive(Debug, PartialEq)]
enum End {
    /// The body ended after this many input bytes.
    Done(usize),
    Error(ChunkError),
    /// The input ran out first.
    Short,
}

fn feed(body: &[u8], step: usize) -> (Vec<u8>, End) {
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut at = 0;
    for piece in body.chunks(step) {
        let mut pos = 0;
        while pos < piece.len() {
            match d.decode(&piece[pos..]) {
                Ok(s) => {
                    assert!(s.consumed <= piece.len() - pos);
                    data.extend_from_slice(&piece[pos..][s.data.clone()]);
                    pos += s.consumed;
                    if s.done {
                        return (data, End::Done(at + pos));
                    }
                    if s.consumed == 0 {
                        break;
                    }
                }
                Err(e) => return (data, End::Error(e)),
            }
        }
        at += piece.len();
    }
    (data, End::Short)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let (got, end) = feed(body, step);
    assert!(got.len() <= body.len());
    let (by_byte, end_by_byte) = feed(body, 1);
    assert_eq!(end, end_by_byte);
    assert_eq!(got, by_byte);
});
