//! A stored body's bytes, and where they live.
//!
//! Most bodies are a heap block. A large one may live instead in memory io placed it in
//! ([`Pages`]): pages of its own that are never written again and never reused while the
//! kernel may still refer to them, so that io can hand them to a socket by reference instead
//! of copying them (a hit then costs the kernel no copy of its body). Core only reads the
//! bytes; whether and how a body is placed is io's choice, made through the shard's
//! [`Place`](super::store::Place).

use std::ops::Deref;
use std::sync::Arc;

/// Memory outside the heap that holds a body: io's.
pub trait Pages: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// The memory it takes, counted against the cache's budget (whole pages).
    fn footprint(&self) -> usize;
    /// For io to recognise its own kind of pages.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// See the module documentation.
#[derive(Clone)]
pub enum Body {
    Heap(Box<[u8]>),
    /// Shared by the entries made from one stored response (a revalidated entry keeps its
    /// predecessor's body).
    Pages(Arc<dyn Pages>),
}

impl Body {
    /// The pages that hold it, when io placed it.
    pub fn pages(&self) -> Option<&Arc<dyn Pages>> {
        match self {
            Self::Pages(p) => Some(p),
            Self::Heap(_) => None,
        }
    }

    /// The memory it takes.
    pub fn footprint(&self) -> usize {
        match self {
            Self::Heap(b) => b.len(),
            Self::Pages(p) => p.footprint(),
        }
    }

    /// On the heap (the shard's placement when io gives none).
    pub fn heap(b: Vec<u8>) -> Self {
        Self::Heap(b.into_boxed_slice())
    }
}

impl Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Heap(b) => b,
            Self::Pages(p) => p.bytes(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Heap(_) => "heap",
            Self::Pages(_) => "pages",
        };
        write!(f, "Body({kind}, {} bytes)", self.len())
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::Heap(Box::default())
    }
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Self::heap(b)
    }
}

impl From<&[u8]> for Body {
    fn from(b: &[u8]) -> Self {
        Self::Heap(b.into())
    }
}
