//! Parenting on Node.js, measured: a Node service (tests/workloads/node_fanout.js, Debian's or
//! NodeSource's `node`) whose handler calls another service for every request. Node serves
//! every request on one event-loop thread, so the agent's thread rule (a call belongs to the
//! request whose head the thread read last, or whose call's response it read last) is exact
//! while one request is in flight and a heuristic once several interleave. Each call carries the
//! request's id in its path, so the right parent of the client span `/api/users/ID` is the
//! server span `/front/ID`.
//!
//! One connection calling in turn must come out right; eight at once are measured against a
//! floor set from what this host measured, and the figure is printed (README, "Async runtimes").

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use loupe_tests::{Agent, Guard, agent_bin, fanout, read_spans, require_root, root, wait_port};

const SERVICE: &str = "node-fanout";
const REQUESTS: usize = 400;

/// Share of the client spans under the right request with one request in flight at a time.
const SEQUENTIAL_FLOOR: f64 = 0.99;
/// The same with eight connections calling at once. Measured on the 2-core host (Node 20):
/// 96.2% of 104 calls, then 98.0–99.2% of 400 in six runs; most of the rest (0.8–1.0% of all)
/// have no parent (several requests waited: a new trace rather than a guess).
const CONCURRENT_FLOOR: f64 = 0.9;

/// One keep-alive connection making `requests` calls of `/front/{c}{i:04}` in turn.
fn call_in_a_loop(port: u16, c: usize, requests: usize) {
    let ids: Vec<usize> = (0..requests).map(|i| c * 10_000 + i).collect();
    let paths: Vec<String> = ids.iter().map(|id| format!("/front/{id}")).collect();
    for (id, body) in ids.iter().zip(fanout::get_in_turn(port, "node", &paths)) {
        assert_eq!(body, format!("front {id}: back 200"));
    }
}

/// Runs the Node service and its back end under one agent, calls it with `connections`
/// connections at once, and returns the share of its client spans under the right request, the
/// share with no parent, and their number.
fn share_under_the_right_request(connections: usize) -> (f64, f64, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (_back, back_addr) = loupe_tests::http_server("node-back");
    let port = loupe_tests::infra::free_port();
    let mut node = Command::new("node");
    node.arg(root().join("tests/workloads/node_fanout.js"))
        .arg(port.to_string())
        .arg(&back_addr)
        .env("OTEL_SERVICE_NAME", SERVICE)
        .stdout(Stdio::null());
    let _node = Guard(
        node.spawn()
            .expect("start node (cargo xtask setup installs Node.js)"),
    );
    wait_port(port, Duration::from_secs(20));
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--output-dir"]).arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");
    let per_connection = REQUESTS.div_ceil(connections).max(REQUESTS / connections);
    let callers: Vec<_> = (0..connections)
        .map(|c| std::thread::spawn(move || call_in_a_loop(port, c, per_connection)))
        .collect();
    for c in callers {
        c.join().expect("caller");
    }
    std::thread::sleep(Duration::from_secs(1));
    let (status, stderr) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");

    let spans = read_spans(&out);
    let parents = fanout::parents(&spans, SERVICE, "/front/", "/api/users/");
    let calls = connections * per_connection;
    assert!(
        parents.calls * 10 >= calls * 9,
        "{} client spans for {calls} calls\n{stderr}",
        parents.calls
    );
    (parents.right, parents.none, parents.calls)
}

#[test]
fn node_calls_are_parented_by_the_event_loops_last_request() {
    require_root();
    let (one, _, n) = share_under_the_right_request(1);
    eprintln!(
        "Node.js, one request in flight: {:.1}% of {n} client spans under the right request",
        one * 100.0
    );
    let (eight, none, m) = share_under_the_right_request(8);
    eprintln!(
        "Node.js, eight connections at once: {:.1}% of {m} client spans under the right request, \
         {:.1}% under none",
        eight * 100.0,
        none * 100.0
    );
    assert!(one >= SEQUENTIAL_FLOOR, "{one:.3} < {SEQUENTIAL_FLOOR}");
    assert!(eight >= CONCURRENT_FLOOR, "{eight:.3} < {CONCURRENT_FLOOR}");
}
