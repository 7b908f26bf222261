//! What `loupe-agent doctor` says of stack unwinding: for each executable running now, whether it
//! keeps frame pointers, and so which unwinder its processes get under each `--unwinder` mode.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt};

use loupe_common::unwind::row_kind;

use super::table;

/// Executables looked at, at most (the largest process counts first).
const MAX_EXECUTABLES: usize = 64;
/// Files larger than this are reported without being read.
const MAX_BYTES: u64 = 512 << 20;

/// One executable running now, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    pub path: String,
    pub processes: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Its code keeps frame pointers: walked with them in every mode but `dwarf`.
    FramePointers,
    /// No frame pointers, but unwind tables of `rows` rows: cut short with frame pointers.
    NeedsTables { rows: usize },
    /// Neither: walked with frame pointers, cut short.
    NoUnwindInfo,
    /// Not read: why.
    Unread(String),
}

/// Whether rows say the code keeps frame pointers: functions that set up `rbp` as the frame
/// pointer describe most of their body with an rbp-based CFA; code built without them uses it
/// only in the rare function that realigns its stack.
pub fn keeps_frame_pointers(rows: &[loupe_common::unwind::UnwindRow]) -> bool {
    let described = rows.iter().filter(|r| r.kind != row_kind::NONE).count();
    let rbp = rows.iter().filter(|r| r.kind == row_kind::CFA_RBP).count();
    described > 0 && rbp * 5 >= described
}

/// Classifies one ELF file.
pub fn classify(data: &[u8]) -> Kind {
    match table::build(data) {
        Ok(t) if t.rows.is_empty() => Kind::NoUnwindInfo,
        Ok(t) if keeps_frame_pointers(&t.rows) => Kind::FramePointers,
        Ok(t) => Kind::NeedsTables { rows: t.rows.len() },
        Err(_) => Kind::NoUnwindInfo,
    }
}

/// The executables of the processes running now (kernel threads aside), most processes first.
pub fn survey() -> Vec<Executable> {
    // (path shown, a pid to open it through, processes)
    let mut by_file: BTreeMap<(u64, u64), (String, u32, usize)> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let exe = format!("/proc/{pid}/exe");
        let (Ok(meta), Ok(path)) = (std::fs::metadata(&exe), std::fs::read_link(&exe)) else {
            continue;
        };
        by_file
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| (path.display().to_string(), pid, 0))
            .2 += 1;
    }
    let mut found: Vec<(String, u32, usize)> = by_file.into_values().collect();
    found.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    found.truncate(MAX_EXECUTABLES);
    found
        .into_iter()
        .map(|(path, pid, processes)| {
            // Through the process: reaches files of other mount namespaces, and deleted ones.
            let kind = match std::fs::File::open(format!("/proc/{pid}/exe")) {
                Err(e) => Kind::Unread(e.to_string()),
                Ok(f) if f.metadata().is_ok_and(|m| m.len() > MAX_BYTES) => {
                    Kind::Unread("larger than 512 MiB".into())
                }
                // SAFETY: a read-only private mapping of a file held open, only read here; an
                // executable that runs cannot be written (ETXTBSY).
                Ok(f) => match unsafe { memmap2::Mmap::map(&f) } {
                    Ok(data) => classify(&data),
                    Err(e) => Kind::Unread(e.to_string()),
                },
            };
            Executable {
                path,
                processes,
                kind,
            }
        })
        .collect()
}

/// The doctor's line.
pub fn report(executables: &[Executable]) -> String {
    if executables.is_empty() {
        return "Stack unwinding: no process to look at".to_string();
    }
    let mut fp = Vec::new();
    let mut tables = Vec::new();
    let mut none = Vec::new();
    for e in executables {
        let name = format!(
            "{} ({} process{})",
            e.path,
            e.processes,
            if e.processes == 1 { "" } else { "es" }
        );
        match &e.kind {
            Kind::FramePointers => fp.push(name),
            Kind::NeedsTables { rows } => {
                tables.push(format!("{name}, {} KiB of tables", rows * 8 / 1024))
            }
            Kind::NoUnwindInfo => none.push(name),
            Kind::Unread(why) => none.push(format!("{name}, not read: {why}")),
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "Stack unwinding (--unwinder auto, the default: frame pointers, then unwind tables for a \
         process whose stacks come out cut short; dwarf: tables for every process; \
         frame-pointers: never): {} executable{} running. Built without frame pointers, walked \
         with their .eh_frame tables: {}. Keeping frame pointers, walked with them: {}. Without \
         unwind information, walked with frame pointers (may be cut short): {}",
        executables.len(),
        if executables.len() == 1 { "" } else { "s" },
        list(&tables),
        list(&fp),
        list(&none),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_common::unwind::UnwindRow;

    fn row(kind: u8) -> UnwindRow {
        UnwindRow {
            pc: 0,
            cfa_offset: 8,
            kind,
            rbp_offset: 0,
        }
    }

    #[test]
    fn frame_pointer_code_is_told_from_code_without() {
        // Per function with frame pointers: entry (rsp), after `push rbp` (rsp), body (rbp).
        let with: Vec<UnwindRow> = [row_kind::CFA_RSP, row_kind::CFA_RSP, row_kind::CFA_RBP]
            .repeat(100)
            .into_iter()
            .map(row)
            .collect();
        assert!(keeps_frame_pointers(&with));
        let mut without: Vec<UnwindRow> =
            std::iter::repeat_n(row(row_kind::CFA_RSP), 300).collect();
        without.push(row(row_kind::CFA_RBP));
        assert!(!keeps_frame_pointers(&without));
        assert!(!keeps_frame_pointers(&[]));
    }

    #[test]
    fn the_report_names_each_kind() {
        let text = report(&[
            Executable {
                path: "/usr/sbin/mariadbd".into(),
                processes: 1,
                kind: Kind::NeedsTables { rows: 4096 },
            },
            Executable {
                path: "/usr/bin/go_service".into(),
                processes: 2,
                kind: Kind::FramePointers,
            },
        ]);
        assert!(text.contains("2 executables running"), "{text}");
        assert!(
            text.contains("tables: /usr/sbin/mariadbd (1 process), 32 KiB of tables"),
            "{text}"
        );
        assert!(
            text.contains("walked with them: /usr/bin/go_service (2 processes)"),
            "{text}"
        );
        assert!(text.contains("may be cut short): none"), "{text}");
    }
}
