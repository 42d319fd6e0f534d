//! Durability and encryption at rest through real processes: `kill -9` under concurrent writes
//! loses no acknowledged order and leaves nothing half-written; the data directory holds no PII.

use mesh_node::access::policy::Role;
use mesh_proto::v1::{GetOrderRequest, ListCustomerOrdersRequest};
use mesh_tests::{
    NodeProcess, Pki, contains, create_ok, get_order_request, read_tree, sample_order, within,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_order() {
    within(120, async {
        let pki = Pki::new();
        let mut node = NodeProcess::start(&pki, "n1");
        let storefront = pki.client(Role::Storefront);
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..32u32 {
            let mut client = node.client(&storefront).await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                // (order id, customer, n) of every acknowledged create.
                let mut acked = Vec::new();
                let mut n = w * 10_000;
                while !stop.load(Ordering::Relaxed) {
                    let customer = format!("cust-{w}-{}", n % 3);
                    match client.create_order(sample_order(&customer, n)).await {
                        Ok(resp) => acked.push((
                            resp.into_inner().order.expect("order").order_id,
                            customer,
                            n,
                        )),
                        Err(_) => break, // the node is gone: this request was not acknowledged
                    }
                    n += 1;
                }
                acked
            }));
        }
        // Let writes pile up, then pull the plug mid-flight. Each of the 32 writers has at most one
        // create stored but not yet answered, so 332 stored means at least 300 acknowledged.
        mesh_tests::assert_eventually!(
            std::time::Duration::from_secs(30),
            node.ops_get("/metrics").1.lines().any(|l| l
                .strip_prefix("dsm_orders_created_total ")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|v| v >= 332)),
            "the node never reached 332 created orders"
        );
        node.kill9();
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.expect("writer"));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(acked.len() >= 300, "only {} acknowledged", acked.len());

        node.spawn().expect("restart on the same data");
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        let mut wms = node.client(&pki.client(Role::Wms)).await;
        for (order_id, customer, n) in &acked {
            let got = oms
                .get_order(get_order_request(order_id))
                .await
                .unwrap_or_else(|s| panic!("acknowledged order {order_id} lost: {s:?}"))
                .into_inner()
                .order
                .expect("order");
            assert_eq!(&got.customer_id, customer);
            assert_eq!(got.external_ref, format!("SF-{n}"));
            // oms sees the name masked and the address reduced; the warehouse sees them whole.
            let whole = wms
                .get_order(GetOrderRequest {
                    order_id: order_id.clone(),
                    purpose: String::new(),
                    fields: vec!["customer.name".into(), "customer.address.line1".into()],
                })
                .await
                .expect("wms read")
                .into_inner()
                .order
                .and_then(|o| o.customer)
                .expect("customer");
            assert_eq!(whole.name, format!("Meenakshi Sundaram{n}"));
            assert_eq!(
                whole.address.expect("address").line1,
                format!("{n} Lakshmi Nagar Main Road")
            );
        }
        // Every stored order, acknowledged or not, is whole: all fields of the request it came from.
        let customers: BTreeSet<&String> = acked.iter().map(|(_, c, _)| c).collect();
        let acked_ids: BTreeSet<&String> = acked.iter().map(|(id, ..)| id).collect();
        let mut listed = BTreeMap::new();
        for customer in customers {
            let mut stream = oms
                .list_customer_orders(ListCustomerOrdersRequest {
                    customer_id: customer.clone(),
                    purpose: String::new(),
                })
                .await
                .expect("list")
                .into_inner();
            while let Some(item) = stream.message().await.expect("stream") {
                let o = item.order.expect("order");
                let n: u32 = o
                    .external_ref
                    .trim_start_matches("SF-")
                    .parse()
                    .expect("external ref");
                let expected = sample_order(customer, n);
                assert_eq!(
                    o.items.len(),
                    expected.items.len(),
                    "{} is half-written",
                    o.order_id
                );
                assert_eq!(o.total_paise, expected.total_paise);
                // oms sees the contact masked and the address reduced: what is left of them must
                // still be this order's own.
                let c = o.customer.expect("customer");
                assert_eq!(c.phone, format!("+91******{:04}", n % 10_000));
                assert_eq!(
                    c.address.expect("address").pincode,
                    expected.customer.expect("c").address.expect("a").pincode
                );
                listed.insert(o.order_id, customer.clone());
            }
        }
        for id in &acked_ids {
            assert!(
                listed.contains_key(*id),
                "acknowledged {id} missing from its customer's list"
            );
        }
        node.stop();
        let inv = node.inspect();
        assert_eq!(inv["unreadable"].as_u64(), Some(0), "{inv}");
        assert_eq!(inv["dangling_index"].as_u64(), Some(0), "{inv}");
        assert!(inv["orders"].as_u64().expect("orders") >= acked.len() as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_reveals_no_pii() {
    within(60, async {
        let pki = Pki::new();
        let mut node = NodeProcess::start(&pki, "n1");
        let mut storefront = node.client(&pki.client(Role::Storefront)).await;
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        let mut requests = Vec::new();
        for n in 0..20u32 {
            let customer = format!("zeta-customer-{n}");
            let req = sample_order(&customer, 4_242_000 + n);
            let order = create_ok(&mut storefront, req.clone()).await;
            oms.get_order(get_order_request(&order.order_id))
                .await
                .expect("read");
            requests.push(req);
        }
        node.stop();
        let disk = read_tree(&node.data_dir());
        assert!(disk.len() > 1000, "the store wrote something");
        let log = std::fs::read(node.log_file()).expect("log");
        for req in &requests {
            let c = req.customer.clone().expect("customer");
            let a = c.address.clone().expect("address");
            let needles = [
                req.customer_id.clone(),
                c.name.clone(),
                c.phone.clone(),
                c.phone.trim_start_matches("+91").to_owned(),
                c.email.clone(),
                a.line1.clone(),
            ];
            for needle in &needles {
                assert!(
                    !contains(&disk, needle.as_bytes()),
                    "data directory contains `{needle}`"
                );
                assert!(
                    !contains(&log, needle.as_bytes()),
                    "node log contains `{needle}`"
                );
            }
        }
        let inv = node.inspect();
        assert_eq!(
            (inv["customers"].as_u64(), inv["orders"].as_u64()),
            (Some(20), Some(20)),
            "{inv}"
        );
    })
    .await;
}
