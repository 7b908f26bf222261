//! `loupe-agent flamegraph`: the flame graph of one span, or of every span of one name (a
//! route), cut out of the local sink's pprof files by their `span_id` / `span_name` sample
//! labels. Works on the files alone: no kernel, no running agent.

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::Args;
use loupe_collector::profile::ProfileKind;
use loupe_collector::proto::google::Profile;

/// Which spans to draw.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct FlamegraphArgs {
    /// The span to draw: its id, 16 hex digits (the span's `pyroscope.profile.id`).
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "span_name",
        conflicts_with = "span_name"
    )]
    pub span_id: Option<String>,
    /// Every span of this name, e.g. `GET /users/{id}`.
    #[arg(long, value_name = "NAME")]
    pub span_name: Option<String>,
    /// Where to write the SVG [default: OUTPUT_DIR/spans/<span id or name>.svg].
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Writes the SVG; returns its path and the number of samples drawn.
pub fn run(args: &FlamegraphArgs, output_dir: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let (key, value) = match (&args.span_id, &args.span_name) {
        (Some(id), _) => {
            let id = id.trim().to_ascii_lowercase();
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("--span-id {id:?}: a span id is 16 hex digits");
            }
            ("span_id", id)
        }
        (None, Some(name)) => ("span_name", name.clone()),
        (None, None) => bail!("give --span-id or --span-name"),
    };
    let dir = output_dir.join("profiles");
    let entries = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {} (the local sink's profiles)", dir.display()))?;
    let mut folded: HashMap<String, u64> = HashMap::new();
    let mut files = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(service) = service_of(&name) else {
            continue;
        };
        let profile = read_profile(&entry.path())
            .with_context(|| format!("cannot read {}", entry.path().display()))?;
        files += 1;
        for (stack, n) in loupe_collector::pprof::folded_with_label(&profile, service, key, &value)
        {
            *folded.entry(stack).or_insert(0) += n;
        }
    }
    let total: u64 = folded.values().sum();
    if total == 0 {
        bail!(
            "no sample with {key} = {value:?} in the {files} profile file(s) of {}",
            dir.display()
        );
    }
    let mut lines: Vec<String> = folded.iter().map(|(s, n)| format!("{s} {n}")).collect();
    lines.sort_unstable();
    let title = format!("{key} {value}: {total} samples");
    let svg = loupe_collector::flamegraph::render_folded(&lines, &title)?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => output_dir
            .join("spans")
            .join(format!("{}.svg", file_stem(&value))),
    };
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&out, svg).with_context(|| format!("cannot write {}", out.display()))?;
    Ok((out, total))
}

/// `checkout-1700000000.pb.gz` → `checkout`; `None` for other kinds' files
/// (`checkout.off_cpu-…`, `checkout.page_faults-…`), whose values are not CPU samples.
fn service_of(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".pb.gz")?;
    let (service, time) = stem.rsplit_once('-')?;
    let other_kind = ProfileKind::ALL
        .iter()
        .any(|k| !k.file_tag().is_empty() && service.ends_with(k.file_tag()));
    if other_kind {
        return None;
    }
    time.bytes().all(|b| b.is_ascii_digit()).then_some(service)
}

/// A file name made of the value: anything but letters, digits, `-`, `_` and `.` becomes `_`.
fn file_stem(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

fn read_profile(path: &Path) -> anyhow::Result<Profile> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_end(&mut raw)?;
    Ok(<Profile as prost::Message>::decode(raw.as_slice())?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use loupe_collector::profile::{
        BatchMeta, Frame, FrameLine, ServiceProfile, SpanLabel, StackSample,
    };

    use super::*;

    fn sample(count: u64, leaf: &str, span: Option<Arc<SpanLabel>>) -> StackSample {
        StackSample {
            pid: 1,
            thread_name: "t".into(),
            count,
            objects: 0,
            frames: [leaf, "main"]
                .iter()
                .map(|f| Frame {
                    address: 1,
                    mapping: None,
                    lines: vec![FrameLine::function(*f)].into(),
                })
                .collect(),
            span,
        }
    }

    #[test]
    fn only_cpu_profile_files_name_a_service() {
        assert_eq!(service_of("checkout-1700000000.pb.gz"), Some("checkout"));
        assert_eq!(service_of("shop.api-1700000000.pb.gz"), Some("shop.api"));
        assert_eq!(service_of("checkout.off_cpu-1700000000.pb.gz"), None);
        assert_eq!(service_of("checkout.page_faults-1700000000.pb.gz"), None);
        assert_eq!(service_of("checkout-latest.pb.gz"), None);
    }

    #[test]
    fn draws_one_span_or_one_route_from_the_pprof_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
        let span = |id: u8| {
            Arc::new(SpanLabel {
                trace_id: [id; 16],
                span_id: [id; 8],
                name: "GET /work".into(),
            })
        };
        for (t, samples) in [
            (
                100,
                vec![
                    sample(5, "loupe_hot_fn", Some(span(1))),
                    sample(7, "loupe_idle_fn", None),
                ],
            ),
            (
                115,
                vec![
                    sample(3, "loupe_hot_fn", Some(span(1))),
                    sample(2, "loupe_other_fn", Some(span(2))),
                ],
            ),
        ] {
            let profile = ServiceProfile {
                service_name: "shop".into(),
                labels: vec![],
                samples,
            };
            let meta = BatchMeta {
                start_unix_nanos: t * 1_000_000_000,
                duration_nanos: 15_000_000_000,
                period_nanos: 10_000_000,
                kind: Default::default(),
            };
            let gz =
                loupe_collector::pprof::encode_gzip(&loupe_collector::pprof::build(meta, &profile))
                    .unwrap();
            std::fs::write(dir.path().join(format!("profiles/shop-{t}.pb.gz")), gz).unwrap();
        }
        let args = FlamegraphArgs {
            span_id: Some("0101010101010101".into()),
            span_name: None,
            out: None,
        };
        let (path, n) = run(&args, dir.path()).unwrap();
        assert_eq!(n, 8, "the span's samples across both intervals");
        assert_eq!(path, dir.path().join("spans/0101010101010101.svg"));
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.contains("loupe_hot_fn")
                && !svg.contains("loupe_idle_fn")
                && !svg.contains("loupe_other_fn")
        );

        let by_name = FlamegraphArgs {
            span_id: None,
            span_name: Some("GET /work".into()),
            out: Some(dir.path().join("route.svg")),
        };
        assert_eq!(run(&by_name, dir.path()).unwrap().1, 10);

        let missing = FlamegraphArgs {
            span_id: Some("ffffffffffffffff".into()),
            span_name: None,
            out: None,
        };
        let err = run(&missing, dir.path()).unwrap_err().to_string();
        assert!(err.contains("no sample with span_id"), "{err}");
        let bad = FlamegraphArgs {
            span_id: Some("xyz".into()),
            span_name: None,
            out: None,
        };
        assert!(run(&bad, dir.path()).is_err());
    }
}
