//! Offline checks of `dashboards/`: the Grafana JSON, datasource provisioning, alert rules and
//! runbooks. promtool and Grafana's LogQL and TraceQL grammars (tests/tools, `LOUPE_NODE_TOOLS`)
//! come from `cargo xtask setup`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dashboards() -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards/grafana")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path, json));
        }
    }
    assert!(out.len() >= 3, "expected the three dashboards");
    out
}

/// Provisioned datasource uid by type.
fn provisioned() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(root().join("dashboards/provisioning/datasources.yaml")).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(yaml["apiVersion"].as_u64(), Some(1));
    yaml["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["type"].as_str().unwrap().to_string(),
                d["uid"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn promtool() -> &'static str {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => "promtool",
        _ => panic!("promtool not found on PATH: run `cargo xtask setup --test`"),
    }
}

#[test]
fn dashboards_parse_with_unique_uids_and_variable_datasources() {
    let provisioned = provisioned();
    let mut uids = BTreeSet::new();
    for (path, d) in dashboards() {
        let name = path.display();
        assert_eq!(d["schemaVersion"].as_u64(), Some(41), "{name}");
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: duplicate uid {uid}");
        // Datasource variables and the provisioned type each resolves to.
        let mut vars = BTreeMap::new();
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "datasource" {
                let ty = v["query"].as_str().unwrap();
                assert!(
                    provisioned.contains_key(ty),
                    "{name}: variable {} of type {ty} not provisioned",
                    v["name"]
                );
                vars.insert(
                    format!("${{{}}}", v["name"].as_str().unwrap()),
                    ty.to_string(),
                );
            }
        }
        let check = |ds: &serde_json::Value, what: &str| {
            let uid = ds["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {what} without datasource uid"));
            let ty = vars.get(uid).unwrap_or_else(|| {
                panic!("{name}: {what}: datasource {uid} is not a datasource variable")
            });
            assert_eq!(ds["type"].as_str(), Some(ty.as_str()), "{name}: {what}");
        };
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or("?");
            check(&p["datasource"], title);
            for t in p["targets"].as_array().unwrap() {
                check(&t["datasource"], title);
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                check(&v["datasource"], v["name"].as_str().unwrap());
            }
        }
    }
}

#[test]
fn dashboard_promql_passes_promtool() {
    let tool = promtool();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for (_, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                if let (Some("${prometheus}"), Some(expr)) =
                    (t["datasource"]["uid"].as_str(), t["expr"].as_str())
                {
                    let expr = expr
                        .replace("$__rate_interval", "5m")
                        .replace("$service", ".+")
                        .replace("$node", ".+")
                        .replace("$route", ".+");
                    rules.push_str(&format!(
                        "      - record: dashboard:expr{n}\n        expr: {}\n",
                        serde_json::to_string(&expr).unwrap()
                    ));
                    n += 1;
                }
            }
        }
    }
    assert!(n > 20, "{n} expressions");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboards.rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(tool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_check_and_unit_tests_pass() {
    let tool = promtool();
    let alerts = root().join("dashboards/alerts");
    for f in ["loupe.rules.yaml", "thresholds.rules.yaml"] {
        let text = std::fs::read_to_string(alerts.join(f)).unwrap();
        assert!(
            text.starts_with("groups:"),
            "{f} must start with `groups:` at column 0"
        );
    }
    let out = Command::new(tool)
        .args([
            "check",
            "rules",
            "loupe.rules.yaml",
            "thresholds.rules.yaml",
        ])
        .current_dir(&alerts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(tool)
        .args(["test", "rules", "alerts.test.yaml"])
        .current_dir(alerts.join("tests"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn runbook_anchors_exist_and_links_name_provisioned_uids() {
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase().replace(' ', "-"))
        .collect();
    let rules = std::fs::read_to_string(root().join("dashboards/alerts/loupe.rules.yaml")).unwrap();
    let mut alerts = 0;
    for line in rules.lines() {
        if line.trim_start().starts_with("- alert:") {
            alerts += 1;
        }
        if let Some((_, anchor)) = line.split_once("runbooks.md#") {
            assert!(
                anchors.contains(anchor.trim()),
                "no runbook section for #{anchor}"
            );
        }
    }
    assert_eq!(alerts, 13);
    let uids: BTreeSet<String> = provisioned().into_values().collect();
    let ds =
        std::fs::read_to_string(root().join("dashboards/provisioning/datasources.yaml")).unwrap();
    for line in ds.lines() {
        if let Some((_, uid)) = line.split_once("datasourceUid:") {
            assert!(
                uids.contains(uid.trim()),
                "datasourceUid {uid} not provisioned"
            );
        }
    }
}

/// tests/tools with Grafana's grammars in node_modules: `LOUPE_NODE_TOOLS`, else the repository's.
fn node_tools() -> PathBuf {
    let dir = std::env::var_os("LOUPE_NODE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/tools"));
    for grammar in ["@grafana/lezer-logql", "@grafana/lezer-traceql"] {
        assert!(
            dir.join("node_modules").join(grammar).exists(),
            "{}: node_modules/{grammar} is missing: run cargo xtask test / cargo xtask setup",
            dir.display()
        );
    }
    dir
}

/// A LogQL or TraceQL expression and where it comes from.
struct Query {
    lang: &'static str,
    expr: String,
    place: String,
}

/// Runs tests/tools/check-queries.mjs on `queries`: whether all parsed, and its report.
fn check_queries(queries: &[Query]) -> (bool, String) {
    let dir = node_tools();
    let mut child = Command::new("node")
        .arg(dir.join("check-queries.mjs"))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (cargo xtask setup installs it): {e}"));
    let mut input = String::new();
    for q in queries {
        let line = serde_json::json!({"lang": q.lang, "expr": q.expr, "where": q.place});
        input.push_str(&line.to_string());
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Panels, including those inside collapsed rows.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Loki targets' `expr` (LogQL) and Tempo targets' `query` when their query type is TraceQL.
fn dashboard_queries() -> Vec<Query> {
    let mut out = Vec::new();
    for (path, d) in dashboards() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("?");
            for (i, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
                let place = format!("{file}: panel {title:?} target {i}");
                match t["datasource"]["type"].as_str() {
                    Some("loki") => out.push(Query {
                        lang: "logql",
                        expr: t["expr"]
                            .as_str()
                            .unwrap_or_else(|| panic!("{place}: Loki target without expr"))
                            .to_string(),
                        place,
                    }),
                    Some("tempo") if t["queryType"] == "traceql" => out.push(Query {
                        lang: "traceql",
                        expr: t["query"]
                            .as_str()
                            .unwrap_or_else(|| panic!("{place}: TraceQL target without query"))
                            .to_string(),
                        place,
                    }),
                    _ => {}
                }
            }
        }
    }
    out
}

/// A string of provisioning's `jsonData` as Grafana reads it: it expands environment variables
/// (`$NAME`, `${NAME}`) in every string and turns `$$` into `$`, so a Grafana variable such as
/// `${__span.spanId}` must be written `$${__span.spanId}` or it becomes an empty string.
fn provisioned_string(s: &str, place: &str) -> String {
    let parts: Vec<&str> = s.split("$$").collect();
    for part in &parts {
        assert!(
            !part.contains('$'),
            "{place}: {s:?}: Grafana's provisioning expands `$` as an environment variable; write `$$` for a literal `$`"
        );
    }
    parts.join("$")
}

/// Every string under each datasource's `jsonData`, with its path.
fn json_data_strings(v: &serde_yaml::Value, path: String, out: &mut Vec<(String, String)>) {
    match v {
        serde_yaml::Value::String(s) => out.push((path, s.clone())),
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                json_data_strings(item, format!("{path}[{i}]"), out);
            }
        }
        serde_yaml::Value::Mapping(m) => {
            for (k, item) in m {
                let key = k.as_str().unwrap_or("?");
                json_data_strings(item, format!("{path}.{key}"), out);
            }
        }
        _ => {}
    }
}

fn datasources_yaml() -> serde_yaml::Value {
    let text =
        std::fs::read_to_string(root().join("dashboards/provisioning/datasources.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// The custom queries of the Tempo datasource's links: trace to logs (LogQL) and trace to
/// profiles (a Pyroscope label selector: the matcher syntax of a LogQL stream selector, checked
/// with the LogQL grammar).
fn provisioning_queries() -> Vec<Query> {
    let mut out = Vec::new();
    for ds in datasources_yaml()["datasources"].as_sequence().unwrap() {
        let name = ds["name"].as_str().unwrap();
        let json = &ds["jsonData"];
        for (link, lang) in [("tracesToLogsV2", "logql"), ("tracesToProfiles", "logql")] {
            let config = &json[link];
            if config["customQuery"].as_bool() == Some(true) {
                let place = format!("datasources.yaml: {name} jsonData.{link}.query");
                let raw = config["query"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{place}: customQuery without query"));
                out.push(Query {
                    lang,
                    expr: provisioned_string(raw, &place),
                    place,
                });
            }
        }
        assert!(
            json["tracesToMetrics"]["queries"].is_null(),
            "datasources.yaml: {name}: tracesToMetrics queries (PromQL) are not checked yet: add them to dashboard_promql_passes_promtool"
        );
    }
    out
}

#[test]
fn provisioning_escapes_dollar_signs_from_environment_expansion() {
    let mut n = 0;
    for ds in datasources_yaml()["datasources"].as_sequence().unwrap() {
        let mut strings = Vec::new();
        json_data_strings(
            &ds["jsonData"],
            format!("{}.jsonData", ds["name"].as_str().unwrap()),
            &mut strings,
        );
        for (place, s) in strings {
            provisioned_string(&s, &place);
            n += 1;
        }
    }
    assert!(n >= 10, "{n} strings under jsonData");
}

#[test]
fn loki_and_tempo_queries_parse_with_grafana_grammars() {
    let dashboards = dashboard_queries();
    let provisioning = provisioning_queries();
    let count = |lang| dashboards.iter().filter(|q| q.lang == lang).count();
    // The service health and traces dashboards' log panels, the traces dashboard's two trace
    // tables, the trace-to-profiles query: fewer means the queries are no longer found.
    assert!(
        count("logql") >= 2,
        "{} LogQL queries found",
        count("logql")
    );
    assert!(
        count("traceql") >= 2,
        "{} TraceQL queries found",
        count("traceql")
    );
    assert!(
        !provisioning.is_empty(),
        "no custom query found in datasources.yaml"
    );
    let all: Vec<Query> = dashboards.into_iter().chain(provisioning).collect();
    let (ok, report) = check_queries(&all);
    assert!(ok, "{report}");
    eprintln!("{}", report.trim());
    assert!(
        report.contains(&format!("{} expressions checked, 0 failed", all.len())),
        "{report}"
    );
}

#[test]
fn query_check_reports_broken_logql_and_traceql() {
    let query = |lang, expr: &str, place: &str| Query {
        lang,
        expr: expr.to_string(),
        place: place.to_string(),
    };
    let queries = [
        query(
            "logql",
            r#"{service_name=~"$service"} |= "x""#,
            "good LogQL",
        ),
        // A line filter without its string.
        query("logql", r#"{service_name=~"$service"} |= "#, "broken LogQL"),
        query(
            "traceql",
            r#"{ resource.service.name = "$service" && duration > 500ms }"#,
            "good TraceQL",
        ),
        // A comparison without its right-hand side.
        query(
            "traceql",
            "{ span.http.response.status_code >= }",
            "broken TraceQL",
        ),
    ];
    let (ok, report) = check_queries(&queries);
    assert!(!ok, "the broken expressions passed:\n{report}");
    assert!(report.contains("FAIL broken LogQL"), "{report}");
    assert!(report.contains("FAIL broken TraceQL"), "{report}");
    assert!(!report.contains("FAIL good"), "{report}");
    assert!(
        report.contains("4 expressions checked, 2 failed"),
        "{report}"
    );
}
