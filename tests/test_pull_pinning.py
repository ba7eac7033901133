"""Pull pinning (`pin_immutable_pulls`): reads of immutable tags the map knows go to the registry
by digest, and the client sees exactly what an unpinned pull returns."""
from __future__ import annotations

import re

from oci import ACCEPT, make_manifest, put_manifest, request, sha256

PINNING = {"global": {"immutable_tags": True, "immutable_tags_exclusions": ["^latest$"]},
           "pin_immutable_pulls": True}


def pinning_envoy(stacks, registry, policy=PINNING):
    # One worker: the map is per worker, so a second worker would have to learn on its own.
    return stacks.envoy(registry, policy, concurrency=1, manifest_reads=True)


def reads(registry, repo: str, ua: str) -> list[tuple[str, str]]:
    """(method, path) of the manifest reads the registry served for `repo` with user agent `ua`."""
    out = []
    for line in registry.log_path.read_text(errors="replace").splitlines():
        m = re.search(r'"(GET|HEAD) (/v2/' + re.escape(repo) + r'/manifests/[^ ]+) HTTP/[^"]*" \d+ \d+ "[^"]*" "([^"]*)"', line)
        if m and m.group(3) == ua:
            out.append((m.group(1), m.group(2)))
    return out


def pull(base: str, repo: str, ref: str, ua: str, method: str = "GET"):
    return request(base, method, f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT, "User-Agent": ua})


def same_answer(a, b):
    assert (a.status, a.body) == (b.status, b.body)
    for h in ["docker-content-digest", "content-type", "content-length"]:
        assert a.headers.get(h) == b.headers.get(h), h


def test_pinned_pull_is_identical_and_reads_the_digest(stacks, registry, uid):
    envoy = pinning_envoy(stacks, registry)
    repo = f"pin-{uid}"
    m = make_manifest(registry.url, repo, "one")
    assert put_manifest(registry.url, repo, "v1", m).status == 201  # behind Envoy's back: map cold
    digest = sha256(m)

    direct = pull(registry.url, repo, "v1", "direct")
    first = pull(envoy.url, repo, "v1", f"first-{uid}")    # unpinned: teaches the map
    second = pull(envoy.url, repo, "v1", f"second-{uid}")  # pinned
    head = pull(envoy.url, repo, "v1", f"head-{uid}", "HEAD")
    direct_head = pull(registry.url, repo, "v1", "direct", "HEAD")

    assert direct.status == 200 and direct.digest == digest
    same_answer(first, direct)
    same_answer(second, direct)
    same_answer(head, direct_head)
    assert reads(registry, repo, f"first-{uid}") == [("GET", f"/v2/{repo}/manifests/v1")]
    assert reads(registry, repo, f"second-{uid}") == [("GET", f"/v2/{repo}/manifests/{digest}")], \
        "rewritten to the digest, with the client's headers kept"
    assert reads(registry, repo, f"head-{uid}") == [("HEAD", f"/v2/{repo}/manifests/{digest}")]


def test_a_push_through_the_filter_teaches_the_map(stacks, registry, uid):
    envoy = pinning_envoy(stacks, registry)
    repo = f"pin-{uid}"
    m = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v2", m).status == 201
    r = pull(envoy.url, repo, "v2", f"p-{uid}")
    assert r.status == 200 and r.body == m and r.digest == sha256(m)
    assert reads(registry, repo, f"p-{uid}") == [("GET", f"/v2/{repo}/manifests/{sha256(m)}")]


def test_a_read_with_a_query_string_is_neither_pinned_nor_taught_from(stacks, registry, uid):
    # A mirror may pick its upstream by the query (containerd's `?ns=`): the map's digest may not
    # be that upstream's, and that upstream's digest must not pin other clients' reads.
    envoy = pinning_envoy(stacks, registry)
    repo = f"pin-{uid}"
    m = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v2", m).status == 201
    for _ in range(2):
        r = pull(envoy.url, repo, "v2?ns=example", f"q-{uid}")
        assert r.status == 200 and r.body == m and r.digest == sha256(m)
    assert reads(registry, repo, f"q-{uid}") == [("GET", f"/v2/{repo}/manifests/v2?ns=example")] * 2, \
        "sent by tag, as it came"
    m3 = make_manifest(registry.url, repo, "three")
    assert put_manifest(registry.url, repo, "v3", m3).status == 201  # behind Envoy's back: map cold
    assert pull(envoy.url, repo, "v3?ns=example", f"t-{uid}").status == 200
    assert pull(envoy.url, repo, "v3", f"u-{uid}").status == 200
    assert reads(registry, repo, f"u-{uid}") == [("GET", f"/v2/{repo}/manifests/v3")], \
        "a read with a query taught the map nothing"


def test_mutable_tags_and_unknown_tags_are_not_pinned(stacks, registry, uid):
    envoy = pinning_envoy(stacks, registry)
    repo = f"pin-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "latest", m1).status == 201
    assert put_manifest(envoy.url, repo, "latest", m2).status == 201
    for _ in range(2):
        r = pull(envoy.url, repo, "latest", f"m-{uid}")
        assert r.status == 200 and r.body == m2
    assert reads(registry, repo, f"m-{uid}") == [("GET", f"/v2/{repo}/manifests/latest")] * 2
    r = pull(envoy.url, repo, "nope", f"n-{uid}")
    assert r.status == 404
    assert reads(registry, repo, f"n-{uid}") == [("GET", f"/v2/{repo}/manifests/nope")]


def test_pinning_is_off_unless_asked(stacks, registry, uid):
    policy = dict(PINNING, pin_immutable_pulls=False)
    envoy = pinning_envoy(stacks, registry, policy)
    repo = f"pin-{uid}"
    m = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v1", m).status == 201
    for _ in range(2):
        assert pull(envoy.url, repo, "v1", f"off-{uid}").body == m
    assert reads(registry, repo, f"off-{uid}") == [("GET", f"/v2/{repo}/manifests/v1")] * 2
