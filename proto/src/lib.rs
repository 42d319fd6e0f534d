//! Generated protobuf types of Dark Store Mesh.
//!
//! - [`dsm::v1`]: the public gateway API (`OrderGateway`) and the order data model.
//! - [`dsm::bench::v1`]: an echo service used only by the benchmark as a transport ceiling.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of what a node serves (`dsm.v1` only), for
//!   gRPC server reflection.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

pub mod dsm {
    pub mod v1 {
        tonic::include_proto!("dsm.v1");
    }
    pub mod bench {
        pub mod v1 {
            tonic::include_proto!("dsm.bench.v1");
        }
    }
}

/// The `dsm.v1` messages and services, encoded, for `tonic-reflection` (the bench echo is left out:
/// no node serves it).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dsm_descriptor");

pub use dsm::v1;
