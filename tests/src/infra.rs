//! Real MariaDB and Redis servers for tests: one of each per test process, in temp dirs on random
//! loopback ports, started on first use and killed with the test process. Shared by the end-to-end
//! tests and the demo shop's tests.

use std::{
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

/// The shared servers.
pub struct Infra {
    pub mysql_port: u16,
    /// The CA of MariaDB's certificate: it accepts TLS (and clear text) connections.
    pub mysql_ca: PathBuf,
    pub redis_port: u16,
    pub dir: PathBuf,
}

static INFRA: OnceLock<Result<Infra, String>> = OnceLock::new();

/// The shared MariaDB and Redis, started on first use. They are started from a thread that never ends and die
/// with the test process (PR_SET_PDEATHSIG), so no test leaves them behind.
pub fn infra() -> &'static Infra {
    let r = INFRA.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(start_infra());
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .unwrap_or_else(|_| Err("infra thread died".into()))
    });
    match r {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    }
}

/// Finds a program on PATH or in the sbin directories; a clear failure when missing.
pub fn find_bin(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} not found: these tests need MariaDB and Redis from Debian; run `cargo xtask setup` (installs mariadb-server and redis-server)")
        })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes the child die with the thread that spawned it.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A loopback port nothing listens on now, never the same one twice in this test process: the
/// tests of one binary run in parallel, and a port handed to an agent that takes seconds to start
/// listening could otherwise be handed out again in between, so that one test's `/healthz` is
/// answered by another test's agent. The ports come from below the kernel's ephemeral range,
/// which is where a `bind` to port 0 (the receivers, the tonic server) and outgoing connections
/// take theirs: a port handed out here is never taken by them before its server binds it.
pub fn free_port() -> u16 {
    static LAST: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    const FIRST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .max(FIRST + 1_000);
    let span = ephemeral_start - FIRST;
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    // Each test process starts elsewhere in the range, so that two at once rarely meet.
    let mut port = last.unwrap_or(FIRST + (std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        port = FIRST + (port - FIRST + 1) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *last = Some(port);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{ephemeral_start}");
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

fn start_infra() -> Result<Infra, String> {
    let mariadbd = find_bin("mariadbd")?;
    let install_db = find_bin("mariadb-install-db")?;
    let redis = find_bin("redis-server")?;

    let base = std::env::temp_dir().join("loupe-test-servers");
    // Remove what earlier runs left (their processes are gone; their directories are not).
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !pid_alive(&name) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(std::process::id().to_string());
    let data = dir.join("mysql");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let root = is_root();

    let mut cmd = Command::new(install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db");
    if root {
        cmd.arg("--user=root");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running mariadb-install-db: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let init = dir.join("init.sql");
    std::fs::write(
        &init,
        "CREATE USER IF NOT EXISTS 'shop'@'127.0.0.1' IDENTIFIED BY 'shop';\n\
         GRANT ALL PRIVILEGES ON *.* TO 'shop'@'127.0.0.1';\n",
    )
    .map_err(|e| e.to_string())?;

    // TLS on (clients choose): the TLS capture test connects through it.
    make_test_certificates(&dir);
    let mysql_port = free_port();
    let mut cmd = Command::new(mariadbd);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--port={mysql_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
        .arg(format!("--init-file={}", init.display()))
        .arg("--skip-name-resolve")
        .arg("--innodb-buffer-pool-size=64M")
        .arg("--max-connections=500")
        .arg(format!("--ssl-ca={}", dir.join("ca.pem").display()))
        .arg(format!("--ssl-cert={}", dir.join("server.pem").display()))
        .arg(format!("--ssl-key={}", dir.join("server.key").display()))
        .arg(format!("--log-error={}", dir.join("mariadb.log").display()));
    if root {
        cmd.arg("--user=root");
    }
    die_with_parent(&mut cmd);
    let mut mysqld = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting mariadbd: {e}"))?;

    let redis_port = free_port();
    let mut cmd = Command::new(redis);
    cmd.arg("--port")
        .arg(redis_port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir);
    die_with_parent(&mut cmd);
    let mut redis = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server: {e}"))?;

    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, port, child) in [
        ("mariadbd", mysql_port, &mut mysqld),
        ("redis-server", redis_port, &mut redis),
    ] {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("mariadb.log")).unwrap_or_default();
                return Err(format!("{name} exited ({status}) at start-up; log:\n{log}"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{name} not listening on {port} after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Leaked on purpose: they live as long as the test process (and die with it).
    std::mem::forget(mysqld);
    std::mem::forget(redis);
    Ok(Infra {
        mysql_port,
        mysql_ca: dir.join("ca.pem"),
        redis_port,
        dir,
    })
}

/// A CA (`ca.pem`, `ca.key`) and a server certificate for 127.0.0.1 and localhost signed by it
/// (`server.pem`, `server.key`) in `dir`, made with the openssl CLI (Debian's openssl package).
pub fn make_test_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian's openssl package; `cargo xtask setup` installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=Loupe test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}
