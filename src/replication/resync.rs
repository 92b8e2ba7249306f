//! Full resync: bringing an out-of-sync follower back to the leader's state while clients
//! keep reading and writing through the proxy.
//!
//! # When
//! The follower is out of sync when queued writes were discarded (overflow, a leader restart
//! with copies queued), when statemirror starts (`resync.on_start`: the queue was in memory)
//! and when an operator asks (`POST /resync`). The controller below starts a resync as soon
//! as the follower is out of sync and reachable (`resync.auto`), retries a failed one, and
//! marks the follower in sync only if nothing was lost again while it ran (the
//! [`SyncState`](super::queue::SyncState) epoch). Live mirroring never stops meanwhile.
//!
//! # Why a write made during the resync is never overwritten by an older copy
//! A resync does not write to the follower itself. The protocol's walker (`redis::resync`,
//! `zookeeper::resync`) reads the leader and pushes *copy ops* into the mirror queue's bulk
//! lane, so the one follower writer applies live writes and resync copies one batch at a
//! time, and each protocol makes a copy unable to regress a key:
//! - **Redis**: a copy op names only the key. The writer reads the key's state from the leader
//!   when it applies the batch (`DUMP` inside the batch's `MULTI`) and writes it before taking
//!   the next batch. Any client write acknowledged before that read is in that state; any
//!   write acknowledged after it is queued after it and applied after the copy. The last op
//!   applied to a key is therefore either the newest live write or a copy at least as new.
//!   Keys that exist only on the follower are "copied" too: the writer finds them missing on
//!   the leader at apply time and deletes them, unless a client created them meanwhile.
//! - **ZooKeeper**: a copy op carries the zxid at which the leader was read (the reply
//!   header's zxid). The writer applies ops in zxid order and remembers per path the zxid it
//!   last applied; a copy older than a live write already applied to that path is skipped,
//!   and a live write older than a copy already applied is skipped. A batch of nodes carries
//!   the oldest zxid it was read at, which can only make it skip more, never regress.
//!
//! # In a cluster
//! With `[cluster]`, a run first takes the follower's resync lease in the leader
//! ([`Lease`]): at most one sidecar of the cluster resyncs a follower at a time. The others
//! wait (retrying every second; `/status` `resync.waiting_for_lease` names the holder). A
//! run whose lease is lost (not renewed in time, taken by another) is cancelled and retried.
//!
//! # At start
//! No run starts before the wiring decided whether the follower is out of sync at start
//! ([`Resync::start_decided`]): after a clean stop recorded by the previous run of this node
//! (`replication::generation::clean_start`), nothing queued in memory was lost and the
//! follower is not resynced.
//!
//! # Load
//! `resync.max_keys_per_second` paces the walker (a token bucket; 0 = unlimited),
//! `resync.batch_size` sets its `SCAN COUNT` / nodes per `multi`, and the bulk lane holds at
//! most two worker batches, so a resync never piles up memory or delays live writes by more
//! than one batch.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, Counter, Gauge};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cluster::Lease;
use super::queue::{lock, MirrorOp, MirrorQueue, MirrorView};
use crate::config::ResyncConfig;
use crate::metrics as m;

/// How often a resync waiting for the cluster's lease asks again.
const LEASE_RETRY: Duration = Duration::from_secs(1);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a resync run stopped early.
#[derive(Debug)]
pub enum ResyncError {
    /// The follower was marked out of sync again (or the resync was abandoned): start over.
    Restart,
    /// A backend failed; retried after `resync.retry_interval_ms`.
    Failed(String),
    /// The run would erase the follower (empty leader); needs `force`.
    Refused(String),
}

impl From<String> for ResyncError {
    fn from(s: String) -> Self {
        ResyncError::Failed(s)
    }
}

/// A protocol's resync walker.
pub trait Walker: Send + Sync + 'static {
    /// Walks the leader (and the follower, for what only it holds) and pushes copy ops into the
    /// queue's bulk lane through `ctx`. Returns once everything is pushed.
    fn walk<'a>(&'a self, ctx: &'a ResyncCtx) -> BoxFuture<'a, Result<(), ResyncError>>;
}

/// What a walker uses while it runs: pacing, counters, and whether to stop.
pub struct ResyncCtx {
    pub batch_size: usize,
    /// `force`: copy even when the leader is empty and the follower is not.
    pub force: bool,
    pub refuse_empty_leader: bool,
    rate: u64,
    started: Instant,
    paced: AtomicU64,
    epoch: u64,
    mirror: Arc<dyn MirrorView>,
    cancel: CancellationToken,
    progress: Arc<Progress>,
}

impl ResyncCtx {
    /// Waits until `n` more keys may be copied under the rate limit; fails with `Restart` when
    /// the follower was marked out of sync again or the process is stopping.
    pub async fn pace(&self, n: u64) -> Result<(), ResyncError> {
        self.check()?;
        let done = self.paced.fetch_add(n, Ordering::Relaxed) + n;
        if self.rate > 0 {
            let due = Duration::from_secs_f64(done as f64 / self.rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                tokio::select! {
                    _ = self.cancel.cancelled() => return Err(ResyncError::Restart),
                    _ = tokio::time::sleep(due - elapsed) => {}
                }
            }
        }
        Ok(())
    }

    /// Queues a copy in the mirror's bulk lane, waiting for room, but gives up (`Restart`)
    /// when the run is cancelled or the follower was marked out of sync again meanwhile: a
    /// follower that takes nothing must not hold a resync (or shutdown) forever.
    pub async fn bulk<Op: MirrorOp>(
        &self,
        queue: &MirrorQueue<Op>,
        op: Op,
    ) -> Result<(), ResyncError> {
        let push = queue.push_bulk(op);
        tokio::pin!(push);
        loop {
            tokio::select! {
                _ = &mut push => return Ok(()),
                _ = self.cancel.cancelled() => return Err(ResyncError::Restart),
                _ = tokio::time::sleep(Duration::from_millis(200)) => self.check()?,
            }
        }
    }

    /// `Restart` when the follower was marked out of sync since the run began.
    pub fn check(&self) -> Result<(), ResyncError> {
        if self.cancel.is_cancelled() || self.mirror.sync().epoch() != self.epoch {
            return Err(ResyncError::Restart);
        }
        Ok(())
    }

    pub fn scanned(&self, n: u64) {
        self.progress.scanned.fetch_add(n, Ordering::Relaxed);
    }

    pub fn copied(&self, n: u64) {
        self.progress.copied.fetch_add(n, Ordering::Relaxed);
        self.progress.copied_c.increment(n);
    }

    pub fn deleted(&self, n: u64) {
        self.progress.deleted.fetch_add(n, Ordering::Relaxed);
        self.progress.deleted_c.increment(n);
    }

    /// Stops the run: the process is shutting down.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// Counters of the current (or last) run.
struct Progress {
    scanned: AtomicU64,
    copied: AtomicU64,
    deleted: AtomicU64,
    copied_c: Counter,
    deleted_c: Counter,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LastRun {
    pub outcome: String,
    pub finished_unix: f64,
    pub duration_seconds: f64,
    pub scanned: u64,
    pub copied: u64,
    pub deleted: u64,
    /// Writes the follower refused during the run (skipped; see `mirror.last_refused`).
    pub refused: u64,
    pub error: Option<String>,
}

/// The resync controller of one sidecar: its state for `/status`, and how to ask for a run.
pub struct Resync {
    protocol: &'static str,
    cfg: ResyncConfig,
    mirror: Arc<dyn MirrorView>,
    requested: AtomicBool,
    force: AtomicBool,
    wake: Notify,
    running: AtomicBool,
    started: Mutex<Option<(Instant, f64)>>,
    progress: Arc<Progress>,
    last: Mutex<Option<LastRun>>,
    runs_total: AtomicU64,
    /// Runs by outcome (completed, failed, restarted), as in `runs_c`, for `/status`.
    runs_by: [AtomicU64; 3],
    running_g: Gauge,
    duration_g: Gauge,
    runs_c: [Counter; 3],
    /// The sync epoch right after the marking at start (`resync.on_start`).
    start_epoch: u64,
    /// Set by the wiring once it knows whether the previous run stopped cleanly; no run
    /// starts before.
    decided: AtomicBool,
    /// What was decided: `Some(true)` when a clean stop spared the resync at start.
    clean_start: Mutex<Option<bool>>,
    /// The cluster's resync lease for this follower (`[cluster]`), set before the decision.
    lease: OnceLock<Arc<Lease>>,
    /// The node holding the lease while this one waits for it.
    waiting_for: Mutex<Option<String>>,
}

impl Resync {
    pub fn new(
        protocol: &'static str,
        cfg: ResyncConfig,
        mirror: Arc<dyn MirrorView>,
    ) -> Arc<Self> {
        let p = protocol;
        if cfg.on_start {
            // Marked at once (nothing counts the follower in sync, nor advances the generation
            // markers, before the decision); cleared by `start_decided` after a clean stop.
            mirror.sync().mark_out_of_sync_expected(
                "statemirror started: writes queued by a previous run (in memory) may be lost \
                 (unless that run recorded a clean stop)",
            );
        }
        let start_epoch = mirror.sync().epoch();
        let r = Arc::new(Self {
            protocol,
            mirror,
            requested: AtomicBool::new(false),
            force: AtomicBool::new(false),
            wake: Notify::new(),
            running: AtomicBool::new(false),
            started: Mutex::new(None),
            progress: Arc::new(Progress {
                scanned: AtomicU64::new(0),
                copied: AtomicU64::new(0),
                deleted: AtomicU64::new(0),
                copied_c: counter!(m::RESYNC_COPIED_TOTAL, "protocol" => p),
                deleted_c: counter!(m::RESYNC_DELETED_TOTAL, "protocol" => p),
            }),
            last: Mutex::new(None),
            runs_total: AtomicU64::new(0),
            runs_by: Default::default(),
            running_g: gauge!(m::RESYNC_RUNNING, "protocol" => p),
            duration_g: gauge!(m::RESYNC_DURATION, "protocol" => p),
            runs_c: [
                counter!(m::RESYNCS_TOTAL, "protocol" => p, "outcome" => "completed"),
                counter!(m::RESYNCS_TOTAL, "protocol" => p, "outcome" => "failed"),
                counter!(m::RESYNCS_TOTAL, "protocol" => p, "outcome" => "restarted"),
            ],
            start_epoch,
            decided: AtomicBool::new(false),
            clean_start: Mutex::new(None),
            lease: OnceLock::new(),
            waiting_for: Mutex::new(None),
            cfg,
        });
        r.running_g.set(0.0);
        r
    }

    /// Resyncs take the cluster's lease for this follower first (`[cluster]`). Set before
    /// [`start_decided`](Self::start_decided).
    pub fn set_lease(&self, lease: Arc<Lease>) {
        let _ = self.lease.set(lease);
    }

    /// Lets the controller run. `clean`: the previous run of this node stopped cleanly and
    /// the generation markers show nothing lost since, so the follower marked out of sync at
    /// start is in sync after all (unless it was marked again meanwhile).
    pub fn start_decided(&self, clean: bool) {
        let protocol = self.protocol;
        let spared = clean && self.cfg.on_start && {
            let sync = self.mirror.sync();
            sync.mark_in_sync_if(self.start_epoch)
        };
        if spared {
            tracing::info!(protocol, "clean stop recorded; no resync at start");
        } else if clean && self.cfg.on_start {
            tracing::info!(
                protocol,
                "clean stop recorded, but the follower was marked out of sync since start"
            );
        }
        *lock(&self.clean_start) = Some(spared);
        self.decided.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Records a run refused before it started (the leader lost data), so `/status` and
    /// `statemirror resync --wait` say why nothing happened.
    fn refused_now(&self, why: String) {
        tracing::warn!(protocol = self.protocol, error = %why, "full resync refused");
        *lock(&self.last) = Some(LastRun {
            outcome: "refused".into(),
            finished_unix: unix_now(),
            duration_seconds: 0.0,
            scanned: 0,
            copied: 0,
            deleted: 0,
            refused: 0,
            error: Some(why),
        });
        self.runs_total.fetch_add(1, Ordering::Relaxed);
        self.runs_by[1].fetch_add(1, Ordering::Relaxed);
        self.runs_c[1].increment(1);
    }

    /// Asks for a resync now (operator). `force` overrides the empty-leader refusal.
    pub fn request(&self, force: bool) {
        self.force.fetch_or(force, Ordering::AcqRel);
        self.requested.store(true, Ordering::Release);
        self.mirror
            .sync()
            .mark_out_of_sync_expected("an operator requested a full resync");
        self.wake.notify_one();
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn status(&self) -> serde_json::Value {
        let started = *lock(&self.started);
        serde_json::json!({
            "running": self.is_running(),
            "auto": self.cfg.auto,
            "max_keys_per_second": self.cfg.max_keys_per_second,
            "current": started.map(|(t, unix)| serde_json::json!({
                "started_unix": unix,
                "elapsed_seconds": t.elapsed().as_secs_f64(),
                "scanned": self.progress.scanned.load(Ordering::Relaxed),
                "copied": self.progress.copied.load(Ordering::Relaxed),
                "deleted": self.progress.deleted.load(Ordering::Relaxed),
                "pending": self.mirror.bulk_pending(),
            })),
            "last": lock(&self.last).as_ref().map(|l| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                // A refusal is statemirror's own advice (counts, no data); a failure may quote
                // a backend's error text: its category only (see `public`; the log has it).
                if let (Some(e), false) = (l.error.as_deref(), l.outcome == "refused") {
                    v["error"] = super::public::error(e).into();
                }
                v
            }),
            "waiting_for_lease": *lock(&self.waiting_for),
            "start": {
                "decided": self.decided.load(Ordering::Acquire),
                "clean_stop": *lock(&self.clean_start),
            },
            "resyncs_total": self.runs_total.load(Ordering::Relaxed),
            // A failed run is retried: counting outcomes tells a retry from a new resync.
            "resyncs_by_outcome": {
                "completed": self.runs_by[0].load(Ordering::Relaxed),
                "failed": self.runs_by[1].load(Ordering::Relaxed),
                "restarted": self.runs_by[2].load(Ordering::Relaxed),
            },
        })
    }
}

/// Runs the controller until `shutdown`: resyncs whenever the follower is out of sync and
/// `follower_up()` says it is reachable (and `resync.auto` or a request allows it).
pub fn spawn(
    resync: Arc<Resync>,
    walker: Arc<dyn Walker>,
    follower_up: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let r = resync;
        let protocol = r.protocol;
        let mut retry_at: Option<Instant> = None;
        // The epoch at which a resync finished with only refusals left: another automatic
        // run would be refused alike, so none starts until something else is lost.
        let mut settled: Option<u64> = None;
        // When to ask for the cluster's resync lease again after finding it held.
        let mut lease_retry_at: Option<Instant> = None;
        let mut lease_failing = false;
        loop {
            // Poll: the out-of-sync flag and follower health change without notifying us.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = r.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            // Not before the wiring knows whether the previous run stopped cleanly.
            if !r.decided.load(Ordering::Acquire) {
                continue;
            }
            let requested = r.requested.load(Ordering::Acquire);
            let sync = r.mirror.sync();
            if (sync.in_sync() || settled == Some(sync.epoch())) && !requested {
                lock(&r.waiting_for).take();
                continue;
            }
            if !(r.cfg.auto || requested) || !follower_up() {
                continue;
            }
            if retry_at.is_some_and(|t| Instant::now() < t) && !requested {
                continue;
            }
            r.requested.store(false, Ordering::Release);
            let force = r.force.swap(false, Ordering::AcqRel);
            // A resync now would copy a leader that lost data over the follower, the only
            // full copy left: only an explicit force may do that.
            if let (Some(loss), false) = (sync.leader_data_loss(), force) {
                if requested {
                    r.refused_now(format!(
                        "the leader lost data ({loss}); run `statemirror recover --from-follower`, \
                         or force a resync to make the follower equal the leader as it is now"
                    ));
                }
                continue;
            }
            // At most one resync of this follower at a time across the cluster.
            let lease = r.lease.get().cloned();
            if let Some(l) = &lease {
                let put_back = || {
                    // Still wanted: the request (and its force) waits with the run.
                    r.requested.fetch_or(requested, Ordering::AcqRel);
                    r.force.fetch_or(force, Ordering::AcqRel);
                };
                if lease_retry_at.is_some_and(|t| Instant::now() < t) {
                    put_back();
                    continue;
                }
                match l.acquire().await {
                    Ok(None) => {
                        lease_retry_at = None;
                        lease_failing = false;
                        *lock(&r.waiting_for) = None;
                    }
                    Ok(Some(holder)) => {
                        let mut w = lock(&r.waiting_for);
                        if w.as_deref() != Some(holder.as_str()) {
                            tracing::info!(
                                protocol,
                                holder = %holder,
                                "another sidecar holds the resync lease of this follower; \
                                 the resync waits for it"
                            );
                        }
                        *w = Some(holder);
                        lease_retry_at = Some(Instant::now() + LEASE_RETRY);
                        put_back();
                        continue;
                    }
                    Err(e) => {
                        if !lease_failing {
                            tracing::warn!(protocol, error = %e,
                                "cannot take the resync lease in the leader; the resync waits");
                        }
                        lease_failing = true;
                        lease_retry_at = Some(Instant::now() + LEASE_RETRY);
                        put_back();
                        continue;
                    }
                }
            }
            let epoch = sync.epoch();
            let refusals = sync.refusals();
            // The run stops when the process stops or the lease is lost.
            let run = shutdown.child_token();
            let holding = lease.clone().map(|l| {
                let (cancel_run, stop) = (run.clone(), run.child_token());
                tokio::spawn(async move {
                    let lost = l.hold(&stop).await;
                    if lost.is_some() {
                        cancel_run.cancel();
                    }
                    lost
                })
            });
            let outcome = run_once(&r, walker.as_ref(), epoch, force, &run).await;
            let mut lost = None;
            if let Some(task) = holding {
                run.cancel(); // ends the renewals (after the one in flight, if any)
                lost = task.await.ok().flatten();
            }
            if let Some(l) = &lease {
                l.release().await;
            }
            if shutdown.is_cancelled() {
                return;
            }
            retry_at = None;
            settled = None;
            if let Some(why) = lost {
                tracing::warn!(protocol, why = %why,
                    "the resync lease was lost: the resync was cancelled and is retried");
                r.requested.fetch_or(requested, Ordering::AcqRel);
                r.force.fetch_or(force, Ordering::AcqRel);
                lease_retry_at = Some(Instant::now() + LEASE_RETRY);
                continue;
            }
            match outcome {
                Ok(()) if sync.refusals() != refusals && sync.epoch() == epoch => {
                    settled = Some(epoch);
                    tracing::warn!(
                        protocol,
                        refused = sync.refusals() - refusals,
                        last = sync.reason().unwrap_or_default(),
                        "full resync finished, except for writes the follower refuses; it stays \
                         out of sync (see /status mirror.last_refused) and is not resynced again \
                         until more is lost or an operator asks"
                    );
                }
                Ok(()) if sync.mark_in_sync_if(epoch) => {
                    tracing::info!(protocol, "full resync finished; the follower is in sync");
                }
                Ok(()) | Err(ResyncError::Restart) => {
                    tracing::info!(
                        protocol,
                        "the follower was marked out of sync again during the resync; starting over"
                    );
                }
                Err(ResyncError::Failed(e)) | Err(ResyncError::Refused(e)) => {
                    tracing::warn!(protocol, error = %e, retry_in_ms = r.cfg.retry_interval_ms, "full resync failed");
                    retry_at =
                        Some(Instant::now() + Duration::from_millis(r.cfg.retry_interval_ms));
                }
            }
        }
    });
}

async fn run_once(
    r: &Arc<Resync>,
    walker: &dyn Walker,
    epoch: u64,
    force: bool,
    // Cancelled when the process stops or the lease is lost.
    shutdown: &CancellationToken,
) -> Result<(), ResyncError> {
    let protocol = r.protocol;
    let refusals_at_start = r.mirror.sync().refusals();
    for c in [&r.progress.scanned, &r.progress.copied, &r.progress.deleted] {
        c.store(0, Ordering::Relaxed);
    }
    let t0 = Instant::now();
    *lock(&r.started) = Some((t0, unix_now()));
    r.running.store(true, Ordering::Release);
    r.running_g.set(1.0);
    tracing::info!(
        protocol,
        reason = r.mirror.sync().reason().unwrap_or_default(),
        "full resync started"
    );
    let ctx = ResyncCtx {
        batch_size: r.cfg.batch_size,
        force,
        refuse_empty_leader: r.cfg.refuse_empty_leader,
        rate: r.cfg.max_keys_per_second,
        started: t0,
        paced: AtomicU64::new(0),
        epoch,
        mirror: r.mirror.clone(),
        cancel: shutdown.child_token(),
        progress: r.progress.clone(),
    };
    let mut result = walker.walk(&ctx).await;
    if result.is_ok() {
        // Done when the writer has applied every copy (it retries through follower outages).
        result = loop {
            let changed = r.mirror.changed().notified();
            if r.mirror.bulk_pending() == 0 {
                break ctx.check();
            }
            if let Err(e) = ctx.check() {
                break Err(e);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Err(ResyncError::Restart),
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
    }
    if result.is_err() {
        r.mirror.clear_bulk();
    }
    let duration = t0.elapsed().as_secs_f64();
    let (outcome, error, idx) = match &result {
        Ok(()) => ("completed", None, 0),
        Err(ResyncError::Failed(e)) => ("failed", Some(e.clone()), 1),
        Err(ResyncError::Refused(e)) => ("refused", Some(e.clone()), 1),
        Err(ResyncError::Restart) => ("restarted", None, 2),
    };
    let p = &r.progress;
    let refused = r.mirror.sync().refusals().saturating_sub(refusals_at_start);
    let last = LastRun {
        refused,
        outcome: outcome.into(),
        finished_unix: unix_now(),
        duration_seconds: duration,
        scanned: p.scanned.load(Ordering::Relaxed),
        copied: p.copied.load(Ordering::Relaxed),
        deleted: p.deleted.load(Ordering::Relaxed),
        error,
    };
    tracing::info!(
        protocol,
        outcome,
        duration_seconds = duration,
        scanned = last.scanned,
        copied = last.copied,
        deleted = last.deleted,
        "full resync ended"
    );
    *lock(&r.last) = Some(last);
    *lock(&r.started) = None;
    r.runs_total.fetch_add(1, Ordering::Relaxed);
    r.runs_by[idx].fetch_add(1, Ordering::Relaxed);
    r.runs_c[idx].increment(1);
    r.duration_g.set(duration);
    r.running.store(false, Ordering::Release);
    r.running_g.set(0.0);
    result
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::cluster::{ClusterStore, FreezeState, Member, MemberReport};
    use crate::replication::queue::QueueLimits;

    struct NoOp;
    impl MirrorOp for NoOp {
        type Key = u32;
        fn cost_bytes(&self) -> usize {
            1
        }
        fn coalesce_key(&self) -> Option<u32> {
            None
        }
    }

    fn queue() -> Arc<MirrorQueue<NoOp>> {
        MirrorQueue::new(
            "test",
            QueueLimits {
                max_ops: 10,
                max_bytes: 1000,
                bulk_capacity: 4,
                bulk_per_batch: 4,
            },
        )
    }

    /// Copies nothing, taking `ms` per run; counts runs begun and finished.
    struct Slow {
        ms: u64,
        begun: AtomicU64,
        done: AtomicU64,
    }

    impl Walker for Slow {
        fn walk<'a>(&'a self, ctx: &'a ResyncCtx) -> BoxFuture<'a, Result<(), ResyncError>> {
            Box::pin(async move {
                self.begun.fetch_add(1, Ordering::SeqCst);
                let end = Instant::now() + Duration::from_millis(self.ms);
                while Instant::now() < end {
                    ctx.check()?;
                    tokio::select! {
                        _ = ctx.cancelled().cancelled() => return Err(ResyncError::Restart),
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
                self.done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    fn slow(ms: u64) -> Arc<Slow> {
        Arc::new(Slow {
            ms,
            begun: AtomicU64::new(0),
            done: AtomicU64::new(0),
        })
    }

    /// Only a lease, whose holder the test sets too.
    #[derive(Default)]
    struct OneLease(Mutex<Option<String>>);

    impl ClusterStore for OneLease {
        fn backend(&self) -> &'static str {
            "mem"
        }
        fn read(&self) -> BoxFuture<'_, Result<FreezeState, String>> {
            Box::pin(async { Ok(FreezeState::default()) })
        }
        fn set<'a>(&'a self, _: bool, _: &'a str) -> BoxFuture<'a, Result<u64, String>> {
            Box::pin(async { Ok(0) })
        }
        fn heartbeat<'a>(&'a self, _: &'a MemberReport) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
        fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, String>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn leave<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
        fn lease_acquire<'a>(
            &'a self,
            _: &'a str,
            holder: &'a str,
        ) -> BoxFuture<'a, Result<Option<String>, String>> {
            Box::pin(async move {
                let mut l = lock(&self.0);
                match &*l {
                    Some(h) if h != holder => Ok(Some(h.clone())),
                    _ => {
                        *l = Some(holder.into());
                        Ok(None)
                    }
                }
            })
        }
        fn lease_renew<'a>(
            &'a self,
            _: &'a str,
            holder: &'a str,
        ) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move { Ok(lock(&self.0).as_deref() == Some(holder)) })
        }
        fn lease_release<'a>(
            &'a self,
            _: &'a str,
            holder: &'a str,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                let mut l = lock(&self.0);
                if l.as_deref() == Some(holder) {
                    *l = None;
                }
                Ok(())
            })
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "not within 10 s: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn no_run_before_the_start_decision_and_none_after_a_clean_stop() {
        let shutdown = CancellationToken::new();
        for clean in [true, false] {
            let q = queue();
            let rs = Resync::new("test", ResyncConfig::default(), q.clone());
            assert!(!q.sync().in_sync(), "marked at start until decided");
            let w = slow(0);
            spawn(rs.clone(), w.clone(), Arc::new(|| true), shutdown.clone());
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(w.begun.load(Ordering::SeqCst), 0, "ran before the decision");
            rs.start_decided(clean);
            if clean {
                assert!(q.sync().in_sync());
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert_eq!(
                    w.begun.load(Ordering::SeqCst),
                    0,
                    "resynced after a clean stop"
                );
                assert_eq!(rs.status()["start"]["clean_stop"], true);
            } else {
                until("the resync at start", || w.done.load(Ordering::SeqCst) == 1).await;
                until("in sync", || q.sync().in_sync()).await;
            }
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_run_waits_for_the_lease_and_is_cancelled_when_it_is_lost() {
        let shutdown = CancellationToken::new();
        let store = Arc::new(OneLease::default());
        *lock(&store.0) = Some("other".into());
        let q = queue();
        let rs = Resync::new("test", ResyncConfig::default(), q.clone());
        rs.set_lease(Lease::new(
            store.clone(),
            "test",
            "me",
            Duration::from_millis(150),
        ));
        let w = slow(1500);
        spawn(rs.clone(), w.clone(), Arc::new(|| true), shutdown.clone());
        rs.start_decided(false);
        until("waiting for the lease", || {
            rs.status()["waiting_for_lease"] == "other"
        })
        .await;
        assert_eq!(w.begun.load(Ordering::SeqCst), 0);
        *lock(&store.0) = None;
        until("running", || rs.is_running()).await;
        assert_eq!(lock(&store.0).as_deref(), Some("me"));
        assert!(rs.status()["waiting_for_lease"].is_null());
        // Someone else holds it now: the run stops, and the next one waits for it again.
        *lock(&store.0) = Some("other".into());
        until("cancelled", || !rs.is_running()).await;
        assert_eq!(w.done.load(Ordering::SeqCst), 0);
        assert_eq!(rs.status()["last"]["outcome"], "restarted");
        until("waiting again", || {
            rs.status()["waiting_for_lease"] == "other"
        })
        .await;
        *lock(&store.0) = None;
        until("in sync", || q.sync().in_sync()).await;
        assert_eq!(w.done.load(Ordering::SeqCst), 1);
        assert_eq!(lock(&store.0).as_deref(), None, "released");
        shutdown.cancel();
    }
}
