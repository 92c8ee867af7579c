//! Config tests: a file using every key, and one test per error shape checking that the
//! message names the right line and key.

use super::*;

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080", ":9090"]
workers = 2
cpus = "0-1"
shutdown_timeout = "5s"

[timeouts]
client_header = "10s"
upstream_connect = "250ms"
keepalive = 30

[limits]
max_request_head = 8192

[upstreams.app]
servers = ["127.0.0.1:3000", "localhost:3001"]
keepalive = 8

[[routes]]
host = "*.example.com"
path = "/api/"
upstream = "app"
set_host = "backend"

[[routes]]
path = "/"
respond = { status = 200, body = "hello\n", headers = { "Content-Type" = "text/plain" } }
"#;

#[test]
fn parses_everything() {
    let c = Config::parse("t.toml", GOOD).unwrap();
    assert_eq!(c.server.listen.len(), 2);
    assert_eq!(c.server.listen[1].addr.port(), 9090);
    assert_eq!(c.server.workers, Some(2));
    assert_eq!(c.server.cpus, Some(vec![0, 1]));
    assert_eq!(c.server.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.timeouts.client_header, Duration::from_secs(10));
    assert_eq!(c.timeouts.upstream_connect, Duration::from_millis(250));
    assert_eq!(c.timeouts.keepalive, Duration::from_secs(30));
    assert_eq!(c.timeouts.upstream_read, Timeouts::default().upstream_read);
    assert_eq!(c.limits.request.max_head, 8192);
    assert_eq!(
        c.upstreams[0].servers[1].addr,
        "127.0.0.1:3001".parse().unwrap()
    );
    assert_eq!(c.upstreams[0].keepalive, 8);
    assert_eq!(c.router.lookup(b"a.example.com", b"/api/x"), Some(&0));
    assert_eq!(c.router.lookup(b"other", b"/api/x"), Some(&1));
    assert!(
        matches!(&c.routes[0].action, Action::Proxy { upstream: 0, set_host: Some(h) } if h == b"backend")
    );
}

fn err(text: &str) -> ConfigError {
    Config::parse("bad.toml", text).unwrap_err()
}

#[test]
fn errors_name_file_line_and_key() {
    let e = err("[server]\nlisten = [\"127.0.0.1:8080\"]\nworkrs = 2\n");
    assert_eq!(e.file, "bad.toml");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("unknown field `workrs`"), "{e}");
    assert!(
        e.to_string()
            .starts_with("bad.toml:3: server.workrs: unknown field `workrs`"),
        "{e}"
    );

    let e = err("[[routes]]\npath = \"/\"\nupstream = \"ap\"\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n");
    assert_eq!((e.line, e.key.as_str()), (Some(3), "routes[0].upstream"));
    assert!(
        e.message
            .contains("no upstream named \"ap\" (defined: app)"),
        "{e}"
    );

    let e =
        err("[timeouts]\n\nkeepalive = \"10 parsecs\"\n[[routes]]\nrespond = { status = 200 }\n");
    assert_eq!((e.line, e.key.as_str()), (Some(3), "timeouts.keepalive"));

    for bad in ["0", "100", "65536", "8"] {
        let e = err(&format!("[server]\n\nrecv_ring_buffers = {bad}\n"));
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(3), "server.recv_ring_buffers"),
            "{bad}"
        );
        assert!(e.message.contains("a power of two from 16 to 32768"), "{e}");
    }

    let e = err("[server]\nworkers = \"two\"\n");
    assert_eq!(e.line, Some(2));
    assert_eq!(e.key, "server.workers");

    let e = err("[[routes]]\nrespond = { status = 42 }\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(2), "routes[0].respond.status")
    );

    let e =
        err("[upstreams.app]\nservers = [\"db..internal:80\"]\n[[routes]]\nupstream = \"app\"\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(2), "upstreams.app.servers[0]")
    );

    let e = err("[[routes]]\npath = \"/\"\n");
    assert_eq!((e.line, e.key.as_str()), (Some(1), "routes[0]"));

    let e = err("");
    assert_eq!(e.key, "routes");

    let e = err("[server]\nlisten = [\"nope\"]\n[[routes]]\nrespond = { status = 200 }\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "server.listen[0]"));

    let e = err("[server\n");
    assert_eq!(e.line, Some(1));

    let e =
        err("[[routes]]\nrespond = { status = 200, headers = { \"Content-Length\" = \"5\" } }\n");
    assert_eq!(e.key, "routes[0].respond.headers.Content-Length");
}

#[test]
fn helpers() {
    assert_eq!(parse_cpu_list("0-2, 5,1").unwrap(), vec![0, 1, 2, 5]);
    assert!(parse_cpu_list("3-1").is_err());
    assert!(parse_cpu_list("x").is_err());
    assert_eq!(parse_listen_addr("8080").unwrap().port(), 8080);
    assert_eq!(parse_listen_addr("[::1]:1").unwrap().port(), 1);
    assert!(parse_listen_addr("host:1").is_none());
    assert!(parse_server_addr("example.com:80").is_none());
}

#[test]
fn servers_and_balancing() {
    let text = r#"
[upstreams.app]
balance = "hash:cookie:session"
hash_balance_factor = 1.5
servers = [
  "127.0.0.1:3000",
  { addr = "127.0.0.1:3001", weight = 5, max_conns = 100 },
  { addr = "127.0.0.1:3002", backup = true },
  { addr = "127.0.0.1:3003", down = true },
]
[[routes]]
upstream = "app"
"#;
    let c = Config::parse("t.toml", text).unwrap();
    let u = &c.upstreams[0];
    assert_eq!(
        u.balance,
        Balance::Hash {
            key: HashKey::Cookie("session".into()),
            factor: 1.5
        }
    );
    assert_eq!(
        (u.servers[1].weight, u.servers[1].max_conns),
        (5, Some(100))
    );
    assert!(u.servers[2].backup && u.servers[3].down && !u.servers[0].backup);
    for (b, want) in [
        ("round-robin", Balance::RoundRobin),
        ("least-conn", Balance::LeastConn),
        ("ip-hash", Balance::IpHash),
        (
            "hash:ip",
            Balance::Hash {
                key: HashKey::ClientIp,
                factor: 1.25,
            },
        ),
        (
            "hash:path",
            Balance::Hash {
                key: HashKey::Path,
                factor: 1.25,
            },
        ),
        (
            "hash:header:X-User",
            Balance::Hash {
                key: HashKey::Header("x-user".into()),
                factor: 1.25,
            },
        ),
    ] {
        assert_eq!(Balance::parse(b, 1.25), Ok(want));
    }
    assert!(Balance::parse("random", 1.25).is_err());
    assert!(Balance::parse("hash:header:", 1.25).is_err());

    let e = err("[upstreams.app]\nbalance = \"fastest\"\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"app\"\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "upstreams.app.balance"));
    let e = err("[upstreams.app]\nservers = [\n  { addr = \"127.0.0.1:1\", weight = 0 },\n]\n[[routes]]\nupstream = \"app\"\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(3), "upstreams.app.servers[0].weight")
    );
    let e = err("[upstreams.app]\nservers = [{ addr = \"127.0.0.1:1\", backup = true }]\n[[routes]]\nupstream = \"app\"\n");
    assert_eq!(e.key, "upstreams.app.servers");
}

#[test]
fn health_checks() {
    let c = Config::parse(
        "t.toml",
        "[upstreams.app]\nservers = [\"127.0.0.1:1\"]\nhealth_check = { uri = \"/health\", interval = \"1s\", fails = 3, status = \"200-204\" }\n[[routes]]\nupstream = \"app\"\n",
    )
    .unwrap();
    let h = c.upstreams[0].health_check.as_ref().unwrap();
    assert_eq!(
        (h.uri.as_str(), h.interval, h.fails, h.passes, h.status),
        ("/health", Duration::from_secs(1), 3, 2, (200, 204))
    );
    let e = err("[upstreams.app]\nservers = [\"127.0.0.1:1\"]\nhealth_check = { uri = \"health\" }\n[[routes]]\nupstream = \"app\"\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(3), "upstreams.app.health_check.uri")
    );
    let e = err("[upstreams.app]\nservers = [\"127.0.0.1:1\"]\nhealth_check = { uri = \"/h\", status = \"300-200\" }\n[[routes]]\nupstream = \"app\"\n");
    assert_eq!(e.key, "upstreams.app.health_check.status");
}

#[test]
fn admin_listener_is_loopback_only() {
    let c = Config::parse(
        "t.toml",
        "[admin]\nlisten = \"127.0.0.1:9901\"\n[[routes]]\nrespond = { status = 200 }\n",
    )
    .unwrap();
    assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
    let e = err("[admin]\nlisten = \"0.0.0.0:9901\"\n[[routes]]\nrespond = { status = 200 }\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "admin.listen"));
}

#[test]
fn tls_listeners_certificates_and_upstream_tls() {
    let text = r#"
[server]
listen = ["127.0.0.1:80", { addr = "127.0.0.1:443", tls = true }, { addr = ":8080", redirect_https = true }]

[tls]
certificates = [
  { cert = "certs/a.pem", key = "certs/a.key" },
  { cert = "/etc/ssl/b.pem", key = "/etc/ssl/b.key" },
]
min_version = "1.3"
handshake_timeout = "5s"
strict_sni = true
session_cache = 0

[upstreams.app]
servers = ["127.0.0.1:8443"]
tls = { server_name = "app.internal", ca = "ca.pem", cert = "client.pem", key = "client.key" }

[upstreams.plain]
servers = ["127.0.0.1:9000"]
tls = false

[[routes]]
upstream = "app"
"#;
    let c = Config::parse("conf/ringway.toml", text).unwrap();
    let l = &c.server.listen;
    assert_eq!(
        (
            (l[0].transport, l[0].protocol),
            (l[1].transport, l[1].protocol),
            (l[2].transport, l[2].protocol)
        ),
        (
            (Transport::Plain, Protocol::Http),
            (Transport::Tls, Protocol::Http),
            (Transport::Plain, Protocol::RedirectHttps)
        )
    );
    assert_eq!(c.https_port(), 443);
    let t = c.tls.as_ref().unwrap();
    // Relative paths are relative to the configuration file.
    assert_eq!(
        t.certificates[0].cert,
        std::path::Path::new("conf/certs/a.pem")
    );
    assert_eq!(
        t.certificates[1].key,
        std::path::Path::new("/etc/ssl/b.key")
    );
    assert_eq!(t.certificates[1].origin.line, Some(8));
    assert_eq!(t.certificates[1].origin.key, "tls.certificates[1]");
    assert_eq!(t.min_version, TlsVersion::Tls13);
    assert_eq!(t.handshake_timeout, Duration::from_secs(5));
    assert!(t.strict_sni && t.session_tickets);
    assert_eq!(t.session_cache, 0);
    let u = c.upstreams[0].tls.as_ref().unwrap();
    assert_eq!(u.server_name.as_deref(), Some("app.internal"));
    assert_eq!(u.ca.as_deref(), Some(std::path::Path::new("conf/ca.pem")));
    assert!(u.client_cert.is_some());
    assert!(c.upstreams[1].tls.is_none());
}

#[test]
fn tls_errors_name_line_and_key() {
    let route = "[[routes]]\nrespond = { status = 200 }\n";
    let cases = [
        (
            "[server]\nlisten = [{ addr = \"127.0.0.1:443\", tls = true }]\n",
            None,
            "server.listen[0]",
        ),
        (
            "[server]\nlisten = [{ addr = \"127.0.0.1:443\", tls = true, redirect_https = true }]\n",
            Some(2),
            "server.listen[0]",
        ),
        ("[tls]\ncertificates = []\n", Some(2), "tls.certificates"),
        (
            "[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\nmin_version = \"1.1\"\n",
            Some(3),
            "tls.min_version",
        ),
        (
            "[upstreams.u]\nservers = [\"127.0.0.1:1\"]\ntls = { cert = \"c.pem\" }\n",
            Some(3),
            "upstreams.u.tls",
        ),
        (
            "[upstreams.u]\nservers = [\"127.0.0.1:1\"]\ntls = { server_name = \"bad name\" }\n",
            Some(3),
            "upstreams.u.tls.server_name",
        ),
    ];
    for (text, line, key) in cases {
        let e = err(&format!("{text}{route}"));
        assert_eq!((e.line, e.key.as_str()), (line, key), "{text}: {e}");
    }
}

const MIN: &str =
    "[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\n[[routes]]\nupstream = \"app\"\n";

#[test]
fn durations_are_range_checked() {
    for v in [
        "\"0s\"",
        "0",
        "\"9999999999999h\"",
        "\"18446744073709551615s\"",
        "\"25h\"",
    ] {
        let e = err(&format!("[timeouts]\nkeepalive = {v}\n{MIN}"));
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(2), "timeouts.keepalive"),
            "{v}"
        );
        assert!(e.message.contains("from 1ms to 24h"), "{}", e.message);
    }
    let e = err(&format!("[timeouts]\nupstream_read = \"0ms\"\n{MIN}"));
    assert_eq!(e.key, "timeouts.upstream_read");
    let e = err(&format!("[timeouts]\nclient_header = \"0s\"\n{MIN}"));
    assert_eq!(e.key, "timeouts.client_header");
    let e = err(&format!(
        "{MIN}[upstreams.app.health_check]\nuri = \"/\"\ninterval = \"18446744073709551615s\"\n"
    ));
    assert_eq!(e.key, "upstreams.app.health_check.interval");
    assert_eq!(Timeouts::default().client_header, Duration::from_secs(10));
}

#[test]
fn messages_name_no_rust_types() {
    let e = err(&format!("[server]\nworkers = \"two\"\n{MIN}"));
    assert_eq!(e.line, Some(2));
    assert!(
        e.message.contains("expected a whole number"),
        "{}",
        e.message
    );
    let e = err(&format!("[server]\nworkers = -1\n{MIN}"));
    assert!(!e.message.contains("usize"), "{}", e.message);
    let e = err(&format!("[timeouts]\nsend = true\n{MIN}"));
    assert!(e.message.contains("expected a duration"), "{}", e.message);
    assert!(!e.message.contains("untagged"), "{}", e.message);
}

#[test]
fn routes_that_could_never_match_are_errors() {
    let dup = format!("{MIN}[[routes]]\nupstream = \"app\"\n");
    let e = err(&dup);
    assert_eq!((e.line, e.key.as_str()), (Some(5), "routes[1]"));
    assert!(e.message.contains("routes[0]"), "{}", e.message);
    for (p, why) in [
        ("/a b", "visible ASCII"),
        ("/caf\u{e9}", "visible ASCII"),
        ("/a?b", "visible ASCII"),
        ("/a/../b", "write \"/b\""),
        ("//api", "write \"/api\""),
        ("/%61pi", "write \"/api\""),
        ("/..", "climbs above the root"),
    ] {
        let e = err(&format!(
            "{MIN}[[routes]]\npath = \"{p}\"\nupstream = \"app\"\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (Some(6), "routes[1].path"), "{p}");
        assert!(e.message.contains(why), "{p}: {}", e.message);
    }
}

#[test]
fn bodies_on_bodiless_statuses_and_port_zero_are_errors() {
    for st in [204, 205, 304] {
        let e = err(&format!(
            "[[routes]]\nrespond = {{ status = {st}, body = \"x\" }}\n"
        ));
        assert_eq!(e.key, "routes[0].respond.body", "{st}");
    }
    assert!(Config::parse("t.toml", "[[routes]]\nrespond = { status = 204 }\n").is_ok());
    let e = err("[upstreams.app]\nservers = [\"127.0.0.1:0\"]\n[[routes]]\nupstream = \"app\"\n");
    assert_eq!(e.key, "upstreams.app.servers[0]");
}

#[test]
fn path_and_passive_health_switches() {
    let c = Config::parse(
        "t.toml",
        "[server]\nmerge_slashes = false\nencoded_slashes = \"keep\"\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\nfail_open = false\nfail_on_invalid = true\n[[routes]]\nupstream = \"app\"\n",
    )
    .unwrap();
    assert!(!c.upstreams[0].passive.fail_open);
    assert!(c.upstreams[0].passive.fail_on_invalid);
    assert!(!c.server.path.merge_slashes);
    let e = err("[server]\nencoded_slashes = \"decode\"\n[[routes]]\nrespond = { status = 200 }\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(2), "server.encoded_slashes")
    );
}

#[test]
fn forward_section_and_its_file_paths() {
    let text = r#"
[server]
listen = [{ addr = "127.0.0.1:3128", forward = true }]

[forward]
anonymity = "elite"
connect_ports = [443, "8000-8999"]
auth_file = "users.htpasswd"
blocklist = "/etc/ringway/block.txt"

[[forward.rules]]
action = "allow"
clients = ["10.0.0.0/8"]
"#;
    let c = Config::parse("conf/ringway.toml", text).unwrap();
    assert!(c.routes.is_empty(), "a forward-only config needs no routes");
    assert_eq!(c.server.listen[0].protocol, Protocol::ForwardHttp);
    assert_eq!(c.forward.anonymity, crate::forward::Anonymity::Elite);
    assert!(c.forward.connect_ports.contains(8443) && !c.forward.connect_ports.contains(80));
    assert_eq!(
        c.forward.auth_file.as_deref(),
        Some(std::path::Path::new("conf/users.htpasswd"))
    );
    assert_eq!(
        c.forward.blocklist.as_deref(),
        Some(std::path::Path::new("/etc/ringway/block.txt"))
    );
    assert_eq!(c.forward.rules.len(), 1);
    let e = Config::parse(
        "t.toml",
        "[server]\nlisten = [{ addr = \"127.0.0.1:1\", forward = true }]\n[forward]\nanonymity = \"invisible\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "forward.anonymity");
    assert_eq!(e.line, Some(4));
    // IP addresses have many spellings: a name list cannot deny them.
    for ip in ["127.0.0.2", "127.2", "2130706434", "[::ffff:127.0.0.2]"] {
        let e = Config::parse(
            "t.toml",
            &format!("[server]\nlisten = [{{ addr = \"127.0.0.1:1\", forward = true }}]\n[forward]\ndeny_domains = [\"{ip}\"]\n"),
        )
        .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("forward.deny_domains[0]", Some(4)),
            "{ip}"
        );
        assert!(e.message.contains("dest_ips"), "{}", e.message);
    }
    let c = Config::parse(
        "t.toml",
        "[server]\nlisten = [{ addr = \"127.0.0.1:1\", forward = true }]\n[forward]\nsafe_ports = [80, \"8000-8080\"]\n",
    )
    .unwrap();
    assert!(c.forward.safe_ports.contains(8080) && !c.forward.safe_ports.contains(443));
    assert!(
        c.warnings().is_empty(),
        "a loopback listener is no open proxy"
    );
    let open = Config::parse(
        "t.toml",
        "[server]\nlisten = [{ addr = \"0.0.0.0:3128\", forward = true }]\n",
    )
    .unwrap();
    assert!(
        open.warnings()[0].contains("0.0.0.0:3128"),
        "{:?}",
        open.warnings()
    );
}

#[test]
fn cache_section_and_route_keys() {
    let base = "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.a]\nservers = [\"127.0.0.1:1\"]\n";
    let c = Config::parse(
        "c.toml",
        &format!("{base}[cache]\nsize = \"64m\"\nvalid = {{ \"200 301\" = \"10m\", any = \"5s\" }}\nuse_stale = [\"error\", \"http_503\"]\n[[routes]]\nupstream = \"a\"\n[[routes]]\npath = \"/nocache/\"\nupstream = \"a\"\ncache = false\n[[routes]]\npath = \"/own/\"\nupstream = \"a\"\ncache_valid = {{ \"404\" = \"1m\" }}\n"),
    )
    .unwrap();
    let cache = c.cache.as_ref().unwrap();
    assert_eq!(cache.size, 64 << 20);
    assert_eq!(cache.rules.valid_for(301), Some(600));
    assert_eq!(cache.rules.valid_for(500), Some(5));
    assert!(cache.rules.use_stale.error && cache.rules.use_stale.statuses == [503]);
    assert!(c.routes[0].cache.is_some() && c.routes[1].cache.is_none());
    let own = c.routes[2].cache.as_ref().unwrap();
    assert_eq!((own.valid_for(404), own.valid_for(200)), (Some(60), None));
    let err = Config::parse(
        "c.toml",
        &format!("{base}[[routes]]\nupstream = \"a\"\ncache = true\n"),
    )
    .unwrap_err();
    assert_eq!((err.line, err.key.as_str()), (Some(7), "routes[0].cache"));
    for (bad, key) in [
        ("size = \"12q\"", "cache.size"),
        ("size = \"512k\"", "cache.size"),
        ("valid = { \"304\" = \"1m\" }", "cache.valid.\"304\""),
        ("use_stale = [\"sometimes\"]", "cache.use_stale[0]"),
        ("heuristic_max = \"400d\"", "cache.heuristic_max"),
        ("max_object = \"100g\"", "cache.max_object"),
    ] {
        let err = Config::parse(
            "c.toml",
            &format!("{base}[cache]\n{bad}\n[[routes]]\nupstream = \"a\"\n"),
        )
        .unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (Some(6), key), "{bad}: {err}");
    }
}

#[test]
fn the_pid_file_is_relative_to_the_config_file() {
    let text = "[server]\npid_file = \"run/ringway.pid\"\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"app\"\n";
    let c = Config::parse("/etc/ringway/ringway.toml", text).unwrap();
    assert_eq!(
        c.server.pid_file.as_deref(),
        Some("/etc/ringway/run/ringway.pid")
    );
    let c = Config::parse("ringway.toml", &text.replace("run/", "/run/")).unwrap();
    assert_eq!(c.server.pid_file.as_deref(), Some("/run/ringway.pid"));
}

#[test]
fn servers_by_name_expand_into_one_server_per_address() {
    let c = Config::parse(
        "t.toml",
        "[upstreams.app]\nservers = [\"127.0.0.1:9000\", { addr = \"App.Internal.:8080\", weight = 3 }, \"db:5432\"]\n\
         [[routes]]\nupstream = \"app\"\n[resolver]\nservers = [\"127.0.0.1:5353\"]\nmin_ttl = \"2s\"\n",
    )
    .unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.servers.len(), 1);
    assert_eq!(u.named.len(), 2);
    assert_eq!(&*u.named[0].host, "app.internal");
    assert_eq!(u.named[0].server.weight, 3);
    assert_eq!(c.resolver.servers, vec!["127.0.0.1:5353".parse().unwrap()]);
    assert_eq!(
        c.resolver.refresh_after(Duration::from_secs(0)),
        Duration::from_secs(2)
    );
    assert_eq!(
        c.resolver.refresh_after(Duration::from_secs(9999)),
        Duration::from_secs(300)
    );
    let names: Vec<String> = c.names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["app.internal", "db"]);
    let ips = |n: &str| -> Option<Vec<std::net::IpAddr>> {
        match n {
            "app.internal" => Some(vec![
                "10.0.0.2".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
            ]),
            _ => None,
        }
    };
    let r = c.resolved(&ips);
    let addrs: Vec<String> = r.upstreams[0]
        .servers
        .iter()
        .map(|s| s.addr.to_string())
        .collect();
    assert_eq!(addrs, ["127.0.0.1:9000", "10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!(r.upstreams[0].servers[1].weight, 3);
    assert_eq!(
        r.upstreams[0].servers[1].name.as_deref(),
        Some("app.internal")
    );
    // Applied again to its own result, with another answer: replaced, not added.
    let r2 = r.resolved(&|n: &str| (n == "db").then(|| vec!["10.0.0.9".parse().unwrap()]));
    let addrs: Vec<String> = r2.upstreams[0]
        .servers
        .iter()
        .map(|s| s.addr.to_string())
        .collect();
    assert_eq!(addrs, ["127.0.0.1:9000", "10.0.0.9:5432"]);
    // A hostile answer with thousands of records adds at most 64 servers per name.
    let many = |_: &str| -> Option<Vec<std::net::IpAddr>> {
        Some(
            (0..5000u32)
                .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).into())
                .collect(),
        )
    };
    let r3 = c.resolved(&many);
    assert_eq!(r3.upstreams[0].servers.len(), 1 + 2 * 64);

    for (bad, want) in [
        ("\"-bad:80\"", "expected IP:port or NAME:port"),
        ("\"a..b:80\"", "expected IP:port or NAME:port"),
        ("\"app:0\"", "expected IP:port or NAME:port"),
        ("\"10.0.0.300:80\"", "expected IP:port or NAME:port"),
        ("\"app\"", "expected IP:port or NAME:port"),
    ] {
        let e = Config::parse(
            "t.toml",
            &format!("[upstreams.app]\nservers = [{bad}]\n[[routes]]\nupstream = \"app\"\n"),
        )
        .unwrap_err();
        assert_eq!(e.key, "upstreams.app.servers[0]", "{bad}");
        assert!(e.message.contains(want), "{bad}: {}", e.message);
    }
    let e = Config::parse(
        "t.toml",
        "[upstreams.app]\nservers = [\"a:1\"]\n[[routes]]\nupstream = \"app\"\n[resolver]\nmin_ttl = \"10m\"\nmax_ttl = \"1m\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "resolver.min_ttl", "{e}");
}

#[test]
fn rate_limits_and_their_shared_store() {
    let base = "[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"api\"\nupstream = \"app\"\n";
    let c = Config::parse(
        "t.toml",
        &format!(
            "{base}[shared_limits]\nredis = \"redis://127.0.0.1:6379/2\"\ninterval = \"50ms\"\n\
             [[rate_limits]]\nname = \"a\"\nrate = \"10/s\"\nburst = 5\nshared = true\n\
             [[rate_limits]]\nname = \"b\"\nrate = \"600/m\"\nkey = \"header:x-api-key\"\nroutes = [\"api\"]\n"
        ),
    )
    .unwrap();
    let s = c.shared_limits.as_ref().unwrap();
    assert_eq!(s.redis, "redis://127.0.0.1:6379/2");
    assert_eq!(s.interval, Duration::from_millis(50));
    assert_eq!(s.timeout, Duration::from_millis(250));
    assert_eq!(s.prefix, "ringway:");
    assert!(c.rate_limits[0].table.is_shared());
    assert!(!c.rate_limits[1].table.is_shared());
    assert_eq!(c.rate_limits[1].routes, Some(vec![0]));
    // A reload keeps the counts of unchanged limits; a new secret renames the shared keys.
    let mut same = Config::parse("t.toml", &format!("{base}[shared_limits]\nredis = \"redis://127.0.0.1:6379/2\"\ninterval = \"50ms\"\n[[rate_limits]]\nname = \"a\"\nrate = \"10/s\"\nburst = 5\nshared = true\n")).unwrap();
    same.keep_limit_state(&c);
    assert!(std::sync::Arc::ptr_eq(
        &same.rate_limits[0].table,
        &c.rate_limits[0].table
    ));
    let mut renamed = Config::parse("t.toml", &format!("{base}[shared_limits]\nredis = \"redis://127.0.0.1:6379/2\"\nsecret = \"other\"\n[[rate_limits]]\nname = \"a\"\nrate = \"10/s\"\nburst = 5\nshared = true\n")).unwrap();
    renamed.keep_limit_state(&c);
    assert!(!std::sync::Arc::ptr_eq(
        &renamed.rate_limits[0].table,
        &c.rate_limits[0].table
    ));

    for good in [
        "redis://127.0.0.1",
        "redis://:pw@[::1]:6380/3",
        "redis://user:pw@cache.internal:6379",
        "unix:///run/redis.sock",
    ] {
        assert!(SharedLimits::new(good).is_some(), "{good}");
    }
    for bad in [
        "redis://",
        "redis://h:0",
        "redis://h:x/1",
        "redis://h/db",
        "redis://a b",
        "unix://rel",
        "rediss://h",
        "http://h",
    ] {
        assert!(SharedLimits::new(bad).is_none(), "{bad}");
    }
    for (text, key, want) in [
        (
            "[[rate_limits]]\nrate = \"10/s\"\nshared = true\n",
            "rate_limits[0].shared",
            "[shared_limits]",
        ),
        (
            "[shared_limits]\nredis = \"127.0.0.1:6379\"\n",
            "shared_limits.redis",
            "expected a Redis address",
        ),
        (
            "[shared_limits]\nredis = \"redis://h\"\ninterval = \"1ms\"\n",
            "shared_limits.interval",
            "from 10ms to 60s",
        ),
        (
            "[[rate_limits]]\nrate = \"10/d\"\n",
            "rate_limits[0].rate",
            "per second, minute or hour",
        ),
        (
            "[[rate_limits]]\nrate = \"10/s\"\nroutes = [\"nope\"]\n",
            "rate_limits[0].routes[0]",
            "no route named \"nope\"",
        ),
    ] {
        let e = err(&format!("{base}{text}"));
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(want), "{e}");
        assert!(
            e.line.is_some() || key.starts_with("shared_limits.interval"),
            "{e}"
        );
    }
}

#[test]
fn acme_section_defaults_and_errors() {
    const ROUTE: &str =
        "[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"app\"\n";
    let base = "[server]\nlisten = [\"127.0.0.1:80\", { addr = \"127.0.0.1:443\", tls = true }]\nstate_dir = \"/var/lib/ringway\"\n";
    let c = Config::parse(
        "/etc/ringway/t.toml",
        &format!("{base}[acme]\nemail = \"ops@example.org\"\ndomains = [\"Example.org.\", \"www.example.org\"]\n{ROUTE}"),
    )
    .unwrap();
    let a = c.acme.as_ref().unwrap();
    assert_eq!(a.domains, ["example.org", "www.example.org"]);
    assert_eq!(a.contact, ["mailto:ops@example.org"]);
    assert_eq!(a.ca, [LETS_ENCRYPT]);
    assert_eq!(
        a.challenges,
        [
            crate::acme::ChallengeKind::Http01,
            crate::acme::ChallengeKind::TlsAlpn01
        ]
    );
    assert_eq!(a.storage, std::path::Path::new("/var/lib/ringway/acme"));
    assert_eq!(a.retry, DEFAULT_ACME_RETRY);
    // A TLS listener needs no [tls] certificates when ACME provides them.
    assert!(c.tls.as_ref().unwrap().certificates.is_empty());
    let c = Config::parse(
        "/etc/ringway/t.toml",
        &format!("[server]\nlisten = [{{ addr = \"127.0.0.1:443\", tls = true }}]\n[acme]\ndomains = [\"a.test\"]\n\
         ca = [\"https://127.0.0.1:14000/dir\", \"https://ca2.test/dir\"]\nca_root = \"pebble.pem\"\n\
         storage = \"certs\"\nretry = \"2s\"\n{ROUTE}"),
    )
    .unwrap();
    let a = c.acme.as_ref().unwrap();
    assert_eq!(a.challenges, [crate::acme::ChallengeKind::TlsAlpn01]);
    assert_eq!(a.ca.len(), 2);
    assert_eq!(
        a.ca_root.as_deref(),
        Some(std::path::Path::new("/etc/ringway/pebble.pem"))
    );
    assert_eq!(a.storage, std::path::Path::new("/etc/ringway/certs"));
    assert_eq!(a.retry, Duration::from_secs(2));
    for (text, line, key, words) in [
        (
            "[acme]\ndomains = [\"*.a.test\"]\nstorage = \"s\"\n",
            Some(11),
            "acme.domains[0]",
            "DNS-01",
        ),
        (
            "[acme]\ndomains = []\nstorage = \"s\"\n",
            Some(11),
            "acme.domains",
            "at least one",
        ),
        (
            "[acme]\ndomains = [\"10.0.0.1\"]\nstorage = \"s\"\n",
            Some(11),
            "acme.domains[0]",
            "not an address",
        ),
        (
            "[acme]\ndomains = [\"a.test\", \"A.test\"]\nstorage = \"s\"\n",
            Some(11),
            "acme.domains[1]",
            "twice",
        ),
        (
            "[acme]\ndomains = [\"a.test\"]\n",
            Some(10),
            "acme.storage",
            "state_dir",
        ),
        (
            "[acme]\ndomains = [\"a.test\"]\nstorage = \"s\"\nemail = \"nobody\"\n",
            Some(13),
            "acme.email",
            "email",
        ),
        (
            "[acme]\ndomains = [\"a.test\"]\nstorage = \"s\"\nca = [\"http://ca.test/dir\"]\n",
            Some(13),
            "acme.ca[0]",
            "https://",
        ),
        (
            "[acme]\ndomains = [\"a.test\"]\nstorage = \"s\"\nchallenges = [\"dns-01\"]\n",
            Some(13),
            "acme.challenges[0]",
            "http-01",
        ),
        (
            "[acme]\ndomains = [\"a.test\"]\nstorage = \"s\"\nchallenges = [\"tls-alpn-01\"]\n",
            Some(13),
            "acme.challenges[0]",
            "TLS reverse-proxy listener",
        ),
    ] {
        let text = format!("[server]\nlisten = [\"127.0.0.1:80\"]\n\n\n\n\n\n\n\n{text}{ROUTE}");
        let e = Config::parse("t.toml", &text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
        assert!(e.message.contains(words), "{e}");
    }
    // Only a forward listener: nothing the CA can reach.
    let e = Config::parse(
        "t.toml",
        "[server]\nlisten = [{ addr = \"127.0.0.1:3128\", forward = true }]\n[acme]\ndomains = [\"a.test\"]\nstorage = \"s\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "acme");
    assert!(e.message.contains("must reach ringway"), "{e}");
}

#[test]
fn client_auth_errors_name_the_listener() {
    const ROUTE: &str =
        "[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"app\"\n";
    let tls = "[tls]\ncertificates = [{ cert = \"c\", key = \"k\" }]\n";
    for (text, key, words) in [
        (
            format!("[server]\nlisten = [{{ addr = \"127.0.0.1:80\", client_auth = \"required\" }}]\n{ROUTE}"),
            "server.listen[0].client_auth",
            "TLS listener",
        ),
        (
            format!("[server]\nlisten = [{{ addr = \"127.0.0.1:443\", tls = true, client_auth = \"maybe\" }}]\n{tls}{ROUTE}"),
            "server.listen[0].client_auth",
            "\"required\" or \"optional\"",
        ),
        (
            format!("[server]\nlisten = [{{ addr = \"127.0.0.1:443\", tls = true, client_auth = \"required\" }}]\n{tls}{ROUTE}"),
            "server.listen[0].client_auth",
            "client_ca",
        ),
    ] {
        let e = Config::parse("t.toml", &text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(words), "{e}");
    }
    let c = Config::parse(
        "/etc/r/t.toml",
        &format!("[server]\nlisten = [{{ addr = \"127.0.0.1:443\", tls = true, client_auth = \"required\" }}]\n{tls}client_ca = \"clients.pem\"\n{ROUTE}"),
    )
    .unwrap();
    assert_eq!(c.server.listen[0].client_auth, ClientAuth::Required);
    assert_eq!(
        c.tls.unwrap().client_ca.unwrap().0,
        std::path::Path::new("/etc/r/clients.pem")
    );
}
