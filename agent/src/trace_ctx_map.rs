//! The thread → trace context map other eBPF profilers read (`--publish-trace-context`).
//!
//! OpenTelemetry eBPF Instrumentation documents a pinned map for trace ↔ profile correlation,
//! `/sys/fs/bpf/otel/traces_ctx_v1`: an LRU hash keyed by the thread's `pid_tgid` (process id in
//! the upper 32 bits, thread id in the lower, as the kernel's `bpf_get_current_pid_tgid` gives
//! them), whose value is the trace id (16 bytes) then the span id (8 bytes) of the request the
//! thread serves. A profiler on the same node (the OpenTelemetry eBPF profiler, Alloy's
//! `pyroscope.ebpf`) looks its samples' threads up there and tags them with Loupe's spans.
//!
//! Loupe fills it from the span builder's thread as server requests start and end, so an entry
//! appears a few milliseconds after a request's head was read (the ring buffer's poll interval)
//! and goes when its response is written. Each change costs one `bpf` syscall. The map is
//! created and pinned at start-up (a stale pin from a killed agent is replaced) and unpinned
//! when the agent stops.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData, MapError};
use loupe_collector::telemetry::{Counter, Registry};

use crate::net::spans::ServingChange;

/// Where the map is pinned.
pub const PIN_PATH: &str = "/sys/fs/bpf/otel/traces_ctx_v1";
/// Threads the map holds at most (LRU beyond), as documented.
pub const MAX_ENTRIES: u32 = 1 << 14;
/// `BPF_MAP_TYPE_LRU_HASH`.
const LRU_HASH: u32 = 9;

/// The pinned map; unpinned when dropped.
pub struct TraceContextMap {
    map: HashMap<MapData, u64, [u8; 24]>,
    path: PathBuf,
    failed: Counter,
    updates: Counter,
}

impl TraceContextMap {
    /// Creates the map and pins it at `path` (its folder is made if missing).
    pub fn create(path: &Path, registry: &Registry) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {} (is bpffs mounted?)", dir.display()))?;
        }
        // A pin left by an agent that was killed: its map is not ours to share any more.
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale pin {}", path.display()))?;
        }
        let def = aya_obj::maps::Map::new_from_params(LRU_HASH, 8, 24, MAX_ENTRIES, 0);
        let data = MapData::create(def, "traces_ctx_v1", None)
            .context("cannot create the trace context map")?;
        data.pin(path)
            .with_context(|| format!("cannot pin the trace context map at {}", path.display()))?;
        let map = HashMap::try_from(Map::LruHashMap(data))
            .context("the trace context map has an unexpected type")?;
        Ok(Self {
            map,
            path: path.to_path_buf(),
            failed: registry.counter(
                "loupe_trace_context_map_updates_failed_total",
                "Updates of the shared trace context map (--publish-trace-context) that failed.",
                &[],
            ),
            updates: registry.counter(
                "loupe_trace_context_map_updates_total",
                "Updates of the shared trace context map (--publish-trace-context).",
                &[],
            ),
        })
    }

    /// Applies what threads started or stopped serving.
    pub fn apply(&mut self, changes: &[ServingChange]) {
        for c in changes {
            let key = (u64::from(c.pid) << 32) | u64::from(c.tid);
            let result = match c.now_serving {
                Some((trace_id, span_id)) => {
                    let mut value = [0u8; 24];
                    value[..16].copy_from_slice(&trace_id);
                    value[16..].copy_from_slice(&span_id);
                    self.map.insert(key, value, 0)
                }
                // Already gone (evicted by the LRU) is fine.
                None => match self.map.remove(&key) {
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        Ok(())
                    }
                    other => other,
                },
            };
            match result {
                Ok(()) => self.updates.inc(),
                Err(_) => self.failed.inc(),
            }
        }
    }
}

impl Drop for TraceContextMap {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("cannot unpin {}: {e}", self.path.display());
        }
    }
}
