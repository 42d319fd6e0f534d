//! Projection: the order as one role is allowed to see it, built from the role table.
//!
//! `project(order, role)` starts from an empty order and copies in, field by field, what
//! `policy::visibility` allows: the value, its mask, or nothing. Starting empty means a field added
//! to the proto later is withheld from everyone until the role table names it.

use crate::mask;
use crate::policy::{self, Field, Role, Visibility};
use mesh_proto::v1::{Address, Courier, Customer, LineItem, Order, OrderView, Payment};

/// The order as `role` may see it, with `view` saying what was masked or withheld.
pub fn project(order: &Order, role: Role) -> Order {
    let mut out = Order {
        order_id: order.order_id.clone(),
        created_at: order.created_at,
        updated_at: order.updated_at,
        ..Order::default()
    };
    let mut view = OrderView {
        role: role.to_string(),
        ..OrderView::default()
    };
    for field in Field::ALL {
        match policy::visibility(role, field) {
            Visibility::Full => copy(field, order, &mut out),
            Visibility::Masked => {
                mask_into(field, order, &mut out);
                view.masked_fields.push(field.path().to_owned());
            }
            Visibility::Withheld => view.withheld_fields.push(field.path().to_owned()),
        }
    }
    out.view = Some(view);
    out
}

fn customer(o: &mut Order) -> &mut Customer {
    o.customer.get_or_insert_with(Customer::default)
}

fn address(o: &mut Order) -> &mut Address {
    customer(o).address.get_or_insert_with(Address::default)
}

fn payment(o: &mut Order) -> &mut Payment {
    o.payment.get_or_insert_with(Payment::default)
}

/// The items list, sized like the source so per-item fields line up.
fn items<'a>(src: &Order, o: &'a mut Order) -> &'a mut [LineItem] {
    if o.items.len() != src.items.len() {
        o.items = vec![LineItem::default(); src.items.len()];
    }
    &mut o.items
}

fn copy(field: Field, src: &Order, out: &mut Order) {
    let c = src.customer.clone().unwrap_or_default();
    let a = c.address.clone().unwrap_or_default();
    let p = src.payment.unwrap_or_default();
    match field {
        Field::CustomerId => out.customer_id.clone_from(&src.customer_id),
        Field::ExternalRef => out.external_ref.clone_from(&src.external_ref),
        Field::Channel => out.channel = src.channel,
        Field::Name => customer(out).name = c.name,
        Field::Phone => customer(out).phone = c.phone,
        Field::Email => customer(out).email = c.email,
        Field::AddressLine1 => address(out).line1 = a.line1,
        Field::AddressLine2 => address(out).line2 = a.line2,
        Field::City => address(out).city = a.city,
        Field::State => address(out).state = a.state,
        Field::Pincode => address(out).pincode = a.pincode,
        Field::ItemSkus => items(src, out)
            .iter_mut()
            .zip(&src.items)
            .for_each(|(o, i)| o.sku.clone_from(&i.sku)),
        Field::ItemNames => items(src, out)
            .iter_mut()
            .zip(&src.items)
            .for_each(|(o, i)| o.name.clone_from(&i.name)),
        Field::ItemQuantities => items(src, out)
            .iter_mut()
            .zip(&src.items)
            .for_each(|(o, i)| o.quantity = i.quantity),
        Field::ItemPrices => items(src, out)
            .iter_mut()
            .zip(&src.items)
            .for_each(|(o, i)| o.unit_price_paise = i.unit_price_paise),
        Field::Total => out.total_paise = src.total_paise,
        Field::PaymentMethod => payment(out).method = p.method,
        Field::PaymentAmount => payment(out).amount_paise = p.amount_paise,
        Field::PaymentStatus => payment(out).status = p.status,
        Field::Status => out.status = src.status,
        Field::Courier => {
            out.courier = src
                .courier
                .clone()
                .or(Some(Courier::default()))
                .filter(|c| !c.awb.is_empty() || !c.name.is_empty())
        }
        Field::Consent => out.consent = Some(src.consent.unwrap_or_default()),
    }
}

/// Fields with a masking rule get their mask; any other field masked in the table is withheld.
fn mask_into(field: Field, src: &Order, out: &mut Order) {
    let c = src.customer.clone().unwrap_or_default();
    match field {
        Field::Name => customer(out).name = mask::name(&c.name),
        Field::Phone => customer(out).phone = mask::phone(&c.phone),
        Field::Email if !c.email.is_empty() => customer(out).email = mask::email(&c.email),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Order {
        Order {
            order_id: "o1-0001-00000000000000000000".into(),
            customer_id: "cust-1".into(),
            customer: Some(Customer {
                name: "Ravi Kumar".into(),
                phone: "+919876543210".into(),
                email: "ravi@example.com".into(),
                address: Some(Address {
                    line1: "12 MG Road".into(),
                    line2: String::new(),
                    city: "Bengaluru".into(),
                    state: "Karnataka".into(),
                    pincode: "560001".into(),
                }),
            }),
            items: vec![LineItem {
                sku: "SKU-1".into(),
                name: "Kurta".into(),
                quantity: 2,
                unit_price_paise: 49_900,
            }],
            total_paise: 99_800,
            status: 1,
            ..Order::default()
        }
    }

    #[test]
    fn oms_sees_masked_contact() {
        let p = project(&sample(), Role::Oms);
        let c = p.customer.expect("customer");
        assert_eq!(c.phone, "+91******3210");
        assert_eq!(c.email, "r***@example.com");
        assert_eq!(c.name, "Ravi Kumar");
        let view = p.view.expect("view");
        assert!(view.masked_fields.contains(&"customer.phone".to_owned()));
    }

    #[test]
    fn unlisted_roles_see_nothing_but_the_id() {
        let p = project(&sample(), Role::Admin);
        assert_eq!(p.customer, None);
        assert!(p.items.is_empty());
        assert_eq!(
            p.view.expect("view").withheld_fields.len(),
            Field::ALL.len()
        );
    }
}
