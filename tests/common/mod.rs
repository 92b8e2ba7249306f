//! Test harness: real `redis-server` processes on free loopback ports (killed on drop, even
//! when a test fails), statemirror started in-process from `config/redis.toml`, the admin
//! API client, and key-by-key comparison of two servers.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use statemirror::config::Config;

/// Waits (at most 60 s) until `protocol`'s mirror queue is empty, its follower in sync and no
/// resync runs, reading `/status` with `status`: the end state of every catch-up scenario.
pub async fn settle_with<F, Fut>(protocol: &str, status: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    eventually(Duration::from_secs(60), || async {
        let s = status().await;
        let p = &s[protocol];
        if p["mirror"]["queue_depth"] == 0
            && p["mirror"]["in_sync"] == true
            && p["resync"]["running"] == false
        {
            Ok(())
        } else {
            Err(format!(
                "not settled: mirror {} resync {}",
                p["mirror"], p["resync"]
            ))
        }
    })
    .await
}

/// Bounded polling: retries `f` until it returns `Ok` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within {timeout:?}: {last}");
}

/// The Prometheus recorder is process-global: every proxy a test binary starts shares one
/// set of series. A test that asserts a metric's value holds [`metrics_exclusive`] (so no
/// other proxy in this binary moves it meanwhile) and compares exact before/after deltas;
/// every other test of such a binary holds [`metrics_shared`] for its whole run.
static METRICS_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// See [`METRICS_LOCK`]: held by tests that do not read metric values.
pub async fn metrics_shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    METRICS_LOCK.read().await
}

/// See [`METRICS_LOCK`]: held by tests that read metric values.
pub async fn metrics_exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    METRICS_LOCK.write().await
}

/// The value of the first series `name{labels...}` in Prometheus text that has all of
/// `labels` (`None` when there is no such series).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, lbl) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let pairs: Vec<(&str, &str)> = lbl
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|l| pairs.contains(l)) {
            return value.trim().parse().ok();
        }
    }
    None
}

/// SIGSTOPs a process (a hung backend: connections open, nothing answered) and SIGCONTs it
/// when dropped, so a failing test never leaves it stopped.
pub struct Frozen(u32);

impl Frozen {
    pub fn new(pid: u32) -> Self {
        signal(pid, "STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT".to_string(), self.0.to_string()])
            .status();
    }
}

/// A config file for the real binary: `[admin]` on a free port and `[log]` at `warn`, then
/// `sections`, where `{port}` becomes a free port for the client listener. Returns the file
/// (removed when dropped), the admin URL and that port.
pub fn binary_config(sections: &str) -> (tempfile::NamedTempFile, String, u16) {
    let (port, admin_port) = (free_port(), free_port());
    let cfg = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(
        cfg.path(),
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nlevel = \"warn\"\n{}",
            sections.replace("{port}", &port.to_string())
        ),
    )
    .expect("write config");
    (cfg, format!("http://127.0.0.1:{admin_port}"), port)
}

/// Client connections `server` has, the one this asks on left out.
pub async fn redis_clients(server: &RedisServer) -> usize {
    let mut d = Raw::connect(server.addr().parse().expect("addr")).await;
    let list = d
        .cmd(&["CLIENT", "LIST"])
        .await
        .text()
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.is_empty()).count() - 1
}

/// One field of a section of `INFO` on `server` (`redis_info(s, "stats",
/// "total_connections_received")`), asked on a connection of its own.
pub async fn redis_info(server: &RedisServer, section: &str, field: &str) -> Option<String> {
    let mut c = server.conn().await;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("INFO {section}: {e}"));
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().to_string())
}

/// A loopback port nothing listens on now, below the kernel's ephemeral range
/// (32768–60999): a port the kernel hands out for `:0` can be taken a moment later as the
/// source port of any outgoing connection, and test binaries run three at a time, so a
/// server told to listen there failed now and then. Each process walks its own sequence
/// (started from its pid) and checks the port by binding it; what remains is a race with
/// another test process choosing the very same port within the same moment.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (start + n.wrapping_mul(31)) % SPAN;
        if let Ok(port) = u16::try_from(port) {
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    panic!("no free loopback port below the ephemeral range")
}

/// A real redis-server on 127.0.0.1, SIGKILLed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Extra redis-server arguments, e.g. `&["--requirepass", "pw"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RedisServer {
            port: 0,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..5 {
            s.port = free_port();
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
        ])
        .arg(self.dir.path())
        .args(&self.extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let Ok(child) = cmd.spawn() else {
            panic!("redis-server not found: run the README's test command, which installs it");
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false; // exited: port taken?
                }
            }
            // Our process must answer, not another test's server or relay that took the
            // port between `free_port` and our bind (our server then exits, but a plain
            // connect would still succeed).
            let pid = self.child.as_ref().map(Child::id);
            let password = self
                .extra
                .iter()
                .position(|a| a == "--requirepass")
                .and_then(|i| self.extra.get(i + 1));
            match (redis_pid(self.port, password.map(String::as_str)), pid) {
                (Some(p), Some(ours)) if p == ours => return true,
                (Some(_), _) => {
                    self.kill();
                    return false;
                }
                (None, _) => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// SIGKILL (like a lost region); the data is gone (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
        self.respawn();
    }

    /// An RDB snapshot of the data now (`SAVE`), to restore later with [`Self::restore`].
    pub async fn backup(&self) -> Vec<u8> {
        let mut c = self.conn().await;
        let _: () = redis::cmd("SAVE").query_async(&mut c).await.expect("SAVE");
        std::fs::read(self.dir.path().join("dump.rdb")).expect("dump.rdb")
    }

    /// SIGKILL, then start again on the same port from an old [`Self::backup`].
    pub fn restore(&mut self, rdb: &[u8]) {
        self.kill();
        std::fs::write(self.dir.path().join("dump.rdb"), rdb).expect("write dump.rdb");
        self.respawn();
    }

    fn respawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        client(&self.url()).await
    }
}

/// The `process_id` of the redis-server answering on `port` (`INFO server`, after `AUTH`
/// when it has a password), if one does.
fn redis_pid(port: u16, password: Option<&str>) -> Option<u32> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    if let Some(pw) = password {
        s.write_all(format!("AUTH {pw}\r\n").as_bytes()).ok()?;
    }
    s.write_all(b"INFO server\r\n").ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 64 * 1024 {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(pid) = text
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .filter(|_| text.contains("run_id:"))
        {
            return pid.trim().parse().ok();
        }
    }
    None
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real `statemirror` binary (`run --config FILE`), SIGKILLed on drop. `start` waits
/// (bounded) until its admin API answers.
pub struct BinProxy {
    child: Child,
    /// `http://127.0.0.1:PORT` of the admin API.
    pub admin: String,
    /// What clients connect to (a Redis URL or a ZooKeeper connect string).
    pub url: String,
}

impl BinProxy {
    /// Waits (at most 10 s) until more than `n` writes of `protocol` wait in the mirror queue.
    pub async fn wait_queue_depth_over(&self, protocol: &str, n: u64) {
        eventually(Duration::from_secs(10), || async {
            let s = self.status().await?;
            let d = s[protocol]["mirror"]["queue_depth"].as_u64().unwrap_or(0);
            if d > n {
                Ok(())
            } else {
                Err(format!("queue depth {d}"))
            }
        })
        .await
    }

    pub async fn start(config: &std::path::Path, admin: &str, url: &str) -> BinProxy {
        if multiplex_mode() {
            // The env switch reaches the binary's config too (see `multiplex_mode`).
            let text = std::fs::read_to_string(config).expect("read config");
            if !text.contains("multiplex") {
                let text = text.replacen("[redis]\n", "[redis]\nmultiplex = true\n", 1);
                std::fs::write(config, text).expect("write config");
            }
        }
        let child = Command::new(env!("CARGO_BIN_EXE_statemirror"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn statemirror");
        let p = BinProxy {
            child,
            admin: admin.to_string(),
            url: url.to_string(),
        };
        eventually(Duration::from_secs(20), || async {
            p.status().await.map(|_| ())
        })
        .await;
        p
    }

    pub async fn status(&self) -> Result<serde_json::Value, String> {
        let (code, body) = statemirror::admin::client::request(
            &self.admin,
            hyper::Method::GET,
            "/status",
            None,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(body);
        }
        serde_json::from_str(&body).map_err(|e| e.to_string())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
        // A SIGKILLed sidecar cannot remove the admin token file it generated.
        if let Some(f) = statemirror::admin::client::discover(&self.admin) {
            let _ = std::fs::remove_file(f);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, from `/proc/<pid>/status` (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// `SIGTERM` (a rolling restart), then waits (bounded) for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Sends a signal (`STOP`, `CONT`, `TERM`, …) to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

impl Drop for BinProxy {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn client(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// statemirror running in this process; stopped on drop.
pub struct Proxy {
    pub app: statemirror::App,
}

impl Proxy {
    /// Loads `config/redis.toml`, points it at these servers on free ports, lets `tweak`
    /// change anything else, and starts it.
    pub async fn start(leader: &RedisServer, follower: Option<&RedisServer>) -> Self {
        Self::start_with(leader, follower, |_| {}).await
    }

    pub async fn start_with(
        leader: &RedisServer,
        follower: Option<&RedisServer>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut cfg = example_config("redis.toml");
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.log.level = "warn".into();
        let r = cfg.redis.as_mut().expect("[redis] in config/redis.toml");
        r.listen = "127.0.0.1:0".into();
        r.leader = leader.url();
        r.follower = follower.map(|f| f.url());
        r.health_interval_ms = 200;
        r.health_timeout_ms = 500;
        r.connect_timeout_ms = 500;
        cfg.replication.retry_max_backoff_ms = 500;
        cfg.replication.apply_timeout_ms = 2000;
        r.multiplex = multiplex_mode();
        tweak(&mut cfg);
        let resolved = cfg.validate().unwrap_or_else(|e| panic!("config: {e:?}"));
        statemirror::telemetry::init(&resolved.config.log);
        let wait = resolved.config.resync.on_start
            && follower.is_some_and(|f| std::net::TcpStream::connect(f.addr()).is_ok());
        let app = statemirror::start(resolved)
            .await
            .expect("statemirror starts");
        // The follower starts out of sync; let the resync at start finish first.
        if wait {
            assert!(
                app.wait_in_sync(Duration::from_secs(20)).await,
                "the resync at start did not finish"
            );
        }
        Proxy { app }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.app.redis_addr().expect("redis listener"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.app.redis_addr().expect("redis listener")
    }

    pub fn admin(&self) -> String {
        format!("http://{}", self.app.admin_addr)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        client(&self.url()).await
    }

    /// `GET|PUT|DELETE path` on the admin API: (status, body). Without `token`, the one the
    /// sidecar generated when the config has no `admin.token_file` (found like the CLI does).
    pub async fn http(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let m = hyper::Method::from_bytes(method.as_bytes()).expect("method");
        let generated = statemirror::admin::client::discover_token(&self.admin());
        let token = token.or(generated.as_deref());
        statemirror::admin::client::request(&self.admin(), m, path, token, Duration::from_secs(30))
            .await
            .expect("admin API reachable")
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.http("GET", "/status", None).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let (code, body) = self.http("GET", "/metrics", None).await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// One series' value now (0 when it does not exist yet). Process-global: see
    /// [`metrics_exclusive`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels).unwrap_or(0.0)
    }

    /// Waits until the mirror queue is empty.
    pub async fn drained(&self) {
        eventually(Duration::from_secs(20), || async {
            let s = self.status().await;
            let m = &s["redis"]["mirror"];
            if m["queue_depth"] == 0 {
                Ok(())
            } else {
                Err(format!("mirror not drained: {m}"))
            }
        })
        .await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.app.abort();
    }
}

/// `STATEMIRROR_TEST_MULTIPLEX=1`: every Redis sidecar the harness starts multiplexes
/// (`scripts/test.sh` runs the Redis tests in both modes).
pub fn multiplex_mode() -> bool {
    std::env::var("STATEMIRROR_TEST_MULTIPLEX").is_ok_and(|v| v == "1")
}

pub fn example_config(name: &str) -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("example config");
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
}

/// Every key of every database on `a` and `b` has the same type, value and TTL (±1 s).
/// Returns the number of keys compared.
pub async fn assert_same_data(a: &RedisServer, b: &RedisServer) -> usize {
    match compare_data(a, b).await {
        Ok(n) => n,
        Err(e) => panic!("leader and follower differ: {e}"),
    }
}

pub async fn compare_data(a: &RedisServer, b: &RedisServer) -> Result<usize, String> {
    let mut total = 0;
    for db in 0..16 {
        let mut ca = client(&format!("{}/{db}", a.url())).await;
        let mut cb = client(&format!("{}/{db}", b.url())).await;
        let mut ka: Vec<Vec<u8>> = ca.keys("*").await.map_err(|e| e.to_string())?;
        let mut kb: Vec<Vec<u8>> = cb.keys("*").await.map_err(|e| e.to_string())?;
        // statemirror's generation marker is advanced on both sides at its own pace; the
        // cluster keys (clean-stop records, leases, members) live on the leader only.
        let marker = statemirror::redis::generation::KEY;
        let own = |k: &Vec<u8>| k == marker || k.starts_with(statemirror::redis::cluster::PREFIX);
        ka.retain(|k| !own(k));
        kb.retain(|k| !own(k));
        ka.sort();
        kb.sort();
        if ka != kb {
            let only_a: Vec<_> = ka
                .iter()
                .filter(|k| !kb.contains(k))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .take(10)
                .collect();
            let only_b: Vec<_> = kb
                .iter()
                .filter(|k| !ka.contains(k))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .take(10)
                .collect();
            return Err(format!(
                "db {db}: keys differ; only on first: {only_a:?}, only on second: {only_b:?}"
            ));
        }
        for k in &ka {
            let va = describe_key(&mut ca, k).await?;
            let vb = describe_key(&mut cb, k).await?;
            if va.0 != vb.0 {
                return Err(format!(
                    "db {db} key {:?}: {:?} vs {:?}",
                    String::from_utf8_lossy(k),
                    va.0,
                    vb.0
                ));
            }
            if (va.1 - vb.1).abs() > 1000 && !(va.1 < 0 && vb.1 < 0) {
                return Err(format!(
                    "db {db} key {:?}: ttl {} ms vs {} ms",
                    String::from_utf8_lossy(k),
                    va.1,
                    vb.1
                ));
            }
        }
        total += ka.len();
    }
    Ok(total)
}

/// (type + canonical value, pttl)
pub async fn describe_key(
    c: &mut redis::aio::MultiplexedConnection,
    k: &[u8],
) -> Result<(String, i64), String> {
    let t: String = redis::cmd("TYPE")
        .arg(k)
        .query_async(c)
        .await
        .map_err(|e| e.to_string())?;
    let v = match t.as_str() {
        "string" => {
            let mut v: Vec<u8> = c.get(k).await.map_err(|e| e.to_string())?;
            if v.starts_with(b"HYLL") && v.len() >= 16 {
                // HyperLogLog: bytes 8..16 cache the cardinality (derived, refreshed by PFCOUNT).
                v[8..16].fill(0);
            }
            format!("{v:?}")
        }
        "list" => {
            let v: Vec<Vec<u8>> = c.lrange(k, 0, -1).await.map_err(|e| e.to_string())?;
            format!("{v:?}")
        }
        "set" => {
            let mut v: Vec<Vec<u8>> = c.smembers(k).await.map_err(|e| e.to_string())?;
            v.sort();
            format!("{v:?}")
        }
        "zset" => {
            let v: Vec<(Vec<u8>, f64)> = c
                .zrange_withscores(k, 0, -1)
                .await
                .map_err(|e| e.to_string())?;
            format!("{v:?}")
        }
        "hash" => {
            let mut v: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(k).await.map_err(|e| e.to_string())?;
            v.sort();
            format!("{v:?}")
        }
        "stream" => {
            let v: redis::Value = redis::cmd("XRANGE")
                .arg(k)
                .arg("-")
                .arg("+")
                .query_async(c)
                .await
                .map_err(|e| e.to_string())?;
            let g: redis::Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(k)
                .query_async(c)
                .await
                .map_err(|e| e.to_string())?;
            format!("{v:?} groups {g:?}")
        }
        other => other.to_string(),
    };
    let ttl: i64 = redis::cmd("PTTL")
        .arg(k)
        .query_async(c)
        .await
        .map_err(|e| e.to_string())?;
    Ok((format!("{t}:{v}"), ttl))
}

// ---------------------------------------------------------------------------------------
// Raw RESP client: exact bytes on the wire, for protocol-level tests (RESP3 type bytes,
// pub/sub frames, malformed input, connection closes).
// ---------------------------------------------------------------------------------------

/// One decoded RESP2/RESP3 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or RESP3 `_`.
    Nil,
    Array(Vec<Resp>),
    Map(Vec<(Resp, Resp)>),
    Set(Vec<Resp>),
    Push(Vec<Resp>),
    Double(String),
    Bool(bool),
    /// Verbatim strings, big numbers, blob errors: type byte and payload.
    Other(u8, Vec<u8>),
}

impl Resp {
    pub fn bulk(s: impl AsRef<[u8]>) -> Resp {
        Resp::Bulk(s.as_ref().to_vec())
    }

    /// `Resp::Array` of bulk strings.
    pub fn bulks(items: &[&str]) -> Resp {
        Resp::Array(items.iter().map(Resp::bulk).collect())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }

    /// The text of a simple or bulk string.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// The RESP multibulk encoding of one command.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply off the front of `buf`: `None` if incomplete. Panics on bytes that are
/// not RESP (the proxy must never send those).
pub fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[1..end];
    let text = || String::from_utf8_lossy(line).into_owned();
    let int = || -> i64 {
        text()
            .parse()
            .unwrap_or_else(|_| panic!("bad RESP length line {:?}", text()))
    };
    let mut pos = end + 2;
    let items = |n: i64, pos: &mut usize| -> Option<Vec<Resp>> {
        let mut v = Vec::new();
        for _ in 0..n.max(0) {
            let (r, used) = parse_resp(&buf[*pos..])?;
            *pos += used;
            v.push(r);
        }
        Some(v)
    };
    let r = match buf[0] {
        b'+' => Resp::Simple(text()),
        b'-' => Resp::Error(text()),
        b':' => Resp::Int(int()),
        b'_' => Resp::Nil,
        b',' => Resp::Double(text()),
        b'#' => Resp::Bool(line == b"t"),
        b'(' => Resp::Other(b'(', line.to_vec()),
        t @ (b'$' | b'=' | b'!') => {
            let n = int();
            if n < 0 {
                Resp::Nil
            } else {
                let n = n as usize;
                if buf.len() < pos + n + 2 {
                    return None;
                }
                let data = buf[pos..pos + n].to_vec();
                assert_eq!(
                    &buf[pos + n..pos + n + 2],
                    b"\r\n",
                    "bulk not CRLF-terminated"
                );
                pos += n + 2;
                match t {
                    b'$' => Resp::Bulk(data),
                    b'!' => Resp::Error(String::from_utf8_lossy(&data).into_owned()),
                    _ => Resp::Other(t, data),
                }
            }
        }
        t @ (b'*' | b'~' | b'>') => {
            let n = int();
            if n < 0 {
                Resp::Nil
            } else {
                let v = items(n, &mut pos)?;
                match t {
                    b'*' => Resp::Array(v),
                    b'~' => Resp::Set(v),
                    _ => Resp::Push(v),
                }
            }
        }
        b'%' => {
            let v = items(int() * 2, &mut pos)?;
            let mut it = v.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            Resp::Map(pairs)
        }
        other => panic!(
            "not RESP: type byte {:?} in {:?}",
            other as char,
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        ),
    };
    Some((r, pos))
}

/// How a bounded read on a raw connection ended without a reply.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    TimedOut,
    /// EOF or a reset.
    Closed,
}

/// A plain TCP connection speaking RESP by hand.
pub struct Raw {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .expect("connect timed out")
                .expect("connect");
        let _ = stream.set_nodelay(true);
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(Duration::from_secs(10), self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Sends one command (multibulk) without reading.
    pub async fn send(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.write(&encode(&args)).await;
    }

    /// Sends one command and reads its reply.
    pub async fn cmd(&mut self, args: &[&str]) -> Resp {
        self.send(args).await;
        self.read().await
    }

    /// The next reply; panics after 10 s or when the connection ends.
    pub async fn read(&mut self) -> Resp {
        match self.read_within(Duration::from_secs(10)).await {
            Ok(r) => r,
            Err(e) => panic!("no reply: {e:?}"),
        }
    }

    /// The next reply, or why none came within `t`.
    pub async fn read_within(&mut self, t: Duration) -> Result<Resp, ReadEnd> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if !self.buf.is_empty() {
                if let Some((r, used)) = parse_resp(&self.buf) {
                    self.buf.drain(..used);
                    return Ok(r);
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(ReadEnd::TimedOut),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadEnd::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True if the peer closes the connection within `t` (any data before that is read and
    /// dropped); false if it is still open then.
    pub async fn closed_within(&mut self, t: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + t;
        let mut chunk = vec![0u8; 256 * 1024];
        self.buf.clear();
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}
pub mod fault;
pub mod sentinel;
pub mod tls;
pub mod workload;
pub mod zk;
pub mod zk_workload;

/// `GET /verify` on the admin API at `admin` (`http://host:port`) reports no difference for
/// `protocol`; returns the report.
pub async fn assert_verify_zero(admin: &str, protocol: &str) -> serde_json::Value {
    let (code, body) = statemirror::admin::client::request(
        admin,
        hyper::Method::GET,
        "/verify",
        statemirror::admin::client::discover_token(admin).as_deref(),
        Duration::from_secs(60),
    )
    .await
    .expect("GET /verify");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("verify JSON");
    assert_eq!(v[protocol]["total_differences"], 0, "{body}");
    v
}
