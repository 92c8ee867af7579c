//! OCSP stapling carried out: a thread of its own (`ringway-ocsp`) asks each configured
//! certificate's responder (its Authority Information Access URL) for its status, checks the
//! answer (`ringway_core::ocsp::check`), and swaps the certificate for one carrying the answer;
//! handshakes read the certificate through an `ArcSwap` and never wait for a responder. An
//! answer is kept (and stapled) until its `nextUpdate`, refreshed halfway there, and survives
//! reloads that keep the certificate. A responder that fails is asked again after 5 minutes,
//! doubling to an hour; the last good answer stays stapled while it is current.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ringway_core::ocsp::{self as decide, Current};
use rustls::sign::CertifiedKey;

const TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_FIRST: u64 = 300;
const RETRY_MAX: u64 = 3600;

/// One certificate to staple: where its status comes from and the slot handshakes read.
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) key: Arc<ArcSwap<CertifiedKey>>,
    /// The leaf's DER: what answers are remembered by across reloads.
    leaf: Vec<u8>,
    url: String,
    request: Vec<u8>,
    serial: Vec<u8>,
}

impl Slot {
    /// The stapling slot of `key` when its leaf names an OCSP responder and its chain holds
    /// the issuer; `None` otherwise (nothing to staple).
    pub(crate) fn of(key: &Arc<ArcSwap<CertifiedKey>>) -> Option<Self> {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let ck = key.load();
        let leaf = ck.cert.first()?;
        let issuer = ck.cert.get(1)?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let (_, issuer) = x509_parser::parse_x509_certificate(issuer).ok()?;
        let url = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityInfoAccess(aia) => aia.accessdescs.iter().find_map(|d| {
                    match (&d.access_method.to_id_string()[..], &d.access_location) {
                        ("1.3.6.1.5.5.7.48.1", GeneralName::URI(u)) => Some(u.to_string()),
                        _ => None,
                    }
                }),
                _ => None,
            })?;
        decide::responder(&url)?;
        let sha1 = |b: &[u8]| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, b)
                .as_ref()
                .to_vec()
        };
        let serial = cert.raw_serial().to_vec();
        let request = decide::request(
            &sha1(cert.issuer().as_raw()),
            &sha1(&issuer.public_key().subject_public_key.data),
            &serial,
        );
        Some(Self {
            key: key.clone(),
            leaf: leaf.to_vec(),
            url,
            request,
            serial,
        })
    }
}

/// What the thread remembers of one certificate.
#[derive(Default)]
struct Known {
    answer: Option<(Vec<u8>, Current)>,
    next: u64,
    failures: u32,
}

/// Stapling shared by the configuration generations (kept across reloads in `tls::Keep`).
pub(crate) struct Stapler {
    control: Mutex<Control>,
    wake: Condvar,
    /// Answers fetched and stapled, and fetches that failed or were refused.
    pub(crate) fetches: [std::sync::atomic::AtomicU64; 2],
}

#[derive(Default)]
struct Control {
    slots: Vec<Slot>,
    shutdown: Option<Arc<AtomicBool>>,
    running: bool,
    /// Answers by leaf DER, kept across reloads.
    known: HashMap<Vec<u8>, Known>,
}

impl Stapler {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            fetches: Default::default(),
        })
    }

    /// How many of the configured certificates carry an answer now.
    pub(crate) fn stapled(&self) -> u64 {
        let c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        c.slots
            .iter()
            .filter(|s| s.key.load().ocsp.is_some())
            .count() as u64
    }

    /// The certificates of the configuration now in force (at start and every reload). Those
    /// whose answer is known get it at once.
    pub(crate) fn set(self: &Arc<Self>, slots: Vec<Slot>) {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix();
        for s in &slots {
            if let Some((der, cur)) = c.known.get(&s.leaf).and_then(|k| k.answer.as_ref()) {
                if cur.valid_at(now) {
                    staple(s, Some(der.clone()));
                }
            }
        }
        c.slots = slots;
        self.spawn_if_needed(&mut c);
        self.wake.notify_all();
    }

    /// The server runs: fetching may start.
    pub(crate) fn start(self: &Arc<Self>, shutdown: Arc<AtomicBool>) {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        c.shutdown = Some(shutdown);
        self.spawn_if_needed(&mut c);
    }

    fn spawn_if_needed(self: &Arc<Self>, c: &mut Control) {
        let (Some(shutdown), false, false) = (&c.shutdown, c.slots.is_empty(), c.running) else {
            return;
        };
        let (me, shutdown) = (self.clone(), shutdown.clone());
        match std::thread::Builder::new()
            .name("ringway-ocsp".into())
            .spawn(move || me.run(&shutdown))
        {
            Ok(_) => c.running = true,
            Err(e) => log::error!("ocsp: cannot start its thread: {e}"),
        }
    }

    fn run(&self, shutdown: &AtomicBool) {
        while !shutdown.load(Ordering::Relaxed) {
            let now = unix();
            let due: Vec<Slot> = {
                let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
                let slots = c.slots.clone();
                slots
                    .into_iter()
                    .filter(|s| c.known.entry(s.leaf.clone()).or_default().next <= now)
                    .collect()
            };
            for slot in due {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                let result = fetch(&slot).and_then(|der| {
                    decide::check(&der, &slot.serial, unix()).map(|cur| (der, cur))
                });
                let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
                let known = c.known.entry(slot.leaf.clone()).or_default();
                let now = unix();
                let staple_now = match result {
                    Ok((der, cur)) => {
                        self.fetches[0].fetch_add(1, Ordering::Relaxed);
                        log::debug!("ocsp: {}: good until {:?}", slot.url, cur.next_update);
                        known.next = cur.refresh_at(now);
                        known.failures = 0;
                        known.answer = Some((der.clone(), cur));
                        Some(der)
                    }
                    Err(e) => {
                        self.fetches[1].fetch_add(1, Ordering::Relaxed);
                        let wait = (RETRY_FIRST << known.failures.min(4)).min(RETRY_MAX);
                        known.failures += 1;
                        known.next = now + wait;
                        log::warn!("ocsp: {}: {e}; asking again in {wait} s", slot.url);
                        // The last good answer while it is current; then none.
                        known
                            .answer
                            .as_ref()
                            .filter(|(_, cur)| cur.valid_at(now))
                            .map(|(der, _)| der.clone())
                    }
                };
                // Every slot of this certificate (a reload may have made new ones).
                for s in c.slots.iter().filter(|s| s.leaf == slot.leaf) {
                    staple(s, staple_now.clone());
                }
            }
            let c = self.control.lock().unwrap_or_else(|p| p.into_inner());
            let _ = self.wake.wait_timeout(c, Duration::from_secs(1));
        }
    }
}

/// Swaps in the slot's certificate with `answer` stapled (or none).
fn staple(slot: &Slot, answer: Option<Vec<u8>>) {
    let ck = slot.key.load();
    if ck.ocsp == answer {
        return;
    }
    let mut next = CertifiedKey::clone(&ck);
    next.ocsp = answer;
    slot.key.store(Arc::new(next));
}

fn unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// POSTs the slot's request to its responder; the response's body.
fn fetch(slot: &Slot) -> Result<Vec<u8>, String> {
    let (host, port, path) = decide::responder(&slot.url).ok_or("not an http:// URL")?;
    if !crate::guard::may_resolve(&host) {
        return Err("refused (loopback only)".into());
    }
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .filter(|&a| crate::guard::may_dial(a))
        .collect();
    let mut last = format!("{host} has no address");
    let mut s = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(t) => {
                s = Some(t);
                break;
            }
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    let mut s = s.ok_or(last)?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let host_field = if port == 80 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {host_field}\r\nContent-Type: application/ocsp-request\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        slot.request.len()
    )
    .into_bytes();
    out.extend_from_slice(&slot.request);
    s.write_all(&out).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    s.take(ringway_core::acme::MAX_REPLY as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let reply = ringway_core::acme::Reply::parse(&bytes, ringway_core::http::Method::Post)?;
    if reply.status != 200 {
        return Err(format!("the responder answered {}", reply.status));
    }
    Ok(reply.body)
}
