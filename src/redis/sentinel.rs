//! Sentinel-managed backends: `redis+sentinel://[user:pass@]s1:26379,s2:26379/mymaster[/db]`
//! (`rediss+sentinel://` for TLS, below).
//!
//! **Where the master is.** A sentinel-managed [`RedisBackend`] carries an
//! `Arc<`[`Sentinel`]`>`: the sentinel set, the master's name, the sentinels' own credentials
//! (`[redis] leader_sentinel_username` / `leader_sentinel_password_file`, the same for the
//! follower) and the master's address as last verified. The user and password in the URL are
//! the *master's* (as for `redis://`). Every connect site asks the backend where to go:
//! [`Conn::connect`] (statemirror's own connections) through [`connect_master`], the client
//! sessions through [`RedisBackend::resolve_address`]. Until a master is known, the sentinels
//! are asked (`SENTINEL GET-MASTER-ADDR-BY-NAME`, with `SENTINEL MASTER` for its
//! `config-epoch`, every sentinel): the newest configuration wins, and its candidate is
//! checked with `ROLE` (it must say `master`). A sentinel that has not heard of a failover
//! yet names the old master, which may still say `master` for a few seconds (until Sentinel
//! reconfigures it): the epoch keeps statemirror from going back to it. The sentinels' user
//! needs `SENTINEL GET-MASTER-ADDR-BY-NAME`, `SENTINEL MASTER` and `SUBSCRIBE`.
//!
//! **Following it.** One watcher task per sentinel-managed backend ([`spawn_watcher`])
//! subscribes to `+switch-master` on one sentinel (on failure, the next one): a message
//! triggers the lookup above. As a backstop for a lost message or a partitioned sentinel it
//! looks up again every [`POLL`]. A candidate becomes the master only once its `ROLE` says
//! `master` and no sentinel knows a newer configuration. A switch
//! updates the address, is logged at warn, counted (`/status`: `sentinel.switches`) and bumps
//! a generation that everything pinned to the old master watches:
//! - client sessions served by it close their client connection at a safe point: no reply
//!   owed, not inside `MULTI`, not between `WATCH` and `EXEC`/`DISCARD`/`UNWATCH`, not
//!   subscribed (see `session::reply`). NiFi's client reconnects to `localhost` and lands on
//!   the new master. A write such a session sends before that goes to the old master: once
//!   Sentinel has demoted it, Redis refuses it (`READONLY`: not a success, not mirrored);
//!   before that, it succeeds there and is lost with the old master's data when Sentinel
//!   reconfigures it (as for any client of a Redis failover) — the resync after the switch
//!   (below) then makes the follower equal to the new master;
//! - statemirror's kept connections (health check, mirror writer, cross-sidecar check,
//!   cluster store) are reopened before their next use ([`Conn::is_stale`]), and each new one
//!   re-checks `ROLE`. A connection that finds a demoted master wakes the watcher at once.
//!
//! **Writes around a switch.** A write whose reply never came is answered with an error
//! (`LEADER_LOST`) and, as for any lost leader connection, queued as a *key copy*: the copy
//! reads the new master, so the follower gets whatever the new master holds — never the
//! unacknowledged value. The follower's mirror itself is unchanged by a leader switch.
//!
//! **run_id.** The new master has another `run_id`. For a direct backend that means "the
//! leader restarted and may have lost data" (parked copies are dropped, waiting copies
//! discarded). After a Sentinel switch the change is expected and is *not* treated as a
//! restart: copies keep going (they read the new master, which is now the truth NiFi sees).
//! But replication to the promoted replica is asynchronous: the last writes the old master
//! acknowledged (and statemirror mirrored) may be missing on the new master, so the follower
//! may now hold data the leader does not. Each switch therefore marks the follower out of
//! sync ("expected" level; [`spawn_watcher`], and the mirror writer when it meets the new
//! `run_id`), and the cross-sidecar check gives up its pending checks the same way: a resync
//! (automatic with `resync.auto`) makes the follower equal to the new master. The
//! generation marker (`statemirror:generation`) is replicated by Redis, but the promoted
//! replica may lack its last advance too: the first marker read after a switch re-bases it
//! on the new master (`generation::RedisMarkers::read`) instead of flagging leader data
//! loss, which would stop that resync. `resync.refuse_empty_leader` still refuses to copy a
//! promoted replica that holds nothing over the follower. A sentinel-managed follower that
//! switches is marked out of sync the same way.
//!
//! **TLS.** `rediss+sentinel://` is TLS to the sentinels *and* to the servers they name, as
//! Redis deploys it (`tls-port` on every sentinel and server, `tls-replication yes`): one
//! `[redis.leader_tls]` (or `follower_tls`) table, one CA, client certificate and rotation for
//! all of them. Each connection is verified against its own server's name
//! ([`crate::tls::ClientTls::for_address`]): a sentinel against its host in the URL, the
//! master against the address the sentinels return — usually an IP, so the certificate
//! needs that IP among its SANs — unless `server_name` is set, which then holds for every
//! server. A failed handshake (unknown CA, hostname mismatch, …) is explained like any
//! backend's TLS error, in the log, `/status` (`error` of the backend and of its `sentinel`)
//! and `statemirror_tls_errors_total`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::types::BytesFrame;
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::backend::{encode_cmd, BackendError, Conn};
use super::mirror::RedisOp;
use crate::config::RedisBackend;
use crate::replication::queue::{MirrorQueue, MirrorView};
use crate::tls::ClientTls;

/// How often the watcher asks the sentinels again, whatever the subscription says.
pub const POLL: Duration = Duration::from_secs(1);

/// A sentinel set and the master it names.
pub struct Sentinel {
    /// `host:port` of each sentinel.
    pub sentinels: Vec<String>,
    /// The master's name (`sentinel monitor <name> …`).
    pub master: String,
    /// Credentials for the sentinels themselves (not the master's).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The master's address as last verified (`None` until first resolved).
    current: Mutex<Option<String>>,
    /// Sentinel's `config-epoch` of the address in `current` (changed under its lock).
    epoch: AtomicU64,
    /// Bumped at each switch (not at the first resolution).
    generation: watch::Sender<u64>,
    switches: AtomicU64,
    /// Wakes the watcher: a connection found the master demoted.
    suspect: Notify,
    /// Why the last lookup found no master (`None` once one did): `/status` and the log.
    last_error: Mutex<Option<String>>,
}

impl PartialEq for Sentinel {
    fn eq(&self, o: &Self) -> bool {
        self.sentinels == o.sentinels && self.master == o.master && self.username == o.username
    }
}
impl Eq for Sentinel {}

impl fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinel")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Sentinel {
    pub fn new(sentinels: Vec<String>, master: String) -> Self {
        Self {
            sentinels,
            master,
            username: None,
            password: None,
            current: Mutex::new(None),
            epoch: AtomicU64::new(0),
            generation: watch::channel(0).0,
            switches: AtomicU64::new(0),
            suspect: Notify::new(),
            last_error: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Records a verified master address; a change from a known one is a switch.
    fn set_master(&self, addr: &str, epoch: u64, role: &str) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if epoch < self.epoch.load(Ordering::Acquire) {
            return; // a slower lookup of an older configuration
        }
        self.epoch.store(epoch, Ordering::Release);
        match cur.as_deref() {
            Some(a) if a == addr => {}
            None => {
                tracing::info!(role, master = %self.master, address = addr, "sentinel: master found");
                *cur = Some(addr.to_string());
            }
            Some(old) => {
                tracing::warn!(role, master = %self.master, from = old, to = addr,
                    "sentinel: master switched; sessions on the old master close at their next safe point");
                *cur = Some(addr.to_string());
                self.switches.fetch_add(1, Ordering::Relaxed);
                self.generation.send_modify(|g| *g += 1);
                metrics::counter!("statemirror_redis_master_switches_total", "role" => role.to_string())
                    .increment(1);
            }
        }
    }

    pub fn status(&self) -> serde_json::Value {
        json!({
            "master_name": self.master,
            "sentinels": self.sentinels,
            "master": self.current(),
            "switches": self.switches(),
            "error": self.last_error(),
        })
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a lookup's outcome; a new reason is logged once (the poll repeats it every
    /// second). The texts hold addresses and explained TLS errors, never credentials.
    fn note_lookup(&self, role: &str, error: Option<&str>) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() == error {
            return;
        }
        if let Some(e) = error {
            tracing::warn!(role, master = %self.master, error = e, "sentinel: no master found");
        }
        *last = error.map(str::to_string);
    }

    /// A connection to one sentinel: its own credentials, and the backend's TLS settings
    /// verified against the sentinel's host.
    fn sentinel_backend(&self, addr: &str, tls: Option<&ClientTls>) -> RedisBackend {
        RedisBackend {
            address: addr.to_string(),
            username: self.username.clone(),
            password: self.password.clone(),
            db: 0,
            sentinel: None,
            tls: tls.map(|t| t.for_address(addr)),
            wants_tls: tls.is_some(),
        }
    }
}

/// Parses `redis[s]+sentinel://[user:pass@]host:port,host:port/master[/db]` (port 26379
/// when omitted). The user and password are the master's. `rediss+sentinel://` wants TLS
/// (validation builds it from the role's `_tls` table, as for `rediss://`).
pub fn parse(s: &str) -> Result<RedisBackend, String> {
    let (rest, wants_tls) = match s.strip_prefix("rediss+sentinel://") {
        Some(r) => (r, true),
        None => (
            s.strip_prefix("redis+sentinel://")
                .ok_or("scheme must be redis+sentinel:// or rediss+sentinel://")?,
            false,
        ),
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("no master name (redis+sentinel://host:port,…/mymaster)")?;
    let sentinels = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') && !host.is_empty() => {
                    let p = port
                        .parse::<u16>()
                        .map_err(|_| format!("{h:?}: bad port"))?;
                    (host, p)
                }
                _ => (h, 26379),
            };
            Ok(format!("{host}:{port}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if sentinels.is_empty() {
        return Err("no sentinels".into());
    }
    let (master, db) = match path.split_once('/') {
        Some((m, d)) if !d.is_empty() => (
            m,
            d.parse::<u32>()
                .map_err(|_| format!("database must be a number, got {d:?}"))?,
        ),
        Some((m, _)) => (m, 0),
        None => (path, 0),
    };
    if master.is_empty() {
        return Err("no master name".into());
    }
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => {
            let (u, p) = match a.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (a, None),
            };
            let u = (!u.is_empty()).then(|| super::super::config::decode_url_part(u));
            let p = p.map(super::super::config::decode_url_part);
            (u.transpose()?, p.transpose()?)
        }
    };
    Ok(RedisBackend {
        address: format!("{master}@{}", sentinels.join(",")),
        username,
        password,
        db,
        sentinel: Some(Arc::new(Sentinel::new(sentinels, master.to_string()))),
        tls: None,
        wants_tls,
    })
}

impl RedisBackend {
    /// Where a connection to this backend goes now: the configured address, or the
    /// sentinel-managed master (asking the sentinels if it is not known yet).
    pub async fn resolve_address(&self, timeout: Duration) -> Result<String, String> {
        match &self.sentinel {
            None => Ok(self.address.clone()),
            Some(s) => match s.current() {
                Some(a) => Ok(a),
                None => discover(self, s, timeout, "lookup").await,
            },
        }
    }

    /// The address to show: the current master of a sentinel-managed backend.
    pub fn shown_address(&self) -> String {
        match &self.sentinel {
            Some(s) => s.current().unwrap_or_else(|| "(not resolved)".into()),
            None => self.address.clone(),
        }
    }

    /// Changes at each Sentinel switch (always 0 for a direct backend).
    pub fn master_generation(&self) -> u64 {
        self.sentinel.as_ref().map_or(0, |s| s.generation())
    }

    /// A receiver that fires at each Sentinel switch (`None` for a direct backend).
    pub fn watch_master(&self) -> Option<watch::Receiver<u64>> {
        self.sentinel.as_ref().map(|s| s.generation.subscribe())
    }

    /// `/status` details of a sentinel-managed backend.
    pub fn sentinel_status(&self) -> Option<serde_json::Value> {
        self.sentinel.as_ref().map(|s| s.status())
    }

    /// The same credentials, database and TLS settings, at a fixed address (its TLS
    /// verified against that address's host unless `server_name` is set).
    pub(crate) fn at(&self, address: &str) -> RedisBackend {
        RedisBackend {
            address: address.to_string(),
            username: self.username.clone(),
            password: self.password.clone(),
            db: self.db,
            sentinel: None,
            tls: self.tls.as_ref().map(|t| t.for_address(address)),
            wants_tls: self.wants_tls,
        }
    }
}

/// What `ROLE` says the server is (`master`, `slave`, `sentinel`), `None` when it cannot be
/// told (an ACL forbids `ROLE`: then the candidate is taken on the sentinels' word).
async fn role(c: &mut Conn, timeout: Duration) -> Result<Option<String>, BackendError> {
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"ROLE"]);
    let r = tokio::time::timeout(timeout, c.roundtrip(&out, 1))
        .await
        .map_err(|_| BackendError::Protocol("ROLE timed out".into()))??;
    Ok(match r.first() {
        Some(BytesFrame::Array(a)) => match a.first() {
            Some(BytesFrame::BulkString(b)) | Some(BytesFrame::SimpleString(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        },
        _ => None,
    })
}

/// Connects to the current master of a sentinel-managed backend and checks its `ROLE`.
pub async fn connect_master(
    b: &RedisBackend,
    s: &Arc<Sentinel>,
    timeout: Duration,
) -> Result<Conn, BackendError> {
    let generation = s.generation();
    let addr = b
        .resolve_address(timeout)
        .await
        .map_err(BackendError::Refused)?;
    let mut c = Conn::connect_direct(&b.at(&addr), timeout).await?;
    match role(&mut c, timeout).await? {
        Some(r) if r != "master" => {
            s.suspect.notify_one();
            return Err(BackendError::Refused(format!(
                "{addr} is no longer the master of {} (ROLE: {r})",
                s.master
            )));
        }
        _ => {}
    }
    c.master = Some((s.clone(), generation));
    Ok(c)
}

/// Asks every sentinel for the master, and takes the answer of the newest configuration
/// (Sentinel's `config-epoch`: a sentinel that has not heard of a failover yet still names
/// the old master, which may still say `master` until Sentinel reconfigures it) whose
/// `ROLE` says `master`; records it. An answer older than the configuration already
/// followed is never taken.
async fn discover(
    b: &RedisBackend,
    s: &Arc<Sentinel>,
    timeout: Duration,
    role_name: &str,
) -> Result<String, String> {
    let mut answers: Vec<(u64, String)> = Vec::new();
    let mut errors = Vec::new();
    for addr in &s.sentinels {
        match ask(s, addr, b.tls.as_ref(), timeout).await {
            Ok(a) => answers.push(a),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    answers.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(&y.1)));
    answers.dedup();
    let known = s.epoch.load(Ordering::Acquire);
    for (epoch, candidate) in answers {
        if epoch < known {
            errors.push(format!(
                "{candidate}: an older configuration (epoch {epoch} < {known})"
            ));
            continue;
        }
        match verify(b, &candidate, timeout).await {
            Ok(()) => {
                s.set_master(&candidate, epoch, role_name);
                s.note_lookup(role_name, None);
                return Ok(candidate);
            }
            Err(e) => errors.push(e),
        }
    }
    let e = format!(
        "no sentinel named a live master {}: {}",
        s.master,
        errors.join("; ")
    );
    s.note_lookup(role_name, Some(&e));
    Err(e)
}

/// One sentinel's `(config-epoch, master address)`.
async fn ask(
    s: &Sentinel,
    sentinel: &str,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<(u64, String), String> {
    let mut c = Conn::connect_direct(&s.sentinel_backend(sentinel, tls), timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    encode_cmd(
        &mut out,
        &[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", s.master.as_bytes()],
    );
    encode_cmd(&mut out, &[b"SENTINEL", b"MASTER", s.master.as_bytes()]);
    let r = tokio::time::timeout(timeout, c.roundtrip(&out, 2))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let candidate = match r.first() {
        Some(BytesFrame::Array(a)) if a.len() == 2 => match (&a[0], &a[1]) {
            (BytesFrame::BulkString(h), BytesFrame::BulkString(p)) => {
                host_port(&String::from_utf8_lossy(h), &String::from_utf8_lossy(p))
            }
            _ => return Err("unexpected reply".into()),
        },
        Some(BytesFrame::Null) => return Err(format!("does not know master {}", s.master)),
        Some(BytesFrame::Error(e)) => return Err(e.to_string()),
        _ => return Err("unexpected reply".into()),
    };
    Ok((config_epoch(r.get(1)).unwrap_or(0), candidate))
}

/// `config-epoch` from a `SENTINEL MASTER` reply (field/value pairs).
fn config_epoch(f: Option<&BytesFrame>) -> Option<u64> {
    let Some(BytesFrame::Array(a)) = f else {
        return None;
    };
    a.chunks(2).find_map(|kv| match kv {
        [BytesFrame::BulkString(k), BytesFrame::BulkString(v)] if &k[..] == b"config-epoch" => {
            std::str::from_utf8(v).ok()?.parse().ok()
        }
        _ => None,
    })
}

/// Checks that `candidate` says it is a master.
async fn verify(b: &RedisBackend, candidate: &str, timeout: Duration) -> Result<(), String> {
    let mut c = Conn::connect_direct(&b.at(candidate), timeout)
        .await
        .map_err(|e| format!("{candidate}: {e}"))?;
    match role(&mut c, timeout)
        .await
        .map_err(|e| format!("{candidate}: {e}"))?
    {
        Some(r) if r != "master" => Err(format!("{candidate} says it is a {r}, not the master")),
        _ => Ok(()),
    }
}

fn host_port(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Follows a sentinel-managed backend's master until `shutdown` (nothing for a direct one).
/// Each switch marks the follower out of sync (`mirror`): the promoted replica may lack the
/// old master's last writes (replication is asynchronous), on either side.
pub fn spawn_watcher(
    b: &RedisBackend,
    role_name: &'static str,
    timeout: Duration,
    mirror: Option<Arc<MirrorQueue<RedisOp>>>,
    shutdown: &CancellationToken,
) {
    let Some(s) = b.sentinel.clone() else {
        return;
    };
    if let Some(q) = mirror {
        let mut switched = s.generation.subscribe();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = switched.changed() => if r.is_err() { return },
                }
                q.sync().mark_out_of_sync_expected(format!(
                    "Sentinel switched the {role_name}'s master: the promoted replica may lack \
                     the old master's last writes (asynchronous replication)"
                ));
            }
        });
    }
    let shutdown = shutdown.clone();
    let b = b.clone();
    tokio::spawn(async move {
        let mut next = 0usize;
        let mut sub: Option<Conn> = None;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if sub.is_none() {
                let addr = &s.sentinels[next % s.sentinels.len()];
                next = next.wrapping_add(1);
                match subscribe(&s, addr, b.tls.as_ref(), timeout).await {
                    Ok(c) => sub = Some(c),
                    Err(e) => {
                        tracing::debug!(role = role_name, sentinel = %addr, error = %e, "sentinel subscription failed")
                    }
                }
            }
            let frame = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = s.suspect.notified() => None,
                _ = poll.tick() => None,
                f = async { match sub.as_mut() { Some(c) => c.read_frame().await, None => std::future::pending().await } } => Some(f),
            };
            match frame {
                None => {
                    if let Err(e) = discover(&b, &s, timeout, role_name).await {
                        tracing::debug!(role = role_name, error = %e, "sentinel poll found no master");
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(role = role_name, error = %e, "sentinel subscription lost");
                    sub = None;
                }
                Some(Ok(f)) => {
                    // Only a trigger: the newest configuration among all sentinels decides.
                    if let Some(candidate) = switch_message(&f, &s.master) {
                        if let Err(e) = discover(&b, &s, timeout, role_name).await {
                            // The poll retries (the promotion may not be visible yet).
                            tracing::info!(role = role_name, announced = %candidate, error = %e,
                                "sentinel announced a switch; new master not confirmed yet");
                        }
                    }
                }
            }
        }
    });
}

async fn subscribe(
    s: &Sentinel,
    addr: &str,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<Conn, BackendError> {
    let mut c = Conn::connect_direct(&s.sentinel_backend(addr, tls), timeout).await?;
    let mut out = BytesMut::new();
    encode_cmd(&mut out, &[b"SUBSCRIBE", b"+switch-master"]);
    let r = tokio::time::timeout(timeout, c.roundtrip(&out, 1))
        .await
        .map_err(|_| BackendError::Protocol("SUBSCRIBE timed out".into()))??;
    if let Some(BytesFrame::Error(e)) = r.first() {
        return Err(BackendError::Refused(e.to_string()));
    }
    Ok(c)
}

/// The new address in a `+switch-master` message for `master`
/// (`<name> <old-ip> <old-port> <new-ip> <new-port>`).
fn switch_message(f: &BytesFrame, master: &str) -> Option<String> {
    let BytesFrame::Array(a) = f else {
        return None;
    };
    let (BytesFrame::BulkString(kind), BytesFrame::BulkString(payload)) = (a.first()?, a.get(2)?)
    else {
        return None;
    };
    if &kind[..] != b"message" {
        return None;
    }
    let text = String::from_utf8_lossy(payload);
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        [name, _, _, ip, port] if *name == master => Some(host_port(ip, port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_urls() {
        let b = parse("redis+sentinel://u:p%40w@s1:26379,s2,[::1]:26380/mymaster/2").unwrap();
        let s = b.sentinel.clone().unwrap();
        assert_eq!(s.sentinels, vec!["s1:26379", "s2:26379", "[::1]:26380"]);
        assert_eq!(s.master, "mymaster");
        assert_eq!(b.db, 2);
        assert_eq!(b.username.as_deref(), Some("u"));
        assert_eq!(b.password.as_deref(), Some("p@w"));
        assert!(!format!("{b:?}").contains("p@w"));
        assert!(parse("redis+sentinel://s1:26379").is_err());
        assert!(parse("redis+sentinel://s1:26379/").is_err());
        assert!(parse("redis+sentinel:///m").is_err());
        assert!(parse("redis+sentinel://s1:x/m").is_err());
        assert!(!b.wants_tls);
        let b = parse("rediss+sentinel://s1:26380,s2:26380/mymaster").unwrap();
        assert!(b.wants_tls);
        assert_eq!(b.sentinel.unwrap().sentinels, vec!["s1:26380", "s2:26380"]);
        assert!(parse("redis+sentinels://s1/m").is_err());
    }

    #[test]
    fn reads_switch_messages() {
        let f = BytesFrame::Array(vec![
            BytesFrame::BulkString("message".into()),
            BytesFrame::BulkString("+switch-master".into()),
            BytesFrame::BulkString("mymaster 127.0.0.1 7000 127.0.0.1 7001".into()),
        ]);
        assert_eq!(
            switch_message(&f, "mymaster").as_deref(),
            Some("127.0.0.1:7001")
        );
        assert_eq!(switch_message(&f, "other"), None);
    }

    #[test]
    fn a_switch_bumps_the_generation_once() {
        let s = Sentinel::new(vec!["a:1".into()], "m".into());
        s.set_master("x:1", 0, "leader");
        assert_eq!((s.generation(), s.switches()), (0, 0));
        s.set_master("x:1", 0, "leader");
        s.set_master("y:1", 1, "leader");
        assert_eq!((s.generation(), s.switches()), (1, 1));
        // A sentinel that has not heard of the failover yet: ignored.
        s.set_master("x:1", 0, "leader");
        assert_eq!(s.current().as_deref(), Some("y:1"));
        assert_eq!(s.switches(), 1);
    }

    #[test]
    fn reads_the_config_epoch() {
        let f = BytesFrame::Array(vec![
            BytesFrame::BulkString("name".into()),
            BytesFrame::BulkString("mymaster".into()),
            BytesFrame::BulkString("config-epoch".into()),
            BytesFrame::BulkString("7".into()),
        ]);
        assert_eq!(config_epoch(Some(&f)), Some(7));
        assert_eq!(config_epoch(None), None);
    }
}
