//! Scenario bodies written once against [`MeshHarness`] and run on every harness that can host
//! them: the harness's own processes, `mesh-ctl up`, and containers.

use crate::fixtures::{get_order_request, keyed_order};
use crate::harness::{GatewayClient, MeshHarness, Unsupported};
use mesh_node::access::policy::Role;
use mesh_node::api::gateway::{CREATE_ORDER, GET_ORDER};
use mesh_node::security::proof::Signer;
use std::time::{Duration, Instant};
use tonic::Code;

/// One attempt's deadline: a node that cannot serve must say so well before it.
const ATTEMPT: Duration = Duration::from_secs(8);

/// An acknowledged create: what must be readable afterwards.
#[derive(Debug, Clone)]
pub struct Written {
    pub order_id: String,
    pub customer: String,
    pub external_ref: String,
}

/// Orders created through every gateway, for customers on every node's shard, are read back
/// through every gateway as the orders that were created: routed to their owners, nothing lost,
/// nothing mixed up. Where the harness can kill and restart a node, the last node is then killed
/// (SIGKILL, no drain) and restarted, and every acknowledged order is read back again. Returns
/// what it wrote. `salt` keeps the customers of concurrent scenarios apart.
pub async fn orders_written_anywhere_are_read_everywhere<M: MeshHarness>(
    mesh: &mut M,
    salt: &str,
) -> Vec<Written> {
    let nodes = mesh.node_count();
    let (sf, oms) = (
        mesh.credentials(Role::Storefront),
        mesh.credentials(Role::Oms),
    );
    let (sf_sign, oms_sign) = (sf.signer(), oms.signer());
    let mut written = Vec::new();
    for via in 0..nodes {
        let mut entry = mesh.client(via, &sf).await;
        for owner in 0..nodes {
            let customer = mesh.customer_on(owner, &format!("{salt}-{via}"));
            let n = (via * nodes + owner) as u32;
            let key = format!("{salt}-{n}");
            let mut req = sf_sign.signed(CREATE_ORDER, keyed_order(&customer, n, &key));
            req.set_timeout(ATTEMPT);
            let order = entry
                .create_order(req)
                .await
                .unwrap_or_else(|s| {
                    panic!("create for n{}'s shard via n{}: {s:?}", owner + 1, via + 1)
                })
                .into_inner()
                .order
                .expect("order");
            assert_eq!(
                mesh.owner_of_customer(&customer),
                owner,
                "customer_on and owner_of_customer disagree"
            );
            written.push(Written {
                order_id: order.order_id,
                customer,
                external_ref: format!("SF-{n}"),
            });
        }
    }
    for via in 0..nodes {
        let mut reader = mesh.client(via, &oms).await;
        read_back(&mut reader, &oms_sign, &written, via, Duration::ZERO).await;
    }

    let victim = nodes - 1;
    match mesh.kill(victim).await {
        Ok(()) => {}
        Err(Unsupported(why)) => {
            eprintln!("not restarting a node: {why}");
            return written;
        }
    }
    mesh.restart(victim)
        .await
        .unwrap_or_else(|Unsupported(why)| {
            panic!("killed n{} but cannot restart it: {why}", victim + 1)
        });
    // Peers back off before they dial a restarted node again: give its shard a while to return.
    for via in 0..nodes {
        let mut reader = mesh.client(via, &oms).await;
        read_back(
            &mut reader,
            &oms_sign,
            &written,
            via,
            Duration::from_secs(30),
        )
        .await;
    }
    written
}

/// Reads every order of `written` through `reader` (node `via`'s gateway) and checks it is the
/// order that was created. UNAVAILABLE, and a connection that fails before any node answers, are
/// retried for up to `patience`; anything else is a lost or mixed-up write.
async fn read_back(
    reader: &mut GatewayClient,
    signer: &Signer,
    written: &[Written],
    via: usize,
    patience: Duration,
) {
    for w in written {
        let deadline = Instant::now() + patience;
        let got = loop {
            let mut req = signer.signed(GET_ORDER, get_order_request(&w.order_id));
            req.set_timeout(ATTEMPT);
            match reader.get_order(req).await {
                Ok(r) => break r.into_inner().order.expect("order"),
                Err(s)
                    if (s.code() == Code::Unavailable
                        || std::error::Error::source(&s).is_some())
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => panic!(
                    "acknowledged order {} of customer {} not readable via n{}: {s:?}",
                    w.order_id,
                    w.customer,
                    via + 1
                ),
            }
        };
        assert_eq!(
            (&got.customer_id, &got.external_ref),
            (&w.customer, &w.external_ref),
            "order {} read via n{} is not the order that was created",
            w.order_id,
            via + 1
        );
    }
}
