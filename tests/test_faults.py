"""Upstream trouble is never a bypass: the push is refused with an OCI JSON body, and the filter
recovers by itself once the registry answers again."""
from __future__ import annotations

import json
import time

import pytest

import stack
from conftest import SAMPLE_POLICY
from fakes import FaultyUpstream
from oci import current_digest, make_manifest, put_manifest, request, sha256


def test_registry_down_refuses_and_recovers(stacks, own_registry, stop_on_headers, uid):
    envoy = stacks.envoy(own_registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"app-{uid}"
    m1 = make_manifest(own_registry.url, repo, "one")
    m2 = make_manifest(own_registry.url, repo, "two")
    assert put_manifest(own_registry.url, repo, "v1", m1).status == 201
    own_registry.stop()

    r = put_manifest(envoy.url, repo, "v1", m2)
    assert r.status == 503, r
    assert r.headers["content-type"] == "application/json"
    err = r.json()["errors"][0]
    assert err["code"] == "UNAVAILABLE"
    assert err["detail"]["tag"] == "v1" and err["detail"]["repository"] == repo
    assert "registry" in err["message"]

    own_registry.start()
    assert current_digest(own_registry.url, repo, "v1") == sha256(m1)
    r = put_manifest(envoy.url, repo, "v1", m2)
    assert r.status == 409, "serving normally once the registry is back"
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201


# --- a misbehaving upstream on loopback (fakes.FaultyUpstream) ------------------------------

# Every HEAD goes to the upstream (no map), and a stalled HEAD times out quickly.
FAULT_POLICY = dict(SAMPLE_POLICY, upstream={"cluster": "registry", "timeout_ms": 500}, cache={"ttl_seconds": 0})


@pytest.fixture(scope="module")
def faulty(registry):
    f = FaultyUpstream(registry.port, stack.free_port()).start()
    yield f
    f.stop()


def assert_refused_503(r, repo: str, tag: str) -> dict:
    assert r.status == 503, r
    assert r.headers["content-type"] == "application/json", r
    err = r.json()["errors"][0]
    assert err["code"] == "UNAVAILABLE", err
    assert err["detail"]["repository"] == repo and err["detail"]["tag"] == tag, err
    return err


def assert_serving(envoy, registry, repo: str, tag: str, m1: bytes, m2: bytes) -> None:
    """The filter judges normally: overwrite refused, identical re-push and new tags pass."""
    r = put_manifest(envoy.url, repo, tag, m2)
    assert r.status == 409, r
    assert put_manifest(envoy.url, repo, tag, m1).status == 201
    assert current_digest(registry.url, repo, tag) == sha256(m1)
    assert put_manifest(envoy.url, repo, f"{tag}-new", m2).status == 201


# A HEAD answered 200 without a usable digest is judged by the manifest a GET returns (next
# test); the same HEAD whose GET fails leaves nothing to judge by.
@pytest.mark.parametrize("fault", ["reset", "stall", "500", "garbage", "no-digest+get-500", "bad-digest+get-500"])
def test_upstream_fault_refuses_and_recovers(stacks, registry, faulty, stop_on_headers, uid, fault):
    envoy = stacks.envoy(faulty, FAULT_POLICY, stop_on_headers)
    repo = f"fault-{fault.replace('+', '-')}-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, "v1", m1).status == 201

    faulty.fault = fault
    try:
        heads = faulty.heads
        started = time.monotonic()
        err = assert_refused_503(put_manifest(envoy.url, repo, "v1", m2), repo, "v1")
        assert time.monotonic() - started < 10, "refused promptly, not hung"
        assert faulty.heads > heads, "the fault was really met"
        assert "registry" in err["message"], err
        assert_refused_503(put_manifest(envoy.url, repo, "v1", m1), repo, "v1")
        assert_refused_503(put_manifest(envoy.url, repo, "fresh", m2), repo, "fresh")
    finally:
        faulty.fault = "pass"
    assert current_digest(registry.url, repo, "v1") == sha256(m1), "checked on the registry itself"
    assert current_digest(registry.url, repo, "fresh") is None
    assert_serving(envoy, registry, repo, "v1", m1, m2)


@pytest.mark.parametrize("fault", ["no-digest", "bad-digest"])
def test_a_head_without_a_usable_digest_is_judged_by_the_manifest_a_get_returns(stacks, registry, faulty,
                                                                                stop_on_headers, uid, fault):
    """container-registry's HEAD carries no Docker-Content-Digest: judged, not refused with 503."""
    envoy = stacks.envoy(faulty, FAULT_POLICY, stop_on_headers)
    repo = f"fault-{fault.replace('+', '-')}-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, "v1", m1).status == 201
    faulty.fault = fault
    try:
        heads, gets = faulty.heads, faulty.gets
        r = put_manifest(envoy.url, repo, "v1", m2)
        assert r.status == 409, (r.status, r.body)
        assert r.json()["errors"][0]["detail"]["current_digest"] == sha256(m1)
        assert (faulty.heads, faulty.gets) == (heads + 1, gets + 1), "one HEAD, then one GET"
        assert put_manifest(envoy.url, repo, "v1", m1).status == 201, "the identical re-push"
        assert put_manifest(envoy.url, repo, "fresh", m2).status == 201, "a new tag (GET 404)"
    finally:
        faulty.fault = "pass"
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_connection_refused_refuses_and_recovers(stacks, registry, faulty, stop_on_headers, uid):
    envoy = stacks.envoy(faulty, FAULT_POLICY, stop_on_headers)
    repo = f"refused-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, "v1", m1).status == 201
    faulty.stop()  # nothing listens on the upstream port now
    try:
        assert_refused_503(put_manifest(envoy.url, repo, "v1", m2), repo, "v1")
        assert_refused_503(put_manifest(envoy.url, repo, "fresh", m2), repo, "fresh")
    finally:
        faulty.start()
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    assert_serving(envoy, registry, repo, "v1", m1, m2)


def test_failed_push_releases_its_claim(stacks, registry, faulty, stop_on_headers, uid):
    """The registry refuses the push with a 4xx of its own: nothing was stored, so the tag's
    claim is released at once and another manifest may be pushed to the still-absent tag
    without waiting for the claim to expire."""
    envoy = stacks.envoy(faulty, FAULT_POLICY, stop_on_headers)
    repo = f"release-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    faulty.fault = "put-400"
    try:
        assert put_manifest(envoy.url, repo, "v1", m1).status == 400
    finally:
        faulty.fault = "pass"
    assert current_digest(registry.url, repo, "v1") is None
    assert put_manifest(envoy.url, repo, "v1", m2).status == 201
    assert current_digest(registry.url, repo, "v1") == sha256(m2)


def test_push_answered_5xx_keeps_its_claim(stacks, registry, faulty, stop_on_headers, uid):
    """The push is answered 5xx: a registry (or a proxy before it) may have stored it before
    failing, so the outcome is unknown and the claim stays until it expires. Meanwhile another
    manifest is refused (in flight), and a retry of the same manifest goes through."""
    envoy = stacks.envoy(faulty, FAULT_POLICY, stop_on_headers)
    repo = f"unknown-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    faulty.fault = "put-500"
    try:
        assert put_manifest(envoy.url, repo, "v1", m1).status == 500
    finally:
        faulty.fault = "pass"
    r = put_manifest(envoy.url, repo, "v1", m2)
    assert r.status == 409, r
    assert "in_flight" in json.loads(r.body)["errors"][0]["detail"], r
    assert current_digest(registry.url, repo, "v1") is None
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_dead_stream_keeps_its_claim_until_it_expires(stacks, registry, faulty, stop_on_headers, uid):
    """The client gives up while the registry stalls on the write the filter sent: whether the
    registry stores it is unknown, so the claim stays until it expires. Meanwhile a different
    manifest is refused (in flight), and the client's retry of the same manifest goes through."""
    envoy = stacks.envoy(faulty, FAULT_POLICY, stop_on_headers)
    repo = f"dead-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    faulty.fault = "put-stall"
    try:
        with pytest.raises(OSError):  # socket.timeout: the client gives up
            request(envoy.url, "PUT", f"/v2/{repo}/manifests/v1", body=m1,
                    headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=1)
    finally:
        faulty.fault = "pass"
    r = put_manifest(envoy.url, repo, "v1", m2)
    assert r.status == 409, r
    detail = json.loads(r.body)["errors"][0]["detail"]
    assert detail["current_digest"] == sha256(m1) and "in_flight" in detail, detail
    assert current_digest(registry.url, repo, "v1") is None
    r = put_manifest(envoy.url, repo, "v1", m1)
    assert r.status == 201, r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_on_upstream_error_allow_gives_up_the_check(stacks, registry, faulty, stop_on_headers, uid):
    """`on_upstream_error: allow` (explicit only) lets pushes through while the registry cannot
    answer HEAD: an overwrite then lands. This is what docs/security.md ("Faults") says it gives up."""
    envoy = stacks.envoy(faulty, dict(FAULT_POLICY, on_upstream_error="allow"), stop_on_headers)
    repo = f"allow-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, "v1", m1).status == 201
    faulty.fault = "500"
    try:
        assert put_manifest(envoy.url, repo, "v1", m2).status == 201
    finally:
        faulty.fault = "pass"
    assert current_digest(registry.url, repo, "v1") == sha256(m2), "the overwrite went through"
    r = put_manifest(envoy.url, repo, "v1", m1)
    assert r.status == 409, "with a healthy registry it judges as usual"


def test_unknown_cluster_refuses_every_protected_write(stacks, registry, stop_on_headers, uid):
    """`upstream.cluster` naming a cluster Envoy does not have (a typo, Istio's cluster name got
    wrong): the filter cannot send its HEAD nor its write, so every protected push and every
    delete by digest is refused with 503 and says why; nothing reaches the registry. Mutable
    tags, which need no call, still pass."""
    policy = dict(SAMPLE_POLICY, upstream={"cluster": "no-such-cluster", "timeout_ms": 2000})
    envoy = stacks.envoy(registry, policy, stop_on_headers)
    repo = f"app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, "v1", m1).status == 201

    for tag, m in [("v2", m1), ("v1", m2), ("v1", m1)]:  # a new tag, an overwrite, a re-push
        err = assert_refused_503(put_manifest(envoy.url, repo, tag, m), repo, tag)
        assert "cannot dispatch HEAD to cluster 'no-such-cluster'" in err["message"], err
    assert current_digest(registry.url, repo, "v2") is None, "a refused new tag reached the registry"
    assert current_digest(registry.url, repo, "v1") == sha256(m1)

    r = request(envoy.url, "DELETE", f"/v2/{repo}/manifests/{sha256(m1)}")
    assert r.status == 503 and r.json()["errors"][0]["code"] == "UNAVAILABLE", r
    assert current_digest(registry.url, repo, "v1") == sha256(m1), "the manifest is untouched"

    assert put_manifest(envoy.url, repo, "latest", m2).status == 201, "a mutable tag needs no call"
    assert current_digest(registry.url, repo, "latest") == sha256(m2)
