//! A mixed ZooKeeper workload for fault tests: several `zookeeper-client` sessions creating,
//! overwriting and deleting persistent nodes in a small key space under `/<prefix>`,
//! writing NiFi component state the way NiFi's `ZooKeeperStateProvider` does (`setData` of
//! the binary state map, `create` on `NoNode`, versioned replaces), creating persistent
//! sequential nodes and committing `multi`s (create + setData), through whatever connect
//! string it is given.
//!
//! ZooKeeper's own answers to a lost race (`NoNode`, `NodeExists`, `BadVersion`,
//! `NotEmpty`) are outcomes, not failures: the server decided. Anything else (a connection
//! loss, an expired session, a timeout) is counted as failed, never fatal: the session is
//! dropped and a new one opened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::zk::zkc;
use statemirror::nifi::encode_binary;

/// Nodes `/<prefix>/n0 ..` the sessions share (so nodes are overwritten and deleted).
const KEYS: u64 = 30;
/// NiFi components `/nifi/components/<prefix>c0 ..`.
const COMPONENTS: u64 = 6;
/// Bound on opening a session and on each operation.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

pub struct ZkWorkload {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ZkWorkload {
    /// `sessions` sessions to `connect` (a connect string), nodes under `/<prefix>` and NiFi
    /// components named `<prefix>c<k>` (so phases can be told apart).
    pub fn start(connect: &str, prefix: &str, sessions: usize) -> ZkWorkload {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let handles = (0..sessions)
            .map(|t| {
                let (connect, prefix) = (connect.to_string(), prefix.to_string());
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut client: Option<zkc::Client> = None;
                    let mut i: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if client.is_none() {
                            match open(&connect, &prefix).await {
                                Some(c) => client = Some(c),
                                None => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    continue;
                                }
                            }
                        }
                        let Some(c) = client.as_ref() else { continue };
                        i += 1;
                        let r = tokio::time::timeout(OP_TIMEOUT, one_op(c, &prefix, t, i)).await;
                        match r {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                client = None;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        ZkWorkload {
            stop,
            ok,
            failed,
            tasks: handles,
        }
    }

    /// Stops every session and waits for them (each op is bounded by a timeout):
    /// (ok, failed).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A new session with the directories the workload writes under; `None` on any failure.
async fn open(connect: &str, prefix: &str) -> Option<zkc::Client> {
    let connector = zkc::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .with_connection_timeout(OP_TIMEOUT);
    let c = tokio::time::timeout(OP_TIMEOUT, connector.connect(connect))
        .await
        .ok()?
        .ok()?;
    let dirs = async {
        for d in [
            format!("/{prefix}"),
            format!("/{prefix}/seq"),
            format!("/{prefix}/multi"),
        ] {
            outcome(c.create(&d, b"", &persistent()).await.map(|_| ()))?;
        }
        Ok::<(), zkc::Error>(())
    };
    match tokio::time::timeout(OP_TIMEOUT, dirs).await {
        Ok(Ok(())) => Some(c),
        _ => None,
    }
}

fn persistent() -> zkc::CreateOptions<'static> {
    zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all())
}

/// `Ok` for success and for the server's answer to a lost race.
fn outcome(r: Result<(), zkc::Error>) -> Result<(), zkc::Error> {
    match r {
        Ok(())
        | Err(zkc::Error::NoNode)
        | Err(zkc::Error::NodeExists)
        | Err(zkc::Error::BadVersion)
        | Err(zkc::Error::NotEmpty) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One write chosen by `i`.
async fn one_op(c: &zkc::Client, p: &str, t: usize, i: u64) -> Result<(), zkc::Error> {
    let k = (i * 7 + t as u64) % KEYS;
    let node = |k: u64| format!("/{p}/n{k}");
    let value = format!("v{t}-{i}").into_bytes();
    let r = match i % 12 {
        // setData, or create where it is missing.
        0 | 1 => upsert(c, &node(k), &value).await,
        // create, or setData where it exists.
        2 => match c.create(&node(k), &value, &persistent()).await {
            Err(zkc::Error::NodeExists) => c.set_data(&node(k), &value, None).await.map(|_| ()),
            r => r.map(|_| ()),
        },
        3 => c.delete(&node((k + 5) % KEYS), None).await,
        4 => c.delete(&node((k + 11) % KEYS), None).await,
        5 | 6 => {
            let path = format!("/nifi/components/{p}c{}", k % COMPONENTS);
            nifi_set_state(c, &path, &nifi_state(t, i)).await
        }
        7 => {
            let path = format!("/nifi/components/{p}c{}", k % COMPONENTS);
            nifi_replace(c, &path, &nifi_state(t, i)).await
        }
        8 => {
            let seq = zkc::CreateMode::PersistentSequential.with_acls(zkc::Acls::anyone_all());
            c.create(&format!("/{p}/seq/s-"), &value, &seq)
                .await
                .map(|_| ())
        }
        9 => {
            let mut m = c.new_multi_writer();
            m.add_create(&format!("/{p}/multi/t{t}-{i}"), &value, &persistent())?;
            m.add_set_data(&format!("/{p}/multi"), &value, None)?;
            m.commit().await.map(|_| ()).map_err(zkc::Error::from)
        }
        // The multi's node from five rounds ago (keeps the tree bounded).
        10 => {
            let old = i.saturating_sub(61);
            c.delete(&format!("/{p}/multi/t{t}-{old}"), None).await
        }
        // A bigger value: 2..8 KiB.
        _ => {
            let big = vec![b'a' + (i % 26) as u8; 2048 * (1 + (i % 4) as usize)];
            upsert(c, &format!("/{p}/big{}", k % 3), &big).await
        }
    };
    outcome(r)
}

async fn upsert(c: &zkc::Client, path: &str, data: &[u8]) -> Result<(), zkc::Error> {
    match c.set_data(path, data, None).await {
        Err(zkc::Error::NoNode) => c.create(path, data, &persistent()).await.map(|_| ()),
        r => r.map(|_| ()),
    }
}

/// NiFi's binary state map of a ListS3-like component.
fn nifi_state(t: usize, i: u64) -> Vec<u8> {
    let ts = (1_700_000_000_000 + i).to_string();
    let key = format!("s3://bucket/key-{t}-{i}");
    encode_binary(&[
        ("listing.timestamp", ts.as_str()),
        ("id.0", key.as_str()),
        ("writer", &t.to_string()),
    ])
}

/// `ZooKeeperStateProvider.setState`: `setData(path, state, -1)`; on `NoNode`, create it
/// (its parents first when they are missing too), and on `NodeExists` (created meanwhile)
/// `setData` again.
pub async fn nifi_set_state(c: &zkc::Client, path: &str, data: &[u8]) -> Result<(), zkc::Error> {
    match c.set_data(path, data, None).await {
        Err(zkc::Error::NoNode) => nifi_create(c, path, data).await,
        r => r.map(|_| ()),
    }
}

async fn nifi_create(c: &zkc::Client, path: &str, data: &[u8]) -> Result<(), zkc::Error> {
    for _ in 0..3 {
        match c.create(path, data, &persistent()).await {
            Ok(_) => return Ok(()),
            Err(zkc::Error::NodeExists) => {
                return c.set_data(path, data, None).await.map(|_| ());
            }
            Err(zkc::Error::NoNode) => {
                let parent = &path[..path.rfind('/').unwrap_or(0)];
                c.mkdir(parent, &persistent()).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(zkc::Error::NoNode)
}

/// `ZooKeeperStateProvider.replace`: `setData` at the version read; a component that
/// has no state yet gets it created.
async fn nifi_replace(c: &zkc::Client, path: &str, data: &[u8]) -> Result<(), zkc::Error> {
    match c.get_data(path).await {
        Ok((_, stat)) => c.set_data(path, data, Some(stat.version)).await.map(|_| ()),
        Err(zkc::Error::NoNode) => nifi_create(c, path, data).await,
        Err(e) => Err(e),
    }
}
