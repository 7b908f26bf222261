//! Listing processes from procfs, for the scans that look at every process (connections open at
//! start-up, TLS libraries), and mapping the files they run.

use std::path::Path;

/// The ids of the processes under `proc_root` (`/proc`) now; empty when it cannot be read.
pub fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Maps `path` read-only, for parsing an ELF file without copying it into the agent's memory.
pub fn map_file(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the mapping is read-only and its users only parse it. The files mapped are
    // executables and shared libraries in use, which package managers and image layers replace
    // by renaming a new file over them, leaving this mapping's pages intact. A file truncated in
    // place while mapped would make the parse fault (SIGBUS): the risk every profiler that maps
    // binaries takes (blazesym maps the same files to symbolize them).
    unsafe { memmap2::Mmap::map(&file) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_listed() {
        let pids = super::pids(std::path::Path::new("/proc"));
        assert!(pids.contains(&std::process::id()));
        assert!(super::pids(std::path::Path::new("/nonexistent")).is_empty());
    }
}
