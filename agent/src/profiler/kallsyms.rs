//! The kernel's function symbols, read once from `/proc/kallsyms` into a compact table and kept.
//!
//! Reading `/proc/kallsyms` is expensive: the kernel formats every symbol afresh (about 120,000
//! lines on a 6.x kernel), tens of milliseconds of CPU each time. Resolving a drain's new kernel
//! addresses by reading it again made that the profiler's largest steady cost. The table keeps
//! only what naming a frame needs: text symbols' addresses, sorted, and their names in one string.
//! The `__pfx_` padding symbols that 6.x kernels put before every function are left out (no code
//! runs in the padding), which halves the table: about 2 MB on this repository's 6.18 host.
//!
//! The table is read again when the loaded modules change (`/proc/modules`), and when an address
//! falls outside it, at most every [`RELOAD_AFTER`]: BPF programs and modules loaded later have
//! addresses the table does not hold yet.

use std::{
    io::{self, BufRead, BufReader},
    time::{Duration, Instant},
};

/// No kernel function is this long: an address farther than this past the nearest symbol below it
/// is outside every known function (a module or BPF program loaded since the table was read).
const MAX_FUNCTION_BYTES: u64 = 1 << 20;

/// The shortest time between two reads triggered by unknown addresses.
pub const RELOAD_AFTER: Duration = Duration::from_secs(300);

/// Sorted kernel text symbols.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    addrs: Vec<u64>,
    /// End of each symbol's name in `names` (its start is the previous end).
    name_ends: Vec<u32>,
    names: String,
}

impl KernelSymbols {
    /// Parses kallsyms' text (`address type name [module]` per line). Keeps text symbols
    /// (`t`, `T`, `w`, `W`) with a non-zero address; without the privilege to see addresses
    /// (`kptr_restrict`, no CAP_SYSLOG) every address reads as zero and the table is empty.
    pub fn parse(reader: impl BufRead) -> io::Result<Self> {
        let mut entries: Vec<(u64, u32, u32)> = Vec::new();
        let mut names = String::new();
        for line in reader.lines() {
            let line = line?;
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") || name.starts_with("__pfx_") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            let (Ok(start), Ok(end)) = (
                u32::try_from(names.len()),
                u32::try_from(names.len() + name.len()),
            ) else {
                break;
            };
            names.push_str(name);
            entries.push((addr, start, end));
        }
        // The core kernel's symbols come sorted; modules' and BPF programs' need not. Stable, so
        // of several symbols at one address the first listed names it.
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        // Names in address order, so the table needs only the ends.
        let mut sorted = String::with_capacity(names.len());
        let mut name_ends = Vec::with_capacity(entries.len());
        for &(_, start, end) in &entries {
            sorted.push_str(&names[start as usize..end as usize]);
            // Fits: `sorted` is never longer than `names`, whose length was checked above.
            name_ends.push(sorted.len() as u32);
        }
        sorted.shrink_to_fit();
        Ok(KernelSymbols {
            addrs: entries.iter().map(|e| e.0).collect(),
            name_ends,
            names: sorted,
        })
    }

    /// Reads `/proc/kallsyms`.
    pub fn load() -> io::Result<Self> {
        let file = std::fs::File::open("/proc/kallsyms")?;
        Self::parse(BufReader::with_capacity(64 * 1024, file))
    }

    /// The function holding `addr`: the nearest symbol at or below it, when near enough.
    pub fn resolve(&self, addr: u64) -> Option<&str> {
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        if addr - self.addrs[i] >= MAX_FUNCTION_BYTES {
            return None;
        }
        let start = if i == 0 {
            0
        } else {
            self.name_ends[i - 1] as usize
        };
        self.names.get(start..self.name_ends[i] as usize)
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.addrs.capacity() * 8 + self.name_ends.capacity() * 4 + self.names.capacity()
    }
}

/// The table and when to read it again.
#[derive(Debug, Default)]
pub struct KernelTable {
    symbols: Option<KernelSymbols>,
    /// `/proc/modules` as it was when the table was read.
    modules: Option<String>,
    loaded_at: Option<Instant>,
    /// Times the table was read, for the tests and the metrics.
    pub loads: u64,
}

impl KernelTable {
    /// The table, read first if never read or if the modules changed since. Called only when a
    /// drain has kernel addresses not cached yet, so `/proc/modules` (a few KB) is read at most
    /// once per drain.
    pub fn current(&mut self) -> Option<&KernelSymbols> {
        let modules = std::fs::read_to_string("/proc/modules").ok();
        if self.symbols.is_none() || modules != self.modules {
            self.reload(modules);
        }
        self.symbols.as_ref()
    }

    /// The table as last read, without checking the modules.
    pub fn loaded(&self) -> Option<&KernelSymbols> {
        self.symbols.as_ref()
    }

    /// Reads the table again after an address fell outside it, unless it was read recently.
    /// Returns whether it did.
    pub fn reload_for_unknown(&mut self) -> bool {
        if self.loaded_at.is_some_and(|t| t.elapsed() < RELOAD_AFTER) {
            return false;
        }
        let modules = std::fs::read_to_string("/proc/modules").ok();
        self.reload(modules);
        true
    }

    fn reload(&mut self, modules: Option<String>) {
        self.symbols = match KernelSymbols::load() {
            Ok(s) => {
                tracing::debug!(
                    symbols = s.len(),
                    bytes = s.bytes(),
                    "read the kernel's symbols"
                );
                Some(s)
            }
            Err(e) => {
                tracing::debug!("cannot read /proc/kallsyms: {e}");
                None
            }
        };
        self.modules = modules;
        self.loaded_at = Some(Instant::now());
        self.loads += 1;
    }

    pub fn bytes(&self) -> usize {
        self.symbols.as_ref().map_or(0, KernelSymbols::bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 t __pfx_do_one
ffffffff81001010 t do_one
ffffffff81001010 T do_one_alias
ffffffff81002000 D some_data
ffffffff81003000 W weak_fn
ffffffffc0001000 t mod_fn\t[mymod]
ffffffffc0000000 t mod_first\t[mymod]
0000000000000000 T hidden
";

    fn table() -> KernelSymbols {
        KernelSymbols::parse(SAMPLE.as_bytes()).unwrap()
    }

    #[test]
    fn resolves_to_the_function_below_skipping_padding_and_data() {
        let t = table();
        assert_eq!(t.resolve(0xffffffff81000005), Some("_stext"));
        // The padding symbol is gone: its bytes belong to the function before.
        assert_eq!(t.resolve(0xffffffff81001004), Some("_stext"));
        assert_eq!(t.resolve(0xffffffff81001010), Some("do_one"));
        assert_eq!(
            t.resolve(0xffffffff81002004),
            Some("do_one"),
            "data skipped"
        );
        assert_eq!(t.resolve(0xffffffff81003001), Some("weak_fn"));
    }

    #[test]
    fn modules_are_sorted_in_and_the_first_name_at_an_address_wins() {
        let t = table();
        assert_eq!(t.resolve(0xffffffffc0000010), Some("mod_first"));
        assert_eq!(t.resolve(0xffffffffc0001010), Some("mod_fn"));
        assert_eq!(t.len(), 5, "{t:?}");
    }

    #[test]
    fn addresses_outside_every_function_are_unknown() {
        let t = table();
        assert_eq!(t.resolve(0x1000), None, "below the first symbol");
        assert_eq!(t.resolve(0xffffffffc0001010 + MAX_FUNCTION_BYTES), None);
        let hidden =
            KernelSymbols::parse("0000000000000000 T a\n0000000000000000 t b\n".as_bytes());
        assert_eq!(
            hidden.unwrap().len(),
            0,
            "addresses hidden by kptr_restrict"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A kallsyms-like line: address, type, name, maybe a module; or garbage.
        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                (
                    any::<u64>(),
                    prop::sample::select(vec!["t", "T", "w", "W", "d", "D", "r", "b"]),
                    "[a-z_][a-z0-9_.]{0,30}",
                    prop::option::of("\\[[a-z_]{1,10}\\]"),
                )
                    .prop_map(|(a, k, n, m)| {
                        // Addresses near each other, so lookups land between symbols.
                        let a = 0xffff_ffff_8100_0000u64 + (a % 0x40_0000);
                        match m {
                            Some(m) => format!("{a:016x} {k} {n}\t{m}"),
                            None => format!("{a:016x} {k} {n}"),
                        }
                    }),
                "\\PC{0,80}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

            /// Any text: no panic; every lookup answers a text symbol's name at or below the
            /// address, within reach, or nothing.
            #[test]
            fn arbitrary_text_parses_and_lookups_stay_in_bounds(
                lines in prop::collection::vec(line(), 0..200),
                probes in prop::collection::vec(0u64..0x50_0000, 0..50),
            ) {
                let text = lines.join("\n");
                let t = KernelSymbols::parse(text.as_bytes()).unwrap();
                prop_assert!(t.addrs.windows(2).all(|w| w[0] < w[1]));
                prop_assert_eq!(t.addrs.len(), t.name_ends.len());
                for p in probes {
                    let addr = 0xffff_ffff_8100_0000u64 + p;
                    if let Some(name) = t.resolve(addr) {
                        let known = text.lines().any(|l| {
                            let f: Vec<&str> = l.split_ascii_whitespace().collect();
                            f.len() >= 3
                                && f[2] == name
                                && matches!(f[1], "t" | "T" | "w" | "W")
                                && u64::from_str_radix(f[0], 16).is_ok_and(|a| a <= addr && addr - a < MAX_FUNCTION_BYTES)
                        });
                        prop_assert!(known, "{name} for {addr:x}");
                    }
                }
            }
        }
    }

    /// This kernel's own table: a function it lists is found at and inside its address, and the
    /// table is read again only when asked after the reload delay.
    #[test]
    fn this_kernels_functions_resolve() {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let Some(addr) = text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "schedule").then(|| u64::from_str_radix(f[0], 16).unwrap())
        }) else {
            panic!("no `schedule` in /proc/kallsyms")
        };
        if addr == 0 {
            // Not privileged to see addresses: then nothing resolves, which is what the agent
            // must do there too.
            assert_eq!(KernelSymbols::load().unwrap().len(), 0);
            return;
        }
        let mut table = KernelTable::default();
        let symbols = table.current().expect("read");
        assert!(symbols.len() > 10_000, "{} symbols", symbols.len());
        assert_eq!(symbols.resolve(addr), Some("schedule"));
        assert_eq!(symbols.resolve(addr + 4), Some("schedule"));
        table.current();
        assert_eq!(table.loads, 1, "modules unchanged: not read again");
        assert!(
            !table.reload_for_unknown(),
            "read less than RELOAD_AFTER ago"
        );
        assert_eq!(table.loads, 1);
    }
}
