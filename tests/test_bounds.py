"""Issue 27's bounds, end to end: the claim slots are chosen by a keyed hash, so tags computed
offline to share a protected tag's slot (as the unkeyed hash let anyone do) do not fill it."""
from __future__ import annotations

from conftest import SAMPLE_POLICY
from oci import current_digest, make_manifest, put_manifest, sha256


def fnv_slot(repository: str, tag: str, slots: int) -> int:
    """The slot the filter chose before its hash was keyed (FNV-1a of `repository:tag`)."""
    h = 0xCBF29CE484222325
    for b in f"{repository}:{tag}".encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % slots


def test_tags_computed_to_collide_do_not_fill_a_protected_tags_slot(stacks, registry, uid):
    """16 first pushes of tags that share v1's slot under the unkeyed hash (its 16 records), then
    v1's own first push: 201 (it was 503, "claim slot full", before the key)."""
    policy = dict(SAMPLE_POLICY, claims={"slots": 64, "ttl_seconds": 60})
    envoy = stacks.envoy(registry, policy, True)
    repo = f"keyed-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    target = fnv_slot(repo, "v1", 64)
    colliding = [t for t in (f"c{i}" for i in range(100_000)) if fnv_slot(repo, t, 64) == target][:16]
    assert len(colliding) == 16
    for t in colliding:
        r = put_manifest(envoy.url, repo, t, m1)
        assert r.status == 201, (t, r)
    r = put_manifest(envoy.url, repo, "v1", m2)
    assert r.status == 201, r
    assert current_digest(registry.url, repo, "v1") == sha256(m2)
    assert put_manifest(envoy.url, repo, "v1", m1).status == 409, "still immutable"
