//! Java's "modified UTF-8" (`DataOutputStream.writeUTF` / `DataInputStream.readUTF`), the
//! string encoding of NiFi's ZooKeeper state. It differs from UTF-8 in two ways: NUL is the
//! two bytes `C0 80`, and a supplementary character (above U+FFFF) is its UTF-16 surrogate
//! pair, each surrogate encoded as three bytes (six in all, where UTF-8 takes four).
//! `writeUTF` prefixes a u16 length, so a string of more than 65535 encoded bytes cannot be
//! written at all.

/// The most bytes `writeUTF` accepts for one string.
pub const MAX_UTF_BYTES: usize = 65535;

/// Why bytes are not a Java modified UTF-8 string this module can return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mutf8Error {
    #[error("malformed modified UTF-8 at byte {0}")]
    Malformed(usize),
    #[error("truncated modified UTF-8 at byte {0}")]
    Truncated(usize),
    /// Java strings may hold a lone surrogate; a Rust string cannot.
    #[error("unpaired UTF-16 surrogate at char {0}")]
    LoneSurrogate(usize),
}

/// How many bytes `s` takes in modified UTF-8 (what `writeUTF` checks against 65535).
pub fn encoded_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0 => 2,
            1..=0x7f => 1,
            0x80..=0x7ff => 2,
            0x800..=0xffff => 3,
            _ => 6,
        })
        .sum()
}

/// Appends `s` in modified UTF-8 (no length prefix).
pub fn encode_into(out: &mut Vec<u8>, s: &str) {
    let mut units = [0u16; 2];
    for c in s.chars() {
        for &u in c.encode_utf16(&mut units).iter() {
            put_unit(out, u);
        }
    }
}

/// `s` in modified UTF-8 (no length prefix).
pub fn encode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(s));
    encode_into(&mut out, s);
    out
}

/// One UTF-16 code unit as `DataOutputStream.writeUTF` writes it.
fn put_unit(out: &mut Vec<u8>, u: u16) {
    match u {
        1..=0x7f => out.push(u as u8),
        0 | 0x80..=0x7ff => {
            out.push(0xc0 | (u >> 6) as u8);
            out.push(0x80 | (u & 0x3f) as u8);
        }
        _ => {
            out.push(0xe0 | (u >> 12) as u8);
            out.push(0x80 | ((u >> 6) & 0x3f) as u8);
            out.push(0x80 | (u & 0x3f) as u8);
        }
    }
}

/// Decodes modified UTF-8 as `DataInputStream.readUTF` does (it also accepts a raw `00`
/// byte and overlong two-byte forms), then joins surrogate pairs.
pub fn decode(b: &[u8]) -> Result<String, Mutf8Error> {
    let mut units: Vec<u16> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let cont = |j: usize| -> Result<u16, Mutf8Error> {
            let x = *b.get(j).ok_or(Mutf8Error::Truncated(j))?;
            if x & 0xc0 != 0x80 {
                return Err(Mutf8Error::Malformed(j));
            }
            Ok((x & 0x3f) as u16)
        };
        match c >> 4 {
            0..=7 => {
                units.push(c as u16);
                i += 1;
            }
            12 | 13 => {
                units.push(((c as u16 & 0x1f) << 6) | cont(i + 1)?);
                i += 2;
            }
            14 => {
                units.push(((c as u16 & 0x0f) << 12) | (cont(i + 1)? << 6) | cont(i + 2)?);
                i += 3;
            }
            _ => return Err(Mutf8Error::Malformed(i)),
        }
    }
    let mut s = String::with_capacity(units.len());
    for (n, r) in char::decode_utf16(units.iter().copied()).enumerate() {
        s.push(r.map_err(|_| Mutf8Error::LoneSurrogate(n))?);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nul_and_supplementary_characters_are_javas_forms() {
        assert_eq!(encode("a\0b"), vec![b'a', 0xc0, 0x80, b'b']);
        // U+1F600 is the surrogate pair D83D DE00, three bytes each.
        assert_eq!(
            encode("\u{1F600}"),
            vec![0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]
        );
        assert_eq!(encode("é€"), "é€".as_bytes());
        assert_eq!(encoded_len("a\0\u{1F600}é€"), 1 + 2 + 6 + 2 + 3);
        assert_eq!(decode(&[0xc0, 0x80]).unwrap(), "\0");
        assert_eq!(decode(&[0]).unwrap(), "\0");
        assert_eq!(
            decode(&[0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]).unwrap(),
            "\u{1F600}"
        );
    }

    #[test]
    fn rejects_what_readutf_rejects_and_lone_surrogates() {
        // A four-byte UTF-8 sequence is not modified UTF-8.
        assert!(matches!(
            decode("\u{1F600}".as_bytes()),
            Err(Mutf8Error::Malformed(0))
        ));
        assert!(matches!(
            decode(&[0xe2, 0x82]),
            Err(Mutf8Error::Truncated(2))
        ));
        assert!(matches!(decode(&[0x80]), Err(Mutf8Error::Malformed(0))));
        assert!(matches!(
            decode(&[0xed, 0xa0, 0xbd]),
            Err(Mutf8Error::LoneSurrogate(0))
        ));
    }

    proptest! {
        #[test]
        fn round_trips_any_string(s in any::<String>()) {
            let b = encode(&s);
            prop_assert_eq!(b.len(), encoded_len(&s));
            prop_assert!(!b.contains(&0));
            prop_assert_eq!(decode(&b).unwrap(), s);
        }
    }
}
