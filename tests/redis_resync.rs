//! Follower catch-up for Redis, proven under injected faults: a mixed workload runs through
//! the proxy while the follower is killed, cut off, overflowed, restored from an old backup,
//! or the sidecar itself is killed; each scenario ends with writes stopped, the mirror
//! drained, the follower in sync and `GET /verify` reporting zero differences (checked again
//! key by key with the test's own comparison). Also: the disaster-recovery cycle across two
//! "regions", and `verify` naming the NiFi component and state entry that differ.
//!
//! The follower sits behind a fault-injecting relay (`common::fault`). Scenarios run one at
//! a time (`SERIAL`): each runs several servers, a workload and a resync on 2 cores.
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::fault::{Fault, FaultRelay};
use common::workload::Workload;
use common::*;
use redis::AsyncCommands;
use serde_json::Value;
use statemirror::config::Config;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Test settings: fast health checks and retries, resync unthrottled.
fn tune(cfg: &mut Config, follower: &str) {
    cfg.redis.as_mut().expect("[redis]").follower = Some(format!("redis://{follower}"));
    cfg.resync.max_keys_per_second = 0;
    cfg.resync.retry_interval_ms = 300;
}

/// Waits until writes are mirrored, the follower is in sync and no resync runs.
async fn settle(proxy: &Proxy) {
    settle_with("redis", || proxy.status()).await
}

async fn resyncs_total(proxy: &Proxy) -> u64 {
    proxy.status().await["redis"]["resync"]["resyncs_total"]
        .as_u64()
        .expect("resyncs_total")
}

/// `GET /verify` says zero differences, and so does the test's own key-by-key comparison.
async fn verify_zero(proxy: &Proxy, leader: &RedisServer, follower: &RedisServer) -> u64 {
    let (code, body) = proxy.http("GET", "/verify", None).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let r = &v["redis"];
    assert_eq!(
        r["total_differences"], 0,
        "verify found differences: {body}"
    );
    assert_same_data(leader, follower).await;
    r["equal"].as_u64().expect("equal count")
}

/// Type, value and absolute expiry (ms; negative = none) of every key matching `pattern`
/// (database 0).
async fn snapshot(server: &RedisServer, pattern: &str) -> BTreeMap<String, (String, i64)> {
    let mut c = server.conn().await;
    let keys: Vec<Vec<u8>> = c.keys(pattern).await.expect("KEYS");
    let mut out = BTreeMap::new();
    for k in keys {
        let mut d = describe_key(&mut c, &k).await.expect("describe");
        if d.1 >= 0 {
            d.1 += std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as i64;
        }
        out.insert(String::from_utf8_lossy(&k).into_owned(), d);
    }
    out
}

fn same_snapshot(a: &BTreeMap<String, (String, i64)>, b: &BTreeMap<String, (String, i64)>) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "key sets differ"
    );
    for (k, (va, ta)) in a {
        let (vb, tb) = &b[k];
        assert_eq!(va, vb, "{k}");
        assert!(
            (ta - tb).abs() <= 2000 || (*ta < 0 && *tb < 0),
            "{k}: ttl {ta} vs {tb}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_sigkilled_and_restarted_empty_is_resynced() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let relay = FaultRelay::start(&follower.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| tune(c, &relay.addr())).await;
    let w = Workload::start(&proxy.url(), "k:", 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    follower.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    follower.restart(); // empty
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100, "workload made progress: {ok}");
    assert_eq!(failed, 0, "a follower outage never fails a client write");
    settle(&proxy).await;
    let s = proxy.status().await;
    assert!(
        s["redis"]["resync"]["resyncs_total"].as_u64() >= Some(2),
        "{s}"
    );
    assert!(verify_zero(&proxy, &leader, &follower).await > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blackholed_follower_link_catches_up_after_it_is_restored() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let relay = FaultRelay::start(&follower.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| tune(c, &relay.addr())).await;
    let w = Workload::start(&proxy.url(), "k:", 4);
    tokio::time::sleep(Duration::from_millis(800)).await;
    relay.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = proxy.status().await;
    assert!(
        s["redis"]["mirror"]["queue_depth"].as_u64() > Some(0),
        "{s}"
    );
    relay.set(Fault::Pass);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, failed) = w.stop().await;
    assert_eq!(failed, 0);
    settle(&proxy).await;
    verify_zero(&proxy, &leader, &follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overflowed_queue_is_repaired_by_a_resync() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let relay = FaultRelay::start(&follower.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        tune(c, &relay.addr());
        c.replication.max_queue_ops = 50;
    })
    .await;
    let w = Workload::start(&proxy.url(), "k:", 4);
    relay.set(Fault::Stall);
    eventually(Duration::from_secs(20), || async {
        let m = proxy.status().await["redis"]["mirror"].clone();
        if m["dropped_writes"].as_u64() > Some(0) && m["in_sync"] == false {
            Ok(())
        } else {
            Err(format!("no overflow yet: {m}"))
        }
    })
    .await;
    relay.set(Fault::Pass);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, failed) = w.stop().await;
    assert_eq!(failed, 0);
    settle(&proxy).await;
    verify_zero(&proxy, &leader, &follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_restored_from_an_old_backup_is_resynced() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let relay = FaultRelay::start(&follower.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| tune(c, &relay.addr())).await;
    let w = Workload::start(&proxy.url(), "k:", 4);
    let mut c = proxy.conn().await;
    for i in 0..20 {
        let _: () = c.set(format!("gone:{i}"), i).await.expect("SET");
    }
    // Every gone:* key has reached the follower. (Not `drained()`: with the workload
    // running, the queue is rarely empty at the instant it is sampled.)
    let mut f = follower.conn().await;
    eventually(Duration::from_secs(20), || {
        let mut f = f.clone();
        async move {
            let n: usize = f
                .keys::<_, Vec<String>>("gone:*")
                .await
                .map_err(|e| e.to_string())?
                .len();
            if n == 20 {
                Ok(())
            } else {
                Err(format!("{n} of 20 gone:* keys on the follower"))
            }
        }
    })
    .await;
    // The backup holds the gone:* keys and the workload's keys as they are now.
    let old = follower.backup().await;
    let _: () = c
        .del((0..20).map(|i| format!("gone:{i}")).collect::<Vec<_>>())
        .await
        .expect("DEL");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    follower.restore(&old); // stale values, and keys the leader deleted since
    f = follower.conn().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, failed) = w.stop().await;
    assert_eq!(failed, 0);
    settle(&proxy).await;
    verify_zero(&proxy, &leader, &follower).await;
    let n: usize = f
        .keys::<_, Vec<String>>("gone:*")
        .await
        .expect("KEYS")
        .len();
    assert_eq!(
        n, 0,
        "keys the leader deleted are removed from the follower"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecar_killed_with_writes_queued_resyncs_after_restart() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let relay = FaultRelay::start(&follower.addr());
    let (cfg, admin, port) = binary_config(&format!(
        "[redis]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\nfollower = \"redis://{}\"\n\
         health_interval_ms = 200\nconnect_timeout_ms = 500\n\
         [replication]\nretry_max_backoff_ms = 300\napply_timeout_ms = 1000\n\
         [resync]\nmax_keys_per_second = 0\nretry_interval_ms = 300\n",
        leader.url(),
        relay.addr()
    ));
    let url = format!("redis://127.0.0.1:{port}");
    let mut p = BinProxy::start(cfg.path(), &admin, &url).await;
    let w = Workload::start(&p.url, "k:", 4);
    tokio::time::sleep(Duration::from_millis(800)).await;
    relay.set(Fault::Stall);
    p.wait_queue_depth_over("redis", 20).await;
    // Keys written once while the follower link is stalled: the workload never rewrites
    // them, so only the resync at restart can bring them to the follower.
    let mut c = client(&p.url).await;
    for i in 0..50 {
        let _: () = c.set(format!("once:{i}"), i).await.expect("SET");
    }
    p.kill(); // SIGKILL with writes queued: they are lost with the process
    relay.set(Fault::Pass);
    let p = BinProxy::start(cfg.path(), &admin, &url).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, _) = w.stop().await;
    assert!(ok > 100);
    eventually(Duration::from_secs(60), || async {
        let s = p.status().await?;
        let r = &s["redis"];
        if r["mirror"]["queue_depth"] == 0 && r["mirror"]["in_sync"] == true {
            Ok(())
        } else {
            Err(format!("{r}"))
        }
    })
    .await;
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
    assert_eq!(v["redis"]["different"], 0, "{report}");
    assert_same_data(&leader, &follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disaster_recovery_cycle_loses_nothing_that_was_mirrored() {
    let _g = SERIAL.lock().await;
    let mut b1 = RedisServer::start();
    let b2 = RedisServer::start();
    // Region 1 -> region 2 and back: each sidecar reaches the other region through a relay.
    let to_b2 = FaultRelay::start(&b2.addr());
    let to_b1 = FaultRelay::start(&b1.addr());

    // Region 1 takes writes; phase "a:" is fully mirrored before the loss.
    let p1 = Proxy::start_with(&b1, Some(&b2), |c| tune(c, &to_b2.addr())).await;
    let w = Workload::start(&p1.url(), "a:", 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.stop().await.1, 0);
    settle(&p1).await;
    let mirrored = snapshot(&b1, "a:*").await;
    assert!(mirrored.len() > 20);
    // Phase "b:" is still running (and partly unmirrored) when region 1 is lost.
    to_b2.set(Fault::Delay(Duration::from_millis(30)));
    let w = Workload::start(&p1.url(), "b:", 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let backup_b1 = b1.backup().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(p1);
    b1.kill();
    w.stop().await;
    to_b2.set(Fault::Pass);

    // Region 2 takes over: leader b2, follower b1 (unreachable).
    let p2 = Proxy::start_with(&b2, None, |c| tune(c, &to_b1.addr())).await;
    same_snapshot(&mirrored, &snapshot(&b2, "a:*").await);
    let mut c = p2.conn().await;
    let some_key = mirrored.keys().next().expect("a key");
    let _: Option<Vec<u8>> = redis::cmd("DUMP")
        .arg(some_key)
        .query_async(&mut c)
        .await
        .expect("reads through region 2");
    let w = Workload::start(&p2.url(), "c:", 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = p2.status().await;
    assert_eq!(s["redis"]["follower"]["up"], false, "{s}");
    assert_eq!(s["redis"]["mirror"]["in_sync"], false, "{s}");

    // Region 1's Redis comes back from its last backup (stale, with unmirrored "b:" keys)
    // and is resynced from b2 while region 2 keeps writing.
    b1.restore(&backup_b1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, failed) = w.stop().await;
    assert!(ok > 100);
    assert_eq!(failed, 0, "region 2 wrote with warnings only");
    settle(&p2).await;
    verify_zero(&p2, &b2, &b1).await;

    // Fail back: freeze region 2 (drains the mirror), stop it, start region 1 again.
    let (code, body) = p2.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["mirror_drained"],
        true
    );
    drop(p2);
    let p1 = Proxy::start_with(&b1, Some(&b2), |c| tune(c, &to_b2.addr())).await;
    let w = Workload::start(&p1.url(), "d:", 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(w.stop().await.1, 0);
    settle(&p1).await;
    verify_zero(&p1, &b1, &b2).await;
    same_snapshot(&mirrored, &snapshot(&b1, "a:*").await);
    same_snapshot(&mirrored, &snapshot(&b2, "a:*").await);
    assert!(
        !snapshot(&b1, "c:*").await.is_empty(),
        "region 2's writes survived the fail back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_names_the_nifi_component_and_entry_that_differ() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    let state = |ts: &str| {
        format!(
            r#"{{"version":3,"encodingVersion":1,"stateValues":{{"id.0":"s3://b/a","listing.timestamp":"{ts}"}}}}"#
        )
    };
    for id in ["11111111-aaaa", "22222222-bbbb"] {
        let _: () = c
            .set(format!("nifi/components/{id}"), state("1700000000000"))
            .await
            .expect("SET");
    }
    let _: () = c.set("plain", "x").await.expect("SET");
    proxy.drained().await;
    // Corrupt one entry of one component on the follower, and drop another key there.
    let mut f = follower.conn().await;
    let _: () = f
        .set("nifi/components/22222222-bbbb", state("1600000000000"))
        .await
        .expect("SET");
    let _: () = f.del("plain").await.expect("DEL");
    let _: () = f.set("extra", "1").await.expect("SET");
    let (code, body) = proxy.http("GET", "/verify", None).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let r = &v["redis"];
    assert_eq!(
        (r["equal"].as_u64(), r["different"].as_u64()),
        (Some(1), Some(1)),
        "{body}"
    );
    assert_eq!(r["missing_on_follower"], 1, "{body}");
    assert_eq!(r["extra_on_follower"], 1, "{body}");
    let d = r["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .find(|d| d["kind"] == "different")
        .expect("the corrupted key")
        .clone();
    assert_eq!(d["key"], "nifi/components/22222222-bbbb");
    assert_eq!(d["nifi"]["component"], "22222222-bbbb");
    let e = &d["nifi"]["entries"];
    assert_eq!(
        e.as_array().map(Vec::len),
        Some(1),
        "only the changed entry: {d}"
    );
    assert_eq!(e[0]["entry"], "listing.timestamp");
    assert_eq!(e[0]["leader"], "1700000000000");
    assert_eq!(e[0]["follower"], "1600000000000");
    // /status (no token needed) has the counts only: no key, entry or value.
    let s = proxy.status().await;
    let last = &s["redis"]["verify"]["last"];
    assert_eq!(last["different"], 1, "{s}");
    assert!(last.get("first_differences").is_none(), "{s}");
    let text = s.to_string();
    assert!(!text.contains("22222222-bbbb"), "{s}");
    assert!(!text.contains("listing.timestamp"), "{s}");
    assert!(!text.contains("1600000000000"), "{s}");
    // The gauge is process-global; `SERIAL` keeps every other proxy of this binary away.
    let m = proxy.http("GET", "/metrics", None).await.1;
    assert_eq!(
        metric(
            &m,
            "statemirror_verify_differences",
            &[("protocol", "redis")]
        ),
        Some(3.0),
        "{m}"
    );
    // An operator's resync repairs it: the request marks the follower out of sync at once,
    // so settling means that resync ran to the end.
    let resyncs_before = proxy.status().await["redis"]["resync"]["resyncs_total"]
        .as_u64()
        .expect("resyncs_total");
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert_eq!(code, 202, "{body}");
    settle(&proxy).await;
    let s = proxy.status().await;
    assert_eq!(
        s["redis"]["resync"]["resyncs_total"].as_u64(),
        Some(resyncs_before + 1),
        "{s}"
    );
    verify_zero(&proxy, &leader, &follower).await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["verify"]["last"]["different"], 0, "{s}");
    assert_eq!(s["redis"]["resync"]["last"]["outcome"], "completed", "{s}");
    assert!(
        s["redis"]["resync"]["last"]["deleted"].as_u64() >= Some(1),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_verify_reports_and_cli_resync_repairs() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let (port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    let cfg = dir.path().join("statemirror.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"{}\"\n[log]\nlevel = \"warn\"\n\
             [redis]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{}\"\nfollower = \"{}\"\n\
             health_interval_ms = 200\n[resync]\nmax_keys_per_second = 0\n",
            token.display(),
            leader.url(),
            follower.url()
        ),
    )
    .expect("config");
    let p = BinProxy::start(
        &cfg,
        &format!("http://127.0.0.1:{admin_port}"),
        &format!("redis://127.0.0.1:{port}"),
    )
    .await;
    let mut c = client(&p.url).await;
    for i in 0..50 {
        let _: () = c
            .set(
                format!("nifi/components/c{i}"),
                format!(r#"{{"version":1,"encodingVersion":1,"stateValues":{{"n":"{i}"}}}}"#),
            )
            .await
            .expect("SET");
    }
    eventually(Duration::from_secs(20), || async {
        let s = p.status().await?;
        if s["redis"]["mirror"]["queue_depth"] == 0 && s["redis"]["mirror"]["in_sync"] == true {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    })
    .await;
    let mut f = follower.conn().await;
    let _: () = f
        .set(
            "nifi/components/c7",
            r#"{"version":1,"encodingVersion":1,"stateValues":{"n":"700"}}"#,
        )
        .await
        .expect("SET");
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_statemirror"))
            .args(["verify", "--config"])
            .arg(&cfg)
            .output()
            .expect("statemirror verify")
    };
    let out = verify();
    assert_eq!(out.status.code(), Some(1), "differences → exit 1");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let d = &v["redis"]["differences"][0];
    assert_eq!(d["nifi"]["component"], "c7", "{v}");
    assert_eq!(d["nifi"]["entries"][0]["entry"], "n");
    assert_eq!(d["nifi"]["entries"][0]["leader"], "7");
    assert_eq!(d["nifi"]["entries"][0]["follower"], "700");
    let out = Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(["resync", "--wait", "--timeout-seconds", "60", "--config"])
        .arg(&cfg)
        .output()
        .expect("statemirror resync");
    assert!(
        out.status.success(),
        "resync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(last["redis"]["outcome"], "completed", "{last}");
    assert!(last["redis"]["copied"].as_u64() >= Some(50), "{last}");
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Without the token the admin API refuses a resync and a verification (it loads both
    // backends and returns NiFi state values); with it, verify answers.
    for (method, path) in [
        (hyper::Method::POST, "/resync"),
        (hyper::Method::GET, "/verify"),
    ] {
        let (code, _) = statemirror::admin::client::request(
            &p.admin,
            method,
            path,
            None,
            Duration::from_secs(5),
        )
        .await
        .expect("admin");
        assert_eq!(code, 401, "{path} without the token");
    }
    let (code, body) = statemirror::admin::client::request(
        &p.admin,
        hyper::Method::GET,
        "/verify",
        Some("s3cret-token"),
        Duration::from_secs(30),
    )
    .await
    .expect("admin");
    assert_eq!(code, 200, "{body}");
}

/// Every data type through `copy_format = "typed"` (what an older follower gets): live
/// mirroring and a full resync both end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_copies_cover_every_data_type() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.redis.as_mut().expect("[redis]").copy_format = statemirror::config::CopyFormat::Typed;
        c.resync.max_keys_per_second = 0;
        c.resync.retry_interval_ms = 300;
    })
    .await;
    let mut c = proxy.conn().await;
    let _: () = c.append("s", "abc").await.expect("APPEND");
    let _: () = c.rpush("l", &["a", "b", "c"]).await.expect("RPUSH");
    let _: () = c.sadd("st", &["x", "y", "z"]).await.expect("SADD");
    let _: () = c
        .zadd_multiple("z", &[(1.5, "a"), (-2.0, "b")])
        .await
        .expect("ZADD");
    let _: () = c
        .hset_multiple("h", &[("f1", "v1"), ("f2", "v2")])
        .await
        .expect("HSET");
    let _: () = redis::cmd("XADD")
        .arg("x")
        .arg("5-1")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("XADD");
    let _: () = redis::cmd("XADD")
        .arg("x")
        .arg("7-0")
        .arg("k2")
        .arg("v2")
        .query_async(&mut c)
        .await
        .expect("XADD");
    let _: () = c.incr("n", 5).await.expect("INCR");
    let _: () = c.expire("l", 500).await.expect("EXPIRE");
    proxy.drained().await;
    verify_zero(&proxy, &leader, &follower).await;
    // And the resync path: the follower comes back empty. A write makes the writer
    // reconnect and see the new run id, which marks the follower out of sync; the resync
    // that follows must have completed before the comparison.
    let resyncs_before = resyncs_total(&proxy).await;
    follower.restart();
    let _: () = c.incr("n", 1).await.expect("INCR");
    eventually(Duration::from_secs(20), || async {
        match resyncs_total(&proxy).await {
            n if n > resyncs_before => Ok(()),
            n => Err(format!("{n} resyncs, none since the restart")),
        }
    })
    .await;
    settle(&proxy).await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["resync"]["last"]["outcome"], "completed", "{s}");
    assert_eq!(verify_zero(&proxy, &leader, &follower).await, 7);
}

/// A follower that cannot take `RESTORE` (here renamed away; an ACL or an older Redis
/// rejecting the payload behave alike) makes the writer switch to type-aware copies on its
/// own, and the copy still ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_refusing_restore_gets_type_aware_copies() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start_with(&["--rename-command", "RESTORE", "RESTORE_OFF"]);
    let mut l = leader.conn().await;
    let _: () = l
        .hset_multiple("h", &[("a", "1"), ("b", "2")])
        .await
        .expect("HSET");
    let _: () = l.rpush("l", &["x", "y"]).await.expect("RPUSH");
    let _: () = l.set_ex("s", "v", 300).await.expect("SET");
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.resync.max_keys_per_second = 0;
    })
    .await; // the resync at start copies the three keys
    let mut c = proxy.conn().await;
    let _: () = c.sadd("st", &["m", "n"]).await.expect("SADD"); // a live copy
    proxy.drained().await;
    let s = proxy.status().await;
    assert!(
        s["redis"]["mirror"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("follower_rejected_payload")),
        "{s}"
    );
    assert_eq!(verify_zero(&proxy, &leader, &follower).await, 4);
}

/// `resync.max_keys_per_second` bounds the copy rate (a lower bound on the duration: a slow
/// machine can only make it longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_rate_is_bounded_by_configuration() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let mut l = leader.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..1500 {
        pipe.set(format!("k{i}"), i).ignore();
    }
    let _: () = pipe.query_async(&mut l).await.expect("populate");
    let t0 = std::time::Instant::now();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.resync.max_keys_per_second = 1000;
        c.resync.batch_size = 100;
    })
    .await; // waits for the resync at start
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1300),
        "1500 keys at 1000/s took {took:?}"
    );
    let s = proxy.status().await;
    assert_eq!(s["redis"]["resync"]["last"]["copied"], 1500, "{s}");
    verify_zero(&proxy, &leader, &follower).await;
}

/// `verify.interval_ms` runs verifications on its own; the last result is in `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_verification_publishes_its_last_result() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| c.verify.interval_ms = 200).await;
    let mut c = proxy.conn().await;
    let _: () = c.set("a", 1).await.expect("SET");
    proxy.drained().await;
    let mut f = follower.conn().await;
    let _: () = f.set("only-on-follower", 1).await.expect("SET");
    eventually(Duration::from_secs(20), || async {
        let s = proxy.status().await;
        let last = &s["redis"]["verify"]["last"];
        if last["extra_on_follower"] == 1 && last["equal"] == 1 {
            Ok(())
        } else {
            Err(format!("{last}"))
        }
    })
    .await;
}
