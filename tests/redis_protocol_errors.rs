//! Malformed and unusual client input, sent byte for byte both straight to a real
//! redis-server and through the proxy: what comes back, and whether the connection is then
//! closed, must be identical. Clients and Redis's own test suite match on these texts.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Appended to inputs after which the connection stays open: its reply marks the end of
/// what the input produced, so no read has to guess when the server is done.
const SENTINEL: &[u8] = b"ECHO __end__\r\n";
const SENTINEL_REPLY: &[u8] = b"$7\r\n__end__\r\n";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Then {
    /// The server closes by itself (a protocol error): read to EOF.
    Closes,
    /// The connection stays usable: send [`SENTINEL`] and read up to its reply.
    StaysOpen,
    /// The input is an incomplete request: half-close, and the server must answer nothing
    /// (a request it wrongly saw as complete would be answered).
    Eof,
}

/// What a server sent back, and whether it closed the connection.
#[derive(Debug, PartialEq)]
struct Outcome {
    bytes: String,
    closed: bool,
}

async fn exchange(addr: SocketAddr, input: &[u8], then: Then) -> Outcome {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let mut sent = input.to_vec();
    if then == Then::StaysOpen {
        sent.extend_from_slice(SENTINEL);
    }
    // A server that refuses early may close before taking everything: that shows in the
    // outcome, so a write error is not a failure here.
    let _ = tokio::time::timeout(WAIT, s.write_all(&sent)).await;
    if then == Then::Eof {
        let _ = s.shutdown().await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let closed = loop {
        if then == Then::StaysOpen && got.ends_with(SENTINEL_REPLY) {
            break false;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    };
    Outcome {
        bytes: String::from_utf8_lossy(&got).into_owned(),
        closed,
    }
}

fn cases() -> Vec<(&'static str, Vec<u8>, Then)> {
    let big = 64 * 1024; // Redis's PROTO_INLINE_MAX_SIZE
                         // Input that `tests/redis_bad_input.rs` once sent as an "unknown inline command": it
                         // holds a `"` in the middle of a word, which Redis reads as an unbalanced quote.
    let noisy: Vec<u8> = {
        let mut x: u32 = 0x2545_f491;
        let mut v = vec![b'x'];
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let b = (x & 0xff) as u8;
            let b = if b == b'\n' { 0 } else { b };
            if b != b'\r' && b != b'*' {
                v.push(b);
            }
        }
        v.extend_from_slice(b"\r\n");
        v
    };
    use Then::*;
    vec![
        // From Redis's tests/unit/protocol.tcl.
        (
            "wrong multibulk payload header",
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n".to_vec(),
            Closes,
        ),
        (
            "multibulk not followed by bulk",
            b"*1\r\nfoo\r\n".to_vec(),
            Closes,
        ),
        (
            "negative payload length",
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n".to_vec(),
            Closes,
        ),
        (
            "out of range payload length",
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n".to_vec(),
            Closes,
        ),
        (
            "non-number payload length",
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n".to_vec(),
            Closes,
        ),
        (
            "out of range multibulk length",
            b"*3000000000\r\n".to_vec(),
            Closes,
        ),
        ("negative multibulk length", b"*-10\r\n".to_vec(), StaysOpen),
        ("empty query", b"\r\n".to_vec(), StaysOpen),
        (
            "unbalanced number of quotes",
            b"set \"\"\"test-key\"\"\" test-value\r\nping\r\n".to_vec(),
            Closes,
        ),
        // Type bytes and lengths.
        ("integer inside a request", b"*2\r\n:1\r\n".to_vec(), Closes),
        ("CR as the type byte", b"*1\r\n\r\n".to_vec(), Closes),
        ("LF as the type byte", b"*1\r\n\n\r\n".to_vec(), Closes),
        (
            "high byte as the type byte",
            b"*1\r\n\xff\r\n".to_vec(),
            Closes,
        ),
        ("non-numeric multibulk length", b"*zz\r\n".to_vec(), Closes),
        ("empty multibulk length", b"*\r\n".to_vec(), Closes),
        ("leading zero multibulk length", b"*01\r\n".to_vec(), Closes),
        ("minus zero multibulk length", b"*-0\r\n".to_vec(), Closes),
        ("plus sign multibulk length", b"*+1\r\n".to_vec(), Closes),
        (
            "20-digit multibulk length",
            b"*99999999999999999999\r\n".to_vec(),
            Closes,
        ),
        ("null bulk in a request", b"*1\r\n$-1\r\n".to_vec(), Closes),
        (
            "leading zero bulk length",
            b"*1\r\n$01\r\n".to_vec(),
            Closes,
        ),
        ("space in bulk length", b"*1\r\n$ 4\r\n".to_vec(), Closes),
        ("plus sign bulk length", b"*1\r\n$+4\r\n".to_vec(), Closes),
        (
            "valid command, then a bad one",
            b"*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n".to_vec(),
            Closes,
        ),
        (
            "negative count, then a command",
            b"*-1\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            StaysOpen,
        ),
        (
            "empty lines, then a command",
            b"\n\n*1\r\n$4\r\nPING\r\n".to_vec(),
            StaysOpen,
        ),
        // Inline commands and sdssplitargs.
        (
            "double-quoted argument",
            b"set \"a b\" c\r\nget \"a b\"\r\n".to_vec(),
            StaysOpen,
        ),
        (
            "single-quoted argument with escape",
            b"set 'x\\'y' z\r\nget 'x\\'y'\r\n".to_vec(),
            StaysOpen,
        ),
        (
            "hex and other escapes",
            b"echo \"\\x41\\x4g\\n\\t\\a\\b\\r\\q\"\r\n".to_vec(),
            StaysOpen,
        ),
        (
            "quote inside a word",
            b"echo a\"b c\"\r\n".to_vec(),
            StaysOpen,
        ),
        (
            "empty quoted words",
            b"echo \"\" ''\r\n".to_vec(),
            StaysOpen,
        ),
        (
            "vertical tab",
            b"echo a\x0bb\r\n\x0becho x\r\n".to_vec(),
            StaysOpen,
        ),
        ("bare LF line end", b"echo a\n".to_vec(), StaysOpen),
        ("CR inside a line", b"echo a\rb\r\n".to_vec(), StaysOpen),
        (
            "escape outside quotes",
            b"echo a\\x41 '\\n'\r\n".to_vec(),
            StaysOpen,
        ),
        ("unterminated quote", b"echo \"abc\r\n".to_vec(), Closes),
        (
            "text after a closing quote",
            b"echo \"a\"b\r\n".to_vec(),
            Closes,
        ),
        (
            "text after a single quote",
            b"echo 'a'b\r\n".to_vec(),
            Closes,
        ),
        ("backslash at the end", b"echo \"a\\\r\n".to_vec(), Closes),
        ("noise with a stray quote", noisy, Closes),
        // Redis's fixed limits on lines (64 KiB without the line's end).
        ("too big inline request", vec![b'A'; big + 1], Closes),
        (
            "NUL before the line end",
            [&b"\x00"[..], &vec![b'A'; big][..]].concat(),
            Closes,
        ),
        (
            "too big mbulk count string",
            [&b"*"[..], &vec![b'1'; big][..]].concat(),
            Closes,
        ),
        (
            "too big bulk count string",
            [&b"*1\r\n$"[..], &vec![b'1'; big][..]].concat(),
            Closes,
        ),
        (
            "NUL in a bulk count",
            [&b"*1\r\n$\x00"[..], &vec![b'1'; big - 1][..]].concat(),
            Closes,
        ),
        // Incomplete: nothing may be answered.
        (
            "NUL hides the line end",
            b"echo x\x00\r\nPING\r\n".to_vec(),
            Eof,
        ),
        ("header without its LF", b"*1\r".to_vec(), Eof),
        (
            "argument without its header end",
            b"*1\r\nfoo".to_vec(),
            Eof,
        ),
        ("half a bulk", b"*1\r\n$4\r\nPI".to_vec(), Eof),
    ]
}

/// Every case, through the proxy and straight to Redis: identical bytes and close.
#[tokio::test]
async fn protocol_errors_and_inline_parsing_match_redis_byte_for_byte() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let direct: SocketAddr = reference.addr().parse().expect("addr");

    let mut mismatches = Vec::new();
    for (what, input, then) in cases() {
        let want = exchange(direct, &input, then).await;
        let got = exchange(proxy.addr(), &input, then).await;
        // The expectation itself must be what Redis does, or the case tests nothing.
        let expected_close = then == Then::Closes || then == Then::Eof;
        assert_eq!(want.closed, expected_close, "{what}: redis-server {want:?}");
        if got != want {
            mismatches.push(format!("{what}:\n  redis: {want:?}\n  proxy: {got:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // The inline SETs above reached both the leader and the follower.
    proxy.drained().await;
    assert_same_data(&leader, &follower).await;
}
