//! A keep-alive client's wait for its next request: a receive into the worker's ring of
//! provided buffers (io_uring).
//!
//! A read of its own posted for a connection that waits holds a buffer until the client sends
//! (a 16 KiB one for each waiting connection). A keep-alive connection instead waits, from its
//! second request on, with a receive (`monoio::ringway::RecvMulti`) that names no buffer: when
//! bytes arrive the kernel takes one from the worker's ring, receives into it and posts a
//! completion; the bytes are copied to the connection's input buffer and the buffer goes back
//! to the ring at once. No connection that waits holds a buffer.
//!
//! Two kinds of receive ([`Receive`]). A multishot one, started once for all the connection's
//! requests: no submission, no receive tried on an empty socket and no poll armed per request
//! (3.0 ring submissions per 100 B request against 4.0, and 3–5% less CPU; docs/benchmarks.md,
//! run 48). But one pass of the kernel's multishot receive takes all that the socket holds: a
//! body sent with its head comes out of the ring in 2 KiB pieces, copied twice where it would
//! have been spliced (64 KiB uploads at 1.7 to 2 times the CPU, run 47). So a connection whose
//! client has sent a body waits with a single receive per request, which takes one buffer
//! (most request heads) and leaves the rest in the socket for the connection's own reads: more
//! of a long head, or a body to splice. Its first body still came through the multishot
//! receive, once.
//!
//! While it runs it is the only reader of the socket: before anything else reads the client
//! (a body, a tunnel, the lingering close, the check that a client waiting for a name lookup is
//! still there), [`settle`] cancels it and appends what it had received to the input buffer,
//! which those readers take first anyway. A multishot receive also ends by itself at the
//! client's end of stream, on an error, and when four results wait untaken (a client sending
//! while its request is served); the next read starts another. When the ring has no free
//! buffer (`ENOBUFS`: more bytes arrived in one turn of the worker than the ring has buffers)
//! the read goes the old way, counted in `ringway_recv_ring_exhausted`; the ring's size bounds
//! what clients that send much while their requests are served (a pipelined flood) hold.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use monoio::net::TcpStream;
use monoio::ringway::RecvMulti;

use crate::deadline::{Deadline, IoFail};

/// The size of each buffer in a worker's ring (`server.recv_ring_buffers` of them, 512 by
/// default: 1 MiB, touched only as the kernel fills them). A request head of up to 2 KiB
/// arrives in one.
pub(crate) const RING_BUF_SIZE: u32 = 2048;

/// Sets up the worker's ring of `count` provided buffers (io_uring only; `server.recv_ring`).
/// False when the kernel refuses it (before Linux 5.19) or the worker runs on epoll.
pub(crate) fn set_up(id: usize, count: u16) -> bool {
    match monoio::ringway::recv_ring(count, RING_BUF_SIZE) {
        Ok(ok) => ok,
        Err(e) => {
            if id == 0 {
                log::warn!("io_uring refused a ring of provided buffers ({e}); keep-alive connections wait for their next request with a buffer of their own");
            }
            false
        }
    }
}

/// Why a read did not go through the ring: the caller reads the socket itself.
#[derive(Debug, PartialEq)]
pub(crate) enum Elsewhere {
    /// The receive could not start (no ring on this driver).
    Unavailable,
    /// The ring had no free buffer (`ENOBUFS`); counted in `ringway_recv_ring_exhausted`.
    RingEmpty,
}

/// Which receive a connection waits with (see the module's comment).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Receive {
    /// One multishot receive for every request of the connection, kept between them.
    Multishot,
    /// A single receive per wait, one buffer: for clients that send bodies.
    Once,
}

std::thread_local! {
    /// Whether this worker's kernel takes multishot receives (Linux 6.0; the ring of provided
    /// buffers and single receives into it came in 5.19): learnt from the first one it refuses.
    static MULTISHOT: Cell<bool> = const { Cell::new(true) };
}

/// The kernel refused a multishot receive (`EINVAL`, before Linux 6.0): this worker's
/// connections wait with single receives from now on, said once in the log.
fn multishot_refused(e: &std::io::Error) {
    static SAID: AtomicBool = AtomicBool::new(false);
    MULTISHOT.with(|m| m.set(false));
    if !SAID.swap(true, Ordering::Relaxed) {
        log::warn!("io_uring refused a multishot receive ({e}); keep-alive connections wait with a single receive into the ring per request");
    }
}

/// Reads the client's next bytes into `buf` through `reader`, started as `how` says if there
/// is none (a single receive where the kernel refuses multishot ones), until `deadline`; a
/// single receive has ended when it returns them, a multishot one goes on. When the deadline
/// passes, the receive is cancelled and what it had received is kept: `IoFail::Timeout` only
/// when that was nothing, and the reader is then gone, so that the socket can be parked.
pub(crate) async fn read(
    reader: &mut Option<RecvMulti>,
    mut how: Receive,
    tcp: &TcpStream,
    buf: &mut Vec<u8>,
    deadline: &Deadline,
) -> Result<Result<usize, IoFail>, Elsewhere> {
    if how == Receive::Multishot && !MULTISHOT.with(Cell::get) {
        how = Receive::Once;
    }
    loop {
        let r = match reader {
            Some(r) => r,
            None => {
                let started = match how {
                    Receive::Multishot => RecvMulti::new(tcp),
                    Receive::Once => RecvMulti::once(tcp),
                };
                reader.insert(started.ok_or(Elsewhere::Unavailable)?)
            }
        };
        let got = monoio::select! {
            got = r.read(buf) => Some(got),
            _ = deadline.elapsed() => None,
        };
        let Some(got) = got else {
            let n = settle(reader, buf).await;
            return Ok(if n > 0 { Ok(n) } else { Err(IoFail::Timeout) });
        };
        match got {
            Some(Ok(n)) => {
                // A single receive ends with its one result (were it kept, the next read would
                // find it ended and start another).
                if how == Receive::Once {
                    *reader = None;
                }
                return Ok(Ok(n));
            }
            Some(Err(e)) => match e.raw_os_error() {
                // The ring had no free buffer: this read goes the old way; the next starts
                // another receive.
                Some(libc::ENOBUFS) => {
                    *reader = None;
                    return Err(Elsewhere::RingEmpty);
                }
                // Ended by the driver (four results were waiting): start another.
                Some(libc::ECANCELED) => *reader = None,
                // A kernel without multishot receives (its first and only result): this read
                // and the next ones go by single receives.
                Some(libc::EINVAL) if how == Receive::Multishot => {
                    multishot_refused(&e);
                    *reader = None;
                    how = Receive::Once;
                }
                _ => {
                    *reader = None;
                    return Ok(Err(IoFail::Io(e)));
                }
            },
            // Ended: start another.
            None => *reader = None,
        }
    }
}

/// Ends `reader`, if there is one, appending to `buf` everything it had received; the bytes
/// appended. After it, the socket may be read, spliced or parked.
pub(crate) async fn settle(reader: &mut Option<RecvMulti>, buf: &mut Vec<u8>) -> usize {
    let Some(mut r) = reader.take() else {
        return 0;
    };
    r.cancel();
    let mut n = 0;
    // An error or the end of stream among them is what the next read of the socket finds
    // again.
    while let Some(got) = r.read(buf).await {
        if let Ok(k) = got {
            n += k;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// A runtime on io_uring with a ring of `count` provided buffers of `size` bytes; `None`
    /// where the kernel has neither (the suite's epoll pass covers the other path).
    fn runtime(
        count: u16,
        size: u32,
    ) -> Option<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .ok()?;
        rt.block_on(async { monoio::ringway::recv_ring(count, size) })
            .ok()
            .filter(|&ok| ok)?;
        Some(rt)
    }

    /// A connected pair: the client's blocking std socket, the server's monoio stream. The
    /// client sends each write at once (no Nagle: a small write behind unacknowledged bytes
    /// would wait for the server's delayed ACK).
    fn pair() -> (std::net::TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.set_nodelay(true).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, TcpStream::from_std(s).unwrap())
    }

    /// A receive of the socket itself (non-blocking), appending up to `max` bytes.
    fn recv_more(tcp: &TcpStream, got: &mut Vec<u8>, max: usize) -> usize {
        got.reserve(max);
        crate::sys::recv_append(crate::sys::fd(tcp), got, max).unwrap_or(0)
    }

    fn far() -> Deadline {
        Deadline::new(Instant::now() + Duration::from_secs(10))
    }

    /// Reads until `want` bytes are in `got`: through the receive, or the socket itself when
    /// the ring is empty (as the connection does); how many reads went the other way.
    async fn read_until(
        reader: &mut Option<RecvMulti>,
        how: Receive,
        tcp: &TcpStream,
        got: &mut Vec<u8>,
        want: usize,
    ) -> usize {
        let mut elsewhere = 0;
        while got.len() < want {
            match read(reader, how, tcp, got, &far()).await {
                Ok(Ok(n)) => assert!(n > 0, "end of stream after {} of {want}", got.len()),
                Ok(Err(e)) => panic!("{e:?}"),
                Err(Elsewhere::Unavailable) => panic!("no receive"),
                Err(Elsewhere::RingEmpty) => {
                    elsewhere += 1;
                    recv_more(tcp, got, want - got.len());
                }
            }
        }
        elsewhere
    }

    /// One connection, a ring of four 64-byte buffers, 400 messages of 1 to 300 bytes: every
    /// byte arrives once and in order while each buffer goes round the ring hundreds of times,
    /// through either kind of receive.
    #[test]
    fn a_connection_reads_every_byte_in_order_across_many_ring_refills() {
        let Some(mut rt) = runtime(4, 64) else {
            return;
        };
        rt.block_on(async {
            for how in [Receive::Multishot, Receive::Once] {
                let (mut client, server) = pair();
                let mut reader = None;
                let (mut sent, mut got) = (Vec::new(), Vec::new());
                for i in 0..400usize {
                    let msg: Vec<u8> = (0..1 + i * 37 % 300).map(|k| (i + k) as u8).collect();
                    client.write_all(&msg).unwrap();
                    sent.extend_from_slice(&msg);
                    read_until(&mut reader, how, &server, &mut got, sent.len()).await;
                }
                assert_eq!(got, sent, "{how:?}");
                assert!(sent.len() > 64 * 4 * 100, "{} bytes", sent.len());
                // A multishot receive goes on between reads; a single one has ended.
                assert_eq!(reader.is_some(), how == Receive::Multishot);
                // The client's end of stream is a read of 0.
                drop(client);
                let r = read(&mut reader, how, &server, &mut got, &far()).await;
                assert!(matches!(r, Ok(Ok(0))), "{how:?}: {r:?}");
            }
        });
    }

    /// Where the kernel refuses multishot receives (before Linux 6.0, with the ring of 5.19), a
    /// read asked for one waits with a single receive, which ends with its result, and every
    /// byte still arrives. (The refusal is simulated: this kernel takes them.)
    #[test]
    fn a_worker_whose_kernel_refuses_multishot_receives_waits_with_single_ones() {
        let Some(mut rt) = runtime(4, 64) else {
            return;
        };
        rt.block_on(async {
            let (mut client, server) = pair();
            let mut reader = None;
            client.write_all(b"first").unwrap();
            let mut got = Vec::new();
            read_until(&mut reader, Receive::Multishot, &server, &mut got, 5).await;
            assert!(reader.is_some(), "a multishot receive goes on");
            settle(&mut reader, &mut got).await;
            multishot_refused(&std::io::Error::from_raw_os_error(libc::EINVAL));
            let sent: Vec<u8> = (0..1000).map(|k| (k % 241) as u8).collect();
            client.write_all(&sent).unwrap();
            let r = read(&mut reader, Receive::Multishot, &server, &mut got, &far()).await;
            assert!(matches!(r, Ok(Ok(n)) if n <= 64), "{r:?}");
            assert!(reader.is_none(), "a single receive ends with its result");
            read_until(&mut reader, Receive::Multishot, &server, &mut got, 1005).await;
            assert_eq!(&got[..5], b"first");
            assert_eq!(&got[5..], &sent[..]);
            MULTISHOT.with(|m| m.set(true));
        });
    }

    /// Reads `b`, which sends a few bytes each time, until its read is told that the ring is
    /// empty; the bytes then stayed in the socket.
    async fn read_until_the_ring_is_empty(cb: &mut std::net::TcpStream, b: &TcpStream) {
        let mut rb = None;
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            cb.write_all(b"hello").unwrap();
            let mut got = Vec::new();
            let r = read(&mut rb, Receive::Once, b, &mut got, &far()).await;
            if matches!(r, Err(Elsewhere::RingEmpty)) {
                crate::sys::wait_readable(crate::sys::fd(b), Duration::from_secs(5));
                recv_more(b, &mut got, 64);
                assert_eq!(got, b"hello");
                return;
            }
            assert!(matches!(r, Ok(Ok(5))), "{r:?}");
            assert_eq!(got, b"hello");
            assert!(Instant::now() < until, "the ring never ran out");
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// One pass of a multishot receive takes all that the socket holds: a connection that sent
    /// 5,000 bytes nobody reads holds the ring's four buffers, another connection's read is
    /// told so and reads its socket itself, and nothing of either is lost.
    #[test]
    fn a_multishot_receive_can_hold_the_whole_ring_and_loses_nothing() {
        let Some(mut rt) = runtime(4, 64) else {
            return;
        };
        rt.block_on(async {
            let (mut ca, a) = pair();
            let (mut cb, b) = pair();
            let mut ra = Some(RecvMulti::new(&a).unwrap());
            let sent_a: Vec<u8> = (0..5000).map(|k| (k % 251) as u8).collect();
            ca.write_all(&sent_a).unwrap();
            read_until_the_ring_is_empty(&mut cb, &b).await;
            let mut got_a = Vec::new();
            read_until(&mut ra, Receive::Multishot, &a, &mut got_a, sent_a.len()).await;
            assert_eq!(got_a, sent_a);
            // The buffers are back: `b` reads through the ring again.
            cb.write_all(b"again").unwrap();
            let (mut rb, mut got) = (None, Vec::new());
            let elsewhere = read_until(&mut rb, Receive::Once, &b, &mut got, 5).await;
            assert_eq!((elsewhere, got.as_slice()), (0, &b"again"[..]));
        });
    }

    /// Connections whose bytes arrived and wait to be taken hold a buffer each: when they hold
    /// the whole ring, another connection's read is told so and reads its socket itself, and
    /// nothing of any of them is lost. Each receive takes one buffer, however much was sent.
    #[test]
    fn an_empty_ring_sends_reads_the_other_way_and_loses_nothing() {
        let Some(mut rt) = runtime(4, 64) else {
            return;
        };
        rt.block_on(async {
            let mut held = Vec::new();
            for i in 0..4u8 {
                let (mut c, s) = pair();
                let r = Some(RecvMulti::once(&s).unwrap());
                let sent: Vec<u8> = (0..5000).map(|k| (k % 251) as u8 ^ i).collect();
                c.write_all(&sent).unwrap();
                held.push((c, s, r, sent));
            }
            let (mut cb, b) = pair();
            // Nobody takes the four results: they hold the ring's four buffers.
            read_until_the_ring_is_empty(&mut cb, &b).await;
            for (_c, s, mut r, sent) in held {
                let mut got = Vec::new();
                // The first read takes the one buffer its receive filled; the rest was left
                // in the socket for the reads after it.
                let first = read(&mut r, Receive::Once, &s, &mut got, &far()).await;
                assert!(matches!(first, Ok(Ok(64))), "{first:?}");
                assert!(r.is_none(), "a receive ends with its one result");
                let fd = crate::sys::fd(&s);
                while got.len() < sent.len() {
                    assert!(crate::sys::wait_readable(fd, Duration::from_secs(5)));
                    let want = sent.len() - got.len();
                    recv_more(&s, &mut got, want);
                }
                assert_eq!(got, sent);
            }
            // The buffers are back: `b` reads through the ring again.
            cb.write_all(b"again").unwrap();
            let mut got = Vec::new();
            let mut rb = None;
            assert_eq!(read_until(&mut rb, Receive::Once, &b, &mut got, 5).await, 0);
            assert_eq!(got, b"again");
        });
    }

    /// Settling a receive while the client sends: what the receive had is appended, the rest
    /// is still in the socket; together, every byte once and in order. A receive dropped with
    /// results untaken gives their buffers back.
    #[test]
    fn a_settled_or_dropped_receive_loses_no_byte_and_no_buffer() {
        let Some(mut rt) = runtime(8, 64) else {
            return;
        };
        rt.block_on(async {
            let (mut client, server) = pair();
            let sent: Vec<u8> = (0..20_000).map(|k| (k % 253) as u8).collect();
            let writer = {
                let sent = sent.clone();
                std::thread::spawn(move || {
                    for c in sent.chunks(100) {
                        client.write_all(c).unwrap();
                    }
                    client
                })
            };
            let mut reader = None;
            let mut got = Vec::new();
            read_until(&mut reader, Receive::Multishot, &server, &mut got, 1000).await;
            let n = got.len();
            let appended = settle(&mut reader, &mut got).await;
            assert_eq!(got.len(), n + appended);
            assert!(reader.is_none());
            let fd = crate::sys::fd(&server);
            while got.len() < sent.len() {
                assert!(crate::sys::wait_readable(fd, Duration::from_secs(5)));
                let want = sent.len() - got.len();
                recv_more(&server, &mut got, want);
            }
            assert_eq!(got, sent);
            let mut client = writer.join().unwrap();
            // Dropped holding results: their buffers go back to the ring. One pass of the
            // receive takes the 400 bytes (7 buffers); the first result taken says it ran, and
            // the other six are queued when it is dropped.
            let mut r = Some(RecvMulti::new(&server).unwrap());
            client.write_all(&[7; 400]).unwrap();
            let until = Instant::now() + Duration::from_secs(5);
            let mut first = Vec::new();
            loop {
                match r.as_mut().unwrap().try_read(&mut first) {
                    Ok(Some(Ok(n))) if n > 0 => break,
                    Err(()) => {
                        assert!(Instant::now() < until, "nothing received");
                        monoio::time::sleep(Duration::from_millis(1)).await;
                    }
                    other => panic!("{other:?}"),
                }
            }
            drop(r.take());
            let mut rest = Vec::new();
            while recv_more(&server, &mut rest, 400) > 0 {}
            // Eight buffers of 64 bytes for 8 x 64 bytes, none of them lost to the drop.
            client.write_all(&[9; 512]).unwrap();
            let mut got = Vec::new();
            assert_eq!(
                read_until(&mut r, Receive::Multishot, &server, &mut got, 512).await,
                0
            );
            assert_eq!(got, [9; 512]);
        });
    }
}
