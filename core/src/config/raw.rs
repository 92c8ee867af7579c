//! The TOML file as written, before validation. Every struct rejects unknown keys, and fields
//! that need checks beyond their type carry their position (`Spanned`) so an error can name the
//! line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<Upstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<Route>>,
    pub admin: Option<Admin>,
    pub tls: Option<Spanned<Tls>>,
    pub forward: Option<Forward>,
    pub cache: Option<Cache>,
    pub compression: Option<Compression>,
    pub acme: Option<Spanned<Acme>>,
    pub access_log: Option<AccessLog>,
    pub resolver: Option<Resolver>,
    #[serde(default)]
    pub rate_limits: Vec<Spanned<RateLimit>>,
    pub shared_limits: Option<Spanned<SharedLimits>>,
    #[serde(default)]
    pub rules: Vec<Spanned<AccessRule>>,
}

/// `[acme]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Acme {
    pub email: Option<Spanned<String>>,
    pub domains: Option<Spanned<Vec<Spanned<String>>>>,
    pub ca: Option<Spanned<Vec<Spanned<String>>>>,
    pub ca_root: Option<String>,
    pub challenges: Option<Vec<Spanned<String>>>,
    pub storage: Option<String>,
    pub retry: Option<Spanned<Duration>>,
    pub on_demand: Option<Vec<Spanned<String>>>,
    pub on_demand_per_hour: Option<Spanned<u32>>,
}

/// `[compression]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Compression {
    pub enabled: Option<bool>,
    pub codings: Option<Vec<Spanned<String>>>,
    pub types: Option<Vec<Spanned<String>>>,
    pub min_length: Option<Spanned<Size>>,
    pub gzip_level: Option<Spanned<u32>>,
    pub brotli_level: Option<Spanned<u32>>,
    pub zstd_level: Option<Spanned<i32>>,
    pub max_streams: Option<Spanned<usize>>,
}

/// `[[rules]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessRule {
    pub name: Option<String>,
    pub action: Spanned<String>,
    pub clients: Option<Vec<Spanned<String>>>,
    pub clients_file: Option<String>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<Spanned<String>>>,
    pub path_regex: Option<Spanned<String>>,
    pub headers: Option<super::access_rules::HeaderConditions>,
    pub user_agent: Option<Spanned<String>>,
    pub client_subject: Option<Spanned<String>>,
    pub routes: Option<Vec<Spanned<String>>>,
    pub listeners: Option<Vec<Spanned<String>>>,
    pub status: Option<Spanned<u16>>,
    pub body: Option<String>,
    pub delay: Option<Spanned<Duration>>,
}

/// `[[rate_limits]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimit {
    pub name: Option<String>,
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<u32>>,
    pub delay: Option<Spanned<u32>>,
    pub key: Option<Spanned<String>>,
    pub routes: Option<Vec<Spanned<String>>>,
    pub status: Option<Spanned<u16>>,
    pub ipv6_prefix: Option<Spanned<u8>>,
    pub max_keys: Option<Spanned<usize>>,
    pub shared: Option<bool>,
}

/// `[shared_limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SharedLimits {
    pub redis: Spanned<String>,
    pub interval: Option<Spanned<Duration>>,
    pub timeout: Option<Spanned<Duration>>,
    pub prefix: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
}

/// `[resolver]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resolver {
    pub servers: Option<Vec<Spanned<String>>>,
    pub timeout: Option<Spanned<Duration>>,
    pub min_ttl: Option<Spanned<Duration>>,
    pub max_ttl: Option<Spanned<Duration>>,
    pub retry: Option<Spanned<Duration>>,
}

/// `[access_log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLog {
    pub path: Spanned<String>,
    pub format: Option<Spanned<String>>,
    pub buffer: Option<Spanned<Size>>,
    pub flush: Option<Spanned<Duration>>,
}

/// `[cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cache {
    pub size: Option<Spanned<Size>>,
    pub max_object: Option<Spanned<Size>>,
    pub valid: Option<BTreeMap<String, Spanned<Duration>>>,
    pub valid_overrides_origin: Option<bool>,
    pub store_set_cookie: Option<bool>,
    pub heuristic: Option<bool>,
    pub heuristic_max: Option<Spanned<Duration>>,
    pub heuristic_credentials: Option<bool>,
    pub client_no_cache: Option<Spanned<String>>,
    pub use_stale: Option<Vec<Spanned<String>>>,
    pub lock_timeout: Option<Spanned<Duration>>,
    pub forward: Option<bool>,
    pub targeted: Option<Vec<Spanned<String>>>,
    pub tag_headers: Option<Vec<Spanned<String>>>,
    pub strip_tags: Option<bool>,
}

/// A byte size: a number of bytes, or `"256m"`, `"64k"`, `"2g"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Forward {
    pub anonymity: Option<Spanned<String>>,
    pub connect_ports: Option<Spanned<Vec<Spanned<Port>>>>,
    pub socks_ports: Option<Spanned<Vec<Spanned<Port>>>>,
    pub safe_ports: Option<Spanned<Vec<Spanned<Port>>>>,
    pub deny_domains: Option<Vec<Spanned<String>>>,
    pub private_destinations: Option<Spanned<String>>,
    pub tunnel_idle: Option<Spanned<Duration>>,
    pub dns_ttl: Option<Spanned<Duration>>,
    pub dns_negative_ttl: Option<Spanned<Duration>>,
    pub resolver: Option<Vec<Spanned<String>>>,
    pub resolver_timeout: Option<Spanned<Duration>>,
    pub auth_file: Option<String>,
    pub blocklist: Option<String>,
    pub outgoing_address: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    pub outgoing_by_user: BTreeMap<String, Spanned<OneOrMany>>,
    #[serde(default)]
    pub rules: Vec<Spanned<ForwardRule>>,
}

/// `[[forward.rules]]`: `action = "allow" | "deny"` and conditions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardRule {
    pub action: Spanned<String>,
    pub clients: Option<Vec<Spanned<String>>>,
    pub domains: Option<Vec<Spanned<String>>>,
    pub ports: Option<Vec<Spanned<Port>>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub users: Option<Vec<String>>,
    pub dest_ips: Option<Vec<Spanned<String>>>,
    pub client_subject: Option<Spanned<String>>,
}

/// `"IP"` or `["IP", "IP"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `443` or `"1024-65535"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Port {
    Number(u64),
    Text(String),
}

/// `"IP:port"` or `{ addr = "IP:port", tls = true }` / `{ addr = …, redirect_https = true }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ListenEntry {
    Addr(String),
    Full(ListenTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenTable {
    pub addr: String,
    pub tls: Option<bool>,
    pub redirect_https: Option<bool>,
    pub forward: Option<bool>,
    pub socks5: Option<bool>,
    pub access_log: Option<Spanned<bool>>,
    pub max_connections: Option<Spanned<u32>>,
    pub proxy_protocol: Option<Switch>,
    pub client_auth: Option<String>,
}

/// `true`, `false` or a word (`"optional"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Switch {
    Bool(bool),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tls {
    pub certificates: Spanned<Vec<Spanned<CertKey>>>,
    pub min_version: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<Duration>>,
    pub strict_sni: Option<bool>,
    pub session_tickets: Option<bool>,
    pub session_cache: Option<Spanned<usize>>,
    pub client_ca: Option<String>,
    pub cipher_suites: Option<Spanned<Vec<String>>>,
    pub groups: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertKey {
    pub cert: String,
    pub key: String,
}

/// `tls = true` or `tls = { server_name = "…", ca = "…", cert = "…", key = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum UpstreamTls {
    On(bool),
    Full(UpstreamTlsTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsTable {
    pub server_name: Option<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    pub listen: Spanned<String>,
    pub token: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Server {
    pub listen: Option<Spanned<Vec<Spanned<ListenEntry>>>>,
    pub workers: Option<Spanned<usize>>,
    pub cpus: Option<Spanned<String>>,
    pub pin: Option<bool>,
    pub io_uring: Option<bool>,
    pub multishot_accept: Option<bool>,
    pub recv_ring: Option<bool>,
    pub recv_ring_buffers: Option<Spanned<u64>>,
    pub shutdown_timeout: Option<Spanned<Duration>>,
    pub pid_file: Option<String>,
    pub state_dir: Option<String>,
    pub versions: Option<Spanned<usize>>,
    pub merge_slashes: Option<bool>,
    pub encoded_slashes: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
    pub max_connections_per_client: Option<Spanned<u32>>,
    pub connection_refusal: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub real_ip_header: Option<Spanned<String>>,
    pub request_id: Option<Spanned<String>>,
}

/// A duration as `"250ms"`, `"30s"`, `"5m"`, `"1h"`, or a bare number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Duration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Timeouts {
    pub proxy_header: Option<Spanned<Duration>>,
    pub client_header: Option<Spanned<Duration>>,
    pub client_body: Option<Spanned<Duration>>,
    pub client_body_total: Option<Spanned<Duration>>,
    pub keepalive: Option<Spanned<Duration>>,
    pub park: Option<Spanned<Duration>>,
    pub send: Option<Spanned<Duration>>,
    pub upstream_connect: Option<Spanned<Duration>>,
    pub upstream_read: Option<Spanned<Duration>>,
    pub upstream_write: Option<Spanned<Duration>>,
    pub upstream_idle: Option<Spanned<Duration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    pub max_request_head: Option<Spanned<usize>>,
    pub max_request_target: Option<Spanned<usize>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_response_head: Option<Spanned<usize>>,
    pub max_request_body: Option<Spanned<Size>>,
    pub request_buffer: Option<Spanned<Size>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub servers: Spanned<Vec<Spanned<ServerEntry>>>,
    pub keepalive: Option<usize>,
    pub balance: Option<Spanned<String>>,
    pub hash_balance_factor: Option<Spanned<f64>>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<Spanned<Duration>>,
    pub fail_on_5xx: Option<bool>,
    pub fail_on_invalid: Option<bool>,
    pub fail_open: Option<bool>,
    pub retries: Option<Spanned<u32>>,
    pub retry_timeout: Option<Spanned<Duration>>,
    pub retry_on: Option<Spanned<Vec<u16>>>,
    pub health_check: Option<Spanned<HealthCheck>>,
    pub tls: Option<Spanned<UpstreamTls>>,
    pub proxy_protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheck {
    pub uri: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub host: Option<String>,
    pub interval: Option<Spanned<Duration>>,
    pub timeout: Option<Spanned<Duration>>,
    pub fails: Option<u32>,
    pub passes: Option<u32>,
    /// "200-399" or "200".
    pub status: Option<Spanned<String>>,
}

/// `"IP:port"` or `{ addr = "IP:port", weight = 2, backup = true, max_conns = 100, down = false }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ServerEntry {
    Addr(String),
    Full(ServerTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerTable {
    pub addr: String,
    pub weight: Option<u32>,
    pub backup: Option<bool>,
    pub max_conns: Option<u32>,
    pub down: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub set_host: Option<Spanned<String>>,
    pub respond: Option<Spanned<Respond>>,
    pub cache: Option<Spanned<bool>>,
    pub cache_valid: Option<BTreeMap<String, Spanned<Duration>>>,
    pub name: Option<Spanned<String>>,
    pub access_log: Option<Spanned<bool>>,
    pub max_body: Option<Spanned<Size>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_target: Option<Spanned<usize>>,
    pub strip_prefix: Option<Spanned<String>>,
    pub add_prefix: Option<Spanned<String>>,
    pub rewrite: Option<Spanned<Rewrite>>,
    pub request_headers: Option<FieldRules>,
    pub response_headers: Option<FieldRules>,
    pub rewrite_location: Option<Spanned<bool>>,
    pub cookie_domain: Option<FromTo>,
    pub cookie_path: Option<FromTo>,
    pub compress: Option<bool>,
    pub body_replace: Option<Spanned<Vec<FromTo>>>,
    pub body_replace_once: Option<bool>,
    pub body_replace_types: Option<Spanned<Vec<String>>>,
}

/// `{ from = "…", to = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FromTo {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
}

/// A route's `rewrite = { regex = "…", to = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rewrite {
    pub regex: Spanned<String>,
    pub to: Spanned<String>,
}

/// A route's `request_headers` / `response_headers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldRules {
    pub set: Option<BTreeMap<String, Spanned<String>>>,
    pub add: Option<BTreeMap<String, Spanned<String>>>,
    pub remove: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Respond {
    pub status: Spanned<u16>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
}
