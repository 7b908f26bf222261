//! Stripped binaries are symbolized from their separate debug files, as distributions ship them:
//! `hot_c_stripped` has no symbol table and links to `.debug/hot_c_stripped.debug` beside it (the
//! layout `objcopy --only-keep-debug` and a debug link give), and Debian's libc is stripped with
//! its symbols in libc6-dbg under /usr/lib/debug/.build-id (installed by `cargo xtask setup`).
//! The same stripped binary copied away from its debug file is the control: its functions stay
//! unnamed, unless a debuginfod server (here a loopback one) hands the agent its debug file.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpListener,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use loupe_tests::{
    Agent, Guard, agent_bin, copy_executable, inclusive_counts, read_profiles, require_root,
    workload,
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
    copy_executable(&with_debug, &without_debug);

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
    let out = dir.path().join("out");
    let mut agent = Command::new(agent_bin());
    agent.args(["run", "--profile-hz", "499", "--profile-interval", "60s"]);
    for w in &workloads {
        agent.arg("--pid").arg(w.0.id().to_string());
    }
    agent.arg("--output-dir").arg(&out);
    let agent = Agent::start(agent, dir.path(), "agent");
    std::thread::sleep(Duration::from_secs(4));
    let (status, stderr) = agent.stop(Duration::from_secs(60));
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

/// The GNU build id of `path`, from `readelf -n`.
fn build_id(path: &std::path::Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .expect("readelf (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .expect("a build id")
}

/// A debuginfod server on loopback: `GET /buildid/<id>/debuginfo` answers `file` for `id`, 404
/// for anything else; every path asked is recorded.
fn debuginfod(id: String, file: Vec<u8>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n")
                && conn.read(&mut byte).map(|n| n == 1).unwrap_or(false)
            {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().expect("lock").push(path.clone());
            let _ = if path == format!("/buildid/{id}/debuginfo") {
                conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        file.len()
                    )
                    .as_bytes(),
                )
                .and_then(|()| conn.write_all(&file))
            } else {
                conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
            };
        }
    });
    (port, asked)
}

#[test]
fn a_stripped_binary_without_a_debug_file_gets_one_from_debuginfod() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let original = workload("hot_c_stripped");
    let debug = std::fs::read(
        original
            .parent()
            .expect("folder")
            .join(".debug/hot_c_stripped.debug"),
    )
    .expect("the workload's debug file");
    let id = build_id(&original);
    let (server, asked) = debuginfod(id.clone(), debug);
    // Away from its debug file: only debuginfod can name its functions.
    let binary = dir.path().join("hot_c_stripped");
    copy_executable(&original, &binary);
    let work = Guard(
        Command::new(&binary)
            .arg("40")
            .env("OTEL_SERVICE_NAME", "fetched")
            .stdout(Stdio::null())
            .spawn()
            .expect("start workload"),
    );
    let out = dir.path().join("out");
    let mut agent = Command::new(agent_bin());
    agent
        .args([
            "run",
            "--profile-hz",
            "199",
            "--profile-interval",
            "2s",
            "--pid",
        ])
        .arg(work.0.id().to_string())
        .arg("--debuginfod-url")
        .arg(format!("http://127.0.0.1:{server}"))
        .arg("--output-dir")
        .arg(&out);
    let agent = Agent::start(agent, dir.path(), "agent");
    // The first interval asks, a later one uses the file.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut metrics = String::new();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
        metrics = loupe_tests::http_get_raw(agent.port, "/metrics");
        if metrics.contains("loupe_debuginfod_fetches_total{result=\"ok\"} 1") {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    let (status, stderr) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(
        metrics.contains("loupe_debuginfod_fetches_total{result=\"ok\"} 1"),
        "{}\n{stderr}",
        metrics
            .lines()
            .filter(|l| l.contains("debuginfod"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Asked once, by build id; kept in the cache under the output folder.
    let asked = asked.lock().expect("lock").clone();
    assert_eq!(asked, vec![format!("/buildid/{id}/debuginfo")]);
    assert!(out.join(format!("debuginfod/{id}.debug")).is_file());

    let mut alpha = 0;
    let profiles = read_profiles(&out);
    for (name, profile) in &profiles {
        if name.starts_with("fetched-") {
            alpha += count(&inclusive_counts(profile), "hot_alpha");
        }
    }
    let names: Vec<&String> = profiles.iter().map(|p| &p.0).collect();
    assert!(
        alpha > 50,
        "hot_alpha named in {alpha} samples of {names:?}:\n{stderr}"
    );
}
