//! The protocol-independent accept loop both sidecars use: a permit per connection (at most
//! `max_connections`), capped back-off on accept errors (EMFILE and friends), `TCP_NODELAY`,
//! one task per client. Also how every backend connection is opened ([`connect_backend`]):
//! `TCP_NODELAY` and TCP keepalive, so a peer that vanished without a RST (a lost region is
//! a black hole, not a refusal) is noticed on an idle connection within ~25 s. Host names
//! are resolved by [`crate::resolve`] (the shipped binary is static: no NSS).

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
        // Boxed: an async block awaiting a future it captured keeps room for it twice (the
        // capture and the awaited copy), which doubled every idle client's memory.
        let task = Box::pin(handle(sock));
        tokio::spawn(async move {
            let _permit = permit;
            task.await;
        });
    }
}

/// How long a client has to finish the TLS handshake on a TLS listener.
const TLS_ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A new client's stream: as is on a plain listener; on a TLS listener after the handshake.
/// A failed or timed-out handshake closes this client only (`None`), counted as
/// `client_error{reason="tls"}` and logged at info with the client's address.
pub async fn client_stream(
    tls: Option<&crate::tls::ServerTls>,
    sock: TcpStream,
    metrics: &ProtocolMetrics,
) -> Option<crate::tls::Stream> {
    let Some(tls) = tls else {
        return Some(crate::tls::Stream::Plain(sock));
    };
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let protocol = metrics.protocol;
    match tokio::time::timeout(TLS_ACCEPT_TIMEOUT, tls.accept(sock)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            metrics.client_error("tls");
            tracing::info!(protocol, %peer, error = %e, "client TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.client_error("tls");
            tracing::info!(protocol, %peer, "client TLS handshake timed out");
            None
        }
    }
}

/// Keepalive on backend connections: first probe after 10 s idle, then every 5 s, dead
/// after 3 unanswered (~25 s), far below the kernel default of 2 h.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// Sets `TCP_NODELAY` and keepalive on a backend connection. Best effort: a socket that
/// refuses an option still works, it only notices a silent peer later.
pub fn tune_backend(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(s).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive on a backend connection");
    }
}

/// Connects to a backend `host:port` (no timeout: callers bound it, name resolution
/// included) and tunes the socket. Names go through [`crate::resolve`], not the C library;
/// each resolved address is tried in turn.
pub async fn connect_backend(addr: &str) -> std::io::Result<TcpStream> {
    let s = crate::resolve::connect(addr).await?;
    tune_backend(&s);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backend_connections_have_keepalive() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let s = connect_backend(&addr.to_string()).await.expect("connect");
        let r = socket2::SockRef::from(&s);
        assert!(r.keepalive().expect("SO_KEEPALIVE"));
        assert!(r.tcp_nodelay().expect("TCP_NODELAY"));
    }
}
