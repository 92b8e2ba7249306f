//! The generation marker: how statemirror tells "the follower missed writes" from "the
//! leader lost data".
//!
//! Both backends hold a small marker of statemirror's own (a counter; Redis: the key
//! `statemirror:generation`). While the follower is known to be in sync and the mirror is
//! drained, the counter is advanced now and then, on the leader first, then on the
//! follower. A crash between the two writes leaves the leader ahead, which reads as "the
//! follower is behind": a resync, which is safe. So the only way for the follower to be
//! ahead of the leader is for the leader to lose data:
//!
//! | leader | follower | verdict |
//! |---|---|---|
//! | g | g | fine |
//! | none | none | new deployment: the first advance creates the marker |
//! | g | older or none | the follower missed writes or was restored: resync (leader → follower) |
//! | older or none | g | **the leader lost data**: restarted empty or restored from an older backup |
//!
//! On leader data loss nothing is resynced automatically in either direction
//! (`SyncState::set_leader_data_loss`; a resync would copy the emptied leader over the
//! follower, the only full copy): `/status`, the log and `statemirror_leader_data_loss` say
//! what was found, and `statemirror recover --from-follower` copies back what the leader
//! lacks without overwriting anything written since. A forced resync remains possible.
//!
//! Nothing is written while writes are frozen for maintenance (a backup taken then must be
//! stable). "Leader lost" and "follower behind" must hold on two checks in a row ("leader
//! lost" with the mirror drained at the second): a `FLUSHALL` replayed through the mirror
//! briefly reads as "leader none, follower g", and another sidecar advancing the marker
//! (leader first) briefly reads as the follower behind.
//!
//! The markers also tell whether a restart can skip the resync at start: a graceful stop
//! with everything mirrored records them on the leader ([`CleanStop`]); the next start of
//! that node consumes the record and trusts the follower only if the markers still agree
//! and are not older ([`clean_start`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::freeze::Freeze;
use super::queue::MirrorView;
use super::resync::BoxFuture;

/// `(leader, follower)` markers; `None` where the marker does not exist.
pub type Pair = (Option<u64>, Option<u64>);

/// The two backends' markers, protocol-specific.
pub trait Markers: Send + Sync {
    fn read(&self) -> BoxFuture<'_, Result<Pair, String>>;
    /// Sets the marker on the leader, then on the follower.
    fn write(&self, generation: u64) -> BoxFuture<'_, Result<(), String>>;
    /// Writes `node`'s clean-stop record on the leader (see [`CleanStop`]).
    fn put_clean<'a>(
        &'a self,
        node: &'a str,
        rec: &'a CleanStop,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Reads and deletes `node`'s clean-stop record on the leader (at most one start uses it).
    fn take_clean<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<CleanStop>, String>>;
}

/// What a sidecar leaves on the leader when it stopped gracefully with every acknowledged
/// write on the follower (`App::stop`): the markers as they were then. The next start of
/// that node consumes it: if the markers still agree and are not older, nothing can have
/// been lost in between, and the follower is not marked out of sync at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CleanStop {
    pub leader: Option<u64>,
    pub follower: Option<u64>,
    pub at_ms: u64,
}

/// Whether markers read at start (`now`) show nothing lost since the clean stop `rec`: they
/// agree, and are not older than at the stop (an older or missing one means a backend was
/// restored or restarted empty). `None` when `now` may be mid-advance (the leader is
/// written first): worth reading again.
pub fn clean_since(rec: &CleanStop, now: Pair) -> Option<bool> {
    let then = judge(rec.leader, rec.follower);
    match (then, judge(now.0, now.1)) {
        (Verdict::Same(g0), Verdict::Same(g)) => Some(g >= g0),
        (Verdict::Fresh, Verdict::Same(_) | Verdict::Fresh) => Some(true),
        // Another sidecar between its leader and follower write, the follower not older.
        (Verdict::Same(g0), Verdict::FollowerBehind) if now.1.is_some_and(|f| f >= g0) => None,
        (Verdict::Fresh, Verdict::FollowerBehind) => None,
        _ => Some(false),
    }
}

/// At start: consumes `node`'s clean-stop record and tells whether the follower can be
/// trusted to hold everything (true: no resync at start). Reads the markers again for a
/// while when they are mid-advance; the caller bounds the whole in time.
pub async fn clean_start(markers: &dyn Markers, node: &str) -> Result<bool, String> {
    let Some(rec) = markers.take_clean(node).await? else {
        return Ok(false);
    };
    for _ in 0..10 {
        if let Some(ok) = clean_since(&rec, markers.read().await?) {
            return Ok(ok);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// At a graceful stop with the follower in sync and drained: records it, with the markers
/// agreeing (read again while another sidecar is mid-advance). `Ok(false)` when they do not.
pub async fn record_clean_stop(markers: &dyn Markers, node: &str) -> Result<bool, String> {
    for _ in 0..10 {
        let (leader, follower) = markers.read().await?;
        if matches!(judge(leader, follower), Verdict::Same(_) | Verdict::Fresh) {
            let rec = CleanStop {
                leader,
                follower,
                at_ms: super::cluster::now_ms(),
            };
            markers.put_clean(node, &rec).await?;
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Same(u64),
    Fresh,
    FollowerBehind,
    LeaderLost,
}

pub fn judge(leader: Option<u64>, follower: Option<u64>) -> Verdict {
    match (leader, follower) {
        (None, None) => Verdict::Fresh,
        (Some(l), Some(f)) if l == f => Verdict::Same(l),
        (Some(l), Some(f)) if l > f => Verdict::FollowerBehind,
        (Some(_), None) => Verdict::FollowerBehind,
        _ => Verdict::LeaderLost,
    }
}

/// What `recover --from-follower` did, per protocol.
#[derive(Debug, Default, serde::Serialize)]
pub struct Recovery {
    /// Keys / nodes copied from the follower to the leader (the leader did not have them).
    pub restored: u64,
    /// Keys / nodes the leader has (written since it lost data): kept, never overwritten.
    pub kept_on_leader: u64,
    pub leader_generation: Option<u64>,
    pub follower_generation: Option<u64>,
    /// The marker both sides hold afterwards.
    pub generation: u64,
}

/// How often both markers are read.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often the counter is advanced while the follower is in sync.
const ADVANCE_EVERY: Duration = Duration::from_secs(30);

/// Set once the first check has run (or could not run three times): the resync at start
/// waits for it, so it never copies a leader that lost data before anyone looked.
pub struct Checked(AtomicBool);

impl Checked {
    pub fn new(done: bool) -> Arc<Self> {
        Arc::new(Self(AtomicBool::new(done)))
    }

    pub fn done(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

pub fn spawn(
    markers: Arc<dyn Markers>,
    view: Arc<dyn MirrorView>,
    checked: Arc<Checked>,
    freeze: Arc<Freeze>,
    protocol: &'static str,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut failures = 0;
        // The previous check's verdict: "leader lost" and "follower behind" are acted on only
        // when two checks in a row agree. Another sidecar advancing the marker (leader
        // first, then follower) reads as "follower behind" for a round trip; a replayed
        // `FLUSHALL` reads as "leader lost" for the mirror lag.
        let mut previous: Option<Verdict> = None;
        let mut advanced: Option<Instant> = None;
        // The sync epoch at which the follower was last seen behind while a resync was due:
        // once the follower is in sync at that same epoch, that resync covered it, and the
        // follower gets the leader's marker (resync never copies the marker itself).
        let mut behind_at: Option<u64> = None;
        loop {
            match markers.read().await {
                Ok((leader, follower)) => {
                    let sync = view.sync();
                    let verdict = judge(leader, follower);
                    match verdict {
                        Verdict::LeaderLost
                            if previous == Some(Verdict::LeaderLost) && view.is_drained() =>
                        {
                            sync.set_leader_data_loss(format!(
                                "the leader's generation marker is {} but the follower's is {}: \
                                 the leader restarted empty or was restored from an older \
                                 backup, and the follower holds data it lost. Run `statemirror \
                                 recover --from-follower` to copy that data back (nothing \
                                 written since is overwritten), or force a resync to make the \
                                 follower equal the leader as it is now",
                                leader.map_or("gone".into(), |g| g.to_string()),
                                follower.map_or("gone".into(), |g| g.to_string()),
                            ));
                        }
                        Verdict::LeaderLost => {}
                        Verdict::FollowerBehind
                            if sync.in_sync()
                                && behind_at == Some(sync.epoch())
                                && !freeze.is_frozen() =>
                        {
                            if let Some(g) = leader {
                                match markers.write(g).await {
                                    Ok(()) => behind_at = None,
                                    Err(e) => {
                                        tracing::debug!(protocol, error = %e, "generation not copied to the follower")
                                    }
                                }
                            }
                        }
                        Verdict::FollowerBehind
                            if sync.in_sync() && previous == Some(Verdict::FollowerBehind) =>
                        {
                            sync.mark_out_of_sync(
                                "the follower's generation marker is behind the leader's: it \
                                 was restored from a backup or missed writes",
                            );
                            behind_at = Some(sync.epoch());
                        }
                        Verdict::FollowerBehind if !sync.in_sync() => {
                            behind_at = Some(sync.epoch())
                        }
                        Verdict::FollowerBehind => {} // confirmed (or not) at the next check

                        Verdict::Same(_) | Verdict::Fresh => sync.clear_leader_data_loss(),
                    }
                    previous = Some(verdict);
                    checked.0.store(true, Ordering::Release);
                    failures = 0;
                    let due = advanced.is_none_or(|t| t.elapsed() >= ADVANCE_EVERY);
                    let next = match verdict {
                        Verdict::Same(g) => Some(g + 1),
                        Verdict::Fresh => Some(1),
                        _ => None,
                    };
                    if let (Some(g), true) = (next, due) {
                        // Not while writes are frozen: a backup taken then must be stable.
                        if sync.in_sync()
                            && view.is_drained()
                            && !freeze.is_frozen()
                            && sync.leader_data_loss().is_none()
                        {
                            match markers.write(g).await {
                                Ok(()) => advanced = Some(Instant::now()),
                                Err(e) => {
                                    tracing::debug!(protocol, error = %e, "generation not advanced")
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 3 {
                        tracing::warn!(protocol, error = %e, "cannot read the generation markers; leader data loss cannot be told from a follower that missed writes until they can be read");
                        checked.0.store(true, Ordering::Release);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_follower_ahead_of_the_leader_means_leader_data_loss() {
        assert_eq!(judge(Some(4), Some(4)), Verdict::Same(4));
        assert_eq!(judge(None, None), Verdict::Fresh);
        assert_eq!(judge(Some(5), Some(4)), Verdict::FollowerBehind);
        assert_eq!(judge(Some(5), None), Verdict::FollowerBehind);
        assert_eq!(judge(None, Some(4)), Verdict::LeaderLost);
        assert_eq!(judge(Some(3), Some(4)), Verdict::LeaderLost);
    }

    #[test]
    fn a_clean_stop_counts_only_while_the_markers_agree_and_are_not_older() {
        let rec = |l, f| CleanStop {
            leader: l,
            follower: f,
            at_ms: 0,
        };
        let r = rec(Some(5), Some(5));
        assert_eq!(clean_since(&r, (Some(5), Some(5))), Some(true));
        assert_eq!(clean_since(&r, (Some(9), Some(9))), Some(true));
        assert_eq!(clean_since(&r, (Some(4), Some(4))), Some(false), "restored");
        assert_eq!(clean_since(&r, (None, Some(5))), Some(false), "leader lost");
        assert_eq!(
            clean_since(&r, (Some(5), None)),
            Some(false),
            "follower lost"
        );
        assert_eq!(clean_since(&r, (Some(6), Some(5))), None, "mid-advance");
        assert_eq!(clean_since(&r, (Some(6), Some(4))), Some(false));
        assert_eq!(clean_since(&rec(None, None), (None, None)), Some(true));
        assert_eq!(
            clean_since(&rec(None, None), (Some(1), Some(1))),
            Some(true)
        );
        assert_eq!(clean_since(&rec(None, None), (None, Some(1))), Some(false));
    }
}
