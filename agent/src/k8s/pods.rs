//! This node's pods, from the Kubernetes API: a store indexed by container id, filled by a
//! list+watch of the pods whose `spec.nodeName` is this node (kube-rs's watcher: it lists, then
//! watches from the list's resource version, and lists again when the watch falls behind).
//!
//! The store keeps what it knew while the API is unreachable: the pods it has seen still exist,
//! so their names stay right. Containers that start meanwhile are named by their id until the
//! API answers again; [`K8sMetadata::generation`] changes with every update, so callers that
//! cached "container without pod" ask again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use loupe_collector::telemetry::{Counter, Gauge, Registry};

use super::cgroup::strip_scheme;

/// Pods kept at most (a node runs at most 110 by default, 250 on large EKS nodes).
pub const MAX_PODS: usize = 4096;
/// Longest wait between two attempts to reach the API.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the agent knows of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// The controller that owns the pod: (`k8s.deployment.name` or the attribute of its kind,
    /// name). A ReplicaSet named `<deployment>-<pod-template-hash>` counts as its Deployment.
    pub workload: Option<(&'static str, String)>,
    /// The label `app.kubernetes.io/name`.
    pub app_name: Option<String>,
}

/// A container of a known pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMeta {
    pub pod: Arc<PodMeta>,
    /// The container's name in the pod spec.
    pub container: String,
}

/// Where the API server is and who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sOptions {
    /// The node whose pods are watched (`spec.nodeName`).
    pub node_name: String,
    /// A kubeconfig file; `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

/// The shared pod store; cheap to clone.
#[derive(Debug, Clone)]
pub struct K8sMetadata {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: String,
    store: RwLock<Store>,
    generation: AtomicU64,
    metrics: Metrics,
}

/// A pod and its containers by id.
type PodEntry = (Arc<PodMeta>, Vec<(String, Arc<ContainerMeta>)>);

#[derive(Debug, Default)]
struct Store {
    /// Pods by UID with their containers' ids.
    pods: HashMap<String, PodEntry>,
    by_container: HashMap<String, Arc<ContainerMeta>>,
}

#[derive(Debug)]
struct Metrics {
    up: Gauge,
    pods: Gauge,
    errors_unreachable: Counter,
    errors_refused: Counter,
    errors_other: Counter,
    pods_dropped: Counter,
    /// Whether the outage has been logged (once per outage).
    warned: AtomicBool,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let errors = |reason: &str| {
            r.counter(
                "loupe_k8s_api_errors_total",
                "Failed calls to the Kubernetes API, by reason (unreachable: no connection or \
                 timeout; refused: 401/403, check the agent's RBAC; other).",
                &[("reason", reason)],
            )
        };
        Self {
            up: r.gauge(
                "loupe_k8s_api_up",
                "1 while the Kubernetes API answers the pod watch, 0 while it does not (processes \
                 in unknown pods are then named by their container id).",
                &[],
            ),
            pods: r.gauge(
                "loupe_k8s_pods",
                "Pods of this node known to the agent.",
                &[],
            ),
            errors_unreachable: errors("unreachable"),
            errors_refused: errors("refused"),
            errors_other: errors("other"),
            pods_dropped: r.counter(
                "loupe_k8s_pods_dropped_total",
                "Pods not kept because the store was full.",
                &[],
            ),
            warned: AtomicBool::new(false),
        }
    }
}

impl K8sMetadata {
    /// An empty store for `node`, its metrics registered.
    pub fn new(node: &str, registry: &Registry) -> Self {
        Self {
            inner: Arc::new(Inner {
                node: node.to_string(),
                store: RwLock::new(Store::default()),
                generation: AtomicU64::new(0),
                metrics: Metrics::new(registry),
            }),
        }
    }

    /// The container with this id (64 hex digits), if its pod is known.
    pub fn container(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        self.inner.store.read().ok()?.by_container.get(id).cloned()
    }

    /// Changes whenever the store does.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// Adds or replaces a pod.
    pub fn apply(&self, pod: &Pod) {
        let Some((meta, containers)) = pod_meta(pod, &self.inner.node) else {
            return;
        };
        let Ok(mut store) = self.inner.store.write() else {
            return;
        };
        if !store.pods.contains_key(&meta.uid) && store.pods.len() >= MAX_PODS {
            self.inner.metrics.pods_dropped.inc();
            return;
        }
        remove_pod(&mut store, &meta.uid);
        let meta = Arc::new(meta);
        let containers: Vec<(String, Arc<ContainerMeta>)> = containers
            .into_iter()
            .map(|(id, name)| {
                let c = Arc::new(ContainerMeta {
                    pod: meta.clone(),
                    container: name,
                });
                (id, c)
            })
            .collect();
        for (id, c) in &containers {
            store.by_container.insert(id.clone(), c.clone());
        }
        store.pods.insert(meta.uid.clone(), (meta, containers));
        self.inner.metrics.pods.set(store.pods.len() as i64);
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets a pod.
    pub fn delete(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        if let Ok(mut store) = self.inner.store.write() {
            remove_pod(&mut store, uid);
            self.inner.metrics.pods.set(store.pods.len() as i64);
            self.inner.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Replaces every pod with `pods` (a fresh list).
    fn replace_all(&self, pods: &[Pod]) {
        if let Ok(mut store) = self.inner.store.write() {
            *store = Store::default();
        }
        for pod in pods {
            self.apply(pod);
        }
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn api_up(&self) {
        let m = &self.inner.metrics;
        m.up.set(1);
        if m.warned.swap(false, Ordering::Relaxed) {
            tracing::info!("the Kubernetes API answers again: pod names are back");
        }
    }

    fn api_error(&self, reason: ApiError, message: &dyn std::fmt::Display) {
        let m = &self.inner.metrics;
        m.up.set(0);
        match reason {
            ApiError::Unreachable => m.errors_unreachable.inc(),
            ApiError::Refused => m.errors_refused.inc(),
            ApiError::Other => m.errors_other.inc(),
        }
        if !m.warned.swap(true, Ordering::Relaxed) {
            let hint = match reason {
                ApiError::Refused => " (the agent's service account needs get/list/watch on pods)",
                _ => "",
            };
            tracing::warn!(
                "cannot watch this node's pods through the Kubernetes API{hint}: {message}; \
                 processes in containers are named by their container id until it answers \
                 (retrying)"
            );
        }
    }

    /// Watches this node's pods on the current tokio runtime until the agent stops: connects
    /// (retrying with backoff while it cannot), lists, watches, lists again as needed.
    pub fn spawn_watcher(&self, options: K8sOptions) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.watch(options).await })
    }

    async fn watch(self, options: K8sOptions) {
        let mut backoff = Duration::from_millis(500);
        let client = loop {
            match client(&options).await {
                Ok(c) => break c,
                Err(e) => {
                    self.api_error(ApiError::Unreachable, &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let api: kube::Api<Pod> = kube::Api::all(client);
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", options.node_name));
        let mut listing: Option<Vec<Pod>> = None;
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    self.api_up();
                    match event {
                        Event::Init => listing = Some(Vec::new()),
                        Event::InitApply(pod) => match &mut listing {
                            Some(l) if l.len() < MAX_PODS => l.push(pod),
                            Some(_) => self.inner.metrics.pods_dropped.inc(),
                            None => self.apply(&pod),
                        },
                        Event::InitDone => {
                            if let Some(pods) = listing.take() {
                                self.replace_all(&pods);
                            }
                        }
                        Event::Apply(pod) => self.apply(&pod),
                        Event::Delete(pod) => self.delete(&pod),
                    }
                }
                Err(e) => self.api_error(classify(&e), &e),
            }
        }
    }
}

/// Why an API call failed, for the metrics.
#[derive(Debug, Clone, Copy)]
enum ApiError {
    Unreachable,
    Refused,
    Other,
}

fn classify(e: &watcher::Error) -> ApiError {
    use kube::Error as K;
    let client_error = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => {
            return if matches!(status.code, 401 | 403) {
                ApiError::Refused
            } else {
                ApiError::Other
            };
        }
        watcher::Error::NoResourceVersion => return ApiError::Other,
    };
    match client_error {
        K::Api(status) if matches!(status.code, 401 | 403) => ApiError::Refused,
        K::Api(_) => ApiError::Other,
        _ => ApiError::Unreachable,
    }
}

async fn client(options: &K8sOptions) -> anyhow::Result<kube::Client> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?
        }
        None => kube::Config::incluster()?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn remove_pod(store: &mut Store, uid: &str) {
    if let Some((_, containers)) = store.pods.remove(uid) {
        for (id, _) in containers {
            store.by_container.remove(&id);
        }
    }
}

/// What the agent keeps of a pod, and its containers' (id, name); `None` for another node's.
fn pod_meta(pod: &Pod, node: &str) -> Option<(PodMeta, Vec<(String, String)>)> {
    let md = &pod.metadata;
    let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if spec_node.is_some_and(|n| n != node) {
        return None;
    }
    let labels = md.labels.clone().unwrap_or_default();
    let meta = PodMeta {
        namespace: md.namespace.clone().unwrap_or_default(),
        name: md.name.clone()?,
        uid: md.uid.clone()?,
        node: spec_node.unwrap_or(node).to_string(),
        workload: workload(pod, &labels),
        app_name: labels.get("app.kubernetes.io/name").cloned(),
    };
    let status = pod.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
                .chain(s.ephemeral_container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let id = strip_scheme(c.container_id.as_deref()?);
            (!id.is_empty()).then(|| (id.to_ascii_lowercase(), c.name.clone()))
        })
        .collect();
    Some((meta, containers))
}

/// The controller owning the pod, as an OTel attribute key and a name.
fn workload(pod: &Pod, labels: &BTreeMap<String, String>) -> Option<(&'static str, String)> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let name = owner.name.clone();
    Some(match owner.kind.as_str() {
        "ReplicaSet" => {
            // `<deployment>-<pod-template-hash>`: the Deployment, without another API call.
            match labels
                .get("pod-template-hash")
                .and_then(|hash| name.strip_suffix(&format!("-{hash}")))
            {
                Some(deployment) => ("k8s.deployment.name", deployment.to_string()),
                None => ("k8s.replicaset.name", name),
            }
        }
        "StatefulSet" => ("k8s.statefulset.name", name),
        "DaemonSet" => ("k8s.daemonset.name", name),
        "Job" => ("k8s.job.name", name),
        "CronJob" => ("k8s.cronjob.name", name),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
