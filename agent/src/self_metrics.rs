//! What the agent says about itself on `/metrics` beyond its pipeline counters: which build runs
//! on which kernel, what that kernel offers and how each program family was attached (so a fleet
//! shows per node what was chosen), and the process's own CPU and memory against its memory bound.
//!
//! - `loupe_agent_info{version, kernel}` = 1
//! - `loupe_kernel_feature{feature}` = 1 when probing found it, 0 when not (or unknown)
//! - `loupe_attach_method{program, method}` = 1 for the method in use
//! - `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_start_time_seconds`
//!   (the names every Prometheus client library uses), refreshed at each scrape from `/proc/self`
//! - `loupe_agent_memory_limit_bytes` (`--memory-limit`) and `loupe_agent_kernel_maps_bytes`
//!   (what the kernel maps charge to the agent's memory cgroup, read once after attaching)

use std::{fs, time::Duration};

use loupe_collector::telemetry::Registry;

use crate::probe::{Availability, KernelFeatures};

/// Records the build, the kernel and what probing found.
pub fn record_kernel(registry: &Registry, features: &KernelFeatures) {
    registry
        .gauge(
            "loupe_agent_info",
            "The running agent: its version and the kernel release it runs on (always 1).",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("kernel", &features.kernel_release),
            ],
        )
        .set(1);
    for (feature, availability) in feature_list(features) {
        registry
            .gauge(
                "loupe_kernel_feature",
                "Kernel features as probed at start-up: 1 present, 0 absent or not probed.",
                &[("feature", feature)],
            )
            .set(i64::from(availability.is_yes()));
    }
}

/// Every probed feature under its metric label.
fn feature_list(f: &KernelFeatures) -> [(&'static str, &Availability); 11] {
    [
        ("btf", &f.btf),
        ("perf_event", &f.perf_event),
        ("perf_event_program", &f.perf_event_program),
        ("tracepoints", &f.tracepoints),
        ("ring_buffer", &f.ring_buffer),
        ("uprobes", &f.uprobes),
        ("kprobes", &f.kprobes),
        ("fentry", &f.fentry),
        ("cgroup_v2", &f.cgroup_v2),
        ("tcp_options", &f.tcp_options),
        ("bpffs", &f.bpffs),
    ]
}

/// Records how one program family is attached (`program`: `profiler`, `sockets`, …).
pub fn record_attach(registry: &Registry, program: &str, method: &str) {
    registry
        .gauge(
            "loupe_attach_method",
            "How each family of kernel programs is attached (1 for the method in use).",
            &[("program", program), ("method", method)],
        )
        .set(1);
}

/// Registers the process metrics, refreshed before each render, and the memory bound.
pub fn install_process_metrics(registry: &Registry, memory_limit: u64) {
    registry
        .float_gauge(
            "loupe_agent_memory_limit_bytes",
            "The memory the agent is configured to stay under (--memory-limit).",
            &[],
        )
        .set(memory_limit as f64);
    let clock_ticks = clock_ticks_per_second();
    let page_size = page_size();
    let boot_time = boot_time_seconds();
    let cpu = registry.float_counter(
        "process_cpu_seconds_total",
        "User and system CPU time the agent spent, in seconds.",
        &[],
    );
    let rss = registry.float_gauge(
        "process_resident_memory_bytes",
        "The agent's resident memory, in bytes.",
        &[],
    );
    let start = registry.float_gauge(
        "process_start_time_seconds",
        "When the agent started, in seconds since the Unix epoch.",
        &[],
    );
    if let (Some(stat), Some(hz), Some(boot)) = (read_stat(), clock_ticks, boot_time) {
        start.set(boot + stat.start_ticks as f64 / hz);
    }
    registry.before_render(move || {
        if let (Some(stat), Some(hz)) = (read_stat(), clock_ticks) {
            cpu.set((stat.utime + stat.stime) as f64 / hz);
        }
        if let Some(pages) = fs::read_to_string("/proc/self/statm")
            .ok()
            .as_deref()
            .and_then(resident_pages)
        {
            rss.set((pages * page_size) as f64);
        }
    });
}

/// Sums what the kernel maps the agent holds charge to its memory (`memlock:` of each map's
/// fdinfo, once per map however many descriptors refer to it: `lru_maps` keeps a second one of
/// each LRU map), sets `loupe_agent_kernel_maps_bytes` and returns it.
pub fn record_kernel_maps(registry: &Registry) -> u64 {
    let mut infos = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc/self/fdinfo") {
        for entry in dir.flatten() {
            if let Ok(info) = fs::read_to_string(entry.path()) {
                infos.push(info);
            }
        }
    }
    let total = maps_memlock(infos.iter().map(String::as_str));
    registry
        .float_gauge(
            "loupe_agent_kernel_maps_bytes",
            "Memory held by the agent's eBPF maps (charged to its memory cgroup), in bytes.",
            &[],
        )
        .set(total as f64);
    total
}

/// Checks the resident memory plus the kernel maps against `limit` every `period`: sets
/// `pressure` near the limit (the socket reader sheds while it is on; `loupe_memory_pressure`
/// says so), and logs a warning each time memory crosses the limit itself, and once more when it
/// falls back under it. The bound is enforced by the caps of each stage; this is the safety valve
/// for when they do not suffice.
pub async fn watch_memory(
    limit: u64,
    kernel_maps: u64,
    period: Duration,
    pressure: crate::memory::Pressure,
    registry: Registry,
) {
    let page_size = page_size();
    let gauge = registry.gauge(
        "loupe_memory_pressure",
        "1 while the agent's memory is within 5% of --memory-limit (until it is 10% below): \
         socket events are dropped (loupe_socket_events_dropped_total{reason=\"memory_pressure\"}).",
        &[],
    );
    let mut over = false;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let Some(pages) = fs::read_to_string("/proc/self/statm")
            .ok()
            .as_deref()
            .and_then(resident_pages)
        else {
            continue;
        };
        let used = pages * page_size + kernel_maps;
        let was_shedding = pressure.is_on();
        let shedding = pressure.update(used, limit);
        gauge.set(i64::from(shedding));
        if shedding != was_shedding {
            if shedding {
                tracing::warn!(
                    used_bytes = used,
                    limit_bytes = limit,
                    "memory near --memory-limit: dropping socket events until it falls back"
                );
            } else {
                tracing::info!(
                    used_bytes = used,
                    "memory pressure over: socket events flow again"
                );
            }
        }
        if used > limit && !over {
            tracing::warn!(
                used_bytes = used,
                limit_bytes = limit,
                "memory above --memory-limit (resident memory plus kernel maps)"
            );
        } else if used <= limit && over {
            tracing::info!(used_bytes = used, "memory back under --memory-limit");
        }
        over = used > limit;
    }
}

/// The parts of `/proc/self/stat` used here.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

fn read_stat() -> Option<Stat> {
    parse_stat(&fs::read_to_string("/proc/self/stat").ok()?)
}

/// Parses `/proc/PID/stat`: fields after the command (which may hold spaces and parentheses, so
/// the split is at the last `)`); utime, stime and starttime are fields 14, 15 and 22.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
    })
}

/// The second field of `/proc/PID/statm`: resident pages.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// The `memlock:` of the maps among these fdinfo texts, each map (by `map_id:`) counted once.
fn maps_memlock<'a>(fdinfos: impl Iterator<Item = &'a str>) -> u64 {
    let mut seen = std::collections::HashSet::new();
    fdinfos
        .filter_map(|info| {
            let bytes = map_memlock(info)?;
            let id = info.lines().find_map(|l| l.strip_prefix("map_id:"));
            // A kernel without map_id in fdinfo (before 4.14) counts every descriptor.
            id.is_none_or(|id| seen.insert(id.trim().to_owned()))
                .then_some(bytes)
        })
        .sum()
}

/// `memlock:` of a BPF map's fdinfo; `None` for any other file descriptor.
fn map_memlock(fdinfo: &str) -> Option<u64> {
    if !fdinfo.lines().any(|l| l.starts_with("map_type:")) {
        return None;
    }
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))?
        .trim()
        .parse()
        .ok()
}

/// `btime` of `/proc/stat`: boot time in seconds since the epoch.
fn boot_time_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as f64)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_with_spaces_and_parentheses() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    150 25 0 0 20 0 3 0 98765 1000000 500 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 150,
                stime: 25,
                start_ticks: 98765
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_reads_real_values() {
        let stat = read_stat().expect("/proc/self/stat");
        assert!(stat.start_ticks > 0);
        let pages = resident_pages(&fs::read_to_string("/proc/self/statm").unwrap()).unwrap();
        assert!(pages > 0);
        assert!(boot_time_seconds().unwrap() > 1.0e9);
    }

    #[test]
    fn memlock_only_from_map_fdinfo() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nmap_type:\t1\nkey_size:\t4\n\
                   value_size:\t8\nmax_entries:\t1024\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
                   memlock:\t98304\nmap_id:\t7\n";
        assert_eq!(map_memlock(map), Some(98304));
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t1\nmemlock:\t4096\n";
        assert_eq!(map_memlock(prog), None);
        assert_eq!(map_memlock("pos:\t0\nflags:\t0100002\n"), None);
    }

    #[test]
    fn a_map_with_two_descriptors_is_counted_once() {
        let map = |id: u32, bytes: u32| {
            format!("pos:\t0\nmap_type:\t9\nmax_entries:\t64\nmemlock:\t{bytes}\nmap_id:\t{id}\n")
        };
        let infos = [
            map(7, 4096),
            map(8, 8192),
            // A dup of map 7.
            map(7, 4096),
            "pos:\t0\nprog_type:\t1\nmemlock:\t4096\n".to_owned(),
        ];
        assert_eq!(maps_memlock(infos.iter().map(String::as_str)), 4096 + 8192);
    }

    #[test]
    fn process_metrics_render_with_real_values() {
        let r = Registry::new();
        install_process_metrics(&r, 256 << 20);
        let text = r.render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} missing in {text}"))
                .parse()
                .unwrap()
        };
        assert_eq!(value("loupe_agent_memory_limit_bytes"), 268435456.0);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_start_time_seconds") > 1.0e9);
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }

    #[test]
    fn kernel_facts_render_one_series_each() {
        let features = KernelFeatures {
            kernel_release: "6.1.0-test".into(),
            capabilities: Default::default(),
            btf: Availability::Yes,
            perf_event: Availability::Yes,
            perf_event_program: Availability::Yes,
            tracepoints: Availability::Yes,
            ring_buffer: Availability::Yes,
            uprobes: Availability::Yes,
            kprobes: Availability::No("compiled out".into()),
            fentry: Availability::Unknown("not probed".into()),
            cgroup_v2: Availability::Yes,
            tcp_options: Availability::Yes,
            bpffs: Availability::Yes,
        };
        let r = Registry::new();
        record_kernel(&r, &features);
        record_attach(&r, "sockets", "tracepoints");
        let text = r.render();
        assert!(
            text.contains("loupe_agent_info{kernel=\"6.1.0-test\",version=\""),
            "{text}"
        );
        assert!(
            text.contains("loupe_kernel_feature{feature=\"btf\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("loupe_kernel_feature{feature=\"kprobes\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("loupe_kernel_feature{feature=\"fentry\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("loupe_attach_method{method=\"tracepoints\",program=\"sockets\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("loupe_kernel_feature{").count(), 11);
    }
}
