//! Configuration: every option is a command-line flag, a `LOUPE_*` environment variable and a key of
//! the TOML file named by `--config`, in that order of precedence, then a documented default.
//!
//! A bad value is reported as one [`ConfigError`] naming the key; `main` prints it and exits 2.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use cli::CliOptions;
use exporters::{PushKeys, TlsKeys, http_url, push_options, tls_settings};
use file::{FileOptions, SizeValue, read_file};
pub use values::{parse_cidr, parse_duration, parse_size};

mod cli;
mod exporters;
mod file;
#[cfg(test)]
mod tests;
mod unwind;
mod values;

/// Default sampling rate. 19 Hz: prime, so sampling does not run in lockstep with timers that fire at
/// round rates (10, 100, 1000 Hz) and over- or under-count their work; it costs well under 0.5% of a
/// CPU; and it is the rate Parca and the OTel eBPF profiler chose for continuous, fleet-wide
/// profiling. Over a 15 s interval a busy CPU yields 285 samples; Pyroscope merges intervals over time.
pub const DEFAULT_PROFILE_HZ: u32 = 19;
/// Default drain and export interval: Pyroscope's own upload interval.
pub const DEFAULT_PROFILE_INTERVAL: Duration = Duration::from_secs(15);
/// Default folder of the local sink.
pub const DEFAULT_OUTPUT_DIR: &str = "./loupe-data";
/// Default cap on profile files kept per service by the local sink.
pub const DEFAULT_MAX_PROFILE_FILES: usize = 200;

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub profile_hz: u32,
    pub profile_interval: Duration,
    /// Read DWARF when symbolizing (off: ELF symbol tables only).
    pub profile_debuginfo: bool,
    pub output_dir: PathBuf,
    /// Whether the local sink runs, as configured; `None`: per signal, when that signal has no
    /// backend (see [`Config::local_profiles`], [`Config::local_traces`]).
    pub local_sink: Option<bool>,
    pub max_profile_files: usize,
    pub pyroscope: Option<PushOptions>,
    pub network_spans: bool,
    pub capture_bytes: u32,
    pub otlp_endpoint: Option<String>,
    /// TLS settings of the OTLP endpoint.
    pub otlp_tls: loupe_collector::tls::TlsSettings,
    /// Credentials and tenant for the OTLP endpoint (its URL is `otlp_endpoint`).
    pub otlp_credentials: Option<PushOptions>,
    /// Logs also go to the OTLP endpoint.
    pub otlp_logs: bool,
    /// Capture stdout/stderr writes as logs.
    pub logs: bool,
    /// Watch this node's pods to name container processes; `None`: off.
    pub kubernetes: Option<crate::k8s::pods::K8sOptions>,
    /// Tag CPU samples with their request's span.
    pub span_profiles: bool,
    /// Fill the pinned trace context map other profilers read.
    pub publish_trace_context: bool,
    /// In-band trace context in a TCP option.
    pub tcp_context: bool,
    /// Peers whose TCP option context is adopted: (network address, prefix length).
    pub tcp_context_trusted: Vec<(std::net::IpAddr, u8)>,
    /// Link client and server spans of one connection on this host by address.
    pub link_same_host: bool,
    /// Probe TLS libraries for plaintext.
    pub tls: bool,
    /// Follow goroutines in Go processes.
    pub go_goroutines: bool,
    pub log_lines_per_sec: u32,
    pub loki: Option<PushOptions>,
    pub duration: Option<Duration>,
    pub pids: Vec<u32>,
    /// Processes whose off-CPU time is profiled.
    pub off_cpu_pids: Vec<u32>,
    /// Shortest off-CPU block recorded.
    pub off_cpu_min_block: Duration,
    /// Page-fault profiles: one sample every this many faults (`None`: off).
    pub page_fault_period: Option<u64>,
    /// Allocation profiles of chosen processes (`None`: off).
    pub alloc: Option<crate::profiler::AllocOptions>,
    /// How user stacks are walked, and the unwind tables' kernel memory in bytes.
    pub unwinder: crate::profiler::UnwinderMode,
    pub unwind_tables_bytes: u64,
    pub metrics_addr: Option<SocketAddr>,
    /// Bytes of resident memory plus kernel maps the agent stays under.
    pub memory_limit: u64,
    /// debuginfod server for stripped binaries' debug files, and its cache's size.
    pub debuginfod: Option<(String, u64)>,
    /// The on-disk spool of the backends: directory and bytes in all.
    pub spool: Option<(PathBuf, u64)>,
}

/// Peers whose TCP option context is adopted unless told otherwise: the private (RFC 1918,
/// RFC 4193), shared (RFC 6598, EKS custom networking) and loopback ranges, never the internet.
pub const DEFAULT_TRUSTED_PEERS: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "fc00::/7",
    "::1/128",
];

/// Shortest off-CPU block recorded unless told otherwise: waits below a millisecond (lock
/// hand-offs, scheduler noise) are many and cheap, and would dominate the map.
pub const DEFAULT_OFF_CPU_MIN_BLOCK: Duration = Duration::from_millis(1);

/// Page faults per page-fault sample unless told otherwise: one sample per 256 KiB of 4 KiB pages
/// first touched, a few samples a second for a service growing by a megabyte a second, while a
/// host's steady churn of faults costs little.
pub const DEFAULT_PAGE_FAULT_PERIOD: u64 = 64;

/// Default disk of the debuginfod cache.
pub const DEFAULT_DEBUGINFOD_CACHE: u64 = 256 << 20;

/// Default disk of the spool: a 10-minute outage of the demo shop at its load test's rate
/// (spans, logs and profiles: about 120 MiB) with room to spare.
pub const DEFAULT_SPOOL_SIZE: u64 = 512 << 20;

/// Default memory bound: the kernel maps take 77 MiB with the default features (88 MiB with every
/// feature on), the agent's resident memory peaked at 64 MiB under the flood of `memory_limit.rs`.
pub const DEFAULT_MEMORY_LIMIT: u64 = 256 << 20;
/// The smallest memory bound accepted: below it the kernel maps alone do not fit.
pub const MIN_MEMORY_LIMIT: u64 = 128 << 20;

/// Default lines per process per second for log capture.
pub const DEFAULT_LOG_LINES_PER_SEC: u32 = 1000;

/// Where and how to push to an HTTP backend (Pyroscope, Loki).
#[derive(Debug, Clone, PartialEq)]
pub struct PushOptions {
    pub url: String,
    pub basic_auth: Option<(String, String)>,
    pub bearer_token: Option<String>,
    /// A file holding the bearer token, read again when it changes.
    pub bearer_token_file: Option<PathBuf>,
    pub tenant_id: Option<String>,
    pub tls: loupe_collector::tls::TlsSettings,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("cannot read config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A key holds a value outside what it accepts.
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// A size option: the flag (or its environment variable) over the file's value (a number of bytes
/// or text such as `256MiB`), else `default`.
fn size_option(
    key: &'static str,
    cli: Option<&str>,
    file: Option<SizeValue>,
    default: u64,
) -> Result<u64, ConfigError> {
    match cli.map(|text| SizeValue::Text(text.to_string())).or(file) {
        None => Ok(default),
        Some(SizeValue::Bytes(n)) => Ok(n),
        Some(SizeValue::Text(text)) => parse_size(&text).map_err(|m| invalid(key, m)),
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Merges flags/environment over the file named by `--config` over defaults, and validates.
    pub fn load(cli: &CliOptions) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileOptions::default(),
        };
        Self::merge(cli, file)
    }

    fn merge(cli: &CliOptions, file: FileOptions) -> Result<Config, ConfigError> {
        let profile_hz = cli
            .profile_hz
            .or(file.profile_hz)
            .unwrap_or(DEFAULT_PROFILE_HZ);
        if !(1..=1000).contains(&profile_hz) {
            return Err(invalid(
                "profile_hz",
                format!("{profile_hz}: must be between 1 and 1000"),
            ));
        }

        let profile_interval = match cli
            .profile_interval
            .as_ref()
            .or(file.profile_interval.as_ref())
        {
            Some(text) => parse_duration(text).map_err(|m| invalid("profile_interval", m))?,
            None => DEFAULT_PROFILE_INTERVAL,
        };
        if profile_interval < Duration::from_secs(1) || profile_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "profile_interval",
                format!("{profile_interval:?}: must be between 1s and 1h"),
            ));
        }

        let off_cpu_pids = pid_list(
            "off_cpu_pid",
            &cli.off_cpu_pids,
            file.off_cpu_pid.as_ref(),
            loupe_common::TARGET_PID_ENTRIES,
        )?;
        let off_cpu_min_block = match cli
            .off_cpu_min_block
            .as_ref()
            .or(file.off_cpu_min_block.as_ref())
        {
            Some(text) => parse_duration(text).map_err(|m| invalid("off_cpu_min_block", m))?,
            None => DEFAULT_OFF_CPU_MIN_BLOCK,
        };
        let page_fault_period = cli.page_fault_period.or(file.page_fault_period);
        if page_fault_period == Some(0) {
            return Err(invalid(
                "page_fault_period",
                "0: at least one fault per sample",
            ));
        }
        let page_fault_period = cli
            .page_faults
            .or(file.page_faults)
            .unwrap_or(true)
            .then(|| page_fault_period.unwrap_or(DEFAULT_PAGE_FAULT_PERIOD));

        let alloc = alloc_options(cli, &file)?;
        let (unwinder, unwind_tables_bytes) = unwind::unwind_options(cli, &file)?;

        let duration = match cli.duration.as_ref().or(file.duration.as_ref()) {
            Some(text) => {
                let d = parse_duration(text).map_err(|m| invalid("duration", m))?;
                if d.is_zero() {
                    return Err(invalid("duration", "must be greater than zero"));
                }
                Some(d)
            }
            None => None,
        };

        let max_profile_files = cli
            .max_profile_files
            .or(file.max_profile_files)
            .unwrap_or(DEFAULT_MAX_PROFILE_FILES);
        if max_profile_files == 0 {
            return Err(invalid("max_profile_files", "must be at least 1"));
        }

        let tls_of =
            |keys: TlsKeys,
             url: Option<&str>,
             ca: Option<PathBuf>,
             cert: Option<PathBuf>,
             key: Option<PathBuf>,
             name: Option<String>| { tls_settings(keys, url, ca, cert, key, name) };
        let pyroscope_tls = tls_of(
            TlsKeys::PYROSCOPE,
            cli.pyroscope_url
                .as_deref()
                .or(file.pyroscope_url.as_deref()),
            cli.pyroscope_ca_file
                .clone()
                .or(file.pyroscope_ca_file.clone()),
            cli.pyroscope_cert_file
                .clone()
                .or(file.pyroscope_cert_file.clone()),
            cli.pyroscope_key_file
                .clone()
                .or(file.pyroscope_key_file.clone()),
            cli.pyroscope_server_name
                .clone()
                .or(file.pyroscope_server_name.clone()),
        )?;
        let loki_tls = tls_of(
            TlsKeys::LOKI,
            cli.loki_url.as_deref().or(file.loki_url.as_deref()),
            cli.loki_ca_file.clone().or(file.loki_ca_file.clone()),
            cli.loki_cert_file.clone().or(file.loki_cert_file.clone()),
            cli.loki_key_file.clone().or(file.loki_key_file.clone()),
            cli.loki_server_name
                .clone()
                .or(file.loki_server_name.clone()),
        )?;
        let otlp_tls = tls_of(
            TlsKeys::OTLP,
            cli.otlp_endpoint
                .as_deref()
                .or(file.otlp_endpoint.as_deref()),
            cli.otlp_ca_file.clone().or(file.otlp_ca_file.clone()),
            cli.otlp_cert_file.clone().or(file.otlp_cert_file.clone()),
            cli.otlp_key_file.clone().or(file.otlp_key_file.clone()),
            cli.otlp_server_name
                .clone()
                .or(file.otlp_server_name.clone()),
        )?;
        let otlp_credentials = push_options(
            PushKeys::OTLP,
            cli.otlp_endpoint.clone().or(file.otlp_endpoint.clone()),
            cli.otlp_user.clone().or(file.otlp_user.clone()),
            cli.otlp_password.clone().or(file.otlp_password.clone()),
            cli.otlp_token.clone().or(file.otlp_token.clone()),
            cli.otlp_token_file.clone().or(file.otlp_token_file.clone()),
            cli.otlp_tenant.clone().or(file.otlp_tenant.clone()),
        )?;
        let pyroscope = push_options(
            PushKeys::PYROSCOPE,
            cli.pyroscope_url.clone().or(file.pyroscope_url),
            cli.pyroscope_user.clone().or(file.pyroscope_user),
            cli.pyroscope_password.clone().or(file.pyroscope_password),
            cli.pyroscope_token.clone().or(file.pyroscope_token),
            cli.pyroscope_token_file
                .clone()
                .or(file.pyroscope_token_file),
            cli.pyroscope_tenant.clone().or(file.pyroscope_tenant),
        )?
        .map(|p| PushOptions {
            tls: pyroscope_tls,
            ..p
        });
        let loki = push_options(
            PushKeys::LOKI,
            cli.loki_url.clone().or(file.loki_url),
            cli.loki_user.clone().or(file.loki_user),
            cli.loki_password.clone().or(file.loki_password),
            cli.loki_token.clone().or(file.loki_token),
            cli.loki_token_file.clone().or(file.loki_token_file),
            cli.loki_tenant.clone().or(file.loki_tenant),
        )?
        .map(|p| PushOptions { tls: loki_tls, ..p });
        let kubernetes = kubernetes(
            cli.kubernetes.clone().or(file.kubernetes),
            cli.node_name
                .clone()
                .or(file.node_name)
                .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())),
            cli.kubeconfig.clone().or(file.kubeconfig),
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        )?;
        let log_lines_per_sec = cli
            .log_lines_per_sec
            .or(file.log_lines_per_sec)
            .unwrap_or(DEFAULT_LOG_LINES_PER_SEC);
        if !(1..=1_000_000).contains(&log_lines_per_sec) {
            return Err(invalid(
                "log_lines_per_sec",
                format!("{log_lines_per_sec}: must be between 1 and 1000000"),
            ));
        }

        let capture_bytes = cli
            .capture_bytes
            .or(file.capture_bytes)
            .unwrap_or(loupe_common::socket::MAX_CAPTURE_BYTES as u32);
        if !(1..=loupe_common::socket::MAX_CAPTURE_BYTES as u32).contains(&capture_bytes) {
            return Err(invalid(
                "capture_bytes",
                format!(
                    "{capture_bytes}: must be between 1 and {}",
                    loupe_common::socket::MAX_CAPTURE_BYTES
                ),
            ));
        }
        let otlp_endpoint = cli
            .otlp_endpoint
            .clone()
            .or(file.otlp_endpoint)
            .map(|url| http_url("otlp_endpoint", &url, ", e.g. http://alloy:4317"))
            .transpose()?;
        let local_sink = cli.local_sink.or(file.local_sink);

        let trusted_text = if cli.tcp_context_trusted.is_empty() {
            file.tcp_context_trusted.clone().unwrap_or_else(|| {
                DEFAULT_TRUSTED_PEERS
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect()
            })
        } else {
            cli.tcp_context_trusted.clone()
        };
        let mut tcp_context_trusted = Vec::with_capacity(trusted_text.len());
        for text in &trusted_text {
            tcp_context_trusted
                .push(parse_cidr(text).map_err(|e| invalid("tcp_context_trusted", e))?);
        }
        if tcp_context_trusted.len() > loupe_common::socket::TRUSTED_PEER_ENTRIES as usize {
            return Err(invalid(
                "tcp_context_trusted",
                format!(
                    "at most {} CIDRs",
                    loupe_common::socket::TRUSTED_PEER_ENTRIES
                ),
            ));
        }

        let pids = pid_list(
            "pid",
            &cli.pids,
            file.pid.as_ref(),
            loupe_common::TARGET_PID_ENTRIES,
        )?;

        let metrics_addr = match cli.metrics_addr.as_ref().or(file.metrics_addr.as_ref()) {
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "metrics_addr",
                    format!("{text:?}: {e} (expected e.g. 127.0.0.1:9464)"),
                )
            })?),
            None => None,
        };

        let memory_limit = size_option(
            "memory_limit",
            cli.memory_limit.as_deref(),
            file.memory_limit,
            DEFAULT_MEMORY_LIMIT,
        )?;
        if memory_limit < MIN_MEMORY_LIMIT {
            return Err(invalid(
                "memory_limit",
                format!(
                    "{memory_limit} bytes is below the least the agent needs ({}MiB: its kernel maps alone take about 90MiB)",
                    MIN_MEMORY_LIMIT >> 20
                ),
            ));
        }

        let unwinder = unwinder.unwrap_or(if memory_limit < unwind::AUTO_MIN_MEMORY_LIMIT {
            crate::profiler::UnwinderMode::FramePointers
        } else {
            crate::profiler::UnwinderMode::Auto
        });

        let debuginfod = match cli.debuginfod_url.clone().or(file.debuginfod_url) {
            None => None,
            Some(url) => {
                let url = url.trim_end_matches('/').to_string();
                let host = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                if host.is_none_or(str::is_empty) {
                    return Err(invalid(
                        "debuginfod_url",
                        format!("{url:?}: must be an http:// or https:// URL"),
                    ));
                }
                let cache = size_option(
                    "debuginfod_cache_size",
                    cli.debuginfod_cache_size.as_deref(),
                    file.debuginfod_cache_size,
                    DEFAULT_DEBUGINFOD_CACHE,
                )?;
                if cache < 1 << 20 {
                    return Err(invalid("debuginfod_cache_size", "must be at least 1MiB"));
                }
                Some((url, cache))
            }
        };

        let spool = match cli.spool_dir.clone().or(file.spool_dir) {
            None => None,
            Some(dir) => {
                let size = size_option(
                    "spool_size",
                    cli.spool_size.as_deref(),
                    file.spool_size,
                    DEFAULT_SPOOL_SIZE,
                )?;
                if size < 1 << 20 {
                    return Err(invalid("spool_size", "must be at least 1MiB"));
                }
                Some((dir, size))
            }
        };

        // Loki push and OTLP usually end in the same Loki: one path by default.
        let otlp_logs = match cli.otlp_logs.or(file.otlp_logs) {
            Some(true) if otlp_endpoint.is_none() => {
                return Err(invalid(
                    "otlp_logs",
                    "logs over OTLP need otlp_endpoint".to_owned(),
                ));
            }
            Some(on) => on,
            None => otlp_endpoint.is_some() && loki.is_none(),
        };

        Ok(Config {
            profile_hz,
            profile_interval,
            profile_debuginfo: cli
                .profile_debuginfo
                .or(file.profile_debuginfo)
                .unwrap_or(false),
            output_dir: cli
                .output_dir
                .clone()
                .or(file.output_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT_DIR)),
            local_sink,
            max_profile_files,
            pyroscope,
            network_spans: cli.network_spans.or(file.network_spans).unwrap_or(true),
            capture_bytes,
            otlp_endpoint,
            otlp_tls,
            otlp_credentials,
            otlp_logs,
            logs: cli.logs.or(file.logs).unwrap_or(true),
            kubernetes,
            span_profiles: cli.span_profiles.or(file.span_profiles).unwrap_or(true),
            publish_trace_context: cli
                .publish_trace_context
                .or(file.publish_trace_context)
                .unwrap_or(false),
            tcp_context: cli.tcp_context.or(file.tcp_context).unwrap_or(true),
            tcp_context_trusted,
            link_same_host: cli.link_same_host.or(file.link_same_host).unwrap_or(true),
            tls: cli.tls.or(file.tls).unwrap_or(true),
            go_goroutines: cli.go_goroutines.or(file.go_goroutines).unwrap_or(true),
            log_lines_per_sec,
            loki,
            duration,
            pids,
            off_cpu_pids,
            off_cpu_min_block,
            page_fault_period,
            alloc,
            unwinder,
            unwind_tables_bytes,
            metrics_addr,
            memory_limit,
            debuginfod,
            spool,
        })
    }
}

/// A list of process ids (`key`): the flag's when given, else the file's; no 0, at most `max`.
fn pid_list(
    key: &'static str,
    cli: &[u32],
    file: Option<&Vec<u32>>,
    max: u32,
) -> Result<Vec<u32>, ConfigError> {
    let pids = if cli.is_empty() {
        file.cloned().unwrap_or_default()
    } else {
        cli.to_vec()
    };
    if let Some(&bad) = pids.iter().find(|&&p| p == 0) {
        return Err(invalid(key, format!("{bad}: not a process id")));
    }
    if pids.len() > max as usize {
        return Err(invalid(
            key,
            format!("at most {max} processes can be named"),
        ));
    }
    Ok(pids)
}

/// `--alloc-pid`, `--alloc-sample-bytes` and `--alloc-duration`: `None` when no process is named.
fn alloc_options(
    cli: &CliOptions,
    file: &FileOptions,
) -> Result<Option<crate::profiler::AllocOptions>, ConfigError> {
    use crate::profiler::{DEFAULT_ALLOC_DURATION, DEFAULT_SAMPLE_BYTES, MAX_SAMPLE_BYTES};
    let pids = pid_list(
        "alloc_pid",
        &cli.alloc_pids,
        file.alloc_pid.as_ref(),
        loupe_common::alloc::PID_ENTRIES,
    )?;
    let sample_bytes = size_option(
        "alloc_sample_bytes",
        cli.alloc_sample_bytes.as_deref(),
        file.alloc_sample_bytes.clone(),
        DEFAULT_SAMPLE_BYTES,
    )?;
    if !(1..=MAX_SAMPLE_BYTES).contains(&sample_bytes) {
        return Err(invalid(
            "alloc_sample_bytes",
            format!("{sample_bytes}: must be between 1 byte and 1TiB"),
        ));
    }
    let duration = match cli.alloc_duration.as_ref().or(file.alloc_duration.as_ref()) {
        Some(text) => {
            let d = parse_duration(text).map_err(|m| invalid("alloc_duration", m))?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(DEFAULT_ALLOC_DURATION),
    };
    Ok((!pids.is_empty()).then_some(crate::profiler::AllocOptions {
        pids,
        sample_bytes,
        duration,
    }))
}

impl Config {
    /// Profiles go to the local sink unless Pyroscope is configured (or `local_sink` says).
    pub fn local_profiles(&self) -> bool {
        self.local_sink.unwrap_or(self.pyroscope.is_none())
    }

    /// Spans go to the local sink unless an OTLP endpoint is configured (or `local_sink` says).
    pub fn local_traces(&self) -> bool {
        self.local_sink.unwrap_or(self.otlp_endpoint.is_none())
    }

    /// Logs go to the local sink unless they go to Loki or over OTLP (or `local_sink` says).
    pub fn local_logs(&self) -> bool {
        self.local_sink
            .unwrap_or(self.loki.is_none() && !self.otlp_logs)
    }

    /// Backends configured (Pyroscope, OTLP spans, Loki, OTLP logs): the spool's size is shared
    /// equally among them.
    pub fn backend_count(&self) -> usize {
        let otlp = self.otlp_endpoint.is_some();
        [
            self.pyroscope.is_some(),
            otlp && self.network_spans,
            self.loki.is_some() && self.logs,
            otlp && self.otlp_logs && self.logs,
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// Turns off what needs uprobes (the kernel refuses them) and names what was on: the agent
    /// says so once at start-up rather than failing at every attach and rescan.
    /// The kernel features this run uses (the maps of the others are created small).
    pub fn ebpf_uses(&self) -> crate::ebpf::Uses {
        crate::ebpf::Uses {
            network: self.network_spans,
            tls: self.tls,
            go: self.go_goroutines,
            off_cpu: !self.off_cpu_pids.is_empty(),
            alloc: self.alloc.is_some(),
            unwind_rows: match self.unwinder {
                crate::profiler::UnwinderMode::FramePointers => 0,
                _ => (self.unwind_tables_bytes / 8) as u32,
            },
        }
    }

    pub fn without_uprobes(&mut self) -> Vec<&'static str> {
        let mut off = Vec::new();
        if std::mem::take(&mut self.tls) {
            off.push("TLS in clear (--tls)");
        }
        if std::mem::take(&mut self.go_goroutines) {
            off.push("Go goroutines (--go-goroutines)");
        }
        if self.alloc.take().is_some() {
            off.push("allocation profiles (--alloc-pid)");
        }
        off
    }
}

/// `--kubernetes`: on when asked, or (`auto`) when an API server is configured; then a node name
/// is required, as the pods watched are the node's.
fn kubernetes(
    mode: Option<String>,
    node_name: Option<String>,
    kubeconfig: Option<PathBuf>,
    in_cluster: bool,
) -> Result<Option<crate::k8s::pods::K8sOptions>, ConfigError> {
    let on = match mode.as_deref().unwrap_or("auto") {
        "on" | "true" => true,
        "off" | "false" => false,
        "auto" => in_cluster || kubeconfig.is_some(),
        other => {
            return Err(invalid(
                "kubernetes",
                format!("{other:?}: must be auto, on or off"),
            ));
        }
    };
    if !on {
        return Ok(None);
    }
    let node_name = node_name.filter(|n| !n.trim().is_empty()).ok_or_else(|| {
        invalid(
            "node_name",
            "Kubernetes is on but this node's name is unknown: set NODE_NAME from the downward \
             API (spec.nodeName) or --node-name",
        )
    })?;
    Ok(Some(crate::k8s::pods::K8sOptions {
        node_name,
        kubeconfig,
    }))
}
