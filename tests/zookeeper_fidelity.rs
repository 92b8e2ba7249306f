//! ZooKeeper fidelity, against real servers: what reaches the follower is exactly what the
//! leader acknowledged, whatever the client does (ephemerals it writes to, leaving before
//! its replies, not reading them), whatever the leader does (a new zxid history), and what a
//! client sees while failed over (zxids, versions, refused CAS writes, `setWatches`,
//! `closeSession`), checked with real clients (`zookeeper-client`, and the Java client).
//!
//! Which test covers which item of issue 9:
//! 1. `writes_to_unmirrored_ephemerals_create_nothing_on_the_follower` (and, mirrored,
//!    `writes_to_mirrored_ephemerals_keep_the_copy_ephemeral`; a copy an older version left:
//!    `resync_removes_a_persistent_copy_of_a_leader_ephemeral`)
//! 2. `a_client_gone_before_its_replies_still_has_its_writes_mirrored`
//! 3. `a_delete_spares_descendants_written_after_it`
//! 4. `a_leader_that_starts_a_new_zxid_history_is_still_mirrored` (the trim's floor:
//!    `mirror::tests::a_trim_keeps_a_floor`)
//! 5. `made_up_replies_carry_the_newest_zxid_sent`
//! 6. `an_acknowledged_write_that_cannot_be_mirrored_is_flagged`
//! 7. `a_client_that_stops_reading_is_dropped_and_its_writes_mirrored`
//! 9. `failed_over_reads_show_follower_stats_and_cas_writes_are_refused`, with `setWatches`
//!    and `closeSession` while failed over, cross-checked with `zookeeper-client`;
//!    `java_client_keeps_its_session_across_a_failover` (zkCli.sh: one Java session from
//!    the leader to the follower, read-only, and back).
mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::eventually;
use common::zk::{
    ephemeral, open_acl, persistent, zk_client, zk_client_with, zkc, RawZk, ZkProxy, ZkServer,
};
use smallvec::smallvec;
use statemirror::replication::queue::{MirrorQueue, QueueLimits};
use statemirror::replication::worker::Applier;
use statemirror::zookeeper::mirror::{Item, ZkApplier, ZkOp};
use statemirror::zookeeper::proto::{
    err, op, CheckVersionRequest, CreateRequest, GetDataRequest, Record, ReplyHeader,
    SetDataRequest, SetWatches,
};

/// The follower's children of `path` (empty when it does not exist).
async fn children(addr: &str, path: &str) -> Vec<String> {
    let c = zk_client(addr).await;
    c.sync(path).await.ok();
    match c.list_children(path).await {
        Ok(mut v) => {
            v.sort();
            v
        }
        Err(zkc::Error::NoNode) => Vec::new(),
        Err(e) => panic!("list_children {path} on {addr}: {e}"),
    }
}

async fn data(addr: &str, path: &str) -> Option<Vec<u8>> {
    let c = zk_client(addr).await;
    match c.get_data(path).await {
        Ok((d, _)) => Some(d),
        Err(zkc::Error::NoNode) => None,
        Err(e) => panic!("get_data {path} on {addr}: {e}"),
    }
}

async fn wait_leader_down(proxy: &ZkProxy) {
    eventually(Duration::from_secs(15), || async {
        let s = proxy.status().await;
        (s["zookeeper"]["leader"]["up"] == false)
            .then_some(())
            .ok_or(format!("{}", s["zookeeper"]))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_unmirrored_ephemerals_create_nothing_on_the_follower() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let c = proxy.client().await;

    // A Curator-style lock: a persistent parent, an ephemeral sequential holder that is
    // then written to (setData, setACL), and a multi [create ephemeral, setData].
    c.create("/lock", b"", &persistent()).await.expect("parent");
    let opts = zkc::CreateMode::EphemeralSequential.with_acls(zkc::Acls::anyone_all());
    let (_, seq) = c.create("/lock/lease-", b"a", &opts).await.expect("holder");
    let holder = format!("/lock/lease-{seq}");
    c.set_data(&holder, b"b", None).await.expect("setData");
    c.set_acl(&holder, &zkc::Acls::anyone_all(), None)
        .await
        .expect("setACL");
    let mut m = c.new_multi_writer();
    m.add_create("/lock/m", b"x", &ephemeral()).expect("op");
    m.add_set_data("/lock/m", b"y", None).expect("op");
    m.commit().await.expect("multi");
    c.create("/done", b"", &persistent()).await.expect("marker");
    proxy.drained().await;

    assert_eq!(
        children(&follower.addr(), "/lock").await,
        Vec::<String>::new(),
        "no copy of a client's ephemeral reaches the follower"
    );
    assert!(data(&follower.addr(), "/done").await.is_some());
    let m = proxy.mirror_status().await;
    assert_eq!(m["in_sync"], true, "{m}");
    assert_eq!(m["refused_writes"], 0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_removes_a_persistent_copy_of_a_leader_ephemeral() {
    // What an older statemirror left: a persistent copy of a lock holder on the follower,
    // while the holder is still an ephemeral of a live session on the leader.
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let l = zk_client(&leader.addr()).await;
    l.create("/lock", b"", &persistent()).await.expect("parent");
    l.create("/lock/holder", b"a", &ephemeral())
        .await
        .expect("holder");
    let f = zk_client(&follower.addr()).await;
    f.create("/lock", b"", &persistent()).await.expect("parent");
    f.create("/lock/holder", b"a", &persistent())
        .await
        .expect("stale copy");
    // The resync at start repairs the follower.
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    proxy.drained().await;
    assert_eq!(
        children(&follower.addr(), "/lock").await,
        Vec::<String>::new()
    );
    drop(l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_mirrored_ephemerals_keep_the_copy_ephemeral() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |cfg| {
        cfg.zookeeper
            .as_mut()
            .expect("[zookeeper]")
            .mirror_ephemeral = true;
    })
    .await;
    let c = proxy.client().await;
    c.create("/lock", b"", &persistent()).await.expect("parent");
    c.create("/lock/a", b"1", &ephemeral())
        .await
        .expect("holder");
    c.set_data("/lock/a", b"2", None).await.expect("setData");
    let mut m = c.new_multi_writer();
    m.add_create("/lock/m", b"x", &ephemeral()).expect("op");
    m.add_set_data("/lock/m", b"y", None).expect("op");
    m.commit().await.expect("multi");
    proxy.drained().await;
    let f = zk_client(&follower.addr()).await;
    for (p, want) in [("/lock/a", b"2"), ("/lock/m", b"y")] {
        let (d, st) = f.get_data(p).await.expect("mirrored ephemeral");
        assert_eq!(d, want, "{p}");
        assert_ne!(
            st.ephemeral_owner, 0,
            "{p} is still an ephemeral on the follower"
        );
    }
    assert_eq!(proxy.mirror_status().await["in_sync"], true);
}

/// Frames `n` creates of `/owed/n<i>` in one buffer (xids 1..=n).
fn creates(n: i32) -> BytesMut {
    let mut out = BytesMut::new();
    for xid in 1..=n {
        let req = CreateRequest {
            path: format!("/owed/n{xid}"),
            data: Some(Bytes::from_static(b"v")),
            acl: open_acl(),
            flags: 0,
        };
        RawZk::request(&mut out, xid, op::CREATE, &req);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_its_replies_still_has_its_writes_mirrored() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let c = proxy.client().await;
    c.create("/owed", b"", &persistent()).await.expect("parent");

    // A client pipelines many writes and leaves at once: the proxy's writes of their
    // replies fail (the client's socket answers with a reset), and the leader still owes
    // most of them.
    const N: i32 = 1500;
    let mut raw = RawZk::connect(proxy.addr()).await;
    raw.write(&creates(N)).await;
    drop(raw);

    // Every write the leader acknowledged reaches the follower, and nothing is flagged.
    let leader_n = eventually(Duration::from_secs(20), || async {
        let n = children(&leader.addr(), "/owed").await.len();
        (n == N as usize)
            .then_some(n)
            .ok_or(format!("{n} on the leader"))
    })
    .await;
    proxy.drained().await;
    assert_eq!(children(&follower.addr(), "/owed").await.len(), leader_n);
    let m = proxy.mirror_status().await;
    assert_eq!(m["in_sync"], true, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_spares_descendants_written_after_it() {
    // The mirror writer alone, on a real follower, fed ops out of zxid order as they can
    // arrive from different client connections (or from a resync read before them).
    let follower = ZkServer::standalone().await;
    let queue = MirrorQueue::<ZkOp>::new(
        "zookeeper",
        QueueLimits {
            max_ops: 1000,
            max_bytes: 1 << 20,
            bulk_capacity: 4,
            bulk_per_batch: 1,
        },
    );
    let mut w = ZkApplier::new(
        vec![follower.addr()].into(),
        None,
        Duration::from_secs(5),
        10_000,
        1 << 20,
        queue,
        None,
    );
    // A stale child, on the follower only.
    let f = zk_client(&follower.addr()).await;
    f.create("/p", b"", &persistent()).await.expect("/p");
    f.create("/p/stale", b"", &persistent())
        .await
        .expect("stale");
    let create = |path: &str| Item::Create {
        path: path.into(),
        data: Some(Bytes::from_static(b"new")),
        acl: open_acl(),
        mode: 0,
        ttl: 0,
    };
    // zxid 20: /p/q/c was created (on the leader, /p was deleted at 10 and created again
    // before 20; that create is still queued elsewhere).
    let newer = [ZkOp {
        zxid: 20,
        items: smallvec![create("/p/q/c")],
    }];
    w.apply(&newer).await.expect("apply the newer create");
    // zxid 10: the delete of /p, late.
    let late = [ZkOp {
        zxid: 10,
        items: smallvec![Item::Delete { path: "/p".into() }],
    }];
    w.apply(&late).await.expect("apply the late delete");
    assert_eq!(
        data(&follower.addr(), "/p/q/c").await.as_deref(),
        Some(&b"new"[..]),
        "a node written after the delete survives it"
    );
    assert_eq!(
        children(&follower.addr(), "/p").await,
        ["q"],
        "what the delete removed on the leader is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_starts_a_new_zxid_history_is_still_mirrored() {
    let (mut leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    {
        let c = proxy.client().await;
        c.create("/h", b"old", &persistent()).await.expect("create");
        // Zxids well above where an empty server starts.
        for i in 0..40 {
            c.set_data("/h", format!("old{i}").as_bytes(), None)
                .await
                .expect("setData");
        }
        proxy.drained().await;
    }
    // The leader comes back empty (a new ensemble, or a restore): zxids start again low.
    leader.restart_empty().await;
    let c = eventually(Duration::from_secs(30), || async {
        let c = zk_client(&proxy.connect_string()).await;
        match c.create("/h", b"new", &persistent()).await {
            Ok(_) => Ok(c),
            // An earlier attempt ran but lost its reply (the leader was declared down again
            // while its health settled, closing the session): the empty leader's `/h` can
            // only be that attempt's.
            Err(zkc::Error::NodeExists) => match c.get_data("/h").await {
                Ok((d, _)) if d == b"new" => Ok(c),
                other => Err(format!("/h exists on the new leader: {other:?}")),
            },
            Err(e) => Err(format!("create on the new leader: {e}")),
        }
    })
    .await;
    c.create("/h2", b"new", &persistent())
        .await
        .expect("create");
    proxy.drained().await;
    for p in ["/h", "/h2"] {
        assert_eq!(
            data(&follower.addr(), p).await.as_deref(),
            Some(&b"new"[..]),
            "{p}: a write of the new history is mirrored, not skipped as older"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_replies_carry_the_newest_zxid_sent() {
    let leader = ZkServer::standalone().await;
    let proxy = ZkProxy::start(&leader.addr(), None).await;
    let mut raw = RawZk::connect(proxy.addr()).await;
    let mut out = BytesMut::new();
    let req = CreateRequest {
        path: "/z".into(),
        data: None,
        acl: open_acl(),
        flags: 0,
    };
    RawZk::request(&mut out, 1, op::CREATE, &req);
    raw.write(&out).await;
    let (h, _) = raw.reply().await.expect("create");
    assert_eq!((h.xid, h.err), (1, 0));
    // A write (forwarded) and a standalone check (answered by the proxy) in one packet:
    // the check's reply leaves after the write's, whose zxid is newer.
    let mut out = BytesMut::new();
    let set = SetDataRequest {
        path: "/z".into(),
        data: Some(Bytes::from_static(b"1")),
        version: -1,
    };
    RawZk::request(&mut out, 2, op::SET_DATA, &set);
    let check = CheckVersionRequest {
        path: "/z".into(),
        version: 0,
    };
    RawZk::request(&mut out, 3, op::CHECK, &check);
    raw.write(&out).await;
    let (a, _) = raw.reply().await.expect("setData");
    let (b, _) = raw.reply().await.expect("check");
    assert_eq!((a.xid, a.err, b.xid, b.err), (2, 0, 3, err::UNIMPLEMENTED));
    assert!(
        b.zxid >= a.zxid,
        "a client's lastZxid never goes back: {:#x} after {:#x}",
        b.zxid,
        a.zxid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_that_cannot_be_mirrored_is_flagged() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let mut raw = RawZk::connect(proxy.addr()).await;
    // A create whose digest ACL id is not UTF-8: the leader takes it (Java decodes it with
    // replacement characters); statemirror's decoder does not.
    let mut body = BytesMut::new();
    let s = |b: &mut BytesMut, v: &[u8]| {
        b.put_i32(v.len() as i32);
        b.put_slice(v);
    };
    body.put_i32(1); // xid
    body.put_i32(op::CREATE);
    s(&mut body, b"/nu");
    s(&mut body, b"x");
    body.put_i32(1); // one ACL
    body.put_i32(31);
    s(&mut body, b"digest");
    s(&mut body, b"u\xff:abc");
    body.put_i32(0); // persistent
    let mut out = BytesMut::new();
    out.put_i32(body.len() as i32);
    out.put_slice(&body);
    raw.write(&out).await;
    let (h, _) = raw.reply().await.expect("create");
    assert_eq!((h.xid, h.err), (1, 0), "the leader acknowledged it");
    let m = eventually(Duration::from_secs(10), || async {
        let m = proxy.mirror_status().await;
        (m["in_sync"] == false)
            .then_some(m.clone())
            .ok_or(format!("not flagged: {m}"))
    })
    .await;
    assert!(m["dropped_writes"].as_u64() >= Some(1), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_its_writes_mirrored() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |cfg| {
        cfg.maintenance.drain_timeout_ms = 2000;
    })
    .await;
    let c = proxy.client().await;
    let big = vec![b'x'; 500 * 1024];
    c.create("/big", &big, &persistent()).await.expect("big");
    c.create("/w", b"before", &persistent()).await.expect("w");

    // Far more replies than the sockets between them hold, then a write; never read. The
    // session timeout (12 s) leaves the proxy time to collect the 30 MB of owed replies after
    // it drops the client (at 2/3 of it) and before the leader expires the session, even on a
    // loaded machine; were the session to expire first, the write would be flagged instead
    // (6 s, a 2 s margin, was once too little with three test binaries on two cores).
    let (mut raw, resp) =
        RawZk::handshake(proxy.addr(), 0, Bytes::from(vec![0; 16]), 0, false, 12000)
            .await
            .expect("session");
    assert!(resp.time_out > 0);
    let mut out = BytesMut::new();
    for xid in 1..=60 {
        let req = GetDataRequest {
            path: "/big".into(),
            watch: false,
        };
        RawZk::request(&mut out, xid, op::GET_DATA, &req);
    }
    let set = SetDataRequest {
        path: "/w".into(),
        data: Some(Bytes::from_static(b"after")),
        version: -1,
    };
    RawZk::request(&mut out, 61, op::SET_DATA, &set);
    raw.write(&out).await;
    // It still pings (its session stays alive on the leader), but reads nothing.
    let pinger = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut ping = BytesMut::new();
        ping.put_i32(8);
        ping.put_i32(-2);
        ping.put_i32(op::PING);
        for _ in 0..120 {
            if raw.stream.write_all(&ping).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        raw
    });

    // The write reached the leader (the proxy reads requests while replies pile up; a
    // freeze before it was read would refuse it, rightly, and prove nothing here).
    let leader_addr = leader.addr();
    eventually(Duration::from_secs(30), || async {
        match data(&leader_addr, "/w").await.as_deref() {
            Some(b"after") => Ok(()),
            other => Err(format!("leader /w: {other:?}")),
        }
    })
    .await;
    // The write's reply is owed to a client that will not take it: the proxy drops that
    // client, collects the reply, mirrors the write, and a freeze finds no write in flight.
    eventually(Duration::from_secs(30), || async {
        let (code, body) = proxy.http("PUT", "/maintenance", None).await;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        (code == 200 && v["writes_drained"] == true)
            .then_some(())
            .ok_or(format!("{code} {body}"))
    })
    .await;
    proxy.http("DELETE", "/maintenance", None).await;
    proxy.drained().await;
    assert_eq!(
        data(&follower.addr(), "/w").await.as_deref(),
        Some(&b"after"[..])
    );
    let mut raw = tokio::time::timeout(Duration::from_secs(40), pinger)
        .await
        .expect("the pinger stops when the proxy closes the connection")
        .expect("pinger");
    assert!(raw.closed_within(Duration::from_secs(10)).await);
    assert_eq!(proxy.mirror_status().await["in_sync"], true);
}

/// `setWatches` (op 101) with one data watch, `relativeZxid` a leader zxid.
fn set_watches(xid: i32, relative_zxid: i64, path: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let req = SetWatches {
        relative_zxid,
        data: vec![path.into()],
        exist: vec![],
        child: vec![],
    };
    RawZk::request(&mut out, xid, op::SET_WATCHES, &req);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_over_reads_show_follower_stats_and_cas_writes_are_refused() {
    let (mut leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    // The leader's history is longer than what is mirrored (a node written around the
    // proxy), so the two ensembles' zxids differ.
    zk_client(&leader.addr())
        .await
        .create("/around", b"", &persistent())
        .await
        .expect("direct write");
    // NiFi-style state: created, then replaced three times with CAS on its version.
    let c = proxy.client().await;
    c.create("/state", b"s0", &persistent())
        .await
        .expect("create");
    let mut v = 0;
    for i in 1..=3 {
        let st = c
            .set_data("/state", format!("s{i}").as_bytes(), Some(v))
            .await
            .expect("CAS");
        v = st.version;
    }
    let (_, leader_stat) = c.get_data("/state").await.expect("read");
    // A session of the product's codec too, resumed after the failover.
    let raw = RawZk::connect(proxy.addr()).await;
    let (session, passwd) = (raw.session_id, raw.passwd.clone());
    drop(raw);
    proxy.drained().await;
    drop(c);
    leader.kill();
    wait_leader_down(&proxy).await;

    // A real client through the proxy: the follower's copy, with the follower's stat.
    let ro = zk_client_with(
        zkc::Client::connector()
            .with_readonly(true)
            .with_session_timeout(Duration::from_secs(10)),
        &proxy.connect_string(),
    )
    .await;
    let (d, st) = ro.get_data("/state").await.expect("read while failed over");
    assert_eq!(d, b"s3");
    let (_, fstat) = zk_client(&follower.addr())
        .await
        .get_data("/state")
        .await
        .expect("follower read");
    assert_eq!(st, fstat, "the stat is the follower's, unchanged");
    assert_ne!(
        (st.czxid, st.mzxid),
        (leader_stat.czxid, leader_stat.mzxid),
        "zxids in a stat are the follower's"
    );
    // A CAS with the version read from the leader is refused, never applied.
    let e = ro
        .set_data("/state", b"s4", Some(leader_stat.version))
        .await
        .expect_err("CAS while failed over");
    assert_eq!(e, zkc::Error::NotReadOnly);
    let e = ro
        .set_data("/state", b"s4", Some(st.version))
        .await
        .expect_err("CAS with the follower's version");
    assert_eq!(e, zkc::Error::NotReadOnly);
    assert_eq!(
        data(&follower.addr(), "/state").await.as_deref(),
        Some(&b"s3"[..])
    );

    // The same with the product's codec, resuming the leader session: setWatches with a
    // leader zxid is accepted (zxid 0 on the follower: every watched node that exists fires
    // as changed), and closeSession ends the connection.
    let (mut raw, resp) = RawZk::handshake(
        proxy.addr(),
        session,
        passwd,
        leader_stat.mzxid,
        true,
        10_000,
    )
    .await
    .expect("connect while failed over");
    assert_eq!(resp.session_id, session);
    raw.write(&set_watches(-8, leader_stat.mzxid, "/state"))
        .await;
    let mut seen_reply = false;
    let mut notified = false;
    for _ in 0..2 {
        match raw.frame().await {
            Ok(f) => {
                let h = ReplyHeader::from_bytes(&f).expect("header");
                if h.xid == -1 {
                    notified = true;
                } else {
                    assert_eq!((h.xid, h.err), (-8, 0));
                    assert!(h.zxid >= leader_stat.mzxid, "zxid pinned to the leader's");
                    seen_reply = true;
                }
            }
            Err(_) => break,
        }
        if seen_reply && notified {
            break;
        }
    }
    assert!(
        seen_reply && notified,
        "setWatches answered, the watch fired"
    );
    let mut out = BytesMut::new();
    out.put_i32(8);
    out.put_i32(1);
    out.put_i32(op::CLOSE_SESSION);
    raw.write(&out).await;
    let (h, _) = raw.reply().await.expect("closeSession reply");
    assert_eq!((h.xid, h.err), (1, 0));
    assert!(raw.closed_within(Duration::from_secs(10)).await);
    // The proxy still serves reads.
    assert_eq!(ro.get_data("/state").await.expect("read").0, b"s3".to_vec());
}

/// A `zkCli.sh` process group, killed on drop (the script runs java as a child).
struct Cli(u32);

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Reads `zkCli.sh` output lines until one satisfies `want` (40 s bound); returns it.
async fn until<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) if want(&l) => return l,
            Ok(Ok(Some(l))) => seen.push(l),
            other => panic!(
                "zkCli.sh: no expected line ({other:?}); saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// One command line to `zkCli.sh`.
async fn say(stdin: &mut tokio::process::ChildStdin, cmd: &str) {
    use tokio::io::AsyncWriteExt;
    stdin
        .write_all(format!("{cmd}\n").as_bytes())
        .await
        .expect("zkCli.sh stdin");
    stdin.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_client_keeps_its_session_across_a_failover() {
    use std::os::unix::process::CommandExt;
    use tokio::io::AsyncBufReadExt;
    let (mut leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    proxy
        .client()
        .await
        .create("/j", b"mirrored", &persistent())
        .await
        .expect("create");
    proxy.drained().await;

    // zkCli.sh (the Java client; `-r`: it may be read-only) keeps one session throughout,
    // fed one command at a time.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "exec {} -r -server {} 2>&1",
            common::zk::ZKCLI,
            proxy.connect_string()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .process_group(0);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("zkCli.sh");
    let _group = Cli(child.id().expect("pid"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    until(&mut out, |l| l.contains("state:SyncConnected")).await;
    // An ephemeral of this session: listed by `getEphemerals` only in this same session.
    say(&mut stdin, "create -e /je x").await;
    until(&mut out, |l| l.contains("Created /je")).await;
    say(&mut stdin, "get /j").await;
    until(&mut out, |l| l == "mirrored").await;

    // The leader is lost: the client reconnects through the proxy, read-only, on the
    // follower, and reads the mirrored copy; writes are refused.
    leader.kill();
    wait_leader_down(&proxy).await;
    until(&mut out, |l| l.contains("state:ConnectedReadOnly")).await;
    say(&mut stdin, "get /j").await;
    until(&mut out, |l| l == "mirrored").await;
    say(&mut stdin, "set /j w").await;
    until(&mut out, |l| l.contains("Not a read-only call")).await;

    // The leader is back: the same session resumes there (its ephemeral is still its own)
    // and writes again.
    leader.restart().await;
    until(&mut out, |l| l.contains("state:SyncConnected")).await;
    say(&mut stdin, "getEphemerals /").await;
    until(&mut out, |l| l.contains("/je")).await;
    say(&mut stdin, "set /j back").await;
    say(&mut stdin, "get /j").await;
    until(&mut out, |l| l == "back").await;
    say(&mut stdin, "quit").await;
    proxy.drained().await;
    assert_eq!(
        data(&follower.addr(), "/j").await.as_deref(),
        Some(&b"back"[..])
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
