"""A minimal OpenTelemetry collector for tests/tests/telemetry.rs: an OTLP/gRPC trace receiver.

Implements opentelemetry.proto.collector.trace.v1.TraceService/Export with grpcio and the
generated messages of the `opentelemetry-proto` package. Every span received is written to --out
as one JSON line (resource attributes, scope, name, kind, ids, attributes, events, status); the
raw bytes of every Export request are appended to --out + ".bin", so the test can search exactly
what went over the wire. Prints {"port": N} once it listens on 127.0.0.1 (an ephemeral port), and
serves until it is killed or its stdin closes.
"""

import argparse
import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def any_value(v):
    """An OTLP AnyValue as a plain JSON value."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out_path):
        self.lock = threading.Lock()
        self.out = open(out_path, "a", encoding="utf-8")
        self.raw = open(out_path + ".bin", "ab")

    def Export(self, request, context):
        with self.lock:
            self.raw.write(request.SerializeToString())
            self.raw.flush()
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        record = {
                            "resource": resource,
                            "scope": ss.scope.name,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "attributes": attributes(span.attributes),
                            "events": [
                                {"name": e.name, "attributes": attributes(e.attributes)}
                                for e in span.events
                            ],
                            "links": [attributes(link.attributes) for link in span.links],
                            "status": {
                                "code": span.status.code,
                                "message": span.status.message,
                            },
                        }
                        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="JSON lines file for received spans")
    args = parser.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(args.out), server)
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        sys.exit("could not bind 127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    # Until the test closes our stdin (or kills us).
    sys.stdin.read()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
