//! Same-host span linking through SNAT, keyed on the TCP connection's initial sequence numbers.
//!
//! A client in one network namespace calls a service address that iptables DNATs to a server in
//! another namespace (kube-proxy's way), and its connections leave with their source rewritten
//! to a second address and a port range (masquerade's way), over a veth pair with no route out.
//! The server sees neither the client's address nor its port, so only the sequence numbers,
//! which conntrack never rewrites, can tell that its connection is the client's. The TCP option
//! is off (`--tcp-context=false`), so it cannot be what links them; every server span must be
//! the child of its client span, counted as linked by ISN and never by address. The same calls
//! with same-host linking off leave every server span without a parent, so the link is the
//! same-host builder's.

use std::{collections::HashMap, path::Path};

use loupe_tests::{
    SpanRecord,
    netns::{self, NamespacePair, series as metric},
    require_root, workload,
};

/// Where the client calls: an address that exists only as a DNAT rule.
const SERVICE: &str = "10.96.78.8";
const CLIENT_ADDR: &str = "10.204.0.1";
/// What the client's connections are rewritten to (the client namespace owns it, so replies
/// come back); the ports are the SNAT rule's range.
const SNAT_ADDR: &str = "10.204.0.9";
const SNAT_PORTS: std::ops::RangeInclusive<u16> = 40000..=40100;
const SERVER_ADDR: &str = "10.204.0.2";
const SERVER_PORT: u16 = 8080;
const CALLS: usize = 4;

/// The two namespaces, with the service address DNAT'ed to the server and the client's
/// connections SNAT'ed to SNAT_ADDR and SNAT_PORTS (an address the client's namespace owns, so
/// the replies come back).
fn namespaces() -> NamespacePair {
    let ns = NamespacePair::create("sn", CLIENT_ADDR, SERVER_ADDR);
    ns.add_client_address(&format!("{SNAT_ADDR}/32"));
    ns.dnat(SERVICE, &format!("{SERVER_ADDR}:{SERVER_PORT}"));
    let to_source = format!("{SNAT_ADDR}:{}-{}", SNAT_PORTS.start(), SNAT_PORTS.end());
    let dev = ns.client_dev.clone();
    ns.nat_rule(&[
        "POSTROUTING",
        "-o",
        &dev,
        "-p",
        "tcp",
        "-j",
        "SNAT",
        "--to-source",
        &to_source,
    ]);
    ns
}

/// What the client calls: the service address.
fn url(user: usize) -> String {
    format!("http://{SERVICE}/api/users/{user}")
}

/// The CALLS calls under an agent with the TCP option off and `extra` arguments. The server
/// spans are those from SNAT_ADDR: the server sees the rewritten source, proof that the SNAT
/// rule applied.
fn calls_under_agent(
    ns: &NamespacePair,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> (Vec<SpanRecord>, Vec<SpanRecord>, String) {
    let mut args = vec!["--tcp-context=false"];
    args.extend_from_slice(extra);
    let calls = netns::calls_under_agent(dir, name, &args, CALLS, (SERVICE, SNAT_ADDR), |i| {
        ns.curl(&url(i), &[])
    });
    (calls.clients, calls.servers, calls.metrics)
}

#[test]
fn the_server_span_is_the_client_spans_child_through_snat_by_sequence_numbers() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = namespaces();
    let _server = ns.serve(
        &workload("http_server"),
        &format!("{SERVER_ADDR}:{SERVER_PORT}"),
        "snat-server",
        &url(0),
    );

    // Same-host linking on: every server span is its client span's child, in its trace, and the
    // sequence numbers linked each pair (the address the server sees is not the client's).
    let (clients, servers, metrics) = calls_under_agent(&ns, dir.path(), "isn", &[]);
    let by_id: HashMap<&str, &SpanRecord> =
        clients.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in &servers {
        let parent = by_id.get(s.parent_span_id.as_str()).unwrap_or_else(|| {
            panic!("server span {s:#?} is no client span's child: {clients:#?}\n{metrics}")
        });
        assert_eq!(s.trace_id, parent.trace_id);
    }
    assert_eq!(
        metric(&metrics, "loupe_spans_same_host_links_total{key=\"isn\"}"),
        CALLS as u64,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "loupe_spans_same_host_links_total{key=\"address\"}"
        ),
        0
    );
    // Whichever end's event came first (a server read that came first is re-parented).
    assert_eq!(
        metric(
            &metrics,
            "loupe_spans_server_parents_total{source=\"same_host\"}"
        ),
        CALLS as u64
    );

    // Same-host linking off (and the option still off): nothing links them.
    let (_, servers, metrics) =
        calls_under_agent(&ns, dir.path(), "off", &["--link-same-host=false"]);
    assert!(
        servers.iter().all(|s| s.parent_span_id.is_empty()),
        "{servers:#?}"
    );
    assert_eq!(
        metric(&metrics, "loupe_spans_same_host_links_total{key=\"isn\"}"),
        0
    );
}
