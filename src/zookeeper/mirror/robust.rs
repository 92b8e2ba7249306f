//! How one item is applied so that applying it again, or after a partial failure, ends the
//! same: the plain attempt's outcome, and the robust steps (create parents, update or
//! create, delete a subtree sparing newer writes) when it did not simply succeed.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::applied::Applied;
use super::applier::*;
use super::Item;
use crate::replication::worker::ApplyError;
use crate::zookeeper::client::{Call, Reply};
use crate::zookeeper::jute::Record;
use crate::zookeeper::proto::multi::{MultiRequest, MultiResponse};
use crate::zookeeper::proto::records::{Acl, Id};
use crate::zookeeper::proto::{create_mode, err, op, perms};
use crate::zookeeper::refusal::{self, Refusal};

/// What a plain step's reply means.
pub(super) fn plain_outcome(items: &[Item], r: &Reply) -> Outcome {
    if items.len() > 1 {
        if step_ok(items, r.err, &r.body) {
            return Outcome::Ok;
        }
        // A multi the follower refused as a whole: applied item by item instead (the
        // follower then passes through the intermediate states; the end state is the
        // leader's), unless the follower is just busy.
        return match refusal::classify(r.err) {
            Refusal::Transient if r.err != err::OK => Outcome::Transient(format!(
                "multi: {}",
                crate::zookeeper::proto::err_name(r.err)
            )),
            _ => Outcome::Fix,
        };
    }
    let Some(it) = items.first() else {
        return Outcome::Ok;
    };
    match (it, r.err) {
        (_, err::OK) => Outcome::Ok,
        (Item::Delete { .. } | Item::SetAcl { .. }, err::NO_NODE) => Outcome::Ok,
        (Item::Create { .. }, err::NODE_EXISTS | err::NO_NODE)
        | (Item::SetData { .. }, err::NO_NODE)
        | (Item::Delete { .. }, err::NOT_EMPTY) => Outcome::Fix,
        (_, code) => match refusal::classify(code) {
            Refusal::Transient => Outcome::Transient(format!(
                "{} {}: {}",
                item_name(it),
                it.path(),
                crate::zookeeper::proto::err_name(code)
            )),
            Refusal::Permanent(reason) => Outcome::Refused(reason, String::new()),
        },
    }
}

/// `it` as requests whose end state does not depend on what the follower held: missing
/// parents created (empty, open ACL; each only once per round, `ensured`), a create over an
/// existing node followed by `setData` + `setACL`, a `setData` of a missing node creating
/// it, an ephemeral deleted first (it must belong to this session), a delete preceded by
/// the deletes of `subtree` (the follower's extra children, deepest first).
pub(super) fn robust(
    it: &Item,
    subtree: Option<&[String]>,
    ensured: &mut HashSet<String>,
) -> Vec<Sub> {
    const NONE: &[i32] = &[];
    const EXISTS: &[i32] = &[err::NODE_EXISTS];
    const GONE: &[i32] = &[err::NO_NODE];
    let sub = |item: Item, ok: &'static [i32]| Sub {
        delete: matches!(item, Item::Delete { .. }),
        call: item.call(),
        ok,
        gap_if: None,
    };
    let mut out = Vec::new();
    let mut parents = |path: &str, out: &mut Vec<Sub>| {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            at += 1 + i;
            let parent = &path[..at];
            if ensured.insert(parent.to_string()) {
                let c = Item::Create {
                    path: parent.to_string(),
                    data: None,
                    acl: open_acl(),
                    mode: create_mode::PERSISTENT,
                    ttl: 0,
                };
                out.push(sub(c, EXISTS));
            }
        }
    };
    match it {
        Item::Create { path, mode, .. } if *mode == create_mode::EPHEMERAL => {
            parents(path, &mut out);
            out.push(sub(Item::Delete { path: path.clone() }, GONE));
            out.push(sub(it.clone(), NONE));
        }
        Item::Create {
            path, data, acl, ..
        } => {
            parents(path, &mut out);
            out.push(sub(it.clone(), EXISTS));
            let set = Item::SetData {
                path: path.clone(),
                data: data.clone(),
            };
            out.push(sub(set, NONE));
            let acl = Item::SetAcl {
                path: path.clone(),
                acl: acl.clone(),
            };
            out.push(sub(acl, NONE));
        }
        Item::SetData { path, data } => {
            parents(path, &mut out);
            let create = Item::Create {
                path: path.clone(),
                data: data.clone(),
                acl: open_acl(),
                mode: create_mode::PERSISTENT,
                ttl: 0,
            };
            // A node created here gets an open ACL: data right, ACL maybe not (see the
            // module comment: usually the create is queued just behind this setData).
            out.push(sub(create, EXISTS));
            out.push(sub(it.clone(), NONE));
        }
        Item::SetAcl { .. } => out.push(Sub {
            gap_if: Some(err::NO_NODE),
            ..sub(it.clone(), GONE)
        }),
        Item::Delete { .. } => {
            for p in subtree.unwrap_or_default() {
                out.push(sub(Item::Delete { path: p.clone() }, GONE));
            }
            out.push(sub(it.clone(), GONE));
        }
    }
    // A delete may remove a parent another item of this round relies on.
    if out.iter().any(|s| s.delete) {
        ensured.clear();
    }
    out
}

/// [`robust`] for an item of the step at `zxid`. A delete over children the follower has
/// (`subtrees`) spares every node a newer write (on another connection, or a live write
/// after a resync's read) was applied to, and their ancestors: the leader recreated them
/// after this delete. The node itself is then kept too; the newer writes own it.
pub(super) fn robust_at(
    it: &Item,
    zxid: i64,
    subtrees: &HashMap<String, Vec<String>>,
    applied: &Applied,
    ensured: &mut HashSet<String>,
) -> Vec<Sub> {
    let Item::Delete { path: root } = it else {
        return robust(it, None, ensured);
    };
    let Some(sub) = subtrees.get(root) else {
        return robust(it, None, ensured);
    };
    let mut spared: HashSet<&str> = HashSet::new();
    for n in sub {
        if applied.newer(n, zxid) {
            let mut at = n.as_str();
            while at.len() > root.len() && spared.insert(at) {
                at = at.rfind('/').map_or(root.as_str(), |i| &at[..i]);
            }
        }
    }
    if spared.is_empty() {
        return robust(it, Some(sub), ensured);
    }
    let doomed: Vec<String> = sub
        .iter()
        .filter(|n| !spared.contains(n.as_str()))
        .cloned()
        .collect();
    let mut out = robust(it, Some(&doomed), ensured);
    out.pop(); // the delete of `root` itself, which robust puts last
    out
}

/// A request's connection was lost under it (as opposed to no connection at all).
pub(super) const FOLLOWER_CLOSED: &str = "follower_closed";

pub(super) fn follower_err(e: crate::zookeeper::client::ClientError) -> ApplyError {
    use crate::zookeeper::client::ClientError;
    let reason = match e {
        ClientError::Closed | ClientError::Io(_) => FOLLOWER_CLOSED,
        _ => "follower_unavailable",
    };
    ApplyError::new(reason, e.to_string())
}

pub(super) fn item_name(it: &Item) -> &'static str {
    match it {
        Item::Create { .. } => "create",
        Item::Delete { .. } => "delete",
        Item::SetData { .. } => "setData",
        Item::SetAcl { .. } => "setACL",
    }
}

/// `world:anyone` with every permission (what parents the mirror creates get).
pub(super) fn open_acl() -> Vec<Acl> {
    vec![Acl {
        perms: perms::ALL,
        id: Id {
            scheme: "world".into(),
            id: "anyone".into(),
        },
    }]
}

/// The request for one step: the item itself, or a multi of several. `None` when a multi
/// holds an item with no multi form (a TTL create): the step is applied item by item.
pub(super) fn step_call(items: &[Item]) -> Option<Call> {
    if let [one] = items {
        return Some(one.call());
    }
    let ops = items
        .iter()
        .map(Item::multi_op)
        .collect::<Option<Vec<_>>>()?;
    Some(Call::new(op::MULTI, &MultiRequest { ops }))
}

pub(super) fn step_ok(items: &[Item], e: i32, body: &Bytes) -> bool {
    if e != err::OK {
        return false;
    }
    if items.len() > 1 {
        return MultiResponse::from_bytes(body)
            .is_ok_and(|r| r.results.iter().all(|x| x.err() == 0));
    }
    true
}
