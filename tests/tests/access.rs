//! Zero-trust access through real processes: every role x every method x every field checked
//! against an expectation table written here by hand from DESIGN.md section 5 (so a mistake in the
//! node's table is caught, not copied); IMS never receives a buyer field through any gateway;
//! reveals need a reason, are limited and audited; the delivery journey closes every time-bound
//! view and contact handle after delivery plus grace; purposes are enforced.

use mesh_node::access::policy::{Method, Role};
use mesh_node::security::proof::Signer;
use mesh_proto::v1::{
    Courier, CreateOrderRequest, GetOrderRequest, GetShippingLabelRequest, Order, OrderStatus,
    PaymentStatus, ResolveContactHandleRequest, RevealFieldRequest, UpdateOrderStatusRequest,
};
use mesh_tests::probe::{self, Answer, Target};
use mesh_tests::{
    MeshHarness as _, NodeProcess, Pki, TestMesh, contact_handle, contains, create_ok, local_trail,
    local_trail_where, mesh_ctl_bin, read_tree, sample_order, within,
};
use prost::Message as _;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

/// The columns of the expectation table, in this order.
const FIELDS: [&str; 23] = [
    "customer_id",
    "external_ref",
    "channel",
    "customer.name",
    "customer.phone",
    "customer.email",
    "customer.address.line1",
    "customer.address.line2",
    "customer.address.city",
    "customer.address.state",
    "customer.address.pincode",
    "customer.contact_handle",
    "items.sku",
    "items.name",
    "items.quantity",
    "items.unit_price_paise",
    "total_paise",
    "payment.method",
    "payment.amount_paise",
    "payment.status",
    "status",
    "courier",
    "consent",
];

/// One role as ARCHITECTURE.md, "Roles and projections", describes it.
struct Expect {
    role: &'static str,
    /// C create, G get, U update status, L list, S shipping label, R reveal, H resolve handle.
    methods: &'static str,
    /// Per column of `FIELDS`: F full, M masked, 1 first name only, . withheld.
    cells: &'static str,
    reveal: &'static [&'static str],
    statuses: &'static [&'static str],
    /// The other fields the role may set with a status update, and when.
    writes: &'static [(&'static str, &'static str)],
    window: &'static str,
}

const CONTACT: &[&str] = &[
    "customer.name",
    "customer.phone",
    "customer.email",
    "customer.address.line1",
    "customer.address.line2",
];
const NOTHING: &str = ".......................";

const EXPECTED: [Expect; 12] = [
    Expect {
        role: "storefront",
        methods: "CGL",
        cells: "FFFMMM......FFFFFFFFFF.",
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: "always",
    },
    Expect {
        role: "oms",
        methods: "GULR",
        cells: "FFFMMM..FFF.FFFFFFFFFFF",
        reveal: CONTACT,
        statuses: &[
            "ORDER_STATUS_PACKED",
            "ORDER_STATUS_SHIPPED",
            "ORDER_STATUS_OUT_FOR_DELIVERY",
            "ORDER_STATUS_DELIVERED",
            "ORDER_STATUS_DELIVERY_FAILED",
            "ORDER_STATUS_RTO",
            "ORDER_STATUS_CANCELLED",
        ],
        writes: &[("payment.status", "always"), ("courier", "always")],
        window: "always",
    },
    Expect {
        role: "ims",
        methods: "G",
        cells: "............F.F.....F..",
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: "always",
    },
    Expect {
        role: "wms",
        methods: "GU",
        cells: "...FM.FFFFF.FFF.....FF.",
        reveal: &[],
        statuses: &["ORDER_STATUS_PACKED", "ORDER_STATUS_SHIPPED"],
        writes: &[("courier", "while unset")],
        window: "until closed + grace",
    },
    Expect {
        role: "label",
        methods: "S",
        cells: "...F..FFFFFF.....FFFFF.",
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: "until closed + grace",
    },
    Expect {
        role: "courier",
        methods: "GU",
        cells: "...F..FFFFFF.....FFFFF.",
        reveal: &[],
        statuses: &[
            "ORDER_STATUS_OUT_FOR_DELIVERY",
            "ORDER_STATUS_DELIVERED",
            "ORDER_STATUS_DELIVERY_FAILED",
        ],
        writes: &[],
        window: "in transit until closed + grace",
    },
    Expect {
        role: "comms",
        methods: "GH",
        cells: "...1F...............FF.",
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: "until closed + grace",
    },
    Expect {
        role: "support",
        methods: "GULR",
        cells: "FFFMMM..FFFFFFFFFFFFFF.",
        reveal: CONTACT,
        statuses: &["ORDER_STATUS_OUT_FOR_DELIVERY", "ORDER_STATUS_RTO"],
        writes: &[],
        window: "always",
    },
    Expect {
        role: "marketing",
        methods: "",
        cells: NOTHING,
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: "always",
    },
    Expect {
        role: "analyst",
        methods: "",
        cells: NOTHING,
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: "always",
    },
    Expect {
        role: "admin",
        methods: "",
        cells: NOTHING,
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: "always",
    },
    Expect {
        role: "auditor",
        methods: "",
        cells: NOTHING,
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: "always",
    },
];

fn letter(m: Method) -> char {
    match m {
        Method::CreateOrder => 'C',
        Method::GetOrder => 'G',
        Method::UpdateOrderStatus => 'U',
        Method::ListCustomerOrders => 'L',
        Method::GetShippingLabel => 'S',
        Method::RevealField => 'R',
        Method::ResolveContactHandle => 'H',
    }
}

fn expected(role: Role) -> &'static Expect {
    EXPECTED
        .iter()
        .find(|e| e.role == role.as_str())
        .unwrap_or_else(|| panic!("the expectation table has no row for {role}"))
}

/// A field of an order as a string, or `None` when it is empty (how a withheld field looks).
fn value(o: &Order, path: &str) -> Option<String> {
    let c = o.customer.clone().unwrap_or_default();
    let a = c.address.clone().unwrap_or_default();
    let p = o.payment.unwrap_or_default();
    let items = |f: &dyn Fn(&mesh_proto::v1::LineItem) -> String, empty: &str| {
        let all: Vec<String> = o.items.iter().map(f).collect();
        (!all.iter().all(|v| v == empty)).then(|| all.join(","))
    };
    let num = |n: i64| (n != 0).then(|| n.to_string());
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    match path {
        "customer_id" => text(&o.customer_id),
        "external_ref" => text(&o.external_ref),
        "channel" => num(i64::from(o.channel)),
        "customer.name" => text(&c.name),
        "customer.phone" => text(&c.phone),
        "customer.email" => text(&c.email),
        "customer.address.line1" => text(&a.line1),
        "customer.address.line2" => text(&a.line2),
        "customer.address.city" => text(&a.city),
        "customer.address.state" => text(&a.state),
        "customer.address.pincode" => text(&a.pincode),
        "customer.contact_handle" => text(&c.contact_handle),
        "items.sku" => items(&|i| i.sku.clone(), ""),
        "items.name" => items(&|i| i.name.clone(), ""),
        "items.quantity" => items(&|i| i.quantity.to_string(), "0"),
        "items.unit_price_paise" => items(&|i| i.unit_price_paise.to_string(), "0"),
        "total_paise" => num(o.total_paise),
        "payment.method" => num(i64::from(p.method)),
        "payment.amount_paise" => num(p.amount_paise),
        "payment.status" => num(i64::from(p.status)),
        "status" => num(i64::from(o.status)),
        "courier" => o.courier.as_ref().map(|c| format!("{}/{}", c.name, c.awb)),
        "consent" => o.consent.map(|c| c.marketing.to_string()),
        other => panic!("no column {other}"),
    }
}

/// The masks of DESIGN.md section 5, written independently of the node's `mask` module.
fn masked(path: &str, full: &str) -> String {
    match path {
        "customer.name" => full
            .split(' ')
            .map(|w| format!("{}***", &w[..1]))
            .collect::<Vec<_>>()
            .join(" "),
        "customer.phone" => format!("+91******{}", &full[full.len() - 4..]),
        "customer.email" => {
            let (local, domain) = full.split_once('@').expect("email");
            format!("{}***@{domain}", &local[..1])
        }
        other => panic!("{other} has no mask"),
    }
}

/// Every field of `o` as the expectation row says `role` must see it.
fn check_cells(role: Role, o: &Order, truth: &BTreeMap<&str, String>) {
    let cells = expected(role).cells.as_bytes();
    let view = o.view.clone().expect("every answer carries its view");
    assert_eq!(view.role, role.as_str());
    for (i, path) in FIELDS.iter().enumerate() {
        let got = value(o, path);
        let full = &truth[path];
        let listed = |list: &[String]| list.iter().any(|p| p == path);
        match cells[i] {
            b'F' => assert_eq!(
                got.as_deref(),
                (!full.is_empty()).then_some(full.as_str()),
                "{role} {path}"
            ),
            b'M' => {
                assert_eq!(got, Some(masked(path, full)), "{role} {path}");
                assert!(
                    listed(&view.masked_fields),
                    "{role} {path} not listed masked"
                );
            }
            b'1' => {
                let first = full.split(' ').next().expect("a word").to_owned();
                assert_eq!(got, Some(first), "{role} {path}");
                assert!(
                    listed(&view.masked_fields),
                    "{role} {path} not listed masked"
                );
            }
            _ => {
                assert_eq!(got, None, "{role} must not see {path}");
                assert!(
                    listed(&view.withheld_fields),
                    "{role} {path} not listed withheld"
                );
            }
        }
    }
}

/// What a full view of an order created from `req` holds, once shipped with `courier`.
fn truth_of(
    req: &CreateOrderRequest,
    handle: &str,
    status: OrderStatus,
    courier: Option<&Courier>,
) -> BTreeMap<&'static str, String> {
    let c = req.customer.clone().expect("customer");
    let a = c.address.clone().expect("address");
    let p = req.payment.expect("payment");
    let join = |f: &dyn Fn(&mesh_proto::v1::LineItem) -> String| {
        req.items.iter().map(f).collect::<Vec<_>>().join(",")
    };
    let values = [
        req.customer_id.clone(),
        req.external_ref.clone(),
        req.channel.to_string(),
        c.name,
        c.phone,
        c.email,
        a.line1,
        a.line2,
        a.city,
        a.state,
        a.pincode,
        handle.to_owned(),
        join(&|i| i.sku.clone()),
        join(&|i| i.name.clone()),
        join(&|i| i.quantity.to_string()),
        join(&|i| i.unit_price_paise.to_string()),
        req.total_paise.to_string(),
        p.method.to_string(),
        p.amount_paise.to_string(),
        p.status.to_string(),
        (status as i32).to_string(),
        courier.map_or_else(String::new, |c| format!("{}/{}", c.name, c.awb)),
        "false".to_owned(),
    ];
    FIELDS.into_iter().zip(values).collect()
}

#[test]
fn mesh_ctl_access_show_prints_exactly_the_expected_table() {
    let out = std::process::Command::new(mesh_ctl_bin())
        .args(["-o", "json", "access", "show"])
        .output()
        .expect("run mesh-ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let fields: Vec<&str> = table["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f.as_str().expect("path"))
        .collect();
    assert_eq!(
        fields, FIELDS,
        "the node's field list changed: extend the table"
    );
    let roles = table["roles"].as_array().expect("roles");
    assert_eq!(roles.len(), EXPECTED.len());
    for row in roles {
        let name = row["role"].as_str().expect("role");
        let e = expected(name.parse::<Role>().expect("a known role"));
        assert_eq!(e.cells.len(), FIELDS.len(), "expectation row {name}");
        let methods: String = row["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .map(|m| {
                letter(
                    Method::ALL
                        .into_iter()
                        .find(|x| x.as_str() == m.as_str().expect("name"))
                        .expect("a known method"),
                )
            })
            .collect();
        assert_eq!(methods, e.methods, "{name} methods");
        let cells: String = FIELDS
            .iter()
            .map(|f| match row["fields"][f].as_str().expect("visibility") {
                "full" => 'F',
                "masked" => 'M',
                "first-name" => '1',
                "withheld" => '.',
                other => panic!("{name} {f}: unknown visibility {other}"),
            })
            .collect();
        assert_eq!(cells, e.cells, "{name} fields (columns as in FIELDS)");
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .expect("list")
                .iter()
                .map(|s| s.as_str().expect("string").to_owned())
                .collect()
        };
        assert_eq!(strings(&row["reveal"]), e.reveal, "{name} reveal");
        assert_eq!(strings(&row["statuses"]), e.statuses, "{name} statuses");
        let writes: Vec<(String, String)> = row["writes"]
            .as_array()
            .expect("writes")
            .iter()
            .map(|w| {
                (
                    w["field"].as_str().expect("field").to_owned(),
                    w["when"].as_str().expect("when").to_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = e
            .writes
            .iter()
            .map(|(f, w)| ((*f).to_owned(), (*w).to_owned()))
            .collect();
        assert_eq!(writes, want, "{name} writes");
        assert_eq!(row["window"], e.window, "{name} window");
    }
    // With a node's config, the node's own `[access]` settings are shown beside the table.
    let pki = Pki::new();
    let node = NodeProcess::start(&pki, "n1");
    let mut config = std::fs::read_to_string(&node.config).expect("config");
    config.push_str("[access]\nreveal_limit = 7\nrequire_purpose = [\"support\"]\n");
    let custom = node.dir.join("custom.toml");
    std::fs::write(&custom, config).expect("write");
    let out = std::process::Command::new(mesh_ctl_bin())
        .args(["-o", "json", "access", "show", "--config"])
        .arg(&custom)
        .output()
        .expect("run mesh-ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["reveal_limit"], 7);
    let required: Vec<&str> = shown["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .filter(|r| r["purpose_required"] == true)
        .map(|r| r["role"].as_str().expect("role"))
        .collect();
    assert_eq!(required, ["support"]);

    // The table form is for people: one line per field, one column per role.
    let out = std::process::Command::new(mesh_ctl_bin())
        .args(["access", "show"])
        .output()
        .expect("run mesh-ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("customer.phone") && l.split_whitespace().count() == 13),
        "{text}"
    );
}

/// A shipped order (so the courier's window is open), with its full view.
struct Shipped {
    req: CreateOrderRequest,
    order_id: String,
    handle: String,
    courier: Courier,
}

async fn shipped_order(node: &NodeProcess, pki: &Pki, customer: &str, n: u32) -> Shipped {
    let req = sample_order(customer, n);
    let mut sf = node.client(&pki.client(Role::Storefront)).await;
    let order_id = create_ok(&mut sf, req.clone()).await.order_id;
    let courier = Courier {
        name: "Delhivery".into(),
        awb: format!("DL{n:09}IN"),
    };
    let mut oms = node.client(&pki.client(Role::Oms)).await;
    for (status, courier) in [
        (OrderStatus::Packed, None),
        (OrderStatus::Shipped, Some(courier.clone())),
    ] {
        oms.update_order_status(UpdateOrderStatusRequest {
            order_id: order_id.clone(),
            status: status as i32,
            courier,
            ..Default::default()
        })
        .await
        .expect("oms moves the order along");
    }
    let handle = contact_handle(node, pki, &order_id).await;
    assert!(handle.starts_with("ch1-"), "{handle}");
    Shipped {
        req,
        order_id,
        handle,
        courier,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_sees_exactly_its_cells_through_every_method() {
    within(120, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let order = shipped_order(&node, &pki, "cells-cust", 4321).await;
        // Out for delivery: inside the courier's window, and a status oms, courier and support
        // may all set again (an idempotent retry), so their UpdateOrderStatus answers are checked
        // cell by cell too.
        node.client(&pki.client(Role::Courier))
            .await
            .update_order_status(UpdateOrderStatusRequest {
                order_id: order.order_id.clone(),
                status: OrderStatus::OutForDelivery as i32,
                ..Default::default()
            })
            .await
            .expect("out for delivery");
        let truth = truth_of(
            &order.req,
            &order.handle,
            OrderStatus::OutForDelivery,
            Some(&order.courier),
        );
        let target = Target {
            order_id: order.order_id.clone(),
            customer_id: order.req.customer_id.clone(),
            handle: order.handle.clone(),
            purpose: "ndr-callback".into(),
            status: OrderStatus::OutForDelivery,
            reveal: "customer.phone".into(),
            new_customer: "cells-new".into(),
        };
        let phone = truth["customer.phone"].clone();
        for role in Role::ALL {
            let e = expected(role);
            let mut client = node.client(&pki.client(role)).await;
            for method in Method::ALL {
                let may = e.methods.contains(letter(method))
                    && (method != Method::UpdateOrderStatus
                        || e.statuses.contains(&"ORDER_STATUS_OUT_FOR_DELIVERY"));
                let answer = probe::call(&mut client, None, method, &target).await;
                let answer = match (may, answer) {
                    (true, Ok(a)) => a,
                    (false, Err(s)) => {
                        assert_eq!(s.code(), Code::PermissionDenied, "{role} {method}: {s:?}");
                        continue;
                    }
                    (true, Err(s)) => panic!("{role} may call {method} but was refused: {s:?}"),
                    (false, Ok(a)) => panic!("{role} may not call {method} but got {a:?}"),
                };
                match (method, answer) {
                    (Method::CreateOrder, Answer::Orders(orders)) => {
                        let new = sample_order(&target.new_customer, 901);
                        let mut truth = truth_of(&new, "", OrderStatus::Placed, None);
                        let created = &orders[0];
                        if let Some(h) = value(created, "customer.contact_handle") {
                            truth.insert("customer.contact_handle", h);
                        }
                        check_cells(role, created, &truth);
                    }
                    (
                        Method::GetOrder | Method::ListCustomerOrders | Method::UpdateOrderStatus,
                        Answer::Orders(orders),
                    ) => {
                        assert_eq!(orders.len(), 1, "{role} {method}");
                        check_cells(role, &orders[0], &truth);
                    }
                    (Method::GetShippingLabel, Answer::Label(label)) => {
                        let a = label.address.expect("address");
                        assert_eq!(label.name, truth["customer.name"]);
                        assert_eq!(a.line1, truth["customer.address.line1"]);
                        assert_eq!(a.pincode, truth["customer.address.pincode"]);
                        assert_eq!(label.contact_handle, order.handle);
                        assert_eq!(label.cod_amount_paise, order.req.total_paise);
                        assert_eq!(label.courier.expect("courier").awb, order.courier.awb);
                        let view = label.view.expect("view");
                        for absent in ["customer.phone", "customer.email", "items.unit_price_paise"]
                        {
                            assert!(
                                view.withheld_fields.iter().any(|f| f == absent),
                                "a label never carries {absent}"
                            );
                        }
                    }
                    (Method::RevealField, Answer::Revealed(r)) => {
                        assert_eq!(
                            (r.field.as_str(), r.value.as_str()),
                            ("customer.phone", phone.as_str())
                        );
                        // Every field: exactly the revealable ones, each with its stored value.
                        for path in FIELDS {
                            let t = Target {
                                reveal: path.into(),
                                ..target.clone()
                            };
                            let r = probe::call(&mut client, None, method, &t).await;
                            if e.reveal.contains(&path) {
                                match r.expect("revealable") {
                                    Answer::Revealed(r) => assert_eq!(r.value, truth[path]),
                                    other => panic!("{other:?}"),
                                }
                            } else {
                                let s = r.expect_err("not revealable");
                                assert_eq!(s.code(), Code::PermissionDenied, "{role} {path}");
                            }
                        }
                    }
                    (Method::ResolveContactHandle, Answer::Resolved(r)) => {
                        assert_eq!(r.phone, phone, "comms bridges calls to the real number");
                        assert!(r.valid_until.is_none(), "the order is still open");
                    }
                    (m, a) => panic!("{m} answered {a:?}"),
                }
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_set_only_its_statuses() {
    within(90, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let mut sf = node.client(&pki.client(Role::Storefront)).await;
        let order_id = create_ok(&mut sf, sample_order("status-cust", 5))
            .await
            .order_id;
        // Cancelled is terminal: a role allowed a status is stopped by the lifecycle
        // (FAILED_PRECONDITION), a role not allowed it by the role table (PERMISSION_DENIED).
        // Cancelling again is an idempotent retry, and does not restart the grace period.
        let cancel = UpdateOrderStatusRequest {
            order_id: order_id.clone(),
            status: OrderStatus::Cancelled as i32,
            ..Default::default()
        };
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        let closed = oms
            .update_order_status(cancel.clone())
            .await
            .expect("cancel")
            .into_inner()
            .order
            .expect("order")
            .closed_at
            .expect("a cancelled order is closed");
        let statuses = [
            OrderStatus::Packed,
            OrderStatus::Shipped,
            OrderStatus::OutForDelivery,
            OrderStatus::Delivered,
            OrderStatus::DeliveryFailed,
            OrderStatus::Rto,
            OrderStatus::Cancelled,
        ];
        for role in Role::ALL {
            let e = expected(role);
            let mut client = node.client(&pki.client(role)).await;
            for status in statuses {
                let result = client
                    .update_order_status(UpdateOrderStatusRequest {
                        order_id: order_id.clone(),
                        status: status as i32,
                        purpose: "ndr-callback".into(),
                        ..Default::default()
                    })
                    .await;
                let allowed = e.methods.contains('U') && e.statuses.contains(&status.as_str_name());
                let want = match (allowed, status) {
                    (true, OrderStatus::Cancelled) => Code::Ok,
                    (true, _) => Code::FailedPrecondition,
                    (false, _) => Code::PermissionDenied,
                };
                let got = result
                    .as_ref()
                    .map_or_else(tonic::Status::code, |_| Code::Ok);
                assert_eq!(got, want, "{role} -> {}: {result:?}", status.as_str_name());
            }
        }
        let again = oms
            .update_order_status(cancel)
            .await
            .expect("retry")
            .into_inner()
            .order
            .expect("order")
            .closed_at;
        assert_eq!(again, Some(closed), "a retry must not move closed_at");
    })
    .await;
}

/// The fields a status update carries besides the status (payment status, courier) are the role
/// table's `writes` column, cell by cell: a role may set a field only where its row says, whatever
/// the status, and nothing changes when it is refused. Before this column existed any role
/// allowed to update could rewrite them, on closed orders too (a courier marking a delivered COD
/// order refunded, the WMS replacing an assigned AWB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_set_only_its_fields() {
    within(120, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let mut sf = node.client(&pki.client(Role::Storefront)).await;
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        let awb = |n: u32| Courier {
            name: "Delhivery".into(),
            awb: format!("DL{n:09}IN"),
        };
        let mut n = 0;
        for role in Role::ALL {
            let e = expected(role);
            if !e.methods.contains('U') {
                continue;
            }
            // A status the role may set again, so the status itself is allowed (an idempotent
            // re-set passes the lifecycle): only the field decides.
            let at = PATH
                .into_iter()
                .find(|s| e.statuses.contains(&s.as_str_name()))
                .expect("a role that updates may set a status on the path");
            let mut client = node.client(&pki.client(role)).await;
            for field in ["payment.status", "courier"] {
                let id = {
                    n += 1;
                    order_at(&mut sf, &mut oms, n, at).await
                };
                let before = get(&mut oms, &id).await;
                let mut req = UpdateOrderStatusRequest {
                    order_id: id.clone(),
                    status: at as i32,
                    purpose: "ndr-callback".into(),
                    ..Default::default()
                };
                match field {
                    "payment.status" => req.payment_status = PaymentStatus::Refunded as i32,
                    _ => req.courier = Some(awb(7)),
                }
                let result = client.update_order_status(req).await;
                let after = get(&mut oms, &id).await;
                if e.writes.iter().any(|(f, _)| *f == field) {
                    result.unwrap_or_else(|s| panic!("{role} may set {field}: {s:?}"));
                    assert_ne!(after, before, "{role} set {field} but nothing changed");
                } else {
                    let status = result.expect_err("refused");
                    assert_eq!(
                        status.code(),
                        Code::PermissionDenied,
                        "{role} {field}: {status:?}"
                    );
                    assert!(status.message().contains(field), "{}", status.message());
                    assert_eq!(
                        after, before,
                        "{role} was refused {field} but the order changed"
                    );
                }
            }
        }
        // Assign once: the WMS assigns a courier while none is, may repeat the same one, and may
        // not replace it; the OMS may.
        let mut wms = node.client(&pki.client(Role::Wms)).await;
        let id = {
            n += 1;
            order_at(&mut sf, &mut oms, n, OrderStatus::Packed).await
        };
        let packed = |courier: Courier| UpdateOrderStatusRequest {
            order_id: id.clone(),
            status: OrderStatus::Packed as i32,
            courier: Some(courier),
            ..Default::default()
        };
        wms.update_order_status(packed(awb(1)))
            .await
            .expect("assign");
        wms.update_order_status(packed(awb(1)))
            .await
            .expect("the same again");
        let replaced = wms.update_order_status(packed(awb(2))).await;
        assert_eq!(
            replaced.expect_err("replacing").code(),
            Code::FailedPrecondition
        );
        assert_eq!(get(&mut oms, &id).await.courier, Some(awb(1)));
        oms.update_order_status(packed(awb(2)))
            .await
            .expect("the OMS reassigns");
        assert_eq!(get(&mut oms, &id).await.courier, Some(awb(2)));
        // The attack the issue names: a courier marking a delivered order refunded.
        let mut courier = node.client(&pki.client(Role::Courier)).await;
        let id = {
            n += 1;
            order_at(&mut sf, &mut oms, n, OrderStatus::Delivered).await
        };
        let before = get(&mut oms, &id).await;
        let refund = courier
            .update_order_status(UpdateOrderStatusRequest {
                order_id: id.clone(),
                status: OrderStatus::Delivered as i32,
                payment_status: PaymentStatus::Refunded as i32,
                ..Default::default()
            })
            .await;
        assert_eq!(refund.expect_err("refused").code(), Code::PermissionDenied);
        assert_eq!(get(&mut oms, &id).await, before);
    })
    .await;
}

/// The statuses the OMS moves an order through on its way to delivery.
const PATH: [OrderStatus; 4] = [
    OrderStatus::Packed,
    OrderStatus::Shipped,
    OrderStatus::OutForDelivery,
    OrderStatus::Delivered,
];

/// A new order (number `n`) moved by the OMS along [`PATH`] to `at`, no courier assigned.
async fn order_at(
    sf: &mut mesh_tests::GatewayClient,
    oms: &mut mesh_tests::GatewayClient,
    n: u32,
    at: OrderStatus,
) -> String {
    let id = create_ok(sf, sample_order(&format!("writes-{n}"), n))
        .await
        .order_id;
    for status in PATH.iter().take_while(|s| **s != at).chain([&at]) {
        oms.update_order_status(UpdateOrderStatusRequest {
            order_id: id.clone(),
            status: *status as i32,
            ..Default::default()
        })
        .await
        .expect("the OMS moves the order along");
    }
    id
}

/// An order as the OMS reads it.
async fn get(oms: &mut mesh_tests::GatewayClient, id: &str) -> Order {
    oms.get_order(GetOrderRequest {
        order_id: id.to_owned(),
        purpose: String::new(),
        fields: Vec::new(),
    })
    .await
    .expect("the OMS reads the order")
    .into_inner()
    .order
    .expect("order")
}

/// Every PII string of `req` and the handle, for byte searches.
fn pii_of(req: &CreateOrderRequest, handle: &str) -> Vec<String> {
    let c = req.customer.clone().expect("customer");
    let a = c.address.clone().expect("address");
    vec![
        req.customer_id.clone(),
        c.name.clone(),
        c.name.split(' ').next().expect("word").to_owned(),
        c.phone.clone(),
        c.phone.trim_start_matches("+91").to_owned(),
        c.email.clone(),
        a.line1,
        a.line2,
        handle.to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ims_never_receives_a_buyer_field_through_any_gateway() {
    within(120, async {
        let mesh = TestMesh::start(3);
        let ims = mesh.pki.client(Role::Ims);
        let signer = Signer::from_pem_file(&ims.key).expect("signer");
        let mut orders = Vec::new();
        for (i, node) in mesh.nodes.iter().enumerate() {
            let customer = mesh.customer_on(i, "ims-cust");
            let order = shipped_order(node, &mesh.pki, &customer, 7000 + i as u32).await;
            orders.push(order);
        }
        let buyer_paths: Vec<&str> = FIELDS[..12].to_vec();
        for node in &mesh.nodes {
            let mut client = node.client(&ims).await;
            for order in &orders {
                let pii = pii_of(&order.req, &order.handle);
                let clean = |what: &str, bytes: &[u8]| {
                    for needle in &pii {
                        assert!(
                            !contains(bytes, needle.as_bytes()),
                            "ims got `{needle}` via {} in {what}",
                            node.id
                        );
                    }
                };
                let target = Target {
                    order_id: order.order_id.clone(),
                    customer_id: order.req.customer_id.clone(),
                    handle: order.handle.clone(),
                    purpose: String::new(),
                    status: OrderStatus::OutForDelivery,
                    reveal: "customer.phone".into(),
                    new_customer: order.req.customer_id.clone(),
                };
                for method in Method::ALL {
                    match probe::call(&mut client, Some(&signer), method, &target).await {
                        Ok(Answer::Orders(got)) => {
                            assert_eq!(method, Method::GetOrder, "ims may only read");
                            let o = &got[0];
                            clean("GetOrder", &o.encode_to_vec());
                            assert_eq!(o.customer, None);
                            assert_eq!(o.customer_id, "");
                            assert_eq!(
                                value(o, "items.sku"),
                                Some("SAREE-SILK-01,BLOUSE-02".into())
                            );
                            assert_eq!(value(o, "items.quantity"), Some("1,2".into()));
                            assert_eq!(value(o, "status"), Some("3".into()));
                            for path in [
                                "items.name",
                                "items.unit_price_paise",
                                "total_paise",
                                "payment.amount_paise",
                            ] {
                                assert_eq!(value(o, path), None, "ims sees {path}");
                            }
                        }
                        Ok(other) => panic!("ims got an answer from {method}: {other:?}"),
                        Err(s) => {
                            assert_eq!(s.code(), Code::PermissionDenied, "{method}: {s:?}");
                            clean("an error", s.message().as_bytes());
                            // Requests that carry or ask for buyer fields are refused naming one.
                            let named = match method {
                                Method::CreateOrder | Method::ListCustomerOrders => {
                                    Some("customer_id")
                                }
                                Method::GetShippingLabel => Some("customer.name"),
                                Method::RevealField => Some("customer.phone"),
                                Method::ResolveContactHandle => Some("customer.contact_handle"),
                                _ => None,
                            };
                            if let Some(field) = named {
                                assert!(
                                    s.message().contains(&format!("`{field}`")),
                                    "{method}: {}",
                                    s.message()
                                );
                            }
                        }
                    }
                }
                // Asking for any buyer field by name is refused, naming it.
                for path in &buyer_paths {
                    let s = client
                        .get_order(signer.signed(
                            Method::GetOrder.path(),
                            GetOrderRequest {
                                order_id: order.order_id.clone(),
                                purpose: String::new(),
                                fields: vec!["status".into(), (*path).into()],
                            },
                        ))
                        .await
                        .expect_err("refused");
                    assert_eq!(s.code(), Code::PermissionDenied);
                    assert!(
                        s.message().contains(&format!("`{path}`")),
                        "{}",
                        s.message()
                    );
                }
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_mask_narrows_a_read_and_cannot_widen_it() {
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let order = shipped_order(&node, &pki, "mask-cust", 11).await;
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        let get = |fields: &[&str]| GetOrderRequest {
            order_id: order.order_id.clone(),
            purpose: String::new(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        };
        let o = oms
            .get_order(get(&["status", "customer.address.city"]))
            .await
            .expect("narrow read")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(
            value(&o, "customer.address.city"),
            Some("Coimbatore".into())
        );
        assert_eq!(value(&o, "items.sku"), None);
        assert_eq!(value(&o, "customer.phone"), None);
        let s = oms
            .get_order(get(&["customer.contact_handle"]))
            .await
            .expect_err("oms does not see handles");
        assert_eq!(s.code(), Code::PermissionDenied);
        assert!(
            s.message().contains("`customer.contact_handle`"),
            "{}",
            s.message()
        );
        let s = oms
            .get_order(get(&["customer.ssn"]))
            .await
            .expect_err("no such field");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("fields"), "{}", s.message());
        // Purpose-bound roles are refused without one, and say so.
        let mut support = node.client(&pki.client(Role::Support)).await;
        let s = support.get_order(get(&[])).await.expect_err("no purpose");
        assert_eq!(s.code(), Code::PermissionDenied);
        assert!(s.message().contains("purpose"), "{}", s.message());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_needs_a_reason_is_limited_per_principal_and_audited() {
    within(90, async {
        let pki = Pki::new();
        let node = NodeProcess::start_with_env(&pki, "n1", &[("DSM_ACCESS_REVEAL_LIMIT", "3")]);
        let order = shipped_order(&node, &pki, "reveal-cust", 2468).await;
        let c = order.req.customer.clone().expect("customer");
        let mut oms = node.client(&pki.client_named(Role::Oms, "desk-1")).await;
        let reveal = |field: &str, code: &str, text: &str| RevealFieldRequest {
            order_id: order.order_id.clone(),
            field: field.into(),
            reason_code: code.into(),
            reason_text: text.into(),
        };
        let why = "buyer asked to change the delivery slot";
        let leaky = format!("buyer on {} asked", c.phone.trim_start_matches("+91"));
        for (req, code, names) in [
            (
                reveal("customer.phone", "", why),
                Code::InvalidArgument,
                "reason_code",
            ),
            (
                reveal("customer.phone", "slot-change", ""),
                Code::InvalidArgument,
                "reason_text",
            ),
            (
                reveal("customer.phone", "slot-change", &leaky),
                Code::InvalidArgument,
                "reason_text",
            ),
            (
                reveal("customer.ssn", "slot-change", why),
                Code::InvalidArgument,
                "field",
            ),
            (
                reveal("items.sku", "slot-change", why),
                Code::PermissionDenied,
                "items.sku",
            ),
        ] {
            let s = oms.reveal_field(req).await.expect_err("refused");
            assert_eq!(s.code(), code, "{s:?}");
            assert!(s.message().contains(names), "{}", s.message());
        }
        let mut sf = node.client(&pki.client(Role::Storefront)).await;
        let s = sf
            .reveal_field(reveal("customer.phone", "slot-change", why))
            .await
            .expect_err("storefront may not reveal");
        assert_eq!(s.code(), Code::PermissionDenied);

        let address = c.address.clone().expect("address");
        for (field, want, left) in [
            ("customer.phone", c.phone.clone(), 2),
            ("customer.email", c.email.clone(), 1),
            ("customer.address.line1", address.line1.clone(), 0),
        ] {
            let r = oms
                .reveal_field(reveal(field, "slot-change", why))
                .await
                .expect("within the limit")
                .into_inner();
            assert_eq!((r.value, r.remaining), (want, left), "{field}");
        }
        let s = oms
            .reveal_field(reveal("customer.name", "slot-change", why))
            .await
            .expect_err("over the limit");
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("3 per 1h"), "{}", s.message());
        // The limit is per principal: another desk, and support, still have theirs.
        let mut other = node.client(&pki.client_named(Role::Oms, "desk-2")).await;
        other
            .reveal_field(reveal("customer.name", "slot-change", why))
            .await
            .expect("another principal");
        let mut support = node.client(&pki.client(Role::Support)).await;
        let r = support
            .reveal_field(reveal(
                "customer.address.line2",
                "ndr-address",
                "courier could not find the building",
            ))
            .await
            .expect("support reveals")
            .into_inner();
        assert_eq!(r.value, address.line2);

        let desk1 = local_trail_where(&node, &pki, Method::RevealField.path(), |r| {
            r.principal.ends_with("/oms/desk-1")
        })
        .await;
        assert_eq!(desk1.len(), 9, "one record per reveal attempt: {desk1:#?}");
        let allowed: Vec<_> = desk1.iter().filter(|r| r.decision == "allow").collect();
        assert_eq!(allowed.len(), 3);
        for r in &allowed {
            assert_eq!((r.purpose.as_str(), r.note.as_str()), ("slot-change", why));
            assert_eq!(r.fields.len(), 1);
            assert_eq!(r.order.len(), 64, "the order is a hash");
            assert_ne!(
                r.order,
                mesh_node::audit::chain::hash_line(order.order_id.as_bytes()),
                "the order is a keyed hash, not the plain SHA-256 of its id"
            );
        }
        let fields: Vec<&str> = allowed.iter().map(|r| r.fields[0].as_str()).collect();
        assert_eq!(
            fields,
            ["customer.phone", "customer.email", "customer.address.line1"]
        );
        assert!(
            desk1
                .iter()
                .any(|r| r.reason == "RESOURCE_EXHAUSTED" && r.note == why)
        );
        assert!(
            desk1.iter().all(|r| !r.note.contains(&c.phone[3..])),
            "a reason quoting the buyer's number is refused and never recorded"
        );
        let mut node = node;
        node.stop();
        let disk = read_tree(&node.data_dir().join("audit"));
        assert!(!contains(
            &disk,
            c.phone.trim_start_matches("+91").as_bytes()
        ));
        assert!(
            !contains(&disk, why.as_bytes()),
            "reason words are sealed under the node's key on disk"
        );
        assert!(contains(&disk, b"sealed:v2:"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_plus_grace_closes_courier_and_label_views_and_contact_handles() {
    within(120, async {
        let pki = Pki::new();
        let grace = Duration::from_secs(3);
        let node = NodeProcess::start_with_env(&pki, "n1", &[("DSM_ACCESS_CONTACT_GRACE", "3s")]);
        let req = sample_order("journey-cust", 1357);
        let c = req.customer.clone().expect("customer");
        let a = c.address.clone().expect("address");
        let mut sf = node.client(&pki.client(Role::Storefront)).await;
        let order_id = create_ok(&mut sf, req.clone()).await.order_id;
        let mut wms = node.client(&pki.client(Role::Wms)).await;
        let mut label = node.client(&pki.client(Role::Label)).await;
        let mut courier = node.client(&pki.client(Role::Courier)).await;
        let mut comms = node.client(&pki.client(Role::Comms)).await;
        let mut support = node.client(&pki.client(Role::Support)).await;
        let get = |purpose: &str| GetOrderRequest {
            order_id: order_id.clone(),
            purpose: purpose.into(),
            fields: Vec::new(),
        };
        let set = |status: OrderStatus, c: Option<Courier>| UpdateOrderStatusRequest {
            order_id: order_id.clone(),
            status: status as i32,
            courier: c,
            ..Default::default()
        };

        // Before shipping: the courier sees nothing personal; the warehouse picks and packs.
        let seen = courier
            .get_order(get(""))
            .await
            .expect("courier read")
            .into_inner();
        assert_eq!(seen.order.expect("order").customer, None);
        let picked = wms
            .get_order(get("pick"))
            .await
            .expect("wms")
            .into_inner()
            .order
            .expect("o");
        assert_eq!(
            value(&picked, "customer.address.line1"),
            Some(a.line1.clone())
        );
        wms.update_order_status(set(OrderStatus::Packed, None))
            .await
            .expect("pack");

        // The label: who, where, a handle, what to collect; never the phone or the email.
        let l = label
            .get_shipping_label(GetShippingLabelRequest {
                order_id: order_id.clone(),
                purpose: String::new(),
            })
            .await
            .expect("label")
            .into_inner()
            .label
            .expect("label");
        assert_eq!(l.name, c.name);
        assert_eq!(l.address.clone().expect("address").pincode, a.pincode);
        assert_eq!(l.cod_amount_paise, req.total_paise);
        let handle = l.contact_handle.clone();
        assert!(handle.starts_with("ch1-"), "{handle}");
        let bytes = l.encode_to_vec();
        for needle in [c.phone.trim_start_matches("+91"), c.email.as_str()] {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "the label carries {needle}"
            );
        }
        wms.update_order_status(set(
            OrderStatus::Shipped,
            Some(Courier {
                name: "Ekart".into(),
                awb: "EK1357".into(),
            }),
        ))
        .await
        .expect("ship");

        // In transit: the courier sees the address and the handle, never the number; comms
        // resolves the handle to bridge the call.
        let o = courier
            .get_order(get(""))
            .await
            .expect("courier")
            .into_inner()
            .order
            .expect("o");
        assert_eq!(value(&o, "customer.address.line1"), Some(a.line1.clone()));
        assert_eq!(value(&o, "customer.contact_handle"), Some(handle.clone()));
        assert_eq!(value(&o, "customer.phone"), None);
        let resolve = |purpose: &str| ResolveContactHandleRequest {
            contact_handle: handle.clone(),
            purpose: purpose.into(),
        };
        let s = comms
            .resolve_contact_handle(resolve(""))
            .await
            .expect_err("purpose");
        assert_eq!(s.code(), Code::PermissionDenied);
        assert!(s.message().contains("purpose"), "{}", s.message());
        let r = comms
            .resolve_contact_handle(resolve("delivery-call"))
            .await
            .expect("resolve in transit")
            .into_inner();
        assert_eq!(r.phone, c.phone);
        for s in [OrderStatus::OutForDelivery, OrderStatus::Delivered] {
            courier
                .update_order_status(set(s, None))
                .await
                .expect("courier moves it");
        }

        // Delivered, within grace: still visible, and the handle says until when.
        let r = comms
            .resolve_contact_handle(resolve("delivery-feedback"))
            .await
            .expect("resolve within grace")
            .into_inner();
        assert!(r.valid_until.is_some());
        let o = courier
            .get_order(get(""))
            .await
            .expect("courier")
            .into_inner()
            .order
            .expect("o");
        assert_eq!(value(&o, "customer.name"), Some(c.name.clone()));

        // Past grace: the handle is dead, courier, label and warehouse see nothing personal,
        // support and storefront keep their (masked) views.
        tokio::time::sleep(grace).await;
        mesh_tests::assert_eventually!(
            Duration::from_secs(10),
            comms
                .resolve_contact_handle(resolve("delivery-feedback"))
                .await
                .is_err_and(
                    |s| s.code() == Code::FailedPrecondition && s.message().contains("expired")
                ),
            "the handle still resolves after delivery plus grace"
        );
        let o = courier
            .get_order(get(""))
            .await
            .expect("courier")
            .into_inner()
            .order
            .expect("o");
        assert_eq!(o.customer, None, "courier view ended");
        assert_eq!(
            value(&o, "status"),
            Some((OrderStatus::Delivered as i32).to_string())
        );
        let view = o.view.expect("view");
        assert!(
            view.withheld_fields
                .iter()
                .any(|f| f == "customer.address.line1")
        );
        let l = label
            .get_shipping_label(GetShippingLabelRequest {
                order_id: order_id.clone(),
                purpose: String::new(),
            })
            .await
            .expect("label")
            .into_inner()
            .label
            .expect("label");
        assert_eq!(
            (l.name.as_str(), l.contact_handle.as_str(), l.address),
            ("", "", None)
        );
        let o = wms
            .get_order(get(""))
            .await
            .expect("wms")
            .into_inner()
            .order
            .expect("o");
        assert_eq!(o.customer, None, "warehouse view ended");
        let o = support
            .get_order(get("ndr-callback"))
            .await
            .expect("support")
            .into_inner()
            .order
            .expect("o");
        assert_eq!(
            value(&o, "customer.phone"),
            Some(masked("customer.phone", &c.phone))
        );
        assert_eq!(value(&o, "customer.contact_handle"), Some(handle.clone()));

        // Every resolution is in the trail, with its purpose and the field it disclosed.
        let records = local_trail(&node, &pki, Method::ResolveContactHandle.path()).await;
        let decisions: Vec<(&str, &str, &str)> = records
            .iter()
            .map(|r| (r.decision.as_str(), r.purpose.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(decisions[0], ("deny", "", "PERMISSION_DENIED"));
        assert_eq!(decisions[1], ("allow", "delivery-call", ""));
        assert_eq!(decisions[2], ("allow", "delivery-feedback", ""));
        assert_eq!(
            decisions.last().copied(),
            Some(("deny", "delivery-feedback", "FAILED_PRECONDITION"))
        );
        assert!(
            records
                .iter()
                .filter(|r| r.decision == "allow")
                .all(|r| r.fields == ["customer.phone"])
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_meet_the_owners_limits_windows_and_purposes() {
    within(120, async {
        let mesh = TestMesh::start_with_env(3, &[("DSM_ACCESS_REVEAL_LIMIT", "4")]);
        let mut orders = Vec::new();
        for (i, node) in mesh.nodes.iter().enumerate() {
            let customer = mesh.customer_on(i, "ledger-cust");
            orders.push(shipped_order(node, &mesh.pki, &customer, 8000 + i as u32).await);
        }
        let desk = mesh.pki.client_named(Role::Oms, "ledger-desk");
        let signer = Signer::from_pem_file(&desk.key).expect("signer");
        let mut outcomes = Vec::new();
        // Six reveals spread over every shard and every gateway: exactly four are granted.
        for k in 0..6 {
            let order = &orders[k % 3];
            let mut client = mesh.nodes[(k + 1) % 3].client(&desk).await;
            let result = client
                .reveal_field(signer.signed(
                    Method::RevealField.path(),
                    RevealFieldRequest {
                        order_id: order.order_id.clone(),
                        field: "customer.phone".into(),
                        reason_code: "ndr-callback".into(),
                        reason_text: "buyer missed the delivery".into(),
                    },
                ))
                .await;
            outcomes.push(
                result
                    .map(|r| r.into_inner().remaining)
                    .map_err(|s| s.code()),
            );
        }
        assert_eq!(
            outcomes,
            [
                Ok(3),
                Ok(2),
                Ok(1),
                Ok(0),
                Err(Code::ResourceExhausted),
                Err(Code::ResourceExhausted)
            ],
            "the limit is per principal for the whole mesh"
        );

        // Labels, handle resolutions and purposes work the same through a gateway that does not
        // own the order: the owner decides.
        for (i, order) in orders.iter().enumerate() {
            let via = &mesh.nodes[(i + 1) % 3];
            let label = mesh.pki.client(Role::Label);
            let l = via
                .client(&label)
                .await
                .get_shipping_label(Signer::from_pem_file(&label.key).expect("s").signed(
                    Method::GetShippingLabel.path(),
                    GetShippingLabelRequest {
                        order_id: order.order_id.clone(),
                        purpose: String::new(),
                    },
                ))
                .await
                .expect("label through another gateway")
                .into_inner()
                .label
                .expect("label");
            assert_eq!(l.contact_handle, order.handle);
            let comms = mesh.pki.client(Role::Comms);
            let comms_signer = Signer::from_pem_file(&comms.key).expect("s");
            let resolve = |purpose: &str| {
                comms_signer.signed(
                    Method::ResolveContactHandle.path(),
                    ResolveContactHandleRequest {
                        contact_handle: order.handle.clone(),
                        purpose: purpose.into(),
                    },
                )
            };
            let mut c = via.client(&comms).await;
            let phone = c
                .resolve_contact_handle(resolve("delivery-call"))
                .await
                .expect("resolve through another gateway")
                .into_inner()
                .phone;
            assert_eq!(phone, order.req.customer.clone().expect("c").phone);
            let s = c
                .resolve_contact_handle(resolve(""))
                .await
                .expect_err("comms must give a purpose");
            assert_eq!(s.code(), Code::PermissionDenied);
            assert!(s.message().contains("purpose"), "{}", s.message());
        }
    })
    .await;
}

/// The reason given for a reveal is evidence: an auditor reads it on the node that recorded it
/// for as long as the trail is kept, also after the customer's partition moved to another node
/// and the old copy (data key included) was shredded. It was sealed under the customer's data
/// key before, and became unreadable with the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_reasons_stay_readable_to_auditors_after_the_partition_moves() {
    within(180, async {
        let mut mesh = TestMesh::start(2);
        let v1 = mesh.layout_now();
        let v2 = mesh_tests::with_member(&v1, "n3");
        // A partition that moves n1 -> n3.
        let customer = mesh_tests::customer_placed("evidence", &[(&v1, "n1"), (&v2, "n3")]);
        let order = shipped_order(&mesh.nodes[0], &mesh.pki, &customer, 4242).await;
        let why = "courier could not find the gate; buyer asked for a call";
        mesh.nodes[0]
            .client(&mesh.pki.client(Role::Oms))
            .await
            .reveal_field(RevealFieldRequest {
                order_id: order.order_id.clone(),
                field: "customer.phone".into(),
                reason_code: "ndr-callback".into(),
                reason_text: why.into(),
            })
            .await
            .expect("reveal");
        let noted = |records: Vec<mesh_proto::v1::AuditRecord>| {
            records
                .into_iter()
                .filter(|r| r.decision == "allow")
                .map(|r| r.note)
                .collect::<Vec<_>>()
        };
        let reveal = mesh_node::api::gateway::REVEAL_FIELD;
        assert_eq!(
            noted(local_trail(&mesh.nodes[0], &mesh.pki, reveal).await),
            [why]
        );
        let now = mesh.change_members(&["n1", "n2", "n3"]).await;
        let p = mesh_node::domain::ids::partition_of(&customer);
        assert_eq!(now.owner_of(p).node_id, "n3");
        // n1 no longer holds the customer (its copy and data key are shredded) ...
        mesh_tests::assert_eventually!(
            Duration::from_secs(30),
            local_trail(&mesh.nodes[0], &mesh.pki, "PartitionShredded")
                .await
                .iter()
                .any(|r| r.purpose.contains(&format!("partition {p} deleted here"))),
            "n1 never shredded partition {p}"
        );
        // ... and its trail still shows the auditor why the phone number was revealed.
        assert_eq!(
            noted(local_trail(&mesh.nodes[0], &mesh.pki, reveal).await),
            [why]
        );
    })
    .await;
}

/// A home node that grants every reveal (breached, or here misconfigured with a limit of 1000)
/// cannot lift a principal's limit on the other nodes: the owner of the order keeps its own
/// ceiling per principal. Before, n1 revealed as often as n2 granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_node_that_grants_every_reveal_cannot_lift_the_limit_on_other_owners() {
    within(120, async {
        let mut mesh = TestMesh::start_with_env(2, &[("DSM_ACCESS_REVEAL_LIMIT", "3")]);
        mesh.nodes[1].stop();
        mesh.start_node("n2", &[("DSM_ACCESS_REVEAL_LIMIT", "1000")]);
        let layout = mesh.layout_now();
        // An oms desk homed on n2 (its allowance is kept there), revealing on n1's orders.
        let desk = mesh_tests::principal_homed_on(&layout, Role::Oms, "n2", "desk");
        let customer = mesh.customer_on(0, "ceiling");
        let order = shipped_order(&mesh.nodes[0], &mesh.pki, &customer, 777).await;
        let mut oms = mesh.nodes[0]
            .client(&mesh.pki.client_named(Role::Oms, &desk))
            .await;
        let reveal = || RevealFieldRequest {
            order_id: order.order_id.clone(),
            field: "customer.phone".into(),
            reason_code: "ndr-callback".into(),
            reason_text: "buyer asked for a call back".into(),
        };
        for i in 0..3 {
            oms.reveal_field(reveal())
                .await
                .unwrap_or_else(|s| panic!("reveal {i}: {s:?}"));
        }
        let s = oms
            .reveal_field(reveal())
            .await
            .expect_err("a fourth reveal on n1's orders");
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("this node's orders"), "{s:?}");
    })
    .await;
}

/// Fail-closed reveals: when the principal's home node (which keeps its allowance) cannot be
/// asked, the owner refuses the reveal and says why, and the refusal is on its trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_is_refused_when_the_principals_home_node_is_unreachable() {
    within(120, async {
        let mut mesh = TestMesh::start(2);
        let layout = mesh.layout_now();
        let desk = mesh_tests::principal_homed_on(&layout, Role::Oms, "n2", "desk");
        let customer = mesh.customer_on(0, "ledger-down");
        let order = shipped_order(&mesh.nodes[0], &mesh.pki, &customer, 31).await;
        mesh.nodes[1].stop();
        let mut oms = mesh.nodes[0]
            .client(&mesh.pki.client_named(Role::Oms, &desk))
            .await;
        let s = oms
            .reveal_field(RevealFieldRequest {
                order_id: order.order_id.clone(),
                field: "customer.phone".into(),
                reason_code: "ndr-callback".into(),
                reason_text: "buyer asked for a call back".into(),
            })
            .await
            .expect_err("no ledger, no reveal");
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(
            s.message().contains("reveal ledger") && s.message().contains("n2"),
            "{s:?}"
        );
        let refused = local_trail_where(
            &mesh.nodes[0],
            &mesh.pki,
            mesh_node::api::gateway::REVEAL_FIELD,
            |r| r.decision == "deny",
        )
        .await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].reason, "UNAVAILABLE");
    })
    .await;
}
