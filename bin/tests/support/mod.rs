//! Test harness: a real origin server on loopback, the real `ringway` binary, raw clients.
//!
//! The origin is deliberately independent of ringway's own code (httparse for heads, its own
//! chunked decoder) so that the tests check ringway against a second implementation.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sum: u64,
    /// The body itself when small (≤ 64 KiB).
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// A loopback HTTP/1.1 origin whose behaviour is chosen by the request path:
/// `/len/N` (N bytes, Content-Length), `/chunked/N`, `/close/N` (close-delimited),
/// `/seq/N/H` (N position-dependent bytes after a head padded by H bytes), `/seqchunked/N/C[/T]`
/// and `/seqclose/N` (the same bytes chunked or close-delimited), `/tag/MODE/T/N/C/D` (bytes
/// that differ by tag, chunked, chunked with extensions (`chunkedx`) or close-delimited, dripped), `/slow/MS`, `/echo`, `/sum` (byte count and sum of the body), `/bad-response`,
/// `/close-after`, `/204`, `/continue` (sends 103 first), `/stray/MS/ID` (`own ID`, then MS ms
/// later an unrequested `stray ID` response), `/interim-flood` (1xx without end); anything
/// else: `ok <path>`.
pub struct Origin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Connections the origin has finished with and closed.
    pub closed: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    killed: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Origin {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// An origin on `addr` (e.g. the address of one that was killed, to bring it back).
    pub fn start_on(addr: SocketAddr) -> Self {
        let l = TcpListener::bind(addr).unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let done = closed.clone();
        let (c, s, k, o) = (
            connections.clone(),
            seen.clone(),
            killed.clone(),
            open.clone(),
        );
        l.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !k.load(Ordering::SeqCst) {
                let stream = match l.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                stream.set_nonblocking(false).unwrap();
                // Head and body are written apart: without this, Nagle's algorithm and the
                // proxy's delayed ACK hold every body 40 ms.
                let _ = stream.set_nodelay(true);
                o.lock().unwrap().push(stream.try_clone().unwrap());
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                let done = done.clone();
                thread::spawn(move || {
                    let closer = stream.try_clone();
                    let _ = serve_origin(stream, &s);
                    // `open` holds another descriptor of this socket: close it for the peer.
                    if let Ok(c) = closer {
                        let _ = c.shutdown(std::net::Shutdown::Both);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            connections,
            closed,
            seen,
            killed,
            open,
        }
    }

    /// Stops listening and resets every open connection, like a crashed server.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until the origin has closed `n` connections.
    pub fn wait_closed(&self, n: usize) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.closed.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < end,
                "origin closed only {} of {n} connections",
                self.closed.load(Ordering::SeqCst)
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Ok(if head.is_empty() { None } else { Some(head) });
        }
        if head.ends_with(b"\r\n\r\n") {
            return Ok(Some(head));
        }
    }
}

/// Reads a chunked body with an independent decoder; calls `f` with each data piece.
fn read_chunked(r: &mut BufReader<TcpStream>, mut f: impl FnMut(&[u8])) -> std::io::Result<()> {
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap().trim(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk line {line:?}")))?;
        if size == 0 {
            loop {
                let mut t = String::new();
                r.read_line(&mut t)?;
                if t == "\r\n" || t.is_empty() {
                    return Ok(());
                }
            }
        }
        let mut buf = vec![0; size];
        r.read_exact(&mut buf)?;
        f(&buf);
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf)?;
        assert_eq!(&crlf, b"\r\n");
    }
}

fn read_exact_stream(
    r: &mut BufReader<TcpStream>,
    mut n: u64,
    mut f: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    while n > 0 {
        let k = r.read(&mut buf[..(n.min(65536) as usize)])?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        f(&buf[..k]);
        n -= k as u64;
    }
    Ok(())
}

/// Header fields as owned (name, value) pairs.
fn owned_headers(hs: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    hs.iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// The first value of header `name` (case-insensitive).
fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The byte at `i` of a `/seq/` body: changes with the position, so a byte lost, repeated or
/// moved shows.
pub fn seq_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// The byte at `i` of a `/tag/` body tagged `tag`: two bodies of different tags differ at
/// every position, so bytes of one response that reach another show.
pub fn tag_byte(tag: u64, i: u64) -> u8 {
    seq_byte(i) ^ (tag as u8)
}

fn write_pattern(w: &mut TcpStream, mut n: u64) -> std::io::Result<()> {
    let chunk = vec![b'x'; 64 * 1024];
    while n > 0 {
        let k = n.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// The chunk sizes of `/mixchunked/`: long ones (spliced), short ones between them (through
/// the buffers), a long chunk right after a short one, and one byte.
pub const MIX_CHUNKS: [u64; 9] = [70_000, 3, 40_000, 33_000, 100, 200_000, 1, 65_536, 32_767];

fn serve_origin(stream: TcpStream, seen: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    while let Some(head) = read_head(&mut r)? {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        req.parse(&head).map_err(std::io::Error::other)?;
        let method = req.method.unwrap().to_string();
        let path = req.path.unwrap().to_string();
        let headers = owned_headers(req.headers);
        let get = |n: &str| header_value(&headers, n).map(str::to_string);
        let mut body_len = 0u64;
        let mut body_sum = 0u64;
        let mut body = Vec::new();
        let mut take = |d: &[u8]| {
            body_len += d.len() as u64;
            body_sum = d
                .iter()
                .fold(body_sum, |a, &b| a.wrapping_add(u64::from(b)));
            if body.len() + d.len() <= 65536 {
                body.extend_from_slice(d);
            }
        };
        if get("transfer-encoding").is_some() {
            read_chunked(&mut r, &mut take)?;
        } else if let Some(cl) = get("content-length") {
            read_exact_stream(&mut r, cl.parse().unwrap(), &mut take)?;
        }
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body_len,
            body_sum,
            body: body.clone(),
        });
        let parts: Vec<&str> = path.split('/').collect();
        let arg = |i: usize| {
            parts
                .get(i)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match parts.get(1).copied().unwrap_or("") {
            "len" => {
                write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", arg(2))?;
                if method != "HEAD" {
                    write_pattern(&mut w, arg(2))?;
                }
            }
            "seq" => {
                // `/seq/N/H`: N bytes whose values follow their position (`seq_byte`), after
                // a head padded with an H-byte field (a head longer than a short first read).
                let pad = "p".repeat(arg(3) as usize);
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nX-Pad: {pad}\r\nContent-Length: {}\r\n\r\n",
                    arg(2)
                )?;
                let body: Vec<u8> = (0..arg(2)).map(seq_byte).collect();
                w.write_all(&body)?;
            }
            "seqchunked" => {
                // `/seqchunked/N/C`: `/seq/` bytes in chunks of C (the last shorter); with a
                // third number T, the origin closes after T bytes of body, mid-chunk
                // (`/seqchunked/N/C/T/stall`: stalls instead, the connection open, until the
                // proxy closes it).
                w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
                let (n, c, cut) = (arg(2), arg(3).max(1), arg(4));
                let body: Vec<u8> = (0..n).map(seq_byte).collect();
                let mut wire = Vec::new();
                for part in body.chunks(c as usize) {
                    write!(wire, "{:x}\r\n", part.len())?;
                    wire.extend_from_slice(part);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n\r\n");
                if cut > 0 {
                    w.write_all(&wire[..cut as usize])?;
                    if parts.get(5) == Some(&"stall") {
                        // Then nothing, with the connection open, until the proxy gives up
                        // and closes it (a stalled origin).
                        w.flush()?;
                        let _ = r.read(&mut [0u8; 1]);
                    }
                    return Ok(());
                }
                w.write_all(&wire)?;
            }
            "tag" => {
                // `/tag/MODE/T/N/C/D`: N bytes of `tag_byte(T, i)`, in chunks of C (MODE
                // `chunked`) or delimited by the close (`close`); with D = 1 the origin gives
                // up its thread after each write, so that the proxy finds the socket empty
                // between pieces more often (a dripping origin, paced by the scheduler).
                let (tag, n, c, drip) = (arg(3), arg(4), arg(5).max(1), arg(6) == 1);
                // `chunkedx`: each size line with an extension, so the proxy re-frames the
                // body through its buffers rather than passing it on unchanged.
                let ext = if parts.get(2) == Some(&"chunkedx") {
                    ";x"
                } else {
                    ""
                };
                let chunked = parts.get(2).is_some_and(|m| m.starts_with("chunked"));
                w.write_all(if chunked {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
                })?;
                let body: Vec<u8> = (0..n).map(|i| tag_byte(tag, i)).collect();
                let mut wire = Vec::with_capacity(body.len() + body.len() / 8 + 16);
                for part in body.chunks(c as usize) {
                    if chunked {
                        write!(wire, "{:x}{ext}\r\n", part.len())?;
                    }
                    wire.extend_from_slice(part);
                    if chunked {
                        wire.extend_from_slice(b"\r\n");
                    }
                }
                if chunked {
                    wire.extend_from_slice(b"0\r\n\r\n");
                }
                // Pieces of C + 3 bytes of the wire: the cuts between writes wander through
                // the framing, so reads end inside size lines and CRLFs.
                for piece in wire.chunks(c as usize + 3) {
                    w.write_all(piece)?;
                    if drip {
                        thread::yield_now();
                    }
                }
                if !chunked {
                    return Ok(());
                }
            }
            "mixchunked" => {
                // `/mixchunked/P[/stray]`: `/seq/` bytes in chunks of mixed sizes, long and
                // short, one with a long extension, ending in a trailer; written in pieces of P
                // bytes (0: at once) so that reads end anywhere in the framing. With `stray`,
                // bytes no request asked for follow the body in the same write.
                w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
                let mut wire = Vec::new();
                let mut at = 0u64;
                for (i, len) in MIX_CHUNKS.iter().enumerate() {
                    write!(wire, "{len:x}")?;
                    if i == 2 {
                        write!(wire, ";name=\"{}\"", "e".repeat(200))?;
                    }
                    wire.extend_from_slice(b"\r\n");
                    wire.extend((at..at + len).map(seq_byte));
                    wire.extend_from_slice(b"\r\n");
                    at += len;
                }
                wire.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
                if parts.get(3) == Some(&"stray") {
                    wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray");
                }
                match arg(2) as usize {
                    0 => w.write_all(&wire)?,
                    p => {
                        for piece in wire.chunks(p) {
                            w.write_all(piece)?;
                            w.flush()?;
                        }
                    }
                }
            }
            "seqclose" => {
                // `/seqclose/N`: `/seq/` bytes delimited by the origin closing.
                w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
                let body: Vec<u8> = (0..arg(2)).map(seq_byte).collect();
                w.write_all(&body)?;
                return Ok(());
            }
            "chunked" => {
                w.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: 1\r\n\r\n",
                )?;
                let mut left = arg(2);
                while left > 0 {
                    let k = left.min(1000);
                    write!(w, "{k:x};ext=1\r\n")?;
                    write_pattern(&mut w, k)?;
                    w.write_all(b"\r\n")?;
                    left -= k;
                }
                w.write_all(b"0\r\nX-Trailer: t\r\n\r\n")?;
            }
            "close" => {
                w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
                write_pattern(&mut w, arg(2))?;
                return Ok(());
            }
            "slow" => {
                thread::sleep(Duration::from_millis(arg(2)));
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")?;
            }
            "echo" => {
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                w.write_all(&body)?;
            }
            "sum" => {
                let s = format!("{body_len} {body_sum}");
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{s}",
                    s.len()
                )?;
            }
            "bad-response" => {
                w.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                )?;
            }
            "close-after" => {
                // A keep-alive response, then the origin closes the idle connection.
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
                w.flush()?;
                thread::sleep(Duration::from_millis(50));
                return Ok(());
            }
            "stray" => {
                // A keep-alive response, then, `arg(2)` ms later, a second complete response on
                // the same connection that no request asked for (a buggy or hostile origin).
                // At 0 ms both go in one write: the stray bytes arrive with the response (a
                // later write could reach the proxy after its next request, when no proxy
                // can tell them from that request's response).
                let id = parts.get(3).copied().unwrap_or("");
                let own = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nown {id}",
                    id.len() + 4
                );
                let stray = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nstray {id}",
                    id.len() + 6
                );
                if arg(2) == 0 {
                    w.write_all(format!("{own}{stray}").as_bytes())?;
                    w.flush()?;
                } else {
                    w.write_all(own.as_bytes())?;
                    w.flush()?;
                    thread::sleep(Duration::from_millis(arg(2)));
                    let _ = w.write_all(stray.as_bytes());
                }
                // Recorded so that a test can wait for it (method "STRAY").
                seen.lock().unwrap().push(Seen {
                    method: "STRAY".into(),
                    path: path.clone(),
                    headers: Vec::new(),
                    body_len: 0,
                    body_sum: 0,
                    body: Vec::new(),
                });
            }
            "interim-flood" => {
                // 1xx responses without end (bounded so the test origin stops by itself).
                for _ in 0..200_000 {
                    if w.write_all(b"HTTP/1.1 102 Processing\r\nX-Pad: 0123456789\r\n\r\n")
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                return Ok(());
            }
            "big-head" => {
                // 40 KB of Set-Cookie: over the default max_response_head.
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")?;
                for i in 0..400 {
                    write!(w, "Set-Cookie: c{i}={}\r\n", "x".repeat(90))?;
                }
                w.write_all(b"\r\nok")?;
            }
            "204" => w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?,
            "continue" => {
                w.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
            }
            _ => {
                // One write: `write!` on the socket would send each piece of the format on its
                // own, and `kill` between two of them cut a response in half (seen once in
                // `fleet_changes_under_load_lose_nothing`, which expects a crash to land
                // between responses).
                let b = format!("ok {path}");
                let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len());
                w.write_all(r.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// The real ringway binary, started on an ephemeral port with a config written for the test.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
    /// Signalled with `log`'s lock held whenever a line is added.
    log_grew: Arc<std::sync::Condvar>,
    pub config: Option<TempFile>,
}

pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn new(contents: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringway-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&p, contents).unwrap();
        Self(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringway")
}

/// A config with one upstream group `app` → `origin`, all paths routed there, and `extra`
/// appended (timeouts, more routes…).
pub fn config_for(origin: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\nshutdown_timeout = \"5s\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n{extra}"
    )
}

impl Proxy {
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// Quick mode (no file) on an ephemeral port with one unpinned worker.
    pub fn start_quick(args: &[&str]) -> Self {
        Self::spawn(
            None,
            &[
                &["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin"],
                args,
            ]
            .concat(),
        )
    }

    /// A SOCKS5 server alone (quick mode, `--socks5`) on an ephemeral port, one worker.
    pub fn start_socks(args: &[&str]) -> Self {
        Self::spawn(
            None,
            &[
                &["--socks5", "127.0.0.1:0", "--workers", "1", "--no-pin"],
                args,
            ]
            .concat(),
        )
    }

    /// Quick mode with exactly `args` (no default listener or worker flags).
    pub fn start_args(args: &[&str]) -> Self {
        Self::spawn(None, args)
    }

    pub fn start_with(config: &str, args: &[&str]) -> Self {
        Self::spawn(Some(TempFile::new(config)), args)
    }

    fn spawn(file: Option<TempFile>, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin());
        if let Some(f) = &file {
            cmd.arg("--config").arg(&f.0);
        }
        // The proxy dials loopback only and resolves no name but localhost: a test can never
        // reach past the machine, and one that tries fails (see `Drop`).
        cmd.env("RINGWAY_LOOPBACK_ONLY", "1");
        // The suite on the epoll driver, as where io_uring is refused (`.ci/run` does this for
        // the proxy's core suites).
        if std::env::var_os("RINGWAY_TEST_EPOLL").is_some() {
            cmd.arg("--no-io-uring");
        }
        // The suite on io_uring with keep-alive connections read one receive per request, as
        // where the kernel refuses the ring of provided buffers.
        if std::env::var_os("RINGWAY_TEST_NO_RECV_RING").is_some()
            && !args.contains(&"--no-recv-ring")
        {
            cmd.arg("--no-recv-ring");
        }
        // The suite with every kept-alive connection parked between its requests (`1ms`).
        if let Some(p) = std::env::var_os("RINGWAY_TEST_PARK") {
            if !args.contains(&"--park") {
                cmd.arg("--park").arg(p);
            }
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringway");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        let log_grew = Arc::new(std::sync::Condvar::new());
        let grew = log_grew.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            let mut tx = Some(tx);
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                // Logged before the address is handed over, so that a test that has the
                // address also sees the line.
                log2.lock().unwrap().push_str(&line);
                grew.notify_all();
                if let Some(i) = line.find("listening on ") {
                    let addr = line[i + 13..].split([',', ' ']).next().unwrap().to_string();
                    if let Some(t) = tx.take() {
                        let _ = t.send(addr);
                    }
                }
                line.clear();
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("ringway did not start: {}", log.lock().unwrap()));
        Self {
            child,
            addr: addr.parse().unwrap(),
            log,
            log_grew,
            config: file,
        }
    }

    /// What the proxy has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log satisfies `done` (woken by each new line, 10 s at most).
    pub fn wait_log(&self, done: impl Fn(&str) -> bool) {
        self.wait_log_for(Duration::from_secs(10), done)
    }

    /// [`wait_log`](Self::wait_log) with another limit.
    pub fn wait_log_for(&self, limit: Duration, done: impl Fn(&str) -> bool) {
        let guard = self.log.lock().unwrap();
        let (guard, timeout) = self
            .log_grew
            .wait_timeout_while(guard, limit, |log| !done(log))
            .unwrap();
        assert!(!timeout.timed_out(), "not seen in the log:\n{}", *guard);
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident set size of the proxy (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("loopback-only: refused")) {
            if !thread::panicking() {
                panic!("the proxy tried to reach past loopback: {line}");
            }
        }
    }
}

/// A parsed response as a client sees it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub body_len: u64,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client over one TCP connection.
pub struct Client {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// A client on a connection made elsewhere (from another local address, say).
    pub fn from_stream(s: TcpStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// Reads one response to a request with `method`. `None` if the connection closed first.
    pub fn response(&mut self, method: &str) -> Option<Response> {
        let head = read_head(&mut self.r).ok()??;
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        resp.parse(&head).expect("valid response head");
        let status = resp.code.unwrap();
        let headers = owned_headers(resp.headers);
        let get = |n: &str| header_value(&headers, n).map(str::to_string);
        let mut body = Vec::new();
        let mut body_len = 0u64;
        let mut take = |d: &[u8]| {
            body_len += d.len() as u64;
            if body.len() < 1 << 20 {
                body.extend_from_slice(d);
            }
        };
        let bodiless =
            method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
        if !bodiless {
            if get("transfer-encoding").is_some() {
                read_chunked(&mut self.r, &mut take).ok()?;
            } else if let Some(cl) = get("content-length") {
                read_exact_stream(&mut self.r, cl.parse().unwrap(), &mut take).ok()?;
            } else {
                let mut rest = Vec::new();
                self.r.read_to_end(&mut rest).ok()?;
                take(&rest);
            }
        }
        Some(Response {
            status,
            headers,
            body,
            body_len,
        })
    }

    /// True when the server closes the connection (EOF or reset) within `limit`.
    /// True when the peer sent something or closed within `limit`; nothing is consumed.
    pub fn readable_within(&mut self, limit: Duration) -> bool {
        if !self.r.buffer().is_empty() {
            return true;
        }
        let s = self.r.get_ref();
        s.set_read_timeout(Some(limit)).unwrap();
        let r = s.peek(&mut [0u8; 1]);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        match r {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.r.get_ref().set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// Reads a 408 that must come before `within` has passed since `since`, then the close that
/// follows it.
pub fn expect_408_then_close(c: &mut Client, since: Instant, within: Duration) {
    assert_eq!(c.response("GET").unwrap().status, 408);
    assert!(since.elapsed() < within, "{:?}", since.elapsed());
    assert!(c.closed_within(Duration::from_secs(5)));
}

/// Sends `req` on a fresh connection and reads one response.
pub fn request(addr: SocketAddr, req: &[u8]) -> Option<Response> {
    let mut c = Client::connect(addr);
    c.send(req);
    let method = std::str::from_utf8(req)
        .ok()
        .and_then(|s| s.split(' ').next())
        .unwrap_or("GET")
        .to_string();
    c.response(&method)
}

/// Runs curl with `args` (which must include the URL); returns (exit ok, stdout).
pub fn curl(args: &[&str]) -> (bool, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--noproxy", "*"])
        .args(args)
        .output()
        .expect("curl is installed (apt-get install curl)");
    if !out.status.success() {
        eprintln!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), out.stdout)
}

/// Keep-alive clients sending `GET path` in a loop until stopped (bounded in time and count),
/// counting 200s and everything else.
pub struct SteadyLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl SteadyLoad {
    pub fn start(addr: SocketAddr, clients: usize, path: &str) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes();
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, req) =
                    (stop.clone(), ok.clone(), failed.clone(), req.clone());
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let end = Instant::now() + Duration::from_secs(30);
                    for _ in 0..500_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > end {
                            break;
                        }
                        c.send(&req);
                        match c.response("GET") {
                            Some(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                c = Client::connect(addr);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the clients; returns (succeeded, failed).
    pub fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The path tricks of the issue, and their encoded cousins, all land on the `/admin` route.
pub const PATHS_TO_ADMIN: &[&str] = &[
    "/admin/",
    "/static/../admin/",
    "//admin/",
    "/%61dmin/",
    "/./admin/",
    "/static/%2e%2e/admin/",
    "/static/.%2e/admin/",
    "/static/%2E%2E/admin/secret",
    "/a/b/../../admin",
    "/ADMIN/../admin/",
    "///admin",
    "/admin?x=1",
];

/// Spellings that no server should be left to interpret.
pub const PATHS_REFUSED: &[&str] = &[
    "/..",
    "/../admin/",
    "/static/../../admin/",
    "/%2e%2e/admin",
    "/static%2f..%2fadmin/",
    "/static%2F..%2Fadmin/",
    "/static\\..\\admin/",
    "/static%5c..%5cadmin/",
    "/static/..;/admin/",
    "/a%00b",
    "/a%0d%0ab",
    "/a%",
    "/a%zz",
    "/a%4",
    "/%c0%ae%c0%ae/admin",
    "/%c0%afadmin",
    "/%e0%80%af",
    "/%ff",
];

/// What the test name server says for a name.
#[derive(Clone, Debug)]
pub enum DnsName {
    /// These addresses (A and AAAA by family).
    Addrs(Vec<std::net::IpAddr>),
    /// These addresses, but over UDP only a truncated answer (TC): the full one over TCP.
    Truncated(Vec<std::net::IpAddr>),
    /// Never answers.
    Silent,
}

type DnsTable = Arc<Mutex<std::collections::HashMap<String, DnsName>>>;

/// A tiny DNS server on loopback (UDP and TCP on one port) that answers from a table the test
/// sets; names not in it are NXDOMAIN. It counts the queries it gets per name.
pub struct DnsServer {
    pub addr: SocketAddr,
    names: DnsTable,
    pub queries: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// The answer to query `q` (`None`: stay silent), over UDP or TCP.
fn dns_answer(
    q: &[u8],
    tcp: bool,
    names: &DnsTable,
    queries: &Mutex<std::collections::HashMap<String, usize>>,
) -> Option<Vec<u8>> {
    let n = q.len();
    if n < 17 {
        return None;
    }
    // The question: labels from offset 12, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    while i < n && q[i] != 0 {
        let l = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + l)?).to_lowercase());
        i += 1 + l;
    }
    let name = labels.join(".");
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let qend = i + 5;
    *queries.lock().unwrap().entry(name.clone()).or_default() += 1;
    let entry = names.lock().unwrap().get(&name).cloned();
    let mut r = q.get(..qend)?.to_vec();
    r[2] = 0x81;
    r[3] = 0x80;
    let ips = match entry {
        Some(DnsName::Silent) => return None,
        None => {
            r[3] |= 3;
            Vec::new()
        }
        Some(DnsName::Truncated(_)) if !tcp => {
            r[2] |= 0x02;
            Vec::new()
        }
        Some(DnsName::Addrs(ips) | DnsName::Truncated(ips)) => ips,
    };
    let answers: Vec<Vec<u8>> = ips
        .iter()
        .filter_map(|ip| match (ip, qtype) {
            (std::net::IpAddr::V4(v4), 1) => Some(v4.octets().to_vec()),
            (std::net::IpAddr::V6(v6), 28) => Some(v6.octets().to_vec()),
            _ => None,
        })
        .collect();
    r[6] = 0;
    r[7] = answers.len() as u8;
    for a in answers {
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        r.extend_from_slice(&(a.len() as u16).to_be_bytes());
        r.extend_from_slice(&a);
    }
    Some(r)
}

impl DnsServer {
    pub fn start() -> Self {
        // The same port for UDP and TCP: a free UDP port may be taken for TCP by another test
        // meanwhile, so another pair is tried then.
        let (sock, tcp) = (0..100)
            .find_map(|_| {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                let tcp = TcpListener::bind(sock.local_addr().ok()?).ok()?;
                Some((sock, tcp))
            })
            .expect("a loopback port free for both UDP and TCP");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let s = Self {
            addr,
            names: Arc::default(),
            queries: Arc::default(),
            stop: Arc::default(),
        };
        let (names, queries, stop) = (s.names.clone(), s.queries.clone(), s.stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                // TCP: one query per connection (what the proxy sends after a truncation).
                if let Ok((mut c, _)) = tcp.accept() {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut len = [0u8; 2];
                    if c.read_exact(&mut len).is_ok() {
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if c.read_exact(&mut q).is_ok() {
                            if let Some(r) = dns_answer(&q, true, &names, &queries) {
                                let mut out = (r.len() as u16).to_be_bytes().to_vec();
                                out.extend_from_slice(&r);
                                let _ = c.write_all(&out);
                            }
                        }
                    }
                }
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(r) = dns_answer(&buf[..n], false, &names, &queries) {
                    let _ = sock.send_to(&r, from);
                }
            }
        });
        s
    }

    pub fn set(&self, name: &str, what: DnsName) {
        self.names.lock().unwrap().insert(name.to_string(), what);
    }

    pub fn queries(&self, name: &str) -> usize {
        self.queries.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The browser on this machine, if any (CI installs Debian's chromium).
pub fn browser() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The browser, or `None` after saying the test is skipped (only outside CI: with
/// `RINGWAY_REQUIRE_BROWSER` set its absence fails the test).
pub fn browser_unless_skipped() -> Option<&'static str> {
    let b = browser();
    if b.is_none() {
        assert!(
            std::env::var_os("RINGWAY_REQUIRE_BROWSER").is_none(),
            "RINGWAY_REQUIRE_BROWSER is set but no chromium is installed"
        );
        eprintln!("skipped: no chromium here (apt-get install chromium; CI requires it)");
    }
    b
}

/// Headless chromium with no traffic of its own (updates, sync, safe browsing…).
pub const QUIET_BROWSER: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    "--metrics-recording-only",
];

/// `GET path` on the admin listener: the body.
/// Waits until `path` holds text that `done` accepts, polling within `limit`; the text.
/// (Access log lines reach their file on the writer thread's schedule: there is no event to
/// wait on from outside the process.)
pub fn file_until(path: &std::path::Path, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < end,
            "{} never matched: {text}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something listens on `port` (a helper started in the background), within
/// `limit`.
pub fn wait_listening(port: u16, limit: Duration) {
    assert!(
        wait_listening_while(port, limit, || true),
        "nothing listens on port {port}"
    );
}

/// Waits until something listens on `port`, within `limit`, for as long as `alive` says the
/// helper that should listen there still runs: false when it stopped first. Nothing tells when
/// another process starts listening, so this polls (every 20 ms) up to its deadline.
pub fn wait_listening_while(port: u16, limit: Duration, mut alive: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if !alive() {
            return false;
        }
        assert!(Instant::now() < end, "nothing listens on port {port}");
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A loopback port free now (for a server whose port must be known before it starts).
pub fn free_port() -> u16 {
    // Below the ephemeral range: a port the kernel hands out for `:0` is also the source port
    // of some other test's next outgoing connection, which took one between the pick and the
    // bind now and then (CI: "cannot listen on 127.0.0.1:42191: Address already in use").
    // Ports under the range are only ever taken by a bind that names them; each test process
    // walks its own sequence of them, checking that each is free.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    const FIRST: usize = 10_000;
    if low <= FIRST + 1000 {
        return std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let span = low - FIRST;
    let start = (std::process::id() as usize).wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n * 97) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port under {low}");
}

pub fn admin_get(admin: std::net::SocketAddr, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let r = request(admin, req.as_bytes()).expect("the admin listener answers");
    assert_eq!(r.status, 200, "{path}");
    r.text()
}

/// The value of the sample `name{labels}` (labels as written, `""` for none).
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

/// Waits (5 s at most) until `/metrics` shows `name{labels}` at `want`. Workers publish their
/// figures every 50 ms, with no event a test could wait on, so this polls at that pace.
pub fn wait_metric(admin: std::net::SocketAddr, name: &str, labels: &str, want: f64) {
    wait_metric_until(
        admin,
        name,
        labels,
        |v| v == want,
        want,
        Duration::from_secs(5),
    );
}

/// Waits (30 s at most: it may wait for hundreds of MB to move) until the sample
/// `name{labels}` is at least `want` (a counter passing a mark).
pub fn wait_metric_at_least(admin: std::net::SocketAddr, name: &str, labels: &str, want: f64) {
    wait_metric_until(
        admin,
        name,
        labels,
        |v| v >= want,
        want,
        Duration::from_secs(30),
    );
}

fn wait_metric_until(
    admin: std::net::SocketAddr,
    name: &str,
    labels: &str,
    done: impl Fn(f64) -> bool,
    want: f64,
    limit: Duration,
) {
    let end = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < end {
        last = sample(&admin_get(admin, "/metrics"), name, labels);
        if last.is_some_and(&done) {
            return;
        }
        thread::sleep(Duration::from_millis(25));
    }
    panic!("{name}{{{labels}}} never reached {want}: {last:?}");
}

pub fn admin_addr(p: &Proxy) -> std::net::SocketAddr {
    p.wait_log(|l| l.contains("admin status on http://"));
    let log = p.log.lock().unwrap().clone();
    let a = log.split("admin status on http://").nth(1).unwrap();
    a.split('/').next().unwrap().parse().unwrap()
}

/// A `redis-server` of the test's own on a free loopback port, nothing saved to disk, ended
/// (by its PID) when dropped. `None` outside CI when Redis is not installed (the test says it
/// is skipped); in CI (`CI` set) its absence fails the test.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    pub fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is needed in CI (apt-get install redis-server)"
            );
            eprintln!("skipped: no redis-server here (apt-get install redis-server)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("ringway-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            port,
            child: None,
            dir,
        };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "redis-server did not answer on {}",
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it outright (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
