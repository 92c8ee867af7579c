//! The exchange's decisions one by one, with the clock passed in. The simulation (`sim.rs`)
//! drives random interleavings; these pin down each rule.

use std::time::{Duration, Instant};

use super::*;

const CFG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[timeouts]
client_header = "10s"
upstream_read = "5s"

[upstreams.app]
servers = ["10.0.0.1:80", "10.0.0.2:80"]
retries = 1
retry_on = [503]

[[routes]]
path = "/"
upstream = "app"

[[routes]]
path = "/hello"
respond = { status = 200, body = "hi" }
"#;

static DATE: std::sync::LazyLock<DateLine> = std::sync::LazyLock::new(|| DateLine::at(0));

struct T {
    cfg: &'static Config,
    ex: Exchange,
    now: Instant,
}

impl T {
    fn new() -> Self {
        let cfg: &'static Config = Box::leak(Box::new(Config::parse("t.toml", CFG).unwrap()));
        let mut ex = Exchange::new(ListenKind::Http, "192.0.2.1".parse().unwrap());
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        ex.begin(cfg, now);
        Self { cfg, ex, now }
    }

    fn env(&self) -> Env<'static> {
        Env {
            cfg: self.cfg,
            date: &*DATE,
            draining: false,
            auth: None,
            cache: None,
        }
    }

    /// Feeds a whole request; returns bytes consumed.
    fn request(&mut self, bytes: &[u8]) -> usize {
        assert!(matches!(self.ex.poll_action(), Action::ReadHead { .. }));
        let env = self.env();
        self.ex.handle_input(bytes, &env, self.now)
    }

    fn out(&mut self) -> String {
        String::from_utf8_lossy(self.ex.out()).into_owned()
    }

    /// Polls past side effects (Record, Release) to the next action that needs an answer.
    fn next(&mut self) -> Action {
        loop {
            match self.ex.poll_action() {
                Action::Record { .. } | Action::Release { .. } => continue,
                a => return a,
            }
        }
    }

    fn pick(&mut self, server: usize) {
        assert!(matches!(self.next(), Action::Pick { group: 0, .. }));
        let env = self.env();
        self.ex.handle_pick(Some(server), &env, self.now);
        assert!(
            matches!(self.next(), Action::Connect { to: UpstreamKey::Server { server: s, .. }, .. } if s == server)
        );
        self.ex.handle_connected(false, self.now);
        assert!(matches!(self.next(), Action::SendRequest));
        self.ex.handle_request_sent(self.now);
    }

    fn response(&mut self, bytes: &[u8]) -> usize {
        assert!(matches!(self.next(), Action::ReadResponseHead { .. }));
        let env = self.env();
        self.ex.handle_upstream_input(bytes, &env, self.now)
    }
}

#[test]
fn a_local_answer_keeps_the_connection_and_says_so_to_http10() {
    let mut t = T::new();
    let req = b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    assert_eq!(t.request(req), req.len());
    assert!(matches!(t.next(), Action::WriteClient));
    assert!(
        t.out().contains("Connection: keep-alive\r\n"),
        "{}",
        t.out()
    );
    t.ex.handle_client_written(true, t.now);
    assert!(matches!(t.next(), Action::Finish(Finish::KeepAlive)));
    assert_eq!(t.ex.end_record().status, 200);
}

#[test]
fn http10_without_keep_alive_closes_after_the_answer() {
    let mut t = T::new();
    t.request(b"GET /hello HTTP/1.0\r\n\r\n");
    assert!(t.out().contains("Connection: close\r\n"));
    t.ex.handle_client_written(true, t.now);
    assert!(matches!(
        t.next(),
        Action::Finish(Finish::Close(Close::Notify))
    ));
}

#[test]
fn the_upstream_gets_the_rewritten_head_and_a_small_body_inline() {
    let mut t = T::new();
    let req =
        b"POST /a/./b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabcGET";
    assert_eq!(
        t.request(req),
        req.len() - 3,
        "the body went inline, the next request stays"
    );
    let sent = t.out();
    assert!(
        sent.starts_with("POST /a/b HTTP/1.1\r\nHost: x\r\n"),
        "{sent}"
    );
    assert!(sent.contains("X-Forwarded-For: 192.0.2.1\r\n"));
    assert!(!sent.contains("Connection: close"));
    assert!(sent.ends_with("Content-Length: 3\r\n\r\nabc"));
}

#[test]
fn a_response_is_reframed_and_persistence_decided() {
    let mut t = T::new();
    t.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    t.pick(0);
    let resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close";
    let n = t.response(resp);
    assert_eq!(
        n,
        resp.len() - 16,
        "the head; the close-delimited body is relayed"
    );
    assert!(matches!(t.next(), Action::WriteClient));
    let head = t.out();
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(
        !head.contains("Connection: close"),
        "the client's connection stays: {head}"
    );
    t.ex.handle_client_written(true, t.now);
    let Action::RelayResponse(plan) = t.next() else {
        panic!()
    };
    assert!(!plan.splice);
    t.ex.handle_response_body(Ok(16), 0, None, &t.env(), t.now);
    assert!(matches!(
        t.ex.poll_action(),
        Action::Release {
            pool: false,
            distrust: false,
            ..
        }
    ));
    assert!(matches!(
        t.ex.poll_action(),
        Action::Finish(Finish::KeepAlive)
    ));
}

#[test]
fn bytes_past_a_response_distrust_the_server() {
    let mut t = T::new();
    t.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    t.pick(1);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA";
    assert_eq!(t.response(resp), resp.len() - 5);
    t.ex.handle_client_written(true, t.now);
    let Action::RelayResponse(_) = t.next() else {
        panic!()
    };
    t.ex.handle_response_body(Ok(0), 5, None, &t.env(), t.now);
    assert!(matches!(
        t.ex.poll_action(),
        Action::Release {
            to: UpstreamKey::Server { server: 1, .. },
            pool: false,
            distrust: true,
        }
    ));
}

#[test]
fn a_retry_status_goes_to_the_next_server_then_is_relayed() {
    let mut t = T::new();
    t.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    t.pick(0);
    let busy = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";
    t.response(busy);
    assert!(matches!(
        t.ex.poll_action(),
        Action::Record {
            to: UpstreamKey::Server { server: 0, .. },
            outcome: Some(crate::health::Outcome::ServerError(503)),
            error: Some(Error::RetryStatus(503)),
        }
    ));
    t.pick(1);
    // The last server: its 503 is the answer.
    t.response(busy);
    assert!(matches!(t.next(), Action::WriteClient));
    assert!(t.out().starts_with("HTTP/1.1 503 Busy\r\n"));
    assert_eq!(t.ex.end_record().attempts, 2);
}

#[test]
fn a_post_is_not_sent_twice() {
    let mut t = T::new();
    t.request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    t.pick(0);
    assert!(matches!(t.next(), Action::ReadResponseHead { .. }));
    let env = t.env();
    t.ex.handle_timeout(&env, t.now + Duration::from_secs(5));
    assert!(matches!(t.next(), Action::WriteClient), "no second attempt");
    assert!(t.out().starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
    assert_eq!(
        t.ex.end_record().error,
        Some(Error::Upstream(UpstreamError::ReadTimeout))
    );
}

#[test]
fn a_stale_pooled_connection_is_replaced_once_for_idempotent_requests() {
    let mut t = T::new();
    t.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(t.next(), Action::Pick { .. }));
    let env = t.env();
    t.ex.handle_pick(Some(0), &env, t.now);
    assert!(matches!(t.next(), Action::Connect { pooled: true, .. }));
    t.ex.handle_connected(true, t.now);
    assert!(matches!(t.next(), Action::SendRequest));
    t.ex.handle_request_sent(t.now);
    assert!(matches!(t.next(), Action::ReadResponseHead { .. }));
    let env = t.env();
    t.ex.handle_upstream_error(UpstreamError::ClosedEarly, &env, t.now);
    assert!(matches!(
        t.next(),
        Action::Connect {
            to: UpstreamKey::Server { server: 0, .. },
            pooled: false,
        }
    ));
}

#[test]
fn expect_continue_is_answered_after_the_head_went_upstream() {
    let mut t = T::new();
    t.request(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert!(matches!(t.next(), Action::Pick { .. }));
    let env = t.env();
    t.ex.handle_pick(Some(0), &env, t.now);
    assert!(matches!(t.next(), Action::Connect { .. }));
    t.ex.handle_connected(false, t.now);
    assert!(matches!(t.next(), Action::SendRequest));
    t.ex.handle_request_sent(t.now);
    assert!(matches!(t.next(), Action::WriteContinue));
    t.ex.handle_client_written(true, t.now);
    assert!(matches!(t.next(), Action::SendBody(_)));
}

#[test]
fn timeouts_become_408_and_504_and_an_idle_timeout_just_closes() {
    let mut t = T::new();
    assert!(matches!(
        t.ex.poll_action(),
        Action::ReadHead { idle: true, .. }
    ));
    let env = t.env();
    assert_eq!(t.ex.handle_input(b"GET / HT", &env, t.now), 0);
    assert!(matches!(
        t.ex.poll_action(),
        Action::ReadHead {
            idle: false,
            read_first: true
        }
    ));
    assert_eq!(t.ex.deadline(), Some(t.now + Duration::from_secs(10)));
    let env = t.env();
    t.ex.handle_timeout(&env, t.now + Duration::from_secs(10));
    assert!(t.out().starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    assert_eq!(t.ex.end_record().error, Some(Error::HeadTimeout));

    let mut t = T::new();
    let env = t.env();
    t.ex.handle_timeout(&env, t.now + Duration::from_secs(10));
    assert!(matches!(
        t.ex.poll_action(),
        Action::Finish(Finish::Close(Close::Now))
    ));
    assert!(!t.ex.end_record().had_request());
}

#[test]
fn errors_to_head_requests_have_no_body() {
    let mut t = T::new();
    t.request(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(t.next(), Action::Pick { .. }));
    let env = t.env();
    t.ex.handle_pick(None, &env, t.now);
    let page = t.out();
    assert!(page.starts_with("HTTP/1.1 503 "), "{page}");
    assert!(page.contains("Retry-After: 5\r\n"));
    assert!(page.ends_with("\r\n\r\n"), "{page}");
}

#[test]
fn a_refused_request_closes_and_nothing_after_it_is_read() {
    let mut t = T::new();
    let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(t.request(req), 0);
    assert!(t.out().starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert!(t.out().contains("Connection: close\r\n"));
    t.ex.handle_client_written(true, t.now);
    assert!(matches!(
        t.next(),
        Action::Finish(Finish::Close(Close::Linger))
    ));
}

#[test]
fn a_draining_worker_closes_after_the_response() {
    let mut t = T::new();
    let env = Env {
        cfg: t.cfg,
        date: &*DATE,
        draining: true,
        auth: None,
        cache: None,
    };
    assert!(matches!(t.ex.poll_action(), Action::ReadHead { .. }));
    t.ex.handle_input(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", &env, t.now);
    assert!(t.out().contains("Connection: close\r\n"));
}
