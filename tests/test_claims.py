"""The claims rule across two Envoy replicas sharing a real etcd, in front of distribution with
htpasswd (issue 27's sequences): a push held at its last byte cannot undo a break-glass override,
and a new tag never gets two winners when one holder of a claim fails."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

from oci import OCI_MANIFEST, current_digest, make_manifest, put_manifest, sha256
from test_break_glass import ADMIN, REASON, basic, htpasswd_registry  # noqa: F401 (a fixture)
from test_break_glass_replicas import etcd, replicas  # noqa: F401 (fixtures)

BOB = basic("bob", "pw-bob")


def committed(etcd, repo: str, tag: str, digest: str = "") -> None:  # noqa: F811
    """Waits (3 s at most) until the tag's record says its last write was committed (of
    `digest`, if given): `<at> <stored> <ms> - 0`, or the earlier `d <at> <digest>`, so that
    this file also runs against a module from before the rule (and fails there as it should)."""
    def done() -> bool:
        f = (etcd.get(f"/immutable-tags/{repo}:{tag}") or "").split(" ")
        return (len(f) == 5 and f[1].endswith(digest) and f[3] == "-") or (len(f) == 3 and f[0] == "d" and f[2].endswith(digest))
    deadline = time.time() + 3
    while not done() and time.time() < deadline:
        time.sleep(0.05)


def held_put(envoy, repo: str, tag: str, manifest: bytes, headers: dict, content_type: str = OCI_MANIFEST) -> socket.socket:
    """A PUT whose last body byte is held back: headers and all but one byte sent."""
    u = urlparse(envoy.url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    lines = [f"PUT /v2/{repo}/manifests/{tag} HTTP/1.1", f"Host: {u.hostname}:{u.port}",
             f"Content-Type: {content_type}", f"Content-Length: {len(manifest)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + manifest[:-1])
    return s


def finish(s: socket.socket, manifest: bytes) -> int:
    """Sends the last byte; the status of the answer."""
    s.sendall(manifest[-1:])
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1])


def override(envoy, repo: str, tag: str, manifest: bytes):
    """An override through `envoy`, retried only while its replica has not learned yet that the
    registry demands authentication."""
    deadline = time.time() + 15
    while True:
        r = put_manifest(envoy.url, repo, tag, manifest, headers={**ADMIN, "X-Break-Glass-Reason": REASON})
        if r.status != 409 or "could not learn" not in r.body.decode() or time.time() > deadline:
            return r
        time.sleep(0.3)


def test_a_held_same_digest_push_does_not_undo_an_override(replicas, registry, etcd, uid):  # noqa: F811
    a, b = replicas
    for through in (a, b):
        repo = f"prod/claims-held-{uid}-{through.port}"
        m1, m2 = make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")
        assert put_manifest(a.url, repo, "v1", m1, headers=BOB).status == 201
        committed(etcd, repo, "v1")
        held = held_put(through, repo, "v1", m1, BOB)
        time.sleep(0.5)  # its HEAD answered: the registry holds m1, the same digest
        r = override(a, repo, "v1", m2)
        assert r.status == 201, r
        committed(etcd, repo, "v1", sha256(m2))
        assert finish(held, m1) == 409
        assert current_digest(registry.url, repo, "v1") == sha256(m2)


def test_a_new_tag_never_has_two_winners_when_one_holder_fails(replicas, registry, etcd, uid):  # noqa: F811
    a, b = replicas
    repo = f"prod/claims-two-{uid}"
    x, y = make_manifest(registry.url, repo, "x"), make_manifest(registry.url, repo, "y")
    late = held_put(a, repo, "v1", y, BOB)  # its HEAD says absent; it waits at its last byte
    time.sleep(0.5)
    bad = held_put(b, repo, "v1", x, BOB, content_type="application/x-not-a-manifest")
    good = held_put(a, repo, "v1", x, BOB)
    time.sleep(0.5)
    assert finish(bad, x) >= 400
    assert finish(good, x) == 201
    committed(etcd, repo, "v1", sha256(x))
    assert finish(late, y) == 409
    assert current_digest(registry.url, repo, "v1") == sha256(x)
