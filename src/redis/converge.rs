//! The Redis side of the cross-sidecar check ([`crate::replication::converge`]): per round
//! and database, `WATCH` + `DUMP` + `PEXPIRETIME` of the keys on the follower, then the same
//! reads on the leader, then one `MULTI … EXEC` on the follower restoring (or deleting) the
//! keys that differ. `EXEC` answers nil when a watched key changed since the read: the keys
//! that changed are done (whoever changed them checks them), the others are read again and
//! checked again.
//!
//! Needs Redis ≥ 7 on both sides (`PEXPIRETIME`), and a follower that takes the leader's
//! `DUMP` payloads (the same or a newer Redis); a refused `RESTORE` is counted and the
//! follower marked out of sync.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;

use super::backend::{encode_cmd, error_text, Conn};
use super::mirror::{LeaderChange, LeaderSeen};
use super::resync::select;
use super::verify::{dump_all, parse_dumped, Dumped};
use crate::config::RedisBackend;
use crate::replication::converge::{bytes_key_size, Repairer, Round};
use crate::replication::resync::BoxFuture;

/// A key as the follower writer wrote it: database and name (owned bytes).
pub type DbKey = (u32, Bytes);

pub struct RedisRepairer {
    leader: RedisBackend,
    follower: RedisBackend,
    timeout: Duration,
    leader_conn: Option<Conn>,
    follower_conn: Option<Conn>,
    /// The leader as first connected: a new `run_id` means it restarted (maybe empty, maybe
    /// from an old backup) or Sentinel switched it, and nothing may be repaired from it.
    leader_seen: LeaderSeen,
    /// Keys checked are the leader's; the follower's are `map_key` of them.
    identity: crate::nifi::identity_live::SharedIdentity,
    nifi_prefix: String,
}

impl RedisRepairer {
    pub fn new(leader: RedisBackend, follower: RedisBackend, timeout: Duration) -> Self {
        Self {
            leader,
            follower,
            timeout,
            leader_conn: None,
            follower_conn: None,
            leader_seen: LeaderSeen::default(),
            identity: Default::default(),
            nifi_prefix: String::new(),
        }
    }

    pub fn with_identity(
        mut self,
        identity: crate::nifi::identity_live::SharedIdentity,
        nifi_prefix: &str,
    ) -> Self {
        self.identity = identity;
        self.nifi_prefix = nifi_prefix.to_string();
        self
    }

    async fn round(&mut self, keys: Vec<DbKey>) -> Result<Round<DbKey>, String> {
        let mut by_db: BTreeMap<u32, Vec<Bytes>> = BTreeMap::new();
        for (db, k) in keys {
            by_db.entry(db).or_default().push(k);
        }
        let mut round = Round::default();
        for (db, keys) in by_db {
            // On error both links are dropped: a half-read pipeline or a WATCH left behind
            // must not confuse the next round.
            let r = self.check_db(db, &keys, &mut round).await;
            if r.is_err() {
                self.leader_conn = None;
                self.follower_conn = None;
            }
            r?;
            if round.abandon.is_some() {
                break;
            }
        }
        Ok(round)
    }

    /// Connects to the leader if needed. `Some(reason)` when it is not the server it was
    /// when first connected (a new `run_id`): it may have lost data.
    async fn ensure_leader(&mut self) -> Result<Option<String>, String> {
        if self.leader_conn.as_ref().is_some_and(Conn::is_stale) {
            self.leader_conn = None;
        }
        if self.leader_conn.is_some() {
            return Ok(None);
        }
        let (c, change) = self
            .leader_seen
            .connect(&self.leader, self.timeout)
            .await
            .map_err(|e| format!("leader: {e}"))?;
        self.leader_conn = Some(c);
        // After a Sentinel switch, too: the new master may lack the old one's last writes;
        // giving up marks the follower out of sync and a resync reconciles.
        Ok(change.map(|c| match c {
            LeaderChange::Switched => "Sentinel switched the leader's master (new run_id)".into(),
            LeaderChange::Restarted => "the leader restarted (new run_id)".into(),
        }))
    }

    async fn check_db(
        &mut self,
        db: u32,
        keys: &[Bytes],
        round: &mut Round<DbKey>,
    ) -> Result<(), String> {
        if self.follower_conn.is_none() {
            let c = Conn::connect(&self.follower, self.timeout)
                .await
                .map_err(|e| format!("follower: {e}"))?;
            self.follower_conn = Some(c);
        }
        if let Some(why) = self.ensure_leader().await? {
            round.abandon = Some(why);
            return Ok(());
        }
        let (Some(f), Some(l)) = (self.follower_conn.as_mut(), self.leader_conn.as_mut()) else {
            return Err("no connection".into());
        };
        let map = self.identity.current();
        let fkeys: Vec<Bytes> = keys
            .iter()
            .map(|k| match map.map_key(&self.nifi_prefix, k) {
                std::borrow::Cow::Borrowed(_) => k.clone(),
                std::borrow::Cow::Owned(m) => Bytes::from(m),
            })
            .collect();
        // 1. The follower first, watched: its read must come before the leader's.
        let theirs = dump_pipelined(f, db, &fkeys, true)
            .await
            .map_err(|e| format!("follower: {e}"))?;
        // 2. The leader.
        let ours = dump_all(l, db, keys)
            .await
            .map_err(|e| format!("leader: {e}"))?;
        round.checked += keys.len();
        // 3. Only what differs, only if nothing changed on the follower since 1.
        let mut out = BytesMut::new();
        let mut differ: Vec<(&Bytes, &Bytes, &Dumped)> = Vec::new();
        encode_cmd(&mut out, &[b"MULTI"]);
        for (((k, fk), l), f) in keys.iter().zip(&fkeys).zip(&ours).zip(&theirs) {
            if l == f {
                continue;
            }
            differ.push((k, fk, f));
            match l {
                None => encode_cmd(&mut out, &[b"DEL", fk]),
                Some((payload, t)) => encode_cmd(
                    &mut out,
                    &[
                        b"RESTORE",
                        fk,
                        t.unwrap_or(0).to_string().as_bytes(),
                        payload,
                        b"REPLACE",
                        b"ABSTTL",
                    ],
                ),
            }
        }
        if differ.is_empty() {
            let mut out = BytesMut::new();
            encode_cmd(&mut out, &[b"UNWATCH"]);
            f.roundtrip(&out, 1)
                .await
                .map_err(|e| format!("follower: {e}"))?;
            return Ok(());
        }
        encode_cmd(&mut out, &[b"EXEC"]);
        let n = differ.len() + 2;
        let mut replies = f
            .roundtrip(&out, n)
            .await
            .map_err(|e| format!("follower: {e}"))?;
        match replies.pop() {
            // A watched key changed, and nothing was written. A key that itself changed
            // since the read is done (whoever changed it checks it after); one that did
            // not (another key aborted the transaction) is checked again.
            Some(BytesFrame::Null) => {
                let again: Vec<Bytes> = differ.iter().map(|(_, fk, _)| (*fk).clone()).collect();
                let now = dump_pipelined(f, db, &again, false)
                    .await
                    .map_err(|e| format!("follower: {e}"))?;
                for ((k, _, before), now) in differ.into_iter().zip(now) {
                    if *before == now {
                        round.retry.push((db, k.clone()));
                    } else {
                        round.conflicts += 1;
                    }
                }
            }
            Some(BytesFrame::Array(results)) => {
                for ((k, _, _), r) in differ.into_iter().zip(results) {
                    match error_text(&r) {
                        None => round.repaired += 1,
                        Some(e) => round
                            .refused
                            .push(format!("{} (db {db}): {e}", String::from_utf8_lossy(k))),
                    }
                }
            }
            other => {
                let e = other.as_ref().and_then(error_text);
                return Err(format!(
                    "follower: EXEC: {}",
                    e.unwrap_or_else(|| format!("{other:?}"))
                ));
            }
        }
        Ok(())
    }
}

/// `DUMP` + `PEXPIRETIME` of each key, pipelined outside a transaction (an `EXEC` would end
/// a watch); `WATCH`ed first when `watch`.
async fn dump_pipelined(
    c: &mut Conn,
    db: u32,
    keys: &[Bytes],
    watch: bool,
) -> Result<Vec<Dumped>, String> {
    select(c, db).await?;
    let mut out = BytesMut::new();
    if watch {
        let mut w: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
        w.push(b"WATCH");
        w.extend(keys.iter().map(|k| &k[..]));
        encode_cmd(&mut out, &w);
    }
    for k in keys {
        encode_cmd(&mut out, &[b"DUMP", k]);
        encode_cmd(&mut out, &[b"PEXPIRETIME", k]);
    }
    let replies = c
        .roundtrip(&out, usize::from(watch) + 2 * keys.len())
        .await
        .map_err(|e| e.to_string())?;
    let mut it = replies.into_iter();
    if watch {
        if let Some(e) = it.next().as_ref().and_then(error_text) {
            return Err(format!("WATCH: {e}"));
        }
    }
    parse_dumped(it, keys.len())
}

impl Repairer for RedisRepairer {
    type Key = DbKey;

    fn key_bytes(k: &DbKey) -> usize {
        bytes_key_size(k.1.len())
    }

    fn repair(&mut self, keys: Vec<DbKey>) -> BoxFuture<'_, Result<Round<DbKey>, String>> {
        Box::pin(self.round(keys))
    }

    fn prime(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let r = self.ensure_leader().await.map(|_| ());
            if r.is_err() {
                self.leader_conn = None;
            }
            r
        })
    }
}
