//! The span builder's own metrics: events consumed, spans made and lost (by reason), protocol
//! detection, connection evictions and parser desyncs.

use loupe_collector::telemetry::{Counter, Gauge, Registry};

use super::context::LinkedBy;

/// Why spans were lost (`loupe_spans_dropped_total{reason}`).
#[derive(Debug, Clone, Copy)]
pub(super) enum DropReason {
    /// The connection closed (or its parser gave up) before the response.
    NoResponse,
    /// The connection's state was evicted (capacity, memory, idle) with requests waiting.
    Evicted,
    /// More requests waited on one connection than allowed.
    PendingOverflow,
    /// More finished spans waited for a flush than allowed.
    BufferFull,
    /// A response answered a request that was never seen.
    UnpairedResponse,
    /// The builder stopped with requests still waiting.
    Shutdown,
}

pub(super) const DROP_REASONS: [(&str, DropReason); 6] = [
    ("no_response", DropReason::NoResponse),
    ("evicted", DropReason::Evicted),
    ("pending_overflow", DropReason::PendingOverflow),
    ("buffer_full", DropReason::BufferFull),
    ("unpaired_response", DropReason::UnpairedResponse),
    ("shutdown", DropReason::Shutdown),
];

#[derive(Debug, Clone, Copy)]
pub(super) enum EvictReason {
    Capacity,
    Memory,
    Idle,
}

pub(super) struct Metrics {
    pub(super) events: [Counter; 5],
    pub(super) spans: [Counter; 5],
    pub(super) dropped: [Counter; 6],
    pub(super) detected: [Counter; 6],
    pub(super) evicted: [Counter; 3],
    pub(super) desyncs: [Counter; 4],
    pub(super) context_overflows: Counter,
    /// Connections read through a TLS library's plaintext.
    pub(super) tls_plaintext: Counter,
    /// HTTP/1.1 connections that switched to HTTP/2 (`Upgrade: h2c`).
    pub(super) h2c_upgrades: Counter,
    /// HTTP/2 header fields left out: they referred to HPACK entries never seen.
    pub(super) http2_unknown_fields: Counter,
    /// Server spans given a parent, by where it came from: [same_host, traceparent, tcp_option].
    pub(super) parents: [Counter; 3],
    /// Same-host client/server pairs linked, by the key that linked them: [isn, address].
    pub(super) same_host_links: [Counter; 2],
    pub(super) connections: Gauge,
    pub(super) buffered: Gauge,
}

impl Metrics {
    pub(super) fn new(r: &Registry) -> Self {
        let c = |name: &str, help: &str, label: &str, value: &str| {
            r.counter(name, help, &[(label, value)])
        };
        let events = ["open", "data", "close", "other", "log"].map(|k| {
            c(
                "loupe_spans_events_total",
                "Socket events the span builder consumed.",
                "kind",
                k,
            )
        });
        let spans = [
            "http_server",
            "http_client",
            "db_client",
            "rpc_server",
            "rpc_client",
        ]
        .map(|k| {
            c(
                "loupe_spans_created_total",
                "Spans the span builder created.",
                "kind",
                k,
            )
        });
        let dropped = DROP_REASONS.map(|(reason, _)| {
            c(
                "loupe_spans_dropped_total",
                "Requests or spans lost by the span builder, by reason.",
                "reason",
                reason,
            )
        });
        let detected = ["http", "http2", "mysql", "redis", "tls", "unknown"].map(|p| {
            c(
                "loupe_spans_connections_detected_total",
                "Connections by protocol detected from their first bytes (unknown: gave up).",
                "protocol",
                p,
            )
        });
        let evicted = ["capacity", "memory", "idle"].map(|reason| {
            c(
                "loupe_spans_connections_evicted_total",
                "Connection states the span builder forgot before their close, by reason.",
                "reason",
                reason,
            )
        });
        let desyncs = ["http", "mysql", "redis", "http2"].map(|p| {
            c(
                "loupe_spans_parser_desyncs_total",
                "Times a protocol parser lost framing (bytes outside the capture, gaps).",
                "protocol",
                p,
            )
        });
        let parents = ["same_host", "traceparent", "tcp_option"].map(|source| {
            c(
                "loupe_spans_server_parents_total",
                "Server spans given a parent span, by where the parent came from: the client \
                 end of the same connection on this host, the request's traceparent header, or \
                 the client's TCP option (in-band, any node).",
                "source",
                source,
            )
        });
        let same_host_links = ["isn", "address"].map(|key| {
            c(
                "loupe_spans_same_host_links_total",
                "Client and server ends of one TCP connection on this host linked, by the key \
                 that linked them: their initial sequence numbers (through any NAT), or the \
                 client's address and port (an end without sequence numbers).",
                "key",
                key,
            )
        });
        Self {
            events,
            spans,
            parents,
            same_host_links,
            dropped,
            detected,
            evicted,
            desyncs,
            http2_unknown_fields: r.counter(
                "loupe_spans_http2_unknown_header_fields_total",
                "HTTP/2 header fields left out of spans because they referred to HPACK table \
                 entries the agent never saw (a connection open before it started, or header \
                 blocks outside the capture): left out, never guessed.",
                &[],
            ),
            tls_plaintext: r.counter(
                "loupe_spans_tls_connections_total",
                "Connections read in clear through the TLS library's probes (OpenSSL, Go's \
                 crypto/tls).",
                &[],
            ),
            h2c_upgrades: r.counter(
                "loupe_spans_h2c_upgrades_total",
                "HTTP/1.1 connections followed into HTTP/2 after an `Upgrade: h2c` answered by 101.",
                &[],
            ),
            context_overflows: r.counter(
                "loupe_spans_context_overflows_total",
                "Trace context entries dropped because a context map was full.",
                &[],
            ),
            connections: r.gauge(
                "loupe_spans_connections",
                "Connections the span builder tracks.",
                &[],
            ),
            buffered: r.gauge(
                "loupe_spans_buffered_bytes",
                "Parser buffers and waiting requests of all tracked connections.",
                &[],
            ),
        }
    }

    /// A server span got its parent from its client on this host: counted as such among the
    /// server parents, and by the key that linked the two.
    pub(super) fn same_host_link(&self, by: LinkedBy) {
        self.parents[0].inc();
        self.same_host_links[match by {
            LinkedBy::Isn => 0,
            LinkedBy::Address => 1,
        }]
        .inc();
    }

    pub(super) fn drop(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].add(n);
    }
}
