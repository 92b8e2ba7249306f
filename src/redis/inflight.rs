//! Which keys have writes in flight to the leader, across all client connections.
//!
//! Why: a write whose whole effect is in the request (`SET k v`, `DEL k`) can be mirrored
//! by sending that effect, without reading the key back from the leader — but only if the
//! proxy knows it ran after every earlier write to that key. Redis runs one command at a
//! time, so two writes to a key are ordered by their acknowledgements *unless* both were in
//! flight at once (sent on different connections before either was answered). Each write
//! registers its keys when it is sent; if another write to the same key is in flight at any
//! moment of its life, both are marked *contended* and are mirrored as key copies instead
//! (which read the leader's final state and are correct in any order).
//!
//! Writes whose keys the proxy cannot see (`EVAL … numkeys`, `FLUSHDB`) register as
//! *wildcards*: any known-effect write in flight at the same time is contended.
//!
//! Keys are tracked by a 64-bit hash of (database, name) with a per-process random seed
//! ([`KeyId`]), not by their bytes: every write passes through this one lock, and hashing
//! once without cloning or comparing names took the registry from ~13% of the proxy's user
//! time to a few percent (perf, `SET -P 16`). Two names with one hash can only make a write
//! *contended* that was not — mirrored by key copy, which is correct in any case.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::fast::RandomState;
use smallvec::SmallVec;

use crate::replication::queue::lock;

#[derive(Default)]
struct Entry {
    in_flight: u32,
    contended: bool,
}

#[derive(Default)]
struct State {
    keys: HashMap<KeyId, Entry, RandomState>,
    wild_in_flight: u32,
    /// Counts wildcard registrations ever made.
    wild_epoch: u64,
}

/// A key as the registry knows it: see [`InFlight::key_id`].
pub type KeyId = u64;

/// The keys of one write.
pub type KeyIds = SmallVec<[KeyId; 2]>;

#[derive(Default)]
pub struct InFlight {
    state: Mutex<State>,
    seed: RandomState,
}

/// One write's registration; `finish` (or drop) releases it.
pub struct Registration {
    tracker: Arc<InFlight>,
    keys: KeyIds,
    wild: bool,
    /// A wildcard was in flight when this one started.
    overlapped_wild: bool,
    epoch: u64,
    /// Counted in the tracker (see [`InFlight::prepare`]).
    active: bool,
    done: bool,
}

impl InFlight {
    /// The registry's name for key `key` of database `db`.
    pub fn key_id(&self, db: u32, key: &[u8]) -> KeyId {
        self.seed.hash_one((db, key))
    }

    /// Registers a write of `keys` (plus a wildcard when some of its keys are unknown) at
    /// once: [`Self::prepare`] and [`Held::activate`] in one (sessions use the two
    /// steps, to count a whole read's writes under one lock).
    #[cfg(test)]
    pub fn register(self: &Arc<Self>, keys: KeyIds, wild: bool) -> Registration {
        let mut reg = self.prepare(keys, wild);
        self.hold().activate(&mut reg);
        reg
    }

    /// A registration not counted yet: a session prepares one per write it parses and
    /// counts those of one read together ([`Held::activate`]), before any of them is sent.
    /// Dropped before that, it never existed.
    pub fn prepare(self: &Arc<Self>, keys: KeyIds, wild: bool) -> Registration {
        Registration {
            tracker: self.clone(),
            keys,
            wild,
            overlapped_wild: false,
            epoch: 0,
            active: false,
            done: false,
        }
    }

    /// Takes the tracker's lock, to count or release several registrations under it (see
    /// [`Held`]).
    pub fn hold(&self) -> Held<'_> {
        Held {
            st: lock(&self.state),
            tracker: self,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.state).keys.len()
    }
}

impl Registration {
    /// Releases the keys and calls `f(contended)` — true when another write to one of them
    /// overlapped this one — *under the tracker's lock*. The caller queues its mirror op in
    /// `f`: a write that registers after this one is released is then queued after it, so
    /// the queue order of uncontended writes is the order Redis ran them in.
    pub fn finish_with<R>(self, f: impl FnOnce(bool) -> R) -> R {
        let tracker = self.tracker.clone();
        let mut held = tracker.hold();
        let contended = held.finish(self);
        f(contended)
    }

    #[cfg(test)]
    fn finish(self) -> bool {
        self.finish_with(|c| c)
    }

    fn release_locked(&mut self, st: &mut State) -> bool {
        if self.done || !self.active {
            // Never counted (its request was never sent): nothing to release, and no
            // verdict either way, so the safe one.
            self.done = true;
            return true;
        }
        self.done = true;
        // Another wildcard started while this write was in flight?
        let mut contended = self.overlapped_wild || st.wild_epoch != self.epoch;
        if self.wild {
            st.wild_in_flight -= 1;
        }
        for k in &self.keys {
            if let Some(e) = st.keys.get_mut(k) {
                contended |= e.contended;
                e.in_flight -= 1;
                if e.in_flight == 0 {
                    st.keys.remove(k);
                }
            }
        }
        contended
    }
}

/// The tracker's lock, held by a session for a whole read: to count the writes of one read
/// of requests before any is sent ([`Held::activate`]), or to release the writes answered by
/// one read of replies and queue their mirror ops under it ([`Held::finish`]; what
/// [`Registration::finish_with`] does for one). Each write still gets its own verdict.
pub struct Held<'a> {
    st: MutexGuard<'a, State>,
    tracker: &'a InFlight,
}

impl Held<'_> {
    /// Counts `reg` (of this tracker) as in flight from now on.
    pub fn activate(&mut self, reg: &mut Registration) {
        debug_assert!(std::ptr::eq(Arc::as_ptr(&reg.tracker), self.tracker));
        if reg.active || reg.done {
            return;
        }
        let st = &mut *self.st;
        for &k in &reg.keys {
            let e = st.keys.entry(k).or_default();
            if e.in_flight > 0 {
                e.contended = true;
            }
            e.in_flight += 1;
        }
        reg.overlapped_wild = st.wild_in_flight > 0;
        if reg.wild {
            st.wild_in_flight += 1;
            st.wild_epoch += 1;
        }
        reg.epoch = st.wild_epoch;
        reg.active = true;
    }

    /// Releases `reg` (of this tracker); true when another write overlapped it.
    pub fn finish(&mut self, mut reg: Registration) -> bool {
        debug_assert!(std::ptr::eq(Arc::as_ptr(&reg.tracker), self.tracker));
        reg.release_locked(&mut self.st)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.done && self.active {
            let tracker = self.tracker.clone();
            let mut st = lock(&tracker.state);
            self.release_locked(&mut st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: &InFlight, k: &'static str) -> KeyIds {
        smallvec::smallvec![t.key_id(0, k.as_bytes())]
    }

    #[test]
    fn a_key_id_names_the_database_and_the_key() {
        let t = InFlight::default();
        assert_eq!(t.key_id(0, b"k"), t.key_id(0, b"k"));
        assert_ne!(t.key_id(0, b"k"), t.key_id(1, b"k"));
        assert_ne!(t.key_id(0, b"k"), t.key_id(0, b"k2"));
        // (db, key) is hashed as a tuple: no concatenation ambiguity.
        assert_ne!(t.key_id(0, b"ab"), t.key_id(0, b"a"));
    }

    #[test]
    fn wildcards_contend_with_everything_they_overlap() {
        let t = Arc::new(InFlight::default());
        let a = t.register(keys(&t, "k"), false);
        let w = t.register(SmallVec::new(), true); // e.g. EVAL with unknown keys
        let b = t.register(keys(&t, "z"), false); // starts while w is in flight
        assert!(a.finish(), "w started during a");
        drop(w);
        assert!(b.finish(), "w was in flight when b started");
        let c = t.register(keys(&t, "k"), false);
        assert!(!c.finish());
    }

    #[test]
    fn overlapping_writes_are_both_contended() {
        let t = Arc::new(InFlight::default());
        let a = t.register(keys(&t, "k"), false);
        let b = t.register(keys(&t, "k"), false);
        let other = t.register(keys(&t, "x"), false);
        assert!(a.finish(), "b overlapped a");
        assert!(b.finish(), "a overlapped b");
        assert!(!other.finish());
        // Sequential writes are not.
        let c = t.register(keys(&t, "k"), false);
        assert!(!c.finish());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_prepared_registration_counts_only_once_activated() {
        let t = Arc::new(InFlight::default());
        let a = t.prepare(keys(&t, "k"), false);
        let b = t.register(keys(&t, "k"), false);
        assert!(!b.finish(), "a was not in flight yet");
        drop(a); // never activated: releases nothing
        assert_eq!(t.len(), 0);
        let mut c = t.prepare(keys(&t, "k"), false);
        let mut d = t.prepare(keys(&t, "k"), false);
        {
            let mut r = t.hold();
            r.activate(&mut c);
            r.activate(&mut d);
        }
        assert!(
            c.finish() && d.finish(),
            "activated together, both in flight"
        );
        assert!(
            t.prepare(keys(&t, "x"), false).finish(),
            "no verdict without a count"
        );
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn finishing_many_at_once_gives_each_its_own_verdict() {
        let t = Arc::new(InFlight::default());
        let a = t.register(keys(&t, "k"), false);
        let b = t.register(keys(&t, "k"), false);
        let c = t.register(keys(&t, "x"), false);
        let mut fin = t.hold();
        assert!(fin.finish(a));
        assert!(fin.finish(b));
        assert!(!fin.finish(c));
        drop(fin);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_write_that_overlaps_a_finished_one_late_is_contended() {
        let t = Arc::new(InFlight::default());
        let a = t.register(keys(&t, "k"), false);
        let b = t.register(keys(&t, "k"), false);
        drop(a); // e.g. the connection died
        let c = t.register(keys(&t, "k"), false); // overlaps b
        assert!(b.finish());
        assert!(c.finish());
    }
}
