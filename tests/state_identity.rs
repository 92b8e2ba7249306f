//! NiFi state identity across regions, against real Redis and ZooKeeper servers: two flow
//! definitions of the same versioned flow with different instance UUIDs (as NiFi writes
//! them), the map built by `statemirror identity build`, NiFi-style writes through the
//! sidecar in region 1 under region 1's UUIDs, and region 2's NiFi (its own UUIDs, pointed
//! at the follower) finding every entry. Resync after a follower wipe, `/verify`, a
//! failed-over read, the CLI's refusals and the multi-instance case too.
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use common::zk::{zk_client, RawZk, ZkProxy, ZkServer};
use common::{assert_verify_zero, eventually, Proxy, RedisServer};
use redis::AsyncCommands;
use serde_json::{json, Value};
use statemirror::zookeeper::proto::{op, GetDataRequest, GetDataResponse, Record};

/// (name, group path, versioned id, region 1 UUID, region 2 UUID, kind).
const COMPONENTS: [(&str, &[&str], &str, &str, &str); 4] = [
    (
        "GenerateFlowFile",
        &[],
        "5d6f1a2b-0000-3000-8000-000000000001",
        "0b8c1a52-0190-1000-ffff-ffffd2a4b3c1",
        "7f3e2d10-0191-1000-aaaa-aaaa12345601",
    ),
    (
        "ListS3",
        &["Ingest"],
        "5d6f1a2b-0000-3000-8000-000000000002",
        "0b8c1a52-0190-1000-ffff-ffffd2a4b3c2",
        "7f3e2d10-0191-1000-aaaa-aaaa12345602",
    ),
    (
        "ListSFTP",
        &["Ingest", "Deep"],
        "5d6f1a2b-0000-3000-8000-000000000003",
        "0b8c1a52-0190-1000-ffff-ffffd2a4b3c3",
        "7f3e2d10-0191-1000-aaaa-aaaa12345603",
    ),
    (
        "MapCacheClientService",
        &["Ingest"],
        "5d6f1a2b-0000-3000-8000-000000000004",
        "0b8c1a52-0190-1000-ffff-ffffd2a4b3c4",
        "7f3e2d10-0191-1000-aaaa-aaaa12345604",
    ),
];

fn component(c: &(&str, &[&str], &str, &str, &str), region: usize) -> Value {
    json!({
        "identifier": c.2,
        "instanceIdentifier": if region == 1 { c.3 } else { c.4 },
        "name": c.0,
        "type": format!("org.apache.nifi.processors.{}", c.0),
        "properties": {},
    })
}

/// The root group of one region, shaped like NiFi's `VersionedProcessGroup`.
fn root_group(region: usize) -> Value {
    let group = |name: &str, vid: &str| {
        json!({"identifier": vid, "instanceIdentifier": format!("{region}-{vid}"), "name": name,
               "processors": [], "controllerServices": [], "processGroups": [],
               "connections": [], "inputPorts": [], "outputPorts": []})
    };
    let mut root = group("NiFi Flow", "root");
    let mut ingest = group("Ingest", "g-ingest");
    let mut deep = group("Deep", "g-deep");
    root["processors"] = json!([component(&COMPONENTS[0], region)]);
    ingest["processors"] = json!([component(&COMPONENTS[1], region)]);
    ingest["controllerServices"] = json!([component(&COMPONENTS[3], region)]);
    deep["processors"] = json!([component(&COMPONENTS[2], region)]);
    ingest["processGroups"] = json!([deep]);
    root["processGroups"] = json!([ingest]);
    root
}

/// Region 1: `flow.json.gz` (gzip); region 2: a process group exported from NiFi (plain).
fn write_flows(dir: &Path) -> (PathBuf, PathBuf) {
    let l = dir.join("flow.json.gz");
    let flow = json!({"encodingVersion": {"majorVersion": 2, "minorVersion": 0},
        "maxTimerDrivenThreadCount": 10, "registries": [], "parameterContexts": [],
        "controllerServices": [], "reportingTasks": [], "rootGroup": root_group(1)});
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(flow.to_string().as_bytes()).unwrap();
    std::fs::write(&l, enc.finish().unwrap()).unwrap();
    let f = dir.join("region2-export.json");
    let export = json!({"flowContents": root_group(2), "externalControllerServices": {},
        "parameterContexts": {}, "flowEncodingVersion": "1.0"});
    std::fs::write(&f, export.to_string()).unwrap();
    (l, f)
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(args)
        .output()
        .expect("run statemirror");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Builds the identity file with the CLI, as the runbook does.
fn build_map(dir: &Path) -> PathBuf {
    let (l, f) = write_flows(dir);
    let file = dir.join("identity.toml");
    let (code, out, err) = cli(&[
        "identity",
        "build",
        "--leader-flow",
        l.to_str().unwrap(),
        "--follower-flow",
        f.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("matched: 4 (4 with another UUID"), "{out}");
    file
}

/// `[cluster]` with the cross-sidecar convergence check on (it compares leader K with the
/// follower's mapped K).
fn cluster(node: &str) -> statemirror::config::ClusterConfig {
    statemirror::config::ClusterConfig {
        node_name: Some(node.into()),
        member_ttl_ms: 3000,
        converge: true,
    }
}

/// The convergence check looked at the writes and found the follower right: a check that
/// compared the follower under the leader's ids would "repair" them there.
async fn assert_converged_without_repair<F, Fut>(status: F, proto: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let c = eventually(Duration::from_secs(20), || async {
        let c = status().await[proto]["converge"].clone();
        let done = c["pending"] == 0 && c["running"] == false;
        if done && c["checked"].as_u64().unwrap_or(0) > 0 {
            Ok(c)
        } else {
            Err(format!("convergence check not done: {c}"))
        }
    })
    .await;
    assert_eq!(c["repaired"], 0, "{c}");
}

/// A key outside NiFi's layout that happens to hold a region 1 UUID.
fn outside_key() -> String {
    format!("app/{}", COMPONENTS[1].3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_region2_finds_region1_state_under_its_own_ids() {
    let dir = tempfile::tempdir().unwrap();
    let file = build_map(dir.path());
    let mut leader = RedisServer::start();
    let follower = RedisServer::start();
    let f2 = file.clone();
    let proxy = Proxy::start_with(&leader, Some(&follower), move |c| {
        c.identity.file = Some(f2);
        c.cluster = Some(cluster("identity-redis"));
    })
    .await;

    // Region 1's NiFi: RedisStateProvider replaces under its own UUIDs, through the sidecar.
    let mut c = proxy.conn().await;
    for i in 0..3u64 {
        for (t, comp) in COMPONENTS.iter().enumerate() {
            common::workload::nifi_replace(&mut c, &format!("nifi/components/{}", comp.3), t, i)
                .await
                .unwrap();
        }
    }
    let unmapped = "nifi/components/11111111-2222-3333-4444-555555555555";
    common::workload::nifi_replace(&mut c, unmapped, 9, 1)
        .await
        .unwrap();
    let _: () = c.set(outside_key(), "untouched").await.unwrap();
    proxy.drained().await;

    // Region 2's NiFi, pointed at the follower, asks for its own UUIDs.
    let mut f = follower.conn().await;
    for comp in &COMPONENTS {
        let v: Option<String> = f.get(format!("nifi/components/{}", comp.4)).await.unwrap();
        let v: Value =
            serde_json::from_str(&v.unwrap_or_else(|| panic!("{} missing", comp.0))).unwrap();
        assert_eq!(v["stateValues"]["listing.timestamp"], "2", "{v}");
        let old: Option<String> = f.get(format!("nifi/components/{}", comp.3)).await.unwrap();
        assert_eq!(old, None, "nothing under region 1's id on the follower");
    }
    let v: Option<String> = f.get(unmapped).await.unwrap();
    assert!(v.is_some(), "an unmapped component keeps its UUID");
    let v: Option<String> = f.get(outside_key()).await.unwrap();
    assert_eq!(
        v.as_deref(),
        Some("untouched"),
        "keys outside the layout keep their name"
    );
    assert_verify_zero(&proxy.admin(), "redis").await;
    assert_converged_without_repair(|| proxy.status(), "redis").await;

    // `identity list` sees state on both sides.
    let rows = identity_list(dir.path(), "redis", &leader.url(), &follower.url(), &file);
    assert_eq!(rows.as_array().unwrap().len(), 4);
    for r in rows.as_array().unwrap() {
        assert_eq!(r["state_on_leader"]["redis"], true, "{r}");
        assert_eq!(r["state_on_follower"]["redis"], true, "{r}");
    }

    // The follower is wiped, and holds a stale copy under a region 1 id (as mirrored before
    // the map existed): a resync rewrites it under region 2's ids and removes the stale one.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut f).await.unwrap();
    let stale = format!("nifi/components/{}", COMPONENTS[2].3);
    let _: () = f.set(&stale, "{\"version\":0}").await.unwrap();
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert_eq!(code, 202, "{body}");
    eventually(Duration::from_secs(30), || async {
        let s = proxy.status().await;
        let r = &s["redis"];
        let mut fc = follower.conn().await;
        let n: usize = fc
            .exists(format!("nifi/components/{}", COMPONENTS[3].4))
            .await
            .unwrap();
        if r["mirror"]["in_sync"] == true && r["resync"]["running"] == false && n == 1 {
            Ok(())
        } else {
            Err(format!("resync not done: {r}"))
        }
    })
    .await;
    let gone: usize = f.exists(&stale).await.unwrap();
    assert_eq!(gone, 0, "the stale copy under region 1's id is deleted");
    assert_verify_zero(&proxy.admin(), "redis").await;

    // The map changes (GenerateFlowFile re-deployed in region 2 under another id): the
    // sidecar reloads it, and the resync it triggers moves the state to the new id.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace(COMPONENTS[0].4, "generate-flowfile-r2")).unwrap();
    eventually(Duration::from_secs(30), || async {
        let s = proxy.status().await;
        let mut fc = follower.conn().await;
        let new: usize = fc
            .exists("nifi/components/generate-flowfile-r2")
            .await
            .unwrap();
        let old: usize = fc
            .exists(format!("nifi/components/{}", COMPONENTS[0].4))
            .await
            .unwrap();
        let r = &s["redis"];
        if (new, old) == (1, 0) && r["mirror"]["in_sync"] == true && s["identity"]["reloads"] == 1 {
            Ok(())
        } else {
            Err(format!("new {new} old {old}: {s}"))
        }
    })
    .await;
    assert_verify_zero(&proxy.admin(), "redis").await;
    // A file that no longer loads keeps the map in use, and /status says why.
    std::fs::write(&file, "[[component]]\nleader = \"x\"\n").unwrap();
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        let e = s["identity"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (e.contains("not a valid identity file") && s["identity"]["entries"] == 4)
            .then_some(())
            .ok_or(format!("{}", s["identity"]))
    })
    .await;

    // Region 1's leader is lost: its NiFi still asks for its own ids, served by the
    // follower under region 2's.
    tokio::task::block_in_place(|| leader.kill());
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        (s["redis"]["leader"]["up"] == false)
            .then_some(())
            .ok_or(format!("{}", s["redis"]))
    })
    .await;
    let v: String = eventually(Duration::from_secs(10), || async {
        let mut c = common::client(&proxy.url()).await;
        let r: redis::RedisResult<Option<String>> =
            c.get(format!("nifi/components/{}", COMPONENTS[1].3)).await;
        match r {
            Ok(Some(v)) => Ok(v),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(v.contains("\"listing.timestamp\":\"2\""), "{v}");
}

async fn zk_get(raw: &mut RawZk, xid: i32, path: &str) -> (i32, Option<bytes::Bytes>) {
    let mut out = BytesMut::new();
    let req = GetDataRequest {
        path: path.into(),
        watch: false,
    };
    RawZk::request(&mut out, xid, op::GET_DATA, &req);
    raw.write(&out).await;
    let (h, body) = raw.reply().await.expect("getData reply");
    let data = (h.err == 0)
        .then(|| GetDataResponse::from_bytes(&body).expect("body").data)
        .flatten();
    (h.err, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_region2_finds_region1_state_under_its_own_ids() {
    let dir = tempfile::tempdir().unwrap();
    let file = build_map(dir.path());
    let (mut leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let f2 = file.clone();
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), move |c| {
        c.identity.file = Some(f2);
        c.cluster = Some(cluster("identity-zk"));
    })
    .await;

    // Region 1's NiFi: ZooKeeperStateProvider.setState under its own UUIDs.
    let c = proxy.client().await;
    for i in 0..3u64 {
        for comp in &COMPONENTS {
            let data = statemirror::nifi::encode_binary(&[("listing.timestamp", &i.to_string())]);
            common::zk_workload::nifi_set_state(&c, &format!("/nifi/components/{}", comp.3), &data)
                .await
                .unwrap();
        }
    }
    let outside = format!("/app-{}", COMPONENTS[1].3);
    c.create(&outside, b"untouched", &common::zk::persistent())
        .await
        .unwrap();
    proxy.drained().await;

    let f = zk_client(&follower.addr()).await;
    let want = statemirror::nifi::encode_binary(&[("listing.timestamp", "2")]);
    for comp in &COMPONENTS {
        let (data, _) = f
            .get_data(&format!("/nifi/components/{}", comp.4))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", comp.0));
        assert_eq!(data, want);
        assert!(f
            .get_data(&format!("/nifi/components/{}", comp.3))
            .await
            .is_err());
    }
    assert_eq!(f.get_data(&outside).await.unwrap().0, b"untouched");
    assert_verify_zero(&proxy.admin(), "zookeeper").await;
    assert_converged_without_repair(|| proxy.status(), "zookeeper").await;

    // `identity list` looks under <root>/components on both ensembles.
    let rows = identity_list(
        dir.path(),
        "zookeeper",
        &leader.addr(),
        &follower.addr(),
        &file,
    );
    for r in rows.as_array().unwrap() {
        assert_eq!(r["state_on_leader"]["zookeeper"], true, "{r}");
        assert_eq!(r["state_on_follower"]["zookeeper"], true, "{r}");
    }

    // Wipe region 2's component nodes, leave a stale one under a region 1 id: resync.
    for comp in &COMPONENTS {
        f.delete(&format!("/nifi/components/{}", comp.4), None)
            .await
            .unwrap();
    }
    let stale = format!("/nifi/components/{}", COMPONENTS[0].3);
    f.create(&stale, b"old", &common::zk::persistent())
        .await
        .unwrap();
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert_eq!(code, 202, "{body}");
    eventually(Duration::from_secs(30), || async {
        let s = proxy.status().await;
        let r = &s["zookeeper"];
        let there = f
            .get_data(&format!("/nifi/components/{}", COMPONENTS[2].4))
            .await
            .is_ok();
        if r["mirror"]["in_sync"] == true && r["resync"]["running"] == false && there {
            Ok(())
        } else {
            Err(format!("resync not done: {r}"))
        }
    })
    .await;
    assert!(
        f.get_data(&stale).await.is_err(),
        "the stale node is deleted"
    );
    assert_verify_zero(&proxy.admin(), "zookeeper").await;
    drop(c);

    // The leader ensemble is lost: a read-only session asks for region 1's path.
    leader.kill();
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        (s["zookeeper"]["leader"]["up"] == false)
            .then_some(())
            .ok_or(format!("{}", s["zookeeper"]))
    })
    .await;
    let (mut ro, _) = RawZk::handshake(
        proxy.addr(),
        0,
        bytes::Bytes::from(vec![0; 16]),
        0,
        true,
        10_000,
    )
    .await
    .expect("the follower serves the session");
    let (e, data) = zk_get(&mut ro, 1, &format!("/nifi/components/{}", COMPONENTS[1].3)).await;
    assert_eq!((e, data.as_deref()), (0, Some(&want[..])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_duplicates_and_keeps_several_instances_on_their_uuids() {
    let dir = tempfile::tempdir().unwrap();
    let file = build_map(dir.path());
    let f = file.to_str().unwrap();

    // A state id already used by another component: refused, the file unchanged.
    let before = std::fs::read_to_string(&file).unwrap();
    let (code, out, err) = cli(&[
        "identity",
        "set",
        "my-processor-1",
        COMPONENTS[0].4,
        "--file",
        f,
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("already used by component"), "{err}");
    let (code, _, err) = cli(&["identity", "set", "my-processor-1", "a/b", "--file", f]);
    assert_eq!(code, 1);
    assert!(err.contains("does not match the state id pattern"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    // A new one is accepted, and unset removes it.
    let (code, out, err) = cli(&[
        "identity",
        "set",
        "my-processor-1",
        "region2-proc-1",
        "--file",
        f,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(&["identity", "list", "--file", f]);
    assert_eq!(code, 0);
    assert!(
        out.contains("5 entries") && out.contains("my-processor-1 -> region2-proc-1"),
        "{out}"
    );
    let (code, _, err) = cli(&["identity", "unset", "my-processor-1", "--file", f]);
    assert_eq!(code, 0, "{err}");

    // Region 2 imported the versioned flow's Ingest group twice: its components get a
    // warning and no entry; the others are still mapped.
    let (l, _) = write_flows(dir.path());
    let mut root = root_group(2);
    let mut second = root["processGroups"][0].clone();
    second["name"] = json!("Ingest (copy)");
    second["processors"][0]["instanceIdentifier"] = json!("7f3e2d10-0191-1000-bbbb-000000000002");
    root["processGroups"].as_array_mut().unwrap().push(second);
    let twice = dir.path().join("twice.json");
    std::fs::write(&twice, json!({"flowContents": root}).to_string()).unwrap();
    let (code, out, err) = cli(&[
        "identity",
        "build",
        "--leader-flow",
        l.to_str().unwrap(),
        "--follower-flow",
        twice.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("multi-instance (kept their UUIDs): 3"),
        "{out}"
    );
    assert!(out.contains("warning: versioned component"), "{out}");
    assert!(
        out.contains(COMPONENTS[0].4),
        "GenerateFlowFile is still mapped: {out}"
    );
    assert!(
        !out.contains(COMPONENTS[1].4),
        "ListS3 keeps its UUID: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_with_identity_puts_region1_backup_under_region2_ids() {
    let dir = tempfile::tempdir().unwrap();
    let file = build_map(dir.path());
    let region1 = RedisServer::start();
    let region2 = RedisServer::start();
    let mut c = region1.conn().await;
    for (t, comp) in COMPONENTS.iter().enumerate() {
        common::workload::nifi_replace(&mut c, &format!("nifi/components/{}", comp.3), t, 7)
            .await
            .unwrap();
    }
    let _: () = c.set(outside_key(), "untouched").await.unwrap();
    let rep = backup_and_restore(dir.path(), "redis", &region1.url(), &region2.url(), &file);
    assert_eq!(rep["renamed_by_identity_map"], 4, "{rep}");
    assert_eq!(rep["differences"], 0, "{rep}");
    let mut r2 = region2.conn().await;
    for comp in &COMPONENTS {
        let v: Option<String> = r2.get(format!("nifi/components/{}", comp.4)).await.unwrap();
        assert!(v.is_some_and(|v| v.contains("\"listing.timestamp\":\"7\"")));
        let n: usize = r2
            .exists(format!("nifi/components/{}", comp.3))
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    let v: Option<String> = r2.get(outside_key()).await.unwrap();
    assert_eq!(v.as_deref(), Some("untouched"));
}

/// The same for ZooKeeper: region 1's backup restored into region 2's ensemble puts every
/// component's znode under region 2's id; other znodes keep their paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_restore_with_identity_puts_region1_backup_under_region2_ids() {
    let dir = tempfile::tempdir().unwrap();
    let file = build_map(dir.path());
    let (region1, region2) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let c = zk_client(&region1.addr()).await;
    for (t, comp) in COMPONENTS.iter().enumerate() {
        let data = statemirror::nifi::encode_binary(&[("listing.timestamp", &t.to_string())]);
        common::zk_workload::nifi_set_state(&c, &format!("/nifi/components/{}", comp.3), &data)
            .await
            .unwrap();
    }
    common::zk_workload::nifi_set_state(&c, "/outside/of/nifi", b"untouched")
        .await
        .unwrap();
    let rep = backup_and_restore(
        dir.path(),
        "zookeeper",
        &region1.addr(),
        &region2.addr(),
        &file,
    );
    assert_eq!(rep["renamed_by_identity_map"], 4, "{rep}");
    assert_eq!(rep["differences"], 0, "{rep}");
    let r2 = zk_client(&region2.addr()).await;
    for (t, comp) in COMPONENTS.iter().enumerate() {
        let (data, _) = r2
            .get_data(&format!("/nifi/components/{}", comp.4))
            .await
            .unwrap();
        let want = statemirror::nifi::encode_binary(&[("listing.timestamp", &t.to_string())]);
        assert_eq!(data, want, "{} under its region 2 id", comp.0);
        assert!(r2
            .check_stat(&format!("/nifi/components/{}", comp.3))
            .await
            .unwrap()
            .is_none());
    }
    let (data, _) = r2.get_data("/outside/of/nifi").await.unwrap();
    assert_eq!(data, b"untouched");
}

/// `statemirror backup` of region 1's backend (`[section] leader = region1`), then
/// `restore --to leader --identity map` into region 2's: the restore's JSON report.
fn backup_and_restore(
    dir: &Path,
    section: &str,
    region1: &str,
    region2: &str,
    map: &Path,
) -> Value {
    let cfg = |leader: &str, name: &str| {
        let p = dir.join(name);
        let port = common::free_port();
        std::fs::write(
            &p,
            format!("[{section}]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{leader}\"\n"),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let (c1, c2) = (cfg(region1, "r1.toml"), cfg(region2, "r2.toml"));
    let backup = dir.join("r1.smbackup");
    let backup = backup.to_str().unwrap();
    let (code, out, err) = cli(&["backup", "--config", &c1, "--out", backup, "--allow-live"]);
    assert_eq!(code, 0, "{out}{err}");
    let map = map.to_str().unwrap();
    let (code, out, err) = cli(&[
        "restore",
        "--config",
        &c2,
        "--in",
        backup,
        "--to",
        "leader",
        "--identity",
        map,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// `statemirror identity list --json` with a `[section]` sidecar config over `leader` and
/// `follower` and the map `file`: the rows.
fn identity_list(dir: &Path, section: &str, leader: &str, follower: &str, file: &Path) -> Value {
    let cfg = dir.join("sidecar.toml");
    std::fs::write(
        &cfg,
        format!(
            "[{section}]\nleader = \"{leader}\"\nfollower = \"{follower}\"\n[identity]\nfile = \"{}\"\n",
            file.display()
        ),
    )
    .unwrap();
    let (code, out, err) = cli(&[
        "identity",
        "list",
        "--config",
        cfg.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}
