//! Key copies waiting for the leader.
//!
//! A copy reads the key's state from the leader when the writer applies it. While the leader
//! is unreachable it cannot be read; the ops whose effect is in the request (`SET`, `DEL`,
//! replays) must still reach the follower — that is exactly when the follower is about to
//! become the only copy. So the writer applies those and parks the copies here.
//!
//! Why parking keeps the follower right: a copy always reads the key's *newest* state, so
//! applying it later than its place in the queue is correct, unless an exact write of the
//! same key came after it — then that write fixes the key's value and the copy is dropped
//! (superseded: nothing is lost). Parked copies are applied first in the next batch once the
//! leader answers. If it does not answer within [`LEADER_LOST_AFTER`], or comes back as
//! another process (new `run_id`: it may have lost data), the parked copies are dropped and
//! the follower is marked out of sync naming them: flagged, never counted as mirrored.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smallvec::smallvec;

use super::mirror::{Item, RedisOp};

/// How long copies wait for an unreachable leader before they are given up.
pub const LEADER_LOST_AFTER: Duration = Duration::from_secs(30);

/// Most parked entries; beyond that they are all given up (memory stays bounded).
pub const MAX_PARKED: usize = 100_000;

#[derive(Default)]
pub struct Parked {
    keys: HashSet<(u32, Bytes)>,
    /// Writes whose keys only the leader can name (`COMMAND GETKEYS`).
    unresolved: Vec<(u32, Bytes)>,
    since: Option<Instant>,
}

impl Parked {
    pub fn len(&self) -> usize {
        self.keys.len() + self.unresolved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The exact writes of `batch` come after everything parked: they fix their keys.
    pub fn supersede(&mut self, batch: &[RedisOp]) {
        if self.keys.is_empty() {
            return;
        }
        for op in batch {
            for it in &op.items {
                if let Item::Put { db, key, .. } | Item::Delete { db, key } = it {
                    self.keys.remove(&(*db, key.clone()));
                }
            }
        }
    }

    /// Parks one item (in queue order: an exact write removes an earlier copy).
    /// Returns true when the item was a copy (now parked).
    pub fn park(&mut self, it: &Item) -> bool {
        match it {
            Item::Put { db, key, .. } | Item::Delete { db, key } => {
                self.keys.remove(&(*db, key.clone()));
                false
            }
            Item::Copy { db, key } => {
                self.since.get_or_insert_with(Instant::now);
                self.keys.insert((*db, key.clone()));
                true
            }
            Item::KeysOf { db, cmd } => {
                self.since.get_or_insert_with(Instant::now);
                self.unresolved.push((*db, cmd.clone()));
                true
            }
            Item::Replay { .. } => false,
        }
    }

    /// The parked copies as ops to apply before a batch.
    pub fn ops(&self) -> Vec<RedisOp> {
        let copies = self.keys.iter().map(|(db, key)| RedisOp {
            items: smallvec![Item::Copy {
                db: *db,
                key: key.clone()
            }],
        });
        let unresolved = self.unresolved.iter().map(|(db, cmd)| RedisOp {
            items: smallvec![Item::KeysOf {
                db: *db,
                cmd: cmd.clone()
            }],
        });
        copies.chain(unresolved).collect()
    }

    /// Waiting longer than the leader may stay silent, or too many.
    pub fn expired(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() > LEADER_LOST_AFTER) || self.len() > MAX_PARKED
    }

    /// Empties the set: returns how many were parked and a few of their keys, for the log.
    pub fn clear(&mut self) -> (usize, String) {
        let n = self.len();
        let names: Vec<String> = self
            .keys
            .iter()
            .take(5)
            .map(|(db, k)| {
                format!(
                    "{:?} (db {db})",
                    String::from_utf8_lossy(&k[..k.len().min(100)])
                )
            })
            .collect();
        self.keys = HashSet::new();
        self.unresolved = Vec::new();
        self.since = None;
        (n, names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(k: &'static str) -> Item {
        Item::Copy {
            db: 0,
            key: Bytes::from_static(k.as_bytes()),
        }
    }

    fn put(k: &'static str) -> Item {
        Item::Put {
            db: 0,
            key: Bytes::from_static(k.as_bytes()),
            value: Bytes::from_static(b"v"),
            expire_at_ms: None,
        }
    }

    #[test]
    fn a_later_exact_write_supersedes_a_parked_copy_an_earlier_one_does_not() {
        let mut p = Parked::default();
        assert!(!p.park(&put("a")));
        assert!(p.park(&copy("a")), "copy after the put: parked");
        assert!(p.park(&copy("b")));
        assert!(!p.park(&put("b")), "put after the copy: supersedes it");
        assert_eq!(p.len(), 1);
        p.supersede(&[RedisOp {
            items: smallvec![put("a")],
        }]);
        assert!(p.is_empty());
        assert!(!p.expired());
    }
}
