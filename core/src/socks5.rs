//! The SOCKS5 server (RFC 1928, with RFC 1929 username/password), sans IO: the wire format, and
//! one connection's handshake as a state machine that asks io to check a password, resolve a
//! name, connect and tunnel, and writes the replies. It shares the forward proxy's users,
//! failure limits, admission rules (`forward::admit`), private-destination default and
//! per-user outgoing addresses.
//!
//! io's loop: `poll` and do what it says (write `out()` first whenever it holds bytes), handing
//! results back with the matching `handle_*`. Bytes the client sends ahead (a request before the
//! method reply, data before the CONNECT reply) are kept in order: the handshake consumes only
//! its own messages, and what follows the request goes up the tunnel first.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::forward::admit::{admit, admit_addresses, Ask, Denial, Settings, Verdict};
use crate::forward::auth::{AuthCache, AuthStep, Secret};

/// RFC 1928 §6 reply codes.
pub mod reply {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xff;

/// What a complete message could not be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Not SOCKS version 5 (or, for RFC 1929, subnegotiation version 1): closed, no reply.
    Version,
    /// A field the RFC forbids (no methods, an empty name or password, an empty domain): a
    /// general failure.
    Malformed,
    /// An address type other than IPv4, domain or IPv6.
    AddressType,
}

/// A decoded message, or why not (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse<T> {
    /// More bytes are needed.
    Incomplete,
    /// The message and its length.
    Done(T, usize),
    Bad(Bad),
}

/// The methods a greeting offers that this server knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offered {
    pub no_auth: bool,
    pub user_pass: bool,
}

/// `VER NMETHODS METHODS…`.
pub fn greeting(b: &[u8]) -> Parse<Offered> {
    match b {
        [] => Parse::Incomplete,
        [v, ..] if *v != 5 => Parse::Bad(Bad::Version),
        [_] => Parse::Incomplete,
        [_, 0, ..] => Parse::Bad(Bad::Malformed),
        [_, n, rest @ ..] if rest.len() < usize::from(*n) => Parse::Incomplete,
        [_, n, rest @ ..] => {
            let methods = &rest[..usize::from(*n)];
            let o = Offered {
                no_auth: methods.contains(&NO_AUTH),
                user_pass: methods.contains(&USER_PASS),
            };
            Parse::Done(o, 2 + usize::from(*n))
        }
    }
}

/// RFC 1929 `VER ULEN UNAME PLEN PASSWD`: the user (as sent) and the password.
pub fn credentials(b: &[u8]) -> Parse<(Vec<u8>, Vec<u8>)> {
    let Some(&v) = b.first() else {
        return Parse::Incomplete;
    };
    if v != 1 {
        return Parse::Bad(Bad::Version);
    }
    let Some(&ulen) = b.get(1) else {
        return Parse::Incomplete;
    };
    let ulen = usize::from(ulen);
    let Some(&plen) = b.get(2 + ulen) else {
        return Parse::Incomplete;
    };
    let plen = usize::from(plen);
    let end = 3 + ulen + plen;
    if b.len() < end {
        return Parse::Incomplete;
    }
    if ulen == 0 || plen == 0 {
        return Parse::Bad(Bad::Malformed);
    }
    Parse::Done((b[2..2 + ulen].to_vec(), b[3 + ulen..end].to_vec()), end)
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Addr(SocketAddr),
    /// A name the proxy resolves (the client leaks no lookup).
    Name(String, u16),
}

impl Dest {
    /// The host as admission reads it (a name, or an IP literal without brackets).
    pub fn host(&self) -> String {
        match self {
            Dest::Addr(a) => a.ip().to_string(),
            Dest::Name(n, _) => n.clone(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Dest::Addr(a) => a.port(),
            Dest::Name(_, p) => *p,
        }
    }
}

/// `VER CMD RSV ATYP DST.ADDR DST.PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: u8,
    pub dest: Dest,
}

pub const CONNECT: u8 = 0x01;
pub const BIND: u8 = 0x02;
pub const UDP_ASSOCIATE: u8 = 0x03;

pub fn request(b: &[u8]) -> Parse<Request> {
    if b.len() < 4 {
        return match b.first() {
            Some(&v) if v != 5 => Parse::Bad(Bad::Version),
            _ => Parse::Incomplete,
        };
    }
    if b[0] != 5 {
        return Parse::Bad(Bad::Version);
    }
    let command = b[1];
    let (addr_len, start) = match b[3] {
        0x01 => (4, 4),
        0x04 => (16, 4),
        0x03 => match b.get(4) {
            None => return Parse::Incomplete,
            Some(0) => return Parse::Bad(Bad::Malformed),
            Some(&n) => (usize::from(n), 5),
        },
        _ => return Parse::Bad(Bad::AddressType),
    };
    let end = start + addr_len + 2;
    if b.len() < end {
        return Parse::Incomplete;
    }
    let a = &b[start..start + addr_len];
    let port = u16::from_be_bytes([b[end - 2], b[end - 1]]);
    let dest = match b[3] {
        0x01 => Dest::Addr(SocketAddr::new(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(),
            port,
        )),
        0x04 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            Dest::Addr(SocketAddr::new(Ipv6Addr::from(o).into(), port))
        }
        _ => match std::str::from_utf8(a) {
            // A name in brackets or an IP literal sent as a name is taken as an address.
            Ok(s) => match s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
                Ok(ip) => Dest::Addr(SocketAddr::new(ip, port)),
                Err(_) => Dest::Name(s.to_ascii_lowercase(), port),
            },
            Err(_) => Dest::Name(String::new(), port),
        },
    };
    Parse::Done(Request { command, dest }, end)
}

/// Appends a reply with `code` and the bound address (`0.0.0.0:0` when there is none).
pub fn write_reply(code: u8, bound: Option<SocketAddr>, out: &mut Vec<u8>) {
    out.extend_from_slice(&[5, code, 0]);
    match bound.map(|a| (a.ip(), a.port())) {
        Some((IpAddr::V6(v6), port)) => {
            out.push(0x04);
            out.extend_from_slice(&v6.octets());
            out.extend_from_slice(&port.to_be_bytes());
        }
        Some((IpAddr::V4(v4), port)) => {
            out.push(0x01);
            out.extend_from_slice(&v4.octets());
            out.extend_from_slice(&port.to_be_bytes());
        }
        None => out.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0]),
    }
}

/// The reply for a connection attempt that failed with `kind` (`timeout`: the connect
/// deadline passed).
pub fn connect_failure(kind: std::io::ErrorKind, timeout: bool) -> u8 {
    use std::io::ErrorKind as K;
    match kind {
        _ if timeout => reply::TTL_EXPIRED,
        K::ConnectionRefused => reply::CONNECTION_REFUSED,
        K::NetworkUnreachable => reply::NETWORK_UNREACHABLE,
        K::HostUnreachable => reply::HOST_UNREACHABLE,
        K::TimedOut => reply::TTL_EXPIRED,
        K::PermissionDenied => reply::NOT_ALLOWED,
        _ => reply::GENERAL_FAILURE,
    }
}

/// A valid host name to resolve: letters, digits, `-`, `_` and dots, 1 to 253 bytes.
fn resolvable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
        && !name.contains("..")
}

/// What io does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write `out()` if it holds bytes; then hand buffered input to `handle_input`, reading
    /// more first when `read_first` (within the handshake deadline).
    Read { read_first: bool },
    /// Check `password` against `user`'s entry (off the worker), then `handle_verified`.
    Verify { user: String, password: Secret },
    /// Resolve `host` (through the forward proxy's resolver), then `handle_resolved`.
    Resolve { host: String, port: u16 },
    /// Connect to the first of `addrs` that answers (from `from` when set), within the
    /// connect timeout, then `handle_connected` with the connection's local address or why
    /// the last attempt failed.
    Connect {
        addrs: Vec<SocketAddr>,
        from: Option<IpAddr>,
    },
    /// Write `out()` (the success reply), then move bytes both ways until both sides close or
    /// nothing moves for `idle`; input already buffered goes up first.
    Tunnel { idle: Duration },
    /// UDP ASSOCIATE: bind a UDP socket on the listener's address (the client said it will
    /// send from `expect`, when it knew), then `handle_associated`.
    Associate { expect: Option<SocketAddr> },
    /// Write `out()` (the success reply), then relay datagrams between the client and the
    /// destinations it names (each checked with `admit_datagram`) until the control
    /// connection closes or nothing moves for `idle`.
    Relay { idle: Duration },
    /// Write `out()` (a failure reply, when there is one), then close.
    Close,
}

/// What becomes of one datagram from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// Send it to this address.
    Send(SocketAddr),
    /// Resolve the name, then ask `admit_resolved`.
    Resolve { rules_pending: bool },
    /// Dropped (UDP has no reply for a refusal).
    Drop,
}

/// The datagram header (RFC 1928 §7): `RSV RSV FRAG ATYP DST.ADDR DST.PORT`, then the data.
/// Fragments (`FRAG` ≠ 0) are not reassembled: `None`, as for a malformed header.
pub fn datagram(b: &[u8]) -> Option<(Dest, &[u8])> {
    if b.len() < 4 || b[2] != 0 {
        return None;
    }
    // The same address encoding as a request's, after a fake `VER CMD`.
    let mut probe = Vec::with_capacity(4 + 256 + 2);
    probe.extend_from_slice(&[5, CONNECT, 0]);
    probe.extend_from_slice(&b[3..b.len().min(3 + 1 + 1 + 255 + 2)]);
    match request(&probe) {
        Parse::Done(r, n) => Some((r.dest, &b[n..])),
        _ => None,
    }
}

/// Appends the header of a datagram that came from `from`.
pub fn datagram_header(from: SocketAddr, out: &mut Vec<u8>) {
    let mut r = Vec::with_capacity(22);
    write_reply(0, Some(from), &mut r);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&r[3..]);
}

#[derive(Debug)]
enum State {
    Greeting,
    Credentials,
    Verifying,
    Request,
    Resolving,
    Connecting,
    Tunnel,
    /// UDP ASSOCIATE asked: the socket is to be bound.
    Associating(Option<SocketAddr>),
    Relaying,
    Closed,
}

/// Why a session ended without a tunnel, for the log and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The handshake broke the protocol.
    Protocol(Bad),
    /// No method both sides accept.
    NoMethod,
    /// Wrong credentials, or too many failures.
    Auth,
    /// A command other than CONNECT.
    Command(u8),
    Denied(Denial),
    /// The destination could not be reached (the reply code).
    Unreachable(u8),
}

/// One client connection's handshake.
#[derive(Debug)]
pub struct Session {
    state: State,
    client: IpAddr,
    /// The authenticated user, once there is one.
    user: Option<String>,
    /// The destination and whether rules wait for its addresses.
    ask: Option<(Dest, bool)>,
    pending: Option<(String, Vec<u8>)>,
    out: Vec<u8>,
    failure: Option<Failure>,
    /// What is buffered holds no complete message: read before handing input over.
    waiting: bool,
    /// A UDP association was opened (for the log).
    associated: bool,
}

impl Failure {
    /// The HTTP status the access log and metrics count it as (the SOCKS reply code is in
    /// the error text): 400 a broken handshake, 407 authentication, 501 an unsupported command,
    /// 403 a rule, 502 an unreachable destination, 504 a connect timeout.
    pub fn status(&self) -> u16 {
        match self {
            Failure::Protocol(_) | Failure::NoMethod => 400,
            Failure::Auth => 407,
            Failure::Command(_) => 501,
            Failure::Denied(d) => d.status(),
            Failure::Unreachable(reply::TTL_EXPIRED) => 504,
            Failure::Unreachable(_) => 502,
        }
    }
}

/// What the session reads from the configuration and the worker.
pub struct Env<'a> {
    pub cfg: &'a crate::config::Config,
    pub auth: Option<&'a RefCell<AuthCache>>,
    pub now: Instant,
    /// Whole seconds of the wall clock (the failure windows).
    pub secs: u64,
}

impl Session {
    pub fn new(client: IpAddr) -> Self {
        Self {
            state: State::Greeting,
            client,
            user: None,
            ask: None,
            pending: None,
            out: Vec::new(),
            failure: None,
            waiting: true,
            associated: false,
        }
    }

    /// Bytes to write to the client before the next step.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Where the client asked to go.
    pub fn dest(&self) -> Option<&Dest> {
        self.ask.as_ref().map(|(d, _)| d)
    }

    /// Why the session ended without a tunnel.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The session as the access log and metrics see it, a `CONNECT`: from `started` to
    /// `ended`, with the bytes moved up (client to destination) and down; none when the client
    /// sent no request (closed during the greeting, or before).
    pub fn end_record(
        &self,
        (started, ended): (Instant, Instant),
        (up, down): (u64, u64),
    ) -> Option<crate::proxy::EndRecord> {
        let dest = self.ask.as_ref().map(|(d, _)| d);
        if dest.is_none() && !self.associated && !matches!(self.failure, Some(Failure::Auth)) {
            return None;
        }
        let mut r = crate::proxy::EndRecord {
            started: Some(started),
            ended: Some(ended),
            method: Some(crate::http::Method::Connect),
            user: self.user.clone(),
            status: self.failure.as_ref().map_or(200, Failure::status),
            request_body: up,
            response_body: down,
            ..Default::default()
        };
        if let Some(d) = dest {
            let text = match d {
                Dest::Addr(a) => a.to_string(),
                Dest::Name(n, p) => format!("{n}:{p}"),
            };
            r.text.put(crate::proxy::Text::Dest, text.as_bytes());
            r.text.put(
                crate::proxy::Text::Line,
                format!("CONNECT {text} SOCKS5").as_bytes(),
            );
        }
        if self.associated {
            r.text
                .put(crate::proxy::Text::Line, b"UDP ASSOCIATE SOCKS5");
        }
        if let Some(Failure::Denied(d)) = &self.failure {
            r.denied = Some(d.kind());
        }
        Some(r)
    }

    pub fn poll(&mut self) -> Action {
        match &self.state {
            State::Greeting | State::Credentials | State::Request => Action::Read {
                read_first: self.waiting,
            },
            State::Verifying => match &self.pending {
                Some((user, password)) => Action::Verify {
                    user: user.clone(),
                    password: Secret(password.clone()),
                },
                None => self.fail(Failure::Auth, None),
            },
            State::Resolving => match &self.ask {
                Some((d, _)) => Action::Resolve {
                    host: d.host(),
                    port: d.port(),
                },
                None => Action::Close,
            },
            State::Associating(expect) => Action::Associate { expect: *expect },
            State::Connecting | State::Closed | State::Tunnel | State::Relaying => Action::Close,
        }
    }

    fn fail(&mut self, why: Failure, code: Option<u8>) -> Action {
        if let Some(code) = code {
            write_reply(code, None, &mut self.out);
        }
        self.failure = Some(why);
        self.state = State::Closed;
        Action::Close
    }

    /// Hands buffered client input over; returns the bytes consumed (the rest stays buffered:
    /// the next message, or tunnel data). The next `poll` says what follows.
    pub fn handle_input(&mut self, input: &[u8], env: &Env<'_>) -> usize {
        let mut used = 0;
        self.waiting = false;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Greeting => match greeting(rest) {
                    Parse::Incomplete => {
                        self.waiting = true;
                        return used;
                    }
                    Parse::Bad(b) => {
                        // A greeting of another version gets no reply, a malformed one the
                        // refusal of every method.
                        if b == Bad::Malformed {
                            self.out.extend_from_slice(&[5, NO_ACCEPTABLE]);
                        }
                        self.fail(Failure::Protocol(b), None);
                        return used;
                    }
                    Parse::Done(o, n) => {
                        used += n;
                        let users = env.cfg.forward.users.is_some();
                        let method = match (users, o) {
                            (
                                true,
                                Offered {
                                    user_pass: true, ..
                                },
                            ) => USER_PASS,
                            (false, Offered { no_auth: true, .. }) => NO_AUTH,
                            _ => NO_ACCEPTABLE,
                        };
                        self.out.extend_from_slice(&[5, method]);
                        self.state = match method {
                            USER_PASS => State::Credentials,
                            NO_AUTH => State::Request,
                            _ => {
                                self.fail(Failure::NoMethod, None);
                                return used;
                            }
                        };
                    }
                },
                State::Credentials => match credentials(rest) {
                    Parse::Incomplete => {
                        self.waiting = true;
                        return used;
                    }
                    Parse::Bad(b) => {
                        self.out.extend_from_slice(&[1, 1]);
                        self.fail(Failure::Protocol(b), None);
                        return used;
                    }
                    Parse::Done((user, password), n) => {
                        used += n;
                        let Ok(user) = String::from_utf8(user) else {
                            self.out.extend_from_slice(&[1, 1]);
                            self.fail(Failure::Auth, None);
                            return used;
                        };
                        let step = match env.auth {
                            Some(c) => c.borrow_mut().lookup(
                                &user,
                                &password,
                                self.client,
                                env.now,
                                env.secs,
                            ),
                            None => AuthStep::Verify,
                        };
                        match step {
                            AuthStep::User(u) => {
                                self.out.extend_from_slice(&[1, 0]);
                                self.user = Some(u);
                                self.state = State::Request;
                            }
                            AuthStep::Verify => {
                                self.pending = Some((user, password));
                                self.state = State::Verifying;
                                return used;
                            }
                            AuthStep::Limited => {
                                self.out.extend_from_slice(&[1, 1]);
                                self.fail(Failure::Auth, None);
                                return used;
                            }
                        }
                    }
                },
                State::Request => {
                    match request(rest) {
                        Parse::Incomplete => {
                            self.waiting = true;
                            return used;
                        }
                        Parse::Bad(Bad::AddressType) => {
                            self.fail(
                                Failure::Protocol(Bad::AddressType),
                                Some(reply::ADDRESS_TYPE_NOT_SUPPORTED),
                            );
                        }
                        Parse::Bad(b) => {
                            let code = (b == Bad::Malformed).then_some(reply::GENERAL_FAILURE);
                            self.fail(Failure::Protocol(b), code);
                        }
                        Parse::Done(r, n) => {
                            used += n;
                            self.request(r, env);
                        }
                    }
                    return used;
                }
                _ => return used,
            }
        }
    }

    fn request(&mut self, r: Request, env: &Env<'_>) {
        if r.command == UDP_ASSOCIATE {
            // The address the client will send from, when it says (zeros: it does not know).
            let expect = match r.dest {
                Dest::Addr(a) if !a.ip().is_unspecified() || a.port() != 0 => Some(a),
                _ => None,
            };
            self.state = State::Associating(expect);
            return;
        }
        if r.command != CONNECT {
            self.fail(
                Failure::Command(r.command),
                Some(reply::COMMAND_NOT_SUPPORTED),
            );
            return;
        }
        if let Dest::Name(n, _) = &r.dest {
            if !resolvable(n) {
                self.ask = Some((r.dest.clone(), false));
                self.fail(
                    Failure::Unreachable(reply::HOST_UNREACHABLE),
                    Some(reply::HOST_UNREACHABLE),
                );
                return;
            }
        }
        let host = r.dest.host();
        let ask = self.ask_for(b"CONNECT", &host, r.dest.port(), env);
        let verdict = admit(settings(env.cfg), &ask);
        match verdict {
            Verdict::Deny(d) => {
                let code = d.socks5_reply();
                self.ask = Some((r.dest, false));
                self.fail(Failure::Denied(d), Some(code));
            }
            Verdict::Resolve { rules_pending } => {
                self.ask = Some((r.dest, rules_pending));
                self.state = State::Resolving;
            }
        }
    }

    /// The password check `Verify` asked for ended (`None`: it could not be checked now).
    pub fn handle_verified(&mut self, ok: Option<bool>, env: &Env<'_>) {
        let Some((user, password)) = self.pending.take() else {
            return;
        };
        if let (Some(ok), Some(c)) = (ok, env.auth) {
            c.borrow_mut()
                .verified(&user, &password, ok, self.client, env.now, env.secs);
        }
        if ok == Some(true) {
            self.out.extend_from_slice(&[1, 0]);
            self.user = Some(user);
            self.state = State::Request;
        } else {
            self.out.extend_from_slice(&[1, 1]);
            self.fail(Failure::Auth, None);
        }
    }

    /// The addresses of the destination (or why there are none): checked, then connected to.
    pub fn handle_resolved(&mut self, r: Result<Vec<SocketAddr>, String>, env: &Env<'_>) -> Action {
        let Some((dest, pending)) = self.ask.clone() else {
            return Action::Close;
        };
        let addrs = r.unwrap_or_default();
        let host = dest.host();
        let ask = self.ask_for(b"CONNECT", &host, dest.port(), env);
        match admit_addresses(settings(env.cfg), &ask, pending, addrs) {
            Err(d) => {
                let code = d.socks5_reply();
                self.fail(Failure::Denied(d), Some(code))
            }
            Ok(addrs) => {
                let from = env
                    .cfg
                    .forward
                    .outgoing_for(self.user.as_deref(), addrs[0].ip());
                self.state = State::Connecting;
                Action::Connect { addrs, from }
            }
        }
    }

    /// The connection is open (`Ok`: its local address, the reply's bound address) or failed
    /// (`Err`: the reply code, see [`connect_failure`]).
    pub fn handle_connected(&mut self, r: Result<SocketAddr, u8>, env: &Env<'_>) -> Action {
        match r {
            Ok(bound) => {
                write_reply(reply::SUCCEEDED, Some(bound), &mut self.out);
                self.state = State::Tunnel;
                Action::Tunnel {
                    idle: env.cfg.forward.tunnel_idle,
                }
            }
            Err(code) => self.fail(Failure::Unreachable(code), Some(code)),
        }
    }
}

impl Session {
    /// The UDP socket is bound at `bound` (`Err`: it could not be).
    pub fn handle_associated(&mut self, r: Result<SocketAddr, ()>, env: &Env<'_>) -> Action {
        match r {
            Ok(bound) => {
                write_reply(reply::SUCCEEDED, Some(bound), &mut self.out);
                self.state = State::Relaying;
                self.associated = true;
                Action::Relay {
                    idle: env.cfg.forward.tunnel_idle,
                }
            }
            Err(()) => self.fail(
                Failure::Unreachable(reply::GENERAL_FAILURE),
                Some(reply::GENERAL_FAILURE),
            ),
        }
    }

    /// Whether a datagram of the association may go to `dest`: the forward proxy's rules, as
    /// for CONNECT (`socks_ports`, domains, private destinations, this proxy itself).
    pub fn admit_datagram(&self, dest: &Dest, env: &Env<'_>) -> Datagram {
        if let Dest::Name(n, _) = dest {
            if !resolvable(n) {
                return Datagram::Drop;
            }
        }
        let host = dest.host();
        let ask = self.ask_for(b"UDP", &host, dest.port(), env);
        match admit(settings(env.cfg), &ask) {
            Verdict::Deny(_) => Datagram::Drop,
            Verdict::Resolve { rules_pending } => match dest {
                Dest::Addr(a) => {
                    match admit_addresses(settings(env.cfg), &ask, rules_pending, vec![*a]) {
                        Ok(v) => Datagram::Send(v[0]),
                        Err(_) => Datagram::Drop,
                    }
                }
                Dest::Name(..) => Datagram::Resolve { rules_pending },
            },
        }
    }

    /// The addresses a datagram's name resolved to, checked: where to send it.
    pub fn admit_resolved(
        &self,
        dest: &Dest,
        rules_pending: bool,
        addrs: Vec<SocketAddr>,
        env: &Env<'_>,
    ) -> Option<SocketAddr> {
        let host = dest.host();
        let ask = self.ask_for(b"UDP", &host, dest.port(), env);
        admit_addresses(settings(env.cfg), &ask, rules_pending, addrs)
            .ok()
            .map(|v| v[0])
    }

    /// What admission is asked for `host:port` (`method`: what rules with `methods` see).
    fn ask_for<'a>(
        &'a self,
        method: &'static [u8],
        host: &'a str,
        port: u16,
        env: &'a Env<'_>,
    ) -> Ask<'a> {
        Ask {
            client: self.client,
            user: self.user.as_deref(),
            client_subject: None,
            method,
            tunnel: true,
            ports: Some(&env.cfg.forward.socks_ports),
            host,
            port,
        }
    }
}

fn settings(cfg: &crate::config::Config) -> Settings<'_> {
    Settings {
        forward: &cfg.forward,
        own: cfg,
    }
}

#[cfg(test)]
mod tests;
