//! ringway-io: the data plane.
//!
//! One worker thread per CPU, each pinned with `core_affinity` and running its own monoio
//! runtime (io_uring, or epoll where io_uring is unavailable). Each worker owns its own
//! SO_REUSEPORT listener sockets, its own upstream connection pools and its own balancer state:
//! nothing on the request path is shared between threads, so nothing needs a lock. The kernel
//! spreads new connections across the workers' listeners.
//!
//! This crate moves bytes and keeps time. Every decision about those bytes — where a head ends,
//! how a body is framed, which route and server, what head to send on — is made by
//! `ringway-core`.

#![deny(unsafe_code)]

mod accesslog;
mod acme;
mod admin;
mod auth;
mod board;
mod buf;
mod cache;
mod context;
mod counters;
mod deadline;
mod dns;
mod drain;
mod gate;
mod generation;
mod guard;
mod health;
mod limitsync;
mod listener;
mod metrics;
mod multirecv;
mod names;
mod ocsp;
mod pages;
mod parking;
mod proxy;
mod proxyheader;
mod relay;
mod server;
mod socks;
mod splice;
mod stream;
#[allow(unsafe_code)]
mod sys;
mod tls;
mod tunnel;
mod upgrade;
mod upstream;
mod worker;

pub use listener::BindError;
pub use server::{ReloadHandle, Server, ShutdownHandle, StartError};
pub use upgrade::{Inherited, UpgradeHandle};

/// Raises the soft limit on open files to the hard limit, once at start: each proxied
/// connection holds two descriptors (three with a pipe), and a soft limit of 1024 would cap a
/// worker at a few hundred clients. Returns the `(soft, hard)` limits before and after.
pub fn raise_open_files_limit() -> std::io::Result<((u64, u64), (u64, u64))> {
    sys::raise_open_files()
}

/// Reads and checks every certificate, key and CA file `cfg` names (what `ringway check` does
/// beyond parsing).
pub fn check_files(
    cfg: &ringway_core::config::Config,
) -> Result<(), ringway_core::config::ConfigError> {
    tls::TlsMaterial::load(cfg, &mut tls::Keep::new()).map(drop)
}
