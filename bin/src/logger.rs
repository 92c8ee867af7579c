//! A small stderr logger: `2026-11-24T00:00:00Z WARN message`.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::LogLevel;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let s = secs % 86_400;
        // Formatted first, written with one write(2): stderr is unbuffered, and a line written
        // piece by piece interleaves with another process's on the same pipe (the old and the
        // new process during a binary upgrade). A pipe keeps a write of up to 4 KiB whole.
        let line = format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z {:5} {}\n",
            s / 3600,
            s / 60 % 60,
            s % 60,
            r.level(),
            r.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn init(level: LogLevel) {
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_416), (2025, 11, 24));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
