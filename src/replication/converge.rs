//! Convergence across sidecars: why the follower ends equal to the leader when N sidecars
//! mirror to it, whatever each one's delay to the follower.
//!
//! Inside one sidecar the mirror keeps a key's writes in the leader's order. Across
//! sidecars nothing does: node A's older write of a key can reach the follower after node
//! B's newer one (A's link to the other region is slower, or A retried a batch), and would
//! stay there for good. So every sidecar with `[cluster]` also **checks every key it
//! modified on the follower against the leader, after that modification was acknowledged
//! by the follower, and repairs it with a compare-and-set on the follower**:
//!
//! 1. read the key on the follower and remember its version (Redis: `WATCH` it first;
//!    ZooKeeper: the node's `version` in its `Stat`);
//! 2. then read it on the leader;
//! 3. if they differ, write the leader's state to the follower *only if the follower's key
//!    is still at the version read in 1* (Redis: `MULTI … EXEC`, aborted if the watched key
//!    changed; ZooKeeper: `setData`/`delete` with that version, `create` failing on
//!    `NODEEXISTS`). A conflict (the key changed since 1) ends this key's check: that
//!    newer change is someone else's, who checks the key after it.
//!
//! Why that converges once writes stop: take the last change to a key on the follower.
//! - If it is a repair, its follower read (1) came after every other change to the key on
//!   the follower, so after the mirrored op of the leader's last write to the key had
//!   landed (a mirrored op is sent only once the leader acknowledged the write), and its
//!   leader read (2) came later still: it wrote the leader's final state.
//! - If it is a mirrored op (or a resync copy) of sidecar X, X checks the key after it:
//!   its follower read sees that last change, its leader read comes after every write's
//!   mirrored op landed, so after the last write, and it finds the two equal (else it
//!   would change the key again, contradicting "last").
//!
//! What it needs: every change a sidecar makes to the follower is followed by that
//! sidecar's check of the key (the writers note each key once the follower acknowledged
//! it), and the check set is not lost. If it overflows ([`MAX_PENDING_BYTES`]) or the
//! sidecar stops before its checks ran, the follower is marked out of sync and a resync
//! restores it, as for any other loss.
//!
//! Bound: once writes stop, the follower equals the leader within the slowest sidecar's
//! time to drain its mirror, plus [`DELAY`], plus one check round on that sidecar (a few
//! round trips to each backend; [`ROUND_TIMEOUT`] at most, then retried).
//!
//! Cost per mirrored write (only with `[cluster]`): one read of the key on the leader and
//! one on the follower, pipelined for up to [`BATCH`] keys per round and deduplicated
//! within [`DELAY`] (a key written 100 times in 100 ms is checked once), plus a write when
//! the two differ. Measured in the README ("Running with a NiFi cluster").

use std::collections::HashSet;

/// Every mirrored write notes its key here: a seeded fast hash (foldhash), not SipHash,
/// which showed in the proxy's profile at `SET -P 16`.
type KeySet<K> = HashSet<K, foldhash::fast::RandomState>;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, gauge, Counter, Gauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::queue::{heap_alloc, lock, MirrorView};
use super::resync::BoxFuture;
use crate::metrics as m;

/// How long keys gather before a round: a hot key is checked once per interval.
pub const DELAY: Duration = Duration::from_millis(100);
/// Most keys checked in one round (one pipeline per backend).
pub const BATCH: usize = 256;
/// A round that takes longer fails and its keys are retried.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of keys waiting for a check; beyond it they are given up and the follower is
/// marked out of sync (a resync checks everything).
pub const MAX_PENDING_BYTES: usize = 8 << 20;

/// What one round did.
#[derive(Debug, Default)]
pub struct Round<K> {
    /// Keys compared.
    pub checked: usize,
    /// Keys whose follower state was replaced with the leader's.
    pub repaired: usize,
    /// Keys changed on the follower between the read and the write. Not checked again:
    /// that change is not this sidecar's, so its last change to the key is no longer the
    /// last one, and whoever made the newer change checks the key after it (see the module
    /// comment). Dropping them keeps a hot key from holding the check (and a drain) forever.
    pub conflicts: usize,
    /// Keys to check again: not written, but not changed by anyone else either (a Redis
    /// transaction aborted by another key's change).
    pub retry: Vec<K>,
    /// Keys the follower refused to take (given up; the follower is marked out of sync).
    pub refused: Vec<String>,
    /// The leader restarted or went back in time since the last round: it may have lost
    /// data, so nothing may be repaired from it. Every waiting key is given up and the
    /// follower marked out of sync with this reason (the generation check then decides
    /// between a resync and `recover --from-follower`).
    pub abandon: Option<String>,
}

/// A protocol's check-and-repair of a set of keys (see the module comment for the order of
/// the reads and the condition on the write).
pub trait Repairer: Send + 'static {
    type Key: Eq + Hash + Clone + Send + Sync + 'static;
    /// Heap bytes the key holds (for [`MAX_PENDING_BYTES`]).
    fn key_bytes(k: &Self::Key) -> usize;
    fn repair(&mut self, keys: Vec<Self::Key>) -> BoxFuture<'_, Result<Round<Self::Key>, String>>;
    /// Reads what identifies the leader's data (Redis: its `run_id`; ZooKeeper: its zxid)
    /// before any key is noted: a check compares against it, so a leader that restarted
    /// empty between a write and the check's first contact with it is still caught.
    fn prime(&mut self) -> BoxFuture<'_, Result<(), String>>;
}

/// The keys this sidecar changed on the follower and has not checked yet.
pub struct Touched<K> {
    set: Mutex<(KeySet<K>, usize)>,
    overflowed: AtomicBool,
    /// A round is running (its keys are out of the set).
    busy: AtomicBool,
    /// The repairer has read the leader's identity ([`Repairer::prime`]); until then a
    /// restart of the leader after a noted write could not be told, so keys noted before
    /// are given up (`noted_unprimed`) rather than repaired from a leader of unknown past.
    primed: AtomicBool,
    noted_unprimed: AtomicBool,
    wake: Notify,
    key_bytes: fn(&K) -> usize,
    checked: AtomicU64,
    repaired: AtomicU64,
    conflicts: AtomicU64,
    last_error: Mutex<Option<String>>,
    checked_c: Counter,
    repaired_c: Counter,
    pending_g: Gauge,
}

impl<K: Eq + Hash + Clone> Touched<K> {
    pub fn new(protocol: &'static str, key_bytes: fn(&K) -> usize) -> Arc<Self> {
        Arc::new(Self {
            set: Mutex::new((KeySet::default(), 0)),
            overflowed: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            primed: AtomicBool::new(false),
            noted_unprimed: AtomicBool::new(false),
            wake: Notify::new(),
            key_bytes,
            checked: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            last_error: Mutex::new(None),
            checked_c: counter!(m::CONVERGE_CHECKED_TOTAL, "protocol" => protocol),
            repaired_c: counter!(m::CONVERGE_REPAIRED_TOTAL, "protocol" => protocol),
            pending_g: gauge!(m::CONVERGE_PENDING, "protocol" => protocol),
        })
    }

    /// Notes keys the follower just acknowledged a change to. Called by the follower
    /// writer after each pipeline's replies (never on a client's path).
    pub fn note(&self, keys: impl IntoIterator<Item = K>) {
        let mut any = false;
        {
            let mut g = lock(&self.set);
            if !self.primed.load(Ordering::Acquire) {
                self.noted_unprimed.store(true, Ordering::Release);
            }
            let (set, bytes) = &mut *g;
            for k in keys {
                any = true;
                if *bytes > MAX_PENDING_BYTES {
                    self.overflowed.store(true, Ordering::Release);
                    break;
                }
                let b = (self.key_bytes)(&k) + 16;
                if set.insert(k) {
                    *bytes += b;
                }
            }
            self.pending_g.set(set.len() as f64);
        }
        if any {
            self.wake.notify_one();
        }
    }

    fn take(&self, n: usize) -> Vec<K> {
        let mut g = lock(&self.set);
        let (set, bytes) = &mut *g;
        let keys: Vec<K> = set.iter().take(n).cloned().collect();
        for k in &keys {
            set.remove(k);
            *bytes = bytes.saturating_sub((self.key_bytes)(k) + 16);
        }
        if set.is_empty() {
            *bytes = 0;
            // Give the memory back after a burst.
            if set.capacity() > 4 * BATCH {
                *set = KeySet::default();
            }
        }
        self.pending_g.set(set.len() as f64);
        keys
    }

    pub fn pending(&self) -> usize {
        lock(&self.set).0.len()
    }

    /// Nothing waits for a check and no round runs.
    pub fn is_idle(&self) -> bool {
        !self.busy.load(Ordering::Acquire) && self.pending() == 0
    }

    /// Waits until [`Self::is_idle`], at most `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_idle() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "pending": self.pending(),
            "running": self.busy.load(Ordering::Acquire),
            "checked": self.checked.load(Ordering::Relaxed),
            "repaired": self.repaired.load(Ordering::Relaxed),
            "conflicts": self.conflicts.load(Ordering::Relaxed),
            "last_error": lock(&self.last_error).as_deref().map(super::public::error),
        })
    }
}

/// Heap bytes of a key held as `(db, bytes)` or a path.
pub fn bytes_key_size(len: usize) -> usize {
    heap_alloc(len)
}

/// Runs check rounds until `shutdown`. A round that fails (a backend down) puts its keys
/// back and waits a little: the keys are checked once both backends answer again.
pub fn spawn<R: Repairer>(
    touched: Arc<Touched<R::Key>>,
    mut repairer: R,
    mirror: Arc<dyn MirrorView>,
    protocol: &'static str,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let t = touched;
        let mut failures = 0u32;
        loop {
            if !t.primed.load(Ordering::Acquire) {
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout(ROUND_TIMEOUT, repairer.prime()) => r,
                };
                match r.unwrap_or_else(|_| Err("reading the leader's identity timed out".into())) {
                    Ok(()) => t.primed.store(true, Ordering::Release),
                    Err(e) => {
                        *lock(&t.last_error) = Some(e);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        continue;
                    }
                }
            }
            if t.pending() == 0 && !t.overflowed.load(Ordering::Acquire) {
                // Waiters for "drained" count the checks too (`drained_also_when`).
                mirror.changed().notify_waiters();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = t.wake.notified() => {}
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(DELAY) => {}
            }
            if t.overflowed.swap(false, Ordering::AcqRel) {
                let n = t.pending();
                t.take(usize::MAX);
                mirror.sync().mark_out_of_sync(format!(
                    "more keys waiting for the cross-sidecar check than it holds ({n} keys, \
                     {} MiB): they are given up and a resync compares everything",
                    MAX_PENDING_BYTES >> 20
                ));
                continue;
            }
            // A leader known to have lost data must not overwrite the follower, the only
            // full copy: the checks wait, as resync does, until an operator decides.
            if mirror.sync().leader_data_loss().is_some() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            t.busy.store(true, Ordering::Release);
            let keys = t.take(BATCH);
            if keys.is_empty() {
                t.busy.store(false, Ordering::Release);
                continue;
            }
            let back = keys.clone();
            let r = if t.noted_unprimed.swap(false, Ordering::AcqRel) {
                Ok(Round {
                    checked: 0,
                    repaired: 0,
                    conflicts: 0,
                    retry: Vec::new(),
                    refused: Vec::new(),
                    abandon: Some(
                        "they were written before the check could read the leader's identity \
                         (it may have restarted since)"
                            .into(),
                    ),
                })
            } else {
                let r = tokio::time::timeout(ROUND_TIMEOUT, repairer.repair(keys)).await;
                r.unwrap_or_else(|_| Err("a check round timed out".into()))
            };
            match r {
                Ok(round) if round.abandon.is_some() => {
                    let n = t.pending() + back.len();
                    t.take(usize::MAX);
                    let why = round.abandon.unwrap_or_default();
                    tracing::warn!(protocol, keys = n, reason = %why,
                        "cross-sidecar checks given up: the leader may have lost data");
                    mirror.sync().mark_out_of_sync(format!(
                        "{n} keys waiting for the cross-sidecar check were given up: {why}"
                    ));
                    t.busy.store(false, Ordering::Release);
                }
                Ok(round) => {
                    failures = 0;
                    t.checked.fetch_add(round.checked as u64, Ordering::Relaxed);
                    t.repaired
                        .fetch_add(round.repaired as u64, Ordering::Relaxed);
                    t.conflicts
                        .fetch_add(round.conflicts as u64, Ordering::Relaxed);
                    t.checked_c.increment(round.checked as u64);
                    t.repaired_c.increment(round.repaired as u64);
                    if round.repaired > 0 {
                        tracing::debug!(
                            protocol,
                            repaired = round.repaired,
                            "follower keys repaired from the leader (another sidecar's older write had landed last)"
                        );
                    }
                    if let Some(first) = round.refused.first() {
                        mirror.sync().mark_refused_detail(
                            format!(
                                "the follower refused {} repair(s) from the leader",
                                round.refused.len()
                            ),
                            &format!("e.g. {first}"),
                        );
                    }
                    t.note(round.retry);
                    t.busy.store(false, Ordering::Release);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 3 {
                        tracing::warn!(protocol, error = %e, pending = t.pending() + back.len(),
                            "cannot check mirrored keys against the leader; retrying");
                    }
                    *lock(&t.last_error) = Some(e);
                    t.note(back);
                    t.busy.store(false, Ordering::Release);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    });
}
