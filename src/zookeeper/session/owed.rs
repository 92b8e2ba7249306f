//! The queue of entries the request side hands to the reply side (one per request, in the
//! order the requests were forwarded).
//!
//! A channel would wake the reply side on every request; it need not be: it takes what is
//! queued each time the server replies (an entry is always queued before its request is
//! forwarded), so only entries the reply side must act on by itself — a reply made here,
//! the end of the requests — wake it. The queue is bounded: past [`MAX_QUEUED`] entries the
//! request side waits until the reply side takes them (a client whose replies cannot be
//! delivered is not read without end).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Entries not yet taken by the reply side, past which the request side waits.
pub(super) const MAX_QUEUED: usize = 64 * 1024;

pub(super) struct Owed<T> {
    inner: Mutex<Inner<T>>,
    /// Wakes the reply side (an entry it must act on, or the end of the requests).
    pub(super) wake: Notify,
    /// Wakes the request side waiting for room.
    room: Notify,
}

struct Inner<T> {
    queued: Vec<T>,
    /// No more entries will come.
    closed: bool,
    /// The request side waits for room.
    full: bool,
}

impl<T> Owed<T> {
    pub(super) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                queued: Vec::new(),
                closed: false,
                full: false,
            }),
            wake: Notify::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Nothing panics while holding it; a poisoned lock still holds consistent entries.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `batch` (emptied, its allocation kept); `wake`: the reply side must see it now.
    /// Returns true when the queue is full: wait with [`Owed::room`] before reading more.
    pub(super) fn push(&self, batch: &mut Vec<T>, wake: bool) -> bool {
        let full = {
            let mut g = self.lock();
            g.queued.append(batch);
            g.full = g.queued.len() > MAX_QUEUED;
            g.full
        };
        if wake {
            self.wake.notify_one();
        }
        full
    }

    /// Resolves once the reply side took the entries (after [`Owed::push`] returned true).
    pub(super) async fn room(&self) {
        self.room.notified().await
    }

    /// No more entries: wakes the reply side.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Moves the queued entries into `into` (through `spare`, an empty vector swapped with
    /// the queue's so neither side allocates per batch); true when no more will come.
    pub(super) fn take(&self, spare: &mut Vec<T>, into: &mut impl Extend<T>) -> bool {
        let (closed, full) = {
            let mut g = self.lock();
            std::mem::swap(&mut g.queued, spare);
            (g.closed, std::mem::take(&mut g.full))
        };
        into.extend(spare.drain(..));
        if full {
            self.room.notify_one();
        }
        closed
    }
}

/// Closes the queue when the request side ends in any way (aborted included).
pub(super) struct CloseOnDrop<T>(pub(super) Arc<Owed<T>>);

impl<T> Drop for CloseOnDrop<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn entries_keep_order_and_close_is_seen_after_them() {
        let owed = Arc::new(Owed::new());
        let (mut spare, mut into) = (Vec::new(), VecDeque::new());
        assert!(!owed.push(&mut vec![1, 2], false));
        {
            let _close = CloseOnDrop(owed.clone());
            assert!(!owed.push(&mut vec![3], false));
        }
        assert!(owed.take(&mut spare, &mut into));
        assert_eq!(into, [1, 2, 3]);
        assert!(spare.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_the_reply_side() {
        let owed = Owed::new();
        let mut batch: Vec<usize> = (0..=MAX_QUEUED).collect();
        assert!(owed.push(&mut batch, false));
        assert!(batch.is_empty());
        let mut into = Vec::new();
        assert!(!owed.take(&mut Vec::new(), &mut into));
        assert_eq!(into.len(), MAX_QUEUED + 1);
        // The take left a permit: the request side's wait ends at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), owed.room())
            .await
            .expect("room after a take");
        // A wake stores a permit too.
        owed.push(&mut vec![1], true);
        tokio::time::timeout(std::time::Duration::from_secs(5), owed.wake.notified())
            .await
            .expect("woken");
    }
}
