//! ZooKeeper's client protocol vocabulary: opcodes, special xids, error codes, watcher event
//! types and states, and every request/response record of `zookeeper.jute` that a client
//! session carries (3.8/3.9).
//!
//! - [`connect`]: the handshake, `ConnectRequest`/`ConnectResponse`, with their optional
//!   trailing `readOnly` byte;
//! - [`records`]: headers, `Stat`, ACLs and the per-opcode request and response records;
//! - [`multi`]: `multi` (14) and `multiRead` (22), whose bodies are a header-tagged list
//!   ended by `{-1, true, -1}` rather than a plain jute record.
//!
//! Constants are grouped in small modules named after their Java counterparts
//! ([`op`] = `ZooDefs.OpCode`, [`err`] = `KeeperException.Code`, …) and keep the Java values.

pub mod connect;
pub mod multi;
pub mod records;

pub use super::jute::Record;
pub use connect::*;
pub use multi::*;
pub use records::*;

/// Opcodes (`ZooDefs.OpCode`), the `type` of a `RequestHeader`.
pub mod op {
    pub const NOTIFICATION: i32 = 0;
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const GET_ACL: i32 = 6;
    pub const SET_ACL: i32 = 7;
    pub const GET_CHILDREN: i32 = 8;
    pub const SYNC: i32 = 9;
    pub const PING: i32 = 11;
    pub const GET_CHILDREN2: i32 = 12;
    pub const CHECK: i32 = 13;
    pub const MULTI: i32 = 14;
    pub const CREATE2: i32 = 15;
    pub const RECONFIG: i32 = 16;
    pub const CHECK_WATCHES: i32 = 17;
    pub const REMOVE_WATCHES: i32 = 18;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const DELETE_CONTAINER: i32 = 20;
    pub const CREATE_TTL: i32 = 21;
    pub const MULTI_READ: i32 = 22;
    pub const AUTH: i32 = 100;
    pub const SET_WATCHES: i32 = 101;
    pub const SASL: i32 = 102;
    pub const GET_EPHEMERALS: i32 = 103;
    pub const GET_ALL_CHILDREN_NUMBER: i32 = 104;
    pub const SET_WATCHES2: i32 = 105;
    pub const ADD_WATCH: i32 = 106;
    pub const WHO_AM_I: i32 = 107;
    pub const CREATE_SESSION: i32 = -10;
    pub const CLOSE_SESSION: i32 = -11;
    /// Only inside multi results: an `ErrorResult`.
    pub const ERROR: i32 = -1;
}

/// Reserved xids (`ClientCnxn`). Client xids start at 1.
pub mod xid {
    /// Server to client: a `WatcherEvent` follows the `ReplyHeader`.
    pub const NOTIFICATION: i32 = -1;
    pub const PING: i32 = -2;
    pub const AUTH: i32 = -4;
    /// `setWatches` / `setWatches2`, sent after a (re)connect.
    pub const SET_WATCHES: i32 = -8;
}

/// Error codes (`KeeperException.Code`), the `err` of a `ReplyHeader`.
pub mod err {
    pub const OK: i32 = 0;
    pub const SYSTEM_ERROR: i32 = -1;
    pub const RUNTIME_INCONSISTENCY: i32 = -2;
    pub const DATA_INCONSISTENCY: i32 = -3;
    /// Client-generated.
    pub const CONNECTION_LOSS: i32 = -4;
    pub const MARSHALLING_ERROR: i32 = -5;
    pub const UNIMPLEMENTED: i32 = -6;
    /// Client-generated.
    pub const OPERATION_TIMEOUT: i32 = -7;
    pub const BAD_ARGUMENTS: i32 = -8;
    pub const UNKNOWN_SESSION: i32 = -12;
    pub const NEW_CONFIG_NO_QUORUM: i32 = -13;
    pub const RECONFIG_IN_PROGRESS: i32 = -14;
    pub const API_ERROR: i32 = -100;
    pub const NO_NODE: i32 = -101;
    pub const NO_AUTH: i32 = -102;
    pub const BAD_VERSION: i32 = -103;
    pub const NO_CHILDREN_FOR_EPHEMERALS: i32 = -108;
    pub const NODE_EXISTS: i32 = -110;
    pub const NOT_EMPTY: i32 = -111;
    pub const SESSION_EXPIRED: i32 = -112;
    pub const INVALID_CALLBACK: i32 = -113;
    pub const INVALID_ACL: i32 = -114;
    pub const AUTH_FAILED: i32 = -115;
    pub const SESSION_MOVED: i32 = -118;
    /// "state-changing request is passed to read-only server".
    pub const NOT_READ_ONLY: i32 = -119;
    pub const EPHEMERAL_ON_LOCAL_SESSION: i32 = -120;
    pub const NO_WATCHER: i32 = -121;
    /// Client-generated.
    pub const REQUEST_TIMEOUT: i32 = -122;
    pub const RECONFIG_DISABLED: i32 = -123;
    pub const SESSION_CLOSED_REQUIRE_SASL_AUTH: i32 = -124;
    pub const QUOTA_EXCEEDED: i32 = -125;
    pub const THROTTLED_OP: i32 = -127;
}

/// `WatcherEvent.type` (`Watcher.Event.EventType`).
pub mod event {
    pub const NONE: i32 = -1;
    pub const NODE_CREATED: i32 = 1;
    pub const NODE_DELETED: i32 = 2;
    pub const NODE_DATA_CHANGED: i32 = 3;
    pub const NODE_CHILDREN_CHANGED: i32 = 4;
    pub const DATA_WATCH_REMOVED: i32 = 5;
    pub const CHILD_WATCH_REMOVED: i32 = 6;
    pub const PERSISTENT_WATCH_REMOVED: i32 = 7;
}

/// `WatcherEvent.state` (`Watcher.Event.KeeperState`).
pub mod state {
    pub const DISCONNECTED: i32 = 0;
    pub const SYNC_CONNECTED: i32 = 3;
    pub const AUTH_FAILED: i32 = 4;
    pub const CONNECTED_READ_ONLY: i32 = 5;
    pub const SASL_AUTHENTICATED: i32 = 6;
    pub const CLOSED: i32 = 7;
    pub const EXPIRED: i32 = -112;
}

/// `CreateRequest.flags` (`CreateMode`).
pub mod create_mode {
    pub const PERSISTENT: i32 = 0;
    pub const EPHEMERAL: i32 = 1;
    pub const PERSISTENT_SEQUENTIAL: i32 = 2;
    pub const EPHEMERAL_SEQUENTIAL: i32 = 3;
    pub const CONTAINER: i32 = 4;
    pub const PERSISTENT_WITH_TTL: i32 = 5;
    pub const PERSISTENT_SEQUENTIAL_WITH_TTL: i32 = 6;
}

/// `Acl.perms` bits (`ZooDefs.Perms`).
pub mod perms {
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const CREATE: i32 = 4;
    pub const DELETE: i32 = 8;
    pub const ADMIN: i32 = 16;
    pub const ALL: i32 = 31;
}

/// `AddWatchRequest.mode` (`ZooDefs.AddWatchModes`).
pub mod add_watch_mode {
    pub const PERSISTENT: i32 = 0;
    pub const PERSISTENT_RECURSIVE: i32 = 1;
}

/// `CheckWatchesRequest.type` / `RemoveWatchesRequest.type` (`Watcher.WatcherType`).
pub mod watcher_type {
    pub const CHILDREN: i32 = 1;
    pub const DATA: i32 = 2;
    pub const ANY: i32 = 3;
    pub const PERSISTENT: i32 = 4;
    pub const PERSISTENT_RECURSIVE: i32 = 5;
}

/// Does this opcode change the data tree (and so must be mirrored, and refused while writes
/// are frozen)? These are the data ops of `Request.isQuorum()`: create, create2, createTTL,
/// createContainer, delete, deleteContainer, setData, setACL, check, multi and reconfig.
///
/// Not included, on purpose:
/// - `sync` (9): a read-only server refuses it too (see [`is_refused_by_read_only`]), but it
///   changes nothing, so it must not be mirrored and need not be refused during a write
///   freeze — the leader still answers it;
/// - `createSession`/`closeSession` (−10/−11): session lifecycle, handled by the session
///   logic, not by the mirror;
/// - `multiRead` (22) and the watch/auth ops, which only touch session state.
///
/// `check` (13) is here because the server treats it as a transaction; standalone it is
/// answered locally anyway (it corrupts the log before 3.8.5/3.9.3).
pub fn is_write(op: i32) -> bool {
    matches!(
        op,
        op::CREATE
            | op::DELETE
            | op::SET_DATA
            | op::SET_ACL
            | op::CHECK
            | op::MULTI
            | op::CREATE2
            | op::RECONFIG
            | op::CREATE_CONTAINER
            | op::DELETE_CONTAINER
            | op::CREATE_TTL
    )
}

/// Does a `ReadOnlyZooKeeperServer` answer this opcode with NOTREADONLY? The writes plus
/// `sync` (`ReadOnlyRequestProcessor`; it also refuses create/closeSession of global
/// sessions, which the session logic handles).
pub fn is_refused_by_read_only(op: i32) -> bool {
    is_write(op) || op == op::SYNC
}

/// The Java name of an opcode (for logs and metric labels); `"unknown"` otherwise.
pub fn op_name(op: i32) -> &'static str {
    match op {
        op::NOTIFICATION => "notification",
        op::CREATE => "create",
        op::DELETE => "delete",
        op::EXISTS => "exists",
        op::GET_DATA => "getData",
        op::SET_DATA => "setData",
        op::GET_ACL => "getACL",
        op::SET_ACL => "setACL",
        op::GET_CHILDREN => "getChildren",
        op::SYNC => "sync",
        op::PING => "ping",
        op::GET_CHILDREN2 => "getChildren2",
        op::CHECK => "check",
        op::MULTI => "multi",
        op::CREATE2 => "create2",
        op::RECONFIG => "reconfig",
        op::CHECK_WATCHES => "checkWatches",
        op::REMOVE_WATCHES => "removeWatches",
        op::CREATE_CONTAINER => "createContainer",
        op::DELETE_CONTAINER => "deleteContainer",
        op::CREATE_TTL => "createTTL",
        op::MULTI_READ => "multiRead",
        op::AUTH => "auth",
        op::SET_WATCHES => "setWatches",
        op::SASL => "sasl",
        op::GET_EPHEMERALS => "getEphemerals",
        op::GET_ALL_CHILDREN_NUMBER => "getAllChildrenNumber",
        op::SET_WATCHES2 => "setWatches2",
        op::ADD_WATCH => "addWatch",
        op::WHO_AM_I => "whoAmI",
        op::CREATE_SESSION => "createSession",
        op::CLOSE_SESSION => "closeSession",
        op::ERROR => "error",
        _ => "unknown",
    }
}

/// The `KeeperException.Code` name of an error code; `"UNKNOWN"` otherwise.
pub fn err_name(code: i32) -> &'static str {
    match code {
        err::OK => "OK",
        err::SYSTEM_ERROR => "SYSTEMERROR",
        err::RUNTIME_INCONSISTENCY => "RUNTIMEINCONSISTENCY",
        err::DATA_INCONSISTENCY => "DATAINCONSISTENCY",
        err::CONNECTION_LOSS => "CONNECTIONLOSS",
        err::MARSHALLING_ERROR => "MARSHALLINGERROR",
        err::UNIMPLEMENTED => "UNIMPLEMENTED",
        err::OPERATION_TIMEOUT => "OPERATIONTIMEOUT",
        err::BAD_ARGUMENTS => "BADARGUMENTS",
        err::UNKNOWN_SESSION => "UNKNOWNSESSION",
        err::NEW_CONFIG_NO_QUORUM => "NEWCONFIGNOQUORUM",
        err::RECONFIG_IN_PROGRESS => "RECONFIGINPROGRESS",
        err::API_ERROR => "APIERROR",
        err::NO_NODE => "NONODE",
        err::NO_AUTH => "NOAUTH",
        err::BAD_VERSION => "BADVERSION",
        err::NO_CHILDREN_FOR_EPHEMERALS => "NOCHILDRENFOREPHEMERALS",
        err::NODE_EXISTS => "NODEEXISTS",
        err::NOT_EMPTY => "NOTEMPTY",
        err::SESSION_EXPIRED => "SESSIONEXPIRED",
        err::INVALID_CALLBACK => "INVALIDCALLBACK",
        err::INVALID_ACL => "INVALIDACL",
        err::AUTH_FAILED => "AUTHFAILED",
        err::SESSION_MOVED => "SESSIONMOVED",
        err::NOT_READ_ONLY => "NOTREADONLY",
        err::EPHEMERAL_ON_LOCAL_SESSION => "EPHEMERALONLOCALSESSION",
        err::NO_WATCHER => "NOWATCHER",
        err::REQUEST_TIMEOUT => "REQUESTTIMEOUT",
        err::RECONFIG_DISABLED => "RECONFIGDISABLED",
        err::SESSION_CLOSED_REQUIRE_SASL_AUTH => "SESSIONCLOSEDREQUIRESASLAUTH",
        err::QUOTA_EXCEEDED => "QUOTAEXCEEDED",
        err::THROTTLED_OP => "THROTTLEDOP",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zookeeper::jute::{Reader, XorShift};
    use bytes::Bytes;

    #[test]
    fn write_classification() {
        let writes = [1, 2, 5, 7, 13, 14, 15, 16, 19, 20, 21];
        for op in -20..200 {
            assert_eq!(is_write(op), writes.contains(&op), "op {op}");
            assert_eq!(
                is_refused_by_read_only(op),
                writes.contains(&op) || op == op::SYNC
            );
        }
    }

    #[test]
    fn every_opcode_and_error_has_a_name() {
        let ops = (1..=9)
            .chain(11..=22)
            .chain(100..=107)
            .chain([-10, -11, -1, 0]);
        for o in ops {
            assert_ne!(op_name(o), "unknown", "op {o}");
        }
        assert_eq!(op_name(10), "unknown");
        assert_eq!(op_name(op::CREATE_TTL), "createTTL");
        let errs = (-8..=0)
            .chain(-14..=-12)
            .chain([-100, -101, -102, -103, -108]);
        let errs = errs.chain((-115..=-110).chain(-125..=-118).chain([-127]));
        for e in errs {
            assert_ne!(err_name(e), "UNKNOWN", "err {e}");
        }
        assert_eq!(err_name(err::NOT_READ_ONLY), "NOTREADONLY");
        assert_eq!(err_name(-9), "UNKNOWN");
    }

    /// Decodes `b` as `T`; whatever decodes must re-encode to something that decodes to the
    /// same value.
    fn survive<T: Record + PartialEq + std::fmt::Debug>(b: &Bytes) {
        if let Ok(v) = T::decode(&mut Reader::from_bytes(b)) {
            let again = T::from_bytes(&v.to_bytes());
            assert_eq!(again.as_ref(), Ok(&v), "{b:02x?}");
        }
    }

    const DECODERS: &[fn(&Bytes)] = &[
        survive::<ConnectRequest>,
        survive::<ConnectResponse>,
        survive::<RequestHeader>,
        survive::<ReplyHeader>,
        survive::<Stat>,
        survive::<Acl>,
        survive::<CreateRequest>,
        survive::<CreateTtlRequest>,
        survive::<DeleteRequest>,
        survive::<SetDataRequest>,
        survive::<SetAclRequest>,
        survive::<CheckVersionRequest>,
        survive::<GetDataRequest>,
        survive::<ExistsRequest>,
        survive::<GetChildrenRequest>,
        survive::<ReconfigRequest>,
        survive::<CreateResponse>,
        survive::<Create2Response>,
        survive::<GetDataResponse>,
        survive::<GetChildren2Response>,
        survive::<GetAclResponse>,
        survive::<SetWatches>,
        survive::<SetWatches2>,
        survive::<AddWatchRequest>,
        survive::<WatcherEvent>,
        survive::<AuthPacket>,
        survive::<GetSaslRequest>,
        survive::<WhoAmIResponse>,
        survive::<MultiHeader>,
        survive::<MultiRequest>,
        survive::<MultiResponse>,
    ];

    #[test]
    fn random_bytes_never_panic_any_decoder() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for _ in 0..3_000 {
            let len = rng.below(96);
            let mut b = rng.bytes(len);
            // Bias towards small lengths and multi headers so decoding gets past the
            // first field more often than pure noise would.
            for i in (0..b.len()).step_by(4) {
                if rng.below(2) == 0 {
                    b[i] = 0;
                    if i + 1 < b.len() {
                        b[i + 1] = 0;
                    }
                }
            }
            let b = Bytes::from(b);
            for d in DECODERS {
                d(&b);
            }
        }
    }

    #[test]
    fn mutated_valid_records_never_panic() {
        let mut rng = XorShift(7);
        let seeds = (connect::tests::samples().into_iter())
            .chain(records::tests::samples())
            .chain(multi::tests::samples());
        for seed in seeds {
            for _ in 0..200 {
                let mut b = seed.to_vec();
                for _ in 0..=rng.below(3) {
                    if b.is_empty() {
                        break;
                    }
                    let i = rng.below(b.len());
                    b[i] = match rng.below(4) {
                        0 => 0xff,
                        1 => 0,
                        _ => rng.next_u64() as u8,
                    };
                }
                b.truncate(b.len() - rng.below(3).min(b.len()));
                let b = Bytes::from(b);
                for d in DECODERS {
                    d(&b);
                }
            }
        }
    }
}
