//! Step 3 of a batch: the effects written to the follower in queue order, each op's
//! refusals classified (retry the batch, or skip the op for good and flag it).

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;
use smallvec::SmallVec;

use super::applier::RedisApplier;
use super::{describe_op, swapdb_of, Effect};
use crate::redis::backend::{encode_cmd, error_text};
use crate::redis::refusal::{self, Refusal};
use crate::replication::queue::MirrorView;
use crate::replication::worker::ApplyError;

impl RedisApplier {
    /// The replays of `op` ran (or were refused for good): not to be sent again.
    fn note_replays_done(&mut self, op: Option<&SmallVec<[Effect; 2]>>) {
        for e in op.into_iter().flatten() {
            if let Effect::Replay { cmd, .. } = e {
                self.replays_done.insert(replay_id(cmd));
            }
        }
    }

    /// Probes the databases the batch writes to that this follower connection has not
    /// seen yet (one round trip, only when a new database appears), and takes out every
    /// effect aimed at a database the follower does not have: each is refused for good.
    /// Returns how many ops lost an effect that way.
    pub(super) async fn screen_databases(
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

    pub(super) async fn write_effects(
        &mut self,
        mut effects: Vec<SmallVec<[Effect; 2]>>,
    ) -> Result<usize, ApplyError> {
        if effects.iter().all(|op| op.is_empty()) {
            return Ok(0);
        }
        let mut given_up = self.screen_databases(&mut effects).await?;
        // A replay that ran in an earlier attempt of this batch is not sent again: `SWAPDB`
        // twice is no swap at all, `FUNCTION LOAD` twice is refused.
        let done = &self.replays_done;
        for op in effects.iter_mut() {
            op.retain(
                |e| !matches!(e, Effect::Replay { cmd, .. } if done.contains(&replay_id(cmd))),
            );
        }
        let mut out = BytesMut::new();
        // Per op: how many replies and whether they are wrapped in MULTI.
        let mut shape: Vec<(usize, bool)> = Vec::with_capacity(effects.len());
        let mut db = self.follower_conn.as_ref().map(|c| c.db);
        let mut total = 0usize;
        // Keys into the follower go through the state identity map (NiFi's keys only).
        let map = self.identity.current();
        let prefix = self.nifi_prefix.as_str();
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
                let mapped = match e {
                    Effect::Set { key, .. }
                    | Effect::Restore { key, .. }
                    | Effect::Delete { key, .. }
                    | Effect::Typed { key, .. } => map.map_key(prefix, key),
                    Effect::Replay { .. } => std::borrow::Cow::Borrowed(&b""[..]),
                };
                let key = &mapped[..];
                match e {
                    Effect::Set {
                        value,
                        expire_at_ms: None,
                        ..
                    } => encode_cmd(&mut out, &[b"SET", key, value]),
                    Effect::Set {
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
                    Effect::Delete { .. } => encode_cmd(&mut out, &[b"DEL", key]),
                    Effect::Replay { cmd, .. } => out.extend_from_slice(cmd),
                    Effect::Typed { snap, .. } => {
                        let k = crate::redis::typed::write_cmds(&mut out, key, snap.as_ref());
                        if k == 0 {
                            self.queue.sync().mark_out_of_sync_detail(
                                "a key has a type statemirror cannot copy without DUMP/RESTORE",
                                &format!("key {}", String::from_utf8_lossy(key)),
                            );
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
        // Connected: from here the replays may run, whatever happens to the replies.
        self.follower().await?;
        for e in effects.iter().flatten() {
            if let Effect::Replay { cmd, .. } = e {
                self.replays_sent
                    .push((replay_id(cmd), swapdb_of(cmd).is_some()));
            }
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
        // The follower answered: whatever of it ran, these keys are checked against the
        // leader from now on (copied out: the note outlives the batch).
        if let Some(t) = &self.touched {
            t.note(effects.iter().flatten().filter_map(|e| match e {
                Effect::Set { db, key, .. }
                | Effect::Restore { db, key, .. }
                | Effect::Delete { db, key }
                | Effect::Typed { db, key, .. } => Some((*db, Bytes::copy_from_slice(key))),
                Effect::Replay { .. } => None,
            }));
        }
        let mut transient: Option<String> = None;
        let mut rejected_payload: Option<String> = None;
        let mut refused: Vec<(usize, &'static str, String)> = Vec::new();
        let mut it = replies.into_iter();
        for (i, (n, wrap)) in shape.into_iter().enumerate() {
            let mut errors: Vec<String> = Vec::new();
            for r in it.by_ref().take(n) {
                if let Some(e) = error_text(&r) {
                    errors.push(e);
                }
                if let (true, BytesFrame::Array(inner)) = (wrap, &r) {
                    errors.extend(inner.iter().filter_map(error_text));
                }
            }
            if errors.is_empty() {
                self.note_replays_done(effects.get(i));
                continue;
            }
            let payload_rejected = errors.iter().all(|e| restore_refused(e));
            if payload_rejected && (!self.typed || rejected_payload.is_some()) {
                // Every payload from this leader will be refused alike: copy type-aware
                // from now on and apply the batch again (the ops that ran are idempotent
                // or noted as done). The rest of the replies are still looked at, for that.
                if !self.typed {
                    self.typed = true;
                    tracing::warn!(
                        error = %errors[0],
                        "the follower rejected a DUMP payload (an older Redis?); copying keys \
                         type-aware from now on (slower; set redis.copy_format = \"typed\")"
                    );
                }
                rejected_payload.get_or_insert_with(|| errors.join("; "));
                continue;
            }
            // Other ops of the pipeline ran; this one is retried (with the batch) only when
            // every error is a passing state of the follower, else skipped for good.
            let permanent = errors.iter().find_map(|e| match refusal::classify(e) {
                Refusal::Permanent(reason) => Some((reason, e.clone())),
                Refusal::Transient => None,
            });
            match permanent {
                Some((reason, e)) => {
                    self.note_replays_done(effects.get(i));
                    refused.push((i, reason, e))
                }
                None => transient = Some(errors.join("; ")),
            }
        }
        // Every replay's outcome is known now (ran, refused, or to be retried).
        self.replays_sent.clear();
        if let Some(e) = rejected_payload {
            return Err(ApplyError::new("follower_rejected_payload", e));
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

/// Identifies a replayed command across retries of one batch: the batch (and so the
/// command's bytes) stays where it is until it is done.
pub(super) fn replay_id(cmd: &bytes::Bytes) -> usize {
    cmd.as_ptr() as usize
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn refused_restores_switch_to_typed_copies() {
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
}
