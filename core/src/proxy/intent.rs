//! What a request asks the proxy to do once it is admitted: proxy it to a server of an upstream
//! group, forward it to a destination, or open a tunnel to one. A request answered by the proxy
//! itself has none.

use std::net::{IpAddr, SocketAddr};

use crate::forward::admit::Ask;
use crate::upstream::UpstreamKey;

/// The request's purpose, with what each needs.
#[derive(Clone, Debug, Default)]
pub(super) enum Intent {
    #[default]
    None,
    /// To a server of upstream `group`, balanced by `key`.
    Proxy { group: usize, key: u64 },
    /// A forward proxy's request to a destination.
    Forward(Dest),
    /// A CONNECT tunnel to a destination.
    Connect(Dest),
}

/// A forward proxy's destination, from its name to the address being dialled.
#[derive(Clone, Debug)]
pub(super) struct Dest {
    pub(super) host: String,
    pub(super) port: u16,
    /// The request's method as sent (for the access rules).
    pub(super) method: String,
    pub(super) at: At,
}

/// How far the destination is known.
#[derive(Clone, Debug)]
pub(super) enum At {
    /// By name; an access rule may wait for its addresses.
    Named { rules_pending: bool },
    /// Dialling `addr` (from `from`); `next`: the other addresses the rules allow, tried in turn
    /// when connecting to one fails (RFC 8305 in spirit: a dead IPv6 address does not hide a
    /// live IPv4 one).
    Dialling {
        addr: SocketAddr,
        from: Option<IpAddr>,
        next: Vec<SocketAddr>,
    },
}

impl Dest {
    /// The question asked of [`crate::forward::admit`] for this destination.
    pub(super) fn ask<'a>(
        &'a self,
        client: IpAddr,
        user: Option<&'a str>,
        client_subject: Option<&'a str>,
        tunnel: bool,
    ) -> Ask<'a> {
        Ask {
            client,
            user,
            client_subject,
            method: self.method.as_bytes(),
            tunnel,
            ports: None,
            host: &self.host,
            port: self.port,
        }
    }

    pub(super) fn addr(&self) -> Option<SocketAddr> {
        match self.at {
            At::Dialling { addr, .. } => Some(addr),
            At::Named { .. } => None,
        }
    }
}

impl Intent {
    /// The destination of a forward request or tunnel.
    pub(super) fn dest(&self) -> Option<&Dest> {
        match self {
            Self::Forward(d) | Self::Connect(d) => Some(d),
            _ => None,
        }
    }

    pub(super) fn dest_mut(&mut self) -> Option<&mut Dest> {
        match self {
            Self::Forward(d) | Self::Connect(d) => Some(d),
            _ => None,
        }
    }

    /// The upstream group of a proxied request.
    pub(super) fn group(&self) -> Option<usize> {
        match self {
            Self::Proxy { group, .. } => Some(*group),
            _ => None,
        }
    }

    /// What the current attempt connects to (`server`: the group's server picked).
    pub(super) fn upstream_key(&self, server: usize) -> UpstreamKey {
        match self.dest().map(|d| &d.at) {
            Some(At::Dialling { addr, from, .. }) => UpstreamKey::Destination {
                addr: *addr,
                from: *from,
            },
            _ => UpstreamKey::Server {
                group: self.group().unwrap_or(0),
                server,
            },
        }
    }
}
