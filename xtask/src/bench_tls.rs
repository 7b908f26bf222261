//! `cargo xtask bench --only tls`: what reading TLS in clear (`--tls`) costs the processes that
//! use OpenSSL. An HTTPS server (tests/workloads/tls_server.py, Python's ssl module over
//! Debian's libssl3) and a Python client making `REQUESTS` requests on one kept-alive connection,
//! timed by the client: with no agent, with the agent and `--tls=false` (network spans on, the
//! TLS connection opaque), and with `--tls=true` (every SSL_read/SSL_write of both ends trapped
//! and its plaintext parsed into spans). The issue asks for the cost measured and reported.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, bail};

use crate::util::{KillOnDrop, root, start_agent_until, step, terminate, wait_for_port};

const REQUESTS: u32 = 5_000;
const SERVER_PORT: u16 = 16_543;
const METRICS_PORT: u16 = 19_543;

/// The tls part; returns its markdown section.
pub fn tls(agent: &Path) -> anyhow::Result<String> {
    let dir = root().join("target/bench/tls");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    certificates(&dir)?;
    let python = crate::python::python();
    let server = Command::new(&python)
        .arg(root().join("tests/workloads/tls_server.py"))
        .arg(SERVER_PORT.to_string())
        .args(["cert.pem", "key.pem"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the TLS server")?;
    let _server = KillOnDrop(server);
    wait_for_port(SERVER_PORT)?;
    let mut runs = Vec::new();
    for (name, args) in [
        ("no agent", None),
        ("agent, --tls=false", Some("--tls=false")),
        ("agent, --tls=true", Some("--tls=true")),
    ] {
        let us = step(&format!("{REQUESTS} HTTPS requests, {name}"), || {
            let agent = args
                .map(|flag| start_agent(agent, flag, &dir.join("out")))
                .transpose()?;
            let us = client(&python, &dir);
            if let Some(agent) = agent {
                terminate(agent);
            }
            us
        })?;
        runs.push((name, us));
    }
    Ok(report(&runs))
}

/// A self-signed certificate for 127.0.0.1.
fn certificates(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
        ])
        .args(["-out", "cert.pem", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .context("cannot run openssl (Debian's openssl package)")?;
    if !status.success() {
        bail!("openssl could not make the benchmark's certificate");
    }
    Ok(())
}

/// Microseconds per request of the Python client on one kept-alive connection.
fn client(python: &Path, dir: &Path) -> anyhow::Result<f64> {
    let script = format!(
        "import http.client, ssl, time\n\
         c = http.client.HTTPSConnection('127.0.0.1', {SERVER_PORT}, \
         context=ssl.create_default_context(cafile='cert.pem'))\n\
         c.request('GET', '/warm'); c.getresponse().read()\n\
         t = time.perf_counter()\n\
         for i in range({REQUESTS}):\n    \
         c.request('GET', '/bench/%d' % i); r = c.getresponse(); r.read()\n\
         print((time.perf_counter() - t) / {REQUESTS} * 1e6)\n"
    );
    let out = crate::util::output(Command::new(python).args(["-c", &script]).current_dir(dir))?;
    out.trim()
        .parse()
        .with_context(|| format!("unexpected client output {out:?}"))
}

/// The agent with network spans and `flag`, once its socket programs are attached.
fn start_agent(agent: &Path, flag: &str, dir: &Path) -> anyhow::Result<Child> {
    let args = ["--page-faults=false".to_string(), flag.to_string()];
    start_agent_until(agent, &args, METRICS_PORT, dir, "program=\"sockets\"")
}

fn report(runs: &[(&str, f64)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## TLS in clear: cost to OpenSSL users\n");
    let _ = writeln!(
        s,
        "Python HTTPS client and server (OpenSSL 3), {REQUESTS} requests on one kept-alive \
         connection, timed by the client.\n"
    );
    let _ = writeln!(s, "| Run | µs per request | Added by the TLS probes |");
    let _ = writeln!(s, "|---|---|---|");
    let without = runs.get(1).map_or(0.0, |r| r.1);
    for (i, (name, us)) in runs.iter().enumerate() {
        let added = if i == 2 {
            format!("{:+.0} µs", us - without)
        } else {
            "—".to_string()
        };
        let _ = writeln!(s, "| {name} | {us:.0} | {added} |");
    }
    s
}
