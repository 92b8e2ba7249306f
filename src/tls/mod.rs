//! TLS (rustls with the `ring` provider: pure Rust plus a little C/asm that the static
//! build already compiles; aws-lc-rs would need cmake and slow the static image build).
//!
//! Why a module of its own: both directions (statemirror as a TLS client of its Redis
//! backends, as a TLS server on its client and admin listeners) need the same three things,
//! and none of them is protocol-specific:
//!
//! - building a rustls config from PEM files named in the config, with every problem
//!   reported against its key path (`check-config` shows them all);
//! - **rotation**: cert-manager rewrites certificate and key files in place. A config is
//!   re-read when the files' contents change, checked at most once per [`RELOAD_CHECK`] and
//!   only when a new connection is made or accepted (no background task, no inotify). The
//!   new config is swapped in as an `Arc`: established sessions keep the one they started
//!   with, so nothing is dropped. A file that fails to load mid-rotation (a half-written
//!   pair) keeps the previous config and is logged once per distinct error;
//! - **errors people can act on**: rustls's errors become "unknown CA", "certificate
//!   expired", "hostname mismatch (certificate is for X)", … ([`explain`]), which the log,
//!   `/status` and `statemirror_tls_errors_total{peer,reason}` carry.
//!
//! Without `ca_file` the Mozilla roots compiled into the binary (`webpki-roots`) are
//! trusted: the image is `FROM scratch`, with no `/etc/ssl/certs` to read system roots from.

pub mod stream;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    ServerConfig, SignatureScheme,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

pub use stream::Stream;

/// How often, at most, the files behind a config are re-read to look for a rotation.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

pub const TLS_ERRORS_TOTAL: &str = "statemirror_tls_errors_total";

/// `[redis.leader_tls]` / `[redis.follower_tls]`: statemirror as a TLS client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ClientTlsSettings {
    /// PEM CA bundle the server's certificate must chain to. Default: the Mozilla roots
    /// built into the binary.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name to send (SNI) and to verify the certificate against. Default: the URL's host;
    /// for `rediss+sentinel://`, each server's own host: a sentinel's from the URL, the
    /// master's (usually an IP: the certificate's IP SANs) as the sentinels name it. When
    /// set, this one name is verified for every server of the backend.
    pub server_name: Option<String>,
    /// Check that the certificate is for `server_name`. Default true. `false` still checks
    /// the chain, and is logged at warn at every start.
    pub verify_hostname: bool,
}

impl Default for ClientTlsSettings {
    fn default() -> Self {
        Self {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            verify_hostname: true,
        }
    }
}

/// `[redis.listen_tls]` / `[admin.tls]`: statemirror as a TLS server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerTlsSettings {
    /// PEM certificate (chain) the listener presents.
    pub cert_file: PathBuf,
    /// Its PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate that chains to it.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// A config problem: the key (relative to the TLS table) and what is wrong.
pub type KeyError = (&'static str, String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a file named by `key`; the error names the file and never shows its content.
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| (key, format!("cannot read {}: {e}", path.display())))
}

fn certs(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            (
                key,
                format!("{}: not PEM certificates ({e})", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err((key, format!("{}: no certificate in it", path.display())));
    }
    Ok(certs)
}

fn private_key(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, KeyError> {
    // The parse error never quotes the file: it holds key material.
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| (key, format!("{}: no PEM private key in it", path.display())))
}

fn roots(key: &'static str, path: &Path, pem: &[u8]) -> Result<RootCertStore, KeyError> {
    let mut store = RootCertStore::empty();
    for c in certs(key, path, pem)? {
        store
            .add(c)
            .map_err(|e| (key, format!("{}: bad CA certificate ({e})", path.display())))?;
    }
    Ok(store)
}

/// The files a config is built from, read once: the digest tells a rotation apart.
struct Files(Vec<(&'static str, PathBuf, Vec<u8>)>);

impl Files {
    fn read(list: &[(&'static str, &Option<PathBuf>)]) -> Result<Self, Vec<KeyError>> {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for (key, p) in list {
            if let Some(p) = p {
                match read(key, p) {
                    Ok(b) => out.push((*key, p.clone(), b)),
                    Err(e) => errs.push(e),
                }
            }
        }
        if errs.is_empty() {
            Ok(Files(out))
        } else {
            Err(errs)
        }
    }

    fn get(&self, key: &str) -> Option<(&Path, &[u8])> {
        self.0
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, p, b)| (p.as_path(), b.as_slice()))
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (k, _, b) in &self.0 {
            h.update(k.as_bytes());
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
        h.finalize().into()
    }
}

/// Builds a config from its files: the config and the files' digest, or what is wrong.
type Build<C> = Box<dyn Fn() -> Result<(Arc<C>, [u8; 32]), Vec<KeyError>> + Send + Sync>;

/// Re-reads a config's files at most every [`RELOAD_CHECK`] and rebuilds it when they changed.
struct Reloading<C> {
    what: String,
    state: Mutex<ReloadState<C>>,
    build: Build<C>,
}

struct ReloadState<C> {
    current: Arc<C>,
    digest: [u8; 32],
    checked: Instant,
    last_error: Option<String>,
}

impl<C> Reloading<C> {
    fn new(what: String, build: Build<C>) -> Result<Self, Vec<KeyError>> {
        let (current, digest) = build()?;
        Ok(Self {
            what,
            state: Mutex::new(ReloadState {
                current,
                digest,
                checked: Instant::now(),
                last_error: None,
            }),
            build,
        })
    }

    fn current(&self) -> Arc<C> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= RELOAD_CHECK {
            s.checked = Instant::now();
            match (self.build)() {
                Ok((c, d)) if d != s.digest => {
                    tracing::info!(tls = %self.what, "TLS certificate files changed: new connections use them");
                    s.current = c;
                    s.digest = d;
                    s.last_error = None;
                }
                Ok(_) => s.last_error = None,
                Err(errs) => {
                    let msg = errs
                        .iter()
                        .map(|(k, m)| format!("{k}: {m}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    if s.last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(tls = %self.what, error = %msg, "TLS files changed but do not load: keeping the previous ones");
                        s.last_error = Some(msg);
                    }
                }
            }
        }
        s.current.clone()
    }
}

fn build_client(s: &ClientTlsSettings) -> Result<(Arc<ClientConfig>, [u8; 32]), Vec<KeyError>> {
    let files = Files::read(&[
        ("ca_file", &s.ca_file),
        ("cert_file", &s.cert_file),
        ("key_file", &s.key_file),
    ])?;
    let one = || -> Result<ClientConfig, KeyError> {
        let roots = match files.get("ca_file") {
            Some((p, pem)) => roots("ca_file", p, pem)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let provider = provider();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| ("ca_file", format!("{e}")))?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ("ca_file", e.to_string()))?;
        let builder = if s.verify_hostname {
            builder.with_webpki_verifier(verifier)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoHostname(verifier)))
        };
        match (files.get("cert_file"), files.get("key_file")) {
            (Some((cp, cpem)), Some((kp, kpem))) => builder
                .with_client_auth_cert(
                    certs("cert_file", cp, cpem)?,
                    private_key("key_file", kp, kpem)?,
                )
                .map_err(|e| ("key_file", format!("does not go with cert_file ({e})"))),
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(_), None) => Err(("key_file", "is required with cert_file".into())),
            (None, Some(_)) => Err(("cert_file", "is required with key_file".into())),
        }
    };
    let cfg = one().map_err(|e| vec![e])?;
    Ok((Arc::new(cfg), files.digest()))
}

fn build_server(s: &ServerTlsSettings) -> Result<(Arc<ServerConfig>, [u8; 32]), Vec<KeyError>> {
    let files = Files::read(&[
        ("cert_file", &Some(s.cert_file.clone())),
        ("key_file", &Some(s.key_file.clone())),
        ("client_ca_file", &s.client_ca_file),
    ])?;
    let one = || -> Result<ServerConfig, KeyError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("cert_file", e.to_string()))?;
        let builder = match files.get("client_ca_file") {
            Some((p, pem)) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots("client_ca_file", p, pem)?),
                    provider,
                )
                .build()
                .map_err(|e| ("client_ca_file", e.to_string()))?,
            ),
            None => builder.with_no_client_auth(),
        };
        let (cp, cpem) = files
            .get("cert_file")
            .ok_or(("cert_file", "is required".to_string()))?;
        let (kp, kpem) = files
            .get("key_file")
            .ok_or(("key_file", "is required".to_string()))?;
        builder
            .with_single_cert(
                certs("cert_file", cp, cpem)?,
                private_key("key_file", kp, kpem)?,
            )
            .map_err(|e| ("key_file", format!("does not go with cert_file ({e})")))
    };
    let cfg = one().map_err(|e| vec![e])?;
    Ok((Arc::new(cfg), files.digest()))
}

/// Chain verification without the name check (`verify_hostname = false`).
#[derive(Debug)]
struct NoHostname(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for NoHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (and validity period) before the name, so a name error
        // means everything else passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// statemirror's TLS client side for one backend: cheap to clone, reloads on rotation.
#[derive(Clone)]
pub struct ClientTls(Arc<ClientInner>);

struct ClientInner {
    /// The name to send and verify; an error for a host that is no name ([`ClientTls::for_address`]).
    server_name: Result<ServerName<'static>, String>,
    /// `server_name` was configured: it holds for every server these settings reach.
    fixed_name: bool,
    verify_hostname: bool,
    /// Shared by every server of one backend (a Sentinel set and the servers it names).
    config: Arc<Reloading<ClientConfig>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.0.server_name)
            .field("verify_hostname", &self.0.verify_hostname)
            .finish()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for ClientTls {}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl ClientTls {
    /// Reads and checks the files now (`check-config` sees every problem). `address` is
    /// the backend's `host:port`: its host is the default SNI and verified name.
    pub fn new(s: &ClientTlsSettings, address: &str) -> Result<Self, Vec<KeyError>> {
        let name = s
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(address).to_string());
        let server_name = ServerName::try_from(name.clone()).map_err(|e| {
            vec![(
                "server_name",
                format!("{name:?} is not a DNS name or an IP address ({e})"),
            )]
        })?;
        let settings = s.clone();
        let config = Reloading::new(
            format!("client of {address}"),
            Box::new(move || build_client(&settings)),
        )?;
        Ok(Self(Arc::new(ClientInner {
            server_name: Ok(server_name),
            fixed_name: s.server_name.is_some(),
            verify_hostname: s.verify_hostname,
            config: Arc::new(config),
        })))
    }

    /// The same settings and files (and their rotation) for another server, verified
    /// against `address`'s host (a DNS name, or an IP address against the certificate's IP
    /// SANs) unless `server_name` is set, which then holds for every server. For servers
    /// only known at run time: the master a Sentinel names, each sentinel of a set.
    pub fn for_address(&self, address: &str) -> ClientTls {
        if self.0.fixed_name {
            return self.clone();
        }
        let host = host_of(address);
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("TLS: {host:?} is not a DNS name or an IP address ({e})"));
        ClientTls(Arc::new(ClientInner {
            server_name,
            fixed_name: false,
            verify_hostname: self.0.verify_hostname,
            config: self.0.config.clone(),
        }))
    }

    pub fn verify_hostname(&self) -> bool {
        self.0.verify_hostname
    }

    /// The TLS handshake over a connected (and tuned) socket, with the current config.
    /// On failure, the error's text is [`explain`]ed and counted under `peer`.
    pub async fn connect(&self, tcp: TcpStream, peer: &str) -> Result<Stream, String> {
        let name = self.0.server_name.clone()?;
        let connector = tokio_rustls::TlsConnector::from(self.0.config.current());
        match connector.connect(name, tcp).await {
            Ok(s) => Ok(Stream::Tls(Box::new(s.into()))),
            Err(e) => {
                let (reason, msg) = explain_handshake(&e);
                metrics::counter!(TLS_ERRORS_TOTAL, "peer" => peer.to_string(), "reason" => reason)
                    .increment(1);
                Err(msg)
            }
        }
    }
}

/// A TLS listener's config, reloaded on rotation.
#[derive(Clone)]
pub struct ServerTls(Arc<Reloading<ServerConfig>>);

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    pub fn new(s: &ServerTlsSettings, what: &str) -> Result<Self, Vec<KeyError>> {
        let settings = s.clone();
        Ok(Self(Arc::new(Reloading::new(
            what.to_string(),
            Box::new(move || build_server(&settings)),
        )?)))
    }

    /// The server side of the handshake on an accepted socket.
    pub async fn accept(&self, tcp: TcpStream) -> Result<Stream, String> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.0.current());
        match acceptor.accept(tcp).await {
            Ok(s) => Ok(Stream::Tls(Box::new(s.into()))),
            Err(e) => {
                let (reason, msg) = explain_handshake(&e);
                metrics::counter!(TLS_ERRORS_TOTAL, "peer" => "client", "reason" => reason)
                    .increment(1);
                Err(msg)
            }
        }
    }
}

fn explain_handshake(e: &io::Error) -> (&'static str, String) {
    if let Some(x) = explain(e) {
        return x;
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => (
            "closed",
            "TLS handshake: the peer closed the connection (not a TLS port, or it rejected us)"
                .into(),
        ),
        _ => ("io", format!("TLS handshake: {e}")),
    }
}

/// A short reason code (for metrics) and a message for a TLS failure inside `e`, or `None`
/// when `e` is not a TLS error.
pub fn explain(e: &io::Error) -> Option<(&'static str, String)> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(explain_rustls(inner))
}

/// `DnsName("a.example")` → `a.example`, `IpAddress(10.0.0.1)` → `10.0.0.1` (rustls
/// formats the names a certificate presents with `Debug`).
fn bare_name(p: &str) -> &str {
    if let (Some(a), Some(b)) = (p.find('"'), p.rfind('"')) {
        if b > a {
            return &p[a + 1..b];
        }
    }
    match (p.find('('), p.rfind(')')) {
        (Some(a), Some(b)) if b > a => &p[a + 1..b],
        _ => p,
    }
}

pub fn explain_rustls(e: &rustls::Error) -> (&'static str, String) {
    use rustls::Error as E;
    use CertificateError as C;
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => (
                "unknown_ca",
                "TLS: unknown CA (the certificate is not signed by a trusted CA: check ca_file)"
                    .into(),
            ),
            C::Expired | C::ExpiredContext { .. } => ("expired", "TLS: certificate expired".into()),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                ("not_yet_valid", "TLS: certificate not valid yet".into())
            }
            C::NotValidForName => ("hostname_mismatch", "TLS: hostname mismatch".into()),
            C::NotValidForNameContext {
                expected,
                presented,
            } => (
                "hostname_mismatch",
                format!(
                    "TLS: hostname mismatch (certificate is for {}, expected {})",
                    if presented.is_empty() {
                        "no name".to_string()
                    } else {
                        presented
                            .iter()
                            .map(|p| bare_name(p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    expected.to_str()
                ),
            ),
            C::Revoked => ("revoked", "TLS: certificate revoked".into()),
            C::BadSignature => ("bad_certificate", "TLS: bad certificate signature".into()),
            other => (
                "bad_certificate",
                format!("TLS: invalid certificate ({other:?})"),
            ),
        },
        E::NoCertificatesPresented => (
            "no_client_certificate",
            "TLS: the peer presented no certificate (a client certificate is required)".into(),
        ),
        E::AlertReceived(a) => match a {
            AlertDescription::CertificateRequired => (
                "client_certificate_required",
                "TLS: the server requires a client certificate (set cert_file and key_file)".into(),
            ),
            AlertDescription::UnknownCA => (
                "peer_unknown_ca",
                "TLS: the peer does not trust our certificate (unknown CA)".into(),
            ),
            AlertDescription::CertificateExpired => (
                "peer_says_expired",
                "TLS: the peer says our certificate expired".into(),
            ),
            AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => (
                "peer_rejected_certificate",
                format!("TLS: the peer rejected our certificate ({a:?})"),
            ),
            other => ("alert", format!("TLS: the peer sent alert {other:?}")),
        },
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => (
            "not_tls",
            format!("TLS: the peer does not speak TLS (a plain-text port?): {e}"),
        ),
        other => ("other", format!("TLS: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bare_and_hosts_split() {
        assert_eq!(bare_name("DnsName(\"db.example.com\")"), "db.example.com");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(bare_name("plain"), "plain");
        assert_eq!(host_of("redis.example:6380"), "redis.example");
        assert_eq!(host_of("[::1]:6380"), "::1");
    }

    #[test]
    fn other_servers_are_verified_against_their_own_host() {
        let t = ClientTls::new(&ClientTlsSettings::default(), "s1.example:26379").unwrap();
        let m = t.for_address("10.0.0.7:6379");
        assert!(matches!(m.0.server_name, Ok(ServerName::IpAddress(_))));
        assert!(
            Arc::ptr_eq(&t.0.config, &m.0.config),
            "one config, one rotation"
        );
        let v6 = t.for_address("[fd00::1]:6379");
        assert!(matches!(v6.0.server_name, Ok(ServerName::IpAddress(_))));
        let fixed = ClientTlsSettings {
            server_name: Some("redis.example".into()),
            ..Default::default()
        };
        let t = ClientTls::new(&fixed, "s1.example:26379").unwrap();
        let m = t.for_address("10.0.0.7:6379");
        assert!(
            matches!(&m.0.server_name, Ok(ServerName::DnsName(d)) if d.as_ref() == "redis.example")
        );
    }

    #[test]
    fn errors_are_explained() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(explain_rustls(&e).0, "unknown_ca");
        let io = io::Error::new(io::ErrorKind::InvalidData, e);
        assert!(explain(&io).is_some_and(|(_, m)| m.contains("unknown CA")));
        assert!(explain(&io::Error::other("x")).is_none());
    }
}
