//! One client connection: the executor of core's exchange.
//!
//! Core's [`Exchange`] decides everything about a request and its response; this module carries
//! out the actions it asks for (read, write, pick a server, connect, relay a body, pool a
//! connection) and reports back what happened, with the time. Requests on one connection are
//! handled one after another, so pipelined requests are answered in order by construction. Each
//! exchange ends in one place ([`Conn::end`]), with core's [`EndRecord`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;
use ringway_core::config::{Listen, Protocol, Transport};
use ringway_core::http::body::{BodyError, Stage};
use ringway_core::proxy::{
    Action, BodyFail, BodyPlan, CacheRef, Close, EndRecord, Env, Exchange, Finish, Parked,
    Requester, Reuse, Spares, UpstreamError, Via, CONTINUE, OUT_FIRST,
};
use ringway_core::upstream::UpstreamKey;

use crate::buf::{ensure_capacity, BUF_SIZE};
use crate::cache::Spliced;
use crate::context::{ConnSpares, Worker};
use crate::deadline::IoFail;
use crate::deadline::{Deadline, Limit};
use crate::generation::{Generation, InFlight};
use crate::relay::{relay, relay_spliced, Moving, RelayTimeouts};
use crate::stream::{HandshakeError, Stream, TlsStream};
use crate::upstream::{open, ConnectError};

/// The input buffer an idle connection keeps: enough for most request heads in one read
/// (a larger head grows it), small enough that idle connections cost little.
const IDLE_BUF: usize = 1024;

/// Per-connection state. Buffers are allocated once and reused for every request.
struct Conn {
    w: Rc<Worker>,
    /// The configuration generation of the current request (taken anew for each request).
    cfg: Rc<Generation>,
    client: Stream,
    peer: SocketAddr,
    /// The listener (a background refresh runs as if on the same one).
    listen: Listen,
    /// Core's state machine for this connection's requests.
    ex: Exchange,
    /// Bytes from the client: the current head, then body bytes, then any pipelined requests.
    inbuf: Vec<u8>,
    /// Bytes from the upstream.
    ubuf: Vec<u8>,
    /// Re-framed body bytes on their way out.
    scratch: Vec<u8>,
    /// The upstream connection of the current attempt, and the in-flight count it holds.
    up: Option<Stream>,
    in_flight: Option<InFlight>,
    /// An upstream connection authenticated for this client's user (NTLM, Negotiate): used
    /// for this client's requests to its destination alone, never pooled. Boxed: rare, and
    /// 144 bytes inline in every connection.
    pinned: Option<Box<(UpstreamKey, Stream)>>,
    /// The clock, read once after each wait and used until the next one.
    now: Instant,
    /// The one timer of the request path's operations, set to core's deadline before each.
    deadline: Deadline,
    /// Cancels the wait for the next request when the connection parks (see `read_idle`).
    canceller: monoio::io::Canceller,
    /// The receive into the worker's ring a kept-alive plain connection waits for its next
    /// request with, while it runs (multirecv.rs), where the worker has the ring.
    reader: Option<monoio::ringway::RecvMulti>,
    /// Which receive that is: a multishot one until the client sends a request body (the
    /// bodies after it are left in the socket to be spliced). A parked connection starts again
    /// from a multishot one.
    receive: crate::multirecv::Receive,
    /// The connection has served a request and is kept alive.
    kept_alive: bool,
}

impl Drop for Conn {
    /// The exchange's buffers and the input buffer go to the worker for the next connection
    /// (emptied; grown ones are freed).
    fn drop(&mut self) {
        // The upstream read buffer, borrowed for an exchange that closed the connection.
        let ubuf = std::mem::take(&mut self.ubuf);
        if ubuf.capacity() > 0 {
            self.w.give_buf(ubuf);
        }
        let mut inbuf = std::mem::take(&mut self.inbuf);
        inbuf.clear();
        if inbuf.capacity() != IDLE_BUF {
            inbuf = Vec::new();
        }
        self.w.give_conn_spares(ConnSpares {
            ex: self.ex.take_spares(),
            inbuf,
        });
    }
}

/// A closed connection's allocations, from the worker's spares or new: the exchange's, and an
/// empty input buffer of [`IDLE_BUF`].
fn spares(w: &Worker) -> (Spares, Vec<u8>) {
    let (ex, mut inbuf) = w
        .take_conn_spares()
        .map_or_else(|| (Spares::default(), Vec::new()), |s| (s.ex, s.inbuf));
    inbuf.reserve(IDLE_BUF);
    (ex, inbuf)
}

/// What a parked connection keeps: its socket, and what rebuilds its `Conn` (with core's
/// [`Parked`]).
struct Idle {
    tcp: TcpStream,
    /// The client (the one a PROXY header named, if any).
    peer: SocketAddr,
}

/// Serves one accepted client connection until it closes: its transport established (the TLS
/// handshake on a TLS listener), then the listener's protocol spoken on it.
///
/// When the connection parks, this task ends: the worker keeps the socket and a [`Kept`]
/// (see parking.rs), and a new task serves the connection when it is readable.
pub(crate) async fn serve(
    w: Rc<Worker>,
    tcp: TcpStream,
    peer: SocketAddr,
    listen: Listen,
    pass: crate::gate::Pass,
) {
    // `pass`: the connection's place under the connection limits, given back when it ends.
    let active = w.enter();
    // Boxed: the exchanges' box is the larger part, and this one is freed before it is made.
    let Some(s) = Box::pin(start(w.clone(), tcp, peer, listen)).await else {
        return;
    };
    if let Some((parked, idle)) = s.await {
        let place = Place {
            listen,
            _pass: pass,
            _active: active,
        };
        park(&w, idle, parked, place);
    }
}

/// What keeps a connection's place while it is open, parked or not: its listener, and (held
/// until it closes) its place under the connection limits and in the worker's count.
struct Place {
    listen: Listen,
    _pass: crate::gate::Pass,
    _active: crate::context::Active,
}

/// What the worker keeps of a parked connection besides its socket.
pub(crate) struct Kept {
    peer: SocketAddr,
    parked: Parked,
    place: Place,
}

/// Parks a connection (core's `Finish::Park`): its socket and [`Kept`] go to the worker's lot
/// until the socket is readable ([`unpark`]) or the keep-alive deadline passes or the worker
/// drains (it closes, as an idle connection does). Nothing is read meanwhile, so nothing can be
/// lost: the exchange rebuilt reads the bytes.
fn park(w: &Worker, idle: Idle, parked: Parked, place: Place) {
    if w.drain.is_set() {
        return;
    }
    // A descriptor of its own for the lot (one syscall): the stream's goes with it, whatever
    // operation record may still hold it.
    let fd = match crate::sys::fd(&idle.tcp).try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("parking a connection: {e}");
            return;
        }
    };
    drop(idle.tcp);
    let until = parked.until();
    let kept = Kept {
        peer: idle.peer,
        parked,
        place,
    };
    // Refused (the kernel would not watch it): it closes, as an idle connection may.
    let _ = w.lot.park(fd, until, kept);
}

/// The worker's unparking task: serves each parked connection that turns readable on a new
/// task, until the worker drains.
pub(crate) async fn unpark(w: Rc<Worker>) {
    // The lot's epoll instance, awaited on the ring like a socket.
    let ready = match w
        .lot
        .readiness()
        .try_clone_to_owned()
        .and_then(|fd| monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)))
    {
        Ok(r) => r,
        Err(e) => {
            log::warn!("parked connections cannot be woken ({e}); they close at their deadline");
            return;
        }
    };
    let drain = w.drain.clone();
    let mut woken = Vec::new();
    loop {
        monoio::select! {
            r = ready.readable(false) => if let Err(e) = r {
                log::warn!("parked connections: {e}");
                monoio::time::sleep(std::time::Duration::from_millis(100)).await;
            },
            _ = drain.wait() => return,
        }
        w.lot.ready(&mut woken);
        for (fd, kept) in woken.drain(..) {
            monoio::spawn(resume(w.clone(), fd, kept));
        }
    }
}

/// Serves a parked connection that turned readable.
async fn resume(w: Rc<Worker>, fd: std::os::fd::OwnedFd, kept: Kept) {
    let tcp = match TcpStream::from_std(std::net::TcpStream::from(fd)) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("resuming a parked connection: {e}");
            return;
        }
    };
    let Kept {
        peer,
        parked,
        place,
    } = kept;
    let idle = Idle { tcp, peer };
    let s = session(Conn::resume(w.clone(), &place.listen, idle, parked));
    if let Some((parked, idle)) = s.await {
        park(&w, idle, parked, place);
    }
}

/// Establishes the transport and serves the protocols other than HTTP/1; for HTTP/1, the
/// connection's exchanges, begun.
async fn start(
    w: Rc<Worker>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    listen: Listen,
) -> Option<Session> {
    // TCP_NODELAY is inherited from the listening socket (see listener.rs).
    let cfg = w.current();
    // Behind a balancer: the client its PROXY header names, and what followed the header.
    let (peer, early) = match listen.proxy_protocol {
        ringway_core::config::ProxyHeader::Off => (peer, Vec::new()),
        mode => match Box::pin(crate::proxyheader::read(
            &mut tcp,
            mode,
            cfg.timeouts.proxy_header,
        ))
        .await
        {
            Ok((client, rest)) => (client.unwrap_or(peer), rest),
            Err(e) => {
                log::debug!("client {peer}: {e}");
                w.count_proxy_header_failure();
                return None;
            }
        },
    };
    let client = match listen.transport {
        Transport::Plain => Stream::Plain(tcp),
        Transport::Tls => {
            match Box::pin(accept_tls(&w, &cfg, (tcp, peer, &listen), early.clone())).await {
                Accepted::Tls(s) => s,
                Accepted::PlainHttp(tcp) => {
                    // Plain HTTP on a TLS port: core answers it in plain HTTP. Boxed, so that this
                    // future holds one connection's state, not two.
                    let mut c = Conn::new(w, cfg, Stream::Plain(tcp), peer, &listen);
                    c.inbuf = early;
                    Box::pin(c.not_tls()).await;
                    return None;
                }
                Accepted::Failed => return None,
            }
        }
    };
    match listen.protocol {
        // The HTTP/1 driver serves all three: the exchange reads the protocol.
        Protocol::Http | Protocol::RedirectHttps | Protocol::ForwardHttp => {
            let cert = match listen.client_auth {
                ringway_core::config::ClientAuth::Off => None,
                _ => client.client_certificate(),
            };
            let mut c = Conn::new(w, cfg, client, peer, &listen);
            if let Some(cert) = cert {
                c.ex.handle_client_certificate(cert);
            }
            if listen.transport == Transport::Plain {
                // What followed a PROXY header, into the connection's own buffer.
                c.inbuf.extend_from_slice(&early);
            }
            c.begin();
            Some(session(c))
        }
        Protocol::Socks5 => {
            let early = match listen.transport {
                Transport::Plain => early,
                Transport::Tls => Vec::new(),
            };
            Box::pin(crate::socks::serve(w, cfg, client, peer, &listen, early)).await;
            None
        }
    }
}

/// A background cache refresh (`stale-while-revalidate`): `head` revalidates the stored
/// response, run as a request from `peer` on `listen`, with a client that is a sink; the
/// exchange holds the fetch of `key` that the request which served the stale response claimed.
async fn refresh(w: Rc<Worker>, listen: Listen, peer: SocketAddr, head: Vec<u8>, key: Vec<u8>) {
    let _active = w.enter();
    let cfg = w.current();
    let mut c = Conn::new(w, cfg, Stream::Sink, peer, &listen);
    c.inbuf = head;
    c.ex.own_fill(key);
    c.begin();
    c.run().await;
}

/// A connection's exchanges until it closes or parks (boxed: see `serve`).
type Session = Pin<Box<dyn Future<Output = Option<(Parked, Idle)>>>>;

fn session(mut c: Conn) -> Session {
    Box::pin(async move {
        let parked = c.run().await?;
        c.into_idle().map(|idle| (parked, idle))
    })
}

/// How the TLS handshake on an accepted connection ended.
enum Accepted {
    Tls(Stream),
    /// The client sent a plain HTTP request: the socket, to answer it.
    PlainHttp(TcpStream),
    /// The handshake failed; a TLS alert went out where rustls had one. Close.
    Failed,
}

/// Runs the server handshake and counts how it went.
async fn accept_tls(
    w: &Worker,
    cfg: &Generation,
    (tcp, peer, listen): (TcpStream, SocketAddr, &Listen),
    early: Vec<u8>,
) -> Accepted {
    let Some(sc) = cfg
        .tls
        .server
        .as_ref()
        .map(|s| s.for_listener(listen.client_auth))
    else {
        // Not reachable: a configuration with a TLS listener always loads a server config.
        log::error!("TLS listener without certificates; closing {peer}");
        return Accepted::Failed;
    };
    let conn = match rustls::ServerConnection::new(sc) {
        Ok(c) => c,
        Err(e) => {
            log::error!("TLS: {e}");
            return Accepted::Failed;
        }
    };
    match TlsStream::handshake(tcp, conn, cfg.tls.handshake_timeout, early).await {
        Ok(t) => {
            let mut s = Stream::Tls(Box::new(t));
            if s.alpn() == Some(ringway_core::acme::ALPN_PROTOCOL) {
                // A TLS-ALPN-01 validation: the handshake was all of it (RFC 8737 §3).
                s.notify_close().await;
                return Accepted::Failed;
            }
            let resumed = s.resumed();
            w.count_tls(|c| {
                c.handshakes += 1;
                c.resumed += u64::from(resumed);
            });
            Accepted::Tls(s)
        }
        Err((e, tcp)) => {
            log::debug!("client {peer}: {e}");
            let plain = matches!(e, HandshakeError::PlainHttp);
            w.count_tls(|c| {
                c.failed += 1;
                c.plain_http += u64::from(plain);
            });
            if plain {
                Accepted::PlainHttp(tcp)
            } else {
                Accepted::Failed
            }
        }
    }
}

impl Conn {
    fn new(
        w: Rc<Worker>,
        cfg: Rc<Generation>,
        client: Stream,
        peer: SocketAddr,
        listen: &Listen,
    ) -> Self {
        let (spares, inbuf) = spares(&w);
        let ex = Exchange::with_spares(listen, peer.ip(), spares);
        Self::with(w, cfg, client, peer, listen, ex, inbuf)
    }

    /// A parked connection's, rebuilt when its socket turned readable.
    fn resume(w: Rc<Worker>, listen: &Listen, idle: Idle, parked: Parked) -> Self {
        let cfg = w.current();
        let (spares, mut inbuf) = spares(&w);
        let ex = Exchange::unpark(listen, parked, &cfg, Instant::now(), spares);
        // The socket is readable: what it holds is taken now, by a system call instead of an
        // operation on the ring and a turn of the loop (the exchange scans the buffer before it
        // reads). Nothing (the peer closed) or an error: the exchange's own read finds it.
        let _ = crate::sys::recv_append(crate::sys::fd(&idle.tcp), &mut inbuf, IDLE_BUF);
        let client = Stream::Plain(idle.tcp);
        let mut c = Self::with(w, cfg, client, idle.peer, listen, ex, inbuf);
        c.kept_alive = true;
        c
    }

    fn with(
        w: Rc<Worker>,
        cfg: Rc<Generation>,
        client: Stream,
        peer: SocketAddr,
        listen: &Listen,
        ex: Exchange,
        inbuf: Vec<u8>,
    ) -> Self {
        let now = Instant::now();
        Conn {
            w,
            cfg,
            client,
            peer,
            listen: *listen,
            ex,
            inbuf,
            ubuf: Vec::new(),
            scratch: Vec::new(),
            up: None,
            in_flight: None,
            pinned: None,
            now,
            deadline: Deadline::new(now),
            canceller: monoio::io::Canceller::new(),
            reader: None,
            receive: crate::multirecv::Receive::Multishot,
            kept_alive: false,
        }
    }

    /// Begins the next exchange, with the configuration of now.
    fn begin(&mut self) {
        self.cfg = self.w.current();
        // The clock as the last operation left it: nothing waits between two exchanges.
        let now = self.now;
        self.ex.begin(&self.cfg, now);
    }

    /// Runs exchanges (the first begun by the caller) until the connection closes (`None`) or
    /// parks (core's `Finish::Park`: what it keeps).
    async fn run(&mut self) -> Option<Parked> {
        loop {
            // Not boxed: the wait for the next request is the exchange's first operation, and
            // a box would cost an allocation per request. It is small because every operation
            // on the request path shares the connection's one timer and the rare, large ones
            // are boxed.
            let finish = self.exchange().await;
            self.end();
            match finish {
                Finish::KeepAlive if !self.w.drain.is_set() => {
                    self.kept_alive = true;
                    self.idle();
                    self.begin();
                }
                Finish::KeepAlive => return None,
                Finish::Park => return Some(self.ex.park(self.now)),
                Finish::Close(how) => {
                    // Boxed: the lingering close's future (1.8 KiB, its reads carry timers)
                    // would otherwise be part of every connection's task. Only when there is
                    // something to wait for: a plain connection's close is its socket's.
                    if self.close_waits(how) {
                        Box::pin(self.close(how)).await;
                    }
                    return None;
                }
            }
        }
    }

    /// What a parked connection keeps (plain sockets only: core parks no other).
    fn into_idle(mut self) -> Option<Idle> {
        // A connection parks after a wait for its next request that ended the receive
        // (multirecv::read); one still running would hold bytes the parked socket has not.
        if self.reader.is_some() {
            log::error!(
                "client {}: parked with its receive running; closed",
                self.peer
            );
            return None;
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.client, Stream::Sink) else {
            return None;
        };
        Some(Idle {
            tcp,
            peer: self.peer,
        })
    }

    /// Answers a plain HTTP request that arrived on a TLS port, then closes.
    async fn not_tls(mut self) {
        let now = self.tick();
        self.ex.begin(&self.cfg, now);
        let cfg = self.cfg.clone();
        self.ex.handle_plain_on_tls(&env(&self.w, &cfg), now);
        // Ends like every exchange: its record counted and logged.
        let finish = self.exchange().await;
        self.end();
        if let Finish::Close(how) = finish {
            self.close(how).await;
        }
    }

    /// Reads the clock (after a wait).
    fn tick(&mut self) -> Instant {
        self.now = Instant::now();
        self.now
    }

    /// Carries out the exchange's actions until it finishes.
    async fn exchange(&mut self) -> Finish {
        let cfg = self.cfg.clone();
        loop {
            let action = self.ex.poll_action();
            if self.reader.is_some() && reads_client(&action) {
                crate::multirecv::settle(&mut self.reader, &mut self.inbuf).await;
            }
            if let Action::ReadBody { .. } | Action::SendBody(_) | Action::DiscardBody(_) = action {
                self.receive = crate::multirecv::Receive::Once;
            }
            match action {
                Action::ReadHead { idle, read_first } => {
                    if read_first && !self.read_client(idle, &cfg).await {
                        continue;
                    }
                    let n = self
                        .ex
                        .handle_input(&self.inbuf, &env(&self.w, &cfg), self.now);
                    self.inbuf.drain(..n);
                }
                Action::WriteClient => {
                    let wait = arm(&self.deadline, &self.ex, self.now);
                    let ok = self.client.write_all(self.ex.out(), wait).await.is_ok();
                    ensure_capacity(self.ex.out(), OUT_FIRST);
                    let now = self.tick();
                    self.ex.handle_client_written(ok, now);
                }
                Action::WriteStored {
                    entry,
                    coding,
                    range,
                    idle,
                } => {
                    let hit = crate::cache::Hit {
                        entry,
                        coding,
                        range,
                    };
                    let ok = match self.splice_hit(&hit, idle).await {
                        Spliced::Sent => true,
                        Spliced::Failed => false,
                        Spliced::Unsupported => {
                            Box::pin(self.client.write_stored(self.ex.out(), hit, idle))
                                .await
                                .is_ok()
                        }
                    };
                    ensure_capacity(self.ex.out(), OUT_FIRST);
                    let now = self.tick();
                    self.ex.handle_client_written(ok, now);
                }
                Action::WriteContinue => {
                    let wait = arm(&self.deadline, &self.ex, self.now);
                    self.scratch.clear();
                    self.scratch.extend_from_slice(CONTINUE);
                    let ok = self.client.write_all(&mut self.scratch, wait).await.is_ok();
                    let now = self.tick();
                    self.ex.handle_client_written(ok, now);
                }
                Action::DiscardBody(mut plan) => {
                    let t = timeouts(&plan);
                    let whole = plan.whole;
                    let m = Moving {
                        body: &mut plan.body,
                        stage: None,
                        t,
                    };
                    let moving = Box::pin(relay(
                        &mut self.client,
                        &mut self.inbuf,
                        None,
                        m,
                        &mut self.scratch,
                        None,
                        &self.w.bufs,
                    ));
                    let r = Box::pin(within(whole, async {
                        moving.await.map_err(|e| e.into_body_fail())
                    }))
                    .await;
                    self.inbuf.reserve(IDLE_BUF);
                    let now = self.tick();
                    self.ex.handle_request_body(r, &env(&self.w, &cfg), now);
                }
                Action::Pick { group, key } => {
                    self.in_flight = None;
                    let now = self.now;
                    self.in_flight = cfg.pick(group, key, self.ex.tried(), now);
                    let server = self.in_flight.as_ref().map(|g| g.server);
                    self.ex.handle_pick(server, &env(&self.w, &cfg), now);
                }
                Action::Record {
                    to,
                    outcome,
                    error,
                    at,
                } => {
                    if let Some(e) = error {
                        log::warn!("upstream {}: {e}", upstream_addr(&cfg, to));
                    }
                    if let (Some(o), UpstreamKey::Server { group, server }) = (outcome, to) {
                        cfg.record(group, server, o, at);
                    }
                }
                Action::EndFill { key } => {
                    // In the box's table even if a reload has just removed `[cache]`: a
                    // claim on a fetch is always given back.
                    self.w.end_fill(key);
                }
                Action::Refresh { head, key } => {
                    monoio::spawn(refresh(self.w.clone(), self.listen, self.peer, head, key));
                }
                Action::Resolve { port } => {
                    // A client that leaves while its name is looked up stops waiting for it (a
                    // lookup nobody waits for stops, and the client's lookup slot is free).
                    let lookup = Box::pin(crate::dns::Cache::resolve(
                        &self.w.dns,
                        self.ex.resolve_host(),
                        port,
                        &cfg.forward,
                        self.peer.ip(),
                    ));
                    let gone = Box::pin(self.client.closed_by_peer());
                    let wait = arm(&self.deadline, &self.ex, self.now);
                    let r = monoio::select! {
                        r = wait.run(lookup) => Some(r),
                        _ = gone => None,
                    };
                    let now = self.tick();
                    let r = match r {
                        Some(Ok(r)) => r,
                        Some(Err(_)) => {
                            self.ex.handle_timeout(&env(&self.w, &cfg), now);
                            continue;
                        }
                        None => {
                            self.ex.handle_client_closed(now);
                            continue;
                        }
                    };
                    if let Err(e) = &r {
                        log::warn!("resolving {}: {e}", self.ex.resolve_host());
                    }
                    self.ex.handle_resolved(r, &env(&self.w, &cfg), now);
                }
                Action::VerifyPassword { user, password } => {
                    let ok = match cfg.forward.users.clone() {
                        Some(users) => Box::pin(crate::auth::verify(users, user, password.0)).await,
                        None => None,
                    };
                    let now = self.tick();
                    self.ex.handle_verified(ok, &env(&self.w, &cfg), now);
                }
                Action::WaitFill => {
                    let wait = arm(&self.deadline, &self.ex, self.now);
                    let done = wait
                        .run(self.w.fill_done(self.ex.cache_key()))
                        .await
                        .is_ok();
                    let now = self.tick();
                    if done {
                        self.ex.handle_fill_done(&env(&self.w, &cfg), now);
                    } else {
                        self.ex.handle_timeout(&env(&self.w, &cfg), now);
                    }
                }
                Action::ReadBody { need, idle, whole } => {
                    let (client, inbuf) = (&mut self.client, &mut self.inbuf);
                    let reading = async {
                        while inbuf.len() < need {
                            let want = need - inbuf.len();
                            ensure_capacity(inbuf, want);
                            match client.read_append(inbuf, want, idle).await {
                                Ok(0) => return Err(BodyFail::Source(BodyError::Truncated)),
                                Ok(_) => {}
                                Err(IoFail::Timeout) => return Err(BodyFail::SourceTimeout),
                                Err(IoFail::Io(e)) => {
                                    return Err(BodyFail::SourceIo(e.to_string()))
                                }
                            }
                        }
                        Ok(0)
                    };
                    // Boxed, as the other body moves: a timer's future is large (3.3 KiB with
                    // this read inline), and every connection's task, idle ones included,
                    // would hold that much for the rare state that needs it.
                    let r = Box::pin(within(whole, reading)).await.map(drop);
                    let now = self.tick();
                    self.ex.handle_body_buffered(r, &env(&self.w, &cfg), now);
                }
                Action::Hold => {
                    // A tarpit: nothing is read or written until the deadline.
                    let wait = arm(&self.deadline, &self.ex, self.now);
                    let _ = wait.run(std::future::pending::<()>()).await;
                    let now = self.tick();
                    self.ex.handle_timeout(&env(&self.w, &cfg), now);
                }
                Action::Tunnel { idle } => {
                    // Over TLS the tunnel copies; else it splices (the client socket is
                    // non-blocking from its accept, as splicing needs: worker.rs).
                    let up = self.up.as_mut().expect("a tunnel has a destination");
                    let early_up = std::mem::take(&mut self.inbuf);
                    let early_down = std::mem::take(&mut self.ubuf);
                    let (sent, received) = Box::pin(crate::tunnel::run(
                        &mut self.client,
                        up,
                        early_up,
                        early_down,
                        idle,
                        &self.w.pipes,
                    ))
                    .await;
                    let now = self.tick();
                    self.ex.handle_tunnel_closed(sent, received, now);
                }
                Action::Connect { to, via, proxy } => {
                    if via == Via::Pinned {
                        // Checked as the pool checks its own: one the upstream closed, or one
                        // holding bytes no request asked for (past a body spliced to its exact
                        // end), is dropped, and the request goes on a fresh connection (a
                        // connection-bound login is then asked for again). Over TLS a record
                        // may be the TLS layer's own: kept.
                        if let Some(s) = self.pinned.take_if(|p| p.0 == to) {
                            use crate::stream::Idle as State;
                            let usable = match s.1.idle_state() {
                                State::Quiet => true,
                                State::Closed => false,
                                State::Unrequested => !matches!(s.1, Stream::Plain(_)),
                            };
                            if usable {
                                self.up = Some((*s).1);
                                self.ubuf.clear();
                                self.ex.handle_connected(true, self.now);
                                continue;
                            }
                            log::warn!("pinned upstream connection closed or sent bytes no request asked for; dropped");
                        }
                    }
                    if !(via == Via::Pooled && self.connect_pooled(&cfg, to)) {
                        // A header naming the client: its port when it is the peer itself
                        // (behind a trusted proxy the port is not known), and the address it
                        // reached.
                        let preface = proxy.map(|(v, ip)| {
                            let port = if ip == self.peer.ip() {
                                self.peer.port()
                            } else {
                                0
                            };
                            let src = std::net::SocketAddr::new(ip, port);
                            ringway_core::proxyproto::header(v, src, self.listen.addr)
                        });
                        Box::pin(self.connect(&cfg, to, preface)).await;
                    }
                }
                Action::SendRequest => {
                    let wait = arm(&self.deadline, &self.ex, self.now);
                    let up = self.up.as_mut().expect("connected before sending");
                    let r = up.write_all(self.ex.out(), wait).await;
                    ensure_capacity(self.ex.out(), OUT_FIRST);
                    let now = self.tick();
                    match r {
                        Ok(()) => self.ex.handle_request_sent(now),
                        Err(IoFail::Timeout) => self.ex.handle_timeout(&env(&self.w, &cfg), now),
                        Err(IoFail::Io(e)) => self.ex.handle_upstream_error(
                            UpstreamError::WriteFailed(e.to_string()),
                            &env(&self.w, &cfg),
                            now,
                        ),
                    }
                }
                Action::SendBody(mut plan) => {
                    plan.splice = plan.splice && self.client.tcp().is_some();
                    let up = self.up.as_mut().expect("connected before the body");
                    let whole = plan.whole;
                    let moving = Box::pin(move_body(
                        &mut self.client,
                        &mut self.inbuf,
                        up,
                        plan,
                        None,
                        &mut self.scratch,
                        &self.w,
                    ));
                    let r = Box::pin(within(whole, moving)).await;
                    self.inbuf.reserve(IDLE_BUF);
                    let now = self.tick();
                    self.ex.handle_request_body(r, &env(&self.w, &cfg), now);
                }
                Action::ReadResponseHead { read_first, max } => {
                    if read_first && !self.read_upstream(&cfg, max).await {
                        continue;
                    }
                    let n =
                        self.ex
                            .handle_upstream_input(&self.ubuf, &env(&self.w, &cfg), self.now);
                    self.ubuf.drain(..n);
                }
                Action::RelayResponse(plan) if plan.body.is_done() && plan.stages.is_empty() => {
                    // Nothing left to move: the body went out with the head, or it has none.
                    let leftover = self.ubuf.len();
                    self.ex.handle_response_body(
                        Ok(0),
                        leftover,
                        plan.stages,
                        &env(&self.w, &cfg),
                        self.now,
                    );
                }
                Action::RelayResponse(mut plan) => {
                    plan.splice = plan.splice && self.client.tcp().is_some();
                    let up = self
                        .up
                        .as_mut()
                        .expect("a response comes from a connection");
                    // The body seam: the plan's stages (the cache's tee, a compressor later);
                    // with none the body may be spliced.
                    let mut stages = std::mem::take(&mut plan.stages);
                    let stage = stages.as_stage();
                    let r = Box::pin(move_body(
                        up,
                        &mut self.ubuf,
                        &mut self.client,
                        plan,
                        stage,
                        &mut self.scratch,
                        &self.w,
                    ))
                    .await;
                    let leftover = self.ubuf.len();
                    let now = self.tick();
                    self.ex
                        .handle_response_body(r, leftover, stages, &env(&self.w, &cfg), now);
                }
                Action::FetchBody(mut plan) => {
                    // The whole body into the tee first, at the upstream's pace; the client gets
                    // it from the store afterwards.
                    let up = self
                        .up
                        .as_mut()
                        .expect("a response comes from a connection");
                    let mut stages = std::mem::take(&mut plan.stages);
                    let stage = stages.as_stage();
                    let t = timeouts(&plan);
                    let m = Moving {
                        body: &mut plan.body,
                        stage,
                        t,
                    };
                    let r = Box::pin(relay(
                        up,
                        &mut self.ubuf,
                        None,
                        m,
                        &mut self.scratch,
                        None,
                        &self.w.bufs,
                    ))
                    .await
                    .map_err(|e| e.into_body_fail());
                    let leftover = self.ubuf.len();
                    let now = self.tick();
                    self.ex
                        .handle_body_fetched(r, leftover, stages, &env(&self.w, &cfg), now);
                }
                Action::Release { to, then } => {
                    let up = self.up.take();
                    let now = self.now;
                    if then == Reuse::Distrust {
                        log::warn!(
                            "upstream {}: sent {} byte(s) beyond its response; connection closed, keep-alive to it paused",
                            upstream_addr(&cfg, to),
                            self.ubuf.len()
                        );
                        cfg.pool.borrow_mut().distrust(to, now);
                    }
                    match (then, up) {
                        (Reuse::Pool, Some(up)) => cfg.pool.borrow_mut().put(to, up, now),
                        // Authenticated for this client's user: kept for this connection alone.
                        (Reuse::Pin, Some(up)) => self.pinned = Some(Box::new((to, up))),
                        _ => {}
                    }
                    self.ubuf.clear();
                }
                Action::Finish(f) => {
                    self.up = None;
                    self.in_flight = None;
                    self.ubuf.clear();
                    return f;
                }
            }
        }
    }

    /// Sends a hit whose body is in pages of its own by reference (pages.rs), on a plain
    /// connection; `Unsupported` (nothing sent) otherwise.
    ///
    /// Boxed, and only when it splices: the splice's future (1.2 KiB, its waits carry timers)
    /// would otherwise be part of every connection's task, idle ones included.
    async fn splice_hit(&mut self, hit: &crate::cache::Hit, idle: std::time::Duration) -> Spliced {
        let Some(m) = hit.mapping() else {
            return Spliced::Unsupported;
        };
        let Some(s) = self.client.tcp() else {
            return Spliced::Unsupported;
        };
        let head = self.ex.out();
        Box::pin(crate::cache::splice_hit(
            s,
            head,
            m,
            hit.range.clone(),
            &self.w.pipes,
            idle,
        ))
        .await
    }

    /// Reads from the client for `ReadHead`. False when the exchange was told of a failure
    /// (closed, timed out, draining) instead.
    async fn read_client(&mut self, idle: bool, cfg: &Generation) -> bool {
        let wait = arm(&self.deadline, &self.ex, self.now);
        // A keep-alive connection's next request through a receive into the ring
        // (multirecv.rs); else (more of a head, or when the ring is empty) a receive of its own.
        let mut ring = None;
        if let (Stream::Plain(tcp), true) = (
            &self.client,
            self.reader.is_some() || (idle && self.kept_alive && self.w.recv_ring.get()),
        ) {
            let read =
                crate::multirecv::read(&mut self.reader, self.receive, tcp, &mut self.inbuf, wait);
            let got = if idle {
                let drain = self.w.drain.clone();
                monoio::select! {
                    r = read => r.map(Some),
                    _ = drain.wait() => Ok(None),
                }
            } else {
                read.await.map(Some)
            };
            ring = match got {
                Ok(r) => Some(r),
                Err(crate::multirecv::Elsewhere::RingEmpty) => {
                    self.w.count_recv_ring_empty();
                    None
                }
                Err(crate::multirecv::Elsewhere::Unavailable) => None,
            };
        }
        let r = if let Some(r) = ring {
            r
        } else if idle {
            let drain = self.w.drain.clone();
            monoio::select! {
                r = self.client.read_idle(&mut self.inbuf, wait, &mut self.canceller) => Some(r),
                _ = drain.wait() => None,
            }
        } else {
            Some(
                self.client
                    .read_append(&mut self.inbuf, usize::MAX, wait)
                    .await,
            )
        };
        let now = self.tick();
        match r {
            Some(Ok(n)) if n > 0 => return true,
            Some(Err(IoFail::Timeout)) => self.ex.handle_timeout(&env(&self.w, cfg), now),
            Some(Err(IoFail::Io(e))) => {
                log::debug!("client {}: {e}", self.peer);
                self.ex.handle_client_closed(now);
            }
            Some(Ok(_)) | None => self.ex.handle_client_closed(now),
        }
        false
    }

    /// Reads from the upstream for `ReadResponseHead`. False when the exchange was told of a
    /// failure instead.
    async fn read_upstream(&mut self, cfg: &Generation, max: Option<usize>) -> bool {
        if self.ubuf.capacity() < BUF_SIZE && self.ubuf.is_empty() {
            self.ubuf = self.w.take_buf();
        }
        ensure_capacity(&mut self.ubuf, BUF_SIZE);
        let empty_before = self.ubuf.is_empty();
        let wait = arm(&self.deadline, &self.ex, self.now);
        let up = self.up.as_mut().expect("connected before reading");
        // A short first read on routes that answer with bodies to splice (core's hint).
        let max = match max {
            Some(m) if empty_before && up.tcp().is_some() => m,
            _ => usize::MAX,
        };
        let r = up.read_append(&mut self.ubuf, max, wait).await;
        let now = self.tick();
        let empty = self.ubuf.is_empty();
        let e = match r {
            Ok(n) if n > 0 => return true,
            Ok(_) if empty => UpstreamError::ClosedEarly,
            Ok(_) => UpstreamError::Truncated,
            Err(IoFail::Timeout) => {
                self.ex.handle_timeout(&env(&self.w, cfg), now);
                return false;
            }
            Err(IoFail::Io(e)) if empty && is_reset(&e) => UpstreamError::ClosedEarly,
            Err(IoFail::Io(e)) => UpstreamError::ReadFailed(e.to_string()),
        };
        self.ex.handle_upstream_error(e, &env(&self.w, cfg), now);
        false
    }

    /// `Connect` when pooling is allowed: takes an idle connection to `to` if the pool has
    /// one. False when it has none.
    fn connect_pooled(&mut self, cfg: &Generation, to: UpstreamKey) -> bool {
        self.up = None;
        self.ubuf.clear();
        let now = self.now;
        let Some(s) = cfg.pool.borrow_mut().take(to, now) else {
            return false;
        };
        self.up = Some(s);
        self.ex.handle_connected(true, now);
        true
    }

    /// `Connect` with a new connection (boxed by the caller: the TLS handshake makes this
    /// future large, and most requests take a pooled connection instead).
    async fn connect(&mut self, cfg: &Rc<Generation>, to: UpstreamKey, preface: Option<Vec<u8>>) {
        self.up = None;
        self.ubuf.clear();
        let now = self.now;
        let addr = upstream_addr(cfg, to);
        let tls = match to {
            UpstreamKey::Server { group, server } => cfg.tls.upstreams[group].as_ref().map(|o| {
                let name = cfg.upstreams[group].servers[server].name.as_deref();
                (o, name)
            }),
            UpstreamKey::Destination { .. } => None,
        };
        let wait = self.ex.timeout(now);
        let from = match to {
            UpstreamKey::Destination { from, .. } => from,
            UpstreamKey::Server { .. } => None,
        };
        let r = open(addr, from, tls, wait, preface).await;
        let now = self.tick();
        match r {
            Ok(s) => {
                self.up = Some(s);
                self.ex.handle_connected(false, now);
            }
            Err(e) => {
                let e = match e {
                    ConnectError::Connect(IoFail::Timeout)
                    | ConnectError::Tls(HandshakeError::Io(IoFail::Timeout)) => {
                        UpstreamError::ConnectTimeout
                    }
                    ConnectError::Connect(IoFail::Io(e)) => {
                        UpstreamError::ConnectFailed(e.to_string())
                    }
                    ConnectError::Tls(e) => UpstreamError::Tls(e.to_string()),
                };
                self.ex.handle_upstream_error(e, &env(&self.w, cfg), now);
            }
        }
    }

    /// The one place every exchange ends: its record goes to the worker's counters (and, at
    /// debug level, to the log; the access log of a later issue reads it here).
    fn end(&mut self) {
        let r: &EndRecord = self.ex.end_record();
        if !r.had_request() {
            return;
        }
        let tls = self.client.tls_info();
        account(
            &self.w,
            &self.cfg,
            &self.listen,
            self.peer,
            tls,
            r,
            self.now,
        );
        if log::log_enabled!(log::Level::Debug) {
            let ms = r.duration().map_or(0.0, |d| d.as_secs_f64() * 1e3);
            let who = match r.requester {
                Requester::Client => "client",
                Requester::Refresh => "cache refresh for",
            };
            match &r.error {
                Some(e) => log::debug!("{who} {}: {} in {ms:.1} ms: {e}", self.peer, r.status),
                None => log::debug!("{who} {}: {} in {ms:.1} ms", self.peer, r.status),
            }
        }
    }

    /// Between requests a connection keeps only small buffers: the read buffers of the last
    /// exchange go back to the worker (or are freed), so that thousands of idle keep-alive
    /// connections cost little memory. Bytes already received (a pipelined request) keep theirs.
    fn idle(&mut self) {
        if self.ubuf.is_empty() && self.ubuf.capacity() > 0 {
            self.w.give_buf(std::mem::take(&mut self.ubuf));
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > IDLE_BUF {
            self.w.give_buf(std::mem::replace(
                &mut self.inbuf,
                Vec::with_capacity(IDLE_BUF),
            ));
        }
        if self.scratch.capacity() > 0 && self.scratch.is_empty() {
            self.w.give_buf(std::mem::take(&mut self.scratch));
        }
    }

    /// Closing waits for something: a TLS close_notify to go out, or the client's last bytes
    /// to be drained ([`Conn::close`]).
    fn close_waits(&self, how: Close) -> bool {
        match how {
            Close::Now => false,
            Close::Notify if self.inbuf.is_empty() => matches!(self.client, Stream::Tls(_)),
            Close::Notify | Close::Linger => true,
        }
    }

    /// Ends the connection as the exchange said.
    async fn close(&mut self, how: Close) {
        match how {
            Close::Now => {}
            Close::Notify if self.inbuf.is_empty() => self.client.notify_close().await,
            Close::Notify | Close::Linger => self.close_gracefully().await,
        }
    }

    /// Half-closes and drains what the client still sends for a moment, so that closing with
    /// unread input does not reset the connection before the client has read the response.
    async fn close_gracefully(&mut self) {
        if self.client.shutdown().await.is_err() {
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..16 {
            scratch.clear();
            ensure_capacity(&mut scratch, BUF_SIZE);
            match self
                .client
                .read_append(&mut scratch, BUF_SIZE, LINGER)
                .await
            {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
}

/// Whether `action` reads the client's socket other than for a head, or leaves it to be
/// closed gracefully or parked: a receive into the ring running on it is settled first
/// (multirecv.rs).
/// A tarpit's hold too: what a held client sends then stays in its socket, under TCP's flow
/// control, instead of in the worker's ring. Every action is named, so that a new one is
/// decided here.
fn reads_client(action: &Action) -> bool {
    match action {
        Action::DiscardBody(_)
        | Action::Resolve { .. }
        | Action::ReadBody { .. }
        | Action::Tunnel { .. }
        | Action::SendBody(_)
        | Action::Hold
        | Action::Finish(Finish::Park | Finish::Close(Close::Notify | Close::Linger)) => true,
        Action::ReadHead { .. }
        | Action::WriteClient
        | Action::WriteStored { .. }
        | Action::WriteContinue
        | Action::Pick { .. }
        | Action::Record { .. }
        | Action::WaitFill
        | Action::Connect { .. }
        | Action::SendRequest
        | Action::ReadResponseHead { .. }
        | Action::RelayResponse(_)
        | Action::FetchBody(_)
        | Action::Release { .. }
        | Action::EndFill { .. }
        | Action::Refresh { .. }
        | Action::VerifyPassword { .. }
        | Action::Finish(Finish::KeepAlive | Finish::Close(Close::Now)) => false,
    }
}

/// Moves one body from `from` to `to` as `plan` says: spliced when core allows it, no stage
/// sits in between and both ends are plain sockets; else through the buffers.
async fn move_body(
    from: &mut Stream,
    buf: &mut Vec<u8>,
    to: &mut Stream,
    mut plan: Box<BodyPlan>,
    stage: Option<&mut dyn Stage>,
    scratch: &mut Vec<u8>,
    w: &Worker,
) -> Result<u64, BodyFail> {
    let (pipes, bufs) = (&w.pipes, &w.bufs);
    let t = timeouts(&plan);
    let r = match (plan.splice && stage.is_none(), from.tcp(), to.tcp()) {
        (true, Some(f), Some(d)) => {
            let n = plan.body.want() as u64;
            relay_spliced(f, buf, n, d, pipes, t).await.map(|()| n)
        }
        // Chunked and close-delimited bodies splice their long runs between framing (core's
        // `Transcoder::splice_run`), when both ends are plain sockets.
        _ => {
            let pipes = (from.tcp().is_some() && to.tcp().is_some()).then_some(pipes);
            let m = Moving {
                body: &mut plan.body,
                stage,
                t,
            };
            relay(from, buf, Some(to), m, scratch, pipes, bufs).await
        }
    };
    r.map_err(|e| e.into_body_fail())
}

/// Moves the connection's timer to core's deadline for the next operation.
fn arm<'a>(d: &'a Deadline, ex: &Exchange, now: Instant) -> &'a Deadline {
    d.set(ex.deadline(), now);
    d
}

/// Counts an ended exchange (or SOCKS5 session, as a `CONNECT`) in the worker's counters and
/// metrics, and writes its access log line.
pub(crate) fn account(
    w: &Worker,
    cfg: &Generation,
    listen: &Listen,
    peer: SocketAddr,
    tls: Option<(&'static str, Option<&str>)>,
    r: &EndRecord,
    now: Instant,
) {
    w.count_request(r);
    let route = r.route.and_then(|i| cfg.routes.get(i));
    let server = match r.upstream {
        Some(UpstreamKey::Server { group, server }) => cfg.upstreams.get(group).and_then(|g| {
            let s = g.servers.get(server)?;
            Some((g.name.as_str(), s.addr))
        }),
        _ => None,
    };
    w.tally.borrow_mut().count(
        r,
        ringway_core::metrics::Labels {
            listener: listen.addr,
            route: route.map(|r| r.name.as_str()),
            server,
            limited: r
                .limited
                .and_then(|i| cfg.rate_limits.get(i))
                .map(|l| l.name.as_str()),
            rule: r
                .ruled
                .and_then(|i| cfg.rules.get(i))
                .map(|x| (x.name.as_str(), x.action.label())),
        },
    );
    if let Some(a) = &cfg.access_log {
        if cfg.logs(listen, r.route) {
            let upstream = match r.upstream {
                Some(UpstreamKey::Destination { addr, .. }) => Some(addr),
                _ => server.map(|s| s.1),
            };
            let e = ringway_core::accesslog::Entry {
                rec: r,
                // The client a trusted proxy relayed for, else the peer.
                client: r.client.map_or(peer, |ip| SocketAddr::new(ip, peer.port())),
                listener: listen.addr,
                unix_ms: unix_ms(),
                worker: w.id(),
                seq: w.log.next_seq(),
                tls,
                route: route.map(|r| r.name.as_str()),
                upstream,
            };
            w.log.add(a, &e, now);
        }
    }
}

/// What core reads from the worker when it decides.
fn env<'a>(w: &'a Worker, cfg: &'a Generation) -> Env<'a> {
    Env {
        cfg,
        date: w,
        draining: w.drain.is_set(),
        auth: Some(&cfg.auth),
        cache: cfg.cache.as_ref().map(|_| CacheRef {
            shard: &w.cache,
            table: &w.table,
        }),
        hints: Some(&cfg.hints),
        encoders: Some(&w.encoders),
        ids: Some(&w.ids),
        acme: cfg
            .tls
            .acme
            .as_deref()
            .map(|a| a as &dyn ringway_core::acme::Challenges),
    }
}

/// The socket address behind an upstream key.
fn upstream_addr(cfg: &Generation, to: UpstreamKey) -> SocketAddr {
    match to {
        UpstreamKey::Server { group, server } => cfg.upstreams[group].servers[server].addr,
        UpstreamKey::Destination { addr, .. } => addr,
    }
}

fn timeouts(plan: &BodyPlan) -> RelayTimeouts {
    RelayTimeouts {
        read: plan.read_idle,
        write: plan.write_idle,
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// How long a closing connection waits for the client to stop sending.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// A request body's relay bounded by its whole-body deadline, when it has one: past it the
/// sender is too slow, whatever its pace between reads.
async fn within<F>(whole: Option<std::time::Duration>, f: F) -> Result<u64, BodyFail>
where
    F: std::future::Future<Output = Result<u64, BodyFail>>,
{
    match whole {
        None => f.await,
        Some(d) => monoio::time::timeout(d, f)
            .await
            .unwrap_or(Err(BodyFail::SourceTimeout)),
    }
}

/// Milliseconds since the Unix epoch (one vDSO clock read).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
