//! The ZooKeeper wire protocol, as pure data: framing, the jute encoding, and the records of
//! a client session. No I/O happens here.
//!
//! Why hand-written: no Rust crate exposes a reusable ZooKeeper codec, and none has the
//! server side (decoding requests, encoding replies) that a proxy needs. The protocol is
//! small — five primitive types and about forty records — and a proxy must be exact about
//! the parts generated codecs get wrong: the header-less first frame, its optional trailing
//! `readOnly` byte, the header-tagged lists of `multi`, null buffers, and size limits on
//! untrusted input.
//!
//! - [`frame`]: length-prefixed frames cut from a read buffer, and four-letter words;
//! - [`jute`]: the binary encoding (`Reader`/`Writer`, the `Record` trait, `JuteError`);
//! - [`proto`]: opcodes, special xids, error codes, `is_write`, and every record;
//! - [`session`]: one client connection relayed to the leader ensemble, replies in order;
//! - [`server`]: the listener, server rotation, four-letter words, health checks;
//! - [`mirror`]: where an acknowledged write becomes a follower op, applied in zxid order;
//!   [`refusal`]: which follower errors are retried, which skipped;
//! - [`client`]: statemirror's own sessions (the follower writer, resync and verify reads);
//! - [`tree`]: reading a node's data, ACL, stat and children for resync and verify;
//! - [`resync`]: the full resync walker (leader tree → follower, in `multi` batches);
//! - [`verify`]: comparing both trees node by node, NiFi state decoded.

pub mod client;
pub mod cluster;
pub mod converge;
pub mod endpoint;
pub mod ephemeral;
pub mod frame;
pub mod generation;
pub mod jute;
pub mod mirror;
pub mod probe;
pub mod proto;
pub mod refusal;
pub mod resync;
pub mod server;
pub mod session;
pub mod tree;
pub mod verify;
