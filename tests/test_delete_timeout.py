"""A fenced delete by digest is bounded by Envoy's router: the filter sets
`x-envoy-upstream-rq-timeout-ms` to the time left until half of claims.ttl_seconds since its
fence was taken (replacing the client's), so a registry that has not answered by then gets
its request reset and the client a 504, while the fence still holds. The shipped route has
`timeout: 0s` (no limit). A relay in front of distribution holds the DELETE longer than that."""
from __future__ import annotations

import time

import pytest

import stack
from oci import OCI_MANIFEST, make_manifest, request, sha256
from relay import Relay

TTL_S = 4


@pytest.fixture(scope="module")
def slow(workdir):
    reg = stack.Registry(workdir).start()
    relay = Relay(reg.port, hold_s=3 * TTL_S)
    policy = {"global": {"immutable_tags": True}, "upstream": {"write_timeout_ms": 1000},
              "claims": {"ttl_seconds": TTL_S}}
    port, admin = stack.free_port(), stack.free_port()
    envoy = stack.Envoy(workdir, stack.envoy_config(policy, port, admin, relay.port), port, admin).start()
    yield reg, relay, envoy
    envoy.stop()
    relay.stop()
    reg.stop()


def test_a_delete_the_registry_holds_past_half_the_ttl_is_answered_504_at_half_the_ttl(slow):
    reg, relay, envoy = slow
    repo = "timeout/slow-delete"
    m = make_manifest(reg.url, repo, "slow")
    d = sha256(m)
    assert request(reg.url, "PUT", f"/v2/{repo}/manifests/{d}", body=m, headers={"Content-Type": OCI_MANIFEST}).status == 201
    relay.hold_method = b"DELETE"
    try:
        start = time.monotonic()
        # The client asks for more time: the filter's bound replaces it.
        r = request(envoy.url, "DELETE", f"/v2/{repo}/manifests/{d}", headers={"x-envoy-upstream-rq-timeout-ms": "60000"})
        took = time.monotonic() - start
    finally:
        relay.hold_method = None
    assert r.status == 504, r
    assert TTL_S / 2 - 1 < took < TTL_S / 2 + 0.5, took
