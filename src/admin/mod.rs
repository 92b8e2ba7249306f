//! The HTTP admin API (hyper 1), on its own listener (loopback by default).
//!
//! | route | does |
//! |---|---|
//! | `GET /healthz` | liveness: 200 while the process runs |
//! | `GET /readyz` | 200 when every sidecar can serve (leader up, or follower serving reads), else 503 |
//! | `GET /status` | JSON: maintenance, backends, queue, lag, in-sync, counters (no secrets, no state: see `replication::public`) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /maintenance` | whether writes are frozen |
//! | `PUT /maintenance` (token) | freeze writes; answers once in-flight writes are answered and the mirror drained (or the drain timeout passed) |
//! | `DELETE /maintenance` (token) | resume writes |
//! | `GET /verify` (token) | compare leader and follower now; JSON report per protocol (`?max=N` differences listed) |
//! | `POST /resync` (token) | mark the follower out of sync and start a full resync (`?force=true`: even from an empty leader) |
//! | `GET /cluster` | `[cluster]`: the cluster-wide freeze state and every member (queue, lag, sync, maintenance, heartbeat age) |
//! | `GET /cluster/maintenance` | what this sidecar last read of the cluster-wide freeze |
//! | `PUT /cluster/maintenance[?timeout_ms=N]` (token) | freeze every sidecar; 200 once each confirmed (writes answered, mirror drained), 504 naming those that did not (also `PUT /maintenance?cluster=true`) |
//! | `DELETE /cluster/maintenance[?timeout_ms=N]` (token) | resume writes on every sidecar; same answer |
//!
//! Secure by default (README "Security"): every `PUT`, `DELETE` and `POST`, and `GET /verify`
//! (it loads both backends and returns NiFi state values), need `Authorization: Bearer
//! <token>` (401 otherwise), whatever the config. The token is `admin.token_file`'s, or one
//! generated at start into a file only this user can read (see [`token`]), where the CLI
//! finds it. Before routing, [`guard`] refuses what only a browser would send (421 foreign
//! `Host`, 405 `OPTIONS`, 403 `Cookie`/`Origin`, 415 form bodies). Only the `GET` routes
//! above without a token stay open (probes, Prometheus), and `/status` and `/metrics` carry
//! no state values, key names or backend error texts (problems show as a category and the
//! backend's error code; the details are logged).
//! Errors are JSON `{"error": "..."}` with a 4xx status.

pub mod client;
mod cluster_routes;
mod guard;
mod routes;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::replication::cluster::Cluster;
use crate::replication::freeze::Freeze;
use crate::replication::queue::MirrorView;
use crate::sidecar::Sidecar;

/// Everything the routes read.
pub struct AdminState {
    pub freeze: Arc<Freeze>,
    /// `[cluster]`: the cluster-wide freeze and member list.
    pub cluster: Option<Arc<Cluster>>,
    pub sidecars: Vec<Arc<dyn Sidecar>>,
    pub mirrors: Vec<(&'static str, Arc<dyn MirrorView>)>,
    pub prom: PrometheusHandle,
    /// The bearer token every mutation and `GET /verify` need (configured or generated).
    pub token: crate::config::Secret,
    /// `admin.listen` as configured: the `Host` header must name it (see `guard`).
    pub listen: SocketAddr,
    /// `admin.allowed_hosts`: further names the `Host` header may carry.
    pub allowed_hosts: Vec<String>,
    pub drain_timeout: Duration,
    /// Default `?max=` of `GET /verify`.
    pub max_differences: usize,
    /// `[identity] file`: its state (entries, reloads, a load error) in `/status`.
    pub identity: crate::nifi::identity_live::SharedIdentity,
}

/// Most admin connections at once; the API is for operators and scrapers, not traffic.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Binds and serves until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_tls(addr, state, shutdown, None).await
}

/// [`serve`], over HTTPS when `tls` is set (`[admin.tls]`: Prometheus scrapes over TLS).
pub async fn serve_tls(
    addr: SocketAddr,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
    tls: Option<crate::tls::ServerTls>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (sock, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue; // dropping the socket closes it
            };
            let state = state.clone();
            let stop = shutdown.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let sock = match tls {
                    None => crate::tls::Stream::Plain(sock),
                    Some(t) => {
                        match tokio::time::timeout(Duration::from_secs(10), t.accept(sock)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::info!(error = %e, "admin TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(routes::handle(&state, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(sock), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
            });
        }
    });
    tracing::info!(listen = %local, "admin API ready");
    Ok(local)
}
