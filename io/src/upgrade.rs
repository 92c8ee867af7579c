//! Binary upgrades with no dropped connection (nginx's SIGUSR2): the running process executes
//! the binary now at its path with the same arguments, handing it its listening sockets
//! (duplicates without close-on-exec, named in `RINGWAY_INHERIT`) and a pipe
//! (`RINGWAY_READY_FD`). The new process takes the sockets instead of binding (the same sockets:
//! connections waiting in their queues are accepted by it), starts, and writes `ready` to the
//! pipe. Only then does the old one drain and exit, keeping its tunnels and WebSockets until
//! they end or `shutdown_timeout`. A new process that exits, or does not report within the
//! wait, is stopped and the old one goes on serving.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sys::{adopt, dup_inheritable, Handed};

const INHERIT_ENV: &str = "RINGWAY_INHERIT";
const READY_ENV: &str = "RINGWAY_READY_FD";

/// What a process replacing another was handed.
#[derive(Default)]
pub struct Inherited {
    /// By key: a listen address as configured (`127.0.0.1:8080`), or `admin`.
    sockets: HashMap<String, Vec<OwnedFd>>,
    ready: Option<OwnedFd>,
}

impl Inherited {
    /// Reads the handover from the environment and removes it from there (so that a later
    /// upgrade of this process starts clean). Call once, at start, before any thread exists.
    pub fn from_env() -> Self {
        let mut me = Self::default();
        if let Some(list) = std::env::var_os(INHERIT_ENV) {
            std::env::remove_var(INHERIT_ENV);
            for item in list.to_string_lossy().split(';').filter(|s| !s.is_empty()) {
                let Some((key, n)) = item.rsplit_once('=') else {
                    continue;
                };
                let Some(fd) = n.parse().ok().and_then(|n| adopt(n, Handed::Listener)) else {
                    log::warn!("upgrade: descriptor {n} for {key} is not a listening socket");
                    continue;
                };
                me.sockets.entry(key.to_string()).or_default().push(fd);
            }
        }
        if let Some(n) = std::env::var_os(READY_ENV) {
            std::env::remove_var(READY_ENV);
            me.ready = n
                .to_string_lossy()
                .parse()
                .ok()
                .and_then(|n| adopt(n, Handed::Pipe));
        }
        me
    }

    /// Whether this process replaces another.
    pub fn is_upgrade(&self) -> bool {
        self.ready.is_some()
    }

    /// The sockets handed over for `key`.
    pub(crate) fn take(&mut self, key: &str) -> Vec<std::net::TcpListener> {
        self.sockets
            .remove(key)
            .unwrap_or_default()
            .into_iter()
            .map(std::net::TcpListener::from)
            .collect()
    }

    /// Tells the process being replaced that this one serves (it then drains and exits).
    pub fn report_ready(&mut self) {
        if let Some(fd) = self.ready.take() {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(b"ready\n");
        }
        if !self.sockets.is_empty() {
            let keys: Vec<&String> = self.sockets.keys().collect();
            log::warn!(
                "upgrade: sockets handed over for {keys:?} are not in this configuration; closed"
            );
            self.sockets.clear();
        }
    }
}

/// Duplicates of the listening sockets, by key.
type Sockets = Vec<(String, OwnedFd)>;

/// Starts a new binary and hands it the listening sockets (see the module documentation).
#[derive(Clone)]
pub struct UpgradeHandle {
    /// Duplicates of the listening sockets, by key; `None` once the process is stopping.
    sockets: Arc<Mutex<Option<Sockets>>>,
}

impl UpgradeHandle {
    pub(crate) fn new(sockets: Sockets) -> Self {
        Self {
            sockets: Arc::new(Mutex::new(Some(sockets))),
        }
    }

    /// The process is stopping: its sockets are not handed to anyone (and the duplicates
    /// kept for that close, so that no connection waits on a socket nobody accepts).
    pub(crate) fn close(&self) {
        if let Ok(mut s) = self.sockets.lock() {
            *s = None;
        }
    }

    /// Executes the binary at this process's path with its arguments, handing it the
    /// sockets; returns its PID once it reported ready within `wait`. On any failure the new
    /// process is stopped and this one goes on.
    pub fn start(&self, wait: Duration) -> Result<u32, String> {
        let guard = self.sockets.lock().map_err(|_| "poisoned".to_string())?;
        let sockets = guard.as_ref().ok_or("the process is stopping")?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        // A binary replaced on disk reads as `/path/ringway (deleted)`: the new one is at the
        // path.
        let exe = std::path::PathBuf::from(
            exe.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
        );
        let (read, write) = crate::sys::blocking_pipe().map_err(|e| e.to_string())?;
        let write_child = dup_inheritable(write.as_fd()).map_err(|e| e.to_string())?;
        drop(write);
        let mut list = String::new();
        let mut dups = Vec::new();
        for (key, fd) in sockets {
            let d = dup_inheritable(fd.as_fd()).map_err(|e| e.to_string())?;
            list.push_str(&format!("{key}={};", d.as_raw_fd()));
            dups.push(d);
        }
        let keep: Vec<_> = dups
            .iter()
            .map(|d| d.as_raw_fd())
            .chain([write_child.as_raw_fd()])
            .collect();
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .env(INHERIT_ENV, &list)
            .env(READY_ENV, write_child.as_raw_fd().to_string());
        crate::sys::inherit_only(&mut cmd, keep);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        // The child has its copies; these close here, so the pipe's only writer is the child.
        drop(dups);
        drop(write_child);
        drop(guard);
        let pid = child.id();
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("ringway-upgrade".into())
            .spawn(move || {
                // Blocks until the child says something or the pipe closes (the child ended,
                // or was stopped after the wait).
                let mut f = std::fs::File::from(read);
                let mut said = Vec::new();
                let mut buf = [0u8; 16];
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    said.extend_from_slice(&buf[..n]);
                    if said.ends_with(b"\n") {
                        break;
                    }
                }
                let _ = tx.send(said);
            })
            .map_err(|e| e.to_string())?;
        let fail = |child: &mut std::process::Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(why)
        };
        match rx.recv_timeout(wait) {
            Ok(said) if said == b"ready\n" => Ok(pid),
            Ok(_) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!(
                    "the new process (PID {pid}) ended before it was ready ({status}); see its log"
                ))
            }
            Err(_) => fail(
                &mut child,
                format!("the new process (PID {pid}) was not ready within {wait:?}; stopped it"),
            ),
        }
    }
}
