//! Watching the model repository: filesystem events (inotify through `notify`, or polling where
//! the filesystem has no events) and explicit rescans (`SIGHUP`) all end in one debounced
//! [`ModelRegistry::reconcile_all`] on a blocking thread, never on the async executor.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::core::registry::ModelRegistry;

/// How the repository is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// Filesystem events; falls back to polling when the filesystem offers none.
    Events,
    /// Compare the tree every `poll_interval` (network filesystems, some container mounts).
    Poll,
    /// Only `SIGHUP` and the repository API change what is served.
    Off,
}

#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    pub mode: WatchMode,
    pub poll_interval: Duration,
    /// Quiet time after the last change before the repository is read again.
    pub debounce: Duration,
}

/// Keeps the watch alive; [`Self::rescan`] asks for a pass (what `SIGHUP` does).
pub struct RepositoryWatcher {
    trigger: mpsc::UnboundedSender<()>,
    _watcher: Option<Box<dyn Watcher + Send>>,
}

impl RepositoryWatcher {
    /// Starts watching `dir` and the task that applies changes. Needs a Tokio runtime.
    pub fn start(registry: Arc<ModelRegistry>, dir: &Path, options: WatchOptions) -> Self {
        let (trigger, events) = mpsc::unbounded_channel();
        let watcher = match options.mode {
            WatchMode::Off => None,
            WatchMode::Events => {
                events_watcher(dir, trigger.clone()).or_else(|error| {
                    tracing::warn!(%error, dir = %dir.display(), "no filesystem events for the model repository; polling instead");
                    poll_watcher(dir, trigger.clone(), options.poll_interval)
                }).map_err(|error| tracing::error!(%error, "the model repository is not watched; SIGHUP still rescans it")).ok()
            }
            WatchMode::Poll => poll_watcher(dir, trigger.clone(), options.poll_interval)
                .map_err(|error| tracing::error!(%error, "the model repository is not watched; SIGHUP still rescans it"))
                .ok(),
        };
        tracing::info!(mode = ?options.mode, dir = %dir.display(), debounce_ms = options.debounce.as_millis() as u64, "watching the model repository");
        tokio::spawn(apply_changes(registry, events, options.debounce));
        Self {
            trigger,
            _watcher: watcher,
        }
    }

    /// Asks for the repository to be read again (debounced like a filesystem event).
    pub fn rescan(&self) {
        let _ = self.trigger.send(());
    }
}

fn handler(trigger: mpsc::UnboundedSender<()>) -> impl notify::EventHandler {
    move |event: notify::Result<notify::Event>| match event {
        // Reading a model (our own loads) is not a change.
        Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
        Ok(_) => {
            let _ = trigger.send(());
        }
        Err(error) => {
            tracing::warn!(%error, "model repository watch error; rescanning");
            let _ = trigger.send(());
        }
    }
}

fn events_watcher(
    dir: &Path,
    trigger: mpsc::UnboundedSender<()>,
) -> notify::Result<Box<dyn Watcher + Send>> {
    let mut watcher = notify::recommended_watcher(handler(trigger))?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(Box::new(watcher))
}

fn poll_watcher(
    dir: &Path,
    trigger: mpsc::UnboundedSender<()>,
    interval: Duration,
) -> notify::Result<Box<dyn Watcher + Send>> {
    let config = notify::Config::default().with_poll_interval(interval);
    let mut watcher = notify::PollWatcher::new(handler(trigger), config)?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(Box::new(watcher))
}

/// Waits for a change, lets the burst of events settle, then reconciles; again after the settle
/// time while some version is still being written.
async fn apply_changes(
    registry: Arc<ModelRegistry>,
    mut events: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
) {
    let mut again = false;
    loop {
        if !again && events.recv().await.is_none() {
            return;
        }
        loop {
            match tokio::time::timeout(debounce, events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        let registry = Arc::clone(&registry);
        again = match tokio::task::spawn_blocking(move || registry.reconcile_all()).await {
            Ok(Ok(report)) => report.unsettled,
            Ok(Err(error)) => {
                tracing::error!(%error, "model repository rescan failed; what serves stays");
                false
            }
            Err(error) => {
                tracing::error!(%error, "model repository rescan panicked; what serves stays");
                false
            }
        };
    }
}
