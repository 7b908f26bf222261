//! Helpers for the end-to-end tests: finding the release agent and the workloads `cargo xtask test`
//! built, running them with deadlines, and decoding what the agent wrote.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

pub use pyroscope::encode::r#gen::google::Profile;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The release agent with its kernel programs, as built by `cargo xtask build`.
pub fn agent_bin() -> PathBuf {
    let path = std::env::var_os("LOUPE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/loupe-agent"));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// A test workload built by `cargo xtask test` (`hot_c`, `hot_rs`, `http_server`).
pub fn workload(name: &str) -> PathBuf {
    let dir = std::env::var_os("LOUPE_WORKLOADS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/workloads"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// The kernel tests need root (CAP_BPF and CAP_PERFMON): fail loudly rather than skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "eBPF tests must run as root: use `sudo -E cargo xtask test`"
    );
}

/// Waits for `child` at most `limit`, killing it past that.
/// Kills the child when dropped, so a failing assertion leaves nothing running.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`; panics after `limit`.
pub fn wait_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the agent `child` answers `GET /healthz` with 200 on `port`, at most `limit`.
/// If it exits first, or never answers, the panic carries its stderr (read from `stderr_path`),
/// which is the only way to learn why on a CI machine.
pub fn wait_healthy(child: &mut Child, port: u16, stderr_path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    let stderr = || std::fs::read_to_string(stderr_path).unwrap_or_default();
    let mut last = String::new();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "the agent exited ({status}) before answering /healthz:\n{}",
                stderr()
            );
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            last = http_get_raw(port, "/healthz");
            if last.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent did not answer /healthz on {port} within {limit:?} \
                 (last answer {last:?}):\n{}",
                stderr()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on 127.0.0.1:`port` with `connection: close`; the raw response, head and body.
pub fn http_get_raw(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the agent with `args` to completion (it must be given `--duration`), capturing its output.
pub fn run_agent(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(agent_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loupe-agent");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let status = wait_with_deadline(&mut child, limit);
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs the workload `name` for `seconds` + 6 s and profiles it with `--pid` at 997 Hz (4 s
/// intervals) for `seconds`, with `extra` arguments and its local sink in `dir`; returns its CPU
/// profiles, each checked to be
/// the workload's service's (`--pid` restricts them), and the agent's stderr. The high rate is for
/// statistics: ±10% around 3:1 is ±1.3σ with 1,000 samples, ±4σ with 10,000.
pub fn profile_workload_pid(
    name: &str,
    seconds: u32,
    extra: &[&str],
    dir: &Path,
) -> (Vec<(String, Profile)>, String) {
    require_root();
    // The workload outlives the agent (it is killed below): one that ended first was a zombie at
    // the agent's last drain when start-up under emulation took more than a few seconds, with
    // no mappings and no executable left to symbolize its samples.
    let mut child = Command::new(workload(name))
        .arg((seconds + 120).to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start workload");
    let pid = child.id().to_string();
    let duration = format!("{seconds}s");
    let mut args = vec![
        "run",
        "--pid",
        &pid,
        "--profile-hz",
        "997",
        "--profile-interval",
        "4s",
        "--duration",
        &duration,
        "--output-dir",
        dir.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let out = run_agent(&args, Duration::from_secs(u64::from(seconds) + 60));
    let _ = child.kill();
    let _ = wait_with_deadline(&mut child, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "agent failed: {}\n{stderr}",
        out.status
    );
    let profiles = read_profiles(dir);
    assert!(
        !profiles.is_empty(),
        "no profiles written; agent said:\n{stderr}"
    );
    for (profile_name, _) in &profiles {
        assert!(
            profile_name.starts_with(name),
            "--pid restricts profiles to the workload's service, got {profile_name}"
        );
    }
    (profiles, stderr)
}

/// The CPU profiles (`profiles/SERVICE-<t>.pb.gz`) the local sink wrote under `dir`, decoded,
/// with their file names; other kinds (`SERVICE.off_cpu-…`, `SERVICE.page_faults-…`) are left
/// out.
pub fn read_profiles(dir: &Path) -> Vec<(String, Profile)> {
    read_all_profiles(dir)
        .into_iter()
        .filter(|(name, _)| !name.contains(".off_cpu-") && !name.contains(".page_faults-"))
        .collect()
}

/// Every `profiles/*.pb.gz` the local sink wrote under `dir`, of every kind, decoded, with their
/// file names.
pub fn read_all_profiles(dir: &Path) -> Vec<(String, Profile)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("profiles")) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".pb.gz") {
            continue;
        }
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(entry.path()).expect("open profile"))
            .read_to_end(&mut raw)
            .expect("profile is gzip");
        let profile =
            <Profile as prost::Message>::decode(raw.as_slice()).expect("profile is pprof");
        out.push((name, profile));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The profiles among `profiles` (from [`read_all_profiles`]) whose file name starts with
/// `prefix` (e.g. `checkout.page_faults-`); panics naming the files there are when none does,
/// with `context` (the agent's stderr).
pub fn profiles_named<'a>(
    profiles: &'a [(String, Profile)],
    prefix: &str,
    context: &str,
) -> Vec<&'a Profile> {
    let found: Vec<&Profile> = profiles
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, p)| p)
        .collect();
    if found.is_empty() {
        let names: Vec<&String> = profiles.iter().map(|(n, _)| n).collect();
        panic!("no {prefix}* profile among {names:?}\n{context}");
    }
    found
}

/// One pprof sample, decoded: its `samples`/`count` value (an off-CPU profile's only value,
/// nanoseconds, where there is none), the functions on its stack (leaf
/// first, inlined functions innermost first) and its string labels.
#[derive(Debug, Clone)]
pub struct DecodedSample {
    pub count: i64,
    pub functions: Vec<String>,
    pub labels: HashMap<String, String>,
}

/// The string at index `i` of `profile`'s string table ("" when out of range).
pub fn profile_string(profile: &Profile, i: i64) -> &str {
    profile
        .string_table
        .get(i as usize)
        .map_or("", String::as_str)
}

/// Every sample of `profile`, decoded.
pub fn decode_samples(profile: &Profile) -> Vec<DecodedSample> {
    let s = |i: i64| profile_string(profile, i).to_string();
    // Off-CPU profiles have one value, nanoseconds blocked.
    let count_index = profile
        .sample_type
        .iter()
        .position(|t| s(t.r#type) == "samples")
        .unwrap_or(0);
    let functions: HashMap<u64, String> =
        profile.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locations: HashMap<u64, Vec<String>> = profile
        .location
        .iter()
        .map(|l| {
            (
                l.id,
                l.line
                    .iter()
                    .filter_map(|line| functions.get(&line.function_id).cloned())
                    .collect(),
            )
        })
        .collect();
    profile
        .sample
        .iter()
        .map(|sample| DecodedSample {
            count: sample.value[count_index],
            functions: sample
                .location_id
                .iter()
                .flat_map(|l| locations.get(l).into_iter().flatten().cloned())
                .collect(),
            labels: sample
                .label
                .iter()
                .filter(|l| l.str != 0)
                .map(|l| (s(l.key), s(l.str)))
                .collect(),
        })
        .collect()
}

/// One line per CPU profile the local sink wrote under `dir`: its file, its sample count and its
/// three hottest leaf functions (for failure messages: which services got the samples).
pub fn describe_profiles(dir: &Path) -> String {
    let mut out = String::new();
    for (name, profile) in read_profiles(dir) {
        let mut leaves: HashMap<String, i64> = HashMap::new();
        let mut total = 0;
        for s in decode_samples(&profile) {
            total += s.count;
            let leaf = s.functions.first().cloned().unwrap_or_default();
            *leaves.entry(leaf).or_default() += s.count;
        }
        let mut top: Vec<_> = leaves.into_iter().collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.1));
        top.truncate(3);
        out.push_str(&format!("{name}: {total} samples, leaves {top:?}\n"));
    }
    out
}

/// Sample counts (the `samples`/`count` value) of every function, counting a sample once for each
/// distinct function anywhere on its stack (inclusive time).
pub fn inclusive_counts(profile: &Profile) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for sample in decode_samples(profile) {
        let mut seen = std::collections::HashSet::new();
        for f in sample.functions {
            if seen.insert(f.clone()) {
                *counts.entry(f).or_insert(0) += sample.count;
            }
        }
    }
    counts
}

/// Values of the sample type `type_name` (e.g. `alloc_space`) of every function, counting a sample
/// once for each distinct function anywhere on its stack (inclusive).
pub fn inclusive_values(profile: &Profile, type_name: &str) -> HashMap<String, i64> {
    let s = |i: i64| profile_string(profile, i);
    let index = profile
        .sample_type
        .iter()
        .position(|t| s(t.r#type) == type_name)
        .unwrap_or_else(|| panic!("no sample type {type_name} in the profile"));
    let functions: HashMap<u64, &str> =
        profile.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locations: HashMap<u64, Vec<&str>> = profile
        .location
        .iter()
        .map(|l| {
            let names = l
                .line
                .iter()
                .filter_map(|line| functions.get(&line.function_id).copied())
                .collect();
            (l.id, names)
        })
        .collect();
    let mut values = HashMap::new();
    for sample in &profile.sample {
        let mut seen = std::collections::HashSet::new();
        for f in sample
            .location_id
            .iter()
            .flat_map(|l| locations.get(l).into_iter().flatten())
        {
            if seen.insert(*f) {
                *values.entry(f.to_string()).or_insert(0) += sample.value[index];
            }
        }
    }
    values
}

/// The label `key` (string value) of every sample.
pub fn sample_str_labels(profile: &Profile, key: &str) -> Vec<String> {
    let s = |i: i64| profile_string(profile, i).to_string();
    profile
        .sample
        .iter()
        .flat_map(|sample| sample.label.iter())
        .filter(|l| s(l.key) == key)
        .map(|l| s(l.str))
        .collect()
}
pub mod cgroup;
pub mod fanout;
pub mod faults;
pub mod infra;
pub mod k8s_api;
pub mod netns;
pub mod receivers;

/// A span as read back from the local sink's `traces.jsonl` (OTLP/JSON).
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Attribute values rendered as strings (ints and bools too).
    pub attributes: HashMap<String, String>,
    /// `status.code`: 0 unset, 1 ok, 2 error.
    pub status_code: i64,
}

/// OTLP span kinds.
pub const SPAN_KIND_SERVER: i64 = 2;
pub const SPAN_KIND_CLIENT: i64 = 3;

fn any_value_string(v: &serde_json::Value) -> String {
    for key in ["stringValue", "intValue", "boolValue", "doubleValue"] {
        if let Some(x) = v.get(key) {
            return match x {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
        }
    }
    v.to_string()
}

fn attributes(v: &serde_json::Value) -> HashMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            Some((
                kv.get("key")?.as_str()?.to_string(),
                any_value_string(kv.get("value")?),
            ))
        })
        .collect()
}

fn u64_field(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// Every span in `dir/traces.jsonl` (one `ExportTraceServiceRequest` per line), and in the
/// files the local sink rotated it to (`traces.jsonl.N`, older first).
pub fn read_spans(dir: &Path) -> Vec<SpanRecord> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("traces.jsonl.")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut text = String::new();
    for path in rotated
        .into_iter()
        .map(|(_, p)| p)
        .chain([dir.join("traces.jsonl")])
    {
        text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let request: serde_json::Value =
            serde_json::from_str(line).expect("traces.jsonl line is JSON");
        for rs in request["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(&rs["resource"]["attributes"]);
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let s = |k: &str| span[k].as_str().unwrap_or_default().to_string();
                    out.push(SpanRecord {
                        service: service.clone(),
                        trace_id: s("traceId"),
                        span_id: s("spanId"),
                        parent_span_id: s("parentSpanId"),
                        name: s("name"),
                        kind: span["kind"].as_i64().unwrap_or(0),
                        start_ns: u64_field(&span["startTimeUnixNano"]),
                        end_ns: u64_field(&span["endTimeUnixNano"]),
                        attributes: attributes(&span["attributes"]),
                        status_code: span["status"]["code"].as_i64().unwrap_or(0),
                    });
                }
            }
        }
    }
    out
}

/// The capabilities the agent's chart grants (helm/loupe/values.yaml documents each one in the
/// comment table above `securityContext`), e.g. `["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"]`.
/// The chart's capabilities the agent keeps after start-up: those not marked "start-up only" in
/// the table of helm/loupe/values.yaml.
pub fn chart_capabilities_kept() -> Vec<String> {
    let values =
        std::fs::read_to_string(root().join("helm/loupe/values.yaml")).expect("values.yaml");
    let mut entries: Vec<(String, bool)> = Vec::new();
    for line in values
        .lines()
        .skip_while(|l| !l.contains("it gets the capabilities below"))
        .take_while(|l| l.starts_with('#'))
    {
        let Some(text) = line.strip_prefix("#   ") else {
            continue;
        };
        match text.split_whitespace().next() {
            Some(w)
                if !text.starts_with(' ')
                    && w.chars().all(|c| c.is_ascii_uppercase() || c == '_') =>
            {
                entries.push((w.to_string(), text.contains("start-up only")));
            }
            _ => {
                if let Some(last) = entries.last_mut() {
                    last.1 |= text.contains("start-up only");
                }
            }
        }
    }
    assert!(
        entries.iter().any(|(_, dropped)| *dropped),
        "no \"start-up only\" capability in helm/loupe/values.yaml"
    );
    let mut kept: Vec<String> = entries
        .into_iter()
        .filter(|(_, dropped)| !dropped)
        .map(|(c, _)| c)
        .collect();
    kept.sort();
    kept.dedup();
    kept
}

pub fn chart_capabilities() -> Vec<String> {
    let values =
        std::fs::read_to_string(root().join("helm/loupe/values.yaml")).expect("values.yaml");
    let mut caps: Vec<String> = values
        .lines()
        .skip_while(|l| !l.contains("it gets the capabilities below"))
        .take_while(|l| l.starts_with('#'))
        .filter(|l| l.starts_with("#   "))
        .filter_map(|l| l.trim_start_matches('#').split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_string)
        .collect();
    caps.sort();
    caps.dedup();
    assert!(
        caps.len() >= 4,
        "no capability table in helm/loupe/values.yaml"
    );
    caps
}

/// The `span_server` workload (a thread-per-connection HTTP server logging inside each request)
/// on a free loopback port, listening; killed when the guard drops.
pub fn span_server() -> (Guard, u16) {
    let port = infra::free_port();
    let server = Guard(
        Command::new(workload("span_server"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start span_server"),
    );
    wait_port(port, Duration::from_secs(10));
    (server, port)
}

/// The `http_server` workload (a std-only Rust HTTP/1.1 server) named `service`, listening:
/// its guard and the `127.0.0.1:PORT` it printed.
pub fn http_server(service: &str) -> (Guard, String) {
    let mut server = Guard(
        Command::new(workload("http_server"))
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the HTTP server workload (built by `cargo xtask test`)"),
    );
    let mut addr = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().expect("server stdout")),
        &mut addr,
    )
    .expect("server address");
    (server, addr.trim().to_string())
}

/// A running agent: `/metrics` (and `/healthz`) on a free loopback port, stderr in a file;
/// killed when dropped.
pub struct Agent {
    pub guard: Guard,
    pub port: u16,
    stderr_path: PathBuf,
}

impl Agent {
    /// Starts `cmd` (the agent with its arguments, or a program that execs it, such as
    /// `setpriv … loupe-agent run …`) with `--metrics-addr` added and its stderr in
    /// `dir/<name>.stderr`, and waits until `/healthz` answers 200.
    pub fn start(mut cmd: Command, dir: &Path, name: &str) -> Agent {
        let port = infra::free_port();
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut guard = Guard(
            cmd.arg("--metrics-addr")
                .arg(format!("127.0.0.1:{port}"))
                .stderr(stderr)
                .spawn()
                .expect("start the agent"),
        );
        wait_healthy(&mut guard.0, port, &stderr_path, Duration::from_secs(90));
        Agent {
            guard,
            port,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    /// Its `/metrics` text now.
    pub fn metrics(&self) -> String {
        self.get("/metrics")
    }

    /// `GET path` on its metrics port: the raw response. When nothing answers, the panic says
    /// whether the agent is still running and carries its stderr.
    pub fn get(&self, path: &str) -> String {
        if let Err(e) = TcpStream::connect(("127.0.0.1", self.port)) {
            // A child that exited stays a zombie (state Z) until it is waited for.
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
            let state = match stat.as_deref().ok().and_then(|s| s.rsplit_once(") ")) {
                Some((_, rest)) if rest.starts_with('Z') => "the agent has exited",
                Some(_) => "the agent still runs",
                None => "the agent is gone",
            };
            panic!(
                "GET {path} on 127.0.0.1:{}: {e}; {state}; its stderr:\n{}",
                self.port,
                self.stderr()
            );
        }
        http_get_raw(self.port, path)
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then waits at most `limit`: its exit status and everything it wrote to stderr.
    pub fn stop(mut self, limit: Duration) -> (ExitStatus, String) {
        // SAFETY: kill has no memory effects; the pid is our own child, still running.
        let rc = unsafe { libc::kill(self.guard.0.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to the agent");
        let status = wait_with_deadline(&mut self.guard.0, limit);
        (status, self.stderr())
    }
}

/// The sum of the series of the metric `name` labelled `signal="SIGNAL"` and `sink="SINK"` (and
/// any further labels) in a `/metrics` text.
pub fn sink_metric(metrics: &str, name: &str, signal: &str, sink: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
                && l.contains(&format!("signal=\"{signal}\""))
                && l.contains(&format!("sink=\"{sink}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`…), in kB; 0 when unreadable.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits for the `log_flood` workload (its stderr piped) to finish and returns the lines it says
/// it wrote (`wrote N`).
pub fn log_flood_written(flood: &mut Guard) -> f64 {
    let status = wait_with_deadline(&mut flood.0, Duration::from_secs(30));
    assert!(status.success(), "log_flood failed: {status}");
    let mut report = String::new();
    flood
        .0
        .stderr
        .take()
        .expect("log_flood's stderr piped")
        .read_to_string(&mut report)
        .expect("log_flood's report");
    report
        .trim()
        .strip_prefix("wrote ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("log_flood said {report:?}"))
}

/// The sum of every series of the metric `name` in a `/metrics` text (0 when absent).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Copies an executable to `to` so that it can be run at once. The copy is written by a `cp`
/// child rather than by this process: while this process held the new file open for writing,
/// any thread of it that forks (tests run in parallel) would hand that descriptor to its child
/// until the child execs, and running the copy in that window fails with ETXTBSY.
pub fn copy_executable(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}
