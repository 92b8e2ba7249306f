//! Real sentinels (`redis-server --sentinel`), plain or on a TLS port only, and what the
//! Sentinel tests share: a NiFi-style writer that records when each error happened, `ROLE`,
//! and the wait until every sentinel knows the replica. Each process is killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use statemirror::tls::{ClientTls, ClientTlsSettings};

use super::tls::Ca;
use super::{encode, eventually, free_port, parse_resp, Raw, RedisServer, Resp};

/// Certificate files for TLS servers and for statemirror's client side, signed by one CA.
pub struct TlsFiles {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    /// The servers' certificate and key (Redis also presents them as a client).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// statemirror's client certificate and key (mutual TLS).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A server certificate for `names` (an IP becomes an IP SAN) and a client certificate.
    pub fn new(ca: &Ca, names: &[&str]) -> TlsFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let (cert, key) = ca.leaf(names.first().copied().unwrap_or("server"), names, false);
        let (client_cert, client_key) = ca.leaf("statemirror", &[], false);
        TlsFiles {
            ca: write("ca.pem", &ca.pem),
            cert: write("server.pem", &cert),
            key: write("server.key", &key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            _dir: dir,
        }
    }

    /// redis-server arguments for a TLS port next to the plain one (the harness's checks use
    /// the plain port), replication over TLS, client certificates required.
    pub fn server_args(&self, tls_port: u16) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            p(&self.cert),
            "--tls-key-file".into(),
            p(&self.key),
            "--tls-ca-cert-file".into(),
            p(&self.ca),
            "--tls-replication".into(),
            "yes".into(),
            "--tls-auth-clients".into(),
            "yes".into(),
            // A replica's first full sync starts at once (default: after 5 s).
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ]
    }

    /// statemirror's `[redis.leader_tls]`: this CA, the client certificate.
    pub fn client_settings(&self) -> ClientTlsSettings {
        ClientTlsSettings {
            ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client_cert.clone()),
            key_file: Some(self.client_key.clone()),
            ..Default::default()
        }
    }
}

/// A redis-server with a TLS port (`tls-replication yes`), optionally a replica of `of`'s
/// TLS port. Its plain port stays for the harness.
pub struct TlsRedis {
    pub server: RedisServer,
    pub tls_port: u16,
}

impl TlsRedis {
    pub fn start(files: &TlsFiles, replica_of: Option<u16>) -> TlsRedis {
        let tls_port = free_port();
        let mut args = files.server_args(tls_port);
        if let Some(p) = replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        TlsRedis {
            server: RedisServer::start_with(&args),
            tls_port,
        }
    }

    /// `127.0.0.1:<tls port>`: the address sentinels name.
    pub fn tls_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }
}

pub struct SentinelProc {
    pub port: u16,
    child: Child,
    /// Set for a sentinel on a TLS port only: how the test talks to it.
    tls: Option<ClientTls>,
    _dir: tempfile::TempDir,
}

impl SentinelProc {
    pub fn start(master_port: u16) -> SentinelProc {
        Self::start_with(master_port, "")
    }

    /// `extra`: more sentinel.conf lines.
    pub fn start_with(master_port: u16, extra: &str) -> SentinelProc {
        Self::spawn(master_port, extra, None)
    }

    /// A sentinel on a TLS port only (`port 0`), reaching the master (its TLS port) and the
    /// other sentinels over TLS, and requiring client certificates.
    pub fn start_tls(master_tls_port: u16, files: &TlsFiles) -> SentinelProc {
        Self::spawn(master_tls_port, "", Some(files))
    }

    fn spawn(master_port: u16, extra: &str, tls: Option<&TlsFiles>) -> SentinelProc {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let ports = match tls {
                None => format!("port {port}\n"),
                Some(f) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-replication yes\ntls-auth-clients yes\n",
                    f.cert.display(),
                    f.key.display(),
                    f.ca.display()
                ),
            };
            // Sentinel rewrites its config file: one per sentinel, in its own directory.
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "{ports}bind 127.0.0.1\nprotected-mode no\ndir {}\n\
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
                    // The test's own commands: the chain is checked, the name is the
                    // sidecar's business (the tests give sentinels various names).
                    let tls = tls.map(|f| {
                        let settings = ClientTlsSettings {
                            verify_hostname: false,
                            ..f.client_settings()
                        };
                        ClientTls::new(&settings, &format!("127.0.0.1:{port}"))
                            .expect("test client TLS")
                    });
                    return SentinelProc {
                        port,
                        child,
                        tls,
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

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// One command to this sentinel (over TLS for a TLS sentinel) and its reply.
    pub async fn cmd(&self, args: &[&str]) -> Resp {
        let Some(tls) = &self.tls else {
            return Raw::connect(self.addr()).await.cmd(args).await;
        };
        use tokio::io::AsyncReadExt;
        let tcp = tokio::net::TcpStream::connect(self.addr())
            .await
            .expect("connect");
        let mut s = tls
            .connect(tcp, "sentinel")
            .await
            .expect("TLS to the sentinel");
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        statemirror::tls::stream::write_flush(&mut s, &encode(&args))
            .await
            .expect("write");
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some((r, _)) = parse_resp(&buf) {
                    return r;
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "sentinel closed the connection");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("sentinel reply in time")
    }
}

impl Drop for SentinelProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reply's strings, depth first.
pub fn flat(r: &Resp) -> Vec<String> {
    match r {
        Resp::Array(a) => a.iter().flat_map(flat).collect(),
        other => other.text().into_iter().collect(),
    }
}

/// Waits until every sentinel knows the replica on `replica_port` (needed for a failover).
pub async fn wait_replica_known(sentinels: &[SentinelProc], replica_port: u16) {
    for s in sentinels {
        eventually(Duration::from_secs(20), || async {
            let r = s.cmd(&["SENTINEL", "REPLICAS", "mymaster"]).await;
            let text = flat(&r).join(" ");
            if text.contains(&format!("port {replica_port}")) && text.contains("flags slave ") {
                Ok(())
            } else {
                Err(text)
            }
        })
        .await;
    }
}

/// Waits until `replica`'s link to its master is up: its first full sync is done, so a
/// failover promotes a replica that holds the data (Sentinel may promote one mid-sync, which
/// then loses everything: Redis's behaviour, not what these tests are about).
pub async fn wait_replica_synced(replica: &RedisServer) {
    eventually(Duration::from_secs(20), || async {
        let mut c = replica.conn().await;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        if info.contains("master_link_status:up") && !info.contains("master_sync_in_progress:1") {
            Ok(())
        } else {
            Err(info)
        }
    })
    .await;
}

/// `127.0.0.1:port,…` of the sentinels, for a `redis[s]+sentinel://` URL.
pub fn hosts(sentinels: &[SentinelProc]) -> String {
    hosts_named(sentinels, "127.0.0.1")
}

/// `host:port,…` of the sentinels, named `host` (e.g. `localhost`).
pub fn hosts_named(sentinels: &[SentinelProc], host: &str) -> String {
    sentinels
        .iter()
        .map(|s| format!("{host}:{}", s.port))
        .collect::<Vec<_>>()
        .join(",")
}

/// `s`'s role (`master`, `slave`), or the error that kept it from answering: Sentinel kills
/// an instance's client connections while it reconfigures it, so a caller polling through a
/// failover sees an error now and then and asks again.
pub async fn role(s: &RedisServer) -> String {
    let asked = async {
        let mut c = redis::Client::open(s.url())?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("ROLE")
            .query_async::<Vec<redis::Value>>(&mut c)
            .await
    };
    match asked.await {
        Ok(r) => match r.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        },
        Err(e) => format!("error: {e}"),
    }
}

/// NiFi's replace (WATCH, GET, MULTI, GETSET, EXEC) in a loop per task; errors are counted
/// with the time they happened, and the task reconnects.
pub struct Nifi {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Nifi {
    pub fn start(url: &str, tasks: usize) -> Nifi {
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
                            super::workload::nifi_replace(c, &key, t, i).await?;
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

    pub async fn stop(self) -> (u64, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), errors)
    }

    /// Runs `run_for` more after a switch the proxy saw at `switched_at`, then stops and
    /// checks that writes went on (more than 20 after the switch) and that every error
    /// fell within 2 s of the switch. Returns the errors (timed from `failover_at` in the log).
    pub async fn stop_after_switch(
        self,
        run_for: Duration,
        failover_at: Instant,
        switched_at: Instant,
    ) -> Vec<(Instant, String)> {
        let at_switch = self.ok.load(Ordering::Relaxed);
        tokio::time::sleep(run_for).await;
        let (ok, errors) = self.stop().await;
        assert!(
            ok > at_switch + 20,
            "writes go on after the switch ({at_switch} → {ok})"
        );
        let window_end = switched_at + Duration::from_secs(2);
        let late: Vec<_> = errors.iter().filter(|(t, _)| *t > window_end).collect();
        eprintln!(
            "{ok} ok, {} errors, the last {:?} after SENTINEL FAILOVER: {:?}",
            errors.len(),
            errors.iter().map(|(t, _)| *t - failover_at).max(),
            errors.iter().map(|(_, e)| e).take(5).collect::<Vec<_>>()
        );
        assert!(late.is_empty(), "errors after the switch window: {late:?}");
        errors
    }
}

/// An idle session after a master switch: pinned (the default), it is closed (its reconnect
/// finds the new master); multiplexed, it shares a connection that follows the switch
/// itself, so it stays and its next write reaches the new master (after at most the
/// switch's `LEADER_LOST` errors).
pub async fn idle_session_after_switch(idle: &mut super::Raw, key: &str) {
    if super::multiplex_mode() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let r = idle.cmd(&["SET", key, "after-switch"]).await;
            if r.text().as_deref() == Some("OK") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "idle shared session: {r:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    } else {
        assert!(
            idle.closed_within(std::time::Duration::from_secs(2)).await,
            "the idle session on the old master is closed"
        );
    }
}
