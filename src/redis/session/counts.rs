//! Request counters kept per connection (one task: plain integers), added to the shared
//! `statemirror_requests_total` when nothing is in flight — before those replies go out, so
//! `/metrics` read after a reply is exact — every [`FLUSH_EVERY`] requests while a client
//! pipelines without pause, and when the session ends. Saves a shared atomic increment
//! per request, whose cache line both worker threads would fight over.

use crate::metrics::{ProtocolMetrics, Route};

/// Requests past which the counts are flushed even while requests are in flight.
const FLUSH_EVERY: u32 = 64;

#[derive(Default)]
pub(super) struct Counts {
    /// By kind (read, write, admin) and route (leader, follower, rejected).
    n: [[u32; 3]; 3],
    pending: u32,
}

impl Counts {
    pub(super) fn add(&mut self, kind: usize, route: Route) {
        if let Some(c) = self.n.get_mut(kind).and_then(|k| k.get_mut(route as usize)) {
            *c += 1;
            self.pending += 1;
        }
    }

    /// Whether to flush now (`idle`: nothing in flight).
    pub(super) fn due(&self, idle: bool) -> bool {
        self.pending > 0 && (idle || self.pending >= FLUSH_EVERY)
    }

    pub(super) fn flush(&mut self, m: &ProtocolMetrics) {
        if self.pending == 0 {
            return;
        }
        for (kind, routes) in self.n.iter_mut().enumerate() {
            for (route, c) in routes.iter_mut().enumerate() {
                if *c > 0 {
                    m.requests[kind][route].increment(u64::from(std::mem::take(c)));
                }
            }
        }
        self.pending = 0;
    }
}
