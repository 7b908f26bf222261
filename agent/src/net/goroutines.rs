//! Goroutine-aware request tracking (the kernel side is `agent-ebpf/loupe-ebpf/src/goroutines.rs`):
//! finds the Go executables running on the host, attaches the runtime probes to each, and tells
//! the socket programs which processes are Go (`GO_PIDS`), so their syscalls are attributed to
//! goroutines rather than threads.
//!
//! The same scan of Go executables attaches the `crypto/tls` probes (TLS in clear, the kernel
//! side in `tls.rs`) to those that have `crypto/tls.(*Conn).Read` and `Write`, and lists their
//! processes in `GO_TLS_PIDS`: each feature on its own ([`GoFeatures`]), since TLS needs no
//! `bpf_task_pt_regs` and works on every supported kernel.
//!
//! What an executable needs: Go 1.17 or later on x86-64 (the register ABI, where R14 holds the
//! current goroutine and arguments and results travel in registers), read from its build
//! information, and the runtime's symbols `runtime.newproc1`, `runtime.goready` and
//! `runtime.goexit1`. A binary built with `-ldflags=-s` has no symbol table and is left to
//! thread-based tracking (and its TLS stays opaque), said once in the log.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeLink, UProbeScope},
    },
};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::ebpf::{EbpfError, program, rejected, take_map};
use crate::uprobes::{Rescan, probe_point};

/// The probe programs, and the runtime function each goes on (at its entry).
const ENTRY_PROBES: [(&str, &str); 3] = [
    ("go_newproc1", "runtime.newproc1"),
    ("go_goready", "runtime.goready"),
    ("go_goexit1", "runtime.goexit1"),
];
/// The program put on every return instruction of `runtime.newproc1`.
const RETURN_PROBE: (&str, &str) = ("go_newproc1_return", "runtime.newproc1");
/// The cheaper twin of [`RETURN_PROBE`], put on the call that queues the new goroutine right after
/// `runtime.newproc1` returned it (`runqput(pp, newg, true)` in `runtime.newproc`'s closure): a
/// call the kernel emulates at a probe, where a return instruction must be single-stepped (about
/// 12 µs against 0.45 µs on this project's CI host), once per goroutine created.
const QUEUE_PROBE: (&str, &str) = ("go_newproc_queued", "runtime.newproc.func1");
/// Probes on net/http's client, where the executable has it (at the entry).
const HTTP_PROBES: [(&str, &str); 2] = [
    ("go_http_round_trip", "net/http.(*persistConn).roundTrip"),
    ("go_http_write_loop", "net/http.(*persistConn).writeLoop"),
];

/// Go's `crypto/tls` probes (at the entry), and the program put on every return instruction of
/// `Read` (a write is sent at its entry).
const TLS_PROBES: [(&str, &str); 2] = [
    ("go_tls_write", "crypto/tls.(*Conn).Write"),
    ("go_tls_read", "crypto/tls.(*Conn).Read"),
];
const TLS_RETURN_PROBE: &str = "go_tls_return";

/// Offset of R14 in the x86-64 `struct pt_regs` (r15, r14, ...): where the socket programs find
/// the current goroutine. The value of the object's `GO_G_REGISTER` where goroutines can be
/// followed.
pub const X86_64_R14_OFFSET: u32 = 8;

/// `GO_G_REGISTER` for this host: R14's offset on x86-64 with a kernel that has
/// `bpf_task_pt_regs` (5.15), else 0 (why, in the `Err`).
pub fn g_register() -> Result<u32, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("goroutines are followed on x86-64 only".into());
    }
    match aya::util::KernelVersion::current() {
        Ok(v) if v >= aya::util::KernelVersion::new(5, 15, 0) => Ok(X86_64_R14_OFFSET),
        Ok(v) => Err(format!(
            "kernel {v} has no bpf_task_pt_regs (5.15): Go processes are tracked by thread"
        )),
        Err(e) => Err(format!("cannot read the kernel version: {e}")),
    }
}

/// A Go executable's version and where its probes go.
#[derive(Debug, PartialEq, Eq)]
pub struct GoRuntime {
    /// `go1.19.8` and the like.
    pub version: String,
    /// File offsets of the entry probes, in [`ENTRY_PROBES`] order.
    pub entries: [u64; 3],
    /// Where the new goroutine is learnt: the file offset of the call queueing it
    /// ([`QUEUE_PROBE`]) where the caller has the expected shape, else of `runtime.newproc1`'s
    /// return instructions.
    pub created: Created,
    /// File offsets of the net/http client probes, in [`HTTP_PROBES`] order, when the
    /// executable has that client.
    pub http: Option<[u64; 2]>,
    /// Where the `crypto/tls` probes go, when the executable has that package.
    pub tls: Option<GoTls>,
}

/// File offsets of the `crypto/tls` probes in one executable.
#[derive(Debug, PartialEq, Eq)]
pub struct GoTls {
    /// The entry probes, in [`TLS_PROBES`] order.
    pub entries: [u64; 2],
    /// Every return instruction of `Read`.
    pub returns: Vec<u64>,
}

/// Why an executable is not probed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotProbed {
    #[error("not a Go executable")]
    NotGo,
    #[error("{0}: the register ABI (Go 1.17+ on x86-64) is needed")]
    OldGo(String),
    #[error("{0} without symbols (built with -s): its goroutines are tracked by thread")]
    Stripped(String),
    #[error("{0}")]
    Unreadable(String),
}

/// Reads what the probes need from an executable's bytes.
pub fn inspect(data: &[u8]) -> Result<GoRuntime, NotProbed> {
    let file = object::File::parse(data).map_err(|e| NotProbed::Unreadable(e.to_string()))?;
    let version = file
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .and_then(build_version)
        .ok_or(NotProbed::NotGo)?;
    if file.architecture() != object::Architecture::X86_64
        || go_minor(&version).is_none_or(|minor| minor < 17)
    {
        return Err(NotProbed::OldGo(version));
    }
    let function = |name: &str| -> Result<(u64, &[u8]), NotProbed> {
        let sym = file
            .symbols()
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .ok_or_else(|| NotProbed::Stripped(version.clone()))?;
        let section = sym
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
            .ok_or_else(|| NotProbed::Unreadable(format!("{name} has no section")))?;
        let (section_offset, _) = section
            .file_range()
            .ok_or_else(|| NotProbed::Unreadable(format!("{name}'s section has no bytes")))?;
        let start = sym.address() - section.address();
        let code = section
            .data()
            .ok()
            .and_then(|d| d.get(start as usize..(start + sym.size()) as usize))
            .ok_or_else(|| NotProbed::Unreadable(format!("{name} lies outside its section")))?;
        Ok((section_offset + start, code))
    };
    let mut entries = [0u64; 3];
    for (slot, (_, name)) in entries.iter_mut().zip(ENTRY_PROBES) {
        let (offset, code) = function(name)?;
        *slot = offset + go_probe_point(code) as u64;
    }
    let address = |name: &str| {
        file.symbols()
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    };
    let queued = match (
        function(QUEUE_PROBE.1),
        address(QUEUE_PROBE.1),
        address("runtime.newproc1"),
        address("runtime.runqput"),
    ) {
        (Ok((offset, code)), Some(closure), Some(newproc1), Some(runqput)) => {
            queue_call(code, closure, newproc1, runqput).map(|at| offset + at as u64)
        }
        _ => None,
    };
    let created = match queued {
        Some(at) => Created::Queued(at),
        None => {
            let (offset, code) = function(RETURN_PROBE.1)?;
            let returns: Vec<u64> = return_offsets(code)
                .into_iter()
                .map(|r| offset + r as u64)
                .collect();
            if returns.is_empty() {
                return Err(NotProbed::Unreadable(
                    "runtime.newproc1 has no return instruction".into(),
                ));
            }
            Created::Returns(returns)
        }
    };
    let tls = match (function(TLS_PROBES[0].1), function(TLS_PROBES[1].1)) {
        (Ok((write, write_code)), Ok((read, read_code))) => {
            let returns: Vec<u64> = return_offsets(read_code)
                .into_iter()
                .map(|r| read + r as u64)
                .collect();
            // A read seen entering is also seen leaving.
            (!returns.is_empty()).then(|| GoTls {
                entries: [
                    write + go_probe_point(write_code) as u64,
                    read + go_probe_point(read_code) as u64,
                ],
                returns,
            })
        }
        _ => None,
    };
    let http = match (function(HTTP_PROBES[0].1), function(HTTP_PROBES[1].1)) {
        (Ok((a, code_a)), Ok((b, code_b))) => Some([
            a + go_probe_point(code_a) as u64,
            b + go_probe_point(code_b) as u64,
        ]),
        _ => None,
    };
    Ok(GoRuntime {
        version,
        entries,
        created,
        http,
        tls,
    })
}

/// Where the probes learn a new goroutine (see [`GoRuntime::created`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// The call queueing it, whose second argument (RBX) it is.
    Queued(u64),
    /// `runtime.newproc1`'s return instructions, its result (RAX).
    Returns(Vec<u64>),
}

/// The offset in `code` (a function at `address`) of the first call after a call of `newproc1`
/// if that call is of `runqput`; `None` when the code has another shape (then the return
/// instructions serve).
pub fn queue_call(code: &[u8], address: u64, newproc1: u64, runqput: u64) -> Option<usize> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut after_newproc1 = false;
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        if insn.mnemonic() == Mnemonic::Call {
            let target = insn.near_branch_target();
            if target == newproc1 {
                after_newproc1 = true;
            } else if after_newproc1 {
                return (target == runqput).then(|| (insn.ip() - address) as usize);
            }
        }
    }
    None
}

/// Where in a Go function to put its entry probe: on the jump of its stack check, which the
/// kernel emulates, rather than on an instruction it must single-step. A function with a big
/// frame first lowers a copy of the stack pointer into R12 (`lea -N(%rsp),%r12`), which no Go
/// argument register is, then compares that: the probe goes past both.
pub fn go_probe_point(code: &[u8]) -> usize {
    let lea = match code {
        // lea disp8(%rsp),%r12 / lea disp32(%rsp),%r12
        [0x4c, 0x8d, 0x64, 0x24, ..] => 5,
        [0x4c, 0x8d, 0xa4, 0x24, ..] => 8,
        _ => 0,
    };
    match code.get(lea..) {
        Some(rest) if lea > 0 => match probe_point(rest) {
            0 => 0,
            n => lea + n,
        },
        _ => probe_point(code),
    }
}

/// The offsets of the return instructions in a function's machine code (x86-64), decoded
/// instruction by instruction from its start, so a 0xc3 byte inside another instruction is never
/// taken for one.
pub fn return_offsets(code: &[u8]) -> Vec<usize> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            break;
        }
        if insn.mnemonic() == Mnemonic::Ret {
            out.push(insn.ip() as usize);
        }
    }
    out
}

/// The Go version recorded in a `.go.buildinfo` section: `"\xff Go buildinf:"`, pointer size,
/// flags, and (Go 1.18+, flag bit 2) the version as a varint-length-prefixed string at offset 32.
/// Older layouts (pointers to the strings) are reported as "before go1.18", which cannot tell
/// Go 1.17 (the first with the register ABI) from older: such binaries are not probed.
pub fn build_version(section: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !section.starts_with(MAGIC) {
        return None;
    }
    let flags = *section.get(15)?;
    if flags & 2 == 0 {
        return Some("before go1.18".into());
    }
    let mut len = 0usize;
    let mut at = 32;
    for shift in (0..35).step_by(7) {
        let b = *section.get(at)?;
        at += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            let text = section.get(at..at.checked_add(len)?)?;
            return std::str::from_utf8(text).ok().map(str::to_string);
        }
    }
    None
}

/// The minor version of `go1.N...`.
fn go_minor(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What the Go probes do: follow goroutines (the runtime probes and `GO_PIDS`), read
/// `crypto/tls` in clear (its probes and `GO_TLS_PIDS`), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoFeatures {
    pub goroutines: bool,
    pub tls: bool,
}

/// What one executable carries.
#[derive(Debug, Clone, Copy, Default)]
struct Probed {
    goroutines: bool,
    tls: bool,
}

/// A process map kept to the running processes that have one feature.
struct PidSet {
    map: BpfHashMap<MapData, u32, u8>,
    followed: HashSet<u32>,
}

impl PidSet {
    fn add(&mut self, pid: u32, what: &str) {
        if self.followed.contains(&pid) {
            return;
        }
        match self.map.insert(pid, 1, 0) {
            Ok(()) => {
                self.followed.insert(pid);
            }
            Err(e) => tracing::warn!(pid, "cannot follow this Go process ({what}): {e}"),
        }
    }

    fn retain(&mut self, running: &HashSet<u32>) {
        let gone: Vec<u32> = self
            .followed
            .iter()
            .copied()
            .filter(|pid| !running.contains(pid))
            .collect();
        for pid in gone {
            let _ = self.map.remove(&pid);
            self.followed.remove(&pid);
        }
    }
}

/// The Go probes attached, and the processes the socket programs treat as Go. Held for the
/// agent's lifetime (dropping detaches the probes).
pub struct GoProbes {
    links: Vec<UProbeLink>,
    /// `GO_PIDS`, when goroutines are followed.
    pids: Option<PidSet>,
    /// `GO_TLS_PIDS`, when `crypto/tls` is read in clear.
    tls_pids: Option<PidSet>,
    /// Executables looked at, by (device, inode): what they carry.
    seen: HashMap<(u64, u64), Probed>,
    /// Processes looked at already (Go or not).
    scanned: HashSet<u32>,
    processes: loupe_collector::telemetry::Gauge,
    executables: loupe_collector::telemetry::Gauge,
    tls_executables: loupe_collector::telemetry::Gauge,
}

/// Loads the programs of `features`, takes their process maps and probes the Go executables
/// running now.
pub fn attach(
    ebpf: &mut Ebpf,
    registry: &loupe_collector::telemetry::Registry,
    features: GoFeatures,
) -> Result<GoProbes, EbpfError> {
    let runtime = ENTRY_PROBES
        .iter()
        .chain(&HTTP_PROBES)
        .map(|p| p.0)
        .chain([RETURN_PROBE.0, QUEUE_PROBE.0])
        .filter(|_| features.goroutines);
    let tls = TLS_PROBES
        .iter()
        .map(|p| p.0)
        .chain([TLS_RETURN_PROBE])
        .filter(|_| features.tls);
    for name in runtime.chain(tls) {
        let p: &mut UProbe = program(ebpf, name)?;
        p.load().map_err(|e| rejected(name, e))?;
    }
    let pid_set = |ebpf: &mut Ebpf, name: &'static str| -> Result<PidSet, EbpfError> {
        Ok(PidSet {
            map: take_map(ebpf, name)?,
            followed: HashSet::new(),
        })
    };
    let mut probes = GoProbes {
        links: Vec::new(),
        pids: features
            .goroutines
            .then(|| pid_set(ebpf, "GO_PIDS"))
            .transpose()?,
        tls_pids: features
            .tls
            .then(|| pid_set(ebpf, "GO_TLS_PIDS"))
            .transpose()?,
        seen: HashMap::new(),
        scanned: HashSet::new(),
        processes: registry.gauge(
            "loupe_go_processes",
            "Go processes whose goroutines the socket programs follow.",
            &[],
        ),
        executables: registry.gauge(
            "loupe_go_executables_probed",
            "Go executables carrying the runtime probes (goroutine creation, wake-up, exit).",
            &[],
        ),
        tls_executables: registry.gauge(
            "loupe_go_tls_executables_probed",
            "Go executables carrying the crypto/tls probes (TLS read in clear).",
            &[],
        ),
    };
    probes.rescan(ebpf);
    Ok(probes)
}

impl crate::uprobes::Rescan for GoProbes {
    /// Probes the executables of processes started since the last scan, and keeps the process
    /// maps to the Go processes alive. Returns how many executables were probed.
    fn rescan(&mut self, ebpf: &mut Ebpf) -> usize {
        let me = std::process::id();
        let mut attached = 0;
        let mut running = HashSet::new();
        for pid in crate::procfs::pids(Path::new("/proc")) {
            running.insert(pid);
            if pid == me || !self.scanned.insert(pid) {
                continue;
            }
            let exe = PathBuf::from(format!("/proc/{pid}/exe"));
            // Kernel threads have no executable.
            let Ok(meta) = std::fs::metadata(&exe) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            let probed = match self.seen.get(&id) {
                Some(&probed) => probed,
                None => {
                    let probed = match self.probe(ebpf, &exe, pid) {
                        Ok((version, probed)) => {
                            tracing::info!(
                                pid,
                                %version,
                                goroutines = probed.goroutines,
                                tls = probed.tls,
                                "Go probes attached"
                            );
                            attached += 1;
                            probed
                        }
                        Err(NotProbed::NotGo) => Probed::default(),
                        Err(e) => {
                            tracing::info!(pid, "Go process: {e}");
                            Probed::default()
                        }
                    };
                    self.seen.insert(id, probed);
                    probed
                }
            };
            if let Some(set) = self.pids.as_mut().filter(|_| probed.goroutines) {
                set.add(pid, "goroutines");
            }
            if let Some(set) = self.tls_pids.as_mut().filter(|_| probed.tls) {
                set.add(pid, "crypto/tls");
            }
        }
        // A pid that is gone may come back as another process: it is looked at again then.
        self.scanned.retain(|pid| running.contains(pid));
        for set in self.pids.iter_mut().chain(self.tls_pids.iter_mut()) {
            set.retain(&running);
        }
        self.processes
            .set(self.pids.as_ref().map_or(0, |s| s.followed.len()) as i64);
        self.executables
            .set(self.seen.values().filter(|p| p.goroutines).count() as i64);
        self.tls_executables
            .set(self.seen.values().filter(|p| p.tls).count() as i64);
        attached
    }
}

impl GoProbes {
    /// Attaches the probes of the features on to the executable `exe` of process `pid` (all its
    /// processes); returns its Go version and what it carries now.
    fn probe(
        &mut self,
        ebpf: &mut Ebpf,
        exe: &Path,
        pid: u32,
    ) -> Result<(String, Probed), NotProbed> {
        let data =
            crate::procfs::map_file(exe).map_err(|e| NotProbed::Unreadable(e.to_string()))?;
        let runtime = inspect(&data)?;
        // Attach through the process's root, so a container's file is found from the host.
        let target = std::fs::read_link(exe)
            .ok()
            .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"))
            .map(|p| PathBuf::from(format!("/proc/{pid}/root{}", p.display())))
            .unwrap_or_else(|| exe.to_path_buf());
        let mut points: Vec<(&'static str, u64)> = Vec::new();
        if self.pids.is_some() {
            points.extend(
                ENTRY_PROBES
                    .iter()
                    .zip(runtime.entries)
                    .map(|(&(prog, _), offset)| (prog, offset)),
            );
            match &runtime.created {
                Created::Queued(at) => points.push((QUEUE_PROBE.0, *at)),
                Created::Returns(returns) => {
                    points.extend(returns.iter().map(|&at| (RETURN_PROBE.0, at)))
                }
            }
            points.extend(
                runtime
                    .http
                    .into_iter()
                    .flat_map(|h| HTTP_PROBES.iter().zip(h).map(|(&(prog, _), o)| (prog, o))),
            );
        }
        let goroutine_points = points.len();
        if let Some(tls) = runtime.tls.as_ref().filter(|_| self.tls_pids.is_some()) {
            points.extend(
                TLS_PROBES
                    .iter()
                    .zip(tls.entries)
                    .map(|(&(p, _), o)| (p, o)),
            );
            points.extend(tls.returns.iter().map(|&at| (TLS_RETURN_PROBE, at)));
        }
        if points.is_empty() {
            return Ok((runtime.version, Probed::default()));
        }
        // All or nothing: links dropped on an error detach what was attached.
        let mut links = Vec::new();
        for (prog, offset) in &points {
            let p: &mut UProbe =
                program(ebpf, prog).map_err(|e| NotProbed::Unreadable(e.to_string()))?;
            let link = p
                .attach(*offset, &target, UProbeScope::AllProcesses)
                .and_then(|id| p.take_link(id))
                .map_err(|e| NotProbed::Unreadable(format!("attaching {prog}: {e}")))?;
            links.push(link);
        }
        self.links.append(&mut links);
        Ok((
            runtime.version,
            Probed {
                goroutines: goroutine_points > 0,
                tls: points.len() > goroutine_points,
            },
        ))
    }
}

/// A Go executable running now, for `loupe-agent doctor`.
pub struct GoExecutable {
    pub path: PathBuf,
    /// What its probes would be, or why it is not probed.
    pub inspected: Result<GoRuntime, NotProbed>,
    /// Its processes now.
    pub pids: Vec<u32>,
}

/// For `loupe-agent doctor`: each Go executable running now, its version, whether it has
/// `crypto/tls` (and symbols), and its processes.
pub fn survey() -> Vec<GoExecutable> {
    let me = std::process::id();
    let mut by_file: HashMap<(u64, u64), GoExecutable> = HashMap::new();
    for pid in crate::procfs::pids(Path::new("/proc")) {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(meta) = std::fs::metadata(&exe) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let entry = by_file
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| GoExecutable {
                inspected: crate::procfs::map_file(&exe)
                    .map_err(|e| NotProbed::Unreadable(e.to_string()))
                    .and_then(|data| inspect(&data)),
                path: std::fs::read_link(&exe).unwrap_or(exe),
                pids: Vec::new(),
            });
        entry.pids.push(pid);
    }
    let mut out: Vec<GoExecutable> = by_file
        .into_values()
        .filter(|e| !matches!(e.inspected, Err(NotProbed::NotGo)))
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buildinfo(version: &str) -> Vec<u8> {
        let mut s = b"\xff Go buildinf:".to_vec();
        s.extend([8, 2]);
        s.resize(32, 0);
        s.push(version.len() as u8);
        s.extend(version.as_bytes());
        s.extend([0x10, b'x']);
        s
    }

    #[test]
    fn the_version_comes_from_the_build_information() {
        assert_eq!(
            build_version(&buildinfo("go1.19.8")).as_deref(),
            Some("go1.19.8")
        );
        let mut old = buildinfo("go1.16");
        old[15] = 0;
        assert_eq!(build_version(&old).as_deref(), Some("before go1.18"));
        assert_eq!(build_version(b"\x7fELF"), None);
        // A length running past the section is no version.
        let mut cut = buildinfo("go1.19.8");
        cut.truncate(36);
        assert_eq!(build_version(&cut), None);
        assert_eq!(go_minor("go1.19.8"), Some(19));
        assert_eq!(go_minor("go1.21rc2"), Some(21));
        assert_eq!(go_minor("before go1.18"), None);
        assert_eq!(go_minor("devel +abc"), None);
    }

    #[test]
    fn entry_probes_go_on_the_stack_check_jump() {
        // net/http.(*persistConn).roundTrip, Go 1.19: lea -0x230(%rsp),%r12;
        // cmp 0x10(%r14),%r12; jbe rel32
        let round_trip = [
            0x4c, 0x8d, 0xa4, 0x24, 0xd0, 0xfd, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
        ];
        assert_eq!(go_probe_point(&round_trip), 12);
        // writeLoop: lea -0x70(%rsp),%r12; cmp 0x10(%r14),%r12; jbe rel32
        let write_loop = [
            0x4c, 0x8d, 0x64, 0x24, 0x90, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
        ];
        assert_eq!(go_probe_point(&write_loop), 9);
        // runtime.goready: cmp 0x10(%r14),%rsp; jbe rel8
        assert_eq!(go_probe_point(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x58]), 4);
        // A lea not followed by the check stays the entry; so does a nosplit function.
        assert_eq!(go_probe_point(&[0x4c, 0x8d, 0x64, 0x24, 0x90, 0x90]), 0);
        assert_eq!(go_probe_point(&[0x48, 0x83, 0xec, 0x18]), 0);
    }

    #[test]
    fn the_new_goroutine_is_learnt_at_the_call_queueing_it() {
        // runtime.newproc.func1 of Go 1.19, from 0x441780: call newproc1 (0x4417e0);
        // mov 0x30(%r14),%rdx; mov 0xd0(%rdx),%rdx; mov %rax,%rbx; mov $1,%ecx; mov %rdx,%rax;
        // nopl; call runqput (0x4458e0)
        let code: Vec<u8> = [
            &[0xe8, 0x5b, 0x00, 0x00, 0x00][..],
            &[0x49, 0x8b, 0x56, 0x30],
            &[0x48, 0x8b, 0x92, 0xd0, 0x00, 0x00, 0x00],
            &[0x48, 0x89, 0xc3],
            &[0xb9, 0x01, 0x00, 0x00, 0x00],
            &[0x48, 0x89, 0xd0],
            &[0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0xe8, 0x3b, 0x41, 0x00, 0x00],
        ]
        .concat();
        assert_eq!(queue_call(&code, 0x441780, 0x4417e0, 0x4458e0), Some(32));
        // Another call right after newproc1's: another shape, the return instructions serve.
        let mut other = code.clone();
        other[32..37].copy_from_slice(&[0xe8, 0, 0, 0, 0]);
        assert_eq!(queue_call(&other, 0x441780, 0x4417e0, 0x4458e0), None);
        // No newproc1 call at all.
        assert_eq!(queue_call(&code[5..], 0x441785, 0x4417e0, 0x4458e0), None);
    }

    #[test]
    fn return_instructions_are_found_by_decoding_not_by_byte() {
        // mov $0xc3,%eax (the immediate holds a 0xc3 byte); ret; int3; nop; ret
        let code = [0xb8, 0xc3, 0, 0, 0, 0xc3, 0xcc, 0x90, 0xc3];
        assert_eq!(return_offsets(&code), [5, 8]);
        // ret imm16 is a return too.
        assert_eq!(return_offsets(&[0xc2, 0x08, 0x00]), [0]);
        assert!(return_offsets(&[0x90, 0x90]).is_empty());
    }

    #[test]
    fn a_non_go_executable_is_not_probed() {
        let me = std::fs::read("/proc/self/exe").expect("own executable");
        assert_eq!(inspect(&me), Err(NotProbed::NotGo));
    }
}
