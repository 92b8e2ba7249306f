//! `Config::validate`: checks every value, parses addresses, reads secret files, and returns
//! the [`Resolved`] config or every problem at once with its key path.

use std::net::SocketAddr;

use super::{
    parse_connect_string, read_secret, Config, ConfigError, RedisBackend, Resolved, ResolvedRedis,
    ResolvedZk, Secret,
};

impl Config {
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
        let identity = match &self.identity.file {
            None => crate::nifi::identity_live::SharedIdentity::none(),
            Some(p) => crate::nifi::identity_live::SharedIdentity::load(p).unwrap_or_else(|e| {
                err("identity.file", e.to_string());
                crate::nifi::identity_live::SharedIdentity::none()
            }),
        };
        if let (Ok(a), None) = (&admin_listen, &self.admin.token_file) {
            if !a.ip().is_loopback() {
                err(
                    "admin.token_file",
                    format!(
                        "required when admin.listen ({a}) is not a loopback address: a generated \
                         token is only for a CLI on the same host"
                    ),
                );
            }
        }
        for (i, h) in self.admin.allowed_hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
            if !ok {
                err(
                    &format!("admin.allowed_hosts[{i}]"),
                    format!("{h:?} is not a host name (letters, digits, '.', '-', no port)"),
                );
            }
        }
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
        let node_name = self
            .cluster
            .as_ref()
            .and_then(|c| c.node_name.clone())
            .unwrap_or_else(hostname);
        if let Some(c) = &self.cluster {
            if let Err(m) = check_node_name(&node_name) {
                err("cluster.node_name", m);
            }
            if c.member_ttl_ms < 1000 {
                err("cluster.member_ttl_ms", "must be at least 1000".into());
            }
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
            let leader =
                leader.and_then(|b| with_tls(b, rc.leader_tls.as_ref(), "redis.leader", &mut err));
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
                        Ok(b)
                    })
                    .and_then(|b| with_tls(b, rc.follower_tls.as_ref(), "redis.follower", &mut err))
                    .map(Some),
            };
            if rc.follower.is_none() && rc.follower_tls.is_some() {
                err("redis.follower_tls", "set but redis.follower is not".into());
            }
            let listen_tls = match &rc.listen_tls {
                None => Ok(None),
                Some(t) => crate::tls::ServerTls::new(t, "redis listener")
                    .map(Some)
                    .map_err(|es| {
                        for (k, m) in es {
                            err(&format!("redis.listen_tls.{k}"), m);
                        }
                    }),
            };
            let leader = leader.and_then(|b| {
                credentials(
                    b,
                    "leader",
                    &rc.leader_username,
                    &rc.leader_sentinel_username,
                    &rc.leader_sentinel_password_file,
                )
                .map_err(|(k, m)| err(&k, m))
            });
            let follower = follower.and_then(|f| {
                f.map(|b| {
                    credentials(
                        b,
                        "follower",
                        &rc.follower_username,
                        &rc.follower_sentinel_username,
                        &rc.follower_sentinel_password_file,
                    )
                    .map_err(|(k, m)| err(&k, m))
                })
                .transpose()
            });
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
            if rc.multiplex_connections > 256 {
                err(
                    "redis.multiplex_connections",
                    "must be at most 256 (0 = one per core)".into(),
                );
            }
            if rc.multiplex_spare_connections > 1024 {
                err(
                    "redis.multiplex_spare_connections",
                    "must be at most 1024 (0 = none kept)".into(),
                );
            }
            if let (Ok(listen), Ok(leader), Ok(follower), Ok(listen_tls)) =
                (listen, leader, follower, listen_tls)
            {
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
                    listen_tls,
                    identity: identity.clone(),
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
            let leader = leader
                .and_then(|l| zk_with_tls(l, z.leader_tls.as_ref(), "zookeeper.leader", &mut err));
            let follower = z
                .follower
                .as_deref()
                .map(|f| {
                    parse_connect_string(f)
                        .map_err(|m| err("zookeeper.follower", m))
                        .and_then(|l| {
                            zk_with_tls(l, z.follower_tls.as_ref(), "zookeeper.follower", &mut err)
                        })
                })
                .transpose();
            if z.follower.is_none() && z.follower_tls.is_some() {
                err(
                    "zookeeper.follower_tls",
                    "set but zookeeper.follower is not".into(),
                );
            }
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
            let listen_tls = match &z.listen_tls {
                None => Ok(None),
                Some(t) => crate::tls::ServerTls::new(t, "zookeeper listener")
                    .map(Some)
                    .map_err(|es| {
                        for (k, m) in es {
                            err(&format!("zookeeper.listen_tls.{k}"), m);
                        }
                    }),
            };
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
            if let (Ok(listen), Ok(leader), Ok(follower), Ok(follower_auth), Ok(listen_tls)) =
                (listen, leader, follower, auth, listen_tls)
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
                    listen_tls,
                    identity: identity.clone(),
                });
            }
        }
        if self.redis.is_none() && self.zookeeper.is_none() {
            err(
                "redis",
                "no sidecar configured: add a [redis] or [zookeeper] section".into(),
            );
        }
        if let Some(m) = &self.migration {
            for e in m.check(&self) {
                err(&e.path, e.message);
            }
        }
        let admin_tls = match &self.admin.tls {
            None => Ok(None),
            Some(t) => crate::tls::ServerTls::new(t, "admin listener")
                .map(Some)
                .map_err(|es| {
                    for (k, m) in es {
                        err(&format!("admin.tls.{k}"), m);
                    }
                }),
        };
        let admin_token = match admin_token {
            None => Ok(None),
            Some(Ok(t)) => Ok(Some(t)),
            Some(Err(())) => Err(()),
        };
        match (admin_listen, admin_token, admin_tls) {
            (Ok(admin_listen), Ok(admin_token), Ok(admin_tls)) if errs.is_empty() => Ok(Resolved {
                config: self,
                admin_listen,
                admin_token,
                admin_tls,
                node_name,
                redis,
                zookeeper,
                identity,
            }),
            _ => Err(errs),
        }
    }
}

/// An ensemble's servers, with TLS to each when `settings` is set.
fn zk_with_tls(
    list: Vec<String>,
    settings: Option<&crate::tls::ClientTlsSettings>,
    key: &str,
    err: &mut impl FnMut(&str, String),
) -> Result<crate::zookeeper::endpoint::ZkServers, ()> {
    match settings {
        None => Ok(list.into()),
        Some(t) => crate::zookeeper::endpoint::ZkServers::with_tls(list, t).map_err(|es| {
            for (k, m) in es {
                err(&format!("{key}_tls.{k}"), m);
            }
        }),
    }
}

/// Builds the TLS client config of a `rediss://` or `rediss+sentinel://` backend from its
/// `<key>_tls` table (every file problem reported against its key path); refuses a table for
/// a plain URL.
fn with_tls(
    mut b: RedisBackend,
    settings: Option<&crate::tls::ClientTlsSettings>,
    key: &str,
    err: &mut impl FnMut(&str, String),
) -> Result<RedisBackend, ()> {
    if !b.wants_tls {
        if settings.is_some() {
            err(
                &format!("{key}_tls"),
                format!("set but {key} is not a rediss:// or rediss+sentinel:// URL"),
            );
            return Err(());
        }
        return Ok(b);
    }
    let defaults = crate::tls::ClientTlsSettings::default();
    // A Sentinel set's `address` is only a label: the first sentinel stands for the set
    // (each server is verified against its own host, `ClientTls::for_address`).
    let first = b
        .sentinel
        .as_ref()
        .and_then(|s| s.sentinels.first().cloned());
    match crate::tls::ClientTls::new(
        settings.unwrap_or(&defaults),
        first.as_deref().unwrap_or(&b.address),
    ) {
        Ok(t) => {
            b.tls = Some(t);
            Ok(b)
        }
        Err(es) => {
            for (k, m) in es {
                err(&format!("{key}_tls.{k}"), m);
            }
            Err(())
        }
    }
}

/// The hostname (the pod name in Kubernetes), for `cluster.node_name`'s default.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "statemirror".into())
}

/// The name becomes part of a Redis key and a znode name: a plain word.
fn check_node_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok && n != "." && n != ".." {
        Ok(())
    } else {
        Err(format!(
            "{n:?}: must be 1 to 128 of A-Z a-z 0-9 - _ . (it names a key and a znode)"
        ))
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("must be ip:port (got {s:?})"))
}

/// `[redis] <role>_username` and the sentinel credentials of a `redis+sentinel://` backend.
fn credentials(
    mut b: RedisBackend,
    role: &str,
    username: &Option<String>,
    sentinel_username: &Option<String>,
    sentinel_password_file: &Option<std::path::PathBuf>,
) -> Result<RedisBackend, (String, String)> {
    if let Some(u) = username {
        b.username = Some(u.clone());
    }
    let sentinel_set = sentinel_username.is_some() || sentinel_password_file.is_some();
    match b.sentinel.as_mut() {
        None if sentinel_set => Err((
            format!("redis.{role}_sentinel_username"),
            format!("set but redis.{role} is not a redis+sentinel:// URL"),
        )),
        None => Ok(b),
        Some(s) => {
            let s = std::sync::Arc::get_mut(s)
                .ok_or_else(|| (format!("redis.{role}"), "sentinel set shared".to_string()))?;
            s.username = sentinel_username.clone();
            if let Some(p) = sentinel_password_file {
                s.password = Some(
                    read_secret(p)
                        .map_err(|m| (format!("redis.{role}_sentinel_password_file"), m))?,
                );
            }
            Ok(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zookeeper_section_validates_connect_strings_and_paths() {
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
    fn usernames_and_sentinel_credentials() {
        let r = Config::from_toml(
            "[redis]\nleader = \"redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/m\"\n\
             leader_username = \"sm\"\nleader_sentinel_username = \"s\"\n\
             follower = \"redis://127.0.0.1:3\"\nfollower_username = \"mirror\"\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let r = r.redis.unwrap();
        assert_eq!(r.leader.username.as_deref(), Some("sm"));
        assert_eq!(r.leader.password.as_deref(), Some("pw"));
        let s = r.leader.sentinel.as_ref().unwrap();
        assert_eq!(s.username.as_deref(), Some("s"));
        assert_eq!(s.sentinels.len(), 2);
        assert_eq!(r.follower.unwrap().username.as_deref(), Some("mirror"));
        let errs = Config::from_toml(
            "[redis]\nleader = \"redis://127.0.0.1:1\"\nleader_sentinel_username = \"s\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(errs[0].path, "redis.leader_sentinel_username");
    }

    #[test]
    fn a_tls_sentinel_url_takes_the_roles_tls_table() {
        let r = Config::from_toml(
            "[redis]\nleader = \"rediss+sentinel://s1.example:26380,10.0.0.2:26380/m\"\n\
             [redis.leader_tls]\nverify_hostname = true\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let l = r.redis.unwrap().leader;
        assert!(l.wants_tls && l.tls.is_some() && l.sentinel.is_some());
        let errs = Config::from_toml(
            "[redis]\nleader = \"redis+sentinel://127.0.0.1:1/m\"\n[redis.leader_tls]\n",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(errs[0].path, "redis.leader_tls");
    }

    #[test]
    fn a_non_loopback_admin_listener_needs_a_token_file() {
        let redis = "[redis]\nlisten = \"127.0.0.1:0\"\nleader = \"redis://127.0.0.1:1\"\n";
        for listen in ["0.0.0.0:9480", "10.0.0.1:9480", "[::]:9480"] {
            let errs = Config::from_toml(&format!("[admin]\nlisten = \"{listen}\"\n{redis}"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].path, "admin.token_file");
        }
        for listen in ["127.0.0.1:9480", "[::1]:0"] {
            let c = Config::from_toml(&format!("[admin]\nlisten = \"{listen}\"\n{redis}"));
            assert!(c.unwrap().validate().is_ok(), "{listen}");
        }
        let errs = Config::from_toml(&format!(
            "[admin]\nallowed_hosts = [\"ok.svc\", \"bad:80\"]\n{redis}"
        ))
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(errs[0].path, "admin.allowed_hosts[1]");
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

    #[test]
    fn cluster_section_checks_node_name_and_ttl() {
        let base = "[redis]\nleader = \"redis://127.0.0.1:1\"\n";
        let r = Config::from_toml(&format!("{base}[cluster]\nnode_name = \"nifi-0\"\n"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(r.node_name, "nifi-0");
        assert_eq!(r.config.cluster.map(|c| c.member_ttl_ms), Some(15_000));
        let errs = Config::from_toml(&format!(
            "{base}[cluster]\nnode_name = \"a/b\"\nmember_ttl_ms = 10\n"
        ))
        .unwrap()
        .validate()
        .unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["cluster.node_name", "cluster.member_ttl_ms"]);
        // No section: cluster mode off, the name still defaults to the hostname.
        let r = Config::from_toml(base).unwrap().validate().unwrap();
        assert!(r.config.cluster.is_none() && !r.node_name.is_empty());
    }
}
