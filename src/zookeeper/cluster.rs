//! The cluster-wide freeze state and member list on the ZooKeeper leader ensemble (see
//! `replication::cluster`):
//! - `/statemirror/cluster/maintenance`: JSON `{epoch, frozen, by, at_ms}`, changed by
//!   compare-and-set on the znode version, so two freezes at once get two epochs;
//! - `/statemirror/cluster/members/<node>`: the member's JSON entry, an **ephemeral** znode of
//!   the sidecar's own session (timeout `member_ttl_ms`): it goes when the session expires;
//! - `/statemirror/cluster/resync-lease-<protocol>`: the resync lease
//!   (`replication::cluster::Lease`), an ephemeral znode of the same session holding the
//!   holder's name: it is held while that session lives and the znode is not deleted;
//! - `/statemirror/cluster/clean/<node>`: the node's clean-stop record
//!   (`zookeeper::generation`).
//!
//! Everything under `/statemirror` is left out of mirroring, resync and verify (`PathFilter`).

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::client::{Call, ZkConn};
use super::generation::ROOT;
use super::jute::Record;
use super::proto::records::{
    Acl, CreateRequest, DeleteRequest, GetChildrenRequest, GetChildrenResponse, GetDataRequest,
    GetDataResponse, Id, SetDataRequest,
};
use super::proto::{create_mode, err, err_name, op, perms};
use crate::config::{ResolvedZk, Secret, ZooKeeperConfig};
use crate::replication::cluster::{now_ms, ClusterStore, FreezeState, Member, MemberReport};
use crate::replication::resync::BoxFuture;

const DIR: &str = "/statemirror/cluster";
const STATE: &str = "/statemirror/cluster/maintenance";
const MEMBERS: &str = "/statemirror/cluster/members";

fn member_path(node: &str) -> String {
    format!("{MEMBERS}/{node}")
}

fn lease_path(name: &str) -> String {
    format!("{DIR}/resync-lease-{name}")
}

/// The lease's holder and znode (version, owning session), `None` when there is none.
async fn read_lease(c: &mut ZkConn, path: &str) -> Result<Option<(String, i32, i64)>, String> {
    let (e, body) = c.call(get_data(path)).await.map_err(|e| e.to_string())?;
    match e {
        err::OK => {
            let r = GetDataResponse::from_bytes(&body).map_err(|e| e.to_string())?;
            let holder = r
                .data
                .as_ref()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .unwrap_or_default();
            Ok(Some((holder, r.stat.version, r.stat.ephemeral_owner)))
        }
        err::NO_NODE => Ok(None),
        e => Err(format!("getData {path}: {}", err_name(e))),
    }
}

pub struct ZkClusterStore {
    servers: crate::zookeeper::endpoint::ZkServers,
    auth: Option<Secret>,
    timeout: Duration,
    ttl_ms: u64,
    max_frame: usize,
    /// The sidecar's own session (its member znode is ephemeral to it), and the session id
    /// that created that znode.
    conn: Mutex<(Option<ZkConn>, i64)>,
}

impl ZkClusterStore {
    pub fn new(r: &ResolvedZk, cfg: &ZooKeeperConfig, timeout: Duration, ttl_ms: u64) -> Self {
        Self {
            servers: r.leader.clone(),
            auth: r.follower_auth.clone(),
            timeout,
            ttl_ms,
            max_frame: cfg.max_frame_bytes,
            conn: Mutex::new((None, 0)),
        }
    }

    /// Runs `f` on the kept session (opened when needed, dropped on any error).
    async fn with_conn<T>(
        &self,
        f: impl for<'c> FnOnce(&'c mut ZkConn, &'c mut i64) -> BoxFuture<'c, Result<T, String>>,
    ) -> Result<T, String> {
        let mut guard = self.conn.lock().await;
        let (conn, owner) = &mut *guard;
        let r = tokio::time::timeout(self.timeout, async {
            if conn.is_none() {
                let c = ZkConn::connect(
                    &self.servers,
                    0,
                    self.timeout,
                    self.ttl_ms.min(i32::MAX as u64) as i32,
                    self.auth.as_ref(),
                    self.max_frame,
                )
                .await
                .map_err(|e| e.to_string())?;
                *conn = Some(c);
            }
            let c = conn.as_mut().ok_or("no session")?;
            f(c, owner).await
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        if r.is_err() {
            *conn = None;
        }
        r
    }
}

fn open_acl() -> Vec<Acl> {
    vec![Acl {
        perms: perms::ALL,
        id: Id {
            scheme: "world".into(),
            id: "anyone".into(),
        },
    }]
}

fn create(path: &str, data: Option<Bytes>, flags: i32) -> Call {
    Call::new(
        op::CREATE,
        &CreateRequest {
            path: path.into(),
            data,
            acl: open_acl(),
            flags,
        },
    )
}

fn get_data(path: &str) -> Call {
    Call::new(
        op::GET_DATA,
        &GetDataRequest {
            path: path.into(),
            watch: false,
        },
    )
}

/// Creates the persistent parents (an existing one is fine).
async fn ensure_parents(c: &mut ZkConn) -> Result<(), String> {
    let calls = [
        create(ROOT, None, create_mode::PERSISTENT),
        create(DIR, None, create_mode::PERSISTENT),
        create(MEMBERS, None, create_mode::PERSISTENT),
    ];
    for (e, _) in c.call_many(&calls).await.map_err(|e| e.to_string())? {
        if e != err::OK && e != err::NODE_EXISTS {
            return Err(format!("create {DIR}: {}", err_name(e)));
        }
    }
    Ok(())
}

/// The state and the znode version it was read at (`None` when there is no node).
async fn read_state(c: &mut ZkConn) -> Result<(FreezeState, Option<i32>), String> {
    let (e, body) = c.call(get_data(STATE)).await.map_err(|e| e.to_string())?;
    match e {
        err::OK => {
            let r = GetDataResponse::from_bytes(&body).map_err(|e| e.to_string())?;
            let st = r
                .data
                .as_ref()
                .and_then(|d| serde_json::from_slice(d).ok())
                .unwrap_or_default();
            Ok((st, Some(r.stat.version)))
        }
        err::NO_NODE => Ok((FreezeState::default(), None)),
        e => Err(format!("getData {STATE}: {}", err_name(e))),
    }
}

impl ClusterStore for ZkClusterStore {
    fn backend(&self) -> &'static str {
        "zookeeper"
    }

    fn read(&self) -> BoxFuture<'_, Result<FreezeState, String>> {
        Box::pin(self.with_conn(|c, _| Box::pin(async move { Ok(read_state(c).await?.0) })))
    }

    fn set<'a>(&'a self, frozen: bool, by: &'a str) -> BoxFuture<'a, Result<u64, String>> {
        // Owned: the session closure's future may only borrow the session.
        let by = by.to_string();
        Box::pin(self.with_conn(move |c, _| {
            Box::pin(async move {
                // Compare-and-set on the version: another node's freeze in between makes this
                // one retry on top of it, so every change gets its own epoch.
                for _ in 0..20 {
                    let (old, version) = read_state(c).await?;
                    let new = FreezeState {
                        epoch: old.epoch + 1,
                        frozen,
                        by: by.clone(),
                        at_ms: now_ms(),
                    };
                    let data = Bytes::from(serde_json::to_vec(&new).map_err(|e| e.to_string())?);
                    let call = match version {
                        Some(v) => Call::new(
                            op::SET_DATA,
                            &SetDataRequest {
                                path: STATE.into(),
                                data: Some(data),
                                version: v,
                            },
                        ),
                        None => {
                            ensure_parents(c).await?;
                            create(STATE, Some(data), create_mode::PERSISTENT)
                        }
                    };
                    match c.call(call).await.map_err(|e| e.to_string())?.0 {
                        err::OK => return Ok(new.epoch),
                        err::BAD_VERSION | err::NODE_EXISTS | err::NO_NODE => continue,
                        e => return Err(format!("{STATE}: {}", err_name(e))),
                    }
                }
                Err(format!("{STATE}: too many concurrent changes"))
            })
        }))
    }

    fn heartbeat<'a>(&'a self, m: &'a MemberReport) -> BoxFuture<'a, Result<(), String>> {
        let path = member_path(&m.node);
        let json = serde_json::to_vec(m).map_err(|e| e.to_string());
        Box::pin(self.with_conn(move |c, owner| {
            Box::pin(async move {
                let data = Bytes::from(json?);
                if *owner == c.session.id {
                    let set = Call::new(
                        op::SET_DATA,
                        &SetDataRequest {
                            path: path.clone(),
                            data: Some(data.clone()),
                            version: -1,
                        },
                    );
                    match c.call(set).await.map_err(|e| e.to_string())?.0 {
                        err::OK => return Ok(()),
                        err::NO_NODE => {}
                        e => return Err(format!("setData {path}: {}", err_name(e))),
                    }
                }
                // A new session (or the node is gone): replace a node an old session of ours
                // left (it would vanish when that session expires) with one of this session.
                ensure_parents(c).await?;
                let calls = [
                    Call::new(
                        op::DELETE,
                        &DeleteRequest {
                            path: path.clone(),
                            version: -1,
                        },
                    ),
                    create(&path, Some(data), create_mode::EPHEMERAL),
                ];
                let r = c.call_many(&calls).await.map_err(|e| e.to_string())?;
                match r.get(1).map(|(e, _)| *e) {
                    Some(err::OK) => {
                        *owner = c.session.id;
                        Ok(())
                    }
                    Some(e) => Err(format!("create {path}: {}", err_name(e))),
                    None => Err("short reply".into()),
                }
            })
        }))
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, String>> {
        Box::pin(self.with_conn(|c, _| {
            Box::pin(async move {
                let list = Call::new(
                    op::GET_CHILDREN,
                    &GetChildrenRequest {
                        path: MEMBERS.into(),
                        watch: false,
                    },
                );
                let (e, body) = c.call(list).await.map_err(|e| e.to_string())?;
                let names = match e {
                    err::OK => {
                        GetChildrenResponse::from_bytes(&body)
                            .map_err(|e| e.to_string())?
                            .children
                    }
                    err::NO_NODE => return Ok(Vec::new()),
                    e => return Err(format!("getChildren {MEMBERS}: {}", err_name(e))),
                };
                let calls: Vec<Call> = names.iter().map(|n| get_data(&member_path(n))).collect();
                let now = now_ms() as i64;
                let mut out = Vec::new();
                for (e, body) in c.call_many(&calls).await.map_err(|e| e.to_string())? {
                    if e != err::OK {
                        continue; // expired between the two reads
                    }
                    let Ok(r) = GetDataResponse::from_bytes(&body) else {
                        continue;
                    };
                    let Some(report) = r
                        .data
                        .as_ref()
                        .and_then(|d| serde_json::from_slice::<MemberReport>(d).ok())
                    else {
                        continue;
                    };
                    out.push(Member {
                        // mtime is the ensemble's clock; this one's may differ a little.
                        heartbeat_age_ms: (now - r.stat.mtime).max(0) as u64,
                        report,
                    });
                }
                Ok(out)
            })
        }))
    }

    fn leave<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        let path = member_path(node);
        Box::pin(self.with_conn(move |c, _| {
            Box::pin(async move {
                let del = Call::new(op::DELETE, &DeleteRequest { path, version: -1 });
                c.call(del).await.map_err(|e| e.to_string()).map(|_| ())
            })
        }))
    }

    fn lease_acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        let (path, holder) = (lease_path(name), holder.to_string());
        Box::pin(self.with_conn(move |c, _| {
            Box::pin(async move {
                ensure_parents(c).await?;
                for _ in 0..5 {
                    let data = Bytes::from(holder.clone().into_bytes());
                    let (e, _) = c
                        .call(create(&path, Some(data), create_mode::EPHEMERAL))
                        .await
                        .map_err(|e| e.to_string())?;
                    match e {
                        err::OK => return Ok(None),
                        err::NODE_EXISTS => {}
                        e => return Err(format!("create {path}: {}", err_name(e))),
                    }
                    match read_lease(c, &path).await? {
                        None => continue, // its session ended in between
                        Some((h, _, owner)) if h == holder && owner == c.session.id => {
                            return Ok(None)
                        }
                        // Left by an earlier session of ours: replaced by one of this session.
                        Some((h, version, _)) if h == holder => {
                            let del = Call::new(
                                op::DELETE,
                                &DeleteRequest {
                                    path: path.clone(),
                                    version,
                                },
                            );
                            c.call(del).await.map_err(|e| e.to_string())?;
                        }
                        Some((h, _, _)) => return Ok(Some(h)),
                    }
                }
                Err(format!("{path}: keeps changing"))
            })
        }))
    }

    fn lease_renew<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>> {
        let (path, holder) = (lease_path(name), holder.to_string());
        // Held without a break as long as the session that created it lives: a new session
        // (the old one dropped on an error) no longer holds it.
        Box::pin(self.with_conn(move |c, _| {
            Box::pin(async move {
                Ok(matches!(read_lease(c, &path).await?,
                    Some((h, _, owner)) if h == holder && owner == c.session.id))
            })
        }))
    }

    fn lease_release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        let (path, holder) = (lease_path(name), holder.to_string());
        Box::pin(self.with_conn(move |c, _| {
            Box::pin(async move {
                if let Some((h, version, _)) = read_lease(c, &path).await? {
                    if h == holder {
                        let del = Call::new(op::DELETE, &DeleteRequest { path, version });
                        c.call(del).await.map_err(|e| e.to_string())?;
                    }
                }
                Ok(())
            })
        }))
    }
}
