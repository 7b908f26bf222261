//! A Kubernetes API stand-in on loopback for the tests of pod identity: a small HTTP server that
//! answers this node's pod list and holds a watch open, as the API server does, sending pods
//! created since the watch's resource version as ADDED events; it can be stopped and started
//! again on the same port (an API outage). Pods are `serde_json` values of the API's shape,
//! made with [`pod_json`].

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The node whose pods the stand-in serves.
pub const NODE: &str = "node-1";

/// A container id (64 hex digits) made of `n`.
pub fn container_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// A pod UID made of `n`.
pub fn pod_uid(n: u8) -> String {
    format!("0b5e3c1a-7f2d-4e9b-8c6a-1d3f5b7e9a{n:02x}")
}

/// A pod of [`NODE`] in namespace `shop`, owned by the ReplicaSet `<deployment>-7d9f8b6c5d`, with
/// one container `app` of id `container_id(n)` and, when given, the label
/// `app.kubernetes.io/name`.
pub fn pod_json(n: u8, name: &str, deployment: &str, app: Option<&str>) -> serde_json::Value {
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
            "uid": pod_uid(n),
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{deployment}-7d9f8b6c5d"),
                "uid": "11111111-2222-3333-4444-555555555555", "controller": true
            }]
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "shop:1"}]},
        "status": {"containerStatuses": [{
            "name": "app", "containerID": format!("containerd://{}", container_id(n)),
            "image": "shop:1", "imageID": "", "ready": true, "restartCount": 0
        }]}
    })
}

/// A kubeconfig for the stand-in on `port` (no credentials).
pub fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
         clusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
         users:\n- name: test\n  user: {{}}\n"
    )
}

/// The stand-in: the pods it serves, whether it answers, and whether it refuses (403).
pub struct KubeApi {
    /// The loopback port it answers on.
    pub port: u16,
    /// While set, every request is refused with 403 Forbidden (missing RBAC).
    pub refuse: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeApi {
    /// Serves `pods` (shared: push to add one) on `port` (0: any free port).
    pub fn start(port: u16, pods: Arc<Mutex<Vec<serde_json::Value>>>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let refuse = Arc::new(AtomicBool::new(false));
        let (r, p, f) = (running.clone(), pods.clone(), refuse.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while r.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (r, p, f) = (r.clone(), p.clone(), f.clone());
                        conns.push(std::thread::spawn(move || serve(stream, &p, &r, &f, NODE)));
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
            refuse,
            running,
            thread: Some(thread),
        }
    }

    /// Stops answering: the listener and every connection close.
    pub fn stop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answers the pod list (Content-Length; the list's resource version is the number of pods) and
/// a watch from resource version N with an ADDED event for every pod after the N-th, as the API
/// server does for pods created since; then holds the watch open (chunked) while running.
fn serve(
    stream: TcpStream,
    pods: &Mutex<Vec<serde_json::Value>>,
    running: &AtomicBool,
    refuse: &AtomicBool,
    node: &str,
) {
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
        // Only this node's pods are ever asked for; anything else gets nothing.
        if !path.contains(&format!("fieldSelector=spec.nodeName%3D{node}")) {
            let _ = writer.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        if refuse.load(Ordering::Relaxed) {
            let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:loupe:loupe\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","code":403}"#;
            let reply = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{status}",
                status.len()
            );
            if writer.write_all(reply.as_bytes()).is_err() {
                return;
            }
            continue;
        }
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
