//! Evictions from the kernel programs' LRU maps.
//!
//! An LRU hash map never refuses an insert: when it is full the kernel evicts its least recently
//! used entry to make room, and nothing tells anyone. For the context maps (a thread's server
//! request, a client connection's parent, a goroutine's request, an in-band context) an evicted
//! entry that was still needed is a link lost: a span without its parent. So the programs count
//! each map's new keys and deletes (`LRU_COUNTERS`, see `loupe_common::lru`), and every
//! [`PERIOD`] this module counts the entries left and derives the evictions:
//! inserted − deleted − live.
//!
//! The three readings are not one instant: the programs go on while the keys are walked. The
//! derivation takes the inserts read before the walk and the deletes read after it, so what it
//! reports is a lower bound: every key inserted before the walk that is neither deleted nor still
//! there was evicted. The programs count an insert after it and a delete before it (taken back
//! if the key was not there), so a reading between the two also errs low. A key the walk sees
//! twice (it restarts when the key it stands on is deleted) only lowers the figure. The counter
//! only rises, so a busy moment's low reading is made up at the next quiet one.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
};
use loupe_collector::telemetry::{Counter, Gauge, Registry};
use loupe_common::lru;

use crate::ebpf::{EbpfError, take_map};

/// How often the maps are walked.
pub const PERIOD: Duration = Duration::from_secs(15);

/// The largest key of an LRU map (`ConnTuple` is 40 bytes).
const MAX_KEY_BYTES: usize = 64;

/// The LRU maps of a loaded object, with their counters.
pub struct LruMaps {
    counters: PerCpuArray<MapData, u64>,
    maps: Vec<Watched>,
}

struct Watched {
    name: &'static str,
    index: u32,
    fd: OwnedFd,
    key_size: usize,
    capacity: u64,
    /// Evictions reported so far (the counter's value).
    evicted: u64,
    evictions: Counter,
    entries: Gauge,
}

/// One map's reading (what [`LruMaps::scan`] found).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub name: &'static str,
    pub inserted: u64,
    pub deleted: u64,
    pub live: u64,
    /// Evictions so far (a lower bound, never lower than the last reading's).
    pub evicted: u64,
}

impl LruMaps {
    /// Takes the counters out of `ebpf` and keeps a descriptor of each LRU map (the maps stay in
    /// the object for their users). Registers the metrics.
    pub fn open(ebpf: &mut Ebpf, registry: &Registry) -> Result<LruMaps, EbpfError> {
        let counters = take_map(ebpf, "LRU_COUNTERS")?;
        let mut maps = Vec::with_capacity(lru::MAPS.len());
        for (index, name) in lru::MAPS.iter().copied().enumerate() {
            let fail = |message: String| EbpfError::Map { name, message };
            let data = match ebpf.map(name) {
                Some(Map::LruHashMap(data)) => data,
                Some(_) => return Err(fail("not an LRU hash map".into())),
                None => return Err(fail("missing from the object".into())),
            };
            let info = data.info().map_err(|e| fail(e.to_string()))?;
            let key_size = info.key_size() as usize;
            if key_size > MAX_KEY_BYTES {
                return Err(fail(format!("keys of {key_size} bytes")));
            }
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| fail(e.to_string()))?;
            let capacity = u64::from(info.max_entries());
            let labels = [("map", name)];
            registry
                .gauge(
                    "loupe_kernel_map_capacity",
                    "Entries an LRU map of the kernel programs holds before the kernel evicts \
                     its least recently used one.",
                    &labels,
                )
                .set(capacity as i64);
            maps.push(Watched {
                name,
                index: index as u32,
                fd,
                key_size,
                capacity,
                evicted: 0,
                evictions: registry.counter(
                    "loupe_kernel_map_evictions_total",
                    "Entries the kernel evicted from an LRU map of the kernel programs to make \
                     room for a new key (a lower bound, read every 15 s). In THREAD_REQUESTS, \
                     PROCESS_REQUESTS, CLIENT_PARENTS, TCP_CTX_OUT and the GO_ maps an entry \
                     still in use is a span link lost; maps whose entries are never deleted \
                     (TCP_CTX_IN, LOG_RATES, ALLOC_COUNTDOWN) evict old ones as a matter of \
                     course once full.",
                    &labels,
                ),
                entries: registry.gauge(
                    "loupe_kernel_map_entries",
                    "Entries in an LRU map of the kernel programs at the last reading.",
                    &labels,
                ),
            });
        }
        Ok(LruMaps { counters, maps })
    }

    /// Reads every map's counters and entries, and updates the metrics.
    pub fn scan(&mut self) -> Vec<Reading> {
        let mut readings = Vec::with_capacity(self.maps.len());
        for i in 0..self.maps.len() {
            let index = self.maps[i].index;
            let inserted = self.total(lru::inserted(index));
            let w = &self.maps[i];
            let live = match count_keys(w.fd.as_fd(), w.key_size, w.capacity) {
                Ok(n) => n.min(w.capacity),
                Err(e) => {
                    tracing::debug!(map = w.name, "cannot walk the map's keys: {e}");
                    continue;
                }
            };
            let deleted = self.total(lru::deleted(index));
            let m = &mut self.maps[i];
            let evicted = evictions_at_least(inserted, deleted, live).max(m.evicted);
            m.evictions.add(evicted - m.evicted);
            m.evicted = evicted;
            m.entries.set(live as i64);
            readings.push(Reading {
                name: m.name,
                inserted,
                deleted,
                live,
                evicted,
            });
        }
        readings
    }

    /// Scans every [`PERIOD`] on a thread of its own, for as long as the agent runs.
    pub fn spawn(mut self) -> io::Result<()> {
        std::thread::Builder::new()
            .name("loupe-lru-maps".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(PERIOD);
                    self.scan();
                }
            })
            .map(drop)
    }

    fn total(&self, slot: u32) -> u64 {
        self.counters
            .get(&slot, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

/// Evictions implied by `inserted` (read before the keys were walked), `deleted` (read after)
/// and the `live` keys the walk found: a lower bound (see the module's documentation).
fn evictions_at_least(inserted: u64, deleted: u64, live: u64) -> u64 {
    inserted.saturating_sub(deleted).saturating_sub(live)
}

/// `union bpf_attr` for BPF_MAP_GET_NEXT_KEY.
#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The keys in the map `fd` (keys of `key_size` bytes, `capacity` entries), walked with BPF_MAP_GET_NEXT_KEY. A walk
/// that keeps restarting (its key deleted under it) stops after four times the map's worth.
fn count_keys(fd: BorrowedFd<'_>, key_size: usize, capacity: u64) -> io::Result<u64> {
    let mut key = [0u8; MAX_KEY_BYTES];
    let mut next = [0u8; MAX_KEY_BYTES];
    let key_size = key_size.min(MAX_KEY_BYTES);
    let mut n = 0u64;
    loop {
        let attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            // No key: the first one.
            key: if n == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: BPF_MAP_GET_NEXT_KEY reads `key_size` bytes at `key` (both buffers hold
        // MAX_KEY_BYTES ≥ key_size) and writes as many at `next_key`; `attr` outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(n),
                _ => Err(e),
            };
        }
        n += 1;
        key[..key_size].copy_from_slice(&next[..key_size]);
        if n >= 4 * capacity {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests;
