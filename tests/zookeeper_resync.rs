//! ZooKeeper follower catch-up and verification against real ZooKeeper 3.8 servers: the
//! resync statemirror runs at start copies a whole tree (nested nodes, digest ACLs, a
//! container, a TTL node, NiFi component state) to an empty follower; repairs a stale
//! follower (wrong data and ACLs, extra nodes) without touching the follower's
//! ephemerals; refuses to erase a follower from an empty leader unless forced; ends equal
//! while clients write through the proxy during it; and `GET /verify` names the NiFi
//! component and state entry that differ.
//!
//! Each test starts two standalone servers and a proxy; tests run one at a time (`SERIAL`,
//! 2-core machines). Every wait is bounded.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::eventually;
use common::zk::{
    assert_same_tree, ephemeral, persistent, tree_full, zk_client, zk_client_with, zkc, ZkProxy,
    ZkServer,
};
use serde_json::Value;
use statemirror::nifi::encode_binary;
use statemirror::sidecar::Sidecar;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The identity NiFi (the clients) and statemirror's sessions use.
const USER: &str = "nifi:secret";
/// `digest` id of [`USER`]: `nifi:base64(sha1("nifi:secret"))`.
const DIGEST_ID: &str = "nifi:MTC7J3JbuB4rtCgld1ixPKE13i4=";

async fn servers() -> (ZkServer, ZkServer) {
    tokio::join!(ZkServer::standalone(), ZkServer::standalone())
}

/// A proxy authenticated as [`USER`] (`follower_auth_file`), resync paced at `rate` nodes/s
/// (0 = unlimited). The harness waits for the resync at start to finish.
async fn proxy(leader: &ZkServer, follower: &ZkServer, rate: u64) -> (ZkProxy, tempfile::TempDir) {
    proxy_with(leader, follower, rate, true).await
}

async fn proxy_with(
    leader: &ZkServer,
    follower: &ZkServer,
    rate: u64,
    on_start: bool,
) -> (ZkProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("digest");
    std::fs::write(&auth, format!("{USER}\n")).expect("write auth file");
    let p = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |cfg| {
        cfg.resync.max_keys_per_second = rate;
        cfg.resync.retry_interval_ms = 300;
        cfg.resync.on_start = on_start;
        cfg.zookeeper
            .as_mut()
            .expect("[zookeeper]")
            .follower_auth_file = Some(auth);
    })
    .await;
    (p, dir)
}

/// A session authenticated as [`USER`].
async fn authed(addr: &str) -> zkc::Client {
    let conn = zkc::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .with_auth("digest", USER.as_bytes());
    zk_client_with(conn, addr).await
}

/// `digest` [`USER`] with every permission, anyone may read.
fn nifi_acl() -> [zkc::Acl; 2] {
    [
        zkc::Acl::new(zkc::Permission::ALL, zkc::AuthId::new("digest", DIGEST_ID)),
        zkc::Acl::new(zkc::Permission::READ, zkc::AuthId::anyone()),
    ]
}

/// Waits until the mirror is drained, the follower in sync and the last resync completed;
/// returns `/status`'s `zookeeper` object.
async fn settle(p: &ZkProxy, within: Duration) -> Value {
    eventually(within, || async {
        let z = p.status().await["zookeeper"].clone();
        let (m, r) = (&z["mirror"], &z["resync"]);
        if m["queue_depth"] == 0
            && m["in_sync"] == true
            && r["running"] == false
            && r["last"]["outcome"] == "completed"
        {
            Ok(z)
        } else {
            Err(format!("not settled: mirror {m} resync {r}"))
        }
    })
    .await
}

/// `GET /verify`'s `zookeeper` report.
async fn verify(p: &ZkProxy) -> Value {
    let (code, body) = p.http("GET", "/verify?max=50", None).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body).expect("JSON")["zookeeper"].clone()
}

/// Zero differences by `GET /verify` and by the test's own comparison; the number of nodes.
async fn verify_zero(p: &ZkProxy, leader: &ZkServer, follower: &ZkServer) -> u64 {
    let v = verify(p).await;
    assert_eq!(v["total_differences"], 0, "verify found differences: {v}");
    assert_eq!(v["unreadable"], 0, "{v}");
    let n = assert_same_tree(&leader.addr(), &follower.addr()).await;
    assert_eq!(v["equal"].as_u64(), Some(n as u64), "{v}");
    n as u64
}

/// Creates every path (parents first) pipelined, `data(path)` as data.
async fn create_all(c: &zkc::Client, paths: &[String], data: impl Fn(&str) -> Vec<u8>) {
    for chunk in paths.chunks(1000) {
        let opts = persistent();
        let pending: Vec<_> = chunk.iter().map(|p| c.create(p, &data(p), &opts)).collect();
        for (p, f) in chunk.iter().zip(pending) {
            f.await.unwrap_or_else(|e| panic!("create {p}: {e}"));
        }
    }
}

/// `/app` (20 groups × 20 nodes), NiFi state of 5 components, a digest-protected subtree,
/// a container, a TTL node and a 200 KB one: 434 nodes.
async fn populate(c: &zkc::Client) -> usize {
    let mut paths = vec!["/app".to_string()];
    for g in 0..20 {
        paths.push(format!("/app/g{g}"));
    }
    for g in 0..20 {
        for n in 0..20 {
            paths.push(format!("/app/g{g}/n{n}"));
        }
    }
    create_all(c, &paths, |p| p.as_bytes().to_vec()).await;
    create_all(c, &["/nifi".into(), "/nifi/components".into()], |_| vec![]).await;
    for i in 0..5 {
        let state = component_state(i, "1700000000000");
        let p = format!("/nifi/components/c{i}");
        c.create(&p, &state, &persistent()).await.unwrap();
    }
    let acl = nifi_acl();
    let secured = zkc::CreateMode::Persistent.with_acls(zkc::Acls::new(&acl));
    c.create("/secure", b"secret-ish", &secured).await.unwrap();
    c.create("/secure/child", b"c", &secured).await.unwrap();
    let container = zkc::CreateMode::Container.with_acls(zkc::Acls::anyone_all());
    c.create("/cont", b"", &container).await.unwrap();
    c.create("/cont/child", b"keeps the container", &persistent())
        .await
        .unwrap();
    let ttl = persistent().with_ttl(Duration::from_secs(600));
    c.create("/ttl", b"ttl node", &ttl).await.unwrap();
    c.create("/big", &vec![b'x'; 200_000], &persistent())
        .await
        .unwrap();
    paths.len() + 2 + 5 + 2 + 2 + 1 + 1
}

/// NiFi's ZooKeeper form of a ListS3-like component's state.
fn component_state(i: usize, timestamp: &str) -> Vec<u8> {
    let key = format!("s3://bucket/key-{i}");
    encode_binary(&[("listing.timestamp", timestamp), ("id.0", key.as_str())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_follower_is_resynced_at_start() {
    let _serial = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let c = authed(&leader.addr()).await;
    let nodes = populate(&c).await;
    // A client session's ephemeral: never copied.
    c.create("/app/eph", b"e", &ephemeral()).await.unwrap();

    let t0 = Instant::now();
    let (p, _auth) = proxy(&leader, &follower, 0).await;
    let z = settle(&p, Duration::from_secs(30)).await;
    let took = t0.elapsed();
    let last = &z["resync"]["last"];
    eprintln!("resync of {nodes} nodes: {took:?} to in sync; last run {last}");
    assert_eq!(last["copied"].as_u64(), Some(nodes as u64), "{last}");
    assert_eq!(last["deleted"], 0, "{last}");

    assert_eq!(verify_zero(&p, &leader, &follower).await, nodes as u64);
    let ft = tree_full(&follower.addr()).await;
    assert!(!ft.contains_key("/app/eph"), "an ephemeral was copied");
    assert_eq!(ft["/big"].data.len(), 200_000);
    assert_eq!(ft["/ttl"].data, b"ttl node");
    assert_eq!(ft["/cont/child"].data, b"keeps the container");
    // The digest ACL arrived with its hash (the test's session sees it masked on both).
    assert_eq!(
        ft["/secure"].acl,
        ["digest:nifi:x:ALL", "world:anyone:READ"]
    );
    let f = authed(&follower.addr()).await;
    let (acl, _) = f.get_acl("/secure/child").await.unwrap();
    assert!(
        acl.iter().any(|a| a.id() == DIGEST_ID),
        "digest hash not copied: {acl:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_follower_is_repaired_and_its_ephemerals_kept() {
    let _serial = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let l = authed(&leader.addr()).await;
    let f = authed(&follower.addr()).await;
    let acl = nifi_acl();
    let secured = zkc::CreateMode::Persistent.with_acls(zkc::Acls::new(&acl));
    let common = ["/app", "/app/a", "/app/b", "/app/c"].map(String::from);
    create_all(&l, &common, |p| format!("{p} new").into_bytes()).await;
    l.create("/app/a/kid", b"kid", &persistent()).await.unwrap();
    l.set_acl("/app/b", &acl, None).await.unwrap();
    l.create("/app/sec", b"s", &secured).await.unwrap();
    l.create("/app/eph-l", b"", &ephemeral()).await.unwrap();

    // The follower: old data, an open ACL, nodes the leader no longer has (a whole subtree
    // among them), and an ephemeral of its own session.
    create_all(&f, &common, |p| format!("{p} old").into_bytes()).await;
    f.set_data("/app/c", b"/app/c new", None).await.unwrap();
    let extras = ["/extra", "/extra/a", "/extra/a/b", "/app/zz", "/app/a/gone"].map(String::from);
    create_all(&f, &extras, |_| b"stale".to_vec()).await;
    f.create("/app/sec", b"s", &persistent()).await.unwrap();
    f.create("/app/eph-f", b"", &ephemeral()).await.unwrap();

    let (p, _auth) = proxy(&leader, &follower, 0).await;
    let z = settle(&p, Duration::from_secs(30)).await;
    let last = &z["resync"]["last"];
    // Copied: /app, /app/a, /app/b (data + ACL), /app/a/kid, /app/sec (ACL); /app/c equal.
    assert_eq!(last["copied"], 5, "{last}");
    // Deleted: the top of each extra subtree (/extra's children go with it).
    assert_eq!(last["deleted"], 3, "{last}");
    assert_eq!(verify_zero(&p, &leader, &follower).await, 6);
    let ft = tree_full(&follower.addr()).await;
    assert!(
        ft["/app/eph-f"].ephemeral,
        "the follower's own ephemeral was removed"
    );
    assert!(!ft.contains_key("/app/eph-l"));
    assert!(!ft.contains_key("/extra/a/b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_leader_is_refused_unless_forced() {
    let _serial = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let f = zk_client(&follower.addr()).await;
    create_all(&f, &["/keep".into(), "/keep/me".into()], |_| b"x".to_vec()).await;

    // No resync at start (the harness would wait for it): an operator asks for one.
    let (p, _auth) = proxy_with(&leader, &follower, 0, false).await;
    let (code, body) = p.http("POST", "/resync", None).await;
    assert_eq!(code, 202, "{body}");
    let r = eventually(Duration::from_secs(20), || async {
        let r = p.status().await["zookeeper"]["resync"].clone();
        if r["last"]["outcome"] == "refused" {
            Ok(r)
        } else {
            Err(format!("not refused yet: {r}"))
        }
    })
    .await;
    let err = r["last"]["error"].as_str().unwrap_or_default();
    assert!(err.contains("statemirror resync --force"), "{r}");
    assert_eq!(p.mirror_status().await["in_sync"], false);
    assert!(tree_full(&follower.addr()).await.contains_key("/keep/me"));

    let (code, body) = p.http("POST", "/resync?force=true", None).await;
    assert_eq!(code, 202, "{body}");
    let z = settle(&p, Duration::from_secs(20)).await;
    assert_eq!(z["resync"]["last"]["deleted"], 1, "{z}");
    assert_eq!(verify_zero(&p, &leader, &follower).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_names_the_nifi_component_and_entry() {
    let _serial = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let c = authed(&leader.addr()).await;
    populate(&c).await;
    let (p, _auth) = proxy(&leader, &follower, 0).await;
    settle(&p, Duration::from_secs(30)).await;

    // Behind statemirror's back: one state entry changed, one component gone, one extra
    // node, one ACL opened up.
    let f = authed(&follower.addr()).await;
    f.set_data(
        "/nifi/components/c2",
        &component_state(2, "1600000000000"),
        None,
    )
    .await
    .unwrap();
    f.delete("/nifi/components/c3", None).await.unwrap();
    f.create("/app/g0/stray", b"", &persistent()).await.unwrap();
    let open = [zkc::Acl::new(zkc::Permission::ALL, zkc::AuthId::anyone())];
    f.set_acl("/secure", &open, None).await.unwrap();

    let v = verify(&p).await;
    assert_eq!(
        (
            &v["different"],
            &v["missing_on_follower"],
            &v["extra_on_follower"]
        ),
        (&Value::from(2), &Value::from(1), &Value::from(1)),
        "{v}"
    );
    let diffs = v["differences"].as_array().expect("differences");
    let find = |key: &str| {
        diffs
            .iter()
            .find(|d| d["key"] == key)
            .unwrap_or_else(|| panic!("{key} not reported: {v}"))
    };
    let d = find("/nifi/components/c2");
    assert_eq!(
        (&d["kind"], &d["detail"]),
        (&"different".into(), &"data".into()),
        "{d}"
    );
    assert_eq!(d["nifi"]["component"], "c2", "{d}");
    assert_eq!(
        d["nifi"]["entries"],
        serde_json::json!([{
            "entry": "listing.timestamp",
            "leader": "1700000000000",
            "follower": "1600000000000",
        }]),
        "{d}"
    );
    assert!(
        d["nifi"].get("version").is_none(),
        "versions are not compared: {d}"
    );
    let d = find("/nifi/components/c3");
    assert_eq!(d["kind"], "missing_on_follower", "{d}");
    assert_eq!(d["nifi"]["component"], "c3", "{d}");
    assert_eq!(d["nifi"]["entries"][0]["follower"], Value::Null, "{d}");
    assert_eq!(find("/app/g0/stray")["kind"], "extra_on_follower");
    assert_eq!(find("/secure")["detail"], "acl");
}

/// The follower lacks 1500 nodes (no resync at start); writers through the proxy keep
/// changing exactly those nodes (setData, delete + recreate, ACL changes) and creating new
/// ones while an operator's resync copies them (paced, so they overlap), and another resync
/// is requested mid-way (the running one restarts). Once writes stop, both trees are equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_a_resync_end_equal() {
    let _serial = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let c = authed(&leader.addr()).await;
    let pre: Vec<String> = std::iter::once("/pre".to_string())
        .chain((0..1500).map(|i| format!("/pre/n{i}")))
        .collect();
    create_all(&c, &pre, |_| b"v0".to_vec()).await;
    let (p, _auth) = proxy_with(&leader, &follower, 1500, false).await;
    let resync = p
        .app
        .zookeeper
        .as_ref()
        .expect("zookeeper sidecar")
        .resync()
        .expect("resync controller");

    const WRITERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let cl = authed(&p.connect_string()).await;
        let (stop, writes) = (stop.clone(), writes.clone());
        tasks.push(tokio::spawn(async move {
            let acl = nifi_acl();
            let base = format!("/live{w}");
            cl.create(&base, b"", &persistent()).await.unwrap();
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let n = format!("/pre/n{}", (k * WRITERS + w) % 1500);
                let v = format!("w{w} k{k}");
                match k % 4 {
                    0 | 1 => cl.set_data(&n, v.as_bytes(), None).await.map(|_| ()),
                    2 => {
                        cl.delete(&n, None).await.unwrap();
                        cl.create(&n, v.as_bytes(), &persistent()).await.map(|_| ())
                    }
                    _ => cl.set_acl(&n, &acl, None).await.map(|_| ()),
                }
                .unwrap_or_else(|e| panic!("write {n}: {e}"));
                cl.create(&format!("{base}/k{k}"), v.as_bytes(), &persistent())
                    .await
                    .unwrap();
                k += 1;
                writes.fetch_add(2, Ordering::Relaxed);
                // A steady load rather than a flood: the point is overlap, not throughput.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let mut saw_running = false;
    for i in 0..40 {
        if i == 0 || i == 15 {
            resync.request(false);
        }
        saw_running |= p.status().await["zookeeper"]["resync"]["running"] == true;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    assert!(saw_running, "no resync overlapped the writes");
    let z = settle(&p, Duration::from_secs(60)).await;
    eprintln!(
        "{} writes during resyncs; resyncs_total {}, last {}",
        writes.load(Ordering::Relaxed),
        z["resync"]["resyncs_total"],
        z["resync"]["last"]
    );
    assert!(z["resync"]["resyncs_total"].as_u64() >= Some(2), "{z}");
    verify_zero(&p, &leader, &follower).await;
}

/// Throughput: 20 000 small nodes to an empty follower, unthrottled (numbers printed; the
/// bound is generous because the machine is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_nodes_resync() {
    let _serial = SERIAL.lock().await;
    let (leader, follower) = servers().await;
    let c = zk_client(&leader.addr()).await;
    let mut paths = vec!["/bulk".to_string()];
    paths.extend((0..100).map(|g| format!("/bulk/g{g}")));
    paths.extend((0..100).flat_map(|g| (0..199).map(move |n| format!("/bulk/g{g}/n{n}"))));
    create_all(&c, &paths, |p| p.as_bytes().to_vec()).await;

    let t0 = Instant::now();
    let (p, _auth) = proxy(&leader, &follower, 0).await;
    let z = settle(&p, Duration::from_secs(120)).await;
    let took = t0.elapsed().as_secs_f64();
    let run = z["resync"]["last"]["duration_seconds"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!(
        "resync of {} nodes: {took:.2} s from start to in sync, run {run:.2} s ({:.0} nodes/s)",
        paths.len(),
        paths.len() as f64 / run.max(1e-3)
    );
    let t1 = Instant::now();
    let v = verify(&p).await;
    eprintln!(
        "verify of {} nodes: {:.2} s",
        paths.len(),
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(v["total_differences"], 0, "{v}");
    assert_eq!(v["equal"].as_u64(), Some(paths.len() as u64));
}
