//! Reading the logs the agent's local sink writes to `DIR/logs.jsonl`: one OTLP/JSON `ExportLogsServiceRequest`
//! per line (`resourceLogs[].resource.attributes` with `service.name`, `scopeLogs[].logRecords[]`; fields at
//! their default value may be left out, so a record without `traceId` was written outside any request). And the
//! log checks: log-spam (lines per second per service and severity) and, for error-burst, the error line of each
//! failing request found by its trace and span id.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use super::checks::{Verdict, Window};
use crate::spans_read::{Span, any_value_string, attributes, hex_id, u64_field};
use crate::util::short;

/// One log record.
#[derive(Clone, Debug, Default)]
pub(super) struct LogRecord {
    /// `service.name` of its resource.
    pub(super) service: String,
    /// `timeUnixNano`, else `observedTimeUnixNano`.
    pub(super) time_ns: u64,
    /// `severityNumber`: 0 unspecified, 1–4 trace, 5–8 debug, 9–12 info, 13–16 warn, 17–20 error, 21–24 fatal.
    pub(super) severity_number: i64,
    pub(super) severity_text: String,
    /// The body rendered as a string.
    pub(super) body: String,
    /// Hex, lowercase; empty when the line was written outside any request.
    pub(super) trace_id: String,
    pub(super) span_id: String,
}

impl LogRecord {
    /// The severity as a word: `severityText` uppercased when set, else the name of the `severityNumber` range.
    pub(super) fn severity(&self) -> String {
        if !self.severity_text.is_empty() {
            return self.severity_text.to_ascii_uppercase();
        }
        match self.severity_number {
            1..=4 => "TRACE",
            5..=8 => "DEBUG",
            9..=12 => "INFO",
            13..=16 => "WARN",
            17..=20 => "ERROR",
            21..=24 => "FATAL",
            _ => "UNSPECIFIED",
        }
        .to_string()
    }

    /// Error or fatal, by number (or by text when the number is unset).
    pub(super) fn is_error(&self) -> bool {
        match self.severity_number {
            17..=24 => true,
            0 => matches!(self.severity().as_str(), "ERROR" | "FATAL"),
            _ => false,
        }
    }
}

/// What [`read`] found.
pub(super) struct Logs {
    pub(super) records: Vec<LogRecord>,
    /// Lines that were not a JSON export request (a line cut by a killed agent).
    pub(super) bad_lines: usize,
}

/// Every record in `dir/logs.jsonl`, after those of `dir/logs.jsonl.1` when the sink rotated the file (at 64 MiB).
pub(super) fn read(dir: &Path) -> anyhow::Result<Logs> {
    let path = dir.join("logs.jsonl");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("reading {} (did the agent write logs?)", path.display()))?;
    let rotated = fs::read_to_string(dir.join("logs.jsonl.1")).unwrap_or_default();
    let mut out = Logs {
        records: Vec::new(),
        bad_lines: 0,
    };
    for line in rotated
        .lines()
        .chain(text.lines())
        .filter(|l| !l.trim().is_empty())
    {
        if !parse_line(line, &mut out.records) {
            out.bad_lines += 1;
        }
    }
    Ok(out)
}

/// Appends the records of one `ExportLogsServiceRequest` line; false when the line is not JSON.
fn parse_line(line: &str, out: &mut Vec<LogRecord>) -> bool {
    let Ok(request) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    for rl in request["resourceLogs"].as_array().into_iter().flatten() {
        let resource = attributes(&rl["resource"]["attributes"]);
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
            for r in sl["logRecords"].as_array().into_iter().flatten() {
                let time = u64_field(&r["timeUnixNano"]);
                out.push(LogRecord {
                    service: service.clone(),
                    time_ns: if time != 0 {
                        time
                    } else {
                        u64_field(&r["observedTimeUnixNano"])
                    },
                    severity_number: r["severityNumber"].as_i64().unwrap_or(0),
                    severity_text: r["severityText"].as_str().unwrap_or_default().to_string(),
                    body: r
                        .get("body")
                        .map(|b| match b.get("stringValue") {
                            Some(Value::String(s)) => s.clone(),
                            _ => any_value_string(b),
                        })
                        .unwrap_or_default(),
                    trace_id: hex_id(&r["traceId"]),
                    span_id: hex_id(&r["spanId"]),
                });
            }
        }
    }
    true
}

/// The records written in one time window, and its length.
pub(super) struct LogWindow<'a> {
    pub(super) name: &'static str,
    pub(super) secs: f64,
    pub(super) records: Vec<&'a LogRecord>,
}

impl<'a> LogWindow<'a> {
    pub(super) fn new(
        name: &'static str,
        all: &'a [LogRecord],
        from_ns: u64,
        to_ns: u64,
    ) -> LogWindow<'a> {
        LogWindow {
            name,
            secs: to_ns.saturating_sub(from_ns) as f64 / 1e9,
            records: all
                .iter()
                .filter(|r| (from_ns..to_ns).contains(&r.time_ns))
                .collect(),
        }
    }

    fn of(&self, service: &str) -> impl Iterator<Item = &'a LogRecord> {
        self.records
            .iter()
            .copied()
            .filter(move |r| r.service == service)
    }

    /// Lines per second of `service`.
    pub(super) fn rate(&self, service: &str) -> f64 {
        self.per_sec(self.of(service).count())
    }

    /// Lines per second of `service` at `severity` (as [`LogRecord::severity`] names it).
    pub(super) fn rate_at(&self, service: &str, severity: &str) -> f64 {
        self.per_sec(
            self.of(service)
                .filter(|r| r.severity() == severity)
                .count(),
        )
    }

    /// Lines per service and severity.
    fn counts(&self) -> BTreeMap<&'a str, BTreeMap<String, usize>> {
        let mut by: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &self.records {
            *by.entry(r.service.as_str())
                .or_default()
                .entry(r.severity())
                .or_default() += 1;
        }
        by
    }

    fn per_sec(&self, n: usize) -> f64 {
        if self.secs > 0.0 {
            n as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Prints lines per second per service in both windows, and per severity.
pub(super) fn print_rates(base: &LogWindow, fault: &LogWindow) {
    let (cb, cf) = (base.counts(), fault.counts());
    let services: BTreeSet<&str> = cb.keys().chain(cf.keys()).copied().collect();
    println!(
        "log lines/s per service ({:.1} s {}, {:.1} s {}):",
        base.secs, base.name, fault.secs, fault.name
    );
    println!(
        "  {:<12} {:>10} {:>10}  by severity ({} → {})",
        "service", base.name, fault.name, base.name, fault.name
    );
    for svc in services {
        let empty = BTreeMap::new();
        let (sb, sf) = (cb.get(svc).unwrap_or(&empty), cf.get(svc).unwrap_or(&empty));
        let levels: BTreeSet<&String> = sb.keys().chain(sf.keys()).collect();
        let by_level: Vec<String> = levels
            .into_iter()
            .map(|l| {
                let n = |m: &BTreeMap<String, usize>, w: &LogWindow| {
                    w.per_sec(m.get(l).copied().unwrap_or(0))
                };
                format!("{l} {:.1} → {:.1}", n(sb, base), n(sf, fault))
            })
            .collect();
        println!(
            "  {svc:<12} {:>10.1} {:>10.1}  {}",
            base.rate(svc),
            fault.rate(svc),
            by_level.join(", ")
        );
    }
}

/// How far log-spam's measured rise may be from requests/s × lines per request, as a share of the latter.
pub(super) const LOG_SPAM_TOLERANCE: f64 = 0.2;

/// log-spam: each of `service`'s requests writes `lines` extra DEBUG lines. Its line rate must rise by its request
/// rate (from its server spans in the same window) × `lines`, within [`LOG_SPAM_TOLERANCE`], with the DEBUG lines
/// only in the fault window, the other services unchanged, and the rate under the agent's per-process `limit`
/// (a rate at the limit would measure the limit, not the fault); and the lines must carry the trace ids of the
/// requests that wrote them.
pub(super) fn check_log_spam(
    logs: (&LogWindow, &LogWindow),
    spans: (&Window, &Window),
    service: &str,
    lines: f64,
    limit: u32,
    v: &mut Verdict,
) {
    let (lb, lf) = logs;
    let (sb, sf) = spans;
    let requests = |w: &Window, l: &LogWindow| {
        let n = w.server(service, "/").len();
        (n, if l.secs > 0.0 { n as f64 / l.secs } else { 0.0 })
    };
    let ((nb, rb), (nf, rf)) = (requests(sb, lb), requests(sf, lf));
    let (base_rate, fault_rate) = (lb.rate(service), lf.rate(service));
    let (debug_base, debug_fault) = (lb.rate_at(service, "DEBUG"), lf.rate_at(service, "DEBUG"));
    let expected = rf * lines;
    let rise = fault_rate - base_rate;
    println!(
        "{service}: {rb:.1} requests/s in the baseline ({nb} server spans), {rf:.1} with the fault ({nf}); expected rise {rf:.1} × {lines:.0} = {expected:.0} lines/s"
    );
    // Whether the spam lines are tied to the requests that wrote them.
    let traces: HashSet<&str> = sf
        .server(service, "/")
        .iter()
        .map(|s| s.trace_id.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    let debug: Vec<&LogRecord> = lf
        .records
        .iter()
        .copied()
        .filter(|r| r.service == service && r.severity() == "DEBUG")
        .collect();
    let tied = debug
        .iter()
        .filter(|r| traces.contains(r.trace_id.as_str()))
        .count();
    let tied_share = if debug.is_empty() {
        0.0
    } else {
        tied as f64 / debug.len() as f64
    };
    let within = |x: f64| expected > 0.0 && (x / expected - 1.0).abs() <= LOG_SPAM_TOLERANCE;
    let pct = LOG_SPAM_TOLERANCE * 100.0;
    v.check(
        nb >= 100 && nf >= 100,
        format!("{service} server spans: {nb} before, {nf} with the fault (≥ 100 each)"),
    );
    v.check(
        within(rise),
        format!(
            "{service}'s log rate rises {base_rate:.1} → {fault_rate:.1} lines/s: +{rise:.0}, expected {expected:.0} (requests/s × {lines:.0}) ±{pct:.0}%"
        ),
    );
    v.check(
        within(debug_fault),
        format!(
            "{service}'s DEBUG lines with the fault: {debug_fault:.0}/s, expected {expected:.0} ±{pct:.0}%"
        ),
    );
    // The shop writes the lines before its handler awaits anything, on the thread that read the request: Loupe
    // ties them to that request exactly.
    v.check(
        tied_share >= 0.9,
        format!(
            "{service}'s DEBUG lines carry the trace id of one of its server spans in the window: {tied} of {} ({:.0}%, ≥ 90%)",
            debug.len(),
            100.0 * tied_share
        ),
    );
    v.check(
        debug_base == 0.0,
        format!("no {service} DEBUG lines before the fault ({debug_base:.1}/s)"),
    );
    v.check(
        fault_rate < 0.9 * f64::from(limit),
        format!(
            "{service}'s {fault_rate:.0} lines/s stay under 90% of the agent's --log-lines-per-sec {limit}"
        ),
    );
    let services: BTreeSet<&str> = lb
        .records
        .iter()
        .chain(&lf.records)
        .map(|r| r.service.as_str())
        .filter(|s| *s != service)
        .collect();
    let (other, change) = services
        .iter()
        .map(|s| (*s, (lf.rate(s) - lb.rate(s)).abs()))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("none", 0.0));
    v.check(
        change <= 0.1 * expected,
        format!(
            "the other services' rates hold: the largest change is {other}'s, {change:.1} lines/s (≤ 10% of the expected rise)"
        ),
    );
}

/// error-burst: every failing request of `service` writes an error line while it is served; Loupe ties that line
/// to the request's server span. For the failing (5xx) server spans, finds the service's error lines with the same
/// trace id and span id; at least one must be there.
pub(super) fn check_error_lines(
    service: &str,
    failed: &[&Span],
    logs: &[LogRecord],
    v: &mut Verdict,
) {
    let errors: Vec<&LogRecord> = logs
        .iter()
        .filter(|r| r.service == service && r.is_error())
        .collect();
    let by_span: HashMap<(&str, &str), &LogRecord> = errors
        .iter()
        .filter(|r| !r.trace_id.is_empty())
        .map(|r| ((r.trace_id.as_str(), r.span_id.as_str()), *r))
        .collect();
    let by_trace: HashSet<&str> = errors.iter().map(|r| r.trace_id.as_str()).collect();
    let with_line: Vec<(&Span, &LogRecord)> = failed
        .iter()
        .filter_map(|s| {
            by_span
                .get(&(s.trace_id.as_str(), s.span_id.as_str()))
                .map(|r| (*s, *r))
        })
        .collect();
    let same_trace = failed
        .iter()
        .filter(|s| !s.trace_id.is_empty() && by_trace.contains(s.trace_id.as_str()))
        .count();
    println!(
        "{service} error lines in logs.jsonl: {} ({} with a trace id); failing {service} server spans with their error line: {} of {} by trace and span id, {} by trace id",
        errors.len(),
        errors.iter().filter(|r| !r.trace_id.is_empty()).count(),
        with_line.len(),
        failed.len(),
        same_trace
    );
    if let Some((span, line)) = with_line.first() {
        println!(
            "  e.g. trace {} span {} ({} {}, status {}): [{}] {}",
            span.trace_id,
            span.span_id,
            span.attr("http.request.method").unwrap_or(""),
            span.path(),
            span.http_status().unwrap_or(0),
            line.severity(),
            short(&line.body, 160)
        );
    }
    v.check(
        !with_line.is_empty(),
        format!(
            "failing {service} server spans whose error line carries their trace and span id: {} of {} (≥ 1)",
            with_line.len(),
            failed.len()
        ),
    );
}
