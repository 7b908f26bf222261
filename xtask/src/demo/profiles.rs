//! Reading the pprof files the agent writes (`DIR/profiles/*.pb.gz`): the self time per function of one service.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};

use crate::util::short;

/// Which of the local sink's profile files to read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProfileFiles {
    /// `SERVICE-<t>.pb.gz`.
    Cpu,
    /// `SERVICE.page_faults-<t>.pb.gz`.
    PageFaults,
    /// `SERVICE.inuse-<t>.pb.gz`: allocated blocks not freed (with `--alloc-pid`).
    InUse,
}

impl ProfileFiles {
    fn matches(self, file_name: &str) -> bool {
        let page_faults = file_name.contains(".page_faults-");
        let in_use = file_name.contains(".inuse-");
        let other = [".off_cpu-", ".alloc-"]
            .iter()
            .any(|tag| file_name.contains(tag));
        match self {
            ProfileFiles::Cpu => !page_faults && !in_use && !other,
            ProfileFiles::PageFaults => page_faults,
            ProfileFiles::InUse => in_use,
        }
    }
}

/// The samples of one service, from the pprof files of one kind Loupe wrote.
pub(crate) struct ServiceProfile {
    /// Self value per function (the physical frame of the leaf location: the symbol the sampled IP is in).
    self_by_function: BTreeMap<String, i64>,
    /// Value of the samples each function is on the stack of (inlined frames included), once
    /// per sample.
    inclusive_by_function: BTreeMap<String, i64>,
    /// Functions inlined into the leaf frame, per physical leaf function.
    inlined: BTreeMap<String, Vec<String>>,
    /// Per function, its self value in samples labelled with a span, by span id.
    by_span: BTreeMap<String, BTreeMap<String, i64>>,
    /// Value per thread (the `thread_name` label; `?` without one).
    by_thread: BTreeMap<String, i64>,
    total: i64,
    pub(crate) source: String,
}

impl ServiceProfile {
    /// Reads `DIR/profiles/*.pb.gz`. Samples are attributed to the service by their `pid` label when the files
    /// carry one, else by file name (the local sink writes one profile per service).
    pub(crate) fn read(
        out: &Path,
        service: &str,
        pid: u32,
        kind: ProfileFiles,
    ) -> anyhow::Result<ServiceProfile> {
        let dir = out.join("profiles");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("reading {} (did the agent write profiles?)", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.to_string_lossy().ends_with(".pb.gz") || p.extension().is_some_and(|x| x == "pb")
            })
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| kind.matches(&n.to_string_lossy()))
            })
            .collect();
        files.sort();
        ensure!(!files.is_empty(), "no pprof files in {}", dir.display());
        let mut profiles = Vec::new();
        for f in &files {
            let bytes = fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut raw = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut raw)
                    .with_context(|| format!("gunzip {}", f.display()))?;
                raw
            } else {
                bytes
            };
            let p = <pprof::Profile as prost::Message>::decode(&bytes[..])
                .with_context(|| format!("decoding {}", f.display()))?;
            profiles.push((f.clone(), p));
        }
        let has_pid_labels = profiles
            .iter()
            .any(|(_, p)| p.sample.iter().any(|s| p.label_num(s, "pid").is_some()));
        let mut sp = ServiceProfile {
            self_by_function: BTreeMap::new(),
            inclusive_by_function: BTreeMap::new(),
            inlined: BTreeMap::new(),
            by_span: BTreeMap::new(),
            by_thread: BTreeMap::new(),
            total: 0,
            source: String::new(),
        };
        for (file, p) in &profiles {
            let by_name = file
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(service));
            let value_index = p.value_index();
            for s in &p.sample {
                let ours = if has_pid_labels {
                    p.label_num(s, "pid") == Some(i64::from(pid))
                } else {
                    by_name
                };
                if !ours {
                    continue;
                }
                let v = s.value.get(value_index).copied().unwrap_or(0);
                let frames = s
                    .location_id
                    .first()
                    .map(|id| p.frames(*id))
                    .unwrap_or_default();
                let leaf = frames
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "[unknown]".to_string());
                *sp.self_by_function.entry(leaf.clone()).or_default() += v;
                let mut on_stack = std::collections::BTreeSet::new();
                for id in &s.location_id {
                    on_stack.extend(p.frames(*id));
                }
                for f in on_stack {
                    *sp.inclusive_by_function.entry(f).or_default() += v;
                }
                if let Some(span_id) = p.label_str(s, "span_id") {
                    *sp.by_span
                        .entry(leaf.clone())
                        .or_default()
                        .entry(span_id.to_string())
                        .or_default() += v;
                }
                if frames.len() > 1 {
                    let inl = sp.inlined.entry(leaf).or_default();
                    for f in &frames[..frames.len() - 1] {
                        if !inl.contains(f) {
                            inl.push(f.clone());
                        }
                    }
                }
                let thread = p.label_str(s, "thread_name").unwrap_or("?");
                *sp.by_thread.entry(thread.to_string()).or_default() += v;
                sp.total += v;
            }
        }
        sp.source = if has_pid_labels {
            format!("{} pprof files, samples with pid={pid}", files.len())
        } else {
            format!("pprof files named after {service}")
        };
        ensure!(
            sp.total > 0,
            "no samples for {service} (pid {pid}) in {} ({})",
            dir.display(),
            sp.source
        );
        Ok(sp)
    }

    /// The self value of the functions whose name contains `function` (a symbol's full path
    /// holds its short name, as in `check_top`): in all, and in samples labelled with a span, by
    /// span id.
    pub(super) fn span_share(&self, function: &str) -> (i64, BTreeMap<String, i64>) {
        let total = self
            .self_by_function
            .iter()
            .filter(|(name, _)| name.contains(function))
            .map(|(_, v)| v)
            .sum();
        let mut by_span: BTreeMap<String, i64> = BTreeMap::new();
        for (_, spans) in self
            .by_span
            .iter()
            .filter(|(name, _)| name.contains(function))
        {
            for (id, v) in spans {
                *by_span.entry(id.clone()).or_default() += v;
            }
        }
        (total, by_span)
    }

    /// The profile's whole value (samples × period for CPU).
    pub(crate) fn total(&self) -> i64 {
        self.total
    }

    /// Value per thread name, largest first.
    pub(crate) fn threads(&self) -> Vec<(&String, i64)> {
        let mut v: Vec<(&String, i64)> = self.by_thread.iter().map(|(k, v)| (k, *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }

    pub(crate) fn ranked(&self) -> Vec<(&String, i64)> {
        let mut v: Vec<(&String, i64)> =
            self.self_by_function.iter().map(|(k, v)| (k, *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }

    pub(super) fn print_top(&self, n: usize) {
        println!("top self-time functions ({}):", self.source);
        for (name, v) in self.ranked().into_iter().take(n) {
            let inl = self
                .inlined
                .get(name)
                .map(|i| {
                    let shown: Vec<String> = i.iter().take(3).map(|f| short(f, 40)).collect();
                    let more = if i.len() > 3 { ", …" } else { "" };
                    format!("  [inlined: {}{more}]", shown.join(", "))
                })
                .unwrap_or_default();
            println!(
                "  {:>5.1}%  {}{inl}",
                100.0 * v as f64 / self.total as f64,
                short(name, 100)
            );
        }
    }

    /// Share of the profile's value in samples with a function whose name contains `function`
    /// on their stack.
    pub(super) fn inclusive_share(&self, function: &str) -> f64 {
        let on = self
            .inclusive_by_function
            .iter()
            .filter(|(name, _)| name.contains(function))
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0);
        on as f64 / self.total.max(1) as f64
    }

    pub(super) fn print_top_inclusive(&self, n: usize) {
        println!("functions on the most stacks ({}):", self.source);
        let mut v: Vec<(&String, i64)> = self
            .inclusive_by_function
            .iter()
            .map(|(k, v)| (k, *v))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (name, value) in v.into_iter().take(n) {
            println!(
                "  {:>5.1}%  {}",
                100.0 * value as f64 / self.total.max(1) as f64,
                short(name, 100)
            );
        }
    }

    pub(super) fn check_top(&self, hot: &str) -> anyhow::Result<()> {
        let ranked = self.ranked();
        let (top, v) = ranked.first().context("empty profile")?;
        ensure!(
            top.contains(hot),
            "FAIL: the top function is {top} ({:.1}%), not {hot}",
            100.0 * *v as f64 / self.total as f64
        );
        Ok(())
    }
}

/// The subset of pprof's `profile.proto` that --verify reads (field numbers as upstream).
pub(super) mod pprof {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
    }

    impl Profile {
        fn string(&self, i: i64) -> &str {
            usize::try_from(i)
                .ok()
                .and_then(|i| self.string_table.get(i))
                .map(String::as_str)
                .unwrap_or("")
        }

        /// A label's number, or its string parsed as a number (`pid` may be either).
        pub fn label_num(&self, s: &Sample, key: &str) -> Option<i64> {
            let l = s.label.iter().find(|l| self.string(l.key) == key)?;
            if l.str != 0 {
                self.string(l.str).parse().ok()
            } else {
                Some(l.num)
            }
        }

        /// A label's string value.
        pub fn label_str(&self, s: &Sample, key: &str) -> Option<&str> {
            let l = s.label.iter().find(|l| self.string(l.key) == key)?;
            (l.str != 0).then(|| self.string(l.str))
        }

        /// The sample value to count: `samples`/`count` if present, else bytes (`space`,
        /// `alloc_space`, `inuse_space`), else the first.
        pub fn value_index(&self) -> usize {
            let find = |f: &dyn Fn(&str) -> bool| {
                self.sample_type
                    .iter()
                    .position(|t| f(self.string(t.r#type)))
            };
            find(&|t| t == "samples")
                .or_else(|| find(&|t| t.ends_with("space")))
                .unwrap_or(0)
        }

        /// The function names of a location, innermost inlined first, the physical function last.
        pub fn frames(&self, location_id: u64) -> Vec<String> {
            let Some(loc) = self.location.iter().find(|l| l.id == location_id) else {
                return Vec::new();
            };
            loc.line
                .iter()
                .map(|line| {
                    self.function
                        .iter()
                        .find(|f| f.id == line.function_id)
                        .map(|f| self.string(f.name).to_string())
                        .unwrap_or_else(|| "[unknown]".to_string())
                })
                .collect()
        }
    }
}
