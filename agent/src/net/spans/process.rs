//! Process names and resources for spans and logs: `service.name` and the OTLP resource of each
//! traced process, cached with a time to live (pids are reused).

use std::sync::Arc;

use foldhash::HashMap;

use loupe_collector::traces::Attribute;
use loupe_collector::traces::proto::resource::Resource;

use super::attrs::Attrs;
use crate::profiler::ProcessIdentity;

/// How long a resolved process name is trusted (pids are reused).
pub(super) const PROCESS_TTL_NS: u64 = 60_000_000_000;
/// Processes whose names are cached at most.
pub(super) const MAX_PROCESSES: usize = 4096;

/// Names processes for the `service.name` resource attribute.
pub trait ProcessResolver: Send {
    /// The identity of `pid`, or `None` if it is gone.
    fn resolve(&mut self, pid: u32) -> Option<ProcessIdentity>;
}

/// Resolves from `/proc`, exactly as the profiler names services.
#[derive(Debug, Default)]
pub struct ProcResolver;

impl ProcessResolver for ProcResolver {
    fn resolve(&mut self, pid: u32) -> Option<ProcessIdentity> {
        crate::profiler::process_identity(pid)
    }
}

/// A resolved process and its OTLP resource.
#[derive(Debug)]
pub(super) struct ProcessInfo {
    /// See `ProcessIdentity::pod_pending`.
    pub(super) pod_pending: Option<u64>,
    pub(super) service: String,
    pub(super) resource: Arc<Resource>,
}

pub(super) struct ProcessCache {
    pub(super) resolver: Box<dyn ProcessResolver>,
    pub(super) host_name: String,
    pub(super) map: HashMap<u32, (Arc<ProcessInfo>, u64)>,
}

impl ProcessCache {
    pub(super) fn get(&mut self, pid: u32, now: u64) -> Arc<ProcessInfo> {
        self.get_or_name(pid, now, None)
    }

    /// Like `get`; if /proc no longer knows the process, `comm` (its executable name as the
    /// kernel saw it at connect/accept time) names it, and an entry resolved earlier is kept.
    pub(super) fn get_or_name(
        &mut self,
        pid: u32,
        now: u64,
        comm: Option<&[u8]>,
    ) -> Arc<ProcessInfo> {
        if let Some((info, at)) = self.map.get(&pid)
            && now.saturating_sub(*at) < PROCESS_TTL_NS
            // Named while its pod was unknown: named again once the pods changed.
            && info
                .pod_pending
                .is_none_or(|g| crate::k8s::metadata().is_none_or(|m| m.generation() == g))
        {
            return info.clone();
        }
        let id = self.resolver.resolve(pid);
        if id.is_none()
            && let Some((info, at)) = self.map.get_mut(&pid)
        {
            *at = now;
            return info.clone();
        }
        let id = id.or_else(|| {
            let comm = comm?;
            let name = String::from_utf8_lossy(comm.split(|&b| b == 0).next()?).into_owned();
            (!name.is_empty()).then(|| ProcessIdentity {
                service: name.clone(),
                executable: Some(name),
                container: None,
            })
        });
        if self.map.len() >= MAX_PROCESSES {
            self.map
                .retain(|_, (_, at)| now.saturating_sub(*at) < PROCESS_TTL_NS);
            if self.map.len() >= MAX_PROCESSES {
                self.map.clear();
            }
        }
        let service = id
            .as_ref()
            .map_or_else(|| "unknown_service".to_owned(), |i| i.service.clone());
        let mut a = Attrs::with_capacity(12);
        a.str("service.name", service.clone());
        a.str("host.name", self.host_name.clone());
        a.int("process.pid", i64::from(pid));
        let pod_pending = id.as_ref().and_then(ProcessIdentity::pod_pending);
        if let Some(id) = id {
            for (key, value) in id.resource_attributes() {
                a.str(key, value);
            }
            if let Some(exe) = id.executable {
                a.str("process.executable.name", exe);
            }
        }
        let info = Arc::new(ProcessInfo {
            service,
            pod_pending,
            resource: Arc::new(Resource {
                attributes: a.0.iter().map(Attribute::to_proto).collect(),
                ..Resource::default()
            }),
        });
        self.map.insert(pid, (info.clone(), now));
        info
    }
}
