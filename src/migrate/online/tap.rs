//! Wiring the online migration into a sidecar: the tap on its mirror queue that turns each
//! acknowledged write into the NiFi components it changed, and the providers it copies with.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::guard::LeaderGuard;
use super::{Copier, Migration};
use crate::config::{Config, RedisBackend, RedisConfig, ResolvedZk, Secret, ZooKeeperConfig};
use crate::migrate::provider::Provider;
use crate::migrate::redis::RedisProvider;
use crate::migrate::zookeeper::ZkProvider;
use crate::migrate::Endpoint;
use crate::nifi::layout;
use crate::redis::mirror::{Item as RItem, RedisOp};
use crate::replication::freeze::Freeze;
use crate::replication::queue::MirrorQueue;
use crate::zookeeper::mirror::ZkOp;

/// The components a Redis write changed: keys under NiFi's prefix in the leader's database.
/// A write whose keys are not known (a keyless write, keys only the leader can name) asks
/// for a full copy.
pub fn redis_components(m: &Migration, db: u32, prefix: &str, op: &RedisOp) {
    for item in &op.items {
        match item {
            RItem::Put { db: d, key, .. }
            | RItem::Delete { db: d, key }
            | RItem::Copy { db: d, key } => {
                if *d != db {
                    continue;
                }
                if let Some(id) = layout::component_of_key(prefix, key) {
                    match std::str::from_utf8(id) {
                        Ok(id) => m.mark(id),
                        Err(_) => tracing::debug!("a NiFi key that is not UTF-8 is not migrated"),
                    }
                }
            }
            RItem::KeysOf { .. } | RItem::Replay { .. } => m.mark_all(),
        }
    }
}

/// The components a ZooKeeper write changed: znodes `<root>/components/<id>`. A history
/// reset (the leader went back in time) halts the migration ([`super::guard`]).
pub fn zk_components(m: &Migration, dir: &str, op: &ZkOp) {
    if op.is_history_reset() {
        // Not a full copy: that would copy (and delete) from a leader that went back in
        // time. The follower mirror gives up on such a leader too.
        m.halt("the leader's history went back (a history reset): it may have lost data, so nothing more is copied from it");
        return;
    }
    for item in &op.items {
        if let Some((parent, id)) = item.path().rsplit_once('/') {
            if parent == dir && !id.is_empty() {
                m.mark(id);
            }
        }
    }
}

fn destination<'a>(
    top: &'a Config,
    protocol: &str,
) -> Option<(Endpoint, &'a crate::config::MigrationConfig, Option<Secret>)> {
    let mc = top.migration.as_ref()?;
    if mc.source(top).ok()? != protocol {
        return None;
    }
    let to = match Endpoint::parse(&mc.to) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "migration.to: not started");
            return None;
        }
    };
    let auth = mc
        .to_auth_file
        .as_deref()
        .and_then(|p| crate::config::read_secret(p).ok())
        .map(Secret::new);
    Some((to, mc, auth))
}

/// Starts the migration for the Redis sidecar when `[migration]` names it.
pub fn attach_redis(
    top: &Config,
    cfg: &RedisConfig,
    leader: &RedisBackend,
    q: &Arc<MirrorQueue<RedisOp>>,
    freeze: Arc<Freeze>,
    stop: CancellationToken,
) -> Option<Arc<Migration>> {
    let (to, mc, auth) = destination(top, "redis")?;
    let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1000));
    let m = Migration::new(
        "redis",
        to.to_string(),
        mc.max_dirty,
        mc.full_copy_components_per_second,
    );
    let mut prefix = cfg.nifi_key_prefix.clone();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let (tm, db, p) = (m.clone(), leader.db, prefix.clone());
    q.set_tap(Arc::new(move |op: &RedisOp| {
        redis_components(&tm, db, &p, op)
    }));
    wire_idle(&m, q);
    m.set_freeze(freeze);
    let c = Copier {
        from: Provider::Redis(RedisProvider::new(leader.clone(), prefix, timeout)),
        to: Provider::new(&to, timeout, auth),
        guard: LeaderGuard::redis(leader.clone(), timeout),
    };
    super::spawn(m.clone(), c, stop);
    Some(m)
}

/// Starts the migration for the ZooKeeper sidecar when `[migration]` names it. The leader
/// is read with `zookeeper.follower_auth_file`'s identity, as resync and backup read it.
pub fn attach_zk(
    top: &Config,
    cfg: &ZooKeeperConfig,
    r: &ResolvedZk,
    q: &Arc<MirrorQueue<ZkOp>>,
    freeze: Arc<Freeze>,
    stop: CancellationToken,
) -> Option<Arc<Migration>> {
    let (to, mc, auth) = destination(top, "zookeeper")?;
    let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1000));
    let m = Migration::new(
        "zookeeper",
        to.to_string(),
        mc.max_dirty,
        mc.full_copy_components_per_second,
    );
    let root = mc.root.trim_end_matches('/').to_string();
    let dir = format!("{root}/components");
    let tm = m.clone();
    q.set_tap(Arc::new(move |op: &ZkOp| zk_components(&tm, &dir, op)));
    wire_idle(&m, q);
    m.set_freeze(freeze);
    let c = Copier {
        from: Provider::ZooKeeper(ZkProvider::new(
            r.leader.clone(),
            root,
            r.follower_auth.clone(),
            timeout,
        )),
        to: Provider::new(&to, timeout, auth),
        guard: LeaderGuard::zookeeper(r.leader.clone(), r.follower_auth.clone(), timeout),
    };
    super::spawn(m.clone(), c, stop);
    Some(m)
}

/// A freeze waits for the dirty set too: the queue is drained only when the migration is
/// idle, and hears when it becomes so.
fn wire_idle<Op: crate::replication::queue::MirrorOp>(
    m: &Arc<Migration>,
    q: &Arc<MirrorQueue<Op>>,
) {
    let idle = m.clone();
    q.drained_also_when(Arc::new(move || idle.is_idle()));
    let wq: Weak<MirrorQueue<Op>> = Arc::downgrade(q);
    m.set_on_idle(Arc::new(move || {
        if let Some(q) = wq.upgrade() {
            q.notify_changed();
        }
    }));
}
