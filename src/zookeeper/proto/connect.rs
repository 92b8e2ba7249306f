//! The connect handshake: the first frame in each direction, which has no header.
//!
//! Written by hand rather than with `jute_record!` because the trailing `readOnly` byte is
//! optional. 3.8 does not declare it in `zookeeper.jute` and reads it by hand, tolerating its
//! absence; 3.9 declares it, but its `ProtocolManager` still accepts peers that omit it and
//! answers them without it. So decoding records whether the byte was there, and encoding
//! writes it back only if it was: a 45-byte request gets a 37-byte response, a 44-byte one a
//! 36-byte response.

use std::fmt;

use bytes::Bytes;

use crate::zookeeper::jute::{JuteError, Reader, Record, Redacted, Writer};

/// First frame of a connection (no `RequestHeader`): 44 bytes, 45 with `readOnly`. `Debug`
/// does not show the password.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConnectRequest {
    pub protocol_version: i32,
    pub last_zxid_seen: i64,
    pub time_out: i32,
    /// 0 asks for a new session.
    pub session_id: i64,
    /// 16 zero bytes for a new session.
    pub passwd: Bytes,
    /// `None` when the client omitted the trailing byte (3.3 and older clients; such a client is
    /// refused by a read-only server and must be answered without the byte).
    pub read_only: Option<bool>,
}

impl Record for ConnectRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        Ok(ConnectRequest {
            protocol_version: r.read()?,
            last_zxid_seen: r.read()?,
            time_out: r.read()?,
            session_id: r.read()?,
            passwd: r.read()?,
            read_only: read_optional_bool(r)?,
        })
    }

    fn encode(&self, w: &mut Writer) {
        w.write_int(self.protocol_version);
        w.write_long(self.last_zxid_seen);
        w.write_int(self.time_out);
        w.write_long(self.session_id);
        w.write(&self.passwd);
        if let Some(ro) = self.read_only {
            w.write_bool(ro);
        }
    }
}

/// The server's answer to a [`ConnectRequest`]: 36 bytes, 37 with `readOnly`. `Debug` does
/// not show the password.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConnectResponse {
    pub protocol_version: i32,
    /// The negotiated session timeout (ms); 0 when the session was refused.
    pub time_out: i32,
    /// 0 when the session was refused.
    pub session_id: i64,
    pub passwd: Bytes,
    /// Present exactly when the client's request carried the byte.
    pub read_only: Option<bool>,
}

impl ConnectResponse {
    /// What a server answers for an unknown or expired session or a wrong password
    /// (`timeOut=0, sessionId=0`, 16 zero bytes) before closing; clients report `Expired`.
    pub fn expired(read_only: Option<bool>) -> Self {
        ConnectResponse {
            protocol_version: 0,
            time_out: 0,
            session_id: 0,
            passwd: Bytes::from_static(&[0; 16]),
            read_only: read_only.map(|_| false),
        }
    }
}

impl Record for ConnectResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        Ok(ConnectResponse {
            protocol_version: r.read()?,
            time_out: r.read()?,
            session_id: r.read()?,
            passwd: r.read()?,
            read_only: read_optional_bool(r)?,
        })
    }

    fn encode(&self, w: &mut Writer) {
        w.write_int(self.protocol_version);
        w.write_int(self.time_out);
        w.write_long(self.session_id);
        w.write(&self.passwd);
        if let Some(ro) = self.read_only {
            w.write_bool(ro);
        }
    }
}

impl fmt::Debug for ConnectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRequest")
            .field("protocol_version", &self.protocol_version)
            .field(
                "last_zxid_seen",
                &format_args!("{:#x}", self.last_zxid_seen),
            )
            .field("time_out", &self.time_out)
            .field("session_id", &format_args!("{:#x}", self.session_id))
            .field("passwd", &Redacted(&self.passwd))
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl fmt::Debug for ConnectResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectResponse")
            .field("protocol_version", &self.protocol_version)
            .field("time_out", &self.time_out)
            .field("session_id", &format_args!("{:#x}", self.session_id))
            .field("passwd", &Redacted(&self.passwd))
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// The trailing `readOnly` byte: present if anything is left (bytes after it are ignored,
/// as the server ignores them).
fn read_optional_bool(r: &mut Reader<'_>) -> Result<Option<bool>, JuteError> {
    if r.is_empty() {
        Ok(None)
    } else {
        r.read_bool().map(Some)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::fmt::Debug;

    fn cat(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    const PASSWD: &[u8] = b"\x00\x00\x00\x10\
        \x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a";

    pub fn connect_request_45() -> Bytes {
        cat(&[
            b"\x00\x00\x00\x00",                 // protocolVersion 0
            b"\x00\x00\x00\x01\x00\x00\x00\x05", // lastZxidSeen 0x1_0000_0005
            b"\x00\x00\x75\x30",                 // timeOut 30000
            b"\x01\x00\x00\xa8\x9b\x3c\x00\x02", // sessionId
            PASSWD,                              // passwd: 16 × 0x5a
            b"\x01",                             // readOnly true
        ])
    }

    pub fn connect_response_37() -> Bytes {
        cat(&[
            b"\x00\x00\x00\x00",                 // protocolVersion 0
            b"\x00\x00\x9c\x40",                 // timeOut 40000
            b"\x01\x00\x00\xa8\x9b\x3c\x00\x02", // sessionId
            PASSWD,                              // passwd
            b"\x00",                             // readOnly false
        ])
    }

    pub fn samples() -> Vec<Bytes> {
        vec![connect_request_45(), connect_response_37()]
    }

    /// `encode(decode(b)) == b` and nothing is left over.
    fn exact<T: Record + Debug>(b: &[u8]) -> T {
        let mut r = Reader::new(b);
        let v = T::decode(&mut r).unwrap();
        assert!(r.is_empty(), "{} bytes left after {v:?}", r.remaining());
        assert_eq!(&v.to_bytes()[..], b, "re-encoding {v:?}");
        v
    }

    /// Every strict prefix shorter than `complete_at` is `Truncated`.
    fn truncations<T: Record + Debug>(b: &[u8], complete_at: usize) {
        for cut in 0..complete_at {
            let got = T::decode(&mut Reader::new(&b[..cut]));
            assert_eq!(got.unwrap_err(), JuteError::Truncated, "cut at {cut}");
        }
    }

    #[test]
    fn connect_request_with_and_without_read_only() {
        let full = connect_request_45();
        assert_eq!(full.len(), 45);
        let v: ConnectRequest = exact(&full);
        assert_eq!(v.protocol_version, 0);
        assert_eq!(v.last_zxid_seen, 0x1_0000_0005);
        assert_eq!(v.time_out, 30_000);
        assert_eq!(v.session_id, 0x0100_00a8_9b3c_0002);
        assert_eq!(&v.passwd[..], &[0x5a; 16]);
        assert_eq!(v.read_only, Some(true));

        let old: ConnectRequest = exact(&full[..44]);
        assert_eq!(old.read_only, None);
        assert_eq!(old.passwd, v.passwd);
        assert_eq!(old.to_bytes().len(), 44);
        truncations::<ConnectRequest>(&full, 44);
        // Bytes after readOnly are ignored, as the server ignores them.
        let mut longer = full.to_vec();
        longer.push(7);
        assert_eq!(ConnectRequest::from_bytes(&longer.into()), Ok(v));
    }

    #[test]
    fn connect_response_with_and_without_read_only() {
        let full = connect_response_37();
        assert_eq!(full.len(), 37);
        let v: ConnectResponse = exact(&full);
        assert_eq!(v.time_out, 40_000);
        assert_eq!(v.session_id, 0x0100_00a8_9b3c_0002);
        assert_eq!(v.read_only, Some(false));
        let old: ConnectResponse = exact(&full[..36]);
        assert_eq!(old.read_only, None);
        truncations::<ConnectResponse>(&full, 36);

        let e = ConnectResponse::expired(Some(true));
        assert_eq!(e.to_bytes().len(), 37);
        assert_eq!((e.time_out, e.session_id, e.read_only), (0, 0, Some(false)));
        assert_eq!(ConnectResponse::expired(None).to_bytes().len(), 36);
    }

    #[test]
    fn values_round_trip() {
        let req = ConnectRequest {
            passwd: Bytes::from_static(&[1; 16]),
            ..Default::default()
        };
        assert_eq!(
            format!("{req:?}"),
            "ConnectRequest { protocol_version: 0, last_zxid_seen: 0x0, time_out: 0, \
             session_id: 0x0, passwd: <16 bytes redacted>, read_only: None }"
        );
        let resp = ConnectResponse {
            read_only: Some(true),
            ..Default::default()
        };
        assert_eq!(ConnectRequest::from_bytes(&req.to_bytes()), Ok(req));
        assert_eq!(ConnectResponse::from_bytes(&resp.to_bytes()), Ok(resp));
        // A null passwd is refused (no client sends one).
        let null_passwd = [&[0u8; 24][..], b"\xff\xff\xff\xff"].concat();
        assert_eq!(
            ConnectRequest::decode(&mut Reader::new(&null_passwd)),
            Err(JuteError::Null)
        );
    }
}
