//! Provider keys: read from environment variables (at start) or from files named in
//! the settings, several per provider pooled. A key file is looked at (its modification
//! time and size) at most every [`RECHECK`] and re-read when it changed, so rotating a key
//! is writing the new one into the file: requests already sent finish with the old key,
//! the next ones take the new one, with no restart.
//!
//! Keys are [`Secret`]s: they are sent in one request header upstream and nowhere else
//! (not to logs, not to Redis, not to sandboxes). A key is known in logs and in rate
//! limiter names by its label (`env:NAME` or `file:N`), never by its value.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::secret::Secret;

/// How often a key file is looked at.
pub const RECHECK: Duration = Duration::from_millis(250);

/// One key with its label.
#[derive(Debug, Clone)]
pub struct Key {
    pub label: String,
    pub secret: Secret,
}

#[derive(Debug)]
struct FileKey {
    path: PathBuf,
    label: String,
    state: Mutex<FileState>,
}

#[derive(Debug, Default)]
struct FileState {
    checked: Option<Instant>,
    stamp: Option<(SystemTime, u64)>,
    secret: Option<Secret>,
}

/// The keys of one provider or data API.
#[derive(Debug, Default)]
pub struct KeyPool {
    env: Vec<Key>,
    files: Vec<FileKey>,
}

impl KeyPool {
    /// Keys from `env_names` (read now from `env`) and `files` (read on use).
    pub fn new(
        env_names: &[String],
        files: &[PathBuf],
        env: impl Fn(&str) -> Option<String>,
    ) -> KeyPool {
        let env = env_names
            .iter()
            .filter_map(|name| {
                let value = env(name)?;
                let value = value.trim();
                (!value.is_empty()).then(|| Key {
                    label: format!("env:{name}"),
                    secret: Secret::new(value),
                })
            })
            .collect();
        let files = files
            .iter()
            .enumerate()
            .map(|(i, path)| FileKey {
                path: path.clone(),
                label: format!("file:{i}"),
                state: Mutex::default(),
            })
            .collect();
        KeyPool { env, files }
    }

    /// The keys available now (a key file that cannot be read keeps its last key).
    pub fn keys(&self) -> Vec<Key> {
        let mut keys = self.env.clone();
        for f in &self.files {
            if let Some(secret) = f.current() {
                keys.push(Key {
                    label: f.label.clone(),
                    secret,
                });
            }
        }
        keys
    }

    /// Whether any key source is configured.
    pub fn is_configured(&self) -> bool {
        !self.env.is_empty() || !self.files.is_empty()
    }
}

impl FileKey {
    fn current(&self) -> Option<Secret> {
        let mut st = self.state.lock().unwrap();
        let now = Instant::now();
        if st.checked.is_some_and(|t| now.duration_since(t) < RECHECK) {
            return st.secret.clone();
        }
        st.checked = Some(now);
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_some() && stamp == st.stamp {
            return st.secret.clone();
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) if !text.trim().is_empty() => {
                let changed = st
                    .secret
                    .as_ref()
                    .is_some_and(|s| s.expose() != text.trim());
                st.secret = Some(Secret::new(text.trim()));
                st.stamp = stamp;
                if changed {
                    tracing::info!(key = %self.label, path = %self.path.display(), "gateway key file changed; new requests use the new key");
                }
            }
            Ok(_) => {
                tracing::warn!(key = %self.label, path = %self.path.display(), "gateway key file is empty; keeping the last key read");
            }
            Err(e) => {
                tracing::warn!(key = %self.label, path = %self.path.display(), error = %e, "gateway key file cannot be read; keeping the last key read");
            }
        }
        st.secret.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys_are_read_and_labelled_by_name() {
        let pool = KeyPool::new(
            &["A".into(), "MISSING".into(), "EMPTY".into()],
            &[],
            |n| match n {
                "A" => Some("sk-a\n".into()),
                "EMPTY" => Some(String::new()),
                _ => None,
            },
        );
        let keys = pool.keys();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].label, "env:A");
        assert_eq!(keys[0].secret.expose(), "sk-a");
        assert!(!format!("{keys:?}").contains("sk-a"), "keys never print");
    }

    #[test]
    fn a_rewritten_key_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "old-key\n").unwrap();
        let pool = KeyPool::new(&[], std::slice::from_ref(&path), |_| None);
        assert_eq!(pool.keys()[0].secret.expose(), "old-key");
        std::fs::write(&path, "new-key-longer\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if pool.keys()[0].secret.expose() == "new-key-longer" {
                break;
            }
            assert!(Instant::now() < deadline, "the new key was not picked up");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(RECHECK);
        assert_eq!(
            pool.keys()[0].secret.expose(),
            "new-key-longer",
            "a missing file keeps the last key"
        );
    }
}
