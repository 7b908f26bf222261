//! Allocation profiles on the real kernel: the `alloc` workload allocates from `alloc_big` and
//! `alloc_small` at 2:1 in bytes and 1:2 in blocks, freeing everything, and keeps 32 MiB from
//! `hold_here` (malloc, then realloc). With `--alloc-pid` on it, the allocation profile has the
//! two allocators at 2:1 bytes and 1:2 objects (±15%), and the in-use profile has the 32 MiB
//! held (±15%) under `hold_here` and next to nothing under the functions that free. Blocks
//! allocated before the probes attach are not seen, so the workload holds its memory only when
//! told (SIGUSR1), once the agent is up.

use std::{collections::HashMap, process::Command, time::Duration};

use loupe_tests::{
    Agent, Guard, Profile, agent_bin, inclusive_values, metric_value, profiles_named,
    read_all_profiles, require_root, workload,
};

const HELD: i64 = 32 << 20;

#[test]
fn alloc_and_in_use_profiles_match_what_the_workload_does() {
    require_root();
    let work = Command::new(workload("alloc"))
        .arg("60")
        .env("OTEL_SERVICE_NAME", "allocator")
        .spawn()
        .expect("start the alloc workload (built by `cargo xtask test`)");
    let pid = work.id();
    let _work = Guard(work);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--network-spans=false", "--page-faults=false"])
        .args(["--profile-interval", "3s", "--alloc-sample-bytes", "64KiB"])
        .arg(format!("--alloc-pid={pid}"))
        .arg("--output-dir")
        .arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");
    // The agent answers once every program is attached.
    // SAFETY: kill(2) with a pid this test started and still holds (not reaped), and a signal
    // the workload handles.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    std::thread::sleep(Duration::from_secs(10));
    let metrics = agent.metrics();
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("allocation profiler attached") && stderr.contains("libc.so"),
        "the C library's allocator is found: {stderr}"
    );

    let profiles = read_all_profiles(&out);
    let alloc_files = profiles_named(&profiles, "allocator.alloc-", &stderr);
    let inuse_files = profiles_named(&profiles, "allocator.inuse-", &stderr);

    // Go's heap profile layout, as Pyroscope expects it.
    let first = alloc_files[0];
    let s = |p: &Profile, i: i64| p.string_table[i as usize].clone();
    let types = |p: &Profile| {
        p.sample_type
            .iter()
            .map(|t| (s(p, t.r#type), s(p, t.unit)))
            .collect::<Vec<_>>()
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        types(first),
        [pair("alloc_objects", "count"), pair("alloc_space", "bytes")]
    );
    assert_eq!(
        types(inuse_files[0]),
        [pair("inuse_objects", "count"), pair("inuse_space", "bytes")]
    );
    let period_type = first.period_type.as_ref().expect("a period type");
    assert_eq!(
        (s(first, period_type.r#type), s(first, period_type.unit)),
        pair("space", "bytes")
    );
    assert_eq!(first.period, 64 << 10, "the sampling interval");

    let sum = |files: &[&Profile], type_name: &str| {
        let mut total: HashMap<String, i64> = HashMap::new();
        for p in files {
            for (f, v) in inclusive_values(p, type_name) {
                *total.entry(f).or_default() += v;
            }
        }
        total
    };
    let get = |m: &HashMap<String, i64>, f: &str| m.get(f).copied().unwrap_or(0);
    let bytes = sum(&alloc_files, "alloc_space");
    let objects = sum(&alloc_files, "alloc_objects");
    let (big, small) = (get(&bytes, "alloc_big"), get(&bytes, "alloc_small"));
    let (big_n, small_n) = (get(&objects, "alloc_big"), get(&objects, "alloc_small"));
    eprintln!(
        "allocated: alloc_big {big} B in {big_n} blocks, alloc_small {small} B in {small_n} blocks"
    );
    // ~12 s at ≥25 MiB/s from alloc_big: thousands of samples of 64 KiB each.
    assert!(
        small >= 16 << 20,
        "alloc_small allocated {small} B: {bytes:?}"
    );
    let ratio = big as f64 / small as f64;
    assert!(
        (ratio - 2.0).abs() <= 0.3,
        "alloc_big:alloc_small bytes = {ratio:.2}, expected 2 ±15%: {bytes:?}"
    );
    let ratio = big_n as f64 / small_n as f64;
    assert!(
        (ratio - 0.5).abs() <= 0.075,
        "alloc_big:alloc_small blocks = {ratio:.2}, expected 0.5 ±15%: {objects:?}"
    );

    // The last interval's in-use profile: what is held now, whenever it was allocated.
    let last = inuse_files.last().expect("an in-use profile");
    let in_use = inclusive_values(last, "inuse_space");
    let held = get(&in_use, "hold_here");
    let freed = get(&in_use, "alloc_big") + get(&in_use, "alloc_small");
    eprintln!("in use: hold_here {held} B, alloc_big + alloc_small {freed} B");
    assert!(
        (held as f64 / HELD as f64 - 1.0).abs() <= 0.15,
        "hold_here holds {held} B in the in-use profile, the workload {HELD} B: {in_use:?}"
    );
    assert!(
        freed * 20 <= held,
        "freed blocks still counted in use: {freed} B: {in_use:?}"
    );

    let m = |name: &str| metric_value(&metrics, name);
    assert!(m("loupe_profiler_alloc_samples_total") > 100.0);
    assert!(
        m("loupe_profiler_alloc_frees_total") > 100.0,
        "frees of sampled blocks seen"
    );
    assert_eq!(
        m("loupe_attach_method{method=\"uprobe\",program=\"alloc\"}"),
        1.0
    );
    for reason in [
        "ring_full",
        "live_set_full",
        "thread_map_full",
        "interval_full",
    ] {
        assert_eq!(
            m(&format!(
                "loupe_profiler_alloc_samples_dropped_total{{reason=\"{reason}\"}}"
            )),
            0.0,
            "{reason}"
        );
    }
}

#[test]
fn a_process_without_an_allocator_to_probe_leaves_the_rest_running() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    // pid 2 is kthreadd: no maps, no allocator.
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--network-spans=false", "--alloc-pid=2"])
        .args(["--profile-interval", "1s"])
        .arg("--output-dir")
        .arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");
    std::thread::sleep(Duration::from_secs(3));
    let metrics = agent.metrics();
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("allocation profiles are off"),
        "one clear line says why: {stderr}"
    );
    assert!(
        !metrics.contains("program=\"alloc\""),
        "no attach method claimed for allocation profiles"
    );
    // The profiler runs on: it drains (files need samples of some busy process, which an idle
    // VM of the kernel matrix may not have).
    assert!(
        metric_value(&metrics, "loupe_profiler_drains_total") >= 1.0,
        "the CPU profiler drains: {metrics}"
    );
}

/// Debian's Redis allocates through jemalloc (libjemalloc.so.2): the agent probes that, not the
/// C library, and 20,000 SETs of 512-byte values show as allocated and, kept, in use, under the
/// service name Redis was started as (the file is `redis-check-rdb`, a multi-call binary).
#[test]
fn redis_allocates_through_jemalloc_and_its_values_stay_in_use() {
    use std::io::{Read, Write};
    require_root();
    let redis = loupe_tests::infra::find_bin("redis-server").unwrap_or_else(|e| panic!("{e}"));
    let port = loupe_tests::infra::free_port();
    let server = Command::new(redis)
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    let pid = server.id();
    let _server = Guard(server);
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut conn = conn.expect("redis-server listens");

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--network-spans=false", "--page-faults=false"])
        .args(["--profile-interval", "2s", "--alloc-sample-bytes", "32KiB"])
        .arg(format!("--alloc-pid={pid}"))
        .arg("--output-dir")
        .arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");

    // 20,000 SETs, pipelined 1,000 at a time: ~10 MiB of values kept.
    let value = "v".repeat(512);
    let mut reply = vec![0u8; 64 * 1024];
    for batch in 0..20 {
        let mut req = String::new();
        for i in 0..1000 {
            let key = format!("key:{batch}:{i}");
            req.push_str(&format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            ));
        }
        conn.write_all(req.as_bytes()).expect("send SETs");
        let mut oks = 0;
        while oks < 1000 {
            let n = conn.read(&mut reply).expect("read replies");
            assert!(n > 0, "redis closed the connection");
            oks += reply[..n].iter().filter(|&&b| b == b'\n').count();
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("libjemalloc"),
        "the allocator found is jemalloc: {stderr}"
    );

    let profiles = read_all_profiles(&out);
    let names: Vec<&String> = profiles.iter().map(|(n, _)| n).collect();
    let total = |tag: &str, type_name: &str| -> Vec<i64> {
        profiles
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("redis-server.{tag}-")))
            .map(|(_, p)| {
                let i = p
                    .sample_type
                    .iter()
                    .position(|t| p.string_table[t.r#type as usize] == type_name)
                    .expect("sample type");
                p.sample.iter().map(|s| s.value[i]).sum()
            })
            .collect()
    };
    let allocated: i64 = total("alloc", "alloc_space").iter().sum();
    let in_use = total("inuse", "inuse_space");
    eprintln!("redis-server: allocated {allocated} B, in use by interval {in_use:?}");
    let kept = 20_000 * 512;
    assert!(
        allocated >= kept / 2,
        "allocated {allocated} B for {kept} B of values: {names:?}\n{stderr}"
    );
    let last = in_use.last().copied().unwrap_or(0);
    assert!(
        last >= kept / 2,
        "in use at the end: {last} B for {kept} B of values kept: {names:?}"
    );
}
