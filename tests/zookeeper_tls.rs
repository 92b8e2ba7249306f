//! TLS to ZooKeeper ensembles (`[zookeeper] leader_tls`/`follower_tls`) against real
//! ZooKeeper servers with a Netty secure client port, certificates made at test time
//! (rcgen): a plain client through the proxy writes, the writes reach the follower over
//! TLS; a follower whose CA statemirror does not trust is reported down in `/status` with
//! the reason; each leader failure (wrong CA, expired certificate, hostname mismatch) is
//! named with its server in `/status` and the metrics. TLS on statemirror's own client
//! listener is in `zookeeper_listener_tls.rs`.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::eventually;
use common::tls::Ca;
use common::zk::{netty_classpath, zk_client, zkc, ZkOptions, ZkProxy, ZkServer};
use statemirror::tls::ClientTlsSettings;

/// Key and certificate in one PEM (ZooKeeper's PEM key store).
fn server_pem(ca: &Ca) -> String {
    let (cert, key) = localhost(ca);
    format!("{key}{cert}")
}

/// [`server_pem`] for a certificate that expired in 2021.
fn expired_pem(ca: &Ca) -> String {
    let (cert, key) = ca.leaf("localhost", &["localhost", "127.0.0.1"], true);
    format!("{key}{cert}")
}

/// (cert PEM, key PEM) for localhost / 127.0.0.1 (ZooKeeper also checks a client
/// certificate's names against the client's address).
fn localhost(ca: &Ca) -> (String, String) {
    ca.leaf("localhost", &["localhost", "127.0.0.1"], false)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// A standalone ZooKeeper with its plain port (for checks) and a TLS port; returns it and
/// the TLS `127.0.0.1:PORT`.
async fn tls_server(dir: &Path, name: &str, ca: &Ca) -> (ZkServer, String) {
    tls_server_auth(dir, name, ca, "none").await
}

/// [`tls_server`] with `ssl.clientAuth=client_auth` (`none`, `need`).
async fn tls_server_auth(dir: &Path, name: &str, ca: &Ca, client_auth: &str) -> (ZkServer, String) {
    tls_server_pem(dir, name, ca, client_auth, &server_pem(ca)).await
}

/// [`tls_server_auth`] presenting `pem` (key + certificate).
async fn tls_server_pem(
    dir: &Path,
    name: &str,
    ca: &Ca,
    client_auth: &str,
    pem: &str,
) -> (ZkServer, String) {
    let port = common::free_port();
    let ks = write(dir, &format!("{name}-server.pem"), pem);
    let ts = write(dir, &format!("{name}-ca.pem"), &ca.pem);
    let opts = ZkOptions {
        extra_cfg: vec![
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory".into(),
            format!("secureClientPort={port}"),
            format!("ssl.keyStore.location={}", ks.display()),
            "ssl.keyStore.type=PEM".into(),
            format!("ssl.trustStore.location={}", ts.display()),
            "ssl.trustStore.type=PEM".into(),
            format!("ssl.clientAuth={client_auth}"),
        ],
        extra_classpath: netty_classpath(),
        ..ZkOptions::default()
    };
    let s = ZkServer::standalone_with(opts).await;
    let addr = format!("127.0.0.1:{port}");
    eventually(Duration::from_secs(15), || async {
        std::net::TcpStream::connect(&addr).map_err(|e| e.to_string())
    })
    .await;
    (s, addr)
}

fn trust(ca: &Path) -> ClientTlsSettings {
    ClientTlsSettings {
        ca_file: Some(ca.to_path_buf()),
        ..ClientTlsSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_reach_a_tls_follower_and_a_wrong_ca_is_reported() {
    // `statemirror_backend_up` is one series per role in this process: see the last test.
    let _m = common::metrics_shared().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("zk test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let ((leader, leader_tls), (follower, follower_tls)) = tokio::join!(
        tls_server(dir.path(), "leader", &ca),
        tls_server(dir.path(), "follower", &ca)
    );

    let proxy = ZkProxy::start_with(&leader_tls, Some(&follower_tls), |c| {
        let z = c.zookeeper.as_mut().expect("zookeeper");
        z.leader_tls = Some(trust(&ca_file));
        z.follower_tls = Some(trust(&ca_file));
    })
    .await;
    let client = proxy.client().await;
    let opts = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    client
        .create("/tls", b"one", &opts)
        .await
        .expect("create through the proxy");
    client.set_data("/tls", b"two", None).await.expect("set");

    // Over TLS to the follower: read it back on its plain port.
    let direct = zk_client(&follower.addr()).await;
    let data = eventually(Duration::from_secs(15), || async {
        match direct.get_data("/tls").await {
            Ok((d, _)) if d == b"two" => Ok(d),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(data, b"two");
    let st = proxy.status().await;
    let z = &st["zookeeper"];
    assert_eq!(z["leader"]["tls"], true, "{st}");
    assert_eq!(z["leader"]["up"], true, "{st}");
    assert_eq!(z["follower"]["up"], true, "{st}");
    drop(leader);

    // A follower whose certificate another CA signed: down, with the reason.
    let other = Ca::new("another CA");
    let other_file = write(dir.path(), "other.pem", &other.pem);
    let (leader2, leader2_tls) = tls_server(dir.path(), "leader2", &ca).await;
    let bad = ZkProxy::start_without_waiting(&leader2_tls, Some(&follower_tls), |c| {
        let z = c.zookeeper.as_mut().expect("zookeeper");
        z.leader_tls = Some(trust(&ca_file));
        z.follower_tls = Some(trust(&other_file));
    })
    .await;
    assert_follower_down_for_tls(&bad, &follower_tls).await;
    drop(leader2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_with_a_client_certificate_and_a_clear_error_without() {
    // `statemirror_backend_up` is one series per role in this process: see the last test.
    let _m = common::metrics_shared().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("zk mtls CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = localhost(&ca);
    let cert_file = write(dir.path(), "client.crt", &cert);
    let key_file = write(dir.path(), "client.key", &key);
    let ((leader, leader_tls), (follower, follower_tls)) = tokio::join!(
        tls_server_auth(dir.path(), "leader", &ca, "need"),
        tls_server_auth(dir.path(), "follower", &ca, "need")
    );
    let with_cert = ClientTlsSettings {
        cert_file: Some(cert_file),
        key_file: Some(key_file),
        ..trust(&ca_file)
    };

    let proxy = ZkProxy::start_with(&leader_tls, Some(&follower_tls), |c| {
        let z = c.zookeeper.as_mut().expect("zookeeper");
        z.leader_tls = Some(with_cert.clone());
        z.follower_tls = Some(with_cert.clone());
    })
    .await;
    let client = proxy.client().await;
    let opts = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    client
        .create("/mtls", b"x", &opts)
        .await
        .expect("create through the proxy");
    let direct = zk_client(&follower.addr()).await;
    eventually(Duration::from_secs(15), || async {
        direct.get_data("/mtls").await.map_err(|e| e.to_string())
    })
    .await;

    // No client certificate: the follower is down, and the error says why.
    let bad = ZkProxy::start_without_waiting(&leader_tls, Some(&follower_tls), |c| {
        let z = c.zookeeper.as_mut().expect("zookeeper");
        z.leader_tls = Some(with_cert.clone());
        z.follower_tls = Some(trust(&ca_file));
    })
    .await;
    assert_follower_down_for_tls(&bad, &follower_tls).await;
    drop(leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_leader_tls_failure_is_named_in_status_and_metrics() {
    let _m = common::metrics_exclusive().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("zk leader CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let other_file = write(dir.path(), "other.pem", &Ca::new("someone else's CA").pem);
    let expired = expired_pem(&ca);
    let ((_good, good_tls), (_expired, expired_tls)) = tokio::join!(
        tls_server(dir.path(), "good", &ca),
        tls_server_pem(dir.path(), "expired", &ca, "none", &expired)
    );
    let wrong_name = ClientTlsSettings {
        server_name: Some("db.example.com".into()),
        ..trust(&ca_file)
    };
    let cases = [
        (
            "wrong CA",
            &good_tls,
            trust(&other_file),
            "unknown CA",
            "unknown_ca",
        ),
        (
            "expired",
            &expired_tls,
            trust(&ca_file),
            "certificate expired",
            "expired",
        ),
        (
            "hostname",
            &good_tls,
            wrong_name,
            "hostname mismatch (certificate is for localhost, 127.0.0.1, expected db.example.com)",
            "hostname_mismatch",
        ),
    ];
    for (what, server, settings, needle, reason) in cases {
        let proxy = ZkProxy::start_without_waiting(server, None, |c| {
            c.zookeeper.as_mut().expect("zookeeper").leader_tls = Some(settings);
        })
        .await;
        let err = eventually(Duration::from_secs(15), || async {
            let st = proxy.status().await;
            let l = &st["zookeeper"]["leader"];
            match (l["up"] == false, l["error"].as_str()) {
                (true, Some(e)) if e.contains(needle) => Ok(e.to_string()),
                _ => Err(format!("{what}: {l}")),
            }
        })
        .await;
        assert!(
            err.contains(server.as_str()),
            "{what}: names the server: {err}"
        );
        let m = proxy.metrics().await;
        let labels = [("peer", server.as_str()), ("reason", reason)];
        assert!(
            common::metric(&m, "statemirror_tls_errors_total", &labels).unwrap_or(0.0) >= 1.0,
            "{what}: {m}"
        );
        let up = [("protocol", "zookeeper"), ("role", "leader")];
        assert_eq!(
            common::metric(&m, "statemirror_backend_up", &up),
            Some(0.0),
            "{what}"
        );
        // A client is not served by a leader it cannot trust: its connect is closed.
        let mut raw = common::zk::RawZk::tcp(proxy.addr()).await;
        let _ = raw.write_all(&connect_request()).await;
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{what}: {n:?}");
    }
}

/// A framed new-session `ConnectRequest`.
fn connect_request() -> Vec<u8> {
    use statemirror::zookeeper::jute::Record;
    let req = statemirror::zookeeper::proto::connect::ConnectRequest {
        protocol_version: 0,
        last_zxid_seen: 0,
        time_out: 10_000,
        session_id: 0,
        passwd: bytes::Bytes::from_static(&[0; 16]),
        read_only: Some(false),
    };
    let mut out = bytes::BytesMut::new();
    statemirror::zookeeper::frame::write_frame(&mut out, &req.to_bytes());
    out.to_vec()
}

/// `proxy`'s follower is down and `/status` says why: the server's address and a TLS reason.
async fn assert_follower_down_for_tls(proxy: &ZkProxy, server: &str) {
    let why = eventually(Duration::from_secs(15), || async {
        let st = proxy.status().await;
        let f = &st["zookeeper"]["follower"];
        match (f["up"] == false, f["error"].as_str()) {
            (true, Some(e)) => Ok(e.to_string()),
            _ => Err(format!("{f}")),
        }
    })
    .await;
    assert!(why.contains(server), "{why}");
    assert!(why.contains("TLS"), "{why}");
}
