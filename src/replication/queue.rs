//! The bounded mirror queue between client sessions (producers) and one follower writer.
//!
//! Sessions push an op for every write the leader acknowledged, in the order they saw the
//! acknowledgements; the writer takes batches from the front. The queue is bounded in ops and
//! bytes: on overflow it discards what is waiting, counts it, and marks the follower out of
//! sync (only a full resync can repair that), so producers never wait on the follower.
//!
//! A second, *bulk* lane carries a resync's copies (`replication::resync`). It is not
//! counted against the limits, the depth or the lag (a resync must not overflow live
//! writes or look like lag); instead its producer waits for room. The writer takes live ops
//! first and adds at most `bulk_per_batch` bulk ops, so a live write waits behind at most
//! that much resync work.
//!
//! Ops may name a *coalesce key*: an op whose key is already waiting (not yet taken by the
//! writer) adds nothing, because the waiting op will read the newer state anyway (see
//! `redis::mirror` for why that holds for Redis key copies).

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, Counter, Gauge};
use serde::Serialize;
use smallvec::SmallVec;
use tokio::sync::Notify;

use crate::metrics as m;

/// One unit of mirroring work.
pub trait MirrorOp: Send + 'static {
    type Key: Hash + Eq + Clone + Send + 'static;
    /// Heap bytes this op owns while queued, each allocation counted as [`heap_alloc`] does.
    /// The queue adds the op's own slot and its coalesce-key entry (see [`MirrorQueue::cost`]),
    /// so `max_queue_bytes` bounds real memory, not payload bytes.
    fn cost_bytes(&self) -> usize;
    /// Ops with equal keys are interchangeable while waiting: a later one is dropped.
    fn coalesce_key(&self) -> Option<Self::Key>;
    /// Keys this op fixes at a point in time: a later op on them must not coalesce into an
    /// earlier waiting one (it would be applied before this op instead of after).
    fn barrier(&self) -> Barrier<Self::Key> {
        Barrier::None
    }
}

/// What one heap allocation of `len` bytes really takes from the allocator: glibc malloc
/// adds an 8-byte header, rounds to 16, and hands out at least 32 bytes. Zero for no
/// allocation.
pub fn heap_alloc(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        ((len + 8 + 15) & !15).max(32)
    }
}

pub enum Barrier<K> {
    None,
    /// Inline for up to two keys: computed for every push while copies wait.
    Keys(SmallVec<[K; 2]>),
    /// Every key (e.g. a replayed `FLUSHDB`).
    All,
}

/// In-sync flag with the reason it was lost. Shared by the queue, the writer and `/status`.
pub struct SyncState {
    in_sync: AtomicBool,
    /// Bumped by every `mark_out_of_sync`: a resync that started before a bump is not enough.
    epoch: AtomicU64,
    /// Writes the follower refused for good. They flag the follower out of sync but do not
    /// bump `epoch`: a resync cannot fix them (it would be refused alike), so they must
    /// not restart one, nor start one in a loop.
    refusals: AtomicU64,
    reason: Mutex<Option<String>>,
    gauge: Gauge,
    /// What the generation check found when the *leader* lost data (see
    /// `replication::generation`): while set, no resync runs in either direction unless
    /// forced.
    leader_loss: Mutex<Option<String>>,
    leader_loss_gauge: Gauge,
}

impl SyncState {
    fn new(protocol: &'static str) -> Self {
        let gauge = gauge!(m::FOLLOWER_IN_SYNC, "protocol" => protocol);
        gauge.set(1.0);
        let leader_loss_gauge = gauge!(m::LEADER_DATA_LOSS, "protocol" => protocol);
        leader_loss_gauge.set(0.0);
        Self {
            in_sync: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            reason: Mutex::new(None),
            gauge,
            leader_loss: Mutex::new(None),
            leader_loss_gauge,
        }
    }

    /// The leader lost data the follower still holds (`what`: what was detected and what to
    /// do). Logged once per detection, at error.
    pub fn set_leader_data_loss(&self, what: String) {
        let mut l = lock(&self.leader_loss);
        if l.is_none() {
            tracing::error!(detected = %what, "LEADER DATA LOSS: automatic resync is off until it is resolved");
        }
        *l = Some(what);
        self.leader_loss_gauge.set(1.0);
    }

    pub fn clear_leader_data_loss(&self) {
        if lock(&self.leader_loss).take().is_some() {
            tracing::info!("leader data loss resolved; automatic resync is back on");
        }
        self.leader_loss_gauge.set(0.0);
    }

    pub fn leader_data_loss(&self) -> Option<String> {
        lock(&self.leader_loss).clone()
    }

    /// Changes whenever the follower is (again) marked out of sync.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn in_sync(&self) -> bool {
        self.in_sync.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<String> {
        lock(&self.reason).clone()
    }

    /// Marks the follower out of sync; the first reason since the last resync is kept.
    pub fn mark_out_of_sync(&self, reason: impl Into<String>) {
        self.mark(reason.into(), true)
    }

    /// The same, logged at info: expected events (statemirror starting, an operator's request).
    pub fn mark_out_of_sync_expected(&self, reason: impl Into<String>) {
        self.mark(reason.into(), false)
    }

    /// The follower refused a write for good: out of sync, without asking for a resync.
    pub fn mark_refused(&self, reason: impl Into<String>) {
        self.refusals.fetch_add(1, Ordering::AcqRel);
        self.flag(reason.into(), None, Level::Refused);
    }

    /// [`Self::mark_refused`] with a `detail` naming keys or paths: logged, never in
    /// `reason` (which `/status` shows).
    pub fn mark_refused_detail(&self, reason: impl Into<String>, detail: &str) {
        self.refusals.fetch_add(1, Ordering::AcqRel);
        self.flag(reason.into(), Some(detail), Level::Refused);
    }

    /// [`Self::mark_out_of_sync`] with a `detail` naming keys, paths or a backend's error
    /// text: logged, never in `reason` (which `/status` shows).
    pub fn mark_out_of_sync_detail(&self, reason: impl Into<String>, detail: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.flag(reason.into(), Some(detail), Level::Lost);
    }

    /// How many writes the follower refused so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Acquire)
    }

    fn mark(&self, reason: String, warn: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.flag(
            reason,
            None,
            if warn { Level::Lost } else { Level::Expected },
        );
    }

    fn flag(&self, reason: String, detail: Option<&str>, level: Level) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            let detail = detail.unwrap_or("");
            match level {
                Level::Lost => {
                    tracing::warn!(%reason, detail, "follower marked out of sync; a full resync is needed")
                }
                Level::Expected => {
                    tracing::info!(%reason, "follower marked out of sync; a full resync will run")
                }
                Level::Refused => tracing::warn!(
                    %reason,
                    detail,
                    "follower marked out of sync: it refuses a write (skipped; the rest flows on)"
                ),
            }
            *r = Some(reason);
        }
        self.in_sync.store(false, Ordering::Release);
        self.gauge.set(0.0);
    }

    /// After a full resync that started at `epoch`: false (and still out of sync) when the
    /// follower was marked out of sync again meanwhile.
    pub fn mark_in_sync_if(&self, epoch: u64) -> bool {
        let mut r = lock(&self.reason);
        if self.epoch() != epoch {
            return false;
        }
        *r = None;
        self.in_sync.store(true, Ordering::Release);
        self.gauge.set(1.0);
        true
    }
}

/// Why the follower is flagged, for the log line.
enum Level {
    Lost,
    Expected,
    Refused,
}

#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_ops: usize,
    pub max_bytes: usize,
    /// Most ops in the bulk lane before `push_bulk` waits.
    pub bulk_capacity: usize,
    /// Most bulk ops in one batch. A live write that arrives while a batch is in flight
    /// waits for it, so this bounds the delay a resync adds to live mirroring (a
    /// ZooKeeper bulk op is a whole multi of up to `resync.batch_size` nodes).
    pub bulk_per_batch: usize,
}

/// What [`MirrorQueue::push_all`] did with one op.
enum Pushed {
    Queued,
    /// An equal copy is already waiting.
    Merged,
    /// The queue was full: this many ops (this one included) were discarded.
    Overflowed(u64),
}

struct Waiting<Op> {
    op: Op,
    enqueued: Instant,
}

struct Inner<Op: MirrorOp> {
    waiting: VecDeque<Waiting<Op>>,
    waiting_keys: HashSet<Op::Key, foldhash::fast::RandomState>,
    waiting_bytes: usize,
    /// The batch the writer holds: count, bytes, enqueue time of its oldest op.
    in_flight: usize,
    in_flight_bytes: usize,
    in_flight_oldest: Option<Instant>,
    /// The bulk lane (resync copies) and how many of the batch in flight came from it.
    bulk: VecDeque<Op>,
    bulk_in_flight: usize,
}

/// What `/status` and maintenance need from a queue, without its op type.
pub trait MirrorView: Send + Sync {
    fn status(&self) -> MirrorStatus;
    fn sync(&self) -> &SyncState;
    /// Notified whenever ops complete or are dropped.
    fn changed(&self) -> &Notify;
    fn is_drained(&self) -> bool;
    /// Resync ops waiting or being applied.
    fn bulk_pending(&self) -> usize;
    /// Discards the bulk lane (a resync that is abandoned).
    fn clear_bulk(&self);
}

/// Waits until the queue is empty or the deadline passes; true when drained.
pub async fn wait_drained(view: &dyn MirrorView, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = view.changed().notified();
        if view.is_drained() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return view.is_drained();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MirrorStatus {
    pub queue_depth: usize,
    pub queue_bytes: usize,
    pub lag_seconds: f64,
    pub in_sync: bool,
    pub out_of_sync_reason: Option<String>,
    pub mirrored_writes: u64,
    pub dropped_writes: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// Key copies waiting for an unreachable leader (applied when it answers, flagged when
    /// it is declared lost).
    pub deferred_copies: usize,
    /// Set when the leader lost data the follower holds: what was found, what to do.
    pub leader_data_loss: Option<String>,
    /// Writes the follower refused for good (skipped), and the last one.
    pub refused_writes: u64,
    pub last_refused: Option<String>,
}

pub struct MirrorQueue<Op: MirrorOp> {
    inner: Mutex<Inner<Op>>,
    limits: QueueLimits,
    bulk_capacity: usize,
    wake: Notify,
    changed: Notify,
    bulk_room: Notify,
    /// Key copies the writer holds outside the queue (see `set_deferred`).
    deferred: std::sync::atomic::AtomicUsize,
    sync: SyncState,
    pub(crate) stats: QueueStats,
    /// Work done for the queue's ops after they left it (the cross-sidecar checks of
    /// `replication::converge`): drained only once this says idle too.
    also_idle: Mutex<Vec<Arc<dyn Fn() -> bool + Send + Sync>>>,
    /// Sees every acknowledged write as it is pushed (even one that coalesces or overflows):
    /// the online migration notes which NiFi components changed (`migrate::online`).
    tap: std::sync::OnceLock<Tap<Op>>,
}

/// See [`MirrorQueue::set_tap`].
pub type Tap<Op> = Arc<dyn Fn(&Op) + Send + Sync>;

/// Counters kept next to the metrics so `/status` can show them.
pub(crate) struct QueueStats {
    pub protocol: &'static str,
    mirrored: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    refused: AtomicU64,
    last_refused: Mutex<Option<String>>,
    mirrored_c: Counter,
    dropped_c: Counter,
    depth_g: Gauge,
    bytes_g: Gauge,
    lag_g: Gauge,
}

impl QueueStats {
    pub(crate) fn failure(&self, reason: &'static str, detail: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        // The detail (a backend's error text) is logged by the worker, not shown.
        *lock(&self.last_error) = Some(super::public::summary(reason, detail));
        counter!(m::MIRROR_FAILURES_TOTAL, "protocol" => self.protocol, "reason" => reason)
            .increment(1);
    }
}

impl<Op: MirrorOp> MirrorQueue<Op> {
    pub fn new(protocol: &'static str, limits: QueueLimits) -> Arc<Self> {
        // The limits, so an alert can compare depth and bytes against them.
        gauge!(m::QUEUE_MAX_OPS, "protocol" => protocol).set(limits.max_ops as f64);
        gauge!(m::QUEUE_MAX_BYTES, "protocol" => protocol).set(limits.max_bytes as f64);
        let q = Arc::new(Self {
            inner: Mutex::new(Inner {
                waiting: VecDeque::new(),
                waiting_keys: HashSet::default(),
                waiting_bytes: 0,
                in_flight: 0,
                in_flight_bytes: 0,
                in_flight_oldest: None,
                bulk: VecDeque::new(),
                bulk_in_flight: 0,
            }),
            limits: QueueLimits {
                bulk_per_batch: limits.bulk_per_batch.max(1),
                ..limits
            },
            bulk_capacity: limits.bulk_capacity.max(1),
            wake: Notify::new(),
            changed: Notify::new(),
            bulk_room: Notify::new(),
            deferred: std::sync::atomic::AtomicUsize::new(0),
            sync: SyncState::new(protocol),
            stats: QueueStats {
                protocol,
                mirrored: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_error: Mutex::new(None),
                refused: AtomicU64::new(0),
                last_refused: Mutex::new(None),
                mirrored_c: counter!(m::MIRRORED_TOTAL, "protocol" => protocol),
                dropped_c: counter!(m::DROPPED_TOTAL, "protocol" => protocol),
                depth_g: gauge!(m::QUEUE_DEPTH, "protocol" => protocol),
                bytes_g: gauge!(m::QUEUE_BYTES, "protocol" => protocol),
                lag_g: gauge!(m::MIRROR_LAG, "protocol" => protocol),
            },
            also_idle: Mutex::new(Vec::new()),
            tap: std::sync::OnceLock::new(),
        });
        q.publish_gauges();
        q
    }

    /// Makes [`MirrorView::is_drained`] wait for `idle` too (each one added at start).
    /// Whoever `idle` watches must call [`Self::notify_changed`] when it becomes true.
    pub fn drained_also_when(&self, idle: Arc<dyn Fn() -> bool + Send + Sync>) {
        lock(&self.also_idle).push(idle);
    }

    /// Calls `tap` with every op pushed from now on, before anything else happens to it
    /// (set once, at start). It runs on the session's task: it must be quick.
    pub fn set_tap(&self, tap: Tap<Op>) {
        let _ = self.tap.set(tap);
    }

    pub fn notify_changed(&self) {
        self.changed.notify_waiters();
    }

    /// Real bytes an op takes while queued: its heap, its slot in the queue, and the clone of
    /// its coalesce key in the waiting set (a `Bytes` clone allocates a shared header).
    pub fn cost(op: &Op) -> usize {
        let key = if op.coalesce_key().is_some() {
            std::mem::size_of::<Op::Key>() + 8 + heap_alloc(32)
        } else {
            0
        };
        op.cost_bytes() + std::mem::size_of::<Waiting<Op>>() + key
    }

    /// Queues an acknowledged write. Never waits. On overflow everything waiting is
    /// discarded (this op included) and the follower is marked out of sync.
    pub fn push(&self, op: Op) {
        self.push_all(std::iter::once(op));
    }

    /// Queues acknowledged writes in order, under one lock (a session that read several
    /// replies at once queues their writes together); each is handled as by [`Self::push`].
    pub fn push_all(&self, ops: impl IntoIterator<Item = Op>) {
        let mut dropped = 0u64;
        let mut queued = false;
        let now = Instant::now();
        {
            let mut inner = lock(&self.inner);
            for op in ops {
                if let Some(tap) = self.tap.get() {
                    tap(&op);
                }
                match self.push_locked(&mut inner, op, now) {
                    Pushed::Queued => queued = true,
                    Pushed::Merged => {}
                    Pushed::Overflowed(n) => dropped += n,
                }
            }
        }
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            self.stats.dropped_c.increment(dropped);
            self.sync.mark_out_of_sync(format!(
                "mirror queue overflowed (limits: {} ops, {} bytes); {dropped} writes discarded",
                self.limits.max_ops, self.limits.max_bytes
            ));
            self.changed.notify_waiters();
        }
        if queued {
            self.wake.notify_one();
        }
    }

    fn push_locked(&self, inner: &mut Inner<Op>, op: Op, now: Instant) -> Pushed {
        let key = op.coalesce_key();
        if let Some(k) = &key {
            if inner.waiting_keys.contains(k) {
                return Pushed::Merged;
            }
        }
        let cost = Self::cost(&op);
        let total_ops = inner.waiting.len() + inner.in_flight + 1;
        let total_bytes = inner.waiting_bytes + inner.in_flight_bytes + cost;
        if total_ops > self.limits.max_ops || total_bytes > self.limits.max_bytes {
            let dropped = inner.waiting.len() as u64 + 1;
            inner.waiting.clear();
            inner.waiting_keys.clear();
            inner.waiting_bytes = 0;
            return Pushed::Overflowed(dropped);
        }
        // Only a queue holding mergeable copies has anything to fence (the usual case has
        // none, and computing the barrier allocates).
        if !inner.waiting_keys.is_empty() {
            match op.barrier() {
                Barrier::None => {}
                Barrier::Keys(keys) => {
                    for k in &keys {
                        inner.waiting_keys.remove(k);
                    }
                }
                Barrier::All => inner.waiting_keys.clear(),
            }
        }
        if let Some(k) = key {
            inner.waiting_keys.insert(k);
        }
        inner.waiting_bytes += cost;
        inner.waiting.push_back(Waiting { op, enqueued: now });
        Pushed::Queued
    }

    /// Waits for work and takes up to `max` ops / `max_bytes` bytes (always at least one op),
    /// live ops first, then bulk ones; they stay counted (depth, lag) until
    /// [`complete`](Self::complete).
    pub async fn take_batch(&self, max: usize, max_bytes: usize) -> Vec<Op> {
        loop {
            let notified = self.wake.notified();
            {
                let mut inner = lock(&self.inner);
                if !inner.waiting.is_empty() || !inner.bulk.is_empty() {
                    let n = inner.waiting.len().min(max);
                    let mut batch = Vec::with_capacity(n);
                    let mut bytes = 0;
                    inner.in_flight_oldest = inner.waiting.front().map(|w| w.enqueued);
                    for _ in 0..n {
                        let next = inner
                            .waiting
                            .front()
                            .map(|w| Self::cost(&w.op))
                            .unwrap_or(0);
                        if !batch.is_empty() && bytes + next > max_bytes {
                            break;
                        }
                        if let Some(w) = inner.waiting.pop_front() {
                            if let Some(k) = w.op.coalesce_key() {
                                inner.waiting_keys.remove(&k);
                            }
                            bytes += next;
                            batch.push(w.op);
                        }
                    }
                    inner.waiting_bytes -= bytes;
                    inner.in_flight = batch.len();
                    inner.in_flight_bytes = bytes;
                    let mut bulk_bytes = 0;
                    let mut taken_bulk = 0;
                    while batch.len() < max && taken_bulk < self.limits.bulk_per_batch {
                        let next = inner.bulk.front().map(Self::cost).unwrap_or(0);
                        if inner.bulk.is_empty()
                            || (!batch.is_empty() && bytes + bulk_bytes + next > max_bytes)
                        {
                            break;
                        }
                        if let Some(op) = inner.bulk.pop_front() {
                            bulk_bytes += next;
                            taken_bulk += 1;
                            batch.push(op);
                        }
                    }
                    inner.bulk_in_flight = taken_bulk;
                    if taken_bulk > 0 {
                        self.bulk_room.notify_waiters();
                    }
                    return batch;
                }
            }
            notified.await;
        }
    }

    /// Queues a resync op in the bulk lane, waiting while the lane is full (never drops).
    pub async fn push_bulk(&self, op: Op) {
        loop {
            let room = self.bulk_room.notified();
            {
                let mut inner = lock(&self.inner);
                if inner.bulk.len() < self.bulk_capacity {
                    inner.bulk.push_back(op);
                    drop(inner);
                    self.wake.notify_one();
                    return;
                }
            }
            room.await;
        }
    }

    /// The batch taken last is on the follower (or given up for good).
    pub fn complete(&self, applied: usize) {
        let applied = {
            let mut inner = lock(&self.inner);
            inner.in_flight = 0;
            inner.in_flight_bytes = 0;
            inner.in_flight_oldest = None;
            // After an outage the deque keeps the capacity of its peak: give it back.
            if inner.waiting.is_empty() && inner.waiting.capacity() > 4096 {
                inner.waiting.shrink_to(4096);
                inner.waiting_keys.shrink_to(4096);
            }
            // Resync copies are not client writes: count only the live part.
            applied.saturating_sub(std::mem::take(&mut inner.bulk_in_flight))
        };
        self.stats
            .mirrored
            .fetch_add(applied as u64, Ordering::Relaxed);
        self.stats.mirrored_c.increment(applied as u64);
        self.publish_gauges();
        self.changed.notify_waiters();
    }

    /// The follower refused one write for good (`what`: which write and why, naming the key
    /// or path and the backend's error text: logged only; `/status` shows `reason` and the
    /// error code, see `public`). The writer skips it and goes on; here it is counted and
    /// the follower marked out of sync, so a resync (and verify) deal with that key.
    pub fn refused(&self, reason: &'static str, what: &str) {
        let protocol = self.stats.protocol;
        let public = super::public::summary(reason, what);
        tracing::debug!(protocol, reason, what, "follower refused a write; skipped");
        self.sync.mark_refused_detail(
            format!("the follower refused a write for good: {public} (the log names it)"),
            what,
        );
        // The reason first, then the count (released): a status that shows the count shows
        // the reason too.
        *lock(&self.stats.last_refused) = Some(public);
        self.stats.refused.fetch_add(1, Ordering::Release);
        counter!(m::MIRROR_REFUSED_TOTAL, "protocol" => protocol, "reason" => reason).increment(1);
    }

    /// Writes given up outside the queue (e.g. key copies whose leader was lost).
    pub fn count_dropped(&self, n: u64) {
        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        self.stats.dropped_c.increment(n);
    }

    /// Key copies the writer holds back until the leader can be read (counted as not
    /// drained: they are acknowledged writes not on the follower yet).
    pub fn set_deferred(&self, n: usize) {
        self.deferred.store(n, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Discards the waiting live ops `pred` selects (not the batch in flight) and marks the
    /// follower out of sync with `reason` when any was discarded.
    pub fn discard_waiting_if(&self, pred: impl Fn(&Op) -> bool, reason: &str) {
        let dropped = {
            let mut inner = lock(&self.inner);
            let before = inner.waiting.len();
            let mut bytes = 0;
            inner.waiting.retain(|w| {
                let keep = !pred(&w.op);
                if keep {
                    bytes += Self::cost(&w.op);
                }
                keep
            });
            let keys: HashSet<Op::Key, foldhash::fast::RandomState> = inner
                .waiting
                .iter()
                .filter_map(|w| w.op.coalesce_key())
                .collect();
            inner.waiting_keys = keys;
            inner.waiting_bytes = bytes;
            (before - inner.waiting.len()) as u64
        };
        if dropped > 0 {
            self.count_dropped(dropped);
            self.sync.mark_out_of_sync(reason);
        }
        self.changed.notify_waiters();
    }

    /// `f` of every op waiting (not the batch in flight), in queue order, where it says
    /// `Some`: lets an applier see what is queued after the batch it is applying.
    pub fn waiting_filter_map<T>(&self, f: impl Fn(&Op) -> Option<T>) -> Vec<T> {
        lock(&self.inner)
            .waiting
            .iter()
            .filter_map(|w| f(&w.op))
            .collect()
    }

    /// Discards everything waiting in both lanes (not the batch in flight) and marks the
    /// follower out of sync with `reason`.
    pub fn discard_waiting(&self, reason: &str) {
        let dropped = {
            let mut inner = lock(&self.inner);
            let n = inner.waiting.len() as u64;
            inner.waiting.clear();
            inner.waiting_keys.clear();
            inner.waiting_bytes = 0;
            inner.bulk.clear();
            n
        };
        self.bulk_room.notify_waiters();
        self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.stats.dropped_c.increment(dropped);
        self.sync.mark_out_of_sync(reason);
        self.changed.notify_waiters();
    }

    pub(crate) fn publish_gauges(&self) {
        let s = self.counts();
        self.stats.depth_g.set(s.0 as f64);
        self.stats.bytes_g.set(s.1 as f64);
        self.stats.lag_g.set(s.2);
    }

    /// (depth, bytes, lag seconds)
    fn counts(&self) -> (usize, usize, f64) {
        let inner = lock(&self.inner);
        let oldest = inner
            .in_flight_oldest
            .or_else(|| inner.waiting.front().map(|w| w.enqueued));
        (
            inner.waiting.len() + inner.in_flight,
            inner.waiting_bytes + inner.in_flight_bytes,
            oldest.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
        )
    }

    pub(crate) fn stats(&self) -> &QueueStats {
        &self.stats
    }
}

impl<Op: MirrorOp> MirrorView for MirrorQueue<Op> {
    fn status(&self) -> MirrorStatus {
        let (queue_depth, queue_bytes, lag_seconds) = self.counts();
        MirrorStatus {
            queue_depth,
            queue_bytes,
            lag_seconds,
            in_sync: self.sync.in_sync(),
            out_of_sync_reason: self.sync.reason(),
            mirrored_writes: self.stats.mirrored.load(Ordering::Relaxed),
            dropped_writes: self.stats.dropped.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            last_error: lock(&self.stats.last_error).clone(),
            deferred_copies: self.deferred.load(Ordering::Relaxed),
            leader_data_loss: self.sync.leader_data_loss(),
            refused_writes: self.stats.refused.load(Ordering::Acquire),
            last_refused: lock(&self.stats.last_refused).clone(),
        }
    }

    fn sync(&self) -> &SyncState {
        &self.sync
    }

    fn changed(&self) -> &Notify {
        &self.changed
    }

    fn is_drained(&self) -> bool {
        let inner = lock(&self.inner);
        inner.waiting.is_empty()
            && inner.in_flight == 0
            && self.deferred.load(Ordering::Relaxed) == 0
            && lock(&self.also_idle).iter().all(|f| f())
    }

    fn bulk_pending(&self) -> usize {
        let inner = lock(&self.inner);
        inner.bulk.len() + inner.bulk_in_flight
    }

    fn clear_bulk(&self) {
        lock(&self.inner).bulk.clear();
        self.bulk_room.notify_waiters();
        self.changed.notify_waiters();
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain counters; the data
/// is still usable, so recover it rather than cascade the panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Op(u32, Option<u32>);
    impl MirrorOp for Op {
        type Key = u32;
        fn cost_bytes(&self) -> usize {
            10
        }
        fn coalesce_key(&self) -> Option<u32> {
            self.1
        }
    }

    #[tokio::test]
    async fn coalesces_only_while_waiting() {
        let q = MirrorQueue::new(
            "test",
            QueueLimits {
                max_ops: 10,
                max_bytes: 1000,
                bulk_capacity: 4,
                bulk_per_batch: 100,
            },
        );
        q.push(Op(1, Some(7)));
        q.push(Op(2, Some(7)));
        q.push(Op(3, None));
        let b = q.take_batch(10, usize::MAX).await;
        assert_eq!(b.iter().map(|o| o.0).collect::<Vec<_>>(), vec![1, 3]);
        // Taken: a new write of key 7 must be queued again (the batch may have read already).
        q.push(Op(4, Some(7)));
        assert_eq!(q.status().queue_depth, 3);
        q.complete(2);
        assert_eq!(q.status().queue_depth, 1);
        assert!(!q.is_drained());
    }

    struct Barred(u32, Option<u32>, Vec<u32>);
    impl MirrorOp for Barred {
        type Key = u32;
        fn cost_bytes(&self) -> usize {
            1
        }
        fn coalesce_key(&self) -> Option<u32> {
            self.1
        }
        fn barrier(&self) -> Barrier<u32> {
            Barrier::Keys(self.2.iter().copied().collect())
        }
    }

    #[tokio::test]
    async fn a_barrier_stops_coalescing_across_it() {
        let q = MirrorQueue::new(
            "test",
            QueueLimits {
                max_ops: 10,
                max_bytes: 1000,
                bulk_capacity: 4,
                bulk_per_batch: 100,
            },
        );
        q.push(Barred(1, Some(7), vec![])); // copy of key 7
        q.push(Barred(2, None, vec![7])); // point-in-time write of key 7
        q.push(Barred(3, Some(7), vec![])); // must be kept: it comes after op 2
        q.push(Barred(4, Some(7), vec![])); // coalesces into op 3
        let b = q.take_batch(10, usize::MAX).await;
        assert_eq!(b.iter().map(|o| o.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn bulk_ops_wait_for_room_come_after_live_ones_and_are_not_counted() {
        let q = MirrorQueue::new(
            "test",
            QueueLimits {
                max_ops: 2,
                max_bytes: 1000,
                bulk_capacity: 2,
                bulk_per_batch: 100,
            },
        );
        q.push_bulk(Op(10, None)).await;
        q.push_bulk(Op(11, None)).await;
        // The lane is full: a third push waits until the writer takes a batch.
        let third = tokio::time::timeout(Duration::from_millis(50), q.push_bulk(Op(12, None)));
        assert!(third.await.is_err());
        q.push(Op(1, None));
        q.push(Op(2, None));
        assert!(
            q.sync().in_sync(),
            "bulk ops do not count against the limits"
        );
        assert_eq!(q.status().queue_depth, 2);
        let b = q.take_batch(3, usize::MAX).await;
        assert_eq!(b.iter().map(|o| o.0).collect::<Vec<_>>(), vec![1, 2, 10]);
        assert_eq!(q.bulk_pending(), 2);
        q.complete(3);
        assert_eq!(
            q.status().mirrored_writes,
            2,
            "the bulk op is not a client write"
        );
        q.push_bulk(Op(12, None)).await;
        assert_eq!(q.bulk_pending(), 2);
    }

    #[test]
    fn in_sync_only_when_nothing_was_lost_since_the_resync_began() {
        let s = SyncState::new("test");
        s.mark_out_of_sync("a");
        let e = s.epoch();
        s.mark_out_of_sync("b");
        assert!(!s.mark_in_sync_if(e));
        assert!(!s.in_sync());
        assert!(s.mark_in_sync_if(s.epoch()));
        assert!(s.in_sync() && s.reason().is_none());
    }

    #[tokio::test]
    async fn overflow_discards_and_marks_out_of_sync() {
        let q = MirrorQueue::new(
            "test",
            QueueLimits {
                max_ops: 2,
                max_bytes: 1000,
                bulk_capacity: 4,
                bulk_per_batch: 100,
            },
        );
        q.push(Op(1, None));
        q.push(Op(2, None));
        assert!(q.sync().in_sync());
        q.push(Op(3, None));
        let s = q.status();
        assert_eq!(s.queue_depth, 0);
        assert_eq!(s.dropped_writes, 3);
        assert!(!s.in_sync);
        assert!(s.out_of_sync_reason.unwrap().contains("overflowed"));
        // Later writes still flow.
        q.push(Op(4, None));
        assert_eq!(q.take_batch(5, usize::MAX).await.len(), 1);
    }

    #[tokio::test]
    async fn a_batch_takes_at_most_bulk_per_batch_bulk_ops() {
        let q = MirrorQueue::new(
            "test",
            QueueLimits {
                max_ops: 100,
                max_bytes: 1000,
                bulk_capacity: 4,
                bulk_per_batch: 1,
            },
        );
        q.push_bulk(Op(10, None)).await;
        q.push_bulk(Op(11, None)).await;
        q.push(Op(1, None));
        q.push(Op(2, None));
        let ids = |b: Vec<Op>| b.iter().map(|o| o.0).collect::<Vec<_>>();
        assert_eq!(ids(q.take_batch(100, usize::MAX).await), [1, 2, 10]);
        q.complete(3);
        assert_eq!(ids(q.take_batch(100, usize::MAX).await), [11]);
    }

    #[tokio::test]
    async fn batches_stop_at_the_byte_limit() {
        let q = MirrorQueue::new(
            "test",
            QueueLimits {
                max_ops: 100,
                max_bytes: 1000,
                bulk_capacity: 4,
                bulk_per_batch: 100,
            },
        );
        for i in 0..5 {
            q.push(Op(i, None));
        }
        let each = MirrorQueue::<Op>::cost(&Op(0, None));
        assert_eq!(q.take_batch(100, 2 * each + each / 2).await.len(), 2);
        q.complete(2);
        assert_eq!(q.take_batch(100, 1).await.len(), 1, "at least one op");
    }

    #[test]
    fn cost_counts_the_slot_and_the_key_not_only_the_payload() {
        let plain = MirrorQueue::<Op>::cost(&Op(0, None));
        assert!(plain >= 10 + std::mem::size_of::<Waiting<Op>>());
        assert!(MirrorQueue::<Op>::cost(&Op(0, Some(1))) > plain);
        assert_eq!(heap_alloc(0), 0);
        assert_eq!(heap_alloc(1), 32);
        assert_eq!(heap_alloc(100), 112);
    }

    #[tokio::test]
    async fn byte_limit_counts_in_flight() {
        let each = MirrorQueue::<Op>::cost(&Op(0, None));
        let q = MirrorQueue::new(
            "test",
            QueueLimits {
                max_ops: 100,
                max_bytes: 2 * each + each / 2,
                bulk_capacity: 4,
                bulk_per_batch: 100,
            },
        );
        q.push(Op(1, None));
        q.push(Op(2, None));
        let _b = q.take_batch(10, usize::MAX).await;
        q.push(Op(3, None)); // 30 bytes with the in-flight batch
        assert!(!q.sync().in_sync());
    }
}
