//! How a ZooKeeper write reaches the follower ensemble.
//!
//! A write the leader acknowledged (`err == 0`, and for a `multi` every result a success)
//! becomes an op carrying the leader's zxid and the write's full effect: creates with the
//! path the leader returned (so sequential nodes keep the leader's names), data, ACL and
//! mode; deletes; `setData`; `setACL`. Versions become -1 and `check`s are dropped: the leader
//! already decided, the follower only has to end up equal.
//!
//! Order: unlike Redis, ZooKeeper tells the proxy the order it used — the zxid. The writer
//! sorts each batch by zxid and remembers, per path, the zxid it last applied; an op that
//! arrives late (acknowledged on another connection, queued behind a newer write of the same
//! path) is skipped instead of overwriting newer state.
//!
//! Idempotence, so a batch can be applied again after any failure: the batch goes out as one
//! pipelined round trip; from the first op that fails, the rest are applied one by one with
//! fix-ups — a create whose node exists becomes `setData` + `setACL`, a create or `setData`
//! whose parent is missing creates the parents (empty, open ACL) first, deleting a missing
//! node is fine, deleting a node that still has children on the follower deletes them
//! first (the leader had none), `setACL` of a missing node is skipped. A multi is applied as
//! a multi; if it fails on the follower its ops are applied one by one (the follower then
//! passes through the intermediate states; the end state is the leader's).
//!
//! ACLs are copied as the client sent them. `digest:` ACLs mean the same on both sides;
//! `auth:` ACLs bind to the session's identity, which is statemirror's follower session:
//! configure `zookeeper.follower_auth_file` with the same `user:password` the clients use,
//! or the follower refuses them (`INVALIDACL`, counted, follower marked out of sync).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;

use super::client::{Call, ZkConn};
use super::jute::Record;
use super::proto::multi::{MultiOp, MultiRequest, MultiResponse};
use super::proto::records::{
    Acl, CreateRequest, CreateTtlRequest, DeleteRequest, ExistsRequest, GetChildrenRequest,
    GetChildrenResponse, Id, SetAclRequest, SetDataRequest, SyncRequest,
};
use super::proto::{create_mode, err, op, perms};
use super::refusal::{self, Refusal, STRIKES};
use crate::config::Secret;
use crate::replication::queue::{heap_alloc, MirrorOp, MirrorQueue, MirrorView};
use crate::replication::worker::{Applier, ApplyError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Create {
        path: String,
        data: Option<Bytes>,
        acl: Vec<Acl>,
        /// `create_mode::PERSISTENT`, `CONTAINER` or `PERSISTENT_WITH_TTL`.
        mode: i32,
        ttl: i64,
    },
    Delete {
        path: String,
    },
    SetData {
        path: String,
        data: Option<Bytes>,
    },
    SetAcl {
        path: String,
        acl: Vec<Acl>,
    },
}

impl Item {
    pub fn path(&self) -> &str {
        match self {
            Item::Create { path, .. }
            | Item::Delete { path }
            | Item::SetData { path, .. }
            | Item::SetAcl { path, .. } => path,
        }
    }

    /// Copies the node data out of the client's frame. Decoded requests slice the frame
    /// (zero-copy), and the frame shares the connection's read buffer: a queued 200-byte
    /// `setData` would otherwise pin that whole buffer.
    pub fn into_owned(mut self) -> Self {
        if let Item::Create { data, .. } | Item::SetData { data, .. } = &mut self {
            if let Some(d) = data.as_mut() {
                *d = Bytes::copy_from_slice(d);
            }
        }
        self
    }

    /// Heap bytes this item holds (the op's own size is counted by the queue).
    fn heap_bytes(&self) -> usize {
        let data = match self {
            Item::Create { data, .. } | Item::SetData { data, .. } => {
                data.as_ref().map_or(0, |d| heap_alloc(d.len()))
            }
            _ => 0,
        };
        let acl = match self {
            Item::Create { acl, .. } | Item::SetAcl { acl, .. } => {
                heap_alloc(acl.capacity() * std::mem::size_of::<Acl>())
                    + acl
                        .iter()
                        .map(|a| {
                            heap_alloc(a.id.scheme.capacity()) + heap_alloc(a.id.id.capacity())
                        })
                        .sum::<usize>()
            }
            _ => 0,
        };
        heap_alloc(self.path().len()) + data + acl
    }

    /// The request that applies this item unconditionally.
    fn call(&self) -> Call {
        match self {
            Item::Create {
                path,
                data,
                acl,
                mode,
                ttl,
            } if *mode == create_mode::PERSISTENT_WITH_TTL => Call::new(
                op::CREATE_TTL,
                &CreateTtlRequest {
                    path: path.clone(),
                    data: data.clone(),
                    acl: acl.clone(),
                    flags: *mode,
                    ttl: *ttl,
                },
            ),
            Item::Create {
                path,
                data,
                acl,
                mode,
                ..
            } => Call::new(
                if *mode == create_mode::CONTAINER {
                    op::CREATE_CONTAINER
                } else {
                    op::CREATE
                },
                &CreateRequest {
                    path: path.clone(),
                    data: data.clone(),
                    acl: acl.clone(),
                    flags: *mode,
                },
            ),
            Item::Delete { path } => Call::new(
                op::DELETE,
                &DeleteRequest {
                    path: path.clone(),
                    version: -1,
                },
            ),
            Item::SetData { path, data } => Call::new(
                op::SET_DATA,
                &SetDataRequest {
                    path: path.clone(),
                    data: data.clone(),
                    version: -1,
                },
            ),
            Item::SetAcl { path, acl } => Call::new(
                op::SET_ACL,
                &SetAclRequest {
                    path: path.clone(),
                    acl: acl.clone(),
                    version: -1,
                },
            ),
        }
    }

    fn multi_op(&self) -> Option<MultiOp> {
        Some(match self {
            Item::Create {
                path,
                data,
                acl,
                mode,
                ..
            } if *mode != create_mode::PERSISTENT_WITH_TTL => MultiOp::Create(CreateRequest {
                path: path.clone(),
                data: data.clone(),
                acl: acl.clone(),
                flags: *mode,
            }),
            Item::Delete { path } => MultiOp::Delete(DeleteRequest {
                path: path.clone(),
                version: -1,
            }),
            Item::SetData { path, data } => MultiOp::SetData(SetDataRequest {
                path: path.clone(),
                data: data.clone(),
                version: -1,
            }),
            _ => return None,
        })
    }
}

/// One acknowledged write (or multi) with the zxid the leader gave it.
#[derive(Debug, Clone)]
pub struct ZkOp {
    pub zxid: i64,
    pub items: SmallVec<[Item; 1]>,
}

impl MirrorOp for ZkOp {
    type Key = String;
    fn cost_bytes(&self) -> usize {
        let spilled = if self.items.spilled() {
            heap_alloc(self.items.capacity() * std::mem::size_of::<Item>())
        } else {
            0
        };
        spilled + self.items.iter().map(Item::heap_bytes).sum::<usize>()
    }
    fn coalesce_key(&self) -> Option<String> {
        None // every op is a point-in-time effect
    }
}

/// Which paths are mirrored.
#[derive(Debug, Clone)]
pub struct PathFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl PathFilter {
    pub fn allows(&self, path: &str) -> bool {
        let under = |prefix: &String| {
            prefix == "/"
                || path == prefix
                || (path.starts_with(prefix.as_str())
                    && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
        };
        let zk = path == "/zookeeper" || path.starts_with("/zookeeper/");
        !zk && self.include.iter().any(under) && !self.exclude.iter().any(under)
    }
}

/// How many per-path zxids to remember before forgetting the oldest half; a late op is
/// only ever a few milliseconds late, so only recent paths matter.
const MAX_TRACKED_PATHS: usize = 200_000;

pub struct ZkApplier {
    servers: Vec<String>,
    auth: Option<Secret>,
    connect_timeout: Duration,
    session_timeout_ms: i32,
    max_frame: usize,
    conn: Option<ZkConn>,
    next_server: usize,
    applied: HashMap<String, i64>,
    queue: Arc<MirrorQueue<ZkOp>>,
    /// Mirrored ephemerals to create again when the follower session is replaced.
    ephemerals: Option<Arc<super::ephemeral::Ephemerals>>,
    /// The follower session is new: its ephemerals must be created first.
    fresh_session: bool,
    /// A batch that failed part-way: its identity and how many of its steps are applied.
    resume: Option<((usize, usize), usize)>,
    /// The newest zxid the follower has shown us (see `check_history`).
    follower_zxid: i64,
    /// The batch whose pipelined send lost the connection: retried one step at a time, so
    /// the step the follower drops the connection on can be found.
    careful: Option<BatchId>,
    /// (batch, step, how many times in a row the connection was lost on that step).
    strikes: Option<(BatchId, usize, u32)>,
}

/// A batch's address and length: the worker retries the very same batch until it is done.
type BatchId = (usize, usize);

impl ZkApplier {
    pub fn new(
        servers: Vec<String>,
        auth: Option<Secret>,
        connect_timeout: Duration,
        session_timeout_ms: i32,
        max_frame: usize,
        queue: Arc<MirrorQueue<ZkOp>>,
        ephemerals: Option<Arc<super::ephemeral::Ephemerals>>,
    ) -> Self {
        Self {
            servers,
            auth,
            connect_timeout,
            session_timeout_ms,
            max_frame,
            conn: None,
            next_server: 0,
            applied: HashMap::new(),
            queue,
            ephemerals,
            fresh_session: false,
            resume: None,
            follower_zxid: 0,
            careful: None,
            strikes: None,
        }
    }

    async fn conn(&mut self) -> Result<&mut ZkConn, ApplyError> {
        if let Some(c) = self.conn.as_mut() {
            if c.ping_if_idle().await.is_err() {
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            let c = ZkConn::connect(
                &self.servers,
                self.next_server,
                self.connect_timeout,
                self.session_timeout_ms,
                self.auth.as_ref(),
                self.max_frame,
            )
            .await
            .map_err(|e| ApplyError::new("follower_unavailable", e.to_string()))?;
            self.next_server += 1;
            self.conn = Some(c);
            self.fresh_session = true;
            self.check_history().await?;
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ApplyError::new("follower_unavailable", "no session"))
    }

    /// A follower whose zxid went backwards lost history: it restarted empty or was restored
    /// from a backup, so what was mirrored to it before cannot be trusted. `sync` first, so a
    /// member of the ensemble that lags the others catches up before it answers the probe.
    async fn check_history(&mut self) -> Result<(), ApplyError> {
        let probe = [
            Call::new(op::SYNC, &SyncRequest { path: "/".into() }),
            Call::new(
                op::EXISTS,
                &ExistsRequest {
                    path: "/".into(),
                    watch: false,
                },
            ),
        ];
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| ApplyError::new("follower_unavailable", "no session"))?;
        let reply = conn.call_many_z(&probe).await.map_err(follower_err)?;
        let zxid = reply.last().map_or(0, |r| r.zxid);
        if zxid < self.follower_zxid {
            self.queue.sync().mark_out_of_sync(format!(
                "the follower went back in time (zxid {zxid:#x} after {:#x}): it restarted \
                 empty or from a backup and may have lost what was mirrored to it",
                self.follower_zxid
            ));
        }
        self.follower_zxid = zxid;
        Ok(())
    }

    async fn apply_batch(&mut self, batch: &[ZkOp]) -> Result<usize, ApplyError> {
        self.conn().await?;
        if std::mem::take(&mut self.fresh_session) {
            // The previous session's ephemerals are gone (or going) with it.
            let live = self
                .ephemerals
                .as_ref()
                .map(|e| e.live())
                .unwrap_or_default();
            for it in &live {
                if let Err(e) = self.apply_one(it).await {
                    self.fresh_session = true;
                    return Err(e);
                }
            }
        }
        // zxid order, skipping what a newer write of the same path already superseded.
        let mut ops: Vec<&ZkOp> = batch.iter().collect();
        ops.sort_by_key(|o| o.zxid);
        let mut steps: Vec<(i64, Vec<Item>)> = Vec::with_capacity(ops.len());
        for o in ops {
            let items: Vec<Item> = o
                .items
                .iter()
                // `<=`: an op at the same zxid (a session's end, ordered at the newest
                // zxid seen) must still run; re-applying one is harmless.
                .filter(|it| self.applied.get(it.path()).is_none_or(|&z| z <= o.zxid))
                .cloned()
                .collect();
            if !items.is_empty() {
                steps.push((o.zxid, items));
            }
        }
        // A retry of a batch that failed part-way (e.g. timed out during the one-by-one
        // fix-ups) resumes after the steps already applied, so every attempt makes progress
        // even when fix-ups are slow (a cross-region follower). The worker retries the very
        // same batch until it succeeds, so its address and length identify it.
        let id = (batch.as_ptr() as usize, batch.len());
        let start = match self.resume {
            Some((rid, done)) if rid == id => done.min(steps.len()),
            _ => 0,
        };
        self.resume = Some((id, start));
        let todo = &steps[start..];
        // Pipeline every step up to the first one with no single-request form.
        let calls: Vec<Call> = if self.careful == Some(id) {
            Vec::new()
        } else {
            todo.iter()
                .map_while(|(_, items)| step_call(items))
                .collect()
        };
        let conn = self.conn().await?;
        let replies = match conn.call_many_z(&calls).await.map_err(follower_err) {
            Ok(r) => r,
            Err(e) => {
                if e.reason == FOLLOWER_CLOSED {
                    self.careful = Some(id);
                }
                return Err(e);
            }
        };
        if let Some(z) = replies.iter().map(|r| r.zxid).max() {
            self.follower_zxid = self.follower_zxid.max(z);
        }
        let first_bad = replies
            .iter()
            .zip(todo)
            .position(|(r, (_, items))| !step_ok(items, r.err, &r.body))
            .or((calls.len() < todo.len()).then_some(calls.len()));
        let mut given_up = 0;
        if let Some(i) = first_bad {
            self.resume = Some((id, start + i));
            // From the first failure on, one at a time with fix-ups: later steps may depend
            // on it (a create under a node the failed step creates, a delete after it).
            for (k, (_, items)) in todo.iter().enumerate().skip(i) {
                let step = start + k;
                if matches!(self.strikes, Some((b, s, n)) if b == id && s == step && n >= STRIKES) {
                    for it in items {
                        self.queue.refused(
                            "connection_closed",
                            &format!(
                                "{} {}: the follower closed the connection on this request \
                                 {STRIKES} times (larger than its jute.maxbuffer?)",
                                item_name(it),
                                it.path()
                            ),
                        );
                    }
                    given_up += 1;
                } else {
                    for it in items {
                        match self.apply_one(it).await {
                            Ok(n) => given_up += n,
                            Err(e) => {
                                if e.reason == FOLLOWER_CLOSED {
                                    self.strike(id, step);
                                }
                                return Err(e);
                            }
                        }
                    }
                }
                self.strikes = None;
                self.resume = Some((id, step + 1));
            }
        }
        self.resume = None;
        self.careful = None;
        for (zxid, items) in &steps {
            for it in items {
                self.applied.insert(it.path().to_string(), *zxid);
            }
        }
        if self.applied.len() > MAX_TRACKED_PATHS {
            let mut zxids: Vec<i64> = self.applied.values().copied().collect();
            zxids.sort_unstable();
            let cut = zxids[zxids.len() / 2];
            self.applied.retain(|_, z| *z >= cut);
        }
        Ok(given_up.min(batch.len()))
    }

    fn strike(&mut self, id: BatchId, step: usize) {
        self.strikes = match self.strikes {
            Some((b, s, n)) if b == id && s == step => Some((b, s, n + 1)),
            _ => Some((id, step, 1)),
        };
    }

    /// Applies one item whatever the follower's state; 1 when it had to be given up.
    async fn apply_one(&mut self, it: &Item) -> Result<usize, ApplyError> {
        let r = self.call(it.call()).await?;
        let fixed = match (it, r) {
            (_, err::OK) => err::OK,
            (Item::Delete { .. }, err::NO_NODE) => err::OK,
            (Item::SetAcl { .. }, err::NO_NODE) => err::OK,
            // An ephemeral must be owned by this session (the old one may still hold it).
            (Item::Create { path, mode, .. }, err::NODE_EXISTS)
                if *mode == create_mode::EPHEMERAL =>
            {
                match self
                    .call(Item::Delete { path: path.clone() }.call())
                    .await?
                {
                    err::OK | err::NO_NODE => self.call(it.call()).await?,
                    other => other,
                }
            }
            (
                Item::Create {
                    path, data, acl, ..
                },
                err::NODE_EXISTS,
            ) => {
                let d = self
                    .call(
                        Item::SetData {
                            path: path.clone(),
                            data: data.clone(),
                        }
                        .call(),
                    )
                    .await?;
                match d {
                    err::OK => {
                        self.call(
                            Item::SetAcl {
                                path: path.clone(),
                                acl: acl.clone(),
                            }
                            .call(),
                        )
                        .await?
                    }
                    other => other,
                }
            }
            (Item::Create { path, .. }, err::NO_NODE) => match self.create_parents(path).await? {
                err::OK => self.call(it.call()).await?,
                refused => refused,
            },
            (Item::SetData { path, data }, err::NO_NODE) => {
                match self.create_parents(path).await? {
                    err::OK => {
                        let create = Item::Create {
                            path: path.clone(),
                            data: data.clone(),
                            acl: open_acl(),
                            mode: create_mode::PERSISTENT,
                            ttl: 0,
                        };
                        self.call(create.call()).await?
                    }
                    refused => refused,
                }
            }
            (Item::Delete { path }, err::NOT_EMPTY) => self.delete_tree(path).await?,
            (_, other) => other,
        };
        if fixed == err::OK {
            return Ok(0);
        }
        let what = format!(
            "{} {}: {}",
            item_name(it),
            it.path(),
            super::proto::err_name(fixed)
        );
        match refusal::classify(fixed) {
            Refusal::Transient => Err(ApplyError::new("follower_busy", what)),
            Refusal::Permanent("auth") => {
                self.queue.refused(
                    "auth",
                    &format!("{what} (see zookeeper.follower_auth_file)"),
                );
                Ok(1)
            }
            Refusal::Permanent(reason) => {
                self.queue.refused(reason, &what);
                Ok(1)
            }
        }
    }

    async fn call(&mut self, c: Call) -> Result<i32, ApplyError> {
        let conn = self.conn().await?;
        conn.call(c).await.map(|(e, _)| e).map_err(follower_err)
    }

    /// Creates the missing parents of `path`: `OK`, or the error code a parent's create got
    /// (classified by the caller like the item's own).
    async fn create_parents(&mut self, path: &str) -> Result<i32, ApplyError> {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            let parent = &path[..at + 1 + i];
            at += 1 + i;
            let c = Item::Create {
                path: parent.to_string(),
                data: None,
                acl: open_acl(),
                mode: create_mode::PERSISTENT,
                ttl: 0,
            };
            match self.call(c.call()).await? {
                err::OK | err::NODE_EXISTS => {}
                e => return Ok(e),
            }
        }
        Ok(err::OK)
    }

    /// Deletes `path` and everything under it on the follower (children first): `OK`, or
    /// the error code a delete got.
    async fn delete_tree(&mut self, path: &str) -> Result<i32, ApplyError> {
        let mut stack = vec![(path.to_string(), false)];
        let mut guard = 0usize;
        while let Some((p, expanded)) = stack.pop() {
            guard += 1;
            if guard > 1_000_000 {
                return Err(ApplyError::new(
                    "follower_error",
                    "subtree too large to delete",
                ));
            }
            if !expanded {
                let conn = self.conn().await?;
                let (e, body) = conn
                    .call(Call::new(
                        op::GET_CHILDREN,
                        &GetChildrenRequest {
                            path: p.clone(),
                            watch: false,
                        },
                    ))
                    .await
                    .map_err(follower_err)?;
                if e == err::NO_NODE {
                    continue;
                }
                let children = GetChildrenResponse::from_bytes(&body)
                    .map(|r| r.children)
                    .unwrap_or_default();
                stack.push((p.clone(), true));
                for c in children {
                    let child = if p == "/" {
                        format!("/{c}")
                    } else {
                        format!("{p}/{c}")
                    };
                    stack.push((child, false));
                }
            } else {
                match self.call(Item::Delete { path: p.clone() }.call()).await? {
                    err::OK | err::NO_NODE => {}
                    e => return Ok(e),
                }
            }
        }
        Ok(err::OK)
    }
}

/// A request's connection was lost under it (as opposed to no connection at all).
const FOLLOWER_CLOSED: &str = "follower_closed";

fn follower_err(e: super::client::ClientError) -> ApplyError {
    use super::client::ClientError;
    let reason = match e {
        ClientError::Closed | ClientError::Io(_) => FOLLOWER_CLOSED,
        _ => "follower_unavailable",
    };
    ApplyError::new(reason, e.to_string())
}

fn item_name(it: &Item) -> &'static str {
    match it {
        Item::Create { .. } => "create",
        Item::Delete { .. } => "delete",
        Item::SetData { .. } => "setData",
        Item::SetAcl { .. } => "setACL",
    }
}

/// `world:anyone` with every permission (what parents the mirror creates get).
fn open_acl() -> Vec<Acl> {
    vec![Acl {
        perms: perms::ALL,
        id: Id {
            scheme: "world".into(),
            id: "anyone".into(),
        },
    }]
}

/// The request for one step: the item itself, or a multi of several. `None` when a multi
/// holds an item with no multi form (a TTL create): the step is applied item by item.
fn step_call(items: &[Item]) -> Option<Call> {
    if let [one] = items {
        return Some(one.call());
    }
    let ops = items
        .iter()
        .map(Item::multi_op)
        .collect::<Option<Vec<_>>>()?;
    Some(Call::new(op::MULTI, &MultiRequest { ops }))
}

fn step_ok(items: &[Item], e: i32, body: &Bytes) -> bool {
    if e != err::OK {
        return false;
    }
    if items.len() > 1 {
        return MultiResponse::from_bytes(body)
            .is_ok_and(|r| r.results.iter().all(|x| x.err() == 0));
    }
    true
}

impl Applier for ZkApplier {
    type Op = ZkOp;
    async fn apply(&mut self, batch: &[ZkOp]) -> Result<usize, ApplyError> {
        let r = self.apply_batch(batch).await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// Pings the follower session while no writes come: its mirrored ephemerals must not
    /// expire after a quiet session timeout.
    async fn idle(&mut self) -> Result<(), ApplyError> {
        if let Some(c) = self.conn.as_mut() {
            if let Err(e) = c.ping_if_idle().await {
                self.conn = None;
                return Err(follower_err(e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_never_mirrors_zookeeper_and_honours_prefixes() {
        let f = PathFilter {
            include: vec!["/".into()],
            exclude: vec!["/tmp".into()],
        };
        assert!(f.allows("/nifi/components/x"));
        assert!(!f.allows("/zookeeper/config"));
        assert!(!f.allows("/zookeeper"));
        assert!(!f.allows("/tmp/a"));
        assert!(f.allows("/tmpfoo"));
        let f = PathFilter {
            include: vec!["/nifi".into()],
            exclude: vec![],
        };
        assert!(f.allows("/nifi") && f.allows("/nifi/leaders/Primary Node"));
        assert!(!f.allows("/nifix") && !f.allows("/other"));
    }
}
