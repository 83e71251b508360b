"""{{name}}: a Sluice `routing` policy in Python (componentize-py).

Every service gets one route, `/<service>` (under `path_prefix`, default `/`), spreading its
traffic evenly over the instances whose health is not `critical`.
"""

import json
from typing import List

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    HealthStatus,
    Instance,
    LogLevel,
    Protocol,
    Route,
    RouteEntry,
    RouteEntry_Route,
    RouteTarget,
    TlsOptions,
)

# Module state: componentize-py may create a new `WitWorld` object for each export call, so
# what `configure` builds lives here (one copy per Wasm instance).
PATH_PREFIX = "/"


class WitWorld(wit_world.WitWorld):
    """The exports of the `routing` world."""

    def configure(self, config: str) -> None:
        try:
            settings = json.loads(config)
        except ValueError as error:
            raise Err(f"invalid config: {error}")
        unknown = set(settings) - {"path_prefix"}
        if unknown:
            raise Err(f"invalid config: unknown field(s) {sorted(unknown)}")
        prefix = settings.get("path_prefix", "/")
        if not prefix.startswith("/"):
            raise Err(f"path_prefix {prefix!r} must start with /")
        global PATH_PREFIX
        PATH_PREFIX = prefix if prefix.endswith("/") else prefix + "/"
        host.log(LogLevel.INFO, f"configured: routes under {PATH_PREFIX}")

    def build_routes(self, catalog: List[Instance]) -> List[RouteEntry]:
        services: dict[str, list[Instance]] = {}
        for instance in catalog:
            if instance.health != HealthStatus.CRITICAL:
                services.setdefault(instance.service, []).append(instance)
        return [RouteEntry_Route(route(name, services[name])) for name in sorted(services)]


def route(service: str, instances: List[Instance]) -> Route:
    """One HTTP route for `service`, its traffic spread evenly over `instances`."""
    weight = 1.0 / len(instances)
    return Route(
        host=None,
        path_prefix=f"{PATH_PREFIX}{service}",
        listen_port=None,
        service=service,
        targets=[
            RouteTarget(
                instance_id=instance.id,
                service=service,
                address=instance.address,
                port=instance.port,
                weight=weight,
            )
            for instance in instances
        ],
        strip=None,
        prepend=None,
        protocol=Protocol.HTTP,
        tls=TlsOptions(skip_verify=False),
        upstream_host=None,
        redirect=None,
        access=[],
    )
