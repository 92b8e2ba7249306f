//! The online migration under region-failure faults, against real servers: a ZooKeeper
//! sidecar (NiFi's ZooKeeperStateProvider workload through it) migrating to Redis.
//! - the destination hung (SIGSTOP): NiFi's writes keep going with no error, `/status`
//!   shows the migration out of sync, a freeze answers "not drained" instead of hanging,
//!   and after SIGCONT the destination ends equal (`migrate verify`);
//! - the sidecar stopped while components are dirty (destination hung): a new sidecar's
//!   full copy at start brings the destination equal;
//! - the leader killed mid-write: a failed leader read never deletes (or overwrites) a
//!   component at the destination; after the leader is back the destination ends equal.
//!
//! Tests run one at a time (`SERIAL`). Every wait is bounded; no timed assertions.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fault::{Fault, FaultRelay};
use common::zk::{persistent, zk_client, zkc, ZkProxy, ZkServer};
use common::{eventually, example_config, Frozen, Proxy, RedisServer};
use redis::AsyncCommands;
use statemirror::migrate::offline::{self, Options};
use statemirror::migrate::{identity, Endpoint};
use statemirror::nifi::encode_binary;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Components written before the sidecar starts; the writer never removes them.
const BEFORE: usize = 100;
/// Components the live writer cycles through.
const LIVE: u64 = 30;

async fn start_sidecar(leader: &ZkServer, follower: &ZkServer, dest: &RedisServer) -> ZkProxy {
    start_sidecar_to(leader, follower, format!("redis://{}", dest.addr())).await
}

async fn start_sidecar_to(leader: &ZkServer, follower: &ZkServer, url: String) -> ZkProxy {
    ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |cfg| {
        let mut m = example_config("migration.toml")
            .migration
            .expect("[migration]");
        m.to = url;
        cfg.migration = Some(m);
        // A freeze with the destination hung answers within this.
        cfg.maintenance.drain_timeout_ms = 2000;
    })
    .await
}

async fn verify(leader: &ZkServer, dest: &RedisServer) -> offline::Outcome {
    let o = Options {
        from: Endpoint::parse(&format!("zk://{}/nifi", leader.addr())).unwrap(),
        to: Endpoint::parse(&format!("redis://{}", dest.addr())).unwrap(),
        map: identity(),
        dry_run: false,
        force: false,
        verify_only: true,
        timeout: Duration::from_secs(10),
    };
    tokio::time::timeout(Duration::from_secs(60), offline::run(o))
        .await
        .expect("verify finished")
}

async fn migration(p: &ZkProxy) -> serde_json::Value {
    let (_, body) = p.http("GET", "/status", None).await;
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    s["zookeeper"]["migration"].clone()
}

/// A seeded ZooKeeper leader and follower, a Redis destination 100 ms away (through a
/// relay), and a sidecar migrating to it whose full copy at start is done.
struct Far {
    leader: ZkServer,
    follower: ZkServer,
    dest: RedisServer,
    relay: FaultRelay,
    proxy: ZkProxy,
}

impl Far {
    async fn start() -> Far {
        let leader = ZkServer::standalone().await;
        let follower = ZkServer::standalone().await;
        let dest = RedisServer::start();
        seed(&leader).await;
        let relay = FaultRelay::start(&dest.addr());
        relay.set(Fault::Latency(Duration::from_millis(100)));
        let far = format!("redis://{}", relay.addr());
        let proxy = start_sidecar_to(&leader, &follower, far).await;
        until_in_sync(&proxy, 30, "the full copy at start").await;
        Far {
            leader,
            follower,
            dest,
            relay,
            proxy,
        }
    }
}

/// Waits (at most `secs`) for the sidecar's migration to be in sync; `what` names the wait.
async fn until_in_sync(p: &ZkProxy, secs: u64, what: &str) {
    eventually(Duration::from_secs(secs), || async {
        let m = migration(p).await;
        if m["in_sync"] == true {
            Ok(())
        } else {
            Err(format!("{what}: {m}"))
        }
    })
    .await;
}

/// Freezes (the freeze waits for the migration), waits for `in_sync`, verifies zero
/// differences, and resumes.
async fn freeze_verify_resume(p: &ZkProxy, leader: &ZkServer, dest: &RedisServer) {
    let (code, body) = p.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    until_in_sync(p, 60, "migration not in sync").await;
    let o = verify(leader, dest).await;
    assert_eq!(o.code, 0, "{}", o.text);
    let (code, body) = p.http("DELETE", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
}

fn state(n: u64) -> Vec<u8> {
    encode_binary(&[("listing.timestamp", n.to_string().as_str()), ("n", "x")])
}

async fn seed(leader: &ZkServer) {
    let c = zk_client(&leader.addr()).await;
    c.mkdir("/nifi/components", &persistent()).await.unwrap();
    for i in 0..BEFORE {
        let path = format!("/nifi/components/before-{i}");
        c.create(&path, &state(i as u64), &persistent())
            .await
            .unwrap();
    }
}

/// NiFi's replace (getData, setData at that version; create when missing; now and then a
/// removal) through the sidecar. Counts successes and errors (a timeout is an error).
struct Writer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(connect: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, o, e) = (stop.clone(), ok.clone(), errors.clone());
        let task = tokio::spawn(async move {
            let c = zk_client(&connect).await;
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) && i < 1_000_000 {
                i += 1;
                let path = format!("/nifi/components/live-{}", i % LIVE);
                let r = tokio::time::timeout(Duration::from_secs(3), async {
                    if i % 23 == 0 {
                        return c.delete(&path, None).await;
                    }
                    match c.get_data(&path).await {
                        Ok((_, st)) => c
                            .set_data(&path, &state(i), Some(st.version))
                            .await
                            .map(|_| ()),
                        Err(zkc::Error::NoNode) => {
                            c.create(&path, &state(i), &persistent()).await.map(|_| ())
                        }
                        Err(e) => Err(e),
                    }
                })
                .await;
                match r {
                    Ok(Ok(()))
                    | Ok(Err(
                        zkc::Error::NoNode | zkc::Error::BadVersion | zkc::Error::NodeExists,
                    )) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        e.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Writer {
            stop,
            ok,
            errors,
            task,
        }
    }

    /// (successes, errors) so far.
    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let counts = (self.ok.clone(), self.errors.clone());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        (
            counts.0.load(Ordering::Relaxed),
            counts.1.load(Ordering::Relaxed),
        )
    }
}

async fn dest_ids(dest: &RedisServer) -> Vec<String> {
    let mut r = dest.conn().await;
    let mut keys: Vec<String> = r.keys("nifi/components/*").await.unwrap();
    keys.sort();
    keys
}

/// Case 1: the destination hangs (SIGSTOP: connections open, nothing answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_destination_never_stalls_nifi_and_drains_after() {
    let _g = SERIAL.lock().await;
    let leader = ZkServer::standalone().await;
    let follower = ZkServer::standalone().await;
    let dest = RedisServer::start();
    seed(&leader).await;
    let proxy = start_sidecar(&leader, &follower, &dest).await;
    until_in_sync(&proxy, 30, "the full copy at start").await;

    let w = Writer::start(proxy.connect_string());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok_up, err_up) = w.counts();
    let frozen = Frozen::new(dest.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok_frozen, err_frozen) = w.counts();
    let (ok_frozen, err_frozen) = (ok_frozen - ok_up, err_frozen - err_up);
    eprintln!(
        "NiFi writes in 2 s: destination up {ok_up} ok / {err_up} errors; \
         destination hung {ok_frozen} ok / {err_frozen} errors"
    );
    assert_eq!(err_up + err_frozen, 0, "NiFi's writes failed");
    assert!(ok_up > 20 && ok_frozen > 20, "NiFi's writes stalled");
    let m = migration(&proxy).await;
    assert_eq!(m["in_sync"], false, "{m}");
    // (Stopped before the freeze: a frozen sidecar holds NiFi's writes by design.)
    let (ok_all, err_all) = w.stop().await;
    assert_eq!(err_all, 0, "NiFi's writes failed");
    eprintln!("NiFi writes in all: {ok_all}; status while hung: {m}");

    // A freeze answers (within its drain timeout) that the migration did not drain.
    let (code, body) = tokio::time::timeout(
        Duration::from_secs(20),
        proxy.http("PUT", "/maintenance", None),
    )
    .await
    .expect("PUT /maintenance answered with the destination hung");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["mirror_drained"], false, "{body}");
    let (code, body) = proxy.http("DELETE", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");

    drop(frozen);
    freeze_verify_resume(&proxy, &leader, &dest).await;
}

/// Case 2: the sidecar stops while components are dirty (the destination hung); a new
/// sidecar's full copy at start brings the destination equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_restarted_with_dirty_components_loses_nothing() {
    let _g = SERIAL.lock().await;
    let leader = ZkServer::standalone().await;
    let follower = ZkServer::standalone().await;
    let dest = RedisServer::start();
    seed(&leader).await;
    let proxy = start_sidecar(&leader, &follower, &dest).await;
    let w = Writer::start(proxy.connect_string());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = Frozen::new(dest.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, errors) = w.stop().await;
    assert_eq!(errors, 0);
    let m = migration(&proxy).await;
    eprintln!("stopping the sidecar with: {m}");
    assert_eq!(m["in_sync"], false, "{m}");
    drop(proxy);
    // Written while no sidecar migrates: only a full copy can bring these over.
    let c = zk_client(&leader.addr()).await;
    for i in 0..10 {
        let path = format!("/nifi/components/between-{i}");
        c.create(&path, &state(i), &persistent()).await.unwrap();
    }
    drop(frozen);
    let proxy = start_sidecar(&leader, &follower, &dest).await;
    freeze_verify_resume(&proxy, &leader, &dest).await;
    let ids = dest_ids(&dest).await;
    assert!(ids.len() >= BEFORE + 10, "{}", ids.len());
}

/// Case 3: the leader killed mid-write. A failed leader read must never be taken for "the
/// component is gone" (deleted at the destination) nor copy anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_write_deletes_nothing_at_the_destination() {
    let _g = SERIAL.lock().await;
    // A far destination: copies are slow, so components are dirty when the leader dies.
    // (Named bindings, not `_`: the follower and relay must live to the end.)
    let Far {
        mut leader,
        follower: _follower,
        dest,
        relay: _relay,
        proxy,
    } = Far::start().await;
    let w = Writer::start(proxy.connect_string());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = dest_ids(&dest).await;
    // Every `before-` component changed through the sidecar: all dirty when the leader dies.
    let c = zk_client(&proxy.connect_string()).await;
    for i in 0..BEFORE {
        let path = format!("/nifi/components/before-{i}");
        c.set_data(&path, &state(1000 + i as u64), None)
            .await
            .unwrap();
    }
    let dirty = migration(&proxy).await;
    leader.kill();
    eprintln!("leader killed with: {dirty}");
    // The copier keeps trying (dirty components, reads failing) while the leader is gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, errors) = w.stop().await;
    let m = migration(&proxy).await;
    eprintln!("leader down: NiFi writes {ok} ok / {errors} errors; migration {m}");
    let during = dest_ids(&dest).await;
    let gone: Vec<&String> = before
        .iter()
        .filter(|id| id.contains("before-") && !during.contains(id))
        .collect();
    assert!(
        gone.is_empty(),
        "deleted at the destination while the leader was down: {gone:?}"
    );
    assert!(
        during.len() + LIVE as usize >= before.len(),
        "{} -> {}",
        before.len(),
        during.len()
    );
    leader.restart().await;
    freeze_verify_resume(&proxy, &leader, &dest).await;
    let after = dest_ids(&dest).await;
    assert!(
        after.iter().filter(|id| id.contains("before-")).count() == BEFORE,
        "{after:?}"
    );
}

/// A destination that refuses writes for a while (Redis out of memory: `-OOM` per `SET`):
/// the refused components are copied again once it accepts writes, with no new NiFi write
/// (before, they stayed stale and `in_sync` false until NiFi wrote them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_refused_by_a_full_destination_are_copied_again() {
    let _g = SERIAL.lock().await;
    let leader = ZkServer::standalone().await;
    let follower = ZkServer::standalone().await;
    let dest = RedisServer::start();
    seed(&leader).await;
    let proxy = start_sidecar(&leader, &follower, &dest).await;
    until_in_sync(&proxy, 30, "the full copy at start").await;
    let mut d = dest.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut d)
        .await
        .unwrap();
    let c = zk_client(&proxy.connect_string()).await;
    for i in 0..10 {
        let path = format!("/nifi/components/before-{i}");
        c.set_data(&path, &state(5000 + i), None).await.unwrap();
    }
    let m = eventually(Duration::from_secs(20), || async {
        let m = migration(&proxy).await;
        if m["failing_components"].as_u64().unwrap_or(0) > 0 {
            Ok(m)
        } else {
            Err(format!("no component failing yet: {m}"))
        }
    })
    .await;
    eprintln!("destination out of memory: {m}");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut d)
        .await
        .unwrap();
    // No NiFi write from here on: the migration alone must catch up.
    until_in_sync(&proxy, 20, "refused components not copied again").await;
    freeze_verify_resume(&proxy, &leader, &dest).await;
}

/// Case 3 with a Redis leader that comes back empty (killed without persistence, like a
/// lost region): components dirty when it died read as absent from the new leader. That
/// is not "NiFi removed them": nothing may be deleted (or overwritten) at the destination
/// from a leader that restarted (new `run_id`), as the follower mirror gives up then too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_leader_back_empty_deletes_nothing_at_the_destination() {
    let _g = SERIAL.lock().await;
    let mut leader = RedisServer::start();
    let follower = RedisServer::start();
    let dest = ZkServer::standalone().await;
    let mut l = leader.conn().await;
    for i in 0..BEFORE {
        let _: () = l
            .set(
                format!("nifi/components/before-{i}"),
                "{\"version\":1,\"encodingVersion\":1,\"stateValues\":{\"a\":\"1\"}}",
            )
            .await
            .unwrap();
    }
    // A far destination: the components changed below are still dirty when the leader dies.
    let relay = FaultRelay::start(&dest.addr());
    relay.set(Fault::Latency(Duration::from_millis(100)));
    let far = format!("zk://{}/nifi", relay.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        let mut m = example_config("migration.toml")
            .migration
            .expect("[migration]");
        m.to = far;
        cfg.migration = Some(m);
    })
    .await;
    let status = || async {
        let (_, body) = proxy.http("GET", "/status", None).await;
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        s["redis"]["migration"].clone()
    };
    eventually(Duration::from_secs(30), || async {
        let m = status().await;
        if m["in_sync"] == true {
            Ok(())
        } else {
            Err(format!("the full copy at start: {m}"))
        }
    })
    .await;
    let z = zk_client(&dest.addr()).await;
    assert_eq!(
        z.list_children("/nifi/components").await.unwrap().len(),
        BEFORE
    );
    let mut p = proxy.conn().await;
    for i in 0..BEFORE as u64 {
        let key = format!("nifi/components/before-{i}");
        common::workload::nifi_replace(&mut p, &key, 1, i)
            .await
            .unwrap();
    }
    let dirty = status().await;
    leader.restart();
    eprintln!("leader restarted empty with: {dirty}");
    // The copier had time to read every dirty component from the empty leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = status().await;
    let left = z.list_children("/nifi/components").await.unwrap().len();
    eprintln!("after: {left} components at the destination; migration {m}");
    assert_eq!(left, BEFORE, "deleted at the destination: {m}");
    assert_eq!(m["in_sync"], false, "{m}");
}

/// The ZooKeeper side of the above: the leader comes back with an empty data directory
/// (its history went back). Nothing is deleted at the destination; the migration halts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_leader_back_empty_deletes_nothing_at_the_destination() {
    let _g = SERIAL.lock().await;
    // A far destination: copies are slow, so components are dirty when the leader dies.
    // (Named bindings, not `_`: the follower and relay must live to the end.)
    let Far {
        mut leader,
        follower: _follower,
        dest,
        relay: _relay,
        proxy,
    } = Far::start().await;
    let c = zk_client(&proxy.connect_string()).await;
    for i in 0..BEFORE {
        let path = format!("/nifi/components/before-{i}");
        c.set_data(&path, &state(2000 + i as u64), None)
            .await
            .unwrap();
    }
    drop(c);
    let dirty = migration(&proxy).await;
    leader.restart_empty().await;
    eprintln!("leader restarted empty with: {dirty}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = migration(&proxy).await;
    let left = dest_ids(&dest).await.len();
    eprintln!("after: {left} components at the destination; migration {m}");
    assert_eq!(left, BEFORE, "deleted at the destination: {m}");
    assert_eq!(m["in_sync"], false, "{m}");
    assert!(m["halted"].is_string(), "{m}");
}
