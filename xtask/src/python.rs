//! The Python environment of the tests: a virtualenv under target/ with the real client libraries
//! the network-span test service uses (PyMySQL, redis-py), gRPC's own Python implementation
//! (grpcio, a real HTTP/2 peer for the gRPC span tests), hyper-h2 (the HTTP/2 state machine of
//! the h2c upgrade test's server, which Debian's nghttpd does not offer) and kubernetes-validate (the Kubernetes
//! API schemas the chart tests validate rendered manifests against), made once and reused.

use std::{path::PathBuf, process::Command};

use crate::util::{exec, root, step, succeeds};

/// Packages the tests use, pinned to version ranges known to work. kubernetes-validate 1.37 ships
/// the schemas of Kubernetes 1.25 to 1.37 (the chart is checked against 1.30 and 1.33); a release
/// drops the oldest versions, hence the upper bound.
const PACKAGES: &[&str] = &[
    "pymysql>=1.1,<2",
    "redis>=5,<9",
    "grpcio>=1.60,<2",
    "h2>=4.1,<5",
    "kubernetes-validate>=1.37,<1.38",
];

fn venv() -> PathBuf {
    root().join("target/pyenv")
}

/// The virtualenv's interpreter.
pub fn python() -> PathBuf {
    venv().join("bin/python")
}

/// The virtualenv's `kubernetes-validate` command.
pub fn kubernetes_validate() -> PathBuf {
    venv().join("bin/kubernetes-validate")
}

fn complete() -> bool {
    succeeds(Command::new(python()).args(["-c", "import pymysql, redis, grpc, h2"]))
        && succeeds(Command::new(kubernetes_validate()).arg("--version"))
}

pub fn ensure_test_env() -> anyhow::Result<()> {
    if complete() {
        return Ok(());
    }
    step(
        "making the Python test environment (target/pyenv: PyMySQL, redis-py, grpcio, h2, kubernetes-validate)",
        || {
            let py = python();
            if !succeeds(Command::new(&py).arg("--version")) {
                exec(Command::new("python3").args(["-m", "venv"]).arg(venv()))?;
            }
            exec(
                Command::new(&py)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                    ])
                    .args(PACKAGES),
            )?;
            if !complete() {
                anyhow::bail!(
                    "target/pyenv still lacks a package after pip install ({}); remove target/pyenv and run `cargo xtask setup` again",
                    PACKAGES.join(" ")
                );
            }
            Ok(())
        },
    )
}
