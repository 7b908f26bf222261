//! A secret kept in a file and read again when the file changes: Kubernetes updates a mounted
//! Secret by swapping a symbolic link, so a rotated bearer token reaches the next request without
//! a restart. The file is checked (one `stat`) before each use; when it cannot be read, the last
//! good value stays in use and the failure is logged once per change.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

/// What identifies one version of the file: modification time and length.
type Stamp = (Option<SystemTime>, u64);

struct State {
    stamp: Stamp,
    value: String,
    /// The stamp whose read failed, so that a broken file is reported once.
    failed: Option<Stamp>,
}

/// A secret read from a file, re-read when the file changes. `Debug` never shows the value.
pub struct SecretFile {
    path: PathBuf,
    state: Mutex<State>,
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFile")
            .field("path", &self.path)
            .field("value", &"<redacted>")
            .finish()
    }
}

fn stamp(path: &Path) -> io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified().ok(), meta.len()))
}

/// The file's content without surrounding whitespace (editors and `echo` add a newline); empty
/// is an error.
fn read(path: &Path) -> io::Result<String> {
    let value = std::fs::read_to_string(path)?.trim().to_string();
    if value.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file is empty",
        ));
    }
    Ok(value)
}

impl SecretFile {
    /// Reads the file now: a missing, unreadable or empty file is an error at start-up.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let stamp = stamp(&path)?;
        let value = read(&path)?;
        Ok(Self {
            path,
            state: Mutex::new(State {
                stamp,
                value,
                failed: None,
            }),
        })
    }

    /// The file it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current value: read again if the file changed since the last read.
    pub fn current(&self) -> String {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = stamp(&self.path);
        match now {
            Ok(now) if now == state.stamp => {}
            Ok(now) => match read(&self.path) {
                Ok(value) => {
                    state.value = value;
                    state.stamp = now;
                    state.failed = None;
                    tracing::info!(path = %self.path.display(), "secret file changed: using its new value");
                }
                Err(e) => {
                    if state.failed != Some(now) {
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot read the changed secret file; keeping its previous value");
                        state.failed = Some(now);
                    }
                }
            },
            Err(e) => {
                let gone = (None, u64::MAX);
                if state.failed != Some(gone) {
                    tracing::warn!(path = %self.path.display(), error = %e, "secret file unreadable; keeping its previous value");
                    state.failed = Some(gone);
                }
            }
        }
        state.value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_last_value() {
        let dir = TempDir::new("secret-file");
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        let secret = SecretFile::open(&path).unwrap();
        assert_eq!(secret.current(), "first-token");

        // Rotation as Kubernetes does it: a new file swapped in under the same name.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token-longer").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(secret.current(), "second-token-longer");

        // Emptied, then removed: the last good value stays.
        std::fs::write(&path, "").unwrap();
        assert_eq!(secret.current(), "second-token-longer");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.current(), "second-token-longer");
        assert!(!format!("{secret:?}").contains("second"));
    }

    #[test]
    fn a_missing_or_empty_file_fails_at_open() {
        let dir = TempDir::new("secret-file");
        assert!(SecretFile::open(dir.path().join("none")).is_err());
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(SecretFile::open(&empty).is_err());
    }
}
