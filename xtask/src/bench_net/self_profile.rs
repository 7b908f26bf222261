//! Where the agent's time goes, as Loupe itself sees it: one more saturation run in which the agent
//! samples every process at [`PROFILE_HZ`], and its CPU profile of its own process (the pprof files
//! its local sink writes for the `loupe-agent` service, samples with its pid) read by thread and by
//! function. The unstripped build runs here, so that its own frames have names; this run is not in
//! the cost figures (it samples 26 times as often as the default).

use super::*;
use crate::demo::profiles::{ProfileFiles, ServiceProfile};
use crate::util::short;

/// Sampling rate of this run (the default is 19 Hz: a 15 s run would give the agent's own
/// threads a few dozen samples).
const PROFILE_HZ: &str = "499";
/// Functions listed.
const SHOWN: usize = 15;

/// The agent's profile of itself over a saturation run.
pub(super) struct SelfProfile {
    binary: PathBuf,
    rps: f64,
    samples: i64,
    threads: Vec<(String, f64)>,
    functions: Vec<(String, f64)>,
}

/// Runs the saturation load against a fresh agent sampling at [`PROFILE_HZ`] and reads its own
/// samples, from the first profile it writes after start-up on (start-up's work is not in it).
pub(super) fn run(
    bin: &Path,
    secs: u64,
    url: &str,
    scripts: &Scripts,
    out: &Path,
) -> anyhow::Result<SelfProfile> {
    let dir = out.join("agent-self-profile");
    let agent = Agent::start(
        bin,
        &dir,
        &["--profile-hz", PROFILE_HZ, "--profile-interval", "5s"],
    )?;
    let pid = agent.pid;
    let profiles = dir.join("data/profiles");
    // The first interval holds start-up (BTF, program loads, the first /proc walk): it goes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while own_profiles(&profiles).is_empty() {
        if Instant::now() > deadline {
            bail!("the agent wrote no profile of itself in 20 s");
        }
        thread::sleep(Duration::from_millis(200));
    }
    for f in own_profiles(&profiles) {
        std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
    }
    let wrk = run_wrk(url, &scripts.saturation, SATURATION_CONNECTIONS, secs);
    thread::sleep(SETTLE);
    // SIGTERM: the agent writes the interval in progress before it exits.
    agent.stop()?;
    let wrk = wrk?;
    let profile = ServiceProfile::read(&dir.join("data"), "loupe-agent", pid, ProfileFiles::Cpu)?;
    let total = profile.total().max(1) as f64;
    let share = |(name, v): (&String, i64)| (name.clone(), v as f64 / total);
    Ok(SelfProfile {
        binary: bin.to_path_buf(),
        rps: wrk.rps(),
        samples: profile.total(),
        threads: profile.threads().into_iter().map(share).collect(),
        functions: profile
            .ranked()
            .into_iter()
            .take(SHOWN)
            .map(share)
            .collect(),
    })
}

/// The CPU profiles of the agent's own service in `dir` (`loupe-agent-<t>.pb.gz`).
fn own_profiles(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("loupe-agent-"))
                .is_some_and(|rest| rest.ends_with(".pb.gz"))
        })
        .collect()
}

/// The report's section: by thread, then the functions with the most self time.
pub(super) fn render(result: &anyhow::Result<SelfProfile>, secs: u64) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "## Where the agent's time goes: its own profile\n");
    let p = match result {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(r, "Not measured: {e:#}\n");
            return r;
        }
    };
    let _ = writeln!(
        r,
        "Saturation again ({secs} s, {:.0} req/s), with `{}` sampling every process at \
         {PROFILE_HZ} Hz: Loupe's CPU profile of its own process, {} samples (the pprof files of \
         the `loupe-agent` service, samples with its pid, start-up's interval left out). Kernel \
         functions are the agent's own system time (its reads, writes and context switches); the \
         eBPF programs run in the traced processes and are not in it.\n",
        p.rps,
        p.binary.display(),
        p.samples
    );
    let _ = writeln!(r, "| thread | share of the agent's samples |\n|---|---|");
    for (thread, share) in &p.threads {
        let _ = writeln!(r, "| `{thread}` | {:.1}% |", 100.0 * share);
    }
    let _ = writeln!(
        r,
        "\n| function (self time) | share of the agent's samples |\n|---|---|"
    );
    for (function, share) in &p.functions {
        let _ = writeln!(
            r,
            "| `{}` | {:.1}% |",
            short(function, 110).replace('|', "\\|"),
            100.0 * share
        );
    }
    r.push('\n');
    r
}
