"""Every object the Istio and Envoy Gateway folders ask users to apply, and every Kubernetes object
the docs show, is checked against the schema the cluster checks it with, and every Envoy config the project ships or documents passes
`envoy --mode validate`. Files are globbed, so a manifest or config added later is checked too.

- Istio kinds (`WasmPlugin`, `ServiceEntry`, `DestinationRule`, `Gateway`, `VirtualService`,
  `EnvoyFilter`, ...): `@kubernetes-models/istio` (Istio's CRD schemas); Gateway API kinds
  (`HTTPRoute`, `BackendTLSPolicy`, ...): `@kubernetes-models/gateway-api`; core kinds (`Secret`,
  `ConfigMap`, ...): `kubernetes-models`. Pinned in tests/schemas/package.json and its lock file,
  installed by scripts/deps.sh; run by tests/schemas/validate.mjs. Those schemas check types,
  enums, patterns and required fields; they do not refuse unknown fields.
- Envoy Gateway's own kinds (`gateway.envoyproxy.io`): no npm package carries their schemas, so
  they are checked here against the fields of Envoy Gateway v1.9.0's CRDs that the manifests use
  (`EG_SCHEMAS`): an unknown field, a wrong type or a value outside an enum fails; a field the
  table does not list fails too, until it is added from the CRD.
- Any other kind fails: nothing passes unchecked.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import stack

ROOT = stack.ROOT
SCHEMAS = ROOT / "tests" / "schemas"
K8S_DIRS = [ROOT / "envoy" / "istio", ROOT / "envoy" / "envoy-gateway"]


def k8s_objects() -> list[tuple[str, dict]]:
    found = []
    for d in K8S_DIRS:
        for f in sorted(d.rglob("*.yaml")) + sorted(d.rglob("*.yml")):
            for i, doc in enumerate(yaml.safe_load_all(f.read_text())):
                if doc is not None:
                    found.append((f"{f.relative_to(ROOT)}#{i}", doc))
    return found


def documented_objects(pages: list[Path] | None = None) -> list[tuple[str, dict]]:
    """Kubernetes objects the docs show in ```yaml blocks (none today: the docs link the shipped
    manifests instead; one shown later is checked like them)."""
    found = []
    if pages is None:
        pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", *sorted((ROOT / "envoy").rglob("README.md"))]
    for md in pages:
        for n, m in enumerate(re.finditer(r"```yaml\n(.*?)```", md.read_text(), re.S)):
            for i, doc in enumerate(yaml.safe_load_all(m.group(1))):
                if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                    found.append((f"{md.name} block {n} #{i}", doc))
    return found


# --- Envoy Gateway's kinds: the fields of its v1.9.0 CRDs these manifests use ------------------
# Read from github.com/envoyproxy/gateway at tag v1.9.0,
# charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_<kind>.yaml (openAPIV3Schema).
# A dict is an object whose keys are the only ones allowed ("!key": required); [x] an array of x;
# a tuple an enum; "str", "int", "bool", "quantity" (string or integer), "any" (free-form JSON).
FILTERS = tuple(f"envoy.filters.http.{n}" for n in (
    "custom_response health_check fault cors csrf header_mutation ext_authz api_key_auth basic_auth "
    "oauth2 jwt_authn stateful_session buffer lua ext_proc wasm dynamic_modules geoip rbac "
    "local_ratelimit ratelimit bandwidth_limit grpc_web grpc_stats credential_injector compressor "
    "dynamic_forward_proxy").split())
TARGET_REFS = [{"!group": "str", "!kind": "str", "!name": "str", "sectionName": "str"}]
SECRET_REF = {"group": "str", "kind": "str", "!name": "str", "namespace": "str"}
TLS_VERSION = ("Auto", "1.0", "1.1", "1.2", "1.3")
RETRY_TRIGGERS = ("5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx",
                  "refused-stream", "retriable-status-codes", "cancelled", "deadline-exceeded", "internal",
                  "resource-exhausted", "unavailable")
EG_SCHEMAS = {
    "EnvoyExtensionPolicy": {
        "targetRefs": TARGET_REFS,
        "wasm": [{
            "name": "str", "rootID": "str", "failOpen": "bool", "config": "any",
            "env": {"hostKeys": ["str"]},
            "!code": {"!type": ("HTTP", "Image"), "pullPolicy": ("IfNotPresent", "Always"),
                      "image": {"!url": "str", "sha256": "str", "pullSecretRef": SECRET_REF},
                      "http": {"!url": "str", "sha256": "str"}},
        }],
    },
    "ClientTrafficPolicy": {
        "targetRefs": TARGET_REFS,
        "connection": {"bufferLimit": "quantity", "socketBufferLimit": "quantity"},
    },
    "EnvoyProxy": {
        "filterOrder": [{"!name": FILTERS, "before": FILTERS, "after": FILTERS}],
        "backendTLS": {"clientCertificateRef": SECRET_REF, "minVersion": TLS_VERSION,
                       "maxVersion": TLS_VERSION, "alpnProtocols": ["str"], "ciphers": ["str"]},
    },
    "Backend": {
        "appProtocols": [("gateway.envoyproxy.io/h2c", "gateway.envoyproxy.io/ws", "gateway.envoyproxy.io/wss")],
        "endpoints": [{"fqdn": {"!hostname": "str", "!port": "int"},
                       "ip": {"!address": "str", "!port": "int"}, "zone": "str"}],
        "tls": {"sni": "str", "caCertificateRefs": [{"!group": "str", "!kind": "str", "!name": "str"}],
                "clientCertificateRef": SECRET_REF, "wellKnownCACertificates": ("System",),
                "insecureSkipVerify": "bool", "minVersion": TLS_VERSION, "maxVersion": TLS_VERSION},
    },
    "BackendTrafficPolicy": {
        "targetRefs": TARGET_REFS,
        "timeout": {"tcp": {"connectTimeout": "str"},
                    "http": {"requestTimeout": "str", "connectionIdleTimeout": "str"}},
        "loadBalancer": {"!type": ("ConsistentHash", "LeastRequest", "Random", "RoundRobin", "BackendUtilization",
                                   "DynamicModule")},
        "retry": {"numRetries": "int", "retryOn": {"triggers": [RETRY_TRIGGERS], "httpStatusCodes": ["int"]},
                  "perRetry": {"timeout": "str", "backOff": {"baseInterval": "str", "maxInterval": "str"}}},
        "healthCheck": {
            "active": {"!type": ("HTTP", "TCP", "GRPC"), "timeout": "str", "interval": "str",
                       "unhealthyThreshold": "int", "healthyThreshold": "int",
                       "http": {"!path": "str", "method": "str", "expectedStatuses": ["int"]}},
            "passive": {
                "baseEjectionTime": "str", "interval": "str", "maxEjectionPercent": "int",
                "consecutive5XxErrors": "int", "consecutiveGatewayErrors": "int",
                "consecutiveLocalOriginFailures": "int", "splitExternalLocalOriginErrors": "bool"}},
    },
    "SecurityPolicy": {
        "targetRefs": TARGET_REFS,
        "authorization": {"defaultAction": ("Allow", "Deny")},
    },
}


def check_shape(value, shape, at: str) -> list[str]:
    if shape == "any":
        return []
    if isinstance(shape, tuple):
        return [] if value in shape else [f"{at}: {value!r} is not one of {list(shape)}"]
    if isinstance(shape, str):
        ok = {"str": isinstance(value, str), "bool": isinstance(value, bool),
              "int": isinstance(value, int) and not isinstance(value, bool),
              "quantity": isinstance(value, (str, int)) and not isinstance(value, bool)}[shape]
        return [] if ok else [f"{at}: {value!r} is not a {shape}"]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{at}: not an array"]
        return [e for i, v in enumerate(value) for e in check_shape(v, shape[0], f"{at}[{i}]")]
    if not isinstance(value, dict):
        return [f"{at}: not an object"]
    fields = {k.lstrip("!"): s for k, s in shape.items()}
    errors = [f"{at}.{k[1:]}: required" for k in shape if k.startswith("!") and k[1:] not in value]
    for k, v in value.items():
        if k not in fields:
            errors.append(f"{at}.{k}: not a field of the schema (EG_SCHEMAS in tests/test_manifests.py)")
        else:
            errors += check_shape(v, fields[k], f"{at}.{k}")
    return errors


def check_envoy_gateway_kind(obj: dict) -> list[str]:
    kind = obj.get("kind")
    if obj.get("apiVersion") != "gateway.envoyproxy.io/v1alpha1" or kind not in EG_SCHEMAS:
        return [f"unknown kind {obj.get('apiVersion')} {kind}"]
    errors = [f".{k}: not a field of the object" for k in obj if k not in ("apiVersion", "kind", "metadata", "spec")]
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        errors.append(".metadata.name: required")
    return errors + check_shape(obj.get("spec"), EG_SCHEMAS[kind], ".spec")


# --- the npm packages --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def validate():
    if not (SCHEMAS / "node_modules" / "@kubernetes-models" / "istio").is_dir():
        pytest.fail("tests/schemas/node_modules is missing: scripts/deps.sh installs it (npm ci)")

    def run(objects: list[tuple[str, dict]]) -> tuple[int, list[str]]:
        payload = json.dumps([{"where": w, "object": o} for w, o in objects])
        p = subprocess.run(["node", "validate.mjs"], cwd=SCHEMAS, input=payload, capture_output=True, text=True)
        return p.returncode, p.stdout.splitlines()

    return run


def split(objects):
    eg = [(w, o) for w, o in objects if str(o.get("apiVersion", "")).startswith("gateway.envoyproxy.io/")]
    return eg, [(w, o) for w, o in objects if (w, o) not in eg]


def test_the_docs_objects_are_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```yaml\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n"
                    "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\n```\n\n"
                    "```yaml\nclaims: {ttl_seconds: 60}\n```\n")
    assert [(w, o["kind"]) for w, o in documented_objects([page])] == \
        [("page.md block 0 #0", "ServiceEntry"), ("page.md block 0 #1", "DestinationRule")]


def test_there_are_manifests_to_check():
    kinds = {o.get("kind") for _, o in k8s_objects()}
    assert {"WasmPlugin", "ServiceEntry", "DestinationRule", "Gateway", "VirtualService", "EnvoyFilter",
            "HTTPRoute", "EnvoyExtensionPolicy", "ClientTrafficPolicy", "EnvoyProxy"} <= kinds, kinds


def test_every_istio_and_gateway_api_object_matches_its_schema(validate):
    _, objects = split(k8s_objects() + documented_objects())
    code, lines = validate(objects)
    assert len(lines) == len(objects), lines
    assert code == 0, "\n".join(l for l in lines if not l.startswith("ok "))


def test_every_envoy_gateway_object_matches_its_fields():
    eg, _ = split(k8s_objects() + documented_objects())
    assert eg
    errors = [f"{w}: {e}" for w, o in eg for e in check_envoy_gateway_kind(o)]
    assert not errors, "\n".join(errors)


def test_a_broken_manifest_fails(validate):
    """The checks can fail: a wrong enum, a wrong type, a missing required field, an unknown kind
    (npm side); an unknown field, a wrong enum, an unknown kind (Envoy Gateway side)."""
    objects = dict((o["kind"], o) for _, o in k8s_objects())
    wasm = copy.deepcopy(objects["WasmPlugin"])
    wasm["spec"]["failStrategy"] = "FAIL_SOMETIMES"
    se = copy.deepcopy(objects["ServiceEntry"])
    se["spec"]["ports"][0]["number"] = "443"
    route = copy.deepcopy(objects["HTTPRoute"])
    del route["spec"]["rules"][0]["backendRefs"][0]["name"]
    unknown = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEnrty", "metadata": {"name": "x"}, "spec": {}}
    code, lines = validate([("wasm", wasm), ("se", se), ("route", route), ("unknown", unknown)])
    assert code == 1
    assert [l.split(" ")[0] for l in lines] == ["invalid", "invalid", "invalid", "unknown"], lines
    assert "/spec/failStrategy must be equal to one of the allowed values" in lines[0], lines

    eep = copy.deepcopy(objects["EnvoyExtensionPolicy"])
    eep["spec"]["wasm"][0]["failopen"] = False
    eep["spec"]["wasm"][0]["code"]["type"] = "OCI"
    assert sorted(check_envoy_gateway_kind(eep)) == [
        ".spec.wasm[0].code.type: 'OCI' is not one of ['HTTP', 'Image']",
        ".spec.wasm[0].failopen: not a field of the schema (EG_SCHEMAS in tests/test_manifests.py)",
    ]
    btp = copy.deepcopy(objects["BackendTrafficPolicy"])
    btp["spec"]["healthCheck"]["active"]["type"] = "HTTPS"
    btp["spec"]["healthCheck"]["passive"]["consecutiveLocalOriginErrors"] = 1
    del btp["spec"]["healthCheck"]["active"]["http"]["path"]
    assert sorted(check_envoy_gateway_kind(btp)) == [
        ".spec.healthCheck.active.http.path: required",
        ".spec.healthCheck.active.type: 'HTTPS' is not one of ['HTTP', 'TCP', 'GRPC']",
        ".spec.healthCheck.passive.consecutiveLocalOriginErrors: not a field of the schema (EG_SCHEMAS in tests/test_manifests.py)",
    ]
    sp = copy.deepcopy(objects["SecurityPolicy"])
    sp["spec"]["authorization"]["defaultAction"] = "Reject"
    assert check_envoy_gateway_kind(sp) == [".spec.authorization.defaultAction: 'Reject' is not one of ['Allow', 'Deny']"]
    assert check_envoy_gateway_kind({**eep, "kind": "HTTPRouteFilter"}) == \
        ["unknown kind gateway.envoyproxy.io/v1alpha1 HTTPRouteFilter"]


# --- Envoy configs: `envoy --mode validate` ------------------------------------------------------
def envoy_configs() -> list[Path]:
    """Every plain Envoy config shipped in envoy/ (envoy.yaml, envoy-etcd.yaml, ...): files whose
    top level is a bootstrap (static_resources), not Kubernetes objects."""
    out = []
    for f in sorted((ROOT / "envoy").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        if isinstance(doc, dict) and "static_resources" in doc:
            out.append(f)
    return out


def documented_fragments() -> list[tuple[str, str, dict]]:
    """Envoy config fragments the docs show (a cluster, a route) as (where, kind, fragment)."""
    found = []
    for md in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        for m in re.finditer(r"```yaml\n(.*?)```", md.read_text(), re.S):
            try:
                doc = yaml.safe_load(m.group(1))
            except yaml.YAMLError:
                continue
            for item in doc if isinstance(doc, list) else []:
                if isinstance(item, dict) and "load_assignment" in item:
                    found.append((f"{md.relative_to(ROOT)}: cluster {item.get('name')}", "cluster", item))
                elif isinstance(item, dict) and "match" in item and "route" in item:
                    found.append((f"{md.relative_to(ROOT)}: route {item.get('name')}", "route", item))
    return found


def stand_in_certificates(config: dict, tmp: Path) -> dict:
    """The config with every certificate or key file it names that is not on this machine (an
    operator's /etc/... paths) replaced by a throwaway pair, so `--mode validate` checks the rest."""
    text = json.dumps(config)
    names = [n for n in re.findall(r'"filename": "([^"]+)"', text)
             if n.endswith((".crt", ".pem", ".key")) and not (ROOT / n).exists()]
    if names:
        key, crt = tmp / "stand-in.key", tmp / "stand-in.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=stand-in"],
                       check=True, capture_output=True)
        for name in names:
            text = text.replace(f'"{name}"', json.dumps(str(key if name.endswith(".key") else crt)))
    return json.loads(text)


def envoy_validate(config: dict | Path, tmp: Path) -> subprocess.CompletedProcess:
    if isinstance(config, Path):
        config = yaml.safe_load(config.read_text())
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(stand_in_certificates(config, tmp)))
    envoy = shutil.which("envoy") or str(ROOT / ".venv" / "bin" / "envoy")
    return subprocess.run([envoy, "--mode", "validate", "-c", str(path), "-l", "error"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("config", envoy_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_envoy_config_validates(config, tmp_path):
    p = envoy_validate(config, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("where,kind,fragment", [pytest.param(*f, id=f[0]) for f in documented_fragments()])
def test_every_documented_envoy_fragment_validates_in_the_shipped_config(where, kind, fragment, tmp_path):
    """A fragment the docs tell users to add, added to envoy/envoy.yaml as told (a route first
    in the route list, a cluster beside the registry's), makes a config Envoy accepts."""
    config = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    if kind == "cluster":
        config["static_resources"]["clusters"].append(fragment)
    else:
        routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        routes.insert(0, fragment)
    p = envoy_validate(config, tmp_path)
    assert p.returncode == 0, f"{where}\n{p.stdout}{p.stderr}"


def test_envoy_validate_refuses_a_broken_config(tmp_path):
    config = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    config["static_resources"]["clusters"][0]["lb_policy"] = "SOMETIMES"
    assert envoy_validate(config, tmp_path).returncode != 0

