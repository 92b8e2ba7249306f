//! Backend health as seen by the periodic checker and by sessions that fail to connect.
//! Protocol-specific probes live with their protocol ([`Probe`]); this holds the shared
//! up/down state and the loop that runs a probe.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use metrics::Gauge;
use tokio::sync::watch;

pub struct Health {
    pub role: &'static str,
    pub address: String,
    up: watch::Sender<bool>,
    failures: AtomicU32,
    /// Times it went down: what was opened before a bump may point at a server that
    /// restarted or vanished since.
    downs: AtomicU64,
    failures_before_down: u32,
    gauge: Gauge,
    /// Why the last check or connect failed; cleared by a success (`/status` shows it).
    last_error: Mutex<Option<String>>,
}

impl Health {
    /// Starts optimistic (up) so the first client does not wait for a check.
    pub fn new(
        role: &'static str,
        address: String,
        failures_before_down: u32,
        gauge: Gauge,
    ) -> Self {
        gauge.set(1.0);
        Self {
            role,
            address,
            up: watch::channel(true).0,
            failures: AtomicU32::new(0),
            downs: AtomicU64::new(0),
            failures_before_down,
            gauge,
            last_error: Mutex::new(None),
        }
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// How many times it has gone down so far.
    pub fn downs(&self) -> u64 {
        self.downs.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// The last failure's reason while it is not followed by a success.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note_error(&self, why: Option<&str>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = why.map(str::to_string);
    }

    pub fn record_success(&self) {
        self.note_error(None);
        self.failures.store(0, Ordering::Relaxed);
        self.set(true, None);
    }

    /// A failed health check: down after `failures_before_down` in a row.
    pub fn record_failure(&self, why: &str) {
        self.note_error(Some(why));
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.failures_before_down {
            self.set(false, Some(why));
        }
    }

    /// A refused connection is proof enough: down at once.
    pub fn mark_down(&self, why: &str) {
        self.note_error(Some(why));
        self.failures
            .store(self.failures_before_down, Ordering::Relaxed);
        self.set(false, Some(why));
    }

    fn set(&self, up: bool, why: Option<&str>) {
        let changed = self.up.send_if_modified(|v| {
            let changed = *v != up;
            *v = up;
            changed
        });
        if changed {
            if !up {
                self.downs.fetch_add(1, Ordering::AcqRel);
            }
            self.gauge.set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!(role = self.role, address = %self.address, "backend is up");
            } else {
                tracing::warn!(role = self.role, address = %self.address, error = why.unwrap_or(""), "backend is down");
            }
        }
    }
}

/// One health check of one backend, as its protocol does it (a `PING`, `srvr` to each
/// server of an ensemble). `Err` says why it failed, for the log.
pub trait Probe: Send {
    fn check(&mut self) -> impl Future<Output = Result<(), String>> + Send + '_;
}

/// Checks with `probe` every `interval` until `shutdown`, recording each result in `health`.
pub async fn check_every(
    health: &Health,
    interval: Duration,
    shutdown: CancellationToken,
    mut probe: impl Probe,
) {
    loop {
        match probe.check().await {
            Ok(()) => health.record_success(),
            Err(e) => health.record_failure(&e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
