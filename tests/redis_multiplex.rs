//! `[redis] multiplex`: many clients on a few shared leader connections, against real
//! redis-servers. Replies stay correct and in order per client; what needs a connection of
//! its own (WATCH/MULTI, SELECT, BLPOP, SUBSCRIBE, CLIENT REPLY) pins and comes back;
//! a shared connection killed on the leader fails only the requests in flight on it; the
//! follower ends equal to the leader.
mod common;

use std::time::Duration;

use common::*;

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

async fn setup(shared_connections: usize) -> (RedisServer, RedisServer, Proxy) {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.multiplex = true;
        r.multiplex_connections = shared_connections;
    })
    .await;
    (leader, follower, proxy)
}

fn int(r: &Resp) -> i64 {
    match r {
        Resp::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// The follower holds what the leader holds, and verify agrees.
async fn follower_equal(leader: &RedisServer, follower: &RedisServer, proxy: &Proxy) {
    proxy.drained().await;
    assert_same_data(leader, follower).await;
    assert_verify_zero(&proxy.admin(), "redis").await;
}

/// 50 clients interleave SET/GET: every reply is the client's own, in order, while the
/// leader sees a few connections rather than 50; the follower ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_share_few_connections_replies_in_order() {
    let _m = metrics_shared().await;
    let (leader, follower, proxy) = setup(2).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Raw::connect(proxy.addr()).await);
    }
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for round in 0..40 {
                let (k, v) = (format!("mux:{i}:{}", round % 5), format!("{i}-{round}"));
                assert_eq!(c.cmd(&["SET", &k, &v]).await, Resp::Simple("OK".into()));
                assert_eq!(c.cmd(&["GET", &k]).await, Resp::bulk(&v), "client {i}");
                assert_eq!(
                    int(&c.cmd(&["INCR", &format!("mux:n:{i}")]).await),
                    round + 1
                );
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    // All 50 still connected: 2 shared connections plus the sidecar's own (health check,
    // mirror reads), far fewer than the clients.
    let n = redis_clients(&leader).await;
    assert!(n < 10, "{n} leader connections for 50 multiplexed clients");
    follower_equal(&leader, &follower, &proxy).await;
    drop(clients);
}

/// Pipelines of 100 from 20 clients at once: each gets its 100 replies, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelines_of_100_from_many_clients_in_order() {
    let _m = metrics_shared().await;
    let (leader, follower, proxy) = setup(2).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = proxy.addr();
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            let key = format!("pipe:{i}");
            let mut batch = Vec::new();
            for j in 0..100 {
                if j % 2 == 0 {
                    batch.extend(encode(&[b"INCR", key.as_bytes()]));
                } else {
                    batch.extend(encode(&[b"ECHO", format!("{i}:{j}").as_bytes()]));
                }
            }
            for _ in 0..3 {
                c.write(&batch).await;
            }
            for round in 0..3 {
                for j in 0..100i64 {
                    let r = c.read().await;
                    if j % 2 == 0 {
                        assert_eq!(int(&r), round * 50 + j / 2 + 1, "client {i}");
                    } else {
                        assert_eq!(r, Resp::bulk(format!("{i}:{j}")), "client {i}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    follower_equal(&leader, &follower, &proxy).await;
}

/// NiFi's replace (WATCH, GET, MULTI, GETSET, EXEC) from 8 clients racing on one key: the
/// transactions pin, lost races retry, no increment is lost, the follower ends equal, and
/// each client is back on the shared connection afterwards (`CLIENT ID` says which).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nifi_sequence_under_contention_pins_and_returns_to_sharing() {
    let _m = metrics_shared().await;
    let (leader, follower, proxy) = setup(1).await;
    let key = "nifi/components/0a1b2c3d-0187-1000-9c1f-5e0d1b2c3d4e";
    let mut setup_c = Raw::connect(proxy.addr()).await;
    assert_eq!(
        setup_c.cmd(&["SET", key, "0"]).await,
        Resp::Simple("OK".into())
    );
    let shared_id = int(&setup_c.cmd(&["CLIENT", "ID"]).await);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = proxy.addr();
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            let mut done = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while done < 10 {
                assert!(tokio::time::Instant::now() < deadline, "client {i} starved");
                assert_eq!(c.cmd(&["WATCH", key]).await, Resp::Simple("OK".into()));
                let cur: i64 = c
                    .cmd(&["GET", key])
                    .await
                    .text()
                    .expect("value")
                    .parse()
                    .expect("number");
                assert_eq!(c.cmd(&["MULTI"]).await, Resp::Simple("OK".into()));
                let next = (cur + 1).to_string();
                assert_eq!(
                    c.cmd(&["GETSET", key, &next]).await,
                    Resp::Simple("QUEUED".into())
                );
                match c.cmd(&["EXEC"]).await {
                    Resp::Array(r) => {
                        assert_eq!(r, vec![Resp::bulk(cur.to_string())]);
                        done += 1;
                    }
                    Resp::Nil => {} // lost the race: WATCH fired
                    other => panic!("EXEC: {other:?}"),
                }
            }
            // Back at a safe point in db 0: shared again, and working.
            assert_eq!(
                int(&c.cmd(&["CLIENT", "ID"]).await),
                shared_id,
                "client {i} shares again"
            );
            assert_eq!(
                c.cmd(&["SET", &format!("after:{i}"), "x"]).await,
                Resp::Simple("OK".into())
            );
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(setup_c.cmd(&["GET", key]).await, Resp::bulk("80"));
    follower_equal(&leader, &follower, &proxy).await;
}

/// `SELECT 3` pins; the `SET` after it lands in db 3 on both sides; `SELECT 0` brings the
/// client back to sharing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn select_pins_and_writes_land_in_that_database() {
    let _m = metrics_shared().await;
    let (leader, follower, proxy) = setup(1).await;
    let mut other = Raw::connect(proxy.addr()).await;
    let shared_id = int(&other.cmd(&["CLIENT", "ID"]).await);
    let mut c = Raw::connect(proxy.addr()).await;
    assert_eq!(c.cmd(&["SELECT", "3"]).await, Resp::Simple("OK".into()));
    assert_eq!(
        c.cmd(&["SET", "in3", "v3"]).await,
        Resp::Simple("OK".into())
    );
    assert_ne!(int(&c.cmd(&["CLIENT", "ID"]).await), shared_id);
    // A sharing client is still in db 0.
    assert_eq!(other.cmd(&["GET", "in3"]).await, Resp::Nil);
    assert_eq!(c.cmd(&["SELECT", "0"]).await, Resp::Simple("OK".into()));
    assert_eq!(int(&c.cmd(&["CLIENT", "ID"]).await), shared_id);
    assert_eq!(
        c.cmd(&["SET", "in0", "v0"]).await,
        Resp::Simple("OK".into())
    );
    proxy.drained().await;
    for (server, who) in [(&leader, "leader"), (&follower, "follower")] {
        let mut d = Raw::connect(server.addr().parse().expect("addr")).await;
        assert_eq!(d.cmd(&["SELECT", "3"]).await, Resp::Simple("OK".into()));
        assert_eq!(d.cmd(&["GET", "in3"]).await, Resp::bulk("v3"), "{who} db 3");
        assert_eq!(d.cmd(&["GET", "in0"]).await, Resp::Nil, "{who} db 3");
        assert_eq!(d.cmd(&["SELECT", "0"]).await, Resp::Simple("OK".into()));
        assert_eq!(d.cmd(&["GET", "in0"]).await, Resp::bulk("v0"), "{who} db 0");
    }
    follower_equal(&leader, &follower, &proxy).await;
}

/// A `BLPOP` pins: the clients sharing the connection are not held behind it, and it gets
/// the element pushed later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blpop_pins_and_does_not_block_others() {
    let _m = metrics_shared().await;
    let (leader, follower, proxy) = setup(1).await;
    let mut blocked = Raw::connect(proxy.addr()).await;
    blocked.send(&["BLPOP", "queue", "0"]).await;
    let waiter = tokio::spawn(async move {
        let r = blocked.read_within(Duration::from_secs(30)).await;
        (blocked, r)
    });
    for i in 0..10 {
        let mut c = Raw::connect(proxy.addr()).await;
        let k = format!("free:{i}");
        assert_eq!(c.cmd(&["SET", &k, "v"]).await, Resp::Simple("OK".into()));
        assert_eq!(c.cmd(&["GET", &k]).await, Resp::bulk("v"));
    }
    assert!(
        !waiter.is_finished(),
        "BLPOP returned before anything was pushed"
    );
    let mut pusher = Raw::connect(proxy.addr()).await;
    assert_eq!(int(&pusher.cmd(&["RPUSH", "queue", "job"]).await), 1);
    let (mut blocked, r) = waiter.await.expect("waiter");
    assert_eq!(r, Ok(Resp::bulks(&["queue", "job"])));
    // And it goes on (back to sharing).
    assert_eq!(
        blocked.cmd(&["SET", "after", "1"]).await,
        Resp::Simple("OK".into())
    );
    follower_equal(&leader, &follower, &proxy).await;
}

/// `SUBSCRIBE` pins and the subscriber gets what is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_pins_and_gets_messages() {
    let _m = metrics_shared().await;
    let (leader, follower, proxy) = setup(1).await;
    let mut sub = Raw::connect(proxy.addr()).await;
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "news"]).await,
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("news"),
            Resp::Int(1)
        ])
    );
    let mut publisher = Raw::connect(proxy.addr()).await;
    assert_eq!(int(&publisher.cmd(&["PUBLISH", "news", "hello"]).await), 1);
    assert_eq!(sub.read().await, Resp::bulks(&["message", "news", "hello"]));
    follower_equal(&leader, &follower, &proxy).await;
}

/// `CLIENT REPLY OFF` pins: its writes still run, are mirrored, and the client's replies
/// resume with `CLIENT REPLY ON`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_reply_off_pins() {
    let _m = metrics_shared().await;
    let (leader, follower, proxy) = setup(1).await;
    let mut other = Raw::connect(proxy.addr()).await;
    let mut quiet = Raw::connect(proxy.addr()).await;
    quiet.send(&["CLIENT", "REPLY", "OFF"]).await;
    quiet.send(&["SET", "quiet:a", "1"]).await;
    quiet.send(&["SET", "quiet:b", "2"]).await;
    // Once they ran, a client sharing meanwhile still gets its replies (the reply mode is
    // the quiet client's connection's, not the shared one's).
    eventually(WAIT, || async {
        let mut d = Raw::connect(leader.addr().parse().expect("addr")).await;
        match d.cmd(&["GET", "quiet:b"]).await {
            Resp::Bulk(b) if b == b"2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(other.cmd(&["GET", "quiet:a"]).await, Resp::bulk("1"));
    assert_eq!(
        quiet.cmd(&["CLIENT", "REPLY", "ON"]).await,
        Resp::Simple("OK".into())
    );
    assert_eq!(quiet.cmd(&["GET", "quiet:b"]).await, Resp::bulk("2"));
    follower_equal(&leader, &follower, &proxy).await;
}

/// `CLIENT KILL` of the shared connection on the leader while two clients have requests
/// in flight on it (held by `CLIENT PAUSE WRITE`): those two get the lost-connection
/// error, a third sharing client with nothing in flight sees nothing, and all three go on
/// over a new shared connection. The write that never ran leaves the follower equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_shared_connection_fails_only_what_was_in_flight() {
    let _m = metrics_shared().await;
    let (leader, follower, proxy) = setup(1).await;
    let (mut a, mut b, mut idle) = (
        Raw::connect(proxy.addr()).await,
        Raw::connect(proxy.addr()).await,
        Raw::connect(proxy.addr()).await,
    );
    let shared_id = int(&a.cmd(&["CLIENT", "ID"]).await);
    assert_eq!(int(&idle.cmd(&["CLIENT", "ID"]).await), shared_id);
    let mut direct = Raw::connect(leader.addr().parse().expect("addr")).await;
    assert_eq!(
        direct.cmd(&["CLIENT", "PAUSE", "5000", "WRITE"]).await,
        Resp::Simple("OK".into())
    );
    // The SET reaches the leader and waits behind the pause (`flags=b`); then the GET is
    // queued unread behind it (the query buffer holds it).
    a.send(&["SET", "never", "ran"]).await;
    paused_on_leader(&leader, shared_id, false).await;
    b.send(&["GET", "anything"]).await;
    paused_on_leader(&leader, shared_id, true).await;
    assert_eq!(
        int(&direct
            .cmd(&["CLIENT", "KILL", "ID", &shared_id.to_string()])
            .await),
        1
    );
    assert_eq!(
        direct.cmd(&["CLIENT", "UNPAUSE"]).await,
        Resp::Simple("OK".into())
    );
    for (c, who) in [(&mut a, "a"), (&mut b, "b")] {
        match c.read().await {
            Resp::Error(e) => assert!(e.contains("leader connection lost"), "{who}: {e}"),
            other => panic!("{who}: {other:?}"),
        }
    }
    for (c, who) in [(&mut a, "a"), (&mut b, "b"), (&mut idle, "idle")] {
        assert_eq!(
            c.cmd(&["SET", &format!("after:{who}"), "1"]).await,
            Resp::Simple("OK".into()),
            "{who}"
        );
        assert_ne!(int(&c.cmd(&["CLIENT", "ID"]).await), shared_id, "{who}");
    }
    assert_eq!(a.cmd(&["GET", "never"]).await, Resp::Nil);
    follower_equal(&leader, &follower, &proxy).await;
}

/// Waits until connection `id` on the leader is blocked by a pause (and, with `queued`,
/// has more requests unread behind the blocked one).
async fn paused_on_leader(leader: &RedisServer, id: i64, queued: bool) {
    let id = id.to_string();
    eventually(WAIT, || async {
        let mut d = Raw::connect(leader.addr().parse().expect("addr")).await;
        let line = d
            .cmd(&["CLIENT", "LIST", "ID", &id])
            .await
            .text()
            .unwrap_or_default();
        if line.contains("flags=b") && (!queued || !line.contains(" qbuf=0 ")) {
            Ok(())
        } else {
            Err(line)
        }
    })
    .await
}

/// A leader that stops reading (`SIGSTOP`) while a client pipelines 40 MiB of `SET`s: the
/// shared connection's unsent bytes are bounded as a connection of one's own is (the
/// client is no longer read past `BACKEND_OUT_HIGH`), so the client's writes stall instead
/// of the proxy taking all 40 MiB into memory; after `SIGCONT` every `SET` is answered.
/// (No follower: with one, the leader declared down would close the client meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_stops_reading_stalls_clients_not_proxy_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _m = metrics_shared().await;
    let leader = RedisServer::start();
    let proxy = Proxy::start_with(&leader, None, |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.multiplex = true;
        r.multiplex_connections = 1;
    })
    .await;
    let mut warm = Raw::connect(proxy.addr()).await;
    assert_eq!(warm.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    const N: usize = 640;
    let value = "v".repeat(64 * 1024);
    let mut pipeline = Vec::new();
    for i in 0..N {
        let key = format!("big{i}");
        pipeline.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    let stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let (mut r, mut w) = stream.into_split();
    let frozen = Frozen::new(leader.pid());
    let writer = tokio::spawn(async move {
        w.write_all(&pipeline).await.expect("write");
        w
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !writer.is_finished(),
        "the proxy took 40 MiB of requests while the leader read nothing"
    );
    drop(frozen);
    let _w = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writes finish once the leader reads")
        .expect("writer");
    let want = b"+OK\r\n".repeat(N);
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got))
        .await
        .expect("replies in time")
        .expect("replies");
    assert_eq!(got, want, "every SET answered OK, in order");
    let mut d = Raw::connect(leader.addr().parse().expect("addr")).await;
    assert_eq!(d.cmd(&["DBSIZE"]).await, Resp::Int(N as i64));
}

/// A leader declared down (frozen until its health checks fail) ends the shared
/// connections when a follower can serve: none stays open to what may be a black hole, and
/// once the leader is back new clients share a fresh connection, not the one that went
/// silent with requests in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_declared_down_ends_its_shared_connections() {
    let _m = metrics_shared().await;
    let (leader, _follower, proxy) = setup(1).await;
    let mut a = Raw::connect(proxy.addr()).await;
    let old = int(&a.cmd(&["CLIENT", "ID"]).await);
    let leader_up = |up: bool| {
        let proxy = &proxy;
        async move {
            eventually(WAIT, || async {
                let s = proxy.status().await;
                match s["redis"]["leader"]["up"].as_bool() {
                    Some(u) if u == up => Ok(()),
                    _ => Err(s.to_string()),
                }
            })
            .await
        }
    };
    let frozen = Frozen::new(leader.pid());
    leader_up(false).await;
    drop(frozen);
    leader_up(true).await;
    let old_id = old.to_string();
    eventually(WAIT, || async {
        let mut d = Raw::connect(leader.addr().parse().expect("addr")).await;
        let line = d.cmd(&["CLIENT", "LIST", "ID", &old_id]).await;
        match line.text() {
            Some(t) if t.trim().is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut b = Raw::connect(proxy.addr()).await;
    assert_eq!(
        b.cmd(&["SET", "after", "1"]).await,
        Resp::Simple("OK".into())
    );
    assert_ne!(int(&b.cmd(&["CLIENT", "ID"]).await), old);
}

/// Connections the leader has accepted so far (`INFO stats`).
async fn leader_connections(leader: &RedisServer) -> i64 {
    redis_info(leader, "stats", "total_connections_received")
        .await
        .and_then(|v| v.parse().ok())
        .expect("total_connections_received")
}

/// NiFi's state update on one pooled connection: `GET` (getState, shared), then
/// `WATCH`/`GET`/`MULTI`/`GETSET`/`EXEC` (pinned). Returns the value it replaced.
async fn nifi_update(c: &mut Raw, key: &str, next: &str) -> Resp {
    let before = c.cmd(&["GET", key]).await;
    assert_eq!(c.cmd(&["WATCH", key]).await, Resp::Simple("OK".into()));
    assert_eq!(c.cmd(&["GET", key]).await, before);
    assert_eq!(c.cmd(&["MULTI"]).await, Resp::Simple("OK".into()));
    assert_eq!(
        c.cmd(&["GETSET", key, next]).await,
        Resp::Simple("QUEUED".into())
    );
    match c.cmd(&["EXEC"]).await {
        Resp::Array(r) if r.len() == 1 => r[0].clone(),
        other => panic!("EXEC: {other:?}"),
    }
}

/// The getState `GET` between NiFi's replaces sends the client back to sharing, and each
/// `WATCH` pins it again: the pins reuse a warm connection (`multiplex_spare_connections`)
/// instead of opening one each, so 30 updates cost the leader no new connection. A spare
/// whose leader was restarted meanwhile is not used (its EOF is seen first): the next
/// update still succeeds. The follower ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nifi_updates_reuse_a_spare_connection_and_skip_a_dead_one() {
    let _m = metrics_shared().await;
    let (mut leader, follower, proxy) = setup(1).await;
    let key = "nifi/components/spare";
    let mut c = Raw::connect(proxy.addr()).await;
    let shared_id = int(&c.cmd(&["CLIENT", "ID"]).await);
    assert_eq!(nifi_update(&mut c, key, "0").await, Resp::Nil);
    let opened = leader_connections(&leader).await;
    for n in 1..=30 {
        let prev = (n - 1).to_string();
        assert_eq!(
            nifi_update(&mut c, key, &n.to_string()).await,
            Resp::bulk(&prev)
        );
    }
    // (The one more is this check's own connection.)
    assert_eq!(
        leader_connections(&leader).await,
        opened + 1,
        "pins reused the spare"
    );
    assert_eq!(
        int(&c.cmd(&["CLIENT", "ID"]).await),
        shared_id,
        "shares again"
    );
    assert!(
        proxy
            .metric("statemirror_redis_pins_total", &[("connection", "spare")])
            .await
            >= 30.0
    );
    follower_equal(&leader, &follower, &proxy).await;

    // The leader restarts (empty) on its port; the client is still connected.
    leader.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // The shared connection died with the old leader: its first request may be lost.
        match c.cmd(&["PING"]).await {
            Resp::Simple(s) if s == "PONG" => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "proxy never reached the restarted leader: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(nifi_update(&mut c, key, "after").await, Resp::Nil);
    assert_eq!(c.cmd(&["GET", key]).await, Resp::bulk("after"));
}
