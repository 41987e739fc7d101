//! A minimal protobuf writer: just the wire types an OTLP metrics push needs.

/// Protobuf bytes under construction.
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;

impl Writer {
    /// The encoded message.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn raw_varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.bytes.push(n as u8);
    }

    fn tag(&mut self, field: u32, wire_type: u32) {
        self.raw_varint(u64::from(field << 3 | wire_type));
    }

    /// An unsigned or non-negative integer field.
    pub fn varint(&mut self, field: u32, n: u64) {
        self.tag(field, VARINT);
        self.raw_varint(n);
    }

    /// A `fixed64`, `sfixed64` or `double` field (give doubles as `to_bits()`).
    pub fn fixed64(&mut self, field: u32, n: u64) {
        self.tag(field, FIXED64);
        self.bytes.extend_from_slice(&n.to_le_bytes());
    }

    /// A string field.
    pub fn string(&mut self, field: u32, s: &str) {
        self.tag(field, LENGTH_DELIMITED);
        self.raw_varint(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
    }

    /// An embedded message written by `build`.
    pub fn message(&mut self, field: u32, build: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        build(&mut inner);
        self.tag(field, LENGTH_DELIMITED);
        self.raw_varint(inner.bytes.len() as u64);
        self.bytes.extend_from_slice(&inner.bytes);
    }
}
