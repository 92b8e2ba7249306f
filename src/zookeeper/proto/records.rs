//! The records of `zookeeper.jute` (`org.apache.zookeeper.data` and `.proto`) that travel on
//! a client connection after the handshake, in wire order. Field names follow the Java ones
//! in snake_case; a Java field called `type` is `op` in headers and `<what>_type` elsewhere.
//! Records with the same layout share one struct under several names (type aliases).
//!
//! Null buffers are kept (`Option<Bytes>`) where a client or server really sends them — znode
//! data and SASL tokens — so a decoded record re-encodes byte for byte; see
//! [`crate::zookeeper::jute`] for the null rule.

use std::fmt;

use bytes::Bytes;

use crate::zookeeper::jute::{jute_record, Redacted};

jute_record! {
    /// Prefix of every client frame after the connect.
    pub struct RequestHeader {
        pub xid: i32,
        /// The opcode (`type` in Java), see [`super::op`].
        pub op: i32,
    }
}

jute_record! {
    /// Prefix of every server frame after the connect; a body follows only when `err == 0`.
    pub struct ReplyHeader {
        pub xid: i32,
        pub zxid: i64,
        pub err: i32,
    }
}

jute_record! {
    /// A znode's metadata (68 bytes).
    #[derive(Copy)]
    pub struct Stat {
        pub czxid: i64,
        pub mzxid: i64,
        pub ctime: i64,
        pub mtime: i64,
        pub version: i32,
        pub cversion: i32,
        pub aversion: i32,
        pub ephemeral_owner: i64,
        pub data_length: i32,
        pub num_children: i32,
        pub pzxid: i64,
    }
}

jute_record! {
    pub struct Id {
        pub scheme: String,
        pub id: String,
    }
}

jute_record! {
    pub struct Acl {
        /// Bits of [`super::perms`].
        pub perms: i32,
        pub id: Id,
    }
}

jute_record! {
    /// One identity of a session, in a [`WhoAmIResponse`].
    pub struct ClientInfo {
        pub auth_scheme: String,
        pub user: String,
    }
}

// ---- requests -------------------------------------------------------------------------

jute_record! {
    /// create (1), create2 (15), createContainer (19).
    pub struct CreateRequest {
        pub path: String,
        pub data: Option<Bytes>,
        pub acl: Vec<Acl>,
        /// A [`super::create_mode`].
        pub flags: i32,
    }
}

jute_record! {
    /// createTTL (21).
    pub struct CreateTtlRequest {
        pub path: String,
        pub data: Option<Bytes>,
        pub acl: Vec<Acl>,
        pub flags: i32,
        pub ttl: i64,
    }
}

jute_record! {
    /// delete (2); `version == -1` matches any version.
    pub struct DeleteRequest {
        pub path: String,
        pub version: i32,
    }
}

jute_record! {
    /// setData (5).
    pub struct SetDataRequest {
        pub path: String,
        pub data: Option<Bytes>,
        pub version: i32,
    }
}

jute_record! {
    /// setACL (7).
    pub struct SetAclRequest {
        pub path: String,
        pub acl: Vec<Acl>,
        pub version: i32,
    }
}

jute_record! {
    /// check (13), valid only inside a multi.
    pub struct CheckVersionRequest {
        pub path: String,
        pub version: i32,
    }
}

jute_record! {
    /// getData (4).
    pub struct GetDataRequest {
        pub path: String,
        pub watch: bool,
    }
}

jute_record! {
    /// exists (3).
    pub struct ExistsRequest {
        pub path: String,
        pub watch: bool,
    }
}

jute_record! {
    /// getChildren (8) and getChildren2 (12).
    pub struct GetChildrenRequest {
        pub path: String,
        pub watch: bool,
    }
}

/// getChildren2 (12) has the same layout as getChildren.
pub type GetChildren2Request = GetChildrenRequest;

jute_record! {
    /// A request that is only a path: getACL (6), sync (9), getAllChildrenNumber (104),
    /// getEphemerals (103, `prefixPath`).
    pub struct PathRequest {
        pub path: String,
    }
}

pub type GetAclRequest = PathRequest;
pub type SyncRequest = PathRequest;
pub type GetAllChildrenNumberRequest = PathRequest;
pub type GetEphemeralsRequest = PathRequest;

jute_record! {
    /// reconfig (16); the server strings are null when unused.
    pub struct ReconfigRequest {
        pub joining_servers: Option<String>,
        pub leaving_servers: Option<String>,
        pub new_members: Option<String>,
        pub cur_config_id: i64,
    }
}

jute_record! {
    /// checkWatches (17) and removeWatches (18).
    pub struct WatchesRequest {
        pub path: String,
        /// A [`super::watcher_type`].
        pub watcher_type: i32,
    }
}

pub type CheckWatchesRequest = WatchesRequest;
pub type RemoveWatchesRequest = WatchesRequest;

jute_record! {
    /// addWatch (106).
    pub struct AddWatchRequest {
        pub path: String,
        /// An [`super::add_watch_mode`].
        pub mode: i32,
    }
}

jute_record! {
    /// setWatches (101, xid −8): re-arms watches after a reconnect, firing those whose node
    /// changed after `relative_zxid`.
    pub struct SetWatches {
        pub relative_zxid: i64,
        pub data: Vec<String>,
        pub exist: Vec<String>,
        pub child: Vec<String>,
    }
}

jute_record! {
    /// setWatches2 (105, xid −8).
    pub struct SetWatches2 {
        pub relative_zxid: i64,
        pub data: Vec<String>,
        pub exist: Vec<String>,
        pub child: Vec<String>,
        pub persistent: Vec<String>,
        pub persistent_recursive: Vec<String>,
    }
}

jute_record! {
    #[no_debug]
    /// auth (100, xid −4); `auth_type` is always 0. `auth` is a credential (for `digest`,
    /// `user:password`), so `Debug` shows only its length.
    pub struct AuthPacket {
        pub auth_type: i32,
        pub scheme: String,
        pub auth: Bytes,
    }
}

impl fmt::Debug for AuthPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthPacket")
            .field("auth_type", &self.auth_type)
            .field("scheme", &self.scheme)
            .field("auth", &Redacted(&self.auth))
            .finish()
    }
}

jute_record! {
    /// sasl (102) request, `GetSASLRequest`.
    pub struct GetSaslRequest {
        pub token: Option<Bytes>,
    }
}

// ---- responses ------------------------------------------------------------------------

jute_record! {
    /// create (1) and sync (9): the path (for a sequential create, the name chosen).
    pub struct CreateResponse {
        pub path: String,
    }
}

pub type SyncResponse = CreateResponse;

jute_record! {
    /// create2 (15), createContainer (19), createTTL (21).
    pub struct Create2Response {
        pub path: String,
        pub stat: Stat,
    }
}

jute_record! {
    /// A response that is only a `Stat`: setData (5), exists (3), setACL (7).
    pub struct StatResponse {
        pub stat: Stat,
    }
}

pub type SetDataResponse = StatResponse;
pub type ExistsResponse = StatResponse;
pub type SetAclResponse = StatResponse;

jute_record! {
    /// getData (4) and reconfig (16, the new configuration).
    pub struct GetDataResponse {
        pub data: Option<Bytes>,
        pub stat: Stat,
    }
}

jute_record! {
    /// getChildren (8) and getEphemerals (103).
    pub struct GetChildrenResponse {
        pub children: Vec<String>,
    }
}

pub type GetEphemeralsResponse = GetChildrenResponse;

jute_record! {
    /// getChildren2 (12).
    pub struct GetChildren2Response {
        pub children: Vec<String>,
        pub stat: Stat,
    }
}

jute_record! {
    /// getACL (6).
    pub struct GetAclResponse {
        pub acl: Vec<Acl>,
        pub stat: Stat,
    }
}

jute_record! {
    /// An error code as a body: addWatch (106) answers `{0}`; multi error results use it.
    pub struct ErrorResponse {
        pub err: i32,
    }
}

jute_record! {
    /// getAllChildrenNumber (104).
    pub struct GetAllChildrenNumberResponse {
        pub total_number: i32,
    }
}

jute_record! {
    /// sasl (102) response, `SetSASLResponse`; the server sends a null token once done.
    pub struct SetSaslResponse {
        pub token: Option<Bytes>,
    }
}

jute_record! {
    /// whoAmI (107).
    pub struct WhoAmIResponse {
        pub client_info: Vec<ClientInfo>,
    }
}

jute_record! {
    /// The body of a notification (`ReplyHeader{xid: -1, zxid, err: 0}`).
    pub struct WatcherEvent {
        /// A [`super::event`] type.
        pub event_type: i32,
        /// A [`super::state`].
        pub state: i32,
        pub path: String,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::zookeeper::jute::{JuteError, Reader, Record};
    use crate::zookeeper::proto::{create_mode, event, perms, state, xid};
    use std::fmt::Debug;

    fn cat(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    /// `RequestHeader{xid 1, create}` + `CreateRequest` with OPEN_ACL_UNSAFE.
    pub fn create_frame() -> Bytes {
        cat(&[
            b"\x00\x00\x00\x01",           // xid 1
            b"\x00\x00\x00\x01",           // op create
            b"\x00\x00\x00\x0a/app/lock-", // path
            b"\x00\x00\x00\x02hi",         // data
            b"\x00\x00\x00\x01",           // acl: 1 entry
            b"\x00\x00\x00\x1f",           //   perms ALL
            b"\x00\x00\x00\x05world",      //   scheme
            b"\x00\x00\x00\x06anyone",     //   id
            b"\x00\x00\x00\x03",           // flags EPHEMERAL_SEQUENTIAL
        ])
    }

    /// `ReplyHeader{-1, zxid, 0}` + `WatcherEvent{NodeDataChanged, SyncConnected, "/cfg"}`.
    pub fn notification_frame() -> Bytes {
        cat(&[
            b"\xff\xff\xff\xff",                 // xid -1
            b"\x00\x00\x00\x02\x00\x00\x00\x10", // zxid
            b"\x00\x00\x00\x00",                 // err 0
            b"\x00\x00\x00\x03",                 // type NodeDataChanged
            b"\x00\x00\x00\x03",                 // state SyncConnected
            b"\x00\x00\x00\x04/cfg",             // path
        ])
    }

    pub fn set_watches2() -> Bytes {
        cat(&[
            b"\x00\x00\x00\x00\x00\x00\x00\x2a", // relativeZxid 42
            b"\x00\x00\x00\x01",                 // dataWatches: 1
            b"\x00\x00\x00\x02/a",
            b"\x00\x00\x00\x00", // existWatches: 0
            b"\x00\x00\x00\x02", // childWatches: 2
            b"\x00\x00\x00\x01/",
            b"\x00\x00\x00\x02/b",
            b"\x00\x00\x00\x00", // persistentWatches: 0
            b"\x00\x00\x00\x01", // persistentRecursiveWatches: 1
            b"\x00\x00\x00\x04/app",
        ])
    }

    /// Valid encodings (whole bodies or frames) for the mutation tests.
    pub fn samples() -> Vec<Bytes> {
        vec![
            create_frame(),
            create_frame().slice(8..),
            notification_frame(),
            notification_frame().slice(16..),
            set_watches2(),
            sample_stat().to_bytes(),
        ]
    }

    fn sample_stat() -> Stat {
        Stat {
            czxid: 0x1_0000_0002,
            mzxid: 0x1_0000_0007,
            ctime: 1_700_000_000_000,
            mtime: 1_700_000_000_500,
            version: 3,
            cversion: 1,
            aversion: 0,
            ephemeral_owner: 0x0100_00a8_9b3c_0002,
            data_length: 2,
            num_children: 1,
            pzxid: 0x1_0000_0005,
        }
    }

    /// `encode(decode(b)) == b` and nothing is left over.
    fn exact<T: Record + Debug>(b: &[u8]) -> T {
        let mut r = Reader::new(b);
        let v = T::decode(&mut r).unwrap();
        assert!(r.is_empty(), "{} bytes left after {v:?}", r.remaining());
        assert_eq!(&v.to_bytes()[..], b, "re-encoding {v:?}");
        v
    }

    /// `decode(encode(v)) == v`.
    fn round_trip<T: Record + PartialEq + Debug>(v: T) {
        assert_eq!(T::from_bytes(&v.to_bytes()), Ok(v));
    }

    /// Every strict prefix shorter than `complete_at` is `Truncated`.
    fn truncations<T: Record + Debug>(b: &[u8], complete_at: usize) {
        for cut in 0..complete_at {
            let got = T::decode(&mut Reader::new(&b[..cut]));
            assert_eq!(got.unwrap_err(), JuteError::Truncated, "cut at {cut}");
        }
    }

    #[test]
    fn reply_headers() {
        // The ping reply seen from a 3.8.0 server: xid -2, zxid = last zxid, err 0.
        let ping = b"\xff\xff\xff\xfe\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00";
        let h: ReplyHeader = exact(ping);
        assert_eq!(
            h,
            ReplyHeader {
                xid: xid::PING,
                zxid: 4,
                err: 0
            }
        );
        // What the proxy sends for a frozen write.
        let nro = ReplyHeader {
            xid: 7,
            zxid: 0x1_0000_0009,
            err: -119,
        };
        assert_eq!(
            &nro.to_bytes()[..],
            b"\x00\x00\x00\x07\x00\x00\x00\x01\x00\x00\x00\x09\xff\xff\xff\x89"
        );
        truncations::<ReplyHeader>(ping, ping.len());
        let rq: RequestHeader = exact(b"\x00\x00\x00\x05\x00\x00\x00\x0e");
        assert_eq!(rq, RequestHeader { xid: 5, op: 14 });
    }

    #[test]
    fn create_request_frame() {
        let f = create_frame();
        let mut r = Reader::from_bytes(&f);
        let h: RequestHeader = r.read().unwrap();
        assert_eq!(h, RequestHeader { xid: 1, op: 1 });
        let c: CreateRequest = r.read().unwrap();
        assert!(r.is_empty());
        let want = CreateRequest {
            path: "/app/lock-".into(),
            data: Some(Bytes::from_static(b"hi")),
            acl: vec![Acl {
                perms: perms::ALL,
                id: Id {
                    scheme: "world".into(),
                    id: "anyone".into(),
                },
            }],
            flags: create_mode::EPHEMERAL_SEQUENTIAL,
        };
        assert_eq!(c, want);
        exact::<CreateRequest>(&f[8..]);
        truncations::<CreateRequest>(&f[8..], f.len() - 8);
        // Data is zero-copy out of the frame.
        let data = c.data.unwrap();
        assert_eq!(data.as_ptr(), f[8 + 14 + 4..].as_ptr());
    }

    #[test]
    fn null_data_survives() {
        // `zkCli create /a` and `create(path, null, …)` send a null buffer.
        let c = CreateRequest {
            path: "/a".into(),
            data: None,
            ..Default::default()
        };
        let b = c.to_bytes();
        assert_eq!(&b[6..10], b"\xff\xff\xff\xff");
        assert_eq!(exact::<CreateRequest>(&b), c);
        let empty = CreateRequest {
            data: Some(Bytes::new()),
            ..c.clone()
        };
        assert_ne!(empty.to_bytes(), b);
    }

    #[test]
    fn watcher_event_notification() {
        let f = notification_frame();
        let mut r = Reader::new(&f);
        let h: ReplyHeader = r.read().unwrap();
        assert_eq!(
            h,
            ReplyHeader {
                xid: xid::NOTIFICATION,
                zxid: 0x2_0000_0010,
                err: 0
            }
        );
        let e: WatcherEvent = r.read().unwrap();
        assert!(r.is_empty());
        assert_eq!(
            e,
            WatcherEvent {
                event_type: event::NODE_DATA_CHANGED,
                state: state::SYNC_CONNECTED,
                path: "/cfg".into(),
            }
        );
        exact::<WatcherEvent>(&f[16..]);
        truncations::<WatcherEvent>(&f[16..], f.len() - 16);
    }

    #[test]
    fn set_watches2_layout() {
        let b = set_watches2();
        let s: SetWatches2 = exact(&b);
        assert_eq!(s.relative_zxid, 42);
        assert_eq!(s.data, ["/a"]);
        assert!(s.exist.is_empty());
        assert_eq!(s.child, ["/", "/b"]);
        assert!(s.persistent.is_empty());
        assert_eq!(s.persistent_recursive, ["/app"]);
        truncations::<SetWatches2>(&b, b.len());
        // setWatches (v1) is the first four fields.
        let v1_len = b.len() - 4 - 4 - 8;
        let v1: SetWatches = exact(&b[..v1_len]);
        assert_eq!(v1.child, s.child);
    }

    #[test]
    fn stat_is_68_bytes_in_field_order() {
        let b = sample_stat().to_bytes();
        assert_eq!(b.len(), 68);
        assert_eq!(&b[..8], b"\x00\x00\x00\x01\x00\x00\x00\x02"); // czxid first
        assert_eq!(&b[32..36], b"\x00\x00\x00\x03"); // version after the 4 longs
        assert_eq!(&b[60..], b"\x00\x00\x00\x01\x00\x00\x00\x05"); // pzxid last
        truncations::<Stat>(&b, 68);
        let gd = cat(&[b"\x00\x00\x00\x02hi", &b]);
        let g: GetDataResponse = exact(&gd);
        assert_eq!(g.stat, sample_stat());
    }

    #[test]
    fn every_record_round_trips() {
        let stat = sample_stat();
        let acl = vec![Acl {
            perms: perms::READ | perms::WRITE,
            id: Id {
                scheme: "digest".into(),
                id: "u:hash".into(),
            },
        }];
        let data = Some(Bytes::from_static(b"\x00v\xff"));
        round_trip(RequestHeader {
            xid: i32::MAX,
            op: -11,
        });
        round_trip(ReplyHeader {
            xid: -8,
            zxid: -1,
            err: -112,
        });
        round_trip(stat);
        round_trip(CreateRequest {
            path: "/x".into(),
            data: data.clone(),
            acl: acl.clone(),
            flags: 4,
        });
        round_trip(CreateTtlRequest {
            path: "/t".into(),
            data: None,
            acl: acl.clone(),
            flags: 5,
            ttl: 60_000,
        });
        round_trip(DeleteRequest {
            path: "/x".into(),
            version: -1,
        });
        round_trip(SetDataRequest {
            path: "/x".into(),
            data: data.clone(),
            version: 3,
        });
        round_trip(SetAclRequest {
            path: "/x".into(),
            acl: acl.clone(),
            version: 0,
        });
        round_trip(CheckVersionRequest {
            path: "/x".into(),
            version: 9,
        });
        round_trip(GetDataRequest {
            path: "/x".into(),
            watch: true,
        });
        round_trip(ExistsRequest {
            path: "/x".into(),
            watch: false,
        });
        round_trip(GetChildren2Request {
            path: "/".into(),
            watch: true,
        });
        round_trip(SyncRequest { path: "/".into() });
        round_trip(ReconfigRequest {
            joining_servers: Some("server.4=h:2888:3888".into()),
            cur_config_id: -1,
            ..Default::default()
        });
        round_trip(RemoveWatchesRequest {
            path: "/x".into(),
            watcher_type: 3,
        });
        round_trip(AddWatchRequest {
            path: "/x".into(),
            mode: 1,
        });
        round_trip(SetWatches {
            relative_zxid: 1,
            data: vec!["/a".into()],
            exist: vec![],
            child: vec!["/".into()],
        });
        round_trip(AuthPacket {
            auth_type: 0,
            scheme: "digest".into(),
            auth: Bytes::from_static(b"u:p"),
        });
        let auth = AuthPacket {
            auth_type: 0,
            scheme: "digest".into(),
            auth: Bytes::from_static(b"user:secret"),
        };
        assert!(!format!("{auth:?}").contains("secret"));
        round_trip(GetSaslRequest { token: None });
        round_trip(SetSaslResponse {
            token: Some(Bytes::from_static(b"tok")),
        });
        round_trip(CreateResponse {
            path: "/app/lock-0000000001".into(),
        });
        round_trip(Create2Response {
            path: "/x".into(),
            stat,
        });
        round_trip(SetDataResponse { stat });
        round_trip(GetDataResponse { data: None, stat });
        round_trip(GetChildrenResponse {
            children: vec!["a".into(), "b".into()],
        });
        round_trip(GetChildren2Response {
            children: vec![],
            stat,
        });
        round_trip(GetAclResponse { acl, stat });
        round_trip(ErrorResponse { err: -101 });
        round_trip(GetAllChildrenNumberResponse { total_number: 12 });
        round_trip(WhoAmIResponse {
            client_info: vec![ClientInfo {
                auth_scheme: "ip".into(),
                user: "127.0.0.1".into(),
            }],
        });
        round_trip(WatcherEvent {
            event_type: -1,
            state: -112,
            path: String::new(),
        });
    }

    #[test]
    fn refuses_null_paths_and_oversized_fields() {
        let null_path = b"\xff\xff\xff\xff\x00\x00\x00\x00";
        assert_eq!(
            DeleteRequest::from_bytes(&Bytes::from_static(null_path)),
            Err(JuteError::Null)
        );
        let mut r = Reader::new(b"\x00\x00\x00\x10").with_max(15);
        assert_eq!(
            r.read::<Bytes>(),
            Err(JuteError::TooLarge { len: 16, max: 15 })
        );
        let huge_acl = b"\x00\x00\x00\x01/\x00\x00\x00\x00\x7f\xff\xff\xff";
        assert!(matches!(
            CreateRequest::from_bytes(&Bytes::from_static(huge_acl)),
            Err(JuteError::TooLarge { .. })
        ));
    }
}
