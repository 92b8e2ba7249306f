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
pub fn encode_binary(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&(entries.len() as i32).to_be_bytes());
    for (k, v) in entries {
        for s in [k, v] {
            out.push(1);
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
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
            // Modified UTF-8 only differs from UTF-8 for NUL and supplementary characters;
            // show those lossily rather than reject the whole state.
            Some(Some(String::from_utf8_lossy(take(r, len)?).into_owned()))
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
}
