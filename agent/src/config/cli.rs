//! The command-line and environment options of `loupe-agent run` and `doctor`, as clap sees them;
//! `Config::merge` (in `config.rs`) checks them against the file's and fills in defaults.

use std::path::PathBuf;

use clap::Args;

/// Options of `loupe-agent run` (and of `doctor`, which reads the same file), as given on the command
/// line or in the environment. `None` means "not given here".
#[derive(Args, Debug, Default, Clone)]
pub struct CliOptions {
    /// TOML configuration file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "LOUPE_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CPU sampling rate per CPU, in Hz (1..=1000) [default: 19].
    #[arg(long, env = "LOUPE_PROFILE_HZ", global = true, value_name = "HZ")]
    pub profile_hz: Option<u32>,
    /// How often samples are drained, symbolized and exported, e.g. `15s`, `1m` [default: 15s].
    #[arg(
        long,
        env = "LOUPE_PROFILE_INTERVAL",
        global = true,
        value_name = "DURATION"
    )]
    pub profile_interval: Option<String>,
    /// Symbolize with DWARF too (file:line, inlined functions), at a much higher CPU and memory cost.
    #[arg(long, env = "LOUPE_PROFILE_DEBUGINFO", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub profile_debuginfo: Option<bool>,
    /// Folder of the local sink (profiles and flame graph) [default: ./loupe-data].
    #[arg(long, env = "LOUPE_OUTPUT_DIR", global = true, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Keep writing the local sink even when a backend is configured.
    #[arg(long, env = "LOUPE_LOCAL_SINK", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub local_sink: Option<bool>,
    /// Profile files the local sink keeps per service; older ones are deleted [default: 200].
    #[arg(long, env = "LOUPE_MAX_PROFILE_FILES", global = true, value_name = "N")]
    pub max_profile_files: Option<usize>,
    /// Pyroscope (or Alloy `pyroscope.receive_http`) base URL to push profiles to.
    #[arg(long, env = "LOUPE_PYROSCOPE_URL", global = true, value_name = "URL")]
    pub pyroscope_url: Option<String>,
    /// Basic-auth user for Pyroscope.
    #[arg(long, env = "LOUPE_PYROSCOPE_USER", global = true, value_name = "USER")]
    pub pyroscope_user: Option<String>,
    /// Basic-auth password for Pyroscope (prefer the environment variable).
    #[arg(
        long,
        env = "LOUPE_PYROSCOPE_PASSWORD",
        global = true,
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub pyroscope_password: Option<String>,
    /// Bearer token for Pyroscope (prefer the environment variable).
    #[arg(
        long,
        env = "LOUPE_PYROSCOPE_TOKEN",
        global = true,
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub pyroscope_token: Option<String>,
    /// File holding the bearer token for Pyroscope, read again when it changes (a mounted
    /// Kubernetes Secret rotates without a restart).
    #[arg(
        long,
        env = "LOUPE_PYROSCOPE_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub pyroscope_token_file: Option<PathBuf>,
    /// Tenant sent as `X-Scope-OrgID`.
    #[arg(
        long,
        env = "LOUPE_PYROSCOPE_TENANT",
        global = true,
        value_name = "TENANT"
    )]
    pub pyroscope_tenant: Option<String>,
    /// Turn socket traffic (HTTP/1.1, MySQL, Redis) into spans and RED metrics [default: true].
    #[arg(long, env = "LOUPE_NETWORK_SPANS", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub network_spans: Option<bool>,
    /// Bytes of each socket read/write copied for protocol parsing (1..=1024) [default: 1024].
    #[arg(long, env = "LOUPE_CAPTURE_BYTES", global = true, value_name = "N")]
    pub capture_bytes: Option<u32>,
    /// OTLP/gRPC endpoint for spans, e.g. `http://alloy:4317` (Alloy, Tempo, any OTLP receiver),
    /// or `https://…` for TLS.
    #[arg(long, env = "LOUPE_OTLP_ENDPOINT", global = true, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Basic-auth user for the OTLP endpoint (with `--otlp-password`).
    #[arg(long, env = "LOUPE_OTLP_USER", global = true, value_name = "USER")]
    pub otlp_user: Option<String>,
    /// Basic-auth password for the OTLP endpoint.
    #[arg(
        long,
        env = "LOUPE_OTLP_PASSWORD",
        global = true,
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub otlp_password: Option<String>,
    /// Bearer token for the OTLP endpoint.
    #[arg(
        long,
        env = "LOUPE_OTLP_TOKEN",
        global = true,
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub otlp_token: Option<String>,
    /// A file holding the OTLP bearer token, read again when it changes (a mounted Secret).
    #[arg(
        long,
        env = "LOUPE_OTLP_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub otlp_token_file: Option<PathBuf>,
    /// Tenant sent to the OTLP endpoint as `X-Scope-OrgID` (multi-tenant Tempo, Loki).
    #[arg(long, env = "LOUPE_OTLP_TENANT", global = true, value_name = "TENANT")]
    pub otlp_tenant: Option<String>,
    /// PEM file of the CA certificates the OTLP endpoint's TLS certificate is checked against, instead
    /// of the system's (`https://` only).
    #[arg(long, env = "LOUPE_OTLP_CA_FILE", global = true, value_name = "FILE")]
    pub otlp_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) to present to the OTLP endpoint (with `--otlp-key-file`).
    #[arg(long, env = "LOUPE_OTLP_CERT_FILE", global = true, value_name = "FILE")]
    pub otlp_cert_file: Option<PathBuf>,
    /// PEM file of that client certificate's private key.
    #[arg(long, env = "LOUPE_OTLP_KEY_FILE", global = true, value_name = "FILE")]
    pub otlp_key_file: Option<PathBuf>,
    /// The name the OTLP endpoint's certificate must carry when it is not the URL's host.
    #[arg(
        long,
        env = "LOUPE_OTLP_SERVER_NAME",
        global = true,
        value_name = "NAME"
    )]
    pub otlp_server_name: Option<String>,
    /// PEM file of the CA certificates Loki's TLS certificate is checked against, instead
    /// of the system's (`https://` only).
    #[arg(long, env = "LOUPE_LOKI_CA_FILE", global = true, value_name = "FILE")]
    pub loki_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) to present to Loki (with `--loki-key-file`).
    #[arg(long, env = "LOUPE_LOKI_CERT_FILE", global = true, value_name = "FILE")]
    pub loki_cert_file: Option<PathBuf>,
    /// PEM file of that client certificate's private key.
    #[arg(long, env = "LOUPE_LOKI_KEY_FILE", global = true, value_name = "FILE")]
    pub loki_key_file: Option<PathBuf>,
    /// The name Loki's certificate must carry when it is not the URL's host.
    #[arg(
        long,
        env = "LOUPE_LOKI_SERVER_NAME",
        global = true,
        value_name = "NAME"
    )]
    pub loki_server_name: Option<String>,
    /// PEM file of the CA certificates Pyroscope's TLS certificate is checked against, instead
    /// of the system's (`https://` only).
    #[arg(
        long,
        env = "LOUPE_PYROSCOPE_CA_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub pyroscope_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) to present to Pyroscope (with `--pyroscope-key-file`).
    #[arg(
        long,
        env = "LOUPE_PYROSCOPE_CERT_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub pyroscope_cert_file: Option<PathBuf>,
    /// PEM file of that client certificate's private key.
    #[arg(
        long,
        env = "LOUPE_PYROSCOPE_KEY_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub pyroscope_key_file: Option<PathBuf>,
    /// The name Pyroscope's certificate must carry when it is not the URL's host.
    #[arg(
        long,
        env = "LOUPE_PYROSCOPE_SERVER_NAME",
        global = true,
        value_name = "NAME"
    )]
    pub pyroscope_server_name: Option<String>,
    /// Send logs over OTLP to `--otlp-endpoint` too [default: when no `--loki-url` is given, so
    /// that a line reaches Loki once].
    #[arg(long, env = "LOUPE_OTLP_LOGS", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub otlp_logs: Option<bool>,
    /// Capture what processes write to stdout and stderr as logs tied to their requests [default: true].
    #[arg(long, env = "LOUPE_LOGS", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub logs: Option<bool>,
    /// Name container processes after their Kubernetes pod: `auto` (when an API server is
    /// configured: in a pod, or with --kubeconfig), `on` or `off` [default: auto].
    #[arg(
        long,
        env = "LOUPE_KUBERNETES",
        global = true,
        value_name = "auto|on|off"
    )]
    pub kubernetes: Option<String>,
    /// This node's name, whose pods are watched [default: $NODE_NAME, from the downward API].
    #[arg(long, env = "LOUPE_NODE_NAME", global = true, value_name = "NAME")]
    pub node_name: Option<String>,
    /// A kubeconfig file for the Kubernetes API [default: the pod's service account].
    #[arg(long, env = "LOUPE_KUBECONFIG", global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Tag CPU samples with the span of the request their thread serves (pprof labels `span_id`,
    /// `span_name`; spans get `pyroscope.profile.id`) [default: true].
    #[arg(long, env = "LOUPE_SPAN_PROFILES", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub span_profiles: Option<bool>,
    /// Publish what each thread serves in the pinned map /sys/fs/bpf/otel/traces_ctx_v1, so
    /// another eBPF profiler on the node can tag its samples with Loupe's spans [default: false].
    #[arg(long, env = "LOUPE_PUBLISH_TRACE_CONTEXT", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub publish_trace_context: Option<bool>,
    /// Carry each client span's context to the server's node in a TCP header option (kind 25,
    /// as OpenTelemetry eBPF Instrumentation writes it) and adopt it from trusted peers, so a
    /// request is one trace across nodes, NAT and TLS; needs cgroup v2 and kernel 5.10
    /// [default: true].
    #[arg(long, env = "LOUPE_TCP_CONTEXT", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tcp_context: Option<bool>,
    /// Peers whose TCP option context is adopted, as CIDRs (comma-separated) [default: the
    /// private, shared and loopback ranges: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
    /// 100.64.0.0/10, 127.0.0.0/8, fc00::/7, ::1/128].
    #[arg(
        long,
        env = "LOUPE_TCP_CONTEXT_TRUSTED",
        global = true,
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub tcp_context_trusted: Vec<String>,
    /// Link a client span to the server span of the same TCP connection on this host by the
    /// connection's initial sequence numbers, through any NAT (by addresses for a connection open
    /// before the start; works without the TCP option) [default: true].
    #[arg(long, env = "LOUPE_LINK_SAME_HOST", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub link_same_host: Option<bool>,
    /// TLS in clear: probe OpenSSL's SSL_read/SSL_write in every process that uses the host's or
    /// a running container's libssl, so HTTPS, MySQL and Redis over TLS give spans [default: true].
    #[arg(long, env = "LOUPE_TLS", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls: Option<bool>,
    /// Follow goroutines in Go processes (Go 1.17+ with symbols, x86-64, kernel 5.15+): a client
    /// call made from another goroutine than the one that read the request nests under that
    /// request's span. Probes the Go runtime; needs the in-band context (`--tcp-context`)
    /// [default: true].
    #[arg(long, env = "LOUPE_GO_GOROUTINES", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub go_goroutines: Option<bool>,
    /// Log lines one process may log per second; more are dropped and counted [default: 1000].
    #[arg(long, env = "LOUPE_LOG_LINES_PER_SEC", global = true, value_name = "N")]
    pub log_lines_per_sec: Option<u32>,
    /// Loki (or Alloy `loki.source.api`) base URL to push logs to, e.g. `http://loki:3100`.
    #[arg(long, env = "LOUPE_LOKI_URL", global = true, value_name = "URL")]
    pub loki_url: Option<String>,
    /// Basic-auth user for Loki.
    #[arg(long, env = "LOUPE_LOKI_USER", global = true, value_name = "USER")]
    pub loki_user: Option<String>,
    /// Basic-auth password for Loki (prefer the environment variable).
    #[arg(
        long,
        env = "LOUPE_LOKI_PASSWORD",
        global = true,
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub loki_password: Option<String>,
    /// Bearer token for Loki (prefer the environment variable).
    #[arg(
        long,
        env = "LOUPE_LOKI_TOKEN",
        global = true,
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub loki_token: Option<String>,
    /// File holding the bearer token for Loki, read again when it changes.
    #[arg(
        long,
        env = "LOUPE_LOKI_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub loki_token_file: Option<PathBuf>,
    /// Tenant sent to Loki as `X-Scope-OrgID`.
    #[arg(long, env = "LOUPE_LOKI_TENANT", global = true, value_name = "TENANT")]
    pub loki_tenant: Option<String>,
    /// Run this long, flush every sink and exit 0, e.g. `30s` [default: until SIGINT/SIGTERM].
    #[arg(long, env = "LOUPE_DURATION", global = true, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Profile this process's off-CPU time too: where its threads wait, by stack (repeatable; in
    /// the environment, comma-separated) [default: none].
    #[arg(
        long = "off-cpu-pid",
        env = "LOUPE_OFF_CPU_PID",
        global = true,
        value_name = "PID",
        value_delimiter = ','
    )]
    pub off_cpu_pids: Vec<u32>,
    /// Off-CPU blocks shorter than this are not recorded, e.g. `1ms` [default: 1ms].
    #[arg(
        long,
        env = "LOUPE_OFF_CPU_MIN_BLOCK",
        global = true,
        value_name = "DURATION"
    )]
    pub off_cpu_min_block: Option<String>,
    /// Page-fault profiles: the stacks that touch new memory, sampled every
    /// `--page-fault-period` faults, for every profiled process [default: true].
    #[arg(long, env = "LOUPE_PAGE_FAULTS", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub page_faults: Option<bool>,
    /// One page-fault sample every this many page faults [default: 64, i.e. one per 256 KiB of
    /// 4 KiB pages first touched].
    #[arg(long, env = "LOUPE_PAGE_FAULT_PERIOD", global = true, value_name = "N")]
    pub page_fault_period: Option<u64>,
    /// Allocation profiles of this process (repeatable; in the environment, comma-separated):
    /// uprobes on the allocator it calls (glibc, jemalloc, …) sample malloc/calloc/realloc and
    /// track frees, for `--alloc-duration`. Costs the process about a microsecond per call
    /// [default: none].
    #[arg(
        long = "alloc-pid",
        env = "LOUPE_ALLOC_PID",
        global = true,
        value_name = "PID",
        value_delimiter = ','
    )]
    pub alloc_pids: Vec<u32>,
    /// Mean bytes allocated between two allocation samples, e.g. `512KiB` [default: 512KiB].
    #[arg(
        long,
        env = "LOUPE_ALLOC_SAMPLE_BYTES",
        global = true,
        value_name = "SIZE"
    )]
    pub alloc_sample_bytes: Option<String>,
    /// How long allocation profiles run before the probes are detached; `0` for as long as
    /// the agent runs [default: 10m].
    #[arg(
        long,
        env = "LOUPE_ALLOC_DURATION",
        global = true,
        value_name = "DURATION"
    )]
    pub alloc_duration: Option<String>,
    /// Only profile this process (repeatable; in the environment, comma-separated).
    #[arg(
        long = "pid",
        env = "LOUPE_PID",
        global = true,
        value_name = "PID",
        value_delimiter = ','
    )]
    pub pids: Vec<u32>,
    /// Serve the agent's own metrics in Prometheus format on this address, e.g. `127.0.0.1:9464`.
    #[arg(long, env = "LOUPE_METRICS_ADDR", global = true, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// The memory the agent stays under, resident memory plus kernel maps: bytes, or with a unit
    /// (`256MiB`, `256Mi`, `1GiB`; `M`/`G` are powers of 1000, as in Kubernetes) [default: 256MiB].
    #[arg(long, env = "LOUPE_MEMORY_LIMIT", global = true, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// How user stacks are walked: `frame-pointers`; `dwarf` (unwind tables from each binary's
    /// `.eh_frame`, for every profiled process); `auto`, frame pointers until a process's stacks
    /// come out cut short, then its tables [default: auto; frame-pointers below a 192MiB
    /// --memory-limit].
    #[arg(long, env = "LOUPE_UNWINDER", global = true, value_name = "MODE")]
    pub unwinder: Option<String>,
    /// Kernel memory the unwind tables may take, all binaries together, e.g. `64MiB`; a binary
    /// that does not fit is walked with frame pointers and counted [default: 8MiB].
    #[arg(
        long,
        env = "LOUPE_UNWIND_TABLES_SIZE",
        global = true,
        value_name = "SIZE"
    )]
    pub unwind_tables_size: Option<String>,
    /// A debuginfod server for the debug files of stripped binaries that have none installed,
    /// e.g. `https://debuginfod.debian.net` (opt-in: build ids leave the node) [default: none].
    #[arg(long, env = "LOUPE_DEBUGINFOD_URL", global = true, value_name = "URL")]
    pub debuginfod_url: Option<String>,
    /// Disk the debuginfod cache (under the output directory) may use [default: 256MiB].
    #[arg(
        long,
        env = "LOUPE_DEBUGINFOD_CACHE_SIZE",
        global = true,
        value_name = "SIZE"
    )]
    pub debuginfod_cache_size: Option<String>,
    /// A directory where data a backend cannot take (down, 429, 503…) waits on disk until it can,
    /// replayed in order, also after a restart (the chart: a hostPath) [default: none, such data
    /// is dropped and counted].
    #[arg(long, env = "LOUPE_SPOOL_DIR", global = true, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Disk the spool may use, shared equally by the backends; beyond it the oldest data goes,
    /// counted [default: 512MiB].
    #[arg(long, env = "LOUPE_SPOOL_SIZE", global = true, value_name = "SIZE")]
    pub spool_size: Option<String>,
}
