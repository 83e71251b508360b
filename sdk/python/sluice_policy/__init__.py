"""Helpers for Sluice policies written in Python (built with componentize-py).

The types and host functions themselves are generated from wit/policy.wit by componentize-py
when a policy is built; import them from `wit_world.imports` (`types`, `host`). This module adds
the few things every policy needs and the bindings leave verbose:

- logging: `trace`, `debug`, `info`, `warn`, `error` (one line in the proxy's log, tagged with the
  policy's name; lines over 1 KiB are cut, at most 32 lines per call are kept);
- configuration: `config_object` (the `configure` text as a dict, or a clean `Err`),
  `cidrs` (a list of CIDR strings as `ipaddress` networks, or a clean `Err`);
- authz: `allow`, `deny`, `client_cn`, `source_in`;
- request (world `request`, package 0.3.0): `header`, `header_values`, `forward`, `reply`,
  `reply_json`, `set_header`, `append_header`, `remove_header`. `on_request` receives a
  `RequestHead` (from `wit_world.imports.http`) whose methods ask the host for one part each
  (`request.header("x-api-key")`, `request.path()`, `request.route()`); read what you need once.

Raising `componentize_py_types.Err(message)` from `configure` rejects the policy with that
message. Any other exception escaping an export traps the call: the host reports the traceback
(from the guest's stderr) and applies the policy's failure mode.
"""

import ipaddress
import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import host, types

__all__ = [
    "Err",
    "allow",
    "append_header",
    "cidrs",
    "client_cn",
    "config_object",
    "debug",
    "deny",
    "error",
    "forward",
    "header",
    "header_values",
    "info",
    "remove_header",
    "reply",
    "reply_json",
    "set_header",
    "source_in",
    "trace",
    "warn",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


# ----- logging -----


def trace(message: str) -> None:
    host.log(types.LogLevel.TRACE, message)


def debug(message: str) -> None:
    host.log(types.LogLevel.DEBUG, message)


def info(message: str) -> None:
    host.log(types.LogLevel.INFO, message)


def warn(message: str) -> None:
    host.log(types.LogLevel.WARN, message)


def error(message: str) -> None:
    host.log(types.LogLevel.ERROR, message)


# ----- configuration -----


def config_object(config: str) -> Dict[str, Any]:
    """The `[[policy]] config` JSON as a dict; raises `Err` (rejecting the policy) otherwise."""
    try:
        value = json.loads(config)
    except ValueError as e:
        raise Err(f"config is not JSON: {e}")
    if not isinstance(value, dict):
        raise Err(f"config must be a JSON object, not {type(value).__name__}")
    return value


def cidrs(value: Any, key: str = "source_cidrs") -> List[Network]:
    """A JSON list of CIDR strings (`["10.0.0.0/8", "::1/128"]`) as networks; raises `Err`
    naming `key` and the bad entry otherwise."""
    if not isinstance(value, list):
        raise Err(f"`{key}` must be a list of CIDR strings")
    networks = []
    for entry in value:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError) as e:
            raise Err(f"`{key}`: {entry!r} is not a CIDR range ({e})")
    return networks


# ----- authz -----


def allow() -> "types.Decision":
    return types.Decision_Allow()


def deny(reason: str) -> "types.Decision":
    """Refuses the connection; `reason` is logged by the proxy."""
    return types.Decision_Deny(reason)


def client_cn(peer: "types.Peer") -> Optional[str]:
    """The verified client certificate's subject CN; `None` without a certificate or a CN."""
    cert = peer.client_certificate
    return cert.subject_cn if cert is not None else None


def source_in(peer: "types.Peer", networks: Iterable[Network]) -> bool:
    """Whether the peer's source address lies in one of `networks`."""
    try:
        address = ipaddress.ip_address(peer.source_address)
    except ValueError:
        return False
    return any(address in network for network in networks)


# ----- request (world `request`) -----

Headers = Sequence[Tuple[str, str]]


def _headers_of(request_or_headers: Any) -> Headers:
    return getattr(request_or_headers, "headers", request_or_headers)


def header(request_or_headers: Any, name: str) -> Optional[str]:
    """The first value of header `name` (any case), or `None`. Takes the `RequestHead` that
    `on_request` receives (one question to the host), an `HttpRequest`, or a list of
    (name, value) pairs."""
    if callable(getattr(request_or_headers, "header", None)):
        return request_or_headers.header(name)
    wanted = name.lower()
    for field, value in _headers_of(request_or_headers):
        if field.lower() == wanted:
            return value
    return None


def header_values(request_or_headers: Any, name: str) -> List[str]:
    """Every value of header `name` (any case), in the order received."""
    if callable(getattr(request_or_headers, "header_values", None)):
        return request_or_headers.header_values(name)
    wanted = name.lower()
    return [v for f, v in _headers_of(request_or_headers) if f.lower() == wanted]


def set_header(name: str, value: str) -> "types.HeaderEdit":
    """Replaces every field `name` with one."""
    return types.HeaderEdit_Set((name, value))


def append_header(name: str, value: str) -> "types.HeaderEdit":
    """Adds a field, keeping the existing ones."""
    return types.HeaderEdit_Append((name, value))


def remove_header(name: str) -> "types.HeaderEdit":
    """Removes every field `name`."""
    return types.HeaderEdit_Remove(name)


def forward(
    headers: Sequence["types.HeaderEdit"] = (),
    path: Optional[str] = None,
    service: Optional[str] = None,
    response_context: Optional[str] = None,
) -> "types.Action":
    """Sends the request on, with `headers` edited (and optionally a new path, another of the
    route's allowed services, or a context that asks for `on_response`)."""
    return types.Action_Forward(
        types.Forward(
            headers=list(headers),
            path=path,
            service=service,
            response_context=response_context,
        )
    )


def reply(status: int, body: bytes = b"", headers: Headers = ()) -> "types.Action":
    """Answers the request without forwarding it (body at most 64 KiB)."""
    return types.Action_Reply(
        types.Reply(status=status, headers=list(headers), body=bytes(body))
    )


def reply_json(status: int, value: Any, headers: Headers = ()) -> "types.Action":
    """Answers with `value` as a JSON body and `content-type: application/json`."""
    body = json.dumps(value, separators=(",", ":")).encode()
    return reply(status, body, [("content-type", "application/json"), *headers])
