//! The generation marker on ZooKeeper (see `replication::generation`): the znode
//! `/statemirror/generation` on each ensemble, never mirrored, resynced or compared
//! (`PathFilter` leaves `/statemirror` out). Also the recovery of a leader ensemble that lost
//! data from the follower (`statemirror recover --from-follower`).

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::client::{Call, ZkConn};
use super::jute::Record;
use super::mirror::PathFilter;
use super::proto::records::{
    Acl, CreateRequest, DeleteRequest, GetDataRequest, GetDataResponse, Id, SetDataRequest,
};
use super::proto::{create_mode, err, err_name, op, perms};
use super::tree::{Session, State, Walk};
use crate::config::{ResolvedZk, Secret, ZooKeeperConfig};
use crate::replication::generation::{judge, CleanStop, Markers, Pair, Recovery, Verdict};
use crate::replication::resync::BoxFuture;

/// Where the marker lives; everything under `ROOT` is statemirror's own.
pub const ROOT: &str = "/statemirror";
pub const PATH: &str = "/statemirror/generation";
const CLUSTER: &str = "/statemirror/cluster";
/// Clean-stop records, one persistent node per sidecar (see `replication::generation`).
const CLEAN: &str = "/statemirror/cluster/clean";

fn clean_path(node: &str) -> String {
    format!("{CLEAN}/{node}")
}

pub struct ZkMarkers {
    leader: Mutex<Session>,
    follower: Mutex<Session>,
    servers: (
        crate::zookeeper::endpoint::ZkServers,
        crate::zookeeper::endpoint::ZkServers,
    ),
    auth: Option<Secret>,
    timeout: Duration,
    max_frame: usize,
}

impl ZkMarkers {
    pub fn new(r: &ResolvedZk, cfg: &ZooKeeperConfig) -> Option<Self> {
        let follower = r.follower.clone()?;
        Some(Self {
            leader: Mutex::new(Session::new(
                "leader",
                r.leader.clone(),
                r.follower_auth.clone(),
                cfg,
            )),
            follower: Mutex::new(Session::new(
                "follower",
                follower.clone(),
                r.follower_auth.clone(),
                cfg,
            )),
            servers: (r.leader.clone(), follower),
            auth: r.follower_auth.clone(),
            timeout: Duration::from_millis(cfg.connect_timeout_ms.max(1000)),
            max_frame: cfg.max_frame_bytes,
        })
    }

    async fn connect(
        &self,
        servers: &crate::zookeeper::endpoint::ZkServers,
    ) -> Result<ZkConn, String> {
        ZkConn::connect(
            servers,
            0,
            self.timeout,
            10_000,
            self.auth.as_ref(),
            self.max_frame,
        )
        .await
        .map_err(|e| e.to_string())
    }

    async fn put_clean_now(&self, node: &str, rec: &CleanStop) -> Result<(), String> {
        let mut c = self.connect(&self.servers.0).await?;
        let path = clean_path(node);
        let data = Bytes::from(serde_json::to_vec(rec).map_err(|e| e.to_string())?);
        put(&mut c, &[ROOT, CLUSTER, CLEAN], &path, data).await
    }

    async fn take_clean_now(&self, node: &str) -> Result<Option<CleanStop>, String> {
        let mut c = self.connect(&self.servers.0).await?;
        let path = clean_path(node);
        let get = Call::new(
            op::GET_DATA,
            &GetDataRequest {
                path: path.clone(),
                watch: false,
            },
        );
        let (e, body) = c.call(get).await.map_err(|e| e.to_string())?;
        let r = match e {
            err::OK => GetDataResponse::from_bytes(&body).map_err(|e| e.to_string())?,
            err::NO_NODE => return Ok(None),
            e => return Err(format!("getData {path}: {}", err_name(e))),
        };
        // Deleted at the version read: a record rewritten meanwhile is not used at all.
        let del = Call::new(
            op::DELETE,
            &DeleteRequest {
                path: path.clone(),
                version: r.stat.version,
            },
        );
        match c.call(del).await.map_err(|e| e.to_string())?.0 {
            err::OK => {}
            e => return Err(format!("delete {path}: {}", err_name(e))),
        }
        let rec = r
            .data
            .as_ref()
            .map(|d| serde_json::from_slice(d).map_err(|e| format!("{path}: {e}")))
            .transpose()?;
        Ok(rec)
    }

    async fn write_one(
        &self,
        servers: &crate::zookeeper::endpoint::ZkServers,
        g: u64,
    ) -> Result<(), String> {
        let mut c = ZkConn::connect(
            servers,
            0,
            self.timeout,
            10_000,
            self.auth.as_ref(),
            self.max_frame,
        )
        .await
        .map_err(|e| e.to_string())?;
        let data = Bytes::from(g.to_string());
        put(&mut c, &[ROOT], PATH, data).await
    }
}

/// Sets `path` to `data`, creating it (and `parents`, in order) where missing.
async fn put(c: &mut ZkConn, parents: &[&str], path: &str, data: Bytes) -> Result<(), String> {
    let mut calls: Vec<Call> = parents.iter().map(|p| create(p, None)).collect();
    calls.push(Call::new(
        op::SET_DATA,
        &SetDataRequest {
            path: path.into(),
            data: Some(data.clone()),
            version: -1,
        },
    ));
    let r = c.call_many(&calls).await.map_err(|e| e.to_string())?;
    match r.get(parents.len()).map(|(e, _)| *e) {
        Some(err::OK) => Ok(()),
        Some(err::NO_NODE) => match c.call(create(path, Some(data))).await {
            Ok((err::OK, _)) => Ok(()),
            Ok((e, _)) => Err(format!("create {path}: {}", err_name(e))),
            Err(e) => Err(e.to_string()),
        },
        Some(e) => Err(format!("setData {path}: {}", err_name(e))),
        None => Err("short reply".into()),
    }
}

fn create(path: &str, data: Option<Bytes>) -> Call {
    Call::new(
        op::CREATE,
        &CreateRequest {
            path: path.into(),
            data,
            acl: vec![Acl {
                perms: perms::ALL,
                id: Id {
                    scheme: "world".into(),
                    id: "anyone".into(),
                },
            }],
            flags: create_mode::PERSISTENT,
        },
    )
}

async fn read_one(s: &Mutex<Session>) -> Result<Option<u64>, String> {
    let mut s = s.lock().await;
    let r = s.read(&[PATH.to_string()]).await?;
    Ok(match r.first().map(|r| &r.state) {
        Some(State::Node(n)) => n
            .data
            .as_ref()
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse().ok()),
        _ => None,
    })
}

impl Markers for ZkMarkers {
    fn put_clean<'a>(
        &'a self,
        node: &'a str,
        rec: &'a CleanStop,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.put_clean_now(node, rec))
    }

    fn take_clean<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<CleanStop>, String>> {
        Box::pin(self.take_clean_now(node))
    }

    fn read(&self) -> BoxFuture<'_, Result<Pair, String>> {
        Box::pin(async move {
            let (l, f) = tokio::join!(read_one(&self.leader), read_one(&self.follower));
            Ok((l?, f?))
        })
    }

    fn write(&self, g: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.write_one(&self.servers.0, g).await?;
            self.write_one(&self.servers.1, g).await
        })
    }
}

/// Creates on the leader every persistent node of the follower (within the mirrored paths)
/// that the leader lacks, parents first, with its data and ACL; an existing node is never
/// touched (`NODEEXISTS`: a newer write wins). Same refusal rule as Redis's.
pub async fn recover_from_follower(
    r: &ResolvedZk,
    cfg: &ZooKeeperConfig,
    force: bool,
) -> Result<Recovery, String> {
    let markers = ZkMarkers::new(r, cfg).ok_or("no follower configured")?;
    let (lg, fg) = markers.read().await?;
    if judge(lg, fg) != Verdict::LeaderLost && !force {
        return Err(format!(
            "the follower is not known to be newer than the leader (leader generation {lg:?}, \
             follower {fg:?}): nothing to recover. Use --force to copy what the leader lacks \
             anyway"
        ));
    }
    let filter = PathFilter {
        include: cfg.include_paths.clone(),
        exclude: cfg.exclude_paths.clone(),
    };
    let mut leader = ZkConn::connect(
        &r.leader,
        0,
        markers.timeout,
        30_000,
        r.follower_auth.as_ref(),
        cfg.max_frame_bytes,
    )
    .await
    .map_err(|e| format!("leader: {e}"))?;
    let mut report = Recovery {
        leader_generation: lg,
        follower_generation: fg,
        ..Recovery::default()
    };
    let mut follower = markers.follower.lock().await;
    let mut walk = Walk::new(&filter);
    loop {
        let chunk = walk.next_chunk(500)?;
        if chunk.is_empty() {
            break;
        }
        let paths: Vec<String> = chunk.iter().map(|e| e.path.clone()).collect();
        let read = follower.read(&paths).await?;
        let mut calls = Vec::new();
        for (path, reading) in paths.iter().zip(&read) {
            walk.descend(path, reading, reading);
            if let (Some(n), true) = (reading.persistent(), super::tree::compared(&filter, path)) {
                calls.push(Call::new(
                    op::CREATE,
                    &CreateRequest {
                        path: path.clone(),
                        data: n.data.clone(),
                        acl: n.acl.clone(),
                        flags: create_mode::PERSISTENT,
                    },
                ));
            }
        }
        // Parents come before their children in the walk, and one session's requests run
        // in order: a created parent is there for its children in the same pipeline.
        for (e, _) in leader
            .call_many(&calls)
            .await
            .map_err(|e| format!("leader: {e}"))?
        {
            match e {
                err::OK => report.restored += 1,
                err::NODE_EXISTS => report.kept_on_leader += 1,
                e => return Err(format!("leader refused a create: {}", err_name(e))),
            }
        }
    }
    drop(follower);
    report.generation = lg.max(fg).unwrap_or(0) + 1;
    markers.write(report.generation).await?;
    Ok(report)
}
