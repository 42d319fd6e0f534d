//! The delivery lifecycle of an order: which status may follow which.
//!
//! PLACED -> PACKED -> SHIPPED -> OUT_FOR_DELIVERY -> DELIVERED; OUT_FOR_DELIVERY -> DELIVERY_FAILED
//! (NDR) -> OUT_FOR_DELIVERY (re-attempt) | RTO; SHIPPED -> RTO; PLACED | PACKED -> CANCELLED.
//! Setting the current status again is allowed (an idempotent retry); DELIVERED, RTO and CANCELLED
//! are final.

use mesh_proto::v1::OrderStatus;

pub(crate) fn can_transition(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    from == to
        || matches!(
            (from, to),
            (Placed, Packed)
                | (Packed, Shipped)
                | (Shipped, OutForDelivery)
                | (OutForDelivery, Delivered)
                | (OutForDelivery, DeliveryFailed)
                | (DeliveryFailed, OutForDelivery)
                | (DeliveryFailed, Rto)
                | (Shipped, Rto)
                | (Placed, Cancelled)
                | (Packed, Cancelled)
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    #[test]
    fn final_states_stay_final() {
        for end in [Delivered, Rto, Cancelled] {
            for to in [
                Placed,
                Packed,
                Shipped,
                OutForDelivery,
                Delivered,
                DeliveryFailed,
                Rto,
                Cancelled,
            ] {
                assert_eq!(can_transition(end, to), end == to, "{end:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn happy_path_and_ndr_retry_are_allowed() {
        let path = [
            Placed,
            Packed,
            Shipped,
            OutForDelivery,
            DeliveryFailed,
            OutForDelivery,
            Delivered,
        ];
        assert!(path.windows(2).all(|w| can_transition(w[0], w[1])));
        assert!(!can_transition(Placed, Delivered));
        assert!(!can_transition(Shipped, Cancelled));
    }
}
