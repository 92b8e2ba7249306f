//! The ZooKeeper harness itself (tests/common/zk.rs), straight against real servers, no proxy:
//! standalone start/restart, zookeeper-client CRUD and watches, zkCli.sh, and a 3-node
//! ensemble whose client session survives losing the server it is connected to.

mod common;

use std::time::{Duration, Instant};

use common::eventually;
use common::zk::{
    ephemeral, four_letter, persistent, zk_client, zkc, zkcli, zkcli_lines, ZkEnsemble, ZkServer,
};

const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn standalone_client_crud_watch_and_restart() {
    let t = Instant::now();
    let mut zk = ZkServer::standalone().await;
    eprintln!("timing: standalone server ready in {:?}", t.elapsed());
    assert_eq!(four_letter(&zk.addr(), "ruok").await, "imok");

    let c = zk_client(&zk.addr()).await;
    let (stat, _) = c.create("/h", b"v1", &persistent()).await.unwrap();
    assert_eq!(stat.version, 0);

    // Data watch fires on set.
    let (data, stat, watch) = c.get_and_watch_data("/h").await.unwrap();
    assert_eq!(data, b"v1");
    let stat2 = c.set_data("/h", b"v2", Some(stat.version)).await.unwrap();
    assert_eq!(stat2.version, 1);
    let ev = tokio::time::timeout(WATCH_TIMEOUT, watch.changed())
        .await
        .expect("data watch fired");
    assert_eq!(ev.event_type, zkc::EventType::NodeDataChanged);
    assert_eq!(ev.path, "/h");
    assert_eq!(c.get_data("/h").await.unwrap().0, b"v2");
    assert!(matches!(
        c.set_data("/h", b"v3", Some(0)).await,
        Err(zkc::Error::BadVersion)
    ));

    // Child watch fires on create.
    let (_, _, child_watch) = c.get_and_watch_children("/").await.unwrap();
    c.create("/kept", b"k", &persistent()).await.unwrap();
    let ev = tokio::time::timeout(WATCH_TIMEOUT, child_watch.changed())
        .await
        .expect("child watch fired");
    assert_eq!(ev.event_type, zkc::EventType::NodeChildrenChanged);

    // Exists watch fires on delete.
    let (stat, watch) = c.check_and_watch_stat("/h").await.unwrap();
    assert!(stat.is_some());
    c.delete("/h", None).await.unwrap();
    let ev = tokio::time::timeout(WATCH_TIMEOUT, watch.changed())
        .await
        .expect("exists watch fired");
    assert_eq!(ev.event_type, zkc::EventType::NodeDeleted);
    assert_eq!(c.check_stat("/h").await.unwrap(), None);
    assert!(matches!(c.get_data("/h").await, Err(zkc::Error::NoNode)));
    // TTL nodes are enabled (-Dzookeeper.extendedTypesEnabled=true).
    let ttl = persistent().with_ttl(Duration::from_secs(60));
    c.create("/ttl", b"t", &ttl).await.unwrap();
    assert_eq!(c.get_data("/ttl").await.unwrap().0, b"t");
    drop(c);

    // Same port, same data dir: persistent nodes survive a SIGKILL + restart.
    let addr = zk.addr();
    zk.kill();
    assert!(
        try_connect(&addr).await.is_err(),
        "killed server still accepts"
    );
    let t = Instant::now();
    zk.restart().await;
    eprintln!("timing: standalone restart in {:?}", t.elapsed());
    assert_eq!(zk.addr(), addr);
    let c = zk_client(&zk.addr()).await;
    assert_eq!(c.get_data("/kept").await.unwrap().0, b"k");
}

async fn try_connect(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    tokio::net::TcpStream::connect(addr).await
}

#[tokio::test]
async fn zkcli_create_and_get() {
    let zk = ZkServer::standalone().await;

    let t = Instant::now();
    let (code, out, err) = zkcli(&zk.addr(), &["create", "/a", "x"]).await;
    eprintln!("timing: zkCli.sh create in {:?}", t.elapsed());
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(zkcli_lines(&out, &err), ["Created /a"]);

    let t = Instant::now();
    let (code, out, err) = zkcli(&zk.addr(), &["get", "/a"]).await;
    eprintln!("timing: zkCli.sh get in {:?}", t.elapsed());
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(zkcli_lines(&out, &err), ["x"]);

    // Data with spaces is one argument; the Rust client sees what zkCli wrote.
    let (code, _, err) = zkcli(&zk.addr(), &["set", "/a", "hello world"]).await;
    assert_eq!(code, 0, "{err}");
    let c = zk_client(&zk.addr()).await;
    assert_eq!(c.get_data("/a").await.unwrap().0, b"hello world");

    let (code, out, err) = zkcli(&zk.addr(), &["ls", "/"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(zkcli_lines(&out, &err), ["[a, zookeeper]"]);

    let (code, out, err) = zkcli(&zk.addr(), &["get", "/missing"]).await;
    assert_eq!(code, 1);
    assert_eq!(zkcli_lines(&out, &err), ["Node does not exist: /missing"]);
}

#[tokio::test]
async fn ensemble_session_survives_losing_its_server() {
    let t = Instant::now();
    let mut ens = ZkEnsemble::start(3).await;
    eprintln!("timing: 3-node ensemble ready in {:?}", t.elapsed());
    let leader = ens.leader().await.expect("a leader");
    eprintln!("leader: server {leader}");

    let c = zk_client(&ens.connect_string()).await;
    let sid = c.session_id();
    c.create("/eph", b"e", &ephemeral()).await.unwrap();
    c.create("/p", b"0", &persistent()).await.unwrap();
    let victim = eventually(Duration::from_secs(20), || async {
        ens.server_of_session(sid.0)
            .await
            .ok_or_else(|| format!("session {sid} on no server (cons)"))
    })
    .await;
    eprintln!("client session {sid} on server {victim}; killing it");

    let t = Instant::now();
    ens.kill(victim);
    // The client reconnects to another server with the same session and can write again.
    let written = eventually(Duration::from_secs(20), || async {
        c.set_data("/p", b"1", None)
            .await
            .map_err(|e| format!("set_data after kill: {e}"))
    })
    .await;
    eprintln!(
        "timing: client writes again {:?} after the kill",
        t.elapsed()
    );
    assert!(written.version >= 1);
    assert_eq!(c.session_id(), sid);
    let now_on = ens.server_of_session(sid.0).await;
    assert!(
        now_on.is_some() && now_on != Some(victim),
        "session on {now_on:?}"
    );

    // The ephemeral node outlived the server: the session is alive.
    let stat = c
        .check_stat("/eph")
        .await
        .unwrap()
        .expect("/eph still exists");
    assert_eq!(stat.ephemeral_owner, sid.0);
    let survivor = (0..ens.len()).find(|&i| i != victim).unwrap();
    let other = zk_client(&ens.server_addr(survivor)).await;
    other.sync("/").await.unwrap();
    assert_eq!(other.get_data("/eph").await.unwrap().0, b"e");
    assert_eq!(other.get_data("/p").await.unwrap().0, b"1");

    // The killed server rejoins (same ports and data) and catches up.
    let t = Instant::now();
    ens.restart(victim).await;
    eprintln!("timing: server {victim} rejoined in {:?}", t.elapsed());
    ens.wait_ready().await;
    let back = zk_client(&ens.server_addr(victim)).await;
    back.sync("/").await.unwrap();
    assert_eq!(back.get_data("/p").await.unwrap().0, b"1");
    assert_eq!(
        back.get_data("/eph").await.unwrap().1.ephemeral_owner,
        sid.0
    );

    // Losing the leader: the other two elect a new one; the session and writes go on.
    let leader = ens.leader().await.expect("a leader");
    let t = Instant::now();
    ens.kill(leader);
    eventually(Duration::from_secs(20), || async {
        c.set_data("/p", b"2", None)
            .await
            .map_err(|e| format!("set_data after killing the leader: {e}"))
    })
    .await;
    eprintln!(
        "timing: client writes again {:?} after killing leader {leader}",
        t.elapsed()
    );
    let new_leader = eventually(Duration::from_secs(10), || async {
        ens.leader().await.ok_or_else(|| "no leader".to_string())
    })
    .await;
    assert_ne!(new_leader, leader);
    assert_eq!(c.session_id(), sid);
    ens.restart(leader).await;
    ens.wait_ready().await;

    // Closing the session removes its ephemeral node everywhere.
    let all = zk_client(&ens.connect_string()).await;
    assert_eq!(all.get_data("/p").await.unwrap().0, b"2");
    drop(c);
    eventually(Duration::from_secs(15), || async {
        match all.check_stat("/eph").await {
            Ok(None) => Ok(()),
            other => Err(format!("/eph after close: {other:?}")),
        }
    })
    .await;
}
