//! The ZooKeeper resync walker: reads the leader's and the follower's trees side by side
//! (breadth-first, [`super::tree`]) and queues what the follower needs as copy ops in the
//! mirror queue's bulk lane; the mirror writer applies them as `multi`s.
//!
//! Why a copy never overwrites a newer live write (`replication::resync` has the whole
//! argument): every op carries the *oldest* leader reply-header zxid at which any of its
//! items was read — for a delete, the read that found the node absent. The writer applies
//! ops in zxid order and skips an item whose path already got a newer zxid. A live write
//! newer than the read is therefore applied after the copy or makes it skip; one older than
//! the read is already in the copied state. Tagging a batch with its oldest read can only
//! make it skip more.
//!
//! Per node within the filters (never `/`, `/zookeeper`, or session ephemerals):
//! - missing on the follower → `create` (data, ACL, mode);
//! - data or ACL different → `setData` / `setACL`;
//! - only on the follower → `delete` (the writer deletes its children first);
//! - unreadable on the leader (`NOAUTH`, or an ACL whose digests are hidden because
//!   statemirror lacks ADMIN) → skipped with one warning per run: copying it would lose
//!   the ACL or open the node to everyone.
//!
//! Leader reads authenticate like the follower session (`zookeeper.follower_auth_file`),
//! so nodes the clients' identity protects are readable and their ACLs visible.

use std::sync::Arc;
use std::time::Duration;

use smallvec::{smallvec, SmallVec};

use super::mirror::{Item, PathFilter, ZkOp};
use super::proto::create_mode;
use super::proto::records::Acl;
use super::tree::{self, Mode, Node, Reading, Session, State, Walk};
use crate::config::{ResolvedZk, Secret, ZooKeeperConfig};
use crate::replication::queue::{MirrorQueue, MirrorView};
use crate::replication::resync::{BoxFuture, ResyncCtx, ResyncError, Walker};

/// Well under `jute.maxbuffer` (1 MiB), the follower's limit for one `multi`.
const MAX_OP_BYTES: usize = 512 * 1024;
/// Copy ops waiting or being applied before the walker waits: bounds memory to a few MiB
/// whatever the tree's size and keeps the writer busy, while keeping each writer batch
/// small (a batch whose first multi fails is applied item by item from there).
const MAX_PENDING_OPS: usize = 4;

pub struct ZkWalker {
    leader: crate::zookeeper::endpoint::ZkServers,
    follower: crate::zookeeper::endpoint::ZkServers,
    auth: Option<Secret>,
    cfg: ZooKeeperConfig,
    filter: PathFilter,
    queue: Arc<MirrorQueue<ZkOp>>,
    /// The follower is read at `map_path` of each leader path (the writer maps the ops).
    identity: crate::nifi::identity_live::SharedIdentity,
}

impl ZkWalker {
    pub fn new(r: &ResolvedZk, cfg: &ZooKeeperConfig, queue: Arc<MirrorQueue<ZkOp>>) -> Self {
        Self {
            leader: r.leader.clone(),
            follower: r.follower.clone().unwrap_or_default(),
            auth: r.follower_auth.clone(),
            cfg: cfg.clone(),
            filter: PathFilter {
                include: cfg.include_paths.clone(),
                exclude: cfg.exclude_paths.clone(),
            },
            queue,
            identity: r.identity.clone(),
        }
    }

    async fn run(&self, ctx: &ResyncCtx) -> Result<(), ResyncError> {
        let mut leader = Session::new("leader", self.leader.clone(), self.auth.clone(), &self.cfg);
        let mut follower = Session::new(
            "follower",
            self.follower.clone(),
            self.auth.clone(),
            &self.cfg,
        );
        if ctx.refuse_empty_leader
            && !ctx.force
            && !leader.has_nodes(&self.filter).await?
            && follower.has_nodes(&self.filter).await?
        {
            return Err(ResyncError::Refused(
                "the leader holds no nodes within the filters but the follower does: a resync \
                 would erase the follower, which may be the only copy left. If the leader is \
                 right, run `statemirror resync --force`"
                    .into(),
            ));
        }
        let mut walk = Walk::new(&self.filter);
        let mut plan = Plan::new(ctx.batch_size);
        plan.mirror_ephemeral = self.cfg.mirror_ephemeral;
        let mut len = tree::chunk_len(0, 0);
        let map = self.identity.current();
        loop {
            let chunk = walk.next_chunk(len).map_err(ResyncError::Failed)?;
            if chunk.is_empty() {
                break;
            }
            ctx.pace(chunk.len() as u64).await?;
            let (l, f, orphans) =
                tree::read_pair_mapped(&mut leader, &mut follower, &chunk, &map).await?;
            delete_orphans(&mut follower, &orphans, ctx).await?;
            len = tree::chunk_len(chunk.len(), tree::data_bytes(&l).max(tree::data_bytes(&f)));
            for ((e, l), f) in chunk.iter().zip(&l).zip(&f) {
                if tree::compared(&self.filter, &e.path) {
                    ctx.scanned(1);
                }
                plan.node(&self.filter, &mut walk, &e.path, l, f, ctx);
            }
            for op in std::mem::take(&mut plan.ready) {
                self.push(ctx, op).await?;
            }
        }
        plan.flush();
        for op in std::mem::take(&mut plan.ready) {
            self.push(ctx, op).await?;
        }
        plan.warn_skipped();
        Ok(())
    }

    /// Queues one op once the bulk lane has room (the walker is its only producer).
    async fn push(&self, ctx: &ResyncCtx, op: ZkOp) -> Result<(), ResyncError> {
        loop {
            ctx.check()?;
            let changed = self.queue.changed().notified();
            if self.queue.bulk_pending() < MAX_PENDING_OPS {
                break;
            }
            tokio::select! {
                _ = changed => {}
                _ = ctx.cancelled().cancelled() => return Err(ResyncError::Restart),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        ctx.bulk(&self.queue, op).await
    }
}

impl Walker for ZkWalker {
    fn walk<'a>(&'a self, ctx: &'a ResyncCtx) -> BoxFuture<'a, Result<(), ResyncError>> {
        Box::pin(self.run(ctx))
    }
}

/// Deletes follower state left under ids the identity map no longer maps to (e.g. region
/// 1's ids mirrored before the map existed), straight on the follower: no live write can
/// target such a path, since no leader id maps to it. Children first (NiFi's component
/// nodes have none; a few levels are handled).
async fn delete_orphans(
    follower: &mut Session,
    orphans: &[String],
    ctx: &ResyncCtx,
) -> Result<(), ResyncError> {
    use super::jute::Record;
    use super::proto::records::{DeleteRequest, GetChildrenRequest, GetChildrenResponse};
    for root in orphans {
        let mut order = vec![root.clone()];
        let mut i = 0;
        while i < order.len() && order.len() < 10_000 {
            let call = crate::zookeeper::client::Call::new(
                super::proto::op::GET_CHILDREN,
                &GetChildrenRequest {
                    path: order[i].clone(),
                    watch: false,
                },
            );
            let replies = follower.write(&[call]).await.map_err(ResyncError::Failed)?;
            if let Some(r) = replies.first().filter(|r| r.err == 0) {
                if let Ok(kids) = GetChildrenResponse::from_bytes(&r.body) {
                    let parent = order[i].clone();
                    order.extend(kids.children.iter().map(|c| tree::child_path(&parent, c)));
                }
            }
            i += 1;
        }
        let calls: Vec<_> = order
            .iter()
            .rev()
            .map(|p| {
                crate::zookeeper::client::Call::new(
                    super::proto::op::DELETE,
                    &DeleteRequest {
                        path: p.clone(),
                        version: -1,
                    },
                )
            })
            .collect();
        follower.write(&calls).await.map_err(ResyncError::Failed)?;
        tracing::info!(path = %root, "resync: deleted follower state under an id the identity map does not map to");
        ctx.deleted(1);
    }
    Ok(())
}

/// Turns readings into ops: multi-able items grouped (up to `batch_size` items and
/// [`MAX_OP_BYTES`]), the rest (`setACL`, container and TTL creates, which have no multi
/// form here) one per op so the writer still pipelines them.
struct Plan {
    max_items: usize,
    items: SmallVec<[Item; 1]>,
    zxid: i64,
    bytes: usize,
    ready: Vec<ZkOp>,
    skipped: u64,
    first_skipped: Option<String>,
    /// Client ephemerals are mirrored (as statemirror's own, by the ephemeral tracker).
    mirror_ephemeral: bool,
}

impl Plan {
    fn new(batch_size: usize) -> Self {
        Self {
            max_items: batch_size.max(1),
            items: SmallVec::new(),
            zxid: i64::MAX,
            bytes: 0,
            ready: Vec::new(),
            skipped: 0,
            first_skipped: None,
            mirror_ephemeral: false,
        }
    }

    fn node(
        &mut self,
        filter: &PathFilter,
        walk: &mut Walk<'_>,
        path: &str,
        l: &Reading,
        f: &Reading,
        ctx: &ResyncCtx,
    ) {
        let compared = tree::compared(filter, path);
        if l.persistent().is_none() && matches!(l.state, State::Node(_)) {
            // A client session's ephemeral (no children). Unless ephemerals are mirrored, the
            // follower has nothing there: a persistent node it has (an older statemirror
            // turned writes to the ephemeral into one) would outlive the session, e.g. as the
            // lowest holder of a lock after a switch to the follower.
            if !self.mirror_ephemeral && compared && f.persistent().is_some() {
                self.add(l.zxid, smallvec![Item::Delete { path: path.into() }], false);
                ctx.deleted(1);
            }
            return;
        }
        match (&l.state, &f.state) {
            // Nothing below can be listed (or copied without opening it up, or deleted
            // with certainty): skip the subtree.
            (State::NoAuth, _) | (_, State::NoAuth) => {
                if compared {
                    self.skip(path);
                }
            }
            (State::Node(ln), fs) => {
                let lmode = tree::mode(ln.stat.ephemeral_owner);
                if !compared {
                    walk.descend(path, l, f);
                    return;
                }
                match fs {
                    State::Node(fnode)
                        if tree::mode(fnode.stat.ephemeral_owner) != Mode::Ephemeral =>
                    {
                        walk.descend(path, l, f);
                        self.update(path, ln, fnode, l.zxid, ctx);
                    }
                    _ => {
                        // Missing, or statemirror's own ephemeral where the leader now has a
                        // persistent node: (re)create it.
                        if tree::acl_masked(&ln.acl) {
                            self.skip(path);
                            return;
                        }
                        walk.descend(path, l, f);
                        let mut items: SmallVec<[Item; 1]> = SmallVec::new();
                        if matches!(fs, State::Node(_)) {
                            items.push(Item::Delete { path: path.into() });
                        }
                        items.push(create(path, ln, lmode));
                        let alone = lmode != Mode::Persistent;
                        self.add(l.zxid, items, alone);
                        ctx.copied(1);
                    }
                }
            }
            (State::Missing, State::Node(fnode)) => {
                if tree::mode(fnode.stat.ephemeral_owner) == Mode::Ephemeral {
                    return; // statemirror's own, managed by the ephemeral tracker
                }
                if compared {
                    // Absent on the leader at `l.zxid`: the delete carries that read's zxid.
                    self.add(l.zxid, smallvec![Item::Delete { path: path.into() }], false);
                    ctx.deleted(1);
                } else {
                    walk.descend(path, l, f);
                }
            }
            (State::Missing, State::Missing) => {}
        }
    }

    /// Both sides have the node: copy what differs.
    fn update(&mut self, path: &str, l: &Node, f: &Node, zxid: i64, ctx: &ResyncCtx) {
        let data = l.data != f.data;
        let acl = !tree::same_acl(&l.acl, &f.acl);
        if data {
            let item = Item::SetData {
                path: path.into(),
                data: l.data.clone(),
            };
            self.add(zxid, smallvec![item], false);
        }
        if acl {
            if tree::acl_masked(&l.acl) {
                self.skip(path);
            } else {
                let item = Item::SetAcl {
                    path: path.into(),
                    acl: l.acl.clone(),
                };
                self.add(zxid, smallvec![item], true);
            }
        }
        if data || acl {
            ctx.copied(1);
        }
    }

    fn add(&mut self, zxid: i64, items: SmallVec<[Item; 1]>, alone: bool) {
        let bytes: usize = items.iter().map(encoded_len).sum();
        if alone {
            self.flush();
            self.ready.push(ZkOp { zxid, items });
            return;
        }
        if !self.items.is_empty()
            && (self.items.len() + items.len() > self.max_items
                || self.bytes + bytes > MAX_OP_BYTES)
        {
            self.flush();
        }
        self.zxid = self.zxid.min(zxid);
        self.bytes += bytes;
        self.items.extend(items);
    }

    fn flush(&mut self) {
        if !self.items.is_empty() {
            self.ready.push(ZkOp {
                zxid: self.zxid,
                items: std::mem::take(&mut self.items),
            });
        }
        self.zxid = i64::MAX;
        self.bytes = 0;
    }

    fn skip(&mut self, path: &str) {
        self.skipped += 1;
        if self.first_skipped.is_none() {
            self.first_skipped = Some(path.to_string());
        }
    }

    fn warn_skipped(&self) {
        if let Some(first) = &self.first_skipped {
            tracing::warn!(
                nodes = self.skipped,
                first = %first,
                "resync skipped nodes statemirror may not read, or whose ACL it may not see \
                 (digest hashes hidden without ADMIN) on the leader, or may not read on the \
                 follower; see zookeeper.follower_auth_file"
            );
        }
    }
}

fn create(path: &str, n: &Node, mode: Mode) -> Item {
    let (mode, ttl) = match mode {
        Mode::Container => (create_mode::CONTAINER, 0),
        Mode::Ttl(ttl) => (create_mode::PERSISTENT_WITH_TTL, ttl),
        _ => (create_mode::PERSISTENT, 0),
    };
    Item::Create {
        path: path.into(),
        data: n.data.clone(),
        acl: n.acl.clone(),
        mode,
        ttl,
    }
}

/// An item's size inside a `multi` request (header, path, data, ACL, flags), roughly.
fn encoded_len(it: &Item) -> usize {
    let acl = |a: &[Acl]| -> usize {
        4 + a
            .iter()
            .map(|x| 12 + x.id.scheme.len() + x.id.id.len())
            .sum::<usize>()
    };
    let head = 9 + 4 + it.path().len();
    head + match it {
        Item::Create { data, acl: a, .. } => 4 + data.as_ref().map_or(0, |d| d.len()) + acl(a) + 12,
        Item::SetData { data, .. } => 4 + data.as_ref().map_or(0, |d| d.len()) + 4,
        Item::SetAcl { acl: a, .. } => acl(a) + 4,
        Item::Delete { .. } => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn set(path: &str, n: usize) -> SmallVec<[Item; 1]> {
        smallvec![Item::SetData {
            path: path.into(),
            data: Some(Bytes::from(vec![0u8; n])),
        }]
    }

    #[test]
    fn ops_carry_their_oldest_zxid_and_stay_under_the_limits() {
        let mut p = Plan::new(3);
        p.add(10, set("/a", 1), false);
        p.add(7, set("/b", 1), false);
        p.add(12, set("/c", 1), false);
        p.add(13, set("/d", 1), false); // a 4th item: new op
        p.add(14, set("/big", MAX_OP_BYTES), false); // too big to join: new op
        p.add(
            15,
            smallvec![Item::SetAcl {
                path: "/e".into(),
                acl: vec![]
            }],
            true,
        );
        p.flush();
        let shape: Vec<(i64, usize)> = p.ready.iter().map(|o| (o.zxid, o.items.len())).collect();
        assert_eq!(shape, [(7, 3), (13, 1), (14, 1), (15, 1)]);
    }
}
