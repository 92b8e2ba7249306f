//! `zookeeper.mirror_ephemeral = true`: ephemeral nodes reach the follower as ephemerals of
//! statemirror's own session, and leave it when the client's session ends — closed, or
//! abandoned and expired — so no stale election node survives on the follower.
mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::eventually;
use common::zk::{open_acl, persistent, zk_client, zkc, RawZk, ZkProxy, ZkServer};
use statemirror::zookeeper::proto::{create_mode, op, CreateRequest};

async fn follower_owner(follower: &ZkServer, path: &str) -> Option<i64> {
    let c = zk_client(&follower.addr()).await;
    c.check_stat(path)
        .await
        .expect("exists")
        .map(|s| s.ephemeral_owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemerals_follow_their_client_sessions() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |cfg| {
        cfg.zookeeper
            .as_mut()
            .expect("[zookeeper]")
            .mirror_ephemeral = true;
    })
    .await;

    // A session creates an election node; the follower gets it as an ephemeral.
    let a = proxy.client().await;
    a.create("/election", b"", &persistent())
        .await
        .expect("parent");
    let opts = zkc::CreateMode::EphemeralSequential.with_acls(zkc::Acls::anyone_all());
    let (_, seq) = a
        .create("/election/n-", b"node-a", &opts)
        .await
        .expect("ephemeral");
    let path = format!("/election/n-{seq}");
    proxy.drained().await;
    let owner = follower_owner(&follower, &path).await;
    assert!(
        owner.is_some_and(|o| o != 0),
        "{path} on the follower, ephemeral: {owner:?}"
    );

    // The session closes: the node leaves the follower too.
    drop(a);
    eventually(Duration::from_secs(10), || async {
        match follower_owner(&follower, &path).await {
            None => Ok(()),
            Some(o) => Err(format!("{path} still on the follower (owner {o:#x})")),
        }
    })
    .await;

    // A session that just vanishes (no closeSession) expires on the leader after its
    // timeout; its node leaves the follower once the proxy has seen no reconnect for as long.
    let (mut raw, resp) = RawZk::handshake(
        proxy.addr(),
        0,
        Bytes::from_static(&[0; 16]),
        0,
        false,
        2_000,
    )
    .await
    .expect("session");
    assert!(
        resp.time_out <= 4_000,
        "short session timeout: {}",
        resp.time_out
    );
    let mut out = BytesMut::new();
    let req = CreateRequest {
        path: "/election/raw".into(),
        data: Some(Bytes::from_static(b"r")),
        acl: open_acl(),
        flags: create_mode::EPHEMERAL,
    };
    RawZk::request(&mut out, 1, op::CREATE, &req);
    raw.write(&out).await;
    let (h, _) = raw.reply().await.expect("create reply");
    assert_eq!(h.err, 0);
    proxy.drained().await;
    assert!(follower_owner(&follower, "/election/raw").await.is_some());
    drop(raw);
    eventually(Duration::from_secs(15), || async {
        let on_leader = zk_client(&leader.addr())
            .await
            .check_stat("/election/raw")
            .await
            .expect("exists");
        let on_follower = follower_owner(&follower, "/election/raw").await;
        match (on_leader, on_follower) {
            (None, None) => Ok(()),
            other => Err(format!("leader/follower still hold it: {other:?}")),
        }
    })
    .await;
    let s = proxy.status().await;
    assert_eq!(
        s["zookeeper"]["mirror"]["in_sync"], true,
        "{}",
        s["zookeeper"]
    );
}

/// The mirror writer's own follower session pings while no writes come: the ephemerals it
/// holds for clients must not vanish after a quiet session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_ephemerals_outlive_a_quiet_follower_session_timeout() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |cfg| {
        let z = cfg.zookeeper.as_mut().expect("[zookeeper]");
        z.mirror_ephemeral = true;
        z.follower_session_timeout_ms = 2_000;
    })
    .await;
    let a = proxy.client().await;
    a.create("/quiet", b"", &persistent())
        .await
        .expect("parent");
    let opts = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    a.create("/quiet/holder", b"a", &opts)
        .await
        .expect("ephemeral");
    proxy.drained().await;
    assert!(follower_owner(&follower, "/quiet/holder").await.is_some());
    // No writes for three follower session timeouts.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let owner = follower_owner(&follower, "/quiet/holder").await;
    assert!(
        owner.is_some_and(|o| o != 0),
        "the mirrored ephemeral vanished while the mirror was idle: {owner:?}"
    );
    drop(a);
}
