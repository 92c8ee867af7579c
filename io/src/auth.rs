//! Password checks for the forward proxy's users, off the workers.
//!
//! A bcrypt check takes tens to hundreds of milliseconds on purpose; on a worker it would stall
//! every connection the worker serves (one client sending wrong passwords raised another
//! user's median latency from 0.5 ms to 253 ms). Checks run on a small pool of threads shared
//! by the process; a worker hands one over and looks for the answer after 1 ms, then less and
//! less often. The queue is bounded: when it is full the request gets 503 at once instead of
//! waiting. A check whose request went away before a thread took it is skipped.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ringway_core::forward::auth::{Failures, Htpasswd};

/// Checks waiting for a thread before new ones are refused.
const QUEUE: usize = 256;
/// The longest a request waits for its check.
const WAIT: Duration = Duration::from_secs(30);

type Answer = Arc<Mutex<Option<bool>>>;

struct Job {
    users: Arc<Htpasswd>,
    user: String,
    password: Vec<u8>,
    answer: Answer,
}

fn pool() -> &'static crossbeam_channel::Sender<Job> {
    static POOL: OnceLock<crossbeam_channel::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        // Half the machine at most: checks must not starve the workers of CPU.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .clamp(1, 8);
        for i in 0..threads {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("ringway-auth-{i}"))
                .spawn(move || {
                    for job in rx {
                        if Arc::strong_count(&job.answer) == 1 {
                            continue; // nobody waits for it any more
                        }
                        let ok = job.users.verify(&job.user, &job.password);
                        if let Ok(mut a) = job.answer.lock() {
                            *a = Some(ok);
                        }
                    }
                });
        }
        tx
    })
}

/// The failure counters every worker shares (kept across reloads).
pub(crate) fn failures() -> Arc<Failures> {
    static SHARED: OnceLock<Arc<Failures>> = OnceLock::new();
    SHARED.get_or_init(Arc::default).clone()
}

/// Whether `password` is `user`'s in `users`; `None` when it could not be checked (the queue is
/// full, or no answer came in time).
pub(crate) async fn verify(users: Arc<Htpasswd>, user: String, password: Vec<u8>) -> Option<bool> {
    let answer: Answer = Arc::new(Mutex::new(None));
    let job = Job {
        users,
        user,
        password,
        answer: answer.clone(),
    };
    pool().try_send(job).ok()?;
    let deadline = std::time::Instant::now() + WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(ok) = answer.lock().ok().and_then(|mut a| a.take()) {
            return Some(ok);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        monoio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(16));
    }
}
