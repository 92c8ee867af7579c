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

/// The environment of an exchange with no cache, authentication or other worker service.
pub(super) fn bare_env(cfg: &'static Config) -> Env<'static> {
    Env::bare(cfg, &*DATE)
}

struct T {
    cfg: &'static Config,
    ex: Exchange,
    now: Instant,
}

impl T {
    fn new() -> Self {
        let cfg: &'static Config = Box::leak(Box::new(Config::parse("t.toml", CFG).unwrap()));
        let mut ex = Exchange::new(&cfg.server.listen[0], "192.0.2.1".parse().unwrap());
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        ex.begin(cfg, now);
        Self { cfg, ex, now }
    }

    fn env(&self) -> Env<'static> {
        bare_env(self.cfg)
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

    /// `GET /` sent to server 0, its response awaited.
    fn sent() -> Self {
        let mut t = T::new();
        t.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        t.pick(0);
        t
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
    let mut t = T::sent();
    let resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close";
    let n = t.response(resp);
    assert_eq!(n, resp.len(), "the head, and the body that came with it");
    assert!(matches!(t.next(), Action::WriteClient));
    let head = t.out();
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(
        !head.contains("Connection: close"),
        "the client's connection stays: {head}"
    );
    assert!(
        head.ends_with("\r\n\r\n10\r\nbody until close\r\n"),
        "what came with the head goes with it, re-framed: {head:?}"
    );
    t.ex.handle_client_written(true, t.now);
    let Action::RelayResponse(plan) = t.next() else {
        panic!()
    };
    assert!(!plan.splice);
    assert!(!plan.body.is_done(), "the rest is relayed until the close");
    assert_eq!(plan.body.total(), 16);
    t.ex.handle_response_body(Ok(0), 0, Stages::default(), &t.env(), t.now);
    assert!(matches!(
        t.ex.poll_action(),
        Action::Release {
            then: Reuse::Close,
            ..
        }
    ));
    assert!(matches!(
        t.ex.poll_action(),
        Action::Finish(Finish::KeepAlive)
    ));
}

#[test]
fn a_chunked_body_that_came_with_the_head_goes_with_it() {
    let mut t = T::sent();
    // Whole: the head, one chunk in two extensions' worth of framing, the last chunk and a
    // trailer; then a byte past the body.
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\nZ";
    assert_eq!(t.response(resp), resp.len() - 1, "all but the stray byte");
    assert!(matches!(t.next(), Action::WriteClient));
    let out = t.out();
    assert!(
        out.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        "re-framed as this proxy frames it: {out:?}"
    );
    t.ex.handle_client_written(true, t.now);
    let Action::RelayResponse(plan) = t.next() else {
        panic!()
    };
    assert!(plan.body.is_done(), "nothing is left to relay");
    t.ex.handle_response_body(Ok(0), 1, Stages::default(), &t.env(), t.now);
    assert!(matches!(
        t.ex.poll_action(),
        Action::Release {
            then: Reuse::Distrust,
            ..
        }
    ));

    // Part of it: the framing is carried on by the relay (a chunk cut in its data and a size
    // line cut short stay consistent), and the payload counted once.
    let mut t = T::sent();
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc";
    assert_eq!(t.response(resp), resp.len());
    assert!(matches!(t.next(), Action::WriteClient));
    assert!(t.out().ends_with("\r\n\r\n3\r\nabc\r\n"), "{:?}", t.out());
    t.ex.handle_client_written(true, t.now);
    let Action::RelayResponse(mut plan) = t.next() else {
        panic!()
    };
    let mut out = Vec::new();
    let s = plan.body.step(b"de\r\n0\r\n\r\n", &mut out).unwrap();
    assert_eq!(s.consumed, 9);
    assert_eq!(out, b"2\r\nde\r\n0\r\n\r\n");
    assert!(plan.body.is_done());
    assert_eq!(plan.body.total(), 5);

    // Bad framing with the head: nothing of it goes out with the head; the relay finds it and
    // the exchange reports it as it always has.
    let mut t = T::sent();
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc";
    assert_eq!(t.response(resp), resp.len() - 7, "the head only");
    assert!(matches!(t.next(), Action::WriteClient));
    assert!(t.out().ends_with("\r\n\r\n"), "{:?}", t.out());
    t.ex.handle_client_written(true, t.now);
    let Action::RelayResponse(mut plan) = t.next() else {
        panic!()
    };
    assert!(plan.body.step(b"zz\r\nabc", &mut Vec::new()).is_err());
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
    t.ex.handle_response_body(Ok(0), 5, Stages::default(), &t.env(), t.now);
    assert!(matches!(
        t.ex.poll_action(),
        Action::Release {
            to: UpstreamKey::Server { server: 1, .. },
            then: Reuse::Distrust,
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
            ..
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
    assert!(matches!(
        t.next(),
        Action::Connect {
            via: Via::Pooled,
            ..
        }
    ));
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
            via: Via::Fresh,
            proxy: None,
        }
    ));
}

#[test]
fn a_group_that_hears_proxy_headers_gets_new_connections_bound_to_their_client() {
    let text = CFG.replace(
        "retry_on = [503]",
        "retry_on = [503]\nproxy_protocol = \"v2\"",
    );
    let cfg: &'static Config = Box::leak(Box::new(Config::parse("t.toml", &text).unwrap()));
    let mut t = T::new();
    t.cfg = cfg;
    t.ex.begin(cfg, t.now);
    for round in 0..2 {
        t.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(t.next(), Action::Pick { .. }));
        let env = t.env();
        t.ex.handle_pick(Some(0), &env, t.now);
        let want = if round == 0 { Via::Fresh } else { Via::Pinned };
        match t.next() {
            Action::Connect { via, proxy, .. } => {
                assert_eq!(via, want, "round {round}: never a pooled connection");
                assert_eq!(
                    proxy,
                    Some((crate::proxyproto::Version::V2, "192.0.2.1".parse().unwrap()))
                );
            }
            a => panic!("{a:?}"),
        }
        t.ex.handle_connected(round == 1, t.now);
        assert!(matches!(t.next(), Action::SendRequest));
        t.ex.handle_request_sent(t.now);
        assert!(matches!(
            t.ex.poll_action(),
            Action::ReadResponseHead { .. }
        ));
        let env = t.env();
        t.ex.handle_upstream_input(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &env, t.now);
        // Released to this client alone.
        let mut pinned = false;
        loop {
            match t.ex.poll_action() {
                Action::Release { then, .. } => pinned = then == Reuse::Pin,
                Action::Record { .. } => {}
                Action::WriteClient => {
                    t.ex.handle_client_written(true, t.now);
                }
                Action::RelayResponse(mut plan) => {
                    let env = t.env();
                    let stages = std::mem::take(&mut plan.stages);
                    t.ex.handle_response_body(Ok(0), 0, stages, &env, t.now);
                }
                Action::Finish(Finish::KeepAlive) => break,
                a => panic!("{a:?}"),
            }
        }
        assert!(pinned, "round {round}");
        t.ex.begin(cfg, t.now);
    }
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
    // A new connection's first request is awaited even by a draining worker.
    assert!(matches!(
        t.ex.poll_action(),
        Action::ReadHead { idle: false, .. }
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
        draining: true,
        ..bare_env(t.cfg)
    };
    assert!(matches!(t.ex.poll_action(), Action::ReadHead { .. }));
    t.ex.handle_input(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", &env, t.now);
    assert!(t.out().contains("Connection: close\r\n"));
}

// ---- the cache ---------------------------------------------------------------------------

/// A clock that tests move by hand (whole seconds, as the cache reads time).
struct Clock(std::cell::Cell<u64>);

impl DateSource for Clock {
    fn date_line(&self) -> DateLine {
        DateLine::at(self.0.get())
    }
}

thread_local! {
    /// The shard of the cached test running on this thread, for the `EndFill` effects.
    static SHARD: std::cell::Cell<Option<&'static std::cell::RefCell<crate::cache::Shard>>> =
        const { std::cell::Cell::new(None) };
}

/// An exchange with a cache: its shard, the shared invalidation counters and a hand clock.
struct C {
    cfg: &'static Config,
    shard: &'static std::cell::RefCell<crate::cache::Shard>,
    table: &'static crate::cache::Table,
    clock: &'static Clock,
    now: Instant,
}

impl C {
    fn new() -> Self {
        Self::with("")
    }

    /// With `extra` lines in `[cache]`.
    fn with(extra: &str) -> Self {
        let text = format!("{CFG}\n[cache]\nsize = \"8m\"\n{extra}\n");
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let shard: &'static _ =
            Box::leak(Box::new(std::cell::RefCell::new(crate::cache::Shard::new(
                1 << 20,
                std::sync::Arc::new(crate::cache::Table::new(1 << 20)),
            ))));
        SHARD.with(|s| s.set(Some(shard)));
        Self {
            cfg: Box::leak(Box::new(Config::parse("t.toml", &text).unwrap())),
            shard,
            table: Box::leak(Box::new(shard.borrow().table().clone())),
            clock: Box::leak(Box::new(Clock(std::cell::Cell::new(1_000_000)))),
            now,
        }
    }

    fn env(&self) -> Env<'static> {
        Env {
            cfg: self.cfg,
            date: self.clock,
            draining: false,
            auth: None,
            cache: Some(CacheRef {
                shard: self.shard,
                table: self.table,
            }),
            hints: None,
            encoders: None,
            ids: None,
            acme: None,
        }
    }

    fn exchange(&self, req: &[u8]) -> Exchange {
        let mut ex = Exchange::new(&self.cfg.server.listen[0], "192.0.2.1".parse().unwrap());
        ex.begin(self.cfg, self.now);
        assert!(matches!(ex.poll_action(), Action::ReadHead { .. }));
        assert_eq!(ex.handle_input(req, &self.env(), self.now), req.len());
        ex
    }

    /// Skips side effects; returns the next action that needs an answer.
    fn next(ex: &mut Exchange) -> Action {
        loop {
            match ex.poll_action() {
                Action::Record { .. } => continue,
                // As io does: the claim ends in the worker's shard.
                Action::EndFill { key } => {
                    let shard = SHARD.with(std::cell::Cell::get).expect("a cached test");
                    assert!(
                        shard.borrow().table().filling(&key),
                        "gives back a claim it holds"
                    );
                    shard.borrow().table().end_fill(&key);
                }
                a => return a,
            }
        }
    }

    /// Drives `ex` to the upstream and feeds it `resp`; returns what it wrote upstream.
    fn fetch(&self, ex: &mut Exchange, resp: &[u8]) -> String {
        let env = self.env();
        assert!(matches!(Self::next(ex), Action::Pick { .. }));
        ex.handle_pick(Some(0), &env, self.now);
        assert!(matches!(Self::next(ex), Action::Connect { .. }));
        ex.handle_connected(true, self.now);
        assert!(matches!(Self::next(ex), Action::SendRequest));
        let sent = String::from_utf8_lossy(ex.out()).into_owned();
        ex.handle_request_sent(self.now);
        assert!(matches!(Self::next(ex), Action::ReadResponseHead { .. }));
        assert_eq!(ex.handle_upstream_input(resp, &env, self.now), resp.len());
        sent
    }

    /// Writes what is due to the client and finishes a relay with nothing left; returns what
    /// the client got.
    fn deliver(&self, ex: &mut Exchange) -> String {
        let env = self.env();
        let out = match Self::next(ex) {
            Action::WriteClient => String::from_utf8_lossy(ex.out()).into_owned(),
            Action::Release { .. } => return self.deliver(ex),
            a => panic!("expected a write, got {a:?}"),
        };
        ex.handle_client_written(true, self.now);
        if let Action::RelayResponse(mut plan) = Self::next(ex) {
            ex.handle_response_body(Ok(0), 0, std::mem::take(&mut plan.stages), &env, self.now);
        }
        out
    }

    fn tick(&self, secs: u64) {
        self.clock.0.set(self.clock.0.get() + secs);
    }
}

const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn a_stored_response_answers_with_its_age_until_it_is_stale() {
    let c = C::new();
    let mut ex = c.exchange(GET_A);
    c.fetch(
        &mut ex,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\nContent-Length: 2\r\n\r\nok",
    );
    let first = c.deliver(&mut ex);
    assert!(
        first.contains("Cache-Status: ringway; fwd=uri-miss; stored\r\n"),
        "{first}"
    );
    c.tick(30);
    let mut ex = c.exchange(GET_A);
    let hit = c.deliver(&mut ex);
    assert!(hit.starts_with("HTTP/1.1 200 OK\r\n"), "{hit}");
    assert!(
        hit.contains("Age: 30\r\n") && hit.contains("Content-Length: 2\r\n"),
        "{hit}"
    );
    assert!(hit.contains("Cache-Status: ringway; hit; ttl=70\r\n") && hit.ends_with("\r\n\r\nok"));
    assert!(ex.end_record().cache_hit);
    assert!(matches!(
        ex.poll_action(),
        Action::Finish(Finish::KeepAlive)
    ));
    // Past its lifetime, with no validator: to the origin, as a plain request.
    c.tick(71);
    let mut ex = c.exchange(GET_A);
    let sent = c.fetch(&mut ex, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(!sent.contains("If-"), "{sent}");
}

#[test]
fn a_304_refreshes_the_stored_response_and_the_client_gets_it() {
    let c = C::new();
    let mut ex = c.exchange(GET_A);
    c.fetch(
        &mut ex,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: \"e1\"\r\nContent-Length: 4\r\n\r\nbody",
    );
    c.deliver(&mut ex);
    let mut ex = c.exchange(GET_A);
    let sent = c.fetch(
        &mut ex,
        b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=60\r\nETag: \"e1\"\r\n\r\n",
    );
    assert!(sent.contains("If-None-Match: \"e1\"\r\n"), "{sent}");
    // The upstream connection goes back to the pool: nothing of the 304 is left on it.
    assert!(matches!(
        C::next(&mut ex),
        Action::Release {
            then: Reuse::Pool,
            ..
        }
    ));
    let out = c.deliver(&mut ex);
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("body"),
        "{out}"
    );
    assert!(
        out.contains("Cache-Control: max-age=60\r\n") && !out.contains("max-age=0"),
        "{out}"
    );
    // Now fresh: a hit; and a conditional request from the client is answered 304.
    let mut ex = c.exchange(b"GET /a HTTP/1.1\r\nHost: x\r\nIf-None-Match: W/\"e1\"\r\n\r\n");
    let out = c.deliver(&mut ex);
    assert!(
        out.starts_with("HTTP/1.1 304 Not Modified\r\n") && out.contains("ETag: \"e1\""),
        "{out}"
    );
    assert!(!out.contains("Content-Length"), "{out}");
}

#[test]
fn a_second_miss_waits_for_the_first_fetch() {
    let c = C::new();
    let mut first = c.exchange(GET_A);
    assert!(matches!(C::next(&mut first), Action::Pick { .. }));
    let mut second = c.exchange(GET_A);
    assert!(matches!(second.poll_action(), Action::WaitFill));
    assert_eq!(second.cache_key(), b"~app\0http://x/a");
    assert!(second.deadline().is_some(), "the wait is bounded");
    // The first one's fetch: it had already picked; finish it by hand.
    let env = c.env();
    first.handle_pick(Some(0), &env, c.now);
    assert!(matches!(C::next(&mut first), Action::Connect { .. }));
    first.handle_connected(true, c.now);
    assert!(matches!(C::next(&mut first), Action::SendRequest));
    first.handle_request_sent(c.now);
    assert!(matches!(
        C::next(&mut first),
        Action::ReadResponseHead { .. }
    ));
    let resp = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 1\r\n\r\nx";
    first.handle_upstream_input(resp, &env, c.now);
    assert!(
        !c.shard.borrow().table().filling(b"http://x/a"),
        "stored: the claim is given back"
    );
    second.handle_fill_done(&env, c.now);
    let out = c.deliver(&mut second);
    assert!(
        out.contains("Cache-Status: ringway; hit") && out.ends_with("x"),
        "{out}"
    );
}

#[test]
fn an_unsafe_request_invalidates_the_stored_response() {
    let c = C::new();
    let mut ex = c.exchange(GET_A);
    c.fetch(
        &mut ex,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 0\r\n\r\n",
    );
    c.deliver(&mut ex);
    let mut ex = c.exchange(b"DELETE /a HTTP/1.1\r\nHost: X:80\r\n\r\n");
    c.fetch(&mut ex, b"HTTP/1.1 204 No Content\r\nLocation: /b\r\n\r\n");
    let out = c.deliver(&mut ex);
    assert!(
        out.contains("Cache-Status: ringway; fwd=method\r\n"),
        "{out}"
    );
    let mut ex = c.exchange(GET_A);
    assert!(
        matches!(C::next(&mut ex), Action::Pick { .. }),
        "invalidated"
    );
}

#[test]
fn a_large_body_goes_out_with_the_part_that_came_with_the_head_and_the_rest_is_spliced() {
    let mut t = T::new();
    let hints: &'static std::cell::RefCell<SizeHints> = Box::leak(Box::new(
        std::cell::RefCell::new(SizeHints::new(t.cfg.routes.len())),
    ));
    for i in 0..3 {
        let env = Env {
            hints: Some(hints),
            encoders: None,
            ids: None,
            acme: None,
            ..t.env()
        };
        if i > 0 {
            t.ex.begin(t.cfg, t.now);
        }
        assert!(matches!(t.ex.poll_action(), Action::ReadHead { .. }));
        let req = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(t.ex.handle_input(req, &env, t.now), req.len());
        t.pick(0);
        // Two large responses on the route: the third head is read short, so that little of
        // its body is copied.
        let Action::ReadResponseHead { max, .. } = t.next() else {
            panic!("expected ReadResponseHead")
        };
        assert_eq!(max, (i == 2).then_some(HEAD_READ), "exchange {i}");
        let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'x', 3000));
        assert_eq!(t.ex.handle_upstream_input(&resp, &env, t.now), resp.len());
        assert!(matches!(t.next(), Action::WriteClient));
        let out = t.out();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.ends_with(&format!("\r\n\r\n{}", "x".repeat(3000))),
            "one write"
        );
        t.ex.handle_client_written(true, t.now);
        let Action::RelayResponse(plan) = t.next() else {
            panic!("expected RelayResponse")
        };
        assert!(plan.splice, "spliced by the whole body's length");
        assert_eq!(plan.body.want(), 97_000);
        t.ex.handle_response_body(Ok(97_000), 0, Stages::default(), &env, t.now);
        assert!(matches!(t.next(), Action::Finish(Finish::KeepAlive)));
        assert_eq!(t.ex.end_record().response_body, 100_000);
    }
    // Small responses teach it back.
    let mut h = hints.borrow_mut();
    h.record(Some(0), Some(10));
    h.record(Some(0), Some(10));
    assert_eq!(h.head_read(Some(0)), None);
}

#[test]
fn a_304_set_cookie_goes_to_the_revalidating_client_only() {
    let c = C::new();
    let mut ex = c.exchange(GET_A);
    c.fetch(
        &mut ex,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: \"e1\"\r\nContent-Length: 4\r\n\r\nbody",
    );
    c.deliver(&mut ex);
    // A logged-in user's request revalidates; the origin renews its session cookie on the 304.
    let mut ex = c.exchange(b"GET /a HTTP/1.1\r\nHost: x\r\nCookie: session=alice\r\n\r\n");
    c.fetch(
        &mut ex,
        b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=60\r\nETag: \"e1\"\r\nSet-Cookie: session=alice-renewed\r\n\r\n",
    );
    let out = c.deliver(&mut ex);
    assert!(
        out.contains("Set-Cookie: session=alice-renewed\r\n"),
        "{out}"
    );
    // Everyone else gets the refreshed entry, without her cookie.
    let mut ex = c.exchange(GET_A);
    let hit = c.deliver(&mut ex);
    assert!(hit.contains("Cache-Status: ringway; hit"), "{hit}");
    assert!(!hit.contains("Set-Cookie"), "{hit}");
}

// ---- the forward proxy ---------------------------------------------------------------------

/// A forward-proxy exchange for `client` under the `[forward]` section `extra`.
struct F {
    t: T,
}

impl F {
    fn new(client: &str, extra: &str) -> Self {
        let text = format!(
            "[server]\nlisten = [{{ addr = \"127.0.0.1:3128\", forward = true }}]\n{extra}"
        );
        let cfg: &'static Config = Box::leak(Box::new(Config::parse("f.toml", &text).unwrap()));
        let mut ex = Exchange::new(&cfg.server.listen[0], client.parse().unwrap());
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        ex.begin(cfg, now);
        Self {
            t: T { cfg, ex, now },
        }
    }

    /// Sends `req`; returns the answer the proxy wrote itself, if it did.
    fn local(&mut self, req: &str) -> Option<String> {
        self.t.request(req.as_bytes());
        match self.t.next() {
            Action::WriteClient => Some(self.t.out()),
            _ => None,
        }
    }

    fn resolved(&mut self, addrs: &[&str]) {
        let env = self.t.env();
        let a = addrs.iter().map(|a| a.parse().unwrap()).collect();
        self.t.ex.handle_resolved(Ok(a), &env, self.t.now);
    }
}

#[test]
fn forward_ports_rules_and_loops() {
    // Ordinary requests only to the usual ports (Squid's Safe_ports).
    for port in [22, 25, 6379, 11211] {
        let mut f = F::new("127.0.0.1", "");
        let out = f
            .local(&format!(
                "GET http://h.test:{port}/ HTTP/1.1\r\nHost: h.test\r\n\r\n"
            ))
            .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 403") && out.contains("safe_ports"),
            "{out}"
        );
    }
    let mut f = F::new("127.0.0.1", "[forward]\nsafe_ports = [25]\n");
    assert!(f
        .local("GET http://h.test:25/ HTTP/1.1\r\nHost: h\r\n\r\n")
        .is_none());
    // No rules: local clients only.
    let mut f = F::new("203.0.113.9", "");
    let out = f
        .local("GET http://h.test/ HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("no access rules"),
        "{out}"
    );
    let mut f = F::new("10.1.2.3", "");
    assert!(f
        .local("GET http://h.test/ HTTP/1.1\r\nHost: h\r\n\r\n")
        .is_none());
    // The proxy itself, by address or by a name that resolves to it.
    let mut f = F::new("127.0.0.1", "[forward]\nconnect_ports = [3128]\n");
    let out = f
        .local("CONNECT 127.0.0.1:3128 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(out.contains("this proxy itself"), "{out}");
    let mut f = F::new("127.0.0.1", "[forward]\nconnect_ports = [3128]\n");
    assert!(f
        .local("CONNECT me.test:3128 HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_none());
    f.resolved(&["127.0.0.1:3128"]);
    assert!(matches!(f.t.next(), Action::WriteClient));
    assert!(f.t.out().contains("this proxy itself"));
    // Two Proxy-Authorization fields.
    let mut f = F::new("127.0.0.1", "");
    let out = f
        .local("GET http://h.test/ HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic a\r\nProxy-Authorization: Basic b\r\n\r\n")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

#[test]
fn forward_destinations_dial_only_allowed_addresses_and_the_next_on_failure() {
    let rules = "[[forward.rules]]\naction = \"allow\"\ndest_ips = [\"127.0.0.2\"]\n";
    let mut f = F::new("127.0.0.1", rules);
    assert!(f
        .local("GET http://dual.test/ HTTP/1.1\r\nHost: h\r\n\r\n")
        .is_none());
    f.resolved(&["[::1]:80", "127.0.0.2:80"]);
    match f.t.next() {
        Action::Connect {
            to: UpstreamKey::Destination { addr, .. },
            ..
        } => assert_eq!(
            addr,
            "127.0.0.2:80".parse().unwrap(),
            "only the allowed address"
        ),
        a => panic!("{a:?}"),
    }
    // A dead first address: the next one, within the same deadline.
    let mut f = F::new("127.0.0.1", "");
    assert!(f
        .local("GET http://dual.test/ HTTP/1.1\r\nHost: h\r\n\r\n")
        .is_none());
    f.resolved(&["[::1]:80", "127.0.0.2:80"]);
    assert!(matches!(f.t.next(), Action::Connect { .. }));
    let env = f.t.env();
    f.t.ex.handle_upstream_error(
        UpstreamError::ConnectFailed("refused".into()),
        &env,
        f.t.now,
    );
    match f.t.next() {
        Action::Connect {
            to: UpstreamKey::Destination { addr, .. },
            ..
        } => assert_eq!(addr, "127.0.0.2:80".parse().unwrap()),
        a => panic!("{a:?}"),
    }
    // A private address is refused without saying which one.
    let mut f = F::new("203.0.113.9", "[[forward.rules]]\naction = \"allow\"\n");
    assert!(f
        .local("GET http://inside.test/ HTTP/1.1\r\nHost: h\r\n\r\n")
        .is_none());
    f.resolved(&["10.0.0.5:80"]);
    assert!(matches!(f.t.next(), Action::WriteClient));
    let out = f.t.out();
    assert!(
        out.starts_with("HTTP/1.1 403") && !out.contains("10.0.0.5"),
        "{out}"
    );
}

#[test]
fn forward_targets_go_to_the_origin_as_sent() {
    for path in [
        "/web/2015/http://x/",
        "/a/../b/./c",
        "/%61%2F%5C%00%e9?q=%2F",
        "//double//slash",
    ] {
        let mut f = F::new("127.0.0.1", "");
        let req = format!("GET http://h.test{path} HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(f.local(&req).is_none(), "{path}");
        assert!(
            f.t.out().starts_with(&format!("GET {path} HTTP/1.1\r\n")),
            "{path}: {}",
            f.t.out()
        );
    }
    let mut f = F::new("127.0.0.1", "");
    let out = f
        .local("GET http://h.test/%zz HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

#[test]
fn a_client_no_cache_does_not_replace_a_fresh_entry_at_will() {
    let c = C::new();
    let mut ex = c.exchange(GET_A);
    c.fetch(
        &mut ex,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\nContent-Length: 4\r\n\r\ngood",
    );
    c.deliver(&mut ex);
    // The client asks for a fresh copy (with an unkeyed header the origin trusts): it gets
    // the origin's answer, which is not stored.
    let mut ex = c.exchange(
        b"GET /a HTTP/1.1\r\nHost: x\r\nCache-Control: no-cache\r\nX-Forwarded-Host: evil\r\n\r\n",
    );
    c.fetch(
        &mut ex,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\nContent-Length: 4\r\n\r\nevil",
    );
    let out = c.deliver(&mut ex);
    assert!(
        out.ends_with("evil") && out.contains("fwd=request"),
        "{out}"
    );
    assert!(!out.contains("stored"), "{out}");
    let mut ex = c.exchange(GET_A);
    let hit = c.deliver(&mut ex);
    assert!(hit.ends_with("good") && hit.contains("; hit;"), "{hit}");
    // `ignore`: the fresh entry answers.
    let c = C::with("client_no_cache = \"ignore\"");
    let mut ex = c.exchange(GET_A);
    c.fetch(
        &mut ex,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\nContent-Length: 4\r\n\r\ngood",
    );
    c.deliver(&mut ex);
    let mut ex = c.exchange(b"GET /a HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n");
    let hit = c.deliver(&mut ex);
    assert!(hit.ends_with("good") && hit.contains("; hit;"), "{hit}");
}

#[test]
fn vary_selects_the_stored_response_by_the_request_fields_it_names() {
    let c = C::new();
    let gzip = b"GET /a HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n";
    let plain = b"GET /a HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n";
    let mut ex = c.exchange(gzip);
    c.fetch(
        &mut ex,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\nVary: Accept-Encoding\r\nContent-Length: 2\r\n\r\ngz",
    );
    let first = c.deliver(&mut ex);
    assert!(
        first.contains("; stored\r\n") && first.ends_with("\r\n\r\ngz"),
        "{first}"
    );
    // Another Accept-Encoding: the stored response is not this request's, so it goes on.
    let mut ex = c.exchange(plain);
    assert!(
        matches!(C::next(&mut ex), Action::Pick { .. }),
        "a Vary mismatch must not be answered from the cache"
    );
    assert!(!ex.end_record().cache_hit);
    // The same one (in another spelling of the field's name): a hit.
    let mut ex = c.exchange(b"GET /a HTTP/1.1\r\nHost: x\r\naccept-encoding: gzip\r\n\r\n");
    let hit = c.deliver(&mut ex);
    assert!(
        hit.contains("Cache-Status: ringway; hit") && hit.ends_with("gz"),
        "{hit}"
    );
    assert!(ex.end_record().cache_hit);
    assert_eq!(ex.end_record().status, 200);
}

#[test]
fn name_resolution_has_a_deadline_and_its_timeout_is_a_504() {
    let mut f = F::new("127.0.0.1", "[forward]\nresolver_timeout = \"2s\"\n");
    assert!(f
        .local("GET http://slow.test/ HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        .is_none());
    // The request waits for the name, bounded by twice resolver_timeout.
    assert_eq!(f.t.ex.deadline(), Some(f.t.now + Duration::from_secs(4)));
    let env = f.t.env();
    let later = f.t.now + Duration::from_secs(4);
    f.t.ex.handle_timeout(&env, later);
    assert!(matches!(f.t.next(), Action::WriteClient));
    let out = f.t.out();
    assert!(
        out.starts_with("HTTP/1.1 504") && out.contains("resolving slow.test"),
        "{out}"
    );
    assert!(f.t.ex.end_record().error.is_some());
}

#[test]
fn a_background_refresh_is_recorded_as_the_proxy_s_own_request() {
    let c = C::new();
    let mut ex = Exchange::new(&c.cfg.server.listen[0], "192.0.2.1".parse().unwrap());
    ex.own_fill(b"~app\0http://x/a".to_vec());
    ex.begin(c.cfg, c.now);
    assert_eq!(ex.end_record().requester, super::Requester::Refresh);
    let mut ex = c.exchange(GET_A);
    let _ = C::next(&mut ex);
    assert_eq!(ex.end_record().requester, super::Requester::Client);
}

struct Tokens;

impl crate::acme::Challenges for Tokens {
    fn http01(&self, token: &str) -> Option<String> {
        (token == "tok-1").then(|| "tok-1.thumb".to_string())
    }
}

/// ACME HTTP-01: a validation in progress is answered with its key authorization before any
/// route (and before a deny rule); unknown tokens, other methods and path tricks go on as
/// ordinary requests.
#[test]
fn acme_http01_validations_are_answered_before_routes_and_rules() {
    let cfg: &'static Config = Box::leak(Box::new(
        Config::parse(
            "t.toml",
            &format!("{CFG}\n[[rules]]\naction = \"deny\"\npaths = [\"/.well-known/\"]\n"),
        )
        .unwrap(),
    ));
    let answer = |req: &[u8]| {
        let mut ex = Exchange::new(&cfg.server.listen[0], "192.0.2.1".parse().unwrap());
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        ex.begin(cfg, now);
        let mut env = T::new().env();
        env.cfg = cfg;
        env.acme = Some(&Tokens);
        assert!(matches!(ex.poll_action(), Action::ReadHead { .. }));
        ex.handle_input(req, &env, now);
        String::from_utf8_lossy(ex.out()).into_owned()
    };
    let r = answer(b"GET /.well-known/acme-challenge/tok-1 HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Content-Type: text/plain\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\ntok-1.thumb"), "{r}");
    // Unknown token, a dot segment to reach it, or POST: the deny rule decides as usual.
    for req in [
        &b"GET /.well-known/acme-challenge/tok-2 HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        b"POST /.well-known/acme-challenge/tok-1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n",
        b"GET /.well-known/acme-challenge/tok-1/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ] {
        let r = answer(req);
        assert!(r.starts_with("HTTP/1.1 403 "), "{r}");
    }
    // A normalised path that lands on the token is the token (what the route would see).
    let r = answer(b"GET /x/../.well-known/acme-challenge/tok-1 HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert!(r.ends_with("tok-1.thumb"), "{r}");
}

/// Mutual TLS: on a listener that asks for client certificates the upstream is told the
/// verdict, subject and fingerprint; what a client sends under those names never passes; a
/// rule can admit by subject.
#[test]
fn client_certificates_reach_the_upstream_and_the_rules_never_the_clients_word() {
    let cfg: &'static Config = Box::leak(Box::new(
        Config::parse(
            "t.toml",
            "[server]\nlisten = [{ addr = \"127.0.0.1:443\", tls = true, client_auth = \"optional\" }, \"127.0.0.1:80\"]\n\
             [tls]\ncertificates = [{ cert = \"c.pem\", key = \"k.pem\" }]\nclient_ca = \"ca.pem\"\n\
             [upstreams.app]\nservers = [\"10.0.0.1:80\"]\n[[routes]]\nupstream = \"app\"\n\
             [[rules]]\naction = \"deny\"\npaths = [\"/admin\"]\n[[rules]]\naction = \"allow\"\nclient_subject = \"^CN=alice,\"\n",
        )
        .unwrap(),
    ));
    let env = || {
        let mut e = T::new().env();
        e.cfg = cfg;
        e
    };
    // The rules above are "deny /admin" first; put the subject rule first to admit alice.
    let upstream_head = |listen: usize, cert: Option<&str>, req: &[u8]| {
        let mut ex = Exchange::new(&cfg.server.listen[listen], "192.0.2.1".parse().unwrap());
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        ex.begin(cfg, now);
        if let Some(s) = cert {
            ex.handle_client_certificate(crate::clientcert::ClientCert::new(s, &[0xab; 32]));
        }
        assert!(matches!(ex.poll_action(), Action::ReadHead { .. }));
        ex.handle_input(req, &env(), now);
        String::from_utf8_lossy(ex.out()).into_owned()
    };
    let forged = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Client-Verify: SUCCESS\r\nx-client-cert-subject: CN=root\r\nX-Client-Cert-Fingerprint: 00\r\n\r\n";
    let h = upstream_head(0, Some("CN=alice, O=Example"), forged);
    assert!(h.contains("X-Client-Verify: SUCCESS\r\n"), "{h}");
    assert!(
        h.contains("X-Client-Cert-Subject: CN=alice, O=Example\r\n"),
        "{h}"
    );
    assert!(
        h.contains(&format!(
            "X-Client-Cert-Fingerprint: {}\r\n",
            "ab".repeat(32)
        )),
        "{h}"
    );
    assert!(!h.contains("CN=root") && !h.contains(": 00\r\n"), "{h}");
    let h = upstream_head(0, None, forged);
    assert!(h.contains("X-Client-Verify: NONE\r\n"), "{h}");
    assert!(!h.contains("SUCCESS") && !h.contains("CN=root"), "{h}");
    // A plain listener does not ask: nothing said, the client's fields still dropped.
    let h = upstream_head(1, None, forged);
    assert!(!h.to_ascii_lowercase().contains("x-client-"), "{h}");
    // Rules by subject: the first rule denies /admin to everyone, so alice is refused too;
    // the subject rule admits only a verified certificate, never a forged field.
    let r = upstream_head(
        0,
        Some("CN=alice, O=Example"),
        b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 403 "), "{r}");
    let rules = &cfg.rules;
    let header = |_: &[u8]| None;
    let seen = |s| crate::rules::Seen {
        client: "192.0.2.1".parse().unwrap(),
        listener: cfg.server.listen[0].addr,
        route: Some(0),
        method: b"GET",
        path: b"/x",
        header: &header,
        client_subject: s,
    };
    assert!(matches!(
        crate::rules::evaluate(rules, &seen(Some("CN=alice, O=Example"))),
        Some((1, crate::rules::RuleAction::Allow))
    ));
    assert!(crate::rules::evaluate(rules, &seen(Some("CN=mallory, O=x"))).is_none());
    assert!(crate::rules::evaluate(rules, &seen(None)).is_none());
}
