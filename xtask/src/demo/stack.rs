//! Running the shop: MariaDB and Redis on loopback, the five services, the load generator and the agent, each in a
//! process group of its own, stopped in reverse start order (also on error or panic); and the helpers around them
//! (building the shop, installing the databases, a one-shot HTTP client, the Ctrl-C flag).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::{SERVICES, UPSTREAM_TIMEOUT_MS};
use crate::util::{exec, is_root, root};

/// Set by the Ctrl-C / SIGTERM handler.
pub(super) static STOP: AtomicBool = AtomicBool::new(false);

/// Where everything listens.
#[derive(Clone, Debug)]
pub(super) struct Ports {
    pub(super) services: BTreeMap<&'static str, u16>,
    pub(super) mysql: u16,
    pub(super) redis: u16,
}

impl Ports {
    pub(super) fn fixed(frontend: u16, mysql: u16, redis: u16) -> Ports {
        let services = ["frontend", "auth", "user", "inventory", "payment"]
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, frontend.saturating_add(i as u16)))
            .collect();
        Ports {
            services,
            mysql,
            redis,
        }
    }

    /// Ports the kernel says are free now.
    pub(super) fn free() -> anyhow::Result<Ports> {
        let mut held = Vec::new();
        let mut take = || -> anyhow::Result<u16> {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let port = l.local_addr()?.port();
            held.push(l);
            Ok(port)
        };
        let mut services = BTreeMap::new();
        for s in SERVICES {
            services.insert(s, take()?);
        }
        Ok(Ports {
            services,
            mysql: take()?,
            redis: take()?,
        })
    }

    pub(super) fn service(&self, name: &str) -> SocketAddr {
        SocketAddr::from((
            [127, 0, 0, 1],
            self.services.get(name).copied().unwrap_or(0),
        ))
    }

    pub(super) fn check_free(&self) -> anyhow::Result<()> {
        let all = self
            .services
            .iter()
            .map(|(n, p)| (*n, *p))
            .chain([("mariadb", self.mysql), ("redis", self.redis)]);
        for (name, port) in all {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port {port} (for {name}) is in use; is a demo already running? (choose others with --port, --mysql-port, --redis-port)"
                );
            }
        }
        Ok(())
    }
}

pub(super) struct StackOpts {
    pub(super) dir: PathBuf,
    pub(super) shop: PathBuf,
    pub(super) ports: Ports,
    pub(super) rps: f64,
    pub(super) propagate: bool,
    pub(super) faults: BTreeMap<String, String>,
    pub(super) reviews: u64,
    pub(super) fresh: bool,
    pub(super) loadgen_to_terminal: bool,
}

struct Proc {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    /// Whether the stack is broken without it.
    critical: bool,
}

/// The processes of a running shop; stopped on drop.
pub(super) struct Stack {
    procs: Vec<Proc>,
    pub(super) ports: Ports,
    dir: PathBuf,
}

impl Stack {
    /// The whole shop: databases, services, load.
    pub(super) fn start(o: &StackOpts) -> anyhow::Result<Stack> {
        let mut stack = Stack::start_databases(o)?;
        stack.start_services(o)?;
        Ok(stack)
    }

    /// MariaDB and Redis only. Start the agent next, then [`Stack::start_services`]: the agent then sees
    /// the pools and Redis connections the services open at start-up from their first byte.
    pub(super) fn start_databases(o: &StackOpts) -> anyhow::Result<Stack> {
        let logs = o.dir.join("logs");
        fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let mut stack = Stack {
            procs: Vec::new(),
            ports: o.ports.clone(),
            dir: o.dir.clone(),
        };
        stack.start_mariadb(o)?;
        stack.start_redis(o)?;
        Ok(stack)
    }

    /// The five services, then the load generator once they are healthy.
    pub(super) fn start_services(&mut self, o: &StackOpts) -> anyhow::Result<()> {
        self.spawn_services(o, false)?;
        self.start_load(o)
    }

    /// Starts the five services. `gated`: each starts as `sh` waiting on its stdin and `exec`s the service only
    /// when that closes (the returned handles dropped), so that their pids are known before they open a
    /// connection (an agent started with `--pid` in between sees all of them).
    pub(super) fn spawn_services(
        &mut self,
        o: &StackOpts,
        gated: bool,
    ) -> anyhow::Result<Vec<std::process::ChildStdin>> {
        let logs = o.dir.join("logs");
        let stack = self;
        let mut gates = Vec::new();
        for svc in SERVICES {
            let mut cmd = if gated {
                let mut sh = Command::new("sh");
                sh.args(["-c", r#"read -r _; exec "$0" "$@""#]).arg(&o.shop);
                sh
            } else {
                Command::new(&o.shop)
            };
            cmd.arg(svc)
                .env("OTEL_SERVICE_NAME", svc)
                .env("BIND_ADDR", "127.0.0.1")
                .env("UPSTREAM_TIMEOUT_MS", UPSTREAM_TIMEOUT_MS.to_string());
            cmd.env("PORT", o.ports.services[svc].to_string());
            // prefer_socket=false: mysql_async otherwise reconnects through MariaDB's Unix socket when the
            // server is local, and Loupe (TCP only) would see no query after the handshake.
            cmd.env(
                "MYSQL_URL",
                format!(
                    "mysql://shop:shop@127.0.0.1:{}/shop?prefer_socket=false",
                    o.ports.mysql
                ),
            );
            cmd.env(
                "REDIS_URL",
                format!("redis://127.0.0.1:{}/0", o.ports.redis),
            );
            for up in ["auth", "user", "inventory", "payment"] {
                cmd.env(
                    format!("{}_URL", up.to_uppercase()),
                    format!("http://{}", o.ports.service(up)),
                );
            }
            cmd.env("DEMO_PROPAGATE", if o.propagate { "1" } else { "0" });
            cmd.env(
                "DEMO_FAULTS",
                o.faults.get(svc).map(String::as_str).unwrap_or(""),
            );
            cmd.env("DEMO_REVIEWS", o.reviews.to_string());
            let log = Some(logs.join(format!("{svc}.log")));
            let stdin = if gated { Stdio::piped() } else { Stdio::null() };
            let child = stack.spawn_with_stdin(svc, cmd, log, true, stdin)?;
            if gated {
                gates.push(child.stdin.take().context("the gate's stdin")?);
            }
        }
        Ok(gates)
    }

    /// Waits for the services to be healthy, then starts the load generator.
    pub(super) fn start_load(&mut self, o: &StackOpts) -> anyhow::Result<()> {
        let logs = o.dir.join("logs");
        let stack = self;
        for svc in SERVICES {
            stack.wait_http(svc, o.ports.service(svc), Duration::from_secs(120))?;
        }
        let mut cmd = Command::new(&o.shop);
        cmd.arg("loadgen")
            .env("OTEL_SERVICE_NAME", "loadgen")
            .env(
                "FRONTEND_URL",
                format!("http://{}", o.ports.service("frontend")),
            )
            .env("LOADGEN_RPS", o.rps.to_string());
        let log = (!o.loadgen_to_terminal).then(|| logs.join("loadgen.log"));
        stack.spawn("loadgen", cmd, log, true)?;
        Ok(())
    }

    pub(super) fn start_mariadb(&mut self, o: &StackOpts) -> anyhow::Result<()> {
        let base = o.dir.join("mariadb");
        let data = base.join("data");
        if o.fresh && base.exists() {
            fs::remove_dir_all(&base).with_context(|| format!("removing {}", base.display()))?;
        }
        fs::create_dir_all(&base)?;
        let root = is_root();
        if !data.join("mysql").is_dir() {
            let mut cmd = Command::new(find_bin("mariadb-install-db")?);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db");
            if root {
                cmd.arg("--user=root");
            }
            let log = o.dir.join("logs").join("mariadb-install-db.log");
            exec_logged(cmd, &log)?;
        }
        let init = base.join("init.sql");
        fs::write(
            &init,
            "CREATE DATABASE IF NOT EXISTS shop;\n\
             CREATE USER IF NOT EXISTS 'shop'@'127.0.0.1' IDENTIFIED BY 'shop';\n\
             CREATE USER IF NOT EXISTS 'shop'@'localhost' IDENTIFIED BY 'shop';\n\
             CREATE USER IF NOT EXISTS 'shop'@'%' IDENTIFIED BY 'shop';\n\
             GRANT ALL PRIVILEGES ON *.* TO 'shop'@'127.0.0.1';\n\
             GRANT ALL PRIVILEGES ON *.* TO 'shop'@'localhost';\n\
             GRANT ALL PRIVILEGES ON *.* TO 'shop'@'%';\n",
        )?;
        let mut socket = base.join("mysqld.sock");
        if socket.as_os_str().len() > 100 {
            socket = std::env::temp_dir().join(format!("loupe-demo-mysqld-{}.sock", o.ports.mysql));
        }
        let mut cmd = Command::new(find_bin("mariadbd")?);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={}", o.ports.mysql))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                base.join("mariadbd.pid").display()
            ))
            .arg(format!("--init-file={}", init.display()))
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=128M")
            // No fsync per commit: a demo's data need not survive a power cut, and commits stuck behind other
            // work's disk I/O would blur the latencies the exercises are about.
            .arg("--innodb-flush-log-at-trx-commit=2")
            .arg("--max-connections=300");
        if root {
            cmd.arg("--user=root");
        }
        self.spawn(
            "mariadb",
            cmd,
            Some(o.dir.join("logs").join("mariadb.log")),
            true,
        )?;
        self.wait_tcp("mariadb", o.ports.mysql, Duration::from_secs(60))
    }

    pub(super) fn start_redis(&mut self, o: &StackOpts) -> anyhow::Result<()> {
        let data = o.dir.join("redis");
        fs::create_dir_all(&data)?;
        let mut cmd = Command::new(find_bin("redis-server")?);
        cmd.arg("--port")
            .arg(o.ports.redis.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(&data);
        self.spawn(
            "redis",
            cmd,
            Some(o.dir.join("logs").join("redis.log")),
            true,
        )?;
        self.wait_tcp("redis", o.ports.redis, Duration::from_secs(30))
    }

    /// Starts `cmd` in a process group of its own, output to `log` (or the terminal), stdin from /dev/null.
    pub(super) fn spawn(
        &mut self,
        name: &str,
        cmd: Command,
        log: Option<PathBuf>,
        critical: bool,
    ) -> anyhow::Result<&mut Child> {
        self.spawn_with_stdin(name, cmd, log, critical, Stdio::null())
    }

    pub(super) fn spawn_with_stdin(
        &mut self,
        name: &str,
        mut cmd: Command,
        log: Option<PathBuf>,
        critical: bool,
        stdin: Stdio,
    ) -> anyhow::Result<&mut Child> {
        match &log {
            Some(path) => {
                let f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
        }
        cmd.stdin(stdin).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            critical,
        });
        Ok(&mut self.procs.last_mut().expect("just pushed").child)
    }

    /// Starts the agent and waits until it has attached (its "CPU profiler attached" line, printed after the
    /// network capture), so that the services started next are seen from their first connection. Its stderr goes
    /// to `log`, or to the terminal. Returns whether network spans are on.
    pub(super) fn start_agent(
        &mut self,
        mut cmd: Command,
        log: Option<PathBuf>,
        critical: bool,
    ) -> anyhow::Result<bool> {
        let mut sink: Box<dyn Write + Send> = match &log {
            Some(path) => {
                let f = fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                cmd.stdout(f.try_clone()?);
                Box::new(f)
            }
            None => {
                cmd.stdout(Stdio::inherit());
                Box::new(std::io::stderr())
            }
        };
        cmd.stderr(Stdio::piped())
            .stdin(Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the agent: {cmd:?}"))?;
        let stderr = child.stderr.take().context("the agent's stderr")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(sink, "{line}");
                if line.contains("network spans") || line.contains("CPU profiler attached") {
                    let _ = tx.send(line);
                }
            }
        });
        self.procs.push(Proc {
            name: "agent".to_string(),
            child,
            log,
            critical,
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut spans = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains("CPU profiler attached") => return Ok(spans),
                Ok(line) => spans = line.contains("network spans:"),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    self.check_alive("agent")?;
                    ensure!(!STOP.load(Ordering::SeqCst), "interrupted");
                    ensure!(
                        Instant::now() < deadline,
                        "the agent did not attach in 60 s"
                    );
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.check_alive("agent")?;
                    bail!("the agent closed its stderr before attaching");
                }
            }
        }
    }

    pub(super) fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Fails (naming the log) if a process has exited.
    pub(super) fn check_alive(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(p) = self.procs.iter_mut().find(|p| p.name == name)
            && let Some(status) = p.child.try_wait()?
        {
            bail!(
                "{name} exited ({status}) while starting{}",
                log_tail(p.log.as_deref())
            );
        }
        Ok(())
    }

    pub(super) fn wait_tcp(
        &mut self,
        name: &str,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            self.check_alive(name)?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            ensure!(!STOP.load(Ordering::SeqCst), "interrupted");
            ensure!(
                Instant::now() < deadline,
                "{name} not listening on {addr} after {} s",
                timeout.as_secs()
            );
            sleep(Duration::from_millis(200));
        }
    }

    pub(super) fn wait_http(
        &mut self,
        name: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive(name)?;
            if let Ok((200, _)) = http(addr, "GET", "/healthz", None) {
                return Ok(());
            }
            ensure!(!STOP.load(Ordering::SeqCst), "interrupted");
            ensure!(
                Instant::now() < deadline,
                "{name} not healthy on {addr} after {} s",
                timeout.as_secs()
            );
            sleep(Duration::from_millis(250));
        }
    }

    pub(super) fn write_env_file(&self) -> anyhow::Result<()> {
        let mut s = String::from("# written by `cargo xtask demo`; removed when it stops\n");
        for (name, port) in &self.ports.services {
            s.push_str(&format!("{name}=127.0.0.1:{port}\n"));
        }
        s.push_str(&format!(
            "mariadb=127.0.0.1:{}\nredis=127.0.0.1:{}\n",
            self.ports.mysql, self.ports.redis
        ));
        for p in &self.procs {
            s.push_str(&format!("pid.{}={}\n", p.name, p.child.id()));
        }
        let path = self.dir.join("demo.env");
        fs::write(&path, s).with_context(|| format!("writing {}", path.display()))
    }

    /// Lets the shop run for `secs`; fails on Ctrl-C or when a critical process dies.
    pub(super) fn run_for(&mut self, secs: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            ensure!(!STOP.load(Ordering::SeqCst), "interrupted");
            for p in &mut self.procs {
                if p.critical
                    && let Some(status) = p.child.try_wait()?
                {
                    bail!("{} exited ({status}){}", p.name, log_tail(p.log.as_deref()));
                }
            }
            sleep(
                Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        Ok(())
    }

    /// Waits for Ctrl-C, the deadline, or a critical process dying.
    pub(super) fn supervise(&mut self, deadline: Option<Instant>) -> anyhow::Result<()> {
        loop {
            if STOP.load(Ordering::SeqCst) {
                println!("\nstopping…");
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                println!("duration reached, stopping…");
                return Ok(());
            }
            let mut exited = None;
            for (i, p) in self.procs.iter_mut().enumerate() {
                if let Some(status) = p.child.try_wait()? {
                    exited = Some((i, status));
                    break;
                }
            }
            if let Some((i, status)) = exited {
                let p = self.procs.remove(i);
                let tail = log_tail(p.log.as_deref());
                if p.critical {
                    bail!("{} exited ({status}){tail}", p.name);
                }
                println!(
                    "note: {} exited ({status}); the shop keeps running{tail}",
                    p.name
                );
            }
            sleep(Duration::from_millis(300));
        }
    }

    /// Stops every process group, last started first: SIGTERM, then SIGKILL after a grace period.
    pub(super) fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            stop_proc(&mut p);
        }
        let _ = fs::remove_file(self.dir.join("demo.env"));
    }

    /// Stops one process (as [`Stack::stop`] does) and returns how it exited: the agent flushes on SIGTERM.
    pub(super) fn stop_one(&mut self, name: &str) -> anyhow::Result<std::process::ExitStatus> {
        let i = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("{name} is not running"))?;
        let mut p = self.procs.remove(i);
        stop_proc(&mut p).with_context(|| format!("{name} did not stop on SIGTERM"))
    }
}

/// SIGTERM to the process group, SIGKILL after a grace period; the exit status when it stopped by itself.
fn stop_proc(p: &mut Proc) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = p.child.try_wait() {
        kill_group(p.child.id(), libc::SIGKILL); // anything it left in its group
        return Some(status);
    }
    kill_group(p.child.id(), libc::SIGTERM);
    let grace = match p.name.as_str() {
        "mariadb" => 30,
        "agent" => 20,
        _ => 10,
    };
    let deadline = Instant::now() + Duration::from_secs(grace);
    let status = loop {
        match p.child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Err(_) => break None,
            Ok(None) if Instant::now() >= deadline => {
                println!("{} did not stop in {grace} s; killing it", p.name);
                kill_group(p.child.id(), libc::SIGKILL);
                let _ = p.child.wait();
                break None;
            }
            Ok(None) => sleep(Duration::from_millis(100)),
        }
    };
    kill_group(p.child.id(), libc::SIGKILL);
    status
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `signal` to the process group `pgid` (a child started with `process_group(0)`).
pub(super) fn kill_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; the negative id addresses the group our child leads.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

fn log_tail(log: Option<&Path>) -> String {
    let Some(path) = log else {
        return String::new();
    };
    let Ok(f) = fs::File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
    format!("; last lines of {}:\n    {tail}", path.display())
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set [`STOP`]; the loops that wait poll it and stop everything in order.
pub(super) fn install_stop_handler() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

pub(super) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(absolute)
        .unwrap_or_else(|| root().join("target"))
}

pub(super) fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

pub(super) fn agent_binary() -> PathBuf {
    target_dir().join("release").join("loupe-agent")
}

/// Finds a program on PATH or in the sbin directories (MariaDB's server lives in /usr/sbin).
pub(super) fn find_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found; install it with `cargo xtask setup` (packages mariadb-server, redis-server)"))
}

/// Installs Debian's mariadb-server and redis-server when their programs are missing (`apt-get update` first
/// when apt has no candidate). `cargo xtask setup` may call this too.
pub(super) fn ensure_db_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("mariadbd", "mariadb-server"),
        ("mariadb-install-db", "mariadb-server"),
        ("redis-server", "redis-server"),
    ]
    .into_iter()
    .filter(|(bin, _)| find_bin(bin).is_err())
    .map(|(_, pkg)| pkg)
    .fold(Vec::new(), |mut v, p| {
        if !v.contains(&p) {
            v.push(p);
        }
        v
    });
    if missing.is_empty() {
        return Ok(());
    }
    ensure!(
        is_root(),
        "missing {}; install them as root: apt-get install -y {}",
        missing.join(", "),
        missing.join(" ")
    );
    let policy = Command::new("apt-cache")
        .arg("policy")
        .args(&missing)
        .output()
        .context("running apt-cache policy")?;
    if String::from_utf8_lossy(&policy.stdout).contains("Candidate: (none)")
        || policy.stdout.is_empty()
    {
        println!("apt-get update (no candidate for {})", missing.join(", "));
        exec(Command::new("apt-get").arg("update"))?;
    }
    println!("installing {}", missing.join(" "));
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for bin in ["mariadbd", "mariadb-install-db", "redis-server"] {
        find_bin(bin)?;
    }
    Ok(())
}

/// Builds `demo-shop` (release) and returns its path. With frame pointers it builds into its own target
/// directory, so the flag does not invalidate the workspace's build cache.
pub(super) fn build_shop(frame_pointers: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "loupe-demo-shop",
        "--bin",
        "demo-shop",
    ]);
    let target = if frame_pointers {
        let dir = target_dir().join("demo-fp");
        let flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        cmd.env(
            "RUSTFLAGS",
            format!("{flags} -C force-frame-pointers=yes").trim(),
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .arg("--target-dir")
        .arg(&dir);
        dir
    } else {
        target_dir()
    };
    println!(
        "building demo-shop (release{})",
        if frame_pointers {
            ", frame pointers"
        } else {
            ""
        }
    );
    exec(&mut cmd)?;
    Ok(target.join("release").join("demo-shop"))
}

/// Runs a command to completion with its output in `log`; the error names both.
fn exec_logged(mut cmd: Command, log: &Path) -> anyhow::Result<()> {
    let f = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(f.try_clone()?).stderr(f);
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        status.success(),
        "{cmd:?} failed: {status}{}",
        log_tail(Some(log))
    );
    Ok(())
}

/// A one-shot HTTP/1.1 request (Connection: close) with short timeouts; returns status and body.
pub(super) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| {
            format!(
                "bad HTTP response from {addr}: {:?}",
                resp.chars().take(80).collect::<String>()
            )
        })?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
