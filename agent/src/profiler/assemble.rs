//! Turns one drain's raw samples (keys, counts, stack addresses) into per-service profiles:
//! resolves each address to its process's mapping, symbolizes per binary in batches, and groups by
//! service. Pure over its inputs but for the symbolizer, so it is tested without the kernel.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use loupe_collector::profile::{Frame, ServiceProfile, SpanLabel, StackSample};
use loupe_common::{SampleKey, SampleValue};

use crate::correlate::{RequestTag, SpanIndex};

use super::{
    procs::{BinaryFile, FileKey, Process, ProcessTable},
    symbolize::{Lines, Symbolizer, single},
};

/// A profile series: the service and the process's own labels.
type SeriesKey = (String, Vec<(String, String)>);

/// One aggregated entry read from the kernel's sample map.
#[derive(Debug, Clone, Copy)]
pub struct RawSample {
    pub key: SampleKey,
    pub value: SampleValue,
    /// Blocks allocated, for allocation samples (whose count is bytes); 0 otherwise.
    pub objects: u64,
}

/// What went wrong with stacks in one drain, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StackStats {
    /// Samples whose user or kernel stack was lost to a hash collision in the stack map.
    pub collisions: u64,
    /// Samples whose stack was lost because the stack map was full.
    pub map_full: u64,
    /// Samples whose stack id was not found when reading the stack map.
    pub missing: u64,
    /// Samples of user processes whose user stack ends before a known entry point (no frame
    /// pointers somewhere on the stack, most likely).
    pub truncated: u64,
    /// Samples taken while their thread served a request whose span is known: labelled with it.
    pub span_tagged: u64,
    /// Samples taken while their thread served a request whose span is not known (no span, or
    /// no longer in the index): left unlabelled.
    pub span_unresolved: u64,
}

/// `-EFAULT` as a stack id: no stack of that kind (not an error).
pub(super) const EFAULT: i32 = 14;
const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;

/// Functions where a complete user stack ends. Anything else at the root means the walk stopped early.
const STACK_ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
    "runtime.goexit",
    "runtime.goexit.abi0",
    "runtime.rt0_go",
    "runtime.rt0_go.abi0",
    "runtime.mstart",
];

/// Assembles profiles. Processes come from `table` (read now if unknown; read again once when a
/// user address falls outside every mapping known, e.g. a library loaded since). A sample whose
/// key names a request is labelled with that request's span when `spans` knows it.
pub fn assemble(
    samples: &[RawSample],
    stacks: &HashMap<i32, Vec<u64>>,
    table: &mut ProcessTable,
    symbolizer: &mut Symbolizer,
    host_labels: &[(String, String)],
    spans: Option<&SpanIndex>,
) -> (Vec<ServiceProfile>, StackStats, HashMap<String, u64>) {
    let mut stats = StackStats::default();
    let span_labels = span_labels(samples, spans, &mut stats);
    let mut truncated_by_service: HashMap<String, u64> = HashMap::new();

    // Pass 1: resolve every user address to (binary, file offset); gather kernel addresses.
    struct Resolved {
        process: Arc<Process>,
        thread_name: String,
    }
    let mut resolved: Vec<Resolved> = Vec::with_capacity(samples.len());
    let mut per_binary: HashMap<FileKey, (Arc<BinaryFile>, Vec<u64>)> = HashMap::new();
    let mut kernel_addrs: Vec<u64> = Vec::new();
    let mut reread = std::collections::HashSet::new();
    for s in samples {
        let thread_name = comm_str(&s.value.comm);
        let mut p = table.get_or_refresh(s.key.pid, &thread_name);
        if !p.kernel_thread
            && !p.incomplete
            && reread.insert(s.key.pid)
            && stack(stacks, s.key.user_stack_id)
                .iter()
                .enumerate()
                .any(|(i, &ip)| p.mapping_for(return_address_fixup(ip, i)).is_none())
        {
            p = table.refresh(s.key.pid, &thread_name);
        }
        for (i, &ip) in stack(stacks, s.key.user_stack_id).iter().enumerate() {
            let ip = return_address_fixup(ip, i);
            if let Some(m) = p.mapping_for(ip)
                && let Some(b) = &m.binary
            {
                per_binary
                    .entry(b.key)
                    .or_insert_with(|| (b.clone(), Vec::new()))
                    .1
                    .push(ip - m.start + m.file_offset);
            }
        }
        for (i, &ip) in stack(stacks, s.key.kernel_stack_id).iter().enumerate() {
            kernel_addrs.push(return_address_fixup(ip, i));
        }
        resolved.push(Resolved {
            process: p,
            thread_name,
        });
    }

    // Pass 2: symbolize in one batch per binary and one for the kernel.
    let mut user_lines: HashMap<(FileKey, u64), Lines> = HashMap::new();
    for (key, (binary, mut offsets)) in per_binary {
        offsets.sort_unstable();
        offsets.dedup();
        for (offset, lines) in offsets.iter().zip(symbolizer.user(&binary, &offsets)) {
            user_lines.insert((key, *offset), lines);
        }
    }
    kernel_addrs.sort_unstable();
    kernel_addrs.dedup();
    let kernel_lines: HashMap<u64, Lines> = kernel_addrs
        .iter()
        .copied()
        .zip(symbolizer.kernel(&kernel_addrs))
        .collect();

    // Pass 3: frames, leaf first: the kernel part of the stack, then the user part.
    // By service and the process's own series labels (its pod): replicas are series of their own.
    let mut by_service: BTreeMap<SeriesKey, Vec<StackSample>> = BTreeMap::new();
    for ((s, r), span) in samples.iter().zip(resolved).zip(span_labels) {
        let mut frames = Vec::new();
        match s.key.kernel_stack_id {
            id if id >= 0 => match stacks.get(&id) {
                Some(ips) => {
                    for (i, &ip) in ips.iter().enumerate() {
                        let ip = return_address_fixup(ip, i);
                        frames.push(Frame {
                            address: ip,
                            mapping: None,
                            lines: kernel_lines
                                .get(&ip)
                                .cloned()
                                .unwrap_or_else(|| single("[kernel]")),
                        });
                    }
                }
                None => stats.missing += s.value.count,
            },
            e => count_error(
                &mut stats,
                e,
                s.value.count,
                &mut frames,
                "[kernel stack lost]",
            ),
        }
        let user_start = frames.len();
        if !r.process.kernel_thread {
            match s.key.user_stack_id {
                id if id >= 0 => match stacks.get(&id) {
                    Some(ips) => {
                        for (i, &ip) in ips.iter().enumerate() {
                            let ip = return_address_fixup(ip, i);
                            frames.push(user_frame(&r.process, ip, &user_lines));
                        }
                    }
                    None => stats.missing += s.value.count,
                },
                e => count_error(
                    &mut stats,
                    e,
                    s.value.count,
                    &mut frames,
                    "[user stack lost]",
                ),
            }
            let user = &frames[user_start..];
            if user.last().is_some_and(|root| !is_entry_frame(root)) {
                stats.truncated += s.value.count;
                *truncated_by_service
                    .entry(r.process.service.clone())
                    .or_default() += s.value.count;
            }
        }
        if frames.is_empty() {
            frames.push(Frame {
                address: 0,
                mapping: None,
                lines: single("[unknown]"),
            });
        }
        by_service
            .entry((r.process.service.clone(), r.process.labels.clone()))
            .or_default()
            .push(StackSample {
                pid: s.key.pid,
                thread_name: r.thread_name,
                count: s.value.count,
                objects: s.objects,
                frames,
                span,
            });
    }

    let profiles = by_service
        .into_iter()
        .map(|((service_name, labels), samples)| ServiceProfile {
            service_name,
            labels: host_labels.iter().cloned().chain(labels).collect(),
            samples,
        })
        .collect();
    (profiles, stats, truncated_by_service)
}

/// The span of each sample's request (`None` for samples outside any request, or whose span is
/// unknown), looked up in one go; counts both kinds of tagged sample.
fn span_labels(
    samples: &[RawSample],
    spans: Option<&SpanIndex>,
    stats: &mut StackStats,
) -> Vec<Option<Arc<SpanLabel>>> {
    let tags: Vec<RequestTag> = samples
        .iter()
        .map(|s| (s.key.pid, s.key.request_ns))
        .collect();
    let mut found = match spans {
        Some(index) if tags.iter().any(|t| t.1 != 0) => index.lookup(&tags),
        _ => vec![None; samples.len()],
    };
    for ((s, tag), label) in samples.iter().zip(&tags).zip(found.iter_mut()) {
        if tag.1 == 0 {
            *label = None;
        } else if label.is_some() {
            stats.span_tagged += s.value.count;
        } else {
            stats.span_unresolved += s.value.count;
        }
    }
    found
}

/// Whether a stack's outermost frame is where threads start: a known entry function, or any code
/// of the C library or dynamic loader (whose start-up symbols are stripped on most distributions).
fn is_entry_frame(frame: &Frame) -> bool {
    if frame
        .lines
        .last()
        .is_some_and(|l| STACK_ROOTS.contains(&l.function.as_str()))
    {
        return true;
    }
    frame.mapping.as_ref().is_some_and(|m| {
        let file = m.path.rsplit('/').next().unwrap_or(&m.path);
        ["libc.so", "libc-", "ld-linux", "ld-musl", "libpthread"]
            .iter()
            .any(|p| file.starts_with(p))
    })
}

fn stack(stacks: &HashMap<i32, Vec<u64>>, id: i32) -> &[u64] {
    stacks.get(&id).map(Vec::as_slice).unwrap_or(&[])
}

/// Every frame but the leaf holds a return address, which points after the call; the call itself is
/// one byte earlier, and may belong to another function or inlined scope.
fn return_address_fixup(ip: u64, depth: usize) -> u64 {
    if depth == 0 { ip } else { ip.saturating_sub(1) }
}

fn count_error(
    stats: &mut StackStats,
    errno: i32,
    count: u64,
    frames: &mut Vec<Frame>,
    label: &str,
) {
    match -errno {
        EFAULT => return, // no stack of this kind (a kernel thread's user stack, or no kernel part)
        EEXIST => stats.collisions += count,
        ENOMEM => stats.map_full += count,
        _ => stats.missing += count,
    }
    frames.push(Frame {
        address: 0,
        mapping: None,
        lines: single(label),
    });
}

fn user_frame(process: &Process, ip: u64, user_lines: &HashMap<(FileKey, u64), Lines>) -> Frame {
    let Some(m) = process.mapping_for(ip) else {
        return Frame {
            address: ip,
            mapping: None,
            lines: single(if process.incomplete {
                "[exited]"
            } else {
                "[unknown]"
            }),
        };
    };
    let lines = match &m.binary {
        Some(b) => user_lines
            .get(&(b.key, ip - m.start + m.file_offset))
            .cloned()
            .unwrap_or_else(|| single("[unknown]")),
        None => single(&m.mapping.path),
    };
    Frame {
        address: ip,
        mapping: Some(m.mapping.clone()),
        lines,
    }
}

pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::super::procs::ProcessTable;
    use super::*;

    #[inline(never)]
    #[unsafe(no_mangle)]
    pub extern "C" fn loupe_assemble_test_leaf(x: u64) -> u64 {
        std::hint::black_box(x ^ 0x5a5a)
    }

    fn comm(name: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    #[test]
    fn builds_named_frames_grouped_by_service() {
        let me = std::process::id();
        let mut table = ProcessTable::new(8);
        let mut symbolizer = Symbolizer::new(1000, false);
        let leaf = loupe_assemble_test_leaf as *const () as usize as u64 + 4;
        let stacks = HashMap::from([(3, vec![leaf]), (5, vec![leaf])]);
        let samples = [
            RawSample {
                key: SampleKey {
                    pid: me,
                    tid: me,
                    user_stack_id: 3,
                    kernel_stack_id: -EFAULT,
                    request_ns: 77,
                    kind: 0,
                    _pad: 0,
                    dwarf_stack: 0,
                },
                value: SampleValue {
                    count: 7,
                    comm: comm("worker-1"),
                },
                objects: 0,
            },
            RawSample {
                key: SampleKey {
                    pid: me,
                    tid: me + 1,
                    user_stack_id: 5,
                    kernel_stack_id: -EEXIST,
                    request_ns: 88,
                    kind: 0,
                    _pad: 0,
                    dwarf_stack: 0,
                },
                value: SampleValue {
                    count: 2,
                    comm: comm("worker-2"),
                },
                objects: 0,
            },
        ];
        let host = vec![("host_name".to_string(), "h".to_string())];
        // The first sample's request became a span; the second's is not known.
        let index = SpanIndex::new(8, 8);
        let span = Arc::new(SpanLabel {
            trace_id: [7; 16],
            span_id: [0xab; 8],
            name: "GET /work".into(),
        });
        index.publish(&mut vec![crate::correlate::Published {
            tag: (me, 77),
            span: span.clone(),
            sampled: true,
        }]);
        let (profiles, stats, truncated) = assemble(
            &samples,
            &stacks,
            &mut table,
            &mut symbolizer,
            &host,
            Some(&index),
        );
        assert_eq!(profiles.len(), 1);
        let p = &profiles[0];
        assert_eq!(p.labels, host, "span ids never become series labels");
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.samples[0].span.as_ref(), Some(&span));
        assert_eq!(p.samples[1].span, None);
        assert_eq!((stats.span_tagged, stats.span_unresolved), (7, 2));
        assert_eq!(p.total_samples(), 9, "tagging never changes totals");
        let first = &p.samples[0];
        assert_eq!((first.count, first.thread_name.as_str()), (7, "worker-1"));
        assert_eq!(first.frames.len(), 1);
        assert_eq!(
            first.frames[0].lines.last().unwrap().function,
            "loupe_assemble_test_leaf"
        );
        assert!(first.frames[0].mapping.is_some());
        // The second lost its kernel stack to a collision: shown, and counted.
        let second = &p.samples[1];
        assert_eq!(second.frames[0].lines[0].function, "[kernel stack lost]");
        assert_eq!(stats.collisions, 2);
        // A one-frame stack does not end in an entry point: truncated.
        assert_eq!(stats.truncated, 9);
        assert_eq!(truncated.get(&p.service_name), Some(&9));
    }

    #[test]
    fn stacks_rooted_in_libc_or_an_entry_function_are_complete() {
        use loupe_collector::profile::{FrameLine, Mapping};
        let frame = |function: &str, path: Option<&str>| Frame {
            address: 1,
            mapping: path.map(|p| {
                Arc::new(Mapping {
                    start: 0,
                    limit: 10,
                    file_offset: 0,
                    path: p.to_string(),
                    build_id: None,
                })
            }),
            lines: vec![FrameLine {
                function: function.to_string(),
                file: None,
                line: None,
            }]
            .into(),
        };
        assert!(is_entry_frame(&frame(
            "libc.so.6+0x27249",
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        )));
        assert!(is_entry_frame(&frame("_start", Some("/usr/bin/app"))));
        assert!(is_entry_frame(&frame(
            "runtime.goexit.abi0",
            Some("/app/server")
        )));
        assert!(!is_entry_frame(&frame(
            "handle_request",
            Some("/usr/bin/app")
        )));
        assert!(!is_entry_frame(&frame("[unknown]", None)));
    }

    #[test]
    fn samples_without_any_stack_are_kept_as_unknown() {
        let mut table = ProcessTable::new(8);
        let mut symbolizer = Symbolizer::new(100, false);
        let samples = [RawSample {
            key: SampleKey {
                pid: u32::MAX - 5,
                tid: 1,
                user_stack_id: -EFAULT,
                kernel_stack_id: -EFAULT,
                request_ns: 0,
                kind: 0,
                _pad: 0,
                dwarf_stack: 0,
            },
            value: SampleValue {
                count: 1,
                comm: comm("gone"),
            },
            objects: 0,
        }];
        let (profiles, stats, _) = assemble(
            &samples,
            &HashMap::new(),
            &mut table,
            &mut symbolizer,
            &[],
            None,
        );
        assert_eq!(profiles[0].service_name, "gone");
        assert_eq!(
            profiles[0].samples[0].frames[0].lines[0].function,
            "[unknown]"
        );
        assert_eq!(stats, StackStats::default());
    }
}
