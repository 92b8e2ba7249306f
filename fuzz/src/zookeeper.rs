//! The proxy's ZooKeeper decoders, compiled from their own source files into the fuzz
//! targets under the same module path (`crate::zookeeper::…`) they use in the proxy.

#[path = "../../src/zookeeper/frame.rs"]
pub mod frame;
#[path = "../../src/zookeeper/jute.rs"]
pub mod jute;
#[path = "../../src/zookeeper/proto/mod.rs"]
pub mod proto;
