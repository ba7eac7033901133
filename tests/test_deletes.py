"""Deletes through real Envoy to a real registry (storage.delete.enabled): an immutable tag
cannot be deleted, and neither can a manifest that an immutable tag points to."""
from __future__ import annotations

import copy
import time

import pytest

import stack
from conftest import ALICE, SAMPLE_POLICY
from oci import current_digest, head_manifest, make_manifest, put_manifest, request, sha256
from pager import Pager


def policy(**deletes) -> dict:
    p = copy.deepcopy(SAMPLE_POLICY)
    if deletes:
        p["deletes"] = deletes
    return p


def delete(base: str, repo: str, ref: str, headers: dict | None = None):
    return request(base, "DELETE", f"/v2/{repo}/manifests/{ref}", headers=headers)


def exists(base: str, repo: str, digest: str) -> bool:
    r = head_manifest(base, repo, digest)
    assert r.status in (200, 404), r
    return r.status == 200


def seed(registry, repo: str, tags: dict[str, str]) -> dict[str, bytes]:
    """Pushes one manifest per distinct seed name, straight to the registry; returns them."""
    manifests = {}
    for tag, name in tags.items():
        if name not in manifests:
            manifests[name] = make_manifest(registry.url, repo, name)
        assert put_manifest(registry.url, repo, tag, manifests[name]).status == 201
    return manifests


def assert_registry_refused_tag_delete(r) -> None:
    """distribution 2.8's own answer to `DELETE .../manifests/<tag>` (it deletes by digest only):
    the request reached the registry, and the filter did not answer it."""
    assert r.status == 400, r
    assert r.json() == {"errors": [{"code": "DIGEST_INVALID", "message": "provided digest did not match uploaded content"}]}, r


@pytest.fixture
def pager(registry):
    p = Pager(registry).start()
    yield p
    p.stop()


def test_immutable_tag_delete_is_refused_and_mutable_passes(envoy, registry, uid):
    repo = f"app-{uid}"
    m = seed(registry, repo, {"v1": "one", "latest": "one"})["one"]

    r = delete(envoy.url, repo, "v1")
    assert r.status == 409, r
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"errors": [{
        "code": "DENIED",
        "message": "Tag 'v1' is immutable and cannot be deleted",
        "detail": {"repository": repo, "tag": "v1", "reason": "global.immutable_tags = true"},
    }]}
    assert current_digest(registry.url, repo, "v1") == sha256(m)

    # A mutable tag's delete reaches the registry, which answers it as it would directly
    # (distribution 2.8 does not delete by tag: it refuses with its own error).
    direct = delete(registry.url, repo, "latest")
    through = delete(envoy.url, repo, "latest")
    assert (through.status, through.body) == (direct.status, direct.body)
    assert "is immutable" not in through.body.decode()


def test_digest_held_by_an_immutable_tag_is_refused(envoy, registry, uid):
    repo = f"app-{uid}"
    ms = seed(registry, repo, {"v1": "one", "latest": "one", "v2": "two"})
    d1 = sha256(ms["one"])

    r = delete(envoy.url, repo, d1)
    assert r.status == 409, r
    err = r.json()["errors"][0]
    assert err["code"] == "DENIED"
    assert err["message"] == f"Manifest '{d1}' is held by immutable tag 'v1' and cannot be deleted"
    assert err["detail"] == {"repository": repo, "digest": d1, "tag": "v1", "tags": ["v1"], "reason": "global.immutable_tags = true"}
    assert exists(registry.url, repo, d1), "checked on the registry itself"
    assert current_digest(registry.url, repo, "v1") == d1

    # Again, now that the map knows v1: still refused, still there.
    assert delete(envoy.url, repo, d1).status == 409
    assert exists(registry.url, repo, d1)


def test_digest_held_by_a_tag_pushed_through_envoy_is_refused(envoy, registry, uid):
    repo = f"app-{uid}"
    m = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v1.0.0", m).status == 201  # the map learns it
    r = delete(envoy.url, repo, sha256(m))
    assert r.status == 409, r
    assert r.json()["errors"][0]["detail"]["tag"] == "v1.0.0"
    assert exists(registry.url, repo, sha256(m))


def test_digest_held_only_by_mutable_tags_is_deleted(envoy, registry, uid):
    repo = f"app-{uid}"
    ms = seed(registry, repo, {"v1": "one", "latest": "two", "main": "two"})
    d1, d2 = sha256(ms["one"]), sha256(ms["two"])

    r = delete(envoy.url, repo, d2)
    assert r.status == 202, r
    assert not exists(registry.url, repo, d2)
    assert current_digest(registry.url, repo, "latest") is None
    assert exists(registry.url, repo, d1), "the immutable tag's manifest is untouched"
    assert current_digest(registry.url, repo, "v1") == d1


def test_untagged_digest_and_unknown_repository(envoy, registry, uid):
    repo = f"app-{uid}"
    ms = seed(registry, repo, {"v1": "one"})
    loose = make_manifest(registry.url, repo, "loose")
    assert put_manifest(registry.url, repo, sha256(loose), loose).status == 201
    assert delete(envoy.url, repo, sha256(loose)).status == 202
    assert not exists(registry.url, repo, sha256(loose))
    assert exists(registry.url, repo, sha256(ms["one"]))

    # No such repository: nothing to protect, the registry answers.
    r = delete(envoy.url, f"nothing-{uid}", sha256(b"x"))
    assert r.status == 404, r


def test_repository_that_cannot_hold_immutable_tags_pays_no_listing(envoy, registry, uid):
    repo = f"dev/app-{uid}"  # "dev": immutable_tags = false in the sample policy
    ms = seed(registry, repo, {"v1": "one"})
    # Passed on: distribution 2.8 answers a delete by tag with its own error, and keeps the tag.
    assert_registry_refused_tag_delete(delete(envoy.url, repo, "v1"))
    assert current_digest(registry.url, repo, "v1") == sha256(ms["one"])
    assert delete(envoy.url, repo, sha256(ms["one"])).status == 202
    assert not exists(registry.url, repo, sha256(ms["one"]))
    listed = [line for line in registry.log_path.read_text(errors="replace").splitlines()
              if f"/v2/{repo}/tags/list" in line]
    assert listed == [], listed


def test_more_tags_than_one_page(stacks, registry, pager, stop_on_headers, uid):
    envoy = stacks.envoy(pager, policy(page_size=3), stop_on_headers)
    repo = f"app-{uid}"
    # Pages of 3 in lexical order: the only tag holding "two" is on the third page.
    tags = {f"a{i}": "one" for i in range(6)} | {"z": "two", "latest": "three"}
    ms = seed(registry, repo, tags)
    d2, d3 = sha256(ms["two"]), sha256(ms["three"])
    auth = {"Authorization": "Basic dXNlcjpwYXNz"}

    r = delete(envoy.url, repo, d2, headers=auth)
    assert r.status == 409, r
    assert r.json()["errors"][0]["detail"]["tag"] == "z"
    assert exists(registry.url, repo, d2)
    pages = pager.seen("GET", f"/v2/{repo}/tags/list")
    assert [p for p, _ in pages] == [
        f"/v2/{repo}/tags/list?n=3",
        f"/v2/{repo}/tags/list?n=3&last=a2",
        f"/v2/{repo}/tags/list?n=3&last=a5",
    ]
    heads = pager.seen("HEAD", f"/v2/{repo}/manifests/")
    assert heads, "immutable tags were looked up"
    assert all(a == auth["Authorization"] for _, a in pages + heads), "the client's Authorization goes with every call"
    assert not any(p.endswith("/latest") for p, _ in heads), "mutable tags are not looked up"

    # Held only by the mutable "latest" (on the last page): deleted.
    r = delete(envoy.url, repo, d3)
    assert r.status == 202, r
    assert not exists(registry.url, repo, d3)


def test_absolute_link_urls_are_followed(stacks, registry, stop_on_headers, uid):
    pager = Pager(registry, absolute_links=True).start()
    try:
        envoy = stacks.envoy(pager, policy(page_size=2), stop_on_headers)
        repo = f"app-{uid}"
        ms = seed(registry, repo, {"a": "one", "b": "one", "c": "one", "d": "two"})
        r = delete(envoy.url, repo, sha256(ms["two"]))
        assert r.status == 409, r
        assert r.json()["errors"][0]["detail"]["tag"] == "d"
        assert len(pager.seen("GET", f"/v2/{repo}/tags/list")) == 2
    finally:
        pager.stop()


def test_too_many_immutable_tags_refuses_with_a_clear_error(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, policy(max_immutable_tags=3), stop_on_headers)
    repo = f"app-{uid}"
    ms = seed(registry, repo, {"a": "one", "b": "one", "c": "one", "d": "one", "latest": "two"})
    r = delete(envoy.url, repo, sha256(ms["two"]))
    assert r.status == 409, r
    err = r.json()["errors"][0]
    assert err["code"] == "DENIED"
    assert "more than 3 immutable tags" in err["message"]
    assert exists(registry.url, repo, sha256(ms["two"]))


def test_registry_down_refuses_with_the_manifest_intact(stacks, own_registry, stop_on_headers, uid):
    envoy = stacks.envoy(own_registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"app-{uid}"
    ms = seed(own_registry, repo, {"v1": "one", "latest": "two"})
    d2 = sha256(ms["two"])
    own_registry.stop()

    r = delete(envoy.url, repo, d2)
    assert r.status == 503, r
    assert r.headers["content-type"] == "application/json"
    err = r.json()["errors"][0]
    assert err["code"] == "UNAVAILABLE"
    assert err["detail"]["digest"] == d2 and err["detail"]["repository"] == repo
    assert d2 in err["message"]

    own_registry.start()
    assert exists(own_registry.url, repo, d2), "the manifest is intact"
    assert delete(envoy.url, repo, d2).status == 202, "served normally once the registry is back"
    assert not exists(own_registry.url, repo, d2)


def test_protection_can_be_switched_off(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, policy(protect=False), stop_on_headers)
    repo = f"app-{uid}"
    ms = seed(registry, repo, {"v1": "one"})
    assert_registry_refused_tag_delete(delete(registry.url, repo, "v1"))
    assert_registry_refused_tag_delete(delete(envoy.url, repo, "v1"))  # passed on, unchecked
    assert current_digest(registry.url, repo, "v1") == sha256(ms["one"])
    assert delete(envoy.url, repo, sha256(ms["one"])).status == 202
    assert not exists(registry.url, repo, sha256(ms["one"]))


def test_registry_auth_challenge_is_passed_back(stacks, registry, locked, stop_on_headers, uid):
    """A registry that wants credentials: its 401 and WWW-Authenticate reach the client, and the
    client's credentials reach the registry with every call the filter makes."""
    envoy = stacks.envoy(locked, SAMPLE_POLICY, stop_on_headers)
    repo = f"app-{uid}"
    ms = seed(registry, repo, {"v1": "one", "latest": "two"})
    d1, d2 = sha256(ms["one"]), sha256(ms["two"])

    r = delete(envoy.url, repo, d2)
    assert r.status == 401, r
    assert r.headers["www-authenticate"] == 'Basic realm="test-realm"'
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert exists(registry.url, repo, d2)

    r = delete(envoy.url, repo, d1, headers=ALICE)
    assert r.status == 409, r
    assert r.json()["errors"][0]["detail"]["tag"] == "v1"
    assert exists(registry.url, repo, d1)

    assert delete(envoy.url, repo, d2, headers=ALICE).status == 202
    assert not exists(registry.url, repo, d2)


def test_map_forgets_tags_of_a_deleted_manifest(stacks, registry, stop_on_headers, uid):
    """After a delete by digest passes, the map forgets the tags it had learned for that digest:
    a tag the registry dropped with the manifest can be pushed again at once."""
    # Claims of 2 s: v1's committed record (which refuses "absent" while it lives: a tag gone
    # after the filter stored it is no new tag) expires before the push below.
    policy = dict(SAMPLE_POLICY, upstream=dict(SAMPLE_POLICY.get("upstream", {}), write_timeout_ms=1000),
                  claims={"ttl_seconds": 2})
    envoy = stacks.envoy(registry, policy, stop_on_headers, concurrency=1)  # one map
    repo = f"app-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    d1 = sha256(m1)
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201  # the map learns v1 -> d1
    # Behind the filter's back: the manifest and v1 go, the same manifest comes back as "latest".
    assert delete(registry.url, repo, d1).status == 202
    assert put_manifest(registry.url, repo, "latest", m1).status == 201
    assert current_digest(registry.url, repo, "v1") is None

    assert delete(envoy.url, repo, d1).status == 202, "only the mutable latest holds it"
    time.sleep(2.3)
    r = put_manifest(envoy.url, repo, "v1", m2)
    assert r.status == 201, ("the map still believed v1 held the deleted manifest", r)


def test_invalid_delete_settings_refuse_to_start(workdir, registry):
    port, admin = stack.free_port(), stack.free_port()
    cfg = stack.envoy_config(policy(page_size=0), port, admin, registry.port)
    e = stack.Envoy(workdir, cfg, port, admin).start(expect_failure=True)
    assert e.proc is None or e.proc.returncode != 0
    log = e.log()
    assert "deletes.page_size" in log, log[-3000:]
