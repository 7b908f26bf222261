//! `cargo xtask demo`: the demo shop on this machine, natively: MariaDB and Redis from Debian's packages on
//! loopback (installed when missing), the five services, a load generator at a steady rate and the agent with
//! the local sink. Ctrl-C stops everything it started.
//!
//! `cargo xtask exercise NAME`: turns an exercise's fault on in the running demo (`--off` turns it off);
//! `cargo xtask exercise NAME --verify` starts a private shop, injects the fault, runs the agent and checks that
//! Loupe's output reveals it. Only what Loupe can show today is checked (the CPU profile); the others say they are
//! pending and fail, they never pass without evidence.
//!
//! Every process is started in its own process group and stopped by group (SIGTERM, then SIGKILL after a grace
//! period), in reverse start order, also when xtask fails or panics. Only a SIGKILL of xtask itself leaves them.
//!
//! Dependencies beyond anyhow and clap: `libc` (signals), `prost` and `flate2` (reading the pprof output).

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

use crate::util::{exec, is_root, root};

/// The services, in start order (the frontend last: it needs the others).
const SERVICES: [&str; 5] = ["auth", "user", "inventory", "payment", "frontend"];

/// Set by the Ctrl-C / SIGTERM handler.
static STOP: AtomicBool = AtomicBool::new(false);

/// `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Scratch directory for data, logs and Loupe's output [default: target/demo].
    #[arg(long, env = "LOUPE_DEMO_DIR")]
    pub dir: Option<PathBuf>,
    /// Requests per second from the load generator.
    #[arg(long, default_value_t = 20.0)]
    pub rps: f64,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Do not start the agent.
    #[arg(long)]
    pub no_agent: bool,
    /// Build the services with frame pointers (RUSTFLAGS="-C force-frame-pointers=yes", in target/demo-fp).
    #[arg(long)]
    pub frame_pointers: bool,
    /// The frontend writes W3C `traceparent` headers on its calls (DEMO_PROPAGATE=1).
    #[arg(long)]
    pub propagate: bool,
    /// Port of the frontend; auth, user, inventory and payment take the next four.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// MariaDB's port.
    #[arg(long, default_value_t = 13306)]
    pub mysql_port: u16,
    /// Redis's port.
    #[arg(long, default_value_t = 16379)]
    pub redis_port: u16,
    /// A fault on from the start, as SERVICE=SPEC with SPEC as in DEMO_FAULTS (e.g. `frontend=cpu?ms=30`).
    #[arg(long = "fault", value_name = "SERVICE=SPEC")]
    pub faults: Vec<String>,
    /// Wipe the MariaDB and Redis data first.
    #[arg(long)]
    pub fresh: bool,
    /// Extra arguments for `loupe-agent run`, after `--`.
    #[arg(last = true)]
    pub agent_args: Vec<String>,
}

/// `cargo xtask exercise`.
#[derive(clap::Args, Debug)]
pub struct ExerciseArgs {
    /// The exercise, named after its fault: cpu, slow-sql, n-plus-one, error-burst, cache-off, memory-growth,
    /// log-spam, dependency-timeout; `list` lists them.
    pub name: String,
    /// Start a private shop, inject the fault, run the agent and check that Loupe's output reveals it.
    #[arg(long)]
    pub verify: bool,
    /// Turn the fault off again in the running demo.
    #[arg(long, conflicts_with = "verify")]
    pub off: bool,
    /// The service to inject into instead of the exercise's own.
    #[arg(long)]
    pub service: Option<String>,
    /// The running demo's scratch directory (where `cargo xtask demo` wrote demo.env) [default: target/demo].
    #[arg(long, env = "LOUPE_DEMO_DIR")]
    pub dir: Option<PathBuf>,
    /// With --verify: how long the agent profiles, in seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// With --verify: build the services with frame pointers.
    #[arg(long)]
    pub frame_pointers: bool,
    /// With --verify: keep the private shop's scratch directory (target/demo-verify/NAME) afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// What `--verify` can check today.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// The named function is the top self-time function of the service's CPU profile.
    HotFunction(&'static str),
    /// Not checkable yet; the reason.
    Pending(&'static str),
}

/// One exercise: the fault it injects and where.
#[derive(Clone, Copy, Debug)]
struct Exercise {
    name: &'static str,
    service: &'static str,
    params: &'static str,
    summary: &'static str,
    check: Check,
}

const PENDING_SPANS: &str = "needs network spans (issue 3)";
const PENDING_OTHER: &str =
    "needs network spans (issue 3) and log/memory signals that Loupe does not collect yet";

const EXERCISES: [Exercise; 8] = [
    Exercise {
        name: "cpu",
        service: "frontend",
        params: "ms=20",
        summary: "checkout and product listing burn 20 ms of CPU in compute_discount_hot_loop",
        check: Check::HotFunction("compute_discount_hot_loop"),
    },
    Exercise {
        name: "slow-sql",
        service: "inventory",
        params: "mode=scan",
        summary: "product pages compute ratings with IGNORE INDEX: a full scan of reviews",
        check: Check::Pending(PENDING_SPANS),
    },
    Exercise {
        name: "n-plus-one",
        service: "inventory",
        params: "",
        summary: "the product listing runs 1 + N queries",
        check: Check::Pending(PENDING_SPANS),
    },
    Exercise {
        name: "error-burst",
        service: "payment",
        params: "ratio=0.3",
        summary: "30% of payments answer 500; checkouts fail with 502",
        check: Check::Pending(PENDING_SPANS),
    },
    Exercise {
        name: "cache-off",
        service: "user",
        params: "mode=miss",
        summary: "every profile lookup misses Redis and reads MySQL",
        check: Check::Pending(PENDING_SPANS),
    },
    Exercise {
        name: "memory-growth",
        service: "payment",
        params: "kb=256&max_mb=1024",
        summary: "payment leaks 256 KiB per request",
        check: Check::Pending(PENDING_OTHER),
    },
    Exercise {
        name: "log-spam",
        service: "inventory",
        params: "lines=100",
        summary: "inventory writes 100 debug lines per request",
        check: Check::Pending(PENDING_OTHER),
    },
    Exercise {
        name: "dependency-timeout",
        service: "payment",
        params: "ms=5000",
        summary: "payment stalls 5 s; the frontend gives up after 1.5 s with 504",
        check: Check::Pending(PENDING_SPANS),
    },
];

fn exercise_named(name: &str) -> anyhow::Result<Exercise> {
    EXERCISES
        .iter()
        .copied()
        .find(|e| e.name == name)
        .with_context(|| {
            let names: Vec<&str> = EXERCISES.iter().map(|e| e.name).collect();
            format!("no exercise {name:?} (known: {})", names.join(", "))
        })
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points

/// `cargo xtask demo`.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    ensure!(args.rps > 0.0, "--rps must be above 0");
    let root = root();
    let dir = absolute(
        args.dir
            .clone()
            .unwrap_or_else(|| target_dir().join("demo")),
    );
    install_stop_handler();
    ensure_db_packages()?;
    let shop = build_shop(args.frame_pointers)?;
    let agent = agent_binary();
    let run_agent = !args.no_agent && agent.is_file();

    let ports = Ports::fixed(args.port, args.mysql_port, args.redis_port);
    ports.check_free()?;
    let mut faults = BTreeMap::new();
    for f in &args.faults {
        let (svc, spec) = f
            .split_once('=')
            .with_context(|| format!("--fault {f:?}: expected SERVICE=SPEC"))?;
        ensure!(SERVICES.contains(&svc), "--fault {f:?}: no service {svc:?}");
        faults
            .entry(svc.to_string())
            .and_modify(|s: &mut String| {
                s.push(';');
                s.push_str(spec);
            })
            .or_insert_with(|| spec.to_string());
    }
    let opts = StackOpts {
        dir: dir.clone(),
        shop,
        ports,
        rps: args.rps,
        propagate: args.propagate,
        faults,
        reviews: 200_000,
        fresh: args.fresh,
        loadgen_to_terminal: true,
    };
    let mut stack = Stack::start(&opts)?;
    let out = dir.join("loupe-data");
    if run_agent {
        if !is_root() {
            println!(
                "warning: not root: the agent needs root (or CAP_BPF + CAP_PERFMON) and will probably refuse"
            );
        }
        let mut cmd = Command::new(&agent);
        cmd.arg("run")
            .arg("--output-dir")
            .arg(&out)
            .args(&args.agent_args);
        stack.spawn("agent", cmd, None, false)?;
    }
    stack.write_env_file()?;
    print_banner(&opts, &stack, run_agent, &agent, &out, &root);

    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let result = stack.supervise(deadline);
    stack.stop();
    result
}

/// `cargo xtask exercise`.
pub fn exercise(args: ExerciseArgs) -> anyhow::Result<()> {
    if args.name == "list" {
        println!(
            "{:<20} {:<10} {:<22} --verify",
            "exercise", "service", "fault params"
        );
        for e in EXERCISES {
            let check = match e.check {
                Check::HotFunction(f) => format!("checks {f} tops the CPU profile"),
                Check::Pending(why) => format!("pending: {why}"),
            };
            println!("{:<20} {:<10} {:<22} {check}", e.name, e.service, e.params);
        }
        return Ok(());
    }
    let ex = exercise_named(&args.name)?;
    let service = args
        .service
        .clone()
        .unwrap_or_else(|| ex.service.to_string());
    ensure!(
        SERVICES.contains(&service.as_str()),
        "--service {service:?}: not a shop service"
    );
    if args.verify {
        return verify(&args, ex, &service);
    }

    let dir = absolute(
        args.dir
            .clone()
            .unwrap_or_else(|| target_dir().join("demo")),
    );
    let env_file = dir.join("demo.env");
    let env = fs::read_to_string(&env_file).with_context(|| {
        format!(
            "reading {} (is the demo running? start it with `cargo xtask demo`)",
            env_file.display()
        )
    })?;
    let addr: SocketAddr = env
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{service}=")))
        .with_context(|| format!("{} has no address for {service}", env_file.display()))?
        .trim()
        .parse()
        .context("bad address in demo.env")?;
    let path = if args.off {
        format!("/admin/fault/{}?on=0", ex.name)
    } else if ex.params.is_empty() {
        format!("/admin/fault/{}?on=1", ex.name)
    } else {
        format!("/admin/fault/{}?on=1&{}", ex.name, ex.params)
    };
    let (status, body) = http(addr, "POST", &path, None)
        .with_context(|| format!("calling {service} at {addr} (is the demo running?)"))?;
    ensure!(status == 200, "{service} answered {status}: {body}");
    if args.off {
        println!("{}: fault {} is off in {service}", ex.name, ex.name);
    } else {
        println!(
            "{}: fault {} is ON in {service} ({})",
            ex.name, ex.name, ex.summary
        );
        println!(
            "  read docs/exercises/{}.md; turn it off with `cargo xtask exercise {} --off`",
            ex.name, ex.name
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// --verify

fn verify(args: &ExerciseArgs, ex: Exercise, service: &str) -> anyhow::Result<()> {
    let hot = match ex.check {
        Check::Pending(why) => bail!(
            "exercise {}: pending: {why}; no check is run, so this does not pass",
            ex.name
        ),
        Check::HotFunction(f) => f,
    };
    ensure!(
        service == ex.service,
        "exercise {} verifies the hot function of {}; --service cannot change that",
        ex.name,
        ex.service
    );
    let agent = agent_binary();
    if !agent.is_file() {
        bail!(
            "{} does not exist; build the agent first with `cargo xtask build`",
            agent.display()
        );
    }
    ensure!(
        is_root(),
        "exercise --verify runs the agent, which needs root"
    );
    install_stop_handler();
    ensure_db_packages()?;
    let shop = build_shop(args.frame_pointers)?;
    let dir = target_dir().join("demo-verify").join(ex.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let opts = StackOpts {
        dir: dir.clone(),
        shop,
        ports: Ports::free()?,
        rps: 20.0,
        propagate: false,
        faults: BTreeMap::new(),
        reviews: 20_000,
        fresh: true,
        loadgen_to_terminal: false,
    };
    let mut stack = Stack::start(&opts)?;
    let result = (|| {
        let addr = stack.ports.service(service);
        let path = format!("/admin/fault/{}?on=1&{}", ex.name, ex.params);
        let (status, body) = http(addr, "POST", &path, None)?;
        ensure!(
            status == 200,
            "injecting {}: {service} answered {status}: {body}",
            ex.name
        );
        let pid = stack.pid(service).context("service not running")?;
        println!(
            "exercise {}: fault on in {service} (pid {pid}); profiling for {} s",
            ex.name, args.seconds
        );
        sleep(Duration::from_secs(2));

        let out = dir.join("loupe-data");
        let mut cmd = Command::new(&agent);
        cmd.arg("run").arg("--output-dir").arg(&out);
        cmd.arg("--duration")
            .arg(format!("{}s", args.seconds))
            .arg("--profile-hz")
            .arg("99");
        cmd.arg("--pid").arg(pid.to_string());
        let log = dir.join("logs").join("agent.log");
        let status = run_with_timeout(cmd, &log, Duration::from_secs(args.seconds + 60))?;
        ensure!(
            status.success(),
            "the agent failed ({status}); see {}",
            log.display()
        );
        let profile = ServiceProfile::read(&out, service, pid)?;
        profile.print_top(10);
        profile.check_top(hot)?;
        println!(
            "PASS exercise {}: {hot} tops {service}'s CPU profile ({})",
            ex.name, profile.source
        );
        Ok(())
    })();
    stack.stop();
    if result.is_ok() && !args.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

/// Runs `cmd` in its own process group, output to `log`, killing the group if it outlives `timeout` or on Ctrl-C.
fn run_with_timeout(
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if STOP.load(Ordering::SeqCst) || Instant::now() >= deadline {
            kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            bail!(
                "{cmd:?} did not finish in {} s (or was interrupted)",
                timeout.as_secs()
            );
        }
        sleep(Duration::from_millis(200));
    }
}

/// The samples of one service, from every pprof file Loupe wrote.
struct ServiceProfile {
    /// Self value per function (the physical frame of the leaf location: the symbol the sampled IP is in).
    self_by_function: BTreeMap<String, i64>,
    /// Functions inlined into the leaf frame, per physical leaf function.
    inlined: BTreeMap<String, Vec<String>>,
    total: i64,
    source: String,
}

impl ServiceProfile {
    /// Reads `DIR/profiles/*.pb.gz`. Samples are attributed to the service by their `pid` label when the files
    /// carry one, else by file name (the local sink writes one profile per service).
    fn read(out: &Path, service: &str, pid: u32) -> anyhow::Result<ServiceProfile> {
        let dir = out.join("profiles");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("reading {} (did the agent write profiles?)", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.to_string_lossy().ends_with(".pb.gz") || p.extension().is_some_and(|x| x == "pb")
            })
            .collect();
        files.sort();
        ensure!(!files.is_empty(), "no pprof files in {}", dir.display());
        let mut profiles = Vec::new();
        for f in &files {
            let bytes = fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut raw = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut raw)
                    .with_context(|| format!("gunzip {}", f.display()))?;
                raw
            } else {
                bytes
            };
            let p = <pprof::Profile as prost::Message>::decode(&bytes[..])
                .with_context(|| format!("decoding {}", f.display()))?;
            profiles.push((f.clone(), p));
        }
        let has_pid_labels = profiles
            .iter()
            .any(|(_, p)| p.sample.iter().any(|s| p.label_num(s, "pid").is_some()));
        let mut sp = ServiceProfile {
            self_by_function: BTreeMap::new(),
            inlined: BTreeMap::new(),
            total: 0,
            source: String::new(),
        };
        for (file, p) in &profiles {
            let by_name = file
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(service));
            let value_index = p.value_index();
            for s in &p.sample {
                let ours = if has_pid_labels {
                    p.label_num(s, "pid") == Some(i64::from(pid))
                } else {
                    by_name
                };
                if !ours {
                    continue;
                }
                let v = s.value.get(value_index).copied().unwrap_or(0);
                let frames = s
                    .location_id
                    .first()
                    .map(|id| p.frames(*id))
                    .unwrap_or_default();
                let leaf = frames
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "[unknown]".to_string());
                *sp.self_by_function.entry(leaf.clone()).or_default() += v;
                if frames.len() > 1 {
                    let inl = sp.inlined.entry(leaf).or_default();
                    for f in &frames[..frames.len() - 1] {
                        if !inl.contains(f) {
                            inl.push(f.clone());
                        }
                    }
                }
                sp.total += v;
            }
        }
        sp.source = if has_pid_labels {
            format!("{} pprof files, samples with pid={pid}", files.len())
        } else {
            format!("pprof files named after {service}")
        };
        ensure!(
            sp.total > 0,
            "no samples for {service} (pid {pid}) in {} ({})",
            dir.display(),
            sp.source
        );
        Ok(sp)
    }

    fn ranked(&self) -> Vec<(&String, i64)> {
        let mut v: Vec<(&String, i64)> =
            self.self_by_function.iter().map(|(k, v)| (k, *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }

    fn print_top(&self, n: usize) {
        println!("top self-time functions ({}):", self.source);
        for (name, v) in self.ranked().into_iter().take(n) {
            let inl = self
                .inlined
                .get(name)
                .map(|i| {
                    let shown: Vec<String> = i.iter().take(3).map(|f| short(f, 40)).collect();
                    let more = if i.len() > 3 { ", …" } else { "" };
                    format!("  [inlined: {}{more}]", shown.join(", "))
                })
                .unwrap_or_default();
            println!(
                "  {:>5.1}%  {}{inl}",
                100.0 * v as f64 / self.total as f64,
                short(name, 100)
            );
        }
    }

    fn check_top(&self, hot: &str) -> anyhow::Result<()> {
        let ranked = self.ranked();
        let (top, v) = ranked.first().context("empty profile")?;
        ensure!(
            top.contains(hot),
            "FAIL: the top function is {top} ({:.1}%), not {hot}",
            100.0 * *v as f64 / self.total as f64
        );
        Ok(())
    }
}

/// `s` cut to `max` characters.
fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// The subset of pprof's `profile.proto` that --verify reads (field numbers as upstream).
mod pprof {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
    }

    impl Profile {
        fn string(&self, i: i64) -> &str {
            usize::try_from(i)
                .ok()
                .and_then(|i| self.string_table.get(i))
                .map(String::as_str)
                .unwrap_or("")
        }

        /// A label's number, or its string parsed as a number (`pid` may be either).
        pub fn label_num(&self, s: &Sample, key: &str) -> Option<i64> {
            let l = s.label.iter().find(|l| self.string(l.key) == key)?;
            if l.str != 0 {
                self.string(l.str).parse().ok()
            } else {
                Some(l.num)
            }
        }

        /// The sample value to count: `samples`/`count` if present, else the first.
        pub fn value_index(&self) -> usize {
            self.sample_type
                .iter()
                .position(|t| self.string(t.r#type) == "samples")
                .unwrap_or(0)
        }

        /// The function names of a location, innermost inlined first, the physical function last.
        pub fn frames(&self, location_id: u64) -> Vec<String> {
            let Some(loc) = self.location.iter().find(|l| l.id == location_id) else {
                return Vec::new();
            };
            loc.line
                .iter()
                .map(|line| {
                    self.function
                        .iter()
                        .find(|f| f.id == line.function_id)
                        .map(|f| self.string(f.name).to_string())
                        .unwrap_or_else(|| "[unknown]".to_string())
                })
                .collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The stack

/// Where everything listens.
#[derive(Clone, Debug)]
struct Ports {
    services: BTreeMap<&'static str, u16>,
    mysql: u16,
    redis: u16,
}

impl Ports {
    fn fixed(frontend: u16, mysql: u16, redis: u16) -> Ports {
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
    fn free() -> anyhow::Result<Ports> {
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

    fn service(&self, name: &str) -> SocketAddr {
        SocketAddr::from((
            [127, 0, 0, 1],
            self.services.get(name).copied().unwrap_or(0),
        ))
    }

    fn check_free(&self) -> anyhow::Result<()> {
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

struct StackOpts {
    dir: PathBuf,
    shop: PathBuf,
    ports: Ports,
    rps: f64,
    propagate: bool,
    faults: BTreeMap<String, String>,
    reviews: u64,
    fresh: bool,
    loadgen_to_terminal: bool,
}

struct Proc {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    /// Whether the stack is broken without it.
    critical: bool,
}

/// The processes of a running shop; stopped on drop.
struct Stack {
    procs: Vec<Proc>,
    ports: Ports,
    dir: PathBuf,
}

impl Stack {
    fn start(o: &StackOpts) -> anyhow::Result<Stack> {
        let logs = o.dir.join("logs");
        fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let mut stack = Stack {
            procs: Vec::new(),
            ports: o.ports.clone(),
            dir: o.dir.clone(),
        };
        stack.start_mariadb(o)?;
        stack.start_redis(o)?;
        for svc in SERVICES {
            let mut cmd = Command::new(&o.shop);
            cmd.arg(svc)
                .env("OTEL_SERVICE_NAME", svc)
                .env("BIND_ADDR", "127.0.0.1");
            cmd.env("PORT", o.ports.services[svc].to_string());
            cmd.env(
                "MYSQL_URL",
                format!("mysql://shop:shop@127.0.0.1:{}/shop", o.ports.mysql),
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
            stack.spawn(svc, cmd, Some(logs.join(format!("{svc}.log"))), true)?;
        }
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
        Ok(stack)
    }

    fn start_mariadb(&mut self, o: &StackOpts) -> anyhow::Result<()> {
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

    fn start_redis(&mut self, o: &StackOpts) -> anyhow::Result<()> {
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

    /// Starts `cmd` in a process group of its own, output to `log` (or the terminal).
    fn spawn(
        &mut self,
        name: &str,
        mut cmd: Command,
        log: Option<PathBuf>,
        critical: bool,
    ) -> anyhow::Result<()> {
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
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            critical,
        });
        Ok(())
    }

    fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Fails (naming the log) if a process has exited.
    fn check_alive(&mut self, name: &str) -> anyhow::Result<()> {
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

    fn wait_tcp(&mut self, name: &str, port: u16, timeout: Duration) -> anyhow::Result<()> {
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

    fn wait_http(&mut self, name: &str, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
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

    fn write_env_file(&self) -> anyhow::Result<()> {
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

    /// Waits for Ctrl-C, the deadline, or a critical process dying.
    fn supervise(&mut self, deadline: Option<Instant>) -> anyhow::Result<()> {
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
    fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            if matches!(p.child.try_wait(), Ok(Some(_))) {
                kill_group(p.child.id(), libc::SIGKILL); // anything it left in its group
                continue;
            }
            kill_group(p.child.id(), libc::SIGTERM);
            let grace = if p.name == "mariadb" { 30 } else { 10 };
            let deadline = Instant::now() + Duration::from_secs(grace);
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        println!("{} did not stop in {grace} s; killing it", p.name);
                        kill_group(p.child.id(), libc::SIGKILL);
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => sleep(Duration::from_millis(100)),
                }
            }
            kill_group(p.child.id(), libc::SIGKILL);
        }
        let _ = fs::remove_file(self.dir.join("demo.env"));
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `signal` to the process group `pgid` (a child started with `process_group(0)`).
fn kill_group(pgid: u32, signal: libc::c_int) {
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

fn print_banner(
    o: &StackOpts,
    stack: &Stack,
    agent_running: bool,
    agent: &Path,
    out: &Path,
    root: &Path,
) {
    let rel = |p: &Path| {
        p.strip_prefix(root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let logs = rel(&o.dir.join("logs"));
    println!("\nLoupe demo shop is running; Ctrl-C stops everything.\n");
    for svc in ["frontend", "auth", "user", "inventory", "payment"] {
        println!(
            "  {svc:<10} http://{:<16} pid {:<8} log {}/{svc}.log",
            o.ports.service(svc),
            stack.pid(svc).unwrap_or(0),
            logs.display()
        );
    }
    println!(
        "  {:<10} 127.0.0.1:{:<11} pid {:<8} log {}/mariadb.log  (user shop, password shop, database shop)",
        "mariadb",
        o.ports.mysql,
        stack.pid("mariadb").unwrap_or(0),
        logs.display()
    );
    println!(
        "  {:<10} 127.0.0.1:{:<11} pid {:<8} log {}/redis.log",
        "redis",
        o.ports.redis,
        stack.pid("redis").unwrap_or(0),
        logs.display()
    );
    println!(
        "  {:<10} {} req/s to the frontend; reports below every 10 s",
        "loadgen", o.rps
    );
    if agent_running {
        println!(
            "  {:<10} {} run --output-dir {}  (pid {})",
            "agent",
            rel(agent).display(),
            rel(out).display(),
            stack.pid("agent").unwrap_or(0)
        );
    } else if agent.is_file() {
        println!("  {:<10} not started (--no-agent)", "agent");
    } else {
        println!(
            "  {:<10} not started: {} does not exist; build it with `cargo xtask build`",
            "agent",
            rel(agent).display()
        );
    }
    println!("\nWhere to look:");
    println!(
        "  {}/flamegraph.svg        CPU flamegraph of every service, refreshed each interval",
        rel(out).display()
    );
    println!(
        "  {}/profiles/*.pb.gz      pprof per service per interval",
        rel(out).display()
    );
    println!(
        "  tail -f {}/*.log                 service logs (plain and JSON lines)",
        logs.display()
    );
    println!(
        "  curl http://{}/admin/faults        fault switches (any service)",
        o.ports.service("inventory")
    );
    println!(
        "  cargo xtask exercise list                     the exercises; `cargo xtask exercise cpu` injects one"
    );
    println!("  docs/exercises/README.md                      what to look for, and the fixes\n");
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set [`STOP`]; the loops that wait poll it and stop everything in order.
fn install_stop_handler() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(absolute)
        .unwrap_or_else(|| root().join("target"))
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

fn agent_binary() -> PathBuf {
    target_dir().join("release").join("loupe-agent")
}

/// Finds a program on PATH or in the sbin directories (MariaDB's server lives in /usr/sbin).
fn find_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found; install it with `cargo xtask setup` (packages mariadb-server, redis-server)"))
}

/// Installs Debian's mariadb-server and redis-server when their programs are missing (`apt-get update` first
/// when apt has no candidate). `cargo xtask setup` may call this too.
pub fn ensure_db_packages() -> anyhow::Result<()> {
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
fn build_shop(frame_pointers: bool) -> anyhow::Result<PathBuf> {
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
fn http(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exercises_match_their_docs() {
        let docs = root().join("docs").join("exercises");
        for e in EXERCISES {
            assert!(
                docs.join(format!("{}.md", e.name)).is_file(),
                "docs/exercises/{}.md is missing",
                e.name
            );
        }
    }

    #[test]
    fn pprof_subset_reads_leaf_and_pid() {
        use prost::Message;
        let strings = [
            "",
            "samples",
            "count",
            "pid",
            "compute_discount_hot_loop",
            "spin",
            "main",
        ];
        let p = pprof::Profile {
            sample_type: vec![pprof::ValueType { r#type: 1, unit: 2 }],
            sample: vec![pprof::Sample {
                location_id: vec![1, 2],
                value: vec![7],
                label: vec![pprof::Label {
                    key: 3,
                    str: 0,
                    num: 42,
                }],
            }],
            location: vec![
                pprof::Location {
                    id: 1,
                    line: vec![
                        pprof::Line { function_id: 2 },
                        pprof::Line { function_id: 1 },
                    ],
                },
                pprof::Location {
                    id: 2,
                    line: vec![pprof::Line { function_id: 3 }],
                },
            ],
            function: vec![
                pprof::Function { id: 1, name: 4 },
                pprof::Function { id: 2, name: 5 },
                pprof::Function { id: 3, name: 6 },
            ],
            string_table: strings.iter().map(|s| s.to_string()).collect(),
        };
        let back = pprof::Profile::decode(&p.encode_to_vec()[..]).expect("round trip");
        assert_eq!(back.label_num(&back.sample[0], "pid"), Some(42));
        assert_eq!(
            back.frames(1),
            vec!["spin".to_string(), "compute_discount_hot_loop".to_string()]
        );
        assert_eq!(back.value_index(), 0);
    }
}
