//! The protocol-independent replication core that every sidecar (Redis, ZooKeeper) reuses:
//!
//! - [`queue`]: the bounded, coalescing mirror queue with lag and in-sync tracking;
//! - [`worker`]: the follower writer loop (batching, retry with backoff, rate-limited
//!   warnings) around a protocol's [`worker::Applier`];
//! - [`freeze`]: the maintenance write freeze and its in-flight write accounting;
//! - [`cluster`]: the cluster-wide freeze and member list kept in the leader backend;
//! - [`converge`]: with several sidecars, the check of every mirrored key against the
//!   leader that makes the follower converge whatever each sidecar's delay;
//! - [`health`]: backend up/down state shared by health checks and sessions;
//! - [`resync`]: the full-resync controller (when to run, pacing, progress) around a
//!   protocol's walker;
//! - [`verify`]: the comparison report, its schedule and last result; [`nifi`]: NiFi's state
//!   formats, so a report names the component and entry that differ.

pub mod cluster;
pub mod converge;
pub mod freeze;
pub mod generation;
pub mod health;
pub mod public;
pub mod queue;
pub mod resync;
pub mod verify;
pub mod worker;
