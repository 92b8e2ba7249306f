//! The Redis sidecar: RESP in front, the leader behind, the follower as mirror target and
//! read fallback.
//!
//! - [`resp`]: where a RESP frame is cut and a request's arguments are read (hot path);
//! - [`command`]: where a write is classified (read/write/admin/pub-sub, keys);
//! - [`session`]: one client connection: ordering, transactions, pub/sub, local replies;
//! - [`inflight`]: which keys have writes in flight (decides whether a write's own effect
//!   can be mirrored or its keys must be copied);
//! - [`mirror`]: where a write is mirrored (key copies to the follower) — the module comment
//!   explains the mechanism; [`refusal`]: which follower errors are retried, which skipped;
//! - [`resync`]: the full resync walker (`SCAN` the leader, copy; find follower-only keys);
//! - [`verify`]: comparing leader and follower key by key, NiFi state decoded;
//! - [`typed`]: type-aware reads and copies (for followers that reject `DUMP` payloads, and
//!   for comparing values whose encodings differ);
//! - [`backend`]: statemirror's own connections to the backends;
//! - [`server`]: the listener, backend choice, health checks.
//!
//! Supported: everything Redis accepts on a single connection (RESP2 and RESP3, `AUTH`,
//! `HELLO`, `SELECT`, `CLIENT *`, transactions, pub/sub, blocking commands, `MONITOR`,
//! scripts, functions). Not supported: TLS to clients or backends, Redis Cluster
//! redirections. Sentinel-managed backends: see [`sentinel`].

pub mod backend;
pub mod cluster;
pub mod command;
pub mod converge;
pub mod generation;
pub mod inflight;
pub mod mirror;
pub mod parked;
pub mod refusal;
pub mod resp;
pub mod resync;
pub mod sentinel;
pub mod server;
pub mod session;
pub mod typed;
pub mod verify;
