//! `cargo xtask build`: the kernel programs (bpfel-unknown-none, Debian's toolchain), then the
//! release agent with them embedded, at target/release/loupe-agent.

use std::{path::PathBuf, process::Command};

use crate::{
    setup::{BPF_TOOLCHAIN, Extras, bpf_linker, setup},
    util::{exec, root, step},
};

/// Where the kernel object lands.
pub fn ebpf_object() -> PathBuf {
    root().join("target/bpf/bpfel-unknown-none/release/loupe-ebpf")
}

pub fn agent_binary() -> PathBuf {
    root().join("target/release/loupe-agent")
}

/// Environment the outer `cargo xtask` leaves behind that must not leak into the inner builds.
const CARGO_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTDOC",
    "RUSTUP_TOOLCHAIN",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
];

pub fn build(extras: Extras) -> anyhow::Result<()> {
    setup(extras)?;
    build_ebpf()?;
    build_agent()
}

pub fn build_ebpf() -> anyhow::Result<()> {
    step(
        "building the kernel programs (agent-ebpf/loupe-ebpf)",
        || {
            let linker_dir = bpf_linker()?
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default();
            let path = format!(
                "{}:{}",
                linker_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let mut cmd = Command::new("cargo");
            for var in CARGO_ENV {
                cmd.env_remove(var);
            }
            exec(
                cmd.current_dir(root().join("agent-ebpf/loupe-ebpf"))
                    .arg(format!("+{BPF_TOOLCHAIN}"))
                    .args(["build", "--release"])
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback")
                    .env("CARGO_TARGET_DIR", root().join("target/bpf"))
                    .env("PATH", path),
            )
        },
    )
}

pub fn build_agent() -> anyhow::Result<()> {
    step(
        "building the release agent (target/release/loupe-agent)",
        || {
            exec(
                Command::new("cargo")
                    .current_dir(root())
                    .args(["build", "--release", "-p", "loupe-agent"])
                    .env("LOUPE_EBPF_OBJECT", ebpf_object()),
            )
        },
    )
}
