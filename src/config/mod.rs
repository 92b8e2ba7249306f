//! TOML configuration: the whole file ([`Config`]), loading and parsing it, and what it
//! resolves to ([`Resolved`]). `validate()` (in `validate.rs`) reports every problem at once
//! with its key path so `statemirror check-config` can print them all.
//!
//! Units live in the names (`_ms`, `_bytes`). Unknown keys are errors (collected with
//! `serde_ignored`, so they are reported together with every other problem) so a typo fails
//! loudly instead of silently taking a default.
//!
//! - `sections.rs`: the per-section structs and their defaults (in one place: the `Default`
//!   impls, which `README.md` mirrors).
//! - `backend.rs`: backend addresses (`redis://` URLs, ZooKeeper connect strings) and secrets.
//! - `error.rs`: [`ConfigError`] and the helpers that name the key a problem is about.
//! - `validate.rs`: `Config::validate`, every value checked.

mod backend;
mod error;
mod migration;
mod sections;
mod validate;

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use backend::{decode_url_part, parse_connect_string, read_secret, RedisBackend, Secret};
pub use error::ConfigError;
pub use migration::MigrationConfig;
pub use sections::{
    AdminConfig, ClusterConfig, CopyFormat, IdentityConfig, LogConfig, LogFormat,
    MaintenanceConfig, RedisConfig, ReplicationConfig, ResyncConfig, VerifyConfig, ZooKeeperConfig,
};

use error::{key_path, key_path_at};

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
    /// The cluster-wide freeze and member list; absent = off (nothing is written to the
    /// leader backend for it).
    pub cluster: Option<ClusterConfig>,
    pub resync: ResyncConfig,
    pub verify: VerifyConfig,
    /// Online migration to another provider; absent = off.
    pub migration: Option<MigrationConfig>,
    /// `[identity]`: NiFi state identity map (README "State identity").
    pub identity: IdentityConfig,
}

/// Config after validation: addresses parsed, secret files read.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    /// `[admin.tls]`: HTTPS on the admin listener.
    pub admin_tls: Option<crate::tls::ServerTls>,
    /// `cluster.node_name`, or the hostname.
    pub node_name: String,
    pub redis: Option<ResolvedRedis>,
    pub zookeeper: Option<ResolvedZk>,
    /// `[identity] file`, loaded (reloads itself when the file changes).
    pub identity: crate::nifi::identity_live::SharedIdentity,
}

#[derive(Debug, Clone)]
pub struct ResolvedZk {
    pub listen: SocketAddr,
    /// The leader ensemble (with `zookeeper.leader_tls` when set).
    pub leader: crate::zookeeper::endpoint::ZkServers,
    /// The follower ensemble (with `zookeeper.follower_tls` when set).
    pub follower: Option<crate::zookeeper::endpoint::ZkServers>,
    /// `user:password` for the follower session's digest auth.
    pub follower_auth: Option<Secret>,
    /// `[zookeeper.listen_tls]`: TLS on the client listener.
    pub listen_tls: Option<crate::tls::ServerTls>,
    /// The state identity map (the same as [`Resolved::identity`]).
    pub identity: crate::nifi::identity_live::SharedIdentity,
}

#[derive(Debug, Clone)]
pub struct ResolvedRedis {
    pub listen: SocketAddr,
    pub leader: RedisBackend,
    pub follower: Option<RedisBackend>,
    /// `[redis.listen_tls]`: TLS on the client listener.
    pub listen_tls: Option<crate::tls::ServerTls>,
    /// The state identity map (the same as [`Resolved::identity`]).
    pub identity: crate::nifi::identity_live::SharedIdentity,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let errs =
            Config::from_toml("[redis]\nlisten = \"127.0.0.1:1\"\nleadr = \"x\"\n").unwrap_err();
        assert_eq!(errs[0].path, "redis.leadr");
        assert_eq!(errs[0].message, "unknown key");
    }
}
