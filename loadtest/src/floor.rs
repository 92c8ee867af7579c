//! `floor`: the least work a proxy can do, to measure how far from it each proxy is.
//!
//! A single-threaded epoll relay: every accepted connection gets its own upstream connection and
//! bytes move both ways without being parsed (so a client's keep-alive requests all go to its
//! one upstream connection, as a proxy's pooled one would). `--copy` moves them with
//! recv/send through one 64 KiB buffer per direction; `--splice` with splice(2) through a pipe
//! per direction, non-blocking, from the same thread. Edge-triggered: any readiness change on
//! either socket of a pair pumps both directions until they would block.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

const BUF: usize = 64 * 1024;

/// One direction of a pair: bytes from `src` to `dst`.
struct Dir {
    src: RawFd,
    dst: RawFd,
    /// Copy: the buffer and the bytes in it not yet sent (`start..end`).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Splice: the pipe and the bytes in it.
    pipe: Option<(RawFd, RawFd)>,
    pending: usize,
    eof: bool,
    done: bool,
}

impl Dir {
    fn new(src: RawFd, dst: RawFd, splice: bool) -> io::Result<Self> {
        let pipe = if splice {
            let mut fds = [0; 2];
            // SAFETY: `fds` holds two descriptors for pipe2 to fill.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Some((fds[0], fds[1]))
        } else {
            None
        };
        Ok(Self {
            src,
            dst,
            buf: if splice { Vec::new() } else { vec![0; BUF] },
            start: 0,
            end: 0,
            pipe,
            pending: 0,
            eof: false,
            done: false,
        })
    }

    /// Moves what it can; `Err` ends the pair.
    fn pump(&mut self) -> io::Result<()> {
        loop {
            if self.done {
                return Ok(());
            }
            // Send what is held.
            let held = if self.pipe.is_some() {
                self.pending
            } else {
                self.end - self.start
            };
            if held > 0 {
                let n = match self.pipe {
                    Some((r, _)) => splice(r, self.dst, held),
                    None => {
                        // SAFETY: the range is inside `buf`; the descriptor is open.
                        let n = unsafe {
                            libc::send(
                                self.dst,
                                self.buf[self.start..].as_ptr().cast(),
                                held,
                                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                            )
                        };
                        ret(n)
                    }
                };
                match n {
                    Ok(n) => {
                        if self.pipe.is_some() {
                            self.pending -= n;
                        } else {
                            self.start += n;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if self.eof {
                // SAFETY: shutdown of an open descriptor.
                unsafe { libc::shutdown(self.dst, libc::SHUT_WR) };
                self.done = true;
                return Ok(());
            }
            // Nothing held: take more.
            self.start = 0;
            self.end = 0;
            let n = match self.pipe {
                Some((_, w)) => splice(self.src, w, BUF),
                None => {
                    // SAFETY: `buf` is BUF bytes long; the descriptor is open.
                    let n = unsafe {
                        libc::recv(
                            self.src,
                            self.buf.as_mut_ptr().cast(),
                            BUF,
                            libc::MSG_DONTWAIT,
                        )
                    };
                    ret(n)
                }
            };
            match n {
                Ok(0) => self.eof = true,
                Ok(n) if self.pipe.is_some() => self.pending = n,
                Ok(n) => self.end = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

fn ret(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open; null offsets are right for pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    ret(n)
}

struct Pair {
    up: Dir,
    down: Dir,
}

impl Pair {
    fn close(self) {
        for fd in [self.up.src, self.up.dst] {
            // SAFETY: the pair owns both sockets and closes each once.
            unsafe { libc::close(fd) };
        }
        for (r, w) in [self.up.pipe, self.down.pipe].into_iter().flatten() {
            // SAFETY: as above, for the pipes.
            unsafe {
                libc::close(r);
                libc::close(w);
            }
        }
    }
}

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let f = crate::Flags(args);
    let listen = f.addr("--listen")?;
    let upstream = f.addr("--upstream")?;
    let splice = f.has("--splice");
    run(listen, upstream, splice).map_err(|e| e.to_string())
}

fn run(listen: SocketAddr, upstream: SocketAddr, splice: bool) -> io::Result<()> {
    let l = TcpListener::bind(listen)?;
    l.set_nonblocking(true)?;
    let lfd = l.as_raw_fd();
    // SAFETY: epoll_create1 with a valid flag.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    const LISTENER: u64 = u64::MAX;
    add(ep, lfd, LISTENER, libc::EPOLLIN as u32)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: `events` has room for its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            if ev.u64 == LISTENER {
                while let Ok((c, _)) = l.accept() {
                    let Ok(u) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    for s in [&c, &u] {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_nonblocking(true);
                    }
                    let (cfd, ufd) = (c.into_raw_fd(), u.into_raw_fd());
                    let (Ok(up), Ok(down)) =
                        (Dir::new(cfd, ufd, splice), Dir::new(ufd, cfd, splice))
                    else {
                        continue;
                    };
                    let i = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    pairs[i] = Some(Pair { up, down });
                    let flags =
                        (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLRDHUP) as u32;
                    add(ep, cfd, i as u64, flags)?;
                    add(ep, ufd, i as u64, flags)?;
                }
                continue;
            }
            let i = ev.u64 as usize;
            let Some(p) = pairs[i].as_mut() else { continue };
            let ok = p.up.pump().is_ok() && p.down.pump().is_ok();
            if !ok || (p.up.done && p.down.done) {
                if let Some(p) = pairs[i].take() {
                    p.close();
                    free.push(i);
                }
            }
        }
    }
}

fn add(ep: RawFd, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid event for an open descriptor.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
