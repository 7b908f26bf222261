//! A scripted outage of every backend at once, behind the on-disk spool: Pyroscope, OTLP spans,
//! OTLP logs and Loki each sit behind a gate that refuses connections, then answers 503 with
//! `Retry-After` (gRPC: UNAVAILABLE), then 429 (RESOURCE_EXHAUSTED), then resets connections,
//! then recovers, over about two minutes while requests, log lines and CPU samples keep coming.
//! Every span, log line and profile the agent made (its local sink writes them too) arrives at
//! its backend exactly once, compared by content, and the counters say nothing was lost.
//!
//! `LOUPE_OUTAGE_MINUTES=10` stretches the outage to ten minutes (about two by default).

use std::{
    collections::BTreeMap,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use loupe_tests::{
    Agent, Guard, Profile, agent_bin, decode_samples,
    faults::{Fault, Faults, Gate},
    http_get_raw, profile_string, read_all_profiles, read_spans,
    receivers::{LokiReceiver, OtlpLogsReceiver, PyroscopeReceiver},
    require_root, sink_metric, workload,
};

/// The four network sinks, as `/metrics` labels them.
const SINKS: [(&str, &str); 4] = [
    ("profiles", "pyroscope"),
    ("spans", "otlp"),
    ("logs", "otlp"),
    ("logs", "loki"),
];

/// A profile reduced to what identifies its content: its start, its sample types and every
/// sample (stack and value), sorted.
fn profile_key(service: &str, profile: &Profile) -> String {
    let types: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| profile_string(profile, t.r#type))
        .collect();
    let mut samples: Vec<String> = decode_samples(profile)
        .into_iter()
        .map(|d| {
            let mut labels: Vec<_> = d.labels.into_iter().collect();
            labels.sort();
            format!("{}|{}|{labels:?}", d.count, d.functions.join(";"))
        })
        .collect();
    samples.sort();
    format!(
        "{service} {} {} {types:?} {samples:?}",
        profile.time_nanos, profile.duration_nanos
    )
}

/// Every log record of the local sink's `logs.jsonl` (OTLP/JSON, one request per line) as
/// `time body`.
fn local_log_lines(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("logs.jsonl")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let request: serde_json::Value = serde_json::from_str(line).expect("logs.jsonl is JSON");
        for rl in request["resourceLogs"].as_array().into_iter().flatten() {
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for r in sl["logRecords"].as_array().into_iter().flatten() {
                    out.push(format!(
                        "{} {}",
                        r["timeUnixNano"].as_str().unwrap_or_default(),
                        r["body"]["stringValue"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    out
}

/// How many times each item is in `items`.
fn counts(items: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for item in items {
        *out.entry(item).or_default() += 1;
    }
    out
}

/// Asserts that `received` holds each of `made` exactly once and nothing else; `what` names them.
fn exactly_once(what: &str, made: Vec<String>, received: Vec<String>) {
    let made_counts = counts(made);
    assert!(!made_counts.is_empty(), "{what}: the local sink holds none");
    if let Some((item, n)) = made_counts.iter().find(|(_, n)| **n > 1) {
        panic!("{what}: the local sink holds {n} copies of one item: {item:.300}");
    }
    let received_counts = counts(received);
    let missing: Vec<&String> = made_counts
        .keys()
        .filter(|k| !received_counts.contains_key(*k))
        .collect();
    let repeated: Vec<(&String, &usize)> =
        received_counts.iter().filter(|(_, n)| **n > 1).collect();
    let unknown: Vec<&String> = received_counts
        .keys()
        .filter(|k| !made_counts.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && repeated.is_empty() && unknown.is_empty(),
        "{what}: {} made, {} received; {} missing, {} received more than once, {} not made; first \
         missing: {:.300?}; first repeated: {:.300?}; first unknown: {:.300?}",
        made_counts.len(),
        received_counts.values().sum::<usize>(),
        missing.len(),
        repeated.len(),
        unknown.len(),
        missing.first(),
        repeated.first(),
        unknown.first(),
    );
}

#[test]
fn every_sink_rides_out_a_scripted_outage_and_delivers_everything_once() {
    require_root();
    let minutes: f64 = std::env::var("LOUPE_OUTAGE_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(2.0);
    // Four fault phases share the outage; service before and after.
    let phase = Duration::from_secs_f64(minutes * 60.0 / 4.5);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");

    let (pyroscope_faults, otlp_faults, loki_faults) =
        (Faults::default(), Faults::default(), Faults::default());
    let pyroscope = PyroscopeReceiver::scripted(pyroscope_faults.clone());
    let otlp = OtlpLogsReceiver::scripted(otlp_faults.clone());
    let loki = LokiReceiver::scripted(loki_faults.clone());
    let gates = [
        Gate::start(pyroscope.addr, pyroscope_faults),
        Gate::start(otlp.addr, otlp_faults),
        Gate::start(loki.addr, loki_faults),
    ];
    let url = |gate: &Gate| format!("http://{}", gate.addr);

    let (server, port) = loupe_tests::span_server();
    let hot = Guard(
        Command::new(workload("hot_c"))
            .arg(format!("{}", (minutes * 60.0) as u64 + 120))
            .stdout(Stdio::null())
            .spawn()
            .expect("start hot_c"),
    );
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--profile-interval", "5s", "--profile-hz", "49"])
        .args(["--pid", &format!("{},{}", server.0.id(), hot.0.id())])
        .args(["--pyroscope-url", &url(&gates[0])])
        .args(["--otlp-endpoint", &url(&gates[1])])
        .args(["--otlp-logs", "true"])
        .args(["--loki-url", &url(&gates[2])])
        .args(["--local-sink", "true"])
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--output-dir")
        .arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");

    // Traffic for the whole run: a request (a server span and a log line) every 100 ms.
    let traffic_on = Arc::new(AtomicBool::new(true));
    let traffic = {
        let on = traffic_on.clone();
        thread::spawn(move || {
            let mut sent = 0u64;
            while on.load(Ordering::SeqCst) {
                let reply = http_get_raw(port, &format!("/work/1/outage-{sent}"));
                assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
                sent += 1;
                thread::sleep(Duration::from_millis(100));
            }
            sent
        })
    };

    let set_all = |fault: Fault| {
        thread::scope(|s| {
            for gate in &gates {
                s.spawn(move || gate.set(fault));
            }
        })
    };
    thread::sleep(Duration::from_secs(10));
    for fault in [
        Fault::Refuse,
        Fault::Unavailable,
        Fault::Throttled,
        Fault::Reset,
    ] {
        eprintln!("outage: {fault:?} for {phase:?}");
        set_all(fault);
        thread::sleep(phase);
    }
    eprintln!("outage: over");
    set_all(Fault::None);
    thread::sleep(Duration::from_secs(10));
    traffic_on.store(false, Ordering::SeqCst);
    let requests = traffic.join().expect("traffic thread");

    // The backends are back: the spools empty (replay waits up to 30 s between attempts).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut metrics = agent.metrics();
    while Instant::now() < deadline {
        metrics = agent.metrics();
        let left: f64 = SINKS
            .iter()
            .map(|(signal, sink)| sink_metric(&metrics, "loupe_spool_items", signal, sink))
            .sum();
        if left == 0.0 {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let report: Vec<String> = SINKS
        .iter()
        .map(|(signal, sink)| {
            let m = |name| sink_metric(&metrics, name, signal, sink);
            format!(
                "{signal}/{sink}: exported {}, spooled {}, replayed {}, in the spool {}, dropped {}",
                m("loupe_exporter_items_exported_total"),
                m("loupe_spool_items_written_total"),
                m("loupe_spool_items_replayed_total"),
                m("loupe_spool_items"),
                m("loupe_exporter_items_dropped_total"),
            )
        })
        .collect();
    let drops: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("loupe_exporter_items_dropped_total{"))
        .collect();
    eprintln!(
        "{requests} requests\n{}\n{}",
        report.join("\n"),
        drops.join("\n")
    );
    for (signal, sink) in SINKS {
        let m = |name| sink_metric(&metrics, name, signal, sink);
        assert!(
            m("loupe_spool_items_written_total") > 0.0,
            "{signal}/{sink}: the outage sent nothing to the spool\n{}\n{}",
            report.join("\n"),
            agent.stderr()
        );
        assert_eq!(
            m("loupe_spool_items"),
            0.0,
            "{signal}/{sink}: the spool has not emptied\n{}\n{}",
            report.join("\n"),
            agent.stderr()
        );
        assert_eq!(
            m("loupe_exporter_items_dropped_total"),
            0.0,
            "{signal}/{sink}: items dropped\n{}\n{}",
            report.join("\n"),
            drops.join("\n")
        );
    }
    // SIGTERM: the last batches go out to backends that answer.
    let (status, stderr) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");

    // Spans: every span the local sink has, once at the OTLP receiver.
    let spans = read_spans(&out);
    let outage_spans = spans
        .iter()
        .filter(|s| {
            s.attributes
                .get("url.path")
                .is_some_and(|p| p.contains("/outage-"))
        })
        .count();
    assert!(
        outage_spans as u64 >= requests,
        "{outage_spans} server spans for {requests} requests"
    );
    exactly_once(
        "spans",
        spans.into_iter().map(|s| s.span_id).collect(),
        otlp.span_ids(),
    );

    // Log lines: every record of the local sink, once at Loki and once over OTLP.
    let lines = local_log_lines(&out);
    let logged = lines.iter().filter(|l| l.contains("/outage-")).count();
    assert!(
        logged as u64 >= requests,
        "{logged} log lines for {requests} requests"
    );
    let loki_lines: Vec<String> = {
        let pushes = loki.pushes.lock().expect("lock");
        pushes
            .iter()
            .flat_map(|p| &p.request.streams)
            .flat_map(|s| &s.entries)
            .map(|e| {
                let t = e.timestamp.unwrap_or_default();
                let ns = t.seconds as i128 * 1_000_000_000 + t.nanos as i128;
                format!("{ns} {}", e.line)
            })
            .collect()
    };
    exactly_once("log lines at Loki", lines.clone(), loki_lines);
    let otlp_lines = otlp.timed_bodies();
    exactly_once("log lines over OTLP", lines, otlp_lines);

    // Profiles: every profile file of the local sink, once at Pyroscope.
    let local: Vec<String> = read_all_profiles(&out)
        .iter()
        .map(|(name, profile)| {
            // `SERVICE-<secs>.pb.gz`, `SERVICE.page_faults-<secs>.pb.gz`
            let stem = name.rsplit_once('-').map_or(name.as_str(), |(s, _)| s);
            let service = stem.split('.').next().unwrap_or(stem);
            profile_key(service, profile)
        })
        .collect();
    let pushed: Vec<String> = {
        let pushes = pyroscope.pushes.lock().expect("lock");
        pushes
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|series| {
                let service = series
                    .labels
                    .iter()
                    .find(|l| l.name == "service_name")
                    .map(|l| l.value.clone())
                    .unwrap_or_default();
                series.samples.iter().map(move |sample| {
                    let mut raw = Vec::new();
                    flate2::read::GzDecoder::new(sample.raw_profile.as_slice())
                        .read_to_end(&mut raw)
                        .expect("raw_profile is gzip");
                    let profile = <Profile as prost::Message>::decode(raw.as_slice())
                        .expect("raw_profile is pprof");
                    profile_key(&service, &profile)
                })
            })
            .collect()
    };
    exactly_once("profiles", local, pushed);
    drop(hot);
}
