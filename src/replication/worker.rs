//! The follower writer: takes batches from a [`MirrorQueue`] and hands them to a
//! protocol-specific [`Applier`], retrying with exponential backoff until they land.
//!
//! Failures never reach clients: they are counted by reason, logged at most once per
//! `warn_interval_ms` (with how many were suppressed), and the batch is retried. Ops must
//! therefore be idempotent: a batch that failed half-way is applied again from its start.
//!
//! Timeouts judge progress, not a batch's total time: an applier that reports progress
//! ([`Applier::progress`]) is cut off only when nothing moved for `apply_timeout`, so a large
//! batch to a follower in another region (many round trips' worth of bytes) is not retried
//! forever; one that does not gets `apply_timeout` for the whole batch.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
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

    /// A counter the applier bumps whenever the follower shows life (bytes sent or
    /// received). With one, a batch times out only after `apply_timeout` without any
    /// change; without one (`None`), the whole batch must finish within `apply_timeout`.
    fn progress(&self) -> Option<Arc<AtomicU64>> {
        None
    }
}

/// Runs `fut` until it ends, or until it has made no progress for `limit` (`Err`).
async fn bounded<F: Future>(
    fut: F,
    limit: Duration,
    progress: Option<&AtomicU64>,
) -> Result<F::Output, ()> {
    let Some(progress) = progress else {
        return tokio::time::timeout(limit, fut).await.map_err(|_| ());
    };
    tokio::pin!(fut);
    let tick = (limit / 4).max(Duration::from_millis(10));
    let mut seen = progress.load(Ordering::Relaxed);
    let mut moved = Instant::now();
    loop {
        tokio::select! {
            r = &mut fut => return Ok(r),
            _ = tokio::time::sleep(tick) => {
                let now = progress.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    moved = Instant::now();
                } else if moved.elapsed() >= limit {
                    return Err(());
                }
            }
        }
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
    let progress = applier.progress();
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
                    r = bounded(applier.apply(&batch), cfg.apply_timeout(), progress.as_deref()) => r,
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
                        if progress.is_some() {
                            format!(
                                "batch of {}: the follower showed no progress for {:?}",
                                batch.len(),
                                cfg.apply_timeout()
                            )
                        } else {
                            format!(
                                "batch of {} not applied within {:?}",
                                batch.len(),
                                cfg.apply_timeout()
                            )
                        },
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
