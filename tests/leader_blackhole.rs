//! A leader that goes silent (a lost region drops packets, it does not refuse connections),
//! against real servers: the leader sits behind `FaultRelay`s switched to `Blackhole`, the
//! follower is direct. The same key/znode holds "leader" on the leader and "follower" on the
//! follower (written to each directly), so every read says who answered it.
//!
//! - Redis: a connection pinned to the silent leader is closed once health declares the
//!   leader down (its owed reply gets the leader-lost error), a client that reconnects on
//!   errors reads from the follower within 15 s, and new connections go straight to the
//!   follower.
//! - ZooKeeper: a connection relayed to the silent ensemble is closed once it is declared
//!   down; the session resumes (same id, read-only) on the follower within the session
//!   timeout; a new `zookeeper-client` session reads the follower's copy. And with health
//!   not looking, one client connect to a silent three-server ensemble is bounded by one
//!   `connect_timeout_ms` (not one per server), falls back to the follower in the same
//!   connect, and marks the leader down so the next connect does not try it.
mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::fault::{Fault, FaultRelay};
use common::zk::{persistent, zk_client, zk_client_with, zkc, RawZk, ZkProxy, ZkServer};
use common::{Proxy, Raw, RedisServer, Resp};
use redis::AsyncCommands;
use statemirror::zookeeper::proto::{op, GetDataRequest, GetDataResponse, Record};

const KEY: &str = "nifi/components/blackhole";
const ZNODE: &str = "/blackhole";

/// A client connection with bounded connect and response times (as NiFi's pool has).
async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(Duration::from_secs(2)),
        )
        .await
        .map_err(|e| e.to_string())
}

async fn redis_get(c: &mut redis::aio::MultiplexedConnection) -> Result<String, String> {
    let v: Option<String> = c.get(KEY).await.map_err(|e| e.to_string())?;
    v.ok_or_else(|| "nil".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_silent_leader_closes_pinned_sessions_and_reads_fail_over() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let relay = FaultRelay::start(&leader.addr());
    let via_relay = format!("redis://{}", relay.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        if let Some(r) = c.redis.as_mut() {
            r.leader = via_relay;
        }
    })
    .await;
    // Written to each side directly, after the resync at start: who answers is visible.
    let _: () = leader.conn().await.set(KEY, "leader").await.expect("seed");
    let _: () = follower
        .conn()
        .await
        .set(KEY, "follower")
        .await
        .expect("seed");

    let mut client = redis_conn(&proxy.url()).await.expect("client connects");
    assert_eq!(redis_get(&mut client).await.as_deref(), Ok("leader"));
    let mut pinned = Raw::connect(proxy.addr()).await;
    assert_eq!(pinned.cmd(&["GET", KEY]).await, Resp::bulk("leader"));

    relay.set(Fault::Blackhole);
    let t0 = Instant::now();

    // The pinned session's request goes nowhere; once health declares the leader down the
    // session gets the leader-lost error for it and is closed.
    pinned.send(&["GET", KEY]).await;
    match pinned.read_within(Duration::from_secs(10)).await {
        Ok(Resp::Error(e)) => assert!(e.contains("leader connection lost"), "{e}"),
        other => panic!("expected the leader-lost error, got {other:?}"),
    }
    assert!(
        pinned.closed_within(Duration::from_secs(3)).await,
        "the session pinned to the silent leader is closed"
    );
    let closed_after = t0.elapsed();

    // A client that reconnects on errors is served by the follower within 15 s.
    let deadline = t0 + Duration::from_secs(15);
    let mut answers = Vec::new();
    let served = loop {
        assert!(
            Instant::now() < deadline,
            "no read served by the follower within 15 s; last answers: {:?}",
            &answers[answers.len().saturating_sub(6)..]
        );
        match redis_get(&mut client).await {
            Ok(v) if v == "follower" => break t0.elapsed(),
            Ok(v) => answers.push(v),
            Err(e) => {
                answers.push(e);
                match redis_conn(&proxy.url()).await {
                    Ok(c) => client = c,
                    Err(e) => {
                        answers.push(e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };

    // A new connection while the leader is down goes straight to the follower: were the
    // leader tried, the relay would accept it and the read would hang on the dead leader.
    let t1 = Instant::now();
    let mut fresh = redis_conn(&proxy.url()).await.expect("new connection");
    assert_eq!(redis_get(&mut fresh).await.as_deref(), Ok("follower"));
    let fresh_took = t1.elapsed();
    assert!(
        fresh_took < Duration::from_secs(1),
        "new connection + read took {fresh_took:?}"
    );
    let s = proxy.status().await;
    assert_eq!(s["redis"]["serving"], "follower", "{s}");
    assert_eq!(s["redis"]["leader"]["up"], false, "{s}");
    eprintln!(
        "redis: pinned session closed after {closed_after:?}, follower read after {served:?}, \
         fresh connection + read {fresh_took:?}"
    );
}

/// `getData` on a raw session: (error code, data).
async fn raw_get(raw: &mut RawZk, xid: i32, path: &str) -> (i32, Option<Bytes>) {
    let mut out = BytesMut::new();
    let req = GetDataRequest {
        path: path.into(),
        watch: false,
    };
    RawZk::request(&mut out, xid, op::GET_DATA, &req);
    raw.write(&out).await;
    let (h, body) = raw.reply().await.expect("getData reply");
    assert_eq!(h.xid, xid);
    let data = (h.err == 0)
        .then(|| GetDataResponse::from_bytes(&body).expect("body").data)
        .flatten();
    (h.err, data)
}

/// A standalone leader behind three relays (a "three-server" leader ensemble that can go
/// silent), a standalone follower, the proxy in front, and `ZNODE` seeded on each side.
async fn zk_setup(
    tweak: impl FnOnce(&mut statemirror::config::Config),
) -> (ZkServer, ZkServer, Vec<FaultRelay>, ZkProxy) {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let relays: Vec<FaultRelay> = (0..3).map(|_| FaultRelay::start(&leader.addr())).collect();
    let leader_list = relays
        .iter()
        .map(FaultRelay::addr)
        .collect::<Vec<_>>()
        .join(",");
    let proxy = ZkProxy::start_with(&leader_list, Some(&follower.addr()), tweak).await;
    // Written to each side directly, after the resync at start: who answers is visible.
    for (addr, data) in [(leader.addr(), "leader"), (follower.addr(), "follower")] {
        let c = zk_client(&addr).await;
        c.create(ZNODE, data.as_bytes(), &persistent())
            .await
            .expect("seed");
    }
    (leader, follower, relays, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_silent_leader_ensemble_fails_over_within_session_timeout() {
    let (_leader, _follower, relays, proxy) = zk_setup(|_| {}).await;
    let session_timeout = Duration::from_secs(10);

    let mut raw = RawZk::connect(proxy.addr()).await;
    let (session, passwd) = (raw.session_id, raw.passwd.clone());
    assert_eq!(
        raw_get(&mut raw, 1, ZNODE).await,
        (0, Some(Bytes::from("leader")))
    );
    let client = proxy.client().await;
    let (data, _) = client.get_data(ZNODE).await.expect("read via the leader");
    assert_eq!(data, b"leader");

    for r in &relays {
        r.set(Fault::Blackhole);
    }
    let t0 = Instant::now();

    // The connection relayed to the silent ensemble is closed once it is declared down
    // (the client's own read timeout would take two thirds of its session timeout).
    assert!(
        raw.closed_within(Duration::from_secs(6)).await,
        "the leader-served connection is closed once the leader is declared down"
    );
    let closed_after = t0.elapsed();
    // zookeeper-client does not accept a read-only answer for a read-write session (the
    // Java client does), so this one is just dropped; the raw session resumes like Java's.
    drop(client);

    // Resumed like the Java client does (same session id, readOnly allowed): answered by
    // the follower at once, without a leader attempt.
    let t1 = Instant::now();
    let (mut ro, resp) = RawZk::handshake(proxy.addr(), session, passwd, 0, true, 10_000)
        .await
        .expect("the proxy answers the reconnect");
    let resume_took = t1.elapsed();
    assert_eq!(resp.session_id, session, "the client keeps its session id");
    assert_eq!(resp.read_only, Some(true));
    assert!(
        resume_took < Duration::from_millis(800),
        "reconnect took {resume_took:?}: the silent leader was tried"
    );
    assert_eq!(
        raw_get(&mut ro, 2, ZNODE).await,
        (0, Some(Bytes::from("follower")))
    );

    // A zookeeper-client session (read-only allowed, as NiFi's Curator can be) reads the
    // follower's copy, all within the client's session timeout from the blackhole.
    let c = zk_client_with(
        zkc::Client::connector()
            .with_session_timeout(session_timeout)
            .with_readonly(true),
        &proxy.connect_string(),
    )
    .await;
    let (data, _) = c.get_data(ZNODE).await.expect("read via the follower");
    assert_eq!(data, b"follower");
    let served = t0.elapsed();
    assert!(
        served < session_timeout,
        "follower read after {served:?}, session timeout {session_timeout:?}"
    );
    let s = proxy.status().await;
    assert_eq!(s["zookeeper"]["serving"], "follower", "{s}");
    eprintln!(
        "zookeeper: leader connection closed after {closed_after:?}, session resumed on the \
         follower in {resume_took:?}, zookeeper-client read after {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_connect_to_silent_ensemble_is_bounded_and_marks_it_down() {
    // Health checks (after the first) far away: only client connects judge the leader.
    let (_leader, _follower, relays, proxy) = zk_setup(|c| {
        if let Some(z) = c.zookeeper.as_mut() {
            z.health_interval_ms = 60_000;
            z.connect_timeout_ms = 1_000;
        }
    })
    .await;
    for r in &relays {
        r.set(Fault::Blackhole);
    }
    let mut took = Vec::new();
    for i in 0..2 {
        let t = Instant::now();
        let (mut ro, resp) = RawZk::handshake(
            proxy.addr(),
            0,
            Bytes::from_static(&[0; 16]),
            0,
            true,
            10_000,
        )
        .await
        .expect("answered from the follower in the same connect");
        took.push(t.elapsed());
        assert_eq!(resp.read_only, Some(true), "connect #{i}");
        assert_ne!(resp.session_id, 0, "connect #{i}");
        assert_eq!(
            raw_get(&mut ro, 1, ZNODE).await,
            (0, Some(Bytes::from("follower"))),
            "connect #{i}"
        );
        let s = proxy.status().await;
        assert_eq!(
            s["zookeeper"]["leader"]["up"], false,
            "after connect #{i}: {s}"
        );
    }
    // One 1 s bound for all three silent servers, then the follower: not 2 s per server
    // (6 s, longer than many clients' connect timeout).
    assert!(took[0] < Duration::from_millis(2_500), "{took:?}");
    // The timed-out connect marked the leader down: the next one does not try it.
    assert!(took[1] < Duration::from_millis(800), "{took:?}");
    eprintln!("zookeeper: connects to a silent ensemble took {took:?}");
}
