//! A Sentinel-managed leader (`redis+sentinel://`): a master, its replica and three real
//! sentinels (`redis-server --sentinel`), a follower, and NiFi-style writes through the proxy
//! while `SENTINEL FAILOVER` moves the master. The proxy must follow the switch, writes must
//! go on after at most the switch window's errors (and none after it), and the follower must
//! end equal to the new master with `/verify` at zero.
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::sentinel::{
    hosts, idle_session_after_switch, role, wait_replica_known, wait_replica_synced, Nifi,
    SentinelProc,
};
use common::*;
use redis::AsyncCommands;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_sentinel_failover() {
    let t0 = Instant::now();
    // The replica's first full sync starts at once (default: after 5 s).
    let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let mport = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &mport]);
    wait_replica_synced(&replica).await;
    let follower = RedisServer::start();
    let sentinels: Vec<SentinelProc> = (0..3).map(|_| SentinelProc::start(master.port)).collect();
    // Every sentinel knows the replica (needed for a failover) and the others.
    wait_replica_known(&sentinels, replica.port).await;
    let url = format!("redis+sentinel://{}/mymaster", hosts(&sentinels));
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
    let r = sentinels[0]
        .cmd(&["SENTINEL", "FAILOVER", "mymaster"])
        .await;
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
    // Multiplexed (`multiplex_mode`), the idle one shares a connection that follows the
    // switch itself: it stays, and its writes reach the new master.
    idle_session_after_switch(&mut idle, "nifi/idle").await;
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
    let errors = nifi
        .stop_after_switch(Duration::from_secs(4), failover_at, switched_at)
        .await;
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
