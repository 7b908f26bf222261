//! The process table: what the profiler knows of each sampled process (service name, executable
//! mappings, open handles on its binaries), captured while the process runs, so that its samples can be
//! symbolized after it has exited. Binaries are held open by file descriptor and shared between the
//! processes that map them, so a deleted or container-private file stays readable.

use crate::k8s::ContainerIdentity;
use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Weak},
    time::Instant,
};

use loupe_collector::profile::Mapping;

/// Identity of a file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// An executable file some process maps, held open.
#[derive(Debug)]
pub struct BinaryFile {
    pub key: FileKey,
    /// Keeps the file readable after the process (or its container) is gone.
    _file: File,
    /// Path through our own descriptor, handed to the symbolizer.
    pub symbolize_path: PathBuf,
    /// The path the process saw, for display and pprof mappings.
    pub path: String,
    /// GNU build id, lowercase hex.
    pub build_id: Option<String>,
    /// Where its symbols are: in it, in a separate debug file, or missing (stripped).
    pub symbols: super::debug_file::Symbols,
}

/// One executable mapping of a process.
#[derive(Debug, Clone)]
pub struct MappedRange {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    /// `None` for mappings without a readable file ([vdso], anonymous JIT code, deleted files we could
    /// not open).
    pub binary: Option<Arc<BinaryFile>>,
    pub mapping: Arc<Mapping>,
}

/// What the profiler knows of one process.
#[derive(Debug, Clone)]
pub struct Process {
    /// `OTEL_SERVICE_NAME` from the environment, else the pod's names (see [`ProcessIdentity`]),
    /// else the executable's name.
    pub service: String,
    /// Series labels naming the process's pod (`namespace`, `pod`, `container`, `node`).
    pub labels: Vec<(String, String)>,
    /// The Kubernetes store's generation when the process was named in a container whose pod
    /// was unknown: it is named again once the store changes.
    pub pod_pending: Option<u64>,
    /// Executable mappings sorted by start address.
    pub maps: Vec<MappedRange>,
    pub kernel_thread: bool,
    /// When the process exited; it is dropped by the first drain that starts after that.
    pub exited_at: Option<Instant>,
    /// Set when /proc could not be read (the process was already gone): names come from `comm`.
    pub incomplete: bool,
}

impl Process {
    /// A process whose /proc entry has nothing more to tell (gone, or exited and not reaped):
    /// named from its `comm`, without mappings.
    fn gone(comm: &str) -> Process {
        Process {
            service: service_from_comm(comm),
            labels: Vec::new(),
            pod_pending: None,
            maps: Vec::new(),
            kernel_thread: false,
            exited_at: None,
            incomplete: true,
        }
    }

    /// The mapping holding `addr`, if any.
    pub fn mapping_for(&self, addr: u64) -> Option<&MappedRange> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}

/// PF_KTHREAD in a task's flags (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `pid` is a kernel thread, from the flags in /proc/PID/stat (None: unreadable).
fn is_kernel_thread(pid: u32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    kernel_thread_flag(&stat)
}

/// PF_KTHREAD from a /proc/PID/stat line: flags is the 7th field after the `)` that ends the
/// command name (which may itself hold spaces and parentheses).
fn kernel_thread_flag(stat: &str) -> Option<bool> {
    let (_, rest) = stat.rsplit_once(')')?;
    let flags: u64 = rest.split_ascii_whitespace().nth(6)?.parse().ok()?;
    Some(flags & PF_KTHREAD != 0)
}

/// Service name used for all kernel threads.
pub const KERNEL_SERVICE: &str = "kernel";

/// All processes the profiler has seen, bounded.
pub struct ProcessTable {
    procs: HashMap<u32, Arc<Process>>,
    binaries: HashMap<FileKey, Weak<BinaryFile>>,
    max_processes: usize,
    /// Processes not added because the table was full.
    pub rejected: u64,
}

impl ProcessTable {
    pub fn new(max_processes: usize) -> Self {
        ProcessTable {
            procs: HashMap::new(),
            binaries: HashMap::new(),
            max_processes,
            rejected: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Reads the process from /proc now and stores it (replacing what was known: it may have exec'd).
    pub fn refresh(&mut self, pid: u32, comm: &str) -> Arc<Process> {
        let read = self.read_process(pid, comm);
        // A process that is gone reads as incomplete: keep what was captured while it ran.
        if read.incomplete
            && let Some(known) = self.procs.get(&pid)
            && !known.incomplete
        {
            return known.clone();
        }
        let process = Arc::new(read);
        if self.procs.len() >= self.max_processes && !self.procs.contains_key(&pid) {
            self.evict_exited(Instant::now());
            if self.procs.len() >= self.max_processes {
                self.rejected += 1;
                return process;
            }
        }
        self.procs.insert(pid, process.clone());
        process
    }

    /// The known process, or a fresh read of it.
    pub fn get_or_refresh(&mut self, pid: u32, comm: &str) -> Arc<Process> {
        match self.procs.get_mut(&pid) {
            Some(p) => {
                // Named while its pod was unknown: name it again once the pods changed.
                if let Some(generation) = p.pod_pending
                    && crate::k8s::metadata().is_some_and(|m| m.generation() != generation)
                {
                    let process = Arc::make_mut(p);
                    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                    let id = identify(pid, exe_name(exe.as_deref()), comm);
                    process.pod_pending = id.pod_pending();
                    process.labels = id.series_labels();
                    process.service = id.service;
                }
                p.clone()
            }
            None => self.refresh(pid, comm),
        }
    }

    pub fn mark_exited(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            Arc::make_mut(p).exited_at = Some(Instant::now());
        }
    }

    /// Drops processes that exited before `before`: a drain that flipped slots at `before` has
    /// symbolized all their samples.
    pub fn evict_exited(&mut self, before: Instant) {
        self.procs
            .retain(|_, p| p.exited_at.is_none_or(|t| t >= before));
        self.binaries.retain(|_, b| b.strong_count() > 0);
    }

    /// Drops processes that no longer exist even though no exit event said so (events can be lost).
    pub fn evict_vanished(&mut self) {
        self.procs
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
        self.binaries.retain(|_, b| b.strong_count() > 0);
    }

    pub fn open_binaries(&self) -> usize {
        self.binaries
            .values()
            .filter(|b| b.strong_count() > 0)
            .count()
    }

    fn read_process(&mut self, pid: u32, comm: &str) -> Process {
        let maps_text = std::fs::read_to_string(format!("/proc/{pid}/maps"));
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let Ok(maps_text) = maps_text else {
            return Process::gone(comm);
        };
        // Kernel threads have no mappings and no executable; nor has a process that has exited
        // and not been reaped yet (a zombie), which keeps its own name.
        if maps_text.is_empty() && exe.is_none() {
            if is_kernel_thread(pid) != Some(true) {
                return Process::gone(comm);
            }
            return Process {
                service: KERNEL_SERVICE.to_string(),
                labels: Vec::new(),
                pod_pending: None,
                maps: Vec::new(),
                kernel_thread: true,
                exited_at: None,
                incomplete: false,
            };
        }
        let id = identify(pid, exe_name(exe.as_deref()), comm);
        let (labels, pod_pending) = (id.series_labels(), id.pod_pending());
        let service = id.service;
        let mut maps = Vec::new();
        for line in maps_text.lines() {
            let Some(entry) = parse_maps_line(line) else {
                continue;
            };
            if !entry.executable {
                continue;
            }
            let binary = entry
                .path
                .filter(|p| p.starts_with('/'))
                .and_then(|path| self.open_binary(pid, &entry, path));
            let mapping = Arc::new(Mapping {
                start: entry.start,
                limit: entry.end,
                file_offset: entry.offset,
                path: entry.path.unwrap_or("[anon]").to_string(),
                build_id: binary.as_ref().and_then(|b| b.build_id.clone()),
            });
            maps.push(MappedRange {
                start: entry.start,
                end: entry.end,
                file_offset: entry.offset,
                binary,
                mapping,
            });
        }
        maps.sort_by_key(|m| m.start);
        Process {
            service,
            labels,
            pod_pending,
            maps,
            kernel_thread: false,
            exited_at: None,
            incomplete: false,
        }
    }

    fn open_binary(
        &mut self,
        pid: u32,
        entry: &MapsEntry<'_>,
        path: &str,
    ) -> Option<Arc<BinaryFile>> {
        let clean = path.trim_end_matches(" (deleted)");
        let file = open_mapped(pid, entry, clean).ok()?;
        let meta = file.metadata().ok()?;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        if let Some(existing) = self.binaries.get(&key).and_then(Weak::upgrade) {
            return Some(existing);
        }
        if !is_elf(&file) {
            return None;
        }
        let symbolize_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let build_id = blazesym::helper::read_elf_build_id(&symbolize_path)
            .ok()
            .flatten()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let symbols =
            super::debug_file::locate(Path::new(&format!("/proc/{pid}/root")), clean, &file);
        if let Some(d) = symbols.debug_file() {
            tracing::debug!(binary = clean, debug_file = %d.found_at.display(), "symbols from a separate debug file");
        }
        let binary = Arc::new(BinaryFile {
            key,
            _file: file,
            symbolize_path,
            path: clean.to_string(),
            build_id,
            symbols,
        });
        self.binaries.insert(key, Arc::downgrade(&binary));
        Some(binary)
    }
}

/// Opens the file behind a mapping of `pid` (`clean`: its path without " (deleted)"). map_files
/// reaches the very file mapped (even deleted, even in another mount namespace); it needs
/// CAP_SYS_ADMIN. /proc/PID/root reaches it by name through the process's root.
pub fn open_mapped(pid: u32, entry: &MapsEntry<'_>, clean: &str) -> std::io::Result<File> {
    File::open(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        entry.start, entry.end
    ))
    .or_else(|_| File::open(format!("/proc/{pid}/root{clean}")))
}

fn is_elf(file: &File) -> bool {
    let mut magic = [0u8; 4];
    let mut f = file;
    f.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF"
}

fn service_from_comm(comm: &str) -> String {
    if comm.is_empty() {
        "unknown".to_string()
    } else {
        comm.to_string()
    }
}

/// How a running process is named in telemetry (shared with the span builder, so that spans,
/// logs and profiles of a process carry the same `service.name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// `OTEL_SERVICE_NAME` from the environment, else (in a known pod) the pod's label
    /// `app.kubernetes.io/name`, else its workload's name, else the container's name; else the
    /// executable's file name, else `comm`.
    pub service: String,
    /// The executable's file name (`process.executable.name`), when readable.
    pub executable: Option<String>,
    /// The process's container and pod, when Kubernetes is on and it runs in one.
    pub container: Option<ContainerIdentity>,
}

impl ProcessIdentity {
    /// OTLP resource attributes naming the container and pod (semantic conventions `k8s.*`,
    /// `container.id`); none outside containers.
    pub fn resource_attributes(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let Some(c) = &self.container else {
            return out;
        };
        out.push(("container.id", c.container_id.clone()));
        if let Some(m) = &c.meta {
            let pod = &m.pod;
            out.push(("k8s.namespace.name", pod.namespace.clone()));
            out.push(("k8s.pod.name", pod.name.clone()));
            out.push(("k8s.pod.uid", pod.uid.clone()));
            out.push(("k8s.container.name", m.container.clone()));
            out.push(("k8s.node.name", pod.node.clone()));
            if let Some((key, name)) = &pod.workload {
                out.push((key, name.clone()));
            }
        }
        out
    }

    /// Pyroscope series labels of the pod (the names `pyroscope.ebpf` users relabel to); none
    /// outside known pods.
    pub fn series_labels(&self) -> Vec<(String, String)> {
        let Some(m) = self.container.as_ref().and_then(|c| c.meta.as_ref()) else {
            return Vec::new();
        };
        vec![
            ("namespace".into(), m.pod.namespace.clone()),
            ("pod".into(), m.pod.name.clone()),
            ("container".into(), m.container.clone()),
            ("node".into(), m.pod.node.clone()),
        ]
    }

    /// The pod store's generation when the process is in a container whose pod is not known
    /// (yet): worth naming again once the store changes.
    pub fn pod_pending(&self) -> Option<u64> {
        let c = self.container.as_ref()?;
        if c.meta.is_some() {
            return None;
        }
        crate::k8s::metadata().map(|m| m.generation())
    }
}

/// Names process `pid` as the profiler does; `None` when it is gone.
pub fn process_identity(pid: u32) -> Option<ProcessIdentity> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let comm = match &exe {
        Some(_) => String::new(),
        None => std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim_end()
            .to_string(),
    };
    Some(identify(pid, exe_name(exe.as_deref()), &comm))
}

/// The file name of `/proc/PID/exe`'s target.
fn exe_name(exe: Option<&std::path::Path>) -> Option<String> {
    exe.and_then(|p| p.file_name()).map(|n| {
        n.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string()
    })
}

/// The identity of `pid` from its environment, its container and its executable's name (`comm`
/// when that is unknown).
fn identify(pid: u32, executable: Option<String>, comm: &str) -> ProcessIdentity {
    let container = crate::k8s::container_of(pid);
    let service = read_service_name(pid)
        .or_else(|| {
            let m = container.as_ref()?.meta.as_ref()?;
            m.pod
                .app_name
                .clone()
                .or_else(|| m.pod.workload.as_ref().map(|(_, name)| name.clone()))
                .or_else(|| Some(m.container.clone()))
        })
        .or_else(|| {
            let exe = executable.as_deref()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let main_comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            invoked_name(exe, main_comm.trim_end(), &cmdline)
        })
        .or_else(|| executable.clone())
        .unwrap_or_else(|| service_from_comm(comm));
    ProcessIdentity {
        service,
        executable,
        container,
    }
}

/// The name a multi-call executable was started under, when it is not the file's: Debian's
/// `redis-server` is a link to `redis-check-rdb`, busybox's applets are links to `busybox`. That
/// is `argv[0]`'s file name when the kernel's `comm` (the name exec was given, 15 bytes at most)
/// starts it; a process that renamed itself or rewrote its arguments keeps its file's name.
fn invoked_name(exe: &str, comm: &str, cmdline: &[u8]) -> Option<String> {
    let argv0 = cmdline.split(|&b| b == 0).next()?;
    // A process title written over the arguments (`redis-server *:6379`) keeps the name first.
    let argv0 = String::from_utf8_lossy(argv0);
    // … or a title `name: role` (nginx, PostgreSQL).
    let first = argv0.split_whitespace().next()?.trim_end_matches(':');
    let name = first.rsplit('/').next()?;
    (!comm.is_empty() && name != exe && name.starts_with(comm) && !name.is_empty())
        .then(|| name.to_string())
}

/// `OTEL_SERVICE_NAME` from /proc/PID/environ (read at most 1 MiB of it).
fn read_service_name(pid: u32) -> Option<String> {
    let file = File::open(format!("/proc/{pid}/environ")).ok()?;
    let mut buf = Vec::new();
    file.take(1 << 20).read_to_end(&mut buf).ok()?;
    service_name_from_environ(&buf)
}

pub fn service_name_from_environ(environ: &[u8]) -> Option<String> {
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"OTEL_SERVICE_NAME="))
        .map(|v| String::from_utf8_lossy(v).trim().to_string())
        .filter(|v| !v.is_empty())
}

/// One line of /proc/PID/maps.
#[derive(Debug, PartialEq)]
pub struct MapsEntry<'a> {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    pub offset: u64,
    pub path: Option<&'a str>,
}

/// Parses `start-end perms offset dev inode [path]`.
pub fn parse_maps_line(line: &str) -> Option<MapsEntry<'_>> {
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let _dev = field();
    let _inode = field();
    let path = rest.trim();
    let (start, end) = range.split_once('-')?;
    Some(MapsEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: (!path.is_empty()).then_some(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_call_executables_are_named_as_invoked() {
        // Debian's redis-server → redis-check-rdb, with its process title over its arguments.
        assert_eq!(
            invoked_name(
                "redis-check-rdb",
                "redis-server",
                b"redis-server *:6379\0\0"
            ),
            Some("redis-server".into())
        );
        assert_eq!(
            invoked_name("busybox", "httpd", b"/bin/httpd\0-f\0"),
            Some("httpd".into())
        );
        // comm holds 15 bytes of the name.
        assert_eq!(
            invoked_name("x", "a-very-long-nam", b"/usr/bin/a-very-long-name\0"),
            Some("a-very-long-name".into())
        );
        // The usual case, a script (comm is the script's name, argv[0] the interpreter), and a
        // process that renamed itself: the file's name stays.
        assert_eq!(invoked_name("java", "java", b"/usr/bin/java\0-jar\0"), None);
        assert_eq!(
            invoked_name("python3.11", "app.py", b"/usr/bin/python3\0app.py\0"),
            None
        );
        assert_eq!(
            invoked_name("nginx", "nginx", b"nginx: master process\0"),
            None
        );
        assert_eq!(invoked_name("redis-check-rdb", "", b"redis-server\0"), None);
        assert_eq!(invoked_name("x", "y", b""), None);
    }

    #[test]
    fn parses_maps_lines() {
        let e = parse_maps_line(
            "7f1c2a000000-7f1c2a1b5000 r-xp 00028000 fd:01 1835099                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(e.start, 0x7f1c2a000000);
        assert_eq!(e.end, 0x7f1c2a1b5000);
        assert!(e.executable);
        assert_eq!(e.offset, 0x28000);
        assert_eq!(e.path, Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));

        let anon = parse_maps_line("7ffd3b7e1000-7ffd3b802000 rw-p 00000000 00:00 0").unwrap();
        assert!(!anon.executable);
        assert_eq!(anon.path, None);

        let spaced =
            parse_maps_line("1000-2000 r-xp 00000000 08:01 42 /tmp/my app (deleted)").unwrap();
        assert_eq!(spaced.path, Some("/tmp/my app (deleted)"));

        assert!(parse_maps_line("garbage").is_none());
        assert!(parse_maps_line("").is_none());
    }

    #[test]
    fn finds_service_names_in_the_environment() {
        assert_eq!(
            service_name_from_environ(b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0HOME=/"),
            Some("checkout".into())
        );
        assert_eq!(service_name_from_environ(b"OTEL_SERVICE_NAME=\0"), None);
        assert_eq!(service_name_from_environ(b"MY_OTEL_SERVICE_NAME=x\0"), None);
        assert_eq!(service_name_from_environ(b""), None);
    }

    #[test]
    fn reads_this_process_and_shares_binaries() {
        let mut table = ProcessTable::new(16);
        let me = std::process::id();
        let p = table.refresh(me, "tests");
        assert!(!p.incomplete && !p.kernel_thread);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(p.service, exe.file_name().unwrap().to_string_lossy());
        // The address of a function of ours lies in a mapping of our own executable, held open.
        let addr = reads_this_process_and_shares_binaries as *const () as usize as u64;
        let m = p.mapping_for(addr).expect("own code is mapped");
        let b = m.binary.as_ref().expect("own binary opened");
        assert!(b.symbolize_path.exists());
        // A second read of the same process reuses the open binaries.
        let again = table.refresh(me, "tests");
        let b2 = again.mapping_for(addr).unwrap().binary.clone().unwrap();
        assert!(Arc::ptr_eq(b, &b2));
        assert!(p.mapping_for(0).is_none());
    }

    #[test]
    fn kernel_threads_are_told_from_zombies_by_their_flags() {
        // kthreadd's line, and a zombie's (no mappings, no executable either).
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 0 0 0";
        assert_eq!(kernel_thread_flag(kthreadd), Some(true));
        let zombie = "4242 (my (odd) app) Z 1 4242 4242 0 -1 4227084 1 0 0 0 0 0 0 0 20 0 1 0";
        assert_eq!(kernel_thread_flag(zombie), Some(false));
        assert_eq!(kernel_thread_flag("4242 (cut"), None);

        // A real zombie: a child that has exited and is not waited for yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        {
            assert!(Instant::now() < deadline, "the child never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let p = ProcessTable::new(4).refresh(pid, "true");
        assert!(!p.kernel_thread, "a zombie is not a kernel thread");
        assert!(p.incomplete);
        assert_eq!(p.service, "true");
        child.wait().unwrap();

        // And a real kernel thread, where this pid namespace shows the host's.
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            let k = ProcessTable::new(4).refresh(2, "kthreadd");
            assert!(k.kernel_thread);
            assert_eq!(k.service, KERNEL_SERVICE);
        }
    }

    #[test]
    fn identity_of_this_process_matches_the_profiler() {
        let me = std::process::id();
        let id = process_identity(me).unwrap();
        let p = ProcessTable::new(4).refresh(me, "tests");
        assert_eq!(id.service, p.service);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            id.executable.as_deref(),
            exe.file_name().and_then(|n| n.to_str())
        );
        assert_eq!(process_identity(u32::MAX), None);
    }

    #[test]
    fn a_vanished_process_keeps_its_comm() {
        let mut table = ProcessTable::new(16);
        // pid_max is at most 2^22, so this pid cannot exist.
        let p = table.refresh(u32::MAX - 1, "shortlived");
        assert!(p.incomplete);
        assert_eq!(p.service, "shortlived");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut table = ProcessTable::new(2);
        table.refresh(u32::MAX - 1, "a");
        table.refresh(u32::MAX - 2, "b");
        table.refresh(u32::MAX - 3, "c");
        assert_eq!(table.len(), 2);
        assert_eq!(table.rejected, 1);
        table.mark_exited(u32::MAX - 1);
        table.refresh(u32::MAX - 3, "c");
        assert_eq!(table.len(), 2, "an exited process makes room");
    }
}
