//! Fault switches, flipped at run time through the admin endpoint:
//!
//! ```text
//! POST /admin/fault/{name}?on=1&key=value…   turn on (or update) a fault; on=0 turns it off
//! POST /admin/faults/reset                    turn every fault off
//! GET  /admin/faults                          state of every fault, with parameters and where it applies
//! ```
//!
//! or at start-up with `DEMO_FAULTS="cpu?ms=30;error-burst?ratio=0.2"`. Each fault lists the services it has an
//! effect on; turning it on elsewhere is refused (400) so an exercise never silently does nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::Role;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// A CPU hot loop in a named `#[inline(never)]` function on the request path.
    Cpu,
    /// SQL that takes long: `SLEEP` (mode=sleep) or a query that ignores its index (mode=scan).
    SlowSql,
    /// The product listing issues one query per product instead of one query.
    NPlusOne,
    /// A share of requests fails with a 5xx status.
    ErrorBurst,
    /// The user cache stops working: every lookup misses (mode=miss) or Redis is skipped (mode=bypass).
    CacheOff,
    /// Every request leaks memory.
    MemoryGrowth,
    /// Every request writes many log lines.
    LogSpam,
    /// The service stalls before answering, longer than its callers wait.
    DependencyTimeout,
}

/// How a parameter's value is checked.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A non-negative number.
    Num,
    /// One of these words.
    Choice(&'static [&'static str]),
}

/// A parameter: name, default, kind.
type ParamSpec = (&'static str, &'static str, Kind);

impl Fault {
    /// Every fault, in the order the admin endpoint lists them.
    pub const ALL: [Fault; 8] = [
        Fault::Cpu,
        Fault::SlowSql,
        Fault::NPlusOne,
        Fault::ErrorBurst,
        Fault::CacheOff,
        Fault::MemoryGrowth,
        Fault::LogSpam,
        Fault::DependencyTimeout,
    ];

    /// The name used in URLs, `DEMO_FAULTS` and `docs/exercises/<name>.md`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Cpu => "cpu",
            Fault::SlowSql => "slow-sql",
            Fault::NPlusOne => "n-plus-one",
            Fault::ErrorBurst => "error-burst",
            Fault::CacheOff => "cache-off",
            Fault::MemoryGrowth => "memory-growth",
            Fault::LogSpam => "log-spam",
            Fault::DependencyTimeout => "dependency-timeout",
        }
    }

    /// Parses a fault name.
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }

    /// Whether turning this fault on in `role` has an effect.
    pub fn applies_to(self, role: Role) -> bool {
        match self {
            Fault::SlowSql => role.uses_mysql(),
            Fault::NPlusOne => role == Role::Inventory,
            Fault::CacheOff => role == Role::User,
            Fault::Cpu
            | Fault::ErrorBurst
            | Fault::MemoryGrowth
            | Fault::LogSpam
            | Fault::DependencyTimeout => true,
        }
    }

    fn params(self) -> &'static [ParamSpec] {
        match self {
            Fault::Cpu => &[("ms", "20", Kind::Num)],
            Fault::SlowSql => &[
                ("mode", "sleep", Kind::Choice(&["sleep", "scan"])),
                ("ms", "300", Kind::Num),
            ],
            Fault::NPlusOne => &[],
            Fault::ErrorBurst => &[("ratio", "0.3", Kind::Num), ("status", "500", Kind::Num)],
            Fault::CacheOff => &[("mode", "miss", Kind::Choice(&["miss", "bypass"]))],
            Fault::MemoryGrowth => &[("kb", "256", Kind::Num), ("max_mb", "1024", Kind::Num)],
            Fault::LogSpam => &[("lines", "100", Kind::Num)],
            Fault::DependencyTimeout => &[("ms", "5000", Kind::Num)],
        }
    }

    /// One line on what the fault does.
    pub fn describe(self) -> &'static str {
        match self {
            Fault::Cpu => "burns `ms` of CPU per request in a named hot function",
            Fault::SlowSql => {
                "mode=sleep adds SLEEP(ms) to the main query; mode=scan reads reviews IGNORE INDEX"
            }
            Fault::NPlusOne => "product listing runs 1 + N queries instead of 2",
            Fault::ErrorBurst => "a `ratio` of requests answers `status` (5xx)",
            Fault::CacheOff => {
                "mode=miss: every cache lookup misses; mode=bypass: Redis is not used"
            }
            Fault::MemoryGrowth => "each request leaks `kb` KiB, up to `max_mb` MiB",
            Fault::LogSpam => "each request writes `lines` extra log lines",
            Fault::DependencyTimeout => {
                "the service stalls `ms` before answering, so its callers time out"
            }
        }
    }
}

/// The parameters of a fault that is on, defaults filled in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// A numeric parameter (validated when the fault was set).
    pub fn num(&self, key: &str) -> f64 {
        self.0.get(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }

    /// A parameter in milliseconds, as a duration.
    pub fn millis(&self, key: &str) -> Duration {
        Duration::from_secs_f64(self.num(key) / 1000.0)
    }

    /// A word parameter.
    pub fn word(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }

    fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
}

/// The fault switches of one service, plus the state some faults keep (leaked memory, the error-burst counter).
pub struct Faults {
    role: Role,
    states: Mutex<[Option<Params>; 8]>,
    burst_counter: AtomicU64,
    leaked: Mutex<Vec<Box<[u8]>>>,
    leaked_bytes: AtomicU64,
}

impl Faults {
    /// All faults off.
    pub fn new(role: Role) -> Faults {
        Faults {
            role,
            states: Mutex::new(Default::default()),
            burst_counter: AtomicU64::new(0),
            leaked: Mutex::new(Vec::new()),
            leaked_bytes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<Params>; 8]> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The parameters of `fault` if it is on.
    pub fn active(&self, fault: Fault) -> Option<Params> {
        self.lock()[fault.index()].clone()
    }

    /// Turns `fault` on with `given` parameters (unknown keys or bad values are refused), or off.
    pub fn set(
        &self,
        fault: Fault,
        on: bool,
        given: &BTreeMap<String, String>,
    ) -> Result<Option<Params>, String> {
        if !on {
            self.lock()[fault.index()] = None;
            if fault == Fault::MemoryGrowth {
                self.free_leaked();
            }
            return Ok(None);
        }
        if !fault.applies_to(self.role) {
            let applies: Vec<&str> = crate::Role::ALL
                .into_iter()
                .filter(|r| fault.applies_to(*r))
                .map(Role::name)
                .collect();
            return Err(format!(
                "fault {} has no effect on {}; it applies to: {}",
                fault.name(),
                self.role,
                applies.join(", ")
            ));
        }
        let specs = fault.params();
        let mut params = BTreeMap::new();
        for (key, value) in given {
            if key == "on" {
                continue;
            }
            let Some((_, _, kind)) = specs.iter().find(|(k, _, _)| k == key) else {
                let known: Vec<&str> = specs.iter().map(|(k, _, _)| *k).collect();
                return Err(format!(
                    "fault {} has no parameter {key:?} (known: {})",
                    fault.name(),
                    known.join(", ")
                ));
            };
            match kind {
                Kind::Num => match value.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => {}
                    _ => return Err(format!("{key}={value:?}: expected a non-negative number")),
                },
                Kind::Choice(words) => {
                    if !words.contains(&value.as_str()) {
                        return Err(format!(
                            "{key}={value:?}: expected one of {}",
                            words.join(", ")
                        ));
                    }
                }
            }
            params.insert(key.clone(), value.clone());
        }
        for (key, default, _) in specs {
            params
                .entry(key.to_string())
                .or_insert_with(|| default.to_string());
        }
        if fault == Fault::ErrorBurst {
            let ratio: f64 = params["ratio"].parse().unwrap_or(0.0);
            let status: u16 = params["status"].parse().unwrap_or(0);
            if ratio > 1.0 {
                return Err(format!("ratio={ratio}: expected at most 1"));
            }
            if !(500..=599).contains(&status) {
                return Err(format!("status={status}: expected a 5xx status"));
            }
        }
        let params = Params(params);
        self.lock()[fault.index()] = Some(params.clone());
        Ok(Some(params))
    }

    /// Turns every fault off.
    pub fn reset(&self) {
        *self.lock() = Default::default();
        self.free_leaked();
    }

    /// Applies a `DEMO_FAULTS` spec: `name?k=v&k=v;name2`.
    pub fn apply_spec(&self, spec: &str) -> Result<(), String> {
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, query) = item.split_once('?').unwrap_or((item, ""));
            let fault = Fault::parse(name.trim())
                .ok_or_else(|| format!("DEMO_FAULTS: unknown fault {name:?}"))?;
            self.set(fault, true, &parse_query(query))
                .map_err(|e| format!("DEMO_FAULTS: {e}"))?;
        }
        Ok(())
    }

    /// Every fault with its state, as the admin endpoint shows it.
    pub fn snapshot(&self) -> Value {
        let states = self.lock().clone();
        let faults: Vec<Value> = Fault::ALL
            .into_iter()
            .map(|f| {
                let state = &states[f.index()];
                json!({
                    "name": f.name(),
                    "on": state.is_some(),
                    "applies": f.applies_to(self.role),
                    "params": state.as_ref().map(Params::to_json).unwrap_or(Value::Null),
                    "defaults": Value::Object(
                        f.params().iter().map(|(k, d, _)| (k.to_string(), Value::String(d.to_string()))).collect()
                    ),
                    "describe": f.describe(),
                })
            })
            .collect();
        json!({ "service": self.role.name(), "faults": faults, "leaked_bytes": self.leaked_bytes() })
    }

    /// With error-burst on, whether this request fails and with which status. Deterministic: exactly
    /// `floor(n * ratio)` of the first n requests fail, spread evenly.
    pub fn burst_failure(&self) -> Option<u16> {
        let p = self.active(Fault::ErrorBurst)?;
        let permille = (p.num("ratio") * 1000.0).round() as u64;
        let n = self.burst_counter.fetch_add(1, Ordering::Relaxed);
        ((n + 1) * permille / 1000 > n * permille / 1000).then(|| p.num("status") as u16)
    }

    /// With memory-growth on, leaks `kb` KiB (touched, so it is resident) unless `max_mb` is reached.
    pub fn leak(&self, p: &Params) {
        let bytes = (p.num("kb") * 1024.0) as usize;
        let max = (p.num("max_mb") * 1024.0 * 1024.0) as u64;
        if bytes == 0 || self.leaked_bytes() + bytes as u64 > max {
            return;
        }
        // Zeroed (fresh pages from the kernel), then one non-zero byte written per page here, so
        // the pages are really resident (not the shared zero page) and the faults happen in this
        // function rather than in libc's memset: a frame-pointer walk from inside memset (which
        // has no frame of its own) skips its caller, and the exercise looks for this function.
        let mut block = vec![0u8; bytes].into_boxed_slice();
        for page in block.iter_mut().step_by(4096) {
            *page = 0xA5;
        }
        self.leaked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(block);
        self.leaked_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes leaked so far by memory-growth.
    pub fn leaked_bytes(&self) -> u64 {
        self.leaked_bytes.load(Ordering::Relaxed)
    }

    fn free_leaked(&self) {
        let mut leaked = self.leaked.lock().unwrap_or_else(|e| e.into_inner());
        leaked.clear();
        leaked.shrink_to_fit();
        self.leaked_bytes.store(0, Ordering::Relaxed);
    }
}

/// Parses `a=1&b=two` (no percent-decoding needed for the values the shop uses, `+` and `%20` aside).
pub fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.replace('+', " ").replace("%20", " "))
        })
        .collect()
}

/// The body of every CPU hot loop: xorshift rounds until the calling thread has used `budget` of CPU time (CPU,
/// not wall-clock, so the cost per request is the same on a busy machine). Always inlined, so the samples land in
/// the named `#[inline(never)]` function that calls it, even when stacks cannot be walked (no frame pointers): the
/// leaf is the sampled instruction pointer itself. The clock is read only every 20,000 rounds (tens of µs), so
/// under 1% of the samples fall in `clock_gettime`.
///
/// Each caller passes its own `salt` literal. Without it the five hot functions compile to identical machine code,
/// LLVM merges them into one symbol with aliases, and a profiler names whichever alias it finds first (the
/// frontend's hot loop showed up as `render_profile_hot_loop`).
#[inline(always)]
pub fn spin(budget: Duration, seed: u64, salt: u64) -> u64 {
    let deadline = thread_cpu_time() + budget;
    let mut x = seed | 1;
    loop {
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x = x.wrapping_add(salt);
        }
        x = std::hint::black_box(x);
        if thread_cpu_time() >= deadline {
            return x;
        }
    }
}

/// CPU time used by the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::MAX;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> BTreeMap<String, String> {
        parse_query(s)
    }

    #[test]
    fn defaults_and_validation() {
        let f = Faults::new(Role::Inventory);
        let p = f
            .set(Fault::SlowSql, true, &q("on=1&ms=120"))
            .expect("valid")
            .expect("on");
        assert_eq!(p.word("mode"), "sleep");
        assert_eq!(p.millis("ms"), Duration::from_millis(120));
        assert!(f.set(Fault::SlowSql, true, &q("mode=walk")).is_err());
        assert!(f.set(Fault::SlowSql, true, &q("speed=1")).is_err());
        assert!(
            f.set(Fault::CacheOff, true, &q(""))
                .unwrap_err()
                .contains("applies to: user")
        );
        assert!(f.set(Fault::ErrorBurst, true, &q("status=404")).is_err());
        assert!(f.set(Fault::ErrorBurst, true, &q("ratio=2")).is_err());
        f.set(Fault::SlowSql, false, &q("")).expect("off");
        assert!(f.active(Fault::SlowSql).is_none());
    }

    #[test]
    fn burst_ratio_is_exact() {
        let f = Faults::new(Role::Payment);
        f.set(Fault::ErrorBurst, true, &q("ratio=0.3&status=503"))
            .expect("valid");
        let failures: Vec<u16> = (0..100).filter_map(|_| f.burst_failure()).collect();
        assert_eq!(failures.len(), 30);
        assert!(failures.iter().all(|s| *s == 503));
    }

    #[test]
    fn spec_and_leak() {
        let f = Faults::new(Role::User);
        f.apply_spec("cache-off?mode=bypass; memory-growth?kb=4&max_mb=1")
            .expect("valid spec");
        assert_eq!(
            f.active(Fault::CacheOff).expect("on").word("mode"),
            "bypass"
        );
        let p = f.active(Fault::MemoryGrowth).expect("on");
        for _ in 0..1000 {
            f.leak(&p);
        }
        assert_eq!(f.leaked_bytes(), 1024 * 1024);
        f.reset();
        assert_eq!(f.leaked_bytes(), 0);
        assert!(f.apply_spec("nope").is_err());
    }

    #[test]
    fn spin_burns_its_budget_of_cpu() {
        let before = thread_cpu_time();
        spin(Duration::from_millis(50), 7, 1);
        let used = thread_cpu_time() - before;
        assert!(
            used >= Duration::from_millis(50) && used < Duration::from_millis(500),
            "{used:?}"
        );
    }
}
