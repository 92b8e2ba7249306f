//! `multi` (14) and `multiRead` (22) bodies (`MultiOperationRecord`, `MultiResponse`).
//!
//! Neither is a plain jute record: each operation is a [`MultiHeader`] `{type, done=false,
//! err=-1}` followed by that operation's request record, and the list ends with a header
//! whose `done` is true — always written as `{-1, true, -1}`. Results mirror this: each is
//! `{type, false, err}` followed by the op's response record, or by `ErrorResponse{err}`
//! when `type == -1`.
//!
//! A failed transaction is not an error reply: the `ReplyHeader.err` is 0 and *every* result
//! is an error result — 0 for the ops before the failing one, its code for the failing op,
//! RUNTIMEINCONSISTENCY (−2) after it. So "did the leader apply this multi" (the mirror's
//! question) is [`MultiResponse::first_error`]` == None`.
//!
//! Decoding follows the Java readers: the list ends at the first header with `done` set
//! (whatever its type and err), the `err` of request headers is ignored, and an error
//! result's code is taken from its `ErrorResponse` body. Encoding writes the canonical form,
//! so only inputs that deviate from it in those ignored fields re-encode differently. As in
//! Java's `MultiResponse`, a `createTTL`/`createContainer` op is answered as `create2`.
//! Mixing read and write ops (which the server refuses) is not checked here.

use bytes::Bytes;

use super::op;
use super::records::{
    CheckVersionRequest, CreateRequest, CreateTtlRequest, DeleteRequest, GetChildrenRequest,
    GetDataRequest, SetDataRequest, Stat,
};
use crate::zookeeper::jute::{jute_record, JuteError, Reader, Record, Writer};

jute_record! {
    /// Tags each operation and result of a multi.
    #[derive(Copy)]
    pub struct MultiHeader {
        /// The opcode, or −1 for an error result or the end marker.
        pub op: i32,
        pub done: bool,
        pub err: i32,
    }
}

impl MultiHeader {
    /// Ends both lists.
    pub const END: MultiHeader = MultiHeader {
        op: -1,
        done: true,
        err: -1,
    };
}

/// One operation of a multi; the variant is the opcode of its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiOp {
    Create(CreateRequest),
    Create2(CreateRequest),
    CreateTtl(CreateTtlRequest),
    CreateContainer(CreateRequest),
    Delete(DeleteRequest),
    SetData(SetDataRequest),
    Check(CheckVersionRequest),
    /// multiRead only.
    GetData(GetDataRequest),
    /// multiRead only.
    GetChildren(GetChildrenRequest),
}

impl MultiOp {
    /// The opcode written in this op's header.
    pub fn op(&self) -> i32 {
        match self {
            MultiOp::Create(_) => op::CREATE,
            MultiOp::Create2(_) => op::CREATE2,
            MultiOp::CreateTtl(_) => op::CREATE_TTL,
            MultiOp::CreateContainer(_) => op::CREATE_CONTAINER,
            MultiOp::Delete(_) => op::DELETE,
            MultiOp::SetData(_) => op::SET_DATA,
            MultiOp::Check(_) => op::CHECK,
            MultiOp::GetData(_) => op::GET_DATA,
            MultiOp::GetChildren(_) => op::GET_CHILDREN,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            MultiOp::Create(c) | MultiOp::Create2(c) | MultiOp::CreateContainer(c) => &c.path,
            MultiOp::CreateTtl(c) => &c.path,
            MultiOp::Delete(d) => &d.path,
            MultiOp::SetData(s) => &s.path,
            MultiOp::Check(c) => &c.path,
            MultiOp::GetData(g) => &g.path,
            MultiOp::GetChildren(g) => &g.path,
        }
    }

    fn decode_body(op: i32, r: &mut Reader<'_>) -> Result<Self, JuteError> {
        Ok(match op {
            op::CREATE => MultiOp::Create(r.read()?),
            op::CREATE2 => MultiOp::Create2(r.read()?),
            op::CREATE_TTL => MultiOp::CreateTtl(r.read()?),
            op::CREATE_CONTAINER => MultiOp::CreateContainer(r.read()?),
            op::DELETE => MultiOp::Delete(r.read()?),
            op::SET_DATA => MultiOp::SetData(r.read()?),
            op::CHECK => MultiOp::Check(r.read()?),
            op::GET_DATA => MultiOp::GetData(r.read()?),
            op::GET_CHILDREN => MultiOp::GetChildren(r.read()?),
            other => return Err(JuteError::UnknownOp(other)),
        })
    }

    fn encode_body(&self, w: &mut Writer) {
        match self {
            MultiOp::Create(c) | MultiOp::Create2(c) | MultiOp::CreateContainer(c) => w.write(c),
            MultiOp::CreateTtl(c) => w.write(c),
            MultiOp::Delete(d) => w.write(d),
            MultiOp::SetData(s) => w.write(s),
            MultiOp::Check(c) => w.write(c),
            MultiOp::GetData(g) => w.write(g),
            MultiOp::GetChildren(g) => w.write(g),
        }
    }
}

/// The body of a multi (14) or multiRead (22) request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultiRequest {
    pub ops: Vec<MultiOp>,
}

impl Record for MultiRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        let mut ops = Vec::new();
        loop {
            let h: MultiHeader = r.read()?;
            if h.done {
                return Ok(MultiRequest { ops });
            }
            ops.push(MultiOp::decode_body(h.op, r)?);
        }
    }

    fn encode(&self, w: &mut Writer) {
        for o in &self.ops {
            w.write(&MultiHeader {
                op: o.op(),
                done: false,
                err: -1,
            });
            o.encode_body(w);
        }
        w.write(&MultiHeader::END);
    }
}

/// One result of a multi; the variant is the opcode of its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiResult {
    Create {
        path: String,
    },
    /// Also the answer to createTTL and createContainer.
    Create2 {
        path: String,
        stat: Stat,
    },
    Delete,
    SetData {
        stat: Stat,
    },
    Check,
    GetData {
        data: Option<Bytes>,
        stat: Stat,
    },
    GetChildren {
        children: Vec<String>,
    },
    /// Header type −1. `err` may be 0: the ops before the failing one in a failed multi.
    Error {
        err: i32,
    },
}

impl MultiResult {
    /// The opcode written in this result's header.
    pub fn op(&self) -> i32 {
        match self {
            MultiResult::Create { .. } => op::CREATE,
            MultiResult::Create2 { .. } => op::CREATE2,
            MultiResult::Delete => op::DELETE,
            MultiResult::SetData { .. } => op::SET_DATA,
            MultiResult::Check => op::CHECK,
            MultiResult::GetData { .. } => op::GET_DATA,
            MultiResult::GetChildren { .. } => op::GET_CHILDREN,
            MultiResult::Error { .. } => op::ERROR,
        }
    }

    /// The error code of this result (0 for every success).
    pub fn err(&self) -> i32 {
        match self {
            MultiResult::Error { err } => *err,
            _ => 0,
        }
    }

    fn decode_body(op: i32, r: &mut Reader<'_>) -> Result<Self, JuteError> {
        Ok(match op {
            op::CREATE => MultiResult::Create { path: r.read()? },
            op::CREATE2 => MultiResult::Create2 {
                path: r.read()?,
                stat: r.read()?,
            },
            op::DELETE => MultiResult::Delete,
            op::SET_DATA => MultiResult::SetData { stat: r.read()? },
            op::CHECK => MultiResult::Check,
            op::GET_DATA => MultiResult::GetData {
                data: r.read()?,
                stat: r.read()?,
            },
            op::GET_CHILDREN => MultiResult::GetChildren {
                children: r.read()?,
            },
            op::ERROR => MultiResult::Error { err: r.read()? },
            other => return Err(JuteError::UnknownOp(other)),
        })
    }

    fn encode_body(&self, w: &mut Writer) {
        match self {
            MultiResult::Create { path } => w.write(path),
            MultiResult::Create2 { path, stat } => {
                w.write(path);
                w.write(stat);
            }
            MultiResult::Delete | MultiResult::Check => {}
            MultiResult::SetData { stat } => w.write(stat),
            MultiResult::GetData { data, stat } => {
                w.write(data);
                w.write(stat);
            }
            MultiResult::GetChildren { children } => w.write(children),
            MultiResult::Error { err } => w.write_int(*err),
        }
    }
}

/// The body of a successful (`ReplyHeader.err == 0`) multi or multiRead reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultiResponse {
    pub results: Vec<MultiResult>,
}

impl MultiResponse {
    /// The first non-zero error code: `None` means every op succeeded (for multi: the
    /// transaction was applied).
    pub fn first_error(&self) -> Option<i32> {
        self.results.iter().map(MultiResult::err).find(|&e| e != 0)
    }
}

impl Record for MultiResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        let mut results = Vec::new();
        loop {
            let h: MultiHeader = r.read()?;
            if h.done {
                return Ok(MultiResponse { results });
            }
            results.push(MultiResult::decode_body(h.op, r)?);
        }
    }

    fn encode(&self, w: &mut Writer) {
        for res in &self.results {
            w.write(&MultiHeader {
                op: res.op(),
                done: false,
                err: res.err(),
            });
            res.encode_body(w);
        }
        w.write(&MultiHeader::END);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::zookeeper::proto::records::{Acl, Id};
    use crate::zookeeper::proto::{err, perms};

    fn cat(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    const END: &[u8] = b"\xff\xff\xff\xff\x01\xff\xff\xff\xff"; // {-1, true, -1}

    fn stat() -> Stat {
        Stat {
            mzxid: 0x3_0000_0001,
            version: 4,
            data_length: 1,
            ..Stat::default()
        }
    }

    /// create /a, setData /b (version 3), check /c (version 7), delete /d (any version).
    pub fn multi_request() -> Bytes {
        cat(&[
            b"\x00\x00\x00\x01\x00\xff\xff\xff\xff", // {create, false, -1}
            b"\x00\x00\x00\x02/a",                   //   path
            b"\x00\x00\x00\x01x",                    //   data
            b"\x00\x00\x00\x01",                     //   acl: 1 entry
            b"\x00\x00\x00\x1f",                     //     perms ALL
            b"\x00\x00\x00\x05world",                //     scheme
            b"\x00\x00\x00\x06anyone",               //     id
            b"\x00\x00\x00\x00",                     //   flags PERSISTENT
            b"\x00\x00\x00\x05\x00\xff\xff\xff\xff", // {setData, false, -1}
            b"\x00\x00\x00\x02/b",                   //   path
            b"\x00\x00\x00\x01y",                    //   data
            b"\x00\x00\x00\x03",                     //   version 3
            b"\x00\x00\x00\x0d\x00\xff\xff\xff\xff", // {check, false, -1}
            b"\x00\x00\x00\x02/c",                   //   path
            b"\x00\x00\x00\x07",                     //   version 7
            b"\x00\x00\x00\x02\x00\xff\xff\xff\xff", // {delete, false, -1}
            b"\x00\x00\x00\x02/d",                   //   path
            b"\xff\xff\xff\xff",                     //   version -1
            END,
        ])
    }

    /// The reply when all four ops were applied.
    pub fn multi_ok_response() -> Bytes {
        cat(&[
            b"\x00\x00\x00\x01\x00\x00\x00\x00\x00", // {create, false, 0}
            b"\x00\x00\x00\x02/a",                   //   path
            b"\x00\x00\x00\x05\x00\x00\x00\x00\x00", // {setData, false, 0}
            &stat().to_bytes(),                      //   stat
            b"\x00\x00\x00\x0d\x00\x00\x00\x00\x00", // {check, false, 0}
            b"\x00\x00\x00\x02\x00\x00\x00\x00\x00", // {delete, false, 0}
            END,
        ])
    }

    /// The reply when setData failed with BADVERSION: every result is an error result.
    pub fn multi_failed_response() -> Bytes {
        cat(&[
            b"\xff\xff\xff\xff\x00\x00\x00\x00\x00", // {error, false, 0}
            b"\x00\x00\x00\x00",                     //   err 0 (rolled back)
            b"\xff\xff\xff\xff\x00\xff\xff\xff\x99", // {error, false, -103}
            b"\xff\xff\xff\x99",                     //   err BADVERSION
            b"\xff\xff\xff\xff\x00\xff\xff\xff\xfe", // {error, false, -2}
            b"\xff\xff\xff\xfe",                     //   err RUNTIMEINCONSISTENCY
            b"\xff\xff\xff\xff\x00\xff\xff\xff\xfe", // {error, false, -2}
            b"\xff\xff\xff\xfe",                     //   err RUNTIMEINCONSISTENCY
            END,
        ])
    }

    /// A multiRead reply: getData /a, a failed getData /missing, getChildren /.
    pub fn multi_read_response() -> Bytes {
        cat(&[
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", // {getData, false, 0}
            b"\x00\x00\x00\x01v",                    //   data
            &stat().to_bytes(),                      //   stat
            b"\xff\xff\xff\xff\x00\xff\xff\xff\x9b", // {error, false, -101}
            b"\xff\xff\xff\x9b",                     //   err NONODE
            b"\x00\x00\x00\x08\x00\x00\x00\x00\x00", // {getChildren, false, 0}
            b"\x00\x00\x00\x01",                     //   children: 1
            b"\x00\x00\x00\x01a",
            END,
        ])
    }

    pub fn samples() -> Vec<Bytes> {
        vec![
            multi_request(),
            multi_ok_response(),
            multi_failed_response(),
            multi_read_response(),
        ]
    }

    fn exact<T: Record + std::fmt::Debug>(b: &Bytes) -> T {
        let mut r = Reader::from_bytes(b);
        let v = T::decode(&mut r).unwrap();
        assert!(r.is_empty(), "{} bytes left", r.remaining());
        assert_eq!(v.to_bytes(), *b, "re-encoding {v:?}");
        for cut in 0..b.len() {
            let got = T::decode(&mut Reader::new(&b[..cut]));
            assert_eq!(got.unwrap_err(), JuteError::Truncated, "cut at {cut}");
        }
        v
    }

    #[test]
    fn multi_request_layout() {
        let m: MultiRequest = exact(&multi_request());
        let want = vec![
            MultiOp::Create(CreateRequest {
                path: "/a".into(),
                data: Some(Bytes::from_static(b"x")),
                acl: vec![Acl {
                    perms: perms::ALL,
                    id: Id {
                        scheme: "world".into(),
                        id: "anyone".into(),
                    },
                }],
                flags: 0,
            }),
            MultiOp::SetData(SetDataRequest {
                path: "/b".into(),
                data: Some(Bytes::from_static(b"y")),
                version: 3,
            }),
            MultiOp::Check(CheckVersionRequest {
                path: "/c".into(),
                version: 7,
            }),
            MultiOp::Delete(DeleteRequest {
                path: "/d".into(),
                version: -1,
            }),
        ];
        assert_eq!(m.ops, want);
        let ops: Vec<_> = m.ops.iter().map(|o| (o.op(), o.path())).collect();
        assert_eq!(ops, [(1, "/a"), (5, "/b"), (13, "/c"), (2, "/d")]);
    }

    #[test]
    fn multi_responses() {
        let ok: MultiResponse = exact(&multi_ok_response());
        assert_eq!(
            ok.results,
            [
                MultiResult::Create { path: "/a".into() },
                MultiResult::SetData { stat: stat() },
                MultiResult::Check,
                MultiResult::Delete,
            ]
        );
        assert_eq!(ok.first_error(), None);

        let failed: MultiResponse = exact(&multi_failed_response());
        let errs: Vec<_> = failed.results.iter().map(MultiResult::err).collect();
        assert_eq!(errs, [0, err::BAD_VERSION, -2, -2]);
        assert!(failed.results.iter().all(|r| r.op() == op::ERROR));
        assert_eq!(failed.first_error(), Some(err::BAD_VERSION));

        let read: MultiResponse = exact(&multi_read_response());
        assert_eq!(
            read.results,
            [
                MultiResult::GetData {
                    data: Some(Bytes::from_static(b"v")),
                    stat: stat()
                },
                MultiResult::Error { err: err::NO_NODE },
                MultiResult::GetChildren {
                    children: vec!["a".into()]
                },
            ]
        );
        assert_eq!(read.first_error(), Some(err::NO_NODE));
    }

    #[test]
    fn empty_multi_is_just_the_end_marker() {
        let empty: MultiRequest = exact(&Bytes::from_static(END));
        assert!(empty.ops.is_empty());
        let empty: MultiResponse = exact(&Bytes::from_static(END));
        assert!(empty.results.is_empty());
    }

    #[test]
    fn other_variants_round_trip() {
        let req = MultiRequest {
            ops: vec![
                MultiOp::Create2(CreateRequest::default()),
                MultiOp::CreateTtl(CreateTtlRequest {
                    path: "/t".into(),
                    ttl: 1000,
                    flags: 5,
                    ..Default::default()
                }),
                MultiOp::CreateContainer(CreateRequest {
                    path: "/c".into(),
                    flags: 4,
                    ..Default::default()
                }),
                MultiOp::GetData(GetDataRequest {
                    path: "/g".into(),
                    watch: false,
                }),
                MultiOp::GetChildren(GetChildrenRequest {
                    path: "/".into(),
                    watch: false,
                }),
            ],
        };
        assert_eq!(MultiRequest::from_bytes(&req.to_bytes()), Ok(req));
        let res = MultiResponse {
            results: vec![MultiResult::Create2 {
                path: "/c".into(),
                stat: stat(),
            }],
        };
        assert_eq!(MultiResponse::from_bytes(&res.to_bytes()), Ok(res));
    }

    #[test]
    fn done_flag_ends_the_list_and_unknown_ops_are_refused() {
        // Java stops at `done` whatever the type; the canonical marker is re-encoded.
        let odd_end = Bytes::from_static(b"\x00\x00\x00\x00\x01\x00\x00\x00\x00");
        assert_eq!(
            MultiRequest::from_bytes(&odd_end),
            Ok(MultiRequest::default())
        );
        // setACL (7) cannot be inside a multi.
        let set_acl = Bytes::from_static(b"\x00\x00\x00\x07\x00\xff\xff\xff\xff");
        assert_eq!(
            MultiRequest::from_bytes(&set_acl),
            Err(JuteError::UnknownOp(7))
        );
        let bad_result = Bytes::from_static(b"\x00\x00\x00\x0e\x00\x00\x00\x00\x00");
        assert_eq!(
            MultiResponse::from_bytes(&bad_result),
            Err(JuteError::UnknownOp(14))
        );
    }
}
