//! The gateway through a real node process: orders created and read over mTLS gRPC, projections per
//! role, refusals per role, validation that stores nothing, health, reflection and the ops port.

use mesh_node::access::policy::Role;
use mesh_proto::v1::{
    Courier, GetOrderRequest, ListCustomerOrdersRequest, OrderStatus, PaymentStatus,
    UpdateOrderStatusRequest,
};
use mesh_tests::{
    NodeProcess, Pki, create_ok, get_order_request, keyed_order, sample_order, within,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_creates_reads_updates_and_lists_orders() {
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let mut storefront = node.client(&pki.client(Role::Storefront)).await;
        let mut oms = node.client(&pki.client(Role::Oms)).await;

        let req = sample_order("cust-42", 7);
        let created = create_ok(&mut storefront, req.clone()).await;
        assert!(created.order_id.starts_with("o1-"), "{}", created.order_id);
        assert_eq!(created.status, OrderStatus::Placed as i32);
        assert_eq!(created.total_paise, 409_700);
        assert_eq!(created.items.len(), 2);

        // oms reads everything with the buyer masked: contact masked, address reduced.
        let got = oms
            .get_order(GetOrderRequest {
                order_id: created.order_id.clone(),
                purpose: "fulfilment".into(),
                fields: Vec::new(),
            })
            .await
            .expect("get")
            .into_inner()
            .order
            .expect("order");
        let c = got.customer.clone().expect("customer");
        assert_eq!(c.phone, "+91******0007");
        assert_eq!(c.email, "m***@example.in");
        assert_eq!(c.name, "M*** S***");
        let address = c.address.expect("address");
        assert_eq!(address.pincode, "641001");
        assert_eq!(
            address.line1, "",
            "oms sees the address reduced to city, state and pincode"
        );
        assert_eq!(got.customer_id, "cust-42");
        let view = got.view.expect("view");
        assert_eq!(view.role, "oms");
        assert!(view.masked_fields.contains(&"customer.phone".to_owned()));

        // oms moves it along; courier and payment status ride along.
        let shipped = {
            oms.update_order_status(UpdateOrderStatusRequest {
                order_id: created.order_id.clone(),
                status: OrderStatus::Packed as i32,
                ..Default::default()
            })
            .await
            .expect("pack");
            oms.update_order_status(UpdateOrderStatusRequest {
                order_id: created.order_id.clone(),
                status: OrderStatus::Shipped as i32,
                courier: Some(Courier {
                    name: "Delhivery".into(),
                    awb: "DL123456789IN".into(),
                }),
                payment_status: PaymentStatus::Pending as i32,
                purpose: "fulfilment".into(),
            })
            .await
            .expect("ship")
            .into_inner()
            .order
            .expect("order")
        };
        assert_eq!(shipped.status, OrderStatus::Shipped as i32);
        assert_eq!(shipped.courier.expect("courier").awb, "DL123456789IN");

        // Second order, then the list comes back oldest first, projected.
        let second = create_ok(&mut storefront, sample_order("cust-42", 8)).await;
        let mut stream = oms
            .list_customer_orders(ListCustomerOrdersRequest {
                customer_id: "cust-42".into(),
                purpose: String::new(),
            })
            .await
            .expect("list")
            .into_inner();
        let mut ids = Vec::new();
        while let Some(item) = stream.message().await.expect("stream") {
            let o = item.order.expect("order");
            assert!(o.customer.expect("customer").phone.contains("******"));
            ids.push(o.order_id);
        }
        assert_eq!(ids, [created.order_id.clone(), second.order_id]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storefront_sees_status_items_and_totals_but_no_contact() {
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let mut storefront = node.client(&pki.client(Role::Storefront)).await;
        // Another customer's order, read back by the storefront.
        let other = create_ok(&mut storefront, sample_order("cust-other", 99)).await;
        let seen = storefront
            .get_order(get_order_request(&other.order_id))
            .await
            .expect("get")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(seen.status, OrderStatus::Placed as i32);
        assert_eq!(seen.items.len(), 2);
        assert_eq!(seen.total_paise, 409_700);
        let c = seen.customer.expect("customer");
        assert_eq!(c.phone, "+91******0099");
        assert_eq!(c.email, "m***@example.in");
        assert_eq!(c.name, "M*** S***");
        assert_eq!(c.address, None, "storefront sees no address");
        assert!(
            seen.view
                .expect("view")
                .withheld_fields
                .contains(&"customer.address.line1".to_owned())
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_that_may_not_call_a_method_are_refused() {
    within(90, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let mut storefront = node.client(&pki.client(Role::Storefront)).await;
        let order = create_ok(&mut storefront, sample_order("cust-1", 1)).await;
        let get = get_order_request(&order.order_id);

        // Roles with no business reading orders (the full matrix is in tests/access.rs).
        for role in [
            Role::Label,
            Role::Marketing,
            Role::Analyst,
            Role::Admin,
            Role::Auditor,
        ] {
            let mut client = node.client(&pki.client(role)).await;
            let status = client.get_order(get.clone()).await.expect_err("refused");
            assert_eq!(status.code(), Code::PermissionDenied, "{role}: {status:?}");
            assert!(
                status.message().contains(role.as_str()),
                "{role}: {}",
                status.message()
            );
            let status = client
                .create_order(sample_order("cust-1", 2))
                .await
                .expect_err("refused");
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{role} create: {status:?}"
            );
        }
        // Storefront may not update; oms may not create.
        let status = storefront
            .update_order_status(UpdateOrderStatusRequest {
                order_id: order.order_id.clone(),
                status: OrderStatus::Packed as i32,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::PermissionDenied);
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        assert_eq!(
            oms.create_order(sample_order("cust-1", 3))
                .await
                .expect_err("refused")
                .code(),
            Code::PermissionDenied
        );
        // A node certificate is not a client identity.
        let mut as_node = node.client(&pki.node("n2")).await;
        let status = as_node.get_order(get.clone()).await.expect_err("refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

        // None of the refused creates stored anything.
        let mut count = 0;
        let mut stream = oms
            .list_customer_orders(ListCustomerOrdersRequest {
                customer_id: "cust-1".into(),
                purpose: String::new(),
            })
            .await
            .expect("list")
            .into_inner();
        while stream.message().await.expect("stream").is_some() {
            count += 1;
        }
        assert_eq!(count, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_rejects_its_input_and_stores_nothing() {
    within(90, async {
        let pki = Pki::new();
        let mut node = NodeProcess::start(&pki, "n1");
        let mut storefront = node.client(&pki.client(Role::Storefront)).await;
        type Mutation = Box<dyn Fn(&mut mesh_proto::v1::CreateOrderRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("customer_id", Box::new(|r| r.customer_id = String::new())),
            ("customer_id", Box::new(|r| r.customer_id = "x".repeat(65))),
            (
                "customer_id",
                Box::new(|r| r.customer_id = "has spaces".into()),
            ),
            (
                "external_ref",
                Box::new(|r| r.external_ref = "r".repeat(65)),
            ),
            ("channel", Box::new(|r| r.channel = 0)),
            ("channel", Box::new(|r| r.channel = 42)),
            ("customer", Box::new(|r| r.customer = None)),
            (
                "customer.name",
                Box::new(|r| r.customer.as_mut().expect("c").name = String::new()),
            ),
            (
                "customer.name",
                Box::new(|r| r.customer.as_mut().expect("c").name = "n".repeat(101)),
            ),
            (
                "customer.name",
                Box::new(|r| r.customer.as_mut().expect("c").name = "bad\u{7}name".into()),
            ),
            (
                "customer.phone",
                Box::new(|r| r.customer.as_mut().expect("c").phone = "9876543210".into()),
            ),
            (
                "customer.phone",
                Box::new(|r| r.customer.as_mut().expect("c").phone = "+14155550100".into()),
            ),
            (
                "customer.phone",
                Box::new(|r| r.customer.as_mut().expect("c").phone = "+91512345678".into()),
            ),
            (
                "customer.phone",
                Box::new(|r| r.customer.as_mut().expect("c").phone = "+9198765432101".into()),
            ),
            (
                "customer.email",
                Box::new(|r| r.customer.as_mut().expect("c").email = "not-an-email".into()),
            ),
            (
                "customer.email",
                Box::new(|r| r.customer.as_mut().expect("c").email = "a@b".into()),
            ),
            (
                "customer.address",
                Box::new(|r| r.customer.as_mut().expect("c").address = None),
            ),
            (
                "customer.address.line1",
                Box::new(|r| {
                    r.customer
                        .as_mut()
                        .expect("c")
                        .address
                        .as_mut()
                        .expect("a")
                        .line1 = String::new()
                }),
            ),
            (
                "customer.address.line2",
                Box::new(|r| {
                    r.customer
                        .as_mut()
                        .expect("c")
                        .address
                        .as_mut()
                        .expect("a")
                        .line2 = "l".repeat(201)
                }),
            ),
            (
                "customer.address.city",
                Box::new(|r| {
                    r.customer
                        .as_mut()
                        .expect("c")
                        .address
                        .as_mut()
                        .expect("a")
                        .city = String::new()
                }),
            ),
            (
                "customer.address.state",
                Box::new(|r| {
                    r.customer
                        .as_mut()
                        .expect("c")
                        .address
                        .as_mut()
                        .expect("a")
                        .state = "s".repeat(65)
                }),
            ),
            (
                "customer.address.pincode",
                Box::new(|r| {
                    r.customer
                        .as_mut()
                        .expect("c")
                        .address
                        .as_mut()
                        .expect("a")
                        .pincode = "12345".into()
                }),
            ),
            (
                "customer.address.pincode",
                Box::new(|r| {
                    r.customer
                        .as_mut()
                        .expect("c")
                        .address
                        .as_mut()
                        .expect("a")
                        .pincode = "012345".into()
                }),
            ),
            (
                "customer.address.pincode",
                Box::new(|r| {
                    r.customer
                        .as_mut()
                        .expect("c")
                        .address
                        .as_mut()
                        .expect("a")
                        .pincode = "64100A".into()
                }),
            ),
            ("items", Box::new(|r| r.items.clear())),
            (
                "items",
                Box::new(|r| {
                    let item = r.items[0].clone();
                    r.items = vec![item; 101];
                }),
            ),
            ("items[0].sku", Box::new(|r| r.items[0].sku = String::new())),
            (
                "items[1].name",
                Box::new(|r| r.items[1].name = String::new()),
            ),
            ("items[0].quantity", Box::new(|r| r.items[0].quantity = 0)),
            ("items[0].quantity", Box::new(|r| r.items[0].quantity = -3)),
            (
                "items[1].unit_price_paise",
                Box::new(|r| r.items[1].unit_price_paise = -100),
            ),
            (
                "items[1].unit_price_paise",
                Box::new(|r| r.items[1].unit_price_paise = 0),
            ),
            ("total_paise", Box::new(|r| r.total_paise = -409_700)),
            ("payment", Box::new(|r| r.payment = None)),
            (
                "payment.method",
                Box::new(|r| r.payment.as_mut().expect("p").method = 77),
            ),
            (
                "payment.amount_paise",
                Box::new(|r| r.payment.as_mut().expect("p").amount_paise = -1),
            ),
            (
                "payment.amount_paise",
                Box::new(|r| r.payment.as_mut().expect("p").amount_paise = 409_701),
            ),
            (
                "payment.status",
                Box::new(|r| r.payment.as_mut().expect("p").status = 0),
            ),
            (
                "idempotency_key",
                Box::new(|r| r.idempotency_key = "k".repeat(129)),
            ),
        ];
        for (field, mutate) in &cases {
            let mut req = sample_order("cust-v", 1);
            mutate(&mut req);
            let status = storefront.create_order(req).await.expect_err(field);
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert!(
                status.message().contains(&format!("{field}:")),
                "{field} not named in `{}`",
                status.message()
            );
        }
        // Bad ids and statuses on the other methods.
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        let status = oms
            .get_order(get_order_request("12345"))
            .await
            .expect_err("bad id");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("order_id"));
        let status = oms
            .update_order_status(UpdateOrderStatusRequest {
                order_id: "o1-0001-00000000000000000000".into(),
                status: 99,
                ..Default::default()
            })
            .await
            .expect_err("bad status");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("status"));

        // Nothing was stored: not through the API, not on disk.
        let (_, metrics) = node.ops_get("/metrics");
        assert!(metrics.contains("dsm_orders_created_total 0"), "{metrics}");
        node.stop();
        let inv = node.inspect();
        assert_eq!(
            (inv["customers"].as_u64(), inv["orders"].as_u64()),
            (Some(0), Some(0)),
            "{inv}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_not_found_and_idempotent_retries() {
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let mut storefront = node.client(&pki.client(Role::Storefront)).await;
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        let order = create_ok(&mut storefront, sample_order("cust-l", 1)).await;
        let status = oms
            .update_order_status(UpdateOrderStatusRequest {
                order_id: order.order_id.clone(),
                status: OrderStatus::Delivered as i32,
                ..Default::default()
            })
            .await
            .expect_err("illegal transition");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("ORDER_STATUS_PLACED"),
            "{}",
            status.message()
        );

        let status = oms
            .get_order(get_order_request("o1-0001-00000000000000000000"))
            .await
            .expect_err("missing");
        assert_eq!(status.code(), Code::NotFound);

        let req = keyed_order("cust-l", 2, "checkout-7f3a");
        let first = storefront
            .create_order(req.clone())
            .await
            .expect("first")
            .into_inner()
            .order
            .expect("order");
        let retry = storefront
            .create_order(req)
            .await
            .expect("retry")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(
            first.order_id, retry.order_id,
            "a retry with the same key returns the same order"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_ops_port() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let channel = node
            .channel(&pki.client(Role::Admin))
            .await
            .expect("connect");
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "dsm.v1.OrderGateway".into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32);

        let mut reflection = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .expect("reflection")
            .into_inner();
        let Some(resp) = responses.message().await.expect("reflection response") else {
            panic!("no reflection response")
        };
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected {resp:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"dsm.v1.OrderGateway".to_owned()),
            "{names:?}"
        );
        // Reflection lists only what the node serves: no benchmark service, no internal protocol.
        let served = ["dsm.v1.OrderGateway", "dsm.v1.Admin", "dsm.v1.Audit"];
        for name in &names {
            assert!(
                served.contains(&name.as_str()) || name.starts_with("grpc."),
                "reflection lists `{name}`, which this node does not serve: {names:?}"
            );
        }

        assert_eq!(node.ops_get("/healthz").0, 200);
        assert_eq!(node.ops_get("/readyz").0, 200);
        let (code, metrics) = node.ops_get("/metrics");
        assert_eq!(code, 200);
        assert!(metrics.contains("dsm_node_info{"), "{metrics}");
        assert_eq!(node.ops_get("/nope").0, 404);
    })
    .await;
}
