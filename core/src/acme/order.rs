//! One certificate order (RFC 8555 §7), as a state machine that asks for requests and takes
//! the CA's replies.

use std::time::Duration;

use serde_json::{json, Value};

use super::{b64, Reply};

/// The account key, held by io: its public half as a JWK and its signatures (ES256).
pub trait Signer {
    /// The public key as a JSON Web Key (RFC 7517), e.g. `{"crv":"P-256","kty":"EC","x":…,"y":…}`
    /// with its members in lexicographic order (the form its thumbprint is taken of).
    fn jwk(&self) -> &str;
    /// The JWS signature of `input` (RFC 7515 §5.1; for ES256 the 64-byte `r || s`).
    fn sign(&self, input: &[u8]) -> Vec<u8>;
}

/// How the CA is shown control of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A plain HTTP request to port 80 for `/.well-known/acme-challenge/TOKEN`.
    Http01,
    /// A TLS handshake to port 443 offering only `acme-tls/1` (RFC 8737).
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Http01, Self::TlsAlpn01]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// A challenge answer io publishes to the listeners until the order ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub kind: ChallengeKind,
    /// The name being validated.
    pub name: String,
    pub token: String,
    /// `token.thumbprint`: the HTTP-01 response body, and what TLS-ALPN-01 certifies.
    pub key_authorization: String,
}

/// One HTTP request to the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: crate::http::Method,
    pub url: String,
    /// A JWS (`application/jose+json`) for POST.
    pub body: Option<String>,
}

/// What io does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this and give the reply to [`Order::handle`] (or a failure to
    /// [`Order::handle_failure`]).
    Send(Request),
    /// Make this answer reachable, then call [`Order::poll`] again.
    Publish(Challenge),
    /// Wait this long, then call [`Order::poll`] again.
    Wait(Duration),
    /// The certificate chain, PEM.
    Done(String),
    /// The order failed: why, in words (the CA's problem document when it sent one).
    Failed(String),
}

/// Polls of one authorization or of the order before giving up.
const MAX_POLLS: u32 = 120;
/// Nonces the CA may reject in a row (`badNonce`) before giving up.
const MAX_BAD_NONCES: u32 = 5;
/// Between polls when the CA gives no `Retry-After`; and the most a `Retry-After` is waited.
const POLL: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Directory,
    Account,
    NewOrder,
    /// POST-as-GET of `authorizations[i]`.
    Authorization(usize),
    Publish(usize, Challenge, String),
    /// POST `{}` to the challenge URL: the CA may look now.
    Respond(usize, String),
    Finalize,
    PollOrder,
    Download(String),
    Wait(Duration, Box<State>),
    Done,
}

/// A request whose reply is awaited. A `badNonce` leaves the state as it was, so the next
/// [`Order::poll`] builds the same request again with the fresh nonce.
#[derive(Clone, Copy, Debug)]
enum Sent {
    Nonce,
    Request,
}

/// One order for a certificate covering `names`.
pub struct Order {
    directory_url: String,
    names: Vec<String>,
    contact: Vec<String>,
    kinds: Vec<ChallengeKind>,
    csr: Vec<u8>,
    replaces: Option<String>,
    thumbprint: String,
    dir: Option<Directory>,
    nonce: Option<String>,
    kid: Option<String>,
    order_url: Option<String>,
    authorizations: Vec<String>,
    finalize: Option<String>,
    state: State,
    sent: Option<Sent>,
    bad_nonces: u32,
    polls: u32,
    failed: Option<String>,
    done: Option<String>,
}

impl Order {
    /// An order at the CA whose directory is `directory_url`, for `names`, proving control
    /// with the first of `kinds` each authorization offers; `csr` (DER) holds the new key;
    /// `replaces` is the ARI id of the certificate it renews. `jwk` is the account key's.
    pub fn new(
        directory_url: &str,
        names: Vec<String>,
        contact: Vec<String>,
        kinds: Vec<ChallengeKind>,
        csr: Vec<u8>,
        replaces: Option<String>,
        jwk: &str,
    ) -> Self {
        Self {
            directory_url: directory_url.to_string(),
            names,
            contact,
            kinds,
            csr,
            replaces,
            thumbprint: thumbprint(jwk),
            dir: None,
            nonce: None,
            kid: None,
            order_url: None,
            authorizations: Vec::new(),
            finalize: None,
            state: State::Directory,
            sent: None,
            bad_nonces: 0,
            polls: 0,
            failed: None,
            done: None,
        }
    }

    /// The account's URL once the CA has given it.
    pub fn account(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// What to do next.
    pub fn poll(&mut self, signer: &dyn Signer) -> Step {
        if let Some(why) = &self.failed {
            return Step::Failed(why.clone());
        }
        if let Some(pem) = self.done.take() {
            return Step::Done(pem);
        }
        let (url, payload, jwk) = match self.state.clone() {
            State::Done => return Step::Failed("the order is over".into()),
            State::Directory => return self.get(self.directory_url.clone()),
            State::Wait(d, next) => {
                self.state = *next;
                return Step::Wait(d);
            }
            State::Publish(i, c, url) => {
                self.state = State::Respond(i, url);
                return Step::Publish(c);
            }
            State::Account => {
                let mut p = json!({ "termsOfServiceAgreed": true });
                if !self.contact.is_empty() {
                    p["contact"] = json!(self.contact);
                }
                (self.directory().new_account.clone(), p.to_string(), true)
            }
            State::NewOrder => {
                let ids: Vec<Value> = self
                    .names
                    .iter()
                    .map(|n| json!({ "type": "dns", "value": n }))
                    .collect();
                let mut p = json!({ "identifiers": ids });
                if let Some(r) = &self.replaces {
                    p["replaces"] = json!(r);
                }
                (self.directory().new_order.clone(), p.to_string(), false)
            }
            State::Authorization(i) => (self.authorizations[i].clone(), String::new(), false),
            State::Respond(_, url) => (url, "{}".to_string(), false),
            State::Finalize => {
                let p = json!({ "csr": b64(&self.csr) });
                let url = self.finalize.clone().unwrap_or_default();
                (url, p.to_string(), false)
            }
            State::PollOrder => (
                self.order_url.clone().unwrap_or_default(),
                String::new(),
                false,
            ),
            State::Download(url) => (url, String::new(), false),
        };
        let Some(nonce) = self.nonce.take() else {
            self.sent = Some(Sent::Nonce);
            return Step::Send(Request {
                method: crate::http::Method::Head,
                url: self.directory().new_nonce.clone(),
                body: None,
            });
        };
        let body = self.jws(signer, &url, &payload, jwk, &nonce);
        self.sent = Some(Sent::Request);
        Step::Send(Request {
            method: crate::http::Method::Post,
            url,
            body: Some(body),
        })
    }

    fn get(&mut self, url: String) -> Step {
        self.sent = Some(Sent::Request);
        Step::Send(Request {
            method: crate::http::Method::Get,
            url,
            body: None,
        })
    }

    fn directory(&self) -> &Directory {
        static NONE: Directory = Directory {
            new_nonce: String::new(),
            new_account: String::new(),
            new_order: String::new(),
        };
        self.dir.as_ref().unwrap_or(&NONE)
    }

    /// The flattened JWS of RFC 8555 §6.2: the account key itself for a new account, its URL
    /// (`kid`) after.
    fn jws(&self, signer: &dyn Signer, url: &str, payload: &str, jwk: bool, nonce: &str) -> String {
        let mut protected = json!({ "alg": "ES256", "nonce": nonce, "url": url });
        if jwk {
            protected["jwk"] = serde_json::from_str(signer.jwk()).unwrap_or(Value::Null);
        } else {
            protected["kid"] = json!(self.kid.clone().unwrap_or_default());
        }
        let protected = b64(protected.to_string());
        let payload = b64(payload);
        let signature = b64(signer.sign(format!("{protected}.{payload}").as_bytes()));
        json!({ "protected": protected, "payload": payload, "signature": signature }).to_string()
    }

    /// A request failed before any reply (connecting, TLS, a timeout): the order fails.
    pub fn handle_failure(&mut self, why: String) {
        self.failed = Some(why);
    }

    /// The CA's reply to the request [`poll`](Self::poll) asked for.
    pub fn handle(&mut self, reply: Reply) {
        if reply.nonce.is_some() {
            self.nonce = reply.nonce.clone();
        }
        let Some(sent) = self.sent.take() else {
            return;
        };
        if matches!(sent, Sent::Nonce) {
            if self.nonce.is_none() {
                self.fail(format!(
                    "the CA's newNonce gave no nonce ({})",
                    reply.status
                ));
            }
            return;
        }
        if reply.status >= 400 {
            return self.problem(&reply);
        }
        self.bad_nonces = 0;
        let body: Value = if reply.body.is_empty() || !reply.body.starts_with(b"{") {
            Value::Null
        } else {
            match serde_json::from_slice(&reply.body) {
                Ok(v) => v,
                Err(e) => return self.fail(format!("the CA sent invalid JSON: {e}")),
            }
        };
        match self.state.clone() {
            State::Directory => {
                let url = |k: &str| body[k].as_str().map(str::to_string);
                match (url("newNonce"), url("newAccount"), url("newOrder")) {
                    (Some(new_nonce), Some(new_account), Some(new_order)) => {
                        self.dir = Some(Directory {
                            new_nonce,
                            new_account,
                            new_order,
                        });
                        self.state = State::Account;
                    }
                    _ => self.fail(format!(
                        "{} is not an ACME directory (no newNonce, newAccount, newOrder)",
                        self.directory_url
                    )),
                }
            }
            State::Account => match (&reply.location, body["status"].as_str()) {
                (Some(kid), Some("valid") | None) => {
                    self.kid = Some(kid.clone());
                    self.state = State::NewOrder;
                }
                (None, _) => self.fail("the CA gave the account no URL (Location)".into()),
                (_, Some(s)) => self.fail(format!("the account is {s}")),
            },
            State::NewOrder => {
                let Some(url) = reply.location.clone() else {
                    return self.fail("the CA gave the order no URL (Location)".into());
                };
                self.order_url = Some(url);
                self.authorizations = body["authorizations"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                self.finalize = body["finalize"].as_str().map(str::to_string);
                if self.finalize.is_none() {
                    return self.fail("the CA's order has no finalize URL".into());
                }
                self.next_authorization(0);
            }
            State::Authorization(i) => self.authorization(i, &body, &reply),
            State::Respond(i, _) => {
                // The CA looks now; its verdict is read from the authorization.
                self.polls = 0;
                self.state = State::Authorization(i);
            }
            State::Finalize | State::PollOrder => self.order_status(&body, &reply),
            State::Download(_) => match String::from_utf8(reply.body) {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {
                    self.state = State::Done;
                    self.done = Some(pem);
                }
                _ => self.fail("the CA's certificate is not a PEM chain".into()),
            },
            State::Publish(..) | State::Wait(..) | State::Done => {}
        }
    }

    /// Reads authorization `i` onwards, or finalizes when none is left.
    fn next_authorization(&mut self, i: usize) {
        self.polls = 0;
        self.state = if i < self.authorizations.len() {
            State::Authorization(i)
        } else {
            State::Finalize
        };
    }

    fn authorization(&mut self, i: usize, body: &Value, reply: &Reply) {
        let name = body["identifier"]["value"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        match body["status"].as_str() {
            Some("valid") => self.next_authorization(i + 1),
            Some("pending") => {
                let challenges = body["challenges"].as_array().cloned().unwrap_or_default();
                let offered = |kind: ChallengeKind| {
                    challenges
                        .iter()
                        .find(|c| c["type"].as_str() == Some(kind.name()))
                };
                let chosen = self.kinds.iter().find_map(|&k| offered(k).map(|c| (k, c)));
                let Some((kind, c)) = chosen else {
                    let offered: Vec<&str> = challenges
                        .iter()
                        .filter_map(|c| c["type"].as_str())
                        .collect();
                    return self.fail(format!(
                        "{name}: the CA offers {offered:?}, none of which ringway answers here"
                    ));
                };
                let (Some(token), Some(url)) = (c["token"].as_str(), c["url"].as_str()) else {
                    return self.fail(format!("{name}: a challenge without token or URL"));
                };
                match c["status"].as_str() {
                    // Already told to look (an earlier poll): wait for the verdict.
                    Some("processing") => self.wait(reply, State::Authorization(i)),
                    _ if super::challenge_token(
                        format!("/.well-known/acme-challenge/{token}").as_bytes(),
                    )
                    .is_none() =>
                    {
                        self.fail(format!("{name}: the CA's token {token:?} is not base64url"))
                    }
                    _ => {
                        let c = Challenge {
                            kind,
                            name: name.clone(),
                            token: token.to_string(),
                            key_authorization: format!("{token}.{}", self.thumbprint),
                        };
                        self.state = State::Publish(i, c, url.to_string());
                    }
                }
            }
            Some("processing") | None => self.wait(reply, State::Authorization(i)),
            Some(s) => {
                let why = body["challenges"]
                    .as_array()
                    .and_then(|cs| cs.iter().find_map(|c| c["error"]["detail"].as_str()))
                    .unwrap_or("no detail");
                self.fail(format!("{name}: the authorization is {s}: {why}"))
            }
        }
    }

    fn order_status(&mut self, body: &Value, reply: &Reply) {
        match body["status"].as_str() {
            Some("valid") => match body["certificate"].as_str() {
                Some(url) => self.state = State::Download(url.to_string()),
                None => self.fail("the CA's valid order has no certificate URL".into()),
            },
            Some("processing") => self.wait(reply, State::PollOrder),
            // Finalize answered before the CA saw the authorizations valid: finalize again.
            Some("ready") if self.state == State::PollOrder => self.state = State::Finalize,
            Some("ready") | Some("pending") => self.wait(reply, State::PollOrder),
            Some(s) => {
                let why = body["error"]["detail"].as_str().unwrap_or("no detail");
                self.fail(format!("the order is {s}: {why}"))
            }
            None => self.fail("the CA's order has no status".into()),
        }
    }

    /// Polls `next` after the CA's `Retry-After` (or a second), a bounded number of times.
    fn wait(&mut self, reply: &Reply, next: State) {
        self.polls += 1;
        if self.polls > MAX_POLLS {
            return self.fail(format!("the CA did not decide after {MAX_POLLS} polls"));
        }
        let d = reply.retry_after.unwrap_or(POLL).clamp(POLL, MAX_WAIT);
        self.state = State::Wait(d, Box::new(next));
    }

    /// An error reply: a rejected nonce is retried with the fresh one it carries; a `replaces`
    /// the CA will not take is dropped; anything else fails the order with the CA's words.
    fn problem(&mut self, reply: &Reply) {
        let p: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let kind = p["type"].as_str().unwrap_or("");
        let detail = p["detail"].as_str().unwrap_or("");
        if kind.ends_with(":badNonce") && self.bad_nonces < MAX_BAD_NONCES {
            self.bad_nonces += 1;
            return;
        }
        if self.state == State::NewOrder
            && self.replaces.is_some()
            && (kind.ends_with(":alreadyReplaced") || kind.ends_with(":malformed"))
        {
            self.replaces = None;
            return;
        }
        let retry = match reply.retry_after {
            Some(d) => format!(" (retry after {} s)", d.as_secs()),
            None => String::new(),
        };
        let kind = kind.rsplit(':').next().unwrap_or(kind);
        self.fail(format!(
            "the CA answered {} {kind}: {detail}{retry}",
            reply.status
        ))
    }

    fn fail(&mut self, why: String) {
        self.failed = Some(why);
    }
}

/// The JWK thumbprint (RFC 7638): SHA-256 of the key's required members, in lexicographic
/// order without spaces, base64url.
pub(super) fn thumbprint(jwk: &str) -> String {
    use sha2::Digest;
    let v: Value = serde_json::from_str(jwk).unwrap_or(Value::Null);
    let m = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let canonical = match v["kty"].as_str() {
        Some("RSA") => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, m("e"), m("n")),
        _ => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            m("crv"),
            m("x"),
            m("y")
        ),
    };
    b64(sha2::Sha256::digest(canonical.as_bytes()))
}
