//! Issue 10 part 3: `statemirror backup`, `backup --list` and `restore`, run as the real
//! binary against real redis-server / ZooKeeper processes.
//!
//! 1. Redis: a live NiFi-style workload through a proxy, cluster freeze, backup from the
//!    leader, restore into an empty fresh redis-server: every key equal (DUMP + expiry);
//!    `--list` names the components and shows a state value.
//! 2. ZooKeeper: the same with NiFi's `/nifi/components/<id>` layout, an ACL other than the
//!    open one, a sequential node and a live ephemeral (not backed up); trees and ACLs equal.
//! 3. Refusals: backup while not frozen (allowed with `--allow-live`, with a warning),
//!    without `[cluster]` and no sidecar; a frozen sidecar without `[cluster]` is accepted.
//!    Restore into a non-empty destination refused without `--force`; with it the
//!    destination ends exactly equal (an extra key deleted).
//! 4. A corrupted file (one byte flipped, truncated) is refused by `restore` and `--list`,
//!    naming what is wrong, and nothing is written.
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::workload::Workload;
use common::zk::{compare_trees, persistent, zk_client, zkc, ZkProxy, ZkServer};
use common::zk_workload::ZkWorkload;
use common::*;
use redis::AsyncCommands;
use serde_json::Value;
use statemirror::config::ClusterConfig;
use statemirror::nifi::encode_binary;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_statemirror")
}

/// Runs the binary (off the async runtime, killed after 60 s).
async fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn statemirror");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("try_wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("statemirror {args:?} did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    })
    .await
    .expect("runner thread")
}

/// Runs `statemirror args` and checks its exit code (the message shows what it printed).
async fn run_expect(args: &[&str], code: i32) -> Output {
    let o = run(args).await;
    assert_eq!(
        o.status.code(),
        Some(code),
        "statemirror {}: {} {}",
        args.join(" "),
        out(&o),
        err(&o)
    );
    o
}

/// `statemirror backup --config cfg --out file extra…`, expecting exit `code`.
async fn backup(cfg: &str, file: &str, extra: &[&str], code: i32) -> Output {
    let args = [&["backup", "--config", cfg, "--out", file], extra].concat();
    run_expect(&args, code).await
}

/// `statemirror restore --config cfg --in file extra…`, expecting exit `code`.
async fn restore(cfg: &str, file: &str, extra: &[&str], code: i32) -> Output {
    let args = [&["restore", "--config", cfg, "--in", file], extra].concat();
    run_expect(&args, code).await
}

/// The JSON report a command printed.
fn report(o: &Output) -> Value {
    serde_json::from_str(&out(o)).unwrap_or_else(|e| panic!("JSON report ({e}): {}", out(o)))
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A config file for the CLI. `admin`: the admin address it names (a dead port, or a
/// running sidecar's). `cluster`: with a `[cluster]` section.
fn config(section: &str, admin: &str, cluster: bool) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp");
    let cluster = if cluster {
        "[cluster]\nnode_name = \"backup-cli\"\n"
    } else {
        ""
    };
    let text =
        format!("[admin]\nlisten = \"{admin}\"\n[log]\nlevel = \"warn\"\n{section}{cluster}");
    std::fs::write(f.path(), text).expect("write config");
    f
}

fn redis_section(leader: &str) -> String {
    format!(
        "[redis]\nlisten = \"127.0.0.1:{}\"\nleader = \"{leader}\"\nconnect_timeout_ms = 1000\n",
        free_port()
    )
}

fn zk_section(leader: &str) -> String {
    format!(
        "[zookeeper]\nlisten = \"127.0.0.1:{}\"\nleader = \"{leader}\"\nconnect_timeout_ms = 1000\n",
        free_port()
    )
}

fn dead_admin() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn with_cluster(cfg: &mut statemirror::config::Config) {
    cfg.cluster = Some(ClusterConfig {
        converge: true,
        node_name: Some("b1".into()),
        member_ttl_ms: 3000,
    });
}

/// A cluster-wide freeze through the sidecar's admin API (proven: 200).
async fn freeze(admin: &str) {
    let (code, body) = statemirror::admin::client::request(
        admin,
        hyper::Method::PUT,
        "/cluster/maintenance",
        statemirror::admin::client::discover_token(admin).as_deref(),
        Duration::from_secs(20),
    )
    .await
    .expect("admin API");
    assert_eq!(code, 200, "cluster freeze: {body}");
}

/// Every key of every database except statemirror's own: `(db, key) -> (DUMP, PEXPIRETIME)`.
async fn snapshot(url: &str) -> std::collections::BTreeMap<(u32, Vec<u8>), (Vec<u8>, i64)> {
    let mut m = std::collections::BTreeMap::new();
    for db in 0..16u32 {
        let mut c = client(&format!("{url}/{db}")).await;
        let keys: Vec<Vec<u8>> = c.keys("*").await.expect("KEYS");
        for k in keys {
            if statemirror::redis::cluster::is_own_key(&k) {
                continue;
            }
            let dump: Vec<u8> = redis::cmd("DUMP")
                .arg(&k)
                .query_async(&mut c)
                .await
                .expect("DUMP");
            let at: i64 = redis::cmd("PEXPIRETIME")
                .arg(&k)
                .query_async(&mut c)
                .await
                .expect("PEXPIRETIME");
            m.insert((db, k), (dump, at));
        }
    }
    m
}

/// Both servers hold the same keys (statemirror's own aside) with equal DUMP payloads and
/// expiry times; the number of keys.
async fn assert_same_keys(a: &RedisServer, b: &RedisServer) -> usize {
    let (sa, sb) = (snapshot(&a.url()).await, snapshot(&b.url()).await);
    let only_a: Vec<_> = sa.keys().filter(|k| !sb.contains_key(*k)).take(5).collect();
    let only_b: Vec<_> = sb.keys().filter(|k| !sa.contains_key(*k)).take(5).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "keys differ: only on source {only_a:?}, only on restored {only_b:?}"
    );
    for (k, v) in &sa {
        assert_eq!(Some(v), sb.get(k), "key {k:?} differs");
    }
    sa.len()
}

const NIFI_STATE: &str = r#"{"version":3,"encodingVersion":1,"stateValues":{"id.0":"s3://bucket/key","listing.timestamp":"1700000000000"}}"#;

/// Writes a NiFi-style workload and some fixed keys through `url`; returns after the
/// workload stopped.
async fn redis_workload(url: &str) {
    let w = Workload::start(url, "bk:", 2);
    let mut c = client(url).await;
    let _: () = c
        .set("nifi/components/comp-1", NIFI_STATE)
        .await
        .expect("SET");
    let _: () = c.set_ex("bk:expiring", "soon", 600).await.expect("SETEX");
    let _: () = c.set(&b"bk:bin\xff\x00"[..], "raw").await.expect("SET bin");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (ok, _) = w.stop().await;
    assert!(ok > 20, "the workload made progress ({ok} ops)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backup_of_a_frozen_cluster_restores_exactly() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), with_cluster).await;
    redis_workload(&proxy.url()).await;
    freeze(&proxy.admin()).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state.smbackup");
    let cfg = config(&redis_section(&leader.url()), &dead_admin(), true);
    let o = backup(p(cfg.path()), p(&file), &["--from", "leader"], 0).await;
    let rep: Value = report(&o);
    assert!(rep["records"].as_u64().unwrap_or(0) > 10, "{rep}");
    assert!(rep["nifi_components"].as_u64().unwrap_or(0) >= 2, "{rep}");
    assert_eq!(rep["frozen"], true);
    // No partial file left next to it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // Restore into an empty fresh server.
    let fresh = RedisServer::start();
    let rcfg = config(&redis_section(&fresh.url()), &dead_admin(), false);
    let o = restore(p(rcfg.path()), p(&file), &["--to", "leader"], 0).await;
    let r: Value = report(&o);
    assert_eq!(r["differences"], 0, "{r}");
    assert_eq!(r["deleted"], 0, "{r}");
    assert_eq!(r["restored"], rep["records"], "{r}");
    let n = assert_same_keys(&leader, &fresh).await;
    assert_eq!(n as u64, rep["records"].as_u64().unwrap_or(0));

    // --list: header, the components with their state, other keys.
    let o = run_expect(&["backup", "--list", p(&file)], 0).await;
    let list = out(&o);
    for want in [
        "protocol:  redis",
        "source:    leader",
        "(verified)",
        "comp-1",
        "listing.timestamp = 1700000000000",
        "id.0 = s3://bucket/key",
        "bk:c0",
        "bk:expiring",
        "Other keys",
    ] {
        assert!(list.contains(want), "--list lacks {want:?}:\n{list}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_backup_of_a_frozen_cluster_restores_exactly() {
    let leader = ZkServer::standalone().await;
    let proxy = ZkProxy::start_with(&leader.addr(), None, with_cluster).await;
    let w = ZkWorkload::start(&proxy.connect_string(), "bkz", 2);
    let c = proxy.client().await;
    let _ = c.create("/nifi", b"", &persistent()).await;
    let _ = c.create("/nifi/components", b"", &persistent()).await;
    let state = encode_binary(&[("listing.timestamp", "1700000000000"), ("id.0", "s3://b/k")]);
    c.create("/nifi/components/comp-z1", &state, &persistent())
        .await
        .expect("create component");
    // An ACL other than the open one (this session, from 127.0.0.1, keeps ADMIN on it).
    let acl = [
        zkc::Acl::new(zkc::Permission::ALL, zkc::AuthId::new("ip", "127.0.0.1")),
        zkc::Acl::new(
            zkc::Permission::READ,
            zkc::AuthId::new("digest", "nifi:Dd7fm4vJn+uJKmS0bFM2Z6/1qf8="),
        ),
    ];
    let opts = zkc::CreateMode::Persistent.with_acls(zkc::Acls::new(&acl));
    c.create("/restricted", b"secret-ish", &opts)
        .await
        .expect("create restricted");
    let seq = zkc::CreateMode::PersistentSequential.with_acls(zkc::Acls::anyone_all());
    c.create("/restricted/job-", b"s", &seq)
        .await
        .expect("sequential");
    // A live ephemeral (an election node): not backed up.
    let owner = zk_client(&leader.addr()).await;
    owner
        .create("/eph", b"me", &common::zk::ephemeral())
        .await
        .expect("ephemeral");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (ok, _) = w.stop().await;
    assert!(ok > 10, "the workload made progress ({ok} ops)");
    freeze(&proxy.admin()).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("zk.smbackup");
    let cfg = config(&zk_section(&leader.addr()), &dead_admin(), true);
    let o = run_expect(&["backup", "--config", p(cfg.path()), "--out", p(&file)], 0).await;
    let rep: Value = report(&o);
    assert_eq!(rep["skipped"]["ephemeral"], 1, "{rep}");
    assert!(rep["nifi_components"].as_u64().unwrap_or(0) >= 2, "{rep}");

    let fresh = ZkServer::standalone().await;
    let rcfg = config(&zk_section(&fresh.addr()), &dead_admin(), false);
    let o = restore(p(rcfg.path()), p(&file), &["--to", "leader"], 0).await;
    let r: Value = report(&o);
    assert_eq!(r["differences"], 0, "{r}");
    // Same persistent nodes, data and ACLs (ephemerals are compared by neither side).
    let n = compare_trees(&leader.addr(), &fresh.addr())
        .await
        .unwrap_or_else(|e| panic!("restored tree differs: {e}"));
    assert!(
        n as u64 >= rep["records"].as_u64().unwrap_or(0),
        "{n} {rep}"
    );
    let restored = common::zk::tree_full(&fresh.addr()).await;
    assert!(!restored.contains_key("/eph"), "an ephemeral was restored");
    assert_eq!(
        restored["/restricted"].acl,
        [
            "digest:nifi:Dd7fm4vJn+uJKmS0bFM2Z6/1qf8=:READ",
            "ip:127.0.0.1:ALL"
        ],
    );

    let o = run_expect(&["backup", "--list", p(&file)], 0).await;
    let list = out(&o);
    for want in [
        "protocol:  zookeeper",
        "comp-z1",
        "listing.timestamp = 1700000000000",
        "bkzc0",
        "/restricted",
        "1 ephemeral",
    ] {
        assert!(list.contains(want), "--list lacks {want:?}:\n{list}");
    }

    // The restored ensemble changed (an extra subtree, other data, another ACL): a restore
    // is refused without --force; with it the tree is the backup's again.
    let f = zk_client(&fresh.addr()).await;
    f.create("/extra", b"x", &persistent())
        .await
        .expect("extra");
    f.create("/extra/child", b"y", &persistent())
        .await
        .expect("extra child");
    f.set_data("/nifi/components/comp-z1", b"changed", None)
        .await
        .expect("set_data");
    f.set_acl(
        "/restricted",
        &[zkc::Acl::new(zkc::Permission::ALL, zkc::AuthId::anyone())],
        None,
    )
    .await
    .expect("set_acl");
    let o = restore(p(rcfg.path()), p(&file), &["--to", "leader"], 1).await;
    assert!(err(&o).contains("not empty"), "{}", err(&o));
    assert!(compare_trees(&leader.addr(), &fresh.addr()).await.is_err());
    let o = restore(p(rcfg.path()), p(&file), &["--to", "leader", "--force"], 0).await;
    let r: Value = report(&o);
    assert_eq!(
        (r["deleted"].clone(), r["differences"].clone()),
        (2.into(), 0.into()),
        "{r}"
    );
    compare_trees(&leader.addr(), &fresh.addr())
        .await
        .unwrap_or_else(|e| panic!("after --force the tree differs: {e}"));
    drop(owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_needs_a_freeze_and_restore_needs_force_for_a_non_empty_destination() {
    let leader = RedisServer::start();
    let proxy = Proxy::start_with(&leader, None, with_cluster).await;
    let mut c = proxy.conn().await;
    for i in 0..20 {
        let _: () = c.set(format!("k{i}"), i).await.expect("SET");
    }
    let _: () = c.set("nifi/components/c9", NIFI_STATE).await.expect("SET");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("b.smbackup");
    let cfg = config(&redis_section(&leader.url()), &dead_admin(), true);

    // Not frozen: refused, and no file appears.
    let o = backup(p(cfg.path()), p(&file), &[], 1).await;
    assert!(
        err(&o).contains("not frozen") && err(&o).contains("--allow-live"),
        "{}",
        err(&o)
    );
    assert!(!file.exists());
    // --allow-live: done, with a warning.
    let o = backup(p(cfg.path()), p(&file), &["--allow-live"], 0).await;
    assert!(err(&o).contains("warning"), "{}", err(&o));
    let listed = run(&["backup", "--list", p(&file)]).await;
    assert!(
        out(&listed).contains("NO (--allow-live)"),
        "{}",
        out(&listed)
    );

    // Without [cluster]: the config's sidecar decides; none answering is a refusal.
    let lone = config(&redis_section(&leader.url()), &dead_admin(), false);
    let o = run_expect(
        &["backup", "--config", p(lone.path()), "--out", p(&file)],
        1,
    )
    .await;
    assert!(err(&o).contains("no sidecar answered"), "{}", err(&o));
    let admin = proxy.app.admin_addr.to_string();
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    let frozen_sidecar = config(&redis_section(&leader.url()), &admin, false);
    let o = backup(p(frozen_sidecar.path()), p(&file), &[], 0).await;
    assert!(!err(&o).contains("warning"), "{}", err(&o));

    // A destination holding a key: refused without --force, and left alone.
    let dest = RedisServer::start();
    let mut d = client(&dest.url()).await;
    let _: () = d.set("extra", "x").await.expect("SET");
    let _: () = d.set("k1", "old").await.expect("SET");
    let rcfg = config(&redis_section(&dest.url()), &dead_admin(), false);
    let o = restore(p(rcfg.path()), p(&file), &["--to", "leader"], 1).await;
    assert!(
        err(&o).contains("not empty") && err(&o).contains("--force"),
        "{}",
        err(&o)
    );
    let n: usize = redis::cmd("DBSIZE")
        .query_async(&mut d)
        .await
        .expect("DBSIZE");
    assert_eq!(n, 2, "a refused restore wrote nothing");
    // --force: exactly the backup (the extra key deleted, k1 replaced).
    let o = restore(p(rcfg.path()), p(&file), &["--to", "leader", "--force"], 0).await;
    let r: Value = report(&o);
    assert_eq!(
        (r["deleted"].clone(), r["differences"].clone()),
        (1.into(), 0.into()),
        "{r}"
    );
    let gone: bool = d.exists("extra").await.expect("EXISTS");
    assert!(!gone);
    assert_eq!(assert_same_keys(&leader, &dest).await, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_backup_is_refused_by_restore_and_list() {
    let leader = RedisServer::start();
    let mut c = client(&leader.url()).await;
    for i in 0..10 {
        let _: () = c
            .set(format!("k{i}"), format!("value-{i}"))
            .await
            .expect("SET");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("good.smbackup");
    let cfg = config(&redis_section(&leader.url()), &dead_admin(), false);
    backup(p(cfg.path()), p(&file), &["--allow-live"], 0).await;
    let good = std::fs::read(&file).expect("read");

    let dest = RedisServer::start();
    let rcfg = config(&redis_section(&dest.url()), &dead_admin(), false);
    let mut flipped = good.clone();
    let i = good.len() / 2;
    flipped[i] ^= 0x20;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("flipped", flipped, "checksum mismatch"),
        ("cut", good[..good.len() - 40].to_vec(), "truncated"),
        (
            "no-trailer",
            {
                let body_end = good[..good.len() - 1]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .expect("lines")
                    + 1;
                good[..body_end].to_vec()
            },
            "truncated",
        ),
    ];
    for (name, bytes, why) in cases {
        let bad = dir.path().join(format!("{name}.smbackup"));
        std::fs::write(&bad, &bytes).expect("write");
        let o = run_expect(&["backup", "--list", p(&bad)], 1).await;
        assert!(err(&o).contains(why), "{name}: list: {}", err(&o));
        assert!(out(&o).is_empty(), "{name}: nothing listed");
        let o = restore(p(rcfg.path()), p(&bad), &["--to", "leader"], 1).await;
        assert!(err(&o).contains(why), "{name}: restore: {}", err(&o));
    }
    let mut d = client(&dest.url()).await;
    let n: usize = redis::cmd("DBSIZE")
        .query_async(&mut d)
        .await
        .expect("DBSIZE");
    assert_eq!(n, 0, "nothing restored from a corrupted file");
    // The intact file restores.
    restore(p(rcfg.path()), p(&file), &["--to", "leader"], 0).await;
    assert_eq!(assert_same_keys(&leader, &dest).await, 10);
}
