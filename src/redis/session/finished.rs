//! Acknowledged writes waiting to be released from the in-flight registry and queued for
//! the follower, together.
//!
//! Why not one at a time: every write of every session releases its keys and queues its
//! op under the registry's one lock and then the queue's. With two worker threads those
//! locks bounce between cores on every write (perf at `SET -P 16`: the unlock alone was
//! half the registry's time). The writes answered by one read of replies are released and
//! queued under one taking of each lock instead, in reply order.
//!
//! Order stays exact: the writes are queued before any other mirror op of this session
//! (`ReplySide::apply` flushes first), and under the registry's lock, so a write that
//! registers after they are released is queued after them. Releasing a little later only
//! makes an overlapping write *contended* (mirrored by key copy), never wrong.

use smallvec::SmallVec;

use super::effects::{push_write, Ran};
use super::pending::WriteEffect;
use super::reply::ReplySide;
use crate::metrics::Route;
use crate::redis::mirror::RedisOp;
use crate::replication::freeze::WriteTicket;

/// Entries the reused vectors keep room for between reads.
const KEEP_CAPACITY: usize = 64;

/// One successful write, its reply read.
struct Finished {
    write: Box<WriteEffect>,
    /// The database it ran in.
    db: u32,
    ran: Ran,
}

/// The session's writes answered since its last flush.
#[derive(Default)]
pub(super) struct FinishedWrites {
    writes: Vec<Finished>,
    /// Freeze tickets held until their writes are queued (a freeze that sees them all
    /// released must find the ops in the queue), reused between flushes.
    tickets: Vec<WriteTicket>,
}

impl FinishedWrites {
    pub(super) fn push(&mut self, write: Box<WriteEffect>, db: u32, ran: Ran) {
        self.writes.push(Finished { write, db, ran });
    }
}

impl ReplySide {
    /// Releases the writes answered so far and queues their mirror ops, in order.
    pub(super) fn flush_finished(&mut self) {
        if self.finished.writes.is_empty() {
            return;
        }
        let mut writes = std::mem::take(&mut self.finished.writes);
        let mut tickets = std::mem::take(&mut self.finished.tickets);
        let queue = match self.route {
            Route::Leader => self.shared.mirror.as_ref(),
            _ => None,
        };
        {
            // Held while queueing (see the module comment); a write without a
            // registration is not deferred, but is handled alike if it ever is.
            let mut fin = self.shared.in_flight.as_ref().map(|t| t.hold());
            let ops = writes.drain(..).filter_map(|f| {
                let Finished { write, db, ran } = f;
                let WriteEffect {
                    target,
                    raw,
                    known,
                    reg,
                    _ticket,
                } = *write;
                tickets.extend(_ticket);
                let exact = match (reg, fin.as_mut()) {
                    (Some((r, expected_db)), Some(fin)) => {
                        !fin.finish(r) && expected_db == Some(db)
                    }
                    _ => false,
                };
                let mut items = SmallVec::new();
                push_write(&mut items, db, target, raw, known, exact, ran);
                (!items.is_empty()).then_some(RedisOp { items })
            });
            match queue {
                Some(q) => q.push_all(ops),
                None => ops.for_each(drop),
            }
        }
        tickets.clear();
        // Kept for the next read, unless a long pipeline grew them: an idle client keeps
        // no room for the largest batch it ever sent.
        if writes.capacity() <= KEEP_CAPACITY {
            self.finished.writes = writes;
        }
        if tickets.capacity() <= KEEP_CAPACITY {
            self.finished.tickets = tickets;
        }
    }
}
