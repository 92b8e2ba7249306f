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
//! 2. One `MULTI … EXEC` on the leader reads `DUMP` + `PEXPIRETIME` of the copied keys: one
//!    round trip and an atomic snapshot per op (skipped when nothing is copied). A batch with
//!    several copied keys is read in rounds of at most 8 MiB (estimated first with
//!    `MEMORY USAGE`, one more round trip), each written to the follower before the next is
//!    read, so a batch of copies of large keys never sits in memory at once.
//! 3. The follower gets the effects in queue order; an op with several effects (a `MULTI`
//!    block, `RENAME`) is applied inside its own `MULTI … EXEC`. Keyless writes
//!    (`FLUSHDB`, `FUNCTION LOAD`) are replayed as sent. Each op's database is selected.
//!
//! Costs and limits (also in the README): a copied write costs the leader a `DUMP` of the
//! keys it touched (pipelined and coalesced). A write to a very large collection copies the
//! whole collection. The follower should accept the leader's `DUMP` format (same or newer
//! Redis); the first time it rejects a payload the writer switches to type-aware copies
//! ([`crate::redis::typed`], slower: a few round trips per key) and retries the batch, as it does
//! from the start with `redis.copy_format = "typed"`. `SWAPDB` and `FLUSHALL`/`FLUSHDB` are
//! replayed; a client write that races with them on another connection may be ordered
//! either way on the follower. A copy queued before a `SWAPDB` (in its batch or still
//! waiting) reads the key where the swap moved it on the leader and writes it where the
//! follower has it until the swap is replayed there ([`DbMoves`]). A replay that ran is not
//! sent again when its batch is retried; a `SWAPDB` whose outcome is unknown (the
//! connection failed before its reply) is not resent either, and flagged. If the
//! leader restarts (new `run_id`) while copies are queued, they are given up and the
//! follower marked out of sync rather than copied from a leader that may have lost data.

mod applier;
mod read;
mod write;

pub use applier::RedisApplier;
pub(crate) use applier::{leader_run_id, LeaderChange, LeaderSeen};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::replication::queue::{heap_alloc, Barrier, MirrorOp};

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
        let mut keys = SmallVec::new();
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
        snap: Option<crate::redis::typed::Snapshot>,
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
    /// Read `key` from the leader's database `from` and write it to `db` on the follower.
    /// They differ when a `SWAPDB` queued after the write has already moved the key on the
    /// leader (but not yet on the follower).
    Read {
        db: u32,
        from: u32,
        key: Bytes,
    },
    Known(Effect),
}

/// Where the leader's databases are now, relative to the follower's, for keys written
/// before the `SWAPDB`s this was built from: `SWAPDB a b` moves a key of `a` to `b`.
#[derive(Default, Clone)]
struct DbMoves(std::collections::HashMap<u32, u32>);

impl DbMoves {
    fn get(&self, db: u32) -> u32 {
        self.0.get(&db).copied().unwrap_or(db)
    }

    /// Adds a swap that ran *before* the ones already in (the moves are built backwards
    /// from the newest).
    fn swap_before(&mut self, a: u32, b: u32) {
        let (ta, tb) = (self.get(a), self.get(b));
        self.0.insert(a, tb);
        self.0.insert(b, ta);
    }
}

/// The two databases of a replayed `SWAPDB`, if `cmd` is one.
fn swapdb_of(cmd: &[u8]) -> Option<(u32, u32)> {
    let args = frame_args(cmd)?;
    match args.as_slice() {
        [name, a, b] if name.eq_ignore_ascii_case(b"SWAPDB") => Some((
            std::str::from_utf8(a).ok()?.parse().ok()?,
            std::str::from_utf8(b).ok()?.parse().ok()?,
        )),
        _ => None,
    }
}

/// The arguments of a request frame (`*<n>\r\n$<len>\r\n<arg>\r\n…`), or `None` if it is
/// not one. Only used on replayed keyless commands, which are short.
fn frame_args(cmd: &[u8]) -> Option<SmallVec<[&[u8]; 4]>> {
    fn line(b: &[u8]) -> Option<(usize, &[u8])> {
        let nl = b.iter().position(|&c| c == b'\n')?;
        let text = b.get(1..nl.checked_sub(1)?)?;
        Some((
            std::str::from_utf8(text).ok()?.parse().ok()?,
            b.get(nl + 1..)?,
        ))
    }
    if cmd.first() != Some(&b'*') {
        return None;
    }
    let (n, mut rest) = line(cmd)?;
    let mut args = SmallVec::new();
    for _ in 0..n {
        if rest.first() != Some(&b'$') {
            return None;
        }
        let (len, after) = line(rest)?;
        args.push(after.get(..len)?);
        rest = after.get(len + 2..)?;
    }
    Some(args)
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
    fn swaps_queued_after_a_write_say_where_its_key_is_now() {
        assert_eq!(
            swapdb_of(b"*3\r\n$6\r\nswapdb\r\n$1\r\n0\r\n$2\r\n12\r\n"),
            Some((0, 12))
        );
        assert_eq!(swapdb_of(b"*1\r\n$8\r\nFLUSHALL\r\n"), None);
        assert_eq!(swapdb_of(b"*3\r\n$6\r\nSWAPDB\r\n$1\r\n0"), None);
        // SWAPDB 0 1, then SWAPDB 1 2: a key written to 0 before both is in 2 now.
        let mut m = DbMoves::default();
        m.swap_before(1, 2);
        m.swap_before(0, 1);
        assert_eq!((m.get(0), m.get(1), m.get(2), m.get(3)), (2, 0, 1, 3));
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
