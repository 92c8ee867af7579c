//! WebSocket (RFC 6455) through the reverse proxy and through the forward proxy: the upgrade
//! request goes on with its `Upgrade` and `Connection` fields, the `101` comes back, then
//! frames flow both ways until the close handshake. The echo server and the client here speak
//! the frame format themselves, independently of the proxy's code.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::*;

/// Reads until the end of a head; returns it.
fn read_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// One frame: (opcode, payload), unmasking what the client masked.
fn read_frame(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).ok()?;
        len = u64::from(u16::from_be_bytes(l));
    } else if len == 127 {
        let mut l = [0u8; 8];
        s.read_exact(&mut l).ok()?;
        len = u64::from_be_bytes(l);
    }
    let mut mask = [0u8; 4];
    if masked {
        s.read_exact(&mut mask).ok()?;
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).ok()?;
    if masked {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some((h[0] & 0x0f, data))
}

fn frame(opcode: u8, data: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if data.len() < 126 {
        f.push(m | data.len() as u8);
    } else {
        f.push(m | 126);
        f.extend_from_slice(&(data.len() as u16).to_be_bytes());
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(data.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(data),
    }
    f
}

/// An echo server for one connection at a time; answers the upgrade, greets, echoes frames.
fn echo_server() -> SocketAddr {
    echo_server_on(None)
}

/// The echo server, over TLS when `tls` is given.
fn echo_server_on(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let tls = tls.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                match tls {
                    None => echo(s),
                    Some(cfg) => {
                        let conn = rustls::ServerConnection::new(cfg).unwrap();
                        echo(rustls::StreamOwned::new(conn, s))
                    }
                }
            });
        }
    });
    addr
}

fn echo(mut s: impl Read + Write) {
    let head = read_head(&mut s).to_ascii_lowercase();
    let ok = head.contains("\r\nupgrade: websocket\r\n")
        && head.contains("\r\nconnection: upgrade\r\n")
        && head.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n");
    if !ok {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    // The 101 and a first frame in one write: the proxy must pass both on.
    let mut out =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_vec();
    out.extend_from_slice(&frame(1, b"hello", None));
    s.write_all(&out).unwrap();
    while let Some((op, data)) = read_frame(&mut s) {
        if op == 8 {
            let _ = s.write_all(&frame(8, &data, None));
            return;
        }
        s.write_all(&frame(op, &data, None)).unwrap();
    }
}

/// Opens a WebSocket through `proxy` with `request_target` and checks an echo and the close.
fn talk(proxy: SocketAddr, request_target: &str) {
    let s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    talk_on(s, request_target)
}

/// The same over an open connection (plain or TLS).
fn talk_on(mut s: impl Read + Write, request_target: &str) {
    s.write_all(
        format!(
            "GET {request_target} HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Connection: upgrade\r\nUpgrade: websocket\r\n"),
        "{head}"
    );
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(read_frame(&mut s), Some((1, b"hello".to_vec())));
    // The last spans several TLS records and socket reads.
    for msg in [&b"ping-123"[..], &[7u8; 300][..], &[9u8; 65000][..]] {
        s.write_all(&frame(1, msg, Some([1, 2, 3, 4]))).unwrap();
        assert_eq!(read_frame(&mut s), Some((1, msg.to_vec())));
    }
    s.write_all(&frame(8, &[3, 232], Some([9, 9, 9, 9])))
        .unwrap();
    assert_eq!(read_frame(&mut s), Some((8, vec![3, 232])));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the close");
}

#[test]
fn websocket_through_the_reverse_proxy() {
    let origin = echo_server();
    let proxy = Proxy::start(&config_for(origin, ""));
    talk(proxy.addr, "/chat");
    // A second session on a new connection.
    talk(proxy.addr, "/chat");
}

#[test]
fn websocket_through_the_forward_proxy() {
    let origin = echo_server();
    let proxy = Proxy::start_quick(&["--forward"]);
    talk(proxy.addr, &format!("http://{origin}/chat"));
}

#[test]
fn other_upgrades_are_not_passed_on() {
    let origin = Origin::start();
    let proxy = Proxy::start(&config_for(origin.addr, ""));
    let r = request(
        proxy.addr,
        b"GET /u HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = origin.seen.lock().unwrap().last().cloned().unwrap();
    assert!(seen.header("upgrade").is_none());
    assert!(seen.header("http2-settings").is_none());
}

/// A reload keeps every connection whose route still exists: a WebSocket open across ten of
/// them (each changing the configuration) still echoes after each, and closes cleanly.
#[test]
fn a_websocket_survives_ten_reloads() {
    let origin = echo_server();
    let base = config_for(origin, "");
    let proxy = Proxy::start(&base);
    let path = proxy.config.as_ref().unwrap().0.clone();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
    assert_eq!(read_frame(&mut s), Some((1, b"hello".to_vec())));
    for i in 1..=10 {
        // Each reload changes something: a route added, so the generation is a new one.
        let extra = format!("[[routes]]\npath = \"/r{i}/\"\nupstream = \"app\"\n");
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        proxy.signal(libc::SIGHUP);
        proxy.wait_log(|l| l.matches("reloaded:").count() >= i);
        let msg = format!("after reload {i}");
        s.write_all(&frame(1, msg.as_bytes(), Some([5, 6, 7, 8])))
            .unwrap();
        assert_eq!(
            read_frame(&mut s),
            Some((1, msg.into_bytes())),
            "reload {i}"
        );
    }
    s.write_all(&frame(8, &[3, 232], Some([1, 1, 1, 1])))
        .unwrap();
    assert_eq!(read_frame(&mut s), Some((8, vec![3, 232])));
}

/// A self-signed certificate for `ws.test`, written to `dir`: (server config, CA file).
fn ws_cert(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ws.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ws.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("ws.key"), key.serialize_pem()).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .unwrap();
    (Arc::new(cfg), dir.join("ws.crt"))
}

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringway-ws-{name}-{}", std::process::id()))
}

/// A WebSocket on a TLS listener (wss:// to the proxy) and to a TLS upstream (the proxy speaks
/// wss:// to the origin): the tunnel copies through rustls on whichever side is TLS, both
/// sides at once included.
#[test]
fn websocket_over_tls_listeners_and_to_tls_upstreams() {
    let dir = scratch("tls");
    let (server_cfg, ca) = ws_cert(&dir);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_cfg_cert(&ca)).unwrap();
    let client_cfg = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let plain_origin = echo_server();
    let tls_origin = echo_server_on(Some(server_cfg));
    let crt = dir.join("ws.crt").display().to_string();
    let key = dir.join("ws.key").display().to_string();
    let config = |origin: SocketAddr, upstream_tls: &str, tls_listener: bool| {
        format!(
            "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", tls = {tls_listener} }}]\nworkers = 1\npin = false\n\
             [tls]\ncertificates = [{{ cert = \"{crt}\", key = \"{key}\" }}]\n\
             [upstreams.app]\nservers = [\"{origin}\"]\n{upstream_tls}\n[[routes]]\nupstream = \"app\"\n"
        )
    };
    let upstream_tls = format!("tls = {{ server_name = \"ws.test\", ca = \"{crt}\" }}");
    let wss = |proxy: &Proxy| {
        let tcp = TcpStream::connect(proxy.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("ws.test").unwrap();
        let conn = rustls::ClientConnection::new(client_cfg.clone(), name).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    };
    // TLS from the client, plain to the origin.
    let p = Proxy::start(&config(plain_origin, "", true));
    talk_on(wss(&p), "/chat");
    talk_on(wss(&p), "/chat");
    drop(p);
    // Plain from the client, TLS to the origin.
    let p = Proxy::start(&config(tls_origin, &upstream_tls, false));
    talk(p.addr, "/chat");
    drop(p);
    // TLS on both sides.
    let p = Proxy::start(&config(tls_origin, &upstream_tls, true));
    talk_on(wss(&p), "/chat");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

fn server_cfg_cert(path: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path).unwrap()
}
