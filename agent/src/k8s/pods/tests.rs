//! The pod store, and the watcher against a Kubernetes API stand-in on loopback: a small HTTP
//! server that answers the pod list and holds the watch open, as the API server does, and can be
//! stopped and started again on the same port.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Instant;

use super::*;

const NODE: &str = "node-1";

fn id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// A pod of this node as the API serves it, with one container `app` of id `id(n)`.
fn pod_json(n: u8, name: &str, app: Option<&str>) -> serde_json::Value {
    let mut labels = serde_json::json!({"pod-template-hash": "7d9f8b6c5d"});
    if let Some(app) = app {
        labels["app.kubernetes.io/name"] = app.into();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": format!("0b5e3c1a-7f2d-4e9b-8c6a-1d3f5b7e9a{n:02x}"),
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-7d9f8b6c5d",
                "uid": "11111111-2222-3333-4444-555555555555", "controller": true
            }]
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "shop:1"}]},
        "status": {"containerStatuses": [{
            "name": "app", "containerID": format!("containerd://{}", id(n)),
            "image": "shop:1", "imageID": "", "ready": true, "restartCount": 0
        }]}
    })
}

fn pod(n: u8, name: &str, app: Option<&str>) -> Pod {
    serde_json::from_value(pod_json(n, name, app)).unwrap()
}

#[test]
fn containers_resolve_to_their_pod_and_workload() {
    let registry = Registry::new();
    let store = K8sMetadata::new(NODE, &registry);
    store.apply(&pod(1, "checkout-7d9f8b6c5d-x2x9q", Some("checkout")));
    let c = store.container(&id(1)).expect("container 1");
    assert_eq!(c.container, "app");
    assert_eq!(c.pod.name, "checkout-7d9f8b6c5d-x2x9q");
    assert_eq!(c.pod.namespace, "shop");
    assert_eq!(c.pod.node, NODE);
    assert_eq!(
        c.pod.workload,
        Some(("k8s.deployment.name", "checkout".to_string()))
    );
    assert_eq!(c.pod.app_name.as_deref(), Some("checkout"));

    // Another node's pod is not ours.
    let mut other = pod_json(2, "elsewhere", None);
    other["spec"]["nodeName"] = "node-2".into();
    store.apply(&serde_json::from_value(other).unwrap());
    assert!(store.container(&id(2)).is_none());

    // A ReplicaSet that does not end in the template hash stays a ReplicaSet.
    let mut rs = pod_json(3, "batch-1", None);
    rs["metadata"]["labels"]["pod-template-hash"] = "zzz".into();
    store.apply(&serde_json::from_value(rs).unwrap());
    assert_eq!(
        store.container(&id(3)).unwrap().pod.workload,
        Some(("k8s.replicaset.name", "checkout-7d9f8b6c5d".to_string()))
    );

    let before = store.generation();
    store.delete(&pod(1, "checkout-7d9f8b6c5d-x2x9q", None));
    assert!(store.container(&id(1)).is_none());
    assert!(store.generation() > before);
}

/// The stand-in's state: the pods it serves and whether it answers.
struct StandIn {
    port: u16,
    pods: Arc<Mutex<Vec<serde_json::Value>>>,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    fn start(port: u16, pods: Arc<Mutex<Vec<serde_json::Value>>>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let (r, p) = (running.clone(), pods.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while r.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (r, p) = (r.clone(), p.clone());
                        conns.push(std::thread::spawn(move || serve(stream, &p, &r)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Self {
            port,
            pods,
            running,
            thread: Some(thread),
        }
    }

    /// Stops answering: the listener and every connection close.
    fn stop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answers the pod list (Content-Length; the list's resource version is the number of pods) and
/// a watch from resource version N with an ADDED event for every pod after the N-th, as the API
/// server does for pods created since; then holds the watch open (chunked) while running.
fn serve(stream: TcpStream, pods: &Mutex<Vec<serde_json::Value>>, running: &AtomicBool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    while running.load(Ordering::Relaxed) {
        let mut request = String::new();
        match reader.read_line(&mut request) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => continue,
        }
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if line.trim().is_empty() => break,
                Ok(_) => {}
                Err(_) if running.load(Ordering::Relaxed) => {}
                Err(_) => return,
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("");
        assert!(
            path.contains("fieldSelector=spec.nodeName%3Dnode-1"),
            "only this node's pods are asked for: {path}"
        );
        if path.contains("watch=true") {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if writer.write_all(head.as_bytes()).is_err() {
                return;
            }
            let since: usize = path
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("resourceVersion="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let added: Vec<serde_json::Value> =
                pods.lock().unwrap().iter().skip(since).cloned().collect();
            for (i, mut pod) in added.into_iter().enumerate() {
                pod["metadata"]["resourceVersion"] = (since + i + 1).to_string().into();
                let event = serde_json::json!({"type": "ADDED", "object": pod}).to_string() + "\n";
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if writer.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        let items = pods.lock().unwrap().clone();
        let list = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": items.len().to_string()},
            "items": items
        })
        .to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{list}",
            list.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn metric(registry: &Registry, name: &str) -> i64 {
    registry
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(-1)
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_watcher_degrades_while_the_api_is_away_and_recovers() {
    let pods = Arc::new(Mutex::new(vec![pod_json(
        1,
        "checkout-a",
        Some("checkout"),
    )]));
    let mut api = StandIn::start(0, pods.clone());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             users:\n- name: test\n  user: {{}}\n",
            api.port
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let registry = Registry::new();
    let store = K8sMetadata::new(NODE, &registry);
    let _guard = runtime.enter();
    store.spawn_watcher(K8sOptions {
        node_name: NODE.into(),
        kubeconfig: Some(kubeconfig),
    });

    wait_for("the first pod", Duration::from_secs(20), || {
        store.container(&id(1)).is_some()
    });
    assert_eq!(metric(&registry, "loupe_k8s_api_up "), 1);

    // The API goes away; a second pod starts meanwhile.
    api.stop();
    pods.lock()
        .unwrap()
        .push(pod_json(2, "checkout-b", Some("checkout")));
    wait_for("the outage to show", Duration::from_secs(30), || {
        metric(&registry, "loupe_k8s_api_up ") == 0
    });
    assert!(
        metric(
            &registry,
            "loupe_k8s_api_errors_total{reason=\"unreachable\"} "
        ) >= 1
    );
    assert!(
        store.container(&id(1)).is_some(),
        "known pods keep their names"
    );
    assert!(store.container(&id(2)).is_none());

    // It comes back on the same port: the new pod is found.
    let _api = StandIn::start(api.port, pods.clone());
    wait_for(
        "the second pod after the outage",
        Duration::from_secs(60),
        || store.container(&id(2)).is_some(),
    );
    assert_eq!(metric(&registry, "loupe_k8s_api_up "), 1);
}
