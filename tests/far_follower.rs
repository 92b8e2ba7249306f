//! A follower in another region: 150 ms each way between statemirror and the follower
//! (`Fault::Latency`, a pipelined link; `Fault::Delay` holds one chunk at a time and so
//! also caps the bandwidth at ~100 KB/s, which no mirror could keep up through).
//!
//! - ZooKeeper and Redis: sustained NiFi-sized writes through the proxy for ~15 s; the
//!   mirror keeps up (the queue drains soon after writes stop), the follower ends equal and
//!   `GET /verify` finds nothing. Rates and lag are printed (`--nocapture`).
//! - ZooKeeper and Redis: a resync of many entries through the same link.
//! - ZooKeeper: a batch whose connection stalls past `apply_timeout` while newer writes to
//!   the same paths follow on a new connection: the old connection's writes never land
//!   after the newer ones (the follower session is resumed, not replaced).
//!
//! Scenarios run one at a time (`SERIAL`): each runs two servers and a workload on 2 cores.
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fault::{Fault, FaultRelay};
use common::zk::{assert_same_tree, persistent, zk_client, ZkProxy, ZkServer};
use common::*;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ONE_WAY: Duration = Duration::from_millis(150);
const WRITE_FOR: Duration = Duration::from_secs(15);
/// Concurrent writers (sessions x tasks per session).
const SESSIONS: usize = 4;
const TASKS: usize = 8;

/// ~200 bytes of NiFi component state.
fn nifi_state(i: u64) -> Vec<u8> {
    let ts = (1_700_000_000_000u64 + i).to_string();
    statemirror::nifi::encode_binary(&[
        ("listing.timestamp", ts.as_str()),
        ("processed.timestamp", ts.as_str()),
        (
            "id.1",
            "s3://bucket/some/prefix/of/a/typical/length/object-0000001.json",
        ),
        (
            "id.2",
            "s3://bucket/some/prefix/of/a/typical/length/object-0000002.json",
        ),
    ])
}

fn nifi_json(i: u64) -> String {
    format!(
        "{{\"version\":{i},\"stateValues\":{{\"listing.timestamp\":\"{}\",\
         \"id.1\":\"s3://bucket/some/prefix/of/a/typical/length/object-0000001.json\",\
         \"id.2\":\"s3://bucket/some/prefix/of/a/typical/length/object-0000002.json\"}}}}",
        1_700_000_000_000u64 + i
    )
}

/// Samples `mirrored_writes` and `lag_seconds` of a `/status` mirror object until stopped:
/// (max lag seen).
struct Sampler {
    stop: Arc<AtomicBool>,
    max_lag_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start<F, Fut>(status: F) -> Sampler
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Value> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let max_lag_ms = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max_lag_ms.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let v = status().await;
                let lag = v["lag_seconds"].as_f64().unwrap_or(0.0);
                m.fetch_max((lag * 1000.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler {
            stop,
            max_lag_ms,
            task,
        }
    }

    async fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.max_lag_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

fn mirrored(m: &Value) -> u64 {
    m["mirrored_writes"].as_u64().unwrap_or(0)
}

/// Waits (up to `within`) until the mirror object shows an empty queue; how long it took.
async fn drain<F, Fut>(within: Duration, status: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let t0 = Instant::now();
    loop {
        let m = status().await;
        if m["queue_depth"] == 0 {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "the mirror did not drain within {within:?}: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn verify_zero(protocol: &str, code: u16, body: &str) {
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(
        v[protocol]["total_differences"], 0,
        "verify found differences: {body}"
    );
}

// ---------------------------------------------------------------------------------------
// ZooKeeper
// ---------------------------------------------------------------------------------------

async fn zk_far_proxy(
    leader: &ZkServer,
    relay: &FaultRelay,
    tweak: impl FnOnce(&mut statemirror::config::Config),
) -> ZkProxy {
    ZkProxy::start_with(&leader.addr(), Some(&relay.addr()), |c| {
        c.replication.retry_initial_backoff_ms = 50;
        c.replication.retry_max_backoff_ms = 500;
        tweak(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_sustained_nifi_writes_keep_up_with_a_far_follower() {
    let _g = SERIAL.lock().await;
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let relay = FaultRelay::start(&follower.addr());
    relay.set(Fault::Latency(ONE_WAY));
    let proxy = zk_far_proxy(&leader, &relay, |_| {}).await;
    let setup = proxy.client().await;
    for p in ["/nifi", "/nifi/components", "/nifi/new"] {
        setup.create(p, b"", &persistent()).await.expect("create");
    }
    const COMPONENTS: u64 = 200;
    for i in 0..COMPONENTS {
        setup
            .create(
                &format!("/nifi/components/c{i}"),
                &nifi_state(0),
                &persistent(),
            )
            .await
            .expect("create");
    }
    proxy.drained().await;

    let before = mirrored(&proxy.mirror_status().await);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let c = proxy.client().await;
        for t in 0..TASKS {
            let (c, stop, writes, failed) =
                (c.clone(), stop.clone(), writes.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let w = (s * TASKS + t) as u64;
                    // One write in 10 creates a node, the rest update NiFi state.
                    let r = if i % 10 == 0 {
                        let path = format!("/nifi/new/w{w}-{i}");
                        tokio::time::timeout(
                            Duration::from_secs(5),
                            c.create(&path, &nifi_state(i), &persistent()),
                        )
                        .await
                        .map(|r| r.map(|_| ()))
                    } else {
                        let path = format!("/nifi/components/c{}", (w * 7919 + i) % COMPONENTS);
                        tokio::time::timeout(
                            Duration::from_secs(5),
                            c.set_data(&path, &nifi_state(i), None),
                        )
                        .await
                        .map(|r| r.map(|_| ()))
                    };
                    match r {
                        Ok(Ok(())) => writes.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    let sampler = {
        let admin = proxy.admin();
        Sampler::start(move || {
            let admin = admin.clone();
            async move { zk_mirror(&admin).await }
        })
    };
    let t0 = Instant::now();
    tokio::time::sleep(WRITE_FOR).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let wrote_for = t0.elapsed();
    let drained_in = drain(Duration::from_secs(30), || proxy.mirror_status()).await;
    let mirror_for = t0.elapsed();
    let max_lag = sampler.stop().await;
    let m = proxy.mirror_status().await;
    let n = writes.load(Ordering::Relaxed);
    let mirrored_n = mirrored(&m) - before;
    println!(
        "zookeeper at {ONE_WAY:?} one way: {n} writes in {wrote_for:.1?} = {:.0}/s ({} failed); \
         mirrored {mirrored_n} in {mirror_for:.1?} = {:.0}/s; drained {drained_in:.1?} after \
         writes stopped; max lag {max_lag:.2} s; mirror {m}",
        n as f64 / wrote_for.as_secs_f64(),
        failed.load(Ordering::Relaxed),
        mirrored_n as f64 / mirror_for.as_secs_f64(),
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "client writes failed");
    assert!(mirrored_n >= n, "mirrored {mirrored_n} < written {n}");
    assert_eq!(m["in_sync"], true, "{m}");
    let (code, body) = proxy.http("GET", "/verify", None).await;
    verify_zero("zookeeper", code, &body);
    assert_same_tree(&leader.addr(), &follower.addr()).await;
}

async fn zk_mirror(admin: &str) -> Value {
    status_of(admin, "zookeeper").await
}

async fn status_of(admin: &str, protocol: &str) -> Value {
    let r = statemirror::admin::client::request(
        admin,
        hyper::Method::GET,
        "/status",
        None,
        Duration::from_secs(10),
    )
    .await;
    match r {
        Ok((200, body)) => {
            serde_json::from_str::<Value>(&body).unwrap_or_default()[protocol]["mirror"].clone()
        }
        _ => Value::Null,
    }
}

/// Nodes for the resync tests; `FAR_RESYNC_NODES` overrides (e.g. 20000 by hand).
fn resync_entries() -> usize {
    std::env::var("FAR_RESYNC_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_resync_through_a_far_link_finishes_in_minutes() {
    let _g = SERIAL.lock().await;
    let n = resync_entries();
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let l = zk_client(&leader.addr()).await;
    l.create("/nifi", b"", &persistent()).await.expect("create");
    l.create("/nifi/components", b"", &persistent())
        .await
        .expect("create");
    // Written directly to the leader, 500 in flight at a time.
    for group in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut set = tokio::task::JoinSet::new();
        for &i in group {
            let l = l.clone();
            set.spawn(async move {
                let path = format!("/nifi/components/c{i}");
                l.create(&path, &nifi_state(i as u64), &persistent())
                    .await
                    .map(|_| ())
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("task").expect("create on the leader");
        }
    }
    let relay = FaultRelay::start(&follower.addr());
    relay.set(Fault::Latency(ONE_WAY));
    let t0 = Instant::now();
    let proxy = ZkProxy::start_without_waiting(&leader.addr(), Some(&relay.addr()), |c| {
        c.resync.max_keys_per_second = 0;
    })
    .await;
    assert!(
        proxy.app.wait_in_sync(Duration::from_secs(300)).await,
        "the resync did not finish within 5 minutes: {}",
        proxy.mirror_status().await
    );
    let took = t0.elapsed();
    println!(
        "zookeeper resync of {n} nodes at {ONE_WAY:?} one way: {took:.1?} ({:.0} nodes/s)",
        n as f64 / took.as_secs_f64()
    );
    proxy.drained().await;
    let t1 = Instant::now();
    let (code, body) = proxy.http("GET", "/verify", None).await;
    println!(
        "zookeeper verify of {n} nodes at {ONE_WAY:?}: {:.1?}",
        t1.elapsed()
    );
    verify_zero("zookeeper", code, &body);
    assert_same_tree(&leader.addr(), &follower.addr()).await;
}

/// A batch stalls on its connection past `apply_timeout` (the relay holds that
/// connection's bytes) while newer writes to the same nodes go out on a new connection;
/// then the old bytes are released. They must not land after the newer writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_a_timed_out_batch_never_lands_after_a_newer_one() {
    let _g = SERIAL.lock().await;
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let relay = FaultRelay::start(&follower.addr());
    let proxy = zk_far_proxy(&leader, &relay, |c| {
        c.replication.apply_timeout_ms = 1000;
        c.replication.retry_initial_backoff_ms = 20;
        c.replication.retry_max_backoff_ms = 100;
    })
    .await;
    let c = proxy.client().await;
    const PATHS: usize = 20;
    for i in 0..PATHS {
        c.create(&format!("/hot{i}"), b"0", &persistent())
            .await
            .expect("create");
    }
    proxy.drained().await;
    // The writer's current connection is held from here on; new ones flow.
    relay.set(Fault::StallExisting);
    for round in 1..=5u32 {
        for i in 0..PATHS {
            c.set_data(&format!("/hot{i}"), round.to_string().as_bytes(), None)
                .await
                .expect("set");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Give the writer time to time out and resend on a new connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.drained().await;
    // Release the old connection's bytes: with a new session they would run now, after
    // the newer writes, and leave older values behind.
    relay.set(Fault::Pass);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.drained().await;
    let f = zk_client(&follower.addr()).await;
    for i in 0..PATHS {
        let (data, _) = f
            .get_data(&format!("/hot{i}"))
            .await
            .expect("follower read");
        assert_eq!(
            data, b"5",
            "/hot{i} on the follower went back to an older value"
        );
    }
    let (code, body) = proxy.http("GET", "/verify", None).await;
    verify_zero("zookeeper", code, &body);
    assert_same_tree(&leader.addr(), &follower.addr()).await;
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_sustained_nifi_writes_keep_up_with_a_far_follower() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower_srv = RedisServer::start();
    let relay = FaultRelay::start(&follower_srv.addr());
    relay.set(Fault::Latency(ONE_WAY));
    let proxy = far_redis_proxy(&leader, &relay).await;
    let before = mirrored(&status_of(&proxy.admin(), "redis").await);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..(SESSIONS * TASKS) as u64 {
        let mut c = proxy.conn().await;
        let (stop, writes, failed) = (stop.clone(), writes.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("nifi/components/c{}", (t * 7919 + i) % 200);
                let r: Result<Result<(), _>, _> = tokio::time::timeout(
                    Duration::from_secs(5),
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(nifi_json(i))
                        .query_async(&mut c),
                )
                .await;
                match r {
                    Ok(Ok(())) => writes.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let sampler = {
        let admin = proxy.admin();
        Sampler::start(move || {
            let admin = admin.clone();
            async move { status_of(&admin, "redis").await }
        })
    };
    let t0 = Instant::now();
    tokio::time::sleep(WRITE_FOR).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let wrote_for = t0.elapsed();
    let admin = proxy.admin();
    let drained_in = drain(Duration::from_secs(30), || status_of(&admin, "redis")).await;
    let mirror_for = t0.elapsed();
    let max_lag = sampler.stop().await;
    let m = status_of(&admin, "redis").await;
    let n = writes.load(Ordering::Relaxed);
    let mirrored_n = mirrored(&m) - before;
    println!(
        "redis at {ONE_WAY:?} one way: {n} writes in {wrote_for:.1?} = {:.0}/s ({} failed); \
         mirrored {mirrored_n} in {mirror_for:.1?} = {:.0}/s; drained {drained_in:.1?} after \
         writes stopped; max lag {max_lag:.2} s; mirror {m}",
        n as f64 / wrote_for.as_secs_f64(),
        failed.load(Ordering::Relaxed),
        mirrored_n as f64 / mirror_for.as_secs_f64(),
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "client writes failed");
    // In sync soon after the queue drained: the resync at start (or one after an overflow,
    // when the clients write faster than 150 ms one way lets the mirror go, as multiplexed
    // ones can) finishes once the live lane leaves its copies room.
    eventually(Duration::from_secs(30), || async {
        let m = status_of(&admin, "redis").await;
        (m["in_sync"] == true).then_some(()).ok_or(m.to_string())
    })
    .await;
    let (code, body) = proxy.http("GET", "/verify", None).await;
    verify_zero("redis", code, &body);
    assert_same_data(&leader, &follower_srv).await;
}

/// A Redis proxy whose follower is `relay` (not a `RedisServer` of its own).
async fn far_redis_proxy(leader: &RedisServer, relay: &FaultRelay) -> Proxy {
    let url = format!("redis://{}", relay.addr());
    let p = Proxy::start_with(leader, None, |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.follower = Some(url);
        r.health_timeout_ms = 2000;
        r.connect_timeout_ms = 2000;
        c.replication.retry_initial_backoff_ms = 50;
        c.replication.apply_timeout_ms = 5000;
        c.resync.max_keys_per_second = 0;
    })
    .await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_resync_through_a_far_link_finishes_in_minutes() {
    let _g = SERIAL.lock().await;
    let n = resync_entries();
    let leader = RedisServer::start();
    let follower_srv = RedisServer::start();
    {
        let mut l = leader.conn().await;
        for group in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for i in group {
                pipe.cmd("SET")
                    .arg(format!("nifi/components/c{i}"))
                    .arg(nifi_json(*i as u64))
                    .ignore();
            }
            let () = pipe.query_async(&mut l).await.expect("leader SET");
        }
    }
    let relay = FaultRelay::start(&follower_srv.addr());
    relay.set(Fault::Latency(ONE_WAY));
    let t0 = Instant::now();
    let proxy = far_redis_proxy(&leader, &relay).await;
    assert!(
        proxy.app.wait_in_sync(Duration::from_secs(300)).await,
        "the resync did not finish within 5 minutes"
    );
    let took = t0.elapsed();
    println!(
        "redis resync of {n} keys at {ONE_WAY:?} one way: {took:.1?} ({:.0} keys/s)",
        n as f64 / took.as_secs_f64()
    );
    let (code, body) = proxy.http("GET", "/verify", None).await;
    verify_zero("redis", code, &body);
    assert_same_data(&leader, &follower_srv).await;
}

/// A narrow link to the follower (128 KiB/s) and a short `apply_timeout` (1 s): a batch of
/// 40 × 24 KiB values takes ~8 s to go out, far past the timeout, but bytes keep moving,
/// so it is not cut off (a whole-batch timeout would retry it forever and never converge).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_a_slow_batch_that_keeps_moving_is_not_timed_out() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower_srv = RedisServer::start();
    let relay = FaultRelay::start(&follower_srv.addr());
    let url = format!("redis://{}", relay.addr());
    let proxy = Proxy::start_with(&leader, None, |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.follower = Some(url);
        c.replication.retry_initial_backoff_ms = 50;
        c.replication.apply_timeout_ms = 1000;
        c.resync.auto = false;
    })
    .await;
    let mut c = proxy.conn().await;
    let _: () = redis::cmd("SET")
        .arg("warm")
        .arg(1)
        .query_async(&mut c)
        .await
        .expect("set");
    proxy.drained().await;
    relay.set(Fault::Throttle(128 * 1024));
    let value = vec![b'v'; 24 * 1024];
    let mut pipe = redis::pipe();
    for i in 0..40 {
        pipe.cmd("SET").arg(format!("big{i}")).arg(&value).ignore();
    }
    let _: () = pipe.query_async(&mut c).await.expect("pipeline");
    let admin = proxy.admin();
    let drained_in = drain(Duration::from_secs(60), || status_of(&admin, "redis")).await;
    println!("960 KiB through a 128 KiB/s link: drained in {drained_in:.1?}");
    let m = status_of(&admin, "redis").await;
    assert_eq!(m["failures"], 0, "a batch was cut off: {m}");
    relay.set(Fault::Pass);
    assert_same_data(&leader, &follower_srv).await;
}
