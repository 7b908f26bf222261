//! What a VM printed (`@@loupe` lines on its serial console), the table of every kernel's checks,
//! and README.md's copy of it.

use std::fmt::Write as _;

use anyhow::{Context, bail};

use super::{FEATURES, MARK, README_END, README_START};
use crate::util::root;

/// What one VM reported.
#[derive(Default)]
pub(super) struct VmResult {
    pub(super) series: &'static str,
    pub(super) package: String,
    pub(super) release: Option<String>,
    pub(super) doctor_rc: Option<i32>,
    pub(super) doctor: Vec<String>,
    /// End-to-end tests (profiler, HTTP spans, TCP option): (test name, `ok` / `FAILED` /
    /// `ignored` / `skipped`).
    pub(super) tests: Vec<(String, String)>,
    pub(super) e2e_rc: Option<i32>,
    /// The agent's socket-capture tests: (full test name, `ok` / `FAILED` / `ignored` / `skipped`).
    pub(super) capture_tests: Vec<(String, String)>,
    /// (full test name, why) of the tests the VM skips with `--skip`.
    pub(super) skip_reasons: Vec<(String, String)>,
    pub(super) capture_rc: Option<i32>,
    /// After `capture-begin`, `test` lines are the capture tests'.
    pub(super) in_capture: bool,
    /// Whether the VM has `::1` on `lo` (the TCP capture test's IPv6 half needs it).
    pub(super) ipv6_loopback: Option<bool>,
    /// The doctor's uprobes verdict without CAP_SYS_ADMIN (`yes`, `no`): whether this kernel
    /// lets the chart's default capabilities create uprobes.
    pub(super) uprobes_without_sys_admin: Option<String>,
    pub(super) done: bool,
    pub(super) timed_out: bool,
    /// This boot was not the first: why the one before failed (its console log is kept apart).
    pub(super) retried_after: Option<&'static str>,
    pub(super) seconds: f64,
    pub(super) warnings: Vec<String>,
}

impl VmResult {
    pub(super) fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.timed_out {
            out.push(format!("timed out after {:.0}s", self.seconds));
        } else if !self.done {
            out.push("the VM stopped before the suite finished (kernel panic?)".into());
        }
        match self.doctor_rc {
            Some(0) => {}
            Some(rc) => out.push(format!("loupe-agent doctor exited {rc}")),
            None if self.done => out.push("loupe-agent doctor did not run".into()),
            None => {}
        }
        let passed = |s: &str| matches!(s, "ok" | "ignored" | "skipped");
        for (name, status) in &self.tests {
            if !passed(status) {
                out.push(format!("test {name}: {status}"));
            }
        }
        if self.done && !self.tests.iter().any(|(_, s)| s != "skipped") {
            out.push("no end-to-end test ran".into());
        }
        let failed_test = self.tests.iter().any(|(_, s)| !passed(s));
        if let Some(rc) = self.e2e_rc.filter(|rc| *rc != 0 && !failed_test) {
            out.push(format!("the end-to-end tests exited {rc}"));
        }

        for (name, status) in &self.capture_tests {
            if !passed(status) {
                out.push(format!("capture test {name}: {status}"));
            }
        }
        match self.capture_rc {
            None if self.done => out.push("the socket capture tests did not run".into()),
            Some(rc) if rc != 0 && self.capture_tests.iter().all(|(_, s)| passed(s)) => {
                out.push(format!("the socket capture tests exited {rc}"));
            }
            _ => {}
        }
        if self.done && !self.capture_tests.iter().any(|(_, s)| s != "skipped") {
            out.push("no socket capture test ran".into());
        }
        out
    }

    /// The doctor's AVAILABLE column (`yes` or `no`) for the row starting with `feature`; the
    /// column starts where the header's `AVAILABLE` does.
    pub(super) fn feature(&self, feature: &str) -> String {
        let column = self
            .doctor
            .iter()
            .find(|l| l.starts_with("FEATURE"))
            .and_then(|header| header.find("AVAILABLE"));
        let value = column.and_then(|column| {
            self.doctor
                .iter()
                .find(|l| l.starts_with(feature))
                .and_then(|row| row.get(column..))
        });
        match value {
            Some(v) if v.starts_with("yes") => "yes".into(),
            Some(v) if v.starts_with("no") => "no".into(),
            _ => "?".into(),
        }
    }

    /// The value of a `Label: value` line of the doctor's summary.
    pub(super) fn summary(&self, label: &str) -> String {
        self.doctor
            .iter()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.strip_prefix(": "))
            .map(|v| v.split(" (").next().unwrap_or(v).to_string())
            .unwrap_or_else(|| "?".into())
    }

    pub(super) fn parse(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix(MARK) else {
            return;
        };
        let (word, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "kernel" => self.release = Some(value.to_string()),
            "doctor-end" => self.doctor_rc = value.trim().parse().ok(),
            "e2e-end" => self.e2e_rc = value.trim().parse().ok(),
            "capture-begin" => self.in_capture = true,
            "capture-end" => self.capture_rc = value.trim().parse().ok(),
            "ipv6-loopback" => self.ipv6_loopback = Some(value.trim() == "yes"),
            "uprobes-without-sys-admin" => {
                self.uprobes_without_sys_admin = Some(value.trim().to_string())
            }
            "test" => {
                if let Some((name, status)) = value.rsplit_once(' ') {
                    let tests = if self.in_capture {
                        &mut self.capture_tests
                    } else {
                        &mut self.tests
                    };
                    tests.push((name.to_string(), status.to_string()));
                }
            }
            "skip" => {
                let (name, why) = value.split_once(' ').unwrap_or((value, ""));
                let tests = if self.in_capture {
                    &mut self.capture_tests
                } else {
                    &mut self.tests
                };
                tests.push((name.to_string(), "skipped".to_string()));
                self.skip_reasons
                    .push((name.to_string(), why.trim().to_string()));
            }
            "warn" => self.warnings.push(value.to_string()),
            "done" => self.done = true,
            _ => {}
        }
    }
}

pub(super) fn render_table(results: &[VmResult]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let cell = |f: &dyn Fn(&VmResult) -> String| results.iter().map(f).collect::<Vec<_>>();
    let pass = |ok: bool| if ok { "pass" } else { "**FAIL**" }.to_string();
    rows.push((
        "kernel (Debian version)".into(),
        cell(&|r| {
            let version = r.package.split_once('_').map_or("?", |(_, v)| v);
            let release = r.release.as_deref().unwrap_or("?");
            format!("{release} ({version})")
        }),
    ));
    rows.push((
        "boots, suite completes".into(),
        cell(&|r| {
            if r.timed_out {
                "**TIMEOUT**".into()
            } else if let (Some(why), true) = (r.retried_after, r.done) {
                format!("pass (booted again: a boot {why})")
            } else {
                pass(r.done)
            }
        }),
    ));
    rows.push((
        "`loupe-agent doctor` exits 0".into(),
        cell(&|r| pass(r.doctor_rc == Some(0))),
    ));
    for (label, prefix) in FEATURES {
        rows.push((label.to_string(), cell(&|r| r.feature(prefix))));
    }
    rows.push((
        "uprobes without CAP_SYS_ADMIN (the chart's default)".into(),
        cell(&|r| match r.uprobes_without_sys_admin.as_deref() {
            Some("yes") => "yes".into(),
            Some("no") => {
                "no: TLS in clear, Go goroutines, allocation profiles need SYS_ADMIN".into()
            }
            _ => "?".into(),
        }),
    ));
    rows.push((
        "socket capture chosen".into(),
        cell(&|r| r.summary("Socket capture method (network spans)")),
    ));
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        for (name, _) in &r.tests {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    for name in names {
        rows.push((
            format!("test `{name}`"),
            cell(&|r| match r
                .tests
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.as_str())
            {
                Some("ok") => "pass".into(),
                Some("ignored") => "ignored".into(),
                Some(other) => format!("**{other}**"),
                None => "not run".into(),
            }),
        ));
    }
    rows.push((
        "IPv6 loopback (`::1`)".into(),
        cell(&|r| match r.ipv6_loopback {
            Some(true) => "yes".into(),
            Some(false) => "no: IPv6 half of the TCP capture test skipped".into(),
            None => "?".into(),
        }),
    ));
    let mut capture_names: Vec<&str> = Vec::new();
    for r in results {
        for (name, _) in &r.capture_tests {
            if !capture_names.contains(&name.as_str()) {
                capture_names.push(name);
            }
        }
    }
    for name in capture_names {
        let short = name.rsplit("::").next().unwrap_or(name);
        rows.push((
            format!("socket capture test `{short}`"),
            cell(&|r| {
                let status = r
                    .capture_tests
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| s.as_str());
                match status {
                    Some("ok") => "pass".into(),
                    Some("ignored") => "ignored".into(),
                    Some("skipped") => {
                        let why = r
                            .skip_reasons
                            .iter()
                            .find(|(n, _)| n == name)
                            .map_or("", |(_, w)| w.as_str());
                        if why.is_empty() {
                            "skipped".into()
                        } else {
                            format!("skipped: {why}")
                        }
                    }
                    Some(other) => format!("**{other}**"),
                    None => "not run".into(),
                }
            }),
        ));
    }
    rows.push((
        "VM wall time".into(),
        cell(&|r| format!("{:.0} s", r.seconds)),
    ));

    let mut out = String::from("| check |");
    for r in results {
        let _ = write!(out, " {} |", r.series);
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(results.len()));
    out.push('\n');
    for (label, cells) in rows {
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    out
}

pub(super) fn update_readme(table: &str) -> anyhow::Result<()> {
    let path = root().join("README.md");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(start), Some(end)) = (text.find(README_START), text.find(README_END)) else {
        bail!("README.md has no {README_START} … {README_END} section");
    };
    if end < start {
        bail!("README.md: {README_END} comes before {README_START}");
    }
    let section = format!(
        "{README_START}\n{}\n{table}{README_END}",
        "Generated by `cargo xtask vm-test --update-readme`: Debian's cloud kernels, stand-ins for the\n\
         EKS node images' kernels, booted under QEMU (TCG).\n"
    );
    let updated = format!(
        "{}{section}{}",
        &text[..start],
        &text[end + README_END.len()..]
    );
    std::fs::write(&path, updated).with_context(|| format!("cannot write {}", path.display()))
}
