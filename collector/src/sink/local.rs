//! The local sink: gzip pprof files per service and interval, one flame graph SVG of the latest
//! interval, and a one-line summary logged per interval.
//!
//! Layout under the configured directory:
//! - `profiles/<service>-<unix_secs>.pb.gz`, at most N per service (oldest deleted first);
//! - `flamegraph.svg`, all services of the latest interval with samples.
//!
//! Every file is written to a hidden temporary name in the same directory and renamed into place,
//! so readers never see a partial file. File I/O runs on tokio's blocking pool.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::{BoxFuture, ExportReport};
use crate::export::Sink;
use crate::flamegraph::{self, FlamegraphError};
use crate::pprof::{self, PprofError};
use crate::profile::{ProfileBatch, ProfileKind};
use crate::telemetry::{Counter, Registry};

/// Profile files kept per service unless configured otherwise.
pub const DEFAULT_MAX_FILES_PER_SERVICE: usize = 200;
/// Name of the profiles subdirectory.
pub const PROFILES_DIR: &str = "profiles";
/// Name of the flame graph file.
pub const FLAMEGRAPH_FILE: &str = "flamegraph.svg";
/// The off-CPU flame graph of the last interval, beside the CPU one.
pub const OFF_CPU_FLAMEGRAPH_FILE: &str = "flamegraph.off_cpu.svg";
/// The page-fault flame graph's file name.
pub const PAGE_FAULTS_FLAMEGRAPH_FILE: &str = "flamegraph.page_faults.svg";
/// The allocation flame graph's file name.
pub const ALLOC_FLAMEGRAPH_FILE: &str = "flamegraph.alloc.svg";
/// The in-use memory flame graph's file name.
pub const INUSE_FLAMEGRAPH_FILE: &str = "flamegraph.inuse.svg";
const PROFILE_SUFFIX: &str = ".pb.gz";
const MAX_FILE_STEM: usize = 100;

/// Errors of the local sink.
#[derive(Debug, thiserror::Error)]
pub enum LocalSinkError {
    /// A directory could not be created.
    #[error("creating directory {} failed: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written (the directory is likely not writable).
    #[error("writing {} failed: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The profile of a service could not be encoded.
    #[error("encoding the profile of service {service} failed: {source}")]
    Encode {
        /// The service.
        service: String,
        /// The encoding error.
        #[source]
        source: PprofError,
    },
    /// The flame graph could not be rendered.
    #[error("rendering {} failed: {source}", path.display())]
    Flamegraph {
        /// The SVG file.
        path: PathBuf,
        /// The rendering error.
        #[source]
        source: FlamegraphError,
    },
    /// The blocking write task panicked or was cancelled.
    #[error("the local sink's write task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Writes profiles and the flame graph under a directory.
#[derive(Debug)]
pub struct LocalSink {
    dir: PathBuf,
    max_files_per_service: usize,
    state: Arc<Mutex<FileIndex>>,
    pruned_files: Counter,
}

impl LocalSink {
    /// Creates `dir/profiles` if needed and checks that it is writable.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, LocalSinkError> {
        let dir = dir.into();
        let profiles = dir.join(PROFILES_DIR);
        create_dir(&profiles)?;
        let probe = profiles.join(".loupe-write-test");
        fs::write(&probe, b"").map_err(|source| LocalSinkError::Write {
            path: probe.clone(),
            source,
        })?;
        let _ = fs::remove_file(&probe);
        Ok(Self {
            dir,
            max_files_per_service: DEFAULT_MAX_FILES_PER_SERVICE,
            state: Arc::default(),
            pruned_files: Counter::default(),
        })
    }

    /// Keeps at most `n` (at least 1) profile files per service, deleting the oldest.
    #[must_use]
    pub fn with_max_files_per_service(mut self, n: usize) -> Self {
        self.max_files_per_service = n.max(1);
        self
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Profile files deleted so far to honour the per-service cap.
    pub fn pruned_files(&self) -> u64 {
        self.pruned_files.get()
    }
}

impl Sink<ProfileBatch> for LocalSink {
    fn name(&self) -> &str {
        "local"
    }

    fn register_metrics(&mut self, registry: &Registry) {
        let counter = registry.counter(
            "loupe_local_sink_pruned_files_total",
            "Profile files deleted by the local sink to honour the per-service cap.",
            &[],
        );
        counter.add(self.pruned_files.get());
        self.pruned_files = counter;
    }

    fn export(&self, batch: Arc<ProfileBatch>) -> BoxFuture<'_, ExportReport> {
        let job = WriteJob {
            dir: self.dir.clone(),
            max_files: self.max_files_per_service,
            state: self.state.clone(),
            pruned_files: self.pruned_files.clone(),
        };
        Box::pin(async move {
            let profiles = batch.profiles.len() as u64;
            match tokio::task::spawn_blocking(move || job.run(&batch)).await {
                Ok(report) => report,
                Err(e) => ExportReport {
                    items_failed: profiles,
                    errors: vec![LocalSinkError::Task(e).into()],
                    ..ExportReport::default()
                },
            }
        })
    }
}

/// Profile files known per (sanitized) service, oldest first.
#[derive(Debug, Default)]
struct FileIndex {
    scanned: bool,
    files: HashMap<String, Vec<(i64, PathBuf)>>,
}

struct WriteJob {
    dir: PathBuf,
    max_files: usize,
    state: Arc<Mutex<FileIndex>>,
    pruned_files: Counter,
}

impl WriteJob {
    fn run(&self, batch: &ProfileBatch) -> ExportReport {
        let mut report = ExportReport::default();
        // Every CPU interval is logged (it says the profiler is alive); an empty interval of
        // another kind (page faults are on by default) only at debug level.
        if batch.kind == ProfileKind::Cpu || batch.total_samples() > 0 {
            tracing::info!("{}", summary(batch));
        } else {
            tracing::debug!("{}", summary(batch));
        }
        let profiles_dir = self.dir.join(PROFILES_DIR);
        if let Err(e) = create_dir(&profiles_dir) {
            report.items_failed = batch.profiles.len() as u64;
            report.errors.push(e.into());
            return report;
        }
        let mut index = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !index.scanned {
            index.files = scan(&profiles_dir);
            index.scanned = true;
        }
        let secs = batch.start_unix_secs();
        for profile in &batch.profiles {
            if profile.total_samples() == 0 {
                continue;
            }
            // `checkout.off_cpu-<secs>.pb.gz`: pruned apart from the CPU files.
            let stem = format!(
                "{}{}",
                sanitize_file_stem(&profile.service_name),
                batch.kind.file_tag()
            );
            let path = profiles_dir.join(format!("{stem}-{secs}{PROFILE_SUFFIX}"));
            let bytes = match pprof::encode_gzip(&pprof::build(batch.meta(), profile)) {
                Ok(b) => b,
                Err(source) => {
                    report.items_failed += 1;
                    report.errors.push(
                        LocalSinkError::Encode {
                            service: profile.service_name.clone(),
                            source,
                        }
                        .into(),
                    );
                    continue;
                }
            };
            if let Err(e) = write_atomically(&path, &bytes) {
                report.items_failed += 1;
                report.errors.push(e.into());
                continue;
            }
            report.items_exported += 1;
            report.bytes_sent += bytes.len() as u64;
            let files = index.files.entry(stem).or_default();
            if !files.iter().any(|(_, p)| *p == path) {
                let at = files.partition_point(|(s, p)| (*s, p) < (secs, &path));
                files.insert(at, (secs, path));
            }
            let excess = files.len().saturating_sub(self.max_files);
            for (_, old) in files.drain(..excess) {
                match fs::remove_file(&old) {
                    Ok(()) => self.pruned_files.inc(),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %old.display(), error = %e, "deleting an old profile failed")
                    }
                }
            }
        }
        drop(index);

        let svg_path = self.dir.join(match batch.kind {
            ProfileKind::Cpu => FLAMEGRAPH_FILE,
            ProfileKind::OffCpu => OFF_CPU_FLAMEGRAPH_FILE,
            ProfileKind::PageFaults => PAGE_FAULTS_FLAMEGRAPH_FILE,
            ProfileKind::Alloc => ALLOC_FLAMEGRAPH_FILE,
            ProfileKind::InUse => INUSE_FLAMEGRAPH_FILE,
        });
        match flamegraph::render_svg(batch, &flamegraph_title(batch)) {
            Ok(svg) => {
                if let Err(e) = write_atomically(&svg_path, &svg) {
                    report.errors.push(e.into());
                } else {
                    report.bytes_sent += svg.len() as u64;
                }
            }
            Err(FlamegraphError::Empty) => {}
            Err(source) => report.errors.push(
                LocalSinkError::Flamegraph {
                    path: svg_path,
                    source,
                }
                .into(),
            ),
        }
        report
    }
}

/// One line per interval: time, samples, services, and the function with the most self samples.
pub fn summary(batch: &ProfileBatch) -> String {
    let total = batch.total_samples();
    let services = batch
        .profiles
        .iter()
        .filter(|p| p.total_samples() > 0)
        .count();
    let unit = batch.kind.count_unit();
    let mut line = format!(
        "{} profile {} +{:.1}s: {total} {unit}, {services} service{}",
        batch.kind.describe(),
        format_utc(batch.start_unix_secs()),
        batch.duration_nanos as f64 / 1e9,
        if services == 1 { "" } else { "s" },
    );
    let mut self_samples: HashMap<&str, u64> = HashMap::new();
    for sample in batch.profiles.iter().flat_map(|p| &p.samples) {
        let leaf = sample
            .frames
            .first()
            .map_or(crate::profile::UNKNOWN_FUNCTION, |f| f.innermost_function());
        let n = self_samples.entry(leaf).or_insert(0);
        *n = n.saturating_add(sample.count);
    }
    let top = self_samples
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)));
    if let Some((function, n)) = top {
        line.push_str(&format!(
            "; top self: {function} ({n} {unit}, {:.1}%)",
            n as f64 * 100.0 / total.max(1) as f64
        ));
    }
    line
}

/// A file-name-safe form of a service name: ASCII letters, digits, `.`, `_`, `-`; at most 100
/// bytes; never empty, never starting with `.`.
pub fn sanitize_file_stem(service: &str) -> String {
    let mut out: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_FILE_STEM)
        .collect();
    if out.is_empty() {
        out.push_str("unknown");
    }
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    out
}

fn flamegraph_title(batch: &ProfileBatch) -> String {
    format!(
        "Loupe {} profile, {} +{:.0}s",
        batch.kind.title(),
        format_utc(batch.start_unix_secs()),
        batch.duration_nanos as f64 / 1e9
    )
}

fn create_dir(path: &Path) -> Result<(), LocalSinkError> {
    fs::create_dir_all(path).map_err(|source| LocalSinkError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to a hidden temporary file next to `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LocalSinkError> {
    let err = |source| LocalSinkError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Indexes existing `<stem>-<secs>.pb.gz` files (from earlier runs), oldest first per stem.
fn scan(dir: &Path) -> HashMap<String, Vec<(i64, PathBuf)>> {
    let mut files: HashMap<String, Vec<(i64, PathBuf)>> = HashMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "listing old profiles failed; they will not be pruned");
            return files;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, secs)) = name
            .strip_suffix(PROFILE_SUFFIX)
            .and_then(|n| n.rsplit_once('-'))
        else {
            continue;
        };
        let Ok(secs) = secs.parse::<i64>() else {
            continue;
        };
        if stem.is_empty() || stem.starts_with('.') {
            continue;
        }
        files
            .entry(stem.to_owned())
            .or_default()
            .push((secs, entry.path()));
    }
    for list in files.values_mut() {
        list.sort();
    }
    files
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (proleptic Gregorian, UTC).
fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;
    use prost::Message;

    use super::*;
    use crate::pprof::Profile;
    use crate::profile::{Frame, FrameLine, ServiceProfile, StackSample};
    use crate::test_util::TempDir;

    fn batch(start_secs: i64, services: &[&str]) -> ProfileBatch {
        ProfileBatch {
            start_unix_nanos: start_secs * 1_000_000_000,
            duration_nanos: 10_000_000_000,
            period_nanos: 10_000_000,
            kind: Default::default(),
            profiles: services
                .iter()
                .map(|s| ServiceProfile {
                    service_name: (*s).to_owned(),
                    labels: vec![],
                    samples: vec![
                        StackSample {
                            pid: 7,
                            thread_name: "t".into(),
                            count: 4,
                            objects: 0,
                            frames: vec![
                                Frame {
                                    address: 1,
                                    mapping: None,
                                    lines: vec![FrameLine::function(format!("{s}_leaf"))].into(),
                                },
                                Frame {
                                    address: 2,
                                    mapping: None,
                                    lines: vec![FrameLine::function("main")].into(),
                                },
                            ],
                            span: None,
                        },
                        StackSample {
                            pid: 7,
                            thread_name: "t".into(),
                            count: 1,
                            objects: 0,
                            frames: vec![Frame {
                                address: 2,
                                mapping: None,
                                lines: vec![FrameLine::function("main")].into(),
                            }],
                            span: None,
                        },
                    ],
                })
                .collect(),
        }
    }

    fn decode(path: &Path) -> Profile {
        let mut raw = Vec::new();
        GzDecoder::new(fs::File::open(path).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        Profile::decode(&raw[..]).unwrap()
    }

    fn profile_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join(PROFILES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn writes_decodable_profiles_and_svg() {
        let tmp = TempDir::new("local-write");
        let sink = LocalSink::new(tmp.path()).unwrap();
        let report = sink
            .export(Arc::new(batch(1_700_000_000, &["checkout", "cart/v2"])))
            .await;
        assert!(report.is_success(), "{:?}", report.errors);
        assert_eq!(report.items_exported, 2);
        assert!(report.bytes_sent > 0);
        assert_eq!(
            profile_files(tmp.path()),
            ["cart_v2-1700000000.pb.gz", "checkout-1700000000.pb.gz"]
        );
        let p = decode(&tmp.path().join("profiles/checkout-1700000000.pb.gz"));
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, [40_000_000, 4]);
        assert!(p.string_table.iter().any(|s| s == "checkout_leaf"));
        let svg = fs::read_to_string(tmp.path().join(FLAMEGRAPH_FILE)).unwrap();
        for name in [
            "checkout",
            "cart/v2",
            "checkout_leaf",
            "cart/v2_leaf",
            "main",
        ] {
            assert!(svg.contains(name), "svg lacks {name}");
        }
        // No temporary files left behind.
        assert!(
            !fs::read_dir(tmp.path())
                .unwrap()
                .any(|e| { e.unwrap().file_name().to_string_lossy().ends_with(".tmp") })
        );
    }

    #[tokio::test]
    async fn caps_files_per_service_and_counts_deletions() {
        let tmp = TempDir::new("local-cap");
        // A file from an earlier run is indexed and pruned first.
        fs::create_dir_all(tmp.path().join(PROFILES_DIR)).unwrap();
        fs::write(tmp.path().join("profiles/svc-100.pb.gz"), b"old").unwrap();
        let mut sink = LocalSink::new(tmp.path())
            .unwrap()
            .with_max_files_per_service(3);
        let registry = Registry::new();
        sink.register_metrics(&registry);
        for i in 0..5 {
            let report = sink
                .export(Arc::new(batch(1_000 + i, &["svc", "other"])))
                .await;
            assert!(report.is_success(), "{:?}", report.errors);
        }
        assert_eq!(
            profile_files(tmp.path()),
            [
                "other-1002.pb.gz",
                "other-1003.pb.gz",
                "other-1004.pb.gz",
                "svc-1002.pb.gz",
                "svc-1003.pb.gz",
                "svc-1004.pb.gz",
            ]
        );
        assert_eq!(
            sink.pruned_files(),
            5,
            "svc-100, svc-1000, svc-1001, other-1000, other-1001"
        );
        assert!(
            registry
                .render()
                .contains("loupe_local_sink_pruned_files_total 5\n")
        );
    }

    #[tokio::test]
    async fn unwritable_dir_errors_name_the_path() {
        let tmp = TempDir::new("local-ro");
        // A regular file where the directory should be: fails even when running as root.
        let blocker = tmp.path().join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let err = LocalSink::new(&blocker).unwrap_err();
        assert!(matches!(err, LocalSinkError::CreateDir { .. }));
        assert!(err.to_string().contains("not-a-dir"), "{err}");

        // The directory disappears after start-up and is replaced by a file.
        let dir = tmp.path().join("data");
        let sink = LocalSink::new(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        fs::write(&dir, b"").unwrap();
        let report = sink.export(Arc::new(batch(5, &["a"]))).await;
        assert!(!report.is_success());
        assert_eq!(report.items_failed, 1);
        assert!(
            report.errors[0].to_string().contains("data"),
            "{}",
            report.errors[0]
        );
    }

    #[test]
    fn summary_names_top_self_function() {
        let b = batch(1_700_000_000, &["a", "b"]);
        assert_eq!(
            summary(&b),
            "cpu profile 2023-11-14T22:13:20Z +10.0s: 10 samples, 2 services; \
             top self: a_leaf (4 samples, 40.0%)"
        );
        assert_eq!(
            summary(&ProfileBatch::default()),
            "cpu profile 1970-01-01T00:00:00Z +0.0s: 0 samples, 0 services"
        );
    }

    #[test]
    fn sanitizes_file_stems() {
        assert_eq!(sanitize_file_stem("shop/cart svc"), "shop_cart_svc");
        assert_eq!(sanitize_file_stem("../etc"), "_._etc");
        assert_eq!(sanitize_file_stem(""), "unknown");
        assert_eq!(sanitize_file_stem("é"), "_");
        assert_eq!(sanitize_file_stem(&"x".repeat(300)).len(), 100);
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
    }
}
