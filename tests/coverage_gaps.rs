//! Behaviours no other test file covered, each against real redis-servers:
//!
//! - keyless writes replayed on the follower: `FLUSHDB`, `SWAPDB`, `FUNCTION LOAD`,
//!   `FUNCTION DELETE`, `FLUSHALL`;
//! - `statemirror_mirror_lag_seconds`: the age of the oldest unmirrored write while the
//!   follower is stopped, 0 once it drained;
//! - `SIGTERM` with a stopped follower: the process exits once `drain_timeout_ms` passed and
//!   logs how many writes were left unmirrored; `App::stop` says whether the mirror drained;
//! - `GET /verify`: 409 while another verification runs, 503 when a backend is down;
//! - `replication.max_queue_bytes`: overflow by bytes marks the follower out of sync and
//!   counts the discarded writes;
//! - `redis.health_failures_before_down`: a backend is down after exactly that many failed
//!   checks in a row, and up again after one good one;
//! - a `/db` in the backend URLs: statemirror's own connections use it, clients' databases
//!   map one to one;
//! - read failover for clients that `AUTH` to password-protected backends.
//!
//! Tests that assert a metric's value hold `metrics_exclusive` (the recorder is
//! process-global); the others hold `metrics_shared`.
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use serde_json::Value;

const LAG: &str = "statemirror_mirror_lag_seconds";
const DROPPED: &str = "statemirror_mirror_dropped_writes_total";
const REDIS: &[(&str, &str)] = &[("protocol", "redis")];

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn cmd<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut k = redis::cmd(args[0]);
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// `FUNCTION LIST` of a server, as text (library names appear in it).
async fn functions(server: &RedisServer) -> String {
    let mut c = server.conn().await;
    let v: redis::Value = cmd(&mut c, &["FUNCTION", "LIST"]).await;
    format!("{v:?}")
}

/// Keys in database `db` of `server` (statemirror's generation marker left out).
async fn keys_in(server: &RedisServer, db: u32) -> Vec<String> {
    let mut c = client(&format!("{}/{db}", server.url())).await;
    let mut k: Vec<String> = c.keys("*").await.expect("KEYS");
    k.retain(|k| k.as_bytes() != statemirror::redis::generation::KEY);
    k.sort();
    k
}

const LIBRARY: &str = "#!lua name=covlib\n\
redis.register_function('covset', function(keys, args) return redis.call('SET', keys[1], args[1]) end)";

/// Keyless writes are replayed as they are: after each one drains, the follower holds
/// exactly what the leader holds, database by database, and the same function libraries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_swap_and_function_commands_replay_on_the_follower() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut db0 = proxy.conn().await;
    let mut db1 = client(&format!("{}/1", proxy.url())).await;
    let mut db2 = client(&format!("{}/2", proxy.url())).await;
    let _: () = db0.set("a", "1").await.unwrap();
    let _: () = db0.set("b", "2").await.unwrap();
    let _: () = db1.set("x", "1").await.unwrap();
    let _: () = db2.set("z", "1").await.unwrap();
    let name: String = cmd(&mut db0, &["FUNCTION", "LOAD", LIBRARY]).await;
    assert_eq!(name, "covlib");
    let _: () = cmd(&mut db0, &["FCALL", "covset", "1", "f", "by-function"]).await;
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader, &follower).await, 5);
    assert!(
        functions(&follower).await.contains("covset"),
        "FUNCTION LOAD not replayed"
    );

    let _: () = cmd(&mut db1, &["FLUSHDB"]).await;
    proxy.drained().await;
    assert_eq!(keys_in(&follower, 1).await, Vec::<String>::new());
    assert_eq!(keys_in(&follower, 0).await, vec!["a", "b", "f"]);
    assert_eq!(assert_same_data(&leader, &follower).await, 4);

    let _: () = cmd(&mut db0, &["SWAPDB", "0", "2"]).await;
    proxy.drained().await;
    assert_eq!(keys_in(&follower, 0).await, vec!["z"]);
    assert_eq!(keys_in(&follower, 2).await, vec!["a", "b", "f"]);
    assert_eq!(assert_same_data(&leader, &follower).await, 4);

    let _: () = cmd(&mut db0, &["FUNCTION", "DELETE", "covlib"]).await;
    proxy.drained().await;
    assert!(
        !functions(&follower).await.contains("covlib"),
        "FUNCTION DELETE not replayed"
    );
    assert_eq!(functions(&leader).await, functions(&follower).await);

    let _: () = cmd(&mut db1, &["FLUSHALL"]).await;
    proxy.drained().await;
    for db in 0..3 {
        assert_eq!(
            keys_in(&follower, db).await,
            Vec::<String>::new(),
            "db {db}"
        );
    }
    assert_eq!(assert_same_data(&leader, &follower).await, 0);
}

/// The lag gauge is the age of the oldest write not yet on the follower: it grows while the
/// follower is stopped with writes queued, and is 0 again once they are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_lag_gauge_grows_while_the_follower_is_stopped_and_returns_to_zero() {
    let _metrics = metrics_exclusive().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    let _: () = c.set("lag:0", 0).await.unwrap();
    proxy.drained().await;
    eventually(Duration::from_secs(10), || async {
        let v = proxy.metric(LAG, REDIS).await;
        if v == 0.0 {
            Ok(())
        } else {
            Err(format!("lag {v} with nothing queued"))
        }
    })
    .await;

    let stopped = Frozen::new(follower.pid());
    for i in 1..=5 {
        let _: () = c.set(format!("lag:{i}"), i).await.unwrap();
    }
    eventually(Duration::from_secs(10), || async {
        let gauge = proxy.metric(LAG, REDIS).await;
        let s = proxy.status().await;
        let m = &s["redis"]["mirror"];
        let status = m["lag_seconds"].as_f64().unwrap_or(0.0);
        if gauge >= 0.5 && status >= gauge && m["queue_depth"].as_u64() > Some(0) {
            Ok(())
        } else {
            Err(format!("gauge {gauge}, /status {m}"))
        }
    })
    .await;

    drop(stopped); // SIGCONT
    proxy.drained().await;
    eventually(Duration::from_secs(10), || async {
        let gauge = proxy.metric(LAG, REDIS).await;
        let status = proxy.status().await["redis"]["mirror"]["lag_seconds"].clone();
        if gauge == 0.0 && status == 0.0 {
            Ok(())
        } else {
            Err(format!("gauge {gauge}, /status {status}"))
        }
    })
    .await;
    assert_eq!(assert_same_data(&leader, &follower).await, 6);
}

/// `SIGTERM` while the follower is stopped with writes queued: the binary keeps trying for
/// `maintenance.drain_timeout_ms`, then exits 0 and logs how many writes it leaves behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stopped_follower_exits_after_the_drain_timeout_and_logs_what_is_left() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (listen, admin) = (free_port(), free_port());
    let config = dir.path().join("statemirror.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"warn\"\n\
             [redis]\nlisten = \"127.0.0.1:{listen}\"\nleader = \"{}\"\nfollower = \"{}\"\n\
             health_interval_ms = 200\nconnect_timeout_ms = 500\n\
             [replication]\napply_timeout_ms = 500\nretry_max_backoff_ms = 200\n\
             [maintenance]\ndrain_timeout_ms = 700\n",
            leader.url(),
            follower.url()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("statemirror runs");
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let guard = KillOnDrop(&mut child);
    let base = format!("http://127.0.0.1:{admin}");
    let status = || async {
        let (code, body) = statemirror::admin::client::request(
            &base,
            hyper::Method::GET,
            "/status",
            None,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
        if code == 200 {
            Ok(json(&body))
        } else {
            Err(body)
        }
    };
    // Up, and the resync at start done.
    eventually(Duration::from_secs(20), || async {
        let s = status().await?;
        if s["redis"]["mirror"]["in_sync"] == true {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    })
    .await;
    let stopped = Frozen::new(follower.pid());
    let mut c = client(&format!("redis://127.0.0.1:{listen}")).await;
    for i in 0..10 {
        let _: () = c.set(format!("left:{i}"), i).await.unwrap();
    }
    eventually(Duration::from_secs(10), || async {
        let s = status().await?;
        match s["redis"]["mirror"]["queue_depth"].as_u64() {
            Some(10) => Ok(()),
            _ => Err(format!("{s}")),
        }
    })
    .await;
    drop(c);

    signal(pid, "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(st) = guard.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 15 s after SIGTERM (drain_timeout_ms = 700)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stopped);
    assert_eq!(exit.code(), Some(0), "a drain timeout is not a crash");
    let mut log = String::new();
    if let Some(mut e) = guard.0.stderr.take() {
        let _ = e.read_to_string(&mut log);
    }
    let line = log
        .lines()
        .find(|l| l.contains("stopping with writes not yet mirrored"))
        .unwrap_or_else(|| panic!("no drain-timeout warning in: {log}"));
    assert!(line.contains("queue_depth=10"), "{line}");
    assert!(line.contains("drain_timeout_ms=700"), "{line}");
}

/// `App::stop` (what `SIGTERM` runs) reports whether everything acknowledged reached the
/// follower: true when the queue drains, false when `drain_timeout_ms` passes first (the
/// follower is stopped), and it returns either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_stop_reports_whether_the_mirror_drained() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    for frozen in [false, true] {
        let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
            cfg.maintenance.drain_timeout_ms = 300;
        })
        .await;
        let stopped = frozen.then(|| Frozen::new(follower.pid()));
        let mut c = proxy.conn().await;
        for i in 0..10 {
            let _: () = c.set(format!("stop:{i}"), i).await.unwrap();
        }
        let drained = tokio::time::timeout(Duration::from_secs(10), proxy.app.stop())
            .await
            .expect("stop returned");
        assert_eq!(drained, !frozen, "follower stopped: {frozen}");
        let depth = proxy.app.mirrors()[0].1.status().queue_depth;
        assert_eq!(depth, if frozen { 10 } else { 0 }, "left in the queue");
        drop(stopped);
    }
}

/// `GET /verify` while another verification runs (here: stuck on a stopped follower) is
/// refused with 409; once the follower continues, the first one answers 200. With the
/// follower gone, a verification answers 503 and names the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_409_while_another_runs_and_503_when_a_backend_is_down() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    for i in 0..10 {
        let _: () = c.set(format!("v:{i}"), i).await.unwrap();
    }
    proxy.drained().await;

    let stopped = Frozen::new(follower.pid());
    let first = {
        let admin = proxy.admin();
        tokio::spawn(async move {
            statemirror::admin::client::request(
                &admin,
                hyper::Method::GET,
                "/verify",
                statemirror::admin::client::discover_token(&admin).as_deref(),
                Duration::from_secs(30),
            )
            .await
            .expect("admin API")
        })
    };
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        if s["redis"]["verify"]["running"] == true {
            Ok(())
        } else {
            Err(format!(
                "verification not running: {}",
                s["redis"]["verify"]
            ))
        }
    })
    .await;
    let (code, body) = proxy.http("GET", "/verify", None).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("already running")),
        "{body}"
    );
    drop(stopped);
    let (code, body) = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("first verification finished")
        .expect("task");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["redis"]["total_differences"], 0, "{body}");
    assert_eq!(json(&body)["redis"]["equal"], 10, "{body}");

    follower.kill();
    let (code, body) = proxy.http("GET", "/verify", None).await;
    assert_eq!(code, 503, "{body}");
    let err = json(&body)["redis"]["error"].as_str().map(str::to_string);
    assert!(
        err.as_deref().is_some_and(|e| e.starts_with("follower")),
        "{body}"
    );
    // /status shows its category only (the backend's error text stays in the log).
    assert_eq!(
        proxy.status().await["redis"]["verify"]["last"]["error"],
        statemirror::replication::public::error(&err.unwrap_or_default())
    );
}

/// `max_queue_bytes = 1024` and a dead follower: writes of a few hundred bytes overflow the
/// queue by bytes (far below `max_queue_ops`). The follower is marked out of sync with the
/// byte limit named, every write is either still queued or counted as discarded (in
/// `/status` and, exactly, in `statemirror_mirror_dropped_writes_total`), and the queue
/// never holds more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_byte_limit_overflow_marks_out_of_sync_and_is_counted() {
    let _metrics = metrics_exclusive().await;
    let leader = RedisServer::start();
    let mut follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        cfg.replication.max_queue_bytes = 1024;
        cfg.resync.auto = false;
        cfg.resync.on_start = false;
    })
    .await;
    follower.kill();
    let dropped_before = proxy.metric(DROPPED, REDIS).await;
    let mut c = proxy.conn().await;
    let value = "v".repeat(300);
    for i in 0..20 {
        let _: () = c.set(format!("big:{i}"), &value).await.unwrap();
        let bytes = proxy.status().await["redis"]["mirror"]["queue_bytes"]
            .as_u64()
            .expect("queue_bytes");
        assert!(bytes <= 1024, "{bytes} bytes queued, limit 1024");
    }
    let s = proxy.status().await;
    let m = &s["redis"]["mirror"];
    assert_eq!(m["in_sync"], false, "{m}");
    let reason = m["out_of_sync_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("overflowed") && reason.contains("1024 bytes"),
        "{reason}"
    );
    let dropped = m["dropped_writes"].as_u64().expect("dropped_writes");
    assert!(dropped > 0, "{m}");
    assert_eq!(
        dropped + m["queue_depth"].as_u64().expect("depth"),
        20,
        "{m}"
    );
    assert_eq!(
        proxy.metric(DROPPED, REDIS).await - dropped_before,
        dropped as f64
    );
    // Writes still succeed for clients.
    assert_eq!(
        get_str(&leader, "big:19").await.as_deref(),
        Some(value.as_str())
    );
}

async fn get_str(server: &RedisServer, key: &str) -> Option<String> {
    let mut c = server.conn().await;
    c.get(key).await.expect("GET")
}

/// A fake Redis that answers `PING` with `+PONG` while healthy; while failing, it counts
/// each `PING` and answers it with an error only when the test releases one, so the test
/// decides exactly how many failed checks the proxy has seen. Anything else gets an error.
struct FakeBackend {
    addr: std::net::SocketAddr,
    failing: Arc<AtomicBool>,
    failed_pings: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeBackend {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let failing = Arc::new(AtomicBool::new(false));
        let failed_pings = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (f, p, r) = (failing.clone(), failed_pings.clone(), release.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(Self::serve(sock, f.clone(), p.clone(), r.clone()));
            }
        });
        FakeBackend {
            addr,
            failing,
            failed_pings,
            release,
            task,
        }
    }

    async fn serve(
        mut sock: tokio::net::TcpStream,
        failing: Arc<AtomicBool>,
        failed_pings: Arc<AtomicUsize>,
        release: Arc<tokio::sync::Semaphore>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((req, used)) = parse_resp(&buf) {
                buf.drain(..used);
                let is_ping = matches!(&req, Resp::Array(a)
                    if a.first().and_then(Resp::text).is_some_and(|c| c.eq_ignore_ascii_case("ping")));
                let reply: &[u8] = if !is_ping {
                    b"-ERR fake backend\r\n"
                } else if failing.load(Ordering::SeqCst) {
                    failed_pings.fetch_add(1, Ordering::SeqCst);
                    match release.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                    b"-ERR fake backend failing\r\n"
                } else {
                    b"+PONG\r\n"
                };
                if sock.write_all(reply).await.is_err() {
                    return;
                }
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits until `n` PINGs arrived while failing.
    async fn wait_failed_pings(&self, n: usize) {
        eventually(Duration::from_secs(10), || async {
            match self.failed_pings.load(Ordering::SeqCst) {
                got if got == n => Ok(()),
                got if got > n => panic!("{got} failing PINGs, expected {n} (nothing released)"),
                got => Err(format!("{got} failing PINGs, waiting for {n}")),
            }
        })
        .await
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.release.close();
        self.task.abort();
    }
}

/// `health_failures_before_down = 3`: after two failed checks the follower is still up (the
/// third check is already under way, so the second was judged), after the third it is down;
/// one good check brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_is_down_after_health_failures_before_down_failed_checks() {
    let _metrics = metrics_shared().await;
    const N: usize = 3;
    let leader = RedisServer::start();
    let fake = FakeBackend::start().await;
    let url = format!("redis://{}", fake.addr);
    let proxy = Proxy::start_with(&leader, None, |cfg| {
        let r = cfg.redis.as_mut().expect("[redis]");
        r.follower = Some(url);
        r.health_failures_before_down = N as u32;
        r.health_interval_ms = 50;
        // Longer than any wait here: only the fake's answers decide a check.
        r.health_timeout_ms = 20_000;
        cfg.resync.auto = false;
        cfg.resync.on_start = false;
    })
    .await;
    let follower_up = || async { proxy.status().await["redis"]["follower"]["up"].clone() };
    assert_eq!(follower_up().await, true);

    fake.failing.store(true, Ordering::SeqCst);
    for judged in 1..N {
        fake.wait_failed_pings(judged).await;
        fake.release.add_permits(1);
        // The next check has started: failure number `judged` was recorded.
        fake.wait_failed_pings(judged + 1).await;
        assert_eq!(
            follower_up().await,
            true,
            "down after {judged} failed checks"
        );
    }
    fake.release.add_permits(1); // failure number N
    eventually(Duration::from_secs(10), || async {
        match follower_up().await {
            v if v == false => Ok(()),
            v => Err(format!("follower up = {v} after {N} failed checks")),
        }
    })
    .await;
    fake.wait_failed_pings(N + 1).await;
    assert_eq!(follower_up().await, false);

    fake.failing.store(false, Ordering::SeqCst);
    fake.release.add_permits(1);
    eventually(Duration::from_secs(10), || async {
        match follower_up().await {
            v if v == true => Ok(()),
            v => Err(format!("follower up = {v} after a good check")),
        }
    })
    .await;
}

/// Backend URLs ending in `/3`: statemirror's own connections (health, mirror, resync,
/// verify, its generation marker) use database 3, while clients keep choosing their own:
/// a client's database N is database N on the leader and on the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_url_database_is_statemirrors_own_and_client_databases_map_one_to_one() {
    let _metrics = metrics_shared().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |cfg| {
        let r = cfg.redis.as_mut().expect("[redis]");
        r.leader = format!("{}/3", leader.url());
        r.follower = Some(format!("{}/3", follower.url()));
    })
    .await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["leader"]["db"], 3, "{s}");
    assert_eq!(s["redis"]["follower"]["db"], 3, "{s}");
    let mut db0 = proxy.conn().await;
    let mut db5 = client(&format!("{}/5", proxy.url())).await;
    let _: () = db0.set("in0", "zero").await.unwrap();
    let _: i64 = db0.append("in0", "+").await.unwrap();
    let _: () = db5.set("in5", "five").await.unwrap();
    proxy.drained().await;
    for server in [&leader, &follower] {
        assert_eq!(keys_in(server, 0).await, vec!["in0"]);
        assert_eq!(keys_in(server, 5).await, vec!["in5"]);
        assert_eq!(keys_in(server, 3).await, Vec::<String>::new());
    }
    assert_eq!(assert_same_data(&leader, &follower).await, 2);
    // The generation marker lives in database 3 (statemirror's own) on both sides.
    for server in [&leader, &follower] {
        let c = client(&format!("{}/3", server.url())).await;
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
                    Err(format!("no marker in db 3 of {}", server.addr()))
                }
            }
        })
        .await;
    }
    // Verify and resync cover every database, not just 3.
    let mut f0 = follower.conn().await;
    let _: () = f0.del("in0").await.unwrap();
    let (code, body) = proxy.http("GET", "/verify", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["redis"]["missing_on_follower"], 1, "{body}");
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert_eq!(code, 202, "{body}");
    settle_with("redis", || proxy.status()).await;
    assert_eq!(assert_same_data(&leader, &follower).await, 2);
}

/// Both backends require a password (statemirror's own connections get it from files).
/// A client that authenticated reads through the follower once the leader is killed, its
/// writes are refused, and a client that did not authenticate gets `NOAUTH` there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_serves_authenticated_clients_from_the_follower() {
    let _metrics = metrics_shared().await;
    const PW: &str = "fail0ver-pw";
    let mut leader = RedisServer::start_with(&["--requirepass", PW]);
    let follower = RedisServer::start_with(&["--requirepass", PW]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{PW}\n")).expect("password file");
    let (lp, fp) = (pw_file.clone(), pw_file.clone());
    let proxy = Proxy::start_with(&leader, Some(&follower), move |cfg| {
        let r = cfg.redis.as_mut().expect("[redis]");
        r.leader_password_file = Some(lp);
        r.follower_password_file = Some(fp);
    })
    .await;
    let authed = format!("redis://:{PW}@{}", proxy.addr());
    let mut c = client(&authed).await;
    for i in 0..10 {
        let _: () = c.set(format!("auth:{i}"), format!("v{i}")).await.unwrap();
    }
    proxy.drained().await;
    leader.kill();
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        if s["redis"]["serving"] == "follower" {
            Ok(())
        } else {
            Err(format!("{}", s["redis"]))
        }
    })
    .await;

    let mut ro = Raw::connect(proxy.addr()).await;
    let r = ro.cmd(&["GET", "auth:1"]).await;
    assert!(
        matches!(&r, Resp::Error(e) if e.starts_with("NOAUTH")),
        "unauthenticated read on the follower: {r:?}"
    );
    assert_eq!(ro.cmd(&["AUTH", PW]).await, Resp::Simple("OK".into()));
    for i in 0..10 {
        assert_eq!(
            ro.cmd(&["GET", &format!("auth:{i}")]).await,
            Resp::bulk(format!("v{i}"))
        );
    }
    let r = ro.cmd(&["SET", "auth:1", "nope"]).await;
    assert!(
        matches!(&r, Resp::Error(e) if e.starts_with("READONLY statemirror: leader unavailable")),
        "{r:?}"
    );
    // The redis crate, authenticating from the URL, reads the follower's copy.
    let mut c = client(&authed).await;
    let v: String = c.get("auth:9").await.unwrap();
    assert_eq!(v, "v9");
    assert_eq!(proxy.status().await["redis"]["connections"]["follower"], 2);
}
