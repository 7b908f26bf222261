//! An agent killed with SIGKILL (the OOM killer, a node drain gone wrong) leaves none of its
//! kernel objects behind: every program, map and link it held is gone once the kernel has
//! released its file descriptors, nothing of it is pinned, and a restarted agent comes up healthy.
//! The agent's objects are told apart from other agents' (tests run in parallel) by the ids in
//! its own /proc/PID/fdinfo.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use loupe_tests::{Agent, agent_bin, require_root};

/// (kind, id) of every BPF program, map and link `pid` holds a descriptor of.
fn bpf_objects(pid: u32) -> BTreeSet<(&'static str, u32)> {
    let mut out = BTreeSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            for (key, kind) in [
                ("prog_id:", "prog"),
                ("map_id:", "map"),
                ("link_id:", "link"),
            ] {
                if let Some(id) = line.strip_prefix(key).and_then(|v| v.trim().parse().ok()) {
                    out.insert((kind, id));
                }
            }
        }
    }
    out
}

/// Whether the kernel still has the object: `bpftool <kind> show id <id>` succeeds.
fn exists(kind: &str, id: u32) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Every file under the BPF filesystem.
fn pinned() -> BTreeSet<String> {
    let out = Command::new("find")
        .args(["/sys/fs/bpf", "-mindepth", "1"])
        .output()
        .expect("find");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn start(dir: &std::path::Path, name: &str) -> Agent {
    let mut agent = Command::new(agent_bin());
    agent.args(["run", "--output-dir"]).arg(dir.join(name));
    Agent::start(agent, dir, name)
}

#[test]
fn sigkill_leaves_no_program_map_or_link_and_a_restart_comes_up() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let pinned_before = pinned();
    let mut agent = start(dir.path(), "first");
    let held = bpf_objects(agent.pid());
    let progs = held.iter().filter(|(k, _)| *k == "prog").count();
    let maps = held.iter().filter(|(k, _)| *k == "map").count();
    // The profiler and the socket capture: dozens of programs and maps.
    assert!(progs >= 10 && maps >= 10, "{held:?}");
    for (kind, id) in &held {
        assert!(exists(kind, *id), "bpftool does not see {kind} {id}");
    }

    agent.guard.0.kill().expect("SIGKILL");
    let _ = agent.guard.0.wait();
    // The kernel frees them after an RCU grace period: give it a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left: Vec<_> = held.iter().collect();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|(kind, id)| exists(kind, *id));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        left.is_empty(),
        "still in the kernel after SIGKILL: {left:?}"
    );

    // Nothing pinned by default (the trace context map is pinned only when asked for).
    let pinned_after = pinned();
    assert!(
        pinned_after.is_subset(&pinned_before),
        "pinned by the agent: {:?}",
        pinned_after.difference(&pinned_before).collect::<Vec<_>>()
    );

    // A new agent comes up and serves.
    let mut again = start(dir.path(), "second");
    assert!(loupe_tests::http_get_raw(again.port, "/readyz").starts_with("HTTP/1.1 200"));
    assert!(bpf_objects(again.pid()).len() >= progs + maps);
    again.guard.0.kill().expect("SIGKILL");
}
