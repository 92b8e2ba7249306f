//! statemirror: a sidecar that speaks a coordination store's native protocol in front of a
//! leader backend, mirrors acknowledged writes asynchronously to a follower in another
//! region, fails reads over to the follower, and can freeze writes for maintenance.
//!
//! # Layout
//! - [`config`]: the TOML file, its defaults, validation with key paths;
//! - [`redis`]: the Redis sidecar (RESP framing, command classification, sessions, mirror);
//! - [`zookeeper`]: the ZooKeeper sidecar (hand-written jute codec, sessions, mirror);
//! - [`listener`]: the accept loop both sidecars share;
//! - [`resolve`]: host names to addresses without the C library (the binary is static);
//! - [`replication`]: the protocol-independent core: mirror queue, follower writer, write
//!   freeze, the cluster-wide freeze (`[cluster]`), backend health;
//! - [`admin`]: the HTTP admin API (`/healthz`, `/readyz`, `/status`, `/metrics`,
//!   `/maintenance`) and its client used by the CLI;
//! - [`sidecar`]: what the admin API needs from a sidecar, whatever its protocol;
//! - [`backup`]: `statemirror backup` / `restore`: the backup file format and both protocols;
//! - [`metrics`]: every metric name; [`telemetry`]: logging.
//!
//! [`start`] runs everything in-process (the binary and the tests both use it).

#![deny(clippy::print_stdout)]

pub mod admin;
pub mod backup;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod migrate;
pub mod nifi;
pub mod redis;
pub mod replication;
pub mod resolve;
mod session_io;
pub mod sidecar;
pub mod telemetry;
pub mod tls;
pub mod zookeeper;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use config::Resolved;
use redis::server::RedisSidecar;
use replication::cluster::{Cluster, ClusterStore, Lease};
use replication::freeze::Freeze;
use replication::generation::{self as gen, Markers};
use replication::queue::{wait_drained, MirrorView};
use replication::resync::Resync;
use sidecar::Sidecar;
use zookeeper::server::ZkSidecar;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `admin.token_file` is not set and the generated token could not be made or written.
    #[error(
        "admin.token_file is not set and no admin token file could be generated ({0}): set \
         admin.token_file, or STATEMIRROR_RUNTIME_DIR to a directory this user can write"
    )]
    Token(std::io::Error),
}

/// A running statemirror.
pub struct App {
    pub admin_addr: SocketAddr,
    pub redis: Option<Arc<RedisSidecar>>,
    pub zookeeper: Option<Arc<ZkSidecar>>,
    pub freeze: Arc<Freeze>,
    /// The cluster-wide freeze and member list (`[cluster]`).
    pub cluster: Option<Arc<Cluster>>,
    /// Stops serving: listeners, sessions (after the replies they owe), health, resync.
    pub shutdown: CancellationToken,
    /// Stops the follower writers: cancelled last, once the mirror drained (see `stop`).
    writer_stop: CancellationToken,
    /// The admin token file generated at start (no `admin.token_file`): removed on stop.
    pub generated_token_file: Option<std::path::PathBuf>,
    drain_timeout: Duration,
    /// This node's name (`cluster.node_name` or the hostname): its clean-stop records.
    node: String,
    /// Per follower: where its clean-stop record goes at a graceful stop.
    followers: Vec<Follower>,
}

/// A sidecar with a follower, as the start and stop decisions need it.
struct Follower {
    protocol: &'static str,
    markers: Arc<dyn Markers>,
    mirror: Arc<dyn MirrorView>,
}

/// How long the start may spend on the clean-stop record before resyncing as after a crash.
const CLEAN_START_TIMEOUT: Duration = Duration::from_secs(3);

impl App {
    pub fn redis_addr(&self) -> Option<SocketAddr> {
        self.redis.as_ref().map(|r| r.local_addr)
    }

    pub fn zookeeper_addr(&self) -> Option<SocketAddr> {
        self.zookeeper.as_ref().map(|z| z.local_addr)
    }

    /// Every running sidecar.
    pub fn sidecars(&self) -> Vec<Arc<dyn Sidecar>> {
        let mut v: Vec<Arc<dyn Sidecar>> = Vec::new();
        if let Some(r) = &self.redis {
            v.push(r.clone());
        }
        if let Some(z) = &self.zookeeper {
            v.push(z.clone());
        }
        v
    }

    pub fn mirrors(&self) -> Vec<(&'static str, Arc<dyn MirrorView>)> {
        self.sidecars()
            .iter()
            .filter_map(|s| Some((s.protocol(), s.mirror()?)))
            .collect()
    }

    /// Waits until every follower is in sync (e.g. the resync at start finished); false on
    /// timeout.
    pub async fn wait_in_sync(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.mirrors().iter().all(|(_, m)| m.sync().in_sync()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops everything at once, the follower writers included, without draining (tests
    /// dropping an in-process instance).
    pub fn abort(&self) {
        self.shutdown.cancel();
        self.writer_stop.cancel();
        self.remove_generated_token();
    }

    fn remove_generated_token(&self) {
        if let Some(p) = &self.generated_token_file {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Graceful stop (SIGTERM): stop accepting and reading requests, let sessions answer
    /// what they owe (their writes are queued for mirroring), then keep the follower
    /// writers running until every queue is empty or `drain_timeout` passed, and only then
    /// stop them. True when everything acknowledged reached the follower; then each follower
    /// in sync gets this node's clean-stop record, and the next start needs no resync.
    pub async fn stop(&self) -> bool {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        self.shutdown.cancel();
        // Writes in flight to the leader hold a ticket until their mirror op is queued.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let replies_done = self.freeze.writes_settled(left).await;
        let mut drained = replies_done;
        for (name, m) in self.mirrors() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if wait_drained(m.as_ref(), left).await {
                tracing::info!(protocol = name, "mirror drained");
            } else {
                drained = false;
                let st = m.status();
                tracing::warn!(
                    protocol = name,
                    queue_depth = st.queue_depth,
                    lag_seconds = st.lag_seconds,
                    drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                    "stopping with writes not yet mirrored; the follower is behind and the \
                     next start resyncs it"
                );
            }
        }
        if !replies_done {
            tracing::warn!(
                writes_in_flight = self.freeze.in_flight(),
                "stopping with writes still in flight to the leader"
            );
        }
        if drained {
            self.record_clean_stops().await;
        }
        self.writer_stop.cancel();
        self.remove_generated_token();
        drained
    }

    /// Everything acknowledged reached the follower: leaves a clean-stop record per follower
    /// that is in sync, so the next start of this node needs no resync (see
    /// `replication::generation::CleanStop`).
    async fn record_clean_stops(&self) {
        for f in &self.followers {
            let sync = f.mirror.sync();
            if !sync.in_sync() || sync.leader_data_loss().is_some() {
                tracing::info!(protocol = f.protocol, "the follower is not in sync: no clean stop recorded; the next start resyncs it");
                continue;
            }
            let r = tokio::time::timeout(
                CLEAN_START_TIMEOUT,
                gen::record_clean_stop(f.markers.as_ref(), &self.node),
            )
            .await;
            match r {
                Ok(Ok(true)) => tracing::info!(
                    protocol = f.protocol,
                    node = %self.node,
                    "clean stop recorded; the next start needs no resync"
                ),
                Ok(Ok(false)) => tracing::info!(
                    protocol = f.protocol,
                    "the generation markers disagree: no clean stop recorded"
                ),
                Ok(Err(e)) => tracing::warn!(protocol = f.protocol, error = %e,
                    "cannot record the clean stop; the next start resyncs the follower"),
                Err(_) => tracing::warn!(
                    protocol = f.protocol,
                    "recording the clean stop timed out; the next start resyncs the follower"
                ),
            }
        }
    }
}

/// Decides, once, whether `resync` must resync the follower at start: only when the previous
/// run of `node` left no clean-stop record, or the markers show a loss since (see
/// `replication::generation::clean_start`). No resync runs before. The record is consumed
/// either way; when it cannot be read in time, the start resyncs (as after a crash) and
/// the record is deleted later, so that a crash after this start cannot reuse it.
fn decide_start(
    protocol: &'static str,
    markers: Arc<dyn Markers>,
    resync: Arc<Resync>,
    node: String,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let first = tokio::time::timeout(
            CLEAN_START_TIMEOUT,
            gen::clean_start(markers.as_ref(), &node),
        )
        .await;
        let clean = match first {
            Ok(Ok(clean)) => {
                resync.start_decided(clean);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => "timed out".into(),
        };
        tracing::warn!(protocol, error = %clean,
            "cannot read this node's clean-stop record at start: the follower is resynced as after a crash");
        resync.start_decided(false);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Ok(Ok(_)) =
                tokio::time::timeout(CLEAN_START_TIMEOUT, markers.take_clean(&node)).await
            {
                return;
            }
        }
    });
}

/// Binds every listener and starts every task. Returns once all are listening.
pub async fn start(resolved: Resolved) -> Result<App, StartError> {
    let prom = metrics::install();
    let cfg = &resolved.config;
    let shutdown = CancellationToken::new();
    let writer_stop = CancellationToken::new();
    let freeze = Freeze::new();
    let cluster = cluster(&resolved, freeze.clone());
    if let Some(c) = &cluster {
        // Before any listener accepts: read the state, get listed, read again, so the
        // sidecar serves writes from its first client on (unless the cluster is frozen).
        // Until then the write lease refuses them (see `replication::cluster`).
        let first = c.tick().await;
        if let Err(e) = first.and(c.tick().await) {
            tracing::warn!(error = %e, "cannot read the cluster freeze state at start; writes are refused until it can be read");
        }
    }
    let mut redis = None;
    if let (Some(r), Some(rc)) = (&resolved.redis, &cfg.redis) {
        let s = redis::server::start(
            r,
            rc,
            cfg,
            freeze.clone(),
            shutdown.clone(),
            writer_stop.clone(),
        )
        .await
        .map_err(|source| StartError::Bind {
            what: "redis.listen",
            addr: r.listen,
            source,
        })?;
        redis = Some(Arc::new(s));
    }
    let mut zookeeper = None;
    if let (Some(z), Some(zc)) = (&resolved.zookeeper, &cfg.zookeeper) {
        let s = zookeeper::server::start(
            z,
            zc,
            cfg,
            freeze.clone(),
            shutdown.clone(),
            writer_stop.clone(),
        )
        .await
        .map_err(|source| StartError::Bind {
            what: "zookeeper.listen",
            addr: z.listen,
            source,
        })?;
        zookeeper = Some(Arc::new(s));
    }
    let mut followers = Vec::new();
    if let (Some(s), Some(r), Some(rc)) = (&redis, &resolved.redis, &cfg.redis) {
        let s: &Arc<RedisSidecar> = s;
        if let (Some(f), Some(mirror)) = (&r.follower, s.mirror()) {
            let markers: Arc<dyn Markers> = Arc::new(redis::generation::RedisMarkers {
                leader: r.leader.clone(),
                follower: f.clone(),
                timeout: Duration::from_millis(rc.connect_timeout_ms).max(Duration::from_secs(1)),
                seen_switch: r.leader.master_generation().into(),
            });
            followers.push((
                s.resync.clone(),
                Follower {
                    protocol: "redis",
                    markers,
                    mirror,
                },
            ));
        } else if let Some(rs) = &s.resync {
            rs.start_decided(false);
        }
    }
    if let (Some(s), Some(z), Some(zc)) = (&zookeeper, &resolved.zookeeper, &cfg.zookeeper) {
        let s: &Arc<ZkSidecar> = s;
        if let (Some(m), Some(mirror)) = (zookeeper::generation::ZkMarkers::new(z, zc), s.mirror())
        {
            let markers: Arc<dyn Markers> = Arc::new(m);
            followers.push((
                s.resync.clone(),
                Follower {
                    protocol: "zookeeper",
                    markers,
                    mirror,
                },
            ));
        } else if let Some(rs) = &s.resync {
            rs.start_decided(false);
        }
    }
    let node = resolved.node_name.clone();
    for (rs, f) in &followers {
        let Some(rs) = rs else { continue };
        if let (Some(c), Some(cc)) = (&cluster, &cfg.cluster) {
            let ttl = Duration::from_millis(cc.member_ttl_ms);
            rs.set_lease(Lease::new(c.store(), f.protocol, &node, ttl));
        }
        decide_start(
            f.protocol,
            f.markers.clone(),
            rs.clone(),
            node.clone(),
            shutdown.clone(),
        );
    }
    let mut app = App {
        admin_addr: resolved.admin_listen,
        redis,
        zookeeper,
        freeze,
        cluster,
        shutdown,
        writer_stop,
        drain_timeout: Duration::from_millis(cfg.maintenance.drain_timeout_ms),
        node,
        followers: followers.into_iter().map(|(_, f)| f).collect(),
        generated_token_file: None,
    };
    if let Some(c) = &app.cluster {
        c.spawn(app.mirrors(), app.shutdown.clone());
    }
    // No unauthenticated mutation, ever: without a configured token, a random one.
    let (token, generated) = match &resolved.admin_token {
        Some(t) => (t.clone(), None),
        None => {
            let t = config::Secret::new(admin::token::generate().map_err(|e| {
                app.abort();
                StartError::Token(e)
            })?);
            (t.clone(), Some(t))
        }
    };
    let state = admin::AdminState {
        freeze: app.freeze.clone(),
        cluster: app.cluster.clone(),
        sidecars: app.sidecars(),
        mirrors: app.mirrors(),
        prom,
        token,
        listen: resolved.admin_listen,
        allowed_hosts: cfg.admin.allowed_hosts.clone(),
        drain_timeout: app.drain_timeout,
        max_differences: cfg.verify.max_differences,
        identity: resolved.identity.clone(),
    };
    let served = admin::serve_tls(
        resolved.admin_listen,
        Arc::new(state),
        app.shutdown.clone(),
        resolved.admin_tls.clone(),
    )
    .await;
    app.admin_addr = match served {
        Ok(a) => a,
        Err(source) => {
            app.abort();
            return Err(StartError::Bind {
                what: "admin.listen",
                addr: resolved.admin_listen,
                source,
            });
        }
    };
    if let Some(t) = generated {
        // Written once the port is known (`admin.listen` may say port 0).
        match admin::token::write_generated(app.admin_addr.port(), t.expose()) {
            Ok(p) => {
                tracing::info!(token_file = %p.display(), "admin.token_file is not set: generated an admin token (readable by this user only; the CLI finds it)");
                app.generated_token_file = Some(p);
            }
            Err(e) => {
                app.abort();
                return Err(StartError::Token(e));
            }
        }
    }
    Ok(app)
}

/// The cluster state's home: the Redis leader when there is a `[redis]` sidecar, else the
/// ZooKeeper leader (every sidecar of a cluster has the same sections, so all pick the same).
fn cluster(resolved: &Resolved, freeze: Arc<Freeze>) -> Option<Arc<Cluster>> {
    let cc = resolved.config.cluster.as_ref()?;
    let store = cluster_store(resolved)?;
    let ttl = Duration::from_millis(cc.member_ttl_ms);
    Some(Cluster::new(resolved.node_name.clone(), store, freeze, ttl))
}

/// Where the cluster state (freeze, members, resync leases) lives, with `[cluster]`: also
/// what `statemirror recover` takes the resync lease in.
pub fn cluster_store(resolved: &Resolved) -> Option<Arc<dyn ClusterStore>> {
    let cc = resolved.config.cluster.as_ref()?;
    let ttl = Duration::from_millis(cc.member_ttl_ms);
    // Each poll must end well within the TTL, or a slow leader would expire live members.
    let op_timeout = |connect_ms: u64| Duration::from_millis(connect_ms).min(ttl / 3);
    let store: Arc<dyn ClusterStore> = match (&resolved.redis, &resolved.config.redis) {
        (Some(r), Some(rc)) => Arc::new(redis::cluster::RedisClusterStore::new(
            r.leader.clone(),
            op_timeout(rc.connect_timeout_ms.max(1000)),
            cc.member_ttl_ms,
        )),
        _ => {
            let (z, zc) = (
                resolved.zookeeper.as_ref()?,
                resolved.config.zookeeper.as_ref()?,
            );
            Arc::new(zookeeper::cluster::ZkClusterStore::new(
                z,
                zc,
                op_timeout(zc.connect_timeout_ms.max(1000)),
                cc.member_ttl_ms,
            ))
        }
    };
    Some(store)
}

/// Verifiers for every sidecar with a follower, built from the config alone (no proxy runs):
/// what `statemirror verify` uses.
pub fn verifiers(resolved: &Resolved) -> Vec<Arc<dyn replication::verify::Verifier>> {
    let cfg = &resolved.config;
    let mut v: Vec<Arc<dyn replication::verify::Verifier>> = Vec::new();
    if let (Some(r), Some(rc)) = (&resolved.redis, &cfg.redis) {
        if let Some(f) = &r.follower {
            v.push(Arc::new(
                redis::verify::RedisVerifier::new(r.leader.clone(), f.clone(), rc, &cfg.verify)
                    .with_identity(r.identity.clone()),
            ));
        }
    }
    if let (Some(z), Some(zc)) = (&resolved.zookeeper, &cfg.zookeeper) {
        if let Some(ver) = zookeeper::verify::ZkVerifier::new(z, zc) {
            v.push(Arc::new(ver));
        }
    }
    v
}
