//! What an acknowledged write does to the follower: the mirror op built from a write's
//! request and the leader's reply, decoded only here (the session looks at headers only).

use bytes::Bytes;
use smallvec::SmallVec;

use super::super::jute::Record;
use super::super::mirror::{Item, ZkOp};
use super::super::proto::multi::{MultiOp, MultiRequest, MultiResponse, MultiResult};
use super::super::proto::records::{
    Create2Response, CreateRequest, CreateResponse, CreateTtlRequest, DeleteRequest, SetAclRequest,
    SetDataRequest, StatResponse,
};
use super::super::proto::{create_mode, op};
use super::super::server::ZkShared;

/// Queues the mirror op for an acknowledged write. A write whose effect cannot be worked
/// out is not dropped silently: it is counted and the follower marked out of sync (a resync
/// then copies what it changed).
pub(super) fn mirror_reply(
    shared: &ZkShared,
    session: Option<i64>,
    op: i32,
    req: &Bytes,
    resp: &Bytes,
    zxid: i64,
) {
    let Some(q) = &shared.mirror else { return };
    match mirror_op(shared, session, op, req, resp, zxid) {
        Ok(Some(o)) => q.push(o),
        Ok(None) => {}
        Err(why) => {
            use crate::replication::queue::MirrorView;
            tracing::warn!(
                op = super::super::proto::op_name(op),
                zxid = format!("{zxid:#x}"),
                "an acknowledged write cannot be mirrored: {why}"
            );
            q.count_dropped(1);
            q.sync().mark_out_of_sync(format!(
                "an acknowledged {} (zxid {zxid:#x}) was not mirrored: {why}",
                super::super::proto::op_name(op)
            ));
        }
    }
}

/// The mirror op for an acknowledged write: `Ok(None)` when nothing is to be mirrored
/// (ephemeral nodes that are not mirrored, filtered paths, a failed multi), `Err` when its
/// effect cannot be worked out from the request and reply.
fn mirror_op(
    shared: &ZkShared,
    session: Option<i64>,
    op: i32,
    req: &Bytes,
    resp: &Bytes,
    zxid: i64,
) -> Result<Option<ZkOp>, String> {
    let bad =
        |what: &str| format!("its {what} does not decode (a path or ACL id that is not UTF-8?)");
    // The ephemeral owner of the node a setData/setACL changed, from the reply's stat.
    let stat_owner = |resp: &Bytes| {
        StatResponse::from_bytes(resp)
            .map(|r| r.stat.ephemeral_owner)
            .map_err(|_| bad("reply"))
    };
    // Each item with the ephemeral owner of the node it changes (from the reply's stat; 0
    // for a persistent node): a setData or setACL of a client's ephemeral must not create a
    // persistent copy on the follower.
    let mut items: SmallVec<[(Item, i64); 1]> = SmallVec::new();
    match op {
        op::CREATE | op::CREATE2 | op::CREATE_CONTAINER => {
            let r = CreateRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let path = if op == op::CREATE {
                CreateResponse::from_bytes(resp).map(|r| r.path)
            } else {
                Create2Response::from_bytes(resp).map(|r| r.path)
            }
            .map_err(|_| bad("reply"))?;
            items.extend(create_item(path, r.data, r.acl, r.flags, 0).map(|i| (i, 0)));
        }
        op::CREATE_TTL => {
            let r = CreateTtlRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let path = Create2Response::from_bytes(resp)
                .map_err(|_| bad("reply"))?
                .path;
            items.extend(create_item(path, r.data, r.acl, r.flags, r.ttl).map(|i| (i, 0)));
        }
        op::DELETE => items.push((
            Item::Delete {
                path: DeleteRequest::from_bytes(req)
                    .map_err(|_| bad("request"))?
                    .path,
            },
            0,
        )),
        op::SET_DATA => {
            let r = SetDataRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let owner = stat_owner(resp)?;
            let item = Item::SetData {
                path: r.path,
                data: r.data,
            };
            items.push((item, owner));
        }
        op::SET_ACL => {
            let r = SetAclRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let owner = stat_owner(resp)?;
            let item = Item::SetAcl {
                path: r.path,
                acl: r.acl,
            };
            items.push((item, owner));
        }
        op::MULTI => {
            let r = MultiRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let res = MultiResponse::from_bytes(resp).map_err(|_| bad("reply"))?;
            if res.results.iter().any(|x| x.err() != 0) {
                return Ok(None); // the whole multi failed: nothing changed
            }
            if res.results.len() != r.ops.len() {
                return Err("its reply does not match its request".into());
            }
            for (o, result) in r.ops.into_iter().zip(res.results) {
                let created = match &result {
                    MultiResult::Create { path } | MultiResult::Create2 { path, .. } => {
                        Some(path.clone())
                    }
                    _ => None,
                };
                let owner = match &result {
                    MultiResult::SetData { stat } => stat.ephemeral_owner,
                    _ => 0,
                };
                let created = || created.clone().ok_or_else(|| bad("reply"));
                match o {
                    MultiOp::Create(c) | MultiOp::Create2(c) | MultiOp::CreateContainer(c) => items
                        .extend(create_item(created()?, c.data, c.acl, c.flags, 0).map(|i| (i, 0))),
                    MultiOp::CreateTtl(c) => items.extend(
                        create_item(created()?, c.data, c.acl, c.flags, c.ttl).map(|i| (i, 0)),
                    ),
                    MultiOp::Delete(d) => items.push((Item::Delete { path: d.path }, 0)),
                    MultiOp::SetData(s) => items.push((
                        Item::SetData {
                            path: s.path,
                            data: s.data,
                        },
                        owner,
                    )),
                    MultiOp::Check(_) | MultiOp::GetData(_) | MultiOp::GetChildren(_) => {}
                }
            }
        }
        // An internal opcode (the server's container GC): which node a client's one names
        // is not known here.
        op::DELETE_CONTAINER => return Err("deleteContainer from a client is not mirrored".into()),
        _ => return Ok(None), // reconfig: ZooKeeper's own config, not client state
    }
    items.retain(|(it, _)| shared.filter.allows(it.path()));
    let tracking = shared.ephemerals.as_ref().zip(session);
    let mut out: SmallVec<[Item; 1]> = SmallVec::new();
    for (it, owner) in items {
        let it = it.into_owned();
        match (&it, tracking) {
            (Item::Create { mode, .. }, None) if *mode == create_mode::EPHEMERAL => {}
            // Someone's ephemeral changed: not mirrored at all, or (mirrored) the copy the
            // registry keeps is updated and made again ephemeral on the follower.
            (Item::SetData { .. } | Item::SetAcl { .. }, None) if owner != 0 => {}
            (Item::SetData { path, data }, Some((eph, _))) if owner != 0 => {
                out.extend(eph.changed(owner, path, Some(data.clone()), None));
            }
            (Item::SetAcl { path, acl }, Some((eph, _))) if owner != 0 => {
                out.extend(eph.changed(owner, path, None, Some(acl.clone())));
            }
            (
                Item::Create {
                    path,
                    data,
                    acl,
                    mode,
                    ..
                },
                Some((eph, session)),
            ) if *mode == create_mode::EPHEMERAL => {
                eph.created(session, path, data.clone(), acl.clone());
                out.push(it);
            }
            (Item::Delete { path }, Some((eph, _))) => {
                eph.deleted(path);
                out.push(it);
            }
            _ => out.push(it),
        }
    }
    Ok((!out.is_empty()).then_some(ZkOp { zxid, items: out }))
}

/// A create as the follower should see it: sequential nodes under the leader's name,
/// ephemeral nodes not at all (they belong to client sessions).
fn create_item(
    path: String,
    data: Option<Bytes>,
    acl: Vec<super::super::proto::records::Acl>,
    flags: i32,
    ttl: i64,
) -> Option<Item> {
    let mode = match flags {
        create_mode::PERSISTENT | create_mode::PERSISTENT_SEQUENTIAL => create_mode::PERSISTENT,
        create_mode::CONTAINER => create_mode::CONTAINER,
        create_mode::PERSISTENT_WITH_TTL | create_mode::PERSISTENT_SEQUENTIAL_WITH_TTL => {
            create_mode::PERSISTENT_WITH_TTL
        }
        // Ephemeral: only mirrored with `mirror_ephemeral` (see `ephemeral`).
        create_mode::EPHEMERAL | create_mode::EPHEMERAL_SEQUENTIAL => create_mode::EPHEMERAL,
        _ => return None,
    };
    Some(Item::Create {
        path,
        data,
        acl,
        mode,
        ttl,
    })
}
