use super::*;
use crate::config::Config;

fn cfg(extra: &str) -> &'static Config {
    let text = format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:1080\", forward = true }}]\n[forward]\n{extra}"
    );
    Box::leak(Box::new(Config::parse("t.toml", &text).unwrap()))
}

#[allow(clippy::disallowed_methods)] // a start time for the tests
fn env(cfg: &'static Config) -> Env<'static> {
    Env {
        cfg,
        auth: None,
        now: Instant::now(),
        secs: 1_000_000,
    }
}

fn connect_v4(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = vec![5, 1, 0, 1];
    v.extend_from_slice(&ip);
    v.extend_from_slice(&port.to_be_bytes());
    v
}

fn connect_name(name: &[u8], port: u16) -> Vec<u8> {
    let mut v = vec![5, 1, 0, 3, name.len() as u8];
    v.extend_from_slice(name);
    v.extend_from_slice(&port.to_be_bytes());
    v
}

#[test]
fn wire_messages_decode_whole_or_not_at_all() {
    assert_eq!(greeting(&[]), Parse::Incomplete);
    assert_eq!(greeting(&[5]), Parse::Incomplete);
    assert_eq!(greeting(&[5, 2, 0]), Parse::Incomplete);
    assert_eq!(greeting(&[4, 1, 0]), Parse::Bad(Bad::Version));
    assert_eq!(greeting(&[5, 0]), Parse::Bad(Bad::Malformed));
    let mut all = vec![5, 255];
    all.extend(0..=254u8);
    assert_eq!(
        greeting(&all),
        Parse::Done(
            Offered {
                no_auth: true,
                user_pass: true
            },
            257
        )
    );
    // A 255-byte user name and password.
    let mut c = vec![1, 255];
    c.extend([b'u'; 255]);
    c.push(255);
    c.extend([b'p'; 255]);
    assert!(
        matches!(credentials(&c), Parse::Done((u, p), 513) if u.len() == 255 && p.len() == 255)
    );
    assert_eq!(credentials(&c[..300]), Parse::Incomplete);
    assert_eq!(credentials(&[1, 0, 1, b'p']), Parse::Bad(Bad::Malformed));
    assert_eq!(
        credentials(&[5, 1, b'u', 1, b'p']),
        Parse::Bad(Bad::Version)
    );
    // Requests: IPv4, IPv6, names (a literal sent as a name is an address), bad types.
    let r = request(&connect_v4([127, 0, 0, 1], 80));
    assert_eq!(
        r,
        Parse::Done(
            Request {
                command: CONNECT,
                dest: Dest::Addr("127.0.0.1:80".parse().unwrap())
            },
            10
        )
    );
    let mut v6 = vec![5, 1, 0, 4];
    v6.extend_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&443u16.to_be_bytes());
    assert!(
        matches!(request(&v6), Parse::Done(Request { dest: Dest::Addr(a), .. }, 22) if a == "[::1]:443".parse().unwrap())
    );
    assert!(
        matches!(request(&connect_name(b"Example.ORG", 80)), Parse::Done(Request { dest: Dest::Name(n, 80), .. }, _) if n == "example.org")
    );
    assert!(matches!(
        request(&connect_name(b"10.0.0.1", 80)),
        Parse::Done(
            Request {
                dest: Dest::Addr(_),
                ..
            },
            _
        )
    ));
    assert_eq!(request(&[5, 1, 0, 3, 0, 0, 80]), Parse::Bad(Bad::Malformed));
    let long = connect_name(&[b'a'; 255], 80);
    assert!(matches!(request(&long), Parse::Done(_, 262)));
    assert_eq!(request(&long[..100]), Parse::Incomplete);
    assert_eq!(request(&[5, 1, 0, 9, 1, 2]), Parse::Bad(Bad::AddressType));
    assert_eq!(request(&[4, 1, 0, 1]), Parse::Bad(Bad::Version));
    let mut out = Vec::new();
    write_reply(0, Some("[::1]:9".parse().unwrap()), &mut out);
    assert_eq!(out.len(), 22);
    assert_eq!(&out[..4], &[5, 0, 0, 4]);
}

#[test]
fn datagram_headers_decode_and_encode() {
    let mut d = vec![0, 0, 0, 1, 127, 0, 0, 1, 0, 53];
    d.extend_from_slice(b"query");
    assert_eq!(
        datagram(&d),
        Some((Dest::Addr("127.0.0.1:53".parse().unwrap()), &b"query"[..]))
    );
    let mut n = vec![0, 0, 0, 3, 4];
    n.extend_from_slice(b"host");
    n.extend_from_slice(&[0, 7]);
    n.extend_from_slice(b"x");
    assert_eq!(
        datagram(&n),
        Some((Dest::Name("host".into(), 7), &b"x"[..]))
    );
    // Fragments, truncated headers and unknown types are dropped.
    let mut f = d.clone();
    f[2] = 1;
    assert_eq!(datagram(&f), None);
    assert_eq!(datagram(&d[..7]), None);
    assert_eq!(datagram(&[0, 0, 0, 9, 1, 2]), None);
    let mut h = Vec::new();
    datagram_header("[::1]:9".parse().unwrap(), &mut h);
    assert_eq!(h.len(), 22);
    assert_eq!(&h[..4], &[0, 0, 0, 4]);
}

#[test]
fn udp_associate_binds_then_relays_under_the_same_rules() {
    let c = cfg("socks_ports = [\"1-1000\"]\n");
    let e = env(c);
    let mut s = Session::new("127.0.0.1".parse().unwrap());
    let mut input = vec![5, 1, 0];
    input.extend([5, 3, 0, 1, 127, 0, 0, 1, 0x30, 0x39]);
    s.handle_input(&input, &e);
    assert_eq!(
        s.poll(),
        Action::Associate {
            expect: Some("127.0.0.1:12345".parse().unwrap())
        }
    );
    assert!(matches!(
        s.handle_associated(Ok("127.0.0.1:40000".parse().unwrap()), &e),
        Action::Relay { .. }
    ));
    let ok = Dest::Addr("127.0.0.1:53".parse().unwrap());
    assert_eq!(
        s.admit_datagram(&ok, &e),
        Datagram::Send("127.0.0.1:53".parse().unwrap())
    );
    // Outside socks_ports, this proxy itself, a name that cannot be one: dropped.
    let far = Dest::Addr("127.0.0.1:5353".parse().unwrap());
    assert_eq!(s.admit_datagram(&far, &e), Datagram::Drop);
    assert_eq!(
        s.admit_datagram(&Dest::Name("a b".into(), 53), &e),
        Datagram::Drop
    );
    assert!(matches!(
        s.admit_datagram(&Dest::Name("example.test".into(), 53), &e),
        Datagram::Resolve { .. }
    ));
    let r = s.end_record((e.now, e.now), (10, 20)).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn no_auth_connect_asks_to_resolve_connect_and_tunnel() {
    let c = cfg("");
    let e = env(c);
    let mut s = Session::new("127.0.0.1".parse().unwrap());
    assert_eq!(s.poll(), Action::Read { read_first: true });
    // Greeting and request in one write, and data behind them: only the handshake is taken.
    let mut input = vec![5, 1, 0];
    input.extend(connect_name(b"localhost", 8080));
    input.extend(b"GET / HTTP/1.1\r\n");
    let n = s.handle_input(&input, &e);
    assert_eq!(&input[n..], b"GET / HTTP/1.1\r\n");
    assert_eq!(s.out(), &[5, 0]);
    s.out().clear();
    assert_eq!(
        s.poll(),
        Action::Resolve {
            host: "localhost".into(),
            port: 8080
        }
    );
    let a = s.handle_resolved(Ok(vec!["127.0.0.1:8080".parse().unwrap()]), &e);
    assert!(matches!(a, Action::Connect { ref addrs, from: None } if addrs.len() == 1));
    let a = s.handle_connected(Ok("127.0.0.1:40000".parse().unwrap()), &e);
    assert!(matches!(a, Action::Tunnel { .. }));
    let mut want = Vec::new();
    write_reply(0, Some("127.0.0.1:40000".parse().unwrap()), &mut want);
    assert_eq!(s.out(), &want);
}

/// Runs a session to its end through `input` (resolving to `addrs`), returning what it wrote.
fn refused(
    c: &'static Config,
    client: &str,
    input: &[u8],
    addrs: &[&str],
) -> (Vec<u8>, Option<Failure>) {
    let e = env(c);
    let mut s = Session::new(client.parse().unwrap());
    let mut n = 0;
    loop {
        match s.poll() {
            Action::Read { .. } => {
                let k = s.handle_input(&input[n..], &e);
                if k == 0 && matches!(s.poll(), Action::Read { .. }) {
                    break;
                }
                n += k;
            }
            Action::Resolve { .. } => {
                let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
                if let Action::Connect { .. } = s.handle_resolved(Ok(addrs), &e) {
                    let _ = s.handle_connected(Err(reply::CONNECTION_REFUSED), &e);
                }
            }
            Action::Close => break,
            a => panic!("{a:?}"),
        }
    }
    (std::mem::take(s.out()), s.failure().cloned())
}

#[test]
fn every_refusal_has_its_reply_code() {
    let c = cfg("");
    let mut hello = vec![5, 1, 0];
    let code = |out: &[u8]| out.get(3).copied();
    // BIND and unknown commands: command not supported.
    for cmd in [BIND, 9] {
        let mut i = hello.clone();
        i.extend([5, cmd, 0, 1, 127, 0, 0, 1, 0, 80]);
        let (out, why) = refused(c, "127.0.0.1", &i, &[]);
        assert_eq!(out[3], reply::COMMAND_NOT_SUPPORTED);
        assert_eq!(why, Some(Failure::Command(cmd)));
    }
    // An unknown address type.
    let mut i = hello.clone();
    i.extend([5, 1, 0, 7, 1, 2, 3, 4, 0, 80]);
    assert_eq!(
        code(&refused(c, "127.0.0.1", &i, &[]).0),
        Some(reply::ADDRESS_TYPE_NOT_SUPPORTED)
    );
    // An empty name: a general failure; a name that cannot be one: host unreachable.
    let mut i = hello.clone();
    i.extend([5, 1, 0, 3, 0, 0, 80]);
    assert_eq!(
        refused(c, "127.0.0.1", &i, &[]).0[3],
        reply::GENERAL_FAILURE
    );
    let mut i = hello.clone();
    i.extend(connect_name(b"a b\r\n", 80));
    assert_eq!(
        refused(c, "127.0.0.1", &i, &[]).0[3],
        reply::HOST_UNREACHABLE
    );
    // A name that does not resolve.
    let mut i = hello.clone();
    i.extend(connect_name(b"nowhere.test", 80));
    assert_eq!(
        refused(c, "127.0.0.1", &i, &[]).0[3],
        reply::HOST_UNREACHABLE
    );
    // Connection refused.
    let (out, why) = refused(c, "127.0.0.1", &i, &["127.0.0.1:80"]);
    assert_eq!(out[3], reply::CONNECTION_REFUSED);
    assert_eq!(why, Some(Failure::Unreachable(reply::CONNECTION_REFUSED)));
    // The rules: a public client of a proxy without rules, a private destination for a
    // client that may not reach it, a denied domain, a port outside socks_ports.
    let (out, why) = refused(c, "203.0.113.9", &i, &["127.0.0.1:80"]);
    assert_eq!(out[3], reply::NOT_ALLOWED, "{why:?}");
    let d = cfg("deny_domains = [\"blocked.test\"]\nsocks_ports = [\"1-1000\"]\n");
    let mut i = hello.clone();
    i.extend(connect_name(b"blocked.test", 80));
    assert_eq!(refused(d, "127.0.0.1", &i, &[]).0[3], reply::NOT_ALLOWED);
    let mut i = hello.clone();
    i.extend(connect_v4([127, 0, 0, 1], 8080));
    assert!(
        matches!(refused(d, "127.0.0.1", &i, &[]), (out, Some(Failure::Denied(Denial::Port { .. }))) if out[3] == reply::NOT_ALLOWED)
    );
    // This proxy itself.
    let mut i = hello.clone();
    i.extend(connect_v4([127, 0, 0, 1], 1080));
    assert!(matches!(
        refused(c, "127.0.0.1", &i, &[]).1,
        Some(Failure::Denied(Denial::Loop))
    ));
    // Another version: closed without a reply; no method in common: 0xFF.
    assert_eq!(refused(c, "127.0.0.1", &[4, 1, 0, 80], &[]).0, b"");
    hello = vec![5, 1, 2];
    assert_eq!(refused(c, "127.0.0.1", &hello, &[]).0, &[5, 0xff]);
}

#[test]
fn with_users_the_password_is_checked_off_the_worker() {
    let file = std::env::temp_dir().join(format!("ringway-socks-users-{}", std::process::id()));
    // alice:secret (apr1, as htpasswd -m writes it).
    let hash = crate::forward::auth::apr1(b"secret", b"abcdefgh");
    std::fs::write(&file, format!("alice:{hash}\n")).unwrap();
    let mut c = Config::parse(
        "t.toml",
        &format!(
            "[server]\nlisten = [{{ addr = \"127.0.0.1:1080\", forward = true }}]\n[forward]\nauth_file = \"{}\"\n",
            file.display()
        ),
    )
    .unwrap();
    let users =
        crate::forward::auth::Htpasswd::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
    c.forward.users = Some(std::sync::Arc::new(users));
    let c: &'static Config = Box::leak(Box::new(c));
    let _ = std::fs::remove_file(&file);
    let e = env(c);
    // Offering only no-auth: refused.
    let mut s = Session::new("127.0.0.1".parse().unwrap());
    s.handle_input(&[5, 1, 0], &e);
    assert_eq!(s.out(), &[5, 0xff]);
    assert_eq!(s.poll(), Action::Close);
    // User and password, and the request right behind them.
    let mut s = Session::new("127.0.0.1".parse().unwrap());
    let mut input = vec![5, 2, 0, 2, 1, 5];
    input.extend(b"alice");
    input.push(6);
    input.extend(b"secret");
    input.extend(connect_v4([127, 0, 0, 1], 80));
    let n = s.handle_input(&input, &e);
    assert_eq!(s.out(), &[5, 2]);
    let Action::Verify { user, password } = s.poll() else {
        panic!()
    };
    assert_eq!((user.as_str(), &password.0[..]), ("alice", &b"secret"[..]));
    assert!(c.forward.users.as_ref().unwrap().verify("alice", b"secret"));
    s.handle_verified(Some(true), &e);
    assert_eq!(s.out(), &[5, 2, 1, 0]);
    // The request was already buffered: it is handed over before anything is read.
    assert_eq!(s.poll(), Action::Read { read_first: false });
    s.handle_input(&input[n..], &e);
    assert!(matches!(s.poll(), Action::Resolve { .. }));
    assert_eq!(s.user(), Some("alice"));
    // Wrong: a failure status, then closed.
    let mut s = Session::new("127.0.0.1".parse().unwrap());
    s.handle_input(&input[..n], &e);
    s.handle_verified(Some(false), &e);
    assert_eq!(s.out(), &[5, 2, 1, 1]);
    assert_eq!(s.poll(), Action::Close);
}
