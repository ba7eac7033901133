"""A blob delete by method override (`POST /v2/<name>/blobs/<digest>` with
`X-HTTP-Method-Override: DELETE`, or `X-HTTP-Method`, `X-Method-Override`) never reaches the
registry through the shipped config: an intermediary honouring the header would delete a layer
of an immutable image. A plain blob upload POST still passes. Recorded on the upstream's side,
over HTTP/1.1 and h2c."""
from __future__ import annotations

import json
import socket

import pytest

import h2c
from conftest import SAMPLE_POLICY
from recording_upstream import RecordingUpstream

HEADERS = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def upstream():
    u = RecordingUpstream().start()
    yield u
    u.stop()


@pytest.fixture
def front(stacks, upstream, stop_on_headers):
    return stacks.envoy(upstream, SAMPLE_POLICY, stop_on_headers)


def http1(port: int, method: str, path: str, headers: list[str]) -> tuple[int, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 0", "Connection: close", *headers]
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]
    finally:
        s.close()


def reached(upstream: RecordingUpstream, path: str) -> list:
    upstream.wait_idle()
    return [r for r in upstream.requests() if r.path == path]


@pytest.mark.parametrize("proto", ["http1", "h2c"])
def test_an_override_on_a_blob_path_never_reaches_the_registry(front, upstream, uid, proto):
    for method in ["POST", "GET", "PUT"]:
        for header in HEADERS:
            path = f"/v2/override-{uid}-{proto}-{method}-{header}/blobs/{DIGEST}".lower()
            if proto == "http1":
                status, body = http1(front.port, method, path, [f"{header}: DELETE"])
            else:
                r = h2c.request(front.port, method, path, [(header.lower(), "DELETE")])
                status, body = r.status, r.body
            assert status == 400, (method, header, status, body[:300])
            err = json.loads(body)["errors"][0]
            assert err["code"] == "UNSUPPORTED" and "X-HTTP-Method-Override" in err["message"], err
            assert reached(upstream, path) == [], (method, header)


@pytest.mark.parametrize("proto", ["http1", "h2c"])
def test_a_plain_blob_upload_post_still_passes(front, upstream, uid, proto):
    path = f"/v2/override-{uid}-{proto}/blobs/uploads/"
    if proto == "http1":
        status, _ = http1(front.port, "POST", path, [])
    else:
        status = h2c.request(front.port, "POST", path).status
    assert status not in (400, 403, 503), status  # the upstream's own answer (it knows no uploads)
    (rec,) = reached(upstream, path)
    assert rec.method == "POST"
