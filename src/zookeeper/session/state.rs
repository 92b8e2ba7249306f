//! What one connection's task knows: the requests it owes replies for, the zxids it has
//! seen, and the counters it adds to the shared metrics in batches.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use super::super::server::ZkShared;
use super::Mode;
use crate::metrics::Route;
use crate::replication::freeze::WriteTicket;

/// One request owed a reply, in the order the requests were forwarded.
pub(super) struct Pending {
    pub(super) xid: i32,
    pub(super) op: i32,
    /// The error of a reply made here, or `None` to wait for the server's. Framed when it
    /// is sent, so its zxid is the newest one the client has been sent by then.
    pub(super) local: Option<i32>,
    /// The body of a forwarded write (its own bytes, to build its mirror op from the reply).
    pub(super) write: Option<Bytes>,
    pub(super) _ticket: Option<WriteTicket>,
    /// When it was forwarded, for one request in [`LATENCY_SAMPLE`] (the latency histogram).
    pub(super) sent: Option<Instant>,
}

/// One forwarded request in this many is timed for the latency histogram: the distribution
/// needs no more.
pub(super) const LATENCY_SAMPLE: u32 = 16;

/// Counters added to the shared metrics in batches (see [`Tally::due`]), so no shared
/// atomic is touched per request or reply.
#[derive(Default)]
pub(super) struct Tally {
    reads: u64,
    writes: u64,
    rejected: u64,
    rejected_maintenance: u64,
    rejected_leader_unavailable: u64,
    /// Sampled leader latencies, in seconds.
    latencies: SmallVec<[f64; 4]>,
    /// The newest leader zxid seen and not yet published to `ZkShared::max_zxid`.
    max_zxid: Option<i64>,
    /// Events since the last flush.
    events: u32,
}

/// Events past which the counters are flushed even while requests are in flight (a client
/// pipelining without pause still shows up in the metrics).
const FLUSH_EVERY: u32 = 64;

impl Tally {
    pub(super) fn read(&mut self) {
        self.reads += 1;
        self.events += 1;
    }
    pub(super) fn write(&mut self) {
        self.writes += 1;
        self.events += 1;
    }
    pub(super) fn rejected_maintenance(&mut self) {
        self.rejected += 1;
        self.rejected_maintenance += 1;
        self.events += 1;
    }
    pub(super) fn rejected_leader_unavailable(&mut self) {
        self.rejected += 1;
        self.rejected_leader_unavailable += 1;
        self.events += 1;
    }
    pub(super) fn rejected(&mut self) {
        self.rejected += 1;
        self.events += 1;
    }
    pub(super) fn latency(&mut self, secs: f64) {
        self.latencies.push(secs);
        self.events += 1;
    }
    pub(super) fn zxid(&mut self, zxid: i64) {
        self.max_zxid = Some(self.max_zxid.map_or(zxid, |z| z.max(zxid)));
        self.events += 1;
    }

    /// Whether to flush now: something to flush and either nothing is in flight (the
    /// client's replies are about to go out, so whoever reads the metrics after them sees
    /// exact counts) or many events piled up.
    pub(super) fn due(&self, idle: bool) -> bool {
        self.events > 0 && (idle || self.events >= FLUSH_EVERY)
    }

    pub(super) fn flush(&mut self, shared: &ZkShared, route: Route) {
        if self.events == 0 {
            return;
        }
        let m = &shared.metrics;
        let add = |c: &metrics::Counter, n: &mut u64| {
            if *n > 0 {
                c.increment(std::mem::take(n));
            }
        };
        add(&m.requests[0][route as usize], &mut self.reads);
        add(&m.requests[1][route as usize], &mut self.writes);
        add(&m.requests[1][Route::Rejected as usize], &mut self.rejected);
        add(&m.rejected_maintenance, &mut self.rejected_maintenance);
        add(
            &m.rejected_leader_unavailable,
            &mut self.rejected_leader_unavailable,
        );
        for s in self.latencies.drain(..) {
            m.leader_latency.record(s);
        }
        if let Some(z) = self.max_zxid.take() {
            shared.max_zxid.fetch_max(z, Ordering::AcqRel);
        }
        self.events = 0;
    }
}

/// One connection's state, shared by its request and reply handling (one task owns it).
pub(super) struct Session {
    pub(super) shared: Arc<ZkShared>,
    pub(super) mode: Mode,
    /// The client's session id, when its ephemerals are mirrored (leader-served only).
    pub(super) session: Option<i64>,
    /// The leader server (to notice its history going back, see `ZkShared::leader_zxid`).
    pub(super) server: Option<SocketAddr>,
    /// Forwarded writes keep their bodies for the mirror.
    pub(super) mirroring: bool,
    pub(super) route: Route,
    pub(super) pending: VecDeque<Pending>,
    /// The newest zxid sent to the client (follower-served: pinned, see the module comment).
    pub(super) last_zxid: i64,
    /// The newest zxid this leader connection has shown (`None` before its first reply).
    pub(super) conn_zxid: Option<i64>,
    /// Whether the first zxid was checked against the server's history (`leader_zxid`).
    pub(super) first_checked: bool,
    pub(super) tally: Tally,
    pub(super) sampled: u32,
}

impl Session {
    pub(super) fn new(shared: Arc<ZkShared>, mode: Mode, server: Option<SocketAddr>) -> Self {
        let (session, route, last_zxid) = match mode {
            Mode::Leader { session } => (session, Route::Leader, 0),
            Mode::Follower { zxid } => (None, Route::Follower, zxid),
        };
        Session {
            mirroring: shared.mirror.is_some() && matches!(mode, Mode::Leader { .. }),
            shared,
            mode,
            session,
            server,
            route,
            pending: VecDeque::new(),
            last_zxid,
            conn_zxid: None,
            first_checked: false,
            tally: Tally::default(),
            sampled: 0,
        }
    }

    pub(super) fn flush_counters(&mut self) {
        self.tally.flush(&self.shared, self.route);
    }
}
