//! On-the-fly compression of responses: which coding a client accepts (RFC 9110 §12.5.3), whether
//! a response may be encoded, what that changes in its head, and the encoder a relayed body
//! passes through ([`Encoder`], a body stage) or a stored one is encoded by once
//! ([`encode_whole`]).
//!
//! The decisions follow what nginx's `gzip` does, with the RFC's corners made right: never a
//! response that already has a `Content-Encoding`, carries `Cache-Control: no-transform`, is a
//! `206`, `204` or `304`, is of a type not listed, or is shorter than `min_length`; an encoded
//! response loses its `Content-Length` and `Accept-Ranges`, has its strong `ETag` weakened
//! (the encoded bytes are not the ones the tag named), and every response that could have been
//! encoded says `Vary: Accept-Encoding`, encoded or not, so a cache downstream keeps the two
//! apart. A `HEAD` gets the fields a `GET` would get.

mod encoder;

pub use encoder::{encode_whole, Encoder};

use std::cell::Cell;
use std::rc::Rc;

use crate::http::{list_items, Header};

/// A content coding the proxy can apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    /// Its token in `Content-Encoding` and `Accept-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.token() == s)
    }

    /// Its slot in per-coding tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether `token` (from `Accept-Encoding`) names this coding; `x-gzip` is gzip
    /// (RFC 9110 §8.4.1.3).
    fn named(self, token: &[u8]) -> bool {
        token.eq_ignore_ascii_case(self.token().as_bytes())
            || (self == Coding::Gzip && token.eq_ignore_ascii_case(b"x-gzip"))
    }
}

/// Media types compressed unless `types` says otherwise: nginx's `gzip_types` as people set
/// it, with JSON, JavaScript, SVG, XML, WebAssembly and the uncompressed font formats.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "text/xml",
    "text/javascript",
    "text/csv",
    "text/markdown",
    "text/calendar",
    "text/vtt",
    "application/json",
    "application/ld+json",
    "application/manifest+json",
    "application/problem+json",
    "application/geo+json",
    "application/vnd.api+json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "application/graphql-response+json",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
];

/// How responses are compressed: `[compression]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compression {
    /// The codings offered, most preferred first (a tie in the client's q-values goes to the
    /// earlier one).
    pub codings: Vec<Coding>,
    /// Media types (lower case, no parameters) that are compressed; `type/*` matches a whole
    /// type.
    pub types: Vec<String>,
    /// Responses whose `Content-Length` is below this are sent as they are.
    pub min_length: u64,
    pub levels: Levels,
    /// Encoder streams one worker keeps open at once (each holds 0.4–1.3 MiB: see
    /// [`Encoder`]); a response beyond them goes out as it is. Stored responses are encoded
    /// whole, outside this count.
    pub max_streams: usize,
}

/// Each worker's encoder streams: how many are open, against `max_streams`, and the idle
/// encoders kept for the next response (at most [`POOLED`]).
///
/// An encoder's state is large (zlib-rs allocates about 380 KiB, zstd about 0.9 MiB): made
/// and freed per response it cost a quarter of the CPU of a 64 KiB JSON response in page
/// faults, zeroing and unmapping. Reset instead, it costs a clear of its hash table. Brotli's
/// encoder cannot be reset and is made per response.
#[derive(Debug, Default)]
pub struct Streams {
    pool: Rc<Pool>,
}

#[derive(Default)]
pub(crate) struct Pool {
    open: Cell<usize>,
    idle: std::cell::RefCell<Vec<encoder::Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("open", &self.open.get())
            .field("idle", &self.idle.borrow().len())
            .finish()
    }
}

/// Idle encoders a worker keeps (about 6 MiB of gzip state, 14 MiB of zstd at most).
pub const POOLED: usize = 16;

impl Streams {
    /// A place for one more stream, unless `max` are open.
    pub fn try_open(&self, max: usize) -> Option<StreamSlot> {
        let n = self.pool.open.get();
        (n < max).then(|| {
            self.pool.open.set(n + 1);
            StreamSlot(self.pool.clone())
        })
    }

    pub fn open(&self) -> usize {
        self.pool.open.get()
    }

    /// Idle encoders kept.
    pub fn idle(&self) -> usize {
        self.pool.idle.borrow().len()
    }
}

/// One open encoder stream, counted until dropped; its encoder goes back to the pool.
#[derive(Debug)]
pub struct StreamSlot(Rc<Pool>);

impl StreamSlot {
    pub(crate) fn pool(&self) -> &Pool {
        &self.0
    }
}

impl Pool {
    pub(crate) fn take(&self, key: encoder::Key) -> Option<encoder::Idle> {
        let mut idle = self.idle.borrow_mut();
        let i = idle.iter().position(|e| e.key == key)?;
        Some(idle.swap_remove(i))
    }

    pub(crate) fn give(&self, e: encoder::Idle) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < POOLED {
            idle.push(e);
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// Compression levels, by coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Levels {
    /// 1–9 (zlib's scale).
    pub gzip: u32,
    /// 0–11.
    pub br: u32,
    /// 1–19 (negative levels are zstd's fastest).
    pub zstd: i32,
}

/// Levels chosen for CPU per byte on the fly (docs/benchmarks.md). zlib-rs' level 1 is
/// zlib-ng's "quick" strategy (static codes: a third larger output), its level 2 is smaller than
/// zlib's level 1 (nginx's default) at about 0.6 of its CPU; brotli 4 is what CDNs use on the
/// fly; zstd 1 is both the smallest and the fastest of the three on JSON and JavaScript.
pub const DEFAULT_LEVELS: Levels = Levels {
    gzip: 2,
    br: 4,
    zstd: 1,
};

pub const DEFAULT_MIN_LENGTH: u64 = 256;
pub const DEFAULT_MAX_STREAMS: usize = 64;

impl Default for Compression {
    fn default() -> Self {
        Self {
            codings: vec![Coding::Zstd, Coding::Br, Coding::Gzip],
            types: DEFAULT_TYPES.iter().map(|s| s.to_string()).collect(),
            min_length: DEFAULT_MIN_LENGTH,
            levels: DEFAULT_LEVELS,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

impl Compression {
    /// The coding for a request whose `Accept-Encoding` lines are `values` (none: the field
    /// is absent): the one with the highest q-value above 0, ties to our preference. No field
    /// gets nothing encoded (RFC 9110 allows any coding then, but clients that decode send the
    /// field, and a bare tool would get bytes it did not ask for).
    pub fn negotiate<'a>(&self, values: impl Iterator<Item = &'a [u8]>) -> Option<Coding> {
        let mut q = [None::<u16>; 3];
        let mut star = None::<u16>;
        let mut any = false;
        for value in values {
            any = true;
            for member in list_items(value) {
                let mut parts = member.split(|&b| b == b';');
                let token = trim(parts.next().unwrap_or(b""));
                let mut weight = Some(1000);
                for p in parts {
                    let p = trim(p);
                    if p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q=") {
                        weight = qvalue(&p[2..]);
                    }
                }
                // A malformed weight: the member is ignored, as if absent.
                let Some(w) = weight else { continue };
                if token == b"*" {
                    star = Some(w);
                    continue;
                }
                for c in Coding::ALL {
                    if c.named(token) {
                        q[c.index()] = Some(w);
                    }
                }
            }
        }
        if !any {
            return None;
        }
        let mut best: Option<(Coding, u16)> = None;
        for &c in &self.codings {
            let w = q[c.index()].or(star).unwrap_or(0);
            if w > 0 && best.is_none_or(|(_, b)| w > b) {
                best = Some((c, w));
            }
        }
        best.map(|(c, _)| c)
    }

    /// Whether a response may be encoded, and how: see the module documentation. `accepted`
    /// is what [`negotiate`](Self::negotiate) chose for the request.
    pub fn decide(&self, accepted: Option<Coding>, status: u16, r: &Facts) -> Verdict {
        let bodiless = matches!(status, 100..=199 | 204 | 206 | 304);
        let fits = !bodiless
            && !r.encoded
            && !r.no_transform
            && r.content_length.is_none_or(|n| n >= self.min_length.max(1))
            && r.content_type.as_deref().is_some_and(|t| self.listed(t));
        match (fits, accepted) {
            (false, _) => Verdict::Identity,
            (true, None) => Verdict::Vary,
            (true, Some(c)) => Verdict::Encode(c),
        }
    }

    fn listed(&self, media: &str) -> bool {
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(main) => media
                .split_once('/')
                .is_some_and(|(m, _)| m.eq_ignore_ascii_case(main)),
            None => t.eq_ignore_ascii_case(media),
        })
    }
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// An RFC 9110 §12.4.2 qvalue in thousandths; `None` when malformed.
fn qvalue(s: &[u8]) -> Option<u16> {
    match s {
        [b'0'] | [b'0', b'.'] => Some(0),
        [b'1'] | [b'1', b'.'] => Some(1000),
        [b'1', b'.', rest @ ..] if rest.len() <= 3 && rest.iter().all(|&b| b == b'0') => Some(1000),
        [b'0', b'.', rest @ ..] if rest.len() <= 3 && rest.iter().all(u8::is_ascii_digit) => {
            let mut v = 0u16;
            for i in 0..3 {
                v = v * 10 + rest.get(i).map_or(0, |d| u16::from(d - b'0'));
            }
            Some(v)
        }
        _ => None,
    }
}

/// What a response head says that the decision reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The media type, lower case, without parameters.
    pub content_type: Option<String>,
    /// It has a `Content-Encoding` other than `identity`.
    pub encoded: bool,
    /// `Cache-Control: no-transform`.
    pub no_transform: bool,
    pub content_length: Option<u64>,
}

impl Facts {
    /// Reads the fields of a response head as parsed.
    pub fn of_head(buf: &[u8], headers: &[Header]) -> Self {
        let mut f = Self::default();
        for h in headers {
            f.field(h.name.get(buf), h.value.get(buf));
        }
        f
    }

    /// Reads the field lines of a stored head (`Name: value\r\n` each, after the status line).
    pub fn of_stored(head: &[u8]) -> Self {
        let mut f = Self::default();
        for line in head.split(|&b| b == b'\n').skip(1) {
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                f.field(&line[..colon], trim(&line[colon + 1..]));
            }
        }
        f
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"content-type") {
            let media = value.split(|&b| b == b';').next().unwrap_or(b"");
            self.content_type = std::str::from_utf8(trim(media))
                .ok()
                .map(str::to_ascii_lowercase);
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            self.encoded |= list_items(value).any(|c| !c.eq_ignore_ascii_case(b"identity"));
        } else if name.eq_ignore_ascii_case(b"cache-control") {
            self.no_transform |= list_items(value).any(|d| d.eq_ignore_ascii_case(b"no-transform"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            self.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
    }
}

/// What becomes of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Sent as it is: it cannot be encoded.
    Identity,
    /// It could have been, the client accepts no coding offered: sent as it is, with `Vary`.
    Vary,
    /// Encoded with this coding.
    Encode(Coding),
}

impl Verdict {
    pub fn coding(self) -> Option<Coding> {
        match self {
            Verdict::Encode(c) => Some(c),
            _ => None,
        }
    }

    /// The edit of the response head, when there is one.
    pub fn head_edit(self) -> Option<HeadEdit> {
        HeadEdit::new(self, false)
    }
}

/// What compression, and anything else that rewrites the body on the way (`body_replace`),
/// changes in a response head, field by field as the head is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadEdit {
    coding: Option<Coding>,
    /// `Vary: Accept-Encoding`: the response could have been encoded.
    vary: bool,
    /// The body is not the one the server described: its length, ranges and strong
    /// validator no longer hold.
    rewritten: bool,
}

impl HeadEdit {
    /// For a response compression decided `v` on, whose body is `replaced` too; none when the
    /// head stays as it is.
    pub fn new(v: Verdict, replaced: bool) -> Option<Self> {
        let coding = v.coding();
        let e = Self {
            coding,
            vary: v != Verdict::Identity,
            rewritten: replaced || coding.is_some(),
        };
        (e.vary || e.rewritten).then_some(e)
    }

    /// Writes the field `name: value` as it goes out, or drops it; true when it was handled
    /// here. `vary` records that a `Vary` field was seen.
    pub fn field(&self, name: &[u8], value: &[u8], vary: &mut bool, out: &mut Vec<u8>) -> bool {
        if self.vary && name.eq_ignore_ascii_case(b"vary") {
            let listed =
                list_items(value).any(|v| v == b"*" || v.eq_ignore_ascii_case(b"accept-encoding"));
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            if !listed && !*vary {
                if !value.is_empty() {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(b"Accept-Encoding");
            }
            out.extend_from_slice(b"\r\n");
            *vary = true;
            return true;
        }
        if !self.rewritten {
            return false;
        }
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"accept-ranges")
        {
            return true;
        }
        if name.eq_ignore_ascii_case(b"etag") && value.first() == Some(&b'"') {
            out.extend_from_slice(name);
            out.extend_from_slice(b": W/");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
            return true;
        }
        false
    }

    /// The fields added after the others: `Vary` when none was seen, `Content-Encoding`.
    pub fn finish(&self, vary: bool, out: &mut Vec<u8>) {
        if self.vary && !vary {
            out.extend_from_slice(b"Vary: Accept-Encoding\r\n");
        }
        if let Some(c) = self.coding {
            out.extend_from_slice(b"Content-Encoding: ");
            out.extend_from_slice(c.token().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn coding(&self) -> Option<Coding> {
        self.coding
    }
}

#[cfg(test)]
mod tests;
