//! `socks`: a SOCKS5 load client. Each of `-c` threads loops for `-d` seconds: a new
//! connection to the proxy, the no-authentication greeting, CONNECT to `--target` (an IPv4
//! address), `GET PATH HTTP/1.0`, the response read to its end. One transfer per tunnel, so the
//! figures are per tunnel: tunnels/s and bytes. Blocking sockets, a thread per connection: the
//! client's own cost is on its CPUs, not the proxy's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Flags;

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let f = Flags(args);
    let proxy = f.addr("--proxy")?;
    let target = f.addr("--target")?;
    let path = f.value(&["--path"]).unwrap_or("/1m").to_string();
    let conns: usize = f.parsed(&["-c", "--conns"], 8)?;
    let secs: u64 = f.parsed(&["-d", "--duration"], 5)?;
    let SocketAddr::V4(t) = target else {
        return Err("--target: an IPv4 address".into());
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    let get = format!("GET {path} HTTP/1.0\r\nHost: origin\r\n\r\n").into_bytes();
    let (done, bytes, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let until = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (req, get) = (req.clone(), get.clone());
            let (done, bytes, errors) = (done.clone(), bytes.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                // Bounded in time and in count.
                for _ in 0..10_000_000u64 {
                    if Instant::now() >= until {
                        break;
                    }
                    match one(proxy, &req, &get, &mut buf) {
                        Some(n) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        None => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let took = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "tunnels {n} errors {} bytes {} tunnels/s {:.0} MB/s {:.1}",
        errors.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        n as f64 / took,
        bytes.load(Ordering::Relaxed) as f64 / took / 1e6
    );
    Ok(())
}

/// One tunnel and one transfer: the response's bytes, or `None` when anything failed.
fn one(proxy: SocketAddr, req: &[u8], get: &[u8], buf: &mut [u8]) -> Option<u64> {
    let mut s = TcpStream::connect(proxy).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let _ = s.set_nodelay(true);
    s.write_all(&[5, 1, 0]).ok()?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).ok()?;
    if m != [5, 0] {
        return None;
    }
    s.write_all(req).ok()?;
    let mut r = [0u8; 10];
    s.read_exact(&mut r).ok()?;
    if r[1] != 0 {
        return None;
    }
    s.write_all(get).ok()?;
    let mut n = 0u64;
    loop {
        match s.read(buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(_) => return None,
        }
    }
    Some(n)
}
