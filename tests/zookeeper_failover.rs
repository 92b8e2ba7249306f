//! Read failover to the follower ensemble, against real ZooKeeper servers: with the leader
//! ensemble gone, a client keeps its session id, reads the follower's mirrored copy, gets
//! NOTREADONLY for writes, never sees a zxid go backwards, and — once the leader is back —
//! is closed at an idle moment and resumes its own session on the leader through the proxy.
mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::eventually;
use common::zk::{four_letter, open_acl, zkcli, zkcli_lines, RawZk, ZkProxy, ZkServer};
use statemirror::zookeeper::proto::{
    err, op, CreateRequest, GetDataRequest, GetDataResponse, Record, SetDataRequest,
};

async fn get(raw: &mut RawZk, xid: i32, path: &str) -> (i64, i32, Option<Bytes>) {
    let mut out = BytesMut::new();
    let req = GetDataRequest {
        path: path.into(),
        watch: true,
    };
    RawZk::request(&mut out, xid, op::GET_DATA, &req);
    raw.write(&out).await;
    let (h, body) = raw.reply().await.expect("getData reply");
    assert_eq!(h.xid, xid);
    let data = (h.err == 0)
        .then(|| GetDataResponse::from_bytes(&body).expect("body").data)
        .flatten();
    (h.zxid, h.err, data)
}

async fn set(raw: &mut RawZk, xid: i32, path: &str, data: &'static [u8]) -> (i64, i32) {
    let mut out = BytesMut::new();
    let req = SetDataRequest {
        path: path.into(),
        data: Some(Bytes::from_static(data)),
        version: -1,
    };
    RawZk::request(&mut out, xid, op::SET_DATA, &req);
    raw.write(&out).await;
    let (h, _) = raw.reply().await.expect("setData reply");
    assert_eq!(h.xid, xid);
    (h.zxid, h.err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_serves_reads_from_follower_then_session_resumes_on_leader() {
    let (mut leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;

    // A session through the proxy on the leader writes NiFi-style state; it is mirrored.
    let mut raw = RawZk::connect(proxy.addr()).await;
    let (session, passwd) = (raw.session_id, raw.passwd.clone());
    let mut out = BytesMut::new();
    for (xid, path) in [
        (1, "/nifi"),
        (2, "/nifi/components"),
        (3, "/nifi/components/c1"),
    ] {
        let req = CreateRequest {
            path: path.into(),
            data: Some(Bytes::from_static(b"v1")),
            acl: open_acl(),
            flags: 0,
        };
        RawZk::request(&mut out, xid, op::CREATE, &req);
    }
    raw.write(&out).await;
    let mut last_zxid = 0;
    for xid in 1..=3 {
        let (h, _) = raw.reply().await.expect("create reply");
        assert_eq!((h.xid, h.err), (xid, 0));
        last_zxid = h.zxid;
    }
    let (z, e) = set(&mut raw, 4, "/nifi/components/c1", b"v2").await;
    assert_eq!(e, 0);
    assert!(z > last_zxid);
    last_zxid = z;
    proxy.drained().await;
    drop(raw);

    // The whole leader ensemble is lost.
    leader.kill();
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        (s["zookeeper"]["leader"]["up"] == false)
            .then_some(())
            .ok_or(format!("{}", s["zookeeper"]))
    })
    .await;

    // The client reconnects with its session: served by the follower, same session id,
    // read-only, the mirrored state readable, writes refused, zxids pinned to what it saw.
    let (mut ro, resp) = RawZk::handshake(
        proxy.addr(),
        session,
        passwd.clone(),
        last_zxid,
        true,
        10_000,
    )
    .await
    .expect("the proxy answers the connect while the leader is down");
    assert_eq!(resp.session_id, session, "the client keeps its session id");
    assert_eq!(resp.read_only, Some(true));
    let (z, e, data) = get(&mut ro, 5, "/nifi/components/c1").await;
    assert_eq!(
        (e, data.as_deref()),
        (0, Some(&b"v2"[..])),
        "the follower's mirrored copy"
    );
    assert_eq!(
        z, last_zxid,
        "the reply zxid is the last leader zxid the client saw"
    );
    let (z, e) = set(&mut ro, 6, "/nifi/components/c1", b"v3").await;
    assert_eq!(e, err::NOT_READ_ONLY);
    assert!(
        z >= last_zxid,
        "zxids never go backwards ({z} < {last_zxid})"
    );
    let (_, e, _) = get(&mut ro, 7, "/nifi/components/missing").await;
    assert_eq!(e, err::NO_NODE);
    assert_eq!(four_letter(&proxy.addr().to_string(), "isro").await, "ro");
    let s = proxy.status().await;
    assert_eq!(s["zookeeper"]["serving"], "follower");
    assert_eq!(proxy.http("GET", "/readyz", None).await.0, 200);

    // The Java client (zkCli) reads through the proxy too, and cannot write.
    let (_, stdout, stderr) = zkcli(&proxy.connect_string(), &["get", "/nifi/components/c1"]).await;
    assert!(
        zkcli_lines(&stdout, &stderr).iter().any(|l| l == "v2"),
        "{stdout}\n{stderr}"
    );
    let (_, stdout, stderr) = zkcli(&proxy.connect_string(), &["create", "/nifi/x", "y"]).await;
    let lines = zkcli_lines(&stdout, &stderr).join("\n");
    assert!(lines.contains("Not a read-only call"), "{lines}");

    // The leader comes back (with its data): the follower-served connection is closed at an
    // idle moment, and the client resumes its own session on the leader through the proxy.
    leader.restart().await;
    assert!(
        ro.closed_within(Duration::from_secs(15)).await,
        "follower-served connection closed once the leader is back"
    );
    let addr = proxy.addr();
    let (mut rw, resp) = eventually(Duration::from_secs(15), || {
        let passwd = passwd.clone();
        async move {
            match RawZk::handshake(addr, session, passwd, last_zxid, true, 10_000).await {
                Some((raw, resp)) if resp.read_only == Some(false) => Ok((raw, resp)),
                other => Err(format!("not on the leader yet: {:?}", other.map(|o| o.1))),
            }
        }
    })
    .await;
    assert_eq!(
        resp.session_id, session,
        "the same session resumed on the leader"
    );
    let (z, e) = set(&mut rw, 8, "/nifi/components/c1", b"v4").await;
    assert_eq!(e, 0);
    assert!(z > last_zxid);
    proxy.drained().await;
    let (_, stdout, stderr) = zkcli(&follower.addr(), &["get", "/nifi/components/c1"]).await;
    assert!(
        zkcli_lines(&stdout, &stderr).iter().any(|l| l == "v4"),
        "mirrored again: {stdout}\n{stderr}"
    );
}

/// With neither ensemble reachable the proxy answers nothing (the client sees a dead
/// server and retries) and `/readyz` says 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reachable_closes_and_is_not_ready() {
    let (mut leader, mut follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    leader.kill();
    follower.kill();
    eventually(Duration::from_secs(10), || async {
        match proxy.http("GET", "/readyz", None).await.0 {
            503 => Ok(()),
            c => Err(format!("readyz {c}")),
        }
    })
    .await;
    assert!(RawZk::handshake(
        proxy.addr(),
        0,
        Bytes::from_static(&[0; 16]),
        0,
        false,
        10_000
    )
    .await
    .is_none());
}
