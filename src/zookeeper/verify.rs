//! Comparing the leader's and the follower's trees node by node, within the filters resync
//! uses, breadth-first in pipelined chunks ([`super::tree`]). Compared: data bytes and ACLs
//! of persistent nodes; not compared: stats (versions legitimately differ, since mirroring
//! writes with version -1) and session ephemerals on either side. Nodes named
//! `…/components/<id>` are decoded as NiFi state, and the report names the entries that
//! differ.

use std::time::Instant;

use super::mirror::PathFilter;
use super::tree::{self, Node, Reading, Session, State, Walk};
use crate::config::{ResolvedZk, Secret, ZooKeeperConfig};
use crate::nifi;
use crate::replication::resync::{unix_now, BoxFuture};
use crate::replication::verify::{DiffKind, Difference, Verifier, VerifyReport};

pub struct ZkVerifier {
    leader: crate::zookeeper::endpoint::ZkServers,
    follower: crate::zookeeper::endpoint::ZkServers,
    auth: Option<Secret>,
    cfg: ZooKeeperConfig,
    filter: PathFilter,
    /// Leader path K is compared with the follower's `map_path(K)`.
    identity: crate::nifi::identity_live::SharedIdentity,
}

impl ZkVerifier {
    /// `None` without a follower.
    pub fn new(r: &ResolvedZk, cfg: &ZooKeeperConfig) -> Option<Self> {
        Some(Self {
            leader: r.leader.clone(),
            follower: r.follower.clone()?,
            auth: r.follower_auth.clone(),
            cfg: cfg.clone(),
            filter: PathFilter {
                include: cfg.include_paths.clone(),
                exclude: cfg.exclude_paths.clone(),
            },
            identity: r.identity.clone(),
        })
    }

    async fn run(&self, max: usize) -> Result<VerifyReport, String> {
        let t0 = Instant::now();
        let mut rep = VerifyReport::new("zookeeper");
        let mut leader = Session::new("leader", self.leader.clone(), self.auth.clone(), &self.cfg);
        let mut follower = Session::new(
            "follower",
            self.follower.clone(),
            self.auth.clone(),
            &self.cfg,
        );
        let mut walk = Walk::new(&self.filter);
        let mut len = tree::chunk_len(0, 0);
        let map = self.identity.current();
        loop {
            let chunk = walk.next_chunk(len)?;
            if chunk.is_empty() {
                break;
            }
            let (l, f, orphans) =
                tree::read_pair_mapped(&mut leader, &mut follower, &chunk, &map).await?;
            // State left under an id no leader component maps to (any more).
            for path in orphans {
                rep.add(
                    Difference {
                        key: path,
                        db: None,
                        kind: DiffKind::ExtraOnFollower,
                        detail: Some("under an id the identity map does not map to".into()),
                        nifi: None,
                    },
                    max,
                );
            }
            len = tree::chunk_len(chunk.len(), tree::data_bytes(&l).max(tree::data_bytes(&f)));
            for ((e, l), f) in chunk.iter().zip(&l).zip(&f) {
                // Subtrees only one side has are walked too: every node in them counts.
                walk.descend(&e.path, l, f);
                if tree::compared(&self.filter, &e.path) {
                    compare(&mut rep, &e.path, l, f, max);
                }
            }
        }
        rep.duration_seconds = t0.elapsed().as_secs_f64();
        rep.finished_unix = unix_now();
        Ok(rep)
    }
}

fn compare(rep: &mut VerifyReport, path: &str, l: &Reading, f: &Reading, max: usize) {
    if matches!(l.state, State::NoAuth) || matches!(f.state, State::NoAuth) {
        rep.unreadable += 1;
        return;
    }
    let (kind, detail) = match (l.persistent(), f.persistent()) {
        (None, None) => return,
        (Some(_), None) => (DiffKind::MissingOnFollower, None),
        (None, Some(_)) => (DiffKind::ExtraOnFollower, None),
        (Some(a), Some(b)) => {
            let what: Vec<&str> = [
                (a.data != b.data).then_some("data"),
                (!tree::same_acl(&a.acl, &b.acl)).then_some("acl"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if what.is_empty() {
                rep.equal += 1;
                return;
            }
            (DiffKind::Different, Some(what.join(", ")))
        }
    };
    let data_differs = detail.as_deref() != Some("acl");
    let nifi = component(path)
        .filter(|_| data_differs)
        .and_then(|id| nifi_diff(id, l.persistent(), f.persistent()));
    rep.add(
        Difference {
            key: path.to_string(),
            db: None,
            kind,
            detail,
            nifi,
        },
        max,
    );
}

use crate::nifi::layout::component_of_path as component;

/// Versions are not compared: the follower's data version counts the mirror's writes,
/// not NiFi's.
fn nifi_diff(id: &str, l: Option<&Node>, f: Option<&Node>) -> Option<nifi::NifiDiff> {
    let decode = |n: Option<&Node>| {
        n.and_then(|n| n.data.as_deref())
            .and_then(|d| nifi::decode_binary(d, None))
    };
    let (ls, fs) = (decode(l), decode(f));
    if ls.is_none() && fs.is_none() {
        return None; // not NiFi's format after all
    }
    Some(nifi::diff(id, ls.as_ref(), fs.as_ref()))
}

impl Verifier for ZkVerifier {
    fn protocol(&self) -> &'static str {
        "zookeeper"
    }
    fn verify(&self, max: usize) -> BoxFuture<'_, Result<VerifyReport, String>> {
        Box::pin(self.run(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zookeeper::proto::records::Stat;
    use bytes::Bytes;

    fn node(data: &[u8]) -> Reading {
        Reading {
            state: State::Node(Box::new(Node {
                data: Some(Bytes::copy_from_slice(data)),
                stat: Stat::default(),
                acl: vec![],
                children: vec![],
            })),
            zxid: 1,
        }
    }

    #[test]
    fn names_the_nifi_component_and_entry() {
        assert_eq!(component("/nifi/components/abc"), Some("abc"));
        assert_eq!(component("/components/abc"), Some("abc"));
        assert_eq!(component("/nifi/components"), None);
        assert_eq!(component("/nifi/other/abc"), None);
        let l = nifi::encode_binary(&[("k", "1"), ("same", "s")]);
        let f = nifi::encode_binary(&[("k", "2"), ("same", "s")]);
        let mut rep = VerifyReport::new("zookeeper");
        compare(&mut rep, "/nifi/components/c1", &node(&l), &node(&f), 10);
        compare(&mut rep, "/plain", &node(b"x"), &node(b"x"), 10);
        let missing = Reading {
            state: State::Missing,
            zxid: 1,
        };
        compare(&mut rep, "/gone", &missing, &node(b"x"), 10);
        assert_eq!((rep.equal, rep.different, rep.extra_on_follower), (1, 1, 1));
        let d = &rep.differences[0];
        assert_eq!(d.detail.as_deref(), Some("data"));
        let n = d.nifi.as_ref().unwrap();
        assert_eq!((n.component.as_str(), n.version), ("c1", None));
        assert_eq!(n.entries.len(), 1);
        assert_eq!(n.entries[0].entry, "k");
        assert_eq!(n.entries[0].leader.as_deref(), Some("1"));
        assert_eq!(n.entries[0].follower.as_deref(), Some("2"));
    }
}
