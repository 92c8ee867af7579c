//! TLS material: certificates, keys and trust anchors read from the files the configuration
//! names, turned into rustls configurations.
//!
//! This is loaded on the main thread, at start and on every reload, before anything is handed
//! to the workers: a missing, unreadable or mismatched file is a [`ConfigError`] naming the file
//! and the key it was configured at, and on reload the previous material stays in use. The
//! rustls configurations are immutable and shared by all workers (`Arc`); the only state they
//! share is the session-ticket key set and the session-ID cache, both touched once per
//! handshake, never per request.
//!
//! Crypto provider: aws-lc-rs, rustls's default. It builds with the C compiler alone (no cmake,
//! no assembler on x86_64/aarch64 Linux), and its P-256, X25519 and AES-GCM code is the same
//! assembly BoringSSL uses, which is what keeps handshakes and bulk encryption near OpenSSL's.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ringway_core::config::{
    CertKeyFiles, ClientAuth, Config, ConfigError, Origin, Tls, TlsVersion, UpstreamTls,
};
use ringway_core::sni::NameIndex;
use rustls::client::ClientConfig;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerConfig};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// The TLS side of one configuration generation.
pub(crate) struct TlsMaterial {
    /// For listeners marked `tls`.
    pub(crate) server: Option<ServerConfigs>,
    pub(crate) handshake_timeout: Duration,
    /// Per upstream group, when it connects over TLS.
    pub(crate) upstreams: Vec<Option<Origination>>,
    /// Certificates and validations from ACME, when `[acme]` is configured.
    pub(crate) acme: Option<Arc<crate::acme::Acme>>,
}

/// How to open TLS connections to one upstream group.
pub(crate) struct Origination {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

impl Origination {
    /// The client side of a new connection to `addr`, a server given by the name `host` when
    /// it was: verified against `server_name` when one is configured, else against the name it
    /// was given by, else against its address.
    pub(crate) fn connection(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
    ) -> Result<rustls::ClientConnection, rustls::Error> {
        let by_name = host.and_then(|h| ServerName::try_from(h.to_string()).ok());
        let name = self
            .name
            .clone()
            .or(by_name)
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        rustls::ClientConnection::new(self.config.clone(), name)
    }
}

/// What outlives a reload: the ticket keys (so tickets issued before a reload still resume
/// after it) and the session cache.
pub(crate) struct Keep {
    ticketer: Option<Arc<dyn ProducesTickets>>,
    cache: Option<(usize, Arc<ServerSessionMemoryCache>)>,
    /// ACME's certificates, its thread and what it was asked for.
    pub(crate) acme: Arc<crate::acme::Acme>,
    /// OCSP answers for the configured certificates, and its thread.
    pub(crate) ocsp: Arc<crate::ocsp::Stapler>,
}

impl Keep {
    pub(crate) fn new() -> Self {
        Self {
            ticketer: None,
            cache: None,
            acme: crate::acme::Acme::new(),
            ocsp: crate::ocsp::Stapler::new(),
        }
    }
}

impl TlsMaterial {
    /// Reads every certificate, key and CA file `cfg` names.
    pub(crate) fn load(cfg: &Config, keep: &mut Keep) -> Result<Self, ConfigError> {
        let acme = cfg.acme.as_ref().map(|_| keep.acme.clone());
        // Read even when no listener uses it yet, so that a bad file is reported now.
        let (server, stapled) = match &cfg.tls {
            Some(t) => {
                let (s, slots) = server_configs(t, &cfg.server.listen, keep, acme.clone())?;
                (Some(s), slots)
            }
            None => (None, Vec::new()),
        };
        let upstreams = cfg
            .upstreams
            .iter()
            .map(|u| u.tls.as_ref().map(origination).transpose())
            .collect::<Result<_, _>>()?;
        // Only a configuration that loaded whole is handed to the background threads.
        keep.acme.want(cfg.acme.as_ref());
        keep.ocsp.set(stapled);
        Ok(Self {
            server,
            handshake_timeout: cfg
                .tls
                .as_ref()
                .map_or(ringway_core::config::DEFAULT_HANDSHAKE_TIMEOUT, |t| {
                    t.handshake_timeout
                }),
            upstreams,
            acme,
        })
    }
}

/// The server configurations of the TLS listeners: one without client certificates, and one
/// per `client_auth` mode the listeners use; all share the certificates, session cache and
/// ticket keys.
fn server_configs(
    t: &Tls,
    listen: &[ringway_core::config::Listen],
    keep: &mut Keep,
    acme: Option<Arc<crate::acme::Acme>>,
) -> Result<(ServerConfigs, Vec<crate::ocsp::Slot>), ConfigError> {
    let tls_alpn = acme.is_some();
    let mut resolver = SniResolver {
        certs: Vec::new(),
        names: NameIndex::new(),
        acme,
    };
    for files in &t.certificates {
        let (ck, names) = certified_key(files)?;
        let i = resolver.certs.len();
        resolver.certs.push(Arc::new(ArcSwap::from_pointee(ck)));
        resolver
            .names
            .add(i, names.iter().map(String::as_str), !t.strict_sni);
    }
    let stapled = resolver
        .certs
        .iter()
        .filter_map(crate::ocsp::Slot::of)
        .collect();
    let resolver: Arc<dyn ResolvesServerCert> = Arc::new(resolver);
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let storage: Arc<dyn rustls::server::StoresServerSessions> = if t.session_cache == 0 {
        Arc::new(NoServerSessionStorage {})
    } else {
        match &keep.cache {
            Some((size, cache)) if *size == t.session_cache => cache.clone(),
            _ => {
                let cache = ServerSessionMemoryCache::new(t.session_cache);
                keep.cache = Some((t.session_cache, cache.clone()));
                cache
            }
        }
    };
    let ticketer = match (t.session_tickets, &keep.ticketer) {
        (false, _) => None,
        (true, Some(tk)) => Some(tk.clone()),
        (true, None) => {
            let tk = aws_lc_rs::Ticketer::new().map_err(|e| ConfigError {
                file: String::new(),
                line: None,
                key: "tls.session_tickets".into(),
                message: format!("cannot create session ticket keys: {e}"),
            })?;
            keep.ticketer = Some(tk.clone());
            Some(tk)
        }
    };
    let provider = Arc::new(provider_for(t)?);
    // Checked now: a suite list that leaves a protocol version without suites is the
    // operator's error, with the key that caused it.
    ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| {
            let o = t.cipher_suites.as_ref().map(|(_, o)| o);
            match o {
                Some(o) => o.error(format!("{e} (with min_version {:?})", t.min_version)),
                None => ConfigError {
                    file: String::new(),
                    line: None,
                    key: "tls".into(),
                    message: e.to_string(),
                },
            }
        })?;
    let build = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
        let b = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("checked above");
        let b = match verifier {
            None => b.with_no_client_auth(),
            Some(v) => b.with_client_cert_verifier(v),
        };
        let mut sc = b.with_cert_resolver(resolver.clone());
        // http/1.0 too: a client that offers only it (`curl --http1.0`) must get HTTP/1.x,
        // not a failed handshake (rustls refuses a client whose ALPN list shares nothing with
        // ours).
        sc.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        if tls_alpn {
            // TLS-ALPN-01 validations offer only this; no browser does.
            sc.alpn_protocols
                .push(ringway_core::acme::ALPN_PROTOCOL.to_vec());
        }
        sc.session_storage = storage.clone();
        if let Some(tk) = &ticketer {
            sc.ticketer = tk.clone();
        }
        Arc::new(sc)
    };
    let uses = |mode: ClientAuth| listen.iter().any(|l| l.is_tls() && l.client_auth == mode);
    let verifier = |optional: bool| -> Result<_, ConfigError> {
        let (path, origin) = t.client_ca.as_ref().ok_or_else(|| ConfigError {
            file: String::new(),
            line: None,
            key: "tls.client_ca".into(),
            message: "listeners with client_auth need it".into(),
        })?;
        let mut roots = RootCertStore::empty();
        for cert in read_certs(path, origin, "client CA certificate")? {
            roots.add(cert).map_err(|e| {
                origin.error(format!("invalid CA certificate in {}: {e}", path.display()))
            })?;
        }
        let b = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        let v: Arc<dyn rustls::server::danger::ClientCertVerifier> = b
            .build()
            .map_err(|e| origin.error(format!("client CAs in {}: {e}", path.display())))?;
        Ok(v)
    };
    let configs = ServerConfigs {
        optional: match uses(ClientAuth::Optional) {
            true => Some(build(Some(verifier(true)?))),
            false => None,
        },
        required: match uses(ClientAuth::Required) {
            true => Some(build(Some(verifier(false)?))),
            false => None,
        },
        plain: build(None),
    };
    Ok((configs, stapled))
}

/// aws-lc-rs with the suites and groups `[tls]` names, in its order (rustls's defaults where
/// it names none). An unknown name is an error that lists the known ones.
fn provider_for(t: &Tls) -> Result<rustls::crypto::CryptoProvider, ConfigError> {
    let mut p = aws_lc_rs::default_provider();
    fn pick<T: Copy>(
        all: &[T],
        name: impl Fn(&T) -> String,
        wanted: &(Vec<String>, Origin),
        what: &str,
    ) -> Result<Vec<T>, ConfigError> {
        let (names, origin) = wanted;
        let mut out = Vec::new();
        for n in names {
            match all.iter().find(|x| name(x).eq_ignore_ascii_case(n)) {
                Some(x) => out.push(*x),
                None => {
                    let known: Vec<String> = all.iter().map(&name).collect();
                    return Err(
                        origin.error(format!("unknown {what} {n:?}; known: {}", known.join(", ")))
                    );
                }
            }
        }
        Ok(out)
    }
    if let Some(w) = &t.cipher_suites {
        p.cipher_suites = pick(
            aws_lc_rs::ALL_CIPHER_SUITES,
            |s| format!("{:?}", s.suite()),
            w,
            "cipher suite",
        )?;
        // Each version the listeners accept needs a suite, or its clients all fail.
        let has =
            |v: rustls::ProtocolVersion| p.cipher_suites.iter().any(|s| s.version().version == v);
        if !has(rustls::ProtocolVersion::TLSv1_3) {
            return Err(w
                .1
                .error("lists no TLS 1.3 suite (TLS13_…): TLS 1.3 clients would all fail"));
        }
        if t.min_version == TlsVersion::Tls12 && !has(rustls::ProtocolVersion::TLSv1_2) {
            return Err(w.1.error(
                "lists no TLS 1.2 suite (TLS_ECDHE_…) while min_version is \"1.2\": add one, or set min_version = \"1.3\"",
            ));
        }
    }
    if let Some(w) = &t.groups {
        p.kx_groups = pick(
            aws_lc_rs::ALL_KX_GROUPS,
            |g| format!("{:?}", g.name()),
            w,
            "key-exchange group",
        )?;
    }
    Ok(p)
}

/// See [`server_configs`].
pub(crate) struct ServerConfigs {
    plain: Arc<ServerConfig>,
    optional: Option<Arc<ServerConfig>>,
    required: Option<Arc<ServerConfig>>,
}

impl ServerConfigs {
    /// The configuration for a listener asking for client certificates as `auth` says.
    pub(crate) fn for_listener(&self, auth: ClientAuth) -> Arc<ServerConfig> {
        match auth {
            ClientAuth::Off => &self.plain,
            ClientAuth::Optional => self.optional.as_ref().unwrap_or(&self.plain),
            ClientAuth::Required => self.required.as_ref().unwrap_or(&self.plain),
        }
        .clone()
    }
}

fn origination(u: &UpstreamTls) -> Result<Origination, ConfigError> {
    let mut roots = RootCertStore::empty();
    match &u.ca {
        Some(ca) => {
            for cert in read_certs(ca, &u.origin, "CA certificate")? {
                roots.add(cert).map_err(|e| {
                    u.origin
                        .error(format!("invalid CA certificate in {}: {e}", ca.display()))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(u.origin.error(
                    "no system CA certificates found (install ca-certificates, or set `ca`)",
                ));
            }
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match &u.client_cert {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let (ck, _) = certified_key(files)?;
            builder
                .with_client_auth_cert(ck.cert, read_key(&files.key, &files.origin)?)
                .map_err(|e| files.origin.error(format!("client certificate: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = match &u.server_name {
        None => None,
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|e| u.origin.error(format!("server_name {n:?}: {e}")))?,
        ),
    };
    Ok(Origination {
        config: Arc::new(config),
        name,
    })
}

fn read_certs(
    path: &Path,
    origin: &Origin,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| origin.error(format!("cannot read {what} file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(origin.error(format!(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path, origin: &Origin) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        origin.error(format!(
            "cannot read a PEM private key from {}: {e}",
            path.display()
        ))
    })
}

/// Loads a chain and its key, checks that they belong together, and returns the DNS names the
/// leaf certificate holds.
fn certified_key(files: &CertKeyFiles) -> Result<(CertifiedKey, Vec<String>), ConfigError> {
    let o = &files.origin;
    let chain = read_certs(&files.cert, o, "certificate")?;
    let key = read_key(&files.key, o)?;
    let provider = aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        o.error(format!(
            "unsupported private key in {}: {e}",
            files.key.display()
        ))
    })?;
    let names = leaf_names(&chain[0]).map_err(|e| {
        o.error(format!(
            "cannot parse the certificate in {}: {e}",
            files.cert.display()
        ))
    })?;
    let ck = CertifiedKey::new(chain, signing);
    if ck.keys_match().is_err() {
        return Err(o.error(format!(
            "the private key in {} does not belong to the certificate in {}",
            files.key.display(),
            files.cert.display()
        )));
    }
    Ok((ck, names))
}

/// The subjectAltName DNS names of a certificate, or its subject CN when it has none.
fn leaf_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_string());
            }
        }
    }
    Ok(names)
}

/// Answers each handshake with a certificate: the candidates for its SNI come from core's
/// [`NameIndex`]; among them the first whose key can sign with a scheme the client offers wins,
/// so an ECDSA and an RSA certificate for one name serve each client the best it supports, as
/// nginx does with two `ssl_certificate`s.
///
/// With `[acme]`, its certificates come first for the names it manages, a TLS-ALPN-01
/// validation handshake gets only its validation certificate, and a handshake no certificate
/// of the listener's own fits gets the first managed one.
struct SniResolver {
    /// Each behind an `ArcSwap`: OCSP answers are stapled into them without a reload.
    certs: Vec<Arc<ArcSwap<CertifiedKey>>>,
    names: NameIndex,
    acme: Option<Arc<crate::acme::Acme>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("certs", &self.certs.len())
            .field("acme", &self.acme.is_some())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(acme) = &self.acme {
            let validation = hello
                .alpn()
                .is_some_and(|mut offered| offered.all(|p| p == ringway_core::acme::ALPN_PROTOCOL));
            if validation {
                return acme.certificate(hello.server_name(), true, false);
            }
            let own = !self.names.candidates(hello.server_name()).is_empty();
            if let Some(ck) = acme.certificate(hello.server_name(), false, !own) {
                return Some(ck);
            }
        }
        let schemes = hello.signature_schemes();
        let candidates = self.names.candidates(hello.server_name());
        // When none can sign for this client, the first is offered and the handshake fails
        // on the client's side, saying why.
        let chosen = candidates
            .iter()
            .copied()
            .find(|&i| self.certs[i].load().key.choose_scheme(schemes).is_some())
            .or_else(|| candidates.first().copied())?;
        Some(self.certs[chosen].load_full())
    }
}
