//! A Sentinel-managed leader (`redis+sentinel://`): a master, its replica and three real
//! sentinels (`redis-server --sentinel`), a follower, and NiFi-style writes through the proxy
//! while `SENTINEL FAILOVER` moves the master. The proxy must follow the switch, writes must
//! go on after at most the switch window's errors (and none after it), and the follower must
//! end equal to the new master with `/verify` at zero.
mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use serde_json::Value;

struct SentinelProc {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SentinelProc {
    fn start(master_port: u16) -> SentinelProc {
        Self::start_with(master_port, "")
    }

    /// `extra`: more sentinel.conf lines.
    fn start_with(master_port: u16, extra: &str) -> SentinelProc {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            // Sentinel rewrites its config file: one per sentinel, in its own directory.
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\n{extra}",
                    dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken?
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return SentinelProc {
                        port,
                        child,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a sentinel");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for SentinelProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reply's strings, depth first.
fn flat(r: &Resp) -> Vec<String> {
    match r {
        Resp::Array(a) => a.iter().flat_map(flat).collect(),
        other => other.text().into_iter().collect(),
    }
}

async fn role(s: &RedisServer) -> String {
    let mut c = s.conn().await;
    let r: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.expect("ROLE");
    match r.first() {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

/// NiFi's replace (WATCH, GET, MULTI, GETSET, EXEC) in a loop per task; errors are counted
/// with the time they happened, and the task reconnects.
struct Nifi {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Nifi {
    fn start(url: &str, tasks: usize) -> Nifi {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..tasks)
            .map(|t| {
                let (url, stop, ok, errors) =
                    (url.to_string(), stop.clone(), ok.clone(), errors.clone());
                tokio::spawn(async move {
                    let mut conn = None;
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        if conn.is_none() {
                            match tokio::time::timeout(Duration::from_secs(2), async {
                                redis::Client::open(url.as_str())?
                                    .get_multiplexed_async_connection()
                                    .await
                            })
                            .await
                            {
                                Ok(Ok(c)) => conn = Some(c),
                                other => {
                                    let e = format!("connect: {other:?}");
                                    errors.lock().unwrap().push((Instant::now(), e));
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    continue;
                                }
                            }
                        }
                        let Some(c) = conn.as_mut() else { continue };
                        let key = format!("nifi/components/c{}", (i + t as u64) % 8);
                        let r = tokio::time::timeout(Duration::from_secs(3), async {
                            common::workload::nifi_replace(c, &key, t, i).await?;
                            // And a plain write of a key only this op writes.
                            c.set::<_, _, ()>(format!("nifi/plain/{t}/{i}"), i).await
                        })
                        .await;
                        match r {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                let e = format!("{other:?}");
                                errors.lock().unwrap().push((Instant::now(), e));
                                conn = None;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Nifi {
            stop,
            ok,
            errors,
            tasks,
        }
    }

    async fn stop(self) -> (u64, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_sentinel_failover() {
    let t0 = Instant::now();
    let master = RedisServer::start();
    let mport = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &mport]);
    let follower = RedisServer::start();
    let sentinels: Vec<SentinelProc> = (0..3).map(|_| SentinelProc::start(master.port)).collect();
    // Every sentinel knows the replica (needed for a failover) and the others.
    for s in &sentinels {
        eventually(Duration::from_secs(20), || async {
            let mut c = Raw::connect(s.addr()).await;
            let r = c.cmd(&["SENTINEL", "REPLICAS", "mymaster"]).await;
            let text = flat(&r).join(" ");
            if text.contains(&format!("port {}", replica.port)) && text.contains("flags slave ") {
                Ok(())
            } else {
                Err(text)
            }
        })
        .await;
    }
    let url = format!(
        "redis+sentinel://{}/mymaster",
        sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let proxy = Proxy::start_with(&master, Some(&follower), |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.leader = url.clone();
    })
    .await;
    let s = proxy.status().await;
    assert_eq!(
        s["redis"]["leader"]["address"],
        master.addr(),
        "{}",
        s["redis"]
    );
    assert_eq!(s["redis"]["leader"]["sentinel"]["master_name"], "mymaster");
    assert_eq!(s["redis"]["leader"]["sentinel"]["switches"], 0);
    eprintln!("setup {:?}", t0.elapsed());

    let nifi = Nifi::start(&proxy.url(), 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = nifi.ok.load(Ordering::Relaxed);
    assert!(
        before > 20,
        "workload runs before the failover ({before} ok)"
    );

    // Two sessions on the old master: one idle, one between WATCH and EXEC.
    let mut idle = Raw::connect(proxy.addr()).await;
    assert_eq!(idle.cmd(&["PING"]).await.text().as_deref(), Some("PONG"));
    let mut watching = Raw::connect(proxy.addr()).await;
    assert!(!watching.cmd(&["WATCH", "nifi/pinned"]).await.is_error());
    let failover_at = Instant::now();
    let mut s1 = Raw::connect(sentinels[0].addr()).await;
    let r = s1.cmd(&["SENTINEL", "FAILOVER", "mymaster"]).await;
    assert!(!r.is_error(), "SENTINEL FAILOVER: {r:?}");
    eventually(Duration::from_secs(20), || async {
        let s = proxy.status().await;
        let l = &s["redis"]["leader"];
        if l["address"] == replica.addr() && l["sentinel"]["switches"] == 1 {
            Ok(())
        } else {
            Err(l.to_string())
        }
    })
    .await;
    let switched_at = Instant::now();
    eprintln!(
        "proxy switched {:?} after SENTINEL FAILOVER",
        switched_at - failover_at
    );
    assert_eq!(role(&replica).await, "master");
    // The idle session is closed at once; the watching one only once its WATCH is over.
    assert!(
        idle.closed_within(Duration::from_secs(2)).await,
        "idle session closed"
    );
    assert!(
        !watching.closed_within(Duration::from_millis(300)).await,
        "not closed between WATCH and EXEC"
    );
    assert!(!watching.cmd(&["UNWATCH"]).await.is_error());
    assert!(
        watching.closed_within(Duration::from_secs(2)).await,
        "closed after UNWATCH"
    );
    // Writes go on after the switch: sessions on the old master were closed.
    let at_switch = nifi.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (ok, errors) = nifi.stop().await;
    assert!(
        ok > at_switch + 20,
        "writes continue after the switch ({at_switch} → {ok})"
    );
    let window_end = switched_at + Duration::from_secs(2);
    let late: Vec<_> = errors.iter().filter(|(t, _)| *t > window_end).collect();
    eprintln!(
        "{ok} ok, {} errors, all within {:?} of SENTINEL FAILOVER: {:?}",
        errors.len(),
        errors.iter().map(|(t, _)| *t - failover_at).max(),
        errors.iter().map(|(_, e)| e).take(5).collect::<Vec<_>>()
    );
    assert!(late.is_empty(), "errors after the switch window: {late:?}");
    assert!(
        errors.len() <= 40,
        "at most the switch's errors: {errors:?}"
    );

    // The follower converges to the new master (the switch marked it out of sync).
    proxy.drained().await;
    eventually(Duration::from_secs(30), || async {
        let s = proxy.status().await;
        let sync = &s["redis"]["mirror"];
        match compare_data(&replica, &follower).await {
            Ok(n) if n > 0 => Ok(()),
            Ok(_) => Err("no data".to_string()),
            Err(e) => Err(format!("{e} (sync: {sync})")),
        }
    })
    .await;
    // In sync again (after the resync the switch asked for), and the new master was not
    // taken for a leader that lost data.
    eventually(Duration::from_secs(30), || async {
        let m = proxy.status().await["redis"]["mirror"].clone();
        if m["in_sync"] == true && m["leader_data_loss"].is_null() {
            Ok(())
        } else {
            Err(m.to_string())
        }
    })
    .await;
    eprintln!("mirror: {}", proxy.status().await["redis"]["mirror"]);
    let (code, body) = proxy.http("GET", "/verify", None).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["redis"]["total_differences"], 0, "{body}");
    // No going back: the old master may still say `master` for a while, but the sentinels'
    // configuration epoch is newer.
    let l = &proxy.status().await["redis"]["leader"];
    assert_eq!(l["address"], replica.addr(), "{l}");
    assert_eq!(l["sentinel"]["switches"], 1, "{l}");
    // Sentinel demotes the old master once it sees it (its INFO period: up to 10 s).
    eventually(Duration::from_secs(20), || async {
        match role(&master).await.as_str() {
            "slave" => Ok(()),
            r => Err(r.to_string()),
        }
    })
    .await;
    eprintln!("total {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_with_no_live_sentinel_does_not_start_clients_on_a_guess() {
    let leader = RedisServer::start();
    let dead = free_port();
    let proxy = Proxy::start_with(&leader, None, |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.leader = format!("redis+sentinel://127.0.0.1:{dead}/mymaster");
    })
    .await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["leader"]["address"], "(not resolved)");
    let mut c = Raw::connect(proxy.addr()).await;
    let r = c.read().await;
    assert!(r.is_error(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_with_a_password() {
    let master = RedisServer::start();
    let sentinel = SentinelProc::start_with(master.port, "requirepass sentinel-pw\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::write(&good, "sentinel-pw\n").expect("write");
    std::fs::write(&bad, "wrong\n").expect("write");
    let url = format!("redis+sentinel://{}/mymaster", sentinel.addr());
    let start = |file: std::path::PathBuf| {
        let url = url.clone();
        Proxy::start_with(&master, None, move |c| {
            let r = c.redis.as_mut().expect("[redis]");
            r.leader = url;
            r.leader_sentinel_password_file = Some(file);
        })
    };
    let proxy = start(good).await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["leader"]["address"], master.addr(), "{s}");
    assert!(!s.to_string().contains("sentinel-pw"));
    let mut c = proxy.conn().await;
    let _: () = c
        .set("k", "v")
        .await
        .expect("SET through the sentinel-found master");
    let refused = start(bad).await;
    let s = refused.status().await;
    assert_eq!(s["redis"]["leader"]["address"], "(not resolved)", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_managed_follower_is_mirrored_to() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let sentinel = SentinelProc::start(follower.port);
    let url = format!("redis+sentinel://{}/mymaster", sentinel.addr());
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.follower = Some(url.clone());
    })
    .await;
    let s = proxy.status().await;
    assert_eq!(s["redis"]["follower"]["address"], follower.addr(), "{s}");
    let mut c = proxy.conn().await;
    let _: () = c.set("nifi/f", "1").await.expect("SET");
    proxy.drained().await;
    let mut f = follower.conn().await;
    let v: Option<String> = f.get("nifi/f").await.expect("GET");
    assert_eq!(v.as_deref(), Some("1"));
}
