//! The protocol-independent accept loop both sidecars use: a permit per connection (at most
//! `max_connections`), capped back-off on accept errors (EMFILE and friends), `TCP_NODELAY`,
//! one task per client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::ProtocolMetrics;

/// Accepts until `shutdown`. A client over the limit gets `refusal` (if any) and is closed.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    metrics: ProtocolMetrics,
    refusal: Option<&'static [u8]>,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let sock = match accepted {
            Ok((s, _)) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                tracing::warn!(protocol = metrics.protocol, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.client_error("max_connections");
            if let Some(msg) = refusal {
                tokio::spawn(async move {
                    let mut sock = sock;
                    let _ = sock.write_all(msg).await;
                });
            }
            continue;
        };
        metrics.connections_total.increment(1);
        let task = handle(sock);
        tokio::spawn(async move {
            let _permit = permit;
            task.await;
        });
    }
}
