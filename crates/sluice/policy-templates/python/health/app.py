"""{{name}}: a Sluice `health` policy in Python (componentize-py).

A probe answering one of `up_statuses` (default: 200) is up; anything else (another status, a
timeout, a refused connection) is down, with the reason shown in the admin API.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    Instance,
    LogLevel,
    ProbeResult,
    Role,
    Up,
    Verdict_Down,
    Verdict_Up,
)

# Module state: componentize-py may create a new `WitWorld` object for each export call, so
# what `configure` builds lives here (one copy per Wasm instance).
UP_STATUSES = [200]


class WitWorld(wit_world.WitWorld):
    """The exports of the `health` world."""

    def configure(self, config: str) -> None:
        try:
            settings = json.loads(config)
        except ValueError as error:
            raise Err(f"invalid config: {error}")
        unknown = set(settings) - {"up_statuses"}
        if unknown:
            raise Err(f"invalid config: unknown field(s) {sorted(unknown)}")
        statuses = settings.get("up_statuses", [200])
        if not statuses:
            raise Err("up_statuses is empty: nothing could ever be up")
        global UP_STATUSES
        UP_STATUSES = [int(status) for status in statuses]
        host.log(LogLevel.INFO, f"configured: up on {UP_STATUSES}")

    def evaluate(self, instance: Instance, probe: ProbeResult) -> Verdict_Up | Verdict_Down:
        if probe.error is not None:
            return Verdict_Down(f"probe failed: {probe.error.message}")
        if probe.status is None:
            return Verdict_Down("the probe carried no status")
        if probe.status in UP_STATUSES:
            return Verdict_Up(Up(role=Role.ANY, weight=None))
        host.log(LogLevel.INFO, f"{instance.id} answered {probe.status}")
        return Verdict_Down(f"status {probe.status}")
