//! The ZooKeeper resync walker (TODO: being written).

use std::sync::Arc;

use super::mirror::ZkOp;
use crate::config::{ResolvedZk, ZooKeeperConfig};
use crate::replication::queue::MirrorQueue;
use crate::replication::resync::{BoxFuture, ResyncCtx, ResyncError, Walker};

pub struct ZkWalker {
    _queue: Arc<MirrorQueue<ZkOp>>,
}

impl ZkWalker {
    pub fn new(_r: &ResolvedZk, _cfg: &ZooKeeperConfig, queue: Arc<MirrorQueue<ZkOp>>) -> Self {
        Self { _queue: queue }
    }
}

impl Walker for ZkWalker {
    fn walk<'a>(&'a self, _ctx: &'a ResyncCtx) -> BoxFuture<'a, Result<(), ResyncError>> {
        Box::pin(async { Ok(()) })
    }
}
