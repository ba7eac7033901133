"""What an operator sees, through real Envoy: the filter's counters on the admin endpoint, one
JSON log line per refusal, audit mode, and routes that keep blob traffic away from the filter."""
from __future__ import annotations

import json
import time
import urllib.request

import stack
from conftest import SAMPLE_POLICY
from oci import current_digest, head_manifest, make_manifest, push_blob, put_manifest, request, sha256

AUDIT_POLICY = dict(SAMPLE_POLICY, mode="audit")
RECORD_FIELDS = {
    "event", "mode", "action", "kind", "status", "code", "message", "repository", "tag",
    "current_digest", "pushed_digest", "rule", "method", "path", "request_id", "client_address",
    "user_agent", "break_glass",
}


def counters(envoy: stack.Envoy) -> dict[str, int]:
    """The filter's counters from /stats, by short name."""
    prefix = "wasmcustom.immutable_tags."
    out = {}
    for line in envoy.stats().splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix):
            out[name[len(prefix):]] = int(value)
    return out


def moved(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def records(envoy: stack.Envoy) -> list[dict]:
    """Every refusal record in Envoy's log (the JSON is the line's tail, from its first '{')."""
    out = []
    for line in envoy.log().splitlines():
        if '"event":"immutable_tags.refusal"' in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def record_for(envoy: stack.Envoy, request_id: str) -> dict:
    found = [r for r in records(envoy) if r["request_id"] == request_id]
    assert len(found) == 1, (request_id, found)
    return found[0]


def test_counters_move_with_each_outcome(stacks, registry, stop_on_headers, uid):
    # One worker, so the second push meets the map the first one filled.
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers, concurrency=1)
    repo = f"count-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    if stop_on_headers == stack.ISTIO:
        # Istio sends every request through the filter: Envoy's start-up GET / is an ordinary
        # request, added to requests_seen on the root's next tick (2 s), maybe mid-test.
        time.sleep(2.5)

    c0 = counters(envoy)
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    c1 = counters(envoy)
    assert moved(c0, c1) == {"requests_seen": 1, "requests_checked": 1, "map_misses": 1,
                             "head_calls_dispatched": 1, "pushes_allowed_new_tag": 1,
                             "claims_taken": 1, "claims_settled": 1}

    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    c2 = counters(envoy)
    # An identical re-push is a write like any other: it claims the tag too.
    assert moved(c1, c2) == {"requests_seen": 1, "requests_checked": 1, "map_hits": 1,
                             "pushes_allowed_same_digest": 1, "claims_taken": 1, "claims_settled": 1}

    assert put_manifest(envoy.url, repo, "v1", m2).status == 409
    c3 = counters(envoy)
    # The map disagrees with the push: the registry confirms before the refusal (one HEAD).
    assert moved(c2, c3) == {"requests_seen": 1, "requests_checked": 1, "map_hits": 1,
                             "head_calls_dispatched": 1, "overwrites_refused": 1}

    assert put_manifest(envoy.url, repo, "latest", m2).status == 201
    c4 = counters(envoy)
    assert moved(c3, c4) == {"requests_seen": 1, "requests_checked": 1, "pushes_mutable_tag": 1}

    r = request(envoy.url, "PUT", f"/v2/{repo}/manifests/v1/", body=m1)
    assert r.status == 400, r
    c5 = counters(envoy)
    assert moved(c4, c5) == {"requests_seen": 1, "requests_checked": 1, "invalid_requests_refused": 1}

    # Prometheus: the same counters, without Envoy's `envoy_` prefix.
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus", timeout=5) as resp:
        prom = resp.read().decode()
    assert "# TYPE immutable_tags_overwrites_refused counter" in prom
    assert f"immutable_tags_overwrites_refused{{}} {c5['overwrites_refused']}" in prom.splitlines()


def test_upstream_error_is_counted(stacks, own_registry, stop_on_headers, uid):
    envoy = stacks.envoy(own_registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"down-{uid}"
    m1 = make_manifest(own_registry.url, repo, "one")
    own_registry.stop()
    c0 = counters(envoy)
    r = put_manifest(envoy.url, repo, "v1", m1)
    assert r.status == 503 and r.json()["errors"][0]["code"] == "UNAVAILABLE", r
    assert moved(c0, counters(envoy)) == {"requests_seen": 1, "requests_checked": 1, "map_misses": 1,
                                          "head_calls_dispatched": 1, "upstream_errors": 1}


def test_refusal_log_line_carries_every_field(stacks, registry, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY)
    repo = f"prod/api-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "v1.4.2", m1).status == 201
    # Envoy replaces a client's x-request-id with its own (use_remote_address) and hands it back.
    sent = f"req-{uid}"
    r = put_manifest(envoy.url, repo, "v1.4.2", m2, headers={"x-request-id": sent, "user-agent": "ci-bot/7"})
    assert r.status == 409, r
    rid = r.headers["x-request-id"]
    assert rid != sent

    rec = record_for(envoy, rid)
    assert set(rec) == RECORD_FIELDS
    host, _, port = rec.pop("client_address").rpartition(":")
    assert host == "127.0.0.1" and port.isdigit()
    assert rec == {
        "event": "immutable_tags.refusal", "mode": "enforce", "action": "refused", "kind": "overwrite",
        "status": 409, "code": "DENIED",
        "message": "Tag 'v1.4.2' is immutable and cannot be overwritten",
        "repository": repo, "tag": "v1.4.2",
        "current_digest": sha256(m1), "pushed_digest": sha256(m2),
        "rule": "global.immutable_tags = true", "break_glass": None,
        "method": "PUT", "path": f"/v2/{repo}/manifests/v1.4.2",
        "request_id": rid, "user_agent": "ci-bot/7",
    }
    # Exactly one line per refusal, and none for the allowed push.
    assert sum(1 for x in records(envoy) if x["repository"] == repo) == 1

    # An unreadable request: logged with what is known.
    r = request(envoy.url, "PUT", f"/v2/{repo}/manifests/v1/", body=m1, headers={"x-request-id": f"bad-{uid}"})
    assert r.status == 400
    rid = r.headers["x-request-id"]
    rec = record_for(envoy, rid)
    assert (rec["kind"], rec["code"], rec["repository"], rec["rule"]) == ("invalid_request", "MANIFEST_INVALID", None, None)


def test_audit_mode_lets_an_overwrite_through_and_logs_and_counts_it(stacks, registry, stop_on_headers, uid):
    # One worker: each worker has its own map, and only the one that saw the 201 learns from it.
    envoy = stacks.envoy(registry, AUDIT_POLICY, stop_on_headers, concurrency=1)
    assert "policy loaded: mode=audit; " in envoy.log()
    repo = f"audit-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "v1.0.0", m1).status == 201

    c0 = counters(envoy)
    r = put_manifest(envoy.url, repo, "v1.0.0", m2)
    assert r.status == 201, r
    rid = r.headers["x-request-id"]
    assert current_digest(registry.url, repo, "v1.0.0") == sha256(m2), "the registry took it"
    d = moved(c0, counters(envoy))
    assert d["overwrites_refused"] == 1 and d["audit_would_refuse"] == 1, d
    rec = record_for(envoy, rid)
    assert (rec["mode"], rec["action"], rec["kind"]) == ("audit", "would_refuse", "overwrite")
    assert (rec["current_digest"], rec["pushed_digest"]) == (sha256(m1), sha256(m2))

    # The map learned the new digest from the registry's 201: pushing it again is no overwrite.
    c1 = counters(envoy)
    assert put_manifest(envoy.url, repo, "v1.0.0", m2).status == 201
    assert "audit_would_refuse" not in moved(c1, counters(envoy))

    # An unreadable write goes on to the registry, which answers for itself.
    c2 = counters(envoy)
    r = request(envoy.url, "PUT", f"/v2/{repo}/manifests/v1/", body=m1)
    assert r.status == 301 and "docker-distribution-api-version" in r.headers, r  # its trailing-slash redirect
    assert moved(c2, counters(envoy))["invalid_requests_refused"] == 1


def test_audit_mode_lets_a_push_through_when_the_registry_cannot_answer(stacks, own_registry, stop_on_headers, uid):
    envoy = stacks.envoy(own_registry, AUDIT_POLICY, stop_on_headers)
    repo = f"audit-down-{uid}"
    m1 = make_manifest(own_registry.url, repo, "one")
    own_registry.stop()
    c0 = counters(envoy)
    r = put_manifest(envoy.url, repo, "v1", m1)
    # Let through, and then nothing reaches the registry: the filter's write of it fails (Envoy's
    # 503 relayed), or, where the harmless request that brings the body went first and failed,
    # nothing can be written and the filter says why (or Envoy answers for the route itself:
    # which one depends on when Envoy learns that the connection failed).
    assert r.status == 503, r
    assert r.body.startswith(b"upstream connect error") or b"the registry could not be reached" in r.body, r
    d = moved(c0, counters(envoy))
    assert d["upstream_errors"] == 1 and d["audit_would_refuse"] == 1, d


def test_blob_traffic_skips_the_filter_and_manifest_writes_do_not(stacks, registry, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY)
    repo = f"routes-{uid}"
    # Earlier ordinary requests to this Envoy (another test's, a `%` path) are added to
    # requests_seen on the root's next tick (2 s): let them in before the baseline.
    time.sleep(2.5)
    c0 = counters(envoy)
    # Blob uploads through Envoy: POST, then PUT with the registry's `_state` (percent-encoded
    # in the query string, which the route match ignores, as the filter does).
    m1 = make_manifest(envoy.url, repo, "one")
    m2 = make_manifest(envoy.url, repo, "two")
    push_blob(envoy.url, repo, b"x" * 100_000)
    assert request(envoy.url, "GET", f"/v2/{repo}/tags/list").status in (200, 404)
    assert request(envoy.url, "GET", "/v2/_catalog").status == 200
    time.sleep(2.5)  # one that reached the filter as an ordinary request is counted by now
    assert moved(c0, counters(envoy)) == {}, "no blob or read request reached the filter"

    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    c1 = counters(envoy)
    assert moved(c0, c1)["requests_seen"] == 1

    # Encoded and odd-cased manifest paths still go through the filter.
    for path in [f"/v2/{repo}/%6danifests/v1", f"/v2/{repo}/manifests/v%31", f"/v2/{repo}/MANIFESTS/v1"]:
        before = counters(envoy)
        r = request(envoy.url, "PUT", path, body=m2, headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status in (400, 409), (path, r)
        assert moved(before, counters(envoy))["requests_seen"] == 1, path
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    # A percent-encoded path that is no manifest route reaches the filter too (and passes).
    before = counters(envoy)
    request(envoy.url, "PUT", f"/v2/{repo}/blobs/uploads/%41", body=b"")
    assert moved(before, counters(envoy)) == {"requests_seen": 1}


def test_reconfiguration_logs_the_build_and_new_policy_and_keeps_counting(workdir, registry, uid):
    """A listener update (file-based LDS) reconfigures the filter: it logs its build and the new
    policy again, and the counters carry on."""
    import os
    import time

    import yaml

    port, admin = stack.free_port(), stack.free_port()
    cfg = stack.envoy_config(SAMPLE_POLICY, port, admin, registry.port)
    listener = cfg["static_resources"].pop("listeners")[0]
    lds = workdir / f"lds-{port}.yaml"

    def write_listener(policy: dict) -> None:
        wasm = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
        wasm["configuration"]["value"] = json.dumps(policy)
        tmp = workdir / f"lds-{port}.tmp"
        tmp.write_text(yaml.safe_dump({"resources": [
            {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}))
        os.rename(tmp, lds)  # Envoy watches for the file being moved into place

    write_listener(SAMPLE_POLICY)
    cfg["dynamic_resources"] = {"lds_config": {"path_config_source": {"path": str(lds)}, "resource_api_version": "V3"}}
    cfg["node"] = {"id": "immutable-tags-test", "cluster": "immutable-tags-test"}  # required by LDS
    envoy = stack.Envoy(workdir, cfg, port, admin).start()
    try:
        repo = f"reconf-{uid}"
        m1 = make_manifest(registry.url, repo, "one")
        m2 = make_manifest(registry.url, repo, "two")
        assert put_manifest(envoy.url, repo, "v1", m1).status == 201
        assert put_manifest(envoy.url, repo, "v1", m2).status == 409
        assert counters(envoy)["overwrites_refused"] == 1
        assert "policy loaded: mode=enforce; " in envoy.log()
        assert "policy loaded: mode=audit; " not in envoy.log()

        write_listener(AUDIT_POLICY)
        deadline = time.monotonic() + 30
        while "policy loaded: mode=audit; " not in envoy.log():
            assert time.monotonic() < deadline, envoy.log()[-3000:]
            time.sleep(0.2)
        line = next(x for x in envoy.log().splitlines() if "policy loaded: mode=audit; " in x)
        assert "immutable-tags 0.1.0 (" in line, line  # version and commit

        # New connections get the new listener (and filter configuration).
        deadline = time.monotonic() + 30
        while (r := put_manifest(envoy.url, repo, "v1", m2)).status != 201:
            assert r.status == 409 and time.monotonic() < deadline, r
            time.sleep(0.2)
        c = counters(envoy)
        assert c["audit_would_refuse"] == 1 and c["overwrites_refused"] >= 2, c
    finally:
        envoy.stop()


def test_audit_mode_lets_protected_deletes_through_and_counts_them(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, AUDIT_POLICY, stop_on_headers)
    repo = f"audit-del-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    assert put_manifest(registry.url, repo, "v1.0.0", m1).status == 201
    c0 = counters(envoy)
    r = request(envoy.url, "DELETE", f"/v2/{repo}/manifests/{sha256(m1)}")
    assert r.status == 202, "would be refused (an immutable tag holds it), but audit lets it through"
    assert head_manifest(registry.url, repo, sha256(m1)).status == 404
    d = moved(c0, counters(envoy))
    assert d["deletes_refused"] == 1 and d["audit_would_refuse"] == 1, d


def test_a_push_abandoned_mid_body_has_its_state_swept(stacks, registry, stop_on_headers, uid):
    """The module exports no proxy_on_done/proxy_on_delete (docs/security.md "Limits"): the state of a
    stream under judgement whose client left is dropped by the root's timer, and counted."""
    import socket
    import time

    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers, concurrency=1)
    repo = f"swept-{uid}"
    c0 = counters(envoy)
    s = socket.create_connection(("127.0.0.1", envoy.port))
    s.sendall(f"PUT /v2/{repo}/manifests/v1.0.0 HTTP/1.1\r\nHost: x\r\n"
              "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1000\r\n\r\n{\"sche".encode())
    time.sleep(0.5)  # the filter has the stream under judgement
    s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and moved(c0, counters(envoy)).get("streams_swept", 0) < 1:
        time.sleep(0.25)
    assert moved(c0, counters(envoy)).get("streams_swept", 0) >= 1, moved(c0, counters(envoy))
    # And a complete push afterwards is neither swept nor disturbed.
    m = make_manifest(registry.url, repo, "after")
    c1 = counters(envoy)
    assert put_manifest(envoy.url, repo, "v1.0.1", m).status == 201
    time.sleep(2.5)  # past a sweep
    assert "streams_swept" not in moved(c1, counters(envoy))


def test_on_istios_path_ordinary_requests_are_counted_by_the_timer(stacks, registry, uid):
    """Istio sends every request through the filter. One that cannot name a manifest costs one
    header read and no host call: `requests_seen` takes it in on the root's next tick (2 s)."""
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stack.ISTIO, concurrency=1)
    # Earlier ordinary requests to this Envoy are in after one tick.
    time.sleep(2.5)
    c0 = counters(envoy)
    for _ in range(4):
        assert request(envoy.url, "GET", "/v2/").status == 200
    assert request(envoy.url, "GET", f"/v2/seen-{uid}/blobs/sha256:{'0' * 64}").status == 404
    deadline = time.monotonic() + 10
    while moved(c0, counters(envoy)).get("requests_seen", 0) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert moved(c0, counters(envoy)) == {"requests_seen": 5}
