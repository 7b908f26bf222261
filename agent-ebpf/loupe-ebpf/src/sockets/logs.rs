//! Log capture: writes to stdout and stderr of traced processes (fds 1 and 2 when they are no
//! tracked connection) become LOG events in the socket ring, within a per-process rate.

use super::*;

/// Log writes per process in the current second, keyed by pid.
#[map]
static LOG_RATES: LruHashMap<u32, LogRate> = LruHashMap::with_max_entries(LOG_RATE_ENTRIES, 0);

/// The fds whose writes are log lines when they are no tracked connection.
const STDOUT: u64 = 1;
const STDERR: u64 = 2;
/// One second in nanoseconds: the window of the log rate limit.
const SECOND_NS: u64 = 1_000_000_000;

/// Whether a data syscall on `fd` (no tracked connection) is a log write to capture: a write to
/// stdout or stderr of a traced process, with log capture on.
#[inline(always)]
pub(super) fn log_write(pid_tgid: u64, fd: u64, data_direction: u32) -> bool {
    if (fd != STDOUT && fd != STDERR) || data_direction != direction::EGRESS {
        return false;
    }
    match config() {
        Some(config) => config.capture_logs != 0 && wanted((pid_tgid >> 32) as u32, config),
        None => false,
    }
}

/// A log write described by `args` moved `ret` (> 0) bytes: emit a LOG event, within the
/// process's rate.
#[inline(always)]
pub(super) fn logged(pid_tgid: u64, args: &SyscallArgs, ret: i64) -> Result<(), i64> {
    let pid = (pid_tgid >> 32) as u32;
    let config = config().ok_or(0)?;
    let ts = now();
    match LOG_RATES.get_ptr_mut(pid) {
        Some(rate) => {
            // SAFETY: the pointer comes from a successful lookup. Threads of one process on two
            // CPUs may race here; the limit is then off by a write or two, which is harmless.
            let rate = unsafe { &mut *rate };
            if ts.wrapping_sub(rate.window_start_ns) >= SECOND_NS {
                rate.window_start_ns = ts;
                rate.writes = 0;
            }
            if rate.writes >= u64::from(config.log_writes_per_sec) {
                count(counter::LOG_WRITES_LIMITED);
                return Ok(());
            }
            rate.writes += 1;
        }
        None => {
            let rate = LogRate {
                window_start_ns: ts,
                writes: 1,
            };
            counted::put(&LOG_RATES, lru::LOG_RATES, &pid, &rate);
        }
    }
    if let Some(event) = SOCKET_EVENT_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch event; a log write has no context.
        unsafe { (*event).header.ctx = SpanCtx::default() };
    }
    let no_tuple = ConnTuple::default();
    let out = Outgoing {
        kind: kind::LOG,
        role: 0,
        conn_id: 0,
        tuple: &no_tuple,
        request_ns: 0,
        flags: 0,
        timestamp_ns: ts,
    };
    emit_data(pid_tgid, args, ret, &out, config)
}
