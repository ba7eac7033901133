"""Tag pushes through real Envoy to a real registry under the sample policy (envoy/policy.json)."""
from __future__ import annotations

import json
import time

from conftest import SAMPLE_POLICY
from oci import ACCEPT, current_digest, make_manifest, put_manifest, request, sha256

EXPECTED_KEYS = {"repository", "tag", "current_digest", "pushed_digest", "reason"}


def test_first_push_overwrite_and_identical_repush(envoy, registry, uid):
    repo = f"app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")

    r = put_manifest(envoy.url, repo, "v1.0.0", m1)
    assert r.status == 201, r
    assert r.digest == sha256(m1)

    r = put_manifest(envoy.url, repo, "v1.0.0", m2)
    assert r.status == 409, r
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"errors": [{
        "code": "DENIED",
        "message": "Tag 'v1.0.0' is immutable and cannot be overwritten",
        "detail": {
            "repository": repo,
            "tag": "v1.0.0",
            "current_digest": sha256(m1),
            "pushed_digest": sha256(m2),
            "reason": "global.immutable_tags = true",
        },
    }]}
    assert current_digest(registry.url, repo, "v1.0.0") == sha256(m1), "checked on the registry itself"

    r = put_manifest(envoy.url, repo, "v1.0.0", m1)
    assert r.status == 201, "an identical re-push is idempotent"
    assert current_digest(registry.url, repo, "v1.0.0") == sha256(m1)


def test_tag_pushed_directly_is_protected_with_a_cold_map(envoy, registry, uid):
    repo = f"cold-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, "v2", m1).status == 201  # behind Envoy's back
    r = put_manifest(envoy.url, repo, "v2", m2)
    assert r.status == 409, r
    assert current_digest(registry.url, repo, "v2") == sha256(m1)


def test_excluded_tags_stay_mutable(envoy, registry, uid):
    repo = f"app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    for tag in ["latest", "main"]:
        assert put_manifest(envoy.url, repo, tag, m1).status == 201
        assert put_manifest(envoy.url, repo, tag, m2).status == 201
        assert current_digest(registry.url, repo, tag) == sha256(m2)


def test_exclusions_match_the_whole_tag(stacks, registry, stop_on_headers, uid):
    """Unanchored exclusions (`latest`, `rc-\\d+`) mean the whole tag, as docs/policy.md says: a tag that
    only starts or ends with an excluded name, or contains it, is still immutable."""
    policy = {"global": {"immutable_tags": True, "immutable_tags_exclusions": ["latest", "rc-\\d+"]}}
    envoy = stacks.envoy(registry, policy, stop_on_headers)
    repo = f"whole-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    for tag in ["latest", "rc-1"]:
        assert put_manifest(envoy.url, repo, tag, m1).status == 201
        assert put_manifest(envoy.url, repo, tag, m2).status == 201, tag
        assert current_digest(registry.url, repo, tag) == sha256(m2)
    for tag in ["latest-1", "latestx", "xlatest", "my-latest", "rc-1a", "rc-1.2", "xrc-1"]:
        assert put_manifest(envoy.url, repo, tag, m1).status == 201, tag
        r = put_manifest(envoy.url, repo, tag, m2)
        assert r.status == 409, (tag, r)
        assert r.json()["errors"][0]["code"] == SAMPLE_POLICY["error_code"], r
        assert current_digest(registry.url, repo, tag) == sha256(m1), tag


def test_repository_override_makes_everything_mutable(envoy, registry, uid):
    repo = f"dev/app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    assert put_manifest(envoy.url, repo, "v1", m2).status == 201
    assert current_digest(registry.url, repo, "v1") == sha256(m2)


def test_repository_exclusions_replace_the_global_list(envoy, registry, uid):
    repo = f"staging/app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    # staging's own list excludes rc-*
    assert put_manifest(envoy.url, repo, "rc-1", m1).status == 201
    assert put_manifest(envoy.url, repo, "rc-1", m2).status == 201
    # main is excluded globally, but staging's list replaces the global one: immutable here
    assert put_manifest(envoy.url, repo, "main", m1).status == 201
    r = put_manifest(envoy.url, repo, "main", m2)
    assert r.status == 409, r
    assert r.json()["errors"][0]["detail"]["reason"] == 'repository."staging".immutable_tags = true'
    assert current_digest(registry.url, repo, "main") == sha256(m1)


def test_look_ahead_protects_release_tags_only(envoy, registry, uid):
    repo = f"releases/app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "v1.2.3", m1).status == 201
    assert put_manifest(envoy.url, repo, "v1.2.3", m2).status == 409
    for tag in ["v1.2", "v1.2.3-rc1", "nightly"]:
        assert put_manifest(envoy.url, repo, tag, m1).status == 201
        assert put_manifest(envoy.url, repo, tag, m2).status == 201, tag
    assert current_digest(registry.url, repo, "v1.2.3") == sha256(m1)


def test_push_by_digest_passes(envoy, registry, uid):
    repo = f"app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    r = put_manifest(envoy.url, repo, sha256(m1), m1)
    assert r.status == 201, r
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, sha256(m2), m2).status == 201, "no tag written: nothing to protect"
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_ordinary_traffic_is_untouched(envoy, registry, uid):
    repo = f"app-{uid}"
    m1 = make_manifest(envoy.url, repo, "through-envoy")  # blob uploads through the filter
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    for path in ["/v2/", f"/v2/{repo}/tags/list", "/v2/_catalog", f"/v2/{repo}/manifests/v1"]:
        h = {"Accept": ACCEPT}
        via, direct = request(envoy.url, "GET", path, headers=h), request(registry.url, "GET", path, headers=h)
        assert via.status == direct.status == 200, path
        assert via.body == direct.body, path
    tags = json.loads(request(envoy.url, "GET", f"/v2/{repo}/tags/list").body)
    assert tags == {"name": repo, "tags": ["v1"]}


def test_unclassifiable_writes_are_refused(envoy, registry, uid):
    repo = f"app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    m2 = make_manifest(registry.url, repo, "two")
    for path in [f"/v2/{repo}/manifests/v1%", f"/v2/{repo}/manifests/v1%zz", f"/v2/{repo}/./manifests/v1",
                 f"/v2/Bad{repo}/manifests/v1"]:
        r = request(envoy.url, "PUT", path, body=m2, headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status == 400, (path, r)
        assert r.json()["errors"][0]["code"] in {"NAME_INVALID", "MANIFEST_INVALID"}
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_percent_encoded_paths_are_read_like_the_registry(envoy, registry, uid):
    repo = f"team/app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    encoded = repo.replace("/", "%2F")
    r = request(envoy.url, "PUT", f"/v2/{encoded}/manifests/v%31", body=m2,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 409, r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_a_stale_map_entry_is_checked_with_the_registry_before_refusing(stacks, registry, stop_on_headers, uid):
    # Claims of 2 s: the committed record of v1 -> m1 (which refuses "absent" while it lives:
    # a tag gone after the filter stored it is no new tag) expires before the second push.
    policy = dict(SAMPLE_POLICY, upstream=dict(SAMPLE_POLICY.get("upstream", {}), write_timeout_ms=1000),
                  claims={"ttl_seconds": 2})
    envoy = stacks.envoy(registry, policy, stop_on_headers, concurrency=1)  # one map
    repo = f"stale-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201  # the map learns v1 -> m1
    # Behind the filter's back the manifest, and with it the tag, goes away.
    assert request(registry.url, "DELETE", f"/v2/{repo}/manifests/{sha256(m1)}").status == 202
    time.sleep(2.3)
    heads = registry.head_requests()
    r = put_manifest(envoy.url, repo, "v1", m2)
    assert r.status == 201, ("the map's stale v1 -> m1 was taken for the registry's word", r)
    assert registry.head_requests() == heads + 1, "exactly one HEAD confirmed it"
    assert current_digest(registry.url, repo, "v1") == sha256(m2)
    # And an overwrite of the new digest is still refused.
    assert put_manifest(envoy.url, repo, "v1", m1).status == 409
