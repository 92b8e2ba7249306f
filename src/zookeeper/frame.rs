//! Framing of a ZooKeeper connection: every frame, in both directions, is a 4-byte
//! big-endian length followed by that many bytes of jute (the first client frame is a bare
//! `ConnectRequest`, later ones start with a `RequestHeader`, server frames with a
//! `ReplyHeader`).
//!
//! The one exception is a four-letter word (`ruok`, `srvr`, `isro`, …): the server checks
//! the first 4 bytes of a connection before reading any frame and, if they spell a known
//! command, answers in plain text and closes. Their value as a length is far above any
//! frame limit, so [`four_letter_word`] on the first 4 bytes is unambiguous.
//!
//! Frames are cut zero-copy out of the connection's read buffer ([`next_frame`]); replies are
//! written with their length prefix straight into the output buffer ([`write_frame`],
//! [`encode_frame`]).

use bytes::{BufMut, Bytes, BytesMut};

use super::jute::Writer;

/// Why the input cannot be a ZooKeeper frame (the server answers both by closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("negative frame length {0}")]
    Negative(i32),
    #[error("frame length {len} exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Length of the prefix.
pub const PREFIX_LEN: usize = 4;

/// Takes one frame off the front of `buf` and returns its body (without the prefix):
/// `Ok(None)` when more bytes are needed (the buffer is left untouched), an error when the
/// length is negative or above `max` (the server's limit is `jute.maxbuffer`, see
/// [`super::jute::DEFAULT_MAX_LEN`]). A zero-length frame is returned as an empty body.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let n = i32::from_be_bytes(*prefix);
    let len = usize::try_from(n).map_err(|_| FrameError::Negative(n))?;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < PREFIX_LEN + len {
        buf.reserve(PREFIX_LEN + len - buf.len());
        return Ok(None);
    }
    let _ = buf.split_to(PREFIX_LEN);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Appends `body` with its length prefix.
///
/// # Panics
/// If `body` is longer than `i32::MAX` (no ZooKeeper frame is).
pub fn write_frame(out: &mut BytesMut, body: &[u8]) {
    out.reserve(PREFIX_LEN + body.len());
    out.put_i32(frame_len(body.len()));
    out.put_slice(body);
}

/// Appends one frame whose body `f` encodes (e.g. a `ReplyHeader` and a record), writing
/// the length prefix in place afterwards instead of copying the body.
pub fn encode_frame(out: &mut BytesMut, f: impl FnOnce(&mut Writer)) {
    let start = out.len();
    out.put_i32(0);
    let mut w = Writer::with_buf(std::mem::take(out));
    f(&mut w);
    *out = w.into_inner();
    let len = frame_len(out.len() - start - PREFIX_LEN);
    out[start..start + PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
}

fn frame_len(n: usize) -> i32 {
    i32::try_from(n).expect("ZooKeeper frame longer than i32::MAX")
}

/// The four-letter words a server knows (`FourLetterCommands`), whitelisted or not.
pub const FOUR_LETTER_WORDS: [&[u8; 4]; 18] = [
    b"conf", b"cons", b"crst", b"dirs", b"dump", b"envi", b"gtmk", b"ruok", b"stmk", b"srst",
    b"srvr", b"stat", b"wchc", b"wchp", b"wchs", b"mntr", b"isro", b"hash",
];

/// The four-letter word spelled by the first 4 bytes of a connection, if any (`None` also
/// when fewer than 4 bytes are given). Only meaningful before the first frame.
pub fn four_letter_word(first4: &[u8]) -> Option<[u8; 4]> {
    let w = first4.first_chunk::<4>()?;
    FOUR_LETTER_WORDS.contains(&w).then_some(*w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zookeeper::jute::{Record, XorShift, DEFAULT_MAX_LEN};
    use crate::zookeeper::proto::ReplyHeader;

    fn next(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        next_frame(buf, DEFAULT_MAX_LEN)
    }

    #[test]
    fn cuts_pipelined_frames_zero_copy() {
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x03abc\x00\x00\x00\x00\x00\x00\x00\x02x"[..]);
        let base = buf.as_ptr();
        let first = next(&mut buf).unwrap().unwrap();
        assert_eq!(&first[..], b"abc");
        assert_eq!(first.as_ptr(), base.wrapping_add(4));
        assert_eq!(next(&mut buf).unwrap().unwrap().len(), 0);
        // Partial body: nothing consumed.
        assert_eq!(next(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"\x00\x00\x00\x02x");
        buf.extend_from_slice(b"y");
        assert_eq!(&next(&mut buf).unwrap().unwrap()[..], b"xy");
        assert!(buf.is_empty());
        assert_eq!(next(&mut buf), Ok(None));
    }

    #[test]
    fn partial_prefix_needs_more() {
        let full = b"\x00\x00\x00\x02hi";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(next(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn refuses_negative_and_oversized_lengths() {
        let mut buf = BytesMut::from(&b"\xff\xff\xff\xfe"[..]);
        assert_eq!(next(&mut buf), Err(FrameError::Negative(-2)));
        let mut buf = BytesMut::from(&b"\x00\x10\x00\x00"[..]);
        assert_eq!(
            next(&mut buf),
            Err(FrameError::TooLarge {
                len: 0x100000,
                max: DEFAULT_MAX_LEN
            })
        );
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x05"[..]);
        assert_eq!(
            next_frame(&mut buf, 4),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        );
        // A four-letter word read as a length is far too large.
        let mut buf = BytesMut::from(&b"ruok"[..]);
        assert!(matches!(next(&mut buf), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn writes_frames() {
        let mut out = BytesMut::from(&b"prev"[..]);
        write_frame(&mut out, b"abc");
        assert_eq!(&out[..], b"prev\x00\x00\x00\x03abc");
        let h = ReplyHeader {
            xid: 3,
            zxid: 9,
            err: -119,
        };
        encode_frame(&mut out, |w| w.write(&h));
        let mut rest = out.split_off(11);
        assert_eq!(&rest[..4], b"\x00\x00\x00\x10");
        let body = next(&mut rest).unwrap().unwrap();
        assert_eq!(ReplyHeader::from_bytes(&body), Ok(h));
        assert!(rest.is_empty());
    }

    #[test]
    fn recognises_four_letter_words() {
        for w in FOUR_LETTER_WORDS {
            assert_eq!(four_letter_word(w), Some(*w));
        }
        assert_eq!(four_letter_word(b"isro and more"), Some(*b"isro"));
        assert_eq!(four_letter_word(b"RUOK"), None);
        assert_eq!(four_letter_word(b"abcd"), None);
        assert_eq!(four_letter_word(b"ruo"), None);
        assert_eq!(four_letter_word(b""), None);
        // A ConnectRequest starts with its length (44 or 45).
        assert_eq!(four_letter_word(b"\x00\x00\x00\x2d"), None);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        for _ in 0..5_000 {
            let len = rng.below(16);
            let mut bytes = rng.bytes(len);
            // Mostly small or negative lengths.
            for (i, b) in bytes.iter_mut().take(3).enumerate() {
                *b &= if i == 0 { 0x80 } else { 0 };
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = next_frame(&mut buf, 8) {}
            let _ = four_letter_word(&bytes);
        }
    }
}
