//! Many ZooKeeper sessions through one sidecar at once, each pipelining reads, writes,
//! watches and requests the proxy answers itself: every session gets every reply in request
//! order with its own xids and never a zxid going back, its watch notifications arrive, the
//! follower ends equal to the leader, and the request counters (kept per connection and
//! added to the shared metrics in batches) are exact once the replies are in.
//!
//! Every test starts its own servers and proxy; every wait is bounded.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use common::zk::{assert_same_tree, open_acl, RawZk, ZkProxy, ZkServer};
use statemirror::zookeeper::proto::{
    create_mode, err, op, CheckVersionRequest, CreateRequest, ExistsRequest, GetDataRequest,
    GetDataResponse, Record, ReplyHeader, SetDataRequest,
};

const SESSIONS: usize = 32;
const ROUNDS: usize = 20;
/// Requests per round (see `round`).
const PER_ROUND: usize = 5;
/// Reads each session sends one at a time at the end.
const SEQUENTIAL: i32 = 3;

fn node(i: usize, k: usize) -> String {
    format!("/s/n{i}-{k}")
}

/// One round of session `i`: create a node, set a watch on it, change it (the watch
/// fires), a standalone `check` (answered by the proxy with UNIMPLEMENTED, between replies
/// the server sends), read it back. Xids `k * PER_ROUND + 1 ..`.
fn round(out: &mut BytesMut, i: usize, k: usize) {
    let x = (k * PER_ROUND) as i32;
    let path = node(i, k);
    let create = CreateRequest {
        path: path.clone(),
        data: Some(Bytes::from(format!("{i}.{k}"))),
        acl: open_acl(),
        flags: create_mode::PERSISTENT,
    };
    RawZk::request(out, x + 1, op::CREATE, &create);
    let exists = ExistsRequest {
        path: path.clone(),
        watch: true,
    };
    RawZk::request(out, x + 2, op::EXISTS, &exists);
    let set = SetDataRequest {
        path: path.clone(),
        data: Some(Bytes::from(format!("{i}.{k}.set"))),
        version: -1,
    };
    RawZk::request(out, x + 3, op::SET_DATA, &set);
    let check = CheckVersionRequest {
        path: path.clone(),
        version: -1,
    };
    RawZk::request(out, x + 4, op::CHECK, &check);
    let get = GetDataRequest { path, watch: false };
    RawZk::request(out, x + 5, op::GET_DATA, &get);
}

/// Session `i`: everything pipelined in a few writes, then every frame read and checked.
/// Returned open: the counters must be exact before any connection ends.
async fn session(proxy: std::net::SocketAddr, i: usize) -> RawZk {
    let (mut raw, _) = RawZk::handshake(proxy, 0, Bytes::from_static(&[0; 16]), 0, false, 30_000)
        .await
        .expect("session");
    // Several writes, so the proxy sees both whole batches and frames split across reads.
    for chunk in (0..ROUNDS).collect::<Vec<_>>().chunks(7) {
        let mut out = BytesMut::new();
        for &k in chunk {
            round(&mut out, i, k);
        }
        let (a, b) = out.split_at(out.len() / 2 + 3);
        raw.write(a).await;
        raw.write(b).await;
    }
    let total = ROUNDS * PER_ROUND;
    let (mut next, mut notifications, mut last_zxid) = (1, 0, 0i64);
    while next <= total || notifications < ROUNDS {
        let f = raw
            .frame()
            .await
            .unwrap_or_else(|e| panic!("session {i}: ended at xid {next}: {e:?}"));
        let h = ReplyHeader::from_bytes(&f).expect("reply header");
        if h.xid == -1 {
            notifications += 1;
            continue;
        }
        assert_eq!(h.xid, next as i32, "session {i}: reply out of order");
        assert!(
            h.zxid >= last_zxid,
            "session {i}: zxid went back at xid {next}"
        );
        last_zxid = h.zxid;
        let (k, step) = ((next - 1) / PER_ROUND, (next - 1) % PER_ROUND);
        let want = if step == 3 {
            err::UNIMPLEMENTED
        } else {
            err::OK
        };
        assert_eq!(h.err, want, "session {i}: xid {next}");
        if step == 4 {
            let r = GetDataResponse::from_bytes(&f.slice(16..)).expect("getData reply");
            assert_eq!(r.data.as_deref(), Some(format!("{i}.{k}.set").as_bytes()));
        }
        next += 1;
    }
    assert_eq!(
        notifications, ROUNDS,
        "session {i}: one notification per watch"
    );
    // Then a few reads one at a time, as most clients do.
    for x in 0..SEQUENTIAL {
        let mut out = BytesMut::new();
        let get = GetDataRequest {
            path: node(i, 0),
            watch: false,
        };
        let xid = (total + 1) as i32 + x;
        RawZk::request(&mut out, xid, op::GET_DATA, &get);
        raw.write(&out).await;
        let (h, _) = raw.reply().await.expect("getData reply");
        assert_eq!((h.xid, h.err), (xid, err::OK), "session {i}");
    }
    raw
}

fn metric(text: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("statemirror_requests_total{"))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_interleaved_get_every_reply_in_order_and_exact_counts() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let mut setup = RawZk::connect(proxy.addr()).await;
    let mut out = BytesMut::new();
    let root = CreateRequest {
        path: "/s".into(),
        data: None,
        acl: open_acl(),
        flags: create_mode::PERSISTENT,
    };
    RawZk::request(&mut out, 1, op::CREATE, &root);
    setup.write(&out).await;
    assert_eq!(setup.reply().await.expect("create /s").0.err, err::OK);
    let zk = ("protocol", "zookeeper");
    let before = proxy.metrics().await;

    let tasks: Vec<_> = (0..SESSIONS)
        .map(|i| tokio::spawn(session(proxy.addr(), i)))
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        open.push(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("sessions finished")
                .expect("session task"),
        );
    }

    // Read right after the last replies, every connection still open: the counters were
    // flushed before the replies went out.
    let after = proxy.metrics().await;
    let delta = |labels: &[(&str, &str)]| metric(&after, labels) - metric(&before, labels);
    let n = (SESSIONS * ROUNDS) as f64;
    let leader_route = ("route", "leader");
    let sequential = (SESSIONS as i32 * SEQUENTIAL) as f64;
    assert_eq!(
        delta(&[zk, ("kind", "read"), leader_route]),
        2.0 * n + sequential
    );
    assert_eq!(delta(&[zk, ("kind", "write"), leader_route]), 2.0 * n);
    assert_eq!(delta(&[zk, ("kind", "write"), ("route", "rejected")]), n);
    drop(open);

    proxy.drained().await;
    let nodes = assert_same_tree(&leader.addr(), &follower.addr()).await;
    assert!(nodes > SESSIONS * ROUNDS, "{nodes} nodes");
    let m = proxy.mirror_status().await;
    assert_eq!(m["in_sync"], true, "{m}");
    assert_eq!(m["dropped_writes"], 0, "{m}");
    assert_eq!(m["mirrored_writes"], 1 + 2 * SESSIONS * ROUNDS, "{m}");
}
