//! Stripped binaries are symbolized from their separate debug files, as distributions ship them:
//! `hot_c_stripped` has no symbol table and links to `.debug/hot_c_stripped.debug` beside it (the
//! layout `objcopy --only-keep-debug` and a debug link give), and Debian's libc is stripped with
//! its symbols in libc6-dbg under /usr/lib/debug/.build-id (installed by `cargo xtask setup`).
//! The same stripped binary copied away from its debug file is the control: its functions stay
//! unnamed.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use loupe_tests::{
    Guard, agent_bin, inclusive_counts, infra::free_port, read_profiles, require_root,
    wait_healthy, wait_with_deadline, workload,
};

fn count(counts: &HashMap<String, i64>, name: &str) -> i64 {
    counts.get(name).copied().unwrap_or(0)
}

#[test]
fn stripped_binaries_are_named_from_their_debug_files() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let with_debug = workload("hot_c_stripped");
    assert!(
        with_debug
            .parent()
            .expect("folder")
            .join(".debug/hot_c_stripped.debug")
            .exists(),
        "cargo xtask test builds the debug file beside the workload"
    );
    // The control: the same bytes where no debug file is.
    let without_debug = dir.path().join("hot_c_stripped");
    std::fs::copy(&with_debug, &without_debug).expect("copy");

    let mut workloads = Vec::new();
    for (service, path) in [
        ("with-debug", &with_debug),
        ("without-debug", &without_debug),
    ] {
        workloads.push(Guard(
            Command::new(path)
                .arg("30")
                .env("OTEL_SERVICE_NAME", service)
                .stdout(Stdio::null())
                .spawn()
                .expect("start workload"),
        ));
    }
    let port = free_port();
    let stderr_path = dir.path().join("agent.stderr");
    let out = dir.path().join("out");
    let mut agent = Command::new(agent_bin());
    agent.args(["run", "--profile-hz", "499", "--profile-interval", "60s"]);
    for w in &workloads {
        agent.arg("--pid").arg(w.0.id().to_string());
    }
    let mut agent = Guard(
        agent
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--output-dir")
            .arg(&out)
            .stderr(std::fs::File::create(&stderr_path).expect("stderr"))
            .spawn()
            .expect("start agent"),
    );
    wait_healthy(&mut agent.0, port, &stderr_path, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: kill has no memory effects; the pid is our own child, still running.
    assert_eq!(
        unsafe { libc::kill(agent.0.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = wait_with_deadline(&mut agent.0, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "{stderr}");

    let profiles = read_profiles(&out);
    let counts = |service: &str| {
        let (_, p) = profiles
            .iter()
            .find(|(name, _)| name.starts_with(&format!("{service}-")))
            .unwrap_or_else(|| panic!("no {service} profile:\n{stderr}"));
        inclusive_counts(p)
    };
    let named = counts("with-debug");
    let unnamed = counts("without-debug");

    // From the debug link: the workload's own functions, in their usual 3:1.
    let (alpha, beta) = (count(&named, "hot_alpha"), count(&named, "hot_beta"));
    assert!(alpha > 100 && beta > 30, "{named:?}");
    // From the build id: libc's static start-up function, which its .dynsym does not name.
    assert!(
        count(&named, "__libc_start_call_main") > 0,
        "libc's frame unnamed: is libc6-dbg installed? {named:?}"
    );

    // Without the debug file nothing names them (so the assertions above can fail).
    assert_eq!(count(&unnamed, "hot_alpha"), 0, "{unnamed:?}");
    assert!(
        unnamed.keys().any(|k| k.starts_with("hot_c_stripped+0x")),
        "{unnamed:?}"
    );
}
