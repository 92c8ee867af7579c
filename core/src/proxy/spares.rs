//! What a connection's exchange allocates, kept for the next connection.
//!
//! Accepting a connection built a fresh [`Exchange`]: its head buffer, header indexes, effect
//! queue, route edits and address texts were a dozen allocations, freed again when the
//! connection closed (a connection per request paid them every request). io keeps a few
//! [`Spares`] per worker; [`Exchange::with_spares`] builds from them and
//! [`Exchange::take_spares`] gives them back, emptied. Only capacity passes from one connection
//! to the next, never content: every buffer is cleared here, and each is written before it is
//! read, as between two requests of one connection.

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::config::Listen;
use crate::http::Header;

use super::record::Texts;
use super::{action, edits, Exchange, OUT_FIRST};

/// A connection's buffers, empty, to build the next connection's exchange from.
#[derive(Default)]
pub struct Spares {
    out: Vec<u8>,
    target: Vec<u8>,
    headers: Vec<Header>,
    uheaders: Vec<Header>,
    effects: VecDeque<action::Effect>,
    edits: edits::RouteEdits,
    texts: Texts,
    client_text: Vec<u8>,
    peer_text: Vec<u8>,
}

/// A header index longer than this (a connection that sent a huge head) is not kept.
const HEADERS_KEPT: usize = 64;
/// Nor a head buffer or text larger than this.
const BUF_KEPT: usize = 4 * 1024;

/// `v`, emptied, or a new vector when it grew past `max` elements.
fn kept<T>(mut v: Vec<T>, max: usize) -> Vec<T> {
    if v.capacity() > max {
        return Vec::new();
    }
    v.clear();
    v
}

impl Exchange {
    /// The exchanges of a connection accepted by `listen` from `client`, in buffers a closed
    /// connection left (see the module's text); [`Exchange::new`] with none.
    pub fn with_spares(listen: &Listen, client: IpAddr, s: Spares) -> Self {
        let Spares {
            mut out,
            target,
            mut headers,
            mut uheaders,
            mut effects,
            edits,
            texts,
            client_text,
            peer_text,
        } = s;
        // First sizes that fit most heads (a longer one grows them, once per connection):
        // every connection holds them while idle.
        out.reserve(OUT_FIRST);
        headers.reserve(16);
        uheaders.reserve(16);
        effects.reserve(4);
        let mut ex = Self::build(
            listen,
            crate::realip::Client::with_buffers(client, client_text, peer_text),
        );
        ex.out = out;
        ex.target = target;
        ex.headers = headers;
        ex.uheaders = uheaders;
        ex.effects = effects;
        ex.edits = edits;
        ex.record.text = texts;
        ex
    }

    /// Takes the exchange's buffers, emptied, for the next connection; this one ends.
    pub fn take_spares(&mut self) -> Spares {
        let mut edits = std::mem::take(&mut self.edits);
        edits.clear();
        let mut effects = std::mem::take(&mut self.effects);
        effects.clear();
        let mut texts = std::mem::take(&mut self.record.text);
        texts.clear();
        let client = std::mem::replace(&mut self.client, crate::realip::Client::none());
        let (client_text, peer_text) = client.into_buffers();
        Spares {
            out: kept(std::mem::take(&mut self.out), BUF_KEPT),
            target: kept(std::mem::take(&mut self.target), BUF_KEPT),
            headers: kept(std::mem::take(&mut self.headers), HEADERS_KEPT),
            uheaders: kept(std::mem::take(&mut self.uheaders), HEADERS_KEPT),
            effects,
            edits,
            texts,
            client_text: kept(client_text, BUF_KEPT),
            peer_text: kept(peer_text, BUF_KEPT),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a start time for the tests
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Instant;

    fn cfg() -> &'static Config {
        let cfg = Config::parse(
            "t.toml",
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n\
             [[routes]]\npath = \"/\"\nrespond = { status = 200, body = \"hi\" }\n",
        )
        .unwrap();
        Box::leak(Box::new(cfg))
    }

    /// Runs one request through `ex` and returns what it wrote to the client.
    fn answer(ex: &mut Exchange, cfg: &'static Config, req: &[u8]) -> Vec<u8> {
        let env = crate::proxy::tests::bare_env(cfg);
        let now = Instant::now();
        ex.begin(cfg, now);
        assert!(matches!(
            ex.poll_action(),
            super::super::Action::ReadHead { .. }
        ));
        ex.handle_input(req, &env, now);
        loop {
            match ex.poll_action() {
                super::super::Action::WriteClient => return ex.out().clone(),
                super::super::Action::Record { .. } => {}
                a => panic!("unexpected {a:?}"),
            }
        }
    }

    #[test]
    fn a_connection_built_from_spares_allocates_nothing_and_sees_nothing_of_the_last() {
        let cfg = cfg();
        let listen = &cfg.server.listen[0];
        let mut ex = Exchange::new(listen, "2001:db8::1".parse().unwrap());
        let first = answer(
            &mut ex,
            cfg,
            b"GET /a HTTP/1.1\r\nHost: one.example\r\n\r\n",
        );
        let spares = ex.take_spares();
        let out_at = spares.out.as_ptr();
        let out_cap = spares.out.capacity();
        assert!(spares.out.is_empty() && spares.headers.is_empty() && spares.target.is_empty());

        let mut next = Exchange::with_spares(listen, "192.0.2.7".parse().unwrap(), spares);
        assert_eq!(
            next.out.as_ptr(),
            out_at,
            "the head buffer is the one given back"
        );
        assert_eq!(next.out.capacity(), out_cap);
        assert_eq!(next.client.text, b"192.0.2.7");
        assert_eq!(next.client.peer_text, b"192.0.2.7");
        let second = answer(
            &mut next,
            cfg,
            b"GET /b HTTP/1.1\r\nHost: two.example\r\n\r\n",
        );
        // The same answer, byte for byte, as a connection built fresh gives.
        let mut fresh = Exchange::new(listen, "192.0.2.7".parse().unwrap());
        let expect = answer(
            &mut fresh,
            cfg,
            b"GET /b HTTP/1.1\r\nHost: two.example\r\n\r\n",
        );
        let strip = |v: &[u8]| {
            String::from_utf8_lossy(v)
                .lines()
                .filter(|l| !l.starts_with("Date:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&second), strip(&expect));
        assert!(!first.is_empty());
    }

    #[test]
    fn grown_buffers_are_not_kept() {
        let cfg = cfg();
        let listen = &cfg.server.listen[0];
        let mut ex = Exchange::new(listen, "192.0.2.1".parse().unwrap());
        ex.headers.reserve(1000);
        ex.out.reserve(1 << 20);
        let s = ex.take_spares();
        assert_eq!(s.headers.capacity(), 0);
        assert_eq!(s.out.capacity(), 0);
    }
}
