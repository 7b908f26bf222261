//! Kubernetes and container identity: which container (and pod) a process runs in.
//!
//! A process's cgroup names its container ([`cgroup`]); this node's pods, listed and watched
//! through the Kubernetes API ([`pods`]), name the pod, namespace, workload and container that
//! own that container id. Spans, logs and profiles of the process then carry them (resource
//! attributes `k8s.*` and `container.id`; Pyroscope series labels `namespace`, `pod`,
//! `container`, `node`), and `service.name` falls back on them (see
//! `profiler::procs::ProcessIdentity`).
//!
//! Outside Kubernetes (`--kubernetes auto` finds no API server) nothing changes. An API server
//! that cannot be reached or refuses (RBAC) never stops the agent: processes in containers
//! whose pod is unknown are named by their container id, the agent says so once in its log and
//! in `loupe_k8s_api_up` / `loupe_k8s_api_errors_total{reason}`, and retries with backoff;
//! names come back when the API does.

pub mod cgroup;
pub mod pods;

use std::sync::{Arc, OnceLock};

pub use pods::{ContainerMeta, K8sMetadata};

/// The metadata source of this agent, set once at start-up when Kubernetes is on.
static METADATA: OnceLock<K8sMetadata> = OnceLock::new();

/// Makes `metadata` the one every process lookup uses (first call wins).
pub fn install(metadata: K8sMetadata) {
    let _ = METADATA.set(metadata);
}

/// The installed metadata source, if Kubernetes is on.
pub fn metadata() -> Option<&'static K8sMetadata> {
    METADATA.get()
}

/// A process's container, and the pod that owns it when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIdentity {
    pub container_id: String,
    /// `None` while the pod is unknown (API unreachable, pod not seen yet).
    pub meta: Option<Arc<ContainerMeta>>,
}

/// The container of process `pid` and its pod, when Kubernetes is on and `pid` runs in one.
pub fn container_of(pid: u32) -> Option<ContainerIdentity> {
    let metadata = metadata()?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let container = cgroup::parse(&text)?;
    let meta = metadata.container(&container.id);
    Some(ContainerIdentity {
        container_id: container.id,
        meta,
    })
}
