"""Upstream trouble is never a bypass: the push is refused with an OCI JSON body."""
from __future__ import annotations

import stack
from oci import current_digest, make_manifest, put_manifest, sha256
from conftest import SAMPLE_POLICY


def test_registry_down_refuses_and_recovers(stacks, workdir, stop_on_headers, uid):
    reg = stack.Registry(workdir).start()
    try:
        envoy = stacks.envoy(reg, SAMPLE_POLICY, stop_on_headers)
        repo = f"app-{uid}"
        m1 = make_manifest(reg.url, repo, "one")
        m2 = make_manifest(reg.url, repo, "two")
        assert put_manifest(reg.url, repo, "v1", m1).status == 201
        reg.stop()

        r = put_manifest(envoy.url, repo, "v1", m2)
        assert r.status == 503, r
        assert r.headers["content-type"] == "application/json"
        err = r.json()["errors"][0]
        assert err["code"] == "UNAVAILABLE"
        assert err["detail"]["tag"] == "v1" and err["detail"]["repository"] == repo
        assert "registry" in err["message"]

        reg.start()
        assert current_digest(reg.url, repo, "v1") == sha256(m1)
        r = put_manifest(envoy.url, repo, "v1", m2)
        assert r.status == 409, "serving normally once the registry is back"
        assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    finally:
        reg.stop()

