//! Generated protobuf types of Dark Store Mesh.
//!
//! - [`dsm::v1`]: the public gateway API (`OrderGateway`) and the order data model.
//! - [`dsm::bench::v1`]: an echo service used only by the benchmark as a transport ceiling.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC server reflection.

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

/// Every message and service of this crate, encoded, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dsm_descriptor");

pub use dsm::v1;
