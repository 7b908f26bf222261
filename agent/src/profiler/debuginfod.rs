//! Opt-in debug files from a debuginfod server (`--debuginfod-url`), for stripped binaries with no
//! debug file installed: containers rarely carry their distribution's `-dbgsym` packages, but the
//! distributions' debuginfod servers have them by GNU build id
//! (`GET <url>/buildid/<id>/debuginfo`). Fetches run on the async runtime, never on the drain
//! thread: the symbolizer asks (non-blocking, a bounded queue) and uses the file once it is in the
//! cache, from a later interval on. Each build id is asked for once per agent run. The on-disk
//! cache is bounded: past its size, the least recently written files go first; a file larger than
//! half the cache is not kept.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use loupe_collector::telemetry::{Counter, Gauge, Registry};
use tokio::sync::mpsc;

/// Build ids waiting to be fetched at most; more are dropped (and asked again later).
const QUEUE: usize = 64;
/// One download's time limit.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a fetch ended, the `result` label of `loupe_debuginfod_fetches_total` (also `queue_full`:
/// not asked, the queue was full).
const RESULTS: [&str; 4] = ["ok", "not_found", "too_large", "error"];

pub struct Debuginfod {
    dir: PathBuf,
    asked: Mutex<HashSet<String>>,
    /// Build ids whose fetch ended, whatever its result.
    done: Arc<Mutex<HashSet<String>>>,
    tx: mpsc::Sender<String>,
    queue_full: Counter,
}

/// What the fetching task needs.
struct Fetcher {
    url: String,
    dir: PathBuf,
    cap: u64,
    client: reqwest::Client,
    results: Vec<(&'static str, Counter)>,
    cache_bytes: Gauge,
    done: Arc<Mutex<HashSet<String>>>,
}

/// The URL of one build id's debug file.
fn debuginfo_url(base: &str, build_id: &str) -> String {
    format!(
        "{}/buildid/{build_id}/debuginfo",
        base.trim_end_matches('/')
    )
}

/// Whether `s` is a build id (hex, at least 8 digits): nothing else may reach a path or a URL.
fn is_build_id(s: &str) -> bool {
    s.len() >= 8 && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Debuginfod {
    /// Starts the fetching task; call from inside the runtime.
    pub fn start(
        url: &str,
        dir: PathBuf,
        cap: u64,
        registry: &Registry,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("debuginfod cache {}: {e}", dir.display()))?;
        let client = loupe_collector::http::client_builder(true)
            .map_err(|e| anyhow::anyhow!("debuginfod tls: {e}"))?
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| anyhow::anyhow!("debuginfod client: {e}"))?;
        let counter = |result: &str| {
            registry.counter(
                "loupe_debuginfod_fetches_total",
                "Debug files asked of the debuginfod server, by result.",
                &[("result", result)],
            )
        };
        let results: Vec<(&'static str, Counter)> =
            RESULTS.iter().map(|r| (*r, counter(r))).collect();
        let queue_full = counter("queue_full");
        let cache_bytes = registry.gauge(
            "loupe_debuginfod_cache_bytes",
            "Bytes of debug files in the debuginfod cache.",
            &[],
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let done = Arc::new(Mutex::new(HashSet::new()));
        let fetcher = Fetcher {
            done: done.clone(),
            url: url.to_string(),
            dir: dir.clone(),
            cap,
            client,
            results,
            cache_bytes,
        };
        fetcher
            .cache_bytes
            .set(i64::try_from(cache_size(&dir)).unwrap_or(i64::MAX));
        tokio::spawn(fetcher.run(rx));
        Ok(Arc::new(Self {
            dir,
            asked: Mutex::new(HashSet::new()),
            done,
            tx,
            queue_full,
        }))
    }

    /// The cached debug file of `build_id`, if it has been fetched.
    pub fn cached(&self, build_id: &str) -> Option<PathBuf> {
        if !is_build_id(build_id) {
            return None;
        }
        let path = self.dir.join(format!("{build_id}.debug"));
        path.is_file().then_some(path)
    }

    /// Whether `build_id` was asked for and its fetch has not ended: symbols of its binary may
    /// still improve.
    pub fn pending(&self, build_id: &str) -> bool {
        let asked = match self.asked.lock() {
            Ok(a) => a.contains(build_id),
            Err(poisoned) => poisoned.into_inner().contains(build_id),
        };
        let done = match self.done.lock() {
            Ok(d) => d.contains(build_id),
            Err(poisoned) => poisoned.into_inner().contains(build_id),
        };
        asked && !done
    }

    /// Asks for `build_id`'s debug file, once per run; never blocks.
    pub fn request(&self, build_id: &str) {
        if !is_build_id(build_id) {
            return;
        }
        let mut asked = match self.asked.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        if asked.contains(build_id) {
            return;
        }
        match self.tx.try_send(build_id.to_string()) {
            Ok(()) => {
                asked.insert(build_id.to_string());
            }
            // Asked again at the next symbolization.
            Err(_) => self.queue_full.inc(),
        }
    }
}

impl Fetcher {
    async fn run(self, mut rx: mpsc::Receiver<String>) {
        while let Some(id) = rx.recv().await {
            let result = self.fetch(&id).await;
            if let Some((_, c)) = self.results.iter().find(|(r, _)| *r == result) {
                c.inc();
            }
            match self.done.lock() {
                Ok(mut d) => d.insert(id),
                Err(poisoned) => poisoned.into_inner().insert(id),
            };
        }
    }

    async fn fetch(&self, id: &str) -> &'static str {
        let url = debuginfo_url(&self.url, id);
        let mut response = match self.client.get(&url).send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%url, error = %e, "debuginfod fetch failed");
                return "error";
            }
        };
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return "not_found";
        }
        if !response.status().is_success() {
            tracing::debug!(%url, status = %response.status(), "debuginfod fetch refused");
            return "error";
        }
        let limit = self.cap / 2;
        if response.content_length().is_some_and(|n| n > limit) {
            return "too_large";
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > limit {
                        return "too_large";
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%url, error = %e, "debuginfod download broke off");
                    return "error";
                }
            }
        }
        let dir = self.dir.clone();
        let id = id.to_string();
        let cap = self.cap;
        let stored = tokio::task::spawn_blocking(move || store(&dir, &id, &body, cap)).await;
        match stored {
            Ok(Ok(total)) => {
                self.cache_bytes
                    .set(i64::try_from(total).unwrap_or(i64::MAX));
                tracing::info!(%url, "debug file fetched from debuginfod");
                "ok"
            }
            Ok(Err(e)) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the debuginfod cache");
                "error"
            }
            Err(_) => "error",
        }
    }
}

/// Writes `<id>.debug` atomically (temporary file, then rename) and evicts the oldest files past
/// `cap`; returns the cache's size after.
fn store(dir: &Path, id: &str, body: &[u8], cap: u64) -> std::io::Result<u64> {
    let tmp = dir.join(format!(".{id}.part"));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, dir.join(format!("{id}.debug")))?;
    evict(dir, cap)
}

fn cache_size(dir: &Path) -> u64 {
    entries(dir).iter().map(|e| e.1).sum()
}

/// (path, size, modified) of each cached debug file.
fn entries(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "debug"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()?))
        })
        .collect()
}

/// Removes the least recently written files until the cache holds at most `cap` bytes.
fn evict(dir: &Path, cap: u64) -> std::io::Result<u64> {
    let mut files = entries(dir);
    files.sort_by_key(|e| e.2);
    let mut total: u64 = files.iter().map(|e| e.1).sum();
    for (path, size, _) in files {
        if total <= cap {
            break;
        }
        std::fs::remove_file(&path)?;
        total -= size;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_build_ids() {
        assert_eq!(
            debuginfo_url("https://debuginfod.debian.net/", "93ac61ec"),
            "https://debuginfod.debian.net/buildid/93ac61ec/debuginfo"
        );
        assert!(is_build_id("93ac61ec5a8eb1396f9fbd350e3169a558528a40"));
        assert!(!is_build_id("../../etc/passwd"));
        assert!(!is_build_id("abc"));
    }

    #[test]
    fn the_cache_keeps_under_its_cap_dropping_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "aaaaaaaa", &[0; 400], 1000).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        store(dir.path(), "bbbbbbbb", &[0; 400], 1000).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let total = store(dir.path(), "cccccccc", &[0; 400], 1000).unwrap();
        assert_eq!(total, 800);
        assert!(!dir.path().join("aaaaaaaa.debug").exists());
        assert!(dir.path().join("cccccccc.debug").exists());
        assert_eq!(cache_size(dir.path()), 800);
    }
}
