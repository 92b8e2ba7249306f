//! The follower writer: statemirror's own session on the follower ensemble, batches applied
//! in rounds (a bounded number of round trips each), refusals and strikes, progress.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::applied::{Applied, Fate};
use super::robust::*;
use super::{Item, ZkOp};
use crate::config::Secret;
use crate::replication::queue::{MirrorQueue, MirrorView};
use crate::replication::worker::{Applier, ApplyError};
use crate::zookeeper::client::{Call, Reply, SessionId, ZkConn};
use crate::zookeeper::jute::Record;
use crate::zookeeper::proto::records::{
    ExistsRequest, GetChildrenRequest, GetChildrenResponse, SyncRequest,
};
use crate::zookeeper::proto::{err, op};
use crate::zookeeper::refusal::{self, Refusal, STRIKES};

/// How many per-path zxids to remember before forgetting the oldest half; a late op is
/// only ever a few milliseconds late, so only recent paths matter.
pub(super) const MAX_TRACKED_PATHS: usize = 200_000;

/// Pipelined rounds one attempt at a batch may take before it gives the worker back an
/// error (the next attempt resumes where this one stopped). A batch normally takes one
/// round; fix-ups take one more, a delete over children one more plus one per level listed.
pub(super) const MAX_ROUNDS: usize = 16;

/// Most nodes listed under one delete whose node still has children on the follower.
pub(super) const MAX_SUBTREE: usize = 1_000_000;

pub struct ZkApplier {
    servers: crate::zookeeper::endpoint::ZkServers,
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
    ephemerals: Option<Arc<crate::zookeeper::ephemeral::Ephemerals>>,
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
    /// With `[cluster]`: paths to check against the leader once the follower answered
    /// ([`crate::replication::converge`]).
    touched: Option<Arc<crate::replication::converge::Touched<String>>>,
    /// The state identity map (`[identity] file`).
    identity: crate::nifi::identity_live::SharedIdentity,
}

/// A batch's address and length: the worker retries the very same batch until it is done.
type BatchId = (usize, usize);

/// A batch that failed part-way.
pub(super) struct Resume {
    pub(super) id: BatchId,
    /// Steps before this one are applied (or given up).
    pub(super) done: usize,
    /// (step, item) refused for good: never sent again.
    pub(super) skipped: HashSet<(usize, usize)>,
    /// Items given up so far.
    pub(super) given_up: usize,
}

/// One request of a step's state-independent form and the errors that mean "already so".
pub(super) struct Sub {
    pub(super) call: Call,
    pub(super) ok: &'static [i32],
    /// A delete: `NOT_EMPTY` means the subtree must be listed and deleted first.
    pub(super) delete: bool,
    /// The reply code that proves the follower lacked this node the leader has (a `setACL`
    /// finding nothing): the node is not there until a resync copies it.
    pub(super) gap_if: Option<i32>,
}

/// What became of one item (or of a plain step).
pub(super) enum Outcome {
    Ok,
    /// Needs the state-independent form (and every later step after it).
    Fix,
    Transient(String),
    Refused(&'static str, String),
}

/// What one step sends in a round.
pub(super) enum Sent {
    /// The step as the leader ran it: one request at this index.
    Plain(usize),
    /// Each item's requests: (item index, range of request indices).
    Robust(Vec<(usize, std::ops::Range<usize>)>),
}

impl ZkApplier {
    pub fn new(
        servers: crate::zookeeper::endpoint::ZkServers,
        auth: Option<Secret>,
        connect_timeout: Duration,
        session_timeout_ms: i32,
        max_frame: usize,
        queue: Arc<MirrorQueue<ZkOp>>,
        ephemerals: Option<Arc<crate::zookeeper::ephemeral::Ephemerals>>,
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
            touched: None,
            identity: Default::default(),
        }
    }

    /// Applies the state identity map to every path written to the follower; a change of
    /// the map marks the follower out of sync (a resync moves the state to the new ids).
    pub fn with_identity(mut self, identity: crate::nifi::identity_live::SharedIdentity) -> Self {
        crate::nifi::identity_live::watch_for(&identity, &self.queue);
        self.identity = identity;
        self
    }

    /// Notes every path this writer changes on the follower for the cross-sidecar check.
    pub fn with_convergence(
        mut self,
        touched: Arc<crate::replication::converge::Touched<String>>,
    ) -> Self {
        self.touched = Some(touched);
        self
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
        // Paths into the follower go through the state identity map; from here on every
        // path (the per-path zxids, fix-ups, the convergence notes) is the follower's.
        let map = self.identity.current();
        for (h, o) in ops {
            if at < h {
                at = h;
                newest_from = steps.len();
            }
            // A later history starts from nothing (its ops are sorted among themselves).
            let applied = if h == 0 { &self.applied } else { &none };
            let mut items = Vec::with_capacity(o.items.len());
            for it in &o.items {
                let it = if map.is_empty() {
                    std::borrow::Cow::Borrowed(it)
                } else {
                    std::borrow::Cow::Owned(it.mapped(&map))
                };
                match applied.fate(it.path(), o.zxid) {
                    Fate::Apply => items.push(it.into_owned()),
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
            self.queue.sync().mark_out_of_sync_detail(
                format!(
                    "the follower lacked {n} node(s) the leader changed; their data or ACL is \
                     not the leader's until a resync copies them"
                ),
                &format!("first: {}", first.unwrap_or_default()),
            );
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
            if let Some(t) = &self.touched {
                // What ran of it is checked from now on (a step unanswered here is sent
                // again on the resumed session, and noted again then).
                t.note(
                    steps[start..end]
                        .iter()
                        .flat_map(|(_, items)| items.iter().map(|it| it.path().to_string())),
                );
            }
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
                        // A setACL that finds no node does nothing, while its zxid is
                        // recorded (an older copy of the node would be skipped): flagged.
                        if let ([Item::SetAcl { path, .. }], err::NO_NODE) =
                            (items.as_slice(), r.err)
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
                            let lacked = replies[range.clone()]
                                .iter()
                                .zip(&subs)
                                .any(|(r, x)| x.gap_if == Some(r.err));
                            if lacked {
                                self.missing.0 += 1;
                                self.missing.1.get_or_insert_with(|| it.path().to_string());
                            }
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
            crate::zookeeper::proto::err_name(code)
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
