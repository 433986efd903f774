//! Reading the repository folder: which models and versions are on disk, and a fingerprint of each
//! version's files so that a changed or replaced version is noticed and a half-copied one waited for.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fer_contract::{MANIFEST_FILE, MODEL_FILE};

use super::policy::{PolicyError, VersionPolicy, policy_for};

/// Identity of one file's contents as the filesystem reports it: a replaced file (atomic rename)
/// has a new inode, an edited one a new size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub inode: u64,
    pub len: u64,
    pub modified: SystemTime,
}

/// The stamps of a version's manifest and graph (`None`: the file is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub manifest: Option<FileStamp>,
    pub model: Option<FileStamp>,
}

/// One version folder on disk.
#[derive(Debug, Clone)]
pub struct VersionOnDisk {
    pub dir: PathBuf,
    pub fingerprint: Fingerprint,
    /// False while a file was modified within the settle time: it may still be being written.
    pub settled: bool,
}

/// One model folder on disk.
#[derive(Debug, Clone)]
pub struct ModelOnDisk {
    /// The model's version policy, or why its `serving.json` is unreadable.
    pub policy: Result<VersionPolicy, PolicyError>,
    pub versions: BTreeMap<u64, VersionOnDisk>,
}

/// Lists `<dir>/<name>/<version>/`; names starting with `.` and non-numeric versions are ignored
/// (so a publisher can stage a version in `.staging/` or `<name>/.3.tmp/` and rename it in).
pub fn scan(
    dir: &Path,
    default_policy: &VersionPolicy,
    settle: Duration,
) -> std::io::Result<BTreeMap<String, ModelOnDisk>> {
    let now = SystemTime::now();
    let mut models = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let model_dir = entry?.path();
        let Some(name) = model_dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !model_dir.is_dir() {
            continue;
        }
        let name = name.to_string();
        let mut versions = BTreeMap::new();
        let entries = match std::fs::read_dir(&model_dir) {
            Ok(entries) => entries,
            // Deleted between the two reads: the model is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let version_dir = entry.path();
            let Some(version) = version_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if !version_dir.is_dir() {
                continue;
            }
            let manifest = stamp(&version_dir.join(MANIFEST_FILE));
            let model = stamp(&version_dir.join(MODEL_FILE));
            let settled = [manifest, model].iter().flatten().all(|s| {
                now.duration_since(s.modified)
                    .map(|age| age >= settle)
                    // A modification time in the future: trust it rather than wait forever.
                    .unwrap_or(true)
            });
            versions.insert(
                version,
                VersionOnDisk {
                    dir: version_dir,
                    fingerprint: Fingerprint { manifest, model },
                    settled,
                },
            );
        }
        models.insert(
            name,
            ModelOnDisk {
                policy: policy_for(&model_dir, default_policy),
                versions,
            },
        );
    }
    Ok(models)
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        inode: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_numeric_versions_and_notices_replaced_files() {
        let root = tempfile::tempdir().unwrap();
        let v1 = root.path().join("m/1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(root.path().join("m/.2.tmp")).unwrap();
        std::fs::create_dir_all(root.path().join(".staging/1")).unwrap();
        std::fs::write(v1.join(MANIFEST_FILE), "{}").unwrap();
        std::fs::write(v1.join(MODEL_FILE), "graph").unwrap();
        let policy = VersionPolicy::default();
        let first = scan(root.path(), &policy, Duration::ZERO).unwrap();
        assert_eq!(first.keys().collect::<Vec<_>>(), ["m"]);
        let m = &first["m"];
        assert_eq!(m.versions.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(m.versions[&1].settled);
        assert_eq!(m.policy, Ok(policy.clone()));

        // Replace the graph by rename, same size: the inode differs.
        std::fs::write(v1.join("new.onnx"), "GRAPH").unwrap();
        std::fs::rename(v1.join("new.onnx"), v1.join(MODEL_FILE)).unwrap();
        let second = scan(root.path(), &policy, Duration::from_secs(3600)).unwrap();
        let (a, b) = (&first["m"].versions[&1], &second["m"].versions[&1]);
        assert_ne!(a.fingerprint, b.fingerprint);
        assert!(!b.settled, "just written: may still be in progress");
    }
}
