//! NiFi component state, decoded so a verification can name the component and the state
//! entries that differ instead of reporting an opaque mismatch.
//!
//! Formats (see `shared/reference/nifi-state-backends.md`):
//! - Redis (`RedisStateMapJsonSerDe`): `{"version":N,"encodingVersion":1,"stateValues":{...}}`;
//! - ZooKeeper (`ZooKeeperStateProvider`): `0x01`, int32 entry count, then per entry
//!   `bool hasKey, writeUTF(key), bool hasValue, writeUTF(value)` (big-endian; `writeUTF` is a
//!   u16 length and modified UTF-8). The state version is the znode's data version.

use std::collections::BTreeMap;

use serde::Serialize;

use super::mutf8;

/// One component's state: entries (a missing value is `None`) and its version if known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NifiState {
    pub version: Option<i64>,
    pub entries: BTreeMap<String, Option<String>>,
}

/// Which entries of a component differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NifiDiff {
    pub component: String,
    /// Leader and follower state versions when they differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<(Option<i64>, Option<i64>)>,
    pub entries: Vec<EntryDiff>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryDiff {
    pub entry: String,
    /// `None`: the side does not have the entry (or the component) at all.
    pub leader: Option<String>,
    pub follower: Option<String>,
}

/// Decodes the Redis JSON form; `None` when it is not NiFi state.
pub fn decode_json(bytes: &[u8]) -> Option<NifiState> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let obj = v.as_object()?;
    let values = obj.get("stateValues")?.as_object()?;
    let entries = values
        .iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            };
            (k.clone(), s)
        })
        .collect();
    Some(NifiState {
        version: obj.get("version").and_then(|v| v.as_i64()),
        entries,
    })
}

/// Decodes the ZooKeeper binary form; `None` when it is not NiFi state.
pub fn decode_binary(bytes: &[u8], version: Option<i64>) -> Option<NifiState> {
    let mut r = bytes;
    if take(&mut r, 1)? != [1] {
        return None;
    }
    let n = i32::from_be_bytes(take(&mut r, 4)?.try_into().ok()?);
    if n < 0 || n as usize > bytes.len() {
        return None;
    }
    let mut entries = BTreeMap::new();
    for _ in 0..n {
        let key = read_opt_utf(&mut r)?;
        let value = read_opt_utf(&mut r)?;
        entries.insert(key.unwrap_or_default(), value);
    }
    if !r.is_empty() {
        return None;
    }
    Some(NifiState { version, entries })
}

/// Encodes the ZooKeeper binary form (tests and the demo write NiFi-shaped state with it).
/// Panics on a string over 65535 encoded bytes (test data only; see [`encode_state_binary`]).
pub fn encode_binary(entries: &[(&str, &str)]) -> Vec<u8> {
    let state = NifiState {
        version: None,
        entries: entries
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect(),
    };
    match encode_state_binary(&state) {
        Ok(b) => b,
        Err(e) => panic!("test state cannot be encoded: {e:?}"),
    }
}

/// An entry `writeUTF` cannot write: its key or value is over 65535 encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TooLong {
    pub entry: String,
    /// `key` or `value`.
    pub part: &'static str,
    pub encoded_bytes: usize,
}

/// Encodes a state as `ZooKeeperStateProvider.serialize` does (entries in key order; NiFi
/// writes its map's order, which readers ignore). Every entry whose key or value
/// `DataOutputStream.writeUTF` would refuse is reported; nothing is truncated.
pub fn encode_state_binary(state: &NifiState) -> Result<Vec<u8>, Vec<TooLong>> {
    let mut out = vec![1u8];
    out.extend_from_slice(&(state.entries.len() as i32).to_be_bytes());
    let mut bad = Vec::new();
    for (k, v) in &state.entries {
        for (part, s) in [("key", Some(k.as_str())), ("value", v.as_deref())] {
            let Some(s) = s else {
                out.push(0);
                continue;
            };
            let n = mutf8::encoded_len(s);
            if n > mutf8::MAX_UTF_BYTES {
                bad.push(TooLong {
                    entry: k.clone(),
                    part,
                    encoded_bytes: n,
                });
                continue;
            }
            out.push(1);
            out.extend_from_slice(&(n as u16).to_be_bytes());
            mutf8::encode_into(&mut out, s);
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(bad)
    }
}

/// Encodes the Redis JSON form byte for byte as NiFi's Jackson `ObjectMapper` writes it:
/// `{"version":N,"encodingVersion":1,"stateValues":{...}}`, keys sorted, compact, non-ASCII
/// as UTF-8, control characters as Jackson escapes them (`\n`, `\u001F`, upper-case hex).
pub fn encode_json(state: &NifiState, version: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + state.entries.len() * 32);
    out.extend_from_slice(b"{\"version\":");
    out.extend_from_slice(version.to_string().as_bytes());
    out.extend_from_slice(b",\"encodingVersion\":1,\"stateValues\":{");
    for (i, (k, v)) in state.entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(&mut out, k);
        out.push(b':');
        match v {
            Some(v) => json_string(&mut out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}}");
    out
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Decodes the ZooKeeper binary form exactly (Java's modified UTF-8), naming what is wrong.
pub fn decode_binary_strict(bytes: &[u8], version: Option<i64>) -> Result<NifiState, String> {
    let mut r = bytes;
    match take(&mut r, 1) {
        Some([1]) => {}
        Some([v]) => return Err(format!("encoding version {v} (NiFi writes 1)")),
        _ => return Err("empty data".into()),
    }
    let n = take(&mut r, 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or("truncated entry count")?;
    if n < 0 || n as usize > bytes.len() {
        return Err(format!("bad entry count {n}"));
    }
    let mut entries = BTreeMap::new();
    for i in 0..n {
        let mut two = [None, None];
        for slot in &mut two {
            *slot = match take(&mut r, 1) {
                Some([0]) => None,
                Some([1]) => {
                    let len = take(&mut r, 2)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                        .ok_or(format!("entry {i}: truncated"))?;
                    let b = take(&mut r, len).ok_or(format!("entry {i}: truncated"))?;
                    Some(mutf8::decode(b).map_err(|e| format!("entry {i}: {e}"))?)
                }
                _ => return Err(format!("entry {i}: bad presence flag or truncated")),
            };
        }
        let [k, v] = two;
        entries.insert(k.unwrap_or_default(), v);
    }
    if !r.is_empty() {
        return Err(format!("{} bytes after the last entry", r.len()));
    }
    Ok(NifiState { version, entries })
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Some(a)
}

fn read_opt_utf(r: &mut &[u8]) -> Option<Option<String>> {
    match take(r, 1)? {
        [0] => Some(None),
        [1] => {
            let len = u16::from_be_bytes(take(r, 2)?.try_into().ok()?) as usize;
            // Exact when it is modified UTF-8; otherwise shown lossily rather than the
            // whole state rejected (verify names entries; migrate uses the strict decoder).
            let b = take(r, len)?;
            Some(Some(
                mutf8::decode(b).unwrap_or_else(|_| String::from_utf8_lossy(b).into_owned()),
            ))
        }
        _ => None,
    }
}

/// The entries that differ between the two sides of one component (either may be absent).
pub fn diff(component: &str, leader: Option<&NifiState>, follower: Option<&NifiState>) -> NifiDiff {
    let empty = NifiState::default();
    let (l, f) = (leader.unwrap_or(&empty), follower.unwrap_or(&empty));
    let mut entries = Vec::new();
    let keys: std::collections::BTreeSet<&String> =
        l.entries.keys().chain(f.entries.keys()).collect();
    for k in keys {
        let (a, b) = (l.entries.get(k), f.entries.get(k));
        if a != b {
            entries.push(EntryDiff {
                entry: k.clone(),
                leader: a.cloned().flatten(),
                follower: b.cloned().flatten(),
            });
        }
    }
    let lv = leader.and_then(|s| s.version);
    let fv = follower.and_then(|s| s.version);
    NifiDiff {
        component: component.to_string(),
        version: (lv != fv).then_some((lv, fv)),
        entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_redis_json_and_names_the_differing_entry() {
        let l =
            decode_json(br#"{"version":4,"encodingVersion":1,"stateValues":{"a":"1","b":"2"}}"#)
                .unwrap();
        let f = decode_json(
            br#"{"version":4,"encodingVersion":1,"stateValues":{"a":"1","b":"9","c":null}}"#,
        )
        .unwrap();
        let d = diff("c1", Some(&l), Some(&f));
        assert_eq!(d.version, None);
        assert_eq!(
            d.entries,
            vec![
                EntryDiff {
                    entry: "b".into(),
                    leader: Some("2".into()),
                    follower: Some("9".into())
                },
                EntryDiff {
                    entry: "c".into(),
                    leader: None,
                    follower: None
                },
            ]
        );
        assert!(decode_json(b"plain").is_none());
        assert!(decode_json(br#"{"x":1}"#).is_none());
    }

    #[test]
    fn binary_round_trips_and_rejects_other_data() {
        let b = encode_binary(&[("listing.timestamp", "1700000000000"), ("id.0", "s3://b/k")]);
        let s = decode_binary(&b, Some(3)).unwrap();
        assert_eq!(s.version, Some(3));
        assert_eq!(
            s.entries["listing.timestamp"].as_deref(),
            Some("1700000000000")
        );
        assert_eq!(
            decode_binary(&[1, 0, 0, 0, 0], None).unwrap().entries.len(),
            0
        );
        assert!(decode_binary(b"hello", None).is_none());
        assert!(decode_binary(&[2, 0, 0, 0, 0], None).is_none());
        assert!(decode_binary(&b[..b.len() - 1], None).is_none());
        let d = diff("c", Some(&s), None);
        assert_eq!(d.entries.len(), 2);
        assert_eq!(d.entries[0].follower, None);
    }

    #[test]
    fn json_is_what_jackson_writes() {
        let mut st = NifiState::default();
        st.entries
            .insert("b".into(), Some("q\"\\/\n\t\u{1}\u{1b}é\u{1F600}".into()));
        st.entries.insert("a".into(), None);
        st.entries.insert("c\0".into(), Some(String::new()));
        let j = encode_json(&st, 7);
        assert_eq!(
            String::from_utf8(j.clone()).unwrap(),
            "{\"version\":7,\"encodingVersion\":1,\"stateValues\":{\"a\":null,\"b\":\"q\\\"\\\\/\\n\\t\\u0001\\u001Bé\u{1F600}\",\"c\\u0000\":\"\"}}"
        );
        let back = decode_json(&j).unwrap();
        assert_eq!(back.entries, st.entries);
        assert_eq!(back.version, Some(7));
        assert_eq!(
            encode_json(&NifiState::default(), 0),
            br#"{"version":0,"encodingVersion":1,"stateValues":{}}"#
        );
    }

    #[test]
    fn binary_reports_every_entry_writeutf_refuses() {
        let mut st = NifiState::default();
        st.entries.insert("ok".into(), Some("x".repeat(65535)));
        st.entries.insert("big".into(), Some("x".repeat(65536)));
        // 21846 three-byte characters: 65538 encoded bytes, though only 21846 chars.
        st.entries.insert("wide".into(), Some("€".repeat(21846)));
        let e = encode_state_binary(&st).unwrap_err();
        let names: Vec<&str> = e.iter().map(|t| t.entry.as_str()).collect();
        assert_eq!(names, ["big", "wide"]);
        assert_eq!(e[1].encoded_bytes, 65538);
        st.entries.remove("big");
        st.entries.remove("wide");
        let b = encode_state_binary(&st).unwrap();
        assert_eq!(decode_binary_strict(&b, None).unwrap().entries, st.entries);
        assert_eq!(
            encode_state_binary(&NifiState::default()).unwrap(),
            [1, 0, 0, 0, 0]
        );
        assert!(decode_binary_strict(&[2, 0, 0, 0, 0], None).is_err());
        assert!(decode_binary_strict(&[1, 0, 0, 0, 1, 1, 0, 1, 0xf0, 0], None).is_err());
    }

    fn state_strategy() -> impl proptest::strategy::Strategy<Value = NifiState> {
        use proptest::prelude::*;
        proptest::collection::btree_map(
            any::<String>(),
            proptest::option::of(any::<String>()),
            0..8,
        )
        .prop_map(|entries| NifiState {
            version: None,
            entries,
        })
    }

    proptest::proptest! {
        #[test]
        fn zookeeper_and_redis_forms_translate_exactly(st in state_strategy(), v in 0i64..1_000_000) {
            let bin = encode_state_binary(&st).unwrap();
            let from_zk = decode_binary_strict(&bin, Some(v)).unwrap();
            proptest::prop_assert_eq!(&from_zk.entries, &st.entries);
            let json = encode_json(&from_zk, v);
            let from_redis = decode_json(&json).unwrap();
            proptest::prop_assert_eq!(from_redis.version, Some(v));
            proptest::prop_assert_eq!(&from_redis.entries, &st.entries);
            // serde_json reads what we write the same way Jackson does.
            let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
            proptest::prop_assert_eq!(parsed["stateValues"].as_object().map(|o| o.len()), Some(st.entries.len()));
            proptest::prop_assert_eq!(encode_state_binary(&from_redis).unwrap(), bin);
        }
    }
}
