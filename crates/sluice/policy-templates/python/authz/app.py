"""{{name}}: a Sluice `authz` policy in Python (componentize-py).

Allows peers whose source address lies in `allowed` (default: loopback) and, when
`client_cns` is set, that present a verified client certificate with one of those subject
CNs. Everything else is denied with a reason.
"""

import ipaddress
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import Decision_Allow, Decision_Deny, LogLevel, Peer


class Settings:
    """The configured policy, built by `configure`."""

    def __init__(self, ranges, client_cns):
        self.ranges = ranges
        self.client_cns = client_cns


# Module state: componentize-py may create a new `WitWorld` object for each export call, so
# what `configure` builds lives here (one copy per Wasm instance).
SETTINGS = Settings([], [])


class WitWorld(wit_world.WitWorld):
    """The exports of the `authz` world."""

    def configure(self, config: str) -> None:
        try:
            settings = json.loads(config)
        except ValueError as error:
            raise Err(f"invalid config: {error}")
        unknown = set(settings) - {"allowed", "client_cns"}
        if unknown:
            raise Err(f"invalid config: unknown field(s) {sorted(unknown)}")
        ranges = settings.get("allowed", ["127.0.0.0/8", "::1/128"])
        try:
            networks = [ipaddress.ip_network(r, strict=False) for r in ranges]
        except ValueError as error:
            raise Err(f"allowed: {error}")
        global SETTINGS
        SETTINGS = Settings(networks, list(settings.get("client_cns", [])))
        host.log(
            LogLevel.INFO,
            f"configured: {len(networks)} address ranges, {len(SETTINGS.client_cns)} client CNs",
        )

    def authorize(self, peer: Peer) -> Decision_Allow | Decision_Deny:
        try:
            address = ipaddress.ip_address(peer.source_address)
        except ValueError:
            return Decision_Deny(f"unparsable source address {peer.source_address}")
        if not any(address.version == r.version and address in r for r in SETTINGS.ranges):
            host.log(LogLevel.INFO, f"denied {address}: not in an allowed range")
            return Decision_Deny(f"source {address} is not allowed")
        if not SETTINGS.client_cns:
            return Decision_Allow()
        # `subject_cn` is optional: a certificate need not have a CN.
        certificate = peer.client_certificate
        cn = certificate.subject_cn if certificate is not None else None
        if cn is None:
            return Decision_Deny("no client certificate with a subject CN")
        if cn in SETTINGS.client_cns:
            return Decision_Allow()
        return Decision_Deny(f'client certificate CN "{cn}" is not allowed')
