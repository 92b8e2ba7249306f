//! The write freeze (maintenance mode), shared by every protocol.
//!
//! Sessions take a [`WriteTicket`] before forwarding a write and hold it until the leader's
//! answer has been handled (and the mirror op queued). Freezing sets the flag first and then
//! waits for tickets to reach zero; a session increments before it checks the flag. With
//! sequentially consistent atomics this is the Dekker pattern: either the session sees the
//! freeze and rejects, or the freezer sees the ticket and waits for it. No write slips through.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use metrics::Gauge;
use tokio::sync::Notify;

use super::queue::lock;

pub struct Freeze {
    frozen: AtomicBool,
    in_flight: AtomicUsize,
    since: Mutex<Option<SystemTime>>,
    released: Notify,
    gauge: Gauge,
}

/// Held while one write is in flight to the leader.
pub struct WriteTicket(Arc<Freeze>);

impl Drop for WriteTicket {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, SeqCst) == 1 {
            self.0.released.notify_waiters();
        }
    }
}

impl Freeze {
    pub fn new() -> Arc<Self> {
        let gauge = crate::metrics::maintenance_gauge();
        gauge.set(0.0);
        Arc::new(Self {
            frozen: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(None),
            released: Notify::new(),
            gauge,
        })
    }

    /// A ticket for one write, or `None` while writes are frozen.
    pub fn begin_write(self: &Arc<Self>) -> Option<WriteTicket> {
        self.in_flight.fetch_add(1, SeqCst);
        let ticket = WriteTicket(self.clone());
        if self.frozen.load(SeqCst) {
            return None; // dropping the ticket gives the slot back
        }
        Some(ticket)
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(SeqCst)
    }

    pub fn since(&self) -> Option<SystemTime> {
        *lock(&self.since)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Freezes writes; returns once no write is in flight or `timeout` passed (then false).
    pub async fn freeze(&self, timeout: Duration) -> bool {
        if !self.frozen.swap(true, SeqCst) {
            *lock(&self.since) = Some(SystemTime::now());
            self.gauge.set(1.0);
            tracing::info!("writes frozen for maintenance");
        }
        self.writes_settled(timeout).await
    }

    /// Waits (without freezing) until no write is in flight; false on timeout. At shutdown,
    /// after sessions stopped reading, this is "every write answered and queued".
    pub async fn writes_settled(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.released.notified();
            if self.in_flight.load(SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight.load(SeqCst) == 0;
            }
        }
    }

    pub fn unfreeze(&self) {
        if self.frozen.swap(false, SeqCst) {
            *lock(&self.since) = None;
            self.gauge.set(0.0);
            tracing::info!("writes resumed after maintenance");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn freeze_waits_for_in_flight_writes() {
        let f = Freeze::new();
        let t = f.begin_write().unwrap();
        assert!(
            !f.freeze(Duration::from_millis(20)).await,
            "a write is in flight"
        );
        assert!(f.begin_write().is_none(), "frozen: new writes are refused");
        let f2 = f.clone();
        let h = tokio::spawn(async move { f2.freeze(Duration::from_secs(5)).await });
        drop(t);
        assert!(h.await.unwrap());
        f.unfreeze();
        assert!(f.begin_write().is_some());
    }
}
