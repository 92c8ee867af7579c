//! A safety net for test suites: with `RINGWAY_LOOPBACK_ONLY=1` in its environment the proxy
//! dials only loopback addresses and asks only a configured name server on loopback (names in
//! /etc/hosts and IP literals need none), so a test (or a browser's background requests
//! through a test proxy) can never reach past the machine. What
//! it refuses is logged with the marker [`REFUSED`], which the test support looks for.
//! Unset (every real deployment), it costs one load of a cached flag per new connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

/// The log marker of a refused dial or lookup.
pub const REFUSED: &str = "loopback-only: refused";

fn on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RINGWAY_LOOPBACK_ONLY").is_some_and(|v| v == "1"))
}

fn loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

/// Whether `addr` may be dialled (always, unless the guard is on).
pub(crate) fn may_dial(addr: SocketAddr) -> bool {
    if dial_ok(on(), addr) {
        return true;
    }
    log::error!("{REFUSED} to dial {addr}");
    false
}

/// Whether `server` may be asked for names: with the guard on, only a name server that was
/// configured (`resolver`, a test's own) and is on loopback; the system's may forward the
/// question anywhere.
pub(crate) fn may_query(server: SocketAddr, configured: bool) -> bool {
    if query_ok(on(), server, configured) {
        return true;
    }
    log::error!("{REFUSED} to ask the name server {server} (set forward.resolver to a local one)");
    false
}

/// Whether `host` may be resolved by the system's resolver (the ACME client's CA): with the
/// guard on, only an address or `localhost`, which need no name server.
pub(crate) fn may_resolve(host: &str) -> bool {
    if !on() || host.parse::<IpAddr>().is_ok() || host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    log::error!("{REFUSED} to resolve {host}");
    false
}

fn dial_ok(on: bool, addr: SocketAddr) -> bool {
    !on || loopback(addr.ip())
}

fn query_ok(on: bool, server: SocketAddr, configured: bool) -> bool {
    !on || (configured && loopback(server.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_when_on() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(dial_ok(true, a("127.0.0.2:80")) && dial_ok(true, a("[::1]:80")));
        assert!(dial_ok(true, a("[::ffff:127.0.0.1]:80")));
        assert!(!dial_ok(true, a("192.0.2.1:80")) && !dial_ok(true, a("[2001:db8::1]:80")));
        assert!(dial_ok(false, a("192.0.2.1:80")));
        let ns = a("127.0.0.1:5353");
        assert!(query_ok(true, ns, true) && !query_ok(true, ns, false));
        assert!(!query_ok(true, a("192.0.2.53:53"), true) && query_ok(false, ns, false));
    }
}
