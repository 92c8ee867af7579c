//! Every system call io makes outside monoio and socket2, and every `unsafe` block of the crate,
//! each with the invariant that makes it sound. The rest of io is `deny(unsafe_code)` and calls
//! these safe functions.
//!
//! The invariants, in one place:
//! - A descriptor passed in is open for the duration of the call: it is borrowed from the value
//!   that owns it ([`BorrowedFd`]), which outlives the call.
//! - A buffer passed in is valid for its length: it is a Rust slice.
//! - Descriptors made here are owned at once ([`OwnedFd`]), so each is closed exactly once.
//! - The iovecs of a [`HitBuf`] and a [`GatherBuf`] point into memory the value owns and never
//!   changes while it lives; the arrays are heap blocks, so their addresses do not move with
//!   the value.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use monoio::buf::IoVecBuf;

/// The descriptor of a monoio stream, borrowed for as long as the stream is.
pub(crate) fn fd(s: &monoio::net::TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the stream owns its descriptor and keeps it open while it lives; the borrow is
    // tied to the stream's.
    unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) }
}

pub(crate) fn unix_fd(s: &monoio::net::UnixStream) -> BorrowedFd<'_> {
    // SAFETY: the stream owns its descriptor and keeps it open while it lives; the borrow is
    // tied to the stream's.
    unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) }
}

/// Waits (blocking the calling thread, at most `timeout`) until `fd` is readable: for the
/// admin listener's thread, which must notice new connections at once and shutdown soon.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `p` is one valid pollfd for the duration of the call; the descriptor is open.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe_with(libc::O_NONBLOCK | libc::O_CLOEXEC)
}

/// A blocking, close-on-exec pipe: (read end, write end).
pub(crate) fn blocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe_with(libc::O_CLOEXEC)
}

fn pipe_with(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe of `size` bytes; the system may refuse (the per-user pipe budget), and the
/// default size works too, so the outcome is not reported.
pub(crate) fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on an open descriptor with integer arguments only.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size);
    }
}

/// Makes `fd` non-blocking: one `ioctl(FIONBIO)`, where reading the flags first and then
/// setting them took two `fcntl` calls.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO on an open descriptor takes a pointer to a valid c_int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONBIO, &on) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One non-blocking `splice(2)` of up to `len` bytes between a socket and a pipe.
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null offsets are what
    // splice takes for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Whether a byte waits on the socket, without taking it: `Ok(0)` when the peer closed,
/// `Ok(1)` when one waits, `WouldBlock` when none does.
pub(crate) fn peek(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut b = 0u8;
    // SAFETY: the descriptor is open and `b` is a valid one-byte buffer.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Ends the sending side of a socket.
pub(crate) fn shutdown_write(fd: BorrowedFd<'_>) {
    // SAFETY: the descriptor is open; SHUT_WR only ends the sending side.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR);
    }
}

/// One non-blocking `send(2)` of `data` (no SIGPIPE): the bytes taken.
pub(crate) fn send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    send_flags(fd, data, 0)
}

/// [`send`] with `MSG_MORE`: the kernel holds the bytes for what is sent next (a splice's
/// pages), so that both leave in the same segments, even with `TCP_NODELAY`.
pub(crate) fn send_more(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    send_flags(fd, data, libc::MSG_MORE)
}

fn send_flags(fd: BorrowedFd<'_>, data: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `data` is a valid buffer for its length; the descriptor is open.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | flags,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One non-blocking `recv(2)` into `buf`: the bytes read, 0 at the end of the stream.
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable buffer for its length; the descriptor is open.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One non-blocking `recv(2)` appending at most `max` bytes to `buf`'s spare capacity: the
/// bytes read (0 at the end of the stream, or when there is no room).
pub(crate) fn recv_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    recv_into_spare(fd, buf, max, libc::MSG_DONTWAIT)
}

/// [`recv_append`] with `MSG_PEEK`: the bytes the socket holds, copied and left there.
pub(crate) fn peek_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    recv_into_spare(fd, buf, max, libc::MSG_DONTWAIT | libc::MSG_PEEK)
}

fn recv_into_spare(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(max);
    if want == 0 {
        return Ok(0);
    }
    // SAFETY: the spare capacity is valid for writes of `want` bytes; the descriptor is open.
    let n = unsafe { libc::recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want, flags) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: recv initialised the first `n` bytes of the spare capacity (n <= want).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// The bytes waiting in a socket's receive queue (`FIONREAD`).
pub(crate) fn pending(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: the descriptor is open; `n` is valid for the int FIONREAD writes.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// One `read(2)` from `fd` (a non-blocking pipe) appending at most `max` bytes to `buf`'s
/// spare capacity: the bytes read (0 at the end, or when there is no room).
pub(crate) fn read_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(max);
    if want == 0 {
        return Ok(0);
    }
    // SAFETY: the spare capacity is valid for writes of `want` bytes; the descriptor is open.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: read initialised the first `n` bytes of the spare capacity (n <= want).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// The pending error of a socket (`SO_ERROR`): the outcome of a non-blocking connect.
pub(crate) fn socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor is open; `err` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Raises the soft limit on open files to the hard limit (a proxy holds two descriptors per
/// proxied connection, and a soft limit of 1024 is the usual default): the limits before and
/// after, `(soft, hard)`.
pub(crate) fn raise_open_files() -> io::Result<((u64, u64), (u64, u64))> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = (r.rlim_cur, r.rlim_max);
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: `r` is a valid rlimit; only the soft limit changes, within the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, (r.rlim_cur, r.rlim_max)))
}

/// Sends a delayed ACK now (TCP_QUICKACK), if one is pending.
pub(crate) fn quickack(fd: BorrowedFd<'_>) {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the option; the descriptor is open (borrowed).
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A new epoll instance (for parked connections: parking.rs).
pub(crate) fn epoll() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes no pointer; a non-negative result is a new descriptor.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches `fd` on `ep` for input (or its peer closing), reported with `key`.
pub(crate) fn epoll_add(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>, key: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: key,
    };
    // SAFETY: both descriptors are open (borrowed); `ev` is a valid event for the call.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stops watching `fd` on `ep`.
pub(crate) fn epoll_del(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>) {
    // SAFETY: both descriptors are open (borrowed); DEL ignores the event pointer.
    unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd.as_raw_fd(),
            std::ptr::null_mut(),
        );
    }
}

/// The keys of up to `keys.capacity()` watched descriptors that are ready now (no waiting).
pub(crate) fn epoll_ready(ep: BorrowedFd<'_>, keys: &mut Vec<u64>) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
    // SAFETY: `events` holds 256 entries for the kernel to fill; timeout 0 never blocks.
    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), 256, 0) };
    for e in events.iter().take(n.max(0) as usize) {
        keys.push(e.u64);
    }
}

/// Gives the heap's free memory back to the system (glibc keeps freed small blocks otherwise).
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A hit's head and the stored body, as one vectored write. Owned by the operation until it
/// completes (also when a timeout cancels it), so the kernel never reads freed memory.
pub(crate) struct HitBuf {
    head: Vec<u8>,
    /// Kept alive for the kernel: the second iovec points into its entry's body.
    #[allow(dead_code)]
    hit: crate::cache::Hit,
    /// Boxed so that the array stays put while the value moves.
    iov: Box<[libc::iovec; 2]>,
}

impl HitBuf {
    /// The bytes from offset `off` of head + `body`, where `body` is the stored body's `range`.
    pub(crate) fn new(head: Vec<u8>, hit: crate::cache::Hit, off: usize) -> Self {
        let body = hit.bytes();
        let (h, b) = (head.len(), body.len());
        let (hs, bs) = if off < h { (off, 0) } else { (h, off - h) };
        let iov = Box::new([
            libc::iovec {
                iov_base: head[hs..].as_ptr() as *mut libc::c_void,
                iov_len: h - hs,
            },
            libc::iovec {
                iov_base: body[bs..].as_ptr() as *mut libc::c_void,
                iov_len: b - bs,
            },
        ]);
        Self { head, hit, iov }
    }

    /// The head back, for reuse.
    pub(crate) fn into_head(self) -> Vec<u8> {
        self.head
    }
}

// SAFETY: the iovecs point into `head` and the hit's stored bytes (the entry's body, or an
// encoded copy in a `OnceCell` that is never changed once set), both owned by the value and
// never changed while it lives; the array itself is boxed, so its address is stable.
unsafe impl IoVecBuf for HitBuf {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        2
    }
}

/// What a gathered relay step sends (`Transcoder::step_gathered`) as one `writev`: its pieces,
/// ranges of the relay's input buffer and of its framing buffer, from byte `off` of their
/// concatenation. Both buffers are owned by the value while the kernel reads them.
pub(crate) struct GatherBuf {
    input: Vec<u8>,
    out: Vec<u8>,
    iov: Vec<libc::iovec>,
}

/// Most iovecs one `writev` takes (`IOV_MAX`); the rest go by the next call.
const IOV_MAX: usize = 1024;

impl GatherBuf {
    pub(crate) fn new(
        input: Vec<u8>,
        out: Vec<u8>,
        pieces: &[ringway_core::http::body::Piece],
        mut off: usize,
    ) -> Self {
        use ringway_core::http::body::Piece;
        let mut iov = Vec::with_capacity(pieces.len().min(IOV_MAX));
        for p in pieces {
            let (src, r) = match p {
                Piece::Input(r) => (&input, r),
                Piece::Out(r) => (&out, r),
            };
            if off >= r.len() {
                off -= r.len();
                continue;
            }
            let bytes = &src[r.start + off..r.end];
            off = 0;
            iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
            if iov.len() == IOV_MAX {
                break;
            }
        }
        Self { input, out, iov }
    }

    /// The two buffers back.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Vec<u8>) {
        (self.input, self.out)
    }
}

// SAFETY: the iovecs point into `input` and `out`, whose heap blocks the value owns and never
// changes while it lives (moving a `Vec` does not move its block); the iovec array is a `Vec`'s
// block too, so its address is stable.
unsafe impl IoVecBuf for GatherBuf {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len()
    }
}

/// A duplicate of `fd` that a program this process executes inherits (no close-on-exec): how
/// listening sockets are handed to a new binary. Numbered from 3 up.
pub(crate) fn dup_inheritable(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD) on an open descriptor with an integer argument; no memory.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_DUPFD succeeded: `n` is a new open descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// For a child between fork and exec (`CommandExt::pre_exec`; system calls only, nothing
/// allocated): every descriptor from 3 up is made close-on-exec except `keep`, so the new
/// program inherits only what it is handed. Needed because io_uring's accept (monoio's
/// included) and other descriptors the workers open are not close-on-exec: without it a new
/// binary would hold a copy of every client and upstream connection open at the upgrade, and a
/// connection the old process closed would stay open, unanswered, until the new one exits.
fn close_on_exec_except(keep: &[RawFd]) -> io::Result<()> {
    // SAFETY: close_range(2) with integer arguments; it only changes descriptor flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        // Before Linux 5.11: one at a time, up to the descriptor limit.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let top = lim.rlim_cur.min(1 << 20) as RawFd;
        for fd in 3..top {
            // SAFETY: fcntl on a descriptor number, with integer arguments; a closed one fails.
            unsafe {
                let f = libc::fcntl(fd, libc::F_GETFD);
                if f >= 0 && f & libc::FD_CLOEXEC == 0 {
                    libc::fcntl(fd, libc::F_SETFD, f | libc::FD_CLOEXEC);
                }
            }
        }
    }
    for &fd in keep {
        // SAFETY: as above, on a descriptor the parent opened for the child.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Has the program `cmd` executes inherit only `keep` (and the standard streams).
pub(crate) fn inherit_only(cmd: &mut std::process::Command, keep: Vec<RawFd>) {
    // SAFETY: the closure runs in the forked child before exec and makes system calls only
    // (close_range, getrlimit, fcntl) over a list allocated here, before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || close_on_exec_except(&keep));
    }
}

/// What kind of descriptor a parent handed over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    /// A listening TCP socket.
    Listener,
    /// A pipe (the readiness pipe of an upgrade).
    Pipe,
}

/// Takes ownership of descriptor `n`, which the process that executed this one left open for
/// it (named in an environment variable that is removed once read), if it is open and is what
/// it should be; it is made close-on-exec again.
pub(crate) fn adopt(n: RawFd, kind: Handed) -> Option<OwnedFd> {
    if n < 3 {
        return None;
    }
    // SAFETY: fstat into a zeroed struct we own; an invalid descriptor only makes it fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above: `st` is valid for writes of one `stat`.
    if unsafe { libc::fstat(n, &mut st) } != 0 {
        return None;
    }
    let fmt = st.st_mode & libc::S_IFMT;
    let ok = match kind {
        Handed::Pipe => fmt == libc::S_IFIFO,
        Handed::Listener => {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own.
            let rc = unsafe {
                libc::getsockopt(
                    n,
                    libc::SOL_SOCKET,
                    libc::SO_ACCEPTCONN,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            fmt == libc::S_IFSOCK && rc == 0 && v == 1
        }
    };
    if !ok {
        return None;
    }
    // SAFETY: fcntl(F_SETFD) on an open descriptor with an integer argument.
    unsafe { libc::fcntl(n, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: `n` is open (fstat succeeded), of the kind expected, and was left to this process
    // to own: the variable naming it is read once and removed, so it is adopted once.
    Some(unsafe { OwnedFd::from_raw_fd(n) })
}

/// How many connections wait in a listening TCP socket's accept queue (Linux reports it in
/// `tcpi_unacked` of `TCP_INFO` for a listener, read without the socket lock). `None` where the
/// socket does not say (not TCP). The accept loop takes that many and no more: an `accept4`
/// that finds the queue empty is not free, since Linux allocates the new socket and its file
/// before it looks and frees both on `EAGAIN` (nearly the cost of a successful accept).
pub(crate) fn accept_queued(listener: &impl AsRawFd) -> Option<usize> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the borrow; `info` and `len` are valid for the writes.
    let r = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // include/net/tcp_states.h; `tcpi_unacked` ends at byte 28.
    const TCP_LISTEN: u8 = 10;
    (r == 0 && info.tcpi_state == TCP_LISTEN && len >= 28).then_some(info.tcpi_unacked as usize)
}

/// Takes a connection waiting on a listening socket (nonblocking: `None` when there is none,
/// or another process sharing the socket took it first), close-on-exec and non-blocking, as
/// every accepted socket is (`worker.rs`). Used after the socket was seen readable: waiting
/// for readiness consumes nothing, so a worker that stops listening (a drain) never loses a
/// connection the kernel handed to a cancelled accept.
pub(crate) fn accept_ready(
    listener: &impl AsRawFd,
) -> io::Result<Option<(std::net::TcpStream, std::net::SocketAddr)>> {
    let fd = listener.as_raw_fd();
    // SAFETY: the descriptor is the listener's, open for as long as `listener` is borrowed;
    // `try_init` hands accept4 storage and a length of the right size, and a non-negative
    // result is a new descriptor owned by nothing else.
    let taken = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let r = libc::accept4(
                fd,
                storage.cast(),
                len,
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            );
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(std::net::TcpStream::from_raw_fd(r))
            }
        })
    };
    match taken {
        Ok((s, addr)) => {
            let Some(peer) = addr.as_socket() else {
                return Ok(None);
            };
            Ok(Some((s, peer)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(None),
        Err(e) => Err(e),
    }
}

/// One stored body in pages of its own (`pages.rs`): an anonymous private mapping made for it,
/// written once by [`Mapping::copy_of`] and only read afterwards, unmapped when it is dropped.
/// The kernel may hold references to its pages (a [`vmsplice`] into a pipe, then a socket's
/// send queue) after that; unmapped pages keep their bytes until the last reference goes, and
/// the allocator never hands them to anything else, so what the kernel sends is always the body.
pub(crate) struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    map_len: usize,
}

// SAFETY: the mapping is written only inside `copy_of`, before the value exists; afterwards
// every access is a read, from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for Mapping {}

/// The size of a memory page.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf with a constant name reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(1)
}

impl Mapping {
    /// A new mapping holding a copy of `b` (its pages populated at once, not faulted in one by
    /// one as they are written).
    pub(crate) fn copy_of(b: &[u8], page: usize) -> io::Result<Self> {
        let map_len = b.len().max(1).div_ceil(page) * page;
        // SAFETY: a fresh anonymous mapping; no existing memory is named.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or(io::ErrorKind::OutOfMemory)?;
        // SAFETY: the mapping is `map_len >= b.len()` writable bytes, new, and overlaps nothing.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), ptr.as_ptr(), b.len()) };
        Ok(Self {
            ptr,
            len: b.len(),
            map_len,
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes from `ptr` are mapped, initialised and never written again while
        // the value lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Bytes mapped (whole pages).
    pub(crate) fn map_len(&self) -> usize {
        self.map_len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `copy_of`, unmapped once; no reference into it outlives
        // the value (`bytes` borrows it), and the kernel's own references keep their pages.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_len) };
    }
}

/// Puts `range` of `m`'s bytes into the pipe whose write end is `pipe_w`, by reference
/// (`vmsplice(2)` without copying), non-blocking: the bytes it took (`WouldBlock` when the
/// pipe is full). Safe because of what [`Mapping`] promises: the referenced pages never change.
pub(crate) fn vmsplice(
    pipe_w: BorrowedFd<'_>,
    m: &Mapping,
    range: std::ops::Range<usize>,
) -> io::Result<usize> {
    let b = &m.bytes()[range];
    let iov = libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    };
    // SAFETY: one iovec over mapped, initialised bytes that outlive the call; the pipe keeps
    // page references, which stay valid after an unmap (see `Mapping`).
    let n = unsafe { libc::vmsplice(pipe_w.as_raw_fd(), &iov, 1, libc::SPLICE_F_NONBLOCK) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One `write(2)` of `data` to `fd` (a non-blocking pipe): the bytes taken.
pub(crate) fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid buffer for its length; the descriptor is open.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
