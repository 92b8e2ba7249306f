//! How a Redis write reaches the follower: **its own effect when the request carries it and
//! the proxy knows the order Redis ran it in; otherwise a copy of the state of the keys it
//! touched.** Never a blind replay of the command.
//!
//! Why not replay commands (or rewrite them to effects as Redis's own replication does):
//! Redis runs commands from different connections in one order, but the proxy sees their
//! acknowledgements on different sockets and cannot know that order. Two clients racing on
//! one key (`APPEND k a` / `APPEND k b`) could be replayed in the other order and the
//! follower would silently diverge.
//!
//! The two kinds of mirror item:
//! - **Put / Delete** (`SET`, `GETSET`, `SETEX`, `PSETEX`, `SETNX`, `MSET`, `MSETNX`, `DEL`,
//!   `UNLINK` — all of NiFi's writes): the request holds the key's complete new state. It is
//!   sent as is (`SET key value [PXAT abs]`, `DEL key`), costing the leader nothing, *if* no
//!   other write to that key was in flight at the same time ([`super::inflight`]): then the
//!   acknowledgement order is the execution order, and the mirror op is queued under the
//!   tracker's lock so a later write is queued after it. Relative expiries become absolute
//!   at acknowledgement time.
//! - **Copy** (everything else, and any contended write): after the acknowledgement the
//!   key's *current* state is read from the leader (`DUMP` + `PEXPIRETIME`) and restored on
//!   the follower (`RESTORE … REPLACE ABSTTL`, or `DEL` when gone). A copy reads state at
//!   least as new as the write, so whatever order the leader used, the last operation on a
//!   key leaves the leader's final value. That makes `SPOP`, `XADD *`, scripts that call
//!   `SRANDMEMBER` or `TIME`, `EXPIRE` applied late and blocking pops exact without special
//!   cases. Copies and Puts mix safely: both overwrite the whole key, copies read the newest
//!   state, and a key's copies only coalesce while no Put/Delete sits between them.
//!
//! Mechanics, per batch taken from the queue:
//! 1. Ops whose keys depend on their arguments (`EVAL … numkeys`, `XREADGROUP … STREAMS`,
//!    any command the table does not know) get their keys from the leader: `COMMAND GETKEYS`.
//! 2. One `MULTI … EXEC` on the leader reads `DUMP` + `PEXPIRETIME` of every copied key in
//!    the batch: one round trip and an atomic snapshot (skipped when nothing is copied).
//! 3. The follower gets the effects in queue order; an op with several effects (a `MULTI`
//!    block, `RENAME`) is applied inside its own `MULTI … EXEC`. Keyless writes
//!    (`FLUSHDB`, `FUNCTION LOAD`) are replayed as sent. Each op's database is selected.
//!
//! Costs and limits (also in the README): a copied write costs the leader a `DUMP` of the
//! keys it touched (pipelined and coalesced). A write to a very large collection copies the
//! whole collection. The follower should accept the leader's `DUMP` format (same or newer
//! Redis); the first time it rejects a payload the writer switches to type-aware copies
//! ([`super::typed`], slower: a few round trips per key) and retries the batch, as it does
//! from the start with `redis.copy_format = "typed"`. `SWAPDB` and `FLUSHALL`/`FLUSHDB` are replayed; a client write that
//! races with them on another connection may be ordered either way on the follower. If the
//! leader restarts (new `run_id`) while copies are queued, they are given up and the
//! follower marked out of sync rather than copied from a leader that may have lost data.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;
use smallvec::SmallVec;

use super::backend::{encode_cmd, error_text, BackendError, Conn};
use super::refusal::{self, Refusal};
use crate::config::{CopyFormat, RedisBackend};
use crate::replication::queue::{heap_alloc, Barrier, MirrorOp, MirrorQueue, MirrorView};
use crate::replication::worker::{Applier, ApplyError};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// One acknowledged write (or one `MULTI` block) to mirror.
#[derive(Debug, Clone)]
pub struct RedisOp {
    pub items: SmallVec<[Item; 1]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The key now holds this string (the write carried it and ran uncontended).
    Put {
        db: u32,
        key: Bytes,
        value: Bytes,
        expire_at_ms: Option<i64>,
    },
    /// The key is gone (an uncontended `DEL`).
    Delete { db: u32, key: Bytes },
    /// Copy this key's state.
    Copy { db: u32, key: Bytes },
    /// Copy the keys the leader says this command touches.
    KeysOf { db: u32, cmd: Bytes },
    /// Replay the command as sent (keyless writes).
    Replay { db: u32, cmd: Bytes },
}

impl Item {
    /// Heap bytes (the item's own size is inside the op's, counted by the queue).
    fn heap_bytes(&self) -> usize {
        match self {
            Item::Put { key, value, .. } => heap_alloc(key.len()) + heap_alloc(value.len()),
            Item::Copy { key, .. } | Item::Delete { key, .. } => heap_alloc(key.len()),
            Item::KeysOf { cmd, .. } | Item::Replay { cmd, .. } => heap_alloc(cmd.len()),
        }
    }
}

impl MirrorOp for RedisOp {
    type Key = (u32, Bytes);
    fn cost_bytes(&self) -> usize {
        let spilled = if self.items.spilled() {
            heap_alloc(self.items.capacity() * std::mem::size_of::<Item>())
        } else {
            0
        };
        spilled + self.items.iter().map(Item::heap_bytes).sum::<usize>()
    }
    fn coalesce_key(&self) -> Option<(u32, Bytes)> {
        match self.items.as_slice() {
            [Item::Copy { db, key }] => Some((*db, key.clone())),
            _ => None,
        }
    }

    /// Copies read the latest state, so copies of a key may merge; a `Put`/`Delete` fixes
    /// the key at a point in time and a replay (`FLUSHDB`) fixes everything, so nothing may
    /// merge across them.
    fn barrier(&self) -> Barrier<(u32, Bytes)> {
        let mut keys = Vec::new();
        for it in &self.items {
            match it {
                Item::Put { db, key, .. } | Item::Delete { db, key } => {
                    keys.push((*db, key.clone()))
                }
                Item::Replay { .. } => return Barrier::All,
                Item::Copy { .. } | Item::KeysOf { .. } => {}
            }
        }
        if keys.is_empty() {
            Barrier::None
        } else {
            Barrier::Keys(keys)
        }
    }
}

/// What the follower gets for one op.
enum Effect {
    Set {
        db: u32,
        key: Bytes,
        value: Bytes,
        expire_at_ms: Option<i64>,
    },
    Restore {
        db: u32,
        key: Bytes,
        payload: Bytes,
        abs_ttl_ms: i64,
    },
    Delete {
        db: u32,
        key: Bytes,
    },
    Replay {
        db: u32,
        cmd: Bytes,
    },
    /// A type-aware copy (`None`: the key is gone).
    Typed {
        db: u32,
        key: Bytes,
        snap: Option<super::typed::Snapshot>,
    },
}

impl Item {
    /// The effect of an item that needs nothing from the leader; `None` for a copy.
    fn known_effect(&self) -> Option<Effect> {
        match self {
            Item::Put {
                db,
                key,
                value,
                expire_at_ms,
            } => Some(Effect::Set {
                db: *db,
                key: key.clone(),
                value: value.clone(),
                expire_at_ms: *expire_at_ms,
            }),
            Item::Delete { db, key } => Some(Effect::Delete {
                db: *db,
                key: key.clone(),
            }),
            Item::Replay { db, cmd } => Some(Effect::Replay {
                db: *db,
                cmd: cmd.clone(),
            }),
            Item::Copy { .. } | Item::KeysOf { .. } => None,
        }
    }
}

impl Effect {
    fn db(&self) -> u32 {
        match self {
            Effect::Set { db, .. }
            | Effect::Restore { db, .. }
            | Effect::Delete { db, .. }
            | Effect::Replay { db, .. }
            | Effect::Typed { db, .. } => *db,
        }
    }

    /// What this effect writes, for logs and `/status`: the command and key, never a value.
    fn describe(&self) -> String {
        let (cmd, key): (&str, &[u8]) = match self {
            Effect::Set { key, .. } => ("SET", key),
            Effect::Restore { key, .. } | Effect::Typed { key, .. } => ("copy of", key),
            Effect::Delete { key, .. } => ("DEL", key),
            Effect::Replay { cmd, .. } => {
                let name = command_name(cmd).unwrap_or(b"?");
                return format!("{} (db {})", String::from_utf8_lossy(name), self.db());
            }
        };
        let shown = &key[..key.len().min(200)];
        format!(
            "{cmd} key {:?} (db {})",
            String::from_utf8_lossy(shown),
            self.db()
        )
    }
}

fn describe_op(op: &[Effect]) -> String {
    match op {
        [] => "an empty op".into(),
        [one] => one.describe(),
        [first, ..] => format!(
            "{} and {} more in one transaction",
            first.describe(),
            op.len() - 1
        ),
    }
}

/// Per op item: a key to read from the leader, or an effect known already.
enum Plan {
    Read { db: u32, key: Bytes },
    Known(Effect),
}

pub struct RedisApplier {
    leader: RedisBackend,
    follower: RedisBackend,
    connect_timeout: Duration,
    leader_conn: Option<Conn>,
    follower_conn: Option<Conn>,
    /// Redis < 7 has no PEXPIRETIME; then PTTL plus the local clock is used.
    use_pttl: bool,
    /// The leader's `run_id` when last connected: a new one means it restarted.
    leader_run_id: Option<String>,
    /// The same for the follower.
    follower_run_id: Option<String>,
    /// Set while a batch is being applied: if it is still set when the next one starts, the
    /// worker's timeout cancelled the last one mid-pipeline and replies may be unread.
    dirty: bool,
    /// Copy keys type-aware instead of `DUMP`/`RESTORE` (configured, or after the follower
    /// rejected a payload).
    typed: bool,
    /// To mark the follower out of sync when a key cannot be copied.
    queue: Arc<MirrorQueue<RedisOp>>,
    /// Key copies waiting for an unreachable leader.
    parked: super::parked::Parked,
    /// `CLIENT ID` of the follower connection in use, and of one given up with a batch
    /// possibly still in it: that one is killed before anything is sent on a new one, so a
    /// timed-out batch can never land after a later batch (see `fence`).
    follower_client_id: Option<i64>,
    stale_follower: Option<i64>,
    /// Until then the leader is not tried (it failed a moment ago).
    leader_retry_at: Option<Instant>,
    /// Databases probed on the follower connection: `true` when `SELECT` works there. A
    /// failed `SELECT` in a pipeline would run the commands after it in the wrong database,
    /// so a database is probed on its own before anything is written to it.
    follower_dbs: std::collections::HashMap<u32, bool>,
    /// Traffic on both connections: a batch times out only when nothing moves.
    progress: Arc<AtomicU64>,
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
            leader_run_id: None,
            follower_run_id: None,
            dirty: false,
            queue,
            follower_dbs: Default::default(),
            parked: Default::default(),
            leader_retry_at: None,
            follower_client_id: None,
            stale_follower: None,
            progress: Arc::default(),
        }
    }

    async fn leader(&mut self) -> Result<&mut Conn, ApplyError> {
        if self.leader_conn.is_none() {
            let mut c = Conn::connect(&self.leader, self.connect_timeout)
                .await
                .map_err(|e| ApplyError::new(LEADER_UNAVAILABLE, e.to_string()))?;
            let run_id = leader_run_id(&mut c)
                .await
                .map_err(|e| ApplyError::new(LEADER_UNAVAILABLE, e.to_string()))?;
            let previous = self.leader_run_id.replace(run_id.clone());
            c.track_progress(self.progress.clone());
            self.leader_conn = Some(c);
            if previous.is_some_and(|p| p != run_id) {
                return Err(ApplyError::new(LEADER_RESTARTED, "leader run_id changed"));
            }
        }
        self.leader_conn
            .as_mut()
            .ok_or_else(|| ApplyError::new(LEADER_UNAVAILABLE, "no connection"))
    }

    async fn follower(&mut self) -> Result<&mut Conn, ApplyError> {
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

    /// Step 1: keys of `KeysOf` items, in item order.
    async fn resolve_keys(&mut self, batch: &[RedisOp]) -> Result<Vec<Vec<Bytes>>, ApplyError> {
        let mut out = BytesMut::new();
        let mut n = 0;
        for op in batch {
            for it in &op.items {
                if let Item::KeysOf { cmd, .. } = it {
                    out.extend_from_slice(&getkeys_frame(cmd));
                    n += 1;
                }
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let conn = self.leader().await?;
        let replies = conn
            .roundtrip(&out, n)
            .await
            .map_err(|e| self.leader_err(e))?;
        Ok(replies
            .into_iter()
            .map(|r| match r {
                BytesFrame::Array(keys) => keys
                    .into_iter()
                    .filter_map(|k| match k {
                        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(b),
                        _ => None,
                    })
                    .collect(),
                // "The command has no key arguments" and the like: nothing to copy.
                _ => Vec::new(),
            })
            .collect())
    }

    fn leader_err(&mut self, e: BackendError) -> ApplyError {
        self.leader_conn = None;
        ApplyError::new(LEADER_UNAVAILABLE, e.to_string())
    }

    fn follower_err(&mut self, e: BackendError) -> ApplyError {
        self.drop_follower();
        ApplyError::new("follower_unavailable", e.to_string())
    }

    /// Gives the follower connection up; what it may still carry is fenced off before the
    /// next connection sends anything.
    fn drop_follower(&mut self) {
        if self.follower_conn.take().is_some() {
            self.stale_follower = self.follower_client_id.take().or(self.stale_follower);
        }
    }

    /// Closes the follower connection `old` (`CLIENT KILL ID`) from the new one `c`. Redis
    /// runs one command at a time, so once the kill is answered nothing more of `old`
    /// executes: its bytes still in flight (a black-holed link releasing them late) are
    /// discarded. If the follower does not allow it, the batch is still resent (writes are
    /// idempotent) but its order against the old copy is unknown: flagged.
    async fn fence(&mut self, c: &mut Conn, old: i64) -> Result<(), ApplyError> {
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
                self.queue.sync().mark_out_of_sync(format!(
                    "the previous follower connection could not be closed before a batch was \
                     resent ({e}); a stale write may land after a newer one"
                ));
                Ok(())
            }
        }
    }

    /// The batch, after the copies parked while the leader was unreachable (see
    /// [`super::parked`]). Without the leader, its exact writes still go to the follower.
    async fn apply_batch(&mut self, batch: &[RedisOp]) -> Result<usize, ApplyError> {
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
    async fn apply_without_leader(
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
            self.queue.sync().mark_out_of_sync(format!(
                "{n} key copies could not be read from the leader ({cause}); e.g. {names}"
            ));
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

    /// Steps 1 to 3 for the whole batch.
    async fn apply_ops(&mut self, batch: &[RedisOp]) -> Result<usize, ApplyError> {
        let resolved = self.resolve_keys(batch).await?;
        let mut plans: Vec<SmallVec<[Plan; 2]>> = Vec::with_capacity(batch.len());
        let mut resolved = resolved.into_iter();
        for op in batch {
            let mut p = SmallVec::new();
            for it in &op.items {
                match it {
                    Item::Copy { db, key } => p.push(Plan::Read {
                        db: *db,
                        key: key.clone(),
                    }),
                    Item::KeysOf { db, .. } => {
                        for key in resolved.next().unwrap_or_default() {
                            p.push(Plan::Read { db: *db, key });
                        }
                    }
                    known => p.extend(known.known_effect().map(Plan::Known)),
                }
            }
            plans.push(p);
        }
        if self.typed {
            let effects = self.read_typed(plans).await?;
            return self.write_effects(effects).await;
        }
        // Read everything in one MULTI/EXEC.
        let ttl_cmd: &[u8] = if self.use_pttl {
            b"PTTL"
        } else {
            b"PEXPIRETIME"
        };
        let mut out = BytesMut::new();
        encode_cmd(&mut out, &[b"MULTI"]);
        let mut reads = 0usize;
        let mut db = None;
        for p in plans.iter().flatten() {
            if let Plan::Read { db: d, key } = p {
                if db != Some(*d) {
                    encode_cmd(&mut out, &[b"SELECT", d.to_string().as_bytes()]);
                    db = Some(*d);
                    reads += 1;
                }
                encode_cmd(&mut out, &[b"DUMP", key]);
                encode_cmd(&mut out, &[ttl_cmd, key]);
                reads += 2;
            }
        }
        let mut values: Vec<BytesFrame> = Vec::new();
        if reads > 0 {
            // Leave the connection on its configured database afterwards.
            let home = self.leader.db;
            encode_cmd(&mut out, &[b"EXEC"]);
            encode_cmd(&mut out, &[b"SELECT", home.to_string().as_bytes()]);
            let conn = self.leader().await?;
            let replies = conn
                .roundtrip(&out, reads + 3)
                .await
                .map_err(|e| self.leader_err(e))?;
            let exec = replies.into_iter().nth(reads + 1);
            match exec {
                Some(BytesFrame::Array(v)) => values = v,
                Some(other) => {
                    let txt = error_text(&other).unwrap_or_else(|| format!("{other:?}"));
                    if txt.contains("unknown command") && !self.use_pttl {
                        self.use_pttl = true; // Redis < 7: retry with PTTL
                    }
                    return Err(ApplyError::new(
                        "leader_error",
                        format!("reading keys: {txt}"),
                    ));
                }
                None => return Err(ApplyError::new("leader_error", "short reply")),
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        // Turn reads into effects.
        let mut vals = values.into_iter();
        let mut effects: Vec<SmallVec<[Effect; 2]>> = Vec::with_capacity(plans.len());
        let mut last_db = None;
        for p in plans {
            let mut e = SmallVec::new();
            for step in p {
                match step {
                    Plan::Known(effect) => e.push(effect),
                    Plan::Read { db, key } => {
                        if last_db != Some(db) {
                            vals.next(); // SELECT's OK
                            last_db = Some(db);
                        }
                        let dump = vals.next();
                        let ttl = vals.next();
                        let abs_ttl_ms = match ttl {
                            Some(BytesFrame::Integer(t)) if t >= 0 => {
                                if self.use_pttl {
                                    now_ms + t
                                } else {
                                    t.max(1)
                                }
                            }
                            _ => 0,
                        };
                        match dump {
                            Some(BytesFrame::BulkString(payload)) => e.push(Effect::Restore {
                                db,
                                key,
                                payload,
                                abs_ttl_ms,
                            }),
                            Some(BytesFrame::Null) | None => e.push(Effect::Delete { db, key }),
                            Some(other) => {
                                return Err(ApplyError::new(
                                    "leader_error",
                                    format!("DUMP: {}", error_text(&other).unwrap_or_default()),
                                ))
                            }
                        }
                    }
                }
            }
            effects.push(e);
        }
        self.write_effects(effects).await
    }

    /// Step 2 without `DUMP`: each copied key read type-aware, one at a time.
    async fn read_typed(
        &mut self,
        plans: Vec<SmallVec<[Plan; 2]>>,
    ) -> Result<Vec<SmallVec<[Effect; 2]>>, ApplyError> {
        let mut effects = Vec::with_capacity(plans.len());
        for p in plans {
            let mut e = SmallVec::new();
            for step in p {
                match step {
                    Plan::Known(effect) => e.push(effect),
                    Plan::Read { db, key } => {
                        let conn = self.leader().await?;
                        let r = async {
                            super::resync::select(conn, db)
                                .await
                                .map_err(BackendError::Protocol)?;
                            super::typed::read(conn, &key).await
                        }
                        .await;
                        let snap = r.map_err(|e| self.leader_err(e))?;
                        e.push(Effect::Typed { db, key, snap });
                    }
                }
            }
            effects.push(e);
        }
        Ok(effects)
    }

    /// Probes the databases the batch writes to that this follower connection has not
    /// seen yet (one round trip, only when a new database appears), and takes out every
    /// effect aimed at a database the follower does not have: each is refused for good.
    /// Returns how many ops lost an effect that way.
    async fn screen_databases(
        &mut self,
        effects: &mut [SmallVec<[Effect; 2]>],
    ) -> Result<usize, ApplyError> {
        let home = self.follower().await?.db;
        let mut unknown: Vec<u32> = effects
            .iter()
            .flatten()
            .map(Effect::db)
            .filter(|d| *d != home && !self.follower_dbs.contains_key(d))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            let mut out = BytesMut::new();
            for d in unknown.iter().chain([&home]) {
                encode_cmd(&mut out, &[b"SELECT", d.to_string().as_bytes()]);
            }
            let conn = self.follower().await?;
            let replies = match conn.roundtrip(&out, unknown.len() + 1).await {
                Ok(r) => r,
                Err(e) => return Err(self.follower_err(e)),
            };
            for (d, r) in unknown.iter().zip(&replies) {
                let ok = match error_text(r) {
                    None => true,
                    Some(e) if refusal::classify(&e) == Refusal::Transient => {
                        return Err(ApplyError::new("follower_busy", e));
                    }
                    Some(_) => false,
                };
                self.follower_dbs.insert(*d, ok);
            }
            if let Some(e) = replies.last().and_then(error_text) {
                return Err(ApplyError::new(
                    "follower_error",
                    format!("SELECT {home}: {e}"),
                ));
            }
        }
        let mut touched = 0;
        for op in effects.iter_mut() {
            let before = op.len();
            let dbs = &self.follower_dbs;
            let queue = &self.queue;
            op.retain(|e| {
                let d = e.db();
                let ok = d == home || dbs.get(&d) == Some(&true);
                if !ok {
                    queue.refused(
                        "db_out_of_range",
                        &format!("{}: the follower has no database {d}", e.describe()),
                    );
                }
                ok
            });
            touched += usize::from(op.len() < before);
        }
        Ok(touched)
    }

    async fn write_effects(
        &mut self,
        mut effects: Vec<SmallVec<[Effect; 2]>>,
    ) -> Result<usize, ApplyError> {
        if effects.iter().all(|op| op.is_empty()) {
            return Ok(0);
        }
        let mut given_up = self.screen_databases(&mut effects).await?;
        let mut out = BytesMut::new();
        // Per op: how many replies and whether they are wrapped in MULTI.
        let mut shape: Vec<(usize, bool)> = Vec::with_capacity(effects.len());
        let mut db = self.follower_conn.as_ref().map(|c| c.db);
        let mut total = 0usize;
        for op in &effects {
            if op.is_empty() {
                shape.push((0, false));
                continue;
            }
            let wrap = op.len() > 1 || op.iter().any(|e| matches!(e, Effect::Typed { .. }));
            let mut n = 0;
            if wrap {
                encode_cmd(&mut out, &[b"MULTI"]);
                n += 1;
            }
            for e in op {
                let d = match e {
                    Effect::Set { db, .. }
                    | Effect::Restore { db, .. }
                    | Effect::Delete { db, .. }
                    | Effect::Replay { db, .. }
                    | Effect::Typed { db, .. } => *db,
                };
                if db != Some(d) {
                    encode_cmd(&mut out, &[b"SELECT", d.to_string().as_bytes()]);
                    db = Some(d);
                    n += 1;
                }
                match e {
                    Effect::Set {
                        key,
                        value,
                        expire_at_ms: None,
                        ..
                    } => encode_cmd(&mut out, &[b"SET", key, value]),
                    Effect::Set {
                        key,
                        value,
                        expire_at_ms: Some(t),
                        ..
                    } => encode_cmd(
                        &mut out,
                        &[
                            b"SET",
                            key,
                            value,
                            b"PXAT",
                            (*t).max(1).to_string().as_bytes(),
                        ],
                    ),
                    Effect::Restore {
                        key,
                        payload,
                        abs_ttl_ms,
                        ..
                    } => encode_cmd(
                        &mut out,
                        &[
                            b"RESTORE",
                            key,
                            abs_ttl_ms.to_string().as_bytes(),
                            payload,
                            b"REPLACE",
                            b"ABSTTL",
                        ],
                    ),
                    Effect::Delete { key, .. } => encode_cmd(&mut out, &[b"DEL", key]),
                    Effect::Replay { cmd, .. } => out.extend_from_slice(cmd),
                    Effect::Typed { key, snap, .. } => {
                        let k = super::typed::write_cmds(&mut out, key, snap.as_ref());
                        if k == 0 {
                            self.queue.sync().mark_out_of_sync(format!(
                                "key {} has a type statemirror cannot copy without DUMP/RESTORE",
                                String::from_utf8_lossy(key)
                            ));
                        }
                        n += k;
                        continue;
                    }
                }
                n += 1;
            }
            if wrap {
                encode_cmd(&mut out, &[b"EXEC"]);
                n += 1;
            }
            shape.push((n, wrap));
            total += n;
        }
        if total == 0 {
            return Ok(0);
        }
        let conn = self.follower().await?;
        let sent = conn.roundtrip(&out, total).await;
        let replies = match sent {
            Ok(r) => r,
            Err(e) => return Err(self.follower_err(e)),
        };
        if let (Some(c), Some(d)) = (self.follower_conn.as_mut(), db) {
            c.db = d;
        }
        let mut transient: Option<String> = None;
        let mut refused: Vec<(usize, &'static str, String)> = Vec::new();
        let mut it = replies.into_iter();
        for (i, (n, wrap)) in shape.into_iter().enumerate() {
            let op_replies: Vec<BytesFrame> = it.by_ref().take(n).collect();
            let mut errors: Vec<String> = Vec::new();
            for r in &op_replies {
                if let Some(e) = error_text(r) {
                    errors.push(e);
                }
                if let (true, BytesFrame::Array(inner)) = (wrap, r) {
                    errors.extend(inner.iter().filter_map(error_text));
                }
            }
            if errors.is_empty() {
                continue;
            }
            let payload_rejected = errors.iter().all(|e| restore_refused(e));
            if payload_rejected && !self.typed {
                // Every payload from this leader will be refused alike: copy type-aware
                // from now on and apply the batch again (it is idempotent).
                self.typed = true;
                tracing::warn!(
                    error = %errors[0],
                    "the follower rejected a DUMP payload (an older Redis?); copying keys \
                     type-aware from now on (slower; set redis.copy_format = \"typed\")"
                );
                return Err(ApplyError::new(
                    "follower_rejected_payload",
                    errors.join("; "),
                ));
            }
            // Other ops of the pipeline ran; this one is retried (with the batch) only when
            // every error is a passing state of the follower, else skipped for good.
            let permanent = errors.iter().find_map(|e| match refusal::classify(e) {
                Refusal::Permanent(reason) => Some((reason, e.clone())),
                Refusal::Transient => None,
            });
            match permanent {
                Some((reason, e)) => refused.push((i, reason, e)),
                None => transient = Some(errors.join("; ")),
            }
        }
        if let Some(e) = transient {
            return Err(ApplyError::new("follower_busy", e));
        }
        for (i, reason, e) in refused {
            let what = effects
                .get(i)
                .map_or_else(String::new, |op| describe_op(op));
            self.queue.refused(reason, &format!("{what}: {e}"));
            given_up += 1;
        }
        Ok(given_up)
    }
}

const LEADER_RESTARTED: &str = "leader_restarted";
const LEADER_UNAVAILABLE: &str = "leader_unavailable";
/// How long after a failed leader connection batches do without it.
const LEADER_RETRY: Duration = Duration::from_secs(1);

impl Applier for RedisApplier {
    type Op = RedisOp;
    async fn apply(&mut self, batch: &[RedisOp]) -> Result<usize, ApplyError> {
        if std::mem::replace(&mut self.dirty, true) {
            self.leader_conn = None;
            self.drop_follower();
        }
        let r = self.apply_batch(batch).await;
        self.dirty = false;
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

/// The follower cannot take a `RESTORE`: a payload from a newer Redis ("payload version",
/// "Bad data format", `EXECABORT` around it), or no `RESTORE` at all for statemirror's user
/// (renamed away, or denied by an ACL as some managed services do). Type-aware copies work
/// in all these cases.
fn restore_refused(e: &str) -> bool {
    let lower = e.to_ascii_lowercase();
    e.contains("payload version")
        || e.contains("EXECABORT")
        || e.contains("Bad data format")
        || (lower.contains("restore")
            && (lower.contains("unknown command") || e.starts_with("NOPERM")))
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

/// `run_id` from `INFO server` (of either backend).
async fn leader_run_id(c: &mut Conn) -> Result<String, BackendError> {
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

/// The command name of a request frame (`*<n>\r\n$<len>\r\n<name>\r\n…`).
fn command_name(cmd: &[u8]) -> Option<&[u8]> {
    let first = cmd.iter().position(|&b| b == b'\n')? + 1;
    let rest = cmd.get(first..)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let len: usize = std::str::from_utf8(rest.get(1..nl.checked_sub(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    rest.get(nl + 1..nl + 1 + len)
}

/// `COMMAND GETKEYS <the original arguments>` from a request's raw frame.
fn getkeys_frame(cmd: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(cmd.len() + 32);
    // cmd = "*<n>\r\n<args>": prepend two arguments.
    let (n, rest) = match cmd.iter().position(|&b| b == b'\n') {
        Some(i) => (
            std::str::from_utf8(&cmd[1..i.saturating_sub(1)])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0),
            &cmd[i + 1..],
        ),
        None => (0, &cmd[..0]),
    };
    out.extend_from_slice(format!("*{}\r\n$7\r\nCOMMAND\r\n$7\r\nGETKEYS\r\n", n + 2).as_bytes());
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_restores_switch_to_typed_copies() {
        assert!(restore_refused(
            "ERR DUMP payload version or checksum are wrong"
        ));
        assert!(restore_refused(
            "ERR unknown command 'RESTORE', with args beginning with: 'k' "
        ));
        assert!(restore_refused(
            "NOPERM User nifi has no permissions to run the 'restore' command"
        ));
        assert!(!restore_refused("ERR unknown command 'FOO'"));
        assert!(!restore_refused("OOM command not allowed"));
    }

    #[test]
    fn getkeys_wraps_the_original_command() {
        let f = getkeys_frame(b"*3\r\n$4\r\nEVAL\r\n$1\r\nx\r\n$1\r\n0\r\n");
        assert_eq!(
            &f[..],
            b"*5\r\n$7\r\nCOMMAND\r\n$7\r\nGETKEYS\r\n$4\r\nEVAL\r\n$1\r\nx\r\n$1\r\n0\r\n"
        );
    }

    #[test]
    fn only_single_key_copies_coalesce() {
        let one = RedisOp {
            items: smallvec::smallvec![Item::Copy {
                db: 0,
                key: Bytes::from_static(b"k")
            }],
        };
        assert_eq!(one.coalesce_key(), Some((0, Bytes::from_static(b"k"))));
        let tx = RedisOp {
            items: smallvec::smallvec![
                Item::Copy {
                    db: 0,
                    key: Bytes::from_static(b"a")
                },
                Item::Copy {
                    db: 0,
                    key: Bytes::from_static(b"b")
                }
            ],
        };
        assert_eq!(tx.coalesce_key(), None);
    }
}
