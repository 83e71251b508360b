# The gRPC test server of sluice-test-support (crates/test-support/src/grpc.rs embeds this file).
# Run by /usr/bin/python3 (Debian's python3-grpcio); no generated code: every handler takes and
# returns raw bytes (no (de)serializers), and the two health messages are encoded by hand.
#
# argv: TAG [CERT_PEM KEY_PEM]. Prints "PORT <port> <control port>" once listening on
# 127.0.0.1:0 (with TLS, the same services are also served in cleartext on the control port; the
# two are one without TLS). Exits when its stdin closes (the Rust side holds it), so a test
# process that dies leaves no server behind.
import json
import sys
import threading
import time
from concurrent import futures

import grpc

TAG = sys.argv[1]
TAG_BYTES = TAG.encode()
LOCK = threading.Lock()
# Serving status by service name ("" = the whole server); a name absent here is NOT_FOUND.
HEALTH = {"": 1}
STATUS_NUMBERS = {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2, "SERVICE_UNKNOWN": 3}
# What the last call of each method received, and the last call of any method under "".
SEEN = {}


def record(method, context):
    """Keeps what the call received: its metadata, :authority and deadline."""
    host = getattr(getattr(getattr(context, "_rpc_event", None), "call_details", None), "host", None)
    remaining = context.time_remaining()
    entry = {
        "method": method,
        # grpcio does not expose :authority publicly; its call details hold it.
        "authority": host.decode() if isinstance(host, bytes) else host,
        "metadata": [[k, v if isinstance(v, str) else v.hex()] for k, v in context.invocation_metadata()],
        # grpc-timeout is consumed by grpc core and becomes the call's deadline.
        "deadline_ms": round(remaining * 1000) if remaining is not None and remaining < 1e6 else None,
        "peer": context.peer(),
    }
    with LOCK:
        SEEN[method] = entry
        SEEN[""] = entry


def greet(context):
    context.send_initial_metadata((("x-served-by", TAG),))
    context.set_trailing_metadata((("x-tag", TAG),))


def unary(request, context):
    record("/sluice.test.Echo/Unary", context)
    if request.startswith(b"sleep:"):
        ms = int(request[len(b"sleep:"):].split(b":")[0])
        time.sleep(ms / 1000)
    greet(context)
    if request.startswith(b"fail:"):
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        context.set_details(request[len(b"fail:"):].decode("utf-8", "replace"))
        return b""
    return request


def server_stream(request, context):
    record("/sluice.test.Echo/ServerStream", context)
    greet(context)
    for i in range(int(request.decode() or "0")):
        yield TAG_BYTES + b":" + str(i).encode()


def client_stream(requests, context):
    record("/sluice.test.Echo/ClientStream", context)
    greet(context)
    return b"".join(requests)


def bidi(requests, context):
    record("/sluice.test.Echo/Bidi", context)
    greet(context)
    # Each reply goes out before the next message is read: ping-pong, not batch.
    for message in requests:
        yield TAG_BYTES + b":" + message


def read_service(request):
    """HealthCheckRequest.service: field 1, length-delimited (tag 0x0a); absent = ""."""
    i = 0
    while i < len(request):
        tag, i = varint(request, i)
        if tag & 7 == 2:
            length, i = varint(request, i)
            if tag >> 3 == 1:
                return request[i:i + length].decode()
            i += length
        elif tag & 7 == 0:
            _, i = varint(request, i)
        else:
            raise ValueError("unsupported wire type")
    return ""


def varint(data, i):
    value, shift = 0, 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def health_check(request, context):
    record("/grpc.health.v1.Health/Check", context)
    service = read_service(request)
    with LOCK:
        status = HEALTH.get(service)
    if status is None:
        # As grpc's own health service answers a name it does not know.
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("unknown service " + service)
        return b""
    # HealthCheckResponse.status: field 1, varint (tag 0x08); 0 is left out, as proto3 does.
    return b"\x08" + bytes([status]) if status else b""


def set_health(request, context):
    service, _, status = request.decode().partition("=")
    with LOCK:
        if status == "-":
            HEALTH.pop(service, None)
        else:
            HEALTH[service] = STATUS_NUMBERS[status]
    return b""


def last_metadata(request, context):
    with LOCK:
        return json.dumps(SEEN.get(request.decode())).encode()


def handlers():
    unary_unary = grpc.unary_unary_rpc_method_handler
    return (
        grpc.method_handlers_generic_handler("sluice.test.Echo", {
            "Unary": unary_unary(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        }),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": unary_unary(health_check),
        }),
        grpc.method_handlers_generic_handler("sluice.test.Control", {
            "SetHealth": unary_unary(set_health),
            "LastMetadata": unary_unary(last_metadata),
        }),
    )


def main():
    # Enough workers for the load tests' concurrent calls (each open call holds one).
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
    server.add_generic_rpc_handlers(handlers())
    if len(sys.argv) > 3:
        with open(sys.argv[2], "rb") as cert, open(sys.argv[3], "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
        # The test's control calls go in cleartext, so they need no CA.
        control = server.add_insecure_port("127.0.0.1:0")
    else:
        port = control = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT", port, control, flush=True)
    sys.stdin.read()
    server.stop(0)


main()
