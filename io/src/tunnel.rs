//! CONNECT and WebSocket tunnels: bytes both ways between the client and the destination until
//! both sides have closed, or nothing has moved either way for the idle timeout.
//!
//! Each direction splices socket → pipe → socket (`splice.rs`: called from the worker thread,
//! waiting for readiness through io_uring), so the bytes never enter user space; an end of
//! file on one side half-closes the other (so `Connection: close` protocols and TLS
//! close_notify work through the tunnel), and the tunnel ends when both directions have. A
//! receiver that stops reading ends the tunnel after the idle time too. Tunnels join plain
//! sockets only (the bytes inside are the client's business).

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::splice::{splice, Pipes, Waits};
use crate::stream::Stream;

/// How long a direction waits: until nothing has moved either way for `idle` (`last` is shared
/// by both); counts what it moved.
struct Idle<'a> {
    idle: Duration,
    last: &'a Cell<Instant>,
    moved: Cell<u64>,
}

impl<'a> Idle<'a> {
    fn new(idle: Duration, last: &'a Cell<Instant>) -> Self {
        Self {
            idle,
            last,
            moved: Cell::new(0),
        }
    }
}

impl Waits for Idle<'_> {
    fn read(&self) -> Option<Duration> {
        let left = self.idle.saturating_sub(self.last.get().elapsed());
        (!left.is_zero()).then_some(left)
    }

    fn write(&self) -> Duration {
        self.idle
    }

    fn moved(&self, n: usize) {
        self.last.set(Instant::now());
        self.moved.set(self.moved.get() + n as u64);
    }

    fn retry_read(&self) -> bool {
        true
    }
}

/// Runs the tunnel; returns the bytes moved client → destination and back. `early_up` holds
/// bytes the client sent after its request head, `early_down` bytes the destination sent after
/// its 101 (each goes first).
pub(crate) async fn run(
    client: &Stream,
    up: &Stream,
    early_up: Vec<u8>,
    early_down: Vec<u8>,
    idle: Duration,
    pipes: &Pipes,
) -> (u64, u64) {
    let (Stream::Plain(c), Stream::Plain(u)) = (client, up) else {
        return (0, 0);
    };
    let last = Cell::new(Instant::now());
    let up_dir = direction(c, u, &early_up, Idle::new(idle, &last), pipes);
    let down_dir = direction(u, c, &early_down, Idle::new(idle, &last), pipes);
    monoio::join!(up_dir, down_dir)
}

/// One direction: `early` first, then spliced until end of file, an error or the idle limit;
/// half-closes `to` at the end.
async fn direction(
    from: &TcpStream,
    to: &TcpStream,
    early: &[u8],
    waits: Idle<'_>,
    pipes: &Pipes,
) -> u64 {
    let mut total = 0;
    if write_all(to, early, waits.idle).await.is_ok() {
        total += early.len() as u64;
        if let Ok(pipe) = pipes.take() {
            // An error or the idle limit ends this direction like an end of file; a pipe that
            // may still hold bytes is not reused.
            if splice(from, to, &pipe, None, &waits).await.is_ok() {
                pipes.give(pipe);
            }
        }
    }
    total += waits.moved.get();
    crate::sys::shutdown_write(crate::sys::fd(to));
    total
}

/// Writes all of `data` to a non-blocking socket, waiting for room through io_uring.
async fn write_all(to: &TcpStream, mut data: &[u8], wait: Duration) -> io::Result<()> {
    while !data.is_empty() {
        let e = match crate::sys::send(crate::sys::fd(to), data) {
            Ok(n) => {
                data = &data[n..];
                continue;
            }
            Err(e) => e,
        };
        match e.kind() {
            io::ErrorKind::WouldBlock => {
                monoio::time::timeout(wait, to.writable(true))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            io::ErrorKind::Interrupted => {}
            _ => return Err(e),
        }
    }
    Ok(())
}
