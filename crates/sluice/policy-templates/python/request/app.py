"""{{name}}: a Sluice `request` policy in Python (componentize-py), attached to routes with
`policy = "{{name}}"`.

Requests carrying the header `required_header` (default `authorization`) are forwarded with
`x-checked-by: {{name}}` added; others are answered `401` with Sluice's JSON error shape.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.http import RequestHead
from wit_world.imports.types import (
    Action_Forward,
    Action_Reply,
    Forward,
    HeaderEdit_Set,
    LogLevel,
    Reply,
)

# Module state: componentize-py may create a new `WitWorld` object for each export call, so
# what `configure` builds lives here (one copy per Wasm instance).
REQUIRED_HEADER = "authorization"


class WitWorld(wit_world.WitWorld):
    """The exports of the `request` world."""

    def configure(self, config: str) -> None:
        try:
            settings = json.loads(config)
        except ValueError as error:
            raise Err(f"invalid config: {error}")
        if not isinstance(settings, dict):
            raise Err("invalid config: expected a JSON object")
        unknown = set(settings) - {"required_header"}
        if unknown:
            raise Err(f"invalid config: unknown field(s) {sorted(unknown)}")
        header = settings.get("required_header", "authorization")
        if not isinstance(header, str) or not header:
            raise Err("required_header must be a non-empty string")
        global REQUIRED_HEADER
        # Header names reach the policy in lower case.
        REQUIRED_HEADER = header.lower()
        host.log(LogLevel.INFO, f"configured: requests need `{REQUIRED_HEADER}`")

    # `request` is read on demand: each method (`header`, `path`, ...) asks the host for that
    # part only.
    def on_request(self, request: RequestHead):
        if request.header(REQUIRED_HEADER) is None:
            host.log(LogLevel.INFO, f"refused {request.method()} {request.path()}")
            body = json.dumps(
                {"error": "unauthorized", "detail": f"missing {REQUIRED_HEADER}"},
                separators=(",", ":"),
            )
            return Action_Reply(
                Reply(
                    status=401,
                    headers=[("content-type", "application/json")],
                    body=(body + "\n").encode(),
                )
            )
        edits = [HeaderEdit_Set(("x-checked-by", "{{name}}"))]
        return Action_Forward(
            Forward(headers=edits, path=None, service=None, response_context=None)
        )

    def on_response(self, status, headers, context):
        return []
