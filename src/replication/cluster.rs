//! The cluster-wide freeze and member list, kept in the leader backend so that no sidecar
//! needs to know its peers.
//!
//! The leader holds (Redis / ZooKeeper; see `redis::cluster`, `zookeeper::cluster`):
//! - the freeze state `{epoch, frozen, by, at_ms}`; every freeze or unfreeze bumps `epoch`;
//! - one entry per sidecar ([`MemberReport`]), refreshed every third of `member_ttl_ms` and
//!   gone after it (a key with a TTL / an ephemeral znode of a session with that timeout).
//!
//! Every sidecar polls the state ([`POLL`]) and sets its [`Freeze`]'s cluster source to
//! match. Once frozen at epoch `e` with no write in flight and its mirror drained, it
//! confirms `frozen_epoch = e` in its entry at once. The node asked to freeze bumps the epoch
//! and waits until every listed member confirmed it: only then is the freeze proven. A
//! member whose entry expired is not waited for: it has not refreshed it for `member_ttl_ms`,
//! so its write lease ran out before the entry did (see `freeze`): it refuses writes until
//! it has read the state again, which then says frozen.
//!
//! None of this is client data: it is written on statemirror's own connections (so it is
//! never mirrored, and never refused by the freeze), and verify and resync skip it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::freeze::Freeze;
use super::queue::{lock, MirrorView};
use super::resync::BoxFuture;

/// How often each sidecar reads the freeze state (at most a third of the member TTL).
pub const POLL: Duration = Duration::from_millis(500);
/// How often while a freeze is not yet confirmed here (writes or the mirror still draining).
const POLL_PENDING: Duration = Duration::from_millis(50);

/// The cluster-wide freeze as stored in the leader; all zero/empty when never set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeState {
    pub epoch: u64,
    pub frozen: bool,
    /// The node that set it last.
    pub by: String,
    /// When, in ms since the Unix epoch (that node's clock).
    pub at_ms: u64,
}

/// One sidecar's entry, written by itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberReport {
    pub node: String,
    /// The freeze epoch this member saw last.
    pub epoch: u64,
    /// The epoch of the cluster freeze it confirmed (no write in flight, mirror drained);
    /// 0 when it is not frozen by the cluster.
    pub frozen_epoch: u64,
    /// Writes refused here because of the cluster-wide freeze.
    pub cluster_frozen: bool,
    /// Writes refused here because of this sidecar's own `PUT /maintenance`.
    pub local_maintenance: bool,
    pub writes_in_flight: usize,
    pub writes_drained: bool,
    pub mirror_drained: bool,
    pub queue_depth: usize,
    pub lag_seconds: f64,
    pub in_sync: bool,
    /// Its clock when it wrote the entry (ms since the Unix epoch).
    pub heartbeat_ms: u64,
    pub ttl_ms: u64,
}

/// A member as listed: its entry and how old it is by the backend's clock where it can tell.
#[derive(Debug, Clone)]
pub struct Member {
    pub report: MemberReport,
    pub heartbeat_age_ms: u64,
}

/// Where the state lives: the leader backend of one protocol.
pub trait ClusterStore: Send + Sync {
    /// `redis` or `zookeeper`.
    fn backend(&self) -> &'static str;
    fn read(&self) -> BoxFuture<'_, Result<FreezeState, String>>;
    /// Sets `frozen` and bumps the epoch (atomically); returns the new epoch.
    fn set<'a>(&'a self, frozen: bool, by: &'a str) -> BoxFuture<'a, Result<u64, String>>;
    /// Writes (creates or refreshes) this member's entry.
    fn heartbeat<'a>(&'a self, m: &'a MemberReport) -> BoxFuture<'a, Result<(), String>>;
    /// Every member whose entry has not expired.
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, String>>;
    /// Removes this member's entry (graceful stop).
    fn leave<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Takes the lease `name` for `holder` (see [`Lease`]): `Ok(None)` when `holder` holds it
    /// now, `Ok(Some(other))` when `other` does. A lease found under `holder`'s own name is
    /// one an earlier run of `holder` left behind: it is taken over.
    fn lease_acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>>;
    /// Extends the lease; `Ok(false)` when `holder` may not have held it without a break
    /// since it took it (expired, taken by another, or its session changed).
    fn lease_renew<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>>;
    /// Gives the lease up if `holder` still holds it.
    fn lease_release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// A lease in the leader backend: at most one resync (or `recover`) per follower at a time
/// across the cluster. Redis: a key with a TTL of `member_ttl_ms`, renewed every third of
/// it; ZooKeeper: an ephemeral znode of the cluster session (timeout `member_ttl_ms`).
pub struct Lease {
    store: Arc<dyn ClusterStore>,
    /// One lease per follower: the protocol's name (`redis`, `zookeeper`).
    pub name: String,
    /// Who takes it: the node name (`<node>.recover` for the CLI).
    pub holder: String,
    ttl: Duration,
}

impl Lease {
    pub fn new(store: Arc<dyn ClusterStore>, name: &str, holder: &str, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            name: name.into(),
            holder: holder.into(),
            ttl,
        })
    }

    /// `Ok(None)`: held by us now; `Ok(Some(holder))`: held by someone else.
    pub async fn acquire(&self) -> Result<Option<String>, String> {
        self.store.lease_acquire(&self.name, &self.holder).await
    }

    /// Best effort (each backend call is bounded by the store's timeout).
    pub async fn release(&self) {
        if let Err(e) = self.store.lease_release(&self.name, &self.holder).await {
            tracing::debug!(lease = %self.name, error = %e, "resync lease not released; it expires");
        }
    }

    /// Renews the lease every third of its TTL until it is lost (`Some(why)`) or `stop` is
    /// cancelled (`None`). A renewal that fails is retried until two thirds of the TTL passed
    /// since the last good one: past that, another node may already have taken it. Never
    /// dropped mid-call by `stop` (a half-read reply would leave the store's connection out
    /// of step): each call is bounded by the store's own timeout.
    pub async fn hold(&self, stop: &CancellationToken) -> Option<String> {
        let every = self.ttl / 3;
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(every) => {}
            }
            let started = Instant::now();
            match self.store.lease_renew(&self.name, &self.holder).await {
                Ok(true) => last_ok = started,
                Ok(false) => return Some("the lease was lost (expired or taken)".into()),
                Err(e) if last_ok.elapsed() >= self.ttl * 2 / 3 => {
                    return Some(format!("the lease could not be renewed: {e}"))
                }
                Err(_) => {}
            }
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Seen {
    state: FreezeState,
    /// Epoch of the cluster freeze confirmed here; 0 = none.
    confirmed: u64,
    last_error: Option<String>,
    last_read: Option<Instant>,
    /// When the last successful entry write started: the entry lives at least until this
    /// plus the TTL.
    beat_started: Option<Instant>,
    /// What the last written entry said (the fields that matter to a waiting caller).
    written: Option<(u64, u64, bool)>,
    written_at: Option<Instant>,
}

pub struct Cluster {
    pub node: String,
    store: Arc<dyn ClusterStore>,
    freeze: Arc<Freeze>,
    mirrors: OnceLock<Vec<(&'static str, Arc<dyn MirrorView>)>>,
    ttl: Duration,
    seen: Mutex<Seen>,
    wake: Notify,
}

impl Cluster {
    pub fn new(
        node: String,
        store: Arc<dyn ClusterStore>,
        freeze: Arc<Freeze>,
        ttl: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            store,
            freeze,
            mirrors: OnceLock::new(),
            ttl,
            seen: Mutex::new(Seen::default()),
            wake: Notify::new(),
        })
        .without_lease()
    }

    /// No writes until this sidecar is listed and has read the state since (see `tick`).
    fn without_lease(self: Arc<Self>) -> Arc<Self> {
        self.freeze.set_lease(Instant::now());
        self
    }

    /// Where the cluster state lives (for the resync leases).
    pub fn store(&self) -> Arc<dyn ClusterStore> {
        self.store.clone()
    }

    fn mirrors(&self) -> &[(&'static str, Arc<dyn MirrorView>)] {
        self.mirrors.get().map_or(&[], Vec::as_slice)
    }

    /// Reads the freeze state once and applies it to this sidecar's freeze.
    async fn sync_once(&self) -> Result<(), String> {
        let st = match self.store.read().await {
            Ok(st) => st,
            Err(e) => {
                lock(&self.seen).last_error = Some(e.clone());
                return Err(e);
            }
        };
        // The flag first, then the drain check: once the flag is set no write starts, so a
        // zero in-flight count seen after it stays zero (see `freeze`).
        self.freeze.set_cluster(st.frozen);
        let drained =
            self.freeze.in_flight() == 0 && self.mirrors().iter().all(|(_, m)| m.is_drained());
        let mut seen = lock(&self.seen);
        if !st.frozen {
            seen.confirmed = 0;
        } else if seen.confirmed < st.epoch && drained {
            seen.confirmed = st.epoch;
        }
        seen.state = st;
        seen.last_error = None;
        seen.last_read = Some(Instant::now());
        Ok(())
    }

    /// This sidecar's entry as of now.
    pub fn report(&self) -> MemberReport {
        let seen = lock(&self.seen);
        let mirrors = self.mirrors();
        let confirmed = seen.state.frozen && seen.confirmed >= seen.state.epoch;
        let st: Vec<_> = mirrors.iter().map(|(_, m)| m.status()).collect();
        MemberReport {
            node: self.node.clone(),
            epoch: seen.state.epoch,
            frozen_epoch: if seen.state.frozen { seen.confirmed } else { 0 },
            cluster_frozen: self.freeze.is_cluster_frozen(),
            local_maintenance: self.freeze.is_frozen_locally(),
            writes_in_flight: self.freeze.in_flight(),
            writes_drained: confirmed || self.freeze.in_flight() == 0,
            mirror_drained: confirmed || mirrors.iter().all(|(_, m)| m.is_drained()),
            queue_depth: st.iter().map(|s| s.queue_depth).sum(),
            lag_seconds: st.iter().map(|s| s.lag_seconds).fold(0.0, f64::max),
            in_sync: st.iter().all(|s| s.in_sync),
            heartbeat_ms: now_ms(),
            ttl_ms: self.ttl.as_millis() as u64,
        }
    }

    /// Writes this member's entry when what a waiting caller looks at changed, or when a
    /// refresh is due. True when it was written.
    async fn beat(&self) -> bool {
        let r = self.report();
        let key = (r.epoch, r.frozen_epoch, r.cluster_frozen);
        let due = {
            let seen = lock(&self.seen);
            seen.written != Some(key) || seen.written_at.is_none_or(|t| t.elapsed() >= self.ttl / 3)
        };
        if !due {
            return false;
        }
        match self.store.heartbeat(&r).await {
            Ok(()) => {
                let mut seen = lock(&self.seen);
                seen.written = Some(key);
                seen.written_at = Some(Instant::now());
                true
            }
            Err(e) => {
                lock(&self.seen).last_error = Some(format!("heartbeat: {e}"));
                false
            }
        }
    }

    /// One round: read the state, renew the write lease, refresh the entry.
    ///
    /// The lease: writes may flow until the last entry write's start plus the TTL, and only
    /// after a read that began once that write was done. So whenever this sidecar takes a
    /// write, its entry has been listed without a break since a read that saw no freeze. A
    /// caller that set a freeze and then listed the members either saw this one (and waits
    /// for it) or listed after the entry expired, when the lease had already run out.
    pub async fn tick(&self) -> Result<(), String> {
        let read_started = Instant::now();
        let read = self.sync_once().await;
        let written = lock(&self.seen).beat_started;
        if let (Ok(()), Some(w)) = (&read, written) {
            if read_started < w + self.ttl {
                self.freeze.set_lease(w + self.ttl);
            }
        }
        let beat_started = Instant::now();
        if self.beat().await {
            lock(&self.seen).beat_started = Some(beat_started);
        }
        read
    }

    /// Polls the state and refreshes this member's entry until `shutdown`.
    pub fn spawn(
        self: &Arc<Self>,
        mirrors: Vec<(&'static str, Arc<dyn MirrorView>)>,
        shutdown: CancellationToken,
    ) {
        let _ = self.mirrors.set(mirrors);
        let me = self.clone();
        tokio::spawn(async move {
            let poll = POLL.min(me.ttl / 3);
            let mut failures = 0u32;
            loop {
                let read = me.tick().await;
                match read {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        // Once per streak: the leader being down is reported elsewhere.
                        if failures == 3 {
                            tracing::warn!(backend = me.store.backend(), error = %e,
                                "cannot read the cluster freeze state from the leader; keeping the last one seen, and refusing writes once member_ttl_ms passed without it");
                        }
                    }
                }
                let pending = {
                    let seen = lock(&me.seen);
                    seen.state.frozen && seen.confirmed < seen.state.epoch
                };
                // Just listed (or listed again): the lease needs one more read, at once.
                let wait = if pending || me.freeze.lease_expired() {
                    POLL_PENDING
                } else {
                    poll
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = me.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            // A graceful stop leaves the list at once instead of after the TTL.
            let _ = tokio::time::timeout(Duration::from_secs(2), me.store.leave(&me.node)).await;
        });
    }

    /// Freezes (or unfreezes) every sidecar of the cluster and waits, at most `timeout`, until
    /// every listed member confirmed it. `(proven, answer)`.
    pub async fn set_cluster(&self, frozen: bool, timeout: Duration) -> (bool, Value) {
        let started = Instant::now();
        let epoch = match self.store.set(frozen, &self.node).await {
            Ok(e) => e,
            Err(e) => {
                return (
                    false,
                    json!({"proven": false, "error": format!("cannot write the cluster freeze state on the {} leader: {e}", self.store.backend())}),
                )
            }
        };
        tracing::info!(epoch, frozen, "cluster-wide freeze state set");
        self.wake.notify_one();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let listed = self.store.members().await;
            let (members, error) = match listed {
                Ok(m) => (m, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            let done = |m: &Member| {
                let r = &m.report;
                r.epoch >= epoch
                    && if frozen {
                        r.cluster_frozen && r.frozen_epoch >= epoch
                    } else {
                        !r.cluster_frozen
                    }
            };
            let me_listed = members.iter().any(|m| m.report.node == self.node);
            let proven = error.is_none() && me_listed && members.iter().all(done);
            let timed_out = tokio::time::Instant::now() >= deadline;
            if proven || timed_out {
                let unconfirmed: Vec<&str> = members
                    .iter()
                    .filter(|m| !done(m))
                    .map(|m| m.report.node.as_str())
                    .collect();
                let list: Vec<Value> = members
                    .iter()
                    .map(|m| {
                        let mut v = self.member_json(m);
                        v["confirmed"] = json!(done(m));
                        v
                    })
                    .collect();
                let what = if frozen { "frozen" } else { "resumed" };
                let mut body = json!({
                    "cluster_frozen": frozen,
                    "epoch": epoch,
                    "proven": proven,
                    "waited_ms": started.elapsed().as_millis() as u64,
                    "members": list,
                    "unconfirmed": unconfirmed,
                });
                if !proven {
                    body["error"] = json!(match (&error, me_listed) {
                        (Some(e), _) => format!("cannot list the members: {e}"),
                        (None, false) => format!("this sidecar ({}) is not listed yet", self.node),
                        (None, true) => format!(
                            "not proven: {} did not confirm writes {what} within {} ms",
                            unconfirmed.join(", "),
                            timeout.as_millis()
                        ),
                    });
                }
                return (proven, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn member_json(&self, m: &Member) -> Value {
        let r = &m.report;
        json!({
            "node": r.node,
            "frozen": r.cluster_frozen || r.local_maintenance,
            "cluster_frozen": r.cluster_frozen,
            "local_maintenance": r.local_maintenance,
            "epoch": r.epoch,
            "frozen_epoch": r.frozen_epoch,
            "writes_in_flight": r.writes_in_flight,
            "writes_drained": r.writes_drained,
            "mirror_drained": r.mirror_drained,
            "queue_depth": r.queue_depth,
            "lag_seconds": r.lag_seconds,
            "in_sync": r.in_sync,
            "heartbeat_age_ms": m.heartbeat_age_ms,
            // Missed two refreshes: probably gone; dropped once its TTL passes.
            "stale": m.heartbeat_age_ms > r.ttl_ms * 2 / 3,
        })
    }

    /// `GET /cluster`: the freeze state and every listed member.
    pub async fn status(&self) -> Result<Value, String> {
        let (st, members) = tokio::join!(self.store.read(), self.store.members());
        let st = st?;
        let mut members = members?;
        members.sort_by(|a, b| a.report.node.cmp(&b.report.node));
        Ok(json!({
            "node": self.node,
            "backend": self.store.backend(),
            "maintenance": {
                "frozen": st.frozen,
                "epoch": st.epoch,
                "by": st.by,
                "at_ms": st.at_ms,
            },
            "members": members.iter().map(|m| self.member_json(m)).collect::<Vec<_>>(),
        }))
    }

    /// For `/maintenance` and `/status`: what this sidecar last saw.
    pub fn local_view(&self) -> Value {
        let seen = lock(&self.seen);
        json!({
            "node": self.node,
            "backend": self.store.backend(),
            "cluster_frozen": seen.state.frozen,
            "epoch": seen.state.epoch,
            "confirmed_epoch": seen.confirmed,
            "lease_expired": self.freeze.lease_expired(),
            "last_read_ms_ago": seen.last_read.map(|t| t.elapsed().as_millis() as u64),
            "last_error": seen.last_error.as_deref().map(super::public::error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in memory; `down` makes every call fail.
    #[derive(Default)]
    struct Mem {
        state: Mutex<FreezeState>,
        members: Mutex<Vec<MemberReport>>,
        down: std::sync::atomic::AtomicBool,
        /// Entry writes fail, reads work.
        beats_down: std::sync::atomic::AtomicBool,
        lease: Mutex<Option<String>>,
    }

    impl Mem {
        fn check(&self) -> Result<(), String> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                Err("down".into())
            } else {
                Ok(())
            }
        }
    }

    impl ClusterStore for Mem {
        fn backend(&self) -> &'static str {
            "mem"
        }
        fn read(&self) -> BoxFuture<'_, Result<FreezeState, String>> {
            Box::pin(async move { self.check().map(|()| lock(&self.state).clone()) })
        }
        fn set<'a>(&'a self, frozen: bool, by: &'a str) -> BoxFuture<'a, Result<u64, String>> {
            Box::pin(async move {
                self.check()?;
                let mut st = lock(&self.state);
                st.epoch += 1;
                st.frozen = frozen;
                st.by = by.into();
                Ok(st.epoch)
            })
        }
        fn heartbeat<'a>(&'a self, m: &'a MemberReport) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                self.check()?;
                if self.beats_down.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err("read-only".into());
                }
                let mut ms = lock(&self.members);
                ms.retain(|x| x.node != m.node);
                ms.push(m.clone());
                Ok(())
            })
        }
        fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, String>> {
            Box::pin(async move {
                self.check()?;
                Ok(lock(&self.members)
                    .iter()
                    .map(|r| Member {
                        report: r.clone(),
                        heartbeat_age_ms: 0,
                    })
                    .collect())
            })
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
                self.check()?;
                let mut l = lock(&self.lease);
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
            Box::pin(async move {
                self.check()?;
                Ok(lock(&self.lease).as_deref() == Some(holder))
            })
        }
        fn lease_release<'a>(
            &'a self,
            _: &'a str,
            holder: &'a str,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                let mut l = lock(&self.lease);
                if l.as_deref() == Some(holder) {
                    *l = None;
                }
                Ok(())
            })
        }
    }

    fn cluster(store: &Arc<Mem>, ttl: Duration) -> (Arc<Cluster>, Arc<Freeze>) {
        let freeze = Freeze::new();
        let c = Cluster::new("n1".into(), store.clone(), freeze.clone(), ttl);
        (c, freeze)
    }

    #[tokio::test]
    async fn a_lease_has_one_holder_and_its_hold_ends_when_another_takes_it() {
        let store = Arc::new(Mem::default());
        let ttl = Duration::from_millis(90);
        let a = Lease::new(store.clone(), "redis", "a", ttl);
        let b = Lease::new(store.clone(), "redis", "b", ttl);
        assert_eq!(a.acquire().await, Ok(None));
        assert_eq!(b.acquire().await, Ok(Some("a".into())));
        assert_eq!(a.acquire().await, Ok(None), "its own name: taken over");
        // Held while renewals work; lost when someone else holds it.
        let stop = CancellationToken::new();
        let held = tokio::time::timeout(ttl * 3, a.hold(&stop)).await;
        assert!(held.is_err(), "still held: {held:?}");
        *lock(&store.lease) = Some("b".into());
        let lost = tokio::time::timeout(ttl * 3, a.hold(&stop)).await;
        assert!(matches!(lost, Ok(Some(_))), "{lost:?}");
        a.release().await;
        assert_eq!(
            lock(&store.lease).as_deref(),
            Some("b"),
            "not a's to release"
        );
        b.release().await;
        assert_eq!(a.acquire().await, Ok(None));
        stop.cancel();
        assert_eq!(a.hold(&stop).await, None, "stopped");
    }

    #[tokio::test]
    async fn no_write_before_listed_and_read_since() {
        let store = Arc::new(Mem::default());
        let (c, freeze) = cluster(&store, Duration::from_secs(60));
        assert!(freeze.begin_write().is_none(), "not listed yet");
        c.tick().await.unwrap();
        assert!(
            freeze.begin_write().is_none(),
            "listed by this round: its read came before the entry existed"
        );
        c.tick().await.unwrap();
        assert!(freeze.begin_write().is_some());
    }

    #[tokio::test]
    async fn started_during_a_freeze_stays_frozen_and_confirms() {
        let store = Arc::new(Mem::default());
        store.set(true, "n0").await.unwrap();
        let (c, freeze) = cluster(&store, Duration::from_secs(60));
        c.tick().await.unwrap();
        c.tick().await.unwrap();
        assert!(freeze.begin_write().is_none() && freeze.is_cluster_frozen());
        let me = &lock(&store.members)[0];
        assert_eq!((me.frozen_epoch, me.cluster_frozen), (1, true));
    }

    #[tokio::test]
    async fn the_lease_runs_out_when_the_state_cannot_be_read() {
        let store = Arc::new(Mem::default());
        let ttl = Duration::from_millis(300);
        let (c, freeze) = cluster(&store, ttl);
        c.tick().await.unwrap();
        c.tick().await.unwrap();
        assert!(freeze.begin_write().is_some());
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(c.tick().await.is_err());
        // Past the TTL of the last entry write (a lower bound: no upper bound is assumed).
        std::thread::sleep(ttl + Duration::from_millis(50));
        assert!(c.tick().await.is_err());
        assert!(
            freeze.begin_write().is_none(),
            "the lease ran out with the entry"
        );
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        c.tick().await.unwrap(); // listed again
        c.tick().await.unwrap(); // read since
        assert!(freeze.begin_write().is_some());
    }

    #[tokio::test]
    async fn the_lease_runs_out_with_the_entry_even_while_reads_work() {
        let store = Arc::new(Mem::default());
        let ttl = Duration::from_millis(300);
        let (c, freeze) = cluster(&store, ttl);
        c.tick().await.unwrap();
        c.tick().await.unwrap();
        assert!(freeze.begin_write().is_some());
        store
            .beats_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(ttl + Duration::from_millis(50));
        c.tick().await.unwrap();
        assert!(
            freeze.begin_write().is_none(),
            "the entry expired: a freeze may have been proven without this member"
        );
    }

    #[tokio::test]
    async fn a_cluster_freeze_is_proven_only_when_every_member_confirmed() {
        let store = Arc::new(Mem::default());
        let (c, _) = cluster(&store, Duration::from_secs(60));
        c.tick().await.unwrap();
        // Another member, listed but silent: never confirms.
        lock(&store.members).push(MemberReport {
            node: "n2".into(),
            ttl_ms: 60_000,
            ..MemberReport::default()
        });
        let c2 = c.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let _ = c2.tick().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let (proven, body) = c.set_cluster(true, Duration::from_millis(300)).await;
        assert!(!proven, "{body}");
        assert_eq!(body["unconfirmed"], json!(["n2"]), "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("not proven"),
            "{body}"
        );
        lock(&store.members).retain(|m| m.node != "n2");
        let (proven, body) = c.set_cluster(true, Duration::from_secs(10)).await;
        ticker.abort();
        assert!(proven, "{body}");
        assert_eq!(body["members"][0]["confirmed"], true, "{body}");
    }
}
