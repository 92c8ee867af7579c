//! Running wrk and reading its report.

use std::process::Command;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors plus non-2xx/3xx responses.
    pub errors: u64,
    /// Of those, non-2xx/3xx responses.
    pub non2xx: u64,
}

pub(crate) fn run(
    cpus: &str,
    url: &str,
    conns: usize,
    secs: u64,
    close: bool,
) -> Result<WrkResult, String> {
    run_with(cpus, url, conns, secs, close, None)
}

/// [`run`] with a Lua script (e.g. one that sets `wrk.path` to an absolute URI for a forward
/// proxy).
pub(crate) fn run_with(
    cpus: &str,
    url: &str,
    conns: usize,
    secs: u64,
    close: bool,
    script: Option<&std::path::Path>,
) -> Result<WrkResult, String> {
    // One wrk thread per load CPU: on the 2-core machine that is one, as before; on a
    // many-core machine (`compare --workers N`) one thread cannot load N workers.
    let threads = cpu_count(cpus).clamp(1, conns.max(1));
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus, "wrk", "--latency"])
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"));
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(url);
    let out = cmd.output().map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read wrk output:\n{text}"))
}

/// How many CPUs a taskset list names ("1", "8-15", "0,2-3").
fn cpu_count(cpus: &str) -> usize {
    cpus.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum()
}

/// Full TLS handshakes: `clients` copies of `openssl s_time -new` (a new session on every
/// connection, one `GET path` each), run together on `cpus` for `secs`. wrk cannot do this: it
/// resumes the previous session on every reconnect. No latency figures.
pub(crate) fn s_time(
    cpus: &str,
    port: u16,
    path: &str,
    clients: usize,
    secs: u64,
) -> Result<WrkResult, String> {
    let children = (0..clients)
        .map(|_| {
            Command::new("taskset")
                .args(["-c", cpus, "openssl", "s_time", "-new", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-time", &secs.to_string(), "-www", path])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("running openssl s_time: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut r = WrkResult::default();
    for c in children {
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        r.requests += parse_s_time(&text)
            .ok_or_else(|| format!("cannot read openssl s_time output:\n{text}"))?;
    }
    r.rps = r.requests as f64 / secs as f64;
    Ok(r)
}

/// The connection count of `N connections in T real seconds, …`.
fn parse_s_time(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.contains("connections in") && l.contains("real seconds"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn duration_us(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => return None,
    })
}

pub(crate) fn parse(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if t.starts_with("50%") {
            r.p50_us = duration_us(words.get(1)?)?;
        } else if t.starts_with("99%") {
            r.p99_us = duration_us(words.get(1)?)?;
        } else if t.contains("requests in") {
            r.requests = words.first()?.parse().ok()?;
        } else if t.starts_with("Requests/sec:") {
            r.rps = words.get(1)?.parse().ok()?;
        } else if t.starts_with("Non-2xx or 3xx responses:") {
            r.non2xx = words.last()?.parse::<u64>().ok()?;
            r.errors += r.non2xx;
        } else if t.starts_with("Socket errors:") {
            // Socket errors: connect 0, read 0, write 0, timeout 0
            r.errors += t
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (r.requests > 0).then_some(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_the_cpus_of_a_taskset_list() {
        assert_eq!(super::cpu_count("1"), 1);
        assert_eq!(super::cpu_count("8-15"), 8);
        assert_eq!(super::cpu_count("0,2-3"), 3);
    }

    #[test]
    fn parses_a_report() {
        let text = "Running 5s test @ http://127.0.0.1:9/\n  1 threads and 16 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   610.77us  120.21us   3.01ms   80.00%\n\
  Latency Distribution\n     50%  590.00us\n     75%  650.00us\n     90%  700.00us\n     99%    1.20ms\n\
  130000 requests in 5.00s, 30.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n\
  Non-2xx or 3xx responses: 4\nRequests/sec:  26000.50\nTransfer/sec:      6.00MB\n";
        let r = super::parse(text).unwrap();
        assert_eq!(r.requests, 130000);
        assert_eq!(r.p50_us, 590.0);
        assert_eq!(r.p99_us, 1200.0);
        assert_eq!(r.rps, 26000.5);
        assert_eq!(r.errors, 7);
        assert_eq!(r.non2xx, 4);
    }

    #[test]
    fn parses_s_time() {
        let text = "Collecting connection statistics for 3 seconds\n****\n\n\
3140 connections in 1.57s; 2000.00 connections/user sec, bytes read 194680\n\
3140 connections in 4 real seconds, 62 bytes read per connection\n";
        assert_eq!(super::parse_s_time(text), Some(3140));
    }
}
