//! The RESP request parser on arbitrary bytes: never a panic, and the same requests (and the
//! same error) whether the bytes arrive at once or in reads of any size. Also runs the reply
//! side helpers over the same bytes.
#![no_main]

// The parser's own source, compiled into this crate: it depends on `bytes` only, and
// building the whole proxy with coverage instrumentation would cost minutes.
#[allow(dead_code)]
#[path = "../../src/redis/resp.rs"]
mod resp;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use resp::{parse_request_from, FrameError, Limits};

const LIM: Limits = Limits {
    max_request_bytes: 1 << 16,
    max_args: 256,
};

type Run = (Vec<(Vec<u8>, Vec<Vec<u8>>)>, Option<FrameError>);

fn run(input: &[u8], chunk: usize) -> Run {
    let mut buf = BytesMut::new();
    let mut progress = None;
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match parse_request_from(&mut buf, &LIM, &mut progress) {
                Ok(Some(r)) => {
                    let args: Vec<Vec<u8>> = r.args().map(<[u8]>::to_vec).collect();
                    assert_eq!(args.len(), r.argc, "argc and arguments disagree");
                    out.push((r.raw.to_vec(), args));
                }
                Ok(None) => break,
                Err(e) => {
                    let reply = e.reply();
                    assert!(
                        reply.starts_with(b"-ERR Protocol error: ") && reply.ends_with(b"\r\n")
                    );
                    return (out, Some(e));
                }
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a read size; the rest is the stream.
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let whole = run(input, input.len());
    let chunked = run(input, usize::from(sel % 16) + 1);
    assert_eq!(whole, chunked, "chunking changed the parse");

    let _ = resp::frame_len(input);
    for e in resp::elements(input) {
        let _ = resp::string_payload(e);
    }
    let _ = (resp::is_error(input), resp::is_null(input));
});
