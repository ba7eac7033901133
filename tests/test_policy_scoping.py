"""Issue 30, through real Envoy to a real registry: Harbor's project scoping of rules, and nested
`repository` scopes that inherit from the nearest enclosing scope (pushes and deletes)."""
from __future__ import annotations

from oci import current_digest, head_manifest, make_manifest, put_manifest, request, sha256


def overwrite(envoy, registry, repo, tag):
    """Pushes one manifest then another to `tag`; returns the second answer, checked against
    what the registry holds."""
    m1, m2 = make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, tag, m1).status == 201, (repo, tag)
    r = put_manifest(envoy.url, repo, tag, m2)
    assert current_digest(registry.url, repo, tag) == sha256(m1 if r.status == 409 else m2), (repo, tag, r)
    return r


def test_a_copied_harbor_rule_matches_below_the_project(stacks, registry, stop_on_headers, uid):
    # Harbor's UI rule "repositories matching *, tags matching **", copied as is.
    envoy = stacks.envoy(registry, {"rules": [{"repositories": {"matching": "*"}, "tags": {"matching": "**"}}]}, stop_on_headers)
    assert overwrite(envoy, registry, f"library-{uid}/app", "v1").status == 409
    assert overwrite(envoy, registry, f"library-{uid}/team/app", "v1").status == 201, "`*` stays in one segment"


def test_a_rule_for_one_project_protects_nothing_elsewhere(stacks, registry, stop_on_headers, uid):
    policy = {"rules": [{"projects": [f"team-a-{uid}"], "repositories": {"matching": "**"}, "tags": {"matching": "**"}}]}
    envoy = stacks.envoy(registry, policy, stop_on_headers)
    assert overwrite(envoy, registry, f"library-{uid}/app", "v1").status == 201
    r = overwrite(envoy, registry, f"team-a-{uid}/x/app", "v1")
    assert r.status == 409, r
    assert r.json()["errors"][0]["detail"]["reason"] == "rules[0]"


def delete(base, repo, ref):
    return request(base, "DELETE", f"/v2/{repo}/manifests/{ref}")


def test_a_nested_scope_inherits_protection_for_pushes_and_deletes(stacks, registry, stop_on_headers, uid):
    prod = f"prod-{uid}"
    policy = {"repository": {prod: {"immutable_tags": True}, f"{prod}/legacy": {"immutable_tags_exclusions": ["^latest$"]}}}
    envoy = stacks.envoy(registry, policy, stop_on_headers)
    repo = f"{prod}/legacy/app"
    r = overwrite(envoy, registry, repo, "v1.0.0")
    assert r.status == 409, r
    assert r.json()["errors"][0]["detail"]["reason"] == f'repository."{prod}".immutable_tags = true'
    assert overwrite(envoy, registry, repo, "latest").status == 201, "the sub-path's own exclusion"
    # Deletes: the tag, and the manifest it points to (the repository's tags must be listed).
    held = current_digest(registry.url, repo, "v1.0.0")
    assert delete(envoy.url, repo, "v1.0.0").status == 409
    r = delete(envoy.url, repo, held)
    assert r.status == 409, r
    assert r.json()["errors"][0]["detail"]["tag"] == "v1.0.0"
    assert head_manifest(registry.url, repo, held).status == 200
