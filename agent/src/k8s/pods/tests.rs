//! The pod store, and the watcher against a Kubernetes API stand-in on loopback: a small HTTP
//! server that answers the pod list and holds the watch open, as the API server does, and can be
//! stopped and started again on the same port.

use std::sync::Mutex;
use std::time::Instant;

use loupe_tests::k8s_api::{KubeApi, NODE, container_id as id, kubeconfig, pod_json as api_pod};

use super::*;

fn pod_json(n: u8, name: &str, app: Option<&str>) -> serde_json::Value {
    api_pod(n, name, "checkout", app)
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

/// A store with its watcher running (on a runtime of its own) against the API on `port`.
struct Watching {
    registry: Registry,
    store: K8sMetadata,
    _kubeconfig: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl Watching {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig_file = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig_file, kubeconfig(port)).unwrap();
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
            kubeconfig: Some(kubeconfig_file),
        });
        Self {
            registry,
            store,
            _kubeconfig: dir,
            _runtime: runtime,
        }
    }
}

#[test]
fn the_watcher_degrades_while_the_api_is_away_and_recovers() {
    let pods = Arc::new(Mutex::new(vec![pod_json(
        1,
        "checkout-a",
        Some("checkout"),
    )]));
    let mut api = KubeApi::start(0, pods.clone());
    let w = Watching::start(api.port);
    let (registry, store) = (&w.registry, &w.store);

    wait_for("the first pod", Duration::from_secs(20), || {
        store.container(&id(1)).is_some()
    });
    assert_eq!(metric(registry, "loupe_k8s_api_up "), 1);

    // The API goes away; a second pod starts meanwhile.
    api.stop();
    pods.lock()
        .unwrap()
        .push(pod_json(2, "checkout-b", Some("checkout")));
    wait_for("the outage to show", Duration::from_secs(30), || {
        metric(registry, "loupe_k8s_api_up ") == 0
    });
    assert!(
        metric(
            registry,
            "loupe_k8s_api_errors_total{reason=\"unreachable\"} "
        ) >= 1
    );
    assert!(
        store.container(&id(1)).is_some(),
        "known pods keep their names"
    );
    assert!(store.container(&id(2)).is_none());

    // It comes back on the same port: the new pod is found.
    let _api = KubeApi::start(api.port, pods.clone());
    wait_for(
        "the second pod after the outage",
        Duration::from_secs(60),
        || store.container(&id(2)).is_some(),
    );
    assert_eq!(metric(registry, "loupe_k8s_api_up "), 1);
}

#[test]
fn a_refused_watch_is_counted_and_retried_until_rbac_allows_it() {
    let pods = Arc::new(Mutex::new(vec![pod_json(
        1,
        "checkout-a",
        Some("checkout"),
    )]));
    let api = KubeApi::start(0, pods);
    api.refuse.store(true, Ordering::Relaxed);
    let w = Watching::start(api.port);
    let (registry, store) = (&w.registry, &w.store);
    wait_for("the refusal to show", Duration::from_secs(20), || {
        metric(registry, "loupe_k8s_api_errors_total{reason=\"refused\"} ") >= 1
    });
    assert_eq!(metric(registry, "loupe_k8s_api_up "), 0);
    assert!(
        store.container(&id(1)).is_none(),
        "nothing known while refused"
    );
    // The ClusterRole is fixed: the next retry lists the pods.
    api.refuse.store(false, Ordering::Relaxed);
    wait_for("the pod once allowed", Duration::from_secs(60), || {
        store.container(&id(1)).is_some()
    });
    assert_eq!(metric(registry, "loupe_k8s_api_up "), 1);
}
