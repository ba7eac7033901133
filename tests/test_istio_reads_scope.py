"""The Istio reads patch switches the filter off only on this project's own read route.

Istio lets any namespace declare a Gateway selecting the ingress pods (unless istiod scopes
gateways to their namespace), so an EnvoyFilter matching every route named `reads` would switch
the filter off on a tenant's route of that name: the patch must name the Gateway, its port and
the virtual host of the shipped objects (an attacker's read found it unscoped)."""
from __future__ import annotations

from pathlib import Path

import yaml

ISTIO = Path(__file__).resolve().parent.parent / "envoy" / "istio"


def objects(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def test_the_reads_patch_matches_only_the_shipped_gateway_port_host_and_route():
    shipped = objects("immutable-tags.yaml")
    gateway = next(d for d in shipped if d["kind"] == "Gateway")
    vs = next(d for d in shipped if d["kind"] == "VirtualService")
    server = gateway["spec"]["servers"][0]
    host = vs["spec"]["hosts"][0]
    reads = [r["name"] for r in vs["spec"]["http"] if r.get("name") == "reads"]
    assert reads, "the VirtualService has no route named reads"
    (patch,) = [d for d in objects("reads-without-filter.yaml") if d["kind"] == "EnvoyFilter"]
    for p in patch["spec"]["configPatches"]:
        rc = p["match"]["routeConfiguration"]
        assert rc.get("gateway") == f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}", rc
        assert rc.get("portNumber") == server["port"]["number"], rc
        assert rc.get("vhost", {}).get("name") == f"{host}:{server['port']['number']}", rc
        assert rc["vhost"].get("route", {}).get("name") == "reads", rc
