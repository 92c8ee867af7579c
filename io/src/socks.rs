//! The SOCKS5 protocol driver: carries out what `ringway_core::socks5::Session` decides on one
//! client connection (reads, replies, the off-worker password check, resolution through the
//! forward proxy's resolver, the connection and the spliced tunnel).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringway_core::proxy::DateSource;
use ringway_core::socks5::{self, Action, Env, Session};

use ringway_core::upstream::UpstreamKey;

use crate::context::Worker;
use crate::deadline::{IoFail, Limit};
use crate::generation::Generation;
use crate::stream::Stream;

/// The most a handshake may send before its request is complete (a greeting of 255 methods,
/// 255-byte credentials and a 255-byte name fit several times over).
const MAX_HANDSHAKE: usize = 4096;

pub(crate) async fn serve(
    w: Rc<Worker>,
    cfg: Rc<Generation>,
    client: Stream,
    peer: SocketAddr,
    listen: &ringway_core::config::Listen,
    early: Vec<u8>,
) {
    let started = Instant::now();
    let mut s = Session::new(peer.ip());
    let (moved, to) = Box::pin(session(&w, &cfg, &mut s, client, peer, early)).await;
    let ended = Instant::now();
    if let Some(mut r) = s.end_record((started, ended), moved) {
        r.upstream = to.map(|(addr, from)| UpstreamKey::Destination { addr, from });
        crate::proxy::account(&w, &cfg, listen, peer, None, &r, ended);
    }
}

/// Runs the handshake and the tunnel: the bytes moved up and down, and where to.
async fn session(
    w: &Rc<Worker>,
    cfg: &Rc<Generation>,
    s: &mut Session,
    mut client: Stream,
    peer: SocketAddr,
    early: Vec<u8>,
) -> ((u64, u64), Option<(SocketAddr, Option<std::net::IpAddr>)>) {
    let mut inbuf = early;
    // The whole handshake, from the first byte to the request, within `client_header`.
    let until = crate::deadline::At(Instant::now() + cfg.timeouts.client_header);
    let env = |w: &Worker| Env {
        cfg,
        auth: Some(&cfg.auth),
        now: Instant::now(),
        secs: w.date_line().secs(),
    };
    loop {
        let action = s.poll();
        if !s.out().is_empty() {
            let out = s.out();
            if client.write_all(out, until).await.is_err() {
                return ((0, 0), None);
            }
            out.clear();
        }
        match action {
            Action::Read { read_first } => {
                if read_first || inbuf.is_empty() {
                    if inbuf.len() >= MAX_HANDSHAKE {
                        log::debug!("socks5 client {peer}: handshake too long");
                        return ((0, 0), None);
                    }
                    match client.read_append(&mut inbuf, MAX_HANDSHAKE, until).await {
                        Ok(0) | Err(_) => return ((0, 0), None),
                        Ok(_) => {}
                    }
                }
                let n = s.handle_input(&inbuf, &env(w));
                inbuf.drain(..n);
            }
            Action::Verify { user, password } => {
                let ok = match cfg.forward.users.clone() {
                    Some(users) => Box::pin(crate::auth::verify(users, user, password.0)).await,
                    None => None,
                };
                s.handle_verified(ok, &env(w));
            }
            Action::Resolve { host, port } => {
                let limit = cfg
                    .forward
                    .resolver_timeout
                    .map_or(Duration::from_secs(30), |t| t.saturating_mul(2));
                let lookup = Box::pin(crate::dns::Cache::resolve(
                    &w.dns,
                    &host,
                    port,
                    &cfg.forward,
                    peer.ip(),
                ));
                let r = match limit.run(lookup).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("resolving {host} timed out")),
                };
                if let Err(e) = &r {
                    log::debug!("socks5 client {peer}: {e}");
                }
                match s.handle_resolved(r, &env(w)) {
                    Action::Connect { addrs, from } => {
                        let r = Box::pin(connect(cfg, &addrs, from)).await;
                        let result = r.as_ref().map(|(_, a, _)| *a).map_err(|c| *c);
                        match s.handle_connected(result, &env(w)) {
                            Action::Tunnel { idle } => {
                                let Ok((mut up, _, addr)) = r else {
                                    return ((0, 0), None);
                                };
                                let to = Some((addr, from));
                                let out = s.out();
                                if client.write_all(out, until).await.is_err() {
                                    return ((0, 0), to);
                                }
                                out.clear();
                                // Spliced: the client socket is non-blocking from its accept
                                // (worker.rs).
                                let moved = Box::pin(crate::tunnel::run(
                                    &mut client,
                                    &mut up,
                                    std::mem::take(&mut inbuf),
                                    Vec::new(),
                                    idle,
                                    &w.pipes,
                                ))
                                .await;
                                return (moved, to);
                            }
                            _ => continue,
                        }
                    }
                    _ => continue,
                }
            }
            Action::Associate { expect } => {
                // On the address the client reached (a wildcard listener: the connection's).
                let ip = match client.tcp().and_then(|t| t.local_addr().ok()) {
                    Some(a) => a.ip(),
                    None => return ((0, 0), None),
                };
                let sock = monoio::net::udp::UdpSocket::bind(SocketAddr::new(ip, 0));
                let bound = sock
                    .as_ref()
                    .ok()
                    .and_then(|u| u.local_addr().ok())
                    .ok_or(());
                match s.handle_associated(bound, &env(w)) {
                    Action::Relay { idle } => {
                        let (Ok(sock), out) = (sock, s.out()) else {
                            return ((0, 0), None);
                        };
                        if client.write_all(out, until).await.is_err() {
                            return ((0, 0), None);
                        }
                        out.clear();
                        let moved =
                            Box::pin(relay(w, cfg, s, (&client, &sock), expect, peer, idle)).await;
                        return (moved, None);
                    }
                    _ => continue,
                }
            }
            // Reached only through `handle_resolved`, `handle_connected` and
            // `handle_associated` above.
            Action::Connect { .. } | Action::Tunnel { .. } | Action::Relay { .. } => {
                return ((0, 0), None)
            }
            Action::Close => {
                if let Some(why) = s.failure() {
                    log::debug!("socks5 client {peer}: {why:?}");
                }
                return ((0, 0), None);
            }
        }
    }
}

/// Destinations one association remembers (datagrams from others are dropped).
const MAX_PEERS: usize = 1024;

/// The UDP relay of one association: datagrams from the client (its address: the one it
/// declared, else the first from its IP) go where their header says when the rules allow it;
/// datagrams from the destinations it sent to come back with a header naming them. Ends when
/// the control connection closes or nothing moves for `idle`; the bytes up and down. The
/// association's two sockets: its control connection and the relay's UDP socket.
async fn relay(
    w: &Rc<Worker>,
    cfg: &Rc<Generation>,
    s: &Session,
    (control, sock): (&Stream, &monoio::net::udp::UdpSocket),
    expect: Option<SocketAddr>,
    peer: SocketAddr,
    idle: Duration,
) -> (u64, u64) {
    let mut client = expect.filter(|a| a.port() != 0 && a.ip() == peer.ip());
    let mut peers = std::collections::HashSet::new();
    let (mut up, mut down) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    loop {
        let closed = Box::pin(control.closed_by_peer());
        let receiving = Box::pin(idle.run(sock.recv_from(std::mem::take(&mut buf))));
        let (res, b) = monoio::select! {
            r = receiving => match r {
                Ok(x) => x,
                Err(_) => return (up, down),
            },
            _ = closed => return (up, down),
        };
        buf = b;
        let Ok((n, from)) = res else {
            return (up, down);
        };
        let from_client = match client {
            Some(c) => c == from,
            None if from.ip() == peer.ip() && !peers.contains(&from) => {
                client = Some(from);
                true
            }
            None => false,
        };
        if from_client {
            let Some((dest, data)) = socks5::datagram(&buf[..n]) else {
                continue;
            };
            let e = Env {
                cfg,
                auth: Some(&cfg.auth),
                now: Instant::now(),
                secs: w.date_line().secs(),
            };
            let to = match s.admit_datagram(&dest, &e) {
                socks5::Datagram::Send(a) => Some(a),
                socks5::Datagram::Drop => None,
                socks5::Datagram::Resolve { rules_pending } => {
                    let found = crate::dns::Cache::resolve(
                        &w.dns,
                        &dest.host(),
                        dest.port(),
                        &cfg.forward,
                        peer.ip(),
                    )
                    .await;
                    found
                        .ok()
                        .and_then(|addrs| s.admit_resolved(&dest, rules_pending, addrs, &e))
                }
            };
            let Some(to) = to.filter(|&a| crate::guard::may_dial(a)) else {
                continue;
            };
            if peers.len() < MAX_PEERS || peers.contains(&to) {
                peers.insert(to);
                up += data.len() as u64;
                let (_, _) = sock.send_to(data.to_vec(), to).await;
            }
        } else if let (true, Some(c)) = (peers.contains(&from), client) {
            let mut out = Vec::with_capacity(n + 22);
            socks5::datagram_header(from, &mut out);
            out.extend_from_slice(&buf[..n]);
            down += n as u64;
            let (_, _) = sock.send_to(out, c).await;
        }
    }
}

/// Connects to the first of `addrs` that answers, each within `upstream_connect`: the stream
/// and its local address, or the reply code of the last failure.
async fn connect(
    cfg: &Generation,
    addrs: &[SocketAddr],
    from: Option<std::net::IpAddr>,
) -> Result<(Stream, SocketAddr, SocketAddr), u8> {
    let mut code = socks5::reply::GENERAL_FAILURE;
    for &addr in addrs {
        match crate::upstream::open(addr, from, None, cfg.timeouts.upstream_connect, None).await {
            Ok(s) => {
                let local = match &s {
                    Stream::Plain(t) => t.local_addr().ok(),
                    _ => None,
                };
                let local = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                return Ok((s, local, addr));
            }
            Err(crate::upstream::ConnectError::Connect(IoFail::Timeout)) => {
                code = socks5::connect_failure(std::io::ErrorKind::TimedOut, true);
            }
            Err(crate::upstream::ConnectError::Connect(IoFail::Io(e))) => {
                code = socks5::connect_failure(e.kind(), false);
            }
            Err(_) => code = socks5::reply::GENERAL_FAILURE,
        }
    }
    Err(code)
}
