//! Verification: comparing leader and follower key by key (Redis) or node by node
//! (ZooKeeper) within the same filters resync uses, and saying what differs.
//!
//! Each protocol implements [`Verifier`] (`redis::verify`, `zookeeper::verify`); this module
//! holds the report they fill in, the NiFi-aware detail of a difference, and the periodic
//! schedule whose last result `/status` and `statemirror_verify_differences` show.
//!
//! A verification reads both sides while clients may be writing, so a key written in the
//! last moments can show as different. It is exact once writes stop and the mirror drains.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::queue::lock;
use super::resync::{unix_now, BoxFuture};
use crate::metrics as m;
use crate::nifi::NifiDiff;

/// How one key/path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    Different,
    MissingOnFollower,
    ExtraOnFollower,
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The key (lossy UTF-8) or path.
    pub key: String,
    /// The Redis database, when not 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<u32>,
    pub kind: DiffKind,
    /// What differs, in words: `value`, `ttl`, `type`, `acl`, `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For NiFi state: the component and the entries that differ, with both values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nifi: Option<NifiDiff>,
}

impl Difference {
    /// The difference without NiFi state values (component and entry names only), for
    /// `/status`, which needs no token; the values are in `GET /verify` and the CLI.
    pub fn without_values(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"key": self.key, "kind": self.kind});
        if let Some(db) = self.db {
            v["db"] = db.into();
        }
        if let Some(d) = &self.detail {
            v["detail"] = d.as_str().into();
        }
        if let Some(n) = &self.nifi {
            v["nifi"] = serde_json::json!({
                "component": n.component,
                "entries": n.entries.iter().map(|e| e.entry.as_str()).collect::<Vec<_>>(),
            });
        }
        v
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub protocol: &'static str,
    pub finished_unix: f64,
    pub duration_seconds: f64,
    pub equal: u64,
    pub different: u64,
    pub missing_on_follower: u64,
    pub extra_on_follower: u64,
    /// Up to `verify.max_differences` of them.
    pub differences: Vec<Difference>,
    /// More differences were found than listed.
    pub truncated: bool,
    /// Keys/paths that could not be read (e.g. an ACL statemirror may not read).
    pub unreadable: u64,
}

impl VerifyReport {
    pub fn new(protocol: &'static str) -> Self {
        Self {
            protocol,
            ..Self::default()
        }
    }

    pub fn total_differences(&self) -> u64 {
        self.different + self.missing_on_follower + self.extra_on_follower
    }

    /// Counts a difference and lists it while there is room.
    pub fn add(&mut self, d: Difference, max: usize) {
        match d.kind {
            DiffKind::Different => self.different += 1,
            DiffKind::MissingOnFollower => self.missing_on_follower += 1,
            DiffKind::ExtraOnFollower => self.extra_on_follower += 1,
        }
        if self.differences.len() < max {
            self.differences.push(d);
        } else {
            self.truncated = true;
        }
    }
}

/// What [`VerifyState::run`] answers while another verification runs.
pub const BUSY: &str = "a verification is already running";

/// A protocol's comparison of leader and follower.
pub trait Verifier: Send + Sync + 'static {
    fn protocol(&self) -> &'static str;
    /// Compares everything within the filters; `Err` when a backend cannot be read.
    fn verify(&self, max_differences: usize) -> BoxFuture<'_, Result<VerifyReport, String>>;
}

/// The last verification of one sidecar, for `/status` and the metrics.
pub struct VerifyState {
    pub verifier: Arc<dyn Verifier>,
    last: Mutex<Option<serde_json::Value>>,
    running: AtomicBool,
}

impl VerifyState {
    pub fn new(verifier: Arc<dyn Verifier>) -> Arc<Self> {
        Arc::new(Self {
            verifier,
            last: Mutex::new(None),
            running: AtomicBool::new(false),
        })
    }

    /// Runs one verification and records it. One at a time: a verification reads every key
    /// on both sides, so a second request while one runs is refused (`Err(BUSY)`).
    pub async fn run(&self, max_differences: usize) -> Result<VerifyReport, String> {
        let protocol = self.verifier.protocol();
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(BUSY.into());
        }
        let t0 = Instant::now();
        let r = self.verifier.verify(max_differences).await;
        self.running.store(false, Ordering::Release);
        counter!(m::VERIFY_RUNS_TOTAL, "protocol" => protocol, "outcome" => if r.is_ok() { "completed" } else { "failed" }).increment(1);
        let summary = match &r {
            Ok(rep) => {
                gauge!(m::VERIFY_DIFFERENCES, "protocol" => protocol)
                    .set(rep.total_differences() as f64);
                gauge!(m::VERIFY_LAST_UNIX, "protocol" => protocol).set(rep.finished_unix);
                serde_json::json!({
                    "finished_unix": rep.finished_unix,
                    "duration_seconds": rep.duration_seconds,
                    "equal": rep.equal,
                    "different": rep.different,
                    "missing_on_follower": rep.missing_on_follower,
                    "extra_on_follower": rep.extra_on_follower,
                    "unreadable": rep.unreadable,
                    "first_differences": rep.differences.iter().take(10).map(Difference::without_values).collect::<Vec<_>>(),
                })
            }
            Err(e) => serde_json::json!({
                "finished_unix": unix_now(),
                "duration_seconds": t0.elapsed().as_secs_f64(),
                "error": e,
            }),
        };
        *lock(&self.last) = Some(summary);
        r
    }

    /// For `/status`: the last run's counts, without key names (`GET /verify` lists them)
    /// and with its error reduced to a category (see `public`).
    pub fn status(&self) -> serde_json::Value {
        let mut last = lock(&self.last).clone();
        if let Some(serde_json::Value::Object(m)) = &mut last {
            m.remove("first_differences");
            if let Some(e) = m
                .get("error")
                .and_then(|e| e.as_str())
                .map(super::public::error)
            {
                m.insert("error".into(), e.into());
            }
        }
        serde_json::json!({
            "running": self.running.load(Ordering::Acquire),
            "last": last,
        })
    }
}

/// Runs a verification every `interval` (when > 0) until `shutdown`.
pub fn spawn_periodic(
    state: Arc<VerifyState>,
    interval: Duration,
    max_differences: usize,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match state.run(max_differences).await {
                Ok(r) if r.total_differences() > 0 => tracing::warn!(
                    protocol = r.protocol,
                    different = r.different,
                    missing_on_follower = r.missing_on_follower,
                    extra_on_follower = r.extra_on_follower,
                    "periodic verification found differences between leader and follower"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(protocol = state.verifier.protocol(), error = %e, "periodic verification failed")
                }
            }
        }
    });
}
