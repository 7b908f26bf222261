use std::time::Instant;

use super::checks::{Verdict, Window};
use super::profiles::pprof;
use super::verify::fault_param;
use super::*;
use crate::spans_read::Span;
use crate::util::root;

#[test]
fn exercises_match_their_docs() {
    let docs = root().join("docs").join("exercises");
    for e in EXERCISES {
        assert!(
            docs.join(format!("{}.md", e.name)).is_file(),
            "docs/exercises/{}.md is missing",
            e.name
        );
    }
}

#[test]
fn tail_assertions_are_skipped_only_when_overloaded() {
    let mut v = Verdict::default();
    v.check(true, "median".into());
    v.check_tail(false, "slowest".into());
    assert!(v.finish("test", Instant::now()).is_err());

    let mut v = Verdict {
        overloaded: Some("busy host".into()),
        ..Verdict::default()
    };
    v.check(true, "median".into());
    v.check_tail(false, "slowest".into());
    assert!(v.finish("test", Instant::now()).is_ok());

    let mut v = Verdict {
        overloaded: Some("busy host".into()),
        ..Verdict::default()
    };
    v.check(false, "median".into());
    assert!(v.finish("test", Instant::now()).is_err());
}

#[test]
fn fault_params_are_read() {
    assert_eq!(fault_param("ratio=0.3&status=500", "ratio"), Some(0.3));
    assert_eq!(fault_param("ratio=0.3&status=500", "status"), Some(500.0));
    assert_eq!(fault_param("mode=scan", "ms"), None);
    assert_eq!(fault_param("", "ms"), None);
}

#[test]
fn windows_keep_the_shops_own_work() {
    let span = |service: &str, kind: i64, start_ns: u64, attrs: &[(&str, &str)]| Span {
        service: service.to_string(),
        kind,
        start_ns,
        end_ns: start_ns + 1_000_000,
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Span::default()
    };
    let q = "SELECT id FROM users WHERE id = ?";
    let all = [
        span("user", 2, 10, &[("url.path", "/users/7")]),
        span("user", 2, 11, &[("url.path", "/admin/fault/cache-off")]),
        span("user", 2, 12, &[("url.path", "/healthz")]),
        span(
            "user",
            3,
            13,
            &[
                ("db.system.name", "mysql"),
                ("db.operation.name", "PREPARE"),
                ("db.query.text", q),
            ],
        ),
        span(
            "user",
            3,
            14,
            &[
                ("db.system.name", "mysql"),
                ("db.operation.name", "SELECT"),
                ("db.query.text", q),
            ],
        ),
        span(
            "user",
            3,
            15,
            &[
                ("db.system.name", "mysql"),
                ("db.operation.name", "RESET_CONNECTION"),
            ],
        ),
        span(
            "user",
            3,
            15,
            &[
                ("db.system.name", "mysql"),
                ("db.operation.name", "SELECT"),
                (
                    "db.query.text",
                    "SELECT @@max_allowed_packet,@@wait_timeout",
                ),
            ],
        ),
        span(
            "user",
            3,
            16,
            &[("db.system.name", "redis"), ("db.operation.name", "GET")],
        ),
        span(
            "frontend",
            3,
            17,
            &[
                ("server.port", "8084"),
                ("http.response.status_code", "500"),
            ],
        ),
        span("user", 2, 99, &[("url.path", "/users/8")]),
    ];
    let w = Window::new("test", &all, 10, 20);
    assert_eq!(w.server("user", "/").len(), 1);
    assert_eq!(
        w.db("user", "mysql").len(),
        1,
        "only the statement's EXECUTE"
    );
    assert_eq!(w.db("user", "redis").len(), 1);
    assert_eq!(w.http_client("frontend", 8084).len(), 1);
    assert_eq!(w.http_client("frontend", 8083).len(), 0);
}

#[test]
fn pprof_subset_reads_leaf_and_pid() {
    use prost::Message;
    let strings = [
        "",
        "samples",
        "count",
        "pid",
        "compute_discount_hot_loop",
        "spin",
        "main",
    ];
    let p = pprof::Profile {
        sample_type: vec![pprof::ValueType { r#type: 1, unit: 2 }],
        sample: vec![pprof::Sample {
            location_id: vec![1, 2],
            value: vec![7],
            label: vec![pprof::Label {
                key: 3,
                str: 0,
                num: 42,
            }],
        }],
        location: vec![
            pprof::Location {
                id: 1,
                line: vec![
                    pprof::Line { function_id: 2 },
                    pprof::Line { function_id: 1 },
                ],
            },
            pprof::Location {
                id: 2,
                line: vec![pprof::Line { function_id: 3 }],
            },
        ],
        function: vec![
            pprof::Function { id: 1, name: 4 },
            pprof::Function { id: 2, name: 5 },
            pprof::Function { id: 3, name: 6 },
        ],
        string_table: strings.iter().map(|s| s.to_string()).collect(),
    };
    let back = pprof::Profile::decode(&p.encode_to_vec()[..]).expect("round trip");
    assert_eq!(back.label_num(&back.sample[0], "pid"), Some(42));
    assert_eq!(
        back.frames(1),
        vec!["spin".to_string(), "compute_discount_hot_loop".to_string()]
    );
    assert_eq!(back.value_index(), 0);
}
