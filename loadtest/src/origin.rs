//! An origin for framings nginx does not serve from files: `GET /chunked/N/C` answers N bytes
//! in chunks of C bytes, `GET /close/N` N bytes delimited by closing, anything else
//! `/len/N`-style with a Content-Length. A request body (Content-Length) is read and dropped,
//! so uploads can be measured too (`POST /len/100`). Responses are built once per path and written with one
//! `write_all`, a thread per connection (the load is a few hundred connections at most), so
//! the origin costs little next to the proxy under test.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

type Built = Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>;

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let f = crate::Flags(args);
    let listen = f.addr("--listen")?;
    let l = TcpListener::bind(listen).map_err(|e| format!("--listen {listen}: {e}"))?;
    let built = Built::default();
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let built = built.clone();
        std::thread::spawn(move || {
            let _ = serve(s, &built);
        });
    }
    Ok(())
}

fn serve(s: TcpStream, built: &Built) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        // Proxies under comparison forward `/framing/…` here.
        let target = line.split(' ').nth(1).unwrap_or("/");
        let path = target
            .strip_prefix("/framing")
            .unwrap_or(target)
            .to_string();
        let mut close = line.trim_end().ends_with("HTTP/1.0");
        let mut length = 0u64;
        // The rest of the head.
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            let l = line.to_ascii_lowercase();
            close |= l.starts_with("connection:") && l.contains("close");
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        // An upload (length-framed, as the load sends them) is read and dropped.
        io::copy(&mut (&mut r).take(length), &mut io::sink())?;
        let resp = {
            let mut b = built.lock().unwrap_or_else(|e| e.into_inner());
            b.entry(path.clone())
                .or_insert_with(|| Arc::new(build(&path)))
                .clone()
        };
        w.write_all(&resp)?;
        if close || path.starts_with("/close/") {
            return Ok(());
        }
    }
}

fn build(path: &str) -> Vec<u8> {
    let parts: Vec<&str> = path.split('/').collect();
    let arg = |i: usize| -> usize { parts.get(i).and_then(|s| s.parse().ok()).unwrap_or(0) };
    let body = vec![b'x'; arg(2)];
    let mut out = Vec::with_capacity(body.len() + 1024);
    match parts.get(1).copied() {
        Some("chunked") => {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for c in body.chunks(arg(3).max(1)) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Some("close") => {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            out.extend_from_slice(&body);
        }
        _ => {
            out.extend_from_slice(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            );
            out.extend_from_slice(&body);
        }
    }
    out
}
