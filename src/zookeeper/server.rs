//! The ZooKeeper listener: accepts clients (bounded), picks a server of the leader ensemble
//! for each (round robin, skipping servers that refuse), answers four-letter words, keeps
//! both ensembles health-checked (`srvr`), and owns the mirror queue and writer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::frame::next_frame;
use super::mirror::{PathFilter, ZkApplier, ZkOp};
use super::resync::ZkWalker;
use super::session;
use super::verify::ZkVerifier;
use crate::config::{Config, ResolvedZk, ZooKeeperConfig};
use crate::metrics::ProtocolMetrics;
use crate::replication::freeze::Freeze;
use crate::replication::health::Health;
use crate::replication::queue::{MirrorQueue, MirrorView, QueueLimits};
use crate::replication::resync::{self, Resync};
use crate::replication::verify::VerifyState;
use crate::replication::worker;
use crate::sidecar::{serving, Sidecar};

pub struct ZkShared {
    pub cfg: ZooKeeperConfig,
    pub leader: Vec<String>,
    pub follower: Option<Vec<String>>,
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
    /// Cancelled at shutdown: sessions stop reading requests, answer what they owe, close.
    pub closing: CancellationToken,
}

impl ZkShared {
    /// Sends the client's `ConnectRequest` to leader servers in turn until one answers;
    /// returns that connection and the framed `ConnectResponse`.
    pub async fn connect_leader(&self, connect: &[u8]) -> Option<(TcpStream, Bytes)> {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let n = self.leader.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let server = &self.leader[(start + i) % n];
            let attempt = tokio::time::timeout(timeout * 2, async {
                let mut s = TcpStream::connect(server).await.ok()?;
                let _ = s.set_nodelay(true);
                s.write_all(connect).await.ok()?;
                let mut buf = BytesMut::with_capacity(64);
                loop {
                    if let Ok(Some(f)) = next_frame(&mut buf, self.cfg.max_frame_bytes) {
                        let mut framed = BytesMut::with_capacity(f.len() + 4);
                        framed.put_u32(f.len() as u32);
                        framed.put_slice(&f);
                        return Some((s, framed.freeze()));
                    }
                    // A server that is behind the client's zxid closes without answering.
                    if s.read_buf(&mut buf).await.ok()? == 0 {
                        return None;
                    }
                }
            })
            .await;
            match attempt {
                Ok(Some(ok)) => return Some(ok),
                _ => {
                    tracing::debug!(server = %server, "leader server did not take the session; trying the next")
                }
            }
        }
        self.leader_health
            .mark_down("no leader server accepted a session");
        None
    }

    /// Opens statemirror's own session on the follower ensemble for a client the leader
    /// ensemble cannot take; returns the connection and the follower's `ConnectResponse`.
    pub async fn connect_follower(
        &self,
        client: &super::proto::connect::ConnectRequest,
    ) -> Option<(TcpStream, super::proto::connect::ConnectResponse)> {
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
        for i in 0..servers.len() {
            let server = &servers[(start + i) % servers.len()];
            let attempt = tokio::time::timeout(timeout * 2, async {
                let mut s = TcpStream::connect(server).await.ok()?;
                let _ = s.set_nodelay(true);
                s.write_all(&frame).await.ok()?;
                let mut buf = BytesMut::with_capacity(64);
                loop {
                    if let Ok(Some(f)) = next_frame(&mut buf, self.cfg.max_frame_bytes) {
                        let resp = super::proto::connect::ConnectResponse::from_bytes(&f).ok()?;
                        return (resp.session_id != 0).then_some((s, resp));
                    }
                    if s.read_buf(&mut buf).await.ok()? == 0 {
                        return None;
                    }
                }
            })
            .await;
            if let Ok(Some(ok)) = attempt {
                return Some(ok);
            }
        }
        None
    }

    fn writes_refused(&self) -> bool {
        self.freeze.is_frozen() || !self.leader_health.is_up()
    }
}

pub struct ZkSidecar {
    pub shared: Arc<ZkShared>,
    pub local_addr: SocketAddr,
    pub resync: Option<Arc<Resync>>,
    pub verify: Option<Arc<VerifyState>>,
}

impl Sidecar for ZkSidecar {
    fn protocol(&self) -> &'static str {
        "zookeeper"
    }

    fn mirror(&self) -> Option<Arc<dyn MirrorView>> {
        self.shared.mirror.clone().map(|q| q as Arc<dyn MirrorView>)
    }

    fn resync(&self) -> Option<Arc<Resync>> {
        self.resync.clone()
    }

    fn verify(&self) -> Option<Arc<VerifyState>> {
        self.verify.clone()
    }

    fn health(&self) -> (&Health, Option<&Health>) {
        (
            &self.shared.leader_health,
            self.shared.follower_health.as_ref(),
        )
    }

    fn status(&self) -> serde_json::Value {
        let s = &self.shared;
        json!({
            "listen": self.local_addr.to_string(),
            "leader": { "servers": s.leader, "up": s.leader_health.is_up() },
            "serving": serving(&s.leader_health, s.follower_health.as_ref()),
            "follower": match (&s.follower, &s.follower_health) {
                (Some(f), Some(h)) => json!({ "servers": f, "up": h.is_up() }),
                _ => serde_json::Value::Null,
            },
            "mirror": s.mirror.as_ref().map(|q| serde_json::to_value(q.status()).unwrap_or_default()),
        })
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
        closing: shutdown.clone(),
    });
    let mut resync = None;
    let mut verify = None;
    if let (Some(q), Some(f)) = (mirror, &r.follower) {
        let applier = ZkApplier::new(
            f.clone(),
            r.follower_auth.clone(),
            Duration::from_millis(cfg.connect_timeout_ms),
            cfg.follower_session_timeout_ms.min(i32::MAX as u64) as i32,
            cfg.max_frame_bytes,
            q.clone(),
            shared.ephemerals.clone(),
        );
        worker::spawn(q.clone(), applier, repl.clone(), writer_stop);
        let rs = Resync::new("zookeeper", top.resync.clone(), q.clone());
        let up = shared.clone();
        resync::spawn(
            rs.clone(),
            Arc::new(ZkWalker::new(r, cfg, q)),
            Arc::new(move || up.follower_health.as_ref().is_some_and(Health::is_up)),
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
    tokio::spawn(health_loop(shared.clone(), true, shutdown.clone()));
    if shared.follower.is_some() {
        tokio::spawn(health_loop(shared.clone(), false, shutdown.clone()));
    }
    let handler = shared.clone();
    // Over the limit the connection is just closed: a ZooKeeper client tries another server.
    tokio::spawn(crate::listener::accept_loop(
        listener,
        cfg.max_connections,
        shared.metrics.clone(),
        None,
        shutdown,
        move |sock| session::serve(handler.clone(), sock),
    ));
    tracing::info!(listen = %local_addr, leader = %r.leader.join(","),
        follower = r.follower.as_ref().map(|f| f.join(",")).unwrap_or_else(|| "none".into()),
        "zookeeper sidecar ready");
    Ok(ZkSidecar {
        shared,
        local_addr,
        resync,
        verify,
    })
}

/// Answers a four-letter word: `ruok` and `isro` here, the rest relayed to a leader server.
pub async fn four_letter(shared: &ZkShared, mut client: TcpStream, word: [u8; 4]) {
    let answer: Vec<u8> = match &word {
        b"ruok" => b"imok".to_vec(),
        b"isro" => (if shared.writes_refused() { "ro" } else { "rw" })
            .as_bytes()
            .to_vec(),
        _ => relay_four_letter(shared, &word).await.unwrap_or_default(),
    };
    let _ = client.write_all(&answer).await;
    let _ = client.shutdown().await;
}

async fn relay_four_letter(shared: &ZkShared, word: &[u8; 4]) -> Option<Vec<u8>> {
    let timeout = Duration::from_millis(shared.cfg.health_timeout_ms.max(1000));
    for server in &shared.leader {
        if let Ok(Some(v)) = tokio::time::timeout(timeout, ask(server, word)).await {
            return Some(v);
        }
    }
    None
}

async fn ask(server: &str, word: &[u8; 4]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(server).await.ok()?;
    s.write_all(word).await.ok()?;
    let mut out = Vec::new();
    s.take(1 << 20).read_to_end(&mut out).await.ok()?;
    Some(out)
}

/// An ensemble is up when one of its servers says it serves (`srvr` shows a `Mode:`).
async fn health_loop(shared: Arc<ZkShared>, leader: bool, shutdown: CancellationToken) {
    let (servers, health) = if leader {
        (&shared.leader, &shared.leader_health)
    } else {
        match (&shared.follower, &shared.follower_health) {
            (Some(s), Some(h)) => (s, h),
            _ => return,
        }
    };
    let interval = Duration::from_millis(shared.cfg.health_interval_ms);
    let timeout = Duration::from_millis(shared.cfg.health_timeout_ms);
    loop {
        let mut ok = false;
        for server in servers {
            if let Ok(Some(out)) = tokio::time::timeout(timeout, ask(server, b"srvr")).await {
                if String::from_utf8_lossy(&out).contains("Mode:") {
                    ok = true;
                    break;
                }
            }
        }
        if ok {
            health.record_success();
        } else {
            health.record_failure("no server of the ensemble is serving");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
