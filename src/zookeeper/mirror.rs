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
//! path) is skipped instead of overwriting newer state. The map is trimmed past 200k paths; a
//! path it forgot counts as written at the newest zxid forgotten (the floor), so an older op
//! for it is skipped and flagged rather than applied over a newer write. When a leader
//! server's own zxid goes back (restarted empty, restored, a new ensemble), the session side
//! queues a reset marker ahead of the new history's writes and the map starts afresh there.
//! A `setData`/`setACL` that finds its node missing on the follower marks it out of sync:
//! the node's ACL or data cannot be the leader's until a resync copies it again.
//!
//! Client ephemerals are not mirrored (unless `mirror_ephemeral`), and neither are writes to
//! them: the reply's stat names the node's ephemeral owner, and a `setData`/`setACL` of an
//! ephemeral is dropped (mirrored: it updates the tracked copy, created again as an
//! ephemeral), never turned into a persistent node by a fix-up.
//!
//! Idempotence, so a batch can be applied again after any failure, in a bounded number of
//! round trips whatever the follower held (it may be a region away): the batch goes out as
//! one pipelined round trip; from the first step that fails on, the next round sends every
//! later step in a form whose end state does not depend on the follower's — a create
//! becomes create-or-`setData` + `setACL`, missing parents are created first (empty, open
//! ACL), a `setData` creates a missing node, deleting a missing node is fine, `setACL` of a
//! missing node is skipped. A session runs its requests in order, so a later step on the
//! same path still lands after an earlier one's fix-up. Deleting a node that still has
//! children on the follower lists them (one round trip per level) and deletes them first
//! (the leader had none), except those a newer write was applied to (and their ancestors,
//! the node itself included): the leader created them again after the delete. A multi is applied as a multi; if it fails on the follower its
//! items are applied separately (the follower then passes through the intermediate
//! states; the end state is the leader's). After a lost connection the follower session is
//! resumed, not replaced ([`ZkConn::connect_session`]), so nothing the old connection sent
//! can land after the retry.
//!
//! ACLs are copied as the client sent them. `digest:` ACLs mean the same on both sides;
//! `auth:` ACLs bind to the session's identity, which is statemirror's follower session:
//! configure `zookeeper.follower_auth_file` with the same `user:password` the clients use,
//! or the follower refuses them (`INVALIDACL`, counted, follower marked out of sync).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;

use super::client::{Call, Reply, SessionId, ZkConn};
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

impl ZkOp {
    /// The marker queued when the leader's zxids went back (a new history, see
    /// `ZkShared::leader_zxid`): ops after it are compared with each other only.
    pub fn history_reset() -> Self {
        ZkOp {
            zxid: i64::MIN,
            items: SmallVec::new(),
        }
    }

    pub fn is_history_reset(&self) -> bool {
        self.zxid == i64::MIN && self.items.is_empty()
    }
}

/// Per path, the zxid of the last write applied, so a late older write is skipped rather
/// than applied over a newer one.
#[derive(Default)]
pub struct Applied {
    zxids: HashMap<String, i64>,
    /// The newest zxid forgotten by a trim (`None`: nothing forgotten): a path without an
    /// entry may have had one up to here.
    floor: Option<i64>,
}

/// Whether an item at some zxid is still to be applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Apply,
    /// A newer write of the path was applied.
    Superseded,
    /// Older than what a trim forgot: it may be superseded, or not. Skipped (it could undo a
    /// newer write) and flagged.
    Forgotten,
}

impl Applied {
    pub fn fate(&self, path: &str, zxid: i64) -> Fate {
        match self.zxids.get(path) {
            // `<=` applies: an op at the same zxid (a session's end, ordered at the newest
            // zxid seen) must still run; re-applying one is harmless.
            Some(&z) if z <= zxid => Fate::Apply,
            Some(_) => Fate::Superseded,
            None if self.floor.is_some_and(|f| zxid < f) => Fate::Forgotten,
            None => Fate::Apply,
        }
    }

    /// Whether a write newer than `zxid` was applied to `path` (unknown counts as no).
    pub fn newer(&self, path: &str, zxid: i64) -> bool {
        self.zxids.get(path).is_some_and(|&z| z > zxid)
    }

    pub fn record(&mut self, path: &str, zxid: i64) {
        self.zxids.insert(path.to_string(), zxid);
    }

    /// Past `max` paths, forgets the older half, remembering the newest zxid forgotten.
    pub fn trim(&mut self, max: usize) {
        if self.zxids.len() <= max {
            return;
        }
        let mut zxids: Vec<i64> = self.zxids.values().copied().collect();
        zxids.sort_unstable();
        let cut = zxids[zxids.len() / 2];
        let mut forgotten = None;
        self.zxids.retain(|_, z| {
            let keep = *z >= cut;
            if !keep {
                forgotten = forgotten.max(Some(*z));
            }
            keep
        });
        self.floor = self.floor.max(forgotten);
    }

    /// A new zxid history: nothing known applies to it.
    pub fn reset(&mut self) {
        self.zxids.clear();
        self.floor = None;
    }

    pub fn len(&self) -> usize {
        self.zxids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zxids.is_empty()
    }
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
        // ZooKeeper's own tree, and statemirror's (its generation marker), are never
        // mirrored, resynced or compared.
        let own = |root: &str| {
            path == root
                || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
        };
        let zk = own("/zookeeper") || own(super::generation::ROOT);
        !zk && self.include.iter().any(under) && !self.exclude.iter().any(under)
    }
}

/// How many per-path zxids to remember before forgetting the oldest half; a late op is
/// only ever a few milliseconds late, so only recent paths matter.
const MAX_TRACKED_PATHS: usize = 200_000;

/// Pipelined rounds one attempt at a batch may take before it gives the worker back an
/// error (the next attempt resumes where this one stopped). A batch normally takes one
/// round; fix-ups take one more, a delete over children one more plus one per level listed.
const MAX_ROUNDS: usize = 16;

/// Most nodes listed under one delete whose node still has children on the follower.
const MAX_SUBTREE: usize = 1_000_000;

pub struct ZkApplier {
    servers: Vec<String>,
    auth: Option<Secret>,
    connect_timeout: Duration,
    session_timeout_ms: i32,
    max_frame: usize,
    conn: Option<ZkConn>,
    next_server: usize,
    /// The follower session, resumed on every new connection until it expires.
    session: Option<SessionId>,
    applied: Applied,
    queue: Arc<MirrorQueue<ZkOp>>,
    /// Mirrored ephemerals to create again when the follower session is replaced.
    ephemerals: Option<Arc<super::ephemeral::Ephemerals>>,
    /// The follower session is new: its ephemerals must be created first.
    fresh_session: bool,
    /// A batch that failed part-way: where the next attempt resumes.
    resume: Option<Resume>,
    /// The newest zxid the follower has shown us (see `check_history`).
    follower_zxid: i64,
    /// The batch whose pipelined send lost the connection, and how many steps the next
    /// round may send: 1 after a loss, doubling per round answered in full, so the step the
    /// follower drops the connection on is found in a few rounds, not one per step.
    careful: Option<(BatchId, usize)>,
    /// (batch, step, how many times in a row the connection was lost on that step alone).
    strikes: Option<(BatchId, usize, u32)>,
    /// Bumped on every byte exchanged with the follower (see `Applier::progress`).
    progress: Arc<AtomicU64>,
    /// Nodes a `setData`/`setACL` found missing on the follower (count, first path): see
    /// `apply_steps`.
    missing: (usize, Option<String>),
}

/// A batch's address and length: the worker retries the very same batch until it is done.
type BatchId = (usize, usize);

/// A batch that failed part-way.
struct Resume {
    id: BatchId,
    /// Steps before this one are applied (or given up).
    done: usize,
    /// (step, item) refused for good: never sent again.
    skipped: HashSet<(usize, usize)>,
    /// Items given up so far.
    given_up: usize,
}

/// One request of a step's state-independent form and the errors that mean "already so".
struct Sub {
    call: Call,
    ok: &'static [i32],
    /// A delete: `NOT_EMPTY` means the subtree must be listed and deleted first.
    delete: bool,
}

/// What became of one item (or of a plain step).
enum Outcome {
    Ok,
    /// Needs the state-independent form (and every later step after it).
    Fix,
    Transient(String),
    Refused(&'static str, String),
}

/// What one step sends in a round.
enum Sent {
    /// The step as the leader ran it: one request at this index.
    Plain(usize),
    /// Each item's requests: (item index, range of request indices).
    Robust(Vec<(usize, std::ops::Range<usize>)>),
}

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
            session: None,
            applied: Applied::default(),
            queue,
            ephemerals,
            fresh_session: false,
            resume: None,
            follower_zxid: 0,
            careful: None,
            strikes: None,
            progress: Arc::new(AtomicU64::new(0)),
            missing: (0, None),
        }
    }

    async fn conn(&mut self) -> Result<&mut ZkConn, ApplyError> {
        if let Some(c) = self.conn.as_mut() {
            // A call abandoned half-way (the worker timed it out) left replies in flight.
            if c.broken() || c.ping_if_idle().await.is_err() {
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            let (mut c, resumed) = ZkConn::connect_session(
                &self.servers,
                self.next_server,
                self.connect_timeout,
                self.session_timeout_ms,
                self.auth.as_ref(),
                self.max_frame,
                self.session.as_ref(),
            )
            .await
            .map_err(|e| ApplyError::new("follower_unavailable", e.to_string()))?;
            self.next_server += 1;
            c.set_progress(self.progress.clone());
            self.session = Some(c.session.clone());
            self.conn = Some(c);
            // A resumed session still owns its ephemerals; a new one must create them.
            if !resumed {
                self.fresh_session = true;
            }
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

    /// Sends `calls` in one pipelined round trip on the current connection.
    async fn round(
        &mut self,
        calls: &[Call],
    ) -> Result<(Vec<Reply>, Option<ApplyError>), ApplyError> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| ApplyError::new("follower_unavailable", "no session"))?;
        let (replies, lost) = conn.call_many_partial(calls).await;
        if let Some(z) = replies.iter().map(|r| r.zxid).max() {
            self.follower_zxid = self.follower_zxid.max(z);
        }
        Ok((replies, lost.map(follower_err)))
    }

    /// Creates the mirrored ephemerals again in a new follower session: one round trip.
    async fn recreate_ephemerals(&mut self) -> Result<(), ApplyError> {
        let live = self
            .ephemerals
            .as_ref()
            .map(|e| e.live())
            .unwrap_or_default();
        if live.is_empty() {
            return Ok(());
        }
        let mut calls = Vec::new();
        let mut spans = Vec::new();
        let mut ensured = HashSet::new();
        for it in &live {
            let subs = robust(it, None, &mut ensured);
            let from = calls.len();
            let (c, ok): (Vec<Call>, Vec<&'static [i32]>) =
                subs.into_iter().map(|s| (s.call, s.ok)).unzip();
            calls.extend(c);
            spans.push((from..calls.len(), ok));
        }
        let (replies, lost) = self.round(&calls).await?;
        if let Some(e) = lost {
            return Err(e);
        }
        for (it, (range, ok)) in live.iter().zip(spans) {
            let bad = replies[range]
                .iter()
                .zip(ok)
                .find(|(r, ok)| r.err != err::OK && !ok.contains(&r.err));
            if let Some((r, _)) = bad {
                match self.refusal(it, r.err) {
                    Outcome::Transient(what) => return Err(ApplyError::new("follower_busy", what)),
                    Outcome::Refused(reason, what) => self.queue.refused(reason, &what),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    async fn apply_batch(&mut self, batch: &[ZkOp]) -> Result<usize, ApplyError> {
        self.conn().await?;
        if std::mem::take(&mut self.fresh_session) {
            // The previous session's ephemerals are gone (or going) with it.
            if let Err(e) = self.recreate_ephemerals().await {
                self.fresh_session = true;
                return Err(e);
            }
        }
        // zxid order within each history (see `ZkOp::history_reset`), skipping what a newer
        // write of the same path already superseded.
        let mut ops: Vec<(usize, &ZkOp)> = Vec::with_capacity(batch.len());
        let mut history = 0;
        for o in batch {
            if o.is_history_reset() {
                history += 1;
            } else {
                ops.push((history, o));
            }
        }
        ops.sort_by_key(|(h, o)| (*h, o.zxid));
        let mut steps: Vec<(i64, Vec<Item>)> = Vec::with_capacity(ops.len());
        // Steps from here on belong to the newest history (the only ones recorded).
        let mut newest_from = 0;
        let mut forgotten = 0usize;
        let mut at = 0;
        // Nothing is changed until the batch is applied, so a retry builds the same steps.
        let none = Applied::default();
        for (h, o) in ops {
            if at < h {
                at = h;
                newest_from = steps.len();
            }
            // A later history starts from nothing (its ops are sorted among themselves).
            let applied = if h == 0 { &self.applied } else { &none };
            let mut items = Vec::with_capacity(o.items.len());
            for it in &o.items {
                match applied.fate(it.path(), o.zxid) {
                    Fate::Apply => items.push(it.clone()),
                    Fate::Superseded => {}
                    Fate::Forgotten => forgotten += 1,
                }
            }
            if !items.is_empty() {
                steps.push((o.zxid, items));
            }
        }
        if at < history {
            newest_from = steps.len();
        }
        // Counted once per batch, not again on its retries.
        let retry = self
            .resume
            .as_ref()
            .is_some_and(|r| r.id == (batch.as_ptr() as usize, batch.len()));
        if forgotten > 0 && !retry {
            self.queue.count_dropped(forgotten as u64);
            self.queue.sync().mark_out_of_sync(format!(
                "{forgotten} mirrored write(s) older than the per-path zxids the writer still \
                 remembers were skipped; whether newer ones superseded them is unknown"
            ));
        }
        // A retry of a batch that failed part-way resumes after the steps already applied,
        // so every attempt makes progress. The worker retries the very same batch until it
        // succeeds, so its address and length identify it.
        let id = (batch.as_ptr() as usize, batch.len());
        let mut st = match self.resume.take() {
            Some(r) if r.id == id => r,
            _ => Resume {
                id,
                done: 0,
                skipped: HashSet::new(),
                given_up: 0,
            },
        };
        let r = self.apply_steps(id, &steps, &mut st).await;
        if let (n @ 1.., first) = std::mem::take(&mut self.missing) {
            self.queue.sync().mark_out_of_sync(format!(
                "the follower lacked {n} node(s) the leader changed (first: {}); their data \
                 or ACL is not the leader's until a resync copies them",
                first.unwrap_or_default()
            ));
        }
        if let Err(e) = r {
            self.resume = Some(st);
            return Err(e);
        }
        self.careful = None;
        self.strikes = None;
        if history > 0 {
            self.applied.reset();
        }
        for (zxid, items) in &steps[newest_from..] {
            for it in items {
                self.applied.record(it.path(), *zxid);
            }
        }
        self.applied.trim(MAX_TRACKED_PATHS);
        Ok(st.given_up.min(batch.len()))
    }

    /// Applies `steps[st.done..]` in pipelined rounds. Round one sends every step as the
    /// leader ran it. From the first step that needs a fix-up on, the next round sends every
    /// later step in its state-independent form ([`robust`]): the server runs a session's
    /// requests in order, so a later step on the same path still lands after the earlier
    /// one's fix-up, and each step's result does not depend on what the follower held.
    /// Only a delete over children the follower has and the leader had not needs more: its
    /// subtree is listed (one round trip per level, all such deletes together) and deleted
    /// deepest first in the next round.
    async fn apply_steps(
        &mut self,
        id: BatchId,
        steps: &[(i64, Vec<Item>)],
        st: &mut Resume,
    ) -> Result<(), ApplyError> {
        let mut robust_from = usize::MAX;
        let mut not_empty: HashSet<String> = HashSet::new();
        for _ in 0..MAX_ROUNDS {
            if st.done >= steps.len() {
                return Ok(());
            }
            // A step the follower dropped the connection on, alone, STRIKES times in a row.
            if matches!(self.strikes, Some((b, s, n)) if b == id && s == st.done && n >= STRIKES) {
                for it in &steps[st.done].1 {
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
                st.given_up += 1;
                st.done += 1;
                self.strikes = None;
                continue;
            }
            let subtrees = self.list_subtrees(std::mem::take(&mut not_empty)).await?;
            let window = match self.careful {
                Some((b, w)) if b == id => w,
                _ => usize::MAX,
            };
            let start = st.done;
            let end = start.saturating_add(window).min(steps.len());
            let mut calls: Vec<Call> = Vec::new();
            let mut sent: Vec<(usize, Sent)> = Vec::new();
            let mut ensured: HashSet<String> = HashSet::new();
            for (s, (_, items)) in steps.iter().enumerate().take(end).skip(st.done) {
                let plain = if s < robust_from {
                    step_call(items)
                } else {
                    None
                };
                if let Some(c) = plain {
                    sent.push((s, Sent::Plain(calls.len())));
                    calls.push(c);
                    continue;
                }
                let mut spans = Vec::new();
                for (k, it) in items.iter().enumerate() {
                    if st.skipped.contains(&(s, k)) {
                        continue;
                    }
                    let from = calls.len();
                    let subs = robust_at(it, steps[s].0, &subtrees, &self.applied, &mut ensured);
                    calls.extend(subs.into_iter().map(|x| x.call));
                    spans.push((k, from..calls.len()));
                }
                sent.push((s, Sent::Robust(spans)));
            }
            let (replies, lost) = self.round(&calls).await?;
            let mut first_fix: Option<usize> = None;
            let mut transient: Option<String> = None;
            // The tolerated codes are rebuilt from the items, in the same order (so the same
            // parents are skipped as already ensured).
            let mut ensured: HashSet<String> = HashSet::new();
            for (s, how) in &sent {
                let items = &steps[*s].1;
                let outcome = match how {
                    Sent::Plain(i) => {
                        let Some(r) = replies.get(*i) else { break };
                        // The follower lacks a node the leader has: a setACL does nothing and
                        // a setData's fix-up creates it with an open ACL. Its zxid is still
                        // recorded (so an older copy of the node is skipped): a resync must
                        // copy it again.
                        if let (
                            [Item::SetAcl { path, .. } | Item::SetData { path, .. }],
                            err::NO_NODE,
                        ) = (items.as_slice(), r.err)
                        {
                            self.missing.0 += 1;
                            self.missing.1.get_or_insert_with(|| path.clone());
                        }
                        match plain_outcome(items, r) {
                            Outcome::Refused(..) if items.len() == 1 => {
                                self.refuse(st, *s, 0, &items[0], r.err);
                                Outcome::Ok
                            }
                            Outcome::Fix => {
                                if let [Item::Delete { path }] = items.as_slice() {
                                    if r.err == err::NOT_EMPTY {
                                        not_empty.insert(path.clone());
                                    }
                                }
                                Outcome::Fix
                            }
                            o => o,
                        }
                    }
                    Sent::Robust(spans) => {
                        if spans.last().is_some_and(|(_, r)| r.end > replies.len()) {
                            break;
                        }
                        let mut step = Outcome::Ok;
                        for (k, range) in spans {
                            let it = &items[*k];
                            let subs =
                                robust_at(it, steps[*s].0, &subtrees, &self.applied, &mut ensured);
                            let bad = replies[range.clone()]
                                .iter()
                                .zip(&subs)
                                .find(|(r, x)| r.err != err::OK && !x.ok.contains(&r.err));
                            let Some((r, x)) = bad else { continue };
                            if x.delete && r.err == err::NOT_EMPTY {
                                not_empty.insert(it.path().to_string());
                                if !matches!(step, Outcome::Transient(_)) {
                                    step = Outcome::Fix;
                                }
                                continue;
                            }
                            match self.refusal(it, r.err) {
                                Outcome::Transient(what) => step = Outcome::Transient(what),
                                _ => self.refuse(st, *s, *k, it, r.err),
                            }
                        }
                        step
                    }
                };
                match outcome {
                    Outcome::Ok | Outcome::Refused(..) => {
                        if first_fix.is_none() {
                            st.done = s + 1;
                            self.strikes = None;
                        }
                    }
                    Outcome::Fix => {
                        first_fix.get_or_insert(*s);
                    }
                    Outcome::Transient(what) => {
                        transient = Some(what);
                        break;
                    }
                }
            }
            if let Some(f) = first_fix {
                robust_from = robust_from.min(f);
            }
            if let Some(e) = lost {
                if e.reason == FOLLOWER_CLOSED {
                    // Alone and unanswered: a strike against that step. Otherwise the next
                    // rounds narrow it down from the first unanswered step.
                    if end == start + 1 && st.done == start {
                        self.strike(id, st.done);
                    }
                    self.careful = Some((id, 1));
                }
                return Err(e);
            }
            if let Some(what) = transient {
                return Err(ApplyError::new("follower_busy", what));
            }
            if let Some((b, w)) = self.careful {
                if b == id && first_fix.is_none() {
                    self.careful = Some((b, w.saturating_mul(2)));
                }
            }
        }
        if st.done >= steps.len() {
            return Ok(());
        }
        Err(ApplyError::new(
            "follower_error",
            format!("fix-ups did not converge within {MAX_ROUNDS} rounds; retrying"),
        ))
    }

    fn strike(&mut self, id: BatchId, step: usize) {
        self.strikes = match self.strikes {
            Some((b, s, n)) if b == id && s == step => Some((b, s, n + 1)),
            _ => Some((id, step, 1)),
        };
    }

    /// Gives up item `k` of step `s` for good: counted, flagged, never sent again.
    fn refuse(&mut self, st: &mut Resume, s: usize, k: usize, it: &Item, code: i32) {
        if let Outcome::Refused(reason, what) = self.refusal(it, code) {
            if st.skipped.insert((s, k)) {
                self.queue.refused(reason, &what);
                st.given_up += 1;
            }
        }
    }

    /// What a follower error for `it` means (`refusal::classify`).
    fn refusal(&self, it: &Item, code: i32) -> Outcome {
        let what = format!(
            "{} {}: {}",
            item_name(it),
            it.path(),
            super::proto::err_name(code)
        );
        match refusal::classify(code) {
            Refusal::Transient => Outcome::Transient(what),
            Refusal::Permanent("auth") => {
                Outcome::Refused("auth", format!("{what} (see zookeeper.follower_auth_file)"))
            }
            Refusal::Permanent(reason) => Outcome::Refused(reason, what),
        }
    }

    /// Every node below each of `roots` on the follower, deepest first: breadth-first, one
    /// pipelined `getChildren` round trip per level for all roots together.
    async fn list_subtrees(
        &mut self,
        roots: HashSet<String>,
    ) -> Result<HashMap<String, Vec<String>>, ApplyError> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        // (root, path) pairs of the level being listed.
        let mut level: Vec<(String, String)> = roots.into_iter().map(|r| (r.clone(), r)).collect();
        let mut total = 0usize;
        while !level.is_empty() {
            let calls: Vec<Call> = level
                .iter()
                .map(|(_, p)| {
                    Call::new(
                        op::GET_CHILDREN,
                        &GetChildrenRequest {
                            path: p.clone(),
                            watch: false,
                        },
                    )
                })
                .collect();
            let (replies, lost) = self.round(&calls).await?;
            if let Some(e) = lost {
                return Err(e);
            }
            let mut next = Vec::new();
            for ((root, p), r) in level.iter().zip(&replies) {
                if r.err != err::OK {
                    continue; // gone already (or unreadable: the delete will say so)
                }
                let children = GetChildrenResponse::from_bytes(&r.body)
                    .map(|r| r.children)
                    .unwrap_or_default();
                for c in children {
                    let child = if p == "/" {
                        format!("/{c}")
                    } else {
                        format!("{p}/{c}")
                    };
                    out.entry(root.clone()).or_default().push(child.clone());
                    next.push((root.clone(), child));
                }
            }
            total += next.len();
            if total > MAX_SUBTREE {
                return Err(ApplyError::new(
                    "follower_error",
                    "subtree too large to delete",
                ));
            }
            level = next;
        }
        // Breadth-first order reversed: every node comes before its parent.
        for v in out.values_mut() {
            v.reverse();
        }
        Ok(out)
    }
}

/// What a plain step's reply means.
fn plain_outcome(items: &[Item], r: &Reply) -> Outcome {
    if items.len() > 1 {
        if step_ok(items, r.err, &r.body) {
            return Outcome::Ok;
        }
        // A multi the follower refused as a whole: applied item by item instead (the
        // follower then passes through the intermediate states; the end state is the
        // leader's), unless the follower is just busy.
        return match refusal::classify(r.err) {
            Refusal::Transient if r.err != err::OK => {
                Outcome::Transient(format!("multi: {}", super::proto::err_name(r.err)))
            }
            _ => Outcome::Fix,
        };
    }
    let Some(it) = items.first() else {
        return Outcome::Ok;
    };
    match (it, r.err) {
        (_, err::OK) => Outcome::Ok,
        (Item::Delete { .. } | Item::SetAcl { .. }, err::NO_NODE) => Outcome::Ok,
        (Item::Create { .. }, err::NODE_EXISTS | err::NO_NODE)
        | (Item::SetData { .. }, err::NO_NODE)
        | (Item::Delete { .. }, err::NOT_EMPTY) => Outcome::Fix,
        (_, code) => match refusal::classify(code) {
            Refusal::Transient => Outcome::Transient(format!(
                "{} {}: {}",
                item_name(it),
                it.path(),
                super::proto::err_name(code)
            )),
            Refusal::Permanent(reason) => Outcome::Refused(reason, String::new()),
        },
    }
}

/// `it` as requests whose end state does not depend on what the follower held: missing
/// parents created (empty, open ACL; each only once per round, `ensured`), a create over an
/// existing node followed by `setData` + `setACL`, a `setData` of a missing node creating
/// it, an ephemeral deleted first (it must belong to this session), a delete preceded by
/// the deletes of `subtree` (the follower's extra children, deepest first).
fn robust(it: &Item, subtree: Option<&[String]>, ensured: &mut HashSet<String>) -> Vec<Sub> {
    const NONE: &[i32] = &[];
    const EXISTS: &[i32] = &[err::NODE_EXISTS];
    const GONE: &[i32] = &[err::NO_NODE];
    let sub = |item: Item, ok: &'static [i32]| Sub {
        delete: matches!(item, Item::Delete { .. }),
        call: item.call(),
        ok,
    };
    let mut out = Vec::new();
    let mut parents = |path: &str, out: &mut Vec<Sub>| {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            at += 1 + i;
            let parent = &path[..at];
            if ensured.insert(parent.to_string()) {
                let c = Item::Create {
                    path: parent.to_string(),
                    data: None,
                    acl: open_acl(),
                    mode: create_mode::PERSISTENT,
                    ttl: 0,
                };
                out.push(sub(c, EXISTS));
            }
        }
    };
    match it {
        Item::Create { path, mode, .. } if *mode == create_mode::EPHEMERAL => {
            parents(path, &mut out);
            out.push(sub(Item::Delete { path: path.clone() }, GONE));
            out.push(sub(it.clone(), NONE));
        }
        Item::Create {
            path, data, acl, ..
        } => {
            parents(path, &mut out);
            out.push(sub(it.clone(), EXISTS));
            let set = Item::SetData {
                path: path.clone(),
                data: data.clone(),
            };
            out.push(sub(set, NONE));
            let acl = Item::SetAcl {
                path: path.clone(),
                acl: acl.clone(),
            };
            out.push(sub(acl, NONE));
        }
        Item::SetData { path, data } => {
            parents(path, &mut out);
            let create = Item::Create {
                path: path.clone(),
                data: data.clone(),
                acl: open_acl(),
                mode: create_mode::PERSISTENT,
                ttl: 0,
            };
            out.push(sub(create, EXISTS));
            out.push(sub(it.clone(), NONE));
        }
        Item::SetAcl { .. } => out.push(sub(it.clone(), GONE)),
        Item::Delete { .. } => {
            for p in subtree.unwrap_or_default() {
                out.push(sub(Item::Delete { path: p.clone() }, GONE));
            }
            out.push(sub(it.clone(), GONE));
        }
    }
    // A delete may remove a parent another item of this round relies on.
    if out.iter().any(|s| s.delete) {
        ensured.clear();
    }
    out
}

/// [`robust`] for an item of the step at `zxid`. A delete over children the follower has
/// (`subtrees`) spares every node a newer write (on another connection, or a live write
/// after a resync's read) was applied to, and their ancestors: the leader recreated them
/// after this delete. The node itself is then kept too; the newer writes own it.
fn robust_at(
    it: &Item,
    zxid: i64,
    subtrees: &HashMap<String, Vec<String>>,
    applied: &Applied,
    ensured: &mut HashSet<String>,
) -> Vec<Sub> {
    let Item::Delete { path: root } = it else {
        return robust(it, None, ensured);
    };
    let Some(sub) = subtrees.get(root) else {
        return robust(it, None, ensured);
    };
    let mut spared: HashSet<&str> = HashSet::new();
    for n in sub {
        if applied.newer(n, zxid) {
            let mut at = n.as_str();
            while at.len() > root.len() && spared.insert(at) {
                at = at.rfind('/').map_or(root.as_str(), |i| &at[..i]);
            }
        }
    }
    if spared.is_empty() {
        return robust(it, Some(sub), ensured);
    }
    let doomed: Vec<String> = sub
        .iter()
        .filter(|n| !spared.contains(n.as_str()))
        .cloned()
        .collect();
    let mut out = robust(it, Some(&doomed), ensured);
    out.pop(); // the delete of `root` itself, which robust puts last
    out
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
    fn progress(&self) -> Option<Arc<AtomicU64>> {
        Some(self.progress.clone())
    }

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

    /// A trim keeps a floor: a path it forgot counts as written at the floor, so an older
    /// copy of it is skipped (and flagged) rather than applied over a newer write.
    #[test]
    fn a_trim_keeps_a_floor() {
        let mut a = Applied::default();
        for (i, p) in ["/a", "/b", "/c", "/d"].iter().enumerate() {
            a.record(p, 10 * (i as i64 + 1)); // 10, 20, 30, 40
        }
        a.trim(3);
        assert_eq!(a.len(), 2, "the older half is forgotten");
        assert_eq!(
            a.fate("/a", 5),
            Fate::Forgotten,
            "older than what was forgotten"
        );
        assert_eq!(a.fate("/b", 15), Fate::Forgotten);
        assert_eq!(
            a.fate("/b", 20),
            Fate::Apply,
            "at the floor or newer: applied"
        );
        assert_eq!(a.fate("/new", 25), Fate::Apply);
        assert_eq!(a.fate("/c", 29), Fate::Superseded);
        assert_eq!(a.fate("/c", 30), Fate::Apply);
        a.reset();
        assert_eq!(
            a.fate("/a", 1),
            Fate::Apply,
            "a new history starts from nothing"
        );
        assert_eq!(a.fate("/c", 1), Fate::Apply);
    }

    #[test]
    fn filter_never_mirrors_zookeeper_and_honours_prefixes() {
        let f = PathFilter {
            include: vec!["/".into()],
            exclude: vec!["/tmp".into()],
        };
        assert!(f.allows("/nifi/components/x"));
        assert!(!f.allows("/zookeeper/config"));
        assert!(!f.allows("/statemirror/generation") && !f.allows("/statemirror"));
        assert!(f.allows("/statemirrors"));
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
