//! Test harness: one real MariaDB and one real Redis per test binary (temp dirs, random loopback ports),
//! and per test a set of real `demo-shop` processes with their own database and Redis DB index.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use loupe_tests::infra::{die_with_parent, free_port, infra};

/// Reviews seeded per test database (kept small: seeding is per database).
pub const REVIEWS: u64 = 4000;

static SHOP_SEQ: AtomicU32 = AtomicU32::new(0);
static REDIS_DB_SEQ: AtomicU32 = AtomicU32::new(0);

/// One running service.
pub struct Svc {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
}

/// A set of running services with their own database (and Redis DB index when `user` runs).
pub struct Shop {
    pub svcs: BTreeMap<String, Svc>,
    pub db: String,
    pub redis_db: Option<u32>,
}

pub fn mysql_url(db: &str) -> String {
    format!("mysql://shop:shop@127.0.0.1:{}/{db}", infra().mysql_port)
}

pub fn redis_url(index: u32) -> String {
    format!("redis://127.0.0.1:{}/{index}", infra().redis_port)
}

impl Shop {
    /// Starts `services` (backends in parallel, then the frontend) with extra environment.
    pub fn start(services: &[&str], env: &[(&str, &str)]) -> Shop {
        infra();
        let db = format!("shop_t{}", SHOP_SEQ.fetch_add(1, Ordering::SeqCst));
        let redis_db = services.contains(&"user").then(|| {
            let i = REDIS_DB_SEQ.fetch_add(1, Ordering::SeqCst);
            assert!(
                i < 16,
                "more than 16 shops with a user service in one test binary"
            );
            i
        });
        let mut shop = Shop {
            svcs: BTreeMap::new(),
            db,
            redis_db,
        };
        let backends: Vec<&str> = services
            .iter()
            .copied()
            .filter(|s| *s != "frontend")
            .collect();
        let mut pending = Vec::new();
        for s in &backends {
            pending.push((s.to_string(), shop.spawn(s, env, &BTreeMap::new())));
        }
        for (name, (child, lines, rx)) in pending {
            let addr = wait_listening(&name, &rx);
            shop.svcs.insert(name, Svc { child, addr, lines });
        }
        if services.contains(&"frontend") {
            let mut urls = BTreeMap::new();
            for up in ["auth", "user", "inventory", "payment"] {
                // Upstreams not started point at a closed port.
                let addr = shop
                    .svcs
                    .get(up)
                    .map(|s| s.addr.to_string())
                    .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
                urls.insert(
                    format!("{}_URL", up.to_uppercase()),
                    format!("http://{addr}"),
                );
            }
            let (child, lines, rx) = shop.spawn("frontend", env, &urls);
            let addr = wait_listening("frontend", &rx);
            shop.svcs
                .insert("frontend".into(), Svc { child, addr, lines });
        }
        shop
    }

    #[allow(clippy::type_complexity)]
    fn spawn(
        &self,
        role: &str,
        env: &[(&str, &str)],
        urls: &BTreeMap<String, String>,
    ) -> (
        Child,
        Arc<Mutex<Vec<String>>>,
        mpsc::Receiver<Result<SocketAddr, String>>,
    ) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-shop"));
        cmd.arg(role)
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("MYSQL_URL", mysql_url(&self.db))
            .env("REDIS_URL", redis_url(self.redis_db.unwrap_or(15)))
            .env("DEMO_REVIEWS", REVIEWS.to_string())
            .env("DB_CONNECT_TIMEOUT_S", "30")
            .env_remove("DEMO_PROPAGATE")
            .env_remove("DEMO_FAULTS")
            .env_remove("OTEL_SERVICE_NAME");
        for (k, v) in urls {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        die_with_parent(&mut cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning demo-shop");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        {
            let lines = lines.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        let _ =
                            tx.send(addr.trim().parse::<SocketAddr>().map_err(|e| e.to_string()));
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let role = role.to_string();
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut err);
            // stderr closes when the process exits: report why it ended if it never listened.
            let _ = tx.send(Err(format!("{role} exited: {err}")));
        });
        (child, lines, rx)
    }

    pub fn addr(&self, role: &str) -> SocketAddr {
        self.svcs[role].addr
    }

    pub fn pid(&self, role: &str) -> u32 {
        self.svcs[role].child.id()
    }

    /// Every stdout line of a service so far.
    pub fn logs(&self, role: &str) -> Vec<String> {
        self.svcs[role].lines.lock().unwrap().clone()
    }

    /// GET/POST to a service.
    pub fn call(
        &self,
        role: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        http(self.addr(role), method, path, headers, body)
    }

    /// Turns a fault on (`on=1&…`) or off (`on=0`), asserting the admin endpoint accepted it.
    pub fn fault(&self, role: &str, name: &str, query: &str) {
        let r = self.call(
            role,
            "POST",
            &format!("/admin/fault/{name}?{query}"),
            &[],
            None,
        );
        assert_eq!(
            r.status, 200,
            "setting {name}?{query} on {role}: {}",
            r.body
        );
    }

    /// A counter from `GET /admin/stats`.
    pub fn stat(&self, role: &str, key: &str) -> u64 {
        let r = self.call(role, "GET", "/admin/stats", &[], None);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("stats JSON");
        v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no stat {key}: {v}"))
    }

    /// A token for `user_id`, through the frontend.
    pub fn login(&self, user_id: u64) -> String {
        let r = self.call(
            "frontend",
            "POST",
            "/login",
            &[],
            Some(&format!("{{\"user_id\":{user_id}}}")),
        );
        assert_eq!(r.status, 200, "login: {}", r.body);
        r.json()["token"].as_str().expect("token").to_string()
    }

    /// One value from MySQL.
    pub fn sql<T: mysql_async::prelude::FromValue + Send + 'static>(&self, query: &str) -> T {
        let url = mysql_url(&self.db);
        let query = query.to_string();
        runtime().block_on(async move {
            use mysql_async::prelude::*;
            let mut conn = mysql_async::Conn::from_url(url)
                .await
                .expect("mysql connection");
            let v: Option<T> = conn.query_first(query.as_str()).await.expect("query");
            let _ = conn.disconnect().await;
            v.unwrap_or_else(|| panic!("no row for {query}"))
        })
    }

    /// Runs a statement in MySQL.
    pub fn sql_exec(&self, stmt: &str) {
        let url = mysql_url(&self.db);
        let stmt = stmt.to_string();
        runtime().block_on(async move {
            use mysql_async::prelude::*;
            let mut conn = mysql_async::Conn::from_url(url)
                .await
                .expect("mysql connection");
            conn.query_drop(stmt.as_str()).await.expect("statement");
            let _ = conn.disconnect().await;
        })
    }

    /// A Redis connection to this shop's DB index.
    pub fn redis(&self) -> redis::Connection {
        let client =
            redis::Client::open(redis_url(self.redis_db.expect("shop has a user service")))
                .expect("redis url");
        client.get_connection().expect("redis connection")
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        for s in self.svcs.values_mut() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

fn wait_listening(name: &str, rx: &mpsc::Receiver<Result<SocketAddr, String>>) -> SocketAddr {
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => panic!("{name} did not start: {e}"),
        Err(_) => panic!("{name} did not print `listening on` within 90 s"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub took: Duration,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A one-shot HTTP/1.1 request with `Connection: close` (blocking, std only).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
        took,
    }
}

/// User-mode CPU time of a process so far.
pub fn utime(pid: u32) -> Duration {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at field 3; utime is field 14.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let ticks: u64 = rest
        .split_whitespace()
        .nth(11)
        .and_then(|v| v.parse().ok())
        .expect("utime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Resident memory of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Function symbols (name, address) of an ELF64 little-endian file whose name contains `needle`.
pub fn elf_symbols(path: &Path, needle: &str) -> Vec<(String, u64)> {
    let b = std::fs::read(path).expect("reading the binary");
    assert_eq!(&b[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let shoff = u64_at(0x28) as usize;
    let (shentsize, shnum) = (u16_at(0x3a), u16_at(0x3c));
    let section = |i: usize| {
        let o = shoff + i * shentsize;
        // (type, offset, size, link, entsize)
        (
            u32_at(o + 4),
            u64_at(o + 0x18) as usize,
            u64_at(o + 0x20) as usize,
            u32_at(o + 0x28),
            u64_at(o + 0x38) as usize,
        )
    };
    let mut out = Vec::new();
    for i in 0..shnum {
        let (kind, off, size, link, entsize) = section(i);
        if kind != 2 || entsize == 0 {
            continue; // SHT_SYMTAB only
        }
        let (_, stroff, _, _, _) = section(link);
        for n in 0..size / entsize {
            let e = off + n * entsize;
            let name_off = stroff + u32_at(e);
            let end = b[name_off..]
                .iter()
                .position(|c| *c == 0)
                .map(|p| name_off + p)
                .unwrap_or(name_off);
            let name = String::from_utf8_lossy(&b[name_off..end]).to_string();
            let is_func = b[e + 4] & 0xf == 2; // STT_FUNC
            if is_func && name.contains(needle) {
                out.push((name, u64_at(e + 8)));
            }
        }
    }
    out
}
