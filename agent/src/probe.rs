//! Kernel feature probing. `detect` asks the running kernel what it offers (by trying, where trying is
//! cheap and honest); `plan` turns the answers into the attach methods Loupe will use, or into the
//! one thing that is missing and how to fix it. `plan` is pure, so its decisions are unit tested with
//! made-up kernels.

use std::{fmt, fs, path::Path};

/// Whether a feature is there, as far as probing could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Yes,
    /// Not there; the text says what probing saw.
    No(String),
    /// Could not be probed (usually: not privileged enough to try).
    Unknown(String),
}

impl Availability {
    pub fn is_yes(&self) -> bool {
        matches!(self, Availability::Yes)
    }

    fn from_bool(present: bool, absent_reason: &str) -> Self {
        if present {
            Availability::Yes
        } else {
            Availability::No(absent_reason.to_string())
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Availability::Yes => f.write_str("yes"),
            Availability::No(why) => write!(f, "no ({why})"),
            Availability::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// Capabilities the agent holds (effective set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub sys_admin: bool,
    pub bpf: bool,
    pub perfmon: bool,
    pub sys_ptrace: bool,
    pub sys_resource: bool,
    pub dac_read_search: bool,
}

use crate::privileges::{
    CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYS_RESOURCE,
    status_caps,
};

impl Capabilities {
    /// Parses the `CapEff:` line of `/proc/self/status`.
    pub fn from_status(status: &str) -> Option<Capabilities> {
        let bits = status_caps(status, "CapEff:")?;
        let has = |cap: u32| bits & (1u64 << cap) != 0;
        Some(Capabilities {
            sys_admin: has(CAP_SYS_ADMIN),
            bpf: has(CAP_BPF),
            perfmon: has(CAP_PERFMON),
            sys_ptrace: has(CAP_SYS_PTRACE),
            sys_resource: has(CAP_SYS_RESOURCE),
            dac_read_search: has(CAP_DAC_READ_SEARCH),
        })
    }

    /// Loading BPF programs and maps: CAP_BPF, or CAP_SYS_ADMIN before 5.8 and still today.
    pub fn can_load_bpf(&self) -> bool {
        self.bpf || self.sys_admin
    }

    /// System-wide perf events and tracing programs: CAP_PERFMON, or CAP_SYS_ADMIN.
    pub fn can_trace(&self) -> bool {
        self.perfmon || self.sys_admin
    }
}

/// What the running kernel offers.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelFeatures {
    pub kernel_release: String,
    pub capabilities: Capabilities,
    pub btf: Availability,
    pub perf_event: Availability,
    pub perf_event_program: Availability,
    pub tracepoints: Availability,
    pub ring_buffer: Availability,
    pub uprobes: Availability,
    pub kprobes: Availability,
    /// Filled by the agent after loading its object, which holds the fentry probe program.
    pub fentry: Availability,
    pub cgroup_v2: Availability,
    /// sockops programs with TCP header option callbacks on the root cgroup (v2): in-band trace
    /// context across nodes.
    pub tcp_options: Availability,
    pub bpffs: Availability,
}

/// How socket activity is captured (used by network spans): the fastest the kernel supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAttach {
    Fentry,
    Kprobes,
    Tracepoints,
}

impl fmt::Display for SocketAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketAttach::Fentry => "fentry/fexit",
            SocketAttach::Kprobes => "kprobes",
            SocketAttach::Tracepoints => "syscall tracepoints",
        })
    }
}

/// Something the profiler needs and does not have, with the way to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub what: &'static str,
    pub fix: &'static str,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.what, self.fix)
    }
}

/// The attach methods chosen for this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `Err` names the first thing the profiler cannot run without.
    pub profiler: Result<(), Missing>,
    /// Whether exec/exit tracepoints keep the process table fresh; without them processes are read
    /// only when first sampled and forgotten by age.
    pub process_tracepoints: bool,
    /// How socket calls are captured: fentry/fexit where they load (cheapest), else syscall
    /// tracepoints, the method every supported kernel has. The capture itself falls back from
    /// fentry/fexit to tracepoints if one of its programs is refused.
    pub socket_attach: Option<SocketAttach>,
    /// Methods this kernel offers that Loupe does not use (kprobes: fentry/fexit do the same job
    /// for less on every kernel with BTF, tracepoints on the others).
    pub unused_socket_methods: Vec<SocketAttach>,
}

/// Decides what Loupe can run on a kernel with these features.
pub fn plan(f: &KernelFeatures) -> Plan {
    let caps = f.capabilities;
    let profiler = if !caps.can_load_bpf() {
        Err(Missing {
            what: "missing CAP_BPF (or CAP_SYS_ADMIN): cannot load eBPF programs",
            fix: "run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (Kubernetes: securityContext.capabilities.add)",
        })
    } else if !caps.can_trace() {
        Err(Missing {
            what: "missing CAP_PERFMON (or CAP_SYS_ADMIN): cannot open system-wide perf events",
            fix: "run as root, or grant CAP_PERFMON (Kubernetes: securityContext.capabilities.add)",
        })
    } else if !f.perf_event.is_yes() {
        Err(Missing {
            what: "perf events are not available (CONFIG_PERF_EVENTS, or blocked by seccomp)",
            fix: "use a kernel with CONFIG_PERF_EVENTS=y and allow perf_event_open in the container's seccomp profile",
        })
    } else if matches!(f.perf_event_program, Availability::No(_)) {
        Err(Missing {
            what: "the kernel cannot run BPF programs on perf events",
            fix: "use kernel 4.9 or newer with CONFIG_BPF_EVENTS=y",
        })
    } else if matches!(f.ring_buffer, Availability::No(_)) {
        Err(Missing {
            what: "the kernel has no BPF ring buffer",
            fix: "use kernel 5.8 or newer (every supported EKS node image has it)",
        })
    } else {
        Ok(())
    };
    let socket_attach = if f.fentry.is_yes() {
        Some(SocketAttach::Fentry)
    } else {
        f.tracepoints.is_yes().then_some(SocketAttach::Tracepoints)
    };
    let unused_socket_methods = if f.kprobes.is_yes() {
        vec![SocketAttach::Kprobes]
    } else {
        Vec::new()
    };
    Plan {
        profiler,
        process_tracepoints: f.tracepoints.is_yes(),
        socket_attach,
        unused_socket_methods,
    }
}

/// Probes the running kernel. `fentry` is left `Unknown`: the agent fills it by loading its probe
/// program (see `ebpf::probe_fentry`).
pub fn detect() -> KernelFeatures {
    let capabilities = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| Capabilities::from_status(&s))
        .unwrap_or_default();
    let privileged = capabilities.can_load_bpf();
    let unprivileged = || Availability::Unknown("needs CAP_BPF to probe".into());

    let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|p| Path::new(p).join("events").is_dir());
    // (ensure_tracefs, called first by the agent, mounts it where the kernel has it.)
    let tracepoints = match tracefs {
        Some(root)
            if Path::new(root)
                .join("events/sched/sched_process_exec/id")
                .exists() =>
        {
            Availability::Yes
        }
        Some(_) => Availability::No("sched tracepoints missing from tracefs".into()),
        None => Availability::No("tracefs not mounted at /sys/kernel/tracing".into()),
    };

    KernelFeatures {
        kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        capabilities,
        btf: Availability::from_bool(
            Path::new("/sys/kernel/btf/vmlinux").exists(),
            "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)",
        ),
        perf_event: probe_perf_event(),
        perf_event_program: if privileged {
            program_supported(aya::programs::ProgramType::PerfEvent)
        } else {
            unprivileged()
        },
        tracepoints,
        ring_buffer: if privileged {
            match aya::sys::is_map_supported(aya::maps::MapType::RingBuf) {
                Ok(true) => Availability::Yes,
                Ok(false) => Availability::No("kernel older than 5.8".into()),
                Err(e) => Availability::Unknown(e.to_string()),
            }
        } else {
            unprivileged()
        },
        uprobes: probe_uprobes(capabilities),
        kprobes: Availability::from_bool(
            Path::new("/sys/bus/event_source/devices/kprobe").exists(),
            "no kprobe PMU (CONFIG_KPROBES / CONFIG_KPROBE_EVENTS)",
        ),
        fentry: Availability::Unknown("not probed".into()),
        cgroup_v2: match mount_point_of_type("cgroup2") {
            Some(_) => Availability::Yes,
            None => Availability::No("no cgroup2 mount".into()),
        },
        tcp_options: probe_tcp_options(privileged),
        bpffs: Availability::from_bool(
            is_mount_of_type("/sys/fs/bpf", "bpf"),
            "no bpf filesystem at /sys/fs/bpf",
        ),
    }
}

/// Header option callbacks came in Linux 5.10; the program attaches to the root of cgroup v2.
fn probe_tcp_options(privileged: bool) -> Availability {
    if let Err(missing) = tcp_options_root() {
        return missing;
    }
    if privileged {
        program_supported(aya::programs::ProgramType::SockOps)
    } else {
        Availability::Unknown("not privileged enough to try".into())
    }
}

/// Where the TCP option program attaches (the cgroup v2 root), if this kernel has the header
/// option callbacks it needs (Linux 5.10); else what is missing.
pub fn tcp_options_root() -> Result<std::path::PathBuf, Availability> {
    match aya::util::KernelVersion::current() {
        Ok(v) if v < aya::util::KernelVersion::new(5, 10, 0) => {
            return Err(Availability::No(
                "TCP header option callbacks need kernel 5.10".into(),
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(Availability::Unknown(e.to_string())),
    }
    cgroup2_root().ok_or_else(|| Availability::No("no cgroup v2 root found".into()))
}

/// cgroup v2's root as this host sees it. In a pod with its own cgroup namespace the local
/// /sys/fs/cgroup is the pod's subtree, so the host's, through pid 1's root (the chart runs
/// with hostPID), comes first; then this mount namespace's cgroup2 mount.
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let is_cgroup2 = |p: &Path| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: statfs writes into the zeroed struct it is given; `c` is a valid C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0)
            && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    };
    [
        "/proc/1/root/sys/fs/cgroup",
        "/proc/1/root/sys/fs/cgroup/unified",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .chain(mount_point_of_type("cgroup2").map(Into::into))
    .find(|p| is_cgroup2(p))
}

fn program_supported(kind: aya::programs::ProgramType) -> Availability {
    match aya::sys::is_program_supported(kind) {
        Ok(true) => Availability::Yes,
        Ok(false) => Availability::No("program type rejected by the kernel".into()),
        Err(e) => Availability::Unknown(e.to_string()),
    }
}

fn mounts() -> Vec<(String, String)> {
    fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .filter_map(|l| {
                    let mut fields = l.split_whitespace();
                    let _source = fields.next();
                    Some((fields.next()?.to_string(), fields.next()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_mount_of_type(path: &str, fs_type: &str) -> bool {
    mounts().iter().any(|(p, t)| p == path && t == fs_type)
}

fn mount_point_of_type(fs_type: &str) -> Option<String> {
    mounts()
        .into_iter()
        .find(|(_, t)| t == fs_type)
        .map(|(p, _)| p)
}

/// Mounts tracefs at /sys/kernel/tracing when the kernel has it but nothing mounted it (minimal
/// hosts and some container runtimes): tracepoints are attached by their tracefs ids. Needs
/// CAP_SYS_ADMIN; without it, tracepoints are reported missing and Loupe falls back.
pub fn ensure_tracefs() {
    ensure_mounted("tracefs", "/sys/kernel/tracing");
}

/// Mounts the BPF filesystem at /sys/fs/bpf when nothing is mounted there of its kind, so a map
/// can be pinned for other programs to open (`--publish-trace-context`).
pub fn ensure_bpffs() {
    ensure_mounted("bpf", "/sys/fs/bpf");
}

/// Mounts a filesystem of type `kind` at `target` if none of that type is mounted, the folder
/// exists and the kernel knows the type; says what happened in the log.
fn ensure_mounted(kind: &str, target: &str) {
    if mount_point_of_type(kind).is_some() || !Path::new(target).is_dir() {
        return;
    }
    let known = fs::read_to_string("/proc/filesystems")
        .map(|f| f.lines().any(|l| l.split_whitespace().last() == Some(kind)))
        .unwrap_or(false);
    if !known {
        return;
    }
    let (Ok(source), Ok(path), Ok(fstype)) = (
        std::ffi::CString::new(kind),
        std::ffi::CString::new(target),
        std::ffi::CString::new(kind),
    ) else {
        return;
    };
    // SAFETY: the three pointers are valid NUL-terminated strings for the duration of the call and
    // `data` may be null for tracefs and bpffs.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if r == 0 {
        tracing::info!("mounted {kind} at {target}");
    } else {
        tracing::debug!(
            "cannot mount {kind} at {target}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The first 64 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0), enough to open a
/// software event.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttrV0 {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// The first 72 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER1): `config2` carries a
/// uprobe's offset.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttrV1 {
    v0: PerfEventAttrV0,
    config2: u64,
}

/// Why uprobes are refused to an agent that holds CAP_PERFMON but not CAP_SYS_ADMIN.
pub const UPROBES_NEED_SYS_ADMIN: &str = "this kernel creates uprobes for CAP_SYS_ADMIN only \
     (CAP_PERFMON sufficed from 5.8 until a 2025 change, also in stable updates); grant \
     SYS_ADMIN (chart: securityContext.sysAdmin=true) for TLS in clear, Go's goroutines and \
     allocation profiles";

/// Whether this agent may create uprobes: the uprobe PMU exists and the kernel lets it open a
/// uprobe event, tried on an anonymous in-memory file that no process maps (so the probe is
/// registered and gone without ever being placed). The permission check is the first thing the
/// kernel does, and what changed: CAP_PERFMON sufficed from 5.8, CAP_SYS_ADMIN is required again
/// since a 2025 change (also in stable updates; 6.18 has it).
pub(crate) fn probe_uprobes(caps: Capabilities) -> Availability {
    let pmu = Path::new("/sys/bus/event_source/devices/uprobe/type");
    let Some(kind) = fs::read_to_string(pmu)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return Availability::No("no uprobe PMU (CONFIG_UPROBE_EVENTS)".into());
    };
    if !caps.can_trace() {
        return Availability::Unknown("needs CAP_PERFMON to probe".into());
    }
    match open_uprobe_event(kind) {
        Ok(()) => Availability::Yes,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            if caps.sys_admin {
                Availability::No(format!("uprobe event denied: {e}"))
            } else {
                Availability::No(UPROBES_NEED_SYS_ADMIN.into())
            }
        }
        Err(e) => Availability::Unknown(format!("uprobe event: {e}")),
    }
}

/// Opens (disabled) and closes a uprobe event (PMU type `kind`) at offset 0 of a fresh memfd.
fn open_uprobe_event(kind: u32) -> std::io::Result<()> {
    use std::{io::Write, os::fd::AsRawFd};
    const DISABLED: u64 = 1;
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"loupe-uprobe-probe".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    let mut file = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // The kernel refuses an offset past the file's end; one page of NOPs is a valid target.
    file.write_all(&[0x90; 4096])?;
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(std::io::Error::other)?;
    let attr = PerfEventAttrV1 {
        v0: PerfEventAttrV0 {
            kind,
            size: std::mem::size_of::<PerfEventAttrV1>() as u32,
            flags: DISABLED,
            // The uprobe PMU's `config1` is the path (a user pointer), `config2` the offset.
            config1: path.as_ptr() as u64,
            ..Default::default()
        },
        config2: 0,
    };
    // SAFETY: `attr` is a valid, initialised perf_event_attr prefix whose `size` says how many
    // bytes the kernel may read, and `config1` points to `path`, alive for the call.
    unsafe { open_and_close((&attr as *const PerfEventAttrV1).cast()) }
}

/// Opens a perf event for all processes on CPU 0 and closes it at once.
///
/// # Safety
/// `attr` points to an initialised `perf_event_attr` prefix whose `size` field says how many
/// bytes the kernel may read, and any pointer inside it is valid for the call.
unsafe fn open_and_close(attr: *const libc::c_void) -> std::io::Result<()> {
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
    // SAFETY: the caller vouches for `attr`; the other arguments are plain integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Opens (disabled) and closes a CPU-clock event on CPU 0 for all processes: exactly what the profiler
/// will ask of the kernel.
fn probe_perf_event() -> Availability {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
    const DISABLED: u64 = 1;
    let attr = PerfEventAttrV0 {
        kind: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttrV0>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_period: 1_000_000,
        flags: DISABLED,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, initialised perf_event_attr prefix whose `size` field says how many
    // bytes the kernel may read; it holds no pointer.
    let Err(err) = (unsafe { open_and_close((&attr as *const PerfEventAttrV0).cast()) }) else {
        return Availability::Yes;
    };
    let paranoid = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Availability::No(format!(
            "perf_event_open denied: {err}; perf_event_paranoid={paranoid}"
        )),
        _ => Availability::No(format!("perf_event_open failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_kernel() -> KernelFeatures {
        KernelFeatures {
            kernel_release: "6.1.0-test".into(),
            capabilities: Capabilities {
                sys_admin: true,
                bpf: true,
                perfmon: true,
                sys_ptrace: true,
                sys_resource: true,
                dac_read_search: true,
            },
            btf: Availability::Yes,
            perf_event: Availability::Yes,
            perf_event_program: Availability::Yes,
            tracepoints: Availability::Yes,
            ring_buffer: Availability::Yes,
            uprobes: Availability::Yes,
            kprobes: Availability::Yes,
            fentry: Availability::Yes,
            cgroup_v2: Availability::Yes,
            tcp_options: Availability::Yes,
            bpffs: Availability::Yes,
        }
    }

    #[test]
    fn captures_sockets_with_fentry_where_it_loads_else_tracepoints() {
        let mut k = full_kernel();
        let p = plan(&k);
        assert_eq!(p.socket_attach, Some(SocketAttach::Fentry));
        assert_eq!(p.unused_socket_methods, vec![SocketAttach::Kprobes]);
        // This host: fentry refused, kprobes compiled out.
        k.fentry = Availability::No("EPERM".into());
        assert_eq!(plan(&k).socket_attach, Some(SocketAttach::Tracepoints));
        assert_eq!(plan(&k).unused_socket_methods, vec![SocketAttach::Kprobes]);
        k.kprobes = Availability::No("compiled out".into());
        let p = plan(&k);
        assert_eq!(p.socket_attach, Some(SocketAttach::Tracepoints));
        assert!(p.unused_socket_methods.is_empty());
        // fentry/fexit need no tracefs.
        let mut no_tracefs = full_kernel();
        no_tracefs.tracepoints = Availability::No("no tracefs".into());
        assert_eq!(plan(&no_tracefs).socket_attach, Some(SocketAttach::Fentry));
        k.tracepoints = Availability::No("no tracefs".into());
        let p = plan(&k);
        assert_eq!(p.socket_attach, None);
        assert!(!p.process_tracepoints);
        assert!(p.profiler.is_ok(), "the profiler does not need tracepoints");
    }

    #[test]
    fn capabilities_are_enough_without_root() {
        let mut k = full_kernel();
        k.capabilities = Capabilities {
            bpf: true,
            perfmon: true,
            ..Default::default()
        };
        assert_eq!(plan(&k).profiler, Ok(()));
    }

    #[test]
    fn names_what_is_missing() {
        let mut k = full_kernel();
        k.capabilities = Capabilities::default();
        let missing = plan(&k).profiler.unwrap_err();
        assert!(missing.what.contains("CAP_BPF"), "{missing}");
        assert!(missing.fix.contains("root"), "{missing}");

        let mut k = full_kernel();
        k.capabilities.perfmon = false;
        k.capabilities.sys_admin = false;
        assert!(plan(&k).profiler.unwrap_err().what.contains("CAP_PERFMON"));

        let mut k = full_kernel();
        k.perf_event = Availability::No("denied".into());
        assert!(plan(&k).profiler.unwrap_err().what.contains("perf events"));

        let mut k = full_kernel();
        k.ring_buffer = Availability::No("old".into());
        assert!(plan(&k).profiler.unwrap_err().fix.contains("5.8"));

        // Not being able to probe is not the same as being told no.
        let mut k = full_kernel();
        k.ring_buffer = Availability::Unknown("no CAP_BPF".into());
        assert!(plan(&k).profiler.is_ok());
    }

    #[test]
    fn parses_effective_capabilities() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let c = Capabilities::from_status(root).unwrap();
        assert!(c.sys_admin && c.bpf && c.perfmon && c.sys_ptrace);
        let user = "CapEff:\t0000000000000000\n";
        assert_eq!(
            Capabilities::from_status(user).unwrap(),
            Capabilities::default()
        );
        let bpf_only = format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1u64 << 38));
        let c = Capabilities::from_status(&bpf_only).unwrap();
        assert!(c.can_load_bpf() && c.can_trace() && !c.sys_admin);
        assert!(Capabilities::from_status("nothing").is_none());
    }

    #[test]
    fn detect_runs_on_this_machine() {
        // Whatever this machine has, probing must not panic and must report a kernel release.
        let k = detect();
        assert!(!k.kernel_release.is_empty());
    }
}
