//! The sync of shared rate limits (`[shared_limits]`) with Redis, on a thread of its own:
//! every `interval` it takes each shared table's outstanding keys (what this box admitted
//! since the last round, and keys still in debt), sends them to Redis in one script call per
//! limit (batched, at most [`BATCH`] keys a call), and folds the answers (every box's debt)
//! back into the tables. Workers never wait on it: when Redis is slow or gone, a call times
//! out, the box limits alone, and the requests so decided are counted. The arithmetic is
//! `ringway_core::limit::shared`'s; the script below is its `store_step`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringway_core::config::SharedLimits;
use ringway_core::limit::shared::Outstanding;
use ringway_core::limit::{RateLimit, Table};

use crate::counters::Status;

/// Keys per script call.
pub(crate) const BATCH: usize = 2048;

/// `store_step` in Redis: KEYS are the keys' names; ARGV[1] the limit's interval (µs); then per
/// key the requests this box admitted since its last report and its own debt (µs). Returns
/// each key's debt over every box (µs, on Redis's clock). A key lives while it holds debt.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local tat = now + tonumber(ARGV[2 * i + 1])
  local stored = tonumber(redis.call('GET', key))
  if stored then
    local summed = stored + tonumber(ARGV[2 * i]) * interval
    if summed > tat then tat = summed end
  end
  if tat > now then
    redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  out[i] = tat - now
end
return out
";

/// The sync's own figures, for the metrics and the status page.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Rounds whose every call was answered, and rounds with a call that failed.
    pub(crate) rounds_ok: AtomicU64,
    pub(crate) rounds_failed: AtomicU64,
    /// Whether the last round reached Redis.
    pub(crate) up: AtomicBool,
}

/// Runs until `shutdown`; `stop` wakes it early.
pub(crate) fn run(
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
    stop: crossbeam_channel::Receiver<()>,
) {
    let script = redis::Script::new(SCRIPT);
    let mut conn: Option<(String, redis::Connection)> = None;
    let mut next_connect = Instant::now();
    let mut out = Vec::new();
    let mut was_up = true;
    while !shutdown.load(Ordering::Relaxed) {
        let started = Instant::now();
        let (settings, limits) = current(&status);
        let Some(settings) = settings.filter(|_| !limits.is_empty()) else {
            conn = None;
            let _ = stop.recv_timeout(Duration::from_secs(1));
            continue;
        };
        if conn.as_ref().is_some_and(|(url, _)| *url != settings.redis) {
            conn = None;
        }
        if conn.is_none() && started >= next_connect {
            match connect(&settings) {
                Ok(c) => conn = Some((settings.redis.clone(), c)),
                Err(e) => {
                    if was_up {
                        log::warn!(
                            "shared limits: cannot reach Redis at {}: {e}; limiting on this box alone until it answers",
                            settings.redis
                        );
                    }
                    // Not more than once a second while it stays away.
                    next_connect = started + settings.interval.max(Duration::from_secs(1));
                }
            }
        }
        let mut ok = conn.is_some();
        for l in &limits {
            out.clear();
            l.table.outstanding(Instant::now(), &mut out);
            for chunk in out.chunks(BATCH) {
                let answered = match (&mut conn, ok) {
                    (Some((_, c)), true) => sync(&script, c, &settings, l, chunk),
                    _ => Err(None),
                };
                match answered {
                    Ok(debts) => {
                        let now = Instant::now();
                        for (o, d) in chunk.iter().zip(debts) {
                            l.table
                                .merge(o, Duration::from_micros(d.max(0) as u64), now);
                        }
                    }
                    Err(e) => {
                        if let (Some(e), true) = (e, was_up && ok) {
                            log::warn!(
                                "shared limits: Redis at {} failed: {e}; limiting on this box alone until it answers",
                                settings.redis
                            );
                        }
                        ok = false;
                        l.table.count_local_only(
                            chunk.iter().map(|o| u64::from(o.admitted)).sum::<u64>(),
                        );
                    }
                }
            }
        }
        if !ok {
            conn = None;
        }
        if ok && !was_up {
            log::info!("shared limits: Redis at {} answers again", settings.redis);
        }
        was_up = ok;
        let c = &status.shared_limits;
        c.up.store(ok, Ordering::Relaxed);
        if ok { &c.rounds_ok } else { &c.rounds_failed }.fetch_add(1, Ordering::Relaxed);
        let _ = stop.recv_timeout(settings.interval.saturating_sub(started.elapsed()));
    }
}

/// The running configuration's `[shared_limits]` and its shared limits.
fn current(status: &Status) -> (Option<SharedLimits>, Vec<RateLimit>) {
    let Ok(c) = status.current.lock() else {
        return (None, Vec::new());
    };
    let limits =
        c.0.rate_limits
            .iter()
            .filter(|l| l.table.is_shared())
            .cloned()
            .collect();
    (c.0.shared_limits.clone(), limits)
}

fn connect(s: &SharedLimits) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(s.redis.as_str())?.get_connection_with_timeout(s.timeout)?;
    c.set_read_timeout(Some(s.timeout))?;
    c.set_write_timeout(Some(s.timeout))?;
    Ok(c)
}

/// One script call: the debts of `chunk`'s keys over every box.
fn sync(
    script: &redis::Script,
    c: &mut redis::Connection,
    s: &SharedLimits,
    l: &RateLimit,
    chunk: &[Outstanding],
) -> Result<Vec<i64>, Option<redis::RedisError>> {
    let mut call = script.prepare_invoke();
    call.arg(l.rate.interval.as_micros() as u64);
    for o in chunk {
        call.key(key_name(s, l, o.hash));
        call.arg(o.admitted).arg(o.debt.as_micros() as u64);
    }
    let debts: Vec<i64> = call.invoke(c).map_err(Some)?;
    if debts.len() == chunk.len() {
        Ok(debts)
    } else {
        Err(None)
    }
}

/// A key's name in Redis: `{prefix}{limit}:{hash}`.
pub(crate) fn key_name(s: &SharedLimits, l: &RateLimit, hash: u64) -> String {
    format!("{}{}:{hash:016x}", s.prefix, l.name)
}

/// Requests each shared limit admitted on this box alone (Redis unreachable), by name.
pub(crate) fn local_only(limits: &[RateLimit]) -> Vec<(String, u64)> {
    limits
        .iter()
        .filter(|l| l.table.is_shared())
        .map(|l| (l.name.clone(), Table::local_only(&l.table)))
        .collect()
}
