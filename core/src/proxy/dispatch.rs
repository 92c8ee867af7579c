//! Where a reverse-proxy request goes, decided from values: answered by the proxy (no route, a
//! fixed response, the redirect to https), or proxied to an upstream group by a route.

use crate::config::{Action as RouteAction, Config, Protocol};
use crate::http::answer::Fixed;

/// An answer the proxy makes without an upstream.
#[derive(Debug)]
pub(super) enum Local<'a> {
    Fixed(&'a Fixed),
    Error(u16, &'static str),
    /// A forward-proxy destination refused (`Denial`): its status and what the client is told.
    Denied(u16, String),
    /// Refused by a `[[rules]]` entry: its status and body.
    Ruled {
        status: u16,
        body: &'a str,
    },
    /// Over a rate limit: its status, its name, and when to come back (whole seconds).
    Limited {
        status: u16,
        name: &'a str,
        retry_after: u64,
    },
    /// `OPTIONS` with `Max-Forwards: 0`: what this proxy allows.
    Options,
    /// `TRACE` with `Max-Forwards: 0`: the request echoed.
    Trace,
    /// 301 to https, same host (port replaced) and target.
    Redirect,
    /// An ACME HTTP-01 validation: the key authorization, as `text/plain`.
    Challenge(String),
}

/// The verdict.
#[derive(Debug)]
pub(super) enum Dispatch<'c> {
    Answer(Local<'c>),
    /// To upstream `group` by route `route`, its `Host` replaced by `set_host`; `cached`: the
    /// route caches.
    Proxy {
        route: usize,
        group: usize,
        set_host: Option<&'c [u8]>,
        cached: bool,
    },
}

impl<'c> Dispatch<'c> {
    /// An ACME HTTP-01 validation (RFC 8555 §8.3) in progress for this path: answered on any
    /// reverse-proxy or redirecting listener before routes, rules and limits, as the CA must
    /// reach it whatever they say. A token not in progress goes on like any request (an
    /// origin may answer its own validations).
    pub(super) fn challenge(
        protocol: Protocol,
        method: crate::http::Method,
        path: &[u8],
        challenges: Option<&dyn crate::acme::Challenges>,
    ) -> Option<Local<'c>> {
        use crate::http::Method;
        if !matches!(protocol, Protocol::Http | Protocol::RedirectHttps)
            || !matches!(method, Method::Get | Method::Head)
        {
            return None;
        }
        let token = crate::acme::challenge_token(path)?;
        challenges?.http01(token).map(Local::Challenge)
    }

    /// For a request to `host` and normalised `path` on a listener of `protocol` (reverse or
    /// redirect). Also returns the route that matched, for the record.
    pub(super) fn decide(
        cfg: &'c Config,
        protocol: Protocol,
        host: &[u8],
        path: &[u8],
    ) -> (Self, Option<usize>) {
        if protocol == Protocol::RedirectHttps {
            let l = if host.is_empty() {
                Local::Error(400, "a Host header is needed to redirect to https")
            } else {
                Local::Redirect
            };
            return (Self::Answer(l), None);
        }
        let route = cfg.router.lookup(host, path).copied();
        let d = match route.map(|i| (i, &cfg.routes[i])) {
            None => Self::Answer(Local::Error(404, "no route for this host and path")),
            Some((_, r)) if matches!(r.action, RouteAction::Respond(_)) => {
                let RouteAction::Respond(f) = &r.action else {
                    unreachable!()
                };
                Self::Answer(Local::Fixed(f))
            }
            Some((i, r)) => {
                let RouteAction::Proxy { upstream, set_host } = &r.action else {
                    unreachable!()
                };
                Self::Proxy {
                    route: i,
                    group: *upstream,
                    set_host: set_host.as_deref(),
                    cached: r.cache.is_some(),
                }
            }
        };
        (d, route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_answers_and_redirects() {
        let cfg = Config::parse(
            "t.toml",
            "[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nhost = \"a.test\"\npath = \"/api\"\nupstream = \"app\"\nset_host = \"inner\"\n[[routes]]\nhost = \"a.test\"\nrespond = { status = 204 }\n",
        )
        .unwrap();
        let d = |host: &str, path: &str| {
            Dispatch::decide(&cfg, Protocol::Http, host.as_bytes(), path.as_bytes())
        };
        match d("a.test", "/api/x") {
            (
                Dispatch::Proxy {
                    route: 0,
                    group: 0,
                    set_host: Some(b"inner"),
                    cached: false,
                },
                Some(0),
            ) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d("a.test", "/"),
            (Dispatch::Answer(Local::Fixed(f)), Some(1)) if f.status == 204
        ));
        assert!(matches!(
            d("b.test", "/"),
            (Dispatch::Answer(Local::Error(404, _)), None)
        ));
        let r = |host: &str| Dispatch::decide(&cfg, Protocol::RedirectHttps, host.as_bytes(), b"/");
        assert!(matches!(
            r("a.test"),
            (Dispatch::Answer(Local::Redirect), None)
        ));
        assert!(matches!(
            r(""),
            (Dispatch::Answer(Local::Error(400, _)), None)
        ));
    }
}
