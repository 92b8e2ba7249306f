//! `[migration]`: a sidecar also writes every NiFi state change, translated, into another
//! provider (ZooKeeper → Redis or Redis → ZooKeeper, see `crate::migrate::online`).

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationConfig {
    /// Destination: `redis://[user:pass@]host:port[/db][?prefix=nifi/components/]` or
    /// `zk://host:port[,host:port]/nifi`. Required.
    pub to: String,
    /// Which sidecar's leader is the source: `zookeeper` or `redis`. Default: the only
    /// sidecar configured (required when both are).
    pub from: Option<String>,
    /// NiFi's ZooKeeper `Root Node` on the leader (a ZooKeeper source). Default `/nifi`.
    /// A Redis source uses `redis.nifi_key_prefix`.
    pub root: String,
    /// File holding `user:password` for ZooKeeper digest auth on a `zk://` destination.
    pub to_auth_file: Option<PathBuf>,
    /// Components remembered as changed before the set overflows and a full copy runs
    /// instead. Default 100000.
    pub max_dirty: usize,
    /// Pace of a full copy (at start, after an overflow). Default 5000 components/s.
    pub full_copy_components_per_second: u32,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            to: String::new(),
            from: None,
            root: "/nifi".into(),
            to_auth_file: None,
            max_dirty: 100_000,
            full_copy_components_per_second: 5000,
        }
    }
}

impl MigrationConfig {
    /// The source protocol (`redis` or `zookeeper`) for this config.
    pub fn source(&self, cfg: &Config) -> Result<&'static str, String> {
        match (
            self.from.as_deref(),
            cfg.redis.is_some(),
            cfg.zookeeper.is_some(),
        ) {
            (Some("redis"), true, _) => Ok("redis"),
            (Some("zookeeper"), _, true) => Ok("zookeeper"),
            (Some(p @ ("redis" | "zookeeper")), _, _) => Err(format!("there is no [{p}] sidecar")),
            (Some(p), _, _) => Err(format!("{p:?}: expected redis or zookeeper")),
            (None, true, false) => Ok("redis"),
            (None, false, true) => Ok("zookeeper"),
            (None, true, true) => Err("both sidecars are configured: say which one".into()),
            (None, false, false) => Err("no sidecar is configured".into()),
        }
    }

    /// Every problem, with its key path.
    pub fn check(&self, cfg: &Config) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |path: &str, message: String| {
            errs.push(ConfigError {
                path: format!("migration.{path}"),
                message,
            })
        };
        if let Err(e) = crate::migrate::Endpoint::parse(&self.to) {
            err("to", e);
        }
        match self.source(cfg) {
            Err(e) => err("from", e),
            Ok(p) => {
                // The migration hears of NiFi's writes through the mirror's queue.
                let follower = match p {
                    "redis" => cfg.redis.as_ref().is_some_and(|r| r.follower.is_some()),
                    _ => cfg.zookeeper.as_ref().is_some_and(|z| z.follower.is_some()),
                };
                if !follower {
                    err(
                        "from",
                        format!(
                            "the [{p}] sidecar needs a follower: the migration taps its mirror"
                        ),
                    );
                }
            }
        }
        if !self.root.starts_with('/') || (self.root.len() > 1 && self.root.ends_with('/')) {
            err("root", format!("{:?} is not a ZooKeeper path", self.root));
        }
        if self.max_dirty == 0 {
            err("max_dirty", "must be at least 1".into());
        }
        if self.full_copy_components_per_second == 0 {
            err(
                "full_copy_components_per_second",
                "must be at least 1".into(),
            );
        }
        if let Some(p) = &self.to_auth_file {
            if let Err(e) = super::read_secret(p) {
                err("to_auth_file", e);
            }
        }
        errs
    }
}
