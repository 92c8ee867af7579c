//! Monoio Uring Driver.

use std::{
    cell::UnsafeCell,
    io,
    mem::ManuallyDrop,
    os::unix::prelude::{AsRawFd, RawFd},
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use io_uring::{cqueue, opcode, types::Timespec, IoUring};
use lifecycle::{After, Lifecycle};

use super::{
    op::{CompletionMeta, Op, OpAble},
    // ready::Ready,
    // scheduled_io::ScheduledIo,
    util::timespec,
    Driver,
    Inner,
    CURRENT,
};
use crate::utils::slab::Slab;

mod lifecycle;
#[cfg(feature = "sync")]
mod waker;
#[cfg(feature = "sync")]
pub(crate) use waker::UnparkHandle;

#[allow(unused)]
pub(crate) const CANCEL_USERDATA: u64 = u64::MAX;
pub(crate) const TIMEOUT_USERDATA: u64 = u64::MAX - 1;
#[allow(unused)]
pub(crate) const EVENTFD_USERDATA: u64 = u64::MAX - 2;
#[cfg(feature = "poll-io")]
pub(crate) const POLLER_USERDATA: u64 = u64::MAX - 3;

pub(crate) const MIN_REVERSED_USERDATA: u64 = u64::MAX - 3;

/// Driver with uring.
pub struct IoUringDriver {
    inner: Rc<UnsafeCell<UringInner>>,

    // Used as timeout buffer
    timespec: *mut Timespec,

    // Used as read eventfd buffer
    #[cfg(feature = "sync")]
    eventfd_read_dst: *mut u8,

    // Used for drop
    #[cfg(feature = "sync")]
    thread_id: usize,
}

pub(crate) struct UringInner {
    /// In-flight operations
    ops: Ops,

    #[cfg(feature = "poll-io")]
    poll: super::poll::Poll,
    #[cfg(feature = "poll-io")]
    poller_installed: bool,

    /// IoUring bindings
    uring: ManuallyDrop<IoUring>,

    /// Shared waker
    #[cfg(feature = "sync")]
    shared_waker: std::sync::Arc<waker::EventWaker>,

    // Mark if eventfd is in the ring
    #[cfg(feature = "sync")]
    eventfd_installed: bool,

    // Waker receiver
    #[cfg(feature = "sync")]
    waker_receiver: flume::Receiver<std::task::Waker>,

    // Uring support ext_arg
    ext_arg: bool,

    /// ringway: the ring of provided buffers multishot receives take from, once set up.
    pbuf: Option<PBufRing>,

    /// ringway: operations a completion asked to cancel, pushed after the completions.
    cancels: Vec<usize>,
}

// When dropping the driver, all in-flight operations must have completed. This
// type wraps the slab and ensures that, on drop, the slab is empty.
struct Ops {
    slab: Slab<Lifecycle>,
}

impl IoUringDriver {
    const DEFAULT_ENTRIES: u32 = 1024;

    pub(crate) fn new(b: &io_uring::Builder) -> io::Result<IoUringDriver> {
        Self::new_with_entries(b, Self::DEFAULT_ENTRIES)
    }

    #[cfg(not(feature = "sync"))]
    pub(crate) fn new_with_entries(
        urb: &io_uring::Builder,
        entries: u32,
    ) -> io::Result<IoUringDriver> {
        let uring = ManuallyDrop::new(urb.build(entries)?);

        let inner = Rc::new(UnsafeCell::new(UringInner {
            #[cfg(feature = "poll-io")]
            poll: super::poll::Poll::with_capacity(entries as usize)?,
            #[cfg(feature = "poll-io")]
            poller_installed: false,
            ops: Ops::new(),
            ext_arg: uring.params().is_feature_ext_arg(),
            uring,
            pbuf: None,
            cancels: Vec::new(),
        }));

        Ok(IoUringDriver {
            inner,
            timespec: Box::leak(Box::new(Timespec::new())) as *mut Timespec,
        })
    }

    #[cfg(feature = "sync")]
    pub(crate) fn new_with_entries(
        urb: &io_uring::Builder,
        entries: u32,
    ) -> io::Result<IoUringDriver> {
        let uring = ManuallyDrop::new(urb.build(entries)?);

        // Create eventfd and register it to the ring.
        let waker = {
            let fd = crate::syscall!(eventfd(0, libc::EFD_CLOEXEC))?;
            unsafe {
                use std::os::unix::io::FromRawFd;
                std::fs::File::from_raw_fd(fd)
            }
        };

        let (waker_sender, waker_receiver) = flume::unbounded::<std::task::Waker>();

        let inner = Rc::new(UnsafeCell::new(UringInner {
            #[cfg(feature = "poll-io")]
            poller_installed: false,
            #[cfg(feature = "poll-io")]
            poll: super::poll::Poll::with_capacity(entries as usize)?,
            ops: Ops::new(),
            ext_arg: uring.params().is_feature_ext_arg(),
            uring,
            pbuf: None,
            cancels: Vec::new(),
            shared_waker: std::sync::Arc::new(waker::EventWaker::new(waker)),
            eventfd_installed: false,
            waker_receiver,
        }));

        let thread_id = crate::builder::BUILD_THREAD_ID.with(|id| *id);
        let driver = IoUringDriver {
            inner,
            timespec: Box::leak(Box::new(Timespec::new())) as *mut Timespec,
            eventfd_read_dst: Box::leak(Box::new([0_u8; 8])) as *mut u8,
            thread_id,
        };

        // Register unpark handle
        super::thread::register_unpark_handle(thread_id, driver.unpark().into());
        super::thread::register_waker_sender(thread_id, waker_sender);
        Ok(driver)
    }

    #[allow(unused)]
    fn num_operations(&self) -> usize {
        let inner = self.inner.get();
        unsafe { (*inner).ops.slab.len() }
    }

    // Flush to make enough space
    fn flush_space(inner: &mut UringInner, need: usize) -> io::Result<()> {
        let sq = inner.uring.submission();
        debug_assert!(sq.capacity() >= need);
        if sq.len() + need > sq.capacity() {
            drop(sq);
            inner.submit()?;
        }
        Ok(())
    }

    #[cfg(feature = "sync")]
    fn install_eventfd(&self, inner: &mut UringInner, fd: RawFd) {
        let entry = opcode::Read::new(io_uring::types::Fd(fd), self.eventfd_read_dst, 8)
            .build()
            .user_data(EVENTFD_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
        inner.eventfd_installed = true;
    }

    #[cfg(feature = "poll-io")]
    fn install_poller(&self, inner: &mut UringInner, fd: RawFd) {
        let entry = opcode::PollAdd::new(io_uring::types::Fd(fd), libc::POLLIN as _)
            .build()
            .user_data(POLLER_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
        inner.poller_installed = true;
    }

    fn install_timeout(&self, inner: &mut UringInner, duration: Duration) {
        let timespec = timespec(duration);
        unsafe {
            std::ptr::replace(self.timespec, timespec);
        }
        let entry = opcode::Timeout::new(self.timespec as *const Timespec)
            .build()
            .user_data(TIMEOUT_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
    }

    fn inner_park(&self, timeout: Option<Duration>) -> io::Result<()> {
        let inner = unsafe { &mut *self.inner.get() };

        #[allow(unused_mut)]
        let mut need_wait = true;

        #[cfg(feature = "sync")]
        {
            // Process foreign wakers
            while let Ok(w) = inner.waker_receiver.try_recv() {
                w.wake();
                need_wait = false;
            }

            // Set status as not awake if we are going to sleep
            if need_wait {
                inner
                    .shared_waker
                    .awake
                    .store(false, std::sync::atomic::Ordering::Release);
            }

            // Process foreign wakers left
            while let Ok(w) = inner.waker_receiver.try_recv() {
                w.wake();
                need_wait = false;
            }
        }

        if need_wait {
            // Install timeout and eventfd for unpark if sync is enabled

            // 1. alloc spaces
            let mut space = 0;
            #[cfg(feature = "sync")]
            if !inner.eventfd_installed {
                space += 1;
            }
            #[cfg(feature = "poll-io")]
            if !inner.poller_installed {
                space += 1;
            }
            if timeout.is_some() {
                space += 1;
            }
            if space != 0 {
                Self::flush_space(inner, space)?;
            }

            // 2.1 install poller
            #[cfg(feature = "poll-io")]
            if !inner.poller_installed {
                self.install_poller(inner, inner.poll.as_raw_fd());
            }

            // 2.2 install eventfd and timeout
            #[cfg(feature = "sync")]
            if !inner.eventfd_installed {
                self.install_eventfd(inner, inner.shared_waker.as_raw_fd());
            }

            // 2.3 install timeout and submit_and_wait with timeout
            if let Some(duration) = timeout {
                match inner.ext_arg {
                    // Submit and Wait with timeout in an TimeoutOp way.
                    // Better compatibility(5.4+).
                    false => {
                        self.install_timeout(inner, duration);
                        inner.uring.submit_and_wait(1)?;
                    }
                    // Submit and Wait with enter args.
                    // Better performance(5.11+).
                    true => {
                        let timespec = timespec(duration);
                        let args = io_uring::types::SubmitArgs::new().timespec(&timespec);
                        if let Err(e) = inner.uring.submitter().submit_with_args(1, &args) {
                            if e.raw_os_error() != Some(libc::ETIME) {
                                return Err(e);
                            }
                        }
                    }
                }
            } else {
                // Submit and Wait without timeout
                inner.uring.submit_and_wait(1)?;
            }
        } else {
            // Submit only
            inner.uring.submit()?;
        }

        // Set status as awake
        #[cfg(feature = "sync")]
        inner
            .shared_waker
            .awake
            .store(true, std::sync::atomic::Ordering::Release);

        // Process CQ
        inner.tick()?;

        Ok(())
    }

    #[cfg(feature = "poll-io")]
    #[inline]
    pub(crate) fn register_poll_io(
        this: &Rc<UnsafeCell<UringInner>>,
        source: &mut impl mio::event::Source,
        interest: mio::Interest,
    ) -> io::Result<usize> {
        let inner = unsafe { &mut *this.get() };
        inner.poll.register(source, interest)
    }

    #[cfg(feature = "poll-io")]
    #[inline]
    pub(crate) fn deregister_poll_io(
        this: &Rc<UnsafeCell<UringInner>>,
        source: &mut impl mio::event::Source,
        token: usize,
    ) -> io::Result<()> {
        let inner = unsafe { &mut *this.get() };
        inner.poll.deregister(source, token)
    }
}

impl Driver for IoUringDriver {
    /// Enter the driver context. This enables using uring types.
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        // TODO(ihciah): remove clone
        let inner = Inner::Uring(self.inner.clone());
        CURRENT.set(&inner, f)
    }

    fn submit(&self) -> io::Result<()> {
        let inner = unsafe { &mut *self.inner.get() };
        inner.submit()?;
        inner.tick()?;
        Ok(())
    }

    fn park(&self) -> io::Result<()> {
        self.inner_park(None)
    }

    fn park_timeout(&self, duration: Duration) -> io::Result<()> {
        self.inner_park(Some(duration))
    }

    #[cfg(feature = "sync")]
    type Unpark = waker::UnparkHandle;

    #[cfg(feature = "sync")]
    fn unpark(&self) -> Self::Unpark {
        UringInner::unpark(&self.inner)
    }
}

impl UringInner {
    fn tick(&mut self) -> io::Result<()> {
        let cq = self.uring.completion();

        for cqe in cq {
            let index = cqe.user_data();
            match index {
                #[cfg(feature = "sync")]
                EVENTFD_USERDATA => self.eventfd_installed = false,
                #[cfg(feature = "poll-io")]
                POLLER_USERDATA => {
                    self.poller_installed = false;
                    self.poll.tick(Some(Duration::ZERO))?;
                }
                _ if index >= MIN_REVERSED_USERDATA => (),
                _ => match self.ops.complete(index as _, resultify(&cqe), cqe.flags()) {
                    After::Nothing => {}
                    After::Recycle(bid) => {
                        if let Some(p) = self.pbuf.as_mut() {
                            p.recycle(bid);
                        }
                    }
                    After::Cancel => self.cancels.push(index as usize),
                },
            }
        }
        // ringway: cancels the completions asked for, pushed once the completion queue is
        // released. Not from inside the loop: a completion may drop an operation's data, and
        // with it a descriptor whose close is pushed through a submission queue of its own,
        // which a queue held across the loop would overwrite when dropped.
        while let Some(index) = self.cancels.pop() {
            let cancel = opcode::AsyncCancel::new(index as u64)
                .build()
                .user_data(CANCEL_USERDATA);
            // SAFETY: the entry names no memory. A full queue leaves the operation running;
            // its next completion asks again.
            if unsafe { self.uring.submission().push(&cancel) }.is_err() {
                if let Some(mut l) = self.ops.slab.get(index) {
                    if let Lifecycle::Receiving(r) = &mut *l {
                        r.cancelling = false;
                    }
                }
            }
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.uring.submit() {
                #[cfg(feature = "unstable")]
                Err(ref e)
                    if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::ResourceBusy) =>
                {
                    self.tick()?;
                }
                #[cfg(not(feature = "unstable"))]
                Err(ref e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) =>
                {
                    // This error is constructed with io::Error::last_os_error():
                    // https://github.com/tokio-rs/io-uring/blob/01c83bbce965d4aaf93ebfaa08c3aa8b7b0f5335/src/sys/mod.rs#L32
                    // So we can use https://doc.rust-lang.org/nightly/std/io/struct.Error.html#method.raw_os_error
                    // to get the raw error code.
                    self.tick()?;
                }
                e => return e.map(|_| ()),
            }
        }
    }

    fn new_op<T>(data: T, inner: &mut UringInner, driver: Inner) -> Op<T> {
        Op {
            driver,
            index: inner.ops.insert(),
            data: Some(data),
        }
    }

    pub(crate) fn submit_with_data<T>(
        this: &Rc<UnsafeCell<UringInner>>,
        data: T,
    ) -> io::Result<Op<T>>
    where
        T: OpAble,
    {
        let inner = unsafe { &mut *this.get() };
        // If the submission queue is full, flush it to the kernel
        if inner.uring.submission().is_full() {
            inner.submit()?;
        }

        // Create the operation
        let mut op = Self::new_op(data, inner, Inner::Uring(this.clone()));

        // Configure the SQE
        let data_mut = unsafe { op.data.as_mut().unwrap_unchecked() };
        let sqe = OpAble::uring_op(data_mut).user_data(op.index as _);

        {
            let mut sq = inner.uring.submission();

            // Push the new operation
            if unsafe { sq.push(&sqe).is_err() } {
                unimplemented!("when is this hit?");
            }
        }

        // Submit the new operation. At this point, the operation has been
        // pushed onto the queue and the tail pointer has been updated, so
        // the submission entry is visible to the kernel. If there is an
        // error here (probably EAGAIN), we still return the operation. A
        // future `io_uring_enter` will fully submit the event.

        // CHIHAI: We are not going to do syscall now. If we are waiting
        // for IO, we will submit on `park`.
        // let _ = inner.submit();
        Ok(op)
    }

    pub(crate) fn poll_op(
        this: &Rc<UnsafeCell<UringInner>>,
        index: usize,
        cx: &mut Context<'_>,
    ) -> Poll<CompletionMeta> {
        let inner = unsafe { &mut *this.get() };
        let lifecycle = unsafe { inner.ops.slab.get(index).unwrap_unchecked() };
        lifecycle.poll_op(cx)
    }

    #[cfg(feature = "poll-io")]
    pub(crate) fn poll_legacy_op<T: OpAble>(
        this: &Rc<UnsafeCell<Self>>,
        data: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<CompletionMeta> {
        let inner = unsafe { &mut *this.get() };
        let (direction, index) = match data.legacy_interest() {
            Some(x) => x,
            None => {
                // if there is no index provided, it means the action does not rely on fd
                // readiness. do syscall right now.
                return Poll::Ready(CompletionMeta {
                    result: OpAble::legacy_call(data),
                    flags: 0,
                });
            }
        };

        // wait io ready and do syscall
        inner
            .poll
            .poll_syscall(cx, index, direction, || OpAble::legacy_call(data))
    }

    pub(crate) fn drop_op<T: 'static>(
        this: &Rc<UnsafeCell<UringInner>>,
        index: usize,
        data: &mut Option<T>,
    ) {
        let inner = unsafe { &mut *this.get() };
        if index == usize::MAX {
            // already finished
            return;
        }
        if let Some(lifecycle) = inner.ops.slab.get(index) {
            let _must_finished = lifecycle.drop_op(data);
            #[cfg(feature = "async-cancel")]
            if !_must_finished {
                unsafe {
                    let cancel = opcode::AsyncCancel::new(index as u64)
                        .build()
                        .user_data(u64::MAX);

                    // Try push cancel, if failed, will submit and re-push.
                    if inner.uring.submission().push(&cancel).is_err() {
                        let _ = inner.submit();
                        let _ = inner.uring.submission().push(&cancel);
                    }
                }
            }
        }
    }

    /// ringway: closes `fd` through the ring with no operation record, so that nothing waits
    /// for its completion and nothing cancels it (monoio's `Op::close`, dropped at once, pushed
    /// an `ASYNC_CANCEL` after every close, which walks the ring's poll, timeout and io-wq
    /// lists). The descriptor stays open, its number not reusable, until the close runs.
    pub(crate) fn close_detached(this: &Rc<UnsafeCell<UringInner>>, fd: std::os::fd::RawFd) {
        let inner = unsafe { &mut *this.get() };
        let close = opcode::Close::new(io_uring::types::Fd(fd))
            .build()
            .user_data(CANCEL_USERDATA);
        // SAFETY: the entry names no memory.
        if unsafe { inner.uring.submission().push(&close) }.is_err() {
            let _ = inner.submit();
            // SAFETY: as above.
            if unsafe { inner.uring.submission().push(&close) }.is_err() {
                unsafe { libc::close(fd) };
            }
        }
    }

    /// ringway: starts a multishot accept on the listening socket `fd` (accepted descriptors
    /// close-on-exec and non-blocking); its record's index.
    pub(crate) fn accept_multi(this: &Rc<UnsafeCell<UringInner>>, fd: RawFd) -> usize {
        let inner = unsafe { &mut *this.get() };
        let index = inner.ops.slab.insert(Lifecycle::Accepting(Box::default()));
        let sqe = opcode::AcceptMulti::new(io_uring::types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(index as u64);
        // SAFETY: the entry names no memory.
        if unsafe { inner.uring.submission().push(&sqe) }.is_err() {
            let _ = inner.submit();
            // SAFETY: as above; a ring just submitted has room.
            let _ = unsafe { inner.uring.submission().push(&sqe) };
        }
        index
    }

    /// ringway: the next of a multishot accept's results; `None` once it has ended.
    pub(crate) fn poll_accept_multi(
        this: &Rc<UnsafeCell<UringInner>>,
        index: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<u32>>> {
        let inner = unsafe { &mut *this.get() };
        let Some(mut lifecycle) = inner.ops.slab.get(index) else {
            return Poll::Ready(None);
        };
        let Lifecycle::Accepting(a) = &mut *lifecycle else {
            return Poll::Ready(None);
        };
        if let Some(r) = a.results.pop_front() {
            return Poll::Ready(Some(r));
        }
        if a.ended {
            return Poll::Ready(None);
        }
        match &a.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => a.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// ringway: asks the kernel to end a multishot accept. Descriptors it accepted before still
    /// come, then the end.
    pub(crate) fn cancel_accept_multi(this: &Rc<UnsafeCell<UringInner>>, index: usize) {
        unsafe { Self::cancel_op(this, index) }
    }

    /// ringway: the owner of a multishot accept is gone. Descriptors queued or still to come
    /// are closed; the record goes with the last completion.
    pub(crate) fn drop_accept_multi(this: &Rc<UnsafeCell<UringInner>>, index: usize) {
        let inner = unsafe { &mut *this.get() };
        let Some(mut lifecycle) = inner.ops.slab.get(index) else {
            return;
        };
        let Lifecycle::Accepting(a) = &mut *lifecycle else {
            return;
        };
        for fd in a.results.drain(..).flatten() {
            // SAFETY: accepted for this record and never handed out.
            unsafe { libc::close(fd as i32) };
        }
        if a.ended {
            lifecycle.remove();
            return;
        }
        a.detached = true;
        a.waker = None;
        unsafe { Self::cancel_op(this, index) }
    }

    /// ringway: sets up the ring of provided buffers that multishot receives take from:
    /// `count` buffers (a power of two) of `size` bytes. False when one is set up already.
    pub(crate) fn recv_ring_init(
        this: &Rc<UnsafeCell<UringInner>>,
        count: u16,
        size: u32,
    ) -> io::Result<bool> {
        let inner = unsafe { &mut *this.get() };
        if inner.pbuf.is_some() {
            return Ok(false);
        }
        let ring = PBufRing::new(count, size)?;
        // SAFETY: the ring's entries and buffers live in `inner.pbuf` until after the ring is
        // unregistered (UringInner's drop).
        unsafe {
            inner
                .uring
                .submitter()
                .register_buf_ring(ring.entries as u64, count, ring.group)?;
        }
        inner.pbuf = Some(ring);
        Ok(true)
    }

    /// ringway: starts a multishot receive on the socket `fd` into the ring's provided
    /// buffers (`once`: a single receive into one of them); its record's index. `None` when
    /// no ring of provided buffers is set up.
    pub(crate) fn recv_multi(
        this: &Rc<UnsafeCell<UringInner>>,
        fd: RawFd,
        once: bool,
    ) -> Option<usize> {
        let inner = unsafe { &mut *this.get() };
        let group = inner.pbuf.as_ref()?.group;
        let index = inner.ops.slab.insert(Lifecycle::Receiving(Box::default()));
        let fd = io_uring::types::Fd(fd);
        let sqe = if once {
            // A length of 0 takes the whole buffer the kernel picks.
            opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                .buf_group(group)
                .build()
                .flags(io_uring::squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(fd, group).build()
        }
        .user_data(index as u64);
        // SAFETY: the entry names no memory of ours; the kernel picks a provided buffer.
        if unsafe { inner.uring.submission().push(&sqe) }.is_err() {
            let _ = inner.submit();
            // SAFETY: as above; a ring just submitted has room.
            let _ = unsafe { inner.uring.submission().push(&sqe) };
        }
        Some(index)
    }

    /// ringway: the next of a multishot receive's results, its bytes appended to `out` and
    /// the buffer given back to the ring; `None` once it has ended. `wait`: register the
    /// task's waker when nothing is queued (else `Pending` registers nothing).
    pub(crate) fn poll_recv_multi(
        this: &Rc<UnsafeCell<UringInner>>,
        index: usize,
        out: &mut Vec<u8>,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<io::Result<usize>>> {
        let inner = unsafe { &mut *this.get() };
        let Some(mut lifecycle) = inner.ops.slab.get(index) else {
            return Poll::Ready(None);
        };
        let Lifecycle::Receiving(r) = &mut *lifecycle else {
            return Poll::Ready(None);
        };
        if let Some((res, bid)) = r.results.pop_front() {
            return Poll::Ready(Some(res.and_then(|n| {
                let n = n as usize;
                let Some(p) = inner.pbuf.as_mut() else {
                    return Err(io::Error::other(
                        "a receive completed without a buffer ring",
                    ));
                };
                // ringway: bytes in a buffer the ring does not have (or in none) would break
                // the kernel's contract; an error for this connection, not a panic of the
                // worker.
                // The buffer goes back to the ring either way (`recycle` ignores an id it does
                // not have).
                let copied = match p.get(bid, n) {
                    Some(held) => {
                        out.extend_from_slice(held);
                        Ok(n)
                    }
                    None if n == 0 => Ok(0),
                    None => Err(io::Error::other(
                        "a receive completed outside the buffer ring",
                    )),
                };
                if bid != u16::MAX {
                    p.recycle(bid);
                }
                copied
            })));
        }
        if r.ended {
            return Poll::Ready(None);
        }
        if let Some(cx) = cx {
            match &r.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => r.waker = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }

    /// ringway: asks the kernel to end a multishot receive. What it received before still
    /// comes, then the end.
    pub(crate) fn cancel_recv_multi(this: &Rc<UnsafeCell<UringInner>>, index: usize) {
        let inner = unsafe { &mut *this.get() };
        if let Some(mut l) = inner.ops.slab.get(index) {
            if let Lifecycle::Receiving(r) = &mut *l {
                if r.ended || r.cancelling {
                    return;
                }
                r.cancelling = true;
            }
        }
        unsafe { Self::cancel_op(this, index) }
    }

    /// ringway: the owner of a multishot receive is gone. Buffers queued or still to come go
    /// back to the ring; the record goes with the last completion.
    pub(crate) fn drop_recv_multi(this: &Rc<UnsafeCell<UringInner>>, index: usize) {
        let inner = unsafe { &mut *this.get() };
        let Some(mut lifecycle) = inner.ops.slab.get(index) else {
            return;
        };
        let Lifecycle::Receiving(r) = &mut *lifecycle else {
            return;
        };
        for (_, bid) in r.results.drain(..) {
            if let (Some(p), true) = (inner.pbuf.as_mut(), bid != u16::MAX) {
                p.recycle(bid);
            }
        }
        if r.ended {
            lifecycle.remove();
            return;
        }
        r.detached = true;
        r.waker = None;
        let cancelling = std::mem::replace(&mut r.cancelling, true);
        if !cancelling {
            unsafe { Self::cancel_op(this, index) }
        }
    }

    pub(crate) unsafe fn cancel_op(this: &Rc<UnsafeCell<UringInner>>, index: usize) {
        let inner = &mut *this.get();
        let cancel = opcode::AsyncCancel::new(index as u64)
            .build()
            .user_data(u64::MAX);
        if inner.uring.submission().push(&cancel).is_err() {
            let _ = inner.submit();
            let _ = inner.uring.submission().push(&cancel);
        }
    }

    #[cfg(feature = "sync")]
    pub(crate) fn unpark(this: &Rc<UnsafeCell<UringInner>>) -> waker::UnparkHandle {
        let inner = unsafe { &*this.get() };
        let weak = std::sync::Arc::downgrade(&inner.shared_waker);
        waker::UnparkHandle(weak)
    }
}

impl AsRawFd for IoUringDriver {
    fn as_raw_fd(&self) -> RawFd {
        unsafe { (*self.inner.get()).uring.as_raw_fd() }
    }
}

impl Drop for IoUringDriver {
    fn drop(&mut self) {
        trace!("MONOIO DEBUG[IoUringDriver]: drop");

        // Dealloc leaked memory
        unsafe { std::ptr::drop_in_place(self.timespec) };

        #[cfg(feature = "sync")]
        unsafe {
            std::ptr::drop_in_place(self.eventfd_read_dst)
        };

        // Deregister thread id
        #[cfg(feature = "sync")]
        {
            use crate::driver::thread::{unregister_unpark_handle, unregister_waker_sender};
            unregister_unpark_handle(self.thread_id);
            unregister_waker_sender(self.thread_id);
        }
    }
}

impl Drop for UringInner {
    fn drop(&mut self) {
        // ringway: no receive may pick a provided buffer once the ring is gone; the buffers'
        // memory goes with `pbuf`, after this.
        if let Some(p) = &self.pbuf {
            let _ = self.uring.submitter().unregister_buf_ring(p.group);
        }
        // no need to wait for completion, as the kernel will clean up the ring asynchronically.
        let _ = self.uring.submitter().submit();
        unsafe {
            ManuallyDrop::drop(&mut self.uring);
        }
    }
}

impl Ops {
    const fn new() -> Self {
        Ops { slab: Slab::new() }
    }

    // Insert a new operation
    pub(crate) fn insert(&mut self) -> usize {
        self.slab.insert(Lifecycle::Submitted)
    }

    fn complete(&mut self, index: usize, result: io::Result<u32>, flags: u32) -> After {
        let lifecycle = unsafe { self.slab.get(index).unwrap_unchecked() };
        lifecycle.complete(result, flags)
    }
}

#[inline]
fn resultify(cqe: &cqueue::Entry) -> io::Result<u32> {
    let res = cqe.result();

    if res >= 0 {
        Ok(res as u32)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}

/// ringway: a ring of provided buffers (`IORING_REGISTER_PBUF_RING`, Linux 5.19) that multishot
/// receives take from. A buffer is the kernel's from when it is in the ring until the
/// completion that names it; then ours until `recycle` puts it back.
pub(crate) struct PBufRing {
    /// `count` entries, page-aligned, shared with the kernel; the tail is in the first.
    entries: *mut io_uring::types::BufRingEntry,
    bufs: *mut u8,
    count: u16,
    size: u32,
    /// Our copy of the tail: entries added so far.
    tail: u16,
    pub(crate) group: u16,
}

impl PBufRing {
    /// The buffer group id: one ring per driver.
    const GROUP: u16 = 0x7277;

    fn layouts(count: u16, size: u32) -> (std::alloc::Layout, std::alloc::Layout) {
        let page = 4096;
        let entries = std::alloc::Layout::from_size_align(
            count as usize * std::mem::size_of::<io_uring::types::BufRingEntry>(),
            page,
        )
        .expect("a ring of provided buffers fits in memory");
        let bufs = std::alloc::Layout::from_size_align(count as usize * size as usize, page)
            .expect("provided buffers fit in memory");
        (entries, bufs)
    }

    fn new(count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || size == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let (le, lb) = Self::layouts(count, size);
        // SAFETY: both layouts have a non-zero size. The buffers' pages are touched only when
        // the kernel first fills them.
        let entries = unsafe { std::alloc::alloc_zeroed(le) } as *mut io_uring::types::BufRingEntry;
        let bufs = unsafe { std::alloc::alloc(lb) };
        if entries.is_null() || bufs.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring = Self {
            entries,
            bufs,
            count,
            size,
            tail: 0,
            group: Self::GROUP,
        };
        for bid in 0..count {
            ring.recycle(bid);
        }
        Ok(ring)
    }

    /// The first `n` bytes of buffer `bid`, which a completion handed to us; `None` when no
    /// such buffer or length exists in the ring.
    fn get(&self, bid: u16, n: usize) -> Option<&[u8]> {
        if bid >= self.count || n > self.size as usize {
            return None;
        }
        // SAFETY: in bounds (above); the kernel wrote `n` bytes there and no longer owns it.
        Some(unsafe {
            std::slice::from_raw_parts(self.bufs.add(bid as usize * self.size as usize), n)
        })
    }

    /// Gives buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let mask = self.count - 1;
        // SAFETY: the slot at the tail is ours to fill (the kernel reads only up to the tail
        // it sees), and `entries` has `count` of them.
        unsafe {
            let e = &mut *self.entries.add((self.tail & mask) as usize);
            e.set_addr(self.bufs.add(bid as usize * self.size as usize) as u64);
            e.set_len(self.size);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = io_uring::types::BufRingEntry::tail(self.entries)
                as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for PBufRing {
    fn drop(&mut self) {
        let (le, lb) = Self::layouts(self.count, self.size);
        // SAFETY: allocated with these layouts in `new`; the ring was unregistered before
        // (UringInner's drop), so the kernel no longer writes into them.
        unsafe {
            std::alloc::dealloc(self.entries as *mut u8, le);
            std::alloc::dealloc(self.bufs, lb);
        }
    }
}
