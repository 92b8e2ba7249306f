//! Property tests of the decoders that read what clients send: the RESP request parser
//! (against `redis-protocol` as the oracle, at every chunking of the input) and every jute
//! record (decode∘encode identity, truncation at every prefix, arbitrary bytes). No server
//! is involved; the byte-for-byte comparison with a real redis-server is in
//! `redis_protocol_errors.rs`.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use redis_protocol::resp2::types::OwnedFrame;
use statemirror::redis::resp::{parse_request_from, FrameError, Limits};
use statemirror::zookeeper::frame::next_frame;
use statemirror::zookeeper::jute::{JuteError, Reader, Record};
use statemirror::zookeeper::proto::*;

// ---------------------------------------------------------------------------------------
// RESP requests

const LIM: Limits = Limits {
    max_request_bytes: 4096,
    max_args: 64,
};

/// How a run of the parser over some input ended.
#[derive(Debug, PartialEq)]
struct Parsed {
    /// Each request's forwarded bytes.
    frames: Vec<Vec<u8>>,
    /// Each request's arguments.
    args: Vec<Vec<Vec<u8>>>,
    error: Option<FrameError>,
    /// Bytes left waiting for more (after an error the connection closes: not compared).
    left: usize,
}

/// Feeds `input` cut at `cuts` (sorted offsets) and parses after every piece, as a session
/// does after every read.
fn parse_in_pieces(input: &[u8], cuts: &[usize]) -> Parsed {
    let mut out = Parsed {
        frames: Vec::new(),
        args: Vec::new(),
        error: None,
        left: 0,
    };
    let mut buf = BytesMut::new();
    let mut progress = None;
    let mut from = 0;
    let ends = cuts.iter().copied().chain([input.len()]);
    'feed: for to in ends {
        let to = to.clamp(from, input.len());
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            match parse_request_from(&mut buf, &LIM, &mut progress) {
                Ok(Some(r)) => {
                    out.args.push(r.args().map(<[u8]>::to_vec).collect());
                    assert_eq!(r.args().count(), r.argc, "argc agrees with the arguments");
                    out.frames.push(r.raw.to_vec());
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    if out.error.is_none() {
        out.left = buf.len();
    }
    out
}

fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// A request as `redis-protocol` reads it: an array of (non-null) bulk strings, and how
/// many bytes it took. `None` for anything else.
fn oracle_request(input: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    match redis_protocol::resp2::decode::decode(input) {
        Ok(Some((OwnedFrame::Array(items), n))) if !items.is_empty() => {
            let mut args = Vec::new();
            for i in items {
                match i {
                    OwnedFrame::BulkString(b) => args.push(b),
                    _ => return None,
                }
            }
            Some((args, n))
        }
        _ => None,
    }
}

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..12),
        proptest::collection::vec(prop::sample::select(b"ab \r\n$*\"'\\x0".to_vec()), 0..8),
    ]
}

fn request() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(arg(), 1..6)
}

/// An inline command line: words, some quoted, some with escapes.
fn inline_line() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        "[a-z0-9]{1,6}".prop_map(String::into_bytes),
        Just(b"\"a b\"".to_vec()),
        Just(b"'x\\'y'".to_vec()),
        Just(b"\"\\x41\\n\"".to_vec()),
        Just(b"\"unbalanced".to_vec()),
        Just(b"\"a\"b".to_vec()),
        Just(b"\x0b".to_vec()),
    ];
    (proptest::collection::vec(word, 0..5), prop::bool::ANY).prop_map(|(ws, crlf)| {
        let mut v = ws.join(&b' ');
        v.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        v
    })
}

/// Well-formed pipelines, the same corrupted, inline commands, and noise.
fn resp_input() -> impl Strategy<Value = Vec<u8>> {
    let pipeline = proptest::collection::vec(
        prop_oneof![
            3 => request().prop_map(|r| encode_request(&r)),
            1 => inline_line(),
            1 => Just(b"*0\r\n".to_vec()),
            1 => Just(b"*-1\r\n".to_vec()),
        ],
        1..4,
    )
    .prop_map(|v| v.concat());
    let nasty = prop::sample::select(b"\r\n$*-0+:\x00\xff\"9".to_vec());
    let mutation = (any::<prop::sample::Index>(), nasty, 0u8..4);
    let corrupted =
        (pipeline.clone(), proptest::collection::vec(mutation, 1..4)).prop_map(|(mut v, muts)| {
            for (at, b, how) in muts {
                if v.is_empty() {
                    break;
                }
                let i = at.index(v.len());
                match how {
                    0 => v[i] = b,
                    1 => v.insert(i, b),
                    2 => {
                        v.remove(i);
                    }
                    _ => v.truncate(i),
                }
            }
            v
        });
    prop_oneof![
        3 => pipeline,
        4 => corrupted,
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn cuts_for(len: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..=len, 0..12).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any input splits into the same requests, and ends the same way, however it is cut
    /// into reads; every request's bytes re-read the same with `redis-protocol`.
    #[test]
    fn resp_requests_do_not_depend_on_chunking(
        (input, cuts) in resp_input().prop_flat_map(|i| {
            let n = i.len();
            (Just(i), cuts_for(n))
        })
    ) {
        let whole = parse_in_pieces(&input, &[]);
        let bytewise: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(&parse_in_pieces(&input, &cuts), &whole);
        prop_assert_eq!(&parse_in_pieces(&input, &bytewise), &whole);
        for (frame, args) in whole.frames.iter().zip(&whole.args) {
            let (oracle_args, n) = oracle_request(frame)
                .ok_or_else(|| TestCaseError::fail(format!("oracle refuses {frame:?}")))?;
            prop_assert_eq!(n, frame.len());
            prop_assert_eq!(&oracle_args, args);
        }
    }

    /// Where the input starts with a canonical request (`redis-protocol` reads an array of
    /// bulk strings, and re-encoding it gives the same bytes), the parser returns exactly
    /// that request; where the parser accepts a multibulk request, the oracle does too.
    #[test]
    fn resp_requests_agree_with_redis_protocol(input in resp_input()) {
        let ours = parse_in_pieces(&input, &[]);
        if let Some((args, n)) = oracle_request(&input) {
            if encode_request(&args) == input[..n] && n <= LIM.max_request_bytes
                && args.len() <= LIM.max_args
            {
                prop_assert_eq!(ours.frames.first(), Some(&input[..n].to_vec()));
                prop_assert_eq!(ours.args.first(), Some(&args));
            }
        }
        if let Some(f) = ours.frames.first().filter(|f| input.starts_with(f)) {
            // A multibulk request at the front is forwarded as is, and reads the same.
            let (args, n) = oracle_request(&input)
                .ok_or_else(|| TestCaseError::fail("oracle refuses what the parser took"))?;
            prop_assert_eq!(n, f.len());
            prop_assert_eq!(Some(&args), ours.args.first());
        }
    }

    /// Well-formed pipelines parse completely, with their arguments intact.
    #[test]
    fn well_formed_pipelines_round_trip(reqs in proptest::collection::vec(request(), 1..5)) {
        let input: Vec<u8> = reqs.iter().flat_map(|r| encode_request(r)).collect();
        let got = parse_in_pieces(&input, &[]);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.left, 0);
        prop_assert_eq!(got.args, reqs);
    }
}

// ---------------------------------------------------------------------------------------
// Jute records

fn path() -> impl Strategy<Value = String> {
    prop_oneof!["(/[a-z0-9]{1,4}){1,3}", Just("/".to_string()), "\\PC{0,6}",]
}

fn data() -> impl Strategy<Value = Option<Bytes>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from))
}

fn acl() -> impl Strategy<Value = Acl> {
    (any::<i32>(), "[a-z]{0,6}", "\\PC{0,6}").prop_map(|(perms, scheme, id)| Acl {
        perms,
        id: Id { scheme, id },
    })
}

fn acls() -> impl Strategy<Value = Vec<Acl>> {
    proptest::collection::vec(acl(), 0..3)
}

fn stat() -> impl Strategy<Value = Stat> {
    (
        any::<(i64, i64, i64, i64)>(),
        any::<(i32, i32, i32)>(),
        any::<(i64, i32, i32, i64)>(),
    )
        .prop_map(|((a, b, c, d), (e, f, g), (h, i, j, k))| Stat {
            czxid: a,
            mzxid: b,
            ctime: c,
            mtime: d,
            version: e,
            cversion: f,
            aversion: g,
            ephemeral_owner: h,
            data_length: i,
            num_children: j,
            pzxid: k,
        })
}

fn create() -> impl Strategy<Value = CreateRequest> {
    (path(), data(), acls(), any::<i32>()).prop_map(|(path, data, acl, flags)| CreateRequest {
        path,
        data,
        acl,
        flags,
    })
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(path(), 0..3)
}

fn multi_op() -> impl Strategy<Value = MultiOp> {
    prop_oneof![
        create().prop_map(MultiOp::Create),
        create().prop_map(MultiOp::Create2),
        create().prop_map(MultiOp::CreateContainer),
        (create(), any::<i64>()).prop_map(|(c, ttl)| MultiOp::CreateTtl(CreateTtlRequest {
            path: c.path,
            data: c.data,
            acl: c.acl,
            flags: c.flags,
            ttl,
        })),
        (path(), any::<i32>())
            .prop_map(|(path, version)| MultiOp::Delete(DeleteRequest { path, version })),
        (path(), data(), any::<i32>()).prop_map(|(path, data, version)| MultiOp::SetData(
            SetDataRequest {
                path,
                data,
                version
            }
        )),
        (path(), any::<i32>())
            .prop_map(|(path, version)| MultiOp::Check(CheckVersionRequest { path, version })),
        (path(), any::<bool>())
            .prop_map(|(path, watch)| MultiOp::GetData(GetDataRequest { path, watch })),
        (path(), any::<bool>())
            .prop_map(|(path, watch)| MultiOp::GetChildren(GetChildrenRequest { path, watch })),
    ]
}

/// Encodes `v`, decodes it back (all bytes consumed), and cuts the encoding at every
/// prefix: each must be refused cleanly (`complete_prefix_ok`: a shorter form that is
/// itself valid, like a `ConnectRequest` without its optional last byte).
fn identity_and_truncation<T>(v: &T, complete_prefix_ok: bool) -> Result<(), TestCaseError>
where
    T: Record + PartialEq + std::fmt::Debug,
{
    let bytes = v.to_bytes();
    let mut r = Reader::from_bytes(&bytes);
    let back = T::decode(&mut r);
    prop_assert_eq!(back.as_ref(), Ok(v));
    prop_assert_eq!(r.remaining(), 0);
    for cut in 0..bytes.len() {
        let prefix = bytes.slice(..cut);
        match T::decode(&mut Reader::from_bytes(&prefix)) {
            Err(JuteError::Truncated) => {}
            Err(e) => prop_assert!(false, "prefix {cut}: {e:?} instead of Truncated"),
            Ok(d) => {
                prop_assert!(complete_prefix_ok, "prefix {cut} of {v:?} decoded as {d:?}");
                prop_assert_eq!(d.to_bytes().len(), cut);
            }
        }
    }
    Ok(())
}

macro_rules! identity_props {
    ($($name:ident: $strategy:expr, $prefix_ok:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            $(
                #[test]
                fn $name(v in $strategy) {
                    identity_and_truncation(&v, $prefix_ok)?;
                }
            )*
        }
    };
}

identity_props! {
    request_header: any::<(i32, i32)>().prop_map(|(xid, op)| RequestHeader { xid, op }), false;
    reply_header: any::<(i32, i64, i32)>()
        .prop_map(|(xid, zxid, err)| ReplyHeader { xid, zxid, err }), false;
    connect_request: (any::<(i32, i64, i32, i64)>(),
            proptest::collection::vec(any::<u8>(), 0..20), proptest::option::of(any::<bool>()))
        .prop_map(|((protocol_version, last_zxid_seen, time_out, session_id), p, read_only)|
            ConnectRequest { protocol_version, last_zxid_seen, time_out, session_id,
                passwd: Bytes::from(p), read_only }), true;
    connect_response: (any::<(i32, i32, i64)>(),
            proptest::collection::vec(any::<u8>(), 0..20), proptest::option::of(any::<bool>()))
        .prop_map(|((protocol_version, time_out, session_id), p, read_only)|
            ConnectResponse { protocol_version, time_out, session_id,
                passwd: Bytes::from(p), read_only }), true;
    stat_record: stat(), false;
    create_request: create(), false;
    create_ttl_request: (create(), any::<i64>()).prop_map(|(c, ttl)| CreateTtlRequest {
        path: c.path, data: c.data, acl: c.acl, flags: c.flags, ttl }), false;
    delete_request: (path(), any::<i32>())
        .prop_map(|(path, version)| DeleteRequest { path, version }), false;
    set_data_request: (path(), data(), any::<i32>())
        .prop_map(|(path, data, version)| SetDataRequest { path, data, version }), false;
    set_acl_request: (path(), acls(), any::<i32>())
        .prop_map(|(path, acl, version)| SetAclRequest { path, acl, version }), false;
    get_data_request: (path(), any::<bool>())
        .prop_map(|(path, watch)| GetDataRequest { path, watch }), false;
    reconfig_request: (proptest::option::of(path()), proptest::option::of(path()),
            proptest::option::of(path()), any::<i64>())
        .prop_map(|(joining_servers, leaving_servers, new_members, cur_config_id)|
            ReconfigRequest { joining_servers, leaving_servers, new_members, cur_config_id }),
        false;
    set_watches: (any::<i64>(), strings(), strings(), strings())
        .prop_map(|(relative_zxid, data, exist, child)|
            SetWatches { relative_zxid, data, exist, child }), false;
    set_watches2: (any::<i64>(), strings(), strings(), strings(), strings(), strings())
        .prop_map(|(relative_zxid, data, exist, child, persistent, persistent_recursive)|
            SetWatches2 { relative_zxid, data, exist, child, persistent,
                persistent_recursive }), false;
    add_watch_request: (path(), any::<i32>())
        .prop_map(|(path, mode)| AddWatchRequest { path, mode }), false;
    auth_packet: (any::<i32>(), "[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..16))
        .prop_map(|(auth_type, scheme, a)| AuthPacket { auth_type, scheme,
            auth: Bytes::from(a) }), false;
    get_sasl_request: data().prop_map(|token| GetSaslRequest { token }), false;
    create2_response: (path(), stat()).prop_map(|(path, stat)| Create2Response { path, stat }),
        false;
    get_data_response: (data(), stat()).prop_map(|(data, stat)| GetDataResponse { data, stat }),
        false;
    get_children2_response: (strings(), stat())
        .prop_map(|(children, stat)| GetChildren2Response { children, stat }), false;
    get_acl_response: (acls(), stat()).prop_map(|(acl, stat)| GetAclResponse { acl, stat }),
        false;
    watcher_event: (any::<i32>(), any::<i32>(), path())
        .prop_map(|(event_type, state, path)| WatcherEvent { event_type, state, path }), false;
    multi_request: proptest::collection::vec(multi_op(), 0..4)
        .prop_map(|ops| MultiRequest { ops }), false;
    multi_response: proptest::collection::vec(multi_result(), 0..4)
        .prop_map(|results| MultiResponse { results }), false;
    multi_header: any::<(i32, bool, i32)>()
        .prop_map(|(op, done, err)| MultiHeader { op, done, err }), false;
    acl_record: acl(), false;
    id_record: ("[a-z]{0,6}", "\\PC{0,6}").prop_map(|(scheme, id)| Id { scheme, id }), false;
    client_info: ("[a-z]{0,6}", "\\PC{0,6}")
        .prop_map(|(auth_scheme, user)| ClientInfo { auth_scheme, user }), false;
    check_version_request: (path(), any::<i32>())
        .prop_map(|(path, version)| CheckVersionRequest { path, version }), false;
    exists_request: (path(), any::<bool>())
        .prop_map(|(path, watch)| ExistsRequest { path, watch }), false;
    get_children_request: (path(), any::<bool>())
        .prop_map(|(path, watch)| GetChildrenRequest { path, watch }), false;
    path_request: path().prop_map(|path| PathRequest { path }), false;
    watches_request: (path(), any::<i32>())
        .prop_map(|(path, watcher_type)| WatchesRequest { path, watcher_type }), false;
    create_response: path().prop_map(|path| CreateResponse { path }), false;
    stat_response: stat().prop_map(|stat| StatResponse { stat }), false;
    get_children_response: strings().prop_map(|children| GetChildrenResponse { children }),
        false;
    error_response: any::<i32>().prop_map(|err| ErrorResponse { err }), false;
    get_all_children_number_response: any::<i32>()
        .prop_map(|total_number| GetAllChildrenNumberResponse { total_number }), false;
    set_sasl_response: data().prop_map(|token| SetSaslResponse { token }), false;
    who_am_i_response: proptest::collection::vec(
            ("[a-z]{0,6}", "\\PC{0,6}")
                .prop_map(|(auth_scheme, user)| ClientInfo { auth_scheme, user }), 0..3)
        .prop_map(|client_info| WhoAmIResponse { client_info }), false;
}

fn multi_result() -> impl Strategy<Value = MultiResult> {
    prop_oneof![
        path().prop_map(|path| MultiResult::Create { path }),
        (path(), stat()).prop_map(|(path, stat)| MultiResult::Create2 { path, stat }),
        Just(MultiResult::Delete),
        stat().prop_map(|stat| MultiResult::SetData { stat }),
        Just(MultiResult::Check),
        (data(), stat()).prop_map(|(data, stat)| MultiResult::GetData { data, stat }),
        strings().prop_map(|children| MultiResult::GetChildren { children }),
        any::<i32>().prop_map(|err| MultiResult::Error { err }),
    ]
}

/// Decodes `b` as `T`: whatever decodes re-encodes to as many bytes as it took, and that
/// encoding decodes to the same value.
fn survive<T: Record + PartialEq + std::fmt::Debug>(b: &Bytes) -> Result<(), TestCaseError> {
    let mut r = Reader::from_bytes(b);
    if let Ok(v) = T::decode(&mut r) {
        let again = v.to_bytes();
        prop_assert_eq!(again.len(), b.len() - r.remaining(), "{:?}", v);
        let back = T::from_bytes(&again);
        prop_assert_eq!(back.as_ref(), Ok(&v));
    }
    Ok(())
}

/// Jute-shaped noise: small ints and lengths, `-1`, strings, bytes and bools, so decoding
/// gets past the first field far more often than pure noise would.
fn jute_noise() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        (-2i32..6).prop_map(|n| n.to_be_bytes().to_vec()),
        any::<i32>().prop_map(|n| n.to_be_bytes().to_vec()),
        any::<i64>().prop_map(|n| n.to_be_bytes().to_vec()),
        prop::sample::select(vec![0u8, 1, 2, 0xff]).prop_map(|b| vec![b]),
        "\\PC{0,5}".prop_map(|s| {
            let mut v = (s.len() as i32).to_be_bytes().to_vec();
            v.extend_from_slice(s.as_bytes());
            v
        }),
        proptest::collection::vec(any::<u8>(), 0..6),
    ];
    proptest::collection::vec(token, 0..16).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Arbitrary (jute-shaped) bytes never panic any decoder, and what decodes re-encodes.
    #[test]
    fn jute_decoders_survive_noise(bytes in jute_noise()) {
        let b = Bytes::from(bytes);
        survive::<ConnectRequest>(&b)?;
        survive::<ConnectResponse>(&b)?;
        survive::<RequestHeader>(&b)?;
        survive::<ReplyHeader>(&b)?;
        survive::<Stat>(&b)?;
        survive::<Acl>(&b)?;
        survive::<CreateRequest>(&b)?;
        survive::<CreateTtlRequest>(&b)?;
        survive::<DeleteRequest>(&b)?;
        survive::<SetDataRequest>(&b)?;
        survive::<SetAclRequest>(&b)?;
        survive::<CheckVersionRequest>(&b)?;
        survive::<GetDataRequest>(&b)?;
        survive::<ExistsRequest>(&b)?;
        survive::<GetChildrenRequest>(&b)?;
        survive::<PathRequest>(&b)?;
        survive::<ReconfigRequest>(&b)?;
        survive::<WatchesRequest>(&b)?;
        survive::<AddWatchRequest>(&b)?;
        survive::<SetWatches>(&b)?;
        survive::<SetWatches2>(&b)?;
        survive::<AuthPacket>(&b)?;
        survive::<GetSaslRequest>(&b)?;
        survive::<CreateResponse>(&b)?;
        survive::<Create2Response>(&b)?;
        survive::<StatResponse>(&b)?;
        survive::<GetDataResponse>(&b)?;
        survive::<GetChildrenResponse>(&b)?;
        survive::<GetChildren2Response>(&b)?;
        survive::<GetAclResponse>(&b)?;
        survive::<ErrorResponse>(&b)?;
        survive::<GetAllChildrenNumberResponse>(&b)?;
        survive::<SetSaslResponse>(&b)?;
        survive::<WhoAmIResponse>(&b)?;
        survive::<WatcherEvent>(&b)?;
        survive::<MultiHeader>(&b)?;
        survive::<MultiRequest>(&b)?;
        survive::<MultiResponse>(&b)?;
    }

    /// Frames cut from any byte stream never panic and never exceed the limit; a stream of
    /// well-framed bodies comes back body for body at any chunking.
    #[test]
    fn zk_frames_do_not_depend_on_chunking(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
        noise in proptest::collection::vec(any::<u8>(), 0..12),
        chunk in 1usize..17,
    ) {
        let mut stream = Vec::new();
        for b in &bodies {
            stream.extend_from_slice(&(b.len() as i32).to_be_bytes());
            stream.extend_from_slice(b);
        }
        stream.extend_from_slice(&noise);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut failed = false;
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match next_frame(&mut buf, 64) {
                    Ok(Some(f)) => {
                        prop_assert!(f.len() <= 64);
                        got.push(f.to_vec());
                    }
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                break;
            }
        }
        prop_assert!(got.len() >= bodies.len() || failed);
        prop_assert_eq!(&got[..bodies.len().min(got.len())], &bodies[..bodies.len().min(got.len())]);
    }
}
