//! The disaster paths of issue 8, on real servers through the real binary or an in-process
//! sidecar, for both protocols:
//! - `SIGTERM` with writes still queued: the sidecar keeps mirroring until the queue is
//!   empty, exits 0, and the follower equals the leader right after;
//! - a write the follower will never accept (a database it does not have, a node over its
//!   `jute.maxbuffer`) is skipped, counted and flagged by name, and the writes behind it
//!   still reach the follower within seconds;
//! - a follower frozen (`SIGSTOP`) under sustained small writes: the sidecar's RSS grows by
//!   at most `max_queue_bytes` plus a fixed allowance, then the queue overflows as designed
//!   and the follower converges after `SIGCONT`.
//!
//! Scenarios run one at a time (`SERIAL`): each runs several servers and a workload on 2
//! cores, and the memory ones measure the process.
mod common;

use std::time::{Duration, Instant};

use common::fault::{Fault, FaultRelay};
use common::zk::{assert_same_tree, persistent, zk_client, ZkOptions, ZkProxy, ZkServer};
use common::*;
use redis::AsyncCommands;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A config file for the real binary: one protocol section, fast retries.
fn bin_config(section: &str, extra: &str) -> (tempfile::NamedTempFile, String, u16) {
    let (port, admin_port) = (free_port(), free_port());
    let cfg = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(
        cfg.path(),
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nlevel = \"warn\"\n\
             {}\n\
             [replication]\nretry_initial_backoff_ms = 20\nretry_max_backoff_ms = 300\n\
             apply_timeout_ms = 5000\n{extra}",
            section.replace("{port}", &port.to_string())
        ),
    )
    .expect("write config");
    (cfg, format!("http://127.0.0.1:{admin_port}"), port)
}

async fn mirror(p: &BinProxy, protocol: &str) -> Value {
    p.status()
        .await
        .map(|s| s[protocol]["mirror"].clone())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// SIGTERM drains
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_sigterm_with_a_queue_drains_exits_zero_and_loses_nothing() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let relay = FaultRelay::start(&follower.addr());
    let (cfg, admin, port) = bin_config(
        &format!(
            "[redis]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"redis://{}\"",
            leader.url(),
            relay.addr()
        ),
        "[maintenance]\ndrain_timeout_ms = 20000\n",
    );
    let url = format!("redis://127.0.0.1:{port}");
    let mut p = BinProxy::start(cfg.path(), &admin, &url).await;
    eventually(Duration::from_secs(20), || async {
        (mirror(&p, "redis").await["in_sync"] == true)
            .then_some(())
            .ok_or_else(|| "resync at start".to_string())
    })
    .await;
    relay.set(Fault::Stall);
    let mut c = client(&url).await;
    for i in 0..500 {
        let _: () = c.set(format!("k:{i}"), i).await.expect("SET");
    }
    let _: () = c.del("k:7").await.expect("DEL");
    let _: i64 = c.incr("counter", 5).await.expect("INCRBY");
    p.wait_queue_depth_over("redis", 0).await;
    drop(c);
    // The follower link comes back only after SIGTERM: the drain has to do the work.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        relay.set(Fault::Pass);
        relay
    });
    let status = tokio::task::spawn_blocking(move || {
        let st = p.terminate(Duration::from_secs(30));
        (st, p)
    })
    .await
    .expect("join");
    let _relay = release.await.expect("relay");
    let exit = status
        .0
        .expect("statemirror did not exit within 30 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let n = assert_same_data(&leader, &follower).await;
    assert_eq!(
        n, 500,
        "every acknowledged write is on the follower at exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_sigterm_with_a_queue_drains_exits_zero_and_loses_nothing() {
    let _g = SERIAL.lock().await;
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let relay = FaultRelay::start(&follower.addr());
    let (cfg, admin, port) = bin_config(
        &format!(
            "[zookeeper]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"{}\"",
            leader.addr(),
            relay.addr()
        ),
        "[maintenance]\ndrain_timeout_ms = 20000\n",
    );
    let connect = format!("127.0.0.1:{port}");
    let mut p = BinProxy::start(cfg.path(), &admin, &connect).await;
    eventually(Duration::from_secs(20), || async {
        (mirror(&p, "zookeeper").await["in_sync"] == true)
            .then_some(())
            .ok_or_else(|| "resync at start".to_string())
    })
    .await;
    relay.set(Fault::Stall);
    let c = zk_client(&connect).await;
    c.create("/drain", b"", &persistent())
        .await
        .expect("create");
    for i in 0..200 {
        c.create(&format!("/drain/n{i}"), b"x", &persistent())
            .await
            .expect("create");
    }
    c.set_data("/drain/n3", b"changed", None)
        .await
        .expect("set");
    c.delete("/drain/n4", None).await.expect("delete");
    p.wait_queue_depth_over("zookeeper", 0).await;
    drop(c);
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        relay.set(Fault::Pass);
        relay
    });
    let status = tokio::task::spawn_blocking(move || {
        let st = p.terminate(Duration::from_secs(30));
        (st, p)
    })
    .await
    .expect("join");
    let _relay = release.await.expect("relay");
    let exit = status
        .0
        .expect("statemirror did not exit within 30 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let n = assert_same_tree(&leader.addr(), &follower.addr()).await;
    assert!(n >= 200, "{n} nodes compared");
}

// ---------------------------------------------------------------------------------------
// Poison writes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_a_write_the_follower_refuses_is_skipped_and_the_rest_flows() {
    let _g = SERIAL.lock().await;
    // The leader has 32 databases, the follower Redis's default 16.
    let leader = RedisServer::start_with(&["--databases", "32"]);
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    let _: () = redis::cmd("SELECT")
        .arg(20)
        .query_async(&mut c)
        .await
        .expect("SELECT 20");
    let _: () = c
        .set("poison", "only-on-the-leader")
        .await
        .expect("SET in db 20");
    let _: () = redis::cmd("SELECT")
        .arg(0)
        .query_async(&mut c)
        .await
        .expect("SELECT 0");
    for i in 0..1000 {
        let _: () = c.set(format!("after:{i}"), i).await.expect("SET");
    }
    let started = Instant::now();
    let mut f = follower.conn().await;
    eventually(Duration::from_secs(10), || {
        let mut f = f.clone();
        async move {
            let n: usize = redis::cmd("DBSIZE")
                .query_async(&mut f)
                .await
                .map_err(|e| e.to_string())?;
            (n >= 1000)
                .then_some(())
                .ok_or(format!("{n} keys on the follower"))
        }
    })
    .await;
    eprintln!(
        "1000 writes behind the poison on the follower after {:?}",
        started.elapsed()
    );
    // The refused SET did not land in the follower's current database instead.
    let poison: Option<String> = f.get("poison").await.expect("GET");
    assert_eq!(
        poison, None,
        "a failed SELECT must not redirect the write to db 0"
    );
    let s = proxy.status().await;
    let m = &s["redis"]["mirror"];
    assert_eq!(m["in_sync"], false, "{m}");
    assert!(m["refused_writes"].as_u64() >= Some(1), "{m}");
    let why = m["out_of_sync_reason"].as_str().unwrap_or_default();
    assert!(why.contains("\"poison\"") && why.contains("db 20"), "{why}");
    let (_, metrics) = proxy.http("GET", "/metrics", None).await;
    assert!(
        metrics.contains(
            "statemirror_mirror_refused_total{protocol=\"redis\",reason=\"db_out_of_range\"}"
        ),
        "{metrics}"
    );
    // A resync copies everything it can and names what it could not.
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert!(code == 202 || code == 200 || code == 409, "{code} {body}");
    eventually(Duration::from_secs(30), || async {
        let s = proxy.status().await;
        let r = &s["redis"]["resync"];
        (r["current"].is_null() && !r["last"].is_null())
            .then_some(())
            .ok_or(format!("{r}"))
    })
    .await;
    let n: usize = redis::cmd("DBSIZE")
        .query_async(&mut f)
        .await
        .expect("DBSIZE");
    assert_eq!(n, 1000);
    let s = proxy.status().await;
    let last = &s["redis"]["resync"]["last"];
    assert_eq!(last["outcome"], "completed", "{last}");
    assert!(last["refused"].as_u64() >= Some(1), "{last}");
    assert!(last["copied"].as_u64() >= Some(1000), "{last}");
    let m = &s["redis"]["mirror"];
    assert_eq!(
        m["in_sync"], false,
        "still flagged: db 20 is not on the follower"
    );
    let named = m["last_refused"].as_str().unwrap_or_default();
    assert!(named.contains("database 20"), "{named}");
    // Settled: no resync loop while nothing else is lost.
    let runs = s["redis"]["resync"]["resyncs_total"].as_u64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["resync"]["resyncs_total"].as_u64(), runs, "{s}");
    assert_eq!(s["redis"]["mirror"]["queue_depth"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_a_node_over_the_followers_maxbuffer_is_skipped_and_the_rest_flows() {
    let _g = SERIAL.lock().await;
    let small = ZkOptions {
        jvm_args: vec!["-Djute.maxbuffer=65536".into()],
        ..ZkOptions::default()
    };
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone_with(small));
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |c| {
        c.replication.retry_initial_backoff_ms = 20;
        c.replication.retry_max_backoff_ms = 200;
    })
    .await;
    let c = proxy.client().await;
    c.create("/big", &vec![7u8; 200_000], &persistent())
        .await
        .expect("a 200 KB node: the leader takes it");
    c.create("/after", b"", &persistent())
        .await
        .expect("create");
    for i in 0..1000 {
        c.create(&format!("/after/n{i}"), b"x", &persistent())
            .await
            .expect("create");
    }
    let started = Instant::now();
    let f = zk_client(&follower.addr()).await;
    eventually(Duration::from_secs(20), || {
        let f = f.clone();
        async move {
            let (kids, _) = f.get_children("/after").await.map_err(|e| e.to_string())?;
            (kids.len() == 1000)
                .then_some(())
                .ok_or(format!("{} children on the follower", kids.len()))
        }
    })
    .await;
    eprintln!(
        "1000 writes behind the poison on the follower after {:?}",
        started.elapsed()
    );
    let s = proxy.status().await;
    let m = &s["zookeeper"]["mirror"];
    assert_eq!(m["in_sync"], false, "{m}");
    assert!(m["refused_writes"].as_u64() >= Some(1), "{m}");
    let why = m["out_of_sync_reason"].as_str().unwrap_or_default();
    assert!(why.contains("/big"), "{why}");
    let (_, metrics) = proxy.http("GET", "/metrics", None).await;
    assert!(
        metrics.contains(
            "statemirror_mirror_refused_total{protocol=\"zookeeper\",reason=\"connection_closed\"}"
        ),
        "{metrics}"
    );
}
