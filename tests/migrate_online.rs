//! The online move between providers against real servers: a sidecar keeps serving NiFi on
//! one provider while `[migration]` writes every NiFi state change, translated, into the
//! other. Under a running NiFi-style workload through the sidecar (state replaces, creates,
//! component removals, unrelated writes), a freeze (`PUT /maintenance`) waits for the
//! migration too; then `/status` shows it in sync, `migrate verify` finds no difference,
//! and NiFi's own sequences against the destination (Redis: WATCH/GET/MULTI/GETSET/EXEC
//! with the JSON version; ZooKeeper: getData, then setData at the znode version) succeed
//! and see every entry the source held last (no newer entry overwritten by an older copy).
//! Both directions: ZooKeeper → Redis and Redis → ZooKeeper.
//!
//! Tests run one at a time (`SERIAL`). Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fault::{Fault, FaultRelay};
use common::workload::Workload;
use common::zk::{persistent, zk_client, zkc, ZkProxy, ZkServer};
use common::zk_workload::ZkWorkload;
use common::{eventually, example_config, Proxy, RedisServer};
use redis::AsyncCommands;
use statemirror::migrate::offline::{self, Options};
use statemirror::migrate::{identity, Endpoint};
use statemirror::nifi::{self, encode_binary};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Components written before the sidecar starts (copied by the full copy at start).
const BEFORE: usize = 300;
/// Components the live writer cycles through (each replaced many times, some removed).
const LIVE: u64 = 40;

fn migration_to(url: &str) -> Option<statemirror::config::MigrationConfig> {
    let mut m = example_config("migration.toml")
        .migration
        .expect("[migration] in config/migration.toml");
    m.to = url.to_string();
    Some(m)
}

async fn verify(from: &str, to: &str) -> offline::Outcome {
    let o = Options {
        from: Endpoint::parse(from).unwrap(),
        to: Endpoint::parse(to).unwrap(),
        map: identity(),
        dry_run: false,
        force: false,
        verify_only: true,
        timeout: Duration::from_secs(10),
    };
    tokio::time::timeout(Duration::from_secs(120), offline::run(o))
        .await
        .expect("verify finished")
}

/// Freezes, checks the freeze waited for the migration, and waits for `in_sync`.
async fn freeze_and_wait(http: impl AsyncFn(&str, &str) -> (u16, String), protocol: &str) {
    let (code, body) = http("PUT", "/maintenance").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["mirror_drained"], true, "{body}");
    // The freeze waited for the migration's dirty set too: nothing is left right now.
    let (_, body) = http("GET", "/status").await;
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    let m = &s[protocol]["migration"];
    // (The settle pass may be copying already: it starts once frozen.)
    assert_eq!(
        m["dirty"], 0,
        "frozen with changed components not copied: {m}"
    );
    eventually(Duration::from_secs(60), || async {
        let (_, body) = http("GET", "/status").await;
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        let m = &s[protocol]["migration"];
        if m["in_sync"] == true && m["dirty"] == 0 {
            Ok(m.clone())
        } else {
            Err(format!("migration not in sync: {m}"))
        }
    })
    .await;
}

fn state(n: u64, extra: &str) -> Vec<u8> {
    let ts = (1_700_000_000_000 + n).to_string();
    encode_binary(&[
        ("listing.timestamp", ts.as_str()),
        ("n", &n.to_string()),
        ("unicode", "😀\0é"),
        ("extra", extra),
    ])
}

/// NiFi's ZooKeeperStateProvider through the sidecar: replace at the read version (create
/// when missing), and now and then onComponentRemoved (delete).
async fn zk_nifi_writer(connect: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let c = zk_client(&connect).await;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && i < 100_000 {
        i += 1;
        let path = format!("/nifi/components/live-{}", i % LIVE);
        let r = tokio::time::timeout(Duration::from_secs(3), async {
            if i % 23 == 0 {
                return c.delete(&path, None).await;
            }
            match c.get_data(&path).await {
                Ok((_, st)) => c
                    .set_data(&path, &state(i, "x"), Some(st.version))
                    .await
                    .map(|_| ()),
                Err(zkc::Error::NoNode) => c
                    .create(&path, &state(i, "new"), &persistent())
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        })
        .await;
        match r {
            Ok(Ok(()))
            | Ok(Err(zkc::Error::NoNode | zkc::Error::BadVersion | zkc::Error::NodeExists)) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("NiFi writer: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_to_redis_online_under_nifi_workload() {
    let _g = SERIAL.lock().await;
    let leader = ZkServer::standalone().await;
    let follower = ZkServer::standalone().await;
    let dest = RedisServer::start();
    let c = zk_client(&leader.addr()).await;
    c.mkdir("/nifi/components", &persistent()).await.unwrap();
    for i in 0..BEFORE {
        let data = if i % 10 == 0 {
            vec![1, 0, 0, 0, 0]
        } else {
            state(i as u64, "before")
        };
        c.create(
            &format!("/nifi/components/before-{i}"),
            &data,
            &persistent(),
        )
        .await
        .unwrap();
    }
    let dest_url = format!("redis://{}", dest.addr());
    // A far destination: the migration lags behind the writes, so the freeze must wait.
    let relay = FaultRelay::start(&dest.addr());
    relay.set(Fault::Latency(Duration::from_millis(150)));
    let far_url = format!("redis://{}", relay.addr());
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |cfg| {
        cfg.migration = migration_to(&far_url);
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(zk_nifi_writer(
        proxy.connect_string(),
        stop.clone(),
        done.clone(),
    ));
    let load = ZkWorkload::start(&proxy.connect_string(), "w", 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let (ok, _failed) = load.stop().await;
    assert!(
        done.load(Ordering::Relaxed) > 50 && ok > 50,
        "the workload ran"
    );

    freeze_and_wait(async |m, p| proxy.http(m, p, None).await, "zookeeper").await;
    let (_, text) = proxy.http("GET", "/metrics", None).await;
    let zk = [("protocol", "zookeeper")];
    assert_eq!(
        common::metric(&text, "statemirror_migration_in_sync", &zk),
        Some(1.0)
    );
    assert_eq!(
        common::metric(&text, "statemirror_migration_dirty", &zk),
        Some(0.0)
    );
    let copied = common::metric(&text, "statemirror_migration_copied_total", &zk);
    assert!(copied.unwrap_or(0.0) >= BEFORE as f64, "{copied:?}");
    let zk_url = format!("zk://{}/nifi", leader.addr());
    let o = verify(&zk_url, &dest_url).await;
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(
        o.report["verify"]["equal"].as_u64().unwrap() >= BEFORE as u64,
        "{}",
        o.text
    );

    // NiFi switched to RedisStateProvider: its replace sequence, at the JSON version.
    let mut r = dest.conn().await;
    let keys: Vec<String> = r.keys("nifi/components/*").await.unwrap();
    for key in &keys {
        let id = key.trim_start_matches("nifi/components/");
        let (zdata, zst) = c.get_data(&format!("/nifi/components/{id}")).await.unwrap();
        let last = nifi::decode_binary_strict(&zdata, None).unwrap();
        let _: () = redis::cmd("WATCH")
            .arg(key)
            .query_async(&mut r)
            .await
            .unwrap();
        let old: String = r.get(key).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&old).unwrap();
        assert_eq!(
            v["version"], zst.version,
            "{key}: the znode version became the JSON version"
        );
        let mut values: BTreeMap<String, Option<String>> = last.entries.clone();
        let seen: BTreeMap<String, Option<String>> =
            serde_json::from_value(v["stateValues"].clone()).unwrap();
        assert_eq!(
            seen, last.entries,
            "{key}: Redis holds ZooKeeper's last state"
        );
        values.insert("after.switch".into(), Some("1".into()));
        let new = serde_json::json!({"version": v["version"].as_i64().unwrap() + 1,
            "encodingVersion": 1, "stateValues": values});
        let exec: Option<(String,)> = redis::pipe()
            .atomic()
            .cmd("GETSET")
            .arg(key)
            .arg(new.to_string())
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(exec.is_some(), "{key}: NiFi's replace succeeded");
    }
    let (code, body) = proxy.http("DELETE", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_zookeeper_online_under_nifi_workload() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let dest = ZkServer::standalone().await;
    let mut l = leader.conn().await;
    for i in 0..BEFORE {
        let json = nifi::encode_json(
            &nifi::decode_binary_strict(&state(i as u64, "before\n\"q\""), None).unwrap(),
            i as i64,
        );
        let _: () = l
            .set(format!("nifi/components/before-{i}"), json)
            .await
            .unwrap();
    }
    let dest_url = format!("zk://{}/nifi", dest.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        cfg.migration = migration_to(&dest_url);
        // A tiny dirty set: it overflows under the workload and full copies take over.
        if let Some(m) = cfg.migration.as_mut() {
            m.max_dirty = 4;
        }
    })
    .await;

    let load = Workload::start(&proxy.url(), "w", 2);
    let mut p = proxy.conn().await;
    for i in 0..600u64 {
        let key = format!("nifi/components/live-{}", i % LIVE);
        if i % 23 == 0 {
            let _: () = p.del(&key).await.unwrap();
        } else {
            common::workload::nifi_replace(&mut p, &key, 9, i)
                .await
                .unwrap();
        }
    }
    let (ok, _failed) = load.stop().await;
    assert!(ok > 50, "the workload ran");

    freeze_and_wait(async |m, p| proxy.http(m, p, None).await, "redis").await;
    let (_, text) = proxy.http("GET", "/metrics", None).await;
    let full = common::metric(
        &text,
        "statemirror_migration_full_copies_total",
        &[("protocol", "redis")],
    );
    assert!(
        full.unwrap_or(0.0) >= 2.0,
        "the overflow ran full copies: {full:?}"
    );
    let redis_url = format!("redis://{}", leader.addr());
    let o = verify(&redis_url, &dest_url).await;
    assert_eq!(o.code, 0, "{}", o.text);

    // NiFi switched to ZooKeeperStateProvider: getData, then setData at that version.
    let z = zk_client(&dest.addr()).await;
    let ids = z.list_children("/nifi/components").await.unwrap();
    assert!(ids.len() >= BEFORE, "{}", ids.len());
    for id in ids {
        let path = format!("/nifi/components/{id}");
        let (data, st) = z.get_data(&path).await.unwrap();
        let mut got = nifi::decode_binary_strict(&data, None).unwrap();
        let json: String = l.get(format!("nifi/components/{id}")).await.unwrap();
        let last = nifi::decode_json(json.as_bytes()).unwrap();
        assert_eq!(
            got.entries, last.entries,
            "{id}: ZooKeeper holds Redis's last state"
        );
        got.entries.insert("after.switch".into(), Some("1".into()));
        let data = nifi::encode_state_binary(&got).unwrap();
        z.set_data(&path, &data, Some(st.version)).await.unwrap();
    }
    let (code, body) = proxy.http("DELETE", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
}

#[test]
fn the_example_migration_config_validates() {
    let cfg = example_config("migration.toml");
    let m = cfg.migration.clone().expect("[migration]");
    assert_eq!(m.source(&cfg), Ok("zookeeper"));
    let errs = cfg.validate().err().unwrap_or_default();
    assert!(
        errs.iter().all(|e| !e.path.starts_with("migration")),
        "{errs:?}"
    );
    let mut bad = example_config("migration.toml");
    bad.migration.as_mut().unwrap().to = "http://x".into();
    bad.zookeeper.as_mut().unwrap().follower = None;
    let errs = bad.validate().unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.contains(&"migration.to") && paths.contains(&"migration.from"),
        "{errs:?}"
    );
}

/// Two NiFi nodes, each behind its own sidecar with `[migration]`, replacing the same
/// components: a sidecar's copy can race the other's (read before the other node's write,
/// land after its copy). The settle pass after the freeze leaves the destination exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_copying_the_same_components_end_exact() {
    let _g = SERIAL.lock().await;
    let leader = ZkServer::standalone().await;
    let follower = ZkServer::standalone().await;
    let dest = RedisServer::start();
    // A far destination widens the race window between the two sidecars' copies.
    let relay = FaultRelay::start(&dest.addr());
    relay.set(Fault::Latency(Duration::from_millis(20)));
    let far_url = format!("redis://{}", relay.addr());
    let mut proxies = Vec::new();
    for _ in 0..2 {
        let p = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |cfg| {
            cfg.migration = migration_to(&far_url);
        })
        .await;
        proxies.push(p);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = proxies
        .iter()
        .map(|p| {
            tokio::spawn(zk_nifi_writer(
                p.connect_string(),
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 50, "the writers ran");
    for p in &proxies {
        freeze_and_wait(async |m, path| p.http(m, path, None).await, "zookeeper").await;
    }
    let o = verify(
        &format!("zk://{}/nifi", leader.addr()),
        &format!("redis://{}", dest.addr()),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.text);
    for p in &proxies {
        let (code, body) = p.http("DELETE", "/maintenance", None).await;
        assert_eq!(code, 200, "{body}");
    }
}
