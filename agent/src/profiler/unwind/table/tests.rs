use std::{path::Path, process::Command, time::Instant};

use object::ObjectSymbol;

use super::*;

/// `work` saves callee-saved registers (values live across calls) and allocates a local
/// array: a prologue of pushes and a `sub`. `main` calls it and a libc function (a PLT stub).
const PROG: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) long work(long n) {
long buf[128];
long a = n * 3, b = n ^ 7, c = n + 11, d = n * n, e = n - 5;
for (int i = 0; i < 128; i++) buf[i] = rand() + a;
memset(buf + n % 8, (int)b, 16);
long s = 0;
for (int i = 0; i < 128; i++) s += buf[i] * c + rand() % (d | 1) + e;
return s + a + b + c + d + e;
}

int main(int argc, char **argv) {
(void)argv;
long r = work(argc);
printf("%ld\n", r);
return r == 42;
}
"#;

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

/// Compiles `source` with gcc and `flags` into `dir/name` and returns the binary's bytes.
fn compile(dir: &Path, name: &str, flags: &[&str], source: &str) -> Vec<u8> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write source");
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc {flags:?} failed");
    std::fs::read(&out).expect("read binary")
}

/// Runs a binutils command on `dir/input`, writing `dir/output`, and returns the output.
fn objcopy(dir: &Path, args: &[&str], input: &str, output: &str) -> Vec<u8> {
    let status = Command::new("objcopy")
        .args(args)
        .arg(dir.join(input))
        .arg(dir.join(output))
        .status()
        .expect("objcopy");
    assert!(status.success(), "objcopy {args:?} failed");
    std::fs::read(dir.join(output)).expect("read objcopy output")
}

/// Address and size of a function, from the symbol table or the dynamic one.
fn function(data: &[u8], name: &str) -> (u32, u32) {
    let file = object::File::parse(data).expect("ELF");
    let sym = file
        .symbols()
        .chain(file.dynamic_symbols())
        .find(|s| s.name() == Ok(name) && s.size() > 0)
        .unwrap_or_else(|| panic!("no symbol {name}"));
    (
        u32::try_from(sym.address()).expect("32-bit address"),
        u32::try_from(sym.size()).expect("32-bit size"),
    )
}

/// The bytes of the code at `addr..addr + len`.
fn code(data: &[u8], addr: u32, len: u32) -> Vec<u8> {
    let file = object::File::parse(data).expect("ELF");
    let (addr, len) = (u64::from(addr), u64::from(len));
    let section = file
        .sections()
        .find(|s| s.address() <= addr && addr + len <= s.address() + s.size())
        .expect("section holding the code");
    section
        .data_range(addr, len)
        .expect("section data")
        .expect("code in range")
        .to_vec()
}

fn section_range(data: &[u8], name: &str) -> Option<(u32, u32)> {
    let file = object::File::parse(data).expect("ELF");
    let s = file.section_by_name(name)?;
    Some((
        u32::try_from(s.address()).expect("32-bit"),
        u32::try_from(s.address() + s.size()).expect("32-bit"),
    ))
}

/// The table's invariant: strictly sorted, no row repeating the previous one, no leading
/// `NONE`, only known kinds.
fn assert_invariants(rows: &[UnwindRow]) {
    assert_ne!(rows.first().map(|r| r.kind), Some(row_kind::NONE));
    for row in rows {
        assert!(row.kind <= row_kind::END, "unknown kind in {row:?}");
        if matches!(row.kind, row_kind::NONE | row_kind::END) {
            assert_eq!((row.cfa_offset, row.rbp_offset), (0, 0), "{row:?}");
        }
    }
    for pair in rows.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(a.pc < b.pc, "not strictly sorted: {a:?} then {b:?}");
        assert_ne!(
            (a.kind, a.cfa_offset, a.rbp_offset),
            (b.kind, b.cfa_offset, b.rbp_offset),
            "repeated row at {:#x}",
            b.pc
        );
    }
}

fn row(pc: u32, kind: u8, cfa_offset: u16, rbp_offset: i8) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_offset,
        kind,
        rbp_offset,
    }
}

/// (kind, cfa_offset, rbp_offset) in force at `pc`.
fn rule(rows: &[UnwindRow], pc: u32) -> (u8, u16, i8) {
    let r = lookup(rows, pc).unwrap_or_else(|| panic!("no row at {pc:#x}"));
    (r.kind, r.cfa_offset, r.rbp_offset)
}

/// A deterministic pseudo-random byte source (xorshift64).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn lookup_takes_the_last_row_at_or_below() {
    let rows = [
        row(0x100, row_kind::CFA_RSP, 8, 0),
        row(0x104, row_kind::CFA_RSP, 16, 0),
        row(0x110, row_kind::NONE, 0, 0),
    ];
    assert_eq!(lookup(&rows, 0xff), None);
    assert_eq!(lookup(&rows, 0x100), Some(&rows[0]));
    assert_eq!(lookup(&rows, 0x103), Some(&rows[0]));
    assert_eq!(lookup(&rows, 0x104), Some(&rows[1]));
    assert_eq!(lookup(&rows, 0x10f), Some(&rows[1]));
    assert_eq!(lookup(&rows, u32::MAX), Some(&rows[2]));
    assert_eq!(lookup(&[], 0x100), None);
}

#[test]
fn compaction_lets_a_function_start_win_over_the_previous_end_and_drops_repeats() {
    let end = |pc| row(pc, FDE_END, 0, 0);
    let rows = vec![
        // Second function, read first: starts where the first one ends.
        row(0x200, row_kind::CFA_RSP, 8, 0),
        row(0x201, row_kind::CFA_RSP, 16, 0),
        row(0x208, row_kind::CFA_RSP, 16, 0),
        end(0x240),
        // First function.
        row(0x100, row_kind::CFA_RSP, 8, 0),
        row(0x104, row_kind::CFA_RBP, 16, -2),
        row(0x1f0, row_kind::CFA_RSP, 8, 0),
        end(0x200),
        // A function after a gap, then a second FDE repeating its row.
        row(0x300, row_kind::CFA_RSP, 8, 0),
        end(0x310),
        row(0x300, row_kind::END, 0, 0),
        end(0x310),
        // Leading NONE rows are dropped.
        row(0x10, row_kind::NONE, 0, 0),
        end(0x20),
    ];
    let mut stats = TableStats::default();
    let rows = compact(rows, &mut stats);
    assert_eq!(
        rows,
        [
            row(0x100, row_kind::CFA_RSP, 8, 0),
            row(0x104, row_kind::CFA_RBP, 16, -2),
            row(0x1f0, row_kind::CFA_RSP, 8, 0),
            row(0x201, row_kind::CFA_RSP, 16, 0),
            row(0x240, row_kind::NONE, 0, 0),
            row(0x300, row_kind::CFA_RSP, 8, 0),
            row(0x310, row_kind::NONE, 0, 0),
        ]
    );
    assert_eq!(stats.rows_before_compaction, 14);
    assert_eq!(stats.rows, 7);
    assert_invariants(&rows);
}

#[test]
fn a_function_without_frame_pointer_is_described_from_rsp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = compile(dir.path(), "omit", &["-O2", "-fomit-frame-pointer"], PROG);
    let table = build(&data).expect("table");
    assert_invariants(&table.rows);
    assert!(table.stats.eh_frame_fdes >= 3, "{:?}", table.stats);

    let (work, size) = function(&data, "work");
    let end = work + size;
    // At entry only the return address is on the stack.
    assert_eq!(rule(&table.rows, work), (row_kind::CFA_RSP, 8, 0));
    // Each push moves the CFA 8 further; the next row is after the first push.
    let inside: Vec<UnwindRow> = table
        .rows
        .iter()
        .copied()
        .filter(|r| r.pc > work && r.pc < end)
        .collect();
    assert_eq!(
        (inside[0].kind, inside[0].cfa_offset),
        (row_kind::CFA_RSP, 16)
    );
    // Six pushes and the 1 KiB array (plus alignment) once the prologue is done.
    let deepest = inside.iter().map(|r| r.cfa_offset).max().expect("rows");
    assert!(
        deepest >= 8 + 6 * 8 + 128 * 8,
        "deepest CFA offset {deepest}"
    );
    let deepest_row = inside
        .iter()
        .find(|r| r.cfa_offset == deepest)
        .expect("row");
    assert_eq!(deepest_row.kind, row_kind::CFA_RSP);
    assert_eq!(
        rule(&table.rows, deepest_row.pc + 1).1,
        deepest,
        "the row covers the instructions after it"
    );
    // `rbp` is used as an ordinary callee-saved register: pushed, so saved below the CFA.
    assert!(deepest_row.rbp_offset < 0, "{deepest_row:?}");
    // After the function: the next function's own row, or none.
    let after = lookup(&table.rows, end).expect("row");
    assert!(
        after.pc == end || after.kind == row_kind::NONE,
        "{after:?} after work's end {end:#x}"
    );
}

#[test]
fn a_function_with_frame_pointer_is_described_from_rbp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = compile(
        dir.path(),
        "keep",
        &["-O2", "-fno-omit-frame-pointer"],
        PROG,
    );
    let table = build(&data).expect("table");
    assert_invariants(&table.rows);

    let (main, size) = function(&data, "main");
    assert_eq!(rule(&table.rows, main), (row_kind::CFA_RSP, 8, 0));
    // After `mov %rsp,%rbp`: CFA = rbp + 16, the caller's rbp at CFA - 16.
    let body = code(&data, main, size);
    let mov = body
        .windows(3)
        .position(|w| w == [0x48, 0x89, 0xe5])
        .expect("mov %rsp,%rbp in main");
    let after_prologue = main + u32::try_from(mov).expect("offset") + 3;
    assert_eq!(
        rule(&table.rows, after_prologue),
        (row_kind::CFA_RBP, 16, -2)
    );
    assert_eq!(
        rule(&table.rows, main + size / 2).0,
        row_kind::CFA_RBP,
        "the body is described from rbp"
    );
}

#[test]
fn plt_stubs_get_plt_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = compile(dir.path(), "omit", &["-O2"], PROG);
    let table = build(&data).expect("table");
    assert!(table.stats.plt_rows >= 1, "{:?}", table.stats);
    let (plt, plt_end) = section_range(&data, ".plt").expect(".plt");
    // PLT0 pushes the link map: rsp-based rows; the stubs after it: the PLT expression.
    assert_eq!(rule(&table.rows, plt).0, row_kind::CFA_RSP);
    assert!(plt_end - plt >= 32, "at least one stub after PLT0");
    assert_eq!(rule(&table.rows, plt + 16), (row_kind::PLT, 8, 0));
    assert_eq!(rule(&table.rows, plt_end - 1), (row_kind::PLT, 8, 0));

    let ls = Path::new("/usr/bin/ls");
    if ls.exists() {
        let data = std::fs::read(ls).expect("read ls");
        let table = build(&data).expect("table of ls");
        assert_invariants(&table.rows);
        if let Some((plt, _)) = section_range(&data, ".plt") {
            assert!(table.stats.plt_rows >= 1, "{:?}", table.stats);
            assert_eq!(rule(&table.rows, plt + 16), (row_kind::PLT, 8, 0));
        }
    }
}

#[test]
fn debug_frame_is_read_compressed_or_not_and_in_a_separate_debug_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "-O2",
        "-g",
        "-fomit-frame-pointer",
        "-fno-asynchronous-unwind-tables",
    ];
    let data = compile(dir.path(), "dbg", &flags, PROG);
    let (work, _) = function(&data, "work");
    let table = build(&data).expect("table");
    assert!(table.stats.debug_frame_fdes >= 2, "{:?}", table.stats);
    assert_eq!(rule(&table.rows, work), (row_kind::CFA_RSP, 8, 0));
    assert_invariants(&table.rows);

    let zlib = objcopy(
        dir.path(),
        &["--compress-debug-sections=zlib"],
        "dbg",
        "dbgz",
    );
    let compressed = build(&zlib).expect("table of the compressed file");
    assert_eq!(compressed.rows, table.rows);
    assert_eq!(compressed.stats.unread_sections, 0);

    // Debian's -dbgsym files: code sections empty (NOBITS), .debug_frame compressed.
    let debug = objcopy(
        dir.path(),
        &["--only-keep-debug", "--compress-debug-sections=zlib"],
        "dbg",
        "dbg.debug",
    );
    let separate = build(&debug).expect("table of the debug file");
    assert_eq!(separate.stats.eh_frame_fdes, 0);
    let (start, end) = (work, work + function(&data, "work").1);
    let only_work = |rows: &[UnwindRow]| -> Vec<UnwindRow> {
        rows.iter()
            .copied()
            .filter(|r| r.pc > start && r.pc <= end)
            .collect()
    };
    assert_eq!(only_work(&separate.rows), only_work(&table.rows));
    assert_eq!(rule(&separate.rows, work), (row_kind::CFA_RSP, 8, 0));
}

#[test]
fn eh_frame_wins_over_debug_frame_for_the_same_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The assembler writes every function's CFI to both sections.
    let both = format!("__asm__(\".cfi_sections .eh_frame, .debug_frame\");\n{PROG}");
    let flags = ["-O2", "-fomit-frame-pointer", "-fno-toplevel-reorder"];
    let data = compile(dir.path(), "both", &flags, &both);
    let table = build(&data).expect("table");
    assert!(table.stats.debug_frame_fdes >= 2, "{:?}", table.stats);
    assert_eq!(
        table.stats.shadowed_fdes, table.stats.debug_frame_fdes,
        "{:?}",
        table.stats
    );
    let without = objcopy(dir.path(), &["--remove-section=.debug_frame"], "both", "eh");
    assert_eq!(build(&without).expect("table").rows, table.rows);
}

#[test]
fn libc_has_thousands_of_rows_and_ends_at_thread_entries() {
    let Ok(data) = std::fs::read(LIBC) else {
        eprintln!("{LIBC} absent: skipped");
        return;
    };
    let table = build(&data).expect("libc table");
    assert_invariants(&table.rows);
    let count = |kind| table.rows.iter().filter(|r| r.kind == kind).count();
    assert!(table.rows.len() > 5000, "{} rows", table.rows.len());
    assert!(table.stats.eh_frame_fdes > 1000, "{:?}", table.stats);
    // clone and clone3 mark their child's side with an undefined return address.
    assert!(count(row_kind::END) >= 1, "{:?}", table.stats);
    assert!(table.stats.end_rows >= 2, "{:?}", table.stats);
    assert!(count(row_kind::PLT) >= 1, "{:?}", table.stats);
    assert!(count(row_kind::CFA_RSP) > count(row_kind::CFA_RBP));
    // __restore_rt and the like: expressions over the signal frame.
    assert!(table.stats.cfa_expression >= 1, "{:?}", table.stats);
    let (clone, size) = function(&data, "clone");
    assert_eq!(rule(&table.rows, clone), (row_kind::CFA_RSP, 8, 0));
    assert!(
        table
            .rows
            .iter()
            .any(|r| r.kind == row_kind::END && r.pc > clone && r.pc < clone + size),
        "clone's child side is the end of the stack"
    );
}

#[test]
fn big_system_binaries_build() {
    for path in ["/usr/sbin/mariadbd", "/usr/bin/redis-server"] {
        let Ok(data) = std::fs::read(path) else {
            eprintln!("{path} absent: skipped");
            continue;
        };
        let table = build(&data).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_invariants(&table.rows);
        assert!(table.rows.len() > 10_000, "{path}: {:?}", table.stats);
        assert!(
            table.stats.eh_frame_fdes > 1000,
            "{path}: {:?}",
            table.stats
        );
    }
}

#[test]
fn files_without_tables_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    compile(dir.path(), "prog", &["-O2"], PROG);
    let bare = objcopy(
        dir.path(),
        &[
            "--remove-section=.eh_frame",
            "--remove-section=.eh_frame_hdr",
        ],
        "prog",
        "bare",
    );
    assert!(matches!(build(&bare), Err(TableError::NoCfi)));

    let mut arm = std::fs::read(dir.path().join("prog")).expect("read");
    arm[18..20].copy_from_slice(&elf::EM_AARCH64.to_le_bytes());
    assert!(matches!(build(&arm), Err(TableError::NotX86_64(_))));

    let status = Command::new("gcc")
        .args(["-O2", "-c", "-o"])
        .arg(dir.path().join("prog.o"))
        .arg(dir.path().join("prog.c"))
        .status()
        .expect("gcc");
    assert!(status.success());
    let object = std::fs::read(dir.path().join("prog.o")).expect("read");
    assert!(matches!(build(&object), Err(TableError::NotLoadable(_))));
}

#[test]
fn code_above_4_gib_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = compile(
        dir.path(),
        "high",
        &["-O2", "-Wl,-Ttext-segment=0x100000000"],
        PROG,
    );
    assert!(
        matches!(build(&data), Err(TableError::AddressTooLarge(a)) if a > u64::from(u32::MAX)),
        "{:?}",
        build(&data).map(|t| t.stats)
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    assert!(matches!(build(&[]), Err(TableError::NotElf(_))));
    for len in [1, 16, 64, 100, 4096, 65536] {
        assert!(build(&noise.bytes(len)).is_err());
    }
    // An ELF header followed by noise.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = compile(dir.path(), "prog", &["-O2"], PROG);
    for _ in 0..64 {
        let mut fake = data[..64].to_vec();
        fake.extend(noise.bytes(8192));
        let _ = build(&fake);
    }
    // Truncated: the section headers are at the end of the file.
    for cut in (0..data.len()).step_by(97) {
        assert!(build(&data[..cut]).is_err(), "cut at {cut}");
    }
    if let Ok(libc) = std::fs::read(LIBC) {
        for cut in [0, 4, 52, 64, 4096, libc.len() / 2, libc.len() - 1] {
            assert!(build(&libc[..cut]).is_err(), "libc cut at {cut}");
        }
    }
}

#[test]
fn corrupt_call_frame_information_never_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = compile(dir.path(), "prog", &["-O2"], PROG);
    let file = object::File::parse(data.as_slice()).expect("ELF");
    let (offset, size) = file
        .section_by_name(".eh_frame")
        .and_then(|s| s.file_range())
        .expect(".eh_frame");
    let (offset, size) = (offset as usize, size as usize);
    let mut noise = Noise(42);
    for round in 0..2000 {
        let mut bad = data.clone();
        // A few bytes changed, or the whole section replaced.
        if round % 10 == 0 {
            bad[offset..offset + size].copy_from_slice(&noise.bytes(size));
        } else {
            for _ in 0..1 + round % 4 {
                let at = offset + (noise.next() as usize) % size;
                bad[at] = noise.next() as u8;
            }
        }
        if let Ok(table) = build(&bad) {
            assert_invariants(&table.rows);
        }
    }
}

/// Build time and size of the tables of big binaries. Run with
/// `cargo test --release -p loupe-agent --bin loupe-agent table::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: prints figures, asserts nothing new"]
fn measure() {
    for path in [
        "/usr/sbin/mariadbd",
        "/usr/bin/redis-server",
        LIBC,
        "/usr/bin/ls",
    ] {
        let Ok(data) = std::fs::read(path) else {
            continue;
        };
        let mut best = None;
        let mut table = Table::default();
        for _ in 0..5 {
            let started = Instant::now();
            table = build(&data).expect("table");
            let took = started.elapsed();
            best = Some(best.map_or(took, |b: std::time::Duration| b.min(took)));
        }
        eprintln!(
            "{path}: {} MB, {:?}, {} rows ({} KiB), {:?}",
            data.len() / 1_000_000,
            best.unwrap_or_default(),
            table.rows.len(),
            table.size_bytes() / 1024,
            table.stats
        );
    }
}
