//! The harness itself: a write through the proxy reaches the follower.
mod common;

use common::*;
use redis::AsyncCommands;
use std::time::Duration;

#[tokio::test]
async fn write_through_proxy_reaches_follower() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    let _: () = c.set("nifi/components/a", "{\"version\":0}").await.unwrap();
    proxy.drained().await;
    let mut f = follower.conn().await;
    let v: String = f.get("nifi/components/a").await.unwrap();
    assert_eq!(v, "{\"version\":0}");
    assert_eq!(assert_same_data(&leader, &follower).await, 1);
    let _ = Duration::ZERO;
}
