"""A break-glass delete by digest removes every tag holding the manifest, so it must be covered
for each of them, and is recorded for each (issue 29); a delete is allowed only on the registry's
word, never on a stale map entry (issue 28 item 3); the record's request id is Envoy's; the
break-glass reason is bounded. Distribution with htpasswd; windows in Envoy's shared data (one
Envoy) and in etcd (two Envoys: windows opened through one, the delete sent through the other)."""
from __future__ import annotations

import json
import time

import pytest

import stack
from etcd import CLUSTER, EtcdCluster
from oci import OCI_MANIFEST, current_digest, make_manifest, put_manifest, request, sha256
from test_break_glass import ADMIN, HTPASSWD, override_lines, overrides, why  # noqa: F401

REASON = "INC-9 retire v9.9.9 only"
FORGED = "forged-0000-request-id-of-someone-else"


def policy(store: str) -> dict:
    p = {
        "global": {"immutable_tags": True},
        "break_glass": {"principals": ["release-admin"], "repositories": ["prod/**"]},
    }
    if store == "etcd":
        p["claims"] = {"etcd": {"cluster": CLUSTER, "authority": "localhost", "timeout_ms": 1000}}
    return p


@pytest.fixture(scope="module")
def etcd(workdir):
    c = EtcdCluster(workdir, size=1).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def auth_registry(registry, workdir):
    path = workdir / "htpasswd-delete-scope"
    path.write_text(HTPASSWD)
    storage = {"filesystem": {"rootdirectory": str(registry.dir / "data")}, "delete": {"enabled": True}}
    r = stack.Registry(workdir, extra={"storage": storage, "auth": {"htpasswd": {"realm": "ds", "path": str(path)}}})
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module", params=["shared", "etcd"])
def pair(request, workdir, auth_registry):
    """(a, b): windows are opened through a, deletes sent through b (the same Envoy in shared
    data). One worker each, so the map a push teaches is the one its delete consults."""
    store = request.param
    count = 1 if store == "shared" else 2
    envoys = []
    try:
        for _ in range(count):
            port, admin = stack.free_port(), stack.free_port()
            cfg = stack.envoy_config(policy(store), port, admin, auth_registry.port, manifest_reads=True)
            if store == "etcd":
                cfg["static_resources"]["clusters"].append(request.getfixturevalue("etcd").envoy_cluster())
            envoys.append(stack.Envoy(workdir, cfg, port, admin, concurrency=1).start())
        yield (envoys[0], envoys[-1], store)
    finally:
        for e in envoys:
            e.stop()


def refusal_lines(envoy) -> list[dict]:
    return [json.loads(l[l.index("{"):]) for l in envoy.log().splitlines() if '"event":"immutable_tags.refusal"' in l]


def window_lines(envoy, repo: str, tag: str) -> list[dict]:
    lines = [json.loads(l[l.index("{"):]) for l in envoy.log().splitlines() if '"event":"immutable_tags.break_glass_window"' in l]
    return [l for l in lines if l["repository"] == repo and l["tag"] == tag]


def open_window(envoy, repo: str, tag: str, reason: str = REASON) -> list[dict]:
    """An authorized HEAD with the reason header; retried only while the Envoy has not learned
    that the registry demands authentication. The window lines for that tag."""
    deadline = time.time() + 15
    while True:
        r = request(envoy.url, "HEAD", f"/v2/{repo}/manifests/{tag}",
                    headers={**ADMIN, "Accept": OCI_MANIFEST, "X-Break-Glass-Reason": reason})
        assert r.status == 200, r
        lines = window_lines(envoy, repo, tag)
        if not lines or any("could not learn" not in (l["not_opened"] or "") for l in lines) or time.time() > deadline:
            return lines
        time.sleep(0.2)


def seed(a, repo: str) -> tuple[bytes, bytes]:
    """m held by a-scratch and v9.9.9 (pushed through a), and other held by v0, whose window
    proves each Envoy has learned the registry's authentication."""
    m = make_manifest_for(repo, "held")
    other = make_manifest_for(repo, "other")
    for tag, man in (("a-scratch", m), ("v9.9.9", m), ("v0", other)):
        assert put_manifest(a.url, repo, tag, man, headers=ADMIN).status == 201
    return m, other


def make_manifest_for(repo: str, name: str) -> bytes:
    return make_manifest(REGISTRY[0].url, repo, name)


REGISTRY: list = []


@pytest.fixture(autouse=True)
def _registry(registry):
    REGISTRY[:] = [registry]


def learned(envoy, repo: str) -> None:
    lines = open_window(envoy, repo, "v0")
    assert any(l["not_opened"] is None for l in lines), lines


def delete(envoy, repo: str, ref: str, headers: dict):
    """Retried while the delete fence finds a push of the digest in flight: with claims in etcd a
    push's commit is recorded at the next root tick (250 ms), its claim held until then."""
    deadline = time.time() + 3
    while True:
        r = request(envoy.url, "DELETE", f"/v2/{repo}/manifests/{ref}", headers=headers)
        if b"is in flight; retry the delete" not in r.body or time.time() > deadline:
            return r
        time.sleep(0.2)


def test_a_window_for_one_tag_does_not_delete_the_other(pair, registry, uid):
    a, b, store = pair
    repo = f"prod/scope-one-{store}-{uid}"
    m, _ = seed(a, repo)
    learned(a, repo)
    learned(b, repo)
    assert any(l["not_opened"] is None for l in open_window(a, repo, "v9.9.9"))
    before = overrides(b)
    r = delete(b, repo, sha256(m), ADMIN)
    assert r.status == 409, r
    detail = r.json()["errors"][0]["detail"]
    assert detail["not_covered"] == ["a-scratch"], detail
    assert detail["tags"] == ["a-scratch", "v9.9.9"], detail
    assert "tag 'a-scratch'" in why(r), r.body
    assert current_digest(registry.url, repo, "a-scratch") == sha256(m)
    assert current_digest(registry.url, repo, "v9.9.9") == sha256(m)
    assert overrides(b) == before
    assert [l for l in override_lines(b) if l["repository"] == repo] == []


def test_a_delete_covered_for_both_tags_is_recorded_for_both(pair, registry, uid):
    a, b, store = pair
    # With a window for each tag.
    repo = f"prod/scope-both-{store}-{uid}"
    m, _ = seed(a, repo)
    learned(a, repo)
    learned(b, repo)
    for tag in ("v9.9.9", "a-scratch"):
        assert any(l["not_opened"] is None for l in open_window(a, repo, tag))
    before = overrides(b)
    r = delete(b, repo, sha256(m), ADMIN)
    assert r.status == 202, r
    assert current_digest(registry.url, repo, "a-scratch") is None
    assert current_digest(registry.url, repo, "v9.9.9") is None
    lines = [l for l in override_lines(b) if l["repository"] == repo]
    assert sorted(l["tag"] for l in lines) == ["a-scratch", "v9.9.9"], lines
    assert all(l["action"] == "delete" and l["current_digest"] == sha256(m) and l["reason"] == REASON for l in lines)
    assert overrides(b) == before + 2
    # With the reason header: it covers every tag, and every tag is recorded.
    repo = f"prod/scope-reason-{store}-{uid}"
    m, _ = seed(a, repo)
    learned(b, repo)
    r = delete(b, repo, sha256(m), {**ADMIN, "X-Break-Glass-Reason": "INC-10 retire both"})
    assert r.status == 202, r
    lines = [l for l in override_lines(b) if l["repository"] == repo]
    assert sorted(l["tag"] for l in lines) == ["a-scratch", "v9.9.9"], lines
    assert overrides(b) == before + 4


def test_a_stale_map_entry_does_not_let_a_delete_through(pair, registry, uid):
    a, _, store = pair
    repo = f"prod/scope-stale-{store}-{uid}"
    d1 = make_manifest_for(repo, "d1")
    d2 = make_manifest_for(repo, "d2")
    assert put_manifest(a.url, repo, "v1", d1, headers=ADMIN).status == 201  # the map: v1 -> D1
    # v1 moved to D2 behind the filter's back (straight at the registry).
    assert put_manifest(registry.url, repo, "v1", d2).status == 201
    r = delete(a, repo, sha256(d2), ADMIN)
    assert r.status == 409, r
    assert r.json()["errors"][0]["detail"]["tag"] == "v1"
    assert current_digest(registry.url, repo, "v1") == sha256(d2)


def test_a_forged_request_id_cannot_impersonate_another_request(pair, registry, uid):
    a, b, store = pair
    repo = f"prod/scope-rid-{store}-{uid}"
    m, _ = seed(a, repo)
    learned(b, repo)
    r = delete(b, repo, "v9.9.9", {**ADMIN, "x-request-id": FORGED})
    assert r.status == 409, r
    lines = [l for l in refusal_lines(b) if l["repository"] == repo and l["method"] == "DELETE"]
    assert len(lines) == 1, lines
    assert lines[0]["request_id"] == r.headers["x-request-id"] != FORGED, lines
    # The break-glass record too.
    r = delete(b, repo, sha256(m), {**ADMIN, "X-Break-Glass-Reason": "INC-11", "x-request-id": FORGED})
    assert r.status == 202, r
    lines = [l for l in override_lines(b) if l["repository"] == repo]
    assert len(lines) == 2 and all(l["request_id"] == r.headers["x-request-id"] != FORGED for l in lines), lines


def test_an_over_long_reason_is_refused(pair, registry, uid):
    a, b, store = pair
    repo = f"prod/scope-long-{store}-{uid}"
    m, _ = seed(a, repo)
    learned(b, repo)
    long = "x" * 50_031
    r = delete(b, repo, sha256(m), {**ADMIN, "X-Break-Glass-Reason": long})
    assert r.status == 409, r
    assert "longer than break_glass.max_reason_bytes (256)" in why(r), why(r)
    assert current_digest(registry.url, repo, "v9.9.9") == sha256(m)
    # Nor does it open a window.
    lines = open_window(a, repo, "v9.9.9", reason=long)
    assert lines and all("max_reason_bytes (256)" in (l["not_opened"] or "") for l in lines), lines
    r = delete(b, repo, "v9.9.9", ADMIN)
    assert r.status == 409, r
    assert current_digest(registry.url, repo, "v9.9.9") == sha256(m)
