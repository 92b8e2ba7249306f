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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use smallvec::SmallVec;

use crate::replication::queue::lock;

#[derive(Default)]
struct Entry {
    in_flight: u32,
    contended: bool,
}

#[derive(Default)]
struct State {
    keys: HashMap<(u32, Bytes), Entry>,
    wild_in_flight: u32,
    /// Counts wildcard registrations ever made.
    wild_epoch: u64,
}

#[derive(Default)]
pub struct InFlight {
    state: Mutex<State>,
}

/// One write's registration; `finish` (or drop) releases it.
pub struct Registration {
    tracker: Arc<InFlight>,
    keys: SmallVec<[(u32, Bytes); 2]>,
    wild: bool,
    /// A wildcard was in flight when this one started.
    overlapped_wild: bool,
    epoch: u64,
    done: bool,
}

impl InFlight {
    /// Registers a write of `keys` (plus a wildcard when some of its keys are unknown).
    pub fn register(
        self: &Arc<Self>,
        keys: SmallVec<[(u32, Bytes); 2]>,
        wild: bool,
    ) -> Registration {
        let (overlapped_wild, epoch) = {
            let mut st = lock(&self.state);
            for k in &keys {
                let e = st.keys.entry(k.clone()).or_default();
                if e.in_flight > 0 {
                    e.contended = true;
                }
                e.in_flight += 1;
            }
            let overlapped = st.wild_in_flight > 0;
            if wild {
                st.wild_in_flight += 1;
                st.wild_epoch += 1;
            }
            (overlapped, st.wild_epoch)
        };
        Registration {
            tracker: self.clone(),
            keys,
            wild,
            overlapped_wild,
            epoch,
            done: false,
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
    pub fn finish_with<R>(mut self, f: impl FnOnce(bool) -> R) -> R {
        let tracker = self.tracker.clone();
        let mut st = lock(&tracker.state);
        let contended = self.release_locked(&mut st);
        f(contended)
    }

    #[cfg(test)]
    fn finish(self) -> bool {
        self.finish_with(|c| c)
    }

    fn release_locked(&mut self, st: &mut State) -> bool {
        if self.done {
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

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.done {
            let tracker = self.tracker.clone();
            let mut st = lock(&tracker.state);
            self.release_locked(&mut st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &'static str) -> SmallVec<[(u32, Bytes); 2]> {
        smallvec::smallvec![(0, Bytes::from_static(k.as_bytes()))]
    }

    #[test]
    fn wildcards_contend_with_everything_they_overlap() {
        let t = Arc::new(InFlight::default());
        let a = t.register(keys("k"), false);
        let w = t.register(SmallVec::new(), true); // e.g. EVAL with unknown keys
        let b = t.register(keys("z"), false); // starts while w is in flight
        assert!(a.finish(), "w started during a");
        drop(w);
        assert!(b.finish(), "w was in flight when b started");
        let c = t.register(keys("k"), false);
        assert!(!c.finish());
    }

    #[test]
    fn overlapping_writes_are_both_contended() {
        let t = Arc::new(InFlight::default());
        let a = t.register(keys("k"), false);
        let b = t.register(keys("k"), false);
        let other = t.register(keys("x"), false);
        assert!(a.finish(), "b overlapped a");
        assert!(b.finish(), "a overlapped b");
        assert!(!other.finish());
        // Sequential writes are not.
        let c = t.register(keys("k"), false);
        assert!(!c.finish());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_write_that_overlaps_a_finished_one_late_is_contended() {
        let t = Arc::new(InFlight::default());
        let a = t.register(keys("k"), false);
        let b = t.register(keys("k"), false);
        drop(a); // e.g. the connection died
        let c = t.register(keys("k"), false); // overlaps b
        assert!(b.finish());
        assert!(c.finish());
    }
}
