"""Requests crafted to slip an overwrite past the filter. Each one is sent byte-exact (raw
sockets, or curl for h2c) through the real Envoy; afterwards the immutable tag's digest is read
from the registry itself, and the filter must still serve normally."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading

import pytest

from conftest import SAMPLE_POLICY
from oci import OCI_MANIFEST, current_digest, make_manifest, put_manifest, sha256

TAG = "v1.0-a"  # has '.' and '-', so their escapes are exercised


def raw(port: int, head: bytes, body: bytes = b"", expect_continue: bool = False, timeout: float = 10) -> tuple[int, bytes]:
    """Sends `head` (request line and headers, without the blank line) and `body` as they are;
    returns the final status and the whole response."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head + b"\r\n\r\n")
        data = b""
        if expect_continue:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            if not data.startswith(b"HTTP/1.1 100"):
                return parse_status(data), data
            data = b""
        # Send while reading: a refusal (413) may come, and the connection close, mid-body; read
        # at once, before a reset can discard the answer from the socket's buffer.
        sender = threading.Thread(target=send_quietly, args=(s, body), daemon=True)
        sender.start()
        while not complete(data):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        sender.join(timeout)
        return parse_status(data), data
    finally:
        s.close()


def send_quietly(s: socket.socket, body: bytes) -> None:
    try:
        s.sendall(body)
    except OSError:
        pass  # refused early: the answer is read by the caller


def complete(data: bytes) -> bool:
    """Whether `data` holds a whole final response (so we need not wait for Envoy to close)."""
    while data.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in data:
        data = data.split(b"\r\n\r\n", 1)[1]
    if b"\r\n\r\n" not in data:
        return False
    head, body = data.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v.strip())
    return False  # no length: read to the end


def parse_status(data: bytes) -> int:
    # Skip interim 1xx answers.
    while data.startswith(b"HTTP/1.1 1"):
        data = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0  # connection closed without an answer: nothing was accepted


def put_head(path: str, body_len: int | None, method: str = "PUT", extra: list[str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: registry", f"Content-Type: {OCI_MANIFEST}", "Connection: close"]
    if body_len is not None:
        lines.append(f"Content-Length: {body_len}")
    lines += extra or []
    return "\r\n".join(lines).encode("latin-1")


def chunked(body: bytes, size: int = 100) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def enc(s: str, chars: str, lower: bool = False) -> str:
    """Percent-encodes every character of `s` that is in `chars`."""
    return "".join((f"%{ord(c):02x}" if lower else f"%{ord(c):02X}") if c in chars else c for c in s)


# What each refusal must be: the filter's judgement (409 with the policy's code), the filter's
# "cannot read this with certainty" (400 NAME_INVALID / MANIFEST_INVALID), or Envoy's own codec
# refusing the request line (400 without an OCI body: the request reached neither the filter nor
# the registry). A closed connection (status 0) is none of these.
JUDGED = (409, SAMPLE_POLICY["error_code"])
BAD_NAME = (400, "NAME_INVALID")
BAD_REF = (400, "MANIFEST_INVALID")
ENVOY_400 = (400, None)


def path_variants(repo: str, tag: str) -> list[tuple[str, tuple[int, str | None]]]:
    """`repo` contains one '/' (team/app-...). Each path with the refusal it must get."""
    team, app = repo.split("/")
    return [
        (f"/v2/{repo}/manifests/{enc(tag, tag)}", JUDGED),                # every tag char encoded
        (f"/v2/{repo}/manifests/{enc(tag, '.-', lower=True)}", JUDGED),   # encoded '.' and '-', lower-case
        (f"/v2/{repo}/manifests/{enc(tag, '.-')}", JUDGED),
        (f"/v2/{enc(repo, 'aepmt-')}/manifests/{tag}", JUDGED),           # encoded name characters
        (f"/v2/{team}%2F{app}/manifests/{tag}", JUDGED),                  # %2F in the name
        (f"/v2/{team}%2f{app}/manifests/{tag}", JUDGED),
        (f"/v2/{repo}/%6Danifests/{tag}", JUDGED),                        # encoded route word
        (f"/v2/{repo}%2Fmanifests%2F{tag}", JUDGED),                      # encoded route slashes
        (f"/v2//{repo}/manifests/{tag}", BAD_NAME),                       # double slashes
        (f"/v2/{team}//{app}/manifests/{tag}", BAD_NAME),
        (f"/v2/{repo}/manifests//{tag}", BAD_REF),
        (f"//v2/{repo}/manifests/{tag}", BAD_NAME),                       # leading slash
        (f"/v2/{repo}/./manifests/{tag}", BAD_NAME),                      # dot segments, plain and encoded
        (f"/v2/{team}/x/../{app}/manifests/{tag}", BAD_NAME),
        (f"/v2/{repo}/%2E/manifests/{tag}", BAD_NAME),
        (f"/v2/{team}/x/%2e%2e/{app}/manifests/{tag}", BAD_NAME),
        (f"/v2/{team}/x%2F..%2F{app}/manifests/{tag}", BAD_NAME),
        (f"/v2/{repo}/manifests/./{tag}", BAD_REF),
        (f"/v2/{repo}/manifests/{tag}/", BAD_REF),                        # trailing slash
        (f"/v2/{repo}/manifests/{tag}%2F", BAD_REF),
        (f"/v2/{repo}/manifests/{tag};x=y", BAD_REF),                     # ';' parameters
        (f"/v2/{repo};x=y/manifests/{tag}", BAD_NAME),
        (f"/v2/{repo}/manifests;x=y/{tag}", BAD_NAME),
        (f"/v2/{repo}/manifests/{tag}%3Bx=y", BAD_REF),
        (f"/v2/{repo}/manifests/{tag}?x=y", JUDGED),                      # query strings
        (f"/v2/{repo}/manifests/{tag}?", JUDGED),
        (f"/v2/{repo}/manifests/{tag}#frag", ENVOY_400),                  # Envoy refuses a fragment
        (f"/v2/{repo}/manifests/{tag}%3Fx=y", BAD_REF),
        (f"/v2/{repo}/manifests/{tag}%00", BAD_REF),
        (f"/V2/{repo}/MANIFESTS/{tag}", JUDGED),                          # case games on the route words
    ]


def oci_code(resp: bytes) -> str | None:
    """The OCI error code of a raw response, None when its body is not an OCI error."""
    body = resp.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in resp else b""
    try:
        return json.loads(body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def assert_refusal(status: int, resp: bytes, expected: tuple[int, str | None], what) -> None:
    assert (status, oci_code(resp)) == expected, (what, resp[:400])


@pytest.fixture
def protected(stacks, registry, stop_on_headers, uid):
    """An Envoy under the sample policy and an immutable tag pushed directly to the registry."""
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"team/hostile-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(registry.url, repo, TAG, m1).status == 201
    yield envoy, repo, m1, m2
    # Whatever was tried: the tag is unchanged in the registry, and the filter still serves.
    assert current_digest(registry.url, repo, TAG) == sha256(m1), "the immutable tag changed"
    r = put_manifest(envoy.url, repo, TAG, m2)
    assert r.status == 409 and r.json()["errors"][0]["code"] == SAMPLE_POLICY["error_code"], r
    assert put_manifest(envoy.url, repo, TAG, m1).status == 201
    assert current_digest(registry.url, repo, TAG) == sha256(m1)


def test_path_variants(protected, registry):
    """The ones distribution would read as the tag are judged (409), the ones the filter cannot
    read with certainty are refused as such (400 with the OCI code), never merely bounced."""
    envoy, repo, m1, m2 = protected
    for path, expected in path_variants(repo, TAG):
        status, resp = raw(envoy.port, put_head(path, len(m2)), m2)
        assert_refusal(status, resp, expected, path)
        if expected == JUDGED:
            detail = json.loads(resp.split(b"\r\n\r\n", 1)[1])["errors"][0]["detail"]
            assert (detail["repository"], detail["tag"]) == (repo, TAG), (path, detail)
            assert (detail["current_digest"], detail["pushed_digest"]) == (sha256(m1), sha256(m2)), (path, detail)
        assert current_digest(registry.url, repo, TAG) == sha256(m1), path


def test_method_case_and_override(protected, registry):
    envoy, repo, m1, m2 = protected
    path = f"/v2/{repo}/manifests/{TAG}"
    for method in ["put", "Put", "pUT"]:  # Envoy's HTTP/1 codec refuses them itself
        status, resp = raw(envoy.port, put_head(path, len(m2), method=method), m2)
        assert_refusal(status, resp, ENVOY_400, method)
    for method in ["POST", "GET", "PATCH"]:
        for header in ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]:
            status, resp = raw(envoy.port, put_head(path, len(m2), method=method, extra=[f"{header}: PUT"]), m2)
            assert_refusal(status, resp, (400, "UNSUPPORTED"), (method, header))


def test_body_framing(protected, registry):
    envoy, repo, m1, m2 = protected
    path = f"/v2/{repo}/manifests/{TAG}"
    # chunked
    status, resp = raw(envoy.port, put_head(path, None, extra=["Transfer-Encoding: chunked"]), chunked(m2))
    assert_refusal(status, resp, JUDGED, resp[:300])
    # Expect: 100-continue
    status, resp = raw(envoy.port, put_head(path, len(m2), extra=["Expect: 100-continue"]), m2, expect_continue=True)
    assert_refusal(status, resp, JUDGED, resp[:300])
    # empty body, with and without Content-Length
    status, resp = raw(envoy.port, put_head(path, 0), b"")
    assert_refusal(status, resp, JUDGED, resp[:300])
    status, resp = raw(envoy.port, put_head(path, None, extra=["Transfer-Encoding: chunked"]), b"0\r\n\r\n")
    assert_refusal(status, resp, JUDGED, resp[:300])
    # above max_manifest_bytes (4 MiB; the route buffers 5 MiB): the filter's own 413, whether
    # the length is announced (refused at the headers) or not (refused while buffering)
    big = m2 + b" " * (5 * 1024 * 1024)
    status, resp = raw(envoy.port, put_head(path, len(big)), big, timeout=30)
    assert_refusal(status, resp, (413, "SIZE_INVALID"), "oversized")
    status, resp = raw(envoy.port, put_head(path, None, extra=["Transfer-Encoding: chunked"]),
                       chunked(big, 256 * 1024), timeout=30)
    assert_refusal(status, resp, (413, "SIZE_INVALID"), "oversized")


def test_h2c_prior_knowledge(protected, registry, tmp_path):
    envoy, repo, m1, m2 = protected
    curl = shutil.which("curl")
    assert curl, "curl (with HTTP/2) is needed for the h2c test"
    body = tmp_path / "m2.json"
    body.write_bytes(m2)
    for path in [f"/v2/{repo}/manifests/{TAG}", f"/v2/{repo.replace('/', '%2F')}/manifests/{enc(TAG, '.-')}"]:
        out = subprocess.run(
            [curl, "-sS", "--http2-prior-knowledge", "-X", "PUT", "-H", f"Content-Type: {OCI_MANIFEST}",
             "--data-binary", f"@{body}", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
             f"{envoy.url}{path}"],
            capture_output=True, text=True, timeout=30)
        assert out.stdout == "2 409", (path, out.stdout, out.stderr)


# --- allow-list policies: a mis-read name or tag would look mutable -------------------------

ALLOW_LIST = {
    # Only release tags vX.Y.Z are immutable (look-ahead exclusion), and only under releases/.
    "repository": {
        "releases": {"immutable_tags": True, "immutable_tags_exclusions": ["^(?!v[0-9]+\\.[0-9]+\\.[0-9]+$).*$"]},
    },
}


def test_allow_list_policy_cannot_be_dodged(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, ALLOW_LIST, stop_on_headers)
    repo = f"releases/app-{uid}"
    tag = "v1.2.3"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, tag, m1).status == 201
    variants = [
        f"/v2/{repo}/manifests/v1%2E2%2E3",      # the raw tag would match the exclusion
        f"/v2/{repo}/manifests/v1%2e2%2e3",
        f"/v2/{repo}/manifests/%76%31.2.3",
        f"/v2/{repo}/manifests/{tag}?tag=x",
        f"/v2/releases%2Fapp-{uid}/manifests/{tag}",  # the raw name is outside releases/
        f"/v2/releases%2fapp-{uid}/manifests/{tag}",
        f"/v2/%72eleases/app-{uid}/manifests/{tag}",
        f"/v2/releases//app-{uid}/manifests/{tag}",
        f"/v2/x/../releases/app-{uid}/manifests/{tag}",
        f"/v2/releases/./app-{uid}/manifests/{tag}",
        f"/v2/{repo}/manifests/{tag}/",
        f"/v2/{repo}/manifests/{tag};x",
    ]
    expected = [JUDGED] * 7 + [BAD_NAME] * 3 + [BAD_REF] * 2
    for path, want in zip(variants, expected, strict=True):
        status, resp = raw(envoy.port, put_head(path, len(m2)), m2)
        assert_refusal(status, resp, want, path)
        assert current_digest(registry.url, repo, tag) == sha256(m1), path
    # Tags outside the allow-list stay mutable, also when encoded.
    assert put_manifest(envoy.url, repo, "nightly", m1).status == 201
    status, _ = raw(envoy.port, put_head(f"/v2/{repo}/manifests/%6Eightly", len(m2)), m2)
    assert status == 201
    assert current_digest(registry.url, repo, "nightly") == sha256(m2)
    # Serving normally afterwards.
    assert put_manifest(envoy.url, repo, tag, m2).status == 409
    assert put_manifest(envoy.url, repo, tag, m1).status == 201
    assert current_digest(registry.url, repo, tag) == sha256(m1)
