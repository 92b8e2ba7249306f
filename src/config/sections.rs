//! The per-section structs of the config file (`[admin]`, `[log]`, `[redis]`, `[zookeeper]`,
//! `[replication]`, `[maintenance]`, `[cluster]`, `[resync]`, `[verify]`) and their defaults: the
//! `Default` impls here are the one place defaults live, and `README.md` mirrors them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// HTTP admin API address. Default `127.0.0.1:9480` (loopback only).
    pub listen: String,
    /// File holding the bearer token that `PUT`/`DELETE`/`POST` and `GET /verify` need.
    /// Default: none, and a random token is generated at start into a file only this user
    /// can read (see `admin::token`). Required when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
    /// Host names (no port) the `Host` header of admin requests may carry besides an IP
    /// address of the listener and `localhost`, e.g. a Kubernetes Service name. Default: none.
    pub allowed_hosts: Vec<String>,
    /// HTTPS on the admin listener: `cert_file`, `key_file`, `client_ca_file`. Default: none.
    pub tls: Option<crate::tls::ServerTlsSettings>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9480".into(),
            token_file: None,
            allowed_hosts: Vec::new(),
            tls: None,
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
    /// ACL user for statemirror's own leader connections (overrides a user in the URL).
    pub leader_username: Option<String>,
    /// ACL user for statemirror's own follower connections: the mirror, resync, verify,
    /// and read failover's fallback (see README "Redis credentials and ACL users").
    pub follower_username: Option<String>,
    /// `redis+sentinel://` leader: the sentinels' own user and password file (the URL's
    /// credentials are the master's).
    pub leader_sentinel_username: Option<String>,
    pub leader_sentinel_password_file: Option<PathBuf>,
    /// The same for a `redis+sentinel://` follower.
    pub follower_sentinel_username: Option<String>,
    pub follower_sentinel_password_file: Option<PathBuf>,
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
    /// TLS to the leader (`rediss://` leader URL): `ca_file`, `cert_file`, `key_file`,
    /// `server_name`, `verify_hostname`. Default: embedded roots, hostname verified.
    pub leader_tls: Option<crate::tls::ClientTlsSettings>,
    /// TLS to the follower (`rediss://` follower URL), as `leader_tls`.
    pub follower_tls: Option<crate::tls::ClientTlsSettings>,
    /// TLS on the client listener: `cert_file`, `key_file`, `client_ca_file` (clients
    /// must then present a certificate). Default: none (plain).
    pub listen_tls: Option<crate::tls::ServerTlsSettings>,
    /// Clients share a few leader connections: their requests are coalesced into one write
    /// and the replies handed back in order; a client is pinned to a connection of its own
    /// for what needs one (`WATCH`/`MULTI`, blocking commands, pub/sub, `AUTH`, …; README
    /// "Multiplexing"). Default false.
    pub multiplex: bool,
    /// Shared leader connections with `multiplex` (0 = one per core). Default 0.
    pub multiplex_connections: usize,
    /// With `multiplex`: dedicated leader connections kept open after a pin ends, for the
    /// next pin (NiFi pins at every state update; 0 = each pin opens and closes its own).
    /// Default 8.
    pub multiplex_spare_connections: usize,
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
            leader_username: None,
            follower_username: None,
            leader_sentinel_username: None,
            leader_sentinel_password_file: None,
            follower_sentinel_username: None,
            follower_sentinel_password_file: None,
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
            leader_tls: None,
            follower_tls: None,
            listen_tls: None,
            multiplex: false,
            multiplex_connections: 0,
            multiplex_spare_connections: 8,
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
    /// TLS to every server of the leader ensemble (its secure client port): `ca_file`,
    /// `cert_file`, `key_file`, `server_name`, `verify_hostname`, as `redis.leader_tls`.
    /// Default: none (plain).
    pub leader_tls: Option<crate::tls::ClientTlsSettings>,
    /// TLS to every server of the follower ensemble, as `leader_tls`.
    pub follower_tls: Option<crate::tls::ClientTlsSettings>,
    /// TLS on the client listener (ZooKeeper's `secureClientPort` for statemirror's
    /// clients): `cert_file`, `key_file`, `client_ca_file` (clients must then present a
    /// certificate), as `redis.listen_tls`. Default: none (plain).
    pub listen_tls: Option<crate::tls::ServerTlsSettings>,
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
            leader_tls: None,
            follower_tls: None,
            listen_tls: None,
        }
    }
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

/// The cluster-wide freeze and member list, kept in the leader backend (see
/// `replication::cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// This sidecar's name in the member list (`GET /cluster`); unique per cluster. Default:
    /// the hostname (the pod name in Kubernetes).
    pub node_name: Option<String>,
    /// A member that has not refreshed its entry for this long drops out of the list (and
    /// out of what a cluster freeze waits for). It refreshes every third of it. Default 15000.
    pub member_ttl_ms: u64,
    /// Check every key this sidecar mirrored against the leader once the follower took it,
    /// and repair it with a compare-and-set, so that the follower converges whatever order
    /// the sidecars' writes reach it in (`replication::converge`). Costs a read of each
    /// written key on both backends (deduplicated per 100 ms). Default true.
    pub converge: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            member_ttl_ms: 15_000,
            converge: true,
        }
    }
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

/// `[identity]`: NiFi state identity (README "State identity").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IdentityConfig {
    /// The identity map file (TOML, see `nifi::identity`): region 1's component ids → the ids
    /// region 2's flow has. Every path into the follower (mirror, resync, verify, the
    /// convergence check, read failover) applies it; reloaded when it changes. Default: none
    /// (every id is kept).
    pub file: Option<PathBuf>,
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

impl ReplicationConfig {
    pub fn apply_timeout(&self) -> Duration {
        Duration::from_millis(self.apply_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
}
