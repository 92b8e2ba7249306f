//! A follower *ensemble* (three ZooKeeper servers), where every other test uses a standalone
//! follower. With a mixed workload running through the proxy, each follower member in turn
//! is SIGKILLed and restarted (one of them holds statemirror's follower session, so the
//! session moves; one of them is the ensemble's leader, so there is an election), then a
//! full resync runs while a member is down. Checked:
//! - no write is lost and the follower is never marked out of sync: zxids of different
//!   members are comparable, and statemirror `sync`s before reading a member's zxid, so a
//!   member that has not caught up yet must not look like a follower that went back in time
//!   (that would start a needless full resync: the completed resyncs would grow);
//! - at the end `GET /verify` reports zero differences and every member's tree equals the
//!   leader's.
mod common;

use std::time::Duration;

use common::zk::{compare_trees, ZkEnsemble, ZkProxy, ZkServer};
use common::zk_workload::ZkWorkload;
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_ensemble_members_restart_one_at_a_time_without_a_needless_resync() {
    let (leader, mut ens) = tokio::join!(ZkServer::standalone(), ZkEnsemble::start(3));
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&ens.connect_string()), |c| {
        c.resync.max_keys_per_second = 0;
        c.resync.retry_interval_ms = 300;
    })
    .await;
    // Completed runs: an attempt that failed because a member died under it is retried,
    // and that retry is the same resync, not a needless new one.
    let resyncs = |s: &Value| {
        s["zookeeper"]["resync"]["resyncs_by_outcome"]["completed"].as_u64()
    };
    let at_start = resyncs(&proxy.status().await);
    assert_eq!(at_start, Some(1), "the resync at start ran once");

    let w = ZkWorkload::start(&proxy.connect_string(), "k", 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 0..ens.len() {
        eprintln!("killing follower member {i} ({:?})", ens.mode(i).await);
        ens.kill(i);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ens.restart(i).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = proxy.mirror_status().await;
        assert_eq!(m["in_sync"], true, "after member {i} came back: {m}");
    }
    // A full resync against two of three members.
    ens.kill(0);
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert_eq!(code, 202, "{body}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100, "workload made progress: {ok}");
    assert_eq!(failed, 0);
    settle_with("zookeeper", || proxy.status()).await;
    let s = proxy.status().await;
    assert_eq!(
        resyncs(&s),
        Some(2),
        "only the requested resync ran (a member mistaken for a follower that went back in \
         time would have started another): {}",
        s["zookeeper"]
    );
    assert_eq!(
        s["zookeeper"]["mirror"]["dropped_writes"], 0,
        "{}",
        s["zookeeper"]
    );
    ens.restart(0).await;

    let (code, body) = proxy.http("GET", "/verify", None).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["zookeeper"]["total_differences"], 0, "{body}");
    for i in 0..ens.len() {
        let member = ens.server_addr(i);
        let n = eventually(Duration::from_secs(20), || async {
            compare_trees(&leader.addr(), &member).await
        })
        .await;
        eprintln!("follower member {i}: {n} nodes, equal to the leader");
    }
}
