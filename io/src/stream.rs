//! A connection as the HTTP code sees it: plain TCP or TLS over TCP, with the same three
//! operations (read appending to a buffer, write a range, shut down), each bounded by a timeout.
//!
//! The TLS side drives a rustls connection by hand rather than through a generic async wrapper:
//! ciphertext is read into one buffer per connection and handed to rustls, plaintext is copied
//! straight into the caller's buffer, and the records rustls produces for one write leave in one
//! send. Splice (zero-copy) needs the bytes to pass through untouched, so it is used only when
//! both ends are plain ([`Stream::tcp`]).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use crate::buf;
use crate::deadline::IoFail;
use crate::deadline::Limit;

/// Ciphertext read from the socket per read: one full TLS record plus its header.
const TLS_READ: usize = 16 * 1024 + 512;

pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// No peer: reads end at once, writes go nowhere. The client of a background cache
    /// refresh, whose answer only the cache wants.
    Sink,
}

pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: rustls::Connection,
    /// Ciphertext from the socket; `rx[rx_pos..]` is not yet given to rustls.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Ciphertext rustls produced, being sent.
    tx: Vec<u8>,
    /// Decrypted bytes rustls holds for us.
    plain: usize,
    /// The peer sent close_notify, or the socket reached end of file.
    closed: bool,
}

/// What is waiting on an idle connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idle {
    /// Nothing: it may carry the next request.
    Quiet,
    /// End of file or an error: the peer closed it.
    Closed,
    /// Bytes no request asked for (over TLS: any record, e.g. a late session ticket).
    Unrequested,
}

/// Why a TLS handshake did not complete.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    Io(IoFail),
    /// The peer closed the connection during the handshake.
    Closed,
    /// The bytes received are a plain HTTP request, not a TLS record.
    PlainHttp,
    Tls(rustls::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "TLS handshake: {e}"),
            Self::Closed => f.write_str("TLS handshake: connection closed by the peer"),
            Self::PlainHttp => f.write_str("TLS handshake: the client sent plain HTTP"),
            Self::Tls(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

impl Stream {
    /// The TCP socket, when no TLS layer sits on it.
    pub(crate) fn tcp(&mut self) -> Option<&mut TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Tls(_) | Self::Sink => None,
        }
    }

    /// Reads once, appending at most `max` bytes to `buf`. 0: the peer closed.
    pub(crate) async fn read_append(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        limit: impl Limit,
    ) -> Result<usize, IoFail> {
        match self {
            Self::Plain(s) => buf::read_append(s, buf, max, limit).await,
            // Boxed here and below: the TLS futures are large, and the plain ones of the
            // request path stay small without them.
            Self::Tls(t) => Box::pin(t.read_append(buf, max, limit)).await,
            Self::Sink => Ok(0),
        }
    }

    /// Reads the next request's first bytes: on a plain socket a read that the deadline
    /// cancels keeps what it had read ([`buf::read_append_or_cancel`]), since the connection
    /// may park and go on, not close.
    pub(crate) async fn read_idle(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: &crate::deadline::Deadline,
        canceller: &mut monoio::io::Canceller,
    ) -> Result<usize, IoFail> {
        match self {
            Self::Plain(s) => buf::read_append_or_cancel(s, buf, deadline, canceller).await,
            _ => self.read_append(buf, usize::MAX, deadline).await,
        }
    }

    /// Writes `buf[range]` completely.
    pub(crate) async fn write_range(
        &mut self,
        buf: &mut Vec<u8>,
        range: std::ops::Range<usize>,
        limit: impl Limit,
    ) -> Result<(), IoFail> {
        match self {
            Self::Plain(s) => buf::write_range(s, buf, range, limit).await,
            Self::Tls(t) => Box::pin(t.write(&buf[range], limit)).await,
            Self::Sink => Ok(()),
        }
    }

    /// Writes all of `buf`.
    pub(crate) async fn write_all(
        &mut self,
        buf: &mut Vec<u8>,
        limit: impl Limit,
    ) -> Result<(), IoFail> {
        let n = buf.len();
        self.write_range(buf, 0..n, limit).await
    }

    /// Writes `head`, then the stored body of a cache hit.
    pub(crate) async fn write_stored(
        &mut self,
        head: &mut Vec<u8>,
        hit: crate::cache::Hit,
        limit: impl Limit,
    ) -> Result<(), IoFail> {
        match self {
            Self::Plain(s) => crate::cache::write_hit(s, head, hit, limit).await,
            Self::Tls(t) => {
                t.write(head, limit).await?;
                t.write(hit.bytes(), limit).await
            }
            Self::Sink => Ok(()),
        }
    }

    /// Ends the sending direction: close_notify first over TLS, then a TCP half-close.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.shutdown().await,
            Self::Sink => Ok(()),
            Self::Tls(t) => {
                t.conn.send_close_notify();
                t.flush(CLOSE_NOTIFY_TIMEOUT).await.map_err(io_error)?;
                t.tcp.shutdown().await
            }
        }
    }

    /// Over TLS, sends close_notify so that the peer can tell the end of the data from a
    /// truncation; nothing for plain TCP. The connection is then simply closed.
    pub(crate) async fn notify_close(&mut self) {
        if let Self::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush(CLOSE_NOTIFY_TIMEOUT).await;
        }
    }

    /// Resolves when the peer of a plain connection has closed it (or reset it); never when
    /// bytes are waiting instead (pipelined requests), nor over TLS. For a request that waits
    /// on something else (a name lookup): a client that left ends its wait.
    pub(crate) async fn closed_by_peer(&self) {
        let Self::Plain(tcp) = self else {
            return std::future::pending().await;
        };
        loop {
            if tcp.readable(false).await.is_err() {
                return;
            }
            match self.idle_state() {
                Idle::Closed => return,
                Idle::Unrequested => return std::future::pending().await,
                Idle::Quiet => {}
            }
        }
    }

    /// What is waiting on an idle connection. A pooled upstream connection is reused only when
    /// it is [`Idle::Quiet`] (see `upstream::Pool`). One non-blocking `recv(MSG_PEEK)`, which
    /// never consumes anything.
    pub(crate) fn idle_state(&self) -> Idle {
        let tcp = match self {
            Self::Sink => return Idle::Closed,
            Self::Plain(s) => s,
            Self::Tls(t) if t.closed => return Idle::Closed,
            Self::Tls(t) if t.plain > 0 || t.rx_pos < t.rx.len() => return Idle::Unrequested,
            Self::Tls(t) => &t.tcp,
        };
        match crate::sys::peek(crate::sys::fd(tcp)) {
            Ok(0) => Idle::Closed,
            Ok(_) => Idle::Unrequested,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Idle::Quiet,
            Err(_) => Idle::Closed,
        }
    }

    /// The TLS version (`TLSv1.3`) and server name the client asked for, over TLS.
    pub(crate) fn tls_info(&self) -> Option<(&'static str, Option<&str>)> {
        let Self::Tls(t) = self else { return None };
        let version = match t.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let sni = match &t.conn {
            rustls::Connection::Server(s) => s.server_name(),
            rustls::Connection::Client(_) => None,
        };
        Some((version, sni))
    }

    /// The verified certificate the TLS client presented: its subject and SHA-256 fingerprint.
    pub(crate) fn client_certificate(&self) -> Option<ringway_core::clientcert::ClientCert> {
        let Self::Tls(t) = self else { return None };
        let leaf = t.conn.peer_certificates()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
        Some(ringway_core::clientcert::ClientCert::new(
            &cert.subject().to_string(),
            digest.as_ref(),
        ))
    }

    /// The protocol ALPN chose, over TLS.
    pub(crate) fn alpn(&self) -> Option<&[u8]> {
        match self {
            Self::Tls(t) => t.conn.alpn_protocol(),
            Self::Plain(_) | Self::Sink => None,
        }
    }

    /// Whether the peer resumed an earlier TLS session (false for plain TCP).
    pub(crate) fn resumed(&self) -> bool {
        match self {
            Self::Plain(_) | Self::Sink => false,
            Self::Tls(t) => matches!(
                t.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            ),
        }
    }
}

const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);

fn io_error(e: IoFail) -> io::Error {
    match e {
        IoFail::Io(e) => e,
        IoFail::Timeout => io::ErrorKind::TimedOut.into(),
    }
}

fn tls_error(e: rustls::Error) -> IoFail {
    IoFail::Io(io::Error::new(io::ErrorKind::InvalidData, e))
}

impl TlsStream {
    /// Runs the handshake of `conn` over `tcp` within `timeout`.
    pub(crate) async fn handshake(
        tcp: TcpStream,
        conn: impl Into<rustls::Connection>,
        timeout: Duration,
        early: Vec<u8>,
    ) -> Result<Self, (HandshakeError, TcpStream)> {
        // Bytes already read off the socket (after a PROXY header) come first.
        let mut rx = early;
        rx.reserve(TLS_READ.saturating_sub(rx.len()));
        let mut t = Self {
            tcp,
            conn: conn.into(),
            rx,
            rx_pos: 0,
            tx: Vec::new(),
            plain: 0,
            closed: false,
        };
        let deadline = Instant::now() + timeout;
        match t.drive_handshake(deadline).await {
            Ok(()) => Ok(t),
            Err(e) => Err((e, t.tcp)),
        }
    }

    async fn drive_handshake(&mut self, deadline: Instant) -> Result<(), HandshakeError> {
        let server = matches!(self.conn, rustls::Connection::Server(_));
        // Bytes read before the handshake (after a PROXY header) are checked like a first read.
        if server && self.rx.first().is_some_and(u8::is_ascii_uppercase) {
            return Err(HandshakeError::PlainHttp);
        }
        let mut first = self.rx.is_empty();
        while self.conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HandshakeError::Io(IoFail::Timeout));
            }
            if self.conn.wants_write() {
                self.flush(left).await.map_err(HandshakeError::Io)?;
                continue;
            }
            if self.rx_pos == self.rx.len() {
                self.rx.clear();
                self.rx_pos = 0;
                let n = buf::read_append(&mut self.tcp, &mut self.rx, TLS_READ, left)
                    .await
                    .map_err(HandshakeError::Io)?;
                if n == 0 {
                    return Err(HandshakeError::Closed);
                }
                // A TLS connection starts with a handshake record (type 22); an HTTP method
                // starts with a letter.
                if server && first && self.rx[0].is_ascii_uppercase() {
                    return Err(HandshakeError::PlainHttp);
                }
                first = false;
            }
            if let Err(e) = self.feed() {
                // rustls queued an alert for the peer: send it before giving up.
                let _ = self.flush(left.min(CLOSE_NOTIFY_TIMEOUT)).await;
                return Err(match e {
                    FeedError::Tls(e) => HandshakeError::Tls(e),
                    FeedError::Io(e) => HandshakeError::Io(IoFail::Io(e)),
                });
            }
            if self.closed && self.conn.is_handshaking() {
                return Err(HandshakeError::Closed);
            }
        }
        // What is still queued: in TLS 1.2 the server's (or client's) last flight, which the
        // peer waits for, so it goes now. A TLS 1.3 server's session tickets are left queued:
        // the client speaks first in HTTP, and they leave with the first response, in the same
        // packet, instead of costing a send (and a wake-up of the client) of their own.
        let tls13_server =
            server && self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        if tls13_server {
            // But the client's Finished is acknowledged now: with nothing to send, the kernel
            // would delay that ACK (40 ms), and a client with Nagle's algorithm on (Java's and
            // Python's sockets by default) holds its request until it comes. One system call;
            // measured with Python's `ssl`: first response 43.8 ms → 1.4 ms.
            crate::sys::quickack(crate::sys::fd(&self.tcp));
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.flush(left.max(Duration::from_millis(1)))
            .await
            .map_err(HandshakeError::Io)
    }

    /// Gives rustls the next part of `rx` and processes it.
    fn feed(&mut self) -> Result<(), FeedError> {
        let mut src = &self.rx[self.rx_pos..];
        let n = self.conn.read_tls(&mut src).map_err(FeedError::Io)?;
        if n == 0 {
            // rustls takes nothing more after close_notify: whatever follows is dropped, and
            // the connection is over (without this, the caller would offer it again forever).
            self.rx_pos = self.rx.len();
            self.closed = true;
            return Ok(());
        }
        self.rx_pos += n;
        let state = self.conn.process_new_packets().map_err(FeedError::Tls)?;
        self.plain = state.plaintext_bytes_to_read();
        self.closed |= state.peer_has_closed();
        Ok(())
    }

    async fn read_append(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        limit: impl Limit,
    ) -> Result<usize, IoFail> {
        // One deadline for the whole call: a peer that trickles partial records must not get a
        // fresh timeout per socket read.
        let limit = limit.fixed();
        loop {
            if self.plain > 0 {
                if buf.capacity() == buf.len() {
                    buf.reserve(4096);
                }
                let len = buf.len();
                let k = self.plain.min(max).min(buf.capacity() - len);
                buf.resize(len + k, 0);
                let n = self
                    .conn
                    .reader()
                    .read(&mut buf[len..])
                    .map_err(IoFail::Io)?;
                buf.truncate(len + n);
                self.plain -= n;
                return Ok(n);
            }
            if self.closed {
                return Ok(0);
            }
            if self.rx_pos < self.rx.len() {
                if let Err(e) = self.feed() {
                    let _ = self.flush(CLOSE_NOTIFY_TIMEOUT).await;
                    return Err(match e {
                        FeedError::Tls(e) => tls_error(e),
                        FeedError::Io(e) => IoFail::Io(e),
                    });
                }
                // Records that carried no data but want an answer (a TLS 1.2 renegotiation
                // request gets a no_renegotiation alert) go now: the peer waits for them, and
                // no response of ours would carry them. Session tickets queued at the end of the
                // handshake still leave with the first response, which the request's data
                // (plaintext) asks for.
                if self.plain == 0 && self.conn.wants_write() {
                    self.flush(limit).await?;
                }
                continue;
            }
            self.rx.clear();
            self.rx_pos = 0;
            let n = buf::read_append(&mut self.tcp, &mut self.rx, TLS_READ, limit).await?;
            if n == 0 {
                // End of file without close_notify: the peer is gone either way.
                self.closed = true;
                return Ok(0);
            }
        }
    }

    async fn write(&mut self, mut data: &[u8], limit: impl Limit) -> Result<(), IoFail> {
        while !data.is_empty() {
            let n = self.conn.writer().write(data).map_err(IoFail::Io)?;
            data = &data[n..];
            self.flush(limit).await?;
        }
        Ok(())
    }

    /// Sends every record rustls has queued.
    async fn flush(&mut self, limit: impl Limit) -> Result<(), IoFail> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.tx).map_err(IoFail::Io)?;
        }
        if self.tx.is_empty() {
            return Ok(());
        }
        let r = buf::write_all(&mut self.tcp, &mut self.tx, limit).await;
        self.tx.clear();
        r
    }
}

/// Without waiting: what the copying tunnel (`tunnel.rs`) uses when a TLS layer sits on either
/// end, so that one task moves bytes both ways, waiting only for the sockets' readiness.
impl TlsStream {
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.tcp
    }

    /// Decrypted bytes into `out`: `Ok(0)` at the end (close_notify or end of file),
    /// `WouldBlock` when the socket has nothing yet.
    pub(crate) fn try_read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain > 0 {
                let n = self.conn.reader().read(out)?;
                self.plain -= n;
                return Ok(n);
            }
            if self.closed {
                return Ok(0);
            }
            if self.rx_pos < self.rx.len() {
                self.feed().map_err(|e| match e {
                    FeedError::Io(e) => e,
                    FeedError::Tls(e) => io::Error::new(io::ErrorKind::InvalidData, e),
                })?;
                // Answers rustls owes the peer (a key update) go as soon as the socket takes them.
                self.try_send()?;
                continue;
            }
            self.rx.clear();
            self.rx.resize(TLS_READ, 0);
            self.rx_pos = 0;
            let r = crate::sys::recv(crate::sys::fd(&self.tcp), &mut self.rx);
            self.rx.truncate(*r.as_ref().unwrap_or(&0));
            if r? == 0 {
                self.closed = true;
                return Ok(0);
            }
        }
    }

    /// Encrypts what rustls takes of `data` (it holds a bounded amount unsent) and sends what
    /// the socket takes: the bytes taken, 0 when rustls is full until [`Self::try_send`] empties
    /// it.
    pub(crate) fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(data)?;
        self.try_send()?;
        Ok(n)
    }

    /// Queues close_notify, the end of this direction.
    pub(crate) fn close_write(&mut self) {
        self.conn.send_close_notify();
    }

    /// Sends queued records as far as the socket takes them: true when none is left.
    pub(crate) fn try_send(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.tx)?;
        }
        while !self.tx.is_empty() {
            match crate::sys::send(crate::sys::fd(&self.tcp), &self.tx) {
                Ok(n) => drop(self.tx.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

enum FeedError {
    Io(io::Error),
    Tls(rustls::Error),
}
