//! `[limits]`: sizes of heads and targets.

use toml::Spanned;

use super::{raw, ConfigError, Locator};
use crate::http::Limits as HeadLimits;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub request: HeadLimits,
    pub max_response_head: usize,
    /// The largest request body accepted (routes may say otherwise); `None`: any.
    pub max_request_body: Option<u64>,
    /// Request bodies of a known length up to this are read whole before an upstream
    /// connection is taken (nginx's `proxy_request_buffering`, in memory); larger ones stream.
    pub request_buffer: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request: HeadLimits::default(),
            max_response_head: 32 * 1024,
            max_request_body: None,
            request_buffer: DEFAULT_REQUEST_BUFFER,
        }
    }
}

pub(crate) fn build_limits(loc: &Locator<'_>, l: raw::Limits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let size = |key: &str, v: Option<Spanned<usize>>, def: usize, min: usize, max: usize| match v {
        None => Ok(def),
        Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(loc.at(
            v.span(),
            key,
            format!("expected a value from {min} to {max}"),
        )),
    };
    let max_head = size(
        "limits.max_request_head",
        l.max_request_head,
        d.request.max_head,
        1024,
        1 << 20,
    )?;
    Ok(Limits {
        request: HeadLimits {
            max_head,
            max_target: size(
                "limits.max_request_target",
                l.max_request_target,
                d.request.max_target.min(max_head),
                16,
                max_head,
            )?,
            max_headers: size(
                "limits.max_headers",
                l.max_headers,
                d.request.max_headers,
                1,
                10_000,
            )?,
        },
        max_response_head: size(
            "limits.max_response_head",
            l.max_response_head,
            d.max_response_head,
            1024,
            1 << 20,
        )?,
        max_request_body: body_size(loc, "limits.max_request_body", l.max_request_body.as_ref())?,
        request_buffer: match body_size(loc, "limits.request_buffer", l.request_buffer.as_ref())? {
            None => DEFAULT_REQUEST_BUFFER,
            Some(n) if n <= 16 << 20 => n,
            Some(_) => {
                return Err(loc.nowhere(
                    "limits.request_buffer",
                    "at most 16m: bodies are buffered in memory, per request",
                ))
            }
        },
    })
}

/// 32 KiB: form posts and API bodies are read whole before an upstream connection is taken, so
/// a slow client holds none; larger uploads stream (nothing is spilled to disk), and from 64 KiB
/// (`SPLICE_MIN_UPLOAD`) they are spliced: buffering one would copy it through user space
/// (1.6x the CPU of a 64 KiB upload, docs/benchmarks.md run 24).
pub const DEFAULT_REQUEST_BUFFER: u64 = 32 * 1024;

/// A body size limit: `"10m"`, a number of bytes; `None` when not given.
pub(crate) fn body_size(
    loc: &Locator<'_>,
    key: &str,
    v: Option<&Spanned<raw::Size>>,
) -> Result<Option<u64>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    super::cache::parse_size(v.get_ref())
        .map(Some)
        .ok_or_else(|| {
            loc.at(
                v.span(),
                key,
                "expected a size like 1048576, \"64k\", \"10m\" or \"1g\" (0: no body at all)",
            )
        })
}
