//! Certificates made at test time (rcgen): a CA that signs server and client certificates,
//! for the TLS tests of both protocols.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("CA");
        let pem = cert.pem();
        Ca { cert, key, pem }
    }

    /// (cert PEM, key PEM) for `names`, valid now unless `expired`.
    pub fn leaf(&self, cn: &str, names: &[&str], expired: bool) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS client of a statemirror listener at `addr`, trusting `ca_file` and verifying the
/// name `localhost` (`cert`: certificate + key files for mutual TLS). The handshake is
/// bounded (10 s).
#[allow(dead_code)]
pub async fn tls_client(
    addr: std::net::SocketAddr,
    ca_file: &std::path::Path,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add");
    }
    let b = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let cfg = match cert {
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .expect("cert")
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_file(k).expect("key"),
            )
            .expect("client cert"),
        None => b.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connect = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp);
    tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}
