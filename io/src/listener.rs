//! Binding the listening sockets, before any worker starts.
//!
//! Every worker gets its own socket per listen address, all bound with SO_REUSEPORT so the
//! kernel balances incoming connections across workers with no shared accept queue. Binding
//! happens on the main thread so that a port already in use is one clear error and a non-zero
//! exit, not a worker dying later.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// A listen address that could not be bound.
#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

const BACKLOG: i32 = 4096;

fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: set once here rather than
    // with one setsockopt per connection.
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s)
}

/// How long a port held by a process that just stopped may take to be free: its io_uring
/// instance, which still references the listening sockets, is torn down by the kernel after
/// the process exits, asynchronously (a restart, as `systemctl restart` does it, would
/// otherwise find the port in use about half the time).
const RESTART_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The probe socket of [`bind_all`]: bound without SO_REUSEPORT, retried while the port is in
/// use for up to [`RESTART_GRACE`].
fn probe(addr: SocketAddr) -> io::Result<Socket> {
    let until = std::time::Instant::now() + RESTART_GRACE;
    loop {
        match socket(addr, false) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Binds `workers` sockets on each address. Returns, per worker, one listener per address.
///
/// A port that another process holds is detected first with a socket that does not set
/// SO_REUSEPORT (which would otherwise let two processes of the same user share the port
/// silently). Port 0 is resolved once and the same port used for every worker.
///
/// Sockets a process being replaced handed over (`inherited`, by the address as configured)
/// are used instead, spread over the workers (a worker may accept on several); workers beyond
/// their number get new sockets in the same SO_REUSEPORT group. Each entry is (index of the
/// address, socket); every worker has at least one per address, in address order.
pub(crate) fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
    inherited: &mut crate::upgrade::Inherited,
) -> Result<Vec<Vec<(usize, TcpListener)>>, BindError> {
    let mut per_worker: Vec<Vec<(usize, TcpListener)>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, &addr) in addrs.iter().enumerate() {
        let fail = |source| BindError { addr, source };
        let handed = inherited.take(&addr.to_string());
        if !handed.is_empty() {
            let addr = handed[0].local_addr().map_err(fail)?;
            let n = handed.len();
            for (j, l) in handed.into_iter().enumerate() {
                per_worker[j % workers].push((i, l));
            }
            for w in per_worker.iter_mut().skip(n) {
                let s = socket(addr, true).map_err(|source| BindError { addr, source })?;
                w.push((i, s.into()));
            }
            continue;
        }
        let mut addr = addr;
        {
            let probe = probe(addr).map_err(fail)?;
            if addr.port() == 0 {
                let local = probe.local_addr().map_err(fail)?;
                addr = local.as_socket().unwrap_or(addr);
            }
            // The probe is closed here, freeing the port for the SO_REUSEPORT group below.
        }
        for w in per_worker.iter_mut() {
            let s = socket(addr, true).map_err(|source| BindError { addr, source })?;
            w.push((i, s.into()));
        }
    }
    Ok(per_worker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn same_port_for_all_workers_and_conflicts_detected() {
        let none = &mut crate::upgrade::Inherited::default();
        let l = bind_all(&["127.0.0.1:0".parse().unwrap()], 3, none).unwrap();
        let port = l[0][0].1.local_addr().unwrap().port();
        assert!(l
            .iter()
            .all(|w| w[0].1.local_addr().unwrap().port() == port));
        // Accepted connections come out with TCP_NODELAY already set.
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let accepted = loop {
            let found = l.iter().find_map(|w| w[0].1.accept().ok());
            if let Some((s, _)) = found {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no connection accepted"
            );
        };
        assert!(accepted.nodelay().unwrap());
        drop(c);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_all(&[addr], 1, none).unwrap_err();
        assert_eq!(e.addr, addr);
        assert!(e
            .to_string()
            .starts_with(&format!("cannot listen on {addr}: ")));
    }

    #[test]
    fn the_accept_queue_is_counted_so_that_no_accept_finds_it_empty() {
        let none = &mut crate::upgrade::Inherited::default();
        let l = bind_all(&["127.0.0.1:0".parse().unwrap()], 1, none).unwrap();
        let listener = &l[0][0].1;
        let port = listener.local_addr().unwrap().port();
        assert_eq!(crate::sys::accept_queued(listener), Some(0));
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        // The handshakes complete in the kernel; the count follows them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::sys::accept_queued(listener) != Some(3) {
            assert!(std::time::Instant::now() < deadline, "3 never queued");
            crate::sys::wait_readable(listener.as_fd(), std::time::Duration::from_millis(10));
        }
        for left in (0..3).rev() {
            let (s, peer) = crate::sys::accept_ready(listener).unwrap().unwrap();
            // Non-blocking from the accept, as the workers and splicing need them.
            assert!(socket2::SockRef::from(&s).nonblocking().unwrap());
            assert_eq!(s.peer_addr().unwrap(), peer);
            assert_eq!(crate::sys::accept_queued(listener), Some(left));
        }
        assert!(crate::sys::accept_ready(listener).unwrap().is_none());
        // A socket that is not a listener gives no count (the loop then takes a batch).
        assert_eq!(crate::sys::accept_queued(&clients[0]), None);
    }

    /// The multishot accept (monoio's copy): each connection comes out once, and a cancel
    /// loses none: what the kernel accepted before it comes out, the rest stays queued for
    /// whoever accepts next (the new process, in a binary upgrade). Dropped with connections
    /// not taken, it closes them.
    #[test]
    fn a_multishot_accept_hands_out_every_connection_and_a_cancel_loses_none() {
        let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        else {
            return; // no io_uring here: the readiness loop is all there is
        };
        let none = &mut crate::upgrade::Inherited::default();
        let l = bind_all(&["127.0.0.1:0".parse().unwrap()], 1, none).unwrap();
        let listener = &l[0][0].1;
        let port = listener.local_addr().unwrap().port();
        let connect = || std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        rt.block_on(async {
            let mut multi = monoio::ringway::AcceptMulti::new(listener).unwrap();
            let clients: Vec<_> = (0..3).map(|_| connect()).collect();
            let mut peers = Vec::new();
            for _ in 0..3 {
                let fd = multi.next().await.unwrap().unwrap();
                let s = std::net::TcpStream::from(fd);
                // Non-blocking from the accept, as the workers and splicing need them.
                assert!(socket2::SockRef::from(&s).nonblocking().unwrap());
                peers.push(s.peer_addr().unwrap());
            }
            let mut ours: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
            ours.sort();
            peers.sort();
            assert_eq!(peers, ours);
            // Cancelled with connections arriving: each is either handed out before the end
            // or still in the listener's queue, where the next accept finds it.
            let late: Vec<_> = (0..4).map(|_| connect()).collect();
            multi.cancel();
            let mut out = 0;
            while let Some(r) = multi.next().await {
                if r.is_ok() {
                    out += 1;
                }
            }
            let mut queued = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while out + queued < late.len() && std::time::Instant::now() < deadline {
                crate::sys::wait_readable(listener.as_fd(), std::time::Duration::from_millis(10));
                while crate::sys::accept_ready(listener).unwrap().is_some() {
                    queued += 1;
                }
            }
            assert_eq!(
                out + queued,
                late.len(),
                "{out} handed out, {queued} queued"
            );
            // Dropped holding a connection the kernel accepted and nobody took: its client
            // sees it closed.
            let mut multi = monoio::ringway::AcceptMulti::new(listener).unwrap();
            let _c = connect();
            let _taken = multi.next().await.unwrap().unwrap();
            let mut orphan = monoio::net::TcpStream::from_std(connect()).unwrap();
            // The kernel takes it off the queue when the ring next runs.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while crate::sys::accept_queued(listener) != Some(0) {
                assert!(std::time::Instant::now() < deadline, "never accepted");
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            drop(multi);
            let read = monoio::time::timeout(
                std::time::Duration::from_secs(5),
                monoio::io::AsyncReadRent::read(&mut orphan, vec![0u8; 1]),
            )
            .await;
            let closed = match read {
                Ok((Ok(0), _)) => true,
                Ok((Err(e), _)) => e.kind() == std::io::ErrorKind::ConnectionReset,
                _ => false,
            };
            assert!(closed, "a connection accepted and not taken was left open");
        });
    }
}
