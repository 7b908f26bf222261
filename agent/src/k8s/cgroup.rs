//! A process's container from its cgroup path (`/proc/PID/cgroup`). Pure: text in, container out.
//!
//! Container runtimes name the cgroup of each container after its id (64 hex digits); kubelet
//! puts containers under the pod's cgroup, named after the pod's UID. The shapes, by cgroup
//! driver:
//!
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice/
//!   cri-containerd-<id>.scope` (containerd), `crio-<id>.scope` (CRI-O), `docker-<id>.scope`
//!   (Docker); `crio-conmon-<id>.scope` is CRI-O's monitor, no container;
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<id>`, `/docker/<id>`;
//! - cgroup v2 has one line `0::<path>`; v1 has one line per hierarchy, and the path of the
//!   `memory`, `cpu` or `pids` controller (or systemd's `name=systemd`) is read.
//!
//! Paths as seen from a container's cgroup namespace (no `/kubepods` prefix) still end in the
//! container's own directory, so the last path element naming a container wins.

/// The container runtime that named the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A 64-hex directory with no runtime prefix (cgroupfs driver): containerd, CRI-O or Docker.
    Unknown,
}

/// What a process's cgroup says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// 64 lowercase hex digits.
    pub id: String,
    pub runtime: Runtime,
    /// The pod's UID when the path has kubelet's pod directory.
    pub pod_uid: Option<String>,
}

/// Controllers whose v1 path is read, in order of preference.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "name=systemd"];

/// The container of a process from the text of its `/proc/PID/cgroup`; `None` outside containers.
pub fn parse(cgroup: &str) -> Option<ContainerRef> {
    let mut v2 = None;
    let mut v1: [Option<&str>; 4] = [None; 4];
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path);
            continue;
        }
        for c in controllers.split(',') {
            if let Some(i) = V1_CONTROLLERS.iter().position(|&k| k == c) {
                v1[i].get_or_insert(path);
            }
        }
    }
    // On a hybrid host the v2 line may be empty ("/") while v1 holds the containers.
    v1.iter()
        .flatten()
        .chain(v2.iter())
        .find_map(|path| from_path(path))
}

/// The container named by a cgroup path.
pub fn from_path(path: &str) -> Option<ContainerRef> {
    let mut pod_uid = None;
    let mut container = None;
    for element in path.split('/').filter(|e| !e.is_empty()) {
        if let Some(uid) = pod_uid_of(element) {
            pod_uid = Some(uid);
        } else if let Some(c) = container_of(element) {
            container = Some(c);
        }
    }
    let (id, runtime) = container?;
    Some(ContainerRef {
        id,
        runtime,
        pod_uid,
    })
}

/// `kubepods-burstable-pod1b2c_….slice` (systemd) or `pod1b2c-…` (cgroupfs) → the pod UID.
fn pod_uid_of(element: &str) -> Option<String> {
    let e = element.strip_suffix(".slice").unwrap_or(element);
    let at = e.rfind("pod")?;
    // The systemd form is preceded by `-`, the cgroupfs form stands alone.
    if at != 0 && !e[..at].ends_with('-') {
        return None;
    }
    let uid = e[at + 3..].replace('_', "-");
    let is_uid = uid.len() == 36
        && uid.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    is_uid.then(|| uid.to_ascii_lowercase())
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` or a bare `<id>`.
fn container_of(element: &str) -> Option<(String, Runtime)> {
    let e = element.strip_suffix(".scope").unwrap_or(element);
    let (runtime, id) = if let Some(id) = e.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, id)
    } else if e.starts_with("crio-conmon-") {
        return None;
    } else if let Some(id) = e.strip_prefix("crio-") {
        (Runtime::CriO, id)
    } else if let Some(id) = e.strip_prefix("docker-") {
        (Runtime::Docker, id)
    } else {
        (Runtime::Unknown, e)
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (id.to_ascii_lowercase(), runtime))
}

/// `containerd://<id>` (a pod's `containerStatuses[].containerID`) → `<id>`.
pub fn strip_scheme(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c9a7b0e2d48f6a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e3f5";
    const UID: &str = "0b5e3c1a-7f2d-4e9b-8c6a-1d3f5b7e9a2c";

    fn uid_systemd() -> String {
        UID.replace('-', "_")
    }

    #[test]
    fn every_runtime_driver_and_cgroup_version() {
        let u = uid_systemd();
        let cases: Vec<(String, Runtime, bool)> = vec![
            // EKS AL2023 and Bottlerocket: cgroup v2, systemd driver, containerd.
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"
                ),
                Runtime::Containerd,
                true,
            ),
            // Guaranteed QoS pods sit right under kubepods.slice.
            (
                format!("0::/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope\n"),
                Runtime::Containerd,
                true,
            ),
            // EKS AL2: cgroup v1, cgroupfs driver (the EKS AL2 default), containerd.
            (
                format!(
                    "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n\
                     11:memory:/kubepods/besteffort/pod{UID}/{ID}\n\
                     1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n\
                     0::/\n"
                ),
                Runtime::Unknown,
                true,
            ),
            // cgroup v1, systemd driver.
            (
                format!(
                    "9:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope\n\
                     4:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope\n"
                ),
                Runtime::Containerd,
                true,
            ),
            // CRI-O, v2, systemd.
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope\n"
                ),
                Runtime::CriO,
                true,
            ),
            // Docker outside Kubernetes: v2 systemd and v1 cgroupfs.
            (
                format!("0::/system.slice/docker-{ID}.scope\n"),
                Runtime::Docker,
                false,
            ),
            (
                format!("11:memory:/docker/{ID}\n3:cpu,cpuacct:/docker/{ID}\n"),
                Runtime::Unknown,
                false,
            ),
            // Seen from inside the container's cgroup namespace.
            (
                format!("0::/../cri-containerd-{ID}.scope\n"),
                Runtime::Containerd,
                false,
            ),
        ];
        for (text, runtime, has_pod) in cases {
            let got = parse(&text).unwrap_or_else(|| panic!("no container in {text}"));
            assert_eq!(got.id, ID, "{text}");
            assert_eq!(got.runtime, runtime, "{text}");
            assert_eq!(got.pod_uid.as_deref(), has_pod.then_some(UID), "{text}");
        }
    }

    #[test]
    fn hosts_and_monitors_are_no_containers() {
        for text in [
            "0::/user.slice/user-0.slice/session-3.scope\n".to_string(),
            "0::/system.slice/containerd.service\n".to_string(),
            "0::/\n".to_string(),
            format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope\n",
                uid_systemd()
            ),
            // A pod's cgroup itself (the pause process lives in its own container though).
            format!("0::/kubepods.slice/kubepods-pod{}.slice\n", uid_systemd()),
            // Not 64 hex digits.
            "0::/docker/abc123\n".to_string(),
            String::new(),
            "garbage without colons".to_string(),
        ] {
            assert_eq!(parse(&text), None, "{text}");
        }
    }

    #[test]
    fn container_ids_lose_their_scheme() {
        assert_eq!(strip_scheme(&format!("containerd://{ID}")), ID);
        assert_eq!(strip_scheme(&format!("cri-o://{ID}")), ID);
        assert_eq!(strip_scheme(ID), ID);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

            /// Any text: no panic, and an id found is always 64 lowercase hex digits.
            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
                if let Some(c) = parse(&text) {
                    prop_assert_eq!(c.id.len(), 64);
                    prop_assert!(c.id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                }
            }

            /// A containerd v2 line is found whatever the id and whatever lines surround it.
            #[test]
            fn a_containerd_line_is_found_among_noise(
                id in "[0-9a-f]{64}",
                before in proptest::collection::vec("[0-9]{1,2}:[a-z,=]{0,20}:/[a-z./_-]{0,40}", 0..4),
            ) {
                let mut text = before.join("\n");
                text.push_str(&format!(
                    "\n0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope\n",
                    uid_systemd()
                ));
                let found = parse(&text);
                prop_assert_eq!(found.map(|c| c.id), Some(id));
            }
        }
    }
}
