"""Rule lists (Harbor, STACKIT, GitLab) and multi-tag pushes, through real Envoy to a real
registry. Each policy is one of the seeds' examples, translated."""
from __future__ import annotations

from oci import current_digest, head_manifest, make_manifest, put_manifest, request, sha256, OCI_MANIFEST

# Harbor and STACKIT: "matching **" for repositories and tags.
ALL_TAGS = {"rules": [{"repositories": {"matching": "**"}, "tags": {"matching": "**"}}]}
# Harbor and STACKIT: everything except rc, test and nightly (the UI's comma list).
ALL_BUT_SCRATCH = {"rules": [{"name": "all but scratch tags", "repositories": {"matching": "**"},
                              "tags": {"excluding": "rc,test,nightly"}}]}
# STACKIT: formal release tags only.
RELEASES = {"rules": [{"repositories": {"matching": "**"}, "tags": {"matching": "v*.*.*"}}]}
# GitLab: an RE2 pattern matched anywhere in the tag.
GITLAB = {"rules": [{"name": "semver", "tags": {"regex": r"\d+\.\d+\.\d+"}},
                    {"name": "latest", "tags": {"regex": "^latest$"}},
                    {"tags": {"regex": ".*"}, "disabled": True}]}


def overwrite(envoy, registry, repo, tag, m1, m2):
    """Pushes m1 then m2 to `tag`; returns the second answer and asserts the registry agrees."""
    assert put_manifest(envoy.url, repo, tag, m1).status == 201, tag
    r = put_manifest(envoy.url, repo, tag, m2)
    expected = m1 if r.status == 409 else m2
    assert current_digest(registry.url, repo, tag) == sha256(expected), (tag, r)
    return r


def manifests(registry, repo):
    return make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")


def test_all_tags_of_all_repositories(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, ALL_TAGS, stop_on_headers)
    for repo in [f"app-{uid}", f"team/sub/app-{uid}"]:
        m1, m2 = manifests(registry, repo)
        for tag in ["v1.0.0", "latest", "rc"]:
            r = overwrite(envoy, registry, repo, tag, m1, m2)
            assert r.status == 409, (repo, tag, r)
            assert r.json()["errors"][0]["detail"]["reason"] == "rules[0]"
        assert put_manifest(envoy.url, repo, "latest", m1).status == 201, "an identical re-push passes"


def test_everything_except_rc_test_nightly(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, ALL_BUT_SCRATCH, stop_on_headers)
    repo = f"team/app-{uid}"
    m1, m2 = manifests(registry, repo)
    for tag in ["rc", "test", "nightly"]:
        assert overwrite(envoy, registry, repo, tag, m1, m2).status == 201, tag
    for tag in ["v1.0.0", "latest", "rc1", "nightly-2024"]:
        r = overwrite(envoy, registry, repo, tag, m1, m2)
        assert r.status == 409, (tag, r)
        detail = r.json()["errors"][0]["detail"]
        assert detail["reason"] == 'rule "all but scratch tags" (rules[0])', detail
        assert detail["tag"] == tag


def test_release_tags_only(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, RELEASES, stop_on_headers)
    repo = f"app-{uid}"
    m1, m2 = manifests(registry, repo)
    for tag in ["v1.2.3", "v10.0.1"]:
        assert overwrite(envoy, registry, repo, tag, m1, m2).status == 409, tag
    for tag in ["v1.2", "latest", "1.2.3"]:
        assert overwrite(envoy, registry, repo, tag, m1, m2).status == 201, tag


def test_gitlab_regex_rules(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, GITLAB, stop_on_headers)
    repo = f"group/project-{uid}"
    m1, m2 = manifests(registry, repo)
    for tag, rule in [("1.0.0", "semver"), ("v2.1.0-rc1", "semver"), ("latest", "latest")]:
        r = overwrite(envoy, registry, repo, tag, m1, m2)
        assert r.status == 409, (tag, r)
        assert r.json()["errors"][0]["detail"]["reason"] == f'rule "{rule}" (rules[{0 if rule == "semver" else 1}])'
    for tag in ["main", "v2.1", "latest-1"]:
        assert overwrite(envoy, registry, repo, tag, m1, m2).status == 201, tag


MULTI = {"rules": [{"name": "releases", "tags": {"matching": "v*"}}]}


def put_by_digest(base, repo, manifest, tags):
    query = "&".join(f"tag={t}" for t in tags)
    path = f"/v2/{repo}/manifests/{sha256(manifest)}" + (f"?{query}" if query else "")
    return request(base, "PUT", path, body=manifest, headers={"Content-Type": OCI_MANIFEST})


def test_multi_tag_push_refused_when_one_tag_is_immutable(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, MULTI, stop_on_headers)
    repo = f"app-{uid}"
    m1, m2 = manifests(registry, repo)
    # v1 written behind the filter's back: the map is cold, so each immutable tag costs a HEAD.
    assert put_manifest(registry.url, repo, "v1", m1).status == 201
    heads = registry.head_requests()
    r = put_by_digest(envoy.url, repo, m2, ["scratch", "v2", "v1"])
    assert r.status == 409, r
    err = r.json()["errors"][0]
    assert err["message"] == "Tag 'v1' is immutable and cannot be overwritten"
    assert err["detail"] == {"repository": repo, "tag": "v1", "current_digest": sha256(m1),
                             "pushed_digest": sha256(m2), "reason": 'rule "releases" (rules[0])'}
    assert registry.head_requests() - heads == 2, "one HEAD per immutable tag (v2, v1), none for scratch"
    # The registry never saw the manifest: not stored, no tag moved.
    assert head_manifest(registry.url, repo, sha256(m2)).status == 404
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    assert current_digest(registry.url, repo, "v2") is None
    assert current_digest(registry.url, repo, "scratch") is None


def test_multi_tag_push_of_new_tags_and_push_by_digest_pass(stacks, registry, stop_on_headers, uid):
    # One worker, so the push that follows meets the tag-to-digest map of the one before.
    envoy = stacks.envoy(registry, {"rules": [{"tags": {"matching": "**"}}]}, stop_on_headers, concurrency=1)
    repo = f"app-{uid}"
    m1, m2 = manifests(registry, repo)
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    # By digest with no tag: no tag changes, nothing to protect.
    r = put_by_digest(envoy.url, repo, m2, [])
    assert r.status == 201, r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    # New tags only: passed on. distribution 2.8 ignores `?tag=` (it stores the manifest by
    # digest and writes no tag).
    r = put_by_digest(envoy.url, repo, m2, ["v3", "v4"])
    assert r.status == 201, r
    assert head_manifest(registry.url, repo, sha256(m2)).status == 200
    assert current_digest(registry.url, repo, "v3") is None, "distribution 2.8 ignores ?tag="
    # Claims commit every `?tag=` of a stored write (the filter cannot tell a registry that
    # ignores `?tag=` from one that wrote the tag), and a tag absent behind the filter's back
    # is not a first push while its record lives: v3 = D1 is refused, v3 = D2 passes.
    r = put_manifest(envoy.url, repo, "v3", m1)
    assert r.status == 409, ("v3's claim record holds D2 while it lives", r)
    assert current_digest(registry.url, repo, "v3") is None
    r = put_manifest(envoy.url, repo, "v3", m2)
    assert r.status == 201, ("the digest on record: allowed", r)
    assert current_digest(registry.url, repo, "v3") == sha256(m2)
