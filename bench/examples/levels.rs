//! Sizes, CPU and memory of each coding on a file: `cargo run --release -p ringway-bench
//! --example levels FILE`. The figures in docs/benchmarks.md ("Compression") come from it.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use ringway_core::compress::{encode_whole, Coding, Encoder, Levels};
use ringway_core::http::body::Stage;

struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = NOW.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(n, Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let body = std::fs::read(std::env::args().nth(1).expect("FILE")).expect("readable");
    println!(
        "{} bytes; a zstd stream's context: {} KiB",
        body.len(),
        zstd_state(&body) / 1024
    );
    for (c, lv) in [
        (Coding::Gzip, 1),
        (Coding::Gzip, 2),
        (Coding::Gzip, 6),
        (Coding::Br, 2),
        (Coding::Br, 4),
        (Coding::Zstd, 1),
        (Coding::Zstd, 3),
    ] {
        let levels = Levels {
            gzip: lv.max(1) as u32,
            br: lv.max(0) as u32,
            zstd: lv,
        };
        let n = 200;
        let t = std::time::Instant::now();
        let mut len = 0;
        for _ in 0..n {
            len = encode_whole(c, levels, &body).len();
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        // A stream of unknown length (a chunked response), fed in 16 KiB reads: the most it
        // holds between reads.
        let base = NOW.load(Relaxed);
        PEAK.store(base, Relaxed);
        let mut e = Encoder::new(c, levels, None);
        let mut out = Vec::new();
        let mut held = 0;
        for piece in body.chunks(16 * 1024) {
            e.data(piece, &mut out);
            e.flush(&mut out);
            out.clear();
            held = held.max(NOW.load(Relaxed) - base);
        }
        let peak = PEAK.load(Relaxed) - base;
        e.end(&mut out);
        drop(e);
        println!(
            "{c:?} {lv}: {len} bytes ({:.1}%), {us:.0} us, stream state {} KiB (peak {} KiB)",
            len as f64 * 100.0 / body.len() as f64,
            held / 1024,
            peak / 1024
        );
    }
}

/// zstd allocates in C, unseen by the counting allocator: its context says its own size.
fn zstd_state(body: &[u8]) -> usize {
    use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer};
    let mut c = CCtx::create();
    let _ = c.set_parameter(CParameter::CompressionLevel(1));
    let _ = c.set_parameter(CParameter::WindowLog(17));
    let mut out = Vec::with_capacity(body.len());
    for piece in body.chunks(16 * 1024) {
        let mut i = InBuffer::around(piece);
        let mut o = OutBuffer::around(&mut out);
        let _ = c.compress_stream2(
            &mut o,
            &mut i,
            zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
        );
    }
    c.sizeof()
}
