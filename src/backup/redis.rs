//! Redis: reading every key within `redis.key_patterns` (every database holding keys,
//! statemirror's own keys left out — `redis::cluster::is_own_key`) with `SCAN` + `DUMP` +
//! `PEXPIRETIME` in one `MULTI` per batch (as verify does), writing them back with
//! `RESTORE key ttl payload REPLACE ABSTTL`, and comparing a destination with a backup.
//!
//! Expiry is kept as the absolute time: a restored key expires when the original would
//! have. A key whose expiry passed between backup and restore is not restored (it would
//! vanish at once) and is counted as `skipped_expired`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;

use super::{Failure, NifiRecord, RedisKey};
use crate::config::{RedisBackend, RedisConfig};
use crate::nifi;
use crate::redis::backend::{encode_cmd, error_text, Conn};
use crate::redis::resync::{keyspace, scan, select};
use crate::redis::verify::{dump_all, get_string};
use crate::replication::cluster::now_ms;

/// Keys per `SCAN` step and per pipelined batch.
const BATCH: usize = 500;

/// What a restore did.
pub struct RestoreCounts {
    pub restored: u64,
    pub deleted: u64,
    pub skipped_expired: u64,
    pub errors: Vec<String>,
}

pub async fn connect(b: &RedisBackend, cfg: &RedisConfig, role: &str) -> Result<Conn, Failure> {
    let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1000));
    Conn::connect(b, timeout)
        .await
        .map_err(|e| Failure::Unavailable(format!("redis {role} {}: {e}", b.address)))
}

/// Every key within the patterns, per database: `(db, key)`, sorted.
pub async fn keys(c: &mut Conn, patterns: &[String]) -> Result<BTreeSet<(u32, Bytes)>, String> {
    let mut out = BTreeSet::new();
    for (db, _) in keyspace(c).await? {
        for pattern in patterns {
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = scan(c, db, &cursor, pattern, BATCH).await?;
                out.extend(keys.into_iter().map(|k| (db, k)));
                if &next[..] == b"0" {
                    break;
                }
                cursor = next;
            }
        }
    }
    Ok(out)
}

/// Reads every key within the filters.
pub async fn read_all(c: &mut Conn, cfg: &RedisConfig) -> Result<Vec<RedisKey>, String> {
    let all = keys(c, &cfg.key_patterns).await?;
    let mut by_db: BTreeMap<u32, Vec<Bytes>> = BTreeMap::new();
    for (db, k) in all {
        by_db.entry(db).or_default().push(k);
    }
    let mut out = Vec::new();
    for (db, keys) in by_db {
        for batch in keys.chunks(BATCH) {
            let dumps = dump_all(c, db, batch).await?;
            let now = now_ms();
            for (key, d) in batch.iter().zip(dumps) {
                // Gone since the scan (only possible when not frozen).
                let Some((payload, expires)) = d else {
                    continue;
                };
                let mut rec = RedisKey::new(db, key, &payload, expires, now);
                if let Some(id) = component(&cfg.nifi_key_prefix, key) {
                    let v = get_string(c, db, key).await?;
                    rec.nifi = v
                        .as_deref()
                        .and_then(nifi::decode_json)
                        .map(|s| NifiRecord::from_state(&id, s));
                }
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// The NiFi component id when `key` is NiFi state.
fn component(prefix: &str, key: &[u8]) -> Option<String> {
    crate::nifi::layout::component_of_key(prefix, key)
        .map(|id| String::from_utf8_lossy(id).into_owned())
}

/// Deletes `extra`, then restores every record (expired ones skipped).
pub async fn write_all(
    c: &mut Conn,
    records: &[RedisKey],
    extra: &[(u32, Bytes)],
) -> Result<RestoreCounts, String> {
    let mut counts = RestoreCounts {
        restored: 0,
        deleted: 0,
        skipped_expired: 0,
        errors: Vec::new(),
    };
    let mut dels: BTreeMap<u32, Vec<&Bytes>> = BTreeMap::new();
    for (db, k) in extra {
        dels.entry(*db).or_default().push(k);
    }
    for (db, keys) in dels {
        select(c, db).await?;
        for batch in keys.chunks(BATCH) {
            let mut out = BytesMut::new();
            for k in batch {
                encode_cmd(&mut out, &[b"DEL", k]);
            }
            for (k, r) in batch.iter().zip(
                c.roundtrip(&out, batch.len())
                    .await
                    .map_err(|e| e.to_string())?,
            ) {
                match r {
                    BytesFrame::Integer(n) => counts.deleted += n.max(0) as u64,
                    other => counts.errors.push(format!(
                        "DEL {}: {}",
                        String::from_utf8_lossy(k),
                        error_text(&other).unwrap_or_else(|| format!("{other:?}"))
                    )),
                }
            }
        }
    }
    let mut by_db: BTreeMap<u32, Vec<&RedisKey>> = BTreeMap::new();
    for r in records {
        by_db.entry(r.db).or_default().push(r);
    }
    for (db, recs) in by_db {
        select(c, db).await?;
        for batch in recs.chunks(BATCH) {
            let now = now_ms() as i64;
            let mut out = BytesMut::new();
            let mut sent = Vec::new();
            for r in batch {
                let key = r.key_bytes()?;
                let payload = r.payload()?;
                match r.expires_at_ms {
                    Some(t) if t <= now + 1 => {
                        // Expired since the backup: make sure it is not there either.
                        counts.skipped_expired += 1;
                        encode_cmd(&mut out, &[b"DEL", &key]);
                    }
                    Some(t) => encode_cmd(
                        &mut out,
                        &[
                            b"RESTORE",
                            &key,
                            t.to_string().as_bytes(),
                            &payload,
                            b"REPLACE",
                            b"ABSTTL",
                        ],
                    ),
                    None => encode_cmd(&mut out, &[b"RESTORE", &key, b"0", &payload, b"REPLACE"]),
                }
                sent.push(r);
            }
            let replies = c
                .roundtrip(&out, sent.len())
                .await
                .map_err(|e| e.to_string())?;
            for (r, reply) in sent.iter().zip(replies) {
                match (&reply, r.expires_at_ms) {
                    (BytesFrame::Integer(_), _) => {} // the DEL of an expired key
                    (BytesFrame::SimpleString(_), _) => counts.restored += 1,
                    _ => counts.errors.push(format!(
                        "RESTORE {} (db {}): {}",
                        r.key,
                        r.db,
                        error_text(&reply).unwrap_or_else(|| format!("{reply:?}"))
                    )),
                }
            }
        }
    }
    Ok(counts)
}

/// Compares the destination with the records key by key (payload and expiry), and lists
/// keys within the filters it has that the backup lacks. Expired records are expected
/// absent. Returns `(keys compared equal, differences)`.
pub async fn compare(
    c: &mut Conn,
    cfg: &RedisConfig,
    records: &[RedisKey],
) -> Result<(u64, Vec<String>), String> {
    let now = now_ms() as i64;
    let mut diffs = Vec::new();
    let mut equal = 0u64;
    let mut expected: HashSet<(u32, Vec<u8>)> = HashSet::new();
    let mut by_db: BTreeMap<u32, Vec<&RedisKey>> = BTreeMap::new();
    for r in records {
        if r.expires_at_ms.is_some_and(|t| t <= now) {
            continue; // expired: absent is right
        }
        expected.insert((r.db, r.key_bytes()?));
        by_db.entry(r.db).or_default().push(r);
    }
    for (db, recs) in by_db {
        for batch in recs.chunks(BATCH) {
            let keys = batch
                .iter()
                .map(|r| r.key_bytes().map(Bytes::from))
                .collect::<Result<Vec<_>, _>>()?;
            let got = dump_all(c, db, &keys).await?;
            for (r, g) in batch.iter().zip(got) {
                let what = match g {
                    None => Some("missing".to_string()),
                    Some((p, t)) => {
                        let payload = r.payload()?;
                        match (p[..] == payload[..], t == r.expires_at_ms) {
                            (true, true) => None,
                            (false, _) => Some("value differs".to_string()),
                            (true, false) => Some(format!(
                                "expiry differs: backup {:?}, destination {:?}",
                                r.expires_at_ms, t
                            )),
                        }
                    }
                };
                match what {
                    None => equal += 1,
                    Some(w) => diffs.push(format!("db {} key {:?}: {w}", r.db, r.key)),
                }
            }
        }
    }
    for (db, k) in keys(c, &cfg.key_patterns).await? {
        if !expected.contains(&(db, k.to_vec())) {
            diffs.push(format!(
                "db {db} key {:?}: not in the backup",
                String::from_utf8_lossy(&k)
            ));
        }
    }
    Ok((equal, diffs))
}
