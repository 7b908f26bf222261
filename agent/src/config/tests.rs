use super::*;

fn cli() -> CliOptions {
    CliOptions::default()
}

#[test]
fn defaults_use_the_local_sink() {
    let c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert_eq!(c.profile_hz, DEFAULT_PROFILE_HZ);
    assert_eq!(c.profile_interval, DEFAULT_PROFILE_INTERVAL);
    assert_eq!(c.output_dir, PathBuf::from("./loupe-data"));
    assert!(c.local_profiles() && c.local_traces());
    assert!(c.pyroscope.is_none());
    assert!(c.duration.is_none());
}

#[test]
fn a_backend_turns_the_local_sink_off_unless_asked() {
    let mut o = cli();
    o.pyroscope_url = Some("http://pyro:4040/".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert!(!c.local_profiles(), "profiles go to Pyroscope");
    assert!(c.local_traces(), "spans have no backend: they stay local");
    assert_eq!(c.pyroscope.clone().unwrap().url, "http://pyro:4040");
    o.otlp_endpoint = Some("http://alloy:4317".into());
    assert!(
        !Config::merge(&o, FileOptions::default())
            .unwrap()
            .local_traces()
    );
    o.local_sink = Some(true);
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert!(c.local_profiles() && c.local_traces());
}

#[test]
fn logs_take_one_path_to_loki_by_default() {
    let mut o = cli();
    o.otlp_endpoint = Some("http://alloy:4317".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert!(c.otlp_logs && !c.local_logs(), "OTLP only: logs over OTLP");
    o.loki_url = Some("http://alloy:3100".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert!(!c.otlp_logs, "Loki push given: not over OTLP too");
    assert!(!c.local_logs());
    o.otlp_logs = Some(true);
    assert!(Config::merge(&o, FileOptions::default()).unwrap().otlp_logs);

    let mut o = cli();
    o.otlp_logs = Some(true);
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "otlp_logs",
                ..
            }
        ),
        "{e}"
    );
    let c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert!(!c.otlp_logs && c.local_logs());
}

#[test]
fn flags_win_over_the_file() {
    let file: FileOptions =
        toml::from_str("profile_hz = 49\nprofile_interval = \"30s\"\npid = [7, 8]\n").unwrap();
    let mut o = cli();
    o.profile_hz = Some(99);
    let c = Config::merge(&o, file).unwrap();
    assert_eq!(c.profile_hz, 99);
    assert_eq!(c.profile_interval, Duration::from_secs(30));
    assert_eq!(c.pids, vec![7, 8]);
}

#[test]
fn kubernetes_mode_node_name_and_kubeconfig() {
    // The pure decision (the environment's NODE_NAME and KUBERNETES_SERVICE_HOST passed in).
    let node = || Some("node-1".to_string());
    assert_eq!(
        kubernetes(None, node(), None, false),
        Ok(None),
        "auto, not in a pod"
    );
    let on = kubernetes(None, node(), None, true).unwrap().unwrap();
    assert_eq!((on.node_name.as_str(), on.kubeconfig), ("node-1", None));
    let file = Some(PathBuf::from("/etc/kubeconfig"));
    let with_file = kubernetes(Some("auto".into()), node(), file.clone(), false);
    assert_eq!(with_file.unwrap().unwrap().kubeconfig, file);
    assert_eq!(kubernetes(Some("off".into()), node(), None, true), Ok(None));
    let e = kubernetes(Some("on".into()), None, None, false).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "node_name",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("NODE_NAME"), "{e}");
    let e = kubernetes(Some("maybe".into()), node(), None, false).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "kubernetes",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn loki_options_are_checked_like_pyroscope_ones() {
    let mut o = cli();
    o.loki_url = Some("http://loki:3100/".into());
    o.loki_user = Some("u".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "loki_password",
                ..
            }
        ),
        "{e}"
    );
    o.loki_password = Some("p".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    let loki = c.loki.clone().unwrap();
    assert_eq!(loki.url, "http://loki:3100");
    assert_eq!(loki.basic_auth, Some(("u".into(), "p".into())));
    assert!(
        !c.local_logs(),
        "a log backend turns the local log file off"
    );
    assert!(c.local_profiles(), "profiles have no backend here");
    o.loki_url = Some("loki:3100".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "loki_url",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_token_file_must_be_readable_and_alone() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let mut o = cli();
    o.loki_url = Some("http://loki:3100".into());
    o.loki_token_file = Some(token.clone());
    let key = |e: ConfigError| match e {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("{other}"),
    };
    // Missing, then empty: one error naming the key.
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    assert_eq!(key(e), "loki_token_file");
    std::fs::write(&token, "\n").unwrap();
    assert_eq!(
        key(Config::merge(&o, FileOptions::default()).unwrap_err()),
        "loki_token_file"
    );
    std::fs::write(&token, "secret\n").unwrap();
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert_eq!(c.loki.unwrap().bearer_token_file, Some(token.clone()));
    // Not with another way to authenticate.
    o.loki_token = Some("t".into());
    assert_eq!(
        key(Config::merge(&o, FileOptions::default()).unwrap_err()),
        "loki_token_file"
    );
    // The same for Pyroscope, from the TOML file.
    let file: FileOptions = toml::from_str(&format!(
        "pyroscope_url = \"http://p:4040\"\npyroscope_token_file = {:?}\n",
        token.display().to_string()
    ))
    .unwrap();
    let c = Config::merge(&cli(), file).unwrap();
    assert_eq!(c.pyroscope.unwrap().bearer_token_file, Some(token));
}

#[test]
fn otlp_credentials_are_validated_like_the_pushes() {
    let mut o = cli();
    o.otlp_endpoint = Some("https://tempo:4317".into());
    o.otlp_token = Some("t0k".into());
    o.otlp_tenant = Some("shop".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    let creds = c.otlp_credentials.expect("credentials");
    assert_eq!(
        (creds.bearer_token.as_deref(), creds.tenant_id.as_deref()),
        (Some("t0k"), Some("shop"))
    );
    o.otlp_user = Some("u".into());
    o.otlp_password = Some("p".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "otlp_token",
                ..
            }
        ),
        "{e}"
    );
    let mut o = cli();
    o.otlp_endpoint = Some("http://tempo:4317".into());
    o.otlp_token_file = Some("/nonexistent/token".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "otlp_token_file",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn tls_settings_need_https_and_readable_files() {
    let key_of = |e: ConfigError| match e {
        ConfigError::Invalid { key, message } => (key, message),
        other => panic!("{other}"),
    };
    let mut o = cli();
    o.otlp_endpoint = Some("http://tempo:4317".into());
    o.otlp_server_name = Some("tempo".into());
    let (key, message) = key_of(Config::merge(&o, FileOptions::default()).unwrap_err());
    assert_eq!(key, "otlp_server_name");
    assert!(message.contains("https://"), "{message}");

    let mut o = cli();
    o.loki_url = Some("https://loki:3100".into());
    o.loki_ca_file = Some("/nonexistent/ca.pem".into());
    let (key, message) = key_of(Config::merge(&o, FileOptions::default()).unwrap_err());
    assert_eq!(key, "loki_ca_file");
    assert!(message.contains("/nonexistent/ca.pem"), "{message}");

    let mut o = cli();
    o.pyroscope_url = Some("https://pyroscope:4040".into());
    o.pyroscope_cert_file = Some("/etc/ssl/certs/ca-certificates.crt".into());
    let (key, _) = key_of(Config::merge(&o, FileOptions::default()).unwrap_err());
    assert_eq!(key, "pyroscope_cert_file", "a certificate without its key");

    // Debian's CA bundle is a valid CA file.
    let mut o = cli();
    o.otlp_endpoint = Some("https://tempo:4317".into());
    o.otlp_ca_file = Some("/etc/ssl/certs/ca-certificates.crt".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert_eq!(
        c.otlp_tls.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"))
    );
}

#[test]
fn page_faults_are_on_by_default_with_their_period() {
    let c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert_eq!(c.page_fault_period, Some(DEFAULT_PAGE_FAULT_PERIOD));
    let mut o = cli();
    o.page_fault_period = Some(16);
    assert_eq!(
        Config::merge(&o, FileOptions::default())
            .unwrap()
            .page_fault_period,
        Some(16)
    );
    o.page_faults = Some(false);
    assert_eq!(
        Config::merge(&o, FileOptions::default())
            .unwrap()
            .page_fault_period,
        None
    );
    let mut o = cli();
    o.page_fault_period = Some(0);
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid value for page_fault_period"),
        "{e}"
    );
    let file: FileOptions = toml::from_str("page_faults = false\n").unwrap();
    assert_eq!(Config::merge(&cli(), file).unwrap().page_fault_period, None);
    let file: FileOptions = toml::from_str("page_fault_period = 256\n").unwrap();
    assert_eq!(
        Config::merge(&cli(), file).unwrap().page_fault_period,
        Some(256)
    );
}

#[test]
fn off_cpu_targets_and_minimum_block() {
    let c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert!(c.off_cpu_pids.is_empty());
    assert_eq!(c.off_cpu_min_block, DEFAULT_OFF_CPU_MIN_BLOCK);
    let mut o = cli();
    o.off_cpu_pids = vec![7, 9];
    o.off_cpu_min_block = Some("5ms".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert_eq!(c.off_cpu_pids, vec![7, 9]);
    assert_eq!(c.off_cpu_min_block, Duration::from_millis(5));
    let mut o = cli();
    o.off_cpu_pids = vec![0];
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("invalid value for off_cpu_pid"),
        "{e}"
    );
    let file: FileOptions =
        toml::from_str("off_cpu_pid = [12]\noff_cpu_min_block = \"2s\"\n").unwrap();
    let c = Config::merge(&cli(), file).unwrap();
    assert_eq!(
        (c.off_cpu_pids, c.off_cpu_min_block),
        (vec![12], Duration::from_secs(2))
    );
}

#[test]
fn trusted_peers_are_cidrs_with_private_defaults() {
    let c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert!(c.tcp_context && c.link_same_host);
    assert_eq!(c.tcp_context_trusted.len(), DEFAULT_TRUSTED_PEERS.len());
    assert!(
        c.tcp_context_trusted
            .contains(&("10.0.0.0".parse().unwrap(), 8))
    );

    assert_eq!(
        parse_cidr("192.0.2.7"),
        Ok(("192.0.2.7".parse().unwrap(), 32))
    );
    assert_eq!(parse_cidr("fd00::/8"), Ok(("fd00::".parse().unwrap(), 8)));
    assert_eq!(parse_cidr("0.0.0.0/0"), Ok(("0.0.0.0".parse().unwrap(), 0)));
    for bad in [
        "10.0.0.1/8",
        "10.0.0.0/33",
        "fd00::1/8",
        "example.com/8",
        "10.0.0.0/x",
    ] {
        assert!(parse_cidr(bad).is_err(), "{bad}");
    }

    let mut o = cli();
    o.tcp_context_trusted = vec!["10.1.0.0/16".into(), "10.2.0.1/16".into()];
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid value for tcp_context_trusted: \"10.2.0.1/16\""),
        "{e}"
    );
    let file: FileOptions =
        toml::from_str("tcp_context = false\ntcp_context_trusted = [\"10.9.0.0/16\"]\n").unwrap();
    let c = Config::merge(&cli(), file).unwrap();
    assert!(!c.tcp_context);
    assert_eq!(
        c.tcp_context_trusted,
        vec![("10.9.0.0".parse().unwrap(), 16)]
    );
}

#[test]
fn bad_values_name_their_key() {
    let mut o = cli();
    o.profile_hz = Some(0);
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "profile_hz",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("invalid value for profile_hz: 0"),
        "{e}"
    );

    let mut o = cli();
    o.profile_interval = Some("10 parsecs".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "profile_interval",
                ..
            }
        ),
        "{e}"
    );

    let mut o = cli();
    o.pyroscope_url = Some("pyro:4040".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "pyroscope_url",
                ..
            }
        ),
        "{e}"
    );

    let mut o = cli();
    o.metrics_addr = Some("localhost".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "metrics_addr",
                ..
            }
        ),
        "{e}"
    );

    let mut o = cli();
    o.pyroscope_url = Some("http://p".into());
    o.pyroscope_user = Some("u".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "pyroscope_password",
                ..
            }
        ),
        "{e}"
    );

    let mut o = cli();
    o.capture_bytes = Some(4096);
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "capture_bytes",
                ..
            }
        ),
        "{e}"
    );

    let mut o = cli();
    o.otlp_endpoint = Some("alloy:4317".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                key: "otlp_endpoint",
                ..
            }
        ),
        "{e}"
    );

    let mut o = cli();
    o.pids = vec![0];
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(matches!(e, ConfigError::Invalid { key: "pid", .. }), "{e}");
}

#[test]
fn the_file_rejects_unknown_keys_and_wrong_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loupe.toml");
    std::fs::write(&path, "profile_hzz = 19\n").unwrap();
    let e = read_file(&path).unwrap_err();
    assert!(e.to_string().contains("profile_hzz"), "{e}");
    std::fs::write(&path, "profile_hz = \"fast\"\n").unwrap();
    let e = read_file(&path).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    let e = read_file(&dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}

#[test]
fn sizes_take_kubernetes_and_binary_units() {
    assert_eq!(parse_size("268435456"), Ok(268435456));
    assert_eq!(parse_size("256Mi"), Ok(256 << 20));
    assert_eq!(parse_size("256MiB"), Ok(256 << 20));
    assert_eq!(parse_size(" 1Gi "), Ok(1 << 30));
    assert_eq!(parse_size("300M"), Ok(300_000_000));
    assert_eq!(parse_size("512k"), Ok(512_000));
    assert!(parse_size("256 MB").is_ok());
    assert!(parse_size("lots").unwrap_err().contains("256MiB"));
    assert!(parse_size("5Ti").unwrap_err().contains("unknown unit"));
    assert!(parse_size("99999999999999999999G").is_err());
}

#[test]
fn memory_limit_from_flag_or_file_with_a_floor() {
    let c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert_eq!(c.memory_limit, DEFAULT_MEMORY_LIMIT);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loupe.toml");
    std::fs::write(&path, "memory_limit = 536870912\n").unwrap();
    let c = Config::merge(&cli(), read_file(&path).unwrap()).unwrap();
    assert_eq!(c.memory_limit, 512 << 20);
    std::fs::write(&path, "memory_limit = \"384Mi\"\n").unwrap();
    let file = read_file(&path).unwrap();
    let mut o = cli();
    o.memory_limit = Some("1Gi".into());
    assert_eq!(Config::merge(&o, file).unwrap().memory_limit, 1 << 30);

    for bad in ["64Mi", "a lot"] {
        let mut o = cli();
        o.memory_limit = Some(bad.into());
        let e = Config::merge(&o, FileOptions::default()).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    key: "memory_limit",
                    ..
                }
            ),
            "{bad}: {e}"
        );
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("5d").is_err());
    assert!(parse_duration("-1s").is_err());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    const KEYS: [&str; 16] = [
        "profile_hz",
        "profile_interval",
        "capture_bytes",
        "memory_limit",
        "metrics_addr",
        "pyroscope_url",
        "loki_url",
        "otlp_endpoint",
        "log_lines_per_sec",
        "kubernetes",
        "duration",
        "max_profile_files",
        "debuginfod_url",
        "debuginfod_cache_size",
        "spool_dir",
        "spool_size",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            "[ -~]{0,24}".prop_map(|t| format!("{t:?}")),
            Just("[1, 2]".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// Any file made of known keys and arbitrary values, and any bytes as a file: the
        /// loader answers Ok or one error, never panics.
        #[test]
        fn arbitrary_files_load_or_fail_cleanly(
            entries in proptest::collection::vec((0..KEYS.len(), value()), 0..8),
            junk in "\\PC{0,80}",
        ) {
            let mut text = String::new();
            let mut seen = std::collections::HashSet::new();
            for (k, v) in entries {
                if seen.insert(k) {
                    text.push_str(&format!("{} = {v}\n", KEYS[k]));
                }
            }
            for candidate in [text.as_str(), junk.as_str()] {
                if let Ok(file) = toml::from_str::<FileOptions>(candidate) {
                    let _ = Config::merge(&cli(), file);
                }
            }
        }
    }
}

#[test]
fn allocation_profiles_are_off_until_a_process_is_named() {
    use crate::profiler::{AllocOptions, DEFAULT_ALLOC_DURATION, DEFAULT_SAMPLE_BYTES};
    assert_eq!(
        Config::merge(&cli(), FileOptions::default()).unwrap().alloc,
        None
    );
    let mut o = cli();
    o.alloc_pids = vec![42];
    assert_eq!(
        Config::merge(&o, FileOptions::default()).unwrap().alloc,
        Some(AllocOptions {
            pids: vec![42],
            sample_bytes: DEFAULT_SAMPLE_BYTES,
            duration: Some(DEFAULT_ALLOC_DURATION),
        })
    );
    o.alloc_sample_bytes = Some("64KiB".into());
    o.alloc_duration = Some("0".into());
    let a = Config::merge(&o, FileOptions::default())
        .unwrap()
        .alloc
        .unwrap();
    assert_eq!(
        (a.sample_bytes, a.duration),
        (64 << 10, None),
        "0: no limit"
    );
    for (key, bad) in [("alloc_sample_bytes", "0"), ("alloc_duration", "soon")] {
        let mut o = cli();
        o.alloc_pids = vec![42];
        if key == "alloc_sample_bytes" {
            o.alloc_sample_bytes = Some(bad.into());
        } else {
            o.alloc_duration = Some(bad.into());
        }
        let e = Config::merge(&o, FileOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("invalid value for {key}")),
            "{e}"
        );
    }
    let mut o = cli();
    o.alloc_pids = vec![0];
    assert!(Config::merge(&o, FileOptions::default()).is_err());
    let file: FileOptions =
        toml::from_str("alloc_pid = [7]\nalloc_sample_bytes = 4096\nalloc_duration = \"30s\"\n")
            .unwrap();
    assert_eq!(
        Config::merge(&cli(), file).unwrap().alloc,
        Some(AllocOptions {
            pids: vec![7],
            sample_bytes: 4096,
            duration: Some(Duration::from_secs(30)),
        })
    );
}

#[test]
fn without_uprobes_turns_off_and_names_what_was_on() {
    let mut c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert!(
        c.tls && c.go_goroutines && c.alloc.is_none(),
        "the defaults"
    );
    assert_eq!(
        c.without_uprobes(),
        ["TLS in clear (--tls)", "Go goroutines (--go-goroutines)"]
    );
    assert!(!c.tls && !c.go_goroutines);
    assert!(c.without_uprobes().is_empty(), "nothing left to turn off");
}

#[test]
fn the_spool_is_off_until_a_directory_is_named_and_its_size_is_shared() {
    let c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert!(c.spool.is_none());
    let mut o = cli();
    o.spool_dir = Some(PathBuf::from("/var/lib/loupe/spool"));
    o.pyroscope_url = Some("http://pyroscope:4040".into());
    o.otlp_endpoint = Some("http://alloy:4317".into());
    o.loki_url = Some("http://loki:3100".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert_eq!(
        c.spool,
        Some((PathBuf::from("/var/lib/loupe/spool"), DEFAULT_SPOOL_SIZE))
    );
    // Pyroscope, OTLP spans and Loki (OTLP logs are off beside Loki by default).
    assert_eq!(c.backend_count(), 3);
    o.spool_size = Some("1GiB".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert_eq!(c.spool.map(|s| s.1), Some(1 << 30));
    let file: FileOptions =
        toml::from_str("spool_dir = \"/spool\"\nspool_size = 2097152\n").unwrap();
    let c = Config::merge(&cli(), file).unwrap();
    assert_eq!(c.spool, Some((PathBuf::from("/spool"), 2 << 20)));
    o.spool_size = Some("100KiB".into());
    let e = Config::merge(&o, FileOptions::default()).unwrap_err();
    assert!(e.to_string().contains("spool_size"), "{e}");
}

#[test]
fn the_unwinder_is_auto_unless_the_memory_limit_is_small_or_it_is_chosen() {
    use crate::profiler::UnwinderMode;
    let c = Config::merge(&cli(), FileOptions::default()).unwrap();
    assert_eq!(c.unwinder, UnwinderMode::Auto);
    assert_eq!(c.unwind_tables_bytes, 8 << 20);
    assert_eq!(c.ebpf_uses().unwind_rows, 1 << 20);

    let mut o = cli();
    o.memory_limit = Some("128MiB".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert_eq!(c.unwinder, UnwinderMode::FramePointers);
    assert_eq!(c.ebpf_uses().unwind_rows, 0, "no unwinding maps");
    o.unwinder = Some("dwarf".into());
    let c = Config::merge(&o, FileOptions::default()).unwrap();
    assert_eq!(c.unwinder, UnwinderMode::Dwarf);

    let mut o = cli();
    o.unwinder = Some("lbr".into());
    assert!(
        Config::merge(&o, FileOptions::default())
            .unwrap_err()
            .to_string()
            .starts_with("invalid value for unwinder")
    );
    o.unwinder = Some("frame-pointers".into());
    o.unwind_tables_size = Some("512KiB".into());
    assert!(
        Config::merge(&o, FileOptions::default())
            .unwrap_err()
            .to_string()
            .starts_with("invalid value for unwind_tables_size")
    );
    let file: FileOptions =
        toml::from_str("unwinder = \"dwarf\"\nunwind_tables_size = \"32Mi\"\n").unwrap();
    let c = Config::merge(&cli(), file).unwrap();
    assert_eq!(c.unwinder, UnwinderMode::Dwarf);
    assert_eq!(c.unwind_tables_bytes, 32 << 20);
}
