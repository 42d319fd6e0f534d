//! The one interface the mesh harnesses share, so that a scenario body is written once and runs on
//! processes the harness starts ([`TestMesh`](crate::TestMesh)), on a mesh `mesh-ctl up` starts
//! ([`UpMesh`](crate::UpMesh)) and on containers
//! ([`ContainerMesh`](crate::containers::ContainerMesh)) - as tikv runs one test body against its
//! in-process and real-process clusters. Also who owns what: the node a layout gives a customer,
//! and a customer a given node owns.

use crate::Credentials;
use mesh_node::access::policy::Role;
use mesh_node::cluster::layout::Layout;
use mesh_node::security::pki::CertificateAuthority;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use std::path::Path;

/// A client of one node's order gateway.
pub type GatewayClient = OrderGatewayClient<tonic::transport::Channel>;

/// Why a harness cannot do what a scenario asked (a failure to do what it can is a panic).
#[derive(Debug, Clone, Copy)]
pub struct Unsupported(pub &'static str);

/// What a scenario needs from a running mesh, however it was started. Nodes are numbered `0..`
/// in the mesh's order (`n1` is node 0).
pub trait MeshHarness {
    /// The node ids (`n1`, `n2`, ...), in the mesh's order.
    fn node_ids(&self) -> Vec<String>;

    /// The layout the nodes run: who owns which partition.
    fn layout(&self) -> Layout;

    /// Credentials of a client in `role`, issued by (or, for `mesh-ctl up`, written for) this
    /// mesh. Take them once per role: the harness started by the tests issues a fresh key on every
    /// call, so a signer must come from the same credentials as the connection.
    fn credentials(&self, role: Role) -> Credentials;

    /// A client of node `i`'s gateway holding `credentials`.
    fn client(
        &self,
        i: usize,
        credentials: &Credentials,
    ) -> impl Future<Output = GatewayClient> + Send;

    /// Kills node `i` without a drain (SIGKILL), or says why this harness cannot.
    fn kill(&mut self, i: usize) -> impl Future<Output = Result<(), Unsupported>> + Send;

    /// Starts a killed node `i` again on its data and waits until it is ready, or says why this
    /// harness cannot.
    fn restart(&mut self, i: usize) -> impl Future<Output = Result<(), Unsupported>> + Send;

    /// How many nodes the mesh has.
    fn node_count(&self) -> usize {
        self.node_ids().len()
    }

    /// The index of the node owning `customer_id`.
    fn owner_of_customer(&self, customer_id: &str) -> usize {
        let ids = self.node_ids();
        owner_position(&self.layout(), ids.iter().map(String::as_str), customer_id)
    }

    /// A customer id owned by node `index`.
    fn customer_on(&self, index: usize, salt: &str) -> String {
        let ids = self.node_ids();
        customer_owned_by(&self.layout(), ids.iter().map(String::as_str), index, salt)
    }
}

/// The layout last signed in the mesh directory `dir` (`layout.bin`, as `mesh-ctl` keeps it),
/// verified with the control key under `dir/ca`.
pub fn layout_in(dir: &Path) -> Layout {
    let control = CertificateAuthority::load_control_key(&dir.join("ca")).expect("control key");
    let bytes = std::fs::read(dir.join("layout.bin")).expect("layout.bin");
    let signed: mesh_proto::v1::SignedLayout =
        prost::Message::decode(bytes.as_slice()).expect("signed layout");
    Layout::verify(&signed, &control.public()).expect("verifies")
}

/// The position, among the node ids `ids` (in a mesh's order), of the node `layout` assigns
/// `customer_id` to.
pub fn owner_position<'a>(
    layout: &Layout,
    ids: impl IntoIterator<Item = &'a str>,
    customer_id: &str,
) -> usize {
    let owner = &layout
        .owner_of(mesh_node::domain::ids::partition_of(customer_id))
        .node_id;
    ids.into_iter()
        .position(|id| id == owner)
        .expect("owner is a node")
}

/// `layout` with `node_id` added at a placeholder address: the assignment the control plane will
/// sign when that node joins (placement depends on node ids only), so a test can choose data a
/// change will move before it makes the change.
pub fn with_member(layout: &Layout, node_id: &str) -> Layout {
    let mut members = layout.members.clone();
    members.push(mesh_node::cluster::layout::Member {
        node_id: node_id.to_owned(),
        peer_addr: "127.0.0.1:9".into(),
        gateway_addr: "127.0.0.1:9".into(),
    });
    layout.next(members).expect("the next layout")
}

/// A customer id `<salt>-<n>` whose partition each `(layout, node)` gives to that node: for
/// example a partition that moves n1 -> n3 between two layouts.
pub fn customer_placed(salt: &str, placements: &[(&Layout, &str)]) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|c| {
            let p = mesh_node::domain::ids::partition_of(c);
            placements
                .iter()
                .all(|(l, node)| l.owner_of(p).node_id == *node)
        })
        .expect("a customer placed as asked")
}

/// A client name `<salt>-<n>` of `role` whose certificate identity is homed on `node` in `layout`
/// (its reveal allowance is kept there).
pub fn principal_homed_on(layout: &Layout, role: Role, node: &str, salt: &str) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|name| {
            let principal = format!("spiffe://{}/client/{role}/{name}", crate::TRUST_DOMAIN);
            layout
                .owner_of(mesh_node::domain::ids::partition_of(&principal))
                .node_id
                == node
        })
        .expect("a principal homed there")
}

/// A customer id `<salt>-<n>` that `layout` assigns to the node at position `index` of `ids`.
pub fn customer_owned_by<'a>(
    layout: &Layout,
    ids: impl IntoIterator<Item = &'a str> + Clone,
    index: usize,
    salt: &str,
) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|c| owner_position(layout, ids.clone(), c) == index)
        .expect("some customer")
}
