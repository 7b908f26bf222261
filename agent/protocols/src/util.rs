//! Small byte helpers shared by the parsers. Nothing here indexes without a check.

/// Converts bytes to a `String`, replacing invalid UTF-8. When `cut` is true the bytes are a
/// prefix of something longer, so an incomplete UTF-8 sequence at the very end is dropped rather
/// than turned into U+FFFD.
pub(crate) fn lossy(bytes: &[u8], cut: bool) -> String {
    let bytes = if cut { trim_partial_utf8(bytes) } else { bytes };
    String::from_utf8_lossy(bytes).into_owned()
}

/// Drops a trailing incomplete UTF-8 sequence (at most 3 bytes).
pub(crate) fn trim_partial_utf8(bytes: &[u8]) -> &[u8] {
    let len = bytes.len();
    // Look back over at most 3 continuation bytes for a lead byte.
    for back in 1..=3usize.min(len) {
        let idx = len - back;
        let Some(&b) = bytes.get(idx) else { break };
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte
        }
        let need = if b & 0b1000_0000 == 0 {
            1
        } else if b & 0b1110_0000 == 0b1100_0000 {
            2
        } else if b & 0b1111_0000 == 0b1110_0000 {
            3
        } else if b & 0b1111_1000 == 0b1111_0000 {
            4
        } else {
            1
        };
        if need > back {
            return bytes.get(..idx).unwrap_or(bytes);
        }
        break;
    }
    bytes
}

/// Appends up to `cap - buf.len()` bytes of `data` to `buf`; returns how many were taken.
pub(crate) fn push_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> usize {
    let room = cap.saturating_sub(buf.len());
    let take = room.min(data.len());
    if let Some(part) = data.get(..take) {
        buf.extend_from_slice(part);
    }
    take
}

/// Position of the first `needle` byte at or after `from`.
pub(crate) fn find_byte(hay: &[u8], from: usize, needle: u8) -> Option<usize> {
    hay.get(from..)?
        .iter()
        .position(|&b| b == needle)
        .map(|p| p + from)
}

/// Parses an unsigned decimal number; `None` on anything else or overflow.
pub(crate) fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a signed decimal number; `None` on anything else or overflow.
pub(crate) fn parse_i64(bytes: &[u8]) -> Option<i64> {
    match bytes.split_first() {
        Some((b'-', rest)) => {
            let v = parse_u64(rest)?;
            if v == 1u64 << 63 {
                Some(i64::MIN)
            } else {
                i64::try_from(v).ok().map(|v| -v)
            }
        }
        Some((b'+', rest)) => i64::try_from(parse_u64(rest)?).ok(),
        _ => i64::try_from(parse_u64(bytes)?).ok(),
    }
}

/// Strips leading and trailing spaces and tabs.
pub(crate) fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Little-endian u16 at `at`.
pub(crate) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

/// Little-endian u24 at `at`.
pub(crate) fn le_u24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(3)?)?;
    Some(u32::from_le_bytes([*s.first()?, *s.get(1)?, *s.get(2)?, 0]))
}

/// Little-endian u32 at `at`.
pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([
        *s.first()?,
        *s.get(1)?,
        *s.get(2)?,
        *s.get(3)?,
    ]))
}

/// Little-endian u64 at `at`.
pub(crate) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Bytes from hex digits, whitespace ignored (tests' vectors, written as RFCs print them).
#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_partial_utf8_only_when_cut() {
        let s = "héllo€".as_bytes();
        for cut in 0..=s.len() {
            let prefix = &s[..cut];
            let out = lossy(prefix, true);
            assert!(!out.contains('\u{fffd}'), "{cut}: {out:?}");
            assert!("héllo€".starts_with(&out));
        }
        assert_eq!(lossy(&[0xe2, 0x82], false), "\u{fffd}");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1a"), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"-9223372036854775809"), None);
        assert_eq!(parse_i64(b"+5"), Some(5));
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(le_u24(&[1, 2, 3], 0), Some(0x030201));
        assert_eq!(le_u24(&[1, 2], 0), None);
        assert_eq!(le_u32(&[1, 0, 0, 0], usize::MAX), None);
    }
}
