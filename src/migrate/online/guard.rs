//! Is the leader the migration reads from still the one it started with? Checked after every
//! leader read and before anything read is written at the destination.
//!
//! A leader that restarted may have lost data (killed without persistence, restored from an
//! old backup, a fresh ensemble): its components then read as absent or old, and copying
//! that would *delete* or roll back the destination, which may now hold the only good copy.
//! The follower mirror gives up in that case too (`redis::mirror`, `redis::converge`). Redis:
//! the server's `run_id` changed (a Sentinel switch counts: the new master may lack the old
//! one's last writes). ZooKeeper: the ensemble's history went back (a reply's zxid, after a
//! `sync`, below the highest seen).

use std::time::Duration;

use crate::config::{RedisBackend, Secret};
use crate::redis::backend::Conn;
use crate::zookeeper::client::{Call, ZkConn};
use crate::zookeeper::endpoint::ZkServers;
use crate::zookeeper::proto::op;
use crate::zookeeper::proto::records::{GetDataRequest, PathRequest};

/// Why a check did not pass.
pub enum Leader {
    /// The leader could not be asked (down, timed out): like a failed read, retried.
    Unavailable(String),
    /// The leader is not the one read before: nothing more may be copied from it.
    Changed(String),
}

pub enum LeaderGuard {
    Redis {
        backend: RedisBackend,
        timeout: Duration,
        conn: Option<Conn>,
        run_id: Option<String>,
    },
    ZooKeeper {
        servers: ZkServers,
        auth: Option<Secret>,
        timeout: Duration,
        conn: Option<ZkConn>,
        /// Highest zxid seen (0: none yet).
        zxid: i64,
    },
}

impl LeaderGuard {
    pub fn redis(backend: RedisBackend, timeout: Duration) -> Self {
        LeaderGuard::Redis {
            backend,
            timeout,
            conn: None,
            run_id: None,
        }
    }

    pub fn zookeeper(servers: ZkServers, auth: Option<Secret>, timeout: Duration) -> Self {
        LeaderGuard::ZooKeeper {
            servers,
            auth,
            timeout,
            conn: None,
            zxid: 0,
        }
    }

    /// Ok when the leader is the one the migration has been reading (the first check
    /// learns it).
    pub async fn check(&mut self) -> Result<(), Leader> {
        match self {
            LeaderGuard::Redis {
                backend,
                timeout,
                conn,
                run_id,
            } => {
                let id = redis_run_id(backend, *timeout, conn).await?;
                match run_id {
                    Some(old) if *old != id => Err(Leader::Changed(
                        "the leader restarted or was switched (new run_id): it may have lost \
                         data, so nothing more is copied from it"
                            .into(),
                    )),
                    _ => {
                        *run_id = Some(id);
                        Ok(())
                    }
                }
            }
            LeaderGuard::ZooKeeper {
                servers,
                auth,
                timeout,
                conn,
                zxid,
            } => {
                let now = zk_zxid(servers, auth.as_ref(), *timeout, conn).await?;
                if now < *zxid {
                    return Err(Leader::Changed(format!(
                        "the leader's history went back (zxid {now:#x} after {:#x}): it may \
                         have lost data, so nothing more is copied from it",
                        *zxid
                    )));
                }
                *zxid = now;
                Ok(())
            }
        }
    }
}

async fn redis_run_id(
    backend: &RedisBackend,
    timeout: Duration,
    conn: &mut Option<Conn>,
) -> Result<String, Leader> {
    let unavailable = |e: String| Leader::Unavailable(format!("leader {}: {e}", backend.address));
    if conn.as_ref().is_some_and(Conn::is_stale) {
        *conn = None;
    }
    if conn.is_none() {
        let c = Conn::connect(backend, timeout)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        *conn = Some(c);
    }
    let Some(c) = conn.as_mut() else {
        return Err(unavailable("no connection".into()));
    };
    let r = tokio::time::timeout(
        timeout.max(Duration::from_secs(30)),
        crate::redis::mirror::leader_run_id(c),
    )
    .await;
    match r {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e)) => {
            *conn = None;
            Err(unavailable(e.to_string()))
        }
        Err(_) => {
            *conn = None;
            Err(unavailable("timed out".into()))
        }
    }
}

/// The leader's last processed zxid after a `sync` (the header zxid of a read after it).
async fn zk_zxid(
    servers: &ZkServers,
    auth: Option<&Secret>,
    timeout: Duration,
    conn: &mut Option<ZkConn>,
) -> Result<i64, Leader> {
    let unavailable = |e: String| Leader::Unavailable(format!("leader {}: {e}", servers.join(",")));
    if conn.as_ref().is_none_or(ZkConn::broken) {
        let c = ZkConn::connect(servers, 0, timeout, 30_000, auth, 1 << 20)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        *conn = Some(c);
    }
    let Some(c) = conn.as_mut() else {
        return Err(unavailable("no connection".into()));
    };
    let calls = [
        Call::new(op::SYNC, &PathRequest { path: "/".into() }),
        Call::new(
            op::GET_DATA,
            &GetDataRequest {
                path: "/".into(),
                watch: false,
            },
        ),
    ];
    let r = tokio::time::timeout(timeout.max(Duration::from_secs(30)), c.call_many_z(&calls))
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match r {
        Ok(replies) => match replies.last() {
            Some(rep) if rep.err == 0 => Ok(rep.zxid),
            Some(rep) => Err(unavailable(format!("getData /: error {}", rep.err))),
            None => Err(unavailable("no reply".into())),
        },
        Err(e) => {
            *conn = None;
            Err(unavailable(e))
        }
    }
}
