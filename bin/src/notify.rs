//! The systemd notification protocol (`sd_notify(3)`), for `Type=notify` units: `READY=1` once
//! listening, `RELOADING=1` … `READY=1` around a reload, `STOPPING=1` when a stop begins. A
//! datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace); nothing when
//! the variable is unset, as outside systemd.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (lines like `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        log::warn!("sd_notify {state:?}: {e}");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), std::path::Path::new(path))?;
        }
    }
    Ok(())
}

/// `RELOADING=1` with the monotonic clock's microseconds, as `Type=notify-reload` wants.
pub fn reloading() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we own; no other memory.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
