//! Encoding of one service's samples as a gzip-compressed pprof `Profile` (the format Pyroscope
//! ingests), using the prost types of the `pyroscope` crate.
//!
//! Strings, functions, mappings and locations are deduplicated; every id starts at 1 and index 0 of
//! the string table is `""`. Frames without a mapping get a synthetic one (`[kernel.kallsyms]` for
//! kernel-half addresses, `[unknown]` otherwise) because some pprof consumers reject mapping id 0.

use prost::Message;
pub use pyroscope::encode::r#gen::google::Profile;
use pyroscope::encode::r#gen::google::{
    Function, Label, Line, Location, Mapping as PprofMapping, Sample, ValueType,
};
use std::collections::HashMap;

use crate::profile::{
    BatchMeta, Frame, Mapping, PAGE_BYTES, ProfileKind, ServiceProfile, UNKNOWN_FUNCTION,
};

/// File name of the synthetic mapping used for kernel frames.
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";
/// File name of the synthetic mapping used for user frames without a known mapping.
pub const UNKNOWN_MAPPING: &str = "[unknown]";
/// Addresses at or above this are kernel addresses (upper half on x86_64 and aarch64).
const KERNEL_ADDRESS_START: u64 = 0xffff_8000_0000_0000;

/// Errors of pprof encoding.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    /// Gzip compression of the encoded profile failed.
    #[error("gzip-compressing a pprof profile failed: {0}")]
    Gzip(#[source] std::io::Error),
}

/// Builds the pprof profile of one service for one interval.
///
/// Sample types depend on the kind (see below; for CPU, `cpu`/`nanoseconds` (count × period,
/// the default) and `samples`/`count`); each sample carries a `pid` number label and a `thread_name` string label, and a sample taken
/// while its thread served a request the `span_id` (16 lowercase hex digits) and `span_name`
/// labels of that request's span (Pyroscope's span profiles, Grafana's trace → profile link).
pub fn build(meta: BatchMeta, profile: &ServiceProfile) -> Profile {
    // Declared before the builder, which borrows its strings.
    let span_ids: Vec<Option<String>> = profile
        .samples
        .iter()
        .map(|s| s.span.as_ref().map(|l| l.span_id_hex()))
        .collect();
    let mut b = Builder::default();
    b.string("");
    // CPU: time (count × period) and sample counts, the period being CPU time. Off-CPU: one
    // value, nanoseconds blocked, no period (`off_cpu:events:nanoseconds::` in Pyroscope, as the
    // OpenTelemetry eBPF profiler's). Page faults: bytes first touched (faults × page size, the
    // default) and faults (count × period), the period being faults. Allocations, as Go's heap
    // profiles: objects and bytes (the default), `alloc_*` or `inuse_*`, the period being the
    // mean bytes between two samples (`space`/`bytes`).
    let (sample_type, period_type, default_sample_type) = match meta.kind {
        ProfileKind::Alloc | ProfileKind::InUse => {
            let (objects, space) = if meta.kind == ProfileKind::Alloc {
                (b.string("alloc_objects"), b.string("alloc_space"))
            } else {
                (b.string("inuse_objects"), b.string("inuse_space"))
            };
            let count = b.string("count");
            let bytes = b.string("bytes");
            let period_space = b.string("space");
            (
                vec![
                    ValueType {
                        r#type: objects,
                        unit: count,
                    },
                    ValueType {
                        r#type: space,
                        unit: bytes,
                    },
                ],
                Some(ValueType {
                    r#type: period_space,
                    unit: bytes,
                }),
                space,
            )
        }
        ProfileKind::OffCpu => {
            let events = b.string("events");
            let nanoseconds = b.string("nanoseconds");
            (
                vec![ValueType {
                    r#type: events,
                    unit: nanoseconds,
                }],
                None,
                events,
            )
        }
        ProfileKind::PageFaults => {
            let space = b.string("space");
            let bytes = b.string("bytes");
            let faults = b.string("faults");
            let count = b.string("count");
            let faults = ValueType {
                r#type: faults,
                unit: count,
            };
            (
                vec![
                    ValueType {
                        r#type: space,
                        unit: bytes,
                    },
                    faults,
                ],
                Some(faults),
                space,
            )
        }
        ProfileKind::Cpu => {
            let cpu = b.string("cpu");
            let nanoseconds = b.string("nanoseconds");
            let samples = b.string("samples");
            let count = b.string("count");
            let cpu_time = ValueType {
                r#type: cpu,
                unit: nanoseconds,
            };
            (
                vec![
                    cpu_time,
                    ValueType {
                        r#type: samples,
                        unit: count,
                    },
                ],
                Some(cpu_time),
                cpu,
            )
        }
    };
    let pid_key = b.string("pid");
    let thread_key = b.string("thread_name");
    let span_id_key = b.string("span_id");
    let span_name_key = b.string("span_name");
    let period = match meta.kind {
        ProfileKind::OffCpu => 0,
        ProfileKind::Cpu | ProfileKind::PageFaults | ProfileKind::Alloc | ProfileKind::InUse => {
            meta.period_nanos.max(0)
        }
    };

    let mut out_samples = Vec::with_capacity(profile.samples.len());
    for (sample, span_id) in profile.samples.iter().zip(&span_ids) {
        if sample.count == 0 {
            continue;
        }
        let location_id = if sample.frames.is_empty() {
            vec![b.unknown_location()]
        } else {
            sample.frames.iter().map(|f| b.location(f)).collect()
        };
        let n = i64::try_from(sample.count).unwrap_or(i64::MAX);
        let mut label = vec![Label {
            key: pid_key,
            num: i64::from(sample.pid),
            ..Label::default()
        }];
        if !sample.thread_name.is_empty() {
            label.push(Label {
                key: thread_key,
                str: b.string(&sample.thread_name),
                ..Label::default()
            });
        }
        if let (Some(span), Some(span_id)) = (&sample.span, span_id) {
            label.push(Label {
                key: span_id_key,
                str: b.string(span_id),
                ..Label::default()
            });
            label.push(Label {
                key: span_name_key,
                str: b.string(&span.name),
                ..Label::default()
            });
        }
        out_samples.push(Sample {
            location_id,
            value: match meta.kind {
                ProfileKind::OffCpu => vec![n],
                ProfileKind::Cpu => vec![n.saturating_mul(period), n],
                ProfileKind::PageFaults => {
                    let faults = n.saturating_mul(period);
                    vec![faults.saturating_mul(PAGE_BYTES), faults]
                }
                ProfileKind::Alloc | ProfileKind::InUse => {
                    vec![i64::try_from(sample.objects).unwrap_or(i64::MAX), n]
                }
            },
            label,
        });
    }

    Profile {
        sample_type,
        sample: out_samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos: meta.start_unix_nanos,
        duration_nanos: meta.duration_nanos,
        period_type,
        period,
        default_sample_type,
        ..Profile::default()
    }
}

/// Serializes a profile to protobuf and gzip-compresses it (the `.pb.gz` form).
pub fn encode_gzip(profile: &Profile) -> Result<Vec<u8>, PprofError> {
    crate::gzip::gzip(&profile.encode_to_vec()).map_err(PprofError::Gzip)
}

/// The samples of `profile` whose string label `key` equals `value`, as folded stacks
/// (`root;…;leaf` with `root_name` prepended) and their `samples` counts, merged. This is how one
/// span's (`span_id`) or one route's (`span_name`) flame graph is cut out of a service's
/// profile.
pub fn folded_with_label(
    profile: &Profile,
    root_name: &str,
    key: &str,
    value: &str,
) -> HashMap<String, u64> {
    let s = |i: i64| {
        profile
            .string_table
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .map_or("", String::as_str)
    };
    let mut out = HashMap::new();
    let Some(count_index) = profile
        .sample_type
        .iter()
        .position(|t| s(t.r#type) == "samples")
    else {
        return out;
    };
    let functions: HashMap<u64, &str> =
        profile.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locations: HashMap<u64, &Location> = profile.location.iter().map(|l| (l.id, l)).collect();
    for sample in &profile.sample {
        if !sample
            .label
            .iter()
            .any(|l| s(l.key) == key && s(l.str) == value)
        {
            continue;
        }
        let count = sample
            .value
            .get(count_index)
            .and_then(|&c| u64::try_from(c).ok())
            .unwrap_or(0);
        if count == 0 {
            continue;
        }
        let mut stack = String::from(root_name);
        // Locations are leaf first, and a location's lines innermost first.
        for id in sample.location_id.iter().rev() {
            let Some(location) = locations.get(id) else {
                continue;
            };
            for line in location.line.iter().rev() {
                stack.push(';');
                let name = functions.get(&line.function_id).copied().unwrap_or("");
                stack.push_str(if name.is_empty() { "[unknown]" } else { name });
            }
        }
        *out.entry(stack).or_insert(0) += count;
    }
    out
}

/// Which mapping a location belongs to.
#[derive(Hash, PartialEq, Eq)]
enum MappingKey<'a> {
    Real(&'a Mapping),
    Kernel,
    Unknown,
}

#[derive(Default)]
struct Builder<'a> {
    strings: Vec<String>,
    string_ids: HashMap<&'a str, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    mappings: Vec<PprofMapping>,
    mapping_ids: HashMap<MappingKey<'a>, u64>,
    locations: Vec<Location>,
    location_ids: HashMap<(u64, u64, Vec<Line>), u64>,
}

impl<'a> Builder<'a> {
    fn string(&mut self, s: &'a str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = i64::try_from(self.strings.len()).unwrap_or(i64::MAX);
        self.strings.push(s.to_owned());
        self.string_ids.insert(s, id);
        id
    }

    fn function(&mut self, name: &'a str, file: Option<&'a str>) -> u64 {
        let name = self.string(name);
        let file = file.map_or(0, |f| self.string(f));
        if let Some(&id) = self.function_ids.get(&(name, file)) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(Function {
            id,
            name,
            system_name: name,
            filename: file,
            start_line: 0,
        });
        self.function_ids.insert((name, file), id);
        id
    }

    fn mapping(&mut self, key: MappingKey<'a>) -> u64 {
        if let Some(&id) = self.mapping_ids.get(&key) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let mapping = match &key {
            MappingKey::Real(m) => PprofMapping {
                id,
                memory_start: m.start,
                memory_limit: m.limit,
                file_offset: m.file_offset,
                filename: self.string(&m.path),
                build_id: m.build_id.as_deref().map_or(0, |b| self.string(b)),
                has_functions: true,
                ..PprofMapping::default()
            },
            MappingKey::Kernel | MappingKey::Unknown => PprofMapping {
                id,
                filename: self.string(if matches!(key, MappingKey::Kernel) {
                    KERNEL_MAPPING
                } else {
                    UNKNOWN_MAPPING
                }),
                has_functions: true,
                ..PprofMapping::default()
            },
        };
        self.mappings.push(mapping);
        self.mapping_ids.insert(key, id);
        id
    }

    fn location(&mut self, frame: &'a Frame) -> u64 {
        let key = match &frame.mapping {
            Some(m) => MappingKey::Real(m),
            None if frame.address >= KERNEL_ADDRESS_START => MappingKey::Kernel,
            None => MappingKey::Unknown,
        };
        let mapping_id = self.mapping(key);
        let mut lines: Vec<Line> = Vec::with_capacity(frame.lines.len().max(1));
        let (mut has_file, mut has_line) = (false, false);
        for l in frame.lines.iter() {
            has_file |= l.file.is_some();
            has_line |= l.line.is_some();
            lines.push(Line {
                function_id: self.function(&l.function, l.file.as_deref()),
                line: l.line.map_or(0, i64::from),
            });
        }
        if lines.is_empty() {
            lines.push(Line {
                function_id: self.function(UNKNOWN_FUNCTION, None),
                line: 0,
            });
        }
        if let Some(m) = usize::try_from(mapping_id - 1)
            .ok()
            .and_then(|i| self.mappings.get_mut(i))
        {
            m.has_filenames |= has_file;
            m.has_line_numbers |= has_line;
            m.has_inline_frames |= lines.len() > 1;
        }
        self.intern_location(mapping_id, frame.address, lines)
    }

    fn unknown_location(&mut self) -> u64 {
        let mapping_id = self.mapping(MappingKey::Unknown);
        let function_id = self.function(UNKNOWN_FUNCTION, None);
        self.intern_location(
            mapping_id,
            0,
            vec![Line {
                function_id,
                line: 0,
            }],
        )
    }

    fn intern_location(&mut self, mapping_id: u64, address: u64, line: Vec<Line>) -> u64 {
        let key = (mapping_id, address, line);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id,
            address,
            line: key.2.clone(),
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use flate2::read::GzDecoder;

    use super::*;
    use crate::profile::{FrameLine, StackSample};

    fn s(p: &Profile, i: i64) -> &str {
        &p.string_table[usize::try_from(i).unwrap()]
    }

    fn fl(name: &str, file: Option<&str>, line: Option<u32>) -> FrameLine {
        FrameLine {
            function: name.into(),
            file: file.map(Into::into),
            line,
        }
    }

    fn sample_profile() -> ServiceProfile {
        let exe = Arc::new(Mapping {
            start: 0x1000,
            limit: 0x9000,
            file_offset: 0x1000,
            path: "/usr/bin/app".into(),
            build_id: Some("abcdef01".into()),
        });
        let hot = Frame {
            address: 0x1100,
            mapping: Some(exe.clone()),
            // `inlined` was inlined into `hot`.
            lines: vec![
                fl("inlined", Some("lib.rs"), Some(7)),
                fl("hot", Some("main.rs"), Some(42)),
            ]
            .into(),
        };
        let main = Frame {
            address: 0x1200,
            mapping: Some(exe.clone()),
            lines: vec![fl("main", Some("main.rs"), Some(3))].into(),
        };
        let kernel = Frame {
            address: 0xffff_ffff_8100_0000,
            mapping: None,
            lines: vec![FrameLine::function("do_syscall_64")].into(),
        };
        ServiceProfile {
            service_name: "checkout".into(),
            labels: vec![],
            samples: vec![
                StackSample {
                    pid: 42,
                    thread_name: "worker-1".into(),
                    count: 3,
                    objects: 0,
                    frames: vec![hot.clone(), main.clone()],
                    span: None,
                },
                StackSample {
                    pid: 42,
                    thread_name: "worker-2".into(),
                    count: 2,
                    objects: 0,
                    frames: vec![kernel, hot, main],
                    span: None,
                },
            ],
        }
    }

    fn meta() -> BatchMeta {
        BatchMeta {
            start_unix_nanos: 1_700_000_000_000_000_000,
            duration_nanos: 10_000_000_000,
            period_nanos: 10_101_010,
            kind: Default::default(),
        }
    }

    fn roundtrip(p: &Profile) -> Profile {
        let gz = encode_gzip(p).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        let mut raw = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
        Profile::decode(&raw[..]).unwrap()
    }

    #[test]
    fn off_cpu_profiles_are_nanoseconds_of_events_without_a_period() {
        let meta = BatchMeta {
            kind: ProfileKind::OffCpu,
            period_nanos: 0,
            ..meta()
        };
        let p = roundtrip(&build(meta, &sample_profile()));
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(&p, t.r#type), s(&p, t.unit)))
            .collect();
        assert_eq!(types, [("events", "nanoseconds")]);
        assert_eq!(s(&p, p.default_sample_type), "events");
        assert!(p.period_type.is_none());
        // Counts are nanoseconds blocked, as they are.
        let values: Vec<Vec<i64>> = p.sample.iter().map(|x| x.value.clone()).collect();
        assert_eq!(values, [vec![3], vec![2]]);
    }

    #[test]
    fn encodes_types_values_and_time() {
        let p = roundtrip(&build(meta(), &sample_profile()));
        assert_eq!(p.string_table[0], "");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(&p, t.r#type), s(&p, t.unit)))
            .collect();
        assert_eq!(types, [("cpu", "nanoseconds"), ("samples", "count")]);
        let pt = p.period_type.unwrap();
        assert_eq!((s(&p, pt.r#type), s(&p, pt.unit)), ("cpu", "nanoseconds"));
        assert_eq!(p.period, 10_101_010);
        assert_eq!(s(&p, p.default_sample_type), "cpu");
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(p.duration_nanos, 10_000_000_000);
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, [3 * 10_101_010, 3]);
        assert_eq!(p.sample[1].value, [2 * 10_101_010, 2]);
        let labels: Vec<(&str, i64, &str)> = p.sample[1]
            .label
            .iter()
            .map(|l| (s(&p, l.key), l.num, s(&p, l.str)))
            .collect();
        assert_eq!(labels, [("pid", 42, ""), ("thread_name", 0, "worker-2")]);
    }

    #[test]
    fn span_labels_and_cutting_out_one_span() {
        let mut profile = sample_profile();
        let span = Arc::new(crate::profile::SpanLabel {
            trace_id: [1; 16],
            span_id: [0x0a, 0xbc, 0, 1, 2, 3, 4, 0xff],
            name: "GET /users/{id}".into(),
        });
        profile.samples[1].span = Some(span);
        let p = roundtrip(&build(meta(), &profile));
        let labels: Vec<(&str, &str)> = p.sample[1]
            .label
            .iter()
            .map(|l| (s(&p, l.key), s(&p, l.str)))
            .collect();
        assert_eq!(
            labels,
            [
                ("pid", ""),
                ("thread_name", "worker-2"),
                ("span_id", "0abc0001020304ff"),
                ("span_name", "GET /users/{id}"),
            ]
        );
        assert_eq!(
            p.sample[0].label.len(),
            2,
            "an untagged sample has no span labels"
        );

        let one = folded_with_label(&p, "checkout", "span_id", "0abc0001020304ff");
        assert_eq!(
            one,
            HashMap::from([("checkout;main;hot;inlined;do_syscall_64".to_string(), 2)])
        );
        let route = folded_with_label(&p, "checkout", "span_name", "GET /users/{id}");
        assert_eq!(route, one);
        assert!(folded_with_label(&p, "checkout", "span_id", "ffffffffffffffff").is_empty());
    }

    #[test]
    fn deduplicates_with_ids_from_one() {
        let p = roundtrip(&build(meta(), &sample_profile()));
        // Strings are unique.
        let mut seen = std::collections::HashSet::new();
        assert!(
            p.string_table.iter().all(|x| seen.insert(x)),
            "{:?}",
            p.string_table
        );
        // Functions: inlined, hot, main, do_syscall_64; ids 1..=4 in order.
        let names: Vec<&str> = p.function.iter().map(|f| s(&p, f.name)).collect();
        assert_eq!(names, ["inlined", "hot", "main", "do_syscall_64"]);
        assert!(
            p.function
                .iter()
                .enumerate()
                .all(|(i, f)| f.id == i as u64 + 1)
        );
        // Locations: hot(+inlined), main, kernel; shared by both samples.
        assert_eq!(p.location.len(), 3);
        assert!(
            p.location
                .iter()
                .enumerate()
                .all(|(i, l)| l.id == i as u64 + 1)
        );
        assert_eq!(p.sample[0].location_id, [1, 2], "leaf first");
        assert_eq!(p.sample[1].location_id, [3, 1, 2]);
        // Mappings: the executable, then the synthetic kernel one; never id 0.
        assert_eq!(p.mapping.len(), 2);
        let exe = &p.mapping[0];
        assert_eq!(exe.id, 1);
        assert_eq!(s(&p, exe.filename), "/usr/bin/app");
        assert_eq!(s(&p, exe.build_id), "abcdef01");
        assert_eq!(
            (exe.memory_start, exe.memory_limit, exe.file_offset),
            (0x1000, 0x9000, 0x1000)
        );
        assert!(exe.has_functions && exe.has_filenames && exe.has_line_numbers);
        assert!(exe.has_inline_frames);
        assert_eq!(p.mapping[1].id, 2);
        assert_eq!(s(&p, p.mapping[1].filename), KERNEL_MAPPING);
        assert!(p.location.iter().all(|l| l.mapping_id != 0));
        assert_eq!(p.location[2].mapping_id, 2);
        assert_eq!(p.location[2].address, 0xffff_ffff_8100_0000);
    }

    #[test]
    fn inlined_lines_innermost_first() {
        let p = roundtrip(&build(meta(), &sample_profile()));
        let hot = &p.location[0];
        assert_eq!(hot.address, 0x1100);
        let lines: Vec<(&str, &str, i64)> = hot
            .line
            .iter()
            .map(|l| {
                let f = &p.function[usize::try_from(l.function_id - 1).unwrap()];
                (s(&p, f.name), s(&p, f.filename), l.line)
            })
            .collect();
        assert_eq!(lines, [("inlined", "lib.rs", 7), ("hot", "main.rs", 42)]);
    }

    #[test]
    fn distinct_mappings_and_unknown_frames() {
        let a = Arc::new(Mapping {
            start: 0x1000,
            limit: 0x2000,
            path: "/lib/a.so".into(),
            ..Mapping::default()
        });
        // Same value behind a different Arc: deduplicated by value.
        let a2 = Arc::new((*a).clone());
        let b = Arc::new(Mapping {
            start: 0x3000,
            limit: 0x4000,
            path: "/lib/b.so".into(),
            ..Mapping::default()
        });
        let frame = |m: &Arc<Mapping>, addr| Frame {
            address: addr,
            mapping: Some(m.clone()),
            lines: vec![FrameLine::function("f")].into(),
        };
        let prof = ServiceProfile {
            service_name: "x".into(),
            labels: vec![],
            samples: vec![
                StackSample {
                    pid: 1,
                    thread_name: String::new(),
                    count: 1,
                    objects: 0,
                    frames: vec![
                        frame(&a, 0x1010),
                        frame(&a2, 0x1010),
                        frame(&b, 0x3010),
                        Frame {
                            address: 0x5555,
                            mapping: None,
                            lines: vec![].into(),
                        },
                    ],
                    span: None,
                },
                StackSample {
                    pid: 2,
                    thread_name: String::new(),
                    count: 1,
                    objects: 0,
                    frames: vec![],
                    span: None,
                },
                StackSample {
                    pid: 3,
                    thread_name: "zero".into(),
                    count: 0,
                    objects: 0,
                    frames: vec![frame(&b, 0x3010)],
                    span: None,
                },
            ],
        };
        let p = roundtrip(&build(meta(), &prof));
        assert_eq!(p.mapping.len(), 3, "a, b and [unknown]");
        assert_eq!(s(&p, p.mapping[2].filename), UNKNOWN_MAPPING);
        assert_eq!(p.function.len(), 2, "f and [unknown]");
        assert_eq!(p.sample.len(), 2, "zero-count samples are skipped");
        assert_eq!(p.sample[0].location_id, [1, 1, 2, 3]);
        assert_eq!(
            p.sample[1].location_id.len(),
            1,
            "empty stacks become [unknown]"
        );
        assert_eq!(
            p.sample[1].label.len(),
            1,
            "no thread_name label when empty"
        );
        let unknown = &p.location[usize::try_from(p.sample[1].location_id[0] - 1).unwrap()];
        let f = &p.function[usize::try_from(unknown.line[0].function_id - 1).unwrap()];
        assert_eq!(s(&p, f.name), UNKNOWN_FUNCTION);
    }
}
