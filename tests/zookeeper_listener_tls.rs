//! TLS on statemirror's ZooKeeper client listener (`[zookeeper.listen_tls]`), against real
//! ZooKeeper backends (plain) and real clients: `zkCli.sh` with the Netty client socket and
//! `zookeeper.client.secure=true` (what NiFi's `nifi.zookeeper.client.secure=true` sets),
//! and a Rust client on tokio-rustls speaking jute with statemirror's codec (the
//! `zookeeper-client` crate's TLS needs its `tls` feature, which pulls rustls's aws-lc
//! provider: see the report). Certificates are made at test time (`common::tls`).
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::tls::{tls_client as tls, Ca};
use common::zk::{zk_client, zkcli_env, zkcli_lines, zkcli_tls_flags, ZkProxy, ZkServer};
use common::{eventually, metric};
use statemirror::tls::ServerTlsSettings;
use statemirror::zookeeper::jute::Record;
use statemirror::zookeeper::proto::{self, ReplyHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// A four-letter word over TLS: the whole answer.
async fn tls_four_letter(s: &mut Tls, word: &str) -> std::io::Result<String> {
    s.write_all(word.as_bytes()).await?;
    s.flush().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A hand-driven ZooKeeper session over any stream (here: TLS).
struct Session<S> {
    s: S,
    buf: BytesMut,
    xid: i32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Sends a new-session `ConnectRequest`; errors when the connection closes instead.
    async fn open(s: S) -> std::io::Result<Self> {
        let req = proto::connect::ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 0,
            time_out: 10_000,
            session_id: 0,
            passwd: Bytes::from_static(&[0; 16]),
            read_only: Some(false),
        };
        let mut out = BytesMut::new();
        statemirror::zookeeper::frame::write_frame(&mut out, &req.to_bytes());
        let mut me = Session {
            s,
            buf: BytesMut::new(),
            xid: 0,
        };
        me.send(&out).await?;
        let f = me.frame().await?;
        let r = proto::connect::ConnectResponse::from_bytes(&f).map_err(std::io::Error::other)?;
        if r.session_id == 0 {
            return Err(std::io::Error::other("session refused"));
        }
        Ok(me)
    }

    async fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b).await?;
        self.s.flush().await
    }

    async fn frame(&mut self) -> std::io::Result<Bytes> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(f) = statemirror::zookeeper::frame::next_frame(&mut self.buf, 1 << 21)
                .map_err(|e| std::io::Error::other(format!("{e:?}")))?
            {
                return Ok(f);
            }
            match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf)).await {
                Err(_) => return Err(std::io::Error::other("timed out")),
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(r) => {
                    r?;
                }
            }
        }
    }

    /// One request; its reply's header and body (watch events skipped).
    async fn call(&mut self, op: i32, body: &impl Record) -> std::io::Result<(ReplyHeader, Bytes)> {
        self.xid += 1;
        let mut out = BytesMut::new();
        common::zk::RawZk::request(&mut out, self.xid, op, body);
        self.send(&out).await?;
        loop {
            let f = self.frame().await?;
            let h = ReplyHeader::from_bytes(&f).map_err(std::io::Error::other)?;
            if h.xid == self.xid {
                return Ok((h, f.slice(16..)));
            }
        }
    }

    async fn get(&mut self, path: &str) -> std::io::Result<Option<Vec<u8>>> {
        let req = proto::records::GetDataRequest {
            path: path.into(),
            watch: false,
        };
        let (h, body) = self.call(proto::op::GET_DATA, &req).await?;
        if h.err != 0 {
            return Ok(None);
        }
        let r =
            proto::records::GetDataResponse::from_bytes(&body).map_err(std::io::Error::other)?;
        Ok(Some(r.data.map(|d| d.to_vec()).unwrap_or_default()))
    }

    async fn create(&mut self, path: &str, data: &[u8]) -> std::io::Result<i32> {
        let req = proto::records::CreateRequest {
            path: path.into(),
            data: Some(Bytes::copy_from_slice(data)),
            acl: common::zk::open_acl(),
            flags: 0,
        };
        Ok(self.call(proto::op::CREATE, &req).await?.0.err)
    }
}

/// The listener's files: CA, server certificate (localhost, 127.0.0.1), a client
/// certificate (PEM files for Rust, key + cert in one PEM for Java).
struct Files {
    ca: PathBuf,
    srv_cert: PathBuf,
    srv_key: PathBuf,
    cli_cert: PathBuf,
    cli_key: PathBuf,
    cli_java: PathBuf,
}

fn files(dir: &Path, ca: &Ca) -> Files {
    let (sc, sk) = ca.leaf("localhost", &["localhost", "127.0.0.1"], false);
    let (cc, ck) = ca.leaf("nifi-0", &["nifi-0"], false);
    Files {
        ca: write(dir, "ca.pem", &ca.pem),
        srv_cert: write(dir, "srv.pem", &sc),
        srv_key: write(dir, "srv.key", &sk),
        cli_cert: write(dir, "cli.pem", &cc),
        cli_key: write(dir, "cli.key", &ck),
        cli_java: write(dir, "cli-java.pem", &format!("{ck}{cc}")),
    }
}

/// A plain-text `ConnectRequest` to `addr`: everything it answers until it closes (10 s).
async fn plain_connect(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut s = common::zk::RawZk::tcp(addr).await;
    let req = proto::connect::ConnectRequest {
        protocol_version: 0,
        last_zxid_seen: 0,
        time_out: 10_000,
        session_id: 0,
        passwd: Bytes::from_static(&[0; 16]),
        read_only: Some(false),
    };
    let mut out = BytesMut::new();
    statemirror::zookeeper::frame::write_frame(&mut out, &req.to_bytes());
    let _ = s.write_all(&out).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the listener kept a plain-text client open");
    got
}

async fn tls_errors(proxy: &ZkProxy) -> f64 {
    let m = proxy.metrics().await;
    let l = [("protocol", "zookeeper"), ("reason", "tls")];
    metric(&m, "statemirror_client_errors_total", &l).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zkcli_and_rust_clients_over_mutual_tls_and_plain_text_refused() {
    let _m = common::metrics_exclusive().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("zk listener CA");
    let f = files(dir.path(), &ca);
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let listen_tls = ServerTlsSettings {
        cert_file: f.srv_cert.clone(),
        key_file: f.srv_key.clone(),
        client_ca_file: Some(f.ca.clone()),
    };
    let proxy = ZkProxy::start_with(&leader.addr(), Some(&follower.addr()), |c| {
        c.zookeeper.as_mut().expect("zookeeper").listen_tls = Some(listen_tls);
    })
    .await;
    let addr = proxy.addr();
    let errors_before = tls_errors(&proxy).await;
    let cert = Some((f.cli_cert.as_path(), f.cli_key.as_path()));

    // A Rust client with its certificate: a session, NiFi's parents created.
    let s = tls(addr, &f.ca, cert).await.expect("TLS handshake");
    let mut rust = Session::open(s).await.expect("session over TLS");
    assert_eq!(rust.create("/nifi", b"").await.expect("create"), 0);
    assert_eq!(
        rust.create("/nifi/components", b"").await.expect("create"),
        0
    );

    // zkCli.sh over TLS (Netty client socket), with its client certificate: NiFi's
    // ZooKeeperStateProvider layout, one node per component.
    let jvm = [("CLIENT_JVMFLAGS", zkcli_tls_flags(&f.ca, Some(&f.cli_java)))];
    let node = "/nifi/components/0b5d6a0e-0187-1000-ffff-ffffc0de0001";
    let server = format!("localhost:{}", addr.port());
    let (code, out, err) = zkcli_env(&server, &jvm, &[], &["create", node, "state-v1"]).await;
    assert_eq!(code, 0, "zkCli.sh create over TLS: {out}\n{err}");
    let (code, out, err) = zkcli_env(&server, &jvm, &[], &["get", node]).await;
    assert_eq!(code, 0, "zkCli.sh get over TLS: {out}\n{err}");
    assert!(
        zkcli_lines(&out, &err).iter().any(|l| l == "state-v1"),
        "{out}\n{err}"
    );
    assert_eq!(
        rust.get(node).await.expect("get").as_deref(),
        Some(&b"state-v1"[..])
    );
    // Mirrored to the follower.
    let direct = zk_client(&follower.addr()).await;
    eventually(Duration::from_secs(15), || async {
        match direct.get_data(node).await {
            Ok((d, _)) if d == b"state-v1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Four-letter words are answered over TLS too (after the handshake).
    let mut s = tls(addr, &f.ca, cert).await.expect("TLS");
    assert_eq!(tls_four_letter(&mut s, "ruok").await.expect("ruok"), "imok");
    let mut s = tls(addr, &f.ca, cert).await.expect("TLS");
    let srvr = tls_four_letter(&mut s, "srvr").await.expect("srvr");
    assert!(srvr.contains("Mode:"), "{srvr}");

    // Mutual TLS: without a certificate, refused (at the handshake or its first read)…
    let refused = match tls(addr, &f.ca, None).await {
        Err(_) => true,
        Ok(s) => Session::open(s).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // …and zkCli.sh without its key store gets no session either.
    let no_key = [("CLIENT_JVMFLAGS", zkcli_tls_flags(&f.ca, None))];
    let (code, out, err) = zkcli_env(&server, &no_key, &[], &["get", node]).await;
    assert_ne!(code, 0, "zkCli.sh without a certificate: {out}\n{err}");
    assert!(err.contains("ConnectionLoss"), "{out}\n{err}");

    // A plain-text client on the TLS port is closed, while a TLS session works on.
    let (plain, mine) = tokio::join!(plain_connect(addr), rust.get(node));
    // At most a TLS alert record (content type 21), then the end.
    assert!(
        plain.is_empty() || plain[0] == 21,
        "a plain-text client got an answer: {plain:?}"
    );
    assert_eq!(
        mine.expect("TLS session").as_deref(),
        Some(&b"state-v1"[..])
    );
    assert_eq!(rust.create("/nifi/after", b"x").await.expect("create"), 0);
    let errors = tls_errors(&proxy).await - errors_before;
    assert!(
        errors >= 2.0,
        "client_errors{{reason=tls}} grew by {errors}"
    );

    let st = proxy.status().await;
    assert_eq!(st["zookeeper"]["listen_tls"], true, "{st}");
    assert_eq!(st["zookeeper"]["leader"]["up"], true, "{st}");
}

/// A client that connects and never starts the handshake is closed when the handshake
/// time (10 s) runs out, and counted; a TLS session meanwhile is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_silent_in_the_handshake_is_closed_and_counted() {
    let _m = common::metrics_exclusive().await;
    let dir = tempfile::tempdir().expect("dir");
    let f = files(dir.path(), &Ca::new("silent CA"));
    let leader = ZkServer::standalone().await;
    let listen_tls = ServerTlsSettings {
        cert_file: f.srv_cert.clone(),
        key_file: f.srv_key.clone(),
        client_ca_file: None,
    };
    let proxy = ZkProxy::start_with(&leader.addr(), None, |c| {
        c.zookeeper.as_mut().expect("zookeeper").listen_tls = Some(listen_tls);
    })
    .await;
    let addr = proxy.addr();
    let before = tls_errors(&proxy).await;
    let mut silent = common::zk::RawZk::tcp(addr).await;
    let mut s = Session::open(tls(addr, &f.ca, None).await.expect("TLS"))
        .await
        .expect("session");
    assert_eq!(s.create("/busy", b"1").await.expect("create"), 0);
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut b)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    assert!(tls_errors(&proxy).await > before);
    assert_eq!(
        s.get("/busy").await.expect("get").as_deref(),
        Some(&b"1"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listener_certificate_rotation_mid_workload_keeps_established_sessions() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca1, ca2) = (Ca::new("CA one"), Ca::new("CA two"));
    let f = files(dir.path(), &ca1);
    let ca2_file = write(dir.path(), "ca2.pem", &ca2.pem);
    let both = write(dir.path(), "both.pem", &format!("{}{}", ca1.pem, ca2.pem));
    let leader = ZkServer::standalone().await;
    let listen_tls = ServerTlsSettings {
        cert_file: f.srv_cert.clone(),
        key_file: f.srv_key.clone(),
        client_ca_file: None,
    };
    let proxy = ZkProxy::start_with(&leader.addr(), None, |c| {
        c.zookeeper.as_mut().expect("zookeeper").listen_tls = Some(listen_tls);
    })
    .await;
    let addr = proxy.addr();
    let mut old = Session::open(tls(addr, &f.ca, None).await.expect("TLS"))
        .await
        .expect("session");
    assert_eq!(old.create("/rot", b"0").await.expect("create"), 0);

    // A workload of new sessions (trusting both CAs) across the rotation.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workload = {
        let (stop, ok, failed, both) = (stop.clone(), ok.clone(), failed.clone(), both.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = async {
                    let mut s = Session::open(tls(addr, &both, None).await?).await?;
                    s.get("/rot").await
                };
                match r.await {
                    Ok(Some(_)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // cert-manager's in-place rewrite: key first (for a moment it does not match the
    // certificate, and the previous pair stays in use), then the certificate.
    let (c2, k2) = ca2.leaf("localhost", &["localhost", "127.0.0.1"], false);
    write(dir.path(), "srv.key", &k2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    write(dir.path(), "srv.pem", &c2);
    // New connections get the new certificate (within the reload check)…
    eventually(Duration::from_secs(10), || async {
        tls(addr, &ca2_file, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    assert!(
        tls(addr, &f.ca, None).await.is_err(),
        "a new connection still got the old certificate"
    );
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    workload.await.expect("workload");
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "new sessions after the rotation"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "sessions failed across the rotation"
    );
    // …and the session established before it was never dropped.
    assert_eq!(
        old.get("/rot").await.expect("old session").as_deref(),
        Some(&b"0"[..])
    );
    assert_eq!(old.create("/rot/after", b"1").await.expect("create"), 0);
}

/// `config/zookeeper-tls.toml` loads; `check-config` names each missing TLS file by its
/// key path, and with the files in place the listener's config validates.
#[test]
fn example_config_and_check_config_key_paths() {
    let cfg = common::example_config("zookeeper-tls.toml");
    let errs = cfg
        .clone()
        .validate()
        .expect_err("its files do not exist here");
    let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
    for key in [
        "zookeeper.listen_tls.cert_file",
        "zookeeper.listen_tls.key_file",
        "zookeeper.listen_tls.client_ca_file",
        "zookeeper.leader_tls.ca_file",
    ] {
        assert!(paths.contains(&key), "{key} not in {paths:?}");
    }
    assert!(errs.iter().all(|e| !e.message.is_empty()), "{errs:?}");
    let dir = tempfile::tempdir().expect("dir");
    let f = files(dir.path(), &Ca::new("check-config CA"));
    let mut cfg = cfg;
    cfg.admin.token_file = None;
    cfg.admin.listen = "127.0.0.1:0".into();
    let z = cfg.zookeeper.as_mut().expect("zookeeper");
    z.listen_tls = Some(ServerTlsSettings {
        cert_file: f.srv_cert,
        key_file: f.srv_key,
        client_ca_file: Some(f.ca.clone()),
    });
    if let Some(l) = z.leader_tls.as_mut() {
        l.ca_file = Some(f.ca.clone());
        l.cert_file = None;
        l.key_file = None;
    }
    if let Some(l) = z.follower_tls.as_mut() {
        l.ca_file = Some(f.ca);
        l.cert_file = None;
        l.key_file = None;
    }
    let r = cfg.validate().unwrap_or_else(|e| panic!("{e:?}"));
    assert!(r.zookeeper.is_some_and(|z| z.listen_tls.is_some()));
}
