//! Splits stdout/stderr writes into lines. Pure: writes in, lines out.
//!
//! A line may span writes (`printf` without a newline, then the rest): the part before its end
//! waits per (process, fd), timed and attributed by the write that started it. A line longer than
//! the limit is cut there and the rest of it, up to its newline, is skipped. A write longer than
//! what the kernel captured of it ends in a cut line: the rest was never seen. Empty lines are
//! left out; a trailing `\r` is removed.

use std::collections::HashMap;

use super::LogWrite;

/// One line, ready to become a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub pid: u32,
    /// The thread that wrote its first byte.
    pub tid: u32,
    pub fd: i32,
    /// When the write holding its first byte completed (CLOCK_MONOTONIC ns).
    pub monotonic_ns: u64,
    pub bytes: Vec<u8>,
    /// (trace id, span id) the writing thread served when the line began.
    pub context: Option<([u8; 16], [u8; 8])>,
    /// The line was longer than what is kept of it.
    pub cut: bool,
}

/// A line whose end has not been written yet (past the limit, `line.cut` is set and the rest
/// of it is dropped up to its newline).
#[derive(Debug)]
struct Partial {
    line: Line,
}

/// See the module docs.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    max_partials: usize,
    partials: HashMap<(u32, i32), Partial>,
}

impl LineSplitter {
    pub fn new(max_line: usize, max_partials: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            max_partials: max_partials.max(1),
            partials: HashMap::new(),
        }
    }

    /// Splits one write; `cut` says the write moved more bytes than `w.data` holds.
    pub fn push(&mut self, w: &LogWrite<'_>, cut: bool, out: &mut Vec<Line>) {
        let key = (w.pid, w.fd);
        let mut partial = self.partials.remove(&key);
        let mut rest = w.data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (segment, after) = (&rest[..nl], &rest[nl + 1..]);
            match partial.take() {
                Some(mut p) => {
                    self.append(&mut p, segment);
                    self.emit(p.line, out);
                }
                None => {
                    let mut p = self.start(w);
                    self.append(&mut p, segment);
                    self.emit(p.line, out);
                }
            }
            rest = after;
        }
        if !rest.is_empty() {
            let mut p = partial.take().unwrap_or_else(|| self.start(w));
            self.append(&mut p, rest);
            partial = Some(p);
        }
        if cut {
            // The line goes on in bytes never seen.
            if let Some(mut p) = partial.take() {
                p.line.cut = true;
                self.emit(p.line, out);
            }
        }
        if let Some(p) = partial {
            if self.partials.len() >= self.max_partials {
                // Too many lines in progress: the oldest go out as they are.
                self.flush_older(u64::MAX, out);
            }
            self.partials.insert(key, p);
        }
    }

    /// Lines in progress that began before `cutoff_ns` go out as they are.
    pub fn flush_older(&mut self, cutoff_ns: u64, out: &mut Vec<Line>) {
        let old: Vec<(u32, i32)> = self
            .partials
            .iter()
            .filter(|(_, p)| p.line.monotonic_ns < cutoff_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in old {
            if let Some(p) = self.partials.remove(&key) {
                self.emit(p.line, out);
            }
        }
    }

    /// Lines in progress.
    #[cfg(test)]
    pub fn partial_count(&self) -> usize {
        self.partials.len()
    }

    fn start(&self, w: &LogWrite<'_>) -> Partial {
        Partial {
            line: Line {
                pid: w.pid,
                tid: w.tid,
                fd: w.fd,
                monotonic_ns: w.monotonic_ns,
                bytes: Vec::new(),
                context: w.context,
                cut: false,
            },
        }
    }

    /// Adds bytes to a line within the limit; past it the line is marked cut and the rest of
    /// it is dropped.
    fn append(&self, p: &mut Partial, bytes: &[u8]) {
        let room = self.max_line.saturating_sub(p.line.bytes.len());
        if bytes.len() > room {
            p.line.bytes.extend_from_slice(&bytes[..room]);
            p.line.cut = true;
        } else {
            p.line.bytes.extend_from_slice(bytes);
        }
    }

    fn emit(&self, mut line: Line, out: &mut Vec<Line>) {
        if line.bytes.last() == Some(&b'\r') {
            line.bytes.pop();
        }
        if !line.bytes.is_empty() {
            out.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(pid: u32, fd: i32, t: u64, data: &[u8]) -> LogWrite<'_> {
        LogWrite {
            pid,
            tid: pid + 1,
            fd,
            monotonic_ns: t,
            data,
            total: data.len() as u64,
            context: Some(([t as u8; 16], [t as u8; 8])),
        }
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
    }

    #[test]
    fn splits_lines_and_joins_a_line_written_in_pieces() {
        let mut s = LineSplitter::new(100, 8);
        let mut out = Vec::new();
        s.push(&write(1, 1, 10, b"one\ntwo\r\n\nthr"), false, &mut out);
        assert_eq!(texts(&out), ["one", "two"]);
        s.push(&write(2, 1, 11, b"other process\n"), false, &mut out);
        s.push(
            &write(1, 2, 12, b"stderr is its own stream\n"),
            false,
            &mut out,
        );
        s.push(&write(1, 1, 13, b"ee\nfour"), false, &mut out);
        assert_eq!(
            texts(&out),
            [
                "one",
                "two",
                "other process",
                "stderr is its own stream",
                "three"
            ]
        );
        // "three" is timed and attributed by the write that began it.
        let three = &out[4];
        assert_eq!(
            (three.monotonic_ns, three.context.unwrap().1),
            (10, [10; 8])
        );
        assert_eq!(s.partial_count(), 1);
        out.clear();
        // A line without an end goes out once it is old enough.
        s.flush_older(14, &mut out);
        assert_eq!(texts(&out), ["four"]);
        assert_eq!(s.partial_count(), 0);
    }

    #[test]
    fn cuts_long_lines_and_skips_their_rest() {
        let mut s = LineSplitter::new(5, 8);
        let mut out = Vec::new();
        s.push(&write(1, 1, 1, b"0123456789"), false, &mut out);
        s.push(&write(1, 1, 2, b"abc\nnext\n"), false, &mut out);
        assert_eq!(texts(&out), ["01234", "next"]);
        assert!(out[0].cut && !out[1].cut);
        // A write the kernel captured only in part ends in a cut line.
        let mut w = write(1, 1, 3, b"head\npartial");
        w.total = 500;
        out.clear();
        s.push(&w, true, &mut out);
        assert_eq!(texts(&out), ["head", "parti"]);
        assert!(out[1].cut);
        assert_eq!(s.partial_count(), 0);
    }

    #[test]
    fn bounded_lines_in_progress() {
        let mut s = LineSplitter::new(100, 2);
        let mut out = Vec::new();
        for pid in 0..5 {
            s.push(
                &write(pid, 1, u64::from(pid), b"no newline"),
                false,
                &mut out,
            );
            assert!(s.partial_count() <= 2);
        }
        assert_eq!(out.len() + s.partial_count(), 5, "none lost");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

            /// Any writes, cut or not, from a few processes: no panic, no line over the limit
            /// or holding a newline, no empty line, and every byte of every emitted line was
            /// written by that process.
            #[test]
            fn arbitrary_writes_split_into_bounded_lines(
                writes in proptest::collection::vec(
                    (0u32..3, 1i32..3, proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()),
                    0..40,
                ),
                max_line in 1usize..200,
            ) {
                let mut s = LineSplitter::new(max_line, 4);
                let mut out = Vec::new();
                let mut written: std::collections::HashMap<u32, Vec<u8>> = Default::default();
                for (i, (pid, fd, data, cut)) in writes.iter().enumerate() {
                    s.push(&write(*pid, *fd, i as u64, data), *cut, &mut out);
                    written.entry(*pid).or_default().extend_from_slice(data);
                }
                s.flush_older(u64::MAX, &mut out);
                for line in &out {
                    prop_assert!(!line.bytes.is_empty());
                    prop_assert!(line.bytes.len() <= max_line);
                    prop_assert!(!line.bytes.contains(&b'\n'));
                    let all = &written[&line.pid];
                    prop_assert!(line.bytes.iter().all(|b| all.contains(b)));
                }
                prop_assert_eq!(s.partial_count(), 0);
            }
        }
    }
}
