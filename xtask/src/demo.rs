//! `cargo xtask demo`: the demo shop on this machine, natively: MariaDB and Redis from Debian's packages on
//! loopback (installed when missing), the five services, a load generator at a steady rate and the agent with
//! the local sink. Ctrl-C stops everything it started.
//!
//! `cargo xtask exercise NAME`: turns an exercise's fault on in the running demo (`--off` turns it off);
//! `cargo xtask exercise NAME --verify` starts a private shop, injects the fault, runs the agent and checks that
//! Loupe's output reveals it: the CPU profile (cpu), or the network spans in `traces.jsonl` compared with a
//! baseline before the fault (slow-sql, n-plus-one, error-burst, cache-off, dependency-timeout). For the span
//! checks the agent starts before the services and watches only their pids. What Loupe cannot show yet
//! (memory-growth, log-spam) is reported as pending and fails; nothing passes without evidence.
//!
//! Every process is started in its own process group and stopped by group (SIGTERM, then SIGKILL after a grace
//! period), in reverse start order, also when xtask fails or panics. Only a SIGKILL of xtask itself leaves them.
//!
//! Dependencies beyond anyhow and clap: `libc` (signals), `prost` and `flate2` (reading the pprof output),
//! `serde_json` (reading the spans, see spans_read.rs).

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

use crate::spans_read::{self, Span, quantile};
use crate::util::{exec, is_root, root};

/// The services, in start order (the frontend last: it needs the others).
const SERVICES: [&str; 5] = ["auth", "user", "inventory", "payment", "frontend"];

/// How long the frontend waits for an upstream before answering 504 (`UPSTREAM_TIMEOUT_MS`, the shop's default).
const UPSTREAM_TIMEOUT_MS: u64 = 1500;

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
    /// With --verify: how long the agent profiles (cpu), or records with the fault on after a baseline without it
    /// (the span checks), in seconds.
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
    /// Loupe's network spans show the fault, compared with a baseline before it.
    Spans(SpanCheck),
    /// Not checkable yet; the reason.
    Pending(&'static str),
}

/// The span-based checks, one per exercise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpanCheck {
    SlowSql,
    NPlusOne,
    ErrorBurst,
    CacheOff,
    DependencyTimeout,
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

const PENDING_MEMORY: &str = "needs memory signals, which Loupe does not collect yet";
const PENDING_LOGS: &str = "needs log collection, which Loupe does not do yet";

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
        check: Check::Spans(SpanCheck::SlowSql),
    },
    Exercise {
        name: "n-plus-one",
        service: "inventory",
        params: "",
        summary: "the product listing runs 1 + N queries",
        check: Check::Spans(SpanCheck::NPlusOne),
    },
    Exercise {
        name: "error-burst",
        service: "payment",
        params: "ratio=0.3",
        summary: "30% of payments answer 500; checkouts fail with 502",
        check: Check::Spans(SpanCheck::ErrorBurst),
    },
    Exercise {
        name: "cache-off",
        service: "user",
        params: "mode=miss",
        summary: "every profile lookup misses Redis and reads MySQL",
        check: Check::Spans(SpanCheck::CacheOff),
    },
    Exercise {
        name: "memory-growth",
        service: "payment",
        params: "kb=256&max_mb=1024",
        summary: "payment leaks 256 KiB per request",
        check: Check::Pending(PENDING_MEMORY),
    },
    Exercise {
        name: "log-spam",
        service: "inventory",
        params: "lines=100",
        summary: "inventory writes 100 debug lines per request",
        check: Check::Pending(PENDING_LOGS),
    },
    Exercise {
        name: "dependency-timeout",
        service: "payment",
        params: "ms=5000",
        summary: "payment stalls 5 s; the frontend gives up after 1.5 s with 504",
        check: Check::Spans(SpanCheck::DependencyTimeout),
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
    // The agent before the services, so it sees every connection from its first byte (connections
    // open before the agent are followed too, but a read already blocked at its start is missed).
    let mut stack = Stack::start_databases(&opts)?;
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
        if let Err(e) = stack.start_agent(cmd, None, false) {
            println!("note: {e:#}; the shop runs without spans of its first connections");
        }
    }
    stack.start_services(&opts)?;
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
                Check::Spans(c) => c.describe().to_string(),
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
    let what = match ex.check {
        Check::Pending(why) => bail!(
            "exercise {}: pending: {why}; no check is run, so this does not pass",
            ex.name
        ),
        Check::HotFunction(_) => "the hot function",
        Check::Spans(_) => "the spans",
    };
    ensure!(
        service == ex.service,
        "exercise {} verifies {what} of {}; --service cannot change that",
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
        // slow-sql scans `reviews`: as many rows as the demo, so that the scan costs what the docs say.
        reviews: if matches!(ex.check, Check::Spans(SpanCheck::SlowSql)) {
            200_000
        } else {
            20_000
        },
        fresh: true,
        loadgen_to_terminal: false,
    };
    let result = match ex.check {
        Check::HotFunction(hot) => verify_profile(args, ex, service, hot, &agent, &opts),
        Check::Spans(check) => verify_spans(args, ex, check, &agent, &opts),
        Check::Pending(_) => unreachable!("refused above"),
    };
    if result.is_ok() && !args.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

/// The CPU exercise: the agent profiles the faulted service; its hot function must top the profile.
fn verify_profile(
    args: &ExerciseArgs,
    ex: Exercise,
    service: &str,
    hot: &str,
    agent: &Path,
    opts: &StackOpts,
) -> anyhow::Result<()> {
    let dir = &opts.dir;
    let mut stack = Stack::start(opts)?;
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
        let mut cmd = Command::new(agent);
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
    result
}

/// How a span-based check runs: warm-up, baseline, then the fault; seconds.
struct Timeline {
    /// Load before the baseline starts (connection pools, the user cache).
    warmup: u64,
    /// Load without the fault, the reference.
    baseline: u64,
    /// After injecting, before the fault window starts.
    settle: u64,
    /// After the fault window, for the requests in flight to finish before the agent stops.
    tail: u64,
}

impl SpanCheck {
    /// What it asserts, for `exercise list`.
    fn describe(self) -> &'static str {
        match self {
            SpanCheck::SlowSql => {
                "checks spans: the IGNORE INDEX reviews query tops inventory's MySQL statements and slowest spans, p50 ≥5× baseline"
            }
            SpanCheck::NPlusOne => {
                "checks spans: inventory's MySQL spans per GET /products go from ~1 to ≥10"
            }
            SpanCheck::ErrorBurst => {
                "checks spans: payment's 5xx share ≈ ratio (±15 points), errors on frontend→payment calls"
            }
            SpanCheck::CacheOff => {
                "checks spans: user's MySQL spans per request from ≈0 (warm cache) to ≈1, plus Redis GET+SET"
            }
            SpanCheck::DependencyTimeout => {
                "checks spans: frontend checkouts answer 504 (error) after the 1.5 s timeout, none before"
            }
        }
    }

    fn timeline(self) -> Timeline {
        Timeline {
            // The user cache needs its regulars loaded for a warm baseline.
            warmup: if self == SpanCheck::CacheOff { 8 } else { 5 },
            baseline: 15,
            settle: 2,
            tail: 2,
        }
    }
}

/// The span exercises: the agent starts before the services (it sees their connections from the first byte), the shop
/// runs a baseline without the fault, then with it; the spans of both windows are compared.
fn verify_spans(
    args: &ExerciseArgs,
    ex: Exercise,
    check: SpanCheck,
    agent: &Path,
    opts: &StackOpts,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = &opts.dir;
    let out = dir.join("loupe-data");
    let log = dir.join("logs").join("agent.log");
    let mut stack = Stack::start_databases(opts)?;
    let result = (|| {
        // The services wait at a gate until the agent has attached, watching only their pids: other traffic on
        // this host must neither flood the agent nor mix with the shop's.
        let gates = stack.spawn_services(opts, true)?;
        let mut cmd = Command::new(agent);
        cmd.arg("run")
            .arg("--output-dir")
            .arg(&out)
            // Spans are what is checked: profile little, and only once, at exit.
            .args(["--profile-hz", "1", "--profile-interval", "10m"]);
        for svc in SERVICES {
            let pid = stack.pid(svc).context("service not running")?;
            cmd.arg("--pid").arg(pid.to_string());
        }
        let spans_on = stack.start_agent(cmd, Some(log.clone()), true)?;
        ensure!(
            spans_on,
            "the agent runs without network spans; see {}",
            log.display()
        );
        drop(gates);
        stack.start_load(opts)?;
        let t = check.timeline();
        println!(
            "exercise {}: shop and agent up; {} s warm-up, {} s baseline, then the fault for {} s",
            ex.name, t.warmup, t.baseline, args.seconds
        );
        stack.run_for(t.warmup)?;
        let base_from = unix_ns();
        stack.run_for(t.baseline)?;
        let base_to = unix_ns();

        let addr = stack.ports.service(ex.service);
        let path = format!("/admin/fault/{}?on=1&{}", ex.name, ex.params);
        let (status, body) = http(addr, "POST", &path, None)?;
        ensure!(
            status == 200,
            "injecting {}: {} answered {status}: {body}",
            ex.name,
            ex.service
        );
        println!(
            "exercise {}: fault on in {} ({})",
            ex.name, ex.service, ex.params
        );
        stack.run_for(t.settle)?;
        let fault_from = unix_ns();
        stack.run_for(args.seconds)?;
        let fault_to = unix_ns();
        stack.run_for(t.tail)?;

        let status = stack.stop_one("agent")?;
        ensure!(
            status.success(),
            "the agent failed ({status}); see {}",
            log.display()
        );
        let read = spans_read::read(&out)?;
        ensure!(
            !read.spans.is_empty(),
            "the agent wrote no spans; see {}",
            log.display()
        );
        let base = Window::new("baseline", &read.spans, base_from, base_to);
        let fault = Window::new("fault", &read.spans, fault_from, fault_to);
        println!(
            "spans: {} in traces.jsonl ({} unreadable lines); {} in the baseline window, {} in the fault window",
            read.spans.len(),
            read.bad_lines,
            base.spans.len(),
            fault.spans.len()
        );
        // The load the shop actually served: far below the load generator's rate, the host was too busy (other
        // work on it) for latencies to mean much.
        let served = |w: &Window, secs: u64| w.server("frontend", "/").len() as f64 / secs as f64;
        let (served_base, served_fault) = (served(&base, t.baseline), served(&fault, args.seconds));
        println!(
            "load: the frontend served {served_base:.1} req/s in the baseline, {served_fault:.1} with the fault ({} sent)",
            opts.rps
        );
        let mut v = Verdict::default();
        let kept_up = served_base.min(served_fault) / opts.rps;
        if kept_up < 0.9 {
            v.overloaded = Some(format!(
                "the shop served {:.0}% of its load: this host was overloaded during the run",
                100.0 * kept_up
            ));
        }
        match check {
            SpanCheck::SlowSql => check_slow_sql(&base, &fault, &mut v),
            SpanCheck::NPlusOne => check_n_plus_one(&base, &fault, &mut v),
            SpanCheck::ErrorBurst => {
                let ratio = fault_param(ex.params, "ratio").unwrap_or(0.3);
                let port = stack.ports.services["payment"];
                check_error_burst(&base, &fault, ratio, port, &mut v)
            }
            SpanCheck::CacheOff => check_cache_off(&base, &fault, &mut v),
            SpanCheck::DependencyTimeout => {
                let stall = fault_param(ex.params, "ms").unwrap_or(5000.0);
                let port = stack.ports.services["payment"];
                check_dependency_timeout(&base, &fault, stall, port, &mut v)
            }
        }
        v.finish(ex.name, started)
    })();
    stack.stop();
    if result.is_err() {
        println!(
            "the shop's logs, the agent's log and traces.jsonl are in {}",
            dir.display()
        );
    }
    result
}

/// Prints the statements of `spans` (MySQL or Redis), the slowest median (or the most frequent) first.
fn print_statements(title: &str, spans: &[&Span], top: usize, by_count: bool) {
    let mut by: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        by.entry(statement(s)).or_default().push(s);
    }
    let mut rows: Vec<(&str, Vec<&Span>)> = by.into_iter().collect();
    if by_count {
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.len()));
    } else {
        rows.sort_by(|a, b| p50(&b.1).total_cmp(&p50(&a.1)));
    }
    println!("{title}: {} spans, {} statements", spans.len(), rows.len());
    println!(
        "  {:>6} {:>9} {:>9}  statement",
        "count", "p50 ms", "max ms"
    );
    for (stmt, v) in rows.iter().take(top) {
        let max = durations(v).into_iter().fold(0.0, f64::max);
        println!(
            "  {:>6} {:>9.2} {:>9.2}  {}",
            v.len(),
            p50(v),
            max,
            short(stmt, 110)
        );
    }
}

/// slow-sql (mode=scan): inventory's ratings query reads `reviews` IGNORE INDEX.
fn check_slow_sql(base: &Window, fault: &Window, v: &mut Verdict) {
    const FAULTED: &str = "IGNORE INDEX";
    let is_faulted = |s: &&Span| statement(s).contains(FAULTED) && statement(s).contains("reviews");
    let is_ratings = |s: &&Span| statement(s).contains("FROM reviews");
    let mysql_base = base.db("inventory", "mysql");
    let mysql_fault = fault.db("inventory", "mysql");
    print_statements("inventory MySQL spans, baseline", &mysql_base, 5, false);
    print_statements("inventory MySQL spans, fault", &mysql_fault, 5, false);

    // The slowest spans. On a host busy with other work any statement can stall now and then, so the single
    // slowest span is shown, and most of the ten slowest must be the faulted statement.
    let mut slowest = mysql_fault.clone();
    slowest.sort_by(|a, b| b.duration_ms().total_cmp(&a.duration_ms()));
    slowest.truncate(10);
    let in_top = slowest.iter().filter(|s| is_faulted(s)).count();
    v.check_tail(
        slowest.len() == 10 && in_top >= 6,
        format!(
            "the faulted statement holds {in_top} of inventory's 10 slowest MySQL spans (≥ 6); the slowest: {}",
            slowest.first().map_or("none".to_string(), |s| format!(
                "{:.1} ms {}",
                s.duration_ms(),
                short(statement(s), 90)
            ))
        ),
    );
    // The latency list: statements by median, among those seen a few times.
    let mut by: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in &mysql_fault {
        by.entry(statement(s)).or_default().push(s);
    }
    let top = by
        .iter()
        .filter(|(_, v)| v.len() >= 5)
        .max_by(|a, b| p50(a.1).total_cmp(&p50(b.1)));
    v.check(
        top.is_some_and(|(stmt, _)| stmt.contains(FAULTED)),
        format!(
            "the faulted statement tops inventory's MySQL statements by p50: {}",
            top.map_or("none seen 5 times".to_string(), |(s, v)| format!(
                "{:.1} ms {}",
                p50(v),
                short(s, 90)
            ))
        ),
    );
    let faulted: Vec<&Span> = mysql_fault.iter().copied().filter(is_faulted).collect();
    let before: Vec<&Span> = mysql_base.iter().copied().filter(is_ratings).collect();
    let (pf, pb) = (p50(&faulted), p50(&before));
    v.check(
        faulted.len() >= 10 && before.len() >= 10 && (pf >= 5.0 * pb || pf >= 20.0),
        format!(
            "ratings query p50 {pf:.2} ms ({} spans) with the fault vs {pb:.2} ms ({} spans) before: ×{:.1} (≥ ×5 or ≥ 20 ms)",
            faulted.len(),
            before.len(),
            per_f(pf, pb)
        ),
    );
    v.check(
        !mysql_base.iter().any(is_faulted),
        "the baseline has no IGNORE INDEX query".to_string(),
    );
    // Where a product page spends its time now: mostly in that query.
    let (pages_base, pages_fault) = (
        base.server("inventory", "/products/"),
        fault.server("inventory", "/products/"),
    );
    let (qb, qf) = (p50(&pages_base), p50(&pages_fault));
    v.check(
        qf >= 3.0 * qb && pf >= 0.5 * qf,
        format!(
            "inventory GET /products/{{id}} p50 {qb:.2} ms → {qf:.2} ms (≥ ×3), the faulted query is {:.0}% of it (≥ 50%)",
            100.0 * per_f(pf, qf)
        ),
    );
}

fn per_f(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

/// n-plus-one: the listing runs `SELECT id FROM products` then one `SELECT … WHERE p.id = ?` per product.
fn check_n_plus_one(base: &Window, fault: &Window, v: &mut Verdict) {
    // The listing's statements: `FROM products p` (the list, or one product) and the N+1 id list. `/reserve`
    // reads `FROM products WHERE id = ?` (no alias); a product page runs one `FROM products p … WHERE p.id = ?`.
    let listing_stmt = |s: &&Span| {
        let q = statement(s);
        q.contains("FROM products p") || q.contains("SELECT id FROM products ORDER BY")
    };
    let mut rates = Vec::new();
    for w in [base, fault] {
        let requests = w.server("inventory", "/");
        let listings = w
            .spans
            .iter()
            .filter(|s| s.service == "inventory" && s.is_server() && s.path() == "/products")
            .count();
        let pages = w.server("inventory", "/products/").len();
        let mysql = w.db("inventory", "mysql");
        let listing_queries = mysql.iter().copied().filter(listing_stmt).count();
        let per_listing = per(listing_queries.saturating_sub(pages), listings);
        println!(
            "{:<8}: inventory {} requests ({} GET /products, {} product pages), {} MySQL spans: {:.2} per request, {:.2} per GET /products",
            w.name,
            requests.len(),
            listings,
            pages,
            mysql.len(),
            per(mysql.len(), requests.len()),
            per_listing
        );
        print_statements(
            &format!("inventory MySQL spans, {}", w.name),
            &mysql,
            4,
            true,
        );
        rates.push((listings, per_listing, per(mysql.len(), requests.len())));
    }
    let ((lb, base_listing, base_req), (lf, fault_listing, fault_req)) = (rates[0], rates[1]);
    v.check(
        lb >= 20 && lf >= 20,
        format!("GET /products server spans: {lb} before, {lf} with the fault (≥ 20 each)"),
    );
    v.check(
        base_listing <= 1.5,
        format!("MySQL spans per GET /products before: {base_listing:.2} (~1)"),
    );
    v.check(
        fault_listing >= 10.0,
        format!(
            "MySQL spans per GET /products with the fault: {fault_listing:.2} (≥ 10; 21 expected)"
        ),
    );
    v.check(
        fault_req >= 3.0 * base_req,
        format!(
            "MySQL spans per inventory request: {base_req:.2} → {fault_req:.2} (×{:.1}, ≥ ×3)",
            per_f(fault_req, base_req)
        ),
    );
}

/// error-burst: a `ratio` of payment's requests answer 500; the frontend's checkouts fail with 502.
fn check_error_burst(
    base: &Window,
    fault: &Window,
    ratio: f64,
    payment_port: u16,
    v: &mut Verdict,
) {
    let is_5xx = |s: &&Span| s.http_status().is_some_and(|c| c >= 500);
    let pay_base = base.server("payment", "/payments");
    let pay = fault.server("payment", "/payments");
    let failed: Vec<&Span> = pay.iter().copied().filter(is_5xx).collect();
    let share = per(failed.len(), pay.len());
    println!(
        "payment POST /payments server spans: {} before ({} 5xx), {} with the fault ({} 5xx, {:.0}%)",
        pay_base.len(),
        pay_base.iter().copied().filter(is_5xx).count(),
        pay.len(),
        failed.len(),
        100.0 * share
    );
    v.check(
        pay.len() >= 30,
        format!("payment server spans with the fault: {} (≥ 30)", pay.len()),
    );
    v.check(
        !failed.is_empty() && failed.iter().all(|s| s.is_error()),
        format!(
            "payment's 5xx server spans have error status: {} of {}",
            failed.iter().filter(|s| s.is_error()).count(),
            failed.len()
        ),
    );
    v.check(
        (share - ratio).abs() <= 0.15,
        format!(
            "payment's 5xx share {:.0}% is the configured {:.0}% ±15 points",
            100.0 * share,
            100.0 * ratio
        ),
    );
    v.check(
        !pay_base.iter().any(&is_5xx),
        "no payment 5xx before the fault".to_string(),
    );
    let calls = fault.http_client("frontend", payment_port);
    let call_errors = calls.iter().filter(|s| is_5xx(s) && s.is_error()).count();
    v.check(
        call_errors > 0 && (per(call_errors, calls.len()) - ratio).abs() <= 0.15,
        format!(
            "frontend→payment client spans with 5xx and error status: {call_errors} of {} ({:.0}%)",
            calls.len(),
            100.0 * per(call_errors, calls.len())
        ),
    );
    let checkouts = fault.server("frontend", "/checkout");
    println!(
        "frontend POST /checkout with the fault: {} server spans, {} answered 502",
        checkouts.len(),
        checkouts
            .iter()
            .filter(|s| s.http_status() == Some(502))
            .count()
    );
}

/// cache-off (mode=miss): every profile lookup is a Redis GET miss, a MySQL SELECT and a Redis SET.
fn check_cache_off(base: &Window, fault: &Window, v: &mut Verdict) {
    let mut rows = Vec::new();
    for w in [base, fault] {
        let n = w.server("user", "/users/").len();
        let mysql = w.db("user", "mysql").len();
        let redis = w.db("user", "redis");
        let op = |name: &str| {
            redis
                .iter()
                .filter(|s| {
                    s.attr("db.operation.name")
                        .is_some_and(|o| o.eq_ignore_ascii_case(name))
                })
                .count()
        };
        let (get, set) = (op("GET"), op("SET"));
        println!(
            "{:<8}: user GET /users/{{id}} {n} requests; per request: MySQL {:.2}, Redis {:.2} (GET {:.2}, SET {:.2})",
            w.name,
            per(mysql, n),
            per(redis.len(), n),
            per(get, n),
            per(set, n)
        );
        rows.push((n, per(mysql, n), per(get, n), per(set, n)));
    }
    let ((nb, mysql_b, get_b, _), (nf, mysql_f, get_f, set_f)) = (rows[0], rows[1]);
    v.check(
        nb >= 30 && nf >= 30,
        format!("user server spans: {nb} before, {nf} with the fault (≥ 30 each)"),
    );
    v.check(
        mysql_b <= 0.35 && get_b >= 0.8,
        format!(
            "warm cache before: MySQL {mysql_b:.2} per request (≈ 0), Redis GET {get_b:.2} (≈ 1)"
        ),
    );
    v.check(
        mysql_f >= 0.8 && get_f >= 0.8 && set_f >= 0.8,
        format!(
            "with the fault, per request: MySQL {mysql_f:.2}, Redis GET {get_f:.2}, Redis SET {set_f:.2} (each ≈ 1)"
        ),
    );
    v.check(
        mysql_f >= 3.0 * mysql_b,
        format!(
            "MySQL spans per request ×{:.1} (≥ ×3)",
            per_f(mysql_f, mysql_b)
        ),
    );
}

/// dependency-timeout: payment stalls `stall_ms`; the frontend gives up after its upstream timeout with 504.
fn check_dependency_timeout(
    base: &Window,
    fault: &Window,
    stall_ms: f64,
    payment_port: u16,
    v: &mut Verdict,
) {
    let timeout = UPSTREAM_TIMEOUT_MS as f64;
    let is_504 = |s: &&Span| s.http_status() == Some(504);
    let checkouts_base = base.server("frontend", "/checkout");
    let timed_out: Vec<&Span> = fault
        .server("frontend", "/checkout")
        .into_iter()
        .filter(is_504)
        .collect();
    let d = durations(&timed_out);
    let shortest = d.iter().copied().fold(f64::INFINITY, f64::min);
    let longest = d.iter().copied().fold(0.0, f64::max);
    println!(
        "frontend POST /checkout server spans: {} before (p50 {:.1} ms, {} with 504); with the fault {} answered 504 (p50 {:.0} ms, {:.0}–{:.0} ms)",
        checkouts_base.len(),
        p50(&checkouts_base),
        checkouts_base.iter().filter(|s| is_504(s)).count(),
        timed_out.len(),
        p50(&timed_out),
        shortest,
        longest
    );
    v.check(
        timed_out.len() >= 10,
        format!(
            "frontend checkouts answered 504: {} (≥ 10)",
            timed_out.len()
        ),
    );
    v.check(
        !timed_out.is_empty() && timed_out.iter().all(|s| s.is_error()),
        "every 504 checkout span has error status".to_string(),
    );
    v.check(
        !timed_out.is_empty() && shortest >= timeout * 0.98 && p50(&timed_out) < stall_ms,
        format!(
            "the 504 checkout spans last the {timeout:.0} ms upstream timeout, not payment's {stall_ms:.0} ms stall: shortest {shortest:.0} ms, p50 {:.0} ms",
            p50(&timed_out)
        ),
    );
    v.check(
        !checkouts_base.iter().any(is_504),
        "no 504 before the fault".to_string(),
    );
    // A call that never gets its response gives no span today: the connection closes first, and the agent only
    // counts it (loupe_spans_dropped_total{reason="no_response"}). So neither the frontend's call to payment nor
    // payment's own span shows up; what does is the caller's 504 above.
    let calls_base = base.http_client("frontend", payment_port);
    let calls = fault.http_client("frontend", payment_port);
    println!(
        "frontend→payment client spans: {} before (p50 {:.1} ms), {} with the fault; payment POST /payments server spans with the fault: {} (unanswered calls give no span)",
        calls_base.len(),
        p50(&calls_base),
        calls.len(),
        fault.server("payment", "/payments").len()
    );
}

/// A parameter of an exercise's fault spec (`ratio=0.3&status=500`).
fn fault_param(params: &str, key: &str) -> Option<f64> {
    params
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The spans that started in one time window.
struct Window<'a> {
    name: &'static str,
    spans: Vec<&'a Span>,
}

impl<'a> Window<'a> {
    fn new(name: &'static str, all: &'a [Span], from_ns: u64, to_ns: u64) -> Window<'a> {
        Window {
            name,
            spans: all
                .iter()
                .filter(|s| (from_ns..to_ns).contains(&s.start_ns))
                .collect(),
        }
    }

    /// Server spans of `service` whose path starts with `prefix`, without the admin endpoint and health checks
    /// (xtask's own calls).
    fn server(&self, service: &str, prefix: &str) -> Vec<&'a Span> {
        self.spans
            .iter()
            .copied()
            .filter(|s| s.service == service && s.is_server())
            .filter(|s| {
                let p = s.path();
                p.starts_with(prefix) && !p.starts_with("/admin/") && p != "/healthz"
            })
            .collect()
    }

    /// Database client spans of `service` to `system` (`mysql`, `redis`) that run the application's statements or
    /// commands: for MySQL, not the `PREPARE` of a prepared statement (its `EXECUTE` carries the text too), the
    /// protocol's own commands (`RESET_CONNECTION` when the pool takes a connection back, `PING`) nor the driver's
    /// `SELECT @@…` on each new connection.
    fn db(&self, service: &str, system: &str) -> Vec<&'a Span> {
        self.spans
            .iter()
            .copied()
            .filter(|s| s.service == service && s.db_system() == Some(system))
            .filter(|s| {
                system != "mysql"
                    || (s.attr("db.operation.name") != Some("PREPARE")
                        && s.attr("db.query.text")
                            .is_some_and(|q| !q.starts_with("SELECT @@")))
            })
            .collect()
    }

    /// HTTP client spans of `service` to the server on `port`.
    fn http_client(&self, service: &str, port: u16) -> Vec<&'a Span> {
        self.spans
            .iter()
            .copied()
            .filter(|s| s.service == service && s.is_http_client())
            .filter(|s| s.attr_int("server.port") == Some(i64::from(port)))
            .collect()
    }
}

/// A database span's statement: `db.query.text`, else its name.
fn statement(s: &Span) -> &str {
    s.attr("db.query.text").unwrap_or(&s.name)
}

fn durations(spans: &[&Span]) -> Vec<f64> {
    spans.iter().map(|s| s.duration_ms()).collect()
}

fn p50(spans: &[&Span]) -> f64 {
    quantile(&durations(spans), 0.5)
}

fn per(n: usize, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// The assertions of a check: every one is printed, the check passes when all hold.
#[derive(Default)]
struct Verdict {
    /// (passed, what); `None`: not asserted (see [`Verdict::check_tail`]).
    results: Vec<(Option<bool>, String)>,
    /// Set when the shop could not keep up with its load: why latency tails mean little in this run.
    overloaded: Option<String>,
}

impl Verdict {
    fn check(&mut self, ok: bool, what: String) {
        self.results.push((Some(ok), what));
    }

    /// An assertion on latency tails (the slowest spans), which a host busy with other work blurs: any span can
    /// stall then. Not asserted when the shop could not keep up with its load; medians and counts still are.
    fn check_tail(&mut self, ok: bool, what: String) {
        let ok = if self.overloaded.is_some() {
            None
        } else {
            Some(ok)
        };
        self.results.push((ok, what));
    }

    fn finish(self, exercise: &str, started: Instant) -> anyhow::Result<()> {
        for (ok, what) in &self.results {
            let mark = match ok {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "skip",
            };
            println!("  {mark} {what}");
        }
        let count = |want: Option<bool>| self.results.iter().filter(|(ok, _)| *ok == want).count();
        let (failed, skipped) = (count(Some(false)), count(None));
        let overloaded = self.overloaded.as_deref().unwrap_or_default();
        ensure!(
            failed == 0,
            "FAIL exercise {exercise}: {failed} of {} assertions failed{}",
            self.results.len(),
            if overloaded.is_empty() {
                String::new()
            } else {
                format!(" ({overloaded}; rerun when it is quieter)")
            }
        );
        let skipped = if skipped == 0 {
            String::new()
        } else {
            format!(", {skipped} on latency tails not asserted ({overloaded})")
        };
        println!(
            "PASS exercise {exercise}: {} assertions on Loupe's spans hold{skipped} ({:.0} s)",
            count(Some(true)),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
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
    /// The whole shop: databases, services, load.
    fn start(o: &StackOpts) -> anyhow::Result<Stack> {
        let mut stack = Stack::start_databases(o)?;
        stack.start_services(o)?;
        Ok(stack)
    }

    /// MariaDB and Redis only. Start the agent next, then [`Stack::start_services`]: the agent then sees
    /// the pools and Redis connections the services open at start-up from their first byte.
    fn start_databases(o: &StackOpts) -> anyhow::Result<Stack> {
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
    fn start_services(&mut self, o: &StackOpts) -> anyhow::Result<()> {
        self.spawn_services(o, false)?;
        self.start_load(o)
    }

    /// Starts the five services. `gated`: each starts as `sh` waiting on its stdin and `exec`s the service only
    /// when that closes (the returned handles dropped), so that their pids are known before they open a
    /// connection (an agent started with `--pid` in between sees all of them).
    fn spawn_services(
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
    fn start_load(&mut self, o: &StackOpts) -> anyhow::Result<()> {
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

    /// Starts `cmd` in a process group of its own, output to `log` (or the terminal), stdin from /dev/null.
    fn spawn(
        &mut self,
        name: &str,
        cmd: Command,
        log: Option<PathBuf>,
        critical: bool,
    ) -> anyhow::Result<&mut Child> {
        self.spawn_with_stdin(name, cmd, log, critical, Stdio::null())
    }

    fn spawn_with_stdin(
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
    fn start_agent(
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

    /// Lets the shop run for `secs`; fails on Ctrl-C or when a critical process dies.
    fn run_for(&mut self, secs: u64) -> anyhow::Result<()> {
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
            stop_proc(&mut p);
        }
        let _ = fs::remove_file(self.dir.join("demo.env"));
    }

    /// Stops one process (as [`Stack::stop`] does) and returns how it exited: the agent flushes on SIGTERM.
    fn stop_one(&mut self, name: &str) -> anyhow::Result<std::process::ExitStatus> {
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
    fn tail_assertions_are_skipped_only_when_overloaded() {
        let mut v = Verdict::default();
        v.check(true, "median".into());
        v.check_tail(false, "slowest".into());
        assert!(v.finish("test", Instant::now()).is_err());

        let mut v = Verdict {
            overloaded: Some("busy host".into()),
            ..Verdict::default()
        };
        v.check(true, "median".into());
        v.check_tail(false, "slowest".into());
        assert!(v.finish("test", Instant::now()).is_ok());

        let mut v = Verdict {
            overloaded: Some("busy host".into()),
            ..Verdict::default()
        };
        v.check(false, "median".into());
        assert!(v.finish("test", Instant::now()).is_err());
    }

    #[test]
    fn fault_params_are_read() {
        assert_eq!(fault_param("ratio=0.3&status=500", "ratio"), Some(0.3));
        assert_eq!(fault_param("ratio=0.3&status=500", "status"), Some(500.0));
        assert_eq!(fault_param("mode=scan", "ms"), None);
        assert_eq!(fault_param("", "ms"), None);
    }

    #[test]
    fn windows_keep_the_shops_own_work() {
        let span = |service: &str, kind: i64, start_ns: u64, attrs: &[(&str, &str)]| Span {
            service: service.to_string(),
            kind,
            start_ns,
            end_ns: start_ns + 1_000_000,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Span::default()
        };
        let q = "SELECT id FROM users WHERE id = ?";
        let all = [
            span("user", 2, 10, &[("url.path", "/users/7")]),
            span("user", 2, 11, &[("url.path", "/admin/fault/cache-off")]),
            span("user", 2, 12, &[("url.path", "/healthz")]),
            span(
                "user",
                3,
                13,
                &[
                    ("db.system.name", "mysql"),
                    ("db.operation.name", "PREPARE"),
                    ("db.query.text", q),
                ],
            ),
            span(
                "user",
                3,
                14,
                &[
                    ("db.system.name", "mysql"),
                    ("db.operation.name", "SELECT"),
                    ("db.query.text", q),
                ],
            ),
            span(
                "user",
                3,
                15,
                &[
                    ("db.system.name", "mysql"),
                    ("db.operation.name", "RESET_CONNECTION"),
                ],
            ),
            span(
                "user",
                3,
                15,
                &[
                    ("db.system.name", "mysql"),
                    ("db.operation.name", "SELECT"),
                    (
                        "db.query.text",
                        "SELECT @@max_allowed_packet,@@wait_timeout",
                    ),
                ],
            ),
            span(
                "user",
                3,
                16,
                &[("db.system.name", "redis"), ("db.operation.name", "GET")],
            ),
            span(
                "frontend",
                3,
                17,
                &[
                    ("server.port", "8084"),
                    ("http.response.status_code", "500"),
                ],
            ),
            span("user", 2, 99, &[("url.path", "/users/8")]),
        ];
        let w = Window::new("test", &all, 10, 20);
        assert_eq!(w.server("user", "/").len(), 1);
        assert_eq!(
            w.db("user", "mysql").len(),
            1,
            "only the statement's EXECUTE"
        );
        assert_eq!(w.db("user", "redis").len(), 1);
        assert_eq!(w.http_client("frontend", 8084).len(), 1);
        assert_eq!(w.http_client("frontend", 8083).len(), 0);
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
