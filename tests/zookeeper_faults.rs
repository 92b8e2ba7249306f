//! Follower catch-up for ZooKeeper, proven under injected faults (the twin of
//! `redis_resync.rs`): a mixed workload (`common::zk_workload`: persistent nodes created,
//! overwritten and deleted, NiFi component state, sequential nodes, multis) runs through the
//! proxy while the follower is killed and comes back empty, is cut off, overflows the
//! mirror queue, is restored from an old backup, or the sidecar itself is killed; each
//! scenario ends with writes stopped, the mirror drained, the follower in sync and
//! `GET /verify` reporting zero differences (checked again node by node with the test's own
//! tree comparison). Also: the disaster-recovery cycle across two "regions".
//!
//! The follower sits behind a fault-injecting relay (`common::fault`). Scenarios run one at
//! a time (`SERIAL`): each runs two JVMs, a workload and a resync on 2 cores.
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::fault::{Fault, FaultRelay};
use common::zk::{assert_same_tree, persistent, tree_full, zk_client, ZkProxy, ZkServer, Znode};
use common::zk_workload::ZkWorkload;
use common::*;
use serde_json::Value;
use statemirror::config::Config;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn servers() -> (ZkServer, ZkServer) {
    tokio::join!(ZkServer::standalone(), ZkServer::standalone())
}

/// Test settings: resync unthrottled, fast retries.
fn tune(cfg: &mut Config) {
    cfg.resync.max_keys_per_second = 0;
    cfg.resync.retry_interval_ms = 300;
}

/// A proxy for `leader` whose follower is whatever `relay` leads to
/// (`zookeeper.follower` = the relay's address); waits for the resync at start.
async fn proxy_via(
    leader: &ZkServer,
    relay: &FaultRelay,
    tweak: impl FnOnce(&mut Config),
) -> ZkProxy {
    ZkProxy::start_with(&leader.addr(), Some(&relay.addr()), |c| {
        tune(c);
        tweak(c);
    })
    .await
}

/// Waits until writes are mirrored, the follower is in sync and no resync runs.
async fn settle(proxy: &ZkProxy) {
    settle_with("zookeeper", || proxy.status()).await
}

/// Prints what a scenario did, for the test log.
async fn describe(proxy: &ZkProxy, ok: u64, failed: u64) {
    let z = proxy.status().await["zookeeper"].clone();
    eprintln!(
        "workload: {ok} ok, {failed} failed; mirror {}; resyncs_total {}, last {}",
        z["mirror"], z["resync"]["resyncs_total"], z["resync"]["last"]
    );
}

/// `GET /verify` says zero differences, and so does the test's own node-by-node
/// comparison; returns the number of nodes compared.
async fn verify_zero(proxy: &ZkProxy, leader: &ZkServer, follower: &ZkServer) -> u64 {
    let (code, body) = proxy.http("GET", "/verify", None).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let z = &v["zookeeper"];
    assert_eq!(
        z["total_differences"], 0,
        "verify found differences: {body}"
    );
    assert_eq!(z["unreadable"], 0, "{body}");
    let n = assert_same_tree(&leader.addr(), &follower.addr()).await as u64;
    assert_eq!(z["equal"].as_u64(), Some(n), "{body}");
    eprintln!("verify: {n} nodes, all equal");
    n
}

/// The nodes a workload with `prefix` writes on the server at `addr`: `/<prefix>` and
/// below, and its NiFi components `/nifi/components/<prefix>c*`.
async fn snapshot(addr: &str, prefix: &str) -> BTreeMap<String, Znode> {
    let root = format!("/{prefix}");
    let under = format!("/{prefix}/");
    let nifi = format!("/nifi/components/{prefix}c");
    tree_full(addr)
        .await
        .into_iter()
        .filter(|(p, _)| *p == root || p.starts_with(&under) || p.starts_with(&nifi))
        .collect()
}

fn same_snapshot(a: &BTreeMap<String, Znode>, b: &BTreeMap<String, Znode>) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "node sets differ"
    );
    for (p, n) in a {
        assert_eq!(n, &b[p], "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_sigkilled_and_restarted_empty_is_resynced() {
    let _g = SERIAL.lock().await;
    let (leader, mut follower) = servers().await;
    let relay = FaultRelay::start(&follower.addr());
    let proxy = proxy_via(&leader, &relay, |_| {}).await;
    let w = ZkWorkload::start(&proxy.connect_string(), "k", 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    follower.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    follower.restart_empty().await; // its zxid goes back: the proxy notices
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100, "workload made progress: {ok}");
    assert_eq!(failed, 0, "a follower outage never fails a client write");
    settle(&proxy).await;
    describe(&proxy, ok, failed).await;
    let s = proxy.status().await;
    assert!(
        s["zookeeper"]["resync"]["resyncs_total"].as_u64() >= Some(2),
        "{s}"
    );
    assert!(verify_zero(&proxy, &leader, &follower).await > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blackholed_follower_link_catches_up_after_it_is_restored() {
    let _g = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let relay = FaultRelay::start(&follower.addr());
    let proxy = proxy_via(&leader, &relay, |_| {}).await;
    let w = ZkWorkload::start(&proxy.connect_string(), "k", 4);
    tokio::time::sleep(Duration::from_millis(800)).await;
    relay.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = proxy.mirror_status().await;
    assert!(m["queue_depth"].as_u64() > Some(0), "{m}");
    relay.set(Fault::Pass);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100, "workload made progress: {ok}");
    assert_eq!(failed, 0);
    settle(&proxy).await;
    describe(&proxy, ok, failed).await;
    verify_zero(&proxy, &leader, &follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overflowed_queue_is_repaired_by_a_resync() {
    let _g = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let relay = FaultRelay::start(&follower.addr());
    let proxy = proxy_via(&leader, &relay, |c| c.replication.max_queue_ops = 50).await;
    let w = ZkWorkload::start(&proxy.connect_string(), "k", 4);
    relay.set(Fault::Stall);
    eventually(Duration::from_secs(20), || async {
        let m = proxy.mirror_status().await;
        if m["dropped_writes"].as_u64() > Some(0) && m["in_sync"] == false {
            Ok(())
        } else {
            Err(format!("no overflow yet: {m}"))
        }
    })
    .await;
    relay.set(Fault::Pass);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100, "workload made progress: {ok}");
    assert_eq!(failed, 0);
    settle(&proxy).await;
    describe(&proxy, ok, failed).await;
    let s = proxy.status().await;
    assert!(
        s["zookeeper"]["resync"]["resyncs_total"].as_u64() >= Some(2),
        "{s}"
    );
    verify_zero(&proxy, &leader, &follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_restored_from_an_old_backup_is_resynced() {
    let _g = SERIAL.lock().await;
    let (leader, mut follower) = servers().await;
    let relay = FaultRelay::start(&follower.addr());
    let proxy = proxy_via(&leader, &relay, |_| {}).await;
    let w = ZkWorkload::start(&proxy.connect_string(), "k", 4);
    let c = proxy.client().await;
    let gone: Vec<String> = (0..20).map(|i| format!("/gone/g{i}")).collect();
    c.create("/gone", b"", &persistent()).await.expect("create");
    for p in &gone {
        c.create(p, p.as_bytes(), &persistent())
            .await
            .expect("create");
    }
    c.create("/gone/g0/kid", b"kid", &persistent())
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Every /gone node has reached the follower.
    eventually(Duration::from_secs(20), || async {
        let t = tree_full(&follower.addr()).await;
        let n = gone.iter().filter(|p| t.contains_key(*p)).count();
        if n == gone.len() && t.contains_key("/gone/g0/kid") {
            Ok(())
        } else {
            Err(format!("{n} of {} /gone nodes on the follower", gone.len()))
        }
    })
    .await;
    // The backup holds /gone and the workload's nodes as they are now.
    let old = follower.backup().await;
    c.delete("/gone/g0/kid", None).await.expect("delete");
    for p in &gone {
        c.delete(p, None).await.expect("delete");
    }
    c.delete("/gone", None).await.expect("delete");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    follower.restore(&old).await; // stale data, and nodes the leader deleted since
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100, "workload made progress: {ok}");
    assert_eq!(failed, 0);
    settle(&proxy).await;
    describe(&proxy, ok, failed).await;
    verify_zero(&proxy, &leader, &follower).await;
    let f = zk_client(&follower.addr()).await;
    assert_eq!(
        f.check_stat("/gone").await.expect("exists"),
        None,
        "nodes the leader deleted are removed from the follower"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecar_killed_with_writes_queued_resyncs_after_restart() {
    let _g = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let relay = FaultRelay::start(&follower.addr());
    let (cfg, admin, port) = binary_config(&format!(
        "[zookeeper]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"{}\"\n\
         health_interval_ms = 200\nconnect_timeout_ms = 1000\n\
         [replication]\nretry_max_backoff_ms = 300\napply_timeout_ms = 2000\n\
         [resync]\nmax_keys_per_second = 0\nretry_interval_ms = 300\n",
        leader.addr(),
        relay.addr()
    ));
    let connect = format!("127.0.0.1:{port}");
    let mut p = BinProxy::start(cfg.path(), &admin, &connect).await;
    let w = ZkWorkload::start(&p.url, "k", 4);
    tokio::time::sleep(Duration::from_millis(800)).await;
    relay.set(Fault::Stall);
    p.wait_queue_depth_over("zookeeper", 20).await;
    // Nodes written once while the follower link is stalled: the workload never rewrites
    // them, so only the resync at restart can bring them to the follower.
    let c = zk_client(&p.url).await;
    let _ = c.create("/once", b"", &persistent()).await;
    for i in 0..50 {
        c.create(&format!("/once/n{i}"), b"x", &persistent())
            .await
            .expect("create");
    }
    p.kill(); // SIGKILL with writes queued: they are lost with the process
    relay.set(Fault::Pass);
    let p = BinProxy::start(cfg.path(), &admin, &connect).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100, "workload made progress: {ok}");
    eprintln!("workload: {ok} ok, {failed} failed (the sidecar was killed)");
    let z = eventually(Duration::from_secs(60), || async {
        let s = p.status().await?;
        let z = &s["zookeeper"];
        if z["mirror"]["queue_depth"] == 0
            && z["mirror"]["in_sync"] == true
            && z["resync"]["running"] == false
        {
            Ok(z.clone())
        } else {
            Err(format!("{z}"))
        }
    })
    .await;
    // The restarted sidecar marked the follower out of sync and resynced it.
    assert!(z["resync"]["resyncs_total"].as_u64() >= Some(1), "{z}");
    assert_eq!(z["resync"]["last"]["outcome"], "completed", "{z}");
    let out = Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(["verify", "--config"])
        .arg(cfg.path())
        .output()
        .expect("statemirror verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&report).expect("JSON report");
    let z = &v["zookeeper"];
    assert_eq!(z["different"], 0, "{report}");
    assert_eq!(
        (&z["missing_on_follower"], &z["extra_on_follower"]),
        (&Value::from(0), &Value::from(0)),
        "{report}"
    );
    assert_same_tree(&leader.addr(), &follower.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disaster_recovery_cycle_loses_nothing_that_was_mirrored() {
    let _g = SERIAL.lock().await;
    let (mut z1, z2) = servers().await;
    // Region 1 -> region 2 and back: each sidecar reaches the other region through a relay.
    let to_z2 = FaultRelay::start(&z2.addr());
    let to_z1 = FaultRelay::start(&z1.addr());

    // Region 1 takes writes; phase "a" is fully mirrored before the loss.
    let p1 = proxy_via(&z1, &to_z2, |_| {}).await;
    let w = ZkWorkload::start(&p1.connect_string(), "a", 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.stop().await.1, 0);
    settle(&p1).await;
    let mirrored = snapshot(&z1.addr(), "a").await;
    assert!(mirrored.len() > 20, "{}", mirrored.len());
    // Phase "b" is still running (and partly unmirrored) when region 1 is lost.
    to_z2.set(Fault::Delay(Duration::from_millis(30)));
    let w = ZkWorkload::start(&p1.connect_string(), "b", 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Taking the backup stops z1 for a moment: some "b" writes fail, which is fine here.
    let backup_z1 = z1.backup().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(p1);
    z1.kill();
    w.stop().await;
    to_z2.set(Fault::Pass);

    // Region 2 takes over: leader z2, follower z1 (unreachable: the relay still accepts
    // connections, so do not wait for the resync at start).
    let p2 = ZkProxy::start_without_waiting(&z2.addr(), Some(&to_z1.addr()), tune).await;
    same_snapshot(&mirrored, &snapshot(&z2.addr(), "a").await);
    let c = p2.client().await;
    let (some, node) = mirrored.iter().next().expect("a node");
    let (data, _) = c.get_data(some).await.expect("reads through region 2");
    assert_eq!(data, node.data, "{some}");
    drop(c);
    let w = ZkWorkload::start(&p2.connect_string(), "c", 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = p2.status().await;
    assert_eq!(s["zookeeper"]["follower"]["up"], false, "{s}");
    assert_eq!(s["zookeeper"]["mirror"]["in_sync"], false, "{s}");

    // Region 1's ZooKeeper comes back from its last backup (stale, with unmirrored "b"
    // nodes) and is resynced from z2 while region 2 keeps writing.
    z1.restore(&backup_z1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100, "workload made progress: {ok}");
    assert_eq!(failed, 0, "region 2 wrote with warnings only");
    settle(&p2).await;
    describe(&p2, ok, failed).await;
    verify_zero(&p2, &z2, &z1).await;

    // Fail back: freeze region 2 (drains the mirror), stop it, start region 1 again.
    let (code, body) = p2.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["mirror_drained"],
        true,
        "{body}"
    );
    drop(p2);
    let p1 = proxy_via(&z1, &to_z2, |_| {}).await;
    let w = ZkWorkload::start(&p1.connect_string(), "d", 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(w.stop().await.1, 0);
    settle(&p1).await;
    verify_zero(&p1, &z1, &z2).await;
    same_snapshot(&mirrored, &snapshot(&z1.addr(), "a").await);
    same_snapshot(&mirrored, &snapshot(&z2.addr(), "a").await);
    assert!(
        !snapshot(&z1.addr(), "c").await.is_empty(),
        "region 2's writes survived the fail back"
    );
}
