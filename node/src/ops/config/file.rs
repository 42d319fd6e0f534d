//! The configuration file's schema: every section and key `node.toml` may hold (unknown keys are
//! refused), as read before any value is checked. The chart's validator reads these structs to know
//! which keys exist (tests/chart/validate.py).

use super::ConfigErrors;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) node_id: Option<String>,
    pub(super) trust_domain: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) gateway_listen: Option<String>,
    pub(super) ops_listen: Option<String>,
    pub(super) peer_listen: Option<String>,
    pub(super) control_public_key: Option<PathBuf>,
    pub(super) layout_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) tls: FileTls,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) log: FileLog,
    #[serde(default)]
    pub(super) audit: FileAudit,
    #[serde(default)]
    pub(super) access: FileAccess,
    #[serde(default)]
    pub(super) rebalance: FileRebalance,
    #[serde(default)]
    pub(super) telemetry: FileTelemetry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTelemetry {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) service_name: Option<String>,
    pub(super) sample_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRebalance {
    pub(super) rate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAccess {
    pub(super) contact_grace: Option<String>,
    pub(super) reveal_limit: Option<u64>,
    pub(super) reveal_window: Option<String>,
    pub(super) require_purpose: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAudit {
    pub(super) retention: Option<String>,
    pub(super) segment_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) ca: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) crl: Option<PathBuf>,
    pub(super) reload_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    pub(super) max_concurrent_requests: Option<u64>,
    pub(super) request_timeout: Option<String>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) drain_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}

/// Reads and parses the file, if any (an absent file is all defaults).
pub(super) fn read(file: Option<&Path>) -> Result<FileConfig, ConfigErrors> {
    Ok(match file {
        None => FileConfig::default(),
        Some(path) => match std::fs::read_to_string(path) {
            Err(e) => {
                return Err(ConfigErrors(vec![format!(
                    "cannot read config file {}: {e}",
                    path.display()
                )]));
            }
            Ok(text) => match toml::from_str(&text) {
                Ok(fc) => fc,
                Err(e) => {
                    return Err(ConfigErrors(vec![format!(
                        "config file {}: {}",
                        path.display(),
                        e.message()
                    )]));
                }
            },
        },
    })
}
