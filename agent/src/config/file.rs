//! The TOML file named by `--config`: the same options as the command line, every one optional.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The same options as read from the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileOptions {
    pub(super) profile_hz: Option<u32>,
    pub(super) profile_interval: Option<String>,
    pub(super) profile_debuginfo: Option<bool>,
    pub(super) output_dir: Option<PathBuf>,
    pub(super) local_sink: Option<bool>,
    pub(super) max_profile_files: Option<usize>,
    pub(super) pyroscope_url: Option<String>,
    pub(super) pyroscope_user: Option<String>,
    pub(super) pyroscope_password: Option<String>,
    pub(super) pyroscope_token: Option<String>,
    pub(super) pyroscope_token_file: Option<PathBuf>,
    pub(super) pyroscope_tenant: Option<String>,
    pub(super) network_spans: Option<bool>,
    pub(super) capture_bytes: Option<u32>,
    pub(super) otlp_endpoint: Option<String>,
    pub(super) otlp_user: Option<String>,
    pub(super) otlp_password: Option<String>,
    pub(super) otlp_token: Option<String>,
    pub(super) otlp_token_file: Option<PathBuf>,
    pub(super) otlp_tenant: Option<String>,
    pub(super) otlp_ca_file: Option<PathBuf>,
    pub(super) otlp_cert_file: Option<PathBuf>,
    pub(super) otlp_key_file: Option<PathBuf>,
    pub(super) otlp_server_name: Option<String>,
    pub(super) loki_ca_file: Option<PathBuf>,
    pub(super) loki_cert_file: Option<PathBuf>,
    pub(super) loki_key_file: Option<PathBuf>,
    pub(super) loki_server_name: Option<String>,
    pub(super) pyroscope_ca_file: Option<PathBuf>,
    pub(super) pyroscope_cert_file: Option<PathBuf>,
    pub(super) pyroscope_key_file: Option<PathBuf>,
    pub(super) pyroscope_server_name: Option<String>,
    pub(super) otlp_logs: Option<bool>,
    pub(super) logs: Option<bool>,
    pub(super) kubernetes: Option<String>,
    pub(super) node_name: Option<String>,
    pub(super) kubeconfig: Option<PathBuf>,
    pub(super) span_profiles: Option<bool>,
    pub(super) publish_trace_context: Option<bool>,
    pub(super) tcp_context: Option<bool>,
    pub(super) tcp_context_trusted: Option<Vec<String>>,
    pub(super) link_same_host: Option<bool>,
    pub(super) tls: Option<bool>,
    pub(super) go_goroutines: Option<bool>,
    pub(super) log_lines_per_sec: Option<u32>,
    pub(super) loki_url: Option<String>,
    pub(super) loki_user: Option<String>,
    pub(super) loki_password: Option<String>,
    pub(super) loki_token: Option<String>,
    pub(super) loki_token_file: Option<PathBuf>,
    pub(super) loki_tenant: Option<String>,
    pub(super) duration: Option<String>,
    pub(super) off_cpu_pid: Option<Vec<u32>>,
    pub(super) off_cpu_min_block: Option<String>,
    pub(super) page_faults: Option<bool>,
    pub(super) page_fault_period: Option<u64>,
    pub(super) alloc_pid: Option<Vec<u32>>,
    pub(super) alloc_sample_bytes: Option<SizeValue>,
    pub(super) alloc_duration: Option<String>,
    pub(super) pid: Option<Vec<u32>>,
    pub(super) metrics_addr: Option<String>,
    pub(super) memory_limit: Option<SizeValue>,
    pub(super) unwinder: Option<String>,
    pub(super) unwind_tables_size: Option<SizeValue>,
    pub(super) debuginfod_url: Option<String>,
    pub(super) debuginfod_cache_size: Option<SizeValue>,
    pub(super) spool_dir: Option<PathBuf>,
    pub(super) spool_size: Option<SizeValue>,
}

/// A size in the TOML file: a number of bytes or a string with a unit.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(super) enum SizeValue {
    Bytes(u64),
    Text(String),
}

pub(super) fn read_file(path: &Path) -> Result<FileOptions, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string()
            + &e.span()
                .map(|s| format!(" (at byte {})", s.start))
                .unwrap_or_default(),
    })
}
