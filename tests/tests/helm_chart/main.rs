//! The agent's chart (`helm/loupe`) with the real helm v4 and the Kubernetes 1.30 and 1.33 schemas:
//! it lints and renders with its defaults and with every toggle; what it renders passes the schemas;
//! the agent is least-privilege (exactly the capabilities values.yaml documents); RBAC is read-only;
//! the TOML it renders is accepted by the real agent; bad values fail with the key's name; the
//! dashboards, datasources, rules and Alloy pipeline it ships are the repository's files. The
//! demo-shop chart is linted and validated beside it.
//!
//! `cargo xtask test` installs helm (LOUPE_HELM) and kubernetes-validate
//! (LOUPE_KUBERNETES_VALIDATE); `cargo xtask setup` does too, for running this file alone.

use std::collections::BTreeSet;
use std::process::Command;

use serde_yaml::Value;

mod chart;
use chart::*;

#[test]
fn charts_lint_with_defaults_and_every_toggle() {
    for (name, extra) in scenarios() {
        let chart = chart().display().to_string();
        let mut args = vec!["lint", "--strict", &chart];
        args.extend(extra.iter().map(String::as_str));
        let out = helm(&args);
        assert!(
            out.status.success(),
            "helm lint ({name}) failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shop = repo().join("helm/demo-shop").display().to_string();
    let out = helm(&["lint", "--strict", &shop]);
    assert!(
        out.status.success(),
        "helm lint demo-shop:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn rendered_manifests_pass_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, (name, extra)) in scenarios().into_iter().enumerate() {
        let path = dir.path().join(format!("loupe-{i}.yaml"));
        std::fs::write(&path, render_text(&extra)).expect("write");
        files.push((name.to_string(), path));
    }
    let shop = repo().join("helm/demo-shop").display().to_string();
    let out = helm(&["template", "shop", &shop, "--namespace", "shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shop_path = dir.path().join("demo-shop.yaml");
    std::fs::write(&shop_path, &out.stdout).expect("write");
    files.push(("demo-shop".into(), shop_path));

    for version in KUBERNETES_VERSIONS {
        for (name, path) in &files {
            let out = Command::new(kubernetes_validate())
                .args(["--strict", "-k", version])
                .arg(path)
                .output()
                .expect("run kubernetes-validate");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && !text.contains("ERROR"),
                "{name} against Kubernetes {version}:\n{text}"
            );
            // Every built-in kind was checked; only the Prometheus Operator's have no schema
            // here (prometheus_rule_is_the_rules_files_with_thresholds_from_values checks the
            // rules with promtool).
            for line in text.lines().filter(|l| l.contains("Couldn't find schema")) {
                assert!(line.contains("monitoring.coreos.com/v1"), "{name}: {line}");
            }
            assert!(text.contains("passed for resource daemonset/") || name == "demo-shop");
        }
    }

    // The validator does fail: a DaemonSet with a misspelt field.
    let broken = std::fs::read_to_string(&files[0].1)
        .expect("read")
        .replace("hostPID: true", "hostPid: true");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).expect("write");
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "-k", KUBERNETES_VERSIONS[1]])
        .arg(&path)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        !out.status.success(),
        "a misspelt field passed strict validation"
    );
}

#[test]
fn the_agent_is_least_privilege_by_default() {
    let docs = render(&[]);
    let ds = one(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], Value::Bool(true));
    assert!(pod["hostNetwork"].is_null(), "no host network");
    // Every taint tolerated: an agent on every node.
    assert_eq!(
        pod["tolerations"],
        serde_yaml::from_str::<Value>("[{operator: Exists}]").expect("yaml")
    );
    let c = agent_container(&docs);
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], Value::Bool(false));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_string()])
    );
    let documented = documented_capabilities();
    assert_eq!(
        documented,
        [
            "BPF",
            "PERFMON",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "NET_ADMIN"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(strings(&sc["capabilities"]["add"]), documented);
    // NET_ADMIN only serves the TCP option: off, it goes.
    let docs = render(&["--set".into(), "agent.tcpContext.enabled=false".into()]);
    let mut want = documented.clone();
    want.remove("NET_ADMIN");
    assert_eq!(
        strings(&agent_container(&docs)["securityContext"]["capabilities"]["add"]),
        want
    );

    // Opt-ins add exactly their capability.
    let docs = render(&["--set".into(), "securityContext.sysResource=true".into()]);
    let mut want = documented.clone();
    want.insert("SYS_RESOURCE".into());
    assert_eq!(
        strings(&agent_container(&docs)["securityContext"]["capabilities"]["add"]),
        want
    );
    let docs = render(&["--set".into(), "securityContext.sysAdmin=true".into()]);
    let sc = &agent_container(&docs)["securityContext"];
    let mut want = documented.clone();
    want.insert("SYS_ADMIN".into());
    assert_eq!(strings(&sc["capabilities"]["add"]), want);
    // Kubernetes refuses allowPrivilegeEscalation=false beside SYS_ADMIN.
    assert!(sc["allowPrivilegeEscalation"].is_null());
    assert_eq!(sc["runAsUser"], Value::from(0), "root by default");

    // Non-root: the same capabilities, which reach the user through the binary's file
    // capabilities only with escalation allowed (tests/privileges.rs runs the agent that way).
    let docs = render(&["--set".into(), "securityContext.runAsUser=65534".into()]);
    let sc = &agent_container(&docs)["securityContext"];
    assert_eq!(sc["runAsUser"], Value::from(65534));
    assert_eq!(sc["runAsGroup"], Value::from(65534));
    assert_eq!(sc["runAsNonRoot"], Value::Bool(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(true));
    assert_eq!(strings(&sc["capabilities"]["add"]), documented);

    // Host paths: tracefs read-only, the spool's own directory; bpffs only when the trace context
    // is published.
    let docs = render(&[]);
    let c = agent_container(&docs);
    let pod = &one(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let host_paths: Vec<(String, String)> = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_string(),
                v["hostPath"]["path"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(
        host_paths,
        vec![
            ("tracefs".to_string(), "/sys/kernel/tracing".to_string()),
            ("spool".to_string(), "/var/lib/loupe-spool".to_string())
        ]
    );
    for m in c["volumeMounts"].as_sequence().expect("mounts") {
        if m["name"] == "tracefs" || m["name"] == "config" {
            assert_eq!(m["readOnly"], Value::Bool(true), "{m:?}");
        }
    }

    // NODE_NAME from the downward API; the config file from the ConfigMap.
    let env = c["env"].as_sequence().expect("env");
    let node = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert!(env.iter().any(|e| e["name"] == "LOUPE_CONFIG"));

    // Probes on the metrics port; the memory limit is the agent's own bound.
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics");
    }
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(9464));
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(c["resources"]["requests"]["memory"], "256Mi");
    let toml = config_toml(&docs);
    assert!(toml.contains("memory_limit = \"256Mi\""), "{toml}");
    let docs = render(&["--set".into(), "agent.memoryLimit=1Gi".into()]);
    assert_eq!(
        agent_container(&docs)["resources"]["limits"]["memory"],
        "1Gi"
    );
    assert!(config_toml(&docs).contains("memory_limit = \"1Gi\""));
}

#[test]
fn rbac_is_read_only_on_pods() {
    let docs = render(&[]);
    let role = one(&docs, "ClusterRole");
    let rules = role["rules"].as_sequence().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        strings(&rules[0]["resources"]),
        BTreeSet::from(["pods".to_string()])
    );
    assert_eq!(
        strings(&rules[0]["verbs"]),
        ["get", "list", "watch"].map(String::from).into()
    );
    assert!(kind(&docs, "Role").is_empty());
    let binding = one(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"][0]["name"],
        one(&docs, "ServiceAccount")["metadata"]["name"]
    );
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
}

#[test]
fn the_rendered_configuration_is_accepted_by_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cases = scenarios();
    cases.push((
        "extra config",
        vec![
            "--set".into(),
            "agent.extraConfig.max_profile_files=50,agent.extraConfig.profile_hz=49".into(),
        ],
    ));
    for (name, extra) in cases {
        let docs = render(&extra);
        let toml = config_toml(&docs);
        // The token Secrets, as the kubelet mounts them: a file per backend.
        let secrets = dir.path().join("secrets");
        for backend in ["otlp", "loki", "pyroscope"] {
            std::fs::create_dir_all(secrets.join(backend)).expect("mkdir");
            std::fs::write(secrets.join(backend).join("token"), "from-the-secret\n")
                .expect("write");
            // The TLS Secrets: a CA bundle, and a client certificate made here.
            let tls = secrets.join("tls").join(backend);
            std::fs::create_dir_all(&tls).expect("mkdir");
            std::fs::copy("/etc/ssl/certs/ca-certificates.crt", tls.join("ca.crt"))
                .expect("Debian's CA bundle (ca-certificates)");
            if !tls.join("tls.key").exists() {
                let status = Command::new("openssl")
                    .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                    .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
                    .args(["-subj", "/CN=loupe-agent", "-keyout"])
                    .arg(tls.join("tls.key"))
                    .arg("-out")
                    .arg(tls.join("tls.crt"))
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("openssl");
                assert!(status.success(), "openssl req");
            }
        }
        let path = dir.path().join("loupe.toml");
        std::fs::write(
            &path,
            toml.replace("/var/run/secrets/loupe", &secrets.display().to_string()),
        )
        .expect("write");
        // `doctor` reads the configuration as `run` does and exits 2 on any bad key or value.
        let mut agent = Command::new(loupe_tests::agent_bin());
        agent
            .arg("doctor")
            .arg("--config")
            .arg(&path)
            .env("NODE_NAME", "ip-10-0-1-23.eu-west-1.compute.internal")
            .env_remove("LOUPE_CONFIG");
        // What Kubernetes would put in the environment from the Secrets.
        for e in agent_container(&docs)["env"].as_sequence().expect("env") {
            if let Some(secret) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                agent.env(e["name"].as_str().expect("name"), format!("from-{secret}"));
            }
        }
        let out = agent.output().expect("run the agent");
        assert!(
            out.status.success(),
            "{name}: the agent refused the chart's configuration:\n{toml}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        match name {
            "defaults" => {
                for line in [
                    "otlp_endpoint = \"http://alloy.monitoring.svc.cluster.local:4317\"",
                    "loki_url = \"http://alloy.monitoring.svc.cluster.local:3100\"",
                    "pyroscope_url = \"http://alloy.monitoring.svc.cluster.local:4040\"",
                    "metrics_addr = \"0.0.0.0:9464\"",
                    "kubernetes = \"on\"",
                    "spool_dir = \"/var/spool/loupe\"",
                    "spool_size = \"512Mi\"",
                ] {
                    assert!(toml.lines().any(|l| l == line), "{line} in\n{toml}");
                }
                // The spool outlives the pod: a directory of the node, mounted where the TOML says.
                let pod = &one(&docs, "DaemonSet")["spec"]["template"]["spec"];
                let spool = pod["volumes"]
                    .as_sequence()
                    .expect("volumes")
                    .iter()
                    .find(|v| v["name"] == "spool")
                    .expect("spool volume");
                assert_eq!(spool["hostPath"]["path"], "/var/lib/loupe-spool");
                assert_eq!(spool["hostPath"]["type"], "DirectoryOrCreate");
                assert!(
                    agent_container(&docs)["volumeMounts"]
                        .as_sequence()
                        .expect("mounts")
                        .iter()
                        .any(|m| m["name"] == "spool" && m["mountPath"] == "/var/spool/loupe"),
                    "spool mount"
                );
            }
            "no spool" => {
                assert!(!toml.contains("spool"), "{toml}");
                let pod = &one(&docs, "DaemonSet")["spec"]["template"]["spec"];
                assert!(
                    !pod["volumes"]
                        .as_sequence()
                        .expect("volumes")
                        .iter()
                        .any(|v| v["name"] == "spool")
                );
            }
            "no backend" => assert!(!toml.contains("_url") && !toml.contains("otlp"), "{toml}"),
            "debuginfod" => {
                assert!(toml.contains("debuginfod_cache_size = \"1Gi\""), "{toml}");
                // The data volume holds the cache on top of the local sink's 256Mi.
                let pod = &one(&docs, "DaemonSet")["spec"]["template"]["spec"];
                let data = pod["volumes"]
                    .as_sequence()
                    .expect("volumes")
                    .iter()
                    .find(|v| v["name"] == "data")
                    .expect("data volume");
                assert_eq!(data["emptyDir"]["sizeLimit"], "1280Mi");
            }
            "extra config" => {
                assert!(toml.lines().any(|l| l == "profile_hz = 49"), "{toml}");
                assert!(
                    toml.lines().any(|l| l == "max_profile_files = 50"),
                    "{toml}"
                );
            }
            "direct over TLS with a private CA" => {
                for line in [
                    "otlp_ca_file = \"/var/run/secrets/loupe/tls/otlp/ca.crt\"",
                    "otlp_cert_file = \"/var/run/secrets/loupe/tls/otlp/tls.crt\"",
                    "otlp_key_file = \"/var/run/secrets/loupe/tls/otlp/tls.key\"",
                    "otlp_server_name = \"tempo.internal\"",
                    "loki_ca_file = \"/var/run/secrets/loupe/tls/loki/ca.crt\"",
                ] {
                    assert!(toml.lines().any(|l| l == line), "{line} in\n{toml}");
                }
                let mounts = agent_container(&docs)["volumeMounts"].clone();
                assert!(
                    mounts
                        .as_sequence()
                        .expect("mounts")
                        .iter()
                        .any(|m| m["mountPath"] == "/var/run/secrets/loupe/tls/otlp"
                            && m["readOnly"] == true),
                    "{mounts:?}"
                );
            }
            "direct exporters with credentials" => {
                // Secrets by reference, never in the ConfigMap.
                let env = agent_container(&docs)["env"]
                    .as_sequence()
                    .expect("env")
                    .clone();
                let secret = |var: &str| {
                    env.iter()
                        .find(|e| e["name"] == var)
                        .map(|e| e["valueFrom"]["secretKeyRef"].clone())
                };
                assert_eq!(
                    secret("LOUPE_LOKI_PASSWORD"),
                    Some(serde_yaml::from_str("{name: loki-auth, key: password}").expect("yaml"))
                );
                // Tokens are mounted files (rotated without a restart), not variables.
                assert_eq!(secret("LOUPE_PYROSCOPE_TOKEN"), None);
                for line in [
                    "otlp_tenant = \"shop\"",
                    "otlp_token_file = \"/var/run/secrets/loupe/otlp/token\"",
                ] {
                    assert!(toml.lines().any(|l| l == line), "{line} in\n{toml}");
                }
                assert!(
                    toml.lines().any(|l| l
                        == "pyroscope_token_file = \"/var/run/secrets/loupe/pyroscope/token\"")
                );
                let pod = &one(&docs, "DaemonSet")["spec"]["template"]["spec"];
                let volume = pod["volumes"]
                    .as_sequence()
                    .expect("volumes")
                    .iter()
                    .find(|v| v["name"] == "pyroscope-token")
                    .expect("the token volume");
                assert_eq!(volume["secret"]["secretName"], "pyro-auth");
                assert_eq!(volume["secret"]["items"][0]["key"], "token");
                assert_eq!(volume["secret"]["items"][0]["path"], "token");
                let mount = agent_container(&docs)["volumeMounts"]
                    .as_sequence()
                    .expect("mounts")
                    .iter()
                    .find(|m| m["name"] == "pyroscope-token")
                    .expect("the token mount")
                    .clone();
                assert_eq!(mount["mountPath"], "/var/run/secrets/loupe/pyroscope");
                assert_eq!(mount["readOnly"], Value::Bool(true));
                assert!(
                    mount["subPath"].is_null(),
                    "a subPath mount is never updated"
                );
                assert!(toml.contains("loki_user = \"loupe\"") && toml.contains("loki_tenant"));
                // Secrets by reference: no password or token value in the ConfigMap.
                assert!(
                    !toml.contains("password") && !toml.contains("from-the-secret"),
                    "{toml}"
                );
            }
            _ => {}
        }
    }
    // The agent does refuse a bad file (so the loop above can fail).
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "profile_hz = 19\nprofile_hz_typo = 1\n").expect("write");
    let out = Command::new(loupe_tests::agent_bin())
        .args(["doctor", "--config"])
        .arg(&path)
        .env("NODE_NAME", "n")
        .output()
        .expect("run the agent");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_values_fail_with_the_key_named() {
    let chart = chart().display().to_string();
    for (set, expect) in [
        ("agent.memoryLimit=256MB", "/agent/memoryLimit"),
        ("agent.memoryLimit=64Mi", "agent.memoryLimit"),
        ("agent.profileHz=0", "/agent/profileHz"),
        ("agent.debuginfod.url=ftp://mirror", "/agent/debuginfod/url"),
        ("agent.profileHz=5000", "/agent/profileHz"),
        ("agent.kubernetes=maybe", "/agent/kubernetes"),
        ("agent.profileInteval=15s", "profileInteval"),
        ("exporters.mode=tempo", "/exporters/mode"),
        ("exporters.mode=direct", "exporters.direct.otlpEndpoint"),
        // TLS settings need an https:// endpoint the chart sends to directly.
        ("exporters.loki.tls.serverName=loki", "exporters.loki.tls"),
        (
            "exporters.direct.lokiUrl=loki:3100",
            "/exporters/direct/lokiUrl",
        ),
        (
            "exporters.loki.passwordSecret.name=loki-auth",
            "/exporters/loki/passwordSecret",
        ),
        (
            "securityContext.privileged=yes",
            "/securityContext/privileged",
        ),
        ("securityContext.capabilities=ALL", "capabilities"),
        ("exporters.loki.user=loupe", "exporters.loki.passwordSecret"),
        (
            "prometheusRule.thresholds.podCpuCores=lots",
            "/prometheusRule/thresholds/podCpuCores",
        ),
        ("image.repository=", "/image/repository"),
        (
            "prometheusRule.runbookBaseUrl=docs/runbooks.md",
            "/prometheusRule/runbookBaseUrl",
        ),
        (
            "serviceMonitor.enabled=true,podMonitor.enabled=true",
            "serviceMonitor.enabled and podMonitor.enabled",
        ),
        (
            "securityContext.privileged=true,securityContext.seLinuxOptions.type=super_t",
            "securityContext.seLinuxOptions",
        ),
        (
            "prometheusRule.thresholds.serviceErrorRatio=2",
            "/prometheusRule/thresholds/serviceErrorRatio",
        ),
        ("securityContext.runAsUser=-1", "/securityContext/runAsUser"),
        (
            "securityContext.runAsUser=65534,agent.publishTraceContext=true",
            "agent.publishTraceContext",
        ),
        (
            "securityContext.runAsUser=65534,securityContext.privileged=true",
            "securityContext.privileged",
        ),
    ] {
        let out = helm(&["template", "loupe", &chart, "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(
            stderr.contains(expect),
            "{set}: the error does not name {expect}:\n{stderr}"
        );
    }
}

#[test]
fn prometheus_rule_is_the_rules_files_with_thresholds_from_values() {
    let docs = render(&[
        "--set".into(),
        "prometheusRule.enabled=true,prometheusRule.thresholds.serviceErrorRatio=0.02,\
         prometheusRule.thresholds.serviceLatencyP99Seconds=0.5"
            .into(),
    ]);
    let rule = one(&docs, "PrometheusRule");
    let groups = rule["spec"]["groups"].as_sequence().expect("groups");
    let expr_of = |record: &str| {
        groups
            .iter()
            .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
            .find(|r| r["record"] == record)
            .and_then(|r| r["expr"].as_str().map(str::to_string))
    };
    assert_eq!(
        expr_of("loupe:threshold:service_error_ratio").as_deref(),
        Some("vector(0.02)")
    );
    assert_eq!(
        expr_of("loupe:threshold:service_latency_p99_seconds").as_deref(),
        Some("vector(0.5)")
    );
    assert_eq!(
        expr_of("loupe:threshold:pod_cpu_cores").as_deref(),
        Some("vector(0.9)")
    );

    // Every alert of the plain rules file, with its annotations' templates intact.
    let file: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("dashboards/alerts/loupe.rules.yaml")).expect("read"),
    )
    .expect("rules parse");
    let alerts = |groups: &[Value]| -> Vec<Value> {
        groups
            .iter()
            .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
            .filter(|r| !r["alert"].is_null())
            .collect()
    };
    let shipped = alerts(groups);
    assert_eq!(
        shipped,
        alerts(file["groups"].as_sequence().expect("groups"))
    );
    assert!(shipped.len() >= 8);
    assert!(shipped.iter().all(|a| {
        a["annotations"]["summary"].as_str().is_some()
            && a["annotations"]["runbook_url"]
                .as_str()
                .is_some_and(|u| u.contains("docs/runbooks.md#"))
    }));

    // Runbook links follow prometheusRule.runbookBaseUrl, anchors kept.
    let docs = render(&[
        "--set".into(),
        "prometheusRule.enabled=true,\
         prometheusRule.runbookBaseUrl=https://wiki.example.internal/loupe/runbooks/"
            .into(),
    ]);
    let moved = alerts(
        one(&docs, "PrometheusRule")["spec"]["groups"]
            .as_sequence()
            .expect("groups"),
    );
    for (a, original) in moved.iter().zip(&shipped) {
        let url = a["annotations"]["runbook_url"]
            .as_str()
            .expect("runbook_url");
        let anchor = original["annotations"]["runbook_url"]
            .as_str()
            .and_then(|u| u.split_once('#'))
            .map(|(_, anchor)| anchor)
            .expect("an anchor");
        assert_eq!(
            url,
            format!("https://wiki.example.internal/loupe/runbooks#{anchor}")
        );
    }

    // The defaults in values.yaml are the plain file's thresholds.
    let docs = render(&["--set".into(), "prometheusRule.enabled=true".into()]);
    let shipped = one(&docs, "PrometheusRule")["spec"]["groups"].clone();
    let thresholds: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("dashboards/alerts/thresholds.rules.yaml"))
            .expect("read"),
    )
    .expect("parse");
    assert_eq!(shipped[0], thresholds["groups"][0]);

    // And Prometheus accepts the result.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.yaml");
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("groups".into(), shipped);
    std::fs::write(&path, serde_yaml::to_string(&doc).expect("yaml")).expect("write");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboards_datasources_and_alloy_are_the_repository_files() {
    let docs = render(&["--set".into(), EVERY_TOGGLE.into()]);
    let maps = kind(&docs, "ConfigMap");
    // Dashboards: one ConfigMap each, labelled for the Grafana sidecar, the file byte for byte.
    let mut shipped = BTreeSet::new();
    for cm in maps
        .iter()
        .filter(|c| !c["metadata"]["labels"]["grafana_dashboard"].is_null())
    {
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Loupe");
        let data = cm["data"].as_mapping().expect("data");
        assert_eq!(data.len(), 1);
        let (file, content) = data.iter().next().expect("one entry");
        let file = file.as_str().expect("key").to_string();
        let on_disk = std::fs::read_to_string(repo().join("dashboards/grafana").join(&file))
            .expect("the dashboard file");
        assert_eq!(
            content.as_str().map(str::trim_end),
            Some(on_disk.trim_end()),
            "{file}"
        );
        shipped.insert(file);
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo().join("dashboards/grafana"))
        .expect("dashboards")
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string()))
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(shipped, on_disk);

    // Datasources: the provisioning file, URLs from values.
    let ds = maps
        .iter()
        .find(|c| c["metadata"]["labels"]["grafana_datasource"] == "1")
        .expect("the datasources ConfigMap");
    let rendered: Value = serde_yaml::from_str(
        ds["data"]["loupe-datasources.yaml"]
            .as_str()
            .expect("content"),
    )
    .expect("parse");
    let file: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("dashboards/provisioning/datasources.yaml"))
            .expect("read"),
    )
    .expect("parse");
    assert_eq!(rendered, file, "with the default URLs, the file as it is");
    let docs = render(&[
        "--set".into(),
        "datasources.enabled=true,datasources.urls.tempo=http://tempo.tracing:3200".into(),
    ]);
    let text = kind(&docs, "ConfigMap")
        .into_iter()
        .find_map(|c| c["data"]["loupe-datasources.yaml"].as_str())
        .expect("datasources")
        .to_string();
    let rendered: Value = serde_yaml::from_str(&text).expect("parse");
    let tempo = rendered["datasources"]
        .as_sequence()
        .expect("list")
        .iter()
        .find(|d| d["type"] == "tempo")
        .expect("tempo");
    assert_eq!(tempo["url"], "http://tempo.tracing:3200");
    assert_eq!(
        tempo["jsonData"]["tracesToProfiles"]["datasourceUid"],
        "loupe-pyroscope"
    );
    // Grafana's `$$` escape of its own variables survives.
    assert!(text.contains("$${__value.raw}"), "{text}");

    // Alloy: the ConfigMap grafana/alloy's values name, holding config.alloy.
    let alloy = maps
        .iter()
        .find(|c| c["metadata"]["name"] == "loupe-alloy")
        .expect("loupe-alloy");
    let on_disk =
        std::fs::read_to_string(repo().join("collector/alloy/config.alloy")).expect("read");
    assert_eq!(
        alloy["data"]["config.alloy"].as_str().map(str::trim_end),
        Some(on_disk.trim_end())
    );
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("collector/alloy/values.yaml")).expect("read"),
    )
    .expect("parse");
    assert_eq!(values["alloy"]["configMap"]["name"], "loupe-alloy");
    assert_eq!(values["alloy"]["configMap"]["key"], "config.alloy");

    // Monitors select the agents' Service and relabel like Alloy: node only.
    let sm = one(&docs_with("serviceMonitor.enabled=true"), "ServiceMonitor").clone();
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        sm["spec"]["endpoints"][0]["relabelings"][0]["targetLabel"],
        "node"
    );
    let pm = one(&docs_with("podMonitor.enabled=true"), "PodMonitor").clone();
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
}

#[test]
fn notes_say_where_to_look_next() {
    let chart = chart().display().to_string();
    let out = helm(&[
        "install",
        "loupe",
        &chart,
        "--namespace",
        "monitoring",
        "--dry-run=client",
        "--set",
        "dashboards.enabled=true",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = text.split("NOTES:").nth(1).expect("NOTES rendered");
    for want in [
        "rollout status ds/loupe",
        "loupe-agent doctor",
        "alloy.monitoring.svc.cluster.local",
        "Loupe service health",
        "docs/eks.md",
        "securityContext.sysAdmin=true to have them",
    ] {
        assert!(notes.contains(want), "{want} missing from NOTES:\n{notes}");
    }
    // With SYS_ADMIN granted, the uprobe paragraph goes.
    let out = helm(&[
        "install",
        "loupe",
        &chart,
        "--dry-run=client",
        "--set",
        "securityContext.sysAdmin=true",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("no uprobes"),
        "{text}"
    );
}
