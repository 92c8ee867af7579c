//! The `ringway` command: flags, config loading, signals. Everything else lives in the
//! `ringway-core` and `ringway-io` crates.

mod cli;
mod logger;
mod notify;
mod versions;

use std::process::ExitCode;

use clap::Parser;
use ringway_core::config::{Config, ConfigError, Protocol, Transport};
use ringway_io::Server;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logger::init(cli.log_level);
    match cli.command {
        Some(Command::Check) => check(&cli),
        Some(Command::Reload) => reload(&cli),
        Some(Command::Reopen) => reopen(&cli),
        Some(Command::Versions) => list_versions(&cli),
        Some(Command::Rollback { version }) => rollback(&cli, version),
        Some(Command::Diff { a, b }) => diff(&cli, a, b),
        Some(Command::Upgrade) => upgrade(&cli),
        None => {
            // Read before any thread starts: the environment is changed (the handover removed).
            let mut inherited = ringway_io::Inherited::from_env();
            run(&cli, &mut inherited)
        }
    }
}

fn load(cli: &Cli) -> Result<Config, String> {
    load_from(cli, None).map(|(c, _)| c)
}

/// The configuration file as read: its name and text.
type Source = (String, String);

/// `load`, from `source` instead of the --config file when given; also returns the text it
/// parsed (none in quick mode).
fn load_from(cli: &Cli, source: Option<Source>) -> Result<(Config, Option<Source>), String> {
    let mut read = None;
    let mut cfg = match (&cli.config, cli.upstream.is_empty()) {
        (_, _) if source.is_some() => {
            let (name, text) = source.unwrap_or_default();
            let c = Config::parse(&name, &text).map_err(|e: ConfigError| e.to_string())?;
            read = Some((name, text));
            c
        }
        (None, true) if cli.forward || !cli.socks5.is_empty() => {
            let listen = match (cli.forward, cli.listen.is_empty()) {
                (true, true) => vec!["127.0.0.1:3128".to_string()],
                (true, false) => cli.listen.clone(),
                (false, true) => Vec::new(),
                (false, false) => return Err(
                    "--listen serves --upstream (a reverse proxy) or --forward: give one of them, or drop --listen to serve --socks5 alone"
                        .into(),
                ),
            };
            let addrs = parse_listen(&listen)?.into_iter().map(|l| l.addr).collect();
            Config::forward_quick(addrs)
        }
        (Some(path), _) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{name}: cannot read config: {e}"))?;
            let c = Config::parse(&name, &text).map_err(|e: ConfigError| e.to_string())?;
            read = Some((name, text));
            c
        }
        (None, false) => {
            let mut ups = Vec::new();
            let mut named = Vec::new();
            for u in &cli.upstream {
                match ringway_core::config::parse_server_addr(u) {
                    Some(a) => ups.push(a),
                    None => {
                        let (host, port) = ringway_core::config::parse_server_name(u)
                            .ok_or_else(|| {
                                format!("--upstream {u:?}: expected IP:port or NAME:port (like app:8080)")
                            })?;
                        named.push(ringway_core::config::NamedServer {
                            host: host.into(),
                            server: ringway_core::config::UpstreamServer::new(
                                std::net::SocketAddr::from(([0, 0, 0, 0], port)),
                            ),
                        });
                    }
                }
            }
            let listen = if cli.listen.is_empty() {
                vec!["127.0.0.1:8080".to_string()]
            } else {
                cli.listen.clone()
            };
            let balance = ringway_core::config::Balance::parse(
                &cli.balance,
                ringway_core::config::DEFAULT_HASH_BALANCE_FACTOR,
            )
            .map_err(|e| format!("--balance: {e}"))?;
            let addrs = parse_listen(&listen)?.into_iter().map(|l| l.addr).collect();
            let mut cfg = Config::quick(addrs, ups, balance);
            cfg.upstreams[0].named = named;
            if let Some(uri) = &cli.health_uri {
                if !uri.starts_with('/') || uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(format!(
                        "--health-uri {uri:?}: expected a path starting with /"
                    ));
                }
                cfg.upstreams[0].health_check = Some(ringway_core::health::ActivePolicy::new(uri));
            }
            if let Some(v) = &cli.upstream_proxy_protocol {
                cfg.upstreams[0].proxy_protocol = Some(match v.as_str() {
                    "v1" => ringway_core::proxyproto::Version::V1,
                    "v2" => ringway_core::proxyproto::Version::V2,
                    _ => {
                        return Err(format!(
                            "--upstream-proxy-protocol {v:?}: expected v1 or v2"
                        ))
                    }
                });
            }
            if let Some(p) = &cli.strip_prefix {
                if !p.starts_with('/') || p.bytes().any(|b| !b.is_ascii_graphic() || b == b'?') {
                    return Err(format!(
                        "--strip-prefix {p:?}: expected a path prefix starting with /"
                    ));
                }
                cfg.routes[0].path_rewrite.strip_prefix = Some(p.clone());
            }
            cfg
        }
        (None, true) => return Err(
            "nothing to serve: give --config FILE, or --upstream ADDR for quick mode (see --help)"
                .into(),
        ),
    };
    if cli.config.is_some()
        && (!cli.upstream.is_empty()
            || cli.health_uri.is_some()
            || cli.strip_prefix.is_some()
            || cli.upstream_proxy_protocol.is_some())
    {
        return Err(
            "--upstream, --health-uri, --strip-prefix and --upstream-proxy-protocol are for quick mode and cannot be combined with --config"
                .into(),
        );
    }
    if !cli.listen.is_empty() {
        cfg.server.listen = parse_listen(&cli.listen)?;
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        if cli.config.is_some() && cli.listen.is_empty() {
            return Err(
                "--tls-cert/--tls-key apply to the --listen addresses: give --listen".into(),
            );
        }
        for l in &mut cfg.server.listen {
            l.transport = Transport::Tls;
        }
        cfg.tls = Some(ringway_core::config::Tls::with_certificate(
            cert.clone(),
            key.clone(),
        ));
    }
    quick_acme(cli, &mut cfg)?;
    if let Some(ca) = &cli.tls_client_ca {
        if cli.config.is_some() {
            return Err(
                "--tls-client-ca is for quick mode; with --config set [tls] client_ca and client_auth on listeners"
                    .into(),
            );
        }
        let origin = ringway_core::config::Origin {
            file: "--tls-client-ca".into(),
            line: None,
            key: String::new(),
        };
        match cfg.tls.as_mut() {
            Some(t) => t.client_ca = Some((ca.clone(), origin)),
            None => {
                return Err(
                    "--tls-client-ca needs TLS listeners: give --tls-cert/--tls-key or --acme"
                        .into(),
                )
            }
        }
        for l in cfg.server.listen.iter_mut().filter(|l| l.is_tls()) {
            l.client_auth = ringway_core::config::ClientAuth::Required;
        }
    }
    if cli.forward {
        if cli.config.is_some() && cli.listen.is_empty() {
            return Err("--forward applies to the --listen addresses: give --listen".into());
        }
        for l in &mut cfg.server.listen {
            l.protocol = Protocol::ForwardHttp;
        }
        if let Some(a) = &cli.anonymity {
            cfg.forward.anonymity =
                ringway_core::forward::Anonymity::parse(a).ok_or_else(|| {
                    format!("--anonymity {a:?}: expected transparent, anonymous or elite")
                })?;
        }
        if let Some(list) = &cli.connect_ports {
            cfg.forward.connect_ports = port_list("--connect-ports", list)?;
        }
        if let Some(list) = &cli.safe_ports {
            cfg.forward.safe_ports = port_list("--safe-ports", list)?;
        }
    }
    {
        // The forward proxy's destinations and the upstream names both ask these.
        for r in &cli.resolver {
            let addr = r
                .parse::<std::net::SocketAddr>()
                .ok()
                .or_else(|| {
                    r.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .ok()
                        .map(|ip| std::net::SocketAddr::new(ip, 53))
                })
                .ok_or_else(|| {
                    format!(
                        "--resolver {r:?}: expected a name server's address, like 127.0.0.1:5353"
                    )
                })?;
            cfg.forward.resolver.push(addr);
            cfg.resolver.servers.push(addr);
        }
    }
    if cli.forward {
        for d in &cli.deny_domain {
            if ringway_core::forward::looks_like_ip(d) {
                return Err(format!(
                    "--deny-domain {d:?}: an IP address has many spellings; deny it with [[forward.rules]] dest_ips"
                ));
            }
            if !ringway_core::forward::valid_domain_entry(d) {
                return Err(format!(
                    "--deny-domain {d:?}: expected a domain like example.com"
                ));
            }
            cfg.forward.deny_domains.insert(d);
        }
    }
    if let Some(w) = cli.workers {
        if w == 0 {
            return Err("--workers: expected at least 1".into());
        }
        cfg.server.workers = Some(w);
    }
    if let Some(c) = &cli.cpus {
        cfg.server.cpus =
            Some(ringway_core::config::parse_cpu_list(c).map_err(|e| format!("--cpus: {e}"))?);
    }
    if cli.no_pin {
        cfg.server.pin = false;
    }
    if cli.no_io_uring {
        cfg.server.io_uring = false;
    }
    if cli.no_multishot_accept {
        cfg.server.multishot_accept = false;
    }
    if cli.no_recv_ring {
        cfg.server.recv_ring = false;
    }
    if let Some(a) = &cli.admin {
        // A bare port is the loopback address's.
        let addr = ringway_core::config::parse_listen_addr(a)
            .map(|addr| {
                if addr.ip().is_unspecified() && !a.contains(['.', '[']) {
                    std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
                } else {
                    addr
                }
            })
            .filter(|addr| addr.ip().is_loopback())
            .ok_or_else(|| {
                format!("--admin {a:?}: expected a loopback address such as 127.0.0.1:9901 (the admin listener is never exposed)")
            })?;
        cfg.admin = Some(addr);
    }
    if let Some(path) = &cli.access_log {
        let target = ringway_core::config::LogTarget::parse(path, |p: &str| p.into()).ok_or_else(|| {
            format!("--access-log {path:?}: expected a file, - (standard output), syslog or syslog:/path")
        })?;
        match &mut cfg.access_log {
            Some(a) => a.target = target,
            None => {
                cfg.access_log = Some(ringway_core::config::AccessLog::new(
                    target,
                    ringway_core::accesslog::Format::combined(),
                ))
            }
        }
    }
    if let Some(f) = &cli.log_format {
        let format = ringway_core::accesslog::Format::parse(f)
            .map_err(|e| format!("--log-format {f:?}: {e}"))?;
        match &mut cfg.access_log {
            Some(a) => a.format = format,
            None => {
                return Err(
                    "--log-format needs --access-log FILE (or [access_log] in the config)".into(),
                )
            }
        }
    }
    if let Some(size) = &cli.max_body {
        let bytes = ringway_core::config::parse_size_text(size)
            .ok_or_else(|| format!("--max-body {size:?}: expected a size like 64k, 10m or 1g"))?;
        cfg.limits.max_request_body = Some(bytes);
    }
    if cli.proxy_protocol {
        for l in &mut cfg.server.listen {
            l.proxy_protocol = ringway_core::config::ProxyHeader::Required;
        }
    }
    for c in &cli.trusted_proxy {
        if !cfg.server.trusted.proxies.add(c) {
            return Err(format!(
                "--trusted-proxy {c:?}: expected an address or a block, like 10.0.0.0/8"
            ));
        }
    }
    if let Some(p) = &cli.park {
        cfg.timeouts.park = ringway_core::config::parse_park(p).ok_or_else(|| {
            format!("--park {p:?}: expected off or a duration from 1ms to 24h, like 500ms or 5s")
        })?;
    }
    if let Some(n) = cli.max_conns_per_ip {
        if n == 0 {
            return Err("--max-conns-per-ip: expected at least 1".into());
        }
        cfg.server.connections.per_client = Some(n);
    }
    if let Some(rate) = &cli.rate_limit {
        let interval = ringway_core::limit::Rate::parse(rate).ok_or_else(|| {
            format!("--rate-limit {rate:?}: expected requests per second, minute or hour, like 100/s or 600/m")
        })?;
        let burst = rate
            .split('/')
            .next()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(1);
        let table = match &cli.rate_limit_redis {
            None => ringway_core::limit::Table::new(ringway_core::config::DEFAULT_LIMIT_KEYS),
            Some(url) => {
                let shared = ringway_core::config::SharedLimits::new(url).ok_or_else(|| {
                    format!("--rate-limit-redis {url:?}: expected a Redis address like redis://127.0.0.1:6379/0")
                })?;
                let t = ringway_core::limit::Table::shared(
                    ringway_core::config::DEFAULT_LIMIT_KEYS,
                    ringway_core::limit::shared::secret(&shared.secret, "rate-limit"),
                );
                cfg.shared_limits = Some(shared);
                t
            }
        };
        cfg.rate_limits.push(ringway_core::limit::RateLimit {
            name: "rate-limit".into(),
            rate: ringway_core::limit::Rate {
                interval,
                burst,
                no_delay: u32::MAX,
            },
            key: ringway_core::limit::Key::Client,
            routes: None,
            status: 429,
            v6_prefix: 64,
            table: std::sync::Arc::new(table),
        });
    }
    if let Some(size) = &cli.cache {
        let bytes = ringway_core::config::parse_size_text(size)
            .filter(|&b| b >= 1 << 20)
            .ok_or_else(|| {
                format!("--cache {size:?}: expected a size of at least 1m, like 256m or 1g")
            })?;
        cfg.enable_cache(bytes);
    }
    if cli.request_id && cfg.server.request_id.is_none() {
        cfg.server.request_id = Some("X-Request-Id".into());
    }
    if cli.compress {
        cfg.enable_compression();
    }
    for a in &cli.socks5 {
        let addr = ringway_core::config::parse_listen_addr(a)
            .ok_or_else(|| format!("--socks5 {a:?}: expected IP:port, :port or port"))?;
        if cfg.server.listen.iter().any(|l| l.addr == addr) {
            return Err(format!("--socks5 {addr}: already a --listen address"));
        }
        cfg.server.listen.push(ringway_core::config::Listen {
            protocol: Protocol::Socks5,
            ..ringway_core::config::Listen::plain(addr)
        });
    }
    if let Some(file) = &cli.proxy_auth {
        if !cli.forward && cli.socks5.is_empty() {
            return Err("--proxy-auth is for the forward proxy: add --forward or --socks5".into());
        }
        cfg.forward.auth_file = Some(file.clone());
    }
    if let Some(path) = cfg.forward.blocklist.clone() {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("forward.blocklist: {name}: cannot read: {e}"))?;
        cfg.forward
            .deny_domains
            .add_list(&text)
            .map_err(|(line, msg)| format!("{name}:{line}: {msg}"))?;
    }
    for (i, rule) in cfg.rules.iter_mut().enumerate() {
        let Some(path) = rule.clients_file.clone() else {
            continue;
        };
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("rules[{i}].clients_file: {name}: cannot read: {e}"))?;
        rule.clients
            .get_or_insert_with(Default::default)
            .add_list(&text)
            .map_err(|(line, msg)| format!("{name}:{line}: {msg}"))?;
    }
    if let Some(path) = cfg.forward.auth_file.clone() {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("forward.auth_file: {name}: cannot read: {e}"))?;
        let users = ringway_core::forward::auth::Htpasswd::parse(&text)
            .map_err(|(line, msg)| format!("{name}:{line}: {msg}"))?;
        if users.is_empty() {
            return Err(format!("{name}: no users: nobody could use the proxy"));
        }
        cfg.forward.users = Some(std::sync::Arc::new(users));
    }
    Ok((cfg, read))
}

/// The state directory: --state-dir, else `server.state_dir`.
fn state_dir(cli: &Cli, cfg: Option<&Config>) -> Option<std::path::PathBuf> {
    cli.state_dir.clone().or_else(|| {
        cfg.and_then(|c| c.server.state_dir.as_ref())
            .map(Into::into)
    })
}

/// The state directory for the version commands, or a message saying how to name one.
fn need_state_dir(cli: &Cli) -> Result<std::path::PathBuf, String> {
    let cfg = cli.config.as_ref().and_then(|_| load(cli).ok());
    state_dir(cli, cfg.as_ref()).ok_or_else(|| {
        "give --state-dir DIR, or --config FILE whose server.state_dir is set".into()
    })
}

fn list_versions(cli: &Cli) -> ExitCode {
    let dir = match need_state_dir(cli) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ringway: versions: {e}");
            return ExitCode::from(2);
        }
    };
    match versions::list(&dir) {
        Ok(list) if list.is_empty() => {
            println!("no versions in {}", dir.display());
            ExitCode::SUCCESS
        }
        Ok(list) => {
            let current = list.last().map(|v| v.number);
            for v in &list {
                println!(
                    "{}{:>4}  {}  {}  {:<16} {}",
                    if Some(v.number) == current { "*" } else { " " },
                    v.number,
                    ringway_core::http::date::utc_text(v.applied),
                    &v.sha256[..12.min(v.sha256.len())],
                    v.how,
                    v.source
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringway: versions: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// A kept version parsed as the configuration it was (relative paths from its source file).
fn version_config(cli: &Cli, dir: &std::path::Path, n: u64) -> Result<Config, String> {
    let (v, text) = versions::read(dir, n)?;
    load_from(cli, Some((v.source, text)))
        .map(|(c, _)| c)
        .map_err(|e| format!("version {n}: {e}"))
}

fn rollback(cli: &Cli, to: Option<u64>) -> ExitCode {
    let run = || -> Result<(std::path::PathBuf, u64), String> {
        let dir = need_state_dir(cli)?;
        let list = versions::list(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let n = match to {
            Some(n) => n,
            None => list
                .iter()
                .rev()
                .nth(1)
                .map(|v| v.number)
                .ok_or("there is no version before the current one")?,
        };
        if !list.iter().any(|v| v.number == n) {
            let kept: Vec<String> = list.iter().map(|v| v.number.to_string()).collect();
            return Err(format!("no version {n} (kept: {})", kept.join(", ")));
        }
        let cfg = version_config(cli, &dir, n)?;
        ringway_io::check_files(&cfg).map_err(|e| format!("version {n}: {e}"))?;
        std::fs::write(
            versions::rollback_request(&dir),
            format!(
                "{n}
"
            ),
        )
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok((dir, n))
    };
    match run() {
        Ok((dir, n)) => {
            let cfg = load(cli).ok();
            let code = signal_running(
                cli,
                cfg.as_ref().unwrap_or(&Config::forward_quick(Vec::new())),
                &format!("rollback to version {n}"),
                libc::SIGHUP,
            );
            if code != ExitCode::SUCCESS {
                let _ = std::fs::remove_file(versions::rollback_request(&dir));
            }
            code
        }
        Err(e) => {
            eprintln!("ringway: rollback: {e}");
            ExitCode::FAILURE
        }
    }
}

fn diff(cli: &Cli, a: u64, b: Option<u64>) -> ExitCode {
    let run = || -> Result<Vec<String>, String> {
        let dir = need_state_dir(cli)?;
        let from = version_config(cli, &dir, a)?;
        let to = match (b, &cli.config) {
            (Some(b), _) => version_config(cli, &dir, b)?,
            (None, Some(_)) => load(cli)?,
            (None, None) => {
                let list = versions::list(&dir).map_err(|e| e.to_string())?;
                let n = list.last().map(|v| v.number).ok_or("no versions")?;
                version_config(cli, &dir, n)?
            }
        };
        Ok(ringway_core::config::versions::diff(&from, &to))
    };
    match run() {
        Ok(lines) if lines.is_empty() => {
            println!("no change");
            ExitCode::SUCCESS
        }
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringway: diff: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `443,8443,1024-65535` as a port set; an error names `flag`.
fn port_list(flag: &str, list: &str) -> Result<ringway_core::forward::PortSet, String> {
    let mut ports = Vec::new();
    for item in list.split(',') {
        ports.push(
            ringway_core::forward::PortSet::parse_item(item).ok_or_else(|| {
                format!("{flag}: {item:?} is not a port or a range like 1024-65535")
            })?,
        );
    }
    Ok(ringway_core::forward::PortSet(ports))
}

/// `--acme`, `--domain`, `--acme-ca`, `--acme-ca-root` and `--redirect-https`.
fn quick_acme(cli: &Cli, cfg: &mut Config) -> Result<(), String> {
    use ringway_core::config::{Listen, Protocol, Transport};
    if cli.config.is_some() && (cli.acme.is_some() || !cli.redirect_https.is_empty()) {
        return Err(
            "--acme and --redirect-https are for quick mode; with --config use [acme] and listeners with redirect_https = true"
                .into(),
        );
    }
    if cli.acme.is_some() {
        if cli.tls_cert.is_some() {
            return Err(
                "--acme and --tls-cert: the certificates come from one or the other".into(),
            );
        }
        if cli.listen.is_empty() {
            cfg.server.listen = parse_listen(&["0.0.0.0:443".to_string()])?;
            if cli.redirect_https.is_empty() {
                let mut l = parse_listen(&["0.0.0.0:80".to_string()])?;
                l[0].protocol = Protocol::RedirectHttps;
                cfg.server.listen.extend(l);
            }
        }
        for l in cfg
            .server
            .listen
            .iter_mut()
            .filter(|l| l.protocol != Protocol::RedirectHttps)
        {
            l.transport = Transport::Tls;
        }
    }
    for l in parse_listen(&cli.redirect_https)? {
        if cfg.server.listen.iter().any(|x| x.addr == l.addr) {
            return Err(format!("--redirect-https {}: already listened on", l.addr));
        }
        cfg.server.listen.push(Listen {
            protocol: Protocol::RedirectHttps,
            ..l
        });
    }
    let Some(email) = &cli.acme else {
        return Ok(());
    };
    let storage = cli
        .state_dir
        .as_ref()
        .ok_or("--acme needs --state-dir DIR, where the account key and certificates are kept")?
        .join("acme");
    let mut acme = ringway_core::config::Acme::quick(
        email,
        &cli.domain,
        cli.acme_ca.as_deref(),
        storage,
        &cfg.server,
    )?;
    acme.ca_root = cli.acme_ca_root.clone();
    cfg.acme = Some(acme);
    if cfg.tls.is_none() {
        cfg.tls = Some(ringway_core::config::Tls::defaults());
    }
    Ok(())
}

fn parse_listen(list: &[String]) -> Result<Vec<ringway_core::config::Listen>, String> {
    list.iter()
        .map(|l| {
            ringway_core::config::parse_listen_addr(l)
                .map(ringway_core::config::Listen::plain)
                .ok_or_else(|| format!("--listen {l:?}: expected IP:port, :port or port"))
        })
        .collect()
}

fn check(cli: &Cli) -> ExitCode {
    if cli.config.is_none() {
        eprintln!("ringway: check needs --config FILE");
        return ExitCode::from(2);
    }
    match load_with_files(cli) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} route(s), {} upstream group(s), listening on {})",
                cli.config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                cfg.routes.len(),
                cfg.upstreams.len(),
                cfg.server
                    .listen
                    .iter()
                    .map(|l| l.describe(l.addr))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for w in cfg.warnings() {
                println!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pid_file(cli: &Cli, cfg: &Config) -> Option<std::path::PathBuf> {
    cli.pid_file
        .clone()
        .or_else(|| cfg.server.pid_file.as_ref().map(Into::into))
}

/// `load`, then reading every certificate, key and CA file the configuration names.
fn load_with_files(cli: &Cli) -> Result<Config, String> {
    let cfg = load(cli)?;
    ringway_io::check_files(&cfg).map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn reload(cli: &Cli) -> ExitCode {
    let cfg = match load_with_files(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringway: not reloading: {e}");
            return ExitCode::FAILURE;
        }
    };
    signal_running(cli, &cfg, "reload", libc::SIGHUP)
}

/// `ringway upgrade`: SIGUSR2 to the running process, then wait for the pid file to name the
/// new one.
fn upgrade(cli: &Cli) -> ExitCode {
    let cfg = load(cli).unwrap_or_else(|_| Config::forward_quick(Vec::new()));
    let Some(path) = pid_file(cli, &cfg) else {
        eprintln!("ringway: upgrade needs --pid-file FILE or server.pid_file in the config");
        return ExitCode::from(2);
    };
    let read = || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    let before = read();
    let _ = std::fs::remove_file(upgrade_outcome(&path));
    let code = signal_running(cli, &cfg, "upgrade", libc::SIGUSR2);
    if code != ExitCode::SUCCESS {
        return code;
    }
    let end = std::time::Instant::now() + UPGRADE_WAIT + std::time::Duration::from_secs(5);
    let outcome = upgrade_outcome(&path);
    while std::time::Instant::now() < end {
        if let Some(pid) = read().filter(|&p| Some(p) != before && is_ringway(p).is_ok()) {
            println!(
                "upgraded: PID {} → {pid}; the old process drains and exits",
                before.unwrap_or(0)
            );
            let _ = std::fs::remove_file(&outcome);
            return ExitCode::SUCCESS;
        }
        if let Ok(why) = std::fs::read_to_string(&outcome) {
            if let Some(why) = why.strip_prefix("failed: ") {
                let _ = std::fs::remove_file(&outcome);
                eprintln!(
                    "ringway: upgrade failed, the old process still serves: {}",
                    why.trim()
                );
                return ExitCode::FAILURE;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "ringway: upgrade: no new process took over within {:?}; the old one still serves (see its log)",
        UPGRADE_WAIT
    );
    ExitCode::FAILURE
}

fn reopen(cli: &Cli) -> ExitCode {
    // The pid file may be named in the config; an unreadable config still allows --pid-file.
    let cfg = load(cli).unwrap_or_else(|_| Config::forward_quick(Vec::new()));
    signal_running(cli, &cfg, "reopen", libc::SIGUSR1)
}

/// Sends `sig` to the ringway named by the pid file, for the command `what`.
fn signal_running(cli: &Cli, cfg: &Config, what: &str, sig: libc::c_int) -> ExitCode {
    let Some(path) = pid_file(cli, cfg) else {
        eprintln!("ringway: {what} needs --pid-file FILE or server.pid_file in the config");
        return ExitCode::from(2);
    };
    let pid = match std::fs::read_to_string(&path).map(|s| s.trim().parse::<i32>()) {
        Ok(Ok(pid)) if pid > 0 => pid,
        _ => {
            eprintln!(
                "ringway: {}: no running ringway (cannot read a PID)",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    // A stale pid file can name a process that is not ringway at all: never signal that.
    if let Err(why) = is_ringway(pid) {
        eprintln!(
            "ringway: {}: PID {pid} is not a running ringway ({why}); not signalling it",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    // SAFETY: kill(2) with a PID read from our pid file and a fixed signal; no memory involved.
    if unsafe { libc::kill(pid, sig) } != 0 {
        eprintln!(
            "ringway: signalling PID {pid}: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    println!("{what} signalled to PID {pid}");
    ExitCode::SUCCESS
}

/// Where the running process says how an upgrade it was asked for ended (beside its pid file).
fn upgrade_outcome(pid_file: &std::path::Path) -> std::path::PathBuf {
    let mut p = pid_file.as_os_str().to_owned();
    p.push(".upgrade");
    p.into()
}

/// Checks that `pid` runs the same program as this one (by executable name, so that a
/// `ringway` started from another build directory still counts).
fn is_ringway(pid: i32) -> Result<(), String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("cannot read /proc/{pid}/exe: {e}"))?;
    let name = |p: &std::path::Path| {
        p.file_name().map(|n| {
            n.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
    };
    let ours = std::env::current_exe()
        .ok()
        .and_then(|p| name(&p))
        .unwrap_or_else(|| "ringway".into());
    match name(&exe) {
        Some(n) if n == ours || n == "ringway" => Ok(()),
        _ => Err(format!("it runs {}", exe.display())),
    }
}

fn run(cli: &Cli, inherited: &mut ringway_io::Inherited) -> ExitCode {
    let (cfg, source) = match load_from(cli, None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server_cfg = cfg.clone();
    for w in cfg.warnings() {
        log::warn!("{w}");
    }
    match ringway_io::raise_open_files_limit() {
        Ok(((soft, _), (raised, _))) if raised > soft => {
            log::info!("open files limit raised from {soft} to {raised} (the hard limit)");
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
    let admin_configured = cfg.admin.is_some();
    let server = match Server::bind_inheriting(cfg, inherited) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid_path = pid_file(cli, &server_cfg);
    let admin_addr = server.admin_addr();
    // Signals are handled before the address is announced and the pid file written: a SIGHUP
    // sent as soon as either is seen (`ringway reload`) must reload, never kill the process.
    let handle = server.shutdown_handle();
    if let Err(e) = spawn_signal_thread(
        Handles {
            shutdown: handle,
            reload: server.reload_handle(),
            upgrade: server.upgrade_handle(),
            pid_file: pid_path.clone(),
        },
        cli.clone(),
        server_cfg.clone(),
    ) {
        eprintln!("ringway: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .zip(&server_cfg.server.listen)
        .map(|(a, l)| l.describe(*a))
        .collect();
    let pinned = server.pinned_cpus();
    // The pid file is there by the time the address is announced: whoever acts on the
    // announcement (`ringway upgrade`, a script) finds it.
    if let Some(p) = &pid_path {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            eprintln!("ringway: {}: cannot write pid file: {e}", p.display());
            return ExitCode::FAILURE;
        }
    }
    log::info!(
        "listening on {} with {} worker(s){}",
        addrs.join(", "),
        server.workers(),
        if pinned.is_empty() {
            ", not pinned".to_string()
        } else {
            format!(
                " pinned to CPU(s) {}",
                pinned
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    );
    if let (true, Some(a)) = (admin_configured, admin_addr) {
        log::info!("admin status on http://{a}/status");
    }
    keep_version(
        cli,
        &server_cfg,
        source.as_ref(),
        "start",
        &server.reload_handle(),
    );
    // Listeners are bound and signals handled: a service manager may route traffic here, and
    // a process this one replaces may drain.
    notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    if inherited.is_upgrade() {
        log::info!("upgrade: serving on the sockets handed over; the old process drains");
    }
    inherited.report_ready();
    let result = server.run();
    if let Some(p) = &pid_path {
        // After an upgrade the file names the new process: it stays.
        let ours =
            std::fs::read_to_string(p).is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(p);
        }
    }
    match result {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP: re-read the config; a valid one goes to every worker, an invalid one is logged and
/// the running one kept. SIGTERM or SIGINT: drain gracefully; a second one exits at once.
/// What the signal thread acts on.
struct Handles {
    shutdown: ringway_io::ShutdownHandle,
    reload: ringway_io::ReloadHandle,
    upgrade: ringway_io::UpgradeHandle,
    /// The pid file, beside which an upgrade's failure is written for `ringway upgrade`.
    pid_file: Option<std::path::PathBuf>,
}

/// SIGUSR2: starts the binary at this one's path with its sockets; once it serves, this one
/// drains and exits. On a separate thread, so signals keep being handled meanwhile.
fn upgrade_now(
    upgrade: &ringway_io::UpgradeHandle,
    shutdown: &ringway_io::ShutdownHandle,
    pid_file: Option<&std::path::Path>,
) {
    let outcome = pid_file.map(upgrade_outcome);
    static BUSY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if BUSY.swap(true, std::sync::atomic::Ordering::AcqRel) {
        log::warn!("SIGUSR2: an upgrade is already under way");
        return;
    }
    let (upgrade, shutdown) = (upgrade.clone(), shutdown.clone());
    let spawned = std::thread::Builder::new()
        .name("ringway-upgrade".into())
        .spawn(move || {
            log::info!("SIGUSR2: starting the new binary with this one's sockets");
            match upgrade.start(UPGRADE_WAIT) {
                Ok(pid) => {
                    log::info!(
                        "upgrade: PID {pid} serves; this process (PID {}) stops accepting, drains and exits",
                        std::process::id()
                    );
                    notify::notify(&format!("MAINPID={pid}"));
                    shutdown.shutdown();
                }
                Err(e) => {
                    log::error!("upgrade failed, still serving: {e}");
                    if let Some(o) = &outcome {
                        let _ = std::fs::write(o, format!("failed: {e}\n"));
                    }
                    BUSY.store(false, std::sync::atomic::Ordering::Release);
                }
            }
        });
    if spawned.is_err() {
        BUSY.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// How long a new binary has to report that it serves.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn spawn_signal_thread(handles: Handles, cli: Cli, mut running: Config) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let Handles {
        shutdown: handle,
        reload: reloader,
        upgrade,
        pid_file,
    } = handles;
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])?;
    std::thread::Builder::new()
        .name("ringway-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    notify::reloading();
                    reload_now(&cli, &reloader, &mut running);
                    notify::notify("READY=1");
                    continue;
                }
                if sig == SIGUSR1 {
                    reloader.reopen_log();
                    continue;
                }
                if sig == SIGUSR2 {
                    if !stopping {
                        upgrade_now(&upgrade, &handle, pid_file.as_deref());
                    }
                    continue;
                }
                if stopping {
                    log::warn!("second signal {sig}: exiting now");
                    std::process::exit(1);
                }
                stopping = true;
                notify::notify("STOPPING=1");
                log::info!("signal {sig}: stopping; finishing in-flight requests");
                handle.shutdown();
            }
        })?;
    Ok(())
}

/// Keeps the configuration just applied as a version in the state directory, when there is
/// one, and tells the status page its number.
fn keep_version(
    cli: &Cli,
    cfg: &Config,
    source: Option<&Source>,
    how: &str,
    reloader: &ringway_io::ReloadHandle,
) {
    let (Some(dir), Some((name, text))) = (state_dir(cli, Some(cfg)), source) else {
        return;
    };
    match versions::record(&dir, text, name, how, cfg.server.versions) {
        Ok(v) => {
            reloader.set_version(v.number);
            log::info!("config version {} ({how})", v.number);
        }
        Err(e) => log::warn!("{}: cannot keep the config version: {e}", dir.display()),
    }
}

/// What a SIGHUP applies: the file, or the version `ringway rollback` asked for.
fn reload_source(cli: &Cli, running: &Config) -> Result<(Config, Option<Source>, String), String> {
    if let Some(dir) = state_dir(cli, Some(running)) {
        let request = versions::rollback_request(&dir);
        if let Ok(n) = std::fs::read_to_string(&request) {
            let _ = std::fs::remove_file(&request);
            let n: u64 = n
                .trim()
                .parse()
                .map_err(|_| format!("{}: not a version number", request.display()))?;
            let (v, text) = versions::read(&dir, n)?;
            let (cfg, source) =
                load_from(cli, Some((v.source, text))).map_err(|e| format!("version {n}: {e}"))?;
            return Ok((cfg, source, format!("rollback to {n}")));
        }
    }
    let (cfg, source) = load_from(cli, None)?;
    Ok((cfg, source, "reload".into()))
}

fn reload_now(cli: &Cli, reloader: &ringway_io::ReloadHandle, running: &mut Config) {
    if cli.config.is_none() {
        log::warn!("SIGHUP: quick mode has no config file to reload");
        return;
    }
    match reload_source(cli, running) {
        Err(e) => {
            reloader.rejected();
            log::error!("reload rejected, keeping the running config: {e}");
        }
        Ok((cfg, source, how)) => {
            // `running` keeps the restart-only settings in effect, so a file that differs from
            // them is reported on every reload, not just the first.
            let (s, r) = (&cfg.server, &running.server);
            let addrs = |l: &[ringway_core::config::Listen]| {
                l.iter()
                    .map(|l| l.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let same = s.listen.len() == r.listen.len()
                && s.listen
                    .iter()
                    .zip(&r.listen)
                    .all(|(a, b)| a.same_socket(b));
            if !same {
                log::warn!(
                    "reload: server.listen changed ({}); it takes effect only after a restart, still serving {}",
                    addrs(&s.listen),
                    addrs(&r.listen)
                );
            }
            if s.workers != r.workers
                || s.cpus != r.cpus
                || s.pin != r.pin
                || s.io_uring != r.io_uring
            {
                log::warn!(
                    "reload: server.workers, cpus, pin and io_uring take effect only after a restart"
                );
            }
            if let Err(e) = reloader.reload(&cfg) {
                log::error!("reload rejected, keeping the running config: {e}");
                return;
            }
            log::info!(
                "reloaded: {} route(s), {} upstream group(s)",
                cfg.routes.len(),
                cfg.upstreams.len()
            );
            keep_version(cli, &cfg, source.as_ref(), &how, reloader);
            let in_effect = running.server.clone();
            *running = cfg;
            running.server.listen = in_effect.listen;
            running.server.workers = in_effect.workers;
            running.server.cpus = in_effect.cpus;
            running.server.pin = in_effect.pin;
            running.server.io_uring = in_effect.io_uring;
        }
    }
}
