//! Host-name resolution and connecting for every outgoing connection: the Redis and
//! ZooKeeper backends (each member of a ZooKeeper connect string), and the CLI's admin
//! client. Everything that turns `host:port` into sockets goes through [`connect`] /
//! [`resolve`].
//!
//! Why not the C library: the shipped binary is statically linked so that it runs in a
//! `FROM scratch` image with no libc at all, and glibc's `getaddrinfo` in a static binary
//! still loads its NSS modules (`libnss_dns.so`, `libnss_files.so`) at run time, which an
//! empty image does not have — every backend name would fail to resolve. So names are
//! resolved here, in Rust, in this order:
//! 1. an IP literal is used as it is (no lookup);
//! 2. `localhost` (and `*.localhost`) is loopback, `127.0.0.1` then `::1`, with or without a
//!    hosts file;
//! 3. the hosts file (`/etc/hosts`), read on every lookup as glibc does;
//! 4. DNS through hickory-resolver, with the name servers, `search` domains and `ndots` of
//!    `/etc/resolv.conf` (read on every lookup, nothing is cached between lookups: the
//!    same behaviour as glibc without nscd, so a backend whose address changed is found at
//!    the next connect).
//!
//! Kubernetes mounts both files into every container, so a Service name such as
//! `redis.nifi.svc` resolves through the pod's search domains as it would with glibc.
//! Without a resolv.conf, a name that is neither an IP literal, `localhost` nor in the
//! hosts file is a clear error, not a silent failure.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hickory_resolver::config::ResolveHosts;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::net::TcpStream;

/// Where names are looked up: a hosts file and a resolv.conf.
#[derive(Debug, Clone)]
pub struct Resolver {
    hosts: PathBuf,
    resolv_conf: PathBuf,
    /// The DNS servers' port: 53 (resolv.conf cannot name another); tests change it.
    dns_port: u16,
}

/// The resolver of the running process: `/etc/hosts` and `/etc/resolv.conf`.
pub fn system() -> &'static Resolver {
    static SYSTEM: OnceLock<Resolver> = OnceLock::new();
    SYSTEM.get_or_init(|| Resolver::new("/etc/hosts", "/etc/resolv.conf"))
}

/// Resolves `host:port` (or `[v6]:port`) with the [`system`] resolver.
pub async fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    system().resolve(addr).await
}

/// Connects to `host:port` with the [`system`] resolver: each resolved address in turn,
/// the first that accepts wins (as `TcpStream::connect` does); the last error otherwise.
pub async fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for a in resolve(addr).await? {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr}: resolved to no address"),
        )
    }))
}

impl Resolver {
    pub fn new(hosts: impl Into<PathBuf>, resolv_conf: impl Into<PathBuf>) -> Self {
        Resolver {
            hosts: hosts.into(),
            resolv_conf: resolv_conf.into(),
            dns_port: 53,
        }
    }

    /// Resolves `host:port` or `[v6]:port`; the addresses in the order to try them.
    pub async fn resolve(&self, addr: &str) -> io::Result<Vec<SocketAddr>> {
        if let Ok(sa) = addr.parse::<SocketAddr>() {
            return Ok(vec![sa]);
        }
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid address {addr:?}: expected host:port"),
                )
            })?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ips = self.lookup(host).await?;
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// The addresses of `host` (an IP literal, `localhost`, a hosts-file name or a DNS
    /// name), never empty on success.
    pub async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return Ok(vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]);
        }
        let from_hosts = hosts_lookup(&self.hosts, &name);
        if !from_hosts.is_empty() {
            return Ok(from_hosts);
        }
        self.dns(host).await
    }

    async fn dns(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let not_found = |why: String| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot resolve {host:?}: {why}"),
            )
        };
        let conf = match std::fs::read(&self.resolv_conf) {
            Ok(c) => c,
            Err(e) => {
                return Err(not_found(format!(
                    "not in {} and cannot read {} ({e}); statemirror is a static binary \
                     that resolves names itself (no C library NSS): mount a resolv.conf \
                     (Kubernetes does) or use an IP address",
                    self.hosts.display(),
                    self.resolv_conf.display()
                )))
            }
        };
        let (config, mut opts) = hickory_resolver::system_conf::parse_resolv_conf(&conf)
            .map_err(|e| not_found(format!("{}: {e}", self.resolv_conf.display())))?;
        let config = if self.dns_port == 53 {
            config
        } else {
            let servers: Vec<_> = (config.name_servers().iter().cloned())
                .map(|mut s| {
                    s.socket_addr.set_port(self.dns_port);
                    s
                })
                .collect();
            let search = config.search().to_vec();
            hickory_resolver::config::ResolverConfig::from_parts(
                config.domain().cloned(),
                search,
                servers,
            )
        };
        // The hosts file was read above (from a path tests can change); no cache between
        // lookups (see the module comment).
        opts.use_hosts_file = ResolveHosts::Never;
        opts.cache_size = 0;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        let found = resolver.lookup_ip(host).await.map_err(|e| {
            not_found(format!(
                "{e} (DNS servers from {})",
                self.resolv_conf.display()
            ))
        })?;
        let ips: Vec<IpAddr> = found.iter().collect();
        if ips.is_empty() {
            return Err(not_found("no address".to_string()));
        }
        Ok(ips)
    }

    #[cfg(test)]
    fn with_dns_port(mut self, port: u16) -> Self {
        self.dns_port = port;
        self
    }
}

/// The addresses for `name` (lowercase) in the hosts file at `path`, in file order; none
/// when the file is missing or unreadable.
fn hosts_lookup(path: &Path, name: &str) -> Vec<IpAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let matches = fields.any(|n| {
            let n = n.strip_suffix('.').unwrap_or(n);
            n.eq_ignore_ascii_case(name)
        });
        if matches && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(hosts: &str, resolv_conf: Option<&str>) -> (tempfile::TempDir, Resolver) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hosts"), hosts).expect("hosts");
        if let Some(rc) = resolv_conf {
            std::fs::write(dir.path().join("resolv.conf"), rc).expect("resolv.conf");
        }
        let r = Resolver::new(dir.path().join("hosts"), dir.path().join("resolv.conf"));
        (dir, r)
    }

    #[tokio::test]
    async fn ip_literals_need_no_files() {
        let r = Resolver::new("/nonexistent/hosts", "/nonexistent/resolv.conf");
        let got = r.resolve("10.1.2.3:6379").await.expect("v4");
        assert_eq!(
            got,
            vec!["10.1.2.3:6379".parse::<SocketAddr>().expect("sa")]
        );
        let got = r.resolve("[fd00::1]:2181").await.expect("v6");
        assert_eq!(
            got,
            vec!["[fd00::1]:2181".parse::<SocketAddr>().expect("sa")]
        );
        let err = r.resolve("no-port").await.expect_err("no port");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn localhost_is_loopback_without_a_hosts_file() {
        let r = Resolver::new("/nonexistent/hosts", "/nonexistent/resolv.conf");
        let got = r.resolve("localhost:9480").await.expect("localhost");
        assert_eq!(
            got,
            vec![
                "127.0.0.1:9480".parse::<SocketAddr>().expect("sa"),
                "[::1]:9480".parse::<SocketAddr>().expect("sa"),
            ]
        );
        assert!(r.resolve("LocalHost.:1").await.is_ok());
    }

    #[tokio::test]
    async fn names_from_the_hosts_file() {
        let (_dir, r) = files(
            "# kubernetes-managed hosts file\n\
             127.0.0.1\tlocalhost\n\
             10.244.1.7  nifi-0.nifi.nifi.svc.cluster.local nifi-0   # the pod\n\
             fd00::7     nifi-0\n\
             bogus line\n",
            None,
        );
        let got = r.resolve("NIFI-0:2181").await.expect("hosts");
        assert_eq!(
            got,
            vec![
                "10.244.1.7:2181".parse::<SocketAddr>().expect("sa"),
                "[fd00::7]:2181".parse::<SocketAddr>().expect("sa"),
            ]
        );
        let got = r
            .lookup("nifi-0.nifi.nifi.svc.cluster.local.")
            .await
            .expect("fqdn");
        assert_eq!(got, vec!["10.244.1.7".parse::<IpAddr>().expect("ip")]);
    }

    #[tokio::test]
    async fn without_resolv_conf_an_unknown_name_is_a_clear_error() {
        let (_dir, r) = files("127.0.0.1 localhost\n", None);
        let err = r
            .resolve("redis.nifi.svc:6379")
            .await
            .expect_err("no resolv.conf");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let msg = err.to_string();
        assert!(msg.contains("\"redis.nifi.svc\""), "{msg}");
        assert!(msg.contains("resolv.conf"), "{msg}");
        assert!(msg.contains("static binary"), "{msg}");
    }

    /// A one-zone DNS server on 127.0.0.1 (UDP): `name` has A `ip`, every other name is
    /// NXDOMAIN. Returns its port and the names it was asked, in order.
    async fn dns_server(
        name: &'static str,
        ip: Ipv4Addr,
    ) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = sock.local_addr().expect("addr").port();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let q = &buf[..n];
                // The question: labels from byte 12 to the root label, then type and class.
                let mut i = 12;
                let mut labels = Vec::new();
                while i < n && q[i] != 0 {
                    let len = q[i] as usize;
                    labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).to_lowercase());
                    i += 1 + len;
                }
                let qend = i + 5;
                let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
                let qname = labels.join(".");
                if let Ok(mut l) = log.lock() {
                    l.push(format!("{qname}/{qtype}"));
                }
                let hit = qname == name;
                let mut r = Vec::with_capacity(qend + 16);
                r.extend_from_slice(&q[..2]); // id
                r.extend_from_slice(&[0x81, if hit { 0x80 } else { 0x83 }]);
                r.extend_from_slice(&[0, 1, 0, u8::from(hit && qtype == 1), 0, 0, 0, 0]);
                r.extend_from_slice(&q[12..qend]);
                if hit && qtype == 1 {
                    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
                    r.extend_from_slice(&ip.octets());
                }
                let _ = sock.send_to(&r, peer).await;
            }
        });
        (port, asked)
    }

    #[tokio::test]
    async fn dns_follows_the_search_domains_of_resolv_conf() {
        let ip = Ipv4Addr::new(10, 96, 0, 42);
        let (port, asked) = dns_server("redis.nifi.svc.cluster.local", ip).await;
        // What Kubernetes writes for a pod in namespace "nifi".
        let (_dir, r) = files(
            "127.0.0.1 localhost\n",
            Some(
                "search nifi.svc.cluster.local svc.cluster.local cluster.local\n\
                 nameserver 127.0.0.1\n\
                 options ndots:5 timeout:2 attempts:1\n",
            ),
        );
        let r = r.with_dns_port(port);
        let got = r.resolve("redis.nifi.svc:6379").await.expect("dns");
        assert_eq!(got, vec![SocketAddr::new(IpAddr::V4(ip), 6379)]);
        let asked = asked.lock().map(|a| a.clone()).unwrap_or_default();
        assert!(
            asked.contains(&"redis.nifi.svc.cluster.local/1".to_string()),
            "{asked:?}"
        );

        let err = r
            .resolve("nothing.nifi.svc:6379")
            .await
            .expect_err("nxdomain");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("\"nothing.nifi.svc\""), "{err}");
    }

    #[tokio::test]
    async fn connect_tries_each_address_in_turn() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        // "localhost" is 127.0.0.1 then ::1: the first accepts.
        let s = connect(&format!("localhost:{port}"))
            .await
            .expect("connect");
        assert_eq!(s.peer_addr().expect("peer").port(), port);
    }
}
