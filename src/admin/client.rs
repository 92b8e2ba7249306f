//! A minimal HTTP/1.1 client for the admin API (the `statemirror maintenance` command, the
//! demo and the tests use it).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

pub use super::token::{discover, discover_token};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad admin URL {0:?}: expected http://host:port or https://host:port")]
    Url(String),
    #[error("cannot reach the admin API at {0}: {1}")]
    Connect(String, String),
    #[error("admin API request failed: {0}")]
    Http(String),
    #[error("admin API did not answer within {0:?}")]
    Timeout(Duration),
}

/// Environment variable naming the CA bundle that an `https://` admin URL's certificate
/// must chain to (default: the roots built into the binary).
pub const ADMIN_CA_ENV: &str = "STATEMIRROR_ADMIN_CA_FILE";

/// Sends one request; returns (status, body). `base` is `http://host:port` or
/// `https://host:port`.
pub async fn request(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    tokio::time::timeout(timeout, request_inner(base, method, path, token))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

async fn request_inner(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let (https, rest) = match base.strip_prefix("https://") {
        Some(r) => (true, Some(r)),
        None => (false, base.strip_prefix("http://")),
    };
    let authority = rest
        .map(|s| s.trim_end_matches('/'))
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .ok_or_else(|| ClientError::Url(base.to_string()))?;
    // Through the project's resolver: the static binary has no NSS for `getaddrinfo`.
    let stream = crate::resolve::connect(authority)
        .await
        .map_err(|e| ClientError::Connect(authority.to_string(), e.to_string()))?;
    let stream = if https {
        // The CA bundle of the admin listener's certificate: `STATEMIRROR_ADMIN_CA_FILE`, or
        // the roots built into the binary.
        let settings = crate::tls::ClientTlsSettings {
            ca_file: std::env::var_os(ADMIN_CA_ENV).map(Into::into),
            ..Default::default()
        };
        let tls = crate::tls::ClientTls::new(&settings, authority).map_err(|es| {
            let why = es
                .into_iter()
                .map(|(k, m)| format!("{ADMIN_CA_ENV} ({k}): {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            ClientError::Connect(authority.to_string(), why)
        })?;
        tls.connect(stream, authority)
            .await
            .map_err(|m| ClientError::Connect(authority.to_string(), m))?
    } else {
        crate::tls::Stream::Plain(stream)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority);
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
