//! CPU time and memory of processes, from /proc.

/// Clock ticks per second for /proc/PID/stat times (USER_HZ; 100 on Linux).
pub(crate) const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of `pid`, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// `pid` and its direct children (nginx master and workers).
pub(crate) fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
                if rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u32>().ok())
                    == Some(pid)
                {
                    out.push(p);
                }
            }
        }
    }
    out
}

pub(crate) fn total_ticks(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| cpu_ticks(p)).sum()
}

/// Peak resident set (VmHWM) summed over `pids`, in KiB.
pub(crate) fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}
