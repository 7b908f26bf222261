//! TLS in clear: finds the OpenSSL (and BoringSSL) libraries on this host and in its processes'
//! mount namespaces, and attaches the kernel's TLS probes (agent-ebpf `tls.rs`) to
//! `SSL_read`, `SSL_write` and their `_ex` variants in each, for every process that maps it. The
//! plaintext then goes through the socket programs' path, so TLS connections give the same spans
//! as their clear-text twins.
//!
//! Libraries are looked for when the agent starts, in the host's usual library directories and
//! in every running process's mappings (a container's libssl is reached through
//! `/proc/PID/root`; an image's layer is one file for all its containers, so one attachment
//! serves them all), then at every profile drain in the mappings of processes started since
//! (`TlsProbes::rescan`, run by the profiler's drain thread, which owns the eBPF object): a
//! container of a new image is probed within one `--profile-interval` of its start; the TLS
//! connections it opened meanwhile stay opaque. Go's `crypto/tls` is probed with the other Go
//! probes (`net::goroutines`). Not covered: rustls, Java's JSSE, statically linked OpenSSL
//! without symbols.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeLink, UProbeScope},
    },
};

use crate::ebpf::{EbpfError, program, rejected};
use crate::uprobes::symbol_file_offset;

/// Entry programs and the function each probes; the return program goes on all four.
const PROBES: [(&str, &str); 4] = [
    ("tls_write", "SSL_write"),
    ("tls_write_ex", "SSL_write_ex"),
    ("tls_read", "SSL_read"),
    ("tls_read_ex", "SSL_read_ex"),
];

/// Where distributions keep shared libraries, for the host's own libssl.
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
    "/lib",
];

/// A libssl found, and how the agent reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// Path the agent opens (through `/proc/PID/root` for a process's).
    pub path: PathBuf,
    /// (device, inode) of the file: one attachment per file.
    pub id: (u64, u64),
}

/// The TLS probes attached, held for the agent's lifetime (dropping detaches them).
pub struct TlsProbes {
    links: Vec<UProbeLink>,
    /// The libraries probed, as found.
    pub libraries: Vec<PathBuf>,
    /// Files looked at already (probed, or not probeable), by (device, inode).
    seen: HashSet<(u64, u64)>,
    /// Processes whose mappings were read, and how many times.
    scanned: HashMap<u32, u8>,
}

/// Loads the TLS programs and attaches them to every libssl found; `Err` when none could be.
pub fn attach(ebpf: &mut Ebpf) -> Result<TlsProbes, EbpfError> {
    let mut seen = HashSet::new();
    let mut scanned = HashMap::new();
    let libraries = find_libraries_into(&mut seen, &mut scanned, true);
    if libraries.is_empty() {
        return Err(EbpfError::Unavailable(
            "no OpenSSL library (libssl.so*) on this host or in its processes".into(),
        ));
    }
    for name in PROBES.iter().map(|p| p.0).chain(["tls_return", "tls_free"]) {
        let p: &mut UProbe = program(ebpf, name)?;
        p.load().map_err(|e| rejected(name, e))?;
    }
    let mut links = Vec::new();
    let mut probed = Vec::new();
    for lib in libraries {
        match attach_library(ebpf, &lib.path) {
            Ok(mut l) => {
                tracing::info!(library = %lib.path.display(), "TLS plaintext probes attached");
                links.append(&mut l);
                probed.push(lib.path);
            }
            Err(e) => tracing::warn!(library = %lib.path.display(), "TLS probes: {e}"),
        }
    }
    if probed.is_empty() {
        return Err(EbpfError::Unavailable(
            "no OpenSSL library could be probed".into(),
        ));
    }
    Ok(TlsProbes {
        links,
        libraries: probed,
        seen,
        scanned,
    })
}

impl crate::uprobes::Rescan for TlsProbes {
    /// Reads the mappings of processes started since the last scan and probes the libssl files
    /// among them not probed yet. Returns how many were attached.
    fn rescan(&mut self, ebpf: &mut Ebpf) -> usize {
        let found = find_libraries_into(&mut self.seen, &mut self.scanned, false);
        let mut attached = 0;
        for lib in found {
            match attach_library(ebpf, &lib.path) {
                Ok(mut l) => {
                    tracing::info!(library = %lib.path.display(), "TLS plaintext probes attached");
                    self.links.append(&mut l);
                    self.libraries.push(lib.path);
                    attached += 1;
                }
                Err(e) => tracing::warn!(library = %lib.path.display(), "TLS probes: {e}"),
            }
        }
        attached
    }
}

fn attach_library(ebpf: &mut Ebpf, path: &Path) -> Result<Vec<UProbeLink>, String> {
    let data = crate::procfs::map_file(path).map_err(|e| e.to_string())?;
    let file = object::File::parse(&*data).map_err(|e| e.to_string())?;
    let mut links = Vec::new();
    for (prog, function) in PROBES {
        // The `_ex` variants are OpenSSL 1.1.1+; BoringSSL has neither.
        let Some(offset) = symbol_file_offset(&file, function) else {
            if function.ends_with("_ex") {
                continue;
            }
            return Err(format!("no {function} in it"));
        };
        for name in [prog, "tls_return"] {
            links.push(attach_at(ebpf, name, function, offset, path)?);
        }
    }
    // Without it a freed object's socket lingers (an LRU entry) until reused or evicted.
    match symbol_file_offset(&file, "SSL_free") {
        Some(offset) => links.push(attach_at(ebpf, "tls_free", "SSL_free", offset, path)?),
        None => tracing::debug!(library = %path.display(), "no SSL_free to probe"),
    }
    Ok(links)
}

fn attach_at(
    ebpf: &mut Ebpf,
    name: &'static str,
    function: &str,
    offset: u64,
    path: &Path,
) -> Result<UProbeLink, String> {
    let p: &mut UProbe = program(ebpf, name).map_err(|e| e.to_string())?;
    let id = p
        .attach(offset, path, UProbeScope::AllProcesses)
        .map_err(|e| format!("attaching {name} to {function}: {e}"))?;
    p.take_link(id).map_err(|e| e.to_string())
}

/// Every distinct libssl: the host's, then those mapped by running processes.
pub fn find_libraries() -> Vec<Library> {
    find_libraries_into(&mut HashSet::new(), &mut HashMap::new(), true)
}

/// A process's mappings are read at this many scans at most: a library loaded late (Python
/// imports `ssl` when first needed) is found within its first few drains, and long-running
/// processes are not read again and again.
const READS_PER_PROCESS: u8 = 4;

/// The libssl files not in `seen` (which they join): the host's when `host`, then those mapped
/// by processes read fewer than [`READS_PER_PROCESS`] times (`scanned`, which forgets the
/// processes gone).
fn find_libraries_into(
    seen: &mut HashSet<(u64, u64)>,
    scanned: &mut HashMap<u32, u8>,
    host: bool,
) -> Vec<Library> {
    let mut found = Vec::new();
    for dir in LIBRARY_DIRS.iter().filter(|_| host) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_libssl(p))
            .collect();
        names.sort();
        for path in names {
            // Symlinks (libssl.so → libssl.so.3) resolve to the file they name.
            if let Ok(path) = std::fs::canonicalize(&path)
                && let Ok(meta) = std::fs::metadata(&path)
                && seen.insert((meta.dev(), meta.ino()))
            {
                found.push(Library {
                    path,
                    id: (meta.dev(), meta.ino()),
                });
            }
        }
    }
    let me = std::process::id();
    let mut running = HashSet::new();
    for pid in crate::procfs::pids(Path::new("/proc")) {
        running.insert(pid);
        let reads = scanned.entry(pid).or_insert(0);
        if pid == me || *reads >= READS_PER_PROCESS {
            continue;
        }
        *reads += 1;
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        // Keyed by the device and inode the mapping names: for a container's file that is the
        // image layer's own (overlayfs maps the real file), shared by every container of the
        // image, and for the host's the same as its metadata says.
        for (path, id) in libssl_mappings(&maps) {
            if seen.insert(id) {
                found.push(Library {
                    path: PathBuf::from(format!("/proc/{pid}/root{path}")),
                    id,
                });
            }
        }
    }
    // A pid that is gone may come back as another process: it is read again then.
    scanned.retain(|pid, _| running.contains(pid));
    found
}

/// For `loupe-agent doctor`: each libssl found, its OpenSSL version and the processes mapping
/// it now.
pub fn survey() -> Vec<(Library, String, Vec<u32>)> {
    let libraries = find_libraries();
    let mut users: HashMap<(u64, u64), Vec<u32>> = HashMap::new();
    for pid in crate::procfs::pids(Path::new("/proc")) {
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            for (_, id) in libssl_mappings(&maps) {
                users.entry(id).or_default().push(pid);
            }
        }
    }
    libraries
        .into_iter()
        .map(|lib| {
            let version = version_of(&lib.path);
            let pids = users.remove(&lib.id).unwrap_or_default();
            (lib, version, pids)
        })
        .collect()
}

/// `OpenSSL 3.0.19 …` from the libcrypto beside a libssl (libssl itself holds no version
/// string), else the soname's major version.
fn version_of(libssl: &Path) -> String {
    let name = libssl.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let suffix = name.strip_prefix("libssl.so").unwrap_or("");
    let crypto = libssl.with_file_name(format!("libcrypto.so{suffix}"));
    if let Ok(data) = crate::procfs::map_file(&crypto)
        && let Some(at) = data
            .windows(9)
            .position(|w| w.starts_with(b"OpenSSL ") && w[8].is_ascii_digit())
    {
        let text: String = data[at..]
            .iter()
            .take_while(|&&b| b.is_ascii_graphic() || b == b' ')
            .take(40)
            .map(|&b| char::from(b))
            .collect();
        return text;
    }
    match suffix.trim_start_matches('.') {
        "" => "OpenSSL (version unknown)".to_string(),
        major => format!("OpenSSL {major}.x"),
    }
}

fn is_libssl(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// The libssl files a process maps executable, with their (device, inode), from its maps.
fn libssl_mappings(maps: &str) -> Vec<(&str, (u64, u64))> {
    let mut out: Vec<(&str, (u64, u64))> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1).unwrap_or("");
        let dev = fields.nth(1).and_then(parse_device).unwrap_or(0);
        let inode = fields.next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let path = fields.next().unwrap_or("");
        if perms.contains('x') && is_libssl(Path::new(path)) && !out.iter().any(|(p, _)| *p == path)
        {
            out.push((path, (dev, inode)));
        }
    }
    out
}

/// `major:minor` in hex, as maps shows a device, to the `dev_t` `stat` reports.
fn parse_device(text: &str) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some(libc::makedev(major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_mappings_are_found_once() {
        let maps = "\
7f00-7f01 r--p 00000000 08:01 77 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f01-7f02 r-xp 00001000 08:01 77 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f02-7f03 r-xp 00001000 08:01 78 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f03-7f04 r-xp 00001000 08:01 77 /usr/lib/x86_64-linux-gnu/libssl.so.3
";
        assert_eq!(
            libssl_mappings(maps),
            [(
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                (libc::makedev(8, 1), 77)
            )]
        );
        // The device as stat reports it: this host's libc itself, from this process's maps.
        let me = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = me.lines().find(|l| l.contains("libc.so")).unwrap();
        let path = line.split_whitespace().last().unwrap();
        let meta = std::fs::metadata(path).unwrap();
        let dev = line
            .split_whitespace()
            .nth(3)
            .and_then(parse_device)
            .unwrap();
        assert_eq!(dev, meta.dev());
    }

    #[test]
    fn versions_come_from_the_libcrypto_beside() {
        let dir = tempfile::tempdir().unwrap();
        let ssl = dir.path().join("libssl.so.3");
        std::fs::write(&ssl, b"no version here").unwrap();
        assert_eq!(version_of(&ssl), "OpenSSL 3.x");
        std::fs::write(
            dir.path().join("libcrypto.so.3"),
            b"\x00junk\x00OpenSSL 3.0.19 27 Jan 2026\x00more",
        )
        .unwrap();
        assert_eq!(version_of(&ssl), "OpenSSL 3.0.19 27 Jan 2026");
    }

    #[test]
    fn this_hosts_libssl_is_found_once() {
        // Debian's libssl3 is installed wherever curl or Python's ssl module are.
        let libs = find_libraries();
        let ids: HashSet<_> = libs.iter().map(|l| l.id).collect();
        assert_eq!(ids.len(), libs.len(), "one entry per file: {libs:?}");
        if Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3").exists() {
            assert!(
                libs.iter().any(|l| l.path.ends_with("libssl.so.3")),
                "{libs:?}"
            );
        }
    }
}
