"""What Envoy's own telemetry shows of the filter (issue 23), read from the access log of the
shipped envoy/envoy.yaml (and its Istio-style variant): a protected push logs with the client's
method and the filter's outcome in the response code details, though it left the chain as an
OPTIONS; a client cannot put a method of its own into that log."""
from __future__ import annotations

import time
import uuid

import stack
from conftest import SAMPLE_POLICY
from oci import make_manifest, put_manifest, request


def access_line(envoy: stack.Envoy, request_id: str, timeout: float = 10.0) -> str:
    """The access log line of one request (the file logger writes about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [l for l in envoy.log().splitlines() if f"id={request_id} " in l]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, (request_id, lines)
            return lines[0]
        time.sleep(0.2)


def rid() -> str:
    return uuid.uuid4().hex


def test_a_stored_and_a_refused_push_log_their_method_and_outcome(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"telemetry-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")

    stored, refused = rid(), rid()
    assert put_manifest(envoy.url, repo, "v1", m1, {"x-request-id": stored}).status == 201
    assert put_manifest(envoy.url, repo, "v1", m2, {"x-request-id": refused}).status == 409

    line = access_line(envoy, stored)
    assert f'"PUT /v2/{repo}/manifests/v1 ' in line, line
    assert " 201 immutable_tags_written " in line, line
    assert "upstream_method=OPTIONS " in line, line

    line = access_line(envoy, refused)
    assert f'"PUT /v2/{repo}/manifests/v1 ' in line, line
    assert " 409 immutable_tags_refused " in line, line


def test_the_registrys_own_answers_and_other_requests_log_as_they_were(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"telemetry-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201

    # A read of a manifest (no filter on the reads route) and a mutable tag's push (the filter
    # lets it through unchanged): the registry's own answers, with their own methods.
    read, mutable = rid(), rid()
    r = request(envoy.url, "GET", f"/v2/{repo}/manifests/v1",
                headers={"x-request-id": read, "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 200
    assert put_manifest(envoy.url, repo, "latest", m1, {"x-request-id": mutable}).status == 201
    line = access_line(envoy, read)
    assert f'"GET /v2/{repo}/manifests/v1 ' in line and " 200 via_upstream " in line, line
    line = access_line(envoy, mutable)
    assert f'"PUT /v2/{repo}/manifests/latest ' in line and " 201 via_upstream " in line, line
    assert "upstream_method=PUT " in line, line


def test_a_client_cannot_put_a_method_into_the_log(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"telemetry-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    spoof = {"x-immutable-tags-method": "DELETE"}
    blob, manifest, push = rid(), rid(), rid()
    # Routes with the filter off (a blob read), with it on (a manifest write it lets through
    # unchanged), and a push it rewrites.
    request(envoy.url, "GET", f"/v2/{repo}/blobs/sha256:{'0' * 64}", headers={**spoof, "x-request-id": blob})
    assert put_manifest(envoy.url, repo, "latest", m1, {**spoof, "x-request-id": manifest}).status == 201
    assert put_manifest(envoy.url, repo, "v1", m1, {**spoof, "x-request-id": push}).status == 201
    assert f'"GET /v2/{repo}/blobs/' in access_line(envoy, blob)
    assert f'"PUT /v2/{repo}/manifests/latest ' in access_line(envoy, manifest)
    assert f'"PUT /v2/{repo}/manifests/v1 ' in access_line(envoy, push)


def test_an_unreachable_registry_logs_unavailable(stacks, own_registry, stop_on_headers, uid):
    envoy = stacks.envoy(own_registry, SAMPLE_POLICY, stop_on_headers, fresh=True)
    repo = f"telemetry-{uid}"
    m1 = make_manifest(own_registry.url, repo, "one")
    own_registry.stop()
    down = rid()
    assert put_manifest(envoy.url, repo, "v1", m1, {"x-request-id": down}).status == 503
    line = access_line(envoy, down)
    assert f'"PUT /v2/{repo}/manifests/v1 ' in line and " 503 immutable_tags_unavailable " in line, line
    envoy.stop()
