# The gRPC test client of sluice-test-support (crates/test-support/src/grpc.rs embeds this file).
# Run by /usr/bin/python3 (Debian's python3-grpcio) with raw-bytes messages (no generated code).
#
# stdin: {"target": "host:port", "calls": [CALL, ...]} with CALL = {"kind": "unary" |
# "server_stream" | "client_stream" | "bidi", "method": "/pkg.Service/Method", "messages":
# [base64, ...], "timeout": seconds or null, "metadata": [[key, value], ...], "tls": null or
# {"root_cert": path, "server_name": name or null}}.
# stdout: [OUTCOME, ...] in the order of the calls, all made at once (one thread each, calls
# with the same TLS settings sharing one channel), OUTCOME = {"code": "OK", "details": "...",
# "responses": [base64, ...], "initial_metadata": [[k, v], ...], "trailing_metadata": [...],
# "elapsed_ms": n}.
import base64
import json
import queue
import sys
import time
from concurrent import futures

import grpc


def channel_for(target, tls):
    if tls is None:
        return grpc.insecure_channel(target)
    with open(tls["root_cert"], "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = []
    if tls.get("server_name"):
        options.append(("grpc.ssl_target_name_override", tls["server_name"]))
    return grpc.secure_channel(target, credentials, options=options)


def pairs(metadata):
    out = []
    for key, value in metadata or ():
        out.append([key, value if isinstance(value, str) else base64.b64encode(value).decode()])
    return out


def ping_pong(messages, replied):
    """Sends each message only once the reply to the previous one was read."""
    for message in messages:
        yield message
        if replied.get() is None:
            return


def run(channel, call):
    kind, method = call["kind"], call["method"]
    messages = [base64.b64decode(m) for m in call["messages"]]
    options = {"timeout": call.get("timeout"), "metadata": [tuple(p) for p in call.get("metadata", [])]}
    responses = []
    started = time.monotonic()
    try:
        if kind == "unary":
            response, outcome = channel.unary_unary(method).with_call(messages[0], **options)
            responses.append(response)
        elif kind == "client_stream":
            response, outcome = channel.stream_unary(method).with_call(iter(messages), **options)
            responses.append(response)
        elif kind == "server_stream":
            outcome = channel.unary_stream(method)(messages[0], **options)
            responses.extend(outcome)
        else:
            replied = queue.Queue()
            outcome = channel.stream_stream(method)(ping_pong(messages, replied), **options)
            try:
                for response in outcome:
                    responses.append(response)
                    replied.put(True)
            finally:
                replied.put(None)
    except grpc.RpcError as error:
        outcome = error
    return {
        "code": outcome.code().name,
        "details": outcome.details() or "",
        "responses": [base64.b64encode(r).decode() for r in responses],
        "initial_metadata": pairs(outcome.initial_metadata()),
        "trailing_metadata": pairs(outcome.trailing_metadata()),
        "elapsed_ms": round((time.monotonic() - started) * 1000),
    }


def main():
    request = json.load(sys.stdin)
    calls = request["calls"]
    channels = {}
    for call in calls:
        key = json.dumps(call.get("tls"), sort_keys=True)
        if key not in channels:
            channels[key] = channel_for(request["target"], call.get("tls"))
    with futures.ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        running = [pool.submit(run, channels[json.dumps(c.get("tls"), sort_keys=True)], c) for c in calls]
        outcomes = [r.result() for r in running]
    json.dump(outcomes, sys.stdout)
    sys.stdout.flush()


main()
