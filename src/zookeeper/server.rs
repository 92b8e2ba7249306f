//! The ZooKeeper listener: accepts clients (bounded), picks a server of the leader ensemble
//! for each (raced under one connect timeout, starting round robin, skipping servers that
//! refuse or are read-only), answers four-letter words, keeps both ensembles health-checked
//! (`srvr`; a read-only leader server does not count), and owns the mirror queue and writer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::converge::ZkRepairer;
use super::endpoint::ZkServers;
use super::frame::next_frame;
use super::mirror::{PathFilter, ZkApplier, ZkOp};
use super::resync::ZkWalker;
use super::session;
use super::tree::Session;
use super::verify::ZkVerifier;
use crate::config::{Config, ResolvedZk, ZooKeeperConfig};
use crate::metrics::ProtocolMetrics;
use crate::replication::converge::{self, Repairer, Touched};
use crate::replication::freeze::Freeze;
use crate::replication::generation;
use crate::replication::health::Health;
use crate::replication::queue::{MirrorQueue, MirrorView, QueueLimits};
use crate::replication::resync::{self, Resync};
use crate::replication::verify::VerifyState;
use crate::replication::worker;
use crate::sidecar::{Protocol, Running};
use crate::tls::Stream;

pub struct ZkShared {
    pub cfg: ZooKeeperConfig,
    /// The state identity map: reads served by the follower ask for the mapped paths.
    pub identity: crate::nifi::identity_live::SharedIdentity,
    pub leader: crate::zookeeper::endpoint::ZkServers,
    pub follower: Option<crate::zookeeper::endpoint::ZkServers>,
    pub filter: PathFilter,
    pub freeze: Arc<Freeze>,
    pub mirror: Option<Arc<MirrorQueue<ZkOp>>>,
    pub metrics: ProtocolMetrics,
    /// Ephemeral nodes mirrored per client session (`mirror_ephemeral`).
    pub ephemerals: Option<Arc<super::ephemeral::Ephemerals>>,
    /// The newest zxid any leader reply carried (orders the end of a session's ephemerals).
    pub max_zxid: std::sync::atomic::AtomicI64,
    pub leader_health: Health,
    pub follower_health: Option<Health>,
    next: AtomicUsize,
    /// Per leader server, the newest zxid a connection to it has shown (see `leader_zxid`).
    leader_zxids: std::sync::Mutex<std::collections::HashMap<SocketAddr, i64>>,
    /// Cancelled at shutdown: sessions stop reading requests, answer what they owe, close.
    pub closing: CancellationToken,
    /// `[zookeeper.listen_tls]`: clients must speak TLS.
    pub listen_tls: Option<crate::tls::ServerTls>,
}

/// What the leader ensemble answered to a client's connect.
pub enum LeaderConnect {
    /// A read-write server took it (or answered "expired"): use it.
    ReadWrite(Stream, Bytes),
    /// Only a read-only server (one that lost its quorum) took it: writes would fail there,
    /// so this is the last resort, behind the follower ensemble.
    ReadOnly(Stream, Bytes),
    /// No server answered.
    Nothing,
}

/// How long a server may take to accept the TCP connection before the next server is tried
/// too: a black-holed region drops SYNs, so a silent ensemble costs 200 ms per server rather
/// than a whole timeout each.
const STAGGER: Duration = Duration::from_millis(200);

/// One server's answer to a `ConnectRequest`: the connection, the framed answer, whether
/// the server is read-only.
type Answer = (Stream, Bytes, bool);

/// Sends `connect` to `server` and reads the framed `ConnectResponse` (unbounded: callers
/// bound it). `None` when the server closes without answering (it is behind the zxid the
/// client has seen, or read-only and the client does not allow that) or is unreachable.
/// Reports `id` on `connected` once the TCP connection is up.
async fn handshake(
    server: String,
    tls: Option<crate::tls::ClientTls>,
    connect: Bytes,
    max_frame: usize,
    id: usize,
    connected: mpsc::UnboundedSender<usize>,
) -> Option<Answer> {
    let mut s = match super::endpoint::open(&server, tls.as_ref()).await {
        Ok(s) => s,
        Err(e @ super::endpoint::OpenError::Tls(_)) => {
            // The health check reports it too; this one names the client's attempt.
            tracing::debug!(server = %server, error = %e, "zookeeper: TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    let _ = connected.send(id);
    crate::tls::stream::write_flush(&mut s, &connect)
        .await
        .ok()?;
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if let Ok(Some(f)) = next_frame(&mut buf, max_frame) {
            use super::jute::Record;
            // An answer that does not parse is passed on as it is, as before.
            let read_only = super::proto::connect::ConnectResponse::from_bytes(&f)
                .is_ok_and(|r| r.read_only == Some(true));
            let mut framed = BytesMut::with_capacity(f.len() + 4);
            framed.put_u32(f.len() as u32);
            framed.put_slice(&f);
            return Some((s, framed.freeze(), read_only));
        }
        if s.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// How [`race`] ended.
struct Raced {
    read_write: Option<Answer>,
    read_only: Option<Answer>,
    /// The bound passed with servers still silent (as opposed to all of them failing).
    timed_out: bool,
}

/// Sends `connect` to the servers, starting at `start`, all under one `bound`. The next
/// server is tried when the newest attempt failed, has not connected within [`STAGGER`], or
/// connected but has not answered within its share of `bound` (a server that is up but slow
/// is given longer: a second server taking the same session would move it away from the one
/// that answers first). The first read-write answer wins and the other attempts are dropped;
/// a read-only one is kept in case none comes.
async fn race(
    servers: &ZkServers,
    start: usize,
    connect: Bytes,
    max_frame: usize,
    bound: Duration,
) -> Raced {
    let deadline = tokio::time::Instant::now() + bound;
    let mut attempts = tokio::task::JoinSet::new();
    let mut out = Raced {
        read_write: None,
        read_only: None,
        timed_out: false,
    };
    let n = servers.len();
    let answer_wait = STAGGER.max(bound / n.max(1) as u32);
    let (connected_tx, mut connected) = mpsc::unbounded_channel();
    let mut launched = 0;
    let mut launched_at = tokio::time::Instant::now();
    let mut next_launch = launched_at;
    loop {
        let now = tokio::time::Instant::now();
        if launched < n && (attempts.is_empty() || now >= next_launch) {
            let i = (start + launched) % n;
            let (server, tls) = (servers[i].clone(), servers.tls_for(i).cloned());
            let tx = connected_tx.clone();
            attempts.spawn(handshake(
                server,
                tls,
                connect.clone(),
                max_frame,
                launched,
                tx,
            ));
            launched += 1;
            launched_at = now;
            next_launch = now + STAGGER;
            continue;
        }
        if attempts.is_empty() {
            return out; // every server tried and failed
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                out.timed_out = true;
                return out; // dropping `attempts` aborts the connects still running
            }
            _ = tokio::time::sleep_until(next_launch), if launched < n => {}
            Some(id) = connected.recv() => {
                if id + 1 == launched {
                    next_launch = launched_at + answer_wait;
                }
            }
            r = attempts.join_next() => match r {
                Some(Ok(Some(a))) if !a.2 => {
                    out.read_write = Some(a);
                    return out;
                }
                Some(Ok(Some(a))) => {
                    out.read_only.get_or_insert(a);
                }
                _ => {}
            },
        }
    }
}

impl ZkShared {
    /// Sends the client's `ConnectRequest` to the leader servers (raced, see [`race`]) under
    /// one `connect_timeout_ms` bound, so a silent ensemble leaves the client time to be
    /// served by the follower within its own connect timeout. A read-write answer wins; a
    /// read-only server is kept as the last resort.
    pub async fn connect_leader(&self, connect: &[u8]) -> LeaderConnect {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let r = race(
            &self.leader,
            start,
            Bytes::copy_from_slice(connect),
            self.cfg.max_frame_bytes,
            timeout,
        )
        .await;
        if let Some((s, f, _)) = r.read_write {
            return LeaderConnect::ReadWrite(s, f);
        }
        if r.read_only.is_none() {
            // Refused, or silent for the whole bound (a black-holed region): down at once,
            // so the next clients go straight to the follower and leader-served connections
            // are closed. (A read-only answer is judged by the health checks.)
            self.leader_health.mark_down(if r.timed_out {
                "no leader server answered a connect in time"
            } else {
                "no leader server accepted a session"
            });
        }
        match r.read_only {
            Some((s, f, _)) => {
                tracing::debug!("only a read-only leader server took the session");
                LeaderConnect::ReadOnly(s, f)
            }
            None => LeaderConnect::Nothing,
        }
    }

    /// Opens statemirror's own session on the follower ensemble for a client the leader
    /// ensemble cannot take; returns the connection and the follower's `ConnectResponse`.
    /// Servers are raced as for the leader; a read-only follower server is fine.
    pub async fn connect_follower(
        &self,
        client: &super::proto::connect::ConnectRequest,
    ) -> Option<(Stream, super::proto::connect::ConnectResponse)> {
        use super::jute::Record;
        let servers = self.follower.as_ref()?;
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let req = super::proto::connect::ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 0,
            time_out: client.time_out,
            session_id: 0,
            passwd: Bytes::from_static(&[0; 16]),
            // Accept a follower server that lost its quorum and went read-only.
            read_only: Some(true),
        };
        let mut frame = BytesMut::new();
        super::frame::encode_frame(&mut frame, |w| w.write(&req));
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let r = race(
            servers,
            start,
            frame.freeze(),
            self.cfg.max_frame_bytes,
            timeout,
        )
        .await;
        let (s, f, _) = r.read_write.or(r.read_only)?;
        let resp = super::proto::connect::ConnectResponse::from_bytes(&f.slice(4..)).ok()?;
        (resp.session_id != 0).then_some((s, resp))
    }

    /// A leader connection to `server` showed `zxid`: its first one (`first`, before anything
    /// the connection acknowledged is mirrored) or its newest (when it ends). A server's own
    /// zxid never goes back while it keeps its data: when it does, the server restarted
    /// empty, was restored from a backup or belongs to a new ensemble, and the mirror
    /// writer's per-path zxids mean nothing for the new history (every new write would look
    /// older). A reset marker is then queued ahead of the new writes.
    ///
    /// Replies on different connections are read in any order, so a first zxid below one
    /// seen on another connection is not enough: the server's own current zxid (`srvr`)
    /// decides.
    pub async fn leader_zxid(&self, server: Option<SocketAddr>, zxid: i64, first: bool) {
        let Some(server) = server else { return };
        let prev = {
            let mut seen = crate::replication::queue::lock(&self.leader_zxids);
            let prev = seen.get(&server).copied();
            if prev.is_none_or(|p| zxid > p) {
                seen.insert(server, zxid);
            }
            prev
        };
        let Some(prev) = prev.filter(|&p| first && zxid < p) else {
            return;
        };
        let timeout = Duration::from_millis(self.cfg.health_timeout_ms.max(1000));
        let name = server.to_string();
        let asked = super::probe::ask(&self.leader, &name, b"srvr");
        let now = match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(out)) => super::probe::srvr_zxid(&String::from_utf8_lossy(&out)),
            _ => None,
        };
        let Some(now) = now.filter(|&n| n < prev) else {
            return;
        };
        {
            let mut seen = crate::replication::queue::lock(&self.leader_zxids);
            if seen.get(&server).is_some_and(|&p| p == prev) {
                seen.insert(server, now.max(zxid));
            } else {
                return; // another connection saw it first and queued the marker
            }
        }
        tracing::warn!(
            %server,
            zxid = format!("{now:#x}"),
            before = format!("{prev:#x}"),
            "a leader server's zxid went back (restarted empty, restored, or a new ensemble); \
             the mirror starts a new zxid history"
        );
        if let Some(q) = &self.mirror {
            q.push(ZkOp::history_reset());
        }
    }

    pub(super) fn writes_refused(&self) -> bool {
        self.freeze.is_frozen() || !self.leader_health.is_up()
    }
}

/// A running ZooKeeper sidecar.
pub type ZkSidecar = Running<ZkShared, String>;

impl Protocol for ZkShared {
    const NAME: &'static str = "zookeeper";

    fn mirror(&self) -> Option<Arc<dyn MirrorView>> {
        self.mirror.clone().map(|q| q as Arc<dyn MirrorView>)
    }

    fn health(&self) -> (&Health, Option<&Health>) {
        (&self.leader_health, self.follower_health.as_ref())
    }

    fn status(&self) -> serde_json::Map<String, serde_json::Value> {
        let v = json!({
            "listen_tls": self.listen_tls.is_some(),
            "leader": {
                "servers": self.leader,
                "up": self.leader_health.is_up(),
                "tls": self.leader.is_tls(),
                "error": self.leader_health.last_error(),
            },
            "follower": match (&self.follower, &self.follower_health) {
                (Some(f), Some(h)) => json!({
                    "servers": f,
                    "up": h.is_up(),
                    "tls": f.is_tls(),
                    "error": h.last_error(),
                }),
                _ => serde_json::Value::Null,
            },
        });
        match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

pub async fn start(
    r: &ResolvedZk,
    cfg: &ZooKeeperConfig,
    top: &Config,
    freeze: Arc<Freeze>,
    shutdown: CancellationToken,
    writer_stop: CancellationToken,
) -> std::io::Result<ZkSidecar> {
    let listener = TcpListener::bind(r.listen).await?;
    let local_addr = listener.local_addr()?;
    let metrics = ProtocolMetrics::new("zookeeper");
    let repl = &top.replication;
    let mirror = r.follower.as_ref().map(|_| {
        MirrorQueue::<ZkOp>::new(
            "zookeeper",
            QueueLimits {
                max_ops: repl.max_queue_ops,
                max_bytes: repl.max_queue_bytes,
                // A bulk op is a multi of up to `resync.batch_size` nodes (≤ 512 KiB):
                // a few queued bound the memory; one per batch bounds live writes' delay.
                bulk_capacity: 4,
                bulk_per_batch: 1,
            },
        )
    });
    let shared = Arc::new(ZkShared {
        cfg: cfg.clone(),
        identity: r.identity.clone(),
        leader: r.leader.clone(),
        follower: r.follower.clone(),
        filter: PathFilter {
            include: cfg.include_paths.clone(),
            exclude: cfg.exclude_paths.clone(),
        },
        freeze,
        ephemerals: mirror
            .as_ref()
            .filter(|_| cfg.mirror_ephemeral)
            .map(|q| super::ephemeral::Ephemerals::new(q.clone())),
        max_zxid: std::sync::atomic::AtomicI64::new(0),
        mirror: mirror.clone(),
        leader_health: Health::new(
            "leader",
            r.leader.join(","),
            2,
            metrics.backend_up("leader"),
        ),
        follower_health: r
            .follower
            .as_ref()
            .map(|f| Health::new("follower", f.join(","), 2, metrics.backend_up("follower"))),
        metrics,
        next: AtomicUsize::new(0),
        leader_zxids: std::sync::Mutex::new(std::collections::HashMap::new()),
        closing: shutdown.clone(),
        listen_tls: r.listen_tls.clone(),
    });
    let mut resync = None;
    let mut touched = None;
    let mut verify = None;
    let mut migration = None;
    if let (Some(q), Some(f)) = (mirror, &r.follower) {
        migration = crate::migrate::online::tap::attach_zk(
            top,
            cfg,
            r,
            &q,
            shared.freeze.clone(),
            writer_stop.clone(),
        );
        let mut applier = ZkApplier::new(
            f.clone(),
            r.follower_auth.clone(),
            Duration::from_millis(cfg.connect_timeout_ms),
            cfg.follower_session_timeout_ms.min(i32::MAX as u64) as i32,
            cfg.max_frame_bytes,
            q.clone(),
            shared.ephemerals.clone(),
        )
        .with_identity(r.identity.clone());
        if top.cluster.as_ref().is_some_and(|c| c.converge) {
            let t = Touched::new("zookeeper", ZkRepairer::key_bytes);
            let idle = t.clone();
            q.drained_also_when(Arc::new(move || idle.is_idle()));
            let auth = r.follower_auth.clone();
            converge::spawn(
                t.clone(),
                ZkRepairer::new(
                    Session::new("leader", r.leader.clone(), auth.clone(), cfg),
                    Session::new("follower", f.clone(), auth, cfg),
                )
                .with_identity(r.identity.clone()),
                q.clone(),
                "zookeeper",
                writer_stop.clone(),
            );
            applier = applier.with_convergence(t.clone());
            touched = Some(t);
        }
        worker::spawn(q.clone(), applier, repl.clone(), writer_stop);
        let rs = Resync::new("zookeeper", top.resync.clone(), q.clone());
        // As for Redis: leader data loss is looked for before any resync may run.
        let checked = generation::Checked::new(false);
        match super::generation::ZkMarkers::new(r, cfg) {
            Some(m) => generation::spawn(
                Arc::new(m),
                q.clone(),
                checked.clone(),
                shared.freeze.clone(),
                "zookeeper",
                shutdown.clone(),
            ),
            None => checked.set(),
        }
        let up = shared.clone();
        resync::spawn(
            rs.clone(),
            Arc::new(ZkWalker::new(r, cfg, q)),
            Arc::new(move || {
                checked.done() && up.follower_health.as_ref().is_some_and(Health::is_up)
            }),
            shutdown.clone(),
        );
        resync = Some(rs);
        if let Some(v) = ZkVerifier::new(r, cfg) {
            let vs = VerifyState::new(Arc::new(v));
            crate::replication::verify::spawn_periodic(
                vs.clone(),
                Duration::from_millis(top.verify.interval_ms),
                top.verify.max_differences,
                shutdown.clone(),
            );
            verify = Some(vs);
        }
    }
    tokio::spawn(super::probe::health_loop(
        shared.clone(),
        true,
        shutdown.clone(),
    ));
    if shared.follower.is_some() {
        tokio::spawn(super::probe::health_loop(
            shared.clone(),
            false,
            shutdown.clone(),
        ));
    }
    let handler = shared.clone();
    // Over the limit the connection is just closed: a ZooKeeper client tries another server.
    tokio::spawn(crate::listener::accept_loop(
        listener,
        cfg.max_connections,
        shared.metrics.clone(),
        None,
        shutdown,
        move |sock| handle_client(handler.clone(), sock),
    ));
    tracing::info!(listen = %local_addr, leader = %r.leader.join(","),
        follower = r.follower.as_ref().map(|f| f.join(",")).unwrap_or_else(|| "none".into()),
        "zookeeper sidecar ready");
    Ok(ZkSidecar {
        shared,
        local_addr,
        resync,
        verify,
        converge: touched,
        migration,
    })
}

/// A new client: the TLS handshake first on a TLS listener, then the session.
async fn handle_client(shared: Arc<ZkShared>, sock: TcpStream) {
    let tls = shared.listen_tls.as_ref();
    let Some(client) = crate::listener::client_stream(tls, sock, &shared.metrics).await else {
        return;
    };
    session::serve(shared, client).await;
}
