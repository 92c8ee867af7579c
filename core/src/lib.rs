//! ringway-core: everything the proxy decides, nothing it does.
//!
//! This crate holds the HTTP/1.1 parser and message framing, header rewriting, routing, upstream
//! selection and the configuration model. It contains no networking code, spawns no threads and
//! never reads a clock: bytes and timestamps come in as arguments, decisions go out as values.
//! The data plane (`ringway-io`) owns sockets and buffers and asks this crate what to do with
//! them. Keeping the two apart is what lets every rule here be unit-tested byte by byte.

pub mod accesslog;
pub mod acme;
pub mod balance;
pub mod cache;
pub mod clientcert;
pub mod compress;
pub mod config;
pub mod dns;
pub mod edit;
pub mod forward;
pub mod health;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod ocsp;
pub mod proxy;
pub mod proxyproto;
pub mod realip;
pub mod reqid;
pub mod route;
pub mod rules;
pub mod sni;
pub mod socks5;
pub mod subst;
pub mod upstream;
