//! The CPU profiler end to end, on the real kernel: workloads with known hot functions, the release
//! agent, and its local sink's pprof files and flame graph.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use loupe_tests::{
    Agent, inclusive_counts, profile_workload_pid, read_profiles, require_root, run_agent,
    sample_str_labels, wait_with_deadline, workload,
};

/// Runs `workload_name` for `seconds`, profiles it with `--pid` at 997 Hz, and returns the inclusive
/// sample counts summed over every profile of the workload's service, plus the SVG. The high rate is
/// for statistics: ±10% around 3:1 is ±1.3σ with 1,000 samples, ±4σ with 10,000.
fn profile_workload(
    workload_name: &str,
    seconds: u32,
) -> (HashMap<String, i64>, String, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (profiles, _) = profile_workload_pid(workload_name, seconds, &[], dir.path());
    let mut totals: HashMap<String, i64> = HashMap::new();
    let mut threads = Vec::new();
    for (_, profile) in &profiles {
        for (f, c) in inclusive_counts(profile) {
            *totals.entry(f).or_default() += c;
        }
        threads.extend(sample_str_labels(profile, "thread_name"));
        // The CPU value is count × period (997 Hz).
        let s = |i: i64| profile.string_table[i as usize].clone();
        assert_eq!(s(profile.sample_type[0].r#type), "cpu");
        assert_eq!(s(profile.sample_type[0].unit), "nanoseconds");
        assert_eq!(profile.period, 1_000_000_000 / 997);
        for sample in &profile.sample {
            assert_eq!(sample.value[0], sample.value[1] * profile.period);
        }
    }
    let svg = std::fs::read_to_string(dir.path().join("flamegraph.svg")).expect("flamegraph.svg");
    (totals, svg, threads)
}

fn assert_three_to_one(counts: &HashMap<String, i64>, alpha: &str, beta: &str) {
    let a = counts.get(alpha).copied().unwrap_or(0);
    let b = counts.get(beta).copied().unwrap_or(0);
    assert!(a > 0 && b > 0, "{alpha}={a} {beta}={b}; all: {counts:?}");
    let ratio = a as f64 / b as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "{alpha}:{beta} = {a}:{b} = {ratio:.2}, expected 3:1 ±10%"
    );
    // About 10 s at 997 Hz on one CPU, shared with other tests: thousands of samples.
    assert!(a + b > 3000, "too few samples: {}", a + b);
}

#[test]
fn c_workload_hot_functions_come_out_three_to_one() {
    let (counts, svg, threads) = profile_workload("hot_c", 10);
    assert_three_to_one(&counts, "hot_alpha", "hot_beta");
    // Frame pointers: the walk goes past the leaf into libc's start-up code (named when libc has a
    // symbol table, `libc.so.6+0x…` when stripped). GCC gives leaf functions no frame even with
    // -fno-omit-frame-pointer, so their direct caller, main, is skipped.
    let libc: i64 = counts
        .iter()
        .filter(|(f, _)| f.starts_with("__libc_start") || f.starts_with("libc.so"))
        .map(|(_, c)| *c)
        .sum();
    assert!(libc > 0, "{counts:?}");
    assert!(
        svg.contains("hot_alpha") && svg.contains("hot_beta"),
        "SVG lacks the functions"
    );
    assert!(threads.iter().all(|t| t == "hot_c"), "{threads:?}");
}

#[test]
fn rust_workload_stacks_are_walked_to_their_callers() {
    let (counts, svg, _) = profile_workload("hot_rs", 10);
    // The leaf is the shared `spin`; only a real stack walk tells alpha from beta.
    assert_three_to_one(&counts, "rust_hot_alpha", "rust_hot_beta");
    assert!(counts.keys().any(|f| f.contains("spin")), "{counts:?}");
    assert!(svg.contains("rust_hot_alpha") && svg.contains("rust_hot_beta"));
}

#[test]
fn a_process_that_exits_before_the_drain_is_still_symbolized() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    // Whole-host profiling with one drain at the end: the workload runs 1.5 s and exits long
    // before it. The agent stops on SIGTERM once the workload is done (not after a fixed time,
    // which start-up under emulation can eat).
    let mut agent = Command::new(loupe_tests::agent_bin());
    agent
        .args([
            "run",
            "--profile-hz",
            "99",
            "--profile-interval",
            "60s",
            "--output-dir",
        ])
        .arg(&out_dir);
    // /metrics answers once every program is attached (start-up takes seconds under emulation).
    let agent = Agent::start(agent, dir.path(), "agent");
    assert_self_metrics(&agent);
    let status = Command::new(workload("hot_c"))
        .arg("1.5")
        .status()
        .expect("run workload");
    assert!(status.success());
    let (agent_status, stderr) = agent.stop(Duration::from_secs(60));
    assert!(agent_status.success(), "agent failed:\n{stderr}");
    let profiles = read_profiles(&out_dir);
    let (_, profile) = profiles
        .iter()
        .find(|(name, _)| name.starts_with("hot_c-"))
        .unwrap_or_else(|| {
            panic!(
                "no profile for hot_c; got {:?}\n{stderr}",
                profiles.iter().map(|p| &p.0).collect::<Vec<_>>()
            )
        });
    let counts = inclusive_counts(profile);
    assert!(
        counts.get("hot_alpha").copied().unwrap_or(0) > 20,
        "the exited process's samples must be symbolized: {counts:?}"
    );
    assert!(
        counts.get("[unknown]").copied().unwrap_or(0) * 10
            < counts.get("hot_alpha").copied().unwrap_or(0),
        "{counts:?}"
    );
}

/// What the agent says about itself: probes answer, the kernel and attach methods are named, its
/// memory is measured against its bound.
fn assert_self_metrics(agent: &Agent) {
    for probe in ["/healthz", "/readyz"] {
        let resp = agent.get(probe);
        assert!(resp.starts_with("HTTP/1.1 200"), "{probe}: {resp}");
    }
    let metrics = agent.get("/metrics");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
            .parse()
            .unwrap_or_else(|e| panic!("{series}: {e}"))
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert!(
        metrics.contains(&format!("loupe_agent_info{{kernel=\"{}\",", release.trim())),
        "{metrics}"
    );
    assert_eq!(value("loupe_kernel_feature{feature=\"perf_event\"}"), 1.0);
    assert_eq!(
        value("loupe_attach_method{method=\"perf_event\",program=\"profiler\"}"),
        1.0
    );
    // Default network spans: the sockets family is attached one way or the other.
    assert!(
        metrics.contains("loupe_attach_method{method=\"fentry\",program=\"sockets\"} 1")
            || metrics
                .contains("loupe_attach_method{method=\"tracepoints\",program=\"sockets\"} 1"),
        "{metrics}"
    );
    let rss = value("process_resident_memory_bytes");
    let maps = value("loupe_agent_kernel_maps_bytes");
    let limit = value("loupe_agent_memory_limit_bytes");
    assert!(rss > 4e6, "resident memory {rss}");
    // The stack maps alone hold tens of MiB.
    assert!(maps > 16e6, "kernel maps {maps}");
    assert_eq!(limit, 256.0 * 1024.0 * 1024.0);
    assert!(value("process_start_time_seconds") > 1.6e9);
}

#[test]
fn bad_configuration_is_one_clear_line_and_exit_code_2() {
    let out = run_agent(&["run", "--profile-hz", "0"], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("profile_hz"), "{stderr}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("loupe.toml");
    std::fs::write(&file, "profile_interval = \"soon\"\n").expect("write config");
    let out = run_agent(
        &["run", "--config", file.to_str().expect("utf-8")],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("profile_interval"), "{stderr}");
}

#[test]
fn doctor_reports_this_kernel_and_exits_0() {
    require_root();
    let out = run_agent(&["doctor"], Duration::from_secs(30));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert!(stdout.contains(release.trim()), "{stdout}");
    assert!(stdout.contains("CPU profiler: ready"), "{stdout}");
    let perf = stdout
        .lines()
        .find(|l| l.starts_with("perf_event"))
        .expect("a perf_event row");
    assert!(perf.contains("yes"), "{perf}");
    // Whatever the kernel, a socket capture method is chosen or its absence said.
    assert!(stdout.contains("Socket capture method"), "{stdout}");
}

#[test]
fn sigterm_flushes_and_service_names_come_from_the_environment() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut workload = Command::new(workload("hot_c"))
        .arg("20")
        .env("OTEL_SERVICE_NAME", "checkout")
        .stdout(Stdio::null())
        .spawn()
        .expect("start workload");
    let pid = workload.id().to_string();
    let out_dir = dir.path().join("out");
    let mut agent = Command::new(loupe_tests::agent_bin());
    agent
        .args([
            "run",
            "--pid",
            &pid,
            "--profile-hz",
            "99",
            "--profile-interval",
            "60s",
        ])
        .arg("--output-dir")
        .arg(&out_dir);
    // Sample for a few seconds once every program is attached.
    let agent = Agent::start(agent, dir.path(), "agent");
    std::thread::sleep(Duration::from_secs(3));
    let (status, _) = agent.stop(Duration::from_secs(30));
    let _ = workload.kill();
    let _ = wait_with_deadline(&mut workload, Duration::from_secs(10));
    assert!(
        status.success(),
        "SIGTERM must end the agent cleanly: {status}"
    );
    // The interval was 60 s: only the flush on SIGTERM can have written this.
    let profiles = read_profiles(&out_dir);
    assert_eq!(
        profiles.len(),
        1,
        "{:?}",
        profiles.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    assert!(profiles[0].0.starts_with("checkout-"), "{}", profiles[0].0);
    // About 3 s at 99 Hz of a busy process, shared with other tests on two CPUs.
    let alpha = inclusive_counts(&profiles[0].1)
        .get("hot_alpha")
        .copied()
        .unwrap_or(0);
    assert!(alpha > 20, "hot_alpha: {alpha} samples");
}
