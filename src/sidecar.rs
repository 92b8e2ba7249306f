//! What the admin API and shutdown need from a running sidecar, whatever its protocol.

use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::migrate::online::Migration;
use crate::replication::converge::Touched;
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

/// A running sidecar of either protocol: the protocol's shared state `S`, and the
/// replication controls the admin API drives, which both protocols hold alike (`K`: how the
/// cross-sidecar check names a key).
pub struct Running<S, K> {
    pub shared: Arc<S>,
    pub local_addr: SocketAddr,
    pub resync: Option<Arc<Resync>>,
    pub verify: Option<Arc<VerifyState>>,
    /// The cross-sidecar check (`[cluster]`).
    pub converge: Option<Arc<Touched<K>>>,
    /// The online migration (`[migration]`), when it names this sidecar.
    pub migration: Option<Arc<Migration>>,
}

/// What a protocol's shared state tells [`Running`].
pub trait Protocol: Send + Sync + 'static {
    /// `redis` or `zookeeper`.
    const NAME: &'static str;
    fn mirror(&self) -> Option<Arc<dyn MirrorView>>;
    fn health(&self) -> (&Health, Option<&Health>);
    /// The protocol's own part of `/status`: listener, backends, connections.
    fn status(&self) -> serde_json::Map<String, serde_json::Value>;
}

impl<S: Protocol, K: Eq + Hash + Clone + Send + Sync> Sidecar for Running<S, K> {
    fn protocol(&self) -> &'static str {
        S::NAME
    }

    fn health(&self) -> (&Health, Option<&Health>) {
        self.shared.health()
    }

    fn status(&self) -> serde_json::Value {
        let mut m = self.shared.status();
        let (leader, follower) = self.shared.health();
        m.insert("listen".into(), self.local_addr.to_string().into());
        m.insert("serving".into(), serving(leader, follower).into());
        m.insert(
            "mirror".into(),
            self.shared
                .mirror()
                .map(|q| serde_json::to_value(q.status()).unwrap_or_default())
                .into(),
        );
        m.insert(
            "converge".into(),
            self.converge.as_ref().map(|t| t.status()).into(),
        );
        m.insert(
            "migration".into(),
            self.migration.as_ref().map(|t| t.status()).into(),
        );
        serde_json::Value::Object(m)
    }

    fn mirror(&self) -> Option<Arc<dyn MirrorView>> {
        self.shared.mirror()
    }

    fn resync(&self) -> Option<Arc<Resync>> {
        self.resync.clone()
    }

    fn verify(&self) -> Option<Arc<VerifyState>> {
        self.verify.clone()
    }
}
