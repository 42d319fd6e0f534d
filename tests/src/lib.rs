//! Cluster harness for end-to-end tests and benchmarks: real `mesh-node` processes (built from this
//! workspace), real certificates from the mesh PKI, real fjall data directories, real mTLS gRPC.
//!
//! Component map. The items of the private modules are re-exported here, so tests import
//! `mesh_tests::X`; `containers`, `history` and `probe` are used by path (`mesh_tests::probe::call`).
//!
//! | module | owns |
//! |---|---|
//! | `wait` | [`assert_eventually!`], [`within`]: deadlines instead of guesses |
//! | `bins` | the `mesh-node` and `mesh-ctl` binaries under test, and running `mesh-ctl` |
//! | `pki` | a test CA ([`Pki`]), the [`Credentials`] it issues, a [`stolen_transport`] |
//! | `node` | one node process ([`NodeProcess`], [`NodeOptions`]), free ports, the ops port |
//! | `harness` | [`MeshHarness`]: the one interface of the three meshes below; who owns what |
//! | `mesh` | [`TestMesh`]: node processes the harness starts, changed with the real control plane |
//! | `up` | [`UpMesh`]: a mesh started by `mesh-ctl up` |
//! | [`containers`] | `ContainerMesh`: the image's containers on a Docker network, with Docker's faults |
//! | `scenario` | scenario bodies written once against [`MeshHarness`] |
//! | `fixtures` | [`sample_order`] and the requests and create built around it; byte searches of a node's disk |
//! | `audit` | reading the audit trail as an auditor, and keeping the records a test is about |
//! | [`probe`] | calling any gateway method with one set of arguments (role-by-method tests) |
//! | [`history`] | a history checker for the mesh under change (writers, reads, final check) |
//! | `python` | a Python venv with the test requirements, for third-party clients and verifiers |

mod audit;
mod bins;
pub mod containers;
mod fixtures;
mod harness;
pub mod history;
mod mesh;
mod node;
mod pki;
pub mod probe;
mod python;
mod scenario;
mod up;
mod wait;

pub use audit::{audit_query, local_trail, local_trail_where, mesh_query};
pub use bins::{bin_dir, mesh_ctl, mesh_ctl_bin, mesh_node_bin, workspace_root};
pub use fixtures::{
    contact_handle, contains, create_ok, get_order_request, keyed_order, read_tree, sample_order,
};
pub use harness::{
    GatewayClient, MeshHarness, Unsupported, customer_owned_by, customer_placed, layout_in,
    owner_position, principal_homed_on, with_member,
};
pub use mesh::TestMesh;
pub use node::{NodeOptions, NodeProcess, free_port, http_get};
pub use pki::{Credentials, Pki, TRUST_DOMAIN, stolen_transport};
pub use python::{python, python_venv};
pub use scenario::{Written, orders_written_anywhere_are_read_everywhere};
pub use up::UpMesh;
pub use wait::{within, within_after};
