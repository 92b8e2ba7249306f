//! The ZooKeeper side of the cross-sidecar check ([`crate::replication::converge`]): per
//! round, `sync` + read of the paths on the follower (data and `Stat`), then `sync` + read
//! on the leader, then, pipelined on the follower, for each path that differs:
//! `setData(path, data, version read)`, `delete(path, version read)`, or `create` with the
//! leader's data and ACL (fails with `NODEEXISTS` if someone created it meanwhile).
//! `BADVERSION`, `NODEEXISTS` and `NONODE` mean another write landed since the read: that
//! path's check is done (the newer change is followed by its own sidecar's check). The `sync`s matter with ensembles: a member that lags would
//! otherwise answer the read with a state older than the writes being checked.
//!
//! Ephemeral nodes (either side) are left alone: they are mirrored with their sessions.
//! Only data is compared; an ACL that differs is for verify and resync to report and fix.

use bytes::Bytes;

use super::client::Call;
use super::proto::records::{CreateRequest, DeleteRequest, SetDataRequest};
use super::proto::{create_mode, err, err_name, op};
use super::tree::{mode, Mode, Session, State};
use crate::replication::converge::{bytes_key_size, Repairer, Round};
use crate::replication::resync::BoxFuture;

pub struct ZkRepairer {
    leader: Session,
    follower: Session,
    /// The newest leader zxid seen: an older one later means the leader ensemble went back
    /// in time (restarted empty, restored from a backup), and nothing may be repaired from
    /// it.
    leader_zxid: i64,
    /// The paths checked are the follower's (the writer notes them after the state identity
    /// map): the leader is read at the inverse-mapped path.
    identity: crate::nifi::identity_live::SharedIdentity,
}

impl ZkRepairer {
    pub fn new(leader: Session, follower: Session) -> Self {
        Self {
            leader,
            follower,
            leader_zxid: 0,
            identity: Default::default(),
        }
    }

    pub fn with_identity(mut self, identity: crate::nifi::identity_live::SharedIdentity) -> Self {
        self.identity = identity;
        self
    }

    async fn round(&mut self, paths: Vec<String>) -> Result<Round<String>, String> {
        let mut round = Round::default();
        // 1. The follower first: the versions the writes below are conditional on.
        self.follower.sync().await?;
        let theirs = self.follower.read(&paths).await?;
        // 2. The leader.
        let zxid = self.leader.sync().await?;
        if zxid < self.leader_zxid {
            round.abandon = Some(format!(
                "the leader went back in time (zxid {zxid:#x} after {:#x})",
                self.leader_zxid
            ));
            self.leader_zxid = zxid;
            return Ok(round);
        }
        self.leader_zxid = zxid;
        let map = self.identity.current();
        let ours = if map.is_empty() {
            self.leader.read(&paths).await?
        } else {
            let on_leader: Vec<String> = paths
                .iter()
                .map(|p| map.unmap_path(p).into_owned())
                .collect();
            self.leader.read(&on_leader).await?
        };
        round.checked = paths.len();
        // 3. What differs, conditionally.
        let mut calls = Vec::new();
        let mut sent: Vec<&String> = Vec::new();
        for ((p, l), f) in paths.iter().zip(&ours).zip(&theirs) {
            let ephemeral = |s: &State| matches!(s, State::Node(n) if mode(n.stat.ephemeral_owner) == Mode::Ephemeral);
            if ephemeral(&l.state) || ephemeral(&f.state) {
                continue;
            }
            let call = match (&l.state, &f.state) {
                (State::NoAuth, _) | (_, State::NoAuth) | (State::Missing, State::Missing) => {
                    continue
                }
                (State::Node(l), State::Node(f)) => {
                    if data(&l.data) == data(&f.data) {
                        continue;
                    }
                    let set = SetDataRequest {
                        path: p.clone(),
                        data: l.data.clone(),
                        version: f.stat.version,
                    };
                    Call::new(op::SET_DATA, &set)
                }
                (State::Missing, State::Node(f)) => {
                    if f.stat.num_children > 0 {
                        // Its children go first, each by whoever mirrored their delete.
                        continue;
                    }
                    let del = DeleteRequest {
                        path: p.clone(),
                        version: f.stat.version,
                    };
                    Call::new(op::DELETE, &del)
                }
                (State::Node(l), State::Missing) => {
                    let create = CreateRequest {
                        path: p.clone(),
                        data: l.data.clone(),
                        acl: l.acl.clone(),
                        flags: create_mode::PERSISTENT,
                    };
                    Call::new(op::CREATE, &create)
                }
            };
            calls.push(call);
            sent.push(p);
        }
        if calls.is_empty() {
            return Ok(round);
        }
        let replies = self.follower.write(&calls).await?;
        for (p, r) in sent.into_iter().zip(replies) {
            match r.err {
                err::OK => round.repaired += 1,
                // Changed since the read: done (whoever changed it checks it after).
                err::BAD_VERSION | err::NODE_EXISTS | err::NO_NODE => round.conflicts += 1,
                // Children appeared meanwhile: their own checks come; this one again later.
                err::NOT_EMPTY => round.retry.push(p.clone()),
                e => round.refused.push(format!("{p}: {}", err_name(e))),
            }
        }
        Ok(round)
    }
}

/// `None` and empty data are the same node content for every client.
fn data(d: &Option<Bytes>) -> &[u8] {
    d.as_deref().unwrap_or_default()
}

impl Repairer for ZkRepairer {
    type Key = String;

    fn key_bytes(k: &String) -> usize {
        bytes_key_size(k.len())
    }

    fn repair(&mut self, keys: Vec<String>) -> BoxFuture<'_, Result<Round<String>, String>> {
        Box::pin(self.round(keys))
    }

    fn prime(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.leader_zxid = self.leader_zxid.max(self.leader.sync().await?);
            Ok(())
        })
    }
}
