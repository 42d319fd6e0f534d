"""A third-party client of the Dark Store Mesh gateway, written only against proto/.

Generates Python stubs from proto/ with grpcio-tools, then talks mTLS gRPC to a real node:
creates an order as `storefront`, reads it as `oms`, moves it along as `oms`, and checks that
`storefront` may not update it. Prints one JSON object with what it saw; the Rust test asserts on it.
"""

import argparse
import importlib
import json
import pathlib
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc


def generate(proto_root: pathlib.Path, out: pathlib.Path) -> None:
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = [str(p.relative_to(proto_root)) for p in (proto_root / "dsm" / "v1").glob("*.proto")]
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")


def channel(target: str, ca: str, cert: str, key: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(ca).read_bytes(),
        private_key=pathlib.Path(key).read_bytes(),
        certificate_chain=pathlib.Path(cert).read_bytes(),
    )
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--storefront-cert", required=True)
    ap.add_argument("--storefront-key", required=True)
    ap.add_argument("--oms-cert", required=True)
    ap.add_argument("--oms-key", required=True)
    args = ap.parse_args()

    out = pathlib.Path(tempfile.mkdtemp(prefix="dsm-py-"))
    generate(pathlib.Path(args.proto_root), out)
    sys.path.insert(0, str(out))
    order_pb2 = importlib.import_module("dsm.v1.order_pb2")
    gateway_pb2 = importlib.import_module("dsm.v1.gateway_pb2")
    gateway_grpc = importlib.import_module("dsm.v1.gateway_pb2_grpc")

    storefront = gateway_grpc.OrderGatewayStub(channel(args.target, args.ca, args.storefront_cert, args.storefront_key))
    oms = gateway_grpc.OrderGatewayStub(channel(args.target, args.ca, args.oms_cert, args.oms_key))

    req = gateway_pb2.CreateOrderRequest(
        customer_id="py-cust-1",
        external_ref="PY-1",
        channel=order_pb2.CHANNEL_MARKETPLACE,
        customer=order_pb2.Customer(
            name="Farhan Qureshi",
            phone="+917700112233",
            email="farhan@example.org",
            address=order_pb2.Address(line1="4 Park Street", city="Kolkata", state="West Bengal", pincode="700016"),
        ),
        items=[order_pb2.LineItem(sku="TEA-500G", name="Darjeeling tea", quantity=3, unit_price_paise=45000)],
        total_paise=135000,
        payment=order_pb2.Payment(method=order_pb2.PAYMENT_METHOD_UPI, amount_paise=135000, status=order_pb2.PAYMENT_STATUS_PAID),
    )
    created = storefront.CreateOrder(req, timeout=10).order
    read = oms.GetOrder(gateway_pb2.GetOrderRequest(order_id=created.order_id, purpose="py-test"), timeout=10).order
    packed = oms.UpdateOrderStatus(
        gateway_pb2.UpdateOrderStatusRequest(order_id=created.order_id, status=order_pb2.ORDER_STATUS_PACKED), timeout=10
    ).order
    try:
        storefront.UpdateOrderStatus(
            gateway_pb2.UpdateOrderStatusRequest(order_id=created.order_id, status=order_pb2.ORDER_STATUS_SHIPPED), timeout=10
        )
        storefront_update = "OK"
    except grpc.RpcError as e:
        storefront_update = e.code().name
    revealed = oms.RevealField(
        gateway_pb2.RevealFieldRequest(
            order_id=created.order_id,
            field="customer.name",
            reason_code="parcel-name-check",
            reason_text="courier asked to confirm the name on the parcel",
        ),
        timeout=10,
    )
    try:
        storefront.CreateOrder(gateway_pb2.CreateOrderRequest(customer_id="py-cust-1"), timeout=10)
        invalid = "OK"
    except grpc.RpcError as e:
        invalid = e.code().name + ": " + e.details()

    print(json.dumps({
        "order_id": created.order_id,
        "storefront_sees_phone": created.customer.phone,
        "oms_sees_phone": read.customer.phone,
        "oms_sees_email": read.customer.email,
        "oms_sees_name": read.customer.name,
        "oms_sees_total": read.total_paise,
        "oms_reveals_name": revealed.value,
        "reveals_remaining": revealed.remaining,
        "status_after_pack": order_pb2.OrderStatus.Name(packed.status),
        "storefront_update": storefront_update,
        "invalid_create": invalid,
    }))


if __name__ == "__main__":
    main()
