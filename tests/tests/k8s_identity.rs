//! Kubernetes identity end to end, on the real kernel: processes moved into cgroups laid out as
//! kubelet and containerd lay them out (cgroup v2, systemd driver:
//! `kubepods.slice/…/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`) are named
//! after the pods a Kubernetes API stand-in on loopback serves for their container ids. The
//! stand-in goes away mid-run: a container started meanwhile is named by its container id, the
//! outage shows on /metrics; it comes back: the new container gets its pod's names.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use loupe_tests::{
    Guard, SPAN_KIND_SERVER, SpanRecord, agent_bin, http_get_raw,
    infra::free_port,
    k8s_api::{KubeApi, NODE, container_id, kubeconfig, pod_json, pod_uid},
    read_spans, require_root, wait_port, wait_with_deadline, workload,
};

/// The cgroup v2 hierarchy's mount point.
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .expect("a cgroup v2 hierarchy (the kernel tests need one)")
}

/// A container's cgroup as kubelet (systemd driver) and containerd make it; removed on drop.
struct ContainerCgroup {
    top: PathBuf,
    dir: PathBuf,
}

impl ContainerCgroup {
    fn create(n: u8) -> Self {
        let top = cgroup2_root().join("kubepods.slice");
        let uid = pod_uid(n).replace('-', "_");
        let dir = top
            .join("kubepods-besteffort.slice")
            .join(format!("kubepods-besteffort-pod{uid}.slice"))
            .join(format!("cri-containerd-{}.scope", container_id(n)));
        std::fs::create_dir_all(&dir).expect("create the container's cgroup");
        Self { top, dir }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .expect("move the process into its container's cgroup");
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        // Deepest first; a cgroup still holding a process stays (its process is killed first).
        let mut dir = Some(self.dir.as_path());
        while let Some(d) = dir {
            let _ = std::fs::remove_dir(d);
            if d == self.top {
                break;
            }
            dir = d.parent();
        }
    }
}

fn start_server(cgroup: &ContainerCgroup) -> (Guard, u16) {
    let port = free_port();
    let child = Command::new(workload("span_server"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start span_server");
    cgroup.enter(child.id());
    let guard = Guard(child);
    wait_port(port, Duration::from_secs(10));
    (guard, port)
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

fn wait_metric(port: u16, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(port, name) != Some(want) {
        assert!(Instant::now() < deadline, "{name} never became {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn server_spans(dir: &Path, port: u16) -> Vec<SpanRecord> {
    read_spans(dir)
        .into_iter()
        .filter(|s| {
            s.kind == SPAN_KIND_SERVER
                && s.attributes.get("server.port").map(String::as_str) == Some(&port.to_string())
        })
        .collect()
}

/// The resource attributes of the process that made each span, from traces.jsonl.
fn resources(dir: &Path) -> HashMap<String, HashMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("traces.jsonl")).unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            let attrs: HashMap<String, String> = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|kv| {
                    let value = &kv["value"];
                    let text = value["stringValue"]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| value["intValue"].as_str().map(str::to_string))?;
                    Some((kv["key"].as_str()?.to_string(), text))
                })
                .collect();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    if let Some(id) = span["spanId"].as_str() {
                        out.insert(id.to_string(), attrs.clone());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn container_processes_are_named_after_their_pods_and_survive_an_api_outage() {
    require_root();
    let checkout = ContainerCgroup::create(0xa1);
    let payment = ContainerCgroup::create(0xb2);
    let pods = Arc::new(Mutex::new(vec![pod_json(
        0xa1,
        "checkout-7d9f8b6c5d-aaaaa",
        "checkout",
        Some("checkout"),
    )]));
    let mut api = KubeApi::start(0, pods.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, kubeconfig(api.port)).expect("kubeconfig");
    let out = dir.path().join("out");

    let (_checkout_server, checkout_port) = start_server(&checkout);
    let metrics_port = free_port();
    let mut agent = Guard(
        Command::new(agent_bin())
            .args(["--kubernetes", "on", "--node-name", NODE])
            .arg("--kubeconfig")
            .arg(&config)
            .arg("--output-dir")
            .arg(&out)
            .args(["--duration", "40s", "--logs=false"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start loupe-agent"),
    );
    wait_port(metrics_port, Duration::from_secs(60));
    wait_metric(metrics_port, "loupe_k8s_pods ", 1.0);
    for _ in 0..5 {
        assert!(http_get_raw(checkout_port, "/work/1").starts_with("HTTP/1.1 200"));
    }

    // The API goes away; payment's container starts meanwhile.
    api.stop();
    pods.lock()
        .expect("lock")
        .push(pod_json(0xb2, "payment-7d9f8b6c5d-bbbbb", "payment", None));
    wait_metric(metrics_port, "loupe_k8s_api_up ", 0.0);
    let (_payment_server, payment_port) = start_server(&payment);
    for _ in 0..5 {
        assert!(http_get_raw(payment_port, "/work/1").starts_with("HTTP/1.1 200"));
    }
    // Give the span builder time to name the new process while the API is away.
    std::thread::sleep(Duration::from_secs(2));

    // It comes back on the same port, with the new pod.
    let _api = KubeApi::start(api.port, pods.clone());
    wait_metric(metrics_port, "loupe_k8s_pods ", 2.0);
    assert_eq!(metric(metrics_port, "loupe_k8s_api_up "), Some(1.0));
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        assert!(http_get_raw(payment_port, "/work/1").starts_with("HTTP/1.1 200"));
    }
    // SIGTERM flushes everything.
    // SAFETY: kill has no memory effects; the pid is our own child.
    unsafe { libc::kill(agent.0.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_with_deadline(&mut agent.0, Duration::from_secs(60));
    assert!(status.success(), "agent exited with {status}");

    let resources = resources(&out);
    let attrs = |s: &SpanRecord| resources.get(&s.span_id).cloned().unwrap_or_default();
    let get = |a: &HashMap<String, String>, k: &str| a.get(k).cloned().unwrap_or_default();

    let checkout_spans = server_spans(&out, checkout_port);
    assert!(
        checkout_spans.len() >= 5,
        "{} checkout spans",
        checkout_spans.len()
    );
    for s in &checkout_spans {
        let a = attrs(s);
        assert_eq!(
            s.service, "checkout",
            "service.name from app.kubernetes.io/name"
        );
        assert_eq!(get(&a, "k8s.pod.name"), "checkout-7d9f8b6c5d-aaaaa");
        assert_eq!(get(&a, "k8s.namespace.name"), "shop");
        assert_eq!(get(&a, "k8s.pod.uid"), pod_uid(0xa1));
        assert_eq!(get(&a, "k8s.container.name"), "app");
        assert_eq!(get(&a, "k8s.node.name"), NODE);
        assert_eq!(get(&a, "k8s.deployment.name"), "checkout");
        assert_eq!(get(&a, "container.id"), container_id(0xa1));
    }

    let payment_spans = server_spans(&out, payment_port);
    assert!(
        payment_spans.len() >= 10,
        "{} payment spans",
        payment_spans.len()
    );
    let (during, after): (Vec<_>, Vec<_>) = payment_spans
        .iter()
        .partition(|s| !attrs(s).contains_key("k8s.pod.name"));
    assert!(!during.is_empty(), "requests during the outage");
    for s in &during {
        let a = attrs(s);
        assert_eq!(
            get(&a, "container.id"),
            container_id(0xb2),
            "named by its container id"
        );
        assert_eq!(s.service, "span_server", "no pod: the executable's name");
    }
    assert!(after.len() >= 5, "after the API came back: {}", after.len());
    for s in &after {
        let a = attrs(s);
        assert_eq!(get(&a, "k8s.pod.name"), "payment-7d9f8b6c5d-bbbbb");
        assert_eq!(
            s.service, "payment",
            "service.name from the owning Deployment"
        );
    }
    drop(checkout);
    drop(payment);
}
