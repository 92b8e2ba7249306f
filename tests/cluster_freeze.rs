//! Issue 10 part 2, one freeze for the whole cluster: three (then four) real `statemirror`
//! processes over one leader and one follower, for Redis and for ZooKeeper. The freeze state
//! and the member list live in the leader; no sidecar knows its peers.
//!
//! Per protocol, in order:
//! - `status --cluster` lists the three members;
//! - `maintenance on --cluster` (CLI, through one sidecar) exits 0 with every member
//!   confirmed (writes drained, mirror drained); writes through every sidecar are refused
//!   with the frozen error, reads work;
//! - a fourth sidecar started while frozen refuses writes at once; SIGKILLed, it drops out
//!   of the list after its TTL;
//! - one sidecar SIGSTOPped: a cluster freeze answers non-zero, names it and says "not proven";
//! - `maintenance off --cluster` exits 0; writes flow through all three;
//! - statemirror's own keys / znodes are never on the follower, not even after a resync, and
//!   verify reports no difference;
//! - one more SIGKILLed: the list shows two once its TTL passed.
//!
//! Every wait is bounded; nothing asserts on durations. One scenario at a time (`SERIAL`).
mod common;

use std::time::Duration;

use common::zk::{persistent, zk_client, ZkServer};
use common::*;
use redis::AsyncCommands;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Member entries expire after this long (they refresh every third of it). Long enough that
/// a member SIGSTOPped just before a freeze is still listed when the freeze gives up
/// (`FREEZE_WAIT_S`), short enough that dropping out is quick.
const TTL_MS: u64 = 5000;
/// `--timeout-seconds` of the freeze that meets a stopped member: the sidecar waits 2 s less.
const FREEZE_WAIT_S: u64 = 4;

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Redis,
    Zk,
}

/// A config file for one sidecar named `node`.
fn config(
    proto: Proto,
    node: &str,
    leader: &str,
    follower: &str,
) -> (tempfile::NamedTempFile, String, String) {
    let (port, admin_port) = (free_port(), free_port());
    let section = match proto {
        Proto::Redis => format!(
            "[redis]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{leader}\"\nfollower = \"{follower}\"\n\
             connect_timeout_ms = 1000\nhealth_interval_ms = 200\n"
        ),
        Proto::Zk => format!(
            "[zookeeper]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{leader}\"\nfollower = \"{follower}\"\n"
        ),
    };
    let cfg = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(
        cfg.path(),
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nlevel = \"warn\"\n{section}\
             [replication]\nretry_initial_backoff_ms = 20\nretry_max_backoff_ms = 300\n\
             [maintenance]\ndrain_timeout_ms = 3000\n\
             [cluster]\nnode_name = \"{node}\"\nmember_ttl_ms = {TTL_MS}\n"
        ),
    )
    .expect("write config");
    let url = match proto {
        Proto::Redis => format!("redis://127.0.0.1:{port}"),
        Proto::Zk => format!("127.0.0.1:{port}"),
    };
    (cfg, format!("http://127.0.0.1:{admin_port}"), url)
}

struct Sidecar {
    proc: BinProxy,
    _cfg: tempfile::NamedTempFile,
}

async fn start(proto: Proto, node: &str, leader: &str, follower: &str) -> Sidecar {
    let (cfg, admin, url) = config(proto, node, leader, follower);
    let proc = BinProxy::start(cfg.path(), &admin, &url).await;
    Sidecar { proc, _cfg: cfg }
}

/// Starts a Redis sidecar while a probe sends `SET` from the moment its port accepts: the
/// very first write it answers must already be refused as frozen.
async fn start_probed(leader: &str, follower: &str) -> Sidecar {
    let (cfg, admin, url) = config(Proto::Redis, "n4", leader, follower);
    let addr: std::net::SocketAddr = url.trim_start_matches("redis://").parse().expect("addr");
    let probe = tokio::spawn(async move {
        eventually(Duration::from_secs(20), || async {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(&encode(&[b"SET", b"late", b"v"]))
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .map_err(|_| "no reply".to_string())?
                .map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .await
    });
    let proc = BinProxy::start(cfg.path(), &admin, &url).await;
    let first = probe.await.expect("probe");
    assert!(
        first.contains("frozen for maintenance"),
        "the first write a sidecar started during a cluster freeze answered: {first:?}"
    );
    Sidecar { proc, _cfg: cfg }
}

fn protocol(proto: Proto) -> &'static str {
    match proto {
        Proto::Redis => "redis",
        Proto::Zk => "zookeeper",
    }
}

/// Waits until the sidecar's follower is in sync and its queue empty (the resync at start).
async fn settled(s: &Sidecar, proto: Proto) {
    settle_with(protocol(proto), || async {
        s.proc.status().await.unwrap_or_default()
    })
    .await
}

/// One write through the sidecar: `Err` carries the error text.
async fn write(proto: Proto, s: &Sidecar, key: &str) -> Result<(), String> {
    match proto {
        Proto::Redis => {
            let mut c = client(&s.proc.url).await;
            c.set::<_, _, ()>(key, "v").await.map_err(|e| e.to_string())
        }
        Proto::Zk => {
            let c = zk_client(&s.proc.url).await;
            let path = format!("/{key}");
            c.create(&path, b"v", &persistent())
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        }
    }
}

/// A write refused because writes are frozen (Redis `-READONLY … frozen for maintenance`,
/// ZooKeeper `NOTREADONLY`).
async fn assert_frozen(proto: Proto, s: &Sidecar, key: &str) {
    let e = write(proto, s, key)
        .await
        .expect_err("a write while the cluster is frozen");
    match proto {
        Proto::Redis => assert!(e.contains("frozen for maintenance"), "{e}"),
        Proto::Zk => assert!(e.contains("NotReadOnly"), "{e}"),
    }
}

/// A read through the sidecar works (the value written before the freeze).
async fn assert_read(proto: Proto, s: &Sidecar, key: &str) {
    match proto {
        Proto::Redis => {
            let mut c = client(&s.proc.url).await;
            let v: Option<String> = c.get(key).await.expect("GET while frozen");
            assert_eq!(v.as_deref(), Some("v"));
        }
        Proto::Zk => {
            let c = zk_client(&s.proc.url).await;
            let (data, _) = c
                .get_data(&format!("/{key}"))
                .await
                .expect("getData while frozen");
            assert_eq!(data, b"v");
        }
    }
}

/// `statemirror <args>`: (exit code, stdout as JSON, stderr).
async fn cli(args: &[&str]) -> (i32, Value, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_statemirror"))
            .args(args)
            .output(),
    )
    .await
    .expect("the CLI answers within 30 s")
    .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::String(stdout));
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn names(members: &Value) -> Vec<String> {
    let mut v: Vec<String> = members
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["node"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until `statemirror status --cluster` lists exactly `want`.
async fn wait_members(admin: &str, want: &[&str]) {
    eventually(Duration::from_secs(15), || async {
        let (code, v, err) = cli(&["status", "--cluster", "--admin", admin]).await;
        let got = names(&v["members"]);
        if code == 0 && got == want {
            Ok(())
        } else {
            Err(format!(
                "exit {code}, members {got:?} (want {want:?}) {err}"
            ))
        }
    })
    .await
}

async fn scenario(proto: Proto, leader: &str, follower: &str) {
    let mut n: Vec<Sidecar> = Vec::new();
    for node in ["n1", "n2", "n3"] {
        n.push(start(proto, node, leader, follower).await);
    }
    for s in &n {
        settled(s, proto).await;
    }
    let admin1 = n[0].proc.admin.clone();
    wait_members(&admin1, &["n1", "n2", "n3"]).await;
    for (i, s) in n.iter().enumerate() {
        write(proto, s, &format!("before{i}"))
            .await
            .expect("write before the freeze");
    }

    // One call freezes all three, and proves it.
    let (code, v, err) = cli(&[
        "maintenance",
        "on",
        "--cluster",
        "--admin",
        &n[1].proc.admin,
    ])
    .await;
    assert_eq!(code, 0, "cluster freeze: {v} {err}");
    assert_eq!(v["proven"], true, "{v}");
    assert_eq!(names(&v["members"]), ["n1", "n2", "n3"], "{v}");
    for m in v["members"].as_array().expect("members") {
        assert_eq!(m["confirmed"], true, "{m}");
        assert_eq!(m["frozen"], true, "{m}");
        assert_eq!(m["writes_drained"], true, "{m}");
        assert_eq!(m["mirror_drained"], true, "{m}");
        assert_eq!(m["queue_depth"], 0, "{m}");
    }
    for (i, s) in n.iter().enumerate() {
        assert_frozen(proto, s, &format!("during{i}")).await;
        assert_read(proto, s, &format!("before{i}")).await;
    }

    // A sidecar that starts during the freeze is frozen before it serves anyone.
    let mut late = match proto {
        Proto::Redis => start_probed(leader, follower).await,
        Proto::Zk => start(proto, "n4", leader, follower).await,
    };
    assert_frozen(proto, &late, "late").await;
    wait_members(&admin1, &["n1", "n2", "n3", "n4"]).await;
    late.proc.kill();
    wait_members(&admin1, &["n1", "n2", "n3"]).await;

    // A member that cannot answer: the freeze is not proven, and the answer says who.
    {
        let _stopped = Frozen::new(n[2].proc.pid());
        let t = FREEZE_WAIT_S.to_string();
        let (code, v, err) = cli(&[
            "maintenance",
            "on",
            "--cluster",
            "--admin",
            &admin1,
            "--timeout-seconds",
            &t,
        ])
        .await;
        assert_ne!(code, 0, "a freeze with a stopped member must fail: {v}");
        assert_eq!(v["proven"], false, "{v}");
        // n3 for sure; the others normally confirm, but a loaded machine may delay them.
        let unconfirmed = v["unconfirmed"].as_array().cloned().unwrap_or_default();
        assert!(unconfirmed.contains(&Value::from("n3")), "{v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains("n3") && e.contains("not proven"), "{v} {err}");
    } // SIGCONT

    // One call resumes all three.
    let (code, v, err) = cli(&["maintenance", "off", "--cluster", "--admin", &admin1]).await;
    assert_eq!(code, 0, "cluster unfreeze: {v} {err}");
    assert_eq!(v["proven"], true, "{v}");
    for (i, s) in n.iter().enumerate() {
        write(proto, s, &format!("after{i}"))
            .await
            .expect("write after the unfreeze");
    }

    if proto == Proto::Redis {
        stalled_member_wakes_up_frozen(&n, &admin1).await;
    }

    // statemirror's own keys/znodes stay on the leader: not mirrored, not resynced, not
    // reported by verify.
    let (code, body) = statemirror::admin::client::request(
        &admin1,
        hyper::Method::POST,
        "/resync",
        statemirror::admin::client::discover_token(&admin1).as_deref(),
        Duration::from_secs(10),
    )
    .await
    .expect("POST /resync");
    assert_eq!(code, 202, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await; // let the resync start
    settled(&n[0], proto).await;
    assert_verify_zero(&admin1, protocol(proto)).await;
    assert_own_state_only_on_leader(proto, leader, follower).await;

    // A member killed without a goodbye drops out once its TTL passed.
    n[2].proc.kill();
    wait_members(&admin1, &["n1", "n2"]).await;
}

/// A member stopped for longer than its TTL drops out, and a freeze is proven without it.
/// When it wakes up, its write lease has run out with its entry: the write it was sent while
/// stopped is refused, not forwarded, and it reads the state again (frozen).
async fn stalled_member_wakes_up_frozen(n: &[Sidecar], admin1: &str) {
    let stopped = Frozen::new(n[2].proc.pid());
    wait_members(admin1, &["n1", "n2"]).await;
    let (code, body) = statemirror::admin::client::request(
        admin1,
        hyper::Method::PUT,
        "/maintenance?cluster=true",
        statemirror::admin::client::discover_token(admin1).as_deref(),
        Duration::from_secs(30),
    )
    .await
    .expect("PUT /maintenance?cluster=true");
    assert_eq!(code, 200, "freeze without the stopped member: {body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(names(&v["members"]), ["n1", "n2"], "{v}");
    let addr = n[2]
        .proc
        .url
        .trim_start_matches("redis://")
        .parse()
        .expect("addr");
    let mut raw = Raw::connect(addr).await; // the kernel completes the handshake for it
    raw.send(&["SET", "woke", "v"]).await;
    drop(stopped); // SIGCONT
    let r = raw
        .read_within(Duration::from_secs(10))
        .await
        .expect("a reply");
    assert!(
        matches!(&r, Resp::Error(e) if e.contains("frozen for maintenance")),
        "{r:?}"
    );
    wait_members(admin1, &["n1", "n2", "n3"]).await;
    let (code, v, err) = cli(&["maintenance", "off", "--cluster", "--admin", admin1]).await;
    assert_eq!(code, 0, "cluster unfreeze: {v} {err}");
    eventually(Duration::from_secs(10), || async {
        write(Proto::Redis, &n[2], "woke").await
    })
    .await;
}

async fn assert_own_state_only_on_leader(proto: Proto, leader: &str, follower: &str) {
    match proto {
        Proto::Redis => {
            let mut l = client(leader).await;
            let mut f = client(follower).await;
            let on_leader: Vec<String> = l.keys("statemirror:cluster:*").await.expect("KEYS");
            let on_follower: Vec<String> = f.keys("statemirror:cluster:*").await.expect("KEYS");
            assert!(
                on_leader.contains(&"statemirror:cluster:maintenance".to_string()),
                "{on_leader:?}"
            );
            assert!(on_follower.is_empty(), "on the follower: {on_follower:?}");
        }
        Proto::Zk => {
            let l = zk_client(leader).await;
            let f = zk_client(follower).await;
            let state = "/statemirror/cluster/maintenance";
            assert!(l.check_stat(state).await.expect("exists").is_some());
            assert_eq!(
                f.check_stat("/statemirror/cluster").await.expect("exists"),
                None,
                "on the follower"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_freeze_over_three_sidecars() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    scenario(Proto::Redis, &leader.url(), &follower.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_cluster_freeze_over_three_sidecars() {
    let _g = SERIAL.lock().await;
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    scenario(Proto::Zk, &leader.addr(), &follower.addr()).await;
}
