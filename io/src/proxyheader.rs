//! Reading a PROXY protocol header at the start of a connection, on listeners with
//! `proxy_protocol` (core's `proxyproto::parse` decides on the bytes read so far), before TLS.
//! Whatever followed the header in the same reads is the connection's own: handed to the TLS
//! handshake or to the first request.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::TcpStream;
use ringway_core::config::ProxyHeader;
use ringway_core::proxyproto::{self, Parsed};

use crate::buf::read_append;
use crate::deadline::Limit;

/// The header's client (`None`: a `LOCAL` or `UNKNOWN` header, or none on an optional
/// listener: the peer stands) and the bytes read past it.
pub(crate) type Read = (Option<SocketAddr>, Vec<u8>);

/// Reads until the header is complete, within `limit` from now.
pub(crate) async fn read(
    tcp: &mut TcpStream,
    mode: ProxyHeader,
    limit: Duration,
) -> Result<Read, String> {
    let at = limit.fixed();
    let mut buf = Vec::with_capacity(256);
    loop {
        match proxyproto::parse(&buf) {
            Parsed::Header { len, header } => {
                buf.drain(..len);
                return Ok((header.source, buf));
            }
            Parsed::Absent if mode == ProxyHeader::Optional => return Ok((None, buf)),
            Parsed::Absent => return Err("no PROXY protocol header".into()),
            Parsed::Invalid(why) => return Err(why.into()),
            Parsed::Partial => {}
        }
        // Never more than the longest header could need.
        let max = (16 + proxyproto::V2_MAX_LEN)
            .saturating_sub(buf.len())
            .max(1);
        match read_append(tcp, &mut buf, max, at).await {
            Ok(0) => return Err("closed before the PROXY protocol header ended".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the PROXY protocol header: {e:?}")),
        }
    }
}
