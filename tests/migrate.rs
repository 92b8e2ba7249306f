//! `statemirror migrate` against real servers: 2,000 NiFi components (ListS3-like maps,
//! empty maps, unicode with NUL and supplementary characters, quotes and newlines, a value
//! at `writeUTF`'s 65535-byte limit, a component near ZooKeeper's 1 MB limit, raw modified
//! UTF-8 written by hand) moved ZooKeeper → Redis → ZooKeeper (another root) and compared
//! byte for byte; the Redis JSON checked against what Jackson writes; refusal without
//! `--force`, `--dry-run` writing nothing, Redis → Redis, and a value ZooKeeper cannot hold
//! reported per entry, never truncated.
//!
//! Tests run one at a time (`SERIAL`, 2-core machines). Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::zk::{persistent, zk_client, zkc, ZkServer};
use common::RedisServer;
use redis::AsyncCommands;
use statemirror::migrate::offline::{self, Options, Outcome};
use statemirror::migrate::{identity, Endpoint};
use statemirror::nifi::encode_binary;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const COMPONENTS: usize = 2000;

/// Component `i`'s state map (keys sorted, as the migration writes them).
fn state_for(i: usize) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    match i % 10 {
        0 => {} // empty map (NiFi's `clear` leaves one)
        1 => {
            m.insert("名前".into(), "ünïcødé €".into());
            m.insert("emoji".into(), "😀 \u{1F680} 𝄞".into());
            m.insert("nul".into(), "a\0b".into());
            m.insert("key\0with nul".into(), String::new());
        }
        2 => {
            m.insert(
                "quoted".into(),
                "a \"quoted\"\nline\r\n\ttab \\ back /slash \u{1} \u{7f}".into(),
            );
            m.insert("json".into(), r#"{"nested":[1,2,"x"]}"#.into());
        }
        _ => {
            m.insert(
                "listing.timestamp".into(),
                (1_700_000_000_000u64 + i as u64).to_string(),
            );
            for k in 0..(i % 7) {
                m.insert(
                    format!("id.{k}"),
                    format!("s3://bucket/prefix/object-{i}-{k}.csv"),
                );
            }
        }
    }
    m
}

fn binary(m: &BTreeMap<String, String>) -> Vec<u8> {
    let v: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    encode_binary(&v)
}

/// Special components: the largest value `writeUTF` takes, and a state near 1 MB.
fn specials() -> Vec<(String, BTreeMap<String, String>)> {
    let mut big = BTreeMap::new();
    big.insert("max".into(), "x".repeat(65535));
    let mut near = BTreeMap::new();
    for e in 0..15 {
        near.insert(
            format!("e{e:02}"),
            char::from(b'a' + e as u8).to_string().repeat(65535),
        );
    }
    vec![("big-65535".into(), big), ("near-1mb".into(), near)]
}

/// `k` = "a\0😀" in modified UTF-8, written by hand: NUL as C0 80, U+1F600 as the
/// surrogates D83D DE00 in three bytes each.
const RAW_MUTF8: &[u8] = &[
    1, 0, 0, 0, 1, 1, 0, 1, b'k', 1, 0, 9, b'a', 0xC0, 0x80, 0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80,
];

fn id(i: usize) -> String {
    format!("0000-{i:05}-uuid")
}

/// Writes every component under `root` as NiFi does (parents with no data, open ACL).
async fn seed_zk(zk: &ZkServer, root: &str) -> BTreeMap<String, Vec<u8>> {
    let c = zk_client(&zk.addr()).await;
    c.mkdir(&format!("{root}/components"), &persistent())
        .await
        .unwrap();
    let mut all: BTreeMap<String, Vec<u8>> = (0..COMPONENTS)
        .map(|i| (id(i), binary(&state_for(i))))
        .collect();
    for (name, m) in specials() {
        all.insert(name, binary(&m));
    }
    all.insert("raw-mutf8".into(), RAW_MUTF8.to_vec());
    let items: Vec<(String, Vec<u8>)> = all.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for chunk in items.chunks(200) {
        let mut set = tokio::task::JoinSet::new();
        for (k, v) in chunk {
            let (c, path, v) = (c.clone(), format!("{root}/components/{k}"), v.clone());
            set.spawn(async move { c.create(&path, &v, &persistent()).await.map(|_| ()) });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
    }
    // A component NiFi replaced twice: znode version 2.
    let p = format!("{root}/components/{}", id(3));
    c.set_data(&p, &all[&id(3)], None).await.unwrap();
    c.set_data(&p, &all[&id(3)], None).await.unwrap();
    all
}

async fn zk_tree(zk: &ZkServer, root: &str) -> BTreeMap<String, Vec<u8>> {
    let c = zk_client(&zk.addr()).await;
    let dir = format!("{root}/components");
    let mut out = BTreeMap::new();
    let children = match c.list_children(&dir).await {
        Ok(v) => v,
        Err(zkc::Error::NoNode) => return out,
        Err(e) => panic!("{e}"),
    };
    for ch in children {
        let (d, _) = c.get_data(&format!("{dir}/{ch}")).await.unwrap();
        out.insert(ch, d);
    }
    out
}

async fn run(from: &str, to: &str, f: impl FnOnce(&mut Options)) -> Outcome {
    let mut o = Options {
        from: Endpoint::parse(from).unwrap(),
        to: Endpoint::parse(to).unwrap(),
        map: identity(),
        dry_run: false,
        force: false,
        verify_only: false,
        timeout: Duration::from_secs(10),
    };
    f(&mut o);
    tokio::time::timeout(Duration::from_secs(300), offline::run(o))
        .await
        .expect("migrate finished")
}

fn rate(o: &Outcome) -> f64 {
    o.report["components_per_second"].as_f64().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_to_redis_and_back_is_exact() {
    let _g = SERIAL.lock().await;
    let zk = ZkServer::standalone().await;
    let redis = RedisServer::start();
    let original = seed_zk(&zk, "/nifi").await;
    let zk_url = format!("zk://{}/nifi", zk.addr());
    let redis_url = format!("redis://{}", redis.addr());

    let o = run(&zk_url, &redis_url, |_| {}).await;
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(
        o.report["copy"]["components"],
        original.len() as u64,
        "{}",
        o.text
    );
    assert_eq!(o.report["total_differences"], 0);
    eprintln!(
        "MEASURED zk->redis: {} components in {:.3} s = {:.0} components/s",
        original.len(),
        o.report["seconds"],
        rate(&o)
    );

    // What NiFi's RedisStateProvider reads: Jackson's JSON, the znode version as version.
    let mut r = redis.conn().await;
    let keys: Vec<String> = r.keys("nifi/components/*").await.unwrap();
    assert_eq!(keys.len(), original.len());
    let get = |k: String| {
        let mut r = r.clone();
        async move {
            r.get::<_, Vec<u8>>(format!("nifi/components/{k}"))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        get(id(0)).await,
        br#"{"version":0,"encodingVersion":1,"stateValues":{}}"#
    );
    assert_eq!(
        String::from_utf8(get("raw-mutf8".into()).await).unwrap(),
        "{\"version\":0,\"encodingVersion\":1,\"stateValues\":{\"k\":\"a\\u0000😀\"}}"
    );
    let v3: serde_json::Value = serde_json::from_slice(&get(id(3)).await).unwrap();
    assert_eq!(
        v3["version"], 2,
        "the znode version becomes the JSON version"
    );
    let v2 = String::from_utf8(get(id(2)).await).unwrap();
    assert!(
        v2.contains(r#""quoted":"a \"quoted\"\nline\r\n\ttab \\ back /slash \u0001 "#),
        "{v2}"
    );
    let v1: serde_json::Value = serde_json::from_slice(&get(id(1)).await).unwrap();
    assert_eq!(v1["stateValues"]["emoji"], "😀 \u{1F680} 𝄞");
    assert_eq!(v1["stateValues"]["key\u{0}with nul"], "");

    // Back into ZooKeeper under another root: byte for byte what was there.
    let back_url = format!("zk://{}/back", zk.addr());
    let o = run(&redis_url, &back_url, |_| {}).await;
    assert_eq!(o.code, 0, "{}", o.text);
    eprintln!(
        "MEASURED redis->zk: {} components in {:.3} s = {:.0} components/s",
        original.len(),
        o.report["seconds"],
        rate(&o)
    );
    let back = zk_tree(&zk, "/back").await;
    assert_eq!(back.len(), original.len());
    for (k, v) in &original {
        assert_eq!(
            back.get(k),
            Some(v),
            "component {k} differs after the round trip"
        );
    }
    // ZooKeeper → ZooKeeper with another root, then verify only.
    let o = run(&zk_url, &format!("zk://{}/third", zk.addr()), |_| {}).await;
    assert_eq!(o.code, 0, "{}", o.text);
    let o = run(&zk_url, &back_url, |o| o.verify_only = true).await;
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(o.report["verify"]["equal"], original.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_without_force_and_dry_run_writes_nothing() {
    let _g = SERIAL.lock().await;
    let src = RedisServer::start();
    let dst = RedisServer::start();
    let mut s = src.conn().await;
    for i in 0..50 {
        let json = serde_json::json!({"version": i, "encodingVersion": 1, "stateValues": {"n": i.to_string()}});
        let _: () = s
            .set(format!("nifi/components/c{i}"), json.to_string())
            .await
            .unwrap();
    }
    let _: () = s.set("not/nifi", "x").await.unwrap();
    let mut d = dst.conn().await;
    let _: () = d.set("other/prefix/c1", "kept").await.unwrap();
    let from = format!("redis://{}", src.addr());
    let to = format!("redis://{}?prefix=nifi2/components", dst.addr());

    // A bad URL is a usage error (64), named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(["migrate", "--from", "http://x:1", "--to", &to])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));

    // --dry-run: lists, writes nothing. Through the binary, as an operator runs it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args([
            "migrate",
            "--from",
            &from,
            "--to",
            &to,
            "--dry-run",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["components"], 50);
    assert_eq!(rep["entries"], 50);
    assert_eq!(rep["per_component"].as_array().unwrap().len(), 50);
    let n: usize = redis::cmd("DBSIZE").query_async(&mut d).await.unwrap();
    assert_eq!(n, 1, "dry run wrote nothing");

    let o = run(&from, &to, |_| {}).await;
    assert_eq!(o.code, 0, "{}", o.text);
    let j: String = d.get("nifi2/components/c7").await.unwrap();
    assert_eq!(
        j, r#"{"version":7,"encodingVersion":1,"stateValues":{"n":"7"}}"#,
        "Redis → Redis keeps versions"
    );

    // Now the destination holds NiFi state: refused, nothing written.
    let _: () = s
        .set(
            "nifi/components/c0",
            r#"{"version":9,"encodingVersion":1,"stateValues":{"n":"changed"}}"#,
        )
        .await
        .unwrap();
    let _: () = d
        .set(
            "nifi2/components/only-here",
            r#"{"version":1,"encodingVersion":1,"stateValues":{}}"#,
        )
        .await
        .unwrap();
    let o = run(&from, &to, |_| {}).await;
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(
        o.text.contains("already holds NiFi state") && o.text.contains("--force"),
        "{}",
        o.text
    );
    let j: String = d.get("nifi2/components/c0").await.unwrap();
    assert!(j.contains("\"0\""), "refused copy wrote nothing: {j}");
    // The binary exits non-zero too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(["migrate", "--from", &from, "--to", &to])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --force replaces the destination's NiFi state exactly; other keys stay.
    let o = run(&from, &to, |o| o.force = true).await;
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(o.report["copy"]["deleted"], 1, "{}", o.text);
    let j: String = d.get("nifi2/components/c0").await.unwrap();
    assert!(j.contains("changed"));
    let gone: Option<String> = d.get("nifi2/components/only-here").await.unwrap();
    assert_eq!(gone, None);
    let kept: String = d.get("other/prefix/c1").await.unwrap();
    assert_eq!(kept, "kept");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(["migrate", "verify", "--from", &from, "--to", &to])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_zookeeper_cannot_hold_is_reported_not_truncated() {
    let _g = SERIAL.lock().await;
    let src = RedisServer::start();
    let zk = ZkServer::standalone().await;
    let mut s = src.conn().await;
    let too_long = "y".repeat(65536);
    let wide = "€".repeat(21846); // 65538 bytes in modified UTF-8
    let bad = serde_json::json!({"version": 3, "encodingVersion": 1,
        "stateValues": {"fine": "1", "too.long": too_long, "wide": wide}});
    let _: () = s.set("nifi/components/bad", bad.to_string()).await.unwrap();
    let ok = serde_json::json!({"version": 1, "encodingVersion": 1, "stateValues": {"max": "z".repeat(65535)}});
    let _: () = s.set("nifi/components/ok", ok.to_string()).await.unwrap();
    let o = run(
        &format!("redis://{}", src.addr()),
        &format!("zk://{}/nifi", zk.addr()),
        |_| {},
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.text);
    assert_eq!(o.report["copy"]["failed"], 1, "{}", o.text);
    let err = o.report["copy"]["errors"][0].as_str().unwrap();
    assert!(
        err.starts_with("bad:")
            && err.contains("\"too.long\" (value 65536 bytes)")
            && err.contains("\"wide\" (value 65538 bytes)"),
        "{err}"
    );
    assert!(!err.contains("\"fine\""), "{err}");
    assert_eq!(
        o.report["verify"]["missing_on_destination"], 1,
        "{}",
        o.text
    );
    let tree = zk_tree(&zk, "/nifi").await;
    assert_eq!(
        tree.keys().collect::<Vec<_>>(),
        ["ok"],
        "the bad component is not written at all"
    );
    assert_eq!(tree["ok"].len(), 5 + 1 + 2 + 3 + 1 + 2 + 65535);
}

/// Rates for the README and the closing note: `cargo test --release --test migrate
/// measure_rates -- --ignored --nocapture` (MIGRATE_MEASURE_N components, default 5000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_rates() {
    let _g = SERIAL.lock().await;
    let n: usize = std::env::var("MIGRATE_MEASURE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let zk = ZkServer::standalone().await;
    let redis = RedisServer::start();
    let c = zk_client(&zk.addr()).await;
    c.mkdir("/nifi/components", &persistent()).await.unwrap();
    let items: Vec<(String, Vec<u8>)> = (0..n).map(|i| (id(i), binary(&state_for(i)))).collect();
    for chunk in items.chunks(500) {
        let mut set = tokio::task::JoinSet::new();
        for (k, v) in chunk {
            let (c, path, v) = (c.clone(), format!("/nifi/components/{k}"), v.clone());
            set.spawn(async move { c.create(&path, &v, &persistent()).await.map(|_| ()) });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
    }
    let zk_url = format!("zk://{}/nifi", zk.addr());
    let redis_url = format!("redis://{}", redis.addr());
    let o = run(&zk_url, &redis_url, |_| {}).await;
    assert_eq!(o.code, 0, "{}", o.text);
    eprintln!(
        "MEASURED zk->redis: {n} components, {} entries, {} bytes in {:.3} s = {:.0} components/s",
        o.report["copy"]["entries"],
        o.report["copy"]["bytes"],
        o.report["seconds"],
        rate(&o)
    );
    let o = run(&redis_url, &format!("zk://{}/back", zk.addr()), |_| {}).await;
    assert_eq!(o.code, 0, "{}", o.text);
    eprintln!(
        "MEASURED redis->zk: {n} components in {:.3} s = {:.0} components/s",
        o.report["seconds"],
        rate(&o)
    );
    let o = run(&zk_url, &format!("redis://{}/1", redis.addr()), |_| {}).await;
    eprintln!(
        "MEASURED zk->redis (second run): {:.0} components/s",
        rate(&o)
    );
    let t = std::time::Instant::now();
    let o = run(&zk_url, &redis_url, |o| o.verify_only = true).await;
    assert_eq!(o.code, 0, "{}", o.text);
    eprintln!(
        "MEASURED verify zk<->redis: {n} components in {:.3} s",
        t.elapsed().as_secs_f64()
    );
}

/// `--identity`: region 1's component ids are written under region 2's (the map made by
/// `statemirror identity set`), the others keep theirs, and verify compares through the map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_map_renames_components_on_the_way() {
    let _g = SERIAL.lock().await;
    let src = RedisServer::start();
    let dst = ZkServer::standalone().await;
    let mut s = src.conn().await;
    for id in ["r1-lister", "r1-fetcher", "unmapped"] {
        let json = format!(r#"{{"version":3,"encodingVersion":1,"stateValues":{{"of":"{id}"}}}}"#);
        let _: () = s.set(format!("nifi/components/{id}"), json).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("identity.toml");
    let bin = env!("CARGO_BIN_EXE_statemirror");
    for (from, to) in [("r1-lister", "r2-lister"), ("r1-fetcher", "r2-fetcher")] {
        let out = std::process::Command::new(bin)
            .args(["identity", "set", from, to, "--file"])
            .arg(&map)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let from = format!("redis://{}", src.addr());
    let to = format!("zk://{}/nifi", dst.addr());
    let migrate = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin);
        c.args(["migrate", "--from", &from, "--to", &to, "--identity"])
            .arg(&map)
            .args(extra);
        c.output().unwrap()
    };
    let out = migrate(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let z = zk_client(&dst.addr()).await;
    let mut children = z.list_children("/nifi/components").await.unwrap();
    children.sort();
    assert_eq!(children, ["r2-fetcher", "r2-lister", "unmapped"]);
    let (data, _) = z.get_data("/nifi/components/r2-lister").await.unwrap();
    assert_eq!(data, encode_binary(&[("of", "r1-lister")]));
    // Verify through the map: equal; without it, the renamed components differ.
    let out = migrate(&["--verify-only"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = std::process::Command::new(bin)
        .args(["migrate", "verify", "--from", &from, "--to", &to])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "without the map the ids differ");
}
