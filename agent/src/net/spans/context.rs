//! Trace context without an SDK: ids, "which server request is this thread serving", and the
//! same-host link between a client request and the server request it becomes.
//!
//! - A thread (tid) is *serving* a server request from the read that started the request until
//!   its response is over (or the thread starts serving another request). Client requests the
//!   thread starts meanwhile are children of that server span.
//! - Same host: a client connection and a server connection are the two ends of one TCP
//!   connection when they have the same initial sequence numbers (the kernel's OPEN events carry
//!   them, see `TcpIsns`): NAT never rewrites sequence numbers, so this holds through DNAT
//!   (Service ClusterIPs) and SNAT (masquerade) alike. The map is keyed by the client's ISN; the
//!   server's ISN, where both ends know it (a connect that returned before the handshake ended
//!   does not), must be equal too. An end without ISNs (a connection open before the agent
//!   started, a kernel without the BTF members) is keyed by the client's address and port as
//!   it sees them: a client connection `(local L, remote R)` and a server connection
//!   `(local R', remote L)`, R' = R unless DNAT rewrote the destination; SNAT hides that link.
//!   Each end is waited for under both of its keys, so an end with ISNs still meets one without
//!   by address; two ends that both have ISNs are linked only by them (the same client address
//!   behind SNAT is not the same connection). Requests on a connection pair in
//!   order (FIFO, so pipelining pairs too). Either event may come first in the ring buffer (the
//!   server's read can return on another CPU before the client's write does), so both sides
//!   wait for the other in a bounded map; when the server side came first, the server request is
//!   re-parented before its span is emitted.
//!
//! Every map here is bounded; entries also leave when their request ends.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};

use foldhash::{HashMap, HashMapExt};

use loupe_common::socket::{ConnTuple, TcpIsns, isn_known};

/// Entries older than this (monotonic ns) are swept when a map is full.
const STALE_NS: u64 = 10_000_000_000;

/// A span's identity and parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C `tracestate` of a joined trace.
    pub trace_state: String,
}

/// The context the kernel gave a request (in-band propagation, see `tcp_context.rs` in
/// loupe-ebpf): fixed before the request's first byte left, so it is what the other side saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Server request: the client span its peer's TCP option named. Client request: the server
    /// span its thread served in the kernel's view.
    pub parent_id: Option<[u8; 8]>,
    /// Server request: the parent came from the peer's TCP option.
    pub from_peer: bool,
}

/// Random trace and span ids (xoshiro256++, seeded once; ids need uniqueness, not secrecy).
#[derive(Debug, Clone)]
pub struct IdGenerator {
    s: [u64; 4],
}

impl IdGenerator {
    /// A generator seeded from the OS (through the standard library's random hash keys).
    pub fn from_os() -> Self {
        let state = std::collections::hash_map::RandomState::new();
        let mut seed = 0u64;
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut h = state.build_hasher();
        h.write_u64(t ^ u64::from(std::process::id()));
        seed ^= h.finish();
        Self::seeded(seed)
    }

    /// A deterministic generator (tests).
    pub fn seeded(seed: u64) -> Self {
        // splitmix64 expands the seed into the four words of state.
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A non-zero trace id.
    pub fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
            id[8..].copy_from_slice(&self.next_u64().to_be_bytes());
            if id != [0; 16] {
                return id;
            }
        }
    }

    /// A non-zero span id.
    pub fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id = self.next_u64().to_be_bytes();
            if id != [0; 8] {
                return id;
            }
        }
    }
}

/// The initial sequence numbers one end of a connection knows: the client's always, the
/// server's unless the client's connect returned before the handshake was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Isns {
    pub client: u32,
    pub server: Option<u32>,
}

impl Isns {
    /// What an OPEN event's [`TcpIsns`] say; `None` without the client's ISN.
    pub fn of(t: &TcpIsns) -> Option<Isns> {
        (t.known & isn_known::CLIENT != 0).then_some(Isns {
            client: t.client,
            server: (t.known & isn_known::SERVER != 0).then_some(t.server),
        })
    }

    /// Whether two ends with these ISNs are one connection (the server's ISN is compared where
    /// both know it).
    fn same_connection(&self, other: &Isns) -> bool {
        self.client == other.client
            && match (self.server, other.server) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// How one end of a TCP connection on this host names it, for finding the other end: its
/// initial sequence numbers, and the client's address and port as this end sees them, which
/// both ends see alike through DNAT (a ClusterIP Service: the client's socket has the service
/// address as its peer, the server's socket the client's own) but not through SNAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkKey {
    isns: Option<Isns>,
    client: Option<([u8; 16], u16)>,
}

impl LinkKey {
    /// The key of a client connection; `None` when neither its ISNs nor its addresses are
    /// known.
    pub fn of_client(t: &ConnTuple, isns: Option<Isns>) -> Option<LinkKey> {
        Self::new(isns, known(t).then_some((t.local_addr, t.local_port)))
    }

    /// The key a server connection's peer (client) would have; `None` when unknown.
    pub fn of_server(t: &ConnTuple, isns: Option<Isns>) -> Option<LinkKey> {
        Self::new(isns, known(t).then_some((t.remote_addr, t.remote_port)))
    }

    fn new(isns: Option<Isns>, client: Option<([u8; 16], u16)>) -> Option<LinkKey> {
        (isns.is_some() || client.is_some()).then_some(LinkKey { isns, client })
    }

    /// The map slots this end waits under and looks in, ISNs first.
    fn slots(&self) -> impl Iterator<Item = Slot> {
        let isn = self.isns.map(|i| Slot::Isn(i.client));
        let address = self.client.map(|(a, p)| Slot::Address(a, p));
        isn.into_iter().chain(address)
    }

    /// Whether the end `other`, found under `slot`, is the other end of this connection: by
    /// ISNs, or by address when one of the two has none.
    fn pairs_with(&self, other: &LinkKey, slot: Slot) -> bool {
        match (slot, self.isns, other.isns) {
            (Slot::Isn(_), Some(a), Some(b)) => a.same_connection(&b),
            (Slot::Isn(_), _, _) => false,
            (Slot::Address(..), Some(_), Some(_)) => false,
            (Slot::Address(..), _, _) => self.client.is_some() && self.client == other.client,
        }
    }
}

fn known(t: &ConnTuple) -> bool {
    t.local_port != 0 && t.remote_port != 0 && t.remote_addr != [0; 16]
}

/// Where a waiting end is filed: by its client ISN, or by the client's address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Isn(u32),
    Address([u8; 16], u16),
}

/// Which key linked two ends of a connection on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkedBy {
    /// Their initial sequence numbers.
    Isn,
    /// The client's address and port (an end without ISNs).
    Address,
}

impl From<Slot> for LinkedBy {
    fn from(s: Slot) -> Self {
        match s {
            Slot::Isn(_) => LinkedBy::Isn,
            Slot::Address(..) => LinkedBy::Address,
        }
    }
}

/// A request on a connection: `(conn_id, request id)`.
pub type RequestRef = (u64, u64);

/// `(trace id, span id)` of a span.
pub type SpanIds = ([u8; 16], [u8; 8]);

#[derive(Debug, Clone)]
struct Serving {
    /// The thread's process.
    pid: u32,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    request: RequestRef,
    since_ns: u64,
}

#[derive(Debug, Clone)]
struct InFlight {
    trace_id: [u8; 16],
    request: RequestRef,
    since_ns: u64,
}

#[derive(Debug, Clone)]
struct Waiting<T> {
    value: T,
    request: RequestRef,
    /// The waiting end's key (filed under each of its slots).
    key: LinkKey,
    since_ns: u64,
}

/// A thread started or stopped serving a server span (see [`TraceContexts::journal_serving`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingChange {
    pub pid: u32,
    pub tid: u32,
    /// What it serves now: `(trace id, span id)`, or nothing.
    pub now_serving: Option<SpanIds>,
}

/// What a client request found on the other side of a same-host link.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientLink {
    /// No server request waited: the client request now waits for its server read.
    Registered,
    /// The server read came first: re-parent that server request under the client span.
    ServerWaiting(RequestRef, LinkedBy),
    /// The client's addresses are unknown or the map is full.
    None,
}

/// The bounded maps of trace context.
#[derive(Debug)]
pub struct TraceContexts {
    max_threads: usize,
    max_links: usize,
    serving: HashMap<u32, Serving>,
    /// Server spans in flight by span id, whatever thread read them: what a kernel parent
    /// names when the client request was made on another thread (a goroutine that moved, an
    /// async task). Bounded like `serving`.
    in_flight: HashMap<[u8; 8], InFlight>,
    /// The span id of each request in `in_flight`.
    span_of: HashMap<RequestRef, [u8; 8]>,
    /// Requests of this host whose two ends the TCP option links, seen from one end so far:
    /// client requests by their span id, server requests by their parent's (see
    /// [`TraceContexts::option_client`]). Bounded by `max_links` each.
    option_clients: HashMap<[u8; 8], RequestRef>,
    option_servers: HashMap<[u8; 8], RequestRef>,
    /// When set, every change of a thread's serving state is recorded here (see
    /// [`TraceContexts::journal_serving`]).
    journal: Option<Vec<ServingChange>>,
    /// Client requests waiting for their server read, under each slot of their key.
    clients: HashMap<Slot, VecDeque<Waiting<SpanIds>>>,
    /// Server requests (that found no client) waiting for a late client event, likewise.
    servers: HashMap<Slot, VecDeque<Waiting<()>>>,
    /// Entries of `clients` and `servers` (a request waits under one or two slots).
    links: usize,
    /// Entries dropped because a map was full.
    pub overflows: u64,
}

impl TraceContexts {
    pub fn new(max_threads: usize, max_links: usize) -> Self {
        Self {
            max_threads: max_threads.max(1),
            max_links: max_links.max(1),
            serving: HashMap::new(),
            in_flight: HashMap::new(),
            span_of: HashMap::new(),
            option_clients: HashMap::new(),
            option_servers: HashMap::new(),
            journal: None,
            clients: HashMap::new(),
            servers: HashMap::new(),
            links: 0,
            overflows: 0,
        }
    }

    /// Records every change of what a thread serves from now on, for [`Self::take_changes`].
    pub fn journal_serving(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The changes recorded since the last call (in order).
    pub fn take_changes(&mut self, into: &mut Vec<ServingChange>) {
        if let Some(j) = &mut self.journal {
            into.append(j);
        }
    }

    fn record(&mut self, pid: u32, tid: u32, now_serving: Option<SpanIds>) {
        if let Some(j) = &mut self.journal {
            j.push(ServingChange {
                pid,
                tid,
                now_serving,
            });
        }
    }

    /// Thread `tid` of process `pid` now serves this server span.
    pub fn start_serving(
        &mut self,
        pid: u32,
        tid: u32,
        ctx: &SpanContext,
        request: RequestRef,
        now: u64,
    ) {
        if self.serving.len() >= self.max_threads && !self.serving.contains_key(&tid) {
            let mut gone = Vec::new();
            self.serving.retain(|&t, s| {
                let keep = now.saturating_sub(s.since_ns) < STALE_NS;
                if !keep {
                    gone.push((s.pid, t));
                }
                keep
            });
            if self.serving.len() >= self.max_threads {
                self.overflows += self.serving.len() as u64;
                gone.extend(self.serving.drain().map(|(t, s)| (s.pid, t)));
            }
            for (p, t) in gone {
                self.record(p, t, None);
            }
        }
        self.serving.insert(
            tid,
            Serving {
                pid,
                trace_id: ctx.trace_id,
                span_id: ctx.span_id,
                request,
                since_ns: now,
            },
        );
        self.record(pid, tid, Some((ctx.trace_id, ctx.span_id)));
        self.add_in_flight(ctx, request, now);
    }

    fn add_in_flight(&mut self, ctx: &SpanContext, request: RequestRef, now: u64) {
        // Every thread may serve several requests at once (an event loop), so the bound is a
        // multiple of the threads'.
        let max = self.max_threads.saturating_mul(4);
        if self.in_flight.len() >= max {
            self.in_flight
                .retain(|_, f| now.saturating_sub(f.since_ns) < STALE_NS);
            if self.in_flight.len() >= max {
                self.overflows += self.in_flight.len() as u64;
                self.in_flight.clear();
            }
            let in_flight = &self.in_flight;
            self.span_of.retain(|_, s| in_flight.contains_key(s));
        }
        self.in_flight.insert(
            ctx.span_id,
            InFlight {
                trace_id: ctx.trace_id,
                request,
                since_ns: now,
            },
        );
        self.span_of.insert(request, ctx.span_id);
    }

    /// A client request with the kernel's span id `span_id` started: the server request of
    /// this host that adopted it through the TCP option, if that came first (else the client
    /// waits for it). The pair is linked like a same-host pair, for timing.
    pub fn option_client(&mut self, span_id: [u8; 8], request: RequestRef) -> Option<RequestRef> {
        if let Some(server) = self.option_servers.remove(&span_id) {
            return Some(server);
        }
        Self::bounded_insert(&mut self.option_clients, span_id, request, self.max_links);
        None
    }

    /// A server request adopted the client span `parent` through the TCP option: that client
    /// request, if this host saw it first (else the server waits for it).
    pub fn option_server(&mut self, parent: [u8; 8], request: RequestRef) -> Option<RequestRef> {
        if let Some(client) = self.option_clients.remove(&parent) {
            return Some(client);
        }
        Self::bounded_insert(&mut self.option_servers, parent, request, self.max_links);
        None
    }

    /// Inserts into a map that is emptied when full: most entries never meet their other end
    /// (it is on another host), so they are not overflows; a pair cleared meanwhile only loses
    /// its timing fix.
    fn bounded_insert(
        map: &mut HashMap<[u8; 8], RequestRef>,
        key: [u8; 8],
        value: RequestRef,
        max: usize,
    ) {
        if map.len() >= max {
            map.clear();
        }
        map.insert(key, value);
    }

    /// The trace of the server span `span_id`, while its request is in flight.
    pub fn in_flight(&self, span_id: [u8; 8]) -> Option<[u8; 16]> {
        self.in_flight.get(&span_id).map(|f| f.trace_id)
    }

    /// The server span thread `tid` is serving: `(trace id, span id)`.
    pub fn serving(&self, tid: u32) -> Option<SpanIds> {
        self.serving.get(&tid).map(|s| (s.trace_id, s.span_id))
    }

    /// The server request is over (or dropped): its thread serves nothing any more.
    pub fn stop_serving(&mut self, tid: u32, request: RequestRef) {
        if let Some(span_id) = self.span_of.remove(&request) {
            self.in_flight.remove(&span_id);
        }
        if let Some(s) = self.serving.get(&tid).filter(|s| s.request == request) {
            let pid = s.pid;
            self.serving.remove(&tid);
            self.record(pid, tid, None);
        }
    }

    /// A server request was re-parented: the thread's children join the new trace.
    pub fn reparent_serving(&mut self, tid: u32, request: RequestRef, trace_id: [u8; 16]) {
        if let Some(f) = self
            .span_of
            .get(&request)
            .and_then(|s| self.in_flight.get_mut(s))
        {
            f.trace_id = trace_id;
        }
        if let Some(s) = self.serving.get_mut(&tid).filter(|s| s.request == request) {
            s.trace_id = trace_id;
            let (pid, span_id) = (s.pid, s.span_id);
            self.record(pid, tid, Some((trace_id, span_id)));
        }
    }

    /// Whether `entries` more waiting entries fit (stale ones are swept when they do not).
    fn make_room(&mut self, now: u64, entries: usize) -> bool {
        if self.links + entries <= self.max_links {
            return true;
        }
        let mut links = 0;
        self.clients.retain(|_, q| {
            q.retain(|w| now.saturating_sub(w.since_ns) < STALE_NS);
            links += q.len();
            !q.is_empty()
        });
        self.servers.retain(|_, q| {
            q.retain(|w| now.saturating_sub(w.since_ns) < STALE_NS);
            links += q.len();
            !q.is_empty()
        });
        self.links = links;
        self.links + entries <= self.max_links
    }

    /// A client request started on a connection with key `key`.
    pub fn client_request(
        &mut self,
        key: Option<LinkKey>,
        ctx: &SpanContext,
        request: RequestRef,
        now: u64,
    ) -> ClientLink {
        let Some(key) = key else {
            return ClientLink::None;
        };
        if let Some((w, slot)) = take_pair(&mut self.servers, &key, &mut self.links) {
            return ClientLink::ServerWaiting(w.request, slot.into());
        }
        let slots = key.slots().count();
        if !self.make_room(now, slots) {
            self.overflows += 1;
            return ClientLink::None;
        }
        for slot in key.slots() {
            self.clients.entry(slot).or_default().push_back(Waiting {
                value: (ctx.trace_id, ctx.span_id),
                request,
                key,
                since_ns: now,
            });
        }
        self.links += slots;
        ClientLink::Registered
    }

    /// A server request was read on a connection with key `key`: the client span it pairs
    /// with, `(trace id, span id)`, that client request and the key that linked them; or `None`
    /// (then it waits for a late client event).
    pub fn server_request(
        &mut self,
        key: Option<LinkKey>,
        request: RequestRef,
        now: u64,
    ) -> Option<(SpanIds, RequestRef, LinkedBy)> {
        let key = key?;
        if let Some((w, slot)) = take_pair(&mut self.clients, &key, &mut self.links) {
            return Some((w.value, w.request, slot.into()));
        }
        let slots = key.slots().count();
        if self.make_room(now, slots) {
            for slot in key.slots() {
                self.servers.entry(slot).or_default().push_back(Waiting {
                    value: (),
                    request,
                    key,
                    since_ns: now,
                });
            }
            self.links += slots;
        } else {
            self.overflows += 1;
        }
        None
    }

    /// Whether the server request still waits for its same-host client.
    pub fn server_waiting(&self, key: Option<LinkKey>, request: RequestRef) -> bool {
        key.is_some_and(|k| {
            k.slots().any(|slot| {
                self.servers
                    .get(&slot)
                    .is_some_and(|q| q.iter().any(|w| w.request == request))
            })
        })
    }

    /// A request is over or dropped: it no longer waits to be linked.
    pub fn forget(&mut self, key: Option<LinkKey>, request: RequestRef) {
        let Some(key) = key else { return };
        for slot in key.slots() {
            let removed = remove_waiting(&mut self.clients, slot, request)
                + remove_waiting(&mut self.servers, slot, request);
            self.links = self.links.saturating_sub(removed);
        }
    }

    /// Entries held (for tests and gauges).
    pub fn len(&self) -> (usize, usize) {
        (self.serving.len(), self.links)
    }
}

/// Takes the first end waiting in `map` that pairs with `key` (under its ISN slot first, then
/// its address slot), out of every slot it waits under; `links` loses its entries.
fn take_pair<T>(
    map: &mut HashMap<Slot, VecDeque<Waiting<T>>>,
    key: &LinkKey,
    links: &mut usize,
) -> Option<(Waiting<T>, Slot)> {
    for slot in key.slots() {
        let Some(q) = map.get_mut(&slot) else {
            continue;
        };
        let Some(i) = q.iter().position(|w| key.pairs_with(&w.key, slot)) else {
            continue;
        };
        let w = q.remove(i)?;
        if q.is_empty() {
            map.remove(&slot);
        }
        *links = links.saturating_sub(1);
        for other in w.key.slots().filter(|&o| o != slot) {
            *links = links.saturating_sub(remove_waiting(map, other, w.request));
        }
        return Some((w, slot));
    }
    None
}

/// Removes `request` from the queue of `slot`; returns how many entries went.
fn remove_waiting<T>(
    map: &mut HashMap<Slot, VecDeque<Waiting<T>>>,
    slot: Slot,
    request: RequestRef,
) -> usize {
    let Some(q) = map.get_mut(&slot) else {
        return 0;
    };
    let before = q.len();
    q.retain(|w| w.request != request);
    let removed = before - q.len();
    if q.is_empty() {
        map.remove(&slot);
    }
    removed
}
