//! Command-line flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// ringway: a thread-per-core io_uring HTTP proxy.
///
/// Run with a config file (`--config ringway.toml`), or in quick mode with no file:
/// `ringway --listen :8080 --upstream 127.0.0.1:3000`.
#[derive(Clone, Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML configuration file (see docs/configuration.md).
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Address to listen on (IP:port, :port or port); repeatable. Overrides the config's
    /// `server.listen`. Quick mode default: 127.0.0.1:8080.
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Quick mode: proxy every request to this server (IP:port, or NAME:port: every address of
    /// the name is a server, looked up again when its TTL runs out); repeatable.
    #[arg(short, long, value_name = "ADDR")]
    pub upstream: Vec<String>,

    /// Quick mode: how to spread requests over the --upstream servers: round-robin, least-conn,
    /// ip-hash, or hash:KEY (KEY: ip, path, header:NAME, cookie:NAME).
    #[arg(long, value_name = "ALGORITHM", default_value = "round-robin")]
    pub balance: String,

    /// Quick mode: check every --upstream with `GET PATH` every 5 s (2 failures mark it down, 2
    /// passes up again; 2xx and 3xx pass).
    #[arg(long, value_name = "PATH")]
    pub health_uri: Option<String>,

    /// Quick mode: remove this prefix from the path before it goes upstream (`/app`: `/app/x`
    /// is sent as `/x`); paths without it go unchanged.
    #[arg(long, value_name = "PREFIX")]
    pub strip_prefix: Option<String>,

    /// Trust this peer (an address or a block, like 10.0.0.0/8; repeatable) to name the real
    /// client in X-Forwarded-For: logs, rules, limits and balancing then use that client.
    #[arg(long, value_name = "CIDR")]
    pub trusted_proxy: Vec<String>,

    /// Connections to the --listen addresses start with a PROXY protocol header (v1 or v2,
    /// from HAProxy, an AWS NLB, …) naming the client; one without is closed.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// Serve TLS on the --listen addresses with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The TLS --listen addresses require a client certificate signed by a CA in FILE (PEM):
    /// mutual TLS; the upstream is told its subject and fingerprint.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Certificates from an ACME CA (Let's Encrypt unless --acme-ca says otherwise) for the
    /// --domain names, with EMAIL as the account's contact: the --listen addresses serve TLS
    /// with them (default 0.0.0.0:443, with a --redirect-https 0.0.0.0:80 beside it); needs
    /// --state-dir for the keys and certificates.
    #[arg(long, value_name = "EMAIL", requires = "domain")]
    pub acme: Option<String>,

    /// A name to get a certificate for (repeatable), with --acme.
    #[arg(long, value_name = "NAME", requires = "acme")]
    pub domain: Vec<String>,

    /// The ACME CA's directory URL (a staging CA, or pebble for tests), with --acme.
    #[arg(long, value_name = "URL", requires = "acme")]
    pub acme_ca: Option<String>,

    /// Trust this PEM file's CA certificates for the ACME CA's own HTTPS too, with --acme.
    #[arg(long, value_name = "FILE", requires = "acme")]
    pub acme_ca_root: Option<PathBuf>,

    /// A plain listener on ADDR (repeatable) that answers every request with a 301 to https
    /// (and ACME HTTP-01 validations).
    #[arg(long, value_name = "ADDR")]
    pub redirect_https: Vec<String>,

    /// Serve SOCKS5 (RFC 1928) on ADDR (repeatable), alone or beside --listen, under the
    /// forward proxy's users (--proxy-auth) and rules: `ringway --socks5 127.0.0.1:1080`.
    #[arg(long, value_name = "ADDR")]
    pub socks5: Vec<String>,

    /// Serve a forward proxy on the --listen addresses (absolute-form requests and CONNECT
    /// tunnels; quick mode needs no --upstream): `ringway --listen 127.0.0.1:3128 --forward`.
    #[arg(long)]
    pub forward: bool,

    /// Forward proxy: what the destination learns: transparent (Via and X-Forwarded-For),
    /// anonymous (Via only) or elite (neither).
    #[arg(long, value_name = "LEVEL", requires = "forward")]
    pub anonymity: Option<String>,

    /// Forward proxy: ports CONNECT may reach, e.g. `443,8443,1024-65535` [default: 443].
    #[arg(long, value_name = "LIST", requires = "forward")]
    pub connect_ports: Option<String>,

    /// Forward proxy: ports other requests may reach, e.g. `80,443,1025-65535` [default:
    /// Squid's Safe_ports less plain-text services such as 6379 and 11211].
    #[arg(long, value_name = "LIST", requires = "forward")]
    pub safe_ports: Option<String>,

    /// A name server to ask (`192.0.2.53`, `127.0.0.1:5353`) for upstream names and the forward
    /// proxy's destinations; repeatable [default: those of /etc/resolv.conf].
    #[arg(long, value_name = "ADDR")]
    pub resolver: Vec<String>,

    /// Forward proxy: refuse this domain (`example.com`, or `.example.com` with its
    /// subdomains); repeatable.
    #[arg(long, value_name = "DOMAIN", requires = "forward")]
    pub deny_domain: Vec<String>,

    /// Serve the admin API (status JSON at /status, cache purges) on this loopback address, e.g.
    /// `127.0.0.1:9901`; overrides the config's `[admin] listen`.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,

    /// Quick mode: start every connection to the --upstream servers with a PROXY protocol
    /// header (v1 or v2) naming the client; such connections are never shared by two clients.
    #[arg(long, value_name = "VERSION")]
    pub upstream_proxy_protocol: Option<String>,

    /// Give every request an id (X-Request-Id: kept from a --trusted-proxy, else made here),
    /// sent upstream, returned to the client and logged.
    #[arg(long)]
    pub request_id: bool,

    /// Compress responses on the fly (zstd, br or gzip, as each client accepts) for text,
    /// JSON, JavaScript, SVG, XML and wasm of 256 bytes or more; cached ones once per worker.
    #[arg(long)]
    pub compress: bool,

    /// Cache responses in memory, up to SIZE for the whole process (`256m`, `1g`), with the
    /// RFC 9111 defaults: only what the origin's headers allow is stored.
    #[arg(long, value_name = "SIZE")]
    pub cache: Option<String>,

    /// Forward proxy and SOCKS5: only users of this htpasswd file may use them (Basic
    /// authentication, RFC 1929 for SOCKS5; apr1, bcrypt and SHA-256/512 crypt entries).
    #[arg(long, value_name = "FILE")]
    pub proxy_auth: Option<PathBuf>,

    /// Write an access log line per request to FILE (`-`: standard output; `syslog`: /dev/log);
    /// overrides the config's `[access_log] path`.
    #[arg(long, value_name = "FILE")]
    pub access_log: Option<String>,

    /// Access log format: combined (nginx's), json, or a format string with $variables (see
    /// docs/configuration.md) [default: combined].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Limit each client address (IPv6: its /64) to this many requests, like `100/s` or
    /// `600/m`, with a burst of the same number; more are answered 429 with Retry-After.
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<String>,

    /// Share `--rate-limit` with the other ringway boxes that use this Redis server (like
    /// `redis://127.0.0.1:6379/0`): each box still decides alone, and hears the others' counts
    /// every 100 ms.
    #[arg(long, value_name = "URL", requires = "rate_limit")]
    pub rate_limit_redis: Option<String>,

    /// At most N connections open at once from one client address (IPv6: its /64); more are
    /// answered 503 and closed. Overrides `server.max_connections_per_client`.
    #[arg(long, value_name = "N")]
    pub max_conns_per_ip: Option<u32>,

    /// Refuse request bodies larger than SIZE (`10m`, `64k`) with 413: from Content-Length
    /// before anything goes upstream, and while a chunked body streams. Overrides
    /// `[limits] max_request_body`.
    #[arg(long, value_name = "SIZE")]
    pub max_body: Option<String>,

    /// Park kept-alive client connections quiet this long (`500ms`, `5s`): their buffers and
    /// request state are freed until their next request; `off` keeps them. Overrides
    /// `timeouts.park` [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub park: Option<String>,

    /// Number of worker threads [default: one per CPU this process may use].
    #[arg(short, long, value_name = "N")]
    pub workers: Option<usize>,

    /// CPUs to pin workers to, e.g. `0-3,8` (worker i goes to the i-th CPU listed).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,

    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Run the workers on epoll instead of io_uring (as they do where the kernel or a sandbox
    /// refuses io_uring). Overrides `server.io_uring`.
    #[arg(long)]
    pub no_io_uring: bool,

    /// Accept connections with a readiness wait and accept4 each, as where the kernel has no
    /// multishot accept (before Linux 5.19). Overrides `server.multishot_accept`.
    #[arg(long)]
    pub no_multishot_accept: bool,

    /// Keep-alive client connections wait for their next request with a receive into a buffer
    /// of their own, as where the kernel has no ring of provided buffers (before Linux 5.19).
    /// Overrides `server.recv_ring`.
    #[arg(long)]
    pub no_recv_ring: bool,

    /// Write the process ID here while running (overrides `server.pid_file`); `ringway reload`
    /// reads it.
    #[arg(long, value_name = "FILE", global = true)]
    pub pid_file: Option<std::path::PathBuf>,

    /// Keep every applied configuration here as a numbered version (for `versions`,
    /// `rollback`, `diff`); overrides `server.state_dir`.
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,

    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info, global = true)]
    pub log_level: LogLevel,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Validate the file given with --config and exit: 0 if valid, 1 with the error if not.
    Check,
    /// Validate --config, then tell the running ringway (found through its pid file) to reload
    /// it. The same as sending SIGHUP.
    Reload,
    /// Tell the running ringway (found through its pid file) to reopen its access log, after
    /// logrotate moved it. The same as sending SIGUSR1.
    Reopen,
    /// Replace the running ringway (found through its pid file) with the binary now at its
    /// path, with no connection dropped: the new one takes over the listening sockets, the old
    /// one drains and exits. The same as sending SIGUSR2.
    Upgrade,
    /// List the configuration versions kept in the state directory.
    Versions,
    /// Make the running ringway apply version N again (default: the one before the current),
    /// through the reload path. It becomes the newest version.
    Rollback {
        /// The version to go back to.
        version: Option<u64>,
    },
    /// What changes, as a reload sees it, from version A to version B (default: the file
    /// given with --config, else the newest version).
    Diff { a: u64, b: Option<u64> },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}
