//! TLS settings: which listeners terminate TLS, the certificates they serve, and how upstream
//! groups originate TLS.
//!
//! Only file names are known here: reading and checking the PEM files is the data plane's job
//! (this crate does no IO), so each file name keeps the [`Origin`] it was written at, and an
//! unreadable or invalid file is reported as `file:line: key: message` like any other error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::{opt_duration, raw, ConfigError, Locator};

/// Where in the configuration a value was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
}

impl Origin {
    /// An error about the value written here.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            key: self.key.clone(),
            message: message.into(),
        }
    }
}

/// A certificate chain and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertKeyFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub origin: Origin,
}

/// The oldest protocol version a TLS listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `[tls]`: TLS termination for listeners marked `tls = true`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// Chosen by SNI among the names each certificate holds; the first is the default for
    /// clients that send no SNI or a name no certificate holds (unless `strict_sni`).
    pub certificates: Vec<CertKeyFiles>,
    pub min_version: TlsVersion,
    /// From accepting the connection to the end of the handshake.
    pub handshake_timeout: Duration,
    /// Refuse handshakes whose SNI matches no certificate (HAProxy's `strict-sni`).
    pub strict_sni: bool,
    /// Resumption by stateless tickets (keys shared by all workers, rotated).
    pub session_tickets: bool,
    /// Sessions kept for resumption by session ID (TLS 1.2) and stateful TLS 1.3 resumption;
    /// 0 turns the cache off.
    pub session_cache: usize,
    /// The CAs client certificates are verified against, on listeners with `client_auth`.
    pub client_ca: Option<(PathBuf, Origin)>,
    /// Cipher suites offered, in order, by rustls's names (`TLS13_AES_128_GCM_SHA256`);
    /// `None`: rustls's defaults. Checked against the provider by io.
    pub cipher_suites: Option<(Vec<String>, Origin)>,
    /// Key-exchange groups, in order (`X25519MLKEM768`, `X25519`, `secp256r1`).
    pub groups: Option<(Vec<String>, Origin)>,
}

pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SESSION_CACHE: usize = 20_480;

impl Tls {
    /// Defaults around one certificate (quick mode's `--tls-cert/--tls-key`).
    pub fn with_certificate(cert: PathBuf, key: PathBuf) -> Self {
        Self {
            certificates: vec![CertKeyFiles {
                cert,
                key,
                origin: Origin {
                    file: "--tls-cert/--tls-key".into(),
                    line: None,
                    key: String::new(),
                },
            }],
            ..Self::defaults()
        }
    }

    /// The defaults with no certificate of its own: all come from `[acme]`.
    pub fn defaults() -> Self {
        Self {
            certificates: Vec::new(),
            min_version: TlsVersion::Tls12,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            strict_sni: false,
            session_tickets: true,
            session_cache: DEFAULT_SESSION_CACHE,
            client_ca: None,
            cipher_suites: None,
            groups: None,
        }
    }
}

/// An upstream group's `tls`: the proxy connects to its servers over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Sent as SNI and verified against the certificate; `None`: the server's IP address
    /// (verified against the certificate's IP addresses, no SNI sent).
    pub server_name: Option<String>,
    /// PEM file of trusted CA certificates; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<CertKeyFiles>,
    pub origin: Origin,
}

impl Locator<'_> {
    pub(crate) fn origin(&self, span: std::ops::Range<usize>, key: impl Into<String>) -> Origin {
        Origin {
            file: self.file.to_string(),
            line: Some(self.line_of(span)),
            key: key.into(),
        }
    }

    /// A path as written, relative to the configuration file's directory.
    pub(crate) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match Path::new(self.file).parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// `acme`: certificates come from ACME too, so `certificates` may be empty.
pub(super) fn build_tls(
    loc: &Locator<'_>,
    t: &Spanned<raw::Tls>,
    acme: bool,
) -> Result<Tls, ConfigError> {
    let r = t.get_ref();
    if r.certificates.get_ref().is_empty() && !acme {
        return Err(loc.at(
            r.certificates.span(),
            "tls.certificates",
            "expected at least one { cert = \"…\", key = \"…\" }",
        ));
    }
    let certificates = r
        .certificates
        .get_ref()
        .iter()
        .enumerate()
        .map(|(i, c)| CertKeyFiles {
            cert: loc.path(&c.get_ref().cert),
            key: loc.path(&c.get_ref().key),
            origin: loc.origin(c.span(), format!("tls.certificates[{i}]")),
        })
        .collect();
    let min_version = match &r.min_version {
        None => TlsVersion::Tls12,
        Some(v) => match v.get_ref().as_str() {
            "1.2" => TlsVersion::Tls12,
            "1.3" => TlsVersion::Tls13,
            _ => return Err(loc.at(v.span(), "tls.min_version", "expected \"1.2\" or \"1.3\"")),
        },
    };
    let handshake_timeout = opt_duration(
        loc,
        "tls.handshake_timeout",
        r.handshake_timeout.clone(),
        DEFAULT_HANDSHAKE_TIMEOUT,
    )?;
    if handshake_timeout.is_zero() {
        return Err(loc.at(
            t.span(),
            "tls.handshake_timeout",
            "expected a duration above zero",
        ));
    }
    let session_cache = match &r.session_cache {
        None => DEFAULT_SESSION_CACHE,
        Some(n) if *n.get_ref() <= 10_000_000 => *n.get_ref(),
        Some(n) => {
            return Err(loc.at(
                n.span(),
                "tls.session_cache",
                "expected 0 (off) to 10000000 sessions",
            ))
        }
    };
    Ok(Tls {
        certificates,
        min_version,
        handshake_timeout,
        strict_sni: r.strict_sni.unwrap_or(false),
        session_tickets: r.session_tickets.unwrap_or(true),
        session_cache,
        client_ca: r
            .client_ca
            .as_ref()
            .map(|p| (loc.path(p), loc.origin(t.span(), "tls.client_ca"))),
        cipher_suites: names_list(loc, &r.cipher_suites, "tls.cipher_suites")?,
        groups: names_list(loc, &r.groups, "tls.groups")?,
    })
}

/// A non-empty list of names, with where it was written (io checks the names).
fn names_list(
    loc: &Locator<'_>,
    v: &Option<Spanned<Vec<String>>>,
    key: &str,
) -> Result<Option<(Vec<String>, Origin)>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    if v.get_ref().is_empty() {
        return Err(loc.at(v.span(), key, "expected at least one name"));
    }
    Ok(Some((v.get_ref().clone(), loc.origin(v.span(), key))))
}

pub(super) fn build_upstream_tls(
    loc: &Locator<'_>,
    key: &str,
    t: &Spanned<raw::UpstreamTls>,
) -> Result<Option<UpstreamTls>, ConfigError> {
    let key = format!("{key}.tls");
    let origin = loc.origin(t.span(), key.clone());
    let table = match t.get_ref() {
        raw::UpstreamTls::On(false) => return Ok(None),
        raw::UpstreamTls::On(true) => {
            return Ok(Some(UpstreamTls {
                server_name: None,
                ca: None,
                client_cert: None,
                origin,
            }))
        }
        raw::UpstreamTls::Full(table) => table,
    };
    if let Some(name) = &table.server_name {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid {
            return Err(loc.at(
                t.span(),
                format!("{key}.server_name"),
                format!("expected a DNS name, got {name:?}"),
            ));
        }
    }
    let client_cert = match (&table.cert, &table.key) {
        (None, None) => None,
        (Some(cert), Some(k)) => Some(CertKeyFiles {
            cert: loc.path(cert),
            key: loc.path(k),
            origin: origin.clone(),
        }),
        _ => {
            return Err(loc.at(
                t.span(),
                key,
                "expected both `cert` and `key` for a client certificate, or neither",
            ))
        }
    };
    Ok(Some(UpstreamTls {
        server_name: table.server_name.clone(),
        ca: table.ca.as_deref().map(|p| loc.path(p)),
        client_cert,
        origin,
    }))
}
