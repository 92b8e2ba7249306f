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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
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
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
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

impl Drop for RedisServer {
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
        tweak(&mut cfg);
        let resolved = cfg.validate().unwrap_or_else(|e| panic!("config: {e:?}"));
        statemirror::telemetry::init(&resolved.config.log);
        let app = statemirror::start(resolved)
            .await
            .expect("statemirror starts");
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

    /// `GET|PUT|DELETE path` on the admin API: (status, body).
    pub async fn http(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let m = hyper::Method::from_bytes(method.as_bytes()).expect("method");
        statemirror::admin::client::request(&self.admin(), m, path, token, Duration::from_secs(30))
            .await
            .expect("admin API reachable")
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.http("GET", "/status", None).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
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
        self.app.shutdown.cancel();
    }
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
async fn describe_key(
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
            let v: Vec<u8> = c.get(k).await.map_err(|e| e.to_string())?;
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
