//! Comparing the leader's and the follower's keys (within `redis.key_patterns`, every
//! database holding keys).
//!
//! Per `SCAN` batch of leader keys, one `MULTI` on each side reads `DUMP` and `PEXPIRETIME`
//! of every key. Equal payloads (and expiries within `verify.ttl_tolerance_ms`) are equal; a
//! payload mismatch is checked again type-aware ([`super::typed`]) because equal values can
//! be encoded differently. Then the follower is scanned for keys the leader lacks. Keys under
//! `redis.nifi_key_prefix` are decoded as NiFi state, and the report names the entries that
//! differ.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;

use super::backend::{encode_cmd, Conn};
use super::resync::{keyspace, missing, scan, select};
use super::typed;
use crate::config::{RedisBackend, RedisConfig, VerifyConfig};
use crate::nifi;
use crate::replication::resync::{unix_now, BoxFuture};
use crate::replication::verify::{DiffKind, Difference, Verifier, VerifyReport};

pub struct RedisVerifier {
    leader: RedisBackend,
    follower: RedisBackend,
    patterns: Vec<String>,
    nifi_prefix: String,
    ttl_tolerance_ms: i64,
    connect_timeout: Duration,
    /// Leader key K is compared with the follower's `map_key(K)`; a follower key is the
    /// leader's `to_leader` of it, or an orphan (no leader key maps to it).
    identity: crate::nifi::identity_live::SharedIdentity,
}

/// `DUMP` payload and absolute expiry (`None`: persistent) of a key; `None`: no such key.
pub(crate) type Dumped = Option<(Bytes, Option<i64>)>;

const BATCH: usize = 500;

impl RedisVerifier {
    pub fn new(
        leader: RedisBackend,
        follower: RedisBackend,
        cfg: &RedisConfig,
        v: &VerifyConfig,
    ) -> Self {
        Self {
            leader,
            follower,
            patterns: cfg.key_patterns.clone(),
            nifi_prefix: cfg.nifi_key_prefix.clone(),
            ttl_tolerance_ms: v.ttl_tolerance_ms.min(i64::MAX as u64) as i64,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            identity: Default::default(),
        }
    }

    pub fn with_identity(mut self, identity: crate::nifi::identity_live::SharedIdentity) -> Self {
        self.identity = identity;
        self
    }

    async fn run(&self, max: usize) -> Result<VerifyReport, String> {
        let t0 = Instant::now();
        let mut rep = VerifyReport::new("redis");
        let mut leader = Conn::connect(&self.leader, self.connect_timeout)
            .await
            .map_err(|e| format!("leader: {e}"))?;
        let mut follower = Conn::connect(&self.follower, self.connect_timeout)
            .await
            .map_err(|e| format!("follower: {e}"))?;
        let dbs: BTreeSet<u32> = keyspace(&mut leader)
            .await
            .map_err(|e| format!("leader: {e}"))?
            .into_iter()
            .chain(
                keyspace(&mut follower)
                    .await
                    .map_err(|e| format!("follower: {e}"))?,
            )
            .map(|(db, _)| db)
            .collect();
        let map = self.identity.current();
        let prefix = self.nifi_prefix.as_str();
        for db in dbs {
            // SCAN may return a key more than once, and patterns may overlap.
            let mut seen: HashSet<Bytes> = HashSet::new();
            for pattern in &self.patterns {
                let mut cursor = Bytes::from_static(b"0");
                loop {
                    let (next, keys) = scan(&mut leader, db, &cursor, pattern, BATCH)
                        .await
                        .map_err(|e| format!("leader: {e}"))?;
                    let keys: Vec<Bytes> = keys
                        .into_iter()
                        .filter(|k| seen.insert(k.clone()))
                        .collect();
                    let l = dump_all(&mut leader, db, &keys)
                        .await
                        .map_err(|e| format!("leader: {e}"))?;
                    let fkeys: Vec<Bytes> = keys
                        .iter()
                        .map(|k| match map.map_key(prefix, k) {
                            std::borrow::Cow::Borrowed(_) => k.clone(),
                            std::borrow::Cow::Owned(m) => Bytes::from(m),
                        })
                        .collect();
                    let f = dump_all(&mut follower, db, &fkeys)
                        .await
                        .map_err(|e| format!("follower: {e}"))?;
                    for (((key, fkey), l), f) in keys.iter().zip(&fkeys).zip(l).zip(f) {
                        let (conns, at) = ((&mut leader, &mut follower), (db, key, fkey));
                        self.compare(&mut rep, conns, at, l, f, max).await?;
                    }
                    if &next[..] == b"0" {
                        break;
                    }
                    cursor = next;
                }
            }
            let mut seen_extra: HashSet<Bytes> = HashSet::new();
            for pattern in &self.patterns {
                let mut cursor = Bytes::from_static(b"0");
                loop {
                    let (next, keys) = scan(&mut follower, db, &cursor, pattern, BATCH)
                        .await
                        .map_err(|e| format!("follower: {e}"))?;
                    // Keys the leader scan saw were compared already (a key created on the
                    // leader after its scan is not "extra" on the follower).
                    // Named as on the leader (the inverse map); a key no leader key maps to
                    // (state left under an old id) is extra whatever the leader holds.
                    let mut orphans = Vec::new();
                    let keys: Vec<(Bytes, Bytes)> = keys
                        .into_iter()
                        .filter_map(|k| {
                            let l = Bytes::from(map.unmap_key(prefix, &k).into_owned());
                            if *map.map_key(prefix, &l) != *k {
                                orphans.push(k);
                                return None;
                            }
                            (!seen.contains(&l) && seen_extra.insert(k.clone())).then_some((l, k))
                        })
                        .collect();
                    let lkeys: Vec<Bytes> = keys.iter().map(|(l, _)| l.clone()).collect();
                    let gone_l = missing(&mut leader, db, &lkeys)
                        .await
                        .map_err(|e| format!("leader: {e}"))?;
                    rep.equal += (keys.len() - gone_l.len()) as u64;
                    let gone_l: HashSet<Bytes> = gone_l.into_iter().collect();
                    let gone = keys
                        .into_iter()
                        .filter(|(l, _)| gone_l.contains(l))
                        .map(|(_, f)| f)
                        .chain(orphans);
                    for key in gone {
                        let nifi = match self.component(&key) {
                            Some(c) => {
                                let v = get_string(&mut follower, db, &key).await?;
                                let fs = v.as_deref().and_then(nifi::decode_json);
                                Some(nifi::diff(&c, None, fs.as_ref()))
                            }
                            None => None,
                        };
                        rep.add(
                            Difference {
                                key: String::from_utf8_lossy(&key).into_owned(),
                                db: (db != 0).then_some(db),
                                kind: DiffKind::ExtraOnFollower,
                                detail: None,
                                nifi,
                            },
                            max,
                        );
                    }
                    if &next[..] == b"0" {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        rep.duration_seconds = t0.elapsed().as_secs_f64();
        rep.finished_unix = unix_now();
        Ok(rep)
    }

    /// The NiFi component id when `key` is NiFi state.
    fn component(&self, key: &[u8]) -> Option<String> {
        crate::nifi::layout::component_of_key(&self.nifi_prefix, key)
            .map(|id| String::from_utf8_lossy(id).into_owned())
    }

    /// `key` on the leader against `fkey` (its mapped name) on the follower.
    async fn compare(
        &self,
        rep: &mut VerifyReport,
        (leader, follower): (&mut Conn, &mut Conn),
        (db, key, fkey): (u32, &Bytes, &Bytes),
        l: Dumped,
        f: Dumped,
        max: usize,
    ) -> Result<(), String> {
        let (kind, detail) = match (&l, &f) {
            // Gone from the leader since the scan: nothing to compare.
            (None, _) => return Ok(()),
            (Some(_), None) => (DiffKind::MissingOnFollower, None),
            (Some((lp, lt)), Some((fp, ft))) => {
                let same_value = lp == fp || {
                    select(leader, db)
                        .await
                        .map_err(|e| format!("leader: {e}"))?;
                    select(follower, db)
                        .await
                        .map_err(|e| format!("follower: {e}"))?;
                    let a = typed::read(leader, key)
                        .await
                        .map_err(|e| format!("leader: {e}"))?;
                    let b = typed::read(follower, fkey)
                        .await
                        .map_err(|e| format!("follower: {e}"))?;
                    a.map(|s| s.value) == b.map(|s| s.value)
                };
                let same_ttl = match (lt, ft) {
                    (None, None) => true,
                    (Some(a), Some(b)) => (a - b).abs() <= self.ttl_tolerance_ms,
                    _ => false,
                };
                match (same_value, same_ttl) {
                    (true, true) => {
                        rep.equal += 1;
                        return Ok(());
                    }
                    (false, _) => (DiffKind::Different, Some("value".to_string())),
                    (true, false) => (
                        DiffKind::Different,
                        Some(format!(
                            "expiry: leader {}, follower {}",
                            expiry(*lt),
                            expiry(*ft)
                        )),
                    ),
                }
            }
        };
        let nifi = match self.component(key) {
            Some(c) => {
                let lv = get_string(leader, db, key).await?;
                let fv = get_string(follower, db, fkey).await?;
                nifi_diff(&c, lv, fv)
            }
            None => None,
        };
        rep.add(
            Difference {
                key: String::from_utf8_lossy(key).into_owned(),
                db: (db != 0).then_some(db),
                kind,
                detail,
                nifi,
            },
            max,
        );
        Ok(())
    }
}

fn nifi_diff(component: &str, l: Option<Bytes>, f: Option<Bytes>) -> Option<nifi::NifiDiff> {
    let ls = l.as_deref().and_then(nifi::decode_json);
    let fs = f.as_deref().and_then(nifi::decode_json);
    if ls.is_none() && fs.is_none() {
        return None; // not NiFi's format after all
    }
    Some(nifi::diff(component, ls.as_ref(), fs.as_ref()))
}

fn expiry(t: Option<i64>) -> String {
    t.map(|t| format!("at {t} ms"))
        .unwrap_or_else(|| "none".into())
}

impl Verifier for RedisVerifier {
    fn protocol(&self) -> &'static str {
        "redis"
    }
    fn verify(&self, max: usize) -> BoxFuture<'_, Result<VerifyReport, String>> {
        Box::pin(self.run(max))
    }
}

/// `DUMP` + `PEXPIRETIME` of every key, in one `MULTI`.
pub(crate) async fn dump_all(c: &mut Conn, db: u32, keys: &[Bytes]) -> Result<Vec<Dumped>, String> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    select(c, db).await?;
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"MULTI"]);
    for k in keys {
        encode_cmd(&mut out, &[b"DUMP", k]);
        encode_cmd(&mut out, &[b"PEXPIRETIME", k]);
    }
    encode_cmd(&mut out, &[b"EXEC"]);
    let n = 2 * keys.len() + 2;
    let mut replies = c.roundtrip(&out, n).await.map_err(|e| e.to_string())?;
    let exec = match replies.pop() {
        Some(BytesFrame::Array(v)) => v,
        other => return Err(format!("EXEC: {other:?}")),
    };
    parse_dumped(exec.into_iter(), keys.len())
}

/// `n` pairs of `DUMP` and `PEXPIRETIME` replies, in order.
pub(crate) fn parse_dumped(
    mut it: impl Iterator<Item = BytesFrame>,
    n: usize,
) -> Result<Vec<Dumped>, String> {
    let mut res = Vec::with_capacity(n);
    for _ in 0..n {
        let d = it.next();
        let t = it.next();
        if let Some(e) = t.as_ref().and_then(super::backend::error_text) {
            return Err(format!("PEXPIRETIME (Redis ≥ 7 needed): {e}"));
        }
        res.push(match d {
            Some(BytesFrame::BulkString(p)) => Some((
                p,
                match t {
                    Some(BytesFrame::Integer(t)) if t >= 0 => Some(t),
                    _ => None,
                },
            )),
            _ => None,
        });
    }
    Ok(res)
}

/// `GET key` when it is a string.
pub(crate) async fn get_string(c: &mut Conn, db: u32, key: &[u8]) -> Result<Option<Bytes>, String> {
    select(c, db).await?;
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"GET", key]);
    match c.roundtrip(&out, 1).await.map_err(|e| e.to_string())?.pop() {
        Some(BytesFrame::BulkString(b)) => Ok(Some(b)),
        _ => Ok(None),
    }
}
