//! Feature probes: trivial programs the agent loads (and for kprobes, attaches and detaches at once)
//! to learn whether this kernel offers an attach method, rather than guessing from its version.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

/// Loads only where BTF-based tracing programs (fentry/fexit) work.
#[fentry(function = "vfs_read")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

/// Attaches only where kprobes are compiled into the kernel.
#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}
