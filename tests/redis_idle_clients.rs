//! What an idle client costs the sidecar, in both modes, on the real binary.
//!
//! A guard, not a benchmark. The test binary is a debug build, whose futures are larger
//! than a release build's: an idle client measures 6.0 KiB pinned and 4.8 KiB multiplexed
//! here (release, `benches/redis_proxy.rs`: 4.2 and 3.0 KiB). The regression this is here
//! for, an accept loop that kept each session future twice, measures 9.1 KiB pinned here;
//! read buffers kept per idle connection would cost 16 KiB or more.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Clients opened and measured (after a warm-up batch that grows the allocator's pools).
const CLIENTS: usize = 400;
const WARM_UP: usize = 50;
/// Per idle client, in the proxy.
const BOUND_BYTES: u64 = 8 * 1024;

/// Opens `n` clients; each sends `PING` and reads `+PONG`, then stays idle.
async fn idle_clients(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        s.write_all(b"PING\r\n").await.expect("ping");
        let mut buf = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("pong in time")
            .expect("pong");
        assert_eq!(&buf, b"+PONG\r\n");
        out.push(s);
    }
    out
}

/// Starts the binary in one mode, opens the clients, returns (bytes per client, leader
/// connections added per client).
async fn measure(multiplex: bool) -> (u64, f64) {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let (cfg, admin, port) = binary_config(&format!(
        "[redis]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"{}\"\n\
         multiplex = {multiplex}\n",
        leader.url(),
        follower.url()
    ));
    let addr = format!("127.0.0.1:{port}");
    let proxy = BinProxy::start(cfg.path(), &admin, &format!("redis://{addr}")).await;
    let _warm = idle_clients(&addr, WARM_UP).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, conns0) = (proxy.rss_bytes(), redis_clients(&leader).await);
    let clients = idle_clients(&addr, CLIENTS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss1, conns1) = (proxy.rss_bytes(), redis_clients(&leader).await);
    drop(clients);
    let per_client = rss1.saturating_sub(rss0) / CLIENTS as u64;
    let conns = conns1.saturating_sub(conns0) as f64 / CLIENTS as f64;
    eprintln!("multiplex = {multiplex}: {per_client} bytes and {conns:.2} leader connections per idle client");
    (per_client, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_costs_a_few_kib() {
    let (pinned, pinned_conns) = measure(false).await;
    assert!(
        pinned <= BOUND_BYTES,
        "pinned: {pinned} bytes per idle client (bound {BOUND_BYTES})"
    );
    assert!(pinned_conns > 0.9, "pinned: a leader connection each");
    let (shared, shared_conns) = measure(true).await;
    assert!(
        shared <= BOUND_BYTES,
        "multiplexed: {shared} bytes per idle client (bound {BOUND_BYTES})"
    );
    assert!(
        shared_conns < 0.05,
        "multiplexed: no leader connection of its own ({shared_conns:.2} per client)"
    );
}
