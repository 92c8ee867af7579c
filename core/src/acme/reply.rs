//! The CA's replies, read whole (requests ask for `Connection: close`), and the URLs it gives.

use std::time::Duration;

use crate::http::chunked::ChunkedDecoder;
use crate::http::framing::{response_info, BodyKind};
use crate::http::parse::{parse_response, Limits};
use crate::http::{find_header, Method};

/// Most bytes of one reply: a certificate chain is a few KiB.
pub const MAX_REPLY: usize = 1 << 20;

/// One HTTP response from the CA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    /// `Replay-Nonce`: the nonce for the next signed request.
    pub nonce: Option<String>,
    /// `Retry-After` in seconds (RFC 8555 §8.2 polling, §6.6 rate limits).
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Reply {
    /// Parses the bytes of a response read until the CA closed the connection, to a request
    /// of `method`.
    pub fn parse(bytes: &[u8], method: Method) -> Result<Self, String> {
        let end = memchr::memmem::find(bytes, b"\r\n\r\n")
            .map(|i| i + 4)
            .ok_or("the CA's response ended inside its head")?;
        let mut headers = Vec::new();
        let head = parse_response(&bytes[..end], &mut headers, &Limits::default())
            .map_err(|e| format!("the CA's response head: {e:?}"))?;
        let info = response_info(&bytes[..end], &head, &headers, method)
            .map_err(|e| format!("the CA's response framing: {e:?}"))?;
        let text = |name: &[u8]| {
            find_header(&bytes[..end], &headers, name)
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
        };
        let rest = &bytes[end..];
        let body = match info.body {
            BodyKind::None => Vec::new(),
            BodyKind::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                rest.get(..n)
                    .ok_or("the CA's response was cut short")?
                    .to_vec()
            }
            BodyKind::Close => rest.to_vec(),
            BodyKind::Chunked => dechunk(rest)?,
        };
        Ok(Self {
            status: head.status,
            location: text(b"location"),
            nonce: text(b"replay-nonce"),
            retry_after: text(b"retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs),
            body,
        })
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut d = ChunkedDecoder::new();
    let mut body = Vec::new();
    while !d.is_done() {
        if rest.is_empty() {
            return Err("the CA's chunked response was cut short".into());
        }
        let step = d
            .decode(rest)
            .map_err(|e| format!("the CA's chunked response: {e:?}"))?;
        body.extend_from_slice(&rest[step.data]);
        rest = &rest[step.consumed..];
    }
    Ok(body)
}

/// An `https` URL, split for connecting: ACME runs over HTTPS only (RFC 8555 §6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// A name or an address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The path and query, `/` at least.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let bad = || format!("{url:?} has no valid host");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains('@') || path.contains(char::is_whitespace) {
            return Err(bad());
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{url:?} has an invalid port"))?,
        };
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_string(),
        })
    }
}
