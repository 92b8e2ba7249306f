//! The follower writer: takes batches from a [`MirrorQueue`] and hands them to a
//! protocol-specific [`Applier`], retrying with exponential backoff until they land.
//!
//! Failures never reach clients: they are counted by reason, logged at most once per
//! `warn_interval_ms` (with how many were suppressed), and the batch is retried. Ops must
//! therefore be idempotent: a batch that failed half-way is applied again from its start.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::queue::{MirrorOp, MirrorQueue, MirrorView};
use crate::config::ReplicationConfig;

/// Why a batch did not land; `reason` is a metric label, so keep it to a small fixed set.
#[derive(Debug)]
pub struct ApplyError {
    pub reason: &'static str,
    pub detail: String,
}

impl ApplyError {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Applies a batch to the follower (protocol-specific).
pub trait Applier: Send + 'static {
    type Op: MirrorOp;
    /// Applies every op of `batch` in order. `Ok(n)` = all done, `n` of them could never be
    /// applied and were given up (the applier marks the follower out of sync for those).
    fn apply<'a>(
        &'a mut self,
        batch: &'a [Self::Op],
    ) -> impl Future<Output = Result<usize, ApplyError>> + Send + 'a;

    /// Called about once a second while the queue is empty: deferred work, keeping the
    /// follower session alive. Errors are counted like a batch's, never retried here.
    fn idle(&mut self) -> impl Future<Output = Result<(), ApplyError>> + Send + '_ {
        async { Ok(()) }
    }
}

/// How long the writer waits for a batch before it lets the applier do idle work.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Runs until `shutdown`. Returns the task handle.
pub fn spawn<A: Applier>(
    queue: Arc<MirrorQueue<A::Op>>,
    mut applier: A,
    cfg: ReplicationConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // Gauges (depth, bytes, lag) are refreshed on a tick so pushes stay cheap.
    let ticker_queue = queue.clone();
    let ticker_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = ticker_stop.cancelled() => break,
                _ = tick.tick() => ticker_queue.publish_gauges(),
            }
        }
    });
    tokio::spawn(async move {
        let protocol = queue.stats().protocol;
        let mut warn = RateLimitedWarn::new(Duration::from_millis(cfg.warn_interval_ms));
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                b = tokio::time::timeout(IDLE_TICK, queue.take_batch(cfg.batch_max_ops, cfg.batch_max_bytes)) => b,
            };
            let Ok(batch) = batch else {
                let idle = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout(cfg.apply_timeout(), applier.idle()) => r,
                };
                if let Ok(Err(e)) = idle {
                    queue.stats().failure(e.reason, &e.detail);
                }
                continue;
            };
            let mut backoff = Duration::from_millis(cfg.retry_initial_backoff_ms);
            let mut failing_since: Option<Instant> = None;
            loop {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout(cfg.apply_timeout(), applier.apply(&batch)) => r,
                };
                let err = match result {
                    Ok(Ok(given_up)) => {
                        if let Some(since) = failing_since {
                            tracing::info!(
                                protocol,
                                outage_ms = since.elapsed().as_millis() as u64,
                                "mirroring to the follower resumed"
                            );
                        }
                        queue.complete(batch.len() - given_up.min(batch.len()));
                        break;
                    }
                    Ok(Err(e)) => e,
                    Err(_) => ApplyError::new(
                        "timeout",
                        format!(
                            "batch of {} not applied within {:?}",
                            batch.len(),
                            cfg.apply_timeout()
                        ),
                    ),
                };
                failing_since.get_or_insert_with(Instant::now);
                queue.stats().failure(err.reason, &err.detail);
                if let Some(suppressed) = warn.ready() {
                    let st = queue.status();
                    tracing::warn!(
                        protocol,
                        reason = err.reason,
                        error = %err.detail,
                        queue_depth = st.queue_depth,
                        lag_seconds = st.lag_seconds,
                        suppressed,
                        retry_in_ms = backoff.as_millis() as u64,
                        "mirroring to the follower failed; writes stay queued and will be retried"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(cfg.retry_max_backoff_ms));
            }
        }
    })
}

/// Lets one warning through per period and counts the rest.
pub struct RateLimitedWarn {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one)` when a warning may be logged now.
    pub fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
