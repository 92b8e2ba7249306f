//! The Redis resync walker: which keys a full resync copies and deletes. The copying itself
//! is the mirror writer's (`mirror.rs`): each key becomes a `Copy` op in the queue's bulk
//! lane, read from the leader and written to the follower when the writer applies it — the
//! reason a client write made during the resync is never overwritten by an older copy
//! (`replication::resync` explains it).
//!
//! 1. The databases: every one that holds keys on the leader or the follower (`INFO keyspace`).
//! 2. Follower-only keys: `SCAN cursor MATCH pattern COUNT batch_size` on the follower, then
//!    `EXISTS` on the leader for the batch; each key the leader lacks is queued as a copy,
//!    which deletes it on the follower (or copies it, if a client created it meanwhile).
//! 3. Leader keys: the same `SCAN` on the leader, each key queued as a copy (a key returned
//!    twice by `SCAN` is copied twice, harmlessly).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;
use smallvec::smallvec;

use super::backend::{encode_cmd, error_text, Conn};
use super::mirror::{Item, RedisOp};
use super::refusal::{self, Refusal};
use crate::config::{RedisBackend, RedisConfig};
use crate::replication::queue::MirrorQueue;
use crate::replication::resync::{BoxFuture, ResyncCtx, ResyncError, Walker};

pub struct RedisWalker {
    leader: RedisBackend,
    follower: RedisBackend,
    patterns: Vec<String>,
    connect_timeout: Duration,
    queue: Arc<MirrorQueue<RedisOp>>,
    /// Follower keys are named back with the inverse map (the writer maps the copies).
    identity: crate::nifi::identity_live::SharedIdentity,
    nifi_prefix: String,
}

impl RedisWalker {
    pub fn new(
        leader: RedisBackend,
        follower: RedisBackend,
        cfg: &RedisConfig,
        queue: Arc<MirrorQueue<RedisOp>>,
    ) -> Self {
        Self {
            leader,
            follower,
            patterns: cfg.key_patterns.clone(),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            queue,
            identity: Default::default(),
            nifi_prefix: cfg.nifi_key_prefix.clone(),
        }
    }

    pub fn with_identity(mut self, identity: crate::nifi::identity_live::SharedIdentity) -> Self {
        self.identity = identity;
        self
    }

    async fn run(&self, ctx: &ResyncCtx) -> Result<(), ResyncError> {
        let mut leader = connect(&self.leader, self.connect_timeout, "leader").await?;
        let mut follower = connect(&self.follower, self.connect_timeout, "follower").await?;
        let lk = keyspace(&mut leader).await.map_err(|e| fail("leader", e))?;
        let fk = keyspace(&mut follower)
            .await
            .map_err(|e| fail("follower", e))?;
        let follower_keys: u64 = fk.iter().map(|(_, n)| n).sum();
        // statemirror's own keys (the cluster's member entries are rewritten at once on a
        // restarted leader, the generation marker) do not make a backend non-empty.
        let refuse = ctx.refuse_empty_leader && !ctx.force && follower_keys > 0;
        if refuse
            && !holds_user_keys(&mut leader, &lk)
                .await
                .map_err(|e| fail("leader", e))?
            && holds_user_keys(&mut follower, &fk)
                .await
                .map_err(|e| fail("follower", e))?
        {
            return Err(ResyncError::Refused(format!(
                "the leader holds no keys but the follower holds {follower_keys}: a resync would \
                 erase the follower, which may be the only copy left. If the leader is right, \
                 run `statemirror resync --force`"
            )));
        }
        let dbs: BTreeSet<u32> = lk.iter().chain(&fk).map(|(db, _)| *db).collect();
        for &db in &dbs {
            // A database the follower does not have: nothing of it can be copied. Say so
            // once (a refusal: flagged, counted, not retried in a loop) and go on.
            let mut probe = BytesMut::new();
            encode_cmd(&mut probe, &[b"SELECT", db.to_string().as_bytes()]);
            let reply = follower
                .roundtrip(&probe, 1)
                .await
                .map_err(|e| fail("follower", e))?;
            match reply.first().and_then(error_text) {
                None => follower.db = db,
                Some(e) if refusal::classify(&e) == Refusal::Transient => {
                    return Err(fail("follower", e))
                }
                Some(e) => {
                    let n = lk.iter().find(|(d, _)| *d == db).map_or(0, |(_, n)| *n);
                    self.queue.refused(
                        "db_out_of_range",
                        &format!("database {db} ({n} keys on the leader) not copied: {e}"),
                    );
                    continue;
                }
            }
            for pattern in &self.patterns {
                // Follower keys the leader does not have: copy (= delete) each. First, so the keys
                // copied below are not checked again.
                let mut cursor = Bytes::from_static(b"0");
                loop {
                    ctx.check()?;
                    let (next, keys) = scan(&mut follower, db, &cursor, pattern, ctx.batch_size)
                        .await
                        .map_err(|e| fail("follower", e))?;
                    ctx.scanned(keys.len() as u64);
                    let keys = self.leader_names(&mut follower, db, keys, ctx).await?;
                    let gone = missing(&mut leader, db, &keys)
                        .await
                        .map_err(|e| fail("leader", e))?;
                    ctx.pace(gone.len() as u64).await?;
                    for key in gone {
                        let op = RedisOp {
                            items: smallvec![Item::Copy { db, key }],
                        };
                        ctx.bulk(&self.queue, op).await?;
                        ctx.deleted(1);
                    }
                    if &next[..] == b"0" {
                        break;
                    }
                    cursor = next;
                }
                // Leader keys: copy each.
                let mut cursor = Bytes::from_static(b"0");
                loop {
                    let (next, keys) = scan(&mut leader, db, &cursor, pattern, ctx.batch_size)
                        .await
                        .map_err(|e| fail("leader", e))?;
                    ctx.scanned(keys.len() as u64);
                    ctx.pace(keys.len() as u64).await?;
                    for key in keys {
                        let op = RedisOp {
                            items: smallvec![Item::Copy { db, key }],
                        };
                        ctx.bulk(&self.queue, op).await?;
                        ctx.copied(1);
                    }
                    if &next[..] == b"0" {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        Ok(())
    }
}

impl RedisWalker {
    /// Follower keys as the leader names them (the inverse identity map). A key no leader
    /// key maps to (state left under an old id, e.g. region 1's ids mirrored before the map
    /// existed) is deleted on the follower at once: no live write can target it, since no
    /// leader key maps to it.
    async fn leader_names(
        &self,
        follower: &mut Conn,
        db: u32,
        keys: Vec<Bytes>,
        ctx: &ResyncCtx,
    ) -> Result<Vec<Bytes>, ResyncError> {
        let map = self.identity.current();
        if map.is_empty() {
            return Ok(keys);
        }
        let p = self.nifi_prefix.as_str();
        let mut out = Vec::with_capacity(keys.len());
        let mut orphans = Vec::new();
        for k in keys {
            let l = map.unmap_key(p, &k).into_owned();
            if *map.map_key(p, &l) == *k {
                out.push(Bytes::from(l));
            } else {
                orphans.push(k);
            }
        }
        if !orphans.is_empty() {
            select(follower, db)
                .await
                .map_err(|e| fail("follower", e))?;
            let mut cmd = BytesMut::new();
            let mut args: Vec<&[u8]> = vec![b"DEL"];
            args.extend(orphans.iter().map(|k| &k[..]));
            encode_cmd(&mut cmd, &args);
            let r = follower
                .roundtrip(&cmd, 1)
                .await
                .map_err(|e| fail("follower", e.to_string()))?;
            if let Some(e) = r.first().and_then(error_text) {
                return Err(fail("follower", e));
            }
            tracing::info!(
                keys = orphans.len(),
                "resync: deleted follower state under ids the identity map does not map to"
            );
            ctx.deleted(orphans.len() as u64);
        }
        Ok(out)
    }
}

impl Walker for RedisWalker {
    fn walk<'a>(&'a self, ctx: &'a ResyncCtx) -> BoxFuture<'a, Result<(), ResyncError>> {
        Box::pin(self.run(ctx))
    }
}

async fn connect(b: &RedisBackend, timeout: Duration, role: &str) -> Result<Conn, ResyncError> {
    Conn::connect(b, timeout)
        .await
        .map_err(|e| ResyncError::Failed(format!("{role}: {e}")))
}

fn fail(role: &str, e: impl std::fmt::Display) -> ResyncError {
    ResyncError::Failed(format!("{role}: {e}"))
}

/// `(db, keys)` of every database holding keys, from `INFO keyspace`.
pub async fn keyspace(c: &mut Conn) -> Result<Vec<(u32, u64)>, String> {
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"INFO", b"keyspace"]);
    let reply = c.roundtrip(&out, 1).await.map_err(|e| e.to_string())?;
    let text = match reply.first() {
        Some(BytesFrame::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(other) => return Err(error_text(other).unwrap_or_else(|| format!("{other:?}"))),
        None => return Err("no reply to INFO".into()),
    };
    Ok(parse_keyspace(&text))
}

fn parse_keyspace(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|l| {
            let (db, rest) = l.strip_prefix("db")?.split_once(':')?;
            let keys = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))?
                .trim()
                .parse()
                .ok()?;
            Some((db.parse().ok()?, keys))
        })
        .collect()
}

/// Selects `db` on `c` if it is not selected already.
pub async fn select(c: &mut Conn, db: u32) -> Result<(), String> {
    if c.db == db {
        return Ok(());
    }
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"SELECT", db.to_string().as_bytes()]);
    match c
        .roundtrip(&out, 1)
        .await
        .map_err(|e| e.to_string())?
        .first()
    {
        Some(BytesFrame::SimpleString(_)) => {
            c.db = db;
            Ok(())
        }
        Some(other) => Err(error_text(other).unwrap_or_else(|| format!("{other:?}"))),
        None => Err("no reply to SELECT".into()),
    }
}

/// One `SCAN` step: the next cursor and the keys.
pub async fn scan(
    c: &mut Conn,
    db: u32,
    cursor: &[u8],
    pattern: &str,
    count: usize,
) -> Result<(Bytes, Vec<Bytes>), String> {
    select(c, db).await?;
    let mut out = BytesMut::new();
    encode_cmd(
        &mut out,
        &[
            b"SCAN",
            cursor,
            b"MATCH",
            pattern.as_bytes(),
            b"COUNT",
            count.to_string().as_bytes(),
        ],
    );
    let reply = c.roundtrip(&out, 1).await.map_err(|e| e.to_string())?;
    match reply.into_iter().next() {
        Some(BytesFrame::Array(mut v)) if v.len() == 2 => {
            let keys = match v.pop() {
                Some(BytesFrame::Array(ks)) => ks
                    .into_iter()
                    .filter_map(|k| match k {
                        // statemirror's own keys (generation marker, cluster freeze and
                        // members) are neither copied, deleted nor compared.
                        BytesFrame::BulkString(b) if !super::cluster::is_own_key(&b) => Some(b),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let next = match v.pop() {
                Some(BytesFrame::BulkString(b)) => b,
                _ => return Err("SCAN: bad cursor".into()),
            };
            Ok((next, keys))
        }
        Some(other) => Err(error_text(&other).unwrap_or_else(|| format!("SCAN: {other:?}"))),
        None => Err("no reply to SCAN".into()),
    }
}

/// Whether any database of `keyspace` holds a key that is not statemirror's own. Only a
/// small keyspace is scanned: own keys are a handful, so a larger one holds user keys.
async fn holds_user_keys(c: &mut Conn, keyspace: &[(u32, u64)]) -> Result<bool, String> {
    if keyspace.iter().map(|(_, n)| n).sum::<u64>() > 1000 {
        return Ok(true);
    }
    for &(db, n) in keyspace {
        if n == 0 {
            continue;
        }
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let (next, keys) = scan(c, db, &cursor, "*", 1000).await?;
            if !keys.is_empty() {
                return Ok(true);
            }
            if &next[..] == b"0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(false)
}

/// The keys of `keys` that do not exist on `c` (pipelined `EXISTS`).
pub async fn missing(c: &mut Conn, db: u32, keys: &[Bytes]) -> Result<Vec<Bytes>, String> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    select(c, db).await?;
    let mut out = BytesMut::new();
    for k in keys {
        encode_cmd(&mut out, &[b"EXISTS", k]);
    }
    let replies = c
        .roundtrip(&out, keys.len())
        .await
        .map_err(|e| e.to_string())?;
    Ok(keys
        .iter()
        .zip(replies)
        .filter(|(_, r)| matches!(r, BytesFrame::Integer(0)))
        .map(|(k, _)| k.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_lists_databases_with_keys() {
        let info =
            "# Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=5\r\ndb3:keys=4,expires=0,avg_ttl=0\r\n";
        assert_eq!(parse_keyspace(info), vec![(0, 12), (3, 4)]);
        assert!(parse_keyspace("# Keyspace\r\n").is_empty());
    }
}
