//! Compiles `dsm/**/*.proto` with protox (pure Rust, no `protoc` on the machine) and generates the
//! prost messages and tonic services. The encoded descriptor set is kept for server reflection.

use prost::Message as _;
use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "dsm/v1/order.proto",
    "dsm/v1/gateway.proto",
    "dsm/v1/layout.proto",
    "dsm/v1/peer.proto",
    "dsm/v1/admin.proto",
    "dsm/v1/audit.proto",
    "dsm/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("dsm_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
