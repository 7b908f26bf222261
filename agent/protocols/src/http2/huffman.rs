//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoding only.
//!
//! The code is canonical: within one length, codes are consecutive in symbol order, and each
//! length's first code follows the previous length's last. So the code lengths alone define it,
//! and decoding needs, per length, the first code and where its symbols start in the list of
//! symbols sorted by (length, symbol). The tables are built at compile time from [`LENGTHS`].

/// The code length in bits of each symbol: bytes 0..=255, then EOS (256).
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// The end-of-string symbol: its code is 30 one bits; it must never appear decoded.
const EOS: u16 = 256;
const MAX_LEN: usize = 30;

// Compile-time tables: an index out of bounds here fails the build, never a run.
#[allow(clippy::indexing_slicing)]
/// Per length: how many symbols have it.
const COUNT: [u16; MAX_LEN + 1] = {
    let mut count = [0u16; MAX_LEN + 1];
    let mut s = 0;
    while s < LENGTHS.len() {
        count[LENGTHS[s] as usize] += 1;
        s += 1;
    }
    count
};

// Compile-time tables: an index out of bounds here fails the build, never a run.
#[allow(clippy::indexing_slicing)]
/// Per length: the first code of that length, and the position of its first symbol in
/// [`SORTED`].
const FIRST: ([u32; MAX_LEN + 1], [u16; MAX_LEN + 1]) = {
    let mut code = [0u32; MAX_LEN + 1];
    let mut index = [0u16; MAX_LEN + 1];
    let mut next_code = 0u32;
    let mut next_index = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        code[len] = next_code;
        index[len] = next_index;
        next_code = (next_code + COUNT[len] as u32) << 1;
        next_index += COUNT[len];
        len += 1;
    }
    (code, index)
};

// Compile-time tables: an index out of bounds here fails the build, never a run.
#[allow(clippy::indexing_slicing)]
/// The symbols sorted by (code length, symbol).
const SORTED: [u16; 257] = {
    let mut sorted = [0u16; 257];
    let mut n = 0;
    let mut len = 1;
    while len <= MAX_LEN {
        let mut s = 0;
        while s < LENGTHS.len() {
            if LENGTHS[s] as usize == len {
                sorted[n] = s as u16;
                n += 1;
            }
            s += 1;
        }
        len += 1;
    }
    sorted
};

/// Why a Huffman string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The EOS symbol, padding longer than 7 bits or padding that is not all ones.
    Invalid,
    /// The decoded string is longer than the caller's cap.
    TooLong,
}

/// Decodes `src` and appends the bytes to `out`, which may grow to `cap` bytes at most.
pub fn decode(src: &[u8], out: &mut Vec<u8>, cap: usize) -> Result<(), HuffmanError> {
    let mut code: u32 = 0;
    let mut len: usize = 0;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let (Some(&count), Some(&first), Some(&start)) =
                (COUNT.get(len), FIRST.0.get(len), FIRST.1.get(len))
            else {
                return Err(HuffmanError::Invalid);
            };
            let Some(offset) = code.checked_sub(first).filter(|&o| o < u32::from(count)) else {
                continue;
            };
            let symbol = SORTED
                .get(usize::from(start) + offset as usize)
                .copied()
                .ok_or(HuffmanError::Invalid)?;
            if symbol == EOS {
                return Err(HuffmanError::Invalid);
            }
            if out.len() >= cap {
                return Err(HuffmanError::TooLong);
            }
            out.push(symbol as u8);
            code = 0;
            len = 0;
        }
    }
    // What is left must be a prefix of EOS (all ones) shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::unhex as hex;

    fn decoded(h: &str) -> String {
        let mut out = Vec::new();
        decode(&hex(h), &mut out, 1024).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_code_is_complete_and_canonical() {
        // A complete prefix code: the Kraft sum is exactly one.
        let kraft: u64 = LENGTHS
            .iter()
            .map(|&l| 1u64 << (MAX_LEN - l as usize))
            .sum();
        assert_eq!(kraft, 1 << MAX_LEN);
        // Spot checks against RFC 7541 Appendix B.
        let code_of = |sym: u16| {
            let len = LENGTHS[sym as usize] as usize;
            let pos = SORTED.iter().position(|&s| s == sym).unwrap() as u32;
            (FIRST.0[len] + pos - u32::from(FIRST.1[len]), len)
        };
        assert_eq!(code_of(b'0' as u16), (0x0, 5));
        assert_eq!(code_of(b'a' as u16), (0x3, 5));
        assert_eq!(code_of(b' ' as u16), (0x14, 6));
        assert_eq!(code_of(b'/' as u16), (0x18, 6));
        assert_eq!(code_of(0), (0x1ff8, 13));
        assert_eq!(code_of(255), (0x3ffffee, 26));
        assert_eq!(code_of(EOS), (0x3fffffff, 30));
    }

    #[test]
    fn rfc_7541_examples_decode() {
        // C.4.1 to C.4.3 and C.6.1 to C.6.3.
        assert_eq!(decoded("f1e3 c2e5 f23a 6ba0 ab90 f4ff"), "www.example.com");
        assert_eq!(decoded("a8eb 1064 9cbf"), "no-cache");
        assert_eq!(decoded("25a8 49e9 5ba9 7d7f"), "custom-key");
        assert_eq!(decoded("25a8 49e9 5bb8 e8b4 bf"), "custom-value");
        assert_eq!(decoded("6402"), "302");
        assert_eq!(decoded("aec3 771a 4b"), "private");
        assert_eq!(
            decoded("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"),
            "Mon, 21 Oct 2013 20:13:21 GMT"
        );
        assert_eq!(
            decoded("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
            "https://www.example.com"
        );
        assert_eq!(decoded("9bd9 ab"), "gzip");
        assert_eq!(
            decoded(
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07"
            ),
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
        );
    }

    #[test]
    fn bad_padding_eos_and_caps_are_errors() {
        let mut out = Vec::new();
        // "0" is 00000; pad with zeros instead of ones.
        assert_eq!(decode(&[0x00], &mut out, 16), Err(HuffmanError::Invalid));
        // A whole byte of padding.
        out.clear();
        assert_eq!(
            decode(&[0x07, 0xff], &mut out, 16),
            Err(HuffmanError::Invalid)
        );
        // EOS itself.
        out.clear();
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out, 16),
            Err(HuffmanError::Invalid)
        );
        out.clear();
        assert_eq!(
            decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"), &mut out, 3),
            Err(HuffmanError::TooLong)
        );
        assert_eq!(out, b"www");
    }
}
