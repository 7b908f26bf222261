//! The one initramfs every kernel boots: busybox, tests/vm/init, the agent and its tests, the
//! workloads, the tools the tests call (curl, nghttp2, openssl, iproute2, iptables) with the shared
//! libraries `ldd` lists, and each kernel's modules; archived as newc cpio.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use super::{E2E_TESTS, VmArgs, cache_dir, kernels::Kernel};
use crate::{
    build::agent_binary,
    util::{exec, output, root},
};

/// Stages the initramfs under target/vm-cache/initramfs and archives it (newc, uncompressed: the
/// guest unpacks it faster than it could gunzip it under TCG).
pub(super) fn build_initramfs(
    e2e: &[PathBuf],
    capture: &Path,
    kernels: &[Kernel],
    args: &VmArgs,
) -> anyhow::Result<PathBuf> {
    let stage = cache_dir().join("initramfs");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    for dir in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "run",
        "var",
        "usr/sbin",
        "loupe/workloads",
    ] {
        std::fs::create_dir_all(stage.join(dir))?;
    }
    let busybox = Path::new("/bin/busybox");
    // ldd fails on a static executable.
    if output(Command::new("ldd").arg(busybox)).is_ok() {
        bail!("/bin/busybox is dynamically linked: install busybox-static");
    }
    copy(busybox, &stage.join("bin/busybox"))?;
    copy(&root().join("tests/vm/init"), &stage.join("init"))?;
    let workloads = root().join("target/workloads");
    let mut binaries = vec![
        (agent_binary(), "loupe/loupe-agent".to_string(), true),
        (capture.to_path_buf(), "loupe/agent-tests".to_string(), true),
    ];
    for (path, name) in e2e.iter().zip(E2E_TESTS) {
        binaries.push((path.clone(), format!("loupe/{name}"), true));
    }
    // HTTP/2 peers for http2_spans' h2c and TLS tests (nghttp2's client and server, curl), and
    // openssl for the TLS tests' certificates (with its configuration below).
    for tool in [
        "/usr/bin/nghttp",
        "/usr/sbin/nghttpd",
        "/usr/bin/curl",
        "/usr/bin/openssl",
    ] {
        let name = Path::new(tool)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(tool);
        binaries.push((PathBuf::from(tool), format!("bin/{name}"), false));
    }
    // tcp_context's two-namespace test: iproute2's ip (busybox's has no `netns`) and iptables
    // (nft), in usr/sbin, ahead of busybox's applets on init's PATH.
    binaries.push((
        PathBuf::from("/usr/bin/ip"),
        "usr/sbin/ip".to_string(),
        false,
    ));
    binaries.push((
        std::fs::canonicalize("/usr/sbin/iptables").context("iptables (cargo xtask setup)")?,
        "usr/sbin/iptables".to_string(),
        false,
    ));
    // util-linux's setpriv (busybox's cannot change the bounding set): the doctor again without
    // CAP_SYS_ADMIN, for the uprobes row.
    binaries.push((
        PathBuf::from("/usr/bin/setpriv"),
        "loupe/setpriv".to_string(),
        false,
    ));
    for workload in [
        "hot_c",
        "hot_rs",
        "http_server",
        "off_cpu",
        "page_faults",
        "alloc",
        "nofp_c",
        "nofp_rs",
        // Static (pure Go, built without cgo), so they run in the initramfs as built.
        "go_fanout",
        "go_tls",
    ] {
        binaries.push((
            workloads.join(workload),
            format!("loupe/workloads/{workload}"),
            false,
        ));
    }
    // `openssl req` reads its configuration from OPENSSLDIR (a symlink into /etc on Debian).
    std::fs::create_dir_all(stage.join("usr/lib/ssl"))?;
    copy(
        &std::fs::canonicalize("/usr/lib/ssl/openssl.cnf")
            .context("openssl's configuration (/usr/lib/ssl/openssl.cnf)")?,
        &stage.join("usr/lib/ssl/openssl.cnf"),
    )?;
    // iptables' extensions (the DNAT target, the tcp match), which it opens at run time.
    let xtables = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    copy_files(xtables, &stage.join(xtables.strip_prefix("/")?))?;
    // /var/run is where older iproute2 and iptables keep their namespaces and lock.
    std::os::unix::fs::symlink("../run", stage.join("var/run"))?;
    // Each kernel's modules, under its release: init loads the running kernel's.
    for kernel in kernels {
        copy_files(
            &kernel.modules,
            &stage.join("lib/modules").join(&kernel.release),
        )?;
    }
    let mut libraries = Vec::new();
    for (from, to, strip) in &binaries {
        let dest = stage.join(to);
        if *strip {
            // The debug sections are most of their size; the workloads keep theirs (they are
            // what the agent symbolizes).
            exec(
                Command::new("strip")
                    .arg("--strip-debug")
                    .arg("-o")
                    .arg(&dest)
                    .arg(from),
            )?;
        } else {
            copy(from, &dest)?;
        }
        for lib in shared_libraries(from)? {
            if !libraries.contains(&lib) {
                libraries.push(lib);
            }
        }
    }
    for lib in &libraries {
        let rel = lib.strip_prefix("/").unwrap_or(lib);
        let dest = stage.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        copy(lib, &dest)?;
    }
    let filter = args.filter.as_deref().unwrap_or("");
    for (what, value) in [
        ("--rust-log", args.rust_log.as_str()),
        ("--filter", filter),
        ("--capture-filter", args.capture_filter.as_str()),
    ] {
        if value.contains(|c: char| !(c.is_ascii_alphanumeric() || "_-=,.:".contains(c))) {
            bail!("{what} {value:?}: only letters, digits and _-=,.: are allowed");
        }
    }
    if args.capture_filter.is_empty() {
        bail!("--capture-filter must not be empty (it would run every unit test of the agent)");
    }
    std::fs::write(
        stage.join("loupe/vm.env"),
        format!(
            "RUST_LOG='{}'\nTEST_FILTER='{filter}'\nCAPTURE_FILTER='{}'\nE2E_TESTS='{}'\n",
            args.rust_log,
            args.capture_filter,
            E2E_TESTS.join(" ")
        ),
    )?;

    let archive = cache_dir().join("initramfs.cpio");
    let mut cpio = Cpio::default();
    cpio.tree(&stage, "")?;
    // init's output needs /dev/console before devtmpfs is mounted.
    cpio.node("dev/console", 0o020600, (5, 1), &[])?;
    let bytes = cpio.finish();
    std::fs::write(&archive, &bytes)
        .with_context(|| format!("cannot write {}", archive.display()))?;
    eprintln!(
        "    {} ({:.1} MB)",
        archive.display(),
        bytes.len() as f64 / 1e6
    );
    Ok(archive)
}

/// Copies a file's content (following symbolic links), keeping its mode.
pub(super) fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// Copies every file of the directory `from` into `to` (created).
fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("{}", from.display()))? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            copy(&path, &to.join(name))?;
        }
    }
    Ok(())
}

/// The shared libraries and the dynamic loader `binary` needs, as `ldd` resolves them.
/// A static executable (the Go workload) needs none.
pub(super) fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = match output(Command::new("ldd").arg(binary)) {
        Ok(out) => out,
        Err(e) if format!("{e:#}").contains("not a dynamic executable") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut libs = Vec::new();
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim(),
            None => line.trim(),
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("{}: {}", binary.display(), line.trim());
        }
    }
    Ok(libs)
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as its initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> anyhow::Result<()> {
        self.inode += 1;
        let name_size = u32::try_from(name.len() + 1)?;
        let file_size = u32::try_from(data.len()).context("file too large for cpio")?;
        let fields = [
            self.inode, mode, 0, 0, 1, 0, file_size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// Adds everything under `dir` as `prefix/...`, directories before their content.
    fn tree(&mut self, dir: &Path, prefix: &str) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let perm = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                self.node(&name, 0o040000 | perm, (0, 0), &[])?;
                self.tree(&path, &format!("{name}/"))?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                let target = target.to_string_lossy();
                self.node(&name, 0o120777, (0, 0), target.as_bytes())?;
            } else if meta.is_file() {
                let data = std::fs::read(&path)?;
                self.node(&name, 0o100000 | perm, (0, 0), &data)?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        let _ = self.node("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}
