//! The forward proxy's steps of the exchange: its access rules, loops back into the proxy, and
//! what an anonymity level shows. The rules themselves are in [`crate::forward`].

use std::net::IpAddr;
use std::time::Instant;

use super::{Env, Exchange};
use crate::config::ListenKind;

impl Exchange {
    /// Evaluates `[[forward.rules]]` for this request; false when it was denied (and answered
    /// with 403 naming the rule). Rules that need the destination's addresses are left for
    /// after resolution (`acl_pending`).
    /// `None` when denied; else the address blocks of the deciding rule, when it decided on
    /// addresses (only those may be dialled).
    pub(super) fn check_rules(
        &mut self,
        dest: Option<&[IpAddr]>,
        env: &Env<'_>,
        now: Instant,
    ) -> Option<Option<Vec<crate::forward::acl::Cidr>>> {
        use crate::forward::acl::{evaluate, Decision, Request, Verdict};
        let r = Request {
            client: self.client,
            host: &self.dest_host,
            port: self.req.dest_port,
            method: self.method_text.as_bytes(),
            user: self.record.user.as_deref(),
            dest,
        };
        let rules = &env.cfg.forward.rules;
        match evaluate(rules, &r) {
            Decision::NeedAddresses => {
                self.req.acl_pending = true;
                Some(None)
            }
            Decision::Decided(Verdict::Allow, rule) => {
                self.req.acl_pending = false;
                let blocks = rule
                    .map(|i| &rules[i].dest_ips)
                    .filter(|d| !d.is_empty() && dest.is_some())
                    .cloned();
                Some(blocks)
            }
            Decision::Decided(Verdict::Deny, rule) => {
                let why = match rule {
                    Some(i) => format!("forward.rules[{i}]"),
                    None if rules.is_empty() => {
                        "this proxy, which has no access rules and serves local clients only"
                            .to_string()
                    }
                    None => "forward.rules (no rule allows it)".to_string(),
                };
                let detail = format!(
                    "{}:{} is denied by {why}",
                    self.dest_host, self.req.dest_port
                );
                self.local_error(403, &detail, env, now);
                None
            }
        }
    }

    /// Whether responses carry our `Via`: not from an elite forward proxy, which shows neither
    /// itself nor the client, in either direction.
    pub(super) fn shows_via(&self, env: &Env<'_>) -> bool {
        self.kind != ListenKind::Forward || env.cfg.forward.anonymity.policy().via
    }

    /// 403 for a request whose destination is this proxy itself.
    pub(super) fn loop_denied(&mut self, env: &Env<'_>, now: Instant) {
        let detail = format!(
            "{}:{} is this proxy itself (the request would loop)",
            self.dest_host, self.req.dest_port
        );
        self.local_error(403, &detail, env, now);
    }
}

/// Every `%` is followed by two hex digits.
pub(super) fn well_formed_escapes(t: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'%', &t[i..]) {
        let at = i + p;
        match t.get(at + 1..at + 3) {
            Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i = at + 3,
            _ => return false,
        }
    }
    true
}
