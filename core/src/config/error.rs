//! Configuration errors, located in the file: file, line, key and a plain message.

use std::fmt;
use std::ops::Range;

/// A configuration error, located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line, when the error has a position.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `routes[2].upstream`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Builds errors that point into one file.
pub(crate) struct Locator<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
}

impl Locator<'_> {
    pub(crate) fn line_of(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn at(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: Some(self.line_of(span)),
            key: key.into(),
            message: msg.into(),
        }
    }

    pub(crate) fn nowhere(&self, key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: None,
            key: key.into(),
            message: msg.into(),
        }
    }
}

/// serde's wording, said the way the configuration page says it: no Rust type names, no
/// internals.
pub(crate) fn plain_message(m: &str) -> String {
    if m.starts_with("data did not match any variant of untagged enum") {
        let what = match m.rsplit(' ').next().unwrap_or("") {
            "Duration" => "a duration like \"250ms\", \"30s\", \"5m\" or \"1h\"",
            "ListenEntry" => "\"IP:port\" or { addr = \"IP:port\", … }",
            "ServerEntry" => "\"IP:port\" or { addr = \"IP:port\", weight = … }",
            "Size" => "a size like 1048576, \"64k\", \"256m\" or \"2g\"",
            "UpstreamTls" => "true, false or { server_name = …, ca = …, cert = …, key = … }",
            _ => "a value of another form",
        };
        return format!("expected {what}");
    }
    let mut out = m.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("invalid value: integer", "out of range:"),
        ("expected struct ", "expected a table "),
        ("expected a sequence", "expected a list"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}
