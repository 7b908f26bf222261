//! The profile model the agent fills after symbolization and every sink consumes: CPU samples,
//! off-CPU time, page faults, or sampled allocations (allocated, and still in use).
//!
//! One [`ProfileBatch`] covers one drain interval for all services; stacks are stored leaf first,
//! and each [`Frame`] lists its inlined functions innermost first, the real (outer) function last.

use std::sync::Arc;

/// Function name used when a frame could not be symbolized.
pub const UNKNOWN_FUNCTION: &str = "[unknown]";

/// What a profile's sample values count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProfileKind {
    /// CPU samples: each count stands for `period_nanos` of CPU time.
    #[default]
    Cpu,
    /// Time threads spent blocked: each count is nanoseconds (`period_nanos` is unused).
    OffCpu,
    /// Page-fault samples: each count stands for `period_nanos` page faults (the field holds a
    /// number of faults for this kind), each fault about one page ([`PAGE_BYTES`]) of memory
    /// first touched.
    PageFaults,
    /// Sampled allocations: each count is bytes allocated (an estimate: each sample stands for
    /// `period_nanos` bytes on average, the field holding bytes for this kind), with
    /// [`StackSample::objects`] the estimated number of blocks.
    Alloc,
    /// Sampled allocations not freed at the end of the interval, whenever they were made: counts
    /// and objects as for [`ProfileKind::Alloc`].
    InUse,
}

/// The page size page-fault profiles convert faults to bytes with: 4 KiB, the base page of
/// x86-64 and of the arm64 kernels EKS runs. Faults on huge pages count one page each, so the
/// bytes are a lower bound.
pub const PAGE_BYTES: i64 = 4096;

impl ProfileKind {
    /// Pyroscope's `__name__` for the kind: `process_cpu`, `off_cpu` as the OpenTelemetry
    /// eBPF profiler's off-CPU profiles are named there, `page_faults`, or `memory` for both
    /// allocation kinds, as Go's heap profiles (their sample types tell them apart:
    /// `memory:alloc_space:bytes:space:bytes`, `memory:inuse_space:bytes:space:bytes`, …).
    pub fn pyroscope_name(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "process_cpu",
            ProfileKind::OffCpu => "off_cpu",
            ProfileKind::PageFaults => "page_faults",
            ProfileKind::Alloc | ProfileKind::InUse => "memory",
        }
    }

    /// What the local sink writes between the service and the time in the kind's file names:
    /// nothing for CPU (`checkout-<t>.pb.gz`), else `.off_cpu` or `.page_faults`.
    pub fn file_tag(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "",
            ProfileKind::OffCpu => ".off_cpu",
            ProfileKind::PageFaults => ".page_faults",
            ProfileKind::Alloc => ".alloc",
            ProfileKind::InUse => ".inuse",
        }
    }

    /// Every kind.
    pub const ALL: [ProfileKind; 5] = [
        ProfileKind::Cpu,
        ProfileKind::OffCpu,
        ProfileKind::PageFaults,
        ProfileKind::Alloc,
        ProfileKind::InUse,
    ];

    /// Words for logs and titles.
    pub fn describe(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::OffCpu => "off-cpu",
            ProfileKind::PageFaults => "page-faults",
            ProfileKind::Alloc => "alloc",
            ProfileKind::InUse => "in-use",
        }
    }

    /// What a sample count is, for summaries.
    pub fn count_unit(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "samples",
            ProfileKind::OffCpu => "ns blocked",
            ProfileKind::PageFaults => "page-fault samples",
            ProfileKind::Alloc => "bytes allocated",
            ProfileKind::InUse => "bytes in use",
        }
    }

    /// The kind in a flame graph's title.
    pub fn title(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "CPU",
            ProfileKind::OffCpu => "off-CPU",
            ProfileKind::PageFaults => "page-fault",
            ProfileKind::Alloc => "allocation",
            ProfileKind::InUse => "in-use memory",
        }
    }
}

/// One drain interval of samples of one kind, all services.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileBatch {
    /// Start of the interval, nanoseconds since the Unix epoch.
    pub start_unix_nanos: i64,
    /// Length of the interval in nanoseconds.
    pub duration_nanos: i64,
    /// Time one sample stands for: 1e9 / sampling frequency in Hz (CPU profiles).
    pub period_nanos: i64,
    /// What the sample values count.
    pub kind: ProfileKind,
    /// One profile per service seen during the interval.
    pub profiles: Vec<ServiceProfile>,
}

/// Interval metadata shared by every profile of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchMeta {
    /// Start of the interval, nanoseconds since the Unix epoch.
    pub start_unix_nanos: i64,
    /// Length of the interval in nanoseconds.
    pub duration_nanos: i64,
    /// Time one sample stands for, in nanoseconds.
    pub period_nanos: i64,
    pub kind: ProfileKind,
}

impl ProfileBatch {
    /// The interval metadata (without the profiles).
    pub fn meta(&self) -> BatchMeta {
        BatchMeta {
            start_unix_nanos: self.start_unix_nanos,
            duration_nanos: self.duration_nanos,
            period_nanos: self.period_nanos,
            kind: self.kind,
        }
    }

    /// Sum of the sample counts of every stack of every service.
    pub fn total_samples(&self) -> u64 {
        self.profiles
            .iter()
            .map(ServiceProfile::total_samples)
            .fold(0, u64::saturating_add)
    }

    /// The batch's memory: its profiles, samples and frames, and the text they own (symbolized
    /// lines are shared with the symbolizer's cache and not counted).
    pub fn approx_bytes(&self) -> u64 {
        let profiles: usize = self
            .profiles
            .iter()
            .map(|p| {
                let labels: usize = p
                    .labels
                    .iter()
                    .map(|(k, v)| k.capacity() + v.capacity())
                    .sum();
                let samples: usize = p
                    .samples
                    .iter()
                    .map(|s| s.thread_name.capacity() + s.frames.capacity() * size_of::<Frame>())
                    .sum();
                p.service_name.capacity()
                    + p.labels.capacity() * size_of::<(String, String)>()
                    + labels
                    + p.samples.capacity() * size_of::<StackSample>()
                    + samples
            })
            .sum();
        (size_of::<Self>() + self.profiles.capacity() * size_of::<ServiceProfile>() + profiles)
            as u64
    }

    /// Start of the interval in whole seconds since the Unix epoch (floored).
    pub fn start_unix_secs(&self) -> i64 {
        self.start_unix_nanos.div_euclid(1_000_000_000)
    }
}

/// The samples of one service during one interval.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceProfile {
    /// Service name (`service_name` in Pyroscope, the root frame of the flame graph).
    pub service_name: String,
    /// Extra series labels sent to Pyroscope (for example `host.name`).
    pub labels: Vec<(String, String)>,
    /// Distinct stacks with their counts.
    pub samples: Vec<StackSample>,
}

impl ServiceProfile {
    /// Sum of the sample counts of every stack.
    pub fn total_samples(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.count)
            .fold(0, u64::saturating_add)
    }
}

/// One distinct stack of one thread, with the number of times it was sampled.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StackSample {
    /// Process id (tgid) of the sampled thread.
    pub pid: u32,
    /// Thread name (`comm`).
    pub thread_name: String,
    /// Number of samples (for [`ProfileKind::Alloc`] and [`ProfileKind::InUse`], bytes).
    pub count: u64,
    /// Blocks allocated, for [`ProfileKind::Alloc`] and [`ProfileKind::InUse`]; 0 otherwise.
    pub objects: u64,
    /// Frames, leaf first (innermost call first), root last.
    pub frames: Vec<Frame>,
    /// The span the thread was serving when sampled (pprof labels `span_id`, `span_name`).
    pub span: Option<Arc<SpanLabel>>,
}

/// The span a sample ran under: what Grafana's "Profiles for this span" and Pyroscope's span
/// profiles select on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpanLabel {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The span's name (`GET /users/{id}`).
    pub name: Arc<str>,
}

impl SpanLabel {
    /// The span id as 16 lowercase hex digits, the form of the `span_id` label and of the
    /// span's `pyroscope.profile.id` attribute.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// One stack frame: an address and what it symbolized to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frame {
    /// Absolute address as sampled (0 if unknown).
    pub address: u64,
    /// The executable mapping holding the address; `None` for kernel frames and unknown ones.
    pub mapping: Option<Arc<Mapping>>,
    /// Innermost inlined function first, the real (outer) function last; never empty
    /// (use [`UNKNOWN_FUNCTION`] when symbolization failed). Shared with the symbolizer's cache
    /// and every other sample at the address: a sample costs its frames, not their names.
    pub lines: Arc<[FrameLine]>,
}

impl Frame {
    /// The function sampled at this frame: the innermost inlined one, or [`UNKNOWN_FUNCTION`].
    pub fn innermost_function(&self) -> &str {
        self.lines
            .first()
            .map_or(UNKNOWN_FUNCTION, |l| l.function.as_str())
    }
}

/// One (possibly inlined) function at a frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FrameLine {
    /// Function name, demangled.
    pub function: String,
    /// Source file, when debug info had it.
    pub file: Option<String>,
    /// Source line, when debug info had it.
    pub line: Option<u32>,
}

impl FrameLine {
    /// A line with only a function name.
    pub fn function(name: impl Into<String>) -> Self {
        Self {
            function: name.into(),
            file: None,
            line: None,
        }
    }
}

/// An executable mapping of a process (one line of `/proc/PID/maps`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Mapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub limit: u64,
    /// Offset in the file of the first mapped byte.
    pub file_offset: u64,
    /// Path of the mapped file.
    pub path: String,
    /// GNU build id, lowercase hex.
    pub build_id: Option<String>,
}
