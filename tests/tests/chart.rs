//! The Helm chart in `charts/mesh`, validated offline by `tests/chart/validate.py`: rendered and
//! linted with helm-python-sdk (Helm's Go SDK as a library, so no `helm` binary), every manifest
//! checked with `kubernetes-validate --strict`, scanned with checkov (and the Dockerfile, once it
//! exists), and values typos shown to be refused naming the key.
//!
//! The Python tooling (`tests/python/requirements-chart.txt`, checkov and friends) lives in its own
//! venv, `target/py-chart-venv`, apart from the grpcio one the client test uses. Needs python3 with
//! venv and PyPI on first use; `DSM_SKIP_PYTHON=1` opts out explicitly, as for the other Python test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A Python interpreter with `tests/python/requirements-chart.txt` installed, in a venv under
/// `target/` that is rebuilt only when the requirements change. Panics naming what is missing.
fn chart_python() -> PathBuf {
    let root = workspace_root();
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let venv = target.join("py-chart-venv");
    let py = venv.join("bin/python");
    let requirements = root.join("tests/python/requirements-chart.txt");
    let ready = venv.join(".requirements-installed");
    let wanted = std::fs::read_to_string(&requirements)
        .unwrap_or_else(|e| panic!("reading {}: {e}", requirements.display()));
    let installed = || std::fs::read_to_string(&ready).ok().as_deref() == Some(wanted.as_str());
    if installed() {
        return py;
    }

    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 --version failed ({}): the chart validation needs Python 3 \
             (apt-get install python3 python3-venv)",
            out.status
        ),
        Err(e) => panic!(
            "python3 is required for the chart validation (tests/chart/validate.py) and could not \
             be run: {e}. Install it (apt-get install python3 python3-venv), or set \
             DSM_SKIP_PYTHON=1 to skip the Python tests on purpose."
        ),
    }

    // Another test process may be installing the same venv: one does it, the others wait.
    std::fs::create_dir_all(&target).expect("creating the target directory");
    let lock = target.join("py-chart-venv.lock");
    let deadline = Instant::now() + Duration::from_secs(900);
    while std::fs::create_dir(&lock).is_err() {
        if installed() {
            return py;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {} (remove it if stale)",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let result = (|| -> Result<(), String> {
        if !py.exists() {
            let s = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .map_err(|e| format!("running python3 -m venv: {e}"))?;
            if !s.success() {
                return Err(format!(
                    "python3 -m venv {} failed (install python3-venv)",
                    venv.display()
                ));
            }
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
            .status()
            .map_err(|e| format!("running pip: {e}"))?;
        if !s.success() {
            return Err(
                "pip install -r tests/python/requirements-chart.txt failed (PyPI must be reachable)"
                    .into(),
            );
        }
        std::fs::write(&ready, &wanted).map_err(|e| format!("writing {}: {e}", ready.display()))
    })();
    let _ = std::fs::remove_dir(&lock);
    if let Err(e) = result {
        panic!("setting up the chart validation tooling: {e}");
    }
    py
}

#[test]
fn helm_chart_renders_lints_and_passes_schema_and_security_checks_offline() {
    if std::env::var("DSM_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("DSM_SKIP_PYTHON=1: skipping the chart validation by request");
        return;
    }
    let py = chart_python();
    let root = workspace_root();
    let script = root.join("tests/chart/validate.py");
    let out = Command::new(&py)
        .arg(&script)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("running {} {}: {e}", py.display(), script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/chart/validate.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("chart validation ok"),
        "tests/chart/validate.py exited 0 without its closing line:\n{stdout}\n{stderr}"
    );
}
