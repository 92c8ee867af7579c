//! `[compression]` and the routes' `compress` key.

use toml::Spanned;

use super::{raw, ConfigError, Locator};
use crate::compress::{Coding, Compression, Levels, DEFAULT_LEVELS};

/// The section as validated, and whether it turns compression on for routes that do not say.
pub(crate) fn build_compression(
    loc: &Locator<'_>,
    raw: Option<raw::Compression>,
) -> Result<(Compression, bool), ConfigError> {
    let Some(r) = raw else {
        return Ok((Compression::default(), false));
    };
    let mut c = Compression::default();
    if let Some(list) = &r.codings {
        c.codings.clear();
        for (i, s) in list.iter().enumerate() {
            let key = format!("compression.codings[{i}]");
            let coding = Coding::parse(s.get_ref())
                .ok_or_else(|| loc.at(s.span(), &key, "expected \"zstd\", \"br\" or \"gzip\""))?;
            if c.codings.contains(&coding) {
                return Err(loc.at(s.span(), &key, "listed twice"));
            }
            c.codings.push(coding);
        }
        if c.codings.is_empty() {
            return Err(loc.nowhere(
                "compression.codings",
                "expected at least one coding (to turn compression off: enabled = false)",
            ));
        }
    }
    if let Some(list) = &r.types {
        c.types.clear();
        for (i, t) in list.iter().enumerate() {
            let v = t.get_ref().trim().to_ascii_lowercase();
            let ok = v.split_once('/').is_some_and(|(a, b)| {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                token(a) && (b == "*" || token(b))
            });
            if !ok {
                return Err(loc.at(
                    t.span(),
                    format!("compression.types[{i}]"),
                    "expected a media type like \"text/html\" or \"text/*\" (no parameters)",
                ));
            }
            c.types.push(v);
        }
    }
    if let Some(n) = &r.min_length {
        c.min_length = super::cache::parse_size(n.get_ref()).ok_or_else(|| {
            loc.at(
                n.span(),
                "compression.min_length",
                "expected a size like 256 or \"1k\"",
            )
        })?;
    }
    if let Some(n) = &r.max_streams {
        if *n.get_ref() == 0 {
            return Err(loc.at(
                n.span(),
                "compression.max_streams",
                "expected at least 1 (to turn compression off: enabled = false)",
            ));
        }
        c.max_streams = *n.get_ref();
    }
    let u = |v: &Option<Spanned<u32>>| v.as_ref().map(|s| (i64::from(*s.get_ref()), s.span()));
    let zstd = r
        .zstd_level
        .as_ref()
        .map(|s| (i64::from(*s.get_ref()), s.span()));
    let d = DEFAULT_LEVELS;
    c.levels = Levels {
        gzip: level(loc, "gzip_level", u(&r.gzip_level), 1, 9, d.gzip.into())? as u32,
        br: level(loc, "brotli_level", u(&r.brotli_level), 0, 11, d.br.into())? as u32,
        zstd: level(loc, "zstd_level", zstd, -7, 19, d.zstd.into())? as i32,
    };
    Ok((c, r.enabled.unwrap_or(true)))
}

fn level(
    loc: &Locator<'_>,
    name: &str,
    v: Option<(i64, std::ops::Range<usize>)>,
    lo: i64,
    hi: i64,
    default: i64,
) -> Result<i64, ConfigError> {
    match v {
        None => Ok(default),
        Some((n, _)) if (lo..=hi).contains(&n) => Ok(n),
        Some((_, span)) => Err(loc.at(
            span,
            format!("compression.{name}"),
            format!("expected a level from {lo} to {hi}"),
        )),
    }
}
