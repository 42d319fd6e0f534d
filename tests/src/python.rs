//! Python tooling for the tests that drive third-party clients and verifiers: a venv under
//! `target/` with a requirements file installed, shared by concurrent test processes.

use crate::workspace_root;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// A Python 3 interpreter with `tests/python/requirements.txt` installed (a venv under `target/`,
/// created on first use). Fails with a message naming what is missing.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| python_venv("py-venv", "tests/python/requirements.txt"))
        .clone()
}

/// A Python 3 interpreter in `target/<name>` with the requirements file `requirements` (relative
/// to the workspace) installed, rebuilt only when that file changes. Several test processes may
/// ask at once: one installs, the others wait. Panics naming what is missing (python3, venv, PyPI).
pub fn python_venv(name: &str, requirements: &str) -> PathBuf {
    let root = workspace_root();
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let venv = target.join(name);
    let py = venv.join("bin/python");
    let requirements = root.join(requirements);
    let ready = venv.join(".requirements-installed");
    let wanted = std::fs::read_to_string(&requirements)
        .unwrap_or_else(|e| panic!("reading {}: {e}", requirements.display()));
    let installed = || std::fs::read_to_string(&ready).ok().as_deref() == Some(wanted.as_str());
    if installed() {
        return py;
    }
    let lock = target.join(format!("{name}.lock"));
    std::fs::create_dir_all(&target).expect("target dir");
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    while std::fs::create_dir(&lock).is_err() {
        if installed() {
            return py;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {} (remove it if stale)",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = (|| -> anyhow::Result<()> {
        if !py.exists() {
            let s = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .context(
                    "python3 is required for the Python-based tests (apt-get install python3 \
                     python3-venv), or leave them out with NEXTEST_PROFILE=no-python",
                )?;
            anyhow::ensure!(s.success(), "python3 -m venv failed (install python3-venv)");
        }
        let s = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements)
            .status()?;
        anyhow::ensure!(
            s.success(),
            "pip install -r {} failed (PyPI must be reachable)",
            requirements.display()
        );
        std::fs::write(&ready, &wanted)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir(&lock);
    if let Err(e) = result {
        panic!(
            "setting up Python test tooling in {}: {e:#}",
            venv.display()
        );
    }
    py
}
