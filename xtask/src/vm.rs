//! `cargo xtask vm-test`: the kernel matrix. Boots the release agent and its end-to-end tests
//! (profiler, HTTP spans) on the kernels EKS nodes run (5.10, 6.1, 6.12), using Debian's cloud
//! kernels as stand-ins, under `qemu-system-x86_64 -accel tcg` (no KVM needed), and prints a
//! table: kernel × checks.
//!
//! 1. Kernels: `apt-get download` of the newest `linux-image-<series>*-cloud-amd64-unsigned` from
//!    Debian's suites, with a sources list, index and cache of our own under target/vm-cache/apt
//!    (the machine's apt lists are never touched); the vmlinuz is extracted with `dpkg-deb -x` and
//!    cached under target/vm-cache/kernels. When the mirror is unreachable, the newest cached kernel
//!    of each series is used.
//! 2. One initramfs for every kernel (the cloud kernels have the 8250 serial console built in, so
//!    no module is needed): busybox-static, tests/vm/init as /init, the release agent, the test
//!    workloads (hot_c, hot_rs, the HTTP server), the `profiler` and `http_spans` test binaries and
//!    the agent's unit-test binary with the eBPF object embedded (without debug sections), the
//!    shared libraries `ldd` lists and the dynamic loader.
//! 3. Each VM runs `loupe-agent doctor`, the `profiler` and `http_spans` tests one at a time and the
//!    agent's socket-capture tests (`net::capture`: both program sets load, pass the verifier,
//!    capture loopback traffic and agree; fentry/fexit is required where the doctor chose it),
//!    prints `@@loupe ...` result lines on the serial console (qemu's stdout), and powers
//!    off; the host enforces a time limit.
//!
//! The table also goes to target/vm-results.md and, with `--update-readme`, into README.md between
//! `<!-- kernel-matrix:start -->` and `<!-- kernel-matrix:end -->`.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write as _},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    build::{agent_binary, build, ebpf_object},
    setup::Extras,
    test::build_workloads,
    util::{exec, output, root, step},
};

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Kernel series to boot.
    #[arg(long, default_value = "all", value_parser = ["5.10", "6.1", "6.12", "all"])]
    pub kernel: String,
    /// Time limit per VM, in seconds (boot, doctor and the whole test suite). The suite takes
    /// about 220 s on 5.10 under TCG: the limit catches a hung VM, not a slow one.
    #[arg(long, default_value_t = 420)]
    pub timeout: u64,
    /// RUST_LOG inside the VM (`debug` makes the agent print verifier logs).
    #[arg(long, default_value = "info")]
    pub rust_log: String,
    /// Run only the end-to-end tests (profiler, HTTP spans) whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Run only the agent's unit tests whose full name contains this (e.g.
    /// `net::capture::tests::captures_tcp`).
    #[arg(long, default_value = CAPTURE_TESTS)]
    pub capture_filter: String,
    /// Use KVM (`-accel kvm -cpu host`) instead of TCG emulation.
    #[arg(long)]
    pub kvm: bool,
    /// Replace the kernel-matrix section of README.md with this run's table (needs `--kernel all`).
    #[arg(long)]
    pub update_readme: bool,
}

impl Default for VmArgs {
    /// What `cargo xtask vm-test` does without options (and `cargo xtask test` runs).
    fn default() -> Self {
        VmArgs {
            kernel: "all".into(),
            timeout: 420,
            rust_log: "info".into(),
            filter: None,
            capture_filter: CAPTURE_TESTS.into(),
            kvm: false,
            update_readme: false,
        }
    }
}

/// A kernel series and where Debian ships it.
struct Series {
    /// What `--kernel` and the table call it.
    name: &'static str,
    /// Package names are `<prefix><N>[+<tag>]-cloud-amd64-unsigned`, newest = highest N.
    prefix: &'static str,
}

const SERIES: &[Series] = &[
    // bullseye, bullseye-security: Amazon Linux 2's kernel line.
    Series {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
    },
    // bookworm, bookworm-security: AL2023's first kernel line.
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
    },
    // bookworm-backports, bookworm-security: AL2023's newer kernel line.
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
    },
];
const PACKAGE_SUFFIX: &str = "-cloud-amd64-unsigned";

/// The suites the kernels come from; `target=Packages` skips the indexes apt would add by default
/// (DEP-11 and so on).
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bookworm-backports main
";

/// Prefix of the lines tests/vm/init prints for the host.
const MARK: &str = "@@loupe ";
/// The agent's unit tests the VMs run: the socket capture programs on the real kernel.
const CAPTURE_TESTS: &str = "net::capture";
const README_START: &str = "<!-- kernel-matrix:start -->";
const README_END: &str = "<!-- kernel-matrix:end -->";
/// Doctor rows shown in the table: (row label, the doctor's FEATURE column prefix).
const FEATURES: &[(&str, &str)] = &[
    ("BTF", "BTF"),
    ("fentry/fexit", "fentry/fexit"),
    ("kprobes", "kprobes"),
    ("tracepoints", "tracepoints"),
    ("uprobes", "uprobes"),
    ("BPF ring buffer", "BPF ring buffer"),
    ("TCP options", "TCP header options"),
];

fn cache_dir() -> PathBuf {
    root().join("target/vm-cache")
}

pub fn vm_test(args: VmArgs) -> anyhow::Result<()> {
    if args.update_readme && args.kernel != "all" {
        bail!("--update-readme needs the whole matrix (--kernel all)");
    }
    let started = Instant::now();
    let series: Vec<&Series> = SERIES
        .iter()
        .filter(|s| args.kernel == "all" || args.kernel == s.name)
        .collect();
    build(Extras::Vm)?;
    build_workloads()?;
    let e2e = step("building the end-to-end test binaries", build_e2e_tests)?;
    let capture = step(
        "building the agent's unit-test binary (socket capture tests)",
        build_agent_tests,
    )?;
    let kernels = step("fetching the kernels (target/vm-cache)", || {
        fetch_kernels(&series)
    })?;
    let initramfs = step("building the initramfs", || {
        build_initramfs(&e2e, &capture, &args)
    })?;

    let mut results = Vec::new();
    for kernel in &kernels {
        let boot = || {
            run_vm(
                kernel,
                &initramfs,
                Duration::from_secs(args.timeout),
                args.kvm,
            )
        };
        let mut result = step(
            &format!("booting {} ({})", kernel.series, kernel.package),
            boot,
        )?;
        // Two failures of the emulator, not of the kernel or Loupe, get one more boot: a VM that
        // stops making progress (a soft lockup of the emulated CPUs, seen once in many runs), and
        // an `Oops: int3` (a breakpoint the kernel plants while it patches its own text, hit by
        // another emulated CPU: QEMU's TCG does not order cross-modifying code as hardware does;
        // seen in do_user_addr_fault and __schedule). The table says so; a failure past the
        // retries, or any failed check, still fails the matrix.
        // The int3 race struck 6.12 in two matrix runs of three (December 2026), so it gets two
        // more boots; a timeout gets one.
        let logs = cache_dir().join("logs");
        let log = logs.join(format!("{}.log", kernel.series));
        for attempt in 1..=2 {
            let int3 = !result.done
                && std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Oops: int3"));
            let why = if result.timed_out && attempt == 1 {
                Some(("timed out", "timed-out"))
            } else if int3 {
                Some(("hit an Oops: int3 (kernel text patching under TCG)", "int3"))
            } else {
                None
            };
            let Some((reason, tag)) = why else { break };
            let kept = logs.join(format!("{}.{tag}-{attempt}.log", kernel.series));
            let _ = std::fs::rename(&log, &kept);
            eprintln!(
                "    [{}] {reason}; booting once more (console log: {})",
                kernel.series,
                kept.display()
            );
            result = step(
                &format!("booting {} again: the last boot {reason}", kernel.series),
                boot,
            )?;
            result.retried_after = Some(reason);
        }
        results.push(result);
    }

    let table = render_table(&results);
    eprintln!("\n{table}");
    let report = format!(
        "# Kernel matrix\n\nGenerated by `cargo xtask vm-test`.\n\n{}",
        table
    );
    let results_file = root().join("target/vm-results.md");
    std::fs::write(&results_file, report)
        .with_context(|| format!("cannot write {}", results_file.display()))?;
    eprintln!("table written to {}", results_file.display());
    let passed = results.iter().all(|r| r.failures().is_empty());
    if args.update_readme && passed {
        update_readme(&table)?;
        eprintln!("README.md's kernel matrix updated");
    } else if args.update_readme {
        eprintln!("README.md left as it was: the matrix did not pass");
    }
    eprintln!(
        "kernel matrix took {:.0}s in all",
        started.elapsed().as_secs_f64()
    );

    let failures: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.failures()
                .into_iter()
                .map(|f| format!("{}: {f}", r.series))
        })
        .collect();
    if !failures.is_empty() {
        bail!(
            "kernel matrix failed:\n  {}\n(serial console logs in {})",
            failures.join("\n  "),
            cache_dir().join("logs").display()
        );
    }
    Ok(())
}

/// End-to-end test binaries of loupe-tests the VMs run: what each needs is in the initramfs (the
/// spans test, with its databases and Python, is not; nor is tcp_context's namespace test, which
/// tests/vm/init skips).
const E2E_TESTS: &[&str] = &[
    "profiler",
    "http_spans",
    "tcp_context",
    "off_cpu",
    "page_faults",
    "alloc_profiles",
    "http2_spans",
    "go_spans",
    "tls_spans",
    "dwarf_unwind",
];

/// Builds the end-to-end test binaries the VMs run and returns their paths, in E2E_TESTS order.
fn build_e2e_tests() -> anyhow::Result<Vec<PathBuf>> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["test", "-p", "loupe-tests", "--no-run"]);
    for test in E2E_TESTS {
        cmd.args(["--test", test]);
    }
    let out = output(cmd.args(["--message-format=json", "--quiet"]))?;
    E2E_TESTS
        .iter()
        .map(|name| test_executable(&out, name))
        .collect()
}

/// Builds the agent's unit-test binary with the kernel programs embedded (the socket capture
/// tests load them) and returns its path.
fn build_agent_tests() -> anyhow::Result<PathBuf> {
    let out = output(
        Command::new("cargo")
            .current_dir(root())
            .args([
                "test",
                "-p",
                "loupe-agent",
                "--bin",
                "loupe-agent",
                "--no-run",
            ])
            .args(["--message-format=json", "--quiet"])
            .env("LOUPE_EBPF_OBJECT", ebpf_object()),
    )?;
    test_executable(&out, "loupe-agent")
}

/// The executable of the test target `name` in cargo's JSON messages.
fn test_executable(messages: &str, name: &str) -> anyhow::Result<PathBuf> {
    messages
        .lines()
        .filter(|l| {
            l.contains(r#""reason":"compiler-artifact""#)
                && l.contains(&format!(r#""name":"{name}""#))
                && l.contains(r#""test":true"#)
        })
        .find_map(|l| json_string(l, "executable"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo printed no test executable for {name}"))
}

/// The string value of `"key":"..."` in one line of cargo's JSON (paths have no escapes).
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(line[start..start + len].to_string())
}

/// A kernel ready to boot.
struct Kernel {
    series: &'static str,
    /// `<package>_<version>`.
    package: String,
    vmlinuz: PathBuf,
}

/// Runs apt with our own sources list, index and cache under target/vm-cache/apt.
fn apt(tool: &str) -> anyhow::Result<Command> {
    let dir = cache_dir().join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let list = dir.join("sources.list");
    std::fs::write(&list, SOURCES).with_context(|| format!("cannot write {}", list.display()))?;
    let mut cmd = Command::new(tool);
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    cmd.args(["-q", "-o"])
        .arg(opt("Dir::Etc::SourceList", &list))
        .arg("-o")
        .arg(opt("Dir::Etc::SourceParts", &dir.join("sources.list.d")))
        .arg("-o")
        .arg(opt("Dir::State::Lists", &dir.join("lists")))
        .arg("-o")
        .arg(opt("Dir::Cache", &dir.join("cache")))
        // Downloads land in our own directories, which apt's unprivileged _apt user cannot write.
        .args(["-o", "APT::Sandbox::User=root"]);
    Ok(cmd)
}

/// The newest kernel of each series, downloaded and extracted once.
fn fetch_kernels(series: &[&Series]) -> anyhow::Result<Vec<Kernel>> {
    let online = match apt("apt-get").and_then(|mut c| output(c.arg("update"))) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("    cannot refresh the kernel index, using cached kernels: {e:#}");
            false
        }
    };
    let names = if online {
        output(apt("apt-cache")?.args(["pkgnames", "linux-image-"]))?
    } else {
        String::new()
    };
    let mut kernels = Vec::new();
    for s in series {
        let kernel = if online {
            fetch_newest(s, &names)?
        } else {
            newest_cached(s)?
        };
        eprintln!("    {}: {}", s.name, kernel.package);
        kernels.push(kernel);
    }
    Ok(kernels)
}

/// The leading number of a package name in `series` (its ABI or patch level), or None.
fn package_rank(series: &Series, name: &str) -> Option<u64> {
    let middle = name
        .strip_prefix(series.prefix)?
        .strip_suffix(PACKAGE_SUFFIX)?;
    let (number, tag) = middle.split_once('+').unwrap_or((middle, ""));
    if tag.contains(|c: char| !c.is_ascii_alphanumeric()) {
        return None;
    }
    number.parse().ok()
}

fn fetch_newest(series: &Series, names: &str) -> anyhow::Result<Kernel> {
    let mut candidates: Vec<(u64, &str)> = names
        .lines()
        .filter_map(|n| Some((package_rank(series, n.trim())?, n.trim())))
        .collect();
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    if candidates.is_empty() {
        bail!("no {}*{PACKAGE_SUFFIX} package in the index", series.prefix);
    }
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut errors = Vec::new();
    // The mirror can lag its own index: fall back to older packages of the series.
    for (_, package) in candidates.iter().take(4) {
        let policy = output(apt("apt-cache")?.args(["policy", package]))?;
        let version = policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .with_context(|| format!("no candidate version of {package}"))?
            .to_string();
        let id = format!("{package}_{version}");
        if let Some(kernel) = cached(series, &id) {
            return Ok(kernel);
        }
        match output(
            apt("apt-get")?
                .current_dir(&debs)
                .args(["download", package]),
        ) {
            Ok(_) => {}
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        }
        let file_version = version.replace(':', "%3a");
        let deb = debs.join(format!("{package}_{file_version}_amd64.deb"));
        let kernels = cache_dir().join("kernels");
        std::fs::create_dir_all(&kernels)?;
        let dest = kernels.join(&id);
        let partial = kernels.join(format!("{id}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        // Only the kernel image is needed: the serial console is built in.
        let boot = partial.join("boot");
        for entry in std::fs::read_dir(&boot)? {
            let path = entry?.path();
            let keep = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"));
            if !keep {
                std::fs::remove_file(&path)?;
            }
        }
        for sub in ["lib", "usr", "etc"] {
            let _ = std::fs::remove_dir_all(partial.join(sub));
        }
        std::fs::rename(&partial, &dest)?;
        std::fs::remove_file(&deb)?;
        return cached(series, &id).with_context(|| format!("{package} has no /boot/vmlinuz-*"));
    }
    bail!(
        "cannot download any {}*{PACKAGE_SUFFIX}:\n{}",
        series.prefix,
        errors.join("\n")
    )
}

/// The extracted kernel `id` (`<package>_<version>`) if it is in the cache.
fn cached(series: &Series, id: &str) -> Option<Kernel> {
    let boot = cache_dir().join("kernels").join(id).join("boot");
    let vmlinuz = std::fs::read_dir(boot)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })?;
    Some(Kernel {
        series: series.name,
        package: id.to_string(),
        vmlinuz,
    })
}

fn newest_cached(series: &Series) -> anyhow::Result<Kernel> {
    let dir = cache_dir().join("kernels");
    let mut ids: Vec<(u64, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            if id.ends_with(".partial") {
                return None;
            }
            let package = id.split_once('_')?.0;
            Some((package_rank(series, package)?, id))
        })
        .collect();
    ids.sort_unstable();
    ids.iter()
        .rev()
        .find_map(|(_, id)| cached(series, id))
        .with_context(|| format!("no cached {} kernel in {}", series.name, dir.display()))
}

/// Stages the initramfs under target/vm-cache/initramfs and archives it (newc, uncompressed: the
/// guest unpacks it faster than it could gunzip it under TCG).
fn build_initramfs(e2e: &[PathBuf], capture: &Path, args: &VmArgs) -> anyhow::Result<PathBuf> {
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
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// The shared libraries and the dynamic loader `binary` needs, as `ldd` resolves them.
/// A static executable (the Go workload) needs none.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
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

/// What one VM reported.
#[derive(Default)]
struct VmResult {
    series: &'static str,
    package: String,
    release: Option<String>,
    doctor_rc: Option<i32>,
    doctor: Vec<String>,
    /// End-to-end tests (profiler, HTTP spans, TCP option): (test name, `ok` / `FAILED` /
    /// `ignored` / `skipped`).
    tests: Vec<(String, String)>,
    e2e_rc: Option<i32>,
    /// The agent's socket-capture tests: (full test name, `ok` / `FAILED` / `ignored` / `skipped`).
    capture_tests: Vec<(String, String)>,
    /// (full test name, why) of the tests the VM skips with `--skip`.
    skip_reasons: Vec<(String, String)>,
    capture_rc: Option<i32>,
    /// After `capture-begin`, `test` lines are the capture tests'.
    in_capture: bool,
    /// Whether the VM has `::1` on `lo` (the TCP capture test's IPv6 half needs it).
    ipv6_loopback: Option<bool>,
    /// The doctor's uprobes verdict without CAP_SYS_ADMIN (`yes`, `no`): whether this kernel
    /// lets the chart's default capabilities create uprobes.
    uprobes_without_sys_admin: Option<String>,
    done: bool,
    timed_out: bool,
    /// This boot was not the first: why the one before failed (its console log is kept apart).
    retried_after: Option<&'static str>,
    seconds: f64,
    warnings: Vec<String>,
}

impl VmResult {
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.timed_out {
            out.push(format!("timed out after {:.0}s", self.seconds));
        } else if !self.done {
            out.push("the VM stopped before the suite finished (kernel panic?)".into());
        }
        match self.doctor_rc {
            Some(0) => {}
            Some(rc) => out.push(format!("loupe-agent doctor exited {rc}")),
            None if self.done => out.push("loupe-agent doctor did not run".into()),
            None => {}
        }
        let passed = |s: &str| matches!(s, "ok" | "ignored" | "skipped");
        for (name, status) in &self.tests {
            if !passed(status) {
                out.push(format!("test {name}: {status}"));
            }
        }
        if self.done && !self.tests.iter().any(|(_, s)| s != "skipped") {
            out.push("no end-to-end test ran".into());
        }
        let failed_test = self.tests.iter().any(|(_, s)| !passed(s));
        if let Some(rc) = self.e2e_rc.filter(|rc| *rc != 0 && !failed_test) {
            out.push(format!("the end-to-end tests exited {rc}"));
        }

        for (name, status) in &self.capture_tests {
            if !passed(status) {
                out.push(format!("capture test {name}: {status}"));
            }
        }
        match self.capture_rc {
            None if self.done => out.push("the socket capture tests did not run".into()),
            Some(rc) if rc != 0 && self.capture_tests.iter().all(|(_, s)| passed(s)) => {
                out.push(format!("the socket capture tests exited {rc}"));
            }
            _ => {}
        }
        if self.done && !self.capture_tests.iter().any(|(_, s)| s != "skipped") {
            out.push("no socket capture test ran".into());
        }
        out
    }

    /// The doctor's AVAILABLE column (`yes` or `no`) for the row starting with `feature`; the
    /// column starts where the header's `AVAILABLE` does.
    fn feature(&self, feature: &str) -> String {
        let column = self
            .doctor
            .iter()
            .find(|l| l.starts_with("FEATURE"))
            .and_then(|header| header.find("AVAILABLE"));
        let value = column.and_then(|column| {
            self.doctor
                .iter()
                .find(|l| l.starts_with(feature))
                .and_then(|row| row.get(column..))
        });
        match value {
            Some(v) if v.starts_with("yes") => "yes".into(),
            Some(v) if v.starts_with("no") => "no".into(),
            _ => "?".into(),
        }
    }

    /// The value of a `Label: value` line of the doctor's summary.
    fn summary(&self, label: &str) -> String {
        self.doctor
            .iter()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.strip_prefix(": "))
            .map(|v| v.split(" (").next().unwrap_or(v).to_string())
            .unwrap_or_else(|| "?".into())
    }

    fn parse(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix(MARK) else {
            return;
        };
        let (word, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "kernel" => self.release = Some(value.to_string()),
            "doctor-end" => self.doctor_rc = value.trim().parse().ok(),
            "e2e-end" => self.e2e_rc = value.trim().parse().ok(),
            "capture-begin" => self.in_capture = true,
            "capture-end" => self.capture_rc = value.trim().parse().ok(),
            "ipv6-loopback" => self.ipv6_loopback = Some(value.trim() == "yes"),
            "uprobes-without-sys-admin" => {
                self.uprobes_without_sys_admin = Some(value.trim().to_string())
            }
            "test" => {
                if let Some((name, status)) = value.rsplit_once(' ') {
                    let tests = if self.in_capture {
                        &mut self.capture_tests
                    } else {
                        &mut self.tests
                    };
                    tests.push((name.to_string(), status.to_string()));
                }
            }
            "skip" => {
                let (name, why) = value.split_once(' ').unwrap_or((value, ""));
                let tests = if self.in_capture {
                    &mut self.capture_tests
                } else {
                    &mut self.tests
                };
                tests.push((name.to_string(), "skipped".to_string()));
                self.skip_reasons
                    .push((name.to_string(), why.trim().to_string()));
            }
            "warn" => self.warnings.push(value.to_string()),
            "done" => self.done = true,
            _ => {}
        }
    }
}

fn run_vm(
    kernel: &Kernel,
    initramfs: &Path,
    limit: Duration,
    kvm: bool,
) -> anyhow::Result<VmResult> {
    let logs = cache_dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{}.log", kernel.series));
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;

    let mut cmd = Command::new("qemu-system-x86_64");
    // Plain emulation unless asked: a /dev/kvm that opens can still fail at the first instruction
    // (nested virtualization), which would only show as a timeout.
    if kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    cmd.args(["-m", "1024", "-smp", "2"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().context("cannot start qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf);
                let _ = tx.send(line.trim_end_matches(['\r', '\n']).to_string());
                buf.clear();
            }
        }));
    }
    drop(tx);

    let mut result = VmResult {
        series: kernel.series,
        package: kernel.package.clone(),
        ..VmResult::default()
    };
    let deadline = started + limit;
    let mut in_doctor = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("    [{}] {line}", kernel.series);
                writeln!(log, "{line}")?;
                if line.starts_with("@@loupe doctor-begin") {
                    in_doctor = true;
                } else if line.starts_with("@@loupe doctor-end") {
                    in_doctor = false;
                } else if in_doctor {
                    result.doctor.push(line.clone());
                }
                result.parse(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                result.timed_out = true;
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().context("cannot wait for qemu")?;
    for reader in readers {
        let _ = reader.join();
    }
    result.seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "    [{}] qemu exited ({status}) after {:.1}s",
        kernel.series, result.seconds
    );
    Ok(result)
}

fn render_table(results: &[VmResult]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let cell = |f: &dyn Fn(&VmResult) -> String| results.iter().map(f).collect::<Vec<_>>();
    let pass = |ok: bool| if ok { "pass" } else { "**FAIL**" }.to_string();
    rows.push((
        "kernel (Debian version)".into(),
        cell(&|r| {
            let version = r.package.split_once('_').map_or("?", |(_, v)| v);
            let release = r.release.as_deref().unwrap_or("?");
            format!("{release} ({version})")
        }),
    ));
    rows.push((
        "boots, suite completes".into(),
        cell(&|r| {
            if r.timed_out {
                "**TIMEOUT**".into()
            } else if let (Some(why), true) = (r.retried_after, r.done) {
                format!("pass (booted again: a boot {why})")
            } else {
                pass(r.done)
            }
        }),
    ));
    rows.push((
        "`loupe-agent doctor` exits 0".into(),
        cell(&|r| pass(r.doctor_rc == Some(0))),
    ));
    for (label, prefix) in FEATURES {
        rows.push((label.to_string(), cell(&|r| r.feature(prefix))));
    }
    rows.push((
        "uprobes without CAP_SYS_ADMIN (the chart's default)".into(),
        cell(&|r| match r.uprobes_without_sys_admin.as_deref() {
            Some("yes") => "yes".into(),
            Some("no") => {
                "no: TLS in clear, Go goroutines, allocation profiles need SYS_ADMIN".into()
            }
            _ => "?".into(),
        }),
    ));
    rows.push((
        "socket capture chosen".into(),
        cell(&|r| r.summary("Socket capture method (network spans)")),
    ));
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        for (name, _) in &r.tests {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    for name in names {
        rows.push((
            format!("test `{name}`"),
            cell(&|r| match r
                .tests
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.as_str())
            {
                Some("ok") => "pass".into(),
                Some("ignored") => "ignored".into(),
                Some(other) => format!("**{other}**"),
                None => "not run".into(),
            }),
        ));
    }
    rows.push((
        "IPv6 loopback (`::1`)".into(),
        cell(&|r| match r.ipv6_loopback {
            Some(true) => "yes".into(),
            Some(false) => "no: IPv6 half of the TCP capture test skipped".into(),
            None => "?".into(),
        }),
    ));
    let mut capture_names: Vec<&str> = Vec::new();
    for r in results {
        for (name, _) in &r.capture_tests {
            if !capture_names.contains(&name.as_str()) {
                capture_names.push(name);
            }
        }
    }
    for name in capture_names {
        let short = name.rsplit("::").next().unwrap_or(name);
        rows.push((
            format!("socket capture test `{short}`"),
            cell(&|r| {
                let status = r
                    .capture_tests
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| s.as_str());
                match status {
                    Some("ok") => "pass".into(),
                    Some("ignored") => "ignored".into(),
                    Some("skipped") => {
                        let why = r
                            .skip_reasons
                            .iter()
                            .find(|(n, _)| n == name)
                            .map_or("", |(_, w)| w.as_str());
                        if why.is_empty() {
                            "skipped".into()
                        } else {
                            format!("skipped: {why}")
                        }
                    }
                    Some(other) => format!("**{other}**"),
                    None => "not run".into(),
                }
            }),
        ));
    }
    rows.push((
        "VM wall time".into(),
        cell(&|r| format!("{:.0} s", r.seconds)),
    ));

    let mut out = String::from("| check |");
    for r in results {
        let _ = write!(out, " {} |", r.series);
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(results.len()));
    out.push('\n');
    for (label, cells) in rows {
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    out
}

fn update_readme(table: &str) -> anyhow::Result<()> {
    let path = root().join("README.md");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(start), Some(end)) = (text.find(README_START), text.find(README_END)) else {
        bail!("README.md has no {README_START} … {README_END} section");
    };
    if end < start {
        bail!("README.md: {README_END} comes before {README_START}");
    }
    let section = format!(
        "{README_START}\n{}\n{table}{README_END}",
        "Generated by `cargo xtask vm-test --update-readme`: Debian's cloud kernels, stand-ins for the\n\
         EKS node images' kernels, booted under QEMU (TCG).\n"
    );
    let updated = format!(
        "{}{section}{}",
        &text[..start],
        &text[end + README_END.len()..]
    );
    std::fs::write(&path, updated).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_arguments_match_the_command_line_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            vm: VmArgs,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["vm-test"]).unwrap();
        assert_eq!(
            format!("{:?}", parsed.vm),
            format!("{:?}", VmArgs::default())
        );
    }

    #[test]
    fn package_names_are_ranked_within_their_series() {
        let s = |name| SERIES.iter().find(|s| s.name == name).unwrap();
        assert_eq!(
            package_rank(s("5.10"), "linux-image-5.10.0-46-cloud-amd64-unsigned"),
            Some(46)
        );
        assert_eq!(
            package_rank(s("6.1"), "linux-image-6.1.0-56-cloud-amd64-unsigned"),
            Some(56)
        );
        // bullseye's backport of 6.1 is not bookworm's kernel.
        assert_eq!(
            package_rank(
                s("6.1"),
                "linux-image-6.1.0-0.deb11.52-cloud-amd64-unsigned"
            ),
            None
        );
        assert_eq!(
            package_rank(s("6.12"), "linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            Some(117)
        );
        assert_eq!(
            package_rank(s("6.1"), "linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(
            package_rank(s("6.12"), "linux-image-6.12.117+deb12-amd64-unsigned"),
            None
        );
    }

    #[test]
    fn serial_lines_and_doctor_rows_are_parsed() {
        let mut r = VmResult::default();
        for line in [
            "@@loupe kernel 6.1.0-56-cloud-amd64",
            "@@loupe doctor-end 0",
            "@@loupe test c_workload_hot_functions_come_out_three_to_one ok",
            "@@loupe test a_process_that_exits FAILED",
            "@@loupe e2e-end 101",
            "@@loupe ipv6-loopback yes",
            "@@loupe uprobes-without-sys-admin no",
            "@@loupe capture-begin",
            "@@loupe capture-end 0",
            "@@loupe test net::capture::tests::captures_tcp_syscalls_on_the_real_kernel ok",
            "@@loupe skip net::capture::tests::skips_the_agent no python3 in the VM",
            "[   37.495697] reboot: Power down",
            "@@loupe done",
        ] {
            r.parse(line);
        }
        r.doctor = vec![
            "Loupe doctor — kernel 6.1.0-56-cloud-amd64".into(),
            "FEATURE                                   AVAILABLE  USED FOR".into(),
            "BTF (/sys/kernel/btf/vmlinux)             yes  fentry attach; CO-RE programs".into(),
            "fentry/fexit                              no (load failed: Operation not permitted (os ...  fastest".into(),
            "kprobes                                   yes  socket capture when fentry is missing".into(),
            "Socket capture method (network spans): fentry".into(),
        ];
        assert_eq!(r.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(r.doctor_rc, Some(0));
        assert_eq!(r.tests.len(), 2);
        assert_eq!(r.ipv6_loopback, Some(true));
        assert_eq!(r.uprobes_without_sys_admin.as_deref(), Some("no"));
        assert_eq!(r.capture_rc, Some(0));
        assert_eq!(
            r.capture_tests,
            [
                (
                    "net::capture::tests::captures_tcp_syscalls_on_the_real_kernel".to_string(),
                    "ok".to_string()
                ),
                (
                    "net::capture::tests::skips_the_agent".to_string(),
                    "skipped".to_string()
                ),
            ]
        );
        assert_eq!(r.skip_reasons[0].1, "no python3 in the VM");
        assert!(r.done);
        assert_eq!(r.feature("fentry/fexit"), "no");
        assert_eq!(r.feature("kprobes"), "yes");
        assert_eq!(r.feature("BTF"), "yes");
        assert_eq!(r.feature("uprobes"), "?");
        assert_eq!(r.summary("Socket capture method (network spans)"), "fentry");
        let failures = r.failures();
        assert_eq!(failures, ["test a_process_that_exits: FAILED"]);

        // Only skipped capture tests, or a capture run that never finished, is a failure.
        r.capture_tests.retain(|(_, s)| s == "skipped");
        r.capture_rc = None;
        assert_eq!(
            r.failures()[1..],
            [
                "the socket capture tests did not run",
                "no socket capture test ran"
            ]
        );
        let table = render_table(&[r]);
        assert!(
            table.contains(
                "| socket capture test `skips_the_agent` | skipped: no python3 in the VM |"
            ),
            "{table}"
        );
    }

    #[test]
    fn cargo_json_gives_the_executable() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"profiler"},"executable":"/w/target/debug/deps/profiler-ab12","fresh":true}"#;
        assert_eq!(
            json_string(line, "executable").as_deref(),
            Some("/w/target/debug/deps/profiler-ab12")
        );
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"loupe-agent"},"profile":{"test":false},"executable":"/w/target/debug/loupe-agent","fresh":true}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"loupe-agent"},"profile":{"test":true},"executable":"/w/target/debug/deps/loupe_agent-cd34","fresh":true}"#,
        ]
        .join("\n");
        assert_eq!(
            test_executable(&messages, "loupe-agent").unwrap(),
            Path::new("/w/target/debug/deps/loupe_agent-cd34")
        );
    }
}
