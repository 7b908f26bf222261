//! What attaching uprobes takes, shared by allocation profiles and TLS capture: the file offset
//! of a function from a binary's symbols, where in the function the probe is cheapest, and the
//! files a process maps.

use object::{Object, ObjectSection, ObjectSymbol};

/// Where in a function to put its probe: past a leading test or compare of registers (which
/// only sets flags) when a conditional jump follows, so the probe sits on the jump; else at the
/// entry. The kernel emulates jumps (and pushes) at a probe, but must single-step most other
/// instructions out of line, which costs a second trap: measured on this project's CI host,
/// ~12 µs per call instead of ~0.45 µs. glibc's `free` starts `test %rdi,%rdi; je`, jemalloc's
/// `malloc` `cmp $0x1000,%rdi; ja`, and every Go function with a stack check
/// `cmp 0x10(%r14),%rsp; jbe` (a compare with a register-plus-8-bit-displacement operand, which
/// also only sets flags). Registers and the stack are as at the entry when the jump
/// runs, so arguments and the return address (for the return probe) are where the programs
/// look. x86-64 only.
pub fn probe_point(code: &[u8]) -> usize {
    if !cfg!(target_arch = "x86_64") {
        return 0;
    }
    // A register-direct ModRM byte (mod = 11): no memory operand, no displacement.
    let direct = |b: Option<&u8>| b.is_some_and(|m| m >> 6 == 3);
    let (rex, rest) = match code.first() {
        Some(&r) if r & 0xf0 == 0x40 => (1, &code[1..]),
        _ => (0, code),
    };
    // A ModRM byte naming memory at a base register plus an 8-bit displacement (mod = 01, and
    // no SIB byte: r/m ≠ 100).
    let base_disp8 = |m: &u8| m >> 6 == 1 && m & 7 != 4;
    let len = match rest {
        // test r, r / cmp r, r
        [0x85 | 0x39 | 0x3b, ..] if direct(rest.get(1)) => 2,
        // cmp r, disp8(base): Go's stack check against g.stackguard0
        [0x3b, m, ..] if base_disp8(m) => 3,
        // cmp r, imm8 / cmp r, imm32 (ModRM reg field 7)
        [0x83, m, ..] if direct(Some(m)) && (m >> 3) & 7 == 7 => 3,
        [0x81, m, ..] if direct(Some(m)) && (m >> 3) & 7 == 7 => 6,
        _ => return 0,
    };
    let jump = rex + len;
    match code.get(jump..) {
        Some([0x70..=0x7f, ..]) | Some([0x0f, 0x80..=0x8f, ..]) => jump,
        _ => 0,
    }
}

/// The file offset of a function `symbol` defines, from the dynamic symbols or the symbol table.
pub fn symbol_file_offset(file: &object::File<'_>, symbol: &str) -> Option<u64> {
    let sym = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name() == Ok(symbol))?;
    let section = file.section_by_index(sym.section_index()?).ok()?;
    let (offset, _) = section.file_range()?;
    Some(sym.address() - section.address() + offset)
}

/// Uprobes on files that running processes map, looked for again in the processes started
/// since (the profiler calls `rescan` at each drain: attaching needs the eBPF object it holds).
pub trait Rescan: Send {
    /// Probes what new processes brought; returns how many files were probed.
    fn rescan(&mut self, ebpf: &mut aya::Ebpf) -> usize;
}

/// Distinct file paths mapped executable, in order of appearance.
pub fn mapped_files(maps: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1).unwrap_or("");
        let path = fields.nth(3).unwrap_or("");
        if perms.contains('x') && path.starts_with('/') && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_skip_a_leading_argument_test_before_a_jump() {
        // glibc 2.36 free: test %rdi,%rdi; je rel32; push %rbp
        assert_eq!(
            probe_point(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55]),
            3
        );
        // jemalloc 5.3 malloc: cmp $0x1000,%rdi; ja rel32
        assert_eq!(
            probe_point(&[0x48, 0x81, 0xff, 0, 0x10, 0, 0, 0x0f, 0x87, 1, 2, 3, 4]),
            7
        );
        // test %edi,%edi; jz rel8 (no REX); cmp $8,%rsi; jb rel8
        assert_eq!(probe_point(&[0x85, 0xff, 0x74, 0x10]), 2);
        assert_eq!(probe_point(&[0x48, 0x83, 0xfe, 0x08, 0x72, 0x10]), 4);
        // glibc malloc: push %r12 (emulated already); jemalloc free: mov %rdi,%rax
        assert_eq!(probe_point(&[0x41, 0x54, 0x55, 0x53]), 0);
        assert_eq!(probe_point(&[0x48, 0x89, 0xf8, 0x48, 0x8b]), 0);
        // A test with a memory operand, a test not followed by a jump, and short input.
        assert_eq!(probe_point(&[0x48, 0x85, 0x07, 0x74, 0x10]), 0);
        assert_eq!(probe_point(&[0x48, 0x85, 0xff, 0x55]), 0);
        assert_eq!(probe_point(&[0x48, 0x85]), 0);
        assert_eq!(probe_point(&[]), 0);
        // Go 1.19 runtime.goready: cmp 0x10(%r14),%rsp; jbe rel8. Big frames: jbe rel32.
        assert_eq!(probe_point(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x58]), 4);
        assert_eq!(
            probe_point(&[0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0, 0, 0, 0]),
            4
        );
        // Go's check of a lowered stack pointer starts with a lea (not skipped); a compare with
        // a SIB byte (r/m = 100) is not taken apart.
        assert_eq!(
            probe_point(&[0x4c, 0x8d, 0x64, 0x24, 0xf8, 0x4d, 0x3b, 0x66]),
            0
        );
        assert_eq!(probe_point(&[0x48, 0x3b, 0x64, 0x24, 0x10, 0x76, 0x10]), 0);
        // cmp with another ModRM reg field is another instruction (add): not skipped.
        assert_eq!(probe_point(&[0x48, 0x83, 0xc7, 0x08, 0x74, 0x10]), 0);
    }

    #[test]
    fn mapped_files_lists_executable_files_once() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1 /usr/bin/redis-server
55d0c0a01000-55d0c0b00000 r-xp 00001000 08:01 1 /usr/bin/redis-server
7f00-7f01 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
7f02-7f03 rw-p 00000000 00:00 0
7f04-7f05 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffc-7ffd r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            mapped_files(maps),
            [
                "/usr/bin/redis-server",
                "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                "/usr/lib/x86_64-linux-gnu/libc.so.6"
            ]
        );
    }
}
