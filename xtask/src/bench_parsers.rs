//! `cargo xtask bench --only parsers`: runs the protocol parsers' criterion benchmarks
//! (`cargo bench -p loupe-protocols`, agent/protocols/benches/parsers.rs) and summarizes criterion's
//! estimates: socket events per second, captured MB per second, request/response pairs per second.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::SystemTime,
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::util::{exec, root, step};

/// One benchmark's figures.
#[derive(Debug)]
struct Estimate {
    id: String,
    /// Median time of one iteration, ns.
    median_ns: f64,
    /// Relative half-width of the median's 95% confidence interval.
    ci_pct: f64,
    events: f64,
    bytes: f64,
    pairs: f64,
}

/// Runs the parser benchmarks and returns the markdown section.
pub fn parsers() -> anyhow::Result<String> {
    let home = root().join("target/criterion");
    let started = SystemTime::now();
    step("parser benchmarks (cargo bench -p loupe-protocols)", || {
        // Criterion's report goes to stderr with the progress of the other parts; stdout is the
        // markdown report's.
        exec(
            Command::new("cargo")
                .current_dir(root())
                .args(["bench", "-p", "loupe-protocols", "--bench", "parsers"])
                .env("CRITERION_HOME", &home)
                .stdout(Stdio::from(std::io::stderr())),
        )
    })?;
    let mut found = Vec::new();
    collect(&home, started, &mut found)?;
    if found.is_empty() {
        bail!("criterion wrote no estimates under {}", home.display());
    }
    let mut estimates = found
        .iter()
        .map(|dir| read_estimate(dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    estimates.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(report(&estimates))
}

/// Every `new/` directory of a benchmark written by this run.
fn collect(dir: &Path, since: SystemTime, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let fresh = std::fs::metadata(path.join("estimates.json"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if fresh {
                out.push(path);
            }
        } else if path.file_name().is_none_or(|n| n != "report") {
            collect(&path, since, out)?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn read_estimate(dir: &Path) -> anyhow::Result<Estimate> {
    let bench = read_json(&dir.join("benchmark.json"))?;
    let est = read_json(&dir.join("estimates.json"))?;
    let id = bench["full_id"].as_str().unwrap_or("?").to_string();
    let median = &est["median"];
    let median_ns = median["point_estimate"]
        .as_f64()
        .with_context(|| format!("{id}: no median"))?;
    let ci = &median["confidence_interval"];
    let half = (ci["upper_bound"].as_f64().unwrap_or(median_ns)
        - ci["lower_bound"].as_f64().unwrap_or(median_ns))
        / 2.0;
    let t = &bench["throughput"]["ElementsAndBytes"];
    // The benchmark's parameter is "N pairs".
    let pairs = bench["value_str"]
        .as_str()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(Estimate {
        ci_pct: 100.0 * half / median_ns.max(1e-9),
        events: t["elements"].as_f64().unwrap_or(0.0),
        bytes: t["bytes"].as_f64().unwrap_or(0.0),
        pairs,
        median_ns,
        id,
    })
}

fn report(estimates: &[Estimate]) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Loupe protocol parser benchmark\n\n\
         criterion (`cargo bench -p loupe-protocols`, agent/protocols/benches/parsers.rs), one thread, \
         median of 100 samples. Each benchmark replays a conversation on one keep-alive connection \
         as the agent feeds it: one `feed` per socket event (syscall), at most 1024 bytes captured \
         (the default `--capture-bytes`), the rest skipped by count. MB/s counts captured bytes, \
         what the parser reads.\n"
    );
    let _ = writeln!(
        r,
        "| benchmark | events/iter | socket events/s | MB/s (captured) | pairs/s | ns per pair | ± (95% CI) |\n\
         |---|---|---|---|---|---|---|"
    );
    for e in estimates {
        let secs = e.median_ns / 1e9;
        let _ = writeln!(
            r,
            "| {} | {:.0} | {:.2} M | {:.0} | {:.2} M | {:.0} | {:.1}% |",
            e.id,
            e.events,
            e.events / secs / 1e6,
            e.bytes / secs / 1e6,
            e.pairs / secs / 1e6,
            e.median_ns / e.pairs.max(1.0),
            e.ci_pct
        );
    }
    if let Some(slowest) = estimates
        .iter()
        .filter(|e| e.pairs > 0.0)
        .max_by(|a, b| (a.median_ns / a.pairs).total_cmp(&(b.median_ns / b.pairs)))
    {
        let ns = slowest.median_ns / slowest.pairs;
        let _ = writeln!(
            r,
            "\nSlowest per request/response pair: {} at {ns:.0} ns, i.e. one core parses {:.0}k pairs/s; \
             at 1,000 req/s parsing costs {:.3}% of one core.",
            slowest.id,
            1e6 / ns,
            ns * 1000.0 / 1e9 * 100.0
        );
    }
    r
}
