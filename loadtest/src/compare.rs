//! `compare`: nginx and ringway side by side under wrk, on the same origin and CPUs.
//!
//! Layout on an N-CPU machine with `--workers W`: both proxies get CPUs 0..W (one at a time:
//! they alternate, never run together), wrk and the origin get CPUs W..N. Each case runs
//! `--rounds` times per proxy, alternating which proxy goes first, and the report gives medians
//! and the spread of the per-round ratios.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs::{peak_rss_kib, total_ticks, with_children, TICKS_PER_SEC};
use crate::wrk::{self, WrkResult};
use crate::Flags;

const BODIES: [(&str, usize); 3] = [("100b", 100), ("64k", 64 << 10), ("1m", 1 << 20)];

#[derive(Clone, Copy)]
struct Case {
    /// Over TLS (to the proxies' TLS listeners; the origin stays plain).
    tls: bool,
    /// One request per connection (over TLS wrk resumes the previous session each time).
    close: bool,
    /// Over TLS, a full handshake per connection (`openssl s_time -new`, `conns` clients).
    new_sessions: bool,
    conns: usize,
    body: &'static str,
    /// A cache hit: `/cached/BODY` on both proxies (stored after the first request), with a
    /// floor row of nginx serving the same bytes itself.
    hit: bool,
    /// A body framed otherwise than by length: `(label, path)` on `ringway-loadtest origin`
    /// (`/framing/PATH` on both proxies).
    framing: Option<(&'static str, &'static str)>,
    /// An upload: a POST with a body of this many bytes to `/framing/len/100` (a 100-byte
    /// answer from `ringway-loadtest origin`, which reads and drops the body).
    upload: Option<usize>,
}

impl Case {
    /// A plain keep-alive GET of `body` from `conns` connections; each case changes from it
    /// what it measures.
    fn ka(conns: usize, body: &'static str) -> Self {
        Self {
            tls: false,
            close: false,
            new_sessions: false,
            conns,
            body,
            hit: false,
            framing: None,
            upload: None,
        }
    }

    fn name(&self) -> String {
        if self.new_sessions {
            return format!("tls full handshakes, {} clients", self.conns);
        }
        if self.hit {
            return format!("cache hit keep-alive c={} {}", self.conns, self.body);
        }
        if let Some(n) = self.upload {
            return format!(
                "upload {} KiB keep-alive c={} {}",
                n / 1024,
                self.conns,
                self.body
            );
        }
        if let Some((label, _)) = self.framing {
            return format!("{label} keep-alive c={} {}", self.conns, self.body);
        }
        format!(
            "{}{} c={} {}",
            if self.tls { "tls " } else { "" },
            if self.close { "close" } else { "keep-alive" },
            self.conns,
            self.body
        )
    }
}

struct Sample {
    wrk: WrkResult,
    cpu_us_per_req: f64,
}

/// Processes started here; stopped when dropped.
struct Procs {
    dir: PathBuf,
    ringway: Option<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        if let Some(c) = self.ringway.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for conf in ["proxy-nginx.conf", "origin-nginx.conf"] {
            let _ = Command::new("nginx")
                .args(["-s", "stop", "-p"])
                .arg(&self.dir)
                .arg("-c")
                .arg(self.dir.join(conf))
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub(crate) fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file()
}

pub(crate) fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_http(port: u16, what: &str) -> Result<(), String> {
    wait_200(port, "/100b", Duration::from_secs(10))
        .map_err(|()| format!("{what} on port {port} did not answer GET /100b with 200"))
}

/// Polls (with a deadline) until a server starting on `port` answers `GET target` with 200:
/// a process that has just been spawned gives no other sign that it is listening.
pub(crate) fn wait_200(port: u16, target: &str, limit: Duration) -> Result<(), ()> {
    use std::io::{Read, Write};
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(req.as_bytes());
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            if r.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

pub(crate) fn cpu_range(from: usize, to: usize) -> String {
    if to - from == 1 {
        from.to_string()
    } else {
        format!("{from}-{}", to - 1)
    }
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn spread(v: &[f64]) -> String {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}–{max:.2}")
}

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let f = Flags(args);
    let quick = f.has("--quick");
    let rounds: usize = f.parsed(&["--rounds"], if quick { 1 } else { 3 })?;
    let secs: u64 = f.parsed(&["--duration", "-d"], if quick { 2 } else { 5 })?;
    let workers: usize = f.parsed(&["--workers", "-w"], 1)?;
    let filter: Vec<String> = f
        .value(&["--cases"])
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ringway_bin = f
        .value(&["--ringway"])
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/ringway"));

    let missing: Vec<&str> = ["nginx", "wrk", "taskset", "openssl"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing: {} (install with: apt-get install {})",
            missing.join(", "),
            missing
                .iter()
                .map(|t| if *t == "taskset" { "util-linux" } else { t })
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if !ringway_bin.is_file() {
        return Err(format!(
            "{} not found: build it with cargo build --release",
            ringway_bin.display()
        ));
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu < workers + 1 {
        return Err(format!("--workers {workers} needs at least {} CPUs (one more for wrk and the origin); this machine has {ncpu}", workers + 1));
    }
    // With --sweep the load stays on the CPUs above the largest worker count for every step.
    let load_from: usize = f.parsed(&["--load-from"], workers)?;
    if load_from < workers || load_from >= ncpu {
        return Err(format!(
            "--load-from {load_from}: expected {workers}..{}",
            ncpu - 1
        ));
    }
    if f.has("--sweep") {
        return sweep(args, workers);
    }
    let proxy_cpus = cpu_range(0, workers);
    let load_cpus = cpu_range(load_from, ncpu);

    let dir = std::env::temp_dir().join(format!("ringway-compare-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www")).map_err(|e| e.to_string())?;
    for (name, size) in BODIES {
        std::fs::write(dir.join("www").join(name), vec![b'x'; size]).map_err(|e| e.to_string())?;
    }
    let (origin_port, nginx_port, ringway_port) = (free_port()?, free_port()?, free_port()?);
    let (nginx_tls_port, ringway_tls_port) = (free_port()?, free_port()?);
    let nginx_defaults_port = free_port()?;
    let framing_port = free_port()?;
    // One ECDSA P-256 certificate for both proxies.
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("cert.pem"), cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).map_err(|e| e.to_string())?;
    let fill = |tpl: &str, listen: u16, w: usize| {
        tpl.replace("{{DIR}}", &dir.display().to_string())
            .replace("{{LISTEN}}", &format!("127.0.0.1:{listen}"))
            .replace("{{TLS_LISTEN}}", &format!("127.0.0.1:{nginx_tls_port}"))
            .replace(
                "{{DEFAULTS_LISTEN}}",
                &format!("127.0.0.1:{nginx_defaults_port}"),
            )
            .replace("{{ORIGIN}}", &format!("127.0.0.1:{origin_port}"))
            .replace("{{FRAMING_ORIGIN}}", &format!("127.0.0.1:{framing_port}"))
            .replace("{{WORKERS}}", &w.to_string())
            .replace("{{AFFINITY}}", "auto")
    };
    let origin_conf = fill(
        include_str!("../nginx-origin.conf"),
        origin_port,
        (ncpu - workers).max(1),
    );
    let proxy_conf = fill(include_str!("../nginx-proxy.conf"), nginx_port, workers);
    let ringway_conf = format!(
        "[server]\nlisten = [\"127.0.0.1:{ringway_port}\", {{ addr = \"127.0.0.1:{ringway_tls_port}\", tls = true }}]\n\
         workers = {workers}\ncpus = \"{proxy_cpus}\"\n\n\
         [tls]\ncertificates = [{{ cert = \"{dir}/cert.pem\", key = \"{dir}/key.pem\" }}]\n\n\
         [cache]\nsize = \"256m\"\n\n\
         [upstreams.origin]\nservers = [\"127.0.0.1:{origin_port}\"]\nkeepalive = 1024\n\n\
         [upstreams.framing]\nservers = [\"127.0.0.1:{framing_port}\"]\nkeepalive = 1024\n\n\
         [[routes]]\npath = \"/framing/\"\nupstream = \"framing\"\ncache = false\n\n\
         [[routes]]\npath = \"/\"\nupstream = \"origin\"\ncache = false\n\n\
         [[routes]]\npath = \"/cached/\"\nupstream = \"origin\"\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("origin-nginx.conf"), &origin_conf).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("proxy-nginx.conf"), &proxy_conf).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("ringway.toml"), &ringway_conf).map_err(|e| e.to_string())?;

    println!("# ringway vs nginx\n");
    println!("{ncpu} CPUs; proxies on CPU {proxy_cpus}, wrk and origin on CPU {load_cpus}; {rounds} round(s) of {secs}s per case and proxy.\n");
    println!("nginx proxy config:\n```nginx\n{proxy_conf}```\nringway config:\n```toml\n{ringway_conf}```\n");

    let mut procs = Procs {
        dir: dir.clone(),
        ringway: None,
    };
    let start_nginx = |conf: &str, cpus: &str| -> Result<(), String> {
        let st = Command::new("taskset")
            .args(["-c", cpus, "nginx", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(dir.join(conf))
            .status()
            .map_err(|e| e.to_string())?;
        st.success()
            .then_some(())
            .ok_or_else(|| format!("nginx -c {conf} failed to start"))
    };
    start_nginx("origin-nginx.conf", &load_cpus)?;
    // The origin for chunked and close-delimited bodies, beside nginx's.
    let _framing_origin = Kill(
        Command::new("taskset")
            .args(["-c", &load_cpus])
            .arg(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["origin", "--listen", &format!("127.0.0.1:{framing_port}")])
            .spawn()
            .map_err(|e| format!("starting the framing origin: {e}"))?,
    );
    wait_http(framing_port, "framing origin")?;
    start_nginx("proxy-nginx.conf", &proxy_cpus)?;
    procs.ringway = Some(
        Command::new(&ringway_bin)
            .arg("--config")
            .arg(dir.join("ringway.toml"))
            .args(["--log-level", "warn"])
            .spawn()
            .map_err(|e| format!("starting {}: {e}", ringway_bin.display()))?,
    );
    wait_http(origin_port, "origin nginx")?;
    wait_http(nginx_port, "proxy nginx")?;
    wait_http(ringway_port, "ringway")?;
    let nginx_master: u32 = std::fs::read_to_string(dir.join("proxy-nginx.pid"))
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|_| "bad nginx pid file".to_string())?;
    let nginx_pids = with_children(nginx_master);
    let ringway_pids = vec![procs.ringway.as_ref().map_or(0, Child::id)];
    // The floors: minimal relays (loadtest/src/floor.rs), copy and splice, on the proxies' CPUs.
    let floors = f.has("--floors");
    let (copy_port, splice_port) = (free_port()?, free_port()?);
    let mut floor_procs = Vec::new();
    if floors {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        for (port, splice) in [(copy_port, false), (splice_port, true)] {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &proxy_cpus]).arg(&exe).args([
                "floor",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                &format!("127.0.0.1:{origin_port}"),
            ]);
            if splice {
                cmd.arg("--splice");
            }
            floor_procs.push(Kill(
                cmd.spawn()
                    .map_err(|e| format!("starting the floor: {e}"))?,
            ));
            wait_http(port, "floor relay")?;
        }
    }
    let floor_pids: Vec<u32> = floor_procs.iter().map(|k| k.0.id()).collect();
    let mut floor_rows = Vec::new();

    // Plain: every combination. TLS: keep-alive small and 64 KiB bodies (bulk encryption), and
    // connection-close with small bodies (one full handshake per request).
    let mut all = Vec::new();
    for close in [false, true] {
        for conns in [16, 256] {
            for (body, _) in BODIES {
                all.push(Case {
                    close,
                    ..Case::ka(conns, body)
                });
            }
        }
    }
    for (close, body) in [(false, "100b"), (false, "64k"), (true, "100b")] {
        for conns in [16, 256] {
            all.push(Case {
                tls: true,
                close,
                ..Case::ka(conns, body)
            });
        }
    }
    all.push(Case {
        tls: true,
        close: true,
        new_sessions: true,
        ..Case::ka(3, "100b")
    });
    for body in ["100b", "64k"] {
        for conns in [16, 256] {
            all.push(Case {
                hit: true,
                ..Case::ka(conns, body)
            });
        }
    }
    // Chunked and close-delimited 1 MiB bodies from `ringway-loadtest origin` (nginx serves
    // files with a length): long chunks, short chunks, and an origin that closes.
    for (framing, conns) in [
        (("chunked, 64 KiB chunks,", "chunked/1048576/65536"), 16),
        (("chunked, 64 KiB chunks,", "chunked/1048576/65536"), 256),
        (("chunked, 4 KiB chunks,", "chunked/1048576/4096"), 16),
        (("chunked, 4 KiB chunks,", "chunked/1048576/4096"), 256),
        (("close-delimited", "close/1048576"), 16),
    ] {
        all.push(Case {
            framing: Some(framing),
            ..Case::ka(conns, "1m")
        });
    }
    // Uploads: a 64 KiB body sent with its head on keep-alive connections.
    for conns in [16, 256] {
        all.push(Case {
            upload: Some(65536),
            ..Case::ka(conns, "100b")
        });
    }
    let cases: Vec<Case> = all
        .into_iter()
        .filter(|c| {
            let tags = [
                if c.close { "close" } else { "ka" }.to_string(),
                c.conns.to_string(),
                c.body.to_string(),
                if c.tls { "tls" } else { "plain" }.to_string(),
                if c.new_sessions { "new" } else { "" }.to_string(),
                if c.hit {
                    "hit"
                } else if c.upload.is_some() {
                    "upload"
                } else if c.framing.is_some() {
                    "framing"
                } else {
                    "proxy"
                }
                .to_string(),
            ];
            filter.iter().all(|f| tags.contains(f))
        })
        .collect();

    let wrk_at = |port: u16, c: &Case| {
        if c.new_sessions {
            return wrk::s_time(&load_cpus, port, &format!("/{}", c.body), c.conns, secs);
        }
        let scheme = if c.tls { "https" } else { "http" };
        let cached = if c.hit { "cached/" } else { "" };
        let path = match (c.framing, c.upload) {
            (Some((_, p)), _) => format!("framing/{p}"),
            (None, Some(_)) => "framing/len/100".to_string(),
            (None, None) => format!("{cached}{}", c.body),
        };
        let script = match c.upload {
            Some(n) => {
                let script = dir.join(format!("post-{n}.lua"));
                std::fs::write(
                    &script,
                    format!("wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {n})\n"),
                )
                .map_err(|e| e.to_string())?;
                Some(script)
            }
            None => None,
        };
        wrk::run_with(
            &load_cpus,
            &format!("{scheme}://127.0.0.1:{port}/{path}"),
            c.conns,
            secs,
            c.close,
            script.as_deref(),
        )
    };
    let ports = |c: &Case| {
        if c.tls {
            (nginx_tls_port, ringway_tls_port)
        } else {
            (nginx_port, ringway_port)
        }
    };
    let measure = |port: u16, pids: &[u32], c: &Case| -> Result<Sample, String> {
        let before = total_ticks(pids);
        let w = wrk_at(port, c)?;
        let ticks = total_ticks(pids) - before;
        Ok(Sample {
            cpu_us_per_req: ticks as f64 * 1e6 / TICKS_PER_SEC / w.requests.max(1) as f64,
            wrk: w,
        })
    };

    // Rows are printed as each case finishes, under this header.
    println!("| case | direct req/s | nginx req/s | ringway req/s | req/s ratio | p50 ratio | p99 ratio | nginx CPU µs/req | ringway CPU µs/req | CPU ratio | errors n/r |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut nginx_ka16_rps = 0.0;
    let (hits, cases): (Vec<Case>, Vec<Case>) = cases.into_iter().partition(|c| c.hit);
    for c in &cases {
        // The origin speaks plain HTTP only: no direct row for TLS cases.
        let direct = match (c.tls, c.framing.is_some() || c.upload.is_some()) {
            (true, _) => None,
            (false, true) => Some(wrk_at(framing_port, c)?),
            (false, false) => Some(wrk_at(origin_port, c)?),
        };
        let (nginx_port, ringway_port) = ports(c);
        let mut ng: Vec<Sample> = Vec::new();
        let mut rw: Vec<Sample> = Vec::new();
        let (mut cp, mut sp, mut nd) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                ng.push(measure(nginx_port, &nginx_pids, c)?);
                rw.push(measure(ringway_port, &ringway_pids, c)?);
            } else {
                rw.push(measure(ringway_port, &ringway_pids, c)?);
                ng.push(measure(nginx_port, &nginx_pids, c)?);
            }
            if floors && !c.tls && c.framing.is_none() && c.upload.is_none() {
                cp.push(measure(copy_port, &floor_pids[..1], c)?);
                sp.push(measure(splice_port, &floor_pids[1..], c)?);
                nd.push(measure(nginx_defaults_port, &nginx_pids, c)?);
            }
        }
        if !cp.is_empty() {
            let per = |f: &[Sample]| -> Vec<f64> {
                rw.iter()
                    .zip(f)
                    .map(|(r, x)| r.cpu_us_per_req / x.cpu_us_per_req)
                    .collect()
            };
            let med_cpu =
                |v: &[Sample]| median(&mut v.iter().map(|s| s.cpu_us_per_req).collect::<Vec<_>>());
            let (to_copy, to_splice) = (per(&cp), per(&sp));
            floor_rows.push(format!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | **{:.2}** ({}) | **{:.2}** ({}) | {:.2} / {:.2} |",
                c.name(),
                med_cpu(&ng),
                med_cpu(&nd),
                med_cpu(&cp),
                med_cpu(&sp),
                med_cpu(&rw),
                median(&mut to_copy.clone()),
                spread(&to_copy),
                median(&mut to_splice.clone()),
                spread(&to_splice),
                med_cpu(&cp) / med_cpu(&ng),
                med_cpu(&sp) / med_cpu(&ng),
            ));
        }
        let ratio = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
            ng.iter().zip(&rw).map(|(n, r)| f(r) / f(n)).collect()
        };
        let med = |v: &[Sample], f: &dyn Fn(&Sample) -> f64| {
            median(&mut v.iter().map(f).collect::<Vec<_>>())
        };
        let rps = ratio(&|s| s.wrk.rps);
        let p50 = ratio(&|s| s.wrk.p50_us);
        let p99 = ratio(&|s| s.wrk.p99_us);
        let cpu = ratio(&|s| s.cpu_us_per_req);
        if !c.tls && !c.close && c.conns == 16 && c.body == "100b" {
            nginx_ka16_rps = med(&ng, &|s| s.wrk.rps);
        }
        // s_time reports no latencies.
        let (p50, p99) = if c.new_sessions {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.2}", median(&mut p50.clone())),
                format!("{:.2} ({})", median(&mut p99.clone()), spread(&p99)),
            )
        };
        let row = format!(
            "| {} | {} | {:.0} | {:.0} | **{:.2}** ({}) | {} | {} | {:.1} | {:.1} | **{:.2}** ({}) | {}/{} |\n",
            c.name(),
            direct.map_or("-".to_string(), |d| format!("{:.0}", d.rps)),
            med(&ng, &|s| s.wrk.rps),
            med(&rw, &|s| s.wrk.rps),
            median(&mut rps.clone()),
            spread(&rps),
            p50,
            p99,
            med(&ng, &|s| s.cpu_us_per_req),
            med(&rw, &|s| s.cpu_us_per_req),
            median(&mut cpu.clone()),
            spread(&cpu),
            ng.iter().map(|s| s.wrk.errors).sum::<u64>(),
            rw.iter().map(|s| s.wrk.errors).sum::<u64>(),
        );
        print!("{row}");
    }

    if !floor_rows.is_empty() {
        println!("\n| case (CPU µs/req) | nginx tuned | nginx defaults | copy floor | splice floor | ringway | ringway / copy floor | ringway / splice floor | floors / nginx tuned (copy / splice) |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for r in &floor_rows {
            println!("{r}");
        }
    }
    drop(floor_procs);
    if !hits.is_empty() {
        let varnish = if on_path("varnishd") {
            Some(Varnish::start(&dir, &proxy_cpus, origin_port)?)
        } else {
            println!(
                "\n(Varnish column skipped: varnishd is not installed; apt-get install varnish)"
            );
            None
        };
        cache_hits(
            &hits,
            rounds,
            secs,
            &load_cpus,
            (nginx_port, ringway_port),
            (&nginx_pids, &ringway_pids),
            varnish.as_ref(),
        )?;
    }
    let want_squid = filter.is_empty() || filter.iter().any(|f| f == "forward");
    if want_squid && !on_path("squid") {
        println!("\n(forward-proxy cases skipped: squid is not installed; apt-get install squid)");
    } else if want_squid {
        let ctx = SquidRun {
            dir: &dir,
            rounds,
            secs,
            load_cpus: &load_cpus,
            proxy_cpus: &proxy_cpus,
            workers,
            origin_port,
            ringway_bin: &ringway_bin,
            reverse: (ringway_port, &ringway_pids),
        };
        squid_cases(&ctx)?;
    }

    let mut extra = String::new();
    if f.has("--open-loop") && nginx_ka16_rps > 0.0 {
        let rate = (nginx_ka16_rps * 0.7) as u64;
        let mut ng = Vec::new();
        let mut rw = Vec::new();
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [nginx_port, ringway_port]
            } else {
                [ringway_port, nginx_port]
            };
            for port in order {
                let r = open_loop(&load_cpus, port, rate, secs)?;
                if port == nginx_port {
                    ng.push(r)
                } else {
                    rw.push(r)
                }
            }
        }
        let ratios: Vec<f64> = ng.iter().zip(&rw).map(|(n, r)| r / n).collect();
        let _ = writeln!(
            extra,
            "\nOpen loop, keep-alive c=16 100b at {rate} req/s (70% of nginx's max), p99 from scheduled send time: nginx {:.0} µs, ringway {:.0} µs, ratio **{:.2}** ({}).",
            median(&mut ng.clone()),
            median(&mut rw.clone()),
            median(&mut ratios.clone()),
            spread(&ratios)
        );
    }
    let _ = writeln!(
        extra,
        "\nPeak RSS over the run: nginx (master + workers) {} KiB, ringway {} KiB.",
        peak_rss_kib(&nginx_pids),
        peak_rss_kib(&ringway_pids)
    );
    print!("{extra}");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Varnish (`loadtest/varnish.vcl`) in the foreground on the proxies' CPUs; stopped, with its
/// cache process, when dropped.
struct Varnish {
    port: u16,
    manager: Child,
    dir: PathBuf,
}

impl Varnish {
    fn start(dir: &Path, cpus: &str, origin_port: u16) -> Result<Self, String> {
        let port = free_port()?;
        let vcl =
            include_str!("../varnish.vcl").replace("{{ORIGIN_PORT}}", &origin_port.to_string());
        std::fs::write(dir.join("varnish.vcl"), vcl).map_err(|e| e.to_string())?;
        let work = dir.join("varnish");
        let manager = Command::new("taskset")
            .args(["-c", cpus, "varnishd", "-F", "-a"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-f")
            .arg(dir.join("varnish.vcl"))
            .arg("-n")
            .arg(&work)
            .args(["-s", "malloc,256m", "-p", "thread_pools=1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting varnishd: {e}"))?;
        let v = Self {
            port,
            manager,
            dir: work,
        };
        wait_http(port, "varnish")?;
        Ok(v)
    }

    /// The manager and its cache process.
    fn pids(&self) -> Vec<u32> {
        with_children(self.manager.id())
    }
}

impl Drop for Varnish {
    fn drop(&mut self) {
        // The cache process first (by PID: it is ours), then the manager.
        for p in self.pids().into_iter().skip(1) {
            let _ = Command::new("kill").arg(p.to_string()).status();
        }
        let _ = self.manager.kill();
        let _ = self.manager.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cache-hit cases: nginx's `proxy_cache` hit, ringway's hit, Varnish's hit (when it is
/// installed) and the floor (nginx serving the bytes itself), each round in a rotating order,
/// after one request has stored the object.
fn cache_hits(
    cases: &[Case],
    rounds: usize,
    secs: u64,
    load_cpus: &str,
    (nginx_port, ringway_port): (u16, u16),
    (nginx_pids, ringway_pids): (&[u32], &[u32]),
    varnish: Option<&Varnish>,
) -> Result<(), String> {
    let varnish_pids = varnish.map(Varnish::pids).unwrap_or_default();
    println!("\n| case | floor req/s | nginx hit req/s | ringway hit req/s | varnish hit req/s | req/s ratio | floor CPU µs/req | nginx hit CPU µs/req | ringway hit CPU µs/req | varnish hit CPU µs/req | CPU ratio to nginx hit | CPU ratio to varnish hit | CPU ratio to floor | errors f/n/r/v |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in cases {
        for port in [
            Some(nginx_port),
            Some(ringway_port),
            varnish.map(|v| v.port),
        ]
        .into_iter()
        .flatten()
        {
            let _ = wrk::run(
                load_cpus,
                &format!("http://127.0.0.1:{port}/cached/{}", c.body),
                1,
                1,
                false,
            )?;
        }
        let run = |port: u16, path: &str, pids: &[u32]| -> Result<Sample, String> {
            let before = total_ticks(pids);
            let w = wrk::run(
                load_cpus,
                &format!("http://127.0.0.1:{port}/{path}{}", c.body),
                c.conns,
                secs,
                false,
            )?;
            let ticks = total_ticks(pids) - before;
            Ok(Sample {
                cpu_us_per_req: ticks as f64 * 1e6 / TICKS_PER_SEC / w.requests.max(1) as f64,
                wrk: w,
            })
        };
        let (mut fl, mut ng, mut rw, mut vn) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let peers = if varnish.is_some() { 4 } else { 3 };
        for round in 0..rounds {
            for k in 0..peers {
                match (round + k) % peers {
                    0 => fl.push(run(nginx_port, "floor/", nginx_pids)?),
                    1 => ng.push(run(nginx_port, "cached/", nginx_pids)?),
                    2 => rw.push(run(ringway_port, "cached/", ringway_pids)?),
                    _ => {
                        if let Some(v) = varnish {
                            vn.push(run(v.port, "cached/", &varnish_pids)?);
                        }
                    }
                }
            }
        }
        let med = |v: &[Sample], f: &dyn Fn(&Sample) -> f64| {
            median(&mut v.iter().map(f).collect::<Vec<_>>())
        };
        let ratios = |a: &[Sample], b: &[Sample], f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
            a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect()
        };
        let rps = ratios(&rw, &ng, &|s| s.wrk.rps);
        let cpu_ng = ratios(&rw, &ng, &|s| s.cpu_us_per_req);
        let cpu_fl = ratios(&rw, &fl, &|s| s.cpu_us_per_req);
        let cpu_vn = ratios(&rw, &vn, &|s| s.cpu_us_per_req);
        let (vn_rps, vn_cpu, vn_ratio) = if vn.is_empty() {
            ("—".to_string(), "—".to_string(), "—".to_string())
        } else {
            (
                format!("{:.0}", med(&vn, &|s| s.wrk.rps)),
                format!("{:.1}", med(&vn, &|s| s.cpu_us_per_req)),
                format!(
                    "**{:.2}** ({})",
                    median(&mut cpu_vn.clone()),
                    spread(&cpu_vn)
                ),
            )
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {vn_rps} | **{:.2}** ({}) | {:.1} | {:.1} | {:.1} | {vn_cpu} | **{:.2}** ({}) | {vn_ratio} | **{:.2}** ({}) | {}/{}/{}/{} |",
            c.name(),
            med(&fl, &|s| s.wrk.rps),
            med(&ng, &|s| s.wrk.rps),
            med(&rw, &|s| s.wrk.rps),
            median(&mut rps.clone()),
            spread(&rps),
            med(&fl, &|s| s.cpu_us_per_req),
            med(&ng, &|s| s.cpu_us_per_req),
            med(&rw, &|s| s.cpu_us_per_req),
            median(&mut cpu_ng.clone()),
            spread(&cpu_ng),
            median(&mut cpu_fl.clone()),
            spread(&cpu_fl),
            fl.iter().map(|s| s.wrk.errors).sum::<u64>(),
            ng.iter().map(|s| s.wrk.errors).sum::<u64>(),
            rw.iter().map(|s| s.wrk.errors).sum::<u64>(),
            vn.iter().map(|s| s.wrk.errors).sum::<u64>(),
        );
    }
    Ok(())
}

/// What the forward-proxy cases need from the main run.
struct SquidRun<'a> {
    dir: &'a Path,
    rounds: usize,
    secs: u64,
    load_cpus: &'a str,
    proxy_cpus: &'a str,
    workers: usize,
    origin_port: u16,
    ringway_bin: &'a Path,
    /// ringway's reverse proxy (port, pids), for the same request in origin form.
    reverse: (u16, &'a [u32]),
}

/// Stops a child process when dropped.
pub(crate) struct Kill(pub(crate) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// ringway's forward proxy against Squid (`loadtest/squid.conf`: one worker on the proxies'
/// CPUs, no cache, no access log): a 100 B GET in absolute form (wrk with a Lua script setting
/// `wrk.path` to the full URL), compared also with ringway's reverse proxy for the same
/// request; and 1 MiB downloads through CONNECT tunnels (`curl -p`, a new tunnel each),
/// CPU per MiB.
fn squid_cases(r: &SquidRun<'_>) -> Result<(), String> {
    let (squid_port, fwd_port) = (free_port()?, free_port()?);
    let conf = include_str!("../squid.conf")
        .replace("{{DIR}}", &r.dir.display().to_string())
        .replace("{{LISTEN}}", &format!("127.0.0.1:{squid_port}"));
    std::fs::write(r.dir.join("squid.conf"), conf).map_err(|e| e.to_string())?;
    // Squid drops to its own user, which must be able to read the directory.
    let _ = Command::new("chmod").arg("755").arg(r.dir).status();
    let squid = Kill(
        Command::new("taskset")
            .args(["-c", r.proxy_cpus, "squid", "-N", "-f"])
            .arg(r.dir.join("squid.conf"))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting squid: {e}"))?,
    );
    let fwd = Kill(
        Command::new(r.ringway_bin)
            .args(["--listen", &format!("127.0.0.1:{fwd_port}"), "--forward"])
            .args(["--connect-ports", &r.origin_port.to_string()])
            .args(["--workers", &r.workers.to_string(), "--cpus", r.proxy_cpus])
            .args(["--log-level", "warn"])
            .spawn()
            .map_err(|e| format!("starting ringway --forward: {e}"))?,
    );
    let target = format!("http://127.0.0.1:{}/100b", r.origin_port);
    for (port, what) in [(squid_port, "squid"), (fwd_port, "ringway --forward")] {
        wait_forward(port, &target, what)?;
    }
    let squid_pids = with_children(squid.0.id());
    let fwd_pids = vec![fwd.0.id()];
    let script = r.dir.join("absolute.lua");
    std::fs::write(&script, format!("wrk.path = \"{target}\"\n")).map_err(|e| e.to_string())?;
    let measure = |port: u16, pids: &[u32], absolute: bool| -> Result<Sample, String> {
        let before = total_ticks(pids);
        let url = format!("http://127.0.0.1:{port}/100b");
        let s = absolute.then_some(script.as_path());
        let w = wrk::run_with(r.load_cpus, &url, 16, r.secs, false, s)?;
        let ticks = total_ticks(pids) - before;
        Ok(Sample {
            cpu_us_per_req: ticks as f64 * 1e6 / TICKS_PER_SEC / w.requests.max(1) as f64,
            wrk: w,
        })
    };
    let (mut sq, mut fw, mut rv) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..r.rounds {
        for k in 0..3 {
            match (round + k) % 3 {
                0 => sq.push(measure(squid_port, &squid_pids, true)?),
                1 => fw.push(measure(fwd_port, &fwd_pids, true)?),
                _ => rv.push(measure(r.reverse.0, r.reverse.1, false)?),
            }
        }
    }
    let med =
        |v: &[Sample], f: &dyn Fn(&Sample) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
    let ratios = |a: &[Sample], b: &[Sample]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.cpu_us_per_req / y.cpu_us_per_req)
            .collect()
    };
    let (to_squid, to_rev) = (ratios(&fw, &sq), ratios(&fw, &rv));
    println!("\n| forward proxy | squid req/s | ringway forward req/s | ringway reverse req/s | squid CPU | forward CPU | reverse CPU | forward / squid CPU | forward / reverse CPU | errors s/f/r |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| absolute-form keep-alive c=16 100b (CPU µs/req) | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | **{:.2}** ({}) | **{:.2}** ({}) | {}/{}/{} |",
        med(&sq, &|s| s.wrk.rps),
        med(&fw, &|s| s.wrk.rps),
        med(&rv, &|s| s.wrk.rps),
        med(&sq, &|s| s.cpu_us_per_req),
        med(&fw, &|s| s.cpu_us_per_req),
        med(&rv, &|s| s.cpu_us_per_req),
        median(&mut to_squid.clone()),
        spread(&to_squid),
        median(&mut to_rev.clone()),
        spread(&to_rev),
        sq.iter().map(|s| s.wrk.errors).sum::<u64>(),
        fw.iter().map(|s| s.wrk.errors).sum::<u64>(),
        rv.iter().map(|s| s.wrk.errors).sum::<u64>(),
    );
    // CONNECT: sequential downloads, a new tunnel each.
    const TUNNELS: u64 = 200;
    let url = format!("http://127.0.0.1:{}/1m", r.origin_port);
    let tunnel = |port: u16, pids: &[u32]| -> Result<f64, String> {
        let before = total_ticks(pids);
        for _ in 0..TUNNELS {
            let st = Command::new("taskset")
                .args(["-c", r.load_cpus, "curl", "-s", "-o", "/dev/null"])
                .args(["--noproxy", "", "-p", "-x"])
                .arg(format!("http://127.0.0.1:{port}"))
                .arg(&url)
                .status()
                .map_err(|e| format!("running curl: {e}"))?;
            if !st.success() {
                return Err(format!("curl -p through port {port} failed"));
            }
        }
        let ticks = total_ticks(pids) - before;
        Ok(ticks as f64 * 1e6 / TICKS_PER_SEC / TUNNELS as f64)
    };
    let (mut sq_t, mut fw_t) = (Vec::new(), Vec::new());
    for round in 0..r.rounds {
        if round % 2 == 0 {
            sq_t.push(tunnel(squid_port, &squid_pids)?);
            fw_t.push(tunnel(fwd_port, &fwd_pids)?);
        } else {
            fw_t.push(tunnel(fwd_port, &fwd_pids)?);
            sq_t.push(tunnel(squid_port, &squid_pids)?);
        }
    }
    let t_ratio: Vec<f64> = fw_t.iter().zip(&sq_t).map(|(f, s)| f / s).collect();
    println!(
        "| CONNECT 1 MiB x {TUNNELS} (CPU µs per MiB) | | | | {:.0} | {:.0} | | **{:.2}** ({}) | | |",
        median(&mut sq_t.clone()),
        median(&mut fw_t.clone()),
        median(&mut t_ratio.clone()),
        spread(&t_ratio),
    );
    drop((squid, fwd));
    Ok(())
}

/// Waits until a forward proxy on `port` answers an absolute-form GET of `target` with 200.
fn wait_forward(port: u16, target: &str, what: &str) -> Result<(), String> {
    wait_200(port, target, Duration::from_secs(15))
        .map_err(|()| format!("{what} on port {port} did not forward GET {target}"))
}

/// Runs the comparison with 1, 2, … `max` workers for both proxies (proxies on CPUs 0..w, load
/// always on CPUs max..), one after another, each printing its own table.
fn sweep(args: &[String], max: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rest: Vec<String> = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        match a.as_str() {
            "--sweep" => {}
            "--workers" | "-w" | "--load-from" => skip = true,
            _ => rest.push(a.clone()),
        }
    }
    for w in 1..=max {
        println!("\n## {w} worker(s)\n");
        let st = Command::new(&exe)
            .arg("compare")
            .args(&rest)
            .args(["--workers", &w.to_string(), "--load-from", &max.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("the {w}-worker step failed"));
        }
    }
    Ok(())
}

/// p99 (µs) of `gen` at a fixed rate against `port`.
fn open_loop(cpus: &str, port: u16, rate: u64, secs: u64) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new("taskset")
        .args(["-c", cpus])
        .arg(exe)
        .args([
            "gen",
            "--url",
            &format!("http://127.0.0.1:{port}/100b"),
            "-c",
            "16",
            "-d",
            &secs.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("p99_us "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("gen failed: {text}{}", String::from_utf8_lossy(&out.stderr)))
}
