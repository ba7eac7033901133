"""Pull pinning with Docker manifest lists and narrow `Accept` headers (issue 26).

distribution 2.8 answers a read of a tag holding a Docker manifest list, whose `Accept` lacks the
list type, with the linux/amd64 child manifest (200, the child's digest). Such an answer is not
the tag's own manifest: it must teach the map nothing, and a pinned digest is served only to
clients whose `Accept` would have got it from the registry too. Both filter configurations: the
shipped one with docs/pull-pinning.md's `manifest-reads` route, and the Istio-style one."""
from __future__ import annotations

import http.client
import json
import re
import subprocess

import pytest

import stack
from recording_upstream import RecordingUpstream
from oci import ACCEPT, current_digest, push_blob, put_manifest, request, sha256
from test_pull_pinning import PINNING, reads

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture(params=[True, stack.ISTIO], ids=["shipped", "istio"])
def pinning(request, stacks, registry):
    # One worker: one map, as for one client connection.
    if request.param is True:
        return stacks.envoy(registry, PINNING, concurrency=1, manifest_reads=True)
    return stacks.envoy(registry, PINNING, stack.ISTIO, concurrency=1)


def docker_manifest(base: str, repo: str, seed: str, arch: str) -> bytes:
    config = json.dumps({"architecture": arch, "os": "linux", "seed": seed,
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = f"layer for {seed} on {arch}".encode()
    cd, ld = push_blob(base, repo, config), push_blob(base, repo, layer)
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": DOCKER_V2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": len(layer)}],
    }, indent=2).encode()


def push_list(base: str, repo: str, tag: str, seed: str) -> tuple[bytes, bytes]:
    """Pushes a linux/amd64 + linux/arm64 Docker manifest list as `tag` (straight to `base`):
    (the list, its amd64 child)."""
    children = {}
    for arch in ("amd64", "arm64"):
        m = docker_manifest(base, repo, seed, arch)
        assert put_manifest(base, repo, sha256(m), m, {"Content-Type": DOCKER_V2}).status == 201
        children[arch] = m
    lst = json.dumps({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_V2, "digest": sha256(m), "size": len(m),
                       "platform": {"architecture": arch, "os": "linux"}} for arch, m in children.items()],
    }, indent=2).encode()
    assert put_manifest(base, repo, tag, lst, {"Content-Type": DOCKER_LIST}).status == 201
    return lst, children["amd64"]


def read(base: str, repo: str, ref: str, accept: str | None, ua: str, method: str = "GET"):
    headers = {"User-Agent": ua}
    if accept is not None:
        headers["Accept"] = accept
    return request(base, method, f"/v2/{repo}/manifests/{ref}", headers=headers)


def test_narrow_reads_teach_nothing_and_leave_the_lists_in_place(pinning, registry, uid):
    repo = f"pinlist-{uid}"
    # Behind Envoy's back: the map starts cold.
    list1, child1 = push_list(registry.url, repo, "v1", "one")
    list2, child2 = push_list(registry.url, repo, "v2", "two")

    # 1. A read of v1 that accepts only the Docker v2 manifest type: the registry converts.
    r = read(pinning.url, repo, "v1", DOCKER_V2, f"narrow-{uid}")
    direct = read(registry.url, repo, "v1", DOCKER_V2, "direct")
    assert (r.status, r.digest, r.body) == (200, sha256(child1), child1) == (direct.status, direct.digest, direct.body), \
        "a narrow read is served as the registry answers it"
    # 2. The same for a HEAD of v2.
    r = read(pinning.url, repo, "v2", DOCKER_V2, f"narrow-{uid}", "HEAD")
    assert (r.status, r.digest) == (200, sha256(child2))

    # 3. A push of v1's child to v1 is an overwrite of the list: refused, whatever was read.
    r = put_manifest(pinning.url, repo, "v1", child1, {"Content-Type": DOCKER_V2})
    assert r.status == 409, (r.status, r.body)
    assert current_digest(registry.url, repo, "v1") == sha256(list1)
    # 4. Deleting v2's list would remove an immutable tag: refused.
    r = request(pinning.url, "DELETE", f"/v2/{repo}/manifests/{sha256(list2)}")
    assert r.status == 409, (r.status, r.body)
    assert current_digest(registry.url, repo, "v2") == sha256(list2)

    # An ordinary client (every manifest type accepted) gets the lists, not the children.
    for tag, lst in (("v1", list1), ("v2", list2)):
        for ua in (f"full-{uid}", f"again-{uid}"):
            r = read(pinning.url, repo, tag, ACCEPT, ua)
            assert (r.status, r.digest, r.body) == (200, sha256(lst), lst), (tag, ua)
    # The second full read of each tag was pinned: to the list's digest.
    assert reads(registry, repo, f"again-{uid}") == [("GET", f"/v2/{repo}/manifests/{sha256(list1)}"),
                                                      ("GET", f"/v2/{repo}/manifests/{sha256(list2)}")]


def test_a_pinned_digest_is_served_only_to_clients_that_would_get_it(pinning, registry, uid):
    repo = f"pinlist-{uid}"
    lst, child = push_list(registry.url, repo, "v1", "one")
    # A full read teaches the map v1 -> the list; the next full read is pinned to it.
    assert read(pinning.url, repo, "v1", ACCEPT, f"teach-{uid}").digest == sha256(lst)
    assert read(pinning.url, repo, "v1", ACCEPT, f"pinned-{uid}").digest == sha256(lst)
    assert reads(registry, repo, f"pinned-{uid}") == [("GET", f"/v2/{repo}/manifests/{sha256(lst)}")]
    # Narrower clients get what the registry answers them by tag (by digest it would not
    # convert), and are not pinned.
    for i, accept in enumerate([DOCKER_V2, None, "*/*", f"{DOCKER_V2}, {DOCKER_LIST};q=0",
                                f"{DOCKER_V2}, {DOCKER_LIST}; foo"]):
        ua = f"narrow{i}-{uid}"
        r = read(pinning.url, repo, "v1", accept, ua)
        direct = read(registry.url, repo, "v1", accept, "direct")
        assert (r.status, r.digest, r.body) == (direct.status, direct.digest, direct.body), accept
        assert reads(registry, repo, ua) == [("GET", f"/v2/{repo}/manifests/v1")], accept
    # Whatever those reads answered, the map still says the list: full reads stay pinned to it.
    r = read(pinning.url, repo, "v1", ACCEPT, f"after-{uid}")
    assert (r.status, r.digest, r.body) == (200, sha256(lst), lst)
    assert reads(registry, repo, f"after-{uid}") == [("GET", f"/v2/{repo}/manifests/{sha256(lst)}")]


def test_skopeo_reads_are_pinned_and_get_the_list(pinning, registry, uid):
    """A real client's Accept names every stored type: its reads teach the map and are pinned."""
    repo = f"pinlist-{uid}"
    lst, _ = push_list(registry.url, repo, "v1", "one")
    for _ in range(2):
        r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--retry-times=0",
                            f"docker://127.0.0.1:{pinning.port}/{repo}:v1"], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == lst
    paths = [p for line in registry.log_path.read_text(errors="replace").splitlines()
             if (p := re.search(r'"(?:GET|HEAD) (/v2/' + re.escape(repo) + r'/manifests/[^ ]+) ', line))
             and "skopeo" in line.lower()]
    assert [p.group(1) for p in paths] == [f"/v2/{repo}/manifests/v1", f"/v2/{repo}/manifests/{sha256(lst)}"]


def read_with_headers(base: str, repo: str, ref: str, headers: list[tuple[str, str]]):
    """A GET with these headers, repeated names sent as separate header lines."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", f"/v2/{repo}/manifests/{ref}", skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("docker-content-digest"), r.read()
    finally:
        conn.close()


def test_repeated_accept_headers_are_one_list(pinning, registry, uid):
    """Envoy joins repeated Accept headers into one (so the filter and the registry see the same
    list): a read whose headers together name every stored type is the tag's own manifest."""
    repo = f"pinlist-{uid}"
    lst, child = push_list(registry.url, repo, "v1", "one")
    rest = ", ".join(t for t in ACCEPT.split(", ") if t != DOCKER_V2)
    ua = f"two-{uid}"
    for _ in range(2):
        got = read_with_headers(pinning.url, repo, "v1", [("User-Agent", ua), ("Accept", DOCKER_V2), ("Accept", rest)])
        assert got == (200, sha256(lst), lst)
    assert reads(registry, repo, ua) == [("GET", f"/v2/{repo}/manifests/v1"), ("GET", f"/v2/{repo}/manifests/{sha256(lst)}")]
    # Split the other way, one header lacking the list type: the same.
    ua = f"split-{uid}"
    got = read_with_headers(pinning.url, repo, "v1", [("User-Agent", ua), ("Accept", rest.replace(DOCKER_LIST, DOCKER_V2)), ("Accept", DOCKER_LIST)])
    assert got == (200, sha256(lst), lst)
    assert reads(registry, repo, ua) == [("GET", f"/v2/{repo}/manifests/{sha256(lst)}")]


@pytest.mark.parametrize("mode", [True, stack.ISTIO], ids=["shipped", "istio"])
def test_envoy_joins_repeated_accept_headers_before_the_registry_sees_them(stacks, mode):
    """What the filter's Accept check rests on: it sees the list the registry gets."""
    u = RecordingUpstream().start()
    try:
        e = stacks.envoy(u, PINNING, mode, concurrency=1, manifest_reads=True)
        read_with_headers(e.url, "app", "v1", [("Accept", DOCKER_V2), ("Accept", DOCKER_LIST)])
        got = [r for r in u.requests() if r.method == "GET" and r.path == "/v2/app/manifests/v1"]
        assert [[v for k, v in r.headers if k.lower() == "accept"] for r in got] == [[f"{DOCKER_V2},{DOCKER_LIST}"]]
    finally:
        u.stop()
