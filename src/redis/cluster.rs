//! The cluster-wide freeze state and member list on the Redis leader (see
//! `replication::cluster`), in the leader URL's database:
//! - `statemirror:cluster:maintenance`: a hash `epoch`, `frozen` (0/1), `by`, `at_ms`; a
//!   freeze bumps `epoch` with `HINCRBY` in the same `MULTI` as the rest;
//! - `statemirror:cluster:member:<node>`: the member's JSON entry, `PX member_ttl_ms`;
//! - `statemirror:cluster:members`: a set of names, so listing needs no `SCAN`; a name
//!   whose entry expired is removed when the list is read;
//! - `statemirror:cluster:resync-lease:<protocol>`: the holder's name, `PX member_ttl_ms`
//!   (`replication::cluster::Lease`), changed only under `WATCH` by its holder;
//! - `statemirror:cluster:clean:<node>`: the node's clean-stop record (`redis::generation`).
//!
//! Resync and verify skip every key [`is_own_key`] names.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;
use tokio::sync::Mutex;

use super::backend::{encode_cmd, error_text, Conn};
use crate::config::RedisBackend;
use crate::replication::cluster::{now_ms, ClusterStore, FreezeState, Member, MemberReport};
use crate::replication::resync::BoxFuture;

pub const PREFIX: &[u8] = b"statemirror:cluster:";
const STATE: &[u8] = b"statemirror:cluster:maintenance";
const MEMBERS: &[u8] = b"statemirror:cluster:members";

/// statemirror's own keys: never copied, deleted or compared by resync and verify.
pub fn is_own_key(k: &[u8]) -> bool {
    k == super::generation::KEY || k.starts_with(PREFIX)
}

fn member_key(node: &str) -> Vec<u8> {
    [PREFIX, b"member:", node.as_bytes()].concat()
}

fn lease_key(name: &str) -> Vec<u8> {
    [PREFIX, b"resync-lease:", name.as_bytes()].concat()
}

/// What a compare-and-act on the lease found.
enum Held {
    /// It was `holder`'s, and the commands ran while it still was.
    Done,
    /// Someone else's (`Some`) or nobody's (`None`).
    Not(Option<String>),
}

pub struct RedisClusterStore {
    leader: RedisBackend,
    timeout: Duration,
    ttl_ms: u64,
    /// One connection, kept between polls; dropped on any error and reopened.
    conn: Mutex<Option<Conn>>,
}

impl RedisClusterStore {
    pub fn new(leader: RedisBackend, timeout: Duration, ttl_ms: u64) -> Self {
        Self {
            leader,
            timeout,
            ttl_ms,
            conn: Mutex::new(None),
        }
    }

    /// Sends `cmds` pipelined on the kept connection; every reply, or the first error.
    async fn run(&self, cmds: &[Vec<&[u8]>]) -> Result<Vec<BytesFrame>, String> {
        let mut guard = self.conn.lock().await;
        self.run_on(&mut guard, cmds).await
    }

    async fn run_on(
        &self,
        conn: &mut Option<Conn>,
        cmds: &[Vec<&[u8]>],
    ) -> Result<Vec<BytesFrame>, String> {
        let r = tokio::time::timeout(self.timeout, async {
            if conn.as_ref().is_some_and(Conn::is_stale) {
                *conn = None;
            }
            if conn.is_none() {
                *conn = Some(
                    Conn::connect(&self.leader, self.timeout)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let c = conn.as_mut().ok_or("no connection")?;
            let mut out = BytesMut::new();
            for cmd in cmds {
                encode_cmd(&mut out, cmd);
            }
            c.roundtrip(&out, cmds.len())
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        if r.is_err() {
            *conn = None; // a half-read pipeline leaves the connection out of step
        }
        let replies = r?;
        match replies.iter().find_map(error_text) {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }

    /// Removes `name` from the set if its entry is still gone. `WATCH`ed, on one connection
    /// held throughout: a member that registers again meanwhile (`SET` then `SADD`) must not
    /// be left out of the set, or a freeze could be proven without it while it holds a
    /// write lease.
    async fn forget(&self, name: &[u8]) -> Result<(), String> {
        let key = member_key(&String::from_utf8_lossy(name));
        let mut guard = self.conn.lock().await;
        let r = self
            .run_on(&mut guard, &[vec![b"WATCH", &key], vec![b"EXISTS", &key]])
            .await?;
        let cmds: Vec<Vec<&[u8]>> = if matches!(r.get(1), Some(BytesFrame::Integer(0))) {
            vec![vec![b"MULTI"], vec![b"SREM", MEMBERS, name], vec![b"EXEC"]]
        } else {
            vec![vec![b"UNWATCH"]]
        };
        self.run_on(&mut guard, &cmds).await.map(|_| ())
    }

    /// Runs `then` in a `MULTI` if `key` holds `holder`, under `WATCH` on the one connection:
    /// a change in between (expiry, another node) makes it look again.
    async fn if_held(&self, key: &[u8], holder: &str, then: &[Vec<&[u8]>]) -> Result<Held, String> {
        let mut guard = self.conn.lock().await;
        for _ in 0..5 {
            let r = self
                .run_on(&mut guard, &[vec![b"WATCH", key], vec![b"GET", key]])
                .await?;
            let cur = r
                .get(1)
                .and_then(bulk)
                .map(|b| String::from_utf8_lossy(b).into_owned());
            if cur.as_deref() != Some(holder) {
                self.run_on(&mut guard, &[vec![b"UNWATCH"]]).await?;
                return Ok(Held::Not(cur));
            }
            let mut cmds: Vec<Vec<&[u8]>> = vec![vec![b"MULTI"]];
            cmds.extend(then.iter().cloned());
            cmds.push(vec![b"EXEC"]);
            let r = self.run_on(&mut guard, &cmds).await?;
            if matches!(r.last(), Some(BytesFrame::Array(_))) {
                return Ok(Held::Done);
            }
        }
        Err("the resync lease keeps changing".into())
    }
}

fn bulk(f: &BytesFrame) -> Option<&Bytes> {
    match f {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(b),
        _ => None,
    }
}

fn parse_state(f: &BytesFrame) -> FreezeState {
    let mut st = FreezeState::default();
    let BytesFrame::Array(items) = f else {
        return st;
    };
    for pair in items.chunks(2) {
        let (Some(k), Some(v)) = (pair.first().and_then(bulk), pair.get(1).and_then(bulk)) else {
            continue;
        };
        let v = String::from_utf8_lossy(v);
        match &k[..] {
            b"epoch" => st.epoch = v.parse().unwrap_or(0),
            b"frozen" => st.frozen = v == "1",
            b"by" => st.by = v.into_owned(),
            b"at_ms" => st.at_ms = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    st
}

impl ClusterStore for RedisClusterStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn read(&self) -> BoxFuture<'_, Result<FreezeState, String>> {
        Box::pin(async move {
            let r = self.run(&[vec![b"HGETALL", STATE]]).await?;
            Ok(r.first().map(parse_state).unwrap_or_default())
        })
    }

    fn set<'a>(&'a self, frozen: bool, by: &'a str) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let at = now_ms().to_string();
            let flag: &[u8] = if frozen { b"1" } else { b"0" };
            let r = self
                .run(&[
                    vec![b"MULTI"],
                    vec![b"HINCRBY", STATE, b"epoch", b"1"],
                    vec![
                        b"HSET",
                        STATE,
                        b"frozen",
                        flag,
                        b"by",
                        by.as_bytes(),
                        b"at_ms",
                        at.as_bytes(),
                    ],
                    vec![b"EXEC"],
                ])
                .await?;
            match r.last() {
                Some(BytesFrame::Array(v)) => match v.first() {
                    Some(BytesFrame::Integer(e)) => Ok(*e as u64),
                    other => Err(format!("HINCRBY answered {other:?}")),
                },
                other => Err(format!("EXEC answered {other:?}")),
            }
        })
    }

    fn heartbeat<'a>(&'a self, m: &'a MemberReport) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let json = serde_json::to_vec(m).map_err(|e| e.to_string())?;
            let key = member_key(&m.node);
            let ttl = self.ttl_ms.to_string();
            self.run(&[
                vec![b"SET", &key, &json, b"PX", ttl.as_bytes()],
                vec![b"SADD", MEMBERS, m.node.as_bytes()],
            ])
            .await
            .map(|_| ())
        })
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, String>> {
        Box::pin(async move {
            let r = self.run(&[vec![b"SMEMBERS", MEMBERS]]).await?;
            let names: Vec<Bytes> = match r.first() {
                Some(BytesFrame::Array(v)) => v.iter().filter_map(bulk).cloned().collect(),
                _ => Vec::new(),
            };
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<Vec<u8>> = names
                .iter()
                .map(|n| member_key(&String::from_utf8_lossy(n)))
                .collect();
            let mut cmds: Vec<Vec<&[u8]>> = Vec::new();
            for k in &keys {
                cmds.push(vec![b"GET", k]);
                cmds.push(vec![b"PTTL", k]);
            }
            let r = self.run(&cmds).await?;
            let mut out = Vec::new();
            for (name, pair) in names.iter().zip(r.chunks(2)) {
                let report = pair
                    .first()
                    .and_then(bulk)
                    .and_then(|j| serde_json::from_slice::<MemberReport>(j).ok());
                let pttl = match pair.get(1) {
                    Some(BytesFrame::Integer(t)) => *t,
                    _ => -2,
                };
                match report {
                    Some(report) if pttl >= 0 => out.push(Member {
                        // The backend's clock: the TTL it set minus what is left.
                        heartbeat_age_ms: report.ttl_ms.saturating_sub(pttl as u64),
                        report,
                    }),
                    // Best effort: a name left behind is only looked up again.
                    _ => {
                        let _ = self.forget(name).await;
                    }
                }
            }
            Ok(out)
        })
    }

    fn leave<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let key = member_key(node);
            self.run(&[vec![b"DEL", &key], vec![b"SREM", MEMBERS, node.as_bytes()]])
                .await
                .map(|_| ())
        })
    }

    fn lease_acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let key = lease_key(name);
            let ttl = self.ttl_ms.to_string();
            let take: Vec<&[u8]> = vec![b"SET", &key, holder.as_bytes(), b"PX", ttl.as_bytes()];
            for _ in 0..5 {
                let mut set = take.clone();
                set.push(b"NX");
                let r = self.run(&[set]).await?;
                if !matches!(r.first(), Some(BytesFrame::Null) | None) {
                    return Ok(None);
                }
                // Held: by an earlier run of ours (taken over) or by another node.
                match self
                    .if_held(&key, holder, std::slice::from_ref(&take))
                    .await?
                {
                    Held::Done => return Ok(None),
                    Held::Not(Some(other)) => return Ok(Some(other)),
                    Held::Not(None) => continue, // expired in between
                }
            }
            Err("the resync lease keeps changing".into())
        })
    }

    fn lease_renew<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let key = lease_key(name);
            let ttl = self.ttl_ms.to_string();
            let r = self
                .if_held(&key, holder, &[vec![b"PEXPIRE", &key, ttl.as_bytes()]])
                .await?;
            Ok(matches!(r, Held::Done))
        })
    }

    fn lease_release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let key = lease_key(name);
            self.if_held(&key, holder, &[vec![b"DEL", &key]])
                .await
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_keys_are_the_marker_and_the_cluster_keys() {
        assert!(is_own_key(b"statemirror:generation"));
        assert!(is_own_key(b"statemirror:cluster:member:n1"));
        assert!(is_own_key(STATE) && is_own_key(MEMBERS));
        assert!(is_own_key(&lease_key("redis")) && is_own_key(b"statemirror:cluster:clean:n1"));
        assert!(!is_own_key(b"nifi/components/x") && !is_own_key(b"statemirror:other"));
    }

    #[test]
    fn state_hash_parses() {
        let b = |s: &str| BytesFrame::BulkString(Bytes::from(s.to_string()));
        let f = BytesFrame::Array(vec![
            b("epoch"),
            b("7"),
            b("frozen"),
            b("1"),
            b("by"),
            b("n2"),
        ]);
        let st = parse_state(&f);
        assert_eq!((st.epoch, st.frozen, st.by.as_str()), (7, true, "n2"));
    }
}
