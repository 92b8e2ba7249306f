//! What the admin API and shutdown need from a running sidecar, whatever its protocol.

use std::sync::Arc;

use crate::replication::health::Health;
use crate::replication::queue::MirrorView;
use crate::replication::resync::Resync;
use crate::replication::verify::VerifyState;

pub trait Sidecar: Send + Sync {
    /// `redis` or `zookeeper`: the `/status` key and the metrics label.
    fn protocol(&self) -> &'static str;
    /// The leader's health, and the follower's when there is one.
    fn health(&self) -> (&Health, Option<&Health>);
    /// Clients can be served: the leader is up, or the follower can take reads.
    fn ready(&self) -> bool {
        let (leader, follower) = self.health();
        can_serve(leader, follower)
    }
    fn status(&self) -> serde_json::Value;
    fn mirror(&self) -> Option<Arc<dyn MirrorView>>;
    /// The resync controller (when there is a follower).
    fn resync(&self) -> Option<Arc<Resync>> {
        None
    }
    /// Verification and its last result (when there is a follower).
    fn verify(&self) -> Option<Arc<VerifyState>> {
        None
    }
}

/// Leader up, or a follower up to serve reads.
pub fn can_serve(leader: &Health, follower: Option<&Health>) -> bool {
    leader.is_up() || follower.is_some_and(Health::is_up)
}

/// `"leader"`, `"follower"` or `"none"`: who new clients go to.
pub fn serving(leader: &Health, follower: Option<&Health>) -> &'static str {
    if leader.is_up() {
        "leader"
    } else if follower.is_some_and(Health::is_up) {
        "follower"
    } else {
        "none"
    }
}
