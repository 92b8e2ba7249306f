//! Where NiFi state lives, as a URL: `redis://[user:pass@]host:port[/db][?prefix=…]`
//! (`rediss://` for TLS with the embedded public roots) or `zk://host:port[,host:port]/root`
//! (`/root` is NiFi's `Root Node`, default `/nifi`). `Display` never shows a password.

use std::fmt;

use crate::config::RedisBackend;

/// NiFi's defaults (`RedisStateProvider` `Key Prefix`, `ZooKeeperStateProvider` `Root Node`).
pub const DEFAULT_PREFIX: &str = "nifi/components/";
pub const DEFAULT_ROOT: &str = "/nifi";

#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    Redis {
        backend: RedisBackend,
        /// Always ends with `/`, as NiFi appends one.
        prefix: String,
    },
    ZooKeeper {
        servers: Vec<String>,
        /// NiFi's root node (`/nifi`): components live under `<root>/components`.
        root: String,
    },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Redis { backend, prefix } => write!(
                f,
                "{}://{}/{}?prefix={prefix}",
                if backend.wants_tls { "rediss" } else { "redis" },
                backend.address,
                backend.db
            ),
            Endpoint::ZooKeeper { servers, root } => write!(f, "zk://{}{root}", servers.join(",")),
        }
    }
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("zk://") {
            let (hosts, root) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, DEFAULT_ROOT),
            };
            let servers = crate::config::parse_connect_string(hosts)?;
            let root = root.trim_end_matches('/');
            let root = if root.is_empty() { "" } else { root };
            if root.contains("//") || root.split('/').any(|p| p == "." || p == "..") {
                return Err(format!("{root:?} is not a ZooKeeper path"));
            }
            return Ok(Endpoint::ZooKeeper {
                servers,
                root: root.to_string(),
            });
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            let (base, query) = s.split_once('?').unwrap_or((s, ""));
            let mut prefix = DEFAULT_PREFIX.to_string();
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                match &*k {
                    "prefix" => prefix = v.into_owned(),
                    other => {
                        return Err(format!("unknown URL parameter {other:?} (known: prefix)"))
                    }
                }
            }
            if prefix.is_empty() {
                return Err("prefix must not be empty".into());
            }
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            let mut backend = RedisBackend::parse(base)?;
            if backend.wants_tls {
                let settings = crate::tls::ClientTlsSettings::default();
                let tls = crate::tls::ClientTls::new(&settings, &backend.address)
                    .map_err(|e| format!("TLS: {e:?}"))?;
                backend.tls = Some(tls);
            }
            return Ok(Endpoint::Redis { backend, prefix });
        }
        Err(format!(
            "{:?}: expected redis://, rediss:// or zk://",
            s.split("://").next().unwrap_or(s)
        ))
    }

    pub fn protocol(&self) -> &'static str {
        match self {
            Endpoint::Redis { .. } => "redis",
            Endpoint::ZooKeeper { .. } => "zookeeper",
        }
    }

    /// Where component `id` lives (key or path), for messages.
    pub fn location(&self, id: &str) -> String {
        match self {
            Endpoint::Redis { prefix, .. } => format!("{prefix}{id}"),
            Endpoint::ZooKeeper { root, .. } => format!("{root}/components/{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_hides_passwords() {
        let e = Endpoint::parse("redis://u:s3cret@127.0.0.1:7000/2?prefix=x/y").unwrap();
        assert_eq!(e.to_string(), "redis://127.0.0.1:7000/2?prefix=x/y/");
        assert!(!format!("{e:?}").contains("s3cret"));
        let e = Endpoint::parse("redis://h:1").unwrap();
        assert!(matches!(&e, Endpoint::Redis { prefix, .. } if prefix == DEFAULT_PREFIX));
        let e = Endpoint::parse("zk://a:1,b:2/nifi2").unwrap();
        assert_eq!(e.to_string(), "zk://a:1,b:2/nifi2");
        assert_eq!(e.location("c"), "/nifi2/components/c");
        assert_eq!(
            Endpoint::parse("zk://a:1").unwrap().location("c"),
            "/nifi/components/c"
        );
        assert!(Endpoint::parse("zk://a:1/x/../y").is_err());
        assert!(Endpoint::parse("http://a:1").is_err());
        assert!(Endpoint::parse("redis://h:1?db=2").is_err());
    }
}
