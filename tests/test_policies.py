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
        text = f.read_text()
        docs = list(yaml.safe_load_all(text))
        if WASM_FILTER not in text and not any(
                isinstance(d, dict) and d.get("kind") in ("WasmPlugin", "EnvoyExtensionPolicy") for d in docs):
            # No object that can carry a policy: a route patch (envoy/istio/reads-without-filter.yaml),
            # the etcd objects (envoy/*/etcd.yaml, envoy/envoy-etcd.yaml).
            continue
        out[str(f.relative_to(stack.ROOT))] = [p for d in docs for p in embedded_policies(d)]
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


def eg_docs():
    docs = list(yaml.safe_load_all((ENVOY_DIR / "envoy-gateway" / "immutable-tags.yaml").read_text()))
    policy = next(d for d in docs if d["kind"] == "EnvoyExtensionPolicy")
    routes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "HTTPRoute"}
    return policy, routes


def test_envoy_gateway_cluster_name_is_the_write_rule_one():
    policy, routes = eg_docs()
    targets = policy["spec"]["targetRefs"]
    route = routes[targets[0]["name"]]
    index = [r["name"] for r in route["spec"]["rules"]].index("writes")
    ns = route["metadata"]["namespace"]
    assert policy["spec"]["wasm"][0]["config"]["upstream"]["cluster"] == f"httproute/{ns}/{route['metadata']['name']}/rule/{index}"
    assert policy["spec"]["wasm"][0]["failOpen"] is False


def gateway_api_rule(route: dict, method: str, path: str, headers: dict) -> str:
    """The rule Gateway API's precedence picks (HTTPRoute spec, "Precedence"): among matching
    matches, exact path over prefix, longer prefix, then a method match, then more header
    matches, then rule order. Covers the match kinds the example uses (others: error)."""
    best = None
    for i, rule in enumerate(route["spec"]["rules"]):
        for m in rule["matches"]:
            assert set(m) <= {"path", "method", "headers"}, m
            assert m["path"]["type"] == "PathPrefix", m
            prefix = m["path"]["value"]
            if not (path == prefix or path.startswith(prefix.rstrip("/") + "/")):
                continue
            if "method" in m and m["method"] != method:
                continue
            hs = m.get("headers", [])
            for h in hs:
                assert h["type"] == "RegularExpression" and h["value"] == ".*", h
            if not all(h["name"].lower() in headers for h in hs):
                continue
            key = (len(prefix), "method" in m, len(hs), -i)
            if best is None or key > best[0]:
                best = (key, rule["name"])
    assert best is not None, (method, path)
    return best[1]


MANIFEST = "/v2/team/app/manifests/v1.0.0"
BLOB = "/v2/team/app/blobs/sha256:" + "ab" * 32


@pytest.mark.parametrize("method,path,headers,filtered", [
    ("GET", MANIFEST, {}, False),
    ("HEAD", MANIFEST, {}, False),
    ("GET", BLOB, {}, False),
    ("PUT", MANIFEST, {}, True),
    # The push rewritten into the harmless request re-matches routes: still the filter's rule.
    ("OPTIONS", MANIFEST, {}, True),
    ("DELETE", MANIFEST, {}, True),
    ("POST", "/v2/team/app/blobs/uploads/", {}, True),
    ("PATCH", "/v2/team/app/blobs/uploads/abc", {}, True),
    ("get", MANIFEST, {}, True),
    ("GET", MANIFEST, {"x-http-method-override": "PUT"}, True),
    ("HEAD", MANIFEST, {"x-http-method": "DELETE"}, True),
    ("GET", MANIFEST, {"x-method-override": "PUT"}, True),
    # A blob delete by override (an intermediary honouring the header) is filtered too.
    ("POST", BLOB, {"x-http-method-override": "DELETE"}, True),
    ("GET", BLOB, {"x-http-method": "DELETE"}, True),
    ("HEAD", BLOB, {"x-method-override": "DELETE"}, True),
])
def test_envoy_gateway_only_reads_skip_the_filter(method, path, headers, filtered):
    policy, routes = eg_docs()
    targets = policy["spec"]["targetRefs"]
    assert len({t["name"] for t in targets}) == 1 and all("sectionName" in t for t in targets)
    route = routes[targets[0]["name"]]
    rule = gateway_api_rule(route, method, path, headers)
    assert (rule in {t["sectionName"] for t in targets}) == filtered, rule


def test_istio_reads_patch_disables_the_plugin_on_the_read_route_only():
    docs = list(yaml.safe_load_all((ENVOY_DIR / "istio" / "immutable-tags.yaml").read_text()))
    plugin = next(d for d in docs if d["kind"] == "WasmPlugin")
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    (patch_doc,) = yaml.safe_load_all((ENVOY_DIR / "istio" / "reads-without-filter.yaml").read_text())
    (cp,) = patch_doc["spec"]["configPatches"]
    assert cp["applyTo"] == "HTTP_ROUTE" and cp["patch"]["operation"] == "MERGE"
    route_name = cp["match"]["routeConfiguration"]["vhost"]["route"]["name"]
    # Istio names the plugin's filter <namespace>.<name>.
    filter_name = f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}"
    assert cp["patch"]["value"]["typed_per_filter_config"][filter_name]["disabled"] is True
    http = {r["name"]: r for r in vs["spec"]["http"]}
    reads = http[route_name]
    assert sorted(m["method"]["exact"] for m in reads["match"]) == ["GET", "HEAD"]
    for m in reads["match"]:
        assert set(m["withoutHeaders"]) == {"x-http-method-override", "x-http-method", "x-method-override"}
    # Everything else (writes, overrides, the harmless OPTIONS) takes a later route by path only.
    later = vs["spec"]["http"][[r["name"] for r in vs["spec"]["http"]].index(route_name) + 1:]
    assert later and all("match" not in r for r in later)
    assert [r["route"] for r in later][0] == reads["route"]


def test_envoy_gateway_etcd_route_is_accepted_and_takes_no_registry_request():
    """envoy/envoy-gateway/etcd.yaml's route exists only so that Envoy Gateway makes the etcd
    cluster: it must share a hostname with the Gateway's listener (else it is not accepted and no
    cluster exists), take no request the registry's routes serve, and be closed to clients."""
    docs = list(yaml.safe_load_all((ENVOY_DIR / "envoy-gateway" / "immutable-tags.yaml").read_text()))
    etcd_docs = list(yaml.safe_load_all((ENVOY_DIR / "envoy-gateway" / "etcd.yaml").read_text()))
    gateway = next(d for d in docs if d["kind"] == "Gateway")
    _, routes = eg_docs()
    (etcd_route,) = [d for d in etcd_docs if d["kind"] == "HTTPRoute"]
    listeners = {l["hostname"] for l in gateway["spec"]["listeners"]}
    assert set(etcd_route["spec"]["hostnames"]) & listeners, (etcd_route["spec"]["hostnames"], listeners)
    ref = etcd_route["spec"]["parentRefs"][0]
    assert (ref["name"], ref["namespace"]) == (gateway["metadata"]["name"], gateway["metadata"]["namespace"])
    (sp,) = [d for d in etcd_docs if d["kind"] == "SecurityPolicy"]
    assert [t["name"] for t in sp["spec"]["targetRefs"]] == [etcd_route["metadata"]["name"]]
    assert sp["spec"]["authorization"] == {"defaultAction": "Deny"}
    # One host, so precedence runs over both routes' rules together; etcd's first, so that a tie
    # (decided by the routes' creation time in a cluster) goes against the registry.
    merged = {"spec": {"rules": etcd_route["spec"]["rules"]
                       + [r for route in routes.values() for r in route["spec"]["rules"]]}}
    etcd_rules = {r["name"] for r in etcd_route["spec"]["rules"]}
    for method in ("GET", "HEAD", "PUT", "OPTIONS", "DELETE", "POST", "PATCH"):
        for path in ("/v2/", MANIFEST, BLOB, "/v2/team/app/blobs/uploads/", "/v2/_catalog"):
            assert gateway_api_rule(merged, method, path, {}) not in etcd_rules, (method, path)
    prefix = etcd_route["spec"]["rules"][0]["matches"][0]["path"]["value"]
    assert gateway_api_rule(merged, "POST", prefix + "v3/kv/txn", {}) in etcd_rules


def test_envoy_yaml_routes_without_the_filter_take_no_method_override():
    """Every filter-free route of the shipped envoy.yaml excludes each method-override header
    (behind an intermediary that honours one, a blob POST is a blob delete), and the last route,
    which takes what is left, keeps the filter."""
    cfg = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    overrides = {"x-http-method-override", "x-http-method", "x-method-override"}
    off = [r for r in routes if r.get("typed_per_filter_config", {}).get("immutable-tags", {}).get("disabled")]
    assert {r["name"] for r in off} == {"reads", "other"}
    for r in off:
        excluded = {h["name"] for h in r["match"].get("headers", []) if h.get("present_match") and h.get("invert_match")}
        assert overrides <= excluded, r["name"]
    assert routes[-1]["match"] == {"prefix": "/"} and "typed_per_filter_config" not in routes[-1]
