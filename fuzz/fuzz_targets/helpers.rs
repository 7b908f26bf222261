//! Fuzzes the attribute helpers: SQL/Redis sanitizers, route inference, traceparent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe_protocols::{route, sanitize, traceparent};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let once = sanitize::sanitize_sql(&text);
    assert!(once.len() <= text.len() + 2);
    let _ = sanitize::sql_operation(&text);
    let args: Vec<&[u8]> = data.split(|&b| b == b' ').collect();
    let _ = sanitize::sanitize_redis(&text, &args);
    let r = route::infer_route(&text);
    assert_eq!(route::infer_route(&r), r);
    if let Ok(tp) = traceparent::parse(&text) {
        let again = traceparent::parse(&tp.format()).expect("formatted traceparent parses");
        assert_eq!(
            (again.trace_id, again.parent_id, again.flags),
            (tp.trace_id, tp.parent_id, tp.flags)
        );
    }
});
