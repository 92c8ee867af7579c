//! The upstream half of a proxied request: choosing servers, sending the request, reading the
//! response head, retrying on another server, and relaying the response back.
//!
//! These are methods of the parent module's `Conn` (a child module sees its private fields), kept
//! apart so that `proxy.rs` reads as the client connection's loop and this file as one exchange
//! with the upstream side.

use super::*;
use ringway_core::http::framing::{InterimBudget, MAX_INTERIM};

impl Conn {
    pub(super) async fn proxy(
        &mut self,
        head: RequestHead,
        info: RequestInfo,
        head_end: usize,
        group: usize,
        set_host: Option<&[u8]>,
    ) -> Next {
        let cfg = self.cfg.clone();
        // Chunk framing that arrived with the head is checked before anything is sent upstream,
        // so a request whose first chunk line is bad never reaches it.
        if info.body == BodyKind::Chunked {
            if let Err(e) = check_chunked_prefix(&self.inbuf[head_end..]) {
                self.reject(400, &e.to_string()).await;
                return Next::Close;
            }
        }
        let up_cfg = &cfg.upstreams[group];
        let path: &[u8] = match self.path_len {
            0 => b"/",
            n => &self.target[..n],
        };
        let key = ringway_core::balance::request_key(
            &up_cfg.balance,
            &self.inbuf,
            path,
            &self.headers,
            &self.peer_ip,
        );
        let body_out = match info.body {
            BodyKind::Close => BodyKind::None,
            b => b,
        };
        let fallback_host = if info.host.is_none() && set_host.is_none() {
            up_cfg.servers[0].addr.to_string()
        } else {
            String::new()
        };
        let fwd = Forwarding {
            // The reverse proxy's policy; forward-proxy listeners will choose theirs.
            policy: ForwardingPolicy::REVERSE,
            client_ip: &self.peer_ip,
            proto: self.proto,
            host_override: set_host,
            fallback_host: fallback_host.as_bytes(),
        };
        self.out.clear();
        upstream_request(
            &self.inbuf[..head_end],
            &head,
            &self.headers,
            &self.target,
            body_out,
            &fwd,
            &mut self.out,
        );
        self.inbuf.drain(..head_end);
        // Likewise a small request body that came with the head goes upstream with it (and is
        // then part of what a retry re-sends).
        let info = match info.body {
            BodyKind::Length(n)
                if n <= INLINE_BODY && !info.expect_continue && self.inbuf.len() as u64 >= n =>
            {
                let n = n as usize;
                self.out.extend_from_slice(&self.inbuf[..n]);
                self.inbuf.drain(..n);
                RequestInfo {
                    body: BodyKind::None,
                    ..info
                }
            }
            _ => info,
        };

        let body_empty = info.body.is_empty();
        let retryable = head.method.is_idempotent() && body_empty;
        let started = Instant::now();
        let mut tried = ringway_core::upstream::Tried::new();
        let mut attempts: u32 = 0;
        let mut last: Option<(u16, String, bool)> = None;
        loop {
            let Some(in_flight) = self.cfg.pick(group, key, &tried, Instant::now()) else {
                return match last {
                    None => self.unavailable(&info, &head).await,
                    Some((status, msg, body_done)) => {
                        self.fail(status, &msg, &info, &head, body_done).await
                    }
                };
            };
            let server = in_flight.server;
            tried.add(server);
            attempts += 1;
            let may_retry = attempts <= up_cfg.retries
                && started.elapsed() < up_cfg.retry_timeout
                && (attempts as usize) < up_cfg.servers.len();
            match self
                .attempt(&info, group, server, body_out, retryable)
                .await
            {
                Attempt::Response(up, end) => {
                    if retryable && may_retry && !up_cfg.retry_on.is_empty() {
                        if let Some(status) = status_of(&self.ubuf[..end]) {
                            if up_cfg.retry_on.contains(&status) {
                                log::warn!(
                                    "upstream {}: answered {status}; trying another server",
                                    up_cfg.servers[server].addr
                                );
                                self.cfg.record(group, server, Outcome::ServerError(status));
                                self.ubuf.clear();
                                last = Some((502, format!("upstream answered {status}"), true));
                                continue;
                            }
                        }
                    }
                    return self
                        .respond_from_upstream(up, end, head, info, group, server)
                        .await;
                }
                Attempt::Failed {
                    status,
                    msg,
                    resend_ok,
                    body_done,
                    outcome,
                } => {
                    log::warn!("upstream {}: {msg}", up_cfg.servers[server].addr);
                    self.cfg.record(group, server, outcome);
                    if resend_ok && may_retry {
                        last = Some((status, msg, body_done));
                        continue;
                    }
                    return self.fail(status, &msg, &info, &head, body_done).await;
                }
                Attempt::Finished(next) => return next,
            }
        }
    }

    /// Sends the request (head in `out`, body from the client) to one server and reads the
    /// response head. A pooled connection found closed is replaced by a fresh one once, for
    /// requests that can be sent again.
    async fn attempt(
        &mut self,
        info: &RequestInfo,
        group: usize,
        server: usize,
        body_out: BodyKind,
        retryable: bool,
    ) -> Attempt {
        let t = self.cfg.timeouts;
        let addr = self.cfg.upstreams[group].servers[server].addr;
        let body_empty = info.body.is_empty();
        let mut fresh_only = false;
        loop {
            let pooled = if fresh_only {
                None
            } else {
                self.cfg
                    .pool
                    .borrow_mut()
                    .take(group, server, Instant::now())
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(s) => s,
                None => match open(
                    addr,
                    self.cfg.tls.upstreams[group].as_ref(),
                    t.upstream_connect,
                )
                .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        let (status, msg) = match e {
                            ConnectError::Connect(IoFail::Timeout) => {
                                (504, "upstream connect timed out".to_string())
                            }
                            ConnectError::Tls(HandshakeError::Io(IoFail::Timeout)) => {
                                (504, "upstream TLS handshake timed out".to_string())
                            }
                            ConnectError::Connect(IoFail::Io(e)) => {
                                (502, format!("upstream connect failed: {e}"))
                            }
                            ConnectError::Tls(e) => (502, format!("upstream {e}")),
                        };
                        return Attempt::Failed {
                            status,
                            msg,
                            resend_ok: true,
                            body_done: body_empty,
                            outcome: Outcome::Failure,
                        };
                    }
                },
            };
            let stale_retry = reused && retryable;
            if let Err(e) = up.write_all(&mut self.out, t.upstream_write).await {
                if stale_retry {
                    fresh_only = true;
                    continue;
                }
                // A timed-out write took the head buffer with it: nothing left to resend.
                let timed_out = matches!(e, IoFail::Timeout);
                ensure_capacity(&mut self.out, 1024);
                return Attempt::Failed {
                    status: if timed_out { 504 } else { 502 },
                    msg: format!("sending the request head: {e}"),
                    resend_ok: !timed_out,
                    body_done: body_empty,
                    outcome: Outcome::Failure,
                };
            }
            if !body_empty {
                if info.expect_continue && !fresh_only {
                    self.scratch.clear();
                    self.scratch
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if self
                        .client
                        .write_all(&mut self.scratch, t.send)
                        .await
                        .is_err()
                    {
                        return Attempt::Finished(Next::Close);
                    }
                }
                let rt = RelayTimeouts {
                    read: t.client_body,
                    write: t.upstream_write,
                };
                let plain = (self.client.tcp(), up.tcp());
                let sent = match (info.body, plain) {
                    (BodyKind::Length(n), (Some(client), Some(up))) if n >= SPLICE_THRESHOLD => {
                        relay_spliced(client, &mut self.inbuf, n, up, &mut self.pipe, rt).await
                    }
                    _ => relay(
                        &mut self.client,
                        &mut self.inbuf,
                        info.body,
                        Some(&mut up),
                        body_out,
                        &mut self.scratch,
                        rt,
                    )
                    .await
                    .map(|_| ()),
                };
                if let Err(e) = sent {
                    return match e.side {
                        Side::Source => Attempt::Finished(self.client_body_failed(&e.fail).await),
                        Side::Destination => Attempt::Failed {
                            status: 502,
                            msg: format!("upstream failed while receiving the request body: {e}"),
                            resend_ok: false,
                            body_done: false,
                            outcome: Outcome::Failure,
                        },
                    };
                }
            }
            match self.read_response_head(&mut up, t.upstream_read).await {
                Ok(end) => return Attempt::Response(up, end),
                Err(ResponseHeadError::ClosedEarly) if stale_retry => {
                    fresh_only = true;
                    continue;
                }
                Err(e) => {
                    let outcome = match e {
                        ResponseHeadError::Invalid(_) => Outcome::Invalid,
                        _ => Outcome::Failure,
                    };
                    let (status, msg, transient) = match e {
                        ResponseHeadError::Timeout => (504, "upstream timed out".to_string(), true),
                        ResponseHeadError::ClosedEarly | ResponseHeadError::Truncated => (
                            502,
                            "upstream closed the connection before responding".to_string(),
                            true,
                        ),
                        ResponseHeadError::Io(e) => {
                            (502, format!("upstream connection failed: {e}"), true)
                        }
                        ResponseHeadError::Invalid(e) => (
                            502,
                            format!("upstream sent an invalid response: {e}"),
                            false,
                        ),
                    };
                    return Attempt::Failed {
                        status,
                        msg,
                        resend_ok: transient && retryable,
                        body_done: true,
                        outcome,
                    };
                }
            }
        }
    }

    /// Forwards the response whose head is `ubuf[..end]` and its body, then pools `up` when the
    /// exchange ended cleanly.
    async fn respond_from_upstream(
        &mut self,
        mut up: Stream,
        mut end: usize,
        head: RequestHead,
        info: RequestInfo,
        group: usize,
        server: usize,
    ) -> Next {
        let t = self.cfg.timeouts;
        let limits = self.response_limits();
        // Interim responses are bounded in number and bytes, and `upstream_read` runs across
        // all of them: an upstream sending 1xx forever is cut off, not relayed forever.
        let mut interim = InterimBudget::new(limits.max_head);
        let deadline = Instant::now() + t.upstream_read;
        let (rh, ri) = loop {
            let ub = &self.ubuf[..end];
            let parsed = parse_response(ub, &mut self.uheaders, &limits)
                .map_err(|e| e.to_string())
                .and_then(|rh| {
                    response_info(ub, &rh, &self.uheaders, head.method)
                        .map(|ri| (rh, ri))
                        .map_err(|e| e.to_string())
                });
            let (rh, ri) = match parsed {
                Ok(x) => x,
                Err(e) => {
                    log::warn!(
                        "upstream {}: invalid response: {e}",
                        self.cfg.upstreams[group].servers[server].addr
                    );
                    self.cfg.record(group, server, Outcome::Invalid);
                    return self
                        .fail(
                            502,
                            &format!("upstream sent an invalid response: {e}"),
                            &info,
                            &head,
                            true,
                        )
                        .await;
                }
            };
            if !(100..200).contains(&rh.status) {
                let outcome = if rh.status >= 500 {
                    Outcome::ServerError(rh.status)
                } else {
                    Outcome::Success
                };
                self.cfg.record(group, server, outcome);
                break (rh, ri);
            }
            if rh.status == 101 {
                return self
                    .fail(
                        502,
                        "upstream switched protocols, which this route does not allow",
                        &info,
                        &head,
                        false,
                    )
                    .await;
            }
            if !interim.admit(end) {
                log::warn!(
                    "upstream {}: more than {MAX_INTERIM} interim responses or {} bytes of them",
                    self.cfg.upstreams[group].servers[server].addr,
                    limits.max_head
                );
                return self
                    .fail(502, "too many interim responses", &info, &head, false)
                    .await;
            }
            // Interim response: pass it on to HTTP/1.1 clients, then read the final one.
            if head.version == Version::Http11 {
                self.out.clear();
                client_response(
                    ub,
                    &rh,
                    &self.uheaders,
                    BodyKind::None,
                    ConnectionHeader::Omit,
                    None,
                    &mut self.out,
                );
                if self.client.write_all(&mut self.out, t.send).await.is_err() {
                    return Next::Close;
                }
            }
            self.ubuf.drain(..end);
            let left = deadline.saturating_duration_since(Instant::now());
            end = match self.read_response_head(&mut up, left).await {
                Ok(e) => e,
                Err(ResponseHeadError::Timeout) => {
                    return self
                        .fail(
                            504,
                            "upstream timed out after an interim response",
                            &info,
                            &head,
                            false,
                        )
                        .await
                }
                Err(_) => {
                    return self
                        .fail(
                            502,
                            "upstream failed after an interim response",
                            &info,
                            &head,
                            false,
                        )
                        .await
                }
            };
        };
        let to_client = match ri.body {
            BodyKind::Chunked | BodyKind::Close if head.version == Version::Http11 => {
                BodyKind::Chunked
            }
            BodyKind::Chunked | BodyKind::Close => BodyKind::Close,
            b => b,
        };
        let keep = info.connection.persistent(head.version)
            && !self.w.drain.is_set()
            && to_client != BodyKind::Close;
        let conn_header = match (keep, head.version) {
            (false, _) => ConnectionHeader::Close,
            (true, Version::Http10) => ConnectionHeader::KeepAlive,
            (true, Version::Http11) => ConnectionHeader::Omit,
        };
        self.out.clear();
        client_response(
            &self.ubuf[..end],
            &rh,
            &self.uheaders,
            to_client,
            conn_header,
            Some(&self.w.date()),
            &mut self.out,
        );
        self.ubuf.drain(..end);
        // A small body that arrived with its head leaves in the same write as the head: one
        // send instead of two, as nginx does with writev.
        let mut body = ri.body;
        if let BodyKind::Length(n) = ri.body {
            if n <= INLINE_BODY && self.ubuf.len() as u64 >= n {
                let n = n as usize;
                self.out.extend_from_slice(&self.ubuf[..n]);
                self.ubuf.drain(..n);
                body = BodyKind::None;
            }
        }
        if self.client.write_all(&mut self.out, t.send).await.is_err() {
            return Next::Close;
        }
        let rt = RelayTimeouts {
            read: t.upstream_read,
            write: t.send,
        };
        let relayed = match (body, (up.tcp(), self.client.tcp())) {
            (BodyKind::Length(n), (Some(up), Some(client))) if n >= SPLICE_THRESHOLD => {
                relay_spliced(up, &mut self.ubuf, n, client, &mut self.pipe, rt).await
            }
            _ => relay(
                &mut up,
                &mut self.ubuf,
                body,
                Some(&mut self.client),
                to_client,
                &mut self.scratch,
                rt,
            )
            .await
            .map(|_| ()),
        };
        if let Err(e) = relayed {
            if e.side == Side::Source {
                log::warn!(
                    "upstream {}: {e}",
                    self.cfg.upstreams[group].servers[server].addr
                );
            }
            // Headers are out: the only way left to signal failure is to close.
            return Next::Close;
        }
        // Pool invariant (upstream.rs): nothing unread. Bytes past the response's framing were
        // not asked for: the connection is closed, and the server's connections distrusted.
        let overrun = !self.ubuf.is_empty();
        if overrun {
            log::warn!(
                "upstream {}: sent {} byte(s) beyond its response; connection closed, keep-alive to it paused",
                self.cfg.upstreams[group].servers[server].addr,
                self.ubuf.len()
            );
            self.cfg
                .pool
                .borrow_mut()
                .distrust(group, server, Instant::now());
        }
        let reusable =
            ri.body != BodyKind::Close && ri.connection.persistent(rh.version) && !overrun;
        if reusable {
            self.cfg
                .pool
                .borrow_mut()
                .put(group, server, up, Instant::now());
        }
        self.ubuf.clear();
        if keep {
            Next::KeepAlive
        } else {
            self.close(!info.connection.persistent(head.version)).await;
            Next::Close
        }
    }

    fn response_limits(&self) -> Limits {
        Limits {
            max_head: self.cfg.limits.max_response_head,
            max_target: self.cfg.limits.max_response_head,
            max_headers: self.cfg.limits.request.max_headers.max(100),
        }
    }

    /// Reads a response head into `ubuf` within `timeout`; returns its length.
    async fn read_response_head(
        &mut self,
        up: &mut Stream,
        timeout: std::time::Duration,
    ) -> Result<usize, ResponseHeadError> {
        let limits = self.response_limits();
        if self.ubuf.capacity() < BUF_SIZE && self.ubuf.is_empty() {
            self.ubuf = self.w.take_buf();
        }
        ensure_capacity(&mut self.ubuf, BUF_SIZE);
        let mut scanner = HeadScanner::new();
        let deadline = Instant::now() + timeout;
        loop {
            if !self.ubuf.is_empty() {
                match scanner.scan(&self.ubuf, &limits) {
                    Ok(Scan::Complete(n)) => return Ok(n),
                    Ok(Scan::Partial) => {}
                    Err(e) => return Err(ResponseHeadError::Invalid(e)),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ResponseHeadError::Timeout);
            }
            match up.read_append(&mut self.ubuf, usize::MAX, left).await {
                Ok(0) if self.ubuf.is_empty() => return Err(ResponseHeadError::ClosedEarly),
                Ok(0) => return Err(ResponseHeadError::Truncated),
                Ok(_) => {}
                Err(IoFail::Timeout) => return Err(ResponseHeadError::Timeout),
                Err(IoFail::Io(e)) if self.ubuf.is_empty() && is_reset(&e) => {
                    return Err(ResponseHeadError::ClosedEarly)
                }
                Err(IoFail::Io(e)) => return Err(ResponseHeadError::Io(e)),
            }
        }
    }

    /// 503 with Retry-After: every server of the group is down, marked down or at its limit.
    async fn unavailable(&mut self, info: &RequestInfo, head: &RequestHead) -> Next {
        let keep = info.body.is_empty()
            && info.connection.persistent(head.version)
            && !self.w.drain.is_set();
        self.out.clear();
        respond::error_with(
            503,
            "no upstream server available",
            !keep,
            b"Retry-After: 5\r\n",
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
            self.close(info.body.is_empty() && !info.connection.persistent(head.version))
                .await;
            return Next::Close;
        }
        Next::KeepAlive
    }
}

/// Why reading an upstream response head failed.
enum ResponseHeadError {
    /// The upstream closed (or reset) before sending any byte.
    ClosedEarly,
    Timeout,
    Io(std::io::Error),
    /// Closed partway through the head.
    Truncated,
    Invalid(ParseError),
}

/// Bodies up to this size that arrived in the same read as their head are sent in one write
/// with the head.
const INLINE_BODY: u64 = 8 * 1024;

/// How one attempt at one upstream server ended.
enum Attempt {
    /// A response head is in `ubuf[..end]`, read from this connection.
    Response(Stream, usize),
    /// The server failed before any response reached the client.
    Failed {
        status: u16,
        msg: String,
        /// The request can go to another server (nothing was consumed that cannot be resent).
        resend_ok: bool,
        /// The request body has been read from the client in full.
        body_done: bool,
        /// What passive health learns from it.
        outcome: Outcome,
    },
    /// The client connection is finished with (client-side failure, already answered).
    Finished(Next),
}

/// The status code of a complete response head, without parsing the rest.
fn status_of(head: &[u8]) -> Option<u16> {
    let code = head.get(9..12)?;
    code.iter()
        .all(u8::is_ascii_digit)
        .then(|| code.iter().fold(0u16, |a, d| a * 10 + u16::from(d - b'0')))
}

/// Runs a throwaway chunked decoder over body bytes already received.
fn check_chunked_prefix(bytes: &[u8]) -> Result<(), ChunkError> {
    let mut d = ChunkedDecoder::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let step = d.decode(&bytes[pos..])?;
        pos += step.consumed;
        if step.done {
            break;
        }
    }
    Ok(())
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}
