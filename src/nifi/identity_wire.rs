//! Reads failed over to the follower, through the state identity map: region 1's NiFi asks
//! for its own ids, the follower holds the state under region 2's, so the request is
//! rewritten on its way to the follower. Replies to `GET` / `getData` / `exists` carry no key
//! names, so nothing is mapped back. Not mapped back (documented): `KEYS`/`SCAN` replies and
//! `getChildren` of `…/components` list region 2's ids; watch notifications name the
//! follower's paths (NiFi's state provider sets no watches).

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::identity::IdentityMap;
use crate::redis::resp::Request;
use crate::zookeeper::proto::op;

/// A Redis request for the follower: every argument after the command name that is a NiFi
/// state key (`<prefix><mapped id>`) is renamed; anything else goes out as sent.
pub fn redis_request<'a>(map: &IdentityMap, prefix: &str, req: &'a Request) -> Cow<'a, [u8]> {
    if map.is_empty() {
        return Cow::Borrowed(&req.raw[..]);
    }
    let args: Vec<Cow<'_, [u8]>> = req
        .args()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 {
                Cow::Borrowed(a)
            } else {
                map.map_key(prefix, a)
            }
        })
        .collect();
    if args.iter().all(|a| matches!(a, Cow::Borrowed(_))) {
        return Cow::Borrowed(&req.raw[..]);
    }
    let mut out = BytesMut::with_capacity(req.raw.len() + 64);
    let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
    crate::redis::backend::encode_cmd(&mut out, &refs);
    Cow::Owned(out.to_vec())
}

/// A ZooKeeper read for the follower (a frame without its length prefix: request header,
/// then the body). Ops whose body starts with a path get it through `map_path`; `None`
/// when nothing changes.
pub fn zk_request(map: &IdentityMap, frame: &[u8], opcode: i32) -> Option<bytes::Bytes> {
    if map.is_empty()
        || !matches!(
            opcode,
            op::EXISTS
                | op::GET_DATA
                | op::GET_ACL
                | op::GET_CHILDREN
                | op::GET_CHILDREN2
                | op::SYNC
                | op::GET_ALL_CHILDREN_NUMBER
                | op::ADD_WATCH
        )
    {
        return None;
    }
    let len_at = 8;
    let len = i32::from_be_bytes(frame.get(len_at..len_at + 4)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let path_end = len_at + 4 + len;
    let path = std::str::from_utf8(frame.get(len_at + 4..path_end)?).ok()?;
    let Cow::Owned(mapped) = map.map_path(path) else {
        return None;
    };
    let mut out = BytesMut::with_capacity(frame.len() + mapped.len());
    out.put_slice(&frame[..len_at]);
    out.put_i32(i32::try_from(mapped.len()).ok()?);
    out.put_slice(mapped.as_bytes());
    out.put_slice(frame.get(path_end..)?);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifi::identity::Entry;

    fn map() -> IdentityMap {
        IdentityMap::new([Entry {
            leader: "aaa".into(),
            follower: "bbbb".into(),
            name: None,
            group: None,
        }])
        .unwrap()
    }

    #[test]
    fn redis_reads_name_nifi_keys_only() {
        let lim = crate::redis::resp::Limits {
            max_request_bytes: 1 << 20,
            max_args: 64,
        };
        let req = |args: &[&[u8]]| {
            let mut b = BytesMut::new();
            crate::redis::backend::encode_cmd(&mut b, args);
            crate::redis::resp::parse_request(&mut b, &lim)
                .unwrap()
                .unwrap()
        };
        let m = map();
        let p = "nifi/components/";
        let get = req(&[b"GET", b"nifi/components/aaa"]);
        let out = redis_request(&m, p, &get);
        let mut want = BytesMut::new();
        crate::redis::backend::encode_cmd(&mut want, &[b"GET", b"nifi/components/bbbb"]);
        assert_eq!(&out[..], &want[..]);
        let mget = req(&[b"MGET", b"x", b"nifi/components/aaa", b"nifi/components/zz"]);
        let mut want = BytesMut::new();
        crate::redis::backend::encode_cmd(
            &mut want,
            &[
                b"MGET",
                b"x",
                b"nifi/components/bbbb",
                b"nifi/components/zz",
            ],
        );
        assert_eq!(&redis_request(&m, p, &mget)[..], &want[..]);
        for same in [
            req(&[b"GET", b"other/aaa"]),
            req(&[b"GET", b"aaa"]),
            req(&[b"nifi/components/aaa"]),
        ] {
            assert!(matches!(redis_request(&m, p, &same), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn zk_reads_are_renamed_only_in_the_layout() {
        let frame = |path: &str| {
            let mut f = BytesMut::new();
            f.put_i32(7);
            f.put_i32(op::GET_DATA);
            f.put_i32(path.len() as i32);
            f.put_slice(path.as_bytes());
            f.put_u8(0);
            f.to_vec()
        };
        let m = map();
        let out = zk_request(&m, &frame("/nifi/components/aaa"), op::GET_DATA).unwrap();
        assert_eq!(&out[..], &frame("/nifi/components/bbbb")[..]);
        assert!(zk_request(&m, &frame("/nifi/other/aaa"), op::GET_DATA).is_none());
        assert!(zk_request(&m, &frame("/nifi/components/aaa"), op::SET_DATA).is_none());
        assert!(zk_request(&m, &frame("/nifi/components/aaa")[..10], op::GET_DATA).is_none());
    }
}
