//! A memory cgroup made by a test: a memory limit for a process it starts, and whether the
//! kernel OOM-killed anything in it. cgroup v2 where its memory controller is enabled (a child of
//! the root cgroup), else cgroup v1's memory hierarchy (a child of this process's own group).
//! Removed when dropped.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

pub struct MemoryCgroup {
    pub dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// A new group named `name` (made unique with this process's id) limited to `limit` bytes,
    /// swap included.
    pub fn create(name: &str, limit: u64) -> MemoryCgroup {
        let name = format!("{name}-{}", std::process::id());
        let v2_root = Path::new("/sys/fs/cgroup");
        let v2 = std::fs::read_to_string(v2_root.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
        if v2 {
            let dir = v2_root.join(&name);
            std::fs::create_dir_all(&dir).expect("create a cgroup v2 group");
            std::fs::write(dir.join("memory.max"), limit.to_string()).expect("memory.max");
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            MemoryCgroup { dir, v2 }
        } else {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .expect("/proc/self/cgroup")
                .lines()
                .find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    controllers
                        .split(',')
                        .any(|c| c == "memory")
                        .then(|| path.trim_start_matches('/').to_string())
                })
                .expect("no cgroup v2 memory controller and no v1 memory hierarchy");
            let dir = Path::new("/sys/fs/cgroup/memory").join(own).join(&name);
            std::fs::create_dir_all(&dir).expect("create a cgroup v1 memory group");
            std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())
                .expect("memory.limit_in_bytes");
            // Absent without swap accounting; with it, swap cannot stretch the limit.
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
            MemoryCgroup { dir, v2 }
        }
    }

    /// Makes `cmd`'s process join the group before it execs, so that all it ever allocates is
    /// charged there.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::unix::ffi::OsStrExt;
        let procs = std::ffi::CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes())
            .expect("a path without NUL");
        let join = move || {
            // SAFETY: runs in the child between fork and exec, where only async-signal-safe calls
            // are allowed: open, write and close on a C string made before the fork; nothing is
            // allocated.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: `join` is async-signal-safe (see above).
        unsafe {
            cmd.pre_exec(join);
        }
    }

    /// Processes the kernel's OOM killer killed in the group.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill ")
        } else {
            ("memory.oom_control", "oom_kill ")
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The most the group was ever charged, in bytes (page cache included).
    pub fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A group can go once its processes have; they may take a moment to be reaped.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
