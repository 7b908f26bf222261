//! DWARF unwinding end to end, on the real kernel: workloads built without frame pointers (C
//! through the C library's qsort, Rust) profiled with `--unwinder dwarf` must come out with their
//! whole call chain, leaf to main, in each sample; the same C workload with `--unwinder
//! frame-pointers` must not (the control: these checks can fail); and real servers (MariaDB,
//! Redis) profiled under load must have stacks that end where their threads start.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use loupe_tests::{
    DecodedSample, Profile, decode_samples, infra, profile_string, profile_workload_pid,
    read_profiles, require_root, run_agent,
};

/// Of the samples whose stack holds a workload's known hot function, the share whose stack holds
/// that path's whole chain (in order, outwards) up to main. Measured at 99.9–100% (the tables
/// describe every instruction, prologues included); by frame pointers, 0%.
const CHAIN_FLOOR: f64 = 0.90;

/// A frame of a chain: a function, named exactly or as the last segment of a Rust path
/// (`nofp_run` is `nofp::nofp_run`), or any function whose name contains a word.
#[derive(Clone, Copy, Debug)]
enum Step {
    Function(&'static str),
    /// glibc's `qsort` hands over to `qsort_r` by a tail call (it keeps no frame of its own), and
    /// its debug symbols call that `__qsort_r` or `__GI___qsort_r`.
    Containing(&'static str),
}

impl Step {
    fn matches(self, frame: &str) -> bool {
        match self {
            Step::Function(name) => {
                frame == name
                    || frame
                        .strip_suffix(name)
                        .is_some_and(|path| path.ends_with("::"))
            }
            Step::Containing(word) => frame.contains(word),
        }
    }
}

/// Whether `functions` (leaf first) holds `chain` (leaf first) in that order, each step outside
/// the one before.
fn holds_chain(functions: &[String], chain: &[Step]) -> bool {
    let mut frames = functions.iter();
    chain
        .iter()
        .all(|step| frames.by_ref().any(|f| step.matches(f)))
}

/// Runs `workload_name` for longer than the profile and profiles it with `--pid` at 997 Hz for
/// `seconds` (4 s intervals) with `extra` arguments (the unwinder); every sample of its service's
/// CPU profiles, and the agent's stderr.
fn profile_workload(workload_name: &str, seconds: u32, extra: &[&str]) -> (Vec<Sample>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (profiles, stderr) = profile_workload_pid(workload_name, seconds, extra, dir.path());
    let mut samples = Vec::new();
    for (_, profile) in &profiles {
        samples.extend(samples_of(profile));
    }
    (samples, stderr)
}

/// One sample: its decoded functions (leaf first) and where its user stack ends.
struct Sample {
    decoded: DecodedSample,
    /// The outermost user frame's outermost function, when the stack has a user frame.
    user_root: Option<String>,
}

/// The samples of a CPU profile, each with the outermost function of its user stack. Kernel frames
/// are the locations of the synthetic `[kernel.kallsyms]` mapping; a lost stack's placeholder has
/// address 0 and is neither.
fn samples_of(profile: &Profile) -> Vec<Sample> {
    let s = |i: i64| profile_string(profile, i);
    let kernel_mappings: Vec<u64> = profile
        .mapping
        .iter()
        .filter(|m| s(m.filename) == "[kernel.kallsyms]")
        .map(|m| m.id)
        .collect();
    let functions: HashMap<u64, &str> =
        profile.function.iter().map(|f| (f.id, s(f.name))).collect();
    // A user location's outermost function (pprof lists a location's lines innermost first).
    let user_root: HashMap<u64, String> = profile
        .location
        .iter()
        .filter(|l| l.address != 0 && !kernel_mappings.contains(&l.mapping_id))
        .map(|l| {
            let root = l
                .line
                .last()
                .and_then(|line| functions.get(&line.function_id))
                .copied()
                .unwrap_or("[unknown]");
            (l.id, root.to_string())
        })
        .collect();
    decode_samples(profile)
        .into_iter()
        .zip(&profile.sample)
        .map(|(decoded, raw)| Sample {
            decoded,
            user_root: raw
                .location_id
                .iter()
                .rev()
                .find_map(|l| user_root.get(l).cloned()),
        })
        .collect()
}

/// Sums the inclusive sample counts of every function over `samples`.
fn inclusive(samples: &[Sample]) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for sample in samples {
        let mut seen = std::collections::HashSet::new();
        for f in &sample.decoded.functions {
            if seen.insert(f) {
                *counts.entry(f.clone()).or_insert(0) += sample.decoded.count;
            }
        }
    }
    counts
}

/// The samples (by count) whose stack holds `chain[0]`, and among them those holding the whole
/// chain; with the heaviest stacks that do not, for failure messages.
fn chain_share(samples: &[Sample], chain: &[Step]) -> (i64, i64, String) {
    let mut with_leaf = 0;
    let mut whole = 0;
    // Samples differ by address too: the same functions are summed here.
    let mut broken: HashMap<&[String], i64> = HashMap::new();
    for sample in samples {
        let d = &sample.decoded;
        if !d.functions.iter().any(|f| chain[0].matches(f)) {
            continue;
        }
        with_leaf += d.count;
        if holds_chain(&d.functions, chain) {
            whole += d.count;
        } else {
            *broken.entry(&d.functions).or_default() += d.count;
        }
    }
    let mut broken: Vec<_> = broken.into_iter().collect();
    broken.sort_by_key(|b| std::cmp::Reverse(b.1));
    let shown: Vec<String> = broken
        .iter()
        .take(8)
        .map(|(functions, count)| format!("  {count} × {}", functions.join(" ← ")))
        .collect();
    (with_leaf, whole, shown.join("\n"))
}

/// Asserts that at least `CHAIN_FLOOR` of the samples of each chain's leaf hold the whole chain,
/// and that the leaves' inclusive counts are 3:1 ±10% with thousands of samples.
fn assert_full_chains(samples: &[Sample], alpha: &[Step], beta: &[Step], stderr: &str) {
    for chain in [alpha, beta] {
        let (with_leaf, whole, shown) = chain_share(samples, chain);
        let share = whole as f64 / with_leaf.max(1) as f64;
        eprintln!(
            "{:?}: {whole} of {with_leaf} samples ({:.1}%) hold the whole chain",
            chain[0],
            share * 100.0
        );
        assert!(
            with_leaf > 0 && share >= CHAIN_FLOOR,
            "{whole} of {with_leaf} samples of {:?} ({:.1}%) hold the whole chain {chain:?}, \
             expected at least {:.0}%; the heaviest stacks that do not (leaf first):\n{shown}\n\
             agent said:\n{stderr}",
            chain[0],
            share * 100.0,
            CHAIN_FLOOR * 100.0
        );
    }
    let counts = inclusive(samples);
    let count = |step: Step| -> i64 {
        counts
            .iter()
            .filter(|(f, _)| step.matches(f))
            .map(|(_, c)| *c)
            .sum()
    };
    let (a, b) = (count(alpha[0]), count(beta[0]));
    assert!(a > 0 && b > 0, "{a}:{b}; all: {counts:?}");
    let ratio = a as f64 / b as f64;
    eprintln!("{:?}:{:?} = {a}:{b} = {ratio:.2}", alpha[0], beta[0]);
    assert!(
        (2.7..=3.3).contains(&ratio),
        "{:?}:{:?} = {a}:{b} = {ratio:.2}, expected 3:1 ±10%",
        alpha[0],
        beta[0]
    );
    // 12 s at 997 Hz of a process on one CPU, shared with other tests: thousands of samples.
    assert!(a + b > 3000, "too few samples: {}", a + b);
}

const C_ALPHA: &[Step] = &[
    Step::Function("cmp_alpha"),
    Step::Containing("qsort"),
    Step::Function("sort_alpha"),
    Step::Function("run"),
    Step::Function("main"),
];
const C_BETA: &[Step] = &[
    Step::Function("cmp_beta"),
    Step::Containing("qsort"),
    Step::Function("sort_beta"),
    Step::Function("run"),
    Step::Function("main"),
];

#[test]
fn c_without_frame_pointers_full_chain_through_libc() {
    let (samples, stderr) = profile_workload("nofp_c", 12, &["--unwinder", "dwarf"]);
    assert_full_chains(&samples, C_ALPHA, C_BETA, &stderr);
}

#[test]
fn rust_without_frame_pointers_full_chain() {
    // `main` is both the Rust function (`nofp::main`) and the C entry std's runtime calls it from.
    let alpha = &[
        Step::Function("nofp_inner_alpha"),
        Step::Function("nofp_outer_alpha"),
        Step::Function("nofp_run"),
        Step::Function("main"),
    ];
    let beta = &[
        Step::Function("nofp_inner_beta"),
        Step::Function("nofp_outer_beta"),
        Step::Function("nofp_run"),
        Step::Function("main"),
    ];
    let (samples, stderr) = profile_workload("nofp_rs", 12, &["--unwinder", "dwarf"]);
    assert_full_chains(&samples, alpha, beta, &stderr);
}

/// The control: neither the workload nor the C library keeps frame pointers, so walking them gets
/// lost above the comparator, and the check above would fail.
#[test]
fn frame_pointers_mode_stays_truncated() {
    let (samples, stderr) = profile_workload("nofp_c", 12, &["--unwinder", "frame-pointers"]);
    let reach_main = [C_ALPHA[0], Step::Function("main")];
    let (with_leaf, reaching, shown) = chain_share(&samples, &reach_main);
    let share = reaching as f64 / with_leaf.max(1) as f64;
    eprintln!(
        "frame pointers: {reaching} of {with_leaf} cmp_alpha samples ({:.1}%) reach main",
        share * 100.0
    );
    // The leaf needs no walk: it is there whatever the unwinder.
    assert!(
        with_leaf > 1000,
        "{with_leaf} cmp_alpha samples; agent said:\n{stderr}"
    );
    assert!(
        share < 0.5,
        "{reaching} of {with_leaf} cmp_alpha samples reach main by frame pointers ({:.1}%): \
         the workload keeps frame pointers?\n{shown}",
        share * 100.0
    );
}

/// Of a server's samples with a user stack, the share that must end where threads start. Measured
/// at 99.4–99.8% for both with `--unwinder dwarf` (Debian 12's MariaDB 10.11 and Redis 7.0, three
/// runs); by frame pointers 91% for MariaDB, 0% for Redis. Naming `start_thread` and `clone3`
/// takes the C library's symbols (libc6-dbg, which `cargo xtask setup` installs).
const ROOTED_FLOOR: f64 = 0.95;

/// Where a complete user stack ends: main (when the entry code above it is not named), the C
/// library's start-up code, or a thread's start.
const STACK_ROOTS: &[&str] = &[
    "main",
    "__libc_start_call_main",
    "__libc_start_main",
    "__libc_start_main_impl",
    "_start",
    "start_thread",
    "clone3",
    "__clone3",
    "clone",
    "__clone",
];

/// The pid of this test process's child running `comm` (the shared servers of
/// `loupe_tests::infra` are its children).
fn child_pid(comm: &str) -> u32 {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `PID (COMM) STATE PPID …`; COMM may hold spaces and parentheses.
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            head.split_once(" (").is_some_and(|(_, c)| c == comm)
                && rest.split_whitespace().nth(1) == Some(me.as_str())
        })
        .unwrap_or_else(|| panic!("no child process {comm}"))
}

/// Pipelined batches of writes, reads, list and sorted-set commands on Redis until `stop`.
fn redis_load(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        let command = |args: &[&str]| -> String {
            let mut c = format!("*{}\r\n", args.len());
            for a in args {
                c.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            c
        };
        let value = "v".repeat(200);
        let mut batch = String::new();
        for i in 0..100 {
            let key = format!("unwind:{i}");
            let score = (i * 7919 % 1000).to_string();
            batch.push_str(&command(&["SET", &key, &value]));
            batch.push_str(&command(&["GET", &key]));
            batch.push_str(&command(&["INCR", "unwind:counter"]));
            batch.push_str(&command(&["LPUSH", "unwind:list", &key]));
            batch.push_str(&command(&["LTRIM", "unwind:list", "0", "499"]));
            batch.push_str(&command(&["ZADD", "unwind:zset", &score, &key]));
        }
        batch.push_str(&command(&["LRANGE", "unwind:list", "0", "199"]));
        batch.push_str(&command(&[
            "ZRANGE",
            "unwind:zset",
            "0",
            "99",
            "WITHSCORES",
        ]));
        // Last in the batch: every reply is in once its answer is.
        batch.push_str(&command(&["PING"]));
        let mut buf = vec![0u8; 256 * 1024];
        let mut batches = 0;
        while !stop.load(Ordering::Relaxed) {
            conn.write_all(batch.as_bytes()).expect("send to redis");
            let mut replies: Vec<u8> = Vec::new();
            while !replies.ends_with(b"+PONG\r\n") {
                let n = conn.read(&mut buf).expect("read from redis");
                assert!(n > 0, "redis closed the connection");
                replies.extend_from_slice(&buf[..n]);
            }
            batches += 1;
        }
        batches
    })
}

/// Client sessions on MariaDB, one after the other, until `stop`: writes, an aggregate and some
/// SHA-2 in the server's expression code.
fn mariadb_load(port: u16, stop: Arc<AtomicBool>, table: &'static str) -> thread::JoinHandle<u64> {
    let client = infra::find_bin("mariadb").expect("checked before");
    let sql = format!(
        "CREATE DATABASE IF NOT EXISTS unwind; USE unwind; \
         CREATE TABLE IF NOT EXISTS {table} (id INT AUTO_INCREMENT PRIMARY KEY, k INT, \
         v VARCHAR(64), KEY (k)) ENGINE=InnoDB; \
         INSERT INTO {table} (k, v) SELECT seq % 97, MD5(seq) FROM seq_1_to_500; \
         SELECT k, COUNT(*), MAX(v) FROM {table} GROUP BY k ORDER BY 2 DESC LIMIT 5; \
         SELECT BENCHMARK(20000, SHA2(RAND(), 256)); \
         DELETE FROM {table} WHERE id % 2 = 0;"
    );
    thread::spawn(move || {
        let mut sessions = 0;
        while !stop.load(Ordering::Relaxed) {
            let status = Command::new(&client)
                .args(["-h", "127.0.0.1", "-P", &port.to_string()])
                .args(["-ushop", "-pshop", "-e", &sql])
                .stdout(Stdio::null())
                .status()
                .expect("run the mariadb client");
            assert!(status.success(), "mariadb -e {sql:?} failed");
            sessions += 1;
        }
        sessions
    })
}

/// Of `samples` with a user frame, how many (by count) end at a `STACK_ROOTS` function, and the
/// most common other ends.
fn rooted_share(samples: &[Sample]) -> (i64, i64, Vec<(String, i64)>) {
    let (mut user, mut rooted) = (0, 0);
    let mut others: HashMap<String, i64> = HashMap::new();
    for s in samples {
        let Some(root) = &s.user_root else { continue };
        user += s.decoded.count;
        if STACK_ROOTS.contains(&root.as_str()) {
            rooted += s.decoded.count;
        } else {
            *others.entry(root.clone()).or_default() += s.decoded.count;
        }
    }
    let mut others: Vec<_> = others.into_iter().collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.1));
    others.truncate(10);
    (user, rooted, others)
}

#[test]
fn mariadb_and_redis_stacks_reach_main() {
    require_root();
    // `cargo xtask setup` installs them; the kernel matrix's VMs skip this test by name.
    for program in ["mariadbd", "mariadb-install-db", "mariadb", "redis-server"] {
        if let Err(e) = infra::find_bin(program) {
            panic!("{program} is needed (cargo xtask setup installs it): {e}");
        }
    }
    let servers = infra::infra();
    let mariadbd = child_pid("mariadbd").to_string();
    let redis = child_pid("redis-server").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let redis_clients: Vec<_> = (0..2)
        .map(|_| redis_load(servers.redis_port, stop.clone()))
        .collect();
    let mariadb_clients: Vec<_> = ["t1", "t2"]
        .into_iter()
        .map(|table| mariadb_load(servers.mysql_port, stop.clone(), table))
        .collect();
    // Both under load before the agent starts.
    thread::sleep(Duration::from_secs(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_agent(
        &[
            "run",
            "--pid",
            &mariadbd,
            "--pid",
            &redis,
            "--unwinder",
            "dwarf",
            "--profile-hz",
            "997",
            "--profile-interval",
            "5s",
            "--duration",
            "15s",
            "--output-dir",
            dir.path().to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(75),
    );
    stop.store(true, Ordering::Relaxed);
    let batches: u64 = redis_clients
        .into_iter()
        .map(|c| c.join().expect("redis client"))
        .sum();
    let sessions: u64 = mariadb_clients
        .into_iter()
        .map(|c| c.join().expect("mariadb client"))
        .sum();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "agent failed: {}\n{stderr}",
        out.status
    );
    eprintln!("load: {batches} Redis batches of 602 commands, {sessions} MariaDB sessions");
    assert_rooted_shares(dir.path(), &stderr);
}

/// Checks, per server, that at least `ROOTED_FLOOR` of its user stacks (of enough of them) end
/// where threads start.
fn assert_rooted_shares(dir: &Path, stderr: &str) {
    let profiles = read_profiles(dir);
    let names: Vec<&String> = profiles.iter().map(|(n, _)| n).collect();
    for service in ["mariadbd", "redis-server"] {
        let samples: Vec<Sample> = profiles
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{service}-")))
            .flat_map(|(_, p)| samples_of(p))
            .collect();
        let (user, rooted, others) = rooted_share(&samples);
        let share = rooted as f64 / user.max(1) as f64;
        eprintln!(
            "{service}: {rooted} of {user} samples with a user stack ({:.1}%) end where threads \
             start; other ends: {others:?}",
            share * 100.0
        );
        assert!(
            user >= 200,
            "{service}: {user} samples with a user stack in 15 s under load; profiles: \
             {names:?}\n{stderr}"
        );
        assert!(
            share >= ROOTED_FLOOR,
            "{service}: {rooted} of {user} user stacks ({:.1}%) end where threads start, \
             expected at least {:.0}%; the most common other ends: {others:?}\n{stderr}",
            share * 100.0,
            ROOTED_FLOOR * 100.0
        );
    }
}
