//! The Redis listener: accepts clients (bounded), picks each one's backend (the leader, or
//! the follower while the leader is down), keeps both backends health-checked, and owns the
//! command table and the mirror queue every session shares.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::tls::{ServerTls, Stream};
use tokio_util::sync::CancellationToken;

use super::backend::{encode_cmd, Conn};
use super::command::{CommandTable, Source};
use super::converge::{DbKey, RedisRepairer};
use super::inflight::InFlight;
use super::mirror::{RedisApplier, RedisOp};
use super::resp::Limits;
use super::resync::RedisWalker;
use super::session;
use super::verify::RedisVerifier;
use crate::config::{Config, RedisBackend, RedisConfig, ResolvedRedis};
use crate::metrics::{ProtocolMetrics, Route};
use crate::replication::converge::{self, Repairer, Touched};
use crate::replication::freeze::Freeze;
use crate::replication::generation;
use crate::replication::health::{self, Health};
use crate::replication::queue::{MirrorQueue, MirrorView, QueueLimits};
use crate::replication::resync::{self, Resync};
use crate::replication::verify::VerifyState;
use crate::replication::worker;
use crate::sidecar::{Protocol, Running};

/// What every session of this sidecar shares.
pub struct Shared {
    pub cfg: RedisConfig,
    pub limits: Limits,
    pub leader: RedisBackend,
    pub follower: Option<RedisBackend>,
    table: RwLock<Arc<CommandTable>>,
    pub freeze: Arc<Freeze>,
    pub mirror: Option<Arc<MirrorQueue<RedisOp>>>,
    /// Keys with writes in flight (only when mirroring: see `inflight`).
    pub in_flight: Option<Arc<InFlight>>,
    pub leader_health: Health,
    pub follower_health: Option<Health>,
    pub metrics: ProtocolMetrics,
    /// Open client connections served by the leader / the follower.
    served: [AtomicUsize; 2],
    /// Cancelled at shutdown: sessions stop reading requests, answer what they owe, close.
    pub closing: CancellationToken,
    /// `[redis.listen_tls]`: clients must speak TLS.
    pub listen_tls: Option<ServerTls>,
    /// The state identity map: reads served by the follower ask for the mapped keys.
    pub identity: crate::nifi::identity_live::SharedIdentity,
    /// `[redis] multiplex`: the shared leader connections.
    pub mux: Option<session::Pool>,
}

impl Shared {
    /// The current command table. A session that started on the fallback takes the
    /// leader's at its next read once it is loaded (see `RequestSide::run`).
    pub fn table(&self) -> Arc<CommandTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_table(&self, t: CommandTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }
}

/// A running Redis sidecar.
pub type RedisSidecar = Running<Shared, DbKey>;

impl Protocol for Shared {
    const NAME: &'static str = "redis";

    fn mirror(&self) -> Option<Arc<dyn MirrorView>> {
        self.mirror.clone().map(|q| q as Arc<dyn MirrorView>)
    }

    fn health(&self) -> (&Health, Option<&Health>) {
        (&self.leader_health, self.follower_health.as_ref())
    }

    fn status(&self) -> serde_json::Map<String, serde_json::Value> {
        let backend = |b: &RedisBackend, h: &Health| json!({ "address": b.shown_address(), "db": b.db, "up": h.is_up(), "tls": b.wants_tls, "error": h.last_error(), "sentinel": b.sentinel_status() });
        let v = json!({
            "listen_tls": self.listen_tls.is_some(),
            "leader": backend(&self.leader, &self.leader_health),
            "follower": match (&self.follower, &self.follower_health) {
                (Some(b), Some(h)) => backend(b, h),
                _ => serde_json::Value::Null,
            },
            "connections": {
                "leader": self.served[0].load(Ordering::Relaxed),
                "follower": self.served[1].load(Ordering::Relaxed),
            },
            "command_table": match self.table().source { Source::Leader => "leader", Source::Fallback => "fallback" },
        });
        match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

pub async fn start(
    r: &ResolvedRedis,
    cfg: &RedisConfig,
    top: &Config,
    freeze: Arc<Freeze>,
    shutdown: CancellationToken,
    writer_stop: CancellationToken,
) -> std::io::Result<RedisSidecar> {
    let listener = TcpListener::bind(r.listen).await?;
    let local_addr = listener.local_addr()?;
    let metrics = ProtocolMetrics::new("redis");
    let repl = &top.replication;
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let mirror = r.follower.as_ref().map(|_| {
        MirrorQueue::<RedisOp>::new(
            "redis",
            QueueLimits {
                max_ops: repl.max_queue_ops,
                max_bytes: repl.max_queue_bytes,
                // A bulk op is a key name (its value is read when applied): cheap to queue.
                // The writer reads a batch's copies in one MULTI on the leader, so
                // `resync.batch_size` bounds how long that blocks it and the reply's size.
                bulk_capacity: 2 * repl.batch_max_ops,
                bulk_per_batch: top.resync.batch_size,
            },
        )
    });
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        limits: Limits {
            max_request_bytes: cfg.max_request_bytes,
            max_args: cfg.max_request_args,
        },
        leader: r.leader.clone(),
        follower: r.follower.clone(),
        table: RwLock::new(Arc::new(CommandTable::fallback())),
        freeze,
        in_flight: mirror.as_ref().map(|_| Arc::new(InFlight::default())),
        mirror: mirror.clone(),
        leader_health: Health::new(
            "leader",
            r.leader.address.clone(),
            cfg.health_failures_before_down,
            metrics.backend_up("leader"),
        ),
        follower_health: r.follower.as_ref().map(|f| {
            Health::new(
                "follower",
                f.address.clone(),
                cfg.health_failures_before_down,
                metrics.backend_up("follower"),
            )
        }),
        metrics,
        served: [AtomicUsize::new(0), AtomicUsize::new(0)],
        closing: shutdown.clone(),
        listen_tls: r.listen_tls.clone(),
        identity: r.identity.clone(),
        mux: cfg.multiplex.then(|| {
            session::Pool::new(cfg.multiplex_connections, cfg.multiplex_spare_connections)
        }),
    });
    // Sentinel-managed backends: follow their master (see `sentinel`).
    let m = shared.mirror.clone();
    super::sentinel::spawn_watcher(&r.leader, "leader", connect_timeout, m.clone(), &shutdown);
    if let Some(f) = &r.follower {
        super::sentinel::spawn_watcher(f, "follower", connect_timeout, m, &shutdown);
    }
    for (role, b) in [
        ("leader", Some(&r.leader)),
        ("follower", r.follower.as_ref()),
    ] {
        if let Some(t) = b.and_then(|b| b.tls.as_ref()) {
            if !t.verify_hostname() {
                tracing::warn!(role, address = %b.map(|b| b.address.as_str()).unwrap_or(""),
                    "TLS hostname verification is OFF for this backend (verify_hostname = false): any certificate from the trusted CAs is accepted");
            }
        }
    }
    // The command table, from the leader when it answers now; the health loop retries.
    match fetch_table(&r.leader, connect_timeout).await {
        Ok(t) => {
            tracing::info!(commands = t.len(), "command table loaded from the leader");
            shared.set_table(t);
        }
        Err(e) => {
            tracing::warn!(error = %e, "leader did not answer COMMAND; using the built-in table until it does")
        }
    }
    let mut resync = None;
    let mut verify = None;
    let mut touched = None;
    let mut migration = None;
    if let (Some(q), Some(f)) = (mirror, &r.follower) {
        migration = crate::migrate::online::tap::attach_redis(
            top,
            cfg,
            &r.leader,
            &q,
            shared.freeze.clone(),
            writer_stop.clone(),
        );
        let mut applier = RedisApplier::new(
            r.leader.clone(),
            f.clone(),
            connect_timeout,
            cfg.copy_format,
            q.clone(),
        )
        .with_identity(r.identity.clone(), &cfg.nifi_key_prefix);
        if top.cluster.as_ref().is_some_and(|c| c.converge) {
            let t = Touched::new("redis", RedisRepairer::key_bytes);
            let idle = t.clone();
            q.drained_also_when(Arc::new(move || idle.is_idle()));
            converge::spawn(
                t.clone(),
                RedisRepairer::new(r.leader.clone(), f.clone(), connect_timeout)
                    .with_identity(r.identity.clone(), &cfg.nifi_key_prefix),
                q.clone(),
                "redis",
                writer_stop.clone(),
            );
            applier = applier.with_convergence(t.clone());
            touched = Some(t);
        }
        worker::spawn(q.clone(), applier, repl.clone(), writer_stop);
        let rs = Resync::new("redis", top.resync.clone(), q.clone());
        let walker = RedisWalker::new(r.leader.clone(), f.clone(), cfg, q.clone())
            .with_identity(r.identity.clone());
        // The generation check runs before any resync may: a leader that lost data must be
        // noticed before the resync at start could copy it over the follower.
        let checked = generation::Checked::new(false);
        generation::spawn(
            Arc::new(super::generation::RedisMarkers {
                leader: r.leader.clone(),
                follower: f.clone(),
                timeout: connect_timeout.max(Duration::from_secs(1)),
                seen_switch: r.leader.master_generation().into(),
            }),
            q,
            checked.clone(),
            shared.freeze.clone(),
            "redis",
            shutdown.clone(),
        );
        let up = shared.clone();
        resync::spawn(
            rs.clone(),
            Arc::new(walker),
            Arc::new(move || {
                checked.done() && up.follower_health.as_ref().is_some_and(Health::is_up)
            }),
            shutdown.clone(),
        );
        resync = Some(rs);
        let vs = VerifyState::new(Arc::new(
            RedisVerifier::new(r.leader.clone(), f.clone(), cfg, &top.verify)
                .with_identity(r.identity.clone()),
        ));
        crate::replication::verify::spawn_periodic(
            vs.clone(),
            Duration::from_millis(top.verify.interval_ms),
            top.verify.max_differences,
            shutdown.clone(),
        );
        verify = Some(vs);
    }
    tokio::spawn(health_loop(shared.clone(), true, shutdown.clone()));
    if shared.follower.is_some() {
        tokio::spawn(health_loop(shared.clone(), false, shutdown.clone()));
    }
    let handler = shared.clone();
    tokio::spawn(crate::listener::accept_loop(
        listener,
        cfg.max_connections,
        shared.metrics.clone(),
        Some(b"-ERR max number of clients reached\r\n"),
        shutdown,
        move |sock| handle_client(handler.clone(), sock),
    ));
    tracing::info!(listen = %local_addr, leader = %r.leader.address,
        follower = r.follower.as_ref().map(|f| f.address.as_str()).unwrap_or("none"),
        "redis sidecar ready");
    Ok(RedisSidecar {
        shared,
        local_addr,
        resync,
        verify,
        converge: touched,
        migration,
    })
}

async fn fetch_table(b: &RedisBackend, timeout: Duration) -> Result<CommandTable, String> {
    let mut c = Conn::connect(b, timeout).await.map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"COMMAND"]);
    let reply = tokio::time::timeout(timeout * 5, c.roundtrip(&out, 1))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    reply
        .first()
        .and_then(CommandTable::from_command_reply)
        .ok_or_else(|| "COMMAND reply not understood (ACL may forbid COMMAND)".into())
}

async fn handle_client(shared: Arc<Shared>, sock: TcpStream) {
    // Taken before connecting: a Sentinel switch from now on closes the session.
    let to_leader = shared.leader.watch_master();
    let tls = shared.listen_tls.as_ref();
    let Some(mut sock) = crate::listener::client_stream(tls, sock, &shared.metrics).await else {
        return;
    };
    // Multiplexed: no connection of its own while the leader is up (see `session::upstream`).
    let mux = match shared.mux.is_some() && shared.leader_health.is_up() {
        true => session::Mux::join(&shared).await,
        false => None,
    };
    if let Some(mux) = mux {
        let idx = Route::Leader as usize;
        shared.metrics.connections.increment(1.0);
        shared.served[idx].fetch_add(1, Ordering::Relaxed);
        session::serve_shared(shared.clone(), sock, mux, to_leader).await;
        shared.served[idx].fetch_sub(1, Ordering::Relaxed);
        shared.metrics.connections.decrement(1.0);
        return;
    }
    // (Here, not above: a multiplexed session's task keeps no room for it.)
    let to_follower = shared
        .follower
        .as_ref()
        .and_then(RedisBackend::watch_master);
    let Some((backend, route)) = pick_backend(&shared).await else {
        let _ = sock
            .write_all(
                b"-ERR statemirror: no backend available (leader and follower unreachable)\r\n",
            )
            .await;
        let _ = sock.flush().await;
        return;
    };
    let idx = route as usize;
    shared.metrics.connections.increment(1.0);
    shared.served[idx].fetch_add(1, Ordering::Relaxed);
    let master = if route == Route::Leader {
        to_leader
    } else {
        to_follower
    };
    session::serve(shared.clone(), sock, backend, route, master).await;
    shared.served[idx].fetch_sub(1, Ordering::Relaxed);
    shared.metrics.connections.decrement(1.0);
}

/// Why a connect failed: refused (nothing listens: proof the backend is down), or no answer
/// within the timeout (down, or only slow for a moment: a fork, a full accept queue).
enum ConnectError {
    Refused(String),
    TimedOut,
}

async fn connect(backend: &RedisBackend, timeout: Duration) -> Result<Stream, ConnectError> {
    match tokio::time::timeout(timeout, super::backend::open(backend)).await {
        Ok(Ok(s)) => Ok(s),
        // A TLS failure (wrong CA, expired, name mismatch) is as final as a refusal.
        Ok(Err(e)) => Err(ConnectError::Refused(e.to_string())),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// [`connect`] to where the backend is now (a sentinel-managed one: its current master).
async fn connect_to(b: &RedisBackend, timeout: Duration) -> Result<Stream, ConnectError> {
    match b.resolve_address(timeout).await {
        Ok(address) => connect(&b.at(&address), timeout).await,
        Err(e) => Err(ConnectError::Refused(e)),
    }
}

/// A connection to the leader for a multiplexed session (shared, or pinned on demand),
/// its failure counted as health evidence like any other.
pub(super) async fn connect_leader(shared: &Shared) -> Result<Stream, String> {
    let timeout = Duration::from_millis(shared.cfg.connect_timeout_ms);
    match connect_to(&shared.leader, timeout).await {
        Ok(s) => Ok(s),
        Err(e) => {
            record_connect_failure(&shared.leader_health, &e);
            Err(match e {
                ConnectError::Refused(why) => why,
                ConnectError::TimedOut => "connect timed out".into(),
            })
        }
    }
}

/// A failed connect as health evidence: a refusal marks the backend down at once (the next
/// clients go straight to the follower, pinned sessions are closed); a timeout counts as
/// one failed check, so one slow moment does not close every session pinned to a leader
/// that is only busy (a black hole fails the health checks too and is down within
/// `health_failures_before_down` checks).
fn record_connect_failure(health: &Health, e: &ConnectError) {
    match e {
        ConnectError::Refused(why) => health.mark_down(why),
        ConnectError::TimedOut => health.record_failure("connect timed out"),
    }
}

/// The leader when it is up and takes the connection; otherwise the follower (reads only).
/// While the leader is down (and there is a follower) it is not tried at all: a silent
/// leader would cost every new client a full connect timeout.
async fn pick_backend(shared: &Shared) -> Option<(Stream, Route)> {
    let timeout = Duration::from_millis(shared.cfg.connect_timeout_ms);
    let follower = shared
        .follower
        .as_ref()
        .zip(shared.follower_health.as_ref());
    if shared.leader_health.is_up() || follower.is_none() {
        match connect_to(&shared.leader, timeout).await {
            Ok(s) => return Some((s, Route::Leader)),
            // This client goes to the follower either way.
            Err(e) => record_connect_failure(&shared.leader_health, &e),
        }
    }
    let (f, h) = follower?;
    match connect_to(f, timeout).await {
        Ok(s) => Some((s, Route::Follower)),
        Err(e) => {
            record_connect_failure(h, &e);
            None
        }
    }
}

/// Pings one backend every `health_interval_ms` on a connection of its own. For the leader,
/// also loads the command table once it answers, if start-up had to use the fallback.
async fn health_loop(shared: Arc<Shared>, leader: bool, shutdown: CancellationToken) {
    let health = if leader {
        &shared.leader_health
    } else {
        match &shared.follower_health {
            Some(h) => h,
            None => return,
        }
    };
    let interval = Duration::from_millis(shared.cfg.health_interval_ms);
    let probe = PingProbe {
        shared: shared.clone(),
        leader,
        conn: None,
    };
    health::check_every(health, interval, shutdown, probe).await;
}

struct PingProbe {
    shared: Arc<Shared>,
    leader: bool,
    conn: Option<Conn>,
}

impl health::Probe for PingProbe {
    async fn check(&mut self) -> Result<(), String> {
        let shared = self.shared.clone();
        let backend = match (self.leader, &shared.follower) {
            (true, _) => &shared.leader,
            (false, Some(f)) => f,
            (false, None) => return Ok(()),
        };
        let timeout = Duration::from_millis(shared.cfg.health_timeout_ms);
        if self.conn.as_ref().is_some_and(Conn::is_stale) {
            self.conn = None;
        }
        let conn = &mut self.conn;
        let result = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                *conn = Some(
                    Conn::connect(backend, timeout)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let c = conn.as_mut().ok_or("no connection")?;
            let mut ping = BytesMut::new();
            encode_cmd(&mut ping, &[b"PING"]);
            let r = c.roundtrip(&ping, 1).await.map_err(|e| e.to_string())?;
            match r.first().and_then(super::backend::error_text) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
        .await
        .unwrap_or_else(|_| Err("health check timed out".into()));
        if result.is_err() {
            self.conn = None;
        } else if self.leader && shared.table().source == Source::Fallback {
            if let Ok(t) = fetch_table(backend, timeout).await {
                tracing::info!(commands = t.len(), "command table loaded from the leader");
                shared.set_table(t);
            }
        }
        result
    }
}
