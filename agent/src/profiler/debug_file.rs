//! Separate debug files for stripped binaries. Distributions ship libc, libssl, mysqld or
//! redis-server without `.symtab` and put the symbols in a separate file (Debian's `-dbg` and
//! `-dbgsym` packages, under /usr/lib/debug), found by the binary's GNU build id
//! (`.build-id/ab/cdef….debug`) or its `.gnu_debuglink` name (beside the binary, in its `.debug/`
//! folder, or under /usr/lib/debug with the binary's folder). Without one, a frame in a static
//! function is `libc.so.6+0x27249`; with one, it is named.
//!
//! The debug file's symbols are at the binary's virtual addresses, but its file layout differs
//! (code sections are empty), so file offsets from the sampled stacks are turned into virtual
//! offsets with the binary's own load segments.
//!
//! Everything is looked up inside the process's root (/proc/PID/root): a container's debug files
//! are in its image, not on the node.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSection, ObjectSegment, read::ReadCache};

/// Where a debug file is looked for, relative to a root.
const DEBUG_DIR: &str = "/usr/lib/debug";

/// A load segment of the stripped binary: file range and the virtual address it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    offset: u64,
    size: u64,
    address: u64,
}

/// A stripped binary's separate debug file, held open.
#[derive(Debug)]
pub struct DebugFile {
    _file: File,
    /// Path through our own descriptor, handed to the symbolizer.
    pub symbolize_path: PathBuf,
    /// Where it was found (inside the process's root), for logs.
    pub found_at: PathBuf,
    loads: Vec<Load>,
}

impl DebugFile {
    /// Opens `path` as the debug file of a stripped binary laid out as `loads`: it must be an ELF
    /// file with a symbol table, and carry `build_id` when it has one.
    pub fn open(path: &Path, loads: Vec<Load>, build_id: Option<&[u8]>) -> Option<Self> {
        let file = File::open(path).ok()?;
        let theirs = facts(&file)?;
        let same_build = match (build_id, theirs.build_id.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        (theirs.has_symtab && same_build).then(|| DebugFile {
            symbolize_path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            _file: file,
            found_at: path.to_path_buf(),
            loads,
        })
    }

    /// The virtual offset of `file_offset` in the stripped binary: where the debug file's symbols
    /// are. `None` outside every load segment.
    pub fn virt_offset(&self, file_offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|l| file_offset >= l.offset && file_offset - l.offset < l.size)
            .map(|l| l.address + (file_offset - l.offset))
    }
}

/// What the binary says of itself: whether it has a symbol table, its build id, its debug link
/// and its load segments.
#[derive(Debug, Default, PartialEq)]
struct ElfFacts {
    has_symtab: bool,
    build_id: Option<Vec<u8>>,
    debuglink: Option<String>,
    loads: Vec<Load>,
}

fn facts(file: &File) -> Option<ElfFacts> {
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    Some(ElfFacts {
        has_symtab: elf.section_by_name(".symtab").is_some_and(|s| s.size() > 0),
        build_id: elf.build_id().ok().flatten().map(<[u8]>::to_vec),
        debuglink: elf
            .gnu_debuglink()
            .ok()
            .flatten()
            .and_then(|(name, _crc)| std::str::from_utf8(name).ok().map(str::to_string))
            .filter(|n| !n.is_empty() && !n.contains('/')),
        loads: elf
            .segments()
            .filter_map(|s| {
                let (offset, size) = s.file_range();
                (size > 0).then(|| Load {
                    offset,
                    size,
                    address: s.address(),
                })
            })
            .collect(),
    })
}

/// The places a debug file may be, in the order GDB looks: by build id, then by debug link
/// beside the binary, in its `.debug/` folder, and under /usr/lib/debug.
fn candidates(
    root: &Path,
    binary_path: &str,
    build_id: Option<&[u8]>,
    debuglink: Option<&str>,
) -> Vec<PathBuf> {
    let under_root = |p: &str| root.join(p.trim_start_matches('/'));
    let mut out = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        out.push(under_root(&format!(
            "{DEBUG_DIR}/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        )));
    }
    if let Some(name) = debuglink {
        let dir = Path::new(binary_path)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("/");
        out.push(under_root(&format!("{dir}/{name}")));
        out.push(under_root(&format!("{dir}/.debug/{name}")));
        out.push(under_root(&format!("{DEBUG_DIR}{dir}/{name}")));
    }
    out
}

/// Where a binary's symbols are.
#[derive(Debug)]
pub enum Symbols {
    /// In the binary itself (its symbol table), or nowhere we can read.
    InBinary,
    /// In a separate debug file installed in the process's root.
    Separate(DebugFile),
    /// Stripped, and no debug file installed: its load segments, for one fetched later.
    Missing(Vec<Load>),
}

impl Symbols {
    /// The separate debug file, when one was found.
    pub fn debug_file(&self) -> Option<&DebugFile> {
        match self {
            Symbols::Separate(d) => Some(d),
            _ => None,
        }
    }

    /// A stripped binary's load segments when no debug file was found.
    pub fn missing_loads(&self) -> Option<&[Load]> {
        match self {
            Symbols::Missing(loads) => Some(loads),
            _ => None,
        }
    }
}

/// Where `binary`'s symbols are, reading its ELF headers once: in itself, in a debug file
/// installed in `root` (the process's root) that is an ELF file with a symbol table and the
/// binary's build id, or missing.
pub fn locate(root: &Path, binary_path: &str, binary: &File) -> Symbols {
    let Some(own) = facts(binary) else {
        return Symbols::InBinary;
    };
    if own.has_symtab {
        return Symbols::InBinary;
    }
    for path in candidates(
        root,
        binary_path,
        own.build_id.as_deref(),
        own.debuglink.as_deref(),
    ) {
        // A debug link may name the binary itself (same folder, same name).
        if path == root.join(binary_path.trim_start_matches('/')) {
            continue;
        }
        if let Some(found) = DebugFile::open(&path, own.loads.clone(), own.build_id.as_deref()) {
            return Symbols::Separate(found);
        }
    }
    Symbols::Missing(own.loads)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const PROG: &str = "static int __attribute__((noinline)) hidden_work(int x) { return x * 3 + 1; }\n\
                        int main(int argc, char **argv) { return hidden_work(argc) > 100; }\n";

    /// Builds `prog` from C `source`, then splits it as Debian does: `prog.debug` (only the
    /// debug sections and symbols) and a stripped `prog` linking to it.
    fn split_binary(dir: &Path, source: &str) -> PathBuf {
        let src = dir.join("prog.c");
        std::fs::write(&src, source).expect("write source");
        let bin = dir.join("prog");
        assert!(
            Command::new("gcc")
                .args(["-O1", "-g", "-Wl,--build-id", "-o"])
                .arg(&bin)
                .arg(&src)
                .status()
                .expect("gcc")
                .success()
        );
        let debug = dir.join("prog.debug");
        let run = |cmd: &mut Command| assert!(cmd.status().expect("binutils").success());
        run(Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&bin)
            .arg(&debug));
        run(Command::new("strip").arg("--strip-all").arg(&bin));
        run(Command::new("objcopy")
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(&bin));
        bin
    }

    #[test]
    fn a_stripped_binary_finds_its_debug_file_by_link_and_by_build_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = split_binary(dir.path(), PROG);
        let file = File::open(&bin).expect("open");
        let own = facts(&file).expect("ELF");
        assert!(!own.has_symtab);
        assert_eq!(own.debuglink.as_deref(), Some("prog.debug"));
        let id = own.build_id.clone().expect("build id");

        // Beside the binary, through its debug link (root "/": the test's own files).
        let Symbols::Separate(found) = locate(Path::new("/"), bin.to_str().expect("utf-8"), &file)
        else {
            panic!("not found beside the binary");
        };
        assert_eq!(found.found_at, dir.path().join("prog.debug"));

        // Under a root's /usr/lib/debug/.build-id, as the -dbgsym packages install them.
        let root = tempfile::tempdir().expect("root");
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let by_id = root
            .path()
            .join(format!("usr/lib/debug/.build-id/{}", &hex[..2]));
        std::fs::create_dir_all(&by_id).expect("mkdir");
        std::fs::rename(
            dir.path().join("prog.debug"),
            by_id.join(format!("{}.debug", &hex[2..])),
        )
        .expect("move");
        let Symbols::Separate(found) = locate(root.path(), "/usr/bin/prog", &file) else {
            panic!("not found by build id");
        };
        assert!(found.found_at.starts_with(root.path()));

        // Its segments turn a file offset of the binary into the address its symbols use.
        let text = found
            .loads
            .iter()
            .find(|l| l.offset > 0)
            .expect("a load beyond 0");
        assert_eq!(found.virt_offset(text.offset + 4), Some(text.address + 4));
        assert_eq!(found.virt_offset(u64::MAX), None);
    }

    #[test]
    fn a_binary_with_symbols_or_a_mismatched_debug_file_gets_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("p.c");
        std::fs::write(&src, "int main(void) { return 0; }\n").expect("write");
        let bin = dir.path().join("p");
        assert!(
            Command::new("gcc")
                .args(["-O1", "-o"])
                .arg(&bin)
                .arg(&src)
                .status()
                .expect("gcc")
                .success()
        );
        let file = File::open(&bin).expect("open");
        assert!(facts(&file).expect("ELF").has_symtab);
        assert!(matches!(
            locate(Path::new("/"), bin.to_str().expect("utf-8"), &file),
            Symbols::InBinary
        ));

        // A debug file from another build (different build id) is refused.
        let stripped = split_binary(dir.path(), PROG);
        let other = tempfile::tempdir().expect("tempdir");
        let _ = split_binary(other.path(), "int main(void) { return 7; }\n");
        std::fs::copy(
            other.path().join("prog.debug"),
            dir.path().join("prog.debug"),
        )
        .expect("copy");
        let file = File::open(&stripped).expect("open");
        let Symbols::Missing(loads) =
            locate(Path::new("/"), stripped.to_str().expect("utf-8"), &file)
        else {
            panic!("a mismatched debug file was used");
        };
        assert!(!loads.is_empty());
    }
}
