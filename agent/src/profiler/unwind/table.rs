//! Unwind tables: an x86-64 ELF file's call frame information (`.eh_frame`, and `.debug_frame`
//! where present) turned into the kernel's compact rows ([`UnwindRow`], 8 bytes each).
//!
//! Every FDE's program is run (gimli's `UnwindTable`, one context reused for all of them) and each
//! row it yields becomes one [`UnwindRow`] at the row's start address. The kernel follows only
//! what a walk of an ordinary x86-64 frame needs: the CFA as `rsp` or `rbp` plus an offset, the
//! return address at CFA − 8, the caller's `rbp` saved at a multiple of 8 from the CFA, the
//! standard expression of binutils' PLT stubs, and an undefined return address as the end of the
//! stack. Anything else becomes a [`row_kind::NONE`] row (the kernel then tries the frame
//! pointer), counted by reason in [`TableStats`].
//!
//! A `NONE` row is also put at each FDE's end address, so code between functions (padding,
//! hand-written code without CFI) is not covered by the previous function's last row. Rows are
//! then sorted by address; at one address a function's own row wins over the previous function's
//! end, and `.eh_frame` wins over `.debug_frame` (a `.debug_frame` FDE overlapping an `.eh_frame`
//! one is not read at all, so the two never interleave). Rows that repeat the row before them are
//! dropped.
//!
//! **Invariant:** a table's rows are sorted strictly by `pc`, no two consecutive rows have the same
//! (kind, cfa_offset, rbp_offset), and the first row is not `NONE`.

use std::borrow::Cow;

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, Encoding, EndianSlice,
    FrameDescriptionEntry, LittleEndian, Operation, Register, RegisterRule, UnitOffset,
    UnwindContext, UnwindExpression, UnwindSection, UnwindTableRow,
};
use loupe_common::unwind::{UnwindRow, row_kind};
use object::{
    Architecture, CompressionFormat, Object, ObjectKind, ObjectSection, SectionFlags, elf,
};

/// DWARF register numbers of x86-64 (psABI, figure 3.36).
const RBP: Register = Register(6);
const RSP: Register = Register(7);
/// The return address column.
const RA: Register = Register(16);

/// A row's `kind` while the table is built: the `NONE` row at an FDE's end, which loses to any
/// other row at the same address. It is `NONE` in the finished table.
const FDE_END: u8 = u8::MAX;

/// zlib cannot shrink data more than about 1032 times: a compressed section claiming more is
/// corrupt, and its claimed size is not allocated.
const MAX_ZLIB_RATIO: u64 = 1032;

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// A binary's unwind table, ready for the kernel's row array.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Sorted strictly by `pc`; see [`lookup`].
    pub rows: Vec<UnwindRow>,
    pub stats: TableStats,
}

impl Table {
    /// Bytes the rows take in the kernel's row array.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of_val(self.rows.as_slice())
    }
}

/// What building a table read and what it could not represent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    /// FDEs read from `.eh_frame` (the FDE counts below are parts of these two).
    pub eh_frame_fdes: u64,
    /// FDEs read from `.debug_frame`.
    pub debug_frame_fdes: u64,
    /// `.debug_frame` FDEs left out because `.eh_frame` describes some of their addresses.
    pub shadowed_fdes: u64,
    /// FDEs left out because they start in no executable section: code the linker discarded,
    /// whose `.debug_frame` FDEs keep a placeholder address (0 or −1).
    pub outside_text_fdes: u64,
    /// FDEs left out because their CIE, addresses or instructions are malformed.
    pub bad_fdes: u64,
    /// Sections whose entries stopped at a malformed entry: the FDEs after it are not read.
    pub truncated_sections: u64,
    /// `.debug_frame` sections not read: compressed with something other than zlib, or corrupt.
    pub unread_sections: u64,
    /// Rows the FDEs' programs yielded.
    pub rows_read: u64,
    /// Rows sorted before compaction: `rows_read` plus one `NONE` row at each FDE's end.
    pub rows_before_compaction: u64,
    /// Rows in the table.
    pub rows: u64,
    /// Rows read as [`row_kind::PLT`].
    pub plt_rows: u64,
    /// Rows read as [`row_kind::END`].
    pub end_rows: u64,
    /// Rows made `NONE`: the CFA is a DWARF expression other than the PLT stubs'.
    pub cfa_expression: u64,
    /// Rows made `NONE`: the CFA is based on a register other than `rsp` and `rbp`.
    pub cfa_register: u64,
    /// Rows made `NONE`: the CFA offset is negative or above 65535.
    pub big_offset: u64,
    /// Rows made `NONE`: the return address is not at CFA − 8 (or the CIE's return address
    /// column is not 16).
    pub ra_rule: u64,
    /// Rows kept with `rbp_offset` 0 although `rbp` has a rule the row cannot hold (in another
    /// register, an expression, or an offset that is not a multiple of 8 within ±1016).
    pub rbp_rule: u64,
}

/// Why a file has no unwind table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The bytes are not an ELF file, or its headers are inconsistent.
    #[error("not a readable ELF file: {0}")]
    NotElf(#[source] object::Error),
    /// The file is for another architecture; the rows describe x86-64 registers.
    #[error("not an x86-64 file ({0:?})")]
    NotX86_64(Architecture),
    /// A relocatable object or a core file: its code has no load addresses yet.
    #[error("not an executable or shared object ({0:?})")]
    NotLoadable(ObjectKind),
    /// Neither `.eh_frame` nor `.debug_frame` has an FDE.
    #[error("no call frame information (.eh_frame, .debug_frame)")]
    NoCfi,
    /// An FDE describes code at or beyond 4 GiB, which the rows' 32-bit `pc` cannot hold.
    #[error("code address {0:#x} does not fit the rows' 32 bits")]
    AddressTooLarge(u64),
    /// A section's contents cannot be read from the file.
    #[error("cannot read {section}: {source}")]
    Section {
        section: &'static str,
        #[source]
        source: object::Error,
    },
    /// The call frame information is malformed before any FDE could be read.
    #[error("malformed {section}: {source}")]
    Gimli {
        section: &'static str,
        #[source]
        source: gimli::Error,
    },
}

/// Builds the unwind table of the x86-64 ELF file `elf` (an executable, a shared object, or a
/// separate debug file with `.debug_frame`). Rows are at the file's virtual addresses.
pub fn build(elf: &[u8]) -> Result<Table, TableError> {
    let file = object::File::parse(elf).map_err(TableError::NotElf)?;
    if file.architecture() != Architecture::X86_64 {
        return Err(TableError::NotX86_64(file.architecture()));
    }
    match file.kind() {
        ObjectKind::Executable | ObjectKind::Dynamic => {}
        kind => return Err(TableError::NotLoadable(kind)),
    }

    let mut builder = Builder {
        rows: Vec::new(),
        stats: TableStats::default(),
        text: executable_ranges(&file),
        eh_ranges: Vec::new(),
        ctx: UnwindContext::new(),
        first_error: None,
    };
    let address = |name: &str| file.section_by_name(name).map_or(0, |s| s.address());
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(address(".eh_frame_hdr"))
        .set_eh_frame(address(".eh_frame"))
        .set_text(address(".text"))
        .set_got(address(".got"));

    let eh_frame = match file.section_by_name(".eh_frame") {
        Some(section) => section.data().map_err(|source| TableError::Section {
            section: ".eh_frame",
            source,
        })?,
        None => &[],
    };
    let debug_frame = debug_frame_data(&file, &mut builder.stats);
    if eh_frame.is_empty() && debug_frame.is_empty() {
        return Err(TableError::NoCfi);
    }

    if !eh_frame.is_empty() {
        let mut section = EhFrame::new(eh_frame, LittleEndian);
        section.set_address_size(8);
        builder.read(&section, &bases, Source::EhFrame)?;
    }
    if !debug_frame.is_empty() {
        builder.merge_eh_ranges();
        let mut section = DebugFrame::new(&debug_frame, LittleEndian);
        section.set_address_size(8);
        builder.read(&section, &bases, Source::DebugFrame)?;
    }

    let mut stats = builder.stats;
    if stats.eh_frame_fdes + stats.debug_frame_fdes == 0 {
        return Err(match builder.first_error {
            Some((section, source)) => TableError::Gimli { section, source },
            None => TableError::NoCfi,
        });
    }
    let rows = compact(builder.rows, &mut stats);
    Ok(Table { rows, stats })
}

/// The row in force at `pc`: the last row whose `pc` is at or below it, `None` below the first.
/// As in the kernel, a [`row_kind::NONE`] row found here means no row.
#[cfg(test)]
pub fn lookup(rows: &[UnwindRow], pc: u32) -> Option<&UnwindRow> {
    let above = rows.partition_point(|row| row.pc <= pc);
    rows.get(above.checked_sub(1)?)
}

/// Where an FDE comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    EhFrame,
    DebugFrame,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::EhFrame => ".eh_frame",
            Source::DebugFrame => ".debug_frame",
        }
    }
}

/// The table while FDEs are read.
struct Builder {
    /// Unsorted rows, `FDE_END` rows included.
    rows: Vec<UnwindRow>,
    stats: TableStats,
    /// Address ranges of the executable sections, sorted.
    text: Vec<(u64, u64)>,
    /// Address ranges of the `.eh_frame` FDEs read; sorted and merged before `.debug_frame`.
    eh_ranges: Vec<(u64, u64)>,
    ctx: UnwindContext<usize>,
    /// The first error that ended a section's entries, reported if no FDE was read at all.
    first_error: Option<(&'static str, gimli::Error)>,
}

impl Builder {
    /// Reads every FDE of one section.
    fn read<'a, S>(
        &mut self,
        section: &S,
        bases: &BaseAddresses,
        source: Source,
    ) -> Result<(), TableError>
    where
        S: UnwindSection<Slice<'a>>,
    {
        let mut entries = section.entries(bases);
        loop {
            let partial = match entries.next() {
                Ok(Some(CieOrFde::Fde(partial))) => partial,
                Ok(Some(CieOrFde::Cie(_))) => continue,
                Ok(None) => return Ok(()),
                Err(error) => {
                    // A bad length or CIE: the entries after it cannot be found.
                    self.stats.truncated_sections += 1;
                    self.first_error.get_or_insert((source.name(), error));
                    return Ok(());
                }
            };
            match source {
                Source::EhFrame => self.stats.eh_frame_fdes += 1,
                Source::DebugFrame => self.stats.debug_frame_fdes += 1,
            }
            match partial.parse(|section, bases, offset| section.cie_from_offset(bases, offset)) {
                Ok(fde) => self.fde(&fde, section, bases, source)?,
                Err(_) => self.stats.bad_fdes += 1,
            }
        }
    }

    /// Adds one FDE's rows and the `NONE` row at its end.
    fn fde<'a, S>(
        &mut self,
        fde: &FrameDescriptionEntry<Slice<'a>>,
        section: &S,
        bases: &BaseAddresses,
        source: Source,
    ) -> Result<(), TableError>
    where
        S: UnwindSection<Slice<'a>>,
    {
        let (start, end) = (fde.initial_address(), fde.end_address());
        if end <= start {
            // Empty: nothing to describe. Wrapped past 2^64: nonsense.
            if end < start {
                self.stats.bad_fdes += 1;
            }
            return Ok(());
        }
        let Some(section_end) = self.section_end(start) else {
            self.stats.outside_text_fdes += 1;
            return Ok(());
        };
        // A length past the code's section is corrupt: the section's end is the FDE's, so a bad
        // length alone cannot make the table fail below.
        let end = end.min(section_end);
        if source == Source::DebugFrame && self.eh_covers(start, end) {
            self.stats.shadowed_fdes += 1;
            return Ok(());
        }
        let end_pc = u32::try_from(end).map_err(|_| TableError::AddressTooLarge(end))?;
        if source == Source::EhFrame {
            self.eh_ranges.push((start, end));
        }

        let ra = fde.cie().return_address_register();
        let encoding = fde.cie().encoding();
        let first_row = self.rows.len();
        let stats_before = self.stats;
        let mut table = match fde.rows(section, bases, &mut self.ctx) {
            Ok(table) => table,
            Err(_) => {
                self.stats.bad_fdes += 1;
                return Ok(());
            }
        };
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    let at = row.start_address();
                    // An empty row is replaced by the next one at the same address; rows within
                    // [start, end) are below 2^32.
                    if at < start || at >= end || row.end_address() <= at {
                        continue;
                    }
                    let Ok(pc) = u32::try_from(at) else { continue };
                    self.stats.rows_read += 1;
                    let (kind, cfa_offset, rbp_offset) =
                        describe(row, ra, section, encoding, &mut self.stats);
                    self.rows.push(UnwindRow {
                        pc,
                        cfa_offset,
                        kind,
                        rbp_offset,
                    });
                }
                Ok(None) => break,
                Err(_) => {
                    // Bad instructions: the FDE is left out whole, as if it had not been read.
                    self.rows.truncate(first_row);
                    self.stats = stats_before;
                    self.stats.bad_fdes += 1;
                    return Ok(());
                }
            }
        }
        self.rows.push(UnwindRow {
            pc: end_pc,
            kind: FDE_END,
            ..UnwindRow::default()
        });
        Ok(())
    }

    /// The end of the executable section holding `addr`, if one does.
    fn section_end(&self, addr: u64) -> Option<u64> {
        let after = self.text.partition_point(|&(start, _)| start <= addr);
        let &(_, end) = self.text.get(after.checked_sub(1)?)?;
        (addr < end).then_some(end)
    }

    /// Sorts the `.eh_frame` ranges and merges overlapping and adjacent ones, for
    /// [`Builder::eh_covers`].
    fn merge_eh_ranges(&mut self) {
        self.eh_ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.eh_ranges.len());
        for &(start, end) in &self.eh_ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        self.eh_ranges = merged;
    }

    /// Whether an `.eh_frame` FDE describes any address of `start..end`.
    fn eh_covers(&self, start: u64, end: u64) -> bool {
        // Merged ranges are disjoint and sorted, so their ends are sorted too.
        let first_ending_after = self.eh_ranges.partition_point(|&(_, e)| e <= start);
        self.eh_ranges
            .get(first_ending_after)
            .is_some_and(|&(s, _)| s < end)
    }
}

/// One CFI row as (kind, cfa_offset, rbp_offset), counting what it cannot represent.
fn describe<'a, S>(
    row: &UnwindTableRow<usize>,
    ra: Register,
    section: &S,
    encoding: Encoding,
    stats: &mut TableStats,
) -> (u8, u16, i8)
where
    S: UnwindSection<Slice<'a>>,
{
    const NONE: (u8, u16, i8) = (row_kind::NONE, 0, 0);
    // The outermost frame, whatever its CFA: the walk stops there.
    let ra_rule = row.register(ra);
    if ra == RA && ra_rule == Some(RegisterRule::Undefined) {
        stats.end_rows += 1;
        return (row_kind::END, 0, 0);
    }
    // A row with several flaws is counted once, under the first of CFA, offset, return address.
    let (kind, offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => match *register {
            RSP => (row_kind::CFA_RSP, *offset),
            RBP => (row_kind::CFA_RBP, *offset),
            _ => {
                stats.cfa_register += 1;
                return NONE;
            }
        },
        CfaRule::Expression(expression) => match plt_offset(expression, section, encoding) {
            Some(offset) => (row_kind::PLT, offset),
            None => {
                stats.cfa_expression += 1;
                return NONE;
            }
        },
    };
    let Ok(cfa_offset) = u16::try_from(offset) else {
        stats.big_offset += 1;
        return NONE;
    };
    // The kernel reads the return address at CFA - 8; no rule is x86-64's default, the same.
    if ra != RA || !matches!(ra_rule, None | Some(RegisterRule::Offset(-8))) {
        stats.ra_rule += 1;
        return NONE;
    }
    let rbp_offset = match row.register(RBP) {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => 0,
        Some(RegisterRule::Offset(at)) if at != 0 && at % 8 == 0 => i8::try_from(at / 8)
            .unwrap_or_else(|_| {
                stats.rbp_rule += 1;
                0
            }),
        Some(_) => {
            stats.rbp_rule += 1;
            0
        }
    };
    if kind == row_kind::PLT {
        stats.plt_rows += 1;
    }
    (kind, cfa_offset, rbp_offset)
}

/// The `rsp` offset of binutils' PLT-stub CFA expression, `None` for any other expression:
///
/// ```text
/// DW_OP_breg7 (rsp) N; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11; DW_OP_ge;
/// DW_OP_lit3; DW_OP_shl; DW_OP_plus
/// ```
///
/// that is, CFA = rsp + N, plus 8 once the stub has pushed its relocation index (`rip & 15` ≥ 11;
/// each stub is 16 bytes: `jmp *GOT(%rip)` at 0, `push $i` at 6, `jmp PLT0` at 11). The lazy
/// IBT stubs' variant compares with 10 instead; their instructions start at 0, 4 (push), 9 and
/// 15, where ≥ 10 and the kernel's ≥ 11 agree, so it is read as the same kind.
fn plt_offset<'a, S>(
    expression: &UnwindExpression<usize>,
    section: &S,
    encoding: Encoding,
) -> Option<i64>
where
    S: UnwindSection<Slice<'a>>,
{
    let mut bytes = expression.get(section).ok()?.0;
    let mut next = || Operation::parse(&mut bytes, encoding).ok();
    let generic = UnitOffset(0);
    let Some(Operation::RegisterOffset {
        register: RSP,
        offset,
        base_type,
    }) = next()
    else {
        return None;
    };
    let rest_matches = base_type == generic
        && matches!(next()?, Operation::RegisterOffset { register: RA, offset: 0, base_type } if base_type == generic)
        && matches!(next()?, Operation::UnsignedConstant { value: 15 })
        && matches!(next()?, Operation::And)
        && matches!(next()?, Operation::UnsignedConstant { value: 10 | 11 })
        && matches!(next()?, Operation::Ge)
        && matches!(next()?, Operation::UnsignedConstant { value: 3 })
        && matches!(next()?, Operation::Shl)
        && matches!(next()?, Operation::Plus);
    (rest_matches && bytes.is_empty()).then_some(offset)
}

/// Sorts the rows, keeps one per address (a function's own row over the previous FDE's end, and
/// the first read, so `.eh_frame`'s, among equals) and drops rows that repeat the row before them
/// and `NONE` rows before the first real one. In place: no allocation but the sort's.
fn compact(mut rows: Vec<UnwindRow>, stats: &mut TableStats) -> Vec<UnwindRow> {
    stats.rows_before_compaction = rows.len() as u64;
    // Stable: rows at one address keep the order they were read in.
    rows.sort_by_key(|row| (row.pc, row.kind == FDE_END));
    let mut kept: usize = 0;
    let mut last_pc = None;
    for i in 0..rows.len() {
        let mut row = rows[i];
        if last_pc == Some(row.pc) {
            continue;
        }
        last_pc = Some(row.pc);
        if row.kind == FDE_END {
            row.kind = row_kind::NONE;
        }
        let repeats = match kept.checked_sub(1) {
            Some(previous) => {
                let previous: UnwindRow = rows[previous];
                (previous.kind, previous.cfa_offset, previous.rbp_offset)
                    == (row.kind, row.cfa_offset, row.rbp_offset)
            }
            None => row.kind == row_kind::NONE,
        };
        if !repeats {
            rows[kept] = row;
            kept += 1;
        }
    }
    rows.truncate(kept);
    rows.shrink_to_fit();
    stats.rows = rows.len() as u64;
    rows
}

/// Address ranges of the sections holding code (`SHF_ALLOC | SHF_EXECINSTR`, also when they are
/// `SHT_NOBITS` in a separate debug file), sorted.
fn executable_ranges(file: &object::File<'_>) -> Vec<(u64, u64)> {
    let code = u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR);
    let mut ranges: Vec<(u64, u64)> = file
        .sections()
        .filter(|s| matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & code == code))
        .filter_map(|s| Some((s.address(), s.address().checked_add(s.size())?)))
        .filter(|&(start, end)| start < end)
        .collect();
    ranges.sort_unstable();
    ranges
}

/// `.debug_frame`'s bytes, inflated if compressed with zlib; empty when absent or not readable
/// (counted: `.eh_frame` may still describe the code).
fn debug_frame_data<'d>(file: &object::File<'d>, stats: &mut TableStats) -> Cow<'d, [u8]> {
    let Some(section) = file.section_by_name(".debug_frame") else {
        return Cow::Borrowed(&[]);
    };
    let data = match section.compressed_data() {
        Ok(compressed) => match compressed.format {
            CompressionFormat::None => Some(Cow::Borrowed(compressed.data)),
            CompressionFormat::Zlib => {
                inflate(compressed.data, compressed.uncompressed_size).map(Cow::Owned)
            }
            _ => None,
        },
        Err(_) => None,
    };
    data.unwrap_or_else(|| {
        stats.unread_sections += 1;
        Cow::Borrowed(&[])
    })
}

/// Inflates a zlib stream that should give exactly `size` bytes.
fn inflate(data: &[u8], size: u64) -> Option<Vec<u8>> {
    let bound = (data.len() as u64)
        .saturating_add(64)
        .saturating_mul(MAX_ZLIB_RATIO);
    if size > bound {
        return None;
    }
    let mut out = Vec::new();
    out.try_reserve_exact(usize::try_from(size).ok()?).ok()?;
    let status = flate2::Decompress::new(true)
        .decompress_vec(data, &mut out, flate2::FlushDecompress::Finish)
        .ok()?;
    (status == flate2::Status::StreamEnd && out.len() as u64 == size).then_some(out)
}

#[cfg(test)]
mod tests {
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
}
