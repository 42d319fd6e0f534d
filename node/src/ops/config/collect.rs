//! Collects configuration values and the problems with them: every check records what is wrong
//! and goes on, so that one run reports every problem at once.

use super::Source;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(super) struct Collect<'a> {
    pub(super) env: &'a dyn Source,
    /// Every problem found so far, each naming its key.
    pub(super) errors: Vec<String>,
}

impl Collect<'_> {
    /// A path: the environment override if set, else the file value; empty means unset.
    pub(super) fn path(&self, env_key: &str, file: Option<PathBuf>) -> Option<PathBuf> {
        self.pick(env_key, file.map(|p| p.display().to_string()))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    }

    /// The environment override if set, else the file value.
    pub(super) fn pick(&self, env_key: &str, file: Option<String>) -> Option<String> {
        self.env.var(env_key).or(file)
    }

    pub(super) fn required(
        &mut self,
        key: &str,
        env_key: &str,
        file: Option<String>,
    ) -> Option<String> {
        let v = self.pick(env_key, file).filter(|v| !v.is_empty());
        if v.is_none() {
            self.errors.push(format!(
                "{key}: required (set it in the file or with {env_key})"
            ));
        }
        v
    }

    pub(super) fn addr(
        &mut self,
        key: &str,
        env_key: &str,
        file: Option<String>,
        default: &str,
    ) -> SocketAddr {
        let raw = self
            .pick(env_key, file)
            .unwrap_or_else(|| default.to_owned());
        raw.parse().unwrap_or_else(|_| {
            self.errors.push(format!(
                "{key}: `{raw}` is not an address like 127.0.0.1:7443"
            ));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        env_key: &str,
        file: Option<String>,
        default: Duration,
    ) -> Duration {
        match self.pick(env_key, file) {
            None => default,
            Some(raw) => {
                match humantime::parse_duration(&raw) {
                    Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => d,
                    _ => {
                        self.errors.push(format!("{key}: `{raw}` is not a duration between 1ms and 1h (for example `10s`)"));
                        default
                    }
                }
            }
        }
    }

    pub(super) fn readable(&mut self, key: &str, path: &Option<PathBuf>) {
        if let Some(p) = path
            && let Err(e) = std::fs::metadata(p)
        {
            self.errors
                .push(format!("{key}: cannot read {}: {e}", p.display()));
        }
    }
}
