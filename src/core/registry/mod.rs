//! The model registry: what the repository `models/<name>/<version>/{model.onnx, manifest.json}`
//! holds, and which versions serve.
//!
//! Requests read an immutable snapshot (`arc-swap`, no lock on the request path). Changes go
//! through [`ModelRegistry::reconcile_all`] (the watcher, `SIGHUP`, startup) or the explicit
//! load/unload calls, one at a time: a new or changed version is loaded, checked against its
//! manifest and warmed up first, and only then swapped in. A version that fails is reported and
//! the version serving before it stays. A version swapped out finishes the requests already on it
//! and is freed when the last one completes (see [`LoadedModel`]).

mod loader;
pub mod policy;
pub mod scan;

use crate::backend::SessionOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use fer_contract::{DecodeLimits, Manifest};

pub use loader::LoadedModel;
use loader::load_version;
use policy::VersionPolicy;
use scan::{Fingerprint, ModelOnDisk, scan};

use crate::error::Error;
use crate::metrics::Metrics;

/// How models are loaded and served (from the server's configuration).
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub models_dir: PathBuf,
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub queue_capacity: usize,
    /// Inference workers (sessions, each on its own thread) per model version.
    pub workers: usize,
    pub session: SessionOptions,
    pub decode_limits: DecodeLimits,
    /// Versions served per model unless its `serving.json` says otherwise.
    pub version_policy: VersionPolicy,
    /// A version whose files changed more recently than this is left alone until they settle.
    pub settle: Duration,
}

#[derive(Clone)]
pub enum VersionState {
    Ready(Arc<LoadedModel>),
    Failed {
        manifest: Option<Box<Manifest>>,
        error: String,
    },
}

/// One version as the registry knows it.
pub struct VersionEntry {
    pub state: VersionState,
    /// A newer copy of this version's files failed to load; the state above still serves.
    pub reload_error: Option<String>,
    /// The files last tried: unchanged files are not tried again.
    attempted: Fingerprint,
}

impl VersionEntry {
    pub fn ready(&self) -> Option<&Arc<LoadedModel>> {
        match &self.state {
            VersionState::Ready(m) => Some(m),
            VersionState::Failed { .. } => None,
        }
    }
}

type Versions = BTreeMap<u64, Arc<VersionEntry>>;
type Snapshot = BTreeMap<String, Versions>;

/// A version in the repository with its state, as `POST /v2/repository/index` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: u64,
    /// `READY`, `UNAVAILABLE` (on disk, not served: policy, failure or unloaded).
    pub ready: bool,
    pub reason: String,
}

/// What a reconcile pass saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReconcileReport {
    /// Some version's files were still changing: run again after the settle time.
    pub unsettled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The cause is part of the message, not a `source`, so that a chain printed with `{:#}`
    /// names it once.
    #[error(
        "cannot read the model repository {path}: {cause} (point --models-dir or FER_MODELS_DIR at it)"
    )]
    Io { path: String, cause: std::io::Error },
}

impl RegistryError {
    /// The error for a client: logged here with the repository's path, answered without it.
    fn into_public(self) -> Error {
        tracing::error!(error = %self, "the model repository cannot be read");
        match self {
            RegistryError::Io { cause, .. } => Error::Repository(cause.to_string()),
        }
    }
}

pub struct ModelRegistry {
    snapshot: ArcSwap<Snapshot>,
    /// Serialises changes (loads run under it).
    changes: Mutex<()>,
    /// Models unloaded by request: not served again until loaded by request.
    unloaded: Mutex<BTreeSet<String>>,
    options: RegistryOptions,
    environment: &'static ort::environment::Environment,
    metrics: Arc<Metrics>,
}

impl ModelRegistry {
    /// How long a worker waits to fill a batch (`--max-queue-delay-ms`).
    pub fn max_queue_delay(&self) -> Duration {
        self.options.max_queue_delay
    }

    /// An empty registry; [`Self::reconcile_all`] fills it from the repository.
    pub fn new(
        options: RegistryOptions,
        environment: &'static ort::environment::Environment,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::new()),
            changes: Mutex::new(()),
            unloaded: Mutex::new(BTreeSet::new()),
            options,
            environment,
            metrics,
        }
    }

    /// The same registry with another settle time (startup loads at once; reloads wait).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.options.settle = settle;
        self
    }

    /// The named version, or the newest ready one.
    pub fn resolve(&self, name: &str, version: Option<u64>) -> Result<Arc<LoadedModel>, Error> {
        let snapshot = self.snapshot.load();
        let versions = snapshot
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
        let not_ready = |v: u64, entry: &VersionEntry| match &entry.state {
            VersionState::Failed { error, .. } => Error::ModelNotReady {
                model: name.to_string(),
                version: v,
                reason: error.clone(),
            },
            VersionState::Ready(_) => Error::ModelNotFound(name.to_string()),
        };
        match version {
            Some(v) => {
                let entry = versions.get(&v).ok_or_else(|| Error::VersionNotFound {
                    model: name.to_string(),
                    version: v,
                })?;
                entry.ready().cloned().ok_or_else(|| not_ready(v, entry))
            }
            None => versions
                .values()
                .rev()
                .find_map(|e| e.ready().cloned())
                .ok_or_else(|| match versions.iter().next_back() {
                    Some((v, entry)) => not_ready(*v, entry),
                    None => Error::ModelNotFound(name.to_string()),
                }),
        }
    }

    /// Every model version the registry holds, with its state.
    pub fn models(&self) -> Vec<(String, u64, Arc<VersionEntry>)> {
        self.snapshot
            .load()
            .iter()
            .flat_map(|(name, versions)| {
                versions
                    .iter()
                    .map(move |(v, e)| (name.clone(), *v, Arc::clone(e)))
            })
            .collect()
    }

    /// The versions of `name` that serve now, oldest first.
    pub fn ready_versions(&self, name: &str) -> Vec<u64> {
        self.snapshot
            .load()
            .get(name)
            .map(|versions| {
                versions
                    .iter()
                    .filter(|(_, e)| e.ready().is_some())
                    .map(|(v, _)| *v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Brings every model in line with the repository. Blocking: loads run on this thread.
    pub fn reconcile_all(&self) -> Result<ReconcileReport, RegistryError> {
        let _changing = lock(&self.changes);
        let on_disk = self.scan()?;
        let unloaded = {
            let mut unloaded = lock(&self.unloaded);
            // A model deleted from disk is forgotten, so that re-creating it loads it again.
            unloaded.retain(|name| on_disk.contains_key(name));
            unloaded.clone()
        };
        let names: BTreeSet<String> = on_disk
            .keys()
            .chain(self.snapshot.load().keys())
            .cloned()
            .collect();
        let mut report = ReconcileReport::default();
        for name in names {
            let disk = on_disk.get(&name).filter(|_| !unloaded.contains(&name));
            report.unsettled |= self.reconcile_model(&name, disk, false);
        }
        Ok(report)
    }

    /// Loads (or reloads) one model now, retrying versions that failed; Triton's
    /// `POST /v2/repository/models/{m}/load`. Blocking.
    pub fn load_model(&self, name: &str) -> Result<(), Error> {
        let _changing = lock(&self.changes);
        // Asked for explicitly: the caller vouches that the files are complete.
        let on_disk = self
            .scan_settled_after(Duration::ZERO)
            .map_err(RegistryError::into_public)?;
        let disk = on_disk
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
        lock(&self.unloaded).remove(name);
        self.reconcile_model(name, Some(disk), true);
        let snapshot = self.snapshot.load();
        let versions = snapshot.get(name);
        if versions.is_some_and(|v| v.values().any(|e| e.ready().is_some())) {
            return Ok(());
        }
        let reasons: Vec<String> = versions
            .into_iter()
            .flat_map(|v| v.iter())
            .filter_map(|(v, e)| match &e.state {
                VersionState::Failed { error, .. } => Some(format!("version {v}: {error}")),
                VersionState::Ready(_) => None,
            })
            .collect();
        Err(Error::ModelLoadFailed {
            model: name.to_string(),
            reason: if reasons.is_empty() {
                "no version in the repository matches the version policy".into()
            } else {
                reasons.join("; ")
            },
        })
    }

    /// Stops serving a model until it is loaded again; Triton's
    /// `POST /v2/repository/models/{m}/unload`. Requests already on it finish.
    pub fn unload_model(&self, name: &str) -> Result<(), Error> {
        let _changing = lock(&self.changes);
        let known = self.snapshot.load().contains_key(name);
        let on_disk = self.scan().map_err(RegistryError::into_public)?;
        if !known && !on_disk.contains_key(name) {
            return Err(Error::ModelNotFound(name.to_string()));
        }
        lock(&self.unloaded).insert(name.to_string());
        self.reconcile_model(name, None, false);
        tracing::info!(model = %name, "model unloaded by request");
        Ok(())
    }

    /// Every version on disk with whether it serves; Triton's `POST /v2/repository/index`.
    pub fn index(&self) -> Result<Vec<IndexEntry>, Error> {
        let on_disk = self.scan().map_err(RegistryError::into_public)?;
        let snapshot = self.snapshot.load();
        let unloaded = lock(&self.unloaded).clone();
        let mut entries = Vec::new();
        for (name, model) in &on_disk {
            for version in model.versions.keys() {
                let entry = snapshot.get(name).and_then(|v| v.get(version));
                let (ready, reason) = match entry.map(|e| &e.state) {
                    Some(VersionState::Ready(_)) => (true, String::new()),
                    Some(VersionState::Failed { error, .. }) => (false, error.clone()),
                    None if unloaded.contains(name) => (false, "unloaded".into()),
                    None => (
                        false,
                        "not loaded: outside the version policy, or not read since it appeared"
                            .into(),
                    ),
                };
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: *version,
                    ready,
                    reason,
                });
            }
        }
        Ok(entries)
    }

    fn scan(&self) -> Result<BTreeMap<String, ModelOnDisk>, RegistryError> {
        self.scan_settled_after(self.options.settle)
    }

    fn scan_settled_after(
        &self,
        settle: Duration,
    ) -> Result<BTreeMap<String, ModelOnDisk>, RegistryError> {
        let dir = &self.options.models_dir;
        scan(dir, &self.options.version_policy, settle).map_err(|cause| RegistryError::Io {
            path: dir.display().to_string(),
            cause,
        })
    }

    /// Brings one model in line with `disk` (`None`: serve nothing). Returns whether some
    /// version's files were still changing. The caller holds the `changes` lock.
    fn reconcile_model(&self, name: &str, disk: Option<&ModelOnDisk>, retry_failed: bool) -> bool {
        let current: Versions = self.snapshot.load().get(name).cloned().unwrap_or_default();
        let mut unsettled = false;
        let mut next = Versions::new();
        if let Some(disk) = disk {
            let policy = match &disk.policy {
                Ok(policy) => policy,
                Err(error) => {
                    tracing::error!(model = %name, %error, "unreadable version policy: the model stays as it is");
                    return false;
                }
            };
            let mut ready = 0;
            for (&version, on_disk) in disk.versions.iter().rev() {
                if !policy.admits(version) {
                    continue;
                }
                if policy.ready_limit().is_some_and(|limit| ready >= limit) {
                    break;
                }
                let existing = current.get(&version);
                let entry = if !on_disk.settled {
                    unsettled = true;
                    match existing {
                        Some(e) => Arc::clone(e),
                        None => continue,
                    }
                } else {
                    match existing {
                        Some(e)
                            if e.attempted == on_disk.fingerprint
                                && !(retry_failed && e.ready().is_none()) =>
                        {
                            Arc::clone(e)
                        }
                        _ => Arc::new(self.load(name, version, on_disk, existing)),
                    }
                };
                ready += usize::from(entry.ready().is_some());
                next.insert(version, entry);
            }
        }
        for (version, entry) in &next {
            let value = i64::from(entry.ready().is_some());
            self.metrics
                .model_ready
                .with_label_values(&[name, &version.to_string()])
                .set(value);
        }
        for version in current.keys().filter(|v| !next.contains_key(v)) {
            let _ = self
                .metrics
                .model_ready
                .remove_label_values(&[name, &version.to_string()]);
            tracing::info!(model = %name, version, "version no longer served; requests already on it finish");
        }
        let mut snapshot = Snapshot::clone(&self.snapshot.load());
        if next.is_empty() {
            snapshot.remove(name);
        } else {
            snapshot.insert(name.to_string(), next);
        }
        self.snapshot.store(Arc::new(snapshot));
        unsettled
    }

    fn load(
        &self,
        name: &str,
        version: u64,
        on_disk: &scan::VersionOnDisk,
        existing: Option<&Arc<VersionEntry>>,
    ) -> VersionEntry {
        let attempted = on_disk.fingerprint;
        let result = load_version(
            name,
            version,
            &on_disk.dir,
            &self.options,
            self.environment,
            &self.metrics,
        );
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .model_loads
            .with_label_values(&[name, outcome])
            .inc();
        match result {
            Ok(model) => {
                tracing::info!(model = %name, version, dir = %on_disk.dir.display(), "model version ready");
                VersionEntry {
                    state: VersionState::Ready(Arc::new(model)),
                    reload_error: None,
                    attempted,
                }
            }
            Err((manifest, error)) => match existing.and_then(|e| e.ready()) {
                Some(serving) => {
                    let dir = on_disk.dir.display();
                    let error = error.to_string();
                    tracing::error!(model = %name, version, %dir, %error, "changed version failed to load; the copy already loaded keeps serving");
                    VersionEntry {
                        state: VersionState::Ready(Arc::clone(serving)),
                        reload_error: Some(error),
                        attempted,
                    }
                }
                None => {
                    let dir = on_disk.dir.display();
                    let error = error.to_string();
                    tracing::error!(model = %name, version, %dir, %error, "model version failed to load");
                    VersionEntry {
                        state: VersionState::Failed { manifest, error },
                        reload_error: None,
                        attempted,
                    }
                }
            },
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/ferplus/1")
    }

    /// `<root>/m/<version>/` from the shipped model; `labels` drops labels to break the manifest.
    fn version(root: &std::path::Path, version: u64, drop_labels: usize) {
        let dir = root.join("m").join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(shipped().join("model.onnx"), dir.join("model.onnx")).unwrap();
        let mut manifest = Manifest::load(&shipped().join("manifest.json")).unwrap();
        manifest.name = "m".into();
        manifest.version = version;
        manifest
            .labels
            .truncate(manifest.labels.len() - drop_labels);
        // Written without validation: a mismatched manifest must reach the loader.
        std::fs::write(
            dir.join("manifest.json"),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
    }

    fn registry(root: &std::path::Path, policy: &str) -> (ModelRegistry, Arc<Metrics>) {
        let (_, environment) = fer_contract::onnx::runtime(None).expect("make setup");
        let metrics = Arc::new(Metrics::new());
        let options = RegistryOptions {
            models_dir: root.to_path_buf(),
            max_batch_size: 2,
            max_queue_delay: Duration::ZERO,
            queue_capacity: 8,
            workers: 1,
            session: SessionOptions {
                intra_op_threads: 1,
                ..SessionOptions::default()
            },
            decode_limits: DecodeLimits::default(),
            version_policy: policy.parse().unwrap(),
            settle: Duration::ZERO,
        };
        (
            ModelRegistry::new(options, environment, Arc::clone(&metrics)),
            metrics,
        )
    }

    fn states(registry: &ModelRegistry) -> Vec<(u64, bool)> {
        registry
            .models()
            .into_iter()
            .map(|(_, v, e)| (v, e.ready().is_some()))
            .collect()
    }

    fn loads(metrics: &Metrics, outcome: &str) -> u64 {
        metrics.model_loads.with_label_values(&["m", outcome]).get()
    }

    #[test]
    fn latest_n_counts_only_versions_that_load_and_failures_are_not_retried_unchanged() {
        let root = tempfile::tempdir().unwrap();
        for v in [1, 2] {
            version(root.path(), v, 0);
        }
        version(root.path(), 3, 1);
        let (registry, metrics) = registry(root.path(), "latest:2");
        registry.reconcile_all().unwrap();
        assert_eq!(
            states(&registry),
            [(1, true), (2, true), (3, false)],
            "3 fails, so 1 and 2 serve"
        );
        assert_eq!(registry.resolve("m", None).unwrap().manifest.version, 2);
        assert!(matches!(
            registry.resolve("m", Some(3)),
            Err(Error::ModelNotReady { version: 3, .. })
        ));
        assert_eq!(
            (loads(&metrics, "success"), loads(&metrics, "failure")),
            (2, 1)
        );

        registry.reconcile_all().unwrap();
        assert_eq!(
            (loads(&metrics, "success"), loads(&metrics, "failure")),
            (2, 1),
            "nothing changed on disk: nothing is loaded again"
        );
        registry.load_model("m").unwrap();
        assert_eq!(
            loads(&metrics, "failure"),
            2,
            "an explicit load retries failures"
        );

        std::fs::remove_dir_all(root.path().join("m/3")).unwrap();
        version(root.path(), 4, 0);
        registry.reconcile_all().unwrap();
        assert_eq!(states(&registry), [(2, true), (4, true)]);
    }

    #[test]
    fn specific_versions_unload_and_reload() {
        let root = tempfile::tempdir().unwrap();
        for v in [1, 2, 3] {
            version(root.path(), v, 0);
        }
        let (registry, _) = registry(root.path(), "specific:1,3");
        registry.reconcile_all().unwrap();
        assert_eq!(states(&registry), [(1, true), (3, true)]);

        let held = registry.resolve("m", Some(3)).unwrap();
        registry.unload_model("m").unwrap();
        assert!(matches!(
            registry.resolve("m", None),
            Err(Error::ModelNotFound(_))
        ));
        assert_eq!(
            held.manifest.version, 3,
            "a request holding a version keeps it"
        );
        registry.reconcile_all().unwrap();
        assert!(states(&registry).is_empty(), "unloaded stays unloaded");
        let index = registry.index().unwrap();
        assert!(index.iter().all(|e| !e.ready && e.reason == "unloaded"));

        registry.load_model("m").unwrap();
        assert_eq!(states(&registry), [(1, true), (3, true)]);
        assert!(matches!(
            registry.load_model("nope"),
            Err(Error::ModelNotFound(_))
        ));
    }
}
