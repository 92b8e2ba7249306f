//! Ephemeral nodes on the follower (`zookeeper.mirror_ephemeral = true`).
//!
//! An ephemeral node lives as long as its client's session, and a session ends without any
//! request passing through the proxy (it expires). So the follower's copy is an ephemeral
//! of statemirror's own follower session — if the whole region, sidecar included, is lost,
//! the follower drops them by itself after that session's timeout, instead of keeping
//! stale leader-election nodes forever — and this registry remembers, per client session,
//! which nodes it owns, so they can be deleted on the follower when the session ends:
//! `closeSession` answered, a reconnect answered "expired", or no connection for the
//! session's negotiated timeout. When statemirror's follower session is replaced (after a
//! follower outage), every live node is created again in the new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use smallvec::smallvec;

use super::mirror::{Item, ZkOp};
use super::proto::create_mode;
use super::proto::records::Acl;
use crate::replication::queue::{lock, MirrorQueue};

#[derive(Default)]
struct Session {
    nodes: HashMap<String, (Option<Bytes>, Vec<Acl>)>,
    connections: u32,
    timeout: Duration,
    /// Bumped on every attach, so a stale expiry timer does nothing.
    epoch: u64,
}

pub struct Ephemerals {
    sessions: Mutex<HashMap<i64, Session>>,
    queue: Arc<MirrorQueue<ZkOp>>,
}

impl Ephemerals {
    pub fn new(queue: Arc<MirrorQueue<ZkOp>>) -> Arc<Self> {
        Arc::new(Self {
            sessions: Mutex::new(HashMap::new()),
            queue,
        })
    }

    /// A connection of `session` is open (new or resumed).
    pub fn attach(&self, session: i64, timeout: Duration) {
        let mut s = lock(&self.sessions);
        let e = s.entry(session).or_default();
        e.connections += 1;
        e.timeout = timeout;
        e.epoch += 1;
    }

    /// A connection of `session` ended; without a new one within the session timeout the
    /// session is over on the leader too.
    pub fn detach(self: &Arc<Self>, session: i64, zxid: i64) {
        let (epoch, timeout) = {
            let mut s = lock(&self.sessions);
            let Some(e) = s.get_mut(&session) else { return };
            e.connections = e.connections.saturating_sub(1);
            if e.connections > 0 {
                return;
            }
            (e.epoch, e.timeout)
        };
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let ended = {
                let s = lock(&this.sessions);
                s.get(&session)
                    .is_some_and(|e| e.connections == 0 && e.epoch == epoch)
            };
            if ended {
                this.end(session, zxid);
            }
        });
    }

    /// `session` created an ephemeral node.
    pub fn created(&self, session: i64, path: &str, data: Option<Bytes>, acl: Vec<Acl>) {
        lock(&self.sessions)
            .entry(session)
            .or_default()
            .nodes
            .insert(path.to_string(), (data, acl));
    }

    /// `setData` (`data`) or `setACL` (`acl`) of an ephemeral node owned by `owner`: the kept
    /// copy is updated, and returned as the create that makes the follower's copy equal (an
    /// ephemeral create replaces the node, see `mirror::robust`). `None` when the node is not
    /// mirrored: nothing must reach the follower then (a plain `setData` of a missing node
    /// would create a persistent one).
    pub fn changed(
        &self,
        owner: i64,
        path: &str,
        data: Option<Option<Bytes>>,
        acl: Option<Vec<Acl>>,
    ) -> Option<Item> {
        let mut s = lock(&self.sessions);
        let (d, a) = s.get_mut(&owner)?.nodes.get_mut(path)?;
        if let Some(data) = data {
            *d = data;
        }
        if let Some(acl) = acl {
            *a = acl;
        }
        Some(Item::Create {
            path: path.to_string(),
            data: d.clone(),
            acl: a.clone(),
            mode: create_mode::EPHEMERAL,
            ttl: 0,
        })
    }

    /// A node was deleted (by whichever session).
    pub fn deleted(&self, path: &str) {
        for s in lock(&self.sessions).values_mut() {
            s.nodes.remove(path);
        }
    }

    /// `session` is over: its nodes are deleted on the follower, ordered at `zxid`.
    pub fn end(&self, session: i64, zxid: i64) {
        let Some(s) = lock(&self.sessions).remove(&session) else {
            return;
        };
        for path in s.nodes.into_keys() {
            self.queue.push(ZkOp {
                zxid,
                items: smallvec![Item::Delete { path }],
            });
        }
    }

    /// Every live node, as creates for a new follower session.
    pub fn live(&self) -> Vec<Item> {
        lock(&self.sessions)
            .values()
            .flat_map(|s| s.nodes.iter())
            .map(|(path, (data, acl))| Item::Create {
                path: path.clone(),
                data: data.clone(),
                acl: acl.clone(),
                mode: create_mode::EPHEMERAL,
                ttl: 0,
            })
            .collect()
    }
}
