//! Least privilege after start-up: once every program is loaded and attached, the agent gives up
//! each capability it no longer needs, in every thread, for good (permitted and effective sets).
//!
//! Capabilities belong to threads, not processes, and `capset` changes only the calling thread.
//! The threads running at that point (the runtime's workers, the readers, the drainer) are each
//! sent a real-time signal whose handler makes the same `capset` call (async-signal-safe: one
//! system call), the way libpsx does it; `/proc/self/task/*/status` is then read back until every
//! thread shows the reduced set. Threads created later inherit it from their creator.

use std::{
    fs, io,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Capability numbers (linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_SYSLOG: u32 = 34;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What the agent keeps after start-up, and why. The rest (NET_ADMIN for attaching the sockops
/// program, SYS_RESOURCE for the locked-memory limit, and everything root holds) is dropped.
pub const KEPT: &[(u32, &str, &str)] = &[
    (
        CAP_BPF,
        "BPF",
        "every bpf() call: reading and clearing the maps at each drain, attaching uprobes to processes that start later",
    ),
    (
        CAP_PERFMON,
        "PERFMON",
        "the perf events behind uprobes attached to processes that start later (TLS libraries, Go runtimes)",
    ),
    (
        CAP_SYS_PTRACE,
        "SYS_PTRACE",
        "reading new processes' /proc/PID/maps, environ and root to name and symbolize them",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "DAC_READ_SEARCH",
        "opening those processes' binaries and libraries whatever their modes",
    ),
    (
        CAP_SYS_ADMIN,
        "SYS_ADMIN",
        "only where granted: uprobes on kernels that reserve them to it, /proc/PID/map_files, and BPF's and PERFMON's duties before kernel 5.8",
    ),
    (
        CAP_SYSLOG,
        "SYSLOG",
        "only where granted: kernel addresses in /proc/kallsyms where kptr_restrict is 1",
    ),
];

/// The mask of [`KEPT`].
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, (cap, _, _)| m | 1 << cap)
}

/// What [`drop_unneeded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The permitted set before and after.
    pub before: u64,
    pub after: u64,
    /// Threads signalled to drop.
    pub threads: usize,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Makes the calling thread's effective set its permitted set. An agent started as a non-root
/// user gets its capabilities from the executable's file capabilities, set permitted-only
/// (`setcap ...=p`): with the effective bit, the kernel refuses to run the file at all when the
/// container grants fewer than the file names, and which optional ones a node grants varies
/// (the chart's table). Called first in `main`, before any thread exists, so every thread
/// inherits the result. Returns the effective set before and after.
pub fn raise_effective() -> io::Result<(u64, u64)> {
    let mut data = capget()?;
    let before = u64::from(data[0].effective) | u64::from(data[1].effective) << 32;
    for d in &mut data {
        d.effective = d.permitted;
    }
    let after = u64::from(data[0].effective) | u64::from(data[1].effective) << 32;
    if after == before {
        return Ok((before, after));
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData through valid pointers, live for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((before, after))
}

/// The set every thread is to hold (permitted = effective; inheritable empty).
static TARGET: AtomicU64 = AtomicU64::new(0);

/// The calling thread's capability sets (the version 3 layout: low and high 32 bits).
fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (the version 3 layout) through a valid pointer and reads
    // the header, both live for the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// The calling thread's permitted set.
pub(crate) fn permitted() -> io::Result<u64> {
    let data = capget()?;
    Ok(u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32)
}

/// Sets the calling thread's permitted and effective sets to `set`; async-signal-safe.
pub(crate) fn set_thread(set: u64) -> libc::c_long {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let low = set as u32;
    let high = (set >> 32) as u32;
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads the header and two CapData through valid pointers, live for the call.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) }
}

extern "C" fn on_signal(_: libc::c_int) {
    set_thread(TARGET.load(Ordering::SeqCst));
}

/// The signal used to reach every thread: a real-time one nothing else in the agent uses.
fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

/// A capability set from a `/proc/…/status` text: `field` is `CapEff:`, `CapPrm:`, ….
pub fn status_caps(status: &str, field: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix(field))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The permitted sets of this process's threads, by thread id.
fn thread_sets() -> Vec<(i32, u64)> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid: i32 = t.file_name().to_str()?.parse().ok()?;
            let status = fs::read_to_string(t.path().join("status")).ok()?;
            Some((tid, status_caps(&status, "CapPrm:")?))
        })
        .collect()
}

/// Drops every capability outside [`KEPT`] from every thread. Returns what changed; an error
/// when a thread still holds more after a second (then the agent says so and goes on: it is
/// no less safe than before).
pub fn drop_unneeded() -> io::Result<Dropped> {
    let before = permitted()?;
    let target = before & kept_mask();
    if target == before {
        return Ok(Dropped {
            before,
            after: before,
            threads: 0,
        });
    }
    TARGET.store(target, Ordering::SeqCst);
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C" fn(c_int)` that makes one
    // system call; sigemptyset and sigaction get valid pointers.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if set_thread(target) != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getpid and gettid take no arguments.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut signalled = std::collections::HashSet::new();
    loop {
        let holding: Vec<i32> = thread_sets()
            .into_iter()
            .filter(|&(tid, set)| tid != me && set != target)
            .map(|(tid, _)| tid)
            .collect();
        if holding.is_empty() {
            return Ok(Dropped {
                before,
                after: target,
                threads: signalled.len(),
            });
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "threads {holding:?} still hold capabilities after a second"
            )));
        }
        for tid in holding {
            signalled.insert(tid);
            // SAFETY: tgkill takes integers only; a thread gone meanwhile is ESRCH, ignored.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal()) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Capability names by number (linux/capability.h, up to 5.9's CHECKPOINT_RESTORE).
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Capability names of a mask (`CAP_BPF`, …), for logs and metrics.
pub fn names(mask: u64) -> Vec<String> {
    (0..64usize)
        .filter(|&c| mask & (1u64 << c) != 0)
        .map(|c| match NAMES.get(c) {
            Some(name) => format!("CAP_{name}"),
            None => format!("CAP_{c}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child process, since capabilities cannot be had back: the test binary runs this test
    /// again with `LOUPE_DROP_CHILD` set, where the harness's threads and one parked thread
    /// started before the drop all end with the kept set.
    #[test]
    fn every_thread_drops_what_is_not_kept() {
        if std::env::var_os("LOUPE_DROP_CHILD").is_some() {
            let parked = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(500)));
            std::thread::sleep(Duration::from_millis(50));
            let d = drop_unneeded().expect("dropped");
            assert_eq!(d.after, d.before & kept_mask());
            assert!(d.threads >= 1, "{d:?}");
            let sets = thread_sets();
            assert!(sets.len() >= 3, "{sets:?}");
            assert!(sets.iter().all(|(_, s)| *s == d.after), "{sets:x?}");
            parked.join().unwrap();
            println!("every thread dropped");
            return;
        }
        if permitted().unwrap() & !kept_mask() == 0 {
            // Nothing to drop (not root): the privileges end-to-end test covers the chart's set.
            eprintln!("skipped: no capability outside the kept set");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "privileges::tests::every_thread_drops_what_is_not_kept",
                "--exact",
                "--nocapture",
            ])
            .env("LOUPE_DROP_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("every thread dropped"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn names_say_what_is_kept_and_dropped() {
        assert_eq!(
            names(1 << CAP_BPF | 1 << 12),
            vec!["CAP_NET_ADMIN".to_string(), "CAP_BPF".to_string()]
        );
        assert_eq!(kept_mask().count_ones() as usize, KEPT.len());
        for (cap, name, _) in KEPT {
            assert_eq!(NAMES[*cap as usize], *name, "the table's numbers");
        }
    }
}
