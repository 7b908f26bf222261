//! HPACK header decoding (RFC 7541) for a passive observer that may miss header blocks.
//!
//! An endpoint's decoder sees every header block of its connection; Loupe does not. It picks
//! connections up mid-way, and header blocks can fall outside the capture. A block it did not see
//! inserted entries at the front of the dynamic table, so every older entry's index is unknown
//! from then on. The rule here:
//!
//! - the decoder's table is always the *newest* entries of the peer's table, in order, and
//!   possibly fewer of them: entries inserted since the last loss ([`Decoder::invalidate`]);
//! - an index past what the table knows decodes to [`Value::Unknown`], never to a guess;
//! - entries inserted after a loss are known, since insertion is always at the front, so a
//!   connection picked up mid-way learns its table back as the encoder adds to it.
//!
//! Evicting by size keeps the rule: the peer evicts its oldest entries first, and those are the
//! ones this table does not know, or, if it knows them, the ones it evicts too. A missed table
//! size update at worst makes known entries unknown, or keeps entries that the encoder, having
//! evicted them, never references.

use std::collections::VecDeque;

use super::huffman::{self, HuffmanError};

/// Bytes of entries (RFC 7541 §4.1 sizes) this decoder keeps per direction, whatever size the
/// peer announces: entries past it become unknown.
pub const MAX_TABLE_SIZE: usize = 16 * 1024;
/// Longest name or value decoded; a longer one makes the rest of the block undecodable.
pub const MAX_STRING: usize = 8 * 1024;
/// The protocol's default table size (SETTINGS_HEADER_TABLE_SIZE's initial value).
const DEFAULT_TABLE_SIZE: usize = 4096;
/// Bytes an entry counts besides its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The static table, RFC 7541 Appendix A (index 1 first).
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// A decoded name or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// The bytes, as sent.
    Known(&'a [u8]),
    /// It referred to a dynamic table entry this decoder does not know.
    Unknown,
}

/// One header field of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name (lower case on the wire in HTTP/2).
    pub name: Value<'a>,
    /// The value.
    pub value: Value<'a>,
}

/// How decoding a block went, besides the fields it produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockOutcome {
    /// Fields that referred to entries this decoder does not know.
    pub unknown: u32,
    /// The block was cut short or malformed: fields after that point are missing and the table
    /// was invalidated.
    pub broken: bool,
}

#[derive(Debug)]
struct Entry {
    name: Box<[u8]>,
    value: Box<[u8]>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// The decoding state of one direction of a connection.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The table size the encoder last set (capped at [`MAX_TABLE_SIZE`]).
    max_size: usize,
    /// Scratch for Huffman-decoded strings of the block being decoded.
    scratch: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a string of a representation lives while it is decoded: in the block, in the scratch
/// buffer (Huffman-decoded), in the static table or in a table entry (`true`: its value).
#[derive(Debug, Clone, Copy)]
enum Src {
    Block(usize, usize),
    Scratch(usize, usize),
    Static(&'static str),
    Entry(usize, bool),
    Unknown,
}

impl Decoder {
    /// A decoder whose table is empty, as at the start of a connection.
    pub fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            scratch: Vec::new(),
        }
    }

    /// Header blocks were lost: forget every entry (their indices are no longer known).
    pub fn invalidate(&mut self) {
        self.entries.clear();
        self.size = 0;
    }

    /// Entries known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes held.
    pub fn buffered_bytes(&self) -> usize {
        self.size + self.scratch.capacity()
    }

    /// Decodes one header block, calling `field` for each field in order. A block that is cut
    /// short (`truncated`: its end was not captured) or malformed decodes up to the first
    /// representation it cannot read; the table is then invalidated, since what the rest
    /// inserted is unknown.
    pub fn decode(
        &mut self,
        block: &[u8],
        truncated: bool,
        mut field: impl FnMut(Field<'_>),
    ) -> BlockOutcome {
        let mut out = BlockOutcome::default();
        let mut pos = 0;
        while pos < block.len() {
            self.scratch.clear();
            match self.representation(block, pos) {
                Ok((next, Some((name, value)), insert)) => {
                    let f = Field {
                        name: self.resolve(block, name),
                        value: self.resolve(block, value),
                    };
                    if f.name == Value::Unknown || f.value == Value::Unknown {
                        out.unknown += 1;
                    }
                    field(f);
                    if insert {
                        self.insert(block, name, value);
                    }
                    pos = next;
                }
                Ok((next, None, _)) => pos = next,
                Err(()) => {
                    out.broken = true;
                    break;
                }
            }
        }
        self.scratch.clear();
        if self.scratch.capacity() > MAX_STRING * 2 {
            self.scratch = Vec::new();
        }
        if truncated {
            out.broken = true;
        }
        if out.broken {
            self.invalidate();
        }
        out
    }

    fn resolve<'a>(&'a self, block: &'a [u8], s: Src) -> Value<'a> {
        let known = match s {
            Src::Block(a, b) => block.get(a..b),
            Src::Scratch(a, b) => self.scratch.get(a..b),
            Src::Static(text) => Some(text.as_bytes()),
            Src::Entry(i, value) => self
                .entries
                .get(i)
                .map(|e| if value { &e.value[..] } else { &e.name[..] }),
            Src::Unknown => None,
        };
        known.map_or(Value::Unknown, Value::Known)
    }

    /// Reads the representation at `pos`: the next position, the field (none for a size
    /// update) and whether it is to be inserted.
    #[allow(clippy::type_complexity)]
    fn representation(
        &mut self,
        block: &[u8],
        pos: usize,
    ) -> Result<(usize, Option<(Src, Src)>, bool), ()> {
        let first = *block.get(pos).ok_or(())?;
        if first & 0x80 != 0 {
            // Indexed field.
            let (index, next) = integer(block, pos, 7)?;
            let (name, value) = self.lookup(index)?;
            return Ok((next, Some((name, value)), false));
        }
        if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            let (size, next) = integer(block, pos, 5)?;
            self.max_size = usize::try_from(size)
                .unwrap_or(usize::MAX)
                .min(MAX_TABLE_SIZE);
            self.evict(0);
            return Ok((next, None, false));
        }
        // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
        let (prefix, insert) = if first & 0xc0 == 0x40 {
            (6, true)
        } else {
            (4, false)
        };
        let (index, mut next) = integer(block, pos, prefix)?;
        let name = if index == 0 {
            let (s, n) = self.string(block, next)?;
            next = n;
            s
        } else {
            self.lookup(index)?.0
        };
        let (value, next) = self.string(block, next)?;
        Ok((next, Some((name, value)), insert))
    }

    fn lookup(&self, index: u64) -> Result<(Src, Src), ()> {
        let index = usize::try_from(index).map_err(|_| ())?;
        match index {
            0 => Err(()),
            1..=61 => {
                let (n, v) = STATIC.get(index - 1).ok_or(())?;
                Ok((Src::Static(n), Src::Static(v)))
            }
            _ => {
                let i = index - 62;
                if i < self.entries.len() {
                    Ok((Src::Entry(i, false), Src::Entry(i, true)))
                } else {
                    Ok((Src::Unknown, Src::Unknown))
                }
            }
        }
    }

    /// Reads a string literal at `pos`.
    fn string(&mut self, block: &[u8], pos: usize) -> Result<(Src, usize), ()> {
        let huffman = *block.get(pos).ok_or(())? & 0x80 != 0;
        let (len, start) = integer(block, pos, 7)?;
        let len = usize::try_from(len).map_err(|_| ())?;
        let end = start.checked_add(len).ok_or(())?;
        let raw = block.get(start..end).ok_or(())?;
        if !huffman {
            if len > MAX_STRING {
                return Err(());
            }
            return Ok((Src::Block(start, end), end));
        }
        let from = self.scratch.len();
        match huffman::decode(raw, &mut self.scratch, from + MAX_STRING) {
            Ok(()) => Ok((Src::Scratch(from, self.scratch.len()), end)),
            Err(HuffmanError::Invalid | HuffmanError::TooLong) => Err(()),
        }
    }

    /// Inserts a field at the front of the table (RFC 7541 §4.4). A field whose name or value
    /// is unknown cannot be kept, and its size is unknown: the table is invalidated instead.
    fn insert(&mut self, block: &[u8], name: Src, value: Src) {
        let (Value::Known(n), Value::Known(v)) =
            (self.resolve(block, name), self.resolve(block, value))
        else {
            self.invalidate();
            return;
        };
        let entry = Entry {
            name: n.into(),
            value: v.into(),
        };
        let size = entry.size();
        if size > self.max_size {
            // The peer empties its table; if this decoder's idea of the size is too small, the
            // peer may keep the entry, which is then unknown here: safe either way.
            self.invalidate();
            return;
        }
        self.evict(size);
        self.size += size;
        self.entries.push_front(entry);
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some(e) = self.entries.pop_back() else {
                self.size = 0;
                return;
            };
            self.size = self.size.saturating_sub(e.size());
        }
    }
}

/// Reads an HPACK integer with an N-bit prefix starting at `pos` (RFC 7541 §5.1); values past
/// 2^32 are refused.
pub(crate) fn integer(block: &[u8], pos: usize, prefix_bits: u32) -> Result<(u64, usize), ()> {
    let mask = (1u8 << prefix_bits) - 1;
    let first = *block.get(pos).ok_or(())? & mask;
    let mut next = pos + 1;
    if first < mask {
        return Ok((u64::from(first), next));
    }
    let mut value = u64::from(mask);
    let mut shift = 0u32;
    loop {
        let b = *block.get(next).ok_or(())?;
        next += 1;
        value += u64::from(b & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(());
        }
        if b & 0x80 == 0 {
            return Ok((value, next));
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests;
