//! NiFi state in ZooKeeper, as `ZooKeeperStateProvider` keeps it: one persistent znode per
//! component at `<root>/components/<componentId>`, the binary map as its data, the znode's
//! data version as the state version. Requests go out pipelined per batch on statemirror's
//! own session (reopened after an error). Nodes are created with the open ACL, parents with
//! no data, as NiFi's `Access Control = Open` does.

use std::time::Duration;

use bytes::Bytes;

use super::provider::{PerComponent, Read};
use crate::config::Secret;
use crate::nifi::{self, NifiState};
use crate::zookeeper::client::{Call, ZkConn};
use crate::zookeeper::endpoint::ZkServers;
use crate::zookeeper::jute::Record;
use crate::zookeeper::proto::records::{
    Acl, CreateRequest, DeleteRequest, GetChildrenRequest, GetChildrenResponse, GetDataRequest,
    GetDataResponse, Id, PathRequest, SetDataRequest,
};
use crate::zookeeper::proto::{create_mode, err, err_name, op, perms};

/// NiFi refuses state whose data exceeds `nifi.zookeeper.jute.maxbuffer` (default
/// 1,048,575 bytes) with StateTooLargeException; so does this.
pub const MAX_DATA_BYTES: usize = 1_048_575;

/// Replies may carry up to `MAX_DATA_BYTES` of data each; a batch's frames are read one by one.
const MAX_FRAME: usize = 8 << 20;

pub struct ZkProvider {
    servers: ZkServers,
    root: String,
    auth: Option<Secret>,
    timeout: Duration,
    conn: Option<ZkConn>,
    parents_made: bool,
    /// The destination held no state when the copy began: `create` first (one round trip
    /// per batch instead of a `setData` that fails and a `create`).
    pub create_first: bool,
}

impl ZkProvider {
    pub fn new(servers: ZkServers, root: String, auth: Option<Secret>, timeout: Duration) -> Self {
        Self {
            servers,
            root,
            auth,
            timeout,
            conn: None,
            parents_made: false,
            create_first: false,
        }
    }

    fn dir(&self) -> String {
        format!("{}/components", self.root)
    }

    fn path(&self, id: &str) -> String {
        format!("{}/components/{id}", self.root)
    }

    async fn calls(&mut self, calls: &[Call]) -> Result<Vec<(i32, Bytes)>, String> {
        if self.conn.as_ref().is_none_or(ZkConn::broken) {
            let c = ZkConn::connect(
                &self.servers,
                0,
                self.timeout,
                30_000,
                self.auth.as_ref(),
                MAX_FRAME,
            )
            .await
            .map_err(|e| format!("zookeeper {}: {e}", self.servers.join(",")))?;
            self.conn = Some(c);
        }
        let Some(c) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        let r = tokio::time::timeout(
            self.timeout.max(Duration::from_secs(30)),
            c.call_many(calls),
        )
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        if r.is_err() {
            self.conn = None;
        }
        r.map_err(|e| format!("zookeeper {}: {e}", self.servers.join(",")))
    }

    /// Every component id (`getChildren(<root>/components)`; none when it does not exist).
    pub async fn list(&mut self) -> Result<Vec<String>, String> {
        let call = Call::new(
            op::GET_CHILDREN,
            &GetChildrenRequest {
                path: self.dir(),
                watch: false,
            },
        );
        let mut r = self.calls(&[call]).await?;
        match r.pop() {
            Some((err::OK, body)) => {
                let resp = GetChildrenResponse::from_bytes(&body).map_err(|e| e.to_string())?;
                let mut ids = resp.children;
                ids.sort();
                Ok(ids)
            }
            Some((err::NO_NODE, _)) => Ok(Vec::new()),
            Some((e, _)) => Err(format!("getChildren {}: {}", self.dir(), err_name(e))),
            None => Err("no reply".into()),
        }
    }

    /// Each component's state (`None`: no znode), versioned with the znode's data version.
    pub async fn get_many(&mut self, ids: &[String]) -> Result<Vec<Read>, String> {
        // A `sync` first: this session's reads then see every write the ensemble's leader
        // committed before it, whichever server NiFi's session (or this one) is on.
        let mut calls = vec![Call::new(op::SYNC, &PathRequest { path: "/".into() })];
        calls.extend(ids.iter().map(|id| {
            Call::new(
                op::GET_DATA,
                &GetDataRequest {
                    path: self.path(id),
                    watch: false,
                },
            )
        }));
        let mut replies = self.calls(&calls).await?.into_iter();
        match replies.next() {
            Some((err::OK, _)) => {}
            Some((e, _)) => return Err(format!("sync: {}", err_name(e))),
            None => return Err("no reply".into()),
        }
        Ok(replies
            .map(|(e, body)| match e {
                err::OK => {
                    let r = GetDataResponse::from_bytes(&body).map_err(|e| e.to_string())?;
                    let version = Some(r.stat.version as i64);
                    match r.data.as_deref() {
                        None | Some([]) => Ok(Some(NifiState {
                            version,
                            ..NifiState::default()
                        })),
                        Some(d) => nifi::decode_binary_strict(d, version).map(Some),
                    }
                }
                err::NO_NODE => Ok(None),
                e => Err(format!("getData: {}", err_name(e))),
            })
            .collect())
    }

    /// Creates `<root>` and `<root>/components` when missing (NiFi creates them the same way).
    async fn make_parents(&mut self) -> Result<(), String> {
        let mut calls = Vec::new();
        let mut p = String::new();
        for part in self.dir().split('/').filter(|s| !s.is_empty()) {
            p.push('/');
            p.push_str(part);
            calls.push(create(&p, None));
        }
        for (e, _) in self.calls(&calls).await? {
            if e != err::OK && e != err::NODE_EXISTS {
                return Err(format!("create {}: {}", self.dir(), err_name(e)));
            }
        }
        self.parents_made = true;
        Ok(())
    }

    /// Writes each state (`setData` with any version, `create` where missing). A state
    /// `writeUTF` or `jute.maxbuffer` would refuse is reported and not written.
    pub async fn put_many(
        &mut self,
        states: &[(String, NifiState)],
    ) -> Result<PerComponent, String> {
        let mut out: PerComponent = vec![Ok(0); states.len()];
        let mut todo: Vec<(usize, Bytes)> = Vec::new();
        for (i, (_, st)) in states.iter().enumerate() {
            match nifi::encode_state_binary(st) {
                Ok(b) if b.len() > MAX_DATA_BYTES => {
                    out[i] = Err(format!(
                        "state too large for ZooKeeper: {} bytes (NiFi's limit, jute.maxbuffer, is {MAX_DATA_BYTES})",
                        b.len()
                    ))
                }
                Ok(b) => todo.push((i, Bytes::from(b))),
                Err(bad) => {
                    let names: Vec<String> = bad
                        .iter()
                        .map(|t| format!("{:?} ({} {} bytes)", t.entry, t.part, t.encoded_bytes))
                        .collect();
                    out[i] = Err(format!(
                        "entries too long for ZooKeeper (writeUTF allows 65535 bytes): {}",
                        names.join(", ")
                    ));
                }
            }
        }
        let mut pending = todo;
        // setData, then create where missing, then setData where a create raced: bounded.
        let first = usize::from(self.create_first);
        for round in first..first + 4 {
            if pending.is_empty() {
                break;
            }
            let creating = round % 2 == 1;
            if creating && !self.parents_made {
                self.make_parents().await?;
            }
            let calls: Vec<Call> = pending
                .iter()
                .map(|(i, d)| {
                    let path = self.path(&states[*i].0);
                    if creating {
                        create(&path, Some(d.clone()))
                    } else {
                        Call::new(
                            op::SET_DATA,
                            &SetDataRequest {
                                path,
                                data: Some(d.clone()),
                                version: -1,
                            },
                        )
                    }
                })
                .collect();
            let replies = self.calls(&calls).await?;
            let mut next = Vec::new();
            for ((i, d), (e, _)) in pending.into_iter().zip(replies) {
                match e {
                    err::OK => out[i] = Ok(d.len() as u64),
                    err::NO_NODE if !creating => next.push((i, d)),
                    err::NODE_EXISTS if creating => next.push((i, d)),
                    e => {
                        out[i] = Err(format!(
                            "{}: {}",
                            if creating { "create" } else { "setData" },
                            err_name(e)
                        ))
                    }
                }
            }
            pending = next;
        }
        for (i, _) in pending {
            out[i] = Err("kept being created and deleted while written".into());
        }
        Ok(out)
    }

    pub async fn delete_many(&mut self, ids: &[String]) -> Result<PerComponent, String> {
        let calls: Vec<Call> = ids
            .iter()
            .map(|id| {
                Call::new(
                    op::DELETE,
                    &DeleteRequest {
                        path: self.path(id),
                        version: -1,
                    },
                )
            })
            .collect();
        let replies = self.calls(&calls).await?;
        Ok(replies
            .into_iter()
            .map(|(e, _)| match e {
                err::OK | err::NO_NODE => Ok(0),
                e => Err(format!("delete: {}", err_name(e))),
            })
            .collect())
    }
}

fn create(path: &str, data: Option<Bytes>) -> Call {
    Call::new(
        op::CREATE,
        &CreateRequest {
            path: path.to_string(),
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
