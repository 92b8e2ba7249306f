//! The processes a Redis benchmark run measures: external tools, statemirror instances,
//! twemproxy, and the TLS material for the optional TLS targets.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{
    find_program, free_port, program_version, redis_config, start_statemirror, Guard,
};

/// One thing clients connect to.
pub struct Target {
    pub key: &'static str,
    pub label: &'static str,
    pub port: u16,
    /// Admin port of a statemirror with mirroring on.
    pub admin: Option<u16>,
    /// The proxy's process (none for Redis direct).
    pub pid: Option<u32>,
    /// Clients connect with TLS (`redis-benchmark --tls`).
    pub tls: bool,
    /// Database its clients use: the mirrored target writes db 0, every other db 1, so at
    /// the end the leader's db 0 must equal the follower key by key.
    pub db: u32,
    /// Clients send `SELECT db` (twemproxy refuses it: it selects `db` itself).
    pub select: bool,
    /// twemproxy refuses `WATCH`/`MULTI` (it closes the client).
    pub transactions: bool,
    pub _process: Option<Box<dyn Send>>,
}

impl Target {
    pub fn new(key: &'static str, label: &'static str, port: u16) -> Self {
        Target {
            key,
            label,
            port,
            admin: None,
            pid: None,
            tls: false,
            db: 1,
            select: true,
            transactions: true,
            _process: None,
        }
    }

    pub fn statemirror(mut self, p: Statemirror, mirrored: bool) -> Self {
        if mirrored {
            self.admin = Some(p.admin_port);
            self.db = 0;
        }
        self.pid = Some(p.guard.child.id());
        self._process = Some(Box::new(p));
        self
    }

    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// External programs.
pub struct Tools {
    pub redis_server: PathBuf,
    pub redis_benchmark: PathBuf,
    pub nutcracker: Option<PathBuf>,
}

impl Tools {
    pub fn find() -> Self {
        let need = |name: &str| {
            find_program(name).unwrap_or_else(|| {
                panic!("{name} not found: run scripts/install-deps.sh (installs redis-server redis-tools nutcracker)")
            })
        };
        Tools {
            redis_server: need("redis-server"),
            redis_benchmark: need("redis-benchmark"),
            nutcracker: find_program("nutcracker"),
        }
    }

    pub fn versions(&self) -> String {
        let version = program_version;
        let mut s = format!(
            "{}; {}",
            version(&self.redis_server, "--version"),
            version(&self.redis_benchmark, "--version")
        );
        if let Some(n) = &self.nutcracker {
            let _ = write!(s, "; {}", version(n, "--version"));
        }
        s
    }
}

pub struct Statemirror {
    pub port: u16,
    pub admin_port: u16,
    pub guard: Guard,
}

impl Statemirror {
    /// Starts the binary with `config/redis.toml`, re-pointed at these ports; `tls`: the
    /// follower over `rediss://` and/or clients over TLS; `multiplex`: `[redis] multiplex`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        root: &Path,
        name: &str,
        bin: &Path,
        leader: u16,
        follower: Option<(u16, bool)>,
        tls: Option<(&Certs, bool)>,
        cluster: bool,
        multiplex: bool,
    ) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let mut cfg = redis_config(port, admin_port, leader, follower.map(|f| f.0));
        let path = |p: &Path| toml::Value::from(p.display().to_string());
        if let Some(toml::Value::Table(r)) = cfg.get_mut("redis") {
            r.insert("multiplex".into(), multiplex.into());
            if let (Some((f, true)), Some((certs, _))) = (follower, tls) {
                r.insert("follower".into(), format!("rediss://127.0.0.1:{f}").into());
                let mut t = toml::Table::new();
                t.insert("ca_file".into(), path(&certs.ca_file));
                r.insert("follower_tls".into(), t.into());
            }
            if let Some((certs, true)) = tls {
                let mut t = toml::Table::new();
                t.insert("cert_file".into(), path(&certs.cert_file));
                t.insert("key_file".into(), path(&certs.key_file));
                r.insert("listen_tls".into(), t.into());
            }
        }
        if cluster {
            let mut c = toml::Table::new();
            c.insert("node_name".into(), "bench".into());
            cfg.insert("cluster".into(), c.into());
        }
        let guard = start_statemirror(&root.join(name), name, bin, &cfg, admin_port);
        Statemirror {
            port,
            admin_port,
            guard,
        }
    }
}

pub struct Twemproxy {
    pub port: u16,
    pub guard: Guard,
}

impl Twemproxy {
    /// One pool, one server connection (twemproxy's default), database `db` on connect.
    pub fn start(root: &Path, bin: &Path, leader: u16, db: u32) -> Self {
        let dir = root.join("twemproxy");
        fs::create_dir_all(&dir).expect("twemproxy dir");
        let port = free_port();
        let stats_port = free_port();
        let config = dir.join("nutcracker.yml");
        let yaml = format!(
            "bench:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  \
             redis: true\n  redis_db: {db}\n  preconnect: true\n  auto_eject_hosts: false\n  \
             timeout: 5000\n  server_connections: 1\n  servers:\n    - 127.0.0.1:{leader}:1\n"
        );
        fs::write(&config, yaml).expect("write nutcracker.yml");
        let log = dir.join("nutcracker.log");
        let mut guard = Guard::spawn(
            "nutcracker",
            Command::new(bin)
                .arg("-c")
                .arg(&config)
                .args(["-s", &stats_port.to_string(), "-a", "127.0.0.1"])
                .arg("-o")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        guard.wait_listening(port, Duration::from_secs(10), Some(&log));
        Twemproxy { port, guard }
    }
}

/// A CA and one certificate for `127.0.0.1`/`localhost` that every TLS server here presents
/// (and that statemirror trusts through `ca_file`), made with rcgen at start.
pub struct Certs {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Certs {
    pub fn make(root: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: OpenSSL takes a leaf whose subject is its issuer's for a
        // self-signed certificate (rcgen's default subject is the same for both).
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "statemirror bench CA");
        let ca = p.self_signed(&ca_key).expect("CA");
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = p.signed_by(&key, &ca, &ca_key).expect("cert");
        let dir = root.join("tls");
        fs::create_dir_all(&dir).expect("tls dir");
        let w = |name: &str, text: String| {
            let p = dir.join(name);
            fs::write(&p, text).expect("write cert");
            p
        };
        Certs {
            ca_file: w("ca.pem", ca.pem()),
            cert_file: w("cert.pem", cert.pem()),
            key_file: w("key.pem", key.serialize_pem()),
        }
    }

    /// `redis-server` arguments for a TLS port beside the plain one (no client certificates).
    pub fn redis_args(&self, tls_port: u16) -> Vec<String> {
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            self.cert_file.display().to_string(),
            "--tls-key-file".into(),
            self.key_file.display().to_string(),
            "--tls-ca-cert-file".into(),
            self.ca_file.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}
