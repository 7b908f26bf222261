//! Listing processes from procfs, for the scans that look at every process (connections open at
//! start-up, TLS libraries).

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

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_listed() {
        let pids = super::pids(std::path::Path::new("/proc"));
        assert!(pids.contains(&std::process::id()));
        assert!(super::pids(std::path::Path::new("/nonexistent")).is_empty());
    }
}

/// Maps `path` read-only, for parsing an ELF file without copying it into the agent's memory.
pub fn map_file(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the mapping is read-only and private to this call's users, who only parse it. The
    // files mapped are executables and shared libraries in use, which the kernel does not let
    // anyone write (ETXTBSY for executables) and which package managers replace by renaming a
    // new file over them, leaving this mapping's pages intact.
    unsafe { memmap2::Mmap::map(&file) }
}
