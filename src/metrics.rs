//! Every metric name in one place, its help text, and per-protocol handles created once and
//! cloned into sessions (so the hot path never looks a metric up by name).
//!
//! Labels are bounded enums: `protocol`, `role`, `kind`, `route`, `reason`. Never a client
//! address.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CLIENT_CONNECTIONS: &str = "statemirror_client_connections";
pub const CLIENT_CONNECTIONS_TOTAL: &str = "statemirror_client_connections_total";
pub const CLIENT_ERRORS_TOTAL: &str = "statemirror_client_errors_total";
pub const REQUESTS_TOTAL: &str = "statemirror_requests_total";
pub const PINS_TOTAL: &str = "statemirror_redis_pins_total";
pub const LEADER_LATENCY: &str = "statemirror_leader_request_duration_seconds";
pub const BACKEND_UP: &str = "statemirror_backend_up";
pub const QUEUE_DEPTH: &str = "statemirror_mirror_queue_depth";
pub const QUEUE_BYTES: &str = "statemirror_mirror_queue_bytes";
pub const QUEUE_MAX_OPS: &str = "statemirror_mirror_queue_max_ops";
pub const QUEUE_MAX_BYTES: &str = "statemirror_mirror_queue_max_bytes";
pub const MIRROR_LAG: &str = "statemirror_mirror_lag_seconds";
pub const MIRRORED_TOTAL: &str = "statemirror_mirrored_writes_total";
pub const MIRROR_FAILURES_TOTAL: &str = "statemirror_mirror_failures_total";
pub const MIRROR_REFUSED_TOTAL: &str = "statemirror_mirror_refused_total";
pub const LEADER_DATA_LOSS: &str = "statemirror_leader_data_loss";
pub const DROPPED_TOTAL: &str = "statemirror_mirror_dropped_writes_total";
pub const FOLLOWER_IN_SYNC: &str = "statemirror_follower_in_sync";
pub const MAINTENANCE: &str = "statemirror_maintenance";
pub const REJECTED_WRITES_TOTAL: &str = "statemirror_rejected_writes_total";
pub const RESYNCS_TOTAL: &str = "statemirror_resyncs_total";
pub const RESYNC_RUNNING: &str = "statemirror_resync_running";
pub const RESYNC_DURATION: &str = "statemirror_resync_last_duration_seconds";
pub const RESYNC_COPIED_TOTAL: &str = "statemirror_resync_copied_keys_total";
pub const RESYNC_DELETED_TOTAL: &str = "statemirror_resync_deleted_keys_total";
pub const CONVERGE_CHECKED_TOTAL: &str = "statemirror_converge_checked_keys_total";
pub const CONVERGE_REPAIRED_TOTAL: &str = "statemirror_converge_repaired_keys_total";
pub const CONVERGE_PENDING: &str = "statemirror_converge_pending_keys";
pub const VERIFY_RUNS_TOTAL: &str = "statemirror_verify_runs_total";
pub const VERIFY_DIFFERENCES: &str = "statemirror_verify_differences";
pub const VERIFY_LAST_UNIX: &str = "statemirror_verify_last_run_timestamp_seconds";

/// Installs the Prometheus recorder once per process and returns its render handle.
/// Tests start several proxies in one process, so a second call reuses the first recorder.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(LEADER_LATENCY.into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0, 5.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (e.g. by an embedding program);
            // then our metrics go there and /metrics renders what this handle has.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            // Histogram samples pile up in memory until something drains them; a render
            // does, but nothing guarantees a scrape (Prometheus down, not configured). The
            // exporter's upkeep folds them into the buckets: without it, an unscraped
            // sidecar grows by every request's latency sample forever.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(CLIENT_CONNECTIONS, "Client connections open now.");
    describe_counter!(CLIENT_CONNECTIONS_TOTAL, "Client connections accepted.");
    describe_counter!(
        crate::tls::TLS_ERRORS_TOTAL,
        "Failed TLS handshakes, by peer (backend host:port or client) and reason."
    );
    describe_counter!(
        CLIENT_ERRORS_TOTAL,
        "Client connections closed for bad input or misbehaviour, by reason."
    );
    describe_counter!(
        REQUESTS_TOTAL,
        "Client requests by kind (read/write/admin) and route (leader/follower/rejected)."
    );
    describe_histogram!(
        LEADER_LATENCY,
        Unit::Seconds,
        "Round trip of a client request through the leader backend (Redis: one request in 16 per connection is timed)."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 when the backend passes health checks, by role."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Writes waiting to be mirrored to the follower."
    );
    describe_gauge!(QUEUE_BYTES, Unit::Bytes, "Bytes waiting to be mirrored.");
    describe_gauge!(
        QUEUE_MAX_OPS,
        "The mirror queue's limit in writes (replication.max_queue_ops); above it the queue overflows."
    );
    describe_gauge!(
        QUEUE_MAX_BYTES,
        Unit::Bytes,
        "The mirror queue's limit in bytes (replication.max_queue_bytes); above it the queue overflows."
    );
    describe_gauge!(
        MIRROR_LAG,
        Unit::Seconds,
        "Age of the oldest acknowledged write not yet on the follower (0 when drained)."
    );
    describe_counter!(MIRRORED_TOTAL, "Writes applied to the follower.");
    describe_counter!(MIRROR_FAILURES_TOTAL, "Failed mirror attempts, by reason.");
    describe_gauge!(
        LEADER_DATA_LOSS,
        "1 when the leader lost data the follower still holds (generation marker behind or gone); automatic resync is off until `statemirror recover --from-follower` or a forced resync."
    );
    describe_counter!(
        MIRROR_REFUSED_TOTAL,
        "Acknowledged writes the follower refused for good (skipped; the follower is then out of sync), by reason."
    );
    describe_counter!(
        DROPPED_TOTAL,
        "Writes discarded from the mirror queue (overflow); the follower is then out of sync."
    );
    describe_gauge!(
        FOLLOWER_IN_SYNC,
        "1 while every acknowledged write has been or will be mirrored; 0 after a loss until a full resync."
    );
    describe_gauge!(MAINTENANCE, "1 while writes are frozen for maintenance.");
    describe_counter!(
        PINS_TOTAL,
        "Multiplexed Redis clients pinned to a connection of their own, by where it came from (spare/new)."
    );
    describe_counter!(
        REJECTED_WRITES_TOTAL,
        "Writes answered with an error by statemirror itself, by reason."
    );
    describe_counter!(
        RESYNCS_TOTAL,
        "Full resyncs that ended, by outcome (completed/failed/restarted)."
    );
    describe_gauge!(RESYNC_RUNNING, "1 while a full resync runs.");
    describe_gauge!(
        RESYNC_DURATION,
        Unit::Seconds,
        "How long the last full resync took."
    );
    describe_counter!(
        RESYNC_COPIED_TOTAL,
        "Keys (Redis) or nodes (ZooKeeper) a resync copied to the follower."
    );
    describe_counter!(
        RESYNC_DELETED_TOTAL,
        "Keys or nodes a resync removed from the follower (gone from the leader)."
    );
    describe_counter!(
        CONVERGE_CHECKED_TOTAL,
        "With [cluster]: mirrored keys checked against the leader after the follower took them."
    );
    describe_counter!(
        CONVERGE_REPAIRED_TOTAL,
        "With [cluster]: follower keys replaced with the leader's state by that check (another sidecar's older write had landed last)."
    );
    describe_gauge!(
        CONVERGE_PENDING,
        "With [cluster]: mirrored keys waiting for that check."
    );
    describe_counter!(VERIFY_RUNS_TOTAL, "Verifications run, by outcome.");
    describe_gauge!(
        VERIFY_DIFFERENCES,
        "Keys or nodes that differed (different + missing + extra) in the last verification."
    );
    describe_gauge!(
        VERIFY_LAST_UNIX,
        Unit::Seconds,
        "When the last verification finished (Unix time)."
    );
}

/// Handles for one protocol's hot path.
#[derive(Clone)]
pub struct ProtocolMetrics {
    pub protocol: &'static str,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub leader_latency: Histogram,
    /// `[kind][route]`: kind 0 read, 1 write, 2 admin; route 0 leader, 1 follower, 2 rejected.
    pub requests: [[Counter; 3]; 3],
    pub rejected_maintenance: Counter,
    pub rejected_leader_unavailable: Counter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Leader = 0,
    Follower = 1,
    Rejected = 2,
}

impl ProtocolMetrics {
    pub fn new(protocol: &'static str) -> Self {
        let kinds = ["read", "write", "admin"];
        let routes = ["leader", "follower", "rejected"];
        let requests = kinds.map(|k| {
            routes.map(
                |r| counter!(REQUESTS_TOTAL, "protocol" => protocol, "kind" => k, "route" => r),
            )
        });
        Self {
            protocol,
            connections: gauge!(CLIENT_CONNECTIONS, "protocol" => protocol),
            connections_total: counter!(CLIENT_CONNECTIONS_TOTAL, "protocol" => protocol),
            leader_latency: histogram!(LEADER_LATENCY, "protocol" => protocol),
            requests,
            rejected_maintenance: counter!(REJECTED_WRITES_TOTAL, "protocol" => protocol, "reason" => "maintenance"),
            rejected_leader_unavailable: counter!(REJECTED_WRITES_TOTAL, "protocol" => protocol, "reason" => "leader_unavailable"),
        }
    }

    /// A multiplexed client pinned: `connection` is `spare` (a warm one was taken) or `new`.
    pub fn pinned(&self, connection: &'static str) {
        counter!(PINS_TOTAL, "connection" => connection).increment(1);
    }

    pub fn client_error(&self, reason: &'static str) {
        counter!(CLIENT_ERRORS_TOTAL, "protocol" => self.protocol, "reason" => reason).increment(1);
    }

    pub fn backend_up(&self, role: &'static str) -> Gauge {
        gauge!(BACKEND_UP, "protocol" => self.protocol, "role" => role)
    }
}

pub fn maintenance_gauge() -> Gauge {
    gauge!(MAINTENANCE)
}
