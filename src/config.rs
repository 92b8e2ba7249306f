//! TOML configuration: serde structs, their defaults (in one place: the `Default` impls
//! below, which `README.md` mirrors), and `validate()`, which reports every problem at once
//! with its key path so `statemirror check-config` can print them all.
//!
//! Units live in the names (`_ms`, `_bytes`). Unknown keys are errors (collected with
//! `serde_ignored`, so they are reported together with every other problem) so a typo fails
//! loudly instead of silently taking a default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// The Redis sidecar; absent means no Redis listener.
    pub redis: Option<RedisConfig>,
    /// The ZooKeeper sidecar; absent means no ZooKeeper listener.
    pub zookeeper: Option<ZooKeeperConfig>,
    pub replication: ReplicationConfig,
    pub maintenance: MaintenanceConfig,
    pub resync: ResyncConfig,
    pub verify: VerifyConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// HTTP admin API address. Default `127.0.0.1:9480` (loopback only).
    pub listen: String,
    /// File holding the bearer token that `PUT`/`DELETE`/`POST` need. Default: none (open).
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9480".into(),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` (default) or `statemirror=debug`.
    /// The `RUST_LOG` environment variable overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// Where clients connect. Default `127.0.0.1:6379`.
    pub listen: String,
    /// Leader backend URL `redis://[user:pass@]host:port[/db]`. Required.
    pub leader: String,
    /// File whose first line is the leader password (overrides a password in the URL).
    pub leader_password_file: Option<PathBuf>,
    /// Follower backend URL; absent = mirroring and read failover off.
    pub follower: Option<String>,
    /// File whose first line is the follower password.
    pub follower_password_file: Option<PathBuf>,
    /// Most client connections at once; more are told `-ERR max number of clients reached`.
    /// Default 1024.
    pub max_connections: usize,
    /// A client with nothing in flight, not subscribed, and silent this long is closed.
    /// 0 = never. Default 300000 (5 min).
    pub client_idle_timeout_ms: u64,
    /// A client that does not read its replies for this long is closed. Default 30000.
    pub client_write_timeout_ms: u64,
    /// Largest request frame a client may send (bytes). Default 67108864 (64 MiB).
    pub max_request_bytes: usize,
    /// Most arguments in one request. Default 1048576.
    pub max_request_args: usize,
    /// TCP connect timeout to a backend. Default 2000.
    pub connect_timeout_ms: u64,
    /// Health check period per backend. Default 1000.
    pub health_interval_ms: u64,
    /// A health check (connect + PING) slower than this fails. Default 1000.
    pub health_timeout_ms: u64,
    /// Consecutive failed checks before a backend is marked down. Default 2.
    pub health_failures_before_down: u32,
    /// Keys that resync and verify cover (`SCAN MATCH` glob patterns), in every database
    /// that holds keys. Live mirroring covers every key regardless. Default `["*"]`.
    pub key_patterns: Vec<String>,
    /// How keys are copied to the follower: `dump` (`DUMP`/`RESTORE`, exact and fast; needs a
    /// follower of the same or a newer Redis) or `typed` (type-aware commands, for an older
    /// follower). With `dump`, a key whose payload the follower rejects is copied `typed`.
    /// Default `dump`.
    pub copy_format: CopyFormat,
    /// Key prefix of NiFi's RedisStateProvider: `verify` decodes these values as NiFi state and
    /// names the entries that differ. Default `nifi/components/`.
    pub nifi_key_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyFormat {
    Dump,
    Typed,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6379".into(),
            leader: String::new(),
            leader_password_file: None,
            follower: None,
            follower_password_file: None,
            max_connections: 1024,
            client_idle_timeout_ms: 300_000,
            client_write_timeout_ms: 30_000,
            max_request_bytes: 64 << 20,
            max_request_args: 1 << 20,
            connect_timeout_ms: 2_000,
            health_interval_ms: 1_000,
            health_timeout_ms: 1_000,
            health_failures_before_down: 2,
            key_patterns: vec!["*".into()],
            copy_format: CopyFormat::Dump,
            nifi_key_prefix: "nifi/components/".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ZooKeeperConfig {
    /// Where clients connect. Default `127.0.0.1:2181`.
    pub listen: String,
    /// Leader ensemble connect string `host:port,host:port`. Required.
    pub leader: String,
    /// Follower ensemble connect string; absent = no mirroring.
    pub follower: Option<String>,
    /// File holding `user:password`: statemirror's follower session authenticates with
    /// `digest` so that `auth` ACLs it copies bind to that identity. Default: none.
    pub follower_auth_file: Option<PathBuf>,
    /// Only paths under these prefixes are mirrored. Default `["/"]` (everything).
    pub include_paths: Vec<String>,
    /// Paths under these prefixes are not mirrored (`/zookeeper` never is). Default `[]`.
    pub exclude_paths: Vec<String>,
    /// Mirror ephemeral nodes too, as ephemerals of statemirror's follower session that are
    /// removed when the client's session ends. Default false (they belong to client
    /// sessions; a follower region rarely wants another region's election nodes).
    pub mirror_ephemeral: bool,
    /// Largest frame a client or server may send (bytes). Default 1049600 (ZooKeeper's
    /// `jute.maxbuffer` plus headers).
    pub max_frame_bytes: usize,
    /// Most client connections at once. Default 1024.
    pub max_connections: usize,
    /// TCP connect timeout to a server. Default 2000.
    pub connect_timeout_ms: u64,
    /// Health check (`srvr`) period per server. Default 1000.
    pub health_interval_ms: u64,
    /// A health check slower than this fails. Default 1000.
    pub health_timeout_ms: u64,
    /// Session timeout asked for by statemirror's own follower session. Default 30000.
    pub follower_session_timeout_ms: u64,
}

impl Default for ZooKeeperConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:2181".into(),
            leader: String::new(),
            follower: None,
            follower_auth_file: None,
            include_paths: vec!["/".into()],
            exclude_paths: Vec::new(),
            mirror_ephemeral: false,
            max_frame_bytes: (1 << 20) + 1024,
            max_connections: 1024,
            connect_timeout_ms: 2_000,
            health_interval_ms: 1_000,
            health_timeout_ms: 1_000,
            follower_session_timeout_ms: 30_000,
        }
    }
}

/// Parses a ZooKeeper connect string (`host:port,host:port`; a chroot suffix is refused).
pub fn parse_connect_string(s: &str) -> Result<Vec<String>, String> {
    if s.contains('/') {
        return Err("a chroot suffix is not supported".into());
    }
    let servers: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| match h.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(h.to_string())
            }
            _ => Err(format!("{h:?} is not host:port")),
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err("no servers".into());
    }
    Ok(servers)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ReplicationConfig {
    /// Most writes waiting for the follower (per protocol). On overflow the queue is discarded
    /// and the follower marked out of sync. Default 100000.
    pub max_queue_ops: usize,
    /// Most bytes waiting for the follower (per protocol). Default 67108864 (64 MiB).
    pub max_queue_bytes: usize,
    /// Most writes applied to the follower in one pipelined batch (one round trip: with a
    /// cross-region RTT this bounds the mirror rate at about batch/RTT). Default 4096.
    pub batch_max_ops: usize,
    /// A batch also stops growing at this many bytes (at least one op). Default 8388608.
    pub batch_max_bytes: usize,
    /// First retry delay after a follower failure; doubles up to the max. Default 100.
    pub retry_initial_backoff_ms: u64,
    /// Longest retry delay. Default 5000.
    pub retry_max_backoff_ms: u64,
    /// One batch (read from the leader + apply on the follower) slower than this fails. Default 5000.
    pub apply_timeout_ms: u64,
    /// At most one "mirror failing" warning per this period (the rest are counted). Default 10000.
    pub warn_interval_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            max_queue_ops: 100_000,
            max_queue_bytes: 64 << 20,
            batch_max_ops: 4096,
            batch_max_bytes: 8 << 20,
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 5_000,
            apply_timeout_ms: 5_000,
            warn_interval_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MaintenanceConfig {
    /// How long `PUT /maintenance` waits for in-flight writes and the mirror to drain. Default 10000.
    pub drain_timeout_ms: u64,
}

/// Full resync: copying the leader's whole state to an out-of-sync follower while clients
/// keep working (see `replication::resync`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ResyncConfig {
    /// Resync on its own as soon as the follower is out of sync and reachable. Otherwise
    /// only `POST /resync` / `statemirror resync` start one. Default true.
    pub auto: bool,
    /// Mark the follower out of sync when statemirror starts (writes queued before it
    /// stopped were in memory and may be lost), so the first resync runs at start. Default true.
    pub on_start: bool,
    /// Most keys (Redis) or nodes (ZooKeeper) copied per second; bounds the load a resync puts
    /// on the leader. 0 = unlimited. Default 20000.
    pub max_keys_per_second: u64,
    /// Redis: keys per `SCAN` step, and most resync copies in one mirror batch (read from the
    /// leader in one `MULTI`). ZooKeeper: nodes per `multi`. Default 500.
    pub batch_size: usize,
    /// A resync that failed (leader unreachable…) is retried after this long. Default 5000.
    pub retry_interval_ms: u64,
    /// An automatic resync refuses to run when the leader holds nothing but the follower holds
    /// data: copying would erase the follower, which may be the only copy left (a leader
    /// restarted empty). `statemirror resync --force` overrides. Default true.
    pub refuse_empty_leader: bool,
}

impl Default for ResyncConfig {
    fn default() -> Self {
        Self {
            auto: true,
            on_start: true,
            max_keys_per_second: 20_000,
            batch_size: 500,
            retry_interval_ms: 5_000,
            refuse_empty_leader: true,
        }
    }
}

/// Verification: comparing leader and follower key by key (`GET /verify`, `statemirror verify`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VerifyConfig {
    /// Run a verification every this many ms and publish the result in `/status` and
    /// `statemirror_verify_differences`. 0 = off. Default 0.
    pub interval_ms: u64,
    /// Most differing keys/paths listed in a report (all are counted). Default 100.
    pub max_differences: usize,
    /// TTLs that differ by less than this count as equal (expiries travel as absolute times,
    /// but the two clocks and the copy take time). Default 2000.
    pub ttl_tolerance_ms: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            interval_ms: 0,
            max_differences: 100,
            ttl_tolerance_ms: 2_000,
        }
    }
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
        }
    }
}

/// One problem in a config file, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A parsed `redis://` backend address. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisBackend {
    /// `host:port`, what logs and `/status` show.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .finish()
    }
}

impl RedisBackend {
    /// Parses `redis://[user:pass@]host:port[/db]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        if url.scheme() != "redis" {
            return Err(format!(
                "scheme must be redis:// (got {}://; TLS is not supported yet)",
                url.scheme()
            ));
        }
        let host = url.host_str().ok_or("no host")?;
        let port = url.port().unwrap_or(6379);
        let username = match url.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = url.password().map(decode).transpose()?;
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            d => d
                .parse::<u32>()
                .map_err(|_| format!("database must be a number, got {d:?}"))?,
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Ok(Self {
            address: format!("{host}:{port}"),
            username,
            password,
            db,
        })
    }
}

fn decode(s: &str) -> Result<String, String> {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| "bad percent-encoding".to_string())
}

/// A password or token: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that needs it (a comparison, an AUTH command).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a secret file: first line, trimmed. The error names the key, never the content.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret)
}

/// Config after validation: addresses parsed, secret files read.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub redis: Option<ResolvedRedis>,
    pub zookeeper: Option<ResolvedZk>,
}

#[derive(Debug, Clone)]
pub struct ResolvedZk {
    pub listen: SocketAddr,
    pub leader: Vec<String>,
    pub follower: Option<Vec<String>>,
    /// `user:password` for the follower session's digest auth.
    pub follower_auth: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct ResolvedRedis {
    pub listen: SocketAddr,
    pub leader: RedisBackend,
    pub follower: Option<RedisBackend>,
}

impl Config {
    /// Parses TOML text; any syntax error, wrong type or unknown key is an error.
    pub fn from_toml(text: &str) -> Result<Self, Vec<ConfigError>> {
        match Self::parse(text) {
            (Some(c), errs) if errs.is_empty() => Ok(c),
            (_, errs) => Err(errs),
        }
    }

    /// Parses TOML text: the config (unless the text does not parse) and every unknown key.
    fn parse(text: &str) -> (Option<Self>, Vec<ConfigError>) {
        let mut errs = Vec::new();
        let de = toml::Deserializer::new(text);
        let parsed = serde_ignored::deserialize(de, |path| {
            errs.push(ConfigError {
                path: key_path(&path),
                message: "unknown key".into(),
            })
        });
        match parsed {
            Ok(c) => (Some(c), errs),
            Err(e) => {
                let path = e
                    .span()
                    .map(|s| key_path_at(text, s.start))
                    .unwrap_or_else(|| "(file)".into());
                errs.push(ConfigError {
                    path,
                    message: e.message().to_string(),
                });
                (None, errs)
            }
        }
    }

    /// Loads and validates a file; all problems at once.
    pub fn load(path: &Path) -> Result<Resolved, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read config: {e}"),
            }]
        })?;
        let (config, mut errs) = Self::parse(&text);
        let Some(config) = config else {
            return Err(errs);
        };
        match config.validate() {
            Ok(r) if errs.is_empty() => Ok(r),
            Ok(_) => Err(errs),
            Err(more) => {
                errs.extend(more);
                Err(errs)
            }
        }
    }

    /// Checks every value; returns the resolved config or every error with its key path.
    pub fn validate(self) -> Result<Resolved, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut err = |path: &str, message: String| {
            errs.push(ConfigError {
                path: path.into(),
                message,
            })
        };
        let admin_listen = parse_addr(&self.admin.listen).map_err(|m| err("admin.listen", m));
        let admin_token = self.admin.token_file.as_deref().map(|p| {
            read_secret(p)
                .map(Secret::new)
                .map_err(|m| err("admin.token_file", m))
        });
        let r = &self.replication;
        if r.max_queue_ops == 0 {
            err("replication.max_queue_ops", "must be at least 1".into());
        }
        if r.max_queue_bytes < 1024 {
            err(
                "replication.max_queue_bytes",
                "must be at least 1024".into(),
            );
        }
        if r.batch_max_ops == 0 {
            err("replication.batch_max_ops", "must be at least 1".into());
        }
        if r.batch_max_bytes == 0 {
            err("replication.batch_max_bytes", "must be at least 1".into());
        }
        if r.retry_initial_backoff_ms == 0 || r.retry_initial_backoff_ms > r.retry_max_backoff_ms {
            err(
                "replication.retry_initial_backoff_ms",
                "must be between 1 and retry_max_backoff_ms".into(),
            );
        }
        if r.apply_timeout_ms == 0 {
            err("replication.apply_timeout_ms", "must be at least 1".into());
        }
        if self.resync.batch_size == 0 {
            err("resync.batch_size", "must be at least 1".into());
        }
        if self.resync.retry_interval_ms == 0 {
            err("resync.retry_interval_ms", "must be at least 1".into());
        }
        if self.verify.max_differences == 0 {
            err("verify.max_differences", "must be at least 1".into());
        }
        let mut redis = None;
        if let Some(rc) = &self.redis {
            if rc.key_patterns.is_empty() || rc.key_patterns.iter().any(|p| p.is_empty()) {
                err(
                    "redis.key_patterns",
                    "needs at least one non-empty pattern (\"*\" = every key)".into(),
                );
            }
            let listen = parse_addr(&rc.listen).map_err(|m| err("redis.listen", m));
            let leader = if rc.leader.is_empty() {
                err("redis.leader", "is required".into());
                Err(())
            } else {
                RedisBackend::parse(&rc.leader).map_err(|m| err("redis.leader", m))
            };
            let leader = leader.and_then(|mut b| {
                if let Some(p) = &rc.leader_password_file {
                    b.password =
                        Some(read_secret(p).map_err(|m| err("redis.leader_password_file", m))?);
                }
                Ok(b)
            });
            let follower = match &rc.follower {
                None => {
                    if rc.follower_password_file.is_some() {
                        err(
                            "redis.follower_password_file",
                            "set but redis.follower is not".into(),
                        );
                    }
                    Ok(None)
                }
                Some(f) => RedisBackend::parse(f)
                    .map_err(|m| err("redis.follower", m))
                    .and_then(|mut b| {
                        if let Some(p) = &rc.follower_password_file {
                            b.password = Some(
                                read_secret(p)
                                    .map_err(|m| err("redis.follower_password_file", m))?,
                            );
                        }
                        Ok(Some(b))
                    }),
            };
            for (key, v) in [
                ("redis.max_connections", rc.max_connections as u64),
                ("redis.client_write_timeout_ms", rc.client_write_timeout_ms),
                ("redis.max_request_bytes", rc.max_request_bytes as u64),
                ("redis.max_request_args", rc.max_request_args as u64),
                ("redis.connect_timeout_ms", rc.connect_timeout_ms),
                ("redis.health_interval_ms", rc.health_interval_ms),
                ("redis.health_timeout_ms", rc.health_timeout_ms),
                (
                    "redis.health_failures_before_down",
                    rc.health_failures_before_down as u64,
                ),
            ] {
                if v == 0 {
                    err(key, "must be at least 1".into());
                }
            }
            if let (Ok(listen), Ok(leader), Ok(follower)) = (listen, leader, follower) {
                if let Some(f) = &follower {
                    if f.address == leader.address {
                        err(
                            "redis.follower",
                            "is the same address as redis.leader".into(),
                        );
                    }
                }
                redis = Some(ResolvedRedis {
                    listen,
                    leader,
                    follower,
                });
            }
        }
        let mut zookeeper = None;
        if let Some(z) = &self.zookeeper {
            let listen = parse_addr(&z.listen).map_err(|m| err("zookeeper.listen", m));
            let leader = if z.leader.is_empty() {
                err("zookeeper.leader", "is required".into());
                Err(())
            } else {
                parse_connect_string(&z.leader).map_err(|m| err("zookeeper.leader", m))
            };
            let follower = z
                .follower
                .as_deref()
                .map(|f| parse_connect_string(f).map_err(|m| err("zookeeper.follower", m)))
                .transpose();
            let auth = z
                .follower_auth_file
                .as_deref()
                .map(|p| {
                    read_secret(p)
                        .and_then(|s| {
                            if s.contains(':') {
                                Ok(Secret::new(s))
                            } else {
                                Err("must hold user:password".to_string())
                            }
                        })
                        .map_err(|m| err("zookeeper.follower_auth_file", m))
                })
                .transpose();
            for (key, paths) in [
                ("zookeeper.include_paths", &z.include_paths),
                ("zookeeper.exclude_paths", &z.exclude_paths),
            ] {
                for p in paths {
                    if !p.starts_with('/') {
                        err(key, format!("{p:?} must start with /"));
                    }
                }
            }
            for (key, v) in [
                ("zookeeper.max_frame_bytes", z.max_frame_bytes as u64),
                ("zookeeper.max_connections", z.max_connections as u64),
                ("zookeeper.connect_timeout_ms", z.connect_timeout_ms),
                ("zookeeper.health_interval_ms", z.health_interval_ms),
                ("zookeeper.health_timeout_ms", z.health_timeout_ms),
                (
                    "zookeeper.follower_session_timeout_ms",
                    z.follower_session_timeout_ms,
                ),
            ] {
                if v == 0 {
                    err(key, "must be at least 1".into());
                }
            }
            if let (Ok(listen), Ok(leader), Ok(follower), Ok(follower_auth)) =
                (listen, leader, follower, auth)
            {
                if listen.port() != 0
                    && redis
                        .as_ref()
                        .is_some_and(|r: &ResolvedRedis| r.listen == listen)
                {
                    err(
                        "zookeeper.listen",
                        "is the same address as redis.listen".into(),
                    );
                }
                zookeeper = Some(ResolvedZk {
                    listen,
                    leader,
                    follower,
                    follower_auth,
                });
            }
        }
        if self.redis.is_none() && self.zookeeper.is_none() {
            err(
                "redis",
                "no sidecar configured: add a [redis] or [zookeeper] section".into(),
            );
        }
        let admin_token = match admin_token {
            None => Ok(None),
            Some(Ok(t)) => Ok(Some(t)),
            Some(Err(())) => Err(()),
        };
        match (admin_listen, admin_token) {
            (Ok(admin_listen), Ok(admin_token)) if errs.is_empty() => Ok(Resolved {
                config: self,
                admin_listen,
                admin_token,
                redis,
                zookeeper,
            }),
            _ => Err(errs),
        }
    }
}

impl ReplicationConfig {
    pub fn apply_timeout(&self) -> Duration {
        Duration::from_millis(self.apply_timeout_ms)
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("must be ip:port (got {s:?})"))
}

/// `table.key` for an ignored key (serde_ignored shows `Option` levels as `?`).
fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            s if s.is_empty() => key.to_string(),
            s => format!("{s}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// Best-effort `table.key` for a byte offset into TOML text, for syntax errors.
fn key_path_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut key = String::new();
    for (start, line) in line_starts(text) {
        if start > offset {
            break;
        }
        let l = line.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
        } else if let Some((k, _)) = l.split_once('=') {
            key = k.trim().to_string();
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(file)".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

fn line_starts(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut pos = 0;
    text.split_inclusive('\n').map(move |l| {
        let start = pos;
        pos += l.len();
        (start, l)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::default();
        assert_eq!(c.admin.listen, "127.0.0.1:9480");
        assert_eq!(c.replication.max_queue_ops, 100_000);
        assert_eq!(c.replication.max_queue_bytes, 64 << 20);
        assert_eq!(c.maintenance.drain_timeout_ms, 10_000);
        let r = RedisConfig::default();
        assert_eq!(r.max_connections, 1024);
        assert_eq!(r.client_idle_timeout_ms, 300_000);
    }

    #[test]
    fn backend_url_parses_and_hides_password() {
        let b = RedisBackend::parse("redis://nifi:s%40cret@10.0.0.1:6380/2").unwrap();
        assert_eq!(b.address, "10.0.0.1:6380");
        assert_eq!(b.username.as_deref(), Some("nifi"));
        assert_eq!(b.password.as_deref(), Some("s@cret"));
        assert_eq!(b.db, 2);
        assert!(!format!("{b:?}").contains("s@cret"));
        let b = RedisBackend::parse("redis://:pw@localhost").unwrap();
        assert_eq!(b.address, "localhost:6379");
        assert_eq!(b.username, None);
        assert!(RedisBackend::parse("rediss://x:1").is_err());
        assert!(RedisBackend::parse("redis://x:1/abc").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let errs =
            Config::from_toml("[redis]\nlisten = \"127.0.0.1:1\"\nleadr = \"x\"\n").unwrap_err();
        assert_eq!(errs[0].path, "redis.leadr");
        assert_eq!(errs[0].message, "unknown key");
    }

    #[test]
    fn zookeeper_section_validates_connect_strings_and_paths() {
        assert_eq!(
            parse_connect_string("a:2181, b:2182").unwrap(),
            vec!["a:2181".to_string(), "b:2182".to_string()]
        );
        assert!(parse_connect_string("a:2181/chroot").is_err());
        assert!(parse_connect_string("a").is_err());
        assert!(parse_connect_string("").is_err());
        let errs = Config::from_toml(
            "[zookeeper]\nleader = \"x\"\ninclude_paths = [\"nifi\"]\nmax_frame_bytes = 0\n",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "zookeeper.leader",
            "zookeeper.include_paths",
            "zookeeper.max_frame_bytes",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        // One process may run both sidecars.
        let both = Config::from_toml(
            "[redis]\nlisten = \"127.0.0.1:0\"\nleader = \"redis://127.0.0.1:1\"\n[zookeeper]\nlisten = \"127.0.0.1:0\"\nleader = \"127.0.0.1:2\"\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert!(both.redis.is_some() && both.zookeeper.is_some());
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let c = Config::from_toml(
            "[admin]\nlisten = \"nope\"\n[redis]\nlisten = \"x\"\nleader = \"http://a\"\nmax_connections = 0\n[replication]\nmax_queue_ops = 0\n",
        )
        .unwrap();
        let errs = c.validate().unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "admin.listen",
            "redis.listen",
            "redis.leader",
            "redis.max_connections",
            "replication.max_queue_ops",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }
}
