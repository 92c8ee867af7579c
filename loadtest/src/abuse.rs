//! `abuse`: one abusive client at full speed (wrk, 16 connections, from 127.0.0.1) beside a
//! well-behaved one at a fixed rate (`gen --rate`, from 127.0.0.2), through ringway and nginx,
//! each without and with a per-client rate limit (ringway `[[rate_limits]]`, nginx
//! `limit_req ... nodelay`, the same rate and burst). Reports the polite client's latency and
//! errors, what the abusive one got, and what a refused request costs each proxy against a
//! served one: CPU per served request from the run without the limit, and per refused request
//! as (CPU with the limit − served × that) / refused.
//!
//! Layout as in `compare`: each proxy alone on CPU 0 (one worker), load and origin on the rest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::compare::{cpu_range, free_port, median, on_path, spread, wait_200, Kill};
use crate::procfs::{total_ticks, with_children, TICKS_PER_SEC};
use crate::{wrk, Flags};

/// What one run measured.
#[derive(Clone, Copy, Default)]
struct Run {
    cpu_s: f64,
    abusive: wrk::WrkResult,
    polite: Polite,
}

#[derive(Clone, Copy, Default)]
struct Polite {
    requests: u64,
    errors: u64,
    refused: u64,
    p50_us: f64,
    p99_us: f64,
}

impl Run {
    fn served(&self) -> f64 {
        (self.abusive.requests - self.abusive.non2xx + self.polite.requests - self.polite.refused)
            as f64
    }

    fn refused(&self) -> f64 {
        (self.abusive.non2xx + self.polite.refused) as f64
    }
}

fn parse_gen(text: &str) -> Polite {
    let mut p = Polite::default();
    for line in text.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        let n: f64 = v.trim().parse().unwrap_or(0.0);
        match k {
            "requests" => p.requests = n as u64,
            "errors" => p.errors = n as u64,
            "refused" => p.refused = n as u64,
            "p50_us" => p.p50_us = n,
            "p99_us" => p.p99_us = n,
            _ => {}
        }
    }
    p
}

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let f = Flags(args);
    let rounds: usize = f.parsed(&["--rounds"], 3)?;
    let secs: u64 = f.parsed(&["--duration", "-d"], 5)?;
    let rate: u32 = f.parsed(&["--rate"], 100)?;
    let polite_rate: u32 = f.parsed(&["--polite-rate"], 40)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ringway_bin = f
        .value(&["--ringway"])
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/ringway"));
    let missing: Vec<&str> = ["nginx", "wrk", "taskset"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing: {}", missing.join(", ")));
    }
    if !ringway_bin.is_file() {
        return Err(format!(
            "{} not found: build it with cargo build --release",
            ringway_bin.display()
        ));
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu < 2 {
        return Err("abuse needs 2 CPUs: the proxy on one, the load on the others".into());
    }
    let load = cpu_range(1, ncpu);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("ringway-abuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;

    let origin_port = free_port()?;
    let _origin = Kill(
        Command::new("taskset")
            .args(["-c", &load])
            .arg(&exe)
            .args(["origin", "--listen", &format!("127.0.0.1:{origin_port}")])
            .spawn()
            .map_err(|e| format!("starting the origin: {e}"))?,
    );
    wait_200(origin_port, "/len/100", Duration::from_secs(10))
        .map_err(|()| "the origin did not answer".to_string())?;

    let (nginx_open, nginx_limited) = (free_port()?, free_port()?);
    let nginx_conf = format!(
        "# One worker on CPU 0; the same origin, keep-alive upstream, no access log.\n\
         worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    access_log off;\n    keepalive_requests 1000000;\n\
         \x20   limit_req_zone $binary_remote_addr zone=per_client:10m rate={rate}r/s;\n\
         \x20   limit_req_status 429;\n\
         \x20   upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 256; }}\n\
         \x20   server {{ listen 127.0.0.1:{nginx_open} reuseport;\n\
         \x20       location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
         \x20   server {{ listen 127.0.0.1:{nginx_limited} reuseport;\n\
         \x20       location / {{ limit_req zone=per_client burst={rate} nodelay;\n\
         \x20           proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), &nginx_conf).map_err(|e| e.to_string())?;
    let st = Command::new("taskset")
        .args(["-c", "0", "nginx", "-p"])
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("nginx failed to start".into());
    }
    struct StopNginx(PathBuf);
    impl Drop for StopNginx {
        fn drop(&mut self) {
            let _ = Command::new("nginx")
                .args(["-s", "stop", "-p"])
                .arg(&self.0)
                .arg("-c")
                .arg(self.0.join("nginx.conf"))
                .stderr(Stdio::null())
                .status();
        }
    }
    let _nginx = StopNginx(dir.clone());

    let (ringway_open, ringway_limited) = (free_port()?, free_port()?);
    let ringway_conf = |port: u16, limited: bool| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\ncpus = \"0\"\n\n\
             [upstreams.origin]\nservers = [\"127.0.0.1:{origin_port}\"]\nkeepalive = 256\n\n\
             [[routes]]\nupstream = \"origin\"\n{}",
            if limited {
                format!("\n[[rate_limits]]\nrate = \"{rate}/s\"\nburst = {rate}\n")
            } else {
                String::new()
            }
        )
    };
    let mut ringways = Vec::new();
    for (port, limited) in [(ringway_open, false), (ringway_limited, true)] {
        let file = dir.join(format!("ringway-{port}.toml"));
        std::fs::write(&file, ringway_conf(port, limited)).map_err(|e| e.to_string())?;
        ringways.push(Kill(
            Command::new(&ringway_bin)
                .arg("--config")
                .arg(&file)
                .args(["--log-level", "warn"])
                .spawn()
                .map_err(|e| format!("starting {}: {e}", ringway_bin.display()))?,
        ));
    }
    for port in [nginx_open, nginx_limited, ringway_open, ringway_limited] {
        wait_200(port, "/len/100", Duration::from_secs(10))
            .map_err(|()| format!("the proxy on port {port} did not answer"))?;
    }
    let nginx_master: u32 = std::fs::read_to_string(dir.join("nginx.pid"))
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|_| "bad nginx pid file".to_string())?;
    let nginx_pids = with_children(nginx_master);

    println!("# One abusive client beside a polite one, with and without a rate limit\n");
    println!(
        "Proxies on CPU 0 (one worker), wrk, gen and the origin on CPU {load}; {rounds} round(s) of {secs} s.\n\
         Abusive: wrk -t1 -c16 from 127.0.0.1 at full speed. Polite: gen -c4 --rate {polite_rate} from 127.0.0.2.\n\
         Limit: {rate}/s per client address, burst {rate}, refusals 429 (nginx: limit_req burst={rate} nodelay).\n"
    );
    println!(
        "nginx config:\n```nginx\n{nginx_conf}```\nringway config (limited):\n```toml\n{}```\n",
        ringway_conf(ringway_limited, true)
    );

    let measure = |port: u16, pids: &[u32]| -> Result<Run, String> {
        let url = format!("http://127.0.0.1:{port}/len/100");
        let polite = Command::new("taskset")
            .args(["-c", &load])
            .arg(&exe)
            .args(["gen", "--url", &url, "-c", "4", "--from", "127.0.0.2"])
            .args(["--rate", &polite_rate.to_string(), "-d", &secs.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting gen: {e}"))?;
        let before = total_ticks(pids);
        let abusive = wrk::run(&load, &url, 16, secs, false)?;
        let after = total_ticks(pids);
        let out = polite.wait_with_output().map_err(|e| e.to_string())?;
        Ok(Run {
            cpu_s: (after - before) as f64 / TICKS_PER_SEC,
            abusive,
            polite: parse_gen(&String::from_utf8_lossy(&out.stdout)),
        })
    };

    let names = ["ringway", "nginx"];
    // [proxy][limited] per round.
    let mut runs: Vec<[Vec<Run>; 2]> = vec![Default::default(), Default::default()];
    for round in 0..rounds {
        for k in 0..2 {
            let p = (k + round) % 2;
            for limited in [false, true] {
                let (port, pids) = match (p, limited) {
                    (0, false) => (ringway_open, vec![ringways[0].0.id()]),
                    (0, true) => (ringway_limited, vec![ringways[1].0.id()]),
                    (_, false) => (nginx_open, nginx_pids.clone()),
                    (_, true) => (nginx_limited, nginx_pids.clone()),
                };
                let r = measure(port, &pids)?;
                eprintln!(
                    "round {round} {} {}: abusive {} ({} refused), polite {} (p99 {:.0} µs, {} errors, {} refused), CPU {:.2} s",
                    names[p],
                    if limited { "limited" } else { "open" },
                    r.abusive.requests,
                    r.abusive.non2xx,
                    r.polite.requests,
                    r.polite.p99_us,
                    r.polite.errors,
                    r.polite.refused,
                    r.cpu_s
                );
                runs[p][usize::from(limited)].push(r);
            }
        }
    }

    println!("| proxy | limit | abusive req/s | of which refused | polite p50 | polite p99 | polite errors / refused | CPU µs per request |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let mut served_cost = [0.0f64; 2];
    let mut refused_cost = [0.0f64; 2];
    for p in 0..2 {
        for limited in [false, true] {
            let rs = &runs[p][usize::from(limited)];
            let m = |f: &dyn Fn(&Run) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
            println!(
                "| {} | {} | {:.0} | {:.1}% | {:.0} µs | {:.0} µs | {} / {} | {:.2} |",
                names[p],
                if limited { "on" } else { "off" },
                m(&|r| r.abusive.rps),
                m(&|r| 100.0 * r.abusive.non2xx as f64 / r.abusive.requests.max(1) as f64),
                m(&|r| r.polite.p50_us),
                m(&|r| r.polite.p99_us),
                rs.iter().map(|r| r.polite.errors).sum::<u64>(),
                rs.iter().map(|r| r.polite.refused).sum::<u64>(),
                m(&|r| 1e6 * r.cpu_s / (r.served() + r.refused()).max(1.0)),
            );
        }
        // Per round: the served cost from the open run, the refused cost from the limited one.
        for (open, lim) in runs[p][0].iter().zip(&runs[p][1]) {
            let served = open.cpu_s / open.served().max(1.0);
            let refused = (lim.cpu_s - lim.served() * served).max(0.0) / lim.refused().max(1.0);
            ratios[p].push(refused / served);
        }
        served_cost[p] = median(
            &mut runs[p][0]
                .iter()
                .map(|r| 1e6 * r.cpu_s / r.served().max(1.0))
                .collect::<Vec<_>>(),
        );
        refused_cost[p] = served_cost[p] * median(&mut ratios[p].clone());
    }
    println!("\n| proxy | CPU per served request | CPU per refused request | refused / served (median, spread) |");
    println!("|---|---|---|---|");
    for p in 0..2 {
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:.2}× ({}) |",
            names[p],
            served_cost[p],
            refused_cost[p],
            median(&mut ratios[p].clone()),
            spread(&ratios[p])
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
