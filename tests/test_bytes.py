"""Nothing the filter cannot read gets through (issue 21): bytes that are not UTF-8 in `:path`
(legal in HTTP/2; Go's server accepts them in a query), a `;` in a write's query, `?tag=` lists
past the cap, writes the filter classifies as invalid when it has no valid configuration, and
Envoy's own local answers under `on_upstream_error: allow`. Each case runs in the shipped
config, without `allow_on_headers_stop_iteration`, and in the Istio-style one."""
from __future__ import annotations

import time

import pytest

import h2c
import stack
from conftest import SAMPLE_POLICY
from fakes import FaultyUpstream
from oci import OCI_MANIFEST, current_digest, make_manifest, put_manifest, sha256

CT = [("content-type", OCI_MANIFEST)]


def seeded(registry, uid: str, tag: str = "v1"):
    repo = f"bytes-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, tag, m1).status == 201
    return repo, m1, m2


def oci_error(r: h2c.H2Response) -> dict:
    import json
    return json.loads(r.body)["errors"][0]


def test_h2_put_with_a_non_utf8_query_byte_is_judged(envoy, registry, uid):
    """The issue's attack: `PUT /v2/<name>/manifests/v1?x=<0xFF>` over HTTP/2 is a push of `v1`
    (the query does not name the tag): judged, refused, and `v1` keeps its digest."""
    repo, m1, m2 = seeded(registry, uid)
    for query in [b"?x=\xff", b"?\xff", b"?x=\x80\x81&y=1", b"?x=%ff\xfe"]:
        r = h2c.request(envoy.port, "PUT", f"/v2/{repo}/manifests/v1".encode() + query, CT, m2)
        assert r.status == 409, (query, r)
        assert oci_error(r)["code"] == "DENIED", (query, r.body)
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    # The same push of the digest the tag holds is still a re-push, allowed.
    r = h2c.request(envoy.port, "PUT", f"/v2/{repo}/manifests/v1".encode() + b"?x=\xff", CT, m1)
    assert r.status == 201, r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_h2_put_with_a_non_utf8_tag_or_name_is_refused(envoy, registry, uid):
    """A non-UTF-8 byte in the name or the tag: not a valid reference, refused (400)."""
    repo, m1, m2 = seeded(registry, uid)
    for path in [f"/v2/{repo}/manifests/v1".encode() + b"\xff", f"/v2/{repo}".encode() + b"\xff/manifests/v1",
                 f"/v2/{repo}/manifests/".encode() + b"\xc3\xa9"]:
        r = h2c.request(envoy.port, "PUT", path, CT, m2)
        assert r.status == 400, (path, r)
        assert oci_error(r)["code"] in ("NAME_INVALID", "MANIFEST_INVALID"), (path, r.body)
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_h2_delete_with_a_non_utf8_query_byte_is_judged(envoy, registry, uid):
    """DELETE by digest of a manifest an immutable tag holds, with a 0xFF byte in the query:
    refused like the plain one; the tag keeps its manifest."""
    repo, m1, _ = seeded(registry, uid)
    r = h2c.request(envoy.port, "DELETE", f"/v2/{repo}/manifests/{sha256(m1)}".encode() + b"?x=\xff")
    assert r.status == 409, r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    # By tag (distribution 2.8 answers UNSUPPORTED, but the filter refuses first).
    r = h2c.request(envoy.port, "DELETE", f"/v2/{repo}/manifests/v1".encode() + b"?\xff")
    assert r.status == 409, r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_h2_read_with_a_non_utf8_query_byte_is_answered(envoy, registry, uid):
    """An ordinary read with such a byte is still answered."""
    repo, m1, _ = seeded(registry, uid)
    r = h2c.request(envoy.port, "GET", f"/v2/{repo}/manifests/v1".encode() + b"?x=\xff",
                    [("accept", OCI_MANIFEST)])
    assert r.status == 200, r
    assert r.body == m1


def test_h1_put_with_a_non_utf8_query_byte_never_changes_the_tag(envoy, registry, uid):
    """HTTP/1.1: Envoy's codec answers 400 itself; whatever it answers, the tag keeps its digest."""
    import socket
    repo, m1, m2 = seeded(registry, uid)
    head = (f"PUT /v2/{repo}/manifests/v1?x=".encode() + b"\xff" +
            f" HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {len(m2)}\r\n\r\n".encode())
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=10) as s:
        s.sendall(head + m2)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_a_semicolon_in_a_write_query_is_refused(envoy, registry, uid):
    """Go before 1.17 split a query at `;` too: `?x=1;tag=v1` could name a tag the filter never
    judged. Refused (400); nothing reaches the registry."""
    repo, m1, m2 = seeded(registry, uid)
    r = put_manifest(envoy.url, repo, "v9?x=1;tag=v1", m2)
    assert r.status == 400, r
    assert r.json()["errors"][0]["code"] == "UNSUPPORTED", r.body
    assert current_digest(registry.url, repo, "v9") is None
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


def test_a_push_naming_too_many_tags_is_refused_at_once(envoy, registry, uid):
    """`?tag=` past `max_tags_per_push` (16): refused with 400 before a single registry call;
    at the cap the push is judged as usual."""
    repo, m1, m2 = seeded(registry, uid)
    heads = registry.head_requests()
    many = "&".join(f"tag=t{i}" for i in range(2000))
    t0 = time.monotonic()
    r = put_manifest(envoy.url, repo, f"{sha256(m2)}?{many}", m2)
    assert r.status == 400, r
    assert time.monotonic() - t0 < 2, "refused quickly"
    err = r.json()["errors"][0]
    assert err["code"] == "UNSUPPORTED" and "at most 16" in err["message"], err
    r = put_manifest(envoy.url, repo, f"{sha256(m2)}?" + "&".join(f"tag=t{i}" for i in range(17)), m2)
    assert r.status == 400, r
    assert registry.head_requests() == heads, "not one HEAD for a refused push"
    r = put_manifest(envoy.url, repo, f"{sha256(m2)}?" + "&".join(f"tag=t{i}" for i in range(16)), m2)
    assert r.status == 201, r
    r = put_manifest(envoy.url, repo, f"{sha256(m2)}?tag=v1", m2)
    assert r.status == 409, "a listed immutable tag is still judged"
    assert current_digest(registry.url, repo, "v1") == sha256(m1)


# --- on_upstream_error: allow, and Envoy's own answers ----------------------------------------

ALLOW_POLICY = dict(SAMPLE_POLICY, upstream={"cluster": "registry", "timeout_ms": 500}, cache={"ttl_seconds": 0},
                    on_upstream_error="allow")


@pytest.fixture(scope="module")
def faulty(registry):
    f = FaultyUpstream(registry.port, stack.free_port()).start()
    yield f
    f.stop()


@pytest.mark.parametrize("fault", ["stall", "reset"])
def test_allow_never_applies_to_envoys_own_answers(stacks, registry, faulty, stop_on_headers, uid, fault):
    """A HEAD that times out (Envoy's own 504) or is reset before headers (Envoy's own 503) got
    no answer from the registry: with `on_upstream_error: allow` the overwrite is still refused,
    since an attacker can provoke such answers (overflowing the circuit breakers, loading the
    registry past `timeout_ms`). The registry's own 500 is what `allow` is for."""
    envoy = stacks.envoy(faulty, ALLOW_POLICY, stop_on_headers)
    repo = f"allow-{fault}-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, "v1", m1).status == 201
    faulty.fault = fault
    try:
        heads = faulty.heads
        r = put_manifest(envoy.url, repo, "v1", m2)
        assert faulty.heads > heads, "the fault was met"
        assert r.status == 503, r
        assert r.json()["errors"][0]["code"] == "UNAVAILABLE", r.body
    finally:
        faulty.fault = "pass"
    assert current_digest(registry.url, repo, "v1") == sha256(m1), "the overwrite did not land"
    faulty.fault = "500"
    try:
        assert put_manifest(envoy.url, repo, "v2", m2).status == 201, "the registry's own 500: allowed"
    finally:
        faulty.fault = "pass"
