//! The mirror writer's connections and the outer loop of a batch: the leader and follower
//! links (restart detection, fencing a given-up follower connection), and what happens when
//! the leader cannot be read (copies parked, exact writes applied).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_protocol::resp2::types::BytesFrame;
use smallvec::SmallVec;

use super::{Effect, Item, RedisOp};
use crate::config::{CopyFormat, RedisBackend};
use crate::redis::backend::{encode_cmd, error_text, BackendError, Conn};
use crate::redis::converge::DbKey;
use crate::redis::refusal::{self, Refusal};
use crate::replication::converge::Touched;
use crate::replication::queue::{MirrorQueue, MirrorView};
use crate::replication::worker::{Applier, ApplyError};

pub struct RedisApplier {
    pub(super) leader: RedisBackend,
    pub(super) follower: RedisBackend,
    pub(super) connect_timeout: Duration,
    pub(super) leader_conn: Option<Conn>,
    pub(super) follower_conn: Option<Conn>,
    /// Redis < 7 has no PEXPIRETIME; then PTTL plus the local clock is used.
    pub(super) use_pttl: bool,
    /// The leader as last connected (a new `run_id`: restarted, or another server after a
    /// Sentinel switch).
    pub(super) leader_seen: LeaderSeen,
    /// The same for the follower.
    pub(super) follower_run_id: Option<String>,
    /// Set while a batch is being applied: if it is still set when the next one starts, the
    /// worker's timeout cancelled the last one mid-pipeline and replies may be unread.
    pub(super) dirty: bool,
    /// Copy keys type-aware instead of `DUMP`/`RESTORE` (configured, or after the follower
    /// rejected a payload).
    pub(super) typed: bool,
    /// To mark the follower out of sync when a key cannot be copied.
    pub(super) queue: Arc<MirrorQueue<RedisOp>>,
    /// Key copies waiting for an unreachable leader.
    pub(super) parked: crate::redis::parked::Parked,
    /// `CLIENT ID` of the follower connection in use, and of one given up with a batch
    /// possibly still in it: that one is killed before anything is sent on a new one, so a
    /// timed-out batch can never land after a later batch (see `fence`).
    pub(super) follower_client_id: Option<i64>,
    pub(super) stale_follower: Option<i64>,
    /// Until then the leader is not tried (it failed a moment ago).
    pub(super) leader_retry_at: Option<Instant>,
    /// Databases probed on the follower connection: `true` when `SELECT` works there. A
    /// failed `SELECT` in a pipeline would run the commands after it in the wrong database,
    /// so a database is probed on its own before anything is written to it.
    pub(super) follower_dbs: std::collections::HashMap<u32, bool>,
    /// Replays of the batch being applied that already ran on the follower (see
    /// `write_effects`), and those sent whose outcome is not known yet (the connection
    /// failed or the attempt was cut off before their replies were read).
    pub(super) replays_done: std::collections::HashSet<usize>,
    pub(super) replays_sent: Vec<(usize, bool)>,
    /// Traffic on both connections: a batch times out only when nothing moves.
    pub(super) progress: Arc<AtomicU64>,
    /// With `[cluster]`: keys to check against the leader once the follower took them
    /// ([`crate::replication::converge`]).
    pub(super) touched: Option<Arc<Touched<DbKey>>>,
    /// The state identity map and NiFi's key prefix: keys written to the follower are
    /// `map_key(prefix, key)` (the convergence notes keep the leader's key).
    pub(super) identity: crate::nifi::identity_live::SharedIdentity,
    pub(super) nifi_prefix: String,
}

impl RedisApplier {
    pub fn new(
        leader: RedisBackend,
        follower: RedisBackend,
        connect_timeout: Duration,
        copy_format: CopyFormat,
        queue: Arc<MirrorQueue<RedisOp>>,
    ) -> Self {
        Self {
            typed: copy_format == CopyFormat::Typed,
            leader,
            follower,
            connect_timeout,
            leader_conn: None,
            follower_conn: None,
            use_pttl: false,
            leader_seen: LeaderSeen::default(),
            follower_run_id: None,
            dirty: false,
            queue,
            follower_dbs: Default::default(),
            parked: Default::default(),
            leader_retry_at: None,
            follower_client_id: None,
            stale_follower: None,
            progress: Arc::default(),
            replays_done: Default::default(),
            replays_sent: Vec::new(),
            touched: None,
            identity: Default::default(),
            nifi_prefix: String::new(),
        }
    }

    /// Applies the state identity map to NiFi's keys (`redis.nifi_key_prefix`) written to
    /// the follower; a change of the map marks the follower out of sync (a resync moves the
    /// state to the new ids).
    pub fn with_identity(
        mut self,
        identity: crate::nifi::identity_live::SharedIdentity,
        nifi_prefix: &str,
    ) -> Self {
        crate::nifi::identity_live::watch_for(&identity, &self.queue);
        self.identity = identity;
        self.nifi_prefix = nifi_prefix.to_string();
        self
    }

    /// Notes every key this writer changes on the follower for the cross-sidecar check.
    pub fn with_convergence(mut self, touched: Arc<Touched<DbKey>>) -> Self {
        self.touched = Some(touched);
        self
    }

    pub(super) async fn leader(&mut self) -> Result<&mut Conn, ApplyError> {
        if self.leader_conn.as_ref().is_some_and(Conn::is_stale) {
            self.leader_conn = None;
        }
        if self.leader_conn.is_none() {
            let (mut c, change) = self
                .leader_seen
                .connect(&self.leader, self.connect_timeout)
                .await
                .map_err(|e| ApplyError::new(LEADER_UNAVAILABLE, e.to_string()))?;
            c.track_progress(self.progress.clone());
            self.leader_conn = Some(c);
            match change {
                // The promoted replica may lack the old master's last acknowledged writes,
                // which the follower already has: a resync reconciles.
                Some(LeaderChange::Switched) => self.queue.sync().mark_out_of_sync_expected(
                    "Sentinel switched the leader's master: the new master may lack the \
                     last writes the old one acknowledged (asynchronous replication)",
                ),
                Some(LeaderChange::Restarted) => {
                    return Err(ApplyError::new(LEADER_RESTARTED, "leader run_id changed"))
                }
                None => {}
            }
        }
        self.leader_conn
            .as_mut()
            .ok_or_else(|| ApplyError::new(LEADER_UNAVAILABLE, "no connection"))
    }

    pub(super) async fn follower(&mut self) -> Result<&mut Conn, ApplyError> {
        if self.follower_conn.is_none() {
            let unavailable =
                |e: BackendError| ApplyError::new("follower_unavailable", e.to_string());
            let mut c = Conn::connect(&self.follower, self.connect_timeout)
                .await
                .map_err(unavailable)?;
            // A follower that restarted may have come back empty or from an old backup:
            // what was mirrored to it before is not to be trusted.
            let run_id = leader_run_id(&mut c).await.map_err(unavailable)?;
            if self
                .follower_run_id
                .replace(run_id.clone())
                .is_some_and(|p| p != run_id)
            {
                self.queue.sync().mark_out_of_sync(
                    "the follower restarted (new run_id): it may have lost what was mirrored to it",
                );
            }
            if let Some(old) = self.stale_follower.take() {
                self.fence(&mut c, old).await?;
            }
            self.follower_client_id = client_id(&mut c).await;
            c.track_progress(self.progress.clone());
            self.follower_conn = Some(c);
            self.follower_dbs.clear();
        }
        self.follower_conn
            .as_mut()
            .ok_or_else(|| ApplyError::new("follower_unavailable", "no connection"))
    }

    pub(super) fn leader_err(&mut self, e: BackendError) -> ApplyError {
        self.leader_conn = None;
        ApplyError::new(LEADER_UNAVAILABLE, e.to_string())
    }

    pub(super) fn follower_err(&mut self, e: BackendError) -> ApplyError {
        self.drop_follower();
        ApplyError::new("follower_unavailable", e.to_string())
    }

    /// Gives the follower connection up; what it may still carry is fenced off before the
    /// next connection sends anything.
    pub(super) fn drop_follower(&mut self) {
        if self.follower_conn.take().is_some() {
            self.stale_follower = self.follower_client_id.take().or(self.stale_follower);
        }
    }

    /// Closes the follower connection `old` (`CLIENT KILL ID`) from the new one `c`. Redis
    /// runs one command at a time, so once the kill is answered nothing more of `old`
    /// executes: its bytes still in flight (a black-holed link releasing them late) are
    /// discarded. If the follower does not allow it, the batch is still resent (writes are
    /// idempotent) but its order against the old copy is unknown: flagged.
    pub(super) async fn fence(&mut self, c: &mut Conn, old: i64) -> Result<(), ApplyError> {
        let mut out = BytesMut::new();
        encode_cmd(
            &mut out,
            &[b"CLIENT", b"KILL", b"ID", old.to_string().as_bytes()],
        );
        let reply = c
            .roundtrip(&out, 1)
            .await
            .map_err(|e| ApplyError::new("follower_unavailable", e.to_string()))?;
        match reply.first().and_then(error_text) {
            None => Ok(()),
            Some(e) if e.contains("No such client") => Ok(()),
            Some(e) if refusal::classify(&e) == Refusal::Transient => {
                self.stale_follower = Some(old);
                Err(ApplyError::new("follower_busy", e))
            }
            Some(e) => {
                self.queue.sync().mark_out_of_sync_detail(
                    format!(
                        "the previous follower connection could not be closed before a batch \
                         was resent ({}); a stale write may land after a newer one",
                        crate::replication::public::error(&e)
                    ),
                    &e,
                );
                Ok(())
            }
        }
    }

    /// The batch, after the copies parked while the leader was unreachable (see
    /// [`crate::redis::parked`]). Without the leader, its exact writes still go to the follower.
    pub(super) async fn apply_batch(&mut self, batch: &[RedisOp]) -> Result<usize, ApplyError> {
        self.parked.supersede(batch);
        // A leader that just failed is not tried again for every batch (a black-holed one
        // would cost a connect timeout each time): its copies are parked meanwhile.
        if self.leader_retry_at.is_some_and(|t| Instant::now() < t) {
            let why = ApplyError::new(LEADER_UNAVAILABLE, "unreachable a moment ago");
            return self.apply_without_leader(batch, why).await;
        }
        let result = if self.parked.is_empty() {
            self.apply_ops(batch).await
        } else {
            let mut ops = self.parked.ops();
            let parked = ops.len();
            ops.extend_from_slice(batch);
            let r = self.apply_ops(&ops).await;
            if r.is_ok() {
                self.parked.clear();
                tracing::info!(
                    copies = parked,
                    "key copies parked while the leader was unreachable are applied"
                );
            }
            r.map(|given_up| given_up.min(batch.len()))
        };
        match result {
            Err(e) if e.reason == LEADER_UNAVAILABLE || e.reason == LEADER_RESTARTED => {
                if e.reason == LEADER_UNAVAILABLE {
                    self.leader_retry_at = Some(Instant::now() + LEADER_RETRY);
                }
                self.apply_without_leader(batch, e).await
            }
            r => {
                self.leader_retry_at = None;
                if self.parked.is_empty() {
                    self.queue.set_deferred(0);
                }
                r
            }
        }
    }

    /// The leader cannot be read: apply every exact write of `batch`, park its copies.
    /// Returns the ops not fully applied (counted as not mirrored; parked copies are
    /// counted when applied or flagged when given up).
    pub(super) async fn apply_without_leader(
        &mut self,
        batch: &[RedisOp],
        why: ApplyError,
    ) -> Result<usize, ApplyError> {
        let mut deferred = 0;
        let mut effects: Vec<SmallVec<[Effect; 2]>> = Vec::with_capacity(batch.len());
        for op in batch {
            let mut e = SmallVec::new();
            let mut parked_any = false;
            for it in &op.items {
                parked_any |= self.parked.park(it);
                e.extend(it.known_effect());
            }
            deferred += usize::from(parked_any);
            effects.push(e);
        }
        let restarted = why.reason == LEADER_RESTARTED;
        if restarted || self.parked.expired() {
            let (n, names) = self.parked.clear();
            let cause = if restarted {
                "the leader restarted (new run_id) and may have lost data"
            } else {
                "the leader stayed unreachable"
            };
            self.queue.count_dropped(n as u64);
            self.queue.sync().mark_out_of_sync_detail(
                format!("{n} key copies could not be read from the leader ({cause})"),
                &format!("e.g. {names}"),
            );
            if restarted {
                // Copies still waiting would read the restarted leader too.
                self.queue.discard_waiting_if(
                    |op| {
                        op.items
                            .iter()
                            .any(|it| matches!(it, Item::Copy { .. } | Item::KeysOf { .. }))
                    },
                    "the leader restarted while key copies were waiting; they were not read from \
                     the restarted leader (it may have lost data the follower still holds)",
                );
            }
        } else if deferred > 0 {
            tracing::debug!(error = %why.detail, parked = self.parked.len(), "leader unreachable: exact writes applied, key copies parked");
        }
        self.queue.set_deferred(self.parked.len());
        Ok(self.write_effects(effects).await? + deferred)
    }
}

pub(super) const LEADER_RESTARTED: &str = "leader_restarted";
pub(super) const LEADER_UNAVAILABLE: &str = "leader_unavailable";
/// How long after a failed leader connection batches do without it.
pub(super) const LEADER_RETRY: Duration = Duration::from_secs(1);

impl Applier for RedisApplier {
    type Op = RedisOp;
    async fn apply(&mut self, batch: &[RedisOp]) -> Result<usize, ApplyError> {
        if std::mem::replace(&mut self.dirty, true) {
            self.leader_conn = None;
            self.drop_follower();
        }
        // Replays sent in an attempt that ended before their replies: a `SWAPDB` may have
        // run or not, and sending it again may undo it. It is not resent; flagged instead.
        // Other replays are safe to send again.
        for (id, swap) in std::mem::take(&mut self.replays_sent) {
            if swap {
                self.replays_done.insert(id);
                self.queue.sync().mark_out_of_sync(
                    "a SWAPDB was sent to the follower but the connection failed before its \
                     reply: whether it ran is unknown, so it is not sent again",
                );
            }
        }
        let r = self.apply_batch(batch).await;
        self.dirty = false;
        if r.is_ok() {
            self.replays_done.clear();
        }
        match r {
            Err(e) => {
                // A half-read pipeline leaves replies on the wire: start both links afresh.
                self.leader_conn = None;
                self.drop_follower();
                Err(e)
            }
            ok => ok,
        }
    }

    fn progress(&self) -> Option<Arc<AtomicU64>> {
        Some(self.progress.clone())
    }

    /// Parked copies are retried while no writes come (the leader may be back), and given
    /// up once the leader is declared lost.
    async fn idle(&mut self) -> Result<(), ApplyError> {
        if self.parked.is_empty() {
            return Ok(());
        }
        self.apply(&[]).await.map(|_| ())
    }
}

/// `CLIENT ID` of a connection (`None` if the server does not say: Redis < 5, an ACL).
async fn client_id(c: &mut Conn) -> Option<i64> {
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"CLIENT", b"ID"]);
    match c.roundtrip(&out, 1).await.ok()?.first() {
        Some(BytesFrame::Integer(id)) => Some(*id),
        _ => None,
    }
}

/// The server's `run_id` (`INFO server`, of either backend): a new one means it restarted.
pub(crate) async fn leader_run_id(c: &mut Conn) -> Result<String, BackendError> {
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"INFO", b"server"]);
    let reply = c.roundtrip(&out, 1).await?;
    let text = match reply.first() {
        Some(BytesFrame::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(other) => return Err(BackendError::Protocol(format!("INFO: {other:?}"))),
        None => return Err(BackendError::Closed),
    };
    text.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|s| s.trim().to_string())
        .ok_or_else(|| BackendError::Protocol("INFO server has no run_id".into()))
}

/// How the leader changed since the last connection of whoever holds a [`LeaderSeen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaderChange {
    /// A new `run_id` on the same server: it restarted, and may have lost data.
    Restarted,
    /// A new `run_id` after a Sentinel switch: another server, which may lack the old
    /// master's last writes (see `redis::sentinel`).
    Switched,
}

/// The leader as last connected: its `run_id` and Sentinel generation (the mirror writer's
/// and the cross-sidecar check's leader links each keep one).
#[derive(Default)]
pub(crate) struct LeaderSeen {
    run_id: Option<String>,
    master_gen: u64,
}

impl LeaderSeen {
    /// Connects to the leader, reads its `run_id`, and says how it changed since the last
    /// connection (`None` the first time, or when it is the same process).
    pub(crate) async fn connect(
        &mut self,
        b: &RedisBackend,
        timeout: Duration,
    ) -> Result<(Conn, Option<LeaderChange>), BackendError> {
        let gen = b.master_generation();
        let mut c = Conn::connect(b, timeout).await?;
        let run_id = leader_run_id(&mut c).await?;
        let previous = self.run_id.replace(run_id.clone());
        let switched = std::mem::replace(&mut self.master_gen, gen) != gen;
        let change = previous
            .is_some_and(|p| p != run_id)
            .then_some(if switched {
                LeaderChange::Switched
            } else {
                LeaderChange::Restarted
            });
        Ok((c, change))
    }
}
