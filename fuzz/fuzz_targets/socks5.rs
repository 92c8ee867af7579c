//! Any bytes a SOCKS5 client sends, split anywhere: the wire decoders never panic nor claim
//! more than they were given, a decoded message decodes the same from exactly its own bytes,
//! and a session fed the bytes in pieces takes the same steps and writes the same replies as
//! one fed them whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::config::Config;
use ringway_core::socks5::{
    credentials, datagram, greeting, request, Action, Env, Parse, Session,
};

const CFG: &str = "[server]\nlisten = [{ addr = \"127.0.0.1:1080\", socks5 = true }]\n[forward]\ndeny_domains = [\"blocked.test\"]\n";

fn check<T: PartialEq + std::fmt::Debug>(buf: &[u8], p: Parse<T>, f: impl Fn(&[u8]) -> Parse<T>) {
    if let Parse::Done(m, n) = p {
        assert!(n <= buf.len());
        assert_eq!(f(&buf[..n]), Parse::Done(m, n));
    }
}

/// Feeds `data` in pieces of `step` bytes; what the session wrote, and its last action.
fn drive(cfg: &Config, data: &[u8], step: usize) -> (Vec<u8>, String) {
    #[allow(clippy::disallowed_methods)]
    let env = Env {
        cfg,
        auth: None,
        now: std::time::Instant::now(),
        secs: 1_000_000,
    };
    let mut s = Session::new("127.0.0.1".parse().unwrap());
    let mut buf = Vec::new();
    let mut fed = 0;
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let a = s.poll();
        out.append(s.out());
        match a {
            Action::Read { read_first } => {
                if read_first || buf.is_empty() {
                    if fed >= data.len() {
                        return (out, "eof".into());
                    }
                    let k = step.min(data.len() - fed);
                    buf.extend_from_slice(&data[fed..fed + k]);
                    fed += k;
                }
                let n = s.handle_input(&buf, &env);
                assert!(n <= buf.len());
                buf.drain(..n);
            }
            Action::Resolve { .. } => {
                let a = s.handle_resolved(Ok(vec!["127.0.0.1:9".parse().unwrap()]), &env);
                if let Action::Connect { .. } = a {
                    let t = s.handle_connected(Ok("127.0.0.1:4000".parse().unwrap()), &env);
                    out.append(s.out());
                    return (out, format!("{t:?}"));
                }
                out.append(s.out());
                return (out, format!("{a:?}"));
            }
            Action::Verify { .. } => s.handle_verified(Some(false), &env),
            Action::Associate { .. } => {
                let a = s.handle_associated(Ok("127.0.0.1:4000".parse().unwrap()), &env);
                out.append(s.out());
                return (out, format!("{a:?}"));
            }
            a => return (out, format!("{a:?}")),
        }
    }
    panic!("the session never ended");
}

fuzz_target!(|data: &[u8]| {
    check(data, greeting(data), greeting);
    check(data, credentials(data), credentials);
    check(data, request(data), request);
    if let Some((_, payload)) = datagram(data) {
        assert!(payload.len() < data.len());
        assert!(data.ends_with(payload));
    }
    thread_local! {
        static CONFIG: &'static Config = Box::leak(Box::new(Config::parse("fuzz.toml", CFG).unwrap()));
    }
    CONFIG.with(|cfg| {
        let whole = drive(cfg, data, usize::MAX);
        for step in [1, 3, 7] {
            assert_eq!(drive(cfg, data, step), whole, "pieces of {step}");
        }
    });
});
