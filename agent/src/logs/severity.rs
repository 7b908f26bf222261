//! Severity of a log line from its common shapes: JSON (`"level"`, `"severity"`, `"lvl"`),
//! logfmt (`level=`, `lvl=`, `severity=`) and a level word among the first tokens
//! (`2026-12-03T10:00:00Z ERROR ...`, `[WARN] ...`, `E1203 ...` is not recognized). Pure and
//! allocation-free; reads at most the first 256 bytes of the line.

use loupe_collector::logs::Severity;

/// Bytes of a line looked at.
const HEAD: usize = 256;
/// Leading tokens searched for a level word.
const LEADING_TOKENS: usize = 4;

/// The severity `line` declares, `Severity::Unspecified` when none is recognized.
pub fn detect(line: &[u8]) -> Severity {
    let head = &line[..line.len().min(HEAD)];
    let trimmed = trim_start(head);
    if trimmed.first() == Some(&b'{')
        && let Some(s) = json_level(trimmed)
    {
        return s;
    }
    if let Some(s) = logfmt_level(head) {
        return s;
    }
    head.split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .take(LEADING_TOKENS)
        .find_map(|t| word(t.trim_ascii_matches()))
        .unwrap_or_default()
}

trait TrimLevelPunctuation {
    fn trim_ascii_matches(&self) -> &[u8];
}

impl TrimLevelPunctuation for [u8] {
    /// The token without the brackets and separators levels are often wrapped in.
    fn trim_ascii_matches(&self) -> &[u8] {
        let is_punct = |b: &u8| matches!(b, b'[' | b']' | b'(' | b')' | b'<' | b'>' | b':' | b'|');
        let start = self.iter().position(|b| !is_punct(b)).unwrap_or(self.len());
        let end = self
            .iter()
            .rposition(|b| !is_punct(b))
            .map_or(start, |e| e + 1);
        &self[start..end.max(start)]
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// A level word, any case: the usual names and their short forms.
fn word(w: &[u8]) -> Option<Severity> {
    if w.is_empty() || w.len() > 9 {
        return None;
    }
    let mut buf = [0u8; 9];
    for (d, s) in buf.iter_mut().zip(w) {
        *d = s.to_ascii_lowercase();
    }
    Some(match &buf[..w.len()] {
        b"trace" | b"trc" => Severity::Trace,
        b"debug" | b"dbg" => Severity::Debug,
        b"info" | b"inf" | b"notice" => Severity::Info,
        b"warn" | b"warning" | b"wrn" => Severity::Warn,
        b"error" | b"err" | b"eror" => Severity::Error,
        b"fatal" | b"crit" | b"critical" | b"panic" | b"emerg" | b"alert" => Severity::Fatal,
        _ => return None,
    })
}

/// `"level": "warn"` (or `severity`, `lvl`) in a JSON object's text.
fn json_level(s: &[u8]) -> Option<Severity> {
    for key in [&b"\"level\""[..], b"\"severity\"", b"\"lvl\""] {
        let Some(at) = find(s, key) else { continue };
        let rest = trim_start(&s[at + key.len()..]);
        let rest = trim_start(rest.strip_prefix(b":")?);
        let rest = rest.strip_prefix(b"\"")?;
        let end = rest.iter().position(|&b| b == b'"')?;
        if let Some(sev) = word(&rest[..end]) {
            return Some(sev);
        }
    }
    None
}

/// `level=warn` (or `lvl=`, `severity=`), at the start or after a space, value maybe quoted.
fn logfmt_level(s: &[u8]) -> Option<Severity> {
    for key in [&b"level="[..], b"lvl=", b"severity="] {
        let mut from = 0;
        while let Some(at) = find(&s[from..], key) {
            let at = from + at;
            if at == 0 || s[at - 1] == b' ' {
                let value = &s[at + key.len()..];
                let value = value.strip_prefix(b"\"").unwrap_or(value);
                let end = value
                    .iter()
                    .position(|&b| b == b' ' || b == b'"')
                    .unwrap_or(value.len());
                return word(&value[..end]);
            }
            from = at + key.len();
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_shapes() {
        let cases: &[(&str, Severity)] = &[
            (
                r#"{"ts":"2026-12-03T10:00:00Z","level":"error","msg":"payment declined"}"#,
                Severity::Error,
            ),
            (
                r#"{ "severity" : "WARNING", "message": "slow" }"#,
                Severity::Warn,
            ),
            (r#"{"lvl":"dbg","msg":"x"}"#, Severity::Debug),
            (
                "time=2026-12-03T10:00:00Z level=info msg=\"ok\"",
                Severity::Info,
            ),
            ("ts=1 lvl=\"warn\" msg=x", Severity::Warn),
            (
                "2026-12-03T10:00:00.123Z ERROR [payment] card declined",
                Severity::Error,
            ),
            (
                "2025-01-02T03:04:05.678Z INFO  [frontend] listening",
                Severity::Info,
            ),
            ("[WARN] disk almost full", Severity::Warn),
            ("FATAL: cannot bind", Severity::Fatal),
            ("debug: cache miss", Severity::Debug),
            ("panic: runtime error: index out of range", Severity::Fatal),
            ("plain text without a level", Severity::Unspecified),
            ("", Severity::Unspecified),
            // A level word late in the line is a message, not a level.
            (
                "user alice changed setting to error after five tries",
                Severity::Unspecified,
            ),
            // `mylevel=` is not `level=`.
            ("mylevel=error msg=x", Severity::Unspecified),
        ];
        for (line, want) in cases {
            assert_eq!(detect(line.as_bytes()), *want, "{line}");
        }
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        for line in [
            &b"{\"level\""[..],
            b"{\"level\":",
            b"{\"level\":\"",
            b"level=",
            b"\xff\xfe level=\xff",
            b"[[[[]]]]",
            b"::::",
        ] {
            let _ = detect(line);
        }
    }
}
