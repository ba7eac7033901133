"""Every stream is judged by the plugin instance Envoy bound it to (issue 28).

Envoy keeps one root context (plugin instance) per distinct configuration in each VM, and binds
each stream to one of them. Two setups put several instances of one plugin name in a VM:
- a configuration update while streams of earlier configurations are still open (ECDS: enforce,
  audit, then the byte-identical enforce again: Envoy brings back the still-live enforce
  instance without configuring it again);
- two listeners whose filters share a `vm_id` and a plugin name but not their policy.
Each stream must be judged by its own instance's policy; the configure log line and the
`immutable_tags.auditing.<plugin name>` gauge say which mode serves new streams.
"""
from __future__ import annotations

import copy
import http.client
import json
import re
import socket
import time
from pathlib import Path

import pytest

import stack
from conftest import SAMPLE_POLICY
from oci import OCI_MANIFEST, current_digest, make_manifest, put_manifest, request
from test_ecds import WASM, Delivery, envoy_config as ecds_envoy_config, wait_stat, wasm_config

AUDIT = {**SAMPLE_POLICY, "mode": "audit"}
GAUGE = "wasmcustom.immutable_tags.auditing.immutable-tags"


class HeldPush:
    """A manifest push whose body is held back, so that its stream, and the plugin instance Envoy
    bound it to, stays open until `finish` sends the rest."""

    def __init__(self, envoy: stack.Envoy, repo: str, tag: str, manifest: bytes):
        self.sock = socket.create_connection(("127.0.0.1", envoy.port), timeout=30)
        head = (f"PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: registry\r\n"
                f"Content-Type: {OCI_MANIFEST}\r\nContent-Length: {len(manifest)}\r\n\r\n")
        self.sock.sendall(head.encode() + manifest[:8])
        self.rest = manifest[8:]

    def finish(self) -> int:
        self.sock.sendall(self.rest)
        r = http.client.HTTPResponse(self.sock)
        r.begin()
        r.read()
        self.sock.close()
        return r.status


def gauge(envoy: stack.Envoy, name: str = GAUGE) -> str | None:
    m = re.search(rf"^{re.escape(name)}: (.*)$", envoy.stats(), re.M)
    return m.group(1) if m else None


def log_lines(envoy: stack.Envoy, pattern: str) -> list[str]:
    return [line for line in envoy.log().splitlines() if re.search(pattern, line)]


class HoldingDelivery(Delivery):
    """Delivery, with or without `allow_on_headers_stop_iteration` in the delivered config."""

    def __init__(self, base: Path, stop_on_headers: bool):
        super().__init__(base)
        self.stop_on_headers = stop_on_headers

    def deliver(self, policy: dict | str, module: Path = stack.MODULE) -> str:
        self.version += 1
        config = wasm_config(policy, module)
        if self.stop_on_headers:
            config["allow_on_headers_stop_iteration"] = True
        response = {"version_info": f"v{self.version}", "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "immutable-tags", "typed_config": {"@type": WASM, "config": config},
        }]}
        tmp = self.dir.parent / f"ecds-{self.version}.tmp"
        tmp.write_text(json.dumps(response))
        tmp.rename(self.path)
        return f"v{self.version}"


@pytest.fixture(params=[True, False], ids=["stop-on-headers", "body-phase"])
def ecds(request, workdir, registry, tmp_path):
    """One worker (so every stream meets the same VM), the filter's config delivered by ECDS."""
    d = HoldingDelivery(tmp_path, request.param)
    d.deliver(SAMPLE_POLICY)
    port, admin = stack.free_port(), stack.free_port()
    e = stack.Envoy(workdir, ecds_envoy_config(d, port, admin, registry.port), port, admin,
                    concurrency=1).start()
    wait_stat(e, "update_success", "1")
    yield d, e
    e.stop()


def test_switching_back_to_enforce_enforces_while_streams_of_each_earlier_config_are_open(ecds, registry, uid):
    d, envoy = ecds
    repo = f"inst-{uid}"
    old = {t: make_manifest(registry.url, repo, f"{t}-old") for t in ("v1.0.0", "v1.0.1", "v1.0.2", "v1.0.3")}
    new = {t: make_manifest(registry.url, repo, f"{t}-new") for t in old}
    for t, m in old.items():
        assert put_manifest(envoy.url, repo, t, m).status == 201
    before = {t: current_digest(registry.url, repo, t) for t in old}
    gauges = [gauge(envoy)]  # checked at the end, after the decisions

    # A push opened under enforce, one under audit, each held open.
    under_enforce = HeldPush(envoy, repo, "v1.0.1", new["v1.0.1"])
    time.sleep(0.5)
    d.deliver(AUDIT)
    wait_stat(envoy, "update_success", "2")
    under_audit = HeldPush(envoy, repo, "v1.0.2", new["v1.0.2"])
    time.sleep(0.5)
    gauges.append(gauge(envoy))

    # Back to the byte-identical enforce: Envoy brings back the enforce instance it kept.
    d.deliver(SAMPLE_POLICY)
    wait_stat(envoy, "update_success", "3")
    reopened = HeldPush(envoy, repo, "v1.0.3", new["v1.0.3"])  # in flight across the checks below
    time.sleep(0.5)
    for attempt in range(4):
        r = put_manifest(envoy.url, repo, "v1.0.0", new["v1.0.0"])
        assert r.status == 409, (attempt, r.status, r.body)
    # A delete of the digest an immutable tag holds: judged by enforce too.
    r = request(envoy.url, "DELETE", f"/v2/{repo}/manifests/{before['v1.0.0']}")
    assert r.status == 409, (r.status, r.body)
    gauges.append(gauge(envoy))

    # Each held stream is judged by the instance it was opened under.
    assert under_enforce.finish() == 409
    assert reopened.finish() == 409
    assert under_audit.finish() == 201  # audit lets it through, as that configuration said
    after = {t: current_digest(registry.url, repo, t) for t in old}
    assert {t: after[t] for t in ("v1.0.0", "v1.0.1", "v1.0.3")} == {t: before[t] for t in ("v1.0.0", "v1.0.1", "v1.0.3")}

    # The audit instance is gone with its last stream, and never chosen again.
    time.sleep(3)
    assert put_manifest(envoy.url, repo, "v1.0.0", new["v1.0.0"]).status == 409
    assert current_digest(registry.url, repo, "v1.0.0") == before["v1.0.0"]

    # Visible: the gauge said enforce, audit, enforce; the log says the kept instance is back.
    assert gauges == ["0", "1", "0"], gauges
    assert log_lines(envoy, r"plugin 'immutable-tags' instance \d+ \(vm_id 'immutable-tags'\) serves new streams again: mode=enforce"), \
        "the log says the kept enforce instance serves again"


def test_the_gauge_follows_a_kept_audit_instance_brought_back_after_an_enforce_period(ecds, registry, uid):
    """Audit, then enforce (no stream under it), then the byte-identical audit again while a
    stream of the first audit is open: Envoy brings the kept audit instance back without
    configuring it. The next stream is judged by audit, and the gauge must say so (it said
    enforce before, because the last stream seen was the audit instance's own)."""
    d, envoy = ecds
    repo = f"gauge-{uid}"
    m1, m2, m3 = (make_manifest(registry.url, repo, n) for n in ("one", "two", "three"))
    assert put_manifest(envoy.url, repo, "v1.0.0", m1).status == 201
    d.deliver(AUDIT)
    wait_stat(envoy, "update_success", "2")
    held = HeldPush(envoy, repo, "v1.0.1", m2)  # keeps the audit instance alive
    time.sleep(0.5)
    assert gauge(envoy) == "1"
    d.deliver(SAMPLE_POLICY)
    wait_stat(envoy, "update_success", "3")
    time.sleep(0.5)
    assert gauge(envoy) == "0"
    d.deliver(AUDIT)
    wait_stat(envoy, "update_success", "4")
    r = put_manifest(envoy.url, repo, "v1.0.0", m3)
    assert r.status == 201, (r.status, r.body)  # the audit policy lets it through
    time.sleep(0.5)
    assert gauge(envoy) == "1", "new streams are audited: the gauge says so"
    assert held.finish() == 201


def test_a_reload_while_pushes_are_in_flight_leaves_each_push_to_its_own_config(ecds, registry, uid):
    """Pushes opened under enforce, finished after a switch to audit (and back), are refused;
    pushes opened under audit and finished after the switch back are let through."""
    d, envoy = ecds
    repo = f"inst-flight-{uid}"
    tags = [f"v2.0.{i}" for i in range(6)]
    old = {t: make_manifest(registry.url, repo, f"{t}-old") for t in tags}
    new = {t: make_manifest(registry.url, repo, f"{t}-new") for t in tags}
    for t, m in old.items():
        assert put_manifest(envoy.url, repo, t, m).status == 201
    before = {t: current_digest(registry.url, repo, t) for t in tags}
    enforce_era = [HeldPush(envoy, repo, t, new[t]) for t in tags[:3]]
    time.sleep(0.5)
    d.deliver(AUDIT)
    wait_stat(envoy, "update_success", "2")
    audit_era = [HeldPush(envoy, repo, t, new[t]) for t in tags[3:5]]
    time.sleep(0.5)
    d.deliver(SAMPLE_POLICY)
    wait_stat(envoy, "update_success", "3")
    statuses: list[int] = []
    stack.run_together([lambda: statuses.append(put_manifest(envoy.url, repo, tags[5], new[tags[5]]).status)
                        for _ in range(4)])
    assert statuses == [409] * 4, statuses
    assert [p.finish() for p in enforce_era] == [409, 409, 409]
    assert [p.finish() for p in audit_era] == [201, 201]
    assert {t: current_digest(registry.url, repo, t) for t in tags[:3] + tags[5:]} == \
        {t: before[t] for t in tags[:3] + tags[5:]}


def test_a_kept_instance_brought_back_does_not_trust_a_map_the_audit_period_made_stale(ecds, registry, uid):
    """While audit served, a tag really changed (D1 -> D2). The enforce instance Envoy brings back
    still remembers D1 from before: a push of D1 must not pass as an identical re-push (that
    would turn the tag back); the registry's word (D2) decides."""
    d, envoy = ecds
    repo = f"inst-map-{uid}"
    d1, d2 = make_manifest(registry.url, repo, "d1"), make_manifest(registry.url, repo, "d2")
    holder = make_manifest(registry.url, repo, "holder")
    assert put_manifest(envoy.url, repo, "v3.0.0", d1).status == 201  # the enforce map: v3.0.0 = D1
    assert put_manifest(envoy.url, repo, "v3.0.1", holder).status == 201
    kept = HeldPush(envoy, repo, "v3.0.1", holder)  # keeps the enforce instance alive
    time.sleep(0.5)
    d.deliver(AUDIT)
    wait_stat(envoy, "update_success", "2")
    assert put_manifest(envoy.url, repo, "v3.0.0", d2).status == 201  # audit: really overwritten
    changed = current_digest(registry.url, repo, "v3.0.0")
    held_audit = HeldPush(envoy, repo, "v3.0.1", holder)  # keeps the audit instance alive
    time.sleep(0.5)
    d.deliver(SAMPLE_POLICY)
    wait_stat(envoy, "update_success", "3")
    r = put_manifest(envoy.url, repo, "v3.0.0", d1)
    assert r.status == 409, (r.status, r.body)
    assert current_digest(registry.url, repo, "v3.0.0") == changed
    assert kept.finish() == 201 and held_audit.finish() == 201  # identical re-pushes


def two_listeners(port_a: int, port_b: int, admin: int, registry_port: int, stop_on_headers: bool) -> dict:
    """Two listeners whose filters share the vm_id and the plugin name: A enforces, B audits
    (configured after A)."""
    cfg = stack.envoy_config(SAMPLE_POLICY, port_a, admin, registry_port, stop_on_headers=stop_on_headers)
    b = copy.deepcopy(cfg["static_resources"]["listeners"][0])
    b["name"] = "registry-audit"
    b["address"]["socket_address"]["port_value"] = port_b
    wasm = b["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
    wasm["configuration"]["value"] = json.dumps(AUDIT)
    cfg["static_resources"]["listeners"].append(b)
    return cfg


@pytest.mark.parametrize("stop_on_headers", [True, False], ids=["stop-on-headers", "body-phase"])
def test_two_listeners_sharing_a_vm_and_a_plugin_name_each_judge_by_their_own_policy(
        workdir, registry, uid, stop_on_headers):
    port_a, port_b, admin = stack.free_port(), stack.free_port(), stack.free_port()
    cfg = two_listeners(port_a, port_b, admin, registry.port, stop_on_headers)
    envoy = stack.Envoy(workdir, cfg, port_a, admin, concurrency=1).start()
    b_url = f"http://127.0.0.1:{port_b}"
    try:
        repo = f"inst-two-{uid}"
        a1, a2 = make_manifest(registry.url, repo, "a1"), make_manifest(registry.url, repo, "a2")
        b1, b2 = make_manifest(registry.url, repo, "b1"), make_manifest(registry.url, repo, "b2")
        assert put_manifest(envoy.url, repo, "v1.0.0", a1).status == 201
        assert put_manifest(b_url, repo, "v2.0.0", b1).status == 201
        before = current_digest(registry.url, repo, "v1.0.0")
        for _ in range(3):
            # Through the enforcing listener: refused, whichever instance was configured last.
            r = put_manifest(envoy.url, repo, "v1.0.0", a2)
            assert r.status == 409, (r.status, r.body)
        assert current_digest(registry.url, repo, "v1.0.0") == before
        # Through the auditing listener: let through, as its policy says.
        assert put_manifest(b_url, repo, "v2.0.0", b2).status == 201
        # Interleaved, on the same worker: still each by its own.
        assert put_manifest(envoy.url, repo, "v1.0.0", a2).status == 409
        assert current_digest(registry.url, repo, "v1.0.0") == before
        # The log names each instance's mode.
        assert log_lines(envoy, r"plugin 'immutable-tags' instance \d+ \(vm_id 'immutable-tags'\): policy loaded: mode=enforce")
        assert log_lines(envoy, r"plugin 'immutable-tags' instance \d+ \(vm_id 'immutable-tags'\): policy loaded: mode=audit")
        # Streams alternating between the two instances are said once, not on every switch.
        for _ in range(3):
            assert put_manifest(b_url, repo, "v2.0.1", b1).status == 201
            assert put_manifest(envoy.url, repo, "v1.0.0", a2).status == 409
        assert len(log_lines(envoy, "serves new streams again")) <= 1, log_lines(envoy, "serves new streams again")
    finally:
        envoy.stop()
