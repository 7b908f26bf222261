//! Off-CPU profiles on the real kernel: the `off_cpu` workload has a thread that waits 200 ms at
//! a time in `wait_here` and one that spins in `spin_here`. With its pid given to
//! `--off-cpu-pid`, the sleeper's waiting time is in its off-CPU profile, within 10% of the
//! time the agent recorded (the profile's own duration), and the spinner is not; the CPU profile
//! says the opposite.

use std::{process::Command, time::Duration};

use loupe_tests::{
    Agent, Guard, agent_bin, inclusive_counts, read_all_profiles, require_root, workload,
};

#[test]
fn a_waiting_thread_tops_off_cpu_and_a_spinning_one_cpu() {
    require_root();
    let work = Guard(
        Command::new(workload("off_cpu"))
            .arg("60")
            .env("OTEL_SERVICE_NAME", "waiter")
            .spawn()
            .expect("start the off_cpu workload (built by `cargo xtask test`)"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--network-spans=false", "--profile-hz", "99"])
        .args(["--profile-interval", "60s"])
        .arg("--off-cpu-pid")
        .arg(work.0.id().to_string())
        .arg("--output-dir")
        .arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");
    std::thread::sleep(Duration::from_secs(8));
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");

    let profiles = read_all_profiles(&out);
    let find = |prefix: &str| {
        profiles
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .map(|(_, p)| p)
            .unwrap_or_else(|| {
                let names: Vec<&String> = profiles.iter().map(|(n, _)| n).collect();
                panic!("no {prefix}* profile among {names:?}\n{stderr}")
            })
    };
    let off = find("waiter.off_cpu-");
    let cpu = find("waiter-");
    let s = |i: i64| off.string_table[i as usize].as_str();
    assert_eq!(
        off.sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect::<Vec<_>>(),
        [("events", "nanoseconds")]
    );

    let blocked = inclusive_counts(off);
    let waited = blocked.get("wait_here").copied().unwrap_or(0);
    let spun = blocked.get("spin_here").copied().unwrap_or(0);
    // The sleeper is asleep all the time but for a few µs per 200 ms: its blocked time is the
    // recording's length, less the sleep under way at the start and the one at the end.
    let window = off.duration_nanos;
    assert!(
        (waited - window).abs() * 10 <= window,
        "wait_here blocked {waited} ns of a {window} ns recording: {blocked:?}"
    );
    assert!(
        spun * 50 <= waited,
        "spin_here off-CPU {spun} ns: {blocked:?}"
    );
    eprintln!("off-CPU: wait_here {waited} ns of a {window} ns recording, spin_here {spun} ns");

    let on = inclusive_counts(cpu);
    let (spin_samples, wait_samples) = (
        on.get("spin_here").copied().unwrap_or(0),
        on.get("wait_here").copied().unwrap_or(0),
    );
    assert!(
        spin_samples > 100 && spin_samples > 20 * wait_samples,
        "CPU samples: spin_here {spin_samples}, wait_here {wait_samples}"
    );
}
