//! The normal form of a request path, on which routes (and every later path rule) match and
//! which is sent upstream.
//!
//! A path can be spelled many ways that a server reads as one: `/a/./b`, `/x/../a/b`, `//a/b`,
//! `/%61/b`. If the proxy matched rules on the spelling and the upstream resolved it, a request
//! could pass a rule meant to stop it (`/static/../admin` past a `/admin` deny). So the proxy
//! resolves the path itself, once, and both matches and forwards the result:
//!
//! 1. Percent-escapes are checked (two hex digits; UTF-8 sequences valid and shortest-form).
//!    Escapes of unreserved characters (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`) are decoded, every
//!    other escape is kept with uppercase hex digits (§6.2.2.1). An escape that decodes to NUL
//!    or another control character is refused; so are `%2F` (`/`) and `%5C` (`\`) unless the
//!    policy keeps them (then they stay encoded and never separate segments here).
//! 2. Dot segments are removed (§5.2.4); a `..` that would climb above the root is refused.
//!    Segments `.;…` and `..;…` are refused too: some servers (Tomcat, Jetty) strip the
//!    parameters and then treat them as dot segments, which would undo this step.
//! 3. Empty segments (`//`) are merged, unless the policy says otherwise (nginx's
//!    `merge_slashes`, on by default).
//!
//! A raw backslash or `#` in the path is refused: neither may appear in a request-target
//! (RFC 9112 §3.2), and some servers treat `\` as `/`. The query is passed on untouched.
//! The result is its own normal form: normalising it again changes nothing, so the upstream
//! resolves it to exactly the path the proxy matched.

use std::fmt;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EncodedSlashes {
    /// 400 (the default): an upstream that decodes them would see other segments than the proxy.
    #[default]
    Reject,
    /// Keep them encoded, as data within a segment (for APIs that put encoded slashes in IDs).
    Keep,
}

/// How paths are normalised (per configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathPolicy {
    /// Merge repeated slashes (nginx `merge_slashes`).
    pub merge_slashes: bool,
    pub encoded_slashes: EncodedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            encoded_slashes: EncodedSlashes::Reject,
        }
    }
}

/// Why a path was refused. Every case is a 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// Escapes that do not form valid, shortest-form UTF-8.
    BadUtf8,
    /// `%00`.
    Nul,
    /// An escaped control character.
    Control,
    /// `%2F` or `%5C` with [`EncodedSlashes::Reject`].
    EncodedSlash,
    /// A raw `\`.
    Backslash,
    /// A raw `#`.
    Fragment,
    /// `..` above the root.
    AboveRoot,
    /// A dot segment with parameters (`..;x`).
    DotParams,
    /// With [`EncodedSlashes::Keep`], a dot segment behind an encoded slash (`..%2Fadmin`):
    /// an upstream that decodes `%2F` would climb out of the route the path matched.
    EncodedDotSegment,
}

impl PathError {
    pub fn status(self) -> u16 {
        400
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadEscape => "invalid percent-encoding in the path",
            Self::BadUtf8 => "percent-encoded bytes in the path are not valid UTF-8",
            Self::Nul => "the path holds an encoded NUL",
            Self::Control => "the path holds an encoded control character",
            Self::EncodedSlash => "the path holds an encoded slash or backslash",
            Self::Backslash => "the path holds a backslash",
            Self::Fragment => "the request target holds a fragment",
            Self::AboveRoot => "the path climbs above the root",
            Self::DotParams => "the path holds a dot segment with parameters",
            Self::EncodedDotSegment => "the path holds a dot segment behind an encoded slash",
        })
    }
}

impl std::error::Error for PathError {}

/// Writes the normal form of `target` (a path with an optional `?query`; empty or starting with
/// `?` for an absolute-form target without a path, which means `/`) into `out`, replacing its
/// contents. Returns the length of the path part of `out`.
pub fn normalise(
    target: &[u8],
    policy: &PathPolicy,
    out: &mut Vec<u8>,
) -> Result<usize, PathError> {
    out.clear();
    let q = memchr::memchr(b'?', target).unwrap_or(target.len());
    let (path, query) = target.split_at(q);
    if path.first() != Some(&b'/') {
        out.push(b'/');
    }
    decode(path, policy.encoded_slashes, out)?;
    let len = remove_dot_segments(out, policy.merge_slashes)?;
    out.truncate(len);
    out.extend_from_slice(query);
    Ok(len)
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte escaped at `p[i..i + 3]`, which must be `%XX`.
fn escape_at(p: &[u8], i: usize) -> Result<u8, PathError> {
    match p.get(i..i + 3) {
        Some(&[b'%', h, l]) => match (hex(h), hex(l)) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(PathError::BadEscape),
        },
        _ => Err(PathError::BadEscape),
    }
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// Step 1: escapes checked, unreserved ones decoded, the rest in uppercase.
fn decode(p: &[u8], slashes: EncodedSlashes, out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < p.len() {
        let b = p[i];
        match b {
            b'%' => {
                let v = escape_at(p, i)?;
                i += 3;
                match v {
                    _ if is_unreserved(v) => out.push(v),
                    0 => return Err(PathError::Nul),
                    0x01..=0x1f | 0x7f => return Err(PathError::Control),
                    b'/' | b'\\' if slashes == EncodedSlashes::Reject => {
                        return Err(PathError::EncodedSlash)
                    }
                    0x80..=0xff => {
                        // A whole UTF-8 sequence, every byte escaped, validated as one.
                        let n = match v {
                            0xc2..=0xdf => 2,
                            0xe0..=0xef => 3,
                            0xf0..=0xf4 => 4,
                            _ => return Err(PathError::BadUtf8),
                        };
                        let mut seq = [v, 0, 0, 0];
                        for s in seq.iter_mut().take(n).skip(1) {
                            *s = escape_at(p, i).map_err(|_| PathError::BadUtf8)?;
                            i += 3;
                        }
                        if std::str::from_utf8(&seq[..n]).is_err() {
                            return Err(PathError::BadUtf8);
                        }
                        for &s in &seq[..n] {
                            push_escaped(out, s);
                        }
                    }
                    _ => push_escaped(out, v),
                }
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            _ => out.push(b),
        }
        i += 1;
    }
    Ok(())
}

/// Whether a segment that keeps encoded slashes (`%2F`, `%5C`, as step 1 wrote them) becomes
/// a dot segment where they are decoded: `..%2Fx`, `a%2F.`, `.%5C..`.
fn hides_dot_segment(seg: &[u8]) -> bool {
    if memchr::memchr(b'%', seg).is_none() {
        return false;
    }
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 3 <= seg.len() {
        if &seg[i..i + 3] == b"%2F" || &seg[i..i + 3] == b"%5C" {
            parts.push(&seg[start..i]);
            i += 3;
            start = i;
        } else {
            i += 1;
        }
    }
    if parts.is_empty() {
        return false;
    }
    parts.push(&seg[start..]);
    parts.iter().any(|p| {
        let bare = p.split(|&b| b == b';').next().unwrap_or(p);
        bare == b"." || bare == b".."
    })
}

/// Steps 2 and 3, in place over `buf` (which starts with `/`); returns the new length.
fn remove_dot_segments(buf: &mut [u8], merge_slashes: bool) -> Result<usize, PathError> {
    let len = buf.len();
    // Invariant: buf[..w] is the output so far and ends with '/'.
    let mut w = 1;
    let mut r = 1;
    while r <= len {
        let e = memchr::memchr(b'/', &buf[r..]).map_or(len, |i| r + i);
        let more = e < len;
        let seg = &buf[r..e];
        let bare = seg.split(|&b| b == b';').next().unwrap_or(seg);
        match seg {
            b"." => {}
            b".." => {
                if w == 1 {
                    return Err(PathError::AboveRoot);
                }
                w = buf[..w - 1]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .map_or(1, |i| i + 1);
            }
            _ if bare == b"." || bare == b".." => return Err(PathError::DotParams),
            b"" if merge_slashes || !more => {}
            _ if hides_dot_segment(seg) => return Err(PathError::EncodedDotSegment),
            _ => {
                buf.copy_within(r..e, w);
                w += e - r;
                if more {
                    buf[w] = b'/';
                    w += 1;
                }
            }
        }
        r = e + 1;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm_with(t: &str, policy: PathPolicy) -> Result<String, PathError> {
        let mut out = Vec::new();
        let n = normalise(t.as_bytes(), &policy, &mut out)?;
        assert!(out[..n].first() == Some(&b'/'));
        assert!(!out[..n].contains(&b'?'));
        Ok(String::from_utf8(out).unwrap())
    }

    fn norm(t: &str) -> Result<String, PathError> {
        norm_with(t, PathPolicy::default())
    }

    #[test]
    fn the_issue_tricks_resolve_to_the_admin_path() {
        for t in [
            "/admin/",
            "/static/../admin/",
            "//admin/",
            "/%61dmin/",
            "/./admin/",
            "/static/%2e%2e/admin/",
            "/static/.%2e/admin/",
            "/static/%2E./admin/",
            "/a/b/../../admin/",
            "///admin//",
        ] {
            assert_eq!(norm(t).as_deref(), Ok("/admin/"), "{t}");
        }
    }

    #[test]
    fn dot_segments_as_rfc_3986() {
        assert_eq!(norm("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(norm("/mid/content=5/../6").unwrap(), "/mid/6");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/..a/b.").unwrap(), "/..a/b.");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/.").unwrap(), "/");
    }

    #[test]
    fn query_is_kept_untouched() {
        assert_eq!(norm("/a/../b?x=/../%2F&y").unwrap(), "/b?x=/../%2F&y");
        assert_eq!(norm("").unwrap(), "/");
        assert_eq!(norm("?q=1").unwrap(), "/?q=1");
    }

    #[test]
    fn escapes() {
        assert_eq!(norm("/%7euser/%41%2d").unwrap(), "/~user/A-");
        assert_eq!(norm("/a%20b/%3f%25").unwrap(), "/a%20b/%3F%25");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/%F0%9F%98%80").unwrap(), "/%F0%9F%98%80");
        assert_eq!(norm("/%").unwrap_err(), PathError::BadEscape);
        assert_eq!(norm("/%4").unwrap_err(), PathError::BadEscape);
        assert_eq!(norm("/%zz").unwrap_err(), PathError::BadEscape);
        assert_eq!(norm("/%00").unwrap_err(), PathError::Nul);
        assert_eq!(norm("/%0a").unwrap_err(), PathError::Control);
        assert_eq!(norm("/%7F").unwrap_err(), PathError::Control);
    }

    #[test]
    fn overlong_and_invalid_utf8_escapes_are_refused() {
        for t in [
            "/%c0%ae%c0%ae/admin", // overlong '.'
            "/%c0%af",             // overlong '/'
            "/%e0%80%af",          // overlong '/', three bytes
            "/%ed%a0%80",          // surrogate
            "/%f4%90%80%80",       // above U+10FFFF
            "/%c3",                // truncated
            "/%c3x",
            "/%80",    // lone continuation byte
            "/%c3%28", // bad continuation
            "/%ff",
        ] {
            assert_eq!(norm(t).unwrap_err(), PathError::BadUtf8, "{t}");
        }
    }

    #[test]
    fn slashes_and_backslashes() {
        assert_eq!(norm("/a%2fb").unwrap_err(), PathError::EncodedSlash);
        assert_eq!(norm("/a%5Cb").unwrap_err(), PathError::EncodedSlash);
        assert_eq!(norm("/a\\..\\admin").unwrap_err(), PathError::Backslash);
        assert_eq!(norm("/a#frag").unwrap_err(), PathError::Fragment);
        let keep = PathPolicy {
            encoded_slashes: EncodedSlashes::Keep,
            ..PathPolicy::default()
        };
        assert_eq!(norm_with("/a%2fb/..", keep).unwrap(), "/");
        assert_eq!(norm_with("/ids/a%2fb", keep).unwrap(), "/ids/a%2Fb");
        // A dot segment behind a kept slash would leave the route where %2F is decoded (web
        // cache deception: /static/..%2Faccount cached as a static file).
        for t in [
            "/static/..%2Faccount",
            "/x/a%2f..%2fb",
            "/x/.%5C..",
            "/x/a%2F.;p",
        ] {
            assert_eq!(
                norm_with(t, keep).unwrap_err(),
                PathError::EncodedDotSegment,
                "{t}"
            );
        }
        assert_eq!(norm_with("/x/a%2F...", keep).unwrap(), "/x/a%2F...");
    }

    #[test]
    fn climbing_above_root_is_refused() {
        for t in ["/..", "/../a", "/a/../..", "/%2e%2e/", "/./../x", "//../x"] {
            assert_eq!(norm(t).unwrap_err(), PathError::AboveRoot, "{t}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for t in ["/static/..;/admin", "/.;x/a", "/a/..;"] {
            assert_eq!(norm(t).unwrap_err(), PathError::DotParams, "{t}");
        }
        assert_eq!(norm("/a;v=1/b").unwrap(), "/a;v=1/b");
    }

    #[test]
    fn merge_slashes_can_be_turned_off() {
        let keep = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert_eq!(norm_with("//a//b/", keep).unwrap(), "//a//b/");
        assert_eq!(norm_with("/a//../b", keep).unwrap(), "/a/b");
        assert_eq!(norm("//a//b//").unwrap(), "/a/b/");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Any bytes at all: no panic, and what comes out is a normal form of its own.
        #[test]
        fn arbitrary_bytes_never_panic(t in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            if let Ok(n) = normalise(&t, &PathPolicy::default(), &mut out) {
                let mut again = Vec::new();
                let m = normalise(&out, &PathPolicy::default(), &mut again).unwrap();
                proptest::prop_assert_eq!(&out, &again);
                proptest::prop_assert_eq!(n, m);
            }
        }

        /// The normal form is a fixed point, never climbs, and never holds a dot segment.
        #[test]
        fn normal_form_is_stable(t in "[/a.%2eE5fF;?]{0,24}") {
            for merge in [true, false] {
                let p = PathPolicy { merge_slashes: merge, ..PathPolicy::default() };
                if let Ok(once) = norm_with(&t, p) {
                    let twice = norm_with(&once, p).unwrap();
                    proptest::prop_assert_eq!(&once, &twice);
                    let path = once.split('?').next().unwrap();
                    proptest::prop_assert!(path.split('/').all(|s| s != "." && s != ".."));
                    if merge {
                        proptest::prop_assert!(!path.contains("//"));
                    }
                }
            }
        }
    }
}
