//! W3C Trace Context `traceparent` header: parse and format.
//!
//! `version "-" trace-id "-" parent-id "-" trace-flags`, all lowercase hex. Version `00` must be
//! exactly 55 characters. Higher versions may append fields after a `-`; per the spec only the
//! first four fields are read. Version `ff`, uppercase hex, and all-zero ids are invalid.
//! Formatting always writes version `00` (the spec's rule for forwarding a higher version).

use std::fmt;

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The version field as received (0 for the current spec).
    pub version: u8,
    /// 16-byte trace id, never all zeros.
    pub trace_id: [u8; 16],
    /// 8-byte id of the caller's span, never all zeros.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Why a `traceparent` value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceParentError {
    /// Wrong total length or a misplaced `-`.
    Format,
    /// Version `ff`, or a version field that is not two lowercase hex digits.
    Version,
    /// A field held something other than lowercase hex digits.
    Hex,
    /// The trace id was all zeros.
    ZeroTraceId,
    /// The parent id was all zeros.
    ZeroParentId,
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceParentError::Format => "traceparent has the wrong length or layout",
            TraceParentError::Version => "traceparent version is invalid",
            TraceParentError::Hex => "traceparent field is not lowercase hex",
            TraceParentError::ZeroTraceId => "traceparent trace id is all zeros",
            TraceParentError::ZeroParentId => "traceparent parent id is all zeros",
        })
    }
}

impl std::error::Error for TraceParentError {}

/// Length of a version-00 value.
pub const TRACEPARENT_LEN: usize = 55;

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn decode_hex<const N: usize>(s: &[u8]) -> Result<[u8; N], TraceParentError> {
    let mut out = [0u8; N];
    if s.len() != N * 2 {
        return Err(TraceParentError::Format);
    }
    for (i, o) in out.iter_mut().enumerate() {
        let hi = s.get(2 * i).copied().and_then(hex_val);
        let lo = s.get(2 * i + 1).copied().and_then(hex_val);
        match (hi, lo) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return Err(TraceParentError::Hex),
        }
    }
    Ok(out)
}

/// Parses a `traceparent` header value (surrounding spaces/tabs are ignored).
pub fn parse(value: &str) -> Result<TraceParent, TraceParentError> {
    let b = crate::util::trim_ows(value.as_bytes());
    let version_field = b.get(..2).ok_or(TraceParentError::Format)?;
    let version = decode_hex::<1>(version_field).map_err(|_| TraceParentError::Version)?[0];
    if version == 0xff {
        return Err(TraceParentError::Version);
    }
    if b.len() < TRACEPARENT_LEN || (version == 0 && b.len() != TRACEPARENT_LEN) {
        return Err(TraceParentError::Format);
    }
    if b.len() > TRACEPARENT_LEN && b.get(TRACEPARENT_LEN) != Some(&b'-') {
        return Err(TraceParentError::Format);
    }
    for dash in [2usize, 35, 52] {
        if b.get(dash) != Some(&b'-') {
            return Err(TraceParentError::Format);
        }
    }
    let field = |from: usize, to: usize| b.get(from..to).ok_or(TraceParentError::Format);
    let trace_id = decode_hex::<16>(field(3, 35)?)?;
    let parent_id = decode_hex::<8>(field(36, 52)?)?;
    let flags = decode_hex::<1>(field(53, 55)?)?[0];
    if trace_id == [0; 16] {
        return Err(TraceParentError::ZeroTraceId);
    }
    if parent_id == [0; 8] {
        return Err(TraceParentError::ZeroParentId);
    }
    Ok(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
}

impl TraceParent {
    /// A version-00 value from ids and flags; `None` if an id is all zeros.
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<TraceParent> {
        (trace_id != [0; 16] && parent_id != [0; 8]).then_some(TraceParent {
            version: 0,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the caller sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.trace_id);
        s
    }

    /// The parent (span) id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        let mut s = String::with_capacity(16);
        push_hex(&mut s, &self.parent_id);
        s
    }

    /// The header value, always version `00`, flags as they are.
    pub fn format(&self) -> String {
        let mut s = String::with_capacity(TRACEPARENT_LEN);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.parent_id);
        s.push('-');
        push_hex(&mut s, &[self.flags]);
        s
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format())
    }
}

impl std::str::FromStr for TraceParent {
    type Err = TraceParentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_spec_example() {
        let tp = parse(EXAMPLE).unwrap();
        assert_eq!(tp.version, 0);
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(tp.format(), EXAMPLE);
        assert_eq!(tp.to_string(), EXAMPLE);
        assert_eq!(EXAMPLE.parse::<TraceParent>(), Ok(tp));
        assert_eq!(parse(&format!(" {EXAMPLE}\t")), Ok(tp));
    }

    #[test]
    fn not_sampled() {
        let tp = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!tp.sampled());
    }

    #[test]
    fn rejects_invalid() {
        use TraceParentError::*;
        let cases: &[(&str, TraceParentError)] = &[
            ("", Format),
            ("00", Format),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Version,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Version,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ZeroParentId,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                Hex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
                Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                Hex,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7x01",
                Format,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-€",
                Format,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(*want), "{input:?}");
        }
    }

    #[test]
    fn future_versions_read_first_four_fields() {
        let tp = parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future")
            .unwrap();
        assert_eq!(tp.version, 0xcc);
        assert_eq!(tp.flags, 9);
        assert_eq!(
            tp.format(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09"
        );
        let tp = parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(tp.version, 1);
    }

    #[test]
    fn new_rejects_zero_ids() {
        assert!(TraceParent::new([0; 16], [1; 8], 1).is_none());
        assert!(TraceParent::new([1; 16], [0; 8], 1).is_none());
        let tp = TraceParent::new([0xab; 16], [0xcd; 8], 1).unwrap();
        assert_eq!(parse(&tp.format()), Ok(tp));
    }
}
