//! Symbolization: user addresses with blazesym, as file offsets into binaries we hold open (so it
//! works after the process exited); kernel addresses through our own compact copy of kallsyms
//! (`kallsyms.rs`), read once rather than at every drain. Results are cached per (binary, offset)
//! and per kernel address; the caches are bounded and cleared whole when full.

use std::{collections::HashMap, path::Path, sync::Arc};

use blazesym::symbolize::{
    self, Symbolized,
    source::{Elf, Source},
};
use loupe_collector::profile::FrameLine;

use super::debug_file::DebugFile;
use super::debuginfod::Debuginfod;
use super::kallsyms::{KernelSymbols, KernelTable};
use super::procs::{BinaryFile, FileKey};

/// The lines of one location: innermost inlined function first, the containing function last.
pub type Lines = Arc<[FrameLine]>;

/// Parsed symbol tables are kept across drains while the symbol sections of the binaries parsed
/// since the last release stay under this many bytes (by default; the agent sets it from its
/// memory plan): a new address in a binary parsed recently (the agent's own, sampled while it
/// drains, or any busy service's) then costs a lookup, not a parse of its whole table.
const PARSED_SYMBOLS_BUDGET: u64 = 32 << 20;

/// Parsed tables are released after this many drains however few they are, so that binaries no
/// longer sampled do not stay mapped.
const KEEP_PARSED_DRAINS: u32 = 20;

/// Counters the metrics report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SymbolizerStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Addresses that could not be resolved to a function name.
    pub failures: u64,
    /// Times a full cache was cleared.
    pub cache_resets: u64,
    /// Times the kernel's symbol table was read.
    pub kernel_table_loads: u64,
    /// Times the parsed symbol tables were released.
    pub releases: u64,
}

pub struct Symbolizer {
    inner: symbolize::Symbolizer,
    /// Debug files of stripped binaries fetched on demand, when configured.
    debuginfod: Option<Arc<Debuginfod>>,
    /// Debug files fetched from debuginfod and opened, by build id.
    fetched: HashMap<String, Arc<DebugFile>>,
    /// Read DWARF (file, line, inlined functions) when present, not only ELF symbol tables.
    debuginfo: bool,
    user: HashMap<(FileKey, u64), Lines>,
    kernel: HashMap<u64, Lines>,
    /// The kernel's function symbols, kept across drains (about 2 MB).
    kernel_table: KernelTable,
    /// Files parsed by blazesym since the last release, by device and inode (a path through
    /// /proc/self/fd may name another file once its descriptor is reused, and blazesym then
    /// parses that one too), with the size of their symbol sections.
    parsed: HashMap<(u64, u64), u64>,
    drains_since_release: u32,
    /// Bytes of symbol sections kept parsed across drains at most.
    parsed_budget: u64,
    max_entries: usize,
    pub stats: SymbolizerStats,
}

impl Symbolizer {
    /// `debuginfo`: also read DWARF (file, line, inlined calls), following debug links into
    /// /usr/lib/debug. Richer frames, but parsing DWARF costs far more CPU and memory than symbol
    /// tables, so it is off by default (`--profile-debuginfo`).
    pub fn new(max_entries: usize, debuginfo: bool) -> Self {
        Symbolizer {
            inner: Self::fresh_inner(debuginfo),
            debuginfod: None,
            fetched: HashMap::new(),
            debuginfo,
            user: HashMap::new(),
            kernel: HashMap::new(),
            kernel_table: KernelTable::default(),
            parsed: HashMap::new(),
            drains_since_release: 0,
            parsed_budget: PARSED_SYMBOLS_BUDGET,
            max_entries,
            stats: SymbolizerStats::default(),
        }
    }

    /// Keeps parsed symbol tables across drains while they hold at most `bytes` of symbols.
    pub fn with_parsed_budget(mut self, bytes: u64) -> Self {
        self.parsed_budget = bytes;
        self
    }

    /// Fetches debug files of stripped binaries from `debuginfod` (used from a later interval on).
    pub fn with_debuginfod(mut self, debuginfod: Arc<Debuginfod>) -> Self {
        self.debuginfod = Some(debuginfod);
        self
    }

    /// A stripped binary's debug file from debuginfod, once fetched; asks for it otherwise.
    /// Also says whether one may still come (results are then not cached).
    fn fetched_debug(&mut self, binary: &BinaryFile) -> (Option<Arc<DebugFile>>, bool) {
        let (Some(d), Some(loads), Some(id)) = (
            &self.debuginfod,
            binary.symbols.missing_loads(),
            &binary.build_id,
        ) else {
            return (None, false);
        };
        if let Some(f) = self.fetched.get(id) {
            return (Some(f.clone()), false);
        }
        d.request(id);
        // Whether the fetch is still going, read before looking at the cache: a fetch writes
        // its file before it counts as done, so "done" here means the file, if any, is there.
        let pending = d.pending(id);
        if let Some(path) = d.cached(id)
            && let Some(f) = DebugFile::open(&path, loads.to_vec(), None)
        {
            let f = Arc::new(f);
            self.fetched.insert(id.clone(), f.clone());
            return (Some(f), false);
        }
        (None, pending)
    }

    fn fresh_inner(debuginfo: bool) -> symbolize::Symbolizer {
        // Without debuginfo, `Elf::debug_syms` is false too, so debug links are not followed.
        symbolize::Symbolizer::builder()
            .enable_code_info(debuginfo)
            .enable_inlined_fns(debuginfo)
            .enable_demangling(true)
            .enable_auto_reload(true)
            .build()
    }

    /// Called after every drain. Releases blazesym's parsed symbol tables and file mappings,
    /// keeping the resolved-address caches, once the binaries parsed since the last release hold
    /// more than the parsed budget ([`PARSED_SYMBOLS_BUDGET`] by default) of symbols (a
    /// compiler's can be tens of MB) or after [`KEEP_PARSED_DRAINS`] drains. The agent's memory is then bounded by the budget or one
    /// interval's binaries, whichever is more, rather than by every binary the host ever ran;
    /// and a busy binary's table is parsed once per release, not at every drain that brings one
    /// of its addresses.
    pub fn end_drain(&mut self) {
        self.drains_since_release += 1;
        let bytes = self.parsed.values().fold(0u64, |a, b| a.saturating_add(*b));
        if bytes > self.parsed_budget || self.drains_since_release >= KEEP_PARSED_DRAINS {
            self.release_parsed();
        }
    }

    fn release_parsed(&mut self) {
        self.inner = Self::fresh_inner(self.debuginfo);
        self.parsed.clear();
        self.drains_since_release = 0;
        self.stats.releases += 1;
    }

    /// Notes that blazesym parses `path`, with the size of its symbol sections (DWARF too when it
    /// is read).
    fn note_parsed(&mut self, path: &Path) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let key = (meta.dev(), meta.ino());
        if !self.parsed.contains_key(&key) {
            let bytes = symbol_bytes(path, self.debuginfo);
            self.parsed.insert(key, bytes);
        }
    }

    /// Drops every cache, including blazesym's parsed ELF and DWARF data; called when caches fill up
    /// so memory stays bounded on nodes running many different binaries.
    fn reset_if_full(&mut self) {
        if self.user.len() + self.kernel.len() >= self.max_entries {
            self.user.clear();
            self.kernel.clear();
            self.release_parsed();
            self.stats.cache_resets += 1;
        }
    }

    /// Symbolizes file offsets within `binary`; one result per offset, in order.
    pub fn user(&mut self, binary: &BinaryFile, offsets: &[u64]) -> Vec<Lines> {
        self.reset_if_full();
        let mut missing: Vec<u64> = offsets
            .iter()
            .copied()
            .filter(|o| !self.user.contains_key(&(binary.key, *o)))
            .collect();
        self.stats.cache_hits += (offsets.len() - missing.len()) as u64;
        missing.sort_unstable();
        missing.dedup();
        self.stats.cache_misses += missing.len() as u64;
        let (fetched, pending) = if binary.symbols.debug_file().is_none() && !missing.is_empty() {
            self.fetched_debug(binary)
        } else {
            (None, false)
        };
        // Resolved now but not cached while a debug file may still arrive.
        let mut fresh: HashMap<u64, Lines> = HashMap::new();
        if !missing.is_empty() {
            let resolved = match binary.symbols.debug_file().or(fetched.as_deref()) {
                // A stripped binary with a debug file: its symbols, at virtual offsets.
                Some(debug) => {
                    let virt: Vec<u64> = missing
                        .iter()
                        .map(|o| debug.virt_offset(*o).unwrap_or(u64::MAX))
                        .collect();
                    let mut elf = Elf::new(&debug.symbolize_path);
                    elf.debug_syms = self.debuginfo;
                    self.note_parsed(&debug.symbolize_path);
                    self.inner
                        .symbolize(&Source::Elf(elf), symbolize::Input::VirtOffset(&virt))
                }
                None => {
                    let mut elf = Elf::new(&binary.symbolize_path);
                    elf.debug_syms = self.debuginfo;
                    self.note_parsed(&binary.symbolize_path);
                    self.inner
                        .symbolize(&Source::Elf(elf), symbolize::Input::FileOffset(&missing))
                }
            };
            let module = short_name(&binary.path);
            let mut results: Vec<(u64, Lines)> = Vec::with_capacity(missing.len());
            match resolved {
                Ok(symbols) => {
                    for (offset, sym) in missing.iter().zip(symbols.iter()) {
                        let lines = to_lines(sym).unwrap_or_else(|| {
                            self.stats.failures += 1;
                            unknown_in(module, *offset)
                        });
                        results.push((*offset, lines));
                    }
                }
                Err(e) => {
                    tracing::debug!(binary = %binary.path, error = %e, "symbolization failed");
                    self.stats.failures += missing.len() as u64;
                    for offset in &missing {
                        results.push((*offset, unknown_in(module, *offset)));
                    }
                }
            }
            for (offset, lines) in results {
                if pending {
                    fresh.insert(offset, lines);
                } else {
                    self.user.insert((binary.key, offset), lines);
                }
            }
        }
        offsets
            .iter()
            .map(|o| {
                fresh
                    .get(o)
                    .or_else(|| self.user.get(&(binary.key, *o)))
                    .cloned()
                    .unwrap_or_else(|| unknown_in(short_name(&binary.path), *o))
            })
            .collect()
    }

    /// Symbolizes kernel addresses; one result per address, in order. An address outside every
    /// known function is `[kernel]`, counted as a failure and not cached: a module or BPF program
    /// loaded since the table was read is named once the table is read again.
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Lines> {
        self.reset_if_full();
        let mut missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.kernel.contains_key(a))
            .collect();
        self.stats.cache_hits += (addrs.len() - missing.len()) as u64;
        missing.sort_unstable();
        missing.dedup();
        self.stats.cache_misses += missing.len() as u64;
        let mut unknown: Vec<u64> = Vec::new();
        if !missing.is_empty() {
            let loads = self.kernel_table.loads;
            let resolve =
                |symbols: Option<&KernelSymbols>, addrs: &[u64], unknown: &mut Vec<u64>| {
                    let mut found = Vec::with_capacity(addrs.len());
                    for &a in addrs {
                        match symbols.and_then(|t| t.resolve(a)) {
                            Some(name) => found.push((a, single(name))),
                            None => unknown.push(a),
                        }
                    }
                    found
                };
            let mut found = resolve(self.kernel_table.current(), &missing, &mut unknown);
            if !unknown.is_empty() && self.kernel_table.reload_for_unknown() {
                let again = std::mem::take(&mut unknown);
                found.extend(resolve(self.kernel_table.loaded(), &again, &mut unknown));
            }
            if self.kernel_table.loads != loads {
                // Modules may have moved: what was cached from the old table goes.
                self.kernel.clear();
                self.stats.kernel_table_loads += self.kernel_table.loads - loads;
            }
            self.stats.failures += unknown.len() as u64;
            self.kernel.extend(found);
        }
        addrs
            .iter()
            .map(|a| {
                self.kernel
                    .get(a)
                    .cloned()
                    .unwrap_or_else(|| single("[kernel]"))
            })
            .collect()
    }

    /// Heap bytes of the kernel's symbol table.
    pub fn kernel_table_bytes(&self) -> usize {
        self.kernel_table.bytes()
    }
}

/// The bytes blazesym reads to symbolize in `path`: its symbol and string tables, and its DWARF
/// sections when `debuginfo`. Only the section headers are read. An unreadable file counts as
/// more than any budget, so that it is released at the next drain.
fn symbol_bytes(path: &Path, debuginfo: bool) -> u64 {
    use object::{Object, ObjectSection, read::ReadCache};
    let Ok(file) = std::fs::File::open(path) else {
        return u64::MAX;
    };
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return u64::MAX;
    };
    elf.sections()
        .filter(|s| {
            let name = s.name().unwrap_or("");
            matches!(
                name,
                ".symtab" | ".strtab" | ".dynsym" | ".dynstr" | ".gopclntab"
            ) || (debuginfo && name.starts_with(".debug_"))
        })
        .map(|s| s.size())
        .sum()
}

fn to_lines(sym: &Symbolized<'_>) -> Option<Lines> {
    let Symbolized::Sym(sym) = sym else {
        return None;
    };
    let file_line = |info: Option<&symbolize::CodeInfo<'_>>| match info {
        Some(ci) => (Some(ci.to_path().to_string_lossy().into_owned()), ci.line),
        None => (None, None),
    };
    let mut lines = Vec::with_capacity(sym.inlined.len() + 1);
    // blazesym lists inlined calls outermost first; pprof wants the innermost first.
    for inlined in sym.inlined.iter().rev() {
        let (file, line) = file_line(inlined.code_info.as_ref());
        lines.push(FrameLine {
            function: inlined.name.to_string(),
            file,
            line,
        });
    }
    let (file, line) = file_line(sym.code_info.as_deref());
    lines.push(FrameLine {
        function: sym.name.to_string(),
        file,
        line,
    });
    Some(lines.into())
}

fn short_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A frame in a known binary without a symbol: `libfoo.so+0x1234`, which still tells where to look.
fn unknown_in(module: &str, offset: u64) -> Lines {
    single(&format!("{module}+{offset:#x}"))
}

pub fn single(function: &str) -> Lines {
    Arc::from(vec![FrameLine {
        function: function.to_string(),
        file: None,
        line: None,
    }])
}

#[cfg(test)]
mod tests {
    use super::super::procs::ProcessTable;
    use super::*;

    #[inline(never)]
    #[unsafe(no_mangle)]
    pub extern "C" fn loupe_symbolize_test_target(x: u64) -> u64 {
        std::hint::black_box(x.wrapping_mul(31).rotate_left(7))
    }

    /// This test binary, opened as the profiler opens binaries, and the file offset of
    /// `loupe_symbolize_test_target` plus `delta`.
    fn own_target(delta: u64) -> (Arc<BinaryFile>, u64) {
        let mut table = ProcessTable::new(4);
        let me = table.refresh(std::process::id(), "test");
        let addr = loupe_symbolize_test_target as *const () as usize as u64 + delta;
        let m = me.mapping_for(addr).expect("mapped");
        let binary = m.binary.clone().expect("opened");
        (binary, addr - m.start + m.file_offset)
    }

    #[test]
    fn symbolizes_our_own_function_and_caches_it() {
        let (binary, offset) = own_target(1);

        let mut s = Symbolizer::new(1000, true);
        let first = s.user(&binary, &[offset, offset]);
        assert_eq!(first.len(), 2);
        assert_eq!(
            first[0].last().unwrap().function,
            "loupe_symbolize_test_target"
        );
        assert_eq!(
            s.stats.cache_misses, 1,
            "duplicates in one call are resolved once"
        );
        let again = s.user(&binary, &[offset]);
        assert!(Arc::ptr_eq(&first[0], &again[0]), "served from the cache");
        assert_eq!(s.stats.cache_hits, 1);
        assert_eq!(s.stats.failures, 0);
    }

    #[test]
    fn parsed_tables_outlive_a_drain_until_their_budget_or_age() {
        let (binary, offset) = own_target(0);
        let mut s = Symbolizer::new(1000, false);
        s.user(&binary, &[offset]);
        let bytes = s.parsed.values().next().copied();
        assert!(
            bytes.is_some_and(|b| b > 0 && b < PARSED_SYMBOLS_BUDGET),
            "symbol sections of this test binary: {bytes:?}"
        );
        for _ in 1..KEEP_PARSED_DRAINS {
            s.end_drain();
        }
        assert_eq!(s.stats.releases, 0, "kept while under budget and young");
        s.end_drain();
        assert_eq!(
            s.stats.releases, 1,
            "released after KEEP_PARSED_DRAINS drains"
        );
        assert!(s.parsed.is_empty());
        // Over budget: released at the end of the drain that parsed it.
        s.parsed.insert((0, 0), PARSED_SYMBOLS_BUDGET + 1);
        s.end_drain();
        assert_eq!(s.stats.releases, 2);
        // DWARF counts when it is read.
        let path = &binary.symbolize_path;
        assert!(symbol_bytes(path, true) >= symbol_bytes(path, false));
    }

    #[test]
    fn unknown_offsets_name_the_module() {
        let (binary, _) = own_target(0);
        let mut s = Symbolizer::new(1000, true);
        // Far past the end of any section.
        let lines = s.user(&binary, &[u64::MAX / 2]);
        assert!(lines[0][0].function.contains("+0x"), "{:?}", lines[0]);
        assert_eq!(s.stats.failures, 1);
    }

    #[test]
    fn a_full_cache_is_reset() {
        let (binary, offset) = own_target(0);
        let mut s = Symbolizer::new(2, false);
        s.user(&binary, &[offset, offset + 1]);
        assert_eq!(s.stats.cache_resets, 0);
        s.user(&binary, &[offset]);
        assert_eq!(s.stats.cache_resets, 1);
        assert_eq!(
            s.stats.cache_misses, 3,
            "the reset dropped the cached offset"
        );
    }
}
