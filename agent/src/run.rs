//! `loupe-agent run`: probe, load, attach, then drain every interval into the exporters until the
//! duration elapses or SIGINT/SIGTERM arrives; then a last drain, a flush of every sink, and exit.

use std::{
    path::Path,
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use loupe_collector::export::{SignalBatch, Sink, SpoolConfig, SpooledSink, WireSink};
use loupe_collector::{
    BoxedProfileSink, ProfileExporter,
    sink::{
        local::LocalSink,
        pyroscope::{PyroscopeConfig, PyroscopeSink},
    },
    telemetry::{MetricsServer, Registry},
};

use loupe_collector::logs::{
    BoxedLogSink, LocalLogSink, LogExporter, LogExporterHandle, LokiConfig, LokiSink, OtlpLogSink,
};
use loupe_collector::traces::{
    BoxedTraceSink, LocalTraceSink, OtlpConfig, OtlpTraceSink, TraceExporter, TraceExporterHandle,
};

use crate::{
    config::Config,
    correlate::SpanIndex,
    logs::LogConfig,
    memory::{MemoryPlan, Signal},
    net::{
        capture::{CaptureOptions, SocketCapture},
        spans::{
            Correlation, LogOut, ServingChange, ServingOut, SpanBuilderConfig, spawn_span_builder,
        },
    },
    probe::SocketAttach,
    profiler::{MAX_CACHED_ADDRESSES, Profiler, ProfilerOptions, Symbolizer},
    trace_ctx_map::{self, TraceContextMap},
};

/// How long shutdown waits for sinks to flush (all signals at once): well inside Kubernetes' default
/// 30 s termination grace period.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// `sink`, behind its share of the on-disk spool when one is configured (`<dir>/<signal>-<sink>`;
/// the size is shared equally by the backends). A spool that cannot be opened is skipped, said.
fn spooled<B: SignalBatch, W: WireSink<B> + Sink<B>>(
    sink: W,
    config: &Config,
    registry: &Registry,
) -> Box<dyn Sink<B>> {
    let Some((dir, size)) = &config.spool else {
        return Box::new(sink);
    };
    let spool = SpoolConfig {
        dir: dir.join(format!("{}-{}", B::SIGNAL, WireSink::name(&sink))),
        max_bytes: size / config.backend_count().max(1) as u64,
    };
    match SpooledSink::new(sink, &spool, registry) {
        Ok(s) => Box::new(s),
        Err((sink, e)) => {
            tracing::warn!(
                signal = B::SIGNAL,
                dir = %spool.dir.display(),
                "cannot use the spool ({e}): what this backend cannot take is dropped and counted"
            );
            Box::new(sink)
        }
    }
}

pub fn run(mut config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loupe-export")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Listen for SIGTERM and SIGINT before anything else: one that arrives while the programs
    // load (seconds on a slow host) must stop the agent cleanly, not kill it.
    let stop_signals = runtime.block_on(async { StopSignals::listen() });
    crate::probe::ensure_tracefs();
    let mut features = crate::probe::detect();
    let plan = crate::probe::plan(&features);
    if let Err(missing) = &plan.profiler {
        return Err(anyhow!("cannot start the CPU profiler: {missing}"));
    }
    let mut ebpf = crate::ebpf::load(config.ebpf_uses())?;
    // Only loading a program tells whether fentry works; it decides how sockets are captured,
    // so it is tried only when they are.
    features.fentry = if config.network_spans {
        crate::ebpf::probe_fentry(&mut ebpf)
    } else {
        crate::probe::Availability::Unknown("not probed: network spans are off".into())
    };
    let plan = crate::probe::plan(&features);
    tracing::debug!(?features, ?plan, "kernel features");
    if let crate::probe::Availability::No(why) = &features.uprobes {
        let off = config.without_uprobes();
        if !off.is_empty() {
            tracing::warn!("off for want of uprobes: {}; {why}", off.join(", "));
        }
    }

    let registry = Registry::new();
    crate::self_metrics::record_kernel(&registry, &features);
    // What the kernel evicts from the LRU maps, read every 15 s.
    match crate::lru_maps::LruMaps::open(&mut ebpf, &registry).and_then(|m| {
        m.spawn()
            .map_err(|e| crate::ebpf::EbpfError::Unavailable(format!("no thread: {e}")))
    }) {
        Ok(()) => {}
        Err(e) => tracing::warn!("LRU map evictions are not counted: {e}"),
    }
    crate::self_metrics::install_process_metrics(&registry, config.memory_limit);
    // The memory limit's shares, once the maps (created at load) are known.
    let memory = MemoryPlan::new(
        config.memory_limit,
        crate::self_metrics::record_kernel_maps(&registry),
    );
    memory.publish(&registry);
    if memory.overcommitted {
        tracing::warn!(
            "--memory-limit is too low to be held under load ({}); every stage gets its floor",
            memory.describe()
        );
    } else {
        tracing::info!("{}", memory.describe());
    }
    crate::self_metrics::record_attach(&registry, "profiler", "perf_event");
    crate::self_metrics::record_attach(
        &registry,
        "processes",
        if plan.process_tracepoints {
            "tracepoints"
        } else {
            "on_first_sample"
        },
    );
    // In a pod the UTS hostname is the pod's name: the node's name is the host there.
    let host = config
        .kubernetes
        .as_ref()
        .map(|k| k.node_name.clone())
        .unwrap_or_else(hostname);

    runtime.block_on(async {
        // Pod names before anything names a process.
        if let Some(k8s) = &config.kubernetes {
            let metadata = crate::k8s::K8sMetadata::new(&k8s.node_name, &registry);
            metadata.spawn_watcher(k8s.clone());
            tracing::info!(node = %k8s.node_name, "watching this node's pods to name containers");
            crate::k8s::install(metadata);
        }

        let mut sinks: Vec<BoxedProfileSink> = Vec::new();
        if config.local_profiles() {
            let sink = LocalSink::new(&config.output_dir)
                .map(|s| s.with_max_files_per_service(config.max_profile_files))
                .with_context(|| format!("cannot use output directory {}", config.output_dir.display()))?;
            tracing::info!(dir = %config.output_dir.display(), "local sink: profiles and flamegraph.svg");
            sinks.push(Box::new(sink));
        }
        if let Some(p) = &config.pyroscope {
            // Host labels travel with each profile (ServiceProfile::labels), not with the sink.
            let sink = PyroscopeSink::new(
                PyroscopeConfig {
                    basic_auth: p.basic_auth.clone(),
                    bearer_token: p.bearer_token.clone(),
                    bearer_token_file: p.bearer_token_file.clone(),
                    tenant_id: p.tenant_id.clone(),
                    tls: p.tls.clone(),
                    ..PyroscopeConfig::new(p.url.clone())
                },
                Vec::new(),
            )
            .context("cannot set up the Pyroscope sink")?;
            tracing::info!(url = %p.url, "pushing profiles to Pyroscope");
            sinks.push(spooled(sink, &config, &registry));
        }
        let bound = memory.export_queue(Signal::Profiles, sinks.len());
        let exporter = ProfileExporter::spawn_bounded(sinks, &registry, bound);

        // Network spans first: the capture takes its maps and programs out of the object, then the
        // profiler takes the rest.
        let spans_index = SpanIndex::default();
        let mut network = if config.network_spans {
            start_network_spans(
                &mut ebpf,
                &config,
                plan.socket_attach,
                &registry,
                &memory,
                &host,
                spans_index.clone(),
            )
        } else {
            if config.logs {
                tracing::warn!("logs are off: they are captured with network spans, which are off");
            }
            None
        };

        let mut profiler = Profiler::start(
            ebpf,
            ProfilerOptions {
                hz: config.profile_hz,
                pids: config.pids.clone(),
                process_tracepoints: plan.process_tracepoints,
                host_labels: vec![("host_name".to_string(), host.clone())],
                spans: (network.is_some() && config.span_profiles).then(|| spans_index.clone()),
                off_cpu_pids: config.off_cpu_pids.clone(),
                off_cpu_min: config.off_cpu_min_block,
                page_fault_period: config.page_fault_period,
                alloc: config.alloc.clone(),
                unwinder: config.unwinder,
                unwind_rows: config.ebpf_uses().unwind_rows,
            },
            &registry,
        )?;
        for probes in network.as_mut().map(|n| std::mem::take(&mut n.uprobes)).unwrap_or_default() {
            profiler.adopt_uprobes(probes);
        }
        if profiler.page_faults_on() {
            crate::self_metrics::record_attach(&registry, "page_faults", "perf_event");
        }
        if profiler.alloc_on() {
            crate::self_metrics::record_attach(&registry, "alloc", "uprobe");
        }

        let kernel_maps = crate::self_metrics::record_kernel_maps(&registry);
        tokio::spawn(crate::self_metrics::watch_memory(
            config.memory_limit,
            kernel_maps,
            Duration::from_secs(1),
            memory.pressure.clone(),
            registry.clone(),
        ));

        // /metrics comes up once every program is attached: a port that answers means the agent
        // sees what happens from now on (readiness probes and tests rely on that).
        // Bound first (a port below 1024 takes a capability), served after the drop: a port that
        // answers also means the agent holds only what it keeps.
        let metrics_server = match config.metrics_addr {
            Some(addr) => Some(
                MetricsServer::bind(addr, registry.clone())
                    .await
                    .with_context(|| format!("cannot serve metrics on {addr}"))?,
            ),
            None => None,
        };
        drop_capabilities(&registry);
        if let Some(server) = metrics_server {
            tracing::info!(addr = %server.local_addr(), "serving self-metrics at /metrics");
            tokio::spawn(server.run());
        }

        // Opt-in: debug files of stripped binaries from a debuginfod server, fetched off the
        // drain thread.
        let debuginfod = config.debuginfod.as_ref().and_then(|(url, cap)| {
            match crate::profiler::debuginfod::Debuginfod::start(
                url,
                config.output_dir.join("debuginfod"),
                *cap,
                &registry,
            ) {
                Ok(d) => {
                    tracing::info!(%url, "stripped binaries without a debug file: asking debuginfod");
                    Some(d)
                }
                Err(e) => {
                    tracing::warn!("debuginfod off: {e:#}");
                    None
                }
            }
        });

        // The drainer owns the profiler on a thread of its own: draining and symbolizing are
        // blocking work, and exporters must never slow them down (try_submit never waits).
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let interval = config.profile_interval;
        let debuginfo = config.profile_debuginfo;
        let symbol_bytes = memory.symbol_bytes;
        let submitter = exporter.submitter();
        let drainer = thread::Builder::new()
            .name("loupe-drain".into())
            .spawn(move || {
                let mut profiler = profiler;
                let mut symbolizer = Symbolizer::new(MAX_CACHED_ADDRESSES, debuginfo)
                    .with_parsed_budget(symbol_bytes);
                if let Some(d) = debuginfod {
                    symbolizer = symbolizer.with_debuginfod(d);
                }
                let mut next = Instant::now() + interval;
                loop {
                    let wait = next.saturating_duration_since(Instant::now());
                    let stopping = !matches!(stop_rx.recv_timeout(wait), Err(mpsc::RecvTimeoutError::Timeout));
                    for batch in profiler.drain(&mut symbolizer) {
                        if !submitter.try_submit(Arc::new(batch)) {
                            tracing::warn!("export queue full: an interval's profiles were dropped");
                        }
                    }
                    if stopping {
                        profiler.stop();
                        return;
                    }
                    next += interval;
                }
            })
            .context("cannot start the drain thread")?;

        stop_signals.wait(config.duration).await;
        tracing::info!("stopping: draining the last interval and flushing sinks");
        let _ = stop_tx.send(());
        tokio::task::spawn_blocking(move || drainer.join())
            .await
            .map_err(|e| anyhow!("drain thread: {e}"))?
            .map_err(|_| anyhow!("the drain thread panicked"))?;
        // Profiles, spans and logs flush side by side, so that stopping takes one flush deadline
        // at most, inside Kubernetes' default 30 s grace period, however many backends are down.
        let profiles = async {
            if let Err(e) = exporter.shutdown(FLUSH_TIMEOUT).await {
                tracing::warn!("not every sink flushed: {e}");
            }
        };
        let network = async {
            if let Some(network) = network {
                network.shutdown().await;
            }
        };
        tokio::join!(profiles, network);
        Ok::<(), anyhow::Error>(())
    })
}

/// The running network-span pipeline: capture → span builder thread → trace exporter (and log
/// exporter).
struct NetworkSpans {
    capture: SocketCapture,
    /// TLS plaintext probes and Go runtime probes, until the profiler takes them (it rescans
    /// for new processes).
    uprobes: Vec<Box<dyn crate::uprobes::Rescan>>,
    builder: thread::JoinHandle<()>,
    exporter: TraceExporterHandle,
    logs: Option<LogExporterHandle>,
}

impl NetworkSpans {
    /// Detaches the programs (which closes the event channel), lets the span builder flush what is
    /// complete, then flushes the trace sinks.
    async fn shutdown(mut self) {
        self.capture.stop();
        let builder = self.builder;
        if tokio::task::spawn_blocking(move || builder.join())
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
        {
            tracing::error!("the span builder thread panicked");
        }
        let logs = async {
            if let Some(logs) = self.logs
                && let Err(e) = logs.shutdown(FLUSH_TIMEOUT).await
            {
                tracing::warn!("not every log sink flushed: {e}");
            }
        };
        let traces = async {
            if let Err(e) = self.exporter.shutdown(FLUSH_TIMEOUT).await {
                tracing::warn!("not every trace sink flushed: {e}");
            }
        };
        tokio::join!(logs, traces);
    }
}

/// Starts socket capture and the span pipeline. Network spans are an addition to the profiler, so a
/// failure here is a warning that names the cause, and the agent goes on profiling.
fn start_network_spans(
    ebpf: &mut aya::Ebpf,
    config: &Config,
    attach: Option<SocketAttach>,
    registry: &Registry,
    memory: &MemoryPlan,
    host: &str,
    spans_index: SpanIndex,
) -> Option<NetworkSpans> {
    let Some(attach) = attach else {
        tracing::warn!(
            "network spans are off: this kernel offers no way to capture socket calls (see `loupe-agent doctor`)"
        );
        return None;
    };
    let mut sinks: Vec<BoxedTraceSink> = Vec::new();
    if config.local_traces() {
        match LocalTraceSink::new(&config.output_dir) {
            Ok(sink) => sinks.push(Box::new(sink)),
            Err(e) => tracing::warn!("local trace sink disabled: {e}"),
        }
    }
    if let Some(endpoint) = &config.otlp_endpoint {
        match OtlpTraceSink::new(otlp_config(config, endpoint)) {
            Ok(sink) => {
                tracing::info!(%endpoint, "exporting spans over OTLP/gRPC");
                sinks.push(spooled(sink, config, registry));
            }
            Err(e) => tracing::warn!("OTLP trace sink disabled: {e}"),
        }
    }
    let (log_exporter, log_out) = match config
        .logs
        .then(|| start_log_export(config, registry, memory))
    {
        Some((handle, out)) => (Some(handle), Some(out)),
        None => (None, None),
    };
    let mut trace_ctx = None;
    if config.publish_trace_context {
        crate::probe::ensure_bpffs();
        match TraceContextMap::create(Path::new(trace_ctx_map::PIN_PATH), registry) {
            Ok(map) => {
                tracing::info!(
                    path = trace_ctx_map::PIN_PATH,
                    "publishing what each thread serves"
                );
                trace_ctx = Some(map);
            }
            Err(e) => tracing::warn!("the shared trace context map is off: {e:#}"),
        }
    }
    let (capture, events) = match SocketCapture::start(
        ebpf,
        CaptureOptions {
            capture_bytes: config.capture_bytes,
            pids: config.pids.clone(),
            attach,
            capture_logs: config.logs,
            track_requests: config.span_profiles,
            tcp_context: config.tcp_context,
            trusted_peers: config.tcp_context_trusted.clone(),
            tls: config.tls,
            // A write usually carries one line: the kernel's bound leaves room for the line
            // limit, which the log assembler enforces exactly.
            log_writes_per_sec: config.log_lines_per_sec.saturating_mul(2),
            queue_bytes: memory.socket_event_bytes,
            pressure: memory.pressure.clone(),
            ..CaptureOptions::default()
        },
        registry,
    ) {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!("network spans are off: {e}");
            return None;
        }
    };
    // TLS in clear: the plaintext goes through the socket programs just attached.
    let tls = if config.tls {
        match crate::net::tls::attach(ebpf) {
            Ok(probes) => {
                crate::self_metrics::record_attach(registry, "tls", "uprobe");
                Some(probes)
            }
            Err(e) => {
                tracing::warn!("TLS connections through OpenSSL stay opaque: {e}");
                None
            }
        }
    } else {
        None
    };
    let bound = memory.export_queue(Signal::Spans, sinks.len());
    let exporter = TraceExporter::spawn_bounded(sinks, registry, bound);
    let builder = match spawn_span_builder(
        events,
        exporter.submitter(),
        registry,
        host.to_string(),
        SpanBuilderConfig {
            link_same_host: config.link_same_host,
            max_buffered_bytes: memory.connection_bytes,
            max_serving_threads: memory.context_threads,
            max_links: memory.context_links,
            ..SpanBuilderConfig::default()
        },
        Correlation {
            serving: trace_ctx.map(|mut map| -> ServingOut {
                Box::new(move |changes: &[ServingChange]| map.apply(changes))
            }),
            index: config.span_profiles.then_some(spans_index),
            logs: log_out.map(|out| {
                let cfg = LogConfig {
                    max_lines_per_sec: config.log_lines_per_sec,
                    max_pending: memory.log_lines,
                    max_pending_bytes: memory.log_bytes,
                    max_partial_lines: memory.log_partial_lines,
                    ..LogConfig::default()
                };
                (cfg, out)
            }),
        },
    ) {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!("network spans are off: cannot start the span builder thread: {e}");
            return None;
        }
    };
    tracing::info!(
        tracepoints = capture.attached().len(),
        "network spans: HTTP/1.1, MySQL and Redis over TCP"
    );
    crate::self_metrics::record_attach(
        registry,
        "sockets",
        match capture.method() {
            SocketAttach::Fentry => "fentry",
            SocketAttach::Kprobes => "kprobes",
            SocketAttach::Tracepoints => "tracepoints",
        },
    );
    match capture.tcp_context_off() {
        None => crate::self_metrics::record_attach(registry, "tcp_context", "sockops"),
        Some(why) => tracing::debug!("in-band trace context: {why}"),
    }
    let mut uprobes: Vec<Box<dyn crate::uprobes::Rescan>> = Vec::new();
    uprobes.extend(tls.map(|t| Box::new(t) as Box<dyn crate::uprobes::Rescan>));
    // Goroutines: only where the kernel gives requests their contexts (in-band propagation),
    // which is what they carry from goroutine to goroutine.
    let goroutines = if config.go_goroutines && capture.tcp_context_off().is_none() {
        match crate::net::goroutines::g_register() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("Go goroutines are not followed (threads are): {e}");
                false
            }
        }
    } else {
        false
    };
    let features = crate::net::goroutines::GoFeatures {
        goroutines,
        tls: config.tls,
    };
    if features.goroutines || features.tls {
        match crate::net::goroutines::attach(ebpf, registry, features) {
            Ok(probes) => {
                if features.goroutines {
                    crate::self_metrics::record_attach(registry, "go_runtime", "uprobe");
                }
                if features.tls {
                    crate::self_metrics::record_attach(registry, "go_tls", "uprobe");
                }
                uprobes.push(Box::new(probes));
            }
            Err(e) => tracing::warn!(
                "Go probes not attached (goroutines followed by thread, Go's TLS opaque): {e}"
            ),
        }
    }
    Some(NetworkSpans {
        capture,
        uprobes,
        builder,
        exporter,
        logs: log_exporter,
    })
}

/// Starts the log sinks' pipeline; returns it and how the span builder thread hands it batches.
fn start_log_export(
    config: &Config,
    registry: &Registry,
    memory: &MemoryPlan,
) -> (LogExporterHandle, LogOut) {
    let mut sinks: Vec<BoxedLogSink> = Vec::new();
    if config.local_logs() {
        match LocalLogSink::new(&config.output_dir) {
            Ok(sink) => sinks.push(Box::new(sink)),
            Err(e) => tracing::warn!("local log sink disabled: {e}"),
        }
    }
    if let Some(loki) = &config.loki {
        let (user, password) = match &loki.basic_auth {
            Some((u, p)) => (Some(u.clone()), Some(p.clone())),
            None => (None, None),
        };
        match LokiSink::new(LokiConfig {
            user,
            password,
            token: loki.bearer_token.clone(),
            token_file: loki.bearer_token_file.clone(),
            tenant: loki.tenant_id.clone(),
            tls: loki.tls.clone(),
            ..LokiConfig::new(loki.url.clone())
        }) {
            Ok(sink) => {
                tracing::info!(url = %loki.url, "pushing logs to Loki");
                sinks.push(spooled(sink, config, registry));
            }
            Err(e) => tracing::warn!("Loki log sink disabled: {e}"),
        }
    }
    if let Some(endpoint) = config.otlp_endpoint.as_ref().filter(|_| config.otlp_logs) {
        match OtlpLogSink::new(otlp_config(config, endpoint)) {
            Ok(sink) => {
                tracing::info!(%endpoint, "exporting logs over OTLP/gRPC");
                sinks.push(spooled(sink, config, registry));
            }
            Err(e) => tracing::warn!("OTLP log sink disabled: {e}"),
        }
    }
    let bound = memory.export_queue(Signal::Logs, sinks.len());
    let handle = LogExporter::spawn_bounded(sinks, registry, bound);
    let submitter = handle.submitter();
    let out: LogOut = Box::new(move |batch| {
        // Full queues drop and count (loupe_exporter_items_dropped_total{signal="logs"}).
        let _ = submitter.try_submit(Arc::new(batch));
    });
    (handle, out)
}

/// SIGTERM and SIGINT, listened for from the start.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers now (inside a runtime); a signal that arrives before `wait` is kept.
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot listen for {name}: {e}");
                None
            }
        };
        Self {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Returns on SIGTERM, SIGINT or once `duration` has elapsed.
    async fn wait(mut self, duration: Option<Duration>) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let elapsed = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
            _ = elapsed => {}
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The OTLP exporter's configuration: endpoint, TLS, credentials and tenant.
fn otlp_config(config: &Config, endpoint: &str) -> OtlpConfig {
    let mut c = OtlpConfig {
        tls: config.otlp_tls.clone(),
        ..OtlpConfig::new(endpoint)
    };
    if let Some(creds) = &config.otlp_credentials {
        c.basic_auth = creds.basic_auth.clone();
        c.bearer_token = creds.bearer_token.clone();
        c.bearer_token_file = creds.bearer_token_file.clone();
        c.tenant = creds.tenant_id.clone();
    }
    c
}

/// Gives up the capabilities only start-up needed (see `privileges.rs`) and says which remain.
fn drop_capabilities(registry: &Registry) {
    use crate::privileges::{drop_unneeded, names};
    match drop_unneeded() {
        Ok(d) => {
            if d.after != d.before {
                tracing::info!(
                    dropped = %names(d.before & !d.after).join(","),
                    kept = %names(d.after).join(","),
                    threads = d.threads,
                    "dropped the capabilities only start-up needed"
                );
            }
            for name in names(d.after) {
                registry
                    .gauge(
                        "loupe_capabilities",
                        "Capabilities the agent holds after start-up (1 each); the rest were \
                         dropped once every program was attached.",
                        &[("capability", &name)],
                    )
                    .set(1);
            }
        }
        Err(e) => tracing::warn!("could not drop the capabilities start-up needed: {e}"),
    }
}
