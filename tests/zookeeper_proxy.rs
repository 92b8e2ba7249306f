//! The ZooKeeper sidecar end to end, against real ZooKeeper 3.8 servers: zkCli.sh (the Java
//! client) and `zookeeper-client` sessions through statemirror, NiFi's state-provider and
//! Curator-election sequences, mirroring to a follower (multi, sequential names,
//! ephemerals, a concurrent workload, a follower outage), maintenance (NOTREADONLY in reply
//! order), the local answer to a standalone `check`, four-letter words, bad input, a
//! 3-server leader ensemble losing the server that holds a session, and metrics.
//!
//! Every test starts its own servers and proxy; every wait is bounded.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use common::eventually;
use common::zk::{
    assert_same_tree, compare_trees, ephemeral, four_letter, open_acl, persistent, tree, tree_full,
    zk_client, zk_client_with, zkc, zkcli, zkcli_lines, RawZk, ZkEnsemble, ZkOptions, ZkProxy,
    ZkServer,
};
use statemirror::zookeeper::proto::{
    err, op, CheckVersionRequest, CreateRequest, CreateResponse, GetDataRequest, GetDataResponse,
    Record, SetDataRequest,
};

const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A standalone leader and a standalone follower, started in parallel.
async fn leader_and_follower() -> (ZkServer, ZkServer) {
    tokio::join!(ZkServer::standalone(), ZkServer::standalone())
}

fn options(mode: zkc::CreateMode) -> zkc::CreateOptions<'static> {
    mode.with_acls(zkc::Acls::anyone_all())
}

// ---------------------------------------------------------------------------------------
// Panics in the proxy (its tasks are spawned: a panic would only end that task)
// ---------------------------------------------------------------------------------------

/// Panics whose location is not in `tests/` (i.e. in statemirror or a dependency), with
/// their message. Installed once per process; tests assert the list stays empty.
fn foreign_panics() -> Arc<Mutex<Vec<String>>> {
    static SEEN: std::sync::OnceLock<Arc<Mutex<Vec<String>>>> = std::sync::OnceLock::new();
    SEEN.get_or_init(|| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let loc = info.location().map(|l| l.to_string()).unwrap_or_default();
            if !loc.starts_with("tests/") {
                if let Ok(mut v) = record.lock() {
                    v.push(format!("{loc}: {info}"));
                }
            }
            prev(info)
        }));
        seen
    })
    .clone()
}

fn assert_no_foreign_panics() {
    let v = foreign_panics()
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    assert!(v.is_empty(), "panics outside the tests: {v:#?}");
}

fn get_data(path: &str) -> GetDataRequest {
    GetDataRequest {
        path: path.into(),
        watch: false,
    }
}

/// A plain TCP connection that sends `bytes` and reports whether the proxy closes it
/// within 5 s.
async fn closes_after(addr: std::net::SocketAddr, bytes: &[u8], shutdown_write: bool) -> bool {
    let mut s = RawZk::tcp(addr).await;
    s.write_all(bytes).await.expect("write");
    if shutdown_write {
        let _ = s.shutdown().await;
    }
    let mut raw = RawZk {
        stream: s,
        buf: BytesMut::new(),
        session_id: 0,
        passwd: Bytes::new(),
    };
    raw.closed_within(Duration::from_secs(5)).await
}

/// A fresh `zookeeper-client` session through the proxy creates, reads and deletes a node.
async fn proxy_still_serves(proxy: &ZkProxy, tag: &str) {
    let c = proxy.client().await;
    let path = format!("/alive-{tag}");
    c.create(&path, tag.as_bytes(), &persistent())
        .await
        .unwrap_or_else(|e| panic!("create {path} after {tag}: {e}"));
    assert_eq!(c.get_data(&path).await.unwrap().0, tag.as_bytes());
    c.delete(&path, None).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// zkCli.sh through the proxy
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn zkcli_crud_through_proxy_is_mirrored() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let p = proxy.connect_string();

    let run = |args: &'static [&'static str]| {
        let p = p.clone();
        async move {
            let (code, out, err) = zkcli(&p, args).await;
            (code, zkcli_lines(&out, &err), out, err)
        }
    };
    let (code, lines, out, err) = run(&["create", "/a", "x"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(lines, ["Created /a"]);
    let (code, lines, out, err) = run(&["create", "/a/b", "child data"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(lines, ["Created /a/b"]);
    let (code, lines, ..) = run(&["get", "/a"]).await;
    assert_eq!((code, lines), (0, vec!["x".to_string()]));
    let (code, lines, out, err) = run(&["set", "/a", "hello world"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(lines.is_empty(), "{lines:?}");
    let (code, lines, ..) = run(&["ls", "/"]).await;
    // statemirror's generation marker lives on the leader too, next to /zookeeper.
    let lines: Vec<String> = lines
        .iter()
        .map(|l| l.replace("statemirror, ", ""))
        .collect();
    assert_eq!((code, lines), (0, vec!["[a, zookeeper]".to_string()]));
    let (code, lines, ..) = run(&["get", "/missing"]).await;
    assert_eq!(
        (code, lines),
        (1, vec!["Node does not exist: /missing".to_string()])
    );

    // The leader has what zkCli wrote; the follower gets the same tree.
    proxy.drained().await;
    let l = tree(&leader.addr()).await;
    assert_eq!(l["/a"], (b"hello world".to_vec(), false));
    assert_eq!(l["/a/b"], (b"child data".to_vec(), false));
    assert_eq!(assert_same_tree(&leader.addr(), &follower.addr()).await, 2);

    let (code, lines, out, err) = run(&["delete", "/a/b"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(lines.is_empty(), "{lines:?}");
    let (code, lines, ..) = run(&["ls", "/a"]).await;
    assert_eq!((code, lines), (0, vec!["[]".to_string()]));
    proxy.drained().await;
    assert_eq!(assert_same_tree(&leader.addr(), &follower.addr()).await, 1);
    let f = tree(&follower.addr()).await;
    assert!(!f.contains_key("/a/b"));
    assert_eq!(proxy.mirror_status().await["in_sync"], true);
}

// ---------------------------------------------------------------------------------------
// NiFi's ZooKeeperStateProvider
// ---------------------------------------------------------------------------------------

/// `ZooKeeperStateProvider.serialize`: version byte 1, entry count, then per entry
/// `writeBoolean(hasKey) writeUTF(key) writeBoolean(hasValue) writeUTF(value)`.
fn nifi_state(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&(entries.len() as i32).to_be_bytes());
    for (k, val) in entries {
        for s in [k, val] {
            v.push(1);
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
        }
    }
    v
}

/// `createNode`: create; on NONODE create the parent (open ACL, no data: NiFi sends null,
/// zookeeper-client an empty buffer) and retry; on NODEEXISTS set the data.
async fn nifi_create_node(c: &zkc::Client, path: &str, data: &[u8]) {
    let mut missing = vec![(path.to_string(), data.to_vec())];
    while let Some((p, d)) = missing.last().cloned() {
        match c.create(&p, &d, &persistent()).await {
            Ok(_) => {
                missing.pop();
            }
            Err(zkc::Error::NoNode) => {
                let parent = p[..p.rfind('/').unwrap()].to_string();
                missing.push((parent, Vec::new()));
            }
            Err(zkc::Error::NodeExists) => {
                c.set_data(&p, &d, None).await.unwrap();
                missing.pop();
            }
            Err(e) => panic!("create {p}: {e}"),
        }
    }
}

/// `setState(values, -1)`: setData with version -1, creating the node on NONODE.
async fn nifi_set_state(c: &zkc::Client, path: &str, data: &[u8]) {
    match c.set_data(path, data, None).await {
        Ok(_) => {}
        Err(zkc::Error::NoNode) => nifi_create_node(c, path, data).await,
        Err(e) => panic!("setData {path}: {e}"),
    }
}

/// `ZKUtil.deleteRecursive`: every node of the subtree, leaves first.
async fn delete_recursive(c: &zkc::Client, path: &str) {
    let mut order = vec![path.to_string()];
    let mut i = 0;
    while i < order.len() {
        let p = order[i].clone();
        for ch in c.list_children(&p).await.unwrap() {
            order.push(format!("{p}/{ch}"));
        }
        i += 1;
    }
    for p in order.iter().rev() {
        c.delete(p, None).await.unwrap();
    }
}

#[tokio::test]
async fn nifi_state_provider_sequence_is_mirrored() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let (l, f) = (leader.addr(), follower.addr());
    let c = proxy.client().await;
    let ids = [
        "0a1b2c3d-0000-1000-8000-00000000aaaa",
        "0a1b2c3d-0000-1000-8000-00000000bbbb",
    ];
    let path = |i: usize| format!("/nifi/components/{}", ids[i]);

    // First setState of a component: NONODE, so the node and its parents are created.
    let empty = nifi_state(&[]);
    assert_eq!(empty, [1, 0, 0, 0, 0]);
    nifi_set_state(&c, &path(0), &empty).await;
    proxy.drained().await;
    assert_eq!(assert_same_tree(&l, &f).await, 3);
    assert_eq!(tree(&f).await[&path(0)].0, empty);

    // Unconditional setState, then a second component.
    let s1 = nifi_state(&[("listing.timestamp", "1700000000000"), ("id.0", "file-a")]);
    nifi_set_state(&c, &path(0), &s1).await;
    nifi_set_state(&c, &path(1), &nifi_state(&[("k", "v")])).await;
    proxy.drained().await;
    assert_eq!(assert_same_tree(&l, &f).await, 4);
    assert_eq!(tree(&f).await[&path(0)].0, s1);

    // replace(old, new): setData at the version read; a stale version fails (BADVERSION)
    // and changes nothing anywhere.
    let (data, stat) = c.get_data(&path(0)).await.unwrap();
    assert_eq!(data, s1);
    let s2 = nifi_state(&[("listing.timestamp", "1700000000999"), ("id.0", "file-b")]);
    let new = c.set_data(&path(0), &s2, Some(stat.version)).await.unwrap();
    assert_eq!(new.version, stat.version + 1);
    let stale = nifi_state(&[("listing.timestamp", "0")]);
    assert!(matches!(
        c.set_data(&path(0), &stale, Some(stat.version)).await,
        Err(zkc::Error::BadVersion)
    ));
    assert_eq!(c.get_data(&path(0)).await.unwrap().0, s2);
    let mut children = c.list_children("/nifi/components").await.unwrap();
    children.sort();
    assert_eq!(children, ids);
    proxy.drained().await;
    assert_eq!(assert_same_tree(&l, &f).await, 4);
    assert_eq!(tree(&f).await[&path(0)].0, s2);

    // clear(): setState of an empty map.
    nifi_set_state(&c, &path(1), &empty).await;
    // onComponentRemoved: deleteRecursive of the component, then of the whole subtree.
    delete_recursive(&c, &path(0)).await;
    proxy.drained().await;
    assert_eq!(assert_same_tree(&l, &f).await, 3);
    delete_recursive(&c, "/nifi/components").await;
    proxy.drained().await;
    assert_eq!(assert_same_tree(&l, &f).await, 1);
    assert_eq!(
        tree(&f).await.keys().cloned().collect::<Vec<_>>(),
        ["/nifi"]
    );
    assert_eq!(proxy.mirror_status().await["in_sync"], true);
}

// ---------------------------------------------------------------------------------------
// Curator leader election (NiFi's CuratorLeaderElectionManager)
// ---------------------------------------------------------------------------------------

const ELECTION: &str = "/nifi/leaders/Primary Node";

/// Curator's lock node: parents as containers, then `_c_<uuid>-lock-` EPHEMERAL_SEQUENTIAL.
async fn curator_lock_node(c: &zkc::Client, uuid: &str) -> String {
    for p in ["/nifi", "/nifi/leaders", ELECTION] {
        match c.create(p, b"", &options(zkc::CreateMode::Container)).await {
            Ok(_) | Err(zkc::Error::NodeExists) => {}
            Err(e) => panic!("createContainer {p}: {e}"),
        }
    }
    let prefix = format!("{ELECTION}/_c_{uuid}-lock-");
    let (_, seq) = c
        .create(
            &prefix,
            b"127.0.0.1",
            &options(zkc::CreateMode::EphemeralSequential),
        )
        .await
        .unwrap();
    format!("{prefix}{seq}")
}

/// The lock node just before `mine` (by sequence number), as Curator's
/// `StandardLockInternalsDriver` picks it.
async fn predecessor(c: &zkc::Client, mine: &str) -> Option<String> {
    let seq = |n: &str| n.rsplit("-lock-").next().unwrap_or_default().to_string();
    let mut children = c.list_children(ELECTION).await.unwrap();
    children.sort_by_key(|n| seq(n));
    let me = mine.rsplit('/').next().unwrap();
    let i = children
        .iter()
        .position(|n| n == me)
        .expect("own lock node");
    (i > 0).then(|| format!("{ELECTION}/{}", children[i - 1]))
}

#[tokio::test]
async fn curator_election_watch_fires_and_ephemerals_stay_local() {
    // The follower reaps empty containers within 200 ms (default: checks every minute), to
    // show the election parents were mirrored as containers.
    let reaping = ZkOptions {
        jvm_args: vec!["-Dznode.container.checkIntervalMs=200".into()],
        ..ZkOptions::default()
    };
    let (leader, follower) =
        tokio::join!(ZkServer::standalone(), ZkServer::standalone_with(reaping));
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let (a, b, c) = tokio::join!(proxy.client(), proxy.client(), proxy.client());

    let na = curator_lock_node(&a, "6f9e0b9e-5f3c-4a43-9d1e-aaaaaaaaaaaa").await;
    let nb = curator_lock_node(&b, "6f9e0b9e-5f3c-4a43-9d1e-bbbbbbbbbbbb").await;
    assert!(na.ends_with("-lock-0000000000"), "{na}");
    assert_eq!(predecessor(&a, &na).await, None, "a leads");
    assert_eq!(predecessor(&b, &nb).await.as_deref(), Some(na.as_str()));

    // b watches its predecessor (getData with a watcher, as Curator does).
    let (_, stat, watch) = b.get_and_watch_data(&na).await.unwrap();
    assert_eq!(stat.ephemeral_owner, a.session_id().0);

    // The parents reach the follower; the ephemeral lock nodes do not.
    proxy.drained().await;
    let ft = tree(&follower.addr()).await;
    assert_eq!(ft[ELECTION], (Vec::new(), false), "{ft:?}");
    assert!(
        !ft.keys().any(|p| p.contains("-lock-")),
        "ephemeral lock nodes mirrored: {ft:?}"
    );
    assert_eq!(assert_same_tree(&leader.addr(), &follower.addr()).await, 3);

    // a releases (deletes its node): b's watch fires through the proxy and b leads.
    let t = Instant::now();
    a.delete(&na, None).await.unwrap();
    let ev = tokio::time::timeout(WATCH_TIMEOUT, watch.changed())
        .await
        .expect("b's watch on its predecessor fired");
    assert_eq!(ev.event_type, zkc::EventType::NodeDeleted);
    assert_eq!(ev.path, na);
    eprintln!("timing: watch fired {:?} after the delete", t.elapsed());
    assert_eq!(predecessor(&b, &nb).await, None, "b leads");

    // c queues behind b; b's session closes: its node goes and c's watch fires.
    let nc = curator_lock_node(&c, "6f9e0b9e-5f3c-4a43-9d1e-cccccccccccc").await;
    assert_eq!(predecessor(&c, &nc).await.as_deref(), Some(nb.as_str()));
    let (stat, watch) = c.check_and_watch_stat(&nb).await.unwrap();
    assert!(stat.is_some());
    drop(b);
    let ev = tokio::time::timeout(WATCH_TIMEOUT, watch.changed())
        .await
        .expect("c's exists watch fired when b's session closed");
    assert_eq!(ev.event_type, zkc::EventType::NodeDeleted);
    assert_eq!(predecessor(&c, &nc).await, None, "c leads");

    // The follower still has the election path and never any lock node.
    proxy.drained().await;
    let ft = tree(&follower.addr()).await;
    assert!(ft.contains_key(ELECTION));
    assert!(!ft.keys().any(|p| p.contains("-lock-")), "{ft:?}");
    assert_eq!(assert_same_tree(&leader.addr(), &follower.addr()).await, 3);
    assert_eq!(proxy.mirror_status().await["in_sync"], true);

    // The mirrored election node is a container: once it has had a child and is empty
    // again, the follower deletes it (a plain persistent node would stay).
    let direct = zk_client(&follower.addr()).await;
    let child = format!("{ELECTION}/probe");
    direct.create(&child, b"", &persistent()).await.unwrap();
    direct.delete(&child, None).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        match direct.check_stat(ELECTION).await {
            Ok(None) => Ok(()),
            other => Err(format!("{ELECTION} on the follower: {other:?}")),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// multi, sequential nodes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn failed_multi_is_not_mirrored_and_successful_multi_is() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let (l, f) = (leader.addr(), follower.addr());
    let c = proxy.client().await;
    c.create("/m", b"0", &persistent()).await.unwrap();
    c.create("/m/existing", b"e", &persistent()).await.unwrap();

    // create + create of an existing node.
    let mut w = c.new_multi_writer();
    w.add_create("/m/a", b"a", &persistent()).unwrap();
    w.add_create("/m/existing", b"again", &persistent())
        .unwrap();
    let r = w.commit().await;
    assert!(
        matches!(
            r,
            Err(zkc::MultiWriteError::OperationFailed {
                index: 1,
                source: zkc::Error::NodeExists
            })
        ),
        "{r:?}"
    );
    // create + setData + check with a wrong version.
    let mut w = c.new_multi_writer();
    w.add_create("/m/b", b"b", &persistent()).unwrap();
    w.add_set_data("/m", b"changed", None).unwrap();
    w.add_check_version("/m", 99).unwrap();
    let r = w.commit().await;
    assert!(
        matches!(
            r,
            Err(zkc::MultiWriteError::OperationFailed {
                index: 2,
                source: zkc::Error::BadVersion
            })
        ),
        "{r:?}"
    );
    // delete + create under a missing parent.
    let mut w = c.new_multi_writer();
    w.add_delete("/m/existing", None).unwrap();
    w.add_create("/m/none/c", b"c", &persistent()).unwrap();
    let r = w.commit().await;
    assert!(
        matches!(
            r,
            Err(zkc::MultiWriteError::OperationFailed {
                index: 1,
                source: zkc::Error::NoNode
            })
        ),
        "{r:?}"
    );
    // Nothing of them happened on the leader.
    assert_eq!(c.check_stat("/m/a").await.unwrap(), None);
    assert_eq!(c.check_stat("/m/b").await.unwrap(), None);
    let (data, stat) = c.get_data("/m").await.unwrap();
    assert_eq!((data.as_slice(), stat.version), (&b"0"[..], 0));
    assert!(c.check_stat("/m/existing").await.unwrap().is_some());

    // A later write (so the mirror has certainly passed the failed multis).
    c.set_data("/m", b"1", None).await.unwrap();
    proxy.drained().await;
    let ft = tree(&f).await;
    assert!(!ft.contains_key("/m/a") && !ft.contains_key("/m/b") && !ft.contains_key("/m/none"));
    assert_eq!(ft["/m"].0, b"1");
    assert_eq!(ft["/m/existing"].0, b"e");
    assert_eq!(assert_same_tree(&l, &f).await, 2);

    // A multi that succeeds: check + create + sequential create + setData + delete.
    let mut w = c.new_multi_writer();
    w.add_check_version("/m", 1).unwrap();
    w.add_create("/m/new", b"n", &persistent()).unwrap();
    w.add_create(
        "/m/seq-",
        b"s",
        &options(zkc::CreateMode::PersistentSequential),
    )
    .unwrap();
    w.add_set_data("/m", b"2", Some(1)).unwrap();
    w.add_delete("/m/existing", None).unwrap();
    let results = w.commit().await.expect("multi succeeds");
    assert_eq!(results.len(), 5);
    let seq_path = match &results[2] {
        zkc::MultiWriteResult::Create { path, .. } => path.clone(),
        other => panic!("{other:?}"),
    };
    assert!(seq_path.starts_with("/m/seq-"), "{seq_path}");
    proxy.drained().await;
    let ft = tree(&f).await;
    assert_eq!(ft["/m"].0, b"2");
    assert_eq!(ft["/m/new"].0, b"n");
    assert_eq!(ft[&seq_path].0, b"s");
    assert!(!ft.contains_key("/m/existing"));
    assert_eq!(assert_same_tree(&l, &f).await, 3);
    assert_eq!(proxy.mirror_status().await["in_sync"], true);
}

#[tokio::test]
async fn sequential_nodes_keep_the_leaders_names() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let (l, f) = (leader.addr(), follower.addr());
    let c = proxy.client().await;
    c.create("/seq", b"", &persistent()).await.unwrap();
    // Advance the leader's sequence counter behind the proxy's back (not mirrored): the
    // follower's own counter would now pick other numbers.
    let direct = zk_client(&l).await;
    for _ in 0..3 {
        let (_, s) = direct
            .create(
                "/seq/hidden-",
                b"",
                &options(zkc::CreateMode::PersistentSequential),
            )
            .await
            .unwrap();
        direct
            .delete(&format!("/seq/hidden-{s}"), None)
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    for i in 0..5 {
        let (_, s) = c
            .create(
                "/seq/item-",
                format!("v{i}").as_bytes(),
                &options(zkc::CreateMode::PersistentSequential),
            )
            .await
            .unwrap();
        names.push(format!("item-{s}"));
        // An ephemeral sequential node takes a number too, on the leader only.
        c.create(
            "/seq/eph-",
            b"",
            &options(zkc::CreateMode::EphemeralSequential),
        )
        .await
        .unwrap();
    }
    assert_eq!(names[0], "item-0000000003");
    assert_eq!(names[4], "item-0000000011");
    proxy.drained().await;
    let ft = tree(&f).await;
    let got: Vec<String> = ft
        .keys()
        .filter_map(|p| p.strip_prefix("/seq/"))
        .map(str::to_string)
        .collect();
    assert_eq!(got, names);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(ft[&format!("/seq/{n}")].0, format!("v{i}").as_bytes());
    }
    assert_eq!(assert_same_tree(&l, &f).await, 6);

    // TTL nodes (createTTL), sequential ones too, and setACL are mirrored as well.
    let ttl = persistent().with_ttl(Duration::from_secs(600));
    c.create("/ttl", b"t", &ttl).await.unwrap();
    let seq_ttl = options(zkc::CreateMode::PersistentSequential).with_ttl(Duration::from_secs(600));
    let (_, s) = c.create("/ttl/n-", b"ts", &seq_ttl).await.unwrap();
    let acl = [
        zkc::Acl::new(
            zkc::Permission::ALL,
            zkc::AuthId::new("digest", "nifi:Dd7fm4vJn+uJKmS0bFM2Z6/1qf8="),
        ),
        zkc::Acl::new(zkc::Permission::READ, zkc::AuthId::anyone()),
    ];
    c.set_acl("/seq", &acl, None).await.unwrap();
    proxy.drained().await;
    let ft = tree_full(&f).await;
    assert_eq!(ft[&format!("/ttl/n-{s}")].data, b"ts");
    assert_eq!(
        ft["/seq"].acl,
        [
            // Without ADMIN on the node, getACL masks a digest's hash as "x".
            "digest:nifi:x:ALL",
            "world:anyone:READ"
        ]
    );
    assert_eq!(assert_same_tree(&l, &f).await, 8);
    assert_eq!(proxy.mirror_status().await["in_sync"], true);
}

// ---------------------------------------------------------------------------------------
// Concurrent workload; follower outage
// ---------------------------------------------------------------------------------------

/// One session's share of a mixed workload under `/w/s<i>` (plus shared nodes): creates,
/// sequential creates, setData (also on a node every session overwrites), deletes, multis,
/// ephemerals, and a failing conditional write. With a `gate` (round, semaphore), waits
/// for a permit before that round. Returns how many writes it made.
async fn workload(
    c: zkc::Client,
    i: usize,
    rounds: usize,
    done: Arc<AtomicUsize>,
    gate: Option<(usize, Arc<tokio::sync::Semaphore>)>,
) -> usize {
    let base = format!("/w/s{i}");
    let mut writes = 0;
    match c.create(&base, b"", &persistent()).await {
        Ok(_) | Err(zkc::Error::NodeExists) => writes += 1,
        Err(e) => panic!("create {base}: {e}"),
    }
    for k in 0..rounds {
        if let Some((at, sem)) = &gate {
            if k == *at {
                let _ = sem.acquire().await.expect("gate");
            }
        }
        let n = format!("{base}/n{k}");
        c.create(&n, format!("{i}.{k}").as_bytes(), &persistent())
            .await
            .unwrap_or_else(|e| panic!("create {n}: {e}"));
        c.set_data(&n, format!("{i}.{k}.set").as_bytes(), Some(0))
            .await
            .unwrap();
        c.set_data("/w/shared", format!("s{i} k{k}").as_bytes(), None)
            .await
            .unwrap();
        c.create(
            "/w/seq/x-",
            format!("{i}.{k}").as_bytes(),
            &options(zkc::CreateMode::PersistentSequential),
        )
        .await
        .unwrap();
        writes += 4;
        if k % 3 == 2 {
            c.delete(&format!("{base}/n{}", k - 2), None).await.unwrap();
            writes += 1;
        }
        if k % 4 == 1 {
            let mut w = c.new_multi_writer();
            w.add_create(&format!("{base}/m{k}"), b"m", &persistent())
                .unwrap();
            w.add_set_data(&n, b"by multi", None).unwrap();
            w.add_create(&format!("{base}/t{k}"), b"t", &persistent())
                .unwrap();
            w.add_delete(&format!("{base}/t{k}"), None).unwrap();
            w.commit().await.unwrap();
            writes += 1;
        }
        if k % 5 == 0 {
            c.create(&format!("{base}/e{k}"), b"eph", &ephemeral())
                .await
                .unwrap();
            writes += 1;
        }
        if k % 7 == 3 {
            assert!(matches!(
                c.set_data(&n, b"stale", Some(0)).await,
                Err(zkc::Error::BadVersion)
            ));
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_workload_converges() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let (l, f) = (leader.addr(), follower.addr());
    let setup = proxy.client().await;
    for p in ["/w", "/w/seq", "/w/shared"] {
        setup.create(p, b"", &persistent()).await.unwrap();
    }
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(proxy.client().await);
    }
    let done = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(workload(c.clone(), i, 25, done.clone(), None)))
        .collect();
    let mut writes = 0;
    for t in tasks {
        writes += tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("workload finished")
            .expect("workload task");
    }
    eprintln!("timing: {writes} writes on 8 sessions in {:?}", t.elapsed());
    proxy.drained().await;
    let n = assert_same_tree(&l, &f).await;
    assert!(n > 8 * 25, "{n} nodes");
    // Ephemerals exist on the leader only; the shared node ends with the leader's last value.
    let lt = tree(&l).await;
    assert_eq!(lt.values().filter(|(_, e)| *e).count(), 8 * 5);
    let ft = tree(&f).await;
    assert!(ft.values().all(|(_, e)| !e));
    assert_eq!(ft["/w/shared"], lt["/w/shared"]);
    assert_eq!(
        ft.keys().filter(|p| p.starts_with("/w/seq/x-")).count(),
        8 * 25
    );
    // Closing the sessions removes the ephemerals on the leader; nothing else changes.
    drop(clients);
    eventually(Duration::from_secs(15), || async {
        let left = tree(&l).await.values().filter(|(_, e)| *e).count();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} ephemerals left"))
        }
    })
    .await;
    assert_eq!(assert_same_tree(&l, &f).await, n);
    let m = proxy.mirror_status().await;
    assert_eq!(m["in_sync"], true, "{m}");
    assert_eq!(m["dropped_writes"], 0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_outage_queues_writes_until_it_is_back() {
    let (leader, mut follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let (l, f) = (leader.addr(), follower.addr());
    let setup = proxy.client().await;
    setup.create("/w", b"", &persistent()).await.unwrap();
    for p in ["/w/seq", "/w/shared"] {
        setup.create(p, b"", &persistent()).await.unwrap();
    }
    proxy.drained().await;

    let (c1, c2) = tokio::join!(proxy.client(), proxy.client());
    let done = Arc::new(AtomicUsize::new(0));
    // Session 0 stops before round 20 until the follower is dead; session 1 runs freely,
    // so the kill also lands while its writes are being mirrored.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let w1 = tokio::spawn(workload(
        c1.clone(),
        0,
        40,
        done.clone(),
        Some((20, gate.clone())),
    ));
    let w2 = tokio::spawn(workload(c2.clone(), 1, 40, done.clone(), None));
    eventually(Duration::from_secs(20), || async {
        let d = done.load(Ordering::Relaxed);
        if d >= 10 {
            Ok(())
        } else {
            Err(format!("{d} rounds done"))
        }
    })
    .await;
    follower.kill();
    let killed_at = done.load(Ordering::Relaxed);
    eprintln!("follower killed after {killed_at} of 80 workload rounds");
    gate.add_permits(1);
    for w in [w1, w2] {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("workload finished while the follower was down")
            .expect("every client write succeeded");
    }
    // More writes while it is down.
    for k in 0..20 {
        setup
            .create(&format!("/w/down{k}"), b"d", &persistent())
            .await
            .unwrap();
    }
    let st = proxy.status().await;
    eprintln!("status while the follower is down: {}", st["zookeeper"]);
    eventually(Duration::from_secs(10), || async {
        let z = proxy.status().await["zookeeper"].clone();
        if z["follower"]["up"] == false && z["mirror"]["queue_depth"].as_u64() > Some(0) {
            Ok(())
        } else {
            Err(format!("follower not seen down with a queue: {z}"))
        }
    })
    .await;

    let t = Instant::now();
    follower.restart().await;
    proxy.drained().await;
    eprintln!(
        "timing: follower restarted and drained in {:?}",
        t.elapsed()
    );
    assert_same_tree(&l, &f).await;
    let m = proxy.mirror_status().await;
    assert_eq!(m["in_sync"], true, "{m}");
    assert_eq!(m["dropped_writes"], 0, "{m}");
    assert!(m["failures"].as_u64() > Some(0), "{m}");
}

// ---------------------------------------------------------------------------------------
// Maintenance
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn maintenance_refuses_writes_but_reads_and_watches_work() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    // A short session timeout: pings flow every ~0.7 s while frozen.
    let c = zk_client_with(
        zkc::Client::connector().with_session_timeout(Duration::from_secs(2)),
        &proxy.connect_string(),
    )
    .await;
    c.create("/cfg", b"v1", &persistent()).await.unwrap();

    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    let e = c.create("/new", b"x", &persistent()).await.unwrap_err();
    assert_eq!(e, zkc::Error::NotReadOnly);
    assert_eq!(
        c.set_data("/cfg", b"v2", None).await.unwrap_err(),
        zkc::Error::NotReadOnly
    );
    assert_eq!(
        c.delete("/cfg", None).await.unwrap_err(),
        zkc::Error::NotReadOnly
    );
    let mut w = c.new_multi_writer();
    w.add_create("/multi", b"", &persistent()).unwrap();
    assert!(
        matches!(
            w.commit().await,
            Err(zkc::MultiWriteError::RequestFailed {
                source: zkc::Error::NotReadOnly
            })
        ),
        "multi while frozen"
    );
    // Reads and watches work; the watch fires on a write made behind the proxy's back.
    assert_eq!(c.get_data("/cfg").await.unwrap().0, b"v1");
    let (stat, watch) = c.check_and_watch_stat("/cfg").await.unwrap();
    assert_eq!(stat.map(|s| s.version), Some(0));
    let direct = zk_client(&leader.addr()).await;
    direct.set_data("/cfg", b"direct", None).await.unwrap();
    let ev = tokio::time::timeout(WATCH_TIMEOUT, watch.changed())
        .await
        .expect("exists watch fired while frozen");
    assert_eq!(ev.event_type, zkc::EventType::NodeDataChanged);
    // Idle for a few ping periods: the session stays connected.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.state(), zkc::SessionState::SyncConnected);
    assert_eq!(c.get_data("/cfg").await.unwrap().0, b"direct");
    let mut root = c.list_children("/").await.unwrap();
    root.retain(|n| n != "statemirror"); // the generation marker
    assert_eq!(root.len(), 2, "/cfg and /zookeeper: {root:?}");
    assert_eq!(c.check_stat("/new").await.unwrap(), None);

    let (code, body) = proxy.http("DELETE", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    c.create("/new", b"x", &persistent()).await.unwrap();
    c.set_data("/cfg", b"v3", None).await.unwrap();
    proxy.drained().await;
    let ft = tree(&follower.addr()).await;
    assert_eq!(ft["/new"].0, b"x");
    assert_eq!(ft["/cfg"].0, b"v3");
    assert!(!ft.contains_key("/multi"));
}

#[tokio::test]
async fn frozen_replies_keep_request_order_on_the_wire() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let c = proxy.client().await;
    c.create("/o", b"d", &persistent()).await.unwrap();
    let mut raw = RawZk::connect(proxy.addr()).await;
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");

    let mut out = BytesMut::new();
    RawZk::request(&mut out, 1, op::GET_DATA, &get_data("/o"));
    RawZk::request(
        &mut out,
        2,
        op::SET_DATA,
        &SetDataRequest {
            path: "/o".into(),
            data: Some(Bytes::from_static(b"frozen")),
            version: -1,
        },
    );
    RawZk::request(&mut out, 3, op::GET_DATA, &get_data("/o"));
    RawZk::request(
        &mut out,
        4,
        op::CHECK,
        &CheckVersionRequest {
            path: "/o".into(),
            version: -1,
        },
    );
    raw.write(&out).await; // one write: the proxy sees all four together
    let mut got = Vec::new();
    for _ in 0..4 {
        let (h, body) = raw.reply().await.expect("a reply");
        got.push((h.xid, h.err, body));
    }
    let summary: Vec<(i32, i32)> = got.iter().map(|(x, e, _)| (*x, *e)).collect();
    assert_eq!(
        summary,
        [
            (1, 0),
            (2, err::NOT_READ_ONLY),
            (3, 0),
            (4, err::UNIMPLEMENTED)
        ]
    );
    for i in [0, 2] {
        let r = GetDataResponse::from_bytes(&got[i].2).expect("GetDataResponse");
        assert_eq!(r.data.as_deref(), Some(&b"d"[..]));
    }
    assert!(got[1].2.is_empty() && got[3].2.is_empty(), "no bodies");

    // The session is intact: unfreeze and write on it.
    proxy.http("DELETE", "/maintenance", None).await;
    let mut out = BytesMut::new();
    RawZk::request(
        &mut out,
        5,
        op::SET_DATA,
        &SetDataRequest {
            path: "/o".into(),
            data: Some(Bytes::from_static(b"after")),
            version: -1,
        },
    );
    raw.write(&out).await;
    let (h, _) = raw.reply().await.expect("setData reply");
    assert_eq!((h.xid, h.err), (5, 0));
    assert_eq!(c.get_data("/o").await.unwrap().0, b"after");
    proxy.drained().await;
    assert_eq!(tree(&follower.addr()).await["/o"].0, b"after");
}

// ---------------------------------------------------------------------------------------
// Standalone check, four-letter words
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn standalone_check_is_answered_locally() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let mut raw = RawZk::connect(proxy.addr()).await;
    let mut out = BytesMut::new();
    RawZk::request(
        &mut out,
        1,
        op::CHECK,
        &CheckVersionRequest {
            path: "/".into(),
            version: -1,
        },
    );
    RawZk::request(
        &mut out,
        2,
        op::CREATE,
        &CreateRequest {
            path: "/after-check".into(),
            data: Some(Bytes::from_static(b"c")),
            acl: open_acl(),
            flags: 0,
        },
    );
    RawZk::request(&mut out, 3, op::GET_DATA, &get_data("/after-check"));
    raw.write(&out).await;
    let (h, body) = raw.reply().await.expect("check reply");
    assert_eq!((h.xid, h.err, body.len()), (1, err::UNIMPLEMENTED, 0));
    let (h, body) = raw.reply().await.expect("create reply");
    assert_eq!((h.xid, h.err), (2, 0));
    assert_eq!(
        CreateResponse::from_bytes(&body).unwrap().path,
        "/after-check"
    );
    let (h, body) = raw.reply().await.expect("getData reply");
    assert_eq!((h.xid, h.err), (3, 0));
    assert_eq!(
        GetDataResponse::from_bytes(&body).unwrap().data.as_deref(),
        Some(&b"c"[..])
    );
    // A lone check, nothing in flight: answered without waiting for a server reply.
    let mut out = BytesMut::new();
    RawZk::request(
        &mut out,
        4,
        op::CHECK,
        &CheckVersionRequest {
            path: "/".into(),
            version: -1,
        },
    );
    raw.write(&out).await;
    let (h, _) = raw.reply().await.expect("lone check reply");
    assert_eq!((h.xid, h.err), (4, err::UNIMPLEMENTED));

    // The server is healthy: it answers srvr, and new sessions read and write.
    assert!(four_letter(&leader.addr(), "srvr")
        .await
        .contains("Mode: standalone"));
    let c = proxy.client().await;
    c.create("/normal", b"n", &persistent()).await.unwrap();
    assert_eq!(c.get_data("/after-check").await.unwrap().0, b"c");
    let d = zk_client(&leader.addr()).await;
    assert_eq!(d.get_data("/normal").await.unwrap().0, b"n");
    proxy.drained().await;
    assert_eq!(assert_same_tree(&leader.addr(), &follower.addr()).await, 2);
    // A forwarded standalone check is what corrupts 3.8.0 ("Unsupported Txn with type=13"
    // on the next start). Other exceptions are unrelated connection noise (seen once under
    // load, never reproduced): shown, not failed on.
    let log = leader.log();
    assert!(
        !log.contains("Unsupported Txn"),
        "the check reached the server's log: {log}"
    );
    for l in log.lines().filter(|l| l.contains("Unexpected exception")) {
        eprintln!("leader log (not a failure): {l}");
    }
}

#[tokio::test]
async fn four_letter_words_through_proxy() {
    let mut leader = ZkServer::standalone().await;
    let proxy = ZkProxy::start(&leader.addr(), None).await;
    let p = proxy.connect_string();
    assert_eq!(four_letter(&p, "ruok").await, "imok");
    assert_eq!(four_letter(&p, "isro").await, "rw");
    let srvr = four_letter(&p, "srvr").await;
    assert!(srvr.contains("Mode: standalone"), "{srvr}");
    assert!(four_letter(&p, "mntr")
        .await
        .contains("zk_server_state\tstandalone"));

    proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(four_letter(&p, "isro").await, "ro");
    assert_eq!(four_letter(&p, "ruok").await, "imok");
    proxy.http("DELETE", "/maintenance", None).await;
    assert_eq!(four_letter(&p, "isro").await, "rw");

    // Leader down: isro says ro once the health check notices.
    leader.kill();
    eventually(Duration::from_secs(10), || async {
        match four_letter(&p, "isro").await.as_str() {
            "ro" => Ok(()),
            other => Err(format!("isro {other:?} with the leader down")),
        }
    })
    .await;
    assert_eq!(proxy.status().await["zookeeper"]["leader"]["up"], false);
    assert_eq!(four_letter(&p, "ruok").await, "imok");
    leader.restart().await;
    eventually(Duration::from_secs(10), || async {
        match four_letter(&p, "isro").await.as_str() {
            "rw" => Ok(()),
            other => Err(format!("isro {other:?} with the leader back")),
        }
    })
    .await;
    assert!(four_letter(&p, "srvr").await.contains("Mode:"));
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_closes_only_that_connection() {
    foreign_panics();
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |c| {
        c.zookeeper.as_mut().unwrap().max_frame_bytes = 64 * 1024;
    })
    .await;
    let addr = proxy.addr();
    // A session that stays open through all of it.
    let bystander = proxy.client().await;
    bystander
        .create("/bystander", b"0", &persistent())
        .await
        .unwrap();

    // First frame over max_frame_bytes.
    assert!(closes_after(addr, &(1_000_000i32).to_be_bytes(), false).await);
    proxy_still_serves(&proxy, "oversized-connect").await;
    // Negative and zero lengths; a word that is no four-letter word.
    assert!(closes_after(addr, &(-1i32).to_be_bytes(), false).await);
    assert!(closes_after(addr, &0i32.to_be_bytes(), false).await);
    assert!(closes_after(addr, b"xyzw", false).await);
    proxy_still_serves(&proxy, "bad-lengths").await;
    // Truncated ConnectRequest, then EOF.
    let mut trunc = 45i32.to_be_bytes().to_vec();
    trunc.extend_from_slice(&[0u8; 20]);
    assert!(closes_after(addr, &trunc, true).await);
    proxy_still_serves(&proxy, "truncated-connect").await;
    // Garbage in place of the ConnectRequest (length fine, content not).
    let mut garbage = 45i32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 45]);
    assert!(closes_after(addr, &garbage, false).await);
    let mut short = 3i32.to_be_bytes().to_vec();
    short.extend_from_slice(b"abc");
    assert!(closes_after(addr, &short, false).await);
    proxy_still_serves(&proxy, "garbage-connect").await;

    // After a good handshake: an oversized frame.
    let mut raw = RawZk::connect(addr).await;
    let mut big = (100_000i32).to_be_bytes().to_vec();
    big.extend_from_slice(&[0u8; 1000]);
    raw.write(&big).await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    proxy_still_serves(&proxy, "oversized-frame").await;
    // A frame too short for a RequestHeader.
    let mut raw = RawZk::connect(addr).await;
    raw.write(&[0, 0, 0, 2, 0, 1]).await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    proxy_still_serves(&proxy, "short-header").await;

    // An unknown opcode: whatever the server does (reply or close), nothing else suffers.
    let mut raw = RawZk::connect(addr).await;
    let mut out = BytesMut::new();
    RawZk::request(&mut out, 1, 999, &get_data("/"));
    RawZk::request(&mut out, 2, op::GET_DATA, &get_data("/bystander"));
    raw.write(&out).await;
    let first = raw.reply().await;
    let second = match &first {
        Ok(_) => Some(raw.reply().await),
        Err(_) => None,
    };
    eprintln!(
        "unknown opcode 999: first {:?}, then {:?}",
        first.as_ref().map(|(h, _)| h),
        second.as_ref().map(|r| r.as_ref().map(|(h, _)| h))
    );
    if let Ok((h, _)) = &first {
        assert_eq!(h.xid, 1, "replies stay in request order");
    }
    drop(raw);
    proxy_still_serves(&proxy, "unknown-opcode").await;

    // Clients that vanish mid-request: half a frame; a read in flight; a write in flight.
    let mut raw = RawZk::connect(addr).await;
    let mut half = BytesMut::new();
    RawZk::request(&mut half, 1, op::GET_DATA, &get_data("/bystander"));
    raw.write(&half[..half.len() - 5]).await;
    drop(raw);
    let mut raw = RawZk::connect(addr).await;
    let mut out = BytesMut::new();
    RawZk::request(&mut out, 1, op::GET_DATA, &get_data("/bystander"));
    raw.write(&out).await;
    drop(raw);
    let mut raw = RawZk::connect(addr).await;
    let mut out = BytesMut::new();
    RawZk::request(
        &mut out,
        1,
        op::CREATE,
        &CreateRequest {
            path: "/vanished".into(),
            data: Some(Bytes::from_static(b"v")),
            acl: open_acl(),
            flags: 0,
        },
    );
    raw.write(&out).await;
    drop(raw);
    proxy_still_serves(&proxy, "vanished-clients").await;

    // The bystander never noticed; zkCli works too.
    assert_eq!(bystander.get_data("/bystander").await.unwrap().0, b"0");
    bystander.set_data("/bystander", b"1", None).await.unwrap();
    let (code, out, err) = zkcli(&proxy.connect_string(), &["get", "/bystander"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(zkcli_lines(&out, &err), ["1"]);

    // The follower never silently diverges: either the vanished client's create reached it,
    // or the mirror says it is out of sync.
    proxy.drained().await;
    let m = proxy.mirror_status().await;
    let same = compare_trees(&leader.addr(), &follower.addr()).await;
    eprintln!(
        "after a client vanished with a create in flight: trees {:?}, mirror {m}",
        same
    );
    assert!(
        same.is_ok() || m["in_sync"] == false,
        "follower differs while in_sync: {same:?} {m}"
    );
    assert_no_foreign_panics();
}

// ---------------------------------------------------------------------------------------
// Leader ensemble: the session survives losing its server
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn session_resumes_on_another_ensemble_server() {
    let mut ens = ZkEnsemble::start(3).await;
    let proxy = ZkProxy::start(&ens.connect_string(), None).await;
    let c = proxy.client().await;
    let sid = c.session_id();
    c.create("/eph", b"e", &ephemeral()).await.unwrap();
    c.create("/p", b"0", &persistent()).await.unwrap();
    let victim = eventually(Duration::from_secs(20), || async {
        ens.server_of_session(sid.0)
            .await
            .ok_or_else(|| format!("session {sid} on no server (cons)"))
    })
    .await;
    eprintln!("session {sid} on server {victim}; killing it");

    let t = Instant::now();
    ens.kill(victim);
    let stat = eventually(Duration::from_secs(20), || async {
        c.set_data("/p", b"1", None)
            .await
            .map_err(|e| format!("set_data after the kill: {e}"))
    })
    .await;
    eprintln!("timing: writes again {:?} after the kill", t.elapsed());
    assert_eq!(stat.version, 1);
    assert_eq!(c.session_id(), sid, "same session");
    let now_on = ens.server_of_session(sid.0).await;
    assert!(
        now_on.is_some() && now_on != Some(victim),
        "session on {now_on:?}"
    );
    let eph = c.check_stat("/eph").await.unwrap().expect("/eph survives");
    assert_eq!(eph.ephemeral_owner, sid.0);
    c.create("/after", b"a", &persistent()).await.unwrap();
    let other = (0..ens.len()).find(|&i| i != victim).unwrap();
    let d = zk_client(&ens.server_addr(other)).await;
    d.sync("/").await.unwrap();
    assert_eq!(d.get_data("/after").await.unwrap().0, b"a");
    assert_eq!(d.get_data("/eph").await.unwrap().1.ephemeral_owner, sid.0);
    // New sessions through the proxy skip the dead server.
    for i in 0..3 {
        let n = proxy.client().await;
        assert_eq!(n.get_data("/p").await.unwrap().0, b"1", "session {i}");
    }
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// Sum of the samples of `name` whose labels include every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[tokio::test]
async fn metrics_count_zookeeper_requests_and_mirrored_writes() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let scrape = || async {
        let (code, body) = proxy.http("GET", "/metrics", None).await;
        assert_eq!(code, 200);
        body
    };
    let before = scrape().await;
    let zk = ("protocol", "zookeeper");
    let c = proxy.client().await;
    for i in 0..5 {
        c.create(&format!("/m{i}"), b"x", &persistent())
            .await
            .unwrap();
        c.get_data(&format!("/m{i}")).await.unwrap();
    }
    proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(
        c.create("/refused", b"", &persistent()).await.unwrap_err(),
        zkc::Error::NotReadOnly
    );
    proxy.http("DELETE", "/maintenance", None).await;
    proxy.drained().await;
    let after = scrape().await;

    assert!(
        after.contains("statemirror_mirrored_writes_total{protocol=\"zookeeper\"}"),
        "{after}"
    );
    assert!(
        after.contains("statemirror_requests_total{protocol=\"zookeeper\","),
        "{after}"
    );
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    let mirrored = delta("statemirror_mirrored_writes_total", &[zk]);
    assert!(mirrored >= 5.0, "mirrored {mirrored}");
    let writes = delta(
        "statemirror_requests_total",
        &[zk, ("kind", "write"), ("route", "leader")],
    );
    assert!(writes >= 5.0, "writes {writes}");
    let reads = delta(
        "statemirror_requests_total",
        &[zk, ("kind", "read"), ("route", "leader")],
    );
    assert!(reads >= 5.0, "reads {reads}");
    let rejected = delta(
        "statemirror_requests_total",
        &[zk, ("kind", "write"), ("route", "rejected")],
    );
    assert!(rejected >= 1.0, "rejected {rejected}");
    let maint = delta(
        "statemirror_rejected_writes_total",
        &[zk, ("reason", "maintenance")],
    );
    assert!(maint >= 1.0, "rejected for maintenance {maint}");
    // This proxy's own count is exact.
    assert_eq!(proxy.mirror_status().await["mirrored_writes"], 5);
}

// ---------------------------------------------------------------------------------------
// Replies the server sends out of order (auth), and clients that leave mid-write
// ---------------------------------------------------------------------------------------

/// `count` pipelined `create /big-` (PERSISTENT_SEQUENTIAL, 100 kB each) with xids 1..=count.
fn big_creates(out: &mut BytesMut, count: i32) {
    for x in 1..=count {
        RawZk::request(
            out,
            x,
            op::CREATE,
            &CreateRequest {
                path: "/big-".into(),
                data: Some(Bytes::from(vec![7u8; 100_000])),
                acl: open_acl(),
                flags: 2,
            },
        );
    }
}

/// ZooKeeper answers `auth` (op 100, xid -4) as soon as it reads it (in
/// `ZooKeeperServer.processPacket`, outside the request pipeline), so its reply overtakes
/// replies to requests still in flight. Clients expect that: the Java client handles xid -4
/// out of band, zookeeper-client matches replies by xid. Tested: through the proxy the
/// `auth` reply overtakes the creates' replies as it does straight to ZooKeeper, the
/// connection stays open, and the creates are mirrored.
#[tokio::test]
async fn auth_reply_may_overtake_replies_in_flight() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let mut out = BytesMut::new();
    big_creates(&mut out, 20);
    RawZk::request(
        &mut out,
        -4,
        op::AUTH,
        &statemirror::zookeeper::proto::AuthPacket {
            auth_type: 0,
            scheme: "digest".into(),
            auth: Bytes::from_static(b"user:password"),
        },
    );
    // Straight to the server: the auth reply usually comes second (shown, not asserted).
    let mut direct = RawZk::connect(leader.addr().parse().unwrap()).await;
    direct.write(&out).await;
    let mut order = Vec::new();
    for _ in 0..21 {
        order.push(direct.reply().await.expect("server reply").0.xid);
    }
    eprintln!("reply xids straight from the server: {order:?}");
    drop(direct);
    // Those creates bypassed the proxy: remove them so the trees can be compared.
    let c = zk_client(&leader.addr()).await;
    for child in c.list_children("/").await.expect("ls /") {
        if child.starts_with("big-") {
            c.delete(&format!("/{child}"), None)
                .await
                .expect("delete direct create");
        }
    }

    let mut raw = RawZk::connect(proxy.addr()).await;
    raw.write(&out).await;
    let mut got = Vec::new();
    for _ in 0..21 {
        match raw.reply().await {
            Ok((h, _)) => got.push((h.xid, h.err)),
            Err(e) => panic!("connection ended after replies {got:?}: {e:?}"),
        }
    }
    let mut xids: Vec<i32> = got.iter().map(|(x, _)| *x).collect();
    xids.sort();
    assert_eq!(xids, [-4].into_iter().chain(1..=20).collect::<Vec<_>>());
    assert!(got.iter().all(|(_, e)| *e == 0), "{got:?}");
    proxy.drained().await;
    assert_eq!(proxy.mirror_status().await["in_sync"], true);
    assert_same_tree(&leader.addr(), &follower.addr()).await;
}

/// The same through zookeeper-client (which sends `auth` with an ordinary xid): `auth` while
/// creates are in flight. Tested: every call succeeds through the proxy as it does straight
/// to ZooKeeper, and the creates are mirrored.
#[tokio::test]
async fn auth_while_writes_in_flight_via_zookeeper_client() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let big = vec![7u8; 100_000];
    let opts = options(zkc::CreateMode::PersistentSequential);
    for (name, addr) in [("direct", leader.addr()), ("proxy", proxy.connect_string())] {
        let c = zk_client(&addr).await;
        // Each call sends its request at once; the auth goes out behind 20 creates.
        let creates: Vec<_> = (0..20).map(|_| c.create("/big-", &big, &opts)).collect();
        let auth = c.auth("digest", b"user:password");
        let mut failed = Vec::new();
        for r in creates {
            if let Err(e) = r.await {
                failed.push(e);
            }
        }
        let auth = auth.await;
        assert!(
            failed.is_empty() && auth.is_ok(),
            "{name}: auth {auth:?}, {} of 20 creates failed: {failed:?}",
            failed.len()
        );
        if name == "direct" {
            // Those creates bypassed the proxy: remove them so the trees can be compared.
            for child in c.list_children("/").await.expect("ls /") {
                if child.starts_with("big-") {
                    c.delete(&format!("/{child}"), None)
                        .await
                        .expect("delete direct create");
                }
            }
        }
    }
    proxy.drained().await;
    assert_eq!(proxy.mirror_status().await["in_sync"], true);
    assert_same_tree(&leader.addr(), &follower.addr()).await;
}

/// A client that disconnects right after sending a write. ZooKeeper runs the write but does
/// not answer a half-closed connection, so the proxy keeps the leader connection open until
/// the replies owed have arrived. Tested: the write is mirrored and the follower stays in
/// sync (not marked out of sync for a write whose outcome it never learned).
#[tokio::test]
async fn client_vanishing_mid_write_keeps_follower_in_sync() {
    let (leader, follower) = leader_and_follower().await;
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let mut raw = RawZk::connect(proxy.addr()).await;
    let mut out = BytesMut::new();
    RawZk::request(
        &mut out,
        1,
        op::CREATE,
        &CreateRequest {
            path: "/vanished".into(),
            data: Some(Bytes::from_static(b"v")),
            acl: open_acl(),
            flags: 0,
        },
    );
    raw.write(&out).await;
    drop(raw);
    // The leader ran the create.
    let c = zk_client(&leader.addr()).await;
    eventually(Duration::from_secs(20), || async {
        match c.check_stat("/vanished").await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("/vanished on the leader: {other:?}")),
        }
    })
    .await;
    proxy.drained().await;
    let m = proxy.mirror_status().await;
    assert_eq!(m["in_sync"], true, "{m}");
    assert_same_tree(&leader.addr(), &follower.addr()).await;
}
