//! `loupe-agent doctor`: what this kernel offers, what Loupe uses each feature for, and what Loupe
//! will do here. Always exits 0: it reports, it does not judge.

use std::fmt::Write;

use crate::probe::{Availability, KernelFeatures, Plan};

/// Probes the kernel (loading the probe programs when the object is embedded and we may) and prints
/// the report on stdout.
pub fn run() {
    crate::probe::ensure_tracefs();
    let mut features = crate::probe::detect();
    if features.capabilities.can_load_bpf() {
        match crate::ebpf::load(crate::ebpf::Uses::ALL) {
            Ok(mut ebpf) => {
                features.fentry = crate::ebpf::probe_fentry(&mut ebpf);
                if features.kprobes.is_yes() {
                    features.kprobes = crate::ebpf::probe_kprobe(&mut ebpf);
                }
            }
            Err(e) => features.fentry = Availability::Unknown(e.to_string()),
        }
    } else {
        features.fentry = Availability::Unknown("needs CAP_BPF to probe".into());
    }
    let plan = crate::probe::plan(&features);
    print!("{}", report(&features, &plan));
    let libraries: Vec<String> = crate::net::tls::survey()
        .iter()
        .map(|(lib, version, pids)| {
            format!(
                "{} ({version}; mapped by {} process{} now)",
                lib.path.display(),
                pids.len(),
                if pids.len() == 1 { "" } else { "es" }
            )
        })
        .collect();
    println!("{}", tls_line(&features.uprobes, &libraries));
    let go: Vec<GoBinary> = crate::net::goroutines::survey()
        .into_iter()
        .map(|e| GoBinary {
            path: e.path.display().to_string(),
            state: match e.inspected {
                Ok(rt) if rt.tls.is_some() => GoTlsState::Probed(rt.version),
                Ok(rt) => GoTlsState::NoTls(rt.version),
                Err(e) => GoTlsState::NotProbed(e.to_string()),
            },
            processes: e.pids.len(),
        })
        .collect();
    println!("{}", go_line(&features.uprobes, &go));
    let executables = crate::profiler::unwind_survey::survey();
    println!("{}", crate::profiler::unwind_survey::report(&executables));
}

/// A Go executable running now, as the doctor reports it.
struct GoBinary {
    path: String,
    state: GoTlsState,
    processes: usize,
}

enum GoTlsState {
    /// Has `crypto/tls` and the symbols to probe it (its version).
    Probed(String),
    /// Probeable, without `crypto/tls` linked in.
    NoTls(String),
    /// Not probeable: why.
    NotProbed(String),
}

/// What TLS capture does for the Go executables running now (see `net::goroutines`).
fn go_line(uprobes: &Availability, binaries: &[GoBinary]) -> String {
    if !uprobes.is_yes() {
        return format!("Go's crypto/tls in clear: off, {}", no_uprobes(uprobes));
    }
    if binaries.is_empty() {
        return "Go's crypto/tls in clear: no Go process running now (Go executables are probed \
                when their first process is seen)"
            .to_string();
    }
    let items: Vec<String> = binaries
        .iter()
        .map(|b| {
            let what = match &b.state {
                GoTlsState::Probed(v) => format!("{v}, crypto/tls probed"),
                GoTlsState::NoTls(v) => format!("{v}, no crypto/tls in it"),
                GoTlsState::NotProbed(why) => format!("not probed: {why}"),
            };
            format!(
                "{} ({what}; {} process{})",
                b.path,
                b.processes,
                if b.processes == 1 { "" } else { "es" }
            )
        })
        .collect();
    format!(
        "Go's crypto/tls in clear: {} Go executable{} running: {}",
        binaries.len(),
        if binaries.len() == 1 { "" } else { "s" },
        items.join(", ")
    )
}

/// Why uprobes are off, in full (the table cuts reasons short).
fn no_uprobes(uprobes: &Availability) -> String {
    match uprobes {
        Availability::Yes => String::new(),
        Availability::No(why) | Availability::Unknown(why) => format!("no uprobes: {why}"),
    }
}

/// What TLS capture finds: the OpenSSL libraries its probes go on (see `net::tls`).
fn tls_line(uprobes: &Availability, libraries: &[String]) -> String {
    match (uprobes.is_yes(), libraries) {
        (false, _) => format!("TLS in clear: off, {}", no_uprobes(uprobes)),
        (true, []) => "TLS in clear: no OpenSSL library (libssl.so*) on this host or in its \
                       processes; TLS connections stay opaque"
            .to_string(),
        (true, libs) => format!(
            "TLS in clear: OpenSSL's SSL_read/SSL_write probed in {} librar{}: {} (Go's crypto/tls \
             below; not covered: rustls, Java)",
            libs.len(),
            if libs.len() == 1 { "y" } else { "ies" },
            libs.join(", ")
        ),
    }
}

/// The report as text; separate from probing so it is tested with made-up kernels.
pub fn report(f: &KernelFeatures, plan: &Plan) -> String {
    let caps = f.capabilities;
    let privileges = if caps.can_load_bpf() && caps.can_trace() {
        Availability::Yes
    } else {
        Availability::No(format!(
            "CAP_BPF={} CAP_PERFMON={} CAP_SYS_ADMIN={}",
            caps.bpf, caps.perfmon, caps.sys_admin
        ))
    };
    let rows: [(&str, &Availability, &str); 14] = [
        (
            "privileges (CAP_BPF+CAP_PERFMON or root)",
            &privileges,
            "loading programs, system-wide sampling (required)",
        ),
        (
            "perf_event (cpu-clock, all CPUs)",
            &f.perf_event,
            "CPU profiler sampling (required)",
        ),
        (
            "BPF programs on perf events",
            &f.perf_event_program,
            "CPU and page-fault profiler stack capture (required)",
        ),
        (
            "BPF ring buffer",
            &f.ring_buffer,
            "process announcements, socket events (required)",
        ),
        (
            "tracepoints (tracefs)",
            &f.tracepoints,
            "process exec/exit; socket capture where fentry/fexit are refused",
        ),
        (
            "BTF (/sys/kernel/btf/vmlinux)",
            &f.btf,
            "socket struct offsets; fentry/fexit",
        ),
        (
            "fentry/fexit",
            &f.fentry,
            "socket capture (cheapest method)",
        ),
        (
            "kprobes",
            &f.kprobes,
            "not needed (fentry/fexit do the same for less)",
        ),
        (
            "uprobes",
            &f.uprobes,
            "TLS in clear (OpenSSL, Go's crypto/tls); allocation profiles (--alloc-pid)",
        ),
        (
            "cgroup v2",
            &f.cgroup_v2,
            "in-band trace context; pod identity reads /proc/PID/cgroup on v1 and v2",
        ),
        (
            "TCP header options (sockops)",
            &f.tcp_options,
            "trace context across nodes and NAT (--tcp-context)",
        ),
        (
            "Go goroutines (R14 via bpf_task_pt_regs)",
            &match crate::net::goroutines::g_register() {
                Ok(_) => f.uprobes.clone(),
                Err(why) => Availability::No(why),
            },
            "Go calls from other goroutines nest under their request (--go-goroutines)",
        ),
        (
            "bpffs (/sys/fs/bpf)",
            &f.bpffs,
            "pinning maps across restarts (optional)",
        ),
        (
            "CAP_SYS_PTRACE",
            &if caps.sys_ptrace || caps.sys_admin {
                Availability::Yes
            } else {
                Availability::No("not held".into())
            },
            "reading other processes' mappings and binaries",
        ),
    ];
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let avail_width = rows
        .iter()
        .map(|r| r.1.to_string().len().min(48))
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "Loupe doctor — kernel {}\n", f.kernel_release);
    let _ = writeln!(
        out,
        "{:width$}  {:avail_width$}  USED FOR",
        "FEATURE", "AVAILABLE"
    );
    for (name, avail, used_for) in rows {
        let mut a = avail.to_string();
        if a.len() > 48 {
            a.truncate(45);
            a.push_str("...");
        }
        let _ = writeln!(out, "{name:width$}  {a:avail_width$}  {used_for}");
    }
    let _ = writeln!(out);
    match &plan.profiler {
        Ok(()) => {
            let _ = writeln!(
                out,
                "CPU profiler: ready (perf_event sampling on every online CPU)"
            );
        }
        Err(m) => {
            let _ = writeln!(out, "CPU profiler: cannot run: {m}");
        }
    }
    let _ = writeln!(
        out,
        "Process tracking: {}",
        if plan.process_tracepoints {
            "exec/exit tracepoints"
        } else {
            "first sample only (no tracefs): processes that exec are re-read late"
        }
    );
    let unused = plan
        .unused_socket_methods
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
    let _ = writeln!(
        out,
        "Socket capture method (network spans): {}{}",
        plan.socket_attach
            .map(|m| m.to_string())
            .unwrap_or_else(|| "none available: network spans are off".into()),
        if unused.is_empty() {
            String::new()
        } else {
            format!(
                " (also offered by this kernel, not used: {})",
                unused.join(", ")
            )
        }
    );
    let _ = writeln!(
        out,
        "Stacks: walked with frame pointers. Binaries built without them (most distro C/C++ libraries, \
         Rust builds without -C force-frame-pointers, anything built with -fomit-frame-pointer) show \
         their leaf function but a cut-short stack; Loupe logs a warning per affected service."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Capabilities, plan};

    #[test]
    fn tls_line_names_the_libraries_or_says_why_none() {
        let libs = ["/usr/lib/x86_64-linux-gnu/libssl.so.3".to_string()];
        let line = tls_line(&Availability::Yes, &libs);
        assert!(
            line.contains("1 library: /usr/lib/x86_64-linux-gnu/libssl.so.3"),
            "{line}"
        );
        assert!(tls_line(&Availability::Yes, &[]).contains("stay opaque"));
        let refused = Availability::No(crate::probe::UPROBES_NEED_SYS_ADMIN.into());
        let line = tls_line(&refused, &libs);
        assert!(
            line.contains("off, no uprobes") && line.contains("SYS_ADMIN"),
            "{line}"
        );
    }

    #[test]
    fn go_line_says_what_each_go_executable_gets() {
        let binaries = [
            GoBinary {
                path: "/srv/api".into(),
                state: GoTlsState::Probed("go1.19.8".into()),
                processes: 2,
            },
            GoBinary {
                path: "/srv/worker".into(),
                state: GoTlsState::NoTls("go1.22.1".into()),
                processes: 1,
            },
            GoBinary {
                path: "/srv/stripped".into(),
                state: GoTlsState::NotProbed("go1.21.0 without symbols (built with -s)".into()),
                processes: 1,
            },
        ];
        let line = go_line(&Availability::Yes, &binaries);
        assert!(line.contains("3 Go executables running"), "{line}");
        assert!(
            line.contains("/srv/api (go1.19.8, crypto/tls probed; 2 processes)"),
            "{line}"
        );
        assert!(
            line.contains("/srv/worker (go1.22.1, no crypto/tls in it; 1 process)"),
            "{line}"
        );
        assert!(
            line.contains("not probed: go1.21.0 without symbols"),
            "{line}"
        );
        assert!(go_line(&Availability::Yes, &[]).contains("no Go process running"));
        let absent = Availability::No("no uprobe PMU (CONFIG_UPROBE_EVENTS)".into());
        let line = go_line(&absent, &binaries);
        assert!(line.contains("off, no uprobes: no uprobe PMU"), "{line}");
    }

    fn kernel(caps: Capabilities) -> KernelFeatures {
        let no = || Availability::No("compiled out".into());
        KernelFeatures {
            kernel_release: "6.18.0-test".into(),
            capabilities: caps,
            btf: Availability::Yes,
            perf_event: Availability::Yes,
            perf_event_program: Availability::Yes,
            tracepoints: Availability::Yes,
            ring_buffer: Availability::Yes,
            uprobes: Availability::Yes,
            kprobes: no(),
            fentry: Availability::No("load failed: EPERM".into()),
            cgroup_v2: Availability::Yes,
            tcp_options: Availability::Yes,
            bpffs: no(),
        }
    }

    #[test]
    fn reports_a_tracepoint_only_kernel() {
        let k = kernel(Capabilities {
            sys_admin: true,
            ..Default::default()
        });
        let text = report(&k, &plan(&k));
        assert!(text.contains("kernel 6.18.0-test"));
        assert!(text.contains("CPU profiler: ready"));
        assert!(text.contains("Socket capture method (network spans): syscall tracepoints"));
        assert!(
            text.lines()
                .any(|l| l.starts_with("kprobes") && l.contains("no (compiled out)"))
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("fentry/fexit") && l.contains("EPERM"))
        );
    }

    #[test]
    fn reports_what_an_unprivileged_run_lacks() {
        let k = kernel(Capabilities::default());
        let text = report(&k, &plan(&k));
        assert!(
            text.contains("CPU profiler: cannot run: missing CAP_BPF"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("privileges") && l.contains("no (CAP_BPF=false"))
        );
    }
}
