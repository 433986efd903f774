//! Which versions of a model are served: Triton's version policies.
//!
//! The server-wide default comes from `--version-policy`; a model overrides it with
//! `models/<name>/serving.json`, e.g. `{"version_policy": {"latest": 2}}`, `{"version_policy": "all"}`
//! or `{"version_policy": {"specific": [1, 3]}}`.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// File, beside a model's version folders, that overrides the server's version policy.
pub const SERVING_FILE: &str = "serving.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// The `n` newest versions that load; a newer version that fails does not count, so the
    /// version serving before it stays.
    Latest(usize),
    /// Every version in the repository.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// Whether `version` is a candidate at all (before knowing whether it loads).
    pub fn admits(&self, version: u64) -> bool {
        match self {
            VersionPolicy::Latest(_) | VersionPolicy::All => true,
            VersionPolicy::Specific(versions) => versions.contains(&version),
        }
    }

    /// How many ready versions to keep, newest first (`None`: no limit).
    pub fn ready_limit(&self) -> Option<usize> {
        match self {
            VersionPolicy::Latest(n) => Some((*n).max(1)),
            VersionPolicy::All | VersionPolicy::Specific(_) => None,
        }
    }
}

/// Why a version policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid version policy {0:?}: expected latest:N, all, or specific:V[,V...]")]
    Invalid(String),
    /// A model's `serving.json` that cannot be read or parsed.
    #[error("{path}: {cause}")]
    File { path: String, cause: String },
}

/// `latest:N`, `all`, or `specific:V[,V...]` (the `--version-policy` flag).
impl FromStr for VersionPolicy {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let usage = || PolicyError::Invalid(text.to_string());
        match text.split_once(':') {
            None if text == "all" => Ok(VersionPolicy::All),
            None if text == "latest" => Ok(VersionPolicy::Latest(1)),
            Some(("latest", n)) => match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(VersionPolicy::Latest(n)),
                _ => Err(usage()),
            },
            Some(("specific", list)) => {
                let versions = list
                    .split(',')
                    .map(|v| v.trim().parse::<u64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| usage())?;
                if versions.is_empty() {
                    return Err(usage());
                }
                Ok(VersionPolicy::Specific(versions))
            }
            _ => Err(usage()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServingFile {
    version_policy: VersionPolicy,
}

/// The policy of the model in `model_dir`: its `serving.json`, else `default`.
pub fn policy_for(model_dir: &Path, default: &VersionPolicy) -> Result<VersionPolicy, PolicyError> {
    let path = model_dir.join(SERVING_FILE);
    let unusable = |cause: String| PolicyError::File {
        path: path.display().to_string(),
        cause,
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<ServingFile>(&bytes)
            .map(|f| f.version_policy)
            .map_err(|e| unusable(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(default.clone()),
        Err(e) => Err(unusable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag_forms() {
        assert_eq!("latest:3".parse(), Ok(VersionPolicy::Latest(3)));
        assert_eq!("all".parse(), Ok(VersionPolicy::All));
        assert_eq!(
            "specific:1, 4".parse(),
            Ok(VersionPolicy::Specific(vec![1, 4]))
        );
        for bad in ["latest:0", "latest:x", "specific:", "newest", "specific:a"] {
            assert!(bad.parse::<VersionPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_serving_json_and_falls_back_to_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = VersionPolicy::Latest(1);
        assert_eq!(policy_for(dir.path(), &default), Ok(default.clone()));
        std::fs::write(
            dir.path().join(SERVING_FILE),
            r#"{"version_policy": {"specific": [2, 5]}}"#,
        )
        .unwrap();
        assert_eq!(
            policy_for(dir.path(), &default),
            Ok(VersionPolicy::Specific(vec![2, 5]))
        );
        std::fs::write(
            dir.path().join(SERVING_FILE),
            r#"{"version_policy": "all"}"#,
        )
        .unwrap();
        assert_eq!(policy_for(dir.path(), &default), Ok(VersionPolicy::All));
        std::fs::write(dir.path().join(SERVING_FILE), r#"{"version_policy": 3}"#).unwrap();
        assert!(policy_for(dir.path(), &default).is_err());
    }
}
