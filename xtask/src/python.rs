//! The Python environment of the network-span tests: a virtualenv under target/ with the real
//! client libraries the test service uses (PyMySQL, redis-py), made once and reused.

use std::{path::PathBuf, process::Command};

use crate::util::{exec, root, step, succeeds};

/// Packages the test service imports, pinned to major versions known to work.
const PACKAGES: &[&str] = &["pymysql>=1.1,<2", "redis>=5,<9"];

/// The virtualenv's interpreter.
pub fn python() -> PathBuf {
    root().join("target/pyenv/bin/python")
}

pub fn ensure_test_env() -> anyhow::Result<()> {
    let py = python();
    if succeeds(Command::new(&py).args(["-c", "import pymysql, redis"])) {
        return Ok(());
    }
    step(
        "creating the Python test environment (target/pyenv: PyMySQL, redis-py)",
        || {
            exec(
                Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(root().join("target/pyenv")),
            )?;
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
            )
        },
    )
}
