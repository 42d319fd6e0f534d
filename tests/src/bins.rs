//! The binaries under test: where the freshly built `mesh-node` and `mesh-ctl` are (built once
//! per test process, in the harness's own profile), and running `mesh-ctl` as an operator would.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Directory holding the freshly built `mesh-node` and `mesh-ctl` binaries. Set `DSM_BIN_DIR` to
/// use prebuilt ones; otherwise they are (re)built once per test process with cargo.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("DSM_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // Same profile as this harness: benchmarks (release) drive release nodes, tests debug ones.
        let release = !cfg!(debug_assertions);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "mesh-node",
            "-p",
            "mesh-ctl",
            "--bins",
        ]);
        if release {
            // Benchmarks measure with switches that shipped builds do not have (audit off).
            cmd.args(["--release", "--features", "mesh-node/bench-switches"]);
        } else {
            // Tests crash nodes at chosen points of a handoff (`DSM_FAULT_POINT`, see `fault`).
            cmd.args(["--features", "mesh-node/fault-injection"]);
        }
        let status = cmd
            .status()
            .expect("running cargo to build mesh-node and mesh-ctl");
        assert!(status.success(), "building mesh-node and mesh-ctl failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map_or_else(|_| workspace_root().join("target"), PathBuf::from);
        target.join(if release { "release" } else { "debug" })
    })
}

pub fn mesh_node_bin() -> PathBuf {
    bin_dir().join("mesh-node")
}

pub fn mesh_ctl_bin() -> PathBuf {
    bin_dir().join("mesh-ctl")
}

/// Runs `mesh-ctl` with `args`; its stdout on success, else an error with its stderr.
pub async fn mesh_ctl(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(mesh_ctl_bin())
        .args(args)
        .output()
        .await
        .context("running mesh-ctl")?;
    if !out.status.success() {
        bail!(
            "mesh-ctl {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
