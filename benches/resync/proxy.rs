//! The statemirror under test: start it, read `/status`, wait for a resync.

use super::*;

/// `[resync]` as this benchmark wants it.
pub(crate) fn resync_settings(cfg: &mut toml::Table, s: &Settings) {
    let r = section(cfg, "resync");
    r.insert("auto".into(), true.into());
    r.insert("on_start".into(), true.into());
    r.insert(
        "max_keys_per_second".into(),
        toml::Value::Integer(s.resync_rate as i64),
    );
    if let Some(b) = s.resync_batch {
        r.insert("batch_size".into(), toml::Value::Integer(b as i64));
    }
}

/// A running statemirror: its ports, log and when it was spawned.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    pub(crate) admin: u16,
    pub(crate) log: PathBuf,
    pub(crate) spawned: Instant,
    pub(crate) guard: Guard,
}

/// Starts statemirror with `cfg` (from [`redis_config`] / [`zookeeper_config`] called with
/// `port` and `admin`) in `root/name`.
pub(crate) fn start_proxy(
    root: &Path,
    name: &str,
    bin: &Path,
    cfg: &toml::Table,
    ports: (u16, u16),
) -> Proxy {
    let dir = root.join(name);
    let (guard, spawned) = start_statemirror_timed(&dir, name, bin, cfg, ports.1);
    Proxy {
        port: ports.0,
        admin: ports.1,
        log: dir.join("statemirror.log"),
        spawned,
        guard,
    }
}

/// `.<protocol>.resync.last` of `/status`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastRun {
    pub(crate) outcome: String,
    pub(crate) duration_seconds: f64,
    pub(crate) scanned: u64,
    pub(crate) copied: u64,
    pub(crate) deleted: u64,
    pub(crate) error: Option<String>,
}

/// What `/status` says about a protocol's mirror and resync.
#[derive(Debug, Clone, Default)]
pub(crate) struct SyncState {
    pub(crate) in_sync: bool,
    pub(crate) running: bool,
    pub(crate) resyncs_total: u64,
    pub(crate) last: Option<LastRun>,
}

pub(crate) fn sync_state(admin: u16, protocol: &str) -> Result<SyncState, String> {
    let (code, body) = http_get(admin, "/status")?;
    if code != 200 {
        return Err(format!("GET /status: {code} {body}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/status: {e}: {body}"))?;
    let p = &v[protocol];
    let (m, r) = (&p["mirror"], &p["resync"]);
    if !m.is_object() || !r.is_object() {
        return Err(format!(
            "/status lacks {protocol}.mirror or .resync: {body}"
        ));
    }
    let l = &r["last"];
    Ok(SyncState {
        in_sync: m["in_sync"].as_bool().unwrap_or(false),
        running: r["running"].as_bool().unwrap_or(false),
        resyncs_total: r["resyncs_total"].as_u64().unwrap_or(0),
        last: l.is_object().then(|| LastRun {
            outcome: l["outcome"].as_str().unwrap_or("").to_string(),
            duration_seconds: l["duration_seconds"].as_f64().unwrap_or(0.0),
            scanned: l["scanned"].as_u64().unwrap_or(0),
            copied: l["copied"].as_u64().unwrap_or(0),
            deleted: l["deleted"].as_u64().unwrap_or(0),
            error: l["error"].as_str().map(String::from),
        }),
    })
}

/// Polls `/status` every 10 ms until the follower is in sync and no resync runs; returns that
/// state and the time since the process was spawned.
pub(crate) async fn wait_in_sync(
    p: &mut Proxy,
    protocol: &str,
    timeout: Duration,
) -> Result<(SyncState, Duration), String> {
    loop {
        if let Some(status) = p.guard.exited() {
            return Err(format!(
                "statemirror exited ({status}){}",
                log_tail(Some(&p.log))
            ));
        }
        let seen = match sync_state(p.admin, protocol) {
            Ok(st) if st.in_sync && !st.running && st.last.is_some() => {
                return Ok((st, p.spawned.elapsed()))
            }
            Ok(st) => format!("{st:?}"),
            Err(e) => e,
        };
        if p.spawned.elapsed() > timeout {
            return Err(format!(
                "{protocol}: follower not in sync {timeout:?} after start: {seen}{}",
                log_tail(Some(&p.log))
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most 30 s) until the mirror queue is empty; returns whether it is.
pub(crate) async fn drained(admin: u16, protocol: &str) -> bool {
    let started = Instant::now();
    loop {
        if mirror_status(admin, protocol).queue_depth == 0 {
            return true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /resync` (with the sidecar's generated admin token); returns `resyncs_total`
/// from before the request, for [`watch_resync`].
pub(crate) fn request_resync(admin: u16, protocol: &str) -> Result<u64, String> {
    let before = sync_state(admin, protocol)?.resyncs_total;
    match http_request(admin, "POST", "/resync")? {
        (202, _) => Ok(before),
        (code, body) => Err(format!("POST /resync: {code} {body}")),
    }
}

/// What [`watch_resync`] returns: the last run and the wall time until in sync.
pub(crate) type ResyncOutcome = Result<(LastRun, Duration), String>;

/// Polls `/status` every 20 ms until a resync requested after `before` runs ended and the
/// follower is in sync (or `timeout`), then sets `done`. Returns the last run and how long
/// the resync took as seen from here.
pub(crate) fn watch_resync(
    admin: u16,
    protocol: &'static str,
    before: u64,
    done: Arc<AtomicBool>,
    timeout: Duration,
) -> thread::JoinHandle<ResyncOutcome> {
    thread::spawn(move || {
        let started = Instant::now();
        let result = loop {
            match sync_state(admin, protocol) {
                Ok(st) if st.resyncs_total > before && !st.running && st.in_sync => {
                    break Ok((st.last.unwrap_or_default(), started.elapsed()))
                }
                Ok(st) if started.elapsed() > timeout => {
                    break Err(format!(
                        "{protocol}: resync not done after {timeout:?}: {st:?}"
                    ))
                }
                Err(e) if started.elapsed() > timeout => break Err(e),
                _ => thread::sleep(Duration::from_millis(20)),
            }
        };
        done.store(true, Ordering::Relaxed);
        result
    })
}

/// `GET /verify` once writes stopped: `<protocol>.total_differences` and the seconds it took.
pub(crate) fn verify_differences(admin: u16, protocol: &str) -> Result<(u64, f64), String> {
    let (code, body) = http_get(admin, "/verify")?;
    if code != 200 {
        return Err(format!("GET /verify: {code} {body}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/verify: {e}: {body}"))?;
    let p = &v[protocol];
    match (
        p["total_differences"].as_u64(),
        p["duration_seconds"].as_f64(),
    ) {
        (Some(n), Some(d)) => Ok((n, d)),
        _ => Err(format!(
            "/verify lacks {protocol}.total_differences: {body}"
        )),
    }
}
