//! `rediss+sentinel://`: three sentinels on TLS ports only, a master and its replica on TLS
//! (`tls-replication yes`, client certificates required everywhere), certificates made at
//! test time. The sidecar finds the master over TLS, verifies every server against its own
//! address (the sentinels' `localhost` from the URL, the master's IP as the sentinels return
//! it),
//! follows a `SENTINEL FAILOVER` mid-workload, and the follower converges with `/verify` at
//! zero. A wrong CA and a master certificate without the IP the sentinels name are reported
//! in `/status`, for the backend and for its sentinel set. A follower behind TLS sentinels is
//! found and mirrored to.
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::sentinel::{
    hosts_named, idle_session_after_switch, role, wait_replica_known, wait_replica_synced, Nifi,
    SentinelProc, TlsFiles, TlsRedis,
};
use common::tls::Ca;
use common::*;
use redis::AsyncCommands;
use statemirror::tls::ClientTlsSettings;

async fn sentinel_proxy(
    master: &TlsRedis,
    follower: Option<&RedisServer>,
    url: String,
    tls: ClientTlsSettings,
) -> Proxy {
    Proxy::start_with(&master.server, follower, move |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.leader = url;
        r.leader_tls = Some(tls);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinels_are_followed_through_a_failover() {
    let t0 = Instant::now();
    let ca = Ca::new("sentinel test CA");
    // The servers' certificates carry only an IP SAN: they are verified against the IP the
    // sentinels name. The sentinels' carry only `localhost`, the name the URL gives them.
    let files = TlsFiles::new(&ca, &["127.0.0.1"]);
    let sentinel_files = TlsFiles::new(&ca, &["localhost"]);
    let master = TlsRedis::start(&files, None);
    let replica = TlsRedis::start(&files, Some(master.tls_port));
    let follower = RedisServer::start();
    let sentinels: Vec<SentinelProc> = (0..3)
        .map(|_| SentinelProc::start_tls(master.tls_port, &sentinel_files))
        .collect();
    // Replication runs over TLS too: the replica's first sync is done before the failover.
    wait_replica_synced(&replica.server).await;
    wait_replica_known(&sentinels, replica.tls_port).await;
    let url = format!(
        "rediss+sentinel://{}/mymaster",
        hosts_named(&sentinels, "localhost")
    );
    let proxy = sentinel_proxy(&master, Some(&follower), url, files.client_settings()).await;
    let s = proxy.status().await;
    let l = &s["redis"]["leader"];
    assert_eq!(l["address"], master.tls_addr(), "{l}");
    assert_eq!(l["tls"], true, "{l}");
    assert!(l["sentinel"]["error"].is_null(), "{l}");
    eprintln!("setup {:?}", t0.elapsed());

    let nifi = Nifi::start(&proxy.url(), 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = nifi.ok.load(Ordering::Relaxed);
    assert!(before > 20, "writes flow before the failover ({before} ok)");
    let mut idle = Raw::connect(proxy.addr()).await;
    assert_eq!(idle.cmd(&["PING"]).await.text().as_deref(), Some("PONG"));

    let failover_at = Instant::now();
    let r = sentinels[0]
        .cmd(&["SENTINEL", "FAILOVER", "mymaster"])
        .await;
    assert!(!r.is_error(), "SENTINEL FAILOVER: {r:?}");
    eventually(Duration::from_secs(20), || async {
        let l = proxy.status().await["redis"]["leader"].clone();
        if l["address"] == replica.tls_addr() && l["sentinel"]["switches"] == 1 {
            Ok(())
        } else {
            Err(l.to_string())
        }
    })
    .await;
    let switched_at = Instant::now();
    eprintln!(
        "switched {:?} after SENTINEL FAILOVER",
        switched_at - failover_at
    );
    assert_eq!(role(&replica.server).await, "master");
    // The promoted replica got the data over TLS replication (one key per write at least).
    let mut r = replica.server.conn().await;
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut r)
        .await
        .expect("DBSIZE");
    assert!(
        keys >= before,
        "{keys} keys on the new master, {before} writes before"
    );
    idle_session_after_switch(&mut idle, "nifi/idle").await;
    nifi.stop_after_switch(Duration::from_secs(3), failover_at, switched_at)
        .await;

    proxy.drained().await;
    eventually(Duration::from_secs(30), || async {
        let m = proxy.status().await["redis"]["mirror"].clone();
        if m["in_sync"] == true && m["leader_data_loss"].is_null() {
            Ok(())
        } else {
            Err(m.to_string())
        }
    })
    .await;
    let n = assert_same_data(&replica.server, &follower).await;
    assert!(
        n > 20,
        "the follower holds the new master's data ({n} keys)"
    );
    assert_verify_zero(&proxy.admin(), "redis").await;
    eprintln!("total {:?}", t0.elapsed());
}

/// Waits until the leader is down with `needle` in both its error and its sentinel's.
async fn wait_named(proxy: &Proxy, needle: &str, names: &str) -> String {
    eventually(Duration::from_secs(10), || async {
        let l = proxy.status().await["redis"]["leader"].clone();
        let err = l["error"].as_str().unwrap_or("").to_string();
        let serr = l["sentinel"]["error"].as_str().unwrap_or("");
        if l["up"] == false && err.contains(needle) && err.contains(names) && serr.contains(needle)
        {
            Ok(err)
        } else {
            Err(format!(
                "leader not down with {needle:?} naming {names}: {l}"
            ))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_to_the_sentinels_and_their_master_are_named() {
    let ca = Ca::new("sentinel test CA");
    let other = TlsFiles::new(&Ca::new("someone else's CA"), &["127.0.0.1"]);
    // The master's certificate names "localhost" only, not the IP the sentinels return.
    let master_files = TlsFiles::new(&ca, &["localhost"]);
    let sentinel_files = TlsFiles::new(&ca, &["127.0.0.1", "localhost"]);
    let master = TlsRedis::start(&master_files, None);
    let sentinel = SentinelProc::start_tls(master.tls_port, &sentinel_files);
    let url = format!("rediss+sentinel://{}/mymaster", sentinel.addr());

    // A CA that did not sign the sentinels' certificates.
    let wrong_ca = ClientTlsSettings {
        ca_file: Some(other.ca.clone()),
        ..sentinel_files.client_settings()
    };
    let proxy = sentinel_proxy(&master, None, url.clone(), wrong_ca).await;
    let err = wait_named(&proxy, "unknown CA", &sentinel.addr().to_string()).await;
    eprintln!("wrong CA: {err}");
    assert!(!err.contains("BEGIN"), "{err}");
    drop(proxy);

    // The sentinel is trusted; the master it names (127.0.0.1) is not in its certificate.
    let proxy = sentinel_proxy(&master, None, url.clone(), sentinel_files.client_settings()).await;
    let err = wait_named(
        &proxy,
        "hostname mismatch (certificate is for localhost, expected 127.0.0.1)",
        &master.tls_addr(),
    )
    .await;
    eprintln!("master's name: {err}");
    drop(proxy);

    // `server_name` names every server: the master's certificate matches now.
    let by_name = ClientTlsSettings {
        server_name: Some("localhost".into()),
        ..sentinel_files.client_settings()
    };
    let proxy = sentinel_proxy(&master, None, url, by_name).await;
    eventually(Duration::from_secs(10), || async {
        let l = proxy.status().await["redis"]["leader"].clone();
        if l["address"] == master.tls_addr() && l["sentinel"]["error"].is_null() {
            Ok(())
        } else {
            Err(l.to_string())
        }
    })
    .await;
    let mut c = proxy.conn().await;
    let _: () = c.set("nifi/k", "v").await.expect("SET over TLS");
    let mut m = master.server.conn().await;
    let v: Option<String> = m.get("nifi/k").await.expect("GET");
    assert_eq!(v.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_sentinel_managed_follower_is_mirrored_to() {
    let ca = Ca::new("sentinel test CA");
    let files = TlsFiles::new(&ca, &["127.0.0.1"]);
    let leader = RedisServer::start();
    let follower = TlsRedis::start(&files, None);
    let sentinel = SentinelProc::start_tls(follower.tls_port, &files);
    let url = format!("rediss+sentinel://{}/mymaster", sentinel.addr());
    let tls = files.client_settings();
    let proxy = Proxy::start_with(&leader, Some(&follower.server), move |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.follower = Some(url);
        r.follower_tls = Some(tls);
    })
    .await;
    let f = proxy.status().await["redis"]["follower"].clone();
    assert_eq!(f["address"], follower.tls_addr(), "{f}");
    assert_eq!(f["tls"], true, "{f}");
    let mut c = proxy.conn().await;
    let _: () = c.set("nifi/f", "1").await.expect("SET");
    proxy.drained().await;
    let mut fc = follower.server.conn().await;
    let v: Option<String> = fc.get("nifi/f").await.expect("GET");
    assert_eq!(v.as_deref(), Some("1"));
}
