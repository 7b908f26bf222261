//! The capabilities the chart grants (helm/loupe/values.yaml) are the ones the agent needs: run
//! with exactly that set, as the chart's container does (root in the container, every other
//! capability out of the bounding set), the agent attaches its programs and profiles another user's
//! process; with BPF or
//! PERFMON missing it stops with one line naming it. Once started, every one of its threads holds
//! only the capabilities the chart's table does not mark "start-up only".

use std::process::Command;
use std::time::Duration;

use loupe_tests::{
    Agent, agent_bin, chart_capabilities, chart_capabilities_kept, describe_profiles, http_get_raw,
    inclusive_counts, read_profiles, read_spans, require_root, workload,
};

/// `setpriv` arguments keeping only `caps` in the bounding set: a process of uid 0 then holds
/// exactly those (what a container with `drop: [ALL]` and `add: caps` gets).
fn bounding_set(caps: &[String]) -> String {
    let mut arg = String::from("-all");
    for c in caps {
        arg.push_str(",+");
        arg.push_str(&c.to_lowercase());
    }
    arg
}

/// `binary` (the agent) started by `setpriv` with `setpriv_args` and exactly `caps` in its
/// bounding set, profiling at 99 Hz into `out_dir`, logging into `dir`.
fn start_with(
    setpriv_args: &[&str],
    caps: &[String],
    binary: &std::path::Path,
    out_dir: &std::path::Path,
    dir: &std::path::Path,
) -> Agent {
    let mut agent = Command::new("setpriv");
    agent
        .args(setpriv_args)
        .arg("--bounding-set")
        .arg(bounding_set(caps))
        .arg(binary)
        .args(["run", "--profile-hz", "99", "--profile-interval", "60s"])
        .arg("--output-dir")
        .arg(out_dir);
    Agent::start(agent, dir, "agent")
}

/// Capability numbers from linux/capability.h.
fn cap_number(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "SYSLOG" => 34,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("add {other} to cap_number"),
    }
}

#[test]
fn the_charts_capabilities_are_enough_to_profile_and_capture() {
    require_root();
    let caps = chart_capabilities();
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let agent = start_with(&[], &caps, &agent_bin(), &out_dir, dir.path());

    // setpriv execs the agent: the child's pid is the agent's. It started with the chart's set
    // (it attached everything below) and now holds the kept part of it, in every thread.
    let kept = chart_capabilities_kept();
    assert!(kept.len() < caps.len(), "kept {kept:?} of {caps:?}");
    assert_every_thread_holds(agent.pid(), &kept);

    let metrics = http_get_raw(agent.port, "/metrics");
    for c in &caps {
        let line = format!("loupe_capabilities{{capability=\"CAP_{c}\"}} 1");
        assert_eq!(
            metrics.contains(&line),
            kept.contains(c),
            "{line}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("loupe_attach_method{method=\"perf_event\",program=\"profiler\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("loupe_attach_method{method=\"perf_event\",program=\"page_faults\"} 1"),
        "page-fault profiles must attach with the chart's capabilities:\n{metrics}"
    );
    assert!(
        metrics.contains("program=\"sockets\"} 1"),
        "socket capture must attach with the chart's capabilities:\n{metrics}"
    );
    assert!(
        metrics.contains("loupe_attach_method{method=\"sockops\",program=\"tcp_context\"} 1"),
        "the TCP option program must attach with the chart's capabilities:\n{metrics}"
    );
    // Uprobes without SYS_ADMIN depend on the kernel (refused since a 2025 change): whatever the
    // start-up probe found, the TLS probes followed it.
    let uprobes = metrics.contains("loupe_kernel_feature{feature=\"uprobes\"} 1");
    assert_eq!(
        metrics.contains(TLS_ATTACHED),
        uprobes,
        "TLS probes attached if and only if uprobes were found usable:\n{metrics}"
    );

    // Another user's process, as containers' processes are to the agent: reading its maps and
    // binary takes SYS_PTRACE and DAC_READ_SEARCH, not just being root.
    let ran = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(workload("hot_c"))
        .arg("1.5")
        .status()
        .expect("workload");
    assert!(ran.success());
    let before_stop = http_get_raw(agent.port, "/metrics");
    let (exit, stderr) = agent.stop(Duration::from_secs(60));
    assert!(exit.success(), "{stderr}");
    assert_eq!(
        stderr.contains("off for want of uprobes: TLS in clear (--tls)"),
        !uprobes,
        "one warning names what is off when uprobes are refused:\n{stderr}"
    );
    assert_hot_c_symbolized(&out_dir, &stderr, &before_stop);
}

/// `hot_c`'s profile in `out_dir` has its hot function, symbolized (`stderr`: the agent's, and
/// `metrics`: its /metrics before the stop, for the failure message).
fn assert_hot_c_symbolized(out_dir: &std::path::Path, stderr: &str, metrics: &str) {
    let profiles = read_profiles(out_dir);
    let (_, profile) = profiles
        .iter()
        .find(|(name, _)| name.starts_with("hot_c-"))
        .unwrap_or_else(|| {
            let profiler: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("loupe_profiler") || l.starts_with("loupe_processes"))
                .collect();
            panic!(
                "no hot_c profile; profiles:\n{}\nprofiler metrics:\n{}\n{stderr}",
                describe_profiles(out_dir),
                profiler.join("\n")
            )
        });
    let counts = inclusive_counts(profile);
    assert!(
        counts.get("hot_alpha").copied().unwrap_or(0) > 20,
        "hot_c symbolized: {counts:?}"
    );
}

/// The chart's non-root mode (`securityContext.runAsUser`): a user that is not root, the chart's
/// capabilities in its bounding set, and the image's file capabilities (permitted only, as the
/// Dockerfile sets them) on the agent's binary. The agent raises them, attaches, drops to the kept
/// set and profiles another user's process, all as that user.
#[test]
fn as_a_non_root_user_with_file_capabilities_the_agent_profiles_and_captures() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let caps = chart_capabilities();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("loupe-agent");
    std::fs::copy(agent_bin(), &binary).expect("copy the agent");
    let file_caps: Vec<String> = caps
        .iter()
        .map(|c| format!("cap_{}", c.to_lowercase()))
        .collect();
    let set = Command::new("setcap")
        .arg(format!("{}=p", file_caps.join(",")))
        .arg(&binary)
        .status()
        .expect("setcap (libcap2-bin)");
    assert!(set.success());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let agent = start_with(&as_nobody, &caps, &binary, &out_dir, dir.path());
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert!(
        uid.split_whitespace().all(|u| u == "65534"),
        "runs as 65534: {uid}"
    );
    assert_every_thread_holds(agent.pid(), &chart_capabilities_kept());
    let metrics = http_get_raw(agent.port, "/metrics");
    for program in ["profiler", "page_faults", "sockets", "tcp_context"] {
        assert!(
            metrics.contains(&format!("program=\"{program}\"}} 1")),
            "{program} attaches as a non-root user:\n{metrics}"
        );
    }
    let ran = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(workload("hot_c"))
        .arg("1.5")
        .status()
        .expect("workload");
    assert!(ran.success());
    // HTTP requests to root's server: spans, as in the span tests.
    let (_server, http_port) = loupe_tests::span_server();
    for _ in 0..5 {
        let reply = http_get_raw(http_port, "/work");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let before_stop = http_get_raw(agent.port, "/metrics");
    let (exit, stderr) = agent.stop(Duration::from_secs(60));
    assert!(exit.success(), "{stderr}");
    let served = read_spans(&out_dir)
        .into_iter()
        .filter(|s| s.kind == 2 && s.name.starts_with("GET"))
        .count();
    assert!(
        served >= 5,
        "{served} server spans of 5 requests:\n{stderr}"
    );
    assert_hot_c_symbolized(&out_dir, &stderr, &before_stop);
}

/// The TLS probes' attach-method line in /metrics.
const TLS_ATTACHED: &str = "loupe_attach_method{method=\"uprobe\",program=\"tls\"} 1";

/// The chart's `securityContext.sysAdmin` adds SYS_ADMIN: with it uprobes are usable on any
/// kernel, and the TLS probes attach to the host's libssl.
#[test]
fn with_the_charts_sys_admin_the_tls_probes_attach() {
    require_root();
    let mut caps = chart_capabilities();
    caps.push("SYS_ADMIN".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start_with(
        &[],
        &caps,
        &agent_bin(),
        &dir.path().join("out"),
        dir.path(),
    );
    let metrics = http_get_raw(agent.port, "/metrics");
    let (exit, stderr) = agent.stop(Duration::from_secs(60));
    assert!(exit.success(), "{stderr}");
    assert!(
        metrics.contains("loupe_kernel_feature{feature=\"uprobes\"} 1"),
        "{metrics}\n{stderr}"
    );
    assert!(metrics.contains(TLS_ATTACHED), "{metrics}\n{stderr}");
    assert!(!stderr.contains("for want of uprobes"), "{stderr}");
}

/// Every thread of `pid` holds exactly `caps`, permitted and effective.
fn assert_every_thread_holds(pid: u32, caps: &[String]) {
    let want = caps.iter().fold(0u64, |m, c| m | 1 << cap_number(c));
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .collect();
    assert!(tasks.len() >= 4, "the agent runs several threads");
    for task in tasks {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // exited meanwhile
        };
        for field in ["CapPrm:", "CapEff:"] {
            let set = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
                .expect(field);
            assert_eq!(
                set,
                want,
                "thread {:?} {field} {set:x}, want {want:x} ({caps:?})",
                task.file_name()
            );
        }
    }
}

/// Run as root (every capability), the agent ends with the kept ones: the chart's, plus
/// SYS_ADMIN and SYSLOG, which it keeps where granted (README, "Privileges").
#[test]
fn as_root_the_agent_keeps_only_what_it_documents() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--profile-interval", "60s", "--output-dir"])
        .arg(dir.path().join("out"));
    let agent = Agent::start(cmd, dir.path(), "agent");
    let mut kept = chart_capabilities_kept();
    kept.extend(["SYS_ADMIN".to_string(), "SYSLOG".to_string()]);
    assert_every_thread_holds(agent.pid(), &kept);
    let (exit, stderr) = agent.stop(Duration::from_secs(30));
    assert!(exit.success(), "{stderr}");
    assert!(
        stderr.contains("dropped the capabilities only start-up needed"),
        "{stderr}"
    );
}

#[test]
fn a_missing_capability_is_named_in_one_line() {
    require_root();
    let caps = chart_capabilities();
    for missing in ["BPF", "PERFMON"] {
        let kept: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("setpriv")
            .arg("--bounding-set")
            .arg(bounding_set(&kept))
            .arg(agent_bin())
            .args(["run", "--duration", "5s", "--output-dir"])
            .arg(dir.path())
            .output()
            .expect("setpriv runs the agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "ran without CAP_{missing}:\n{stderr}"
        );
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("loupe-agent:"))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(&format!("CAP_{missing}")), "{stderr}");
    }
}
