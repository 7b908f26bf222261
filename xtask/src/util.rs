//! Small helpers shared by the tasks: running commands with a clear error, locating the workspace,
//! printing progress.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs `cmd`, inheriting stdio; an error names the command and its exit status.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; failures name the command.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `cmd` runs and succeeds (its output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// A step with a heading and its duration, for long tasks.
pub fn step<T>(title: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("==> {title}");
    let started = Instant::now();
    let result = f().with_context(|| format!("step failed: {title}"));
    if result.is_ok() {
        eprintln!("    done in {:.1}s", started.elapsed().as_secs_f64());
    }
    result
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Waits up to 20 s for something to listen on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

/// The body (with its headers) of `GET path` on 127.0.0.1:`port`: an agent's `/metrics`.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: loupe\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// Asks a child to stop (SIGTERM: an agent flushes and exits) and reaps it.
pub fn terminate(mut child: std::process::Child) {
    // SAFETY: kill(2) on a child this process started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// A child killed and reaped when dropped (servers a benchmark starts).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `agent run` with `args`, `/metrics` on 127.0.0.1:`metrics_port` and its local sink in
/// `dir` (emptied first), and waits up to 60 s until its metrics contain `ready` (an attach
/// method, say); the agent is stopped again when they do not.
pub fn start_agent_until(
    agent: &std::path::Path,
    args: &[String],
    metrics_port: u16,
    dir: &std::path::Path,
    ready: &str,
) -> anyhow::Result<std::process::Child> {
    let _ = std::fs::remove_dir_all(dir);
    let child = Command::new(agent)
        .arg("run")
        .args(args)
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .args(["--duration", "300s", "--output-dir"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start the agent")?;
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while Instant::now() < deadline {
        if http_get(metrics_port, "/metrics").is_ok_and(|m| m.contains(ready)) {
            return Ok(child);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    terminate(child);
    bail!("the agent's metrics did not show {ready} within 60 s")
}

/// `s` cut to `max` characters.
pub fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}
