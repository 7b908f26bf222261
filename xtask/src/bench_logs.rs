//! `cargo xtask bench --only logs`: what capturing stdout and stderr costs the agent.
//!
//! `log_flood` (tests/workloads) writes `LINES_PER_SEC` lines a second, one `write` each, for
//! the whole run; the agent runs once with logs off and once with logs on, its per-process line
//! limit above the flood's rate so every line is processed and written to `logs.jsonl`. The
//! difference between the two runs is the cost of logs: userspace CPU (rusage) plus the eBPF
//! programs' run time (kernel statistics); and peak RSS.
//!
//! Targets (issue: correlation): ≤ 3% of one core per 10,000 lines a second, RSS unchanged
//! within 10%.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;

use crate::{
    bench::{Cost, measure_agent},
    test::build_workloads,
    util::{root, step},
};

/// The flood's rate.
const LINES_PER_SEC: u64 = 10_000;

/// The logs part; returns its markdown section.
pub fn logs(agent: &Path, secs: u64) -> anyhow::Result<String> {
    build_workloads()?;
    let out = root().join("target/bench/logs");
    let runs = [("logs off", false), ("logs on", true)];
    let mut costs = Vec::new();
    for (name, on) in runs {
        let flood = start_flood(secs + 10)?;
        std::thread::sleep(Duration::from_millis(500));
        let args: Vec<String> = vec![
            format!("--logs={on}"),
            "--log-lines-per-sec".into(),
            (LINES_PER_SEC * 2).to_string(),
        ];
        let result = step(&format!("agent with {name} for {secs}s"), || {
            measure_agent(agent, &args, secs, &out.join(name.replace(' ', "-")))
        });
        stop(flood);
        let mut cost = result?;
        cost.name = name.to_string();
        costs.push(cost);
    }
    // logs.jsonl rotates at 64 MiB into logs.jsonl.1: count both.
    let on = out.join("logs-on");
    let lines = count_lines(&on.join("logs.jsonl")) + count_lines(&on.join("logs.jsonl.1"));
    Ok(report(&costs, secs, lines))
}

fn start_flood(secs: u64) -> anyhow::Result<Child> {
    Command::new(root().join("target/workloads/log_flood"))
        .args([LINES_PER_SEC.to_string(), secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start log_flood")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Log records in a logs.jsonl (each line an OTLP/JSON export request).
fn count_lines(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            v["resourceLogs"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["scopeLogs"].as_array().into_iter().flatten())
                .map(|s| s["logRecords"].as_array().map_or(0, Vec::len) as u64)
                .sum::<u64>()
        })
        .sum()
}

fn report(costs: &[Cost], secs: u64, lines: u64) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Loupe logs benchmark\n\n`log_flood` writes {LINES_PER_SEC} lines/s (one write each); \
         the agent runs {secs} s with logs off, then on. {lines} records reached logs.jsonl \
         in the second run ({:.0}/s; logs.jsonl and its rotated predecessor).\n",
        lines as f64 / secs as f64
    );
    let _ = writeln!(
        r,
        "| scenario | userspace CPU s | eBPF CPU s | % of one core | peak RSS MB |\n|---|---|---|---|---|"
    );
    for c in costs {
        let _ = writeln!(
            r,
            "| {} | {:.2} | {:.3} | {:.2}% | {:.1} |",
            c.name,
            c.user_cpu_s,
            c.bpf_cpu_s,
            100.0 * c.total_cpu_s() / c.wall_s,
            c.max_rss_mb
        );
    }
    if let [off, on] = costs {
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        let delta = 100.0 * (on.total_cpu_s() / on.wall_s - off.total_cpu_s() / off.wall_s);
        let per_10k = delta * 10_000.0 / LINES_PER_SEC as f64;
        let rss = 100.0 * (on.max_rss_mb - off.max_rss_mb) / off.max_rss_mb.max(1e-9);
        let _ = writeln!(r, "\nTargets:");
        let _ = writeln!(
            r,
            "- ≤ 3% of one core per 10k lines/s (logs on − logs off): {per_10k:.2}% — {}",
            mark(per_10k <= 3.0)
        );
        let _ = writeln!(
            r,
            "- RSS unchanged within 10%: {:+.1}% ({:.1} → {:.1} MB) — {}",
            rss,
            off.max_rss_mb,
            on.max_rss_mb,
            mark(rss.abs() <= 10.0)
        );
    }
    r
}
