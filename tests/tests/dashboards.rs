//! Offline checks of `dashboards/`: the Grafana JSON, datasource provisioning, alert rules and
//! runbooks. promtool comes from `cargo xtask setup --test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

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
    assert_eq!(alerts, 10);
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
