//! The socket reader thread, `loupe-sockets`: drains the ring buffer into batches for the span
//! builder within the queue's byte bound, sweeps connections of exited processes and reads the
//! kernel's counters into metrics.

use super::*;

/// The header of a ring-buffer record and its captured bytes.
pub(super) fn decode(record: &[u8]) -> Option<(SocketEventHeader, &[u8])> {
    let header_len = std::mem::size_of::<SocketEventHeader>();
    if record.len() < header_len {
        return None;
    }
    // SAFETY: the record holds at least size_of::<SocketEventHeader>() bytes the kernel wrote as a
    // SocketEventHeader; read_unaligned copes with any alignment, and every bit pattern is valid
    // (integers only).
    let header: SocketEventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let data_start = std::mem::offset_of!(loupe_common::socket::SocketEvent, data);
    let captured = (header.captured as usize).min(MAX_CAPTURE_BYTES);
    let data = record
        .get(data_start..data_start + captured)
        .unwrap_or_default();
    Some((header, data))
}

/// Gathers events into batches for the span builder and counts them; counts reach the metrics
/// once per [`COUNTER_INTERVAL`].
#[derive(Default)]
pub(super) struct Tally {
    pub(super) open: u64,
    pub(super) data: u64,
    pub(super) close: u64,
    pub(super) log: u64,
    pub(super) queue_full: u64,
    pub(super) memory_pressure: u64,
    /// While on, DATA and LOG events are dropped; OPEN and CLOSE (no payload) still pass, so
    /// that the span builder lets go of closed connections.
    pub(super) pressure: Pressure,
    /// The batch being gathered; each event's bytes are still only a range in `bytes` (in
    /// `ranges`), made slices of one buffer when the batch is sent.
    pub(super) events: Vec<SocketEvent>,
    pub(super) ranges: Vec<std::ops::Range<usize>>,
    pub(super) bytes: Vec<u8>,
    /// Bytes of the batches sent and not yet dropped by the span builder.
    pub(super) queued: Arc<AtomicUsize>,
    /// The bound on `queued`.
    pub(super) queue_bytes: usize,
}

/// The memory of every batch vector: [`BATCH_EVENTS`] events reserved at its first event.
pub(super) const EMPTY_BATCH_BYTES: usize = BATCH_EVENTS * std::mem::size_of::<SocketEvent>();

/// A batch's place in the queue's byte bound: what its event vector and byte buffer take
/// (capacities, not lengths), given back when the batch is dropped, consumed or not.
#[derive(Debug)]
pub struct QueuedBytes {
    queued: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Tally {
    /// Whether the batch has room for one more event.
    pub(super) fn has_room(&self) -> bool {
        self.events.len() < BATCH_EVENTS
    }

    /// Adds an event to the batch; a full batch is sent, or dropped when the queue is full
    /// (for events that are not in the ring any more: the sweep's CLOSEs).
    pub(super) fn push_or_drop(
        &mut self,
        tx: &SyncSender<SocketEvents>,
        header: SocketEventHeader,
        data: &[u8],
    ) {
        if !self.has_room() && !self.send(tx) {
            self.discard();
        }
        self.push(header, data);
    }

    /// Adds an event to the batch (which has room: see [`Tally::has_room`]).
    pub(super) fn push(&mut self, header: SocketEventHeader, data: &[u8]) {
        match header.kind {
            kind::OPEN => self.open += 1,
            kind::DATA => self.data += 1,
            kind::LOG => self.log += 1,
            _ => self.close += 1,
        }
        if matches!(header.kind, kind::DATA | kind::LOG) && self.pressure.is_on() {
            self.memory_pressure += 1;
            return;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.ranges.push(start..self.bytes.len());
        if self.events.capacity() == 0 {
            self.events.reserve_exact(BATCH_EVENTS);
        }
        self.events.push(SocketEvent {
            header,
            data: Bytes::new(),
        });
    }

    /// Drops the batch, counted as `queue_full`.
    pub(super) fn discard(&mut self) {
        self.queue_full += self.events.len() as u64;
        self.clear();
    }

    /// Empties the batch, keeping its vectors for the next.
    pub(super) fn clear(&mut self) {
        self.events.clear();
        self.ranges.clear();
        self.bytes.clear();
    }

    /// Sends the batch gathered so far, without waiting. When the queue holds its byte bound
    /// already, the batch stays here and this returns false. A batch always goes into an empty
    /// queue.
    pub(super) fn send(&mut self, tx: &SyncSender<SocketEvents>) -> bool {
        if self.events.is_empty() {
            return true;
        }
        let n = self.events.len() as u64;
        let cost =
            self.events.capacity() * std::mem::size_of::<SocketEvent>() + self.bytes.capacity();
        let queued = self.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + cost > self.queue_bytes {
            return false;
        }
        self.queued.fetch_add(cost, Ordering::Relaxed);
        let held = QueuedBytes {
            queued: self.queued.clone(),
            bytes: cost,
        };
        // The next batch likely needs about as many bytes as this one.
        let size = self.bytes.len();
        let bytes = Bytes::from(std::mem::replace(&mut self.bytes, Vec::with_capacity(size)));
        let mut events = std::mem::take(&mut self.events);
        for (event, range) in events.iter_mut().zip(self.ranges.drain(..)) {
            if !range.is_empty() {
                event.data = bytes.slice(range);
            }
        }
        match tx.try_send(SocketEvents::held(events, held)) {
            Ok(()) => {}
            // The channel's capacity follows from the byte bound, so only a gone consumer
            // refuses a batch: everything is dropped then, counted the same way.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.queue_full += n,
        }
        true
    }

    pub(super) fn flush(&mut self, m: &Metrics) {
        m.open.add(std::mem::take(&mut self.open));
        m.data.add(std::mem::take(&mut self.data));
        m.close.add(std::mem::take(&mut self.close));
        m.log.add(std::mem::take(&mut self.log));
        m.dropped_queue_full
            .add(std::mem::take(&mut self.queue_full));
        m.dropped_memory_pressure
            .add(std::mem::take(&mut self.memory_pressure));
    }
}

pub(super) fn read_events(
    mut maps: ReaderMaps,
    tx: SyncSender<SocketEvents>,
    metrics: Metrics,
    sweep_interval: Duration,
    stop: Arc<AtomicBool>,
    mut late_accepts: Vec<CaptureLink>,
    mut tally: Tally,
) {
    let late_accepts_until = Instant::now() + LATE_ACCEPT_GRACE;
    let fd = maps.ring.as_raw_fd();
    let mut last_counters = [0u64; counter::COUNT as usize];
    let mut next_counters = Instant::now() + COUNTER_INTERVAL;
    let mut next_sweep = Instant::now() + sweep_interval;
    let mut warned_queue_full = false;
    let waker = match RingWaker::new(fd) {
        Ok(w) => Some(w),
        Err(err) => {
            tracing::warn!(
                "socket reader: epoll unavailable ({err}); reading every {POLL_TIMEOUT_MS} ms"
            );
            None
        }
    };
    let mut last_drain = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match &waker {
            Some(w) => w.wait(POLL_TIMEOUT_MS),
            None => thread::sleep(Duration::from_millis(POLL_TIMEOUT_MS as u64)),
        }
        // Even when woken (the ring passing a quarter full, or an OPEN or CLOSE into an empty
        // ring, which connection churn makes constant), records gather for MIN_DRAIN_INTERVAL:
        // at any rate a host reaches, a quarter of the ring lasts longer than that.
        let since = last_drain.elapsed();
        if since < MIN_DRAIN_INTERVAL {
            thread::sleep(MIN_DRAIN_INTERVAL - since);
        }
        last_drain = Instant::now();
        drain(&mut maps.ring, &tx, &mut tally);
        let now = Instant::now();
        if !late_accepts.is_empty() && now >= late_accepts_until {
            late_accepts.clear();
            tracing::debug!("accept exit tracepoints detached (start-up grace over)");
        }
        if now >= next_sweep {
            next_sweep = now + sweep_interval;
            sweep(&mut maps, &tx, &mut tally, &metrics);
        }
        if now >= next_counters {
            next_counters = now + COUNTER_INTERVAL;
            if tally.queue_full > 0 && !warned_queue_full {
                warned_queue_full = true;
                tracing::warn!(
                    "the span builder falls behind: socket events are dropped \
                     (loupe_socket_events_dropped_total{{reason=\"queue_full\"}})"
                );
            }
            tally.flush(&metrics);
            update_kernel_counters(&maps.counters, &mut last_counters, &metrics);
        }
    }
    // The programs are detached by now: pass on what they wrote last (CLOSEs, mostly), giving
    // the span builder a moment to make room; what is left then is counted.
    let deadline = Instant::now() + FINAL_DRAIN_WAIT;
    while !drain(&mut maps.ring, &tx, &mut tally) {
        if Instant::now() >= deadline {
            discard_rest(&mut maps.ring, &mut tally);
            break;
        }
        thread::sleep(MIN_DRAIN_INTERVAL);
    }
    tally.flush(&metrics);
    update_kernel_counters(&maps.counters, &mut last_counters, &metrics);
}

/// An edge-triggered epoll instance on the ring: unlike poll(), which reports a ring with any
/// record in it as ready at once, it returns only when the kernel wakes the ring's readers, which
/// data events do only when the ring passes a quarter full.
struct RingWaker {
    epoll: std::os::fd::OwnedFd,
}

impl RingWaker {
    fn new(ring_fd: std::os::fd::RawFd) -> std::io::Result<RingWaker> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; a non-negative result is a new descriptor this process owns.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid descriptor nothing else owns.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `event` is valid for the call.
        let rc = unsafe {
            libc::epoll_ctl(
                std::os::fd::AsRawFd::as_raw_fd(&epoll),
                libc::EPOLL_CTL_ADD,
                ring_fd,
                &mut event,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingWaker { epoll })
    }

    /// Waits up to `timeout_ms` for a wake-up (an interrupted wait returns early, which only
    /// means an early drain).
    fn wait(&self, timeout_ms: i32) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: the epoll descriptor is open and `event` has room for the one event asked for.
        unsafe {
            libc::epoll_wait(
                std::os::fd::AsRawFd::as_raw_fd(&self.epoll),
                &mut event,
                1,
                timeout_ms,
            )
        };
    }
}

/// Reads the records in the ring and sends them on in batches, until the ring is empty or the
/// queue to the span builder holds its bound: then the rest waits in the ring for the next
/// drain, and when the ring fills up the kernel drops what does not fit (counted as
/// `ring_full`). The ring's memory is spent anyway, and a record the kernel cannot reserve
/// costs nothing further, where one read and then dropped here costs a copy.
/// Returns whether everything was read and sent.
fn drain(ring: &mut RingBuf<MapData>, tx: &SyncSender<SocketEvents>, tally: &mut Tally) -> bool {
    loop {
        if !tally.has_room() && !tally.send(tx) {
            return false;
        }
        if fill(ring, tally) == 0 {
            return tally.send(tx);
        }
    }
}

/// Reads records into the batch while it has room; returns how many were read.
fn fill(ring: &mut RingBuf<MapData>, tally: &mut Tally) -> usize {
    let mut read = 0;
    while tally.has_room() {
        let Some(record) = ring.next() else {
            break;
        };
        read += 1;
        if let Some((header, data)) = decode(&record) {
            tally.push(header, data);
        }
    }
    read
}

/// Reads what is left in the ring and drops it with the batch held, counted (at shutdown, when
/// the span builder's queue stays full).
fn discard_rest(ring: &mut RingBuf<MapData>, tally: &mut Tally) {
    loop {
        tally.discard();
        if fill(ring, tally) == 0 {
            return;
        }
    }
}

fn update_kernel_counters(
    counters: &PerCpuArray<MapData, u64>,
    last: &mut [u64; counter::COUNT as usize],
    m: &Metrics,
) {
    let mut totals = [0u64; counter::COUNT as usize];
    for (i, total) in totals.iter_mut().enumerate() {
        if let Ok(values) = counters.get(&(i as u32), 0) {
            *total = values.iter().sum();
        }
    }
    let delta = |i: u32| totals[i as usize].saturating_sub(last[i as usize]);
    m.dropped_ring_full.add(delta(counter::EVENTS_LOST));
    m.dropped_args_map_full.add(delta(counter::ARGS_MAP_FULL));
    m.untracked_map_full.add(delta(counter::CONN_MAP_FULL));
    m.read_failures_buffer.add(delta(counter::READ_FAILED));
    m.read_failures_tuple.add(delta(counter::TUPLE_FAILED));
    m.log_writes_limited.add(delta(counter::LOG_WRITES_LIMITED));
    m.ctx_adopted.add(delta(counter::CTX_ADOPTED));
    m.ctx_untrusted.add(delta(counter::CTX_UNTRUSTED));
    m.ctx_write_failed.add(delta(counter::CTX_WRITE_FAILED));
    m.tls_no_socket.add(delta(counter::TLS_NO_SOCKET));
    m.go_spawn_inherited.add(delta(counter::GO_SPAWN_INHERITED));
    m.go_wake_inherited.add(delta(counter::GO_WAKE_INHERITED));
    m.go_client_live.add(delta(counter::GO_CLIENT_LIVE));
    m.go_client_stale.add(delta(counter::GO_CLIENT_STALE));
    m.go_client_none.add(delta(counter::GO_CLIENT_NONE));
    for (c, i) in m.thread_client.iter().zip([
        counter::THREAD_CLIENT_OWN,
        counter::THREAD_CLIENT_PROCESS,
        counter::THREAD_CLIENT_NONE,
    ]) {
        c.add(delta(i));
    }
    *last = totals;
}

/// The monotonic clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Forgets connections and in-flight syscalls of processes and threads that are gone: their fds
/// were closed by the kernel at exit, which no close() tracepoint shows. A client connection's
/// in-band context and parent go with it, and so do the gone processes' entries in the maps that
/// hold what a thread, goroutine or TLS object is doing.
fn sweep(maps: &mut ReaderMaps, tx: &SyncSender<SocketEvents>, tally: &mut Tally, m: &Metrics) {
    let mut alive: HashMap<u32, bool> = HashMap::new();
    let mut is_alive = |pid: u32| {
        *alive
            .entry(pid)
            .or_insert_with(|| std::path::Path::new(&format!("/proc/{pid}")).exists())
    };

    let keys: Vec<u64> = maps.connections.keys().filter_map(Result::ok).collect();
    let mut live = keys.len() as i64;
    for key in keys {
        let pid = (key >> 32) as u32;
        if is_alive(pid) {
            continue;
        }
        let Ok(state) = maps.connections.get(&key, 0) else {
            continue;
        };
        if maps.connections.remove(&key).is_err() {
            continue;
        }
        live -= 1;
        m.swept.inc();
        if state.role == role::CLIENT {
            // Its close() would have deleted these (client_closed in the programs).
            if let Some(d) = &maps.tcp_ctx_out {
                d.delete(&state.tuple);
            }
            if let Some(d) = &maps.client_parents {
                d.delete(&state.conn_id);
            }
        }
        tally.push_or_drop(
            tx,
            SocketEventHeader {
                kind: kind::CLOSE,
                role: state.role,
                pid,
                tid: 0,
                fd: key as u32 as i32,
                conn_id: state.conn_id,
                timestamp_ns: monotonic_ns(),
                tuple: state.tuple,
                ..Default::default()
            },
            &[],
        );
    }
    // A batch the queue has no room for now goes with the next drain.
    let _ = tally.send(tx);
    m.connections.set(live);

    let forgotten: u64 = maps.by_process.iter().map(|f| f(&mut is_alive)).sum();
    if forgotten > 0 {
        tracing::debug!(
            forgotten,
            "entries of exited processes deleted from the context maps"
        );
    }

    // A thread killed inside a syscall never reaches sys_exit: its saved arguments would stay.
    let keys: Vec<u64> = maps.args.keys().filter_map(Result::ok).collect();
    for key in keys {
        let (pid, tid) = ((key >> 32) as u32, key as u32);
        if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            let _ = maps.args.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
