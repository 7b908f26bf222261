//! `cargo xtask demo`: the demo shop on this machine, natively: MariaDB and Redis from Debian's packages on
//! loopback (installed when missing), the five services, a load generator at a steady rate and the agent with
//! the local sink. Ctrl-C stops everything it started.
//!
//! `cargo xtask exercise NAME`: turns an exercise's fault on in the running demo (`--off` turns it off);
//! `cargo xtask exercise NAME --verify` starts a private shop, injects the fault, runs the agent and checks that
//! Loupe's output reveals it: the CPU profile (cpu), or the network spans in `traces.jsonl` and the logs in
//! `logs.jsonl` compared with a baseline before the fault (slow-sql, n-plus-one, error-burst, cache-off,
//! dependency-timeout, log-spam). For these the agent starts before the services and watches only their pids.
//! Nothing passes without evidence: every exercise's `--verify` checks the agent's own output.
//!
//! Every process is started in its own process group and stopped by group (SIGTERM, then SIGKILL after a grace
//! period), in reverse start order, also when xtask fails or panics. Only a SIGKILL of xtask itself leaves them.
//!
//! Dependencies beyond anyhow and clap: `libc` (signals), `prost` and `flate2` (reading the pprof output),
//! `serde_json` (reading the spans, see spans_read.rs, and the logs).
//!
//! Here: the command line, the exercise table and the entry points. `stack.rs` runs the shop, `verify.rs` runs an
//! exercise's check, `checks.rs` holds the span checks, `logs.rs` reads logs.jsonl and holds the log checks,
//! `profiles.rs` reads the pprof files.

mod checks;
mod logs;
mod parents;
pub(crate) mod profiles;
pub mod queries;
mod stack;
#[cfg(test)]
mod tests;
mod verify;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::util::{is_root, root};
use stack::{
    Ports, Stack, StackOpts, absolute, agent_binary, build_shop, ensure_db_packages, http,
    install_stop_handler, target_dir,
};

/// The services, in start order (the frontend last: it needs the others).
const SERVICES: [&str; 5] = ["auth", "user", "inventory", "payment", "frontend"];

/// How long the frontend waits for an upstream before answering 504 (`UPSTREAM_TIMEOUT_MS`, the shop's default).
const UPSTREAM_TIMEOUT_MS: u64 = 1500;

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
    /// With --verify: the load generator's rate, requests per second.
    #[arg(long, default_value_t = 20.0)]
    pub rps: f64,
    /// With trace-parents --verify: a fault on from the start, as SERVICE=SPEC (e.g. `payment=dependency-timeout?ms=300`,
    /// which keeps several checkouts in flight at once).
    #[arg(long = "fault", value_name = "SERVICE=SPEC")]
    pub faults: Vec<String>,
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
    /// Loupe's network spans (and logs) show the fault, compared with a baseline before it.
    Spans(SpanCheck),
    /// The named function holds most of the service's page-fault profile (memory first touched).
    MemoryGrowth(&'static str),
    /// No fault: client and database spans are under the server spans they were made for (parents.rs).
    Parents,
}

/// The checks on a baseline and a fault window of the agent's spans and logs, one per exercise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpanCheck {
    SlowSql,
    NPlusOne,
    ErrorBurst,
    CacheOff,
    DependencyTimeout,
    LogSpam,
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

const EXERCISES: [Exercise; 9] = [
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
        check: Check::MemoryGrowth("leak"),
    },
    Exercise {
        name: "log-spam",
        service: "inventory",
        params: "lines=100",
        summary: "inventory writes 100 debug lines per request",
        check: Check::Spans(SpanCheck::LogSpam),
    },
    Exercise {
        name: "dependency-timeout",
        service: "payment",
        params: "ms=5000",
        summary: "payment stalls 5 s; the frontend gives up after 1.5 s with 504",
        check: Check::Spans(SpanCheck::DependencyTimeout),
    },
    Exercise {
        name: "trace-parents",
        service: "frontend",
        params: "",
        summary: "no fault: the frontend's calls and the services' queries under the requests they serve",
        check: Check::Parents,
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
    let faults = parse_faults(&args.faults)?;
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
                Check::MemoryGrowth(f) => {
                    format!("checks {f} holds most page faults and in-use bytes")
                }
                Check::Parents => "checks spans' parents against the shop's request ids".into(),
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
        return verify::verify(&args, ex, &service);
    }
    ensure!(
        !matches!(ex.check, Check::Parents),
        "{} injects no fault; it only runs with --verify",
        ex.name
    );

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

/// `--fault SERVICE=SPEC` arguments as `DEMO_FAULTS` per service.
fn parse_faults(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut faults = BTreeMap::new();
    for f in args {
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
    Ok(faults)
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
