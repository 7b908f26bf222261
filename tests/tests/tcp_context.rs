//! In-band trace context through NAT, as on EKS: a client in one network namespace calls a
//! virtual service address that iptables DNATs (kube-proxy's way) to a server in another
//! namespace, over a veth pair with no route out. Neither sends `traceparent`, and same-host
//! linking by address is switched off, so only the TCP option (kind 25, written and read by the
//! agent's sockops program) can make the server span the client span's child.
//!
//! The same calls with the option off, and with the client's address outside the trusted
//! CIDRs, leave the server spans without a parent (so the first assertion can fail); with the
//! option off and same-host linking on, the two ends are linked by the client's address and
//! port, which DNAT leaves alone; a client
//! sending its own `traceparent` keeps its trace: the option never overrides the header.
//!
//! Both tests need only the agent, the `http_server` workload, curl, iproute2 and iptables: the
//! kernel matrix runs them in each VM (5.10, 6.1, 6.12, where the socket programs attach by
//! fentry/fexit), whose initramfs carries those tools and each kernel's veth and NAT modules.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use loupe_tests::{
    Agent, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord, agent_bin,
    netns::{self, NamespacePair, series as metric},
    read_spans, require_root,
};

/// The two tests run one at a time: each runs an agent that traces every process and attaches
/// its sockops program to the root cgroup, and a segment carries the option of whichever program
/// runs first (a second store of kind 25 fails, counted in
/// `loupe_tcp_context_write_failures_total`). One agent per node is the deployment; two at once
/// would see each other's client span ids.
static ONE_AGENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where the client calls: a ClusterIP-like address that exists only as a DNAT rule.
const SERVICE: &str = "10.96.77.7";
const CLIENT_ADDR: &str = "10.203.0.1";
const SERVER_ADDR: &str = "10.203.0.2";
const SERVER_PORT: u16 = 8080;
const CALLS: usize = 3;

/// The two namespaces, with the service address DNAT'ed to the server (kube-proxy's rule).
fn namespaces() -> NamespacePair {
    let ns = NamespacePair::create("tc", CLIENT_ADDR, SERVER_ADDR);
    ns.dnat(SERVICE, &format!("{SERVER_ADDR}:{SERVER_PORT}"));
    ns
}

/// The URL the client calls: the service address.
fn url() -> String {
    format!("http://{SERVICE}/api/users/7")
}

fn calls_under_agent(
    ns: &NamespacePair,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
    headers: &[&str],
) -> (Vec<SpanRecord>, Vec<SpanRecord>, String) {
    let calls = netns::calls_under_agent(dir, name, extra, CALLS, (SERVICE, CLIENT_ADDR), |_| {
        ns.curl(&url(), headers)
    });
    (calls.clients, calls.servers, calls.metrics)
}

#[test]
fn the_server_span_is_the_client_spans_child_through_dnat_by_the_tcp_option() {
    require_root();
    let _one = ONE_AGENT.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = namespaces();
    let _server = ns.serve(
        &loupe_tests::workload("http_server"),
        &format!("{SERVER_ADDR}:{SERVER_PORT}"),
        "dnat-server",
        &url(),
    );

    // With the option: every server span is the child of its client span, in its trace.
    const NO_LINK: &str = "--link-same-host=false";
    let (clients, servers, metrics) = calls_under_agent(&ns, dir.path(), "option", &[NO_LINK], &[]);
    let by_id: HashMap<&str, &SpanRecord> =
        clients.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in &servers {
        let parent = by_id.get(s.parent_span_id.as_str()).unwrap_or_else(|| {
            panic!("server span {s:#?} is no client span's child: {clients:#?}")
        });
        assert_eq!(s.trace_id, parent.trace_id);
    }
    assert_eq!(
        metric(
            &metrics,
            "loupe_spans_server_parents_total{source=\"tcp_option\"}"
        ),
        CALLS as u64
    );
    assert!(metric(&metrics, "loupe_tcp_context_adopted_total") >= CALLS as u64);

    // Without it, nothing links them.
    let (_, servers, _) = calls_under_agent(
        &ns,
        dir.path(),
        "off",
        &["--tcp-context=false", NO_LINK],
        &[],
    );
    assert!(
        servers.iter().all(|s| s.parent_span_id.is_empty()),
        "{servers:#?}"
    );

    // Without the option, linking by the client's address and port (both namespaces are on this
    // host) sees through the DNAT that changed the server's address and port.
    let (clients, servers, metrics) =
        calls_under_agent(&ns, dir.path(), "same-host", &["--tcp-context=false"], &[]);
    let by_id: HashMap<&str, &SpanRecord> =
        clients.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in &servers {
        assert!(
            by_id.contains_key(s.parent_span_id.as_str()),
            "server span {s:#?} is no client span's child: {clients:#?}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "loupe_spans_server_parents_total{source=\"same_host\"}"
        ),
        CALLS as u64
    );

    // A client outside the trusted CIDRs: its option is read, counted and ignored.
    let (_, servers, metrics) = calls_under_agent(
        &ns,
        dir.path(),
        "untrusted",
        &["--tcp-context-trusted", "192.0.2.0/24", NO_LINK],
        &[],
    );
    assert!(
        servers.iter().all(|s| s.parent_span_id.is_empty()),
        "{servers:#?}"
    );
    assert!(metric(&metrics, "loupe_tcp_context_untrusted_total") >= CALLS as u64);

    // The client's own traceparent wins: client and server spans stay in its trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let header = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01");
    let (clients, servers, _) =
        calls_under_agent(&ns, dir.path(), "header", &[NO_LINK], &[header.as_str()]);
    for s in clients.iter().chain(&servers) {
        assert_eq!(s.trace_id, trace, "{s:#?}");
    }
}

#[test]
fn a_loopback_call_is_linked_by_the_tcp_option_alone() {
    require_root();
    let _one = ONE_AGENT.lock().unwrap_or_else(|p| p.into_inner());
    let (_server, addr) = loupe_tests::http_server("tcp-option-server");
    let port = addr.rsplit(':').next().expect("port").to_string();

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--link-same-host=false", "--output-dir"])
        .arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");
    // New connections (the option is asked for when one is established), one request each.
    for i in 0..CALLS {
        let mut s = TcpStream::connect(&addr).expect("connect");
        write!(
            s,
            "GET /api/users/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    let (status, stderr) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let spans = read_spans(&out);
    let port_of = |s: &SpanRecord| s.attributes.get("server.port").cloned().unwrap_or_default();
    let clients: HashMap<&str, &SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT && port_of(s) == port)
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    let servers: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_SERVER && s.service == "tcp-option-server")
        .collect();
    assert_eq!(clients.len(), CALLS, "{spans:#?}\n{stderr}");
    assert_eq!(servers.len(), CALLS, "{spans:#?}\n{stderr}");
    for s in servers {
        let parent = clients
            .get(s.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("{s:#?} is no client span's child\n{stderr}"));
        assert_eq!(s.trace_id, parent.trace_id);
    }
}
