//! Backend addresses and secrets: `redis://` URLs ([`RedisBackend`]), ZooKeeper connect
//! strings ([`parse_connect_string`]), and passwords/tokens ([`Secret`], [`read_secret`]) that
//! never show in `Debug` output or error messages.

use std::fmt;
use std::path::Path;

/// A parsed `redis://` backend address. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisBackend {
    /// `host:port`, what logs and `/status` show.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// Set for `redis[s]+sentinel://`: the master is found and followed through Sentinel
    /// (`crate::redis::sentinel`); `address` is then only a label.
    pub sentinel: Option<std::sync::Arc<crate::redis::sentinel::Sentinel>>,
    /// `rediss://`: the TLS client config (built from `[redis.leader_tls]` or
    /// `[redis.follower_tls]` by validation; `parse` leaves it `None` and sets `wants_tls`).
    pub tls: Option<crate::tls::ClientTls>,
    /// The URL's scheme was `rediss://` or `rediss+sentinel://`.
    pub wants_tls: bool,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("sentinel", &self.sentinel)
            .field("tls", &self.wants_tls)
            .finish()
    }
}

impl RedisBackend {
    /// Parses `redis[s]://[user:pass@]host:port[/db]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("redis+sentinel://") || s.starts_with("rediss+sentinel://") {
            return crate::redis::sentinel::parse(s);
        }
        let url = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        let wants_tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(format!(
                    "scheme must be redis:// or rediss:// (TLS), got {other}://"
                ))
            }
        };
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
            sentinel: None,
            tls: None,
            wants_tls,
        })
    }
}

/// Percent-decodes a URL's user or password.
pub fn decode_url_part(s: &str) -> Result<String, String> {
    decode(s)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(RedisBackend::parse("rediss://x:1").is_ok_and(|b| b.wants_tls));
        assert!(RedisBackend::parse("http://x:1").is_err());
        assert!(RedisBackend::parse("redis://x:1/abc").is_err());
    }

    #[test]
    fn connect_string_parses_and_refuses_chroot() {
        assert_eq!(
            parse_connect_string("a:2181, b:2182").unwrap(),
            vec!["a:2181".to_string(), "b:2182".to_string()]
        );
        assert!(parse_connect_string("a:2181/chroot").is_err());
        assert!(parse_connect_string("a").is_err());
        assert!(parse_connect_string("").is_err());
    }
}
