//! `gen`: a monoio HTTP/1.1 load generator with an open-loop mode.
//!
//! Closed loop (default): each connection sends its next request when the previous response
//! has arrived, like wrk. Open loop (`--rate R`): requests are due at fixed times (R per second
//! over all connections). A request that could not be sent on time because the previous
//! response on its connection arrived late is measured from when it was *due*, so a stalled
//! server is charged for the requests it delayed (coordinated omission correction, as in wrk2);
//! one sent late only because the generator's own timer woke late is measured from its send.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::Flags;

struct Target {
    addr: std::net::SocketAddr,
    request: Vec<u8>,
    /// The local address connections are made from (`--from`: another loopback address is
    /// another client to the proxy).
    from: Option<std::net::IpAddr>,
}

fn parse_url(url: &str, close: bool) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = authority
        .parse()
        .map_err(|_| format!("--url: expected an IP:port authority, got {authority:?}"))?;
    let conn = if close { "Connection: close\r\n" } else { "" };
    Ok(Target {
        addr,
        from: None,
        request: format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n{conn}\r\n").into_bytes(),
    })
}

#[derive(Default)]
struct Totals {
    done: u64,
    errors: u64,
    /// Of `done`, responses with a status of 400 or more (a limit's refusals).
    refused: u64,
}

/// Reads one response: its status, `None` on any error or close.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    buf.clear();
    let (head_len, body_len, status) = loop {
        let len = buf.len();
        let cap = buf.capacity();
        let (r, b) = s.read(std::mem::take(buf).slice_mut(len..cap)).await;
        *buf = b.into_inner();
        match r {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hs);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let cl = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
                match cl {
                    Some(cl) => break (n, cl, resp.code.unwrap_or(0)),
                    None => return None,
                }
            }
            Ok(httparse::Status::Partial) if buf.len() < buf.capacity() => {}
            _ => return None,
        }
    };
    let mut left = (head_len + body_len).saturating_sub(buf.len());
    while left > 0 {
        buf.clear();
        let cap = buf.capacity().min(left);
        let (r, b) = s.read(std::mem::take(buf).slice_mut(0..cap)).await;
        *buf = b.into_inner();
        match r {
            Ok(0) | Err(_) => return None,
            Ok(n) => left -= n,
        }
    }
    Some(status)
}

/// A connection to `t.addr`, from `t.from` when given.
async fn connect(t: &Target) -> std::io::Result<TcpStream> {
    let Some(from) = t.from else {
        return TcpStream::connect_addr(t.addr).await;
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(t.addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.bind(&std::net::SocketAddr::new(from, 0).into())?;
    // A blocking connect on loopback: it completes at once.
    s.connect(&t.addr.into())?;
    TcpStream::from_std(s.into())
}

/// What every connection task shares.
struct Run {
    target: Target,
    conns: usize,
    interval: Option<Duration>,
    start: Instant,
    end: Instant,
    close: bool,
    hist: RefCell<Histogram<u64>>,
    totals: RefCell<Totals>,
}

async fn connection(run: Rc<Run>, index: usize) {
    let (t, conns, interval, start, end, close) = (
        &run.target,
        run.conns,
        run.interval,
        run.start,
        run.end,
        run.close,
    );
    let (hist, totals) = (&run.hist, &run.totals);
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    // Stagger open-loop connections evenly over one interval.
    let offset = interval.map_or(Duration::ZERO, |iv| iv * index as u32 / conns as u32);
    let mut k: u32 = 0;
    let mut prev_done = start;
    loop {
        let due = match interval {
            Some(iv) => start + offset + iv * k,
            None => Instant::now(),
        };
        if due >= end {
            return;
        }
        if due > Instant::now() {
            monoio::time::sleep_until(due).await;
        }
        // Coordinated omission: a request held back because the previous response was late is
        // charged from when it was due. A request sent late only because this generator's timer
        // (1 ms resolution) woke late is charged from when it was actually sent.
        let charged_from = if prev_done > due { due } else { Instant::now() };
        k += 1;
        if stream.is_none() {
            match connect(t).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(_) => {
                    totals.borrow_mut().errors += 1;
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let (r, _) = s.write_all(t.request.clone()).await;
        let status = match r {
            Ok(_) => read_response(s, &mut buf).await,
            Err(_) => None,
        };
        let Some(status) = status else {
            totals.borrow_mut().errors += 1;
            stream = None;
            continue;
        };
        if status >= 400 {
            totals.borrow_mut().refused += 1;
        }
        let done = Instant::now();
        prev_done = done;
        let us = done.saturating_duration_since(charged_from).as_micros() as u64;
        let _ = hist.borrow_mut().record(us.max(1));
        totals.borrow_mut().done += 1;
        if close {
            stream = None;
        }
    }
}

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let f = Flags(args);
    let url = f.value(&["--url"]).ok_or("gen needs --url")?;
    let conns: usize = f.parsed(&["-c", "--connections"], 16)?;
    let secs: u64 = f.parsed(&["-d", "--duration"], 5)?;
    let rate: Option<u64> = match f.value(&["--rate"]) {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| format!("--rate: invalid value {v:?}"))?,
        ),
    };
    if conns == 0 || rate == Some(0) {
        return Err("-c and --rate must be positive".into());
    }
    let close = f.has("--close");
    let mut target = parse_url(url, close)?;
    target.from = match f.value(&["--from"]) {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| format!("--from: expected an IP address, got {v:?}"))?,
        ),
    };
    let interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r as f64));
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| e.to_string())?;
    let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let run = rt.block_on(async {
        let start = Instant::now();
        let run = Rc::new(Run {
            target,
            conns,
            interval,
            start,
            end: start + Duration::from_secs(secs),
            close,
            hist: RefCell::new(hist),
            totals: RefCell::new(Totals::default()),
        });
        let tasks: Vec<_> = (0..conns)
            .map(|i| monoio::spawn(connection(run.clone(), i)))
            .collect();
        for t in tasks {
            t.await;
        }
        run
    });
    let (hist, totals) = (&run.hist, &run.totals);
    let h = hist.borrow();
    let t = totals.borrow();
    println!("requests {}", t.done);
    println!("errors {}", t.errors);
    println!("refused {}", t.refused);
    println!("rps {:.0}", t.done as f64 / secs as f64);
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        println!("{name}_us {}", h.value_at_quantile(q));
    }
    println!("max_us {}", h.max());
    Ok(())
}
