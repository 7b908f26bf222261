//! `cargo xtask dashboards-check`: every PromQL expression of every dashboard panel and every alert
//! rule, executed against real data. The demo shop runs under load (payment failing 30% of its
//! requests, so error series exist), beside a grpcio server and client (gRPC series, server
//! errors among them), with the agent watching the whole host; Debian's Prometheus
//! scrapes the agent, mysqld-exporter and redis-exporter (on the shop's MariaDB and Redis) and
//! evaluates `dashboards/alerts/*.rules.yaml`; then each expression goes through Prometheus's
//! HTTP API and must return at least one series.
//!
//! Alert expressions compare against a threshold and are empty on a healthy shop, so the check
//! runs the left-hand side of the top-level comparison (the series the alert watches) and, for
//! the whole rule, requires Prometheus to evaluate it without error (`/api/v1/rules` health).
//! Expressions over cAdvisor, kube-state-metrics or Tempo's metrics generator have no source on
//! one machine: they are [`NO_SOURCE_HERE`], listed by location, and the list is checked too.
//!
//! Labels mirror the cluster's: the agent's job is `loupe` with a `node` label, as the Alloy
//! pipeline and the chart's monitors relabel it (collector/alloy/config.alloy).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::stack::{
    Ports, Stack, StackOpts, agent_binary, build_shop, ensure_db_packages, install_stop_handler,
    target_dir,
};
use crate::util::{is_root, root};

#[derive(clap::Args, Debug)]
pub struct DashboardsCheckArgs {
    /// Seconds of load before the queries run (rate windows need a few scrapes).
    #[arg(long, default_value_t = 45)]
    pub seconds: u64,
    /// Keep target/dashboards-check (logs, Prometheus data) afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Locations whose expressions read series nothing on one machine produces, with the reason.
/// Each must exist and must name a metric of that source (see [`no_source_reason`]).
const NO_SOURCE_HERE: [(&str, &str); 7] = [
    (
        "loupe-service-health / CPU per pod (cAdvisor)",
        "cAdvisor (kubelet)",
    ),
    (
        "loupe-service-health / Memory per pod (cAdvisor)",
        "cAdvisor (kubelet)",
    ),
    (
        "loupe-service-health / Replicas vs desired (kube-state-metrics)",
        "kube-state-metrics",
    ),
    (
        "loupe-traces-profiles / Service graph request rate (metrics generator)",
        "Tempo's metrics generator",
    ),
    (
        "loupe-traces-profiles / Service graph failed requests",
        "Tempo's metrics generator",
    ),
    ("rule LoupePodCPUHigh", "cAdvisor (kubelet)"),
    ("rule LoupeReplicasBelowDesired", "kube-state-metrics"),
];

/// The source an expression needs that one machine lacks, by its metric names.
fn no_source_reason(expr: &str) -> Option<&'static str> {
    if expr.contains("container_") {
        Some("cAdvisor (kubelet)")
    } else if expr.contains("kube_") {
        Some("kube-state-metrics")
    } else if expr.contains("traces_service_graph_") {
        Some("Tempo's metrics generator")
    } else {
        None
    }
}

/// An expression, its series count or Prometheus's error, and the reason it may be empty here.
type Outcome = (Query, Result<usize, String>, Option<&'static str>);

/// One expression to run: where it comes from and the PromQL.
#[derive(Debug, Clone, PartialEq)]
struct Query {
    location: String,
    expr: String,
}

/// The Prometheus targets of every panel of a dashboard (`datasource` of type prometheus, on
/// the target or its panel, or the `${prometheus}` variable).
fn dashboard_queries(name: &str, dashboard: &serde_json::Value) -> Vec<Query> {
    fn is_prometheus(ds: &serde_json::Value) -> bool {
        ds.get("type").and_then(|t| t.as_str()) == Some("prometheus")
            || ds
                .get("uid")
                .and_then(|u| u.as_str())
                .is_some_and(|u| u.contains("prometheus"))
    }
    fn walk(name: &str, panels: &[serde_json::Value], out: &mut Vec<Query>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("untitled");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let ds = if target["datasource"].is_object() {
                    &target["datasource"]
                } else {
                    &panel["datasource"]
                };
                if let (true, Some(expr)) = (is_prometheus(ds), target["expr"].as_str()) {
                    out.push(Query {
                        location: format!("{name} / {title}"),
                        expr: expr.to_string(),
                    });
                }
            }
            if let Some(inner) = panel["panels"].as_array() {
                walk(name, inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        name,
        dashboard["panels"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
        &mut out,
    );
    out
}

/// Alert rules' expressions, by rule name.
fn rule_queries(rules: &serde_yaml::Value) -> Vec<Query> {
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            if let (Some(alert), Some(expr)) = (rule["alert"].as_str(), rule["expr"].as_str()) {
                out.push(Query {
                    location: format!("rule {alert}"),
                    expr: expr.trim().to_string(),
                });
            }
        }
    }
    out
}

/// Grafana's variables as the values a query runs with here: every selector variable matches
/// anything that exists, intervals are a minute.
fn substitute(expr: &str) -> String {
    let mut s = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval", "30s"),
        ("$__range", "5m"),
        ("${node}", ".+"),
        ("$node", ".+"),
        ("${service}", ".+"),
        ("$service", ".+"),
        ("${route}", ".+"),
        ("$route", ".+"),
    ] {
        s = s.replace(var, value);
    }
    s
}

/// The left-hand side of a top-level comparison (`a > on () b` gives `a`), or the expression.
/// Comparisons inside parentheses, braces, brackets or strings are left alone.
fn left_of_comparison(expr: &str) -> &str {
    let bytes = expr.as_bytes();
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), b'\\') => i += 1,
            (Some(_), _) => {}
            (None, b'"' | b'\'' | b'`') => quote = Some(c),
            (None, b'(' | b'{' | b'[') => depth += 1,
            (None, b')' | b'}' | b']') => depth -= 1,
            (None, b'>' | b'<') if depth == 0 => return expr[..i].trim(),
            (None, b'=' | b'!') if depth == 0 && bytes.get(i + 1) == Some(&b'=') => {
                return expr[..i].trim();
            }
            _ => {}
        }
        i += 1;
    }
    expr.trim()
}

/// `application/x-www-form-urlencoded` of a query.
fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `GET path` on Prometheus; the JSON body.
fn prometheus_get(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    // HTTP/1.0: the answer is the body up to the close, never chunked.
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("no HTTP header from Prometheus")?;
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "Prometheus answered chunked; expected a length"
    );
    serde_json::from_str(body).with_context(|| format!("Prometheus said: {}", body.trim()))
}

/// Series count of an instant query, or Prometheus's error.
fn series(addr: SocketAddr, expr: &str) -> Result<usize, String> {
    let v = prometheus_get(addr, &format!("/api/v1/query?query={}", form_encode(expr)))
        .map_err(|e| format!("{e:#}"))?;
    if v["status"] != "success" {
        return Err(v["error"].as_str().unwrap_or("no error text").to_string());
    }
    Ok(v["data"]["result"].as_array().map(Vec::len).unwrap_or(0))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn binary(name: &str) -> anyhow::Result<String> {
    let ok = Command::new(name)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ensure!(
        ok,
        "{name} is missing: `cargo xtask setup` installs it (Debian packages prometheus, \
         prometheus-mysqld-exporter, prometheus-redis-exporter)"
    );
    Ok(name.to_string())
}

/// A MySQL error and a Redis error seen by the agent, so that the client error panels have
/// series (the shop's own database calls do not fail).
fn database_errors(ports: &Ports) -> anyhow::Result<()> {
    let mariadb = super::stack::find_bin("mariadb")?;
    let _ = Command::new(mariadb)
        .args(["-h", "127.0.0.1", "-P", &ports.mysql.to_string()])
        .args(["-ushop", "-pshop", "-e", "SELECT * FROM shop.no_such_table"])
        .output()
        .context("running the mariadb client")?;
    let mut redis = TcpStream::connect(("127.0.0.1", ports.redis))?;
    redis.write_all(b"*1\r\n$13\r\nNO_SUCH_COMMAND\r\n")?;
    let mut reply = [0u8; 128];
    let _ = redis.read(&mut reply)?;
    Ok(())
}

pub fn dashboards_check(args: DashboardsCheckArgs) -> anyhow::Result<()> {
    ensure!(
        is_root(),
        "dashboards-check runs the agent, which needs root"
    );
    crate::build::build(crate::setup::Extras::Test)?;
    let prometheus = binary("prometheus")?;
    let mysqld_exporter = binary("prometheus-mysqld-exporter")?;
    let redis_exporter = binary("prometheus-redis-exporter")?;
    install_stop_handler();
    ensure_db_packages()?;
    let shop = build_shop(false)?;
    let started = Instant::now();

    let mut queries = Vec::new();
    let grafana = root().join("dashboards/grafana");
    let mut files: Vec<_> = fs::read_dir(&grafana)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in &files {
        let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(path)?)
            .with_context(|| format!("{}", path.display()))?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        queries.extend(dashboard_queries(name, &json));
    }
    let rules_dir = root().join("dashboards/alerts");
    let rule_files = ["loupe.rules.yaml", "thresholds.rules.yaml"].map(|f| rules_dir.join(f));
    let rules: serde_yaml::Value = serde_yaml::from_str(&fs::read_to_string(&rule_files[0])?)?;
    queries.extend(rule_queries(&rules));
    for (location, _) in NO_SOURCE_HERE {
        ensure!(
            queries.iter().any(|q| q.location == location),
            "NO_SOURCE_HERE names {location}, which no dashboard or rule has"
        );
    }

    let dir = target_dir().join("dashboards-check");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("logs"))?;
    let mut faults = BTreeMap::new();
    faults.insert("payment".to_string(), "error-burst?ratio=0.3".to_string());
    let opts = StackOpts {
        dir: dir.clone(),
        shop,
        ports: Ports::free()?,
        rps: 20.0,
        propagate: false,
        faults,
        reviews: 20_000,
        fresh: true,
        loadgen_to_terminal: false,
    };
    let mut stack = Stack::start_databases(&opts)?;
    let result = (|| -> anyhow::Result<Vec<Outcome>> {
        let gates = stack.spawn_services(&opts, true)?;
        let agent_port = free_port()?;
        let mut cmd = Command::new(agent_binary());
        cmd.arg("run")
            .arg("--output-dir")
            .arg(dir.join("loupe-data"))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{agent_port}"))
            .args(["--profile-interval", "10s"]);
        stack.start_agent(cmd, Some(dir.join("logs/agent.log")), true)?;
        drop(gates);
        stack.start_load(&opts)?;
        // gRPC traffic for the RPC panels and alert: the tests' grpcio server and a client
        // calling it in a loop (OK, NOT_FOUND, and DEADLINE_EXCEEDED, a server error).
        crate::python::ensure_test_env()?;
        let grpc_port = free_port()?;
        let workload = root().join("tests/workloads/grpc_pair.py");
        let mut cmd = Command::new(crate::python::python());
        cmd.arg(&workload)
            .args(["server", &grpc_port.to_string()])
            .env("OTEL_SERVICE_NAME", "inventory-grpc");
        stack.spawn(
            "grpc-server",
            cmd,
            Some(dir.join("logs/grpc-server.log")),
            true,
        )?;
        stack.wait_tcp("grpc-server", grpc_port, Duration::from_secs(60))?;
        let mut cmd = Command::new(crate::python::python());
        cmd.arg(&workload)
            .args(["client", &grpc_port.to_string(), "loop"])
            .env("OTEL_SERVICE_NAME", "frontend-grpc");
        stack.spawn(
            "grpc-client",
            cmd,
            Some(dir.join("logs/grpc-client.log")),
            true,
        )?;

        let (mysql_port, redis_port, prom_port) = (free_port()?, free_port()?, free_port()?);
        let my_cnf = dir.join("exporter.my.cnf");
        fs::write(
            &my_cnf,
            format!(
                "[client]\nuser=shop\npassword=shop\nhost=127.0.0.1\nport={}\n",
                opts.ports.mysql
            ),
        )?;
        let mut cmd = Command::new(&mysqld_exporter);
        cmd.arg(format!("--config.my-cnf={}", my_cnf.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{mysql_port}"));
        stack.spawn(
            "mysqld-exporter",
            cmd,
            Some(dir.join("logs/mysqld-exporter.log")),
            true,
        )?;
        let mut cmd = Command::new(&redis_exporter);
        cmd.arg(format!(
            "-redis.addr=redis://127.0.0.1:{}",
            opts.ports.redis
        ))
        .arg(format!("-web.listen-address=127.0.0.1:{redis_port}"));
        stack.spawn(
            "redis-exporter",
            cmd,
            Some(dir.join("logs/redis-exporter.log")),
            true,
        )?;

        let node = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let config = dir.join("prometheus.yml");
        write_prometheus_config(
            &config,
            &rule_files,
            &node,
            agent_port,
            mysql_port,
            redis_port,
        )?;
        let mut cmd = Command::new(&prometheus);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
        stack.spawn(
            "prometheus",
            cmd,
            Some(dir.join("logs/prometheus.log")),
            true,
        )?;
        stack.wait_tcp("prometheus", prom_port, Duration::from_secs(60))?;
        let addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse()?;

        println!(
            "dashboards-check: shop, agent, exporters and Prometheus up; {} s of load",
            args.seconds
        );
        database_errors(&opts.ports)?;
        stack.run_for(args.seconds / 2)?;
        database_errors(&opts.ports)?;
        stack.run_for(args.seconds - args.seconds / 2)?;

        // Every rule evaluates without error.
        let rules = prometheus_get(addr, "/api/v1/rules")?;
        let mut evaluated = 0;
        for group in rules["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let name = rule["name"].as_str().unwrap_or("?");
                ensure!(
                    rule["health"] == "ok",
                    "Prometheus cannot evaluate rule {name}: {}",
                    rule["lastError"]
                );
                evaluated += 1;
            }
        }
        ensure!(evaluated >= 10, "Prometheus loaded {evaluated} rules");

        let mut results = Vec::new();
        for q in &queries {
            let expr = substitute(left_of_comparison(&q.expr));
            let allowed = NO_SOURCE_HERE
                .iter()
                .find(|(location, _)| *location == q.location)
                .map(|(_, why)| *why);
            results.push((q.clone(), series(addr, &expr), allowed));
        }
        Ok(results)
    })();
    stack.stop();
    let results = result?;

    println!("{:<78} {:>7}  result", "location", "series");
    let mut failed = Vec::new();
    let (mut passed, mut excused) = (0, 0);
    for (q, outcome, allowed) in &results {
        let verdict = match (outcome, allowed) {
            (Ok(n), _) if *n > 0 => {
                passed += 1;
                "ok".to_string()
            }
            (Ok(_), Some(why)) if no_source_reason(&q.expr) == Some(*why) => {
                excused += 1;
                format!("no data: needs {why}, absent here")
            }
            (Ok(_), _) => {
                failed.push(q);
                "FAIL: no data".to_string()
            }
            (Err(e), _) => {
                failed.push(q);
                format!("FAIL: {e}")
            }
        };
        let count = outcome.as_ref().map(|n| n.to_string()).unwrap_or_default();
        println!("{:<78} {count:>7}  {verdict}", q.location);
    }
    println!(
        "dashboards-check: {} expressions, {passed} with data, {excused} without a source here, \
         {} failed ({:.0} s)",
        results.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!(
            "{} expressions returned no data or an error (logs in {}):\n{}",
            failed.len(),
            dir.display(),
            failed
                .iter()
                .map(|q| format!("  {}: {}", q.location, q.expr.replace('\n', " ")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if !args.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn write_prometheus_config(
    path: &Path,
    rule_files: &[std::path::PathBuf],
    node: &str,
    agent: u16,
    mysql: u16,
    redis: u16,
) -> anyhow::Result<()> {
    let rules = rule_files
        .iter()
        .map(|f| format!("  - {}\n", f.display()))
        .collect::<String>();
    fs::write(
        path,
        format!(
            "# Written by cargo xtask dashboards-check. The agent's job and node label are the\n\
             # ones the Alloy pipeline gives agents in a cluster.\n\
             global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
             rule_files:\n{rules}\
             scrape_configs:\n\
             \x20 - job_name: loupe\n    static_configs:\n      - targets: ['127.0.0.1:{agent}']\n        labels: {{node: '{node}'}}\n\
             \x20 - job_name: mysql\n    static_configs:\n      - targets: ['127.0.0.1:{mysql}']\n\
             \x20 - job_name: redis\n    static_configs:\n      - targets: ['127.0.0.1:{redis}']\n"
        ),
    )
    .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_left_side_of_a_top_level_comparison_is_what_an_alert_watches() {
        assert_eq!(left_of_comparison("mysql_up == 0"), "mysql_up");
        assert_eq!(
            left_of_comparison("(a / on (node) b > 0) > on () group_left () c"),
            "(a / on (node) b > 0)"
        );
        assert_eq!(
            left_of_comparison("sum(rate(x{code=~\"5..\",a!=\"\"}[5m])) > 0"),
            "sum(rate(x{code=~\"5..\",a!=\"\"}[5m]))"
        );
        assert_eq!(left_of_comparison("up{job=\"loupe\"}"), "up{job=\"loupe\"}");
        assert_eq!(left_of_comparison("a < b"), "a");
    }

    #[test]
    fn variables_become_values_that_match() {
        assert_eq!(
            substitute("rate(x{service_name=~\"$service\",node=~\"${node}\"}[$__rate_interval])"),
            "rate(x{service_name=~\".+\",node=~\".+\"}[1m])"
        );
    }

    #[test]
    fn panels_and_rows_give_their_prometheus_targets() {
        let d: serde_json::Value = serde_json::json!({"panels": [
            {"title": "A", "datasource": {"type": "prometheus", "uid": "${prometheus}"},
             "targets": [{"expr": "up"}]},
            {"title": "Row", "type": "row", "panels": [
                {"title": "B", "targets": [
                    {"datasource": {"type": "loki", "uid": "${loki}"}, "expr": "{a=\"b\"}"},
                    {"datasource": {"uid": "${prometheus}"}, "expr": "sum(x)"}]}]}]});
        assert_eq!(
            dashboard_queries("d", &d),
            vec![
                Query {
                    location: "d / A".into(),
                    expr: "up".into()
                },
                Query {
                    location: "d / B".into(),
                    expr: "sum(x)".into()
                },
            ]
        );
    }

    #[test]
    fn every_dashboard_and_rule_expression_is_found() {
        let mut n = 0;
        for f in [
            "loupe-agent-health",
            "loupe-service-health",
            "loupe-traces-profiles",
        ] {
            let path = root().join(format!("dashboards/grafana/{f}.json"));
            let json: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(path).expect("read")).expect("json");
            n += dashboard_queries(f, &json).len();
        }
        let rules: serde_yaml::Value = serde_yaml::from_str(
            &fs::read_to_string(root().join("dashboards/alerts/loupe.rules.yaml")).expect("read"),
        )
        .expect("yaml");
        let rules = rule_queries(&rules);
        assert!(n >= 30, "{n} panel expressions");
        assert!(rules.len() >= 10, "{} rules", rules.len());
        // The excused locations exist and each names a metric of the source it blames.
        for (location, why) in NO_SOURCE_HERE {
            let found = rules.iter().find(|q| q.location == location);
            if let Some(q) = found {
                assert_eq!(no_source_reason(&q.expr), Some(why), "{location}");
            }
        }
    }

    #[test]
    fn queries_are_form_encoded() {
        assert_eq!(form_encode("a{b=\"c\"} > 0"), "a%7Bb%3D%22c%22%7D+%3E+0");
    }
}
