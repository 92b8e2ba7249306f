//! "NiFi state in a backend", whatever the backend: enumerate component ids, read states
//! (decoded, with their version), write and delete them, all per batch.

use std::time::Duration;

use super::endpoint::Endpoint;
use super::redis::RedisProvider;
use super::zookeeper::ZkProvider;
use crate::config::Secret;
use crate::nifi::NifiState;

/// One component as read: `Ok(None)` when it has no state stored, `Err` when what is
/// stored cannot be decoded (named, never guessed).
pub type Read = Result<Option<NifiState>, String>;

/// Per component of a write: bytes written, or why not.
pub type PerComponent = Vec<Result<u64, String>>;

pub enum Provider {
    Redis(RedisProvider),
    ZooKeeper(ZkProvider),
}

impl Provider {
    /// A provider for `endpoint` (no connection is opened yet). `zk_auth`: `user:password`
    /// for ZooKeeper's digest scheme, when the nodes need it.
    pub fn new(endpoint: &Endpoint, timeout: Duration, zk_auth: Option<Secret>) -> Self {
        match endpoint {
            Endpoint::Redis { backend, prefix } => {
                Provider::Redis(RedisProvider::new(backend.clone(), prefix.clone(), timeout))
            }
            Endpoint::ZooKeeper { servers, root } => Provider::ZooKeeper(ZkProvider::new(
                servers.clone().into(),
                root.clone(),
                zk_auth,
                timeout,
            )),
        }
    }

    /// The destination holds no NiFi state: writes may try creating first.
    pub fn expect_empty(&mut self) {
        if let Provider::ZooKeeper(p) = self {
            p.create_first = true;
        }
    }

    pub async fn list(&mut self) -> Result<Vec<String>, String> {
        match self {
            Provider::Redis(p) => p.list().await,
            Provider::ZooKeeper(p) => p.list().await,
        }
    }

    pub async fn get_many(&mut self, ids: &[String]) -> Result<Vec<Read>, String> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Provider::Redis(p) => p.get_many(ids).await,
            Provider::ZooKeeper(p) => p.get_many(ids).await,
        }
    }

    pub async fn put_many(
        &mut self,
        states: &[(String, NifiState)],
    ) -> Result<PerComponent, String> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Provider::Redis(p) => p.put_many(states).await,
            Provider::ZooKeeper(p) => p.put_many(states).await,
        }
    }

    pub async fn delete_many(&mut self, ids: &[String]) -> Result<PerComponent, String> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Provider::Redis(p) => p.delete_many(ids).await,
            Provider::ZooKeeper(p) => p.delete_many(ids).await,
        }
    }
}
