//! Flame graph rendering: folded stacks (`service;root;…;leaf count`) fed to `inferno`.
//!
//! One SVG covers every service of a batch; the root frame of each stack is the service name, then
//! functions from root to leaf, inlined functions after the function they were inlined into.

use std::collections::HashMap;

use crate::profile::{ProfileBatch, UNKNOWN_FUNCTION};

/// Errors of flame graph rendering.
#[derive(Debug, thiserror::Error)]
pub enum FlamegraphError {
    /// The batch holds no samples, so there is nothing to draw.
    #[error("no samples to render in the flame graph")]
    Empty,
    /// inferno failed while writing the SVG.
    #[error("rendering the flame graph svg failed: {0}")]
    Render(#[source] std::io::Error),
}

/// The batch as folded stack lines, `service;root;…;leaf count`, merged and sorted.
///
/// `;` and line breaks inside names are replaced (they are the format's separators).
pub fn folded_lines(batch: &ProfileBatch) -> Vec<String> {
    let mut merged: HashMap<String, u64> = HashMap::new();
    let mut line = String::new();
    for profile in &batch.profiles {
        for sample in &profile.samples {
            if sample.count == 0 {
                continue;
            }
            line.clear();
            push_name(&mut line, &profile.service_name);
            if sample.frames.is_empty() {
                line.push(';');
                line.push_str(UNKNOWN_FUNCTION);
            }
            for frame in sample.frames.iter().rev() {
                if frame.lines.is_empty() {
                    line.push(';');
                    line.push_str(UNKNOWN_FUNCTION);
                }
                for l in frame.lines.iter().rev() {
                    line.push(';');
                    push_name(&mut line, &l.function);
                }
            }
            let total = merged.entry(line.clone()).or_insert(0);
            *total = total.saturating_add(sample.count);
        }
    }
    let mut out: Vec<String> = merged
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect();
    out.sort_unstable();
    out
}

/// Renders the batch as a flame graph SVG.
pub fn render_svg(batch: &ProfileBatch, title: &str) -> Result<Vec<u8>, FlamegraphError> {
    render_folded(&folded_lines(batch), title)
}

/// Renders folded stack lines (`root;…;leaf count`) as a flame graph SVG.
pub fn render_folded(lines: &[String], title: &str) -> Result<Vec<u8>, FlamegraphError> {
    if lines.is_empty() {
        return Err(FlamegraphError::Empty);
    }
    let mut options = inferno::flamegraph::Options::default();
    title.clone_into(&mut options.title);
    options.count_name = "samples".to_owned();
    // Same function, same colour: stable across intervals.
    options.hash = true;
    let mut svg = Vec::with_capacity(64 * 1024);
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .map_err(FlamegraphError::Render)?;
    Ok(svg)
}

fn push_name(out: &mut String, name: &str) {
    let name = name.trim();
    if name.is_empty() {
        out.push_str(UNKNOWN_FUNCTION);
        return;
    }
    out.extend(name.chars().map(|c| match c {
        ';' => ':',
        '\n' | '\r' | '\t' => ' ',
        c => c,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Frame, FrameLine, ServiceProfile, StackSample};

    fn frame(lines: &[&str]) -> Frame {
        Frame {
            address: 0,
            mapping: None,
            lines: lines.iter().map(|l| FrameLine::function(*l)).collect(),
        }
    }

    fn batch() -> ProfileBatch {
        ProfileBatch {
            start_unix_nanos: 0,
            duration_nanos: 1_000_000_000,
            period_nanos: 10_000_000,
            kind: Default::default(),
            profiles: vec![
                ServiceProfile {
                    service_name: "checkout".into(),
                    labels: vec![],
                    samples: vec![
                        StackSample {
                            pid: 1,
                            thread_name: "a".into(),
                            count: 3,
                            objects: 0,
                            // leaf first; `inlined_fn` inlined into `hot_fn`
                            frames: vec![frame(&["inlined_fn", "hot_fn"]), frame(&["main"])],
                            span: None,
                        },
                        StackSample {
                            pid: 1,
                            thread_name: "b".into(),
                            count: 2,
                            objects: 0,
                            frames: vec![frame(&["inlined_fn", "hot_fn"]), frame(&["main"])],
                            span: None,
                        },
                    ],
                },
                ServiceProfile {
                    service_name: "cart".into(),
                    labels: vec![],
                    samples: vec![StackSample {
                        pid: 2,
                        thread_name: "c".into(),
                        count: 1,
                        objects: 0,
                        frames: vec![frame(&["Vec<[u8; 8]>::push"]), frame(&[])],
                        span: None,
                    }],
                },
            ],
        }
    }

    #[test]
    fn folded_root_to_leaf_merged() {
        assert_eq!(
            folded_lines(&batch()),
            [
                "cart;[unknown];Vec<[u8: 8]>::push 1",
                "checkout;main;hot_fn;inlined_fn 5",
            ]
        );
    }

    #[test]
    fn svg_contains_services_and_functions() {
        let svg = String::from_utf8(render_svg(&batch(), "Loupe CPU").unwrap()).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..100]);
        for name in [
            "checkout",
            "cart",
            "main",
            "hot_fn",
            "inlined_fn",
            "Loupe CPU",
        ] {
            assert!(svg.contains(name), "svg lacks {name}");
        }
    }

    #[test]
    fn empty_batch_is_an_error() {
        assert!(matches!(
            render_svg(&ProfileBatch::default(), "x"),
            Err(FlamegraphError::Empty)
        ));
    }
}
