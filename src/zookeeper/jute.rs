//! Jute, ZooKeeper's binary record encoding: big-endian `int` (4 bytes) and `long` (8),
//! `boolean` (1 byte), and `buffer` / `ustring` / `vector<T>` as an `int` length or count
//! followed by the payload, where `-1` means null.
//!
//! Why a hand-written reader: the proxy decodes records that arrive from the network, so
//! every length is checked against the bytes actually present and against a cap (the
//! server's `jute.maxbuffer`, default `0xfffff`) before anything is allocated, and every
//! malformed input is a [`JuteError`], never a panic.
//!
//! Null handling follows one rule so that a successful decode always re-encodes to the same
//! value: a field that is legitimately null on the wire (znode data — `create` with `null`
//! data from the Java or C client, a node created that way read back — SASL tokens, the
//! optional strings of `reconfig`) is an `Option`; everywhere else (paths, passwords, ACLs,
//! children lists) a null is refused with [`JuteError::Null`]. The Java reader is more
//! lenient: it accepts a null anywhere (the server then fails the request, e.g. a null path
//! with BADARGUMENTS), replaces invalid UTF-8 instead of refusing it, and reads any non-zero
//! boolean byte as `true` — as [`Reader::read_bool`] does, re-encoding it as `1`.
//!
//! Every jute type implements [`Record`]: primitives (`i32`, `i64`, `bool`, `String`,
//! `Bytes`, their nullable `Option` forms, `Vec<T>` for `vector<T>`) and the protocol
//! records in [`super::proto`], most of which are declared with `jute_record!` so that the
//! field order in the source *is* the wire order.

use bytes::{BufMut, Bytes, BytesMut};

/// The server's default `jute.maxbuffer` (`BinaryInputArchive.maxBuffer`): the longest
/// buffer, string or vector a [`Reader`] accepts unless told otherwise.
pub const DEFAULT_MAX_LEN: usize = 0xfffff;

/// Why a record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JuteError {
    /// The record needs more bytes than the frame holds.
    #[error("record truncated")]
    Truncated,
    /// A buffer, string or vector is longer than the reader's cap.
    #[error("length {len} exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// A length or count below `-1` (the null marker).
    #[error("negative length {0}")]
    Negative(i32),
    /// A null (`-1`) where the record requires a value.
    #[error("null where a value is required")]
    Null,
    /// A `ustring` that is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    Utf8,
    /// A multi request or response names an operation it cannot carry.
    #[error("operation type {0} cannot appear inside a multi")]
    UnknownOp(i32),
}

/// Decodes jute values from a byte slice, front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// What is left to read.
    buf: &'a [u8],
    /// When set, `buf` lies inside it and buffers are sliced out without copying.
    owner: Option<&'a Bytes>,
    max: usize,
}

impl<'a> Reader<'a> {
    /// A reader over borrowed bytes: decoded buffers are copied.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            owner: None,
            max: DEFAULT_MAX_LEN,
        }
    }

    /// A reader over a frame body: decoded buffers share its memory (zero-copy).
    pub fn from_bytes(buf: &'a Bytes) -> Self {
        Reader {
            buf: buf.as_ref(),
            owner: Some(buf),
            max: DEFAULT_MAX_LEN,
        }
    }

    /// Sets the longest buffer, string or vector count accepted.
    pub fn with_max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Decodes any jute type: `let path: String = r.read()?`.
    pub fn read<T: Record>(&mut self) -> Result<T, JuteError> {
        T::decode(self)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], JuteError> {
        if n > self.buf.len() {
            return Err(JuteError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], JuteError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn read_int(&mut self) -> Result<i32, JuteError> {
        Ok(i32::from_be_bytes(self.take_array()?))
    }

    pub fn read_long(&mut self) -> Result<i64, JuteError> {
        Ok(i64::from_be_bytes(self.take_array()?))
    }

    /// Any non-zero byte is `true`, as `DataInput.readBoolean` has it.
    pub fn read_bool(&mut self) -> Result<bool, JuteError> {
        Ok(self.take_array::<1>()?[0] != 0)
    }

    /// A length or count: `None` for the null marker `-1`.
    fn read_len(&mut self) -> Result<Option<usize>, JuteError> {
        let n = self.read_int()?;
        if n == -1 {
            return Ok(None);
        }
        let len = usize::try_from(n).map_err(|_| JuteError::Negative(n))?;
        if len > self.max {
            return Err(JuteError::TooLarge { len, max: self.max });
        }
        Ok(Some(len))
    }

    fn read_raw(&mut self) -> Result<Option<&'a [u8]>, JuteError> {
        match self.read_len()? {
            None => Ok(None),
            Some(len) => self.take(len).map(Some),
        }
    }

    /// A `buffer`; `None` when null.
    pub fn read_buffer(&mut self) -> Result<Option<Bytes>, JuteError> {
        let owner = self.owner;
        Ok(self.read_raw()?.map(|b| match owner {
            Some(o) => o.slice_ref(b),
            None => Bytes::copy_from_slice(b),
        }))
    }

    /// A `ustring`; `None` when null.
    pub fn read_ustring(&mut self) -> Result<Option<String>, JuteError> {
        match self.read_raw()? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| JuteError::Utf8),
        }
    }

    /// A `vector` count; `None` when null. Every element takes at least one byte, so a
    /// count larger than the bytes left is refused before anything is allocated.
    pub fn read_vector_len(&mut self) -> Result<Option<usize>, JuteError> {
        let n = self.read_len()?;
        if n.is_some_and(|n| n > self.buf.len()) {
            return Err(JuteError::Truncated);
        }
        Ok(n)
    }
}

/// Encodes jute values into a growing buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: BytesMut,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends to an existing buffer (e.g. one with a frame length already reserved).
    pub fn with_buf(buf: BytesMut) -> Self {
        Writer { buf }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_inner(self) -> BytesMut {
        self.buf
    }

    pub fn freeze(self) -> Bytes {
        self.buf.freeze()
    }

    /// Encodes any jute type.
    pub fn write<T: Record>(&mut self, v: &T) {
        v.encode(self);
    }

    /// Appends bytes that are already encoded (a request body forwarded as received).
    pub fn write_raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    pub fn write_int(&mut self, v: i32) {
        self.buf.put_i32(v);
    }

    pub fn write_long(&mut self, v: i64) {
        self.buf.put_i64(v);
    }

    pub fn write_bool(&mut self, v: bool) {
        self.buf.put_u8(u8::from(v));
    }

    /// # Panics
    /// If `len` does not fit a jute `int` (2 GiB); no record the proxy builds comes close.
    fn write_len(&mut self, len: Option<usize>) {
        let n = match len {
            None => -1,
            Some(n) => i32::try_from(n).expect("jute length exceeds i32::MAX"),
        };
        self.write_int(n);
    }

    /// A `buffer`; `None` writes the null marker.
    pub fn write_buffer(&mut self, v: Option<&[u8]>) {
        self.write_len(v.map(<[u8]>::len));
        if let Some(b) = v {
            self.buf.put_slice(b);
        }
    }

    /// A `ustring`; `None` writes the null marker.
    pub fn write_ustring(&mut self, v: Option<&str>) {
        self.write_buffer(v.map(str::as_bytes));
    }

    /// A `vector` count; the caller then writes the elements.
    pub fn write_vector_len(&mut self, n: Option<usize>) {
        self.write_len(n);
    }
}

/// A jute type: a primitive or a record, decoded and encoded symmetrically.
pub trait Record: Sized {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError>;
    fn encode(&self, w: &mut Writer);

    /// Decodes from the front of a frame body, zero-copy, with the default cap. Bytes after
    /// the record are ignored, as the server does.
    fn from_bytes(body: &Bytes) -> Result<Self, JuteError> {
        Self::decode(&mut Reader::from_bytes(body))
    }

    fn to_bytes(&self) -> Bytes {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.freeze()
    }
}

impl Record for i32 {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        r.read_int()
    }
    fn encode(&self, w: &mut Writer) {
        w.write_int(*self);
    }
}

impl Record for i64 {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        r.read_long()
    }
    fn encode(&self, w: &mut Writer) {
        w.write_long(*self);
    }
}

impl Record for bool {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        r.read_bool()
    }
    fn encode(&self, w: &mut Writer) {
        w.write_bool(*self);
    }
}

/// A non-null `buffer`.
impl Record for Bytes {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        r.read_buffer()?.ok_or(JuteError::Null)
    }
    fn encode(&self, w: &mut Writer) {
        w.write_buffer(Some(self));
    }
}

/// A nullable `buffer`.
impl Record for Option<Bytes> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        r.read_buffer()
    }
    fn encode(&self, w: &mut Writer) {
        w.write_buffer(self.as_deref());
    }
}

/// A non-null `ustring`.
impl Record for String {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        r.read_ustring()?.ok_or(JuteError::Null)
    }
    fn encode(&self, w: &mut Writer) {
        w.write_ustring(Some(self));
    }
}

/// A nullable `ustring`.
impl Record for Option<String> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        r.read_ustring()
    }
    fn encode(&self, w: &mut Writer) {
        w.write_ustring(self.as_deref());
    }
}

/// A non-null `vector<T>`.
impl<T: Record> Record for Vec<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        let n = r.read_vector_len()?.ok_or(JuteError::Null)?;
        let mut v = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            v.push(T::decode(r)?);
        }
        Ok(v)
    }
    fn encode(&self, w: &mut Writer) {
        w.write_vector_len(Some(self.len()));
        for x in self {
            x.encode(w);
        }
    }
}

/// Declares a record whose fields are all jute types, in wire order, with its [`Record`]
/// impl. The struct derives `Debug, Clone, PartialEq, Eq, Default`; starting the invocation
/// with `#[no_debug]` leaves `Debug` out, for records holding secrets (use [`Redacted`]).
macro_rules! jute_record {
    (#[no_debug] $($rest:tt)*) => {
        $crate::zookeeper::jute::jute_record!(@impl [Clone, PartialEq, Eq, Default] $($rest)*);
    };
    (
        @impl [$($d:ident),*]
        $(#[$m:meta])*
        pub struct $name:ident {
            $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive($($d),*)]
        pub struct $name {
            $( $(#[$fm])* pub $f: $t, )*
        }

        impl $crate::zookeeper::jute::Record for $name {
            fn decode(
                r: &mut $crate::zookeeper::jute::Reader<'_>,
            ) -> Result<Self, $crate::zookeeper::jute::JuteError> {
                // Struct expressions evaluate their fields in source order: the wire order.
                Ok(Self { $( $f: r.read()?, )* })
            }

            fn encode(&self, w: &mut $crate::zookeeper::jute::Writer) {
                $( w.write(&self.$f); )*
            }
        }
    };
    ($($rest:tt)*) => {
        $crate::zookeeper::jute::jute_record!(
            @impl [Debug, Clone, PartialEq, Eq, Default] $($rest)*
        );
    };
}
pub(crate) use jute_record;

/// Formats a secret (session password, auth data) for `Debug` as its length only, so that
/// logging a record never leaks credentials.
pub struct Redacted<'a>(pub &'a [u8]);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

/// A tiny deterministic generator for the property-style tests (no dependency needed).
#[cfg(test)]
pub(crate) struct XorShift(pub u64);

#[cfg(test)]
impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<T: Record>(v: &T) -> Vec<u8> {
        v.to_bytes().to_vec()
    }

    fn dec<T: Record>(b: &[u8]) -> Result<T, JuteError> {
        T::decode(&mut Reader::new(b))
    }

    #[test]
    fn primitives_have_the_documented_encoding() {
        assert_eq!(enc(&-2i32), b"\xff\xff\xff\xfe");
        assert_eq!(
            enc(&0x0102_0304_0506_0708i64),
            b"\x01\x02\x03\x04\x05\x06\x07\x08"
        );
        assert_eq!(enc(&true), b"\x01");
        assert_eq!(enc(&"/a".to_string()), b"\x00\x00\x00\x02/a");
        assert_eq!(enc(&None::<String>), b"\xff\xff\xff\xff");
        assert_eq!(enc(&None::<Bytes>), b"\xff\xff\xff\xff");
        assert_eq!(enc(&Some(Bytes::new())), b"\x00\x00\x00\x00");
        assert_eq!(
            enc(&vec!["a".to_string(), "bc".to_string()]),
            b"\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x02bc"
        );
    }

    #[test]
    fn primitives_round_trip() {
        fn rt<T: Record + PartialEq + std::fmt::Debug>(v: T) {
            let b = enc(&v);
            let mut r = Reader::new(&b);
            assert_eq!(T::decode(&mut r).unwrap(), v);
            assert!(r.is_empty(), "{v:?} left bytes");
        }
        for v in [0, 1, -1, i32::MIN, i32::MAX] {
            rt(v);
        }
        for v in [0, -1, i64::MIN, i64::MAX] {
            rt(v);
        }
        rt(true);
        rt(false);
        rt(String::new());
        rt("/zookeeper/quota ünïcode".to_string());
        rt(None::<String>);
        rt(Some("x".to_string()));
        rt(Bytes::from_static(b"\x00\xff"));
        rt(None::<Bytes>);
        rt(Some(Bytes::new()));
        rt(Vec::<String>::new());
        rt(vec![vec![1i32, 2], vec![]]);
    }

    #[test]
    fn nonzero_bool_is_true() {
        assert_eq!(dec::<bool>(b"\x02"), Ok(true));
        assert_eq!(dec::<bool>(b"\x00"), Ok(false));
    }

    #[test]
    fn refuses_malformed_lengths() {
        assert_eq!(dec::<i32>(b"\x00\x00\x01"), Err(JuteError::Truncated));
        assert_eq!(dec::<i64>(b""), Err(JuteError::Truncated));
        assert_eq!(dec::<bool>(b""), Err(JuteError::Truncated));
        assert_eq!(
            dec::<String>(b"\x00\x00\x00\x03ab"),
            Err(JuteError::Truncated)
        );
        assert_eq!(
            dec::<Bytes>(b"\xff\xff\xff\xfe"),
            Err(JuteError::Negative(-2))
        );
        assert_eq!(
            dec::<Option<Bytes>>(b"\x80\x00\x00\x00"),
            Err(JuteError::Negative(i32::MIN))
        );
        assert_eq!(dec::<String>(b"\xff\xff\xff\xff"), Err(JuteError::Null));
        assert_eq!(dec::<Bytes>(b"\xff\xff\xff\xff"), Err(JuteError::Null));
        assert_eq!(dec::<Vec<i32>>(b"\xff\xff\xff\xff"), Err(JuteError::Null));
        assert_eq!(dec::<String>(b"\x00\x00\x00\x01\xff"), Err(JuteError::Utf8));
        // A count larger than what is left fails before allocating.
        assert_eq!(
            dec::<Vec<i32>>(b"\x00\x0f\xff\xff\x00\x00\x00\x00"),
            Err(JuteError::Truncated)
        );
    }

    #[test]
    fn enforces_the_size_cap() {
        let over = b"\x00\x10\x00\x00"; // 0x100000 = DEFAULT_MAX_LEN + 1
        let too_large = JuteError::TooLarge {
            len: 0x100000,
            max: DEFAULT_MAX_LEN,
        };
        assert_eq!(dec::<Bytes>(over).unwrap_err(), too_large);
        assert_eq!(dec::<String>(over).unwrap_err(), too_large);
        assert_eq!(dec::<Vec<bool>>(over).unwrap_err(), too_large);
        assert_eq!(
            dec::<Bytes>(b"\x7f\xff\xff\xff").unwrap_err(),
            JuteError::TooLarge {
                len: i32::MAX as usize,
                max: DEFAULT_MAX_LEN
            }
        );
        let mut r = Reader::new(b"\x00\x00\x00\x03abc").with_max(2);
        assert_eq!(r.read_buffer(), Err(JuteError::TooLarge { len: 3, max: 2 }));
        let mut r = Reader::new(b"\x00\x00\x00\x02ab").with_max(2);
        assert_eq!(r.read_buffer(), Ok(Some(Bytes::from_static(b"ab"))));
    }

    #[test]
    fn from_bytes_is_zero_copy() {
        let frame = Bytes::from_static(b"\x00\x00\x00\x03abc");
        let b = Bytes::from_bytes(&frame).unwrap();
        assert_eq!(&b[..], b"abc");
        assert_eq!(b.as_ptr(), frame[4..].as_ptr());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = rng.below(24);
            let b = rng.bytes(len);
            let _ = dec::<String>(&b);
            let _ = dec::<Option<Bytes>>(&b);
            let _ = dec::<Vec<String>>(&b);
            let _ = dec::<Vec<Vec<i64>>>(&b);
        }
    }
}
