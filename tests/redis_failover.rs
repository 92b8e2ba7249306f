//! Failure and maintenance scenarios against real redis-server processes: a follower that
//! dies or hangs, a leader that dies (reads fail over to the follower, writes are refused,
//! follower-served connections are closed once the leader is back), both gone, the write
//! freeze over the admin API (with a bearer token), mirror-queue overflow, and bad admin
//! requests.
//!
//! The Prometheus recorder is process-global, so every proxy started in this test binary
//! shares one set of metric series. The tests therefore run one at a time (`SERIAL`), and a
//! counter is checked as an exact before/after delta over what the test itself did.
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One test at a time: metrics are process-global (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FROZEN_ERR: &str = "READONLY statemirror: writes are frozen for maintenance";
const LEADER_DOWN_ERR: &str = "READONLY statemirror: leader unavailable";
const READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Raw RESP client: exact bytes in, replies parsed one by one, so pipeline order and the
// exact error lines are visible.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    fn err_text(&self) -> &str {
        match self {
            Reply::Error(e) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One complete reply at the start of `buf`: (reply, bytes used), or None if incomplete.
fn parse_reply(buf: &[u8]) -> Option<(Reply, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..line_end]).expect("utf-8 reply header");
    let after = line_end + 2;
    match buf.first()? {
        b'+' => Some((Reply::Simple(line.to_string()), after)),
        b'-' => Some((Reply::Error(line.to_string()), after)),
        b':' => Some((Reply::Int(line.parse().expect("integer")), after)),
        b'$' => {
            let n: i64 = line.parse().expect("bulk length");
            if n < 0 {
                return Some((Reply::Bulk(None), after));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return None;
            }
            Some((
                Reply::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            ))
        }
        b'*' => {
            let n: i64 = line.parse().expect("array length");
            if n < 0 {
                return Some((Reply::Array(None), after));
            }
            let mut items = Vec::new();
            let mut pos = after;
            for _ in 0..n {
                let (r, used) = parse_reply(&buf[pos..])?;
                items.push(r);
                pos += used;
            }
            Some((Reply::Array(Some(items)), pos))
        }
        other => panic!("unexpected reply type byte {other:?} in {buf:?}"),
    }
}

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// How a connection ended.
#[derive(Debug)]
enum Ended {
    /// Orderly EOF or a reset: the peer closed it.
    Closed,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let s = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Raw { s, buf: Vec::new() }
    }

    /// Sends every command in ONE write.
    async fn send(&mut self, cmds: &[&[&str]]) {
        let mut out = Vec::new();
        for c in cmds {
            out.extend_from_slice(&encode(c));
        }
        self.s.write_all(&out).await.expect("write to proxy");
    }

    /// Like `send`, for a connection the proxy may already have closed (errors ignored).
    async fn try_send(&mut self, cmds: &[&[&str]]) {
        let mut out = Vec::new();
        for c in cmds {
            out.extend_from_slice(&encode(c));
        }
        let _ = self.s.write_all(&out).await;
    }

    /// The next reply, or `Err(Ended)` when the connection closes first.
    async fn try_reply(&mut self, within: Duration) -> Result<Reply, Ended> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((r, used)) = parse_reply(&self.buf) {
                self.buf.drain(..used);
                return Ok(r);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no reply within {within:?}"));
            match n {
                Ok(0) | Err(_) => return Err(Ended::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn reply(&mut self) -> Reply {
        self.try_reply(READ_TIMEOUT)
            .await
            .expect("connection closed before the reply")
    }

    async fn cmd(&mut self, args: &[&str]) -> Reply {
        self.send(&[args]).await;
        self.reply().await
    }

    /// Reads until the proxy closes the connection (bounded); returns the replies seen first.
    async fn until_closed(&mut self, within: Duration) -> Vec<Reply> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "connection still open after {within:?}; replies: {seen:?}"
            );
            match self.try_reply(left).await {
                Ok(r) => seen.push(r),
                Err(Ended::Closed) => return seen,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------

async fn metrics_text(proxy: &Proxy) -> String {
    let (code, body) = proxy.http("GET", "/metrics", None).await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn metric_value(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&metrics_text(proxy).await, name, labels).unwrap_or(0.0)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `SERVER.kill()` / `restart()` block (restart polls with thread sleeps): keep them off
/// the async worker's hot path.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Every key of db 0 with its DUMP payload and PTTL: a stand-in for a backup.
async fn snapshot(server: &RedisServer) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let mut c = server.conn().await;
    let keys: Vec<Vec<u8>> = c.keys("*").await.expect("KEYS");
    let mut out = BTreeMap::new();
    for k in keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&k)
            .query_async(&mut c)
            .await
            .expect("DUMP");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut c)
            .await
            .expect("PTTL");
        out.insert(k, (dump, ttl));
    }
    out
}

async fn get(server: &RedisServer, key: &str) -> Option<String> {
    let mut c = server.conn().await;
    c.get(key).await.expect("GET")
}

/// A token file for `admin.token_file` (kept alive by the caller).
fn token_file(token: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("tempfile");
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes()).expect("write token");
    f
}

// ---------------------------------------------------------------------------------------
// 1. The follower dies in the middle of a workload.
// ---------------------------------------------------------------------------------------

/// The follower is SIGKILLed in the middle of a workload and comes back empty: no client
/// write fails, the writes made while it was down reach it through the queue, and the full
/// resync its empty restart triggers brings back the rest, so it ends equal to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_mid_workload_writes_succeed_and_queued_writes_arrive() {
    let _serial = SERIAL.lock().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    // The generation marker is on the follower before anything else happens, so the
    // follower coming back empty reads as "behind" and gets a full resync.
    wait_for_marker(&follower).await;
    let resyncs_before = resyncs_total(&proxy).await;

    const TOTAL: usize = 900;
    let progress = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let writer = {
        let url = proxy.url();
        let progress = progress.clone();
        let killed = killed.clone();
        tokio::spawn(async move {
            let mut c = client(&url).await;
            // (key, written after the kill?)
            let mut written: Vec<(String, bool)> = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            for i in 0..TOTAL {
                // Read before the write is sent: `true` means the follower was already dead.
                let after_kill = killed.load(Ordering::SeqCst);
                let key = format!("wl:key:{i}");
                let ctr = format!("wl:ctr:{}", i % 7);
                let r: redis::RedisResult<()> = c.set(&key, format!("v{i}")).await;
                if let Err(e) = r {
                    errors.push(format!("SET {key}: {e}"));
                }
                let r: redis::RedisResult<i64> = c.incr(&ctr, 1).await;
                if let Err(e) = r {
                    errors.push(format!("INCR {ctr}: {e}"));
                }
                written.push((key, after_kill));
                written.push((ctr, after_kill));
                progress.store(i + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (written, errors)
        })
    };

    let wait_progress = |n: usize| {
        let progress = progress.clone();
        async move {
            eventually(Duration::from_secs(30), || {
                let p = progress.load(Ordering::SeqCst);
                async move {
                    if p >= n {
                        Ok(())
                    } else {
                        Err(format!("writer at {p}, waiting for {n}"))
                    }
                }
            })
            .await
        }
    };

    wait_progress(150).await;
    blocking(|| follower.kill());
    killed.store(true, Ordering::SeqCst);
    let at_kill = progress.load(Ordering::SeqCst);

    // The proxy notices; the mirror keeps failing and holds the writes.
    let first_failures = eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        let m = &s["redis"]["mirror"];
        let failures = m["failures"].as_u64().unwrap_or(0);
        if s["redis"]["follower"]["up"] == false
            && failures > 0
            && m["queue_depth"].as_u64().unwrap_or(0) > 0
        {
            Ok(failures)
        } else {
            Err(format!("follower not seen down / no failures yet: {s}"))
        }
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        let m = &s["redis"]["mirror"];
        let failures = m["failures"].as_u64().unwrap_or(0);
        if failures > first_failures && m["queue_depth"].as_u64().unwrap_or(0) > 0 {
            Ok(())
        } else {
            Err(format!("failures not growing past {first_failures}: {m}"))
        }
    })
    .await;
    assert_eq!(
        s_str(&proxy.status().await["redis"]["serving"]),
        "leader",
        "a dead follower must not change who serves"
    );
    wait_progress(at_kill + 150).await;

    // Back, but EMPTY, on the same port.
    blocking(|| follower.restart());
    let (written, errors) = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writer finished")
        .expect("writer task");
    assert!(errors.is_empty(), "client writes failed: {errors:?}");
    assert!(
        written.iter().any(|(_, after)| *after) && written.iter().any(|(_, after)| !*after),
        "the kill must land in the middle of the workload"
    );
    proxy.drained().await;
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        if s["redis"]["follower"]["up"] == true {
            Ok(())
        } else {
            Err(format!("follower not seen up again: {s}"))
        }
    })
    .await;

    // Every key touched while the follower was down (and after) reached it through the
    // queue. Keys written only before the kill died with the follower's memory: the restart
    // empty leaves its generation marker behind the leader's, which starts a full resync,
    // after which the follower holds every key with the leader's value.
    let mut fc = follower.conn().await;
    let mut lc = leader.conn().await;
    let after_kill: Vec<&str> = written
        .iter()
        .filter(|(_, after)| *after)
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(
        after_kill.len() > 100,
        "only {} post-kill writes",
        after_kill.len()
    );
    eventually(Duration::from_secs(60), || async {
        let s = proxy.status().await;
        let r = &s["redis"];
        if r["resync"]["resyncs_total"].as_u64() > Some(resyncs_before)
            && r["resync"]["running"] == false
            && r["mirror"]["in_sync"] == true
            && r["mirror"]["queue_depth"] == 0
        {
            Ok(())
        } else {
            Err(format!(
                "no completed resync after the empty restart yet: {r}"
            ))
        }
    })
    .await;
    for k in after_kill {
        let lv: Option<String> = lc.get(k).await.unwrap();
        let fv: Option<String> = fc.get(k).await.unwrap();
        assert!(lv.is_some(), "{k} missing on the leader");
        assert_eq!(fv, lv, "{k} was written while the follower was down");
    }
    let n = assert_same_data(&leader, &follower).await;
    assert_eq!(n, TOTAL + 7, "every key, pre-kill ones included");
    let s = proxy.status().await;
    assert_eq!(s["redis"]["resync"]["last"]["outcome"], "completed", "{s}");
    assert_eq!(s["redis"]["mirror"]["dropped_writes"], 0, "{s}");
}

/// Waits until statemirror has written its generation marker on `server`.
async fn wait_for_marker(server: &RedisServer) {
    let c = server.conn().await;
    eventually(Duration::from_secs(15), || {
        let mut c = c.clone();
        async move {
            let n: i64 = c
                .exists(statemirror::redis::generation::KEY)
                .await
                .map_err(|e| e.to_string())?;
            if n == 1 {
                Ok(())
            } else {
                Err("no generation marker yet".to_string())
            }
        }
    })
    .await;
}

async fn resyncs_total(proxy: &Proxy) -> u64 {
    proxy.status().await["redis"]["resync"]["resyncs_total"]
        .as_u64()
        .expect("resyncs_total")
}

fn s_str(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------------------
// 2. A dead or hanging follower does not slow clients down.
// ---------------------------------------------------------------------------------------

async fn timed_sets(url: &str, prefix: &str, n: usize) -> Duration {
    let mut c = client(url).await;
    // Warm-up (connection, command table, allocator).
    for i in 0..20 {
        let _: () = c.set(format!("{prefix}:warm:{i}"), i).await.unwrap();
    }
    let t = Instant::now();
    for i in 0..n {
        let r: redis::RedisResult<()> = c.set(format!("{prefix}:{i}"), i).await;
        r.unwrap_or_else(|e| panic!("SET {prefix}:{i} failed: {e}"));
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_follower_does_not_slow_clients() {
    let _serial = SERIAL.lock().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    blocking(|| follower.kill());
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        if s["redis"]["follower"]["up"] == false {
            Ok(())
        } else {
            Err(format!("follower still up: {s}"))
        }
    })
    .await;

    let baseline = timed_sets(&leader.url(), "direct", 500).await;
    let through = timed_sets(&proxy.url(), "proxied", 500).await;
    let bound = baseline * 5 + Duration::from_secs(1);
    assert!(
        through < bound,
        "500 SETs through the proxy took {through:?}; direct {baseline:?}; bound {bound:?}"
    );
    let s = proxy.status().await;
    let m = &s["redis"]["mirror"];
    assert!(m["queue_depth"].as_u64().unwrap() > 0, "{m}");
    assert!(m["failures"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["in_sync"], true, "nothing was dropped: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_follower_does_not_slow_clients() {
    let _serial = SERIAL.lock().await;
    let leader = RedisServer::start();
    // A "follower" that accepts connections and never answers.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = sink.accept().await {
            held.push(s);
        }
    });
    let proxy = Proxy::start_with(&leader, None, |cfg| {
        cfg.redis.as_mut().unwrap().follower = Some(format!("redis://{sink_addr}"));
    })
    .await;
    // Something queued, so the mirror is stuck on the hanging follower.
    let mut c = proxy.conn().await;
    let _: () = c.set("hang:first", 1).await.unwrap();

    let baseline = timed_sets(&leader.url(), "direct", 500).await;
    let through = timed_sets(&proxy.url(), "proxied", 500).await;
    let bound = baseline * 5 + Duration::from_secs(1);
    assert!(
        through < bound,
        "500 SETs through the proxy took {through:?}; direct {baseline:?}; bound {bound:?}"
    );
    // The mirror times out (apply_timeout_ms = 2000 in the harness) and keeps the writes.
    eventually(Duration::from_secs(15), || async {
        let s = proxy.status().await;
        let m = &s["redis"]["mirror"];
        if m["failures"].as_u64().unwrap_or(0) > 0
            && m["queue_depth"].as_u64().unwrap_or(0) > 0
            && s["redis"]["follower"]["up"] == false
        {
            Ok(())
        } else {
            Err(format!("no mirror failure yet: {s}"))
        }
    })
    .await;
    holder.abort();
}

// ---------------------------------------------------------------------------------------
// 3. The leader dies: reads fail over to the follower, and back.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_follower_serves_reads_then_leader_returns() {
    let _serial = SERIAL.lock().await;
    let mut leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;

    let mut c = proxy.conn().await;
    for i in 0..20 {
        let _: () = c.set(format!("fo:{i}"), format!("old{i}")).await.unwrap();
        let _: () = c.set(format!("fo:{i}"), format!("last{i}")).await.unwrap();
    }
    let _: i64 = c.incr("fo:ctr", 5).await.unwrap();
    proxy.drained().await;
    assert_same_data(&leader, &follower).await;

    // An idle leader-served connection and one with a request in flight (a blocking pop).
    let mut idle = Raw::connect(proxy.addr()).await;
    assert_eq!(idle.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    let mut blocked = Raw::connect(proxy.addr()).await;
    assert_eq!(blocked.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    blocked.send(&[&["BLPOP", "fo:nothing", "0"]]).await;
    // Wait until the pop is really blocked on the leader.
    eventually(Duration::from_secs(10), || async {
        let mut l = leader.conn().await;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut l)
            .await
            .map_err(|e| e.to_string())?;
        if list.contains("cmd=blpop") {
            Ok(())
        } else {
            Err(format!("BLPOP not blocked on the leader yet: {list}"))
        }
    })
    .await;
    let rejected_before = metric_value(
        &proxy,
        "statemirror_rejected_writes_total",
        &[("protocol", "redis"), ("reason", "leader_unavailable")],
    )
    .await;

    blocking(|| leader.kill());

    // In flight: an error reply, then the connection is closed.
    let got = blocked.until_closed(READ_TIMEOUT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0]
            .err_text()
            .starts_with("ERR statemirror: leader connection lost"),
        "{got:?}"
    );
    // Next request on an old connection: never a normal reply, and the connection closes.
    idle.try_send(&[&["GET", "fo:1"]]).await;
    let got = idle.until_closed(READ_TIMEOUT).await;
    assert!(
        got.iter().all(|r| matches!(r, Reply::Error(_))),
        "old connection answered after the leader died: {got:?}"
    );

    // A new connection is served by the follower.
    let mut ro = Raw::connect(proxy.addr()).await;
    for i in 0..20 {
        assert_eq!(
            ro.cmd(&["GET", &format!("fo:{i}")]).await,
            Reply::bulk(&format!("last{i}"))
        );
    }
    assert_eq!(ro.cmd(&["GET", "fo:ctr"]).await, Reply::bulk("5"));
    let r = ro.cmd(&["SET", "fo:1", "nope"]).await;
    assert!(r.err_text().starts_with(LEADER_DOWN_ERR), "{r:?}");
    let r = ro.cmd(&["INCR", "fo:ctr"]).await;
    assert!(r.err_text().starts_with(LEADER_DOWN_ERR), "{r:?}");
    // A transaction with a write aborts.
    ro.send(&[&["MULTI"], &["SET", "fo:2", "nope"], &["EXEC"]])
        .await;
    assert_eq!(ro.reply().await, Reply::Simple("OK".into()));
    let r = ro.reply().await;
    assert!(r.err_text().starts_with(LEADER_DOWN_ERR), "{r:?}");
    let r = ro.reply().await;
    assert!(r.err_text().starts_with("EXECABORT"), "{r:?}");
    assert_eq!(ro.cmd(&["GET", "fo:1"]).await, Reply::bulk("last1"));
    assert_eq!(ro.cmd(&["GET", "fo:2"]).await, Reply::bulk("last2"));
    assert_eq!(get(&follower, "fo:1").await.as_deref(), Some("last1"));

    let s = proxy.status().await;
    assert_eq!(s["redis"]["serving"], "follower", "{s}");
    assert_eq!(s["redis"]["leader"]["up"], false, "{s}");
    assert_eq!(s["redis"]["follower"]["up"], true, "{s}");
    assert_eq!(s["redis"]["connections"]["follower"], 1, "{s}");
    let (code, body) = proxy.http("GET", "/readyz", None).await;
    assert_eq!(code, 200, "{body}");
    let rejected_after = metric_value(
        &proxy,
        "statemirror_rejected_writes_total",
        &[("protocol", "redis"), ("reason", "leader_unavailable")],
    )
    .await;
    // SET, INCR and the SET inside MULTI: each refused write counted once.
    assert_eq!(
        rejected_after - rejected_before,
        3.0,
        "rejected_writes_total{{reason=leader_unavailable}}: {rejected_before} -> {rejected_after}"
    );
    let text = metrics_text(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "statemirror_backend_up",
            &[("protocol", "redis"), ("role", "leader")]
        ),
        Some(0.0),
        "{text}"
    );

    // Another follower-served connection, inside a transaction when the leader returns.
    let mut ro_tx = Raw::connect(proxy.addr()).await;
    assert_eq!(ro_tx.cmd(&["MULTI"]).await, Reply::Simple("OK".into()));
    assert_eq!(
        ro_tx.cmd(&["GET", "fo:3"]).await,
        Reply::Simple("QUEUED".into())
    );

    // The leader comes back (empty). The idle follower-served connection is closed...
    blocking(|| leader.restart());
    let got = ro.until_closed(Duration::from_secs(15)).await;
    assert!(got.is_empty(), "unexpected replies: {got:?}");
    // ... the one inside MULTI is not cut mid-transaction: EXEC runs, then it is closed.
    let r = ro_tx.cmd(&["EXEC"]).await;
    assert_eq!(r, Reply::Array(Some(vec![Reply::bulk("last3")])));
    let got = ro_tx.until_closed(Duration::from_secs(15)).await;
    assert!(got.is_empty(), "unexpected replies: {got:?}");
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        if s["redis"]["serving"] == "leader" && s["redis"]["connections"]["follower"] == 0 {
            Ok(())
        } else {
            Err(format!("not back on the leader: {s}"))
        }
    })
    .await;
    // ... and new connections are served by the leader: writes work and are mirrored.
    let mut rw = Raw::connect(proxy.addr()).await;
    assert_eq!(
        rw.cmd(&["SET", "fo:after", "back"]).await,
        Reply::Simple("OK".into())
    );
    assert_eq!(get(&leader, "fo:after").await.as_deref(), Some("back"));
    proxy.drained().await;
    assert_eq!(get(&follower, "fo:after").await.as_deref(), Some("back"));
    let (code, _) = proxy.http("GET", "/readyz", None).await;
    assert_eq!(code, 200);
}

// ---------------------------------------------------------------------------------------
// 4. Both backends gone.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_available() {
    let _serial = SERIAL.lock().await;
    let mut leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let (code, _) = proxy.http("GET", "/readyz", None).await;
    assert_eq!(code, 200);

    blocking(|| follower.kill());
    blocking(|| leader.kill());

    let mut c = Raw::connect(proxy.addr()).await;
    let got = c.until_closed(READ_TIMEOUT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0]
            .err_text()
            .starts_with("ERR statemirror: no backend available"),
        "{got:?}"
    );
    eventually(Duration::from_secs(10), || async {
        let (code, body) = proxy.http("GET", "/readyz", None).await;
        if code == 503 && json(&body)["ready"] == false {
            Ok(())
        } else {
            Err(format!("/readyz {code}: {body}"))
        }
    })
    .await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["serving"], "none", "{s}");
    let (code, _) = proxy.http("GET", "/healthz", None).await;
    assert_eq!(code, 200, "liveness is not readiness");
}

// ---------------------------------------------------------------------------------------
// 5. Maintenance over HTTP with a bearer token.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_freeze_with_token() {
    let _serial = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let token = "t0ken-for-maintenance";
    let tf = token_file(token);
    let path = tf.path().to_path_buf();
    // The follower link is slow (every chunk held 20 ms), so writes acknowledged just
    // before the freeze are still on their way when it is requested.
    let relay = common::fault::FaultRelay::start(&follower.addr());
    let relay_url = format!("redis://{}", relay.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), move |cfg| {
        cfg.admin.token_file = Some(path);
        cfg.redis.as_mut().unwrap().follower = Some(relay_url);
    })
    .await;
    relay.set(common::fault::Fault::Delay(Duration::from_millis(20)));

    let mut c = proxy.conn().await;
    let _: () = c.set("a", "1").await.unwrap();
    let _: () = c.set("c", "10").await.unwrap();
    proxy.drained().await;

    // Without / with a wrong token: 401 JSON, nothing frozen.
    for t in [None, Some("wrong"), Some("")] {
        let (code, body) = proxy.http("PUT", "/maintenance", t).await;
        assert_eq!(code, 401, "token {t:?}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
        let (code, body) = proxy.http("DELETE", "/maintenance", t).await;
        assert_eq!(code, 401, "token {t:?}: {body}");
    }
    let (code, body) = proxy.http("GET", "/maintenance", None).await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["frozen"], false, "{body}");
    let _: () = c.set("a", "1").await.expect("not frozen after a 401");

    let rejected_before = metric_value(
        &proxy,
        "statemirror_rejected_writes_total",
        &[("protocol", "redis"), ("reason", "maintenance")],
    )
    .await;

    // Writes just before the freeze are on the follower when PUT returns; a writer keeps
    // writing through the freeze until it has been refused 20 times.
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.set(format!("pre:{i}"), format!("v{i}")).ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let _: () = c.set("last-before-freeze", "yes").await.unwrap();
    let writer = {
        let mut w = proxy.conn().await;
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            for i in 0..1_000_000u64 {
                match w.set::<_, _, ()>(format!("during:{i}"), i).await {
                    Ok(()) => acked.push(format!("during:{i}")),
                    Err(e) if e.to_string().contains("writes are frozen") => {
                        refused += 1;
                        if refused == 20 {
                            break;
                        }
                    }
                    Err(e) => panic!("SET during:{i}: {e}"),
                }
            }
            (acked, refused)
        })
    };
    // Freeze only once the writer is writing.
    eventually(Duration::from_secs(10), || async {
        match get(&leader, "during:10").await {
            Some(_) => Ok(()),
            None => Err("writer not started".to_string()),
        }
    })
    .await;
    let (code, body) = proxy.http("PUT", "/maintenance", Some(token)).await;
    assert_eq!(code, 200, "{body}");
    // A backup of the follower taken now is stable while the writer is being refused.
    let first = snapshot(&follower).await;
    let b = json(&body);
    assert_eq!(b["frozen"], true, "{body}");
    assert_eq!(b["writes_drained"], true, "{body}");
    assert_eq!(b["mirror_drained"], true, "{body}");
    assert_eq!(b["follower_in_sync"], true, "{body}");
    let (acked, writer_refused) = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writer refused 20 times")
        .expect("writer task");
    assert_eq!(writer_refused, 20);
    let second = snapshot(&follower).await;
    assert!(first == second, "follower changed while frozen");
    let marker = statemirror::redis::generation::KEY;
    assert_eq!(
        first.keys().filter(|k| k.as_slice() != marker).count(),
        203 + acked.len(),
        "every write acknowledged before the freeze is in the backup"
    );
    for k in &acked {
        assert!(
            first.contains_key(k.as_bytes()),
            "{k} acknowledged but not on the follower"
        );
    }
    assert_eq!(
        get(&follower, "last-before-freeze").await.as_deref(),
        Some("yes")
    );
    assert_same_data(&leader, &follower).await;

    // One pipeline: reads answered, writes refused, in order.
    let mut raw = Raw::connect(proxy.addr()).await;
    raw.send(&[
        &["GET", "a"],
        &["SET", "a", "2"],
        &["GET", "a"],
        &["INCR", "c"],
        &["PING"],
    ])
    .await;
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(raw.reply().await);
    }
    assert_eq!(
        replies,
        vec![
            Reply::bulk("1"),
            Reply::Error(FROZEN_ERR.into()),
            Reply::bulk("1"),
            Reply::Error(FROZEN_ERR.into()),
            Reply::Simple("PONG".into()),
        ]
    );

    // MULTI with a write: the write is refused and EXEC aborts.
    raw.send(&[&["MULTI"], &["SET", "a", "3"], &["GET", "a"], &["EXEC"]])
        .await;
    assert_eq!(raw.reply().await, Reply::Simple("OK".into()));
    assert_eq!(raw.reply().await, Reply::Error(FROZEN_ERR.into()));
    assert_eq!(raw.reply().await, Reply::Simple("QUEUED".into()));
    let r = raw.reply().await;
    assert!(r.err_text().starts_with("EXECABORT"), "{r:?}");
    assert!(r.err_text().contains("frozen"), "{r:?}");
    // The connection is usable, not in a transaction, and nothing changed.
    assert_eq!(raw.cmd(&["GET", "a"]).await, Reply::bulk("1"));
    assert_eq!(get(&leader, "a").await.as_deref(), Some("1"));
    assert_eq!(get(&leader, "c").await.as_deref(), Some("10"));
    // A read-only transaction still runs.
    raw.send(&[&["MULTI"], &["GET", "c"], &["EXEC"]]).await;
    assert_eq!(raw.reply().await, Reply::Simple("OK".into()));
    assert_eq!(raw.reply().await, Reply::Simple("QUEUED".into()));
    assert_eq!(
        raw.reply().await,
        Reply::Array(Some(vec![Reply::bulk("10")]))
    );

    let (code, body) = proxy.http("GET", "/maintenance", None).await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["frozen"], true, "{body}");
    assert!(json(&body)["frozen_since_unix"].is_number(), "{body}");
    let s = proxy.status().await;
    assert_eq!(s["maintenance"]["frozen"], true, "{s}");
    let text = metrics_text(&proxy).await;
    assert_eq!(metric(&text, "statemirror_maintenance", &[]), Some(1.0));
    let rejected = metric(
        &text,
        "statemirror_rejected_writes_total",
        &[("protocol", "redis"), ("reason", "maintenance")],
    )
    .unwrap_or(0.0);
    // The writer's 20, then SET and INCR in the pipeline and the SET inside MULTI.
    assert_eq!(
        rejected - rejected_before,
        f64::from(writer_refused) + 3.0,
        "rejected_writes_total{{reason=maintenance}}: {rejected_before} -> {rejected}"
    );
    // The follower still has not moved.
    assert!(
        snapshot(&follower).await == first,
        "follower changed while frozen"
    );

    // Resume.
    let (code, body) = proxy.http("DELETE", "/maintenance", Some(token)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["frozen"], false, "{body}");
    assert_eq!(
        raw.cmd(&["SET", "a", "4"]).await,
        Reply::Simple("OK".into())
    );
    assert_eq!(raw.cmd(&["INCR", "c"]).await, Reply::Int(11));
    let text = metrics_text(&proxy).await;
    assert_eq!(metric(&text, "statemirror_maintenance", &[]), Some(0.0));
    proxy.drained().await;
    assert_eq!(get(&follower, "a").await.as_deref(), Some("4"));
    assert_eq!(get(&follower, "c").await.as_deref(), Some("11"));
    assert_same_data(&leader, &follower).await;
    drop(tf);
}

// ---------------------------------------------------------------------------------------
// 6. The freeze and writes that are already under way.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_aborts_an_open_transaction_at_exec() {
    let _serial = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    let _: () = c.set("tx:k", "before").await.unwrap();
    proxy.drained().await;

    let mut raw = Raw::connect(proxy.addr()).await;
    assert_eq!(raw.cmd(&["MULTI"]).await, Reply::Simple("OK".into()));
    assert_eq!(
        raw.cmd(&["SET", "tx:k", "inside"]).await,
        Reply::Simple("QUEUED".into())
    );
    // A queued (not yet run) write does not hold the freeze up.
    let put = tokio::time::timeout(
        Duration::from_secs(5),
        proxy.http("PUT", "/maintenance", None),
    )
    .await
    .expect("PUT /maintenance must not wait for a queued transaction");
    assert_eq!(put.0, 200, "{}", put.1);
    let b = json(&put.1);
    assert_eq!(b["frozen"], true, "{b}");
    assert_eq!(b["writes_drained"], true, "{b}");
    assert_eq!(b["mirror_drained"], true, "{b}");

    let r = raw.cmd(&["EXEC"]).await;
    assert!(r.err_text().starts_with("EXECABORT"), "{r:?}");
    assert!(r.err_text().contains("frozen"), "{r:?}");
    assert_eq!(raw.cmd(&["GET", "tx:k"]).await, Reply::bulk("before"));
    assert_eq!(get(&leader, "tx:k").await.as_deref(), Some("before"));
    // Not left inside a transaction: a plain command gets a plain answer.
    assert_eq!(raw.cmd(&["PING"]).await, Reply::Simple("PONG".into()));

    let (code, _) = proxy.http("DELETE", "/maintenance", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        raw.cmd(&["SET", "tx:k", "after"]).await,
        Reply::Simple("OK".into())
    );
    proxy.drained().await;
    assert_eq!(get(&follower, "tx:k").await.as_deref(), Some("after"));
}

/// Busy-waits `ARGV[2]` microseconds on the server, then sets `KEYS[1]`.
const SLOW_SET: &str = "local t0 = redis.call('TIME') \
local start = t0[1] * 1000000 + t0[2] \
while true do \
  local t = redis.call('TIME') \
  if (t[1] * 1000000 + t[2]) - start > tonumber(ARGV[2]) then break end \
end \
redis.call('SET', KEYS[1], ARGV[1]) \
return 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_waits_for_a_running_write() {
    let _serial = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;

    let mut raw = Raw::connect(proxy.addr()).await;
    assert_eq!(raw.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    // A write that takes ~300 ms on the leader.
    raw.send(&[&["EVAL", SLOW_SET, "1", "slow:k", "done", "300000"]])
        .await;
    // Freeze only once the proxy counts it in flight (it holds a write ticket).
    let seen = Instant::now();
    loop {
        let (_, body) = proxy.http("GET", "/maintenance", None).await;
        if json(&body)["writes_in_flight"] == 1 {
            break;
        }
        assert!(
            seen.elapsed() < Duration::from_millis(250),
            "the slow write never showed as in flight: {body}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    let b = json(&body);
    assert_eq!(b["writes_drained"], true, "{body}");
    assert_eq!(b["mirror_drained"], true, "{body}");
    // PUT returned only after the running write finished and was mirrored (had it not
    // waited, the script would still be running: the key would be nowhere yet) ...
    assert_eq!(get(&follower, "slow:k").await.as_deref(), Some("done"));
    // ... and the write was let through (it started before the freeze).
    assert_eq!(raw.reply().await, Reply::Int(1));
    assert_eq!(b["writes_in_flight"], 0, "{body}");
    // New writes are refused.
    assert_eq!(
        raw.cmd(&["SET", "slow:k", "x"]).await,
        Reply::Error(FROZEN_ERR.into())
    );
    let (code, _) = proxy.http("DELETE", "/maintenance", None).await;
    assert_eq!(code, 200);
}

// ---------------------------------------------------------------------------------------
// 7. Mirror queue overflow.
// ---------------------------------------------------------------------------------------

/// `max_queue_ops = 50` and a dead follower: 200 writes overflow the queue, the follower is
/// marked out of sync (`/status`, `/maintenance`, `statemirror_follower_in_sync`) and the
/// discarded writes are counted. Automatic resync is off, so the mark stays while live
/// mirroring goes on once the follower is back; an operator's resync then clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_marks_follower_out_of_sync_but_mirroring_continues() {
    let _serial = SERIAL.lock().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        cfg.replication.max_queue_ops = 50;
        cfg.resync.auto = false;
        cfg.resync.on_start = false;
    })
    .await;
    let in_sync_gauge = || {
        metric_value(
            &proxy,
            "statemirror_follower_in_sync",
            &[("protocol", "redis")],
        )
    };
    let dropped_metric = || {
        metric_value(
            &proxy,
            "statemirror_mirror_dropped_writes_total",
            &[("protocol", "redis")],
        )
    };
    let dropped_before = dropped_metric().await;
    assert_eq!(in_sync_gauge().await, 1.0);

    blocking(|| follower.kill());
    let mut c = proxy.conn().await;
    for i in 0..200 {
        let r: redis::RedisResult<()> = c.set(format!("ov:{i}"), i).await;
        r.unwrap_or_else(|e| panic!("SET ov:{i} failed: {e}"));
    }
    let s = proxy.status().await;
    let m = &s["redis"]["mirror"];
    assert_eq!(m["in_sync"], false, "{m}");
    let reason = s_str(&m["out_of_sync_reason"]);
    assert!(reason.contains("overflow"), "{reason}");
    let dropped = m["dropped_writes"].as_u64().unwrap();
    assert!(dropped > 0, "{m}");
    assert!(m["queue_depth"].as_u64().unwrap() <= 50, "{m}");
    // Every write is either still queued or counted as discarded.
    assert_eq!(dropped + m["queue_depth"].as_u64().unwrap(), 200, "{m}");
    assert_eq!(in_sync_gauge().await, 0.0);
    assert_eq!(dropped_metric().await - dropped_before, dropped as f64);
    let (_, body) = proxy.http("GET", "/maintenance", None).await;
    assert_eq!(json(&body)["follower_in_sync"], false, "{body}");

    // The follower returns (empty): live mirroring goes on, the out-of-sync mark stays.
    blocking(|| follower.restart());
    // What survived the overflow drains first (writing now could overflow the still-full
    // queue again and discard the new writes too).
    proxy.drained().await;
    for i in 0..20 {
        let _: () = c.set(format!("ov:new:{i}"), i).await.unwrap();
    }
    proxy.drained().await;
    for i in 0..20 {
        assert_eq!(
            get(&follower, &format!("ov:new:{i}")).await,
            Some(i.to_string()),
            "ov:new:{i} not mirrored after the overflow"
        );
    }
    let s = proxy.status().await;
    assert_eq!(s["redis"]["mirror"]["in_sync"], false, "{s}");
    assert_eq!(s["redis"]["resync"]["running"], false, "{s}");
    assert_eq!(s["redis"]["resync"]["resyncs_total"], 0, "{s}");
    assert_eq!(in_sync_gauge().await, 0.0);
    assert!(
        compare_data(&leader, &follower).await.is_err(),
        "the discarded writes are missing on the follower"
    );

    // An operator's resync repairs it.
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert_eq!(code, 202, "{body}");
    settle_with("redis", || proxy.status()).await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["resync"]["resyncs_total"], 1, "{s}");
    assert_eq!(s["redis"]["resync"]["last"]["outcome"], "completed", "{s}");
    assert_eq!(assert_same_data(&leader, &follower).await, 220);
    assert_eq!(in_sync_gauge().await, 1.0);
}

// ---------------------------------------------------------------------------------------
// 8. Bad admin requests.
// ---------------------------------------------------------------------------------------

/// One raw HTTP exchange; returns everything the server sent before closing (bounded).
async fn raw_http(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("admin connect");
    s.write_all(bytes).await.expect("admin write");
    let mut out = Vec::new();
    let r = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "admin connection neither answered nor closed");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests() {
    let _serial = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;

    let (code, body) = proxy.http("GET", "/nope", None).await;
    assert_eq!(code, 404, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");

    for (method, path) in [
        ("POST", "/status"),
        ("DELETE", "/metrics"),
        ("PUT", "/healthz"),
        ("POST", "/maintenance"),
    ] {
        let (code, body) = proxy.http(method, path, None).await;
        assert_eq!(code, 405, "{method} {path}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    let resp = raw_http(
        proxy.app.admin_addr,
        b"POST /status HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("\r\nallow: get\r\n"),
        "{resp}"
    );

    let resp = raw_http(proxy.app.admin_addr, b"GARBAGE\r\n\r\n").await;
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
        "garbage got: {resp}"
    );
    let resp = raw_http(proxy.app.admin_addr, &[0xff, 0x00, 0x13, b'\n', b'\n']).await;
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
        "binary garbage got: {resp}"
    );

    // Still answering.
    let (code, body) = proxy.http("GET", "/healthz", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");
    let s = proxy.status().await;
    assert_eq!(s["maintenance"]["frozen"], false, "{s}");
    // No token configured: the generated one (the harness finds it like the CLI does).
    let (code, _) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200);
    let (code, _) = proxy.http("DELETE", "/maintenance", None).await;
    assert_eq!(code, 200);
}

/// Locks the follower against statemirror (its data stays): requirepass + kill its clients.
async fn lock_follower(f: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("locked")
        .query_async(f)
        .await
        .unwrap();
    let _: () = redis::cmd("AUTH")
        .arg("locked")
        .query_async(f)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(f)
        .await
        .unwrap();
}

async fn wait_stuck_in_queue(proxy: &Proxy) {
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        let m = &s["redis"]["mirror"];
        if m["queue_depth"].as_u64() > Some(0) && m["failures"].as_u64() > Some(0) {
            Ok(())
        } else {
            Err(format!("write not stuck in the queue yet: {m}"))
        }
    })
    .await;
}

/// A leader that restarts (here: empty, no persistence) while writes wait for a refusing
/// follower must not have those writes "copied" from it: that would delete the follower's
/// only copy. Writes mirrored by key copy (here `APPEND`) are given up and the follower is
/// marked out of sync instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_leader_does_not_wipe_the_follower() {
    let _serial = SERIAL.lock().await;
    let mut leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    let _: () = c.set("nifi/components/kept", "v1").await.unwrap();
    proxy.drained().await;
    assert_eq!(
        get(&follower, "nifi/components/kept").await.as_deref(),
        Some("v1")
    );

    let mut f = follower.conn().await;
    lock_follower(&mut f).await;
    let _: i64 = c.append("nifi/components/kept", "+more").await.unwrap();
    wait_stuck_in_queue(&proxy).await;
    leader.restart();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("")
        .query_async(&mut f)
        .await
        .unwrap();

    let s = eventually(Duration::from_secs(20), || async {
        let s = proxy.status().await;
        let m = &s["redis"]["mirror"];
        if m["queue_depth"] == 0 && m["in_sync"] == false {
            Ok(s)
        } else {
            Err(format!("not yet: {m}"))
        }
    })
    .await;
    let reason = s_str(&s["redis"]["mirror"]["out_of_sync_reason"]);
    assert!(reason.contains("leader restarted"), "{reason}");
    // The follower still holds its copy: nothing was deleted from it.
    assert_eq!(
        get(&follower, "nifi/components/kept").await.as_deref(),
        Some("v1")
    );
}

/// A write that carries its whole effect (`SET`) needs nothing from the leader to be
/// mirrored: queued while the follower refused, it still reaches the follower after the
/// leader that acknowledged it has restarted empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_set_survives_a_leader_restart() {
    let _serial = SERIAL.lock().await;
    let mut leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    let mut f = follower.conn().await;
    lock_follower(&mut f).await;
    let _: () = c.set("nifi/components/x", "acknowledged").await.unwrap();
    wait_stuck_in_queue(&proxy).await;
    leader.restart();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("")
        .query_async(&mut f)
        .await
        .unwrap();
    proxy.drained().await;
    assert_eq!(
        get(&follower, "nifi/components/x").await.as_deref(),
        Some("acknowledged")
    );
    assert_eq!(proxy.status().await["redis"]["mirror"]["in_sync"], true);
}
