//! The `peer_frames` target: `PeerRequest::decode` and `PeerResponse::decode`, the frames of a
//! peer's QUIC stream.

use super::{bytes_from, fuzz, layouts};
use crate::cluster::layout::Layout;
use crate::domain::ids::{OrderId, Partition};
use crate::security::control_key::ControlKey;
use crate::security::crypto::TransferKey;
use mesh_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message as _;

pub(super) fn peer_frame_seeds(key: &ControlKey) -> Vec<Vec<u8>> {
    let signed = layouts()[2].sign(key);
    let order = OrderId::mint(Partition::new(7).unwrap()).to_string();
    let proof = pb::ClientProof {
        chain: vec![
            vec![0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x01],
            vec![0x30, 0x00],
        ],
        timestamp_unix_ms: 1_763_900_000_000,
        nonce: vec![7; 16],
        signature: vec![0x30, 0x44, 0x02, 0x20, 1, 2, 3],
        audience: "n01".into(),
    };
    let call = pb::ForwardedCall {
        method: "/dsm.v1.OrderGateway/GetOrder".into(),
        request: pb::GetOrderRequest {
            order_id: order,
            purpose: "support".into(),
            fields: vec!["customer.name".into()],
        }
        .encode_to_vec(),
        proof: Some(proof),
    };
    use pb::peer_request::Body;
    use pb::peer_response::Result as R;
    let request = |body| {
        pb::PeerRequest {
            deadline_unix_ms: 1_763_900_000_000,
            body: Some(body),
        }
        .encode_to_vec()
    };
    let response = |result| {
        pb::PeerResponse {
            result: Some(result),
        }
        .encode_to_vec()
    };
    vec![
        request(Body::Call(call)),
        request(Body::Ping(pb::Ping {})),
        request(Body::Charge(pb::RevealCharge {
            principal: "spiffe://mesh.test/client/oms/desk-1".into(),
        })),
        request(Body::Pull(pb::HandoffPull {
            partition: 7,
            layout: Some(signed.clone()),
        })),
        request(Body::Query(pb::HandoffQuery {
            partitions: vec![0, 7, 4095],
        })),
        request(Body::Layout(pb::LayoutPush {
            layout: Some(signed),
        })),
        response(R::Response(vec![0x0a, 0x03, b'a', b'b', b'c'])),
        response(R::Status(pb::PeerStatus {
            code: 14,
            message: "moving".into(),
            moved: true,
        })),
        response(R::Pong(pb::Ping {})),
        response(R::Allowance(pb::RevealAllowance {
            granted: true,
            remaining: 19,
            retry_after_ms: 0,
            limit: 20,
            window_ms: 3_600_000,
        })),
        response(R::Partition(pb::PartitionData {
            partition: 7,
            customers: vec![pb::TransferredCustomer {
                data_key: vec![9; 32],
                orders: vec![pb::SealedOrder {
                    storage_key: vec![1; 40],
                    sealed: vec![2; 60],
                }],
            }],
            spent_proofs: vec![pb::SpentProof {
                timestamp_unix_ms: 1_763_900_000_000,
                nonce: vec![3; 16],
            }],
            proofs_not_before_unix_ms: 1_763_899_000_000,
        })),
        response(R::Holdings(pb::HandoffAnswer {
            holdings: vec![pb::PartitionHolding {
                partition: 7,
                holding: pb::Holding::Pending as i32,
                pending_from: "n02".into(),
            }],
        })),
    ]
}

#[test]
fn fuzz_peer_frames_never_panics() {
    let (key, _) = ControlKey::generate();
    let public = key.public();
    fuzz("peer_frames", bytes_from(peer_frame_seeds(&key)), |bytes| {
        if let Ok(req) = pb::PeerRequest::decode(bytes.as_slice()) {
            let again = pb::PeerRequest::decode(req.encode_to_vec().as_slice()).ok();
            prop_assert_eq!(again.as_ref(), Some(&req));
            // What the receiver does next with the frames that carry a layout.
            use pb::peer_request::Body;
            let signed = match &req.body {
                Some(Body::Pull(p)) => p.layout.as_ref(),
                Some(Body::Layout(p)) => p.layout.as_ref(),
                _ => None,
            };
            if let Some(signed) = signed {
                let _ = Layout::verify(signed, &public);
            }
        }
        if let Ok(resp) = pb::PeerResponse::decode(bytes.as_slice()) {
            let again = pb::PeerResponse::decode(resp.encode_to_vec().as_slice()).ok();
            prop_assert_eq!(again.as_ref(), Some(&resp));
            if let Some(pb::peer_response::Result::Partition(data)) = &resp.result {
                for c in &data.customers {
                    let _ = TransferKey::from_bytes(&c.data_key);
                }
            }
        }
        Ok(())
    });
}
