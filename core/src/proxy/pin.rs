//! Connection-bound authentication: an upstream connection that carried NTLM or Negotiate
//! credentials, or whose response asked for them, is authenticated as one user for its life
//! (the schemes authenticate the connection, not the request). Such a connection is pinned to
//! the client connection that used it, as Squid does: it never goes back to the shared pool,
//! and that client's later requests to the same destination use it again. Another client never
//! gets it, so never the first user's pages.

use crate::http::{list_items, trim_ows, Header};
use crate::upstream::UpstreamKey;

/// The pinning state of one client connection.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Pin {
    /// The destination of the connection io holds for this client alone, if any.
    held: Option<UpstreamKey>,
    /// The current attempt's connection is (or becomes) bound to this client.
    bound: bool,
}

/// Whether a credentials or challenge value names a connection-bound scheme.
fn connection_scheme(value: &[u8]) -> bool {
    let scheme = trim_ows(value)
        .split(|&b| b == b' ' || b == b'\t' || b == b',')
        .next()
        .unwrap_or(b"");
    scheme.eq_ignore_ascii_case(b"ntlm") || scheme.eq_ignore_ascii_case(b"negotiate")
}

impl Pin {
    /// Whether io holds an upstream connection for this client alone.
    pub(super) fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// A new request: it binds its connection when it carries NTLM or Negotiate credentials.
    pub(super) fn request(&mut self, buf: &[u8], headers: &[Header]) {
        self.bound = headers.iter().any(|h| {
            h.name.get(buf).eq_ignore_ascii_case(b"authorization")
                && connection_scheme(h.value.get(buf))
        });
    }

    /// A response arrived: a challenge for a connection-bound scheme binds the connection
    /// (the handshake that follows authenticates it).
    pub(super) fn response(&mut self, buf: &[u8], headers: &[Header]) {
        self.bound |= headers.iter().any(|h| {
            let n = h.name.get(buf);
            (n.eq_ignore_ascii_case(b"www-authenticate")
                || n.eq_ignore_ascii_case(b"proxy-authenticate"))
                && list_items(h.value.get(buf)).any(connection_scheme)
        });
    }

    /// The current attempt's connection is bound to this client whatever it carries (it
    /// named the client in a PROXY protocol header).
    pub(super) fn bind(&mut self) {
        self.bound = true;
    }

    /// An attempt connects to `to`: true when io holds a connection pinned to this client for
    /// it (which must be used, and stays bound).
    pub(super) fn connect(&mut self, to: UpstreamKey) -> bool {
        let pinned = self.held == Some(to);
        self.bound |= pinned;
        pinned
    }

    /// The attempt's connection to `to` is released, reusable (`reuse`) or not: true when io
    /// must keep it for this client instead of pooling it (or close it when not reusable).
    pub(super) fn release(&mut self, to: UpstreamKey, reuse: bool) -> bool {
        if !self.bound {
            return false;
        }
        self.held = reuse.then_some(to);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, parse_response, Limits};

    fn req(pin: &mut Pin, head: &str) {
        let mut hs = Vec::new();
        parse_request(head.as_bytes(), &mut hs, &Limits::default()).unwrap();
        pin.request(head.as_bytes(), &hs);
    }

    fn resp(pin: &mut Pin, head: &str) {
        let mut hs = Vec::new();
        parse_response(head.as_bytes(), &mut hs, &Limits::default()).unwrap();
        pin.response(head.as_bytes(), &hs);
    }

    #[test]
    fn ntlm_and_negotiate_bind_the_connection_for_life() {
        let to = UpstreamKey::Server {
            group: 0,
            server: 1,
        };
        let mut p = Pin::default();
        req(
            &mut p,
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic eDp5\r\n\r\n",
        );
        assert!(
            !p.connect(to) && !p.release(to, true),
            "Basic is per request"
        );
        // The challenge binds it, then the handshake's request, then every later request
        // (even without credentials) on the same connection.
        req(&mut p, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        resp(
            &mut p,
            "HTTP/1.1 401 X\r\nWWW-Authenticate: Basic realm=x, NTLM\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(p.release(to, true));
        req(
            &mut p,
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: ntlm TlRMTVNT\r\n\r\n",
        );
        assert!(p.connect(to));
        assert!(p.release(to, true));
        req(&mut p, "GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(p.connect(to), "the pinned connection is used again");
        assert!(p.release(to, true), "and never goes to the pool");
        // Another destination: a connection of its own, pooled as usual; the pin stays.
        let other = UpstreamKey::Server {
            group: 0,
            server: 2,
        };
        req(&mut p, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!p.connect(other) && !p.release(other, true));
        req(&mut p, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(p.connect(to));
        // Closed: nothing held any more.
        assert!(p.release(to, false));
        req(&mut p, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!p.connect(to));
        let mut n = Pin::default();
        req(
            &mut n,
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Negotiate YIIB\r\n\r\n",
        );
        assert!(n.release(to, true));
    }
}
