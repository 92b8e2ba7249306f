//! The protocol-independent replication core that every sidecar (Redis, ZooKeeper) reuses:
//!
//! - [`queue`]: the bounded, coalescing mirror queue with lag and in-sync tracking;
//! - [`worker`]: the follower writer loop (batching, retry with backoff, rate-limited
//!   warnings) around a protocol's [`worker::Applier`];
//! - [`freeze`]: the maintenance write freeze and its in-flight write accounting;
//! - [`health`]: backend up/down state shared by health checks and sessions.

pub mod freeze;
pub mod health;
pub mod queue;
pub mod worker;
