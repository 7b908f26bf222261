//! Rendering the chart with the real helm and reading what it rendered: the tools' paths, the
//! scenarios every test renders (defaults and every toggle), and lookups in the documents.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize as _;
use serde_yaml::Value;

pub(crate) const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.33.0"];

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub(crate) fn tool(env: &str, fallback: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(fallback));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup` (or `cargo xtask test`), which installs it, or set {env}",
        path.display()
    );
    path
}

pub(crate) fn helm_bin() -> PathBuf {
    tool("LOUPE_HELM", "target/tools/bin/helm")
}

pub(crate) fn kubernetes_validate() -> PathBuf {
    tool(
        "LOUPE_KUBERNETES_VALIDATE",
        "target/pyenv/bin/kubernetes-validate",
    )
}

pub(crate) fn chart() -> PathBuf {
    repo().join("helm/loupe")
}

pub(crate) fn helm(args: &[&str]) -> Output {
    Command::new(helm_bin())
        .args(args)
        // No repositories, caches or plugins of the developer's own.
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("loupe-helm-config"),
        )
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("loupe-helm-cache"),
        )
        .output()
        .expect("run helm")
}

/// `--set` lists of the scenarios every test renders.
pub(crate) const EVERY_TOGGLE: &str = "dashboards.enabled=true,datasources.enabled=true,alloy.enabled=true,\
     prometheusRule.enabled=true,serviceMonitor.enabled=true,agent.publishTraceContext=true,\
     securityContext.sysResource=true,securityContext.sysAdmin=true";

pub(crate) fn scenarios() -> Vec<(&'static str, Vec<String>)> {
    let f = |rel: &str| chart().join(rel).display().to_string();
    vec![
        ("defaults", vec![]),
        ("every toggle", vec!["--set".into(), EVERY_TOGGLE.into()]),
        (
            "pod monitor",
            vec!["--set".into(), "podMonitor.enabled=true".into()],
        ),
        (
            "non-root",
            vec!["--set".into(), "securityContext.runAsUser=65534".into()],
        ),
        (
            "direct exporters with credentials",
            vec![
                "--set".into(),
                "exporters.mode=direct,\
                 exporters.direct.otlpEndpoint=http://tempo.monitoring:4317,\
                 exporters.direct.lokiUrl=http://loki-gateway.monitoring,\
                 exporters.direct.pyroscopeUrl=http://pyroscope.monitoring:4040,\
                 exporters.loki.tenant=shop,exporters.loki.user=loupe,\
                 exporters.loki.passwordSecret.name=loki-auth,exporters.loki.passwordSecret.key=password,\
                 exporters.pyroscope.tokenSecret.name=pyro-auth,exporters.pyroscope.tokenSecret.key=token,\
                 exporters.otlp.tenant=shop,\
                 exporters.otlp.tokenSecret.name=tempo-auth,exporters.otlp.tokenSecret.key=token"
                    .into(),
            ],
        ),
        (
            "no backend",
            vec!["--set".into(), "exporters.mode=none".into()],
        ),
        (
            "no spool",
            vec!["--set".into(), "agent.spool.enabled=false".into()],
        ),
        (
            "debuginfod",
            vec![
                "--set".into(),
                "agent.debuginfod.url=https://debuginfod.debian.net,agent.debuginfod.cacheSize=1Gi"
                    .into(),
            ],
        ),
        (
            "direct over TLS with a private CA",
            vec![
                "--set".into(),
                "exporters.mode=direct,\
                 exporters.direct.otlpEndpoint=https://tempo.monitoring:4317,\
                 exporters.direct.lokiUrl=https://loki-gateway.monitoring,\
                 exporters.otlp.tls.caSecret.name=observability-ca,exporters.otlp.tls.caSecret.key=ca.crt,\
                 exporters.otlp.tls.clientCertSecret.name=loupe-client-tls,\
                 exporters.otlp.tls.serverName=tempo.internal,\
                 exporters.loki.tls.caSecret.name=observability-ca,exporters.loki.tls.caSecret.key=ca.crt"
                    .into(),
            ],
        ),
        (
            "trace context from the VPC only",
            vec![
                "--set-json".into(),
                r#"agent.tcpContext.trustedCidrs=["10.0.0.0/16","fd00::/8"]"#.into(),
                "--set".into(),
                "agent.linkSameHost=false".into(),
            ],
        ),
        ("AL2023", vec!["-f".into(), f("values-al2023.yaml")]),
        ("Bottlerocket", vec!["-f".into(), f("values-bottlerocket.yaml")]),
        (
            "privileged",
            vec!["--set".into(), "securityContext.privileged=true".into()],
        ),
    ]
}

/// `helm template` of the chart with `extra` arguments, as text; panics with helm's message.
pub(crate) fn render_text(extra: &[String]) -> String {
    let chart = chart().display().to_string();
    let mut args = vec!["template", "loupe", &chart, "--namespace", "monitoring"];
    args.extend(extra.iter().map(String::as_str));
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

pub(crate) fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn render(extra: &[String]) -> Vec<Value> {
    documents(&render_text(extra))
}

pub(crate) fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub(crate) fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = kind(docs, k);
    assert_eq!(found.len(), 1, "expected one {k}");
    found[0]
}

pub(crate) fn agent_container(docs: &[Value]) -> &Value {
    let ds = one(docs, "DaemonSet");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1);
    &containers[0]
}

pub(crate) fn strings(v: &Value) -> BTreeSet<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn documented_capabilities() -> BTreeSet<String> {
    loupe_tests::chart_capabilities().into_iter().collect()
}

pub(crate) fn config_toml(docs: &[Value]) -> String {
    kind(docs, "ConfigMap")
        .into_iter()
        .find_map(|c| c["data"]["loupe.toml"].as_str())
        .expect("the agent's ConfigMap")
        .to_string()
}

pub(crate) fn docs_with(set: &str) -> Vec<Value> {
    render(&["--set".into(), set.into()])
}
