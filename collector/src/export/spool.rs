//! The on-disk spool of one wire sink: request bodies that could not be delivered, kept in order
//! in a directory until the receiver is back, within a size cap.
//!
//! Each record is one file, `<sequence>.rec` (16 hex digits, so names sort in order): a 32-byte
//! header (magic `LSPL`, format version, items, body length, CRC-32 of the body) and the body.
//! A record is written to `<sequence>.tmp`, synced and renamed (the directory synced after), so
//! a reader never sees half of one and a crash never loses a record spooled; a `.tmp` file left
//! by a killed agent is removed when the spool is opened. Opening reads
//! every header, so the spool survives restarts and resumes in order.
//!
//! Beyond the cap the oldest records go first (the one being sent excepted), their items
//! returned to the caller for counting. A record that fails its checks when read is removed and
//! reported as corrupt.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"LSPL";
const VERSION: u8 = 1;
/// Header bytes before the body.
pub const HEADER_BYTES: u64 = 32;

/// One record in the spool's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    seq: u64,
    /// File size: header and body.
    bytes: u64,
    items: u64,
}

/// What opening found from an earlier run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Records kept, to be replayed.
    pub records: u64,
    /// Their items.
    pub items: u64,
    /// Files removed because their header was unreadable (a record's items are unknown then).
    pub corrupt: u64,
}

/// Records dropped to make room: the oldest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    pub records: u64,
    pub items: u64,
}

/// The oldest record, read for sending.
#[derive(Debug)]
pub struct Front {
    /// Its sequence number: pass it to [`Spool::remove`] once it is delivered.
    pub seq: u64,
    pub items: u64,
    /// The body, or why it could not be read back (then remove it and count it as corrupt).
    pub body: io::Result<Vec<u8>>,
}

/// The oldest record, claimed for sending but not read yet.
#[derive(Debug)]
pub struct Claim {
    seq: u64,
    items: u64,
    path: PathBuf,
}

impl Claim {
    /// Reads the record's body back (checking its header and checksum).
    pub fn read(self) -> Front {
        Front {
            seq: self.seq,
            items: self.items,
            body: read_record(&self.path),
        }
    }
}

/// Errors adding a record.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The record alone is larger than the cap.
    #[error("a {bytes}-byte record does not fit in a spool of {max} bytes")]
    TooLarge { bytes: u64, max: u64 },
    /// Writing failed (a full disk, a read-only file system).
    #[error("cannot write to the spool {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A directory of records, oldest first, at most `max_bytes` on disk.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// The directory, open once: synced after each record's rename.
    dir_handle: File,
    max_bytes: u64,
    records: VecDeque<Entry>,
    bytes: u64,
    items: u64,
    next_seq: u64,
    /// The record being sent: eviction passes over it.
    sending: Option<u64>,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, keeping what an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        let mut recovered = Recovered::default();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".tmp") {
                if u64::from_str_radix(stem, 16).is_ok() {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            let Some(seq) = name
                .strip_suffix(".rec")
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            else {
                continue;
            };
            match read_header(&entry.path()) {
                Ok(h) => found.push(Entry {
                    seq,
                    bytes: HEADER_BYTES + h.body_len,
                    items: h.items,
                }),
                Err(_) => {
                    recovered.corrupt += 1;
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        found.sort_by_key(|e| e.seq);
        let next_seq = found.last().map_or(0, |e| e.seq + 1);
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            dir_handle: File::open(dir)?,
            max_bytes,
            records: VecDeque::new(),
            bytes: 0,
            items: 0,
            next_seq,
            sending: None,
        };
        for e in found {
            spool.bytes += e.bytes;
            spool.items += e.items;
            spool.records.push_back(e);
        }
        recovered.records = spool.records.len() as u64;
        recovered.items = spool.items;
        Ok((spool, recovered))
    }

    /// Appends a record of `items` items; evicts the oldest (but the one being sent) to stay
    /// within the cap and says what it evicted.
    pub fn push(&mut self, items: u64, body: &[u8]) -> Result<Evicted, SpoolError> {
        let bytes = HEADER_BYTES + body.len() as u64;
        if bytes > self.max_bytes {
            return Err(SpoolError::TooLarge {
                bytes,
                max: self.max_bytes,
            });
        }
        let mut evicted = Evicted::default();
        while self.bytes + bytes > self.max_bytes {
            let Some(i) = self
                .records
                .iter()
                .position(|e| Some(e.seq) != self.sending)
            else {
                break;
            };
            if let Some(e) = self.records.remove(i) {
                self.forget(&e);
                evicted.records += 1;
                evicted.items += e.items;
            }
        }
        if self.bytes + bytes > self.max_bytes {
            // Only the record being sent is left and the two do not fit together.
            return Err(SpoolError::TooLarge {
                bytes,
                max: self.max_bytes - self.bytes,
            });
        }
        let seq = self.next_seq;
        self.write(seq, items, body)
            .map_err(|source| SpoolError::Io {
                dir: self.dir.clone(),
                source,
            })?;
        self.next_seq += 1;
        self.records.push_back(Entry { seq, bytes, items });
        self.bytes += bytes;
        self.items += items;
        Ok(evicted)
    }

    fn write(&self, seq: u64, items: u64, body: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{seq:016x}.tmp"));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            let mut header = [0u8; HEADER_BYTES as usize];
            header[..4].copy_from_slice(MAGIC);
            header[4] = VERSION;
            header[8..16].copy_from_slice(&items.to_le_bytes());
            header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
            header[24..28].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
            file.write_all(&header)?;
            file.write_all(body)?;
            file.sync_data()?;
            fs::rename(&tmp, self.record_path(seq))?;
            // The rename is durable once the directory is: a crash after an acknowledged push
            // must not lose the record's name.
            self.dir_handle.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads the oldest record and marks it as being sent (eviction spares it).
    #[cfg(test)]
    pub fn front(&mut self) -> Option<Front> {
        Some(self.claim_front()?.read())
    }

    /// Marks the oldest record as being sent (eviction spares it, so its file stays until it is
    /// removed or released) and says where it is: the caller reads it without holding the spool.
    pub fn claim_front(&mut self) -> Option<Claim> {
        let e = *self.records.front()?;
        self.sending = Some(e.seq);
        Some(Claim {
            seq: e.seq,
            items: e.items,
            path: self.record_path(e.seq),
        })
    }

    /// The record being sent was not delivered: it stays, and may be evicted again.
    pub fn release(&mut self) {
        self.sending = None;
    }

    /// Removes record `seq` (delivered, refused or corrupt); false when it is no longer there.
    pub fn remove(&mut self, seq: u64) -> bool {
        if self.sending == Some(seq) {
            self.sending = None;
        }
        let Some(i) = self.records.iter().position(|e| e.seq == seq) else {
            return false;
        };
        match self.records.remove(i) {
            Some(e) => {
                self.forget(&e);
                true
            }
            None => false,
        }
    }

    fn forget(&mut self, e: &Entry) {
        let _ = fs::remove_file(self.record_path(e.seq));
        self.bytes -= e.bytes;
        self.items -= e.items;
    }

    fn record_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016x}.rec"))
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records held.
    pub fn records(&self) -> u64 {
        self.records.len() as u64
    }

    /// Items in the records held.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

struct Header {
    items: u64,
    body_len: u64,
    crc: u32,
}

fn parse_header(h: &[u8; HEADER_BYTES as usize]) -> io::Result<Header> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    if &h[..4] != MAGIC {
        return Err(bad("not a spool record"));
    }
    if h[4] != VERSION {
        return Err(bad("unknown spool record version"));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&h[24..28]);
    Ok(Header {
        items: u64_at(8),
        body_len: u64_at(16),
        crc: u32::from_le_bytes(crc),
    })
}

/// The header of the record at `path`, checked against the file's size.
fn read_header(path: &Path) -> io::Result<Header> {
    let mut file = File::open(path)?;
    let mut h = [0u8; HEADER_BYTES as usize];
    file.read_exact(&mut h)?;
    let header = parse_header(&h)?;
    if file.metadata()?.len() != HEADER_BYTES + header.body_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "spool record of the wrong size",
        ));
    }
    Ok(header)
}

/// The body of the record at `path`, its length and checksum verified.
fn read_record(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut h = [0u8; HEADER_BYTES as usize];
    file.read_exact(&mut h)?;
    let header = parse_header(&h)?;
    let len = usize::try_from(header.body_len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "spool record too large"))?;
    let mut body = Vec::with_capacity(len);
    file.take(header.body_len + 1).read_to_end(&mut body)?;
    if body.len() != len || crc32fast::hash(&body) != header.crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "spool record damaged (length or checksum)",
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
