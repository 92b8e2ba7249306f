//! The generation marker on Redis (see `replication::generation`), and the recovery of a
//! leader that lost data from the follower (`statemirror recover --from-follower`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;

use super::backend::{encode_cmd, error_text, Conn};
use super::resync::{keyspace, missing, scan, select};
use crate::config::RedisBackend;
use crate::replication::generation::{judge, CleanStop, Markers, Pair, Recovery, Verdict};
use crate::replication::resync::BoxFuture;

/// statemirror's own key, in each backend's configured database. Resync and verify skip it.
pub const KEY: &[u8] = b"statemirror:generation";

pub struct RedisMarkers {
    pub leader: RedisBackend,
    pub follower: RedisBackend,
    pub timeout: Duration,
    /// The leader's Sentinel generation at the last successful read (see `read`).
    pub seen_switch: std::sync::atomic::AtomicU64,
}

async fn read_one(b: &RedisBackend, timeout: Duration) -> Result<Option<u64>, String> {
    let mut c = Conn::connect(b, timeout).await.map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"GET", KEY]);
    let reply = tokio::time::timeout(timeout, c.roundtrip(&out, 1))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match reply.first() {
        Some(BytesFrame::BulkString(v)) => {
            Ok(std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()))
        }
        Some(BytesFrame::Null) => Ok(None),
        Some(other) => Err(error_text(other).unwrap_or_else(|| format!("{other:?}"))),
        None => Err("no reply".into()),
    }
}

async fn write_one(b: &RedisBackend, timeout: Duration, g: u64) -> Result<(), String> {
    let mut c = Conn::connect(b, timeout).await.map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"SET", KEY, g.to_string().as_bytes()]);
    let reply = tokio::time::timeout(timeout, c.roundtrip(&out, 1))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match reply.first().and_then(error_text) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// `node`'s clean-stop record on the leader (an own key: see `cluster::is_own_key`).
fn clean_key(node: &str) -> Vec<u8> {
    [super::cluster::PREFIX, b"clean:", node.as_bytes()].concat()
}

/// Sends `cmds` to `b` on a new connection: every reply, or the first error.
async fn roundtrip(
    b: &RedisBackend,
    timeout: Duration,
    cmds: &[Vec<&[u8]>],
) -> Result<Vec<BytesFrame>, String> {
    let mut c = Conn::connect(b, timeout).await.map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    for cmd in cmds {
        encode_cmd(&mut out, cmd);
    }
    let replies = tokio::time::timeout(timeout, c.roundtrip(&out, cmds.len()))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match replies.iter().find_map(error_text) {
        Some(e) => Err(e),
        None => Ok(replies),
    }
}

impl Markers for RedisMarkers {
    fn put_clean<'a>(
        &'a self,
        node: &'a str,
        rec: &'a CleanStop,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let json = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
            let key = clean_key(node);
            roundtrip(&self.leader, self.timeout, &[vec![b"SET", &key, &json]])
                .await
                .map(|_| ())
        })
    }

    fn take_clean<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<CleanStop>, String>> {
        Box::pin(async move {
            let key = clean_key(node);
            let r = roundtrip(
                &self.leader,
                self.timeout,
                &[
                    vec![b"MULTI"],
                    vec![b"GET", &key],
                    vec![b"DEL", &key],
                    vec![b"EXEC"],
                ],
            )
            .await?;
            match r.last() {
                Some(BytesFrame::Array(v)) => match v.first() {
                    Some(BytesFrame::BulkString(j)) => serde_json::from_slice(j)
                        .map(Some)
                        .map_err(|e| format!("{}: {e}", String::from_utf8_lossy(&key))),
                    _ => Ok(None),
                },
                other => Err(format!("EXEC answered {other:?}")),
            }
        })
    }

    fn read(&self) -> BoxFuture<'_, Result<Pair, String>> {
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            let switch = self.leader.master_generation();
            let (l, f) = tokio::join!(
                read_one(&self.leader, self.timeout),
                read_one(&self.follower, self.timeout)
            );
            let (mut l, f) = (
                l.map_err(|e| format!("leader: {e}"))?,
                f.map_err(|e| format!("follower: {e}"))?,
            );
            // Sentinel promoted a replica since the last read: replication is asynchronous,
            // so it may lack the old master's last marker advance (and last writes). That is
            // the failover's own loss window, not a leader that restarted empty: the marker
            // is re-based on the new master (the switch marked the follower out of sync, and
            // the resync makes it equal to the new master; `refuse_empty_leader` still
            // guards against a promoted replica that holds nothing).
            if self.seen_switch.load(Ordering::Acquire) != switch {
                if let Some(fg) = f.filter(|fg| l.is_none_or(|lg| lg < *fg)) {
                    write_one(&self.leader, self.timeout, fg)
                        .await
                        .map_err(|e| format!("leader: {e}"))?;
                    tracing::warn!(leader = ?l, follower = fg, "the new master (after a Sentinel switch) lacked the latest generation marker: re-based");
                    l = Some(fg);
                }
                self.seen_switch.store(switch, Ordering::Release);
            }
            Ok((l, f))
        })
    }

    fn write(&self, g: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            write_one(&self.leader, self.timeout, g).await?;
            write_one(&self.follower, self.timeout, g).await
        })
    }
}

/// Copies every key the leader lacks from the follower (`DUMP` / `RESTORE … ABSTTL`
/// without `REPLACE`: a key written on the leader meanwhile makes the restore fail with
/// `BUSYKEY`, and the newer write stays). Refuses unless the follower's generation shows it
/// is the newer copy (`force` overrides). Ends by giving both the same, newer marker, which
/// clears a running sidecar's leader-data-loss flag.
pub async fn recover_from_follower(
    leader: &RedisBackend,
    follower: &RedisBackend,
    timeout: Duration,
    patterns: &[String],
    force: bool,
) -> Result<Recovery, String> {
    let markers = RedisMarkers {
        leader: leader.clone(),
        follower: follower.clone(),
        timeout,
        seen_switch: Default::default(),
    };
    let (lg, fg) = markers.read().await?;
    let verdict = judge(lg, fg);
    if verdict != Verdict::LeaderLost && !force {
        return Err(format!(
            "the follower is not known to be newer than the leader (leader generation {lg:?}, \
             follower {fg:?}): nothing to recover. Use --force to copy what the leader lacks \
             anyway"
        ));
    }
    let mut l = Conn::connect(leader, timeout)
        .await
        .map_err(|e| format!("leader: {e}"))?;
    let mut f = Conn::connect(follower, timeout)
        .await
        .map_err(|e| format!("follower: {e}"))?;
    let mut report = Recovery {
        leader_generation: lg,
        follower_generation: fg,
        ..Recovery::default()
    };
    for (db, _) in keyspace(&mut f)
        .await
        .map_err(|e| format!("follower: {e}"))?
    {
        for pattern in patterns {
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = scan(&mut f, db, &cursor, pattern, 500)
                    .await
                    .map_err(|e| format!("follower: {e}"))?;
                let absent = missing(&mut l, db, &keys)
                    .await
                    .map_err(|e| format!("leader: {e}"))?;
                report.kept_on_leader += (keys.len() - absent.len()) as u64;
                let dumps = super::verify::dump_all(&mut f, db, &absent)
                    .await
                    .map_err(|e| format!("follower: {e}"))?;
                select(&mut l, db)
                    .await
                    .map_err(|e| format!("leader: {e}"))?;
                let mut out = BytesMut::new();
                let mut n = 0;
                for (key, d) in absent.iter().zip(dumps) {
                    if let Some((payload, ttl)) = d {
                        let ttl = ttl.unwrap_or(0).to_string();
                        encode_cmd(
                            &mut out,
                            &[b"RESTORE", key, ttl.as_bytes(), &payload, b"ABSTTL"],
                        );
                        n += 1;
                    }
                }
                if n > 0 {
                    let replies = l
                        .roundtrip(&out, n)
                        .await
                        .map_err(|e| format!("leader: {e}"))?;
                    for r in &replies {
                        match error_text(r) {
                            None => report.restored += 1,
                            Some(e) if e.starts_with("BUSYKEY") => report.kept_on_leader += 1,
                            Some(e) => return Err(format!("leader refused a RESTORE: {e}")),
                        }
                    }
                }
                if &next[..] == b"0" {
                    break;
                }
                cursor = next;
            }
        }
    }
    report.generation = lg.max(fg).unwrap_or(0) + 1;
    markers.write(report.generation).await?;
    Ok(report)
}
