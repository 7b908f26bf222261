//! Counted inserts and deletes on the LRU maps (see `loupe_common::lru`): a new key is inserted
//! with `BPF_NOEXIST` and counted; an existing one is replaced, uncounted; a delete that found its
//! key is counted. Userspace derives the evictions from the counts and the entries left.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use loupe_common::lru;

#[map]
static LRU_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(lru::COUNTERS, 0);

#[inline(always)]
fn count(slot: u32) {
    add(slot, 1);
}

#[inline(always)]
fn add(slot: u32, n: u64) {
    if let Some(c) = LRU_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from a successful lookup of this CPU's u64 slot, valid and
        // aligned. The add is atomic (BPF_XADD, its result unused as 5.10 requires): a perf_event
        // program (the profiler's KNOWN_PIDS) can interrupt a tracepoint's count on this CPU, and
        // a lost delete would read as an eviction.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, n) };
    }
}

/// Puts `value` under `key` in `map` (the map's index `id`), as an insert with flags 0 would;
/// true if it is there now.
#[inline(always)]
pub(crate) fn put<K, V>(map: &LruHashMap<K, V>, id: u32, key: &K, value: &V) -> bool {
    // If the key is there, its value is replaced (atomically, as with flags 0).
    insert_new(map, id, key, value) || map.insert(key, value, BPF_EXIST as u64).is_ok()
}

/// Inserts `value` under `key` in `map` (the map's index `id`) only if the key is not there
/// (`BPF_NOEXIST`), counted; true if it was inserted.
#[inline(always)]
pub(crate) fn insert_new<K, V>(map: &LruHashMap<K, V>, id: u32, key: &K, value: &V) -> bool {
    let inserted = map.insert(key, value, BPF_NOEXIST as u64).is_ok();
    if inserted {
        count(lru::inserted(id));
    }
    inserted
}

/// Puts `value` under `key`, which a lookup has just found in `map` (the map's index `id`): the
/// value is replaced, uncounted, at the cost of one update; a key gone meanwhile is put as new.
#[inline(always)]
pub(crate) fn replace<K, V>(map: &LruHashMap<K, V>, id: u32, key: &K, value: &V) -> bool {
    map.insert(key, value, BPF_EXIST as u64).is_ok() || put(map, id, key, value)
}

/// Deletes `key` from `map` (the map's index `id`); true if it was there.
#[inline(always)]
pub(crate) fn remove<K, V>(map: &LruHashMap<K, V>, id: u32, key: &K) -> bool {
    // Counted before the delete, and taken back (on this CPU, so the slot never goes below its
    // count) if the key was not there: a reading in between sees one delete too many, which
    // lowers the evictions userspace derives. Counted after, a reading in between would see a
    // key gone and not deleted: an eviction, reported for good.
    count(lru::deleted(id));
    let removed = map.remove(key).is_ok();
    if !removed {
        add(lru::deleted(id), u64::MAX);
    }
    removed
}
