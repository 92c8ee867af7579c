//! CONNECT tunnels: bytes both ways between the client and the destination until both sides
//! have closed, or nothing has moved either way for the idle timeout.
//!
//! Each direction is a loop of one read and one write through its own buffer; an end of file
//! on one side half-closes the other (so `Connection: close` protocols and TLS close_notify
//! work through the tunnel), and the tunnel ends when both directions have. Tunnels of plain
//! sockets could splice instead; that is the zero-copy issue's work.

use std::cell::Cell;
use std::time::{Duration, Instant};

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::stream::Stream;

/// Bytes each direction reads at once: small while little has moved (many idle tunnels must
/// cost little), large once a direction carries a bulk transfer (4x fewer reads and writes;
/// docs/benchmarks.md run 13).
const TUNNEL_BUF: usize = 16 * 1024;
const TUNNEL_BUF_BULK: usize = 64 * 1024;
/// Bytes a direction moves before it gets the large buffer.
const BULK_AFTER: u64 = 64 * 1024;

/// Runs the tunnel; returns the bytes moved client → destination and back. `early_up` holds
/// bytes the client sent after its request head, `early_down` bytes the destination sent after
/// its 101 (each goes first).
pub(crate) async fn run(
    client: &Stream,
    up: &Stream,
    early_up: Vec<u8>,
    early_down: Vec<u8>,
    idle: Duration,
) -> (u64, u64) {
    // The tunnel works on duplicates of the two sockets, split into halves; the originals are
    // closed by their owners when the exchange ends.
    let (Some(c), Some(u)) = (dup(client), dup(up)) else {
        return (0, 0);
    };
    let (mut cr, mut cw) = c.into_split();
    let (mut ur, mut uw) = u.into_split();
    let last = Cell::new(Instant::now());
    let up_dir = async {
        let n = early_up.len() as u64;
        if !early_up.is_empty() && uw.write_all(early_up).await.0.is_err() {
            let _ = uw.shutdown().await;
            return n;
        }
        n + copy(&mut cr, &mut uw, idle, &last).await
    };
    let down_dir = async {
        let n = early_down.len() as u64;
        if !early_down.is_empty() && cw.write_all(early_down).await.0.is_err() {
            let _ = cw.shutdown().await;
            return n;
        }
        n + copy(&mut ur, &mut cw, idle, &last).await
    };
    monoio::join!(up_dir, down_dir)
}

/// One direction: read, write, until end of file, an error, `idle` with no byte moving either
/// way (`last` is shared by both directions), or a write that waits `idle` for the receiver.
/// Half-closes `to` at the end.
async fn copy(
    from: &mut OwnedReadHalf<TcpStream>,
    to: &mut OwnedWriteHalf<TcpStream>,
    idle: Duration,
    last: &Cell<Instant>,
) -> u64 {
    let mut total = 0u64;
    let mut buf = Vec::with_capacity(TUNNEL_BUF);
    loop {
        let wait = idle.saturating_sub(last.get().elapsed());
        if wait.is_zero() {
            break;
        }
        let (r, b) = match monoio::time::timeout(wait, from.read(buf)).await {
            Ok(x) => x,
            // Nothing this way for a while: go round again, unless nothing moved either way.
            Err(_) => {
                let cap = if total >= BULK_AFTER {
                    TUNNEL_BUF_BULK
                } else {
                    TUNNEL_BUF
                };
                buf = Vec::with_capacity(cap);
                continue;
            }
        };
        buf = b;
        match r {
            Ok(n) if n > 0 => {
                last.set(Instant::now());
                total += n as u64;
                // A receiver that stops reading must not hold the tunnel forever.
                let Ok((w, b)) = monoio::time::timeout(idle, to.write_all(buf)).await else {
                    break;
                };
                buf = b;
                buf.clear();
                if w.is_err() {
                    break;
                }
                if total >= BULK_AFTER && buf.capacity() < TUNNEL_BUF_BULK {
                    buf = Vec::with_capacity(TUNNEL_BUF_BULK);
                }
            }
            _ => break,
        }
    }
    let _ = to.shutdown().await;
    total
}

/// A second descriptor for a plain socket, as its own monoio stream; `None` over TLS (a
/// tunnel's ends are plain sockets: the bytes inside are the client's business).
fn dup(s: &Stream) -> Option<TcpStream> {
    let Stream::Plain(tcp) = s else {
        return None;
    };
    // SAFETY: `tcp` owns an open descriptor; dup(2) gives a new one that nothing else owns,
    // which the std stream then owns and closes.
    let fd = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(tcp)) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh, open descriptor owned by no one else (see above).
    let std = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    TcpStream::from_std(std).ok()
}
