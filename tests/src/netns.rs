//! Two network namespaces on this host for the NAT tests (`tcp_context`, `snat_linking`): a
//! client's and a server's, joined by a veth pair with no route out, as two pods on two nodes
//! are joined by the cluster network. The service range (10.96.0.0/12, a ClusterIP range) is
//! routed onto the veth in the client's namespace, and NAT rules go there too, as kube-proxy puts
//! them on the client's node. Everything is removed with the namespaces when dropped.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Agent, Guard, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord, agent_bin, read_spans};

/// Runs a command that must succeed (its stderr in the panic otherwise).
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct NamespacePair {
    pub client: String,
    pub server: String,
    /// The client's end of the veth pair.
    pub client_dev: String,
}

impl NamespacePair {
    /// Creates `loupe-{tag}-c{pid}` with `client_addr` and `loupe-{tag}-s{pid}` with
    /// `server_addr` (both /24 on the veth). `tag` keeps two tests' namespaces apart and must be
    /// short: the veth names (`l{tag}c{pid}`) have 15 bytes at most.
    pub fn create(tag: &str, client_addr: &str, server_addr: &str) -> NamespacePair {
        let id = std::process::id();
        let pair = NamespacePair {
            client: format!("loupe-{tag}-c{id}"),
            server: format!("loupe-{tag}-s{id}"),
            client_dev: format!("l{tag}c{id}"),
        };
        let server_dev = format!("l{tag}s{id}");
        let (c, s) = (pair.client.as_str(), pair.server.as_str());
        run(&["ip", "netns", "add", c]);
        run(&["ip", "netns", "add", s]);
        run(&[
            "ip",
            "link",
            "add",
            &pair.client_dev,
            "netns",
            c,
            "type",
            "veth",
            "peer",
            "name",
            &server_dev,
            "netns",
            s,
        ]);
        pair.add_client_address(&format!("{client_addr}/24"));
        let server_cidr = format!("{server_addr}/24");
        run(&[
            "ip",
            "-n",
            s,
            "addr",
            "add",
            &server_cidr,
            "dev",
            &server_dev,
        ]);
        for (n, dev) in [(c, pair.client_dev.as_str()), (s, server_dev.as_str())] {
            run(&["ip", "-n", n, "link", "set", dev, "up"]);
            run(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        run(&[
            "ip",
            "-n",
            c,
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            &pair.client_dev,
        ]);
        pair
    }

    /// One more address on the client's veth (`cidr`, e.g. `10.204.0.9/32`).
    pub fn add_client_address(&self, cidr: &str) {
        run(&[
            "ip",
            "-n",
            &self.client,
            "addr",
            "add",
            cidr,
            "dev",
            &self.client_dev,
        ]);
    }

    /// Appends `rule` (`CHAIN match... -j TARGET ...`) to the nat table in the client's
    /// namespace.
    pub fn nat_rule(&self, rule: &[&str]) {
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            &self.client,
            "iptables",
            "-t",
            "nat",
            "-A",
        ];
        args.extend_from_slice(rule);
        run(&args);
    }

    /// kube-proxy's ClusterIP rule: TCP to `service` port 80 goes to `to` (`addr:port`).
    pub fn dnat(&self, service: &str, to: &str) {
        let service = format!("{service}/32");
        self.nat_rule(&[
            "OUTPUT",
            "-d",
            &service,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            to,
        ]);
    }

    /// `curl` in the client's namespace, with `headers`: the HTTP status (empty when no answer).
    pub fn curl(&self, url: &str, headers: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client, "curl", "-s", "-m", "5"]);
        cmd.args(["-o", "/dev/null", "-w", "%{http_code}"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd.arg(url).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the `http_server` workload at `addr` in the server's namespace (named `service`)
    /// and waits until `url` answers 200 from the client's.
    pub fn serve(&self, workload: &Path, addr: &str, service: &str, url: &str) -> Guard {
        let server = Command::new("ip")
            .args(["netns", "exec", &self.server])
            .arg(workload)
            .arg(addr)
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let guard = Guard(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.curl(url, &[]) != "200" {
            assert!(Instant::now() < deadline, "{url} never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        guard
    }
}

impl Drop for NamespacePair {
    fn drop(&mut self) {
        for n in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// What one agent run saw of the calls between the namespaces.
pub struct Calls {
    /// Client spans to the service address.
    pub clients: Vec<SpanRecord>,
    /// Server spans of calls from the client's address as the server sees it.
    pub servers: Vec<SpanRecord>,
    /// The agent's `/metrics` after the calls.
    pub metrics: String,
}

/// Runs the agent (`run --output-dir dir/name` and `args`) while `call(i)` makes calls
/// `0..calls` (each must answer 200), then stops it: the spans of exactly those calls, client
/// spans to `service` and server spans whose `client.address` is `client_seen`.
pub fn calls_under_agent(
    dir: &Path,
    name: &str,
    args: &[&str],
    calls: usize,
    (service, client_seen): (&str, &str),
    mut call: impl FnMut(usize) -> String,
) -> Calls {
    let out = dir.join(name);
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--output-dir"]).arg(&out).args(args);
    let agent = Agent::start(cmd, dir, name);
    for i in 0..calls {
        assert_eq!(call(i), "200", "{name}: call {i} to {service}");
    }
    // The counters reach /metrics once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = agent.metrics();
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{name}: {stderr}");
    let spans = read_spans(&out);
    let attr = |s: &SpanRecord, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    let clients: Vec<SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT && attr(s, "server.address") == service)
        .cloned()
        .collect();
    let servers: Vec<SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_SERVER && attr(s, "client.address") == client_seen)
        .cloned()
        .collect();
    assert_eq!(
        clients.len(),
        calls,
        "{name}: client spans\n{spans:#?}\n{stderr}"
    );
    assert_eq!(
        servers.len(),
        calls,
        "{name}: server spans from {client_seen}\n{spans:#?}\n{stderr}"
    );
    Calls {
        clients,
        servers,
        metrics,
    }
}

/// The value of one series (name and labels, as `/metrics` writes them); panics when absent.
pub fn series(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}
