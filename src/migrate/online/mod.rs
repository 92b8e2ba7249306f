//! Online migration: while NiFi keeps using one provider through the sidecar, every NiFi
//! state change is also written, translated, into the other provider.
//!
//! Robust to ordering by construction: the tap on the mirror queue ([`tap`]) only notes
//! *which* component changed (after the leader acknowledged the write) in a bounded dirty
//! set. One task takes components out of the set, reads their *current* state from the
//! leader and writes it translated to the destination (a component the leader no longer
//! holds is deleted there). A component is taken out of the set before its read, so a write
//! acknowledged after the read marks it again and it is copied again: the last copy after
//! the last write always carries the newest state, whatever order things happened in.
//! Copies are serial (one batch at a time), so an older read never lands after a newer one.
//!
//! At start, and whenever the set overflows (or a write's components cannot be known), a
//! full copy runs: every component either side holds, paced, with the dirty set served
//! between its pages. `in_sync` means: the last full copy finished, nothing is dirty or
//! being copied, no component is failing and, while frozen, the settle pass is done.
//!
//! Several sidecars (one per NiFi node) may copy the same component: sidecar A may read it,
//! B's node write it and B copy it, and A's older copy land last. So every component a
//! sidecar copied is remembered (bounded, like the dirty set), and once writes are frozen
//! and the sidecar is idle it copies them all once more (the *settle pass*): reads made
//! after the freeze see the final state and land after that sidecar's own older copies.
//! `migrate verify` under the freeze is the proof (README runbook).
//!
//! Faults: every leader read is checked against the leader's identity before it is written
//! ([`guard`]): after a leader restart (it may have lost data) the migration halts instead
//! of deleting or rolling back the destination. A component whose copy failed is retried
//! every few seconds. Stopping the sidecar cancels a copy in flight.

pub mod guard;
mod run;
pub mod tap;

pub use run::{spawn, Copier};

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use serde_json::json;
use tokio::sync::Notify;

use super::copy::Totals;
use crate::replication::freeze::Freeze;

pub const METRIC_DIRTY: &str = "statemirror_migration_dirty";
pub const METRIC_COPIED: &str = "statemirror_migration_copied_total";
pub const METRIC_ERRORS: &str = "statemirror_migration_errors_total";
pub const METRIC_FULL_COPIES: &str = "statemirror_migration_full_copies_total";
pub const METRIC_IN_SYNC: &str = "statemirror_migration_in_sync";

/// The online migration of one sidecar.
pub struct Migration {
    /// The destination, without secrets.
    pub destination: String,
    source: &'static str,
    max_dirty: usize,
    pace: u32,
    state: Mutex<Dirty>,
    wake: Notify,
    copied: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_full: Mutex<Option<serde_json::Value>>,
    full_done: AtomicBool,
    /// Why the migration stopped copying for good (the leader may have lost data): set
    /// once, cleared only by restarting the sidecar (README runbook).
    halted: Mutex<Option<String>>,
    /// Called when the migration becomes idle (the queue's drained waiters recheck).
    on_idle: OnceLock<Arc<dyn Fn() + Send + Sync>>,
    /// The sidecar's write freeze: the settle pass runs once it is frozen.
    freeze: OnceLock<Arc<Freeze>>,
}

#[derive(Default)]
struct Dirty {
    set: BTreeSet<String>,
    /// A full copy is owed (at start, after an overflow, after an unknown write).
    full: bool,
    /// Components being copied now, and since when (`/status` shows a hung destination
    /// as a copy that has lasted long, before the provider's 30 s timeout reports it).
    in_flight: usize,
    since: Option<Instant>,
    /// Components whose last copy failed (a destination that refuses them).
    failing: HashSet<String>,
    /// Components copied since the last settle pass, and whether there were too many.
    written: HashSet<String>,
    settle_all: bool,
    /// When the failing components were last put back in the dirty set.
    retried: Option<Instant>,
}

impl Dirty {
    fn set_in_flight(&mut self, n: usize) {
        self.in_flight = n;
        self.since = (n > 0).then(Instant::now);
    }
}

/// How often components whose last copy failed are copied again. A per-component failure
/// can be transient (a destination out of memory, a leader still loading its data): without
/// a retry such a component stayed stale, and `in_sync` false, until NiFi wrote it again.
const RETRY_FAILING: Duration = Duration::from_secs(3);

impl Migration {
    pub fn new(
        source: &'static str,
        destination: String,
        max_dirty: usize,
        pace: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            destination,
            source,
            max_dirty: max_dirty.max(1),
            pace: pace.max(1),
            state: Mutex::new(Dirty {
                full: true,
                ..Dirty::default()
            }),
            wake: Notify::new(),
            copied: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_full: Mutex::new(None),
            full_done: AtomicBool::new(false),
            halted: Mutex::new(None),
            on_idle: OnceLock::new(),
            freeze: OnceLock::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Component `id` changed on the leader (its write was acknowledged).
    pub fn mark(&self, id: &str) {
        let mut st = self.lock();
        if st.set.len() >= self.max_dirty && !st.set.contains(id) {
            st.set.clear();
            st.full = true;
            drop(st);
            self.fail_note("the dirty set overflowed: a full copy runs");
        } else {
            st.set.insert(id.to_string());
            drop(st);
        }
        self.wake.notify_one();
    }

    /// A write whose components cannot be known: everything is copied again.
    pub fn mark_all(&self) {
        self.lock().full = true;
        self.wake.notify_one();
    }

    /// Nothing dirty and nothing being copied (what a freeze waits for).
    pub fn is_idle(&self) -> bool {
        let st = self.lock();
        st.set.is_empty() && st.in_flight == 0
    }

    /// Stops copying for good: what the leader holds now must not reach the destination.
    pub fn halt(&self, why: &str) {
        let mut h = self.halted.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_none() {
            tracing::error!(
                reason = why,
                "online migration halted: nothing more is copied"
            );
            *h = Some(why.to_string());
            drop(h);
            self.error(why);
        }
    }

    fn is_halted(&self) -> bool {
        self.halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub fn in_sync(&self) -> bool {
        if self.is_halted() {
            return false;
        }
        let frozen = self.frozen();
        let st = self.lock();
        st.set.is_empty()
            && st.in_flight == 0
            && !st.full
            && st.failing.is_empty()
            && self.full_done.load(Ordering::Relaxed)
            && !(frozen && (st.settle_all || !st.written.is_empty()))
    }

    pub fn set_freeze(&self, f: Arc<Freeze>) {
        let _ = self.freeze.set(f);
    }

    fn frozen(&self) -> bool {
        self.freeze.get().is_some_and(|f| f.is_frozen())
    }

    pub fn set_on_idle(&self, f: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.on_idle.set(f);
    }

    fn fail_note(&self, e: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    fn error(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        counter!(METRIC_ERRORS, "protocol" => self.source).increment(1);
        self.fail_note(e);
    }

    fn publish(&self) {
        let dirty = self.lock().set.len();
        gauge!(METRIC_DIRTY, "protocol" => self.source).set(dirty as f64);
        gauge!(METRIC_IN_SYNC, "protocol" => self.source).set(if self.in_sync() {
            1.0
        } else {
            0.0
        });
        if self.is_idle() {
            if let Some(f) = self.on_idle.get() {
                f();
            }
        }
    }

    /// The `/status` object (the destination is shown without secrets).
    pub fn status(&self) -> serde_json::Value {
        let (dirty, in_flight, full, failing, since) = {
            let st = self.lock();
            (
                st.set.len(),
                st.in_flight,
                st.full,
                st.failing.len(),
                st.since,
            )
        };
        json!({
            "destination": self.destination,
            "dirty": dirty,
            "copying": in_flight,
            "copying_seconds": since.map_or(0, |t| t.elapsed().as_secs()),
            "full_copy_pending": full,
            "failing_components": failing,
            "copied_total": self.copied.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
            "last_full_copy": *self.last_full.lock().unwrap_or_else(|p| p.into_inner()),
            "halted": *self.halted.lock().unwrap_or_else(|p| p.into_inner()),
            "in_sync": self.in_sync(),
        })
    }

    /// Takes up to `n` dirty components (now counted in flight).
    fn take(&self, n: usize) -> Vec<String> {
        let mut st = self.lock();
        let mut out = Vec::with_capacity(n.min(st.set.len()));
        while out.len() < n {
            match st.set.pop_first() {
                Some(id) => out.push(id),
                None => break,
            }
        }
        st.set_in_flight(out.len());
        out
    }

    /// Puts the failing components back in the dirty set, at most every [`RETRY_FAILING`].
    /// False when there was nothing to retry yet.
    fn retry_failing(&self) -> bool {
        let mut st = self.lock();
        if st.failing.is_empty() || st.retried.is_some_and(|t| t.elapsed() < RETRY_FAILING) {
            return false;
        }
        st.retried = Some(Instant::now());
        if st.set.len() + st.failing.len() > self.max_dirty {
            st.full = true;
        } else {
            let ids: Vec<String> = st.failing.iter().cloned().collect();
            st.set.extend(ids);
        }
        true
    }

    /// Records a batch's outcome; on a backend error the batch is dirty again. `record`:
    /// remember the ids for the settle pass (every copy but the settle pass's own).
    fn settle(&self, ids: Vec<String>, r: Result<Totals, String>, record: bool) {
        {
            let mut st = self.lock();
            st.set_in_flight(0);
            match &r {
                Ok(t) => {
                    for id in &ids {
                        st.failing.remove(id);
                    }
                    st.failing.extend(t.failed_ids.iter().cloned());
                    if record && !st.settle_all {
                        if st.written.len() + ids.len() > self.max_dirty {
                            st.written.clear();
                            st.settle_all = true;
                        } else {
                            st.written.extend(ids);
                        }
                    }
                }
                Err(_) => st.set.extend(ids),
            }
        }
        match r {
            Ok(t) => {
                let n = t.components + t.deleted;
                self.copied.fetch_add(n, Ordering::Relaxed);
                counter!(METRIC_COPIED, "protocol" => self.source).increment(n);
                for e in &t.errors {
                    self.error(e);
                }
            }
            Err(e) => self.error(&e),
        }
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_asks_for_a_full_copy_and_a_freeze_for_the_settle_pass() {
        let m = Migration::new("redis", "redis://x:1/0".into(), 3, 100);
        let freeze = Freeze::new();
        m.set_freeze(freeze.clone());
        m.lock().full = false;
        m.full_done.store(true, Ordering::Relaxed);
        assert!(m.in_sync() && m.is_idle());
        m.mark("a");
        m.mark("a");
        assert!(!m.in_sync() && !m.is_idle());
        let ids = m.take(10);
        assert_eq!(ids, ["a"]);
        assert!(!m.is_idle(), "a batch in flight is not idle");
        m.settle(ids, Ok(Totals::default()), true);
        assert!(m.in_sync(), "not frozen: copied is in sync");
        freeze.freeze(Duration::from_secs(1)).await;
        assert!(!m.in_sync(), "frozen: the settle pass must copy 'a' again");
        assert!(
            m.is_idle(),
            "the settle pass is not what a freeze waits for"
        );
        let again: Vec<String> = std::mem::take(&mut m.lock().written).into_iter().collect();
        m.settle(again, Ok(Totals::default()), false);
        assert!(m.in_sync());
        // A failed batch is dirty again.
        m.mark("b");
        let ids = m.take(10);
        m.settle(ids, Err("down".into()), true);
        assert_eq!(m.lock().set.len(), 1);
        // Overflow: the set is dropped for a full copy.
        for id in ["c", "d", "e"] {
            m.mark(id);
        }
        let st = m.lock();
        assert!(st.full && st.set.is_empty());
    }
}
