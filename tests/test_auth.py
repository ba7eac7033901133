"""Pushes to a registry that wants credentials: the registry's challenge reaches the client,
the client's credentials reach the registry with the filter's HEADs, and a warm map never
answers an unauthenticated client with another image's digest."""
from __future__ import annotations

from conftest import ALICE, SAMPLE_POLICY
from oci import current_digest, make_manifest, put_manifest, sha256


def test_push_needs_the_registrys_credentials(stacks, registry, locked, stop_on_headers, uid):
    envoy = stacks.envoy(locked, SAMPLE_POLICY, stop_on_headers, concurrency=1)  # one map
    repo = f"auth-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")

    assert put_manifest(envoy.url, repo, "v1", m1, headers=ALICE).status == 201  # the map learns v1

    r = put_manifest(envoy.url, repo, "v1", m2)  # no credentials, warm map
    assert r.status == 401, r
    assert r.headers["www-authenticate"] == 'Basic realm="test-realm"'
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert sha256(m1) not in r.body.decode(), "an unauthenticated client learns no digest"

    r = put_manifest(envoy.url, repo, "v1", m2, headers=ALICE)
    assert r.status == 409, r
    assert put_manifest(envoy.url, repo, "v1", m1, headers=ALICE).status == 201
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
