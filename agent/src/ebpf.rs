//! The embedded kernel programs: loading them, and turning load failures into one clear line (the
//! verifier's log goes to debug logging, never to the user's face).

use aya::{
    Ebpf, EbpfLoader,
    programs::{FEntry, KProbe, ProgramError},
};

use crate::probe::Availability;

/// The object built from agent-ebpf/loupe-ebpf, 8-byte aligned as the ELF parser wants.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loupe-ebpf.o"));

/// A failure to bring the kernel programs up.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// This binary was built without the kernel programs.
    #[error(
        "this loupe-agent was built without its eBPF programs; build it with `cargo xtask build`"
    )]
    NotEmbedded,
    /// The object could not be parsed or its maps created.
    #[error("cannot load Loupe's eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program named in the object is not there or is of another type.
    #[error("eBPF program {0} is missing from the object or has the wrong type")]
    Program(&'static str),
    /// The kernel refused a program (the verifier log is logged at debug level).
    #[error("the kernel rejected eBPF program {name}: {message}")]
    Rejected { name: &'static str, message: String },
    /// A program could not be attached.
    #[error("cannot attach eBPF program {name}: {source}")]
    Attach {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A map named in the object is missing or has another type.
    #[error("eBPF map {name}: {message}")]
    Map { name: &'static str, message: String },
    /// Something the programs need besides themselves and their maps: kernel BTF, a thread, an
    /// attach point.
    #[error("{0}")]
    Unavailable(String),
}

/// The features a run uses, so that the maps of those it does not are created at their smallest:
/// kernel maps are allocated in full when created, and count against `--memory-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses {
    /// Network spans and logs: the socket programs' maps.
    pub network: bool,
    /// TLS in clear through uprobes.
    pub tls: bool,
    /// Goroutine-aware context in Go processes.
    pub go: bool,
    /// Off-CPU profiles.
    pub off_cpu: bool,
    /// Allocation profiles.
    pub alloc: bool,
    /// Rows of the unwind tables' array (`UNWIND_ROWS`); 0: no DWARF unwinding.
    pub unwind_rows: u32,
}

impl Uses {
    /// Everything: the maps at their full sizes (tests, `doctor`).
    pub const ALL: Uses = Uses {
        network: true,
        tls: true,
        go: true,
        off_cpu: true,
        alloc: true,
        unwind_rows: loupe_common::unwind::DEFAULT_ROWS,
    };

    /// Nothing but the profiler: every map of the other features small (tests).
    #[cfg(test)]
    pub const NONE: Uses = Uses {
        network: false,
        tls: false,
        go: false,
        off_cpu: false,
        alloc: false,
        unwind_rows: 0,
    };

    /// The maps to create small, with the size they get: a few entries for hash maps (their
    /// programs may still run, and find nothing), one page for ring buffers.
    pub fn unused_maps(self) -> Vec<(&'static str, u32)> {
        const ENTRIES: u32 = 64;
        const RING_BYTES: u32 = 4096;
        let mut maps = Vec::new();
        let network = [
            "CONNECTIONS",
            "SOCKET_ARGS",
            "THREAD_REQUESTS",
            "PROCESS_REQUESTS",
            "CLIENT_PARENTS",
            "LOG_RATES",
            "TCP_CTX_OUT",
            "TCP_CTX_IN",
        ];
        let tls = ["TLS_CALLS", "TLS_FDS", "GO_TLS_CALLS"];
        let go = [
            "GO_REQUESTS",
            "GO_NEWPROC",
            "GO_HTTP_CONNS",
            "GO_HTTP_WRITERS",
        ];
        let off_cpu = ["OFF_CPU_STARTS"];
        let alloc = ["ALLOC_COUNTDOWN", "ALLOC_PENDING", "ALLOC_LIVE"];
        for (used, names) in [
            (self.network, &network[..]),
            (self.network && self.tls, &tls[..]),
            (self.network && self.go, &go[..]),
            (self.off_cpu, &off_cpu[..]),
            (self.alloc, &alloc[..]),
        ] {
            if !used {
                maps.extend(names.iter().map(|name| (*name, ENTRIES)));
            }
        }
        if !self.network {
            maps.push(("SOCKET_EVENTS", RING_BYTES));
        }
        if !self.alloc {
            maps.push(("ALLOC_EVENTS", RING_BYTES));
        }
        if self.unwind_rows == 0 {
            maps.extend(
                ["UNWIND_PROCS", "DWARF_STACKS_0", "DWARF_STACKS_1"].map(|name| (name, ENTRIES)),
            );
            // An mmap-able array is at least a page.
            maps.push(("UNWIND_ROWS", 4096 / 8));
        }
        maps
    }
}

/// Loads the object: creates its maps (those of features not in `uses` at their smallest);
/// programs are loaded into the kernel one by one by their users.
pub fn load(uses: Uses) -> Result<Ebpf, EbpfError> {
    if OBJECT.is_empty() {
        return Err(EbpfError::NotEmbedded);
    }
    raise_memlock_limit();
    // Zero (goroutines not followed) keeps bpf_task_pt_regs out of the verified programs.
    let g_register = crate::net::goroutines::g_register().unwrap_or(0);
    let mut loader = EbpfLoader::new();
    loader.override_global("GO_G_REGISTER", &g_register, true);
    if uses.unwind_rows != 0 {
        loader.map_max_entries("UNWIND_ROWS", uses.unwind_rows);
    }
    for (name, size) in uses.unused_maps() {
        loader.map_max_entries(name, size);
    }
    loader.load(OBJECT).map_err(EbpfError::Load)
}

/// Before 5.11 BPF memory is charged against RLIMIT_MEMLOCK; lift it. Later kernels ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct and has no other effect on memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot raise RLIMIT_MEMLOCK; fine on kernels 5.11 and newer"
        );
    }
}

/// Takes a map out of the object as its typed form. Keep the returned value alive as long as any
/// program using the map runs: dropping it closes the map's fd, and programs loaded afterwards would
/// then fail with EBADF.
pub fn take_map<T: TryFrom<aya::maps::Map>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, EbpfError>
where
    T::Error: std::fmt::Display,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Map {
        name,
        message: "missing from the object".into(),
    })?;
    T::try_from(map).map_err(|e| EbpfError::Map {
        name,
        message: e.to_string(),
    })
}

/// A program of the object as its typed form (`TracePoint`, `FExit`, ...).
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::Program(name))?
        .try_into()
        .map_err(|_| EbpfError::Program(name))
}

/// Converts a program load failure, keeping the verifier's log out of the user-facing message.
pub fn rejected(name: &'static str, error: ProgramError) -> EbpfError {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            tracing::debug!(program = name, "verifier log:\n{verifier_log}");
            let verdict = verifier_verdict(&verifier_log.to_string());
            EbpfError::Rejected {
                name,
                message: format!(
                    "{io_error}{verdict} (run with RUST_LOG=debug for the verifier log)"
                ),
            }
        }
        other => EbpfError::Rejected {
            name,
            message: other.to_string(),
        },
    }
}

/// The verifier's last word, for the error message: the line that says why it refused and its
/// totals (`processed N insns (limit 1000000) ...`), which the full log buries under every
/// instruction it walked. Empty when the log has neither.
fn verifier_verdict(log: &str) -> String {
    let mut lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rev()
        .take(2)
        .collect();
    lines.reverse();
    if lines.is_empty() {
        return String::new();
    }
    format!(": verifier: {}", lines.join("; "))
}

/// Tries to load (not attach) the fentry probe program: the only honest test of fentry support.
pub fn probe_fentry(ebpf: &mut Ebpf) -> Availability {
    let btf = match aya::Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => return Availability::No(format!("no kernel BTF: {e}")),
    };
    let Some(program) = ebpf.program_mut("probe_fentry") else {
        return Availability::Unknown("probe program missing from the object".into());
    };
    let program: &mut FEntry = match program.try_into() {
        Ok(p) => p,
        Err(e) => return Availability::Unknown(e.to_string()),
    };
    match program.load("vfs_read", &btf) {
        Ok(()) => Availability::Yes,
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            tracing::debug!("fentry probe verifier log:\n{verifier_log}");
            Availability::No(format!("load failed: {io_error}"))
        }
        Err(e) => Availability::No(e.to_string()),
    }
}

/// Loads and attaches the kprobe probe program, then detaches it.
pub fn probe_kprobe(ebpf: &mut Ebpf) -> Availability {
    let Some(program) = ebpf.program_mut("probe_kprobe") else {
        return Availability::Unknown("probe program missing from the object".into());
    };
    let program: &mut KProbe = match program.try_into() {
        Ok(p) => p,
        Err(e) => return Availability::Unknown(e.to_string()),
    };
    if let Err(e) = program.load() {
        return Availability::No(format!("load failed: {e}"));
    }
    match program.attach("vfs_read", 0) {
        Ok(link) => {
            let _ = program.detach(link);
            Availability::Yes
        }
        Err(e) => Availability::No(format!("attach failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::verifier_verdict;

    #[test]
    fn the_verdict_is_the_logs_last_two_lines() {
        let log = "0: (bf) r6 = r1\n1: (85) call bpf_get_current_pid_tgid#14\n\
                   BPF program is too large. Processed 1000001 insn\n\
                   processed 1000001 insns (limit 1000000) max_states_per_insn 31 \
                   total_states 40000 peak_states 9000 mark_read 500\n\n";
        assert_eq!(
            verifier_verdict(log),
            ": verifier: BPF program is too large. Processed 1000001 insn; processed 1000001 \
             insns (limit 1000000) max_states_per_insn 31 total_states 40000 peak_states 9000 \
             mark_read 500"
        );
        assert_eq!(verifier_verdict(""), "");
        assert_eq!(verifier_verdict("\n  \n"), "");
    }
}
