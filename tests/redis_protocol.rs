//! Redis protocol coverage through the proxy, against real redis-servers: every data type,
//! pipelining, RESP3, NiFi's WATCH/MULTI replace, pub/sub, blocking pops, AUTH, SELECT and
//! a concurrent mixed workload. Each test checks what the client sees and, where it wrote,
//! that the follower ends up identical to the leader once the mirror has drained.
//!
//! Metrics are process-global: the one test that reads them holds `metrics_exclusive`,
//! every other test `metrics_shared`.
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, PushKind, Value};

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

async fn setup() -> (RedisServer, RedisServer, Proxy) {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    (leader, follower, proxy)
}

async fn q<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn nifi_state(v: &str) -> String {
    format!(r#"{{"version":1,"encodingVersion":1,"stateValues":{{"k":"{v}"}}}}"#)
}

/// Strings (text and binary), lists, sets, sorted sets, hashes, streams with a consumer
/// group, HyperLogLog, bitmaps and geo sets all round-trip through the proxy and reach the
/// follower with the same type, value and TTL.
#[tokio::test]
async fn every_data_type_round_trips_and_is_mirrored() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut c = proxy.conn().await;

    let binary: Vec<u8> = (0..=255u8).chain(*b"\r\n\0\r\n").collect();
    let _: () = c.set("t:str", "hello").await.unwrap();
    let _: () = c.set("t:bin", &binary).await.unwrap();
    let _: () = c.set_ex("t:ttl", "expiring", 300).await.unwrap();
    // A binary key (CR, LF, NUL inside) and a 4 MiB value (many reads on every link).
    let bin_key: &[u8] = b"t:key\r\n\0\xff";
    let _: () = c.set(bin_key, "binary key").await.unwrap();
    let large: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let _: () = c.set("t:large", &large).await.unwrap();
    let _: () = c.rpush("t:list", &["a", "b", "c"]).await.unwrap();
    let _: () = c.sadd("t:set", &["x", "y", "z"]).await.unwrap();
    let _: () = c
        .zadd_multiple("t:zset", &[(1.5, "one"), (2.0, "two"), (-3.0, "neg")])
        .await
        .unwrap();
    let _: () = c
        .hset_multiple("t:hash", &[("f1", "v1"), ("f2", "v2")])
        .await
        .unwrap();
    let id: String = q(&mut c, &["XADD", "t:stream", "1-1", "f", "v1"]).await;
    assert_eq!(id, "1-1");
    let _: String = q(&mut c, &["XADD", "t:stream", "2-1", "f", "v2"]).await;
    let _: () = q(&mut c, &["XGROUP", "CREATE", "t:stream", "g", "0"]).await;
    // XREADGROUP writes (pending entries list); its keys follow the STREAMS keyword.
    let read: Value = q(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "consumer-1",
            "COUNT",
            "1",
            "STREAMS",
            "t:stream",
            ">",
        ],
    )
    .await;
    assert!(
        matches!(read, Value::Array(ref v) if v.len() == 1),
        "{read:?}"
    );
    let added: i64 = q(&mut c, &["PFADD", "t:hll", "a", "b", "c", "d", "a"]).await;
    assert_eq!(added, 1);
    let _: i64 = q(&mut c, &["SETBIT", "t:bits", "7", "1"]).await;
    let _: i64 = q(&mut c, &["SETBIT", "t:bits", "100", "1"]).await;
    let geo: i64 = q(
        &mut c,
        &[
            "GEOADD",
            "t:geo",
            "13.361389",
            "38.115556",
            "Palermo",
            "15.087269",
            "37.502669",
            "Catania",
        ],
    )
    .await;
    assert_eq!(geo, 2);

    // Read everything back through the proxy.
    assert_eq!(c.get::<_, String>("t:str").await.unwrap(), "hello");
    assert_eq!(c.get::<_, Vec<u8>>("t:bin").await.unwrap(), binary);
    assert_eq!(c.get::<_, String>(bin_key).await.unwrap(), "binary key");
    assert_eq!(c.get::<_, Vec<u8>>("t:large").await.unwrap(), large);
    let ttl: i64 = c.ttl("t:ttl").await.unwrap();
    assert!((298..=300).contains(&ttl), "ttl {ttl}");
    let list: Vec<String> = c.lrange("t:list", 0, -1).await.unwrap();
    assert_eq!(list, ["a", "b", "c"]);
    let mut set: Vec<String> = c.smembers("t:set").await.unwrap();
    set.sort();
    assert_eq!(set, ["x", "y", "z"]);
    let z: Vec<(String, f64)> = c.zrange_withscores("t:zset", 0, -1).await.unwrap();
    assert_eq!(
        z,
        [
            ("neg".to_string(), -3.0),
            ("one".to_string(), 1.5),
            ("two".to_string(), 2.0)
        ]
    );
    let h: HashMap<String, String> = c.hgetall("t:hash").await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h["f1"], "v1");
    let xlen: i64 = q(&mut c, &["XLEN", "t:stream"]).await;
    assert_eq!(xlen, 2);
    // PFCOUNT is left for after the comparison: it rewrites the HLL's cached cardinality
    // (see `pfcount_cache_update_is_mirrored`).
    let bit: i64 = q(&mut c, &["GETBIT", "t:bits", "100"]).await;
    assert_eq!(bit, 1);
    let bits: i64 = q(&mut c, &["BITCOUNT", "t:bits"]).await;
    assert_eq!(bits, 2);
    let km: f64 = q(&mut c, &["GEODIST", "t:geo", "Palermo", "Catania", "km"]).await;
    assert!((km - 166.27).abs() < 0.1, "{km}");

    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 13);
    // Spot checks on the follower itself (the comparison above goes through the same client).
    let mut f = follower.conn().await;
    assert_eq!(f.get::<_, Vec<u8>>("t:bin").await.unwrap(), binary);
    let count: i64 = q(&mut c, &["PFCOUNT", "t:hll"]).await;
    assert_eq!(count, 4);
    let count: i64 = q(&mut f, &["PFCOUNT", "t:hll"]).await;
    assert_eq!(count, 4);
    let km: f64 = q(&mut f, &["GEODIST", "t:geo", "Palermo", "Catania", "km"]).await;
    assert!((km - 166.27).abs() < 0.1, "{km}");
    let pending: Value = q(&mut f, &["XPENDING", "t:stream", "g"]).await;
    assert!(
        matches!(&pending, Value::Array(v) if v.first() == Some(&Value::Int(1))),
        "{pending:?}"
    );
}

/// PFCOUNT is flagged `readonly` by Redis 7.0 but refreshes the cardinality cache in the HLL
/// header. That cache is derived data (a follower whose cache is marked stale recomputes the
/// same count), so statemirror treats PFCOUNT as a read and does not copy the key: the
/// registers match, the count matches, only the 8 cache bytes differ (the comparison masks
/// them).
#[tokio::test]
async fn pfcount_cache_refresh_is_not_state() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut c = proxy.conn().await;
    let added: i64 = q(&mut c, &["PFADD", "hll", "a", "b", "c"]).await;
    assert_eq!(added, 1);
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
    let count: i64 = q(&mut c, &["PFCOUNT", "hll"]).await;
    assert_eq!(count, 3);
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
    let mut f = follower.conn().await;
    let count: i64 = q(&mut f, &["PFCOUNT", "hll"]).await;
    assert_eq!(count, 3);
}

/// 1,000 commands written in one go come back as 1,000 replies in request order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_1000_commands_keeps_reply_order() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut raw = Raw::connect(proxy.addr()).await;
    let mut wire = Vec::new();
    for i in 0..1000 {
        let (k, prev, v) = (
            format!("p:{i}"),
            format!("p:{}", i.max(1) - 1),
            format!("v{i}"),
        );
        let args: Vec<&[u8]> = match i % 3 {
            0 => vec![b"SET", k.as_bytes(), v.as_bytes()],
            1 => vec![b"GET", prev.as_bytes()],
            _ => vec![b"INCR", b"p:counter"],
        };
        wire.extend_from_slice(&encode(&args));
    }
    raw.write(&wire).await;
    for i in 0..1000 {
        let got = raw.read().await;
        let want = match i % 3 {
            0 => Resp::Simple("OK".into()),
            1 => Resp::bulk(format!("v{}", i - 1)),
            _ => Resp::Int(i / 3 + 1),
        };
        assert_eq!(got, want, "reply #{i}");
    }
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 334 + 1);
}

/// RESP3 by hand: `HELLO 3` answers with a `%` map, later replies use RESP3 types (`%` for
/// HGETALL, `_` for nil, `,` for doubles), and pub/sub messages arrive as `>` pushes while
/// normal commands keep working on the same connection.
#[tokio::test]
async fn resp3_hello_map_replies_and_push_messages_raw() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut c = Raw::connect(proxy.addr()).await;
    let hello = c.cmd(&["HELLO", "3"]).await;
    let Resp::Map(fields) = &hello else {
        panic!("HELLO 3 should answer with a map: {hello:?}")
    };
    assert!(
        fields.contains(&(Resp::bulk("proto"), Resp::Int(3))),
        "{hello:?}"
    );
    assert_eq!(
        c.cmd(&["HSET", "r3:h", "a", "1", "b", "2"]).await,
        Resp::Int(2)
    );
    let all = c.cmd(&["HGETALL", "r3:h"]).await;
    let Resp::Map(mut pairs) = all else {
        panic!("HGETALL in RESP3 should be a map: {all:?}")
    };
    pairs.sort_by_key(|(k, _)| k.text());
    assert_eq!(
        pairs,
        [
            (Resp::bulk("a"), Resp::bulk("1")),
            (Resp::bulk("b"), Resp::bulk("2"))
        ]
    );
    assert_eq!(c.cmd(&["GET", "r3:missing"]).await, Resp::Nil);
    assert_eq!(c.cmd(&["ZADD", "r3:z", "1.5", "m"]).await, Resp::Int(1));
    assert_eq!(
        c.cmd(&["ZSCORE", "r3:z", "m"]).await,
        Resp::Double("1.5".into())
    );

    // Pub/sub in RESP3: confirmations and messages are pushes; commands still work.
    assert_eq!(
        c.cmd(&["SUBSCRIBE", "r3:ch"]).await,
        Resp::Push(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("r3:ch"),
            Resp::Int(1)
        ])
    );
    let mut p = proxy.conn().await;
    let n: i64 = p.publish("r3:ch", "hi").await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        c.read().await,
        Resp::Push(vec![
            Resp::bulk("message"),
            Resp::bulk("r3:ch"),
            Resp::bulk("hi")
        ])
    );
    assert_eq!(
        c.cmd(&["SET", "r3:while-subscribed", "x"]).await,
        Resp::Simple("OK".into())
    );
    assert_eq!(
        c.cmd(&["GET", "r3:while-subscribed"]).await,
        Resp::bulk("x")
    );

    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 3);
}

/// The redis crate speaking RESP3 (`?protocol=resp3`) through the proxy: maps decode, and a
/// message published on another connection is delivered as a RESP3 push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_client_library_and_pubsub_push() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let url = format!("{}/?protocol=resp3", proxy.url());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .unwrap();
    let _: () = c
        .hset_multiple("r3c:h", &[("a", "1"), ("b", "2")])
        .await
        .unwrap();
    let v: Value = q(&mut c, &["HGETALL", "r3c:h"]).await;
    assert!(matches!(&v, Value::Map(m) if m.len() == 2), "{v:?}");

    c.subscribe("r3c:events").await.unwrap();
    let mut publisher = proxy.conn().await;
    let n: i64 = publisher.publish("r3c:events", "payload").await.unwrap();
    assert_eq!(n, 1);
    let msg = tokio::time::timeout(WAIT, async {
        loop {
            let p = rx.recv().await.expect("push channel open");
            if p.kind == PushKind::Message {
                return p;
            }
        }
    })
    .await
    .expect("RESP3 push delivered");
    assert_eq!(msg.data, vec![bulk("r3c:events"), bulk("payload")]);
    // Still a working connection for normal commands while subscribed (RESP3 allows it).
    let _: () = c.set("r3c:after", "ok").await.unwrap();
    assert_eq!(c.get::<_, String>("r3c:after").await.unwrap(), "ok");

    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 2);
}

/// NiFi's RedisStateProvider replace on one connection: WATCH, GET, MULTI, GETSET, EXEC. EXEC
/// answers a non-empty array and the new state reaches the follower.
#[tokio::test]
async fn nifi_replace_sequence_on_one_connection() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let key = "nifi/components/0a1b2c3d-0187-1000-9c1f-5e0d1b2c3d4e";
    let mut c = proxy.conn().await;
    let mut previous: Option<String> = None;
    for round in 1..=3 {
        let new = nifi_state(&format!("round-{round}"));
        let ok: Value = q(&mut c, &["WATCH", key]).await;
        assert_eq!(ok, Value::Okay);
        let cur: Option<String> = q(&mut c, &["GET", key]).await;
        assert_eq!(cur, previous);
        assert_eq!(q::<Value>(&mut c, &["MULTI"]).await, Value::Okay);
        let queued: Value = q(&mut c, &["GETSET", key, &new]).await;
        assert_eq!(queued, Value::SimpleString("QUEUED".into()));
        let exec: Value = q(&mut c, &["EXEC"]).await;
        let old = match &previous {
            Some(p) => bulk(p),
            None => Value::Nil,
        };
        assert_eq!(exec, Value::Array(vec![old]), "round {round}");
        previous = Some(new);
    }
    proxy.drained().await;
    let mut f = follower.conn().await;
    assert_eq!(f.get::<_, Option<String>>(key).await.unwrap(), previous);
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// Two NiFi nodes race on one component: both WATCH and GET, A commits first and wins (EXEC
/// array), B's EXEC returns nil because the watched key changed. The follower holds A's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nifi_replace_race_second_exec_returns_nil() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let key = "nifi/components/7e57c0de-0187-1000-aaaa-000000000001";
    let initial = nifi_state("initial");
    let mut a = proxy.conn().await;
    let mut b = proxy.conn().await;
    let _: () = a.set(key, &initial).await.unwrap();

    for c in [&mut a, &mut b] {
        assert_eq!(q::<Value>(c, &["WATCH", key]).await, Value::Okay);
        assert_eq!(q::<String>(c, &["GET", key]).await, initial);
    }
    let (va, vb) = (nifi_state("from-a"), nifi_state("from-b"));
    assert_eq!(q::<Value>(&mut a, &["MULTI"]).await, Value::Okay);
    let _: Value = q(&mut a, &["GETSET", key, &va]).await;
    assert_eq!(
        q::<Value>(&mut a, &["EXEC"]).await,
        Value::Array(vec![bulk(&initial)])
    );
    assert_eq!(q::<Value>(&mut b, &["MULTI"]).await, Value::Okay);
    assert_eq!(
        q::<Value>(&mut b, &["GETSET", key, &vb]).await,
        Value::SimpleString("QUEUED".into())
    );
    assert_eq!(q::<Value>(&mut b, &["EXEC"]).await, Value::Nil);

    proxy.drained().await;
    assert_eq!(a.get::<_, String>(key).await.unwrap(), va);
    let mut f = follower.conn().await;
    assert_eq!(f.get::<_, String>(key).await.unwrap(), va);
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// `KEYS nifi/components/*` (how NiFi lists state) returns exactly the component keys.
#[tokio::test]
async fn keys_pattern_lists_nifi_components() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut c = proxy.conn().await;
    let mut want = Vec::new();
    for i in 0..5 {
        let k = format!("nifi/components/00000000-0000-1000-8000-00000000000{i}");
        let _: () = c.set(&k, nifi_state(&i.to_string())).await.unwrap();
        want.push(k);
    }
    let _: () = c.set("nifi/other", "x").await.unwrap();
    let _: () = c.set("unrelated", "y").await.unwrap();
    let mut got: Vec<String> = c.keys("nifi/components/*").await.unwrap();
    got.sort();
    assert_eq!(got, want);
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 7);
}

/// RESP2 pub/sub by hand: SUBSCRIBE and PSUBSCRIBE receive messages PUBLISHed on another
/// proxied connection; after UNSUBSCRIBE/PUNSUBSCRIBE the connection is a normal one again.
/// PUBLISH creates no key on the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_subscribe_psubscribe_unsubscribe() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut sub = Raw::connect(proxy.addr()).await;
    sub.send(&["SUBSCRIBE", "news", "alerts"]).await;
    assert_eq!(
        sub.read().await,
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("news"),
            Resp::Int(1)
        ])
    );
    assert_eq!(
        sub.read().await,
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("alerts"),
            Resp::Int(2)
        ])
    );
    assert_eq!(
        sub.cmd(&["PSUBSCRIBE", "sport.*"]).await,
        Resp::Array(vec![
            Resp::bulk("psubscribe"),
            Resp::bulk("sport.*"),
            Resp::Int(3)
        ])
    );

    let mut publisher = proxy.conn().await;
    let n: i64 = publisher.publish("news", "hello").await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(sub.read().await, Resp::bulks(&["message", "news", "hello"]));
    let n: i64 = publisher.publish("sport.tennis", "ace").await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        sub.read().await,
        Resp::bulks(&["pmessage", "sport.*", "sport.tennis", "ace"])
    );
    // PING in subscribed RESP2 mode answers ["pong", ""].
    assert_eq!(sub.cmd(&["PING"]).await, Resp::bulks(&["pong", ""]));

    // UNSUBSCRIBE with no channel: one confirmation per channel (in any order).
    sub.send(&["UNSUBSCRIBE"]).await;
    let mut left = Vec::new();
    for _ in 0..2 {
        match sub.read().await {
            Resp::Array(v) if v.len() == 3 && v[0] == Resp::bulk("unsubscribe") => {
                left.push(v[1].text().unwrap())
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    left.sort();
    assert_eq!(left, ["alerts", "news"]);
    assert_eq!(
        sub.cmd(&["PUNSUBSCRIBE"]).await,
        Resp::Array(vec![
            Resp::bulk("punsubscribe"),
            Resp::bulk("sport.*"),
            Resp::Int(0)
        ])
    );
    // UNSUBSCRIBE with nothing subscribed still gets its one confirmation (nil channel).
    assert_eq!(
        sub.cmd(&["UNSUBSCRIBE"]).await,
        Resp::Array(vec![Resp::bulk("unsubscribe"), Resp::Nil, Resp::Int(0)])
    );
    // A normal connection again.
    assert_eq!(sub.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    assert_eq!(
        sub.cmd(&["SET", "after:unsub", "v"]).await,
        Resp::Simple("OK".into())
    );
    assert_eq!(sub.cmd(&["GET", "after:unsub"]).await, Resp::bulk("v"));
    let n: i64 = publisher.publish("news", "nobody listens").await.unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        sub.read_within(Duration::from_millis(200)).await,
        Err(ReadEnd::TimedOut),
        "no message after unsubscribing"
    );

    proxy.drained().await;
    let mut f = follower.conn().await;
    let keys: Vec<String> = f.keys("*").await.unwrap();
    assert_eq!(keys, ["after:unsub"], "PUBLISH must not create keys");
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// BLPOP blocks through the proxy until another client pushes; the popped element is gone
/// from the follower's copy of the list too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_blocks_until_push_and_mirrors_the_pop() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut blocked = proxy.conn().await;
    let waiter = tokio::spawn(async move {
        let r: (String, String) = blocked.blpop("bq", 0.0).await.unwrap();
        r
    });
    // Wait until the leader really has a client blocked.
    let mut l = leader.conn().await;
    eventually(WAIT, || {
        let mut l = l.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query_async(&mut l)
                .await
                .map_err(|e| e.to_string())?;
            if info.contains("blocked_clients:1") {
                Ok(())
            } else {
                Err(info)
            }
        }
    })
    .await;
    let mut pusher = proxy.conn().await;
    let n: i64 = pusher.rpush("bq", &["first", "second"]).await.unwrap();
    assert_eq!(n, 2);
    let popped = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(popped, ("bq".to_string(), "first".to_string()));

    proxy.drained().await;
    let rest: Vec<String> = l.lrange("bq", 0, -1).await.unwrap();
    assert_eq!(rest, ["second"]);
    let mut f = follower.conn().await;
    let rest: Vec<String> = f.lrange("bq", 0, -1).await.unwrap();
    assert_eq!(rest, ["second"]);
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// Password-protected backends: statemirror authenticates its own connections from the
/// URLs, clients must AUTH themselves (NOAUTH otherwise), and their writes are mirrored.
#[tokio::test]
async fn auth_required_by_backends() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let follower = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let (lp, fp) = (leader.port, follower.port);
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        let r = cfg.redis.as_mut().unwrap();
        r.leader = format!("redis://:s3cret@127.0.0.1:{lp}");
        r.follower = Some(format!("redis://:s3cret@127.0.0.1:{fp}"));
    })
    .await;

    let mut c = Raw::connect(proxy.addr()).await;
    let denied = c.cmd(&["SET", "auth:k", "nope"]).await;
    assert!(
        matches!(&denied, Resp::Error(e) if e.starts_with("NOAUTH")),
        "{denied:?}"
    );
    let denied = c.cmd(&["GET", "auth:k"]).await;
    assert!(
        matches!(&denied, Resp::Error(e) if e.starts_with("NOAUTH")),
        "{denied:?}"
    );
    let wrong = c.cmd(&["AUTH", "wrong"]).await;
    assert!(wrong.is_error(), "{wrong:?}");
    assert_eq!(c.cmd(&["AUTH", "s3cret"]).await, Resp::Simple("OK".into()));
    assert_eq!(
        c.cmd(&["SET", "auth:k", "yes"]).await,
        Resp::Simple("OK".into())
    );
    assert_eq!(c.cmd(&["GET", "auth:k"]).await, Resp::bulk("yes"));
    // HELLO 3 with AUTH in one go (how RESP3 clients log in).
    let mut c3 = Raw::connect(proxy.addr()).await;
    let hello = c3.cmd(&["HELLO", "3", "AUTH", "default", "s3cret"]).await;
    assert!(matches!(hello, Resp::Map(_)), "{hello:?}");
    assert_eq!(c3.cmd(&["SADD", "auth:s", "m"]).await, Resp::Int(1));
    // The client library authenticating from its URL works too.
    let url = format!("redis://:s3cret@{}", proxy.addr());
    let mut lib = client(&url).await;
    let _: () = lib.hset("auth:h", "f", "v").await.unwrap();

    proxy.drained().await;
    let mut f = client(&format!("redis://:s3cret@127.0.0.1:{fp}")).await;
    assert_eq!(f.get::<_, String>("auth:k").await.unwrap(), "yes");
    // The comparison helper connects without a password: lift it now that writes are done.
    for port in [lp, fp] {
        let mut s = client(&format!("redis://:s3cret@127.0.0.1:{port}")).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("")
            .query_async(&mut s)
            .await
            .unwrap();
    }
    assert_eq!(assert_same_data(&leader, &follower).await, 3);
}

/// Writes after SELECT land in the same database on the follower, including a SELECT inside
/// MULTI and MOVE to another database.
#[tokio::test]
async fn select_writes_are_mirrored_into_the_same_db() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut c = Raw::connect(proxy.addr()).await;
    let ok = Resp::Simple("OK".into());
    assert_eq!(c.cmd(&["SELECT", "3"]).await, ok);
    assert_eq!(c.cmd(&["SET", "db3:k", "three"]).await, ok);
    assert_eq!(c.cmd(&["RPUSH", "db3:l", "a", "b"]).await, Resp::Int(2));
    // SELECT inside a transaction takes effect for the writes after it.
    assert_eq!(c.cmd(&["MULTI"]).await, ok);
    assert_eq!(c.cmd(&["SELECT", "5"]).await, Resp::Simple("QUEUED".into()));
    assert_eq!(
        c.cmd(&["SET", "db5:k", "five"]).await,
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        Resp::Array(vec![ok.clone(), ok.clone()])
    );
    // Now in db 5; MOVE a key to db 7.
    assert_eq!(c.cmd(&["SET", "moved", "m"]).await, ok);
    assert_eq!(c.cmd(&["MOVE", "moved", "7"]).await, Resp::Int(1));
    // A library connection on db 3 by URL (it sends SELECT itself).
    let mut lib = client(&format!("{}/3", proxy.url())).await;
    let _: () = lib.set("db3:lib", "x").await.unwrap();

    proxy.drained().await;
    let mut f3 = client(&format!("{}/3", follower.url())).await;
    assert_eq!(f3.get::<_, String>("db3:k").await.unwrap(), "three");
    let mut f0 = follower.conn().await;
    let in0: Vec<String> = f0.keys("*").await.unwrap();
    assert!(in0.is_empty(), "nothing belongs in db 0: {in0:?}");
    let mut f5 = client(&format!("{}/5", follower.url())).await;
    let in5: Vec<String> = f5.keys("*").await.unwrap();
    assert_eq!(in5, ["db5:k"]);
    let mut f7 = client(&format!("{}/7", follower.url())).await;
    assert_eq!(f7.get::<_, String>("moved").await.unwrap(), "m");
    assert_eq!(assert_same_data(&leader, &follower).await, 5);
}

/// One worker of the mixed workload: a fixed sequence of operations over its own and shared
/// keys, so all workers race on the shared ones.
async fn mixed_worker(mut c: MultiplexedConnection, w: usize, iterations: usize) {
    let set_and_count = redis::Script::new(
        "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])",
    );
    // Non-deterministic inside a script (allowed in Redis 7, effects are replicated).
    const POP_SCRIPT: &str = "local m = redis.call('SPOP', KEYS[1]) \
        if m then redis.call('SET', KEYS[2], m) end \
        redis.call('SADD', KEYS[1], ARGV[1], ARGV[2]) \
        local r = redis.call('SRANDMEMBER', KEYS[1]) \
        redis.call('HSET', KEYS[3], ARGV[1], r) \
        return m";
    for i in 0..iterations {
        let tag = format!("w{w}:{i}");
        let res: redis::RedisResult<Value> =
            match (i + w) % 12 {
                0 => {
                    redis::pipe()
                        .atomic()
                        .incr("mix:counter", 1)
                        .hset("mix:tx:h", format!("w{w}"), i)
                        .lpush("mix:tx:list", &tag)
                        .ltrim("mix:tx:list", 0, 49)
                        .query_async(&mut c)
                        .await
                }
                1 if i % 2 == 0 => {
                    set_and_count
                        .key(format!("mix:eval:{w}"))
                        .key("mix:evalcount")
                        .arg(&tag)
                        .invoke_async(&mut c)
                        .await
                }
                1 => redis::cmd("EVAL")
                    .arg("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])")
                    .arg(2)
                    .arg(format!("mix:eval:{w}"))
                    .arg("mix:evalcount")
                    .arg(&tag)
                    .query_async(&mut c)
                    .await,
                2 => {
                    redis::cmd("EVAL")
                        .arg(POP_SCRIPT)
                        .arg(3)
                        .arg("mix:pool")
                        .arg(format!("mix:popped:{w}"))
                        .arg("mix:rand")
                        .arg(format!("a{tag}"))
                        .arg(format!("b{tag}"))
                        .query_async(&mut c)
                        .await
                }
                3 => {
                    let _: i64 = c.sadd("mix:pool", &tag).await.unwrap();
                    c.spop("mix:pool").await
                }
                4 => c.set_ex(format!("mix:ex:{w}:{}", i % 10), &tag, 100).await,
                5 => c.expire("mix:counter", 100 + i as i64).await,
                6 => c.incr("mix:counter", 1).await,
                7 => {
                    let qk = format!("mix:q:{}", w % 2);
                    let _: i64 = c.lpush(&qk, &tag).await.unwrap();
                    c.blpop(&qk, 0.05).await
                }
                8 => {
                    c.hset(format!("mix:h:{w}"), format!("f{}", i % 20), i)
                        .await
                }
                9 => c.zadd("mix:z", format!("m{w}:{}", i % 30), i).await,
                10 => {
                    redis::cmd("XADD")
                        .arg("mix:stream")
                        .arg("MAXLEN")
                        .arg(100)
                        .arg("*")
                        .arg("w")
                        .arg(w)
                        .arg("i")
                        .arg(i)
                        .query_async(&mut c)
                        .await
                }
                _ => c.append("mix:append", format!("{w}.")).await,
            };
        if let Err(e) = res {
            panic!("worker {w} iteration {i}: {e}");
        }
    }
}

/// 8 connections run transactions, scripts (with SPOP/SRANDMEMBER inside), SPOP, SET EX,
/// EXPIRE, INCR, LPUSH/BLPOP, HSET, ZADD, XADD * and APPEND races on shared keys at once.
/// Once drained the follower equals the leader (type, value, TTL ±1 s); /metrics counts
/// this sidecar's mirrored writes exactly as its /status does, and its write requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_concurrent_workload_converges() {
    let _metrics = metrics_exclusive().await;
    let (leader, follower, proxy) = setup().await;
    let before = proxy.metrics().await;
    let mirrored_status_before = mirrored_writes(&proxy).await;
    const WORKERS: usize = 8;
    const ITERATIONS: usize = 300;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let c = proxy.conn().await;
        tasks.push(tokio::spawn(mixed_worker(c, w, ITERATIONS)));
    }
    tokio::time::timeout(Duration::from_secs(90), async {
        for t in tasks {
            t.await.expect("worker panicked");
        }
    })
    .await
    .expect("workload finished in time");

    // Every APPEND landed exactly once, whatever the interleaving.
    let appends: usize = (0..WORKERS)
        .map(|w| (0..ITERATIONS).filter(|i| (i + w) % 12 == 11).count() * 2)
        .sum();
    let mut c = proxy.conn().await;
    let len: usize = c.strlen("mix:append").await.unwrap();
    assert_eq!(len, appends);

    proxy.drained().await;
    let n = assert_same_data(&leader, &follower).await;
    assert!(n > 30, "only {n} keys compared");

    // Metrics are process-global: this test holds `metrics_exclusive`, so the deltas below
    // are this sidecar's alone.
    let after = proxy.metrics().await;
    let mirrored = delta(&before, &after, MIRRORED, &[("protocol", "redis")]);
    let mirrored_status = mirrored_writes(&proxy).await - mirrored_status_before;
    assert!(mirrored_status > 0, "nothing mirrored");
    assert_eq!(mirrored, mirrored_status as f64, "metric vs /status");
    let writes = delta(&before, &after, REQUESTS, LEADER_WRITES);
    assert!(
        writes >= (WORKERS * ITERATIONS) as f64 / 2.0,
        "{writes} write requests counted"
    );
    // Exact counts for a known sequence on one connection.
    let before = proxy.metrics().await;
    for i in 0..10 {
        let _: () = c.set(format!("count:{i}"), i).await.unwrap();
    }
    for i in 0..5 {
        let _: Option<String> = c.get(format!("count:{i}")).await.unwrap();
    }
    let after = proxy.metrics().await;
    assert_eq!(delta(&before, &after, REQUESTS, LEADER_WRITES), 10.0);
    assert_eq!(delta(&before, &after, REQUESTS, LEADER_READS), 5.0);
}

const MIRRORED: &str = "statemirror_mirrored_writes_total";
const REQUESTS: &str = "statemirror_requests_total";
const LEADER_WRITES: &[(&str, &str)] = &[
    ("protocol", "redis"),
    ("kind", "write"),
    ("route", "leader"),
];
const LEADER_READS: &[(&str, &str)] =
    &[("protocol", "redis"), ("kind", "read"), ("route", "leader")];

/// How much one series grew between two `/metrics` texts.
fn delta(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(after, name, labels).unwrap_or(0.0) - metric(before, name, labels).unwrap_or(0.0)
}

/// This sidecar's own count of writes applied to the follower (`/status`).
async fn mirrored_writes(proxy: &Proxy) -> u64 {
    proxy.status().await["redis"]["mirror"]["mirrored_writes"]
        .as_u64()
        .expect("mirrored_writes")
}

/// Writes that carry their value (`SET`, `DEL`, `SETEX`) are mirrored without reading the
/// leader, unless another write to the same key was in flight at the same time: then the
/// order Redis used is unknown to the proxy and the key is copied instead. Each round ends
/// with 8 connections overwriting one key at the same instant (the case where the proxy may
/// see the acknowledgements in another order than Redis ran them); after every round the
/// follower must hold the leader's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_overwrites_of_hot_keys_converge() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(proxy.conn().await);
    }
    for round in 0..40u32 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(conns.len()));
        let mut tasks = Vec::new();
        for (n, mut c) in conns.drain(..).enumerate() {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10u32 {
                    let key = format!("hot:{}", i % 3);
                    let r: redis::RedisResult<()> = match (i + n as u32) % 4 {
                        0 => c.del(&key).await,
                        1 => c.set_ex(&key, format!("ex{n}"), 100).await,
                        2 => c.append(&key, "+").await.map(|_: i64| ()),
                        _ => c.set(&key, format!("v{n}")).await,
                    };
                    r.expect("write through the proxy");
                }
                barrier.wait().await;
                let _: () = c
                    .set("hot:final", format!("r{round}-c{n}"))
                    .await
                    .expect("SET");
                c
            }));
        }
        for t in tasks {
            conns.push(t.await.expect("writer task"));
        }
        proxy.drained().await;
        if let Err(e) = compare_data(&leader, &follower).await {
            panic!("round {round}: {e}");
        }
    }
}

/// Requests cut at odd places — inside a length, between CR and LF, inside a 300 KiB value
/// that spans many reads, several requests and a half in one write — arrive whole and in
/// order, and are mirrored. A connection with nothing buffered reads into its worker's
/// shared buffer and keeps only an unfinished frame's bytes (`session_io::read_from_client`):
/// this is the path where a frame straddles that hand-over.
#[tokio::test]
async fn requests_cut_anywhere_across_reads_arrive_whole() {
    let _metrics = metrics_shared().await;
    let (leader, follower, proxy) = setup().await;
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let mut stream = Vec::new();
    let mut expect = 0;
    for i in 0..20 {
        let key = format!("cut:{i}");
        let value = format!("value-{i}-{}", "x".repeat(i * 37));
        stream.extend_from_slice(&encode(&[b"SET", key.as_bytes(), value.as_bytes()]));
        stream.extend_from_slice(&encode(&[b"GET", key.as_bytes()]));
        expect += 2;
    }
    stream.extend_from_slice(&encode(&[b"SET", b"cut:big", &big]));
    stream.extend_from_slice(&encode(&[b"GET", b"cut:big"]));
    stream.extend_from_slice(&encode(&[b"PING"]));
    expect += 3;

    let mut raw = Raw::connect(proxy.addr()).await;
    // Chunk sizes cycle through 1..=7 bytes, then larger ones; a pause after each chunk
    // lets the proxy read it on its own.
    let sizes = [1usize, 2, 3, 5, 7, 11, 4096, 70_000];
    let (mut at, mut k) = (0, 0);
    let started = std::time::Instant::now();
    while at < stream.len() {
        let n = sizes[k % sizes.len()].min(stream.len() - at);
        raw.write(&stream[at..at + n]).await;
        at += n;
        k += 1;
        if k % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sending took too long"
        );
    }
    let mut replies = Vec::new();
    for _ in 0..expect {
        replies.push(raw.read().await);
    }
    for i in 0..20 {
        assert_eq!(replies[2 * i].text().as_deref(), Some("OK"), "SET cut:{i}");
        let value = format!("value-{i}-{}", "x".repeat(i * 37));
        assert_eq!(replies[2 * i + 1], Resp::bulk(&value), "GET cut:{i}");
    }
    assert_eq!(replies[40].text().as_deref(), Some("OK"), "SET cut:big");
    assert_eq!(replies[41], Resp::bulk(&big), "GET cut:big");
    assert_eq!(replies[42].text().as_deref(), Some("PONG"));
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 21);
}
