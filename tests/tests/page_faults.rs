//! Page-fault profiles on the real kernel: the `page_faults` workload faults in fresh pages from
//! `grow_fast` and `grow_slow` at 2:1 and spins in `spin_here` without faulting. With the agent's
//! defaults (page-fault profiles on for every process), its page-fault profile has the two
//! growing functions at 2:1 (±15%), the spinner nowhere, and bytes that match the faults sampled;
//! its CPU profile has the spinner.

use std::{process::Command, time::Duration};

use loupe_tests::{
    Agent, Guard, agent_bin, inclusive_counts, profiles_named, read_all_profiles, require_root,
    workload,
};

#[test]
fn growing_functions_top_the_page_fault_profile_in_proportion() {
    require_root();
    let _work = Guard(
        Command::new(workload("page_faults"))
            .arg("60")
            .env("OTEL_SERVICE_NAME", "grower")
            .spawn()
            .expect("start the page_faults workload (built by `cargo xtask test`)"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--network-spans=false", "--profile-hz", "99"])
        .args(["--profile-interval", "3s"])
        .arg("--output-dir")
        .arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");
    std::thread::sleep(Duration::from_secs(8));
    let metrics = agent.metrics();
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");

    // Drains every 3 s: the counters are read at each, and the files are summed.
    let profiles = read_all_profiles(&out);
    let fault_files = profiles_named(&profiles, "grower.page_faults-", &stderr);
    let cpu_files = profiles_named(&profiles, "grower-", &stderr);
    let sum = |files: &[&loupe_tests::Profile]| {
        let mut total: std::collections::HashMap<String, i64> = Default::default();
        for p in files {
            for (f, v) in inclusive_counts(p) {
                *total.entry(f).or_default() += v;
            }
        }
        total
    };
    let faults = fault_files[0];
    let s = |i: i64| faults.string_table[i as usize].as_str();
    assert_eq!(
        faults
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect::<Vec<_>>(),
        [("space", "bytes"), ("faults", "count")]
    );
    let period_type = faults.period_type.as_ref().expect("a period type");
    assert_eq!(
        (s(period_type.r#type), s(period_type.unit)),
        ("faults", "count")
    );
    assert_eq!(faults.period, 64, "the default period");
    for sample in fault_files.iter().flat_map(|p| &p.sample) {
        assert_eq!(
            sample.value[0],
            sample.value[1] * 4096,
            "bytes = faults × 4 KiB"
        );
        assert_eq!(sample.value[1] % 64, 0, "whole samples of 64 faults");
    }

    let bytes = sum(&fault_files);
    let fast = bytes.get("grow_fast").copied().unwrap_or(0);
    let slow = bytes.get("grow_slow").copied().unwrap_or(0);
    let spin = bytes.get("spin_here").copied().unwrap_or(0);
    eprintln!("page faults: grow_fast {fast} B, grow_slow {slow} B, spin_here {spin} B");
    // 8 s at 40 MiB/s + 20 MiB/s: ~320 and ~160 MiB, i.e. ~1,280 and ~640 samples.
    assert!(slow >= 32 << 20, "grow_slow faulted {slow} B: {bytes:?}");
    let ratio = fast as f64 / slow as f64;
    assert!(
        (ratio - 2.0).abs() <= 0.3,
        "grow_fast:grow_slow = {ratio:.2}, expected 2 ±15%: {bytes:?}"
    );
    assert!(spin * 100 <= fast, "spin_here faulted {spin} B: {bytes:?}");

    let on = sum(&cpu_files);
    eprintln!(
        "CPU samples: spin_here {}, grow_fast {}",
        on.get("spin_here").copied().unwrap_or(0),
        on.get("grow_fast").copied().unwrap_or(0)
    );
    assert!(
        on.get("spin_here").copied().unwrap_or(0) > 0,
        "the CPU profile has the spinner: {on:?}"
    );
    // Read after two drains, which had taken about two thirds of the workload's samples.
    let fired = loupe_tests::metric_value(&metrics, "loupe_profiler_page_fault_samples_total");
    let own = ((fast + slow) / 4096 / 64) as f64;
    assert!(
        fired >= own / 2.0,
        "loupe_profiler_page_fault_samples_total {fired}, the workload's own samples {own}"
    );
    let lost = loupe_tests::metric_value(
        &metrics,
        "loupe_profiler_samples_dropped_total{reason=\"page_fault_map_full\"}",
    );
    assert_eq!(lost, 0.0, "no page-fault sample lost to a full map");
}
