//! `rulegate serve` configuration: a YAML file (`--config rulegate.yaml`), overridden by
//! flags. Relative paths in the file are relative to the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::classifier::Device;
use crate::pipeline::FailMode;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Missing(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address of the guarded OpenAI-compatible listener, e.g. `127.0.0.1:8080`.
    pub listen: Option<String>,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    pub policy: Option<PathBuf>,
    pub model: Option<PathBuf>,
    #[serde(default)]
    pub classifier: ClassifierConfig,
    /// Largest accepted request body.
    pub max_body_bytes: Option<usize>,
    /// What to do when the classifier fails: `fail_closed` (503) or `fail_open` (deliver unjudged).
    pub on_classifier_error: Option<FailModeName>,
    /// Worker threads of the proxy.
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the model API, e.g. `http://127.0.0.1:8000` (paths are appended).
    pub url: Option<String>,
    /// Per call; for streams, per chunk.
    pub timeout_secs: Option<u64>,
    /// Whether the upstream honours `n` (best-of-n then asks once for several candidates).
    pub supports_n: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    pub sessions: Option<usize>,
    pub threads: Option<usize>,
    pub max_batch: Option<usize>,
    pub device: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FailModeName {
    FailOpen,
    FailClosed,
}

impl From<FailModeName> for FailMode {
    fn from(name: FailModeName) -> FailMode {
        match name {
            FailModeName::FailOpen => FailMode::Open,
            FailModeName::FailClosed => FailMode::Closed,
        }
    }
}

/// Everything `serve` needs, defaults applied and paths resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub listen: String,
    pub upstream_url: String,
    pub upstream_timeout: std::time::Duration,
    pub upstream_supports_n: bool,
    pub policy: PathBuf,
    pub model: Option<PathBuf>,
    pub sessions: usize,
    pub classifier_threads: Option<usize>,
    pub max_batch: usize,
    pub device: Option<Device>,
    pub max_body_bytes: usize,
    pub on_classifier_error: FailMode,
    pub threads: usize,
}

impl ServeConfig {
    pub fn from_file(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let mut config: ServeConfig = serde_saphyr::from_str(&text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut Option<PathBuf>| {
            if let Some(rel) = p.as_ref().filter(|p| p.is_relative()) {
                *p = Some(base.join(rel));
            }
        };
        resolve(&mut config.policy);
        resolve(&mut config.model);
        Ok(config)
    }

    /// `other`'s settings win where it has them (flags over the file).
    pub fn overridden_by(self, other: ServeConfig) -> ServeConfig {
        ServeConfig {
            listen: other.listen.or(self.listen),
            upstream: UpstreamConfig {
                url: other.upstream.url.or(self.upstream.url),
                timeout_secs: other.upstream.timeout_secs.or(self.upstream.timeout_secs),
                supports_n: other.upstream.supports_n.or(self.upstream.supports_n),
            },
            policy: other.policy.or(self.policy),
            model: other.model.or(self.model),
            classifier: ClassifierConfig {
                sessions: other.classifier.sessions.or(self.classifier.sessions),
                threads: other.classifier.threads.or(self.classifier.threads),
                max_batch: other.classifier.max_batch.or(self.classifier.max_batch),
                device: other.classifier.device.or(self.classifier.device),
            },
            max_body_bytes: other.max_body_bytes.or(self.max_body_bytes),
            on_classifier_error: other.on_classifier_error.or(self.on_classifier_error),
            threads: other.threads.or(self.threads),
        }
    }

    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        let upstream_url = self.upstream.url.ok_or_else(|| {
            ConfigError::Missing("no upstream: pass --upstream URL or set upstream.url in the config".into())
        })?;
        let policy = self
            .policy
            .ok_or_else(|| ConfigError::Missing("no policy: pass --policy FILE or set policy in the config".into()))?;
        let device =
            self.classifier.device.as_deref().map(str::parse::<Device>).transpose().map_err(ConfigError::Missing)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Resolved {
            listen: self.listen.unwrap_or_else(|| "127.0.0.1:8080".into()),
            upstream_url,
            upstream_timeout: std::time::Duration::from_secs(self.upstream.timeout_secs.unwrap_or(120)),
            upstream_supports_n: self.upstream.supports_n.unwrap_or(true),
            policy,
            model: self.model,
            sessions: self.classifier.sessions.unwrap_or(1),
            classifier_threads: self.classifier.threads,
            max_batch: self.classifier.max_batch.unwrap_or(16),
            device,
            max_body_bytes: self.max_body_bytes.unwrap_or(crate::pipeline::http::DEFAULT_MAX_BODY_BYTES),
            on_classifier_error: self.on_classifier_error.map_or(FailMode::Closed, Into::into),
            threads: self.threads.unwrap_or(cores),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rulegate.yaml");
        std::fs::write(&path, "listen: 0.0.0.0:9000\nupstream:\n  url: http://a:1\n  timeout_secs: 5\npolicy: p.yaml\nclassifier:\n  sessions: 2\n").unwrap();
        let file = ServeConfig::from_file(&path).unwrap();
        assert_eq!(file.policy.as_deref(), Some(dir.path().join("p.yaml").as_path()));
        let flags = ServeConfig { listen: Some("127.0.0.1:1".into()), ..ServeConfig::default() };
        let r = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(r.listen, "127.0.0.1:1");
        assert_eq!(r.upstream_url, "http://a:1");
        assert_eq!(r.upstream_timeout.as_secs(), 5);
        assert_eq!(r.sessions, 2);
        assert_eq!(r.on_classifier_error, FailMode::Closed);
    }

    #[test]
    fn unknown_fields_and_missing_settings_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "upstrem: {}\n").unwrap();
        assert!(ServeConfig::from_file(&path).unwrap_err().to_string().contains("unknown field `upstrem`"));
        let err = ServeConfig::default().resolve().unwrap_err();
        assert!(err.to_string().contains("--upstream"), "{err}");
    }
}
