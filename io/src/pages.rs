//! Stored bodies in pages of their own, sent by reference.
//!
//! A cache hit written with `writev` makes the kernel copy the stored body into socket
//! buffers: at 64 KiB that copy was half of a hit's CPU (docs/benchmarks-log.md run 14). A
//! body of [`MIN`] bytes or more is therefore stored in an anonymous mapping of its own
//! ([`sys::Mapping`]), and a hit on a plain connection goes out as the head written into a
//! pipe, the body's pages put behind it by reference (`vmsplice`), and the pipe spliced into
//! the socket: the socket's send queue then holds references to the stored pages and nothing
//! is copied on the way out. It is safe because the pages are never written after the store
//! and never reused while referenced: an entry's mapping is unmapped (not freed to an
//! allocator) when the last holder of the entry drops it, and unmapped pages keep their bytes
//! for as long as the kernel still refers to them (a slow client's unread queue, a
//! retransmission).
//!
//! Each such body is one mapping, and the kernel limits mappings per process
//! (`vm.max_map_count`, 65,530 by default) for everything the process maps, so at most a
//! quarter of that limit are used for bodies: beyond it, and when a mapping cannot be made,
//! bodies stay on the heap and hits on them are written as before. The count of placed bodies
//! is one process-wide atomic, changed on a store and an eviction, never on a hit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use ringway_core::cache::{Body, Pages};

use crate::sys::{self, Mapping};

/// Bodies from this size on are placed (and sent by reference). Below it one `writev` of
/// head and body costs about what the extra pipe write, `vmsplice` and `splice` save: at
/// 8 KiB the two cost the same, at 64 KiB sending by reference took 0.4× the CPU, and
/// in between the gain is within the noise (`loadtest/zerocopy_probe.c`; `ab.sh` on
/// `/cached/40k`: 0.82–1.08×; docs/benchmarks-log.md run 36).
pub(crate) const MIN: usize = 32 * 1024;

/// Bodies placed now, in the whole process.
static PLACED: AtomicUsize = AtomicUsize::new(0);

/// A body in its mapping.
struct Placed(Mapping);

impl Pages for Placed {
    fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }

    fn footprint(&self) -> usize {
        self.0.map_len()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        PLACED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The most bodies placed at once: a quarter of the process's mapping limit.
fn cap() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65_530)
            / 4
    })
}

fn page() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(sys::page_size)
}

/// Where a shard puts a body it stores (`Shard::with_place`).
pub(crate) fn place(b: Vec<u8>) -> Body {
    if b.len() < MIN {
        return Body::heap(b);
    }
    if PLACED.fetch_add(1, Ordering::Relaxed) >= cap() {
        PLACED.fetch_sub(1, Ordering::Relaxed);
        return Body::heap(b);
    }
    match Mapping::copy_of(&b, page()) {
        Ok(m) => Body::Pages(Arc::new(Placed(m))),
        Err(e) => {
            PLACED.fetch_sub(1, Ordering::Relaxed);
            log::debug!("a stored body stays on the heap: {e}");
            Body::heap(b)
        }
    }
}

/// The mapping a body was placed in, if it was.
pub(crate) fn mapping(b: &Body) -> Option<&Mapping> {
    let p = b.pages()?;
    p.as_any().downcast_ref::<Placed>().map(|p| &p.0)
}

/// Bodies placed now (a gauge).
pub(crate) fn placed() -> usize {
    PLACED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_are_placed_in_whole_pages_and_unmapped_when_dropped() {
        let small = place(vec![1; MIN - 1]);
        assert!(small.pages().is_none() && mapping(&small).is_none());
        let before = placed();
        let body: Vec<u8> = (0..MIN + 10).map(|i| (i % 251) as u8).collect();
        let b = place(body.clone());
        let m = mapping(&b).expect("placed");
        assert_eq!(m.bytes(), &body[..]);
        assert_eq!(&b[..], &body[..]);
        assert_eq!(b.footprint() % page(), 0);
        assert!(b.footprint() >= body.len() && b.footprint() < body.len() + page());
        assert_eq!(placed(), before + 1);
        // Shared by clones (a revalidated entry), unmapped with the last.
        let c = b.clone();
        drop(b);
        assert_eq!(placed(), before + 1);
        drop(c);
        assert_eq!(placed(), before);
    }
}
