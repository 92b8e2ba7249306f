//! ZooKeeper: reading every znode within `zookeeper.include_paths` / `exclude_paths`
//! (never `/`, `/zookeeper` or statemirror's own `/statemirror`) breadth-first through
//! [`crate::zookeeper::tree`], writing them back on a [`ZkConn`] session, and comparing a
//! destination tree with a backup.
//!
//! What is exact and what is not:
//! - data bytes and ACLs of persistent nodes: exact (the reading session authenticates with
//!   `zookeeper.follower_auth_file` like resync, so protected nodes are readable);
//! - session ephemerals: **not backed up** (they belong to client sessions that will not
//!   exist after a restore; NiFi's election nodes are recreated by NiFi). Counted in the
//!   header's `skipped.ephemeral`;
//! - nodes this session may not read (`NOAUTH`), or whose ACL hides its digests (no ADMIN
//!   permission): not backed up, counted in `skipped.unreadable`; nothing below them is read;
//! - sequential nodes are restored under their exact names as plain persistent nodes: the
//!   parent's sequence counter (`cversion`) is not restored, so the next sequential child
//!   created there may get a lower number than before;
//! - container and TTL nodes read as persistent (servers show clients no difference) and
//!   are restored as persistent;
//! - stats (versions, zxids, times) start over;
//! - parents outside the filters that a restored node needs are created with no data and
//!   the open ACL (as NiFi creates them) when missing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;

use super::{AclRecord, Failure, NifiRecord, Znode};
use crate::config::{ResolvedZk, ZooKeeperConfig};
use crate::nifi;
use crate::zookeeper::client::{Call, ZkConn};
use crate::zookeeper::mirror::PathFilter;
use crate::zookeeper::proto::records::{
    Acl, CreateRequest, DeleteRequest, Id, SetAclRequest, SetDataRequest,
};
use crate::zookeeper::proto::{create_mode, err, err_name, op, perms};
use crate::zookeeper::tree::{self, Mode, Node, Session, State, Walk};

/// Requests per pipelined round trip, and bytes.
const CHUNK_CALLS: usize = 256;
const CHUNK_BYTES: usize = 4 << 20;

pub fn filter(cfg: &ZooKeeperConfig) -> PathFilter {
    PathFilter {
        include: cfg.include_paths.clone(),
        exclude: cfg.exclude_paths.clone(),
    }
}

pub fn servers(
    r: &ResolvedZk,
    side: super::Side,
) -> Result<crate::zookeeper::endpoint::ZkServers, Failure> {
    match side {
        super::Side::Leader => Ok(r.leader.clone()),
        super::Side::Follower => r
            .follower
            .clone()
            .ok_or_else(|| Failure::Config("the config has no zookeeper.follower to use".into())),
    }
}

/// A tree as read: persistent nodes within the filters, and what was left out.
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
    pub skipped: BTreeMap<String, u64>,
}

/// Walks the whole allowed tree of one ensemble.
pub async fn walk(
    r: &ResolvedZk,
    cfg: &ZooKeeperConfig,
    side: super::Side,
) -> Result<Tree, Failure> {
    let servers = servers(r, side)?;
    let mut s = Session::new(side.name(), servers, r.follower_auth.clone(), cfg);
    let filter = filter(cfg);
    let mut walk = Walk::new(&filter);
    let mut out = Tree {
        nodes: BTreeMap::new(),
        skipped: BTreeMap::new(),
    };
    let mut len = tree::chunk_len(0, 0);
    loop {
        let chunk = walk.next_chunk(len).map_err(Failure::Unavailable)?;
        if chunk.is_empty() {
            break;
        }
        let paths: Vec<String> = chunk.iter().map(|e| e.path.clone()).collect();
        let read = s
            .read(&paths)
            .await
            .map_err(|e| Failure::Unavailable(format!("zookeeper {e}")))?;
        len = tree::chunk_len(paths.len(), tree::data_bytes(&read));
        for (path, reading) in paths.into_iter().zip(read) {
            walk.descend(&path, &reading, &reading);
            if !tree::compared(&filter, &path) {
                continue;
            }
            let skip = match &reading.state {
                State::Missing => continue,
                State::NoAuth => "unreadable",
                State::Node(n) if tree::mode(n.stat.ephemeral_owner) == Mode::Ephemeral => {
                    "ephemeral"
                }
                State::Node(n) if tree::acl_masked(&n.acl) => "unreadable",
                State::Node(n) => {
                    out.nodes.insert(path, (**n).clone());
                    continue;
                }
            };
            *out.skipped.entry(skip.to_string()).or_default() += 1;
        }
    }
    Ok(out)
}

/// The records of a tree.
pub fn records(t: &Tree) -> Vec<Znode> {
    t.nodes
        .iter()
        .map(|(path, n)| {
            let mode = match tree::mode(n.stat.ephemeral_owner) {
                Mode::Persistent => "persistent".to_string(),
                Mode::Container => "container".to_string(),
                Mode::Ttl(ms) => format!("ttl {ms} ms"),
                Mode::Ephemeral => "ephemeral".to_string(),
            };
            let nifi = component(path).and_then(|id| {
                n.data
                    .as_deref()
                    .and_then(|d| nifi::decode_binary(d, Some(n.stat.version as i64)))
                    .map(|s| NifiRecord::from_state(id, s))
            });
            Znode {
                path: path.clone(),
                data_b64: n.data.as_deref().map(super::b64),
                acl: n
                    .acl
                    .iter()
                    .map(|a| AclRecord {
                        scheme: a.id.scheme.clone(),
                        id: a.id.id.clone(),
                        perms: a.perms,
                    })
                    .collect(),
                mode,
                version: n.stat.version,
                nifi,
            }
        })
        .collect()
}

use crate::nifi::layout::component_of_path as component;

fn acl_of(r: &Znode) -> Vec<Acl> {
    r.acl
        .iter()
        .map(|a| Acl {
            perms: a.perms,
            id: Id {
                scheme: a.scheme.clone(),
                id: a.id.clone(),
            },
        })
        .collect()
}

fn open_acl() -> Vec<Acl> {
    vec![Acl {
        perms: perms::ALL,
        id: Id {
            scheme: "world".into(),
            id: "anyone".into(),
        },
    }]
}

fn depth(path: &str) -> usize {
    path.matches('/').count()
}

/// Every proper ancestor of the records' paths (never `/`): parents a restore needs.
pub fn ancestors(records: &[Znode]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in records {
        let mut p = r.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            out.insert(parent.to_string());
            p = parent;
        }
    }
    out
}

/// What a restore did.
pub struct RestoreCounts {
    pub restored: u64,
    pub deleted: u64,
    pub errors: Vec<String>,
}

/// statemirror's own writing session to `servers`.
pub async fn connect(
    servers: &crate::zookeeper::endpoint::ZkServers,
    r: &ResolvedZk,
    cfg: &ZooKeeperConfig,
) -> Result<ZkConn, Failure> {
    ZkConn::connect(
        servers,
        0,
        Duration::from_millis(cfg.connect_timeout_ms.max(1000)),
        cfg.follower_session_timeout_ms.min(i32::MAX as u64) as i32,
        r.follower_auth.as_ref(),
        cfg.max_frame_bytes,
    )
    .await
    .map_err(|e| Failure::Unavailable(format!("zookeeper {}: {e}", servers.join(","))))
}

/// Sends `calls` in pipelined chunks; each reply's error code, in order.
async fn run(c: &mut ZkConn, calls: Vec<Call>) -> Result<Vec<i32>, String> {
    let mut out = Vec::with_capacity(calls.len());
    let mut chunk: Vec<Call> = Vec::new();
    let mut bytes = 0;
    let mut it = calls.into_iter().peekable();
    while let Some(call) = it.next() {
        bytes += call.body.len();
        chunk.push(call);
        if chunk.len() >= CHUNK_CALLS || bytes >= CHUNK_BYTES || it.peek().is_none() {
            let replies = tokio::time::timeout(Duration::from_secs(60), c.call_many(&chunk))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            out.extend(replies.into_iter().map(|(e, _)| e));
            chunk.clear();
            bytes = 0;
        }
    }
    Ok(out)
}

/// Deletes `extra` (deepest first), creates the missing parents, then creates every record
/// (or, where it exists, sets its data and ACL).
pub async fn write_all(
    c: &mut ZkConn,
    records: &[Znode],
    extra: &[String],
) -> Result<RestoreCounts, String> {
    let mut counts = RestoreCounts {
        restored: 0,
        deleted: 0,
        errors: Vec::new(),
    };
    let mut extra: Vec<&String> = extra.iter().collect();
    extra.sort_by(|a, b| depth(b).cmp(&depth(a)).then(a.cmp(b)));
    let calls = extra
        .iter()
        .map(|p| {
            Call::new(
                op::DELETE,
                &DeleteRequest {
                    path: (*p).clone(),
                    version: -1,
                },
            )
        })
        .collect();
    for (p, e) in extra.iter().zip(run(c, calls).await?) {
        match e {
            err::OK => counts.deleted += 1,
            err::NO_NODE => {}
            e => counts.errors.push(format!("delete {p}: {}", err_name(e))),
        }
    }
    let mut recs: Vec<&Znode> = records.iter().collect();
    recs.sort_by(|a, b| {
        depth(&a.path)
            .cmp(&depth(&b.path))
            .then(a.path.cmp(&b.path))
    });
    let have: BTreeSet<&str> = records.iter().map(|r| r.path.as_str()).collect();
    let mut parents: Vec<String> = ancestors(records)
        .into_iter()
        .filter(|p| !have.contains(p.as_str()))
        .collect();
    parents.sort_by(|a, b| depth(a).cmp(&depth(b)).then(a.cmp(b)));
    let mut calls = Vec::new();
    let mut order: Vec<(usize, Option<&Znode>)> = Vec::new();
    let mut datas = Vec::with_capacity(recs.len());
    for r in &recs {
        datas.push(r.data()?.map(Bytes::from));
    }
    // Parents and records interleaved by depth, so every create finds its parent.
    let mut pi = parents.iter().peekable();
    for (i, r) in recs.iter().enumerate() {
        while let Some(p) = pi.next_if(|p| depth(p) < depth(&r.path)) {
            calls.push(create(p, None, open_acl()));
            order.push((usize::MAX, None));
        }
        calls.push(create(&r.path, datas[i].clone(), acl_of(r)));
        order.push((i, Some(r)));
    }
    for p in pi {
        calls.push(create(p, None, open_acl()));
        order.push((usize::MAX, None));
    }
    let mut existing = Vec::new();
    for ((i, r), e) in order.into_iter().zip(run(c, calls).await?) {
        match (r, e) {
            (None, err::OK | err::NODE_EXISTS) => {}
            (None, e) => counts
                .errors
                .push(format!("create parent: {}", err_name(e))),
            (Some(_), err::OK) => counts.restored += 1,
            (Some(r), err::NODE_EXISTS) => existing.push((i, r)),
            (Some(r), e) => counts
                .errors
                .push(format!("create {}: {}", r.path, err_name(e))),
        }
    }
    // Nodes already there (`--force`): data first, while the old ACL still allows it.
    let mut calls = Vec::new();
    for (i, r) in &existing {
        calls.push(Call::new(
            op::SET_DATA,
            &SetDataRequest {
                path: r.path.clone(),
                data: datas[*i].clone(),
                version: -1,
            },
        ));
        calls.push(Call::new(
            op::SET_ACL,
            &SetAclRequest {
                path: r.path.clone(),
                acl: acl_of(r),
                version: -1,
            },
        ));
    }
    let replies = run(c, calls).await?;
    for ((_, r), e) in existing.iter().zip(replies.chunks(2)) {
        match e {
            [err::OK, err::OK] => counts.restored += 1,
            [a, b] => counts.errors.push(format!(
                "{}: setData {}, setACL {}",
                r.path,
                err_name(*a),
                err_name(*b)
            )),
            _ => counts.errors.push(format!("{}: short reply", r.path)),
        }
    }
    Ok(counts)
}

fn create(path: &str, data: Option<Bytes>, acl: Vec<Acl>) -> Call {
    Call::new(
        op::CREATE,
        &CreateRequest {
            path: path.to_string(),
            data,
            acl,
            flags: create_mode::PERSISTENT,
        },
    )
}

/// Compares a destination tree with the records: `(nodes equal, differences)`. Parents the
/// records need are not extra.
pub fn compare(dest: &Tree, records: &[Znode]) -> Result<(u64, Vec<String>), String> {
    let mut diffs = Vec::new();
    let mut equal = 0u64;
    for r in records {
        let Some(n) = dest.nodes.get(&r.path) else {
            diffs.push(format!("{}: missing", r.path));
            continue;
        };
        let want = r.data()?.unwrap_or_default();
        let got = n.data.as_deref().unwrap_or_default();
        let what: Vec<&str> = [
            (want[..] != got[..]).then_some("data"),
            (!tree::same_acl(&acl_of(r), &n.acl)).then_some("acl"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if what.is_empty() {
            equal += 1;
        } else {
            diffs.push(format!("{}: {} differ(s)", r.path, what.join(", ")));
        }
    }
    let have: BTreeSet<&str> = records.iter().map(|r| r.path.as_str()).collect();
    let parents = ancestors(records);
    for p in dest.nodes.keys() {
        if !have.contains(p.as_str()) && !parents.contains(p) {
            diffs.push(format!("{p}: not in the backup"));
        }
    }
    Ok((equal, diffs))
}

/// Persistent nodes of `dest` that a `--force` restore deletes: not in the backup and not a
/// parent the backup needs.
pub fn extra(dest: &Tree, records: &[Znode]) -> Vec<String> {
    let have: BTreeSet<&str> = records.iter().map(|r| r.path.as_str()).collect();
    let parents = ancestors(records);
    dest.nodes
        .keys()
        .filter(|p| !have.contains(p.as_str()) && !parents.contains(*p))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_and_components() {
        let z = |p: &str| Znode {
            path: p.into(),
            data_b64: None,
            acl: vec![],
            mode: "persistent".into(),
            version: 0,
            nifi: None,
        };
        let a = ancestors(&[z("/nifi/components/c1"), z("/x")]);
        assert_eq!(
            a.into_iter().collect::<Vec<_>>(),
            ["/nifi", "/nifi/components"]
        );
        assert_eq!(component("/nifi/components/c1"), Some("c1"));
        assert_eq!(component("/nifi/components"), None);
    }
}
