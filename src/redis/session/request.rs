//! The request side: reads client bytes, cuts them into requests, classifies each one,
//! and forwards it or answers it locally, handing the reply side a `Pending` first.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::pending::{
    local, Action, Effect, ExecEffect, Expect, Pending, TxItem, TxWrite, WriteEffect,
};
use super::{Flags, EXECABORT_FROZEN, EXECABORT_LEADER_DOWN, FROZEN, LEADER_DOWN, UNSUPPORTED};
use crate::metrics::Route;
use crate::redis::command::{
    known_effect, parse_u32, script_is_read_only, write_target, CommandTable, Kind, Special,
    SubKind, WriteTarget,
};
use crate::redis::inflight::{InFlight, KeyIds, Registration};
use crate::redis::resp::Request;
use crate::redis::server::Shared;
use crate::replication::freeze::WriteTicket;

pub(super) struct RequestSide {
    pub(super) shared: Arc<Shared>,
    pub(super) table: Arc<CommandTable>,
    pub(super) route: Route,
    pub(super) flags: Arc<Flags>,
    pub(super) in_multi: bool,
    pub(super) tx_writes: bool,
    /// Why the open `MULTI` must abort at `EXEC` (a write in it was refused here).
    pub(super) tx_poisoned: Option<&'static [u8]>,
    pub(super) reply_off: bool,
    pub(super) skip_next: bool,
    /// The database the next request runs in, when `db_known`. After a `SELECT` (or `RESET`,
    /// or an `EXEC` with `SELECT`) it is unknown until the reply side has seen that reply
    /// (`SELECT 99` may fail, `NOAUTH` may refuse it); meanwhile writes register as
    /// wildcards and are mirrored by key copy in the database the replies say.
    pub(super) db: u32,
    pub(super) db_known: bool,
    /// db-changing requests sent (compared with `Flags::db_resolved`).
    pub(super) db_changes: u64,
    /// A request whose effect matters was sent with no reply to come (`CLIENT REPLY
    /// OFF|SKIP`): end the batch with a fence so the reply side learns when it ran.
    pub(super) need_fence: bool,
    /// Keys of the writes queued in the open `MULTI` (registered at `EXEC`).
    pub(super) tx_keys: KeyIds,
    /// The open `MULTI` writes keys the proxy cannot see, or changes database.
    pub(super) tx_wild: bool,
    pub(super) tx_select: bool,
    /// Counts forwarded requests: one in [`LATENCY_SAMPLE`] is timed for the histogram.
    pub(super) sampled: u32,
    /// Multiplexed, sharing: replies expected for what is in the out buffer.
    pub(super) frames: usize,
    pub(super) counts: super::counts::Counts,
}

/// One request in this many (per connection) feeds the leader latency histogram: a
/// distribution needs no more, and each sample costs a shared-memory update.
pub(super) const LATENCY_SAMPLE: u32 = 16;

/// How the request side goes on after a request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// `QUIT`: Redis runs nothing after it.
    Quit,
    /// `SYNC`/`PSYNC`: the connection becomes a byte pipe.
    Raw,
}

/// `CLIENT REPLY ON` answers even under `OFF` or a pending `SKIP`: the one request the proxy
/// can add whose reply proves every earlier one ran. The client's mode is restored after it.
pub(super) const FENCE: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$2\r\nON\r\n";
pub(super) const RESTORE_OFF: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n";
pub(super) const RESTORE_SKIP: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$4\r\nSKIP\r\n";

/// What a session counted and did not flush yet goes out when it ends, on every path.
impl Drop for RequestSide {
    fn drop(&mut self) {
        self.counts.flush(&self.shared.metrics);
    }
}

impl RequestSide {
    /// `now`: when the read that carried this request completed (one clock read per batch).
    /// Returns how to go on when nothing after this request may be handled as usual.
    pub(super) fn handle(
        &mut self,
        req: Request,
        now: Instant,
        batch: &mut VecDeque<Pending>,
        out: &mut BytesMut,
    ) -> Option<End> {
        if !self.db_known {
            self.sync_db();
        }
        self.note_watch(&req);
        // Copy out what is needed so the table is not borrowed while `self` changes.
        let tracking = self.shared.in_flight.is_some();
        let (kind, special, target, known) = {
            let info = self.table.lookup(&req);
            let kind = match info.special {
                Special::Eval if script_is_read_only(&req) => Kind::Read,
                _ => info.kind,
            };
            let known = match info.known {
                Some(k) if tracking => known_effect(k, &req),
                _ => None,
            };
            // A known write's keys are already copied out: its target shares them.
            let target = (kind == Kind::Write).then(|| match &known {
                Some(k) if info.plain_keys() => k.target(),
                _ => write_target(info, &req),
            });
            (kind, info.special, target, known)
        };
        let mut end = None;
        let kind_idx = match kind {
            Kind::Read | Kind::PubSub => 0,
            Kind::Write => 1,
            Kind::Admin => 2,
        };
        let mut expect = if std::mem::take(&mut self.skip_next) || self.reply_off {
            Expect::Nothing
        } else {
            Expect::One
        };
        let mut effect = Effect::None;
        match special {
            Special::Multi => {
                if !self.in_multi {
                    self.in_multi = true;
                    self.reset_tx();
                }
                effect = Effect::Multi;
            }
            Special::Exec if self.in_multi => {
                self.in_multi = false;
                let mut ticket = None;
                let abort = match self.tx_poisoned.take() {
                    Some(why) => Some(why),
                    None if std::mem::take(&mut self.tx_writes) => {
                        match self.write_permission(false) {
                            Ok(t) => {
                                ticket = t;
                                None
                            }
                            Err(reject) => {
                                self.counts.add(1, Route::Rejected);
                                Some(execabort_for(reject))
                            }
                        }
                    }
                    None => None,
                };
                if let Some(why) = abort {
                    // Make the server drop the queued commands; answer as Redis would.
                    self.forward_replaced(b"*1\r\n$7\r\nDISCARD\r\n", why, expect, batch, out);
                    return None;
                }
                // Held until EXEC's reply is handled, even when it can only be mirrored by
                // key copy (a SELECT in it): other writes to its keys must see it in flight.
                let select = self.tx_select;
                let keys = std::mem::take(&mut self.tx_keys);
                let reg = self.prepare_registration(|_| keys, self.tx_wild || select);
                self.reset_tx();
                if select {
                    self.db_unknown();
                }
                effect = Effect::Exec(Box::new(ExecEffect {
                    _ticket: ticket,
                    reg,
                    select,
                }));
            }
            Special::Discard => {
                self.in_multi = false;
                self.reset_tx();
                effect = Effect::Discard;
            }
            Special::Select => {
                let db = req.arg(1).and_then(parse_u32);
                effect = if self.in_multi {
                    // Every queued command is one EXEC result, a failing SELECT too.
                    self.tx_select = true;
                    Effect::Queued(db.map_or(TxItem::Other, TxItem::Select))
                } else {
                    self.db_unknown();
                    Effect::Select(db)
                };
            }
            Special::Subscribe(kind) | Special::Unsubscribe(kind) => {
                let sub = matches!(special, Special::Subscribe(_));
                let name: &'static [u8] = match (sub, kind) {
                    (true, SubKind::Channel) => b"subscribe",
                    (true, SubKind::Pattern) => b"psubscribe",
                    (true, SubKind::Shard) => b"ssubscribe",
                    (false, SubKind::Channel) => b"unsubscribe",
                    (false, SubKind::Pattern) => b"punsubscribe",
                    (false, SubKind::Shard) => b"sunsubscribe",
                };
                let n = req.argc - 1;
                if !self.in_multi {
                    expect = if n == 0 && !sub {
                        Expect::ConfirmAll { name, kind }
                    } else {
                        Expect::Confirm {
                            name,
                            kind,
                            left: n.max(1),
                        }
                    };
                }
            }
            Special::Reset => {
                self.in_multi = false;
                self.reset_tx();
                self.db_unknown();
                self.reply_off = false;
                effect = Effect::Reset;
            }
            // Redis runs it at once, even inside MULTI, and reads nothing after it.
            Special::Quit => {
                effect = Effect::Quit;
                end = Some(End::Quit);
            }
            Special::Sync if !self.in_multi => {
                // Its payload is written past CLIENT REPLY OFF: it always comes.
                expect = Expect::One;
                effect = Effect::RawPipe;
                end = Some(End::Raw);
            }
            // Redis answers these with nothing (from a non-replica too).
            Special::ReplConf
                if req.arg(1).is_some_and(|a| {
                    a.eq_ignore_ascii_case(b"ack") || a.eq_ignore_ascii_case(b"getack")
                }) =>
            {
                expect = Expect::Nothing;
            }
            Special::Unsupported => {
                if !matches!(expect, Expect::Nothing) {
                    batch.push_back(local(Action::Local(Bytes::from_static(UNSUPPORTED))));
                }
                return None;
            }
            Special::Hello => effect = Effect::Hello,
            Special::Monitor => effect = Effect::Monitor,
            Special::ClientReply => match req.arg(2).map(|a| a.to_ascii_lowercase()) {
                Some(a) if a == b"off" => {
                    self.reply_off = true;
                    expect = Expect::Nothing;
                }
                Some(a) if a == b"skip" => {
                    expect = Expect::Nothing;
                    self.skip_next = !self.reply_off;
                }
                Some(a) if a == b"on" => {
                    self.reply_off = false;
                    expect = Expect::One;
                }
                _ => {}
            },
            _ => {}
        }
        if let Some(target) = target {
            if self.in_multi {
                // Queued, not run: the freeze is checked now and again at EXEC.
                match self.write_permission(true) {
                    Ok(_) => {
                        self.tx_writes = true;
                        match &target {
                            WriteTarget::Keys(keys) if self.db_known => {
                                if let Some(t) = &self.shared.in_flight {
                                    self.tx_keys.extend(
                                        keys.iter()
                                            .map(|k| t.key_id(k.db.unwrap_or(self.db), &k.key)),
                                    );
                                }
                            }
                            _ => self.tx_wild = true,
                        }
                        effect = Effect::Queued(TxItem::Write(Box::new(TxWrite {
                            raw: frame_if_needed(&target, &req),
                            target,
                            known,
                        })));
                    }
                    Err(reject) => {
                        self.counts.add(1, Route::Rejected);
                        self.tx_poisoned = Some(execabort_for(reject));
                        if !matches!(expect, Expect::Nothing) {
                            batch.push_back(local(Action::Local(Bytes::from_static(reject))));
                        }
                        return None;
                    }
                }
            } else {
                // Blocking writes too: a BLPOP on a non-empty list runs at once, and a parked
                // one may run any time; a freeze waits for it (up to its drain timeout).
                match self.write_permission(false) {
                    Ok(ticket) => {
                        let reg = match &target {
                            WriteTarget::Keys(keys) if self.db_known => self.prepare_registration(
                                |t| {
                                    keys.iter()
                                        .map(|k| t.key_id(k.db.unwrap_or(self.db), &k.key))
                                        .collect()
                                },
                                false,
                            ),
                            // Database unknown: only keys with their own database are sure.
                            WriteTarget::Keys(keys) => self.prepare_registration(
                                |t| {
                                    keys.iter()
                                        .filter_map(|k| Some(t.key_id(k.db?, &k.key)))
                                        .collect()
                                },
                                true,
                            ),
                            _ => self.prepare_registration(|_| KeyIds::new(), true),
                        };
                        effect = Effect::Write(Box::new(WriteEffect {
                            raw: frame_if_needed(&target, &req),
                            target,
                            known,
                            reg,
                            _ticket: ticket,
                        }));
                    }
                    Err(reject) => {
                        self.counts.add(1, Route::Rejected);
                        if !matches!(expect, Expect::Nothing) {
                            batch.push_back(local(Action::Local(Bytes::from_static(reject))));
                        }
                        return None;
                    }
                }
            }
        } else if self.in_multi
            && !matches!(special, Special::Multi | Special::Select | Special::Quit)
        {
            effect = Effect::Queued(TxItem::Other);
        }
        if !matches!(expect, Expect::Nothing) {
            // Its reply proves the earlier ones ran: no fence needed for them.
            self.need_fence = false;
        } else if !matches!(effect, Effect::None | Effect::Quit | Effect::RawPipe) && !self.in_multi
        {
            self.need_fence = true;
        }
        self.counts.add(kind_idx, self.route);
        if self.route == Route::Follower && self.shared.identity.is_configured() {
            // Region 1's ids, asked of the follower: the state identity map's names.
            let map = self.shared.identity.current();
            let prefix = &self.shared.cfg.nifi_key_prefix;
            out.extend_from_slice(&crate::nifi::identity_wire::redis_request(
                &map, prefix, &req,
            ));
        } else {
            out.extend_from_slice(&req.raw);
        }
        self.sampled = self.sampled.wrapping_add(1);
        batch.push_back(Pending {
            expect,
            action: Action::Forward,
            effect,
            sent: (self.sampled % LATENCY_SAMPLE == 1).then_some(now),
        });
        end
    }

    /// Tracks `WATCH` … `EXEC`/`DISCARD`/`UNWATCH`/`RESET` for the safe-point close. (A
    /// `WATCH` inside `MULTI` is refused by Redis; an `UNWATCH` there is only queued.)
    fn note_watch(&self, req: &Request) {
        let Some(name) = req.arg(0) else {
            return;
        };
        let watching = if name.eq_ignore_ascii_case(b"watch") && !self.in_multi {
            true
        } else if name.eq_ignore_ascii_case(b"exec")
            || name.eq_ignore_ascii_case(b"discard")
            || name.eq_ignore_ascii_case(b"reset")
            || (name.eq_ignore_ascii_case(b"unwatch") && !self.in_multi)
        {
            false
        } else {
            return;
        };
        self.flags.watching.store(watching, Ordering::Release);
    }

    /// A db-changing request was sent: the database is unknown until its reply is seen.
    fn db_unknown(&mut self) {
        self.db_known = false;
        self.db_changes += 1;
    }

    /// Learns the database from the reply side once it resolved every db-changing request.
    pub(super) fn sync_db(&mut self) {
        if self.flags.db_resolved.load(Ordering::Acquire) == self.db_changes {
            self.db = self.flags.db.load(Ordering::Acquire);
            self.db_known = true;
        }
    }

    pub(super) fn reset_tx(&mut self) {
        self.tx_writes = false;
        self.tx_poisoned = None;
        self.tx_keys.clear();
        self.tx_wild = false;
        self.tx_select = false;
    }

    /// Prepares a write's in-flight registration (when mirroring), with the expected
    /// database.
    pub(super) fn prepare_registration(
        &self,
        keys: impl FnOnce(&InFlight) -> KeyIds,
        wild: bool,
    ) -> Option<(Registration, Option<u32>)> {
        let tracker = self.shared.in_flight.as_ref()?;
        Some((
            // Counted with the rest of its read, before any is sent (`conn::requests`).
            tracker.prepare(keys(tracker), wild),
            self.db_known.then_some(self.db),
        ))
    }

    /// Sends `cmd` to the backend but answers the client with `reply` in its place.
    pub(super) fn forward_replaced(
        &mut self,
        cmd: &'static [u8],
        reply: &'static [u8],
        expect: Expect,
        batch: &mut VecDeque<Pending>,
        out: &mut BytesMut,
    ) {
        out.extend_from_slice(cmd);
        // Under CLIENT REPLY OFF|SKIP the DISCARD is answered with nothing, like the EXEC.
        let (expect, action) = if matches!(expect, Expect::Nothing) {
            self.need_fence = true;
            (Expect::Nothing, Action::Replace(b""))
        } else {
            (Expect::One, Action::Replace(reply))
        };
        batch.push_back(Pending {
            expect,
            action,
            effect: Effect::Discard,
            sent: None,
        });
    }

    /// May this write go to the leader? `Ok(ticket)` (none for a write queued in MULTI:
    /// the EXEC takes one), or the error line to answer with.
    pub(super) fn write_permission(
        &self,
        untracked: bool,
    ) -> Result<Option<WriteTicket>, &'static [u8]> {
        if self.route == Route::Follower {
            self.shared.metrics.rejected_leader_unavailable.increment(1);
            return Err(LEADER_DOWN);
        }
        match self.shared.freeze.begin_write() {
            None => {
                self.shared.metrics.rejected_maintenance.increment(1);
                Err(FROZEN)
            }
            Some(t) if untracked => {
                drop(t);
                Ok(None)
            }
            Some(t) => Ok(Some(t)),
        }
    }
}

/// The `EXECABORT` that ends a transaction one of whose writes got `reject`.
pub(super) fn execabort_for(reject: &[u8]) -> &'static [u8] {
    if reject == FROZEN {
        EXECABORT_FROZEN
    } else {
        EXECABORT_LEADER_DOWN
    }
}

/// The request frame a mirror item will need (to ask the leader for its keys, or to replay
/// it), owned; nothing when the keys are known.
pub(super) fn frame_if_needed(target: &WriteTarget, req: &Request) -> Bytes {
    match target {
        WriteTarget::Keys(_) => Bytes::new(),
        WriteTarget::AskLeader | WriteTarget::Keyless => req.raw_owned(),
    }
}
