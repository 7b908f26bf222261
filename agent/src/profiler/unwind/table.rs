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
    // Room for every row the sections can describe, reserved at once: a vector grown by
    // doubling held its old and new buffers together, three times the rows' size at the peak (the
    // agent's own resident memory; a large library's table is tens of MB). Capacity never
    // written is address space only.
    builder
        .rows
        .reserve(row_bound(eh_frame.len() + debug_frame.len()));

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

/// Rows that `cfi_bytes` of call frame information give at most in practice: a row after an
/// FDE's first takes an advance instruction and a rule change (two bytes at least), and an FDE
/// of one row and its end row 20 bytes or more. A section that packs more (advances alone)
/// only makes the vector grow.
fn row_bound(cfi_bytes: usize) -> usize {
    cfi_bytes / 2
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
    // Not shrunk: the rows are copied into the BPF array and dropped, and shrinking would copy
    // them once more, with both buffers held at once.
    rows.truncate(kept);
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
mod tests;
