//! Symbolization with blazesym: user addresses as file offsets into binaries we hold open (so it works
//! after the process exited), kernel addresses through kallsyms. Results are cached per
//! (binary, offset) and per kernel address; the caches are bounded and cleared whole when full.

use std::{collections::HashMap, sync::Arc};

use blazesym::{
    MaybeDefault,
    symbolize::{
        self, Symbolized,
        source::{Elf, Kernel, Source},
    },
};
use loupe_collector::profile::FrameLine;

use super::debug_file::DebugFile;
use super::debuginfod::Debuginfod;
use super::procs::{BinaryFile, FileKey};

/// The lines of one location: innermost inlined function first, the containing function last.
pub type Lines = Arc<[FrameLine]>;

/// Counters the metrics report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SymbolizerStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Addresses that could not be resolved to a function name.
    pub failures: u64,
    /// Times a full cache was cleared.
    pub cache_resets: u64,
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
            max_entries,
            stats: SymbolizerStats::default(),
        }
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

    /// Releases blazesym's parsed symbol tables and file mappings, keeping the resolved-address
    /// caches. Called after every drain: a large binary's symbol table (a compiler's can be tens of
    /// MB) is then held only while its new addresses are resolved, which bounds the agent's memory
    /// by one interval's binaries rather than every binary the host ever ran.
    pub fn release_parsed(&mut self) {
        self.inner = Self::fresh_inner(self.debuginfo);
    }

    /// Drops every cache, including blazesym's parsed ELF and DWARF data; called when caches fill up
    /// so memory stays bounded on nodes running many different binaries.
    fn reset_if_full(&mut self) {
        if self.user.len() + self.kernel.len() >= self.max_entries {
            self.user.clear();
            self.kernel.clear();
            self.inner = Self::fresh_inner(self.debuginfo);
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
                    self.inner
                        .symbolize(&Source::Elf(elf), symbolize::Input::VirtOffset(&virt))
                }
                None => {
                    let mut elf = Elf::new(&binary.symbolize_path);
                    elf.debug_syms = self.debuginfo;
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

    /// Symbolizes kernel addresses; one result per address, in order.
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
        if !missing.is_empty() {
            let src = Source::Kernel(Kernel {
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Kernel::default()
            });
            match self
                .inner
                .symbolize(&src, symbolize::Input::AbsAddr(&missing))
            {
                Ok(symbols) => {
                    for (addr, sym) in missing.iter().zip(symbols.iter()) {
                        let lines = to_lines(sym).unwrap_or_else(|| {
                            self.stats.failures += 1;
                            single("[kernel]")
                        });
                        self.kernel.insert(*addr, lines);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "kernel symbolization failed");
                    self.stats.failures += missing.len() as u64;
                    for addr in &missing {
                        self.kernel.insert(*addr, single("[kernel]"));
                    }
                }
            }
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

    #[test]
    fn symbolizes_our_own_function_and_caches_it() {
        let mut table = ProcessTable::new(4);
        let me = table.refresh(std::process::id(), "test");
        let addr = loupe_symbolize_test_target as *const () as usize as u64 + 1;
        let m = me.mapping_for(addr).expect("mapped");
        let binary = m.binary.clone().expect("opened");
        let offset = addr - m.start + m.file_offset;

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
    fn unknown_offsets_name_the_module() {
        let mut table = ProcessTable::new(4);
        let me = table.refresh(std::process::id(), "test");
        let addr = loupe_symbolize_test_target as *const () as usize as u64;
        let binary = me.mapping_for(addr).unwrap().binary.clone().unwrap();
        let mut s = Symbolizer::new(1000, true);
        // Far past the end of any section.
        let lines = s.user(&binary, &[u64::MAX / 2]);
        assert!(lines[0][0].function.contains("+0x"), "{:?}", lines[0]);
        assert_eq!(s.stats.failures, 1);
    }

    #[test]
    fn a_full_cache_is_reset() {
        let mut table = ProcessTable::new(4);
        let me = table.refresh(std::process::id(), "test");
        let addr = loupe_symbolize_test_target as *const () as usize as u64;
        let m = me.mapping_for(addr).unwrap();
        let binary = m.binary.clone().unwrap();
        let offset = addr - m.start + m.file_offset;
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
