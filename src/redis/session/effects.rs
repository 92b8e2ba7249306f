//! What an answered request did, turned into mirror ops: a write's exact effect or copies
//! of its keys, a `MULTI` block as one op, and the writes still owed when a session ends.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use smallvec::SmallVec;

use super::pending::{Action, Effect, ExecEffect, Expect, TxItem, TxWrite, WriteEffect};
use super::reply::ReplySide;
use crate::metrics::Route;
use crate::redis::command::{Expiry, KnownEffect, WriteTarget};
use crate::redis::mirror::{Item, RedisOp};
use crate::redis::resp;
use crate::replication::queue::MirrorView;

impl ReplySide {
    /// Applies what a request did, given its reply (`None`: it ran, but its reply was
    /// suppressed by `CLIENT REPLY OFF|SKIP`), and tells the request side the database once
    /// a db-changing request is resolved.
    pub(super) fn apply_effect(&mut self, effect: Effect, reply: Option<&[u8]>) {
        let resolves = effect.changes_db();
        self.apply(effect, reply);
        if resolves {
            self.flags.db.store(self.db, Ordering::Release);
            self.flags.db_resolved.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn apply(&mut self, effect: Effect, reply: Option<&[u8]>) {
        let ok = reply.is_none_or(|r| !resp::is_error(r));
        if !matches!(effect, Effect::Write(_) | Effect::None) {
            // Anything else may queue mirror ops: the writes before it go first.
            self.flush_finished();
        }
        match effect {
            Effect::None => {}
            Effect::Write(w) => {
                if !ok {
                    return;
                }
                let ran = Ran::of(w.known.as_ref(), reply);
                if w.reg.is_some() {
                    // Released and queued with the other writes of this read (`finished`).
                    self.finished.push(w, self.db, ran);
                    return;
                }
                let WriteEffect {
                    target, raw, known, ..
                } = *w;
                let mut items = SmallVec::new();
                push_write(&mut items, self.db, target, raw, known, false, ran);
                self.mirror(items);
            }
            Effect::Select(db) => {
                if let (true, Some(db)) = (ok, db) {
                    self.db = db;
                }
            }
            Effect::Multi => {
                if ok {
                    self.in_multi = true;
                    self.tx.clear();
                }
            }
            Effect::Queued(item) => {
                if ok && self.in_multi {
                    self.tx.push(item);
                }
            }
            Effect::Exec(e) => {
                let ExecEffect { reg, select, .. } = *e;
                self.in_multi = false;
                let tx = std::mem::take(&mut self.tx);
                let Some(reply) = reply else {
                    // It ran, results unknown (a WATCH may have fired): copy its keys.
                    match reg {
                        Some((r, _)) => r.finish_with(|_| self.mirror_unknown(tx, select)),
                        None => self.mirror_unknown(tx, select),
                    }
                    return;
                };
                if resp::is_error(reply) || resp::is_null(reply) {
                    return; // WATCH fired or EXECABORT: nothing ran
                }
                match reg {
                    // Queue under the tracker's lock (see `Registration::finish_with`).
                    Some((r, expected_db)) => {
                        let exact = !select && expected_db == Some(self.db);
                        r.finish_with(|contended| self.mirror_exec(tx, reply, exact && !contended))
                    }
                    None => self.mirror_exec(tx, reply, false),
                }
            }
            Effect::Discard => {
                self.in_multi = false;
                self.tx.clear();
            }
            Effect::Reset => {
                self.db = 0;
                self.in_multi = false;
                self.tx.clear();
                self.resp3 = false;
                self.subs = Default::default();
                self.flags.subscribed.store(false, Ordering::Release);
            }
            Effect::Hello => {
                if let Some(r) = reply {
                    match r.first() {
                        Some(b'%') => self.resp3 = true,
                        Some(b'*') => self.resp3 = false,
                        _ => {}
                    }
                }
            }
            Effect::Monitor => {
                if ok {
                    self.raw_mode = true;
                }
            }
            Effect::Quit => self.close_after_flush = true,
            Effect::RawPipe => {
                self.raw_mode = ok;
                self.flags.sync_verdict(if ok {
                    super::SYNC_RAW
                } else {
                    super::SYNC_REFUSED
                });
            }
        }
    }

    /// What an `EXEC` whose reply was suppressed may have done: its keys are copied; what
    /// cannot be copied (a keyless write, a database change that may have failed) leaves the
    /// follower out of sync.
    fn mirror_unknown(&mut self, tx: Vec<TxItem>, select: bool) {
        let mut items = SmallVec::new();
        let mut unknown = select;
        for item in tx {
            match item {
                TxItem::Select(db) => self.db = db,
                TxItem::Write(w) => match *w {
                    TxWrite {
                        target: WriteTarget::Keyless,
                        ..
                    } => unknown = true,
                    TxWrite { target, raw, known } => {
                        push_items(&mut items, self.db, target, raw, known.is_some())
                    }
                },
                TxItem::Other => {}
            }
        }
        self.mirror(items);
        if unknown {
            self.out_of_sync("a transaction ran under CLIENT REPLY OFF|SKIP with a keyless write or SELECT; its effect is unknown");
        }
    }

    fn out_of_sync(&self, why: &str) {
        if self.route != Route::Leader {
            return;
        }
        if let Some(q) = &self.shared.mirror {
            q.sync().mark_out_of_sync(why);
        }
    }

    /// Queues what a successful `EXEC` did, as one op.
    pub(super) fn mirror_exec(&mut self, tx: Vec<TxItem>, reply: &[u8], exact: bool) {
        let mut items = SmallVec::new();
        let mut results = resp::elements(reply);
        for item in tx {
            let result = results.next();
            let ran = result.is_some_and(|r| !resp::is_error(r));
            match item {
                TxItem::Select(db) if ran => self.db = db,
                TxItem::Write(w) if ran => {
                    let TxWrite { target, raw, known } = *w;
                    let ran = Ran::of(known.as_ref(), result);
                    push_write(&mut items, self.db, target, raw, known, exact, ran)
                }
                _ => {}
            }
        }
        self.mirror(items);
    }

    pub(super) fn mirror(&self, items: SmallVec<[Item; 1]>) {
        if items.is_empty() || self.route != Route::Leader {
            return;
        }
        if let Some(q) = &self.shared.mirror {
            q.push(RedisOp { items });
        }
    }

    /// Ends the session: answers every request still owed with `err` (or nothing), and
    /// mirrors their writes since they may have run: keys are copied (harmless if it did
    /// not run); a keyless write cannot be replayed on a guess (a `FLUSHALL` that never ran
    /// would wipe the follower), so it leaves the follower out of sync (a resync repairs).
    pub(super) fn teardown(&mut self, err: Option<&'static [u8]>) {
        self.flush_finished();
        let mut items = SmallVec::new();
        let (mut keyless, mut exec_owed) = (false, false);
        let owed = std::mem::take(&mut self.unconfirmed);
        for (p, suppressed) in owed.into_iter().map(|p| (p, true)).chain(
            std::mem::take(&mut self.pending)
                .into_iter()
                .map(|p| (p, false)),
        ) {
            self.flags.pay();
            match (&p.action, &p.expect, err) {
                (Action::Local(b) | Action::LocalThenClose(b), _, _) => {
                    self.out.extend_from_slice(b)
                }
                _ if suppressed => {}
                (_, Expect::Nothing, _) => {}
                (_, _, Some(e)) => self.out.extend_from_slice(e),
                _ => {}
            }
            match p.effect {
                Effect::Write(w) => match *w {
                    WriteEffect {
                        target: WriteTarget::Keyless,
                        ..
                    } => keyless = true,
                    WriteEffect {
                        target, raw, known, ..
                    } => push_items(&mut items, self.db, target, raw, known.is_some()),
                },
                Effect::Exec(_) => exec_owed = true,
                _ => {}
            }
        }
        // Queued in MULTI, and the EXEC was sent: it may have run with its reply lost.
        let tx = std::mem::take(&mut self.tx);
        if exec_owed {
            for item in tx {
                if let TxItem::Write(w) = item {
                    match *w {
                        TxWrite {
                            target: WriteTarget::Keyless,
                            ..
                        } => keyless = true,
                        TxWrite { target, raw, known } => {
                            push_items(&mut items, self.db, target, raw, known.is_some())
                        }
                    }
                }
            }
        }
        self.mirror(items);
        if keyless {
            self.out_of_sync("a keyless write (FLUSHALL, FUNCTION…) was in flight when its leader connection ended; it may or may not have run");
        }
    }
}

impl ReplySide {
    /// A shared leader connection ended (multiplexing): the next `n` replies owed will not
    /// come. Those requests are answered with `LEADER_LOST` and their writes mirrored as
    /// may-have-run, as [`teardown`](Self::teardown) does, but the client stays connected.
    pub(super) fn fail_owed(&mut self, mut n: usize) {
        self.flush_finished();
        let mut items = SmallVec::new();
        let mut keyless = false;
        while n > 0 {
            self.drain_ready();
            // (A local answer that closes the connection comes next: nothing more owed.)
            if self
                .pending
                .front()
                .is_none_or(|p| matches!(p.expect, Expect::Nothing))
            {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            n -= 1;
            self.flags.pay();
            self.out.extend_from_slice(super::LEADER_LOST);
            let resolves = p.effect.changes_db();
            if let Effect::Write(w) = p.effect {
                match *w {
                    WriteEffect {
                        target: WriteTarget::Keyless,
                        ..
                    } => keyless = true,
                    WriteEffect {
                        target, raw, known, ..
                    } => push_items(&mut items, self.db, target, raw, known.is_some()),
                }
            }
            if resolves {
                // A shared connection stays in database 0, and so does the next one.
                self.flags.db.store(self.db, Ordering::Release);
                self.flags.db_resolved.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.drain_ready();
        self.mirror(items);
        if keyless {
            self.out_of_sync("a keyless write (FLUSHALL, FUNCTION…) was in flight when its shared leader connection ended; it may or may not have run");
        }
    }
}

/// What a successful write's reply says it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ran {
    /// It ran; its reply was suppressed (`CLIENT REPLY OFF|SKIP`).
    Suppressed,
    Applied,
    /// A known write whose reply says it changed nothing (`SET … NX` that lost).
    NoChange,
}

impl Ran {
    pub(super) fn of(known: Option<&KnownEffect>, reply: Option<&[u8]>) -> Ran {
        match (known, reply) {
            (_, None) => Ran::Suppressed,
            (Some(KnownEffect::Put { applied, .. }), Some(r)) if !applied.check(r) => Ran::NoChange,
            _ => Ran::Applied,
        }
    }
}

/// The mirror items for one acknowledged write: its own effect when the request carries it
/// and it ran uncontended (`exact`), else copies of its keys. A known write whose reply
/// says it changed nothing needs nothing.
pub(super) fn push_write(
    items: &mut SmallVec<[Item; 1]>,
    db: u32,
    target: WriteTarget,
    raw: Bytes,
    known: Option<KnownEffect>,
    exact: bool,
    ran: Ran,
) {
    match (known, ran) {
        (Some(KnownEffect::Put { .. }), Ran::NoChange) => {}
        (Some(KnownEffect::Put { pairs, expiry, .. }), Ran::Applied) if exact => {
            let expire_at_ms = match expiry {
                Expiry::None => None,
                Expiry::AtMs(t) => Some(t),
                Expiry::InMs(ms) => Some(now_ms().saturating_add(ms)),
            };
            for (key, value) in pairs {
                items.push(Item::Put {
                    db,
                    key,
                    value,
                    expire_at_ms,
                });
            }
        }
        (Some(KnownEffect::Delete(keys)), Ran::Applied) if exact => {
            for key in keys {
                items.push(Item::Delete { db, key });
            }
        }
        (known, _) => push_items(items, db, target, raw, known.is_some()),
    }
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Copies of a write's keys (or what replaces them). `known`: the write carried its
/// effect, so its keys are slices of the one allocation that also holds its values
/// (`command::owned_together`); a queued copy then gets the key copied out, or it would
/// keep the values alive while the queue counted only the key.
pub(super) fn push_items(
    items: &mut SmallVec<[Item; 1]>,
    db: u32,
    target: WriteTarget,
    raw: Bytes,
    known: bool,
) {
    match target {
        WriteTarget::Keys(keys) => {
            for k in keys {
                items.push(Item::Copy {
                    db: k.db.unwrap_or(db),
                    key: if known {
                        Bytes::copy_from_slice(&k.key)
                    } else {
                        k.key
                    },
                });
            }
        }
        WriteTarget::AskLeader => items.push(Item::KeysOf { db, cmd: raw }),
        WriteTarget::Keyless => items.push(Item::Replay { db, cmd: raw }),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::redis::command::{known_effect, KnownCmd};

    /// A contended known write is mirrored as a copy of its key. Its key shares one
    /// allocation with its value (`command::owned_together`): the queued copy must hold a
    /// key of its own, or a 1 MiB value would stay alive while the queue counted the key.
    #[test]
    fn a_copy_of_a_known_writes_key_does_not_keep_its_value() {
        let frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        let lim = resp::Limits {
            max_request_bytes: 1 << 20,
            max_args: 10,
        };
        let req = resp::parse_request(&mut BytesMut::from(&frame[..]), &lim)
            .unwrap()
            .unwrap();
        let known = known_effect(KnownCmd::Set, &req).unwrap();
        let KnownEffect::Put { pairs, .. } = &known else {
            panic!()
        };
        let value = pairs[0].1.as_ptr_range();
        let shared_key = pairs[0].0.as_ptr_range();
        assert_eq!(shared_key.end, value.start, "key and value share a buffer");
        let mut items = SmallVec::new();
        let target = known.target();
        push_write(
            &mut items,
            0,
            target,
            Bytes::new(),
            Some(known),
            false,
            Ran::Applied,
        );
        let [Item::Copy { key, .. }] = items.as_slice() else {
            panic!("{items:?}")
        };
        assert_eq!(&key[..], b"k");
        assert_ne!(key.as_ptr(), shared_key.start, "the copy's key is its own");
    }
}
