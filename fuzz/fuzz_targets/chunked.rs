//! A chunked body fed to the decoder in pieces of every size the input picks: nothing may
//! panic, and the data handed out never exceeds the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::http::chunked::ChunkedDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut d = ChunkedDecoder::new();
    let mut total = 0usize;
    for piece in body.chunks(step) {
        let mut pos = 0;
        while pos < piece.len() {
            match d.decode(&piece[pos..]) {
                Ok(s) => {
                    assert!(s.consumed <= piece.len() - pos);
                    total += s.data.len();
                    if s.done {
                        return;
                    }
                    if s.consumed == 0 {
                        break;
                    }
                    pos += s.consumed;
                }
                Err(_) => return,
            }
        }
    }
    assert!(total <= body.len());
});
