//! WebSocket (RFC 6455) through the reverse proxy and through the forward proxy: the upgrade
//! request goes on with its `Upgrade` and `Connection` fields, the `101` comes back, then
//! frames flow both ways until the close handshake. The echo server and the client here speak
//! the frame format themselves, independently of the proxy's code.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use support::*;

/// Reads until the end of a head; returns it.
fn read_head(s: &mut TcpStream) -> String {
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
fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
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
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let head = read_head(&mut s).to_ascii_lowercase();
                let ok = head.contains("\r\nupgrade: websocket\r\n")
                    && head.contains("\r\nconnection: upgrade\r\n")
                    && head.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n");
                if !ok {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                // The 101 and a first frame in one write: the proxy must pass both on.
                let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
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
            });
        }
    });
    addr
}

/// Opens a WebSocket through `proxy` with `request_target` and checks an echo and the close.
fn talk(proxy: SocketAddr, request_target: &str) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
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
    for msg in [&b"ping-123"[..], &[7u8; 300][..]] {
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
