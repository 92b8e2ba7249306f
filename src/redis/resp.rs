//! RESP framing for the forwarding hot path: where a frame ends, and a view of a request's
//! arguments, without copying or allocating.
//!
//! Why not `redis-protocol` here: its decoders materialize every frame (a `Vec` per array, a
//! map per RESP3 map) and restart from scratch on partial input, and the proxy needs only
//! boundaries and a few arguments per request. `redis-protocol` is used wherever values are
//! decoded (the command table, the mirror writer's replies) and, in the tests below, as the
//! oracle these boundaries must agree with.

use bytes::{Bytes, BytesMut};

/// Why a client's input was refused: [`FrameError::reply`] is the exact error Redis answers
/// the same bytes with (clients and test suites match on it), then the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Malformed RESP.
    Protocol(Reason),
    /// Over one of the proxy's size limits (or Redis's own fixed ones).
    TooLarge(Reason),
}

/// The text after `Protocol error: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A multibulk argument header that does not start with `$` (the byte it started with).
    ExpectedDollar(u8),
    InvalidBulkLength,
    InvalidMultibulkLength,
    UnbalancedQuotes,
    TooBigInlineRequest,
    TooBigMbulkCount,
    TooBigBulkCount,
    /// Stricter than Redis, which skips the two bytes after a bulk (or after a header's CR)
    /// whatever they are: the proxy refuses framing it would otherwise have to guess at.
    BulkNotTerminated,
    ExpectedLf,
    /// The proxy's `max_request_bytes` over a whole request (Redis has no such limit).
    RequestTooLarge,
    /// A malformed server reply ([`frame_len`]); never sent to a client as is.
    Reply(&'static str),
}

impl Reason {
    pub fn text(&self) -> Vec<u8> {
        let s: &str = match self {
            Reason::ExpectedDollar(b) => {
                // Redis writes the byte raw, except CR/LF, which its error replies turn into
                // spaces so the reply stays one line.
                let b = if matches!(b, b'\r' | b'\n') { b' ' } else { *b };
                let mut v = b"expected '$', got '".to_vec();
                v.push(b);
                v.push(b'\'');
                return v;
            }
            Reason::InvalidBulkLength => "invalid bulk length",
            Reason::InvalidMultibulkLength => "invalid multibulk length",
            Reason::UnbalancedQuotes => "unbalanced quotes in request",
            Reason::TooBigInlineRequest => "too big inline request",
            Reason::TooBigMbulkCount => "too big mbulk count string",
            Reason::TooBigBulkCount => "too big bulk count string",
            Reason::BulkNotTerminated => "bulk string not terminated by CRLF",
            Reason::ExpectedLf => "expected LF after CR",
            Reason::RequestTooLarge => "request larger than max_request_bytes",
            Reason::Reply(m) => m,
        };
        s.as_bytes().to_vec()
    }
}

impl FrameError {
    pub fn reason(&self) -> Reason {
        match self {
            FrameError::Protocol(r) | FrameError::TooLarge(r) => *r,
        }
    }

    /// The whole error reply, `-ERR Protocol error: …\r\n`.
    pub fn reply(&self) -> Bytes {
        let mut v = b"-ERR Protocol error: ".to_vec();
        v.extend_from_slice(&self.reason().text());
        v.extend_from_slice(b"\r\n");
        Bytes::from(v)
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

/// Redis's `PROTO_INLINE_MAX_SIZE`: how many bytes may wait without the end of an inline
/// command or of a length header before the client is refused.
const MAX_INLINE: usize = 64 * 1024;

/// Redis's default `proto-max-bulk-len` (512 MiB): above it a bulk length is invalid even
/// when the proxy's own limit is configured higher.
const PROTO_MAX_BULK_LEN: i64 = 512 << 20;

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

    /// The same request with bytes of its own, for one kept past the read buffer's turn.
    pub fn into_owned(self) -> Request {
        Request {
            raw: self.raw_owned(),
            ..self
        }
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
        let cr = rest.iter().position(|&b| b == b'\r')?;
        let len = usize::try_from(string2ll(rest.get(1..cr)?)?).ok()?;
        let data = rest.get(cr + 2..cr + 2 + len)?;
        self.pos += cr + 2 + len + 2;
        self.left -= 1;
        Some(data)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// How far the parse of a request that is not complete yet got: the next call resumes there
/// instead of walking every argument (or searching a long line) again from byte 0 (a
/// 1 M-argument `MSET` arriving in 16 KiB reads would otherwise cost quadratic time). Valid
/// while the buffer is only appended to, which holds: bytes are taken off only with a whole
/// request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// 0 while the request's first line (inline command or `*` header) is incomplete.
    argc: usize,
    args_at: usize,
    /// Offset of the next argument's `$` header, and how many arguments precede it.
    pos: usize,
    done: usize,
    /// The line starting at `pos` (or at 0 for the first line) was searched this far
    /// without finding its end, or [`BLOCKED_BY_NUL`].
    scanned: usize,
}

/// Where a search for a line's end stands. Redis looks with `strchr`, which stops at a NUL
/// byte: a NUL before the terminator means the line never ends, however much follows, and
/// the client is refused once more than [`MAX_INLINE`] bytes wait. Recording that here
/// keeps the proxy from seeing a line Redis would not.
const BLOCKED_BY_NUL: usize = usize::MAX;

/// Takes one request off the front of `buf`: `Ok(None)` when more bytes are needed.
/// Empty inline lines and `*0`/`*-1` are consumed and skipped, as Redis does.
pub fn parse_request(buf: &mut BytesMut, lim: &Limits) -> Result<Option<Request>, FrameError> {
    parse_request_from(buf, lim, &mut None)
}

/// [`parse_request`] resuming from (and leaving) `progress` for a request that spans reads.
///
/// Follows Redis 7's `processInlineBuffer` / `processMultibulkBuffer` step by step, so
/// that the same bytes get the same error (or none) at the same point; the only departures
/// are stricter ([`Reason::BulkNotTerminated`], [`Reason::ExpectedLf`]) or the proxy's
/// configurable limits.
pub fn parse_request_from(
    buf: &mut BytesMut,
    lim: &Limits,
    progress: &mut Option<Progress>,
) -> Result<Option<Request>, FrameError> {
    let mut p = progress.take().unwrap_or_default();
    loop {
        if p.argc > 0 {
            return parse_args(buf, lim, p, progress);
        }
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let found = if first == b'*' {
            first_line(buf, &mut p.scanned, b'\r', Reason::TooBigMbulkCount)?
        } else {
            first_line(buf, &mut p.scanned, b'\n', Reason::TooBigInlineRequest)?
        };
        let Some(end) = found else {
            *progress = Some(p);
            return Ok(None);
        };
        if first != b'*' {
            match parse_inline(buf, end, lim)? {
                Some(r) => return Ok(Some(r)),
                None => {
                    // An empty line: on to the next request.
                    p.scanned = 0;
                    continue;
                }
            }
        }
        // Redis wants the byte after the CR before it reads the count.
        if end + 2 > buf.len() {
            *progress = Some(p);
            return Ok(None);
        }
        let n = match string2ll(&buf[1..end]) {
            Some(n) if n <= i64::from(i32::MAX) => n,
            _ => return Err(FrameError::Protocol(Reason::InvalidMultibulkLength)),
        };
        if buf[end + 1] != b'\n' {
            return Err(FrameError::Protocol(Reason::ExpectedLf));
        }
        if n <= 0 {
            let _ = buf.split_to(end + 2);
            p.scanned = 0;
            continue;
        }
        let n = n as usize;
        if n > lim.max_args {
            return Err(FrameError::TooLarge(Reason::InvalidMultibulkLength));
        }
        p = Progress {
            argc: n,
            args_at: end + 2,
            pos: end + 2,
            done: 0,
            scanned: 0,
        };
    }
}

/// Looks for the end of the line at the front of `buf` (`\n` for an inline command, the
/// `\r` of a `*` header), resuming after `scanned`. `Ok(None)`: not there yet.
fn first_line(
    buf: &[u8],
    scanned: &mut usize,
    end: u8,
    too_big: Reason,
) -> Result<Option<usize>, FrameError> {
    match find_line_end(buf, 0, scanned, end) {
        Some(i) => Ok(Some(i)),
        None if buf.len() > MAX_INLINE => Err(FrameError::TooLarge(too_big)),
        None => Ok(None),
    }
}

/// `strchr(buf + from, end)` over the bytes present, resumable: the offset of the first
/// `end` after `from`, `None` if there is none yet, or never will be (a NUL came first).
fn find_line_end(buf: &[u8], from: usize, scanned: &mut usize, end: u8) -> Option<usize> {
    if *scanned == BLOCKED_BY_NUL {
        return None;
    }
    let start = from + *scanned;
    let window = buf.get(start..).unwrap_or_default();
    let hit = window.iter().position(|&b| b == end || b == 0);
    count_steps(hit.map_or(window.len(), |i| i + 1));
    match hit {
        Some(i) if window[i] == end => {
            // A caller still waiting for bytes after the line's end resumes right there.
            *scanned = start + i - from;
            Some(start + i)
        }
        Some(_) => {
            *scanned = BLOCKED_BY_NUL;
            None
        }
        None => {
            *scanned = buf.len().saturating_sub(from);
            None
        }
    }
}

/// The inline command whose line ends (`\n`) at `nl`: `Ok(None)` for an empty line, which
/// is consumed. Quoting and escapes follow Redis's `sdssplitargs`.
fn parse_inline(
    buf: &mut BytesMut,
    nl: usize,
    lim: &Limits,
) -> Result<Option<Request>, FrameError> {
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    if line_end > lim.max_request_bytes {
        return Err(FrameError::TooLarge(Reason::RequestTooLarge));
    }
    let words =
        split_args(&buf[..line_end]).ok_or(FrameError::Protocol(Reason::UnbalancedQuotes))?;
    let _ = buf.split_to(nl + 1);
    if words.is_empty() {
        return Ok(None);
    }
    if words.len() > lim.max_args {
        return Err(FrameError::TooLarge(Reason::InvalidMultibulkLength));
    }
    // Everything downstream sees one shape: the multibulk form of the same arguments.
    let size: usize = words.iter().map(|w| w.len() + 16).sum();
    let mut out = BytesMut::with_capacity(size + 16);
    out.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
    let args_at = out.len();
    for w in &words {
        out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        out.extend_from_slice(w);
        out.extend_from_slice(b"\r\n");
    }
    Ok(Some(Request {
        raw: out.freeze(),
        argc: words.len(),
        args_at,
    }))
}

/// C's `isspace` in the "C" locale (Redis never sets `LC_CTYPE`).
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Redis's `sdssplitargs`: words separated by blanks; `"…"` with `\n \r \t \b \a \xHH`
/// and `\<any>` escapes; `'…'` with only `\'`; a closing quote must be followed by a blank
/// or the end. `None` for unbalanced quotes. The line is read as a C string: a NUL ends it
/// (the line search never lets one through, but the rule keeps this total).
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while at(i) != 0 && is_c_space(at(i)) {
            i += 1;
        }
        if at(i) == 0 {
            return Some(words);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            let c = at(i);
            let mut done = false;
            if in_dq {
                if let (b'\\', b'x', Some(h), Some(l)) =
                    (c, at(i + 1), hex_val(at(i + 2)), hex_val(at(i + 3)))
                {
                    cur.push(h * 16 + l);
                    i += 3;
                } else if c == b'\\' && at(i + 1) != 0 {
                    i += 1;
                    cur.push(match at(i) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(i + 1) != 0 && !is_c_space(at(i + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                if c == b'\\' && at(i + 1) == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if at(i + 1) != 0 && !is_c_space(at(i + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    _ => cur.push(c),
                }
            }
            if at(i) != 0 {
                i += 1;
            }
            if done {
                break;
            }
        }
        words.push(cur);
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
        let Some(cr) = find_line_end(buf, p.pos, &mut p.scanned, b'\r') else {
            if buf.len() - p.pos > MAX_INLINE {
                return Err(FrameError::TooLarge(Reason::TooBigBulkCount));
            }
            *progress = Some(p);
            return Ok(None);
        };
        if cr + 2 > buf.len() {
            *progress = Some(p);
            return Ok(None);
        }
        count_steps(1);
        if buf[p.pos] != b'$' {
            return Err(FrameError::Protocol(Reason::ExpectedDollar(buf[p.pos])));
        }
        let len = match string2ll(&buf[p.pos + 1..cr]) {
            Some(n) if (0..=PROTO_MAX_BULK_LEN).contains(&n) => n as usize,
            _ => return Err(FrameError::Protocol(Reason::InvalidBulkLength)),
        };
        if len > lim.max_request_bytes {
            return Err(FrameError::TooLarge(Reason::InvalidBulkLength));
        }
        if buf[cr + 1] != b'\n' {
            return Err(FrameError::Protocol(Reason::ExpectedLf));
        }
        let end = cr + 2 + len + 2;
        if end > lim.max_request_bytes + 64 {
            return Err(FrameError::TooLarge(Reason::RequestTooLarge));
        }
        if buf.len() < end {
            // The header is complete: resume at the data, not the header.
            *progress = Some(p);
            return Ok(None);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(FrameError::Protocol(Reason::BulkNotTerminated));
        }
        p.pos = end;
        p.done += 1;
        p.scanned = 0;
    }
    let raw = buf.split_to(p.pos).freeze();
    Ok(Some(Request {
        raw,
        argc: p.argc,
        args_at: p.args_at,
    }))
}

/// Redis's `string2ll`: optional `-`, no `+`, no leading zeros (`0` alone is fine, `-0`
/// is not), at most 20 bytes, no overflow.
fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
}

#[cfg(test)]
thread_local! {
    /// Bytes and headers the request parser looked at, to prove that a request split over
    /// many reads costs linear time.
    static STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[inline]
fn count_steps(_n: usize) {
    #[cfg(test)]
    STEPS.with(|c| c.set(c.get() + _n));
}

fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, FrameError> {
    let window = &buf[from.min(buf.len())..buf.len().min(from + MAX_INLINE)];
    match window.iter().position(|&b| b == b'\r') {
        Some(i) => {
            let at = from + i;
            match buf.get(at + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(Some(at)),
                Some(_) => Err(FrameError::Protocol(Reason::ExpectedLf)),
            }
        }
        None if buf.len() > from + MAX_INLINE => Err(FrameError::TooLarge(Reason::TooBigBulkCount)),
        None => Ok(None),
    }
}

/// A length in a server reply (lenient: replies come from the backend, not a client).
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
                let n = parse_int(line).ok_or(FrameError::Protocol(Reason::InvalidBulkLength))?;
                if n >= 0 {
                    pos += n as usize + 2;
                    if buf.len() < pos {
                        return Ok(None);
                    }
                } else if n != -1 {
                    return Err(FrameError::Protocol(Reason::InvalidBulkLength));
                }
            }
            b'*' | b'~' | b'>' => {
                let n =
                    parse_int(line).ok_or(FrameError::Protocol(Reason::InvalidMultibulkLength))?;
                if n > 0 {
                    remaining += n as u64;
                }
            }
            b'%' | b'|' => {
                let n = parse_int(line)
                    .ok_or(FrameError::Protocol(Reason::Reply("invalid map length")))?;
                if n > 0 {
                    remaining += 2 * n as u64;
                }
                if t == b'|' {
                    remaining += 1; // the annotated value follows
                }
            }
            _ => return Err(FrameError::Protocol(Reason::Reply("unknown reply type"))),
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

    /// Feeds `frame` in `chunk`-byte reads; returns the request and the parse steps taken.
    fn feed_in_chunks(frame: &[u8], chunk: usize, lim: &Limits) -> (Request, usize) {
        STEPS.with(|c| c.set(0));
        let mut buf = BytesMut::new();
        let mut progress = None;
        let mut got = None;
        for piece in frame.chunks(chunk) {
            buf.extend_from_slice(piece);
            if let Some(r) = parse_request_from(&mut buf, lim, &mut progress).expect("valid") {
                assert!(got.is_none(), "one request only");
                got = Some(r);
            }
        }
        assert!(buf.is_empty());
        (got.expect("one request"), STEPS.with(|c| c.get()))
    }

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
        for chunk in [4096, 7] {
            let (r, steps) = feed_in_chunks(&frame, chunk, &lim);
            assert_eq!(r.argc, 2 * n + 1);
            assert_eq!(r.raw.len(), frame.len());
            // Every byte searched at most once, plus one step per header and per read.
            let bound = frame.len() + 2 * n + 1 + frame.len() / chunk + 1;
            assert!(steps <= bound, "chunk {chunk}: {steps} steps > {bound}");
        }
    }

    #[test]
    fn long_lines_split_over_many_reads_are_searched_once() {
        let lim = Limits {
            max_request_bytes: 64 << 20,
            max_args: 1 << 20,
        };
        // An inline command, and a bulk whose header and data arrive a byte at a time.
        let inline = format!("ECHO {}\r\n", "a".repeat(60_000)).into_bytes();
        let bulk = format!("*2\r\n$4\r\nECHO\r\n$60000\r\n{}\r\n", "b".repeat(60_000));
        for frame in [inline, bulk.into_bytes()] {
            let (_, steps) = feed_in_chunks(&frame, 1, &lim);
            assert!(
                steps <= 3 * frame.len(),
                "{steps} steps for {} bytes",
                frame.len()
            );
        }
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

    fn err(bytes: &[u8]) -> String {
        let e = req(bytes).expect_err("refused");
        String::from_utf8_lossy(&e.reply()).into_owned()
    }

    #[test]
    fn errors_read_as_redis_own() {
        let cases: &[(&[u8], &str)] = &[
            (b"*2\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\nfoo\r\n", "expected '$', got 'f'"),
            (b"*1\r\n\r\n", "expected '$', got ' '"),
            (b"*1\r\n\n\r\n", "expected '$', got ' '"),
            (b"*zz\r\n", "invalid multibulk length"),
            (b"*\r\n", "invalid multibulk length"),
            (b"*01\r\n", "invalid multibulk length"),
            (b"*-0\r\n", "invalid multibulk length"),
            (b"*+1\r\n", "invalid multibulk length"),
            (b"*3000000000\r\n", "invalid multibulk length"),
            (b"*1\r\n$x\r\n", "invalid bulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$01\r\n", "invalid bulk length"),
            (b"*1\r\n$ 4\r\n", "invalid bulk length"),
            (b"echo \"abc\r\n", "unbalanced quotes in request"),
            (b"echo \"a\"b\r\n", "unbalanced quotes in request"),
            (b"echo 'a'b\r\n", "unbalanced quotes in request"),
            // Stricter than Redis (which would skip the stray bytes).
            (b"*1\r\n$1\r\nab\r\n", "bulk string not terminated by CRLF"),
            (b"*1\r\r", "expected LF after CR"),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                err(bytes),
                format!("-ERR Protocol error: {want}\r\n"),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let e = req(b"*1\r\n\xff\r\n").expect_err("refused");
        assert_eq!(
            &e.reply()[..],
            b"-ERR Protocol error: expected '$', got '\xff'\r\n"
        );
    }

    #[test]
    fn waits_where_redis_waits() {
        // No line end yet, or a NUL before it (Redis's strchr stops there).
        for bytes in [
            &b"*1\r\nfoo"[..],
            b"*1\r",
            b"*1\r\n$4\r",
            b"echo x\x00\r\nPING\r\n",
            b"*1\r\n$3\x00\r\nfoo\r\n",
            b"*\x00\r\n",
        ] {
            assert!(req(bytes).expect("not refused").is_none(), "{bytes:?}");
        }
    }

    #[test]
    fn too_big_lines_are_refused_like_redis() {
        let l = lim();
        let cases: [(Vec<u8>, &str); 5] = [
            (vec![b'A'; MAX_INLINE + 1], "too big inline request"),
            (
                [&b"\x00"[..], &[b'A'; MAX_INLINE]].concat(),
                "too big inline request",
            ),
            (
                [&b"*"[..], &[b'1'; MAX_INLINE]].concat(),
                "too big mbulk count string",
            ),
            (
                [&b"*\x00"[..], &[b'1'; MAX_INLINE - 1]].concat(),
                "too big mbulk count string",
            ),
            (
                [&b"*1\r\n$"[..], &[b'1'; MAX_INLINE]].concat(),
                "too big bulk count string",
            ),
        ];
        for (bytes, want) in cases {
            let e = parse_request(&mut BytesMut::from(&bytes[..]), &l).expect_err("refused");
            assert_eq!(e.reply(), format!("-ERR Protocol error: {want}\r\n"));
            // One byte less waits.
            let short = &bytes[..bytes.len() - 1];
            assert!(parse_request(&mut BytesMut::from(short), &l)
                .expect("waits")
                .is_none());
        }
    }

    #[test]
    fn inline_quoting_follows_sdssplitargs() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"set \"a b\" c\r\n", &[b"set", b"a b", b"c"]),
            (b"set 'x\\'y' z\n", &[b"set", b"x'y", b"z"]),
            (b"echo \"\\x41\\x4g\\n\"\r\n", &[b"echo", b"Ax4g\n"]),
            (b"echo a\"b c\"\r\n", &[b"echo", b"ab c"]),
            (b"echo a\x0bb\r\n", &[b"echo", b"a\x0bb"]),
            (b"\x0becho x\r\n", &[b"echo", b"x"]),
            (b"echo \"\" ''\r\n", &[b"echo", b"", b""]),
            (b"echo a\rb\r\n", &[b"echo", b"a", b"b"]),
            (b"echo '\\n'\r\n", &[b"echo", b"\\n"]),
        ];
        for (line, want) in cases {
            let r = req(line).expect("valid").expect("complete");
            let got: Vec<&[u8]> = r.args().collect();
            assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(line));
            assert_eq!(r.argc, want.len());
        }
    }

    #[test]
    fn oversized_input_is_refused() {
        assert!(matches!(req(b"*99\r\n"), Err(FrameError::TooLarge(_))));
        assert!(matches!(
            req(b"*1\r\n$5000\r\n"),
            Err(FrameError::TooLarge(_))
        ));
        let many = format!("{}\r\n", "a ".repeat(17));
        assert!(matches!(
            req(many.as_bytes()),
            Err(FrameError::TooLarge(Reason::InvalidMultibulkLength))
        ));
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
