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
//!
//! The agent deletes from some of the maps itself: the socket sweep forgets the in-band context
//! and the parent of a client connection whose process exited without closing it (no close()
//! tracepoint ran), and the request, goroutine and TLS entries of processes that are gone. Those
//! deletes go through [`Deleter`], which counts them per map (by the kernel's map id) the way the
//! programs count theirs, so they do not read as evictions.

use std::collections::BTreeMap;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use aya::{
    Ebpf, Pod,
    maps::{Map, MapData, MapInfo, PerCpuArray},
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
    /// The kernel's id of the map, under which [`Deleter`] counts the agent's own deletes.
    map_id: u32,
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
            let (fd, info) = descriptor(ebpf, name)?;
            let key_size = info.key_size() as usize;
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
                map_id: info.id(),
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
            let deleted = self.total(lru::deleted(index)) + agent_deletes(self.maps[i].map_id);
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

/// A descriptor of the LRU map `name` of `ebpf` (the map stays in the object for its users), with
/// its kernel information; its keys are at most [`MAX_KEY_BYTES`].
fn descriptor(ebpf: &Ebpf, name: &'static str) -> Result<(OwnedFd, MapInfo), EbpfError> {
    let fail = |message: String| EbpfError::Map { name, message };
    let data = match ebpf.map(name) {
        Some(Map::LruHashMap(data)) => data,
        Some(_) => return Err(fail("not an LRU hash map".into())),
        None => return Err(fail("missing from the object".into())),
    };
    let info = data.info().map_err(|e| fail(e.to_string()))?;
    if info.key_size() as usize > MAX_KEY_BYTES {
        return Err(fail(format!("keys of {} bytes", info.key_size())));
    }
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| fail(e.to_string()))?;
    Ok((fd, info))
}

/// Deletes the agent made itself, by the kernel's map id (see [`Deleter`]).
static AGENT_DELETES: Mutex<BTreeMap<u32, u64>> = Mutex::new(BTreeMap::new());

fn agent_deletes(map_id: u32) -> u64 {
    AGENT_DELETES
        .lock()
        .map_or(0, |d| d.get(&map_id).copied().unwrap_or(0))
}

/// Adds `n` (which may wrap: a delete taken back) to the agent's deletes from `map_id`.
fn add_agent_deletes(map_id: u32, n: u64) {
    if let Ok(mut d) = AGENT_DELETES.lock() {
        let total = d.entry(map_id).or_insert(0);
        *total = total.wrapping_add(n);
    }
}

/// An LRU map of the kernel programs the agent deletes keys `K` from itself. Each delete is
/// counted as the programs count theirs: before it is made, taken back if the key was not there,
/// so a reading in between errs low.
pub struct Deleter<K> {
    name: &'static str,
    fd: OwnedFd,
    map_id: u32,
    capacity: u64,
    _key: PhantomData<K>,
}

impl<K: Pod> Deleter<K> {
    /// A descriptor of the map `name` of `ebpf` (the map stays in the object for its users).
    pub fn open(ebpf: &Ebpf, name: &'static str) -> Result<Deleter<K>, EbpfError> {
        let (fd, info) = descriptor(ebpf, name)?;
        if info.key_size() as usize != std::mem::size_of::<K>() {
            return Err(EbpfError::Map {
                name,
                message: format!(
                    "keys of {} bytes, not {}",
                    info.key_size(),
                    std::mem::size_of::<K>()
                ),
            });
        }
        Ok(Deleter {
            name,
            fd,
            map_id: info.id(),
            capacity: u64::from(info.max_entries()),
            _key: PhantomData,
        })
    }

    /// Deletes the entries of processes that are gone (`owner` reads a key's process id, `alive`
    /// says whether it still runs), counted; returns how many went. For the maps whose entries a
    /// process's exit leaves behind: no program runs for each of them at exit.
    pub fn forget_gone(&self, owner: fn(&K) -> u32, alive: &mut dyn FnMut(u32) -> bool) -> u64 {
        let size = std::mem::size_of::<K>();
        let mut gone = Vec::new();
        let walked = walk_keys(self.fd.as_fd(), size, self.capacity, |bytes| {
            // SAFETY: `bytes` holds size_of::<K>() bytes (the map's key size, checked by
            // `open`); K is Pod, so any bytes are a valid K; read_unaligned copes with alignment.
            let key: K = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            if !alive(owner(&key)) {
                gone.push(key);
            }
        });
        if let Err(e) = walked {
            tracing::debug!(map = self.name, "cannot walk the map's keys: {e}");
        }
        // Deleted after the walk: a delete under it would restart it.
        gone.iter().filter(|key| self.delete(key)).count() as u64
    }

    /// Deletes `key`, counted; true if it was there.
    pub fn delete(&self, key: &K) -> bool {
        add_agent_deletes(self.map_id, 1);
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: BPF_MAP_DELETE_ELEM reads the map's key size, which `open` checked is
        // size_of::<K>(), at `key`; `attr` and `key` outlive the call.
        let ret = unsafe { bpf(BPF_MAP_DELETE_ELEM, &attr) };
        if ret == 0 {
            return true;
        }
        add_agent_deletes(self.map_id, u64::MAX);
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::debug!(map = self.name, "cannot delete a key: {e}");
        }
        false
    }
}

/// `union bpf_attr` for BPF_MAP_DELETE_ELEM (and the other element commands).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// bpf(2): the command `cmd` with `attr`, its member of `union bpf_attr`.
///
/// # Safety
/// The pointers in `attr` must be valid for what `cmd` reads and writes through them.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &A) -> libc::c_long {
    // SAFETY: `attr` is a live reference of `size_of::<A>()` bytes; the pointers in it are the
    // caller's to vouch for.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const A,
            std::mem::size_of::<A>(),
        )
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

/// The keys in the map `fd` (keys of `key_size` bytes, `capacity` entries), walked with
/// BPF_MAP_GET_NEXT_KEY.
fn count_keys(fd: BorrowedFd<'_>, key_size: usize, capacity: u64) -> io::Result<u64> {
    walk_keys(fd, key_size, capacity, |_| {})
}

/// Calls `each` with every key of the map `fd` (keys of `key_size` bytes, `capacity` entries),
/// and returns how many there were. A walk that keeps restarting (its key deleted under it) stops
/// after four times the map's worth.
fn walk_keys(
    fd: BorrowedFd<'_>,
    key_size: usize,
    capacity: u64,
    mut each: impl FnMut(&[u8]),
) -> io::Result<u64> {
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
        let ret = unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &attr) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(n),
                _ => Err(e),
            };
        }
        n += 1;
        each(&next[..key_size]);
        key[..key_size].copy_from_slice(&next[..key_size]);
        if n >= 4 * capacity {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests;
