//! One client connection: read a request head, decide, forward, answer, repeat.
//!
//! The loop per request is: read until core's [`HeadScanner`] finds the end of the head; parse
//! it and its framing (a fault is answered with 4xx and the connection closed, the upstream sees
//! nothing); route it; then either answer locally or forward: take a pooled upstream connection
//! or connect, send the head core wrote, stream the body, read the response head, send core's
//! rewritten head to the client and stream the response body. Requests on one connection are
//! handled one after another, so pipelined requests are answered in order by construction.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;
use ringway_core::config::{Action, Listen, ListenKind};
use ringway_core::http::chunked::{ChunkError, ChunkedDecoder};
use ringway_core::http::framing::{request_info, response_info, BodyKind, RequestInfo};
use ringway_core::http::path::normalise;
use ringway_core::http::respond::{self, Fixed};
use ringway_core::http::rewrite::{
    client_response, upstream_request, ConnectionHeader, Forwarding, ForwardingPolicy,
};
use ringway_core::http::{
    parse_request, parse_response, HeadScanner, Header, Limits, Method, ParseError, RequestHead,
    Scan, TargetForm, Version,
};

use crate::buf::{ensure_capacity, IoFail, BUF_SIZE};
use crate::context::Worker;
use crate::generation::Generation;
use crate::relay::{
    relay, relay_spliced, RelayFail, RelayTimeouts, Side, SplicePipe, SPLICE_THRESHOLD,
};
use crate::stream::{HandshakeError, Stream, TlsStream};
use crate::upstream::{open, ConnectError};

use ringway_core::health::Outcome;

mod upstream_exchange;

/// The input buffer an idle connection keeps: enough for most request heads in one read
/// (a larger head grows it), small enough that idle connections cost little.
const IDLE_BUF: usize = 1024;

/// What happens to the client connection after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Per-connection state. Buffers are allocated once and reused for every request.
struct Conn {
    w: Rc<Worker>,
    /// The configuration generation of the current request (taken anew for each request).
    cfg: Rc<Generation>,
    client: Stream,
    /// The listener's scheme, for X-Forwarded-Proto.
    proto: &'static str,
    /// What the listener that accepted this connection serves.
    kind: ListenKind,
    peer: SocketAddr,
    /// `peer`'s IP as text, for forwarding headers.
    peer_ip: Vec<u8>,
    /// Bytes from the client: the current head, then body bytes, then any pipelined requests.
    inbuf: Vec<u8>,
    /// Bytes from the upstream.
    ubuf: Vec<u8>,
    /// Heads this proxy writes.
    out: Vec<u8>,
    /// The current request's normalised target (path and query, or `*`): what routes match
    /// and what is sent upstream.
    target: Vec<u8>,
    /// Length of the path part of `target`.
    path_len: usize,
    /// Re-framed chunked data.
    scratch: Vec<u8>,
    headers: Vec<Header>,
    uheaders: Vec<Header>,
    /// For bodies passed through with splice.
    pipe: SplicePipe,
    served: u64,
}

/// Serves one accepted client connection until it closes: the TLS handshake first on a TLS
/// listener, then requests, the same code for both.
pub(crate) async fn serve(w: Rc<Worker>, tcp: TcpStream, peer: SocketAddr, kind: Listen) {
    // TCP_NODELAY is inherited from the listening socket (see listener.rs).
    let _active = w.enter();
    let cfg = w.current();
    let client = if kind.kind.is_tls() {
        match Box::pin(accept_tls(&w, &cfg, tcp, peer)).await {
            Accepted::Tls(s) => s,
            Accepted::PlainHttp(tcp) => {
                // Plain HTTP on a TLS port: say so in plain HTTP, as nginx does.
                let mut c = Conn::new(w, cfg, Stream::Plain(tcp), peer, &kind);
                c.reject(400, "The plain HTTP request was sent to an HTTPS port")
                    .await;
                return;
            }
            Accepted::Failed => return,
        }
    } else {
        Stream::Plain(tcp)
    };
    Conn::new(w, cfg, client, peer, &kind).run().await;
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
async fn accept_tls(w: &Worker, cfg: &Generation, tcp: TcpStream, peer: SocketAddr) -> Accepted {
    let Some(sc) = cfg.tls.server.clone() else {
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
    match TlsStream::handshake(tcp, conn, cfg.tls.handshake_timeout).await {
        Ok(t) => {
            let s = Stream::Tls(Box::new(t));
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
        kind: &Listen,
    ) -> Self {
        Conn {
            w,
            cfg,
            client,
            proto: kind.kind.scheme(),
            kind: kind.kind,
            peer,
            peer_ip: peer.ip().to_string().into_bytes(),
            inbuf: Vec::with_capacity(IDLE_BUF),
            ubuf: Vec::new(),
            out: Vec::with_capacity(1024),
            target: Vec::new(),
            path_len: 0,
            scratch: Vec::new(),
            headers: Vec::with_capacity(32),
            uheaders: Vec::with_capacity(32),
            pipe: SplicePipe::default(),
            served: 0,
        }
    }

    async fn run(&mut self) {
        loop {
            self.cfg = self.w.current();
            let Some(head_end) = self.read_head().await else {
                return;
            };
            // Boxed: the exchange's state (its nested futures, several KiB) is allocated only
            // while a request is being handled, so an idle connection's task stays small.
            if Box::pin(self.handle(head_end)).await == Next::Close {
                return;
            }
            self.served += 1;
            if self.w.drain.is_set() {
                return;
            }
            self.idle();
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
        if self.out.capacity() > 2 * IDLE_BUF {
            self.out = Vec::with_capacity(IDLE_BUF);
        }
        if self.scratch.capacity() > 0 && self.scratch.is_empty() {
            self.w.give_buf(std::mem::take(&mut self.scratch));
        }
    }

    /// Reads until a complete head is in `inbuf`; returns its length. `None`: the connection
    /// is done (closed, timed out, draining, or answered with an error).
    async fn read_head(&mut self) -> Option<usize> {
        let limits = self.cfg.limits.request;
        let t = self.cfg.timeouts;
        let mut scanner = HeadScanner::new();
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.inbuf.is_empty() {
                match scanner.scan(&self.inbuf, &limits) {
                    Ok(Scan::Complete(n)) => return Some(n),
                    Ok(Scan::Partial) => {}
                    Err(e) => {
                        self.reject(e.status(), &e.to_string()).await;
                        return None;
                    }
                }
            }
            let started = scanner.started(&self.inbuf);
            let now = Instant::now();
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(now),
                None if started => {
                    deadline = Some(now + t.client_header);
                    t.client_header
                }
                None if self.served == 0 => t.client_header,
                None => t.keepalive,
            };
            let r = if started {
                self.client
                    .read_append(&mut self.inbuf, usize::MAX, wait)
                    .await
            } else {
                let drain = self.w.drain.clone();
                monoio::select! {
                    r = self.client.read_append(&mut self.inbuf, usize::MAX, wait) => r,
                    _ = drain.wait() => return None,
                }
            };
            match r {
                Ok(0) => return None,
                Ok(_) => {}
                Err(IoFail::Timeout) => {
                    if started {
                        self.reject(408, "timed out reading the request head").await;
                    }
                    return None;
                }
                Err(IoFail::Io(e)) => {
                    log::debug!("client {}: {e}", self.peer);
                    return None;
                }
            }
        }
    }

    async fn handle(&mut self, head_end: usize) -> Next {
        let limits = self.cfg.limits.request;
        let buf = &self.inbuf[..head_end];
        let head = match parse_request(buf, &mut self.headers, &limits) {
            Ok(h) => h,
            Err(e) => {
                self.reject(e.status(), &e.to_string()).await;
                return Next::Close;
            }
        };
        let info = match request_info(buf, &head, &self.headers) {
            Ok(i) => i,
            Err(e) => {
                self.reject(e.status(), &e.to_string()).await;
                return Next::Close;
            }
        };
        if head.method == Method::Connect {
            self.reject(405, "CONNECT is not enabled on this listener")
                .await;
            return Next::Close;
        }
        let host: &[u8] = match head.form {
            TargetForm::Absolute { authority, .. } => authority.get(buf),
            _ => info.host.map_or(&b""[..], |h| h.get(buf)),
        };
        // Routes match the normalised path, and that is what the upstream gets (path.rs).
        let raw_target = match head.form {
            TargetForm::Origin => head.target.get(buf),
            TargetForm::Absolute { path, .. } => path.get(buf),
            TargetForm::Authority | TargetForm::Asterisk => b"*",
        };
        if raw_target == b"*" {
            self.target.clear();
            self.target.push(b'*');
            self.path_len = 0;
        } else {
            match normalise(raw_target, &self.cfg.server.path, &mut self.target) {
                Ok(n) => self.path_len = n,
                Err(e) => {
                    self.reject(e.status(), &e.to_string()).await;
                    return Next::Close;
                }
            }
        }
        let path: &[u8] = match self.path_len {
            0 => b"/",
            n => &self.target[..n],
        };
        if self.kind == ListenKind::RedirectHttps {
            if host.is_empty() {
                let e = Local::Error(400, "a Host header is needed to redirect to https");
                return self.local(e, head, info, head_end).await;
            }
            // Copied out of the input buffer, which `local` drains before answering.
            let (host, target) = (host.to_vec(), self.target.clone());
            let to = Local::Redirect {
                host: &host,
                target: &target,
            };
            return self.local(to, head, info, head_end).await;
        }
        let cfg = self.cfg.clone();
        match cfg
            .router
            .lookup(host, path)
            .map(|&i| &cfg.routes[i].action)
        {
            None => {
                self.local(
                    Local::Error(404, "no route for this host and path"),
                    head,
                    info,
                    head_end,
                )
                .await
            }
            Some(Action::Respond(fixed)) => {
                self.local(Local::Fixed(fixed), head, info, head_end).await
            }
            Some(Action::Proxy { upstream, set_host }) => {
                self.proxy(head, info, head_end, *upstream, set_host.as_deref())
                    .await
            }
        }
    }

    /// Answers a request without an upstream. A request body is read and discarded first so
    /// that the connection can carry on; with `Expect: 100-continue` it is never asked for, and
    /// the connection is closed instead.
    async fn local(
        &mut self,
        resp: Local<'_>,
        head: RequestHead,
        info: RequestInfo,
        head_end: usize,
    ) -> Next {
        let t = self.cfg.timeouts;
        self.inbuf.drain(..head_end);
        let mut keep = info.connection.persistent(head.version) && !self.w.drain.is_set();
        if !info.body.is_empty() {
            if info.expect_continue {
                keep = false;
            } else {
                let rt = RelayTimeouts {
                    read: t.client_body,
                    write: t.send,
                };
                if let Err(e) = relay(
                    &mut self.client,
                    &mut self.inbuf,
                    info.body,
                    None,
                    BodyKind::None,
                    &mut self.scratch,
                    rt,
                )
                .await
                {
                    return self.client_body_failed(&e.fail).await;
                }
            }
        }
        self.out.clear();
        match resp {
            Local::Fixed(f) => f.write(
                !keep,
                keep && head.version == Version::Http10,
                head.method == Method::Head,
                &self.w.date(),
                &mut self.out,
            ),
            Local::Error(status, msg) => {
                respond::error(status, msg, !keep, &self.w.date(), &mut self.out)
            }
            Local::Redirect { host, target } => {
                let port = self.cfg.https_port();
                respond::redirect_https(host, port, target, !keep, &self.w.date(), &mut self.out)
            }
        }
        if self.client.write_all(&mut self.out, t.send).await.is_err() || !keep {
            let body_read = info.body.is_empty() || !info.expect_continue;
            self.close(body_read && !info.connection.persistent(head.version))
                .await;
            return Next::Close;
        }
        Next::KeepAlive
    }

    /// Answers with an error generated here. `body_done` says whether the request body has been
    /// fully read, which is what allows the connection to be kept.
    async fn fail(
        &mut self,
        status: u16,
        msg: &str,
        info: &RequestInfo,
        head: &RequestHead,
        body_done: bool,
    ) -> Next {
        let body_consumed = body_done || info.body.is_empty();
        let keep =
            body_consumed && info.connection.persistent(head.version) && !self.w.drain.is_set();
        // The reason stays in the log; the client gets a plain status page (no socket errors,
        // addresses or parser details of ours or the upstream's).
        log::debug!("client {}: {status} {msg}", self.peer);
        self.out.clear();
        respond::error(
            status,
            respond::upstream_failure(status),
            !keep,
            &self.w.date(),
            &mut self.out,
        );
        if self
            .client
            .write_all(&mut self.out, self.cfg.timeouts.send)
            .await
            .is_err()
            || !keep
        {
            self.close(body_consumed && !info.connection.persistent(head.version))
                .await;
            return Next::Close;
        }
        self.ubuf.clear();
        Next::KeepAlive
    }

    async fn client_body_failed(&mut self, fail: &RelayFail) -> Next {
        match fail {
            RelayFail::Framing(e) => self.reject(400, &e.to_string()).await,
            RelayFail::Io(IoFail::Timeout) => {
                self.reject(408, "timed out reading the request body").await
            }
            _ => {}
        }
        Next::Close
    }

    /// Answers a request that cannot be processed and closes the connection.
    async fn reject(&mut self, status: u16, msg: &str) {
        log::debug!("client {}: {status} {msg}", self.peer);
        self.out.clear();
        respond::error(status, msg, true, &self.w.date(), &mut self.out);
        if self
            .client
            .write_all(&mut self.out, self.cfg.timeouts.send)
            .await
            .is_ok()
        {
            self.close_gracefully().await;
        }
    }

    /// Ends the connection after a response. A client that asked to close and whose request
    /// was read whole sends nothing more (RFC 9112 §9.6), so the socket is simply closed;
    /// otherwise the close is graceful.
    async fn close(&mut self, client_asked: bool) {
        if client_asked && self.inbuf.is_empty() {
            self.client.notify_close().await;
        } else {
            self.close_gracefully().await;
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

/// How long a closing connection waits for the client to stop sending.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

enum Local<'a> {
    Fixed(&'a Fixed),
    Error(u16, &'a str),
    /// 301 to https, same host (port replaced) and target.
    Redirect {
        host: &'a [u8],
        target: &'a [u8],
    },
}
