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
    binary_config(&format!(
        "{section}\n\
         [replication]\nretry_initial_backoff_ms = 20\nretry_max_backoff_ms = 300\n\
         apply_timeout_ms = 5000\n{extra}"
    ))
}

/// `SIGTERM`s the sidecar and lets the stalled follower link through 1.5 s later, so the
/// drain after the signal has to do the work; asserts a clean exit within 30 s.
async fn terminate_then_release(mut p: BinProxy, relay: FaultRelay) {
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        relay.set(Fault::Pass);
        relay
    });
    let exit = tokio::task::spawn_blocking(move || p.terminate(Duration::from_secs(30)))
        .await
        .expect("join");
    let _relay = release.await.expect("relay");
    let exit = exit.expect("statemirror did not exit within 30 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
}

/// Keys in the connection's database, statemirror's generation marker left out.
async fn user_keys(c: &mut redis::aio::MultiplexedConnection) -> usize {
    let n: usize = redis::cmd("DBSIZE").query_async(c).await.expect("DBSIZE");
    let marker: usize = c.exists("statemirror:generation").await.expect("EXISTS");
    n - marker
}

/// An operator's `POST /resync` is accepted, and the run it starts ends `refused`.
async fn resync_is_refused(p: &BinProxy, protocol: &str) {
    let (code, _) = statemirror::admin::client::request(
        &p.admin,
        hyper::Method::POST,
        "/resync",
        statemirror::admin::client::discover_token(&p.admin).as_deref(),
        Duration::from_secs(5),
    )
    .await
    .expect("POST /resync");
    assert!(code < 300);
    eventually(Duration::from_secs(10), || async {
        let s = p.status().await?;
        let last = &s[protocol]["resync"]["last"];
        (last["outcome"] == "refused")
            .then_some(())
            .ok_or(format!("{last}"))
    })
    .await;
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
    let p = BinProxy::start(cfg.path(), &admin, &url).await;
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
    terminate_then_release(p, relay).await;
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
    let p = BinProxy::start(cfg.path(), &admin, &connect).await;
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
    terminate_then_release(p, relay).await;
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
    // Metrics are process-wide; tests here run one at a time (`SERIAL`), so a delta is
    // this test's own.
    let refused = [("protocol", "redis"), ("reason", "db_out_of_range")];
    let refused_before = proxy
        .metric("statemirror_mirror_refused_total", &refused)
        .await;
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
    // /status says why without the key (the log names it).
    assert!(why.contains("db_out_of_range"), "{why}");
    assert!(!s.to_string().contains("poison"), "{s}");
    let refused_now = proxy
        .metric("statemirror_mirror_refused_total", &refused)
        .await;
    assert!(
        refused_now >= refused_before + 1.0,
        "refused {refused_before} -> {refused_now}"
    );
    // A resync copies everything it can and names what it could not.
    // The refusal made the follower out of sync, so an automatic resync may have run while
    // the 1,000 SETs were still being written: wait it out, then count completed runs, so
    // the run judged below is one that started after the request (all writes done).
    let completed = |s: &serde_json::Value| {
        s["redis"]["resync"]["resyncs_by_outcome"]["completed"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = eventually(Duration::from_secs(30), || async {
        let s = proxy.status().await;
        s["redis"]["resync"]["current"]
            .is_null()
            .then(|| completed(&s))
            .ok_or(format!("{}", s["redis"]["resync"]))
    })
    .await;
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert!(code == 202 || code == 200 || code == 409, "{code} {body}");
    eventually(Duration::from_secs(30), || async {
        let s = proxy.status().await;
        let r = &s["redis"]["resync"];
        // Completed: a run the request restarted (outcome "restarted") is not the end.
        (r["current"].is_null() && completed(&s) > before && r["last"]["outcome"] == "completed")
            .then_some(())
            .ok_or(format!("{r}"))
    })
    .await;
    assert_eq!(user_keys(&mut f).await, 1000);
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
    // The category and the backend's error code, not the database's keys.
    assert!(named.starts_with("db_out_of_range"), "{named}");
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
    let refused = [("protocol", "zookeeper"), ("reason", "connection_closed")];
    let refused_metric = || async {
        let (_, text) = proxy.http("GET", "/metrics", None).await;
        metric(&text, "statemirror_mirror_refused_total", &refused).unwrap_or(0.0)
    };
    let refused_before = refused_metric().await;
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
    // Without the path (the log names it).
    assert!(why.contains("refused a write"), "{why}");
    assert!(!s.to_string().contains("/big"), "{s}");
    let refused_now = refused_metric().await;
    assert!(
        refused_now >= refused_before + 1.0,
        "refused {refused_before} -> {refused_now}"
    );
}

// ---------------------------------------------------------------------------------------
// Follower frozen: memory stays bounded
// ---------------------------------------------------------------------------------------

/// The queue's byte limit in the memory scenarios.
const QUEUE_BYTES: u64 = 16 << 20;
/// What the sidecar may grow beyond `QUEUE_BYTES` while the follower is frozen: the
/// in-flight batch (`batch_max_bytes` default 8 MiB of ops, decoded), allocator slack and
/// fragmentation, the deque's capacity doubling (README "Guarantees" documents the figure).
const ALLOWANCE: u64 = 24 << 20;
/// How long the follower stays frozen.
const FROZEN: Duration = Duration::from_secs(30);

/// Samples the process's RSS every 200 ms until `stop`; returns the peak.
fn rss_sampler(
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let kb = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
                peak = peak.max(kb * 1024);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        peak
    })
}

fn memory_extra() -> String {
    format!(
        "max_queue_bytes = {QUEUE_BYTES}\nmax_queue_ops = 10000000\n\
         [resync]\nmax_keys_per_second = 0\nretry_interval_ms = 300\n"
    )
}

/// 100-byte `SET`s over 500 keys from `redis-benchmark` (C, so the load generator does not
/// take the 2 cores from the proxy): `conns` connections each with one request at a time
/// (NiFi's shape: every request arrives in a read of its own, the case where a queued slice
/// of the read buffer would pin a whole buffer), plus 8 connections pipelining 16 at a time
/// (so the rate passes 10k/s even through a debug build). Run until killed; their output
/// (kept in a file) names any error reply.
fn redis_load(port: u16, conns: usize) -> (Vec<std::process::Child>, tempfile::NamedTempFile) {
    let out = tempfile::NamedTempFile::new().expect("tempfile");
    let spawn = |conns: usize, pipeline: usize| {
        std::process::Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "set", "-n", "1000000000", "-r", "500", "-d", "100"])
            .args(["-c", &conns.to_string(), "-P", &pipeline.to_string(), "-q"])
            .stdout(out.reopen().expect("tempfile"))
            .stderr(out.reopen().expect("tempfile"))
            .spawn()
            .expect("redis-benchmark (scripts/install-deps.sh installs redis-tools)")
    };
    (vec![spawn(conns, 1), spawn(8, 16)], out)
}

/// `SET`s the server has run (`INFO commandstats`), and how many of them failed.
async fn set_calls(server: &RedisServer) -> (u64, u64) {
    let mut c = server.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .expect("INFO");
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:"))
        .unwrap_or_default();
    let field = |name: &str| {
        line.split(',')
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls="), field("failed_calls="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_follower_frozen_under_load_keeps_the_sidecar_within_its_memory_bound() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let (cfg, admin, port) = bin_config(
        &format!(
            "[redis]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"{}\"",
            leader.url(),
            follower.url()
        ),
        &memory_extra(),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let p = BinProxy::start(cfg.path(), &admin, &url).await;
    // Warm up with the follower running: connections, buffers and pools exist before the
    // baseline is taken.
    let (mut load, load_out) = redis_load(port, 24);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = p.rss_bytes();
    signal(follower.pid(), "STOP");
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = rss_sampler(p.pid(), sampling.clone());
    let t0 = Instant::now();
    let (calls_before, _) = set_calls(&leader).await;
    let before: u64 = {
        let s = p.status().await.expect("status");
        s["redis"]["mirror"]["mirrored_writes"]
            .as_u64()
            .unwrap_or(0)
    };
    tokio::time::sleep(FROZEN).await;
    let (calls_after, failed) = set_calls(&leader).await;
    let frozen_for = t0.elapsed();
    for l in &mut load {
        let _ = l.kill();
        let _ = l.wait();
    }
    let written = calls_after - calls_before;
    let rate = written as f64 / frozen_for.as_secs_f64();
    let load_log = std::fs::read_to_string(load_out.path()).unwrap_or_default();
    assert!(
        !load_log.contains("ERR") && !load_log.contains("rror"),
        "a client write failed: {load_log}"
    );
    assert_eq!(failed, 0, "SETs failed on the leader");
    sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let s = p.status().await.expect("status");
    let m = &s["redis"]["mirror"];
    eprintln!(
        "redis: {written} SETs acknowledged while the follower was frozen ({rate:.0}/s for \
         {:.0} s); RSS baseline {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB (bound {:.0} + \
         {:.0} MiB); mirror {m}; mirrored before the freeze {before}",
        frozen_for.as_secs_f64(),
        baseline as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        peak.saturating_sub(baseline) as f64 / 1048576.0,
        QUEUE_BYTES as f64 / 1048576.0,
        ALLOWANCE as f64 / 1048576.0,
    );
    assert!(
        m["dropped_writes"].as_u64() > Some(0),
        "the queue overflowed as designed: {m}"
    );
    assert!(
        peak.saturating_sub(baseline) <= QUEUE_BYTES + ALLOWANCE,
        "RSS grew by {} bytes",
        peak.saturating_sub(baseline)
    );
    signal(follower.pid(), "CONT");
    settle_with("redis", || async { p.status().await.unwrap_or_default() }).await;
    assert_same_data(&leader, &follower).await;
}

/// `setData`s of 200 bytes from `sessions` sessions, each with 32 requests in flight, until
/// `stop`; returns how many were acknowledged.
async fn zk_load(
    connect: &str,
    sessions: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let c = zk_client(connect).await;
    let _ = c.create("/m", b"", &persistent()).await;
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let c = zk_client(connect).await;
        for k in 0..32 {
            let path = format!("/m/s{s}k{k}");
            let _ = c.create(&path, b"", &persistent()).await;
            let c = c.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let data = vec![b'd'; 200];
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        c.set_data(&path, &data, None),
                    )
                    .await
                    {
                        Ok(Ok(_)) => n += 1,
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                n
            }));
        }
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_follower_frozen_under_load_keeps_the_sidecar_within_its_memory_bound() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let _g = SERIAL.lock().await;
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let (cfg, admin, port) = bin_config(
        &format!(
            "[zookeeper]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"{}\"",
            leader.addr(),
            follower.addr()
        ),
        &memory_extra(),
    );
    let connect = format!("127.0.0.1:{port}");
    let p = BinProxy::start(cfg.path(), &admin, &connect).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = zk_load(&connect, 4, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = p.rss_bytes();
    signal(follower.pid(), "STOP");
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = rss_sampler(p.pid(), sampling.clone());
    let t0 = Instant::now();
    tokio::time::sleep(FROZEN).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for h in load {
        written += h.await.expect("load task");
    }
    sampling.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let s = p.status().await.expect("status");
    let m = &s["zookeeper"]["mirror"];
    eprintln!(
        "zookeeper: {written} setData acknowledged ({:.0}/s over the whole run, {:.0} s frozen); \
         RSS baseline {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB (bound {:.0} + {:.0} MiB); mirror {m}",
        written as f64 / (t0.elapsed().as_secs_f64() + 3.0),
        FROZEN.as_secs_f64(),
        baseline as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        peak.saturating_sub(baseline) as f64 / 1048576.0,
        QUEUE_BYTES as f64 / 1048576.0,
        ALLOWANCE as f64 / 1048576.0,
    );
    assert!(
        m["dropped_writes"].as_u64() > Some(0),
        "the queue overflowed as designed: {m}"
    );
    assert!(
        peak.saturating_sub(baseline) <= QUEUE_BYTES + ALLOWANCE,
        "RSS grew by {} bytes",
        peak.saturating_sub(baseline)
    );
    signal(follower.pid(), "CONT");
    settle_with("zookeeper", || async {
        p.status().await.unwrap_or_default()
    })
    .await;
    assert_same_tree(&leader.addr(), &follower.addr()).await;
}

// ---------------------------------------------------------------------------------------
// Leader lost with work queued
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_leader_killed_with_the_follower_frozen_still_mirrors_every_exact_write() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let _g = SERIAL.lock().await;
    let mut leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.replication.retry_initial_backoff_ms = 20;
        c.replication.retry_max_backoff_ms = 300;
    })
    .await;
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..6 {
        let (url, acked, stop) = (proxy.url(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(client) = redis::Client::open(url) else {
                return;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                return;
            };
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("e:{t}:{n}");
                let call = tokio::time::timeout(Duration::from_secs(2), async {
                    // An exact write, then two whose effect is read from the leader.
                    let r: redis::RedisResult<()> = c.set(&key, n).await;
                    let _: redis::RedisResult<i64> = c.incr(format!("shared:{}", t % 2), 1).await;
                    let _: redis::RedisResult<i64> = c.hset(format!("h:{t}"), "f", n).await;
                    r
                })
                .await;
                match call {
                    Ok(Ok(())) => {
                        acked.lock().expect("lock").insert(key, n);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(follower.pid(), "STOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    leader.kill(); // mid-write: the workload is still running
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    signal(follower.pid(), "CONT");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 100,
        "{} exact writes acknowledged",
        acked.len()
    );
    let mut f = follower.conn().await;
    let started = Instant::now();
    eventually(Duration::from_secs(30), || {
        let mut f = f.clone();
        let acked = &acked;
        async move {
            let keys: Vec<&String> = acked.keys().collect();
            let mut missing = 0;
            for chunk in keys.chunks(500) {
                let vals: Vec<Option<u64>> = redis::cmd("MGET")
                    .arg(chunk)
                    .query_async(&mut f)
                    .await
                    .map_err(|e| e.to_string())?;
                missing += chunk
                    .iter()
                    .zip(vals)
                    .filter(|(k, v)| *v != acked.get(**k).copied())
                    .count();
            }
            (missing == 0).then_some(()).ok_or(format!(
                "{missing} of {} acknowledged exact writes not on the follower",
                acked.len()
            ))
        }
    })
    .await;
    eprintln!(
        "{} acknowledged exact writes on the follower {:?} after SIGCONT",
        acked.len(),
        started.elapsed()
    );
    // The copies wait for the leader: not drained, not counted as mirrored.
    let m = proxy.status().await["redis"]["mirror"].clone();
    assert!(m["deferred_copies"].as_u64() > Some(0), "{m}");
    // The leader comes back empty (a new run_id): the copies are not read from it; they are
    // given up and flagged, and nothing is deleted from the follower on their account.
    leader.restart();
    eventually(Duration::from_secs(20), || async {
        let m = proxy.status().await["redis"]["mirror"].clone();
        let why = m["out_of_sync_reason"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (m["deferred_copies"] == 0 && why.contains("could not be read from the leader"))
            .then_some(())
            .ok_or(format!("{m}"))
    })
    .await;
    let n: usize = redis::cmd("DBSIZE")
        .query_async(&mut f)
        .await
        .expect("DBSIZE");
    assert!(n >= acked.len(), "the follower kept what it had: {n} keys");
}

// ---------------------------------------------------------------------------------------
// A timed-out batch never lands after a later one
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_a_timed_out_batch_cannot_land_after_a_later_one() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let relay = FaultRelay::start(&follower.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.redis.as_mut().expect("redis").follower = Some(format!("redis://{}", relay.addr()));
        c.replication.apply_timeout_ms = 1000;
        c.replication.retry_initial_backoff_ms = 20;
        c.replication.retry_max_backoff_ms = 200;
    })
    .await;
    let mut c = proxy.conn().await;
    let _: () = c.set("k", "first").await.expect("SET");
    proxy.drained().await;
    // The writer's connection holds its next batch; a new connection would pass.
    relay.set(Fault::StallExisting);
    let _: () = c.set("k", "old").await.expect("SET old");
    // The batch times out (1 s) and is resent on a new connection, which passes.
    let mut f = follower.conn().await;
    eventually(Duration::from_secs(10), || {
        let mut f = f.clone();
        async move {
            let v: Option<String> = f.get("k").await.map_err(|e| e.to_string())?;
            (v.as_deref() == Some("old"))
                .then_some(())
                .ok_or(format!("{v:?}"))
        }
    })
    .await;
    let _: () = c.set("k", "new").await.expect("SET new");
    proxy.drained().await;
    // The old connection's bytes are released now: they must not execute.
    relay.set(Fault::Pass);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v: Option<String> = f.get("k").await.expect("GET");
    assert_eq!(
        v.as_deref(),
        Some("new"),
        "the stale batch landed after the newer write"
    );
    assert_same_data(&leader, &follower).await;
}

// ---------------------------------------------------------------------------------------
// The leader lost its data
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_leader_restarted_empty_is_flagged_not_resynced_and_recovered_from_the_follower() {
    let _g = SERIAL.lock().await;
    let mut leader = RedisServer::start();
    let follower = RedisServer::start();
    let (cfg, admin, port) = bin_config(
        &format!(
            "[redis]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"{}\"\n\
             health_interval_ms = 200\nconnect_timeout_ms = 500",
            leader.url(),
            follower.url()
        ),
        "[resync]\nmax_keys_per_second = 0\nretry_interval_ms = 300\n",
    );
    let url = format!("redis://127.0.0.1:{port}");
    let p = BinProxy::start(cfg.path(), &admin, &url).await;
    let mut c = client(&url).await;
    for i in 0..70 {
        let _: () = c
            .set(
                format!("nifi/components/c{i}"),
                format!("{{\"version\":{i}}}"),
            )
            .await
            .expect("SET");
    }
    // The marker is set on both once the follower is in sync and the mirror drained.
    let l = leader.conn().await;
    let mut f = follower.conn().await;
    let key = "statemirror:generation";
    eventually(Duration::from_secs(20), || {
        let (mut l, mut f) = (l.clone(), f.clone());
        async move {
            let a: Option<u64> = l.get(key).await.map_err(|e| e.to_string())?;
            let b: Option<u64> = f.get(key).await.map_err(|e| e.to_string())?;
            (a.is_some() && a == b)
                .then_some(())
                .ok_or(format!("{a:?} {b:?}"))
        }
    })
    .await;
    drop(c);
    // The leader region loses its data: restarted empty. NiFi writes one entry.
    leader.restart();
    let c = client(&url).await;
    let _: () = eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            c.set("nifi/components/c5", "{\"version\":500}")
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        let m = mirror(&p, "redis").await;
        m["leader_data_loss"]
            .as_str()
            .filter(|s| s.contains("recover --from-follower"))
            .map(|_| ())
            .ok_or(format!("{m}"))
    })
    .await;
    let (_, metrics) = statemirror::admin::client::request(
        &p.admin,
        hyper::Method::GET,
        "/metrics",
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("metrics");
    assert!(
        metrics.contains("statemirror_leader_data_loss{protocol=\"redis\"} 1"),
        "{metrics}"
    );
    // No resync wiped the follower: it keeps every entry (the rewritten one updated).
    let n: usize = redis::cmd("DBSIZE")
        .query_async(&mut f)
        .await
        .expect("DBSIZE");
    assert_eq!(n, 71, "70 entries and the marker");
    let v: String = f.get("nifi/components/c5").await.expect("GET");
    assert_eq!(v, "{\"version\":500}");
    // An operator's plain resync is refused, and says why.
    resync_is_refused(&p, "redis").await;
    let n: usize = redis::cmd("DBSIZE")
        .query_async(&mut f)
        .await
        .expect("DBSIZE");
    assert_eq!(n, 71);
    // recover --from-follower copies what the leader lacks and keeps what it has.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(["recover", "--from-follower", "--config"])
        .arg(cfg.path())
        .output()
        .expect("statemirror recover");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "recover: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&report).expect("JSON report");
    assert_eq!(r["redis"]["restored"], 69, "{report}");
    assert_eq!(r["redis"]["kept_on_leader"], 1, "{report}");
    let mut l = leader.conn().await; // the restarted leader
    let v: String = l.get("nifi/components/c5").await.expect("GET");
    assert_eq!(v, "{\"version\":500}", "the newer write is kept");
    assert_same_data(&leader, &follower).await;
    eventually(Duration::from_secs(10), || async {
        let m = mirror(&p, "redis").await;
        m["leader_data_loss"]
            .is_null()
            .then_some(())
            .ok_or(format!("{m}"))
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Requests in flight per client are bounded
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_clients_pipelining_into_a_stalled_leader_hold_bounded_memory() {
    use tokio::io::AsyncWriteExt;
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let relay = FaultRelay::start(&leader.addr());
    let (cfg, admin, port) = bin_config(
        &format!(
            "[redis]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"redis://{}\"",
            relay.addr()
        ),
        "",
    );
    let url = format!("redis://127.0.0.1:{port}");
    let p = BinProxy::start(cfg.path(), &admin, &url).await;
    let baseline = p.rss_bytes();
    relay.set(Fault::Stall);
    // 20 clients each push 8 MiB of small pipelined requests and never read a reply.
    let one = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".repeat(8 << 20 >> 4);
    let mut writers = Vec::new();
    for _ in 0..20 {
        let one = one.clone();
        writers.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return (0, None);
            };
            let mut sent = 0;
            for chunk in one.chunks(64 << 10) {
                match tokio::time::timeout(Duration::from_secs(3), s.write_all(chunk)).await {
                    Ok(Ok(())) => sent += chunk.len(),
                    _ => break,
                }
            }
            (sent, Some(s))
        }));
    }
    let mut sent = 0;
    let mut socks = Vec::new();
    for w in writers {
        let (n, s) = w.await.expect("writer");
        sent += n;
        socks.extend(s);
    }
    let grown = p.rss_bytes().saturating_sub(baseline);
    eprintln!(
        "20 clients pushed {:.1} MiB of requests into a stalled leader; sidecar RSS grew {:.1} MiB",
        sent as f64 / 1048576.0,
        grown as f64 / 1048576.0
    );
    // Each client may hold MAX_OWED requests plus socket buffers: far below a pending
    // entry for everything the kernel would take.
    assert!(grown < 40 << 20, "RSS grew by {grown} bytes");
    relay.set(Fault::Pass);
    drop(socks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_leader_restarted_empty_is_flagged_not_resynced_and_recovered_from_the_follower()
{
    let _g = SERIAL.lock().await;
    let (mut leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let (cfg, admin, port) = bin_config(
        &format!(
            "[zookeeper]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"{}\"\n\
             health_interval_ms = 200",
            leader.addr(),
            follower.addr()
        ),
        "[resync]\nmax_keys_per_second = 0\nretry_interval_ms = 300\n",
    );
    let connect = format!("127.0.0.1:{port}");
    let p = BinProxy::start(cfg.path(), &admin, &connect).await;
    let c = zk_client(&connect).await;
    for parent in ["/nifi", "/nifi/components"] {
        c.create(parent, b"", &persistent()).await.expect("create");
    }
    for i in 0..70 {
        c.create(
            &format!("/nifi/components/c{i}"),
            format!("v{i}").as_bytes(),
            &persistent(),
        )
        .await
        .expect("create");
    }
    drop(c);
    let marker = |addr: String| async move {
        let z = zk_client(&addr).await;
        z.get_data("/statemirror/generation")
            .await
            .ok()
            .map(|(d, _)| d)
    };
    eventually(Duration::from_secs(20), || async {
        let (a, b) = (marker(leader.addr()).await, marker(follower.addr()).await);
        (a.is_some() && a == b)
            .then_some(())
            .ok_or(format!("{a:?} {b:?}"))
    })
    .await;
    // The leader loses its data; NiFi writes one entry again.
    leader.restart_empty().await;
    eventually(Duration::from_secs(20), || async {
        let c = zk_client(&connect).await;
        for parent in ["/nifi", "/nifi/components"] {
            let _ = c.create(parent, b"", &persistent()).await;
        }
        c.create("/nifi/components/c5", b"newer", &persistent())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        let m = mirror(&p, "zookeeper").await;
        m["leader_data_loss"]
            .as_str()
            .filter(|s| s.contains("recover --from-follower"))
            .map(|_| ())
            .ok_or(format!("{m}"))
    })
    .await;
    let f = zk_client(&follower.addr()).await;
    let kids = f.list_children("/nifi/components").await.expect("children");
    assert_eq!(kids.len(), 70, "the follower keeps every entry");
    resync_is_refused(&p, "zookeeper").await;
    assert_eq!(
        f.list_children("/nifi/components")
            .await
            .expect("children")
            .len(),
        70
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(["recover", "--from-follower", "--config"])
        .arg(cfg.path())
        .output()
        .expect("statemirror recover");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "recover: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&report).expect("JSON report");
    assert_eq!(r["zookeeper"]["restored"], 69, "{report}");
    let l = zk_client(&leader.addr()).await;
    let (d, _) = l.get_data("/nifi/components/c5").await.expect("c5");
    assert_eq!(d, b"newer", "the newer write is kept");
    eventually(Duration::from_secs(20), || async {
        let m = mirror(&p, "zookeeper").await;
        m["leader_data_loss"]
            .is_null()
            .then_some(())
            .ok_or(format!("{m}"))
    })
    .await;
    // The follower got the newer c5 through the mirror; now both are equal.
    eventually(Duration::from_secs(20), || async {
        common::zk::compare_trees(&leader.addr(), &follower.addr())
            .await
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_follower_restarted_empty_is_resynced_once_and_regains_the_marker() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    for i in 0..50 {
        let _: () = c.set(format!("k{i}"), i).await.expect("SET");
    }
    let key = "statemirror:generation";
    let (lurl, furl) = (leader.url(), follower.url());
    let markers = || {
        let (lurl, furl) = (lurl.clone(), furl.clone());
        async move {
            let mut l = client(&lurl).await;
            let mut f = client(&furl).await;
            let a: Option<u64> = l.get(key).await.unwrap_or(None);
            let b: Option<u64> = f.get(key).await.unwrap_or(None);
            (a, b)
        }
    };
    eventually(Duration::from_secs(20), || async {
        let (a, b) = markers().await;
        (a.is_some() && a == b)
            .then_some(())
            .ok_or(format!("{a:?} {b:?}"))
    })
    .await;
    follower.restart(); // empty: no marker, no data
    eventually(Duration::from_secs(30), || async {
        let (a, b) = markers().await;
        let s = proxy.status().await;
        let in_sync = s["redis"]["mirror"]["in_sync"] == true;
        (in_sync && a.is_some() && a == b)
            .then_some(())
            .ok_or(format!("{a:?} {b:?} {}", s["redis"]["mirror"]))
    })
    .await;
    assert_same_data(&leader, &follower).await;
    let runs = proxy.status().await["redis"]["resync"]["resyncs_total"].as_u64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = proxy.status().await;
    assert_eq!(
        s["redis"]["resync"]["resyncs_total"].as_u64(),
        runs,
        "no resync loop: {s}"
    );
    assert_eq!(s["redis"]["mirror"]["in_sync"], true, "{s}");
}

/// 40 hashes of 1 MiB each, queued behind a frozen follower, reach the writer as one batch
/// of copies: the leader is read in rounds of at most the read budget (8 MiB), each written
/// to the follower before the next is read, never all 40 MiB in one `MULTI` of `DUMP`s.
/// (`MONITOR` on the leader shows the `DUMP`s of each read round.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_a_batch_of_large_key_copies_is_read_from_the_leader_in_bounded_rounds() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.replication.apply_timeout_ms = 1000;
        c.replication.retry_initial_backoff_ms = 20;
        c.replication.retry_max_backoff_ms = 200;
    })
    .await;
    let mut c = proxy.conn().await;
    let _: () = c.set("warm", "1").await.expect("SET");
    proxy.drained().await;
    signal(follower.pid(), "STOP");
    // The writer takes this one alone and holds it until the follower is back; the copies
    // queue up behind it and are taken together afterwards.
    let _: () = c.set("trigger", "1").await.expect("SET");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let field = vec![b'h'; 1 << 20];
    let mut pipe = redis::pipe();
    for i in 0..40 {
        pipe.cmd("HSET")
            .arg(format!("big{i}"))
            .arg("f")
            .arg(&field)
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.expect("HSETs");
    let mut monitor = Raw::connect(leader.addr().parse().expect("addr")).await;
    assert_eq!(monitor.cmd(&["MONITOR"]).await, Resp::Simple("OK".into()));
    signal(follower.pid(), "CONT");
    proxy.drained().await;
    // Per connection: DUMPs inside each MULTI … EXEC.
    let mut open: std::collections::HashMap<String, usize> = Default::default();
    let mut rounds: Vec<usize> = Vec::new();
    let mut dumps = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dumps < 40 || !open.values().all(|n| *n == 0) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = monitor.read_within(left).await else {
            break;
        };
        // `<time> [<db> <client addr>] "CMD" …`; the database changes with SELECT.
        let Some(line) = line.text() else { continue };
        let Some((head, cmd)) = line.split_once("] ") else {
            continue;
        };
        let client = head.rsplit(' ').next().unwrap_or_default().to_string();
        if cmd.starts_with("\"MULTI\"") {
            open.insert(client, 0);
        } else if cmd.starts_with("\"DUMP\"") {
            dumps += 1;
            if let Some(n) = open.get_mut(&client) {
                *n += 1;
            }
        } else if cmd.starts_with("\"EXEC\"") {
            rounds.extend(open.remove(&client));
        }
    }
    println!("DUMPs per leader read round: {rounds:?}");
    assert_eq!(dumps, 40, "every copied key read once: rounds {rounds:?}");
    let largest = rounds.iter().copied().max().unwrap_or(0);
    assert!(
        largest <= 8,
        "a read round held {largest} MiB of key state: {rounds:?}"
    );
    assert_same_data(&leader, &follower).await;
}
