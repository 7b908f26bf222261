//! Network spans: socket syscalls captured in the kernel (`capture`), turned into OpenTelemetry spans
//! and RED metrics (`spans`) by the protocol parsers of `loupe-protocols`.
//!
//! Flow: kernel tracepoints → ring buffer → capture reader thread → bounded channel (full: dropped and
//! counted) → span builder thread → trace exporter (collector) → OTLP / local traces.jsonl.

#![allow(dead_code)] // wired into run.rs as the pieces land

pub mod btf;
pub mod capture;
pub mod goroutines;
pub mod seed;
pub mod spans;
pub mod tls;

use bytes::Bytes;
#[allow(unused_imports)]
pub use loupe_common::socket::{ConnTuple, SocketEventHeader};

/// One socket event as the span builder consumes it: the kernel's header and the captured bytes
/// (the first `header.captured` bytes of the buffer; `header.bytes` says how many really moved).
#[derive(Debug, Clone)]
pub struct SocketEvent {
    pub header: SocketEventHeader,
    pub data: Bytes,
}

/// Events as the reader hands them to the span builder: up to [`capture::BATCH_EVENTS`] in
/// ring order, their captured bytes slices of one buffer. A batch from the reader holds its
/// memory's place in the queue's byte bound until it is dropped.
#[derive(Debug, Default)]
pub struct SocketEvents {
    events: Vec<SocketEvent>,
    _held: Option<capture::QueuedBytes>,
}

impl SocketEvents {
    fn held(events: Vec<SocketEvent>, held: capture::QueuedBytes) -> Self {
        SocketEvents {
            events,
            _held: Some(held),
        }
    }
}

impl From<Vec<SocketEvent>> for SocketEvents {
    fn from(events: Vec<SocketEvent>) -> Self {
        SocketEvents {
            events,
            _held: None,
        }
    }
}

impl std::ops::Deref for SocketEvents {
    type Target = [SocketEvent];

    fn deref(&self) -> &[SocketEvent] {
        &self.events
    }
}

impl IntoIterator for SocketEvents {
    type Item = SocketEvent;
    type IntoIter = std::vec::IntoIter<SocketEvent>;

    /// The events, out of the queue's bound from here on.
    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

/// Converts CLOCK_MONOTONIC nanoseconds (what `bpf_ktime_get_ns` returns) to Unix nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix time minus monotonic time, sampled once.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the kernel to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Clock {
            offset_ns: unix - mono,
        }
    }

    pub fn to_unix_nanos(self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).max(0) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
