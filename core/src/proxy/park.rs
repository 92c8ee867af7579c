//! Parking: a kept-alive connection that stays quiet gives up its exchange.
//!
//! Between two requests an exchange holds state and buffers sized for a request (with io's
//! buffers and task, about 8.7 KB a connection), and an edge box holds many more idle
//! connections than busy ones. Once a kept-alive connection has been quiet for
//! `timeouts.park`, the exchange's verdict is [`Finish::Park`]: io drops the exchange, its
//! buffers and the connection's request-path future, and keeps the socket and a [`Parked`],
//! which is what the next request needs (how many requests the connection served, its peer,
//! the keep-alive deadline). When the socket turns readable, [`Exchange::unpark`] rebuilds the
//! exchange as it was; when the deadline passes, or the worker drains, the connection closes
//! as an idle one does (`Finish::Close(Close::Now)`, no record).
//!
//! Not parked: TLS connections (their session state stays either way, and most of their
//! memory is there), a connection holding an upstream connection pinned to its user (NTLM,
//! Negotiate: that connection would have to be kept too), and one with bytes received that
//! are not yet a request (stray line breaks, a head's first bytes).

use std::net::IpAddr;
use std::time::Instant;

use super::{Exchange, Finish, Phase, Timer};
use crate::config::{Config, Listen};

/// What a parked connection keeps of its exchange.
#[derive(Clone, Debug)]
pub struct Parked {
    served: u64,
    peer: IpAddr,
    /// The keep-alive deadline: when the connection closes unless a request has begun.
    until: Instant,
}

impl Parked {
    /// When the parked connection closes if nothing arrives.
    pub fn until(&self) -> Instant {
        self.until
    }
}

impl Exchange {
    /// Arms the park timer for the wait before a kept-alive connection's next request.
    pub(super) fn arm_park(&mut self, now: Instant) {
        let may = self.served > 0
            && self.scheme == "http"
            && !self.pin.holds()
            && self.timeouts.park.is_some();
        if may {
            self.timers.arm(Timer::Park, &self.timeouts, now);
        }
    }

    /// The deadline of the wait for the next request: the keep-alive timeout, or parking
    /// first.
    pub(super) fn idle_deadline(&self) -> Option<Instant> {
        let keep = self.timers.deadline(Timer::KeepAlive);
        match (keep, self.timers.deadline(Timer::Park)) {
            (Some(k), Some(p)) => Some(k.min(p)),
            (k, p) => k.or(p),
        }
    }

    /// Whether the wait that timed out at `now` ends in parking (not in closing).
    pub(super) fn park_due(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Head { began: false, .. })
            && self.timers.expired(Timer::Park, now)
            && !self.timers.expired(Timer::KeepAlive, now)
    }

    /// The wait for the next request ends in parking (a record with no request, not logged).
    pub(super) fn park_now(&mut self, now: Instant) {
        self.timers.stop(Timer::Park);
        self.phase = Phase::Done(Finish::Park);
        self.record.ended = Some(now);
        self.record.finish = Some(Finish::Park);
    }

    /// What the connection keeps while parked (after [`Finish::Park`], at `now`).
    pub fn park(&self, now: Instant) -> Parked {
        debug_assert!(matches!(self.phase, Phase::Done(Finish::Park)));
        Parked {
            served: self.served,
            peer: self.client.peer,
            // Always armed while waiting for a kept-alive connection's next request.
            until: self.timers.deadline(Timer::KeepAlive).unwrap_or(now),
        }
    }

    /// The exchange of a parked connection whose socket turned readable, waiting for its next
    /// request under the keep-alive deadline it parked with, with the configuration of now.
    /// Built in `spares` (see [`Exchange::with_spares`]).
    pub fn unpark(
        listen: &Listen,
        parked: Parked,
        cfg: &Config,
        now: Instant,
        spares: super::Spares,
    ) -> Exchange {
        let mut ex = Exchange::with_spares(listen, parked.peer, spares);
        ex.served = parked.served;
        ex.begin(cfg, now);
        ex.timers.arm_at(Timer::KeepAlive, parked.until);
        ex
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::{Action, Close, Env};

    struct T {
        cfg: &'static Config,
        ex: Exchange,
        now: Instant,
    }

    impl T {
        /// An exchange on a listener whose `/` answers locally, with `timeouts` added.
        fn new(listen: &str, timeouts: &str) -> Self {
            let text = format!(
                "[server]\nlisten = [\"{listen}\"]\n[timeouts]\n{timeouts}\n\
                 [[routes]]\npath = \"/\"\nrespond = {{ status = 200, body = \"hi\" }}\n"
            );
            let cfg: &'static Config = Box::leak(Box::new(Config::parse("t.toml", &text).unwrap()));
            let ex = Exchange::new(&cfg.server.listen[0], "192.0.2.1".parse().unwrap());
            #[allow(clippy::disallowed_methods)]
            let now = Instant::now();
            let mut t = Self { cfg, ex, now };
            t.ex.begin(cfg, now);
            t
        }

        fn env(&self) -> Env<'static> {
            crate::proxy::tests::bare_env(self.cfg)
        }

        fn next(&mut self) -> Action {
            loop {
                match self.ex.poll_action() {
                    Action::Record { .. } | Action::Release { .. } => continue,
                    a => return a,
                }
            }
        }

        /// One request answered, then the wait for the next begun.
        fn serve_one(&mut self) {
            assert!(matches!(self.next(), Action::ReadHead { .. }));
            let env = self.env();
            let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
            assert_eq!(self.ex.handle_input(req, &env, self.now), req.len());
            assert!(matches!(self.next(), Action::WriteClient));
            self.ex.handle_client_written(true, self.now);
            assert!(matches!(self.next(), Action::Finish(Finish::KeepAlive)));
            self.ex.begin(self.cfg, self.now);
        }

        fn time_out(&mut self, after: Duration) -> Action {
            self.now += after;
            let env = self.env();
            self.ex.handle_timeout(&env, self.now);
            self.next()
        }
    }

    const PLAIN: &str = "127.0.0.1:8080";

    #[test]
    fn a_quiet_connection_parks_and_resumes_where_it_was() {
        let mut t = T::new(PLAIN, "keepalive = \"75s\"\npark = \"2s\"");
        t.serve_one();
        let start = t.now;
        assert_eq!(t.ex.deadline(), Some(start + Duration::from_secs(2)));
        assert!(matches!(
            t.time_out(Duration::from_secs(2)),
            Action::Finish(Finish::Park)
        ));
        let parked = t.ex.park(t.now);
        assert_eq!(parked.until(), start + Duration::from_secs(75));
        // Woken: the keep-alive deadline is the one it parked with, and the next request is
        // served and counted as the second.
        t.now = start + Duration::from_secs(30);
        let spares = t.ex.take_spares();
        t.ex = Exchange::unpark(&t.cfg.server.listen[0], parked, t.cfg, t.now, spares);
        assert_eq!(
            t.ex.timers.deadline(Timer::KeepAlive),
            Some(start + Duration::from_secs(75))
        );
        t.serve_one();
        assert_eq!(t.ex.served, 2);
        // It parks again when quiet; a keep-alive deadline that comes first closes it.
        assert!(matches!(
            t.time_out(Duration::from_secs(2)),
            Action::Finish(Finish::Park)
        ));
    }

    #[test]
    fn the_first_request_never_parks_and_stray_bytes_stop_it() {
        let mut t = T::new(PLAIN, "");
        assert_eq!(t.ex.timers.deadline(Timer::Park), None);
        t.serve_one();
        assert_eq!(
            t.ex.deadline(),
            Some(t.now + Duration::from_secs(1)),
            "1 s by default"
        );
        assert!(matches!(t.next(), Action::ReadHead { idle: true, .. }));
        let env = t.env();
        assert_eq!(t.ex.handle_input(b"\r\n", &env, t.now), 0);
        assert_eq!(t.ex.timers.deadline(Timer::Park), None);
        assert_eq!(t.ex.deadline(), t.ex.timers.deadline(Timer::KeepAlive));
        assert!(matches!(
            t.time_out(Duration::from_secs(75)),
            Action::Finish(Finish::Close(Close::Now))
        ));
    }

    #[test]
    fn off_and_tls_connections_do_not_park() {
        let mut t = T::new(PLAIN, "park = \"off\"");
        t.serve_one();
        assert_eq!(t.ex.timers.deadline(Timer::Park), None);

        let mut t = T::new(PLAIN, "");
        t.ex.scheme = "https";
        t.serve_one();
        assert_eq!(t.ex.timers.deadline(Timer::Park), None);
    }

    #[test]
    fn a_keepalive_shorter_than_parking_closes() {
        let mut t = T::new(PLAIN, "keepalive = \"500ms\"");
        t.serve_one();
        assert_eq!(t.ex.deadline(), Some(t.now + Duration::from_millis(500)));
        assert!(matches!(
            t.time_out(Duration::from_secs(1)),
            Action::Finish(Finish::Close(Close::Now))
        ));
    }

    #[test]
    fn a_bad_park_setting_is_named() {
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n[timeouts]\npark = \"soon\"\n";
        let e = Config::parse("t.toml", text).unwrap_err().to_string();
        assert!(
            e.contains("t.toml") && e.contains("timeouts.park") && e.contains("off"),
            "{e}"
        );
    }
}
