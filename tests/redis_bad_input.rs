//! Hostile and broken clients, on raw TCP sockets: malformed RESP, oversized requests,
//! garbage, clients that never read, too many connections, idle connections. The proxy must
//! answer like Redis (a `-ERR Protocol error` then close), write nothing half-parsed, and
//! keep serving everyone else.
//!
//! Metrics are process-global: the one test that reads them holds `metrics_exclusive`,
//! every other test `metrics_shared`.
mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);

fn ok() -> Resp {
    Resp::Simple("OK".into())
}

/// Reads the next reply, checks it is a protocol error, and checks the proxy then closes.
async fn expect_protocol_error_and_close(c: &mut Raw, what: &str) {
    match c.read_within(WAIT).await {
        Ok(Resp::Error(e)) if e.starts_with("ERR Protocol error") => {}
        other => panic!("{what}: expected -ERR Protocol error, got {other:?}"),
    }
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "{what}: connection not closed after the protocol error"
    );
}

async fn exists(server: &RedisServer, key: &str) -> bool {
    let mut c = server.conn().await;
    c.exists(key).await.unwrap()
}

/// Malformed frames of several kinds each get `-ERR Protocol error…` and a close, while a
/// client that was already connected keeps working throughout.
#[tokio::test]
async fn malformed_resp_is_answered_and_closed_others_unaffected() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut bystander = Raw::connect(proxy.addr()).await;
    assert_eq!(bystander.cmd(&["PING"]).await, Resp::Simple("PONG".into()));

    let cases: &[(&str, &[u8])] = &[
        ("integer inside a request", b"*2\r\n:1\r\n"),
        ("non-numeric bulk length", b"*1\r\n$x\r\n"),
        ("negative bulk length", b"*1\r\n$-5\r\n"),
        ("bulk not CRLF-terminated", b"*1\r\n$1\r\nab\r\n"),
        ("CR without LF", b"*1\r\r"),
        ("non-numeric multibulk length", b"*zz\r\n"),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let mut bad = Raw::connect(proxy.addr()).await;
        bad.write(bytes).await;
        expect_protocol_error_and_close(&mut bad, what).await;
        let k = format!("still-fine:{i}");
        assert_eq!(bystander.cmd(&["SET", &k, "v"]).await, ok(), "{what}");
        assert_eq!(bystander.cmd(&["GET", &k]).await, Resp::bulk("v"));
    }
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, cases.len());
}

/// A bulk length above `max_request_bytes`, or a request whose arguments add up to more,
/// is refused before anything reaches the leader: error, close, no key anywhere. A request
/// just under the limit still works.
#[tokio::test]
async fn oversized_request_is_refused_and_writes_nothing() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        cfg.redis.as_mut().unwrap().max_request_bytes = 1024;
    })
    .await;

    // One bulk announced larger than the limit (only the header is sent).
    let mut c = Raw::connect(proxy.addr()).await;
    c.write(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$2000\r\n").await;
    expect_protocol_error_and_close(&mut c, "bulk length over the limit").await;

    // The whole oversized frame sent at once: refused the same way, even though the proxy
    // stops reading in the middle of it.
    let huge = "h".repeat(200_000);
    let mut c = Raw::connect(proxy.addr()).await;
    let _ = c
        .stream
        .write_all(&encode(&[b"SET", b"huge", huge.as_bytes()]))
        .await;
    expect_protocol_error_and_close(&mut c, "whole oversized frame").await;

    // Several bulks, each under the limit, together over it (whole frame sent).
    let part = "x".repeat(500);
    let mut c = Raw::connect(proxy.addr()).await;
    c.send(&["RPUSH", "big-list", &part, &part, &part]).await;
    expect_protocol_error_and_close(&mut c, "request over the limit").await;

    // Under the limit: fine.
    let fits = "y".repeat(900);
    let mut c = Raw::connect(proxy.addr()).await;
    assert_eq!(c.cmd(&["SET", "fits", &fits]).await, ok());

    proxy.drained().await;
    for key in ["big", "huge", "big-list"] {
        assert!(!exists(&leader, key).await, "{key} written on the leader");
        assert!(
            !exists(&follower, key).await,
            "{key} written on the follower"
        );
    }
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// More arguments than `max_request_args` (multibulk or inline) is refused: error, close,
/// nothing written. Exactly the limit is accepted.
#[tokio::test]
async fn too_many_arguments_are_refused() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        cfg.redis.as_mut().unwrap().max_request_args = 8;
    })
    .await;

    // Header alone announces too many.
    let mut c = Raw::connect(proxy.addr()).await;
    c.write(b"*20\r\n").await;
    expect_protocol_error_and_close(&mut c, "multibulk header over the limit").await;

    // A complete 12-argument write.
    let mut args = vec!["RPUSH", "many"];
    args.extend(["e"; 10]);
    let mut c = Raw::connect(proxy.addr()).await;
    c.send(&args).await;
    expect_protocol_error_and_close(&mut c, "multibulk request over the limit").await;

    // The same as an inline command.
    let mut c = Raw::connect(proxy.addr()).await;
    c.write(b"RPUSH many-inline a b c d e f g h i j\r\n").await;
    expect_protocol_error_and_close(&mut c, "inline request over the limit").await;

    // Exactly 8 arguments is fine.
    let mut c = Raw::connect(proxy.addr()).await;
    assert_eq!(
        c.cmd(&["RPUSH", "ok-list", "a", "b", "c", "d", "e", "f"])
            .await,
        Resp::Int(6)
    );

    proxy.drained().await;
    for key in ["many", "many-inline"] {
        assert!(!exists(&leader, key).await, "{key} written on the leader");
    }
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// Garbage, half a frame, or a huge line followed by EOF: no panic, nothing executed, and
/// the proxy keeps serving new and existing clients.
#[tokio::test]
async fn garbage_then_eof_does_not_hurt_the_proxy() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut bystander = Raw::connect(proxy.addr()).await;
    assert_eq!(bystander.cmd(&["PING"]).await, Resp::Simple("PONG".into()));

    let mut noise: Vec<u8> = Vec::new();
    let mut x: u32 = 0x2545_f491;
    for _ in 0..4096 {
        // xorshift: deterministic bytes of every value, newlines excluded.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let b = (x & 0xff) as u8;
        noise.push(if b == b'\n' { 0 } else { b });
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary noise without newline", noise.clone()),
        (
            "half a SET",
            b"*3\r\n$3\r\nSET\r\n$7\r\npartial\r\n$5\r\nval".to_vec(),
        ),
        ("a header and nothing else", b"*1000\r\n".to_vec()),
        ("multibulk prefix only", b"*".to_vec()),
        ("NUL bytes", vec![0u8; 100]),
    ];
    for (what, bytes) in &cases {
        let mut c = Raw::connect(proxy.addr()).await;
        c.write(bytes).await;
        c.stream.shutdown().await.ok();
        assert!(
            c.closed_within(WAIT).await,
            "{what}: proxy did not close after EOF"
        );
    }
    // Garbage followed by a newline is an inline command Redis does not know: an error
    // reply, and the connection stays usable.
    let mut c = Raw::connect(proxy.addr()).await;
    let mut line = noise[..64].to_vec();
    // Without quotes (unbalanced ones are a protocol error that closes, as in Redis) and
    // NULs (Redis stops looking for the line end at one).
    line.retain(|b| !matches!(b, b'\r' | b'*' | b'"' | b'\'' | 0));
    line.insert(0, b'x');
    line.extend_from_slice(b"\r\n");
    c.write(&line).await;
    assert!(c.read().await.is_error());
    assert_eq!(c.cmd(&["PING"]).await, Resp::Simple("PONG".into()));

    // The proxy is fine: old and new connections work, the half SET never ran.
    assert_eq!(bystander.cmd(&["SET", "after-garbage", "1"]).await, ok());
    let mut fresh = Raw::connect(proxy.addr()).await;
    assert_eq!(fresh.cmd(&["GET", "after-garbage"]).await, Resp::bulk("1"));
    let (code, _) = proxy.http("GET", "/healthz", None).await;
    assert_eq!(code, 200);
    assert!(!exists(&leader, "partial").await);
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// A valid SET, then a malformed frame, in one write: the SET's `+OK` comes first, then the
/// protocol error, then the close; the SET is mirrored. An open MULTI cut short by a
/// malformed frame never runs, so nothing of it is written or mirrored.
#[tokio::test]
async fn valid_request_before_malformed_one_is_answered_and_mirrored() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;

    let mut c = Raw::connect(proxy.addr()).await;
    let mut wire = encode(&[b"SET", b"before-bad", b"v1"]);
    wire.extend_from_slice(b"*2\r\n:1\r\n");
    c.write(&wire).await;
    assert_eq!(c.read().await, ok());
    expect_protocol_error_and_close(&mut c, "malformed frame after SET").await;

    let mut c = Raw::connect(proxy.addr()).await;
    let mut wire = encode(&[b"MULTI"]);
    wire.extend_from_slice(&encode(&[b"SET", b"in-multi", b"v"]));
    wire.extend_from_slice(&encode(&[b"INCR", b"in-multi-counter"]));
    wire.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\r");
    c.write(&wire).await;
    assert_eq!(c.read().await, ok());
    assert_eq!(c.read().await, Resp::Simple("QUEUED".into()));
    assert_eq!(c.read().await, Resp::Simple("QUEUED".into()));
    expect_protocol_error_and_close(&mut c, "malformed EXEC").await;

    proxy.drained().await;
    let mut f = follower.conn().await;
    assert_eq!(
        f.get::<_, Option<String>>("before-bad").await.unwrap(),
        Some("v1".into())
    );
    for key in ["in-multi", "in-multi-counter"] {
        assert!(!exists(&leader, key).await, "{key} ran on the leader");
        assert!(!exists(&follower, key).await, "{key} on the follower");
    }
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// A client that pipelines GETs of a large value and never reads is closed after
/// `client_write_timeout_ms`; other clients are served meanwhile and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_closed() {
    let _metrics = metrics_exclusive().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        cfg.redis.as_mut().unwrap().client_write_timeout_ms = 500;
    })
    .await;
    let big = vec![b'z'; 1 << 20];
    let mut l = leader.conn().await;
    let _: () = l.set("big", &big).await.unwrap();

    let mut other = Raw::connect(proxy.addr()).await;
    assert_eq!(other.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    let slow_before = proxy.metric(CLIENT_ERRORS, SLOW_CLIENT).await;
    let mut slow = Raw::connect(proxy.addr()).await;
    // Its session is up (and counted) once it has been answered.
    assert_eq!(slow.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    // 64 MiB of replies: far more than the socket buffers hold.
    let mut wire = Vec::new();
    for _ in 0..64 {
        wire.extend_from_slice(&encode(&[b"GET", b"big"]));
    }
    slow.write(&wire).await;

    // Meanwhile, the other client is served normally.
    assert_eq!(other.cmd(&["SET", "served", "yes"]).await, ok());
    // The proxy gives up on the slow one: only `other` is left.
    eventually(WAIT, || async {
        let s = proxy.status().await;
        let n = &s["redis"]["connections"]["leader"];
        if n == 1 {
            Ok(())
        } else {
            Err(format!("connections: {n}"))
        }
    })
    .await;
    // Reading now: whatever was buffered, then the close.
    assert!(
        slow.closed_within(WAIT).await,
        "slow client still connected"
    );
    assert_eq!(other.cmd(&["GET", "served"]).await, Resp::bulk("yes"));
    let got = other.cmd(&["GET", "big"]).await;
    assert_eq!(got, Resp::Bulk(big));
    // Exactly this one client counted (this test holds `metrics_exclusive`).
    let slow_after = proxy.metric(CLIENT_ERRORS, SLOW_CLIENT).await;
    assert_eq!(slow_after - slow_before, 1.0, "slow_client errors counted");
}

const CLIENT_ERRORS: &str = "statemirror_client_errors_total";
const SLOW_CLIENT: &[(&str, &str)] = &[("protocol", "redis"), ("reason", "slow_client")];

/// With `max_connections = 2`, a third client is told `-ERR max number of clients reached`
/// and closed; once a slot frees up, new clients get in again.
#[tokio::test]
async fn connection_limit_refuses_extra_clients() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        cfg.redis.as_mut().unwrap().max_connections = 2;
    })
    .await;
    let mut a = Raw::connect(proxy.addr()).await;
    let mut b = Raw::connect(proxy.addr()).await;
    // Both are accepted and hold their slots.
    assert_eq!(a.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    assert_eq!(b.cmd(&["PING"]).await, Resp::Simple("PONG".into()));

    let mut c = Raw::connect(proxy.addr()).await;
    assert_eq!(
        c.read().await,
        Resp::Error("ERR max number of clients reached".into())
    );
    assert!(c.closed_within(WAIT).await, "refused client not closed");
    // The two admitted clients are unaffected.
    assert_eq!(a.cmd(&["SET", "k", "v"]).await, ok());
    assert_eq!(b.cmd(&["GET", "k"]).await, Resp::bulk("v"));

    drop(a);
    let addr = proxy.addr();
    eventually(WAIT, || async move {
        let mut d = Raw::connect(addr).await;
        d.send(&["PING"]).await;
        match d.read_within(Duration::from_secs(2)).await {
            Ok(Resp::Simple(s)) if s == "PONG" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
}

/// `client_idle_timeout_ms = 300`: a silent connection is closed, but one blocked in
/// `BLPOP k 0` or subscribed to a channel is not idle and stays open; the blocked one is
/// served when a value arrives, and closed once it has then been idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_blocked_and_subscribed_clients() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        cfg.redis.as_mut().unwrap().client_idle_timeout_ms = 300;
    })
    .await;

    let mut idle = Raw::connect(proxy.addr()).await;
    assert_eq!(idle.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    let mut blocked = Raw::connect(proxy.addr()).await;
    blocked.send(&["BLPOP", "idle:q", "0"]).await;
    let mut sub = Raw::connect(proxy.addr()).await;
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "idle:ch"]).await,
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("idle:ch"),
            Resp::Int(1)
        ])
    );

    assert!(
        idle.closed_within(Duration::from_secs(3)).await,
        "idle connection not closed"
    );
    // Well past the idle timeout, the blocked and the subscribed clients are still open.
    assert_eq!(
        blocked.read_within(Duration::from_secs(1)).await,
        Err(ReadEnd::TimedOut),
        "blocked client closed or answered early"
    );
    assert_eq!(
        sub.read_within(Duration::from_millis(100)).await,
        Err(ReadEnd::TimedOut),
        "subscribed client closed"
    );

    // Fresh connection (an idle one would have been closed by now).
    let mut pusher = proxy.conn().await;
    let _: i64 = pusher.rpush("idle:q", "wake").await.unwrap();
    assert_eq!(blocked.read().await, Resp::bulks(&["idle:q", "wake"]));
    let n: i64 = pusher.publish("idle:ch", "still here").await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        sub.read().await,
        Resp::bulks(&["message", "idle:ch", "still here"])
    );
    // Served and silent again: now it is idle.
    assert!(
        blocked.closed_within(Duration::from_secs(3)).await,
        "formerly blocked connection not closed once idle"
    );
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 0);
}

/// Inline commands typed by hand (`PING\r\n`, `SET k v\r\n`) work like multibulk ones, empty
/// lines are skipped, and an inline write is mirrored.
#[tokio::test]
async fn inline_commands_work() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = Raw::connect(proxy.addr()).await;
    c.write(b"PING\r\n").await;
    assert_eq!(c.read().await, Resp::Simple("PONG".into()));
    c.write(b"\r\n\r\nSET inline-key  inline-value\r\nGET inline-key\n")
        .await;
    assert_eq!(c.read().await, ok());
    assert_eq!(c.read().await, Resp::bulk("inline-value"));
    // Inline and multibulk mixed in one write.
    let mut wire = b"INCR inline-counter\r\n".to_vec();
    wire.extend_from_slice(&encode(&[b"INCR", b"inline-counter"]));
    wire.extend_from_slice(b"ping\r\n");
    c.write(&wire).await;
    assert_eq!(c.read().await, Resp::Int(1));
    assert_eq!(c.read().await, Resp::Int(2));
    assert_eq!(c.read().await, Resp::Simple("PONG".into()));

    proxy.drained().await;
    let mut f = follower.conn().await;
    assert_eq!(
        f.get::<_, String>("inline-key").await.unwrap(),
        "inline-value"
    );
    assert_eq!(assert_same_data(&leader, &follower).await, 2);
}
