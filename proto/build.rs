//! Compiles `dsm/**/*.proto` with protox (pure Rust, no `protoc` on the machine) and generates the
//! prost messages and tonic services. The encoded descriptor set of what a node serves (the
//! `dsm.v1` files, not the benchmark's echo service) is kept for server reflection.

use prost::Message as _;
use std::{env, fs, path::PathBuf};

/// What a node serves, and what reflection lists.
const SERVED: &[&str] = &[
    "dsm/v1/order.proto",
    "dsm/v1/gateway.proto",
    "dsm/v1/layout.proto",
    "dsm/v1/peer.proto",
    "dsm/v1/admin.proto",
    "dsm/v1/audit.proto",
];
/// Only for the benchmark's transport ceiling; never served by a node.
const BENCH: &[&str] = &["dsm/bench/v1/echo.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in SERVED.iter().chain(BENCH) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let served = protox::compile(SERVED, ["."])?;
    fs::write(out.join("dsm_descriptor.bin"), served.encode_to_vec())?;
    let fds = protox::compile(SERVED.iter().chain(BENCH), ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
