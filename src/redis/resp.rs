//! RESP framing for the forwarding hot path: where a frame ends, and a view of a request's
//! arguments, without copying or allocating.
//!
//! Why not `redis-protocol` here: its decoders materialize every frame (a `Vec` per array, a
//! map per RESP3 map) and restart from scratch on partial input, and the proxy needs only
//! boundaries and a few arguments per request. `redis-protocol` is used wherever values are
//! decoded (the command table, the mirror writer's replies) and, in the tests below, as the
//! oracle these boundaries must agree with.

use bytes::{Bytes, BytesMut};

/// Why a client's input was refused. The text follows Redis's own `Protocol error` wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    Protocol(&'static str),
    TooLarge(&'static str),
}

impl FrameError {
    pub fn reply(&self) -> Bytes {
        let msg = match self {
            FrameError::Protocol(m) | FrameError::TooLarge(m) => m,
        };
        Bytes::from(format!("-ERR Protocol error: {msg}\r\n"))
    }

    pub fn metric_reason(&self) -> &'static str {
        match self {
            FrameError::Protocol(_) => "protocol",
            FrameError::TooLarge(_) => "too_large",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_args: usize,
}

/// Longest inline command or header line a client may send (Redis uses 64 KiB too).
const MAX_INLINE: usize = 64 * 1024;

/// One client command: the exact bytes to forward and its argument count.
#[derive(Debug, Clone)]
pub struct Request {
    pub raw: Bytes,
    pub argc: usize,
    /// Offset of the first argument's `$` header inside `raw`.
    args_at: usize,
}

impl Request {
    /// Arguments in order (name first).
    pub fn args(&self) -> Args<'_> {
        Args {
            buf: &self.raw,
            pos: self.args_at,
            left: self.argc,
        }
    }

    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.args().nth(i)
    }

    /// The argument copied into a `Bytes` of its own, for what outlives the request (mirror
    /// ops, the in-flight registry). Never a slice of `raw`: `raw` shares the connection's
    /// read buffer, and one queued key would pin that whole buffer (16 KiB or more) while
    /// the queue counted only the key.
    pub fn arg_owned(&self, a: &[u8]) -> Bytes {
        Bytes::copy_from_slice(a)
    }

    /// The whole frame copied out of the read buffer (see [`Self::arg_owned`]).
    pub fn raw_owned(&self) -> Bytes {
        Bytes::copy_from_slice(&self.raw)
    }
}

pub struct Args<'a> {
    buf: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        // The frame was validated by `parse_request`; a mismatch just ends the iteration.
        let rest = self.buf.get(self.pos..)?;
        let (len, hdr) = read_len_line(rest, b'$').ok()??;
        let len = usize::try_from(len).ok()?;
        let data = rest.get(hdr..hdr + len)?;
        self.pos += hdr + len + 2;
        self.left -= 1;
        Some(data)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// How far the parse of a multibulk request that is not complete yet got: the next call
/// resumes there instead of walking every argument again from byte 0 (a 1 M-argument
/// `MSET` arriving in 16 KiB reads would otherwise cost quadratic time). Valid while the
/// buffer is only appended to, which holds: bytes are taken off only with a whole request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    argc: usize,
    args_at: usize,
    /// Offset of the next argument's `$` header, and how many arguments precede it.
    pos: usize,
    done: usize,
}

/// Takes one request off the front of `buf`: `Ok(None)` when more bytes are needed.
/// Empty inline lines and `*0`/`*-1` are consumed and skipped, as Redis does.
pub fn parse_request(buf: &mut BytesMut, lim: &Limits) -> Result<Option<Request>, FrameError> {
    parse_request_from(buf, lim, &mut None)
}

/// [`parse_request`] resuming from (and leaving) `progress` for a request that spans reads.
pub fn parse_request_from(
    buf: &mut BytesMut,
    lim: &Limits,
    progress: &mut Option<Progress>,
) -> Result<Option<Request>, FrameError> {
    if let Some(p) = progress.take() {
        return parse_args(buf, lim, p, progress);
    }
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'*' {
            return parse_inline(buf, lim);
        }
        let Some((n, hdr)) = read_len_line(buf, b'*')? else {
            return Ok(None);
        };
        if n <= 0 {
            let _ = buf.split_to(hdr);
            continue;
        }
        let n = n as usize;
        if n > lim.max_args {
            return Err(FrameError::TooLarge("invalid multibulk length"));
        }
        let p = Progress {
            argc: n,
            args_at: hdr,
            pos: hdr,
            done: 0,
        };
        return parse_args(buf, lim, p, progress);
    }
}

/// Walks the arguments of a multibulk request from `p`; stores where it stopped in
/// `progress` when the request is not complete yet.
fn parse_args(
    buf: &mut BytesMut,
    lim: &Limits,
    mut p: Progress,
    progress: &mut Option<Progress>,
) -> Result<Option<Request>, FrameError> {
    while p.done < p.argc {
        let rest = buf.get(p.pos..).unwrap_or_default();
        if rest.is_empty() {
            *progress = Some(p);
            return Ok(None);
        }
        if rest[0] != b'$' {
            return Err(FrameError::Protocol("expected '$', got something else"));
        }
        #[cfg(test)]
        HEADERS_READ.with(|c| c.set(c.get() + 1));
        let Some((len, h)) = read_len_line(rest, b'$')? else {
            *progress = Some(p);
            return Ok(None);
        };
        if len < 0 {
            return Err(FrameError::Protocol("invalid bulk length"));
        }
        let len = len as usize;
        if len > lim.max_request_bytes {
            return Err(FrameError::TooLarge("invalid bulk length"));
        }
        let end = p.pos + h + len + 2;
        if end > lim.max_request_bytes + 64 {
            return Err(FrameError::TooLarge(
                "request larger than max_request_bytes",
            ));
        }
        if buf.len() < end {
            *progress = Some(p);
            return Ok(None);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(FrameError::Protocol("bulk string not terminated by CRLF"));
        }
        p.pos = end;
        p.done += 1;
    }
    let raw = buf.split_to(p.pos).freeze();
    Ok(Some(Request {
        raw,
        argc: p.argc,
        args_at: p.args_at,
    }))
}

#[cfg(test)]
thread_local! {
    /// Argument headers read, to prove a request split over many reads costs linear time.
    static HEADERS_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Inline commands (`PING\r\n` typed into a terminal) become a normal multibulk request, so
/// everything downstream sees one shape. Quoting is not interpreted (Redis does; rare).
fn parse_inline(buf: &mut BytesMut, lim: &Limits) -> Result<Option<Request>, FrameError> {
    loop {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_INLINE {
                return Err(FrameError::TooLarge("too big inline request"));
            }
            return Ok(None);
        };
        let line = buf.split_to(nl + 1);
        let words: Vec<&[u8]> = line
            .as_ref()
            .split(|b: &u8| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            if buf.first().is_some_and(|&b| b != b'*') {
                continue;
            }
            return match buf.first() {
                None => Ok(None),
                Some(_) => parse_request(buf, lim),
            };
        }
        if words.len() > lim.max_args {
            return Err(FrameError::TooLarge("invalid multibulk length"));
        }
        let mut out = BytesMut::with_capacity(line.len() + 16 * words.len());
        out.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
        let args_at = out.len();
        for w in &words {
            out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
            out.extend_from_slice(w);
            out.extend_from_slice(b"\r\n");
        }
        return Ok(Some(Request {
            raw: out.freeze(),
            argc: words.len(),
            args_at,
        }));
    }
}

/// Reads `<prefix><integer>\r\n`: `(value, header length)`.
fn read_len_line(buf: &[u8], prefix: u8) -> Result<Option<(i64, usize)>, FrameError> {
    if buf.first() != Some(&prefix) {
        return Err(FrameError::Protocol("unexpected type byte"));
    }
    let Some(end) = find_crlf(buf, 1)? else {
        return Ok(None);
    };
    let v = parse_int(&buf[1..end]).ok_or(FrameError::Protocol("invalid length"))?;
    Ok(Some((v, end + 2)))
}

fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, FrameError> {
    let window = &buf[from.min(buf.len())..buf.len().min(from + MAX_INLINE)];
    match window.iter().position(|&b| b == b'\r') {
        Some(i) => {
            let at = from + i;
            match buf.get(at + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(Some(at)),
                Some(_) => Err(FrameError::Protocol("expected LF after CR")),
            }
        }
        None if buf.len() > from + MAX_INLINE => Err(FrameError::TooLarge("line too long")),
        None => Ok(None),
    }
}

fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as i64;
    }
    Some(if neg { -v } else { v })
}

/// Length of the complete RESP2/RESP3 frame (reply) at the start of `buf`, `None` if more
/// bytes are needed. Attributes (`|`) count as part of the frame they annotate.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut pos = 0usize;
    let mut remaining: u64 = 1;
    while remaining > 0 {
        let Some(&t) = buf.get(pos) else {
            return Ok(None);
        };
        let Some(end) = find_crlf(buf, pos + 1)? else {
            return Ok(None);
        };
        let line = &buf[pos + 1..end];
        pos = end + 2;
        remaining -= 1;
        match t {
            b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let n = parse_int(line).ok_or(FrameError::Protocol("invalid bulk length"))?;
                if n >= 0 {
                    pos += n as usize + 2;
                    if buf.len() < pos {
                        return Ok(None);
                    }
                } else if n != -1 {
                    return Err(FrameError::Protocol("invalid bulk length"));
                }
            }
            b'*' | b'~' | b'>' => {
                let n = parse_int(line).ok_or(FrameError::Protocol("invalid multibulk length"))?;
                if n > 0 {
                    remaining += n as u64;
                }
            }
            b'%' | b'|' => {
                let n = parse_int(line).ok_or(FrameError::Protocol("invalid map length"))?;
                if n > 0 {
                    remaining += 2 * n as u64;
                }
                if t == b'|' {
                    remaining += 1; // the annotated value follows
                }
            }
            _ => return Err(FrameError::Protocol("unknown reply type")),
        }
    }
    Ok(Some(pos))
}

/// An error reply (`-ERR …` or RESP3 blob error)?
pub fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-') | Some(b'!'))
}

/// A RESP2 `*-1`/`$-1` or RESP3 `_` null?
pub fn is_null(frame: &[u8]) -> bool {
    frame.starts_with(b"_") || frame.starts_with(b"*-1\r") || frame.starts_with(b"$-1\r")
}

/// The elements of an aggregate frame (`*`, `>`, `~`), as complete sub-frames.
pub fn elements(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (n, mut pos) = match frame.first() {
        Some(b'*' | b'>' | b'~') => match find_crlf(frame, 1) {
            Ok(Some(end)) => (parse_int(&frame[1..end]).unwrap_or(0).max(0), end + 2),
            _ => (0, frame.len()),
        },
        _ => (0, frame.len()),
    };
    let mut left = n;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let rest = frame.get(pos..)?;
        let len = frame_len(rest).ok()??;
        left -= 1;
        pos += len;
        Some(&rest[..len])
    })
}

/// The payload of a bulk or simple string frame.
pub fn string_payload(frame: &[u8]) -> Option<&[u8]> {
    match frame.first()? {
        b'+' => frame.get(1..frame.len().checked_sub(2)?),
        b'$' => {
            let end = find_crlf(frame, 1).ok()??;
            frame.get(end + 2..frame.len().checked_sub(2)?)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_split_over_many_reads_is_parsed_in_linear_time() {
        let n = 100_000;
        let mut frame = format!("*{}\r\n$4\r\nMSET\r\n", 2 * n + 1).into_bytes();
        for i in 0..n {
            let k = format!("k{i}");
            let v = format!("v{i}");
            frame.extend(format!("${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len()).bytes());
        }
        let lim = Limits {
            max_request_bytes: 64 << 20,
            max_args: 1 << 20,
        };
        HEADERS_READ.with(|c| c.set(0));
        let mut buf = BytesMut::new();
        let mut progress = None;
        let mut got = None;
        for chunk in frame.chunks(4096) {
            buf.extend_from_slice(chunk);
            if let Some(r) = parse_request_from(&mut buf, &lim, &mut progress).expect("valid") {
                got = Some(r);
            }
        }
        let r = got.expect("one request");
        assert_eq!(r.argc, 2 * n + 1);
        assert_eq!(r.raw.len(), frame.len());
        assert!(buf.is_empty());
        let reads = HEADERS_READ.with(|c| c.get());
        // Each header once, plus at most one retry per read that ended inside one.
        assert!(
            reads <= 2 * n + 1 + frame.len() / 4096 + 1,
            "{reads} header reads"
        );
    }

    fn lim() -> Limits {
        Limits {
            max_request_bytes: 1024,
            max_args: 16,
        }
    }

    fn req(bytes: &[u8]) -> Result<Option<Request>, FrameError> {
        parse_request(&mut BytesMut::from(bytes), &lim())
    }

    #[test]
    fn parses_multibulk_and_iterates_args() {
        let r = req(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.argc, 3);
        let args: Vec<_> = r.args().collect();
        assert_eq!(args, vec![&b"SET"[..], b"k", b"hello"]);
        assert_eq!(r.arg(2), Some(&b"hello"[..]));
    }

    #[test]
    fn incomplete_needs_more() {
        for cut in 1..30 {
            let full = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
            if cut < full.len() {
                assert!(req(&full[..cut]).unwrap().is_none(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn pipeline_splits_exactly() {
        let mut b = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1"[..]);
        assert_eq!(parse_request(&mut b, &lim()).unwrap().unwrap().argc, 1);
        assert_eq!(parse_request(&mut b, &lim()).unwrap().unwrap().argc, 2);
        assert!(parse_request(&mut b, &lim()).unwrap().is_none());
        assert_eq!(&b[..], b"*1");
    }

    #[test]
    fn inline_becomes_multibulk() {
        let r = req(b"set  a b\r\n").unwrap().unwrap();
        assert_eq!(&r.raw[..], b"*3\r\n$3\r\nset\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(r.args().collect::<Vec<_>>(), vec![&b"set"[..], b"a", b"b"]);
        let mut b = BytesMut::from(&b"\r\n\r\nPING\r\n"[..]);
        assert_eq!(parse_request(&mut b, &lim()).unwrap().unwrap().argc, 1);
    }

    #[test]
    fn rejects_bad_and_oversized_input() {
        assert_eq!(
            req(b"*2\r\n:1\r\n").unwrap_err(),
            FrameError::Protocol("expected '$', got something else")
        );
        assert!(matches!(req(b"*99\r\n"), Err(FrameError::TooLarge(_))));
        assert!(matches!(
            req(b"*1\r\n$5000\r\n"),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(req(b"*1\r\n$x\r\n"), Err(FrameError::Protocol(_))));
        assert!(matches!(
            req(b"*1\r\n$1\r\nab\r\n"),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            req(b"*1\r\n$-5\r\n"),
            Err(FrameError::Protocol(_))
        ));
        let long = vec![b'a'; MAX_INLINE + 10];
        assert!(matches!(req(&long), Err(FrameError::TooLarge(_))));
        assert!(req(b"*-1\r\n*0\r\n").unwrap().is_none());
    }

    #[test]
    fn reply_boundaries_agree_with_redis_protocol() {
        let frames: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"$3\r\nfoo\r\n",
            b"*-1\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n*0\r\n",
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
            b"_\r\n",
            b",1.5\r\n",
            b"#t\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:1\r\n",
        ];
        for f in frames {
            let mut with_tail = f.to_vec();
            with_tail.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(
                frame_len(&with_tail).unwrap(),
                Some(f.len()),
                "{:?}",
                String::from_utf8_lossy(f)
            );
            // RESP2-only spellings (`$-1`, `*-1`) go to the RESP2 decoder.
            let oracle = match redis_protocol::resp3::decode::complete::decode(f) {
                Ok(o) => o.map(|(_, n)| n),
                Err(_) => redis_protocol::resp2::decode::decode(f)
                    .unwrap()
                    .map(|(_, n)| n),
            };
            assert_eq!(
                oracle,
                Some(f.len()),
                "oracle on {:?}",
                String::from_utf8_lossy(f)
            );
            for cut in 0..f.len() {
                assert_eq!(frame_len(&f[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn aggregate_helpers() {
        let f = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let e: Vec<_> = elements(f).collect();
        assert_eq!(e.len(), 3);
        assert_eq!(string_payload(e[0]), Some(&b"subscribe"[..]));
        assert_eq!(string_payload(b"+QUEUED\r\n"), Some(&b"QUEUED"[..]));
        assert!(is_null(b"*-1\r\n") && is_null(b"_\r\n") && !is_null(b"*0\r\n"));
        assert!(is_error(b"-ERR\r\n") && is_error(b"!3\r\nerr\r\n"));
    }
}
