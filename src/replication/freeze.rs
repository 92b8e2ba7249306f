//! The write freeze (maintenance mode), shared by every protocol.
//!
//! Sessions take a [`WriteTicket`] before forwarding a write and hold it until the leader's
//! answer has been handled (and the mirror op queued). Freezing sets the flag first and then
//! waits for tickets to reach zero; a session increments before it checks the flag. With
//! sequentially consistent atomics this is the Dekker pattern: either the session sees the
//! freeze and rejects, or the freezer sees the ticket and waits for it. No write slips through.
//!
//! Two sources freeze writes: this sidecar's own maintenance (`PUT /maintenance`) and the
//! cluster-wide freeze (`replication::cluster`). Writes flow only when neither holds, so
//! `DELETE /maintenance` on one node does not end a freeze the cluster asked for.
//!
//! In cluster mode writes also need a lease: the cluster loop renews it each time it has
//! read the cluster state *and* refreshed its member entry, up to that moment plus the
//! member TTL. A sidecar that has not done so for that long (SIGSTOPped, starved, cut off
//! from the leader) may already be missing from the member list, so a cluster freeze may
//! have been proven without it: it refuses writes until it has read the state again.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use metrics::Gauge;
use tokio::sync::Notify;

use super::queue::lock;

pub struct Freeze {
    /// `local || cluster`, what sessions check.
    frozen: AtomicBool,
    /// `(local, cluster)`; `frozen` is recomputed under this lock.
    sources: Mutex<(bool, bool)>,
    in_flight: AtomicUsize,
    /// Writes are refused from this [`mono_ms`] on; `u64::MAX` = no lease (not in cluster mode).
    lease_until: AtomicU64,
    since: Mutex<Option<SystemTime>>,
    released: Notify,
    /// Callers inside [`Freeze::writes_settled`]: only then does the last ticket out wake
    /// anyone (`Notify::notify_waiters` takes a lock, and most writes are the last out).
    settling: AtomicUsize,
    gauge: Gauge,
}

/// Held while one write is in flight to the leader.
pub struct WriteTicket(Arc<Freeze>);

impl Drop for WriteTicket {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, SeqCst) == 1 && self.0.settling.load(SeqCst) > 0 {
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
            sources: Mutex::new((false, false)),
            in_flight: AtomicUsize::new(0),
            lease_until: AtomicU64::new(u64::MAX),
            since: Mutex::new(None),
            released: Notify::new(),
            settling: AtomicUsize::new(0),
            gauge,
        })
    }

    /// A ticket for one write, or `None` while writes are frozen.
    pub fn begin_write(self: &Arc<Self>) -> Option<WriteTicket> {
        self.in_flight.fetch_add(1, SeqCst);
        let ticket = WriteTicket(self.clone());
        if self.frozen.load(SeqCst) || self.lease_expired() {
            return None; // dropping the ticket gives the slot back
        }
        Some(ticket)
    }

    /// Writes are refused: frozen by either source, or the cluster lease ran out.
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(SeqCst) || self.lease_expired()
    }

    /// Writes may flow until `until` (cluster mode; see the module comment).
    pub fn set_lease(&self, until: Instant) {
        let ms = until.saturating_duration_since(base()).as_millis() as u64;
        self.lease_until.store(ms.min(u64::MAX - 1), SeqCst);
    }

    pub fn lease_expired(&self) -> bool {
        let until = self.lease_until.load(SeqCst);
        until != u64::MAX && mono_ms() >= until
    }

    pub fn since(&self) -> Option<SystemTime> {
        *lock(&self.since)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Freezes writes (this sidecar's own maintenance); returns once no write is in flight
    /// or `timeout` passed (then false).
    pub async fn freeze(&self, timeout: Duration) -> bool {
        self.set(Some(true), None);
        self.writes_settled(timeout).await
    }

    /// Whether this sidecar's own maintenance freeze holds (`PUT /maintenance`).
    pub fn is_frozen_locally(&self) -> bool {
        lock(&self.sources).0
    }

    /// Whether the cluster-wide freeze holds here.
    pub fn is_cluster_frozen(&self) -> bool {
        lock(&self.sources).1
    }

    /// Sets the cluster-wide source (waiting for writes in flight is the caller's business).
    pub fn set_cluster(&self, frozen: bool) {
        self.set(None, Some(frozen));
    }

    fn set(&self, local: Option<bool>, cluster: Option<bool>) {
        let mut s = lock(&self.sources);
        s.0 = local.unwrap_or(s.0);
        s.1 = cluster.unwrap_or(s.1);
        let now = s.0 || s.1;
        if self.frozen.swap(now, SeqCst) != now {
            if now {
                *lock(&self.since) = Some(SystemTime::now());
                self.gauge.set(1.0);
                tracing::info!(cluster = s.1, "writes frozen for maintenance");
            } else {
                *lock(&self.since) = None;
                self.gauge.set(0.0);
                tracing::info!("writes resumed after maintenance");
            }
        }
    }

    /// Waits (without freezing) until no write is in flight; false on timeout. At shutdown,
    /// after sessions stopped reading, this is "every write answered and queued".
    pub async fn writes_settled(&self, timeout: Duration) -> bool {
        // Counted before the first check (SeqCst on both sides): a ticket released after
        // that check sees the count and wakes the `notified` made before it.
        struct Settling<'a>(&'a AtomicUsize);
        impl Drop for Settling<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        self.settling.fetch_add(1, SeqCst);
        let _settling = Settling(&self.settling);
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

    /// Ends this sidecar's own maintenance freeze (a cluster-wide one stays).
    pub fn unfreeze(&self) {
        self.set(Some(false), None);
    }
}

/// The process's monotonic clock origin for the lease.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds since [`base`].
fn mono_ms() -> u64 {
    base().elapsed().as_millis() as u64
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
        let h = tokio::spawn(async move { f2.freeze(Duration::from_secs(120)).await });
        // The freeze is waiting; the last write out must wake it (not its timeout).
        for _ in 0..500 {
            if f.settling.load(SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.settling.load(SeqCst), 1);
        drop(t);
        let settled = tokio::time::timeout(Duration::from_secs(30), h).await;
        assert!(matches!(settled, Ok(Ok(true))), "woken by the last write");
        assert_eq!(f.settling.load(SeqCst), 0);
        f.unfreeze();
        assert!(f.begin_write().is_some());
    }

    #[test]
    fn writes_flow_only_when_neither_source_freezes() {
        let f = Freeze::new();
        f.set_cluster(true);
        assert!(f.begin_write().is_none());
        f.set(Some(true), None);
        f.set_cluster(false);
        assert!(f.begin_write().is_none(), "the local freeze still holds");
        f.unfreeze();
        assert!(f.begin_write().is_some());
    }

    #[test]
    fn an_expired_lease_refuses_writes() {
        let f = Freeze::new();
        f.set_lease(Instant::now() + Duration::from_secs(60));
        assert!(f.begin_write().is_some());
        f.set_lease(Instant::now());
        assert!(f.begin_write().is_none() && f.is_frozen());
    }
}
