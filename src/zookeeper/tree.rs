//! Reading znodes for resync and verify, through statemirror's own sessions.
//!
//! A [`Session`] reads many paths in two pipelined round trips (`getData` + `getACL` of
//! each, then `getChildren` of those that have children) — in one on the follower, which may
//! be a region away (`getChildren` of every path goes along) — and tags each result with the
//! oldest reply header zxid among its reads: the point in the ensemble's history the read
//! saw. Servers apply no write while a read is being processed, so the state read is the
//! state at that zxid; resync orders its copies against live writes with it
//! (`replication::resync`). A [`Walk`] is the breadth-first order over the include
//! prefixes: parents are read (and copied) before their children; below a node one side
//! lacks, that side is not read at all.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use super::client::{Call, ClientError, Reply, ZkConn};
use super::jute::Record;
use super::mirror::PathFilter;
use super::proto::records::{
    Acl, GetAclRequest, GetAclResponse, GetChildrenRequest, GetChildrenResponse, GetDataRequest,
    GetDataResponse, Stat, SyncRequest,
};
use super::proto::{err, err_name, op};
use crate::config::{Secret, ZooKeeperConfig};
use crate::nifi::identity::IdentityMap;

/// A znode as read: data, stat, ACL and child names.
#[derive(Debug, Clone)]
pub struct Node {
    pub data: Option<Bytes>,
    pub stat: Stat,
    pub acl: Vec<Acl>,
    pub children: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum State {
    Node(Box<Node>),
    /// `NONODE`: absent when read (at the reading's zxid).
    Missing,
    /// `NOAUTH`: this session may not read it.
    NoAuth,
}

/// One path's read and the oldest reply zxid among its requests.
#[derive(Debug, Clone)]
pub struct Reading {
    pub state: State,
    pub zxid: i64,
}

impl Reading {
    /// The node unless it is absent, unreadable or a session's ephemeral.
    pub fn persistent(&self) -> Option<&Node> {
        match &self.state {
            State::Node(n) if mode(n.stat.ephemeral_owner) != Mode::Ephemeral => Some(n),
            _ => None,
        }
    }

    pub fn children(&self) -> &[String] {
        match &self.state {
            State::Node(n) => &n.children,
            _ => &[],
        }
    }
}

/// What a node's `ephemeralOwner` says about it.
///
/// Servers since 3.5 show clients 0 for container and TTL nodes (`DataNode.copyStat`), so
/// in practice those read as `Persistent`; the other cases are decoded for servers that do
/// expose the raw owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Persistent,
    Container,
    /// With its TTL in ms.
    Ttl(i64),
    Ephemeral,
}

pub fn mode(owner: i64) -> Mode {
    match owner {
        0 => Mode::Persistent,
        i64::MIN => Mode::Container,
        o if (o as u64) >> 56 == 0xFF => Mode::Ttl(o & 0x00FF_FFFF_FFFF_FFFF),
        _ => Mode::Ephemeral,
    }
}

/// A `getACL` answer from a session without ADMIN on the node shows `digest` ids as
/// `user:x` (the hash hidden): such an ACL cannot be copied.
pub fn acl_masked(acl: &[Acl]) -> bool {
    acl.iter()
        .any(|a| a.id.scheme == "digest" && a.id.id.ends_with(":x"))
}

/// `acl` as a session without ADMIN sees it, sorted (for comparing a masked ACL).
pub fn masked_acl(acl: &[Acl]) -> Vec<(String, String, i32)> {
    let mut v: Vec<_> = acl
        .iter()
        .map(|a| {
            let id = match (a.id.scheme.as_str(), a.id.id.split_once(':')) {
                ("digest", Some((user, _))) => format!("{user}:x"),
                _ => a.id.id.clone(),
            };
            (a.id.scheme.clone(), id, a.perms)
        })
        .collect();
    v.sort();
    v
}

/// Both ACLs mean the same: equal as sets, or (when either side's hashes are hidden) equal
/// as far as can be seen.
pub fn same_acl(a: &[Acl], b: &[Acl]) -> bool {
    if acl_masked(a) || acl_masked(b) {
        return masked_acl(a) == masked_acl(b);
    }
    let key = |acl: &[Acl]| {
        let mut v: Vec<_> = acl
            .iter()
            .map(|x| (x.id.scheme.clone(), x.id.id.clone(), x.perms))
            .collect();
        v.sort();
        v
    };
    key(a) == key(b)
}

/// statemirror's own session on one ensemble, reopened when it breaks.
pub struct Session {
    pub role: &'static str,
    servers: crate::zookeeper::endpoint::ZkServers,
    auth: Option<Secret>,
    connect_timeout: Duration,
    session_timeout_ms: i32,
    io_timeout: Duration,
    max_frame: usize,
    conn: Option<ZkConn>,
    next_server: usize,
    /// List every path's children in the same round trip as its data: one round trip per
    /// chunk instead of two, for the far side; the near side saves the leaf listings.
    eager_children: bool,
}

impl Session {
    pub fn new(
        role: &'static str,
        servers: crate::zookeeper::endpoint::ZkServers,
        auth: Option<Secret>,
        cfg: &ZooKeeperConfig,
    ) -> Self {
        let session_timeout_ms = cfg.follower_session_timeout_ms.min(i32::MAX as u64) as i32;
        Self {
            role,
            servers,
            auth,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            session_timeout_ms,
            io_timeout: Duration::from_millis(cfg.follower_session_timeout_ms.clamp(5_000, 60_000)),
            max_frame: cfg.max_frame_bytes,
            conn: None,
            next_server: 0,
            eager_children: role == "follower",
        }
    }

    /// Sends `calls` pipelined; a broken session is replaced and the calls (reads only) sent
    /// once more.
    async fn calls(&mut self, calls: &[Call]) -> Result<Vec<Reply>, String> {
        let mut last = String::new();
        for _ in 0..2 {
            match self.try_calls(calls).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.conn = None;
                    last = e;
                }
            }
        }
        Err(format!("{}: {last}", self.role))
    }

    async fn try_calls(&mut self, calls: &[Call]) -> Result<Vec<Reply>, String> {
        if let Some(c) = self.conn.as_mut() {
            if c.ping_if_idle().await.is_err() {
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            let c = ZkConn::connect(
                &self.servers,
                self.next_server,
                self.connect_timeout,
                self.session_timeout_ms,
                self.auth.as_ref(),
                self.max_frame,
            )
            .await
            .map_err(|e| e.to_string())?;
            self.next_server += 1;
            self.conn = Some(c);
        }
        let conn = self.conn.as_mut().ok_or("no session")?;
        match tokio::time::timeout(self.io_timeout, conn.call_many_z(calls)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(ClientError::Timeout.to_string()),
        }
    }

    /// `sync`: this session's reads that follow see every write the ensemble committed
    /// before it (a member that lags catches up first).
    /// Returns the reply's zxid: where the ensemble's history stands (monotonic across
    /// members, as the member caught up first).
    pub async fn sync(&mut self) -> Result<i64, String> {
        let c = Call::new(op::SYNC, &SyncRequest { path: "/".into() });
        let r = self.calls(&[c]).await?;
        match r.first() {
            Some(x) if x.err == err::OK => Ok(x.zxid),
            Some(x) => Err(format!("{}: sync: {}", self.role, err_name(x.err))),
            None => Err(format!("{}: no reply to sync", self.role)),
        }
    }

    /// Sends writes once (never resent: a conditional write that ran would fail the second
    /// time, and the caller decides what that means).
    pub async fn write(&mut self, calls: &[Call]) -> Result<Vec<Reply>, String> {
        let r = self.try_calls(calls).await;
        if r.is_err() {
            self.conn = None;
        }
        r.map_err(|e| format!("{}: {e}", self.role))
    }

    /// Reads every path: `getData` + `getACL` of all in one round trip, then `getChildren`
    /// of those whose stat shows children in a second (most nodes are leaves).
    pub async fn read(&mut self, paths: &[String]) -> Result<Vec<Reading>, String> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let per = if self.eager_children { 3 } else { 2 };
        let mut calls = Vec::with_capacity(paths.len() * per);
        for p in paths {
            let get = GetDataRequest {
                path: p.clone(),
                watch: false,
            };
            calls.push(Call::new(op::GET_DATA, &get));
            calls.push(Call::new(op::GET_ACL, &GetAclRequest { path: p.clone() }));
            if self.eager_children {
                let list = GetChildrenRequest {
                    path: p.clone(),
                    watch: false,
                };
                calls.push(Call::new(op::GET_CHILDREN, &list));
            }
        }
        let replies = self.calls(&calls).await?;
        if replies.len() != calls.len() {
            return Err(format!(
                "{}: {} replies for {} requests",
                self.role,
                replies.len(),
                calls.len()
            ));
        }
        let mut out = paths
            .iter()
            .zip(replies.chunks(per))
            .map(|(p, r)| self.reading(p, &r[..2]))
            .collect::<Result<Vec<_>, _>>()?;
        let (parents, replies): (Vec<usize>, Vec<Reply>) = if self.eager_children {
            let lists = replies.chunks(per).filter_map(|r| r.get(2).cloned());
            (0..out.len())
                .zip(lists)
                .filter(|(i, _)| matches!(&out[*i].state, State::Node(_)))
                .unzip()
        } else {
            let parents: Vec<usize> = (0..out.len())
                .filter(|&i| matches!(&out[i].state, State::Node(n) if n.stat.num_children > 0))
                .collect();
            if parents.is_empty() {
                return Ok(out);
            }
            let calls: Vec<Call> = parents
                .iter()
                .map(|&i| {
                    let req = GetChildrenRequest {
                        path: paths[i].clone(),
                        watch: false,
                    };
                    Call::new(op::GET_CHILDREN, &req)
                })
                .collect();
            (parents, self.calls(&calls).await?)
        };
        for (&i, r) in parents.iter().zip(&replies) {
            match r.err {
                err::OK => {
                    let c = GetChildrenResponse::from_bytes(&r.body).map_err(|e| {
                        format!("{}: bad getChildren reply for {}: {e}", self.role, paths[i])
                    })?;
                    if let State::Node(n) = &mut out[i].state {
                        n.children = c.children;
                    }
                }
                // Deleted since: a live write the mirror carries.
                err::NO_NODE => {}
                err::NO_AUTH => out[i].state = State::NoAuth,
                e => {
                    let p = &paths[i];
                    return Err(format!("{}: listing {p}: {}", self.role, err_name(e)));
                }
            }
        }
        Ok(out)
    }

    /// A node from its `getData` and `getACL` replies (children are listed afterwards).
    fn reading(&self, path: &str, r: &[Reply]) -> Result<Reading, String> {
        let [d, a] = r else {
            return Err(format!("{}: short reply for {path}", self.role));
        };
        let zxid = d.zxid.min(a.zxid);
        // Absent at either read: absent then (a node recreated since is a live write).
        if let Some(gone) = r.iter().find(|x| x.err == err::NO_NODE) {
            return Ok(Reading {
                state: State::Missing,
                zxid: gone.zxid,
            });
        }
        if r.iter().any(|x| x.err == err::NO_AUTH) {
            return Ok(Reading {
                state: State::NoAuth,
                zxid,
            });
        }
        if let Some(bad) = r.iter().find(|x| x.err != err::OK) {
            return Err(format!(
                "{}: reading {path}: {}",
                self.role,
                err_name(bad.err)
            ));
        }
        let bad = |what: &str, e: super::jute::JuteError| {
            format!("{}: bad {what} reply for {path}: {e}", self.role)
        };
        let data = GetDataResponse::from_bytes(&d.body).map_err(|e| bad("getData", e))?;
        let acl = GetAclResponse::from_bytes(&a.body).map_err(|e| bad("getACL", e))?;
        Ok(Reading {
            state: State::Node(Box::new(Node {
                data: data.data,
                stat: data.stat,
                acl: acl.acl,
                children: Vec::new(),
            })),
            zxid,
        })
    }

    /// Whether the ensemble holds any node the filter allows (a cheap look at the starts
    /// and their children: excluded prefixes exclude everything below them).
    pub async fn has_nodes(&mut self, filter: &PathFilter) -> Result<bool, String> {
        let starts = starts(filter);
        let read = self.read(&starts).await?;
        for (s, r) in starts.iter().zip(&read) {
            if let State::Node(n) = &r.state {
                if compared(filter, s)
                    || n.children.iter().any(|c| filter.allows(&child_path(s, c)))
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Whether `path` is compared / copied (the root never is: it always exists).
pub fn compared(filter: &PathFilter, path: &str) -> bool {
    path != "/" && filter.allows(path)
}

pub fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Where walks start: each include prefix as a path, without those below another one.
pub fn starts(filter: &PathFilter) -> Vec<String> {
    let mut v: Vec<String> = filter
        .include
        .iter()
        .map(|p| match p.trim_end_matches('/') {
            "" => "/".to_string(),
            t => t.to_string(),
        })
        .collect();
    v.sort();
    v.dedup();
    let under =
        |p: &str, s: &str| s == "/" || p.strip_prefix(s).is_some_and(|r| r.starts_with('/'));
    v.iter()
        .filter(|p| !v.iter().any(|s| s != *p && under(p, s)))
        .cloned()
        .collect()
}

/// Most nodes one walk visits: a tree that keeps growing faster than it is read must not
/// keep a walk going forever.
const MAX_NODES: u64 = 20_000_000;

/// A path to read, and what its parent's reads already say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// The leader's parent was absent at this zxid: so is this node, no need to read it.
    pub leader_gone: Option<i64>,
    /// The follower's parent was absent: so is this node (a fresh follower costs no reads).
    pub follower_gone: bool,
}

/// Breadth-first order over the allowed part of the tree.
pub struct Walk<'f> {
    filter: &'f PathFilter,
    queue: VecDeque<Entry>,
    visited: u64,
}

impl<'f> Walk<'f> {
    pub fn new(filter: &'f PathFilter) -> Self {
        let queue = starts(filter)
            .into_iter()
            .map(|path| Entry {
                path,
                leader_gone: None,
                follower_gone: false,
            })
            .collect();
        Self {
            filter,
            queue,
            visited: 0,
        }
    }

    /// The next entries to read (empty when done).
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<Entry>, String> {
        let n = max.max(1).min(self.queue.len());
        self.visited += n as u64;
        if self.visited > MAX_NODES {
            return Err(format!("more than {MAX_NODES} nodes: walk abandoned"));
        }
        Ok(self.queue.drain(..n).collect())
    }

    /// Queues the allowed children `parent` has on either side.
    pub fn descend(&mut self, parent: &str, l: &Reading, f: &Reading) {
        let names: BTreeSet<&str> = l
            .children()
            .iter()
            .chain(f.children())
            .map(String::as_str)
            .collect();
        let leader_gone = matches!(l.state, State::Missing).then_some(l.zxid);
        let follower_gone = matches!(f.state, State::Missing);
        for name in names {
            let path = child_path(parent, name);
            if self.filter.allows(&path) {
                self.queue.push_back(Entry {
                    path,
                    leader_gone,
                    follower_gone,
                });
            }
        }
    }
}

/// Reads `chunk` on both sides at once, each only where its parent exists.
pub async fn read_pair(
    leader: &mut Session,
    follower: &mut Session,
    chunk: &[Entry],
) -> Result<(Vec<Reading>, Vec<Reading>), String> {
    read_pair_mapped(leader, follower, chunk, &IdentityMap::empty())
        .await
        .map(|(l, f, _)| (l, f))
}

/// [`read_pair`] through the state identity map: the walk is in the leader's names, the
/// follower is read at `map_path` of each, and the children of a follower `…/components`
/// node are named back with the inverse map. A follower child no leader id maps to under
/// this map (`map(to_leader(c)) != c`: a leader id that is now mapped elsewhere, i.e. state
/// left under an old id) is left out of the walk and returned as a follower path: an orphan.
pub async fn read_pair_mapped(
    leader: &mut Session,
    follower: &mut Session,
    chunk: &[Entry],
    map: &IdentityMap,
) -> Result<(Vec<Reading>, Vec<Reading>, Vec<String>), String> {
    if map.is_empty() {
        return read_pair_plain(leader, follower, chunk)
            .await
            .map(|(l, f)| (l, f, Vec::new()));
    }
    let mapped: Vec<Entry> = chunk
        .iter()
        .map(|e| Entry {
            path: map.map_path(&e.path).into_owned(),
            leader_gone: e.leader_gone,
            follower_gone: e.follower_gone,
        })
        .collect();
    let lp: Vec<String> = chunk
        .iter()
        .filter(|e| e.leader_gone.is_none())
        .map(|e| e.path.clone())
        .collect();
    let fp: Vec<String> = mapped
        .iter()
        .filter(|e| !e.follower_gone)
        .map(|e| e.path.clone())
        .collect();
    let (l, f) = tokio::join!(leader.read(&lp), follower.read(&fp));
    let (l, f) = merge(chunk, l?, f?)?;
    let mut f = f;
    let mut orphans = Vec::new();
    for (e, r) in mapped.iter().zip(f.iter_mut()) {
        if let State::Node(n) = &mut r.state {
            if crate::nifi::identity::is_components_node(&e.path) {
                let mut kept = Vec::with_capacity(n.children.len());
                for c in std::mem::take(&mut n.children) {
                    let l = map.to_leader(&c).into_owned();
                    if *map.to_follower(&l) == *c {
                        kept.push(l);
                    } else {
                        orphans.push(child_path(&e.path, &c));
                    }
                }
                n.children = kept;
            }
        }
    }
    Ok((l, f, orphans))
}

async fn read_pair_plain(
    leader: &mut Session,
    follower: &mut Session,
    chunk: &[Entry],
) -> Result<(Vec<Reading>, Vec<Reading>), String> {
    let lp: Vec<String> = chunk
        .iter()
        .filter(|e| e.leader_gone.is_none())
        .map(|e| e.path.clone())
        .collect();
    let fp: Vec<String> = chunk
        .iter()
        .filter(|e| !e.follower_gone)
        .map(|e| e.path.clone())
        .collect();
    let (l, f) = tokio::join!(leader.read(&lp), follower.read(&fp));
    merge(chunk, l?, f?)
}

/// Lines the readings up with `chunk` (an entry a side skipped reads as missing).
fn merge(
    chunk: &[Entry],
    l: Vec<Reading>,
    f: Vec<Reading>,
) -> Result<(Vec<Reading>, Vec<Reading>), String> {
    let (mut l, mut f) = (l.into_iter(), f.into_iter());
    let gone = |zxid| Reading {
        state: State::Missing,
        zxid,
    };
    let mut out = (
        Vec::with_capacity(chunk.len()),
        Vec::with_capacity(chunk.len()),
    );
    for e in chunk {
        let lr = match e.leader_gone {
            Some(z) => Some(gone(z)),
            None => l.next(),
        };
        let fr = if e.follower_gone {
            Some(gone(0))
        } else {
            f.next()
        };
        let (Some(lr), Some(fr)) = (lr, fr) else {
            return Err("fewer readings than paths".into());
        };
        out.0.push(lr);
        out.1.push(fr);
    }
    Ok(out)
}

/// Paths per round trip: about 8 MiB of data per side, 16..=1024 paths (a far follower
/// costs a round trip per chunk, so chunks of small nodes are large).
pub fn chunk_len(last_paths: usize, last_bytes: usize) -> usize {
    let avg = last_bytes / last_paths.max(1);
    ((8 << 20) / avg.max(1)).clamp(16, 1024)
}

/// Bytes of data a chunk's readings hold.
pub fn data_bytes(r: &[Reading]) -> usize {
    r.iter()
        .map(|x| match &x.state {
            State::Node(n) => n.data.as_ref().map_or(0, |d| d.len()) + 64,
            _ => 64,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zookeeper::proto::records::Id;

    fn filter(include: &[&str], exclude: &[&str]) -> PathFilter {
        PathFilter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn modes_from_ephemeral_owner() {
        assert_eq!(mode(0), Mode::Persistent);
        assert_eq!(mode(i64::MIN), Mode::Container);
        assert_eq!(mode(0xFF00_0000_0000_EA60_u64 as i64), Mode::Ttl(60_000));
        assert_eq!(mode(0x0100_00a8_9b3c_0002), Mode::Ephemeral);
    }

    #[test]
    fn walks_start_at_includes_and_skip_excluded_and_zookeeper() {
        assert_eq!(starts(&filter(&["/"], &[])), ["/"]);
        assert_eq!(
            starts(&filter(&["/nifi", "/nifi/x", "/b/"], &[])),
            ["/b", "/nifi"]
        );
        let f = filter(&["/"], &["/tmp"]);
        let mut w = Walk::new(&f);
        let paths = |c: Vec<Entry>| c.into_iter().map(|e| e.path).collect::<Vec<_>>();
        assert_eq!(paths(w.next_chunk(10).unwrap()), ["/"]);
        let node = |names: &[&str]| Reading {
            state: State::Node(Box::new(Node {
                data: None,
                stat: Stat::default(),
                acl: vec![],
                children: names.iter().map(|s| s.to_string()).collect(),
            })),
            zxid: 5,
        };
        w.descend("/", &node(&["zookeeper", "a", "tmp"]), &node(&["a", "b"]));
        assert_eq!(paths(w.next_chunk(10).unwrap()), ["/a", "/b"]);
        assert!(w.next_chunk(10).unwrap().is_empty());
        // Below a node one side lacks, that side is not read again.
        let missing = Reading {
            state: State::Missing,
            zxid: 9,
        };
        w.descend("/a", &node(&["x"]), &missing);
        w.descend("/b", &missing, &node(&["y"]));
        let c = w.next_chunk(10).unwrap();
        assert_eq!((c[0].leader_gone, c[0].follower_gone), (None, true));
        assert_eq!((c[1].leader_gone, c[1].follower_gone), (Some(9), false));
        assert!(!compared(&f, "/") && compared(&f, "/a"));
        let f = filter(&["/nifi/"], &[]);
        assert!(!compared(&f, "/nifi") && compared(&f, "/nifi/c"));
    }

    #[test]
    fn masked_digest_acls_compare_as_seen() {
        let acl = |id: &str, perms| Acl {
            perms,
            id: Id {
                scheme: "digest".into(),
                id: id.into(),
            },
        };
        let full = vec![acl("u:hash=", 31)];
        let masked = vec![acl("u:x", 31)];
        assert!(acl_masked(&masked) && !acl_masked(&full));
        assert!(same_acl(&full, &masked));
        assert!(!same_acl(&full, &[acl("v:x", 31)]));
        assert!(!same_acl(&full, &[acl("u:other=", 31)]));
        assert_eq!(chunk_len(0, 0), 1024);
        assert_eq!(chunk_len(10, 10 << 20), 16);
    }
}
