"""An `authz` policy in Python: allow a connection when its verified client certificate's CN is
on an allow-list and (optionally) its source address is in one of the allowed CIDR ranges.

Config (`[[policy]] config`, JSON):
    allowed_cns         list of CNs, e.g. ["app1", "app2"]
    allowed_cns_kv_key  a KV key holding `;`-separated CNs, read on every connection (changes
                        apply at once, no reload); when both are given, either list admits
    source_cidrs        list of CIDR ranges; absent: any source
"""

from typing import Optional

import wit_world
from wit_world.imports import host, types

import sluice_policy as sp

_allowed_cns: frozenset = frozenset()
_kv_key: Optional[str] = None
_networks: Optional[list] = None


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        global _allowed_cns, _kv_key, _networks
        settings = sp.config_object(config)
        cns = settings.get("allowed_cns", [])
        if not isinstance(cns, list) or not all(isinstance(cn, str) for cn in cns):
            raise sp.Err("`allowed_cns` must be a list of strings")
        kv_key = settings.get("allowed_cns_kv_key")
        if kv_key is not None and not isinstance(kv_key, str):
            raise sp.Err("`allowed_cns_kv_key` must be a string")
        if not cns and kv_key is None:
            raise sp.Err("give `allowed_cns` or `allowed_cns_kv_key`: nobody would be allowed")
        _allowed_cns = frozenset(cns)
        _kv_key = kv_key
        _networks = sp.cidrs(settings["source_cidrs"]) if "source_cidrs" in settings else None
        sp.info(f"allowing {len(_allowed_cns)} CNs" + (f" and KV key {kv_key}" if kv_key else ""))

    def authorize(self, peer: types.Peer) -> types.Decision:
        cn = sp.client_cn(peer)
        if cn is None:
            return sp.deny("no client certificate CN")
        if not self._cn_allowed(cn):
            return sp.deny(f"client `{cn}` is not in the allow-list")
        if _networks is not None and not sp.source_in(peer, _networks):
            return sp.deny(f"source {peer.source_address} is outside the allowed ranges")
        return sp.allow()

    @staticmethod
    def _cn_allowed(cn: str) -> bool:
        if cn in _allowed_cns:
            return True
        if _kv_key is None:
            return False
        listed = host.kv_get(_kv_key) or ""
        return cn in (entry.strip() for entry in listed.split(";"))
