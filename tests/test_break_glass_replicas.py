"""Break-glass windows across Envoy replicas (`claims.etcd`): a window opened through one replica
is used by a push through another, exactly once, and a write the registry refuses does not use
it up. Two Envoys in front of one htpasswd registry, sharing one etcd."""
from __future__ import annotations

import base64
import json
import subprocess
import threading
import time

import pytest

import stack
from etcd import CLUSTER, EtcdCluster
from oci import OCI_MANIFEST, current_digest, make_manifest, oci_layout, put_manifest, request, sha256
from test_break_glass import ADMIN, REASON, htpasswd_registry, override_lines, why  # noqa: F401 (a fixture)

POLICY = {
    "global": {"immutable_tags": True},
    "break_glass": {"principals": ["release-admin"], "repositories": ["prod/**"]},
    "claims": {"etcd": {"cluster": CLUSTER, "authority": "localhost", "timeout_ms": 1000}},
}


@pytest.fixture(scope="module")
def etcd(workdir):
    c = EtcdCluster(workdir, size=1).start()
    yield c
    c.stop()


@pytest.fixture
def replicas(workdir, htpasswd_registry, etcd):  # noqa: F811 (the imported fixture)
    envoys = []
    try:
        for _ in range(2):
            port, admin = stack.free_port(), stack.free_port()
            cfg = stack.envoy_config(POLICY, port, admin, htpasswd_registry.port, manifest_reads=True)
            cfg["static_resources"]["clusters"].append(etcd.envoy_cluster())
            envoys.append(stack.Envoy(workdir, cfg, port, admin, concurrency=2).start())
        yield envoys
    finally:
        for e in envoys:
            e.stop()


def window_lines(envoy, repo: str, tag: str) -> list[dict]:
    lines = [json.loads(l[l.index("{"):]) for l in envoy.log().splitlines() if '"event":"immutable_tags.break_glass_window"' in l]
    return [l for l in lines if l["repository"] == repo and l["tag"] == tag]


def open_window(envoy, repo: str, tag: str) -> None:
    """An authorized HEAD with the reason header. Until the replica's probe learned that the
    registry demands authentication the window is not opened ("could not learn"): retried for
    that, never longer."""
    deadline = time.time() + 15
    while True:
        r = request(envoy.url, "HEAD", f"/v2/{repo}/manifests/{tag}",
                    headers={**ADMIN, "Accept": OCI_MANIFEST, "X-Break-Glass-Reason": REASON})
        assert r.status == 200, r
        lines = window_lines(envoy, repo, tag)
        if any(l["not_opened"] is None for l in lines):
            return
        assert time.time() < deadline and all("could not learn" in l["not_opened"] for l in lines), lines
        time.sleep(0.2)


def committed(etcd, repo: str, tag: str, digest: str = "") -> None:
    """Waits until the root context committed the claim of the last write of repo:tag (of
    `digest`, if given), within a tick (250 ms). Until then the claim fences every other digest:
    an override's too, which claims the tag like any write that changes it."""
    def done() -> bool:
        # `<at> <stored digest|-> <committed ms> <claimed digest|-> <holders>`: stored, no hold.
        f = (etcd.get(f"/immutable-tags/{repo}:{tag}") or "").split(" ")
        return len(f) == 5 and f[1] != "-" and f[1].endswith(digest) and f[3] == "-"
    deadline = time.time() + 3
    while not done() and time.time() < deadline:
        time.sleep(0.05)
    assert done(), ("committed", etcd.get(f"/immutable-tags/{repo}:{tag}"))


def window_key(repo: str, tag: str) -> str:
    return f"/immutable-tags/window:{repo}:{tag}:release-admin"


def test_a_window_opened_through_one_replica_is_used_once_through_another(replicas, registry, etcd, tmp_path, uid):
    a, b = replicas
    repo = f"prod/bg-replicas-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    for tag in ("v0", "v1"):
        assert put_manifest(a.url, repo, tag, m1, headers=ADMIN).status == 201
    committed(etcd, repo, "v1")
    open_window(b, repo, "v0")  # B has learned the registry's authentication too
    open_window(a, repo, "v1")
    kv = etcd.get_kv(window_key(repo, "v1"))
    assert kv is not None and etcd.get(window_key(repo, "v1")).endswith(f"\nrelease-admin\n{REASON}")
    assert 280 <= etcd.lease_ttl(kv["lease"]) <= 300, "etcd drops the window when it ends"

    # skopeo cannot send the header: it pushes through B with the principal's credentials.
    two = oci_layout(tmp_path / "two", f"two-{uid}")
    done = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--retry-times=0",
                           "--dest-creds", "release-admin:pw-admin", f"oci:{two}",
                           f"docker://127.0.0.1:{b.port}/{repo}:v1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    second = current_digest(registry.url, repo, "v1")
    assert second not in (None, sha256(m1))
    lines = [l for l in override_lines(b) if l["repository"] == repo]
    assert [(l["principal"], l["reason"], l["current_digest"], l["pushed_digest"]) for l in lines] == \
        [("release-admin", REASON, sha256(m1), second)], lines
    assert [l for l in override_lines(a) if l["repository"] == repo] == []
    # Used up: the key holds "used" on the window's lease until the window's end, so a write of
    # the window that lands late (create if absent) finds it taken.
    used = etcd.get_kv(window_key(repo, "v1"))
    assert (etcd.get(window_key(repo, "v1")), used["lease"]) == ("used", kv["lease"]), "used up"
    key = base64.b64encode(window_key(repo, "v1").encode()).decode()
    late = etcd.call("/v3/kv/txn", {"compare": [{"key": key, "target": "CREATE", "create_revision": "0"}],
                                    "success": [{"request_put": {"key": key, "value": base64.b64encode(b"late").decode(), "lease": kv["lease"]}}]})
    assert "succeeded" not in late and etcd.get(window_key(repo, "v1")) == "used", late

    # Once: the same principal's next overwrite, through A, is refused (after B's root committed
    # the override's claim: until then the refusal names the write in flight instead). A's
    # worker that wrote m1 still maps v1 to it: the override's record sends that worker to the
    # registry again, so it refuses as the other does. A few connections reach both workers.
    committed(etcd, repo, "v1", second)
    for _ in range(4):
        r = put_manifest(a.url, repo, "v1", m1, headers=ADMIN)
        assert r.status == 409, r
        assert "no break-glass window is open for the principal the request claims, 'release-admin'," in why(r), r.body
        assert current_digest(registry.url, repo, "v1") == second


def test_two_replicas_racing_for_one_window_override_once(replicas, registry, etcd, uid):
    a, b = replicas
    repo = f"prod/bg-race-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    assert put_manifest(a.url, repo, "v1", m1, headers=ADMIN).status == 201
    committed(etcd, repo, "v1")
    open_window(b, repo, "v1")
    open_window(a, repo, "v1")
    ms = [make_manifest(registry.url, repo, f"racer-{i}") for i in range(2)]
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def push(i: int) -> None:
        barrier.wait()
        results[i] = put_manifest(replicas[i].url, repo, "v1", ms[i], headers=ADMIN)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.status for r in results) == [201, 409], results
    won = next(i for i, r in enumerate(results) if r.status == 201)
    assert "no break-glass window is open" in why(results[1 - won]), results[1 - won].body
    assert current_digest(registry.url, repo, "v1") == sha256(ms[won])
    assert sum(1 for e in replicas for l in override_lines(e) if l["repository"] == repo) == 1


def test_a_write_the_registry_refuses_does_not_use_up_the_window(replicas, registry, etcd, uid):
    a, b = replicas
    repo = f"prod/bg-failed-{uid}"
    m1, m2 = make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")
    assert put_manifest(a.url, repo, "v1", m1, headers=ADMIN).status == 201
    committed(etcd, repo, "v1")
    open_window(b, repo, "v1")
    open_window(a, repo, "v1")
    # A manifest whose config blob the registry does not have: distribution refuses it.
    missing = json.loads(m2)
    missing["config"]["digest"] = sha256(f"never uploaded {uid}".encode())
    bad = json.dumps(missing).encode()
    r = put_manifest(b.url, repo, "v1", bad, headers=ADMIN)
    assert r.status == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    assert [l for l in override_lines(b) if l["repository"] == repo] == [], "not an override"
    # B's root context puts the window back within a tick.
    deadline = time.time() + 3
    while etcd.get(window_key(repo, "v1")) in (None, "used") and time.time() < deadline:
        time.sleep(0.05)
    assert etcd.get(window_key(repo, "v1")) not in (None, "used"), "put back"
    r = put_manifest(b.url, repo, "v1", m2, headers=ADMIN)
    assert r.status == 201, r
    assert current_digest(registry.url, repo, "v1") == sha256(m2)
    assert [l["pushed_digest"] for l in override_lines(b) if l["repository"] == repo] == [sha256(m2)]
