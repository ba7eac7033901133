"""Every policy shipped in envoy/ (the Envoy config, policy files, the Istio WasmPlugin and the
Envoy Gateway EnvoyExtensionPolicy) is valid for the filter, checked by the filter's own parser
(`immutable-tags check`), so the examples never drift from the product."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

import stack

ENVOY_DIR = stack.ROOT / "envoy"
WASM_FILTER = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def embedded_policies(doc) -> list[tuple[str, str]]:
    """(where, policy JSON) for every policy in one YAML document."""
    found = []

    def walk(node, at):
        if isinstance(node, dict):
            if node.get("@type") == WASM_FILTER:
                found.append((at + ".configuration", node["config"]["configuration"]["value"]))
            for k, v in node.items():
                walk(v, f"{at}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{at}[{i}]")

    if isinstance(doc, dict) and doc.get("kind") == "WasmPlugin":
        found.append(("WasmPlugin.spec.pluginConfig", json.dumps(doc["spec"]["pluginConfig"])))
    elif isinstance(doc, dict) and doc.get("kind") == "EnvoyExtensionPolicy":
        for i, w in enumerate(doc["spec"]["wasm"]):
            found.append((f"EnvoyExtensionPolicy.spec.wasm[{i}].config", json.dumps(w["config"])))
    else:
        walk(doc, "")
    return found


def all_policies() -> dict[str, list[tuple[str, str]]]:
    out = {}
    for f in sorted(ENVOY_DIR.rglob("*.json")):
        out[str(f.relative_to(stack.ROOT))] = [("file", f.read_text())]
    for f in sorted(ENVOY_DIR.rglob("*.yaml")):
        out[str(f.relative_to(stack.ROOT))] = [p for d in yaml.safe_load_all(f.read_text()) for p in embedded_policies(d)]
    return out


@pytest.fixture(scope="module")
def check_policy():
    subprocess.run(["cargo", "build", "--quiet", "--bin", "immutable-tags"], cwd=stack.ROOT, check=True)
    exe = stack.ROOT / "target" / "debug" / "immutable-tags"

    def run(tmp: Path, policies: list[str]) -> subprocess.CompletedProcess:
        files = []
        for i, p in enumerate(policies):
            files.append(tmp / f"policy-{i}.json")
            files[-1].write_text(p)
        return subprocess.run([str(exe), "check", *map(str, files)], capture_output=True, text=True)

    return run


def test_every_shipped_policy_is_valid(check_policy, tmp_path):
    found = all_policies()
    expected = {"envoy/envoy.yaml", "envoy/policy.json", "envoy/istio/immutable-tags.yaml",
                "envoy/envoy-gateway/immutable-tags.yaml"}
    assert expected <= set(found), found.keys()
    for name, policies in found.items():
        assert policies, f"{name}: no policy found (has the layout changed?)"
        r = check_policy(tmp_path, [p for _, p in policies])
        assert r.returncode == 0, f"{name}: {r.stdout}"
        assert r.stdout.count("ok ") == len(policies), r.stdout


def test_the_checker_refuses_what_the_filter_refuses(check_policy, tmp_path):
    r = check_policy(tmp_path, ['{"mode": "dry-run"}', '{"global": {"immutable_tags": true}}'])
    assert r.returncode == 1
    assert 'field `mode` = "dry-run"' in r.stdout, r.stdout
    assert r.stdout.count("ok ") == 1


def test_istio_cluster_name_is_the_service_entry_one():
    docs = list(yaml.safe_load_all((ENVOY_DIR / "istio" / "immutable-tags.yaml").read_text()))
    se = next(d for d in docs if d["kind"] == "ServiceEntry")
    plugin = next(d for d in docs if d["kind"] == "WasmPlugin")
    port, host = se["spec"]["ports"][0]["number"], se["spec"]["hosts"][0]
    assert plugin["spec"]["pluginConfig"]["upstream"]["cluster"] == f"outbound|{port}||{host}"
    assert plugin["spec"]["failStrategy"] == "FAIL_CLOSE"
    assert plugin["spec"]["url"].startswith("oci://")


def test_envoy_gateway_cluster_name_is_the_target_route_one():
    docs = list(yaml.safe_load_all((ENVOY_DIR / "envoy-gateway" / "immutable-tags.yaml").read_text()))
    policy = next(d for d in docs if d["kind"] == "EnvoyExtensionPolicy")
    (target,) = policy["spec"]["targetRefs"]
    route = next(d for d in docs if d["kind"] == "HTTPRoute" and d["metadata"]["name"] == target["name"])
    ns = route["metadata"]["namespace"]
    assert policy["spec"]["wasm"][0]["config"]["upstream"]["cluster"] == f"httproute/{ns}/{route['metadata']['name']}/rule/0"
    assert policy["spec"]["wasm"][0]["failOpen"] is False
