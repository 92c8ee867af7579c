//! ACME carried out: a thread of its own (`ringway-acme`) runs the orders core decides
//! (`ringway_core::acme`), with a blocking HTTPS client, and publishes what the listeners
//! need: the certificates (by name), and the answers of validations in progress (HTTP-01
//! tokens for the exchange, TLS-ALPN-01 certificates for the handshake).
//!
//! Publication is one `ArcSwap<Published>`: the thread builds a new value and swaps it in; a
//! handshake loads it (a few atomic operations, no lock) only on listeners of a configuration
//! with `[acme]`, and a request only when its path is an HTTP-01 validation. Nothing on the
//! workers waits for the network.
//!
//! Storage (`acme.storage`, 0700): `accounts/<CA>/account.key` (the account's P-256 key) and
//! `certs/<name>.crt` / `certs/<name>.key` (0600), written to a temporary file and renamed, so
//! that a restart finds either the old pair or the new one.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use ringway_core::acme::renew::{self, Backoff, Validity, Window};
use ringway_core::acme::{self as decide, Challenge, ChallengeKind, Order, Reply, Request, Step};
use ringway_core::config::Acme as Settings;
use ringway_core::http::Method;
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

/// Connecting to the CA, and each read or write after.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a held certificate's ARI window is asked again.
const ARI_RECHECK: Duration = Duration::from_secs(6 * 3600);

/// What the listeners read.
#[derive(Clone, Default)]
struct Published {
    certs: HashMap<String, Arc<CertifiedKey>>,
    /// For handshakes without SNI (or a name not managed): the first domain's certificate.
    default: Option<Arc<CertifiedKey>>,
    alpn: HashMap<String, Arc<CertifiedKey>>,
    tokens: HashMap<String, String>,
    /// Names a handshake may have ordered.
    on_demand: Option<Arc<decide::demand::OnDemand>>,
    /// Each served certificate's expiry (Unix seconds), for the metrics.
    expiry: HashMap<String, u64>,
}

/// ACME's state shared by the configuration generations (kept across reloads in `tls::Keep`).
pub(crate) struct Acme {
    published: ArcSwap<Published>,
    control: Mutex<Control>,
    wake: Condvar,
    /// Names handshakes asked for on demand, for the thread (at most `MAX_WAITING`).
    waiting: Mutex<Vec<String>>,
    /// Orders that gave a certificate, and that failed (every CA tried).
    pub(crate) orders: [std::sync::atomic::AtomicU64; 2],
}

#[derive(Default)]
struct Control {
    wanted: Option<Settings>,
    /// Bumped by every [`Acme::want`]: the thread re-reads `wanted`.
    generation: u64,
    /// Set by [`Acme::start`] (a running server, not `ringway check`): the thread may run.
    shutdown: Option<Arc<AtomicBool>>,
    running: bool,
}

impl decide::Challenges for Acme {
    fn http01(&self, token: &str) -> Option<String> {
        self.published.load().tokens.get(token).cloned()
    }
}

impl Acme {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            published: ArcSwap::from_pointee(Published::default()),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            waiting: Mutex::new(Vec::new()),
            orders: Default::default(),
        })
    }

    /// The served certificates' names and expiry times, for the metrics.
    pub(crate) fn expiries(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .published
            .load()
            .expiry
            .iter()
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        v.sort();
        v
    }

    /// The configuration's `[acme]` (at start and on every reload).
    pub(crate) fn want(self: &Arc<Self>, settings: Option<&Settings>) {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if c.wanted.as_ref() == settings {
            return;
        }
        c.wanted = settings.cloned();
        c.generation += 1;
        self.spawn_if_needed(&mut c);
        self.wake.notify_all();
    }

    /// The server runs: orders may start (now, or when a reload adds `[acme]`).
    pub(crate) fn start(self: &Arc<Self>, shutdown: Arc<AtomicBool>) {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        c.shutdown = Some(shutdown);
        self.spawn_if_needed(&mut c);
    }

    fn spawn_if_needed(self: &Arc<Self>, c: &mut Control) {
        let (Some(shutdown), Some(_), false) = (&c.shutdown, &c.wanted, c.running) else {
            return;
        };
        let (me, shutdown) = (self.clone(), shutdown.clone());
        match std::thread::Builder::new()
            .name("ringway-acme".into())
            .spawn(move || Manager::new(me, shutdown).run())
        {
            Ok(_) => c.running = true,
            Err(e) => log::error!("acme: cannot start its thread: {e}"),
        }
    }

    /// The certificate for a handshake: TLS-ALPN-01 validations get theirs (and only those);
    /// others the managed certificate of their SNI name, or `None` to let the listener's own
    /// certificates decide. `fallback` (no certificate of the listener's own fits): a name
    /// allowed on demand is ordered, any other gets the first managed certificate.
    pub(crate) fn certificate(
        &self,
        sni: Option<&str>,
        validation: bool,
        fallback: bool,
    ) -> Option<Arc<CertifiedKey>> {
        let p = self.published.load();
        let name = sni.map(str::to_ascii_lowercase);
        if validation {
            return p.alpn.get(name.as_deref()?).cloned();
        }
        if let Some(c) = name.as_ref().and_then(|n| p.certs.get(n)) {
            return Some(c.clone());
        }
        // A name that may be ordered on demand (and that no certificate of the listener's own
        // holds): asked for, and this handshake fails (no certificate for it yet); the next
        // after the order is served.
        let ask = fallback.then_some(()).and(p.on_demand.as_ref()).zip(sni);
        if let Some(name) = ask.and_then(|(o, s)| o.allows(s)) {
            self.demand(name);
            return None;
        }
        fallback.then(|| p.default.clone()).flatten()
    }

    /// Hands `name` to the thread (the only lock a handshake may take, and only for a name
    /// `on_demand` allows that has no certificate yet).
    fn demand(&self, name: String) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() < decide::demand::MAX_WAITING && !w.contains(&name) {
            w.push(name);
            self.wake.notify_all();
        }
    }

    fn update(&self, f: impl Fn(&mut Published)) {
        self.published.rcu(|p| {
            let mut next = Published::clone(p);
            f(&mut next);
            next
        });
    }
}

/// One managed name.
struct Slot {
    held: Option<Held>,
    /// When to act next: renew (or first order), or ask ARI again.
    next: SystemTime,
    backoff: Backoff,
}

struct Held {
    validity: Validity,
    /// The ARI id, when the certificate carries an Authority Key Identifier.
    cert_id: Option<String>,
    window: Option<Window>,
    /// When ARI was last asked.
    asked: Option<SystemTime>,
}

struct Manager {
    acme: Arc<Acme>,
    shutdown: Arc<AtomicBool>,
    slots: HashMap<String, Slot>,
    /// Names ordered (or found stored) on demand, and the orders of the last hour.
    demanded: std::collections::HashSet<String>,
    budget: decide::demand::Budget,
}

impl Manager {
    fn new(acme: Arc<Acme>, shutdown: Arc<AtomicBool>) -> Self {
        Self {
            acme,
            shutdown,
            slots: HashMap::new(),
            demanded: Default::default(),
            budget: Default::default(),
        }
    }

    fn run(mut self) {
        let mut seen = u64::MAX;
        let mut settings: Option<Settings> = None;
        while !self.shutdown.load(Ordering::Relaxed) {
            let changed = {
                let c = self.acme.control.lock().unwrap_or_else(|p| p.into_inner());
                let changed = c.generation != seen;
                if changed {
                    seen = c.generation;
                    settings = c.wanted.clone();
                }
                changed
            };
            if changed {
                self.reconcile(settings.as_ref());
            }
            let Some(s) = &settings else {
                self.acme
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                self.wait(Duration::from_secs(1));
                continue;
            };
            self.take_demands(s);
            let now = SystemTime::now();
            let due: Vec<String> = self
                .slots
                .iter()
                .filter(|(_, slot)| slot.next <= now)
                .map(|(n, _)| n.clone())
                .collect();
            for name in due {
                if self.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                self.act(s, &name);
            }
            let next = self.slots.values().map(|s| s.next).min();
            let wait = next
                .and_then(|n| n.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO);
            self.wait(wait.min(Duration::from_secs(1)));
        }
    }

    fn wait(&self, d: Duration) {
        if d.is_zero() || !self.acme.waiting.lock().map_or(true, |w| w.is_empty()) {
            return;
        }
        let c = self.acme.control.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.acme.wake.wait_timeout(c, d);
    }

    /// Names handshakes asked for: a stored certificate is served at once; otherwise an order
    /// starts if the hour's budget allows.
    fn take_demands(&mut self, s: &Settings) {
        let names =
            std::mem::take(&mut *self.acme.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(od) = &s.on_demand else { return };
        for name in names {
            if self.slots.contains_key(&name) || od.allows(&name).is_none() {
                continue;
            }
            let now = SystemTime::now();
            let stored = load_stored(&s.storage, &name).ok().flatten();
            if stored.is_none() && !self.budget.take(unix(now), od.per_hour) {
                log::warn!(
                    "acme: {name}: not ordered on demand: {} orders in the last hour already (on_demand_per_hour)",
                    od.per_hour
                );
                continue;
            }
            let mut slot = Slot {
                held: None,
                next: now,
                backoff: Backoff::new(s.retry, ringway_core::config::MAX_ACME_RETRY),
            };
            match stored {
                Some((ck, held)) => {
                    log::info!("acme: {name}: on demand, using the stored certificate");
                    self.publish(&name, ck, &held, s);
                    slot.next = renew_time(&held, now);
                    slot.held = Some(held);
                }
                None => log::info!("acme: {name}: ordering on demand"),
            }
            self.demanded.insert(name.clone());
            self.slots.insert(name, slot);
        }
    }

    /// Names added get a slot (their stored certificate, if any, published at once); names
    /// removed are withdrawn.
    fn reconcile(&mut self, s: Option<&Settings>) {
        let wanted: Vec<String> = s.map(|s| s.domains.clone()).unwrap_or_default();
        // Names ordered on demand stay while the list still allows them.
        let od = s.and_then(|s| s.on_demand.clone());
        self.demanded
            .retain(|n| od.as_ref().is_some_and(|o| o.allows(n).is_some()));
        let demanded = self.demanded.clone();
        self.slots
            .retain(|n, _| wanted.contains(n) || demanded.contains(n));
        let now = SystemTime::now();
        for name in &wanted {
            if self.slots.contains_key(name) {
                continue;
            }
            let s = s.expect("names come from settings");
            let mut slot = Slot {
                held: None,
                next: now,
                backoff: Backoff::new(s.retry, ringway_core::config::MAX_ACME_RETRY),
            };
            match load_stored(&s.storage, name) {
                Ok(Some((ck, held))) => {
                    log::info!(
                        "acme: {name}: using the stored certificate (valid until {})",
                        ringway_core::http::date::utc_text(held.validity.not_after)
                    );
                    self.publish(name, ck, &held, s);
                    slot.next = renew_time(&held, now);
                    slot.held = Some(held);
                }
                Ok(None) => {}
                Err(e) => log::warn!("acme: {name}: the stored certificate is not usable: {e}"),
            }
            self.slots.insert(name.clone(), slot);
        }
        let keep: Vec<String> = wanted.clone();
        let first = wanted.first().cloned();
        let od = od.map(Arc::new);
        self.acme.update(|p| {
            p.certs
                .retain(|n, _| keep.contains(n) || demanded.contains(n));
            p.expiry
                .retain(|n, _| keep.contains(n) || demanded.contains(n));
            p.default = first.as_ref().and_then(|f| p.certs.get(f).cloned());
            p.on_demand = od.clone();
        });
    }

    fn publish(&self, name: &str, ck: Arc<CertifiedKey>, held: &Held, s: &Settings) {
        let first = s.domains.first().cloned();
        let expiry = held.validity.not_after;
        self.acme.update(|p| {
            p.certs.insert(name.to_string(), ck.clone());
            p.expiry.insert(name.to_string(), expiry);
            p.default = first.as_ref().and_then(|f| p.certs.get(f).cloned());
        });
    }

    /// The slot of `name` is due: ask ARI again, or order a certificate.
    fn act(&mut self, s: &Settings, name: &str) {
        let now = SystemTime::now();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        // A held certificate not yet due: ARI is asked (its window may bring renewal forward).
        if let Some(held) = &mut slot.held {
            if unix(now) < renew_at(held) {
                if let Some(id) = held.cert_id.clone() {
                    held.window = ari_window(s, &id);
                    held.asked = Some(now);
                }
                if unix(now) < renew_at(held) {
                    slot.next = renew_time(held, now);
                    return;
                }
            }
        }
        let replaces = slot.held.as_ref().and_then(|h| h.cert_id.clone());
        match self.obtain(s, name, replaces) {
            Ok((ck, held, ca)) => {
                log::info!(
                    "acme: {name}: certificate obtained from {ca} (valid until {})",
                    ringway_core::http::date::utc_text(held.validity.not_after)
                );
                self.publish(name, ck, &held, s);
                self.acme.orders[0].fetch_add(1, Ordering::Relaxed);
                let slot = self.slots.get_mut(name).expect("checked above");
                slot.backoff.succeeded();
                slot.next = renew_time(&held, SystemTime::now());
                slot.held = Some(held);
            }
            Err(e) => {
                self.acme.orders[1].fetch_add(1, Ordering::Relaxed);
                let slot = self.slots.get_mut(name).expect("checked above");
                let wait = slot.backoff.failed();
                log::warn!(
                    "acme: {name}: no certificate: {e}; trying again in {} s{}",
                    wait.as_secs(),
                    if slot.held.is_some() {
                        " (the current certificate is served meanwhile)"
                    } else {
                        ""
                    }
                );
                slot.next = SystemTime::now() + wait;
            }
        }
    }

    /// One order per CA in turn until one gives a certificate; it is stored, then returned.
    fn obtain(
        &self,
        s: &Settings,
        name: &str,
        replaces: Option<String>,
    ) -> Result<(Arc<CertifiedKey>, Held, String), String> {
        let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
        let csr = rcgen::CertificateParams::new(vec![name.to_string()])
            .and_then(|p| p.serialize_request(&key))
            .map_err(|e| format!("CSR: {e}"))?
            .der()
            .to_vec();
        let client = Client::new(s.ca_root.as_deref())?;
        let mut errors = Vec::new();
        for ca in &s.ca {
            let account = match Account::load_or_create(&s.storage, ca) {
                Ok(a) => a,
                Err(e) => {
                    errors.push(format!("{ca}: {e}"));
                    continue;
                }
            };
            let mut order = Order::new(
                ca,
                vec![name.to_string()],
                s.contact.clone(),
                s.challenges.clone(),
                csr.clone(),
                replaces.clone(),
                decide::Signer::jwk(&account),
            );
            match self.drive(&mut order, &account, &client) {
                Ok(chain) => {
                    let key_pem = key.serialize_pem();
                    let (ck, held) = certified(chain.as_bytes(), key_pem.as_bytes(), name)?;
                    // Served even when it cannot be kept: ordering again would spend the
                    // CA's rate limit on a certificate we have. The next start orders anew.
                    if let Err(e) = store(&s.storage, name, &chain, &key_pem) {
                        log::warn!(
                            "acme: {name}: the certificate cannot be stored in {}: {e}; served from memory",
                            s.storage.display()
                        );
                    }
                    return Ok((ck, held, ca.clone()));
                }
                Err(e) => errors.push(format!("{ca}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// Runs one order to its end; withdraws the challenge answers it published.
    fn drive(
        &self,
        order: &mut Order,
        account: &Account,
        client: &Client,
    ) -> Result<String, String> {
        let mut published: Vec<Challenge> = Vec::new();
        let result = loop {
            if self.shutdown.load(Ordering::Relaxed) {
                break Err("shutting down".to_string());
            }
            match order.poll(account) {
                Step::Send(req) => match client.send(&req) {
                    Ok(r) => order.handle(r),
                    Err(e) => order.handle_failure(e),
                },
                Step::Publish(c) => {
                    match answer(&c) {
                        Ok(publish) => self.acme.update(|p| publish(p)),
                        Err(e) => order.handle_failure(e),
                    }
                    published.push(c);
                }
                Step::Wait(d) => std::thread::sleep(d),
                Step::Done(chain) => break Ok(chain),
                Step::Failed(why) => break Err(why),
            }
        };
        self.acme.update(|p| {
            for c in &published {
                p.tokens.remove(&c.token);
                p.alpn.remove(&c.name);
            }
        });
        result
    }
}

/// What publishing a challenge's answer does to [`Published`].
fn answer(c: &Challenge) -> Result<impl Fn(&mut Published), String> {
    let alpn = match c.kind {
        ChallengeKind::Http01 => None,
        ChallengeKind::TlsAlpn01 => Some(alpn_certificate(&c.name, &c.key_authorization)?),
    };
    let (token, name, key_authorization) =
        (c.token.clone(), c.name.clone(), c.key_authorization.clone());
    Ok(move |p: &mut Published| match &alpn {
        None => {
            p.tokens.insert(token.clone(), key_authorization.clone());
        }
        Some(ck) => {
            p.alpn.insert(name.clone(), ck.clone());
        }
    })
}

/// The self-signed certificate of a TLS-ALPN-01 validation (RFC 8737 §3): the name, and the
/// critical `acmeIdentifier` extension holding SHA-256 of the key authorization.
fn alpn_certificate(name: &str, key_authorization: &str) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
        &decide::tls_alpn_digest(key_authorization),
    )];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(str::to_string)?;
    let signing = provider::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// The account key for the CA at `directory`: read from storage, or made and written there.
struct Account {
    key: EcdsaKeyPair,
    jwk: String,
}

impl Account {
    fn load_or_create(storage: &Path, directory: &str) -> Result<Self, String> {
        let dir = storage.join("accounts").join(ca_dir_name(directory));
        let path = dir.join("account.key");
        let pkcs8 = match std::fs::read(&path) {
            Ok(pem) => rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .secret_pkcs8_der()
                .to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|e| format!("account key: {e}"))?;
                let der = doc.as_ref().to_vec();
                write_private(&path, decide::pem("PRIVATE KEY", &der).as_bytes())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                der
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
            .map_err(|e| format!("{}: not a P-256 key: {e}", path.display()))?;
        // The uncompressed point: 0x04, x, y.
        let point = key.public_key().as_ref();
        if point.len() != 65 {
            return Err("account key: unexpected public key form".into());
        }
        let jwk = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            decide::b64(&point[1..33]),
            decide::b64(&point[33..])
        );
        Ok(Self { key, jwk })
    }
}

impl decide::Signer for Account {
    fn jwk(&self) -> &str {
        &self.jwk
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        self.key
            .sign(&SystemRandom::new(), input)
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default()
    }
}

/// A directory name for a CA: its host, port and path, with nothing but `[a-z0-9.-_]`.
fn ca_dir_name(directory: &str) -> String {
    let u = decide::Url::parse(directory).map(|u| format!("{}_{}{}", u.host, u.port, u.path));
    u.unwrap_or_else(|_| directory.to_string())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A blocking HTTPS client for the CA: one connection per request (`Connection: close`).
struct Client {
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    fn new(ca_root: Option<&Path>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = ca_root {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|e| format!("acme.ca_root {}: {e}", path.display()))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("acme.ca_root {}: {e}", path.display()))?;
            }
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: Arc::new(config),
        })
    }

    fn send(&self, req: &Request) -> Result<Reply, String> {
        let url = decide::Url::parse(&req.url)?;
        if !crate::guard::may_resolve(&url.host) {
            return Err(format!("{}: refused (loopback only)", url.host));
        }
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", url.host))?
            .collect();
        let mut last = format!("{} has no address", url.host);
        let mut tcp = None;
        for a in addrs.into_iter().filter(|&a| crate::guard::may_dial(a)) {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connecting to {a}: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
        let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
        let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| e.to_string())?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let method = match req.method {
            Method::Head => "HEAD",
            Method::Post => "POST",
            _ => "GET",
        };
        let host = match (url.host.contains(':'), url.port) {
            (false, 443) => url.host.clone(),
            (false, p) => format!("{}:{p}", url.host),
            (true, p) => format!("[{}]:{p}", url.host),
        };
        let mut out = format!(
            "{method} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringway/{} (ACME)\r\nConnection: close\r\n",
            url.path,
            env!("CARGO_PKG_VERSION")
        );
        let body = req.body.as_deref().unwrap_or("");
        if req.body.is_some() {
            out.push_str(&format!(
                "Content-Type: application/jose+json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        out.push_str("\r\n");
        out.push_str(body);
        let url_text = &req.url;
        s.write_all(out.as_bytes())
            .and_then(|()| s.flush())
            .map_err(|e| format!("{url_text}: {e}"))?;
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    bytes.extend_from_slice(&chunk[..n]);
                    if bytes.len() > decide::MAX_REPLY {
                        return Err(format!("{url_text}: the reply is over 1 MiB"));
                    }
                }
                // A server that closes without close_notify: what came is all there is.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {
                    break
                }
                Err(e) => return Err(format!("{url_text}: {e}")),
            }
        }
        Reply::parse(&bytes, req.method).map_err(|e| format!("{url_text}: {e}"))
    }

    fn get(&self, url: &str) -> Result<Reply, String> {
        self.send(&Request {
            method: Method::Get,
            url: url.to_string(),
            body: None,
        })
    }
}

/// The CA's ARI window for `cert_id`, when the first CA offers ARI and answers.
fn ari_window(s: &Settings, cert_id: &str) -> Option<Window> {
    let client = Client::new(s.ca_root.as_deref()).ok()?;
    let dir = client.get(s.ca.first()?).ok()?;
    let base = decide::renewal_info_url(&dir.body)?;
    let r = client.get(&format!("{base}/{cert_id}")).ok()?;
    (r.status == 200)
        .then(|| renew::parse_window(&r.body))
        .flatten()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When `held` is renewed, in Unix seconds: a random point in the ARI window, or a third of
/// the lifetime before expiry.
fn renew_at(held: &Held) -> u64 {
    // The jitter is fixed per certificate (its expiry), so that asking again does not move it.
    let jitter = (held.validity.not_after % 1000) as f64 / 1000.0;
    held.validity.renew_at(held.window, jitter)
}

/// When to look at `held` again: its renewal, or the next ARI question, whichever is first.
fn renew_time(held: &Held, now: SystemTime) -> SystemTime {
    let renew = UNIX_EPOCH + Duration::from_secs(renew_at(held));
    let ask = match (&held.cert_id, held.asked) {
        (Some(_), Some(at)) => at + ARI_RECHECK,
        (Some(_), None) => now,
        (None, _) => renew,
    };
    renew.min(ask)
}

/// A chain and key as rustls serves them, with what the manager tracks of the leaf.
fn certified(chain: &[u8], key: &[u8], name: &str) -> Result<(Arc<CertifiedKey>, Held), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    let leaf = certs.first().ok_or("no certificate in the chain")?;
    let held = leaf_facts(leaf, name)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key: {e}"))?;
    let signing = provider::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok((Arc::new(ck), held))
}

fn leaf_facts(leaf: &CertificateDer<'_>, name: &str) -> Result<Held, String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let covers = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|g| matches!(g, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(name)))
        });
    if !covers {
        return Err(format!("the certificate does not name {name}"));
    }
    let validity = Validity {
        not_before: cert.validity().not_before.timestamp().max(0) as u64,
        not_after: cert.validity().not_after.timestamp().max(0) as u64,
    };
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    let cert_id = aki.map(|k| renew::cert_id(&k, cert.raw_serial()));
    Ok(Held {
        validity,
        cert_id,
        window: None,
        asked: None,
    })
}

/// The stored certificate of `name`, if there is one that still covers it and is valid now.
fn load_stored(storage: &Path, name: &str) -> Result<Option<(Arc<CertifiedKey>, Held)>, String> {
    let (crt, key) = paths(storage, name);
    let (chain, key) = match (std::fs::read(&crt), std::fs::read(&key)) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        (Err(e), _) | (_, Err(e)) => return Err(e.to_string()),
    };
    let (ck, held) = certified(&chain, &key, name)?;
    if !held.validity.valid_at(unix(SystemTime::now())) {
        return Ok(None);
    }
    Ok(Some((ck, held)))
}

fn paths(storage: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = storage.join("certs");
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

fn store(storage: &Path, name: &str, chain: &str, key: &str) -> std::io::Result<()> {
    let (crt, k) = paths(storage, name);
    // The key first: a crash between the two leaves a new key beside the old certificate,
    // which the next start rejects as a mismatch and orders again.
    write_private(&k, key.as_bytes())?;
    write_private(&crt, chain.as_bytes())
}

/// Makes the storage directory (0700) and checks that files can be written in it.
pub(crate) fn prepare_storage(storage: &Path) -> std::io::Result<()> {
    let probe = storage.join(".ringway-write-check");
    write_private(&probe, b"")?;
    std::fs::remove_file(probe)
}

/// Writes `data` to `path` (mode 0600, its directories 0700) through a temporary file.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
