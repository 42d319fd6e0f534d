//! Projection: the order as one role is allowed to see it, built from the role table.
//!
//! `project(order, role, at)` starts from an empty order and copies in, field by field, what
//! `policy::visibility` allows: the value, its mask, or nothing. Starting empty means a field added
//! to the proto later is withheld from everyone until the role table names it. Outside the role's
//! window (`policy::window`, judged by `windows::in_window`) every buyer field is withheld.

use crate::access::mask;
use crate::access::policy::{self, Field, Role, Visibility};
use crate::access::windows;
use mesh_proto::v1::{Address, Courier, Customer, LineItem, Order, OrderView, Payment};
use std::time::{Duration, SystemTime};

/// The moment a projection is made for, and the grace period after an order closes.
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub now: SystemTime,
    pub grace: Duration,
}

/// The order as `role` may see it, with `view` saying what was masked or withheld.
pub fn project(order: &Order, role: Role, at: At) -> Order {
    project_fields(order, role, at, None)
}

/// As [`project`], restricted to `only` when given (a client's field mask): other fields are
/// withheld. The caller has checked that `role` may see every field in `only`.
pub(crate) fn project_fields(order: &Order, role: Role, at: At, only: Option<&[Field]>) -> Order {
    let mut out = Order {
        order_id: order.order_id.clone(),
        created_at: order.created_at,
        updated_at: order.updated_at,
        closed_at: order.closed_at,
        ..Order::default()
    };
    let mut view = OrderView {
        role: role.to_string(),
        ..OrderView::default()
    };
    let in_window = windows::in_window(order, policy::window(role), at.now, at.grace);
    let empty = Customer::default();
    let src = Source {
        order,
        customer: order.customer.as_ref().unwrap_or(&empty),
    };
    for field in Field::ALL {
        let visibility = if (field.is_buyer_field() && !in_window)
            || only.is_some_and(|only| !only.contains(&field))
        {
            Visibility::Withheld
        } else {
            policy::visibility(role, field)
        };
        match visibility {
            Visibility::Full => copy(field, &src, &mut out),
            Visibility::Masked | Visibility::FirstName => {
                reduce(field, visibility, &src, &mut out);
                view.masked_fields.push(field.path().to_owned());
            }
            Visibility::Withheld => view.withheld_fields.push(field.path().to_owned()),
        }
    }
    out.view = Some(view);
    out
}

/// The stored order and its customer (or an empty one).
struct Source<'a> {
    order: &'a Order,
    customer: &'a Customer,
}

impl Source<'_> {
    fn payment(&self) -> Payment {
        self.order.payment.unwrap_or_default()
    }
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

/// The text of a buyer field, given the order's customer id and customer; `None` for fields that
/// are not buyer text. The one place that maps buyer fields to where they live in the proto.
pub(crate) fn buyer_text<'a>(
    customer_id: &'a str,
    c: &'a Customer,
    field: Field,
) -> Option<&'a str> {
    let a = c.address.as_ref();
    let line = |pick: fn(&Address) -> &String| a.map_or("", |a| pick(a).as_str());
    Some(match field {
        Field::CustomerId => customer_id,
        Field::Name => &c.name,
        Field::Phone => &c.phone,
        Field::Email => &c.email,
        Field::ContactHandle => &c.contact_handle,
        Field::AddressLine1 => line(|a| &a.line1),
        Field::AddressLine2 => line(|a| &a.line2),
        Field::City => line(|a| &a.city),
        Field::State => line(|a| &a.state),
        Field::Pincode => line(|a| &a.pincode),
        _ => return None,
    })
}

/// Where a buyer field goes in an order being built (creating its customer and address).
fn buyer_text_mut(o: &mut Order, field: Field) -> Option<&mut String> {
    Some(match field {
        Field::CustomerId => &mut o.customer_id,
        Field::Name => &mut customer(o).name,
        Field::Phone => &mut customer(o).phone,
        Field::Email => &mut customer(o).email,
        Field::ContactHandle => &mut customer(o).contact_handle,
        Field::AddressLine1 => &mut address(o).line1,
        Field::AddressLine2 => &mut address(o).line2,
        Field::City => &mut address(o).city,
        Field::State => &mut address(o).state,
        Field::Pincode => &mut address(o).pincode,
        _ => return None,
    })
}

fn copy(field: Field, src: &Source<'_>, out: &mut Order) {
    let o = src.order;
    if let Some(text) = buyer_text(&o.customer_id, src.customer, field) {
        if !text.is_empty()
            && let Some(slot) = buyer_text_mut(out, field)
        {
            text.clone_into(slot);
        }
        return;
    }
    match field {
        Field::ExternalRef => out.external_ref.clone_from(&o.external_ref),
        Field::Channel => out.channel = o.channel,
        Field::ItemSkus => items(o, out)
            .iter_mut()
            .zip(&o.items)
            .for_each(|(x, i)| x.sku.clone_from(&i.sku)),
        Field::ItemNames => items(o, out)
            .iter_mut()
            .zip(&o.items)
            .for_each(|(x, i)| x.name.clone_from(&i.name)),
        Field::ItemQuantities => items(o, out)
            .iter_mut()
            .zip(&o.items)
            .for_each(|(x, i)| x.quantity = i.quantity),
        Field::ItemPrices => items(o, out)
            .iter_mut()
            .zip(&o.items)
            .for_each(|(x, i)| x.unit_price_paise = i.unit_price_paise),
        Field::Total => out.total_paise = o.total_paise,
        Field::PaymentMethod => payment(out).method = src.payment().method,
        Field::PaymentAmount => payment(out).amount_paise = src.payment().amount_paise,
        Field::PaymentStatus => payment(out).status = src.payment().status,
        Field::Status => out.status = o.status,
        Field::Courier => {
            out.courier = o
                .courier
                .as_ref()
                .filter(|c| !c.awb.is_empty() || !c.name.is_empty())
                .map(|c| Courier {
                    name: c.name.clone(),
                    awb: c.awb.clone(),
                })
        }
        Field::Consent => out.consent = Some(o.consent.unwrap_or_default()),
        // Buyer fields were copied above.
        Field::CustomerId
        | Field::Name
        | Field::Phone
        | Field::Email
        | Field::ContactHandle
        | Field::AddressLine1
        | Field::AddressLine2
        | Field::City
        | Field::State
        | Field::Pincode => {}
    }
}

/// The stored value of one buyer field, unmasked (for `RevealField`); empty for other fields.
pub(crate) fn value_of(order: &Order, field: Field) -> String {
    let empty = Customer::default();
    let c = order.customer.as_ref().unwrap_or(&empty);
    buyer_text(&order.customer_id, c, field)
        .unwrap_or_default()
        .to_owned()
}

/// The masked or reduced form of a field. The role table only masks fields with a rule here
/// (checked by a unit test in `policy`); anything else stays empty.
fn reduce(field: Field, visibility: Visibility, src: &Source<'_>, out: &mut Order) {
    let c = src.customer;
    match (field, visibility) {
        (Field::Name, Visibility::FirstName) => customer(out).name = mask::first_name(&c.name),
        (Field::Name, _) => customer(out).name = mask::name(&c.name),
        (Field::Phone, _) => customer(out).phone = mask::phone(&c.phone),
        (Field::Email, _) if !c.email.is_empty() => customer(out).email = mask::email(&c.email),
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
            customer: Some(crate::domain::fixtures::buyer()),
            items: crate::domain::fixtures::basket(),
            total_paise: 99_800,
            status: 1,
            ..Order::default()
        }
    }

    pub(crate) fn at() -> At {
        At {
            now: SystemTime::now(),
            grace: Duration::from_secs(3600),
        }
    }

    #[test]
    fn oms_sees_everything_masked() {
        let p = project(&sample(), Role::Oms, at());
        let c = p.customer.expect("customer");
        assert_eq!(c.phone, "+91******3210");
        assert_eq!(c.email, "r***@example.com");
        assert_eq!(c.name, "R*** K***");
        let a = c.address.expect("address");
        assert_eq!((a.line1.as_str(), a.city.as_str()), ("", "Bengaluru"));
        let view = p.view.expect("view");
        assert!(view.masked_fields.contains(&"customer.phone".to_owned()));
        assert!(
            view.withheld_fields
                .contains(&"customer.address.line1".to_owned())
        );
    }

    #[test]
    fn comms_greets_by_first_name() {
        let p = project(&sample(), Role::Comms, at());
        let c = p.customer.expect("customer");
        assert_eq!(
            (c.name.as_str(), c.phone.as_str()),
            ("Ravi", "+919876543210")
        );
        assert_eq!(c.address, None);
    }

    #[test]
    fn a_courier_sees_nothing_personal_before_shipping() {
        let p = project(&sample(), Role::Courier, at());
        assert_eq!(p.customer, None);
        assert_eq!(p.status, 1);
    }

    #[test]
    fn a_field_mask_narrows_the_projection() {
        let only = [Field::City, Field::Status];
        let p = project_fields(&sample(), Role::Oms, at(), Some(&only));
        let c = p.customer.expect("customer");
        assert_eq!(c.name, "");
        assert_eq!(c.address.expect("address").city, "Bengaluru");
        assert!(p.items.is_empty());
    }

    #[test]
    fn unlisted_roles_see_nothing_but_the_id() {
        let p = project(&sample(), Role::Admin, at());
        assert_eq!(p.customer, None);
        assert!(p.items.is_empty());
        assert_eq!(
            p.view.expect("view").withheld_fields.len(),
            Field::ALL.len()
        );
    }
}
