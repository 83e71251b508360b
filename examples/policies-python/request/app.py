"""A `request` policy in Python: requests must carry an API key, else they are answered 401 with
a JSON body and never reach the service.

Config (`[[policy]] config`, JSON):
    api_key         the expected key
    api_key_kv_key  a KV key holding the expected key, read on every request (rotates without a
                    reload); when both are given, the KV value wins while the key exists
    header          the request header carrying the key (default `x-api-key`)

A request with the right key is forwarded with the key removed and `x-authenticated: api-key`
set, to the route's `canary` service instead when it sends `x-canary: 1` and the route allows
`canary`; the response gets `x-policy: python-request` (`on_response`).
"""

import hmac
from typing import List, Optional, Tuple

import wit_world
from wit_world.imports import host, types
from wit_world.imports.http import RequestHead

import sluice_policy as sp

_api_key: Optional[str] = None
_kv_key: Optional[str] = None
_header = "x-api-key"


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        global _api_key, _kv_key, _header
        settings = sp.config_object(config)
        for name in ("api_key", "api_key_kv_key", "header"):
            if name in settings and not isinstance(settings[name], str):
                raise sp.Err(f"`{name}` must be a string")
        _api_key = settings.get("api_key")
        _kv_key = settings.get("api_key_kv_key")
        _header = settings.get("header", "x-api-key").lower()
        if not _api_key and not _kv_key:
            raise sp.Err("give `api_key` or `api_key_kv_key`")

    def on_request(self, request: RequestHead) -> types.Action:
        presented = sp.header(request, _header)
        if presented is None:
            return unauthorized(f"missing {_header}")
        expected = expected_key()
        if expected is None or not hmac.compare_digest(presented.encode(), expected.encode()):
            return unauthorized(f"wrong {_header}")
        service = None
        if sp.header(request, "x-canary") == "1" and "canary" in request.route().allowed_services:
            service = "canary"
        return sp.forward(
            headers=[sp.remove_header(_header), sp.set_header("x-authenticated", "api-key")],
            service=service,
            response_context="python-request",
        )

    def on_response(
        self, status: int, headers: List[Tuple[str, str]], context: str
    ) -> List[types.HeaderEdit]:
        return [sp.set_header("x-policy", context)]


def expected_key() -> Optional[str]:
    if _kv_key is not None:
        value = host.kv_get(_kv_key)
        if value is not None:
            return value.strip()
    return _api_key


def unauthorized(reason: str) -> types.Action:
    return sp.reply_json(
        401,
        {"error": "unauthorized", "reason": reason},
        headers=[("www-authenticate", 'ApiKey header="' + _header + '"')],
    )
