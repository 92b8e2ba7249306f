//! Steps 1 and 2 of a batch: the keys of `KeysOf` items (`COMMAND GETKEYS`), then the
//! current state of every copied key read from the leader (`DUMP` + expiry, or type-aware).

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;
use smallvec::SmallVec;

use super::applier::RedisApplier;
use super::{getkeys_frame, swapdb_of, DbMoves, Effect, Item, Plan, RedisOp};
use crate::redis::backend::{encode_cmd, error_text, BackendError};
use crate::replication::worker::ApplyError;

/// Appends, for every key `plans` read, each of `cmds` with the key as last argument, with a
/// `SELECT` of the leader database it is read from whenever that changes. Returns how many
/// commands (replies) that makes.
fn encode_reads(plans: &[SmallVec<[Plan; 2]>], out: &mut BytesMut, cmds: &[&[&[u8]]]) -> usize {
    let mut n = 0;
    let mut db = None;
    let mut args: SmallVec<[&[u8]; 4]> = SmallVec::new();
    for p in plans.iter().flatten() {
        if let Plan::Read { from, key, .. } = p {
            if db != Some(*from) {
                encode_cmd(out, &[b"SELECT", from.to_string().as_bytes()]);
                db = Some(*from);
                n += 1;
            }
            for cmd in cmds {
                args.clear();
                args.extend_from_slice(cmd);
                args.push(key);
                encode_cmd(out, &args);
                n += 1;
            }
        }
    }
    n
}

/// Most estimated bytes of key state read from the leader before they are written to the
/// follower (the default `replication.batch_max_bytes`): the memory a batch of copies holds.
pub(super) const COPY_READ_BUDGET: usize = 8 << 20;

impl RedisApplier {
    /// Step 1: keys of `KeysOf` items, in item order.
    pub(super) async fn resolve_keys(
        &mut self,
        batch: &[RedisOp],
    ) -> Result<Vec<Vec<Bytes>>, ApplyError> {
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

    /// Steps 1 to 3 for the whole batch.
    pub(super) async fn apply_ops(&mut self, batch: &[RedisOp]) -> Result<usize, ApplyError> {
        let resolved = self.resolve_keys(batch).await?;
        let mut plans: Vec<SmallVec<[Plan; 2]>> = Vec::with_capacity(batch.len());
        let mut resolved = resolved.into_iter();
        let moves = self.db_moves(batch);
        for (op, moves) in batch.iter().zip(moves) {
            let mut p = SmallVec::new();
            for it in &op.items {
                match it {
                    Item::Copy { db, key } => p.push(Plan::Read {
                        db: *db,
                        from: moves.get(*db),
                        key: key.clone(),
                    }),
                    Item::KeysOf { db, .. } => {
                        for key in resolved.next().unwrap_or_default() {
                            p.push(Plan::Read {
                                db: *db,
                                from: moves.get(*db),
                                key,
                            });
                        }
                    }
                    known => p.extend(known.known_effect().map(Plan::Known)),
                }
            }
            plans.push(p);
        }
        // Read and write in rounds of at most `COPY_READ_BUDGET` estimated bytes of key
        // state, so a batch of copies of large keys never sits in memory at once. An op is
        // never split (its keys are read in one snapshot); a single larger op is a round.
        let sizes = self.estimate_reads(&plans).await?;
        let mut given_up = 0;
        let mut plans = plans.into_iter();
        let mut sizes = sizes.into_iter().peekable();
        loop {
            let mut round = Vec::new();
            let mut bytes = 0usize;
            while let Some(&s) = sizes.peek() {
                if !round.is_empty() && bytes.saturating_add(s) > COPY_READ_BUDGET {
                    break;
                }
                sizes.next();
                bytes = bytes.saturating_add(s);
                round.extend(plans.next());
            }
            if round.is_empty() {
                return Ok(given_up);
            }
            let effects = if self.typed {
                self.read_typed(round).await?
            } else {
                self.read_dumps(round).await?
            };
            given_up += self.write_effects(effects).await?;
        }
    }

    /// For each op of `batch`, where the `SWAPDB`s queued after it (later in the batch, or
    /// still waiting) have moved its keys on the leader: a copy reads the leader now, after
    /// those swaps ran there, but writes the follower before they are replayed on it. The
    /// common case (no `SWAPDB` anywhere) costs one scan and no allocation per op.
    fn db_moves(&self, batch: &[RedisOp]) -> Vec<std::sync::Arc<DbMoves>> {
        let swap_of = |op: &RedisOp| {
            op.items.iter().find_map(|it| match it {
                Item::Replay { cmd, .. } => swapdb_of(cmd),
                _ => None,
            })
        };
        let waiting = self.queue.waiting_filter_map(swap_of);
        let in_batch = batch.iter().any(|op| swap_of(op).is_some());
        let mut current = std::sync::Arc::new(DbMoves::default());
        if waiting.is_empty() && !in_batch {
            return vec![current; batch.len()];
        }
        for (a, b) in waiting.into_iter().rev() {
            std::sync::Arc::make_mut(&mut current).swap_before(a, b);
        }
        let mut out = vec![current.clone(); batch.len()];
        for (i, op) in batch.iter().enumerate().rev() {
            out[i] = current.clone();
            if let Some((a, b)) = swap_of(op) {
                std::sync::Arc::make_mut(&mut current).swap_before(a, b);
            }
        }
        out
    }

    /// Estimated bytes of the keys each op reads from the leader (`MEMORY USAGE`, one
    /// pipelined round trip; only when there are at least two keys to read, since a single
    /// key cannot be split anyway). Where the leader won't say (no `MEMORY` for this user,
    /// an old Redis), each key counts as 1/64 of the budget.
    async fn estimate_reads(
        &mut self,
        plans: &[SmallVec<[Plan; 2]>],
    ) -> Result<Vec<usize>, ApplyError> {
        let keys = plans
            .iter()
            .flatten()
            .filter(|p| matches!(p, Plan::Read { .. }))
            .count();
        if keys < 2 {
            return Ok(vec![0; plans.len()]);
        }
        let mut out = BytesMut::new();
        let mut n = encode_reads(plans, &mut out, &[&[b"MEMORY", b"USAGE"]]);
        encode_cmd(
            &mut out,
            &[b"SELECT", self.leader.db.to_string().as_bytes()],
        );
        n += 1;
        let conn = self.leader().await?;
        let replies = conn
            .roundtrip(&out, n)
            .await
            .map_err(|e| self.leader_err(e))?;
        let mut replies = replies.into_iter();
        let mut sizes = Vec::with_capacity(plans.len());
        let mut last_db = None;
        for p in plans {
            let mut size = 0usize;
            for step in p {
                if let Plan::Read { from, .. } = step {
                    if last_db != Some(*from) {
                        replies.next(); // SELECT's OK
                        last_db = Some(*from);
                    }
                    size = size.saturating_add(match replies.next() {
                        Some(BytesFrame::Integer(b)) => usize::try_from(b).unwrap_or(0),
                        Some(BytesFrame::Null) => 0,
                        _ => COPY_READ_BUDGET / 64,
                    });
                }
            }
            sizes.push(size);
        }
        Ok(sizes)
    }

    /// Step 2: every key of `plans` read in one `MULTI`/`EXEC` on the leader (one round trip,
    /// one atomic snapshot): `DUMP` and the absolute expiry.
    async fn read_dumps(
        &mut self,
        plans: Vec<SmallVec<[Plan; 2]>>,
    ) -> Result<Vec<SmallVec<[Effect; 2]>>, ApplyError> {
        // Read everything in one MULTI/EXEC.
        let ttl_cmd: &[u8] = if self.use_pttl {
            b"PTTL"
        } else {
            b"PEXPIRETIME"
        };
        let mut out = BytesMut::new();
        encode_cmd(&mut out, &[b"MULTI"]);
        let reads = encode_reads(&plans, &mut out, &[&[b"DUMP"], &[ttl_cmd]]);
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
                    Plan::Read { db, from, key } => {
                        if last_db != Some(from) {
                            vals.next(); // SELECT's OK
                            last_db = Some(from);
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
        Ok(effects)
    }

    /// Step 2 without `DUMP`: each copied key read type-aware, one at a time.
    pub(super) async fn read_typed(
        &mut self,
        plans: Vec<SmallVec<[Plan; 2]>>,
    ) -> Result<Vec<SmallVec<[Effect; 2]>>, ApplyError> {
        let mut effects = Vec::with_capacity(plans.len());
        for p in plans {
            let mut e = SmallVec::new();
            for step in p {
                match step {
                    Plan::Known(effect) => e.push(effect),
                    Plan::Read { db, from, key } => {
                        let conn = self.leader().await?;
                        let r = async {
                            crate::redis::resync::select(conn, from)
                                .await
                                .map_err(BackendError::Protocol)?;
                            crate::redis::typed::read(conn, &key).await
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
}
