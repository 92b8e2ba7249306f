//! TLS against real servers, with certificates made at test time (rcgen): `rediss://`
//! leader and follower (mutual TLS on the follower), each failure (wrong CA, expired,
//! hostname mismatch, missing client certificate) reported in `/status` and the metrics,
//! certificate and CA rotation mid-workload without dropping an established session, TLS
//! on the client listener (with client certificates) and on the admin listener, and
//! `check-config`'s key paths for missing files.
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::tls::{tls_client, Ca};
use common::*;
use redis::AsyncCommands;
use statemirror::tls::{ClientTlsSettings, ServerTlsSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    // Replace atomically, as cert-manager's symlink swap does.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &p).expect("rename");
    p
}

/// A redis-server with a TLS port too (the plain port stays for the harness's checks).
struct TlsRedis {
    server: RedisServer,
    tls_port: u16,
}

impl TlsRedis {
    fn start(
        dir: &Path,
        tag: &str,
        ca_pem: &str,
        cert: &(String, String),
        auth_clients: bool,
    ) -> TlsRedis {
        let cert_file = write(dir, &format!("{tag}-server.pem"), &cert.0);
        let key_file = write(dir, &format!("{tag}-server.key"), &cert.1);
        let ca_file = write(dir, &format!("{tag}-server-ca.pem"), ca_pem);
        let tls_port = free_port();
        let args = [
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            cert_file.display().to_string(),
            "--tls-key-file".into(),
            key_file.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca_file.display().to_string(),
            "--tls-auth-clients".into(),
            if auth_clients { "yes" } else { "no" }.into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = RedisServer::start_with(&args);
        TlsRedis { server, tls_port }
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.tls_port)
    }
}

fn client_tls(ca: Option<PathBuf>, cert: Option<(PathBuf, PathBuf)>) -> ClientTlsSettings {
    let (cert_file, key_file) = cert.map(|(c, k)| (Some(c), Some(k))).unwrap_or_default();
    ClientTlsSettings {
        ca_file: ca,
        cert_file,
        key_file,
        ..Default::default()
    }
}

async fn wait_error(proxy: &Proxy, role: &str, needle: &str) -> String {
    eventually(Duration::from_secs(10), || async {
        let s = proxy.status().await;
        let b = &s["redis"][role];
        let err = b["error"].as_str().unwrap_or("").to_string();
        if b["up"] == false && err.contains(needle) {
            Ok(err)
        } else {
            Err(format!("{role} not down with {needle:?}: {b}"))
        }
    })
    .await
}

#[tokio::test]
async fn rediss_leader_and_mutual_tls_follower_mirror_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let server_cert = ca.leaf("localhost", &["localhost", "127.0.0.1"], false);
    let leader = TlsRedis::start(dir.path(), "l", &ca.pem, &server_cert, false);
    let follower = TlsRedis::start(dir.path(), "f", &ca.pem, &server_cert, true);
    let (cc, ck) = ca.leaf("statemirror", &[], false);
    let cert = (
        write(dir.path(), "client.pem", &cc),
        write(dir.path(), "client.key", &ck),
    );
    let (lu, fu) = (leader.url(), follower.url());
    let proxy = Proxy::start_with(&leader.server, Some(&follower.server), |c| {
        let r = c.redis.as_mut().expect("redis");
        r.leader = lu;
        r.follower = Some(fu);
        r.leader_tls = Some(client_tls(Some(ca_file.clone()), None));
        r.follower_tls = Some(client_tls(Some(ca_file.clone()), Some(cert)));
    })
    .await;
    let mut c = proxy.conn().await;
    for i in 0..50 {
        let _: () = c.set(format!("nifi/components/{i}"), i).await.expect("SET");
    }
    proxy.drained().await;
    assert_eq!(assert_same_data(&leader.server, &follower.server).await, 50);
    let s = proxy.status().await;
    for role in ["leader", "follower"] {
        assert_eq!(s["redis"][role]["up"], true, "{s}");
        assert_eq!(s["redis"][role]["tls"], true, "{s}");
        assert!(s["redis"][role]["error"].is_null(), "{s}");
    }
    // The follower saw statemirror's TLS connections (its plain port only has the harness).
    let mut f = follower.server.conn().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut f)
        .await
        .expect("CLIENT LIST");
    assert!(list.lines().count() >= 2, "{list}");
}

#[tokio::test]
async fn each_tls_failure_is_named_in_status_and_metrics() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test CA");
    let other_ca = Ca::new("someone else's CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let other_ca_file = write(dir.path(), "other-ca.pem", &other_ca.pem);
    let good = ca.leaf("localhost", &["localhost"], false);
    let expired = ca.leaf("localhost", &["localhost"], true);
    let wrong_host = ca.leaf("db.example.com", &["db.example.com"], false);
    let cases: Vec<(&str, TlsRedis, PathBuf, &str)> = vec![
        (
            "wrong CA",
            TlsRedis::start(dir.path(), "a", &ca.pem, &good, false),
            other_ca_file,
            "unknown CA",
        ),
        (
            "expired",
            TlsRedis::start(dir.path(), "b", &ca.pem, &expired, false),
            ca_file.clone(),
            "certificate expired",
        ),
        (
            "hostname",
            TlsRedis::start(dir.path(), "c", &ca.pem, &wrong_host, false),
            ca_file.clone(),
            "hostname mismatch (certificate is for db.example.com, expected localhost)",
        ),
        // Mutual TLS required, no client certificate configured.
        (
            "no client cert",
            TlsRedis::start(dir.path(), "d", &ca.pem, &good, true),
            ca_file.clone(),
            "requires a client certificate",
        ),
    ];
    for (what, server, ca_path, needle) in &cases {
        let url = server.url();
        let ca_path = ca_path.clone();
        let proxy = Proxy::start_with(&server.server, None, |c| {
            let r = c.redis.as_mut().expect("redis");
            r.leader = url;
            r.leader_tls = Some(client_tls(Some(ca_path), None));
        })
        .await;
        let err = wait_error(&proxy, "leader", needle).await;
        assert!(
            err.contains(&format!("localhost:{}", server.tls_port)),
            "{what}: names the backend: {err}"
        );
        // A client is told no backend is available rather than hanging.
        let mut raw = Raw::connect(proxy.addr()).await;
        let r = raw.cmd(&["PING"]).await;
        assert!(r.is_error(), "{what}: {r:?}");
        if *what != "no client cert" {
            let m = proxy.metrics().await;
            assert!(m.contains("statemirror_tls_errors_total"), "{what}: {m}");
        }
        drop(proxy);
    }
    // Hostname verification off: the mismatched certificate is accepted (chain still checked).
    let (url, ca_path) = (cases[2].1.url(), ca_file.clone());
    let proxy = Proxy::start_with(&cases[2].1.server, None, |c| {
        let r = c.redis.as_mut().expect("redis");
        r.leader = url;
        let mut t = client_tls(Some(ca_path), None);
        t.verify_hostname = false;
        r.leader_tls = Some(t);
    })
    .await;
    let mut c = proxy.conn().await;
    let _: () = c
        .set("k", "v")
        .await
        .expect("SET with verify_hostname = false");
    let s = proxy.status().await;
    assert_eq!(s["redis"]["leader"]["up"], true, "{s}");
}

#[tokio::test]
async fn rotation_mid_workload_keeps_established_sessions() {
    let dir = tempfile::tempdir().expect("dir");
    let ca1 = Ca::new("CA one");
    let ca2 = Ca::new("CA two");
    // The leader requires client certificates: first from CA one, at the end only CA two.
    let leader = TlsRedis::start(
        dir.path(),
        "l",
        &ca1.pem,
        &ca1.leaf("localhost", &["localhost"], false),
        true,
    );
    let ca_file = write(dir.path(), "ca.pem", &ca1.pem);
    let (c1, k1) = ca1.leaf("statemirror-1", &[], false);
    let cert = (
        write(dir.path(), "client.pem", &c1),
        write(dir.path(), "client.key", &k1),
    );
    let url = leader.url();
    let settings = client_tls(Some(ca_file.clone()), Some(cert.clone()));
    let proxy = Proxy::start_with(&leader.server, None, |c| {
        let r = c.redis.as_mut().expect("redis");
        r.leader = url;
        r.leader_tls = Some(settings);
    })
    .await;
    // A session established before the rotation, and a workload of new connections.
    let mut old = Raw::connect(proxy.addr()).await;
    assert_eq!(
        old.cmd(&["SET", "old", "0"]).await.text().as_deref(),
        Some("OK")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let addr = proxy.addr();
    let workload = {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut c = Raw::connect(addr).await;
                c.send(&["SET", "new", &i.to_string()]).await;
                match c.read_within(Duration::from_secs(3)).await {
                    Ok(r) if r.text().as_deref() == Some("OK") => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = leader.server.conn().await;
    let config_set = |args: Vec<String>| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET");
        for a in args {
            cmd.arg(a);
        }
        cmd
    };
    // 1. The server trusts both CAs and presents a certificate from CA two.
    let both = format!("{}{}", ca1.pem, ca2.pem);
    let both_file = write(dir.path(), "l-both.pem", &both);
    let (s2, sk2) = ca2.leaf("localhost", &["localhost"], false);
    let (s2f, sk2f) = (
        write(dir.path(), "l-server2.pem", &s2),
        write(dir.path(), "l-server2.key", &sk2),
    );
    // 2. statemirror first trusts both CAs (new connections still verify the old
    //    certificate), the server switches, then statemirror's client certificate rotates.
    write(dir.path(), "ca.pem", &both);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _: () = config_set(vec![
        "tls-ca-cert-file".into(),
        both_file.display().to_string(),
        "tls-cert-file".into(),
        s2f.display().to_string(),
        "tls-key-file".into(),
        sk2f.display().to_string(),
    ])
    .query_async(&mut admin)
    .await
    .expect("CONFIG SET server cert");
    let (c2, k2) = ca2.leaf("statemirror-2", &[], false);
    // Key first, then cert: for a moment they do not match, and the old pair stays in use.
    write(dir.path(), "client.key", &k2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    write(dir.path(), "client.pem", &c2);
    write(dir.path(), "ca.pem", &ca2.pem);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 3. The server now only accepts client certificates from CA two.
    let ca2_file = write(dir.path(), "l-ca2.pem", &ca2.pem);
    let _: () = config_set(vec![
        "tls-ca-cert-file".into(),
        ca2_file.display().to_string(),
    ])
    .query_async(&mut admin)
    .await
    .expect("CONFIG SET CA two only");
    let before = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = workload.await;
    // New connections use the new certificate and CA (the old ones would be refused now)…
    let mut fresh = Raw::connect(proxy.addr()).await;
    assert_eq!(
        fresh.cmd(&["GET", "old"]).await.text().as_deref(),
        Some("0")
    );
    assert!(
        done.load(Ordering::Relaxed) > before,
        "new connections kept working after the rotation"
    );
    // …and the session established before it was never dropped.
    assert_eq!(
        old.cmd(&["SET", "old", "1"]).await.text().as_deref(),
        Some("OK")
    );
    let s = proxy.status().await;
    assert_eq!(s["redis"]["leader"]["up"], true, "{s}");
    // At most the connections caught in the instant of a CONFIG SET fail.
    assert!(
        failures.load(Ordering::Relaxed) <= 2,
        "failures: {}",
        failures.load(Ordering::Relaxed)
    );
}

async fn tls_cmd<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    args: &[&str],
) -> std::io::Result<Resp> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    s.write_all(&encode(&args)).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    loop {
        if let Some((r, _)) = parse_resp(&buf) {
            return Ok(r);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn client_listener_and_admin_over_tls() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("listener CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (sc, sk) = ca.leaf("localhost", &["localhost", "127.0.0.1"], false);
    let (sc, sk) = (
        write(dir.path(), "srv.pem", &sc),
        write(dir.path(), "srv.key", &sk),
    );
    let (cc, ck) = ca.leaf("nifi", &[], false);
    let (cc, ck) = (
        write(dir.path(), "cli.pem", &cc),
        write(dir.path(), "cli.key", &ck),
    );
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let server = ServerTlsSettings {
        cert_file: sc.clone(),
        key_file: sk.clone(),
        client_ca_file: Some(ca_file.clone()),
    };
    let admin = ServerTlsSettings {
        cert_file: sc.clone(),
        key_file: sk.clone(),
        client_ca_file: None,
    };
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.redis.as_mut().expect("redis").listen_tls = Some(server);
        c.admin.tls = Some(admin);
    })
    .await;
    // A client with a certificate from the CA: served, and mirrored.
    let mut s = tls_client(proxy.addr(), &ca_file, Some((&cc, &ck)))
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls_cmd(&mut s, &["PING"])
            .await
            .expect("PING")
            .text()
            .as_deref(),
        Some("PONG")
    );
    assert_eq!(
        tls_cmd(&mut s, &["SET", "nifi/components/x", "1"])
            .await
            .expect("SET")
            .text()
            .as_deref(),
        Some("OK")
    );
    // Without a client certificate: refused.
    let refused = match tls_client(proxy.addr(), &ca_file, None).await {
        Err(_) => true,
        Ok(mut s) => tls_cmd(&mut s, &["PING"]).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // A plain-text client gets nothing.
    let mut plain = Raw::connect(proxy.addr()).await;
    plain.send(&["PING"]).await;
    let r = plain.read_within(Duration::from_secs(2)).await;
    assert!(
        !matches!(&r, Ok(r) if r.text().as_deref() == Some("PONG")),
        "{r:?}"
    );
    // The admin API over HTTPS, verified against the CA.
    std::env::set_var(statemirror::admin::client::ADMIN_CA_ENV, &ca_file);
    let url = format!("https://localhost:{}", proxy.app.admin_addr.port());
    let (code, body) = statemirror::admin::client::request(
        &url,
        hyper::Method::GET,
        "/metrics",
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("admin over https");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("statemirror_backend_up"), "{body}");
    let (code, body) = statemirror::admin::client::request(
        &url,
        hyper::Method::GET,
        "/status",
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("status over https");
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(st["redis"]["listen_tls"], true, "{st}");
    // Plain HTTP to the HTTPS admin port fails.
    let plain_admin = format!("http://{}", proxy.app.admin_addr);
    let r = statemirror::admin::client::request(
        &plain_admin,
        hyper::Method::GET,
        "/status",
        None,
        Duration::from_secs(5),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    let f = follower.conn().await;
    eventually(Duration::from_secs(10), || {
        let mut f = f.clone();
        async move {
            let v: Option<String> = f
                .get("nifi/components/x")
                .await
                .map_err(|e| e.to_string())?;
            if v.as_deref() == Some("1") {
                Ok(())
            } else {
                Err(format!("follower has {v:?}"))
            }
        }
    })
    .await;
}

#[test]
fn check_config_names_missing_tls_files_by_key() {
    let mut cfg = example_config("redis.toml");
    let r = cfg.redis.as_mut().expect("redis");
    r.leader = "rediss://localhost:6380".into();
    r.leader_tls = Some(client_tls(Some("/nonexistent/ca.pem".into()), None));
    r.follower = Some("redis://localhost:6381".into());
    r.follower_tls = Some(ClientTlsSettings::default());
    r.listen_tls = Some(ServerTlsSettings {
        cert_file: "/nonexistent/srv.pem".into(),
        key_file: "/nonexistent/srv.key".into(),
        client_ca_file: None,
    });
    cfg.admin.tls = Some(ServerTlsSettings {
        cert_file: "/nonexistent/a.pem".into(),
        key_file: "/nonexistent/a.key".into(),
        client_ca_file: None,
    });
    let errs = cfg.validate().expect_err("missing files");
    let paths: Vec<String> = errs.iter().map(|e| e.path.clone()).collect();
    for want in [
        "redis.leader_tls.ca_file",
        "redis.follower_tls",
        "redis.listen_tls.cert_file",
        "redis.listen_tls.key_file",
        "admin.tls.cert_file",
        "admin.tls.key_file",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
    let text = format!("{errs:?}");
    assert!(text.contains("/nonexistent/ca.pem"), "{text}");
}

#[tokio::test]
async fn follower_requiring_client_certificates_without_one_is_down_with_the_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let server_cert = ca.leaf("localhost", &["localhost"], false);
    let leader = RedisServer::start();
    let follower = TlsRedis::start(dir.path(), "f", &ca.pem, &server_cert, true);
    let fu = follower.url();
    let proxy = Proxy::start_with(&leader, Some(&follower.server), |c| {
        let r = c.redis.as_mut().expect("redis");
        r.follower = Some(fu);
        r.follower_tls = Some(client_tls(Some(ca_file), None));
        // The follower never becomes reachable: do not wait for a resync at start.
        c.resync.on_start = false;
    })
    .await;
    let err = wait_error(&proxy, "follower", "requires a client certificate").await;
    assert!(
        err.contains(&format!("localhost:{}", follower.tls_port)),
        "{err}"
    );
    // Clients are still served by the leader.
    let mut c = proxy.conn().await;
    let _: () = c.set("k", "v").await.expect("SET through the leader");
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "statemirror_backend_up", &[("role", "follower")]) == Some(0.0),
        "{m}"
    );
}
