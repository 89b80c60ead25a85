//! Reload on file changes. The directories holding the watched paths are watched (not the
//! files), so editors' rename-on-save and Kubernetes ConfigMap updates (an atomic swap of
//! the `..data` symlink) are seen; events are debounced, and the store's fingerprints skip
//! reloads when nothing that matters changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use super::GuardStore;

/// Keeps the watch alive; dropping it stops watching.
pub struct Watcher {
    _watcher: notify::RecommendedWatcher,
}

/// The file watcher could not start, or could not watch a directory.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Quiet time after the last event before reloading: editors and ConfigMap updates come
/// as bursts of events.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest wait for a burst to end, so a busy directory cannot hold reloads off.
const MAX_WAIT: Duration = Duration::from_millis(600);

/// Which events matter: those naming a watched file, anything inside a watched directory
/// (the model's), and Kubernetes' `..data` swaps.
#[derive(Debug, Clone)]
struct Interest {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl Interest {
    fn new(paths: &[PathBuf]) -> Interest {
        let mut files = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        for path in paths {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            if absolute.is_dir() {
                dirs.insert(absolute)
            } else {
                files.insert(absolute)
            };
        }
        Interest { files, dirs }
    }

    fn matches(&self, event_path: &Path) -> bool {
        let configmap = event_path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".."));
        configmap || self.files.contains(event_path) || event_path.parent().is_some_and(|p| self.dirs.contains(p))
    }

    /// The directories to watch: every watched directory and every watched file's parent.
    fn directories(&self) -> BTreeSet<PathBuf> {
        let mut out: BTreeSet<PathBuf> = self.dirs.clone();
        out.extend(
            self.files.iter().filter_map(|f| f.parent()).filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf),
        );
        out.retain(|d| d.is_dir());
        out
    }
}

/// Watches the store's files and reloads it (on a thread of its own) when they change.
pub fn watch(store: GuardStore) -> Result<Watcher, WatchError> {
    let interest = Interest::new(&store.watched_paths());
    let (tx, rx) = mpsc::channel::<()>();
    let filter = interest.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
            && event.paths.iter().any(|p| filter.matches(p))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|source| WatchError { path: PathBuf::new(), source })?;
    for dir in interest.directories() {
        watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|source| WatchError { path: dir.clone(), source })?;
        tracing::debug!(dir = %dir.display(), "watching");
    }
    std::thread::Builder::new()
        .name("rulegate-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let burst = std::time::Instant::now();
                while burst.elapsed() < MAX_WAIT && rx.recv_timeout(DEBOUNCE).is_ok() {}
                let report = store.reload();
                if report.items.iter().any(|i| i.outcome != "unchanged") {
                    tracing::info!(ok = report.ok, "reload after a file change");
                }
            }
        })
        .map_err(|e| WatchError { path: PathBuf::new(), source: notify::Error::io(e) })?;
    Ok(Watcher { _watcher: watcher })
}

/// Keeps the poll running; dropping it stops polling.
pub struct Poller {
    _stop: mpsc::Sender<()>,
}

/// Reloads the store every `every` (on a thread of its own): for a remote classifier, whose
/// model can change on its server without any file event here. A reload with nothing changed
/// costs one metadata call to the server.
pub fn poll(store: GuardStore, every: Duration) -> Result<Poller, WatchError> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("rulegate-poll".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let report = store.reload();
                if report.items.iter().any(|i| i.outcome != "unchanged") {
                    tracing::info!(ok = report.ok, "reload after polling the inference server");
                }
            }
        })
        .map_err(|e| WatchError { path: PathBuf::new(), source: notify::Error::io(e) })?;
    Ok(Poller { _stop: stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_relevant_events_count() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let policy = dir.path().join("conf/policy.yaml");
        let interest = Interest::new(&[policy.clone(), model.clone()]);
        assert!(interest.matches(&policy));
        assert!(interest.matches(&model.join("model.onnx")));
        assert!(interest.matches(&dir.path().join("conf/..data")));
        assert!(!interest.matches(&dir.path().join("conf/other.yaml")));
        assert!(!interest.matches(&dir.path().join("unrelated.txt")));
        let dirs = interest.directories();
        assert!(dirs.contains(&model) && !dirs.contains(dir.path()), "{dirs:?}");
    }
}
