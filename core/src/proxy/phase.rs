//! Where an exchange stands: one enum whose variants carry what that step needs, so no
//! combination of flags can describe a step that does not exist.

use super::action::Finish;

/// The step an exchange is at; `poll_action` turns it into the action io performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for (the rest of) a request head. `began`: a byte of it has arrived;
    /// `read_first`: everything buffered was handed over, so io reads before calling again.
    Head {
        began: bool,
        read_first: bool,
    },
    /// Discarding the body of a request answered locally, then writing the answer; then the
    /// exchange ends so.
    Discard(Finish),
    /// Writing to the client; what comes next depends on what it is.
    Write(Written),
    /// The client's password is being checked off the worker.
    Verify,
    /// Reading a request body whole (until the input holds `need` bytes) before an upstream
    /// connection is taken; the head is then handed over again, with its body.
    Buffer {
        need: usize,
    },
    /// A forward proxy's destination name being resolved.
    Resolve,
    /// Waiting for another request's fetch of the same cache key.
    WaitFill,
    /// Holding a connection a `tarpit` rule matched, until its timer; then it closes with no
    /// answer.
    Tarpit,
    /// Holding a request a rate limit delays (within its burst), until its timer; then the
    /// head is handed over again and goes on.
    Delayed,
    Pick,
    Connect(Conn),
    SendRequest,
    SendBody,
    /// Reading the response head; `read_first` as for `Head`.
    ReadResponse {
        read_first: bool,
    },
    RelayResponse,
    Tunnel,
    Done(Finish),
}

/// Which connection an attempt connects with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Conn {
    /// An idle pooled one when there is one.
    Pooled,
    /// A new one (a tunnel, a retry after a pooled one was found closed, the next address).
    Fresh,
}

/// What is being written to the client, so `handle_client_written` knows what comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    /// An answer of the proxy's own, complete; then the exchange ends so.
    Answer(Finish),
    Continue,
    Interim,
    ResponseHead,
    /// `200 Connection established` or a `101`: the tunnel follows.
    TunnelOpen,
    /// A body fetched whole ahead of the client (and stored), after its head.
    FetchedBody,
}
