//! ZooKeeper framing and every request record on arbitrary bytes: never a panic, frames
//! independent of read sizes, and whatever decodes re-encodes to a value that decodes the
//! same (with the same length).
#![no_main]

// The decoders' own source, compiled into this crate (they depend on `bytes` and
// `thiserror` only; building the whole proxy instrumented would cost minutes). The module
// tree matches the proxy's, so their `crate::zookeeper::…` paths resolve.
#[allow(dead_code, unused_imports)]
#[path = "../src/zookeeper.rs"]
mod zookeeper;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use zookeeper::frame::{four_letter_word, next_frame};
use zookeeper::jute::{Reader, Record};
use zookeeper::proto::*;

const MAX: usize = 4096;

fn frames(input: &[u8], chunk: usize) -> (Vec<Bytes>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match next_frame(&mut buf, MAX) {
                Ok(Some(f)) => {
                    assert!(f.len() <= MAX);
                    out.push(f);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

/// Decodes `T` from `r`; what decodes must survive encode∘decode with the same length.
fn check<T: Record + PartialEq + std::fmt::Debug>(r: &mut Reader<'_>) {
    let before = r.remaining();
    if let Ok(v) = T::decode(r) {
        let bytes = v.to_bytes();
        assert_eq!(bytes.len(), before - r.remaining(), "{v:?}");
        let again = T::decode(&mut Reader::from_bytes(&bytes));
        assert_eq!(again.as_ref(), Ok(&v));
    }
}

/// A request frame as the proxy reads it: a header, then the body its opcode names.
fn request(frame: &Bytes) {
    let mut r = Reader::from_bytes(frame);
    let Ok(h) = RequestHeader::decode(&mut r) else {
        return;
    };
    let body = &mut r;
    match h.op {
        op::CREATE | op::CREATE2 | op::CREATE_CONTAINER => check::<CreateRequest>(body),
        op::CREATE_TTL => check::<CreateTtlRequest>(body),
        op::DELETE => check::<DeleteRequest>(body),
        op::EXISTS => check::<ExistsRequest>(body),
        op::GET_DATA => check::<GetDataRequest>(body),
        op::SET_DATA => check::<SetDataRequest>(body),
        op::SET_ACL => check::<SetAclRequest>(body),
        op::GET_CHILDREN | op::GET_CHILDREN2 => check::<GetChildrenRequest>(body),
        op::CHECK => check::<CheckVersionRequest>(body),
        op::MULTI | op::MULTI_READ => check::<MultiRequest>(body),
        op::RECONFIG => check::<ReconfigRequest>(body),
        op::CHECK_WATCHES | op::REMOVE_WATCHES => check::<WatchesRequest>(body),
        op::AUTH => check::<AuthPacket>(body),
        op::SET_WATCHES => check::<SetWatches>(body),
        op::SET_WATCHES2 => check::<SetWatches2>(body),
        op::SASL => check::<GetSaslRequest>(body),
        op::ADD_WATCH => check::<AddWatchRequest>(body),
        _ => check::<PathRequest>(body),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let _ = input.first_chunk::<4>().map(|w| four_letter_word(w));
    let whole = frames(input, input.len());
    let chunked = frames(input, usize::from(sel % 16) + 1);
    assert_eq!(whole, chunked, "chunking changed the frames");
    for (i, f) in whole.0.iter().enumerate() {
        if i == 0 {
            check::<ConnectRequest>(&mut Reader::from_bytes(f));
            check::<ConnectResponse>(&mut Reader::from_bytes(f));
        } else {
            request(f);
        }
        // The reply side's decoders read the same framing.
        let mut r = Reader::from_bytes(f);
        if ReplyHeader::decode(&mut r).is_ok() {
            check::<MultiResponse>(&mut r.clone());
            check::<GetDataResponse>(&mut r.clone());
            check::<GetChildren2Response>(&mut r.clone());
            check::<WatcherEvent>(&mut r);
        }
    }
});
