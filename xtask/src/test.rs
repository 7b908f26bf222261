//! `cargo xtask test`: every test. Installs what is missing, builds the kernel programs, the release
//! agent and the test workloads, runs the whole workspace's tests (unit tests, eBPF tests on the
//! real kernel, end-to-end tests against real servers), then the kernel matrix (`cargo xtask
//! vm-test`: the same programs on 5.10, 6.1 and 6.12 under QEMU).

use std::process::Command;

use anyhow::bail;

use crate::{
    build::{agent_binary, build},
    setup::Extras,
    util::{exec, is_root, root, step},
};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Skip the kernel matrix (it also is skipped when a test filter is given).
    #[arg(long)]
    pub no_vm: bool,
    /// Passed to `cargo test` after `--` (e.g. a test name filter).
    #[arg(trailing_var_arg = true)]
    pub cargo_test_args: Vec<String>,
}

pub fn test(args: TestArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the eBPF tests load programs into the kernel: run as root (e.g. sudo -E cargo xtask test)"
        );
    }
    build(Extras::Test)?;
    build_workloads()?;
    crate::python::ensure_test_env()?;
    crate::tools::ensure_test_tools()?;
    step("running every test (cargo test --workspace)", || {
        exec(
            Command::new("cargo")
                .current_dir(root())
                .args(["test", "--workspace", "--no-fail-fast"])
                .arg("--")
                .args(&args.cargo_test_args)
                .env("LOUPE_AGENT_BIN", agent_binary())
                .env("LOUPE_WORKLOADS", root().join("target/workloads"))
                .env("LOUPE_PYTHON", crate::python::python())
                .envs(crate::tools::test_env()),
        )
    })?;
    if args.no_vm || !args.cargo_test_args.is_empty() {
        eprintln!("kernel matrix skipped (--no-vm or a test filter)");
        return Ok(());
    }
    crate::vm::vm_test(crate::vm::VmArgs::default())
}

/// `name` split as distributions ship binaries: `stripped` without a symbol table, linking to
/// `.debug/<stripped>.debug` beside it (what `objcopy --only-keep-debug` keeps).
fn split_debug_info(dir: &std::path::Path, name: &str, stripped: &str) -> anyhow::Result<()> {
    let debug_dir = dir.join(".debug");
    std::fs::create_dir_all(&debug_dir)?;
    let debug = debug_dir.join(format!("{stripped}.debug"));
    let bin = dir.join(stripped);
    exec(
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(dir.join(name))
            .arg(&debug),
    )?;
    exec(
        Command::new("objcopy")
            .args([
                "--strip-all",
                &format!("--add-gnu-debuglink={}", debug.display()),
            ])
            .arg(dir.join(name))
            .arg(&bin),
    )
}

/// The profiler's test workloads: a C and a Rust program with two known hot functions, and a C
/// HTTP server with a known function per request (correlation), built with frame pointers; a C
/// and a Rust program with two known call chains, built without (DWARF unwinding).
pub fn build_workloads() -> anyhow::Result<()> {
    step("building the test workloads (target/workloads)", || {
        let out = root().join("target/workloads");
        std::fs::create_dir_all(&out)?;
        let src = root().join("tests/workloads");
        exec(
            Command::new("gcc")
                .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
                .arg(out.join("hot_c"))
                .arg(src.join("hot.c")),
        )?;
        exec(
            Command::new("gcc")
                .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
                .arg(out.join("span_server"))
                .arg(src.join("span_server.c")),
        )?;
        exec(
            Command::new("gcc")
                .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
                .arg(out.join("off_cpu"))
                .arg(src.join("off_cpu.c")),
        )?;
        exec(
            Command::new("gcc")
                .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
                .arg(out.join("page_faults"))
                .arg(src.join("page_faults.c")),
        )?;
        exec(
            Command::new("gcc")
                .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
                .arg(out.join("alloc"))
                .arg(src.join("alloc.c")),
        )?;
        exec(
            Command::new("gcc")
                .args(["-O2", "-o"])
                .arg(out.join("log_flood"))
                .arg(src.join("log_flood.c")),
        )?;
        exec(
            Command::new("rustc")
                .args([
                    "--edition",
                    "2024",
                    "-O",
                    "-g",
                    "-C",
                    "force-frame-pointers=yes",
                    "-o",
                ])
                .arg(out.join("hot_rs"))
                .arg(src.join("hot.rs")),
        )?;
        // Without frame pointers (tests/tests/dwarf_unwind.rs): optimized, as C and Rust release
        // builds usually are, so that only the unwind tables lead back to main.
        exec(
            Command::new("gcc")
                .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
                .arg(out.join("nofp_c"))
                .arg(src.join("nofp.c")),
        )?;
        exec(
            Command::new("rustc")
                .args(["--edition", "2024", "-O", "-g", "-o"])
                .arg(out.join("nofp_rs"))
                .arg(src.join("nofp.rs")),
        )?;
        // Go: the standard library only, no network; its caches stay under target/.
        for program in ["go_fanout", "go_tls"] {
            exec(
                Command::new("go")
                    .args(["build", "-o"])
                    .arg(out.join(program))
                    .arg(src.join(program).join("main.go"))
                    .env("GO111MODULE", "off")
                    // No cgo (net's resolver would link libc): static binaries the VMs run as are.
                    .env("CGO_ENABLED", "0")
                    .env("GOCACHE", root().join("target/go-cache"))
                    .env("GOPATH", root().join("target/go-path"))
                    .env("GOFLAGS", "-buildvcs=false"),
            )?;
        }
        split_debug_info(&out, "hot_c", "hot_c_stripped")
    })?;
    crate::bench_net::build_server().map(drop)
}
