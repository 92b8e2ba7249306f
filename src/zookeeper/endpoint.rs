//! One ZooKeeper ensemble as statemirror connects to it: its servers (the connect string)
//! and, with `[zookeeper] leader_tls`/`follower_tls`, the TLS config for each server.
//! Every connection statemirror opens to an ensemble goes through [`ZkServers::open`]:
//! plain TCP when the ensemble has no TLS config (as before, same cost), else TLS verified
//! against that server's own name.

use std::ops::Deref;
use std::sync::Arc;

use crate::tls::{ClientTls, ClientTlsSettings, KeyError, Stream};

/// An ensemble's servers and, when TLS is on, one [`ClientTls`] per server (the default
/// SNI and verified name is each server's own host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZkServers {
    pub list: Vec<String>,
    tls: Option<Arc<Vec<ClientTls>>>,
}

impl From<Vec<String>> for ZkServers {
    fn from(list: Vec<String>) -> Self {
        Self { list, tls: None }
    }
}

impl Deref for ZkServers {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.list
    }
}

impl serde::Serialize for ZkServers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.list.serialize(s)
    }
}

impl ZkServers {
    /// `list` with TLS per `settings` (files read and checked now).
    pub fn with_tls(
        list: Vec<String>,
        settings: &ClientTlsSettings,
    ) -> Result<Self, Vec<KeyError>> {
        let mut tls = Vec::with_capacity(list.len());
        for s in &list {
            tls.push(ClientTls::new(settings, s)?);
        }
        Ok(Self {
            list,
            tls: Some(Arc::new(tls)),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A tuned TCP connection to `server` (one of `list`), then the TLS handshake when the
    /// ensemble uses TLS. The error names the reason (a TLS error is explained: unknown CA,
    /// expired, name mismatch, …); callers prefix the server.
    pub async fn open(&self, server: &str) -> Result<Stream, OpenError> {
        let i = self.list.iter().position(|s| s == server);
        open(server, i.and_then(|i| self.tls_for(i))).await
    }

    /// The TLS config for the `i`th server; `None` for a plain ensemble.
    pub fn tls_for(&self, i: usize) -> Option<&ClientTls> {
        self.tls.as_ref().and_then(|t| t.get(i))
    }
}

/// A tuned TCP connection to `server`, then the TLS handshake with `tls` when given.
pub async fn open(server: &str, tls: Option<&ClientTls>) -> Result<Stream, OpenError> {
    let tcp = crate::listener::connect_backend(server)
        .await
        .map_err(OpenError::Io)?;
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(t) => t.connect(tcp, server).await.map_err(OpenError::Tls),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(std::io::Error),
    /// Already reads `TLS: <reason>` (see `crate::tls::explain`).
    #[error("{0}")]
    Tls(String),
}
