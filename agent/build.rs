//! Embeds the kernel programs built by `cargo xtask build` (agent-ebpf/loupe-ebpf, target
//! bpfel-unknown-none). Without them the agent still builds, so `cargo check`, clippy and unit tests
//! work on any machine; such a binary refuses to run and says how to build it properly.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("LOUPE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpf/bpfel-unknown-none/release/loupe-ebpf"));
    println!("cargo:rerun-if-env-changed=LOUPE_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo::rustc-check-cfg=cfg(loupe_ebpf_missing)");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("loupe-ebpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write OUT_DIR/loupe-ebpf.o"),
        Err(_) => {
            println!("cargo:rustc-cfg=loupe_ebpf_missing");
            fs::write(&out, []).expect("write OUT_DIR/loupe-ebpf.o");
        }
    }
}
