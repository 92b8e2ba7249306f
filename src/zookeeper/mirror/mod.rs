//! How a ZooKeeper write reaches the follower ensemble.
//!
//! A write the leader acknowledged (`err == 0`, and for a `multi` every result a success)
//! becomes an op carrying the leader's zxid and the write's full effect: creates with the
//! path the leader returned (so sequential nodes keep the leader's names), data, ACL and
//! mode; deletes; `setData`; `setACL`. Versions become -1 and `check`s are dropped: the leader
//! already decided, the follower only has to end up equal.
//!
//! Order: unlike Redis, ZooKeeper tells the proxy the order it used — the zxid. The writer
//! sorts each batch by zxid and remembers, per path, the zxid it last applied; an op that
//! arrives late (acknowledged on another connection, queued behind a newer write of the same
//! path) is skipped instead of overwriting newer state. The map is trimmed past 200k paths; a
//! path it forgot counts as written at the newest zxid forgotten (the floor), so an older op
//! for it is skipped and flagged rather than applied over a newer write. When a leader
//! server's own zxid goes back (restarted empty, restored, a new ensemble), the session side
//! queues a reset marker ahead of the new history's writes and the map starts afresh there.
//! A `setACL` that finds its node missing on the follower marks it out of sync: nothing is
//! created, so the node is missing until a resync copies it again. A `setData` that finds
//! its node missing creates it with the data (and an open ACL) without flagging. That is the
//! normal way a create acknowledged on one client connection and a `setData` acknowledged
//! on another just after it can reach the writer: acknowledgements are queued as each
//! connection's reply is handled, so the `setData` can land in the batch before the create's
//! (zxids order a batch, not the queue). The `setData` carries the node's whole data, and the
//! create that follows is older than it and skipped; only the create's ACL is lost (NiFi's
//! nodes are open). Flagging it cost a full resync every time it happened under load.
//!
//! Client ephemerals are not mirrored (unless `mirror_ephemeral`), and neither are writes to
//! them: the reply's stat names the node's ephemeral owner, and a `setData`/`setACL` of an
//! ephemeral is dropped (mirrored: it updates the tracked copy, created again as an
//! ephemeral), never turned into a persistent node by a fix-up.
//!
//! Idempotence, so a batch can be applied again after any failure, in a bounded number of
//! round trips whatever the follower held (it may be a region away): the batch goes out as
//! one pipelined round trip; from the first step that fails on, the next round sends every
//! later step in a form whose end state does not depend on the follower's — a create
//! becomes create-or-`setData` + `setACL`, missing parents are created first (empty, open
//! ACL), a `setData` creates a missing node, deleting a missing node is fine, `setACL` of a
//! missing node is skipped. A session runs its requests in order, so a later step on the
//! same path still lands after an earlier one's fix-up. Deleting a node that still has
//! children on the follower lists them (one round trip per level) and deletes them first
//! (the leader had none), except those a newer write was applied to (and their ancestors,
//! the node itself included): the leader created them again after the delete. A multi is applied as a multi; if it fails on the follower its
//! items are applied separately (the follower then passes through the intermediate
//! states; the end state is the leader's). After a lost connection the follower session is
//! resumed, not replaced ([`ZkConn::connect_session`]), so nothing the old connection sent
//! can land after the retry.
//!
//! ACLs are copied as the client sent them. `digest:` ACLs mean the same on both sides;
//! `auth:` ACLs bind to the session's identity, which is statemirror's follower session:
//! configure `zookeeper.follower_auth_file` with the same `user:password` the clients use,
//! or the follower refuses them (`INVALIDACL`, counted, follower marked out of sync).

mod applied;
mod applier;
mod robust;

pub use applied::{Applied, Fate};
pub use applier::ZkApplier;

use bytes::Bytes;
use smallvec::SmallVec;

use super::client::Call;
use super::proto::multi::MultiOp;
use super::proto::records::{
    Acl, CreateRequest, CreateTtlRequest, DeleteRequest, SetAclRequest, SetDataRequest,
};
use super::proto::{create_mode, op};
use crate::replication::queue::{heap_alloc, MirrorOp};
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Create {
        path: String,
        data: Option<Bytes>,
        acl: Vec<Acl>,
        /// `create_mode::PERSISTENT`, `CONTAINER` or `PERSISTENT_WITH_TTL`.
        mode: i32,
        ttl: i64,
    },
    Delete {
        path: String,
    },
    SetData {
        path: String,
        data: Option<Bytes>,
    },
    SetAcl {
        path: String,
        acl: Vec<Acl>,
    },
}

impl Item {
    pub fn path(&self) -> &str {
        match self {
            Item::Create { path, .. }
            | Item::Delete { path }
            | Item::SetData { path, .. }
            | Item::SetAcl { path, .. } => path,
        }
    }

    /// The item as the follower gets it: its path through the state identity map.
    pub fn mapped(&self, map: &crate::nifi::identity::IdentityMap) -> Self {
        let mut it = self.clone();
        if let std::borrow::Cow::Owned(p) = map.map_path(self.path()) {
            match &mut it {
                Item::Create { path, .. }
                | Item::Delete { path }
                | Item::SetData { path, .. }
                | Item::SetAcl { path, .. } => *path = p,
            }
        }
        it
    }

    /// Copies the node data out of the client's frame. Decoded requests slice the frame
    /// (zero-copy), and the frame shares the connection's read buffer: a queued 200-byte
    /// `setData` would otherwise pin that whole buffer.
    pub fn into_owned(mut self) -> Self {
        if let Item::Create { data, .. } | Item::SetData { data, .. } = &mut self {
            if let Some(d) = data.as_mut() {
                *d = Bytes::copy_from_slice(d);
            }
        }
        self
    }

    /// Heap bytes this item holds (the op's own size is counted by the queue).
    fn heap_bytes(&self) -> usize {
        let data = match self {
            Item::Create { data, .. } | Item::SetData { data, .. } => {
                data.as_ref().map_or(0, |d| heap_alloc(d.len()))
            }
            _ => 0,
        };
        let acl = match self {
            Item::Create { acl, .. } | Item::SetAcl { acl, .. } => {
                heap_alloc(acl.capacity() * std::mem::size_of::<Acl>())
                    + acl
                        .iter()
                        .map(|a| {
                            heap_alloc(a.id.scheme.capacity()) + heap_alloc(a.id.id.capacity())
                        })
                        .sum::<usize>()
            }
            _ => 0,
        };
        heap_alloc(self.path().len()) + data + acl
    }

    /// The request that applies this item unconditionally.
    fn call(&self) -> Call {
        match self {
            Item::Create {
                path,
                data,
                acl,
                mode,
                ttl,
            } if *mode == create_mode::PERSISTENT_WITH_TTL => Call::new(
                op::CREATE_TTL,
                &CreateTtlRequest {
                    path: path.clone(),
                    data: data.clone(),
                    acl: acl.clone(),
                    flags: *mode,
                    ttl: *ttl,
                },
            ),
            Item::Create {
                path,
                data,
                acl,
                mode,
                ..
            } => Call::new(
                if *mode == create_mode::CONTAINER {
                    op::CREATE_CONTAINER
                } else {
                    op::CREATE
                },
                &CreateRequest {
                    path: path.clone(),
                    data: data.clone(),
                    acl: acl.clone(),
                    flags: *mode,
                },
            ),
            Item::Delete { path } => Call::new(
                op::DELETE,
                &DeleteRequest {
                    path: path.clone(),
                    version: -1,
                },
            ),
            Item::SetData { path, data } => Call::new(
                op::SET_DATA,
                &SetDataRequest {
                    path: path.clone(),
                    data: data.clone(),
                    version: -1,
                },
            ),
            Item::SetAcl { path, acl } => Call::new(
                op::SET_ACL,
                &SetAclRequest {
                    path: path.clone(),
                    acl: acl.clone(),
                    version: -1,
                },
            ),
        }
    }

    fn multi_op(&self) -> Option<MultiOp> {
        Some(match self {
            Item::Create {
                path,
                data,
                acl,
                mode,
                ..
            } if *mode != create_mode::PERSISTENT_WITH_TTL => MultiOp::Create(CreateRequest {
                path: path.clone(),
                data: data.clone(),
                acl: acl.clone(),
                flags: *mode,
            }),
            Item::Delete { path } => MultiOp::Delete(DeleteRequest {
                path: path.clone(),
                version: -1,
            }),
            Item::SetData { path, data } => MultiOp::SetData(SetDataRequest {
                path: path.clone(),
                data: data.clone(),
                version: -1,
            }),
            _ => return None,
        })
    }
}

/// One acknowledged write (or multi) with the zxid the leader gave it.
#[derive(Debug, Clone)]
pub struct ZkOp {
    pub zxid: i64,
    pub items: SmallVec<[Item; 1]>,
}

impl ZkOp {
    /// The marker queued when the leader's zxids went back (a new history, see
    /// `ZkShared::leader_zxid`): ops after it are compared with each other only.
    pub fn history_reset() -> Self {
        ZkOp {
            zxid: i64::MIN,
            items: SmallVec::new(),
        }
    }

    pub fn is_history_reset(&self) -> bool {
        self.zxid == i64::MIN && self.items.is_empty()
    }
}

impl MirrorOp for ZkOp {
    type Key = String;
    fn cost_bytes(&self) -> usize {
        let spilled = if self.items.spilled() {
            heap_alloc(self.items.capacity() * std::mem::size_of::<Item>())
        } else {
            0
        };
        spilled + self.items.iter().map(Item::heap_bytes).sum::<usize>()
    }
    fn coalesce_key(&self) -> Option<String> {
        None // every op is a point-in-time effect
    }
}

/// Which paths are mirrored.
#[derive(Debug, Clone)]
pub struct PathFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl PathFilter {
    pub fn allows(&self, path: &str) -> bool {
        let under = |prefix: &String| {
            prefix == "/"
                || path == prefix
                || (path.starts_with(prefix.as_str())
                    && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
        };
        // ZooKeeper's own tree, and statemirror's (its generation marker), are never
        // mirrored, resynced or compared.
        let own = |root: &str| {
            path == root
                || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
        };
        let zk = own("/zookeeper") || own(super::generation::ROOT);
        !zk && self.include.iter().any(under) && !self.exclude.iter().any(under)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A trim keeps a floor: a path it forgot counts as written at the floor, so an older
    /// copy of it is skipped (and flagged) rather than applied over a newer write.
    #[test]
    fn a_trim_keeps_a_floor() {
        let mut a = Applied::default();
        for (i, p) in ["/a", "/b", "/c", "/d"].iter().enumerate() {
            a.record(p, 10 * (i as i64 + 1)); // 10, 20, 30, 40
        }
        a.trim(3);
        assert_eq!(a.len(), 2, "the older half is forgotten");
        assert_eq!(
            a.fate("/a", 5),
            Fate::Forgotten,
            "older than what was forgotten"
        );
        assert_eq!(a.fate("/b", 15), Fate::Forgotten);
        assert_eq!(
            a.fate("/b", 20),
            Fate::Apply,
            "at the floor or newer: applied"
        );
        assert_eq!(a.fate("/new", 25), Fate::Apply);
        assert_eq!(a.fate("/c", 29), Fate::Superseded);
        assert_eq!(a.fate("/c", 30), Fate::Apply);
        a.reset();
        assert_eq!(
            a.fate("/a", 1),
            Fate::Apply,
            "a new history starts from nothing"
        );
        assert_eq!(a.fate("/c", 1), Fate::Apply);
    }

    #[test]
    fn filter_never_mirrors_zookeeper_and_honours_prefixes() {
        let f = PathFilter {
            include: vec!["/".into()],
            exclude: vec!["/tmp".into()],
        };
        assert!(f.allows("/nifi/components/x"));
        assert!(!f.allows("/zookeeper/config"));
        assert!(!f.allows("/statemirror/generation") && !f.allows("/statemirror"));
        assert!(f.allows("/statemirrors"));
        assert!(!f.allows("/zookeeper"));
        assert!(!f.allows("/tmp/a"));
        assert!(f.allows("/tmpfoo"));
        let f = PathFilter {
            include: vec!["/nifi".into()],
            exclude: vec![],
        };
        assert!(f.allows("/nifi") && f.allows("/nifi/leaders/Primary Node"));
        assert!(!f.allows("/nifix") && !f.allows("/other"));
    }
}
