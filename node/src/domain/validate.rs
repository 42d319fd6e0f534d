//! Input validation of gateway requests: pure functions that either accept a request or name every
//! field that is wrong and why. Nothing reaches storage before it passes here.
//!
//! Error texts name the field and the rule, never the offending value (it may be PII).

use crate::domain::ids::OrderId;
use mesh_proto::v1::{
    Channel, CreateOrderRequest, OrderStatus, PaymentMethod, PaymentStatus,
    UpdateOrderStatusRequest,
};
use std::fmt;

pub(crate) const MAX_ID_LEN: usize = 64;
pub(crate) const MAX_NAME_CHARS: usize = 100;
pub(crate) const MAX_LINE_CHARS: usize = 200;
pub(crate) const MAX_PLACE_CHARS: usize = 64;
pub(crate) const MAX_EMAIL_LEN: usize = 254;
pub(crate) const MAX_ITEMS: usize = 100;
pub(crate) const MAX_QUANTITY: i32 = 10_000;
/// ₹1 crore per unit.
pub(crate) const MAX_UNIT_PRICE_PAISE: i64 = 1_000_000_000;
/// ₹100 crore per order.
pub(crate) const MAX_TOTAL_PAISE: i64 = 100_000_000_000;
pub(crate) const MAX_PURPOSE_LEN: usize = 64;
pub(crate) const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub problem: &'static str,
}

/// Everything wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

impl Violations {
    fn check(&mut self, ok: bool, field: impl Into<String>, problem: &'static str) {
        if !ok {
            self.0.push(Violation {
                field: field.into(),
                problem,
            });
        }
    }
    fn into_result(self) -> Result<(), Violations> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|v| v.field.as_str()).collect()
    }
}

fn no_control(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn text(v: &mut Violations, field: &str, s: &str, required: bool, max_chars: usize) {
    if required && s.trim().is_empty() {
        v.check(false, field, "is required");
        return;
    }
    v.check(s.chars().count() <= max_chars, field, "is too long");
    v.check(no_control(s), field, "must not contain control characters");
}

pub(crate) fn is_valid_customer_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// E.164 Indian mobile number: `+91` and ten digits, the first 6-9.
pub(crate) fn is_valid_indian_phone(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("+91") else {
        return false;
    };
    rest.len() == 10
        && rest.bytes().all(|b| b.is_ascii_digit())
        && matches!(rest.as_bytes()[0], b'6'..=b'9')
}

/// Six digits, not starting with 0.
pub(crate) fn is_valid_pincode(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) && s.as_bytes()[0] != b'0'
}

/// A pragmatic address check: one `@`, a sane local part and a dotted domain of DNS labels.
pub(crate) fn is_valid_email(s: &str) -> bool {
    if s.len() > MAX_EMAIL_LEN {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    local_ok && domain_ok
}

fn is_valid_sku(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

fn known_channel(v: i32) -> bool {
    Channel::try_from(v).is_ok_and(|c| c != Channel::Unspecified)
}
fn known_method(v: i32) -> bool {
    PaymentMethod::try_from(v).is_ok_and(|m| m != PaymentMethod::Unspecified)
}
fn known_payment_status(v: i32) -> bool {
    PaymentStatus::try_from(v).is_ok_and(|s| s != PaymentStatus::Unspecified)
}

pub fn create_order(req: &CreateOrderRequest) -> Result<(), Violations> {
    let mut v = Violations::default();
    v.check(
        is_valid_customer_id(&req.customer_id),
        "customer_id",
        "must be 1-64 characters of letters, digits, `-`, `_`, `.` or `:`",
    );
    text(&mut v, "external_ref", &req.external_ref, false, MAX_ID_LEN);
    v.check(
        known_channel(req.channel),
        "channel",
        "must be a known channel (STOREFRONT or MARKETPLACE)",
    );
    text(
        &mut v,
        "idempotency_key",
        &req.idempotency_key,
        false,
        MAX_IDEMPOTENCY_KEY_LEN,
    );

    match &req.customer {
        None => v.check(false, "customer", "is required"),
        Some(c) => {
            v.check(
                c.contact_handle.is_empty(),
                "customer.contact_handle",
                "is minted by the mesh; leave it empty",
            );
            text(&mut v, "customer.name", &c.name, true, MAX_NAME_CHARS);
            v.check(
                is_valid_indian_phone(&c.phone),
                "customer.phone",
                "must be an E.164 Indian mobile number (+91 and ten digits starting 6-9)",
            );
            v.check(
                c.email.is_empty() || is_valid_email(&c.email),
                "customer.email",
                "must be a valid email address",
            );
            match &c.address {
                None => v.check(false, "customer.address", "is required"),
                Some(a) => {
                    text(
                        &mut v,
                        "customer.address.line1",
                        &a.line1,
                        true,
                        MAX_LINE_CHARS,
                    );
                    text(
                        &mut v,
                        "customer.address.line2",
                        &a.line2,
                        false,
                        MAX_LINE_CHARS,
                    );
                    text(
                        &mut v,
                        "customer.address.city",
                        &a.city,
                        true,
                        MAX_PLACE_CHARS,
                    );
                    text(
                        &mut v,
                        "customer.address.state",
                        &a.state,
                        true,
                        MAX_PLACE_CHARS,
                    );
                    v.check(
                        is_valid_pincode(&a.pincode),
                        "customer.address.pincode",
                        "must be six digits not starting with 0",
                    );
                }
            }
        }
    }

    v.check(!req.items.is_empty(), "items", "must not be empty");
    v.check(
        req.items.len() <= MAX_ITEMS,
        "items",
        "has too many entries (at most 100)",
    );
    for (i, item) in req.items.iter().enumerate().take(MAX_ITEMS) {
        v.check(
            is_valid_sku(&item.sku),
            format!("items[{i}].sku"),
            "must be 1-64 characters of letters, digits, `-`, `_`, `.` or `/`",
        );
        text(
            &mut v,
            &format!("items[{i}].name"),
            &item.name,
            true,
            MAX_LINE_CHARS,
        );
        v.check(
            (1..=MAX_QUANTITY).contains(&item.quantity),
            format!("items[{i}].quantity"),
            "must be between 1 and 10000",
        );
        v.check(
            (1..=MAX_UNIT_PRICE_PAISE).contains(&item.unit_price_paise),
            format!("items[{i}].unit_price_paise"),
            "must be a positive number of paise (at most ₹1 crore)",
        );
    }
    v.check(
        (1..=MAX_TOTAL_PAISE).contains(&req.total_paise),
        "total_paise",
        "must be a positive number of paise (at most ₹100 crore)",
    );

    match &req.payment {
        None => v.check(false, "payment", "is required"),
        Some(p) => {
            v.check(
                known_method(p.method),
                "payment.method",
                "must be a known method (COD, PREPAID, UPI or CARD)",
            );
            v.check(
                p.amount_paise >= 0 && p.amount_paise <= req.total_paise.max(0),
                "payment.amount_paise",
                "must be between 0 and total_paise",
            );
            v.check(
                known_payment_status(p.status),
                "payment.status",
                "must be a known payment status",
            );
        }
    }
    v.into_result()
}

pub fn order_id(s: &str) -> Result<OrderId, Violations> {
    s.parse().map_err(|_| {
        Violations(vec![Violation {
            field: "order_id".into(),
            problem: "is not a mesh order id (o1-PPPP-<20 hex digits>)",
        }])
    })
}

pub fn customer_id(s: &str) -> Result<(), Violations> {
    let mut v = Violations::default();
    v.check(
        is_valid_customer_id(s),
        "customer_id",
        "must be 1-64 characters of letters, digits, `-`, `_`, `.` or `:`",
    );
    v.into_result()
}

/// A purpose is a short code (`ndr-callback`, `fulfilment`), not free text: it is recorded in the
/// audit trail in the clear, which must never hold PII, so it has no digits (no phone number,
/// pincode or order number can hide in it) and no `@`.
pub(crate) fn is_valid_purpose(s: &str) -> bool {
    s.len() <= MAX_PURPOSE_LEN
        && s.bytes().next().is_none_or(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || matches!(b, b'-' | b'_' | b'.'))
}

pub fn purpose(s: &str) -> Result<(), Violations> {
    let mut v = Violations::default();
    v.check(
        is_valid_purpose(s),
        "purpose",
        "must be a short code: lowercase letters, `-`, `_` or `.` (at most 64, no digits)",
    );
    v.into_result()
}

pub(crate) const MAX_REASON_TEXT_CHARS: usize = 200;
/// Six digits, even spread out, could be most of a phone number or a pincode.
const MAX_DIGITS: usize = 5;

pub fn contact_handle(s: &str) -> Result<crate::domain::ids::ContactHandle, Violations> {
    s.parse().map_err(|_| {
        Violations(vec![Violation {
            field: "contact_handle".into(),
            problem: "is not a contact handle (ch1-PPPP-<24 hex digits>)",
        }])
    })
}

/// Whether free text looks like it quotes contact details: an at sign (any width) or more than
/// `MAX_DIGITS` digits in any script, however they are spaced.
fn looks_like_contact(s: &str) -> bool {
    s.contains(['@', '\u{FF20}', '\u{FE6B}'])
        || s.chars().filter(|c| c.is_numeric()).count() > MAX_DIGITS
}

/// A reveal's reason: a code (like a purpose, but required) and words. The words go into the
/// audit trail (sealed under the customer's key), and a reason explains why, it never quotes the
/// buyer: text that looks like contact details (an `@`, more than five digits) is refused.
pub(crate) fn reveal_reason(code: &str, text_: &str) -> Result<(), Violations> {
    let mut v = Violations::default();
    v.check(!code.is_empty(), "reason_code", "is required");
    v.check(
        is_valid_purpose(code),
        "reason_code",
        "must be a short code: lowercase letters, `-`, `_` or `.` (at most 64, no digits)",
    );
    text(&mut v, "reason_text", text_, true, MAX_REASON_TEXT_CHARS);
    v.check(
        !looks_like_contact(text_),
        "reason_text",
        "must not contain contact details (an `@`, or more than five digits)",
    );
    v.into_result()
}

/// A checked status update.
#[derive(Debug)]
pub(crate) struct StatusUpdate {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub payment_status: Option<PaymentStatus>,
}

pub(crate) fn update_status(req: &UpdateOrderStatusRequest) -> Result<StatusUpdate, Violations> {
    let mut v = Violations::default();
    let id = order_id(&req.order_id).map_err(|e| v.0.extend(e.0)).ok();
    let status = OrderStatus::try_from(req.status)
        .ok()
        .filter(|s| *s != OrderStatus::Unspecified);
    v.check(status.is_some(), "status", "must be a known order status");
    if let Some(c) = &req.courier {
        text(&mut v, "courier.name", &c.name, false, MAX_PLACE_CHARS);
        v.check(
            c.awb.len() <= 40
                && c.awb
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "courier.awb",
            "must be at most 40 letters, digits or `-`",
        );
    }
    let payment_status = match req.payment_status {
        0 => None,
        s => {
            v.check(
                known_payment_status(s),
                "payment_status",
                "must be a known payment status",
            );
            PaymentStatus::try_from(s).ok()
        }
    };
    match (id, status) {
        (Some(order_id), Some(status)) if v.0.is_empty() => Ok(StatusUpdate {
            order_id,
            status,
            payment_status,
        }),
        _ => Err(v),
    }
}

#[cfg(test)]
mod reveal_tests {
    use super::*;

    #[test]
    fn reveal_reasons_need_a_code_and_words_without_contact_details() {
        assert!(reveal_reason("ndr-callback", "customer asked for a callback on NDR #2").is_ok());
        for (code, words, field) in [
            ("", "asked by the customer", "reason_code"),
            ("NDR Callback", "asked by the customer", "reason_code"),
            ("ndr", "", "reason_text"),
            ("ndr", "   ", "reason_text"),
            ("ndr", "call them on 9876543210", "reason_text"),
            ("ndr", "call them on 98765 43210", "reason_text"),
            ("ndr", "call 9-8-7-6-5-4", "reason_text"),
            (
                "ndr",
                "call \u{0967}\u{0968}\u{0969}\u{096A}\u{096B}\u{096C}",
                "reason_text",
            ),
            ("ndr", "mail ravi\u{FF20}example.com", "reason_text"),
            ("ndr2", "asked by the customer", "reason_code"),
            ("ndr", "mail ravi@example.com", "reason_text"),
            ("ndr", "line\u{7}bell", "reason_text"),
        ] {
            let e = reveal_reason(code, words).expect_err(words);
            assert_eq!(e.fields(), vec![field], "{code:?} {words:?}");
        }
        assert!(reveal_reason("ndr", &"x".repeat(201)).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::v1::Payment;

    pub(crate) fn good() -> CreateOrderRequest {
        CreateOrderRequest {
            customer_id: "cust-1".into(),
            external_ref: "SF-1001".into(),
            channel: Channel::Storefront as i32,
            customer: Some(crate::domain::fixtures::buyer()),
            items: crate::domain::fixtures::basket(),
            total_paise: 99_800,
            payment: Some(Payment {
                method: PaymentMethod::Cod as i32,
                amount_paise: 99_800,
                status: PaymentStatus::Pending as i32,
            }),
            consent: None,
            idempotency_key: String::new(),
        }
    }

    fn fields_of(req: &CreateOrderRequest) -> Vec<String> {
        create_order(req)
            .err()
            .map(|v| v.0.into_iter().map(|v| v.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn accepts_a_good_order() {
        assert_eq!(create_order(&good()), Ok(()));
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = Box<dyn Fn(&mut CreateOrderRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "customer_id",
                Box::new(|r| r.customer_id = "has space".into()),
            ),
            (
                "customer.phone",
                Box::new(|r| r.customer.as_mut().unwrap().phone = "9876543210".into()),
            ),
            (
                "customer.phone",
                Box::new(|r| r.customer.as_mut().unwrap().phone = "+915876543210".into()),
            ),
            (
                "customer.email",
                Box::new(|r| r.customer.as_mut().unwrap().email = "no-at-sign".into()),
            ),
            (
                "customer.name",
                Box::new(|r| r.customer.as_mut().unwrap().name = "x".repeat(101)),
            ),
            (
                "customer.address.pincode",
                Box::new(|r| {
                    r.customer
                        .as_mut()
                        .unwrap()
                        .address
                        .as_mut()
                        .unwrap()
                        .pincode = "056001".into()
                }),
            ),
            ("items", Box::new(|r| r.items.clear())),
            ("items[0].quantity", Box::new(|r| r.items[0].quantity = 0)),
            (
                "items[0].unit_price_paise",
                Box::new(|r| r.items[0].unit_price_paise = -5),
            ),
            ("total_paise", Box::new(|r| r.total_paise = -1)),
            ("channel", Box::new(|r| r.channel = 99)),
            (
                "payment.method",
                Box::new(|r| r.payment.as_mut().unwrap().method = 0),
            ),
        ];
        for (field, mutate) in cases {
            let mut r = good();
            mutate(&mut r);
            assert!(
                fields_of(&r).iter().any(|f| f == field),
                "{field} not reported: {:?}",
                fields_of(&r)
            );
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut r = good();
        r.customer_id.clear();
        r.items.clear();
        r.total_paise = 0;
        assert_eq!(
            fields_of(&r),
            [
                "customer_id",
                "items",
                "total_paise",
                "payment.amount_paise"
            ]
        );
    }

    #[test]
    fn a_purpose_is_a_code_not_free_text() {
        assert!(purpose("ndr-callback").is_ok());
        assert!(purpose("").is_ok());
        for bad in [
            "call Ravi +919812345678",
            "NDR",
            "x".repeat(65).as_str(),
            "-leading",
        ] {
            assert_eq!(purpose(bad).unwrap_err().fields(), ["purpose"], "{bad}");
        }
    }

    #[test]
    fn messages_never_echo_the_value() {
        let mut r = good();
        r.customer.as_mut().unwrap().phone = "+91555SECRET".into();
        let msg = create_order(&r).unwrap_err().to_string();
        assert!(!msg.contains("SECRET"), "{msg}");
    }
}
