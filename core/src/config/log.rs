//! `[access_log]`: where lines go, how they look, and how they are buffered.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::{opt_duration, raw, ConfigError, Locator};
use crate::accesslog::Format;

/// The access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLog {
    pub target: LogTarget,
    pub format: Format,
    /// Bytes a worker gathers before it hands them to the writer.
    pub buffer: usize,
    /// The longest a line waits in a worker's buffer.
    pub flush: Duration,
}

/// Where lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Appended to a file (created if missing), reopened on SIGUSR1 / `ringway reopen`.
    File(PathBuf),
    /// Standard output (`-`).
    Stdout,
    /// A syslog socket (`syslog`: `/dev/log`; `syslog:/path`), one datagram per line, RFC 3164
    /// framing, facility local7.
    Syslog(PathBuf),
}

impl LogTarget {
    /// `-`, `syslog`, `syslog:/path` or a file path (`base`: the config file's directory, for
    /// a relative path).
    pub fn parse(s: &str, base: impl Fn(&str) -> PathBuf) -> Option<Self> {
        Some(match s {
            "" => return None,
            "-" => Self::Stdout,
            "syslog" => Self::Syslog("/dev/log".into()),
            _ => match s.strip_prefix("syslog:") {
                Some(p) if p.starts_with('/') => Self::Syslog(p.into()),
                Some(_) => return None,
                None => Self::File(base(s)),
            },
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Stdout => "standard output".into(),
            Self::Syslog(p) => format!("syslog at {}", p.display()),
        }
    }
}

/// Defaults: 64 KiB per worker, flushed at least every 100 ms.
pub const DEFAULT_LOG_BUFFER: usize = 64 * 1024;
pub const DEFAULT_LOG_FLUSH: Duration = Duration::from_millis(100);

impl AccessLog {
    pub fn new(target: LogTarget, format: Format) -> Self {
        Self {
            target,
            format,
            buffer: DEFAULT_LOG_BUFFER,
            flush: DEFAULT_LOG_FLUSH,
        }
    }
}

pub(crate) fn build_access_log(
    loc: &Locator<'_>,
    raw: Option<raw::AccessLog>,
) -> Result<Option<AccessLog>, ConfigError> {
    let Some(r) = raw else { return Ok(None) };
    let target = LogTarget::parse(r.path.get_ref(), |p| loc.path(p)).ok_or_else(|| {
        loc.at(
            r.path.span(),
            "access_log.path",
            "expected a file path, \"-\" (standard output), \"syslog\" or \"syslog:/path/to/socket\"",
        )
    })?;
    let format = match &r.format {
        None => Format::combined(),
        Some(f) => {
            Format::parse(f.get_ref()).map_err(|m| loc.at(f.span(), "access_log.format", m))?
        }
    };
    let buffer = match &r.buffer {
        None => DEFAULT_LOG_BUFFER,
        Some(b) => super::cache::parse_size(b.get_ref())
            .filter(|n| (4096..=16 << 20).contains(n))
            .ok_or_else(|| {
                loc.at(
                    b.span(),
                    "access_log.buffer",
                    "expected a size from 4k to 16m, like \"64k\"",
                )
            })? as usize,
    };
    let flush = opt_duration(loc, "access_log.flush", r.flush, DEFAULT_LOG_FLUSH)?;
    if flush > Duration::from_secs(60) {
        return Err(loc.nowhere(
            "access_log.flush",
            "at most 60s: lines would wait longer than anyone watching the log expects",
        ));
    }
    Ok(Some(AccessLog {
        target,
        format,
        buffer,
        flush,
    }))
}

/// `access_log = false` on a listener or route.
pub(crate) fn flag(v: Option<Spanned<bool>>) -> bool {
    v.map(|v| *v.get_ref()) != Some(false)
}
