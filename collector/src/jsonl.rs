//! A JSON-lines file in a directory, bounded by rotation: what the local trace and log sinks
//! append to (`traces.jsonl`, `logs.jsonl`).
//!
//! When a line would take the file past the size limit, `NAME` is renamed to `NAME.1`
//! (replacing the previous one) and a new file begins, so at most twice the limit is on disk.
//! Each line is encoded into a buffer kept between appends and written with one `write` call on
//! a file opened for appending; all file work runs on tokio's blocking threads, except freeing a
//! replaced `NAME.1`, on a thread of its own (tens of milliseconds for a large file).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::export::ExportReport;
use crate::telemetry::Counter;

/// Size at which a file is rotated unless configured otherwise.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest line buffer kept for the next append; a larger one is given back.
const MAX_KEPT_BUFFER: usize = 4 * 1024 * 1024;

/// Errors of a local JSON-lines file.
#[derive(Debug, thiserror::Error)]
pub enum LocalFileError {
    /// The directory could not be created.
    #[error("creating directory {} failed: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be opened, written or rotated.
    #[error("writing {} failed: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The blocking write task panicked or was cancelled.
    #[error("the write task of {file} failed: {source}")]
    Task {
        /// The file name.
        file: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// An append-only, rotated JSON-lines file.
#[derive(Debug)]
pub struct JsonlFile {
    dir: PathBuf,
    name: &'static str,
    rotated: &'static str,
    max_file_bytes: u64,
    state: Arc<Mutex<FileState>>,
    rotations: Counter,
}

#[derive(Debug, Default)]
struct FileState {
    file: Option<File>,
    size: u64,
    /// The line being written, kept between appends (capacity capped by [`MAX_KEPT_BUFFER`]).
    line: Vec<u8>,
}

impl JsonlFile {
    /// Creates `dir` if needed and opens (appends to) `dir/name`; rotation renames it to
    /// `dir/rotated`.
    pub fn open(
        dir: PathBuf,
        name: &'static str,
        rotated: &'static str,
    ) -> Result<Self, LocalFileError> {
        fs::create_dir_all(&dir).map_err(|source| LocalFileError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let (file, size) = open_append(&dir.join(name))?;
        Ok(Self {
            dir,
            name,
            rotated,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            state: Arc::new(Mutex::new(FileState {
                file: Some(file),
                size,
                line: Vec::new(),
            })),
            rotations: Counter::default(),
        })
    }

    /// Rotates when the file would grow past `bytes` (at least 1 KiB).
    pub fn set_max_file_bytes(&mut self, bytes: u64) {
        self.max_file_bytes = bytes.max(1024);
    }

    /// The file written to.
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    /// Counts rotations in `counter` from now on (carrying over those counted so far).
    pub fn count_rotations_in(&mut self, counter: Counter) {
        counter.add(self.rotations.get());
        self.rotations = counter;
    }

    /// Encodes `batch` with `encode` as one line and appends it on a blocking thread; reports
    /// `items` as exported or failed.
    pub async fn append<B, E>(
        &self,
        batch: Arc<B>,
        items: u64,
        encode: fn(&B, &mut Vec<u8>),
    ) -> ExportReport<E>
    where
        B: Send + Sync + 'static,
        E: From<LocalFileError>,
    {
        let dir = self.dir.clone();
        let (name, rotated, max) = (self.name, self.rotated, self.max_file_bytes);
        let state = self.state.clone();
        let rotations = self.rotations.clone();
        let job = move || {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let mut line = std::mem::take(&mut state.line);
            line.clear();
            encode(&batch, &mut line);
            line.push(b'\n');
            let target = Target {
                dir: &dir,
                name,
                rotated,
                max,
                rotations: &rotations,
            };
            let result = target.write_line(&mut state, &line);
            if line.capacity() <= MAX_KEPT_BUFFER {
                state.line = line;
            }
            result
        };
        let result = match tokio::task::spawn_blocking(job).await {
            Ok(r) => r,
            Err(source) => Err(LocalFileError::Task { file: name, source }),
        };
        match result {
            Ok(bytes) => ExportReport {
                items_exported: items,
                bytes_sent: bytes,
                ..ExportReport::default()
            },
            Err(e) => ExportReport {
                items_failed: items,
                errors: vec![e.into()],
                ..ExportReport::default()
            },
        }
    }
}

/// Closes `file` on a short-lived thread (or here, when no thread can be started).
fn close_elsewhere(file: File) {
    let _ = std::thread::Builder::new()
        .name("loupe-unlink".into())
        .spawn(move || drop(file));
}

fn open_append(path: &Path) -> Result<(File, u64), LocalFileError> {
    let err = |source| LocalFileError::Write {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    Ok((file, size))
}

/// Where a line goes.
struct Target<'a> {
    dir: &'a Path,
    name: &'static str,
    rotated: &'static str,
    max: u64,
    rotations: &'a Counter,
}

impl Target<'_> {
    /// Appends `line`, rotating first if the file would pass the limit.
    fn write_line(&self, state: &mut FileState, line: &[u8]) -> Result<u64, LocalFileError> {
        let len = line.len() as u64;
        let path = self.dir.join(self.name);
        if state.file.is_none() || (state.size > 0 && state.size + len > self.max) {
            if state.file.take().is_some() && state.size > 0 {
                let rotated = self.dir.join(self.rotated);
                // The rename drops the previous rotated file's last name; freeing its pages
                // (up to the size limit of them) takes tens of milliseconds, which would hold
                // up this lane. Held open across the rename, the file is freed when it is
                // closed, on a thread of its own.
                let previous = File::open(&rotated).ok();
                fs::rename(&path, &rotated).map_err(|source| LocalFileError::Write {
                    path: path.clone(),
                    source,
                })?;
                if let Some(previous) = previous {
                    close_elsewhere(previous);
                }
                self.rotations.inc();
            }
            let (file, size) = open_append(&path)?;
            state.file = Some(file);
            state.size = size;
        }
        let Some(file) = state.file.as_mut() else {
            return Ok(0);
        };
        match file.write_all(line) {
            Ok(()) => {
                state.size += len;
                Ok(len)
            }
            Err(source) => {
                // Reopen next time (the file may have been removed or the disk filled).
                state.file = None;
                Err(LocalFileError::Write { path, source })
            }
        }
    }
}
