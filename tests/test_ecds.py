"""Istio's delivery path (issue 15): the filter's config arrives by extension config discovery
(ECDS), here from a watched file as Envoy reads it (`config_discovery` with a
`path_config_source`), the way Istio's control plane delivers a WasmPlugin by xDS: a
DiscoveryResponse holding one TypedExtensionConfig named like the filter, replaced by writing
beside the watched directory and renaming in. Envoy runs as Istio runs it: no
`allow_on_headers_stop_iteration`, FAIL_CLOSED.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

import stack
from conftest import SAMPLE_POLICY
from oci import ACCEPT, current_digest, make_manifest, put_manifest, request

WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STAT = "extension_config_discovery.http_filter.immutable-tags."


def wasm_config(policy: dict | str, module: Path) -> dict:
    return {
        "name": "immutable-tags", "root_id": "immutable-tags", "failure_policy": "FAIL_CLOSED",
        "vm_config": {"vm_id": "immutable-tags", "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": str(module)}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": policy if isinstance(policy, str) else json.dumps(policy)},
    }


class Delivery:
    """The watched directory and the file Envoy reads the filter's config from."""

    def __init__(self, base: Path):
        self.dir = base / "ecds"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "immutable-tags.json"
        self.version = 0

    def deliver(self, policy: dict | str, module: Path = stack.MODULE) -> str:
        """Writes beside the file and renames it in (atomic, as the watched directory needs)."""
        self.version += 1
        response = {"version_info": f"v{self.version}", "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "immutable-tags",
            "typed_config": {"@type": WASM, "config": wasm_config(policy, module)},
        }]}
        tmp = self.dir.parent / f"ecds-{self.version}.tmp"
        tmp.write_text(json.dumps(response))
        tmp.rename(self.path)
        return f"v{self.version}"


def envoy_config(delivery: Delivery, port: int, admin: int, registry_port: int) -> dict:
    cfg = stack.envoy_config(SAMPLE_POLICY, port, admin, registry_port, stop_on_headers=False)
    cfg["node"] = {"id": "immutable-tags-ecds-test", "cluster": "registry-gateway"}
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0] = {"name": "immutable-tags", "config_discovery": {
        "config_source": {"path_config_source": {"path": str(delivery.path),
                                                 "watched_directory": {"path": str(delivery.dir)}}},
        "type_urls": [WASM],
    }}
    return cfg


def stat(envoy: stack.Envoy, name: str) -> str | None:
    m = re.search(rf"^{re.escape(STAT + name)}: (.*)$", envoy.stats(), re.M)
    return m.group(1) if m else None


def wait_stat(envoy: stack.Envoy, name: str, value: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stat(envoy, name) == value:
            return
        time.sleep(0.1)
    raise AssertionError(f"{STAT}{name} is {stat(envoy, name)}, expected {value}\n{envoy.log()[-3000:]}")


@pytest.fixture
def delivered(workdir, registry, tmp_path):
    """An Envoy whose filter config comes only from the watched file (first: the sample policy)."""
    d = Delivery(tmp_path)
    d.deliver(SAMPLE_POLICY)
    port, admin = stack.free_port(), stack.free_port()
    e = stack.Envoy(workdir, envoy_config(d, port, admin, registry.port), port, admin).start()
    wait_stat(e, "update_success", "1")
    yield d, e
    e.stop()


def code(r) -> str | None:
    errors = r.json().get("errors") if r.body else None
    return errors[0]["code"] if errors else None


def test_a_filter_delivered_by_ecds_enforces_and_takes_new_policies_and_modules_without_restart(
        delivered, registry, uid, tmp_path):
    d, envoy = delivered
    repo = f"ecds-{uid}"
    a, b = make_manifest(registry.url, repo, f"a-{uid}"), make_manifest(registry.url, repo, f"b-{uid}")
    assert put_manifest(envoy.url, repo, "v1.0.0", a).status == 201
    r = put_manifest(envoy.url, repo, "v1.0.0", b)
    assert (r.status, code(r)) == (409, "DENIED"), r.body

    # A new policy, renamed in: it changes what clients get, without an Envoy restart.
    pid = envoy.proc.pid
    d.deliver({**SAMPLE_POLICY, "error_code": "TAG_IMMUTABLE"})
    wait_stat(envoy, "update_success", "2")
    assert stat(envoy, "version_text") == '"v2"' or stat(envoy, "version_text") == "v2"
    r = put_manifest(envoy.url, repo, "v1.0.0", b)
    assert (r.status, code(r)) == (409, "TAG_IMMUTABLE"), r.body
    assert envoy.proc.pid == pid and envoy.proc.poll() is None

    # A config the filter rejects: counted as rejected, and the previous policy goes on enforcing.
    d.deliver({**SAMPLE_POLICY, "error_code": "NOT A CODE"})
    wait_stat(envoy, "update_rejected", "1")
    assert stat(envoy, "update_success") == "2"
    r = put_manifest(envoy.url, repo, "v1.0.0", b)
    assert (r.status, code(r)) == (409, "TAG_IMMUTABLE"), r.body
    assert 'field `error_code` = "NOT A CODE"' in envoy.log(), "the rejection names the field and value"

    # A new module version, delivered the same way (another file, as a new image would be).
    module2 = tmp_path / "immutable_tags-v2.wasm"
    shutil.copyfile(stack.MODULE, module2)
    d.deliver(SAMPLE_POLICY, module=module2)
    wait_stat(envoy, "update_success", "3")
    r = put_manifest(envoy.url, repo, "v1.0.0", b)
    assert (r.status, code(r)) == (409, "DENIED"), r.body
    assert put_manifest(envoy.url, repo, "v2.0.0", b).status == 201
    assert put_manifest(envoy.url, repo, "v1.0.0", a).status == 201  # the identical re-push
    assert envoy.proc.pid == pid


def test_before_a_first_valid_config_every_request_through_the_filter_is_refused(workdir, registry, uid, tmp_path):
    """Envoy starts with only a config the filter rejects: nothing gets through unjudged."""
    d = Delivery(tmp_path)
    d.deliver({**SAMPLE_POLICY, "error_code": "NOT A CODE"})
    port, admin = stack.free_port(), stack.free_port()
    envoy = stack.Envoy(workdir, envoy_config(d, port, admin, registry.port), port, admin).start()
    try:
        wait_stat(envoy, "update_rejected", "1")
        repo = f"ecds-first-{uid}"
        a = make_manifest(registry.url, repo, f"a-{uid}")
        r = put_manifest(envoy.url, repo, "v1.0.0", a)
        assert r.status == 500, (r.status, r.body)
        assert r.body == b""  # Envoy's own answer for a filter without config: no OCI error body
        # Routes with the filter switched off (reads, blobs) are served meanwhile.
        assert request(envoy.url, "GET", f"/v2/{repo}/manifests/v1.0.0", headers={"Accept": ACCEPT}).status == 404
        assert current_digest(registry.url, repo, "v1.0.0") is None, "the push reached the registry"
        # The first valid config arrives: enforcement starts.
        d.deliver(SAMPLE_POLICY)
        wait_stat(envoy, "update_success", "1")
        assert put_manifest(envoy.url, repo, "v1.0.0", a).status == 201
    finally:
        envoy.stop()
