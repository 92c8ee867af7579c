//! The route's edits of one request (`crate::edit`): the target that goes upstream (the path
//! rewritten, or the original), and the response field lines, rendered when the request is
//! routed (their variables are the request's). The exchange asks for both; the rules live in
//! the route.

use crate::config::Route;
use crate::edit::Vars;

#[derive(Debug, Default)]
pub(super) struct RouteEdits {
    /// The rewritten target, when the route rewrites paths.
    target: Option<Vec<u8>>,
    /// The response fields the route sets and adds, rendered (each line ending in CRLF).
    response: Vec<u8>,
    /// Kept for the next request (its capacity), cleared in between.
    spare: Vec<u8>,
    /// `scheme://host[:port]` as the client asked, for Location rewriting.
    origin: Vec<u8>,
}

impl RouteEdits {
    /// Forgets the last request's edits.
    pub(super) fn clear(&mut self) {
        if let Some(mut t) = self.target.take() {
            t.clear();
            self.spare = t;
        }
        self.response.clear();
        self.origin.clear();
    }

    /// Decides for a request to `route` whose normalised target is `target`, asked of
    /// `authority` (the client's Host, port included).
    pub(super) fn prepare(
        &mut self,
        route: &Route,
        target: &[u8],
        vars: &Vars<'_>,
        authority: &[u8],
    ) {
        self.clear();
        if route.rewrite_location {
            self.origin.extend_from_slice(vars.scheme);
            self.origin.extend_from_slice(b"://");
            self.origin
                .extend(authority.iter().filter(|&&b| b.is_ascii_graphic()));
        }
        if !route.path_rewrite.is_empty() && target != b"*" {
            let mut t = std::mem::take(&mut self.spare);
            route.path_rewrite.apply(target, &mut t);
            self.target = Some(t);
        }
        route.response_headers.write(vars, &mut self.response);
    }

    /// The target to send upstream.
    pub(super) fn target<'a>(&'a self, original: &'a [u8]) -> &'a [u8] {
        self.target.as_deref().unwrap_or(original)
    }

    /// The client-facing origin (empty when the route does not rewrite locations).
    pub(super) fn origin(&self) -> &[u8] {
        &self.origin
    }

    /// The response field lines to add.
    pub(super) fn response_lines(&self) -> &[u8] {
        &self.response
    }
}
