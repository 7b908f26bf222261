use super::*;
use crate::util::unhex as hex;

fn text(v: &Value<'_>) -> String {
    match v {
        Value::Known(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Unknown => "?".to_owned(),
    }
}

fn decode(d: &mut Decoder, block: &[u8], truncated: bool) -> (Vec<(String, String)>, BlockOutcome) {
    let mut fields = Vec::new();
    let out = d.decode(block, truncated, |f| {
        fields.push((text(&f.name), text(&f.value)))
    });
    (fields, out)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// RFC 7541 C.3 (plain literals) and C.4 (Huffman): three requests on one connection.
#[test]
fn rfc_7541_requests_decode_with_and_without_huffman() {
    for blocks in [
        [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
        [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
    ] {
        let mut d = Decoder::new();
        let (f, out) = decode(&mut d, &hex(blocks[0]), false);
        assert_eq!(out, BlockOutcome::default());
        assert_eq!(
            f,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!((d.len(), d.size), (1, 57));
        let (f, _) = decode(&mut d, &hex(blocks[1]), false);
        assert_eq!(f[3], pairs(&[(":authority", "www.example.com")])[0]);
        assert_eq!(f[4], pairs(&[("cache-control", "no-cache")])[0]);
        assert_eq!((d.len(), d.size), (2, 110));
        let (f, _) = decode(&mut d, &hex(blocks[2]), false);
        assert_eq!(
            f,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!((d.len(), d.size), (3, 164));
    }
}

/// RFC 7541 C.5: responses with a 256-byte table, so entries are evicted.
#[test]
fn rfc_7541_responses_evict_the_oldest_entries() {
    let mut d = Decoder::new();
    d.max_size = 256;
    let (f, _) = decode(
        &mut d,
        &hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        ),
        false,
    );
    assert_eq!(f[0], (":status".into(), "302".into()));
    assert_eq!(f[3], ("location".into(), "https://www.example.com".into()));
    assert_eq!((d.len(), d.size), (4, 222));
    let (f, _) = decode(&mut d, &hex("4803 3330 37c1 c0bf"), false);
    assert_eq!(
        f,
        pairs(&[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com")
        ])
    );
    assert_eq!((d.len(), d.size), (4, 222));
    let (f, _) = decode(
        &mut d,
        &hex(
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
        ),
        false,
    );
    assert_eq!(f[0], (":status".into(), "200".into()));
    assert_eq!(
        f[5].1,
        "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
    );
    assert_eq!((d.len(), d.size), (3, 215));
}

/// A connection picked up mid-way: older entries are unknown, newer ones are learned.
#[test]
fn unknown_indices_are_placeholders_and_new_entries_are_learned() {
    let mut d = Decoder::new();
    // `:path` from entry 62 (unknown), then a literal `:path` inserted (static name 4).
    let (f, out) = decode(
        &mut d,
        &hex("83 be 44 0a 2f 61 2e 42 2f 53 61 79 48 69"),
        false,
    );
    assert_eq!(f[0], (":method".into(), "POST".into()));
    assert_eq!(f[1], ("?".into(), "?".into()));
    assert_eq!(f[2], (":path".into(), "/a.B/SayHi".into()));
    assert_eq!(out.unknown, 1);
    assert!(!out.broken);
    // The next block refers to it as 62 and to something older as 63.
    let (f, out) = decode(&mut d, &hex("83 be bf"), false);
    assert_eq!(f[1], (":path".into(), "/a.B/SayHi".into()));
    assert_eq!(f[2], ("?".into(), "?".into()));
    assert_eq!(out.unknown, 1);
    // A literal whose name is an unknown entry: its value is known, its name is not; it
    // cannot be inserted, and the table is forgotten rather than misaligned.
    let (f, out) = decode(&mut d, &hex("7f 03 03 61 62 63"), false);
    assert_eq!(f[0], ("?".into(), "abc".into()));
    assert_eq!(out.unknown, 1);
    assert!(d.is_empty());
}

#[test]
fn a_truncated_or_malformed_block_keeps_its_good_fields_and_forgets_the_table() {
    let mut d = Decoder::new();
    decode(
        &mut d,
        &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        false,
    );
    assert_eq!(d.len(), 1);
    // Cut in the middle of a literal.
    let (f, out) = decode(&mut d, &hex("82 be 58 08 6e 6f"), true);
    assert_eq!(
        f,
        pairs(&[(":method", "GET"), (":authority", "www.example.com")])
    );
    assert!(out.broken);
    assert!(d.is_empty());
    // Index 0 is malformed.
    decode(
        &mut d,
        &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        false,
    );
    let (f, out) = decode(&mut d, &hex("82 80 be"), false);
    assert_eq!(f.len(), 1);
    assert!(out.broken);
    assert!(d.is_empty());
}

#[test]
fn size_updates_evict_and_oversized_entries_empty_the_table() {
    let mut d = Decoder::new();
    decode(
        &mut d,
        &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        false,
    );
    // Size update to 0 then back to 4096: the table is empty.
    let (f, _) = decode(&mut d, &hex("20 3fe1 1f 82"), false);
    assert_eq!(f.len(), 1);
    assert!(d.is_empty());
    // An entry bigger than the table (max 64): nothing kept.
    decode(&mut d, &hex("3f21"), false);
    assert_eq!(d.max_size, 64);
    let long = "x".repeat(40);
    let mut block = hex("40 05");
    block.extend_from_slice(b"hello");
    block.push(40);
    block.extend_from_slice(long.as_bytes());
    let (f, _) = decode(&mut d, &block, false);
    assert_eq!(f[0].1, long);
    assert!(d.is_empty());
    // A huge size update is capped.
    decode(&mut d, &hex("3f e1 ff ff 0f"), false);
    assert_eq!(d.max_size, MAX_TABLE_SIZE);
}

#[test]
fn integers_past_the_limit_or_cut_short_are_errors() {
    assert_eq!(integer(&[0x1f, 0x9a, 0x0a], 0, 5), Ok((1337, 3)));
    assert_eq!(integer(&[0x0a], 0, 5), Ok((10, 1)));
    assert!(integer(&[0x1f, 0x9a], 0, 5).is_err());
    assert!(integer(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], 0, 7).is_err());
    assert!(integer(&[], 0, 7).is_err());
}
